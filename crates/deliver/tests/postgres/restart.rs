//! The target restarting between batches.

use std::time::{Duration, Instant};

use tidesync_core::{Sink, Value};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_between_batches_fails_transiently_then_a_retry_applies_once() {
    let mut pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    let first = (1..=100)
        .map(|i| upsert(i, i as i64, Some("a"), Value::Int(1)))
        .collect();
    sink.apply(batch(first)).await.unwrap();

    pg.restart().unwrap();

    let second = batch(
        (101..=200)
            .map(|i| upsert(i, i as i64, Some("b"), Value::Int(2)))
            .chain([delete(201, 1)])
            .collect(),
    );
    // The old connection is gone: the first try fails, transiently.
    let err = sink.apply(second.clone()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sink.apply(second.clone()).await {
            Ok(()) => break,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("retrying after the restart: {e}"),
        }
    }
    // Applied again, as after a lost COMMIT reply: nothing doubles.
    sink.apply(second).await.unwrap();
    assert_eq!(
        pg.psql(
            DB,
            "SELECT count(*), count(*) FILTER (WHERE sku = 'b'), min(id), max(id) FROM items"
        )
        .unwrap(),
        "199|100|2|200"
    );
    assert_eq!(applied_seq(&pg), "201");
}
