//! `tidesync verify --repair` and `tidesync backfill`: ask a pipeline's source to re-read rows
//! and send them through the pipeline again, then wait until every sink has applied them.
//!
//! Requests go into the store ([`SqliteStore::add_request`]); the running pipeline picks them
//! up within a second and its source emits the rows as they are now, at a point in its stream
//! where no change of those keys is lost or reordered (PostgreSQL: between two watermarks, as
//! for a resumed copy; SQLite: through its change table), with deletes for asked keys the
//! source no longer has. The rows are logged as read, never skipped as already known, so a
//! target that drifted from the source is overwritten even when the store agrees with the
//! source. A request survives restarts of both the pipeline and whoever asked.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidesync_core::codec::binary::key_to_vec;
use tidesync_core::{Key, RequestKind, Seq};
use tidesync_store::{RequestState, SqliteStore, StoreError};

use crate::config::{Config, PipelineConfig};
use crate::verify::{Report, source_endpoint};

/// Keys per request: one request is read in one query, between one pair of watermarks.
pub const KEYS_PER_REQUEST: usize = 10_000;

/// Most differing keys of one table `--repair` re-sends; past this, `backfill` the table.
pub const MAX_REPAIR_KEYS: usize = 1_000_000;

/// How often the store is polled while waiting.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("{file}: no pipeline named {name} (defined: {defined})")]
    NoPipeline {
        file: PathBuf,
        name: String,
        defined: String,
    },
    #[error(
        "{file}: pipeline {pipeline} does not capture a table `{table}` (its source's tables: {tables})"
    )]
    NoTable {
        file: PathBuf,
        pipeline: String,
        table: String,
        tables: String,
    },
    #[error(
        "table {table} of pipeline {pipeline}: more than {max} keys differ; re-send the whole table with `tidesync backfill CONFIG {table} --pipeline {pipeline}`"
    )]
    TooManyKeys {
        pipeline: String,
        table: String,
        max: usize,
    },
    #[error("{0}")]
    Task(String),
}

/// Requests queued for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub pipeline: String,
    pub table: String,
    /// The store's request ids.
    pub ids: Vec<i64>,
    /// Keys asked for (0: the whole table).
    pub keys: usize,
}

/// How the wait for queued requests ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitOutcome {
    /// Requests the sources refused, with their reasons.
    pub failed: Vec<(String, i64, String)>,
    /// Requests not done when the wait gave up (the pipeline is not running, or behind).
    pub pending: Vec<(String, i64)>,
    /// Sinks that had not applied the re-sent rows when the wait gave up.
    pub behind: Vec<(String, String)>,
}

impl WaitOutcome {
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.pending.is_empty() && self.behind.is_empty()
    }
}

fn store(config: &Config) -> Result<SqliteStore, RepairError> {
    SqliteStore::open(&config.store.path).map_err(|source| RepairError::Store {
        path: config.store.path.clone(),
        source,
    })
}

fn store_err(config: &Config) -> impl Fn(StoreError) -> RepairError + '_ {
    |source| RepairError::Store {
        path: config.store.path.clone(),
        source,
    }
}

/// The keys wanted for one (pipeline, table): in first-seen order, deduplicated by their
/// encoded form.
type Wanted = (Vec<Key>, HashSet<Vec<u8>>);

/// Queues a re-read of every differing key `report` holds (its tables' `all_keys`, from a
/// verify run with [`crate::verify::VerifyOptions::collect_keys`]), one request per table
/// and [`KEYS_PER_REQUEST`] keys. Keys found by several sinks are asked once.
pub fn queue_repairs(config: &Config, report: &Report) -> Result<Vec<Queued>, RepairError> {
    let mut wanted: BTreeMap<(String, String), Wanted> = BTreeMap::new();
    for p in &report.pipelines {
        for t in &p.tables {
            if t.all_keys_truncated {
                return Err(RepairError::TooManyKeys {
                    pipeline: p.pipeline.clone(),
                    table: t.table.clone(),
                    max: MAX_REPAIR_KEYS,
                });
            }
            if t.all_keys.is_empty() {
                continue;
            }
            let (keys, seen) = wanted
                .entry((p.pipeline.clone(), t.table.clone()))
                .or_default();
            for key in &t.all_keys {
                if seen.insert(key_to_vec(key)) {
                    keys.push(key.clone());
                }
            }
        }
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let store = store(config)?;
    let mut queued = Vec::new();
    for ((pipeline, table), (keys, _)) in wanted {
        let mut ids = Vec::new();
        for chunk in keys.chunks(KEYS_PER_REQUEST) {
            let id = store
                .add_request(&pipeline, &table, &RequestKind::Keys(chunk.to_vec()))
                .map_err(store_err(config))?;
            ids.push(id);
        }
        queued.push(Queued {
            pipeline,
            table,
            ids,
            keys: keys.len(),
        });
    }
    Ok(queued)
}

/// The pipeline called `name`, or the only one when `name` is `None`.
pub fn pick_pipeline<'a>(
    config: &'a Config,
    name: Option<&str>,
) -> Result<&'a PipelineConfig, RepairError> {
    let defined = || {
        config
            .pipelines
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(name) => config
            .pipeline(name)
            .ok_or_else(|| RepairError::NoPipeline {
                file: config.file.clone(),
                name: name.to_owned(),
                defined: defined(),
            }),
        None if config.pipelines.len() == 1 => Ok(&config.pipelines[0]),
        None => Err(RepairError::NoPipeline {
            file: config.file.clone(),
            name: "(none given; name one with --pipeline)".to_owned(),
            defined: defined(),
        }),
    }
}

