//! The pipeline runtime: source -> store -> sinks, each sink on its own cursor.
//!
//! One capture task and one task per sink, in a `JoinSet`, all under the pipeline's
//! cancellation token:
//! - capture: poll the source, append the batch with its position in one store transaction,
//!   then ack the source, then announce the new head. It pauses while the slowest sink is more
//!   than `max_lag` changes behind (backpressure: the log, not memory, is the buffer, and it is
//!   bounded too).
//! - sink: resume after the larger of its stored cursor and the seq the target recorded
//!   itself; read up to `batch_size` entries after the cursor, apply, and only then move the
//!   cursor. Entries reach each sink in seq order, so per-key order holds. A sink with
//!   renames gets its schemas and entries renamed on the way in (see `rename`); the others
//!   get them as read.
//! - transient errors are retried with backoff; a definite error stops the pipeline and is
//!   returned, naming the stage.
//! - the log is trimmed below the slowest cursor, past the retention time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tidesync_core::{
    Batch, BatchKind, Captured, Log, LogEntry, Seq, Sink, Source, StageError, TableSchema,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::rename::Renamer;
use crate::retry::{Stop, retry};

/// How often a busy exactly-once sink's stored cursor moves (see `SinkTask::run`).
const CURSOR_EVERY: Duration = Duration::from_millis(200);

/// A pipeline that stopped because of a definite error.
#[derive(Debug, thiserror::Error)]
#[error("pipeline {pipeline}: {stage}: {source}")]
pub struct PipelineError {
    pub pipeline: String,
    /// `source NAME`, `sink NAME` or `store`.
    pub stage: String,
    #[source]
    pub source: StageError,
}

/// Live counters of one pipeline, for progress output and tests.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Changes appended to the log since start.
    pub captured: AtomicU64,
    /// The log head seq.
    pub head: AtomicU64,
    pub sinks: Vec<SinkStats>,
}

#[derive(Debug, Default)]
pub struct SinkStats {
    pub name: String,
    /// Changes applied since start.
    pub applied: AtomicU64,
    /// The durable cursor.
    pub cursor: AtomicU64,
}

impl PipelineStats {
    /// How far the slowest sink is behind the head, in changes.
    pub fn lag(&self) -> u64 {
        let head = self.head.load(Ordering::Acquire);
        let slowest = self
            .sinks
            .iter()
            .map(|s| s.cursor.load(Ordering::Acquire))
            .min()
            .unwrap_or(head);
        head.saturating_sub(slowest)
    }
}

/// What a task returns when a retried step ended: `Ok` when cancelled (a clean stop), the
/// error naming pipeline and stage when it failed definitely.
fn stopped(pipeline: &str, stage: &str, stop: Stop) -> Result<(), PipelineError> {
    match stop {
        Stop::Cancelled => Ok(()),
        Stop::Failed(source) => Err(PipelineError {
            pipeline: pipeline.to_owned(),
            stage: stage.to_owned(),
            source,
        }),
    }
}

/// The stage an error of a start-up step names: `sink NAME`, `source NAME`, or as it is
/// (`store`).
fn stage_name(stage: &str, source: &str, sink: &str) -> String {
    match stage {
        "sink" => format!("sink {sink}"),
        "source" => format!("source {source}"),
        other => other.to_owned(),
    }
}

/// A batch of log entries for a sink, renamed for it in place first when it has renames.
fn log_batch(
    pipeline: &str,
    mut entries: Vec<LogEntry>,
    rename: Option<&Renamer>,
    position: Option<tidesync_core::Position>,
) -> Result<Arc<Batch>, crate::rename::RenameError> {
    if let Some(rename) = rename {
        rename.entries(&mut entries)?;
    }
    let first_seq = entries.first().map_or(Seq::ZERO, |e| e.seq);
    let last_seq = entries.last().map_or(Seq::ZERO, |e| e.seq);
    Ok(Arc::new(Batch {
        pipeline: pipeline.to_owned(),
        kind: BatchKind::Incremental,
        first_seq,
        last_seq,
        entries,
        position,
    }))
}

