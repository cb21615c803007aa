//! Table `chunks`: a `diff` stream's fingerprints cut into key ranges, each with its row count
//! and the XOR of the rows' database hashes (`fingerprints.raw`), so that a comparison can ask
//! the source database for the same sums per range and skip every range whose sums agree
//! without reading it row by row.
//!
//! A chunk starts at `lo` (an order-preserving key, as `fingerprints.ord`; the first chunk
//! starts at the empty key) and ends where the next one starts; `bound` is the key of the row
//! it was cut at (NULL for the first), which the source database compares its rows with.
//! Triggers on `fingerprints` keep `rows`, `sum` and `unknown` (rows without a database hash)
//! exact in the same transaction as any write of a fingerprint, whatever writes it; the cut
//! points themselves only move in [`rechunk`], which recomputes every sum in one transaction.
//! A stream without chunks is compared row by row.
//!
//! SQLite has no XOR operator: `(a | b) - (a & b)` is one, and never overflows (the bits
//! subtracted are a subset of the bits they are subtracted from).

use rusqlite::{Connection, OptionalExtension, params};
use tidesync_core::Key;
use tidesync_core::codec::binary::decode_key;

use crate::StoreError;

pub(crate) const CREATE: &str = "BEGIN;
     CREATE TABLE IF NOT EXISTS chunks (
         pipeline TEXT NOT NULL, stream TEXT NOT NULL, lo BLOB NOT NULL, bound BLOB,
         rows INTEGER NOT NULL, sum INTEGER NOT NULL, unknown INTEGER NOT NULL,
         PRIMARY KEY (pipeline, stream, lo)) WITHOUT ROWID;
     CREATE TRIGGER IF NOT EXISTS chunks_insert AFTER INSERT ON fingerprints BEGIN
         UPDATE chunks SET rows = rows + 1,
             sum = (sum | coalesce(NEW.raw, 0)) - (sum & coalesce(NEW.raw, 0)),
             unknown = unknown + (NEW.raw IS NULL)
         WHERE pipeline = NEW.pipeline AND stream = NEW.stream AND lo = (
             SELECT lo FROM chunks WHERE pipeline = NEW.pipeline AND stream = NEW.stream
             AND lo <= NEW.ord ORDER BY lo DESC LIMIT 1);
     END;
     CREATE TRIGGER IF NOT EXISTS chunks_delete AFTER DELETE ON fingerprints BEGIN
         UPDATE chunks SET rows = rows - 1,
             sum = (sum | coalesce(OLD.raw, 0)) - (sum & coalesce(OLD.raw, 0)),
             unknown = unknown - (OLD.raw IS NULL)
         WHERE pipeline = OLD.pipeline AND stream = OLD.stream AND lo = (
             SELECT lo FROM chunks WHERE pipeline = OLD.pipeline AND stream = OLD.stream
             AND lo <= OLD.ord ORDER BY lo DESC LIMIT 1);
     END;
     CREATE TRIGGER IF NOT EXISTS chunks_update AFTER UPDATE OF raw ON fingerprints
     WHEN OLD.raw IS NOT NEW.raw BEGIN
         UPDATE chunks SET
             sum = (((sum | coalesce(OLD.raw, 0)) - (sum & coalesce(OLD.raw, 0)))
                    | coalesce(NEW.raw, 0))
                 - (((sum | coalesce(OLD.raw, 0)) - (sum & coalesce(OLD.raw, 0)))
                    & coalesce(NEW.raw, 0)),
             unknown = unknown + (NEW.raw IS NULL) - (OLD.raw IS NULL)
         WHERE pipeline = NEW.pipeline AND stream = NEW.stream AND lo = (
             SELECT lo FROM chunks WHERE pipeline = NEW.pipeline AND stream = NEW.stream
             AND lo <= NEW.ord ORDER BY lo DESC LIMIT 1);
     END;
     CREATE TABLE IF NOT EXISTS diff_streams (
         pipeline TEXT NOT NULL, stream TEXT NOT NULL, mapping TEXT NOT NULL,
         PRIMARY KEY (pipeline, stream)) WITHOUT ROWID;
     PRAGMA user_version = 3;
     COMMIT;";

/// One key range of a stream's fingerprints (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    /// Where it starts (order-preserving key, inclusive); empty for the first chunk.
    pub lo: Vec<u8>,
    /// The key of the row it was cut at; `None` for the first chunk.
    pub bound: Option<Key>,
    /// Fingerprints in the range.
    pub rows: u64,
    /// XOR of their database hashes.
    pub sum: i64,
    /// Fingerprints in the range without a database hash: while there are any, the range
    /// must be compared row by row.
    pub unknown: u64,
}

pub(crate) fn list(
    conn: &Connection,
    pipeline: &str,
    stream: &str,
) -> Result<Vec<StoredChunk>, StoreError> {
    let e = || StoreError::sqlite("reading fingerprint chunks");
    let mut st = conn
        .prepare_cached(
            "SELECT lo, bound, rows, sum, unknown FROM chunks WHERE pipeline = ?1 AND stream = ?2
             ORDER BY lo",
        )
        .map_err(e())?;
    let mut rows = st.query(params![pipeline, stream]).map_err(e())?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(e())? {
        let bound: Option<Vec<u8>> = r.get(1).map_err(e())?;
        let bound = bound
            .map(|b| decode_key(&b))
            .transpose()
            .map_err(|source| StoreError::Corrupt {
                pipeline: pipeline.to_owned(),
                seq: 0,
                source,
            })?;
        out.push(StoredChunk {
            lo: r.get(0).map_err(e())?,
            bound,
            rows: r.get::<_, i64>(2).map_err(e())? as u64,
            sum: r.get(3).map_err(e())?,
            unknown: r.get::<_, i64>(4).map_err(e())? as u64,
        });
    }
    Ok(out)
}

