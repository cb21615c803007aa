//! Opening: creating tables, missing tables, connection errors.

use tidesync_core::{Seq, Sink, TableSchema, Value};
use tidesync_deliver::postgres::PostgresSink;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tables_creates_the_table_with_mapped_types_from_a_sqlite_schema() {
    let pg = server();
    let declared = [
        ("id", "INTEGER", false),
        ("big", "UNSIGNED BIG INT", true),
        ("name", "VARCHAR(20)", false),
        ("note", "TEXT", true),
        ("ratio", "REAL", true),
        ("score", "DOUBLE PRECISION", true),
        ("price", "NUMERIC(10,2)", true),
        ("amount", "DECIMAL", true),
        ("active", "BOOLEAN", true),
        ("born", "DATE", true),
        ("seen", "DATETIME", true),
        ("stamp", "TIMESTAMP", true),
        ("img", "BLOB", true),
        ("anything", "", true),
        ("doc", "JSON", true),
        ("odd \"name\"", "text", true),
    ];
    let schema = TableSchema {
        name: "Things \"2\"".into(),
        columns: declared
            .iter()
            .map(|(n, t, null)| column(n, t, *null))
            .collect(),
        key: vec!["id".into(), "name".into()],
        dialect: Default::default(),
    };
    let (mut sink, applied) = open_sink(&pg, vec![schema.clone()], true).await;
    assert_eq!(applied, Some(Seq(0)));
    let columns = pg
        .psql(
            DB,
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns
             WHERE table_name = 'Things \"2\"' ORDER BY ordinal_position",
        )
        .unwrap();
    assert_eq!(
        columns,
        "id|bigint|NO\nbig|bigint|YES\nname|text|NO\nnote|text|YES\nratio|double precision|YES\n\
         score|double precision|YES\nprice|numeric|YES\namount|numeric|YES\nactive|boolean|YES\n\
         born|date|YES\nseen|timestamp with time zone|YES\nstamp|timestamp with time zone|YES\n\
         img|bytea|YES\nanything|text|YES\ndoc|text|YES\nodd \"name\"|text|YES"
    );
    let key = pg
        .psql(
            DB,
            "SELECT string_agg(a.attname, ',' ORDER BY a.attnum) FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
             WHERE i.indrelid = '\"Things \"\"2\"\"\"'::regclass AND i.indisprimary",
        )
        .unwrap();
    assert_eq!(key, "id,name");

    // What a SQLite source sends (ints, floats, text, blobs) lands in the mapped types.
    let sqlite_row = [
        Value::Int(1),
        Value::Int(-7),
        Value::from("n"),
        Value::Float(0.5),
        Value::Float(0.25),
        Value::Int(3),
        Value::Float(12.5),
        Value::from("1.10"),
        Value::Int(1),
        Value::from("2026-11-23"),
        Value::from("2026-11-23 14:21:00"),
        Value::from("2026-11-23T14:21:00.123Z"),
        Value::Bytes(vec![1, 2]),
        Value::Float(2.0),
        Value::from("{\"a\":1}"),
        Value::Null,
    ];
    let row = Row(schema
        .columns
        .iter()
        .map(|c| c.name.clone())
        .zip(sqlite_row)
        .collect());
    let key = Key(vec![Value::Int(1), Value::from("n")]);
    sink.apply(batch(vec![entry(
        1,
        "Things \"2\"",
        Op::Insert,
        key,
        Some(row),
    )]))
    .await
    .unwrap();
    let got = pg
        .psql(
            DB,
            "SET TimeZone = 'UTC'; SELECT id, big, name, note, ratio, score, price, amount, active,
             born, seen, stamp, img, anything, doc, \"odd \"\"name\"\"\" IS NULL FROM \"Things \"\"2\"\"\"",
        )
        .unwrap();
    assert_eq!(
        got,
        "1|-7|n|0.5|0.25|3|12.5|1.10|t|2026-11-23|2026-11-23 14:21:00+00|\
         2026-11-23 14:21:00.123+00|\\x0102|2.0|{\"a\":1}|t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_table_is_kept_as_it_is() {
    let pg = server();
    pg.psql(
        DB,
        "CREATE TABLE items (id integer PRIMARY KEY, sku varchar(8) NOT NULL, price numeric(8,2))",
    )
    .unwrap();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    sink.apply(batch(vec![upsert(1, 1, Some("a"), Value::Float(2.5))]))
        .await
        .unwrap();
    assert_eq!(items(&pg), "1|a|2.50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_without_create_tables_is_a_named_definite_error() {
    let pg = server();
    let mut sink = PostgresSink::new(&pg.url(DB), "p", "replica", false);
    let err = sink.open(items_schema()).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("table `items` does not exist"),
        "{message}"
    );
    assert!(message.contains("create_tables"), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}/{DB}", pg.port())),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_unique_key_on_the_key_columns_is_a_definite_error() {
    let pg = server();
    pg.psql(DB, "CREATE TABLE items (id bigint, sku text, price text)")
        .unwrap();
    let mut sink = PostgresSink::new(&pg.url(DB), "p", "replica", true);
    let err = sink.open(items_schema()).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string()
            .contains("`items` has no primary key or unique index on exactly the key columns (id)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_missing_database_is_a_clear_error_without_the_password() {
    let pg = Postgres::builder().password("right-pw-1").start();
    pg.create_database(DB).unwrap();
    let port = pg.port();
    let wrong = format!("postgres://postgres:wrong-pw-2@127.0.0.1:{port}/{DB}");
    let err = PostgresSink::new(&wrong, "p", "s", true)
        .open(items_schema())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(!err.is_transient(), "{message}");
    assert!(!message.contains("wrong-pw-2"), "{message}");
    assert!(
        message.contains(&format!("postgres://postgres@127.0.0.1:{port}/{DB}")),
        "{message}"
    );
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );

    let missing = format!("postgres://postgres:right-pw-1@127.0.0.1:{port}/nope");
    let err = PostgresSink::new(&missing, "p", "s", true)
        .open(items_schema())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(!err.is_transient(), "{message}");
    assert!(!message.contains("right-pw-1"), "{message}");
    assert!(
        message.contains("database \"nope\" does not exist"),
        "{message}"
    );

    let (_sink, applied) = open_sink(&pg, items_schema(), true).await;
    assert_eq!(applied, Some(Seq(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_transient_and_names_the_target() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres:secret-pw@127.0.0.1:{port}/db");
    let err = PostgresSink::new(&url, "p", "s", true)
        .open(items_schema())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(err.is_transient(), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{port}/db")),
        "{message}"
    );
    assert!(!message.contains("secret-pw"), "{message}");
}
