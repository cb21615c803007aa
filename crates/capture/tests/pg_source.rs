//! The PostgreSQL log source (`pg::source`) against a real PostgreSQL, without the runtime:
//! the initial copy in key order under the slot's snapshot, the hand-off to the stream, the
//! watermark copy after a restart, unchanged TOASTed values and misconfiguration errors.

use std::time::Duration;

use tidesync_capture::pg::source::{PgLogOptions, PgLogSource};
use tidesync_core::{Captured, Op, Position, Source, Value};
use tidesync_testkit::Postgres;

const DB: &str = "app";

fn server(rows: i64) -> Postgres {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg.psql(
        DB,
        &format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text, note text); \
             INSERT INTO items SELECT g, 'item ' || g, NULL FROM generate_series(1, {rows}) g;"
        ),
    )
    .unwrap();
    pg
}

fn ids(captured: &Captured) -> Vec<i64> {
    captured
        .changes
        .iter()
        .map(|c| match c.key.0.first() {
            Some(Value::Int(i)) => *i,
            other => panic!("unexpected key {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_in_key_order_then_streams_what_came_after() {
    let pg = server(2_500);
    let mut opts = PgLogOptions::new(pg.url(DB), "p1", vec!["items".into()]);
    opts.chunk_rows = 1_000;
    let mut source = PgLogSource::new(opts);
    let opened = source.open(None).await.unwrap();
    assert!(matches!(opened.start, Some(Position::Snapshot { .. })));
    // Committed after the slot's snapshot: must come through the stream, not the copy.
    pg.psql(DB, "INSERT INTO items VALUES (9001, 'late', NULL); UPDATE items SET name = 'changed' WHERE id = 1;")
        .unwrap();
    let mut copied = Vec::new();
    loop {
        let batch = source
            .poll(700, Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        assert!(batch.changes.iter().all(|c| c.op == Op::Read));
        copied.extend(ids(&batch));
        source.ack(batch.position.clone()).await.unwrap();
        if matches!(batch.position, Position::Lsn(_)) {
            break;
        }
    }
    assert_eq!(copied, (1..=2_500).collect::<Vec<_>>());
    let mut streamed = Vec::new();
    for _ in 0..50 {
        if let Some(batch) = source.poll(100, Duration::from_millis(200)).await.unwrap() {
            streamed.extend(batch.changes.iter().map(|c| (c.op, ids_of(c))));
            source.ack(batch.position).await.unwrap();
        }
        if streamed.len() >= 2 {
            break;
        }
    }
    assert_eq!(streamed, vec![(Op::Insert, 9001), (Op::Update, 1)]);
}

/// The ids of a direct-copy chunk (first column of each `COPY` text line).
fn chunk_ids(chunk: &tidesync_core::CopyChunk) -> Vec<i64> {
    String::from_utf8(chunk.data.clone())
        .unwrap()
        .lines()
        .map(|line| line.split('\t').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_copy_hands_out_chunks_and_poll_takes_over_after_an_abandon() {
    let pg = server(2_500);
    pg.psql(
        DB,
        "CREATE TABLE other (k text PRIMARY KEY, v text); \
         INSERT INTO other VALUES ('a\tb', 'x'), ('c', NULL);",
    )
    .unwrap();
    let mut opts = PgLogOptions::new(pg.url(DB), "p1", vec!["items".into(), "other".into()]);
    opts.chunk_rows = 1_000;
    let mut source = PgLogSource::new(opts);
    source.open(None).await.unwrap();
    // After the snapshot: the stream's, not the copy's.
    pg.psql(DB, "INSERT INTO items VALUES (9001, 'late', NULL)")
        .unwrap();
    let first = source.copy_chunk(usize::MAX).await.unwrap().unwrap();
    assert_eq!(first.stream, "items");
    assert_eq!(first.columns, ["id", "name", "note"]);
    assert_eq!(
        (first.rows, chunk_ids(&first)),
        (1_000, (1..=1_000).collect())
    );
    assert_eq!(
        first.position,
        Position::Snapshot {
            stream: Box::new(match &first.position {
                Position::Snapshot { stream, .. } => (**stream).clone(),
                other => panic!("{other:?}"),
            }),
            table: "items".into(),
            after: Some(tidesync_core::Key(vec![Value::Text("1000".into())])),
        }
    );
    let second = source.copy_chunk(usize::MAX).await.unwrap().unwrap();
    assert_eq!(chunk_ids(&second), (1_001..=2_000).collect::<Vec<_>>());
    let third = source.copy_chunk(usize::MAX).await.unwrap().unwrap();
    assert_eq!(chunk_ids(&third), (2_001..=2_500).collect::<Vec<_>>());
    // The table is done: the position moves on to the next one.
    assert!(
        matches!(&third.position, Position::Snapshot { table, after: None, .. } if table == "other")
    );
    // The sink refused the second chunk (the third was read meanwhile): poll re-reads from
    // the second on, under the same snapshot, then copies `other`, then streams.
    source.copy_abandon(&second);
    let mut copied = Vec::new();
    let mut others = Vec::new();
    loop {
        let batch = source
            .poll(700, Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        for c in &batch.changes {
            assert_eq!(c.op, Op::Read);
            match c.stream.as_str() {
                "items" => copied.push(ids_of(c)),
                _ => others.push(c.key.to_string()),
            }
        }
        source.ack(batch.position.clone()).await.unwrap();
        if matches!(batch.position, Position::Lsn(_)) {
            break;
        }
    }
    assert_eq!(copied, (1_001..=2_500).collect::<Vec<_>>());
    assert_eq!(others.len(), 2);
    assert!(source.copy_chunk(usize::MAX).await.unwrap().is_none());
    let mut streamed = Vec::new();
    for _ in 0..50 {
        if let Some(batch) = source.poll(100, Duration::from_millis(200)).await.unwrap() {
            streamed.extend(batch.changes.iter().map(|c| (c.op, ids_of(c))));
            source.ack(batch.position).await.unwrap();
        }
        if !streamed.is_empty() {
            break;
        }
    }
    assert_eq!(streamed, vec![(Op::Insert, 9001)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_copy_takes_keys_with_tabs_and_backslashes_from_the_copy_text() {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg.psql(
        DB,
        "CREATE TABLE other (k text PRIMARY KEY, v text); \
         INSERT INTO other SELECT 'k' || g, 'v' FROM generate_series(1, 5) g; \
         INSERT INTO other VALUES (E'k3\\tz\\\\', 'tab');",
    )
    .unwrap();
    let mut opts = PgLogOptions::new(pg.url(DB), "p1", vec!["other".into()]);
    opts.chunk_rows = 4;
    let mut source = PgLogSource::new(opts);
    source.open(None).await.unwrap();
    // k1, k2, k3, then 'k3<tab>z\' (it extends k3, so it sorts right after it).
    let first = source.copy_chunk(usize::MAX).await.unwrap().unwrap();
    assert_eq!(first.rows, 4);
    match &first.position {
        Position::Snapshot {
            after: Some(key), ..
        } => {
            assert_eq!(key.0, vec![Value::Text("k3\tz\\".into())]);
        }
        other => panic!("{other:?}"),
    }
    let second = source.copy_chunk(usize::MAX).await.unwrap().unwrap();
    assert_eq!(second.rows, 2);
    // Abandoning the second rewinds to after the tab key: poll reads k4 and k5 after it.
    source.copy_abandon(&second);
    let batch = source
        .poll(100, Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    let keys: Vec<String> = batch
        .changes
        .iter()
        .map(|c| match &c.key.0[0] {
            Value::Text(t) => t.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(keys, ["k4", "k5"]);
}

fn ids_of(change: &tidesync_core::Change) -> i64 {
    match change.key.0.first() {
        Some(Value::Int(i)) => *i,
        other => panic!("unexpected key {other:?}"),
    }
}

async fn open_error(url: String, tables: &[&str]) -> String {
    let opts = PgLogOptions::new(url, "p1", tables.iter().map(|t| t.to_string()).collect());
    let error = PgLogSource::new(opts).open(None).await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    error.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfiguration_gets_an_error_that_says_what_to_change() {
    let pg = server(10);
    pg.psql(
        DB,
        "CREATE TABLE nokey (a int, b text); CREATE TABLE fullkey (a int, b text); \
         ALTER TABLE fullkey REPLICA IDENTITY FULL; \
         CREATE ROLE plain LOGIN; ALTER TABLE items OWNER TO plain;",
    )
    .unwrap();
    let url = pg.url(DB);

    // The replication session has no TLS: a URL asking for it is refused up front.
    let e = open_error(format!("{url}?sslmode=require"), &["items"]).await;
    assert!(e.contains("only sslmode=disable is accepted"), "{e}");

    let e = open_error(url.clone(), &["missing"]).await;
    assert!(e.contains("table public.missing does not exist"), "{e}");

    let e = open_error(url.clone(), &["nokey"]).await;
    assert!(
        e.contains("has no primary key") && e.contains("REPLICA IDENTITY FULL"),
        "{e}"
    );

    // REPLICA IDENTITY FULL without a primary key: every column forms the key.
    let mut source = PgLogSource::new(PgLogOptions::new(url.clone(), "p2", vec!["fullkey".into()]));
    let opened = source.open(None).await.unwrap();
    assert_eq!(opened.schemas[0].key, vec!["a".to_owned(), "b".to_owned()]);
    source.remove().await.unwrap();

    // A user without the REPLICATION attribute.
    let plain = url.replacen("postgres@", "plain@", 1);
    assert_ne!(plain, url, "the URL names the user postgres");
    let e = open_error(plain, &["items"]).await;
    assert!(e.contains("ALTER ROLE \"plain\" REPLICATION"), "{e}");

    // Every slot taken.
    let full = Postgres::builder()
        .setting("max_replication_slots", "1")
        .start();
    full.create_database(DB).unwrap();
    full.psql(
        DB,
        "CREATE TABLE items (id bigint PRIMARY KEY); \
         SELECT pg_create_logical_replication_slot('other', 'pgoutput');",
    )
    .unwrap();
    let e = open_error(full.url(DB), &["items"]).await;
    assert!(e.contains("raise max_replication_slots"), "{e}");

    let replica = Postgres::builder().setting("wal_level", "replica").start();
    replica.create_database(DB).unwrap();
    replica
        .psql(DB, "CREATE TABLE items (id bigint PRIMARY KEY)")
        .unwrap();
    let e = open_error(replica.url(DB), &["items"]).await;
    assert!(e.contains("set wal_level = logical"), "{e}");

    let locked = Postgres::builder().password("right").start();
    let e = open_error(
        locked.url("postgres").replace(":right@", ":wrong@"),
        &["items"],
    )
    .await;
    assert!(
        e.contains("password authentication failed") && e.contains("check the user and password"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_drops_the_slot_and_the_publication_it_created() {
    let pg = server(10);
    let mut source = PgLogSource::new(PgLogOptions::new(pg.url(DB), "p3", vec!["items".into()]));
    source.open(None).await.unwrap();
    let count = |sql: &str| pg.psql(DB, sql).unwrap().trim().to_owned();
    assert_eq!(
        count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'tidesync_p3'"),
        "1"
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_publication WHERE pubname = 'tidesync_p3'"),
        "1"
    );
    let done = source.remove().await.unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(count("SELECT count(*) FROM pg_replication_slots"), "0");
    assert_eq!(count("SELECT count(*) FROM pg_publication"), "0");
    // A publication named in config is the user's: it stays.
    pg.psql(DB, "CREATE PUBLICATION mine FOR TABLE items")
        .unwrap();
    let mut opts = PgLogOptions::new(pg.url(DB), "p4", vec!["items".into()]);
    opts.publication = Some("mine".into());
    let mut source = PgLogSource::new(opts);
    source.open(None).await.unwrap();
    source.remove().await.unwrap();
    assert_eq!(
        count("SELECT count(*) FROM pg_publication WHERE pubname = 'mine'"),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_pipeline_releases_wal_other_tables_write() {
    let pg = server(10);
    pg.psql(DB, "CREATE TABLE other (id bigint PRIMARY KEY, body text)")
        .unwrap();
    let mut source = PgLogSource::new(PgLogOptions::new(pg.url(DB), "p5", vec!["items".into()]));
    source.open(None).await.unwrap();
    // Copy and hand-off.
    while let Some(batch) = source.poll(1000, Duration::from_millis(200)).await.unwrap() {
        let done = matches!(batch.position, Position::Lsn(_));
        source.ack(batch.position).await.unwrap();
        if done {
            break;
        }
    }
    pg.psql(
        DB,
        "INSERT INTO other SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g",
    )
    .unwrap();
    let written: String = pg.psql(DB, "SELECT pg_current_wal_lsn()").unwrap();
    let written = written
        .trim()
        .parse::<tidesync_capture::pg::pgoutput::Lsn>()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(batch) = source.poll(1000, Duration::from_millis(200)).await.unwrap() {
            assert!(batch.changes.is_empty(), "only other tables changed");
            if let Position::Lsn(lsn) = batch.position
                && lsn >= written.0
            {
                source.ack(batch.position).await.unwrap();
                break;
            }
            source.ack(batch.position).await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the position never moved past the other table's writes at {written}"
        );
    }
    let confirmed = || {
        pg.psql(
            DB,
            &format!(
                "SELECT confirmed_flush_lsn >= '{written}' FROM pg_replication_slots WHERE slot_name = 'tidesync_p5'"
            ),
        )
        .unwrap()
        .trim()
        .to_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while confirmed() != "t" {
        // Keep the session reading so its status updates go out.
        let _ = source.poll(10, Duration::from_millis(100)).await.unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was not confirmed past {written}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_copy_is_binary_where_allowed_and_keys_still_read() {
    let pg = server(2_500);
    pg.psql(
        DB,
        "CREATE TABLE other (k uuid PRIMARY KEY, v numeric); \
         INSERT INTO other SELECT md5(g::text)::uuid, g FROM generate_series(1, 1500) g;",
    )
    .unwrap();
    let mut opts = PgLogOptions::new(pg.url(DB), "p1", vec!["items".into(), "other".into()]);
    opts.chunk_rows = 1_000;
    let mut source = PgLogSource::new(opts);
    source.open(None).await.unwrap();
    source.allow_binary_copy(["items".to_owned(), "other".to_owned()].into());
    let first = source.copy_chunk(usize::MAX).await.unwrap().unwrap();
    assert!(first.binary);
    assert!(first.data.starts_with(b"PGCOPY\n\xff\r\n\0"));
    assert!(first.data.ends_with(&[0xff, 0xff]));
    assert_eq!(first.rows, 1_000);
    assert!(matches!(&first.position,
        Position::Snapshot { after: Some(key), .. } if key.0 == [Value::Text("1000".into())]));
    let mut rows = first.rows;
    let mut last = first;
    while let Some(chunk) = source.copy_chunk(usize::MAX).await.unwrap() {
        if chunk.stream != "items" {
            // uuid keys are read from the binary form as PostgreSQL prints them.
            assert!(chunk.binary);
            assert_eq!(chunk.rows, 1_000);
            let thousandth = pg
                .psql(DB, "SELECT k FROM other ORDER BY k OFFSET 999 LIMIT 1")
                .unwrap();
            assert!(matches!(&chunk.position,
                Position::Snapshot { after: Some(key), .. }
                    if key.0 == [Value::Text(thousandth.trim().to_owned())]));
            break;
        }
        rows += chunk.rows;
        last = chunk;
    }
    assert_eq!(rows, 2_500);
    assert!(matches!(&last.position,
        Position::Snapshot { table, after: None, .. } if table == "other"));
    // Abandoning inside `items` rewinds to a key read from the binary form.
    source.copy_abandon(&last);
    let batch = source
        .poll(100, Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids_of(&batch.changes[0]), 2_001);
}
