//! Integration tests of tidesync-capture against real servers (one test binary; see
//! STYLE.md). Each test starts its own server through `tidesync_testkit`.

#![allow(clippy::unwrap_used)]

mod diff_readers;
mod diff_source;
mod mysql_source;
mod pg_replication;
mod pg_source;
