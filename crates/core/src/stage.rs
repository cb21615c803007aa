//! The traits every stage implements: [`Source`] (capture), [`Sink`] (delivery) and [`Log`]
//! (the durable change log with current state, cursors and positions).
//!
//! The runtime drives them with these rules, which each implementation may rely on:
//! - A source's batch and its new position are committed to the log in one transaction; only
//!   then is [`Source::ack`] called with that position, so the source may release it upstream.
//! - A sink's cursor moves only after [`Sink::apply`] returned, i.e. after the target durably
//!   accepted the batch. Batches reach a sink in seq order and never with a gap in what it
//!   subscribed to; after a crash a sink may see entries again that it already applied: a sink
//!   that promises exactly-once skips entries at or below the seq it recorded itself.
//! - Futures are dropped when the pipeline is cancelled: an implementation must leave no
//!   half-applied state behind when that happens between two awaits.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Batch, BatchKind, Change, Key, LogEntry, Position, Seq};

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An error and its causes on one line (`error sending request: connection refused`), each
/// cause added only when the text so far does not already contain it (many errors show their
/// cause in their own message).
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// An error from a source, sink or log, classified for the runtime.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Bad data or bad setup: retrying cannot help. The pipeline stops and says why.
    #[error("{0}")]
    Definite(BoxError),
    /// Network trouble, a restarting server, a busy lock: retried with backoff.
    #[error("{0}")]
    Transient(BoxError),
}

impl StageError {
    pub fn definite(e: impl Into<BoxError>) -> Self {
        StageError::Definite(e.into())
    }

    pub fn transient(e: impl Into<BoxError>) -> Self {
        StageError::Transient(e.into())
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, StageError::Transient(_))
    }
}

/// A column of a captured table, as the source declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    /// The source's own type name (e.g. `INTEGER`, `numeric(12,2)`), used to create targets.
    pub type_name: String,
    pub nullable: bool,
}

/// Whose type names a schema's columns carry, so that a sink creating a table maps them from
/// the right system (`integer` is 64-bit in SQLite and 32-bit in PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    #[default]
    Sqlite,
    Postgres,
    Mysql,
}

/// A captured table: its columns in order and its key columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub name: String,
    pub columns: Vec<ColumnSchema>,
    pub key: Vec<String>,
    /// The system `columns[].type_name` come from.
    #[serde(default)]
    pub dialect: Dialect,
}

/// What a source reports when it opens.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// The captured tables.
    pub schemas: Vec<TableSchema>,
    /// Where a fresh start begins. The runtime stores it at once when the store has no
    /// position yet, so that a restart before the first change resumes here instead of
    /// starting (and snapshotting) all over again.
    pub start: Option<Position>,
}

/// What a source hands to the log: changes and the position just after them.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    /// `Full`: rows read from the source as they are (the initial copy, or a re-read asked
    /// for with a [`Request`]), logged as they come. `Incremental`: changes, where a row read
    /// between watermarks that equals the current state is a version already logged.
    pub kind: BatchKind,
    pub changes: Vec<Change>,
    pub position: Position,
    /// Set on the batch that carries (part of) a requested re-read: the store records the
    /// request's progress in the same transaction as the batch.
    pub progress: Option<RequestProgress>,
    /// Empty, or one per change (same order): the row fingerprint a query-and-compare source
    /// (`diff`) keeps for the change's key. The store writes them in the batch's transaction
    /// and skips a change whose fingerprint it already holds (a version already logged), so
    /// a comparison repeated after a crash or a retry never logs a version twice.
    pub fingerprints: Vec<Fingerprint>,
    /// Rows of a `diff` stream found unchanged whose database-side hash the store does not
    /// hold yet: it records them (no change is logged).
    pub refreshed: Vec<RawRefresh>,
}

/// A new database-side hash of a row whose values did not change (see [`Fingerprint::raw`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRefresh {
    pub stream: String,
    pub ord: Vec<u8>,
    pub raw: i64,
}

/// The fingerprint of one row of a `diff` stream, as the store keeps it next to the log:
/// per (pipeline, stream, `ord`), the row's key and a hash of its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The key in an order-preserving byte form: rows of a stream are compared in this order.
    pub ord: Vec<u8>,
    /// The hash of the row's values (`row_hash` of its binary encoding); `None`: the row is
    /// gone (a delete).
    pub hash: Option<i64>,
    /// The hash the source database computes of the row's columns, where it can: a later
    /// run compares that alone and reads no values of an unchanged row.
    pub raw: Option<i64>,
}

