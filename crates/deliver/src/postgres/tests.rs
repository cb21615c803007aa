#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use bytes::BytesMut;
use tidesync_core::{Change, ColumnSchema, Decimal, Dialect, Key, LogEntry, Op, Row};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::bind::{Bound, ColumnKind, bind, text_of};
use super::copy::{Backoff, NotCopyable, eligible, put_row};
use super::error::is_transient_code;
use super::plan::{Action, plan};
use super::sql::{
    copy_sql, create_table_sql, delete_sql, patch_sql, pg_type_for, pg_type_for_mysql,
    upsert_if_changed_sql, upsert_sql,
};
use super::*;

#[test]
fn declared_types_map_by_sqlite_affinity() {
    let cases = [
        ("INTEGER", "bigint"),
        ("int", "bigint"),
        ("UNSIGNED BIG INT", "bigint"),
        ("VARCHAR(20)", "text"),
        ("Text", "text"),
        ("CLOB", "text"),
        ("BLOB", "bytea"),
        ("REAL", "double precision"),
        ("FLOAT", "double precision"),
        ("DOUBLE PRECISION", "double precision"),
        ("NUMERIC(10,2)", "numeric"),
        ("DECIMAL", "numeric"),
        ("BOOLEAN", "boolean"),
        ("DATE", "date"),
        ("DATETIME", "timestamptz"),
        ("TIMESTAMP", "timestamptz"),
        ("", "text"),
        ("JSON", "text"),
        ("UUID", "text"),
    ];
    for (declared, expected) in cases {
        assert_eq!(pg_type_for(declared), expected, "{declared:?}");
    }
}

#[test]
fn mysql_column_types_map_to_types_that_hold_their_values() {
    let cases = [
        ("tinyint(4)", "smallint"),
        ("tinyint(1)", "smallint"),
        ("tinyint(3) unsigned", "smallint"),
        ("smallint(6)", "smallint"),
        ("smallint(5) unsigned", "integer"),
        ("mediumint(9)", "integer"),
        ("mediumint(8) unsigned", "integer"),
        ("int(11)", "integer"),
        ("int", "integer"),
        ("int(10) unsigned", "bigint"),
        ("int unsigned", "bigint"),
        ("int(10) unsigned zerofill", "bigint"),
        ("bigint(20)", "bigint"),
        ("bigint(20) unsigned", "numeric(20,0)"),
        ("bigint unsigned", "numeric(20,0)"),
        ("decimal(12,2)", "numeric(12,2)"),
        // The widest (also a MySQL diff source's `cast = "decimal"`): unconstrained.
        ("decimal(65,30) unsigned", "numeric"),
        ("decimal(65,29)", "numeric(65,29)"),
        ("decimal(5)", "numeric(5,0)"),
        ("decimal", "numeric(10,0)"),
        ("float", "real"),
        ("float(7,3) unsigned", "real"),
        ("double", "double precision"),
        ("double(10,2)", "double precision"),
        ("char(3)", "varchar(3)"),
        ("char(0)", "text"),
        ("varchar(20)", "varchar(20)"),
        ("tinytext", "text"),
        ("text", "text"),
        ("mediumtext", "text"),
        ("longtext", "text"),
        ("enum('a','b c')", "text"),
        ("enum('(x)','y'')')", "text"),
        ("set('x','y')", "text"),
        ("binary(4)", "bytea"),
        ("varbinary(16)", "bytea"),
        ("tinyblob", "bytea"),
        ("blob", "bytea"),
        ("mediumblob", "bytea"),
        ("longblob", "bytea"),
        ("geometry", "bytea"),
        ("point", "bytea"),
        ("bit(1)", "boolean"),
        ("bit(12)", "bytea"),
        ("bit(64)", "bytea"),
        ("date", "date"),
        ("time", "time(0)"),
        ("time(6)", "time(6)"),
        ("datetime", "timestamp(0)"),
        ("datetime(3)", "timestamp(3)"),
        ("timestamp(6)", "timestamptz(6)"),
        ("timestamp", "timestamptz(0)"),
        ("year(4)", "smallint"),
        ("year", "smallint"),
        ("json", "jsonb"),
        ("  INT(10) UNSIGNED ", "bigint"),
        ("inet6", "text"),
        ("uuid", "text"),
        ("", "text"),
        ("int); DROP TABLE x; --", "text"),
    ];
    for (column_type, expected) in cases {
        assert_eq!(pg_type_for_mysql(column_type), expected, "{column_type:?}");
    }
}

