//! Direct streaming: source -> sink without the log, for a pipeline whose one sink records
//! the source position with its applied seq in each batch's own transaction
//! (`Sink::records_positions`), when `[pipelines.NAME] direct_stream = true`.
//!
//! DESIGN.md: "a pipeline with a single database sink and nothing else reading its log may
//! skip the log and stream source -> sink directly, acknowledging the source after the sink's
//! commit: same guarantees, less I/O". The guarantees, and how they hold:
//! - **Nothing lost**: the source is acknowledged only after the target committed the batch
//!   (or, for a batch with no changes, after the store recorded its position).
//! - **Nothing applied twice**: changes are numbered on from the store's head, and the target
//!   records the batch's last seq *and* the source position after it in the batch's
//!   transaction. The store learns both at most [`ADVANCE_EVERY`] later (and when the stream is
//!   idle, and on a clean stop); a crash in between leaves the target ahead of the store, and the
//!   next start adopts the target's record (`adopt`) before opening the source there.
//! - **Per-key order**: one task applies the batches in capture order.
//!
//! What the log gave and this mode does not: no other sink can be added without a fresh copy,
//! and there is no current state to fill PostgreSQL's unchanged TOASTed values from, so an
//! update that leaves one unchanged is applied as an `Op::Patch` of the columns it sent (the
//! target keeps its own value).
//!
//! A start whose sink is behind the log (the pipeline ran through the log before) first
//! applies the log's remaining entries, then streams directly.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tidesync_core::{
    Captured, Change, Log, LogEntry, Op, Position, RequestProgress, Seq, Sink, Source, StageError,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    PipelineError, PipelineOptions, PipelineStats, REQUESTS_EVERY, hand_requests, log_batch,
};
use crate::rename::Renamer;
use crate::retry::{Stop, retry};

/// How often a busy direct stream records its position and head in the store (for `status`,
/// `verify`'s wait for the pipeline, and a restart's starting point when the target is not
/// ahead). The target's own record is the authority after a crash.
const ADVANCE_EVERY: Duration = Duration::from_millis(200);

/// Captured batches waiting for the sink (each up to `batch_size` changes): the buffer
/// between the two halves, and their backpressure.
const QUEUE: usize = 4;

/// One captured batch, numbered.
struct Item {
    entries: Vec<LogEntry>,
    position: Position,
    progress: Option<RequestProgress>,
    commit_us: Option<i64>,
}

/// Adopts a direct stream's record that the store lacks: the target committed batches whose
/// position and head the store never learnt (a crash within [`ADVANCE_EVERY`]). Returns whether
/// anything was adopted.
pub(super) async fn adopt(
    pipeline: &str,
    cancel: &CancellationToken,
    log: &dyn Log,
    sink: &mut dyn Sink,
    head: Seq,
) -> Result<bool, (&'static str, Stop)> {
    let applied = retry("read the direct stream's position", cancel, sink, |s| {
        s.applied_position()
    })
    .await
    .map_err(|stop| ("sink", stop))?;
    let Some((seq, position)) = applied.filter(|(seq, _)| *seq > head) else {
        return Ok(false);
    };
    tracing::info!(pipeline, seq = seq.0, position = %position, "the target has applied a direct stream past the store's record; resuming after it");
    let mut log_ref = log;
    retry(
        "record the direct stream's position",
        cancel,
        &mut log_ref,
        |l| l.advance(pipeline, position.clone(), seq, None, None),
    )
    .await
    .map_err(|stop| ("store", stop))?;
    Ok(true)
}

/// What [`run`] needs.
pub(super) struct Stream {
    pub pipeline: String,
    pub source_name: String,
    pub sink_name: String,
    pub log: Arc<dyn Log>,
    pub options: PipelineOptions,
    pub stats: Arc<PipelineStats>,
    pub schemas: Arc<Vec<tidesync_core::TableSchema>>,
    pub rename: Option<Renamer>,
    pub head: Seq,
    pub cancel: CancellationToken,
}

impl Stream {
    fn stop(&self, stage: &str, stop: Stop) -> Result<(), PipelineError> {
        super::stopped(&self.pipeline, stage, stop)
    }

