//! `tidesync verify`: compares every captured table of a pipeline's source with the same table
//! in each of its sinks, and names the keys that are missing, extra or different.
//!
//! How (details in the submodules):
//! - **Canonical values** ([`canon`]): each cell of either side is turned into the
//!   [`tidesync_core::Value`] the pipeline would have produced in the target column, so a
//!   PostgreSQL `numeric` `12.5` and the SQLite REAL it came from compare equal, and a `1` in a
//!   SQLite TEXT column does not equal an integer `1`.
//! - **Chunks** ([`chunk`], [`table`]): both sides are read in key order, `chunk_rows` rows at
//!   a time and concurrently; each chunk's canonical rows are hashed per side and only chunks
//!   whose hashes differ are merged row by row. Memory holds one page per side (plus a few
//!   chunks' worth of keys awaiting a re-check), whatever the table size.
//! - **In the database** ([`postgres`]): when both sides are PostgreSQL with the same column
//!   types, each chunk is hashed by the servers themselves (the sum of a hash of each row's
//!   column texts), so an equal table costs about one read of each side and no rows travel;
//!   only a differing chunk is fetched and merged.
//! - **Rows in flight** ([`settle`]): a pipeline may be streaming while verify runs. A key
//!   that differs is re-read: the source first, then, once the store shows that the source
//!   position read after it has been captured and the sink has applied everything up to the
//!   log head of that moment, the target. Keys still different are re-checked again while the
//!   source keeps changing (a few rounds), and reported. If the pipeline does not catch up
//!   within `settle`, the report says so instead of waiting forever.
//!
//! Table names: the target table of a captured table has the stream's name, exactly as the
//! sinks name it (one quoted identifier), and the same column names, unless the sink renames
//! them (`[sinks.NAME.tables."TABLE"]`, see [`crate::rename`]). A PostgreSQL source table is
//! `table` (schema `public`) or `schema.table`, as the source reads it.

mod canon;
mod chunk;
mod mysql;
mod postgres;
mod settle;
mod side;
mod sqlite;
mod table;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tidesync_core::{Key, Position};
use tidesync_store::StoreError;

use crate::config::{Config, DiffDb, SinkSpec, SourceSpec};

pub use chunk::DiffKind;

use self::settle::Settle;

/// Rows per chunk unless `--chunk-rows` says otherwise.
pub const DEFAULT_CHUNK_ROWS: usize = 10_000;
/// How long a re-check waits for the pipeline to catch up unless `--settle-secs` says otherwise.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(30);
/// Differing keys listed per table unless `--max-keys` says otherwise (the counts are exact).
pub const DEFAULT_MAX_KEYS: usize = 100;

/// Where a table lives: the kinds of database verify can read.
#[derive(Clone, PartialEq, Eq)]
pub enum Endpoint {
    Sqlite {
        path: PathBuf,
    },
    /// `postgres://user:password@host:port/db`.
    Postgres {
        url: String,
    },
    /// `mysql://user:password@host:port/db` (or `mariadb://`). As a target: tables named by
    /// the stream, one identifier. As a source ([`mysql_source_endpoint`]): `table` in the
    /// URL's database or `database.table`; its position is the end of the binary log.
    Mysql {
        url: String,
    },
}

impl Endpoint {
    /// The database for messages, without a password.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Sqlite { path } => path.display().to_string(),
            Endpoint::Postgres { url } => tidesync_core::pg::describe_url(url),
            Endpoint::Mysql { url } => tidesync_deliver::mysql::describe_url(url),
        }
    }
}

impl fmt::Debug for Endpoint {
    /// Never prints a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            Endpoint::Postgres { .. } => f
                .debug_struct("Postgres")
                .field("url", &self.describe())
                .finish(),
            Endpoint::Mysql { .. } => f
                .debug_struct("Mysql")
                .field("url", &self.describe())
                .finish(),
        }
    }
}

