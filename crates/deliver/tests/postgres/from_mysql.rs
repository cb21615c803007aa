//! Tables created from a MySQL/MariaDB source's schema (`Dialect::Mysql`): every MySQL type the
//! source reports, mapped to its PostgreSQL type, and every value form the source emits for
//! it (extremes, 4-byte UTF-8, empty bytes, NULLs), applied through `COPY` and through upserts
//! and read back equal.

use tidesync_core::time::{MICROS_PER_DAY, MICROS_PER_SECOND, days_from_civil};
use tidesync_core::{Decimal, Dialect, Key, Op, Row, Sink, TableSchema, Value};
use tokio_postgres::{Client, NoTls};

use super::*;

/// How a column is read back into the [`Value`] the source emitted.
#[derive(Debug, Clone, Copy)]
enum Read {
    Int,
    /// `bigint unsigned` in `numeric(20,0)`: `Int` up to `i64::MAX`, else `Decimal`.
    Unsigned,
    Decimal,
    Float4,
    Float8,
    Text,
    Bytes,
    Bool,
    Date,
    /// time, timestamp and timestamptz: microseconds (of the wall clock for `timestamp`).
    Micros(fn(i64) -> Value),
    Json,
}

/// (column, MySQL `COLUMN_TYPE`, the PostgreSQL type it must become, how to read it back).
const COLUMNS: &[(&str, &str, &str, Read)] = &[
    ("ti", "tinyint(4)", "smallint", Read::Int),
    ("tiu", "tinyint(3) unsigned", "smallint", Read::Int),
    ("si", "smallint(6)", "smallint", Read::Int),
    ("siu", "smallint(5) unsigned", "integer", Read::Int),
    ("mi", "mediumint(9)", "integer", Read::Int),
    ("miu", "mediumint(8) unsigned", "integer", Read::Int),
    ("i", "int(11)", "integer", Read::Int),
    ("iu", "int(10) unsigned", "bigint", Read::Int),
    ("bi", "bigint(20)", "bigint", Read::Int),
    (
        "biu",
        "bigint(20) unsigned",
        "numeric(20,0)",
        Read::Unsigned,
    ),
    ("dec", "decimal(12,2)", "numeric(12,2)", Read::Decimal),
    ("fl", "float", "real", Read::Float4),
    ("db", "double", "double precision", Read::Float8),
    ("ch", "char(3)", "character varying(3)", Read::Text),
    ("vc", "varchar(20)", "character varying(20)", Read::Text),
    ("tx", "text", "text", Read::Text),
    ("ltx", "longtext", "text", Read::Text),
    ("en", "enum('a','b c')", "text", Read::Text),
    ("st", "set('x','y')", "text", Read::Text),
    ("vb", "varbinary(16)", "bytea", Read::Bytes),
    ("bn", "binary(4)", "bytea", Read::Bytes),
    ("bl", "blob", "bytea", Read::Bytes),
    ("geo", "geometry", "bytea", Read::Bytes),
    ("b1", "bit(1)", "boolean", Read::Bool),
    ("b12", "bit(12)", "bytea", Read::Bytes),
    ("d", "date", "date", Read::Date),
    (
        "t6",
        "time(6)",
        "time(6) without time zone",
        Read::Micros(Value::Time),
    ),
    (
        "t0",
        "time",
        "time(0) without time zone",
        Read::Micros(Value::Time),
    ),
    (
        "dt6",
        "datetime(6)",
        "timestamp(6) without time zone",
        Read::Micros(Value::Timestamp),
    ),
    (
        "dt0",
        "datetime",
        "timestamp(0) without time zone",
        Read::Micros(Value::Timestamp),
    ),
    (
        "ts6",
        "timestamp(6)",
        "timestamp(6) with time zone",
        Read::Micros(Value::Timestamp),
    ),
    ("yr", "year(4)", "smallint", Read::Int),
    ("js", "json", "jsonb", Read::Json),
];

fn schema() -> TableSchema {
    let mut columns = vec![column("id", "int(11)", false)];
    columns.extend(COLUMNS.iter().map(|(name, ty, ..)| column(name, ty, true)));
    TableSchema {
        name: "m".into(),
        columns,
        key: vec!["id".into()],
        dialect: Dialect::Mysql,
    }
}

fn decimal(text: &str) -> Value {
    Value::Decimal(Decimal::parse(text).unwrap())
}

fn f32v(f: f32) -> Value {
    Value::Float(f64::from(f))
}

fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64, us: i64) -> i64 {
    days_from_civil(y, mo, d) * MICROS_PER_DAY + (h * 3600 + mi * 60 + s) * MICROS_PER_SECOND + us
}