/// How often the capture task looks for new re-read requests in the store.
const REQUESTS_EVERY: Duration = Duration::from_secs(1);

/// Tunables of one pipeline.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub batch_size: usize,
    pub max_lag: u64,
    pub retention: Duration,
    /// How long one source poll waits for changes before checking for shutdown and trimming.
    pub poll_wait: Duration,
    pub trim_every: Duration,
    /// A fresh start may copy the source's tables straight into the pipeline's one sink
    /// (see `direct`), when both can.
    pub direct_copy: bool,
    /// How many batches' worth of entries a sink applies at most in one go (one target
    /// transaction): fewer, larger commits while it catches up (a commit per 1,000 rows is
    /// what limits a catching-up PostgreSQL sink: 4 measured ~20% faster, 10 no better);
    /// a sink that keeps up gets what is there, so latency is unchanged.
    pub sink_batches: usize,
    /// Stream source -> sink without the log when the pipeline's one sink records positions
    /// itself (see `stream`).
    pub direct_stream: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            batch_size: 1000,
            max_lag: 100_000,
            retention: Duration::from_secs(3600),
            poll_wait: Duration::from_millis(250),
            trim_every: Duration::from_secs(10),
            direct_copy: true,
            sink_batches: 4,
            direct_stream: false,
        }
    }
}

