//! The replication connection (`pg::replication`) against a real PostgreSQL.

use std::time::{Duration, Instant};

use tidesync_capture::pg::pgoutput::{Lsn, OldTuple, PgOutputMessage, Relation, Tuple, TupleValue};
use tidesync_capture::pg::replication::{
    PgReplication, PgReplicationStream, ReplicationError, StreamSpec, WalMessage,
};
use tidesync_capture::pg::text::text_to_value;
use tidesync_core::Value;
use tidesync_testkit::Postgres;

const DB: &str = "app";
/// How long to wait for the stream or the server before failing.
const DEADLINE: Duration = Duration::from_secs(30);

/// A server with database `app`, table `item` and publication `pub_items` for it.
fn server_with_table() -> Postgres {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg.psql(
        DB,
        "CREATE TABLE item (id int PRIMARY KEY, name text, price numeric(10,2), \
             seen timestamptz, data bytea); \
         CREATE PUBLICATION pub_items FOR TABLE item;",
    )
    .unwrap();
    pg
}

async fn next(stream: &mut PgReplicationStream) -> WalMessage {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("no message within the deadline")
        .expect("stream error")
}

fn text(value: &TupleValue) -> &str {
    match value {
        TupleValue::Text(bytes) => std::str::from_utf8(bytes).unwrap(),
        other => panic!("expected a text value, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_transaction_and_confirms_its_end_lsn() {
    let pg = server_with_table();
    let spec = StreamSpec::new("tidesync_test", "pub_items");
    let mut session = PgReplication::connect(&pg.url(DB), spec).await.unwrap();
    let identity = session.identify_system().await.unwrap();
    assert_eq!(identity.dbname.as_deref(), Some(DB));
    let created = session.create_slot_exporting_snapshot().await.unwrap();
    assert!(!created.snapshot_name.is_empty());
    assert!(created.consistent_point >= identity.xlogpos);
    // A new slot's confirmed_flush_lsn is its consistent point: starting there is what
    // `start_lsn: None` does.
    let confirmed = pg
        .psql(
            DB,
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'tidesync_test'",
        )
        .unwrap();
    assert_eq!(confirmed.parse::<Lsn>().unwrap(), created.consistent_point);

    let mut stream = session.start().await.unwrap();
    pg.psql(
        DB,
        "BEGIN; \
         INSERT INTO item VALUES (1, 'apple', 1.50, '2024-01-02 03:04:05+02', '\\x0aff'); \
         UPDATE item SET name = 'pear', price = 2.25 WHERE id = 1; \
         DELETE FROM item WHERE id = 1; \
         COMMIT;",
    )
    .unwrap();

    let begin = next(&mut stream).await;
    let PgOutputMessage::Begin { final_lsn, .. } = begin.message else {
        panic!("expected Begin, got {begin:?}");
    };
    assert!(final_lsn > created.consistent_point);

    let relation = next(&mut stream).await;
    let PgOutputMessage::Relation(Relation {
        oid, name, columns, ..
    }) = relation.message
    else {
        panic!("expected Relation, got {relation:?}");
    };
    assert_eq!(name, "item");
    let names: Vec<_> = columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "price", "seen", "data"]);

    let insert = next(&mut stream).await;
    let PgOutputMessage::Insert {
        rel,
        new: Tuple(new),
    } = insert.message
    else {
        panic!("expected Insert, got {insert:?}");
    };
    assert_eq!(rel, oid);
    let texts: Vec<_> = new.iter().map(text).collect();
    // TimeZone=UTC, DateStyle=ISO and bytea_output=hex come from the session options.
    assert_eq!(
        texts,
        ["1", "apple", "1.50", "2024-01-02 01:04:05+00", "\\x0aff"]
    );
    let insert_start = insert.wal_start.expect("an Insert carries its LSN");

    let update = next(&mut stream).await;
    let PgOutputMessage::Update {
        rel,
        old: None,
        new: Tuple(new),
    } = update.message
    else {
        panic!("expected Update without old tuple, got {update:?}");
    };
    assert_eq!(rel, oid);
    assert!(update.wal_start.unwrap() > insert_start);
    let values: Vec<Value> = new
        .iter()
        .zip(&columns)
        .map(|(value, column)| text_to_value(column.type_oid, None, text(value)).unwrap())
        .collect();
    assert!(matches!(values[0], Value::Int(1)), "{values:?}");
    assert!(
        matches!(&values[1], Value::Text(s) if s == "pear"),
        "{values:?}"
    );
    assert!(
        matches!(&values[2], Value::Decimal(d) if d.to_string() == "2.25"),
        "{values:?}"
    );
    assert!(
        matches!(values[3], Value::Timestamp(1_704_157_445_000_000)),
        "{values:?}"
    );
    assert!(
        matches!(&values[4], Value::Bytes(b) if b == &[0x0a, 0xff]),
        "{values:?}"
    );

    let delete = next(&mut stream).await;
    let PgOutputMessage::Delete {
        rel,
        old: OldTuple::Key(Tuple(key)),
    } = delete.message
    else {
        panic!("expected Delete with the key, got {delete:?}");
    };
    assert_eq!(rel, oid);
    assert_eq!(text(&key[0]), "1");
    assert!(key[1..].iter().all(|v| *v == TupleValue::Null));

    let commit = next(&mut stream).await;
    let PgOutputMessage::Commit {
        commit_lsn,
        end_lsn,
        ..
    } = commit.message
    else {
        panic!("expected Commit, got {commit:?}");
    };
    assert_eq!(commit_lsn, final_lsn);
    assert_eq!(commit.wal_start, Some(end_lsn));

    stream.confirm(end_lsn);
    let started = Instant::now();
    loop {
        let confirmed = pg
            .psql(
                DB,
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'tidesync_test'",
            )
            .unwrap();
        if confirmed.parse::<Lsn>().unwrap() >= end_lsn {
            assert_eq!(confirmed.parse::<Lsn>().unwrap(), end_lsn);
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "confirmed_flush_lsn stayed at {confirmed}, expected {end_lsn}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stream.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_a_definite_error_naming_the_setting() {
    let pg = Postgres::builder().setting("wal_level", "replica").start();
    let error = PgReplication::connect(&pg.url("postgres"), StreamSpec::new("s", "p"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ReplicationError::WalLevelNotLogical { actual } if actual == "replica"),
        "{error:?}"
    );
    assert!(error.is_definite());
    assert_eq!(
        error.to_string(),
        "wal_level is replica; set wal_level = logical in postgresql.conf and restart PostgreSQL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_slot_is_a_definite_error() {
    let pg = server_with_table();
    pg.psql(
        DB,
        "SELECT pg_create_logical_replication_slot('taken', 'pgoutput')",
    )
    .unwrap();
    let mut session = PgReplication::connect(&pg.url(DB), StreamSpec::new("taken", "pub_items"))
        .await
        .unwrap();
    let error = session.create_slot_exporting_snapshot().await.unwrap_err();
    assert!(
        matches!(error, ReplicationError::SlotExists { .. }),
        "{error:?}"
    );
    assert!(error.is_definite());
    // The session stays usable after a server error.
    session.drop_slot("taken").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_transient() {
    // Port 1 (tcpmux) has no listener on loopback, so the connection is refused at once;
    // reusing the port of a stopped server could race with another test's server taking it.
    let url = "postgres://postgres@127.0.0.1:1/postgres";
    let error = PgReplication::connect(url, StreamSpec::new("s", "p"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ReplicationError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_a_definite_error() {
    let pg = Postgres::builder().password("right").start();
    let url = pg.url("postgres").replace(":right@", ":wrong@");
    let error = PgReplication::connect(&url, StreamSpec::new("s", "p"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ReplicationError::Authentication { .. }),
        "{error:?}"
    );
    assert!(error.is_definite());
    // And the right one gets through SCRAM.
    PgReplication::connect(&pg.url("postgres"), StreamSpec::new("s", "p"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_on_a_missing_slot_is_a_definite_error() {
    let pg = server_with_table();
    let session = PgReplication::connect(&pg.url(DB), StreamSpec::new("absent", "pub_items"))
        .await
        .unwrap();
    let error = session.start().await.unwrap_err();
    assert!(
        matches!(&error, ReplicationError::SlotMissing { slot, .. } if slot == "absent"),
        "{error:?}"
    );
    assert!(error.is_definite());
}
