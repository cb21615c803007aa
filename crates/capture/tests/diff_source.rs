//! The `diff` and `incremental` sources against a real PostgreSQL (and MariaDB) and a real
//! store, driven like the runtime drives them (poll, append, ack): inserts, updates and deletes
//! found across pages, nothing found when nothing changed, a field mapping, a run cut short
//! and repeated without logging anything twice, clear errors for bad streams, and the
//! incremental watermark, overlap and full runs.

use std::time::Duration;

use tidesync_capture::diff::map::{Cast, FieldFrom, FieldSpec};
use tidesync_capture::diff::mysql::MysqlQueryReader;
use tidesync_capture::diff::pg::PgQueryReader;
use tidesync_capture::diff::reader::QueryReader;
use tidesync_capture::diff::{DiffOptions, DiffSource, Incremental, StreamSpec};
use tidesync_core::{Decimal, Key, MarkValue, Op, Position, Seq, Source, Value};
use tidesync_store::SqliteStore;
use tidesync_testkit::Postgres;

const DB: &str = "erp";
const PIPELINE: &str = "p1";

fn server(rows: i64) -> Postgres {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg.psql(
        DB,
        &format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, sku text NOT NULL, name text, \
               price numeric(10,2), changed timestamptz NOT NULL DEFAULT '2024-01-01Z'); \
             INSERT INTO items (id, sku, name, price) \
               SELECT g, 'SKU-' || g, 'item ' || g, g * 1.5 FROM generate_series(1, {rows}) g;"
        ),
    )
    .unwrap();
    pg
}

fn table_stream(name: &str) -> StreamSpec {
    StreamSpec {
        name: name.into(),
        query: None,
        key: Vec::new(),
        fields: Vec::new(),
        changed: None,
    }
}

fn source(pg: &Postgres, store: &SqliteStore, streams: Vec<StreamSpec>) -> DiffSource {
    DiffSource::new(
        DiffOptions {
            pipeline: PIPELINE.into(),
            streams,
            interval: Duration::ZERO,
            chunk_rows: 100,
            incremental: None,
        },
        {
            let url = pg.url(DB);
            move || Box::new(PgQueryReader::new(&url)) as Box<dyn QueryReader>
        },
        store.clone(),
    )
}

/// What one complete run logged: (op, key) in log order. A run is complete with the batch
/// that carries a newer run start than the store had.
async fn run(source: &mut DiffSource, store: &SqliteStore) -> Vec<(Op, Key)> {
    let status = store.status_blocking(PIPELINE).unwrap();
    let head = status.head;
    let started = |p: &Position| match p {
        Position::DiffRun { started_us, .. } => *started_us,
        other => panic!("not a diff position: {other}"),
    };
    let before = status.position.as_ref().map_or(0, started);
    loop {
        let Some(captured) = source.poll(250, Duration::from_millis(50)).await.unwrap() else {
            continue;
        };
        assert!(captured.changes.len() <= 250);
        assert_eq!(captured.fingerprints.len(), captured.changes.len());
        store.append_blocking(PIPELINE, &captured).unwrap();
        source.ack(captured.position.clone()).await.unwrap();
        if started(&captured.position) > before {
            let logged = store.read_blocking(PIPELINE, head, 1_000_000).unwrap();
            return logged
                .into_iter()
                .map(|e| (e.change.op, e.change.key))
                .collect();
        }
    }
}

