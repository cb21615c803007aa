#![allow(clippy::unwrap_used)]

//! Runtime behaviour with in-memory sources and sinks and the real SQLite store.

use std::sync::Mutex;

use tidesync_core::{Captured, Change, Key, LogEntry, Op, Position, Row, Value};
use tidesync_store::SqliteStore;

use super::*;

/// Behaves like a real source: everything not yet acknowledged is handed out again after a
/// reopen at the stored position.
#[derive(Debug, Default)]
struct SourceState {
    batches: Vec<Captured>,
    /// Index of the next batch `poll` hands out.
    next: usize,
    opened_from: Vec<Option<Position>>,
    /// What `open` declares.
    schemas: Vec<TableSchema>,
    acked: Vec<Position>,
}

#[derive(Debug, Clone, Default)]
struct MemSource(Arc<Mutex<SourceState>>);

impl MemSource {
    /// Queues `batches` batches of `per_batch` inserts with keys counting from `first_id`.
    fn with_batches(first_id: i64, batches: i64, per_batch: i64) -> Self {
        let s = MemSource::default();
        for b in 0..batches {
            let changes = (0..per_batch)
                .map(|i| insert(first_id + b * per_batch + i))
                .collect();
            let last = first_id + (b + 1) * per_batch - 1;
            s.0.lock().unwrap().batches.push(Captured {
                refreshed: Vec::new(),
                fingerprints: Vec::new(),
                kind: BatchKind::Incremental,
                changes,
                position: Position::RowId(last),
                progress: None,
            });
        }
        s
    }
}

fn insert(id: i64) -> Change {
    Change {
        stream: "items".into(),
        op: Op::Insert,
        key: Key(vec![Value::Int(id)]),
        before: None,
        after: Some(Row(vec![("id".into(), Value::Int(id))])),
        commit_time_us: id,
        position: Some(Position::RowId(id)),
        txn: None,
        unchanged: Vec::new(),
    }
}

impl Source for MemSource {
    fn open(
        &mut self,
        from: Option<Position>,
    ) -> tidesync_core::BoxFuture<'_, Result<tidesync_core::Opened, StageError>> {
        let state = self.0.clone();
        Box::pin(async move {
            let mut s = state.lock().unwrap();
            // Resume after what the store already has.
            let done = match &from {
                Some(Position::RowId(done)) => *done,
                _ => 0,
            };
            s.next = s
                .batches
                .iter()
                .position(|c| matches!(c.position, Position::RowId(p) if p > done))
                .unwrap_or(s.batches.len());
            s.opened_from.push(from);
            Ok(tidesync_core::Opened {
                schemas: s.schemas.clone(),
                start: Some(Position::RowId(0)),
            })
        })
    }

    fn poll(
        &mut self,
        _max: usize,
        wait: Duration,
    ) -> tidesync_core::BoxFuture<'_, Result<Option<Captured>, StageError>> {
        let state = self.0.clone();
        Box::pin(async move {
            let next = {
                let mut s = state.lock().unwrap();
                let batch = s.batches.get(s.next).cloned();
                s.next += usize::from(batch.is_some());
                batch
            };
            if next.is_none() {
                tokio::time::sleep(wait.min(Duration::from_millis(10))).await;
            }
            Ok(next)
        })
    }

    fn remove(&mut self) -> tidesync_core::BoxFuture<'_, Result<Vec<String>, StageError>> {
        Box::pin(async { Ok(vec![]) })
    }

    fn ack(&mut self, position: Position) -> tidesync_core::BoxFuture<'_, Result<(), StageError>> {
        self.0.lock().unwrap().acked.push(position);
        Box::pin(async { Ok(()) })
    }
}

#[derive(Debug, Default)]
struct SinkState {
    applied: Vec<Seq>,
    /// Fail this many applies transiently first.
    transient_failures: u32,
    /// Fail definitely when a batch contains this seq.
    poison: Option<Seq>,
    /// Sleep this long per apply.
    delay: Duration,
    /// What the target reports as applied on open.
    recorded: Option<Seq>,
    /// (head seq, first seq of the batch) at each apply.
    observed: Vec<(u64, u64)>,
    stats: Option<Arc<PipelineStats>>,
    /// The schemas given to `open`, and the changes of the fresh entries applied.
    opened: Vec<TableSchema>,
    changes: Vec<Change>,
}

#[derive(Debug, Clone, Default)]
struct MemSink(Arc<Mutex<SinkState>>);

