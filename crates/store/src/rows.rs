//! Writing an append's log entries and current-state rows with multi-row statements.
//!
//! Executing one `INSERT` per row was most of an append's SQLite time: every execution runs
//! the statement's program from its start, binds every parameter (the pipeline name included)
//! and resets. [`Pending`] collects the rows of one append (their encoded keys and rows in one
//! buffer, so a row is encoded once for the log and the current state) and writes them with
//! statements of up to [`ROWS_PER_STATEMENT`] rows, the pipeline bound once as `?1`.
//!
//! Order: log entries are never read during an append, so they may be written at any point
//! before the commit. Current-state writes are only collected when nothing reads the current
//! state during the append ([`can_collect_current`]), and collected upserts are written before
//! any delete of the current state, so every key sees its changes in seq order (a multi-row
//! upsert applies its rows in order, so a key twice in one statement ends with the later row).

use std::ops::Range;
use std::sync::OnceLock;

use rusqlite::Transaction;
use tidesync_core::codec::binary;
use tidesync_core::{BatchKind, Captured, Change, Op, Position};

use crate::{StoreError, op_code};

/// The most rows one statement writes. A batch's rows go out in statements of 64, 32, .., 1
/// rows, so that at most seven statement texts per table are prepared (and cached).
pub(crate) const ROWS_PER_STATEMENT: usize = 64;

const LOG_INSERT: &str = "INSERT INTO changes (pipeline, seq, stream, op, key, before, after, commit_us, position, txn) VALUES ";
const LOG_WIDTH: usize = 9;
const CURRENT_UPSERT: &str = "INSERT INTO current (pipeline, stream, key, row, seq, hash) VALUES ";
const CURRENT_WIDTH: usize = 5;
const CURRENT_CONFLICT: &str = " ON CONFLICT (pipeline, stream, key) DO UPDATE SET row = excluded.row, seq = excluded.seq, hash = excluded.hash";

/// Whether the append of `captured` may collect its current-state writes: none of its changes
/// reads the current state while the append runs (to fill unchanged values, to drop a
/// snapshot row the log already has) or removes a whole stream from it.
pub(crate) fn can_collect_current(captured: &Captured) -> bool {
    !captured.changes.iter().any(|c| {
        !c.unchanged.is_empty()
            || c.op == Op::Truncate
            || (c.op == Op::Read && captured.kind == BatchKind::Incremental)
    })
}

/// One log entry waiting to be written; byte ranges index [`Pending::blobs`] and
/// [`Pending::text`].
struct LogRow {
    seq: i64,
    stream: Range<usize>,
    op: i64,
    key: Range<usize>,
    before: Option<Range<usize>>,
    after: Option<Range<usize>>,
    commit_us: i64,
    position: Option<String>,
    txn: Option<Range<usize>>,
}

/// One current-state upsert waiting to be written.
struct CurrentRow {
    stream: Range<usize>,
    key: Range<usize>,
    row: Range<usize>,
    seq: i64,
    hash: i64,
}

/// What [`Pending::log`] encoded for the current state: the order-preserving key and the row.
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    pub(crate) current_key: Range<usize>,
    pub(crate) after: Option<Range<usize>>,
}

/// The rows of one append not written yet.
#[derive(Default)]
pub(crate) struct Pending {
    /// Encoded keys and rows.
    blobs: Vec<u8>,
    /// Stream names and transaction ids.
    text: String,
    log: Vec<LogRow>,
    current: Vec<CurrentRow>,
}

impl Pending {
    pub(crate) fn with_capacity(changes: usize) -> Pending {
        Pending {
            blobs: Vec::with_capacity(changes * 160),
            text: String::with_capacity(changes * 8),
            log: Vec::with_capacity(changes),
            current: Vec::new(),
        }
    }

    fn push_blob(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
        let start = self.blobs.len();
        encode(&mut self.blobs);
        start..self.blobs.len()
    }

    /// `text`'s range, reusing `last` when it holds the same text: neighbouring rows mostly
    /// share their stream and transaction.
    fn push_text(&mut self, last: Option<Range<usize>>, text: &str) -> Range<usize> {
        if let Some(r) = last.filter(|r| &self.text[r.clone()] == text) {
            return r;
        }
        let start = self.text.len();
        self.text.push_str(text);
        start..self.text.len()
    }

    pub(crate) fn blob(&self, range: &Range<usize>) -> &[u8] {
        &self.blobs[range.clone()]
    }

    /// Adds `change` as log entry `seq`.
    pub(crate) fn log(&mut self, seq: i64, change: &Change) -> Logged {
        let key = self.push_blob(|out| binary::encode_key(out, &change.key));
        let current_key = self.push_blob(|out| binary::encode_sortable_key(out, &change.key));
        let before = change
            .before
            .as_ref()
            .map(|row| self.push_blob(|out| binary::encode_row(out, row)));
        let after = change
            .after
            .as_ref()
            .map(|row| self.push_blob(|out| binary::encode_row(out, row)));
        let last = self.log.last();
        let (last_stream, last_txn) = (
            last.map(|r| r.stream.clone()),
            last.and_then(|r| r.txn.clone()),
        );
        let stream = self.push_text(last_stream, &change.stream);
        let txn = change.txn.as_deref().map(|t| self.push_text(last_txn, t));
        self.log.push(LogRow {
            seq,
            stream,
            op: op_code(change.op),
            key,
            before,
            after: after.clone(),
            commit_us: change.commit_time_us,
            position: change.position.as_ref().map(Position::to_json),
            txn,
        });
        Logged { current_key, after }
    }

