#![allow(clippy::unwrap_used)]

use crate::util::*;

#[test]
fn demo_passes_and_leaves_a_config_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &[
            "demo",
            "--duration",
            "2",
            "--rate",
            "1500",
            "--products",
            "300",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("result: replica equals master, row by row"),
        "{stdout}"
    );
    assert!(stdout.contains("stock"), "{stdout}");
    let config = dir.path().join("tidesync.toml");
    let check = run(&["check", config.to_str().unwrap()], &[]);
    assert!(check.status.success());
    let status = run(&["status", config.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("lag 0 changes"), "{text}");
}

#[test]
fn check_points_at_the_line_and_column_of_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[store]\npath = \"state.db\"\n\n[sources.shop]\nurl = \"shop.db\"\ntabels = [\"items\"]\n",
    )
    .unwrap();
    let out = run(&["check", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:6:1:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("tabels"), "{stderr}");
}

#[test]
fn check_names_an_unset_variable_where_it_is_used() {
    let out = tidesync()
        .args(["check", example("sqlite-to-sqlite.toml").to_str().unwrap()])
        .env_remove("SOURCE_URL")
        .env("TARGET_URL", "t.db")
        .env("STATE_DIR", "s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("environment variable SOURCE_URL is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("sqlite-to-sqlite.toml:16:"), "{stderr}");
}

#[test]
fn init_writes_a_template_that_checks_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidesync.toml");
    let p = path.to_str().unwrap();
    assert!(run(&["init", p], &[]).status.success());
    let env = [
        ("SOURCE_URL", dir.path()),
        ("TARGET_URL", dir.path()),
        ("STATE_DIR", dir.path()),
    ];
    let check = run(&["check", p], &env);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let again = run(&["init", p], &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn run_reports_a_missing_source_database_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    let target = dir.path().join("t.db");
    let out = run(
        &["run", example("sqlite-to-sqlite.toml").to_str().unwrap()],
        &[
            ("SOURCE_URL", &missing),
            ("TARGET_URL", &target),
            ("STATE_DIR", dir.path()),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pipeline items: source shop: source database"),
        "{stderr}"
    );
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn status_without_a_store_says_run_has_not_started() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &["status", example("sqlite-to-sqlite.toml").to_str().unwrap()],
        &[
            ("SOURCE_URL", dir.path()),
            ("TARGET_URL", dir.path()),
            ("STATE_DIR", dir.path()),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has `tidesync run` started"));
}

#[test]
fn a_restart_before_any_change_does_not_snapshot_again() {
    let setup = ExampleSetup::new();
    let conn = setup.master();
    let env = setup.env();
    let config = example("sqlite-to-sqlite.toml");
    let config = config.to_str().unwrap();
    let head = || -> Option<u64> {
        let out = run(&["status", "--json", config], &env);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let at = text.find("\"head_seq\": ")? + "\"head_seq\": ".len();
        text[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let log = setup.dir.path().join("run.log");
    // First start on an empty table: it records where it starts, then stops.
    let child = spawn(&["run", config], &env, &log);
    wait_for(
        "the start position to be stored",
        std::time::Duration::from_secs(30),
        || {
            let out = run(&["status", config], &env);
            String::from_utf8_lossy(&out.stdout)
                .contains("source position  row id 0")
                .then_some(())
        },
    );
    terminate(&child);
    let mut child = child;
    assert!(child.wait().unwrap().success());
    for id in 1..=100 {
        conn.execute("INSERT INTO items (id, sku) VALUES (?1, 'x')", [id])
            .unwrap();
    }
    let mut child = spawn(&["run", config], &env, &log);
    wait_for(
        "the 100 inserts to be captured",
        std::time::Duration::from_secs(30),
        || head().filter(|h| *h >= 100),
    );
    // Give a wrongly repeated snapshot time to show up, then check nothing travelled twice.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        head(),
        Some(100),
        "rows were captured twice: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    terminate(&child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn drop_removes_triggers_state_and_applied_seq_and_a_new_run_starts_clean() {
    let setup = ExampleSetup::new();
    let (conn, master, replica) = (setup.master(), &setup.master, &setup.replica);
    conn.execute("INSERT INTO items (id, sku) VALUES (1, 'a'), (2, 'b')", [])
        .unwrap();
    let env = setup.env();
    let config = example("sqlite-to-sqlite.toml");
    let config = config.to_str().unwrap();
    let log = setup.dir.path().join("run.log");
    let applied = || -> Option<i64> {
        rusqlite::Connection::open(replica)
            .ok()?
            .query_row(
                "SELECT seq FROM _tidesync_applied WHERE pipeline = 'items'",
                [],
                |r| r.get(0),
            )
            .ok()
    };
    let run_until_applied = |want: i64| {
        let mut child = spawn(&["run", config], &env, &log);
        wait_for(
            "the replica to catch up",
            std::time::Duration::from_secs(30),
            || applied().filter(|s| *s >= want),
        );
        terminate(&child);
        assert!(child.wait().unwrap().success());
    };
    run_until_applied(2);

    let unknown = run(&["drop", config, "nope"], &env);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no pipeline named nope (defined: items)")
    );

    let out = run(&["drop", config, "items"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("dropped the capture triggers on items"),
        "{stdout}"
    );
    let leftovers: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_tidesync%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leftovers, 0, "capture objects left in the master");
    assert_eq!(applied(), None, "the replica still records an applied seq");
    let status = run(&["status", config], &env);
    assert!(String::from_utf8_lossy(&status.stdout).contains("none yet (not started)"));
    // Writes after the drop are not captured by anything...
    conn.execute("INSERT INTO items (id, sku) VALUES (3, 'c')", [])
        .unwrap();
    // ...and a new run starts over with a snapshot and is not refused as "ahead of the store".
    run_until_applied(3);
    let diff =
        tidesync_engine::compare::compare_sqlite_table(master, replica, "items", &["id".into()], 3)
            .unwrap();
    assert!(diff.is_equal(), "{diff:?}");
}
