//! Integration tests of the `tidesync` binary: real processes, real SQLite files, kill -9.

mod cli;
mod crash;
mod diff;
mod direct;
mod direct_stream;
mod hub;
mod mysql;
mod mysql_source;
mod pg_source;
mod postgres;
mod rename;
mod repair;
mod util;
mod verify;
