//! Capture modes: one module per mode and database.
//!
//! - [`sqlite::trigger`]: triggers on the captured tables append to a change table that the
//!   engine drains and clears only after the store committed what it read (pattern P2).
//! - [`pg`]: PostgreSQL log capture; so far the `pgoutput` decoder and text-value conversion.

pub mod pg;
pub mod sqlite;