    /// Opens the sink, applies what the log still holds for it, then streams.
    pub(super) async fn run(
        self,
        mut source: Box<dyn Source>,
        mut sink: Box<dyn Sink>,
    ) -> Result<(), PipelineError> {
        let sink_stage = format!("sink {}", self.sink_name);
        let schemas = match &self.rename {
            None => self.schemas.clone(),
            Some(rename) => match rename.schemas(&self.schemas) {
                Ok(renamed) => Arc::new(renamed),
                Err(e) => {
                    return self.stop(&sink_stage, Stop::Failed(StageError::definite(e)));
                }
            },
        };
        let cancel = self.cancel.clone();
        let applied = match retry("open sink", &cancel, &mut *sink, |s| {
            s.open(schemas.to_vec())
        })
        .await
        {
            Ok(a) => a,
            Err(stop) => return self.stop(&sink_stage, stop),
        };
        let log = self.log.clone();
        let mut log_ref: &dyn Log = &*log;
        let (pipeline, name) = (self.pipeline.clone(), self.sink_name.clone());
        let stored = match retry("read cursor", &cancel, &mut log_ref, |l| {
            l.cursor(&pipeline, &name)
        })
        .await
        {
            Ok(c) => c,
            Err(stop) => return self.stop("store", stop),
        };
        let mut cursor = stored.max(applied.unwrap_or(Seq::ZERO));
        if cursor > self.head {
            return self.stop(
                &sink_stage,
                Stop::Failed(StageError::definite(format!(
                    "the target has applied up to seq {cursor} of pipeline {pipeline}, but the store's log ends at seq {}; \
                     the store was reset or belongs to another setup. Restore the store, or clear the target's \
                     _tidesync_applied row for this pipeline and re-sync the target",
                    self.head
                ))),
            );
        }
        // What the log still holds for the sink (the pipeline ran through it before).
        let max = self
            .options
            .batch_size
            .saturating_mul(self.options.sink_batches.max(1));
        while cursor < self.head {
            let entries = match retry("read log", &cancel, &mut log_ref, |l| {
                l.read(&pipeline, cursor, max)
            })
            .await
            {
                Ok(e) => e,
                Err(stop) => return self.stop("store", stop),
            };
            let Some(last) = entries.last().map(|e| e.seq) else {
                break;
            };
            let batch = match log_batch(&pipeline, entries, self.rename.as_ref(), None) {
                Ok(b) => b,
                Err(e) => return self.stop(&sink_stage, Stop::Failed(StageError::definite(e))),
            };
            if let Err(stop) = retry("apply", &cancel, &mut *sink, |s| s.apply(batch.clone())).await
            {
                return self.stop(&sink_stage, stop);
            }
            cursor = last;
        }
        if let Err(stop) = retry("move cursor", &cancel, &mut log_ref, |l| {
            l.set_cursor(&pipeline, &name, self.head)
        })
        .await
        {
            return self.stop("store", stop);
        }
        let sink_stats = &self.stats.sinks[0];
        sink_stats.cursor.store(self.head.0, Ordering::Release);
        tracing::info!(pipeline = %pipeline, sink = %name, head = self.head.0, "streaming directly into the sink, without the log");

        let (items_tx, items_rx) = mpsc::channel::<Item>(QUEUE);
        let (ack_tx, ack_rx) = watch::channel::<Option<Position>>(None);
        let (stalled_tx, stalled_rx) = watch::channel(false);
        let child = cancel.child_token();
        let capture = self.capture(&mut *source, items_tx, ack_rx, stalled_rx, &child);
        let apply = self.apply(&mut *sink, items_rx, ack_tx, Arc::new(stalled_tx), &child);
        let (captured, applied) = tokio::join!(
            async {
                let r = capture.await;
                if r.is_err() {
                    child.cancel();
                }
                r
            },
            async {
                let r = apply.await;
                if r.is_err() {
                    child.cancel();
                }
                r
            }
        );
        applied.and(captured)
    }

