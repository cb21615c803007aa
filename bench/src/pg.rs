//! The PostgreSQL -> PostgreSQL benchmarks: `pg-initial-sync`, `pg-streaming`, `pg-latency`,
//! `pg-verify`.
//!
//! Each one starts two private PostgreSQL servers (the source, "publisher", and the target,
//! "subscriber") with identical settings ([`server`]), measures the peer (native logical
//! replication, `pg_recvlogical`, or `COPY ... TO STDOUT`) and then tidesync on the same
//! servers and the same data, verifies every run (row count, max id and a checksum of every
//! row's text on both sides) before reporting it, and prints a markdown report.
//!
//! The tidesync side is gated ([`tidesync::prepare`]): it runs only if `tidesync check CONFIG`
//! accepts the benchmark's configuration (a PostgreSQL `log` source). Until tidesync has that
//! source, each benchmark reports the peer alone and says why the tidesync side was skipped;
//! `--write-results` then refuses, since a RESULTS.md row needs both sides.
//!
//! Layout: [`server`] starts the servers, [`client`] is the SQL connection, [`items`] the
//! benchmark table (its rows, loading, fingerprints), [`native`] drives native logical
//! replication and `pg_recvlogical`, [`watch`] polls with a deadline while sampling the memory
//! of tidesync and of PostgreSQL's replication processes, [`tidesync`] writes the config and
//! runs the tidesync side; one file per benchmark wires them together.

pub mod client;
pub mod initial_sync;
pub mod items;
pub mod latency;
pub mod native;
pub mod server;
pub mod streaming;
pub mod tidesync;
pub mod verify;
pub mod watch;

use anyhow::Context;

/// How native logical replication's subscription is configured (the peer).
#[derive(Debug, Clone, clap::Args)]
pub struct NativeOptions {
    /// The native subscription's synchronous_commit (its apply worker's commits). PostgreSQL's
    /// default for subscriptions is `off`: the subscriber does not wait for its own WAL flush,
    /// which is safe because the publisher resends from the subscriber's flushed position.
    /// `on` makes native apply as durable per transaction as a sink that commits synchronously.
    #[arg(long, value_name = "off|local|on", default_value = "off")]
    pub native_synchronous_commit: String,
}

/// What happened to one side of a benchmark.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The side did not run, and why (e.g. tidesync has no PostgreSQL log source yet).
    Skipped(String),
    /// The side ran and failed; the peer's numbers are still reported, then the benchmark fails.
    Failed(anyhow::Error),
    /// The side ran and its result was verified.
    Ran(T),
}

impl<T> Outcome<T> {
    /// The verified result, if the side ran.
    pub fn ran(&self) -> Option<&T> {
        match self {
            Outcome::Ran(t) => Some(t),
            _ => None,
        }
    }

    /// `n/a (skipped: why)` / `FAILED` / the value shown by `show`.
    pub fn show(&self, show: impl FnOnce(&T) -> String) -> String {
        match self {
            Outcome::Skipped(_) => "n/a (tidesync side skipped)".to_owned(),
            Outcome::Failed(_) => "FAILED".to_owned(),
            Outcome::Ran(t) => show(t),
        }
    }

    /// Prints the reason a side did not give numbers (below the report) and turns a failure into
    /// the benchmark's error.
    pub fn finish(self) -> anyhow::Result<()> {
        match self {
            Outcome::Skipped(why) => {
                println!();
                println!("tidesync side skipped: {why}");
                Ok(())
            }
            Outcome::Failed(e) => {
                println!();
                println!("tidesync side FAILED: {e:#}");
                Err(e.context("the tidesync side failed (the peer's numbers are above)"))
            }
            Outcome::Ran(_) => Ok(()),
        }
    }
}

/// The async runtime of a PostgreSQL benchmark: two worker threads (the machine has two
/// cores), so the paced writers, the pollers and the connections' I/O tasks make progress
/// while one thread is briefly blocked (reading /proc, waiting for a child to stop).
/// A private PostgreSQL with the benchmarks' settings ([`server::SETTINGS`]).
pub fn start_server() -> anyhow::Result<tidesync_testkit::Postgres> {
    let mut builder = tidesync_testkit::Postgres::builder();
    for (name, value) in server::SETTINGS {
        builder = builder.setting(*name, *value);
    }
    builder.try_start().context("starting PostgreSQL")
}

/// Checks `--rows` and `--changed` (a percentage) of a benchmark that changes rows.
pub fn check_rows_changed(rows: u64, changed: f64) -> anyhow::Result<()> {
    anyhow::ensure!(rows > 0, "--rows must be positive");
    anyhow::ensure!(
        changed > 0.0 && changed <= 100.0,
        "--changed must be in (0, 100]"
    );
    Ok(())
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The refusal of `--write-results` when the tidesync side did not run.
pub fn refuse_results(bench: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "--write-results refused: the tidesync side of {bench} was skipped ({why}); a RESULTS.md \
         row needs both sides. Run without --write-results to see the peer's numbers."
    )
}

/// `x` MB with one decimal, from bytes.
pub fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// Connections to the source and the target database.
pub async fn connect(servers: &server::Servers) -> anyhow::Result<(client::Db, client::Db)> {
    let source = client::Db::connect(&servers.source.url(server::DB), "source").await?;
    let target = client::Db::connect(&servers.target.url(server::DB), "target").await?;
    Ok((source, target))
}

/// `PostgreSQL 15.x` of a server.
pub async fn server_version(db: &client::Db) -> anyhow::Result<String> {
    let row = db
        .query_one("SHOW server_version", &[])
        .await
        .context("reading server_version")?;
    Ok(format!("PostgreSQL {}", row.get::<_, String>(0)))
}
