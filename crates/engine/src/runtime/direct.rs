//! The direct copy (DESIGN.md, "Log and state": a pipeline with a single database sink may
//! skip the log): on a fresh start of a pipeline with exactly one sink, when source and sink
//! both can, the initial copy goes from the source's `COPY .. TO STDOUT` straight into the
//! sink's `COPY .. FROM STDIN`, a chunk at a time, instead of through the log. The rows are
//! not decoded, logged or encoded; what the log records is the copy's progress (the source
//! position after each chunk), as the normal path would.
//!
//! Exactly-once: the sink records each chunk's position in the target in the chunk's own
//! transaction, and the log records it after. A crash between the two leaves the target
//! ahead (by the chunks committed but not yet logged); [`reconcile`] at the next start finds that position in the target and
//! stores it in the log before the source resumes, so the chunk is not copied again. The
//! record is cleared once the log holds it (at the start, and when the direct copy ends), so a
//! stale record can never move the log backwards.
//!
//! [`WRITERS`] chunks are written at once, each by a [`CopyWriter`] with a connection of its
//! own, while the next chunk is read; they are committed strictly in chunk order (each
//! writer's task waits for the chunk before to commit, then commits its own, so commits
//! overlap the other writes), and the position a commit records always has every earlier
//! chunk in the target. Anything the sink
//! refuses (a row that exists already, a value its column type rejects) or the source fails
//! to read ends the direct copy: the writes after it are rolled back, the source rewinds to
//! the first chunk not in the target and the runtime goes on as usual, sending those rows
//! through the log (upserts, with errors naming the row).
//!
//! Rows copied this way are not in the log's current state. An update that leaves a TOASTed
//! value unchanged therefore reaches the sink as a patch of the columns it changed (see
//! `Op::Patch`), which the target applies to the row it holds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidesync_core::{
    BatchKind, Captured, CopyChunk, CopyWriter, Log, Position, Sink, Source, StageError,
    TableSchema,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::rename::Renamer;
use crate::retry::{Stop, retry};

/// Rows per chunk at most; sources cut their chunks smaller (PostgreSQL: `chunk_rows`, and
/// 16 MiB).
const CHUNK_ROWS: usize = 1_000_000;

/// Chunks written at once, each by a writer with a connection of its own: the target's
/// parsing and index work is what a copy waits for, and with two writers two of its backends
/// do it (measured in bench/RESULTS.md).
const WRITERS: usize = 2;

/// How often a progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Stores the position of a chunk the sink holds but the log does not (a crash between the
/// two commits), and clears the sink's record. Returns the position to resume from.
pub(super) async fn reconcile(
    pipeline: &str,
    cancel: &CancellationToken,
    log: &dyn Log,
    sink: &mut dyn Sink,
    position: Option<Position>,
) -> Result<Option<Position>, (&'static str, Stop)> {
    let copied = retry("read the direct copy's position", cancel, sink, |s| {
        s.copied()
    })
    .await
    .map_err(|stop| ("sink", stop))?;
    let Some(copied) = copied else {
        return Ok(position);
    };
    let mut position = position;
    // Only while a copy is in progress: anything else means the record is stale (a store
    // started afresh), and the log is the truth.
    if matches!(position, Some(Position::Snapshot { .. })) && position.as_ref() != Some(&copied) {
        tracing::info!(pipeline, position = %copied, "the target holds a chunk of the direct copy the log does not record; resuming after it");
        record(pipeline, cancel, log, &copied).await?;
        position = Some(copied);
    }
    retry("clear the direct copy's position", cancel, sink, |s| {
        s.clear_copied()
    })
    .await
    .map_err(|stop| ("sink", stop))?;
    Ok(position)
}

/// Stores `position` as the pipeline's position (an append without changes).
async fn record(
    pipeline: &str,
    cancel: &CancellationToken,
    log: &dyn Log,
    position: &Position,
) -> Result<(), (&'static str, Stop)> {
    let captured = Arc::new(Captured {
        refreshed: Vec::new(),
        fingerprints: Vec::new(),
        kind: BatchKind::Full,
        changes: Vec::new(),
        position: position.clone(),
        progress: None,
    });
    let mut log_ref = log;
    retry(
        "record the direct copy's position",
        cancel,
        &mut log_ref,
        |l| l.append(pipeline, captured.clone()),
    )
    .await
    .map(drop)
    .map_err(|stop| ("store", stop))
}

