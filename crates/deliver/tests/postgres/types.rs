//! The type matrix: every value type into its natural column types, read back exactly.

use tidesync_core::time::MICROS_PER_DAY;
use tidesync_core::{Decimal, StageError, TableSchema, Value};
use tokio_postgres::types::FromSql;
use tokio_postgres::{Client, NoTls};

use super::*;

/// Applies `values` as rows 1.. of `t (id bigint PRIMARY KEY, v <pg_type>)`.
async fn apply_values(pg: &Postgres, pg_type: &str, values: Vec<Value>) -> Result<(), StageError> {
    pg.psql(
        DB,
        &format!("CREATE TABLE t (id bigint PRIMARY KEY, v {pg_type})"),
    )
    .unwrap();
    let schema = TableSchema {
        name: "t".into(),
        columns: vec![column("id", "INTEGER", false), column("v", pg_type, true)],
        key: vec!["id".into()],
        dialect: Default::default(),
    };
    let (mut sink, _) = open_sink(pg, vec![schema], false).await;
    let entries = values
        .into_iter()
        .zip(1..)
        .map(|(v, id)| {
            let row = Row(vec![("id".into(), Value::Int(id)), ("v".into(), v)]);
            entry(
                id as u64,
                "t",
                Op::Insert,
                Key(vec![Value::Int(id)]),
                Some(row),
            )
        })
        .collect();
    sink.apply(batch(entries)).await
}

/// A client of its own (TimeZone UTC), its connection driven until the test ends.
async fn client(pg: &Postgres) -> Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(DB), NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    client
}

