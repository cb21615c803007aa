//! What can go wrong applying to PostgreSQL, and whether retrying can help.
//!
//! Every variant carries the target (`postgres://user@host:port/db`, never the password) and,
//! where a change is involved, its seq, table and key. Server errors are rendered from their
//! fields (severity, SQLSTATE, message, hint, column/constraint names) rather than from
//! `tokio_postgres::Error`'s `Display`, which only says "db error". The server's DETAIL is left
//! out on purpose: it often holds row data ("Failing row contains ...").

use tidesync_core::{Seq, StageError};
use tokio_postgres::error::SqlState;

/// What went wrong applying to PostgreSQL, and where.
#[derive(Debug, thiserror::Error)]
pub enum PostgresSinkError {
    #[error("target PostgreSQL: invalid connection URL: {problem}")]
    Url { problem: String },
    #[error("target {target}: cannot connect: {problem}")]
    Connect {
        target: String,
        problem: String,
        transient: bool,
    },
    #[error("target {target}: no answer within {timeout_ms} ms while {context}")]
    Timeout {
        target: String,
        context: String,
        timeout_ms: u64,
    },
    #[error("target {target}: {context}: {problem}")]
    Query {
        target: String,
        context: String,
        problem: String,
        transient: bool,
    },
    #[error(
        "target {target}: table `{table}` does not exist (set create_tables = true to create it from the source)"
    )]
    NoTable { target: String, table: String },
    #[error(
        "target {target}: table `{table}` has no primary key or unique index on exactly the key columns ({key}), which upserts need"
    )]
    NoUniqueKey {
        target: String,
        table: String,
        key: String,
    },
    #[error(
        "target {target}: no schema for stream `{stream}` (seq {seq}); the source did not declare it"
    )]
    UnknownStream {
        target: String,
        stream: String,
        seq: Seq,
    },
    #[error("target {target}: seq {seq} on `{table}` key {key}: {problem}")]
    BadChange {
        target: String,
        table: String,
        seq: Seq,
        key: String,
        problem: String,
        transient: bool,
    },
}

impl PostgresSinkError {
    /// Whether retrying (after reconnecting) can help.
    pub fn is_transient(&self) -> bool {
        match self {
            PostgresSinkError::Connect { transient, .. }
            | PostgresSinkError::Query { transient, .. }
            | PostgresSinkError::BadChange { transient, .. } => *transient,
            PostgresSinkError::Timeout { .. } => true,
            PostgresSinkError::Url { .. }
            | PostgresSinkError::NoTable { .. }
            | PostgresSinkError::NoUniqueKey { .. }
            | PostgresSinkError::UnknownStream { .. } => false,
        }
    }
}

impl From<PostgresSinkError> for StageError {
    fn from(e: PostgresSinkError) -> Self {
        if e.is_transient() {
            StageError::transient(e)
        } else {
            StageError::definite(e)
        }
    }
}

/// Whether `e` may go away by itself: lost connections, restarts, serialization failures,
/// deadlocks, lock and statement timeouts, resource shortages. Bad data and bad setup
/// (constraint violations, invalid input, undefined table or column, privileges,
/// authentication, missing database) are definite. Unknown errors count as transient.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => is_transient_code(code),
        // Not from the server: I/O, closed connection, timeouts are transient. Encoding a
        // parameter failed: our values are checked before binding, so this is bad data.
        None => !e.to_string().starts_with("error serializing parameter"),
    }
}

pub(crate) fn is_transient_code(code: &SqlState) -> bool {
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
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
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