#[test]
fn create_table_from_a_mysql_schema_uses_the_mysql_mapping() {
    let schema = TableSchema {
        name: "orders".into(),
        columns: vec![
            ColumnSchema {
                name: "id".into(),
                type_name: "bigint(20) unsigned".into(),
                nullable: false,
            },
            ColumnSchema {
                name: "at".into(),
                type_name: "datetime(6)".into(),
                nullable: true,
            },
        ],
        key: vec!["id".into()],
        dialect: Dialect::Mysql,
    };
    assert_eq!(
        create_table_sql(&schema),
        "CREATE TABLE IF NOT EXISTS \"orders\" (\"id\" numeric(20,0) NOT NULL, \"at\" timestamp(6), PRIMARY KEY (\"id\"))"
    );
}

#[test]
fn create_table_quotes_names_and_keeps_key_and_not_null() {
    let schema = TableSchema {
        name: "my \"table\"".into(),
        columns: vec![
            ColumnSchema {
                name: "id".into(),
                type_name: "INTEGER); DROP TABLE x; --".into(),
                nullable: false,
            },
            ColumnSchema {
                name: "v".into(),
                type_name: "".into(),
                nullable: true,
            },
        ],
        key: vec!["id".into()],
        dialect: Default::default(),
    };
    assert_eq!(
        create_table_sql(&schema),
        "CREATE TABLE IF NOT EXISTS \"my \"\"table\"\"\" (\"id\" bigint NOT NULL, \"v\" text, PRIMARY KEY (\"id\"))"
    );
}

#[test]
fn upserts_number_their_parameters_row_by_row() {
    let cols = ["id".to_owned(), "v".to_owned()];
    assert_eq!(
        upsert_sql("t", &cols, &cols[..1], 2),
        "INSERT INTO \"t\" (\"id\", \"v\") VALUES ($1, $2), ($3, $4) ON CONFLICT (\"id\") DO UPDATE SET \"v\" = EXCLUDED.\"v\""
    );
    assert_eq!(
        upsert_sql("t", &cols[..1], &cols[..1], 1),
        "INSERT INTO \"t\" (\"id\") VALUES ($1) ON CONFLICT (\"id\") DO NOTHING"
    );
}

#[test]
fn deletes_use_equality_for_one_row_and_in_for_several() {
    let key = ["a".to_owned(), "b".to_owned()];
    assert_eq!(
        delete_sql("t", &key, 1),
        "DELETE FROM \"t\" WHERE \"a\" = $1 AND \"b\" = $2"
    );
    assert_eq!(
        delete_sql("t", &key, 2),
        "DELETE FROM \"t\" WHERE (\"a\", \"b\") IN (($1, $2), ($3, $4))"
    );
    assert_eq!(
        delete_sql("t", &key[..1], 3),
        "DELETE FROM \"t\" WHERE (\"a\") IN (($1), ($2), ($3))"
    );
}

#[test]
fn ints_are_range_checked_for_narrow_columns() {
    assert_eq!(bind(&Value::Int(-5), ColumnKind::Int4), Ok(Bound::Int4(-5)));
    assert_eq!(
        bind(&Value::Int(1 << 31), ColumnKind::Int4).unwrap_err(),
        "2147483648 is out of range for integer (int4)"
    );
    assert!(bind(&Value::Int(40_000), ColumnKind::Int2).is_err());
    assert_eq!(
        bind(&Value::Int(i64::MIN), ColumnKind::Int8),
        Ok(Bound::Int8(i64::MIN))
    );
}

