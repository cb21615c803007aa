//! What can go wrong applying to PostgreSQL, and whether retrying can help.
//!
//! Every variant carries the target (`postgres://user@host:port/db`, never the password) and,
//! where a change is involved, its seq, table and key. Server errors are rendered from their
//! fields (severity, SQLSTATE, message, hint, column/constraint names) rather than from
//! `tokio_postgres::Error`'s `Display`, which only says "db error". The server's DETAIL is left
//! out on purpose: it often holds row data ("Failing row contains ...").

use tidesync_core::{Seq, StageError};

/// What went wrong applying to PostgreSQL, and where.
#[derive(Debug, thiserror::Error)]
pub enum PostgresSinkError {
    #[error("target PostgreSQL: invalid connection URL: {problem}")]
    Url { problem: String },
    #[error("target {target}: cannot connect: {problem}")]
    Connect {
        target: String,
        problem: String,
        transient: bool,
    },
    #[error("target {target}: no answer within {timeout_ms} ms while {context}")]
    Timeout {
        target: String,
        context: String,
        timeout_ms: u64,
    },
    #[error("target {target}: {context}: {problem}")]
    Query {
        target: String,
        context: String,
        problem: String,
        transient: bool,
    },
    #[error(
        "target {target}: table `{table}` does not exist (set create_tables = true to create it from the source)"
    )]
    NoTable { target: String, table: String },
    #[error(
        "target {target}: table `{table}` has no primary key or unique index on exactly the key columns ({key}), which upserts need"
    )]
    NoUniqueKey {
        target: String,
        table: String,
        key: String,
    },
    #[error(
        "target {target}: no schema for stream `{stream}` (seq {seq}); the source did not declare it"
    )]
    UnknownStream {
        target: String,
        stream: String,
        seq: Seq,
    },
    #[error("target {target}: seq {seq} on `{table}` key {key}: {problem}")]
    BadChange {
        target: String,
        table: String,
        seq: Seq,
        key: String,
        problem: String,
        transient: bool,
    },
}

impl PostgresSinkError {
    /// Whether retrying (after reconnecting) can help.
    pub fn is_transient(&self) -> bool {
        match self {
            PostgresSinkError::Connect { transient, .. }
            | PostgresSinkError::Query { transient, .. }
            | PostgresSinkError::BadChange { transient, .. } => *transient,
            PostgresSinkError::Timeout { .. } => true,
            PostgresSinkError::Url { .. }
            | PostgresSinkError::NoTable { .. }
            | PostgresSinkError::NoUniqueKey { .. }
            | PostgresSinkError::UnknownStream { .. } => false,
        }
    }
}

impl From<PostgresSinkError> for StageError {
    fn from(e: PostgresSinkError) -> Self {
        if e.is_transient() {
            StageError::transient(e)
        } else {
            StageError::definite(e)
        }
    }
}

#[cfg(test)]
pub(crate) use tidesync_core::pg::is_transient_code;
pub(crate) use tidesync_core::pg::{describe, is_transient};
