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
    raw(conn, pipeline, stream)?
        .into_iter()
        .map(|c| {
            let bound = c
                .bound
                .map(|b| decode_key(&b))
                .transpose()
                .map_err(|source| StoreError::Corrupt {
                    pipeline: pipeline.to_owned(),
                    seq: 0,
                    source,
                })?;
            Ok(StoredChunk {
                lo: c.lo,
                bound,
                rows: c.rows as u64,
                sum: c.sum,
                unknown: c.unknown as u64,
            })
        })
        .collect()
}

/// `stream`'s chunks as stored, in key order (bounds still encoded).
fn raw(conn: &Connection, pipeline: &str, stream: &str) -> Result<Vec<Cut>, StoreError> {
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
        out.push(Cut {
            lo: r.get(0).map_err(e())?,
            bound: r.get(1).map_err(e())?,
            rows: r.get(2).map_err(e())?,
            sum: r.get(3).map_err(e())?,
            unknown: r.get(4).map_err(e())?,
        });
    }
    Ok(out)
}

/// How many fingerprints `stream` has.
pub(crate) fn fingerprint_count(
    conn: &Connection,
    pipeline: &str,
    stream: &str,
) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT count(*) FROM fingerprints WHERE pipeline = ?1 AND stream = ?2")
        .and_then(|mut st| st.query_row(params![pipeline, stream], |r| r.get::<_, i64>(0)))
        .map(|n| n as u64)
        .map_err(StoreError::sqlite("counting fingerprints"))
}

/// A chunk being cut: where it starts, the encoded key there, and its sums.
#[derive(Default)]
struct Cut {
    lo: Vec<u8>,
    bound: Option<Vec<u8>>,
    rows: i64,
    sum: i64,
    unknown: i64,
}

