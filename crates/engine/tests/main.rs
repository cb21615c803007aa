//! Integration tests of the engine's library parts against real servers.

mod verify;
