//! The two PostgreSQL servers of a benchmark: the source (publisher) and the target
//! (subscriber), started by `tidesync-testkit` from the installed PostgreSQL (15 here), each on
//! a random loopback port with its data in a temporary folder of its own.
//!
//! Both get the SAME settings ([`SETTINGS`], plus the benchmark's extras), and the peer and
//! tidesync are measured on the same two servers, so the comparison is fair: durable commits
//! (`fsync`, `synchronous_commit` on), 256 MB of shared_buffers, and checkpoints kept out of
//! the measured windows (`max_wal_size` 4 GB, `checkpoint_timeout` 30 min, and an explicit
//! `CHECKPOINT` after every load).
//!
//! The servers' logs are copied into the benchmark's work directory when they stop (kept with
//! `--keep` or `--dir`); their data folders are removed with them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tidesync_testkit::Postgres;

/// The database the benchmark table lives in, on both servers.
pub const DB: &str = "bench";

/// Settings of both servers, on top of the testkit's `wal_level=logical`,
/// `max_replication_slots=20` and `max_wal_senders=20`.
pub const SETTINGS: &[(&str, &str)] = &[
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("shared_buffers", "256MB"),
    ("max_wal_size", "4GB"),
    ("checkpoint_timeout", "30min"),
    ("max_worker_processes", "16"),
    ("max_logical_replication_workers", "8"),
];

/// The source and target servers.
#[derive(Debug)]
pub struct Servers {
    pub source: Postgres,
    pub target: Postgres,
    /// The settings both got (for the report).
    pub settings: Vec<(String, String)>,
    /// Where the logs are copied when the servers stop.
    work_dir: PathBuf,
}

impl Servers {
    /// Starts both servers with [`SETTINGS`] and `extra` (e.g. `track_commit_timestamp`), and
    /// creates the database [`DB`] in each.
    pub fn start(work_dir: &Path, extra: &[(&str, &str)]) -> anyhow::Result<Servers> {
        let settings: Vec<(String, String)> = SETTINGS
            .iter()
            .chain(extra)
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        let start = |role: &str| -> anyhow::Result<Postgres> {
            let mut builder = Postgres::builder();
            for (name, value) in &settings {
                builder = builder.setting(name, value);
            }
            let pg = builder
                .try_start()
                .with_context(|| format!("starting the {role} PostgreSQL server"))?;
            pg.create_database(DB)
                .with_context(|| format!("creating database {DB} in the {role} server"))?;
            Ok(pg)
        };
        let source = start("source")?;
        let target = start("target")?;
        Ok(Servers {
            source,
            target,
            settings,
            work_dir: work_dir.to_owned(),
        })
    }

    /// `name=value, ...` of the settings both servers run with.
    pub fn settings_line(&self) -> String {
        let all: Vec<String> = [
            ("wal_level", "logical"),
            ("max_replication_slots", "20"),
            ("max_wal_senders", "20"),
        ]
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .chain(self.settings.iter().map(|(n, v)| format!("{n}={v}")))
        .collect();
        all.join(", ")
    }

    /// The folder with `pg_recvlogical`, `psql`, ...
    pub fn bin_dir(&self) -> &Path {
        self.source.bin_dir()
    }
}

/// A libpq key=value connection string of `pg`'s [`DB`] (for CREATE SUBSCRIPTION and
/// pg_recvlogical).
pub fn conninfo(pg: &Postgres) -> String {
    format!(
        "host={} port={} dbname={DB} user={}",
        pg.host(),
        pg.port(),
        pg.user()
    )
}

impl Drop for Servers {
    /// Keeps the servers' logs in the work directory: they go away with the servers' folders.
    fn drop(&mut self) {
        for (role, pg) in [("source", &self.source), ("target", &self.target)] {
            let to = self.work_dir.join(format!("postgres-{role}.log"));
            if let Err(e) = std::fs::copy(pg.log_path(), &to) {
                eprintln!(
                    "  warning: cannot copy {} to {}: {e}",
                    pg.log_path().display(),
                    to.display()
                );
            }
        }
    }
}