/// A re-read of rows asked of a running source (`tidesync verify --repair`,
/// `tidesync backfill`). The source emits the rows as they are now, at a point in its stream
/// where no change of those keys is lost or reordered, with deletes for asked keys that no
/// longer exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Unique per pipeline (the store's request id).
    pub id: i64,
    /// The stream (configured table) to read.
    pub stream: String,
    pub what: RequestKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequestKind {
    /// These keys, in the form the pipeline's changes carry them (or the target's form of
    /// them: sources read them through the key columns' types).
    Keys(Vec<Key>),
    /// The whole table, in key order, resuming after `after` (a key in the source's own
    /// progress form, as it reported it in [`RequestProgress::after`]).
    Table { after: Option<Key> },
}

/// How far a [`Request`] got with the batch it comes with.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestProgress {
    pub id: i64,
    /// For a table re-read: the last key emitted so far (source's progress form).
    pub after: Option<Key>,
    /// Everything asked has been emitted (or the request failed).
    pub done: bool,
    /// Why the source could not serve the request (it is then done, with no rows).
    pub error: Option<String>,
}

/// Rows of an initial copy in PostgreSQL's `COPY` text format, handed by a source straight to
/// the one sink of its pipeline (the direct copy; see [`Source::copy_chunk`] and
/// [`CopyWriter`]): no row is
/// decoded, logged or encoded on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyChunk {
    /// Numbers the chunks one source handed out (for [`Source::copy_abandon`]).
    pub number: u64,
    /// The stream (table) the rows belong to.
    pub stream: String,
    /// Its columns, in the order of each line's values.
    pub columns: Vec<String>,
    /// `COPY` input: with `binary` a complete binary `COPY` stream (header, rows, trailer),
    /// else one line per row, values tab-separated in `columns` order, `\N` for null,
    /// backslash escapes (PostgreSQL docs, "COPY", "Text Format" and "Binary Format").
    pub data: Vec<u8>,
    /// The binary format: only where the target's columns have the source's very types
    /// (see [`Sink::copy_binary`]).
    pub binary: bool,
    pub rows: u64,
    /// About how many rows the chunk's table has (the source's statistics), for progress.
    pub table_rows: Option<u64>,
    /// The source's position once this chunk is in the target: the copy's progress.
    pub position: Position,
}

/// A capture mode on one database.
pub trait Source: Send {
    /// Checks prerequisites, prepares capture (e.g. installs triggers) and resumes after
    /// `from` (`None`: from the beginning, snapshot included).
    fn open(&mut self, from: Option<Position>) -> BoxFuture<'_, Result<Opened, StageError>>;

    /// Returns up to `max` changes after the last polled ones, waiting at most `wait` for the
    /// first; `None` when nothing arrived. Polling again without an ack re-reads nothing: the
    /// source remembers what it handed out.
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Captured>, StageError>>;

    /// Everything up to `position` is committed to the log: the source may release it upstream.
    fn ack(&mut self, position: Position) -> BoxFuture<'_, Result<(), StageError>>;

    /// Removes everything capture installed upstream for this pipeline (triggers, change
    /// tables, replication slots), for `tidesync drop`, so nothing keeps accumulating for a
    /// pipeline that is gone. Returns one line per thing removed. Required, not defaulted: a
    /// source that forgets to clean up leaves a trigger or a slot growing forever.
    fn remove(&mut self) -> BoxFuture<'_, Result<Vec<String>, StageError>>;

    /// Queues a re-read of rows (see [`Request`]); the rows come in a later [`Self::poll`]
    /// with [`Captured::progress`] set. A request handed again (after a restart) resumes
    /// from its `after`. Sources that cannot re-read refuse with a definite error.
    fn request(&mut self, request: Request) -> Result<(), StageError> {
        Err(StageError::definite(format!(
            "this source cannot re-read rows on request (request {} for {})",
            request.id, request.stream
        )))
    }

