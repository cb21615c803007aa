//! Canonical values: what a source cell and a target cell are turned into before they are
//! hashed and compared, so that they are equal exactly when the pipeline would have written
//! that target cell from that source cell.
//!
//! The target column decides (its [`Class`]): the lossy end of a pipeline is where the value
//! lands. A source value goes through what the sink does with it (the binding rules of
//! `crates/deliver/src/sqlite.rs` and `crates/deliver/src/postgres/bind.rs`) and then through
//! what the target column does with what it received (SQLite's type affinity, PostgreSQL's
//! input function for the column type); a target value goes through the same function, which
//! leaves a value the target itself stored unchanged (every class function is idempotent on
//! the values its column can hold).
//!
//! | target column                 | canonical value                                          |
//! |-------------------------------|----------------------------------------------------------|
//! | SQLite, any affinity          | the storage value after the sink's binding (bool 0/1, decimal/time/json as text) and the column's affinity (applied by SQLite itself, see [`Oracle`]) |
//! | int2/int4/int8                | `Int`; bools as 0/1, integral floats, integer text        |
//! | float8                        | `Float`; ints rounded to nearest, numeric text parsed     |
//! | float4                        | `Float` of the `f32` the column holds                     |
//! | bool                          | `Bool`; 0/1 and PostgreSQL's boolean spellings            |
//! | numeric(p,s)                  | `Decimal` in `numeric_out` form: the input's scale, or `s` after rounding half away from zero |
//! | text, varchar, name           | `Text`: the text the sink sends (`text_of`)               |
//! | char(n) (bpchar)              | `Text` without trailing blanks (insignificant for bpchar) |
//! | bytea                         | `Bytes`; text as its UTF-8 bytes                          |
//! | timestamp, timestamptz        | `Timestamp` (µs UTC; `timestamp` ignores a zone in the text, as PostgreSQL does); `infinity` stays text |
//! | date, time                    | `Date`, `Time` (ISO text parsed; a timestamp's date)      |
//! | json                          | `Json`, the text exactly (json keeps its input)           |
//! | jsonb                         | `Json`, re-serialized with sorted keys and no blanks      |
//! | uuid                          | `Text`, lower-case hex with hyphens                       |
//! | anything else                 | `Text`: the source's text against the target's output     |
//!
//! A value the pipeline could not have written (text that is not a number into an integer
//! column: the sink's write fails and the pipeline stops) is kept as it is, so it differs from
//! whatever the target holds. Where PostgreSQL accepts more spellings than parsed here (dates
//! like `Nov 23 2026`, `0x` integers), the row is reported as different: a false difference
//! is visible and checkable, a false equality would not be.

use std::cmp::Ordering;

use rusqlite::types::Value as SqlValue;
use tidesync_core::time::{MICROS_PER_DAY, MICROS_PER_SECOND, days_from_civil};
use tidesync_core::time::{format_date, format_time, format_timestamp};
use tidesync_core::{Decimal, Value};

/// SQLite's type affinity of a declared column type (<https://sqlite.org/datatype3.html>,
/// section 3.1: the first rule that matches wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    pub(crate) fn of(declared: &str) -> Affinity {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.trim().is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    fn column(self) -> &'static str {
        match self {
            Affinity::Integer => "i",
            Affinity::Text => "t",
            Affinity::Blob => "b",
            Affinity::Real => "r",
            Affinity::Numeric => "n",
        }
    }
}

/// PostgreSQL type oids this module maps (`pg_type.oid` of built-in types never changes).
pub(crate) mod oid {
    pub(crate) const BOOL: u32 = 16;
    pub(crate) const BYTEA: u32 = 17;
    pub(crate) const NAME: u32 = 19;
    pub(crate) const INT8: u32 = 20;
    pub(crate) const INT2: u32 = 21;
    pub(crate) const INT4: u32 = 23;
    pub(crate) const TEXT: u32 = 25;
    pub(crate) const JSON: u32 = 114;
    pub(crate) const FLOAT4: u32 = 700;
    pub(crate) const FLOAT8: u32 = 701;
    pub(crate) const BPCHAR: u32 = 1042;
    pub(crate) const VARCHAR: u32 = 1043;
    pub(crate) const DATE: u32 = 1082;
    pub(crate) const TIME: u32 = 1083;
    pub(crate) const TIMESTAMP: u32 = 1114;
    pub(crate) const TIMESTAMPTZ: u32 = 1184;
    pub(crate) const NUMERIC: u32 = 1700;
    pub(crate) const UUID: u32 = 2950;
    pub(crate) const JSONB: u32 = 3802;
}

