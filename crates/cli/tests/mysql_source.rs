//! MariaDB -> PostgreSQL and MariaDB -> MariaDB through the real binary, from the examples:
//! a snapshot of existing rows, kill -9 in the middle of the snapshot and of the stream, a
//! restarted source server, DDL and binlog rotation while streaming, `verify` equal at the end.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tidesync_testkit::MariaDb;

use crate::util::*;

const ROWS: i64 = 200_000;

fn source_server() -> MariaDb {
    let db = MariaDb::builder().arg("--binlog-row-metadata=FULL").start();
    db.create_database("shop").unwrap();
    db.sql(
        "shop",
        &format!(
            "SET NAMES utf8mb4; \
             CREATE TABLE items (id BIGINT PRIMARY KEY, sku VARCHAR(32), name VARCHAR(100), \
               price DECIMAL(12,2), qty INT, updated_at DATETIME(6)) DEFAULT CHARSET = utf8mb4; \
             INSERT INTO items SELECT seq, CONCAT('SKU-', seq), CONCAT('Grüße ', seq), \
               seq * 0.25, seq % 7, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq SECOND \
             FROM seq_1_to_{ROWS};"
        ),
    )
    .unwrap();
    db
}

/// Writes a round of a mixed stream: a multi-row transaction of updates and deletes, then
/// inserts.
fn write_round(db: &MariaDb, round: i64) {
    db.sql(
        "shop",
        &format!(
            "START TRANSACTION; \
             UPDATE items SET price = price + 1, updated_at = updated_at + INTERVAL 1 DAY \
               WHERE id % 1000 = {round}; \
             DELETE FROM items WHERE id % 997 = {round}; COMMIT; \
             INSERT INTO items (id, sku, name, price, qty, updated_at) \
               SELECT 1000000 + {round} * 100 + seq, 'new', 'n', 1.5, 1, NOW(6) FROM seq_1_to_50;"
        ),
    )
    .unwrap();
}

struct Run {
    dir: tempfile::TempDir,
    state: PathBuf,
    source: String,
    target: String,
}

impl Run {
    fn new(source: String, target: String) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        Run {
            dir,
            state,
            source,
            target,
        }
    }

    fn env(&self) -> [(&'static str, &Path); 3] {
        [
            ("SOURCE_URL", Path::new(&self.source)),
            ("TARGET_URL", Path::new(&self.target)),
            ("STATE_DIR", self.state.as_path()),
        ]
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("run.log")
    }
}

