//! The `diff` mode's query readers (`diff::mysql`, `diff::sqlite`) against a real MariaDB and
//! real SQLite files: described columns and types, primary keys, every type's values, key
//! order by bytes whatever the collation, pages, an early stop, and the errors; reads of the
//! rows changed since a watermark (`read_changed`); PostgreSQL's chunk sums and its reads of
//! some chunks only (`chunk_sums`, `read_hashes`).

use std::path::Path;

use tidesync_capture::diff::mysql::MysqlQueryReader;
use tidesync_capture::diff::pg::PgQueryReader;
use tidesync_capture::diff::reader::{ChunkFilter, HashedRow, Page, QueryColumn, QueryReader};
use tidesync_capture::diff::sqlite::SqliteQueryReader;
use tidesync_core::{Decimal, StageError, Value};
use tidesync_testkit::{MariaDb, Postgres};
use tokio::sync::mpsc;

const DB: &str = "shop";

fn mariadb() -> MariaDb {
    let db = MariaDb::start();
    db.create_database(DB).unwrap();
    db
}

/// Describes `query`, then reads it ordered by `order` in pages of `page_rows`.
async fn read_pages(
    reader: &mut impl QueryReader,
    query: &str,
    order: &[usize],
    page_rows: usize,
) -> (Vec<QueryColumn>, Vec<Page>) {
    let columns = reader.columns(query).await.unwrap();
    let (tx, mut rx) = mpsc::channel(2);
    let collect = async {
        let mut pages = Vec::new();
        while let Some(page) = rx.recv().await {
            pages.push(page);
        }
        pages
    };
    let (read, pages) = tokio::join!(reader.read(query, &columns, order, page_rows, tx), collect);
    read.unwrap();
    (columns, pages)
}

async fn read_rows(reader: &mut impl QueryReader, query: &str, order: &[usize]) -> Vec<Vec<Value>> {
    read_pages(reader, query, order, 1000)
        .await
        .1
        .into_iter()
        .flatten()
        .collect()
}

/// Reads the rows of `query` whose column `changed` is at or after `since`, sorted by it and
/// then by `order`, in pages of `page_rows`.
async fn read_changed_pages(
    reader: &mut impl QueryReader,
    query: &str,
    changed: usize,
    since: Option<&Value>,
    order: &[usize],
    page_rows: usize,
) -> Vec<Page> {
    let columns = reader.columns(query).await.unwrap();
    let (tx, mut rx) = mpsc::channel(2);
    let collect = async {
        let mut pages = Vec::new();
        while let Some(page) = rx.recv().await {
            pages.push(page);
        }
        pages
    };
    let (read, pages) = tokio::join!(
        reader.read_changed(query, &columns, changed, since, order, page_rows, tx),
        collect
    );
    read.unwrap();
    pages
}

