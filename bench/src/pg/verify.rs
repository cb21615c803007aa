//! Benchmark `pg-verify`: `tidesync verify CONFIG` on two equal N-row tables (source and
//! target), beside `COPY (SELECT * FROM items) TO STDOUT` of both tables to nowhere: the floor
//! of any comparison that reads every row of both sides.
//!
//! Steps:
//! 1. Both servers get `items` with the same N generated rows (VACUUM ANALYZE, CHECKPOINT);
//!    their fingerprints must be equal.
//! 2. The gate: `tidesync check CONFIG`, and the binary must have a `verify` subcommand.
//! 3. Floor: COPY of both tables at once (two connections; the time until both are read),
//!    then of each alone. The client counts the bytes and rows and throws them away (as
//!    `> /dev/null` would); both COPYs must give N rows and the same number of bytes.
//! 4. tidesync (if it passed the gate): `tidesync verify CONFIG`, timed from its spawn to its
//!    exit, must exit 0. Then one row of the target is changed and verify must exit non-zero
//!    (a verify that always says "equal" would otherwise pass); the row is changed back. Then
//!    the floor again, so drift of the machine shows; the faster floor is the one compared.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures_util::StreamExt;

use super::client::Db;
use super::items::{CREATE_TABLE, Fingerprint, ensure_equal, load, settle, table_bytes};
use super::server::Servers;
use super::tidesync::{Prepared, prepare};
use super::watch::POLL;
use super::{Outcome, connect, mb, refuse_results, runtime, server_version};
use crate::Common;
use crate::child::log_tail;
use crate::report::{
    add_result_row, command_line, git_commit, load_avg, machine, now_utc, thousands,
};

const BENCH: &str = "pg-verify";
const COPY_SQL: &str = "COPY (SELECT * FROM items) TO STDOUT";

/// Options of `tidesync-bench pg-verify`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Rows in each of the two tables.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Give up on a verify that takes longer than this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    #[command(flatten)]
    common: Common,
}

/// What one COPY read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Copied {
    rows: u64,
    bytes: u64,
}

/// The floor: both tables at once, and each alone.
#[derive(Debug, Clone, Copy)]
struct Floor {
    both: Duration,
    source_alone: Duration,
    target_alone: Duration,
    copied: Copied,
}

