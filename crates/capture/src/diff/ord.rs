//! The order-preserving byte form of a `diff` stream's key (its `ord`): comparing two forms
//! byte by byte gives the order the database was asked to sort the query in (see
//! [`super::reader::QueryReader::read`]), so the query's rows and the stored fingerprints
//! merge in one pass.
//!
//! Per key value, a tag byte then:
//! - integers, and decimals without a fraction (`numeric(10,0)` keys): 8 bytes big-endian with
//!   the sign bit flipped;
//! - dates, timestamps, times: the same, of their day or microsecond count (tags of their own);
//! - booleans: one byte;
//! - text and bytes: the bytes with each `0x00` written `0x00 0xFF`, then `0x00 0x00`.
//!
//! Null keys, floats, JSON and decimals with a fraction are refused: a key must identify a
//! row exactly, and those do not order (or compare) reliably across databases.

use tidesync_core::Value;

const BOOL: u8 = 0x05;
const INT: u8 = 0x10;
const DATE: u8 = 0x30;
const TIMESTAMP: u8 = 0x31;
const TIME: u8 = 0x32;
const TEXT: u8 = 0x40;
const BYTES: u8 = 0x41;

/// Why a key value has no order-preserving form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrdError {
    #[error("key field {field} is null")]
    Null { field: String },
    #[error(
        "key field {field} is a {kind} value; keys must be integers, text, bytes, dates, \
         times, timestamps, booleans or decimals without a fraction (cast it in the query or \
         with `cast` in the field mapping)"
    )]
    Unsupported { field: String, kind: &'static str },
    #[error("key field {field} is the decimal {value}, which is not a 64-bit whole number")]
    Decimal { field: String, value: String },
}

fn put_i64(out: &mut Vec<u8>, tag: u8, v: i64) {
    out.push(tag);
    out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
}

fn put_escaped(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// Appends the form of `values` (the key fields named `fields`, for messages) to `out`.
pub fn encode(out: &mut Vec<u8>, fields: &[String], values: &[&Value]) -> Result<(), OrdError> {
    for (field, value) in fields.iter().zip(values) {
        match value {
            Value::Int(i) => put_i64(out, INT, *i),
            Value::Decimal(d) => {
                let i = d.as_str().parse::<i64>().map_err(|_| OrdError::Decimal {
                    field: field.clone(),
                    value: d.as_str().to_owned(),
                })?;
                put_i64(out, INT, i);
            }
            Value::Date(d) => put_i64(out, DATE, i64::from(*d)),
            Value::Timestamp(t) => put_i64(out, TIMESTAMP, *t),
            Value::Time(t) => put_i64(out, TIME, *t),
            Value::Bool(b) => out.extend_from_slice(&[BOOL, u8::from(*b)]),
            Value::Text(s) => put_escaped(out, TEXT, s.as_bytes()),
            Value::Bytes(b) => put_escaped(out, BYTES, b),
            Value::Null => {
                return Err(OrdError::Null {
                    field: field.clone(),
                });
            }
            other @ (Value::Float(_) | Value::Json(_)) => {
                return Err(OrdError::Unsupported {
                    field: field.clone(),
                    kind: other.type_name(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tidesync_core::Decimal;

    fn ord(values: &[Value]) -> Vec<u8> {
        let fields: Vec<String> = (0..values.len()).map(|i| format!("k{i}")).collect();
        let refs: Vec<&Value> = values.iter().collect();
        let mut out = Vec::new();
        encode(&mut out, &fields, &refs).unwrap();
        out
    }

    #[test]
    fn integers_order_numerically() {
        let xs = [i64::MIN, -300, -1, 0, 1, 9, 10, 255, 256, i64::MAX];
        for w in xs.windows(2) {
            assert!(ord(&[Value::Int(w[0])]) < ord(&[Value::Int(w[1])]), "{w:?}");
        }
        let d = Value::Decimal(Decimal::parse("10").unwrap());
        assert_eq!(ord(&[d]), ord(&[Value::Int(10)]));
    }

    #[test]
    fn text_orders_by_bytes_and_prefixes_first() {
        let xs = ["", "\0", "\0\0", "a", "a\0", "a\0b", "aa", "b", "é"];
        for w in xs.windows(2) {
            let (a, b) = (Value::Text(w[0].into()), Value::Text(w[1].into()));
            assert!(ord(&[a]) < ord(&[b]), "{w:?}");
        }
    }

    #[test]
    fn composite_keys_order_field_by_field() {
        let a = ord(&[Value::Text("a".into()), Value::Int(2)]);
        let b = ord(&[Value::Text("a".into()), Value::Int(10)]);
        let c = ord(&[Value::Text("ab".into()), Value::Int(1)]);
        assert!(a < b && b < c);
    }

    #[test]
    fn refuses_what_does_not_order() {
        let fields = ["id".to_owned()];
        let mut out = Vec::new();
        let err = encode(&mut out, &fields, &[&Value::Null]).unwrap_err();
        assert_eq!(err.to_string(), "key field id is null");
        let err = encode(&mut out, &fields, &[&Value::Float(1.5)]).unwrap_err();
        assert!(
            err.to_string().starts_with("key field id is a float value"),
            "{err}"
        );
        let half = Value::Decimal(Decimal::parse("1.5").unwrap());
        let err = encode(&mut out, &fields, &[&half]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key field id is the decimal 1.5, which is not a 64-bit whole number"
        );
    }
}
