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

#[test]
fn sqlite_to_mariadb_survives_kill_9_and_ends_equal() {
    let db = MariaDb::start();
    db.create_database("warehouse").unwrap();
    sqlite_master_survives_kill_9(
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
    assert_eq!(
        item_columns(&db, "warehouse"),
        "id:bigint(20),sku:longtext,name:longtext,price:double,qty:bigint(20),updated_at:longtext"
    );
}

/// `items` rows as `id|sku|name|price|qty|updated_at (UTC, microseconds)` lines.
const PG_ITEMS: &str = "SELECT id, sku, name, price, qty, \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM items ORDER BY id";
const MY_ITEMS: &str = "SELECT id, sku, name, price, qty, \
     DATE_FORMAT(updated_at, '%Y-%m-%d %H:%i:%s.%f') FROM items ORDER BY id";

#[test]
fn postgres_to_mariadb_snapshot_stream_and_kill_9_end_equal() {
    let pg = tidesync_testkit::Postgres::start();
    pg.create_database("erp").unwrap();
    pg.psql(
        "erp",
        "CREATE TABLE items (id bigint PRIMARY KEY, sku text, name text, price numeric(12,2), \
           qty integer, updated_at timestamptz);
         INSERT INTO items SELECT g, 'SKU-' || g, 'Grüße ' || g, g * 0.25, g % 7, \
           timestamptz '2026-01-01 00:00:00+00' + g * interval '1.000001 second' \
         FROM generate_series(1, 3000) g;",
    )
    .unwrap();
    let db = MariaDb::start();
    db.create_database("shop").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (source, target) = (pg.url("erp"), db.url("shop"));
    let env = [
        ("SOURCE_URL", std::path::Path::new(&source)),
        ("TARGET_URL", std::path::Path::new(&target)),
        ("STATE_DIR", state.as_path()),
    ];
    let config = example("postgres-to-mysql.toml");
    let args = ["run", config.to_str().unwrap()];
    let log = dir.path().join("run.log");
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
    terminate(&child);
    assert!(
        child.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        item_columns(&db, "shop"),
        "id:bigint(20),sku:longtext,name:longtext,price:decimal(12,2),qty:int(11),updated_at:datetime(6)"
    );
}
