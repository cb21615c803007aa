//! `verify::compare_table` with a MariaDB database as the *source*: every MySQL type the
//! binlog source reports, against a PostgreSQL target whose table the PostgreSQL sink created
//! from the source's schema (`Dialect::Mysql`) and filled with the values the source emits,
//! and against a MariaDB target the MySQL sink created and filled the same way. Equal first;
//! then one planted difference per type class, each of which must be named.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tidesync_core::time::{MICROS_PER_DAY, MICROS_PER_SECOND, days_from_civil};
use tidesync_core::{
    Batch, BatchKind, Change, ColumnSchema, Decimal, Dialect, Key, LogEntry, Op, Row, Seq, Sink,
    TableSchema, Value,
};
use tidesync_deliver::mysql::MysqlSink;
use tidesync_deliver::postgres::PostgresSink;
use tidesync_engine::verify::{
    DiffKind, Endpoint, TableReport, VerifyOptions, compare_table, mysql_source_endpoint,
    source_position,
};
use tidesync_testkit::{MariaDb, Postgres};

/// One column: its MySQL type (as the source reports it and as the MariaDB table declares
/// it) and its values in rows 1 to 3, each as a MariaDB SQL literal and as the value the
/// source emits. Row 4 is all NULL.
struct Col {
    name: &'static str,
    ty: &'static str,
    rows: [(String, Value); 3],
}

fn col(name: &'static str, ty: &'static str, rows: [(&str, Value); 3]) -> Col {
    Col {
        name,
        ty,
        rows: rows.map(|(sql, v)| (sql.to_owned(), v)),
    }
}

fn int(i: i64) -> (String, Value) {
    (i.to_string(), Value::Int(i))
}

