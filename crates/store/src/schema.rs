//! The store's tables and connection settings, and their migrations.

use rusqlite::Connection;

use crate::StoreError;

/// Bumped whenever the tables change; a store from a newer build is refused.
const VERSION: i64 = 3;

pub(crate) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is durable before we acknowledge the source that produced it.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

pub(crate) fn configure_reader(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Version 2 added `fingerprints` (the `diff` capture mode's row hashes); a version 1 store
/// gets the table, nothing else changes. Version 3 added `chunks` (per key range of a
/// stream's fingerprints, their count and the XOR of their database hashes) and the triggers
/// that keep it equal to `fingerprints` in every transaction that writes them; a version 2
/// store gets them with no chunks, which the `diff` source makes after its next full run.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let e = StoreError::sqlite;
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(e("reading the schema version"))?;
    if found > VERSION {
        return Err(StoreError::Version {
            found,
            known: VERSION,
        });
    }
    if found == VERSION {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE IF NOT EXISTS changes (
             pipeline TEXT NOT NULL, seq INTEGER NOT NULL, stream TEXT NOT NULL, op INTEGER NOT NULL,
             key BLOB NOT NULL, before BLOB, after BLOB, commit_us INTEGER NOT NULL,
             position TEXT, txn TEXT,
             PRIMARY KEY (pipeline, seq)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS current (
             pipeline TEXT NOT NULL, stream TEXT NOT NULL, key BLOB NOT NULL, row BLOB NOT NULL,
             seq INTEGER NOT NULL, hash INTEGER NOT NULL,
             PRIMARY KEY (pipeline, stream, key)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS cursors (
             pipeline TEXT NOT NULL, consumer TEXT NOT NULL, seq INTEGER NOT NULL,
             updated_us INTEGER NOT NULL,
             PRIMARY KEY (pipeline, consumer)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS positions (
             pipeline TEXT PRIMARY KEY, position TEXT, head INTEGER NOT NULL,
             head_commit_us INTEGER, updated_us INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS fingerprints (
             pipeline TEXT NOT NULL, stream TEXT NOT NULL, ord BLOB NOT NULL, key BLOB NOT NULL,
             hash INTEGER NOT NULL, raw INTEGER,
             PRIMARY KEY (pipeline, stream, ord)) WITHOUT ROWID;
         PRAGMA user_version = 2;
         COMMIT;",
    )
    .map_err(e("creating tables"))?;
    conn.execute_batch(crate::chunks::CREATE)
        .map_err(e("creating the fingerprint chunks"))
}
