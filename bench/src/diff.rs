//! Benchmark `pg-diff`: the `diff` capture mode (query and compare) on an N-row PostgreSQL
//! table, beside `COPY (SELECT * FROM items) TO '/dev/null'` run by the server itself: the
//! floor of any comparison that reads every row of the query.
//!
//! Steps:
//! 1. The source gets `items` with N generated rows (VACUUM ANALYZE, CHECKPOINT).
//! 2. Floor: the server-side COPY to /dev/null, three times; the fastest counts.
//! 3. `tidesync run` of a diff source (interval `--interval-secs`) into a SQLite sink. The
//!    first run logs N inserts (the initial load, reported but not the target). The second run
//!    finds nothing changed: its time is the "unchanged" result. Right after it, `--changed`
//!    percent of the rows (spread over the table) get a new price; the third run must find
//!    exactly that many updates. This repeats `--changed-runs` times (the same rows, a new
//!    price each time); the median time is the "1% changed" result, all are listed. Run
//!    times are the source's own, from its log: from the run's start to the commit of its
//!    last batch ("diff run committed ... ms=", logged when that batch's position is
//!    acked), so the last batch's append counts.
//! 4. Peak RSS of the tidesync process over the whole run. The floor again at the end, so
//!    drift of the machine shows; the faster floor is the one compared.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::Common;
use crate::child::{Tidesync, log_tail};
use crate::pg::client::Db;
use crate::pg::items::{CREATE_TABLE, load, settle};
use crate::pg::server::DB;
use crate::pg::{mb, runtime};
use crate::report::{
    add_result_row, command_line, git_commit, load_avg, log_field as field, log_lines, machine,
    now_utc, thousands,
};

const BENCH: &str = "pg-diff";

/// Options of `tidesync-bench pg-diff`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Rows in the table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Percent of the rows changed before each measured changed run.
    #[arg(long, default_value_t = 1.0)]
    changed: f64,
    /// Changed runs measured, each after its own change of the same rows; the median counts.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    changed_runs: u64,
    /// The diff source's interval_secs (must exceed one run's time).
    #[arg(long, default_value_t = 20)]
    interval_secs: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    #[command(flatten)]
    common: Common,
}

/// One completed and committed run from the log: its counts ("diff run complete") and its
/// time to the commit of its last batch ("diff run committed", the same position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunLine {
    rows: u64,
    inserts: u64,
    updates: u64,
    deletes: u64,
    ms: u64,
}

fn runs(log: &Path) -> anyhow::Result<Vec<RunLine>> {
    // With the message's own prefix: a position logged before the first run ends reads
    // "no diff run completed yet". Both lines end with the run's position (its start, to
    // the microsecond), which pairs them; a run not yet committed is not listed. Runs
    // commit in order: one never committed while a later one was is an error (waiting
    // would never end).
    // One read of the log per call (it is polled while the runs go on).
    let position = |l: &str| l.split_once(" position=").map(|(_, p)| p.trim().to_owned());
    let (committed, complete): (Vec<String>, Vec<String>) = log_lines(log, ": diff run ")
        .into_iter()
        .filter(|l| l.contains(": diff run committed ") || l.contains(": diff run complete "))
        .partition(|l| l.contains(": diff run committed "));
    let committed: std::collections::HashMap<String, &String> = committed
        .iter()
        .filter_map(|c| Some((position(c)?, c)))
        .collect();
    let paired: Vec<Option<RunLine>> = complete
        .iter()
        .map(|l| {
            let c = committed.get(&position(l)?)?;
            Some(RunLine {
                rows: field(l, "rows")?,
                inserts: field(l, "inserts")?,
                updates: field(l, "updates")?,
                deletes: field(l, "deletes")?,
                ms: field(c, "ms")?,
            })
        })
        .collect();
    let listed = paired.iter().take_while(|r| r.is_some()).count();
    if paired[listed..].iter().any(Option::is_some) {
        bail!(
            "diff run {} (\"{}\") has no \"diff run committed\" line (or not one with its \
             counts), but a later run has",
            listed + 1,
            complete[listed].trim()
        );
    }
    Ok(paired.into_iter().flatten().collect())
}