/// The comparison class of a target column. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Sqlite(Affinity),
    PgInt,
    PgFloat8,
    PgFloat4,
    PgBool,
    /// `scale`: the typmod's scale (`numeric(p,s)`), `None` for unconstrained numeric.
    PgNumeric {
        scale: Option<i32>,
    },
    PgText {
        blank_padded: bool,
    },
    PgBytea,
    PgTimestamp {
        zoned: bool,
    },
    PgDate,
    PgTime,
    PgJson,
    PgJsonb,
    PgUuid,
    PgOther,
}

impl Class {
    /// The class of a PostgreSQL column of (base) type `type_oid` with modifier `typmod`.
    pub(crate) fn postgres(type_oid: u32, typmod: i32) -> Class {
        match type_oid {
            oid::INT2 | oid::INT4 | oid::INT8 => Class::PgInt,
            oid::FLOAT8 => Class::PgFloat8,
            oid::FLOAT4 => Class::PgFloat4,
            oid::BOOL => Class::PgBool,
            oid::NUMERIC => Class::PgNumeric {
                scale: numeric_scale(typmod),
            },
            oid::TEXT | oid::VARCHAR | oid::NAME => Class::PgText {
                blank_padded: false,
            },
            oid::BPCHAR => Class::PgText { blank_padded: true },
            oid::BYTEA => Class::PgBytea,
            oid::TIMESTAMP => Class::PgTimestamp { zoned: false },
            oid::TIMESTAMPTZ => Class::PgTimestamp { zoned: true },
            oid::DATE => Class::PgDate,
            oid::TIME => Class::PgTime,
            oid::JSON => Class::PgJson,
            oid::JSONB => Class::PgJsonb,
            oid::UUID => Class::PgUuid,
            _ => Class::PgOther,
        }
    }
}

/// The scale of a `numeric(p,s)` typmod (`((p << 16) | s) + 4`; PostgreSQL 15 allows a
/// negative scale, stored in 11 bits), `None` without a typmod.
fn numeric_scale(typmod: i32) -> Option<i32> {
    (typmod >= 4).then(|| {
        let t = typmod - 4;
        ((t & 0x7ff) ^ 1024) - 1024
    })
}

/// SQLite itself, applying a column affinity to a value: an in-memory table with one column
/// per affinity, written and read back with `RETURNING`. Exact by construction (SQLite's
/// text-to-number rules and its real-to-text rendering are intricate) and only consulted for
/// the values an affinity can change.
#[derive(Debug, Default)]
pub(crate) struct Oracle {
    conn: Option<rusqlite::Connection>,
}

impl Oracle {
    fn apply(&mut self, affinity: Affinity, value: SqlValue) -> rusqlite::Result<SqlValue> {
        if self.conn.is_none() {
            let conn = rusqlite::Connection::open_in_memory()?;
            conn.execute_batch("CREATE TABLE a (i INTEGER, t TEXT, b BLOB, r REAL, n NUMERIC)")?;
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_ref() else {
            return Err(rusqlite::Error::InvalidQuery);
        };
        let col = affinity.column();
        conn.prepare_cached(&format!(
            "INSERT OR REPLACE INTO a (rowid, {col}) VALUES (1, ?1) RETURNING {col}"
        ))?
        .query_row([value], |r| r.get(0))
    }
}

/// A SQLite storage value as a [`Value`].
pub(crate) fn from_sqlite(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::Int(i),
        SqlValue::Real(f) => Value::Float(f),
        SqlValue::Text(s) => Value::Text(s),
        SqlValue::Blob(b) => Value::Bytes(b),
    }
}

/// What the SQLite sink binds for a value (`crates/deliver/src/sqlite.rs`, `Param`).
pub(crate) fn sqlite_bind(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Int(i) => SqlValue::Integer(*i),
        Value::Float(f) => SqlValue::Real(*f),
        Value::Decimal(d) => SqlValue::Text(d.as_str().to_owned()),
        Value::Text(s) | Value::Json(s) => SqlValue::Text(s.clone()),
        Value::Bytes(b) => SqlValue::Blob(b.clone()),
        Value::Timestamp(t) => SqlValue::Text(format_timestamp(*t)),
        Value::Date(d) => SqlValue::Text(format_date(i64::from(*d))),
        Value::Time(t) => SqlValue::Text(format_time(*t)),
    }
}

