//! A private PostgreSQL server, ready for logical replication.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::TestkitError;
use crate::os_user::{self, OsUser};
use crate::process::{ServerProcess, Spec};
use crate::signal::StopSignal;
use crate::util::{
    HOST, percent_encode, probe_connect, require_binary, run_command, scrub_env, temp_dir,
    with_port_retry,
};

/// Where Debian installs the versioned server binaries (`<version>/bin/postgres`).
const PG_LIB: &str = "/usr/lib/postgresql";
const PACKAGE: &str = "postgresql";
/// The superuser `initdb` creates.
const SUPERUSER: &str = "postgres";

/// Configures a [`Postgres`] before starting it.
///
/// By default the server runs with `wal_level=logical`, `max_replication_slots=20`,
/// `max_wal_senders=20` and `fsync=off`, and trusts every local and loopback connection
/// (replication ones included).
#[derive(Debug, Clone)]
pub struct PostgresBuilder {
    settings: Vec<(String, String)>,
    password: Option<String>,
    startup_timeout: Duration,
}

impl Default for PostgresBuilder {
    fn default() -> Self {
        let settings = [
            ("wal_level", "logical"),
            ("max_replication_slots", "20"),
            ("max_wal_senders", "20"),
            ("fsync", "off"),
        ];
        Self {
            settings: settings
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            password: None,
            startup_timeout: Duration::from_secs(30),
        }
    }
}

impl PostgresBuilder {
    /// Sets a server parameter (passed as `-c name=value`), replacing the default if there is
    /// one: e.g. `setting("fsync", "on")` for benchmarks, `setting("wal_level", "replica")` to
    /// test a misconfigured source. `listen_addresses`, `port` and `unix_socket_directories`
    /// are always set by the testkit and cannot be overridden.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        match self.settings.iter_mut().find(|(n, _)| *n == name) {
            Some(existing) => existing.1 = value,
            None => self.settings.push((name, value)),
        }
        self
    }

    /// Requires this password (scram-sha-256) for TCP connections of the `postgres` user,
    /// replication ones included. Unix-socket connections stay trusted.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// How long to wait for the server to accept connections (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts the server.
    ///
    /// # Panics
    ///
    /// If it cannot start; the message says why (missing package, log tail, ...).
    pub fn start(self) -> Postgres {
        self.try_start()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"))
    }

    /// Runs `initdb` in a fresh temporary folder and starts the server on a free port.
    pub fn try_start(self) -> Result<Postgres, TestkitError> {
        let bin_dir = find_bin_dir()?;
        require_binary("initdb", &bin_dir.join("initdb"), PACKAGE)?;
        require_binary("psql", &bin_dir.join("psql"), "postgresql-client")?;
        let owner = if os_user::running_as_root() {
            Some(os_user::lookup(SUPERUSER, PACKAGE)?)
        } else {
            None
        };
        let dir = temp_dir("tidesync-pg-", owner.as_ref())?;
        init_data_dir(
            &bin_dir,
            dir.path(),
            owner.as_ref(),
            self.password.as_deref(),
        )?;

        let (port, process) = with_port_retry(|port| {
            let mut process =
                ServerProcess::new(self.spec(&bin_dir, dir.path(), owner.as_ref(), port));
            process.start(prober(&bin_dir, port, self.password.as_deref()))?;
            Ok((port, process))
        })?;
        Ok(Postgres {
            process,
            port,
            bin_dir,
            password: self.password,
            dir,
        })
    }

    fn spec(&self, bin_dir: &Path, dir: &Path, owner: Option<&OsUser>, port: u16) -> Spec {
        let mut spec = Spec::new(
            "PostgreSQL",
            &bin_dir.join("postgres"),
            dir,
            dir.join("postgres.log"),
        );
        spec.user = owner.cloned();
        spec.stop_signal = StopSignal::Int;
        spec.ready_timeout = self.startup_timeout;
        spec.env("LC_ALL", "C").arg("-D").arg(dir.join("data"));
        let fixed = [
            ("listen_addresses", HOST.to_owned()),
            ("port", port.to_string()),
            ("unix_socket_directories", dir.display().to_string()),
        ];
        let settings = self.settings.iter().map(|(n, v)| (n.as_str(), v.clone()));
        for (name, value) in settings.chain(fixed) {
            spec.arg("-c").arg(format!("{name}={value}"));
        }
        spec
    }
}

/// A PostgreSQL server of its own, listening on `127.0.0.1` on a random port, with its data in
/// a temporary folder. Dropping it stops the server and deletes the folder.
///
/// ```no_run
/// let pg = tidesync_testkit::Postgres::start();
/// pg.create_database("app").unwrap();
/// assert_eq!(pg.psql("app", "SELECT 1 + 1").unwrap(), "2");
/// let url = pg.url("app"); // postgres://postgres@127.0.0.1:PORT/app
/// ```
#[derive(Debug)]
pub struct Postgres {
    // Declared first so it is dropped (stopped) before the folder is deleted.
    process: ServerProcess,
    port: u16,
    bin_dir: PathBuf,
    password: Option<String>,
    dir: TempDir,
}

