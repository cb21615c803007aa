//! Integration tests of the engine's library parts against real servers.

mod mysql_source;
mod verify;
