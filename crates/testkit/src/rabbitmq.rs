//! A private RabbitMQ node, with its own epmd.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tempfile::TempDir;

use crate::TestkitError;
use crate::process::{ServerProcess, Spec};
use crate::util::{
    HOST, free_port, percent_encode, probe_connect, require_binary, run_command, scrub_env,
    temp_dir, with_port_retry,
};

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const EPMD: &str = "/usr/bin/epmd";
const PACKAGE: &str = "rabbitmq-server";
const ERLANG_PACKAGE: &str = "erlang-base";
/// Inherited variables that could point the node at system files or another epmd.
const SCRUBBED_ENV: &[&str] = &["RABBITMQ_", "ERL_", "NOTIFY_SOCKET"];
/// The broker boots in about ten seconds on an idle machine, longer when tests run in
/// parallel.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// A RabbitMQ node of its own: AMQP on `127.0.0.1` on a random port, its own epmd on another
/// random port (so it never meets the system's or another test's nodes), all state in a
/// temporary folder. Dropping it stops the node and its epmd and deletes the folder.
///
/// The default `guest`/`guest` user may log in (from loopback only) to the default vhost `/`.
/// Starting takes several seconds.
#[derive(Debug)]
pub struct RabbitMq {
    // Declared in drop order: the node, then its epmd, then the folder.
    process: ServerProcess,
    /// Only held to be stopped on drop.
    _epmd: ServerProcess,
    port: u16,
    epmd_port: u16,
    node_name: String,
    /// What `rabbitmqctl` needs to find and authenticate to the node.
    ctl_env: Vec<(OsString, OsString)>,
    /// `rabbitmqctl` listens on a single reserved port: one call at a time.
    ctl_lock: Mutex<()>,
    dir: TempDir,
}

impl RabbitMq {
    /// Starts a node.
    ///
    /// # Panics
    ///
    /// If it cannot start; the message says why.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("cannot start RabbitMQ: {e}"))
    }

    /// Starts an epmd and a node, and waits until the node answers an AMQP handshake.
    pub fn try_start() -> Result<Self, TestkitError> {
        require_binary("rabbitmq-server", Path::new(RABBITMQ_SERVER), PACKAGE)?;
        require_binary("rabbitmqctl", Path::new(RABBITMQCTL), PACKAGE)?;
        require_binary("epmd", Path::new(EPMD), ERLANG_PACKAGE)?;
        let dir = temp_dir("tidesync-rabbitmq-", None)?;
        let path = dir.path();
        write_file(&path.join("rabbitmq.conf"), "")?;
        write_file(&path.join("enabled_plugins"), "[].\n")?;

        let (epmd_port, epmd) = with_port_retry(|port| {
            let mut spec = Spec::new("epmd", Path::new(EPMD), path, path.join("epmd.log"));
            spec.scrub_env_prefixes = SCRUBBED_ENV;
            // -d: epmd exits silently when its port is taken, unless debugging.
            spec.args(["-d", "-port", &port.to_string(), "-address", HOST]);
            let mut epmd = ServerProcess::new(spec);
            epmd.start(move || probe_connect(port).map(drop))?;
            Ok((port, epmd))
        })?;

        let ctl_port = free_port();
        let (port, (process, node_name, ctl_env)) = with_port_retry(|port| {
            let node_name = format!("tidesync{port}@localhost");
            let mut env = node_env(path, &node_name, epmd_port);
            let mut spec = Spec::new(
                "RabbitMQ",
                Path::new(RABBITMQ_SERVER),
                path,
                path.join("rabbitmq.log"),
            );
            spec.scrub_env_prefixes = SCRUBBED_ENV;
            spec.ready_timeout = STARTUP_TIMEOUT;
            spec.env = env.clone();
            spec.env("RABBITMQ_NODE_IP_ADDRESS", HOST)
                .env("RABBITMQ_NODE_PORT", port.to_string())
                .env("RABBITMQ_DIST_PORT", free_port().to_string())
                // Erlang distribution listens on every interface unless told otherwise.
                .env(
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                    "-kernel inet_dist_use_interface {127,0,0,1}",
                )
                // Log to stdout, i.e. into the log file.
                .env("RABBITMQ_LOGS", "-")
                // Makes the start script exec the Erlang VM instead of running it as a child
                // of a shell: our pid is the node's, and signals reach it directly.
                .env("RUNNING_UNDER_SYSTEMD", "true");
            let mut process = ServerProcess::new(spec);
            process.start(move || amqp_connection_start(port))?;
            for (key, value) in [
                ("RABBITMQ_CTL_DIST_PORT_MIN", ctl_port),
                ("RABBITMQ_CTL_DIST_PORT_MAX", ctl_port),
            ] {
                env.push((key.into(), value.to_string().into()));
            }
            Ok((port, (process, node_name, env)))
        })?;
        Ok(Self {
            process,
            _epmd: epmd,
            port,
            epmd_port,
            node_name,
            ctl_env,
            ctl_lock: Mutex::new(()),
            dir,
        })
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The AMQP port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` (the default vhost `/`).
    pub fn amqp_url(&self) -> String {
        self.vhost_url("/")
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/<vhost, percent-encoded>`.
    pub fn vhost_url(&self, vhost: &str) -> String {
        format!(
            "amqp://guest:guest@{HOST}:{}/{}",
            self.port,
            percent_encode(vhost)
        )
    }

    /// The port of the node's private epmd (Erlang port mapper), for Erlang tools: set
    /// `ERL_EPMD_PORT` to it.
    pub fn epmd_port(&self) -> u16 {
        self.epmd_port
    }

    /// The Erlang node name, e.g. `tidesync41234@localhost`.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The node's log (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The node's folder (configuration, Mnesia data, Erlang cookie).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `rabbitmqctl <args>` against this node and returns its output. Takes about a
    /// second (the CLI is an Erlang node too).
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String, TestkitError> {
        let _one_at_a_time = self.ctl_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ctl = Command::new(RABBITMQCTL);
        scrub_env(&mut ctl, SCRUBBED_ENV);
        ctl.current_dir(self.dir.path())
            .envs(self.ctl_env.iter().map(|(k, v)| (k, v)))
            .args(args);
        run_command(&mut ctl, "")
    }

    /// Creates vhost `name` and lets `guest` do anything in it; connect with
    /// [`RabbitMq::vhost_url`]. A fresh vhost per test isolates tests sharing one node.
    pub fn add_vhost(&self, name: &str) -> Result<(), TestkitError> {
        self.rabbitmqctl(&["add_vhost", name])?;
        self.rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"])
            .map(drop)
    }

    /// The node's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the node is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stops the node, keeping its data (durable queues and messages survive). Its epmd keeps
    /// running.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        self.process.stop()
    }

    /// Starts the node again after [`RabbitMq::stop`], on the same port and data.
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        let port = self.port;
        self.process.start(move || amqp_connection_start(port))
    }

    /// [`RabbitMq::stop`], then [`RabbitMq::start_again`].
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.start_again()
    }
}

