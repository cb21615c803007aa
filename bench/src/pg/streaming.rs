//! Benchmark `pg-streaming`: PostgreSQL -> PostgreSQL streaming of a write workload, tidesync
//! beside native logical replication's apply and the raw pgoutput decode rate of
//! `pg_recvlogical` (the ceiling), on the same two servers. Targets: at least native's
//! throughput, at least 50% of the raw decode rate, peak memory under 200 MB.
//!
//! The workload has two phases, each timed from its first write until the target has applied
//! its last transaction:
//! - **inserts**: N rows (ids 1..N) in transactions of `--txn-rows` (1,000) rows, one writer,
//!   each transaction one `INSERT ... SELECT FROM generate_series` (the rows are made by the
//!   source server, so the writer costs one round trip per transaction);
//! - **updates**: `--updates` single-row update transactions (100,000) on distinct rows spread
//!   over the table, from `--update-writers` concurrent connections (4, so the source can group
//!   its commits); the last one is written alone after all the others have committed.
//!
//! With `--catch-up`, the target side is paused during each phase's writes (native: the
//! subscription disabled; tidesync: stopped with SIGTERM) and the clock runs from its resume
//! (`ENABLE`; a new `tidesync run`) until it has applied the phase: apply throughput on a
//! backlog, for when the writers are slower than the apply (single-row transactions with
//! synchronous_commit on are fsync-bound, so in streaming mode both sides merely keep up).
//!
//! "Applied" is when the target's row written by the phase's last transaction equals the
//! source's (a primary-key lookup every 20 ms): both native apply and tidesync apply in commit
//! order, and the full fingerprint comparison after each phase proves nothing is missing.
//!
//! Steps:
//! 1. Both servers get `items`; the source gets one seed row (id 0).
//! 2. The gate (`tidesync check CONFIG`).
//! 3. Native: publication and subscription (the seed row is copied: ready when the table's
//!    state is `r` and row 0 is there). Before each phase, a pgoutput slot is created on the
//!    source; after the phase has been applied and verified, `pg_recvlogical` decodes that
//!    slot up to the WAL position read right after the phase's last commit: the decode rate of
//!    the same changes with nothing else running. The subscription and publication are then
//!    dropped, and both tables reset to the seed row.
//! 4. tidesync (if it passed the gate): `tidesync run CONFIG` is spawned; ready when row 0 is in
//!    the target; the same two phases; SIGTERM. Then native again, pg_recvlogical included, so
//!    drift of the machine shows; the faster native run and the faster decode are compared.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::task::JoinSet;

use super::client::{Db, Lsn, current_lsn};
use super::items::{
    CREATE_TABLE, FIXED_UPDATED_AT, UPDATE_SQL, ensure_equal, insert_range, insert_sql, settle,
    update_ids, wait_row_equal,
};
use super::native::{
    Decode, create_publication, create_slot, create_subscription, decode, disable_subscription,
    drop_idle_slots, drop_publication, drop_slot, drop_subscription, enable_subscription,
    wait_launcher, wait_ready,
};
use super::server::{DB, Servers};
use super::tidesync::{Prepared, prepare};
use super::watch::{Deadline, Monitor, Peak};
use super::{NativeOptions, Outcome, connect, mb, refuse_results, runtime, server_version};
use crate::Common;
use crate::report::{
    add_result_row, command_line, git_commit, load_avg, machine, now_utc, thousands,
};

const BENCH: &str = "pg-streaming";

/// Options of `tidesync-bench pg-streaming`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Rows inserted by the insert phase.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Rows per transaction of the insert phase.
    #[arg(long, default_value_t = 1000)]
    txn_rows: u64,
    /// Single-row update transactions of the update phase (at most --rows).
    #[arg(long, default_value_t = 100_000)]
    updates: u64,
    /// Concurrent connections writing the updates.
    #[arg(long, default_value_t = 4)]
    update_writers: u64,
    /// Pause the target side during each phase's writes (native: the subscription disabled;
    /// tidesync: stopped) and time it from its resume until it has applied the phase: its
    /// apply throughput on a backlog, with the writers out of the way.
    #[arg(long)]
    catch_up: bool,
    /// Give up on a phase that takes longer than this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    #[command(flatten)]
    native: NativeOptions,
    #[command(flatten)]
    common: Common,
}