/// The text the PostgreSQL sink sends for a value bound in text format
/// (`crates/deliver/src/postgres/bind.rs`, `text_of`); `None` for bytes that are not UTF-8
/// (the sink refuses them).
pub(crate) fn sink_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => String::new(),
        Value::Bool(b) => if *b { "true" } else { "false" }.to_owned(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => float_text(*f),
        Value::Decimal(d) => d.as_str().to_owned(),
        Value::Text(s) | Value::Json(s) => s.clone(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.to_owned(),
        Value::Timestamp(t) => format_timestamp(*t),
        Value::Date(d) => format_date(i64::from(*d)),
        Value::Time(t) => format_time(*t),
    })
}

fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        // Shortest text that reads back as the same double, as the sink sends it.
        format!("{f:?}")
    }
}

/// A value as text PostgreSQL's input function for a column of its class reads back as the
/// same value (for key lookups): the sink's text, except bytes in `bytea`'s hex format.
pub(crate) fn pg_literal(v: &Value) -> Option<String> {
    (!v.is_null()).then(|| tidesync_core::pg::input_text(v))
}

/// The canonical form of `value` for a column of `class`. See the module docs.
pub(crate) fn canon(class: Class, value: Value, oracle: &mut Oracle) -> rusqlite::Result<Value> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    Ok(match class {
        Class::Sqlite(affinity) => sqlite_canon(affinity, value, oracle)?,
        pg => pg_canon(pg, value),
    })
}

fn sqlite_canon(affinity: Affinity, value: Value, oracle: &mut Oracle) -> rusqlite::Result<Value> {
    use Affinity as A;
    let bound = sqlite_bind(&value);
    let changes = match (&bound, affinity) {
        (SqlValue::Null | SqlValue::Blob(_), _) | (_, A::Blob) => false,
        (SqlValue::Integer(_), A::Integer | A::Numeric) => false,
        (SqlValue::Real(_), A::Real) => false,
        (SqlValue::Text(_), A::Text) => false,
        // int -> real is a plain conversion; the rest needs SQLite's own rules.
        (SqlValue::Integer(i), A::Real) => return Ok(Value::Float(*i as f64)),
        _ => true,
    };
    Ok(from_sqlite(if changes {
        oracle.apply(affinity, bound)?
    } else {
        bound
    }))
}

