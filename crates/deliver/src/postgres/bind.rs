//! Binding a [`Value`] to a statement parameter of the target column's type.
//!
//! The server infers each parameter's type from the column it goes into (`INSERT` target,
//! `WHERE key = $n`), and `prepare` reports it. From that type we decide once per column how
//! its values travel ([`ColumnKind`]), then per value:
//! - in PostgreSQL's binary format when the value has an exact binary form for that type
//!   (int8/int4/int2, float8/float4, bool, bytea, timestamp/timestamptz, date, time);
//! - otherwise in **text format**: the server parses the text with the column type's own input
//!   function, exactly as it would a literal. Decimals reach `numeric` as their exact text
//!   (`12.50` keeps its scale, 40 digits stay 40 digits), JSON reaches `json`/`jsonb` as its
//!   text, and any other type (uuid, enums, domains, arrays, varchar(n), ...) works as long as
//!   the source's value is valid input for it. Invalid input is a definite server error.
//!
//! Nothing converts into a lossier form on our side: an int out of an int4/int2 column's range
//! is an error naming the column; a float reaches an integer column only if it is integral and
//! in range (otherwise its text goes to the server, which rejects it); non-UTF-8 bytes cannot
//! become text. Values go only into parameters, never into SQL text.

use std::borrow::Cow;
use std::error::Error;

use tidesync_core::Value;
use tidesync_core::time::{format_date, format_time, format_timestamp};
use tokio_postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};

// `ToSql::to_sql` names `bytes::BytesMut`. tokio-postgres re-exports it here for its derive
// macro (generated code uses this path), which saves a direct dependency on `bytes`.
use bytes::BytesMut;

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
pub(crate) const PG_EPOCH_US: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
pub(crate) const PG_EPOCH_DAYS: i32 = 10_957;

/// How the values of one column are bound, decided from the parameter type the server inferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    Int8,
    Int4,
    Int2,
    Float8,
    Float4,
    Bool,
    Bytea,
    /// timestamp and timestamptz: both are microseconds since 2000-01-01 on the wire (UTC for
    /// timestamptz; for timestamp, the UTC wall-clock time).
    Timestamp,
    Date,
    Time,
    /// Every other type: values go as text and the server parses them.
    Text,
}

impl ColumnKind {
    pub(crate) fn of(ty: &Type) -> ColumnKind {
        match *ty {
            Type::INT8 => ColumnKind::Int8,
            Type::INT4 => ColumnKind::Int4,
            Type::INT2 => ColumnKind::Int2,
            Type::FLOAT8 => ColumnKind::Float8,
            Type::FLOAT4 => ColumnKind::Float4,
            Type::BOOL => ColumnKind::Bool,
            Type::BYTEA => ColumnKind::Bytea,
            Type::TIMESTAMP | Type::TIMESTAMPTZ => ColumnKind::Timestamp,
            Type::DATE => ColumnKind::Date,
            Type::TIME => ColumnKind::Time,
            _ => ColumnKind::Text,
        }
    }
}

/// A value ready to bind: converted for its column, borrowing text and bytes from the batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bound<'a> {
    Null,
    Int8(i64),
    Int4(i32),
    Int2(i16),
    Float8(f64),
    Float4(f32),
    Bool(bool),
    Bytes(&'a [u8]),
    /// Microseconds since 2000-01-01 (PostgreSQL's epoch).
    Timestamp(i64),
    /// Days since 2000-01-01.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Sent in text format, parsed by the server with the column type's input function.
    Text(Cow<'a, str>),
}

/// Converts `value` for a column of `kind`. The error says what does not fit, without the
/// value itself (the caller adds column, table, seq and key).
pub(crate) fn bind(value: &Value, kind: ColumnKind) -> Result<Bound<'_>, String> {
    use ColumnKind as K;
    Ok(match (value, kind) {
        (Value::Null, _) => Bound::Null,

        (Value::Int(i), K::Int8 | K::Int4 | K::Int2) => bind_int(*i, kind)?,
        (Value::Bool(b), K::Int8 | K::Int4 | K::Int2) => bind_int(i64::from(*b), kind)?,
        (Value::Float(f), K::Int8 | K::Int4 | K::Int2) if integral(*f).is_some() => {
            bind_int(integral(*f).unwrap_or_default(), kind)?
        }

        (Value::Float(f), K::Float8) => Bound::Float8(*f),
        // A float4 column holds less than a double: rounding to it is what the column asks for
        // (the server rounds a text or float8 input the same way).
        (Value::Float(f), K::Float4) => Bound::Float4(*f as f32),
        // Exactly representable ints only; larger ones go as text and the server rounds.
        (Value::Int(i), K::Float8) if i.unsigned_abs() <= 1 << 53 => Bound::Float8(*i as f64),

        (Value::Bool(b), K::Bool) => Bound::Bool(*b),
        // SQLite has no booleans: it stores 0 and 1.
        (Value::Int(i @ (0 | 1)), K::Bool) => Bound::Bool(*i == 1),

        (Value::Bytes(b), K::Bytea) => Bound::Bytes(b),
        // Text in a blob column (SQLite allows it): its UTF-8 bytes, exactly.
        (Value::Text(s), K::Bytea) => Bound::Bytes(s.as_bytes()),
        (other, K::Bytea) => {
            return Err(format!(
                "a {} value cannot go into a bytea column",
                other.type_name()
            ));
        }

        (Value::Timestamp(t), K::Timestamp) => Bound::Timestamp(
            t.checked_sub(PG_EPOCH_US)
                .filter(|t| *t != i64::MIN && *t != i64::MAX) // ±infinity on the wire
                .ok_or_else(|| format!("timestamp {t} µs is out of PostgreSQL's range"))?,
        ),
        (Value::Date(d), K::Date) => Bound::Date(
            d.checked_sub(PG_EPOCH_DAYS)
                .filter(|d| *d != i32::MIN && *d != i32::MAX)
                .ok_or_else(|| format!("date {d} days is out of PostgreSQL's range"))?,
        ),
        (Value::Time(t), K::Time) => Bound::Time(*t),

        (value, _) => Bound::Text(text_of(value)?),
    })
}

