//! `tidesync-bench`: tidesync's benchmark harness.
//!
//! Each subcommand is one benchmark. Every benchmark runs the real release `tidesync` binary as
//! a child process, measures it beside a real peer or physical floor IN THE SAME RUN, reports
//! the ratio and the child's peak memory, and verifies the result before reporting anything: a
//! benchmark that silently measures a broken run is worthless. See README.md and RESULTS.md.

mod child;
mod diff;
mod hub;
mod mysql;
mod pg;
mod report;
mod sqlite_pipeline;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

/// tidesync's benchmarks, each beside its floor or peer, measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "tidesync-bench", version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// SQLite -> SQLite pipeline: sustained drain rate of a trigger-captured backlog and peak
    /// memory, beside the raw SQLite write rate in 1,000-row transactions (the floor).
    SqlitePipeline(sqlite_pipeline::Options),
    /// PostgreSQL -> PostgreSQL initial sync of a table, beside native logical replication's
    /// initial table copy (CREATE SUBSCRIPTION until the table's state is ready).
    PgInitialSync(pg::initial_sync::Options),
    /// PostgreSQL -> PostgreSQL streaming of inserts in 1,000-row transactions and of
    /// single-row updates, beside native logical replication's apply and the raw pgoutput
    /// decode rate of pg_recvlogical (the ceiling).
    PgStreaming(pg::streaming::Options),
    /// Commit-to-applied latency (p50/p99) of PostgreSQL -> PostgreSQL at a steady paced write
    /// rate, beside native logical replication.
    PgLatency(pg::latency::Options),
    /// `tidesync verify` of two equal PostgreSQL tables, beside COPY of both to /dev/null (the
    /// floor).
    PgVerify(pg::verify::Options),
    /// MariaDB -> PostgreSQL streaming of inserts in 1,000-row transactions, beside the
    /// source's binlog write rate and `mariadb-binlog -v` decoding the same binlog range.
    MysqlStreaming(mysql::Options),
    /// MariaDB -> PostgreSQL initial copy of a table, beside `SELECT * INTO OUTFILE`.
    MysqlSnapshot(mysql::Options),
    /// Query-and-compare (`diff`) of a PostgreSQL table with 1% of its rows changed and with
    /// none, beside the server's own `COPY (SELECT ..) TO '/dev/null'`.
    PgDiff(diff::Options),
    /// Pattern P1: a 1M-row initial sync agent -> hub -> PostgreSQL over HTTP, beside the table
    /// streamed COPY TO -> COPY FROM between two databases; then the bytes per changed row on
    /// the wire (zstd) against the same changes as JSON.
    HubSync(hub::Options),
}

/// Options every benchmark takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// The tidesync binary to run (default: `tidesync` next to this executable).
    #[arg(long, value_name = "PATH")]
    pub tidesync: Option<PathBuf>,
    /// Allow debug builds (of tidesync or of this harness); their numbers mean nothing.
    #[arg(long)]
    pub allow_debug: bool,
    /// Work directory for the databases, configuration and logs (must be empty or absent;
    /// default: a new temporary directory, removed afterwards unless --keep).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the temporary work directory (databases, config, tidesync logs).
    #[arg(long)]
    pub keep: bool,
    /// Add this run's row to the benchmark's section of RESULTS.md.
    #[arg(long)]
    pub write_results: bool,
    /// A setting added to the PostgreSQL benchmarks' `[sources.src]` section, as
    /// `KEY=VALUE` in TOML (e.g. `chunk_rows=100000`, `direct_copy=false`); repeatable.
    #[arg(long = "source-setting", value_name = "KEY=VALUE")]
    pub source_settings: Vec<String>,
    /// A setting added to the PostgreSQL benchmarks' `[pipelines.items]` section, as
    /// `KEY=VALUE` in TOML (e.g. `direct_stream=true`); repeatable.
    #[arg(long = "pipeline-setting", value_name = "KEY=VALUE")]
    pub pipeline_settings: Vec<String>,
    /// The results file --write-results updates.
    #[arg(long, value_name = "PATH", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    pub results: PathBuf,
}

impl Common {
    /// Refuses a debug build of this harness unless allowed: its own work (loading, pacing,
    /// polling) would skew the numbers.
    pub fn require_release_harness(&self) -> anyhow::Result<()> {
        if cfg!(debug_assertions) && !self.allow_debug {
            bail!(
                "this is a debug build of tidesync-bench; benchmark with release builds \
                 (cargo build --release -p tidesync -p tidesync-bench) or pass --allow-debug"
            );
        }
        Ok(())
    }

    /// The tidesync binary to run, refusing debug builds unless allowed.
    pub fn tidesync_binary(&self) -> anyhow::Result<PathBuf> {
        self.require_release_harness()?;
        let path = match &self.tidesync {
            Some(p) => p.clone(),
            None => {
                let exe = std::env::current_exe().context("finding this executable's path")?;
                let dir = exe
                    .parent()
                    .context("this executable's path has no parent directory")?;
                dir.join("tidesync")
            }
        };
        let path =
            std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))?;
        if !path.is_file() {
            bail!(
                "no tidesync binary at {} (build it with `cargo build --release -p tidesync`, \
                 or pass --tidesync PATH)",
                path.display()
            );
        }
        if path.to_string_lossy().contains("/debug/") && !self.allow_debug {
            bail!(
                "{} is a debug build; benchmark the release binary (cargo build --release -p tidesync) \
                 or pass --allow-debug",
                path.display()
            );
        }
        Ok(path)
    }

    /// The work directory, and the guard that removes it when it is temporary.
    pub fn work_dir(&self) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
        match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let not_empty = std::fs::read_dir(dir)
                    .with_context(|| format!("listing {}", dir.display()))?
                    .next()
                    .is_some();
                if not_empty {
                    bail!(
                        "{} is not empty; give a new or empty directory",
                        dir.display()
                    );
                }
                Ok((std::path::absolute(dir)?, None))
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("tidesync-bench-")
                    .tempdir()
                    .context("creating a temporary work directory")?;
                let path = tmp.path().to_owned();
                if self.keep {
                    Ok((tmp.keep(), None))
                } else {
                    Ok((path, Some(tmp)))
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Command::SqlitePipeline(options) => sqlite_pipeline::run(options),
        Command::PgInitialSync(options) => pg::initial_sync::run(options),
        Command::PgStreaming(options) => pg::streaming::run(options),
        Command::PgLatency(options) => pg::latency::run(options),
        Command::PgVerify(options) => pg::verify::run(options),
        Command::MysqlStreaming(options) => mysql::streaming(options),
        Command::MysqlSnapshot(options) => mysql::snapshot(options),
        Command::PgDiff(options) => diff::run(options),
        Command::HubSync(options) => hub::run(options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
