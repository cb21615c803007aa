//! Patches (`Op::Patch`): an `UPDATE` of the columns a patch holds, on the row of its key.

use tidesync_core::{Decimal, Key, Op, Row, Seq, Value};

use super::*;

/// A patch of `items` row `id` setting `columns`.
fn patch(seq: u64, id: i64, columns: Vec<(&str, Value)>) -> LogEntry {
    let row = Row(columns
        .into_iter()
        .map(|(c, v)| (c.to_owned(), v))
        .collect());
    entry(
        seq,
        "items",
        Op::Patch,
        Key(vec![Value::Int(id)]),
        Some(row),
    )
}

/// A sink whose `items` holds rows 1 and 2 (`a`, `b`; price = id), applied up to seq 2.
async fn with_two_rows(pg: &Postgres) -> PostgresSink {
    let (mut sink, _) = open_sink(pg, items_schema(), true).await;
    sink.apply(batch(vec![
        upsert(1, 1, Some("a"), Value::Int(1)),
        upsert(2, 2, Some("b"), Value::Int(2)),
    ]))
    .await
    .unwrap();
    sink
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_sets_only_its_columns_and_a_not_null_column_keeps_its_value() {
    let pg = server();
    let mut sink = with_two_rows(&pg).await;
    // `sku` is NOT NULL and absent from the patch: an INSERT .. ON CONFLICT would fail.
    sink.apply(batch(vec![patch(3, 1, vec![("price", Value::Int(10))])]))
        .await
        .unwrap();
    assert_eq!(items(&pg), "1|a|10\n2|b|2");
    assert_eq!(applied_seq(&pg), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_of_a_missing_key_changes_nothing_and_the_batch_commits_its_seq() {
    let pg = server();
    let mut sink = with_two_rows(&pg).await;
    let mut update = upsert(4, 2, Some("b2"), Value::Int(20));
    update.change.op = Op::Update;
    sink.apply(batch(vec![
        patch(3, 9, vec![("price", Value::Int(90))]),
        update,
    ]))
    .await
    .unwrap();
    assert_eq!(items(&pg), "1|a|1\n2|b2|20");
    assert_eq!(applied_seq(&pg), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changing_patch_moves_the_row_and_keeps_its_other_columns() {
    let pg = server();
    let mut sink = with_two_rows(&pg).await;
    sink.apply(batch(vec![patch(
        3,
        1,
        vec![("id", Value::Int(5)), ("price", Value::Int(50))],
    )]))
    .await
    .unwrap();
    assert_eq!(items(&pg), "2|b|2\n5|a|50");
    assert_eq!(applied_seq(&pg), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_keep_their_place_among_runs_of_their_keys() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    // Each patch sits between changes of its old and its new key; grouping or COPY across it
    // would apply them in another order.
    sink.apply(batch(vec![
        upsert(1, 1, Some("a"), Value::Int(1)),
        upsert(2, 2, Some("b"), Value::Int(2)),
        patch(3, 1, vec![("id", Value::Int(3)), ("price", Value::Int(30))]),
        upsert(4, 1, Some("new"), Value::Int(4)),
        upsert(5, 4, Some("d"), Value::Int(5)),
        patch(6, 3, vec![("price", Value::Int(31))]),
        delete(7, 3),
        patch(8, 2, vec![("sku", Value::from("b2"))]),
        delete(9, 4),
        patch(10, 4, vec![("price", Value::Int(99))]),
    ]))
    .await
    .unwrap();
    assert_eq!(items(&pg), "1|new|4\n2|b2|2");
    assert_eq!(applied_seq(&pg), "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_binds_its_values_and_key_to_the_column_types() {
    let pg = server();
    pg.psql(
        DB,
        "CREATE TABLE items (id integer PRIMARY KEY, sku text NOT NULL, price numeric, at timestamptz);
         INSERT INTO items VALUES (1, 'a', 1, '2000-01-01T00:00:00Z')",
    )
    .unwrap();
    let (mut sink, _) = open_sink(&pg, items_schema(), false).await;
    sink.apply(batch(vec![patch(
        1,
        1,
        vec![
            ("price", Value::Decimal(Decimal::parse("12.50").unwrap())),
            // 2024-01-02T03:04:05.000006Z
            ("at", Value::Timestamp(1_704_164_645_000_006)),
        ],
    )]))
    .await
    .unwrap();
    assert_eq!(
        pg.psql(
            DB,
            "SELECT id, sku, price, at AT TIME ZONE 'UTC' FROM items"
        )
        .unwrap(),
        "1|a|12.50|2024-01-02 03:04:05.000006"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_adds_a_column_the_table_lacks() {
    let pg = server();
    let mut sink = with_two_rows(&pg).await;
    sink.apply(batch(vec![patch(3, 2, vec![("note", Value::from("hi"))])]))
        .await
        .unwrap();
    assert_eq!(
        pg.psql(DB, "SELECT id, sku, note FROM items ORDER BY id")
            .unwrap(),
        "1|a|\n2|b|hi"
    );
    // Without create_tables the missing column is a definite error naming the change.
    let (mut strict, applied) = open_sink(&pg, items_schema(), false).await;
    assert_eq!(applied, Some(Seq(3)));
    let err = strict
        .apply(batch(vec![patch(4, 1, vec![("other", Value::Int(1))])]))
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("seq 4") && message.contains("no column other"),
        "{message}"
    );
}
