//! A private MariaDB server with a row-based binary log.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::TestkitError;
use crate::os_user::{self, OsUser};
use crate::process::{ServerProcess, Spec};
use crate::util::{
    HOST, percent_encode, probe_connect, require_binary, run_command, scrub_env, temp_dir,
    with_port_retry,
};

const MARIADBD: &str = "/usr/sbin/mariadbd";
const INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
const CLIENT: &str = "/usr/bin/mariadb";
const SERVER_PACKAGE: &str = "mariadb-server";
const CLIENT_PACKAGE: &str = "mariadb-client";
/// The account mariadbd switches to when started as root.
const OS_USER: &str = "mysql";
/// A smaller redo log than the 96 MiB default: every test server writes one.
const REDO_LOG_SIZE: &str = "--innodb-log-file-size=16M";

/// Configures a [`MariaDb`] before starting it.
///
/// By default the server keeps a binary log (`log_bin=ON`, `binlog_format=ROW`,
/// `binlog_row_image=FULL`, `server_id=1`) and relaxes redo-log flushing
/// (`innodb_flush_log_at_trx_commit=2`). Root may log in over TCP without a password.
#[derive(Debug, Clone)]
pub struct MariaDbBuilder {
    args: Vec<OsString>,
    startup_timeout: Duration,
}

impl Default for MariaDbBuilder {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            startup_timeout: Duration::from_secs(30),
        }
    }
}

impl MariaDbBuilder {
    /// Adds a `mariadbd` option after the defaults, so it wins over them: e.g.
    /// `--skip-log-bin` to run without a binary log, `--binlog-format=STATEMENT`,
    /// `--innodb-flush-log-at-trx-commit=1` for benchmarks.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds several `mariadbd` options, see [`MariaDbBuilder::arg`].
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// How long to wait for the server to accept queries (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts the server.
    ///
    /// # Panics
    ///
    /// If it cannot start; the message says why (missing package, log tail, ...).
    pub fn start(self) -> MariaDb {
        self.try_start()
            .unwrap_or_else(|e| panic!("cannot start MariaDB: {e}"))
    }

    /// Runs `mariadb-install-db` in a fresh temporary folder and starts the server on a free
    /// port.
    pub fn try_start(self) -> Result<MariaDb, TestkitError> {
        require_binary("mariadbd", Path::new(MARIADBD), SERVER_PACKAGE)?;
        require_binary("mariadb-install-db", Path::new(INSTALL_DB), SERVER_PACKAGE)?;
        require_binary("mariadb", Path::new(CLIENT), CLIENT_PACKAGE)?;
        let owner = if os_user::running_as_root() {
            Some(os_user::lookup(OS_USER, SERVER_PACKAGE)?)
        } else {
            None
        };
        let dir = temp_dir("tidesync-mariadb-", owner.as_ref())?;
        install_db(dir.path(), owner.is_some())?;

        let (port, process) = with_port_retry(|port| {
            let mut process = ServerProcess::new(self.spec(dir.path(), owner.as_ref(), port));
            process.start(prober(port))?;
            Ok((port, process))
        })?;
        Ok(MariaDb { process, port, dir })
    }

    fn spec(&self, dir: &Path, owner: Option<&OsUser>, port: u16) -> Spec {
        let mut spec = Spec::new("MariaDB", Path::new(MARIADBD), dir, dir.join("mariadb.log"));
        spec.ready_timeout = self.startup_timeout;
        let data = dir.join("data");
        // --no-defaults must come first; later options override earlier ones.
        spec.arg("--no-defaults");
        if owner.is_some() {
            spec.arg(format!("--user={OS_USER}"));
        }
        spec.arg(path_option("--datadir=", &data))
            .arg(format!("--port={port}"))
            .arg(format!("--bind-address={HOST}"))
            .arg(path_option("--socket=", &dir.join("mariadb.sock")))
            .arg(path_option("--pid-file=", &dir.join("mariadb.pid")))
            // Private, see install_db.
            .arg(path_option("--tmpdir=", dir))
            .arg("--skip-name-resolve")
            .arg(path_option("--log-bin=", &data.join("binlog")))
            .arg("--binlog-format=ROW")
            .arg("--binlog-row-image=FULL")
            .arg("--server-id=1")
            .arg("--innodb-flush-log-at-trx-commit=2")
            .arg(REDO_LOG_SIZE);
        spec.args(self.args.iter().cloned());
        spec
    }
}