/// One phase of the workload, as one side applied it.
#[derive(Debug, Clone, Copy)]
struct Phase {
    changes: u64,
    /// From the first write until the last commit returned (the source alone).
    write_time: Duration,
    /// From the first write (with --catch-up: from the resume) until the target had the last
    /// transaction.
    apply_time: Duration,
    /// From the last commit in the source until the target had it.
    lag: Duration,
    /// WAL position before the phase and right after its last commit.
    lsns: (Lsn, Lsn),
}

impl Phase {
    fn apply_rate(&self) -> f64 {
        self.changes as f64 / self.apply_time.as_secs_f64()
    }

    fn write_rate(&self) -> f64 {
        self.changes as f64 / self.write_time.as_secs_f64()
    }

    fn show_lag(&self, catch_up: bool) -> String {
        if catch_up {
            "paused during the writes, timed from the resume".to_owned()
        } else {
            format!(
                "applied {:.0} ms after the last commit",
                self.lag.as_secs_f64() * 1000.0
            )
        }
    }
}

/// One side's run of both phases.
#[derive(Debug)]
struct Run {
    /// From the start (CREATE SUBSCRIPTION or the spawn of tidesync) until the seed row was in
    /// the target.
    ready: Duration,
    inserts: Phase,
    updates: Phase,
    walsender: Peak,
    worker: Peak,
}

/// tidesync's run: the phases and the child's costs.
#[derive(Debug)]
struct TidesyncRun {
    run: Run,
    peak_bytes: u64,
    cpu: Duration,
    /// Wall time tidesync ran, for its CPU share.
    wall: Duration,
}