/// An integer for an integer column, range-checked.
fn bind_int(i: i64, kind: ColumnKind) -> Result<Bound<'static>, String> {
    Ok(match kind {
        ColumnKind::Int4 => Bound::Int4(
            i32::try_from(i).map_err(|_| format!("{i} is out of range for integer (int4)"))?,
        ),
        ColumnKind::Int2 => Bound::Int2(
            i16::try_from(i).map_err(|_| format!("{i} is out of range for smallint (int2)"))?,
        ),
        _ => Bound::Int8(i),
    })
}

/// `f` as an i64 if it is integral and in range.
fn integral(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; every integral f64 below it in magnitude fits an i64.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64)
}

/// The text form PostgreSQL's input functions read.
pub(crate) fn text_of(value: &Value) -> Result<Cow<'_, str>, String> {
    Ok(match value {
        Value::Null => Cow::Borrowed(""),
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Int(i) => Cow::Owned(i.to_string()),
        Value::Float(f) if f.is_nan() => Cow::Borrowed("NaN"),
        Value::Float(f) if f.is_infinite() => {
            Cow::Borrowed(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        // Shortest text that reads back as the same double (`0.1`, `1e300`).
        Value::Float(f) => Cow::Owned(format!("{f:?}")),
        Value::Decimal(d) => Cow::Borrowed(d.as_str()),
        Value::Text(s) | Value::Json(s) => Cow::Borrowed(s.as_str()),
        Value::Bytes(b) => Cow::Borrowed(
            std::str::from_utf8(b)
                .map_err(|_| "bytes that are not UTF-8 cannot go into a non-bytea column")?,
        ),
        Value::Timestamp(t) => Cow::Owned(format_timestamp(*t)),
        Value::Date(d) => Cow::Owned(format_date(i64::from(*d))),
        Value::Time(t) => Cow::Owned(format_time(*t)),
    })
}

impl ToSql for Bound<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // `bind` chose the variant from this very type; check anyway, since a mismatch would
        // send bytes the server misreads.
        let expected = match self {
            Bound::Null => return Ok(IsNull::Yes),
            Bound::Text(s) => {
                out.extend_from_slice(s.as_bytes());
                return Ok(IsNull::No);
            }
            Bound::Int8(_) => ColumnKind::Int8,
            Bound::Int4(_) => ColumnKind::Int4,
            Bound::Int2(_) => ColumnKind::Int2,
            Bound::Float8(_) => ColumnKind::Float8,
            Bound::Float4(_) => ColumnKind::Float4,
            Bound::Bool(_) => ColumnKind::Bool,
            Bound::Bytes(_) => ColumnKind::Bytea,
            Bound::Timestamp(_) => ColumnKind::Timestamp,
            Bound::Date(_) => ColumnKind::Date,
            Bound::Time(_) => ColumnKind::Time,
        };
        if ColumnKind::of(ty) != expected {
            return Err(format!("a {expected:?} value cannot be sent as {ty}").into());
        }
        match self {
            Bound::Int8(v) | Bound::Timestamp(v) | Bound::Time(v) => {
                out.extend_from_slice(&v.to_be_bytes());
            }
            Bound::Int4(v) | Bound::Date(v) => out.extend_from_slice(&v.to_be_bytes()),
            Bound::Int2(v) => out.extend_from_slice(&v.to_be_bytes()),
            Bound::Float8(v) => out.extend_from_slice(&v.to_be_bytes()),
            Bound::Float4(v) => out.extend_from_slice(&v.to_be_bytes()),
            Bound::Bool(v) => out.extend_from_slice(&[u8::from(*v)]),
            Bound::Bytes(v) => out.extend_from_slice(v),
            Bound::Null | Bound::Text(_) => {}
        }
        Ok(IsNull::No)
    }

    /// Any type: text format suits every type, and binary variants are checked in `to_sql`.
    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        match self {
            Bound::Text(_) => Format::Text,
            _ => Format::Binary,
        }
    }

    to_sql_checked!();
}