/// A progress line for the table being copied: rows, share and time left when the source
/// knows about how many rows it has.
fn progress(table: &(String, u64, Instant), estimate: Option<u64>) -> String {
    let (name, rows, since) = table;
    let rate = *rows as f64 / since.elapsed().as_secs_f64().max(1e-3);
    match estimate.filter(|&e| e >= *rows) {
        Some(estimate) => format!(
            "direct copy of {name}: {rows} of about {estimate} rows ({:.0}%), {rate:.0} rows/s, \
             about {:.0} s left",
            *rows as f64 * 100.0 / estimate as f64,
            (estimate - rows) as f64 / rate.max(1.0)
        ),
        None => format!("direct copy of {name}: {rows} rows, {rate:.0} rows/s"),
    }
}

/// Where the copy loop spent its time, reported when it ends (tells a slow source from a
/// slow target).
#[derive(Debug, Default)]
struct Waited {
    read: Duration,
    /// For the oldest chunk's write and commit.
    write: Duration,
    log: Duration,
}

/// Writes `chunk` and, once the chunk before it has committed (`previous`; `None`: it is
/// the first), commits it.
async fn write_and_commit(
    cancel: &CancellationToken,
    writer: &mut dyn CopyWriter,
    chunk: Arc<CopyChunk>,
    previous: Option<oneshot::Receiver<bool>>,
) -> Result<(), Stop> {
    let mut writer = writer;
    retry("copy into the sink", cancel, &mut writer, |w| {
        w.write(chunk.clone())
    })
    .await?;
    let previous_committed = match previous {
        Some(previous) => previous.await.unwrap_or(false),
        None => true,
    };
    if !previous_committed {
        // The copy stops at an earlier chunk; this one's transaction is rolled back with
        // its connection.
        return Err(Stop::Failed(StageError::definite(format!(
            "chunk {} of {} was not committed: an earlier chunk failed",
            chunk.number, chunk.stream
        ))));
    }
    retry("commit a direct-copy chunk", cancel, &mut writer, |w| {
        w.commit()
    })
    .await
}

/// A chunk being written by a writer task, which hands the writer back.
struct InFlight {
    chunk: Arc<CopyChunk>,
    task: JoinHandle<(Box<dyn CopyWriter>, Result<(), Stop>)>,
}

/// Stops the writes still running; their uncommitted transactions go with their connections.
fn abort_all(in_flight: VecDeque<InFlight>) {
    for f in in_flight {
        f.task.abort();
    }
}

/// Everything [`copy`] works with.
pub(super) struct Direct<'a> {
    pub pipeline: &'a str,
    pub cancel: &'a CancellationToken,
    pub log: &'a dyn Log,
    pub source: &'a mut dyn Source,
    pub sink: &'a mut dyn Sink,
    pub rename: Option<&'a Renamer>,
}