/// Cuts `stream`'s fingerprints into chunks of `chunk_rows` rows (the last may be smaller), in
/// one transaction that replaces the old chunks and computes every sum from the fingerprints
/// themselves. Returns `(chunks, rows)`: no chunks when the stream has fewer than two chunks'
/// worth of rows (comparing it row by row costs no more).
pub(crate) fn rechunk(
    conn: &mut Connection,
    pipeline: &str,
    stream: &str,
    chunk_rows: u64,
) -> Result<(usize, u64), StoreError> {
    let e = || StoreError::sqlite("cutting fingerprints into chunks");
    let chunk_rows = chunk_rows.max(1);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(e())?;
    tx.execute(
        "DELETE FROM chunks WHERE pipeline = ?1 AND stream = ?2",
        params![pipeline, stream],
    )
    .map_err(e())?;
    let total: i64 = tx
        .query_row(
            "SELECT count(*) FROM fingerprints WHERE pipeline = ?1 AND stream = ?2",
            params![pipeline, stream],
            |r| r.get(0),
        )
        .map_err(e())?;
    if (total as u64) < 2 * chunk_rows {
        tx.commit().map_err(e())?;
        return Ok((0, total as u64));
    }
    /// A chunk being cut: where it starts, the encoded key there, and its sums so far.
    #[derive(Default)]
    struct Cut {
        lo: Vec<u8>,
        bound: Option<Vec<u8>>,
        rows: i64,
        sum: i64,
        unknown: i64,
    }
    let mut chunks: Vec<Cut> = Vec::new();
    {
        let mut st = tx
            .prepare(
                "SELECT ord, key, raw FROM fingerprints WHERE pipeline = ?1 AND stream = ?2
                 ORDER BY ord",
            )
            .map_err(e())?;
        let mut rows = st.query(params![pipeline, stream]).map_err(e())?;
        let mut n: u64 = 0;
        while let Some(r) = rows.next().map_err(e())? {
            if n.is_multiple_of(chunk_rows) {
                chunks.push(if n == 0 {
                    Cut::default()
                } else {
                    Cut {
                        lo: r.get(0).map_err(e())?,
                        bound: Some(r.get(1).map_err(e())?),
                        ..Cut::default()
                    }
                });
            }
            n += 1;
            let raw: Option<i64> = r.get(2).map_err(e())?;
            let chunk = chunks
                .last_mut()
                .unwrap_or_else(|| unreachable!("a chunk starts at the first row"));
            chunk.rows += 1;
            match raw {
                Some(raw) => chunk.sum ^= raw,
                None => chunk.unknown += 1,
            }
        }
    }
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO chunks (pipeline, stream, lo, bound, rows, sum, unknown)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(e())?;
        for c in &chunks {
            insert
                .execute(params![
                    pipeline, stream, c.lo, c.bound, c.rows, c.sum, c.unknown
                ])
                .map_err(e())?;
        }
    }
    tx.commit().map_err(e())?;
    Ok((chunks.len(), total as u64))
}

/// How `stream`'s chunks stand: `(chunks, the largest chunk's rows, all rows)`.
pub(crate) fn balance(
    conn: &Connection,
    pipeline: &str,
    stream: &str,
) -> Result<(u64, u64, u64), StoreError> {
    conn.prepare_cached(
        "SELECT count(*), coalesce(max(rows), 0), coalesce(sum(rows), 0) FROM chunks
         WHERE pipeline = ?1 AND stream = ?2",
    )
    .and_then(|mut st| {
        st.query_row(params![pipeline, stream], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .optional()
    })
    .map(|found| found.unwrap_or((0, 0, 0)))
    .map_err(StoreError::sqlite("reading the chunks' balance"))
}

/// The mapping `stream`'s fingerprints were made with (see [`set_mapping`]).
pub(crate) fn mapping(
    conn: &Connection,
    pipeline: &str,
    stream: &str,
) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT mapping FROM diff_streams WHERE pipeline = ?1 AND stream = ?2")
        .and_then(|mut st| {
            st.query_row(params![pipeline, stream], |r| r.get(0))
                .optional()
        })
        .map_err(StoreError::sqlite("reading a stream's mapping"))
}

/// Records that `stream`'s rows are mapped by `mapping` from now on. With `forget_raw`, in
/// the same transaction, every fingerprint of the stream forgets its database hash (which
/// hashes the query's row, not the mapped one, and so cannot tell that the mapping changed)
/// and the stream's chunks go: the next comparison reads every row by key once and logs the
/// rows whose mapped values changed.
pub(crate) fn set_mapping(
    conn: &mut Connection,
    pipeline: &str,
    stream: &str,
    mapping: &str,
    forget_raw: bool,
) -> Result<(), StoreError> {
    let e = || StoreError::sqlite("recording a stream's mapping");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(e())?;
    if forget_raw {
        // The chunks first: the fingerprints' triggers then have none to update.
        tx.execute(
            "DELETE FROM chunks WHERE pipeline = ?1 AND stream = ?2",
            params![pipeline, stream],
        )
        .map_err(e())?;
        tx.execute(
            "UPDATE fingerprints SET raw = NULL WHERE pipeline = ?1 AND stream = ?2
             AND raw IS NOT NULL",
            params![pipeline, stream],
        )
        .map_err(e())?;
    }
    tx.execute(
        "INSERT INTO diff_streams (pipeline, stream, mapping) VALUES (?1, ?2, ?3)
         ON CONFLICT (pipeline, stream) DO UPDATE SET mapping = excluded.mapping",
        params![pipeline, stream, mapping],
    )
    .map_err(e())?;
    tx.commit().map_err(e())
}
