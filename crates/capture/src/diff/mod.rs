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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidesync_core::codec::binary::{encode_row_parts, row_hash};
use tidesync_core::{
    BatchKind, BoxFuture, Captured, Change, ColumnSchema, Dialect, Fingerprint, Key, Op, Opened,
    Position, Row, Source, StageError, TableSchema, Value,
};
use tidesync_store::{SqliteStore, StoredFingerprint};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use self::map::{Cast, FieldFrom, FieldSpec, Mapping, Resolved};
use self::reader::{Page, QueryColumn, QueryReader};

/// How often a long run logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// A poll that has changes hands them over after this long even if it has fewer than asked,
/// so that the log moves while a long comparison runs.
const HAND_OVER_AFTER: Duration = Duration::from_millis(500);

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
}

/// A query row as the model has it, with its order-preserving key and hash.
#[derive(Debug)]
struct ModelRow {
    ord: Vec<u8>,
    key: Key,
    values: Vec<Value>,
    hash: i64,
}

/// A stream ready to run: its query, columns, mapping and sort columns.
#[derive(Debug)]
struct Prepared {
    query: String,
    columns: Vec<QueryColumn>,
    order: Vec<usize>,
    mapping: Arc<Mapping>,
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
    rows: mpsc::Receiver<Result<Vec<ModelRow>, StageError>>,
    stored: mpsc::Receiver<Result<Vec<StoredFingerprint>, StageError>>,
    tasks: Vec<JoinHandle<()>>,
    query_rows: VecDeque<ModelRow>,
    query_done: bool,
    stored_rows: VecDeque<StoredFingerprint>,
    stored_done: bool,
    counts: Counts,
    started: Instant,
    last_progress: Instant,
}

impl Drop for Scan {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
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
}

/// The `diff` source; see the module docs.
pub struct DiffSource {
    opts: DiffOptions,
    reader: Arc<Mutex<Box<dyn QueryReader>>>,
    store: SqliteStore,
    dialect: Dialect,
    target: String,
    prepared: Vec<Prepared>,
    last_run_us: i64,
    run: Option<Run>,
    /// A run failed part-way: the next poll runs again at once instead of at the next
    /// interval.
    rerun: bool,
}

impl std::fmt::Debug for DiffSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffSource")
            .field("target", &self.target)
            .field("pipeline", &self.opts.pipeline)
            .finish_non_exhaustive()
    }
}

fn definite(message: String) -> StageError {
    StageError::definite(message)
}

impl DiffSource {
    /// A source reading through `reader`, comparing with the fingerprints `store` keeps for
    /// the pipeline.
    pub fn new(opts: DiffOptions, reader: Box<dyn QueryReader>, store: SqliteStore) -> Self {
        let dialect = reader.dialect();
        let target = reader.describe_db();
        DiffSource {
            opts,
            reader: Arc::new(Mutex::new(reader)),
            store,
            dialect,
            target,
            prepared: Vec::new(),
            last_run_us: 0,
            run: None,
            rerun: false,
        }
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
        let schema = TableSchema {
            name: spec.name.clone(),
            columns: schema_columns,
            key,
            dialect: self.dialect,
        };
        let mapping = Arc::new(Mapping {
            stream: spec.name.clone(),
            names,
            fields,
            key_at,
        });
        Ok((
            Prepared {
                query,
                columns,
                order,
                mapping,
            },
            schema,
        ))
    }

