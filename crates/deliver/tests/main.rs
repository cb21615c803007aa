//! Integration tests of the sinks against real servers started by `tidesync-testkit`.

#![allow(clippy::unwrap_used)]

mod mysql;
mod postgres;
