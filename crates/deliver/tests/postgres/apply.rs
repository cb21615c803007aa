//! Applying batches: upserts, deletes, the applied seq, replays and rollbacks.

use tidesync_core::{Decimal, Key, Op, Row, Seq, Sink, Value};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_upsert_and_delete_and_record_the_applied_seq() {
    let pg = server();
    let (mut sink, applied) = open_sink(&pg, items_schema(), true).await;
    assert_eq!(applied, Some(Seq(0)));
    sink.apply(batch(vec![
        upsert(1, 1, Some("a"), Value::Float(1.5)),
        upsert(2, 2, Some("b"), Value::Int(2)),
        upsert(3, 3, Some("c"), Value::Null),
    ]))
    .await
    .unwrap();
    sink.apply(batch(vec![
        upsert(4, 2, Some("b2"), Value::Text("two".into())),
        delete(5, 3),
    ]))
    .await
    .unwrap();
    assert_eq!(items(&pg), "1|a|1.5\n2|b2|two");
    assert_eq!(applied_seq(&pg), "5");

    let (_again, applied) = open_sink(&pg, items_schema(), false).await;
    assert_eq!(applied, Some(Seq(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_is_not_applied_twice() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    let insert = batch(vec![upsert(1, 1, Some("a"), Value::Int(1))]);
    sink.apply(insert.clone()).await.unwrap();
    sink.apply(batch(vec![delete(2, 1)])).await.unwrap();
    // Seq 1 again, as after a crash before the store moved the cursor.
    sink.apply(insert).await.unwrap();
    assert_eq!(items(&pg), "");
    assert_eq!(applied_seq(&pg), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_straddling_the_applied_seq_applies_only_its_new_part() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    sink.apply(batch(vec![
        upsert(1, 1, Some("a"), Value::Int(1)),
        upsert(2, 2, Some("b"), Value::Int(2)),
    ]))
    .await
    .unwrap();
    // Seqs 1 and 2 carry other values here: had they been applied again, they would show.
    sink.apply(batch(vec![
        upsert(1, 1, Some("replayed"), Value::Int(100)),
        delete(2, 2),
        upsert(3, 3, Some("c"), Value::Int(3)),
    ]))
    .await
    .unwrap();
    assert_eq!(items(&pg), "1|a|1\n2|b|2\n3|c|3");
    assert_eq!(applied_seq(&pg), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_change_rolls_back_the_whole_batch_and_is_named() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    // Seq 4 breaks NOT NULL in the middle of what would be one multi-row statement.
    let entries = (1..=6)
        .map(|i| upsert(i, i as i64, (i != 4).then_some("x"), Value::Int(1)))
        .collect();
    let err = sink.apply(batch(entries)).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let message = err.to_string();
    for part in [
        "seq 4",
        "`items`",
        "key (4)",
        "23502",
        "column `sku`",
        "postgres://postgres@127.0.0.1",
    ] {
        assert!(message.contains(part), "{part:?} missing in: {message}");
    }
    assert_eq!(items(&pg), "");
    assert_eq!(applied_seq(&pg), "0");

    // The sink goes on after the error (a fixed batch applies).
    sink.apply(batch(vec![upsert(1, 1, Some("a"), Value::Int(1))]))
        .await
        .unwrap();
    assert_eq!(items(&pg), "1|a|1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_one_key_within_a_batch_apply_in_seq_order() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    sink.apply(batch(vec![
        upsert(1, 1, Some("a"), Value::Int(1)),
        upsert(2, 2, Some("b"), Value::Int(1)),
        upsert(3, 1, Some("a"), Value::Int(2)),
        delete(4, 2),
        upsert(5, 2, Some("b"), Value::Int(3)),
        upsert(6, 1, Some("a"), Value::Int(4)),
        delete(7, 1),
        upsert(8, 1, Some("a"), Value::Int(5)),
    ]))
    .await
    .unwrap();
    assert_eq!(items(&pg), "1|a|5\n2|b|3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_equal_only_to_the_server_still_apply_in_order() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    let row = |id: Value, price: i64| {
        Row(vec![
            ("id".into(), id),
            ("sku".into(), Value::from("a")),
            ("price".into(), Value::Int(price)),
        ])
    };
    // 1 and 1.0 differ as values but are one bigint key: one multi-row upsert cannot hold
    // both, and the sink falls back to one row per statement.
    sink.apply(batch(vec![
        entry(
            1,
            "items",
            Op::Insert,
            Key(vec![Value::Int(1)]),
            Some(row(Value::Int(1), 1)),
        ),
        entry(
            2,
            "items",
            Op::Update,
            Key(vec![Value::Float(1.0)]),
            Some(row(Value::Float(1.0), 2)),
        ),
    ]))
    .await
    .unwrap();
    assert_eq!(items(&pg), "1|a|2");
    assert_eq!(applied_seq(&pg), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_row_batch_applies_in_one_transaction() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    let rows = 10_000u64;
    let entries = (1..=rows)
        .map(|i| {
            let price = Value::Decimal(Decimal::parse(&format!("{i}.25")).unwrap());
            upsert(i, i as i64, Some("sku"), price)
        })
        .collect();
    let started = std::time::Instant::now();
    sink.apply(batch(entries)).await.unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "applied {rows} rows in {elapsed:?} ({:.0} rows/s)",
        rows as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        pg.psql(DB, "SELECT count(*), sum(price::numeric) FROM items")
            .unwrap(),
        "10000|50007500.00"
    );
    assert_eq!(applied_seq(&pg), "10000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_removes_the_applied_seq_and_keeps_the_rows() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    sink.apply(batch(vec![upsert(1, 1, Some("a"), Value::Int(1))]))
        .await
        .unwrap();
    let done = sink.forget().await.unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(
        pg.psql(DB, "SELECT count(*) FROM _tidesync_applied")
            .unwrap(),
        "0"
    );
    assert_eq!(items(&pg), "1|a|1");
    // A pipeline recreated later starts from nothing.
    let (_again, applied) = open_sink(&pg, items_schema(), false).await;
    assert_eq!(applied, Some(Seq(0)));
}

/// Has every row written to `items` record the statement that wrote it.
fn log_statements(pg: &Postgres) {
    pg.psql(
        DB,
        "CREATE TABLE statements (id bigint, query text);
         CREATE FUNCTION log_statement() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO statements VALUES (NEW.id, split_part(current_query(), ' ', 1)); RETURN NEW; END $$;
         CREATE TRIGGER log_statement BEFORE INSERT OR UPDATE ON items
           FOR EACH ROW EXECUTE FUNCTION log_statement();",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_inserts_are_copied_and_updates_upserted() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    log_statements(&pg);
    let mut update = upsert(3, 1, Some("a2"), Value::Int(2));
    update.change.op = Op::Update;
    sink.apply(batch(vec![
        upsert(1, 1, Some("a"), Value::Int(1)),
        upsert(2, 2, Some("b\tc\\d"), Value::Null),
        update,
        upsert(4, 3, Some("e"), Value::Int(3)),
    ]))
    .await
    .unwrap();
    assert_eq!(items(&pg), "1|a2|2\n2|b\tc\\d|\n3|e|3");
    // Seq 4 alone is a one-row run: an upsert. (An upsert of an existing row fires both
    // BEFORE INSERT and BEFORE UPDATE.)
    assert_eq!(
        pg.psql(
            DB,
            "SELECT DISTINCT id, query FROM statements ORDER BY id, query"
        )
        .unwrap(),
        "1|COPY\n1|INSERT\n2|COPY\n3|INSERT"
    );
    assert_eq!(applied_seq(&pg), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_of_rows_the_target_already_has_fall_back_to_upserts() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    pg.psql(
        DB,
        "INSERT INTO items VALUES (2, 'old', '0'), (3, 'old', '0')",
    )
    .unwrap();
    let entries = (1..=4)
        .map(|i| upsert(i, i as i64, Some("new"), Value::Int(i as i64)))
        .collect();
    sink.apply(batch(entries)).await.unwrap();
    assert_eq!(items(&pg), "1|new|1\n2|new|2\n3|new|3\n4|new|4");
    assert_eq!(applied_seq(&pg), "4");
    // The next run of new rows applies too (whether copied or upserted).
    let entries = (5..=8)
        .map(|i| upsert(i, i as i64, Some("new"), Value::Int(i as i64)))
        .collect();
    sink.apply(batch(entries)).await.unwrap();
    assert_eq!(
        pg.psql(DB, "SELECT count(*), min(id), max(id) FROM items")
            .unwrap(),
        "8|1|8"
    );
    assert_eq!(applied_seq(&pg), "8");
}
