//! `tidesync verify`: runs the engine's comparison and prints it: a summary per table on
//! stdout (or JSON with `--json`), progress on stderr while a long table is walked (only on a
//! terminal).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tidesync_engine::Config;
use tidesync_engine::repair::{MAX_REPAIR_KEYS, Queued, WaitProgress, queue_repairs, wait};
use tidesync_engine::verify::{
    Method, PipelineReport, Progress, Report, TableReport, VerifyOptions, verify,
};

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Runs verify and prints the report; with `repair` (how long to wait for it), re-sends the
/// differing rows, waits for them to be applied and verifies again. Returns whether every
/// table is equal in the end.
pub(crate) async fn run(
    config: &Config,
    options: &VerifyOptions,
    as_json: bool,
    repair: Option<Duration>,
) -> anyhow::Result<bool> {
    let Some(wait) = repair else {
        let report = compare(config, options).await?;
        print(&report, as_json, None)?;
        return Ok(report.is_equal());
    };
    let first = compare(
        config,
        &VerifyOptions {
            collect_keys: MAX_REPAIR_KEYS,
            ..options.clone()
        },
    )
    .await?;
    if first.is_equal() {
        print(&first, as_json, None)?;
        return Ok(true);
    }
    if !as_json {
        print(&first, false, None)?;
    }
    let queued = queue_repairs(config, &first)?;
    for q in &queued {
        eprintln!(
            "repair: re-sending {} key{} of {} through pipeline {} (request{} {})",
            q.keys,
            plural(q.keys as u64),
            q.table,
            q.pipeline,
            plural(q.ids.len() as u64),
            q.ids
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !wait_and_report(config, &queued, wait).await? {
        if as_json {
            print(&first, true, None)?;
        }
        return Ok(false);
    }
    let after = compare(config, options).await?;
    if as_json {
        print(&after, true, Some(&first))?;
    } else {
        println!("after repair:");
        print(&after, false, None)?;
    }
    Ok(after.is_equal())
}

/// Waits for queued requests (see [`wait`]) with a progress line on a terminal, and says on
/// stderr what is still missing if the wait gave up. Returns whether all went through.
pub(crate) async fn wait_and_report(
    config: &Config,
    queued: &[Queued],
    timeout: Duration,
) -> anyhow::Result<bool> {
    let tty = std::io::stderr().is_terminal();
    let last = Mutex::new(Instant::now());
    let progress = |p: &WaitProgress| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if !tty || last.elapsed() < PROGRESS_EVERY {
            return;
        }
        *last = Instant::now();
        eprint!(
            "\r  waiting for the pipeline: {}/{} requests served, {:.0} s\x1b[K",
            p.done,
            p.total,
            p.elapsed.as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    };
    let outcome = wait(config, queued, timeout, &progress).await?;
    if tty {
        eprint!("\r\x1b[K");
    }
    for (pipeline, id, error) in &outcome.failed {
        eprintln!("request {id} of pipeline {pipeline} failed: {error}");
    }
    if !outcome.pending.is_empty() {
        let ids: Vec<String> = outcome
            .pending
            .iter()
            .map(|(_, id)| id.to_string())
            .collect();
        eprintln!(
            "not served within {} s: request{} {} (is `tidesync run {}` running? The requests stay queued and run when it does)",
            timeout.as_secs(),
            plural(ids.len() as u64),
            ids.join(", "),
            config.file.display()
        );
    }
    for (pipeline, sink) in &outcome.behind {
        eprintln!(
            "sink {sink} of pipeline {pipeline} has not applied the re-sent rows within {} s",
            timeout.as_secs()
        );
    }
    Ok(outcome.is_complete())
}

/// Runs the comparison with a progress line on a terminal.
async fn compare(config: &Config, options: &VerifyOptions) -> anyhow::Result<Report> {
    let tty = std::io::stderr().is_terminal();
    let last = Mutex::new(Instant::now());
    let shown = Mutex::new(false);
    let progress = |p: &Progress<'_>| {
        if !tty {
            return;
        }
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < PROGRESS_EVERY {
            return;
        }
        *last = Instant::now();
        let secs = p.elapsed.as_secs_f64().max(1e-3);
        eprint!(
            "\r  {} -> {}: {} rows, {:.0} rows/s\x1b[K",
            p.table,
            p.sink,
            p.source_rows,
            p.source_rows as f64 / secs
        );
        let _ = std::io::stderr().flush();
        *shown.lock().unwrap_or_else(|e| e.into_inner()) = true;
    };
    let report = verify(config, options, &progress).await;
    if *shown.lock().unwrap_or_else(|e| e.into_inner()) {
        eprint!("\r\x1b[K");
    }
    Ok(report?)
}

/// Prints a report as text or JSON; `before`: the report a repair started from (JSON only).
fn print(report: &Report, as_json: bool, before: Option<&Report>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        #[derive(Serialize)]
        struct Json<'a> {
            equal: bool,
            pipelines: &'a [PipelineReport],
            /// With --repair: the differences found before the repair.
            #[serde(skip_serializing_if = "Option::is_none")]
            before_repair: Option<&'a [PipelineReport]>,
        }
        let json = Json {
            equal: report.is_equal(),
            pipelines: &report.pipelines,
            before_repair: before.map(|b| b.pipelines.as_slice()),
        };
        serde_json::to_writer_pretty(&mut out, &json).context("writing the report")?;
        writeln!(out).context("writing the report")?;
    } else {
        print_text(&mut out, report).context("writing the report")?;
    }
    out.flush().context("writing the report")?;
    Ok(())
}

