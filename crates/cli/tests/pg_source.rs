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
    // Schema changes while streaming: an added column reaches the target (created there),
    // a dropped one simply stops arriving.
    pg.psql(
        "erp",
        "ALTER TABLE items ADD COLUMN extra numeric(6,1); \
         UPDATE items SET extra = id % 3 + 0.5 WHERE id % 5 = 0; \
         ALTER TABLE items DROP COLUMN name; \
         UPDATE items SET qty = qty + 10 WHERE id % 7 = 0; \
         INSERT INTO items (id, sku, extra) VALUES (7000001, 'after-alter', 2.5);",
    )
    .unwrap();
    const AFTER_ALTER: &str = "SELECT id, sku, price, qty, extra, md5(note) FROM items ORDER BY id";
    let source_rows = pg.psql("erp", AFTER_ALTER).unwrap();
    wait_for(
        "the schema change to arrive",
        Duration::from_secs(60),
        || {
            check_alive(&mut child, &log.with_extension("3"));
            (pg.psql("shop", AFTER_ALTER).ok()? == source_rows).then_some(())
        },
    );
    terminate(&child);
    child.wait().unwrap();

    let out = run(&["status", config.to_str().unwrap()], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("slot tidesync_items") && text.contains("of WAL, confirmed up to"),
        "{text}"
    );

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

/// The rows of the SQLite copy in the form `psql -At` prints the source's.
fn sqlite_rows(path: &Path) -> Option<String> {
    sqlite_lines(
        path,
        "SELECT id, sku, coalesce(name, ''), price, qty, coalesce(length(note), ''), \
         coalesce(substr(note, 1, 40), '') FROM items ORDER BY id",
    )
}

const PG_AS_SQLITE: &str = "SELECT id, sku, coalesce(name, ''), price, qty, \
    coalesce(length(note)::text, ''), coalesce(substr(note, 1, 40), '') FROM items ORDER BY id";

#[test]
fn postgres_to_sqlite_copies_then_streams_and_ends_equal() {
    let pg = Postgres::start();
    pg.create_database("erp").unwrap();
    pg.psql("erp", SCHEMA).unwrap();
    seed(&pg, "erp", 3_000);
    let dir = tempfile::tempdir().unwrap();
    let (state, replica) = (dir.path().join("state"), dir.path().join("replica.db"));
    let source = pg.url("erp");
    let env = [
        ("SOURCE_URL", Path::new(&source)),
        ("TARGET_URL", replica.as_path()),
        ("STATE_DIR", state.as_path()),
    ];
    let config = example("postgres-to-sqlite.toml");
    let args = ["run", config.to_str().unwrap()];
    let log = dir.path().join("run.log");
    let mut child = spawn(&args, &env, &log.with_extension("1"));
    for round in 0..4 {
        check_alive(&mut child, &log.with_extension("1"));
        stream(&pg, "erp", round);
    }
    pg.psql("erp", "TRUNCATE items").unwrap();
    seed(&pg, "erp", 200);
    stream(&pg, "erp", 9);
    let expected = pg.psql("erp", PG_AS_SQLITE).unwrap();
    wait_for(
        "the SQLite copy to equal the source",
        Duration::from_secs(60),
        || {
            check_alive(&mut child, &log.with_extension("1"));
            (sqlite_rows(&replica)? == expected).then_some(())
        },
    );
    let out = run(&["verify", config.to_str().unwrap()], &env);
    assert!(
        out.status.success(),
        "verify on a caught-up pipeline: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    terminate(&child);
    child.wait().unwrap();
}

/// Exactly-once and per-key order, proven on the target: every row carries a version the
/// source bumps on each update, and a trigger on the target logs each version it receives.
/// tidesync is killed during the copy and during the stream, and the source server restarts
/// under it; at the end no (id, version) reached the target twice and each id's versions
/// arrived in increasing order.
#[test]
fn postgres_to_postgres_applies_each_version_once_in_order() {
    let mut pg = Postgres::start();
    audited_versions(&pg, 40000);
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
    let audited = |pg: &Postgres| {
        pg.psql("shop", "SELECT count(*) FROM audit")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    };
    // Bumps the versions of a spread of ids, several statements per transaction.
    let update = |pg: &Postgres, round: i64| {
        pg.psql(
            "erp",
            &format!(
                "BEGIN; UPDATE items SET ver = ver + 1, body = 'r{round}' WHERE id % 13 = {a}; \
                 UPDATE items SET ver = ver + 1 WHERE id % 17 = {b}; COMMIT; \
                 UPDATE items SET ver = ver + 1 WHERE id % 29 = {c}; \
                 DELETE FROM items WHERE id % 997 = {d}; \
                 INSERT INTO items SELECT 100000 + {round} * 10 + g, 1, 'new' FROM generate_series(1, 10) g;",
                a = round % 13,
                b = round % 17,
                c = round % 29,
                d = round % 997
            ),
        )
        .ok()
    };

    let mut child = spawn(&args, &env, &log.with_extension("1"));
    wait_for("part of the copy", Duration::from_secs(60), || {
        check_alive(&mut child, &log.with_extension("1"));
        audited(&pg).filter(|n| *n >= 4_000)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    update(&pg, 0);
    let mut child = spawn(&args, &env, &log.with_extension("2"));
    update(&pg, 1);
    update(&pg, 2);
    for round in 3..12 {
        check_alive(&mut child, &log.with_extension("2"));
        update(&pg, round);
        if round == 5 {
            child.kill().unwrap();
            child.wait().unwrap();
            update(&pg, 50);
            child = spawn(&args, &env, &log.with_extension("2"));
        }
        if round == 8 {
            // The source server restarts under the running pipeline.
            pg.restart().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let compare = "SELECT id, ver, body FROM items ORDER BY id";
    let expected = pg.psql("erp", compare).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while pg.psql("shop", compare).ok().as_ref() != Some(&expected) {
        check_alive(&mut child, &log.with_extension("2"));
        assert!(
            std::time::Instant::now() < deadline,
            "the target did not reach the source within 90 s; tidesync's log:\n{}",
            std::fs::read_to_string(log.with_extension("2")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // verify agrees while the pipeline runs.
    let out = run(&["verify", config.to_str().unwrap()], &env);
    assert!(
        out.status.success(),
        "verify on a caught-up pipeline: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    terminate(&child);
    child.wait().unwrap();

    let twice = pg
        .psql(
            "shop",
            "SELECT id, ver, count(*) FROM audit GROUP BY id, ver HAVING count(*) > 1 LIMIT 5",
        )
        .unwrap();
    assert_eq!(
        twice.trim(),
        "",
        "versions applied more than once (id|ver|times)"
    );
    let backwards = pg
        .psql(
            "shop",
            "SELECT id, ver, prev FROM (SELECT id, ver, lag(ver) OVER (PARTITION BY id ORDER BY n) AS prev \
             FROM audit) x WHERE ver <= prev LIMIT 5",
        )
        .unwrap();
    assert_eq!(
        backwards.trim(),
        "",
        "versions applied out of order (id|ver|previous)"
    );

    // A planted difference is found, key by key.
    pg.psql(
        "shop",
        "DELETE FROM items WHERE id = 500; UPDATE items SET body = 'planted' WHERE id = 600; \
         INSERT INTO items VALUES (999999, 1, 'extra');",
    )
    .unwrap();
    let out = run(
        &["verify", config.to_str().unwrap(), "--settle-secs", "2"],
        &env,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for key in ["(500)", "(600)", "(999999)"] {
        assert!(text.contains(key), "verify output lacks {key}: {text}");
    }
}
