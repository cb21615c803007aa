//! Batches as JSON: the form for HTTP, agents and people. Decoding validates the batch's seq
//! invariants, so a receiver never applies a malformed batch half-way.

use super::DecodeError;
use super::compress::{self, Encoding};
use crate::Batch;

pub fn encode_batch(batch: &Batch) -> Vec<u8> {
    serde_json::to_vec(batch).unwrap_or_else(|e| unreachable!("a batch serializes: {e}"))
}

pub fn decode_batch(bytes: &[u8]) -> Result<Batch, DecodeError> {
    let batch: Batch = serde_json::from_slice(bytes).map_err(|e| DecodeError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    batch.validate().map_err(DecodeError::Batch)?;
    Ok(batch)
}

/// JSON then compression, as sent with `Content-Encoding: <encoding>`.
pub fn encode_batch_compressed(batch: &Batch, encoding: Encoding) -> Vec<u8> {
    compress::compress(&encode_batch(batch), encoding)
}

/// The inverse of [`encode_batch_compressed`], refusing to expand past `limit` bytes.
pub fn decode_batch_compressed(
    bytes: &[u8],
    encoding: Encoding,
    limit: usize,
) -> Result<Batch, DecodeError> {
    decode_batch(&compress::decompress(bytes, encoding, limit)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::tests::any_value;
    use crate::{BatchKind, Change, Key, LogEntry, Op, Position, Row, Seq};
    use proptest::prelude::*;

    fn any_change() -> impl Strategy<Value = Change> {
        (
            "[a-z]{1,8}",
            prop_oneof![
                Just(Op::Insert),
                Just(Op::Update),
                Just(Op::Delete),
                Just(Op::Read),
                Just(Op::Truncate),
                Just(Op::Patch)
            ],
            proptest::collection::vec(any_value(), 1..3),
            proptest::option::of(proptest::collection::vec(("[a-z]{1,6}", any_value()), 0..6)),
            proptest::option::of(proptest::collection::vec(("[a-z]{1,6}", any_value()), 0..6)),
            any::<i64>(),
            proptest::option::of(any::<i64>()),
        )
            .prop_map(|(stream, op, key, before, after, t, pos)| {
                // Rows never repeat a column name.
                let dedup = |cols: Vec<(String, crate::Value)>| {
                    let mut seen = std::collections::HashSet::new();
                    Row(cols
                        .into_iter()
                        .filter(|(c, _)| seen.insert(c.clone()))
                        .collect())
                };
                Change {
                    stream,
                    op,
                    key: Key(key),
                    before: before.map(dedup),
                    after: after.map(dedup),
                    commit_time_us: t,
                    position: pos.map(Position::RowId),
                    txn: None,
                    unchanged: Vec::new(),
                }
            })
    }

    proptest! {
        #[test]
        fn batches_round_trip(changes in proptest::collection::vec(any_change(), 0..8)) {
            let entries: Vec<LogEntry> = changes
                .into_iter()
                .enumerate()
                .map(|(i, change)| LogEntry { seq: Seq(10 + i as u64), change })
                .collect();
            let batch = Batch {
                pipeline: "p".into(),
                kind: BatchKind::Incremental,
                first_seq: Seq(10),
                last_seq: Seq(10 + entries.len() as u64),
                entries,
                position: None,
            };
            for enc in [Encoding::Identity, Encoding::Zstd, Encoding::Gzip] {
                let bytes = encode_batch_compressed(&batch, enc);
                prop_assert_eq!(&decode_batch_compressed(&bytes, enc, 1 << 24).unwrap(), &batch);
            }
        }
    }

    #[test]
    fn every_op_is_named_in_json_as_its_as_str() {
        for op in [
            Op::Insert,
            Op::Update,
            Op::Delete,
            Op::Read,
            Op::Truncate,
            Op::Patch,
        ] {
            let json = serde_json::to_string(&op).unwrap();
            assert_eq!(json, format!("\"{}\"", op.as_str()));
            assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), op);
        }
    }

    #[test]
    fn out_of_order_batches_are_rejected() {
        let text = r#"{"pipeline":"p","kind":"INCREMENTAL","first_seq":1,"last_seq":2,"entries":[
            {"seq":2,"change":{"stream":"s","op":"insert","key":[1],"commit_time_us":0}},
            {"seq":1,"change":{"stream":"s","op":"insert","key":[2],"commit_time_us":0}}]}"#;
        let err = decode_batch(text.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid batch: entry 1 has seq 1 out of order"
        );
    }

    #[test]
    fn unknown_fields_are_errors_with_a_location() {
        let text = "{\"pipeline\":\"p\",\n\"kindd\":\"FULL\"}";
        let err = decode_batch(text.as_bytes()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("JSON batch, line 2 column"), "{msg}");
        assert!(msg.contains("unknown field `kindd`"), "{msg}");
    }
}