fn print_text(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let mut differing = 0;
    let mut total = 0;
    for p in &report.pipelines {
        writeln!(out, "pipeline {} (source {})", p.pipeline, p.source)?;
        for t in &p.tables {
            total += 1;
            if !t.is_equal() {
                differing += 1;
            }
            print_table(out, t)?;
        }
        if let Some(lag) = &p.not_caught_up {
            writeln!(
                out,
                "  note: {lag}; the differences above may be changes still in flight"
            )?;
        }
    }
    if differing == 0 {
        writeln!(
            out,
            "result: equal ({total} table{} compared)",
            plural(total)
        )
    } else {
        writeln!(
            out,
            "result: {differing} of {total} table{} differ",
            plural(total)
        )
    }
}

fn print_table(out: &mut impl Write, t: &TableReport) -> std::io::Result<()> {
    let how = match t.method {
        Method::RowHash => "row hashes",
        Method::DatabaseHash => "hashed in the databases",
    };
    let secs = t.elapsed_ms as f64 / 1000.0;
    if let Some(error) = &t.error {
        return writeln!(out, "  {} -> {}: ERROR: {error}", t.table, t.sink);
    }
    if t.is_equal() {
        return writeln!(
            out,
            "  {} -> {}: equal, {} rows in {secs:.1} s ({} chunk{}, {how})",
            t.table,
            t.sink,
            t.source_rows,
            t.chunks,
            plural(t.chunks)
        );
    }
    writeln!(
        out,
        "  {} -> {}: {} difference{} ({} missing, {} extra, {} different); source {} rows, target {} rows",
        t.table,
        t.sink,
        t.differences(),
        plural(t.differences()),
        t.missing,
        t.extra,
        t.different,
        t.source_rows,
        t.target_rows
    )?;
    for k in &t.keys {
        if k.columns.is_empty() {
            writeln!(out, "    {:<9} {}", k.kind.name(), k.key)?;
        } else {
            writeln!(
                out,
                "    {:<9} {}: {}",
                k.kind.name(),
                k.key,
                k.columns.join(", ")
            )?;
        }
    }
    let unlisted = t.differences().saturating_sub(t.keys.len() as u64);
    if unlisted > 0 {
        writeln!(out, "    ... and {unlisted} more (--max-keys lists more)")?;
    }
    Ok(())
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}