/// pg_recvlogical's decode of each phase.
#[derive(Debug)]
struct Ceiling {
    inserts: Decode,
    updates: Decode,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    options.common.require_release_harness()?;
    ensure!(options.rows > 0, "--rows must be at least 1");
    ensure!(options.txn_rows > 0, "--txn-rows must be at least 1");
    ensure!(
        (1..=options.rows).contains(&options.updates),
        "--updates must be between 1 and --rows (each update touches a different row)"
    );
    ensure!(
        options.update_writers > 0,
        "--update-writers must be at least 1"
    );
    let (dir, _guard) = options.common.work_dir()?;
    eprintln!(
        "tidesync-bench {BENCH}: {} inserts in {}-row transactions, {} single-row updates",
        thousands(options.rows as f64),
        thousands(options.txn_rows as f64),
        thousands(options.updates as f64)
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

/// Both tables back to the seed row alone, nothing dirty.
async fn reset(source: &Db, target: &Db) -> anyhow::Result<()> {
    source.batch_execute("TRUNCATE items").await?;
    target.batch_execute("TRUNCATE items").await?;
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
    reset(&source, &target).await?;

    let gate = prepare(&options.common, dir, servers, BENCH, None);
    if let Err(why) = &gate {
        eprintln!("  tidesync side skipped: {why}");
        if options.common.write_results {
            return Err(refuse_results(BENCH, why));
        }
    }
    let mut monitor = Monitor::new(servers).await?;

    let (native, ceiling) =
        native_streaming(servers, &source, &target, &mut monitor, options, dir, 1).await?;

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
        Some(native_streaming(servers, &source, &target, &mut monitor, options, dir, 2).await?)
    } else {
        None
    };
    // The ceiling is the faster decode of each phase.
    let ceiling = match &native_after {
        Some((_, again)) => Ceiling {
            inserts: faster(ceiling.inserts, again.inserts),
            updates: faster(ceiling.updates, again.updates),
        },
        None => ceiling,
    };
    let native_after = native_after.map(|(run, _)| run);
    let load_after = load_avg();

    // The report.
    let best = |pick: fn(&Run) -> Phase| {
        let a = pick(&native);
        match native_after.as_ref().map(pick) {
            Some(b) if b.apply_rate() > a.apply_rate() => b,
            _ => a,
        }
    };
    let native_inserts = best(|r| r.inserts);
    let native_updates = best(|r| r.updates);
    let decode_rate = |d: &Decode, changes: u64| changes as f64 / d.time.as_secs_f64();
    let ceiling_inserts = decode_rate(&ceiling.inserts, options.rows);
    let ceiling_updates = decode_rate(&ceiling.updates, options.updates);
    let commit = git_commit();
    println!("## {BENCH}, {date} (commit {commit})");
    println!();
    println!("`{command}`");
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| workload | inserts: {} rows in {}-row transactions, 1 writer; updates: {} single-row transactions, {} writers; {} |",
        thousands(options.rows as f64),
        thousands(options.txn_rows as f64),
        thousands(options.updates as f64),
        options.update_writers,
        mode(options.catch_up)
    );
    println!(
        "| servers (both) | {version}; {} |",
        servers.settings_line()
    );
    for (label, run) in [
        ("native", Some(&native)),
        ("native, again after tidesync", native_after.as_ref()),
    ] {
        let Some(run) = run else { continue };
        for (phase, p) in [("inserts", &run.inserts), ("updates", &run.updates)] {
            println!(
                "| {label} ({phase}; subscription synchronous_commit={}) | applied {} changes/s ({:.2} s; {}); the source alone wrote {} changes/s ({:.2} s); {} MB of WAL |",
                options.native.native_synchronous_commit,
                thousands(p.apply_rate()),
                p.apply_time.as_secs_f64(),
                p.show_lag(options.catch_up),
                thousands(p.write_rate()),
                p.write_time.as_secs_f64(),
                mb(p.lsns.1.bytes_since(p.lsns.0))
            );
        }
        println!(
            "| {label}: peak memory | source walsenders: {}; target replication workers: {} |",
            run.walsender.show(),
            run.worker.show()
        );
    }
    for (phase, d, rate) in [
        ("inserts", &ceiling.inserts, ceiling_inserts),
        ("updates", &ceiling.updates, ceiling_updates),
    ] {
        println!(
            "| pg_recvlogical decode ({phase}; pgoutput proto_version=1, to /dev/null: the ceiling) | {} changes/s ({:.2} s, {} MB of WAL); its walsender: {}; pg_recvlogical VmHWM {:.1} MB |",
            thousands(rate),
            d.time.as_secs_f64(),
            mb(d.wal_bytes),
            d.walsender.show(),
            d.client_hwm_kb as f64 / 1024.0
        );
    }
    for (phase, pick, native_phase, ceiling_rate) in [
        (
            "inserts",
            (|r: &Run| r.inserts) as fn(&Run) -> Phase,
            native_inserts,
            ceiling_inserts,
        ),
        (
            "updates",
            |r: &Run| r.updates,
            native_updates,
            ceiling_updates,
        ),
    ] {
        println!(
            "| tidesync ({phase}) | {} |",
            outcome.show(|t| {
                let p = pick(&t.run);
                format!(
                    "applied {} changes/s ({:.2} s; {}); the source alone wrote {} changes/s",
                    thousands(p.apply_rate()),
                    p.apply_time.as_secs_f64(),
                    p.show_lag(options.catch_up),
                    thousands(p.write_rate())
                )
            })
        );
        println!(
            "| **tidesync / native, tidesync / decode ({phase})** | {} |",
            outcome.show(|t| {
                let p = pick(&t.run);
                let vs_native = p.apply_rate() / native_phase.apply_rate();
                let vs_decode = p.apply_rate() / ceiling_rate;
                format!(
                    "**{vs_native:.2}x** native (target >= 1: {}), **{:.0}%** of decode (target >= 50%: {})",
                    verdict(vs_native >= 1.0),
                    vs_decode * 100.0,
                    verdict(vs_decode >= 0.5)
                )
            })
        );
    }
    println!(
        "| tidesync peak RSS (VmHWM) | {} |",
        outcome.show(|t| format!(
            "{} MB (target < 200 MB: {})",
            mb(t.peak_bytes),
            verdict(t.peak_bytes < 200_000_000)
        ))
    );
    println!(
        "| tidesync CPU, its walsender | {} |",
        outcome.show(|t| format!(
            "{:.1} s = {:.0}% of one core over {:.1} s; walsender: {}",
            t.cpu.as_secs_f64(),
            100.0 * t.cpu.as_secs_f64() / t.wall.as_secs_f64(),
            t.wall.as_secs_f64(),
            t.run.walsender.show()
        ))
    );
    println!(
        "| startup (to the seed row in the target) | native {:.2} s; tidesync {} |",
        native.ready.as_secs_f64(),
        outcome.show(|t| format!("{:.2} s", t.run.ready.as_secs_f64()))
    );
    println!(
        "| verified | after each phase of each run the target equals the source (count, max id, checksum of every row) |"
    );
    println!("| load average (1 min) at start / end | {load_before:.2} / {load_after:.2} |");

