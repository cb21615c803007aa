//! Benchmark `pg-initial-sync`: the initial copy of an N-row table from one PostgreSQL to
//! another, tidesync beside native logical replication's initial table copy, on the same two
//! servers and the same data. Target: faster than native.
//!
//! Steps:
//! 1. Both servers get `items`; the source gets N generated rows (VACUUM ANALYZE, CHECKPOINT);
//!    its fingerprint is the expected result.
//! 2. The gate: `tidesync check CONFIG` (see [`super::tidesync`]).
//! 3. Native: a publication on the source; the clock starts right before `CREATE
//!    SUBSCRIPTION` on the target and stops when the table's `pg_subscription_rel.srsubstate`
//!    is `r` (ready), polled every 20 ms. The target must then equal the source; the
//!    subscription (and its slot) and the publication are dropped, the target truncated.
//! 4. tidesync (if it passed the gate): the clock starts right before the spawn of `tidesync
//!    run CONFIG` and stops when the target equals the source (max id, then count, then the
//!    fingerprint, see [`super::tidesync::wait_fingerprint`]); tidesync is stopped with
//!    SIGTERM. Then native runs again (step 3), so drift of the machine shows; the faster
//!    native run is the one compared.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};

use super::client::Db;
use super::items::{
    CREATE_TABLE, Fingerprint, ensure_equal, fingerprint, load, settle, table_bytes,
};
use super::native::{
    create_publication, create_subscription, drop_idle_slots, drop_publication, drop_subscription,
    show_states, wait_ready,
};
use super::server::Servers;
use super::tidesync::{Prepared, prepare, wait_fingerprint};
use super::watch::{Deadline, Monitor, Peak};
use super::{NativeOptions, Outcome, connect, mb, refuse_results, runtime, server_version};
use crate::Common;
use crate::report::{
    add_result_row, command_line, git_commit, load_avg, machine, now_utc, thousands,
};

const BENCH: &str = "pg-initial-sync";

/// Options of `tidesync-bench pg-initial-sync`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Rows in the source table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Give up on a sync that takes longer than this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    #[command(flatten)]
    native: NativeOptions,
    #[command(flatten)]
    common: Common,
}

/// One native initial sync.
#[derive(Debug)]
struct NativeRun {
    /// CREATE SUBSCRIPTION until srsubstate = 'r'.
    time: Duration,
    states: Vec<(char, Duration)>,
    walsender: Peak,
    worker: Peak,
}

/// tidesync's initial sync.
#[derive(Debug)]
struct TidesyncRun {
    /// Spawn until the target equals the source.
    time: Duration,
    peak_bytes: u64,
    cpu: Duration,
    walsender: Peak,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    options.common.require_release_harness()?;
    ensure!(options.rows > 0, "--rows must be at least 1");
    let (dir, _guard) = options.common.work_dir()?;
    eprintln!(
        "tidesync-bench {BENCH}: {} rows",
        thousands(options.rows as f64)
    );
    eprintln!("  work dir: {}", dir.display());
    let servers = Servers::start(&dir, &[])?;
    eprintln!(
        "  servers: source on port {}, target on port {}",
        servers.source.port(),
        servers.target.port()
    );
    let result = runtime()?.block_on(bench(options, &dir, &servers));
    if options.common.keep || options.common.dir.is_some() {
        eprintln!("  kept: {}", dir.display());
    }
    result
}

