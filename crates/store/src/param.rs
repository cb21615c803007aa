//! [`SqliteParam`]: a [`Value`] bound as a SQLite parameter, the way tidesync writes values
//! into SQLite everywhere (the SQLite sink, and SQLite capture looking rows up by key).

use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, ValueRef};
use tidesync_core::Value;
use tidesync_core::time::{format_date, format_time, format_timestamp};

/// Binds a [`Value`]: integers, floats, text and blobs natively; booleans as 0/1; decimals
/// as their exact text; times as ISO 8601 text.
#[derive(Debug)]
pub struct SqliteParam<'a>(pub &'a Value);

impl ToSql for SqliteParam<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Bool(b) => ToSqlOutput::Owned(i64::from(*b).into()),
            Value::Int(i) => ToSqlOutput::Owned((*i).into()),
            Value::Float(f) => ToSqlOutput::Owned((*f).into()),
            Value::Decimal(d) => ToSqlOutput::Borrowed(ValueRef::Text(d.as_str().as_bytes())),
            Value::Text(s) | Value::Json(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Value::Timestamp(t) => ToSqlOutput::Owned(format_timestamp(*t).into()),
            Value::Date(d) => ToSqlOutput::Owned(format_date(i64::from(*d)).into()),
            Value::Time(t) => ToSqlOutput::Owned(format_time(*t).into()),
        })
    }
}
