//! The PostgreSQL log source (`pg::source`) against a real PostgreSQL, without the runtime:
//! the initial copy in key order under the slot's snapshot, the hand-off to the stream, the
//! watermark copy after a restart, unchanged TOASTed values and misconfiguration errors.

use std::time::Duration;

use tidesync_capture::pg::source::{PgLogOptions, PgLogSource};
use tidesync_core::{Captured, Op, Position, Source, Value};
use tidesync_testkit::Postgres;

const DB: &str = "app";

fn server(rows: i64) -> Postgres {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg.psql(
        DB,
        &format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text, note text); \
             INSERT INTO items SELECT g, 'item ' || g, NULL FROM generate_series(1, {rows}) g;"
        ),
    )
    .unwrap();
    pg
}

fn ids(captured: &Captured) -> Vec<i64> {
    captured
        .changes
        .iter()
        .map(|c| match c.key.0.first() {
            Some(Value::Int(i)) => *i,
            other => panic!("unexpected key {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_in_key_order_then_streams_what_came_after() {
    let pg = server(2_500);
    let mut opts = PgLogOptions::new(pg.url(DB), "p1", vec!["items".into()]);
    opts.chunk_rows = 1_000;
    let mut source = PgLogSource::new(opts);
    let opened = source.open(None).await.unwrap();
    assert!(matches!(opened.start, Some(Position::Snapshot { .. })));
    // Committed after the slot's snapshot: must come through the stream, not the copy.
    pg.psql(DB, "INSERT INTO items VALUES (9001, 'late', NULL); UPDATE items SET name = 'changed' WHERE id = 1;")
        .unwrap();
    let mut copied = Vec::new();
    loop {
        let batch = source
            .poll(700, Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        assert!(batch.changes.iter().all(|c| c.op == Op::Read));
        copied.extend(ids(&batch));
        source.ack(batch.position.clone()).await.unwrap();
        if matches!(batch.position, Position::Lsn(_)) {
            break;
        }
    }
    assert_eq!(copied, (1..=2_500).collect::<Vec<_>>());
    let mut streamed = Vec::new();
    for _ in 0..50 {
        if let Some(batch) = source.poll(100, Duration::from_millis(200)).await.unwrap() {
            streamed.extend(batch.changes.iter().map(|c| (c.op, ids_of(c))));
            source.ack(batch.position).await.unwrap();
        }
        if streamed.len() >= 2 {
            break;
        }
    }
    assert_eq!(streamed, vec![(Op::Insert, 9001), (Op::Update, 1)]);
}

fn ids_of(change: &tidesync_core::Change) -> i64 {
    match change.key.0.first() {
        Some(Value::Int(i)) => *i,
        other => panic!("unexpected key {other:?}"),
    }
}