/// A MariaDB server of its own, listening on `127.0.0.1` on a random port, with its data in a
/// temporary folder. Dropping it stops the server and deletes the folder.
///
/// ```no_run
/// let db = tidesync_testkit::MariaDb::start();
/// db.create_database("app").unwrap();
/// assert_eq!(db.sql("app", "SELECT 1 + 1").unwrap(), "2");
/// let url = db.url("app"); // mysql://root@127.0.0.1:PORT/app
/// ```
#[derive(Debug)]
pub struct MariaDb {
    // Declared first so it is dropped (stopped) before the folder is deleted.
    process: ServerProcess,
    port: u16,
    dir: TempDir,
}

impl MariaDb {
    /// Starts a server with the default options.
    ///
    /// # Panics
    ///
    /// If it cannot start; the message says why.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// Starts a server with the default options.
    pub fn try_start() -> Result<Self, TestkitError> {
        Self::builder().try_start()
    }

    /// A builder to pass extra `mariadbd` options.
    pub fn builder() -> MariaDbBuilder {
        MariaDbBuilder::default()
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user to connect as, `root` (no password).
    pub fn user(&self) -> &str {
        "root"
    }

    /// The server's Unix socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("mariadb.sock")
    }

    /// The data directory (the binary logs are `binlog.*` in it).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// `mysql://root@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@{HOST}:{}/{}", self.port, percent_encode(db))
    }

    /// Runs `sql` (one or more `;`-separated statements) as root with the `mariadb` client in
    /// batch mode, in database `db` (none if empty). Returns the rows printed, tab-separated,
    /// without column names or the final newline (batch mode prints NULL as `NULL` and
    /// escapes tabs, newlines and backslashes in values). On failure the error holds the client's
    /// stderr.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        run_command(&mut client_command(self.port, db), sql)
    }

    /// Creates database `name`.
    pub fn create_database(&self, name: &str) -> Result<(), TestkitError> {
        let name = name.replace('`', "``");
        self.sql("", &format!("CREATE DATABASE `{name}`")).map(drop)
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the server is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stops the server (clean shutdown), keeping its data.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        self.process.stop()
    }

    /// Starts the server again after [`MariaDb::stop`], on the same port and data. A new
    /// binary log file is started, as with any restart.
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        self.process.start(prober(self.port))
    }

    /// [`MariaDb::stop`], then [`MariaDb::start_again`].
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.start_again()
    }
}

fn path_option(name: &str, path: &Path) -> OsString {
    let mut option = OsString::from(name);
    option.push(path);
    option
}

fn install_db(dir: &Path, as_root: bool) -> Result<(), TestkitError> {
    let mut install = Command::new(INSTALL_DB);
    install
        .current_dir(dir)
        .arg("--no-defaults")
        .arg(path_option("--datadir=", &dir.join("data")))
        // A private tmpdir: at startup mariadbd deletes every `#sql*` file in its tmpdir,
        // which breaks other servers bootstrapping in a shared /tmp at the same moment.
        .arg(path_option("--tmpdir=", dir))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg(REDO_LOG_SIZE);
    if as_root {
        install.arg(format!("--user={OS_USER}"));
    }
    run_command(&mut install, "").map(drop)
}

fn client_command(port: u16, db: &str) -> Command {
    let mut client = Command::new(CLIENT);
    scrub_env(&mut client, &["MYSQL", "MARIADB"]);
    // --no-defaults must come first.
    client
        .args([
            "--no-defaults",
            "--protocol=TCP",
            "-h",
            HOST,
            "-u",
            "root",
            "-N",
            "-B",
        ])
        .args(["-P", &port.to_string(), "--connect-timeout=5"]);
    if !db.is_empty() {
        client.arg(format!("--database={db}"));
    }
    client
}

/// Ready means a real query over TCP succeeds.
fn prober(port: u16) -> impl FnMut() -> Result<(), String> {
    move || {
        probe_connect(port)?;
        match run_command(&mut client_command(port, ""), "SELECT 1") {
            Ok(out) if out == "1" => Ok(()),
            Ok(out) => Err(format!("SELECT 1 returned {out:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}
