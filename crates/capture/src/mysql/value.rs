//! MySQL values as [`Value`]s: from binlog rows and from query results (binary protocol), by
//! the column's [`Kind`], so that both give the same value for the same cell.
//!
//! | MySQL | value |
//! |---|---|
//! | TINYINT .. BIGINT, YEAR | `Int`; BIGINT UNSIGNED above 2^63-1: `Decimal` (exact) |
//! | DECIMAL | `Decimal` at the column's scale |
//! | FLOAT, DOUBLE | `Float` (FLOAT's f32 widened exactly) |
//! | CHAR, VARCHAR, TEXT, ENUM, SET | `Text` (ENUM: its label, SET: labels joined by `,`) |
//! | BINARY, VARBINARY, BLOB, GEOMETRY | `Bytes` (BINARY(n) padded with zero bytes to n) |
//! | BIT(1); BIT(n) | `Bool`; `Bytes`, big-endian, ceil(n/8) bytes |
//! | DATE | `Date` |
//! | TIME | `Time` (may be negative or above 24 hours, as MySQL's) |
//! | DATETIME | `Timestamp` of the wall-clock time read as UTC |
//! | TIMESTAMP | `Timestamp` (an instant; sessions run in UTC) |
//! | JSON | `Json` |
//!
//! Zero dates (`0000-00-00`) have no value: reading one is an error that names the column.

use mysql_async::Value as M;
use mysql_async::binlog::value::BinlogValue;
use tidesync_core::time::{MICROS_PER_DAY, MICROS_PER_SECOND, days_from_civil};
use tidesync_core::{Decimal, Value};

use super::schema::{Charset, Column, Kind};

/// Where a MySQL value was read: the two differ for text (the binlog has the column's
/// charset, queries get utf8mb4), TIMESTAMP, YEAR, ENUM and SET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Binlog,
    Query,
}

/// A binlog row's cell.
pub(crate) fn from_binlog(column: &Column, value: BinlogValue<'_>) -> Result<Value, String> {
    match value {
        BinlogValue::Value(v) => convert(column, v, Origin::Binlog),
        BinlogValue::Jsonb(j) => {
            let json: serde_json::Value = j
                .try_into()
                .map_err(|e| format!("unreadable binary JSON: {e}"))?;
            Ok(Value::Json(json.to_string()))
        }
        BinlogValue::JsonDiff(_) => Err(
            "a partial JSON update: set binlog_row_value_options = '' on the server so the \
             binlog carries whole JSON documents"
                .to_owned(),
        ),
    }
}

