//! The embedded store: one SQLite file per node (WAL mode) holding, per pipeline,
//! - `changes`: the change log (seq, stream, op, key, before, after, commit time, position, txn),
//!   rows and keys in the compact binary encoding of `tidesync_core::codec::binary`;
//! - `current`: (stream, key) -> latest row, the seq that wrote it and a row hash, keyed by
//!   the order-preserving `key_to_sortable_vec` so sequential ids stay together in the B-tree;
//! - `cursors`: consumer -> last durably delivered seq;
//! - `positions`: the source's last committed position and the log head;
//! - `fingerprints`: per (stream, order-preserving key) of a `diff` source, the row's key and
//!   hash, written with the batch that logged the row's change (see
//!   [`tidesync_core::Fingerprint`]).
//!
//! Rules (DESIGN.md, "Log and state"):
//! - [`SqliteStore::append`] writes a captured batch, the current state it implies, the new head
//!   and the source position in ONE transaction. The caller acknowledges the source only after it
//!   returned, so a crash anywhere loses nothing (the source re-delivers after the stored
//!   position) and duplicates nothing (the position moved with the batch).
//! - Unchanged values (`Change::unchanged`) are filled from the current state inside that
//!   transaction. When it has no row to fill them from, the change is logged as an
//!   [`Op::Patch`] of the columns that were sent (a key update's delete and insert as one patch
//!   of the old key), and the current state is left without a row for the key: the store
//!   never holds a row it does not know whole.
//! - Cursors never move backwards.
//! - [`SqliteStore::trim`] deletes only entries every registered cursor has passed.
//! - `synchronous=FULL`: a commit is on disk before we acknowledge a source, even on power loss.
//!
//! Blocking SQLite calls run on tokio's blocking pool; one connection writes and another
//! reads, so WAL lets sinks read the log while the source appends. A third checkpoints the
//! WAL on a thread of its own (see `checkpoint`), not inside the writer's commits.

mod checkpoint;
mod chunks;
mod param;
mod requests;
mod rows;
mod schema;

pub use chunks::{Rebalanced, StoredChunk};
pub use param::SqliteParam;
pub use requests::{RequestInfo, RequestState};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tidesync_core::codec::DecodeError;
use tidesync_core::codec::binary::{self, decode_key, decode_row};
use tidesync_core::{
    BoxFuture, Captured, Change, Key, Log, LogEntry, LogStatus, Op, Position, Request, RequestKind,
    RequestProgress, Row, Seq, StageError,
};

/// What went wrong in the store, and where.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("no store at {0} (has `tidesync run` started with this configuration?)")]
    Missing(PathBuf),
    #[error("store {context}: {source}")]
    Sqlite {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("corrupt log entry: pipeline {pipeline}, seq {seq}: {source}")]
    Corrupt {
        pipeline: String,
        seq: u64,
        #[source]
        source: DecodeError,
    },
    #[error("store: request {id} of pipeline {pipeline} is unreadable (corrupt keys)")]
    BadRequest { pipeline: String, id: i64 },
    #[error("store: a batch of pipeline {pipeline} is malformed: {problem}")]
    BadBatch { pipeline: String, problem: String },
    #[error(
        "store was written by a newer tidesync (schema version {found}, this build knows {known})"
    )]
    Version { found: i64, known: i64 },
}

impl StoreError {
    fn sqlite(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sqlite { context, source }
    }
}

impl From<StoreError> for StageError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Corrupt { .. }
            | StoreError::Version { .. }
            | StoreError::Missing(_)
            | StoreError::BadBatch { .. } => StageError::definite(e),
            // Busy, locked, I/O, disk full: worth another try.
            _ => StageError::transient(e),
        }
    }
}

/// Statements each writer connection keeps prepared (see [`SqliteStore::open`]).
const WRITER_STATEMENTS_CACHED: usize = 32;

pub(crate) fn op_code(op: Op) -> i64 {
    match op {
        Op::Insert => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Read => 3,
        Op::Truncate => 4,
        Op::Patch => 5,
    }
}

