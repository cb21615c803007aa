//! Sinks: one module per target.
//!
//! - [`sqlite`]: database apply into SQLite, exactly-once (the applied seq is written in the
//!   same transaction as the rows).
//! - [`postgres`]: database apply into PostgreSQL, exactly-once in the same way.
//! - [`mysql`]: database apply into MySQL or MariaDB, exactly-once in the same way.
//! - [`hub`]: pushes to a tidesync hub over HTTP, exactly-once (the hub records the agent's
//!   seq with what it took; docs/protocol.md).

pub mod hub;
pub mod mysql;
pub mod postgres;
pub mod sqlite;