/// Copies as much of the initial copy as goes directly (see the module docs). `Ok` also when
/// it stopped early: the source then hands out the rest through `poll`.
pub(super) async fn copy(
    d: Direct<'_>,
    schemas: &[TableSchema],
) -> Result<(), (&'static str, Stop)> {
    let Direct {
        pipeline,
        cancel,
        log,
        source,
        sink,
        rename,
    } = d;
    // The schemas as the sink names them, in the same order.
    let targets = match rename {
        Some(r) => r
            .schemas(schemas)
            .map_err(|e| ("sink", Stop::Failed(StageError::definite(e))))?,
        None => schemas.to_vec(),
    };
    retry("open sink", cancel, sink, |s| s.open(targets.clone()))
        .await
        .map_err(|stop| ("sink", stop))?;
    let binary = retry("read the target's column types", cancel, sink, |s| {
        s.copy_binary(&targets)
    })
    .await
    .map_err(|stop| ("sink", stop))?;
    source.allow_binary_copy(
        schemas
            .iter()
            .zip(&targets)
            .filter(|(_, target)| binary.contains(&target.name))
            .map(|(schema, _)| schema.name.clone())
            .collect(),
    );
    let mut idle: Vec<Box<dyn CopyWriter>> =
        (0..WRITERS).filter_map(|_| sink.copy_writer()).collect();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let (mut rows, mut chunks) = (0u64, 0u64);
    let mut waited = Waited::default();
    // The table being copied: name, rows copied, since when.
    let mut table = (String::new(), 0u64, Instant::now());
    // Chunks being written, in chunk order; each is committed only after those before it.
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    // Tells the next chunk's task that the last one spawned has committed (`true`) or not.
    let mut last_commit: Option<oneshot::Receiver<bool>> = None;
    let mut reading = !idle.is_empty();
    loop {
        // Hand chunks to the free writers (reading the next chunk overlaps the writes).
        while reading && let Some(mut writer) = idle.pop() {
            let at = Instant::now();
            let read = source.copy_chunk(CHUNK_ROWS).await;
            waited.read += at.elapsed();
            let mut chunk = match read {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    idle.push(writer);
                    reading = false;
                    break;
                }
                Err(e) => {
                    tracing::warn!(pipeline, error = %e, "reading the direct copy failed; the rest of the copy goes through the log");
                    idle.push(writer);
                    reading = false;
                    break;
                }
            };
            if let Some(rename) = rename
                && let Err(e) = rename.copy_chunk(&mut chunk)
            {
                abort_all(in_flight);
                return Err(("sink", Stop::Failed(StageError::definite(e))));
            }
            let chunk = Arc::new(chunk);
            let (written, cancel) = (chunk.clone(), cancel.clone());
            // Commits form a chain: each waits for the one before to have committed.
            let (committed, next) = oneshot::channel();
            let previous = last_commit.replace(next);
            let task = tokio::spawn(async move {
                let result = write_and_commit(&cancel, &mut *writer, written, previous).await;
                // Nobody waits when the copy stopped: then nothing more commits anyway.
                let _ = committed.send(result.is_ok());
                (writer, result)
            });
            in_flight.push_back(InFlight { chunk, task });
        }
        let Some(InFlight { chunk, task }) = in_flight.pop_front() else {
            break;
        };
        let at = Instant::now();
        let joined = task.await;
        waited.write += at.elapsed();
        let (writer, committed) = match joined {
            Ok(done) => done,
            Err(e) => {
                abort_all(in_flight);
                return Err((
                    "sink",
                    Stop::Failed(StageError::definite(format!(
                        "a direct-copy writer panicked: {e}"
                    ))),
                ));
            }
        };
        match committed {
            Ok(()) => tidesync_core::failpoint::hit("direct-copy-before-log"),
            Err(Stop::Failed(e)) => {
                tracing::warn!(pipeline, table = %chunk.stream, error = %e, "the sink did not take a chunk of the direct copy; the rest of the copy goes through the log");
                source.copy_abandon(&chunk);
                break;
            }
            Err(stop @ Stop::Cancelled) => {
                abort_all(in_flight);
                return Err(("sink", stop));
            }
        }
        idle.push(writer);
        let at = Instant::now();
        let recorded = match record(pipeline, cancel, log, &chunk.position).await {
            Ok(()) => retry("ack", cancel, source, |s| s.ack(chunk.position.clone()))
                .await
                .map_err(|stop| ("source", stop)),
            Err(e) => Err(e),
        };
        waited.log += at.elapsed();
        if let Err(e) = recorded {
            // The target may hold more than the log; the next start reconciles them.
            abort_all(in_flight);
            return Err(e);
        }
        rows += chunk.rows;
        chunks += 1;
        if table.0 != chunk.stream {
            table = (chunk.stream.clone(), 0, Instant::now());
        }
        table.1 += chunk.rows;
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            tracing::info!(pipeline, "{}", progress(&table, chunk.table_rows));
        }
    }
    // After an abandoned chunk, the later ones are not committed: their transactions roll
    // back with their connections.
    abort_all(in_flight);
    retry("clear the direct copy's position", cancel, sink, |s| {
        s.clear_copied()
    })
    .await
    .map_err(|stop| ("sink", stop))?;
    if chunks > 0 {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        tracing::info!(
            pipeline,
            rows,
            chunks,
            seconds = secs,
            rows_per_s = (rows as f64 / secs) as u64,
            read_s = waited.read.as_secs_f64(),
            write_wait_s = waited.write.as_secs_f64(),
            log_s = waited.log.as_secs_f64(),
            "direct copy done (seconds spent waiting for the source, the writers and the log)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_says_share_and_time_left_when_the_size_is_known() {
        let table = (
            "items".to_owned(),
            250_000,
            Instant::now() - Duration::from_secs(5),
        );
        let line = progress(&table, Some(1_000_000));
        assert!(
            line.starts_with("direct copy of items: 250000 of about 1000000 rows (25%), "),
            "{line}"
        );
        assert!(line.ends_with("about 15 s left"), "{line}");
        // No estimate, or one the copy has passed: rows and rate only.
        for estimate in [None, Some(1_000)] {
            let line = progress(&table, estimate);
            assert!(
                line.starts_with("direct copy of items: 250000 rows, "),
                "{line}"
            );
            assert!(line.ends_with(" rows/s"), "{line}");
        }
    }
}