fn op_from_code(code: i64) -> Option<Op> {
    Some(match code {
        0 => Op::Insert,
        1 => Op::Update,
        2 => Op::Delete,
        3 => Op::Read,
        4 => Op::Truncate,
        5 => Op::Patch,
        _ => return None,
    })
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// Checkpoints the write-ahead log off the writer's path; `None` when read-only.
    _checkpointer: Option<checkpoint::Checkpointer>,
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave SQLite half-written (the transaction rolls
    // back when dropped), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-only, and without SQLite's own per-call mutex (each connection is used under our
/// [`Mutex`] only, one thread at a time), which took a lock for every value read.
fn reader_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// The SQLite change log and current state of one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                open_err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!("cannot create {}: {e}", dir.display())),
                ))
            })?;
        }
        let mut writer = Connection::open(path).map_err(open_err)?;
        // An append prepares up to seven multi-row statement texts for the log and seven for
        // the current state (see `rows`), besides its own: rusqlite's default of 16 cached
        // statements would make batches of varying sizes re-parse them.
        writer.set_prepared_statement_cache_capacity(WRITER_STATEMENTS_CACHED);
        schema::configure(&writer).map_err(open_err)?;
        schema::migrate(&writer)?;
        writer
            .execute_batch(requests::CREATE)
            .map_err(StoreError::sqlite("creating the requests table"))?;
        let reader = Connection::open_with_flags(path, reader_flags()).map_err(open_err)?;
        schema::configure_reader(&reader).map_err(open_err)?;
        let checkpointer =
            checkpoint::Checkpointer::start(path, &mut writer, checkpoint::Limits::default())
                .map_err(open_err)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                _checkpointer: Some(checkpointer),
            }),
        })
    }

    /// Opens an existing store read-only, e.g. for `tidesync status` beside a running
    /// `tidesync run`. Fails with [`StoreError::Missing`] if there is none.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_owned()));
        }
        let open = || {
            let c = Connection::open_with_flags(path, reader_flags()).map_err(|source| {
                StoreError::Open {
                    path: path.to_owned(),
                    source,
                }
            })?;
            schema::configure_reader(&c).map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
            Ok::<_, StoreError>(c)
        };
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(open()?),
                reader: Mutex::new(open()?),
                _checkpointer: None,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs blocking store work on tokio's blocking pool.
    fn blocking<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, StageError>>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| StageError::transient(format!("store task failed: {e}")))?
                .map_err(StageError::from)
        })
    }

    /// Synchronous form of [`Log::append`].
    pub fn append_blocking(
        &self,
        pipeline: &str,
        captured: &Captured,
    ) -> Result<Option<(Seq, Seq)>, StoreError> {
        append(&mut lock(&self.inner.writer), pipeline, captured)
    }

    /// Synchronous form of [`Log::read`].
    pub fn read_blocking(
        &self,
        pipeline: &str,
        after: Seq,
        max: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        read(&lock(&self.inner.reader), pipeline, after, max)
    }

    /// Synchronous form of [`Log::status`].
    pub fn status_blocking(&self, pipeline: &str) -> Result<LogStatus, StoreError> {
        status(&lock(&self.inner.reader), pipeline)
    }

    /// Synchronous form of [`Log::set_cursor`].
    pub fn set_cursor_blocking(
        &self,
        pipeline: &str,
        consumer: &str,
        seq: Seq,
    ) -> Result<(), StoreError> {
        set_cursor(&lock(&self.inner.writer), pipeline, consumer, seq)
    }

    /// The latest row of `key` in `stream`, with the seq that wrote it.
    pub fn current_row(
        &self,
        pipeline: &str,
        stream: &str,
        key: &Key,
    ) -> Result<Option<(Row, Seq)>, StoreError> {
        read_current(&lock(&self.inner.reader), pipeline, stream, key)
    }

    /// Up to `limit` current rows of `stream`, after the stored key `after` (exclusive; `None`:
    /// from the start), in stored key order, each with its stored key (pass the last one as
    /// `after` for the next page). A hub's download of an agent's rows.
    pub fn current_page(
        &self,
        pipeline: &str,
        stream: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Row)>, StoreError> {
        let conn = lock(&self.inner.reader);
        let e = || StoreError::sqlite("reading current state");
        let mut st = conn
            .prepare_cached(
                "SELECT key, row, seq FROM current WHERE pipeline = ?1 AND stream = ?2 AND key > ?3
                 ORDER BY key LIMIT ?4",
            )
            .map_err(e())?;
        let after: &[u8] = after.unwrap_or(&[]);
        let mut rows = st
            .query(params![pipeline, stream, after, limit as i64])
            .map_err(e())?;
        let mut out = Vec::with_capacity(limit.min(16_384));
        while let Some(r) = rows.next().map_err(e())? {
            let key: Vec<u8> = r.get(0).map_err(e())?;
            let bytes: Vec<u8> = r.get(1).map_err(e())?;
            let seq: i64 = r.get(2).map_err(e())?;
            let row = decode_row(&bytes).map_err(|source| StoreError::Corrupt {
                pipeline: pipeline.to_owned(),
                seq: seq as u64,
                source,
            })?;
            out.push((key, row));
        }
        Ok(out)
    }

    /// How many rows the current-state table holds for `pipeline`, per stream.
    pub fn current_counts(&self, pipeline: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = lock(&self.inner.reader);
        let mut st = conn
            .prepare_cached(
                "SELECT stream, count(*) FROM current WHERE pipeline = ?1 GROUP BY stream ORDER BY stream",
            )
            .map_err(StoreError::sqlite("counting current state"))?;
        st.query_map([pipeline], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .and_then(|rows| rows.collect())
            .map_err(StoreError::sqlite("counting current state"))
    }

    /// Deletes everything the store holds for `pipeline` (log, current state, cursors,
    /// position), in one transaction, for `tidesync drop`. Returns the log entries deleted.
    pub fn drop_pipeline(&self, pipeline: &str) -> Result<u64, StoreError> {
        let mut conn = lock(&self.inner.writer);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::sqlite("beginning a pipeline drop"))?;
        let mut entries = 0;
        for table in [
            "changes",
            "current",
            "cursors",
            "positions",
            "requests",
            // Before the fingerprints: their triggers then have no chunk to update.
            "chunks",
            "diff_streams",
            "fingerprints",
        ] {
            let n = tx
                .execute(
                    &format!("DELETE FROM {table} WHERE pipeline = ?1"),
                    [pipeline],
                )
                .map_err(StoreError::sqlite("dropping a pipeline"))?;
            if table == "changes" {
                entries = n as u64;
            }
        }
        tx.commit()
            .map_err(StoreError::sqlite("committing a pipeline drop"))?;
        Ok(entries)
    }

    /// Records a request to re-read rows of `stream` from the pipeline's source; the running
    /// pipeline picks it up (see [`Request`]). Returns its id.
    pub fn add_request(
        &self,
        pipeline: &str,
        stream: &str,
        what: &RequestKind,
    ) -> Result<i64, StoreError> {
        requests::add(&mut lock(&self.inner.writer), pipeline, stream, what)
    }

    /// The requests of `pipeline` (only the pending ones if `pending_only`), oldest first.
    /// A store that never had a request (or predates them) has none.
    pub fn requests(
        &self,
        pipeline: &str,
        pending_only: bool,
    ) -> Result<Vec<RequestInfo>, StoreError> {
        let conn = lock(&self.inner.reader);
        if !has_requests_table(&conn)? {
            return Ok(Vec::new());
        }
        requests::list(&conn, pipeline, pending_only)
    }

    /// Where request `id` of `pipeline` stands; `None` if there is no such request.
    pub fn request_state(
        &self,
        pipeline: &str,
        id: i64,
    ) -> Result<Option<RequestState>, StoreError> {
        // The writer: a caller polling for completion must see the latest commit.
        requests::state(&lock(&self.inner.writer), pipeline, id)
    }

    /// Up to `limit` fingerprints of `stream` (a `diff` source's rows) from `start` (an
    /// order-preserving key, included or excluded) and before `end` (exclusive; `None`: to
    /// the end), in that order.
    pub fn fingerprints(
        &self,
        pipeline: &str,
        stream: &str,
        start: std::ops::Bound<&[u8]>,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StoredFingerprint>, StoreError> {
        use std::ops::Bound;
        let conn = lock(&self.inner.reader);
        let e = || StoreError::sqlite("reading fingerprints");
        let (from, start) = match start {
            Bound::Included(ord) => (">=", ord),
            Bound::Excluded(ord) => (">", ord),
            Bound::Unbounded => (">=", &[][..]),
        };
        let to = if end.is_some() { "AND ord < ?5" } else { "" };
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT ord, hash, raw FROM fingerprints WHERE pipeline = ?1 AND stream = ?2
                 AND ord {from} ?3 {to} ORDER BY ord LIMIT ?4"
            ))
            .map_err(e())?;
        let mut rows = match end {
            None => st.query(params![pipeline, stream, start, limit as i64]),
            Some(end) => st.query(params![pipeline, stream, start, limit as i64, end]),
        }
        .map_err(e())?;
        let mut out = Vec::with_capacity(limit.min(16_384));
        while let Some(r) = rows.next().map_err(e())? {
            let ord = r
                .get_ref(0)
                .and_then(|v| v.as_blob().map_err(Into::into))
                .map_err(e())?
                .to_vec();
            let hash: i64 = r.get(1).map_err(e())?;
            let raw: Option<i64> = r.get(2).map_err(e())?;
            out.push(StoredFingerprint { ord, hash, raw });
        }
        Ok(out)
    }

    /// `stream`'s fingerprints as key ranges with their counts and hash sums, in key order;
    /// empty when the stream has none (see [`StoredChunk`]).
    pub fn chunks(&self, pipeline: &str, stream: &str) -> Result<Vec<StoredChunk>, StoreError> {
        chunks::list(&lock(&self.inner.reader), pipeline, stream)
    }

    /// Cuts `stream`'s fingerprints into chunks of `chunk_rows` anew, in one transaction;
    /// returns how many chunks (none for a stream of fewer than two chunks' worth of rows)
    /// and rows. Only the tests' full recompute now (the `diff` source rebalances).
    #[cfg(test)]
    pub fn rechunk(
        &self,
        pipeline: &str,
        stream: &str,
        chunk_rows: u64,
    ) -> Result<(usize, u64), StoreError> {
        chunks::rechunk(&mut lock(&self.inner.writer), pipeline, stream, chunk_rows)
    }

    /// Keeps `stream`'s chunks near `target(rows in the stream)` rows each, in one
    /// transaction: cuts a stream without chunks whole, splits the chunks that grew past twice
    /// the target and merges those that shrank below a quarter of it (see [`Rebalanced`]).
    pub fn rebalance_chunks(
        &self,
        pipeline: &str,
        stream: &str,
        target: &dyn Fn(u64) -> u64,
    ) -> Result<Rebalanced, StoreError> {
        chunks::rebalance(&mut lock(&self.inner.writer), pipeline, stream, target)
    }

    /// The mapping `stream`'s fingerprints were made with, as the `diff` source described it
    /// ([`Self::set_stream_mapping`]); `None` before the first.
    pub fn stream_mapping(
        &self,
        pipeline: &str,
        stream: &str,
    ) -> Result<Option<String>, StoreError> {
        chunks::mapping(&lock(&self.inner.reader), pipeline, stream)
    }

    /// Records `stream`'s mapping; with `forget_raw`, every fingerprint of the stream forgets
    /// its database hash in the same transaction (the mapping changed: each row is compared by
    /// its mapped values once more).
    pub fn set_stream_mapping(
        &self,
        pipeline: &str,
        stream: &str,
        mapping: &str,
        forget_raw: bool,
    ) -> Result<(), StoreError> {
        chunks::set_mapping(
            &mut lock(&self.inner.writer),
            pipeline,
            stream,
            mapping,
            forget_raw,
        )
    }

    /// The key of the fingerprinted row `ord` of `stream` (for a delete), if there is one.
    pub fn fingerprint_key(
        &self,
        pipeline: &str,
        stream: &str,
        ord: &[u8],
    ) -> Result<Option<Key>, StoreError> {
        let conn = lock(&self.inner.reader);
        let key: Option<Vec<u8>> = conn
            .prepare_cached(
                "SELECT key FROM fingerprints WHERE pipeline = ?1 AND stream = ?2 AND ord = ?3",
            )
            .and_then(|mut st| {
                st.query_row(params![pipeline, stream, ord], |r| r.get(0))
                    .optional()
            })
            .map_err(StoreError::sqlite("reading a fingerprint's key"))?;
        key.map(|k| {
            decode_key(&k).map_err(|source| StoreError::Corrupt {
                pipeline: pipeline.to_owned(),
                seq: 0,
                source,
            })
        })
        .transpose()
    }

    /// Records fingerprints of rows another node already holds (an agent's first-start
    /// download of its hub's rows): `(ord, key, hash)` per row, in one transaction, replacing
    /// any before. Nothing is logged; the next comparison logs only rows that differ.
    pub fn seed_fingerprints(
        &self,
        pipeline: &str,
        stream: &str,
        rows: &[(Vec<u8>, Key, i64)],
    ) -> Result<(), StoreError> {
        let mut conn = lock(&self.inner.writer);
        let e = || StoreError::sqlite("seeding fingerprints");
        let tx = conn.transaction().map_err(e())?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO fingerprints (pipeline, stream, ord, key, hash, raw)
                     VALUES (?1, ?2, ?3, ?4, ?5, NULL)
                     ON CONFLICT (pipeline, stream, ord) DO UPDATE
                     SET key = excluded.key, hash = excluded.hash, raw = NULL",
                )
                .map_err(e())?;
            for (ord, key, hash) in rows {
                st.execute(params![
                    pipeline,
                    stream,
                    ord,
                    binary::key_to_vec(key),
                    hash
                ])
                .map_err(e())?;
            }
        }
        tx.commit().map_err(e())
    }

    /// Starts `pipeline`'s log after seq `head` (an agent whose hub holds its log through
    /// `head` and that lost its own store): its next change gets seq `head + 1`. Only for a
    /// pipeline that has logged nothing yet.
    pub fn seed_head(&self, pipeline: &str, head: Seq) -> Result<(), StoreError> {
        let mut conn = lock(&self.inner.writer);
        let e = || StoreError::sqlite("seeding the log head");
        let tx = conn.transaction().map_err(e())?;
        let existing: Option<(Option<String>, i64)> = tx
            .query_row(
                "SELECT position, head FROM positions WHERE pipeline = ?1",
                [pipeline],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(e())?;
        if let Some((position, old)) = existing
            && (position.is_some() || old != 0)
        {
            return Err(StoreError::BadBatch {
                pipeline: pipeline.to_owned(),
                problem: format!(
                    "cannot start the log after seq {head}: it has logged through {old} already"
                ),
            });
        }
        tx.execute(
            "INSERT INTO positions (pipeline, position, head, head_commit_us, updated_us)
             VALUES (?1, NULL, ?2, NULL, ?3)
             ON CONFLICT (pipeline) DO UPDATE SET head = excluded.head, updated_us = excluded.updated_us",
            params![pipeline, head.0 as i64, tidesync_core::time::now_us()],
        )
        .map_err(e())?;
        tx.commit().map_err(e())
    }

    /// Whether `stream` of `pipeline` has any fingerprint (cheap, unlike counting them).
    pub fn has_fingerprints(&self, pipeline: &str, stream: &str) -> Result<bool, StoreError> {
        lock(&self.inner.reader)
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM fingerprints WHERE pipeline = ?1 AND stream = ?2)",
            )
            .and_then(|mut st| st.query_row(params![pipeline, stream], |r| r.get(0)))
            .map_err(StoreError::sqlite("looking for fingerprints"))
    }

    /// How many fingerprints `stream` of `pipeline` has (the rows its `diff` source knows).
    pub fn fingerprint_count(&self, pipeline: &str, stream: &str) -> Result<u64, StoreError> {
        chunks::fingerprint_count(&lock(&self.inner.reader), pipeline, stream)
    }

    /// The pipelines this store has seen.
    pub fn pipelines(&self) -> Result<Vec<String>, StoreError> {
        let conn = lock(&self.inner.reader);
        let mut st = conn
            .prepare("SELECT pipeline FROM positions ORDER BY pipeline")
            .map_err(StoreError::sqlite("listing pipelines"))?;
        st.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(StoreError::sqlite("listing pipelines"))
    }
}

