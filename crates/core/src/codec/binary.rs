//! The compact binary encoding of rows, keys and values used in the change log.
//!
//! Layout (little-endian, varints are LEB128, signed varints zigzag-encoded):
//! - value: one tag byte, then
//!   `0` null · `1` false · `2` true · `3` int: svarint · `4` float: 8 bytes IEEE-754 bits ·
//!   `5` decimal: varint length + UTF-8 · `6` text: varint length + UTF-8 · `7` bytes: varint
//!   length + bytes · `8` timestamp: svarint micros · `9` date: svarint days · `10` time:
//!   svarint micros · `11` json: varint length + UTF-8.
//! - key: varint count, then values.
//! - row: varint count, then per column varint name length + UTF-8 name, then the value.
//!
//! Decoding checks every length against the remaining input, so garbage gives an error with
//! its byte offset, never a panic or a huge allocation.

use super::DecodeError;
use crate::{Decimal, Key, Row, Value};

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const FLOAT: u8 = 4;
const DECIMAL: u8 = 5;
const TEXT: u8 = 6;
const BYTES: u8 = 7;
const TIMESTAMP: u8 = 8;
const DATE: u8 = 9;
const TIME: u8 = 10;
const JSON: u8 = 11;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_svarint(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Int(i) => {
            out.push(INT);
            put_svarint(out, *i);
        }
        Value::Float(x) => {
            out.push(FLOAT);
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Value::Decimal(d) => {
            out.push(DECIMAL);
            put_bytes(out, d.as_str().as_bytes());
        }
        Value::Text(s) => {
            out.push(TEXT);
            put_bytes(out, s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(BYTES);
            put_bytes(out, b);
        }
        Value::Timestamp(t) => {
            out.push(TIMESTAMP);
            put_svarint(out, *t);
        }
        Value::Date(d) => {
            out.push(DATE);
            put_svarint(out, i64::from(*d));
        }
        Value::Time(t) => {
            out.push(TIME);
            put_svarint(out, *t);
        }
        Value::Json(j) => {
            out.push(JSON);
            put_bytes(out, j.as_bytes());
        }
    }
}

pub fn encode_key(out: &mut Vec<u8>, key: &Key) {
    put_varint(out, key.0.len() as u64);
    key.0.iter().for_each(|v| encode_value(out, v));
}

pub fn encode_row(out: &mut Vec<u8>, row: &Row) {
    put_varint(out, row.0.len() as u64);
    for (c, v) in &row.0 {
        put_bytes(out, c.as_bytes());
        encode_value(out, v);
    }
}

/// Appends the form of [`encode_row`] of the row with columns `names` and `values` (same
/// length), without building a [`Row`]: `row_hash` of it equals the store's hash of that row.
pub fn encode_row_parts(out: &mut Vec<u8>, names: &[String], values: &[Value]) {
    debug_assert_eq!(names.len(), values.len());
    put_varint(out, names.len() as u64);
    for (c, v) in names.iter().zip(values) {
        put_bytes(out, c.as_bytes());
        encode_value(out, v);
    }
}

pub fn key_to_vec(key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    encode_key(&mut out, key);
    out
}

pub fn row_to_vec(row: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_row(&mut out, row);
    out
}

/// A key encoding whose byte order follows integer order, for keys of B-trees (the store's
/// current-state table). Integers are a tag and 8 big-endian bytes with the sign bit flipped,
/// so consecutive ids are neighbours in the tree and a batch of new rows touches few pages
/// (the LEB128 form scatters them: measured 16.8k vs 79k upserts/s, bench/RESULTS.md). Other
/// values use the ordinary value encoding. Unique per key; not read back (rows carry their
/// key values).
pub fn key_to_sortable_vec(key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 9 * key.0.len());
    encode_sortable_key(&mut out, key);
    out
}

/// Appends the form of [`key_to_sortable_vec`] to `out`.
pub fn encode_sortable_key(out: &mut Vec<u8>, key: &Key) {
    put_varint(out, key.0.len() as u64);
    for v in &key.0 {
        match v {
            Value::Int(i) => {
                out.push(INT);
                out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
            }
            other => encode_value(out, other),
        }
    }
}

