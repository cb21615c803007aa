//! The `diff` capture mode through the real binary, from examples/postgres-diff-to-sqlite.toml:
//! a PostgreSQL table compared into SQLite while a mixed workload runs (inserts, updates,
//! deletes, many rows sharing one timestamp), with kill -9 in the middle of the first
//! comparison and of later ones; `verify` says equal at the end and names a planted
//! difference.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use tidesync_testkit::Postgres;

use crate::util::*;

const DB: &str = "erp";
const ROWS: i64 = 60_000;

fn sqlite_count(path: &Path) -> Option<i64> {
    let conn = rusqlite::Connection::open(path).ok()?;
    conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .ok()
}

fn sqlite_sum(path: &Path) -> Option<String> {
    let conn = rusqlite::Connection::open(path).ok()?;
    conn.query_row(
        "SELECT count(*) || ':' || sum(id) || ':' || sum(length(name)) FROM items",
        [],
        |r| r.get(0),
    )
    .ok()
}

fn pg_sum(pg: &Postgres) -> String {
    pg.psql(
        DB,
        "SELECT count(*) || ':' || sum(id) || ':' || sum(length(name)) FROM items",
    )
    .unwrap()
    .trim()
    .to_owned()
}

#[test]
fn a_postgres_table_compared_into_sqlite_survives_kills_and_verifies_equal() {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg.psql(
        DB,
        &format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, sku text NOT NULL, name text, \
               price numeric(12,2), changed timestamptz NOT NULL); \
             INSERT INTO items SELECT g, 'SKU-' || g, 'item ' || g, g * 0.25, \
               timestamptz '2026-01-01Z' FROM generate_series(1, {ROWS}) g;"
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("shop.db");
    let state = dir.path().join("state");
    let source_url = pg.url(DB);
    let env = [
        ("SOURCE_URL", Path::new(&source_url)),
        ("TARGET_URL", target.as_path()),
        ("STATE_DIR", state.as_path()),
    ];
    let config = example("postgres-diff-to-sqlite.toml");
    let config = config.to_str().unwrap();
    let log = dir.path().join("run.log");
    let mut rng = Rng(seed());

    // Killed in the middle of the first comparison (rows already in the target).
    let mut child = spawn(&["run", config], &env, &log);
    wait_for("the first rows in SQLite", Duration::from_secs(60), || {
        sqlite_count(&target)
            .filter(|&n| n > 0 && n < ROWS)
            .map(|_| ())
    });
    child.kill().unwrap();
    child.wait().unwrap();

    for round in 0..6_i64 {
        // Updates (many to one shared timestamp), deletes and inserts, in separate
        // transactions so some land in the middle of a comparison.
        let shared = format!("timestamptz '2026-02-{:02}Z'", round + 1);
        pg.psql(
            DB,
            &format!(
                "UPDATE items SET name = name || '+', changed = {shared} WHERE id % 50 = {round}; \
                 DELETE FROM items WHERE id % 997 = {round}; \
                 INSERT INTO items SELECT 100000 + {round} * 1000 + g, 'new', 'n' || g, 1.5, \
                   {shared} FROM generate_series(1, 200) g;"
            ),
        )
        .unwrap();
        let mut child = spawn(&["run", config], &env, &log);
        std::thread::sleep(Duration::from_millis(300 + rng.below(2_500)));
        if round % 2 == 0 {
            child.kill().unwrap();
            child.wait().unwrap();
        } else {
            stop_cleanly(&mut child, &log);
        }
    }
    let mut child = spawn(&["run", config], &env, &log);
    let expected = pg_sum(&pg);
    wait_for(
        "SQLite equal to PostgreSQL",
        Duration::from_secs(120),
        || (sqlite_sum(&target).as_deref() == Some(expected.as_str())).then_some(()),
    );
    let out = run(&["verify", config], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stop_cleanly(&mut child, &log);

    // A planted difference is named.
    let conn = rusqlite::Connection::open(&target).unwrap();
    conn.execute("UPDATE items SET name = 'drift' WHERE id = 7", [])
        .unwrap();
    drop(conn);
    let out = run(&["verify", config, "--settle-secs", "5"], &env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("(7)"), "{text}");
    assert!(
        log_text(&log).lines().all(|l| !l.contains("ERROR")),
        "{}",
        log_text(&log)
    );
}

#[test]
fn a_postgres_table_polled_by_its_change_column_survives_kills_and_verifies_equal() {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg.psql(
        DB,
        "CREATE TABLE items (id bigint PRIMARY KEY, sku text NOT NULL, name text, \
           price numeric(12,2), updated_at timestamptz NOT NULL); \
         INSERT INTO items SELECT g, 'SKU-' || g, 'item ' || g, g * 0.25, \
           timestamptz '2026-01-01Z' FROM generate_series(1, 20000) g;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("shop.db");
    let state = dir.path().join("state");
    let source_url = pg.url(DB);
    let env = [
        ("SOURCE_URL", Path::new(&source_url)),
        ("TARGET_URL", target.as_path()),
        ("STATE_DIR", state.as_path()),
    ];
    // The example, with deletes found every 4 s instead of every hour.
    let example_text =
        std::fs::read_to_string(example("postgres-incremental-to-sqlite.toml")).unwrap();
    assert!(example_text.contains("deletes_every_secs = 3600"));
    let config = dir.path().join("incremental.toml");
    std::fs::write(
        &config,
        example_text.replace("deletes_every_secs = 3600", "deletes_every_secs = 4"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let log = dir.path().join("run.log");
    let mut rng = Rng(seed());

    let mut child = spawn(&["run", config], &env, &log);
    wait_for("all rows in SQLite", Duration::from_secs(60), || {
        (sqlite_count(&target) == Some(20_000)).then_some(())
    });
    for round in 1..=6_i64 {
        // Many rows stamped with one new time, a delete, inserts; the clock moves forward.
        pg.psql(
            DB,
            &format!(
                "UPDATE items SET name = name || '+', updated_at = timestamptz '2026-02-01Z' + \
                   interval '{round} minutes' WHERE id % 40 = {round}; \
                 DELETE FROM items WHERE id % 991 = {round}; \
                 INSERT INTO items SELECT 100000 + {round} * 1000 + g, 'new', 'n' || g, 1.5, \
                   timestamptz '2026-02-01Z' + interval '{round} minutes' FROM generate_series(1, 100) g;"
            ),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200 + rng.below(1_500)));
        if round % 2 == 1 {
            child.kill().unwrap();
            child.wait().unwrap();
        } else {
            stop_cleanly(&mut child, &log);
        }
        child = spawn(&["run", config], &env, &log);
    }
    let expected = pg_sum(&pg);
    wait_for(
        "SQLite equal to PostgreSQL",
        Duration::from_secs(120),
        || (sqlite_sum(&target).as_deref() == Some(expected.as_str())).then_some(()),
    );
    let out = run(&["verify", config], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stop_cleanly(&mut child, &log);
    assert!(
        log_text(&log).lines().all(|l| !l.contains("ERROR")),
        "{}",
        log_text(&log)
    );
}