#[test]
fn values_convert_only_where_nothing_is_lost() {
    // Integral floats reach integer columns; others go as text for the server to reject.
    assert_eq!(
        bind(&Value::Float(3.0), ColumnKind::Int8),
        Ok(Bound::Int8(3))
    );
    assert_eq!(
        bind(&Value::Float(1.5), ColumnKind::Int8),
        Ok(Bound::Text(Cow::Borrowed("1.5")))
    );
    assert_eq!(
        bind(&Value::Float(1e19), ColumnKind::Int8),
        Ok(Bound::Text(Cow::Borrowed("1e19")))
    );
    // Ints reach float8 natively only when exact.
    assert_eq!(
        bind(&Value::Int(3), ColumnKind::Float8),
        Ok(Bound::Float8(3.0))
    );
    assert_eq!(
        bind(&Value::Int((1 << 53) + 1), ColumnKind::Float8),
        Ok(Bound::Text(Cow::Borrowed("9007199254740993")))
    );
    // SQLite's 0/1 booleans.
    assert_eq!(
        bind(&Value::Int(1), ColumnKind::Bool),
        Ok(Bound::Bool(true))
    );
    assert_eq!(
        bind(&Value::Int(2), ColumnKind::Bool),
        Ok(Bound::Text(Cow::Borrowed("2")))
    );
    assert_eq!(
        bind(&Value::Bool(true), ColumnKind::Int2),
        Ok(Bound::Int2(1))
    );
    // Bytes and text.
    assert_eq!(
        bind(&Value::from("ab"), ColumnKind::Bytea),
        Ok(Bound::Bytes(b"ab"))
    );
    assert!(bind(&Value::Int(1), ColumnKind::Bytea).is_err());
    assert!(bind(&Value::Bytes(vec![0xff]), ColumnKind::Text).is_err());
    assert_eq!(
        bind(&Value::Bytes(b"ok".to_vec()), ColumnKind::Text),
        Ok(Bound::Text(Cow::Borrowed("ok")))
    );
    // Decimals stay their exact text.
    let d = Value::Decimal(Decimal::parse("12.50").unwrap());
    assert_eq!(
        bind(&d, ColumnKind::Text),
        Ok(Bound::Text(Cow::Borrowed("12.50")))
    );
    assert_eq!(bind(&Value::Null, ColumnKind::Int4), Ok(Bound::Null));
}

#[test]
fn times_shift_to_the_postgres_epoch() {
    assert_eq!(
        bind(
            &Value::Timestamp(946_684_800_000_000),
            ColumnKind::Timestamp
        ),
        Ok(Bound::Timestamp(0))
    );
    assert_eq!(
        bind(&Value::Timestamp(0), ColumnKind::Timestamp),
        Ok(Bound::Timestamp(-946_684_800_000_000))
    );
    assert!(bind(&Value::Timestamp(i64::MIN), ColumnKind::Timestamp).is_err());
    assert_eq!(
        bind(&Value::Date(10_957), ColumnKind::Date),
        Ok(Bound::Date(0))
    );
    assert_eq!(bind(&Value::Time(5), ColumnKind::Time), Ok(Bound::Time(5)));
    // Elsewhere as ISO text.
    assert_eq!(
        bind(&Value::Timestamp(0), ColumnKind::Text),
        Ok(Bound::Text(Cow::Borrowed("1970-01-01T00:00:00.000000Z")))
    );
}

#[test]
fn floats_have_an_exact_text_form() {
    let text = |f: f64| text_of(&Value::Float(f)).unwrap().into_owned();
    assert_eq!(text(0.1), "0.1");
    assert_eq!(text(1e300), "1e300");
    assert_eq!(text(-0.0), "-0.0");
    assert_eq!(text(f64::NAN), "NaN");
    assert_eq!(text(f64::INFINITY), "Infinity");
    assert_eq!(text(f64::NEG_INFINITY), "-Infinity");
}

#[test]
fn a_binary_value_refuses_a_type_it_was_not_bound_for() {
    let mut out = BytesMut::new();
    assert!(
        Bound::Int8(1)
            .to_sql_checked(&Type::INT4, &mut out)
            .is_err()
    );
    assert!(out.is_empty());
    Bound::Int4(1)
        .to_sql_checked(&Type::INT4, &mut out)
        .unwrap();
    assert_eq!(&out[..], [0, 0, 0, 1]);
    let text = Bound::Text(Cow::Borrowed("12.50"));
    assert!(matches!(
        text.encode_format(&Type::NUMERIC),
        tokio_postgres::types::Format::Text
    ));
}

fn put(seq: u64, stream: &str, id: i64, columns: &[&str]) -> LogEntry {
    let row = Row(columns
        .iter()
        .map(|c| ((*c).to_owned(), Value::Int(id)))
        .collect());
    LogEntry {
        seq: Seq(seq),
        change: Change {
            stream: stream.into(),
            op: Op::Insert,
            key: Key(vec![Value::Int(id)]),
            before: None,
            after: Some(row),
            commit_time_us: 0,
            position: None,
            txn: None,
            unchanged: Vec::new(),
        },
    }
}

