#![allow(clippy::unwrap_used)]

//! Table and column renames (`[sinks.NAME.tables."STREAM"]`) through the real binary: rows
//! land in the renamed table and columns, and `verify` compares the source table with the
//! renamed copy (equal, then a planted difference). SQLite to SQLite, and PostgreSQL to
//! PostgreSQL with a `schema.table` stream.

use std::path::Path;
use std::process::{Child, Output};
use std::time::Duration;

use rusqlite::Connection;
use tidesync_testkit::Postgres;

use crate::util::*;

const SQLITE_CONFIG: &str = r#"
[store]
path = "${STATE_DIR}/tidesync.db"

[sources.shop]
url = "${SOURCE_URL}"
tables = ["items"]
poll_interval_ms = 10

[sinks.replica]
url = "${TARGET_URL}"

[sinks.replica.tables.items]
name = "products"
columns = { sku = "code", name = "title" }

[pipelines.items]
source = "shop"
sinks = ["replica"]
"#;

fn explain(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check_alive(child: &mut Child, log: &Path) {
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "tidesync run exited early with {status}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

fn stop(mut child: Child, log: &Path) {
    terminate(&child);
    assert!(
        child.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn sqlite_rows_land_in_the_renamed_table_and_columns_and_verify_compares_them() {
    let setup = ExampleSetup::new();
    setup
        .master()
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
             INSERT INTO items SELECT i, 'SKU-' || i, 'item ' || i, '12.50', i % 10, NULL FROM n",
            [],
        )
        .unwrap();
    let config = setup.dir.path().join("rename.toml");
    std::fs::write(&config, SQLITE_CONFIG).unwrap();
    let config = config.to_str().unwrap();
    let log = setup.dir.path().join("run.log");
    let mut child = spawn(&["run", config], &setup.env(), &log);
    // Changes while streaming too: an update of a renamed column, a delete.
    setup
        .master()
        .execute_batch(
            "UPDATE items SET name = 'renamed ' || id WHERE id % 7 = 0;
             DELETE FROM items WHERE id % 11 = 0;
             INSERT INTO items (id, sku, name, qty) VALUES (1000, 'NEW', 'new one', 3);",
        )
        .unwrap();
    let source = "SELECT id, sku, name, price, qty FROM items ORDER BY id";
    let target = "SELECT id, code, title, price, qty FROM products ORDER BY id";
    let expected = sqlite_lines(&setup.master, source).unwrap();
    wait_for(
        "the renamed copy to equal the source",
        Duration::from_secs(60),
        || {
            check_alive(&mut child, &log);
            (sqlite_lines(&setup.replica, target)? == expected).then_some(())
        },
    );
    stop(child, &log);
    // Nothing went to a table of the source's name.
    let items = Connection::open(&setup.replica)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'items'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    assert_eq!(items, 0);

    let out = run(&["verify", config], &setup.env());
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("items -> replica: equal"), "{text}");

    Connection::open(&setup.replica)
        .unwrap()
        .execute_batch(
            "UPDATE products SET title = 'planted' WHERE id = 5;
             DELETE FROM products WHERE id = 8;",
        )
        .unwrap();
    let out = run(&["verify", config, "--settle-secs", "1"], &setup.env());
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("    "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    // Columns are named as in the source.
    assert_eq!(
        listed,
        ["different (5): name", "missing (8)"],
        "{}",
        explain(&out)
    );
}

#[test]
fn postgres_schema_table_stream_is_written_to_a_renamed_table() {
    let pg = Postgres::start();
    pg.create_database("erp").unwrap();
    pg.create_database("shop").unwrap();
    pg.psql(
        "erp",
        "CREATE SCHEMA sales; \
         CREATE TABLE sales.orders (id bigint PRIMARY KEY, cust text NOT NULL, total numeric(12,2)); \
         INSERT INTO sales.orders SELECT g, 'c' || (g % 50), g * 1.5 FROM generate_series(1, 2000) g;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (source, target) = (pg.url("erp"), pg.url("shop"));
    let env = [
        ("SOURCE_URL", Path::new(&source)),
        ("TARGET_URL", Path::new(&target)),
        ("STATE_DIR", state.as_path()),
    ];
    let config = dir.path().join("rename.toml");
    std::fs::write(
        &config,
        r#"
[store]
path = "${STATE_DIR}/tidesync.db"

[sources.erp]
url = "${SOURCE_URL}"
tables = ["sales.orders"]
linger_ms = 0

[sinks.shop]
url = "${TARGET_URL}"
create_tables = true

[sinks.shop.tables."sales.orders"]
name = "orders"
columns = { cust = "customer_id" }

[pipelines.orders]
source = "erp"
sinks = ["shop"]
"#,
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let log = dir.path().join("run.log");
    let mut child = spawn(&["run", config], &env, &log);
    pg.psql(
        "erp",
        "BEGIN; UPDATE sales.orders SET cust = 'moved' WHERE id % 9 = 0; \
         DELETE FROM sales.orders WHERE id % 13 = 0; COMMIT; \
         INSERT INTO sales.orders VALUES (5000, 'late', 2.25);",
    )
    .unwrap();
    let expected = pg
        .psql(
            "erp",
            "SELECT id, cust, total FROM sales.orders ORDER BY id",
        )
        .unwrap();
    wait_for(
        "the renamed copy to equal the source",
        Duration::from_secs(90),
        || {
            check_alive(&mut child, &log);
            let got = pg
                .psql(
                    "shop",
                    "SELECT id, customer_id, total FROM orders ORDER BY id",
                )
                .ok()?;
            (got == expected).then_some(())
        },
    );
    // Created with the source's types under the target's names; nothing under the stream's.
    let columns = pg
        .psql(
            "shop",
            "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) \
             FROM information_schema.columns WHERE table_name = 'orders'",
        )
        .unwrap();
    assert_eq!(columns.trim(), "id bigint, customer_id text, total numeric");
    let stray = pg
        .psql(
            "shop",
            "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE '%sales%'",
        )
        .unwrap();
    assert_eq!(stray.trim(), "0");

    let out = run(&["verify", config], &env);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sales.orders -> shop: equal"), "{text}");

    pg.psql(
        "shop",
        "UPDATE orders SET customer_id = 'planted' WHERE id = 10",
    )
    .unwrap();
    let out = run(&["verify", config, "--settle-secs", "2"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("different (10): cust"), "{}", explain(&out));
    stop(child, &log);
}
