#![allow(clippy::unwrap_used)]

//! `verify --repair` and `backfill` through the real binary: a target that drifted from its
//! source (rows deleted, changed, added behind the pipeline's back) is put right by re-sending
//! rows through the running pipeline, while the source keeps changing, without any key seeing
//! an older version after a newer one; a backfill survives kill -9 of tidesync.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tidesync_testkit::Postgres;

use crate::util::*;

fn sqlite_rows(path: &Path) -> Option<String> {
    let conn = rusqlite::Connection::open(path).ok()?;
    let mut st = conn
        .prepare("SELECT id, sku, name, price, qty, updated_at FROM items ORDER BY id")
        .ok()?;
    let rows: Vec<String> = st
        .query_map([], |r| {
            Ok(format!(
                "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
                r.get_ref(0)?,
                r.get_ref(1)?,
                r.get_ref(2)?,
                r.get_ref(3)?,
                r.get_ref(4)?,
                r.get_ref(5)?
            ))
        })
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    Some(rows.join("\n"))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn sqlite_verify_repair_and_backfill_put_a_drifted_replica_right() {
    let setup = ExampleSetup::new();
    setup
        .master()
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO items SELECT i, 'SKU-' || i, 'item ' || i, i * 0.5, i % 7, '2026-11-23' FROM n;",
        )
        .unwrap();
    let env = setup.env();
    let config = example("sqlite-to-sqlite.toml");
    let cfg = config.to_str().unwrap();
    let log = setup.dir.path().join("run.log");
    let mut child = spawn(&["run", cfg], &env, &log);
    wait_for("the initial copy", Duration::from_secs(60), || {
        (sqlite_rows(&setup.replica) == sqlite_rows(&setup.master)).then_some(())
    });

    // Drift behind the pipeline's back: a row lost, a row changed, a row that should not be.
    rusqlite::Connection::open(&setup.replica)
        .unwrap()
        .execute_batch(
            "DELETE FROM items WHERE id = 500; UPDATE items SET name = 'drift' WHERE id = 600;
             INSERT INTO items (id, sku) VALUES (99999, 'extra');",
        )
        .unwrap();
    let out = run(&["verify", cfg, "--repair", "--settle-secs", "5"], &env);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("3 differences"), "{said}");
    assert!(said.contains("re-sending 3 keys of items"), "{said}");
    assert!(said.contains("after repair:"), "{said}");
    assert_eq!(sqlite_rows(&setup.replica), sqlite_rows(&setup.master));

    // A backfill re-sends every row, and fixes drift that the store knows nothing about.
    rusqlite::Connection::open(&setup.replica)
        .unwrap()
        .execute_batch(
            "UPDATE items SET qty = -1 WHERE id % 10 = 0; DELETE FROM items WHERE id > 1990;",
        )
        .unwrap();
    setup
        .master()
        .execute_batch("UPDATE items SET qty = qty + 100 WHERE id % 3 = 0")
        .unwrap();
    let out = run(&["backfill", cfg, "items", "--wait-secs", "60"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    wait_for(
        "the backfill to be applied",
        Duration::from_secs(30),
        || (sqlite_rows(&setup.replica) == sqlite_rows(&setup.master)).then_some(()),
    );

    // A table the pipeline does not capture is refused with a usage error.
    let out = run(&["backfill", cfg, "orders", "--no-wait"], &env);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("does not capture a table `orders` (its source's tables: items)"),
        "{}",
        text(&out)
    );
    terminate(&child);
    assert!(child.wait().unwrap().success());
}