/// Queues a re-read of whole tables of `pipeline`: every row is sent again, in key order
/// and chunks, while the pipeline keeps streaming.
pub fn queue_backfill(
    config: &Config,
    pipeline: &PipelineConfig,
    tables: &[String],
) -> Result<Vec<Queued>, RepairError> {
    let (_, captured) = source_endpoint(&config.sources[&pipeline.source].spec);
    for table in tables {
        if !captured.contains(table) {
            return Err(RepairError::NoTable {
                file: config.file.clone(),
                pipeline: pipeline.name.clone(),
                table: table.clone(),
                tables: captured.join(", "),
            });
        }
    }
    let store = store(config)?;
    let mut queued = Vec::new();
    for table in tables {
        let id = store
            .add_request(&pipeline.name, table, &RequestKind::Table { after: None })
            .map_err(store_err(config))?;
        queued.push(Queued {
            pipeline: pipeline.name.clone(),
            table: table.clone(),
            ids: vec![id],
            keys: 0,
        });
    }
    Ok(queued)
}

/// Where a wait stands, for progress output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitProgress {
    pub done: usize,
    pub total: usize,
    pub elapsed: Duration,
}

/// Waits until every queued request is done and every sink of its pipeline has applied the
/// log up to where the request ended, or until `timeout`.
pub async fn wait(
    config: &Config,
    queued: &[Queued],
    timeout: Duration,
    progress: &(dyn Fn(&WaitProgress) + Sync),
) -> Result<WaitOutcome, RepairError> {
    let store = store(config)?;
    let started = Instant::now();
    let requests: Vec<(String, i64)> = queued
        .iter()
        .flat_map(|q| q.ids.iter().map(|id| (q.pipeline.clone(), *id)))
        .collect();
    let requests = Arc::new(requests);
    let sinks: Arc<BTreeMap<String, Vec<String>>> = Arc::new(
        queued
            .iter()
            .filter_map(|q| config.pipeline(&q.pipeline))
            .map(|p| (p.name.clone(), p.sinks.clone()))
            .collect(),
    );
    loop {
        let (store2, asked, sinks) = (store.clone(), requests.clone(), sinks.clone());
        let outcome = tokio::task::spawn_blocking(move || check(&store2, &asked, &sinks))
            .await
            .map_err(|e| RepairError::Task(format!("a store task failed: {e}")))?
            .map_err(store_err(config))?;
        progress(&WaitProgress {
            done: requests.len() - outcome.pending.len(),
            total: requests.len(),
            elapsed: started.elapsed(),
        });
        if (outcome.pending.is_empty() && outcome.behind.is_empty()) || started.elapsed() >= timeout
        {
            return Ok(outcome);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One look at the store: requests not done, failed, and sinks behind the done ones.
fn check(
    store: &SqliteStore,
    requests: &[(String, i64)],
    sinks: &BTreeMap<String, Vec<String>>,
) -> Result<WaitOutcome, StoreError> {
    let mut outcome = WaitOutcome::default();
    // Per pipeline: the log seq every sink must reach.
    let mut needed: BTreeMap<&str, Seq> = BTreeMap::new();
    for (pipeline, id) in requests {
        match store.request_state(pipeline, *id)? {
            Some(RequestState::Done(seq)) => {
                let n = needed.entry(pipeline).or_insert(Seq::ZERO);
                *n = (*n).max(seq);
            }
            Some(RequestState::Failed(error)) => {
                outcome.failed.push((pipeline.clone(), *id, error));
            }
            Some(RequestState::Pending) | None => outcome.pending.push((pipeline.clone(), *id)),
        }
    }
    for (pipeline, seq) in needed {
        let status = store.status_blocking(pipeline)?;
        for sink in sinks.get(pipeline).into_iter().flatten() {
            let at = status
                .cursors
                .iter()
                .find(|(c, _)| c == sink)
                .map_or(Seq::ZERO, |(_, s)| *s);
            if at < seq {
                outcome.behind.push((pipeline.to_owned(), sink.clone()));
            }
        }
    }
    Ok(outcome)
}