    /// Collects the current-state upsert of the entry just logged (`logged`, with a row).
    pub(crate) fn upsert_current(&mut self, logged: &Logged, row: &Range<usize>, seq: i64) {
        let stream = self.log.last().map_or(0..0, |r| r.stream.clone());
        let hash = binary::row_hash(self.blob(row));
        self.current.push(CurrentRow {
            stream,
            key: logged.current_key.clone(),
            row: row.clone(),
            seq,
            hash,
        });
    }

    /// Writes the collected current-state upserts.
    pub(crate) fn flush_current(
        &mut self,
        tx: &Transaction<'_>,
        pipeline: &str,
    ) -> Result<(), StoreError> {
        let e = StoreError::sqlite;
        let mut rows = &self.current[..];
        while !rows.is_empty() {
            let n = chunk(rows.len());
            let mut st = tx
                .prepare_cached(statement(&CURRENT_SQL, n, || {
                    multi_row_sql(CURRENT_UPSERT, CURRENT_WIDTH, n, CURRENT_CONFLICT)
                }))
                .map_err(e("preparing the current-state upsert"))?;
            let bind = |st: &mut rusqlite::CachedStatement<'_>| -> rusqlite::Result<usize> {
                st.raw_bind_parameter(1, pipeline)?;
                for (i, row) in rows[..n].iter().enumerate() {
                    let at = 2 + i * CURRENT_WIDTH;
                    st.raw_bind_parameter(at, &self.text[row.stream.clone()])?;
                    st.raw_bind_parameter(at + 1, self.blob(&row.key))?;
                    st.raw_bind_parameter(at + 2, self.blob(&row.row))?;
                    st.raw_bind_parameter(at + 3, row.seq)?;
                    st.raw_bind_parameter(at + 4, row.hash)?;
                }
                st.raw_execute()
            };
            bind(&mut st).map_err(e("updating current state"))?;
            rows = &rows[n..];
        }
        self.current.clear();
        Ok(())
    }

    /// Writes everything collected: the log entries, then the current-state upserts.
    pub(crate) fn flush(&mut self, tx: &Transaction<'_>, pipeline: &str) -> Result<(), StoreError> {
        let e = StoreError::sqlite;
        let mut rows = &self.log[..];
        while !rows.is_empty() {
            let n = chunk(rows.len());
            let mut st = tx
                .prepare_cached(statement(&LOG_SQL, n, || {
                    multi_row_sql(LOG_INSERT, LOG_WIDTH, n, "")
                }))
                .map_err(e("preparing the log insert"))?;
            let bind = |st: &mut rusqlite::CachedStatement<'_>| -> rusqlite::Result<usize> {
                st.raw_bind_parameter(1, pipeline)?;
                for (i, row) in rows[..n].iter().enumerate() {
                    let at = 2 + i * LOG_WIDTH;
                    st.raw_bind_parameter(at, row.seq)?;
                    st.raw_bind_parameter(at + 1, &self.text[row.stream.clone()])?;
                    st.raw_bind_parameter(at + 2, row.op)?;
                    st.raw_bind_parameter(at + 3, self.blob(&row.key))?;
                    st.raw_bind_parameter(at + 4, row.before.as_ref().map(|r| self.blob(r)))?;
                    st.raw_bind_parameter(at + 5, row.after.as_ref().map(|r| self.blob(r)))?;
                    st.raw_bind_parameter(at + 6, row.commit_us)?;
                    st.raw_bind_parameter(at + 7, row.position.as_deref())?;
                    st.raw_bind_parameter(at + 8, row.txn.as_ref().map(|r| &self.text[r.clone()]))?;
                }
                st.raw_execute()
            };
            bind(&mut st).map_err(e("appending to the log"))?;
            rows = &rows[n..];
        }
        self.log.clear();
        self.flush_current(tx, pipeline)
    }
}

/// The statement texts per row count (a power of two), built once.
type Texts = [OnceLock<String>; ROWS_PER_STATEMENT.ilog2() as usize + 1];
static LOG_SQL: Texts = [const { OnceLock::new() }; ROWS_PER_STATEMENT.ilog2() as usize + 1];
static CURRENT_SQL: Texts = [const { OnceLock::new() }; ROWS_PER_STATEMENT.ilog2() as usize + 1];