/// The environment shared by the node and `rabbitmqctl`: everything points into `dir`.
fn node_env(dir: &Path, node_name: &str, epmd_port: u16) -> Vec<(OsString, OsString)> {
    let in_dir = |name: &str| dir.join(name).into_os_string();
    vec![
        // The Erlang cookie is $HOME/.erlang.cookie.
        ("HOME".into(), dir.into()),
        ("RABBITMQ_NODENAME".into(), node_name.into()),
        ("ERL_EPMD_PORT".into(), epmd_port.to_string().into()),
        // Absent on purpose: keeps /etc/rabbitmq/rabbitmq-env.conf out.
        ("RABBITMQ_CONF_ENV_FILE".into(), in_dir("rabbitmq-env.conf")),
        ("RABBITMQ_CONFIG_FILE".into(), in_dir("rabbitmq.conf")),
        (
            "RABBITMQ_ADVANCED_CONFIG_FILE".into(),
            in_dir("advanced.config"),
        ),
        (
            "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
            in_dir("enabled_plugins"),
        ),
        (
            "RABBITMQ_PLUGINS_EXPAND_DIR".into(),
            in_dir("plugins-expand"),
        ),
        ("RABBITMQ_MNESIA_BASE".into(), in_dir("mnesia")),
        ("RABBITMQ_LOG_BASE".into(), in_dir("log")),
        ("RABBITMQ_PID_FILE".into(), in_dir("rabbitmq.pid")),
        ("ERL_CRASH_DUMP".into(), in_dir("erl_crash.dump")),
    ]
}

fn write_file(path: &Path, contents: &str) -> Result<(), TestkitError> {
    fs::write(path, contents)
        .map_err(|e| TestkitError::io(format!("writing {}", path.display()), e))
}

/// Sends the AMQP 0-9-1 protocol header and expects a `Connection.Start` method frame back.
fn amqp_connection_start(port: u16) -> Result<(), String> {
    let mut stream = probe_connect(port)?;
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .map_err(|e| format!("write: {e}"))?;
    // Frame header: type (1 = method), channel (u16), payload size (u32).
    let mut header = [0_u8; 7];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("read frame header: {e}"))?;
    if header[0] != 1 {
        return Err(format!(
            "expected a method frame, got frame type {}",
            header[0]
        ));
    }
    // Method payload: class id (u16), method id (u16), arguments.
    let mut ids = [0_u8; 4];
    stream
        .read_exact(&mut ids)
        .map_err(|e| format!("read method ids: {e}"))?;
    let class = u16::from_be_bytes([ids[0], ids[1]]);
    let method = u16::from_be_bytes([ids[2], ids[3]]);
    if (class, method) == (10, 10) {
        Ok(())
    } else {
        Err(format!(
            "expected Connection.Start (10, 10), got method ({class}, {method})"
        ))
    }
}