/// The database a source reads and the tables it captures (also the stream names).
pub fn source_endpoint(spec: &SourceSpec) -> (Endpoint, &[String]) {
    match spec {
        SourceSpec::SqliteTrigger { path, tables, .. } => {
            (Endpoint::Sqlite { path: path.clone() }, tables)
        }
        SourceSpec::PostgresLog { url, tables, .. } => {
            (Endpoint::Postgres { url: url.clone() }, tables)
        }
        SourceSpec::MysqlLog { url, tables, .. } => (mysql_source_endpoint(url), tables),
        SourceSpec::Diff { db, tables, .. } => (
            match db {
                DiffDb::Postgres { url } => Endpoint::Postgres { url: url.clone() },
                DiffDb::Mysql { url } => mysql_source_endpoint(url),
                DiffDb::Sqlite { path } => Endpoint::Sqlite { path: path.clone() },
            },
            tables,
        ),
    }
}

/// The endpoint of a MySQL/MariaDB source (the binlog source's `url`): its tables are read
/// as `table` in the URL's database or as `database.table`, each cell as the value the source
/// emits for its column type (see `verify/mysql.rs`), and the re-check of differing keys waits
/// until the store's [`Position::Binlog`] has reached the end of the binary log as
/// [`source_position`] reads it.
pub fn mysql_source_endpoint(url: &str) -> Endpoint {
    Endpoint::Mysql {
        url: url.to_owned(),
    }
}

/// Where `source` stands now, as `verify` reads it before re-checking a differing key: once
/// the store's position for `pipeline` compares at or past it
/// ([`Position::partial_cmp_same_source`]), every change committed before is captured. SQLite
/// (trigger source): [`Position::RowId`] of the change table; PostgreSQL:
/// [`Position::Lsn`] of `pg_current_wal_lsn()`; MySQL/MariaDB: [`Position::Binlog`] of `SHOW
/// MASTER STATUS`. `None` when capture is not set up there (no change table, no binary log).
pub async fn source_position(
    source: &Endpoint,
    pipeline: &str,
) -> Result<Option<Position>, VerifyError> {
    Settle::new(PathBuf::new(), pipeline, source.clone(), Duration::ZERO)
        .position()
        .await
}

/// The database a sink writes; an error for kinds verify cannot read yet.
pub fn sink_endpoint(spec: &SinkSpec) -> Result<Endpoint, String> {
    match spec {
        SinkSpec::Sqlite { path, .. } => Ok(Endpoint::Sqlite { path: path.clone() }),
        SinkSpec::Postgres { url, .. } => Ok(Endpoint::Postgres { url: url.clone() }),
        SinkSpec::Mysql { url, .. } => Ok(Endpoint::Mysql { url: url.clone() }),
        SinkSpec::Hub { url, .. } => Err(format!(
            "it is a hub ({url}): run `tidesync verify` on the hub, against its targets"
        )),
    }
}

/// What went wrong verifying, and where. Database names never include a password.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{db}: {context}: {source}")]
    Sqlite {
        db: String,
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{db}: {context}: {problem}")]
    Postgres {
        db: String,
        context: String,
        problem: String,
    },
    #[error("{db}: {context}: {problem}")]
    Mysql {
        db: String,
        context: String,
        problem: String,
    },
    #[error("{db}: {context}: no answer within {timeout_ms} ms")]
    Timeout {
        db: String,
        context: String,
        timeout_ms: u64,
    },
    #[error("{db}: table `{table}` does not exist")]
    NoTable { db: String, table: String },
    #[error(
        "{db}: table `{table}` has no primary key (nor a replica identity index or FULL) to match rows by"
    )]
    NoKey { db: String, table: String },
    #[error("{db}: table `{table}` lacks the source's column(s) {columns}")]
    MissingColumns {
        db: String,
        table: String,
        columns: String,
    },
    #[error("{db}: table `{table}`: {problem}")]
    BadRow {
        db: String,
        table: String,
        problem: String,
    },
    #[error(
        "{db}: table `{table}` returned key {key} after {previous}: its rows do not come in the order verify walks keys in \
         (numbers by value, text and bytes in byte order); the key column's type or collation orders differently here"
    )]
    KeyOrder {
        db: String,
        table: String,
        previous: String,
        key: String,
    },
    #[error("store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("no pipeline named {name} in {file} (defined: {defined})")]
    NoPipeline {
        name: String,
        file: PathBuf,
        defined: String,
    },
    #[error("{0}")]
    Task(String),
}