async fn bench(options: &Options, dir: &Path, servers: &Servers) -> anyhow::Result<()> {
    let n = options.rows;
    let timeout = Duration::from_secs(options.timeout_secs);
    let date = now_utc();
    let command = command_line();
    let load_before = load_avg();
    let (source, target) = connect(servers).await?;
    let version = server_version(&source).await?;
    source
        .batch_execute(CREATE_TABLE)
        .await
        .context("creating items in the source")?;
    target
        .batch_execute(CREATE_TABLE)
        .await
        .context("creating items in the target")?;
    let load_time = load(&source, n, "source: generate rows").await?;
    settle(&source).await?;
    target.batch_execute("CHECKPOINT").await?;
    let expected = fingerprint(&source).await?;
    ensure!(
        expected.rows as u64 == n,
        "the source has {} rows after loading {n}",
        expected.rows
    );
    let bytes = table_bytes(&source).await?;

    let gate = prepare(&options.common, dir, servers, BENCH, None);
    if let Err(why) = &gate {
        eprintln!("  tidesync side skipped: {why}");
        if options.common.write_results {
            return Err(refuse_results(BENCH, why));
        }
    }

    let mut monitor = Monitor::new(servers).await?;
    let native = native_initial_sync(
        servers,
        &source,
        &target,
        &expected,
        &mut monitor,
        options,
        "native initial sync",
    )
    .await?;

    let outcome = match gate {
        Err(why) => Outcome::Skipped(why),
        Ok(prepared) => {
            match measure_tidesync(
                &prepared,
                &source,
                &target,
                &expected,
                &mut monitor,
                timeout,
            )
            .await
            {
                Ok(run) => Outcome::Ran(run),
                Err(e) => {
                    // A failed tidesync is killed (Tidesync's Drop) before anything else runs.
                    monitor.child = None;
                    Outcome::Failed(e)
                }
            }
        }
    };
    let native_after = if outcome.ran().is_some() {
        drop_idle_slots(&source).await?;
        target.batch_execute("TRUNCATE items; CHECKPOINT").await?;
        Some(
            native_initial_sync(
                servers,
                &source,
                &target,
                &expected,
                &mut monitor,
                options,
                "native initial sync, again",
            )
            .await?,
        )
    } else {
        None
    };
    let load_after = load_avg();

    // The report.
    let rate = |t: Duration| n as f64 / t.as_secs_f64();
    let native_best = native_after
        .as_ref()
        .map_or(native.time, |a| a.time.min(native.time));
    let commit = git_commit();
    println!("## {BENCH}, {date} (commit {commit})");
    println!();
    println!("`{command}`");
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| rows | {} ({} MB with its index) |",
        thousands(n as f64),
        mb(bytes as u64)
    );
    println!(
        "| servers (both) | {version}; {} |",
        servers.settings_line()
    );
    println!(
        "| source load (generate_series, 100,000-row transactions) | {:.2} s |",
        load_time.as_secs_f64()
    );
    for (label, run) in [
        ("native initial sync", Some(&native)),
        ("native, again after tidesync", native_after.as_ref()),
    ] {
        if let Some(run) = run {
            println!(
                "| {label} (CREATE SUBSCRIPTION until srsubstate = r; synchronous_commit={}) | {:.2} s = {} rows/s; states first seen: {} |",
                options.native.native_synchronous_commit,
                run.time.as_secs_f64(),
                thousands(rate(run.time)),
                show_states(&run.states)
            );
            println!(
                "| {label}: peak memory | source walsenders: {}; target replication workers: {} |",
                run.walsender.show(),
                run.worker.show()
            );
        }
    }
    println!(
        "| tidesync initial sync (spawn until the target equals the source) | {} |",
        outcome.show(|t| format!(
            "{:.2} s = {} rows/s",
            t.time.as_secs_f64(),
            thousands(rate(t.time))
        ))
    );
    println!(
        "| **tidesync / native speed** | {} |",
        outcome.show(|t| {
            let ratio = native_best.as_secs_f64() / t.time.as_secs_f64();
            format!(
                "**{ratio:.2}x** (target > 1, faster than native: {})",
                verdict(ratio > 1.0)
            )
        })
    );
    println!(
        "| tidesync peak RSS (VmHWM) | {} |",
        outcome.show(|t| format!("{} MB", mb(t.peak_bytes)))
    );
    println!(
        "| tidesync CPU | {} |",
        outcome.show(|t| format!(
            "{:.1} s = {:.0}% of one core; its walsender: {}",
            t.cpu.as_secs_f64(),
            100.0 * t.cpu.as_secs_f64() / t.time.as_secs_f64(),
            t.walsender.show()
        ))
    );
    println!("| verified | after each run the target equals the source: {expected} |");
    println!("| load average (1 min) at start / end | {load_before:.2} / {load_after:.2} |");

    if let (Some(t), true) = (outcome.ran(), options.common.write_results) {
        let intro = format!(
            "Each row is one run of the command in its last column. Native is CREATE SUBSCRIPTION \
             until the table's srsubstate is r (before / after tidesync; the faster is compared); \
             tidesync is the spawn of `tidesync run` until the target equals the source; \"tidesync \
             / native\" is native's time over tidesync's (target > 1); peak RSS is tidesync's VmHWM. \
             Both servers: {}. Last run on: {}.",
            servers.settings_line(),
            machine()
        );
        let header = [
            "date",
            "commit",
            "rows",
            "native s (before / after)",
            "native rows/s",
            "tidesync s",
            "tidesync rows/s",
            "tidesync / native",
            "peak RSS MB",
            "tidesync CPU",
            "load",
            "command",
        ];
        let ratio = native_best.as_secs_f64() / t.time.as_secs_f64();
        let row = [
            date.clone(),
            commit.clone(),
            thousands(n as f64),
            format!(
                "{:.2} / {}",
                native.time.as_secs_f64(),
                native_after
                    .as_ref()
                    .map_or("-".to_owned(), |a| format!("{:.2}", a.time.as_secs_f64()))
            ),
            thousands(rate(native_best)),
            format!("{:.2}", t.time.as_secs_f64()),
            thousands(rate(t.time)),
            format!("**{ratio:.2}x** ({})", verdict(ratio > 1.0)),
            mb(t.peak_bytes),
            format!("{:.0}%", 100.0 * t.cpu.as_secs_f64() / t.time.as_secs_f64()),
            format!("{load_before:.1} / {load_after:.1}"),
            format!("`{command}`"),
        ];
        add_result_row(&options.common.results, BENCH, &intro, &header, &row)?;
        eprintln!(
            "  results: added a row to {}",
            options.common.results.display()
        );
    }
    outcome.finish()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// One native initial sync into the (empty) target; leaves no subscription or publication.
