//! Capture from SQLite databases.

mod literal;
pub mod trigger;

pub use trigger::{TriggerError, TriggerSource};