/// One pipeline, ready to run.
pub struct Pipeline {
    pub name: String,
    pub source_name: String,
    pub source: Box<dyn Source>,
    pub sinks: Vec<(String, Box<dyn Sink>)>,
    pub log: Arc<dyn Log>,
    pub options: PipelineOptions,
    pub stats: Arc<PipelineStats>,
    /// The renames of the sinks that have any, by sink name (empty from [`Pipeline::new`]).
    pub renames: BTreeMap<String, Renamer>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("source", &self.source_name)
            .field(
                "sinks",
                &self.sinks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    pub fn new(
        name: &str,
        source_name: &str,
        source: Box<dyn Source>,
        sinks: Vec<(String, Box<dyn Sink>)>,
        log: Arc<dyn Log>,
        options: PipelineOptions,
    ) -> Pipeline {
        let stats = Arc::new(PipelineStats {
            sinks: sinks
                .iter()
                .map(|(n, _)| SinkStats {
                    name: n.clone(),
                    ..SinkStats::default()
                })
                .collect(),
            ..PipelineStats::default()
        });
        Pipeline {
            name: name.to_owned(),
            source_name: source_name.to_owned(),
            source,
            sinks,
            log,
            options,
            stats,
            renames: BTreeMap::new(),
        }
    }

    /// Runs until `cancel` fires (returns `Ok`) or a stage fails definitely (returns the error
    /// after stopping the other tasks).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), PipelineError> {
        let Pipeline {
            name,
            source_name,
            mut source,
            mut sinks,
            log,
            options,
            stats,
            mut renames,
        } = self;
        let mut log_ref: &dyn Log = &*log;
        let position = match retry("read position", &cancel, &mut log_ref, |l| {
            l.position(&name)
        })
        .await
        {
            Ok(p) => p,
            Err(stop) => return stopped(&name, "store", stop),
        };
        let mut status =
            match retry("read status", &cancel, &mut log_ref, |l| l.status(&name)).await {
                Ok(s) => s,
                Err(stop) => return stopped(&name, "store", stop),
            };
        // A target that records positions (a direct stream's) may be ahead of the store.
        let position_sink = sinks.len() == 1 && sinks.iter().all(|(_, s)| s.records_positions());
        let position = match sinks.first_mut() {
            Some((sink_name, sink)) if position_sink => {
                match stream::adopt(&name, &cancel, &*log, &mut **sink, status.head).await {
                    Ok(false) => position,
                    Ok(true) => {
                        match retry("read status", &cancel, &mut log_ref, |l| l.status(&name)).await
                        {
                            Ok(s) => {
                                status = s;
                                status.position.clone()
                            }
                            Err(stop) => return stopped(&name, "store", stop),
                        }
                    }
                    Err((stage, stop)) => {
                        return stopped(&name, &stage_name(stage, &source_name, sink_name), stop);
                    }
                }
            }
            _ => position,
        };
        // The direct copy needs the pipeline's one sink to take it (see `direct`). Its record
        // in the target matters only before the first start (a stale one is cleared) and
        // while a copy is in progress; a streaming pipeline's start skips the round trips.
        let copy_sink = sinks.len() == 1 && sinks.iter().all(|(_, s)| s.copy_writer().is_some());
        let copying = matches!(
            position,
            None | Some(tidesync_core::Position::Snapshot { .. })
        );
        let position = match sinks.first_mut() {
            Some((sink_name, sink)) if copy_sink && copying => {
                match direct::reconcile(&name, &cancel, &*log, &mut **sink, position).await {
                    Ok(position) => position,
                    Err((stage, stop)) => {
                        return stopped(&name, &stage_name(stage, &source_name, sink_name), stop);
                    }
                }
            }
            _ => position,
        };
        tracing::info!(pipeline = %name, position = ?position.as_ref().map(ToString::to_string), head = status.head.0, "starting");
        let opened = match retry("open source", &cancel, &mut *source, |s| {
            s.open(position.clone())
        })
        .await
        {
            Ok(o) => o,
            Err(stop) => return stopped(&name, &format!("source {source_name}"), stop),
        };
        if let (None, Some(start)) = (&position, opened.start) {
            // Record where this fresh start begins, so that a restart before the first change
            // resumes here instead of starting (and snapshotting) all over again.
            let first = Arc::new(Captured {
                refreshed: Vec::new(),
                fingerprints: Vec::new(),
                kind: BatchKind::Full,
                changes: vec![],
                position: start,
                progress: None,
            });
            if let Err(stop) = retry("record start", &cancel, &mut log_ref, |l| {
                l.append(&name, first.clone())
            })
            .await
            {
                return stopped(&name, "store", stop);
            }
        }
        if position.is_none()
            && copy_sink
            && options.direct_copy
            && let Some((sink_name, sink)) = sinks.first_mut()
        {
            let copied = direct::copy(
                direct::Direct {
                    pipeline: &name,
                    cancel: &cancel,
                    log: &*log,
                    source: &mut *source,
                    sink: &mut **sink,
                    rename: renames.get(sink_name.as_str()),
                },
                &opened.schemas,
            )
            .await;
            if let Err((stage, stop)) = copied {
                return stopped(&name, &stage_name(stage, &source_name, sink_name), stop);
            }
        }
        let schemas = Arc::new(opened.schemas);
        stats.head.store(status.head.0, Ordering::Release);
        if options.direct_stream
            && position_sink
            && let Some((sink_name, sink)) = sinks.pop()
        {
            let result = stream::Stream {
                pipeline: name.clone(),
                source_name,
                rename: renames.remove(&sink_name),
                sink_name,
                log,
                options,
                stats,
                schemas,
                head: status.head,
                cancel,
            }
            .run(source, sink)
            .await;
            if let Err(e) = &result {
                tracing::error!(pipeline = %name, error = %e, "stopping pipeline");
            }
            tracing::info!(pipeline = %name, "stopped");
            return result;
        }
        let (head_tx, head_rx) = watch::channel(status.head);
        let (cursor_tx, cursor_rx) = watch::channel(());
        let mut tasks: JoinSet<Result<(), PipelineError>> = JoinSet::new();
        let child = cancel.child_token();

        for (i, (sink_name, sink)) in sinks.into_iter().enumerate() {
            let ctx = SinkTask {
                pipeline: name.clone(),
                rename: renames.remove(&sink_name),
                sink_name,
                index: i,
                log: log.clone(),
                options: options.clone(),
                stats: stats.clone(),
                schemas: schemas.clone(),
                head: head_rx.clone(),
                cursor_moved: cursor_tx.clone(),
                cancel: child.clone(),
            };
            tasks.spawn(ctx.run(sink));
        }
        let capture = CaptureTask {
            pipeline: name.clone(),
            source_name,
            log: log.clone(),
            options: options.clone(),
            stats: stats.clone(),
            head: head_tx,
            cursor_moved: cursor_rx,
            cancel: child.clone(),
        };
        tasks.spawn(capture.run(source));

        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let result = joined.unwrap_or_else(|e| {
                Err(PipelineError {
                    pipeline: name.clone(),
                    stage: "runtime".into(),
                    source: StageError::definite(format!("task panicked: {e}")),
                })
            });
            if let Err(e) = result {
                tracing::error!(pipeline = %name, error = %e, "stopping pipeline");
                child.cancel();
                first_error.get_or_insert(e);
            }
        }
        tracing::info!(pipeline = %name, "stopped");
        first_error.map_or(Ok(()), Err)
    }
}