fn int_keys(changes: &[(Op, Key)], op: Op) -> Vec<i64> {
    changes
        .iter()
        .filter(|(o, _)| *o == op)
        .map(|(_, k)| match k.0.as_slice() {
            [Value::Int(i)] => *i,
            other => panic!("unexpected key {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_inserts_updates_and_deletes_across_pages() {
    let pg = server(2_500);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
    let mut diff = source(&pg, &store, vec![table_stream("items")]);
    let opened = diff.open(None).await.unwrap();
    assert_eq!(
        opened.start,
        Some(Position::DiffRun {
            started_us: 0,
            full_us: 0,
            marks: Vec::new()
        })
    );
    let schema = &opened.schemas[0];
    assert_eq!(schema.key, vec!["id".to_owned()]);
    let types: Vec<&str> = schema
        .columns
        .iter()
        .map(|c| c.type_name.as_str())
        .collect();
    assert_eq!(types, ["int8", "text", "text", "numeric", "timestamptz"]);

    let first = run(&mut diff, &store).await;
    assert_eq!(
        int_keys(&first, Op::Insert),
        (1..=2_500).collect::<Vec<_>>()
    );
    assert_eq!(first.len(), 2_500);
    let row = store
        .current_row(PIPELINE, "items", &Key(vec![Value::Int(7)]))
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(
        row.get("price"),
        Some(&Value::Decimal(Decimal::parse("10.50").unwrap()))
    );
    assert_eq!(store.fingerprint_count(PIPELINE, "items").unwrap(), 2_500);

    // Nothing changed: nothing logged, but the run is recorded.
    assert!(run(&mut diff, &store).await.is_empty());

    // Changes at the start, the middle, page edges and the end; deletes at both ends.
    pg.psql(
        DB,
        "UPDATE items SET price = price + 1 WHERE id IN (1, 100, 101, 1250, 2500); \
         UPDATE items SET name = NULL WHERE id = 2000; \
         UPDATE items SET changed = changed WHERE id = 3; \
         DELETE FROM items WHERE id IN (2, 200, 2499); \
         INSERT INTO items (id, sku) VALUES (0, 'first'), (1500000, 'last'), (-5, 'neg');",
    )
    .unwrap();
    let changes = run(&mut diff, &store).await;
    assert_eq!(
        int_keys(&changes, Op::Update),
        [1, 100, 101, 1250, 2000, 2500]
    );
    assert_eq!(int_keys(&changes, Op::Delete), [2, 200, 2499]);
    assert_eq!(int_keys(&changes, Op::Insert), [-5, 0, 1_500_000]);
    assert_eq!(store.fingerprint_count(PIPELINE, "items").unwrap(), 2_500);
    assert!(
        store
            .current_row(PIPELINE, "items", &Key(vec![Value::Int(2)]))
            .unwrap()
            .is_none()
    );

    // A restart resumes from the stored position, and the fingerprints carry over.
    let position = store.status_blocking(PIPELINE).unwrap().position;
    let mut again = source(&pg, &store, vec![table_stream("items")]);
    again.open(position).await.unwrap();
    assert!(run(&mut again, &store).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_short_and_repeated_logs_nothing_twice() {
    let pg = server(1_000);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
    let mut diff = source(&pg, &store, vec![table_stream("items")]);
    diff.open(None).await.unwrap();
    // Part of the first run is logged, then the process "dies".
    let part = diff
        .poll(300, Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(part.changes.len(), 300);
    store.append_blocking(PIPELINE, &part).unwrap();
    // The same batch appended again (a retried append) logs nothing more.
    assert_eq!(store.append_blocking(PIPELINE, &part).unwrap(), None);
    drop(diff);
    let position = store.status_blocking(PIPELINE).unwrap().position;
    assert_eq!(
        position,
        Some(Position::DiffRun {
            started_us: 0,
            full_us: 0,
            marks: Vec::new()
        })
    );
    let mut diff = source(&pg, &store, vec![table_stream("items")]);
    diff.open(position).await.unwrap();
    let rest = run(&mut diff, &store).await;
    assert_eq!(
        int_keys(&rest, Op::Insert),
        (301..=1_000).collect::<Vec<_>>()
    );
    let logged = store.read_blocking(PIPELINE, Seq(0), 10_000).unwrap();
    assert_eq!(logged.len(), 1_000, "every row logged exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_mapped_to_the_model() {
    let pg = server(50);
    pg.psql(
        DB,
        "CREATE TABLE stock (warehouse text, item bigint, qty text, PRIMARY KEY (warehouse, item)); \
         INSERT INTO stock VALUES ('b', 1, '5'), ('B', 1, '7'), ('a', 2, '0012'), ('a', 10, '1');",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
    let field = |name: &str, from: FieldFrom, cast: Option<Cast>| FieldSpec {
        name: name.into(),
        from,
        cast,
    };
    let stream = StreamSpec {
        name: "stock".into(),
        query: Some("SELECT warehouse AS wh, item, qty FROM stock WHERE item < 100".into()),
        key: vec!["warehouse".into(), "item_no".into()],
        fields: vec![
            field("warehouse", FieldFrom::Column("wh".into()), None),
            field("item_no", FieldFrom::Column("item".into()), None),
            field("quantity", FieldFrom::Column("qty".into()), Some(Cast::Int)),
            field(
                "origin",
                FieldFrom::Value(Value::Text("erp-a".into())),
                None,
            ),
        ],
        changed: None,
    };
    let mut diff = source(&pg, &store, vec![stream.clone()]);
    let opened = diff.open(None).await.unwrap();
    let schema = &opened.schemas[0];
    let names: Vec<(&str, &str)> = schema
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("warehouse", "text"),
            ("item_no", "int8"),
            ("quantity", "int8"),
            ("origin", "text")
        ]
    );
    let changes = run(&mut diff, &store).await;
    // Text keys in byte order ('B' < 'a' < 'b'), then the integer part numerically.
    let keys: Vec<String> = changes.iter().map(|(_, k)| k.to_string()).collect();
    assert_eq!(
        keys,
        [r#"("B", 1)"#, r#"("a", 2)"#, r#"("a", 10)"#, r#"("b", 1)"#]
    );
    let row = store
        .current_row(
            PIPELINE,
            "stock",
            &Key(vec![Value::Text("a".into()), Value::Int(2)]),
        )
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(row.get("quantity"), Some(&Value::Int(12)));
    assert_eq!(row.get("origin"), Some(&Value::Text("erp-a".into())));

    // '0012' -> '12' is the same model row: nothing to log.
    pg.psql(DB, "UPDATE stock SET qty = '12' WHERE item = 2")
        .unwrap();
    assert!(run(&mut diff, &store).await.is_empty());

    // A value the cast cannot take stops the run with an error naming field and value.
    pg.psql(DB, "UPDATE stock SET qty = 'lots' WHERE item = 10")
        .unwrap();
    let err = loop {
        match diff.poll(100, Duration::from_millis(50)).await {
            Ok(Some(c)) => {
                store.append_blocking(PIPELINE, &c).unwrap();
            }
            Ok(None) => {}
            Err(e) => break e,
        }
    };
    assert!(!err.is_transient());
    assert!(
        err.to_string()
            .contains("stream stock: field quantity: cannot cast text \"lots\" to int"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_are_named() {
    let pg = server(10);
    pg.psql(DB, "INSERT INTO items (id, sku) VALUES (11, 'SKU-1')")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
    let open_err = |stream: StreamSpec| {
        let mut diff = source(&pg, &store, vec![stream]);
        async move { diff.open(None).await.unwrap_err().to_string() }
    };
    let err = open_err(table_stream("nope")).await;
    assert!(err.contains("nope"), "{err}");
    let err = open_err(StreamSpec {
        name: "items".into(),
        query: Some("SELECT id, sku FROM items".into()),
        key: vec!["id".into()],
        fields: vec![FieldSpec {
            name: "id".into(),
            from: FieldFrom::Column("item_id".into()),
            cast: None,
        }],
        changed: None,
    })
    .await;
    assert!(
        err.contains("stream items: the query has no column item_id (it has: id, sku)"),
        "{err}"
    );
    let err = open_err(StreamSpec {
        name: "items".into(),
        query: Some("SELECT id, sku, sku FROM items".into()),
        key: vec!["id".into()],
        fields: Vec::new(),
        changed: None,
    })
    .await;
    assert!(err.contains("returns two columns named sku"), "{err}");

    // A key that is not unique in the query's result.
    let mut diff = source(
        &pg,
        &store,
        vec![StreamSpec {
            name: "skus".into(),
            query: Some("SELECT regexp_replace(sku, '^SKU-', '') AS code FROM items".into()),
            key: vec!["code".into()],
            fields: Vec::new(),
            changed: None,
        }],
    );
    diff.open(None).await.unwrap();
    let err = loop {
        match diff.poll(100, Duration::from_millis(50)).await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(
        err.to_string()
            .contains("key (\"1\") appears more than once in the query's result"),
        "{err}"
    );
}

fn incremental_source(pg: &Postgres, store: &SqliteStore, full_every: Duration) -> DiffSource {
    DiffSource::new(
        DiffOptions {
            pipeline: PIPELINE.into(),
            streams: vec![StreamSpec {
                changed: Some("changed".into()),
                ..table_stream("items")
            }],
            interval: Duration::ZERO,
            chunk_rows: 100,
            incremental: Some(Incremental {
                overlap: Duration::from_secs(60),
                full_every,
            }),
        },
        {
            let url = pg.url(DB);
            move || Box::new(PgQueryReader::new(&url)) as Box<dyn QueryReader>
        },
        store.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_reads_past_the_watermark_and_finds_deletes_in_full_runs() {
    // 1,000 rows, all changed at the same instant.
    let pg = server(1_000);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
    let hour = Duration::from_secs(3600);
    let mut inc = incremental_source(&pg, &store, hour);
    inc.open(None).await.unwrap();
    // The first run compares every row (and sets the watermark).
    let first = run(&mut inc, &store).await;
    assert_eq!(int_keys(&first, Op::Insert).len(), 1_000);
    let Some(Position::DiffRun { full_us, marks, .. }) =
        store.status_blocking(PIPELINE).unwrap().position
    else {
        panic!("no diff position");
    };
    assert!(full_us > 0);
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0].stream, "items");
    assert_eq!(
        marks[0].value,
        MarkValue::Timestamp(1_704_067_200_000_000),
        "2024-01-01Z, the rows' shared change time"
    );

    // Many rows sharing one new timestamp, a row stamped between the old and the new
    // watermark, a row stamped before the watermark (only a full run finds it), a delete.
    pg.psql(
        DB,
        "UPDATE items SET price = 1, changed = '2024-02-01Z' WHERE id <= 300; \
         INSERT INTO items (id, sku, changed) VALUES (5000, 'new', '2024-02-01Z'); \
         UPDATE items SET name = 'late', changed = '2024-01-31 23:59:30Z' WHERE id = 900; \
         UPDATE items SET name = 'old', changed = '2023-01-01Z' WHERE id = 950; \
         DELETE FROM items WHERE id = 999;",
    )
    .unwrap();
    let second = run(&mut inc, &store).await;
    // In change-time order: the row stamped 2024-01-31 first, then the shared stamp by key.
    let mut expected: Vec<i64> = vec![900];
    expected.extend(1..=300);
    assert_eq!(int_keys(&second, Op::Update), expected);
    assert_eq!(int_keys(&second, Op::Insert), [5000]);
    assert!(int_keys(&second, Op::Delete).is_empty());
    assert_eq!(
        second.len(),
        302,
        "row 950, stamped before the watermark, is not read"
    );
    // Nothing new: the overlap reads the last rows again, and the store logs none of them.
    assert!(run(&mut inc, &store).await.is_empty());

    // The late row (within the overlap of the new watermark) comes through.
    pg.psql(
        DB,
        "UPDATE items SET name = 'late2', changed = '2024-01-31 23:59:30Z' WHERE id = 901",
    )
    .unwrap();
    let late = run(&mut inc, &store).await;
    assert_eq!(int_keys(&late, Op::Update), [901]);

    // A full run (due after `full_every`) finds the rest: the old-stamped rows and the delete.
    let position = store.status_blocking(PIPELINE).unwrap().position;
    let mut full = incremental_source(&pg, &store, Duration::from_millis(1));
    full.open(position).await.unwrap();
    let found = run(&mut full, &store).await;
    assert_eq!(int_keys(&found, Op::Update), [950]);
    assert_eq!(int_keys(&found, Op::Delete), [999]);
    assert_eq!(found.len(), 2);
}

/// The same incremental cycle on MariaDB: its reader's `read_changed` serves the polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_on_mariadb_reads_only_rows_past_the_watermark() {
    let maria = tidesync_testkit::MariaDb::start();
    maria.create_database("erp").unwrap();
    maria
        .sql(
            "erp",
            "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(40), \
               changed DATETIME(6) NOT NULL); \
             INSERT INTO items SELECT seq, CONCAT('item ', seq), '2024-01-01 00:00:00' \
               FROM seq_1_to_500;",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
    let source = |full_every: Duration| {
        let url = maria.url("erp");
        DiffSource::new(
            DiffOptions {
                pipeline: PIPELINE.into(),
                streams: vec![StreamSpec {
                    changed: Some("changed".into()),
                    ..table_stream("items")
                }],
                interval: Duration::ZERO,
                chunk_rows: 100,
                incremental: Some(Incremental {
                    overlap: Duration::from_secs(60),
                    full_every,
                }),
            },
            move || Box::new(MysqlQueryReader::new(url.clone())) as Box<dyn QueryReader>,
            store.clone(),
        )
    };
    let mut inc = source(Duration::from_secs(3600));
    inc.open(None).await.unwrap();
    assert_eq!(run(&mut inc, &store).await.len(), 500);
    maria
        .sql(
            "erp",
            "UPDATE items SET name = 'new', changed = '2024-02-01 00:00:00' WHERE id <= 20; \
             UPDATE items SET name = 'old', changed = '2023-06-01 00:00:00' WHERE id = 400; \
             DELETE FROM items WHERE id = 450; \
             INSERT INTO items VALUES (1000, 'added', '2024-02-01 00:00:00');",
        )
        .unwrap();
    let polled = run(&mut inc, &store).await;
    assert_eq!(int_keys(&polled, Op::Update), (1..=20).collect::<Vec<_>>());
    assert_eq!(int_keys(&polled, Op::Insert), [1000]);
    assert_eq!(
        polled.len(),
        21,
        "the old-stamped row and the delete wait for a full run"
    );
    assert!(run(&mut inc, &store).await.is_empty());
    let position = store.status_blocking(PIPELINE).unwrap().position;
    let mut full = source(Duration::from_millis(1));
    full.open(position).await.unwrap();
    let found = run(&mut full, &store).await;
    assert_eq!(int_keys(&found, Op::Update), [400]);
    assert_eq!(int_keys(&found, Op::Delete), [450]);
}