    /// While the source runs an initial copy under a consistent snapshot on a fresh start:
    /// the next chunk of that copy (about `max_rows` rows, in key order) in `COPY` form, for a
    /// sink to write directly ([`CopyWriter`]). The source counts it as handed out, as if
    /// polled. `None` when there is no such copy (any more): [`Self::poll`] goes on with the
    /// rest. An error ends the direct copy (what was not handed out is polled later).
    fn copy_chunk(
        &mut self,
        max_rows: usize,
    ) -> BoxFuture<'_, Result<Option<CopyChunk>, StageError>> {
        let _ = max_rows;
        Box::pin(async { Ok(None) })
    }

    /// Lets go of what the source holds open on the database (PostgreSQL: the replication
    /// connection) while the pipeline cannot take changes, e.g. a direct stream whose sink is
    /// down: an open replication connection whose changes are never confirmed keeps the source
    /// server from shutting down. What was received but not handed out is dropped; the next
    /// poll reconnects after what was handed out. Default: nothing to let go of.
    fn release(&mut self) {}

    /// The streams whose direct copy may use PostgreSQL's binary `COPY` format (the sink's
    /// target columns have exactly the source's types, see [`Sink::copy_binary`]); the source
    /// uses it where it can also read the keys of that form, text elsewhere.
    fn allow_binary_copy(&mut self, streams: HashSet<String>) {
        let _ = streams;
    }

    /// The sink did not take `chunk` (or a chunk handed out after it): the source rewinds to
    /// just before it, ends the direct copy, and [`Self::poll`] reads those rows again.
    fn copy_abandon(&mut self, chunk: &CopyChunk) {
        let _ = chunk;
    }
}

/// Writes direct-copy chunks into a sink's target on a connection of its own, so that several
/// chunks are written at once while their commits stay in chunk order (the runtime commits
/// them one after the other): the position a commit records is then always that of a chunk
/// whose predecessors are all in the target.
pub trait CopyWriter: Send {
    /// Starts a transaction and writes `chunk`'s rows in it, not committed yet. A definite
    /// error means this chunk cannot go this way (e.g. a row exists): the runtime sends its
    /// rows through the log instead. After a transient error, calling it again starts over.
    fn write(&mut self, chunk: Arc<CopyChunk>) -> BoxFuture<'_, Result<(), StageError>>;

    /// Records the written chunk's position in the target (what [`Sink::copied`] returns) and
    /// commits. After a transient error, calling it again finds out whether the commit
    /// happened and finishes the chunk either way, never writing it twice.
    fn commit(&mut self) -> BoxFuture<'_, Result<(), StageError>>;
}

/// A delivery target.
pub trait Sink: Send {
    /// Connects and prepares the target (e.g. creates tables from `schemas` when configured).
    /// A sink that records its applied seq in the target (exactly-once) returns it
    /// (`Some(Seq::ZERO)` when nothing was applied yet); the runtime resumes after the larger
    /// of that and the stored cursor. Other sinks return `None`.
    fn open(&mut self, schemas: Vec<TableSchema>)
    -> BoxFuture<'_, Result<Option<Seq>, StageError>>;

    /// Applies a batch durably; returns only after the target accepted all of it. The batch is
    /// shared so that a sink can hand it to a blocking thread and the runtime can retry it.
    fn apply(&mut self, batch: Arc<Batch>) -> BoxFuture<'_, Result<(), StageError>>;

    /// Forgets what the target recorded for this pipeline and sink (its applied seq), for
    /// `tidesync drop`, so that a pipeline recreated later starts clean instead of being
    /// refused as "ahead of the store". The target's data stays. Returns one line per thing
    /// removed.
    fn forget(&mut self) -> BoxFuture<'_, Result<Vec<String>, StageError>>;

    /// A writer of direct copies into this target ([`CopyWriter`]) with a connection of its
    /// own, for use after [`Self::open`]; `None`: this sink takes no direct copies.
    fn copy_writer(&self) -> Option<Box<dyn CopyWriter>> {
        None
    }