#[derive(Debug)]
struct TidesyncRun {
    time: Duration,
    peak_bytes: u64,
    cpu: Duration,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    options.common.require_release_harness()?;
    ensure!(options.rows > 0, "--rows must be at least 1");
    let (dir, _guard) = options.common.work_dir()?;
    eprintln!(
        "tidesync-bench {BENCH}: two equal tables of {} rows",
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
    let date = now_utc();
    let command = command_line();
    let load_before = load_avg();
    let (source, target) = connect(servers).await?;
    let version = server_version(&source).await?;
    for (db, role) in [(&source, "source"), (&target, "target")] {
        db.batch_execute(CREATE_TABLE)
            .await
            .with_context(|| format!("creating items in the {role}"))?;
        load(db, n, &format!("{role}: generate rows")).await?;
        settle(db).await?;
    }
    let expected = ensure_equal(&source, &target, "the load").await?;
    ensure!(
        expected.rows as u64 == n,
        "the tables have {} rows after loading {n}",
        expected.rows
    );
    let bytes = table_bytes(&source).await?;

    let gate = prepare(&options.common, dir, servers, BENCH, Some("verify"));
    if let Err(why) = &gate {
        eprintln!("  tidesync side skipped: {why}");
        if options.common.write_results {
            return Err(refuse_results(BENCH, why));
        }
    }

    let floor = copy_floor(&source, &target, &expected, "COPY floor").await?;
    let outcome = match gate {
        Err(why) => Outcome::Skipped(why),
        Ok(prepared) => {
            match measure_tidesync(&prepared, &source, &target, &expected, options).await {
                Ok(run) => Outcome::Ran(run),
                Err(e) => Outcome::Failed(e),
            }
        }
    };
    let floor_after = if outcome.ran().is_some() {
        Some(copy_floor(&source, &target, &expected, "COPY floor, again").await?)
    } else {
        None
    };
    let load_after = load_avg();

    // The report.
    let best = floor_after
        .as_ref()
        .map_or(floor.both, |a| a.both.min(floor.both));
    let rate = |t: Duration| 2.0 * n as f64 / t.as_secs_f64();
    let commit = git_commit();
    println!("## {BENCH}, {date} (commit {commit})");
    println!();
    println!("`{command}`");
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| tables | 2 x {} rows ({} MB each with its index; {} MB of COPY text each) |",
        thousands(n as f64),
        mb(bytes as u64),
        mb(floor.copied.bytes)
    );
    println!(
        "| servers (both) | {version}; {} |",
        servers.settings_line()
    );
    for (label, f) in [
        ("COPY floor", Some(&floor)),
        ("COPY floor, again after tidesync", floor_after.as_ref()),
    ] {
        let Some(f) = f else { continue };
        println!(
            "| {label}: both tables at once | {:.2} s = {} rows/s (each alone: source {:.2} s, target {:.2} s) |",
            f.both.as_secs_f64(),
            thousands(rate(f.both)),
            f.source_alone.as_secs_f64(),
            f.target_alone.as_secs_f64()
        );
    }
    println!(
        "| tidesync verify (spawn to exit 0) | {} |",
        outcome.show(|t| format!(
            "{:.2} s = {} rows/s",
            t.time.as_secs_f64(),
            thousands(rate(t.time))
        ))
    );
    println!(
        "| **floor / tidesync verify** | {} |",
        outcome.show(|t| format!(
            "**{:.0}%** of the floor's speed (verify takes {:.2}x the COPY time)",
            100.0 * best.as_secs_f64() / t.time.as_secs_f64(),
            t.time.as_secs_f64() / best.as_secs_f64()
        ))
    );
    println!(
        "| tidesync peak RSS (VmHWM), CPU | {} |",
        outcome.show(|t| format!(
            "{} MB; {:.1} s = {:.0}% of one core",
            mb(t.peak_bytes),
            t.cpu.as_secs_f64(),
            100.0 * t.cpu.as_secs_f64() / t.time.as_secs_f64()
        ))
    );
    println!(
        "| verified | the tables are equal ({expected}); each COPY read {} rows and the same bytes{} |",
        thousands(n as f64),
        if outcome.ran().is_some() {
            "; tidesync verify exits 0 on them and non-zero once a row differs"
        } else {
            ""
        }
    );
    println!("| load average (1 min) at start / end | {load_before:.2} / {load_after:.2} |");