fn pg_canon(class: Class, value: Value) -> Value {
    use Value::*;
    match (class, value) {
        (Class::PgInt, Bool(b)) => Int(i64::from(b)),
        (Class::PgInt, Float(f)) => integral(f).map_or(Float(f), Int),
        (Class::PgInt, Decimal(d)) => parse_pg_int(d.as_str()).map_or(Decimal(d), Int),
        (Class::PgInt, Text(s)) => parse_pg_int(&s).map_or(Text(s), Int),

        (Class::PgFloat8, Int(i)) => Float(i as f64),
        (Class::PgFloat8, Decimal(d)) => {
            parse_pg_float(d.as_str(), false).map_or(Decimal(d), Float)
        }
        (Class::PgFloat8, Text(s)) => parse_pg_float(&s, false).map_or(Text(s), Float),

        // A float4 column holds an f32: what any input rounds to.
        (Class::PgFloat4, Float(f)) => Float(f64::from(f as f32)),
        (Class::PgFloat4, Int(i)) => Float(f64::from(i as f32)),
        (Class::PgFloat4, Decimal(d)) => parse_pg_float(d.as_str(), true).map_or(Decimal(d), Float),
        (Class::PgFloat4, Text(s)) => parse_pg_float(&s, true).map_or(Text(s), Float),

        (Class::PgBool, Int(i @ (0 | 1))) => Bool(i == 1),
        (Class::PgBool, Text(s)) => parse_pg_bool(&s).map_or(Text(s), Bool),

        (Class::PgNumeric { scale }, v @ (Int(_) | Float(_) | Decimal(_) | Text(_))) => {
            let text = match &v {
                Int(i) => i.to_string(),
                Float(f) => float_text(*f),
                Decimal(d) => d.as_str().to_owned(),
                Text(s) => s.clone(),
                _ => return v,
            };
            numeric_text(&text, scale)
                .and_then(|t| tidesync_core::Decimal::parse(&t).ok())
                .map_or(v, Decimal)
        }

        (Class::PgText { blank_padded }, v) => match sink_text(&v) {
            Some(t) if blank_padded => Text(t.trim_end_matches(' ').to_owned()),
            Some(t) => Text(t),
            None => v,
        },

        (Class::PgBytea, Text(s)) => Bytes(s.into_bytes()),

        (Class::PgTimestamp { .. }, Date(d)) => Timestamp(i64::from(d) * MICROS_PER_DAY),
        (Class::PgTimestamp { zoned }, Text(s)) => match parse_pg_timestamp(&s, zoned) {
            Some(PgInstant::At(t)) => Timestamp(t),
            Some(PgInstant::Infinity) => Text("infinity".into()),
            Some(PgInstant::NegInfinity) => Text("-infinity".into()),
            None => Text(s),
        },

        (Class::PgDate, Timestamp(t)) => {
            i32::try_from(t.div_euclid(MICROS_PER_DAY)).map_or(Timestamp(t), Date)
        }
        // A date column reads the date of a timestamp text and ignores its time and zone.
        (Class::PgDate, Text(s)) => match parse_pg_timestamp(&s, false) {
            Some(PgInstant::At(t)) => {
                i32::try_from(t.div_euclid(MICROS_PER_DAY)).map_or(Text(s), Date)
            }
            Some(PgInstant::Infinity) => Text("infinity".into()),
            Some(PgInstant::NegInfinity) => Text("-infinity".into()),
            None => Text(s),
        },

        (Class::PgTime, Text(s)) => parse_pg_time(&s).map_or(Text(s), Time),

        (Class::PgJson, v @ (Text(_) | Json(_) | Int(_) | Float(_) | Decimal(_) | Bool(_))) => {
            sink_text(&v).map_or(v, Json)
        }
        (Class::PgJsonb, v @ (Text(_) | Json(_) | Int(_) | Float(_) | Decimal(_) | Bool(_))) => {
            match sink_text(&v).as_deref().and_then(normalize_json) {
                Some(j) => Json(j),
                None => v,
            }
        }
        (Class::PgUuid, Text(s)) => normalize_uuid(&s).map_or(Text(s), Text),
        (Class::PgOther, v) => sink_text(&v).map_or(v, Text),
        (_, v) => v,
    }
}

/// `f` as an i64 if it is integral and in range (as the sink binds floats to integer columns).
fn integral(f: f64) -> Option<i64> {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64)
}

fn trim_pg(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii_whitespace())
}

/// `int8in`: blanks around, an optional sign, decimal digits.
pub(crate) fn parse_pg_int(s: &str) -> Option<i64> {
    let t = trim_pg(s);
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.strip_prefix('+').unwrap_or(t).parse().ok()
}

/// `float8in`/`float4in`: blanks around, `NaN`, `[+-]Infinity`, `[+-]inf` in any case, else a
/// decimal number; out-of-range numbers (which PostgreSQL rejects) give `None`.
pub(crate) fn parse_pg_float(s: &str, single: bool) -> Option<f64> {
    let t = trim_pg(s);
    let lower = t.to_ascii_lowercase();
    match lower.as_str() {
        "nan" => return Some(f64::NAN),
        "infinity" | "+infinity" | "inf" | "+inf" => return Some(f64::INFINITY),
        "-infinity" | "-inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    let (value, zero) = if single {
        let v: f32 = t.parse().ok()?;
        (f64::from(v), v == 0.0)
    } else {
        let v: f64 = t.parse().ok()?;
        (v, v == 0.0)
    };
    let nonzero_digit = t
        .split(['e', 'E'])
        .next()
        .is_some_and(|m| m.bytes().any(|b| (b'1'..=b'9').contains(&b)));
    // Overflow to infinity and underflow to zero are errors in PostgreSQL.
    (value.is_finite() && !(zero && nonzero_digit)).then_some(value)
}

