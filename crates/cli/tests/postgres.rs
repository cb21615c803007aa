#![allow(clippy::unwrap_used)]

//! SQLite -> PostgreSQL through the real binary and a real PostgreSQL, with a kill -9 in the
//! middle of a write stream.

use tidesync_testkit::Postgres;

use crate::util::*;

#[test]
fn sqlite_to_postgres_survives_kill_9_and_ends_equal() {
    let pg = Postgres::start();
    pg.create_database("warehouse").unwrap();
    sqlite_master_survives_kill_9(
        "sqlite-to-postgres.toml",
        &pg.url("warehouse"),
        || {
            pg.psql("warehouse", "SELECT id, sku, qty FROM items ORDER BY id")
                .ok()
        },
        || {
            pg.psql("warehouse", "SELECT seq FROM _tidesync_applied")
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
        },
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
