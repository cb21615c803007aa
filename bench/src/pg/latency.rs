//! Benchmark `pg-latency`: commit-to-applied latency of PostgreSQL -> PostgreSQL at a steady
//! write rate, tidesync beside native logical replication, on the same two servers. Target:
//! tidesync's p99 under 50 ms at 5,000 changes/s.
//!
//! How latency is measured, and why this way:
//! - **Commit time** is the source's own commit timestamp of each row's transaction
//!   (`pg_xact_commit_timestamp(xmin)`, with `track_commit_timestamp = on` on both servers): the
//!   moment the transaction committed, not when the client sent or saw it.
//! - **Applied time** is stamped in the target by a trigger, `AFTER INSERT OR UPDATE ON items`,
//!   that inserts `(id, clock_timestamp())` into `bench_applied` the first time a row arrives.
//!   It is `ENABLE ALWAYS`, so it fires in native replication's apply worker (which runs with
//!   session_replication_role = replica) as well as in tidesync's sink sessions. The target's
//!   own commit timestamps cannot be used: native apply records the ORIGIN's commit time as
//!   the commit timestamp of the transactions it applies.
//! - Both servers run on this machine, so both stamps come from the same clock. A negative
//!   latency fails the run.
//!
//! The writer: `--writers` connections (4) insert transactions of `--txn-rows` rows (10) at
//! fixed times, `--rate` changes/s in all (5,000) for `--duration-secs` (30): transaction k is
//! due at start + k * txn_rows / rate, and each writer takes every W-th one. Rows carry their
//! insert time (`updated_at = clock_timestamp()`). The report gives the achieved rate and how
//! late transactions started, so a writer that could not keep the pace shows. Rows committed
//! in the first `--warmup-secs` (2) are left out of the percentiles.
//!
//! Steps: both servers get `items` (the target also `bench_applied` and the trigger), the
//! source a seed row (id 0); the gate; native (publication, subscription ready with row 0,
//! the paced run, wait until every row is stamped in the target, verify, drop); tidesync if it
//! passed the gate (spawn, ready with row 0, the same paced run, SIGTERM), then native again.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::task::JoinSet;

use super::client::Db;
use super::items::{
    CREATE_TABLE, FIXED_UPDATED_AT, ensure_equal, insert_range, insert_sql, settle, wait_row_equal,
};
use super::native::{
    create_publication, create_subscription, drop_idle_slots, drop_publication, drop_subscription,
    wait_ready,
};
use super::server::{DB, Servers};
use super::tidesync::{Prepared, prepare};
use super::watch::{Deadline, Monitor, Peak};
use super::{NativeOptions, Outcome, connect, mb, refuse_results, runtime, server_version};
use crate::Common;
use crate::report::{
    add_result_row, command_line, git_commit, load_avg, machine, now_utc, thousands,
};

const BENCH: &str = "pg-latency";

/// The target's applied-time stamps: a table and an ALWAYS trigger on items. The function
/// names its table with the schema: logical replication workers run with an empty
/// search_path.
const STAMP_SQL: &str = "
CREATE TABLE bench_applied (id bigint PRIMARY KEY, applied_at timestamptz NOT NULL);
CREATE FUNCTION bench_stamp_applied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.bench_applied VALUES (NEW.id, clock_timestamp()) ON CONFLICT (id) DO NOTHING;
  RETURN NULL;
END $$;
CREATE TRIGGER bench_stamp_applied AFTER INSERT OR UPDATE ON items
  FOR EACH ROW EXECUTE FUNCTION bench_stamp_applied();
ALTER TABLE items ENABLE ALWAYS TRIGGER bench_stamp_applied;
";

/// Options of `tidesync-bench pg-latency`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Changes (inserted rows) per second the writers keep up.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// How long the writers write, in seconds.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// Rows per transaction.
    #[arg(long, default_value_t = 10)]
    txn_rows: u64,
    /// Concurrent writer connections (each takes every W-th transaction).
    #[arg(long, default_value_t = 4)]
    writers: u64,
    /// Rows committed in the first this many seconds are left out of the percentiles.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Give up when a step takes longer than this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    #[command(flatten)]
    native: NativeOptions,
    #[command(flatten)]
    common: Common,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Percentiles {
    count: usize,
    p50: i64,
    p90: i64,
    p99: i64,
    p999: i64,
    max: i64,
}

