//! Converts PostgreSQL's text output of one column value into a [`Value`].
//!
//! pgoutput sends column values as each type's text output (unless the `binary` option is on),
//! so this is where a PostgreSQL type becomes one of tidesync's value types. The mapping is
//! chosen by type oid: the oids of built-in types (below 16384) are fixed across PostgreSQL
//! versions, while a user-defined type (enum, domain, composite) gets a new oid in every
//! database and stays text. Every type not listed below (interval, arrays, enums, ranges,
//! network types, money, timetz, ...) becomes [`Value::Text`] with PostgreSQL's exact text; the
//! caller records the type name next to it.
//!
//! | PostgreSQL (oid)                                       | value                            |
//! |--------------------------------------------------------|----------------------------------|
//! | bool (16)                                              | `Bool` (`t`/`f`)                 |
//! | int2 (21), int4 (23), int8 (20)                        | `Int`                            |
//! | numeric (1700)                                         | `Decimal`, exact text, NaN/±Infinity kept |
//! | float4 (700), float8 (701)                             | `Float`, `NaN`/`Infinity`/`-Infinity` |
//! | text (25), varchar (1043), bpchar (1042), name (19), uuid (2950) | `Text`                 |
//! | json (114), jsonb (3802)                               | `Json`                           |
//! | bytea (17)                                             | `Bytes` (hex format `\x0aff`)    |
//! | date (1082)                                            | `Date`                           |
//! | time (1083)                                            | `Time`                           |
//! | timestamp (1114), timestamptz (1184)                   | `Timestamp`, UTC                 |
//!
//! Decisions:
//! - `infinity` and `-infinity` of date, timestamp and timestamptz stay `Text`: no instant
//!   stands for them, and a sink that refuses text in a date column says so with the word
//!   `infinity` in its error, where a made-up extreme date would pass silently.
//! - `timestamp` (without time zone) is read as UTC.
//! - Dates before year 1 (PostgreSQL prints `0044-03-15 BC`) become the proleptic Gregorian
//!   astronomical year (1 BC is year 0, 44 BC is year -43), which is also what PostgreSQL
//!   computes with.
//! - `float4` text is parsed as an `f32` and widened: the `f64` is then exactly the stored
//!   `real`, the same number a binary read of the column gives. Parsing `0.1` directly as an
//!   `f64` would give a different number than the one stored.
//!
//! These texts assume the session settings PostgreSQL's own subscriber sets on its
//! replication connection (`-c datestyle=ISO -c intervalstyle=postgres -c
//! extra_float_digits=3`), plus `bytea_output = hex`: the replication connection must set them,
//! because another `DateStyle` changes the date format and `extra_float_digits` below 1 rounds
//! floats. A text in any other form is an error naming the type and the text, never a guess.

use tidesync_core::time::{self, MICROS_PER_DAY, MICROS_PER_SECOND};
use tidesync_core::{Decimal, Value};

use super::pgoutput::Oid;

/// Oids of the built-in types this module converts (`pg_type.oid`, fixed by PostgreSQL).
pub mod type_oid {
    use super::Oid;

    pub const BOOL: Oid = Oid(16);
    pub const BYTEA: Oid = Oid(17);
    pub const NAME: Oid = Oid(19);
    pub const INT8: Oid = Oid(20);
    pub const INT2: Oid = Oid(21);
    pub const INT4: Oid = Oid(23);
    pub const TEXT: Oid = Oid(25);
    pub const JSON: Oid = Oid(114);
    pub const FLOAT4: Oid = Oid(700);
    pub const FLOAT8: Oid = Oid(701);
    pub const BPCHAR: Oid = Oid(1042);
    pub const VARCHAR: Oid = Oid(1043);
    pub const DATE: Oid = Oid(1082);
    pub const TIME: Oid = Oid(1083);
    pub const TIMESTAMP: Oid = Oid(1114);
    pub const TIMESTAMPTZ: Oid = Oid(1184);
    pub const NUMERIC: Oid = Oid(1700);
    pub const UUID: Oid = Oid(2950);
    pub const JSONB: Oid = Oid(3802);
}