    if let (Some(t), true) = (outcome.ran(), options.common.write_results) {
        let intro = format!(
            "Each row is one run of the command in its last column. Rates are changes per second \
             from a phase's first write until the target has its last transaction (\"catch-up\": \
             the target side paused during the writes, timed from its resume); native is the \
             faster of the runs before / after tidesync; decode is pg_recvlogical (pgoutput) \
             decoding the same changes to /dev/null: the ceiling. Targets: tidesync >= native, \
             >= 50% of decode, peak RSS (VmHWM) < 200 MB. Both servers: {}. Last run on: {}.",
            servers.settings_line(),
            machine()
        );
        let header = [
            "date",
            "commit",
            "mode",
            "inserts (txn rows)",
            "updates (writers)",
            "native inserts/s",
            "decode inserts/s",
            "tidesync inserts/s",
            "native updates/s",
            "decode updates/s",
            "tidesync updates/s",
            "tidesync / native (ins / upd)",
            "tidesync / decode (ins / upd)",
            "peak RSS MB",
            "load",
            "command",
        ];
        let (ti, tu) = (t.run.inserts.apply_rate(), t.run.updates.apply_rate());
        let row = [
            date.clone(),
            commit.clone(),
            if options.catch_up {
                "catch-up"
            } else {
                "streaming"
            }
            .to_owned(),
            format!("{} ({})", thousands(options.rows as f64), options.txn_rows),
            format!(
                "{} ({})",
                thousands(options.updates as f64),
                options.update_writers
            ),
            thousands(native_inserts.apply_rate()),
            thousands(ceiling_inserts),
            thousands(ti),
            thousands(native_updates.apply_rate()),
            thousands(ceiling_updates),
            thousands(tu),
            format!(
                "**{:.2}x / {:.2}x**",
                ti / native_inserts.apply_rate(),
                tu / native_updates.apply_rate()
            ),
            format!(
                "**{:.0}% / {:.0}%**",
                100.0 * ti / ceiling_inserts,
                100.0 * tu / ceiling_updates
            ),
            format!(
                "{} ({})",
                mb(t.peak_bytes),
                verdict(t.peak_bytes < 200_000_000)
            ),
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

/// The workload's mode, for the report.
fn mode(catch_up: bool) -> &'static str {
    if catch_up {
        "catch-up: the target side is paused during the writes and timed from its resume"
    } else {
        "streaming: the target side applies while the writers write"
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// The side being measured, and how `--catch-up` pauses and resumes it.
enum Side<'a> {
    /// Native replication: the subscription is disabled and enabled again.
    Native,
    /// tidesync: stopped with SIGTERM and started again; the costs of every process are kept.
    Tidesync {
        prepared: &'a Prepared,
        starts: u32,
        peak_bytes: u64,
        cpu: Duration,
    },
}

impl Side<'_> {
    /// Stops applying (the writes then pile up in the slot).
    async fn pause(&mut self, target: &Db, monitor: &mut Monitor) -> anyhow::Result<()> {
        match self {
            Side::Native => disable_subscription(target, monitor).await,
            Side::Tidesync {
                peak_bytes, cpu, ..
            } => {
                let (peak, used) = monitor.stop_child()?.context("tidesync was not running")?;
                *peak_bytes = (*peak_bytes).max(peak);
                *cpu += used;
                Ok(())
            }
        }
    }

    /// What must be waited for before the clock starts (native: the launcher's interval).
    async fn before_resume(&mut self, target: &Db, monitor: &mut Monitor) -> anyhow::Result<()> {
        match self {
            Side::Native => wait_launcher(target, monitor).await,
            Side::Tidesync { .. } => Ok(()),
        }
    }

    /// Starts applying again.
    async fn resume(&mut self, target: &Db, monitor: &mut Monitor) -> anyhow::Result<()> {
        match self {
            Side::Native => enable_subscription(target, monitor).await,
            Side::Tidesync {
                prepared, starts, ..
            } => {
                *starts += 1;
                monitor.child = Some(prepared.start(&format!("streaming-{starts}"))?);
                Ok(())
            }
        }
    }
}

/// The phases of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Inserts,
    Updates,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Inserts => "inserts",
            Kind::Updates => "updates",
        }
    }
}

