//! Direct streaming (`[pipelines.NAME] direct_stream = true`): PostgreSQL -> one PostgreSQL
//! sink without the store's log. A crash between the target's commit and the store's record
//! applies nothing twice (an audit trigger in the target counts every write), the log stays
//! empty, an unchanged TOASTed value is kept, and the pipeline switches back to the log.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tidesync_testkit::Postgres;

use crate::util::*;

fn config(dir: &Path, direct_stream: bool) -> PathBuf {
    let path = dir.join(format!("stream-{direct_stream}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[store]
path = "${{STATE_DIR}}/tidesync.db"

[sources.erp]
url = "${{SOURCE_URL}}"
tables = ["items"]

[sinks.shop]
url = "${{TARGET_URL}}"

[pipelines.items]
source = "erp"
sinks = ["shop"]
direct_stream = {direct_stream}
"#
        ),
    )
    .unwrap();
    path
}

fn logged_changes(state: &Path) -> i64 {
    rusqlite::Connection::open(state.join("tidesync.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM changes", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_direct_stream_applies_nothing_twice_across_a_crash_and_switches_back_to_the_log() {
    let pg = Postgres::start();
    audited_versions(&pg, 2000);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (source, target) = (pg.url("erp"), pg.url("shop"));
    let (direct, through_log) = (config(dir.path(), true), config(dir.path(), false));
    let log = dir.path().join("run.log");
    let env = [
        ("SOURCE_URL", Path::new(&source)),
        ("TARGET_URL", Path::new(&target)),
        ("STATE_DIR", state.as_path()),
        ("TIDESYNC_LOG", Path::new("info")),
    ];
    let compare = "SELECT id, ver, md5(coalesce(body, '')) FROM items ORDER BY id";
    let equal = || (pg.psql("erp", compare).ok() == pg.psql("shop", compare).ok()).then_some(());

    // 1. The copy, then streamed transactions until the third direct apply aborts the run
    //    after the target's commit, before the store or the source heard of it.
    let mut armed = env.to_vec();
    armed.push(("TIDESYNC_FAILPOINTS", Path::new("after-apply:3")));
    let run1 = log.with_extension("1");
    let mut child = spawn(&["run", direct.to_str().unwrap()], &armed, &run1);
    wait_for("the copy", Duration::from_secs(60), || {
        (pg_count(&pg, "shop", "SELECT count(*) FROM items") == 2000).then_some(())
    });
    for k in 0..10 {
        pg.psql(
            "erp",
            &format!("UPDATE items SET ver = ver + 1 WHERE id % 10 = {k}"),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_direct_stream_failpoint(&mut child, &run1);

    // 2. Restart: the target's record is ahead of the store's and wins; more changes, among
    //    them a TOASTed value left unchanged by an update, a delete and a key update.
    let run2 = log.with_extension("2");
    let mut child = spawn(&["run", direct.to_str().unwrap()], &env, &run2);
    wait_for("the remaining updates", Duration::from_secs(60), equal);
    let big: String = (0..400).map(|i| format!("{i:x}-{}", i * 7919)).collect();
    pg.psql(
        "erp",
        &format!(
            "INSERT INTO items VALUES (5000, 1, repeat(md5('{big}'), 200) || '{big}');
             BEGIN; UPDATE items SET ver = ver + 1 WHERE id = 5000; DELETE FROM items WHERE id = 7;
             UPDATE items SET id = 6000, ver = ver + 1 WHERE id = 8; COMMIT;"
        ),
    )
    .unwrap();
    wait_for(
        "the TOAST, delete and key updates",
        Duration::from_secs(60),
        equal,
    );
    stop_cleanly(&mut child, &run2);
    let resumed = log_text(&run2);
    assert!(
        resumed.contains("the target has applied a direct stream past the store's record"),
        "{resumed}"
    );
    assert_eq!(
        logged_changes(&state),
        0,
        "the direct stream wrote to the log"
    );
    // The store knows where the stream stands: the sink's cursor is the head.
    let out = run(&["status", direct.to_str().unwrap()], &env);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status}");
    assert!(status.contains("lag 0 changes"), "{status}");

    // 3. Through the log again.
    let run3 = log.with_extension("3");
    let mut child = spawn(&["run", through_log.to_str().unwrap()], &env, &run3);
    wait_for("the log mode's start", Duration::from_secs(60), || {
        log_text(&run3).contains("sink resumes").then_some(())
    });
    pg.psql("erp", "UPDATE items SET ver = ver + 1 WHERE id <= 100")
        .unwrap();
    wait_for(
        "the updates through the log",
        Duration::from_secs(60),
        equal,
    );
    stop_cleanly(&mut child, &run3);
    assert!(logged_changes(&state) > 0);

    // Every version arrived once: 2000 copied rows, 2000 updates of the ten transactions,
    // the big row's insert and update, the moved row's new key, then ids 1 to 100 but 7 (deleted) and 8 (moved).
    assert_eq!(
        pg_count(
            &pg,
            "shop",
            "SELECT count(*) FROM (SELECT id, ver FROM audit GROUP BY id, ver HAVING count(*) > 1) x"
        ),
        0,
        "a version applied twice"
    );
    assert_eq!(
        pg_count(&pg, "shop", "SELECT count(*) FROM audit"),
        2000 + 2000 + 2 + 1 + 98
    );
    let out = run(&["verify", through_log.to_str().unwrap()], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
