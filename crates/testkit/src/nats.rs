//! A private NATS server with JetStream.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::TestkitError;
use crate::process::{ServerProcess, Spec};
use crate::util::{HOST, probe_connect, read_line, require_binary, temp_dir, with_port_retry};

const NATS_SERVER: &str = "/usr/sbin/nats-server";
const PACKAGE: &str = "nats-server";

/// A NATS server of its own with JetStream enabled, listening on `127.0.0.1` on a random port,
/// storing streams in a temporary folder. Dropping it stops the server and deletes the folder.
#[derive(Debug)]
pub struct Nats {
    // Declared first so it is dropped (stopped) before the folder is deleted.
    process: ServerProcess,
    port: u16,
    dir: TempDir,
}

impl Nats {
    /// Starts a server.
    ///
    /// # Panics
    ///
    /// If it cannot start; the message says why.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("cannot start NATS: {e}"))
    }

    /// Starts a server.
    pub fn try_start() -> Result<Self, TestkitError> {
        require_binary("nats-server", Path::new(NATS_SERVER), PACKAGE)?;
        let dir = temp_dir("tidesync-nats-", None)?;
        let (port, process) = with_port_retry(|port| {
            let path = dir.path();
            let mut spec = Spec::new("NATS", Path::new(NATS_SERVER), path, path.join("nats.log"));
            spec.args(["-a", HOST, "-p", &port.to_string(), "-js", "-sd"])
                .arg(path.join("jetstream"));
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

    /// The client port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{HOST}:{}", self.port)
    }

    /// Where JetStream keeps its data.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The server's log.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Connects and returns the JSON of the server's `INFO` greeting (server version,
    /// `"jetstream":true`, limits, ...).
    pub fn server_info(&self) -> Result<String, TestkitError> {
        handshake(self.port).map_err(|e| {
            TestkitError::io(
                format!("talking to NATS on port {}", self.port),
                std::io::Error::other(e),
            )
        })
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the server is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stops the server, keeping the JetStream data.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        self.process.stop()
    }

    /// Starts the server again after [`Nats::stop`], on the same port and data.
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        self.process.start(prober(self.port))
    }

    /// [`Nats::stop`], then [`Nats::start_again`].
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.start_again()
    }
}

/// Reads `INFO {json}`, sends `CONNECT` and `PING`, expects `PONG`; returns the JSON.
fn handshake(port: u16) -> Result<String, String> {
    let stream = probe_connect(port)?;
    let mut reader = BufReader::new(&stream);
    let info = read_line(&mut reader)?;
    let Some(json) = info.strip_prefix("INFO ") else {
        return Err(format!("expected INFO, got {info:?}"));
    };
    (&stream)
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .map_err(|e| format!("write: {e}"))?;
    match read_line(&mut reader)?.as_str() {
        "PONG" => Ok(json.to_owned()),
        other => Err(format!("expected PONG, got {other:?}")),
    }
}

fn prober(port: u16) -> impl FnMut() -> Result<(), String> {
    move || handshake(port).map(drop)
}
