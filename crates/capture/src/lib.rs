//! Capture modes: one module per mode and database.
//!
//! - [`sqlite::trigger`]: triggers on the captured tables append to a change table that the
//!   engine drains and clears only after the store committed what it read (pattern P2).

pub mod sqlite;