/// Cuts the fingerprints of `stream` from `lo` (included; its chunk keeps `lo` and `bound`)
/// to `hi` (excluded; `None`: to the end) into pieces of `piece` rows (the last may be
/// smaller), summing each from the fingerprints themselves.
fn cut_range(
    tx: &rusqlite::Transaction<'_>,
    pipeline: &str,
    stream: &str,
    (lo, bound, hi): (&[u8], Option<&[u8]>, Option<&[u8]>),
    piece: u64,
) -> Result<Vec<Cut>, StoreError> {
    let e = || StoreError::sqlite("cutting fingerprints into chunks");
    let piece = piece.max(1);
    let to = if hi.is_some() { "AND ord < ?4" } else { "" };
    let mut st = tx
        .prepare_cached(&format!(
            "SELECT ord, key, raw FROM fingerprints WHERE pipeline = ?1 AND stream = ?2
             AND ord >= ?3 {to} ORDER BY ord"
        ))
        .map_err(e())?;
    let mut rows = match hi {
        None => st.query(params![pipeline, stream, lo]),
        Some(hi) => st.query(params![pipeline, stream, lo, hi]),
    }
    .map_err(e())?;
    let mut cuts: Vec<Cut> = Vec::new();
    let mut n: u64 = 0;
    while let Some(r) = rows.next().map_err(e())? {
        if n.is_multiple_of(piece) {
            cuts.push(if n == 0 {
                Cut {
                    lo: lo.to_vec(),
                    bound: bound.map(<[u8]>::to_vec),
                    ..Cut::default()
                }
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
        let cut = cuts
            .last_mut()
            .unwrap_or_else(|| unreachable!("a piece starts at the first row"));
        cut.rows += 1;
        match raw {
            Some(raw) => cut.sum ^= raw,
            None => cut.unknown += 1,
        }
    }
    Ok(cuts)
}

fn insert_cuts(
    tx: &rusqlite::Transaction<'_>,
    pipeline: &str,
    stream: &str,
    cuts: &[Cut],
) -> Result<(), StoreError> {
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO chunks (pipeline, stream, lo, bound, rows, sum, unknown)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(StoreError::sqlite("writing fingerprint chunks"))?;
    for c in cuts {
        insert
            .execute(params![
                pipeline, stream, c.lo, c.bound, c.rows, c.sum, c.unknown
            ])
            .map_err(StoreError::sqlite("writing fingerprint chunks"))?;
    }
    Ok(())
}

/// Replaces `stream`'s chunks with a cut of all its `total` fingerprints into chunks of
/// `chunk_rows` rows, in `tx`; none when it has fewer than two chunks' worth. Returns how
/// many chunks.
fn cut_all(
    tx: &rusqlite::Transaction<'_>,
    pipeline: &str,
    stream: &str,
    chunk_rows: u64,
    total: u64,
) -> Result<usize, StoreError> {
    let chunk_rows = chunk_rows.max(1);
    tx.execute(
        "DELETE FROM chunks WHERE pipeline = ?1 AND stream = ?2",
        params![pipeline, stream],
    )
    .map_err(StoreError::sqlite("cutting fingerprints into chunks"))?;
    if total < 2 * chunk_rows {
        return Ok(0);
    }
    let cuts = cut_range(tx, pipeline, stream, (&[], None, None), chunk_rows)?;
    insert_cuts(tx, pipeline, stream, &cuts)?;
    Ok(cuts.len())
}

/// Cuts `stream`'s fingerprints into chunks of `chunk_rows` rows (the last may be smaller), in
/// one transaction that replaces the old chunks and computes every sum from the fingerprints
/// themselves. Returns `(chunks, rows)`: no chunks when the stream has fewer than two chunks'
/// worth of rows (comparing it row by row costs no more). The full recompute the tests check
/// the kept sums against; the `diff` source rebalances instead ([`rebalance`]).
#[cfg(test)]
pub(crate) fn rechunk(
    conn: &mut Connection,
    pipeline: &str,
    stream: &str,
    chunk_rows: u64,
) -> Result<(usize, u64), StoreError> {
    let e = || StoreError::sqlite("cutting fingerprints into chunks");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(e())?;
    let total = fingerprint_count(&tx, pipeline, stream)?;
    let made = cut_all(&tx, pipeline, stream, chunk_rows, total)?;
    tx.commit().map_err(e())?;
    Ok((made, total))
}

/// What [`rebalance`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rebalanced {
    /// Chunks afterwards (none: the stream is compared row by row).
    pub chunks: usize,
    /// Rows in them (or in the stream, when it has none).
    pub rows: u64,
    /// The rows per chunk aimed at.
    pub target: u64,
    /// The stream had no chunks, or too few rows for two: it was cut (or uncut) whole.
    pub whole: bool,
    /// Chunks that had grown past twice `target` and were cut into pieces.
    pub split: usize,
    /// Chunks that had shrunk below a quarter of `target` (or whose neighbour had) and were
    /// merged into the chunk before them.
    pub merged: usize,
}

impl Rebalanced {
    /// Whether any chunk changed.
    pub fn changed(&self) -> bool {
        self.whole || self.split > 0 || self.merged > 0
    }
}

/// Keeps `stream`'s chunks near `target(rows)` rows each, in one transaction, touching only
/// what needs it: a stream without chunks is cut whole (once it has two chunks' worth of
/// rows); a chunk that grew past twice the target (rows inserted into its range) is cut
/// into even pieces from its own fingerprints; a chunk below a quarter of the target (rows
/// deleted), or following one, is merged into the chunk before it (sums add up: no
/// fingerprint is read) while the two stay within twice the target. A stream that shrank
/// below two chunks' worth loses its chunks.
pub(crate) fn rebalance(
    conn: &mut Connection,
    pipeline: &str,
    stream: &str,
    target: &dyn Fn(u64) -> u64,
) -> Result<Rebalanced, StoreError> {
    let e = || StoreError::sqlite("rebalancing fingerprint chunks");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(e())?;
    let (n, largest, smallest, total): (i64, i64, i64, i64) = tx
        .query_row(
            "SELECT count(*), coalesce(max(rows), 0), coalesce(min(rows), 0),
                 coalesce(sum(rows), 0)
             FROM chunks WHERE pipeline = ?1 AND stream = ?2",
            params![pipeline, stream],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .map_err(e())?;
    let mut done = Rebalanced::default();
    if n == 0 {
        done.rows = fingerprint_count(&tx, pipeline, stream)?;
        done.target = target(done.rows).max(1);
        if done.rows >= 2 * done.target {
            done.chunks = cut_all(&tx, pipeline, stream, done.target, done.rows)?;
            done.whole = true;
        }
        tx.commit().map_err(e())?;
        return Ok(done);
    }
    let t = target(total as u64).max(1);
    done.target = t;
    done.rows = total as u64;
    done.chunks = n as usize;
    if (total as u64) < 2 * t {
        tx.execute(
            "DELETE FROM chunks WHERE pipeline = ?1 AND stream = ?2",
            params![pipeline, stream],
        )
        .map_err(e())?;
        done.chunks = 0;
        done.whole = true;
        tx.commit().map_err(e())?;
        return Ok(done);
    }
    let too_small = |rows: i64| (rows as u64) * 4 < t;
    if (largest as u64) <= 2 * t && !(n > 1 && too_small(smallest)) {
        return Ok(done);
    }
    let chunks = raw(&tx, pipeline, stream)?;
    // Splits: each oversized chunk is replaced by its pieces, in place.
    let mut balanced: Vec<Cut> = Vec::with_capacity(chunks.len());
    let mut delete = tx
        .prepare_cached("DELETE FROM chunks WHERE pipeline = ?1 AND stream = ?2 AND lo = ?3")
        .map_err(e())?;
    let mut next_lo: Vec<Option<Vec<u8>>> =
        chunks.iter().skip(1).map(|c| Some(c.lo.clone())).collect();
    next_lo.push(None);
    for (chunk, hi) in chunks.into_iter().zip(next_lo) {
        if (chunk.rows as u64) <= 2 * t {
            balanced.push(chunk);
            continue;
        }
        // Even pieces of at most `t` rows.
        let pieces = (chunk.rows as u64).div_ceil(t);
        let piece = (chunk.rows as u64).div_ceil(pieces);
        let cuts = cut_range(
            &tx,
            pipeline,
            stream,
            (&chunk.lo, chunk.bound.as_deref(), hi.as_deref()),
            piece,
        )?;
        delete
            .execute(params![pipeline, stream, chunk.lo])
            .map_err(e())?;
        insert_cuts(&tx, pipeline, stream, &cuts)?;
        done.split += 1;
        balanced.extend(cuts);
    }
    // Merges: into the last chunk kept, while the two stay within twice the target.
    let mut update = tx
        .prepare_cached(
            "UPDATE chunks SET rows = ?4, sum = ?5, unknown = ?6
             WHERE pipeline = ?1 AND stream = ?2 AND lo = ?3",
        )
        .map_err(e())?;
    // Each chunk kept, and whether it took others in (its row must then be written).
    let mut kept: Vec<(Cut, bool)> = Vec::with_capacity(balanced.len());
    for chunk in balanced {
        if let Some((keeper, grew)) = kept.last_mut()
            && (too_small(chunk.rows) || too_small(keeper.rows))
            && ((keeper.rows + chunk.rows) as u64) <= 2 * t
        {
            keeper.rows += chunk.rows;
            keeper.sum ^= chunk.sum;
            keeper.unknown += chunk.unknown;
            *grew = true;
            delete
                .execute(params![pipeline, stream, chunk.lo])
                .map_err(e())?;
            done.merged += 1;
            continue;
        }
        kept.push((chunk, false));
    }
    for (keeper, _) in kept.iter().filter(|(_, grew)| *grew) {
        update
            .execute(params![
                pipeline,
                stream,
                keeper.lo,
                keeper.rows,
                keeper.sum,
                keeper.unknown
            ])
            .map_err(e())?;
    }
    done.chunks = kept.len();
    drop((delete, update));
    tx.commit().map_err(e())?;
    Ok(done)
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