/// The text for `rows` (a power of two up to the limit) rows from `texts`, built by `build`
/// the first time.
fn statement(texts: &'static Texts, rows: usize, build: impl FnOnce() -> String) -> &'static str {
    texts[rows.ilog2() as usize].get_or_init(build)
}

/// The rows the next statement writes: the largest power of two up to the limit.
fn chunk(remaining: usize) -> usize {
    let n = remaining.min(ROWS_PER_STATEMENT);
    1 << n.ilog2()
}

/// `head` then `rows` tuples `(?1, ?k, ..)` of `width` numbered parameters each, then `tail`.
fn multi_row_sql(head: &str, width: usize, rows: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * width * 7);
    sql.push_str(head);
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?1");
        for c in 0..width {
            sql.push_str(", ?");
            sql.push_str(&(2 + r * width + c).to_string());
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use tidesync_core::{Key, Row, Seq, Value};

    use super::*;
    use crate::SqliteStore;

    fn change(op: Op, id: i64, v: i64, txn: &str) -> Change {
        Change {
            stream: if id % 3 == 0 { "b" } else { "a" }.into(),
            op,
            key: Key(vec![Value::Int(id)]),
            before: None,
            after: (op != Op::Delete).then(|| {
                Row(vec![
                    ("id".into(), Value::Int(id)),
                    ("v".into(), Value::Text(format!("value {v}"))),
                ])
            }),
            commit_time_us: v,
            position: (v % 2 == 0).then_some(Position::Lsn(v as u64)),
            txn: Some(txn.into()),
            unchanged: Vec::new(),
        }
    }

    /// A batch longer than one statement, not a power of two, with keys upserted, deleted and
    /// upserted again, two streams and several transactions.
    fn mixed_batch() -> Vec<Change> {
        let mut changes = Vec::new();
        for i in 0..150_i64 {
            let id = i % 40;
            let op = match i % 7 {
                3 => Op::Delete,
                5 => Op::Update,
                _ => Op::Insert,
            };
            changes.push(change(op, id, i, &format!("{}", i / 50)));
        }
        changes
    }

    #[test]
    fn collected_rows_write_the_log_and_current_state_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let changes = mixed_batch();
        let captured = Captured {
            refreshed: Vec::new(),
            fingerprints: Vec::new(),
            kind: BatchKind::Incremental,
            changes: changes.clone(),
            position: Position::Lsn(1),
            progress: None,
        };
        assert!(can_collect_current(&captured));
        assert_eq!(
            s.append_blocking("p", &captured).unwrap(),
            Some((Seq(1), Seq(150)))
        );
        let read: Vec<Change> = s
            .read_blocking("p", Seq(0), 1000)
            .unwrap()
            .into_iter()
            .map(|e| e.change)
            .collect();
        assert_eq!(read, changes);
        // The current state is the last change of each key.
        let mut expected: BTreeMap<i64, Option<(Row, Seq)>> = BTreeMap::new();
        for (i, c) in changes.iter().enumerate() {
            let Value::Int(id) = c.key.0[0] else { panic!() };
            expected.insert(id, c.after.clone().map(|r| (r, Seq(i as u64 + 1))));
        }
        for (id, want) in expected {
            let stream = if id % 3 == 0 { "b" } else { "a" };
            let got = s
                .current_row("p", stream, &Key(vec![Value::Int(id)]))
                .unwrap();
            assert_eq!(got, want, "key {id}");
        }
    }

    #[test]
    fn reads_of_the_current_state_during_an_append_turn_collection_off() {
        let batch = |kind, changes| Captured {
            refreshed: Vec::new(),
            fingerprints: Vec::new(),
            kind,
            changes,
            position: Position::Lsn(1),
            progress: None,
        };
        let insert = change(Op::Insert, 1, 1, "t");
        assert!(can_collect_current(&batch(
            BatchKind::Incremental,
            vec![insert.clone()]
        )));
        let mut read = insert.clone();
        read.op = Op::Read;
        assert!(can_collect_current(&batch(
            BatchKind::Full,
            vec![read.clone()]
        )));
        assert!(!can_collect_current(&batch(
            BatchKind::Incremental,
            vec![read]
        )));
        let mut toast = insert.clone();
        toast.unchanged = vec!["v".into()];
        assert!(!can_collect_current(&batch(
            BatchKind::Incremental,
            vec![toast]
        )));
        let mut truncate = insert;
        truncate.op = Op::Truncate;
        assert!(!can_collect_current(&batch(
            BatchKind::Incremental,
            vec![truncate]
        )));
    }

    #[test]
    fn statements_take_powers_of_two_up_to_the_limit() {
        assert_eq!(chunk(1), 1);
        assert_eq!(chunk(3), 2);
        assert_eq!(chunk(63), 32);
        assert_eq!(chunk(64), 64);
        assert_eq!(chunk(1000), 64);
    }

    #[test]
    fn multi_row_statements_number_their_parameters_after_the_pipeline() {
        assert_eq!(
            multi_row_sql(
                "INSERT INTO t (p, a, b) VALUES ",
                2,
                2,
                " ON CONFLICT DO NOTHING"
            ),
            "INSERT INTO t (p, a, b) VALUES (?1, ?2, ?3), (?1, ?4, ?5) ON CONFLICT DO NOTHING"
        );
    }
}
