//! A private memcached server.

use std::path::Path;

use tempfile::TempDir;

use crate::TestkitError;
use crate::process::{ServerProcess, Spec};
use crate::util::{HOST, probe_line, require_binary, temp_dir, with_port_retry};

const MEMCACHED: &str = "/usr/bin/memcached";
const PACKAGE: &str = "memcached";
/// memcached refuses to run as root unless told which account to switch to.
const OS_USER: &str = "nobody";

/// A memcached server of its own, listening on TCP `127.0.0.1` on a random port (UDP off).
/// Dropping it stops the server and deletes its temporary folder (which holds the log).
#[derive(Debug)]
pub struct Memcached {
    // Declared first so it is dropped (stopped) before the folder is deleted.
    process: ServerProcess,
    port: u16,
    dir: TempDir,
}

impl Memcached {
    /// Starts a server.
    ///
    /// # Panics
    ///
    /// If it cannot start; the message says why.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("cannot start memcached: {e}"))
    }

    /// Starts a server.
    pub fn try_start() -> Result<Self, TestkitError> {
        require_binary("memcached", Path::new(MEMCACHED), PACKAGE)?;
        let dir = temp_dir("tidesync-memcached-", None)?;
        let (port, process) = with_port_retry(|port| {
            let path = dir.path();
            let mut spec = Spec::new(
                "memcached",
                Path::new(MEMCACHED),
                path,
                path.join("memcached.log"),
            );
            spec.args([
                "-l",
                HOST,
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-u",
                OS_USER,
            ]);
            let mut process = ServerProcess::new(spec);
            process.start(prober(port))?;
            Ok((port, process))
        })?;
        Ok(Self { process, port, dir })
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    /// The server's log.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The server's working folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the server is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stops the server; its cache is lost.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        self.process.stop()
    }

    /// Starts the server again after [`Memcached::stop`], on the same port (empty).
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        self.process.start(prober(self.port))
    }

    /// [`Memcached::stop`], then [`Memcached::start_again`].
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.start_again()
    }
}

/// Ready means `version` is answered with `VERSION <x>`.
fn prober(port: u16) -> impl FnMut() -> Result<(), String> {
    move || {
        let answer = probe_line(port, b"version\r\n")?;
        if answer.starts_with("VERSION ") {
            Ok(())
        } else {
            Err(format!("version answered {answer:?}"))
        }
    }
}