    /// Starts comparing stream `i`: the query's rows and the stored fingerprints are read by
    /// tasks of their own, a few pages ahead.
    fn start_scan(&self, i: usize) -> Scan {
        let prepared = &self.prepared[i];
        let page_rows = self.opts.chunk_rows.max(1);
        let (raw_tx, mut raw_rx) = mpsc::channel::<Page>(2);
        let (rows_tx, rows_rx) = mpsc::channel(2);
        let reader = self.reader.clone();
        let (query, columns, order) = (
            prepared.query.clone(),
            prepared.columns.clone(),
            prepared.order.clone(),
        );
        let read_errors = rows_tx.clone();
        let read = tokio::spawn(async move {
            let mut reader = reader.lock().await;
            if let Err(e) = reader
                .read(&query, &columns, &order, page_rows, raw_tx)
                .await
            {
                let _closed = read_errors.send(Err(e)).await;
            }
        });
        let mapping = prepared.mapping.clone();
        let target = self.target.clone();
        let map = tokio::spawn(async move {
            let mut last: Option<Vec<u8>> = None;
            let mut buf = Vec::with_capacity(256);
            while let Some(page) = raw_rx.recv().await {
                let mapped = map_page(&target, &mapping, page, &mut last, &mut buf);
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
            let mut after: Option<Vec<u8>> = None;
            loop {
                let (store, pipeline, stream, from) = (
                    store.clone(),
                    pipeline.clone(),
                    stream.clone(),
                    after.clone(),
                );
                let page = tokio::task::spawn_blocking(move || {
                    store.fingerprints(&pipeline, &stream, from.as_deref(), page_rows)
                })
                .await
                .map_err(|e| StageError::transient(format!("fingerprint reader failed: {e}")))
                .and_then(|r| r.map_err(StageError::from));
                let last_page = match &page {
                    Ok(rows) => {
                        after = rows.last().map(|r| r.ord.clone());
                        rows.len() < page_rows
                    }
                    Err(_) => true,
                };
                if stored_tx.send(page).await.is_err() || last_page {
                    return;
                }
            }
        });
        Scan {
            rows: rows_rx,
            stored: stored_rx,
            tasks: vec![read, map, stored],
            query_rows: VecDeque::new(),
            query_done: false,
            stored_rows: VecDeque::new(),
            stored_done: false,
            counts: Counts::default(),
            started: Instant::now(),
            last_progress: Instant::now(),
        }
    }

    /// Compares until `max` changes are found or the run ends; see [`Source::poll`].
    async fn step(&mut self, max: usize) -> Result<Option<Captured>, StageError> {
        let poll_started = Instant::now();
        let mut changes = Vec::new();
        let mut fingerprints = Vec::new();
        let now_us = tidesync_core::time::now_us();
        loop {
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
                tracing::info!(
                    source = %self.target,
                    pipeline = %self.opts.pipeline,
                    rows = run.totals.read,
                    inserts = run.totals.inserts,
                    updates = run.totals.updates,
                    deletes = run.totals.deletes,
                    ms = run.started.elapsed().as_millis() as u64,
                    "diff run complete"
                );
                return Ok(Some(Captured {
                    kind: BatchKind::Incremental,
                    changes,
                    position: Position::DiffRun {
                        started_us: run.started_us,
                    },
                    progress: None,
                    fingerprints,
                }));
            }
            if changes.len() >= max.max(1)
                || (!changes.is_empty() && poll_started.elapsed() >= HAND_OVER_AFTER)
            {
                break;
            }
            let stream_index = run.stream;
            if run.scan.is_none() {
                let scan = self.start_scan(stream_index);
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
                match scan.rows.recv().await {
                    Some(Ok(rows)) => {
                        scan.counts.read += rows.len() as u64;
                        scan.query_rows.extend(rows);
                    }
                    Some(Err(e)) => {
                        self.run = None;
                        return Err(e);
                    }
                    None => scan.query_done = true,
                }
                continue;
            }
            if scan.stored_rows.is_empty() && !scan.stored_done {
                match scan.stored.recv().await {
                    Some(Ok(rows)) => scan.stored_rows.extend(rows),
                    Some(Err(e)) => {
                        self.run = None;
                        return Err(e);
                    }
                    None => scan.stored_done = true,
                }
                continue;
            }
            let order = match (scan.query_rows.front(), scan.stored_rows.front()) {
                (None, None) => {
                    let c = scan.counts;
                    tracing::info!(
                        source = %self.target,
                        stream = %mapping.stream,
                        rows = c.read,
                        inserts = c.inserts,
                        updates = c.updates,
                        deletes = c.deletes,
                        ms = scan.started.elapsed().as_millis() as u64,
                        "compared stream"
                    );
                    run.totals.read += c.read;
                    run.totals.inserts += c.inserts;
                    run.totals.updates += c.updates;
                    run.totals.deletes += c.deletes;
                    run.scan = None;
                    run.stream += 1;
                    continue;
                }
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(q), Some(s)) => q.ord.cmp(&s.ord),
            };
            if scan.last_progress.elapsed() >= PROGRESS_EVERY {
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
                    scan.counts.inserts += 1;
                    fingerprints.push(Fingerprint {
                        ord: row.ord,
                        hash: Some(row.hash),
                    });
                    changes.push(upsert(&mapping, Op::Insert, row.key, row.values, now_us));
                }
                std::cmp::Ordering::Equal => {
                    let (Some(row), Some(stored)) =
                        (scan.query_rows.pop_front(), scan.stored_rows.pop_front())
                    else {
                        continue;
                    };
                    if row.hash != stored.hash {
                        scan.counts.updates += 1;
                        fingerprints.push(Fingerprint {
                            ord: row.ord,
                            hash: Some(row.hash),
                        });
                        changes.push(upsert(&mapping, Op::Update, row.key, row.values, now_us));
                    }
                }
                std::cmp::Ordering::Greater => {
                    let Some(stored) = scan.stored_rows.pop_front() else {
                        continue;
                    };
                    scan.counts.deletes += 1;
                    fingerprints.push(Fingerprint {
                        ord: stored.ord,
                        hash: None,
                    });
                    changes.push(Change {
                        stream: mapping.stream.clone(),
                        op: Op::Delete,
                        key: stored.key,
                        before: None,
                        after: None,
                        commit_time_us: now_us,
                        position: None,
                        txn: None,
                        unchanged: Vec::new(),
                    });
                }
            }
        }
        if changes.is_empty() {
            return Ok(None);
        }
        Ok(Some(Captured {
            kind: BatchKind::Incremental,
            changes,
            position: Position::DiffRun {
                started_us: self.last_run_us,
            },
            progress: None,
            fingerprints,
        }))
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