struct CaptureTask {
    pipeline: String,
    source_name: String,
    log: Arc<dyn Log>,
    options: PipelineOptions,
    stats: Arc<PipelineStats>,
    head: watch::Sender<Seq>,
    cursor_moved: watch::Receiver<()>,
    cancel: CancellationToken,
}

impl CaptureTask {
    fn stop(&self, stage: &str, stop: Stop) -> Result<(), PipelineError> {
        stopped(&self.pipeline, stage, stop)
    }

    async fn run(mut self, mut source: Box<dyn Source>) -> Result<(), PipelineError> {
        let source_stage = format!("source {}", self.source_name);
        let mut last_trim = Instant::now();
        let mut log_ref: &dyn Log = &*self.log.clone();
        // A batch read ahead while the previous one was being appended.
        let mut prefetched = None;
        // The position of the last appended batch, not yet released to the source.
        let mut pending_ack: Option<tidesync_core::Position> = None;
        // Re-read requests already handed to the source (it keeps them until they are done).
        let mut requested = std::collections::HashSet::new();
        let mut last_requests: Option<Instant> = None;
        loop {
            if last_requests.is_none_or(|t| t.elapsed() >= REQUESTS_EVERY) {
                last_requests = Some(Instant::now());
                if let Err(stop) = hand_requests(
                    &self.pipeline,
                    &*self.log,
                    &self.cancel,
                    &mut *source,
                    &mut requested,
                )
                .await
                {
                    return self.stop("store", stop);
                }
            }
            // Backpressure: wait while the slowest sink is too far behind.
            loop {
                self.cursor_moved.borrow_and_update();
                if self.stats.lag() < self.options.max_lag || self.stats.sinks.is_empty() {
                    break;
                }
                tokio::select! {
                    () = self.cancel.cancelled() => return Ok(()),
                    changed = self.cursor_moved.changed() => if changed.is_err() { return Ok(()) },
                }
            }
            let (batch_size, wait) = (self.options.batch_size, self.options.poll_wait);
            let polled = match prefetched.take() {
                Some(batch) => Some(batch),
                None => {
                    // Nothing was read ahead: release what is committed before waiting.
                    if let Some(p) = pending_ack.take()
                        && let Err(stop) = retry("ack source", &self.cancel, &mut *source, |s| {
                            s.ack(p.clone())
                        })
                        .await
                    {
                        return self.stop(&source_stage, stop);
                    }
                    match retry("poll source", &self.cancel, &mut *source, |s| {
                        s.poll(batch_size, wait)
                    })
                    .await
                    {
                        Ok(p) => p,
                        Err(stop) => return self.stop(&source_stage, stop),
                    }
                }
            };
            if let Some(captured) = polled {
                let position = captured.position.clone();
                let n = captured.changes.len() as u64;
                let captured = Arc::new(captured);
                let pipeline = self.pipeline.clone();
                // The batch and its position commit together. Meanwhile the source releases
                // the previous batch (committed in the last round) and reads the next one
                // without waiting: the store and the source are different databases, every
                // ack still follows its own batch's commit, and batches are appended in order.
                let append = retry("append to log", &self.cancel, &mut log_ref, |l| {
                    l.append(&pipeline, captured.clone())
                });
                let to_ack = pending_ack.take();
                let cancel = &self.cancel;
                let source_side = async {
                    if let Some(p) = to_ack {
                        retry("ack source", cancel, &mut *source, |s| s.ack(p.clone())).await?;
                    }
                    retry("poll source", cancel, &mut *source, |s| {
                        s.poll(batch_size, Duration::ZERO)
                    })
                    .await
                };
                let started = Instant::now();
                let (appended, next) = tokio::join!(append, source_side);
                let append_us = started.elapsed().as_micros() as u64;
                let appended = match appended {
                    Ok(r) => r,
                    Err(stop) => return self.stop("store", stop),
                };
                tidesync_core::failpoint::hit("after-append");
                if let Some((_, last)) = appended {
                    self.stats.captured.fetch_add(n, Ordering::Relaxed);
                    self.stats.head.store(last.0, Ordering::Release);
                    self.head.send_replace(last);
                    tracing::debug!(pipeline = %self.pipeline, changes = n, head = last.0, position = %position, append_us, "captured");
                }
                prefetched = match next {
                    Ok(p) => p,
                    Err(stop) => return self.stop(&source_stage, stop),
                };
                pending_ack = Some(position);
            }
            if last_trim.elapsed() >= self.options.trim_every {
                last_trim = Instant::now();
                let (pipeline, retain) = (
                    self.pipeline.clone(),
                    self.options.retention.as_micros() as i64,
                );
                match retry("trim log", &self.cancel, &mut log_ref, |l| {
                    l.trim(&pipeline, retain)
                })
                .await
                {
                    Ok(n) if n > 0 => {
                        tracing::debug!(pipeline = %self.pipeline, trimmed = n, "trimmed log")
                    }
                    Ok(_) => {}
                    Err(stop) => return self.stop("store", stop),
                }
            }
            if self.cancel.is_cancelled() {
                return Ok(());
            }
        }
    }
}

