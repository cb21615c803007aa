//! Direct-copy writers (`Sink::copy_writer`): a chunk of `COPY` text written in a transaction
//! of the writer's own, committed with its position, and never twice.

use std::sync::Arc;

use tidesync_core::{CopyChunk, Key, Position, Sink, TableSchema, Value};

use super::*;

fn chunk(number: u64, ids: std::ops::RangeInclusive<i64>) -> Arc<CopyChunk> {
    let mut data = Vec::new();
    for id in ids.clone() {
        data.extend_from_slice(format!("{id}\tsku-{id}\t\\N\n").as_bytes());
    }
    Arc::new(CopyChunk {
        number,
        stream: "items".into(),
        columns: vec!["id".into(), "sku".into(), "price".into()],
        data,
        binary: false,
        rows: ids.count() as u64,
        table_rows: None,
        position: Position::Snapshot {
            stream: Box::new(Position::Lsn(100)),
            table: "items".into(),
            after: Some(Key(vec![Value::Text(number.to_string())])),
        },
    })
}

fn count(pg: &Postgres) -> String {
    pg.psql(DB, "SELECT count(*) FROM items").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_write_at_once_and_commit_in_order_with_the_position() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    let mut a = sink.copy_writer().unwrap();
    let mut b = sink.copy_writer().unwrap();
    a.write(chunk(1, 1..=100)).await.unwrap();
    b.write(chunk(2, 101..=250)).await.unwrap();
    // Nothing is visible before a commit.
    assert_eq!(count(&pg).trim(), "0");
    assert_eq!(sink.copied().await.unwrap(), None);
    a.commit().await.unwrap();
    assert_eq!(count(&pg).trim(), "100");
    assert_eq!(
        sink.copied().await.unwrap(),
        Some(chunk(1, 1..=1).position.clone())
    );
    b.commit().await.unwrap();
    assert_eq!(count(&pg).trim(), "250");
    assert_eq!(
        sink.copied().await.unwrap(),
        Some(chunk(2, 1..=1).position.clone())
    );
    sink.clear_copied().await.unwrap();
    assert_eq!(sink.copied().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_is_never_committed_leaves_nothing() {
    let pg = server();
    let (sink, _) = open_sink(&pg, items_schema(), true).await;
    let mut a = sink.copy_writer().unwrap();
    a.write(chunk(1, 1..=100)).await.unwrap();
    drop(a);
    // The dropped connection's transaction rolls back (the server notices the close).
    for _ in 0..100 {
        if pg
            .psql(
                DB,
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
            )
            .unwrap()
            .trim()
            == "0"
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(count(&pg).trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_after_a_lost_connection_writes_the_chunk_again_once() {
    let pg = server();
    let (mut sink, _) = open_sink(&pg, items_schema(), true).await;
    let mut a = sink.copy_writer().unwrap();
    a.write(chunk(1, 1..=100)).await.unwrap();
    // The writer's connection dies with its open transaction.
    pg.psql(
        DB,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
    )
    .unwrap();
    let first = a.commit().await.unwrap_err();
    assert!(first.is_transient(), "{first}");
    // Asked again, it finds the chunk not committed, writes it again and commits.
    a.commit().await.unwrap();
    assert_eq!(count(&pg).trim(), "100");
    assert_eq!(
        sink.copied().await.unwrap(),
        Some(chunk(1, 1..=1).position.clone())
    );
    // A further commit has nothing left to do.
    a.commit().await.unwrap();
    assert_eq!(count(&pg).trim(), "100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_with_an_existing_row_fails_definitely_and_leaves_nothing() {
    let pg = server();
    let (sink, _) = open_sink(&pg, items_schema(), true).await;
    pg.psql(DB, "INSERT INTO items VALUES (50, 'there', NULL)")
        .unwrap();
    let mut a = sink.copy_writer().unwrap();
    let err = a.write(chunk(1, 1..=100)).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("items"), "{err}");
    assert_eq!(count(&pg).trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_chunk_goes_in_where_the_types_are_the_same() {
    let pg = server();
    pg.psql(
        DB,
        "CREATE TABLE same (id bigint PRIMARY KEY, note text); \
         CREATE TABLE other (id integer PRIMARY KEY, note text);",
    )
    .unwrap();
    let schema = |name: &str| TableSchema {
        name: name.into(),
        columns: vec![column("id", "bigint", false), column("note", "text", true)],
        key: vec!["id".into()],
        dialect: tidesync_core::Dialect::Postgres,
    };
    let (mut sink, _) = open_sink(&pg, vec![schema("same"), schema("other")], false).await;
    let binary = sink
        .copy_binary(&[schema("same"), schema("other")])
        .await
        .unwrap();
    // `other.id` is an integer, not the source's bigint: text only there.
    assert_eq!(binary, ["same".to_owned()].into_iter().collect());
    // Two rows in binary COPY form: (1, 'a\tb'), (2, NULL).
    let mut data = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
    for (id, note) in [(1i64, Some(&b"a\tb"[..])), (2, None)] {
        data.extend_from_slice(&2i16.to_be_bytes());
        data.extend_from_slice(&8i32.to_be_bytes());
        data.extend_from_slice(&id.to_be_bytes());
        match note {
            Some(n) => {
                data.extend_from_slice(&(n.len() as i32).to_be_bytes());
                data.extend_from_slice(n);
            }
            None => data.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    let mut writer = sink.copy_writer().unwrap();
    writer
        .write(Arc::new(CopyChunk {
            number: 1,
            stream: "same".into(),
            columns: vec!["id".into(), "note".into()],
            data,
            binary: true,
            rows: 2,
            table_rows: None,
            position: Position::Lsn(7),
        }))
        .await
        .unwrap();
    writer.commit().await.unwrap();
    assert_eq!(
        pg.psql(
            DB,
            "SELECT id, coalesce(note, 'null') FROM same ORDER BY id"
        )
        .unwrap(),
        "1|a\tb\n2|null"
    );
}
