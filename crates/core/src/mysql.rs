//! MySQL/MariaDB client helpers shared by the binlog source, the apply sink and `verify`:
//! URLs, error classification, identifier quoting and value binding.

use mysql_async::Opts;

use crate::Value;
use crate::time::{MICROS_PER_DAY, MICROS_PER_SECOND, civil_from_days};

/// The URL with `mariadb://` read as `mysql://` (the driver knows only the latter).
pub fn mysql_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => format!("mysql://{rest}"),
        _ => url.to_owned(),
    }
}

/// `mysql://user@host:port/db`: the database for messages, without the password.
pub fn describe_url(url: &str) -> String {
    match Opts::from_url(&mysql_url(url)) {
        Ok(o) => format!(
            "mysql://{}@{}:{}/{}",
            o.user().unwrap_or(""),
            o.ip_or_hostname(),
            o.tcp_port(),
            o.db_name().unwrap_or("")
        ),
        Err(_) => "MySQL".to_owned(),
    }
}

/// `name` as one MySQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The error's text without row data, and whether retrying may help: lost connections, lock
/// waits and deadlocks, a server going away or shutting down.
pub fn describe(e: &mysql_async::Error) -> (String, bool) {
    match e {
        mysql_async::Error::Server(s) => {
            // 1040 too many connections, 1053 shutdown in progress, 1205 lock wait timeout,
            // 1213 deadlock, 1317 query interrupted, 1927 connection killed (MariaDB),
            // 2006/2013 server gone away / lost connection.
            let transient = matches!(
                s.code,
                1040 | 1053 | 1205 | 1213 | 1317 | 1927 | 2006 | 2013
            );
            (
                format!("{} (error {}, SQLSTATE {})", s.message, s.code, s.state),
                transient,
            )
        }
        mysql_async::Error::Io(io) => (io.to_string(), true),
        mysql_async::Error::Driver(d) => (d.to_string(), false),
        mysql_async::Error::Url(u) => (u.to_string(), false),
        mysql_async::Error::Other(o) => (o.to_string(), false),
    }
}

/// A value as a MySQL parameter. Timestamps are UTC date-times (the session's time zone is
/// UTC), dates and times as MySQL's own; exact decimals as their text (the column's type
/// decides); JSON as its text.
pub fn bind(value: &Value) -> Result<mysql_async::Value, String> {
    use mysql_async::Value as M;
    Ok(match value {
        Value::Null => M::NULL,
        Value::Bool(b) => M::Int(i64::from(*b)),
        Value::Int(i) => M::Int(*i),
        Value::Float(f) => M::Double(*f),
        Value::Decimal(d) => {
            let text = d.as_str();
            if matches!(text, "NaN" | "Infinity" | "-Infinity") {
                return Err(format!("MySQL has no exact decimal `{text}`"));
            }
            M::Bytes(text.as_bytes().to_vec())
        }
        Value::Text(t) | Value::Json(t) => M::Bytes(t.as_bytes().to_vec()),
        Value::Bytes(b) => M::Bytes(b.clone()),
        Value::Timestamp(us) => {
            let days = us.div_euclid(MICROS_PER_DAY);
            let in_day = us.rem_euclid(MICROS_PER_DAY);
            let (year, month, day) = civil_from_days(days);
            let year = mysql_year(year)?;
            let secs = in_day / MICROS_PER_SECOND;
            M::Date(
                year,
                month as u8,
                day as u8,
                (secs / 3600) as u8,
                (secs / 60 % 60) as u8,
                (secs % 60) as u8,
                (in_day % MICROS_PER_SECOND) as u32,
            )
        }
        Value::Date(days) => {
            let (year, month, day) = civil_from_days(i64::from(*days));
            let year = mysql_year(year)?;
            M::Date(year, month as u8, day as u8, 0, 0, 0, 0)
        }
        Value::Time(us) => {
            let negative = *us < 0;
            let us = us.unsigned_abs();
            let secs = us / MICROS_PER_SECOND as u64;
            let days = secs / 86_400;
            M::Time(
                negative,
                u32::try_from(days).map_err(|_| "a time of more than 2^32 days".to_owned())?,
                (secs / 3600 % 24) as u8,
                (secs / 60 % 60) as u8,
                (secs % 60) as u8,
                (us % MICROS_PER_SECOND as u64) as u32,
            )
        }
    })
}

/// `year` if MySQL's dates and date-times hold it.
fn mysql_year(year: i64) -> Result<u16, String> {
    u16::try_from(year)
        .ok()
        .filter(|y| (1..=9999).contains(y))
        .ok_or_else(|| format!("year {year} is outside MySQL's 1 to 9999"))
}
