//! The `diff` capture mode (query and compare, pattern P1): for a database without a usable
//! change log, each run reads every stream's query (the merchant's own read-only SQL, or a
//! whole table) in key order, maps each row to the stream's model fields, and compares it
//! with the fingerprints the store keeps of the rows it last logged: a new key is an insert,
//! a different hash an update, a stored key the query no longer returns a delete.
//!
//! How the comparison stays cheap and bounded:
//! - The query is sorted by the database in the order of [`ord`] (integers numerically, text
//!   by bytes), and the store's fingerprints are read in the same order, in pages: the two
//!   sides merge in one pass. Memory holds a few pages of each side (`chunk_rows` rows per
//!   page: by default at most about 4 x 10,000 query rows and 2 x 10,000 fingerprints), whatever
//!   the table size.
//! - A row costs its read, its mapping and one hash; only a changed row builds a change. An
//!   unchanged page of rows produces nothing and writes nothing.
//! - Where the database hashes rows and the key is one column, the store keeps per key range
//!   (chunk) of the fingerprints their count and the XOR of their database hashes, and a
//!   full run first asks the database for the same sums per range ([`QueryReader::chunk_sums`]):
//!   only ranges that differ are then read row by row, and an unchanged stream reads no row.
//!   Chunks are small ([`chunk_target`]: 10 rows, or more to stay within about 10,000
//!   chunks), so that a few changes anywhere in a large table leave most ranges equal.
//! - A row's fingerprint is the store's own row hash of the model row (field names and
//!   values), so a changed query or mapping that yields the same rows changes nothing, and a
//!   changed field list updates every row once.
//!
//! Exactly once: a batch's fingerprints are written in the store's append transaction, and the
//! store skips a change whose fingerprint it already holds. A run cut short (a crash, a lost
//! connection) is simply run again: what was logged compares equal and is not logged twice.
//!
//! Runs happen every `interval` (from the start of one run to the start of the next), never
//! overlapping; a run after a restart waits for what is left of the interval since the last
//! complete run ([`Position::DiffRun`]).

pub mod map;
pub mod mysql;
pub mod ord;
pub mod pg;
pub mod reader;
pub mod sqlite;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidesync_core::codec::binary::{encode_row_parts, row_hash};
use tidesync_core::{
    BatchKind, BoxFuture, Captured, Change, ColumnSchema, Dialect, Fingerprint, Key, Mark,
    MarkValue, Op, Opened, Position, RawRefresh, Row, Source, StageError, TableSchema, Value,
};
use tidesync_store::{SqliteStore, StoredFingerprint};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use self::map::{Cast, FieldFrom, FieldSpec, Mapping, Resolved};
use self::reader::{ChunkFilter, HashedRow, Page, QueryColumn, QueryReader};

/// How often a long run logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// A poll that has changes hands them over after this long even if it has fewer than asked,
/// so that the log moves while a long comparison runs.
const HAND_OVER_AFTER: Duration = Duration::from_millis(500);

/// Rows per chunk at least: below this, a chunk's sums cost the database about as much as
/// its rows.
const MIN_CHUNK_ROWS: u64 = 10;
/// Chunks per stream aimed at, at most. The database groups every row into one of them
/// each run: on PostgreSQL, 10,000 groups cost about what 100 do (measured: 0.20 s against
/// 0.19 s for a million rows), 100,000 cost a third more (0.31 s), which an unchanged run
/// would pay every time.
const MAX_CHUNKS: u64 = 10_000;
/// When the chunks that differ hold more than this share of a stream's rows, the whole
/// stream is read row by row instead: one streaming scan in key order costs less than a
/// filtered one that must finish before its first row, and comparing from the first row on
/// lets the log's writes overlap the read.
const REREAD_WHOLE_ABOVE: f64 = 0.25;
/// Chunks whose sums are read first, where the database can find them alone (see
/// [`QueryReader::sample_sums`]): when the sampled chunks that differ hold more than
/// [`REREAD_WHOLE_ABOVE`] of the sampled rows, the whole stream is read at once, without
/// summing every chunk first (changes spread over the table: summing would only confirm
/// it). Evenly spaced, so that a change of one in a hundred rows anywhere shows.
const SAMPLE_CHUNKS: usize = 64;

/// The rows per chunk for a stream of `rows` rows: as few as [`MIN_CHUNK_ROWS`], so that a
/// few changes in a large table leave nearly every chunk equal, and more only to keep a
/// stream within about [`MAX_CHUNKS`] chunks (100 rows for a million).
pub(crate) fn chunk_target(rows: u64) -> u64 {
    MIN_CHUNK_ROWS.max(rows.div_ceil(MAX_CHUNKS))
}

/// One stream of a `diff` source.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// The stream's name (the target table's name).
    pub name: String,
    /// The query; `None`: every column of the table named `name` (`table` or `schema.table`).
    pub query: Option<String>,
    /// The key fields, in key order; empty: the table's primary key (only without `query`).
    pub key: Vec<String>,
    /// The model's fields; empty: the query's columns as they are.
    pub fields: Vec<FieldSpec>,
    /// `incremental`: the field holding when a row last changed (a timestamp, date, integer
    /// or text column of the query, not cast).
    pub changed: Option<String>,
}

/// How an `incremental` source runs: most runs read only the rows whose change column is at
/// or after the stream's watermark minus `overlap`; every `full_every` a run compares every
/// row, which finds deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incremental {
    /// How far below the watermark each run reads again: rows committed late with an earlier
    /// change time (long transactions, clock skew) are not missed. Subtracted as is from an
    /// integer change column (as seconds), in whole days from a date; text gets none.
    pub overlap: Duration,
    /// How often a run compares every row (and so finds deletes).
    pub full_every: Duration,
}

/// How a `diff` source runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffOptions {
    pub pipeline: String,
    pub streams: Vec<StreamSpec>,
    /// From the start of one run to the start of the next.
    pub interval: Duration,
    /// Rows per page of the query and of the stored fingerprints.
    pub chunk_rows: usize,
    /// `Some`: the `incremental` mode; `None`: `diff` (every run compares every row).
    pub incremental: Option<Incremental>,
}

/// A query row as the comparison sees it.
#[derive(Debug)]
struct QueryRow {
    /// The model key's order-preserving form.
    ord: Vec<u8>,
    /// The key columns' values as the database gave them (to read the row again by key).
    key_columns: Vec<Value>,
    /// The database's hash of the row, where it hashes rows.
    raw: Option<i64>,
    /// The model key, row and hash, when its values were read.
    model: Option<(Key, Vec<Value>, i64)>,
}

/// A row whose values must be read by key before it can be compared (the database's hash
/// differs from the stored one, or the row is new).
#[derive(Debug)]
struct Pending {
    ord: Vec<u8>,
    key_columns: Vec<Value>,
    /// The stored model hash, if the store has the row.
    stored: Option<i64>,
}

/// Rows read by key at most per statement.
const FETCH_ROWS: usize = 1_000;
/// Reads by key in flight at most, per stream.
const FETCHES_IN_FLIGHT: usize = 2;

/// A read of rows by key in flight.
#[derive(Debug)]
struct Fetch {
    pending: Vec<Pending>,
    task: JoinHandle<Result<Vec<HashedRow>, StageError>>,
}

/// A stream ready to run: its query, columns, mapping and sort columns.
#[derive(Debug)]
struct Prepared {
    query: String,
    columns: Vec<QueryColumn>,
    order: Vec<usize>,
    mapping: Arc<Mapping>,
    /// The query column of `StreamSpec::changed`.
    changed: Option<usize>,
}

/// How many rows a stream's run saw and what it found.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    read: u64,
    inserts: u64,
    updates: u64,
    deletes: u64,
}

/// The comparison of one stream in progress.
#[derive(Debug)]
struct Scan {
    rows: mpsc::Receiver<Result<MappedPage, StageError>>,
    stored: mpsc::Receiver<Result<Vec<StoredFingerprint>, StageError>>,
    tasks: Vec<JoinHandle<()>>,
    query_rows: VecDeque<QueryRow>,
    pending: Vec<Pending>,
    fetches: VecDeque<Fetch>,
    query_done: bool,
    stored_rows: VecDeque<StoredFingerprint>,
    stored_done: bool,
    counts: Counts,
    /// `(chunks, chunks read row by row)` when the stream's chunk sums were compared first.
    chunks: Option<(usize, usize)>,
    /// A sample of the chunk sums sent it to read every row (see [`SAMPLE_CHUNKS`]).
    sampled: bool,
    /// Merge steps taken (rows of either side).
    compared: u64,
    started: Instant,
    last_progress: Instant,
}

