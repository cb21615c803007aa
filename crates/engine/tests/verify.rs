//! `verify::compare_table` against real databases: two PostgreSQL databases on one testkit
//! server (the in-database hash path), SQLite values written into PostgreSQL and SQLite by the
//! real capture and sinks (canonical values across kinds), and SQLite pages of very different
//! sizes on the two sides.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tidesync_capture::sqlite::TriggerSource;
use tidesync_core::{Batch, BatchKind, Key, LogEntry, Seq, Sink, Source, Value};
use tidesync_deliver::postgres::PostgresSink;
use tidesync_deliver::sqlite::SqliteSink;
use tidesync_engine::verify::{
    DiffKind, Endpoint, KeyDiff, Method, TableReport, VerifyOptions, compare_table,
};
use tidesync_testkit::Postgres;

fn options(chunk_rows: usize) -> VerifyOptions {
    VerifyOptions {
        chunk_rows,
        ..VerifyOptions::default()
    }
}

fn keys(report: &TableReport) -> Vec<(DiffKind, String, Vec<String>)> {
    report
        .keys
        .iter()
        .map(|KeyDiff { kind, key, columns }| (*kind, key.to_string(), columns.clone()))
        .collect()
}

const PG_TABLE: &str = "CREATE TABLE sales.items (
    id bigint PRIMARY KEY, sku text NOT NULL, price numeric(12,2), qty integer,
    at timestamptz, doc jsonb, tags text[], flag boolean, img bytea, code char(4),
    ratio real, total double precision, total_x2 double precision GENERATED ALWAYS AS (total * 2) STORED)";

const PG_ROWS: &str = "INSERT INTO sales.items (id, sku, price, qty, at, doc, tags, flag, img, code, ratio, total)
    SELECT i, 'SKU-' || i, i * 1.25, i % 97, timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute',
           jsonb_build_object('n', i, 'even', i % 2 = 0), ARRAY['a', 'b c', NULL], i % 3 = 0,
           decode(md5(i::text), 'hex'), 'c' || (i % 10), i / 7.0, i * 0.1
    FROM generate_series(1, 5000) AS i";

fn two_postgres_databases() -> (Postgres, Endpoint, Endpoint) {
    let pg = Postgres::start();
    for db in ["shop", "copy"] {
        pg.create_database(db).unwrap();
        pg.psql(db, &format!("CREATE SCHEMA sales; {PG_TABLE}; {PG_ROWS}"))
            .unwrap();
    }
    let (a, b) = (
        Endpoint::Postgres {
            url: pg.url("shop"),
        },
        Endpoint::Postgres {
            url: pg.url("copy"),
        },
    );
    (pg, a, b)
}

