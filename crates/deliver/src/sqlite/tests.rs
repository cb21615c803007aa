#![allow(clippy::unwrap_used)]

use tidesync_core::{BatchKind, Change, ColumnSchema, Decimal, Key, LogEntry, Row};

use super::*;

fn schema() -> Vec<TableSchema> {
    let col = |name: &str, ty: &str, nullable| ColumnSchema {
        name: name.into(),
        type_name: ty.into(),
        nullable,
    };
    vec![TableSchema {
        name: "items".into(),
        columns: vec![
            col("id", "INTEGER", false),
            col("sku", "TEXT", false),
            col("price", "", true),
        ],
        key: vec!["id".into()],
        dialect: Default::default(),
    }]
}

fn entry(seq: u64, op: Op, id: i64, price: Option<Value>) -> LogEntry {
    LogEntry {
        seq: Seq(seq),
        change: Change {
            stream: "items".into(),
            op,
            key: Key(vec![Value::Int(id)]),
            before: None,
            after: price.map(|p| {
                Row(vec![
                    ("id".into(), Value::Int(id)),
                    ("sku".into(), Value::Text(format!("sku-{id}"))),
                    ("price".into(), p),
                ])
            }),
            commit_time_us: 0,
            position: None,
            txn: None,
            unchanged: Vec::new(),
        },
    }
}

fn batch(entries: Vec<LogEntry>) -> Arc<Batch> {
    Arc::new(Batch {
        pipeline: "p".into(),
        kind: BatchKind::Incremental,
        first_seq: entries.first().map_or(Seq(0), |e| e.seq),
        last_seq: entries.last().map_or(Seq(0), |e| e.seq),
        entries,
        position: None,
    })
}

fn rows(path: &Path) -> Vec<(i64, String, rusqlite::types::Value)> {
    let conn = Connection::open(path).unwrap();
    let mut st = conn
        .prepare("SELECT id, sku, price FROM items ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn batches_upsert_and_delete_and_record_the_applied_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica/target.db");
    let mut sink = SqliteSink::new(&path, "p", "replica", true);
    assert_eq!(sink.open(schema()).await.unwrap(), Some(Seq(0)));
    sink.apply(batch(vec![
        entry(1, Op::Insert, 1, Some(Value::Float(1.5))),
        entry(
            2,
            Op::Insert,
            2,
            Some(Value::Decimal(Decimal::parse("2.50").unwrap())),
        ),
        entry(3, Op::Update, 1, Some(Value::Null)),
        entry(4, Op::Delete, 2, None),
        entry(5, Op::Read, 3, Some(Value::Int(3))),
    ]))
    .await
    .unwrap();
    use rusqlite::types::Value as V;
    assert_eq!(
        rows(&path),
        [
            (1, "sku-1".to_owned(), V::Null),
            (3, "sku-3".to_owned(), V::Integer(3))
        ]
    );
    let mut again = SqliteSink::new(&path, "p", "replica", false);
    assert_eq!(again.open(schema()).await.unwrap(), Some(Seq(5)));
    // Another sink name on the same database keeps its own seq.
    let mut other = SqliteSink::new(&path, "p", "other", false);
    assert_eq!(other.open(schema()).await.unwrap(), Some(Seq(0)));
}

#[tokio::test]
async fn a_replayed_batch_is_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let mut sink = SqliteSink::new(&path, "p", "replica", true);
    sink.open(schema()).await.unwrap();
    sink.apply(batch(vec![entry(1, Op::Insert, 1, Some(Value::Int(1)))]))
        .await
        .unwrap();
    sink.apply(batch(vec![entry(2, Op::Delete, 1, None)]))
        .await
        .unwrap();
    // The store's cursor did not move before a crash: the first batch arrives again. Applying
    // it would resurrect the deleted row.
    sink.apply(batch(vec![entry(1, Op::Insert, 1, Some(Value::Int(1)))]))
        .await
        .unwrap();
    assert!(rows(&path).is_empty());
    // A batch straddling the applied seq applies only its new part.
    sink.apply(batch(vec![
        entry(2, Op::Insert, 9, Some(Value::Int(9))),
        entry(3, Op::Insert, 4, Some(Value::Int(4))),
    ]))
    .await
    .unwrap();
    assert_eq!(rows(&path).iter().map(|r| r.0).collect::<Vec<_>>(), [4]);
}

#[tokio::test]
async fn a_failing_change_rolls_back_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let mut sink = SqliteSink::new(&path, "p", "replica", true);
    sink.open(schema()).await.unwrap();
    let mut bad = entry(2, Op::Insert, 2, Some(Value::Int(2)));
    bad.change.after.as_mut().unwrap().0[1].1 = Value::Null; // sku is NOT NULL
    let err = sink
        .apply(batch(vec![
            entry(1, Op::Insert, 1, Some(Value::Int(1))),
            bad,
        ]))
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    let msg = err.to_string();
    assert!(
        msg.contains("seq 2 on `items` key (2): NOT NULL constraint failed: items.sku"),
        "{msg}"
    );
    assert!(
        rows(&path).is_empty(),
        "nothing of the failed batch may remain"
    );
    let mut again = SqliteSink::new(&path, "p", "replica", false);
    assert_eq!(again.open(schema()).await.unwrap(), Some(Seq(0)));
}

