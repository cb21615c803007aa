//! The direct copy (PostgreSQL -> one PostgreSQL sink, rows straight from `COPY TO` into
//! `COPY FROM`): a crash between the target's commit and the log's copies no chunk twice, and
//! a target that already holds rows makes the copy fall back to the log without losing any.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tidesync_testkit::Postgres;

use crate::util::*;

/// A PostgreSQL -> PostgreSQL configuration copying `items` in chunks of 1,000 rows.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("direct.toml");
    std::fs::write(
        &path,
        r#"
[store]
path = "${STATE_DIR}/tidesync.db"

[sources.erp]
url = "${SOURCE_URL}"
tables = ["items"]
chunk_rows = 1000

[sinks.shop]
url = "${TARGET_URL}"

[pipelines.items]
source = "erp"
sinks = ["shop"]
"#,
    )
    .unwrap();
    path
}

fn count(pg: &Postgres, sql: &str) -> i64 {
    pg_count(pg, "shop", sql)
}

#[test]
fn a_crash_between_the_targets_commit_and_the_logs_copies_no_chunk_twice() {
    let pg = Postgres::start();
    audited_versions(&pg, 5000);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (source, target) = (pg.url("erp"), pg.url("shop"));
    let cfg = config(dir.path());
    let args = ["run", cfg.to_str().unwrap()];
    let log = dir.path().join("run.log");
    let env = [
        ("SOURCE_URL", Path::new(&source)),
        ("TARGET_URL", Path::new(&target)),
        ("STATE_DIR", state.as_path()),
        ("TIDESYNC_LOG", Path::new("info")),
    ];
    // Aborts once the target committed the third chunk, before the log recorded it.
    let mut armed = env.to_vec();
    armed.push(("TIDESYNC_FAILPOINTS", Path::new("direct-copy-before-log:3")));
    let mut child = spawn(&args, &armed, &log.with_extension("1"));
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the failpoint should have aborted the run: {}",
        log_text(&log.with_extension("1"))
    );
    // Three chunks or more in the target (commits run ahead of the log), whole chunks only.
    let in_target = count(&pg, "SELECT count(*) FROM audit");
    assert!(
        in_target >= 3000 && in_target % 1000 == 0,
        "{in_target} rows in the target: {}",
        log_text(&log.with_extension("1"))
    );

    let mut child = spawn(&args, &env, &log.with_extension("2"));
    let compare = "SELECT id, ver, body FROM items ORDER BY id";
    let equal = || (pg.psql("erp", compare).ok() == pg.psql("shop", compare).ok()).then_some(());
    wait_for("the rest of the copy", Duration::from_secs(60), equal);
    pg.psql(
        "erp",
        "UPDATE items SET ver = ver + 1, body = 'later' WHERE id % 100 = 0",
    )
    .unwrap();
    wait_for("the updates", Duration::from_secs(60), equal);
    terminate(&child);
    assert!(child.wait().unwrap().success());
    let resumed = log_text(&log.with_extension("2"));
    assert!(
        resumed.contains("holds a chunk of the direct copy the log does not record"),
        "{resumed}"
    );
    // Every row arrived once at version 1, and the 50 updated ones once more at version 2.
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM (SELECT id, ver FROM audit GROUP BY id, ver HAVING count(*) > 1) x"
        ),
        0,
        "a version applied twice"
    );
    assert_eq!(count(&pg, "SELECT count(*) FROM audit"), 5050);
    let out = run(&["verify", cfg.to_str().unwrap()], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_target_that_holds_rows_already_gets_them_through_the_log() {
    let pg = Postgres::start();
    audited_versions(&pg, 4000);
    // The target has some of the rows, with other bodies.
    pg.psql(
        "shop",
        "INSERT INTO items SELECT g, 1, 'old' FROM generate_series(2500, 2600) g",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (source, target) = (pg.url("erp"), pg.url("shop"));
    let cfg = config(dir.path());
    let log = dir.path().join("run.log");
    let env = [
        ("SOURCE_URL", Path::new(&source)),
        ("TARGET_URL", Path::new(&target)),
        ("STATE_DIR", state.as_path()),
    ];
    let mut child = spawn(&["run", cfg.to_str().unwrap()], &env, &log);
    let compare = "SELECT id, ver, body FROM items ORDER BY id";
    wait_for("the target to catch up", Duration::from_secs(60), || {
        (pg.psql("erp", compare).ok() == pg.psql("shop", compare).ok()).then_some(())
    });
    terminate(&child);
    assert!(child.wait().unwrap().success());
    assert!(
        log_text(&log).contains("the sink did not take a chunk of the direct copy"),
        "{}",
        log_text(&log)
    );
    // The first two chunks went directly, the rest through the log, each row once.
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM (SELECT id FROM audit WHERE id < 2500 OR id > 2600 GROUP BY id HAVING count(*) > 1) x"
        ),
        0
    );
    assert_eq!(
        count(&pg, "SELECT count(*) FROM items WHERE body = 'old'"),
        0
    );
}
