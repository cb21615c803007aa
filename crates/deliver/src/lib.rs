//! Sinks: one module per target.
//!
//! - [`sqlite`]: database apply into SQLite, exactly-once (the applied seq is written in the
//!   same transaction as the rows).

pub mod sqlite;