/// A cell as MySQL's driver hands it over.
pub(crate) fn convert(column: &Column, value: M, origin: Origin) -> Result<Value, String> {
    if value == M::NULL {
        return Ok(Value::Null);
    }
    let unexpected = |v: &M| format!("unexpected value {v:?} for a {} column", column.type_name);
    Ok(match (&column.kind, value) {
        (Kind::Int { unsigned, bytes }, M::Int(i)) => {
            if *unsigned && i < 0 {
                // The binlog has no signedness unless binlog_row_metadata is set: the bits
                // are those of the unsigned number.
                let bits = u32::from(*bytes) * 8;
                let u = (i as u64) & (u64::MAX >> (64 - bits));
                unsigned_value(u)
            } else if !*unsigned && *bytes == 3 && origin == Origin::Binlog {
                // The driver reads a signed MEDIUMINT without extending its sign.
                let v = i & 0xFF_FFFF;
                Value::Int(if v & 0x80_0000 != 0 {
                    v - 0x100_0000
                } else {
                    v
                })
            } else {
                Value::Int(i)
            }
        }
        (Kind::Int { .. }, M::UInt(u)) => unsigned_value(u),
        (Kind::Year, M::Int(y)) => Value::Int(y),
        (Kind::Year, M::UInt(y)) => Value::Int(y as i64),
        (Kind::Year, M::Bytes(b)) => {
            // The binlog's YEAR is 1900 + its byte; the byte 0 is the year 0000.
            let y: i64 = text(&b)?
                .parse()
                .map_err(|_| format!("unreadable YEAR {b:?}"))?;
            Value::Int(if origin == Origin::Binlog && y == 1900 {
                0
            } else {
                y
            })
        }
        (Kind::Decimal, M::Bytes(b)) => {
            Value::Decimal(Decimal::parse(text(&b)?).map_err(|e| e.to_string())?)
        }
        (Kind::Float, M::Float(f)) => Value::Float(f64::from(f)),
        (Kind::Float, M::Double(d)) => Value::Float(f64::from(d as f32)),
        (Kind::Double, M::Double(d)) => Value::Float(d),
        (Kind::Double, M::Float(f)) => Value::Float(f64::from(f)),
        (Kind::Text(charset), M::Bytes(b)) => Value::Text(match origin {
            Origin::Query => String::from_utf8(b)
                .map_err(|_| "text that is not UTF-8 from a utf8mb4 session".to_owned())?,
            Origin::Binlog => decode(*charset, b)?,
        }),
        (Kind::Binary { pad }, M::Bytes(mut b)) => {
            if let Some(n) = pad
                && b.len() < *n
            {
                b.resize(*n, 0);
            }
            Value::Bytes(b)
        }
        (Kind::Bit { bits }, M::Bytes(b)) => {
            if *bits == 1 {
                Value::Bool(b.iter().any(|&x| x != 0))
            } else {
                let n = (*bits as usize).div_ceil(8);
                let mut out = vec![0; n.saturating_sub(b.len())];
                out.extend_from_slice(&b[b.len().saturating_sub(n)..]);
                Value::Bytes(out)
            }
        }
        (Kind::Bit { bits }, M::Int(i)) if *bits == 1 => Value::Bool(i != 0),
        (Kind::Bit { bits }, M::UInt(u)) if *bits == 1 => Value::Bool(u != 0),
        (Kind::Enum(labels), M::Int(i)) => Value::Text(match i {
            0 => String::new(),
            i => labels
                .get(i as usize - 1)
                .cloned()
                .ok_or_else(|| format!("ENUM index {i} of {} labels", labels.len()))?,
        }),
        (Kind::Enum(_), M::Bytes(b)) if origin == Origin::Query => Value::Text(text(&b)?.into()),
        (Kind::Set(_), M::Bytes(b)) if origin == Origin::Query => Value::Text(text(&b)?.into()),
        (Kind::Set(labels), M::Bytes(mask)) => {
            let mut out: Vec<&str> = Vec::new();
            for (i, label) in labels.iter().enumerate() {
                if mask
                    .get(i / 8)
                    .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
                {
                    out.push(label);
                }
            }
            Value::Text(out.join(","))
        }
        (Kind::Json, M::Bytes(b)) => Value::Json(
            String::from_utf8(b).map_err(|_| "a JSON document that is not UTF-8".to_owned())?,
        ),
        (Kind::Date, M::Date(y, m, d, ..)) => Value::Date(date(y, m, d)? as i32),
        (Kind::DateTime | Kind::Timestamp, M::Date(y, m, d, h, mi, s, us)) => {
            let days = date(y, m, d)?;
            Value::Timestamp(
                days * MICROS_PER_DAY
                    + (i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s)) * MICROS_PER_SECOND
                    + i64::from(us),
            )
        }
        (Kind::Timestamp, M::Int(secs)) => {
            if secs == 0 {
                return Err(zero_date());
            }
            Value::Timestamp(secs * MICROS_PER_SECOND)
        }
        (Kind::Timestamp, M::Bytes(b)) => {
            // The binlog's TIMESTAMP2: `seconds[.micros]` since the epoch.
            let t = text(&b)?;
            let (secs, micros) = t.split_once('.').unwrap_or((t, "0"));
            let secs: i64 = secs
                .parse()
                .map_err(|_| format!("unreadable TIMESTAMP {t}"))?;
            let micros: i64 = format!("{micros:0<6}")
                .parse()
                .map_err(|_| format!("unreadable TIMESTAMP {t}"))?;
            if secs == 0 && micros == 0 {
                return Err(zero_date());
            }
            Value::Timestamp(secs * MICROS_PER_SECOND + micros)
        }
        (Kind::Time, M::Time(negative, days, h, m, s, us)) => {
            let micros =
                ((i64::from(days) * 24 + i64::from(h)) * 3600 + i64::from(m) * 60 + i64::from(s))
                    * MICROS_PER_SECOND
                    + i64::from(us);
            Value::Time(if negative { -micros } else { micros })
        }
        (_, v) => return Err(unexpected(&v)),
    })
}

/// An unsigned integer: `Int` while it fits, else its exact decimal.
fn unsigned_value(u: u64) -> Value {
    match i64::try_from(u) {
        Ok(i) => Value::Int(i),
        Err(_) => Value::Decimal(
            Decimal::parse(&u.to_string()).unwrap_or_else(|_| unreachable!("digits")),
        ),
    }
}

fn text(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| format!("unreadable value {b:?}"))
}

fn zero_date() -> String {
    "a zero date (0000-00-00), which no target can hold: update the row to NULL or a real date"
        .to_owned()
}