fn del(seq: u64, stream: &str, id: i64) -> LogEntry {
    let mut e = put(seq, stream, id, &[]);
    e.change.op = Op::Delete;
    e.change.after = None;
    e
}

/// Each step as (stream, 'U' or 'D', seqs).
fn shape(entries: &[LogEntry], max_rows: usize) -> Vec<(String, char, Vec<u64>)> {
    plan(entries, max_rows, |_| 1)
        .into_iter()
        .map(|s| {
            let kind = match s.action {
                Action::Upsert { .. } => 'U',
                Action::Delete => 'D',
                Action::Truncate => 'T',
                Action::Patch { .. } => 'P',
            };
            let seqs = s.entries.iter().map(|e| e.seq.0).collect();
            (s.stream.to_owned(), kind, seqs)
        })
        .collect()
}

#[test]
fn neighbours_group_and_a_repeated_key_starts_a_new_statement() {
    let entries = [
        put(1, "a", 1, &["id", "v"]),
        put(2, "a", 2, &["id", "v"]),
        put(3, "a", 1, &["id", "v"]),
        put(4, "a", 3, &["id"]),
        del(5, "a", 1),
        del(6, "a", 1),
        put(7, "b", 1, &["id"]),
        put(8, "a", 4, &["id"]),
    ];
    let s = |stream: &str, kind, seqs: &[u64]| (stream.to_owned(), kind, seqs.to_vec());
    assert_eq!(
        shape(&entries, 1000),
        [
            s("a", 'U', &[1, 2]),
            s("a", 'U', &[3]),
            s("a", 'U', &[4]),
            s("a", 'D', &[5, 6]),
            s("b", 'U', &[7]),
            s("a", 'U', &[8]),
        ]
    );
}

#[test]
fn re_read_rows_get_steps_of_their_own_that_skip_equal_rows() {
    let read = |seq, id| {
        let mut e = put(seq, "a", id, &["id", "v"]);
        e.change.op = Op::Read;
        e
    };
    let entries = [
        put(1, "a", 1, &["id", "v"]),
        read(2, 2),
        read(3, 3),
        put(4, "a", 4, &["id", "v"]),
    ];
    let s = |kind, seqs: &[u64]| ("a".to_owned(), kind, seqs.to_vec());
    assert_eq!(
        shape(&entries, 1000),
        [s('U', &[1]), s('U', &[2, 3]), s('U', &[4])]
    );
    let cols = ["id".to_owned(), "v".to_owned(), "w".to_owned()];
    assert_eq!(
        upsert_if_changed_sql("t", &cols, &cols[..1], 1),
        "INSERT INTO \"t\" (\"id\", \"v\", \"w\") VALUES ($1, $2, $3) ON CONFLICT (\"id\") DO UPDATE SET \
         \"v\" = EXCLUDED.\"v\", \"w\" = EXCLUDED.\"w\" WHERE (\"t\".\"v\"::text, \"t\".\"w\"::text) \
         IS DISTINCT FROM (EXCLUDED.\"v\"::text, EXCLUDED.\"w\"::text)"
    );
    // Only key columns: nothing to update, nothing to compare.
    assert_eq!(
        upsert_if_changed_sql("t", &cols[..1], &cols[..1], 1),
        upsert_sql("t", &cols[..1], &cols[..1], 1)
    );
}

fn patch(seq: u64, stream: &str, id: i64, columns: &[&str]) -> LogEntry {
    let mut e = put(seq, stream, id, columns);
    e.change.op = Op::Patch;
    e
}

#[test]
fn a_patch_is_a_step_of_its_own_that_ends_the_runs_around_it() {
    let entries = [
        put(1, "a", 1, &["id", "v"]),
        put(2, "a", 2, &["id", "v"]),
        patch(3, "a", 3, &["id", "v"]),
        put(4, "a", 4, &["id", "v"]),
        patch(5, "a", 5, &["v"]),
        patch(6, "a", 6, &["v"]),
        del(7, "a", 1),
        patch(8, "a", 7, &[]),
        del(9, "a", 2),
    ];
    let s = |kind, seqs: &[u64]| ("a".to_owned(), kind, seqs.to_vec());
    assert_eq!(
        shape(&entries, 1000),
        [
            s('U', &[1, 2]),
            s('P', &[3]),
            s('U', &[4]),
            s('P', &[5]),
            s('P', &[6]),
            // Seq 8 sets no column: no statement, and the deletes around it group.
            s('D', &[7, 9]),
        ]
    );
    let steps = plan(&entries[4..5], 1000, |_| 1);
    assert!(matches!(&steps[0].action, Action::Patch { columns } if *columns == ["v"]));
}

