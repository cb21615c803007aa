#![allow(clippy::unwrap_used)]

//! SQLite -> PostgreSQL through the real binary and a real PostgreSQL, with a kill -9 in the
//! middle of a write stream.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};
use tidesync_testkit::Postgres;

use crate::util::*;

/// `id|sku|qty` per row, in id order, the way psql -At prints them.
fn sqlite_rows(path: &Path) -> String {
    let c = Connection::open(path).unwrap();
    let mut st = c
        .prepare("SELECT id, sku, qty FROM items ORDER BY id")
        .unwrap();
    let rows: Vec<String> = st
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.join("\n")
}

#[test]
fn sqlite_to_postgres_survives_kill_9_and_ends_equal() {
    let pg = Postgres::start();
    pg.create_database("warehouse").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (master, state) = (dir.path().join("shop.db"), dir.path().join("state"));
    let c = Connection::open(&master).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT, name TEXT, price NUMERIC, qty INTEGER, updated_at TEXT)",
        [],
    )
    .unwrap();
    for id in 1..=2000 {
        c.execute(
            "INSERT INTO items VALUES (?1, ?2, 'seed', '12.50', 1, '2026-11-23T00:00:00Z')",
            rusqlite::params![id, format!("SKU-{id}")],
        )
        .unwrap();
    }
    let url = pg.url("warehouse");
    let target = Path::new(&url);
    let env = [
        ("SOURCE_URL", master.as_path()),
        ("TARGET_URL", target),
        ("STATE_DIR", state.as_path()),
    ];
    let config = example("sqlite-to-postgres.toml");
    let args = ["run", config.to_str().unwrap()];
    let log = dir.path().join("run.log");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (master, stop) = (master.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = Connection::open(&master).unwrap();
            c.busy_timeout(Duration::from_secs(30)).unwrap();
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let mut next = 2000;
            while !stop.load(Ordering::Relaxed) {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .unwrap();
                for _ in 0..10 {
                    let id = 1 + rng.below(next) as i64;
                    match rng.below(10) {
                        0..=6 => tx
                            .execute("UPDATE items SET qty = qty + 1 WHERE id = ?1", [id])
                            .unwrap(),
                        7 | 8 => {
                            next += 1;
                            tx.execute(
                                "INSERT INTO items (id, sku, qty) VALUES (?1, 'new', 0)",
                                [next as i64],
                            )
                            .unwrap()
                        }
                        _ => tx.execute("DELETE FROM items WHERE id = ?1", [id]).unwrap(),
                    };
                }
                tx.commit().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let applied = || {
        pg.psql("warehouse", "SELECT seq FROM _tidesync_applied")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    };
    let mut child = spawn(&args, &env, &log);
    let first = wait_for(
        "PostgreSQL to receive the snapshot",
        Duration::from_secs(60),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tidesync exited early with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            applied().filter(|s| *s >= 2000)
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let child = spawn(&args, &env, &log);
    wait_for(
        "progress after the restart",
        Duration::from_secs(60),
        || applied().filter(|s| *s > first),
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let expected = sqlite_rows(&master);
    wait_for(
        "PostgreSQL to equal the master",
        Duration::from_secs(60),
        || {
            let got = pg
                .psql("warehouse", "SELECT id, sku, qty FROM items ORDER BY id")
                .ok()?;
            (got.trim_end() == expected).then_some(())
        },
    );
    terminate(&child);
    let mut child = child;
    assert!(
        child.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The table was created with the mapped types.
    let types = pg
        .psql(
            "warehouse",
            "SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position)
             FROM information_schema.columns WHERE table_name = 'items'",
        )
        .unwrap();
    assert_eq!(
        types.trim(),
        "id:bigint,sku:text,name:text,price:numeric,qty:bigint,updated_at:text"
    );
}