impl Percentiles {
    /// Of `values` (sorted here); None if empty.
    fn of(values: &mut [i64]) -> Option<Percentiles> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let at = |q: f64| {
            let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
            values[i]
        };
        Some(Percentiles {
            count: values.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: values[values.len() - 1],
        })
    }

    fn show(&self) -> String {
        let ms = |us: i64| us as f64 / 1000.0;
        format!(
            "p50 {:.1} ms, p90 {:.1} ms, **p99 {:.1} ms**, p99.9 {:.1} ms, max {:.1} ms ({} rows)",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            thousands(self.count as f64)
        )
    }
}

/// One paced run, as one side applied it.
#[derive(Debug)]
struct Run {
    /// Commit (source) to applied (target).
    latency: Percentiles,
    /// Insert (`clock_timestamp()` in the row) to the commit timestamp, in the source: the time
    /// inside the writer's transaction, for information (the commit timestamp is taken before
    /// the WAL flush, so it does not include the fsync).
    commit_wait: Percentiles,
    rows: u64,
    /// The rate achieved: rows over the first to last commit.
    achieved_rate: f64,
    /// The latest a transaction started after it was due, and how many were > 5 ms late.
    max_late: Duration,
    late_txns: u64,
    walsender: Peak,
    worker: Peak,
}

#[derive(Debug)]
struct TidesyncRun {
    run: Run,
    peak_bytes: u64,
    cpu: Duration,
    wall: Duration,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    options.common.require_release_harness()?;
    ensure!(options.rate > 0, "--rate must be at least 1");
    ensure!(options.txn_rows > 0, "--txn-rows must be at least 1");
    ensure!(options.writers > 0, "--writers must be at least 1");
    ensure!(
        options.warmup_secs < options.duration_secs,
        "--warmup-secs must be shorter than --duration-secs"
    );
    ensure!(
        options.rate * options.duration_secs >= options.txn_rows,
        "--rate x --duration-secs must be at least one transaction"
    );
    let (dir, _guard) = options.common.work_dir()?;
    eprintln!(
        "tidesync-bench {BENCH}: {} changes/s for {} s in {}-row transactions",
        thousands(options.rate as f64),
        options.duration_secs,
        options.txn_rows
    );
    eprintln!("  work dir: {}", dir.display());
    let servers = Servers::start(&dir, &[("track_commit_timestamp", "on")])?;
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

/// Both tables back to the seed row alone, no stamps, nothing dirty.
async fn reset(source: &Db, target: &Db) -> anyhow::Result<()> {
    source.batch_execute("TRUNCATE items").await?;
    target
        .batch_execute("TRUNCATE items, bench_applied")
        .await?;
    insert_range(source, &insert_sql(FIXED_UPDATED_AT), 0, 0).await?;
    settle(source).await?;
    target.batch_execute("CHECKPOINT").await?;
    Ok(())
}

async fn bench(options: &Options, dir: &Path, servers: &Servers) -> anyhow::Result<()> {
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
    target
        .batch_execute(STAMP_SQL)
        .await
        .context("creating the applied-time trigger in the target")?;
    reset(&source, &target).await?;

    let gate = prepare(&options.common, dir, servers, BENCH, None);
    if let Err(why) = &gate {
        eprintln!("  tidesync side skipped: {why}");
        if options.common.write_results {
            return Err(refuse_results(BENCH, why));
        }
    }
    let mut monitor = Monitor::new(servers).await?;
    let native = native_latency(servers, &source, &target, &mut monitor, options, "native").await?;
    let outcome = match gate {
        Err(why) => Outcome::Skipped(why),
        Ok(prepared) => {
            drop_idle_slots(&source).await?;
            reset(&source, &target).await?;
            match measure_tidesync(&prepared, servers, &source, &target, &mut monitor, options)
                .await
            {
                Ok(run) => Outcome::Ran(run),
                Err(e) => {
                    monitor.child = None;
                    Outcome::Failed(e)
                }
            }
        }
    };
    let native_after = if outcome.ran().is_some() {
        drop_idle_slots(&source).await?;
        reset(&source, &target).await?;
        Some(
            native_latency(
                servers,
                &source,
                &target,
                &mut monitor,
                options,
                "native, again",
            )
            .await?,
        )
    } else {
        None
    };
    let load_after = load_avg();

    // The report.
    let commit = git_commit();
    let p99_ok = |p: &Percentiles| p.p99 < 50_000;
    println!("## {BENCH}, {date} (commit {commit})");
    println!();
    println!("`{command}`");
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| workload | {} changes/s for {} s: {}-row insert transactions from {} paced writers; the first {} s left out |",
        thousands(options.rate as f64),
        options.duration_secs,
        options.txn_rows,
        options.writers,
        options.warmup_secs
    );
    println!(
        "| servers (both) | {version}; {} |",
        servers.settings_line()
    );
    let pace = |r: &Run| {
        format!(
            "{} rows written at {} changes/s; latest start {:.1} ms after due, {} transactions > 5 ms late; insert-to-commit-timestamp in the source {}",
            thousands(r.rows as f64),
            thousands(r.achieved_rate),
            r.max_late.as_secs_f64() * 1000.0,
            r.late_txns,
            r.commit_wait.show().replace("**", "")
        )
    };
    for (label, run) in [
        ("native", Some(&native)),
        ("native, again after tidesync", native_after.as_ref()),
    ] {
        let Some(run) = run else { continue };
        println!(
            "| {label} commit-to-applied (subscription synchronous_commit={}) | {} |",
            options.native.native_synchronous_commit,
            run.latency.show()
        );
        println!("| {label}: writers | {} |", pace(run));
        println!(
            "| {label}: peak memory | source walsenders: {}; target replication workers: {} |",
            run.walsender.show(),
            run.worker.show()
        );
    }
    println!(
        "| tidesync commit-to-applied | {} |",
        outcome.show(|t| format!(
            "{} (target p99 < 50 ms: {})",
            t.run.latency.show(),
            verdict(p99_ok(&t.run.latency))
        ))
    );
    println!("| tidesync: writers | {} |", outcome.show(|t| pace(&t.run)));
    println!(
        "| tidesync / native p99 | {} |",
        outcome.show(|t| {
            let best = native_after.as_ref().map_or(native.latency.p99, |a| {
                a.latency.p99.min(native.latency.p99)
            });
            format!("{:.2}x", t.run.latency.p99 as f64 / best.max(1) as f64)
        })
    );
    println!(
        "| tidesync peak RSS (VmHWM), CPU | {} |",
        outcome.show(|t| format!(
            "{} MB; {:.1} s = {:.0}% of one core over {:.1} s; its walsender: {}",
            mb(t.peak_bytes),
            t.cpu.as_secs_f64(),
            100.0 * t.cpu.as_secs_f64() / t.wall.as_secs_f64(),
            t.wall.as_secs_f64(),
            t.run.walsender.show()
        ))
    );
    println!(
        "| verified | after each run the target equals the source (count, max id, checksum of every row) and every row has its applied stamp |"
    );
    println!("| load average (1 min) at start / end | {load_before:.2} / {load_after:.2} |");