#[test]
fn patches_set_their_columns_where_the_key_is() {
    let columns = ["id".to_owned(), "v w".to_owned()];
    let key = ["id".to_owned(), "k2".to_owned()];
    assert_eq!(
        patch_sql("t", &columns, &key),
        "UPDATE \"t\" SET \"id\" = $1, \"v w\" = $2 WHERE \"id\" = $3 AND \"k2\" = $4"
    );
}

#[test]
fn steps_hold_at_most_max_rows_and_max_params() {
    let entries: Vec<LogEntry> = (1..=5).map(|i| put(i, "a", i as i64, &["id"])).collect();
    let sizes: Vec<usize> = shape(&entries, 2).iter().map(|s| s.2.len()).collect();
    assert_eq!(sizes, [2, 2, 1]);

    let columns: Vec<String> = (0..40_000).map(|i| format!("c{i}")).collect();
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let wide: Vec<LogEntry> = (1..=3).map(|i| put(i, "a", i as i64, &columns)).collect();
    let sizes: Vec<usize> = shape(&wide, 1000).iter().map(|s| s.2.len()).collect();
    assert_eq!(sizes, [1, 1, 1]);
}

#[test]
fn the_target_is_described_without_the_password() {
    let target = |url: &str| tidesync_core::pg::describe_config(&url.parse().unwrap());
    assert_eq!(
        target("postgres://me:s3cret@db.example:6543/app"),
        "postgres://me@db.example:6543/app"
    );
    assert_eq!(
        target("host=a,b port=1 user=u password=s3cret dbname=d"),
        "postgres://u@a:1,b:1/d"
    );
    assert_eq!(target("postgres://u@h/"), "postgres://u@h:5432/u");
    let sink = PostgresSink::new("postgres://me:s3cret@h/app", "p", "s", false);
    let debug = format!("{sink:?}");
    assert!(debug.contains("postgres://me@h:5432/app"), "{debug}");
    assert!(!debug.contains("s3cret"), "{debug}");
}

#[test]
fn sqlstates_split_into_transient_and_definite() {
    let transient = [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::CONNECTION_FAILURE,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
    ];
    for code in transient {
        assert!(is_transient_code(&code), "{code:?}");
    }
    let definite = [
        SqlState::NOT_NULL_VIOLATION,
        SqlState::UNIQUE_VIOLATION,
        SqlState::INVALID_TEXT_REPRESENTATION,
        SqlState::UNDEFINED_TABLE,
        SqlState::UNDEFINED_COLUMN,
        SqlState::INVALID_PASSWORD,
        SqlState::INVALID_CATALOG_NAME,
        SqlState::INSUFFICIENT_PRIVILEGE,
        SqlState::CARDINALITY_VIOLATION,
        SqlState::DATABASE_DROPPED,
    ];
    for code in definite {
        assert!(!is_transient_code(&code), "{code:?}");
    }
}