fn date(y: i64, mo: u32, d: u32) -> Value {
    Value::Date(i32::try_from(days_from_civil(y, mo, d)).unwrap())
}

/// The rows as the MySQL source emits them, in `COLUMNS` order (without the key).
fn rows() -> Vec<Vec<Value>> {
    let text = |s: &str| Value::Text(s.to_owned());
    let wkb_point: Vec<u8> = [0u8, 0, 0, 0, 1, 1, 0, 0, 0]
        .into_iter()
        .chain(1.5f64.to_le_bytes())
        .chain((-2.0f64).to_le_bytes())
        .collect();
    vec![
        // Lows.
        vec![
            Value::Int(-128),
            Value::Int(0),
            Value::Int(-32768),
            Value::Int(0),
            Value::Int(-8_388_608),
            Value::Int(0),
            Value::Int(i32::MIN.into()),
            Value::Int(0),
            Value::Int(i64::MIN),
            Value::Int(0),
            decimal("-9999999999.99"),
            f32v(f32::MIN),
            Value::Float(f64::MIN),
            text(""),
            text(""),
            text(""),
            text(""),
            text("a"),
            text(""),
            Value::Bytes(vec![]),
            Value::Bytes(vec![0, 0, 0, 0]),
            Value::Bytes(vec![]),
            Value::Bytes(wkb_point.clone()),
            Value::Bool(false),
            Value::Bytes(vec![0, 0]),
            date(1000, 1, 1),
            Value::Time(0),
            Value::Time(0),
            Value::Timestamp(at(1000, 1, 1, 0, 0, 0, 0)),
            Value::Timestamp(at(1000, 1, 1, 0, 0, 0, 0)),
            Value::Timestamp(at(1970, 1, 1, 0, 0, 1, 0)),
            Value::Int(0),
            Value::Json("[]".into()),
        ],
        // Highs.
        vec![
            Value::Int(127),
            Value::Int(255),
            Value::Int(32767),
            Value::Int(65535),
            Value::Int(8_388_607),
            Value::Int(16_777_215),
            Value::Int(i32::MAX.into()),
            Value::Int(u32::MAX.into()),
            Value::Int(i64::MAX),
            decimal("18446744073709551615"),
            decimal("9999999999.99"),
            f32v(f32::MAX),
            Value::Float(f64::MAX),
            text("é☃🦀"),
            text("it's \"q\"\t\\ \n🦀"),
            text(&"🦀 naïve\r\n".repeat(2000)),
            text(&"x".repeat(70_000)),
            text("b c"),
            text("x,y"),
            Value::Bytes((0..16).map(|b| b * 17).collect()),
            Value::Bytes(vec![0xff, b'\\', b'\t', 0]),
            Value::Bytes((0..=255).collect()),
            Value::Bytes(wkb_point),
            Value::Bool(true),
            Value::Bytes(vec![0x0f, 0xff]),
            date(9999, 12, 31),
            Value::Time(MICROS_PER_DAY),
            Value::Time(MICROS_PER_DAY - MICROS_PER_SECOND),
            Value::Timestamp(at(9999, 12, 31, 23, 59, 59, 999_999)),
            Value::Timestamp(at(9999, 12, 31, 23, 59, 59, 0)),
            Value::Timestamp(at(2038, 1, 19, 3, 14, 7, 999_999)),
            Value::Int(2155),
            Value::Json(r#"{"a": [1, 2.5, "🦀", null], "b": {"c": true}}"#.into()),
        ],
        // In between: the other value forms.
        vec![
            Value::Int(-1),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Int(i64::MAX),
            decimal("-0.50"),
            f32v(-1.1),
            Value::Float(-0.0),
            text("ab"),
            text("$1; DROP TABLE m"),
            text("\u{10FFFF}"),
            text("🦀"),
            text("a"),
            text("y"),
            Value::Bytes(vec![0x80]),
            Value::Bytes(vec![1, 2, 3, 4]),
            Value::Bytes(b"\\x00".to_vec()),
            Value::Bytes(vec![0; 25]),
            Value::Bool(false),
            Value::Bytes(vec![0x08, 0x01]),
            date(1970, 1, 1),
            Value::Time(12 * 3600 * MICROS_PER_SECOND + 1),
            Value::Time(MICROS_PER_DAY),
            Value::Timestamp(at(1969, 12, 31, 23, 59, 59, 999_999)),
            Value::Timestamp(at(2026, 11, 23, 14, 21, 0, 0)),
            Value::Timestamp(at(2026, 11, 23, 14, 21, 0, 500_000)),
            Value::Int(1901),
            Value::Json(r#""🦀""#.into()),
        ],
        // NULLs.
        vec![Value::Null; COLUMNS.len()],
    ]
}

fn changes(first_seq: u64, first_id: i64, op: Op) -> Vec<LogEntry> {
    rows()
        .into_iter()
        .zip(0..)
        .map(|(values, n)| {
            let id = first_id + n;
            let mut row = vec![("id".to_owned(), Value::Int(id))];
            row.extend(
                COLUMNS
                    .iter()
                    .map(|(name, ..)| (*name).to_owned())
                    .zip(values),
            );
            entry(
                first_seq + n as u64,
                "m",
                op,
                Key(vec![Value::Int(id)]),
                Some(Row(row)),
            )
        })
        .collect()
}

async fn client(pg: &Postgres) -> Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(DB), NoTls).await.unwrap();
    tokio::spawn(connection);
    // Not UTC: `timestamp` must not depend on the reader's zone, `timestamptz` is read as
    // an instant.
    client
        .batch_execute("SET TimeZone = 'Asia/Kolkata'")
        .await
        .unwrap();
    client
}