/// A row fingerprint as the store holds it (see [`SqliteStore::fingerprints`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFingerprint {
    pub ord: Vec<u8>,
    pub hash: i64,
    /// The source database's own hash of the row, where it computes one.
    pub raw: Option<i64>,
}

/// What the store does with a change that comes with a fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fingerprinted {
    /// It repeats a version already logged: skipped.
    Known,
    /// Logged as it is.
    New,
    /// An insert or update of a row the store has no fingerprint of: logged as an insert
    /// (an `incremental` source cannot tell the two apart; the store can).
    Insert,
    /// An insert of a row the store already has: logged as an update.
    Update,
}

/// Whether `change` repeats what `fingerprint` says the store already has, and what op it is
/// logged with otherwise; records the new fingerprint in the append's transaction.
fn fingerprint_is_new(
    tx: &rusqlite::Transaction<'_>,
    pipeline: &str,
    change: &Change,
    fingerprint: &tidesync_core::Fingerprint,
) -> Result<Fingerprinted, StoreError> {
    let e = StoreError::sqlite;
    let stored: Option<i64> = tx
        .prepare_cached(
            "SELECT hash FROM fingerprints WHERE pipeline = ?1 AND stream = ?2 AND ord = ?3",
        )
        .and_then(|mut st| {
            st.query_row(params![pipeline, change.stream, fingerprint.ord], |r| {
                r.get(0)
            })
            .optional()
        })
        .map_err(e("reading a fingerprint"))?;
    if stored == fingerprint.hash {
        if let (Some(_), Some(raw)) = (stored, fingerprint.raw) {
            refresh_raw(tx, pipeline, &change.stream, &fingerprint.ord, raw)?;
        }
        return Ok(Fingerprinted::Known);
    }
    let logged = match (change.op, stored) {
        (Op::Update, None) => Fingerprinted::Insert,
        (Op::Insert, Some(_)) => Fingerprinted::Update,
        _ => Fingerprinted::New,
    };
    match fingerprint.hash {
        Some(hash) => tx
            .prepare_cached(
                "INSERT INTO fingerprints (pipeline, stream, ord, key, hash, raw) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (pipeline, stream, ord) DO UPDATE SET key = excluded.key, hash = excluded.hash, raw = excluded.raw",
            )
            .and_then(|mut st| {
                st.execute(params![
                    pipeline,
                    change.stream,
                    fingerprint.ord,
                    binary::key_to_vec(&change.key),
                    hash,
                    fingerprint.raw
                ])
            })
            .map_err(e("writing a fingerprint"))?,
        None => tx
            .prepare_cached(
                "DELETE FROM fingerprints WHERE pipeline = ?1 AND stream = ?2 AND ord = ?3",
            )
            .and_then(|mut st| st.execute(params![pipeline, change.stream, fingerprint.ord]))
            .map_err(e("deleting a fingerprint"))?,
    };
    Ok(logged)
}

