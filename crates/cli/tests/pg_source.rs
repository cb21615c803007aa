#![allow(clippy::unwrap_used)]

//! PostgreSQL log capture through the real binary and a real PostgreSQL: the initial copy,
//! then a mixed stream (TOASTed values, multi-statement transactions, key updates, TRUNCATE),
//! PostgreSQL and SQLite targets, kill -9 during the copy and during the stream.

use std::path::Path;
use std::time::Duration;

use tidesync_testkit::Postgres;

use crate::util::*;

const SCHEMA: &str = "CREATE TABLE items (id bigint PRIMARY KEY, sku text, name text, \
    price numeric(12,2), qty integer, updated_at timestamptz, note text); \
    ALTER TABLE items ALTER COLUMN note SET STORAGE EXTERNAL;";

/// `n` rows; every tenth has a 6 KB note stored out of line (TOASTed).
fn seed(pg: &Postgres, db: &str, n: i64) {
    pg.psql(
        db,
        &format!(
            "INSERT INTO items SELECT g, 'SKU-' || g, 'item ' || g, (g % 1000) + 0.25, g % 7, \
             '2026-11-23 10:00:00+00'::timestamptz + g * interval '1 second', \
             CASE WHEN g % 10 = 0 THEN repeat(md5(g::text), 200) END \
             FROM generate_series(1, {n}) g"
        ),
    )
    .unwrap();
}

const COMPARE: &str = "SELECT id, sku, name, price, qty, \
    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), md5(note) \
    FROM items ORDER BY id";

fn pg_rows(pg: &Postgres, db: &str) -> Option<String> {
    pg.psql(db, COMPARE).ok()
}

/// A mixed stream: updates leaving the TOASTed note alone (PostgreSQL then does not send
/// it), updates of the note, inserts, deletes, a key update, all in multi-statement
/// transactions.
fn stream(pg: &Postgres, db: &str, round: i64) {
    let base = 1_000_000 + round * 1000;
    pg.psql(
        db,
        &format!(
            "BEGIN; \
             UPDATE items SET qty = qty + 1, updated_at = updated_at + interval '1 hour' WHERE id % 97 = {m}; \
             UPDATE items SET note = repeat(md5((id + {round})::text), 190) WHERE id % 89 = {m}; \
             INSERT INTO items SELECT {base} + g, 'NEW-' || g, NULL, 1.5, g, now(), \
               CASE WHEN g % 2 = 0 THEN repeat('x', 5000) END FROM generate_series(1, 50) g; \
             DELETE FROM items WHERE id % 101 = {m}; \
             COMMIT; \
             UPDATE items SET price = price * 2 WHERE id BETWEEN {lo} AND {lo} + 20; \
             UPDATE items SET id = id + 5000000 WHERE id = {lo} + 30;",
            m = round % 89,
            lo = 100 + round * 40,
        ),
    )
    .unwrap();
}

fn wait_equal(pg: &Postgres, what: &str, log: &Path, target: impl Fn() -> Option<String>) {
    let mut last = (String::new(), String::new());
    let limit = Duration::from_secs(90);
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let (Some(src), Some(dst)) = (pg_rows(pg, "erp"), target()) {
            if src == dst {
                return;
            }
            last = (src, dst);
        }
        if std::time::Instant::now() > deadline {
            let (src, dst) = last;
            let diff: Vec<_> = src
                .lines()
                .zip(dst.lines())
                .filter(|(a, b)| a != b)
                .take(5)
                .collect();
            panic!(
                "{what}: target not equal to the source after {limit:?}: {} vs {} rows, first differences {diff:#?}\ntidesync's log:\n{}",
                src.lines().count(),
                dst.lines().count(),
                (1..=4)
                    .map(
                        |i| std::fs::read_to_string(log.with_extension(format!("{i}")))
                            .unwrap_or_default()
                    )
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_alive(child: &mut std::process::Child, log: &Path) {
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "tidesync exited early with {status}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

#[test]
fn postgres_to_postgres_copies_then_streams_and_survives_kill_9() {
    let pg = Postgres::start();
    pg.create_database("erp").unwrap();
    pg.create_database("shop").unwrap();
    pg.psql("erp", SCHEMA).unwrap();
    seed(&pg, "erp", 30_000);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (source, target) = (pg.url("erp"), pg.url("shop"));
    let env = [
        ("SOURCE_URL", Path::new(&source)),
        ("TARGET_URL", Path::new(&target)),
        ("STATE_DIR", state.as_path()),
    ];
    let config = example("postgres-to-postgres.toml");
    let args = ["run", config.to_str().unwrap()];
    let log = dir.path().join("run.log");
    let count = || {
        pg.psql("shop", "SELECT count(*) FROM items")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    };

    // Killed in the middle of the initial copy; the restart continues it between
    // watermarks while the stream runs.
    let mut child = spawn(&args, &env, &log.with_extension("1"));
    wait_for("part of the copy", Duration::from_secs(60), || {
        check_alive(&mut child, &log.with_extension("1"));
        count().filter(|n| *n >= 5_000)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    stream(&pg, "erp", 0);

    let mut child = spawn(&args, &env, &log.with_extension("2"));
    wait_equal(&pg, "after the copy", &log, || pg_rows(&pg, "shop"));
    for round in 1..=5 {
        check_alive(&mut child, &log);
        stream(&pg, "erp", round);
        if round == 3 {
            child.kill().unwrap();
            child.wait().unwrap();
            stream(&pg, "erp", 100);
            child = spawn(&args, &env, &log.with_extension("3"));
        }
    }
    pg.psql("erp", "BEGIN; TRUNCATE items; COMMIT;").unwrap();
    seed(&pg, "erp", 500);
    let before_last = pg.psql("erp", "SELECT pg_current_wal_lsn()").unwrap();
    stream(&pg, "erp", 7);
    wait_equal(&pg, "after the stream", &log, || pg_rows(&pg, "shop"));
    // The slot is confirmed past the last transaction once the store has it, so the server
    // can recycle the WAL before it.
    wait_for(
        "the slot's confirmed position",
        Duration::from_secs(30),
        || {
            let sql = format!(
                "SELECT confirmed_flush_lsn > '{}' FROM pg_replication_slots WHERE slot_name = 'tidesync_items'",
                before_last.trim()
            );
            (pg.psql("erp", &sql).ok()?.trim() == "t").then_some(())
        },
    );
    terminate(&child);
    child.wait().unwrap();

    let out = run(&["drop", config.to_str().unwrap(), "items"], &env);
    assert!(out.status.success(), "{out:?}");
    let slots = pg
        .psql("erp", "SELECT count(*) FROM pg_replication_slots")
        .unwrap();
    assert_eq!(slots.trim(), "0", "drop removed the slot");
    let publications = pg
        .psql("erp", "SELECT count(*) FROM pg_publication")
        .unwrap();
    assert_eq!(publications.trim(), "0", "drop removed the publication");
}