    /// Polls the source, numbers its changes on from the head, and queues them for the sink;
    /// acknowledges to the source what the sink has made durable.
    async fn capture(
        &self,
        source: &mut dyn Source,
        items: mpsc::Sender<Item>,
        mut acks: watch::Receiver<Option<Position>>,
        mut stalled: watch::Receiver<bool>,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let source_stage = format!("source {}", self.source_name);
        // While the sink fails, nothing can be confirmed to the source: its connection is let
        // go (a source server shutting down waits for an open replication connection to
        // confirm the end of its log; with the target on that server it would wait forever)
        // and the next poll reconnects, once the sink applies again.
        let mut seq = self.head;
        let mut requested = std::collections::HashSet::new();
        let mut last_requests: Option<Instant> = None;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            if *stalled.borrow_and_update() {
                source.release();
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    ok = stalled.wait_for(|s| !*s) => if ok.is_err() { return Ok(()) },
                }
            }
            if last_requests.is_none_or(|t| t.elapsed() >= REQUESTS_EVERY) {
                last_requests = Some(Instant::now());
                if let Err(stop) =
                    hand_requests(&self.pipeline, &*self.log, cancel, source, &mut requested).await
                {
                    return self.stop("store", stop);
                }
            }
            let ack = if acks.has_changed().unwrap_or(false) {
                acks.borrow_and_update().clone()
            } else {
                None
            };
            if let Some(p) = ack
                && let Err(stop) =
                    retry("ack source", cancel, &mut *source, |s| s.ack(p.clone())).await
            {
                return self.stop(&source_stage, stop);
            }
            let (batch_size, wait) = (self.options.batch_size, self.options.poll_wait);
            let polled = match retry("poll source", cancel, &mut *source, |s| {
                s.poll(batch_size, wait)
            })
            .await
            {
                Ok(p) => p,
                Err(stop) => return self.stop(&source_stage, stop),
            };
            let Some(captured) = polled else {
                continue;
            };
            let n = captured.changes.len() as u64;
            let item = number(captured, &mut seq);
            self.stats.captured.fetch_add(n, Ordering::Relaxed);
            self.stats.head.store(seq.0, Ordering::Release);
            let send = items.send(item);
            tokio::pin!(send);
            loop {
                let stalls = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    sent = &mut send => {
                        if sent.is_err() {
                            return Ok(());
                        }
                        break;
                    }
                    ok = stalled.wait_for(|s| *s) => ok.is_ok(),
                };
                if !stalls {
                    return Ok(());
                }
                // The batch is handed out already: it waits here for the sink.
                source.release();
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    ok = stalled.wait_for(|s| !*s) => if ok.is_err() { return Ok(()) },
                }
            }
        }
    }

    /// Applies the queued batches in order (several at once when the sink is behind), each
    /// with the position after it; then lets the source go, and now and then tells the store.
    async fn apply(
        &self,
        sink: &mut dyn Sink,
        mut items: mpsc::Receiver<Item>,
        acks: watch::Sender<Option<Position>>,
        stalled: Arc<watch::Sender<bool>>,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let sink_stage = format!("sink {}", self.sink_name);
        let max = self
            .options
            .batch_size
            .saturating_mul(self.options.sink_batches.max(1));
        let mut log_ref: &dyn Log = &*self.log;
        let sink_stats = &self.stats.sinks[0];
        // Applied (and acknowledged) but not yet told to the store.
        let mut unrecorded: Option<(Position, Seq, Option<i64>)> = None;
        let mut last_advance = Instant::now();
        // Entries of runs through the log, all applied now, go once past their retention.
        let mut last_trim: Option<Instant> = None;
        let mut seq = self.head;
        loop {
            let first = tokio::select! {
                () = cancel.cancelled() => None,
                item = items.recv() => item,
            };
            let Some(first) = first else {
                // Stopping: the store learns where the target stands (best effort: the
                // target's record is the authority anyway).
                if let Some((position, head, commit_us)) = unrecorded.take() {
                    let _ = self
                        .log
                        .advance(&self.pipeline, position, head, commit_us, None)
                        .await
                        .inspect_err(|e| tracing::warn!(pipeline = %self.pipeline, error = %e, "could not record the direct stream's last position in the store; the next start reads it from the target"));
                }
                return Ok(());
            };
            // Gather what is already waiting, up to `max` changes, stopping after a batch
            // that carries a request's progress (recorded with its own position).
            let mut entries = first.entries;
            let (mut position, mut progress, mut commit_us) =
                (first.position, first.progress, first.commit_us);
            while progress.is_none() && entries.len() < max {
                let Ok(next) = items.try_recv() else { break };
                entries.extend(next.entries);
                position = next.position;
                progress = next.progress;
                commit_us = next.commit_us.or(commit_us);
            }
            let n = entries.len() as u64;
            if let Some(last) = entries.last() {
                seq = last.seq;
                let batch = match log_batch(
                    &self.pipeline,
                    entries,
                    self.rename.as_ref(),
                    Some(position.clone()),
                ) {
                    Ok(b) => b,
                    Err(e) => {
                        return self.stop(&sink_stage, Stop::Failed(StageError::definite(e)));
                    }
                };
                let started = Instant::now();
                let applied = retry("apply", cancel, &mut *sink, |s| {
                    let (attempt, stalled) = (s.apply(batch.clone()), stalled.clone());
                    Box::pin(async move {
                        let result = attempt.await;
                        if result.as_ref().is_err_and(StageError::is_transient) {
                            stalled.send_replace(true);
                        }
                        result
                    })
                })
                .await;
                if let Err(stop) = applied {
                    return self.stop(&sink_stage, stop);
                }
                stalled.send_if_modified(|s| std::mem::replace(s, false));
                tidesync_core::failpoint::hit("after-apply");
                tracing::debug!(pipeline = %self.pipeline, changes = n, seq = seq.0, position = %position, apply_us = started.elapsed().as_micros() as u64, "applied directly");
            }
            unrecorded = Some((position.clone(), seq, commit_us));
            // A batch without changes is durable nowhere but in the store: record it before
            // the source may let it go. So is a request's progress.
            let record = n == 0
                || progress.is_some()
                || last_advance.elapsed() >= ADVANCE_EVERY
                || items.is_empty();
            if record && let Some((position, head, commit_us)) = unrecorded.take() {
                let progress = progress.take();
                if let Err(stop) = retry("record position", cancel, &mut log_ref, |l| {
                    l.advance(
                        &self.pipeline,
                        position.clone(),
                        head,
                        commit_us,
                        progress.clone(),
                    )
                })
                .await
                {
                    return self.stop("store", stop);
                }
                last_advance = Instant::now();
            }
            acks.send_replace(Some(position));
            if last_trim.is_none_or(|t| t.elapsed() >= self.options.trim_every) {
                last_trim = Some(Instant::now());
                let retain = self.options.retention.as_micros() as i64;
                if let Err(stop) = retry("trim log", cancel, &mut log_ref, |l| {
                    l.trim(&self.pipeline, retain)
                })
                .await
                {
                    return self.stop("store", stop);
                }
            }
            sink_stats.applied.fetch_add(n, Ordering::Relaxed);
            sink_stats.cursor.store(seq.0, Ordering::Release);
        }
    }
}

