//! The `diff` capture mode (query and compare, pattern P1).

pub mod mysql;
pub mod ord;
pub mod pg;
pub mod reader;
pub mod sqlite;