/// The rows with ids `ids`, read back into the values the source emitted.
async fn read_back(client: &Client, ids: std::ops::Range<i64>) -> Vec<Vec<Value>> {
    let exprs: Vec<String> = COLUMNS
        .iter()
        .map(|(name, _, _, read)| match read {
            Read::Int => format!("{name}::int8"),
            Read::Unsigned | Read::Decimal | Read::Json => format!("{name}::text"),
            Read::Date => format!("({name} - date '1970-01-01')"),
            Read::Micros(_) => format!("(extract(epoch from {name}) * 1000000)::int8"),
            _ => (*name).to_owned(),
        })
        .collect();
    let sql = format!(
        "SELECT {} FROM m WHERE id >= $1::int8 AND id < $2::int8 ORDER BY id",
        exprs.join(", ")
    );
    let rows = client.query(&sql, &[&ids.start, &ids.end]).await.unwrap();
    rows.iter()
        .map(|row| {
            COLUMNS
                .iter()
                .enumerate()
                .map(|(i, (.., read))| {
                    let value = match read {
                        Read::Int => row.get::<_, Option<i64>>(i).map(Value::Int),
                        Read::Unsigned => row
                            .get::<_, Option<String>>(i)
                            .map(|t| t.parse().map_or_else(|_| decimal(&t), Value::Int)),
                        Read::Decimal => row.get::<_, Option<String>>(i).map(|t| decimal(&t)),
                        Read::Float4 => row.get::<_, Option<f32>>(i).map(f32v),
                        Read::Float8 => row.get::<_, Option<f64>>(i).map(Value::Float),
                        Read::Text => row.get::<_, Option<String>>(i).map(Value::Text),
                        Read::Bytes => row.get::<_, Option<Vec<u8>>>(i).map(Value::Bytes),
                        Read::Bool => row.get::<_, Option<bool>>(i).map(Value::Bool),
                        Read::Date => row.get::<_, Option<i32>>(i).map(Value::Date),
                        Read::Micros(make) => row.get::<_, Option<i64>>(i).map(*make),
                        Read::Json => row.get::<_, Option<String>>(i).map(Value::Json),
                    };
                    value.unwrap_or(Value::Null)
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_schema_creates_mapped_columns_that_hold_every_source_value() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, vec![schema()], true).await;

    let created = pg
        .psql(
            DB,
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
             FROM pg_attribute WHERE attrelid = 'm'::regclass AND attnum > 0",
        )
        .unwrap();
    let mut expected = vec!["id integer".to_owned()];
    expected.extend(
        COLUMNS
            .iter()
            .map(|(name, _, pg, _)| format!("{name} {pg}")),
    );
    assert_eq!(created, expected.join(", "));

    // Rows 1..: four inserts, which go through COPY; rows 11..: updates, which are upserts.
    sink.apply(batch(changes(1, 1, Op::Insert))).await.unwrap();
    sink.apply(batch(changes(5, 11, Op::Update))).await.unwrap();
    let client = client(&pg).await;
    for ids in [1..5, 11..15] {
        let got = read_back(&client, ids.clone()).await;
        for (n, (got, want)) in got.iter().zip(rows()).enumerate() {
            for ((name, ..), (g, w)) in COLUMNS.iter().zip(got.iter().zip(&want)) {
                assert_eq!(g, w, "row {} column {name}", ids.start + n as i64);
            }
        }
        assert_eq!(got.len(), 4);
    }

    // `datetime` keeps the wall clock as written, whatever the reader's zone; `timestamp`
    // is the instant.
    let text = client
        .query_one("SELECT dt6::text, ts6::text FROM m WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(text.get::<_, String>(0), "9999-12-31 23:59:59.999999");
    assert_eq!(text.get::<_, String>(1), "2038-01-19 08:44:07.999999+05:30");
}