/// `expr` (over column `v`) for every row of `t`, in id order.
async fn read<T: for<'a> FromSql<'a>>(pg: &Postgres, expr: &str) -> Vec<Option<T>> {
    let sql = format!("SELECT {expr} FROM t ORDER BY id");
    client(pg)
        .await
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn round_trip_text(pg_type: &str, values: Vec<Value>) -> Vec<Option<String>> {
    let pg = server();
    apply_values(&pg, pg_type, values).await.unwrap();
    read(&pg, "v::text").await
}

fn some(texts: &[&str]) -> Vec<Option<String>> {
    texts.iter().map(|t| Some((*t).to_owned())).collect()
}

fn decimal(text: &str) -> Value {
    Value::Decimal(Decimal::parse(text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ints_round_trip_into_bigint() {
    let values = vec![
        Value::Int(i64::MIN),
        Value::Int(-1),
        Value::Int(i64::MAX),
        Value::Null,
    ];
    let pg = server();
    apply_values(&pg, "bigint", values).await.unwrap();
    let got: Vec<Option<i64>> = read(&pg, "v").await;
    assert_eq!(got, [Some(i64::MIN), Some(-1), Some(i64::MAX), None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ints_round_trip_into_integer_and_smallint() {
    let got = round_trip_text(
        "integer",
        vec![Value::Int(i32::MIN.into()), Value::Int(i32::MAX.into())],
    )
    .await;
    assert_eq!(got, some(&["-2147483648", "2147483647"]));
    let got = round_trip_text(
        "smallint",
        vec![
            Value::Int(i16::MIN.into()),
            Value::Float(7.0),
            Value::Bool(true),
        ],
    )
    .await;
    assert_eq!(got, some(&["-32768", "7", "1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_int_out_of_an_integer_columns_range_is_a_definite_error_naming_column_and_key() {
    let pg = server();
    let err = apply_values(&pg, "integer", vec![Value::Int(1), Value::Int(1 << 31)])
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let message = err.to_string();
    for part in [
        "seq 2",
        "`t`",
        "key (2)",
        "column `v`",
        "2147483648 is out of range",
    ] {
        assert!(message.contains(part), "{part:?} missing in: {message}");
    }
    assert_eq!(pg.psql(DB, "SELECT count(*) FROM t").unwrap(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floats_round_trip_into_double_precision_bit_for_bit() {
    let floats = [
        0.1,
        -0.0,
        1e300,
        5e-324,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let pg = server();
    apply_values(
        &pg,
        "double precision",
        floats.iter().map(|f| Value::Float(*f)).collect(),
    )
    .await
    .unwrap();
    let got: Vec<Option<f64>> = read(&pg, "v").await;
    let bits = |fs: &[f64]| fs.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    let got: Vec<f64> = got.into_iter().map(Option::unwrap).collect();
    assert_eq!(bits(&got), bits(&floats));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floats_round_trip_into_real() {
    let pg = server();
    apply_values(&pg, "real", vec![Value::Float(0.5), Value::Float(f64::NAN)])
        .await
        .unwrap();
    let got: Vec<Option<f32>> = read(&pg, "v").await;
    assert_eq!(got[0], Some(0.5));
    assert!(got[1].unwrap().is_nan());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimals_stay_exact_in_numeric() {
    let forty = "1234567890123456789012345678901234567890.0123456789";
    let got = round_trip_text(
        "numeric",
        vec![
            decimal("12.50"),
            decimal(forty),
            decimal("-0.001"),
            decimal("NaN"),
            Value::Int(i64::MAX),
            Value::Float(0.1),
        ],
    )
    .await;
    assert_eq!(
        got,
        some(&[
            "12.50",
            forty,
            "-0.001",
            "NaN",
            "9223372036854775807",
            "0.1"
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_round_trips_into_text_and_varchar() {
    let texts = [
        "",
        "it's \"quoted\"",
        "naïve ☃ 🦀",
        "two\nlines",
        "$1; DROP TABLE t",
    ];
    let values = texts.iter().map(|t| Value::from(*t)).collect();
    assert_eq!(round_trip_text("text", values).await, some(&texts));
    let got = round_trip_text(
        "varchar(10)",
        vec![Value::from("short"), Value::Int(12), Value::Float(1.5)],
    )
    .await;
    assert_eq!(got, some(&["short", "12", "1.5"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip_into_bytea() {
    let pg = server();
    let values = vec![
        Value::Bytes(vec![]),
        Value::Bytes(vec![0, 255, 1, b'\\']),
        Value::from("text in a blob"),
    ];
    apply_values(&pg, "bytea", values).await.unwrap();
    let got: Vec<Option<Vec<u8>>> = read(&pg, "v").await;
    assert_eq!(
        got,
        [
            Some(vec![]),
            Some(vec![0, 255, 1, b'\\']),
            Some(b"text in a blob".to_vec())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bools_round_trip_into_boolean() {
    let pg = server();
    let values = vec![
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(1),
        Value::Int(0),
        Value::from("yes"),
    ];
    apply_values(&pg, "boolean", values).await.unwrap();
    let got: Vec<Option<bool>> = read(&pg, "v").await;
    assert_eq!(
        got,
        [Some(true), Some(false), Some(true), Some(false), Some(true)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_round_trip_into_timestamptz_and_timestamp_to_the_microsecond() {
    let values = || {
        vec![
            Value::Timestamp(1_700_000_000_123_456),
            Value::Timestamp(-1),
            Value::Timestamp(946_684_800_000_001),
            Value::from("2026-11-23 14:21:00.5"),
        ]
    };
    let got = round_trip_text("timestamptz", values()).await;
    assert_eq!(
        got,
        some(&[
            "2023-11-14 22:13:20.123456+00",
            "1969-12-31 23:59:59.999999+00",
            "2000-01-01 00:00:00.000001+00",
            "2026-11-23 14:21:00.5+00",
        ])
    );
    let got = round_trip_text("timestamp", values()).await;
    assert_eq!(
        got,
        some(&[
            "2023-11-14 22:13:20.123456",
            "1969-12-31 23:59:59.999999",
            "2000-01-01 00:00:00.000001",
            "2026-11-23 14:21:00.5",
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_and_times_round_trip_into_date_and_time() {
    let got = round_trip_text(
        "date",
        vec![
            Value::Date(0),
            Value::Date(-1),
            Value::Date(20_415),
            Value::from("2026-11-23"),
        ],
    )
    .await;
    assert_eq!(
        got,
        some(&["1970-01-01", "1969-12-31", "2025-11-23", "2026-11-23"])
    );
    let got = round_trip_text(
        "time",
        vec![
            Value::Time(0),
            Value::Time(MICROS_PER_DAY - 1),
            Value::Time(MICROS_PER_DAY),
            Value::from("14:21"),
        ],
    )
    .await;
    assert_eq!(
        got,
        some(&["00:00:00", "23:59:59.999999", "24:00:00", "14:21:00"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_round_trips_into_json_exactly_and_jsonb_normalised() {
    let doc = r#"{"b": 1,  "a": [true, null, 1.50]}"#;
    let got = round_trip_text("json", vec![Value::Json(doc.into())]).await;
    assert_eq!(got, some(&[doc]));
    let got = round_trip_text("jsonb", vec![Value::Json(doc.into())]).await;
    assert_eq!(got, some(&[r#"{"a": [true, null, 1.50], "b": 1}"#]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_types_take_the_text_form() {
    let uuid = "0b7e2f3c-2f4e-4c1a-9d59-7c1e1f6a0b11";
    assert_eq!(
        round_trip_text("uuid", vec![Value::from(uuid)]).await,
        some(&[uuid])
    );
    let got = round_trip_text("numeric(6,2)", vec![Value::Float(12.5), decimal("1.005")]).await;
    assert_eq!(got, some(&["12.50", "1.01"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_for_a_column_type_is_a_definite_error_naming_the_change() {
    let pg = server();
    let err = apply_values(&pg, "date", vec![Value::from("not a date")])
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let message = err.to_string();
    for part in ["seq 1", "`t`", "key (1)", "22007"] {
        assert!(message.contains(part), "{part:?} missing in: {message}");
    }
}
