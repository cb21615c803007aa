//! Capture modes: one module per mode and database.
//!
//! - [`sqlite::trigger`]: triggers on the captured tables append to a change table that the
//!   engine drains and clears only after the store committed what it read (pattern P2).
//! - [`pg`]: PostgreSQL log capture (logical replication, `pgoutput`).
//! - [`mysql`]: MySQL/MariaDB log capture (the row-based binary log).

pub mod diff;
pub mod mysql;
pub mod pg;
pub mod sqlite;
