//! tidesync's core model, shared by every other crate. No I/O happens here.
//!
//! - [`Value`], [`Row`], [`Key`]: typed data, converted losslessly (decimals stay exact text,
//!   timestamps keep microseconds).
//! - [`Change`], [`LogEntry`], [`Batch`], [`Seq`], [`Position`]: what flows through a pipeline.
//! - [`codec`]: the JSON form (for HTTP, agents and people), the compact binary form used in the
//!   change log, and zstd/gzip compression with a size limit.
//! - [`Source`], [`Sink`], [`Log`]: the traits the capture modes, sinks and stores implement.

pub mod change;
pub mod codec;
pub mod failpoint;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod position;
pub mod protocol;
pub mod sql;
pub mod stage;
pub mod time;
pub mod value;

pub use change::{Batch, BatchKind, Change, Key, LogEntry, Op, Row, Seq};
pub use position::{Mark, MarkValue, Position};
pub use stage::{
    BoxError, BoxFuture, Captured, ColumnSchema, CopyChunk, CopyWriter, Dialect, Fingerprint, Log,
    LogStatus, Opened, RawRefresh, Request, RequestKind, RequestProgress, Sink, Source, StageError,
    TableSchema, with_causes,
};
pub use value::{Decimal, Value, ValueError};