/// PostgreSQL -> PostgreSQL with versions and an audit trigger on the target: repairs and a
/// backfill run while writers keep bumping versions; no id ever receives a version older than
/// one it already has (the re-sent rows are read between watermarks, so the stream's newer
/// versions win), and a backfill interrupted by kill -9 finishes after the restart.
#[test]
fn postgres_repair_and_backfill_while_streaming_keep_per_key_order() {
    let pg = Postgres::start();
    audited_versions(&pg, 30000);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (source, target) = (pg.url("erp"), pg.url("shop"));
    let env = [
        ("SOURCE_URL", Path::new(&source)),
        ("TARGET_URL", Path::new(&target)),
        ("STATE_DIR", state.as_path()),
    ];
    let config = example("postgres-to-postgres.toml");
    let cfg = config.to_str().unwrap();
    let log = dir.path().join("run.log");
    let compare = "SELECT id, ver, body FROM items ORDER BY id";
    let equal = |pg: &Postgres| pg.psql("erp", compare).ok() == pg.psql("shop", compare).ok();
    let mut child = spawn(&["run", cfg], &env, &log.with_extension("1"));
    wait_for("the initial copy", Duration::from_secs(90), || {
        equal(&pg).then_some(())
    });

    // Writers bump versions of a spread of keys (including the drifted ones) all along.
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut round = 0i64;
            while !stop.load(Ordering::Relaxed) {
                pg.psql(
                    "erp",
                    &format!(
                        "UPDATE items SET ver = ver + 1, body = 'w{round}' WHERE id % 50 = {m} OR id IN (500, 600, 700); \
                         INSERT INTO items VALUES ({new}, 1, 'new') ON CONFLICT DO NOTHING;",
                        m = round % 50,
                        new = 200_000 + round
                    ),
                )
                .unwrap();
                round += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // Stops the writer however drift_and_repair ends: a panic there must fail the
        // test, not leave the scope waiting for a writer that never stops.
        let guard = StopOnDrop(&stop);
        drift_and_repair(&pg, cfg, &env, &log, &mut child);
        drop(guard);
        writer.join().unwrap();
    });
    wait_for("the target to catch up", Duration::from_secs(60), || {
        equal(&pg).then_some(())
    });
    let out = run(&["verify", cfg], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    terminate(&child);
    child.wait().unwrap();

    // Re-sent rows repeat the current version; none may go back to an older one.
    let backwards = pg
        .psql(
            "shop",
            "SELECT id, ver, prev FROM (SELECT id, ver, lag(ver) OVER (PARTITION BY id ORDER BY n) AS prev \
             FROM audit) x WHERE ver < prev LIMIT 5",
        )
        .unwrap();
    assert_eq!(
        backwards.trim(),
        "",
        "an older version arrived after a newer one (id|ver|previous)"
    );
    // The backfill did re-send rows (the audit saw the untouched ones a second time).
    let resent = pg
        .psql(
            "shop",
            "SELECT count(*) FROM (SELECT id FROM audit WHERE id < 200000 GROUP BY id HAVING count(*) > 1) x",
        )
        .unwrap();
    assert!(
        resent.trim().parse::<i64>().unwrap() >= 29_000,
        "re-sent rows: {resent}"
    );
}

/// Sets the flag when dropped, also while unwinding from a panic.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The drift, the repair and the interrupted backfill of
/// [`postgres_repair_and_backfill_while_streaming_keep_per_key_order`], while writers run;
/// `child` is the running tidesync, replaced by the restarted one.
fn drift_and_repair(
    pg: &Postgres,
    cfg: &str,
    env: &[(&str, &Path)],
    log: &Path,
    child: &mut std::process::Child,
) {
    pg.psql(
        "shop",
        "DELETE FROM items WHERE id IN (500, 501); UPDATE items SET body = 'drift' WHERE id IN (600, 601); \
         INSERT INTO items VALUES (999999, 1, 'extra');",
    )
    .unwrap();
    let out = run(
        &[
            "verify",
            cfg,
            "--repair",
            "--settle-secs",
            "10",
            "--repair-wait-secs",
            "60",
        ],
        env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Five keys drifted; the writers may put some right on their own (an update of 500
    // re-creates it) before verify looks, so the count re-sent is at most five.
    let resending = text(&out)
        .split("re-sending ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    assert!(
        matches!(resending, Some(1..=5)),
        "expected 1 to 5 keys re-sent: {}",
        text(&out)
    );
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT count(*) FROM items WHERE id = 999999 OR (id IN (600, 601) AND body = 'drift')"
        )
        .unwrap()
        .trim(),
        "0"
    );

    // Drift everywhere, then a backfill of the whole table, killed half-way and resumed.
    pg.psql("shop", "UPDATE items SET body = 'drift' WHERE id % 7 = 0")
        .unwrap();
    let out = run(&["backfill", cfg, "items", "--no-wait"], env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Some chunks are through (the drifted rows get fixed in key order) ...
    wait_for("part of the backfill", Duration::from_secs(60), || {
        pg.psql(
            "shop",
            "SELECT count(*) FROM items WHERE id < 10000 AND body = 'drift'",
        )
        .ok()
        .filter(|n| n.trim() == "0")
    });
    child.kill().unwrap();
    child.wait().unwrap();
    *child = spawn(&["run", cfg], env, &log.with_extension("2"));
    // ... and after the restart it resumes and finishes.
    wait_for("the backfill to finish", Duration::from_secs(90), || {
        let out = run(&["status", cfg, "--json"], env);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        status[0]["requests"]
            .as_array()
            .is_some_and(|r| r.is_empty())
            .then_some(())
    });
}