/// The page sizes and the rows' values at `pick`, in order.
fn picked(pages: &[Page], pick: &[usize]) -> (Vec<usize>, Vec<Vec<Value>>) {
    let sizes = pages.iter().map(Vec::len).collect();
    let rows = pages
        .iter()
        .flatten()
        .map(|r| pick.iter().map(|&i| r[i].clone()).collect())
        .collect();
    (sizes, rows)
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// The definite error of a `read_changed` of `query` by column `changed` since `since`.
async fn changed_error(
    reader: &mut impl QueryReader,
    query: &str,
    columns: &[QueryColumn],
    changed: usize,
    since: &Value,
) -> String {
    let (tx, _rx) = mpsc::channel(4);
    let e = reader
        .read_changed(query, columns, changed, Some(since), &[0], 10, tx)
        .await
        .unwrap_err();
    definite(&e)
}

fn definite(e: &StageError) -> String {
    assert!(!e.is_transient(), "expected a definite error, got {e}");
    e.to_string()
}

// --- MySQL/MariaDB ---

const TYPED: &str = "SET NAMES utf8mb4; SET time_zone = '+00:00';
CREATE TABLE typed (
    id INT NOT NULL PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, i INT, iu INT UNSIGNED,
    bi BIGINT, biu BIGINT UNSIGNED, biu_small BIGINT UNSIGNED,
    d DECIMAL(12,2), f FLOAT, db DOUBLE,
    c CHAR(5), vc VARCHAR(40), t TEXT, l1 VARCHAR(20) CHARACTER SET latin1,
    bn BINARY(4), vb VARBINARY(10), bl BLOB,
    dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL, y YEAR,
    b1 BIT(1), b12 BIT(12), e ENUM('a','b c'), st SET('x','y','z'), j JSON, n INT NULL
) DEFAULT CHARSET = utf8mb4;
INSERT INTO typed VALUES (1, -128, 255, -32768, -8388608, -2147483648, 4294967295,
    -9223372036854775808, 18446744073709551615, 7, '-1234567890.25', 1.5, 0.1,
    'ab', 'héllo 😀', 'long text', 'café €', 'ab', x'00ff', x'deadbeef',
    '2024-02-29', '-838:59:59.000001', '2024-02-29 23:59:59.123456',
    '2024-02-29 23:59:59.654321', 2024, b'1', b'101010101010', 'b c', 'x,z',
    '{\"a\": [1, 2.5]}', NULL);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_columns_give_names_types_and_nullability() {
    let db = mariadb();
    db.sql(DB, TYPED).unwrap();
    let mut reader = MysqlQueryReader::new(db.url(DB));
    let columns = reader.columns("SELECT * FROM typed").await.unwrap();
    let got: Vec<(&str, &str, bool)> = columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_name.as_str(), c.nullable))
        .collect();
    assert_eq!(
        got,
        vec![
            ("id", "int", false),
            ("ti", "tinyint", true),
            ("tiu", "tinyint unsigned", true),
            ("si", "smallint", true),
            ("mi", "mediumint", true),
            ("i", "int", true),
            ("iu", "int unsigned", true),
            ("bi", "bigint", true),
            ("biu", "bigint unsigned", true),
            ("biu_small", "bigint unsigned", true),
            ("d", "decimal(12,2)", true),
            ("f", "float", true),
            ("db", "double", true),
            ("c", "char(5)", true),
            ("vc", "varchar(40)", true),
            ("t", "text", true),
            ("l1", "varchar(20)", true),
            ("bn", "binary(4)", true),
            ("vb", "varbinary(10)", true),
            ("bl", "blob", true),
            ("dt", "date", true),
            ("tm", "time(6)", true),
            ("dtm", "datetime(6)", true),
            ("ts", "timestamp(6)", true),
            ("y", "year", true),
            ("b1", "bit(1)", true),
            ("b12", "bit(12)", true),
            ("e", "varchar(3)", true),
            ("st", "varchar(5)", true),
            // MariaDB's JSON is LONGTEXT.
            ("j", "longtext", true),
            ("n", "int", true),
        ]
    );
    let expr = reader
        .columns("SELECT id * 2 AS twice, CONCAT(c, 'x') AS cx FROM typed")
        .await
        .unwrap();
    assert_eq!(expr[0].name, "twice");
    assert_eq!(expr[1].name, "cx");
    assert_eq!(
        reader.describe_db(),
        format!("mysql://root@127.0.0.1:{}/{DB}", db.port())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_read_gives_every_type_as_the_log_source_does() {
    let db = mariadb();
    db.sql(DB, TYPED).unwrap();
    let mut reader = MysqlQueryReader::new(db.url(DB));
    let rows = read_rows(&mut reader, "SELECT * FROM typed", &[0]).await;
    let dec = |s: &str| Value::Decimal(Decimal::parse(s).unwrap());
    let day = tidesync_core::time::days_from_civil(2024, 2, 29);
    let at = |micros_in_day: i64| Value::Timestamp(day * 86_400_000_000 + micros_in_day);
    assert_eq!(
        rows,
        vec![vec![
            Value::Int(1),
            Value::Int(-128),
            Value::Int(255),
            Value::Int(-32768),
            Value::Int(-8_388_608),
            Value::Int(-2_147_483_648),
            Value::Int(4_294_967_295),
            Value::Int(i64::MIN),
            dec("18446744073709551615"),
            Value::Int(7),
            dec("-1234567890.25"),
            Value::Float(1.5),
            Value::Float(0.1),
            text("ab"),
            text("héllo 😀"),
            text("long text"),
            text("café €"),
            Value::Bytes(b"ab\0\0".to_vec()),
            Value::Bytes(vec![0x00, 0xff]),
            Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef]),
            Value::Date(day as i32),
            Value::Time(-(838 * 3600 + 59 * 60 + 59) * 1_000_000 - 1),
            at(86_399_123_456),
            at(86_399_654_321),
            Value::Int(2024),
            Value::Bool(true),
            Value::Bytes(vec![0x0a, 0xaa]),
            text("b c"),
            text("x,z"),
            text("{\"a\": [1, 2.5]}"),
            Value::Null,
        ]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_text_keys_order_by_bytes_not_by_collation() {
    let db = mariadb();
    db.sql(
        DB,
        "SET NAMES utf8mb4;
         CREATE TABLE words (id INT PRIMARY KEY, w VARCHAR(10) COLLATE utf8mb4_general_ci)
             DEFAULT CHARSET = utf8mb4;
         INSERT INTO words VALUES (1, 'b'), (2, 'B'), (3, 'a '), (4, 'é'), (5, 'z'), (6, 'a');
         CREATE TABLE pairs (g VARCHAR(10) CHARACTER SET latin1, k INT, v INT,
             PRIMARY KEY (g, k));
         INSERT INTO pairs VALUES ('€', 1, 0), ('a', 10, 0), ('a', 2, 0), ('ÿ', 1, 0),
             ('A', 5, 0);",
    )
    .unwrap();
    // The collation (case-insensitive, PAD SPACE) puts a and 'a ' first, then b and B, é
    // with e; bytes say B < a < 'a ' < b < z < é.
    let by_collation = db
        .sql(DB, "SELECT w FROM words ORDER BY w LIMIT 1")
        .unwrap();
    assert!(by_collation.starts_with('a'), "{by_collation}");
    let mut reader = MysqlQueryReader::new(db.url(DB));
    let rows = read_rows(&mut reader, "SELECT id, w FROM words", &[1]).await;
    let keys: Vec<&Value> = rows.iter().map(|r| &r[1]).collect();
    assert_eq!(
        keys,
        [
            &text("B"),
            &text("a"),
            &text("a "),
            &text("b"),
            &text("z"),
            &text("é")
        ]
    );

    // Composite key, latin1 text: UTF-8 byte order (ÿ is C3 BF, € is E2 82 AC), then the
    // integer numerically.
    let rows = read_rows(&mut reader, "SELECT g, k FROM pairs", &[0, 1]).await;
    assert_eq!(
        rows,
        vec![
            vec![text("A"), Value::Int(5)],
            vec![text("a"), Value::Int(2)],
            vec![text("a"), Value::Int(10)],
            vec![text("ÿ"), Value::Int(1)],
            vec![text("€"), Value::Int(1)],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_primary_keys_in_key_order_and_their_errors() {
    let db = mariadb();
    db.create_database("other").unwrap();
    db.sql(
        DB,
        "CREATE TABLE pairs (a INT, b INT, c INT, PRIMARY KEY (b, a));
         CREATE TABLE loose (a INT);
         CREATE TABLE other.things (id INT PRIMARY KEY);",
    )
    .unwrap();
    let mut reader = MysqlQueryReader::new(db.url(DB));
    assert_eq!(reader.primary_key("pairs").await.unwrap(), ["b", "a"]);
    assert_eq!(reader.primary_key("other.things").await.unwrap(), ["id"]);
    let e = reader.primary_key("missing").await.unwrap_err();
    let msg = definite(&e);
    assert!(msg.contains("table missing does not exist"), "{msg}");
    let e = reader.primary_key("loose").await.unwrap_err();
    let msg = definite(&e);
    assert!(msg.contains("table loose has no primary key"), "{msg}");
    assert!(msg.contains("`key`"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_pages_hold_at_most_page_rows_in_order() {
    let db = mariadb();
    db.sql(
        DB,
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(20));
         INSERT INTO items SELECT seq, CONCAT('item ', seq) FROM seq_1_to_2500;",
    )
    .unwrap();
    let mut reader = MysqlQueryReader::new(db.url(DB));
    let (_, pages) = read_pages(&mut reader, "SELECT id, name FROM items", &[0], 1000).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [1000, 1000, 500]
    );
    let ids: Vec<Value> = pages.into_iter().flatten().map(|r| r[0].clone()).collect();
    assert_eq!(ids, (1..=2500).map(Value::Int).collect::<Vec<_>>());
    let (_, pages) = read_pages(
        &mut reader,
        "SELECT id FROM items WHERE id > 9999",
        &[0],
        10,
    )
    .await;
    assert!(pages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_closed_receiver_stops_the_read_and_the_reader_goes_on() {
    let db = mariadb();
    db.sql(
        DB,
        "CREATE TABLE items (id BIGINT PRIMARY KEY, pad VARCHAR(200));
         INSERT INTO items SELECT seq, REPEAT('x', 200) FROM seq_1_to_200000;",
    )
    .unwrap();
    let mut reader = MysqlQueryReader::new(db.url(DB));
    let query = "SELECT id, pad FROM items";
    let columns = reader.columns(query).await.unwrap();
    let (tx, mut rx) = mpsc::channel(1);
    let first = async move {
        let page = rx.recv().await;
        drop(rx);
        page
    };
    let started = std::time::Instant::now();
    let (read, page) = tokio::join!(reader.read(query, &columns, &[0], 100, tx), first);
    read.unwrap();
    assert_eq!(page.map(|p| p.len()), Some(100));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // The next call works (on a new connection).
    let rows = read_rows(&mut reader, "SELECT id FROM items WHERE id <= 3", &[0]).await;
    assert_eq!(
        rows,
        vec![
            vec![Value::Int(1)],
            vec![Value::Int(2)],
            vec![Value::Int(3)]
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_bad_queries_and_values_are_definite_errors_naming_them() {
    let db = mariadb();
    db.sql(
        DB,
        "SET SESSION sql_mode = '';
         CREATE TABLE items (id INT PRIMARY KEY, at DATETIME);
         INSERT INTO items VALUES (1, '2024-01-01 00:00:00'), (2, '0000-00-00 00:00:00');",
    )
    .unwrap();
    let mut reader = MysqlQueryReader::new(db.url(DB));
    let e = reader.columns("SELEC id FROM items").await.unwrap_err();
    let msg = definite(&e);
    assert!(msg.contains("query `SELEC id FROM items`"), "{msg}");
    assert!(msg.contains("error 1064"), "{msg}");
    let e = reader.columns("SELECT nope FROM items").await.unwrap_err();
    let msg = definite(&e);
    assert!(msg.contains("nope"), "{msg}");
    let e = reader
        .columns("SELECT id, id FROM items")
        .await
        .unwrap_err();
    let msg = definite(&e);
    assert!(msg.to_lowercase().contains("duplicate column"), "{msg}");
    assert!(msg.contains("id"), "{msg}");
    assert!(!msg.contains("root@127.0.0.1:0"), "{msg}");

    let query = "SELECT id, at FROM items";
    let columns = reader.columns(query).await.unwrap();
    let (tx, _rx) = mpsc::channel(4);
    let e = reader
        .read(query, &columns, &[0], 10, tx)
        .await
        .unwrap_err();
    let msg = definite(&e);
    assert!(msg.contains("column at"), "{msg}");
    assert!(msg.contains("zero date"), "{msg}");
    // The reader is still usable.
    let rows = read_rows(&mut reader, "SELECT id FROM items WHERE id = 1", &[0]).await;
    assert_eq!(rows, vec![vec![Value::Int(1)]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_server_restart_is_transient_then_reconnects() {
    let mut db = mariadb();
    db.sql(
        DB,
        "CREATE TABLE items (id INT PRIMARY KEY); INSERT INTO items VALUES (1);",
    )
    .unwrap();
    let mut reader = MysqlQueryReader::new(db.url(DB));
    assert_eq!(reader.primary_key("items").await.unwrap(), ["id"]);
    db.stop().unwrap();
    let e = reader.columns("SELECT id FROM items").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    db.start_again().unwrap();
    let rows = read_rows(&mut reader, "SELECT id FROM items", &[0]).await;
    assert_eq!(rows, vec![vec![Value::Int(1)]]);
}

/// Six rows; three share `2024-03-01 10:00:00.5`, inserted out of key order.
const EVENTS: &str = "SET time_zone = '+00:00';
CREATE TABLE events (id INT PRIMARY KEY, updated_at DATETIME(6) NOT NULL,
    ts TIMESTAMP(6) NULL, note VARCHAR(20));
INSERT INTO events (id, updated_at, note) VALUES
    (5, '2024-03-01 10:00:00.000001', 'a'), (3, '2024-03-01 10:00:00.5', 'b'),
    (1, '2024-03-01 10:00:00.5', 'c'), (2, '2024-03-01 10:00:00.5', 'd'),
    (4, '2024-03-02 00:00:00', 'e'), (6, '2024-02-29 23:59:59.999999', 'f');
UPDATE events SET ts = updated_at;";

/// `2024-03-01 10:00:00.5` UTC, as the reader gives it.
fn shared_timestamp() -> Value {
    let day = tidesync_core::time::days_from_civil(2024, 3, 1);
    Value::Timestamp(day * 86_400_000_000 + 36_000_500_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_read_changed_without_watermark_gives_all_rows_by_changed_then_key() {
    let db = mariadb();
    db.sql(DB, EVENTS).unwrap();
    let mut reader = MysqlQueryReader::new(db.url(DB));
    let query = "SELECT id, updated_at, note FROM events";
    let pages = read_changed_pages(&mut reader, query, 1, None, &[0], 4).await;
    let (sizes, rows) = picked(&pages, &[0, 2]);
    assert_eq!(sizes, [4, 2]);
    assert_eq!(
        rows,
        [(6, "f"), (5, "a"), (1, "c"), (2, "d"), (3, "b"), (4, "e")]
            .map(|(id, note)| vec![Value::Int(id), text(note)])
    );
    assert_eq!(pages[0][2][1], shared_timestamp());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_read_changed_gives_rows_at_or_after_the_watermark() {
    let db = mariadb();
    db.sql(DB, EVENTS).unwrap();
    let mut reader = MysqlQueryReader::new(db.url(DB));
    let since = shared_timestamp();
    let query = "SELECT id, updated_at, ts FROM events";
    // DATETIME(6): ties at the watermark in key order, pages of at most 2.
    let pages = read_changed_pages(&mut reader, query, 1, Some(&since), &[0], 2).await;
    let (sizes, rows) = picked(&pages, &[0]);
    assert_eq!(sizes, [2, 2]);
    assert_eq!(rows, [1, 2, 3, 4].map(|id| vec![Value::Int(id)]));
    // TIMESTAMP(6): the same instants (the session runs in UTC).
    let pages = read_changed_pages(&mut reader, query, 2, Some(&since), &[0], 10).await;
    assert_eq!(
        picked(&pages, &[0]).1,
        [1, 2, 3, 4].map(|id| vec![Value::Int(id)])
    );
    // One microsecond later: only the next day's row.
    let Value::Timestamp(us) = since else {
        unreachable!()
    };
    let later = Value::Timestamp(us + 1);
    let pages = read_changed_pages(&mut reader, query, 1, Some(&later), &[0], 10).await;
    assert_eq!(picked(&pages, &[0]).1, [vec![Value::Int(4)]]);
    // A DATE watermark on a DATETIME column compares as a date-time (midnight).
    let day = Value::Date(tidesync_core::time::days_from_civil(2024, 3, 1) as i32);
    let pages = read_changed_pages(&mut reader, query, 1, Some(&day), &[0], 10).await;
    assert_eq!(
        picked(&pages, &[0]).1,
        [5, 1, 2, 3, 4].map(|id| vec![Value::Int(id)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_read_changed_compares_a_decimal_watermark_exactly() {
    let db = mariadb();
    db.sql(
        DB,
        "CREATE TABLE ledger (id INT PRIMARY KEY, seq DECIMAL(30,10) UNSIGNED NOT NULL);
         INSERT INTO ledger VALUES (1, '12345678901234567890.0000000000'),
             (2, '12345678901234567890.0000000001'), (3, '12345678901234567891.0000000000');",
    )
    .unwrap();
    let mut reader = MysqlQueryReader::new(db.url(DB));
    // As doubles the first two are equal; as decimals the first is before the watermark.
    let since = Value::Decimal(Decimal::parse("12345678901234567890.0000000001").unwrap());
    let pages = read_changed_pages(
        &mut reader,
        "SELECT id, seq FROM ledger",
        1,
        Some(&since),
        &[0],
        10,
    )
    .await;
    assert_eq!(
        picked(&pages, &[0]).1,
        [2, 3].map(|id| vec![Value::Int(id)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_read_changed_bad_queries_are_definite_errors_naming_them() {
    let db = mariadb();
    db.sql(DB, EVENTS).unwrap();
    let mut reader = MysqlQueryReader::new(db.url(DB));
    let since = shared_timestamp();
    let columns = reader
        .columns("SELECT id, updated_at FROM events")
        .await
        .unwrap();
    let query = "SELECT id, nope FROM events";
    let msg = changed_error(&mut reader, query, &columns, 1, &since).await;
    assert!(msg.contains("query `SELECT id, nope FROM events`"), "{msg}");
    assert!(msg.contains("nope"), "{msg}");

    let query = "SELECT id, updated_at FROM events";
    let msg = changed_error(&mut reader, query, &columns, 1, &Value::Null).await;
    assert!(
        msg.contains(&format!("query `{query}` column updated_at")),
        "{msg}"
    );
    assert!(msg.contains("NULL"), "{msg}");
    // The reader is still usable.
    let pages = read_changed_pages(&mut reader, query, 1, Some(&since), &[0], 10).await;
    assert_eq!(picked(&pages, &[0]).1.len(), 4);
}

// --- SQLite ---

fn sqlite(dir: &Path, sql: &str) -> std::path::PathBuf {
    let path = dir.join("source.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(sql).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_columns_give_declared_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite(
        dir.path(),
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price NUMERIC(12,2),
             data BLOB, at);",
    );
    let mut reader = SqliteQueryReader::new(&path);
    let columns = reader
        .columns("SELECT id, name, price, data, at, id + 1 AS next FROM items")
        .await
        .unwrap();
    let got: Vec<(&str, &str)> = columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_name.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("id", "INTEGER"),
            ("name", "TEXT"),
            ("price", "NUMERIC(12,2)"),
            ("data", "BLOB"),
            ("at", ""),
            ("next", ""),
        ]
    );
    assert!(columns.iter().all(|c| c.nullable));
    assert_eq!(reader.describe_db(), path.display().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_gives_values_by_storage_class() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite(
        dir.path(),
        "CREATE TABLE items (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB,
             n NUMERIC, any);
         INSERT INTO items VALUES (1, -9223372036854775808, 0.1, 'héllo 😀', x'00ff', 12.5, NULL);
         INSERT INTO items VALUES (2, 9223372036854775807, -1e300, '', x'', 7, 'text');
         INSERT INTO items VALUES (3, NULL, NULL, NULL, NULL, '12', x'01');",
    );
    let mut reader = SqliteQueryReader::new(&path);
    let rows = read_rows(&mut reader, "SELECT * FROM items", &[0]).await;
    assert_eq!(
        rows,
        vec![
            vec![
                Value::Int(1),
                Value::Int(i64::MIN),
                Value::Float(0.1),
                text("héllo 😀"),
                Value::Bytes(vec![0, 255]),
                Value::Float(12.5),
                Value::Null,
            ],
            vec![
                Value::Int(2),
                Value::Int(i64::MAX),
                Value::Float(-1e300),
                text(""),
                Value::Bytes(vec![]),
                Value::Int(7),
                text("text"),
            ],
            vec![
                Value::Int(3),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                // NUMERIC affinity stored '12' as an integer.
                Value::Int(12),
                Value::Bytes(vec![1]),
            ],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_text_keys_order_by_bytes_not_by_collation() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite(
        dir.path(),
        "CREATE TABLE words (w TEXT COLLATE NOCASE PRIMARY KEY, n INTEGER);
         INSERT INTO words VALUES ('b', 1), ('C', 2), ('a', 3), ('é', 4);
         CREATE TABLE pairs (g TEXT COLLATE NOCASE, k INTEGER, PRIMARY KEY (g, k));
         INSERT INTO pairs VALUES ('a', 10), ('a', 2), ('B', 1), ('a', -1);",
    );
    let mut reader = SqliteQueryReader::new(&path);
    let rows = read_rows(&mut reader, "SELECT w FROM words", &[0]).await;
    assert_eq!(
        rows,
        vec![
            vec![text("C")],
            vec![text("a")],
            vec![text("b")],
            vec![text("é")]
        ]
    );
    let rows = read_rows(&mut reader, "SELECT g, k FROM pairs", &[0, 1]).await;
    assert_eq!(
        rows,
        vec![
            vec![text("B"), Value::Int(1)],
            vec![text("a"), Value::Int(-1)],
            vec![text("a"), Value::Int(2)],
            vec![text("a"), Value::Int(10)],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_primary_keys_in_key_order_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite(
        dir.path(),
        "CREATE TABLE pairs (a INTEGER, b TEXT, c, PRIMARY KEY (b, a));
         CREATE TABLE loose (a INTEGER);
         CREATE TABLE solo (id INTEGER PRIMARY KEY, x);",
    );
    let mut reader = SqliteQueryReader::new(&path);
    assert_eq!(reader.primary_key("pairs").await.unwrap(), ["b", "a"]);
    assert_eq!(reader.primary_key("solo").await.unwrap(), ["id"]);
    assert_eq!(reader.primary_key("main.solo").await.unwrap(), ["id"]);
    let msg = definite(&reader.primary_key("missing").await.unwrap_err());
    assert!(msg.contains("table `missing` does not exist"), "{msg}");
    let msg = definite(&reader.primary_key("loose").await.unwrap_err());
    assert!(msg.contains("table `loose` has no primary key"), "{msg}");
    assert!(msg.contains("`key`"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pages_hold_at_most_page_rows_and_a_closed_receiver_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite(
        dir.path(),
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);
         WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 2500)
         INSERT INTO items SELECT n, 'item ' || n FROM s;",
    );
    let mut reader = SqliteQueryReader::new(&path);
    let (_, pages) = read_pages(&mut reader, "SELECT id, name FROM items", &[0], 1000).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [1000, 1000, 500]
    );
    let ids: Vec<Value> = pages.into_iter().flatten().map(|r| r[0].clone()).collect();
    assert_eq!(ids, (1..=2500).map(Value::Int).collect::<Vec<_>>());

    let query = "SELECT id FROM items";
    let columns = reader.columns(query).await.unwrap();
    let (tx, mut rx) = mpsc::channel(1);
    let first = async move {
        let page = rx.recv().await;
        drop(rx);
        page
    };
    let (read, page) = tokio::join!(reader.read(query, &columns, &[0], 10, tx), first);
    read.unwrap();
    assert_eq!(page.map(|p| p.len()), Some(10));
    // The read transaction ended: the reader goes on.
    let rows = read_rows(&mut reader, "SELECT id FROM items WHERE id = 7", &[0]).await;
    assert_eq!(rows, vec![vec![Value::Int(7)]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_queries_are_definite_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite(
        dir.path(),
        "CREATE TABLE items (id INTEGER PRIMARY KEY, a, b);",
    );
    let mut reader = SqliteQueryReader::new(&path);
    let msg = definite(&reader.columns("SELEC id FROM items").await.unwrap_err());
    assert!(msg.contains("query `SELEC id FROM items`"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    let msg = definite(&reader.columns("SELECT nope FROM items").await.unwrap_err());
    assert!(msg.contains("nope"), "{msg}");
    let msg = definite(
        &reader
            .columns("SELECT a AS x, b AS X FROM items")
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("more than one column named X"), "{msg}");
    let msg = definite(&reader.columns("DELETE FROM items").await.unwrap_err());
    assert!(msg.contains("not a read-only query"), "{msg}");
    let missing = SqliteQueryReader::new(&dir.path().join("missing.db"))
        .columns("SELECT 1")
        .await
        .unwrap_err();
    assert!(definite(&missing).contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_locked_database_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite(
        dir.path(),
        "CREATE TABLE items (id INTEGER PRIMARY KEY); INSERT INTO items VALUES (1);",
    );
    // A writer holding an exclusive lock (rollback journal): readers wait, then give up.
    let writer = rusqlite::Connection::open(&path).unwrap();
    writer.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut reader = SqliteQueryReader::new(&path);
    let e = reader.columns("SELECT id FROM items").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    writer.execute_batch("COMMIT").unwrap();
    let rows = read_rows(&mut reader, "SELECT id FROM items", &[0]).await;
    assert_eq!(rows, vec![vec![Value::Int(1)]]);
}

/// Six rows with ISO text timestamps; three share `2024-03-01T10:00:00.500000Z`, inserted out
/// of key order.
const SQLITE_EVENTS: &str = "CREATE TABLE events (id INTEGER PRIMARY KEY,
    updated_at TEXT NOT NULL, note TEXT);
INSERT INTO events VALUES
    (5, '2024-03-01T10:00:00.000001Z', 'a'), (3, '2024-03-01T10:00:00.500000Z', 'b'),
    (1, '2024-03-01T10:00:00.500000Z', 'c'), (2, '2024-03-01T10:00:00.500000Z', 'd'),
    (4, '2024-03-02T00:00:00.000000Z', 'e'), (6, '2024-02-29T23:59:59.999999Z', 'f');";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_changed_without_watermark_gives_all_rows_by_changed_then_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite(dir.path(), SQLITE_EVENTS);
    let mut reader = SqliteQueryReader::new(&path);
    let query = "SELECT id, updated_at, note FROM events";
    let pages = read_changed_pages(&mut reader, query, 1, None, &[0], 4).await;
    let (sizes, rows) = picked(&pages, &[0, 2]);
    assert_eq!(sizes, [4, 2]);
    assert_eq!(
        rows,
        [(6, "f"), (5, "a"), (1, "c"), (2, "d"), (3, "b"), (4, "e")]
            .map(|(id, note)| vec![Value::Int(id), text(note)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_changed_gives_rows_at_or_after_a_text_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite(dir.path(), SQLITE_EVENTS);
    let mut reader = SqliteQueryReader::new(&path);
    let query = "SELECT id, updated_at FROM events";
    let since = text("2024-03-01T10:00:00.500000Z");
    let pages = read_changed_pages(&mut reader, query, 1, Some(&since), &[0], 2).await;
    let (sizes, rows) = picked(&pages, &[0, 1]);
    assert_eq!(sizes, [2, 2]);
    assert_eq!(
        rows,
        [
            (1, "2024-03-01T10:00:00.500000Z"),
            (2, "2024-03-01T10:00:00.500000Z"),
            (3, "2024-03-01T10:00:00.500000Z"),
            (4, "2024-03-02T00:00:00.000000Z"),
        ]
        .map(|(id, at)| vec![Value::Int(id), text(at)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_changed_compares_an_integer_version_as_a_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite(
        dir.path(),
        "CREATE TABLE docs (id INTEGER PRIMARY KEY, version INTEGER NOT NULL);
         INSERT INTO docs VALUES (1, 3), (2, 10), (3, 3), (4, 2), (5, 10), (6, 9);",
    );
    let mut reader = SqliteQueryReader::new(&path);
    let query = "SELECT id, version FROM docs";
    let pages = read_changed_pages(&mut reader, query, 1, None, &[0], 10).await;
    assert_eq!(
        picked(&pages, &[0]).1,
        [4, 1, 3, 6, 2, 5].map(|id| vec![Value::Int(id)])
    );
    // 10 is after 9 as a number (not as text, where "10" < "9").
    let pages = read_changed_pages(&mut reader, query, 1, Some(&Value::Int(9)), &[0], 2).await;
    let (sizes, rows) = picked(&pages, &[0, 1]);
    assert_eq!(sizes, [2, 1]);
    assert_eq!(
        rows,
        [(6, 9), (2, 10), (5, 10)].map(|(id, v)| vec![Value::Int(id), Value::Int(v)])
    );
    let pages = read_changed_pages(&mut reader, query, 1, Some(&Value::Int(11)), &[0], 2).await;
    assert!(pages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_changed_bad_queries_are_definite_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite(dir.path(), SQLITE_EVENTS);
    let mut reader = SqliteQueryReader::new(&path);
    let columns = reader
        .columns("SELECT id, updated_at FROM events")
        .await
        .unwrap();
    let since = text("2024-03-01T10:00:00.500000Z");
    let query = "SELECT id, nope FROM events";
    let msg = changed_error(&mut reader, query, &columns, 1, &since).await;
    assert!(msg.contains("query `SELECT id, nope FROM events`"), "{msg}");
    assert!(msg.contains("nope"), "{msg}");

    let query = "SELECT id, updated_at FROM events";
    let msg = changed_error(&mut reader, query, &columns, 5, &since).await;
    assert!(msg.contains(&format!("query `{query}`")), "{msg}");
    assert!(msg.contains("column position 5 of 2"), "{msg}");

    let msg = changed_error(&mut reader, query, &columns, 1, &Value::Timestamp(0)).await;
    assert!(msg.contains("column updated_at"), "{msg}");
    // The reader is still usable.
    let pages = read_changed_pages(&mut reader, query, 1, Some(&since), &[0], 10).await;
    assert_eq!(picked(&pages, &[0]).1.len(), 4);
}

/// Every hashed row of `query` (keys only), or of the chunks `only`, in key order.
async fn pg_hashed(
    reader: &mut PgQueryReader,
    query: &str,
    columns: &[QueryColumn],
    only: Option<&ChunkFilter>,
) -> Vec<HashedRow> {
    let (tx, mut rx) = mpsc::channel(64);
    let read = reader.read_hashes(query, columns, &[0], false, only, 3, tx);
    let collect = async {
        let mut all = Vec::new();
        while let Some(page) = rx.recv().await {
            all.extend(page);
        }
        all
    };
    let (read, all) = tokio::join!(read, collect);
    read.unwrap();
    all
}

/// Text keys with the characters an array literal quotes or escapes, and timestamps with a
/// time zone: the chunk bounds travel as text and are read back through the key's type, so
/// each row falls in the chunk its bytes (or instant) put it in, and a read of some chunks
/// gives exactly their rows.
#[tokio::test]
async fn pg_chunk_sums_and_chunk_reads_cut_at_awkward_bounds() {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    let keys = [
        "", " ", "\"", "\"q\"", ",", "a", "a,b", "a\\b", "b", "{x}", "NULL", "z z", "\u{e9}",
    ];
    let quoted: Vec<String> = keys
        .iter()
        .map(|k| format!("('{}', 1)", k.replace('\'', "''")))
        .collect();
    pg.psql(
        DB,
        &format!(
            "CREATE TABLE codes (code text PRIMARY KEY, n int); INSERT INTO codes VALUES {}; \
             CREATE TABLE times (at timestamptz PRIMARY KEY, n int); \
             INSERT INTO times SELECT '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour', g \
               FROM generate_series(0, 47) g;",
            quoted.join(", ")
        ),
    )
    .unwrap();
    let mut reader = PgQueryReader::new(&pg.url(DB));
    // Text, in byte order: the bounds themselves are the awkward values.
    let query = "SELECT code, n FROM codes";
    let columns = reader.columns(query).await.unwrap();
    let all = pg_hashed(&mut reader, query, &columns, None).await;
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();
    assert_eq!(
        all.iter().map(|r| r.key[0].clone()).collect::<Vec<_>>(),
        sorted.iter().map(|k| text(k)).collect::<Vec<_>>()
    );
    let bounds = vec![text("\""), text(","), text("a\\b"), text("{x}")];
    let sums = reader
        .chunk_sums(query, &columns, &[0], &bounds)
        .await
        .unwrap()
        .expect("text keys are summed in chunks");
    // "" and " " | "\"" "\"q\"" | "," "NULL" "a" "a,b" | "a\\b" "b" "z z" | "{x}" "é"
    let mut counts: Vec<(i64, i64)> = sums.iter().map(|s| (s.chunk.unwrap(), s.rows)).collect();
    counts.sort_unstable();
    assert_eq!(counts, [(0, 2), (1, 2), (2, 4), (3, 3), (4, 2)]);
    let xor = |rows: &[HashedRow]| rows.iter().fold(0, |a, r| a ^ r.hash);
    let only = ChunkFilter {
        bounds: bounds.clone(),
        chunks: vec![1, 3],
    };
    let some = pg_hashed(&mut reader, query, &columns, Some(&only)).await;
    assert_eq!(
        some.iter().map(|r| r.key[0].clone()).collect::<Vec<_>>(),
        ["\"", "\"q\"", "a\\b", "b", "z z"].map(text)
    );
    let sum_of = |c: i64| sums.iter().find(|s| s.chunk == Some(c)).unwrap().sum;
    assert_eq!(xor(&some[..2]), sum_of(1));
    assert_eq!(xor(&some[2..]), sum_of(3));
    // Timestamps: bounds as the instants they are, whatever the text's offset.
    let query = "SELECT at, n FROM times";
    let columns = reader.columns(query).await.unwrap();
    let all = pg_hashed(&mut reader, query, &columns, None).await;
    assert_eq!(all.len(), 48);
    let bounds = vec![all[10].key[0].clone(), all[30].key[0].clone()];
    let sums = reader
        .chunk_sums(query, &columns, &[0], &bounds)
        .await
        .unwrap()
        .expect("timestamps are summed in chunks");
    let mut counts: Vec<(i64, i64)> = sums.iter().map(|s| (s.chunk.unwrap(), s.rows)).collect();
    counts.sort_unstable();
    assert_eq!(counts, [(0, 10), (1, 20), (2, 18)]);
    let only = ChunkFilter {
        bounds,
        chunks: vec![2],
    };
    let some = pg_hashed(&mut reader, query, &columns, Some(&only)).await;
    assert_eq!(some, all[30..].to_vec());
}

/// A sample of chunk sums (`sample_sums`) equals those chunks' sums among every chunk's, where
/// an index on the key finds the sampled rows alone; without one (the sample would scan every
/// row) the reader declines; a chunk without both bounds is a definite error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sample_sums_agree_with_every_chunks_sums_and_need_an_index() {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg.psql(
        DB,
        "CREATE TABLE indexed (id bigint PRIMARY KEY, v text); \
         INSERT INTO indexed SELECT g, 'v' || g FROM generate_series(1, 100000) g; \
         CREATE TABLE heap (id bigint NOT NULL, v text); \
         INSERT INTO heap SELECT id, v FROM indexed; \
         ANALYZE indexed; ANALYZE heap;",
    )
    .unwrap();
    let mut reader = PgQueryReader::new(&pg.url(DB));
    // 1,000 chunks of 100 rows: chunk c holds ids 100c+1 ..= 100c+100.
    let bounds: Vec<Value> = (1..1000).map(|b| Value::Int(100 * b + 1)).collect();
    let sample = ChunkFilter {
        bounds: bounds.clone(),
        chunks: vec![1, 57, 100, 998],
    };
    let query = "SELECT id, v FROM indexed";
    let columns = reader.columns(query).await.unwrap();
    // First thing on its connection (no chunk setting made yet).
    let mut sampled = reader
        .sample_sums(query, &columns, &[0], &sample)
        .await
        .unwrap()
        .expect("an index on the key finds the sampled chunks");
    sampled.sort_by_key(|s| s.chunk);
    let every = reader
        .chunk_sums(query, &columns, &[0], &bounds)
        .await
        .unwrap()
        .expect("integer keys are summed in chunks");
    assert_eq!(every.len(), 1000);
    let expected: Vec<_> = sample
        .chunks
        .iter()
        .map(|&c| *every.iter().find(|s| s.chunk == Some(c)).unwrap())
        .collect();
    assert_eq!(sampled, expected);
    assert!(sampled.iter().all(|s| s.rows == 100));
    // A change in a sampled chunk shows in its sum.
    pg.psql(DB, "UPDATE indexed SET v = 'changed' WHERE id = 5701")
        .unwrap();
    let again = reader
        .sample_sums(query, &columns, &[0], &sample)
        .await
        .unwrap()
        .unwrap();
    let of = |sums: &[tidesync_capture::diff::reader::ChunkSum], c| {
        sums.iter().find(|s| s.chunk == Some(c)).copied().unwrap()
    };
    assert_ne!(of(&again, 57).sum, of(&sampled, 57).sum);
    assert_eq!(of(&again, 100), of(&sampled, 100));
    // No index: the sample would read every row.
    let query = "SELECT id, v FROM heap";
    let columns = reader.columns(query).await.unwrap();
    assert_eq!(
        reader
            .sample_sums(query, &columns, &[0], &sample)
            .await
            .unwrap(),
        None
    );
    // The first and the last chunk have one bound each.
    let edge = ChunkFilter {
        bounds,
        chunks: vec![0],
    };
    let err = reader
        .sample_sums("SELECT id, v FROM indexed", &columns, &[0], &edge)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StageError::Definite(_)) && err.to_string().contains("chunk 0 of 1000"),
        "{err}"
    );
}
