//! Encodings of the model.
//!
//! - [`binary`]: the compact form used inside the change log and current-state table. No JSON on
//!   the database-to-database hot path.
//! - [`json`]: batches as JSON, for HTTP, agents and people.
//! - [`compress`]: zstd and gzip (HTTP `Content-Encoding`), with a limit on decompressed size.

pub mod binary;
pub mod compress;
pub mod json;

/// Where and why a payload did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("binary {what} at byte {offset}: {problem}")]
    Binary {
        what: &'static str,
        offset: usize,
        problem: String,
    },
    #[error("JSON batch, line {line} column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error("{encoding} payload: {message}")]
    Compression {
        encoding: &'static str,
        message: String,
    },
    #[error("{encoding} payload expands past the limit of {limit} bytes")]
    TooLarge {
        encoding: &'static str,
        limit: usize,
    },
}