/// One phase: the writes, then the wait until the target has the phase's last transaction.
/// Inserts: rows 1..=N in transactions of `txn_rows`, one writer. Updates: `updates`
/// single-row transactions from `update_writers` connections, the last one alone after all
/// the others. With `--catch-up` the side is paused during the writes and the clock starts
/// when it is resumed.
async fn phase(
    kind: Kind,
    side: &mut Side<'_>,
    servers: &Servers,
    (source, target): (&Db, &Db),
    monitor: &mut Monitor,
    options: &Options,
    label: &str,
) -> anyhow::Result<Phase> {
    let name = kind.name();
    // Connect the writers first; they start after the pause, with the clock.
    let (changes, last_id, jobs) = match kind {
        Kind::Inserts => {
            let writer = Db::connect(&servers.source.url(DB), "source").await?;
            (
                options.rows,
                options.rows as i64,
                vec![(writer, Vec::new())],
            )
        }
        Kind::Updates => {
            let ids = update_ids(options.rows, options.updates);
            let Some((&last_id, rest)) = ids.split_last() else {
                bail!("no updates to make");
            };
            let writers_n = options.update_writers as usize;
            let mut jobs = Vec::with_capacity(writers_n);
            for w in 0..writers_n {
                let writer = Db::connect(&servers.source.url(DB), "source").await?;
                jobs.push((
                    writer,
                    rest.iter().skip(w).step_by(writers_n).copied().collect(),
                ));
            }
            (options.updates, last_id, jobs)
        }
    };
    if options.catch_up {
        side.pause(target, monitor).await?;
    }
    let start_lsn = current_lsn(source).await?;
    let deadline = Deadline::new(
        format!("{label}: {name}"),
        Duration::from_secs(options.timeout_secs),
    );
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = JoinSet::new();
    for (writer, ids) in jobs {
        let written = written.clone();
        let (n, txn_rows) = (options.rows, options.txn_rows);
        writers.spawn(async move {
            if kind == Kind::Inserts {
                let statement = writer.prepare(&insert_sql(FIXED_UPDATED_AT)).await?;
                let mut next = 1;
                while next <= n {
                    let last = n.min(next + txn_rows - 1);
                    writer
                        .execute(&statement, &[&(next as i64), &(last as i64)])
                        .await
                        .with_context(|| format!("inserting rows {next}..={last}"))?;
                    written.store(last, Ordering::Relaxed);
                    next = last + 1;
                }
            } else {
                let statement = writer.prepare(UPDATE_SQL).await?;
                for id in ids {
                    let updated = writer
                        .execute(&statement, &[&id])
                        .await
                        .with_context(|| format!("updating row {id}"))?;
                    ensure!(updated == 1, "updating row {id} changed {updated} rows");
                    written.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        });
    }
    drive_writers(&mut writers, &written, changes, monitor, &deadline, label).await?;
    if kind == Kind::Updates {
        // The last update, alone: when the target has it, it has all the others.
        source
            .execute(UPDATE_SQL, &[&last_id])
            .await
            .with_context(|| format!("updating row {last_id}"))?;
    }
    let write_time = deadline.elapsed();
    let end_lsn = current_lsn(source).await?;
    let clock_start = if options.catch_up {
        side.before_resume(target, monitor).await?;
        let t = deadline.elapsed();
        side.resume(target, monitor).await?;
        t
    } else {
        Duration::ZERO
    };
    let applied_at = wait_row_equal(source, target, last_id, monitor, &deadline).await?;
    let phase = Phase {
        changes,
        write_time,
        apply_time: applied_at.saturating_sub(clock_start),
        lag: applied_at.saturating_sub(write_time),
        lsns: (start_lsn, end_lsn),
    };
    eprintln!(
        "  {label:<34} {name} applied: {} changes/s ({:.2} s; the source wrote {} changes/s; {})",
        thousands(phase.apply_rate()),
        phase.apply_time.as_secs_f64(),
        thousands(phase.write_rate()),
        phase.show_lag(options.catch_up)
    );
    ensure_equal(source, target, &format!("{label}, {name}")).await?;
    Ok(phase)
}

/// Waits for the writers while sampling (and showing progress every second); returns the
/// time from the deadline's start until the last writer finished.
async fn drive_writers(
    writers: &mut JoinSet<anyhow::Result<()>>,
    written: &AtomicU64,
    total: u64,
    monitor: &mut Monitor,
    deadline: &Deadline,
    label: &str,
) -> anyhow::Result<Duration> {
    let mut shown = Instant::now();
    loop {
        while let Some(done) = writers.try_join_next() {
            done.context("a writer panicked")??;
        }
        if writers.is_empty() {
            return Ok(deadline.elapsed());
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            eprintln!(
                "  {label:<34} {:>6.1} s  {:>11} / {} written",
                deadline.elapsed().as_secs_f64(),
                thousands(written.load(Ordering::Relaxed) as f64),
                thousands(total as f64)
            );
        }
        deadline.tick(monitor).await?;
    }
}

/// The faster of two decodes of the same changes.
fn faster(a: Decode, b: Decode) -> Decode {
    if b.time < a.time { b } else { a }
}

/// Native logical replication of both phases, and pg_recvlogical's decode of each (`pass` 1
/// is the first native run, 2 the one after tidesync). Leaves no subscription, publication or
/// slot.
async fn native_streaming(
    servers: &Servers,
    source: &Db,
    target: &Db,
    monitor: &mut Monitor,
    options: &Options,
    dir: &Path,
    pass: u32,
) -> anyhow::Result<(Run, Ceiling)> {
    let label = if pass == 1 { "native" } else { "native, again" };
    let timeout = Duration::from_secs(options.timeout_secs);
    create_publication(source).await?;
    monitor.workers.reset();
    let deadline = Deadline::new(format!("{label}: subscription ready"), timeout);
    create_subscription(target, servers, &options.native, monitor).await?;
    wait_ready(target, monitor, &deadline).await?;
    let ready = wait_row_equal(source, target, 0, monitor, &deadline).await?;
    eprintln!(
        "  {label:<34} subscription ready in {:.2} s",
        ready.as_secs_f64()
    );

    let mut phases = Vec::with_capacity(2);
    let mut decodes = Vec::with_capacity(2);
    let mut side = Side::Native;
    for kind in [Kind::Inserts, Kind::Updates] {
        let phase = kind.name();
        let slot = format!("bench_recv_{phase}_{pass}");
        let slot_start = create_slot(source, &slot).await?;
        let both = (source, target);
        let p = self::phase(kind, &mut side, servers, both, monitor, options, label).await?;
        let d = decode(servers, source, dir, &slot, (slot_start, p.lsns.1), timeout).await?;
        eprintln!(
            "  {:<34} {phase}: {} changes/s ({:.2} s)",
            "pg_recvlogical decode",
            thousands(p.changes as f64 / d.time.as_secs_f64()),
            d.time.as_secs_f64()
        );
        drop_slot(source, &slot).await?;
        decodes.push(d);
        phases.push(p);
    }
    drop_subscription(target).await?;
    drop_publication(source).await?;
    let run = Run {
        ready,
        inserts: phases[0],
        updates: phases[1],
        walsender: monitor.workers.walsender,
        worker: monitor.workers.worker,
    };
    let [inserts, updates] = decodes[..] else {
        bail!("expected one decode per phase, got {}", decodes.len());
    };
    Ok((run, Ceiling { inserts, updates }))
}

/// tidesync streaming both phases: `tidesync run CONFIG` is spawned on the tables reset to the
/// seed row; ready when row 0 is in the target; then the same two phases as native; SIGTERM.
async fn measure_tidesync(
    prepared: &Prepared,
    servers: &Servers,
    source: &Db,
    target: &Db,
    monitor: &mut Monitor,
    options: &Options,
) -> anyhow::Result<TidesyncRun> {
    let label = "tidesync";
    monitor.workers.reset();
    eprintln!("  tidesync: tidesync run {}", prepared.config.display());
    let deadline = Deadline::new(
        "tidesync: seed row in the target",
        Duration::from_secs(options.timeout_secs),
    );
    monitor.child = Some(prepared.start("streaming")?);
    let ready = wait_row_equal(source, target, 0, monitor, &deadline).await?;
    eprintln!("  {label:<34} ready in {:.2} s", ready.as_secs_f64());
    let mut side = Side::Tidesync {
        prepared,
        starts: 0,
        peak_bytes: 0,
        cpu: Duration::ZERO,
    };
    let both = (source, target);
    let inserts = phase(
        Kind::Inserts,
        &mut side,
        servers,
        both,
        monitor,
        options,
        label,
    )
    .await?;
    let updates = phase(
        Kind::Updates,
        &mut side,
        servers,
        both,
        monitor,
        options,
        label,
    )
    .await?;
    let wall = deadline.elapsed();
    let (last_peak, last_cpu) = monitor.stop_child()?.context("tidesync was not running")?;
    let Side::Tidesync {
        peak_bytes, cpu, ..
    } = side
    else {
        bail!("the tidesync side changed sides");
    };
    let (peak_bytes, cpu) = (peak_bytes.max(last_peak), cpu + last_cpu);
    eprintln!("  {label:<34} peak RSS {} MB", mb(peak_bytes));
    Ok(TidesyncRun {
        run: Run {
            ready,
            inserts,
            updates,
            walsender: monitor.workers.walsender,
            worker: monitor.workers.worker,
        },
        peak_bytes,
        cpu,
        wall,
    })
}
