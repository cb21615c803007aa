//! The MySQL/MariaDB sink against a real MariaDB (row binlog, InnoDB). Every test starts its
//! own server.

use tidesync_core::{
    Change, Decimal, Dialect, Key, LogEntry, Op, Row, Seq, Sink, TableSchema, Value,
};
use tidesync_deliver::mysql::MysqlSink;
use tidesync_testkit::MariaDb;

use crate::postgres::{batch, column};

const DB: &str = "target";

fn server() -> MariaDb {
    let db = MariaDb::start();
    db.create_database(DB).unwrap();
    db
}

/// `items` as a PostgreSQL source declares it.
fn items_schema() -> Vec<TableSchema> {
    vec![TableSchema {
        name: "items".into(),
        columns: vec![
            column("id", "bigint", false),
            column("sku", "text", false),
            column("price", "numeric(12,2)", true),
        ],
        key: vec!["id".into()],
        dialect: Dialect::Postgres,
    }]
}

/// A change of `items` row `id`.
fn entry(seq: u64, op: Op, id: i64, after: Option<Vec<(&str, Value)>>) -> LogEntry {
    crate::postgres::entry(
        seq,
        "items",
        op,
        Key(vec![Value::Int(id)]),
        after.map(|cols| Row(cols.into_iter().map(|(c, v)| (c.into(), v)).collect())),
    )
}

fn dec(text: &str) -> Value {
    Value::Decimal(Decimal::parse(text).unwrap())
}

fn upsert(seq: u64, id: i64, sku: &str, price: &str) -> LogEntry {
    entry(
        seq,
        Op::Insert,
        id,
        Some(vec![
            ("id", Value::Int(id)),
            ("sku", Value::Text(sku.into())),
            ("price", dec(price)),
        ]),
    )
}

async fn open(db: &MariaDb, schemas: Vec<TableSchema>) -> (MysqlSink, Option<Seq>) {
    let mut sink = MysqlSink::new(&db.url(DB), "p", "replica", true);
    let applied = sink.open(schemas).await.unwrap();
    (sink, applied)
}