/// `captured`'s changes as log entries numbered after `seq` (which moves to the last), each
/// change that left values unchanged turned into the patch the log would have made of it
/// without a current state (a key update's delete and insert into one patch of the old key).
fn number(captured: Captured, seq: &mut Seq) -> Item {
    let Captured {
        changes,
        position,
        progress,
        ..
    } = captured;
    let commit_us = changes.last().map(|c| c.commit_time_us);
    let mut entries = Vec::with_capacity(changes.len());
    let mut changes = changes.into_iter().peekable();
    while let Some(change) = changes.next() {
        let change = if change.unchanged.is_empty() {
            let moved = change.op == Op::Delete
                && changes.peek().is_some_and(|next: &Change| {
                    next.op == Op::Insert
                        && !next.unchanged.is_empty()
                        && next.stream == change.stream
                });
            match moved.then(|| changes.next()).flatten() {
                Some(insert) => insert.as_patch(change.key.clone(), change.before.clone()),
                None => change,
            }
        } else {
            change.as_patch(change.key.clone(), change.before.clone())
        };
        *seq = seq.next();
        entries.push(LogEntry { seq: *seq, change });
    }
    Item {
        entries,
        position,
        progress,
        commit_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidesync_core::{BatchKind, Key, Row, Value};

    fn change(op: Op, key: i64, unchanged: &[&str]) -> Change {
        Change {
            stream: "public.t".into(),
            op,
            key: Key(vec![Value::Int(key)]),
            before: None,
            after: (op != Op::Delete).then(|| {
                Row(vec![
                    ("id".into(), Value::Int(key)),
                    ("doc".into(), Value::Null),
                    ("n".into(), Value::Int(1)),
                ])
            }),
            commit_time_us: 7,
            position: None,
            txn: None,
            unchanged: unchanged.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    #[test]
    fn changes_are_numbered_on_and_unfillable_ones_become_patches() {
        let captured = Captured {
            refreshed: Vec::new(),
            fingerprints: Vec::new(),
            kind: BatchKind::Incremental,
            changes: vec![
                change(Op::Insert, 1, &[]),
                change(Op::Update, 2, &["doc"]),
                // A key update from 3 to 4 that left `doc` unchanged.
                change(Op::Delete, 3, &[]),
                change(Op::Insert, 4, &["doc"]),
                change(Op::Delete, 5, &[]),
            ],
            position: Position::Lsn(99),
            progress: None,
        };
        let mut seq = Seq(10);
        let item = number(captured, &mut seq);
        assert_eq!(seq, Seq(14));
        let got: Vec<(u64, Op, Key, Vec<String>)> = item
            .entries
            .iter()
            .map(|e| {
                (
                    e.seq.0,
                    e.change.op,
                    e.change.key.clone(),
                    e.change
                        .after
                        .as_ref()
                        .map(|r| r.columns().map(str::to_owned).collect())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let cols = |c: &[&str]| c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            got,
            vec![
                (
                    11,
                    Op::Insert,
                    Key(vec![Value::Int(1)]),
                    cols(&["id", "doc", "n"])
                ),
                (12, Op::Patch, Key(vec![Value::Int(2)]), cols(&["id", "n"])),
                (13, Op::Patch, Key(vec![Value::Int(3)]), cols(&["id", "n"])),
                (14, Op::Delete, Key(vec![Value::Int(5)]), vec![]),
            ]
        );
        // The patch of the key update carries the new key's values.
        assert_eq!(
            item.entries[2].change.after.as_ref().unwrap().get("id"),
            Some(&Value::Int(4))
        );
        assert_eq!(item.commit_us, Some(7));
    }
}
