#![allow(clippy::unwrap_used)]

//! `tidesync verify` through the real binary: SQLite and PostgreSQL targets filled by a real
//! `tidesync run`, with differences planted by hand, a table of many chunks, and a pipeline
//! still streaming while verify runs.

use std::path::Path;
use std::process::{Child, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use tidesync_testkit::Postgres;

use crate::util::*;

fn fill(master: &Connection, rows: i64) {
    master
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO items SELECT i, 'SKU-' || i, 'item ' || i, '12.50', i % 10, '2026-11-23T00:00:00Z' FROM n",
            [rows],
        )
        .unwrap();
}

fn count(path: &Path) -> Option<i64> {
    Connection::open(path)
        .ok()?
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .ok()
}

/// Runs `tidesync run CONFIG` until `caught_up` holds, then leaves it running.
fn run_until(
    config: &Path,
    env: &[(&str, &Path)],
    log: &Path,
    mut caught_up: impl FnMut() -> bool,
) -> Child {
    let mut child = spawn(&["run", config.to_str().unwrap()], env, log);
    wait_for("the pipeline to catch up", Duration::from_secs(60), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "tidesync run exited early with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        caught_up().then_some(())
    });
    child
}

fn stop(mut child: Child, log: &Path) {
    terminate(&child);
    assert!(
        child.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn verify(config: &Path, env: &[(&str, &Path)], extra: &[&str]) -> Output {
    let mut args = vec!["verify", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args, env)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn explain(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The listed keys of the report: `kind key[: columns]`.
fn listed(out: &Output) -> Vec<String> {
    stdout(out)
        .lines()
        .filter(|l| l.starts_with("    ") && !l.trim_start().starts_with("..."))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// A SQLite master with `rows` items, replicated to SQLite by a finished `tidesync run`.
fn caught_up_sqlite_replica(rows: i64) -> ExampleSetup {
    let setup = ExampleSetup::new();
    fill(&setup.master(), rows);
    let config = example("sqlite-to-sqlite.toml");
    let log = setup.dir.path().join("run.log");
    let child = run_until(&config, &setup.env(), &log, || {
        count(&setup.replica) == Some(rows)
    });
    stop(child, &log);
    setup
}

#[test]
fn verify_exits_0_when_a_caught_up_sqlite_replica_is_equal() {
    let setup = caught_up_sqlite_replica(2000);
    let out = verify(&example("sqlite-to-sqlite.toml"), &setup.env(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    assert!(text.contains("pipeline items (source shop)"), "{text}");
    assert!(
        text.contains("items -> replica: equal, 2000 rows in"),
        "{text}"
    );
    assert!(text.contains("result: equal (1 table compared)"), "{text}");
}

#[test]
fn verify_names_exactly_the_missing_extra_and_different_keys() {
    let setup = caught_up_sqlite_replica(2000);
    Connection::open(&setup.replica)
        .unwrap()
        .execute_batch(
            "DELETE FROM items WHERE id = 5;
             INSERT INTO items (id, sku, qty) VALUES (5000, 'planted', 1);
             UPDATE items SET qty = 99 WHERE id = 7;",
        )
        .unwrap();
    let out = verify(&example("sqlite-to-sqlite.toml"), &setup.env(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert_eq!(
        listed(&out),
        ["missing (5)", "different (7): qty", "extra (5000)"],
        "{}",
        explain(&out)
    );
    assert!(
        stdout(&out).contains(
            "items -> replica: 3 differences (1 missing, 1 extra, 1 different); source 2000 rows, target 2000 rows"
        ),
        "{}",
        explain(&out)
    );
    assert!(stdout(&out).contains("result: 1 of 1 table differ"));
}

#[test]
fn a_difference_in_a_middle_chunk_of_many_is_found() {
    let setup = caught_up_sqlite_replica(25_000);
    Connection::open(&setup.replica)
        .unwrap()
        .execute("UPDATE items SET name = 'changed' WHERE id = 12345", [])
        .unwrap();
    let out = verify(
        &example("sqlite-to-sqlite.toml"),
        &setup.env(),
        &["--chunk-rows", "1000", "--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["equal"], false);
    let table = &report["pipelines"][0]["tables"][0];
    assert_eq!(table["table"], "items");
    assert_eq!(table["sink"], "replica");
    assert_eq!(table["method"], "row-hash");
    assert_eq!(table["source_rows"], 25_000);
    assert_eq!(table["chunks"], 25);
    assert_eq!(table["chunks_differing"], 1);
    assert_eq!(table["different"], 1);
    assert_eq!(
        table["keys"],
        serde_json::json!([{"kind": "different", "key": [12345], "columns": ["name"]}])
    );
}

#[test]
fn sqlite_to_postgres_differences_are_found_across_kinds() {
    let pg = Postgres::start();
    pg.create_database("warehouse").unwrap();
    let setup = ExampleSetup::new();
    fill(&setup.master(), 1000);
    // Values of other storage classes than the column's, as SQLite allows.
    setup
        .master()
        .execute_batch(
            "UPDATE items SET price = 7 WHERE id = 3;
             UPDATE items SET price = 0.1 WHERE id = 4;
             UPDATE items SET name = 42, qty = '5' WHERE id = 5;",
        )
        .unwrap();
    let url = pg.url("warehouse");
    let env = [
        ("SOURCE_URL", setup.master.as_path()),
        ("TARGET_URL", Path::new(&url)),
        ("STATE_DIR", setup.state.as_path()),
    ];
    let config = example("sqlite-to-postgres.toml");
    let log = setup.dir.path().join("run.log");
    let child = run_until(&config, &env, &log, || {
        pg.psql("warehouse", "SELECT count(*) FROM items")
            .is_ok_and(|n| n.trim() == "1000")
    });
    stop(child, &log);

    let out = verify(&config, &env, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(stdout(&out).contains("items -> warehouse: equal, 1000 rows"));

    pg.psql(
        "warehouse",
        "DELETE FROM items WHERE id = 10;
         UPDATE items SET price = 12.500 WHERE id = 20;
         INSERT INTO items (id, sku) VALUES (1001, 'planted');",
    )
    .unwrap();
    let out = verify(&config, &env, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert_eq!(
        listed(&out),
        ["missing (10)", "different (20): price", "extra (1001)"],
        "{}",
        explain(&out)
    );
}

#[test]
fn a_stopped_pipeline_behind_its_source_is_reported_as_not_caught_up() {
    let setup = caught_up_sqlite_replica(100);
    // A change the stopped pipeline has not captured.
    setup
        .master()
        .execute("UPDATE items SET qty = 1000 WHERE id = 50", [])
        .unwrap();
    let out = verify(
        &example("sqlite-to-sqlite.toml"),
        &setup.env(),
        &["--settle-secs", "1"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert_eq!(listed(&out), ["different (50): qty"]);
    assert!(
        stdout(&out).contains(
            "note: pipeline items has not caught up: store at row id 100, source at row id 101"
        ),
        "{}",
        explain(&out)
    );
}

#[test]
fn verify_while_the_pipeline_streams_reports_no_false_difference() {
    let setup = ExampleSetup::new();
    setup
        .master()
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    fill(&setup.master(), 5000);
    let config = example("sqlite-to-sqlite.toml");
    let log = setup.dir.path().join("run.log");
    let child = run_until(&config, &setup.env(), &log, || {
        count(&setup.replica) == Some(5000)
    });

    let stop_writer = Arc::new(AtomicBool::new(false));
    let writer = spawn_master_writer(
        &setup.master,
        &stop_writer,
        Writes {
            rows: 5000,
            per_txn: 5,
            pause: Duration::from_millis(1),
            seed: seed(),
        },
    );

    // Each run must find the tables equal; at least one must have met rows in flight (and
    // re-checked them), or the test did not test anything.
    let mut rechecked = false;
    for _ in 0..5 {
        let out = tidesync()
            .args(["verify", config.to_str().unwrap(), "--chunk-rows", "500"])
            .envs(setup.env())
            .env("TIDESYNC_LOG", "tidesync_engine::verify=debug")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        rechecked |= String::from_utf8_lossy(&out.stderr)
            .lines()
            .any(|l| l.contains("re-checked differing keys") && !l.contains("candidates=0"));
        if rechecked {
            break;
        }
    }
    stop_writer.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    stop(child, &log);
    assert!(rechecked, "no verify run met a row in flight");
}

#[test]
fn verify_usage_errors_exit_2() {
    let setup = ExampleSetup::new();
    let config = example("sqlite-to-sqlite.toml");
    let out = verify(&config, &setup.env(), &["--pipeline", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no pipeline named nope (defined: items)")
    );
    let out = verify(&config, &setup.env(), &["--chunk-rows", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
}