async fn native_initial_sync(
    servers: &Servers,
    source: &Db,
    target: &Db,
    expected: &Fingerprint,
    monitor: &mut Monitor,
    options: &Options,
    label: &str,
) -> anyhow::Result<NativeRun> {
    create_publication(source).await?;
    monitor.workers.reset();
    eprintln!("  {label}: CREATE SUBSCRIPTION");
    let deadline = Deadline::new(label, Duration::from_secs(options.timeout_secs));
    create_subscription(target, servers, &options.native, monitor).await?;
    let states = wait_ready(target, monitor, &deadline).await?;
    let time = states.last().map_or(deadline.elapsed(), |(_, t)| *t);
    eprintln!(
        "  {label:<34} {:>6.2} s  {} rows/s  ({})",
        time.as_secs_f64(),
        thousands(expected.rows as f64 / time.as_secs_f64()),
        show_states(&states)
    );
    ensure_equal(source, target, label).await?;
    drop_subscription(target).await?;
    drop_publication(source).await?;
    target.batch_execute("TRUNCATE items; CHECKPOINT").await?;
    source.batch_execute("CHECKPOINT").await?;
    Ok(NativeRun {
        time,
        states,
        walsender: monitor.workers.walsender,
        worker: monitor.workers.worker,
    })
}

/// tidesync's initial sync: `tidesync run CONFIG` from its spawn until the target equals the
/// source, then SIGTERM. The target's `items` is empty (created by the benchmark, as for
/// native; `create_tables = true` leaves it as it is).
async fn measure_tidesync(
    prepared: &Prepared,
    source: &Db,
    target: &Db,
    expected: &Fingerprint,
    monitor: &mut Monitor,
    timeout: Duration,
) -> anyhow::Result<TidesyncRun> {
    monitor.workers.reset();
    eprintln!(
        "  tidesync initial sync: tidesync run {}",
        prepared.config.display()
    );
    let deadline = Deadline::new("tidesync initial sync", timeout);
    monitor.child = Some(prepared.start("initial-sync")?);
    let time = wait_fingerprint(target, expected, monitor, &deadline).await?;
    let (peak_bytes, cpu) = monitor.stop_child()?.context("tidesync was not running")?;
    eprintln!(
        "  {:<34} {:>6.2} s  {} rows/s  peak RSS {} MB",
        "tidesync initial sync",
        time.as_secs_f64(),
        thousands(expected.rows as f64 / time.as_secs_f64()),
        mb(peak_bytes)
    );
    ensure_equal(source, target, "tidesync initial sync").await?;
    Ok(TidesyncRun {
        time,
        peak_bytes,
        cpu,
        walsender: monitor.workers.walsender,
    })
}