    /// Of `schemas` (named as this sink names them, after renames), the names of those whose
    /// target tables can take the source's values in binary `COPY` form: every column there
    /// with exactly the source's type.
    fn copy_binary(
        &mut self,
        schemas: &[TableSchema],
    ) -> BoxFuture<'_, Result<HashSet<String>, StageError>> {
        let _ = schemas;
        Box::pin(async { Ok(HashSet::new()) })
    }

    /// The position of the last chunk a [`CopyWriter`] committed for this pipeline and sink, if
    /// it is still recorded. After a crash between that commit and the log's, it is ahead of
    /// the log.
    fn copied(&mut self) -> BoxFuture<'_, Result<Option<Position>, StageError>> {
        Box::pin(async { Ok(None) })
    }

    /// Forgets the position [`Self::copied`] returns, once the log holds it.
    fn clear_copied(&mut self) -> BoxFuture<'_, Result<(), StageError>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether this sink records a batch's [`Batch::position`] with its applied seq, in the
    /// batch's own transaction: then a pipeline whose only sink it is may stream to it without
    /// the log (direct streaming), the target being the authority on where to resume.
    fn records_positions(&self) -> bool {
        false
    }

    /// The applied seq and source position last recorded in the target by a direct stream
    /// (see [`Self::records_positions`]), readable before [`Self::open`]; `None` when the
    /// target has none (nothing applied directly, or the last batch came through the log).
    fn applied_position(&mut self) -> BoxFuture<'_, Result<Option<(Seq, Position)>, StageError>> {
        Box::pin(async { Ok(None) })
    }
}

/// Where a pipeline's log stands, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct LogStatus {
    /// The last seq appended (0: nothing yet).
    pub head: Seq,
    /// The oldest seq still kept (0: empty).
    pub tail: Seq,
    pub position: Option<Position>,
    /// Commit time of the change at `head`, microseconds since the epoch.
    pub head_commit_time_us: Option<i64>,
    pub cursors: Vec<(String, Seq)>,
}

/// The durable change log of one node, with current state, cursors and source positions.
pub trait Log: Send + Sync {
    /// Appends `captured` to `pipeline`'s log, updates current state and stores the position,
    /// all in one transaction. Returns the seqs given to the changes (`None` if there were none).
    fn append(
        &self,
        pipeline: &str,
        captured: Arc<Captured>,
    ) -> BoxFuture<'_, Result<Option<(Seq, Seq)>, StageError>>;

    /// Up to `max` entries with seq greater than `after`, in seq order.
    fn read(
        &self,
        pipeline: &str,
        after: Seq,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<LogEntry>, StageError>>;

    /// The last committed source position of `pipeline`.
    fn position(&self, pipeline: &str) -> BoxFuture<'_, Result<Option<Position>, StageError>>;

    /// The durable cursor of `consumer` in `pipeline` (0 if it has none yet).
    fn cursor(&self, pipeline: &str, consumer: &str) -> BoxFuture<'_, Result<Seq, StageError>>;

    /// Moves `consumer`'s cursor to `seq` (never backwards).
    fn set_cursor(
        &self,
        pipeline: &str,
        consumer: &str,
        seq: Seq,
    ) -> BoxFuture<'_, Result<(), StageError>>;

    /// Deletes the oldest entries, as long as every cursor has passed them and they are older
    /// than `retain_us` micros (the first one that is not ends the trim: the log stays one
    /// range of seqs); returns how many went.
    fn trim(&self, pipeline: &str, retain_us: i64) -> BoxFuture<'_, Result<u64, StageError>>;

    fn status(&self, pipeline: &str) -> BoxFuture<'_, Result<LogStatus, StageError>>;

    /// Requests to re-read rows that the pipeline's source has not finished, oldest first.
    fn pending_requests(&self, pipeline: &str) -> BoxFuture<'_, Result<Vec<Request>, StageError>>;

    /// Records, without log entries, that `pipeline`'s source has been applied up to
    /// `position` and its changes numbered up to `head` (a direct stream's progress, or a
    /// target's record adopted at start): position, head (never lowered) and, with `progress`,
    /// a re-read request's progress, in one transaction; every cursor of the pipeline moves to
    /// `head` (there is nothing in the log for them to read).
    fn advance(
        &self,
        pipeline: &str,
        position: Position,
        head: Seq,
        head_commit_us: Option<i64>,
        progress: Option<RequestProgress>,
    ) -> BoxFuture<'_, Result<(), StageError>>;

    /// Marks a request failed, e.g. because the source cannot serve it.
    fn fail_request(
        &self,
        pipeline: &str,
        id: i64,
        error: &str,
    ) -> BoxFuture<'_, Result<(), StageError>>;
}