/// How `verify` runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only this pipeline (`None`: every pipeline of the configuration).
    pub pipeline: Option<String>,
    /// Rows per chunk and per page read from one side (at least 1).
    pub chunk_rows: usize,
    /// How long a re-check waits for the pipeline to catch up.
    pub settle: Duration,
    /// Differing keys listed per table (counts are always exact).
    pub max_keys: usize,
    /// Keep every differing key of a table (up to this many; 0: none) in
    /// [`TableReport::all_keys`], for `--repair`.
    pub collect_keys: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            pipeline: None,
            chunk_rows: DEFAULT_CHUNK_ROWS,
            settle: DEFAULT_SETTLE,
            max_keys: DEFAULT_MAX_KEYS,
            collect_keys: 0,
        }
    }
}

/// Where a table comparison stands, for progress output.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub pipeline: &'a str,
    pub table: &'a str,
    pub sink: &'a str,
    /// Source rows compared so far.
    pub source_rows: u64,
    pub elapsed: Duration,
}

/// How a table's chunks were hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Canonical rows read from both sides and hashed here.
    RowHash,
    /// Hashed by both PostgreSQL servers; only differing chunks were read.
    DatabaseHash,
}

/// One differing key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyDiff {
    pub kind: DiffKind,
    pub key: Key,
    /// For `different`: the columns whose values differ.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

/// The outcome of comparing one table with one sink's copy.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    /// The sink (or, for [`compare_table`], the target's description).
    pub sink: String,
    pub method: Method,
    pub source_rows: u64,
    pub target_rows: u64,
    pub chunks: u64,
    /// Chunks whose hashes differed and were merged row by row.
    pub chunks_differing: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// The first differing keys (at most `max_keys`), in key order per chunk.
    pub keys: Vec<KeyDiff>,
    pub elapsed_ms: u64,
    /// Set when the table could not be compared; the counts are then incomplete.
    pub error: Option<String>,
    /// Every differing key, when [`VerifyOptions::collect_keys`] asked for them.
    #[serde(skip)]
    pub all_keys: Vec<Key>,
    /// More keys differed than [`VerifyOptions::collect_keys`] allows.
    #[serde(skip)]
    pub all_keys_truncated: bool,
}

impl TableReport {
    fn new(table: &str, sink: &str) -> Self {
        TableReport {
            table: table.to_owned(),
            sink: sink.to_owned(),
            method: Method::RowHash,
            source_rows: 0,
            target_rows: 0,
            chunks: 0,
            chunks_differing: 0,
            missing: 0,
            extra: 0,
            different: 0,
            keys: Vec::new(),
            elapsed_ms: 0,
            error: None,
            all_keys: Vec::new(),
            all_keys_truncated: false,
        }
    }

    pub fn differences(&self) -> u64 {
        self.missing + self.extra + self.different
    }

    pub fn is_equal(&self) -> bool {
        self.error.is_none() && self.differences() == 0
    }
}

/// The outcome for one pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    pub pipeline: String,
    pub source: String,
    /// Set when differences remain and the pipeline did not catch up with the source within
    /// the settle time, so they may be changes still in flight.
    pub not_caught_up: Option<String>,
    pub tables: Vec<TableReport>,
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pipelines: Vec<PipelineReport>,
}

impl Report {
    pub fn is_equal(&self) -> bool {
        self.pipelines
            .iter()
            .all(|p| p.tables.iter().all(TableReport::is_equal))
    }
}