impl Postgres {
    /// Starts a server with the default settings.
    ///
    /// # Panics
    ///
    /// If it cannot start; the message says why.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// Starts a server with the default settings.
    pub fn try_start() -> Result<Self, TestkitError> {
        Self::builder().try_start()
    }

    /// A builder to change settings or require a password.
    pub fn builder() -> PostgresBuilder {
        PostgresBuilder::default()
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser, `postgres`.
    pub fn user(&self) -> &str {
        SUPERUSER
    }

    /// The password required over TCP, if one was set with [`PostgresBuilder::password`].
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The folder holding the server's Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The folder with the PostgreSQL programs used (`psql`, `pg_recvlogical`, ...).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// `postgres://postgres[:password]@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        let password = self
            .password
            .as_deref()
            .map(|p| format!(":{}", percent_encode(p)))
            .unwrap_or_default();
        format!(
            "postgres://{SUPERUSER}{password}@{HOST}:{}/{}",
            self.port,
            percent_encode(db)
        )
    }

    /// Runs `sql` (one or more statements) in database `db` with `psql` as the superuser,
    /// stopping at the first error. Returns what the statements print, unaligned (`|` between
    /// columns), without headers or the final newline. On failure the error holds psql's
    /// stderr.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        run_command(
            &mut psql_command(&self.bin_dir, self.port, self.password.as_deref(), db),
            sql,
        )
    }

    /// Creates database `name`.
    pub fn create_database(&self, name: &str) -> Result<(), TestkitError> {
        let name = name.replace('"', "\"\"");
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .map(drop)
    }

    /// The postmaster's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the server is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stops the server (fast shutdown: open sessions are disconnected), keeping its data.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        self.process.stop()
    }

    /// Starts the server again after [`Postgres::stop`], on the same port and data.
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        let probe = prober(&self.bin_dir, self.port, self.password.as_deref());
        self.process.start(probe)
    }

    /// [`Postgres::stop`], then [`Postgres::start_again`].
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.start_again()
    }
}

/// The highest installed `/usr/lib/postgresql/<version>/bin` holding a `postgres` binary.
fn find_bin_dir() -> Result<PathBuf, TestkitError> {
    let missing = || TestkitError::MissingBinary {
        program: "postgres",
        path: Path::new(PG_LIB).join("<version>/bin/postgres"),
        package: PACKAGE,
    };
    let entries = fs::read_dir(PG_LIB).map_err(|_| missing())?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin_dir = entry.path().join("bin");
            bin_dir
                .join("postgres")
                .is_file()
                .then_some((version, bin_dir))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin_dir)| bin_dir)
        .ok_or_else(missing)
}

fn init_data_dir(
    bin_dir: &Path,
    dir: &Path,
    owner: Option<&OsUser>,
    password: Option<&str>,
) -> Result<(), TestkitError> {
    let mut initdb = Command::new(bin_dir.join("initdb"));
    initdb
        .current_dir(dir)
        .env("LC_ALL", "C")
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"]);
    if let Some(owner) = owner {
        initdb.uid(owner.uid).gid(owner.gid);
    }
    let pwfile = dir.join("pwfile");
    match password {
        None => {
            initdb.arg("--auth=trust");
        }
        Some(password) => {
            // The folder is traversable and the file world-readable (umask permitting) only
            // until initdb has read it.
            fs::write(&pwfile, password)
                .map_err(|e| TestkitError::io(format!("writing {}", pwfile.display()), e))?;
            if let Some(owner) = owner {
                std::os::unix::fs::chown(&pwfile, Some(owner.uid), Some(owner.gid))
                    .map_err(|e| TestkitError::io(format!("chown {}", pwfile.display()), e))?;
            }
            initdb
                .args([
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--pwfile",
                ])
                .arg(&pwfile);
        }
    }
    let result = run_command(&mut initdb, "");
    if password.is_some() {
        fs::remove_file(&pwfile)
            .map_err(|e| TestkitError::io(format!("removing {}", pwfile.display()), e))?;
    }
    result.map(drop)
}

fn psql_command(bin_dir: &Path, port: u16, password: Option<&str>, db: &str) -> Command {
    let mut psql = Command::new(bin_dir.join("psql"));
    scrub_env(&mut psql, &["PG"]);
    psql.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        HOST,
        "-U",
        SUPERUSER,
    ])
    .args(["-p", &port.to_string(), "-d", db, "-f", "-"])
    .env("PGCONNECT_TIMEOUT", "5");
    if let Some(password) = password {
        psql.env("PGPASSWORD", password);
    }
    psql
}

/// Ready means a real query over TCP succeeds (not just that the port is open: PostgreSQL
/// accepts connections while it is still recovering).
fn prober(
    bin_dir: &Path,
    port: u16,
    password: Option<&str>,
) -> impl FnMut() -> Result<(), String> + use<> {
    let bin_dir = bin_dir.to_path_buf();
    let password = password.map(str::to_owned);
    move || {
        probe_connect(port)?;
        let mut psql = psql_command(&bin_dir, port, password.as_deref(), "postgres");
        match run_command(&mut psql, "SELECT 1") {
            Ok(out) if out == "1" => Ok(()),
            Ok(out) => Err(format!("SELECT 1 returned {out:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}