    if let (Some(t), true) = (outcome.ran(), options.common.write_results) {
        let intro = format!(
            "Each row is one run of the command in its last column. The floor is COPY (SELECT * \
             FROM items) TO STDOUT of both tables at once, to nowhere (before / after tidesync; \
             the faster is compared); tidesync is `tidesync verify` from spawn to exit. \"floor / \
             verify\" is the floor's time over verify's. Both servers: {}. Last run on: {}.",
            servers.settings_line(),
            machine()
        );
        let header = [
            "date",
            "commit",
            "rows per table",
            "floor s (before / after)",
            "tidesync verify s",
            "floor / verify",
            "peak RSS MB",
            "tidesync CPU",
            "load",
            "command",
        ];
        let row = [
            date.clone(),
            commit.clone(),
            thousands(n as f64),
            format!(
                "{:.2} / {}",
                floor.both.as_secs_f64(),
                floor_after
                    .as_ref()
                    .map_or("-".to_owned(), |a| format!("{:.2}", a.both.as_secs_f64()))
            ),
            format!("{:.2}", t.time.as_secs_f64()),
            format!(
                "**{:.0}%**",
                100.0 * best.as_secs_f64() / t.time.as_secs_f64()
            ),
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

/// `COPY (SELECT * FROM items) TO STDOUT`, read and thrown away; rows are counted by their
/// line ends (text COPY escapes newlines inside values).
async fn copy_all(db: &Db) -> anyhow::Result<Copied> {
    let stream = db
        .copy_out(COPY_SQL)
        .await
        .context("starting COPY TO STDOUT")?;
    let mut stream = std::pin::pin!(stream);
    let mut copied = Copied { rows: 0, bytes: 0 };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading COPY data")?;
        copied.bytes += chunk.len() as u64;
        copied.rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    Ok(copied)
}

/// The floor: both tables at once, then each alone; every COPY must read the whole table.
async fn copy_floor(
    source: &Db,
    target: &Db,
    expected: &Fingerprint,
    label: &str,
) -> anyhow::Result<Floor> {
    let started = Instant::now();
    let (s, t) = tokio::try_join!(copy_all(source), copy_all(target))?;
    let both = started.elapsed();
    let started = Instant::now();
    let s_alone = copy_all(source).await?;
    let source_alone = started.elapsed();
    let started = Instant::now();
    let t_alone = copy_all(target).await?;
    let target_alone = started.elapsed();
    for (what, c) in [
        ("source", s),
        ("target", t),
        ("source alone", s_alone),
        ("target alone", t_alone),
    ] {
        ensure!(
            c.rows == expected.rows as u64 && c.bytes == s.bytes,
            "{label}: the COPY of the {what} read {} rows and {} bytes; expected {} rows and {} bytes",
            c.rows,
            c.bytes,
            expected.rows,
            s.bytes
        );
    }
    eprintln!(
        "  {label:<34} both at once {:.2} s; source alone {:.2} s, target alone {:.2} s",
        both.as_secs_f64(),
        source_alone.as_secs_f64(),
        target_alone.as_secs_f64()
    );
    Ok(Floor {
        both,
        source_alone,
        target_alone,
        copied: s,
    })
}

/// Runs `tidesync verify CONFIG` to its exit; returns the time, the exit status, its peak
/// memory and CPU.
async fn run_verify(
    prepared: &Prepared,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<(Duration, std::process::ExitStatus, u64, Duration, String)> {
    let started = Instant::now();
    let mut child = prepared.spawn("verify", name)?;
    let status = loop {
        if let Some(status) = child.try_exit()? {
            break status;
        }
        ensure!(
            started.elapsed() <= timeout,
            "tidesync verify did not finish within {} s (its log: {})",
            timeout.as_secs(),
            child.log().display()
        );
        tokio::time::sleep(POLL).await;
    };
    let time = started.elapsed();
    let tail = log_tail(child.log(), 20);
    Ok((time, status, child.peak_bytes(), child.usage().cpu, tail))
}

/// tidesync's verify of the two equal tables (must exit 0), then of tables that differ in one
/// row (must exit non-zero).
async fn measure_tidesync(
    prepared: &Prepared,
    source: &Db,
    target: &Db,
    expected: &Fingerprint,
    options: &Options,
) -> anyhow::Result<TidesyncRun> {
    let timeout = Duration::from_secs(options.timeout_secs);
    eprintln!("  tidesync: tidesync verify {}", prepared.config.display());
    let (time, status, peak_bytes, cpu, tail) = run_verify(prepared, "verify", timeout).await?;
    ensure!(
        status.success(),
        "tidesync verify of two equal tables did not exit 0 ({status}); the end of its log:\n{tail}"
    );
    eprintln!(
        "  {:<34} {:.2} s  peak RSS {} MB",
        "tidesync verify",
        time.as_secs_f64(),
        mb(peak_bytes)
    );
    // It must also see a difference.
    let id = (expected.max_id / 2).max(1);
    target
        .execute("UPDATE items SET qty = qty + 1 WHERE id = $1", &[&id])
        .await
        .context("changing one row of the target")?;
    let (_, status, _, _, tail) = run_verify(prepared, "verify-differs", timeout).await?;
    target
        .execute("UPDATE items SET qty = qty - 1 WHERE id = $1", &[&id])
        .await
        .context("changing the row of the target back")?;
    ensure!(
        !status.success(),
        "tidesync verify exited 0 although row {id} of the target differs from the source; the \
         end of its log:\n{tail}"
    );
    eprintln!("  tidesync verify saw the changed row {id} ({status})");
    ensure_equal(source, target, "the tables after verify").await?;
    Ok(TidesyncRun {
        time,
        peak_bytes,
        cpu,
    })
}