/// Hands the store's new re-read requests (`verify --repair`, `backfill`) to the source;
/// one the source refuses is marked failed with its reason, and capture goes on.
async fn hand_requests(
    pipeline: &str,
    log: &dyn Log,
    cancel: &CancellationToken,
    source: &mut dyn Source,
    requested: &mut std::collections::HashSet<i64>,
) -> Result<(), Stop> {
    let mut log_ref: &dyn Log = log;
    let pending = retry("read requests", cancel, &mut log_ref, |l| {
        l.pending_requests(pipeline)
    })
    .await?;
    for request in pending {
        if !requested.insert(request.id) {
            continue;
        }
        let (id, stream) = (request.id, request.stream.clone());
        match source.request(request) {
            Ok(()) => {
                tracing::info!(pipeline, request = id, stream = %stream, "re-reading rows on request")
            }
            Err(e) => {
                let error = e.to_string();
                tracing::warn!(pipeline, request = id, stream = %stream, error = %error, "refused a re-read request");
                retry("fail request", cancel, &mut log_ref, |l| {
                    l.fail_request(pipeline, id, &error)
                })
                .await?;
            }
        }
    }
    Ok(())
}

struct SinkTask {
    pipeline: String,
    sink_name: String,
    index: usize,
    log: Arc<dyn Log>,
    options: PipelineOptions,
    stats: Arc<PipelineStats>,
    schemas: Arc<Vec<TableSchema>>,
    /// `None`: the sink has no renames and gets schemas and entries as they are.
    rename: Option<Renamer>,
    head: watch::Receiver<Seq>,
    cursor_moved: watch::Sender<()>,
    cancel: CancellationToken,
}