/// Maps a page of query rows to model rows, checking that keys arrive strictly increasing.
fn map_page(
    target: &str,
    mapping: &Mapping,
    page: Page,
    last: &mut Option<Vec<u8>>,
    buf: &mut Vec<u8>,
) -> Result<Vec<ModelRow>, StageError> {
    let at = || format!("source {target}: stream {}", mapping.stream);
    let key_names: Vec<String> = mapping
        .key_at
        .iter()
        .map(|&i| mapping.names[i].clone())
        .collect();
    let mut out = Vec::with_capacity(page.len());
    for mut raw in page {
        let values = mapping
            .apply(&mut raw)
            .map_err(|e| definite(format!("{}: {e}", at())))?;
        let key_values: Vec<&Value> = mapping.key_at.iter().map(|&i| &values[i]).collect();
        let mut ord_bytes = Vec::with_capacity(16);
        ord::encode(&mut ord_bytes, &key_names, &key_values)
            .map_err(|e| definite(format!("{}: {e}", at())))?;
        let key = Key(key_values.into_iter().cloned().collect());
        if let Some(prev) = last.as_ref()
            && *prev >= ord_bytes
        {
            let problem = if *prev == ord_bytes {
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
        buf.clear();
        encode_row_parts(buf, &mapping.names, &values);
        let hash = row_hash(buf);
        *last = Some(ord_bytes.clone());
        out.push(ModelRow {
            ord: ord_bytes,
            key,
            values,
            hash,
        });
    }
    Ok(out)
}

impl Source for DiffSource {
    fn open(&mut self, from: Option<Position>) -> BoxFuture<'_, Result<Opened, StageError>> {
        Box::pin(async move {
            self.run = None;
            self.last_run_us = match from {
                None => 0,
                Some(Position::DiffRun { started_us }) => started_us,
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
            Ok(Opened {
                schemas,
                start: Some(Position::DiffRun {
                    started_us: self.last_run_us,
                }),
            })
        })
    }

    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Captured>, StageError>> {
        Box::pin(async move {
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
                self.run = Some(Run {
                    started_us: now,
                    stream: 0,
                    scan: None,
                    totals: Counts::default(),
                    started: Instant::now(),
                });
            }
            let stepped = self.step(max).await;
            if stepped.is_err() {
                // Compared again from the start of the run: what was logged compares equal.
                self.run = None;
                self.rerun = true;
            }
            stepped
        })
    }

    fn ack(&mut self, _position: Position) -> BoxFuture<'_, Result<(), StageError>> {
        // Nothing upstream to release: the fingerprints are in the store.
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