/// The source names `sales.items`; the sinks would name the target table by the stream name,
/// one identifier, so the copy gets a view of that name over the real table.
fn alias_target(pg: &Postgres) {
    pg.psql(
        "copy",
        "CREATE VIEW \"sales.items\" AS SELECT * FROM sales.items",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres_equal_tables_are_hashed_in_the_database() {
    let (pg, shop, copy) = two_postgres_databases();
    alias_target(&pg);
    let report = compare_table(&shop, &copy, "sales.items", &options(1000))
        .await
        .unwrap();
    assert_eq!(report.method, Method::DatabaseHash);
    assert!(report.is_equal(), "{report:?}");
    assert_eq!((report.source_rows, report.target_rows), (5000, 5000));
    assert_eq!((report.chunks, report.chunks_differing), (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres_differences_are_narrowed_to_their_keys() {
    let (pg, shop, copy) = two_postgres_databases();
    alias_target(&pg);
    pg.psql(
        "copy",
        "DELETE FROM sales.items WHERE id = 1500;
         INSERT INTO sales.items (id, sku) VALUES (9999, 'new');
         UPDATE sales.items SET qty = -1 WHERE id = 2500;
         UPDATE sales.items SET tags = ARRAY['a', 'b  c', NULL] WHERE id = 2600;
         -- Same jsonb, spelled differently: jsonb keeps no spelling, so still equal.
         UPDATE sales.items SET doc = '{\"even\": true,  \"n\": 4000}' WHERE id = 4000;",
    )
    .unwrap();
    let report = compare_table(&shop, &copy, "sales.items", &options(1000))
        .await
        .unwrap();
    assert_eq!(report.method, Method::DatabaseHash);
    assert_eq!(
        (report.missing, report.extra, report.different),
        (1, 1, 2),
        "{report:?}"
    );
    assert_eq!(
        keys(&report),
        vec![
            (DiffKind::Missing, "(1500)".to_owned(), vec![]),
            (
                DiffKind::Different,
                "(2500)".to_owned(),
                vec!["qty".to_owned()]
            ),
            (
                DiffKind::Different,
                "(2600)".to_owned(),
                vec!["tags".to_owned()]
            ),
            (DiffKind::Extra, "(9999)".to_owned(), vec![]),
        ]
    );
    // Only the chunks holding a difference were read row by row.
    assert_eq!(report.chunks_differing, 3);
}

/// Two databases with `ddl` and the same `rows`, then `changes` in the copy: the keys the
/// in-database hash path reports, with `chunk_rows` rows per chunk.
async fn database_hash_diffs(
    ddl: &str,
    rows: &str,
    changes: &str,
    chunk_rows: usize,
) -> Vec<(DiffKind, String, Vec<String>)> {
    let pg = Postgres::start();
    for db in ["shop", "copy"] {
        pg.create_database(db).unwrap();
        pg.psql(db, &format!("{ddl}; {rows}")).unwrap();
    }
    pg.psql("copy", changes).unwrap();
    let (shop, copy) = (
        Endpoint::Postgres {
            url: pg.url("shop"),
        },
        Endpoint::Postgres {
            url: pg.url("copy"),
        },
    );
    let report = compare_table(&shop, &copy, "t", &options(chunk_rows))
        .await
        .unwrap();
    assert_eq!(report.method, Method::DatabaseHash);
    assert_eq!(
        (report.source_rows, report.target_rows),
        (60, 60),
        "{report:?}"
    );
    keys(&report)
}

fn different(key: &str, columns: &[&str]) -> (DiffKind, String, Vec<String>) {
    (
        DiffKind::Different,
        key.to_owned(),
        columns.iter().map(|c| (*c).to_owned()).collect(),
    )
}

/// What a weak row hash would miss, in one chunk each: values traded between two rows or two
/// columns, NULL against the zero value and the empty text, a microsecond, a scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_hashes_tell_apart_traded_values_nulls_and_near_values() {
    let ddl = "CREATE TABLE t (id bigint PRIMARY KEY, a text, b text, n integer, x numeric, \
               p numeric(8,2), at timestamptz, u uuid, f boolean)";
    let rows = "INSERT INTO t SELECT i, 'a' || i, 'b' || i, i, i, i, \
                timestamptz '2026-01-01 00:00:00+00' + i * interval '1 hour', \
                md5(i::text)::uuid, i % 2 = 0 FROM generate_series(1, 60) AS i";
    let changes = "UPDATE t SET a = 'a11' WHERE id = 10; UPDATE t SET a = 'a10' WHERE id = 11;
         UPDATE t SET a = b, b = a WHERE id = 20;
         UPDATE t SET n = NULL WHERE id = 30; UPDATE t SET n = 0 WHERE id = 31;
         UPDATE t SET a = NULL WHERE id = 32; UPDATE t SET a = '' WHERE id = 33;
         UPDATE t SET x = 40.0 WHERE id = 40;
         UPDATE t SET at = at + interval '1 microsecond' WHERE id = 45;
         UPDATE t SET u = md5('x')::uuid WHERE id = 50; UPDATE t SET f = NOT f WHERE id = 51;
         UPDATE t SET p = p + 0.01 WHERE id = 55;";
    // The source's 1,000 chunk rows and 7 (several chunks, each end found in its scan).
    for chunk_rows in [1000, 7] {
        assert_eq!(
            database_hash_diffs(ddl, rows, changes, chunk_rows).await,
            vec![
                different("(10)", &["a"]),
                different("(11)", &["a"]),
                different("(20)", &["a", "b"]),
                different("(30)", &["n"]),
                different("(31)", &["n"]),
                different("(32)", &["a"]),
                different("(33)", &["a"]),
                different("(40)", &["x"]),
                different("(45)", &["at"]),
                different("(50)", &["u"]),
                different("(51)", &["f"]),
                different("(55)", &["p"]),
            ],
            "{chunk_rows} rows per chunk"
        );
    }
}

/// A two-column key has no one-column `max`: chunk ends come from the source's key index
/// ahead of the hashing. A key missing, one extra and a changed row, across chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_hashes_over_a_two_column_key() {
    let ddl = "CREATE TABLE t (shop text, id integer, v text, PRIMARY KEY (shop, id))";
    let rows = "INSERT INTO t SELECT 's' || (i % 3), i, 'v' || i FROM generate_series(1, 60) AS i";
    let changes = "DELETE FROM t WHERE shop = 's1' AND id = 7;
         INSERT INTO t VALUES ('s1', 1000, 'new');
         UPDATE t SET v = 'changed' WHERE shop = 's2' AND id = 50;";
    assert_eq!(
        database_hash_diffs(ddl, rows, changes, 8).await,
        vec![
            (DiffKind::Missing, "(\"s1\", 7)".to_owned(), vec![]),
            (DiffKind::Extra, "(\"s1\", 1000)".to_owned(), vec![]),
            different("(\"s2\", 50)", &["v"]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sides_with_different_column_types_compare_canonical_rows() {
    let pg = Postgres::start();
    pg.create_database("shop").unwrap();
    pg.create_database("copy").unwrap();
    pg.psql(
        "shop",
        "CREATE TABLE t (id integer PRIMARY KEY, price numeric(12,2), name varchar(20), at timestamp);
         INSERT INTO t SELECT i, i * 0.5, 'n' || i, timestamp '2026-01-01' + i * interval '1 second'
         FROM generate_series(1, 300) i;",
    )
    .unwrap();
    // What a sink creating the table from another system could have made of it.
    pg.psql(
        "copy",
        "CREATE TABLE t (id bigint PRIMARY KEY, price numeric, name text, at timestamptz);
         INSERT INTO t SELECT i, round(i * 0.5, 2), 'n' || i, timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
         FROM generate_series(1, 300) i;
         UPDATE t SET price = 21.5 WHERE id = 43;",
    )
    .unwrap();
    let (shop, copy) = (
        Endpoint::Postgres {
            url: pg.url("shop"),
        },
        Endpoint::Postgres {
            url: pg.url("copy"),
        },
    );
    let report = compare_table(&shop, &copy, "t", &options(64))
        .await
        .unwrap();
    assert_eq!(report.method, Method::RowHash);
    // 21.50 (numeric(12,2)) reaches an unconstrained numeric column as 21.50: 21.5 differs.
    assert_eq!(
        keys(&report),
        vec![(
            DiffKind::Different,
            "(43)".to_owned(),
            vec!["price".to_owned()]
        )]
    );
    assert_eq!((report.source_rows, report.target_rows), (300, 300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_keys_walk_in_byte_order_under_any_collation() {
    let pg = Postgres::start();
    pg.create_database("shop").unwrap();
    pg.create_database("copy").unwrap();
    let rows = "INSERT INTO t VALUES ('b', 1), ('B', 2), ('a', 3), ('é', 4), ('Z', 5), ('aa', 6)";
    pg.psql(
        "shop",
        &format!("CREATE TABLE t (k text COLLATE \"en_US\" PRIMARY KEY, v int); {rows}"),
    )
    .or_else(|_| {
        // No en_US locale on this machine: an ICU collation orders case-insensitively too.
        pg.psql(
            "shop",
            &format!("CREATE TABLE t (k text COLLATE \"und-x-icu\" PRIMARY KEY, v int); {rows}"),
        )
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("r.db");
    Connection::open(&replica)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER); {rows}; UPDATE t SET v = 0 WHERE k = 'é'"
        ))
        .unwrap();
    let report = compare_table(
        &Endpoint::Postgres {
            url: pg.url("shop"),
        },
        &Endpoint::Sqlite { path: replica },
        "t",
        &options(2),
    )
    .await
    .unwrap();
    assert_eq!(
        keys(&report),
        vec![(
            DiffKind::Different,
            "(\"é\")".to_owned(),
            vec!["v".to_owned()]
        )],
        "{report:?}"
    );
}

/// A SQLite table with a column of each declared type family and values a SQLite
/// application really writes there.
const SQLITE_TABLE: &str = "CREATE TABLE things (
    id INTEGER PRIMARY KEY, i INTEGER, r REAL, n NUMERIC, d DECIMAL(10,2), t TEXT, b BLOB,
    ok BOOLEAN, ts TIMESTAMP, day DATE, v VARCHAR(10), doc JSON, x)";

const SQLITE_ROWS: &str = "INSERT INTO things VALUES
    (1, 9223372036854775807, 0.1, '12.50', '3', 'plain', x'00ff', 1, '2026-11-23T10:00:00+02:00', '2026-11-23', 'v', '{\"b\": 1, \"a\": 2}', 5),
    (2, -1, 1e300, 1e21, 0.5, 42, 'text in a blob', 0, '2026-11-23 10:00:00', '1999-12-31', 7, '[1, 2]', 2.5),
    (3, NULL, -0.0, '1.00', '19.999', 1.5, NULL, 'true', '2026-11-23T10:00:00.1234565Z', NULL, NULL, NULL, 'abc'),
    (4, 0, 3, 7, NULL, '', x'', NULL, NULL, '2000-02-29', '', 'null', x'6869')";

async fn captured_batch(master: &Path) -> (Vec<tidesync_core::TableSchema>, Arc<Batch>) {
    let mut source =
        TriggerSource::new(master, "p", vec!["things".into()], Duration::from_millis(5));
    let schemas = source.open(None).await.unwrap().schemas;
    let captured = source
        .poll(1000, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    let entries: Vec<LogEntry> = captured
        .changes
        .into_iter()
        .enumerate()
        .map(|(i, change)| LogEntry {
            seq: Seq(i as u64 + 1),
            change,
        })
        .collect();
    let batch = Batch {
        pipeline: "p".into(),
        kind: BatchKind::Full,
        first_seq: Seq(1),
        last_seq: Seq(entries.len() as u64),
        entries,
        position: None,
    };
    (schemas, Arc::new(batch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_values_equal_what_the_real_sinks_wrote_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let (master, replica) = (dir.path().join("m.db"), dir.path().join("r.db"));
    Connection::open(&master)
        .unwrap()
        .execute_batch(&format!("{SQLITE_TABLE}; {SQLITE_ROWS}"))
        .unwrap();
    let (schemas, batch) = captured_batch(&master).await;
    let pg = Postgres::start();
    pg.create_database("warehouse").unwrap();
    let mut sink = PostgresSink::new(&pg.url("warehouse"), "p", "w", true);
    sink.open(schemas.clone()).await.unwrap();
    sink.apply(batch.clone()).await.unwrap();
    let mut sink = SqliteSink::new(&replica, "p", "r", true);
    sink.open(schemas).await.unwrap();
    sink.apply(batch).await.unwrap();

    let source = Endpoint::Sqlite {
        path: master.clone(),
    };
    let warehouse = Endpoint::Postgres {
        url: pg.url("warehouse"),
    };
    for target in [&warehouse, &Endpoint::Sqlite { path: replica }] {
        let report = compare_table(&source, target, "things", &options(2))
            .await
            .unwrap();
        assert!(report.is_equal(), "{target:?}: {report:?}");
        assert_eq!(report.source_rows, 4);
    }

    // One cell changed by hand in each type family is noticed.
    for (column, new) in [
        ("n", "12.5000"),
        ("d", "3.0"),
        ("r", "0.1000001"),
        ("ts", "'2026-11-23 08:00:00.000001+00'"),
        ("ok", "false"),
        ("b", "'\\x00fe'"),
        ("x", "'5.0'"),
    ] {
        pg.psql(
            "warehouse",
            &format!("CREATE TABLE saved AS SELECT * FROM things WHERE id = 1; UPDATE things SET {column} = {new} WHERE id = 1"),
        )
        .unwrap();
        let report = compare_table(&source, &warehouse, "things", &options(2))
            .await
            .unwrap();
        assert_eq!(
            keys(&report),
            vec![(
                DiffKind::Different,
                "(1)".to_owned(),
                vec![column.to_owned()]
            )],
            "{column} = {new}"
        );
        pg.psql(
            "warehouse",
            "DELETE FROM things WHERE id = 1; INSERT INTO things SELECT * FROM saved; DROP TABLE saved",
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_very_different_sizes_still_meet_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    Connection::open(&a)
        .unwrap()
        .execute_batch(
            "CREATE TABLE t (k INTEGER, s TEXT, v, PRIMARY KEY (s, k));
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
             INSERT INTO t SELECT i, 'g' || (i % 3), i * 2 FROM n;",
        )
        .unwrap();
    std::fs::copy(&a, &b).unwrap();
    // 2,500 rows the source does not have, all between two source keys, and a gap.
    Connection::open(&b)
        .unwrap()
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 5001 UNION ALL SELECT i + 1 FROM n WHERE i < 7500)
             INSERT INTO t SELECT i, 'g1', 0 FROM n;
             DELETE FROM t WHERE s = 'g2' AND k BETWEEN 100 AND 400;
             UPDATE t SET v = 'x' WHERE s = 'g0' AND k = 999;",
        )
        .unwrap();
    let report = compare_table(
        &Endpoint::Sqlite { path: a },
        &Endpoint::Sqlite { path: b },
        "t",
        &VerifyOptions {
            chunk_rows: 100,
            max_keys: 3,
            ..VerifyOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (report.missing, report.extra, report.different),
        (100, 2500, 1),
        "{report:?}"
    );
    assert_eq!((report.source_rows, report.target_rows), (1000, 3400));
    assert_eq!(
        report.keys.len(),
        3,
        "the listing is capped, the counts are not"
    );
    assert_eq!(
        report.keys[0],
        KeyDiff {
            kind: DiffKind::Different,
            key: Key(vec![Value::Text("g0".into()), Value::Int(999)]),
            columns: vec!["v".into()],
        }
    );
}