/// The `pg_type.typname` of a type this module converts.
/// PostgreSQL's `typname` of a built-in type this module knows.
pub fn builtin_name(oid: Oid) -> Option<&'static str> {
    Some(match oid {
        type_oid::BOOL => "bool",
        type_oid::BYTEA => "bytea",
        type_oid::NAME => "name",
        type_oid::INT8 => "int8",
        type_oid::INT2 => "int2",
        type_oid::INT4 => "int4",
        type_oid::TEXT => "text",
        type_oid::JSON => "json",
        type_oid::FLOAT4 => "float4",
        type_oid::FLOAT8 => "float8",
        type_oid::BPCHAR => "bpchar",
        type_oid::VARCHAR => "varchar",
        type_oid::DATE => "date",
        type_oid::TIME => "time",
        type_oid::TIMESTAMP => "timestamp",
        type_oid::TIMESTAMPTZ => "timestamptz",
        type_oid::NUMERIC => "numeric",
        type_oid::UUID => "uuid",
        type_oid::JSONB => "jsonb",
        _ => return None,
    })
}

/// A column's text that is not in the form PostgreSQL prints for its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid PostgreSQL {type_name} (type oid {type_oid}) text `{}`: expected {expected}",
    shorten(.text)
)]
pub struct TextValueError {
    pub type_oid: Oid,
    /// The caller's name for the type if it gave one, else PostgreSQL's `typname`.
    pub type_name: String,
    pub text: String,
    pub expected: &'static str,
}

/// The text for an error message: long values (a bytea, a document) are cut after 64 characters.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Converts the text output of a value of type `type_oid` (see the module docs for the
/// mapping). `type_name` (e.g. from a pgoutput `Type` message or `format_type`) only names the
/// type in errors; the conversion depends on the oid alone.
pub fn text_to_value(
    type_oid: Oid,
    type_name: Option<&str>,
    text: &str,
) -> Result<Value, TextValueError> {
    let fail = |expected: &'static str| TextValueError {
        type_oid,
        type_name: type_name
            .or(builtin_name(type_oid))
            .unwrap_or("user-defined type")
            .to_owned(),
        text: text.to_owned(),
        expected,
    };
    let is_infinity = matches!(text, "infinity" | "-infinity");
    match type_oid {
        // `t`/`f` from the output function (pgoutput, COPY); `true`/`false` from a `::text`
        // cast (rows read between watermarks and on request).
        type_oid::BOOL => match text {
            "t" | "true" => Ok(Value::Bool(true)),
            "f" | "false" => Ok(Value::Bool(false)),
            _ => Err(fail("`t` or `f`")),
        },
        type_oid::INT2 | type_oid::INT4 | type_oid::INT8 => text
            .parse()
            .map(Value::Int)
            .map_err(|_| fail("a 64-bit integer")),
        type_oid::NUMERIC => Decimal::parse(text).map(Value::Decimal).map_err(|_| {
            fail("digits with an optional `-` and fraction, NaN, Infinity or -Infinity")
        }),
        type_oid::FLOAT4 => parse_float(text, |t| t.parse::<f32>().ok().map(f64::from))
            .map(Value::Float)
            .ok_or_else(|| fail("a finite decimal number, NaN, Infinity or -Infinity")),
        type_oid::FLOAT8 => parse_float(text, |t| t.parse::<f64>().ok())
            .map(Value::Float)
            .ok_or_else(|| fail("a finite decimal number, NaN, Infinity or -Infinity")),
        type_oid::TEXT | type_oid::VARCHAR | type_oid::BPCHAR | type_oid::NAME | type_oid::UUID => {
            Ok(Value::Text(text.to_owned()))
        }
        type_oid::JSON | type_oid::JSONB => Ok(Value::Json(text.to_owned())),
        type_oid::BYTEA => parse_bytea(text).map(Value::Bytes).ok_or_else(|| {
            fail("hex format `\\x` followed by pairs of hex digits (bytea_output = hex)")
        }),
        type_oid::DATE | type_oid::TIMESTAMP | type_oid::TIMESTAMPTZ if is_infinity => {
            Ok(Value::Text(text.to_owned()))
        }
        type_oid::DATE => parse_pg_date(text)
            .map(Value::Date)
            .ok_or_else(|| fail("YYYY-MM-DD[ BC] (DateStyle ISO)")),
        type_oid::TIME => time::parse_time(text)
            .map(Value::Time)
            .map_err(|_| fail("HH:MM:SS[.ffffff]")),
        type_oid::TIMESTAMP => parse_pg_timestamp(text, false)
            .map(Value::Timestamp)
            .ok_or_else(|| fail("YYYY-MM-DD HH:MM:SS[.ffffff][ BC] (DateStyle ISO)")),
        type_oid::TIMESTAMPTZ => parse_pg_timestamp(text, true)
            .map(Value::Timestamp)
            .ok_or_else(|| fail("YYYY-MM-DD HH:MM:SS[.ffffff]±HH[:MM[:SS]][ BC] (DateStyle ISO)")),
        _ => Ok(Value::Text(text.to_owned())),
    }
}