/// Days since 1970-01-01 of a MySQL date; zero dates and zero parts are errors.
fn date(y: u16, m: u8, d: u8) -> Result<i64, String> {
    if m == 0 || d == 0 {
        return Err(zero_date());
    }
    Ok(days_from_civil(i64::from(y), u32::from(m), u32::from(d)))
}

/// Bytes of a column's charset as text.
fn decode(charset: Charset, bytes: Vec<u8>) -> Result<String, String> {
    match charset {
        Charset::Utf8 => {
            String::from_utf8(bytes).map_err(|_| "text that is not valid UTF-8".to_owned())
        }
        Charset::Latin1 => Ok(bytes.into_iter().map(cp1252).collect()),
    }
}

/// One Windows-1252 byte (MySQL's `latin1`; its five undefined bytes map to the C1 controls,
/// as MySQL's own conversion does).
fn cp1252(b: u8) -> char {
    const HIGH: [u16; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013,
        0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
    ];
    match b {
        0x80..=0x9F => char::from_u32(u32::from(HIGH[usize::from(b - 0x80)]))
            .unwrap_or(char::REPLACEMENT_CHARACTER),
        b => char::from(b),
    }
}

/// A key value as a query parameter of the column's type.
pub(crate) fn key_param(column: &Column, value: &Value) -> Result<M, String> {
    match (&column.kind, value) {
        // A BIGINT UNSIGNED beyond i64 travels as its decimal.
        (Kind::Int { .. }, Value::Decimal(d)) => d
            .as_str()
            .parse::<u64>()
            .map(M::UInt)
            .map_err(|_| format!("{d} is not an integer of column {}", column.name)),
        (Kind::Bit { .. }, Value::Bool(b)) => Ok(M::Bytes(vec![u8::from(*b)])),
        _ => tidesync_core::mysql::bind(value),
    }
}

