//! The benchmark table `items`, its rows, and how two copies of it are compared.
//!
//! The table has the shape of the project's examples (`examples/*.toml`, `crates/cli/tests`),
//! with PostgreSQL types: `items (id bigint primary key, sku text, name text, price
//! numeric(12,2), qty integer, updated_at timestamptz)`. The target's table is created by the
//! benchmark with the same definition before either side runs (native logical replication
//! requires it, and tidesync then gets the same table), so both sides write into the same
//! indexed table.
//!
//! Rows are generated on the server (`generate_series`), deterministically from their id:
//! `SKU-000042`, a ~20-character name, a price like `12.99`, a quantity, a timestamp. That is
//! the fastest way to load a million rows, and it keeps the client out of the measured
//! writers' costs except for the round trips.
//!
//! Two copies are equal when their [`Fingerprint`]s are: row count, max id, and the sum of
//! `hashtext(row::text)` over all rows (order-independent, and it changes with any column of
//! any row; both sessions use the same TimeZone and DateStyle, see [`super::client`]).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use super::client::Db;
use super::watch::{Deadline, Monitor};
use crate::report::thousands;

/// The table, on both servers.
pub const CREATE_TABLE: &str = "CREATE TABLE items (id bigint PRIMARY KEY, sku text, name text, \
     price numeric(12,2), qty integer, updated_at timestamptz)";

/// `INSERT` of the generated rows `$1..=$2`, with `updated_at` given by the SQL expression
/// `updated_at` (over the id `g`).
pub fn insert_sql(updated_at: &str) -> String {
    format!(
        "INSERT INTO items (id, sku, name, price, qty, updated_at) \
         SELECT g, \
                'SKU-' || lpad(g::text, greatest(6, length(g::text)), '0'), \
                (ARRAY['Roasted','Organic','Smoked','Classic','Spiced','Golden','Rustic','Toasted'])[1 + g % 8] \
                  || ' ' || (ARRAY['coffee','oat milk','almonds','rye tea','bagels','granola','honey','cocoa'])[1 + (g / 8) % 8] \
                  || ' ' || lpad((g % 10000)::text, 4, '0'), \
                ((99 + (g * 7919) % 9900) / 100.0)::numeric(12,2), \
                ((g * 104729) % 1000)::integer, \
                {updated_at} \
         FROM generate_series($1::bigint, $2::bigint) AS g"
    )
}

/// A deterministic `updated_at`: 2024-01-01 plus `id` seconds.
pub const FIXED_UPDATED_AT: &str = "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'";

/// The update of one row by the streaming benchmark: every column but the key stays derived
/// from the old row, so both sides must end equal whatever the order of concurrent writers.
pub const UPDATE_SQL: &str =
    "UPDATE items SET qty = qty + 1, updated_at = updated_at + interval '1 day' WHERE id = $1";

/// Inserts the generated rows `first..=last` in one statement (one transaction).
pub async fn insert_range(db: &Db, sql: &str, first: i64, last: i64) -> anyhow::Result<u64> {
    db.execute(sql, &[&first, &last])
        .await
        .with_context(|| format!("inserting rows {first}..={last}"))
}

/// Loads rows `1..=n` (in 100,000-row transactions) and returns the time it took.
pub async fn load(db: &Db, n: u64, label: &str) -> anyhow::Result<Duration> {
    const CHUNK: u64 = 100_000;
    let sql = insert_sql(FIXED_UPDATED_AT);
    let statement = db.prepare(&sql).await.context("preparing the load")?;
    let started = Instant::now();
    let mut shown = Instant::now();
    let mut next = 1;
    while next <= n {
        let last = n.min(next + CHUNK - 1);
        db.execute(&statement, &[&(next as i64), &(last as i64)])
            .await
            .with_context(|| format!("{label}: inserting rows {next}..={last}"))?;
        next = last + 1;
        if shown.elapsed() >= Duration::from_secs(1) || next > n {
            shown = Instant::now();
            eprintln!(
                "  {label:<34} {:>6.1} s  {:>11} / {} rows",
                started.elapsed().as_secs_f64(),
                thousands((next - 1) as f64),
                thousands(n as f64)
            );
        }
    }
    Ok(started.elapsed())
}

