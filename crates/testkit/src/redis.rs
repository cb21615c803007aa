//! A private Redis server.

use std::path::Path;

use tempfile::TempDir;

use crate::TestkitError;
use crate::process::{ServerProcess, Spec};
use crate::util::{HOST, probe_line, require_binary, temp_dir, with_port_retry};

const REDIS_SERVER: &str = "/usr/bin/redis-server";
const PACKAGE: &str = "redis-server";

/// A Redis server of its own, listening on `127.0.0.1` on a random port, without persistence,
/// working in a temporary folder. Dropping it stops the server and deletes the folder.
#[derive(Debug)]
pub struct Redis {
    // Declared first so it is dropped (stopped) before the folder is deleted.
    process: ServerProcess,
    port: u16,
    dir: TempDir,
}

impl Redis {
    /// Starts a server.
    ///
    /// # Panics
    ///
    /// If it cannot start; the message says why.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("cannot start Redis: {e}"))
    }

    /// Starts a server.
    pub fn try_start() -> Result<Self, TestkitError> {
        require_binary("redis-server", Path::new(REDIS_SERVER), PACKAGE)?;
        let dir = temp_dir("tidesync-redis-", None)?;
        let (port, process) = with_port_retry(|port| {
            let path = dir.path();
            let mut spec = Spec::new(
                "Redis",
                Path::new(REDIS_SERVER),
                path,
                path.join("redis.log"),
            );
            spec.args(["--port", &port.to_string(), "--bind", HOST])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                ])
                .arg(path);
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

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{HOST}:{}", self.port)
    }

    /// The server's working folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the server is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stops the server. Its data is lost: it has no persistence.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        self.process.stop()
    }

    /// Starts the server again after [`Redis::stop`], on the same port (empty).
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        self.process.start(prober(self.port))
    }

    /// [`Redis::stop`], then [`Redis::start_again`].
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.start_again()
    }
}

/// Ready means `PING` is answered with `+PONG` (not `-LOADING`).
fn prober(port: u16) -> impl FnMut() -> Result<(), String> {
    move || match probe_line(port, b"PING\r\n")?.as_str() {
        "+PONG" => Ok(()),
        other => Err(format!("PING answered {other:?}")),
    }
}
