//! The direct copy (DESIGN.md, "Log and state": a pipeline with a single database sink may
//! skip the log): on a fresh start of a pipeline with exactly one sink, when source and sink
//! both can, the initial copy goes from the source's `COPY .. TO STDOUT` straight into the
//! sink's `COPY .. FROM STDIN`, a chunk at a time, instead of through the log. The rows are
//! not decoded, logged or encoded; what the log records is the copy's progress (the source
//! position after each chunk), as the normal path would.
//!
//! Exactly-once: the sink records each chunk's position in the target in the chunk's own
//! transaction, and the log records it right after. A crash between the two leaves the target
//! one chunk ahead; [`reconcile`] at the next start finds that position in the target and
//! stores it in the log before the source resumes, so the chunk is not copied again. The
//! record is cleared once the log holds it (at the start, and when the direct copy ends), so a
//! stale record can never move the log backwards.
//!
//! Reading the next chunk overlaps writing the current one. Anything the sink refuses (a row
//! that exists already, a value its column type rejects) or the source fails to read ends the
//! direct copy: the source rewinds to the first chunk not in the target and the runtime goes
//! on as usual, sending those rows through the log (upserts, with errors naming the row).
//!
//! Rows copied this way are not in the log's current state. An update that leaves a TOASTed
//! value unchanged therefore reaches the sink as a patch of the columns it changed (see
//! `Op::Patch`), which the target applies to the row it holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidesync_core::{BatchKind, Captured, Log, Position, Sink, Source, TableSchema};
use tokio_util::sync::CancellationToken;

use crate::rename::Renamer;
use crate::retry::{Stop, retry};

/// Rows per chunk at most; sources cut their chunks smaller (PostgreSQL: `chunk_rows`, and
/// 16 MiB).
const CHUNK_ROWS: usize = 1_000_000;

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
    let schemas = match rename {
        Some(r) => r
            .schemas(schemas)
            .map_err(|e| ("sink", Stop::Failed(tidesync_core::StageError::definite(e))))?,
        None => schemas.to_vec(),
    };
    retry("open sink", cancel, sink, |s| s.open(schemas.clone()))
        .await
        .map_err(|stop| ("sink", stop))?;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let (mut rows, mut chunks) = (0u64, 0u64);
    let mut next = source.copy_chunk(CHUNK_ROWS).await;
    loop {
        let mut chunk = match next {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(pipeline, error = %e, "reading the direct copy failed; the rest of the copy goes through the log");
                break;
            }
        };
        if let Some(rename) = rename
            && let Err(e) = rename.copy_chunk(&mut chunk)
        {
            return Err(("sink", Stop::Failed(tidesync_core::StageError::definite(e))));
        }
        let chunk = Arc::new(chunk);
        let (written, read) = tokio::join!(
            retry("copy into the sink", cancel, sink, |s| s
                .copy(chunk.clone())),
            source.copy_chunk(CHUNK_ROWS)
        );
        match written {
            Ok(()) => tidesync_core::failpoint::hit("direct-copy-before-log"),
            Err(Stop::Failed(e)) => {
                tracing::warn!(pipeline, table = %chunk.stream, error = %e, "the sink did not take a chunk of the direct copy; the rest of the copy goes through the log");
                source.copy_abandon(&chunk);
                break;
            }
            Err(stop @ Stop::Cancelled) => return Err(("sink", stop)),
        }
        record(pipeline, cancel, log, &chunk.position).await?;
        retry("ack", cancel, source, |s| s.ack(chunk.position.clone()))
            .await
            .map_err(|stop| ("source", stop))?;
        rows += chunk.rows;
        chunks += 1;
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(pipeline, table = %chunk.stream, rows, rows_per_s = (rows as f64 / secs) as u64, "direct copy");
        }
        next = read;
    }
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
            "direct copy done"
        );
    }
    Ok(())
}