fn rows(db: &MariaDb, sql: &str) -> String {
    db.sql(DB, sql).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_apply_once_in_order_and_a_replay_changes_nothing() {
    let db = server();
    let (mut sink, applied) = open(&db, items_schema()).await;
    assert_eq!(applied, Some(Seq(0)));
    // Every write to the target is counted.
    db.sql(
        DB,
        "CREATE TABLE audit (n INT AUTO_INCREMENT PRIMARY KEY, id BIGINT, price DECIMAL(12,2));
         CREATE TRIGGER audit_ins AFTER INSERT ON items FOR EACH ROW INSERT INTO audit (id, price) VALUES (NEW.id, NEW.price);
         CREATE TRIGGER audit_upd AFTER UPDATE ON items FOR EACH ROW INSERT INTO audit (id, price) VALUES (NEW.id, NEW.price);",
    )
    .unwrap();
    let first = batch(vec![
        upsert(1, 1, "a", "1.00"),
        upsert(2, 2, "b", "2.00"),
        upsert(3, 3, "c", "3.00"),
        upsert(4, 4, "d", "4.00"),
        // A key again in the same run: applied after its insert.
        upsert(5, 1, "a", "1.50"),
        entry(6, Op::Delete, 3, None),
        entry(7, Op::Patch, 4, Some(vec![("price", dec("4.25"))])),
    ]);
    sink.apply(first.clone()).await.unwrap();
    let expected = "1\ta\t1.50\n2\tb\t2.00\n4\td\t4.25";
    assert_eq!(rows(&db, "SELECT * FROM items ORDER BY id"), expected);
    let writes = rows(&db, "SELECT count(*) FROM audit");
    assert_eq!(writes, "6");
    // A replay (the store's cursor did not move before a crash) applies nothing.
    sink.apply(first).await.unwrap();
    assert_eq!(rows(&db, "SELECT * FROM items ORDER BY id"), expected);
    assert_eq!(rows(&db, "SELECT count(*) FROM audit"), writes);
    // A batch straddling the applied seq applies only its new part.
    sink.apply(batch(vec![
        entry(6, Op::Delete, 3, None),
        entry(7, Op::Patch, 4, Some(vec![("price", dec("4.25"))])),
        upsert(8, 5, "e", "5.00"),
        entry(9, Op::Delete, 2, None),
    ]))
    .await
    .unwrap();
    assert_eq!(
        rows(&db, "SELECT * FROM items ORDER BY id"),
        "1\ta\t1.50\n4\td\t4.25\n5\te\t5.00"
    );
    assert_eq!(rows(&db, "SELECT count(*) FROM audit"), "7");
    // TRUNCATE inside the batch's transaction, then the applied seq survives a reopen.
    sink.apply(batch(vec![
        LogEntry {
            seq: Seq(10),
            change: Change {
                op: Op::Truncate,
                key: Key(vec![]),
                after: None,
                ..entry(10, Op::Truncate, 0, None).change
            },
        },
        upsert(11, 9, "z", "9.00"),
    ]))
    .await
    .unwrap();
    assert_eq!(rows(&db, "SELECT * FROM items ORDER BY id"), "9\tz\t9.00");
    drop(sink);
    let (_, applied) = open(&db, items_schema()).await;
    assert_eq!(applied, Some(Seq(11)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_every_kind_arrive_exactly() {
    let db = server();
    let schema = TableSchema {
        name: "kinds".into(),
        columns: vec![
            column("id", "integer", false),
            column("at", "timestamp with time zone", true),
            column("day", "date", true),
            column("t", "time without time zone", true),
            column("amount", "numeric(30,10)", true),
            column("raw", "bytea", true),
            column("doc", "jsonb", true),
            column("flag", "boolean", true),
            column("ratio", "double precision", true),
            column("name", "character varying(40)", true),
        ],
        key: vec!["id".into()],
        dialect: Dialect::Postgres,
    };
    let (mut sink, _) = open(&db, vec![schema]).await;
    let row = |id: i64, values: Vec<Value>| {
        let names = [
            "id", "at", "day", "t", "amount", "raw", "doc", "flag", "ratio", "name",
        ];
        let mut cols = vec![("id", Value::Int(id))];
        cols.extend(names[1..].iter().copied().zip(values));
        LogEntry {
            change: Change {
                stream: "kinds".into(),
                ..entry(id as u64, Op::Insert, id, Some(cols)).change
            },
            seq: Seq(id as u64),
        }
    };
    sink.apply(batch(vec![
        row(
            1,
            vec![
                // 2026-01-02 03:04:05.678901 UTC
                Value::Timestamp(1_767_323_045_678_901),
                Value::Date(20_455),
                Value::Time(((13 * 60 + 14) * 60 + 15) * 1_000_000 + 16),
                dec("-12345678901234567890.0123456789"),
                Value::Bytes(vec![0, 1, 0xfe, 0xff]),
                Value::Json(r#"{"a": [1, "x"]}"#.into()),
                Value::Bool(true),
                Value::Float(0.1),
                Value::Text("Grüße, 世界 🐟".into()),
            ],
        ),
        row(2, vec![Value::Null; 9]),
    ]))
    .await
    .unwrap();
    assert_eq!(
        rows(
            &db,
            "SELECT id, at, day, t, amount, hex(raw), JSON_EXTRACT(doc, '$.a[1]'), flag, ratio, hex(name) \
             FROM kinds ORDER BY id"
        ),
        format!(
            "1\t2026-01-02 03:04:05.678901\t2026-01-02\t13:14:15.000016\t-12345678901234567890.0123456789\t\
             0001FEFF\t\"x\"\t1\t0.1\t{}\n\
             2\tNULL\tNULL\tNULL\tNULL\tNULL\tNULL\tNULL\tNULL\tNULL",
            // The name's UTF-8 bytes (the client prints 4-byte characters as `?`).
            "Grüße, 世界 🐟"
                .bytes()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_column_cannot_hold_rolls_the_batch_back_and_names_the_change() {
    let db = server();
    let (mut sink, _) = open(&db, items_schema()).await;
    let bad = batch(vec![
        upsert(1, 1, "a", "1.00"),
        upsert(2, 2, "b", "123456789012345.00"),
        upsert(3, 3, "c", "3.00"),
    ]);
    let err = sink.apply(bad).await.unwrap_err().to_string();
    assert!(err.contains("seq 2 on `items` key (2)"), "{err}");
    assert!(err.contains("price"), "{err}");
    assert_eq!(rows(&db, "SELECT count(*) FROM items"), "0");
    assert_eq!(
        rows(
            &db,
            "SELECT seq FROM _tidesync_applied WHERE pipeline = 'p'"
        ),
        "0"
    );
    // An exact decimal MySQL has no form for is refused before anything is sent.
    let err = sink
        .apply(batch(vec![upsert(1, 1, "a", "NaN")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("MySQL has no exact decimal `NaN`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_or_key_is_a_clear_error_and_added_columns_are_added() {
    let db = server();
    let mut sink = MysqlSink::new(&db.url(DB), "p", "replica", false);
    let err = sink.open(items_schema()).await.unwrap_err().to_string();
    assert!(
        err.contains("table `items` does not exist (set create_tables = true"),
        "{err}"
    );
    db.sql(
        DB,
        "CREATE TABLE items (id BIGINT, sku TEXT, price DECIMAL(12,2))",
    )
    .unwrap();
    let err = sink.open(items_schema()).await.unwrap_err().to_string();
    assert!(
        err.contains("no primary key or unique index on exactly the key columns (id)"),
        "{err}"
    );
    db.sql(DB, "ALTER TABLE items ADD PRIMARY KEY (id)")
        .unwrap();
    sink.open(items_schema()).await.unwrap();
    // A column the source added while streaming.
    sink.apply(batch(vec![entry(
        1,
        Op::Insert,
        1,
        Some(vec![
            ("id", Value::Int(1)),
            ("sku", Value::Text("a".into())),
            ("price", dec("1.00")),
            ("added", Value::Int(7)),
        ]),
    )]))
    .await
    .unwrap();
    assert_eq!(rows(&db, "SELECT id, added FROM items"), "1\t7");
}