fn decimal(text: &str) -> Value {
    Value::Decimal(Decimal::parse(text).unwrap())
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn hex(bytes: &[u8]) -> String {
    let digits: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!("X'{digits}'")
}

fn micros(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64, us: i64) -> i64 {
    days_from_civil(y, mo, d) * MICROS_PER_DAY + (h * 3600 + mi * 60 + s) * MICROS_PER_SECOND + us
}

fn date(y: i64, mo: u32, d: u32) -> Value {
    Value::Date(i32::try_from(days_from_civil(y, mo, d)).unwrap())
}

/// MariaDB's geometry storage: a 4-byte SRID, then the WKB of a point.
fn point(x: f64, y: f64) -> Vec<u8> {
    [0u8, 0, 0, 0, 1, 1, 0, 0, 0]
        .into_iter()
        .chain(x.to_le_bytes())
        .chain(y.to_le_bytes())
        .collect()
}

fn columns() -> Vec<Col> {
    let all_bytes: Vec<u8> = (0..=255).collect();
    let crab = "🦀".repeat(20_000);
    vec![
        Col {
            name: "ti",
            ty: "tinyint(4)",
            rows: [int(-128), int(127), int(-1)],
        },
        Col {
            name: "tiu",
            ty: "tinyint(3) unsigned",
            rows: [int(0), int(255), int(1)],
        },
        Col {
            name: "si",
            ty: "smallint(6)",
            rows: [int(-32768), int(32767), int(1)],
        },
        Col {
            name: "siu",
            ty: "smallint(5) unsigned",
            rows: [int(0), int(65535), int(1)],
        },
        Col {
            name: "mi",
            ty: "mediumint(9)",
            rows: [int(-8_388_608), int(8_388_607), int(1)],
        },
        Col {
            name: "miu",
            ty: "mediumint(8) unsigned",
            rows: [int(0), int(16_777_215), int(1)],
        },
        Col {
            name: "i",
            ty: "int(11)",
            rows: [int(i32::MIN.into()), int(i32::MAX.into()), int(1)],
        },
        Col {
            name: "iu",
            ty: "int(10) unsigned",
            rows: [int(0), int(u32::MAX.into()), int(1)],
        },
        Col {
            name: "bi",
            ty: "bigint(20)",
            rows: [int(i64::MIN), int(i64::MAX), int(1)],
        },
        col(
            "biu",
            "bigint(20) unsigned",
            [
                ("0", Value::Int(0)),
                ("18446744073709551615", decimal("18446744073709551615")),
                ("9223372036854775807", Value::Int(i64::MAX)),
            ],
        ),
        col(
            "num",
            "decimal(12,2)",
            [
                ("-9999999999.99", decimal("-9999999999.99")),
                ("9999999999.99", decimal("9999999999.99")),
                ("-0.50", decimal("-0.50")),
            ],
        ),
        col(
            "fl",
            "float",
            [
                ("-3.4028234663852886e38", Value::Float(f64::from(f32::MIN))),
                ("0.5", Value::Float(0.5)),
                ("-1.1", Value::Float(f64::from(-1.1f32))),
            ],
        ),
        col(
            "db",
            "double",
            [
                ("-1.7976931348623157e308", Value::Float(f64::MIN)),
                ("1.7976931348623157e308", Value::Float(f64::MAX)),
                ("0.1", Value::Float(0.1)),
            ],
        ),
        col(
            "ch",
            "char(3)",
            [
                ("''", text("")),
                ("'é☃🦀'", text("é☃🦀")),
                ("'ab'", text("ab")),
            ],
        ),
        col(
            "vc",
            "varchar(20)",
            [
                ("''", text("")),
                ("'it''s \"q\" 🦀'", text("it's \"q\" 🦀")),
                ("'x'", text("x")),
            ],
        ),
        col(
            "tx",
            "text",
            [
                ("''", text("")),
                ("'🦀 naïve'", text("🦀 naïve")),
                ("'y'", text("y")),
            ],
        ),
        Col {
            name: "ltx",
            ty: "longtext",
            rows: [
                ("''".into(), text("")),
                ("REPEAT('🦀', 20000)".into(), Value::Text(crab)),
                ("'z'".into(), text("z")),
            ],
        },
        col(
            "en",
            "enum('a','b c')",
            [
                ("'a'", text("a")),
                ("'b c'", text("b c")),
                ("'a'", text("a")),
            ],
        ),
        col(
            "st",
            "set('x','y')",
            [("''", text("")), ("'x,y'", text("x,y")), ("'y'", text("y"))],
        ),
        Col {
            name: "vb",
            ty: "varbinary(16)",
            rows: [
                ("X''".into(), Value::Bytes(vec![])),
                (
                    hex(&[0, 0xff, 0x5c, 9]),
                    Value::Bytes(vec![0, 0xff, 0x5c, 9]),
                ),
                (hex(&[0x80]), Value::Bytes(vec![0x80])),
            ],
        },
        Col {
            name: "bn",
            ty: "binary(4)",
            rows: [
                (hex(&[0; 4]), Value::Bytes(vec![0; 4])),
                (hex(&[0xff, 0, 0, 0]), Value::Bytes(vec![0xff, 0, 0, 0])),
                (hex(&[1, 2, 3, 4]), Value::Bytes(vec![1, 2, 3, 4])),
            ],
        },
        Col {
            name: "bl",
            ty: "blob",
            rows: [
                ("X''".into(), Value::Bytes(vec![])),
                (hex(&all_bytes), Value::Bytes(all_bytes.clone())),
                (hex(b"\\"), Value::Bytes(b"\\".to_vec())),
            ],
        },
        col(
            "geo",
            "geometry",
            [
                (
                    "ST_GeomFromText('POINT(0 0)')",
                    Value::Bytes(point(0.0, 0.0)),
                ),
                (
                    "ST_GeomFromText('POINT(1.5 -2)')",
                    Value::Bytes(point(1.5, -2.0)),
                ),
                (
                    "ST_GeomFromText('POINT(3 4)')",
                    Value::Bytes(point(3.0, 4.0)),
                ),
            ],
        ),
        col(
            "b1",
            "bit(1)",
            [
                ("b'0'", Value::Bool(false)),
                ("b'1'", Value::Bool(true)),
                ("b'0'", Value::Bool(false)),
            ],
        ),
        col(
            "b12",
            "bit(12)",
            [
                ("b'0'", Value::Bytes(vec![0, 0])),
                ("b'111111111111'", Value::Bytes(vec![0x0f, 0xff])),
                ("b'100000001'", Value::Bytes(vec![0x01, 0x01])),
            ],
        ),
        col(
            "d",
            "date",
            [
                ("'1000-01-01'", date(1000, 1, 1)),
                ("'9999-12-31'", date(9999, 12, 31)),
                ("'1970-01-01'", date(1970, 1, 1)),
            ],
        ),
        col(
            "t6",
            "time(6)",
            [
                ("'00:00:00'", Value::Time(0)),
                ("'24:00:00'", Value::Time(MICROS_PER_DAY)),
                (
                    "'12:00:00.000001'",
                    Value::Time(12 * 3600 * MICROS_PER_SECOND + 1),
                ),
            ],
        ),
        col(
            "t0",
            "time",
            [
                ("'00:00:00'", Value::Time(0)),
                (
                    "'23:59:59'",
                    Value::Time(MICROS_PER_DAY - MICROS_PER_SECOND),
                ),
                ("'01:00:00'", Value::Time(3600 * MICROS_PER_SECOND)),
            ],
        ),
        col(
            "dt6",
            "datetime(6)",
            [
                (
                    "'1000-01-01 00:00:00'",
                    Value::Timestamp(micros(1000, 1, 1, 0, 0, 0, 0)),
                ),
                (
                    "'9999-12-31 23:59:59.999999'",
                    Value::Timestamp(micros(9999, 12, 31, 23, 59, 59, 999_999)),
                ),
                (
                    "'1969-12-31 23:59:59.999999'",
                    Value::Timestamp(micros(1969, 12, 31, 23, 59, 59, 999_999)),
                ),
            ],
        ),
        col(
            "dt0",
            "datetime",
            [
                (
                    "'1000-01-01 00:00:00'",
                    Value::Timestamp(micros(1000, 1, 1, 0, 0, 0, 0)),
                ),
                (
                    "'9999-12-31 23:59:59'",
                    Value::Timestamp(micros(9999, 12, 31, 23, 59, 59, 0)),
                ),
                (
                    "'2026-11-23 14:21:00'",
                    Value::Timestamp(micros(2026, 11, 23, 14, 21, 0, 0)),
                ),
            ],
        ),
        col(
            "ts6",
            "timestamp(6)",
            [
                ("'1970-01-01 00:00:01'", Value::Timestamp(MICROS_PER_SECOND)),
                (
                    "'2038-01-19 03:14:07.999999'",
                    Value::Timestamp(micros(2038, 1, 19, 3, 14, 7, 999_999)),
                ),
                (
                    "'2026-11-23 14:21:00.5'",
                    Value::Timestamp(micros(2026, 11, 23, 14, 21, 0, 500_000)),
                ),
            ],
        ),
        Col {
            name: "yr",
            ty: "year(4)",
            rows: [int(1901), int(2155), int(2026)],
        },
        col(
            "js",
            "json",
            [
                ("'[]'", Value::Json("[]".into())),
                (
                    r#"'{"a": [1, 2.5, "🦀", null], "b": {"c": true}}'"#,
                    Value::Json(r#"{"a": [1, 2.5, "🦀", null], "b": {"c": true}}"#.into()),
                ),
                (r#"'"🦀"'"#, Value::Json(r#""🦀""#.into())),
            ],
        ),
    ]
}

/// The keys of rows 1 to 4 (`bigint unsigned`: ints, then decimals beyond `i64`), as SQL
/// and as the source emits them.
const IDS: [&str; 4] = ["1", "2", "9223372036854775808", "18446744073709551615"];

fn id(row: usize) -> Value {
    IDS[row]
        .parse()
        .map_or_else(|_| decimal(IDS[row]), Value::Int)
}

/// Creates table `m` in MariaDB database `db` with every column and rows 1 to 4.
fn create_source(maria: &MariaDb, db: &str, columns: &[Col]) {
    let defs: Vec<String> = columns
        .iter()
        .map(|c| format!("`{}` {} NULL", c.name, c.ty))
        .collect();
    let names: Vec<String> = columns.iter().map(|c| format!("`{}`", c.name)).collect();
    let mut rows: Vec<String> = (0..3)
        .map(|r| {
            let values: Vec<&str> = columns.iter().map(|c| c.rows[r].0.as_str()).collect();
            format!("({}, {})", IDS[r], values.join(", "))
        })
        .collect();
    rows.push(format!("({}{})", IDS[3], ", NULL".repeat(columns.len())));
    maria
        .sql(
            db,
            &format!(
                "SET NAMES utf8mb4; SET time_zone = '+00:00';
                 CREATE TABLE m (id bigint(20) unsigned NOT NULL PRIMARY KEY, {}) DEFAULT CHARSET = utf8mb4;
                 INSERT INTO m (id, {}) VALUES {};",
                defs.join(", "),
                names.join(", "),
                rows.join(", ")
            ),
        )
        .unwrap();
}

/// The schema the MySQL source reports for `m`.
fn schema(columns: &[Col]) -> TableSchema {
    let mut cols = vec![ColumnSchema {
        name: "id".into(),
        type_name: "bigint(20) unsigned".into(),
        nullable: false,
    }];
    cols.extend(columns.iter().map(|c| ColumnSchema {
        name: c.name.into(),
        type_name: c.ty.into(),
        nullable: true,
    }));
    TableSchema {
        name: "m".into(),
        columns: cols,
        key: vec!["id".into()],
        dialect: Dialect::Mysql,
    }
}

/// Rows 1 to 4 as the source emits them, one batch of inserts.
fn batch(columns: &[Col]) -> Arc<Batch> {
    let entries: Vec<LogEntry> = (0..4)
        .map(|r| {
            let id = id(r);
            let mut row = vec![("id".to_owned(), id.clone())];
            row.extend(columns.iter().map(|c| {
                let v = c.rows.get(r).map_or(Value::Null, |(_, v)| v.clone());
                (c.name.to_owned(), v)
            }));
            LogEntry {
                seq: Seq(r as u64 + 1),
                change: Change {
                    stream: "m".into(),
                    op: Op::Insert,
                    key: Key(vec![id]),
                    before: None,
                    after: Some(Row(row)),
                    commit_time_us: 0,
                    position: None,
                    txn: None,
                    unchanged: Vec::new(),
                },
            }
        })
        .collect();
    Arc::new(Batch {
        pipeline: "p".into(),
        kind: BatchKind::Full,
        first_seq: Seq(1),
        last_seq: Seq(4),
        entries,
        position: None,
    })
}

async fn apply(mut sink: impl Sink, columns: &[Col]) {
    sink.open(vec![schema(columns)]).await.unwrap();
    sink.apply(batch(columns)).await.unwrap();
}

/// One row per page: every key (beyond `i64` too) is a page bound on both sides.
async fn compare(source: &Endpoint, target: &Endpoint) -> TableReport {
    let options = VerifyOptions {
        chunk_rows: 1,
        ..VerifyOptions::default()
    };
    compare_table(source, target, "m", &options).await.unwrap()
}

/// Per differing key, its sorted column names.
fn differences(report: &TableReport) -> Vec<(String, Vec<String>)> {
    assert_eq!((report.missing, report.extra), (0, 0), "{report:?}");
    report
        .keys
        .iter()
        .map(|k| {
            assert_eq!(k.kind, DiffKind::Different);
            let mut columns = k.columns.clone();
            columns.sort();
            (k.key.to_string(), columns)
        })
        .collect()
}

fn expected(rows: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    rows.iter()
        .map(|(key, columns)| {
            let mut columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
            columns.sort();
            ((*key).to_owned(), columns)
        })
        .collect()
}

/// Both servers, started at once.
fn servers() -> (MariaDb, Postgres) {
    std::thread::scope(|s| {
        let maria = s.spawn(MariaDb::start);
        let pg = Postgres::start();
        (maria.join().unwrap(), pg)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_source_equals_its_postgres_copy_and_each_type_class_differs() {
    let (maria, pg) = servers();
    maria.create_database("shop").unwrap();
    pg.create_database("target").unwrap();
    let columns = columns();
    create_source(&maria, "shop", &columns);
    apply(
        PostgresSink::new(&pg.url("target"), "p", "replica", true),
        &columns,
    )
    .await;

    let source = mysql_source_endpoint(&maria.url("shop"));
    let target = Endpoint::Postgres {
        url: pg.url("target"),
    };
    let report = compare(&source, &target).await;
    assert!(report.is_equal(), "{report:?}");
    assert_eq!((report.source_rows, report.target_rows), (4, 4));

    // One change per type class, on either side; the JSON of row 2 only re-spelled (equal).
    pg.psql(
        "target",
        r#"UPDATE m SET ti = -127, bn = '\x00000001', d = d + 1, yr = 1902 WHERE id = 1;
           UPDATE m SET iu = 4294967294, biu = 18446744073709551614, vc = vc || ' ', en = 'a',
                        b1 = false, dt6 = dt6 - interval '1 microsecond' WHERE id = 2;
           UPDATE m SET num = -0.51, fl = '-1.1000001', db = 0.10000000000000002, st = 'x',
                        geo = overlay(geo placing '\x01' from 10 for 1), b12 = '\x0100',
                        t6 = t6 + interval '1 microsecond', ts6 = ts6 + interval '1 microsecond',
                        js = '"🦀 "' WHERE id = 9223372036854775808;
           UPDATE m SET tx = '' WHERE id = 18446744073709551615;"#,
    )
    .unwrap();
    maria
        .sql(
            "shop",
            r#"SET NAMES utf8mb4;
               UPDATE m SET dt0 = dt0 + INTERVAL 1 SECOND WHERE id = 1;
               UPDATE m SET ltx = CONCAT('🦁', SUBSTRING(ltx, 2)), t0 = '23:59:58',
                            js = '{"b":{"c":true},"a":[1,2.5,"🦀",null]}' WHERE id = 2;
               UPDATE m SET ch = 'ac', bl = X'5D', mi = 2 WHERE id = 9223372036854775808;"#,
        )
        .unwrap();
    let report = compare(&source, &target).await;
    assert_eq!(
        differences(&report),
        expected(&[
            ("(1)", &["ti", "bn", "d", "yr", "dt0"]),
            ("(2)", &["iu", "biu", "vc", "en", "b1", "dt6", "ltx", "t0"]),
            (
                "(9223372036854775808)",
                &[
                    "num", "fl", "db", "st", "geo", "b12", "t6", "ts6", "js", "ch", "bl", "mi"
                ]
            ),
            ("(18446744073709551615)", &["tx"]),
        ]),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_source_equals_its_mariadb_copy_and_each_type_class_differs() {
    let maria = MariaDb::start();
    maria.create_database("shop").unwrap();
    maria.create_database("copy").unwrap();
    let columns = columns();
    create_source(&maria, "shop", &columns);
    apply(
        MysqlSink::new(&maria.url("copy"), "p", "replica", true),
        &columns,
    )
    .await;

    let source = mysql_source_endpoint(&maria.url("shop"));
    let target = Endpoint::Mysql {
        url: maria.url("copy"),
    };
    let report = compare(&source, &target).await;
    assert!(report.is_equal(), "{report:?}");
    assert_eq!((report.source_rows, report.target_rows), (4, 4));

    maria
        .sql(
            "copy",
            r#"SET NAMES utf8mb4; SET time_zone = '+00:00';
               UPDATE m SET iu = 1, b1 = b'1', ts6 = '1970-01-01 00:00:02' WHERE id = 1;
               UPDATE m SET biu = 18446744073709551614, fl = -3.4028234663852886e38,
                            js = '{"b":{"c":true},"a":[1,2.5,"🦀",null]}' WHERE id = 2;
               UPDATE m SET b12 = b'100000000', en = 'b c', st = 'x,y', dt0 = '2026-11-23 14:21:01',
                            js = '"🦀 "', geo = ST_GeomFromText('POINT(3 5)') WHERE id = 9223372036854775808;"#,
        )
        .unwrap();
    let report = compare(&source, &target).await;
    assert_eq!(
        differences(&report),
        expected(&[
            ("(1)", &["iu", "b1", "ts6"]),
            ("(2)", &["biu", "fl"]),
            (
                "(9223372036854775808)",
                &["b12", "en", "st", "dt0", "js", "geo"]
            ),
        ]),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_source_position_is_the_end_of_its_binary_log() {
    let maria = MariaDb::start();
    maria.create_database("shop").unwrap();
    let source = mysql_source_endpoint(&maria.url("shop"));
    let before = source_position(&source, "p").await.unwrap().unwrap();
    maria
        .sql(
            "shop",
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
        )
        .unwrap();
    let after = source_position(&source, "p").await.unwrap().unwrap();
    assert!(
        after.partial_cmp_same_source(&before).unwrap().is_gt(),
        "{before} then {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_source_table_may_name_its_database() {
    let maria = MariaDb::start();
    maria.create_database("shop").unwrap();
    maria.create_database("copy").unwrap();
    for db in ["shop", "copy"] {
        maria
            .sql(
                db,
                "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 1)",
            )
            .unwrap();
    }
    // The sink names the target table by the stream name, one identifier.
    maria
        .sql("copy", "CREATE VIEW `shop.t` AS SELECT * FROM t")
        .unwrap();
    maria.sql("shop", "UPDATE t SET v = 2").unwrap();
    // The source side reads `shop`.`t` from a connection to another database.
    let source = mysql_source_endpoint(&maria.url("copy"));
    let target = Endpoint::Mysql {
        url: maria.url("copy"),
    };
    let report = compare_table(&source, &target, "shop.t", &VerifyOptions::default())
        .await
        .unwrap();
    assert_eq!(report.different, 1, "{report:?}");
}