impl SinkTask {
    fn stop(&self, stage: &str, stop: Stop) -> Result<(), PipelineError> {
        stopped(&self.pipeline, stage, stop)
    }

    /// Runs the sink; on the way out (a stop, or an error) the store's cursor catches up with
    /// what the target has applied: a busy exactly-once sink moves it only every
    /// CURSOR_EVERY, and `status` after a stop should not show a lag that is not there.
    async fn run(self, sink: Box<dyn Sink>) -> Result<(), PipelineError> {
        let (log, pipeline, name) = (
            self.log.clone(),
            self.pipeline.clone(),
            self.sink_name.clone(),
        );
        let (stats, index) = (self.stats.clone(), self.index);
        let result = self.run_inner(sink).await;
        let applied = Seq(stats.sinks[index].cursor.load(Ordering::Acquire));
        if applied > Seq::ZERO
            && let Err(e) = log.set_cursor(&pipeline, &name, applied).await
        {
            tracing::warn!(pipeline = %pipeline, sink = %name, error = %e, "could not store the sink's last cursor; the next start reads it from the target");
        }
        result
    }

    async fn run_inner(mut self, mut sink: Box<dyn Sink>) -> Result<(), PipelineError> {
        let stage = format!("sink {}", self.sink_name);
        let schemas = match &self.rename {
            None => self.schemas.clone(),
            Some(rename) => match rename.schemas(&self.schemas) {
                Ok(renamed) => Arc::new(renamed),
                Err(e) => return self.stop(&stage, Stop::Failed(StageError::definite(e))),
            },
        };
        let applied = match retry("open sink", &self.cancel, &mut *sink, |s| {
            s.open(schemas.to_vec())
        })
        .await
        {
            Ok(a) => a,
            Err(stop) => return self.stop(&stage, stop),
        };
        let log = self.log.clone();
        let mut log_ref: &dyn Log = &*log;
        let (pipeline, name) = (self.pipeline.clone(), self.sink_name.clone());
        let stored = match retry("read cursor", &self.cancel, &mut log_ref, |l| {
            l.cursor(&pipeline, &name)
        })
        .await
        {
            Ok(c) => c,
            Err(stop) => return self.stop("store", stop),
        };
        // The target's own record wins when it is ahead: the store's cursor moves after the
        // target's commit, so a crash in between leaves the store behind, never ahead.
        let mut cursor = stored.max(applied.unwrap_or(Seq::ZERO));
        let head = *self.head.borrow();
        if cursor > head {
            // The target (or the store's cursor) is ahead of the log: the store was reset or
            // belongs to another setup. Resuming would silently skip the next changes.
            return self.stop(
                &stage,
                Stop::Failed(StageError::definite(format!(
                    "the target has applied up to seq {cursor} of pipeline {pipeline}, but the store's log ends at seq {head}; \
                     the store was reset or belongs to another setup. Restore the store, or clear the target's \
                     _tidesync_applied row for this pipeline and re-sync the target"
                ))),
            );
        }
        if let Err(stop) = retry("register cursor", &self.cancel, &mut log_ref, |l| {
            l.set_cursor(&pipeline, &name, cursor)
        })
        .await
        {
            return self.stop("store", stop);
        }
        let my_stats = &self.stats.sinks[self.index];
        my_stats.cursor.store(cursor.0, Ordering::Release);
        self.cursor_moved.send_replace(());
        tracing::info!(pipeline = %pipeline, sink = %name, cursor = cursor.0, "sink resumes");
        // Entries read ahead while the previous batch was being applied.
        let mut prefetched: Option<Vec<LogEntry>> = None;
        let exactly_once = applied.is_some();
        let mut last_cursor_move = Instant::now();
        let mut stored_cursor = cursor;
        loop {
            // A sink that is behind applies several batches' worth in one target transaction:
            // a target commit (a WAL flush) per batch is what limits a catching-up sink.
            let max = self
                .options
                .batch_size
                .saturating_mul(self.options.sink_batches.max(1));
            let entries = match prefetched.take() {
                Some(entries) => entries,
                None => match retry("read log", &self.cancel, &mut log_ref, |l| {
                    l.read(&pipeline, cursor, max)
                })
                .await
                {
                    Ok(e) => e,
                    Err(stop) => return self.stop("store", stop),
                },
            };
            let Some(last) = entries.last().map(|e| e.seq) else {
                if stored_cursor < cursor {
                    if let Err(stop) = retry("move cursor", &self.cancel, &mut log_ref, |l| {
                        l.set_cursor(&pipeline, &name, cursor)
                    })
                    .await
                    {
                        return self.stop("store", stop);
                    }
                    last_cursor_move = Instant::now();
                    stored_cursor = cursor;
                }
                // Caught up: wait for the head to move past the cursor. A head already past it
                // was announced between our read and now: read again (after a breath, in case
                // the reader's view lags the writer's).
                if *self.head.borrow_and_update() > cursor {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                tokio::select! {
                    () = self.cancel.cancelled() => return Ok(()),
                    changed = self.head.changed() => if changed.is_err() { return Ok(()) },
                }
                continue;
            };
            let n = entries.len() as u64;
            // Renamed in place, before the batch is shared with the sink (and its retries).
            let batch = match log_batch(&pipeline, entries, self.rename.as_ref(), None) {
                Ok(b) => b,
                Err(e) => return self.stop(&stage, Stop::Failed(StageError::definite(e))),
            };
            // Apply, and meanwhile read what comes after this batch.
            let apply = retry("apply", &self.cancel, &mut *sink, |s| {
                s.apply(batch.clone())
            });
            let mut read_ref: &dyn Log = &*log;
            let prefetch = retry("read log", &self.cancel, &mut read_ref, |l| {
                l.read(&pipeline, last, max)
            });
            let started = Instant::now();
            let (applied, next) = tokio::join!(apply, prefetch);
            let apply_us = started.elapsed().as_micros() as u64;
            if let Err(stop) = applied {
                return self.stop(&stage, stop);
            }
            prefetched = match next {
                Ok(e) if e.is_empty() => None,
                Ok(e) => Some(e),
                Err(stop) => return self.stop("store", stop),
            };
            tidesync_core::failpoint::hit("after-apply");
            // Only after the target accepted the batch does the cursor move. A target that
            // records its own applied seq is the authority on restart (we resume after the
            // larger of the two), so its stored cursor, which only serves trimming and
            // `status`, is moved at most every CURSOR_EVERY while busy, and when the sink
            // runs out of work (below), sparing the store a commit per batch.
            if !exactly_once || last_cursor_move.elapsed() >= CURSOR_EVERY {
                if let Err(stop) = retry("move cursor", &self.cancel, &mut log_ref, |l| {
                    l.set_cursor(&pipeline, &name, last)
                })
                .await
                {
                    return self.stop("store", stop);
                }
                last_cursor_move = Instant::now();
                stored_cursor = last;
            }
            cursor = last;
            my_stats.applied.fetch_add(n, Ordering::Relaxed);
            my_stats.cursor.store(cursor.0, Ordering::Release);
            self.cursor_moved.send_replace(());
            tracing::debug!(pipeline = %pipeline, sink = %name, changes = n, cursor = cursor.0, apply_us, cursor_us = started.elapsed().as_micros() as u64 - apply_us, "applied");
        }
    }
}

mod direct;
mod stream;

#[cfg(test)]
mod tests;