/// Records a row's new database-side hash (see [`tidesync_core::RawRefresh`]).
fn refresh_raw(
    tx: &rusqlite::Transaction<'_>,
    pipeline: &str,
    stream: &str,
    ord: &[u8],
    raw: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE fingerprints SET raw = ?4 WHERE pipeline = ?1 AND stream = ?2 AND ord = ?3",
    )
    .and_then(|mut st| st.execute(params![pipeline, stream, ord, raw]))
    .map_err(StoreError::sqlite("refreshing a fingerprint"))?;
    Ok(())
}

fn append(
    conn: &mut Connection,
    pipeline: &str,
    captured: &Captured,
) -> Result<Option<(Seq, Seq)>, StoreError> {
    let e = StoreError::sqlite;
    let fingerprints = &captured.fingerprints;
    if !fingerprints.is_empty() && fingerprints.len() != captured.changes.len() {
        return Err(StoreError::BadBatch {
            pipeline: pipeline.to_owned(),
            problem: format!(
                "{} fingerprints for {} changes",
                fingerprints.len(),
                captured.changes.len()
            ),
        });
    }
    // IMMEDIATE: take the write lock up front so the head we read stays ours.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(e("beginning an append"))?;
    let head: i64 = tx
        .prepare_cached("SELECT head FROM positions WHERE pipeline = ?1")
        .and_then(|mut st| st.query_row([pipeline], |r| r.get(0)).optional())
        .map_err(e("reading the log head"))?
        .unwrap_or(0);
    let mut seq = head;
    let mut last_commit_us = None;
    {
        // Log entries always, current-state writes when nothing in this batch reads the current
        // state, are written with multi-row statements (see `rows`).
        let mut pending = rows::Pending::with_capacity(captured.changes.len());
        let collect_current = rows::can_collect_current(captured);
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO current (pipeline, stream, key, row, seq, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (pipeline, stream, key) DO UPDATE SET row = excluded.row, seq = excluded.seq, hash = excluded.hash",
            )
            .map_err(e("preparing the current-state upsert"))?;
        let mut delete = tx
            .prepare_cached("DELETE FROM current WHERE pipeline = ?1 AND stream = ?2 AND key = ?3")
            .map_err(e("preparing the current-state delete"))?;
        // The row a delete just removed, when the next change needs it to fill unchanged
        // values: a key update arrives as a delete of the old key and an insert of the new.
        let mut deleted: Option<Row> = None;
        // Set when a key update became one patch: its insert is already in that patch.
        let mut skip_next = false;
        let mut patches = 0_usize;
        for (i, change) in captured.changes.iter().enumerate() {
            if std::mem::take(&mut skip_next) {
                continue;
            }
            let retyped;
            let change = match fingerprints.get(i) {
                None => change,
                Some(fingerprint) => {
                    match fingerprint_is_new(&tx, pipeline, change, fingerprint)? {
                        Fingerprinted::Known => continue,
                        Fingerprinted::New => change,
                        Fingerprinted::Insert | Fingerprinted::Update => {
                            let mut c = change.clone();
                            c.op = if c.op == Op::Update {
                                Op::Insert
                            } else {
                                Op::Update
                            };
                            retyped = c;
                            &retyped
                        }
                    }
                }
            };
            let made;
            let change = if change.unchanged.is_empty() {
                change
            } else {
                match fill_unchanged(&tx, pipeline, change, deleted.take())? {
                    Some(complete) => {
                        made = complete;
                        &made
                    }
                    None => {
                        // No row to fill from (e.g. the target got it from a copy that
                        // bypassed the log): the target keeps the values it has.
                        made = change.as_patch(change.key.clone(), change.before.clone());
                        &made
                    }
                }
            };
            // A snapshot row read while the stream runs (watermark chunks) may show exactly
            // the version an earlier change already logged: logging it again would apply
            // that version twice.
            if change.op == Op::Read
                && captured.kind == tidesync_core::BatchKind::Incremental
                && let Some(after) = &change.after
                && current_row_in(&tx, pipeline, &change.stream, &change.key)?.as_ref()
                    == Some(after)
            {
                continue;
            }
            deleted = None;
            // The insert half of a key update (see `Change::key`), when it needs filling.
            let moved_to = captured.changes.get(i + 1).filter(|n| {
                n.op == Op::Insert && !n.unchanged.is_empty() && n.stream == change.stream
            });
            let moved;
            let change = match moved_to {
                Some(insert) if change.op == Op::Delete => {
                    deleted = current_row_in(&tx, pipeline, &change.stream, &change.key)?;
                    if deleted.is_none()
                        && current_row_in(&tx, pipeline, &insert.stream, &insert.key)?.is_none()
                    {
                        // Neither key has a row to fill the insert from: one patch moving
                        // the target's row from the old key to the new, instead of a delete
                        // and an insert that would lose the unchanged values.
                        moved = insert.as_patch(change.key.clone(), change.before.clone());
                        skip_next = true;
                        &moved
                    } else {
                        change
                    }
                }
                _ => change,
            };
            if change.op == Op::Patch {
                patches += 1;
                tracing::trace!(
                    pipeline,
                    stream = %change.stream,
                    key = %change.key,
                    "logged a patch: the current state has no row to fill unchanged values from"
                );
            }
            if change.op == Op::Truncate {
                tx.prepare_cached("DELETE FROM current WHERE pipeline = ?1 AND stream = ?2")
                    .and_then(|mut st| st.execute(params![pipeline, change.stream]))
                    .map_err(e("truncating current state"))?;
            }
            seq += 1;
            let logged = pending.log(seq, change);
            match (collect_current, change.op, &logged.after) {
                // The store holds no complete row for a patch's key (that is why it is a
                // patch), so the current state stays as it is.
                (_, Op::Patch, _) => {}
                (true, Op::Insert | Op::Update | Op::Read, Some(row)) => {
                    pending.upsert_current(&logged, row, seq);
                }
                (true, ..) => {
                    // A delete: after the upserts collected so far, in seq order.
                    pending.flush_current(&tx, pipeline)?;
                    update_current(
                        change,
                        pending.blob(&logged.current_key),
                        None,
                        seq,
                        pipeline,
                        &mut upsert,
                        &mut delete,
                    )?;
                }
                (false, ..) => update_current(
                    change,
                    pending.blob(&logged.current_key),
                    logged.after.as_ref().map(|r| pending.blob(r)),
                    seq,
                    pipeline,
                    &mut upsert,
                    &mut delete,
                )?,
            }
            #[cfg(test)]
            tests::failpoint(seq - head)?;
            last_commit_us = Some(change.commit_time_us);
        }
        if patches > 0 {
            tracing::debug!(
                pipeline,
                patches,
                "logged patches for changes whose unchanged values the current state cannot fill"
            );
        }
        pending.flush(&tx, pipeline)?;
    }
    tx.prepare_cached(
        "INSERT INTO positions (pipeline, position, head, head_commit_us, updated_us) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (pipeline) DO UPDATE SET position = excluded.position, head = excluded.head,
           head_commit_us = coalesce(excluded.head_commit_us, head_commit_us), updated_us = excluded.updated_us",
    )
    .and_then(|mut st| {
        st.execute(params![pipeline, captured.position.to_json(), seq, last_commit_us, tidesync_core::time::now_us()])
    })
    .map_err(e("storing the source position"))?;
    if let Some(progress) = &captured.progress {
        requests::record_progress(&tx, pipeline, progress, seq)?;
    }
    for r in &captured.refreshed {
        refresh_raw(&tx, pipeline, &r.stream, &r.ord, r.raw)?;
    }
    tidesync_core::failpoint::hit("store-before-commit");
    tx.commit().map_err(e("committing an append"))?;
    Ok((seq > head).then(|| (Seq(head as u64 + 1), Seq(seq as u64))))
}