impl Counts {
    /// Adds what `other` found (not its rows read).
    fn add(&mut self, other: Counts) {
        self.inserts += other.inserts;
        self.updates += other.updates;
        self.deletes += other.deletes;
    }
}

impl Drop for Scan {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for fetch in &self.fetches {
            fetch.task.abort();
        }
    }
}

#[derive(Debug)]
struct Run {
    started_us: i64,
    stream: usize,
    scan: Option<Scan>,
    totals: Counts,
    started: Instant,
    /// Whether this run compares every row (always for `diff`).
    full: bool,
    /// The watermarks as this run moves them.
    marks: BTreeMap<String, MarkValue>,
    /// Where the run's time went (logged at debug level when it ends).
    waits: Waits,
}

/// Time a run spent waiting: for the query's rows, the store's fingerprints, reads by key,
/// and outside the source (its batches being logged between polls).
#[derive(Debug, Default, Clone, Copy)]
struct Waits {
    query: Duration,
    stored: Duration,
    fetch: Duration,
    outside: Duration,
    /// When the last poll handed its batch over.
    handed_over: Option<Instant>,
}

/// The `diff` source; see the module docs.
pub struct DiffSource {
    opts: DiffOptions,
    reader: Arc<Mutex<Box<dyn QueryReader>>>,
    /// A second connection, reading rows by key while `reader` streams the query.
    fetcher: Arc<Mutex<Box<dyn QueryReader>>>,
    /// Whether the database hashes rows itself (see [`QueryReader::hashes_rows`]).
    hashes: bool,
    store: SqliteStore,
    dialect: Dialect,
    target: String,
    prepared: Vec<Prepared>,
    last_run_us: i64,
    /// `incremental`: when the last full run started (0: none yet).
    last_full_us: i64,
    /// `incremental`: per stream, the greatest change-column value logged.
    marks: BTreeMap<String, MarkValue>,
    run: Option<Run>,
    /// A run failed part-way: the next poll runs again at once instead of at the next
    /// interval.
    rerun: bool,
    /// Streams compared whole since their chunks were last checked: before the next run,
    /// their chunks are cut again where they grew or shrank too far.
    rebalance: BTreeSet<usize>,
    /// Complete runs until their last batches are committed: then each run's time to
    /// commit is logged.
    committing: Committing,
}

impl std::fmt::Debug for DiffSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffSource")
            .field("target", &self.target)
            .field("pipeline", &self.opts.pipeline)
            .finish_non_exhaustive()
    }
}

/// Complete runs' positions and starts, oldest first, whose last batches are not yet
/// committed (acked). More than one when a run ends while the one before it is still being
/// appended (a run longer than the interval starts the next one at once); at most
/// [`Committing::KEPT`], so a caller that never acks keeps no more.
#[derive(Debug, Default)]
struct Committing(VecDeque<(Position, Instant)>);

impl Committing {
    const KEPT: usize = 16;

    fn completed(&mut self, position: Position, started: Instant) {
        if self.0.len() >= Self::KEPT {
            self.0.pop_front();
        }
        self.0.push_back((position, started));
    }

    /// The run whose last batch `position` is, if one waits. Batches are acked in order and
    /// a run's last batch is the first with its position (the batches of the next run carry
    /// it until that run completes), so the oldest run waiting is the one to match; should
    /// an ack skip it, the runs before the match are committed too and are dropped unlogged
    /// (their time to commit is unknown), rather than stop the queue for good.
    fn acked(&mut self, position: &Position) -> Option<(Position, Instant)> {
        let at = self.0.iter().position(|(p, _)| p == position)?;
        self.0.drain(..=at).next_back()
    }
}

fn definite(message: String) -> StageError {
    StageError::definite(message)
}

impl DiffSource {
    /// A source reading through readers `connect` makes (two: one streams a query while the
    /// other reads rows by key), comparing with the fingerprints `store` keeps for the
    /// pipeline.
    pub fn new(
        opts: DiffOptions,
        connect: impl Fn() -> Box<dyn QueryReader>,
        store: SqliteStore,
    ) -> Self {
        let reader = connect();
        let dialect = reader.dialect();
        let target = reader.describe_db();
        let hashes = reader.hashes_rows();
        DiffSource {
            opts,
            reader: Arc::new(Mutex::new(reader)),
            fetcher: Arc::new(Mutex::new(connect())),
            hashes,
            store,
            dialect,
            target,
            prepared: Vec::new(),
            last_run_us: 0,
            last_full_us: 0,
            marks: BTreeMap::new(),
            run: None,
            rerun: false,
            rebalance: BTreeSet::new(),
            committing: Committing::default(),
        }
    }