/// Reads the binary forms from a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    what: &'static str,
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(what: &'static str, input: &'a [u8]) -> Self {
        Reader {
            what,
            input,
            pos: 0,
        }
    }

    fn err(&self, problem: impl Into<String>) -> DecodeError {
        DecodeError::Binary {
            what: self.what,
            offset: self.pos,
            problem: problem.into(),
        }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .input
            .get(self.pos)
            .ok_or_else(|| self.err("unexpected end of input"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn svarint(&mut self) -> Result<i64, DecodeError> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let remaining = self.input.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= remaining)
            .ok_or_else(|| self.err(format!("length {n} exceeds the {remaining} bytes left")))?;
        let out = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_owned)
    }

    /// A length-prefixed UTF-8 string, borrowed from the input.
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.varint()?;
        let start = self.pos;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|e| DecodeError::Binary {
            what: self.what,
            offset: start + e.valid_up_to(),
            problem: "invalid UTF-8".into(),
        })
    }

    /// A count that cannot exceed the bytes left (each item takes at least one byte), so a
    /// corrupt count cannot make us allocate gigabytes.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        let remaining = (self.input.len() - self.pos) as u64;
        if n > remaining {
            return Err(self.err(format!("count {n} exceeds the {remaining} bytes left")));
        }
        Ok(n as usize)
    }

    pub fn value(&mut self) -> Result<Value, DecodeError> {
        let tag_at = self.pos;
        Ok(match self.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            INT => Value::Int(self.svarint()?),
            FLOAT => {
                let bytes = self.take(8)?;
                let mut bits = [0u8; 8];
                bits.copy_from_slice(bytes);
                Value::Float(f64::from_bits(u64::from_le_bytes(bits)))
            }
            DECIMAL => {
                // Borrowed: `Decimal::parse` makes the one copy the value keeps.
                let s = self.str()?;
                Value::Decimal(Decimal::parse(s).map_err(|e| self.err(e.to_string()))?)
            }
            TEXT => Value::Text(self.string()?),
            BYTES => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?.to_vec())
            }
            TIMESTAMP => Value::Timestamp(self.svarint()?),
            DATE => {
                let d = self.svarint()?;
                Value::Date(i32::try_from(d).map_err(|_| self.err("date out of range"))?)
            }
            TIME => Value::Time(self.svarint()?),
            JSON => Value::Json(self.string()?),
            tag => {
                self.pos = tag_at;
                return Err(self.err(format!("unknown value tag {tag}")));
            }
        })
    }

    pub fn key(&mut self) -> Result<Key, DecodeError> {
        let n = self.count()?;
        (0..n)
            .map(|_| self.value())
            .collect::<Result<_, _>>()
            .map(Key)
    }

    pub fn row(&mut self) -> Result<Row, DecodeError> {
        let n = self.count()?;
        let mut columns = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.string()?;
            columns.push((name, self.value()?));
        }
        Ok(Row(columns))
    }

    /// Fails unless the whole input was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.pos == self.input.len() {
            Ok(())
        } else {
            Err(self.err(format!("{} trailing bytes", self.input.len() - self.pos)))
        }
    }
}

pub fn decode_key(bytes: &[u8]) -> Result<Key, DecodeError> {
    let mut r = Reader::new("key", bytes);
    let key = r.key()?;
    r.finish()?;
    Ok(key)
}

pub fn decode_row(bytes: &[u8]) -> Result<Row, DecodeError> {
    let mut r = Reader::new("row", bytes);
    let row = r.row()?;
    r.finish()?;
    Ok(row)
}

/// A stable 64-bit FNV-1a hash of an encoded row, stored beside current state so that diffs
/// and verification compare hashes instead of rows. Stable across versions and platforms.
pub fn row_hash(encoded: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in encoded {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::tests::any_value;
    use proptest::prelude::*;

    fn any_row() -> impl Strategy<Value = Row> {
        proptest::collection::vec(("[a-z_]{1,12}", any_value()), 0..12).prop_map(Row)
    }

    proptest! {
        #[test]
        fn rows_round_trip(row in any_row()) {
            prop_assert_eq!(decode_row(&row_to_vec(&row)).unwrap(), row);
        }

        #[test]
        fn keys_round_trip(values in proptest::collection::vec(any_value(), 0..4)) {
            let key = Key(values);
            prop_assert_eq!(decode_key(&key_to_vec(&key)).unwrap(), key);
        }

        #[test]
        fn garbage_gives_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_row(&bytes);
            let _ = decode_key(&bytes);
        }

        #[test]
        fn truncated_rows_are_errors(row in any_row(), cut in any::<prop::sample::Index>()) {
            let bytes = row_to_vec(&row);
            let at = cut.index(bytes.len());
            prop_assert!(decode_row(&bytes[..at]).is_err());
        }
    }

    #[test]
    fn errors_name_the_offset() {
        let err = decode_row(&[1, 1, b'a', 200]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "binary row at byte 3: unknown value tag 200"
        );
        let err = decode_row(&[1, 255, 255, 255, 255, 1]).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    proptest! {
        #[test]
        fn sortable_keys_follow_integer_order(a in any::<i64>(), b in any::<i64>()) {
            let (ka, kb) = (Key(vec![Value::Int(a)]), Key(vec![Value::Int(b)]));
            prop_assert_eq!(key_to_sortable_vec(&ka).cmp(&key_to_sortable_vec(&kb)), a.cmp(&b));
        }

        #[test]
        fn sortable_keys_are_unique(a in proptest::collection::vec(any_value(), 1..3), b in proptest::collection::vec(any_value(), 1..3)) {
            let (ka, kb) = (Key(a), Key(b));
            prop_assert_eq!(key_to_sortable_vec(&ka) == key_to_sortable_vec(&kb), ka == kb);
        }
    }

    #[test]
    fn row_hash_is_stable() {
        // Pinned: changing the hash would make every stored row look changed.
        assert_eq!(row_hash(b""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(row_hash(b"a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
    }
}