async fn floor(db: &Db) -> anyhow::Result<Duration> {
    let t = Instant::now();
    db.batch_execute("COPY (SELECT * FROM items) TO '/dev/null'")
        .await
        .context("COPY (SELECT * FROM items) TO '/dev/null'")?;
    Ok(t.elapsed())
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    options.common.require_release_harness()?;
    crate::pg::check_rows_changed(options.rows, options.changed)?;
    let binary = options.common.tidesync_binary()?;
    let (dir, _guard) = options.common.work_dir()?;
    eprintln!(
        "tidesync-bench {BENCH}: diff of {} rows, {}% changed; work dir {}",
        thousands(options.rows as f64),
        options.changed,
        dir.display()
    );
    let pg = crate::pg::start_server()?;
    pg.create_database(DB).context("creating the database")?;
    let url = pg.url(DB);
    let date = now_utc();
    let load_before = load_avg();
    let deadline = Instant::now() + Duration::from_secs(options.timeout_secs);
    let rt = runtime()?;
    let db = rt.block_on(async {
        let db = Db::connect(&url, "source").await?;
        db.batch_execute(CREATE_TABLE).await?;
        load(&db, options.rows, "source").await?;
        settle(&db).await?;
        anyhow::Ok(db)
    })?;
    let mut floors = Vec::new();
    for _ in 0..3 {
        floors.push(rt.block_on(floor(&db))?);
    }
    let config = dir.join("diff.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{state}\"\n\n[sources.erp]\nurl = \"{url}\"\nmode = \"diff\"\n\
             tables = [\"items\"]\ninterval_secs = {interval}\n{source}\n\n[sinks.shop]\nurl = \"{target}\"\n\n\
             [pipelines.items]\nsource = \"erp\"\nsinks = [\"shop\"]\n{pipeline}\n",
            state = dir.join("state/tidesync.db").display(),
            interval = options.interval_secs,
            target = dir.join("shop.db").display(),
            source = options.common.source_settings.join("\n"),
            pipeline = options.common.pipeline_settings.join("\n"),
        ),
    )?;
    let log = dir.join("tidesync.log");
    // The run lines the results come from are logged at info level: `env` sets it for the
    // child alone. A `TIDESYNC_LOG` of the harness's own (e.g. `debug`, for where a run
    // waited) is passed on instead; it must keep info lines.
    let level = format!(
        "TIDESYNC_LOG={}",
        std::env::var("TIDESYNC_LOG").unwrap_or_else(|_| "info".to_owned())
    );
    let mut child = Tidesync::spawn(
        Path::new("/usr/bin/env"),
        &[
            std::ffi::OsStr::new(&level),
            binary.as_os_str(),
            std::ffi::OsStr::new("run"),
            config.as_os_str(),
        ],
        &log,
    )?;
    let wait_runs = |child: &mut Tidesync, n: usize| -> anyhow::Result<Vec<RunLine>> {
        loop {
            child.sample()?;
            child.check_running().with_context(|| log_tail(&log, 30))?;
            let done = runs(&log)?;
            if done.len() >= n {
                return Ok(done);
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for diff run {n}\n{}", log_tail(&log, 30));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first = wait_runs(&mut child, 1)?[0];
    ensure!(
        first.inserts == options.rows,
        "the first run logged {} inserts, not {}",
        first.inserts,
        options.rows
    );
    let unchanged = wait_runs(&mut child, 2)?[1];
    ensure!(
        unchanged.inserts + unchanged.updates + unchanged.deletes == 0,
        "the unchanged run found changes: {unchanged:?}"
    );
    let every = (100.0 / options.changed).round().max(1.0) as u64;
    let mut changed_runs: Vec<RunLine> = Vec::new();
    let mut changed_rows = 0;
    // tidesync's CPU time before each changed run's UPDATE, and once after the last run (see
    // `per_run_cpu`).
    let mut cpu_marks: Vec<Duration> = Vec::new();
    for k in 0..options.changed_runs as usize {
        child.sample()?;
        cpu_marks.push(child.usage().cpu);
        changed_rows = rt.block_on(async {
            db.execute(
                &format!("UPDATE items SET price = price + 1 WHERE id % {every} = 0"),
                &[],
            )
            .await
            .context("changing rows")
        })?;
        let changed = wait_runs(&mut child, 3 + k)?[2 + k];
        ensure!(
            changed.updates == changed_rows && changed.inserts + changed.deletes == 0,
            "changed run {} found {changed:?}, expected {changed_rows} updates (was the update \
             committed before the run started? raise --interval-secs)",
            k + 1
        );
        eprintln!(
            "  changed run {} of {}: {:.3} s",
            k + 1,
            options.changed_runs,
            changed.ms as f64 / 1000.0
        );
        changed_runs.push(changed);
    }
    // The sink applies the last batches after the run's commit line: give it a moment (a
    // second, or a quarter of the interval if that is shorter, so that the next run, which
    // changes nothing, has not started) before the last mark.
    std::thread::sleep(Duration::from_secs_f64(
        (options.interval_secs as f64 / 4.0).min(1.0),
    ));
    child.sample()?;
    cpu_marks.push(child.usage().cpu);
    let cpu = per_run_cpu(&cpu_marks);
    eprintln!(
        "  tidesync CPU per changed run: {}",
        cpu.iter()
            .map(|c| format!("{:.2} s", c.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let all_changed = changed_runs
        .iter()
        .map(|r| format!("{:.3}", r.ms as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(", ");
    let changed = median_by(&changed_runs, |r| r.ms).context("no changed run was measured")?;
    let peak = child.peak_bytes();
    child.stop(Duration::from_secs(30))?;
    for _ in 0..2 {
        floors.push(rt.block_on(floor(&db))?);
    }
    let floor_s = floors
        .iter()
        .min()
        .copied()
        .unwrap_or_default()
        .as_secs_f64();
    let secs = |r: RunLine| r.ms as f64 / 1000.0;
    let ratio_changed = secs(changed) / floor_s;
    let ratio_unchanged = secs(unchanged) / floor_s;
    println!("| | |\n|---|---|");
    println!("| rows | {} |", thousands(options.rows as f64));
    println!("| floor: COPY TO '/dev/null' | {floor_s:.3} s |");
    println!("| first run (all inserts) | {:.3} s |", secs(first));
    println!(
        "| unchanged run | {:.3} s = {ratio_unchanged:.2}x floor |",
        secs(unchanged)
    );
    println!(
        "| {}% changed run ({} updates), median of {} | {:.3} s = {ratio_changed:.2}x floor |",
        options.changed,
        thousands(changed_rows as f64),
        changed_runs.len(),
        secs(changed)
    );
    println!("| changed runs | {all_changed} s |");
    let cpu_median =
        median_by(&cpu, |c| *c).map_or_else(String::new, |c| format!("{:.2}", c.as_secs_f64()));
    println!("| tidesync CPU per changed run, median | {cpu_median} s |");
    println!("| tidesync peak RSS | {} MB |", mb(peak));
    if options.common.write_results {
        add_result_row(
            &options.common.results,
            BENCH,
            "### pg-diff: query-and-compare of a PostgreSQL table\n\n\
             A `diff` source reads `items` in key order and compares it with the store's \
             fingerprints; the floor is `COPY (SELECT * FROM items) TO '/dev/null'` run by the \
             server (fastest of 5). Targets (issue 6): the changed run at most 3x the floor, \
             the unchanged run at most 1.5x, peak memory under 200 MB. Rows from 2026-12-07 \
             11:30 on measure several changed runs (the last column) and report the median; \
             earlier rows one.",
            &[
                "date (UTC)",
                "commit",
                "rows",
                "floor s",
                "first run s",
                "unchanged s",
                "unchanged / floor",
                "changed s",
                "changed / floor",
                "peak RSS MB",
                "load",
                "machine",
                "command",
                "changed runs s",
                "CPU per changed run s",
            ],
            &[
                date,
                git_commit(),
                thousands(options.rows as f64),
                format!("{floor_s:.3}"),
                format!("{:.3}", secs(first)),
                format!("{:.3}", secs(unchanged)),
                format!("{ratio_unchanged:.2}"),
                format!("{:.3}", secs(changed)),
                format!("{ratio_changed:.2}"),
                mb(peak),
                format!("{load_before:.2}"),
                machine(),
                format!("`{}`", command_line()),
                all_changed,
                cpu_median,
            ],
        )?;
    }
    Ok(())
}

/// The CPU time of each run from marks taken before each run and once after the last: each
/// run's share is the time to the next mark (so it carries the previous run's tail of sink
/// applies after that run's commit line, and the last run its own).
fn per_run_cpu(marks: &[Duration]) -> Vec<Duration> {
    marks
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect()
}

/// The median of `values` by `key` (the upper middle one of an even count); `None` when
/// empty.
fn median_by<T: Copy, K: Ord>(values: &[T], key: impl Fn(&T) -> K) -> Option<T> {
    let mut sorted = values.to_vec();
    sorted.sort_by_key(key);
    sorted.get(sorted.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_lines_pair_by_position_skip_early_positions_and_fail_on_a_run_never_committed() {
        let log = std::env::temp_dir().join(format!("pg-diff-runs-{}.log", std::process::id()));
        let a = "diff run started 2026-12-07T09:04:27.348060Z";
        let b = "diff run started 2026-12-07T09:04:47.349429Z";
        let text = [
            "T DEBUG tidesync_engine::runtime: captured pipeline=items changes=1000 head=1000 \
             position=no diff run completed yet append_us=5000"
                .to_owned(),
            format!(
                "T INFO tidesync_capture::diff: diff run complete source=s pipeline=items \
                 rows=10 inserts=10 updates=0 deletes=0 ms=70 full=true position={a}"
            ),
            format!(
                "T INFO tidesync_capture::diff: diff run committed source=s pipeline=items \
                 ms=75 position={a}"
            ),
            // Complete, not yet committed: not listed.
            format!(
                "T INFO tidesync_capture::diff: diff run complete source=s pipeline=items \
                 rows=10 inserts=0 updates=2 deletes=1 ms=30 full=true position={b}"
            ),
        ]
        .join("\n");
        std::fs::write(&log, &text).unwrap();
        let early = runs(&log).unwrap();
        std::fs::write(
            &log,
            format!(
                "{text}\nT INFO tidesync_capture::diff: diff run committed source=s \
                 pipeline=items ms=41 position={b}\n"
            ),
        )
        .unwrap();
        let late = runs(&log).unwrap();
        // A third run committed while the second never was: an error naming the second.
        let c = "diff run started 2026-12-07T09:05:07.000001Z";
        std::fs::write(
            &log,
            format!(
                "{text}\nT INFO tidesync_capture::diff: diff run complete source=s \
                 pipeline=items rows=10 inserts=0 updates=0 deletes=0 ms=9 full=true \
                 position={c}\nT INFO tidesync_capture::diff: diff run committed source=s \
                 pipeline=items ms=12 position={c}\n"
            ),
        )
        .unwrap();
        let err = runs(&log).unwrap_err().to_string();
        std::fs::remove_file(&log).unwrap();
        assert!(
            err.starts_with("diff run 2 (") && err.contains(b) && err.contains("later run"),
            "{err}"
        );
        let first = RunLine {
            rows: 10,
            inserts: 10,
            updates: 0,
            deletes: 0,
            ms: 75,
        };
        assert_eq!(early, vec![first]);
        assert_eq!(
            late,
            vec![
                first,
                RunLine {
                    rows: 10,
                    inserts: 0,
                    updates: 2,
                    deletes: 1,
                    ms: 41,
                }
            ]
        );
    }

    #[test]
    fn per_run_cpu_is_the_time_between_marks_and_its_median_the_upper_middle() {
        let ms = Duration::from_millis;
        let cpu = per_run_cpu(&[ms(1000), ms(1900), ms(2600), ms(3800)]);
        assert_eq!(cpu, vec![ms(900), ms(700), ms(1200)]);
        assert_eq!(median_by(&cpu, |c| *c), Some(ms(900)));
        assert_eq!(median_by(&[ms(3), ms(1)], |c| *c), Some(ms(3)));
        assert_eq!(median_by(&[] as &[Duration], |c| *c), None);
        // One mark (no run): no runs.
        assert!(per_run_cpu(&[ms(5)]).is_empty());
    }
}