    if let (Some(t), true) = (outcome.ran(), options.common.write_results) {
        let intro = format!(
            "Each row is one run of the command in its last column. Latency is the target's \
             applied stamp (an ALWAYS trigger, clock_timestamp()) minus the source's commit \
             timestamp of the row's transaction, same machine clock; the first seconds are left \
             out. Native is shown before / after tidesync. Target: tidesync p99 < 50 ms at 5,000 \
             changes/s. Both servers: {}. Last run on: {}.",
            servers.settings_line(),
            machine()
        );
        let header = [
            "date",
            "commit",
            "changes/s (achieved)",
            "txn rows x writers",
            "native p50 / p99 ms (before; after)",
            "tidesync p50 / p99 / max ms",
            "p99 < 50 ms",
            "peak RSS MB",
            "load",
            "command",
        ];
        let ms = |us: i64| format!("{:.1}", us as f64 / 1000.0);
        let row = [
            date.clone(),
            commit.clone(),
            format!(
                "{} ({})",
                thousands(options.rate as f64),
                thousands(t.run.achieved_rate)
            ),
            format!("{} x {}", options.txn_rows, options.writers),
            format!(
                "{} / {}; {}",
                ms(native.latency.p50),
                ms(native.latency.p99),
                native_after.as_ref().map_or("-".to_owned(), |a| format!(
                    "{} / {}",
                    ms(a.latency.p50),
                    ms(a.latency.p99)
                ))
            ),
            format!(
                "{} / **{}** / {}",
                ms(t.run.latency.p50),
                ms(t.run.latency.p99),
                ms(t.run.latency.max)
            ),
            verdict(p99_ok(&t.run.latency)).to_owned(),
            mb(t.peak_bytes),
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

/// What the paced writers did.
#[derive(Debug)]
struct Paced {
    rows: u64,
    max_late: Duration,
    late_txns: u64,
}

/// Writes `rate` changes/s for `duration_secs` from `writers` connections, on schedule.
async fn paced_writes(
    servers: &Servers,
    monitor: &mut Monitor,
    options: &Options,
    label: &str,
) -> anyhow::Result<Paced> {
    let txns = options.rate * options.duration_secs / options.txn_rows;
    let txn_rows = options.txn_rows;
    let interval = Duration::from_secs_f64(txn_rows as f64 / options.rate as f64);
    let writers_n = options.writers;
    let mut connections = Vec::new();
    for _ in 0..writers_n {
        connections.push(Db::connect(&servers.source.url(DB), "source").await?);
    }
    let written = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut set = JoinSet::new();
    for (w, writer) in connections.into_iter().enumerate() {
        let written = written.clone();
        set.spawn(async move {
            let statement = writer.prepare(&insert_sql("clock_timestamp()")).await?;
            let (mut max_late, mut late_txns) = (Duration::ZERO, 0_u64);
            for k in (w as u64..txns).step_by(writers_n as usize) {
                let due = start + interval.mul_f64(k as f64);
                tokio::time::sleep_until(due).await;
                let late = tokio::time::Instant::now().saturating_duration_since(due);
                max_late = max_late.max(late);
                if late > Duration::from_millis(5) {
                    late_txns += 1;
                }
                let (first, last) = ((k * txn_rows + 1) as i64, ((k + 1) * txn_rows) as i64);
                writer
                    .execute(&statement, &[&first, &last])
                    .await
                    .with_context(|| format!("inserting rows {first}..={last}"))?;
                written.fetch_add(txn_rows, Ordering::Relaxed);
            }
            anyhow::Ok((max_late, late_txns))
        });
    }
    let deadline = Deadline::new(
        format!("{label}: paced writes"),
        Duration::from_secs(options.duration_secs + options.timeout_secs),
    );
    let (mut max_late, mut late_txns) = (Duration::ZERO, 0);
    let mut shown = 0;
    loop {
        while let Some(done) = set.try_join_next() {
            let (late, count) = done.context("a writer panicked")??;
            max_late = max_late.max(late);
            late_txns += count;
        }
        if set.is_empty() {
            break;
        }
        let secs = deadline.elapsed().as_secs();
        if secs > shown {
            shown = secs;
            eprintln!(
                "  {label:<34} {:>6.1} s  {:>11} / {} written",
                deadline.elapsed().as_secs_f64(),
                thousands(written.load(Ordering::Relaxed) as f64),
                thousands((txns * txn_rows) as f64)
            );
        }
        deadline.tick(monitor).await?;
    }
    Ok(Paced {
        rows: txns * txn_rows,
        max_late,
        late_txns,
    })
}

/// One side's paced run, once the side is ready: writes, waits until every row is stamped
/// in the target, verifies, computes the latencies.
async fn paced_run(
    servers: &Servers,
    source: &Db,
    target: &Db,
    monitor: &mut Monitor,
    options: &Options,
    label: &str,
) -> anyhow::Result<Run> {
    let paced = paced_writes(servers, monitor, options, label).await?;
    let deadline = Deadline::new(
        format!("{label}: every row applied"),
        Duration::from_secs(options.timeout_secs),
    );
    let mut polls: u64 = 0;
    loop {
        if polls.is_multiple_of(5) {
            let row = target
                .query_one("SELECT count(*) FROM bench_applied WHERE id > 0", &[])
                .await
                .context("counting bench_applied")?;
            let stamped: i64 = row.get(0);
            if stamped as u64 >= paced.rows {
                break;
            }
        }
        polls += 1;
        deadline.tick(monitor).await?;
    }
    ensure_equal(source, target, label).await?;

    // Commit and insert times from the source, applied times from the target, in µs.
    let source_rows = source
        .query(
            "SELECT id, \
                    (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::int8, \
                    (extract(epoch FROM updated_at) * 1000000)::int8 \
             FROM items WHERE id > 0",
            &[],
        )
        .await
        .context("reading the source's commit timestamps")?;
    let applied_rows = target
        .query(
            "SELECT id, (extract(epoch FROM applied_at) * 1000000)::int8 FROM bench_applied WHERE id > 0",
            &[],
        )
        .await
        .context("reading the target's applied stamps")?;
    let n = paced.rows as usize;
    let mut applied: Vec<Option<i64>> = vec![None; n + 1];
    for r in &applied_rows {
        let id: i64 = r.get(0);
        let slot = usize::try_from(id)
            .ok()
            .and_then(|i| applied.get_mut(i))
            .with_context(|| format!("bench_applied has an unexpected id {id}"))?;
        *slot = Some(r.get(1));
    }
    let mut commits: Vec<(i64, i64, i64)> = Vec::with_capacity(n);
    for r in &source_rows {
        let commit_us: Option<i64> = r.get(1);
        let commit_us = commit_us.with_context(|| {
            format!(
                "row {} has no commit timestamp (is track_commit_timestamp on?)",
                r.get::<_, i64>(0)
            )
        })?;
        commits.push((r.get(0), commit_us, r.get(2)));
    }
    ensure!(
        commits.len() == n,
        "the source has {} written rows, expected {n}",
        commits.len()
    );
    let first_commit = commits.iter().map(|c| c.1).min().unwrap_or(0);
    let last_commit = commits.iter().map(|c| c.1).max().unwrap_or(0);
    let warmup_end = first_commit + (options.warmup_secs * 1_000_000) as i64;
    let mut latencies = Vec::with_capacity(n);
    let mut waits = Vec::with_capacity(n);
    for &(id, commit_us, inserted_us) in &commits {
        if commit_us < warmup_end {
            continue;
        }
        let applied_us = applied
            .get(id as usize)
            .copied()
            .flatten()
            .with_context(|| format!("row {id} has no applied stamp in the target"))?;
        let latency = applied_us - commit_us;
        if latency < 0 {
            bail!(
                "row {id} was stamped applied {} µs BEFORE its commit in the source: the \
                 measurement is broken (clocks?)",
                -latency
            );
        }
        latencies.push(latency);
        waits.push(commit_us - inserted_us);
    }
    let latency = Percentiles::of(&mut latencies)
        .context("no rows committed after the warm-up; lengthen --duration-secs")?;
    let commit_wait = Percentiles::of(&mut waits).context("no rows after the warm-up")?;
    let span = (last_commit - first_commit).max(1) as f64 / 1e6;
    eprintln!(
        "  {label:<34} commit-to-applied {}",
        latency.show().replace("**", "")
    );
    Ok(Run {
        latency,
        commit_wait,
        rows: paced.rows,
        achieved_rate: paced.rows as f64 / span,
        max_late: paced.max_late,
        late_txns: paced.late_txns,
        walsender: monitor.workers.walsender,
        worker: monitor.workers.worker,
    })
}

/// Native logical replication: subscription ready with the seed row, the paced run; leaves
/// no subscription or publication.
async fn native_latency(
    servers: &Servers,
    source: &Db,
    target: &Db,
    monitor: &mut Monitor,
    options: &Options,
    label: &str,
) -> anyhow::Result<Run> {
    create_publication(source).await?;
    monitor.workers.reset();
    let deadline = Deadline::new(
        format!("{label}: subscription ready"),
        Duration::from_secs(options.timeout_secs),
    );
    create_subscription(target, servers, &options.native, monitor).await?;
    wait_ready(target, monitor, &deadline).await?;
    wait_row_equal(source, target, 0, monitor, &deadline).await?;
    let run = paced_run(servers, source, target, monitor, options, label).await?;
    drop_subscription(target).await?;
    drop_publication(source).await?;
    Ok(run)
}

/// tidesync: `tidesync run CONFIG` on the tables reset to the seed row; ready when row 0 is
/// in the target; the same paced run; SIGTERM.
async fn measure_tidesync(
    prepared: &Prepared,
    servers: &Servers,
    source: &Db,
    target: &Db,
    monitor: &mut Monitor,
    options: &Options,
) -> anyhow::Result<TidesyncRun> {
    monitor.workers.reset();
    eprintln!("  tidesync: tidesync run {}", prepared.config.display());
    let deadline = Deadline::new(
        "tidesync: seed row in the target",
        Duration::from_secs(options.timeout_secs),
    );
    monitor.child = Some(prepared.start("latency")?);
    let ready = wait_row_equal(source, target, 0, monitor, &deadline).await?;
    eprintln!("  {:<34} ready in {:.2} s", "tidesync", ready.as_secs_f64());
    let run = paced_run(servers, source, target, monitor, options, "tidesync").await?;
    let wall = deadline.elapsed();
    let (peak_bytes, cpu) = monitor.stop_child()?.context("tidesync was not running")?;
    Ok(TidesyncRun {
        run,
        peak_bytes,
        cpu,
        wall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<i64> = (1..=1000).rev().collect();
        let p = Percentiles::of(&mut v).expect("not empty");
        assert_eq!(
            (p.p50, p.p90, p.p99, p.p999, p.max),
            (500, 900, 990, 999, 1000)
        );
        assert_eq!(p.count, 1000);
        assert!(Percentiles::of(&mut []).is_none());
        let p = Percentiles::of(&mut [7]).expect("not empty");
        assert_eq!((p.p50, p.p99, p.max), (7, 7, 7));
    }
}