fn copy_line(values: &[Bound<'_>]) -> Result<String, NotCopyable> {
    let mut out = BytesMut::new();
    put_row(&mut out, values)?;
    Ok(String::from_utf8(out.to_vec()).unwrap())
}

#[test]
fn copy_text_escapes_what_ends_a_value_or_a_line() {
    let line = copy_line(&[
        Bound::Int8(-7),
        Bound::Null,
        Bound::Text(Cow::Borrowed("a\tb\nc\rd\\e \u{e9}")),
        Bound::Text(Cow::Borrowed("")),
        Bound::Bool(true),
        Bound::Bool(false),
        Bound::Int4(i32::MIN),
        Bound::Int2(3),
        Bound::Int8(i64::MIN),
        Bound::Int8(0),
    ])
    .unwrap();
    assert_eq!(
        line,
        "-7\t\\N\ta\\tb\\nc\\rd\\\\e \u{e9}\t\tt\tf\t-2147483648\t3\t-9223372036854775808\t0\n"
    );
}

#[test]
fn copy_text_of_bytes_floats_and_times() {
    let line = copy_line(&[
        Bound::Bytes(&[0x00, 0xab, 0x5c]),
        Bound::Bytes(&[]),
        Bound::Float8(0.1),
        Bound::Float8(-0.0),
        Bound::Float8(1e300),
        Bound::Float8(f64::NAN),
        Bound::Float8(f64::NEG_INFINITY),
        Bound::Float4(0.1),
        Bound::Float4(f32::INFINITY),
    ])
    .unwrap();
    assert_eq!(
        line,
        "\\\\x00ab5c\t\\\\x\t0.1\t-0.0\t1e300\tNaN\t-Infinity\t0.1\tInfinity\n"
    );
    // Timestamps and dates arrive bound to PostgreSQL's epoch (2000-01-01).
    let ts = |unix_us: i64| Bound::Timestamp(unix_us - 946_684_800_000_000);
    let date = |unix_days: i32| Bound::Date(unix_days - 10_957);
    let line = copy_line(&[
        ts(0),
        ts(-1),
        ts(1_700_000_000_123_456),
        date(0),
        date(-719_162),
        Bound::Time(0),
        Bound::Time(86_400_000_000),
    ])
    .unwrap();
    assert_eq!(
        line,
        "1970-01-01T00:00:00.000000Z\t1969-12-31T23:59:59.999999Z\t2023-11-14T22:13:20.123456Z\t\
         1970-01-01\t0001-01-01\t00:00:00.000000\t24:00:00.000000\n"
    );
}

#[test]
fn years_outside_1_to_9999_and_times_outside_the_day_are_not_copied() {
    let date = |unix_days: i32| Bound::Date(unix_days - 10_957);
    assert_eq!(copy_line(&[date(-719_163)]), Err(NotCopyable)); // 0000-12-31
    assert_eq!(copy_line(&[date(2_932_897)]), Err(NotCopyable)); // 10000-01-01
    assert!(copy_line(&[date(2_932_896)]).is_ok()); // 9999-12-31
    let ts = bind(
        &Value::Timestamp(253_402_300_800_000_000),
        ColumnKind::Timestamp,
    )
    .unwrap();
    assert_eq!(copy_line(&[ts]), Err(NotCopyable));
    assert_eq!(copy_line(&[Bound::Time(-1)]), Err(NotCopyable));
    assert_eq!(copy_line(&[Bound::Time(86_400_000_001)]), Err(NotCopyable));
}

#[test]
fn only_runs_of_inserts_are_copied() {
    let inserts = [put(1, "t", 1, &["id"]), put(2, "t", 2, &["id"])];
    let refs: Vec<&LogEntry> = inserts.iter().collect();
    assert!(eligible(&refs));
    assert!(!eligible(&refs[..1]), "one row: the upsert is cheaper");
    let mut read = put(3, "t", 3, &["id"]);
    read.change.op = Op::Read;
    let mut update = put(4, "t", 4, &["id"]);
    update.change.op = Op::Update;
    assert!(eligible(&[&inserts[0], &read]));
    assert!(!eligible(&[&inserts[0], &update]));
    let patched = patch(5, "t", 5, &["id"]);
    assert!(!eligible(&[&inserts[0], &patched]));
}

#[test]
fn a_failed_copy_skips_the_next_runs_of_its_table_doubling() {
    let mut b = Backoff::default();
    assert!(b.try_now("t"));
    b.failed("t");
    assert!(!b.try_now("t"));
    assert!(b.try_now("u"), "other tables are not affected");
    assert!(b.try_now("t"));
    b.failed("t");
    assert_eq!(
        [b.try_now("t"), b.try_now("t"), b.try_now("t")],
        [false, false, true]
    );
    b.succeeded("t");
    assert!(b.try_now("t"));
    for _ in 0..20 {
        b.failed("t");
    }
    let skipped = std::iter::repeat_with(|| b.try_now("t"))
        .take_while(|ok| !ok)
        .count();
    assert_eq!(skipped, 1024);
}

#[test]
fn copy_names_its_columns_quoted() {
    assert_eq!(
        copy_sql("my \"t\"", &["id".into(), "a b".into()]),
        "COPY \"my \"\"t\"\"\" (\"id\", \"a b\") FROM STDIN"
    );
}