impl Sink for MemSink {
    fn open(
        &mut self,
        schemas: Vec<TableSchema>,
    ) -> tidesync_core::BoxFuture<'_, Result<Option<Seq>, StageError>> {
        let recorded = {
            let mut s = self.0.lock().unwrap();
            s.opened = schemas;
            s.recorded
        };
        Box::pin(async move { Ok(recorded) })
    }

    fn forget(&mut self) -> tidesync_core::BoxFuture<'_, Result<Vec<String>, StageError>> {
        Box::pin(async { Ok(vec![]) })
    }

    fn apply(&mut self, batch: Arc<Batch>) -> tidesync_core::BoxFuture<'_, Result<(), StageError>> {
        let state = self.0.clone();
        Box::pin(async move {
            let delay = state.lock().unwrap().delay;
            tokio::time::sleep(delay).await;
            let mut s = state.lock().unwrap();
            if s.transient_failures > 0 {
                s.transient_failures -= 1;
                return Err(StageError::transient("target restarting"));
            }
            if let Some(p) = s.poison
                && batch.entries.iter().any(|e| e.seq == p)
            {
                return Err(StageError::definite(format!(
                    "seq {p} violates a constraint"
                )));
            }
            if let Some(stats) = &s.stats {
                let head = stats.head.load(Ordering::Acquire);
                s.observed.push((head, batch.first_seq.0));
            }
            // Exactly-once, as a real sink does with its recorded seq.
            let done = s
                .applied
                .last()
                .copied()
                .or(s.recorded)
                .unwrap_or(Seq::ZERO);
            let fresh: Vec<Seq> = batch
                .entries
                .iter()
                .map(|e: &LogEntry| e.seq)
                .filter(|q| *q > done)
                .collect();
            s.changes.extend(
                batch
                    .entries
                    .iter()
                    .filter(|e| e.seq > done)
                    .map(|e| e.change.clone()),
            );
            s.applied.extend(fresh);
            Ok(())
        })
    }
}

fn store() -> (tempfile::TempDir, Arc<dyn Log>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    (dir, Arc::new(store))
}

/// Sinks get at most `batch_size` entries at a time (one batch), as most tests count on.
fn options(batch_size: usize, max_lag: u64) -> PipelineOptions {
    PipelineOptions {
        batch_size,
        max_lag,
        poll_wait: Duration::from_millis(20),
        sink_batches: 1,
        ..PipelineOptions::default()
    }
}

fn pipeline(
    source: &MemSource,
    sinks: &[(&str, &MemSink)],
    log: &Arc<dyn Log>,
    opts: PipelineOptions,
) -> Pipeline {
    Pipeline::new(
        "p",
        "mem",
        Box::new(source.clone()),
        sinks
            .iter()
            .map(|(n, s)| (n.to_string(), Box::new((*s).clone()) as Box<dyn Sink>))
            .collect(),
        log.clone(),
        opts,
    )
}

