//! PostgreSQL log capture.
//!
//! - [`pgoutput`]: a pure decoder of the `pgoutput` logical replication protocol (version 1),
//!   one message per call, no I/O.
//! - [`text`]: the conversion of a column's text output into a [`tidesync_core::Value`].
//!
//! The rest of PostgreSQL capture arrives in later work: the replication connection (through the
//! `pgwire-replication` crate, wrapped in one module of ours), the initial snapshot, and the
//! streaming loop that pairs tuples with relations and confirms LSNs only after the store
//! committed.

pub mod pgoutput;
pub mod text;