#[tokio::test]
async fn missing_tables_are_an_error_unless_created() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = SqliteSink::new(&dir.path().join("t.db"), "p", "replica", false);
    let err = sink.open(schema()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("table `items` does not exist (set create_tables = true"),
        "{err}"
    );
}

#[test]
fn generated_sql_quotes_identifiers() {
    assert_eq!(
        upsert_sql("we\"ird", &["id".into(), "a b".into()], &["id".into()]),
        "INSERT INTO \"we\"\"ird\" (\"id\", \"a b\") VALUES (?1, ?2) ON CONFLICT (\"id\") DO UPDATE SET \"a b\" = excluded.\"a b\""
    );
    assert_eq!(
        upsert_sql("t", &["k".into()], &["k".into()]),
        "INSERT INTO \"t\" (\"k\") VALUES (?1) ON CONFLICT (\"k\") DO NOTHING"
    );
    assert_eq!(
        delete_sql("t", &["a".into(), "b".into()]),
        "DELETE FROM \"t\" WHERE \"a\" = ?1 AND \"b\" = ?2"
    );
    assert_eq!(
        patch_sql("t", &["id".into(), "a b".into()], &["id".into()]),
        "UPDATE \"t\" SET \"id\" = ?1, \"a b\" = ?2 WHERE \"id\" = ?3"
    );
}

/// A patch of `items` row `key` setting `columns`.
fn patch(seq: u64, key: i64, columns: Vec<(&str, Value)>) -> LogEntry {
    let mut e = entry(seq, Op::Patch, key, None);
    e.change.after = Some(Row(columns
        .into_iter()
        .map(|(c, v)| (c.to_owned(), v))
        .collect()));
    e
}

/// A sink on a new target whose `items` holds rows 1 and 2 (`sku-1`, `sku-2`; price = id).
async fn with_two_rows(path: &Path) -> SqliteSink {
    let mut sink = SqliteSink::new(path, "p", "replica", true);
    sink.open(schema()).await.unwrap();
    sink.apply(batch(vec![
        entry(1, Op::Insert, 1, Some(Value::Int(1))),
        entry(2, Op::Insert, 2, Some(Value::Int(2))),
    ]))
    .await
    .unwrap();
    sink
}

#[tokio::test]
async fn a_patch_sets_only_its_columns_and_the_others_keep_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let mut sink = with_two_rows(&path).await;
    // `sku` is NOT NULL and absent: an upsert would fail, the patch leaves it.
    sink.apply(batch(vec![patch(3, 1, vec![("price", Value::Int(10))])]))
        .await
        .unwrap();
    use rusqlite::types::Value as V;
    assert_eq!(
        rows(&path),
        [
            (1, "sku-1".to_owned(), V::Integer(10)),
            (2, "sku-2".to_owned(), V::Integer(2))
        ]
    );
}

#[tokio::test]
async fn a_patch_of_a_missing_key_changes_nothing_and_the_batch_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let mut sink = with_two_rows(&path).await;
    sink.apply(batch(vec![
        patch(3, 9, vec![("price", Value::Int(10))]),
        entry(4, Op::Update, 2, Some(Value::Int(20))),
    ]))
    .await
    .unwrap();
    use rusqlite::types::Value as V;
    assert_eq!(
        rows(&path),
        [
            (1, "sku-1".to_owned(), V::Integer(1)),
            (2, "sku-2".to_owned(), V::Integer(20))
        ]
    );
    let mut again = SqliteSink::new(&path, "p", "replica", false);
    assert_eq!(again.open(schema()).await.unwrap(), Some(Seq(4)));
}

#[tokio::test]
async fn a_key_changing_patch_moves_the_row_and_keeps_its_other_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let mut sink = with_two_rows(&path).await;
    sink.apply(batch(vec![patch(
        3,
        1,
        vec![("id", Value::Int(5)), ("price", Value::Int(50))],
    )]))
    .await
    .unwrap();
    use rusqlite::types::Value as V;
    assert_eq!(
        rows(&path),
        [
            (2, "sku-2".to_owned(), V::Integer(2)),
            (5, "sku-1".to_owned(), V::Integer(50))
        ]
    );
}

#[tokio::test]
async fn a_patch_adds_a_column_the_table_lacks_once_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let mut sink = with_two_rows(&path).await;
    // The source added `note`: an upsert and a patch of one batch both carry it.
    let mut upsert = entry(3, Op::Update, 2, Some(Value::Int(2)));
    if let Some(after) = upsert.change.after.as_mut() {
        after.0.push(("note".into(), Value::from("two")));
    }
    sink.apply(batch(vec![
        upsert,
        patch(4, 1, vec![("note", Value::from("one"))]),
    ]))
    .await
    .unwrap();
    let conn = Connection::open(&path).unwrap();
    let notes: Vec<(i64, String, String)> = conn
        .prepare("SELECT id, sku, note FROM items ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        notes,
        [
            (1, "sku-1".to_owned(), "one".to_owned()),
            (2, "sku-2".to_owned(), "two".to_owned())
        ]
    );
}
