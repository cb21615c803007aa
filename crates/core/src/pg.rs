//! PostgreSQL client errors (tokio-postgres), shared by PostgreSQL capture and apply: a
//! one-line description without row data, and whether a retry can help.

use tokio_postgres::Config;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;

/// `postgres://user@host:port/db` (several hosts joined with `,`) for messages: never the
/// password.
pub fn describe_config(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{}/{db}", hosts.join(","))
}

/// [`describe_config`] of a URL; a URL that does not parse is named as such, never printed
/// (it may hold a password).
pub fn describe_url(url: &str) -> String {
    match url.parse::<Config>() {
        Ok(config) => describe_config(&config),
        Err(_) => "PostgreSQL (unparsable URL)".to_owned(),
    }
}

/// Whether `e` may go away by itself: lost connections, restarts, serialization failures,
/// deadlocks, lock and statement timeouts, resource shortages. Bad data and bad setup
/// (constraint violations, invalid input, undefined table or column, privileges,
/// authentication, missing database) are definite. Unknown errors count as transient.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => is_transient_code(code),
        // Not from the server: I/O, closed connection, timeouts are transient. Encoding a
        // parameter failed: our values are checked before binding, so this is bad data.
        None => !e.to_string().starts_with("error serializing parameter"),
    }
}

pub fn is_transient_code(code: &SqlState) -> bool {
    let code = code.code();
    // Definite SQLSTATE classes (https://www.postgresql.org/docs/current/errcodes-appendix.html).
    const DEFINITE_CLASSES: [&str; 18] = [
        "0A", // feature not supported
        "0L", "0P", // invalid grantor / role specification
        "21", // cardinality violation
        "22", // data exception
        "23", // integrity constraint violation
        "26", // invalid SQL statement name
        "27", // triggered data change violation
        "28", // invalid authorization specification (wrong password)
        "2B", // dependent privilege descriptors still exist
        "2F", "38", "39", // routine exceptions (e.g. from a trigger)
        "3D", // invalid catalog name (missing database)
        "3F", // invalid schema name
        "42", // syntax error or access rule violation (undefined table/column, privileges)
        "44", // with check option violation
        "P0", // PL/pgSQL raise
    ];
    if code == "57P04" {
        // database_dropped
        return false;
    }
    !DEFINITE_CLASSES.iter().any(|class| code.starts_with(class))
}

/// A one-line description of a tokio-postgres error: the server's severity, SQLSTATE, message,
/// hint and object names, or the client-side error with its causes.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut out = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        let names = [
            ("table", db.table()),
            ("column", db.column()),
            ("constraint", db.constraint()),
        ];
        for (what, name) in names {
            if let Some(name) = name {
                out.push_str(&format!(" ({what} `{name}`)"));
            }
        }
        if let Some(hint) = db.hint() {
            out.push_str(&format!("; hint: {hint}"));
        }
        return out;
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `value` as the text PostgreSQL's input functions read (`($1::text)::type` in a query):
/// decimals exactly, floats in their shortest exact form, timestamps in ISO 8601 with
/// microseconds, bytes as `\x` hex (bytea's input form), JSON and text as they are.
pub fn input_text(value: &crate::Value) -> String {
    use crate::Value;
    use crate::time::{format_date, format_time, format_timestamp};
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => if *b { "true" } else { "false" }.to_owned(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_nan() => "NaN".to_owned(),
        Value::Float(f) if f.is_infinite() => {
            if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
        }
        Value::Float(f) => format!("{f:?}"),
        Value::Decimal(d) => d.as_str().to_owned(),
        Value::Text(s) | Value::Json(s) => s.clone(),
        Value::Bytes(b) => {
            let mut out = String::with_capacity(2 + 2 * b.len());
            out.push_str("\\x");
            for byte in b {
                out.push_str(&format!("{byte:02x}"));
            }
            out
        }
        Value::Timestamp(t) => format_timestamp(*t),
        Value::Date(d) => format_date(i64::from(*d)),
        Value::Time(t) => format_time(*t),
    }
}
