//! SQLite -> MariaDB and PostgreSQL -> MariaDB through the real binary and real servers, with a
//! kill -9 in the middle of a write stream, from the examples.

#![allow(clippy::unwrap_used)]

use tidesync_testkit::MariaDb;

use crate::util::*;

/// `name:type` of the columns of `items` in database `schema`, in order.
fn item_columns(db: &MariaDb, schema: &str) -> String {
    db.sql(
        schema,
        &format!(
            "SELECT group_concat(concat(column_name, ':', column_type) ORDER BY ordinal_position)
             FROM information_schema.columns WHERE table_schema = '{schema}' AND table_name = 'items'"
        ),
    )
    .unwrap()
    .trim()
    .to_owned()
}

/// `verify` finds the tables equal; after `plant` changes the target it exits 1 and names
/// each of `expected` (lines of its report).
fn verify_equal_then_finds(
    config: &std::path::Path,
    env: &[(&str, &std::path::Path)],
    plant: impl FnOnce(),
    expected: &[&str],
) {
    let out = run(&["verify", config.to_str().unwrap()], env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    plant();
    let out = run(
        &["verify", config.to_str().unwrap(), "--settle-secs", "1"],
        env,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for line in expected {
        assert!(text.contains(line), "{line:?} not in {text}");
    }
}

#[test]
fn sqlite_to_mariadb_survives_kill_9_and_ends_equal() {
    let db = MariaDb::start();
    db.create_database("warehouse").unwrap();
    let run_dir = sqlite_master_survives_kill_9(
        "sqlite-to-mysql.toml",
        &db.url("warehouse"),
        || {
            db.sql("warehouse", "SELECT id, sku, qty FROM items ORDER BY id")
                .ok()
                .map(|rows| rows.replace('\t', "|"))
        },
        || {
            db.sql("warehouse", "SELECT seq FROM _tidesync_applied")
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
        },
    );
    // The table was created with the mapped types.
    // verify reads the MariaDB target: equal, then a planted difference is named.
    let dir = run_dir;
    let (master, state) = (dir.path().join("shop.db"), dir.path().join("state"));
    let url = db.url("warehouse");
    let env = [
        ("SOURCE_URL", master.as_path()),
        ("TARGET_URL", std::path::Path::new(&url)),
        ("STATE_DIR", state.as_path()),
    ];
    let config = example("sqlite-to-mysql.toml");
    verify_equal_then_finds(
        &config,
        &env,
        || {
            db.sql(
                "warehouse",
                "UPDATE items SET qty = qty + 1000 WHERE id = 5; DELETE FROM items WHERE id = 6",
            )
            .unwrap();
        },
        &["different (5): qty", "missing   (6)"],
    );
    assert_eq!(
        item_columns(&db, "warehouse"),
        "id:bigint(20),sku:longtext,name:longtext,price:double,qty:bigint(20),updated_at:longtext"
    );
}

/// A PostgreSQL database `erp` set up by some SQL and an empty MariaDB database `shop`, for
/// `examples/postgres-to-mysql.toml`.
struct PgToMariaDb {
    pg: tidesync_testkit::Postgres,
    db: MariaDb,
    dir: tempfile::TempDir,
    state: std::path::PathBuf,
    source: String,
    target: String,
}

impl PgToMariaDb {
    fn new(setup_sql: &str) -> PgToMariaDb {
        let pg = tidesync_testkit::Postgres::start();
        pg.create_database("erp").unwrap();
        pg.psql("erp", setup_sql).unwrap();
        let db = MariaDb::start();
        db.create_database("shop").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (source, target) = (pg.url("erp"), db.url("shop"));
        PgToMariaDb {
            pg,
            db,
            dir,
            state,
            source,
            target,
        }
    }

    fn env(&self) -> [(&'static str, &std::path::Path); 3] {
        [
            ("SOURCE_URL", std::path::Path::new(&self.source)),
            ("TARGET_URL", std::path::Path::new(&self.target)),
            ("STATE_DIR", self.state.as_path()),
        ]
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("run.log")
    }
}

/// `items` rows as `id|sku|name|price|qty|updated_at (UTC, microseconds)` lines.
const PG_ITEMS: &str = "SELECT id, sku, name, price, qty, \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM items ORDER BY id";
const MY_ITEMS: &str = "SELECT id, sku, name, price, qty, \
     DATE_FORMAT(updated_at, '%Y-%m-%d %H:%i:%s.%f') FROM items ORDER BY id";

#[test]
fn postgres_to_mariadb_snapshot_stream_and_kill_9_end_equal() {
    let setup = PgToMariaDb::new(
        "CREATE TABLE items (id bigint PRIMARY KEY, sku text, name text, price numeric(12,2), \
           qty integer, updated_at timestamptz);
         INSERT INTO items SELECT g, 'SKU-' || g, 'Grüße ' || g, g * 0.25, g % 7, \
           timestamptz '2026-01-01 00:00:00+00' + g * interval '1.000001 second' \
         FROM generate_series(1, 3000) g;",
    );
    let (pg, db, env, log) = (&setup.pg, &setup.db, setup.env(), setup.log());
    let config = example("postgres-to-mysql.toml");
    let args = ["run", config.to_str().unwrap()];
    let target_rows = || db.sql("shop", MY_ITEMS).ok().map(|r| r.replace('\t', "|"));
    let equal = || {
        let expected = pg.psql("erp", PG_ITEMS).ok()?;
        (target_rows()?.trim_end() == expected.trim_end()).then_some(())
    };
    let mut child = spawn(&args, &env, &log);
    wait_for("the copy", std::time::Duration::from_secs(60), equal);
    // A mixed stream, with a kill -9 in the middle of it.
    for round in 0..6 {
        pg.psql(
            "erp",
            &format!(
                "BEGIN; UPDATE items SET price = price + 1, updated_at = updated_at + interval '1 day' \
                   WHERE id % 5 = {round}; DELETE FROM items WHERE id % 97 = {round}; COMMIT; \
                 INSERT INTO items SELECT 10000 + {round} * 100 + g, 'new', 'n', 1.5, 1, now() \
                   FROM generate_series(1, 50) g;"
            ),
        )
        .unwrap();
        if round == 2 {
            child.kill().unwrap();
            child.wait().unwrap();
            child = spawn(&args, &env, &log);
        }
    }
    wait_for("the stream", std::time::Duration::from_secs(60), equal);
    // verify compares PostgreSQL's values with MariaDB's (numeric, timestamptz, text).
    verify_equal_then_finds(
        &config,
        &env,
        || {
            db.sql(
                "shop",
                "UPDATE items SET updated_at = updated_at + INTERVAL 1 MICROSECOND WHERE id = 10",
            )
            .unwrap();
        },
        &["different (10): updated_at"],
    );
    stop_cleanly(&mut child, &log);
    assert_eq!(
        item_columns(db, "shop"),
        "id:bigint(20),sku:longtext,name:longtext,price:decimal(12,2),qty:int(11),updated_at:datetime(6)"
    );
}

/// Every PostgreSQL type the sink maps, created by the sink in MariaDB: verify finds the
/// tables equal (no false difference from the conversions) and names a changed value.
#[test]
fn verify_reads_every_mapped_type_back_equal_from_mariadb() {
    let setup = PgToMariaDb::new(
        "CREATE TABLE items (id integer PRIMARY KEY, flag boolean, small smallint, big bigint, \
           r real, d double precision, n numeric, p numeric(10,3), vc varchar(20), ch char(5), \
           t text, b bytea, j json, jb jsonb, u uuid, day date, tm time, ts timestamp, \
           tz timestamptz, arr text[]);
         INSERT INTO items SELECT g, g % 2 = 0, g, g::bigint * 1000000000, g / 3.0, g / 7.0, g / 8.0, \
           g / 9.0, 'v' || g, 'c' || (g % 10), 'Grüße ' || g, decode(md5(g::text), 'hex'), \
           json_build_object('b', g, 'a', 'x'), jsonb_build_object('n', g, 'l', ARRAY[1, 2]), \
           md5(g::text)::uuid, date '2026-01-01' + g, time '10:00' + g * interval '1.5 s', \
           timestamp '2026-01-01' + g * interval '1.000001 s', \
           timestamptz '2026-01-01 00:00:00+02' + g * interval '1 minute', ARRAY['a', 'b c'] \
         FROM generate_series(1, 500) g;
         INSERT INTO items (id) VALUES (1000);",
    );
    let (db, env, log) = (&setup.db, setup.env(), setup.log());
    let config = example("postgres-to-mysql.toml");
    let mut child = spawn(&["run", config.to_str().unwrap()], &env, &log);
    wait_for("the copy", std::time::Duration::from_secs(60), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "tidesync exited with {status}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        (db.sql("shop", "SELECT count(*) FROM items").ok()?.trim() == "501").then_some(())
    });
    verify_equal_then_finds(
        &config,
        &env,
        || {
            db.sql(
                "shop",
                "UPDATE items SET r = r + 1, jb = '{\"n\": 0}' WHERE id = 7",
            )
            .unwrap();
        },
        &["different (7): r, jb"],
    );
    stop_cleanly(&mut child, &log);
}