/// PostgreSQL's spellings of the special values, else a finite number. Rust's parser also
/// accepts `inf` and `nan`, which PostgreSQL never prints; those are rejected.
fn parse_float(text: &str, parse: impl Fn(&str) -> Option<f64>) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => parse(text).filter(|x| x.is_finite()),
    }
}

/// `\x` and an even number of hex digits.
fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    hex.chunks_exact(2)
        .map(|pair| match pair {
            &[hi, lo] => Some(nibble(hi)? << 4 | nibble(lo)?),
            _ => None,
        })
        .collect()
}

/// Rewrites a `YYYY-...` text whose year is BC into the astronomical year that
/// [`time::parse_date`] reads: `0044-03-15` (BC) becomes `-0043-03-15`.
fn bc_to_astronomical(text: &str) -> Option<String> {
    let (year, rest) = text.split_once('-')?;
    if year.is_empty() || year.len() > 12 || !year.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i64 = year.parse().ok()?;
    if year == 0 {
        return None; // there is no year 0 BC
    }
    let astronomical = 1 - year;
    let sign = if astronomical < 0 { "-" } else { "" };
    Some(format!("{sign}{:04}-{rest}", astronomical.unsigned_abs()))
}

/// Splits off PostgreSQL's ` BC` suffix and rewrites the year if it was there.
fn without_era(text: &str) -> Option<std::borrow::Cow<'_, str>> {
    // PostgreSQL never prints a sign on the year; core's parser would accept one.
    if !text.bytes().next()?.is_ascii_digit() {
        return None;
    }
    match text.strip_suffix(" BC") {
        Some(body) => bc_to_astronomical(body).map(Into::into),
        None => Some(text.into()),
    }
}

/// A date in DateStyle ISO: `2026-11-23`, `10000-01-01`, `0044-03-15 BC`.
fn parse_pg_date(text: &str) -> Option<i32> {
    let days = time::parse_date(&without_era(text)?).ok()?;
    i32::try_from(days).ok()
}

/// A timestamp in DateStyle ISO: `2026-11-23 14:21:00.123456`, with an offset `+05:30`, `-03`
/// or `+00:19:32` when `with_offset` (timestamptz), and ` BC` after everything for years
/// before 1.
fn parse_pg_timestamp(text: &str, with_offset: bool) -> Option<i64> {
    let text = without_era(text)?;
    let (date, rest) = text.split_once(' ')?;
    let (clock, offset_seconds) = if with_offset {
        let at = rest.find(['+', '-'])?;
        (rest.get(..at)?, parse_offset(rest.get(at..)?)?)
    } else {
        (rest, 0)
    };
    let days = time::parse_date(date).ok()?;
    let in_day = time::parse_time(clock).ok()?;
    // i128: the extremes of PostgreSQL's range come close to i64's.
    let micros = i128::from(days) * i128::from(MICROS_PER_DAY) + i128::from(in_day)
        - i128::from(offset_seconds) * i128::from(MICROS_PER_SECOND);
    i64::try_from(micros).ok()
}

