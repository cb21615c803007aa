//! Parses the comma-separated SQL literals that SQLite's `quote()` writes, which is how the
//! capture triggers record a row: `1,'O''Brien',NULL,X'00FF',2.5`.
//!
//! `quote()` is lossless for every storage class: integers as digits, text quoted with `''`
//! escapes, blobs as `X'hex'`, and reals with 15 significant digits, or with `%!.20e` when 15
//! digits would not read back as the same double (SQLite's `quoteFunc`), so a trigger row
//! turns back into exactly the values that were stored.

use tidesync_core::Value;

/// Parses `text` into values; the error names the byte offset and what was expected.
pub(crate) fn parse_list(text: &str) -> Result<Vec<Value>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let (value, next) = parse_one(text, pos)?;
        out.push(value);
        pos = next;
        match bytes.get(pos) {
            None => return Ok(out),
            Some(b',') => pos += 1,
            Some(other) => {
                return Err(format!(
                    "expected `,` or the end at byte {pos}, found `{}`",
                    char::from(*other)
                ));
            }
        }
    }
}

fn parse_one(text: &str, start: usize) -> Result<(Value, usize), String> {
    let bytes = text.as_bytes();
    match bytes.get(start) {
        Some(b'\'') => {
            let mut s = String::new();
            let mut pos = start + 1;
            loop {
                let rel = text[pos..]
                    .find('\'')
                    .ok_or_else(|| format!("unterminated text starting at byte {start}"))?;
                s.push_str(&text[pos..pos + rel]);
                pos += rel + 1;
                if bytes.get(pos) == Some(&b'\'') {
                    s.push('\'');
                    pos += 1;
                } else {
                    return Ok((Value::Text(s), pos));
                }
            }
        }
        Some(b'X') if bytes.get(start + 1) == Some(&b'\'') => {
            let from = start + 2;
            let len = text[from..]
                .find('\'')
                .ok_or_else(|| format!("unterminated blob starting at byte {start}"))?;
            let hex = &text[from..from + len];
            if !hex.len().is_multiple_of(2) {
                return Err(format!("odd-length blob at byte {start}"));
            }
            let blob = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| format!("invalid hex in blob at byte {start}"))?;
            Ok((Value::Bytes(blob), from + len + 1))
        }
        Some(_) if text[start..].starts_with("NULL") => Ok((Value::Null, start + 4)),
        Some(b'-' | b'0'..=b'9') => {
            let len = text[start..].find(',').unwrap_or(text.len() - start);
            let literal = &text[start..start + len];
            let value = if literal.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                literal
                    .parse::<i64>()
                    .map(Value::Int)
                    .map_err(|e| e.to_string())
            } else {
                literal
                    .parse::<f64>()
                    .map(Value::Float)
                    .map_err(|e| e.to_string())
            }
            .map_err(|e| format!("invalid number `{literal}` at byte {start}: {e}"))?;
            Ok((value, start + len))
        }
        Some(_) => Err(format!(
            "unexpected `{}` at byte {start}",
            text[start..].chars().next().unwrap_or('?')
        )),
        None => Err(format!("expected a value at byte {start}, found the end")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use rusqlite::Connection;

    /// Asks SQLite itself to quote `value`, the way the triggers do.
    fn sqlite_quote(conn: &Connection, value: &Value) -> String {
        let param: rusqlite::types::Value = match value {
            Value::Null => rusqlite::types::Value::Null,
            Value::Int(i) => (*i).into(),
            Value::Float(f) => (*f).into(),
            Value::Text(t) => t.clone().into(),
            Value::Bytes(b) => b.clone().into(),
            other => unreachable!("not a SQLite storage class: {other:?}"),
        };
        conn.query_row("SELECT quote(?1)", [param], |r| r.get(0))
            .unwrap()
    }

    fn storage_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Int),
            // SQLite stores NaN as NULL and -0.0 as 0, so a trigger never sees either.
            any::<f64>()
                .prop_filter("not NaN or -0.0", |f| !f.is_nan()
                    && f.to_bits() != (-0.0f64).to_bits())
                .prop_map(Value::Float),
            "[^\u{0}]*".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..32).prop_map(Value::Bytes),
        ]
    }

    proptest! {
        #[test]
        fn sqlite_quote_round_trips(values in proptest::collection::vec(storage_value(), 1..8)) {
            let conn = Connection::open_in_memory().unwrap();
            let text = values.iter().map(|v| sqlite_quote(&conn, v)).collect::<Vec<_>>().join(",");
            prop_assert_eq!(parse_list(&text).unwrap(), values, "text was {}", text);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(text in ".{0,40}") {
            let _ = parse_list(&text);
        }
    }

    #[test]
    fn errors_name_the_offset() {
        assert_eq!(
            parse_list("1,'abc").unwrap_err(),
            "unterminated text starting at byte 2"
        );
        assert_eq!(
            parse_list("1;2").unwrap_err(),
            "invalid number `1;2` at byte 0: invalid float literal"
        );
        assert_eq!(parse_list("X'0'").unwrap_err(), "odd-length blob at byte 0");
    }
}