/// Waits until `done` holds, for at most 20 s.
async fn until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "condition not met within 20 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn seqs(range: std::ops::RangeInclusive<u64>) -> Vec<Seq> {
    range.map(Seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_every_sink_in_seq_order() {
    let (_dir, log) = store();
    let source = MemSource::with_batches(1, 10, 7);
    let (a, b) = (MemSink::default(), MemSink::default());
    let p = pipeline(&source, &[("a", &a), ("b", &b)], &log, options(5, 1000));
    let cancel = CancellationToken::new();
    let run = tokio::spawn(p.run(cancel.clone()));
    until(|| a.0.lock().unwrap().applied.len() == 70 && b.0.lock().unwrap().applied.len() == 70)
        .await;
    // The cursors move right after the applies; wait for them before stopping.
    let cursors_at = |want: u64| {
        let log = log.clone();
        async move {
            let st = log.status("p").await.unwrap();
            st.cursors.len() == 2 && st.cursors.iter().all(|(_, c)| c.0 == want)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cursors_at(70).await {
        assert!(Instant::now() < deadline, "cursors did not reach 70");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(a.0.lock().unwrap().applied, seqs(1..=70));
    assert_eq!(b.0.lock().unwrap().applied, seqs(1..=70));
    // The source was acked once per batch, after its append, in order.
    let acked = source.0.lock().unwrap().acked.clone();
    assert_eq!(
        acked,
        (1..=10).map(|b| Position::RowId(b * 7)).collect::<Vec<_>>()
    );
    let st = log.status("p").await.unwrap();
    assert_eq!(
        st.cursors,
        [("a".to_owned(), Seq(70)), ("b".to_owned(), Seq(70))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_sink_errors_are_retried_without_loss_or_duplicates() {
    let (_dir, log) = store();
    let source = MemSource::with_batches(1, 3, 4);
    let sink = MemSink::default();
    sink.0.lock().unwrap().transient_failures = 2;
    let p = pipeline(&source, &[("s", &sink)], &log, options(100, 1000));
    let cancel = CancellationToken::new();
    let run = tokio::spawn(p.run(cancel.clone()));
    until(|| sink.0.lock().unwrap().applied.len() == 12).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(sink.0.lock().unwrap().applied, seqs(1..=12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definite_sink_error_stops_the_pipeline_and_names_the_sink() {
    let (_dir, log) = store();
    let source = MemSource::with_batches(1, 4, 5);
    let (good, bad) = (MemSink::default(), MemSink::default());
    bad.0.lock().unwrap().poison = Some(Seq(7));
    let p = pipeline(
        &source,
        &[("good", &good), ("bad", &bad)],
        &log,
        options(5, 1000),
    );
    let err = tokio::time::timeout(Duration::from_secs(20), p.run(CancellationToken::new()))
        .await
        .expect("the pipeline stops by itself")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pipeline p: sink bad: seq 7 violates a constraint"
    );
    // The failing sink's cursor stayed before the poisoned batch.
    let st = log.status("p").await.unwrap();
    let bad_cursor = st.cursors.iter().find(|(n, _)| n == "bad").unwrap().1;
    assert_eq!(bad_cursor, Seq(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_holds_capture_within_max_lag() {
    let (_dir, log) = store();
    let source = MemSource::with_batches(1, 60, 10);
    let sink = MemSink::default();
    sink.0.lock().unwrap().delay = Duration::from_millis(3);
    let p = pipeline(&source, &[("slow", &sink)], &log, options(10, 50));
    sink.0.lock().unwrap().stats = Some(p.stats.clone());
    let cancel = CancellationToken::new();
    let run = tokio::spawn(p.run(cancel.clone()));
    until(|| sink.0.lock().unwrap().applied.len() == 600).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let observed = sink.0.lock().unwrap().observed.clone();
    // Capture may append one batch (10) past the limit before it sees the lag.
    let worst = observed
        .iter()
        .map(|(head, first)| head + 1 - first)
        .max()
        .unwrap();
    assert!(
        worst <= 50 + 10,
        "head ran {worst} changes ahead of the sink"
    );
    assert!(observed.len() >= 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_store_without_duplicates() {
    let (_dir, log) = store();
    let source = MemSource::with_batches(1, 20, 5);
    let sink = MemSink::default();
    sink.0.lock().unwrap().delay = Duration::from_millis(2);
    let cancel = CancellationToken::new();
    let run = tokio::spawn(
        pipeline(&source, &[("s", &sink)], &log, options(5, 1000)).run(cancel.clone()),
    );
    until(|| sink.0.lock().unwrap().applied.len() >= 30).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let stored = log.position("p").await.unwrap();
    assert!(matches!(stored, Some(Position::RowId(p)) if p >= 30));
    // A new runtime on the same store: the source is opened at the stored position and the
    // sink continues after its cursor.
    let cancel = CancellationToken::new();
    let run = tokio::spawn(
        pipeline(&source, &[("s", &sink)], &log, options(5, 1000)).run(cancel.clone()),
    );
    until(|| sink.0.lock().unwrap().applied.len() == 100).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(sink.0.lock().unwrap().applied, seqs(1..=100));
    assert_eq!(source.0.lock().unwrap().opened_from, [None, stored]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_ahead_of_the_store_is_refused() {
    let (_dir, log) = store();
    let source = MemSource::with_batches(1, 1, 3);
    let sink = MemSink::default();
    sink.0.lock().unwrap().recorded = Some(Seq(500));
    let p = pipeline(&source, &[("s", &sink)], &log, options(5, 1000));
    let err = tokio::time::timeout(Duration::from_secs(20), p.run(CancellationToken::new()))
        .await
        .expect("the pipeline stops by itself")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the target has applied up to seq 500"),
        "{err}"
    );
    assert!(sink.0.lock().unwrap().applied.is_empty());
}

/// `items (id)`, renamed to `products (item_id)` in sink `renamed` and left alone in `plain`.
fn renames(columns: &[(&str, &str)]) -> crate::rename::Renamer {
    let renames = std::collections::BTreeMap::from([(
        "items".to_owned(),
        crate::config::TableRename {
            table: "products".to_owned(),
            columns: columns
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        },
    )]);
    crate::rename::Renamer::new("renamed", &renames).unwrap()
}

fn items_schema() -> TableSchema {
    TableSchema {
        name: "items".into(),
        columns: vec![tidesync_core::ColumnSchema {
            name: "id".into(),
            type_name: "INTEGER".into(),
            nullable: false,
        }],
        key: vec!["id".into()],
        dialect: tidesync_core::Dialect::Sqlite,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_with_renames_gets_renamed_schemas_and_changes_and_the_others_as_read() {
    let (_dir, log) = store();
    let source = MemSource::with_batches(1, 2, 3);
    source.0.lock().unwrap().schemas = vec![items_schema()];
    let (renamed, plain) = (MemSink::default(), MemSink::default());
    let mut p = pipeline(
        &source,
        &[("renamed", &renamed), ("plain", &plain)],
        &log,
        options(4, 1000),
    );
    p.renames
        .insert("renamed".into(), renames(&[("id", "item_id")]));
    let cancel = CancellationToken::new();
    let run = tokio::spawn(p.run(cancel.clone()));
    until(|| {
        renamed.0.lock().unwrap().applied.len() == 6 && plain.0.lock().unwrap().applied.len() == 6
    })
    .await;
    cancel.cancel();
    run.await.unwrap().unwrap();

    let got = renamed.0.lock().unwrap();
    assert_eq!(got.opened.len(), 1);
    assert_eq!(got.opened[0].name, "products");
    assert_eq!(got.opened[0].columns[0].name, "item_id");
    assert_eq!(got.opened[0].key, ["item_id"]);
    let expected: Vec<Change> = (1..=6)
        .map(|id| Change {
            stream: "products".into(),
            after: Some(Row(vec![("item_id".into(), Value::Int(id))])),
            ..insert(id)
        })
        .collect();
    assert_eq!(got.changes, expected);

    let got = plain.0.lock().unwrap();
    assert_eq!(got.opened, [items_schema()]);
    assert_eq!(got.changes, (1..=6).map(insert).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_of_a_column_the_source_lacks_stops_the_pipeline_naming_the_sink() {
    let (_dir, log) = store();
    let source = MemSource::with_batches(1, 1, 3);
    source.0.lock().unwrap().schemas = vec![items_schema()];
    let sink = MemSink::default();
    let mut p = pipeline(&source, &[("renamed", &sink)], &log, options(4, 1000));
    p.renames
        .insert("renamed".into(), renames(&[("sku", "code")]));
    let err = tokio::time::timeout(Duration::from_secs(20), p.run(CancellationToken::new()))
        .await
        .expect("the pipeline stops by itself")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pipeline p: sink renamed: sinks.renamed.tables.items.columns renames column `sku`, \
         which table `items` does not have (its columns: id)"
    );
    assert!(sink.0.lock().unwrap().applied.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_is_behind_applies_several_batches_at_once() {
    let (_dir, log) = store();
    let source = MemSource::with_batches(1, 40, 5);
    let sink = MemSink::default();
    sink.0.lock().unwrap().delay = Duration::from_millis(20);
    let p = pipeline(
        &source,
        &[("slow", &sink)],
        &log,
        PipelineOptions {
            sink_batches: 4,
            ..options(5, 1000)
        },
    );
    sink.0.lock().unwrap().stats = Some(p.stats.clone());
    let cancel = CancellationToken::new();
    let run = tokio::spawn(p.run(cancel.clone()));
    until(|| sink.0.lock().unwrap().applied.len() == 200).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let state = sink.0.lock().unwrap();
    assert_eq!(state.applied, seqs(1..=200));
    // Batch sizes from the first seq of each apply: never above 4 x 5, and larger than one
    // batch while the sink is behind.
    let firsts: Vec<u64> = state.observed.iter().map(|(_, first)| *first).collect();
    let sizes: Vec<u64> = firsts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(sizes.iter().all(|&n| n <= 20), "{sizes:?}");
    assert!(sizes.iter().any(|&n| n > 5), "{sizes:?}");
}
