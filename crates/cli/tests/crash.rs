#![allow(clippy::unwrap_used)]

//! kill -9 of `tidesync run` during a heavy change stream, then restart: the replica must
//! equal the master, and no change may have been applied twice or out of order per key.
//!
//! Double applies are invisible in the final state of an upsert, so the replica carries an
//! audit trigger that logs every row version it receives; every version is unique (the
//! writer takes them from one counter), so a version logged twice is a change applied twice.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use tidesync_engine::compare::compare_sqlite_table;

use crate::util::*;

const ITEMS: &str =
    "CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT NOT NULL, name TEXT, price TEXT,
                                         qty INTEGER, updated_at TEXT, version INTEGER NOT NULL)";

fn create_master(path: &Path, rows: i64) {
    let mut c = Connection::open(path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute(ITEMS, []).unwrap();
    let tx = c.transaction().unwrap();
    for id in 1..=rows {
        tx.execute(
            "INSERT INTO items VALUES (?1, ?2, 'seed', '1.00', 1, '2026-01-01T00:00:00Z', ?1)",
            rusqlite::params![id, format!("SKU-{id}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn create_audited_replica(path: &Path) {
    let c = Connection::open(path).unwrap();
    c.execute(ITEMS, []).unwrap();
    c.execute_batch(
        "CREATE TABLE audit (n INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER, version INTEGER, op TEXT);
         CREATE TRIGGER audit_ins AFTER INSERT ON items BEGIN INSERT INTO audit (id, version, op) VALUES (NEW.id, NEW.version, 'I'); END;
         CREATE TRIGGER audit_upd AFTER UPDATE ON items BEGIN INSERT INTO audit (id, version, op) VALUES (NEW.id, NEW.version, 'U'); END;
         CREATE TRIGGER audit_del AFTER DELETE ON items BEGIN INSERT INTO audit (id, version, op) VALUES (OLD.id, OLD.version, 'D'); END;",
    )
    .unwrap();
}

/// Writes transactions of 1..=20 row changes as fast as it can until `stop`.
fn write_stream(path: &Path, seed: u64, stop: &AtomicBool, version: &AtomicI64, max_id: i64) {
    let mut c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut rng = Rng(seed);
    let mut next_id = max_id;
    while !stop.load(Ordering::Relaxed) {
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        for _ in 0..=rng.below(20) {
            let v = version.fetch_add(1, Ordering::Relaxed);
            let id = 1 + rng.below(next_id as u64) as i64;
            match rng.below(10) {
                0..=6 => {
                    tx.execute(
                        "UPDATE items SET qty = qty + 1, price = ?2, version = ?3 WHERE id = ?1",
                        rusqlite::params![id, format!("{}.{:02}", v % 100, v % 97), v],
                    )
                    .unwrap();
                }
                7 | 8 => {
                    next_id += 1;
                    tx.execute(
                        "INSERT INTO items VALUES (?1, ?2, 'new', '9.99', 0, '2026-01-02T00:00:00Z', ?3)",
                        rusqlite::params![next_id, format!("SKU-{next_id}"), v],
                    )
                    .unwrap();
                }
                _ => {
                    tx.execute("DELETE FROM items WHERE id = ?1", [id]).unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
}

fn applied_seq(replica: &Path) -> Option<i64> {
    let c = Connection::open(replica).ok()?;
    c.query_row("SELECT seq FROM _tidesync_applied", [], |r| r.get(0))
        .optional()
        .ok()
        .flatten()
}

/// How one round ends.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// SIGKILL after the sink made progress, plus up to this many ms.
    Kill9 { max_delay_ms: u64 },
    /// Abort at the n-th hit of a named failpoint.
    Failpoint { name: &'static str, at: u64 },
}

/// Runs `tidesync run` on the example config against a master under a constant write
/// stream, crashing it as `rounds` say, then lets a last run catch up and stops it with
/// SIGTERM; checks equality, no double apply and per-key order.
fn crash_scenario(seed_rows: i64, rounds: &[Crash]) {
    let dir = tempfile::tempdir().unwrap();
    let (master, replica, state) = (
        dir.path().join("master.db"),
        dir.path().join("replica.db"),
        dir.path().join("state"),
    );
    create_master(&master, seed_rows);
    create_audited_replica(&replica);
    let env = [
        ("SOURCE_URL", master.as_path()),
        ("TARGET_URL", replica.as_path()),
        ("STATE_DIR", state.as_path()),
    ];
    let config = example("sqlite-to-sqlite.toml");
    let args = ["run", config.to_str().unwrap()];
    let log = dir.path().join("run.log");

    let mut rng = Rng(seed());
    let stop = Arc::new(AtomicBool::new(false));
    let version = Arc::new(AtomicI64::new(seed_rows + 1));
    let writer = {
        let (master, stop, version, s) = (
            master.clone(),
            stop.clone(),
            version.clone(),
            rng.below(u64::MAX) | 1,
        );
        std::thread::spawn(move || write_stream(&master, s, &stop, &version, seed_rows))
    };

    let mut last = 0;
    for (round, crash) in rounds.iter().enumerate() {
        match *crash {
            Crash::Kill9 { max_delay_ms } => {
                let mut child = spawn(&args, &env, &log);
                let progressed =
                    wait_for("the sink to make progress", Duration::from_secs(60), || {
                        if let Ok(Some(status)) = child.try_wait() {
                            panic!(
                                "round {round}: tidesync exited early with {status}: {}",
                                std::fs::read_to_string(&log).unwrap_or_default()
                            );
                        }
                        applied_seq(&replica).filter(|s| *s > last)
                    });
                last = progressed;
                std::thread::sleep(Duration::from_millis(rng.below(max_delay_ms + 1)));
                child.kill().unwrap();
                child.wait().unwrap();
            }
            Crash::Failpoint { name, at } => {
                let mut cmd = tidesync();
                cmd.args(args)
                    .env("TIDESYNC_FAILPOINTS", format!("{name}:{at}"));
                for (k, v) in &env {
                    cmd.env(k, v);
                }
                let mut child = cmd
                    .stdout(std::process::Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .unwrap();
                let status = wait_for("the failpoint to fire", Duration::from_secs(60), || {
                    child.try_wait().unwrap()
                });
                let stderr = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(
                    stderr.contains(&format!("failpoint {name} fired")) && !status.success(),
                    "round {round}: expected failpoint {name} to abort the process, got {status}: {stderr}"
                );
            }
        }
    }

    // Final run: stop writing, let it catch up, then stop it cleanly with SIGTERM.
    let mut child = spawn(&args, &env, &log);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let status_out = run(&["status", config.to_str().unwrap()], &env);
    assert!(
        status_out.status.success(),
        "status beside a running `run` failed: {}",
        String::from_utf8_lossy(&status_out.stderr)
    );
    assert!(String::from_utf8_lossy(&status_out.stdout).contains("pipeline items"));
    let check = Connection::open(&master).unwrap();
    wait_for("the replica to catch up", Duration::from_secs(120), || {
        let pending: i64 = check
            .query_row("SELECT count(*) FROM _tidesync_items_changes", [], |r| {
                r.get(0)
            })
            .unwrap();
        let diff = compare_sqlite_table(&master, &replica, "items", &["id".into()], 3).unwrap();
        (pending == 0 && diff.is_equal()).then_some(())
    });
    terminate(&child);
    let exit = child.wait().unwrap();
    assert!(
        exit.success(),
        "SIGTERM should stop `run` cleanly, got {exit}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let diff = compare_sqlite_table(&master, &replica, "items", &["id".into()], 5).unwrap();
    assert!(diff.is_equal(), "replica differs: {diff:?}");
    let audit = Connection::open(&replica).unwrap();
    // A replayed upsert logs its version again (as an update, since the row exists); a
    // replayed delete finds no row and logs nothing, which is harmless.
    let doubled: Vec<(i64, i64, i64)> = audit
        .prepare(
            "SELECT id, version, count(*) FROM audit WHERE op != 'D'
             GROUP BY id, version HAVING count(*) > 1 LIMIT 5",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        doubled.is_empty(),
        "changes applied twice (id, version, times): {doubled:?}"
    );
    let reordered: i64 = audit
        .query_row(
            "SELECT count(*) FROM (SELECT version, lag(version) OVER (PARTITION BY id ORDER BY n) AS prev FROM audit)
             WHERE version < prev",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        reordered, 0,
        "a key received an older version after a newer one"
    );
    let total: i64 = audit
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert!(
        total > seed_rows,
        "the stream should have produced changes beyond the seed ({total})"
    );
}

#[test]
fn kill_9_during_a_heavy_stream_then_restart_loses_and_doubles_nothing() {
    // Enough seed rows that the first kill can land inside the initial snapshot.
    crash_scenario(
        30_000,
        &[
            Crash::Kill9 { max_delay_ms: 50 },
            Crash::Kill9 { max_delay_ms: 400 },
            Crash::Kill9 { max_delay_ms: 400 },
            Crash::Kill9 { max_delay_ms: 400 },
        ],
    );
}

#[test]
fn a_crash_at_each_commit_boundary_loses_and_doubles_nothing() {
    crash_scenario(
        2_000,
        &[
            Crash::Failpoint {
                name: "store-before-commit",
                at: 2,
            },
            Crash::Failpoint {
                name: "after-append",
                at: 2,
            },
            Crash::Failpoint {
                name: "after-apply",
                at: 1,
            },
            Crash::Failpoint {
                name: "after-apply",
                at: 3,
            },
            Crash::Failpoint {
                name: "store-before-commit",
                at: 1,
            },
        ],
    );
}
