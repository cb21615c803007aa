//! Sending a termination signal to a child process.
//!
//! `std` can only SIGKILL a child, but servers need a chance to shut down cleanly (PostgreSQL
//! wants SIGINT for a fast shutdown, the others SIGTERM). `kill(2)` has no safe wrapper in
//! `std`, hence the one `unsafe` block of the crate.
#![allow(unsafe_code)]

use std::io;
use std::process::Child;

/// The signal that asks a server to shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopSignal {
    /// SIGTERM: the usual graceful shutdown.
    Term,
    /// SIGINT: PostgreSQL's "fast" shutdown (SIGTERM would wait for every client to leave).
    Int,
}

/// Sends `signal` to `child`, which must not have been waited for yet (so its pid cannot have
/// been reused by another process).
pub(crate) fn send(child: &Child, signal: StopSignal) -> io::Result<()> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| io::Error::other(format!("pid {} out of range", child.id())))?;
    let signal = match signal {
        StopSignal::Term => libc::SIGTERM,
        StopSignal::Int => libc::SIGINT,
    };
    // SAFETY: kill(2) takes two integers and touches no memory of ours. `pid` is a child that
    // has not been reaped, so it still names that child (at worst a zombie).
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
