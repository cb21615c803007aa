//! SQLite -> MariaDB through the real binary and a real MariaDB, with a kill -9 in the middle
//! of a write stream.

#![allow(clippy::unwrap_used)]

use tidesync_testkit::MariaDb;

use crate::util::*;

#[test]
fn sqlite_to_mariadb_survives_kill_9_and_ends_equal() {
    let db = MariaDb::start();
    db.create_database("warehouse").unwrap();
    sqlite_master_survives_kill_9(
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
    let types = db
        .sql(
            "warehouse",
            "SELECT group_concat(concat(column_name, ':', column_type) ORDER BY ordinal_position)
             FROM information_schema.columns WHERE table_schema = 'warehouse' AND table_name = 'items'",
        )
        .unwrap();
    assert_eq!(
        types.trim(),
        "id:bigint(20),sku:longtext,name:longtext,price:double,qty:bigint(20),updated_at:longtext"
    );
}