    /// The position of a run that started at `started_us` (its marks and full time).
    fn position(
        &self,
        started_us: i64,
        full_us: i64,
        marks: &BTreeMap<String, MarkValue>,
    ) -> Position {
        match self.opts.incremental {
            None => Position::DiffRun {
                started_us,
                full_us: 0,
                marks: Vec::new(),
            },
            Some(_) => Position::DiffRun {
                started_us,
                full_us,
                marks: marks
                    .iter()
                    .map(|(stream, value)| Mark {
                        stream: stream.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            },
        }
    }

    /// The value a run reads changes from: `mark` minus the overlap.
    fn below(&self, mark: &MarkValue) -> Value {
        let overlap = self.opts.incremental.map_or(Duration::ZERO, |i| i.overlap);
        match mark {
            MarkValue::Timestamp(t) => {
                Value::Timestamp(t.saturating_sub(overlap.as_micros() as i64))
            }
            MarkValue::Date(d) => {
                let days = overlap.as_secs().div_ceil(86_400) as i32;
                Value::Date(d.saturating_sub(days))
            }
            MarkValue::Int(i) => Value::Int(i.saturating_sub(overlap.as_secs() as i64)),
            MarkValue::Text(t) => Value::Text(t.clone()),
        }
    }

    /// Where a batch of a run in progress leaves the source: the last complete run.
    fn last_position(&self) -> Position {
        self.position(self.last_run_us, self.last_full_us, &self.marks)
    }

    /// `SELECT *` of a table named `table` or `schema.table`, quoted for the database.
    fn table_query(&self, table: &str) -> String {
        let quote = |name: &str| match self.dialect {
            Dialect::Mysql => tidesync_core::mysql::quote_ident(name),
            Dialect::Postgres | Dialect::Sqlite => tidesync_core::sql::quote_ident(name),
        };
        let name = match table.split_once('.') {
            Some((schema, name)) => format!("{}.{}", quote(schema), quote(name)),
            None => quote(table),
        };
        format!("SELECT * FROM {name}")
    }

    /// Resolves a stream against its query's columns.
    async fn prepare(&self, spec: &StreamSpec) -> Result<(Prepared, TableSchema), StageError> {
        let at = format!("source {}: stream {}", self.target, spec.name);
        let query = match &spec.query {
            Some(q) => q.clone(),
            None => self.table_query(&spec.name),
        };
        let mut reader = self.reader.lock().await;
        let columns = reader.columns(&query).await?;
        let column_at = |name: &str| -> Result<usize, StageError> {
            columns.iter().position(|c| c.name == name).ok_or_else(|| {
                let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                definite(format!(
                    "{at}: the query has no column {name} (it has: {})",
                    names.join(", ")
                ))
            })
        };
        let specs: Vec<FieldSpec> = if spec.fields.is_empty() {
            columns
                .iter()
                .map(|c| FieldSpec {
                    name: c.name.clone(),
                    from: FieldFrom::Column(c.name.clone()),
                    cast: None,
                })
                .collect()
        } else {
            spec.fields.clone()
        };
        let mut names = Vec::with_capacity(specs.len());
        let mut fields = Vec::with_capacity(specs.len());
        let mut schema_columns = Vec::with_capacity(specs.len());
        for f in &specs {
            let (resolved, type_name, nullable) = match &f.from {
                FieldFrom::Column(c) => {
                    let i = column_at(c)?;
                    let type_name = match f.cast {
                        Some(cast) => cast.type_name(self.dialect).to_owned(),
                        None if columns[i].type_name.is_empty() => {
                            Cast::Text.type_name(self.dialect).to_owned()
                        }
                        None => columns[i].type_name.clone(),
                    };
                    (
                        Resolved::Column {
                            at: i,
                            cast: f.cast,
                        },
                        type_name,
                        columns[i].nullable,
                    )
                }
                FieldFrom::Value(v) => {
                    let v = match f.cast {
                        Some(cast) => cast
                            .apply(v.clone())
                            .map_err(|e| definite(format!("{at}: field {}: {e}", f.name)))?,
                        None => v.clone(),
                    };
                    let type_name = Cast::of(&v).type_name(self.dialect).to_owned();
                    let nullable = v == Value::Null;
                    (Resolved::Constant(v), type_name, nullable)
                }
            };
            names.push(f.name.clone());
            fields.push(resolved);
            schema_columns.push(ColumnSchema {
                name: f.name.clone(),
                type_name,
                nullable,
            });
        }
        let key: Vec<String> = if !spec.key.is_empty() {
            spec.key.clone()
        } else if spec.query.is_some() {
            return Err(definite(format!(
                "{at}: a stream with a query needs `key` (the fields that identify a row)"
            )));
        } else {
            let pk = reader.primary_key(&spec.name).await?;
            pk.iter()
                .map(|col| {
                    specs
                        .iter()
                        .find(|f| f.from == FieldFrom::Column(col.clone()))
                        .map(|f| f.name.clone())
                        .ok_or_else(|| {
                            definite(format!(
                                "{at}: primary key column {col} is not one of the stream's \
                                 fields; add it, or give the stream a `key`"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?
        };
        drop(reader);
        let mut key_at = Vec::with_capacity(key.len());
        let mut order = Vec::with_capacity(key.len());
        for k in &key {
            let i = names.iter().position(|n| n == k).ok_or_else(|| {
                definite(format!(
                    "{at}: key field {k} is not one of the stream's fields"
                ))
            })?;
            match &fields[i] {
                Resolved::Column { at: c, .. } => order.push(*c),
                Resolved::Constant(_) => {
                    return Err(definite(format!(
                        "{at}: key field {k} is a constant; key fields must come from the query"
                    )));
                }
            }
            key_at.push(i);
            schema_columns[i].nullable = false;
        }
        // A `diff` source compares every row every run: it has no use for a change column.
        let changed = match (&spec.changed, self.opts.incremental) {
            (_, None) => None,
            (None, Some(_)) => {
                return Err(definite(format!(
                    "{at}: an incremental stream needs `changed` (the field holding when a row \
                     last changed)"
                )));
            }
            (Some(field), Some(_)) => {
                let i = names.iter().position(|n| n == field).ok_or_else(|| {
                    definite(format!(
                        "{at}: changed field {field} is not one of the stream's fields"
                    ))
                })?;
                match &fields[i] {
                    Resolved::Column { at: c, cast: None } => Some(*c),
                    _ => {
                        return Err(definite(format!(
                            "{at}: changed field {field} must be a column of the query without a \
                             cast (it is compared in the database)"
                        )));
                    }
                }
            }
        };
        let schema = TableSchema {
            name: spec.name.clone(),
            columns: schema_columns,
            key,
            dialect: self.dialect,
        };
        let key_names = key_at.iter().map(|&i| names[i].clone()).collect();
        let mapping = Arc::new(Mapping {
            stream: spec.name.clone(),
            names,
            fields,
            key_at,
            key_names,
        });
        Ok((
            Prepared {
                query,
                columns,
                order,
                mapping,
                changed,
            },
            schema,
        ))
    }

    /// Starts comparing stream `i`: the query's rows and the stored fingerprints are read by
    /// tasks of their own, a few pages ahead. Where the database hashes rows, only keys and
    /// hashes are read, unless `values` (the store has no row of the stream yet: every row
    /// is new, so reading them all at once beats reading them by key).
    fn start_scan(&self, i: usize, kind: ScanKind, plan: ChunkPlan, started: Instant) -> Scan {
        let prepared = &self.prepared[i];
        let read_nothing = matches!(plan, ChunkPlan::Equal { .. });
        let sampled = matches!(plan, ChunkPlan::Whole { sampled: true, .. });
        let (filter, ranges, skipped_rows, chunks) = match plan {
            ChunkPlan::Whole { chunks, .. } => (None, None, 0, chunks.map(|n| (n, n))),
            ChunkPlan::Some {
                filter,
                ranges,
                skipped_rows,
                chunks,
            } => {
                let reread = filter.chunks.len();
                (
                    Some(filter),
                    Some(ranges),
                    skipped_rows,
                    Some((chunks, reread)),
                )
            }
            // Every chunk agrees: neither side is read.
            ChunkPlan::Equal { rows, chunks } => (None, Some(Vec::new()), rows, Some((chunks, 0))),
        };
        let page_rows = self.opts.chunk_rows.max(1);
        let (raw_tx, mut raw_rx) = mpsc::channel::<RawPage>(2);
        let (rows_tx, rows_rx) = mpsc::channel(2);
        let reader = self.reader.clone();
        let (query, columns, order) = (
            prepared.query.clone(),
            prepared.columns.clone(),
            prepared.order.clone(),
        );
        let read_errors = rows_tx.clone();
        let hashes = self.hashes;
        let changed = prepared.changed;
        let read_kind = kind.clone();
        let read = tokio::spawn(async move {
            if read_nothing {
                return;
            }
            let mut reader = reader.lock().await;
            let read = if let (ScanKind::Changed { since }, Some(changed)) = (&read_kind, changed) {
                forward_pages(&raw_tx, RawPage::Rows, |tx| {
                    reader.read_changed(
                        &query,
                        &columns,
                        changed,
                        since.as_ref(),
                        &order,
                        page_rows,
                        tx,
                    )
                })
                .await
            } else if let (ScanKind::Full { values }, true) = (&read_kind, hashes) {
                let values = *values;
                forward_pages(&raw_tx, RawPage::Hashed, |tx| {
                    reader.read_hashes(
                        &query,
                        &columns,
                        &order,
                        values,
                        filter.as_ref(),
                        page_rows,
                        tx,
                    )
                })
                .await
            } else {
                forward_pages(&raw_tx, RawPage::Rows, |tx| {
                    reader.read(&query, &columns, &order, page_rows, tx)
                })
                .await
            };
            if let Err(e) = read {
                let _closed = read_errors.send(Err(e)).await;
            }
        });
        let mapping = prepared.mapping.clone();
        let target = self.target.clone();
        let in_key_order = matches!(kind, ScanKind::Full { .. });
        let map = tokio::spawn(async move {
            let mut last: Option<Vec<u8>> = None;
            let mut buf = Vec::with_capacity(256);
            while let Some(page) = raw_rx.recv().await {
                let mapped = map_page(
                    &target,
                    &mapping,
                    page,
                    changed,
                    in_key_order.then_some(&mut last),
                    &mut buf,
                );
                let failed = mapped.is_err();
                if rows_tx.send(mapped).await.is_err() || failed {
                    return;
                }
            }
        });
        let (stored_tx, stored_rx) = mpsc::channel(2);
        let store = self.store.clone();
        let (pipeline, stream) = (self.opts.pipeline.clone(), prepared.mapping.stream.clone());
        let stored = tokio::spawn(async move {
            if !in_key_order {
                // Rows changed since a watermark are not merged with the store's: the store
                // itself skips what it already has.
                return;
            }
            // The key ranges to read: all of them, or the chunks whose sums differ. A page
            // fills from as many ranges as it takes (small chunks: many ranges per page), in
            // one blocking call.
            let ranges = Arc::new(ranges.unwrap_or_else(|| vec![(Vec::new(), None)]));
            // The range being read, and where in it: `None`, from its `lo` (included); then
            // after the last row read.
            let mut at: (usize, Option<Vec<u8>>) = (0, None);
            while at.0 < ranges.len() {
                let (store, pipeline, stream, ranges) = (
                    store.clone(),
                    pipeline.clone(),
                    stream.clone(),
                    ranges.clone(),
                );
                let mut at_page = std::mem::take(&mut at);
                let page = tokio::task::spawn_blocking(move || {
                    let at = &mut at_page;
                    let mut rows: Vec<StoredFingerprint> = Vec::new();
                    while at.0 < ranges.len() && rows.len() < page_rows {
                        let (lo, hi) = &ranges[at.0];
                        let start = match &at.1 {
                            Some(after) => std::ops::Bound::Excluded(after.as_slice()),
                            None => std::ops::Bound::Included(lo.as_slice()),
                        };
                        let want = page_rows - rows.len();
                        let got =
                            store.fingerprints(&pipeline, &stream, start, hi.as_deref(), want)?;
                        if got.len() < want {
                            *at = (at.0 + 1, None);
                        } else {
                            at.1 = got.last().map(|r| r.ord.clone());
                        }
                        rows.extend(got);
                    }
                    Ok::<_, tidesync_store::StoreError>((rows, at_page))
                })
                .await
                .map_err(|e| StageError::transient(format!("fingerprint reader failed: {e}")))
                .and_then(|r| r.map_err(StageError::from));
                let page = page.map(|(rows, next)| {
                    at = next;
                    rows
                });
                let failed = page.is_err();
                if stored_tx.send(page).await.is_err() || failed {
                    return;
                }
            }
        });
        Scan {
            rows: rows_rx,
            stored: stored_rx,
            tasks: vec![read, map, stored],
            query_rows: VecDeque::new(),
            pending: Vec::new(),
            fetches: VecDeque::new(),
            query_done: false,
            stored_rows: VecDeque::new(),
            stored_done: false,
            counts: Counts {
                read: skipped_rows,
                ..Counts::default()
            },
            chunks,
            sampled,
            compared: 0,
            started,
            last_progress: Instant::now(),
        }
    }

    /// Whether stream `i` can be compared chunk by chunk: the database hashes rows, and the
    /// key is one query column taken as it is (the stored keys are then the database's own
    /// values, to cut the query's rows at).
    fn chunkable(&self, i: usize) -> bool {
        let mapping = &self.prepared[i].mapping;
        self.hashes
            && mapping.key_at.len() == 1
            && matches!(
                mapping.fields[mapping.key_at[0]],
                Resolved::Column { cast: None, .. }
            )
    }

    /// Compares stream `i`'s chunk sums (the store's and the database's), where it has
    /// chunks: which key ranges must be compared row by row.
    async fn plan_chunks(&self, i: usize) -> Result<ChunkPlan, StageError> {
        if !self.chunkable(i) {
            return Ok(ChunkPlan::whole(None));
        }
        let prepared = &self.prepared[i];
        let store = self.store.clone();
        let (pipeline, stream) = (self.opts.pipeline.clone(), prepared.mapping.stream.clone());
        let started = Instant::now();
        let chunks = tokio::task::spawn_blocking(move || store.chunks(&pipeline, &stream))
            .await
            .map_err(|e| StageError::transient(format!("chunk reader failed: {e}")))?
            .map_err(StageError::from)?;
        if chunks.len() < 2 {
            return Ok(ChunkPlan::whole(None));
        }
        let bounds: Option<Vec<Value>> = chunks[1..]
            .iter()
            .map(|c| c.bound.as_ref().and_then(|k| k.0.first().cloned()))
            .collect();
        let Some(bounds) = bounds else {
            return Ok(ChunkPlan::whole(None));
        };
        let read_store = started.elapsed();
        if let Some(plan) = self.sample_chunks(i, &chunks, &bounds).await? {
            return Ok(plan);
        }
        let sampled = started.elapsed();
        let sums = self
            .reader
            .lock()
            .await
            .chunk_sums(&prepared.query, &prepared.columns, &prepared.order, &bounds)
            .await?;
        tracing::debug!(
            source = %self.target,
            stream = %prepared.mapping.stream,
            chunks = chunks.len(),
            store_ms = read_store.as_millis() as u64,
            sample_ms = (sampled - read_store).as_millis() as u64,
            sums_ms = (started.elapsed() - sampled).as_millis() as u64,
            "read the chunk sums"
        );
        let Some(sums) = sums else {
            return Ok(ChunkPlan::whole(None));
        };
        let n = chunks.len();
        let mut found = vec![(0_i64, 0_i64); n];
        for sum in sums {
            match sum.chunk.and_then(|c| usize::try_from(c).ok()) {
                Some(c) if c < n => found[c] = (sum.rows, sum.sum),
                // Rows with a null key: compared row by row, which names the problem.
                _ => {
                    return Ok(ChunkPlan::whole(Some(n)));
                }
            }
        }
        let (differ, agree): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&c| differs(&chunks[c], found[c]));
        let skipped_rows: u64 = agree.iter().map(|&c| found[c].0 as u64).sum();
        if differ.is_empty() {
            return Ok(ChunkPlan::Equal {
                rows: skipped_rows,
                chunks: n,
            });
        }
        let all_rows: u64 = found.iter().map(|f| f.0 as u64).sum();
        let differ_rows = all_rows - skipped_rows;
        if differ.len() == n || differ_rows as f64 > REREAD_WHOLE_ABOVE * all_rows as f64 {
            return Ok(ChunkPlan::whole(Some(n)));
        }
        // Neighbouring chunks are read as one range.
        let mut ranges: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut previous: Option<usize> = None;
        for &c in &differ {
            let hi = chunks.get(c + 1).map(|next| next.lo.clone());
            match (previous, ranges.last_mut()) {
                (Some(p), Some(last)) if p + 1 == c => last.1 = hi,
                _ => ranges.push((chunks[c].lo.clone(), hi)),
            }
            previous = Some(c);
        }
        Ok(ChunkPlan::Some {
            filter: ChunkFilter {
                bounds,
                chunks: differ.iter().map(|&c| c as i64).collect(),
            },
            ranges,
            skipped_rows,
            chunks: n,
        })
    }

    /// Reads the sums of [`SAMPLE_CHUNKS`] of stream `i`'s `chunks` (cut at `bounds`), where
    /// the database can do that cheaply: [`ChunkPlan::Whole`] when the sample says most
    /// rows are to be read anyway, else `None` (every chunk's sums decide).
    async fn sample_chunks(
        &self,
        i: usize,
        chunks: &[tidesync_store::StoredChunk],
        bounds: &[Value],
    ) -> Result<Option<ChunkPlan>, StageError> {
        let n = chunks.len();
        // Fewer chunks: their sums cost little, and a sample would be most of them.
        if n < 4 * SAMPLE_CHUNKS {
            return Ok(None);
        }
        let picked = sample_picks(n);
        let prepared = &self.prepared[i];
        let started = Instant::now();
        let filter = ChunkFilter {
            bounds: bounds.to_vec(),
            chunks: picked.iter().map(|&c| c as i64).collect(),
        };
        let Some(sums) = self
            .reader
            .lock()
            .await
            .sample_sums(&prepared.query, &prepared.columns, &prepared.order, &filter)
            .await?
        else {
            return Ok(None);
        };
        let mut found: std::collections::HashMap<usize, (i64, i64)> =
            picked.iter().map(|&c| (c, (0, 0))).collect();
        for sum in sums {
            match sum.chunk.and_then(|c| usize::try_from(c).ok()) {
                Some(c) if found.contains_key(&c) => {
                    found.insert(c, (sum.rows, sum.sum));
                }
                // Rows outside the sampled chunks (a key the database compares otherwise
                // than its bounds): let every chunk's sums decide.
                _ => return Ok(None),
            }
        }
        let (mut sampled_rows, mut differ_rows, mut differ) = (0_u64, 0_u64, 0_usize);
        for &c in &picked {
            let stored = &chunks[c];
            let rows = stored.rows.max(found[&c].0.max(0) as u64);
            sampled_rows += rows;
            if differs(stored, found[&c]) {
                differ += 1;
                differ_rows += rows;
            }
        }
        let whole = differ_rows as f64 > REREAD_WHOLE_ABOVE * sampled_rows as f64;
        tracing::debug!(
            source = %self.target,
            stream = %prepared.mapping.stream,
            chunks = n,
            sampled = picked.len(),
            differ,
            whole,
            ms = started.elapsed().as_millis() as u64,
            "sampled the chunk sums"
        );
        Ok(whole.then_some(ChunkPlan::Whole {
            chunks: Some(n),
            sampled: true,
        }))
    }

    /// Keeps the chunks of the streams compared whole since the last check near
    /// [`chunk_target`] rows each: cuts a stream without chunks, splits chunks that grew and
    /// merges chunks that shrank, locally (see [`tidesync_store::Rebalanced`]). Sums stay
    /// exact whatever is cut (the store keeps them); this only keeps the ranges small and
    /// even.
    async fn rebalance_chunks(&mut self) -> Result<(), StageError> {
        let streams = std::mem::take(&mut self.rebalance);
        for i in streams {
            if i >= self.prepared.len() || !self.chunkable(i) {
                continue;
            }
            let store = self.store.clone();
            let (pipeline, stream) = (
                self.opts.pipeline.clone(),
                self.prepared[i].mapping.stream.clone(),
            );
            let started = Instant::now();
            let done = tokio::task::spawn_blocking(move || {
                store.rebalance_chunks(&pipeline, &stream, &chunk_target)
            })
            .await
            .map_err(|e| StageError::transient(format!("chunk cutter failed: {e}")))?
            .map_err(StageError::from)?;
            if done.changed() {
                tracing::info!(
                    source = %self.target,
                    stream = %self.prepared[i].mapping.stream,
                    chunks = done.chunks,
                    rows = done.rows,
                    rows_per_chunk = done.target,
                    split = done.split,
                    merged = done.merged,
                    whole = done.whole,
                    ms = started.elapsed().as_millis() as u64,
                    "cut the stream's fingerprints into chunks"
                );
            }
        }
        Ok(())
    }

    /// Records each stream's mapping with the store. Where it changed (a field renamed, cast
    /// or added) and the database hashes rows, the stored database hashes are forgotten: they
    /// hash the query's rows, which a new mapping does not change, so without this an
    /// unchanged query row would be skipped with its old mapped values.
    async fn record_mappings(&self) -> Result<(), StageError> {
        for prepared in &self.prepared {
            let mapping = &prepared.mapping;
            let described = format!(
                "names {:?}; fields {:?}; key {:?}",
                mapping.names, mapping.fields, mapping.key_at
            );
            let store = self.store.clone();
            let (pipeline, stream) = (self.opts.pipeline.clone(), mapping.stream.clone());
            let hashes = self.hashes;
            let forgot = tokio::task::spawn_blocking(move || {
                let stored = store.stream_mapping(&pipeline, &stream)?;
                if stored.as_deref() == Some(described.as_str()) {
                    return Ok(false);
                }
                let forget =
                    hashes && (stored.is_some() || store.has_fingerprints(&pipeline, &stream)?);
                store
                    .set_stream_mapping(&pipeline, &stream, &described, forget)
                    .map(|()| forget)
            })
            .await
            .map_err(|e| StageError::transient(format!("mapping recorder failed: {e}")))?
            .map_err(StageError::from)?;
            if forgot {
                tracing::info!(
                    source = %self.target,
                    stream = %mapping.stream,
                    "the stream's mapping changed: the next run compares every row by its \
                     mapped values"
                );
            }
        }
        Ok(())
    }

    /// The key of the stored row `ord` of `stream` (the row is deleted).
    async fn stored_key(&self, stream: &str, ord: &[u8]) -> Result<Key, StageError> {
        let store = self.store.clone();
        let (pipeline, stream_name, ord) =
            (self.opts.pipeline.clone(), stream.to_owned(), ord.to_vec());
        let key = tokio::task::spawn_blocking(move || {
            store.fingerprint_key(&pipeline, &stream_name, &ord)
        })
        .await
        .map_err(|e| StageError::transient(format!("fingerprint key read failed: {e}")))?
        .map_err(StageError::from)?;
        key.ok_or_else(|| {
            StageError::transient(format!(
                "stream {stream}: a stored fingerprint vanished while comparing"
            ))
        })
    }

    /// Whether the store holds any row of stream `i`.
    async fn has_stored(&self, i: usize) -> Result<bool, StageError> {
        let store = self.store.clone();
        let (pipeline, stream) = (
            self.opts.pipeline.clone(),
            self.prepared[i].mapping.stream.clone(),
        );
        tokio::task::spawn_blocking(move || store.has_fingerprints(&pipeline, &stream))
            .await
            .map_err(|e| StageError::transient(format!("fingerprint lookup failed: {e}")))?
            .map_err(StageError::from)
    }

    /// Starts reading the `pending` rows of stream `i` by key, on the second connection,
    /// while the comparison goes on.
    fn spawn_fetch(&self, i: usize, pending: Vec<Pending>) -> Fetch {
        let prepared = &self.prepared[i];
        let (query, columns, order) = (
            prepared.query.clone(),
            prepared.columns.clone(),
            prepared.order.clone(),
        );
        let fetcher = self.fetcher.clone();
        let keys: Vec<Vec<Value>> = pending.iter().map(|p| p.key_columns.clone()).collect();
        let task = tokio::spawn(async move {
            fetcher
                .lock()
                .await
                .read_keys(&query, &columns, &order, &keys)
                .await
        });
        Fetch { pending, task }
    }

    /// Compares the rows a fetch read with what the store had; the changes go to `out`.
    fn settle_fetch(
        &self,
        i: usize,
        pending: Vec<Pending>,
        rows: Vec<HashedRow>,
        out: &mut Found,
        now_us: i64,
    ) -> Result<Counts, StageError> {
        let mapping = &self.prepared[i].mapping;
        let target = &self.target;
        let at = || format!("source {target}: stream {}", mapping.stream);
        let mut buf = Vec::with_capacity(256);
        let mut fetched = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let Some(values) = row.values else {
                continue;
            };
            let (ord, key, values, hash) = model_row(&at, mapping, values, &mut buf)?;
            fetched.insert(ord, (key, values, hash, row.hash));
        }
        let mut counts = Counts::default();
        for p in pending {
            match (fetched.remove(&p.ord), p.stored) {
                (Some((_, _, hash, raw)), Some(stored)) if stored == hash => {
                    out.refreshed.push(RawRefresh {
                        stream: mapping.stream.clone(),
                        ord: p.ord,
                        raw,
                    });
                }
                (Some((key, values, hash, raw)), stored) => {
                    let op = if stored.is_some() {
                        counts.updates += 1;
                        Op::Update
                    } else {
                        counts.inserts += 1;
                        Op::Insert
                    };
                    out.fingerprints.push(Fingerprint {
                        ord: p.ord,
                        hash: Some(hash),
                        raw: Some(raw),
                    });
                    out.changes.push(upsert(mapping, op, key, values, now_us));
                }
                // Gone since the query's pass read its hash.
                (None, Some(_)) => {
                    counts.deletes += 1;
                    let key = model_key(&at, mapping, &p.key_columns)?.1;
                    out.fingerprints.push(Fingerprint {
                        ord: p.ord,
                        hash: None,
                        raw: None,
                    });
                    out.changes.push(delete(mapping, key, now_us));
                }
                (None, None) => {}
            }
        }
        Ok(counts)
    }

    /// Compares until `max` changes are found or the run ends; see [`Source::poll`].
    async fn step(&mut self, max: usize) -> Result<Option<Captured>, StageError> {
        let poll_started = Instant::now();
        let mut out = Found::default();
        let now_us = tidesync_core::time::now_us();
        // The clock is read once per 1,024 steps, not per row.
        let mut iterations: u64 = 0;
        loop {
            iterations += 1;
            let n = self.prepared.len();
            let Some(run) = self.run.as_mut() else {
                break;
            };
            if run.stream >= n {
                // The run is over: its last batch records it.
                let run = self
                    .run
                    .take()
                    .unwrap_or_else(|| unreachable!("checked above"));
                self.last_run_us = run.started_us;
                if run.full {
                    self.last_full_us = run.started_us;
                }
                self.marks = run.marks;
                let position = self.last_position();
                // The position names the run in this line and in "diff run committed".
                tracing::info!(
                    source = %self.target,
                    pipeline = %self.opts.pipeline,
                    rows = run.totals.read,
                    inserts = run.totals.inserts,
                    updates = run.totals.updates,
                    deletes = run.totals.deletes,
                    ms = run.started.elapsed().as_millis() as u64,
                    full = run.full,
                    position = %position,
                    "diff run complete"
                );
                let w = run.waits;
                tracing::debug!(
                    source = %self.target,
                    pipeline = %self.opts.pipeline,
                    query_ms = w.query.as_millis() as u64,
                    stored_ms = w.stored.as_millis() as u64,
                    fetch_ms = w.fetch.as_millis() as u64,
                    outside_ms = w.outside.as_millis() as u64,
                    "where the diff run waited"
                );
                self.committing.completed(position.clone(), run.started);
                return Ok(Some(out.captured(position)));
            }
            if out.changes.len() >= max.max(1)
                || (!out.is_empty()
                    && iterations.is_multiple_of(1_024)
                    && poll_started.elapsed() >= HAND_OVER_AFTER)
            {
                break;
            }
            let stream_index = run.stream;
            if run.scan.is_none() {
                let started = Instant::now();
                let (kind, plan) = if run.full {
                    let values = !self.hashes || !self.has_stored(stream_index).await?;
                    let plan = if values {
                        ChunkPlan::whole(None)
                    } else {
                        self.plan_chunks(stream_index).await?
                    };
                    self.rebalance.insert(stream_index);
                    (ScanKind::Full { values }, plan)
                } else {
                    let stream = &self.prepared[stream_index].mapping.stream;
                    let since = self.marks.get(stream).map(|m| self.below(m));
                    (ScanKind::Changed { since }, ChunkPlan::whole(None))
                };
                let scan = self.start_scan(stream_index, kind, plan, started);
                if let Some(run) = self.run.as_mut() {
                    run.scan = Some(scan);
                }
                continue;
            }
            let mapping = self.prepared[stream_index].mapping.clone();
            let Some(run) = self.run.as_mut() else {
                break;
            };
            let Some(scan) = run.scan.as_mut() else {
                continue;
            };
            if scan.query_rows.is_empty() && !scan.query_done {
                let waited = Instant::now();
                let received = scan.rows.recv().await;
                run.waits.query += waited.elapsed();
                match received {
                    Some(Ok((rows, mark))) => {
                        scan.counts.read += rows.len() as u64;
                        scan.query_rows.extend(rows);
                        if let Some(mark) = mark {
                            let old = run.marks.get(&mapping.stream);
                            if old.is_none_or(|old| mark > *old) {
                                run.marks.insert(mapping.stream.clone(), mark);
                            }
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => scan.query_done = true,
                }
                continue;
            }
            if scan.stored_rows.is_empty() && !scan.stored_done {
                let waited = Instant::now();
                let received = scan.stored.recv().await;
                run.waits.stored += waited.elapsed();
                match received {
                    Some(Ok(rows)) => scan.stored_rows.extend(rows),
                    Some(Err(e)) => return Err(e),
                    None => scan.stored_done = true,
                }
                continue;
            }
            // Each pending row makes at most one change: reads by key are at most `max` rows,
            // and their results are taken while the batch has room for them.
            let both_done = scan.query_rows.is_empty() && scan.stored_rows.is_empty();
            let fetch_rows = FETCH_ROWS.min(max.max(1));
            let take_fetch = scan.fetches.front().is_some_and(|f| {
                f.task.is_finished()
                    || scan.fetches.len() >= FETCHES_IN_FLIGHT
                    || (both_done && scan.pending.is_empty())
            });
            if take_fetch {
                let room = max.max(1).saturating_sub(out.changes.len());
                let needs = scan.fetches.front().map_or(0, |f| f.pending.len());
                if needs > room && !out.is_empty() {
                    break;
                }
                let Some(fetch) = scan.fetches.pop_front() else {
                    continue;
                };
                let waited = Instant::now();
                let rows = fetch.task.await;
                run.waits.fetch += waited.elapsed();
                let rows =
                    rows.map_err(|e| StageError::transient(format!("a read by key failed: {e}")))??;
                let found =
                    self.settle_fetch(stream_index, fetch.pending, rows, &mut out, now_us)?;
                if let Some(scan) = self.run.as_mut().and_then(|r| r.scan.as_mut()) {
                    scan.counts.add(found);
                }
                continue;
            }
            if scan.pending.len() >= fetch_rows || (both_done && !scan.pending.is_empty()) {
                let take = scan.pending.len().min(fetch_rows);
                let pending: Vec<Pending> = scan.pending.drain(..take).collect();
                let fetch = self.spawn_fetch(stream_index, pending);
                if let Some(scan) = self.run.as_mut().and_then(|r| r.scan.as_mut()) {
                    scan.fetches.push_back(fetch);
                }
                continue;
            }
            // The common case, rows the database hashes as stored: skipped in a tight loop.
            while let (Some(q), Some(st)) = (scan.query_rows.front(), scan.stored_rows.front()) {
                if q.raw.is_none() || q.raw != st.raw || q.ord != st.ord {
                    break;
                }
                scan.query_rows.pop_front();
                scan.stored_rows.pop_front();
                scan.compared += 1;
            }
            if (scan.query_rows.is_empty() && !scan.query_done)
                || (scan.stored_rows.is_empty() && !scan.stored_done)
            {
                // A side ran dry in the loop above: read its next page first.
                continue;
            }
            let order = match (scan.query_rows.front(), scan.stored_rows.front()) {
                (None, None) => {
                    let c = scan.counts;
                    let (chunks, reread) = scan.chunks.unwrap_or((0, 0));
                    tracing::info!(
                        source = %self.target,
                        stream = %mapping.stream,
                        rows = c.read,
                        inserts = c.inserts,
                        updates = c.updates,
                        deletes = c.deletes,
                        chunks,
                        reread,
                        sampled = scan.sampled,
                        ms = scan.started.elapsed().as_millis() as u64,
                        "compared stream"
                    );
                    run.totals.add(c);
                    run.totals.read += c.read;
                    run.scan = None;
                    run.stream += 1;
                    continue;
                }
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(q), Some(s)) => q.ord.cmp(&s.ord),
            };
            // The clock is read once per 4,096 rows compared, not per row.
            scan.compared += 1;
            if scan.compared.is_multiple_of(4_096) && scan.last_progress.elapsed() >= PROGRESS_EVERY
            {
                scan.last_progress = Instant::now();
                tracing::info!(
                    source = %self.target,
                    stream = %mapping.stream,
                    rows = scan.counts.read,
                    changes = scan.counts.inserts + scan.counts.updates + scan.counts.deletes,
                    "comparing"
                );
            }
            match order {
                std::cmp::Ordering::Less => {
                    let Some(row) = scan.query_rows.pop_front() else {
                        continue;
                    };
                    match row.model {
                        Some((key, values, hash)) => {
                            scan.counts.inserts += 1;
                            out.fingerprints.push(Fingerprint {
                                ord: row.ord,
                                hash: Some(hash),
                                raw: row.raw,
                            });
                            out.changes
                                .push(upsert(&mapping, Op::Insert, key, values, now_us));
                        }
                        None => scan.pending.push(Pending {
                            ord: row.ord,
                            key_columns: row.key_columns,
                            stored: None,
                        }),
                    }
                }
                std::cmp::Ordering::Equal => {
                    let (Some(row), Some(stored)) =
                        (scan.query_rows.pop_front(), scan.stored_rows.pop_front())
                    else {
                        continue;
                    };
                    if row.raw.is_some() && row.raw == stored.raw {
                        continue;
                    }
                    match row.model {
                        Some((key, values, hash)) if hash != stored.hash => {
                            scan.counts.updates += 1;
                            out.fingerprints.push(Fingerprint {
                                ord: row.ord,
                                hash: Some(hash),
                                raw: row.raw,
                            });
                            out.changes
                                .push(upsert(&mapping, Op::Update, key, values, now_us));
                        }
                        Some(_) => {
                            if let Some(raw) = row.raw {
                                out.refreshed.push(RawRefresh {
                                    stream: mapping.stream.clone(),
                                    ord: row.ord,
                                    raw,
                                });
                            }
                        }
                        None => scan.pending.push(Pending {
                            ord: row.ord,
                            key_columns: row.key_columns,
                            stored: Some(stored.hash),
                        }),
                    }
                }
                std::cmp::Ordering::Greater => {
                    let Some(stored) = scan.stored_rows.pop_front() else {
                        continue;
                    };
                    scan.counts.deletes += 1;
                    let key = self.stored_key(&mapping.stream, &stored.ord).await?;
                    out.fingerprints.push(Fingerprint {
                        ord: stored.ord,
                        hash: None,
                        raw: None,
                    });
                    out.changes.push(delete(&mapping, key, now_us));
                }
            }
        }
        if out.is_empty() {
            return Ok(None);
        }
        Ok(Some(out.captured(self.last_position())))
    }
}

/// What one poll found.
#[derive(Debug, Default)]
struct Found {
    changes: Vec<Change>,
    fingerprints: Vec<Fingerprint>,
    refreshed: Vec<RawRefresh>,
}

impl Found {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.refreshed.is_empty()
    }

    fn captured(self, position: Position) -> Captured {
        Captured {
            kind: BatchKind::Incremental,
            changes: self.changes,
            position,
            progress: None,
            fingerprints: self.fingerprints,
            refreshed: self.refreshed,
        }
    }
}

/// The chunks of [`SAMPLE_CHUNKS`] a stream of `n` chunks (at least `4 * SAMPLE_CHUNKS`)
/// samples: one in each of as many equal strides of the chunks between the first and the
/// last (each of those has a bound missing), at an offset within its stride that varies
/// from stride to stride. Offsets at one place in every stride would alias with a periodic
/// change: with every 100th row changed and chunks of 10 rows, every tenth chunk differs,
/// and a fixed offset finds all or none of them. The offsets are fixed (a hash of the
/// stride's number), so a run's plan does not depend on chance.
fn sample_picks(n: usize) -> Vec<usize> {
    let step = (n - 2) / SAMPLE_CHUNKS;
    (0..SAMPLE_CHUNKS)
        .map(|k| {
            // splitmix64 of the stride's number.
            let mut z = (k as u64)
                .wrapping_add(1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            1 + k * step + (z % step as u64) as usize
        })
        .collect()
}

/// Whether a stored chunk's sums disagree with the database's `(rows, sum)` of its range
/// (or are not known: rows without a database hash).
fn differs(stored: &tidesync_store::StoredChunk, (rows, sum): (i64, i64)) -> bool {
    stored.unknown > 0 || rows != stored.rows as i64 || sum != stored.sum
}

fn delete(mapping: &Mapping, key: Key, now_us: i64) -> Change {
    Change {
        stream: mapping.stream.clone(),
        op: Op::Delete,
        key,
        before: None,
        after: None,
        commit_time_us: now_us,
        position: None,
        txn: None,
        unchanged: Vec::new(),
    }
}

fn upsert(mapping: &Mapping, op: Op, key: Key, values: Vec<Value>, now_us: i64) -> Change {
    Change {
        stream: mapping.stream.clone(),
        op,
        key,
        before: None,
        after: Some(Row(mapping.names.iter().cloned().zip(values).collect())),
        commit_time_us: now_us,
        position: None,
        txn: None,
        unchanged: Vec::new(),
    }
}

/// A page of mapped rows, with the greatest change-column value among them (`incremental`).
type MappedPage = (Vec<QueryRow>, Option<MarkValue>);

/// How a full comparison of a stream reads it, after comparing its chunk sums.
#[derive(Debug)]
enum ChunkPlan {
    /// Every row (`chunks`: how many chunks it has, when their sums were compared; `sampled`:
    /// a sample of them decided, see [`SAMPLE_CHUNKS`]).
    Whole {
        chunks: Option<usize>,
        sampled: bool,
    },
    /// Every chunk's sums agree: nothing to read.
    Equal { rows: u64, chunks: usize },
    /// Only the chunks in `filter` (the key `ranges` of the store's rows); `skipped_rows` are
    /// in the others.
    Some {
        filter: ChunkFilter,
        ranges: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        skipped_rows: u64,
        chunks: usize,
    },
}

impl ChunkPlan {
    /// Every row, not by a sample's decision (`chunks`: how many, when their sums were
    /// compared).
    fn whole(chunks: Option<usize>) -> ChunkPlan {
        ChunkPlan::Whole {
            chunks,
            sampled: false,
        }
    }
}

/// What a stream's scan reads.
#[derive(Debug, Clone)]
enum ScanKind {
    /// Every row, in key order; with `values` every value even where the database hashes.
    Full { values: bool },
    /// `incremental`: the rows whose change column is at or after `since` (all: `None`).
    Changed { since: Option<Value> },
}

/// What a read task hands on: rows with all their values, or as the database hashed them.
#[derive(Debug)]
enum RawPage {
    Rows(Page),
    Hashed(Vec<HashedRow>),
}

/// Runs `read` with a sender of its pages and hands each page on to `out` as `wrap` makes it
/// a [`RawPage`]; stops handing on (and the read then ends early) when `out` is closed.
async fn forward_pages<T, F>(
    out: &mpsc::Sender<RawPage>,
    wrap: fn(T) -> RawPage,
    read: impl FnOnce(mpsc::Sender<T>) -> F,
) -> Result<(), StageError>
where
    F: std::future::Future<Output = Result<(), StageError>>,
{
    let (tx, mut rx) = mpsc::channel(1);
    let forward = async {
        while let Some(page) = rx.recv().await {
            if out.send(wrap(page)).await.is_err() {
                return;
            }
        }
    };
    let (read, ()) = tokio::join!(read(tx), forward);
    read
}

/// The model row of a query row's values: its key's order form, the key, the values and
/// their hash.
fn model_row(
    at: &dyn Fn() -> String,
    mapping: &Mapping,
    mut raw: Vec<Value>,
    buf: &mut Vec<u8>,
) -> Result<(Vec<u8>, Key, Vec<Value>, i64), StageError> {
    let values = mapping
        .apply(&mut raw)
        .map_err(|e| definite(format!("{}: {e}", at())))?;
    let key_values: Vec<&Value> = mapping.key_at.iter().map(|&i| &values[i]).collect();
    let mut ord_bytes = Vec::with_capacity(16);
    ord::encode(&mut ord_bytes, &mapping.key_names, &key_values)
        .map_err(|e| definite(format!("{}: {e}", at())))?;
    let key = Key(key_values.into_iter().cloned().collect());
    buf.clear();
    encode_row_parts(buf, &mapping.names, &values);
    let hash = row_hash(buf);
    Ok((ord_bytes, key, values, hash))
}

/// The model key of a row's key-column values (in key order): each key field's cast applied.
fn model_key(
    at: &dyn Fn() -> String,
    mapping: &Mapping,
    key_columns: &[Value],
) -> Result<(Vec<u8>, Key), StageError> {
    let mut key = Vec::with_capacity(key_columns.len());
    for (&i, value) in mapping.key_at.iter().zip(key_columns) {
        key.push(match &mapping.fields[i] {
            Resolved::Column {
                cast: Some(cast), ..
            } => cast
                .apply(value.clone())
                .map_err(|e| definite(format!("{}: field {}: {e}", at(), mapping.names[i])))?,
            _ => value.clone(),
        });
    }
    let refs: Vec<&Value> = key.iter().collect();
    let mut ord_bytes = Vec::with_capacity(16);
    ord::encode(&mut ord_bytes, &mapping.key_names, &refs)
        .map_err(|e| definite(format!("{}: {e}", at())))?;
    Ok((ord_bytes, Key(key)))
}

/// Maps a page of query rows for the comparison, checking that keys arrive strictly
/// increasing.
fn map_page(
    target: &str,
    mapping: &Mapping,
    page: RawPage,
    changed: Option<usize>,
    last: Option<&mut Option<Vec<u8>>>,
    buf: &mut Vec<u8>,
) -> Result<MappedPage, StageError> {
    let at = || format!("source {target}: stream {}", mapping.stream);
    let mut out = Vec::new();
    let mut mark: Option<MarkValue> = None;
    let mut see = |row: &[Value]| -> Result<(), StageError> {
        let Some(c) = changed else {
            return Ok(());
        };
        match &row[c] {
            Value::Null => Ok(()),
            v => {
                let m = MarkValue::of(v).ok_or_else(|| {
                    definite(format!(
                        "{}: the change column holds a {} value; it must be a timestamp, date, \
                         integer or text",
                        at(),
                        v.type_name()
                    ))
                })?;
                if mark.as_ref().is_none_or(|old| m > *old) {
                    mark = Some(m);
                }
                Ok(())
            }
        }
    };
    match page {
        RawPage::Rows(rows) => {
            out.reserve(rows.len());
            for raw in rows {
                see(&raw)?;
                let (ord, key, values, hash) = model_row(&at, mapping, raw, buf)?;
                out.push(QueryRow {
                    ord,
                    key_columns: Vec::new(),
                    raw: None,
                    model: Some((key, values, hash)),
                });
            }
        }
        RawPage::Hashed(rows) => {
            let key_cast = mapping
                .key_at
                .iter()
                .any(|&i| matches!(mapping.fields[i], Resolved::Column { cast: Some(_), .. }));
            out.reserve(rows.len());
            for row in rows {
                out.push(match row.values {
                    Some(values) => {
                        see(&values)?;
                        let (ord, key, values, hash) = model_row(&at, mapping, values, buf)?;
                        QueryRow {
                            ord,
                            key_columns: row.key,
                            raw: Some(row.hash),
                            model: Some((key, values, hash)),
                        }
                    }
                    None => {
                        let ord = if key_cast {
                            model_key(&at, mapping, &row.key)?.0
                        } else {
                            // The key columns are the key: no copy of their values (nor a
                            // vector of references for a key of one column).
                            let mut ord_bytes = Vec::with_capacity(16);
                            let encoded = match row.key.as_slice() {
                                [one] => ord::encode(&mut ord_bytes, &mapping.key_names, &[one]),
                                many => {
                                    let refs: Vec<&Value> = many.iter().collect();
                                    ord::encode(&mut ord_bytes, &mapping.key_names, &refs)
                                }
                            };
                            encoded.map_err(|e| definite(format!("{}: {e}", at())))?;
                            ord_bytes
                        };
                        QueryRow {
                            ord,
                            key_columns: row.key,
                            raw: Some(row.hash),
                            model: None,
                        }
                    }
                });
            }
        }
    }
    let Some(last) = last else {
        return Ok((out, mark));
    };
    // Each row after the one before it: the last page's last row, then this page's rows.
    let mut prev = last.as_deref();
    for row in &out {
        if let Some(prev) = prev
            && *prev >= *row.ord
        {
            let key = match &row.model {
                Some((key, ..)) => key.clone(),
                None => model_key(&at, mapping, &row.key_columns)?.1,
            };
            let problem = if *prev == row.ord {
                format!(
                    "key {key} appears more than once in the query's result; the key fields \
                     must identify one row"
                )
            } else {
                format!(
                    "the query's rows do not come in key order (key {key} after a greater \
                     one): the database orders the key columns differently from their values \
                     (e.g. a cast in the mapping); cast the key in the query instead"
                )
            };
            return Err(definite(format!("{}: {problem}", at())));
        }
        prev = Some(&row.ord);
    }
    if let Some(row) = out.last() {
        *last = Some(row.ord.clone());
    }
    Ok((out, mark))
}

impl Source for DiffSource {
    fn open(&mut self, from: Option<Position>) -> BoxFuture<'_, Result<Opened, StageError>> {
        Box::pin(async move {
            self.run = None;
            self.last_run_us = match from {
                None => 0,
                Some(Position::DiffRun {
                    started_us,
                    full_us,
                    marks,
                }) => {
                    self.last_full_us = full_us;
                    self.marks = marks.into_iter().map(|m| (m.stream, m.value)).collect();
                    started_us
                }
                Some(other) => {
                    return Err(definite(format!(
                        "source {}: the stored position ({other}) is not a diff source's; the \
                         pipeline's source changed mode: run `tidesync drop` for the pipeline \
                         and start it again",
                        self.target
                    )));
                }
            };
            let mut prepared = Vec::with_capacity(self.opts.streams.len());
            let mut schemas = Vec::with_capacity(self.opts.streams.len());
            for spec in self.opts.streams.clone() {
                let (p, schema) = self.prepare(&spec).await?;
                prepared.push(p);
                schemas.push(schema);
            }
            self.prepared = prepared;
            self.record_mappings().await?;
            Ok(Opened {
                schemas,
                start: Some(self.last_position()),
            })
        })
    }

    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Captured>, StageError>> {
        Box::pin(async move {
            if self.run.is_none() && !self.rebalance.is_empty() {
                // Between runs: the last run's batches are in the store by now.
                self.rebalance_chunks().await?;
            }
            if self.run.is_none() {
                let now = tidesync_core::time::now_us();
                let interval_us = self.opts.interval.as_micros() as i64;
                let due = if self.last_run_us == 0 || self.rerun {
                    now
                } else {
                    self.last_run_us.saturating_add(interval_us)
                };
                if now < due {
                    let left = Duration::from_micros((due - now).unsigned_abs());
                    tokio::time::sleep(left.min(wait)).await;
                    return Ok(None);
                }
                tracing::debug!(source = %self.target, pipeline = %self.opts.pipeline, "diff run starting");
                self.rerun = false;
                let full = match self.opts.incremental {
                    None => true,
                    Some(inc) => {
                        self.last_full_us == 0
                            || now.saturating_sub(self.last_full_us)
                                >= inc.full_every.as_micros() as i64
                    }
                };
                self.run = Some(Run {
                    started_us: now,
                    stream: 0,
                    scan: None,
                    totals: Counts::default(),
                    started: Instant::now(),
                    full,
                    marks: self.marks.clone(),
                    waits: Waits::default(),
                });
            }
            if let Some(waits) = self.run.as_mut().map(|r| &mut r.waits)
                && let Some(at) = waits.handed_over.take()
            {
                waits.outside += at.elapsed();
            }
            let stepped = self.step(max).await;
            if let Some(run) = self.run.as_mut() {
                run.waits.handed_over = Some(Instant::now());
            }
            if stepped.is_err() {
                // Compared again from the start of the run: what was logged compares equal.
                self.run = None;
                self.rerun = true;
            }
            stepped
        })
    }

    fn ack(&mut self, position: Position) -> BoxFuture<'_, Result<(), StageError>> {
        // Nothing upstream to release: the fingerprints are in the store. The ack of a run's
        // last batch says the whole run is committed.
        if let Some((at, started)) = self.committing.acked(&position) {
            tracing::info!(
                source = %self.target,
                pipeline = %self.opts.pipeline,
                ms = started.elapsed().as_millis() as u64,
                position = %at,
                "diff run committed"
            );
        }
        Box::pin(async { Ok(()) })
    }

    fn remove(&mut self) -> BoxFuture<'_, Result<Vec<String>, StageError>> {
        // A diff source installs nothing in the database; its fingerprints are the store's
        // and go with the pipeline's other state.
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Checks that a query's columns have distinct names (for the readers).
pub(crate) fn reader_check_names(
    target: &str,
    query: &str,
    columns: &[QueryColumn],
) -> Result<(), StageError> {
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].iter().any(|o| o.name == c.name) {
            return Err(definite(format!(
                "source {target}: query `{}` returns two columns named {}; give them distinct \
                 names (AS)",
                reader::short_query(query),
                c.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mapping() -> Mapping {
        Mapping {
            stream: "items".into(),
            names: vec!["id".into()],
            fields: vec![Resolved::Column { at: 0, cast: None }],
            key_at: vec![0],
            key_names: vec!["id".into()],
        }
    }

    fn page(ids: &[i64]) -> RawPage {
        RawPage::Hashed(
            ids.iter()
                .map(|&id| HashedRow {
                    key: vec![Value::Int(id)],
                    values: None,
                    hash: id,
                })
                .collect(),
        )
    }

    #[test]
    fn sampled_chunks_are_spread_and_do_not_alias_with_periodic_changes() {
        for n in [
            4 * SAMPLE_CHUNKS,
            4 * SAMPLE_CHUNKS + 1,
            1_000,
            10_000,
            99_999,
            100_000,
        ] {
            let picked = sample_picks(n);
            assert_eq!(picked.len(), SAMPLE_CHUNKS);
            assert!(picked.windows(2).all(|w| w[0] < w[1]), "{n}: {picked:?}");
            assert!(picked[0] >= 1 && picked[SAMPLE_CHUNKS - 1] <= n - 2, "{n}");
            // Whatever the period of a change (every p-th chunk differing, from any first
            // one), some sampled chunk shows it. Offsets fixed within their strides failed
            // this: with 100,000 chunks, none of the sample was a chunk numbered 9 mod 10.
            for p in 2..=10 {
                for r in 0..p {
                    assert!(
                        picked.iter().any(|c| c % p == r),
                        "{n}: none is {r} mod {p}"
                    );
                }
            }
        }
    }

    /// A run that ends before the one before it is committed waits behind it: each is
    /// reported once, at the ack of its own last batch, whatever acks come between.
    #[test]
    fn runs_are_committed_in_order_each_at_its_own_ack() {
        let run = |us: i64| Position::DiffRun {
            started_us: us,
            full_us: us,
            marks: Vec::new(),
        };
        let t = Instant::now();
        let mut c = Committing::default();
        assert_eq!(c.acked(&run(0)), None);
        c.completed(run(1), t);
        c.completed(run(2), t);
        // A batch of an earlier run, then run 1's last batch, then run 2's batches before
        // its last one (they carry run 1's position), then run 2's last.
        assert_eq!(c.acked(&run(0)), None);
        assert_eq!(c.acked(&run(1)), Some((run(1), t)));
        assert_eq!(c.acked(&run(1)), None);
        assert_eq!(c.acked(&run(2)), Some((run(2), t)));
        assert_eq!(c.acked(&run(2)), None);
        // An ack that skips a run's last batch: the later run is still reported, the
        // skipped one dropped.
        c.completed(run(3), t);
        c.completed(run(4), t);
        assert_eq!(c.acked(&run(4)), Some((run(4), t)));
        assert_eq!(c.acked(&run(3)), None);
        assert!(c.0.is_empty());
        for us in 0..40 {
            c.completed(run(us), t);
        }
        assert_eq!(c.0.len(), Committing::KEPT);
        assert_eq!(
            c.acked(&run(40 - Committing::KEPT as i64)).map(|r| r.0),
            Some(run(24))
        );
    }

    /// Keys must rise strictly within a page and from one page's last row to the next page's
    /// first; the last key seen carries over.
    #[test]
    fn mapped_pages_check_the_key_order_within_and_across_pages() {
        let m = mapping();
        let map = |ids: &[i64], last: &mut Option<Vec<u8>>| {
            map_page("pg", &m, page(ids), None, Some(last), &mut Vec::new())
                .map(|(rows, _)| rows.len())
                .map_err(|e| e.to_string())
        };
        let mut last = None;
        assert_eq!(map(&[1, 2, 5], &mut last), Ok(3));
        assert_eq!(map(&[], &mut last), Ok(0));
        assert_eq!(map(&[6, 9], &mut last), Ok(2));
        let err = map(&[9, 10], &mut last.clone()).unwrap_err();
        assert!(err.contains("key (9) appears more than once"), "{err}");
        let err = map(&[7], &mut last.clone()).unwrap_err();
        assert!(err.contains("do not come in key order (key (7)"), "{err}");
        let err = map(&[10, 12, 11], &mut last.clone()).unwrap_err();
        assert!(err.contains("key (11) after a greater one"), "{err}");
        let err = map(&[10, 10], &mut last).unwrap_err();
        assert!(err.contains("key (10) appears more than once"), "{err}");
        // Without a key order to keep (rows changed since a watermark), nothing is checked.
        assert_eq!(
            map_page("pg", &m, page(&[3, 1]), None, None, &mut Vec::new())
                .unwrap()
                .0
                .len(),
            2
        );
    }
}
