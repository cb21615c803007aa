#![allow(clippy::unwrap_used)]

use super::*;

fn setup() -> (tempfile::TempDir, PathBuf, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT NOT NULL, price REAL, qty INTEGER, img BLOB);
         CREATE TABLE stock (item INTEGER, warehouse TEXT, qty INTEGER, PRIMARY KEY (warehouse, item));",
    )
    .unwrap();
    (dir, path, conn)
}

fn source(path: &Path, tables: &[&str]) -> TriggerSource {
    TriggerSource::new(
        path,
        "p1",
        tables.iter().map(|t| t.to_string()).collect(),
        Duration::from_millis(5),
    )
}

async fn poll_all(src: &mut TriggerSource) -> Option<Captured> {
    src.poll(10_000, Duration::ZERO).await.unwrap()
}

#[tokio::test]
async fn inserts_updates_and_deletes_arrive_with_exact_values() {
    let (_dir, path, conn) = setup();
    let mut src = source(&path, &["items"]);
    let schemas = src.open(None).await.unwrap().schemas;
    assert_eq!(schemas[0].key, ["id"]);
    assert_eq!(schemas[0].columns[1].type_name, "TEXT");
    assert!(!schemas[0].columns[1].nullable);
    conn.execute(
        "INSERT INTO items VALUES (1, 'a''b,c', 0.1, 9223372036854775807, x'00ff')",
        [],
    )
    .unwrap();
    conn.execute(
        "UPDATE items SET price = 1e308 * 10, qty = NULL WHERE id = 1",
        [],
    )
    .unwrap();
    conn.execute("DELETE FROM items WHERE id = 1", []).unwrap();
    let got = poll_all(&mut src).await.unwrap();
    let ops: Vec<Op> = got.changes.iter().map(|c| c.op).collect();
    assert_eq!(ops, [Op::Insert, Op::Update, Op::Delete]);
    let inserted = got.changes[0].after.as_ref().unwrap();
    assert_eq!(
        inserted.0,
        vec![
            ("id".into(), Value::Int(1)),
            ("sku".into(), Value::Text("a'b,c".into())),
            ("price".into(), Value::Float(0.1)),
            ("qty".into(), Value::Int(i64::MAX)),
            ("img".into(), Value::Bytes(vec![0, 255])),
        ]
    );
    let updated = &got.changes[1];
    assert_eq!(updated.before.as_ref(), Some(inserted));
    assert_eq!(
        updated.after.as_ref().unwrap().get("price"),
        Some(&Value::Float(f64::INFINITY))
    );
    assert_eq!(
        updated.after.as_ref().unwrap().get("qty"),
        Some(&Value::Null)
    );
    assert_eq!(got.changes[2].key, Key(vec![Value::Int(1)]));
    assert!(got.changes[2].after.is_none());
    assert!(matches!(got.position, Position::RowId(3)));
    // Handed out once: polling again without new writes returns nothing.
    assert_eq!(poll_all(&mut src).await, None);
}

#[tokio::test]
async fn composite_keys_follow_primary_key_order() {
    let (_dir, path, conn) = setup();
    let mut src = source(&path, &["stock"]);
    let schemas = src.open(None).await.unwrap().schemas;
    assert_eq!(schemas[0].key, ["warehouse", "item"]);
    conn.execute("INSERT INTO stock VALUES (7, 'north', 3)", [])
        .unwrap();
    let got = poll_all(&mut src).await.unwrap();
    assert_eq!(
        got.changes[0].key,
        Key(vec![Value::Text("north".into()), Value::Int(7)])
    );
}

#[tokio::test]
async fn key_updates_become_delete_then_insert() {
    let (_dir, path, conn) = setup();
    let mut src = source(&path, &["items"]);
    src.open(None).await.unwrap();
    conn.execute("INSERT INTO items (id, sku) VALUES (1, 'a')", [])
        .unwrap();
    conn.execute("UPDATE items SET id = 2 WHERE id = 1", [])
        .unwrap();
    let got = poll_all(&mut src).await.unwrap();
    let summary: Vec<(Op, Key)> = got.changes.iter().map(|c| (c.op, c.key.clone())).collect();
    assert_eq!(
        summary,
        [
            (Op::Insert, Key(vec![Value::Int(1)])),
            (Op::Delete, Key(vec![Value::Int(1)])),
            (Op::Insert, Key(vec![Value::Int(2)])),
        ]
    );
}

#[tokio::test]
async fn rolled_back_writes_are_not_captured() {
    let (_dir, path, mut conn) = setup();
    let mut src = source(&path, &["items"]);
    src.open(None).await.unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute("INSERT INTO items (id, sku) VALUES (1, 'a')", [])
        .unwrap();
    tx.rollback().unwrap();
    assert_eq!(poll_all(&mut src).await, None);
}