/// See [`Log::advance`].
fn advance(
    conn: &mut Connection,
    pipeline: &str,
    position: &Position,
    head: Seq,
    head_commit_us: Option<i64>,
    progress: Option<&RequestProgress>,
) -> Result<(), StoreError> {
    let e = StoreError::sqlite;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(e("beginning an advance"))?;
    let head = head.0 as i64;
    tx.prepare_cached(
        "INSERT INTO positions (pipeline, position, head, head_commit_us, updated_us) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (pipeline) DO UPDATE SET position = excluded.position, head = max(head, excluded.head),
           head_commit_us = coalesce(excluded.head_commit_us, head_commit_us), updated_us = excluded.updated_us",
    )
    .and_then(|mut st| st.execute(params![pipeline, position.to_json(), head, head_commit_us, tidesync_core::time::now_us()]))
    .map_err(e("storing the source position"))?;
    tx.prepare_cached("UPDATE cursors SET seq = max(seq, ?2), updated_us = ?3 WHERE pipeline = ?1")
        .and_then(|mut st| st.execute(params![pipeline, head, tidesync_core::time::now_us()]))
        .map_err(e("moving the cursors"))?;
    if let Some(progress) = progress {
        requests::record_progress(&tx, pipeline, progress, head)?;
    }
    tx.commit().map_err(e("committing an advance"))
}