/// After a load: VACUUM (sets hint bits and the visibility map, so no later reader pays for
/// them), ANALYZE, and a CHECKPOINT, so no measured window starts with a backlog of dirty
/// pages.
pub async fn settle(db: &Db) -> anyhow::Result<()> {
    db.batch_execute("VACUUM (ANALYZE) items")
        .await
        .context("VACUUM (ANALYZE) items")?;
    db.batch_execute("CHECKPOINT").await.context("CHECKPOINT")
}

/// What two equal copies of `items` have in common.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub rows: i64,
    pub max_id: i64,
    /// `sum(hashtext(row::text))`, as text (a numeric).
    pub checksum: String,
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows, max id {}, checksum {}",
            self.rows, self.max_id, self.checksum
        )
    }
}

/// Reads the fingerprint of `items` (a full scan).
pub async fn fingerprint(db: &Db) -> anyhow::Result<Fingerprint> {
    let row = db
        .query_one(
            "SELECT count(*), coalesce(max(id), -1), coalesce(sum(hashtext(t::text)::bigint), 0)::text \
             FROM items AS t",
            &[],
        )
        .await
        .context("reading the fingerprint of items")?;
    Ok(Fingerprint {
        rows: row.get(0),
        max_id: row.get(1),
        checksum: row.get(2),
    })
}

/// Fails unless the target's `items` equals the source's; returns the fingerprint.
pub async fn ensure_equal(source: &Db, target: &Db, run: &str) -> anyhow::Result<Fingerprint> {
    let (s, t) = tokio::try_join!(fingerprint(source), fingerprint(target))?;
    ensure!(
        s == t,
        "verification of {run} failed: the target's items ({t}) differs from the source's ({s})"
    );
    Ok(s)
}

/// Row `id`'s text (`items::text`), None if there is no such row. A primary-key lookup: cheap
/// enough to poll every few milliseconds.
pub async fn row_text(db: &Db, id: i64) -> anyhow::Result<Option<String>> {
    let row = db
        .query_opt("SELECT t::text FROM items AS t WHERE id = $1", &[&id])
        .await
        .with_context(|| format!("reading row {id} of items"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Waits until the target's row `id` equals the source's (which must exist); returns when
/// (from the deadline's start: the time before the poll that saw it).
///
/// Both sides apply the source's transactions in commit order, so once the row written by the
/// workload's last transaction is there, every earlier transaction is too (the full
/// [`Fingerprint`] comparison afterwards proves it).
pub async fn wait_row_equal(
    source: &Db,
    target: &Db,
    id: i64,
    monitor: &mut Monitor,
    deadline: &Deadline,
) -> anyhow::Result<Duration> {
    let want = row_text(source, id)
        .await?
        .with_context(|| format!("the source has no row {id} to wait for"))?;
    loop {
        let asked_at = deadline.elapsed();
        if row_text(target, id).await?.as_deref() == Some(want.as_str()) {
            return Ok(asked_at);
        }
        deadline.tick(monitor).await?;
    }
}

/// The size of `items` with its index, in bytes.
pub async fn table_bytes(db: &Db) -> anyhow::Result<i64> {
    let row = db
        .query_one("SELECT pg_total_relation_size('items')", &[])
        .await
        .context("reading the size of items")?;
    Ok(row.get(0))
}

/// The largest id (an index lookup), -1 for an empty table.
pub async fn max_id(db: &Db) -> anyhow::Result<i64> {
    let row = db
        .query_one("SELECT coalesce(max(id), -1) FROM items", &[])
        .await
        .context("reading max(id) of items")?;
    Ok(row.get(0))
}

/// `count(*)` of items.
pub async fn count(db: &Db) -> anyhow::Result<i64> {
    let row = db
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .context("counting items")?;
    Ok(row.get(0))
}

/// `updates` distinct ids spread over `1..=rows` (a stride coprime with
/// `rows`, so consecutive updates touch distant pages, as a real workload would).
pub fn update_ids(rows: u64, updates: u64) -> Vec<i64> {
    let stride = [7919_u64, 7907, 7901, 1]
        .into_iter()
        .find(|s| gcd(*s, rows) == 1)
        .unwrap_or(1);
    (0..updates.min(rows))
        .map(|i| (1 + (i * stride) % rows) as i64)
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_ids_are_distinct_and_in_range() {
        for rows in [1, 7919, 100_000, 7919 * 7907] {
            let ids = update_ids(rows, 5000);
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len() as u64, rows.min(5000), "rows {rows}");
            assert!(ids.iter().all(|id| (1..=rows as i64).contains(id)));
        }
    }
}
