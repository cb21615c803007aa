//! The MySQL/MariaDB log source (`mysql::source`) against a real MariaDB, without the runtime:
//! the copy under a consistent snapshot and the hand-off to the binlog, every listed type
//! read the same from a snapshot and from the binlog, DDL, rotation, a copy resumed while
//! streaming, and the misconfiguration errors.

use std::collections::BTreeMap;
use std::time::Duration;

use tidesync_capture::mysql::source::{MysqlLogOptions, MysqlLogSource};
use tidesync_core::{Captured, Change, Decimal, Key, Op, Position, Row, Source, Value};
use tidesync_testkit::MariaDb;

const DB: &str = "shop";

fn server() -> MariaDb {
    let db = MariaDb::start();
    db.create_database(DB).unwrap();
    db
}

fn id_of(change: &Change) -> i64 {
    match change.key.0.first() {
        Some(Value::Int(i)) => *i,
        other => panic!("unexpected key {other:?}"),
    }
}

/// Polls until `done` says so (or fails after 30 s), acking every batch.
async fn poll_until(
    source: &mut MysqlLogSource,
    mut done: impl FnMut(&[Captured]) -> bool,
) -> Vec<Captured> {
    let mut batches = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done(&batches) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out; got {batches:#?}"
        );
        if let Some(batch) = source.poll(700, Duration::from_millis(100)).await.unwrap() {
            source.ack(batch.position.clone()).await.unwrap();
            batches.push(batch);
        }
    }
    batches
}

fn changes(batches: &[Captured]) -> Vec<&Change> {
    batches.iter().flat_map(|b| &b.changes).collect()
}

const TYPED: &str = "CREATE TABLE typed (
    id INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
    mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED,
    bi BIGINT, biu BIGINT UNSIGNED,
    d DECIMAL(30,10), f FLOAT, db DOUBLE,
    c CHAR(5), vc VARCHAR(50), t TEXT, l1 VARCHAR(20) CHARACTER SET latin1,
    bn BINARY(4), vb VARBINARY(10), bl BLOB,
    dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL, y YEAR,
    b1 BIT(1), b12 BIT(12), e ENUM('a','b c'), st SET('x','y','z'), j JSON, n INT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4";

fn typed_values(id: i64) -> String {
    format!(
        "({id}, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, \
         -9223372036854775808, 18446744073709551615, '-12345678901234567890.0123456789', 1.5, \
         0.1, 'ab', 'héllo 😀', 'long text', 'café €', 'ab', x'00ff', x'deadbeef', \
         '2024-02-29', '-838:59:59.000001', '2024-02-29 23:59:59.123456', \
         '2024-02-29 23:59:59.654321', 2024, b'1', b'101010101010', 'b c', 'x,z', \
         '{{\"a\": [1, 2.5, \"x\"]}}', NULL)"
    )
}

fn expected_typed() -> Vec<(&'static str, Value)> {
    let dec = |s: &str| Value::Decimal(Decimal::parse(s).unwrap());
    let day = tidesync_core::time::days_from_civil(2024, 2, 29);
    let at = |micros_in_day: i64| Value::Timestamp(day * 86_400_000_000 + micros_in_day);
    vec![
        ("ti", Value::Int(-128)),
        ("tiu", Value::Int(255)),
        ("si", Value::Int(-32768)),
        ("siu", Value::Int(65535)),
        ("mi", Value::Int(-8_388_608)),
        ("miu", Value::Int(16_777_215)),
        ("i", Value::Int(-2_147_483_648)),
        ("iu", Value::Int(4_294_967_295)),
        ("bi", Value::Int(i64::MIN)),
        ("biu", dec("18446744073709551615")),
        ("d", dec("-12345678901234567890.0123456789")),
        ("f", Value::Float(1.5)),
        ("db", Value::Float(0.1)),
        ("c", Value::Text("ab".into())),
        ("vc", Value::Text("héllo 😀".into())),
        ("t", Value::Text("long text".into())),
        ("l1", Value::Text("café €".into())),
        ("bn", Value::Bytes(b"ab\0\0".to_vec())),
        ("vb", Value::Bytes(vec![0x00, 0xff])),
        ("bl", Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef])),
        ("dt", Value::Date(day as i32)),
        (
            "tm",
            Value::Time(-(838 * 3600 + 59 * 60 + 59) * 1_000_000 - 1),
        ),
        ("dtm", at(86_399_123_456)),
        ("ts", at(86_399_654_321)),
        ("y", Value::Int(2024)),
        ("b1", Value::Bool(true)),
        ("b12", Value::Bytes(vec![0x0a, 0xaa])),
        ("e", Value::Text("b c".into())),
        ("st", Value::Text("x,z".into())),
        ("j", Value::Json("{\"a\": [1, 2.5, \"x\"]}".into())),
        ("n", Value::Null),
    ]
}

