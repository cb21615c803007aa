//! PostgreSQL log capture.
//!
//! - [`pgoutput`]: a pure decoder of the `pgoutput` logical replication protocol (version 1),
//!   one message per call, no I/O.
//! - [`text`]: the conversion of a column's text output into a [`tidesync_core::Value`].
//! - [`replication`]: the replication connection (slot with exported snapshot, START_REPLICATION,
//!   decoded messages, LSN confirmation), the only module that touches `pgwire-replication`.
//!
//! Still to come (issue 4): the initial snapshot under the exported snapshot, and the
//! `Source` that pairs tuples with relations and confirms LSNs only after the store committed.

pub mod copy_binary;
pub mod copy_text;
pub mod pgoutput;
pub mod replication;
pub mod source;
pub mod text;