fn verify_exit(config: &Path, env: &[(&str, &Path)]) -> (Option<i32>, String) {
    let out = run(&["verify", config.to_str().unwrap()], env);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Drives one pipeline from the example `config` through a kill -9 mid-snapshot, a mixed
/// stream with a kill -9, a source server restart, an ALTER TABLE and a binlog rotation, and
/// waits until `target_count` and `target_sum` match the source.
fn snapshot_stream_kill_and_restart(
    db: &mut MariaDb,
    config: &Path,
    run_env: &Run,
    direct_copy: bool,
    target_count: impl Fn() -> Option<i64>,
) {
    let env = run_env.env();
    let log = run_env.log();
    let args = ["run", config.to_str().unwrap()];
    let source_count = |db: &MariaDb| -> i64 {
        db.sql("shop", "SELECT COUNT(*) FROM items")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // Kill -9 while the snapshot is being copied (logging what capture does).
    let mut first_env = env.to_vec();
    first_env.push(("TIDESYNC_LOG", Path::new("tidesync_capture=info,warn")));
    let mut child = spawn(&args, &first_env, &log);
    wait_for("part of the copy", Duration::from_secs(60), || {
        target_count().filter(|n| *n > 0)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // A PostgreSQL target takes the copy as COPY text straight from the source (no log), and
    // takes every chunk.
    let first = log_text(&log);
    assert_eq!(
        first.contains("copying the table directly into the sink"),
        direct_copy,
        "{first}"
    );
    assert!(!first.contains("goes through the log"), "{first}");
    let partial = target_count().unwrap_or(0);
    assert!(
        partial < ROWS,
        "the copy was done before the kill ({partial} rows); make the table larger"
    );
    write_round(db, 0);
    let mut child = spawn(&args, &env, &log);
    // A mixed stream, with a kill -9 and a source restart in the middle of it.
    for round in 1..8 {
        write_round(db, round);
        if round == 3 {
            child.kill().unwrap();
            child.wait().unwrap();
            child = spawn(&args, &env, &log);
        }
        if round == 5 {
            db.restart().unwrap();
        }
        if round == 6 {
            db.sql(
                "shop",
                "ALTER TABLE items ADD COLUMN note VARCHAR(20) NULL; FLUSH BINARY LOGS; \
                 UPDATE items SET note = 'noted' WHERE id % 3 = 0 AND id < 50;",
            )
            .unwrap();
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while target_count() != Some(source_count(db)) {
        if std::time::Instant::now() > deadline {
            let text = log_text(&log);
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            panic!(
                "the stream did not catch up: target {:?}, source {}; log tail:\n{}",
                target_count(),
                source_count(db),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let settled = wait_for("verify equal", Duration::from_secs(60), || {
        let (code, text) = verify_exit(config, &env);
        (code == Some(0)).then_some(text)
    });
    assert!(settled.contains("items"), "{settled}");
    stop_cleanly(&mut child, &log);
    let out = run(&["status", config.to_str().unwrap()], &env);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("binlog behind"), "{said}");
    assert!(said.contains("of binlog not read yet"), "{said}");
}

#[test]
fn mariadb_to_postgres_snapshot_stream_kills_and_source_restart_end_equal() {
    let mut db = source_server();
    let pg = tidesync_testkit::Postgres::start();
    pg.create_database("warehouse").unwrap();
    let run_env = Run::new(db.url("shop"), pg.url("warehouse"));
    let config = example("mysql-to-postgres.toml");
    snapshot_stream_kill_and_restart(&mut db, &config, &run_env, true, || {
        pg.psql("warehouse", "SELECT count(*) FROM items")
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    assert_eq!(
        pg.psql(
            "warehouse",
            "SELECT string_agg(column_name || ':' || format_type(atttypid, atttypmod), ',' \
               ORDER BY attnum) \
             FROM information_schema.columns c JOIN pg_attribute a \
               ON a.attrelid = 'items'::regclass AND a.attname = c.column_name \
             WHERE c.table_name = 'items'"
        )
        .unwrap()
        .trim(),
        "id:bigint,sku:character varying(32),name:character varying(100),\
         price:numeric(12,2),qty:integer,updated_at:timestamp(6) without time zone,\
         note:text"
    );
    // A planted difference is named.
    pg.psql(
        "warehouse",
        "UPDATE items SET name = 'changed' WHERE id = 10",
    )
    .unwrap();
    let (code, text) = verify_exit(&config, &run_env.env());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("different (10): name"), "{text}");
}

#[test]
fn mariadb_to_mariadb_snapshot_stream_kills_and_source_restart_end_equal() {
    let mut db = source_server();
    let target = MariaDb::start();
    target.create_database("replica").unwrap();
    let run_env = Run::new(db.url("shop"), target.url("replica"));
    let config = example("mysql-to-mysql.toml");
    snapshot_stream_kill_and_restart(&mut db, &config, &run_env, false, || {
        target
            .sql("replica", "SELECT COUNT(*) FROM items")
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    // The target has the source's own column types.
    assert_eq!(
        target
            .sql(
                "replica",
                "SELECT group_concat(concat(column_name, ':', column_type) ORDER BY ordinal_position) \
                 FROM information_schema.columns WHERE table_schema = 'replica' AND table_name = 'items'"
            )
            .unwrap()
            .trim(),
        "id:bigint(20),sku:varchar(32),name:varchar(100),price:decimal(12,2),qty:int(11),\
         updated_at:datetime(6),note:longtext"
    );
    target
        .sql("replica", "DELETE FROM items WHERE id = 11")
        .unwrap();
    let (code, text) = verify_exit(&config, &run_env.env());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("missing   (11)"), "{text}");
}

/// Every MySQL type the source reads, copied (the direct copy's `COPY` text) and streamed
/// into PostgreSQL and into MariaDB: `verify` finds both equal.
#[test]
fn every_type_reaches_postgres_and_mariadb_equal() {
    let db = source_server();
    let typed = "CREATE TABLE typed (
        id INT PRIMARY KEY,
        ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
        mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED,
        bi BIGINT, biu BIGINT UNSIGNED, d DECIMAL(30,10), f FLOAT, db DOUBLE,
        c CHAR(5), vc VARCHAR(50), t TEXT, l1 VARCHAR(20) CHARACTER SET latin1,
        bn BINARY(4), vb VARBINARY(10), bl BLOB,
        dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL, y YEAR,
        b1 BIT(1), b12 BIT(12), e ENUM('a','b c'), st SET('x','y','z'), j JSON, n INT NULL
    ) DEFAULT CHARSET = utf8mb4";
    let row = |id: i64| {
        format!(
            "({id}, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, \
             -9223372036854775808, 18446744073709551615, '-12345678901234567890.0123456789', \
             1.5, 0.1, 'ab', 'héllo wörld', 'long\ttext\nline', 'café €', 'ab', x'00ff', \
             x'deadbeef', '2024-02-29', '23:59:59.000001', '2024-02-29 23:59:59.123456', \
             '2024-02-29 23:59:59.654321', 2024, b'1', b'101010101010', 'b c', 'x,z', \
             '{{\"a\": [1, 2.5, \"x\"]}}', NULL), \
             ({}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '0.0000000001', -0.0, 1e300, '', '', '', '', \
             x'00', x'', x'', '1970-01-01', '00:00:00', '1000-01-01 00:00:00', \
             '1970-01-01 00:00:01', 1901, b'0', b'0', 'a', '', '[]', 7)",
            id + 1
        )
    };
    db.sql(
        "shop",
        &format!(
            "SET NAMES utf8mb4; SET time_zone = '+00:00'; {typed}; INSERT INTO typed VALUES {};",
            row(1)
        ),
    )
    .unwrap();
    let pg = tidesync_testkit::Postgres::start();
    pg.create_database("warehouse").unwrap();
    let target = MariaDb::start();
    target.create_database("replica").unwrap();
    for (name, url) in [
        ("mysql-to-postgres.toml", pg.url("warehouse")),
        ("mysql-to-mysql.toml", target.url("replica")),
    ] {
        let run_env = Run::new(db.url("shop"), url);
        let config = run_env.dir.path().join("typed.toml");
        let text = std::fs::read_to_string(example(name))
            .unwrap()
            .replace("tables = [\"items\"]", "tables = [\"typed\"]");
        std::fs::write(&config, text).unwrap();
        let env = run_env.env();
        let log = run_env.log();
        let args = ["run", config.to_str().unwrap()];
        let mut child = spawn(&args, &env, &log);
        // The copy, then the same values streamed.
        wait_for("the copy", Duration::from_secs(60), || {
            let (code, _) = verify_exit(&config, &env);
            (code == Some(0)).then_some(())
        });
        db.sql(
            "shop",
            &format!(
                "SET NAMES utf8mb4; SET time_zone = '+00:00'; DELETE FROM typed WHERE id > 2; \
                 INSERT INTO typed VALUES {};",
                row(if name.contains("postgres") { 3 } else { 5 })
            ),
        )
        .unwrap();
        let settled = wait_for("the stream", Duration::from_secs(60), || {
            let (code, text) = verify_exit(&config, &env);
            (code == Some(0)).then_some(text)
        });
        assert!(settled.contains("typed"), "{settled}");
        stop_cleanly(&mut child, &log);
        // verify compares the values, not just the keys.
        if name.contains("postgres") {
            pg.psql(
                "warehouse",
                "UPDATE typed SET biu = biu - 1, ts = ts + interval '1 microsecond' WHERE id = 1",
            )
            .unwrap();
        } else {
            target
                .sql(
                    "replica",
                    "UPDATE typed SET b12 = b'101010101011' WHERE id = 5",
                )
                .unwrap();
        }
        let (code, text) = verify_exit(&config, &env);
        assert_eq!(code, Some(1), "{text}");
        let expected = if name.contains("postgres") {
            "different (1): biu, ts"
        } else {
            "different (5): b12"
        };
        assert!(text.contains(expected), "{text}");
    }
    assert_eq!(
        pg.psql("warehouse", "SELECT count(*) FROM typed")
            .unwrap()
            .trim(),
        "4"
    );
}

/// `verify --repair` and `backfill` with a MariaDB source: the rows are re-read under a
/// snapshot at their binlog position while the pipeline streams, and put a drifted
/// PostgreSQL target right.
#[test]
fn repair_and_backfill_put_a_drifted_postgres_target_right() {
    let db = MariaDb::builder().arg("--binlog-row-metadata=FULL").start();
    db.create_database("shop").unwrap();
    db.sql(
        "shop",
        "CREATE TABLE items (id BIGINT PRIMARY KEY, sku VARCHAR(32), name VARCHAR(100), \
           price DECIMAL(12,2), qty INT, updated_at DATETIME(6)); \
         INSERT INTO items SELECT seq, CONCAT('SKU-', seq), CONCAT('item ', seq), seq * 0.25, \
           seq % 7, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_3000;",
    )
    .unwrap();
    let pg = tidesync_testkit::Postgres::start();
    pg.create_database("warehouse").unwrap();
    let run_env = Run::new(db.url("shop"), pg.url("warehouse"));
    let env = run_env.env();
    let log = run_env.log();
    let config = example("mysql-to-postgres.toml");
    let cfg = config.to_str().unwrap();
    let mut child = spawn(&["run", cfg], &env, &log);
    wait_for("the copy", Duration::from_secs(60), || {
        (verify_exit(&config, &env).0 == Some(0)).then_some(())
    });
    // Drift behind the pipeline's back: a row lost, a row changed, a row that should not be.
    pg.psql(
        "warehouse",
        "DELETE FROM items WHERE id = 500; UPDATE items SET name = 'drift' WHERE id = 600; \
         INSERT INTO items (id, sku) VALUES (99999, 'extra');",
    )
    .unwrap();
    let out = run(&["verify", cfg, "--repair", "--settle-secs", "5"], &env);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("re-sending 3 keys of items"), "{said}");
    assert!(said.contains("after repair:"), "{said}");

    // A backfill re-sends every row while the source keeps changing, and fixes drift the
    // pipeline knows nothing about.
    pg.psql(
        "warehouse",
        "UPDATE items SET qty = -1 WHERE id % 10 = 0; DELETE FROM items WHERE id > 2990;",
    )
    .unwrap();
    let out = run(&["backfill", cfg, "items", "--no-wait"], &env);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for round in 0..5 {
        db.sql(
            "shop",
            &format!("UPDATE items SET qty = qty + 100 WHERE id % 7 = {round}"),
        )
        .unwrap();
    }
    wait_for(
        "the backfill to be applied",
        Duration::from_secs(60),
        || (verify_exit(&config, &env).0 == Some(0)).then_some(()),
    );
    stop_cleanly(&mut child, &log);
}

/// Direct streaming into MariaDB: a crash right after the target committed a batch (before
/// the store heard of it) applies nothing twice after the restart (a trigger in the target
/// records every write), and the store's log stays empty.
#[test]
fn a_direct_stream_into_mariadb_applies_nothing_twice_across_a_crash() {
    let db = MariaDb::builder().arg("--binlog-row-metadata=FULL").start();
    db.create_database("shop").unwrap();
    db.sql(
        "shop",
        "CREATE TABLE items (id BIGINT PRIMARY KEY, ver INT NOT NULL); \
         INSERT INTO items SELECT seq, 1 FROM seq_1_to_2000;",
    )
    .unwrap();
    let target = MariaDb::start();
    target.create_database("replica").unwrap();
    target
        .sql(
            "replica",
            "CREATE TABLE items (id BIGINT PRIMARY KEY, ver INT NOT NULL); \
             CREATE TABLE audit (id BIGINT, ver INT); \
             CREATE TRIGGER items_ins AFTER INSERT ON items FOR EACH ROW \
               INSERT INTO audit VALUES (NEW.id, NEW.ver); \
             CREATE TRIGGER items_upd AFTER UPDATE ON items FOR EACH ROW \
               INSERT INTO audit VALUES (NEW.id, NEW.ver);",
        )
        .unwrap();
    let run_env = Run::new(db.url("shop"), target.url("replica"));
    let mut env = run_env.env().to_vec();
    env.push(("TIDESYNC_LOG", Path::new("info")));
    let config = example("mysql-to-mysql.toml");
    let args = ["run", config.to_str().unwrap()];
    let rows = |m: &MariaDb, d: &str| m.sql(d, "SELECT id, ver FROM items ORDER BY id").ok();
    let mut armed = env.clone();
    armed.push(("TIDESYNC_FAILPOINTS", Path::new("after-apply:3")));
    let run1 = run_env.dir.path().join("run1.log");
    let mut child = spawn(&args, &armed, &run1);
    wait_for("the copy", Duration::from_secs(60), || {
        (rows(&target, "replica") == rows(&db, "shop")).then_some(())
    });
    for k in 0..10 {
        db.sql(
            "shop",
            &format!("UPDATE items SET ver = ver + 1 WHERE id % 10 = {k}"),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_direct_stream_failpoint(&mut child, &run1);
    let run2 = run_env.dir.path().join("run2.log");
    let mut child = spawn(&args, &env, &run2);
    wait_for("the remaining updates", Duration::from_secs(60), || {
        (rows(&target, "replica") == rows(&db, "shop")).then_some(())
    });
    stop_cleanly(&mut child, &run2);
    assert!(
        log_text(&run2).contains("the target has applied a direct stream past the store's record"),
        "{}",
        log_text(&run2)
    );
    // Every version was written once: the copy's 2,000 rows and the 2,000 updates.
    let twice = target
        .sql(
            "replica",
            "SELECT COUNT(*) FROM (SELECT id, ver FROM audit GROUP BY id, ver \
             HAVING COUNT(*) > 1) d",
        )
        .unwrap();
    assert_eq!(twice.trim(), "0");
    assert_eq!(
        target
            .sql("replica", "SELECT COUNT(*) FROM audit")
            .unwrap()
            .trim(),
        "4000"
    );
    let logged: i64 = rusqlite::Connection::open(run_env.state.join("tidesync.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM changes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(logged, 0, "the direct stream wrote to the log");
}