/// Compares every captured table of the configuration's pipelines (or of
/// `options.pipeline`) with each sink's copy. A table that cannot be compared (missing,
/// unreachable database) is reported with its error and the others still run; only a bad
/// pipeline name fails the whole call.
pub async fn verify(
    config: &Config,
    options: &VerifyOptions,
    progress: &(dyn Fn(&Progress<'_>) + Sync),
) -> Result<Report, VerifyError> {
    let pipelines: Vec<_> = match &options.pipeline {
        Some(name) => vec![config.pipeline(name).ok_or_else(|| {
            VerifyError::NoPipeline {
                name: name.clone(),
                file: config.file.clone(),
                defined: config
                    .pipelines
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })?],
        None => config.pipelines.iter().collect(),
    };
    let mut report = Report {
        pipelines: Vec::new(),
    };
    for pipeline in pipelines {
        let spec = &config.sources[&pipeline.source].spec;
        let (source, tables) = source_endpoint(spec);
        let mut settle = Settle::new(
            config.store.path.clone(),
            &pipeline.name,
            source.clone(),
            options.settle,
        )
        .for_diff_source(matches!(spec, SourceSpec::Diff { .. }));
        // Streams of a diff source that read a query (or map fields) have no table of the
        // same shape: their model rows are read into a SQLite file first (`materialize`),
        // which is then the source side.
        let query_stream = |table: &str| match spec {
            SourceSpec::Diff { streams, .. } => streams
                .iter()
                .find(|s| s.name == table && (s.query.is_some() || !s.fields.is_empty())),
            _ => None,
        };
        let mut out = PipelineReport {
            pipeline: pipeline.name.clone(),
            source: pipeline.source.clone(),
            not_caught_up: None,
            tables: Vec::new(),
        };
        for table in tables {
            // A query stream's rows, read once for all sinks; the guard removes the file.
            let materialized = match query_stream(table) {
                None => None,
                Some(stream) => Some(materialize(config, spec, stream, options).await),
            };
            for sink in &pipeline.sinks {
                let started = Instant::now();
                let mut result = TableReport::new(table, sink);
                let (source, settle) = match &materialized {
                    None => (&source, Some((&mut settle, sink.as_str()))),
                    Some(Ok((_, rows))) => (rows, None),
                    Some(Err(e)) => {
                        result.error = Some(e.to_string());
                        out.tables.push(result);
                        continue;
                    }
                };
                let target = match sink_endpoint(&config.sinks[sink].spec) {
                    Ok(t) => t,
                    Err(e) => {
                        result.error = Some(e);
                        out.tables.push(result);
                        continue;
                    }
                };
                let shown = |rows: u64| {
                    progress(&Progress {
                        pipeline: &pipeline.name,
                        table,
                        sink,
                        source_rows: rows,
                        elapsed: started.elapsed(),
                    })
                };
                let run = table::run(
                    source,
                    &target,
                    table,
                    config.sinks[sink].renames.get(table),
                    options,
                    settle,
                    &shown,
                    &mut result,
                )
                .await;
                if let Err(e) = run {
                    result.error = Some(e.to_string());
                }
                result.elapsed_ms = started.elapsed().as_millis() as u64;
                out.tables.push(result);
            }
        }
        // Only worth saying when something differs: a difference that resolved on re-check
        // needs no excuse.
        if out.tables.iter().any(|t| !t.is_equal()) {
            out.not_caught_up = settle.lag().map(str::to_owned);
        }
        report.pipelines.push(out);
    }
    Ok(report)
}

/// The model rows of `stream` (a stream of the `diff` source `spec` that reads a query or
/// maps fields) as they are now, in a table of that name in a temporary SQLite file: one
/// comparison run of the stream, by the same reader, mapping and SQLite sink the pipeline
/// code uses, into a throwaway store. That file is then the source side of the comparison,
/// so every target gets the canonical comparison of a SQLite source (`canon`). The rows are
/// a snapshot: a difference still in flight is reported as found (no re-check).
async fn materialize(
    config: &Config,
    spec: &SourceSpec,
    stream: &tidesync_capture::diff::StreamSpec,
    options: &VerifyOptions,
) -> Result<(tempfile::TempDir, Endpoint), VerifyError> {
    use crate::config::{PipelineConfig, SinkConfig, SourceConfig, StoreConfig};
    const PIPELINE: &str = "verify";
    let SourceSpec::Diff { db, .. } = spec else {
        return Err(VerifyError::Task(format!(
            "stream {} is not of a diff source",
            stream.name
        )));
    };
    let task = |e: std::io::Error| VerifyError::Task(format!("a temporary folder: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("tidesync-verify-")
        .tempdir()
        .map_err(task)?;
    let rows = dir.path().join("rows.db");
    let store_path = dir.path().join("store.db");
    let mini = Config {
        file: config.file.clone(),
        store: StoreConfig {
            path: store_path.clone(),
            retention: Duration::ZERO,
        },
        sources: [(
            "query".to_owned(),
            SourceConfig {
                name: "query".to_owned(),
                spec: SourceSpec::Diff {
                    db: db.clone(),
                    tables: vec![stream.name.clone()],
                    streams: vec![stream.clone()],
                    // One run: every row compared (no watermark), none after it.
                    interval: Duration::from_secs(365 * 86_400),
                    chunk_rows: options.chunk_rows,
                    incremental: None,
                },
            },
        )]
        .into(),
        sinks: [(
            "rows".to_owned(),
            SinkConfig {
                name: "rows".to_owned(),
                spec: SinkSpec::Sqlite {
                    path: rows.clone(),
                    create_tables: true,
                },
                renames: Default::default(),
            },
        )]
        .into(),
        pipelines: vec![PipelineConfig {
            name: PIPELINE.to_owned(),
            source: "query".to_owned(),
            sinks: vec!["rows".to_owned()],
            batch_size: 10_000,
            max_lag: u64::MAX,
            direct_stream: false,
        }],
        hub: None,
        agents: Default::default(),
    };
    let store =
        tidesync_store::SqliteStore::open(&store_path).map_err(|source| VerifyError::Store {
            path: store_path.clone(),
            source,
        })?;
    let mut pipeline = crate::build_pipeline(&mini, &mini.pipelines[0], &store, None);
    pipeline.source = Box::new(AsStored(pipeline.source));
    let cancel = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(pipeline.run(cancel.clone()));
    // Done once the run is complete (its position is stored) and the sink has applied the
    // log up to there.
    loop {
        if running.is_finished() {
            let ended = running
                .await
                .map_err(|e| VerifyError::Task(format!("reading stream {}: {e}", stream.name)))?;
            return Err(VerifyError::Task(match ended {
                Ok(()) => format!("reading stream {}: stopped early", stream.name),
                Err(e) => format!("reading stream {}: {}", stream.name, e.source),
            }));
        }
        let status = store
            .status_blocking(PIPELINE)
            .map_err(|source| VerifyError::Store {
                path: store_path.clone(),
                source,
            })?;
        let complete =
            matches!(status.position, Some(Position::DiffRun { started_us, .. }) if started_us > 0);
        let applied = status
            .cursors
            .iter()
            .any(|(name, seq)| name == "rows" && *seq >= status.head);
        if complete && applied {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    let _ = running.await;
    Ok((dir, Endpoint::Sqlite { path: rows }))
}

/// A source whose tables are created without column types: SQLite then keeps every value
/// exactly as the sink binds it (a decimal's text with its scale, not a REAL), which is what
/// the pipeline sent to its targets. For [`materialize`].
struct AsStored(Box<dyn tidesync_core::Source>);

impl tidesync_core::Source for AsStored {
    fn open(
        &mut self,
        from: Option<Position>,
    ) -> tidesync_core::BoxFuture<'_, Result<tidesync_core::Opened, tidesync_core::StageError>>
    {
        Box::pin(async move {
            let mut opened = self.0.open(from).await?;
            for schema in &mut opened.schemas {
                schema.dialect = tidesync_core::Dialect::Sqlite;
                for column in &mut schema.columns {
                    // No declared type: no affinity, nothing converted.
                    column.type_name = String::new();
                }
            }
            Ok(opened)
        })
    }

    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> tidesync_core::BoxFuture<
        '_,
        Result<Option<tidesync_core::Captured>, tidesync_core::StageError>,
    > {
        self.0.poll(max, wait)
    }

    fn ack(
        &mut self,
        position: Position,
    ) -> tidesync_core::BoxFuture<'_, Result<(), tidesync_core::StageError>> {
        self.0.ack(position)
    }

    fn remove(
        &mut self,
    ) -> tidesync_core::BoxFuture<'_, Result<Vec<String>, tidesync_core::StageError>> {
        self.0.remove()
    }
}

/// Compares `table` of `source` with the table of the same stream name in `target`, with no
/// pipeline behind them: differences are reported as found, without re-checks.
pub async fn compare_table(
    source: &Endpoint,
    target: &Endpoint,
    table: &str,
    options: &VerifyOptions,
) -> Result<TableReport, VerifyError> {
    let started = Instant::now();
    let mut result = TableReport::new(table, &target.describe());
    table::run(
        source,
        target,
        table,
        None,
        options,
        None,
        &|_| {},
        &mut result,
    )
    .await?;
    result.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(result)
}