fn assert_typed(row: &Row) {
    for (column, want) in expected_typed() {
        assert_eq!(row.get(column), Some(&want), "column {column}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_under_a_snapshot_then_streams_every_type_ddl_and_rotation() {
    // Rows carry their column names: any sequence of ALTER TABLEs maps right.
    let db = MariaDb::builder().arg("--binlog-row-metadata=FULL").start();
    db.create_database(DB).unwrap();
    db.sql(
        DB,
        &format!(
            "SET NAMES utf8mb4; SET time_zone = '+00:00'; {TYPED}; INSERT INTO typed VALUES {}; \
             CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50)); \
             INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_2500;",
            typed_values(1)
        ),
    )
    .unwrap();
    let mut opts = MysqlLogOptions::new(db.url(DB), "p1", vec!["items".into(), "typed".into()]);
    opts.chunk_rows = 1_000;
    let mut source = MysqlLogSource::new(opts);
    let opened = source.open(None).await.unwrap();
    assert!(matches!(opened.start, Some(Position::Snapshot { .. })));
    let typed_schema = &opened.schemas[1];
    let type_of = |c: &str| {
        typed_schema
            .columns
            .iter()
            .find(|x| x.name == c)
            .map(|x| x.type_name.clone())
    };
    assert_eq!(type_of("biu").as_deref(), Some("bigint(20) unsigned"));
    assert_eq!(type_of("j").as_deref(), Some("json"));
    assert_eq!(type_of("e").as_deref(), Some("enum('a','b c')"));

    // Committed after the snapshot: must come through the binlog, not the copy.
    db.sql(
        DB,
        &format!(
            "SET NAMES utf8mb4; SET time_zone = '+00:00'; INSERT INTO items VALUES (9001, 'late'); \
             UPDATE items SET name = 'changed' WHERE id = 1; INSERT INTO typed VALUES {};",
            typed_values(2)
        ),
    )
    .unwrap();
    let copy = poll_until(&mut source, |b| {
        b.last()
            .is_some_and(|b| matches!(b.position, Position::Binlog { .. }))
    })
    .await;
    let copied = changes(&copy);
    assert!(copied.iter().all(|c| c.op == Op::Read));
    let item_ids: Vec<i64> = copied
        .iter()
        .filter(|c| c.stream == "items")
        .map(|c| id_of(c))
        .collect();
    assert_eq!(item_ids, (1..=2_500).collect::<Vec<_>>());
    let typed_copy: Vec<&&Change> = copied.iter().filter(|c| c.stream == "typed").collect();
    assert_eq!(typed_copy.len(), 1);
    assert_typed(typed_copy[0].after.as_ref().unwrap());
    assert_eq!(
        copied
            .iter()
            .find(|c| c.stream == "items" && id_of(c) == 1)
            .and_then(|c| c.after.as_ref())
            .and_then(|r| r.get("name")),
        Some(&Value::Text("item 1".into()))
    );

    let streamed = poll_until(&mut source, |b| changes(b).len() >= 3).await;
    let got = changes(&streamed);
    assert_eq!(
        got.iter().map(|c| (c.op, id_of(c))).collect::<Vec<_>>(),
        vec![(Op::Insert, 9001), (Op::Update, 1), (Op::Insert, 2)]
    );
    // The same values read from the binlog as from the snapshot.
    assert_typed(got[2].after.as_ref().unwrap());
    assert_eq!(
        got[1].before.as_ref().and_then(|r| r.get("name")),
        Some(&Value::Text("item 1".into()))
    );

    // A multi-row transaction, a key change, a delete; then DDL and a rotation.
    db.sql(
        DB,
        "START TRANSACTION; INSERT INTO items VALUES (9002, 'a'), (9003, 'b'); \
         UPDATE items SET id = 9004 WHERE id = 9002; DELETE FROM items WHERE id = 2; COMMIT; \
         ALTER TABLE items ADD COLUMN price DECIMAL(8,2) NULL AFTER id; \
         INSERT INTO items VALUES (9005, 1.25, 'priced'); \
         FLUSH BINARY LOGS; \
         UPDATE items SET price = 2.50 WHERE id = 9005;",
    )
    .unwrap();
    let streamed = poll_until(&mut source, |b| changes(b).len() >= 7).await;
    let got = changes(&streamed);
    let summary = |got: &[&Change]| -> Vec<(Op, Option<i64>)> {
        got.iter()
            .map(|c| (c.op, (c.op != Op::Truncate).then(|| id_of(c))))
            .collect()
    };
    assert_eq!(
        summary(&got),
        vec![
            (Op::Insert, Some(9002)),
            (Op::Insert, Some(9003)),
            (Op::Delete, Some(9002)),
            (Op::Insert, Some(9004)),
            (Op::Delete, Some(2)),
            (Op::Insert, Some(9005)),
            (Op::Update, Some(9005)),
        ]
    );
    // One transaction of five changes, handed out together.
    assert!(streamed.iter().any(|b| b.changes.len() >= 5));
    let price = |c: &Change| c.after.as_ref().and_then(|r| r.get("price")).cloned();
    assert_eq!(
        price(got[5]),
        Some(Value::Decimal(Decimal::parse("1.25").unwrap()))
    );
    assert_eq!(
        price(got[6]),
        Some(Value::Decimal(Decimal::parse("2.50").unwrap()))
    );
    // The position moved into the new binlog file.
    match &streamed.last().unwrap().position {
        Position::Binlog { file, .. } => assert!(file.ends_with("000002"), "{file}"),
        other => panic!("{other:?}"),
    }

    // A dropped column; one added and dropped again before capture reads the row between
    // (its value is gone with it); a truncate.
    db.sql(
        DB,
        "ALTER TABLE items DROP COLUMN price; INSERT INTO items VALUES (9006, 'after drop'); \
         ALTER TABLE items ADD COLUMN tmp INT; INSERT INTO items VALUES (9007, 'tmp', 7); \
         ALTER TABLE items DROP COLUMN tmp; \
         TRUNCATE TABLE items; INSERT INTO items VALUES (1, 'again');",
    )
    .unwrap();
    let streamed = poll_until(&mut source, |b| changes(b).len() >= 4).await;
    let got = changes(&streamed);
    assert_eq!(
        summary(&got),
        vec![
            (Op::Insert, Some(9006)),
            (Op::Insert, Some(9007)),
            (Op::Truncate, None),
            (Op::Insert, Some(1)),
        ]
    );
    for c in &got[..2] {
        let row = c.after.as_ref().unwrap();
        assert_eq!(row.columns().collect::<Vec<_>>(), vec!["id", "name"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_column_names_in_the_binlog_an_alter_maps_by_position_or_stops_clearly() {
    let db = server();
    db.sql(
        DB,
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50)); \
         INSERT INTO items VALUES (1, 'one');",
    )
    .unwrap();
    let mut source =
        MysqlLogSource::new(MysqlLogOptions::new(db.url(DB), "p1", vec!["items".into()]));
    source.open(None).await.unwrap();
    poll_until(&mut source, |b| {
        b.last()
            .is_some_and(|b| matches!(b.position, Position::Binlog { .. }))
    })
    .await;
    db.sql(
        DB,
        "ALTER TABLE items ADD COLUMN qty INT NULL; INSERT INTO items VALUES (2, 'two', 5);",
    )
    .unwrap();
    let got = poll_until(&mut source, |b| !changes(b).is_empty()).await;
    assert_eq!(
        changes(&got)[0].after.as_ref().and_then(|r| r.get("qty")),
        Some(&Value::Int(5))
    );
    // Two ALTERs before capture reads the rows between them: the table as it is now does not
    // fit those rows, and the error says what to set.
    db.sql(
        DB,
        "ALTER TABLE items ADD COLUMN note TEXT NULL; INSERT INTO items VALUES (3, 'x', 1, 'n'); \
         ALTER TABLE items DROP COLUMN note, DROP COLUMN qty;",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let err = loop {
        assert!(std::time::Instant::now() < deadline);
        match source.poll(100, Duration::from_millis(100)).await {
            Err(e) => break e.to_string(),
            Ok(Some(batch)) => panic!("{batch:?}"),
            Ok(None) => {}
        }
    };
    assert!(err.contains("binlog_row_metadata = FULL"), "{err}");
}

/// Applies changes to a map of id -> name, as a sink would.
fn apply(state: &mut BTreeMap<i64, String>, batch: &Captured) {
    for c in &batch.changes {
        match c.op {
            Op::Delete => {
                state.remove(&id_of(c));
            }
            Op::Truncate => state.clear(),
            _ => {
                let name = match c.after.as_ref().and_then(|r| r.get("name")) {
                    Some(Value::Text(t)) => t.clone(),
                    other => panic!("{other:?}"),
                };
                state.insert(id_of(c), name);
            }
        }
    }
}

fn table_state(db: &MariaDb) -> BTreeMap<i64, String> {
    db.sql(DB, "SELECT id, name FROM items ORDER BY id")
        .unwrap()
        .lines()
        .map(|l| {
            let (id, name) = l.split_once('\t').unwrap();
            (id.parse().unwrap(), name.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_resumed_while_writers_run_ends_equal() {
    let db = server();
    db.sql(
        DB,
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50)); \
         INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_5000;",
    )
    .unwrap();
    let mut opts = MysqlLogOptions::new(db.url(DB), "p1", vec!["items".into()]);
    opts.chunk_rows = 500;
    let mut state = BTreeMap::new();
    let mut source = MysqlLogSource::new(opts.clone());
    source.open(None).await.unwrap();
    let first = source
        .poll(500, Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    apply(&mut state, &first);
    let stored = first.position.clone();
    assert!(matches!(stored, Position::Snapshot { .. }), "{stored:?}");
    drop(source);

    // Writers change rows on both sides of the copy's cursor, while it is down and while it
    // resumes.
    let writes = |round: i64| {
        format!(
            "START TRANSACTION; UPDATE items SET name = 'r{round}' WHERE id IN (7, 2500, 4999); \
             DELETE FROM items WHERE id = {}; INSERT INTO items VALUES ({}, 'new {round}'); COMMIT;",
            100 + round * 3,
            10_000 + round
        )
    };
    db.sql(DB, &writes(0)).unwrap();
    let mut source = MysqlLogSource::new(opts);
    let opened = source.open(Some(stored)).await.unwrap();
    assert_eq!(opened.start, None);
    let mut round = 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(std::time::Instant::now() < deadline, "the copy did not end");
        if round < 20 {
            db.sql(DB, &writes(round)).unwrap();
            round += 1;
        }
        if let Some(batch) = source.poll(500, Duration::from_millis(50)).await.unwrap() {
            apply(&mut state, &batch);
            source.ack(batch.position.clone()).await.unwrap();
            if round >= 20 && matches!(batch.position, Position::Binlog { .. }) {
                break;
            }
        }
    }
    // Drain the stream.
    let want = table_state(&db);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while state != want {
        assert!(
            std::time::Instant::now() < deadline,
            "not equal: {} vs {} rows",
            state.len(),
            want.len()
        );
        if let Some(batch) = source.poll(500, Duration::from_millis(100)).await.unwrap() {
            apply(&mut state, &batch);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_reads_keys_and_tables_on_request() {
    let db = server();
    db.sql(
        DB,
        "CREATE TABLE items (id BIGINT UNSIGNED PRIMARY KEY, name VARCHAR(50)); \
         INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_30;",
    )
    .unwrap();
    let mut opts = MysqlLogOptions::new(db.url(DB), "p1", vec!["items".into()]);
    opts.chunk_rows = 20;
    let mut source = MysqlLogSource::new(opts);
    source.open(None).await.unwrap();
    poll_until(&mut source, |b| {
        b.last()
            .is_some_and(|b| matches!(b.position, Position::Binlog { .. }))
    })
    .await;
    // Keys in other forms than ours (a target's numeric and text), one of them gone.
    source
        .request(tidesync_core::Request {
            id: 1,
            stream: "items".into(),
            what: tidesync_core::RequestKind::Keys(vec![
                Key(vec![Value::Decimal(Decimal::parse("3").unwrap())]),
                Key(vec![Value::Text("31".into())]),
            ]),
        })
        .unwrap();
    let got = poll_until(&mut source, |b| b.iter().any(|b| b.progress.is_some())).await;
    let part = got.iter().find(|b| b.progress.is_some()).unwrap();
    assert!(part.progress.as_ref().unwrap().done);
    assert_eq!(
        part.changes
            .iter()
            .map(|c| (c.op, id_of(c)))
            .collect::<Vec<_>>(),
        vec![(Op::Read, 3), (Op::Delete, 31)]
    );
    source
        .request(tidesync_core::Request {
            id: 2,
            stream: "items".into(),
            what: tidesync_core::RequestKind::Table { after: None },
        })
        .unwrap();
    let got = poll_until(&mut source, |b| {
        b.iter()
            .any(|b| b.progress.as_ref().is_some_and(|p| p.done))
    })
    .await;
    let ids: Vec<i64> = got
        .iter()
        .filter(|b| b.progress.is_some())
        .flat_map(|b| b.changes.iter().map(id_of))
        .collect();
    assert_eq!(ids, (1..=30).collect::<Vec<_>>());
}

async fn open_error(url: String) -> String {
    let mut source = MysqlLogSource::new(MysqlLogOptions::new(url, "p1", vec!["items".into()]));
    source.open(None).await.unwrap_err().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_servers_and_users_get_errors_that_say_what_to_change() {
    for (arg, want) in [
        ("--skip-log-bin", "the binary log is off"),
        (
            "--binlog-format=STATEMENT",
            "binlog_format is STATEMENT, capture needs ROW",
        ),
        (
            "--binlog-row-image=MINIMAL",
            "binlog_row_image is MINIMAL, capture needs FULL",
        ),
    ] {
        let db = MariaDb::builder().arg(arg).start();
        db.create_database(DB).unwrap();
        db.sql(DB, "CREATE TABLE items (id INT PRIMARY KEY)")
            .unwrap();
        let err = open_error(db.url(DB)).await;
        assert!(err.contains(want), "{arg}: {err}");
    }
    let db = server();
    db.sql(
        DB,
        "CREATE TABLE items (id INT PRIMARY KEY); CREATE TABLE nokey (id INT); \
         CREATE USER 'plain'@'%'; GRANT SELECT ON shop.* TO 'plain'@'%'; \
         CREATE USER 'client'@'%'; GRANT SELECT ON shop.* TO 'client'@'%'; \
         GRANT BINLOG MONITOR ON *.* TO 'client'@'%';",
    )
    .unwrap();
    let url = |user: &str| format!("mysql://{user}@127.0.0.1:{}/{DB}", db.port());
    let err = open_error(url("plain")).await;
    assert!(err.contains("grant it REPLICATION CLIENT"), "{err}");
    let err = open_error(url("client")).await;
    assert!(err.contains("grant it REPLICATION SLAVE"), "{err}");
    let mut source =
        MysqlLogSource::new(MysqlLogOptions::new(db.url(DB), "p1", vec!["nokey".into()]));
    let err = source.open(None).await.unwrap_err().to_string();
    assert!(err.contains("table nokey has no primary key"), "{err}");
    let mut source = MysqlLogSource::new(MysqlLogOptions::new(
        db.url(DB),
        "p1",
        vec!["missing".into()],
    ));
    let err = source.open(None).await.unwrap_err().to_string();
    assert!(err.contains("table missing does not exist"), "{err}");

    // A position whose binlog file was purged.
    let mut source =
        MysqlLogSource::new(MysqlLogOptions::new(db.url(DB), "p1", vec!["items".into()]));
    let opened = source.open(None).await.unwrap();
    let Some(Position::Snapshot { stream, .. }) = opened.start else {
        panic!("{opened:?}")
    };
    drop(source);
    let status = |db: &MariaDb| {
        MysqlLogSource::new(MysqlLogOptions::new(db.url(DB), "p1", vec!["items".into()]))
    };
    let before = status(&db).binlog_status(Some(&stream)).await.unwrap();
    assert_eq!(before.behind, Some(0), "{before:?}");
    db.sql(DB, "INSERT INTO items VALUES (1)").unwrap();
    let after = status(&db).binlog_status(Some(&stream)).await.unwrap();
    assert!(after.behind.is_some_and(|b| b > 0), "{after:?}");
    db.sql(DB, "FLUSH BINARY LOGS; FLUSH BINARY LOGS;").unwrap();
    // The server purges a file only once its transactions are checkpointed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        db.sql(DB, "PURGE BINARY LOGS BEFORE NOW() + INTERVAL 1 DAY")
            .unwrap();
        let files = db.sql(DB, "SHOW BINARY LOGS").unwrap();
        if files.lines().count() == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not purged: {files}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let purged = status(&db).binlog_status(Some(&stream)).await.unwrap();
    assert_eq!(purged.behind, None, "{purged:?}");
    assert_eq!(purged.files, 1, "{purged:?}");
    let mut source =
        MysqlLogSource::new(MysqlLogOptions::new(db.url(DB), "p1", vec!["items".into()]));
    let err = match source.open(Some(*stream)).await {
        Err(e) => e.to_string(),
        Ok(_) => source
            .poll(10, Duration::from_millis(500))
            .await
            .unwrap_err()
            .to_string(),
    };
    assert!(
        err.contains("cannot send the binlog from") && err.contains("tidesync drop"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_copy_hands_out_copy_text_and_poll_takes_over_after_an_abandon() {
    let db = server();
    db.sql(
        DB,
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50)); \
         INSERT INTO items SELECT seq, CONCAT('item\\t', seq) FROM seq_1_to_2500;",
    )
    .unwrap();
    let mut opts = MysqlLogOptions::new(db.url(DB), "p1", vec!["items".into()]);
    opts.chunk_rows = 1_000;
    let mut source = MysqlLogSource::new(opts);
    source.open(None).await.unwrap();
    let first = source.copy_chunk(5_000).await.unwrap().unwrap();
    let second = source.copy_chunk(5_000).await.unwrap().unwrap();
    assert_eq!((first.rows, second.rows), (1_000, 1_000));
    assert_eq!(first.columns, vec!["id".to_owned(), "name".to_owned()]);
    let text = String::from_utf8(first.data.clone()).unwrap();
    assert_eq!(text.lines().next(), Some("1\titem\\t1"));
    assert_eq!(text.lines().count(), 1_000);
    match &second.position {
        Position::Snapshot { after, .. } => {
            assert_eq!(after, &Some(Key(vec![Value::Int(2_000)])))
        }
        other => panic!("{other:?}"),
    }
    // The sink refused the second chunk: poll reads from its start, and the direct copy is
    // over.
    source.copy_abandon(&second);
    assert!(source.copy_chunk(5_000).await.unwrap().is_none());
    let rest = poll_until(&mut source, |b| {
        b.last()
            .is_some_and(|b| matches!(b.position, Position::Binlog { .. }))
    })
    .await;
    let ids: Vec<i64> = changes(&rest).iter().map(|c| id_of(c)).collect();
    assert_eq!(ids, (1_001..=2_500).collect::<Vec<_>>());

    // A key whose columns are in another order than the table's: the chunk's position is
    // the last row's key in key order.
    db.sql(
        DB,
        "CREATE TABLE pairs (a INT, b INT, v INT, PRIMARY KEY (b, a)); \
         INSERT INTO pairs SELECT seq, seq % 3, 0 FROM seq_1_to_10;",
    )
    .unwrap();
    let mut opts = MysqlLogOptions::new(db.url(DB), "p2", vec!["pairs".into()]);
    opts.chunk_rows = 3;
    let mut source = MysqlLogSource::new(opts);
    source.open(None).await.unwrap();
    let chunk = source.copy_chunk(100).await.unwrap().unwrap();
    // (b, a) order: (0,3) (0,6) (0,9) (1,1) (1,4) ...
    assert_eq!(
        String::from_utf8(chunk.data).unwrap(),
        "3\t0\t0\n6\t0\t0\n9\t0\t0\n"
    );
    match &chunk.position {
        Position::Snapshot { after, .. } => {
            assert_eq!(after, &Some(Key(vec![Value::Int(0), Value::Int(9)])))
        }
        other => panic!("{other:?}"),
    }
    let next = source.copy_chunk(100).await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8(next.data).unwrap(),
        "1\t1\t0\n4\t1\t0\n7\t1\t0\n"
    );
}

/// Positions carry the server and the MariaDB GTIDs of their place: a restart against a
/// replica that took over (a failover: its own binlog file names and offsets) resumes right
/// after the last transaction handed out, found by GTID, with nothing doubled or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_replica_resumes_at_the_positions_gtids() {
    let mut primary = MariaDb::builder().arg("--binlog-row-metadata=FULL").start();
    let replica = MariaDb::builder()
        .args([
            "--server-id=2",
            "--log-slave-updates",
            "--binlog-row-metadata=FULL",
        ])
        .start();
    // The replica's binlog is its own: other file numbers, and writes of its own (in another
    // GTID domain) before it follows the primary, so no offset matches the primary's.
    replica
        .sql(
            "",
            &format!(
                "SET SESSION gtid_domain_id = 1; CREATE DATABASE local_only; \
                 CREATE TABLE local_only.t (id INT PRIMARY KEY); \
                 INSERT INTO local_only.t VALUES (1), (2), (3); \
                 FLUSH BINARY LOGS; FLUSH BINARY LOGS; \
                 CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', \
                 MASTER_USE_GTID=slave_pos; START SLAVE;",
                primary.port()
            ),
        )
        .unwrap();
    primary.create_database(DB).unwrap();
    primary
        .sql(
            DB,
            "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50)); \
             INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_100;",
        )
        .unwrap();
    let replicated = |n: i64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = replica.sql(DB, "SELECT COUNT(*) FROM items").ok();
            if got.as_deref().map(str::trim) == Some(n.to_string().as_str()) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "replica has {got:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    replicated(100);
    let opts = |url: String| MysqlLogOptions::new(url, "p1", vec!["items".into()]);
    let mut source = MysqlLogSource::new(opts(primary.url(DB)));
    source.open(None).await.unwrap();
    poll_until(&mut source, |b| {
        b.last()
            .is_some_and(|b| matches!(b.position, Position::Binlog { .. }))
    })
    .await;
    primary
        .sql(
            DB,
            "INSERT INTO items SELECT seq, 'streamed' FROM seq_101_to_110",
        )
        .unwrap();
    let got = poll_until(&mut source, |b| changes(b).len() >= 10).await;
    let stored = got.last().unwrap().position.clone();
    match &stored {
        Position::Binlog { gtid, server, .. } => {
            assert_eq!(*server, Some(1));
            assert!(
                gtid.as_deref().is_some_and(|g| g.starts_with("0-1-")),
                "{stored:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    drop(source);

    // Read from the replica while it still follows the primary (another server, the same
    // data): with nothing after the position yet, the idle position must stay one a restart
    // can resume from (the source does not take one from events before the first
    // transaction the replica sends; MariaDB 10.11 did not send such events here, so this
    // checks the outcome, not that guard).
    replicated(110);
    let mut source = MysqlLogSource::new(opts(replica.url(DB)));
    source.open(Some(stored.clone())).await.unwrap();
    let idle_until = std::time::Instant::now() + Duration::from_millis(1500);
    let mut idle = stored;
    while std::time::Instant::now() < idle_until {
        if let Some(b) = source.poll(100, Duration::from_millis(100)).await.unwrap() {
            assert!(b.changes.is_empty(), "{b:?}");
            idle = b.position;
        }
    }
    drop(source);

    // Written on the primary after that and replicated; then the primary is gone, and the
    // replica takes over and is written to.
    primary
        .sql(
            DB,
            "INSERT INTO items SELECT seq, 'late' FROM seq_111_to_120",
        )
        .unwrap();
    replicated(120);
    primary.stop().unwrap();
    replica.sql("", "STOP SLAVE; RESET SLAVE ALL;").unwrap();
    replica
        .sql(
            DB,
            "INSERT INTO items SELECT seq, 'on the replica' FROM seq_121_to_125",
        )
        .unwrap();
    let mut source = MysqlLogSource::new(opts(replica.url(DB)));
    source.open(Some(idle)).await.unwrap();
    let got = poll_until(&mut source, |b| changes(b).len() >= 15).await;
    let ids: Vec<i64> = changes(&got).iter().map(|c| id_of(c)).collect();
    assert_eq!(ids, (111..=125).collect::<Vec<_>>());
    match &got.last().unwrap().position {
        Position::Binlog { server, gtid, .. } => {
            assert_eq!(*server, Some(2));
            assert!(
                gtid.as_deref().is_some_and(|g| g.starts_with("0-2-")),
                "{gtid:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Nothing more arrives: no transaction was doubled.
    assert!(
        source
            .poll(100, Duration::from_millis(500))
            .await
            .unwrap()
            .is_none_or(|b| b.changes.is_empty())
    );
}

/// A connection that dies without saying so (here: the server frozen with SIGSTOP, so no
/// heartbeat comes) is noticed and retried, and capture goes on once the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_dead_connection_is_noticed_by_its_missing_heartbeats() {
    let db = server();
    db.sql(
        DB,
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50))",
    )
    .unwrap();
    let mut source =
        MysqlLogSource::new(MysqlLogOptions::new(db.url(DB), "p1", vec!["items".into()]));
    source.open(None).await.unwrap();
    poll_until(&mut source, |b| {
        b.last()
            .is_some_and(|b| matches!(b.position, Position::Binlog { .. }))
    })
    .await;
    db.sql(DB, "INSERT INTO items VALUES (1, 'a')").unwrap();
    poll_until(&mut source, |b| changes(b).len() == 1).await;
    let pid = db.pid().unwrap().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let started = std::time::Instant::now();
    let err = loop {
        match source.poll(10, Duration::from_millis(500)).await {
            Err(e) => break e,
            Ok(b) => assert!(b.is_none_or(|b| b.changes.is_empty())),
        }
        if started.elapsed() > Duration::from_secs(40) {
            signal("-CONT");
            panic!("the frozen server went unnoticed");
        }
    };
    signal("-CONT");
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("no binlog event or heartbeat"),
        "{err}"
    );
    db.sql(DB, "INSERT INTO items VALUES (2, 'b')").unwrap();
    let got = poll_until(&mut source, |b| !changes(b).is_empty()).await;
    assert_eq!(
        changes(&got).iter().map(|c| id_of(c)).collect::<Vec<_>>(),
        vec![2]
    );
}
