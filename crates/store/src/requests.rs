//! Requests to re-read rows from a running source (`tidesync verify --repair`,
//! `tidesync backfill`), kept in the store so that whoever asks (another process) and the
//! pipeline that serves them meet in one place, and a request survives restarts of both.
//!
//! Table `requests`: `(pipeline, id)`, the stream, what to read (`keys`: a list of keys in the
//! binary key encoding; or the whole table), how far it got (`after`: the source's progress
//! key) and when it finished (`done_seq`: the log head after its last rows) or why it failed.
//!
//! A request's progress is written by [`record_progress`] inside the append transaction of
//! the batch that carries its rows, so progress and rows are never out of step: a restart
//! resumes a table re-read after its last stored chunk.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tidesync_core::codec::binary;
use tidesync_core::{Key, Request, RequestKind, RequestProgress, Seq};

use crate::StoreError;
use tidesync_core::time::now_us;

pub(crate) const CREATE: &str = "CREATE TABLE IF NOT EXISTS requests (
    pipeline TEXT NOT NULL, id INTEGER NOT NULL, stream TEXT NOT NULL, keys BLOB,
    after BLOB, created_us INTEGER NOT NULL, done_seq INTEGER, done_us INTEGER, error TEXT,
    PRIMARY KEY (pipeline, id)) WITHOUT ROWID;";

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestState {
    /// Waiting for, or being served by, the pipeline.
    Pending,
    /// All its rows are in the log, up to this seq.
    Done(Seq),
    /// The source refused it.
    Failed(String),
}

/// One request as listed by [`crate::SqliteStore::requests`].
#[derive(Debug, Clone, PartialEq)]
pub struct RequestInfo {
    pub request: Request,
    pub state: RequestState,
    pub created_us: i64,
}

/// A request's state from its `done_seq` and `error` columns (an error wins).
fn state_of(done_seq: Option<i64>, error: Option<String>) -> RequestState {
    match (done_seq, error) {
        (_, Some(error)) => RequestState::Failed(error),
        (Some(seq), None) => RequestState::Done(Seq(seq as u64)),
        (None, None) => RequestState::Pending,
    }
}

fn encode_keys(keys: &[Key]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(keys.len() as u32).to_be_bytes());
    for key in keys {
        let k = binary::key_to_vec(key);
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(&k);
    }
    out
}

fn decode_keys(bytes: &[u8]) -> Option<Vec<Key>> {
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = bytes.get(*at..*at + n)?;
        *at += n;
        Some(s)
    };
    let mut at = 0;
    let count = u32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
    let mut keys = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let len = u32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
        keys.push(binary::decode_key(take(&mut at, len)?).ok()?);
    }
    (at == bytes.len()).then_some(keys)
}

/// Records a new request; returns its id.
pub(crate) fn add(
    conn: &mut Connection,
    pipeline: &str,
    stream: &str,
    what: &RequestKind,
) -> Result<i64, StoreError> {
    let e = StoreError::sqlite;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(e("beginning a request"))?;
    let id: i64 = tx
        .query_row(
            "SELECT coalesce(max(id), 0) + 1 FROM requests WHERE pipeline = ?1",
            [pipeline],
            |r| r.get(0),
        )
        .map_err(e("numbering a request"))?;
    let (keys, after) = match what {
        RequestKind::Keys(keys) => (Some(encode_keys(keys)), None),
        RequestKind::Table { after } => (None, after.as_ref().map(binary::key_to_vec)),
    };
    tx.execute(
        "INSERT INTO requests (pipeline, id, stream, keys, after, created_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![pipeline, id, stream, keys, after, now_us()],
    )
    .map_err(e("recording a request"))?;
    tx.commit().map_err(e("committing a request"))?;
    Ok(id)
}

/// Requests of `pipeline`: only those still pending, or all, oldest first.
pub(crate) fn list(
    conn: &Connection,
    pipeline: &str,
    pending_only: bool,
) -> Result<Vec<RequestInfo>, StoreError> {
    let e = StoreError::sqlite;
    let sql = format!(
        "SELECT id, stream, keys, after, done_seq, error, created_us FROM requests WHERE pipeline = ?1{} ORDER BY id",
        if pending_only {
            " AND done_seq IS NULL AND error IS NULL"
        } else {
            ""
        }
    );
    let mut st = conn.prepare_cached(&sql).map_err(e("listing requests"))?;
    type Raw = (
        i64,
        String,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<i64>,
        Option<String>,
        i64,
    );
    let rows: Vec<Raw> = st
        .query_map([pipeline], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .and_then(|rows| rows.collect())
        .map_err(e("listing requests"))?;
    rows.into_iter()
        .map(|(id, stream, keys, after, done, error, created_us)| {
            let corrupt = || StoreError::BadRequest {
                pipeline: pipeline.to_owned(),
                id,
            };
            let what = match keys {
                Some(bytes) => RequestKind::Keys(decode_keys(&bytes).ok_or_else(corrupt)?),
                None => RequestKind::Table {
                    after: after
                        .map(|b| binary::decode_key(&b).map_err(|_| corrupt()))
                        .transpose()?,
                },
            };
            Ok(RequestInfo {
                request: Request { id, stream, what },
                state: state_of(done, error),
                created_us,
            })
        })
        .collect()
}

/// Marks a request failed (the source refused it), unless it already finished.
pub(crate) fn fail(
    conn: &Connection,
    pipeline: &str,
    id: i64,
    error: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE requests SET error = ?3, done_us = ?4 WHERE pipeline = ?1 AND id = ?2 AND done_seq IS NULL",
        params![pipeline, id, error, now_us()],
    )
    .map_err(StoreError::sqlite("failing a request"))?;
    Ok(())
}

/// Inside an append: the request's progress with the batch that carries its rows (`head`:
/// the log head after the batch).
pub(crate) fn record_progress(
    tx: &Transaction<'_>,
    pipeline: &str,
    progress: &RequestProgress,
    head: i64,
) -> Result<(), StoreError> {
    let after = progress.after.as_ref().map(binary::key_to_vec);
    let done = (progress.done && progress.error.is_none()).then_some(head);
    let updated = tx
        .execute(
            "UPDATE requests SET after = coalesce(?3, after), done_seq = ?4, error = ?6,
               done_us = CASE WHEN ?4 IS NULL AND ?6 IS NULL THEN NULL ELSE ?5 END
             WHERE pipeline = ?1 AND id = ?2",
            params![pipeline, progress.id, after, done, now_us(), progress.error],
        )
        .map_err(StoreError::sqlite("recording a request's progress"))?;
    if updated == 0 {
        tracing::warn!(
            pipeline,
            request = progress.id,
            "rows of a request the store does not know were logged"
        );
    }
    Ok(())
}

/// The state of one request, `None` if there is no such request.
pub(crate) fn state(
    conn: &Connection,
    pipeline: &str,
    id: i64,
) -> Result<Option<RequestState>, StoreError> {
    conn.query_row(
        "SELECT done_seq, error FROM requests WHERE pipeline = ?1 AND id = ?2",
        params![pipeline, id],
        |r| Ok(state_of(r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(StoreError::sqlite("reading a request"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidesync_core::Value;

    #[test]
    fn keys_round_trip_and_truncation_is_refused() {
        let keys = vec![
            Key(vec![Value::Int(1)]),
            Key(vec![Value::Text("a".into()), Value::Int(-7)]),
        ];
        let bytes = encode_keys(&keys);
        assert_eq!(decode_keys(&bytes), Some(keys));
        assert_eq!(decode_keys(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_keys(&longer), None);
    }
}