/// Appends a value in PostgreSQL's text `COPY` format (PostgreSQL docs, "COPY", "Text
/// Format"): PostgreSQL's input form, `\N` for null, backslash, tab, newline and carriage
/// return escaped. For the direct copy into a PostgreSQL target; a value the target column
/// refuses (a negative TIME, a year past 9999) fails that chunk, and the copy goes on through
/// the log, which names the row.
pub(crate) fn put_copy_value(out: &mut Vec<u8>, value: &Value) {
    let escaped = |out: &mut Vec<u8>, text: &str| {
        for b in text.bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b => out.push(b),
            }
        }
    };
    match value {
        Value::Null => out.extend_from_slice(b"\\N"),
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::Bool(b) => out.push(if *b { b't' } else { b'f' }),
        Value::Decimal(d) => out.extend_from_slice(d.as_str().as_bytes()),
        Value::Text(t) | Value::Json(t) => escaped(out, t),
        other => escaped(out, &tidesync_core::pg::input_text(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(kind: Kind) -> Column {
        Column {
            name: "c".into(),
            kind,
            type_name: "t".into(),
            nullable: true,
        }
    }

    #[test]
    fn unsigned_integers_without_signedness_metadata_stay_exact() {
        let c = col(Kind::Int {
            unsigned: true,
            bytes: 8,
        });
        assert_eq!(
            convert(&c, M::Int(-1), Origin::Binlog),
            Ok(Value::Decimal(
                Decimal::parse("18446744073709551615").unwrap()
            ))
        );
        assert_eq!(
            convert(&c, M::UInt(u64::MAX), Origin::Query),
            Ok(Value::Decimal(
                Decimal::parse("18446744073709551615").unwrap()
            ))
        );
        let tiny = col(Kind::Int {
            unsigned: true,
            bytes: 1,
        });
        assert_eq!(
            convert(&tiny, M::Int(-1), Origin::Binlog),
            Ok(Value::Int(255))
        );
        let medium = col(Kind::Int {
            unsigned: true,
            bytes: 3,
        });
        assert_eq!(
            convert(&medium, M::Int(-1), Origin::Binlog),
            Ok(Value::Int(16_777_215))
        );
        let signed = col(Kind::Int {
            unsigned: false,
            bytes: 1,
        });
        assert_eq!(
            convert(&signed, M::Int(-1), Origin::Binlog),
            Ok(Value::Int(-1))
        );
        let medium = col(Kind::Int {
            unsigned: false,
            bytes: 3,
        });
        for (raw, want) in [(0x80_0000, -8_388_608), (0xFF_FFFF, -1), (5, 5), (-5, -5)] {
            assert_eq!(
                convert(&medium, M::Int(raw), Origin::Binlog),
                Ok(Value::Int(want))
            );
        }
    }

    #[test]
    fn enum_set_year_and_bit_read_the_same_from_both_origins() {
        let e = col(Kind::Enum(vec!["a".into(), "b c".into()]));
        assert_eq!(
            convert(&e, M::Int(2), Origin::Binlog),
            convert(&e, M::Bytes(b"b c".to_vec()), Origin::Query)
        );
        let s = col(Kind::Set(vec!["x".into(), "y".into(), "z".into()]));
        assert_eq!(
            convert(&s, M::Bytes(vec![0b101]), Origin::Binlog),
            Ok(Value::Text("x,z".into()))
        );
        assert_eq!(
            convert(&s, M::Bytes(b"x,z".to_vec()), Origin::Query),
            Ok(Value::Text("x,z".into()))
        );
        let y = col(Kind::Year);
        assert_eq!(
            convert(&y, M::Bytes(b"2024".to_vec()), Origin::Binlog),
            Ok(Value::Int(2024))
        );
        assert_eq!(
            convert(&y, M::Bytes(b"1900".to_vec()), Origin::Binlog),
            Ok(Value::Int(0))
        );
        assert_eq!(
            convert(&y, M::Int(2024), Origin::Query),
            Ok(Value::Int(2024))
        );
        let b1 = col(Kind::Bit { bits: 1 });
        assert_eq!(
            convert(&b1, M::Bytes(vec![1]), Origin::Binlog),
            Ok(Value::Bool(true))
        );
        let b12 = col(Kind::Bit { bits: 12 });
        assert_eq!(
            convert(&b12, M::Bytes(vec![0x0A, 0xBC]), Origin::Query),
            Ok(Value::Bytes(vec![0x0A, 0xBC]))
        );
    }

    #[test]
    fn timestamps_dates_and_times() {
        let ts = col(Kind::Timestamp);
        assert_eq!(
            convert(&ts, M::Bytes(b"1700000000.000123".to_vec()), Origin::Binlog),
            Ok(Value::Timestamp(1_700_000_000_000_123))
        );
        assert_eq!(
            convert(&ts, M::Bytes(b"1700000000.5".to_vec()), Origin::Binlog),
            Ok(Value::Timestamp(1_700_000_000_500_000))
        );
        // 2023-11-14 22:13:20 UTC
        assert_eq!(
            convert(&ts, M::Date(2023, 11, 14, 22, 13, 20, 123), Origin::Query),
            Ok(Value::Timestamp(1_700_000_000_000_123))
        );
        assert!(
            convert(&ts, M::Bytes(b"0".to_vec()), Origin::Binlog)
                .unwrap_err()
                .contains("zero date")
        );
        let d = col(Kind::Date);
        assert!(
            convert(&d, M::Date(0, 0, 0, 0, 0, 0, 0), Origin::Query)
                .unwrap_err()
                .contains("zero date")
        );
        let t = col(Kind::Time);
        assert_eq!(
            convert(&t, M::Time(true, 1, 2, 3, 4, 5), Origin::Binlog),
            Ok(Value::Time(-(((26 * 3600 + 3 * 60 + 4) * 1_000_000) + 5)))
        );
    }

    #[test]
    fn copy_lines_escape_their_values() {
        let row = tidesync_core::Row(vec![
            ("a".into(), Value::Int(7)),
            ("b".into(), Value::Text("x\ty\\z\n".into())),
            ("c".into(), Value::Null),
            ("d".into(), Value::Bytes(vec![0xab, 0x01])),
            ("e".into(), Value::Bool(true)),
        ]);
        let mut out = Vec::new();
        for (i, (_, v)) in row.0.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            put_copy_value(&mut out, v);
        }
        out.push(b'\n');
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "7\tx\\ty\\\\z\\n\t\\N\t\\\\xab01\tt\n"
        );
    }

    #[test]
    fn text_in_its_charset_and_padded_binary() {
        let latin = col(Kind::Text(Charset::Latin1));
        assert_eq!(
            convert(&latin, M::Bytes(vec![b'a', 0xE9, 0x80]), Origin::Binlog),
            Ok(Value::Text("aé€".into()))
        );
        let utf8 = col(Kind::Text(Charset::Utf8));
        assert!(convert(&utf8, M::Bytes(vec![0xFF]), Origin::Binlog).is_err());
        let bin = col(Kind::Binary { pad: Some(4) });
        assert_eq!(
            convert(&bin, M::Bytes(b"ab".to_vec()), Origin::Binlog),
            Ok(Value::Bytes(b"ab\0\0".to_vec()))
        );
    }
}