/// `change` with its unchanged columns taken from the current state, or `None` when the
/// current state has no row for its key.
fn fill_unchanged(
    tx: &rusqlite::Transaction<'_>,
    pipeline: &str,
    change: &Change,
    deleted: Option<Row>,
) -> Result<Option<Change>, StoreError> {
    let current = match current_row_in(tx, pipeline, &change.stream, &change.key)? {
        Some(row) => row,
        None => match deleted {
            Some(row) => row,
            None => return Ok(None),
        },
    };
    let mut complete = change.clone();
    complete.unchanged.clear();
    if let Some(after) = complete.after.as_mut() {
        for (column, value) in after.0.iter_mut() {
            if change.unchanged.iter().any(|c| c == column) {
                // A column the stored row lacks (added since) keeps its null.
                if let Some(v) = current.get(column) {
                    *value = v.clone();
                }
            }
        }
    }
    Ok(Some(complete))
}

/// The current row of `key` in `stream`, with the seq that wrote it (`conn` may be the
/// append's transaction).
fn read_current(
    conn: &Connection,
    pipeline: &str,
    stream: &str,
    key: &Key,
) -> Result<Option<(Row, Seq)>, StoreError> {
    let stored: Option<(Vec<u8>, i64)> = conn
        .prepare_cached(
            "SELECT row, seq FROM current WHERE pipeline = ?1 AND stream = ?2 AND key = ?3",
        )
        .and_then(|mut st| {
            st.query_row(
                params![pipeline, stream, binary::key_to_sortable_vec(key)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
        .map_err(StoreError::sqlite("reading current state"))?;
    stored
        .map(|(bytes, seq)| {
            decode_row(&bytes)
                .map(|row| (row, Seq(seq as u64)))
                .map_err(|source| StoreError::Corrupt {
                    pipeline: pipeline.to_owned(),
                    seq: seq as u64,
                    source,
                })
        })
        .transpose()
}

/// The current row of `key` in `stream`, read inside the append's transaction.
fn current_row_in(
    tx: &rusqlite::Transaction<'_>,
    pipeline: &str,
    stream: &str,
    key: &Key,
) -> Result<Option<Row>, StoreError> {
    Ok(read_current(tx, pipeline, stream, key)?.map(|(row, _)| row))
}

fn update_current(
    change: &Change,
    key: &[u8],
    after: Option<&[u8]>,
    seq: i64,
    pipeline: &str,
    upsert: &mut rusqlite::CachedStatement<'_>,
    delete: &mut rusqlite::CachedStatement<'_>,
) -> Result<(), StoreError> {
    let e = StoreError::sqlite;
    match (change.op, after) {
        // A patch leaves the current state alone (see `append`).
        (Op::Truncate | Op::Patch, _) => 0,
        (Op::Delete, _) | (_, None) => delete
            .execute(params![pipeline, change.stream, key])
            .map_err(e("deleting from current state"))?,
        (_, Some(row)) => upsert
            .execute(params![
                pipeline,
                change.stream,
                key,
                row,
                seq,
                binary::row_hash(row)
            ])
            .map_err(e("updating current state"))?,
    };
    Ok(())
}

fn read(
    conn: &Connection,
    pipeline: &str,
    after: Seq,
    max: usize,
) -> Result<Vec<LogEntry>, StoreError> {
    let e = StoreError::sqlite;
    let mut st = conn
        .prepare_cached(
            "SELECT seq, stream, op, key, before, after, commit_us, position, txn FROM changes
             WHERE pipeline = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(e("preparing a log read"))?;
    let mut rows = st
        .query(params![pipeline, after.0 as i64, max as i64])
        .map_err(e("reading the log"))?;
    let mut out = Vec::with_capacity(max.min(4096));
    while let Some(r) = rows.next().map_err(e("reading the log"))? {
        let seq = r.get::<_, i64>(0).map_err(e("reading the log"))? as u64;
        let corrupt = |source| StoreError::Corrupt {
            pipeline: pipeline.to_owned(),
            seq,
            source,
        };
        let op_raw: i64 = r.get(2).map_err(e("reading the log"))?;
        let op = op_from_code(op_raw).ok_or_else(|| {
            corrupt(DecodeError::Binary {
                what: "op",
                offset: 0,
                problem: format!("unknown op code {op_raw}"),
            })
        })?;
        let blob = |i: usize| -> Result<Option<&[u8]>, StoreError> {
            r.get_ref(i)
                .and_then(|v| v.as_blob_or_null().map_err(rusqlite::Error::from))
                .map_err(e("reading the log"))
        };
        let key = decode_key(blob(3)?.unwrap_or_default()).map_err(corrupt)?;
        let before = blob(4)?.map(decode_row).transpose().map_err(corrupt)?;
        let after_row = blob(5)?.map(decode_row).transpose().map_err(corrupt)?;
        let position = r
            .get::<_, Option<String>>(7)
            .map_err(e("reading the log"))?
            .map(|p| Position::from_json(&p))
            .transpose()
            .map_err(|err| {
                corrupt(DecodeError::Binary {
                    what: "position",
                    offset: 0,
                    problem: err.to_string(),
                })
            })?;
        out.push(LogEntry {
            seq: Seq(seq),
            change: Change {
                stream: r.get(1).map_err(e("reading the log"))?,
                op,
                key,
                before,
                after: after_row,
                commit_time_us: r.get(6).map_err(e("reading the log"))?,
                position,
                txn: r.get(8).map_err(e("reading the log"))?,
                unchanged: Vec::new(),
            },
        });
    }
    Ok(out)
}

fn set_cursor(
    conn: &Connection,
    pipeline: &str,
    consumer: &str,
    seq: Seq,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO cursors (pipeline, consumer, seq, updated_us) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (pipeline, consumer) DO UPDATE SET seq = max(seq, excluded.seq), updated_us = excluded.updated_us",
    )
    .and_then(|mut st| st.execute(params![pipeline, consumer, seq.0 as i64, tidesync_core::time::now_us()]))
    .map_err(StoreError::sqlite("moving a cursor"))?;
    Ok(())
}

fn status(conn: &Connection, pipeline: &str) -> Result<LogStatus, StoreError> {
    let e = StoreError::sqlite;
    let head: Option<(Option<String>, i64, Option<i64>)> = conn
        .query_row(
            "SELECT position, head, head_commit_us FROM positions WHERE pipeline = ?1",
            [pipeline],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(e("reading the log head"))?;
    let tail: Option<i64> = conn
        .query_row(
            "SELECT min(seq) FROM changes WHERE pipeline = ?1",
            [pipeline],
            |r| r.get(0),
        )
        .map_err(e("reading the log tail"))?;
    let mut st = conn
        .prepare_cached("SELECT consumer, seq FROM cursors WHERE pipeline = ?1 ORDER BY consumer")
        .map_err(e("reading cursors"))?;
    let cursors = st
        .query_map([pipeline], |r| {
            Ok((r.get::<_, String>(0)?, Seq(r.get::<_, i64>(1)? as u64)))
        })
        .and_then(|rows| rows.collect())
        .map_err(e("reading cursors"))?;
    let (position, head, head_commit_time_us) = head.unwrap_or((None, 0, None));
    let position = position
        .map(|p| Position::from_json(&p))
        .transpose()
        .map_err(|err| StoreError::Corrupt {
            pipeline: pipeline.to_owned(),
            seq: head as u64,
            source: DecodeError::Binary {
                what: "position",
                offset: 0,
                problem: err.to_string(),
            },
        })?;
    Ok(LogStatus {
        head: Seq(head as u64),
        tail: Seq(tail.unwrap_or(0) as u64),
        position,
        head_commit_time_us,
        cursors,
    })
}

fn trim(conn: &Connection, pipeline: &str, retain_us: i64) -> Result<u64, StoreError> {
    // Only entries that every registered cursor has passed (with no cursor, nothing), and
    // only the oldest run of them older than the retention: the log stays one range of
    // seqs, and a trim reads only the entries it deletes plus one. (A filter on `commit_us`
    // over every entry below the cursors read the whole log every time, a million entries
    // every 10 s, holding the writer meanwhile.)
    let n = conn
        .prepare_cached(
            // One upper bound (SQLite searches by one and filters by any other, which read
            // every entry below the cursors again); no cursor makes it NULL: nothing goes.
            "DELETE FROM changes WHERE pipeline = ?1 AND seq < min(
                 (SELECT min(seq) + 1 FROM cursors WHERE pipeline = ?1),
                 coalesce(
                     (SELECT seq FROM changes WHERE pipeline = ?1 AND commit_us >= ?2
                      ORDER BY seq LIMIT 1),
                     9223372036854775807))",
        )
        .and_then(|mut st| {
            st.execute(params![
                pipeline,
                tidesync_core::time::now_us().saturating_sub(retain_us)
            ])
        })
        .map_err(StoreError::sqlite("trimming the log"))?;
    Ok(n as u64)
}

impl Log for SqliteStore {
    fn append(
        &self,
        pipeline: &str,
        captured: Arc<Captured>,
    ) -> BoxFuture<'_, Result<Option<(Seq, Seq)>, StageError>> {
        let pipeline = pipeline.to_owned();
        self.blocking(move |inner| append(&mut lock(&inner.writer), &pipeline, &captured))
    }

    fn read(
        &self,
        pipeline: &str,
        after: Seq,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<LogEntry>, StageError>> {
        let pipeline = pipeline.to_owned();
        self.blocking(move |inner| read(&lock(&inner.reader), &pipeline, after, max))
    }

    fn position(&self, pipeline: &str) -> BoxFuture<'_, Result<Option<Position>, StageError>> {
        let pipeline = pipeline.to_owned();
        self.blocking(move |inner| {
            // The writer connection: a restart must see the last commit, whatever the reader's
            // snapshot.
            status(&lock(&inner.writer), &pipeline).map(|s| s.position)
        })
    }

    fn cursor(&self, pipeline: &str, consumer: &str) -> BoxFuture<'_, Result<Seq, StageError>> {
        let (pipeline, consumer) = (pipeline.to_owned(), consumer.to_owned());
        self.blocking(move |inner| {
            lock(&inner.writer)
                .query_row(
                    "SELECT seq FROM cursors WHERE pipeline = ?1 AND consumer = ?2",
                    [&pipeline, &consumer],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|s| Seq(s.unwrap_or(0) as u64))
                .map_err(StoreError::sqlite("reading a cursor"))
        })
    }

    fn set_cursor(
        &self,
        pipeline: &str,
        consumer: &str,
        seq: Seq,
    ) -> BoxFuture<'_, Result<(), StageError>> {
        let (pipeline, consumer) = (pipeline.to_owned(), consumer.to_owned());
        self.blocking(move |inner| set_cursor(&lock(&inner.writer), &pipeline, &consumer, seq))
    }

    fn trim(&self, pipeline: &str, retain_us: i64) -> BoxFuture<'_, Result<u64, StageError>> {
        let pipeline = pipeline.to_owned();
        self.blocking(move |inner| trim(&lock(&inner.writer), &pipeline, retain_us))
    }

    fn status(&self, pipeline: &str) -> BoxFuture<'_, Result<LogStatus, StageError>> {
        let pipeline = pipeline.to_owned();
        self.blocking(move |inner| status(&lock(&inner.reader), &pipeline))
    }

    fn pending_requests(&self, pipeline: &str) -> BoxFuture<'_, Result<Vec<Request>, StageError>> {
        let pipeline = pipeline.to_owned();
        self.blocking(move |inner| {
            // The writer: progress recorded by the last append must be seen.
            let pending = requests::list(&lock(&inner.writer), &pipeline, true)?;
            Ok(pending.into_iter().map(|r| r.request).collect())
        })
    }

    fn advance(
        &self,
        pipeline: &str,
        position: Position,
        head: Seq,
        head_commit_us: Option<i64>,
        progress: Option<RequestProgress>,
    ) -> BoxFuture<'_, Result<(), StageError>> {
        let pipeline = pipeline.to_owned();
        self.blocking(move |inner| {
            advance(
                &mut lock(&inner.writer),
                &pipeline,
                &position,
                head,
                head_commit_us,
                progress.as_ref(),
            )
        })
    }

    fn fail_request(
        &self,
        pipeline: &str,
        id: i64,
        error: &str,
    ) -> BoxFuture<'_, Result<(), StageError>> {
        let (pipeline, error) = (pipeline.to_owned(), error.to_owned());
        self.blocking(move |inner| requests::fail(&lock(&inner.writer), &pipeline, id, &error))
    }
}

fn has_requests_table(conn: &Connection) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'",
        [],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
    .map_err(StoreError::sqlite("looking for the requests table"))
}

#[cfg(test)]
mod tests;

/// Whether a SQLite error is worth retrying (busy, locked, I/O, full disk) rather than a
/// problem of data or setup. Shared by the SQLite source and sink.
pub fn sqlite_is_transient(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(
            DatabaseBusy | DatabaseLocked | SystemIoFailure | DiskFull | FileLockingProtocolFailed,
        ) => true,
        Some(_) => false,
        // Not a SQLite engine error (e.g. a type conversion): a bug or bad data.
        None => false,
    }
}