/// `±HH`, `±HH:MM` or `±HH:MM:SS` (PostgreSQL prints only the parts that are not zero;
/// seconds appear for historical local mean time offsets) into seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    let (sign, digits) = match text.as_bytes().first()? {
        b'+' => (1, text.get(1..)?),
        b'-' => (-1, text.get(1..)?),
        _ => return None,
    };
    let mut seconds = 0;
    let mut parts = 0;
    for part in digits.split(':') {
        if parts == 3 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let value: i64 = part.parse().ok()?;
        if parts > 0 && value > 59 {
            return None;
        }
        seconds = seconds * 60 + value;
        parts += 1;
    }
    // Scale `HH` and `HH:MM` up to seconds.
    for _ in parts..3 {
        seconds *= 60;
    }
    Some(sign * seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decimal(text: &str) -> Value {
        Value::Decimal(Decimal::parse(text).unwrap())
    }

    /// Microseconds since the Unix epoch of a UTC civil time.
    fn utc(year: i64, month: u32, day: u32, h: i64, m: i64, s: i64, micros: i64) -> i64 {
        time::days_from_civil(year, month, day) * MICROS_PER_DAY
            + (h * 3600 + m * 60 + s) * MICROS_PER_SECOND
            + micros
    }

    fn date(year: i64, month: u32, day: u32) -> Value {
        Value::Date(i32::try_from(time::days_from_civil(year, month, day)).unwrap())
    }

    /// One row per type family and edge case: (type oid, PostgreSQL's text, expected value).
    #[test]
    fn every_listed_type_converts_from_postgres_text() {
        use type_oid::*;
        let cases: Vec<(Oid, &str, Value)> = vec![
            (BOOL, "t", Value::Bool(true)),
            (BOOL, "f", Value::Bool(false)),
            // `::text` of a boolean (rows read between watermarks).
            (BOOL, "true", Value::Bool(true)),
            (BOOL, "false", Value::Bool(false)),
            (INT2, "-32768", Value::Int(-32_768)),
            (INT4, "2147483647", Value::Int(2_147_483_647)),
            (INT8, "-9223372036854775808", Value::Int(i64::MIN)),
            (NUMERIC, "12.50", decimal("12.50")),
            (NUMERIC, "-0.000", decimal("-0.000")),
            (NUMERIC, "NaN", decimal("NaN")),
            (NUMERIC, "Infinity", decimal("Infinity")),
            (NUMERIC, "-Infinity", decimal("-Infinity")),
            (
                NUMERIC,
                "123456789012345678901234567890.123456789",
                decimal("123456789012345678901234567890.123456789"),
            ),
            (FLOAT8, "1.5", Value::Float(1.5)),
            (FLOAT8, "-0", Value::Float(-0.0)),
            (FLOAT8, "1e+100", Value::Float(1e100)),
            (
                FLOAT8,
                "2.2250738585072014e-308",
                Value::Float(f64::MIN_POSITIVE),
            ),
            (FLOAT8, "NaN", Value::Float(f64::NAN)),
            (FLOAT8, "Infinity", Value::Float(f64::INFINITY)),
            (FLOAT8, "-Infinity", Value::Float(f64::NEG_INFINITY)),
            (FLOAT4, "0.1", Value::Float(f64::from(0.1_f32))),
            (FLOAT4, "3.4028235e+38", Value::Float(f64::from(f32::MAX))),
            (FLOAT4, "-Infinity", Value::Float(f64::NEG_INFINITY)),
            (TEXT, "O'Brien\n", Value::Text("O'Brien\n".into())),
            (VARCHAR, "", Value::Text(String::new())),
            (BPCHAR, "ab  ", Value::Text("ab  ".into())),
            (NAME, "pg_class", Value::Text("pg_class".into())),
            (
                UUID,
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                Value::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            ),
            (
                JSON,
                r#"{"b": 1,  "a": 2}"#,
                Value::Json(r#"{"b": 1,  "a": 2}"#.into()),
            ),
            (
                JSONB,
                r#"{"a": 2, "b": 1}"#,
                Value::Json(r#"{"a": 2, "b": 1}"#.into()),
            ),
            (BYTEA, "\\x00ff", Value::Bytes(vec![0x00, 0xff])),
            (BYTEA, "\\x", Value::Bytes(Vec::new())),
            (
                BYTEA,
                "\\xDEADbeef",
                Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef]),
            ),
            (DATE, "2026-11-23", date(2026, 11, 23)),
            (DATE, "10000-01-01", date(10_000, 1, 1)),
            (DATE, "0001-01-01 BC", date(0, 1, 1)),
            (DATE, "0044-03-15 BC", date(-43, 3, 15)),
            (DATE, "4713-11-24 BC", date(-4712, 11, 24)),
            (DATE, "infinity", Value::Text("infinity".into())),
            (DATE, "-infinity", Value::Text("-infinity".into())),
            (TIME, "14:21:00", Value::Time(51_660 * MICROS_PER_SECOND)),
            (TIME, "00:00:00.000001", Value::Time(1)),
            (TIME, "24:00:00", Value::Time(MICROS_PER_DAY)),
            (
                TIMESTAMP,
                "2026-11-23 14:21:00",
                Value::Timestamp(utc(2026, 11, 23, 14, 21, 0, 0)),
            ),
            (
                TIMESTAMP,
                "2026-11-23 14:21:00.1",
                Value::Timestamp(utc(2026, 11, 23, 14, 21, 0, 100_000)),
            ),
            (
                TIMESTAMP,
                "2026-11-23 14:21:00.12",
                Value::Timestamp(utc(2026, 11, 23, 14, 21, 0, 120_000)),
            ),
            (
                TIMESTAMP,
                "2026-11-23 14:21:00.123",
                Value::Timestamp(utc(2026, 11, 23, 14, 21, 0, 123_000)),
            ),
            (
                TIMESTAMP,
                "2026-11-23 14:21:00.1234",
                Value::Timestamp(utc(2026, 11, 23, 14, 21, 0, 123_400)),
            ),
            (
                TIMESTAMP,
                "2026-11-23 14:21:00.12345",
                Value::Timestamp(utc(2026, 11, 23, 14, 21, 0, 123_450)),
            ),
            (
                TIMESTAMP,
                "2026-11-23 14:21:00.123456",
                Value::Timestamp(1_795_443_660_123_456),
            ),
            (
                TIMESTAMP,
                "1969-12-31 23:59:59.999999",
                Value::Timestamp(-1),
            ),
            (
                TIMESTAMP,
                "0001-01-01 00:00:00 BC",
                Value::Timestamp(utc(0, 1, 1, 0, 0, 0, 0)),
            ),
            (TIMESTAMP, "infinity", Value::Text("infinity".into())),
            (
                TIMESTAMPTZ,
                "2026-11-23 14:21:00.5+05:30",
                Value::Timestamp(1_795_423_860_500_000),
            ),
            (
                TIMESTAMPTZ,
                "2026-11-23 14:21:00+00",
                Value::Timestamp(1_795_443_660_000_000),
            ),
            (
                TIMESTAMPTZ,
                "2026-11-23 11:21:00-03",
                Value::Timestamp(1_795_443_660_000_000),
            ),
            (
                TIMESTAMPTZ,
                "1900-01-01 00:00:00+00:19:32",
                Value::Timestamp(utc(1899, 12, 31, 23, 40, 28, 0)),
            ),
            (
                TIMESTAMPTZ,
                "0044-03-15 12:00:00+00 BC",
                Value::Timestamp(utc(-43, 3, 15, 12, 0, 0, 0)),
            ),
            (TIMESTAMPTZ, "-infinity", Value::Text("-infinity".into())),
            // Everything else stays PostgreSQL's text.
            (
                Oid(1186),
                "1 day 02:03:04",
                Value::Text("1 day 02:03:04".into()),
            ),
            (Oid(1007), "{1,2,NULL}", Value::Text("{1,2,NULL}".into())),
            (Oid(16_400), "happy", Value::Text("happy".into())),
        ];
        for (oid, text, expected) in cases {
            assert_eq!(
                text_to_value(oid, None, text),
                Ok(expected),
                "type oid {oid}, text {text:?}"
            );
        }
    }

    #[test]
    fn texts_postgres_does_not_print_are_rejected() {
        use type_oid::*;
        let cases: Vec<(Oid, &str)> = vec![
            (BOOL, "T"),
            (INT4, "1.0"),
            (INT8, "9223372036854775808"),
            (NUMERIC, "1e5"),
            (NUMERIC, ".5"),
            (FLOAT8, "inf"),
            (FLOAT8, "nan"),
            (FLOAT8, "1e999"),
            (FLOAT4, "1e39"),
            (BYTEA, "\\x0"),
            (BYTEA, "\\xzz"),
            (BYTEA, "\\000"),     // bytea_output = escape
            (DATE, "23.11.2026"), // DateStyle German
            (DATE, "-2026-11-23"),
            (DATE, "0000-01-01 BC"),
            (DATE, "2026-02-29"),
            (TIME, "14:21"),
            (TIMESTAMP, "2026-11-23T14:21:00"),
            (TIMESTAMP, "2026-11-23 14:21:00+00"),
            (TIMESTAMP, "2026-11-23 14:21:00.1234567"),
            (TIMESTAMPTZ, "2026-11-23 14:21:00"),
            (TIMESTAMPTZ, "2026-11-23 14:21:00+5"),
            (TIMESTAMPTZ, "2026-11-23 14:21:00+05:60"),
            (TIMESTAMPTZ, "2026-11-23 14:21:00+05:30:00:00"),
            (TIMESTAMPTZ, "Mon Nov 23 14:21:00 2026 UTC"), // DateStyle Postgres
        ];
        for (oid, text) in cases {
            assert!(
                text_to_value(oid, None, text).is_err(),
                "type oid {oid}, text {text:?} should be rejected"
            );
        }
    }

    #[test]
    fn error_names_the_type_and_the_text() {
        let err = text_to_value(type_oid::INT4, None, "abc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid PostgreSQL int4 (type oid 23) text `abc`: expected a 64-bit integer"
        );
    }

    #[test]
    fn error_prefers_the_callers_type_name() {
        let err = text_to_value(type_oid::TIMESTAMPTZ, Some("timestamp with time zone"), "x")
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "invalid PostgreSQL timestamp with time zone (type oid 1184) text `x`"
            ),
            "{err}"
        );
    }

    #[test]
    fn error_shortens_long_texts() {
        let text = format!("\\x{}", "é".repeat(100));
        let err = text_to_value(type_oid::BYTEA, None, &text).unwrap_err();
        assert_eq!(err.text, text);
        let shown = err.to_string();
        assert!(
            shown.contains(&format!("`\\x{}…`", "é".repeat(62))),
            "{shown}"
        );
    }

    proptest! {
        #[test]
        fn garbage_text_never_panics(
            oid in proptest::sample::select(vec![16u32, 17, 20, 21, 23, 700, 701, 1082, 1083, 1114, 1184, 1700]),
            text in ".{0,40}",
        ) {
            let _ = text_to_value(Oid(oid), None, &text);
        }

        #[test]
        fn every_int8_round_trips(n in any::<i64>()) {
            prop_assert_eq!(text_to_value(type_oid::INT8, None, &n.to_string()), Ok(Value::Int(n)));
        }

        /// Rust's shortest round-trip form is what PostgreSQL prints with extra_float_digits ≥ 1
        /// (up to exponent spelling), so every finite double comes back bit for bit.
        #[test]
        fn every_finite_float8_round_trips(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            prop_assert_eq!(text_to_value(type_oid::FLOAT8, None, &x.to_string()), Ok(Value::Float(x)));
        }

        #[test]
        fn every_bytea_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let text: String = std::iter::once("\\x".to_owned())
                .chain(bytes.iter().map(|b| format!("{b:02x}")))
                .collect();
            prop_assert_eq!(text_to_value(type_oid::BYTEA, None, &text), Ok(Value::Bytes(bytes)));
        }
    }
}