/// `boolin`: blanks around, any case, a prefix of `true`/`false`/`yes`/`no`, `on`/`off`
/// (at least two letters), `1`/`0`.
pub(crate) fn parse_pg_bool(s: &str) -> Option<bool> {
    let t = trim_pg(s).to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| t.len() >= min && word.starts_with(t.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || t == "on" || t == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || t == "0" {
        Some(false)
    } else {
        None
    }
}

/// `numeric_in` then `numeric_out` for a column with scale `scale` (`None`: unconstrained):
/// the text PostgreSQL stores and prints for `input`, or `None` where it would reject it.
/// Without a scale the display scale is the input's (`12.50` stays `12.50`; an exponent moves
/// it: `1.5e3` is `1500`, `1e-7` is `0.0000001`); with one, the value is rounded half away
/// from zero to that many fractional digits.
pub(crate) fn numeric_text(input: &str, scale: Option<i32>) -> Option<String> {
    /// Beyond this many digits PostgreSQL's numeric overflows anyway.
    const MAX_DIGITS: i64 = 200_000;
    let t = trim_pg(input);
    if t.eq_ignore_ascii_case("nan") {
        return Some("NaN".to_owned());
    }
    let (negative, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if body.eq_ignore_ascii_case("infinity") || body.eq_ignore_ascii_case("inf") {
        // A numeric with a typmod cannot hold infinity.
        return scale
            .is_none()
            .then(|| if negative { "-Infinity" } else { "Infinity" }.to_owned());
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => {
            let exp = &body[i + 1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 9
            {
                return None;
            }
            (
                &body[..i],
                exp.strip_prefix('+').unwrap_or(exp).parse::<i64>().ok()?,
            )
        }
        None => (body, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !all_digits(int_part)
        || !all_digits(frac_part)
    {
        return None;
    }
    // value = digits * 10^-dscale
    let mut digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let dscale = frac_part.len() as i64 - exponent;
    if dscale.abs() > MAX_DIGITS || digits.len() as i64 > MAX_DIGITS {
        return None;
    }
    let out_scale = match scale {
        None => {
            if dscale < 0 {
                digits.extend(std::iter::repeat_n(0, (-dscale) as usize));
            }
            dscale.max(0)
        }
        Some(s) => {
            let target = i64::from(s);
            let drop = dscale - target;
            if drop > 0 {
                // Round half away from zero at the first dropped digit.
                let drop = drop as usize;
                if digits.len() <= drop {
                    let mut padded = vec![0; drop + 1 - digits.len()];
                    padded.extend_from_slice(&digits);
                    digits = padded;
                }
                let keep = digits.len() - drop;
                let round_up = digits[keep] >= 5;
                digits.truncate(keep);
                if round_up {
                    let mut i = digits.len();
                    loop {
                        if i == 0 {
                            digits.insert(0, 1);
                            break;
                        }
                        i -= 1;
                        if digits[i] == 9 {
                            digits[i] = 0;
                        } else {
                            digits[i] += 1;
                            break;
                        }
                    }
                }
            } else {
                digits.extend(std::iter::repeat_n(0, (-drop) as usize));
            }
            // Now value = digits * 10^-target.
            if target < 0 {
                digits.extend(std::iter::repeat_n(0, (-target) as usize));
            }
            target.max(0)
        }
    };
    let out_scale = out_scale as usize;
    if digits.len() < out_scale + 1 {
        let mut padded = vec![0; out_scale + 1 - digits.len()];
        padded.extend_from_slice(&digits);
        digits = padded;
    }
    let split = digits.len() - out_scale;
    let int_digits = &digits[..split];
    let first = int_digits
        .iter()
        .position(|d| *d != 0)
        .unwrap_or(int_digits.len() - 1);
    let mut out = String::with_capacity(digits.len() + 2);
    if negative && digits.iter().any(|d| *d != 0) {
        out.push('-');
    }
    out.extend(int_digits[first..].iter().map(|d| char::from(b'0' + d)));
    if out_scale > 0 {
        out.push('.');
        out.extend(digits[split..].iter().map(|d| char::from(b'0' + d)));
    }
    Some(out)
}

/// A timestamp as PostgreSQL reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PgInstant {
    At(i64),
    Infinity,
    NegInfinity,
}

/// A byte cursor over an ASCII timestamp text.
struct Scan<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Scan<'_> {
    fn digits(&mut self, min: usize, max: usize) -> Option<(i64, usize)> {
        let n = self.b[self.pos..]
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if n < min {
            return None;
        }
        let v = self.b[self.pos..self.pos + n]
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
        self.pos += n;
        Some((v, n))
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn done(&self) -> bool {
        self.pos == self.b.len()
    }

    /// `HH:MM[:SS[.fraction]]` as microseconds; the fraction is rounded the way
    /// PostgreSQL does (`rint(strtod(".ffff") * 1e6)`).
    fn time(&mut self) -> Option<i64> {
        let (h, _) = self.digits(1, 2)?;
        if !self.eat(b':') {
            return None;
        }
        let (m, _) = self.digits(2, 2)?;
        let (mut s, mut frac_us) = (0, 0);
        if self.eat(b':') {
            s = self.digits(2, 2)?.0;
            if self.eat(b'.') {
                let start = self.pos;
                self.digits(1, 64)?;
                let text = std::str::from_utf8(&self.b[start - 1..self.pos]).ok()?;
                let frac: f64 = text.parse().ok()?;
                frac_us = (frac * 1e6).round_ties_even() as i64;
            }
        }
        if m > 59 || s > 59 || h > 24 || (h == 24 && (m, s, frac_us) != (0, 0, 0)) {
            return None;
        }
        Some((h * 3600 + m * 60 + s) * MICROS_PER_SECOND + frac_us)
    }
}

/// `timestamp[tz]_in` for ISO 8601 texts: `YYYY-MM-DD`, then optionally `T` or blanks and a
/// time, then optionally a zone (`Z`, `UTC`, `±HH`, `±HH:MM`, `±HHMM`), which a `timestamp`
/// (without time zone) ignores and a `timestamptz` applies; `infinity`, `-infinity`,
/// `epoch`. Sessions run in UTC, so a text without a zone is UTC.
pub(crate) fn parse_pg_timestamp(text: &str, zoned: bool) -> Option<PgInstant> {
    let t = trim_pg(text);
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Some(PgInstant::Infinity),
        "-infinity" => return Some(PgInstant::NegInfinity),
        "epoch" => return Some(PgInstant::At(0)),
        _ => {}
    }
    let mut c = Scan {
        b: t.as_bytes(),
        pos: 0,
    };
    let (year, _) = c.digits(4, 9)?;
    if !c.eat(b'-') {
        return None;
    }
    let (month, _) = c.digits(1, 2)?;
    if !c.eat(b'-') {
        return None;
    }
    let (day, _) = c.digits(1, 2)?;
    let (month, day) = (u32::try_from(month).ok()?, u32::try_from(day).ok()?);
    let days = days_from_civil(year, month, day);
    // Reject dates that do not exist (days_from_civil would roll them over).
    if !(1..=12).contains(&month)
        || day == 0
        || tidesync_core::time::civil_from_days(days) != (year, month, day)
    {
        return None;
    }
    let mut micros = i128::from(days) * i128::from(MICROS_PER_DAY);
    if c.done() {
        return i64::try_from(micros).ok().map(PgInstant::At);
    }
    if !(c.eat(b'T') || c.eat(b't')) {
        if c.peek() != Some(b' ') {
            return None;
        }
        while c.eat(b' ') {}
    }
    micros += i128::from(c.time()?);
    while c.eat(b' ') {}
    let offset_us: i64 = if c.done() || c.eat(b'Z') || c.eat(b'z') {
        0
    } else if t[c.pos..].eq_ignore_ascii_case("utc") {
        c.pos = c.b.len();
        0
    } else {
        let sign = if c.eat(b'+') {
            1
        } else if c.eat(b'-') {
            -1
        } else {
            return None;
        };
        let (first, n) = c.digits(1, 4)?;
        let (h, mut m) = if n > 2 {
            (first / 100, first % 100)
        } else {
            (first, 0)
        };
        let mut s = 0;
        if n <= 2 && c.eat(b':') {
            m = c.digits(2, 2)?.0;
            if c.eat(b':') {
                s = c.digits(2, 2)?.0;
            }
        }
        if h > 15 || m > 59 || s > 59 {
            return None;
        }
        sign * (h * 3600 + m * 60 + s) * MICROS_PER_SECOND
    };
    if !c.done() {
        return None;
    }
    if zoned {
        micros -= i128::from(offset_us);
    }
    i64::try_from(micros).ok().map(PgInstant::At)
}

/// `time_in` for `HH:MM[:SS[.ffffff]]` (a zone or a date is not accepted here).
pub(crate) fn parse_pg_time(text: &str) -> Option<i64> {
    let t = trim_pg(text);
    let mut c = Scan {
        b: t.as_bytes(),
        pos: 0,
    };
    let micros = c.time()?;
    c.done().then_some(micros)
}

/// JSON text in one canonical spelling (object keys sorted, no blanks, numbers as serde_json
/// writes them), the way jsonb forgets the input's spelling; `None` if it is not JSON.
pub(crate) fn normalize_json(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    serde_json::to_string(&v).ok()
}

/// `uuid_in`: optional braces, hyphens anywhere between groups, any case; printed lower-case
/// `8-4-4-4-12`.
pub(crate) fn normalize_uuid(text: &str) -> Option<String> {
    let t = trim_pg(text);
    let t = t
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// The order verify walks keys in, on both sides: SQLite's (NULL, then numbers by value, then
/// text by bytes, then blobs by bytes), which is also PostgreSQL's for integers, numerics,
/// byte-ordered (`"C"`) text, bytea, uuid and times.
pub(crate) fn cmp_value(a: &Value, b: &Value) -> Ordering {
    use Value::*;
    fn rank(v: &Value) -> u8 {
        match v {
            Null => 0,
            Bool(_) => 1,
            Int(_) | Float(_) | Decimal(_) => 2,
            Text(_) => 3,
            Bytes(_) => 4,
            Timestamp(_) => 5,
            Date(_) => 6,
            Time(_) => 7,
            Json(_) => 8,
        }
    }
    match (a, b) {
        (Bool(x), Bool(y)) => x.cmp(y),
        (Int(x), Int(y)) => x.cmp(y),
        (Float(x), Float(y)) => x.total_cmp(y),
        (Int(x), Float(y)) => cmp_int_float(*x, *y),
        (Float(x), Int(y)) => cmp_int_float(*y, *x).reverse(),
        (Decimal(x), Decimal(y)) => cmp_decimal(x, y),
        (Decimal(x), Int(y)) => cmp_decimal(x, &decimal_of_int(*y)),
        (Int(x), Decimal(y)) => cmp_decimal(&decimal_of_int(*x), y),
        (Decimal(x), Float(y)) => decimal_f64(x).total_cmp(y),
        (Float(x), Decimal(y)) => x.total_cmp(&decimal_f64(y)),
        (Text(x), Text(y)) | (Json(x), Json(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bytes(x), Bytes(y)) => x.cmp(y),
        (Timestamp(x), Timestamp(y)) | (Time(x), Time(y)) => x.cmp(y),
        (Date(x), Date(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn cmp_int_float(i: i64, f: f64) -> Ordering {
    match integral(f) {
        Some(g) => i.cmp(&g),
        None => (i as f64).total_cmp(&f),
    }
}

fn decimal_of_int(i: i64) -> Decimal {
    // An integer's decimal text always parses.
    Decimal::parse(&i.to_string()).unwrap_or_else(|_| unreachable!("integer text is a decimal"))
}

fn decimal_f64(d: &Decimal) -> f64 {
    match d.as_str() {
        "NaN" => f64::NAN,
        "Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        s => s.parse().unwrap_or(f64::NAN),
    }
}

/// Numeric order of two decimals' texts (NaN above everything, as in PostgreSQL).
fn cmp_decimal(a: &Decimal, b: &Decimal) -> Ordering {
    fn special(s: &str) -> Option<i8> {
        match s {
            "-Infinity" => Some(-1),
            "Infinity" => Some(1),
            "NaN" => Some(2),
            _ => None,
        }
    }
    let (x, y) = (a.as_str(), b.as_str());
    match (special(x), special(y)) {
        (Some(p), Some(q)) => return p.cmp(&q),
        (Some(p), None) => {
            return if p < 0 {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        (None, Some(q)) => {
            return if q < 0 {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        (None, None) => {}
    }
    // (negative, integer digits without leading zeros, fraction without trailing zeros)
    let parts = |s: &str| {
        let (neg, body) = s.strip_prefix('-').map_or((false, s), |b| (true, b));
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let int = int.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        let zero = int.is_empty() && frac.is_empty();
        (neg && !zero, int.to_owned(), frac.to_owned())
    };
    let (na, ia, fa) = parts(x);
    let (nb, ib, fb) = parts(y);
    let magnitude = ia
        .len()
        .cmp(&ib.len())
        .then_with(|| ia.cmp(&ib))
        .then_with(|| fa.cmp(&fb));
    match (na, nb) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
    }
}

#[cfg(test)]
mod tests;