#[tokio::test]
async fn restart_resumes_after_the_stored_position_and_clears_it() {
    let (_dir, path, conn) = setup();
    let mut src = source(&path, &["items"]);
    src.open(None).await.unwrap();
    for id in 1..=5 {
        conn.execute("INSERT INTO items (id, sku) VALUES (?1, 'x')", [id])
            .unwrap();
    }
    let first = src.poll(3, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(first.position, Position::RowId(3));
    // Crash after the store committed up to 3 but before the ack: a new source resumes
    // from the stored position.
    drop(src);
    let mut src = source(&path, &["items"]);
    src.open(Some(Position::RowId(3))).await.unwrap();
    let rest = poll_all(&mut src).await.unwrap();
    let ids: Vec<Key> = rest.changes.iter().map(|c| c.key.clone()).collect();
    assert_eq!(ids, [Key(vec![Value::Int(4)]), Key(vec![Value::Int(5)])]);
    let left: i64 = conn
        .query_row("SELECT count(*) FROM _tidesync_p1_changes", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        left, 2,
        "rows at or below the stored position are cleared on open"
    );
    src.ack(rest.position.clone()).await.unwrap();
    let left: i64 = conn
        .query_row("SELECT count(*) FROM _tidesync_p1_changes", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn added_columns_reinstall_triggers_and_old_rows_keep_their_shape() {
    let (_dir, path, conn) = setup();
    let mut src = source(&path, &["items"]);
    src.open(None).await.unwrap();
    conn.execute("INSERT INTO items (id, sku) VALUES (1, 'a')", [])
        .unwrap();
    conn.execute("ALTER TABLE items ADD COLUMN color TEXT DEFAULT 'red'", [])
        .unwrap();
    // Until triggers are rebuilt, changes still record the old columns.
    conn.execute("INSERT INTO items (id, sku) VALUES (2, 'b')", [])
        .unwrap();
    drop(src);
    let mut src = source(&path, &["items"]);
    // Restart with a stored position (nothing acked yet): no new snapshot.
    src.open(Some(Position::RowId(0))).await.unwrap();
    conn.execute("INSERT INTO items (id, sku) VALUES (3, 'c')", [])
        .unwrap();
    let got = poll_all(&mut src).await.unwrap();
    let widths: Vec<usize> = got
        .changes
        .iter()
        .map(|c| c.after.as_ref().unwrap().len())
        .collect();
    assert_eq!(widths, [5, 5, 6]);
    assert_eq!(
        got.changes[2].after.as_ref().unwrap().get("color"),
        Some(&Value::Text("red".into()))
    );
}

#[tokio::test]
async fn setup_problems_are_definite_and_named() {
    let (dir, path, conn) = setup();
    conn.execute("CREATE TABLE logbook (line TEXT)", [])
        .unwrap();
    let err = source(&path, &["nope"]).open(None).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.to_string().ends_with("table `nope` does not exist"),
        "{err}"
    );
    let err = source(&path, &["logbook"]).open(None).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("table `logbook` has no primary key"),
        "{err}"
    );
    let missing = dir.path().join("missing.db");
    let err = source(&missing, &["items"]).open(None).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(
        !missing.exists(),
        "a missing source database must not be created"
    );
}

#[tokio::test]
async fn existing_rows_arrive_first_as_a_full_snapshot() {
    let (_dir, path, conn) = setup();
    for id in 1..=3 {
        conn.execute("INSERT INTO items (id, sku) VALUES (?1, 'old')", [id])
            .unwrap();
    }
    let mut src = source(&path, &["items"]);
    src.open(None).await.unwrap();
    conn.execute("UPDATE items SET sku = 'new' WHERE id = 2", [])
        .unwrap();
    let snapshot = src.poll(3, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(snapshot.kind, BatchKind::Full);
    assert!(snapshot.changes.iter().all(|c| c.op == Op::Read));
    let next = poll_all(&mut src).await.unwrap();
    assert_eq!(next.kind, BatchKind::Incremental);
    assert_eq!(next.changes.len(), 1);
    assert_eq!(
        next.changes[0].after.as_ref().unwrap().get("sku"),
        Some(&Value::Text("new".into()))
    );
    src.ack(next.position.clone()).await.unwrap();

    // A restart with a stored position takes no new snapshot of known tables, but a table
    // added to the configuration is snapshotted on its own.
    conn.execute("INSERT INTO stock VALUES (1, 'north', 5)", [])
        .unwrap();
    drop(src);
    let mut src = source(&path, &["items", "stock"]);
    src.open(Some(next.position.clone())).await.unwrap();
    let got = poll_all(&mut src).await.unwrap();
    let streams: Vec<(&str, Op)> = got
        .changes
        .iter()
        .map(|c| (c.stream.as_str(), c.op))
        .collect();
    assert_eq!(streams, [("stock", Op::Read)]);
}

#[tokio::test]
async fn a_reset_change_table_behind_the_stored_position_is_refused() {
    let (_dir, path, conn) = setup();
    let mut src = source(&path, &["items"]);
    src.open(None).await.unwrap();
    conn.execute("INSERT INTO items (id, sku) VALUES (1, 'a')", [])
        .unwrap();
    let got = poll_all(&mut src).await.unwrap();
    drop(src);
    // Someone drops the change table: its ids would start again at 1.
    conn.execute("DROP TABLE _tidesync_p1_changes", []).unwrap();
    let mut src = source(&path, &["items"]);
    src.open(Some(Position::RowId(0))).await.unwrap();
    drop(src);
    conn.execute("DROP TABLE _tidesync_p1_changes", []).unwrap();
    let mut src = source(&path, &["items"]);
    let err = src.open(Some(got.position.clone())).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.to_string().contains("has only issued ids up to 0"),
        "{err}"
    );
}
