//! The tidesync side of the PostgreSQL benchmarks: its configuration, the gate, and the
//! waits that end its measurements.
//!
//! The gate: tidesync runs only if `tidesync check CONFIG` accepts the benchmark's
//! configuration (a PostgreSQL source in `log` mode, a PostgreSQL sink), and, for `pg-verify`,
//! only if the binary has a `verify` subcommand. Otherwise the side is skipped with the
//! reason, which is tidesync's own error message (while its PostgreSQL log source is being
//! built, that is the expected outcome). Each benchmark's `measure_tidesync` then runs the
//! real binary with this configuration, as `sqlite-pipeline` does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::client::Db;
use super::items::{Fingerprint, count, fingerprint, max_id};
use super::server::{DB, Servers};
use super::watch::{Deadline, Monitor};
use crate::Common;
use crate::child::{Tidesync, log_tail};

/// How long `tidesync check` (or `verify --help`) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// A tidesync that passed the gate, and its configuration.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub binary: PathBuf,
    pub config: PathBuf,
    dir: PathBuf,
}

/// A TOML literal string (single quotes: no escapes) of `s`.
fn toml_literal(s: &str) -> anyhow::Result<String> {
    ensure!(
        !s.contains('\'') && !s.contains('\n'),
        "{s} cannot be written as a TOML literal string"
    );
    Ok(format!("'{s}'"))
}

/// `KEY=VALUE` settings (of `--FLAG`) as TOML lines.
fn settings_toml(flag: &str, settings: &[String]) -> anyhow::Result<String> {
    let mut extra = String::new();
    for setting in settings {
        let (key, value) = setting
            .split_once('=')
            .with_context(|| format!("--{flag} {setting}: expected KEY=VALUE"))?;
        ensure!(
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "--{flag} {setting}: bad key `{key}`"
        );
        ensure!(!value.contains('\n'), "--{flag} {setting}: one line only");
        extra.push_str(&format!("{key} = {value}\n"));
    }
    Ok(extra)
}

/// The configuration: `items` from the source (log mode) to the target.
pub fn config_text(
    dir: &Path,
    servers: &Servers,
    bench: &str,
    source_settings: &[String],
    pipeline_settings: &[String],
) -> anyhow::Result<String> {
    let extra = settings_toml("source-setting", source_settings)?;
    let pipeline = settings_toml("pipeline-setting", pipeline_settings)?;
    Ok(format!(
        "# Written by tidesync-bench {bench}.\n\
         [store]\npath = {store}\n\n\
         [sources.src]\nurl = {source}\nmode = \"log\"\ntables = [\"items\"]\n{extra}\n\
         [sinks.dst]\nurl = {target}\ncreate_tables = true\n\n\
         [pipelines.items]\nsource = \"src\"\nsinks = [\"dst\"]\n{pipeline}",
        store = toml_literal(&dir.join("state").join("tidesync.db").display().to_string())?,
        source = toml_literal(&servers.source.url(DB))?,
        target = toml_literal(&servers.target.url(DB))?,
    ))
}

/// Runs `binary args...` to completion (output to `log`), up to [`CHECK_TIMEOUT`].
fn run_to_end(
    binary: &Path,
    args: &[&str],
    log: &Path,
) -> anyhow::Result<std::process::ExitStatus> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("duplicating a file handle")?;
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {} {}", binary.display(), args.join(" ")))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting for tidesync")? {
            return Ok(status);
        }
        if started.elapsed() > CHECK_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`tidesync {}` did not finish within {} s",
                args.join(" "),
                CHECK_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes the configuration and asks tidesync whether it can run it. `Err(reason)` means the
/// tidesync side is skipped. `subcommand` (e.g. `verify`) must also exist in the binary.
pub fn prepare(
    common: &Common,
    dir: &Path,
    servers: &Servers,
    bench: &str,
    subcommand: Option<&str>,
) -> Result<Prepared, String> {
    let binary = common.tidesync_binary().map_err(|e| format!("{e:#}"))?;
    let config = dir.join("tidesync.toml");
    let text = config_text(
        dir,
        servers,
        bench,
        &common.source_settings,
        &common.pipeline_settings,
    )
    .map_err(|e| format!("{e:#}"))?;
    std::fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
    let config_arg = config.display().to_string();
    let log = dir.join("tidesync-check.log");
    // `check` blocks this worker thread for a moment: let the runtime know.
    let status = tokio::task::block_in_place(|| run_to_end(&binary, &["check", &config_arg], &log))
        .map_err(|e| format!("{e:#}"))?;
    if !status.success() {
        return Err(format!(
            "`tidesync check {}` failed ({status}): {}",
            config.display(),
            log_tail(&log, 12).trim()
        ));
    }
    if let Some(sub) = subcommand {
        let log = dir.join(format!("tidesync-{sub}-help.log"));
        let status = tokio::task::block_in_place(|| run_to_end(&binary, &[sub, "--help"], &log))
            .map_err(|e| format!("{e:#}"))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let said = text
                .lines()
                .find(|l| l.starts_with("error"))
                .map_or_else(|| log_tail(&log, 3), str::to_owned);
            return Err(format!(
                "this tidesync ({}) has no `{sub}` subcommand yet: {}",
                binary.display(),
                said.trim()
            ));
        }
    }
    Ok(Prepared {
        binary,
        config,
        dir: dir.to_owned(),
    })
}

impl Prepared {
    /// Starts `tidesync run CONFIG`, its output in `tidesync-NAME.log` in the work directory.
    pub fn start(&self, name: &str) -> anyhow::Result<Tidesync> {
        Tidesync::start(
            &self.binary,
            &self.config,
            &self.dir.join(format!("tidesync-{name}.log")),
        )
    }

    /// Starts `tidesync SUBCOMMAND CONFIG` (e.g. `verify`), its output in
    /// `tidesync-NAME.log`.
    pub fn spawn(&self, subcommand: &str, name: &str) -> anyhow::Result<Tidesync> {
        Tidesync::spawn(
            &self.binary,
            &[subcommand.as_ref(), self.config.as_os_str()],
            &self.dir.join(format!("tidesync-{name}.log")),
        )
    }
}

/// Waits until the target's `items` has the `expected` fingerprint; returns when (from the
/// deadline's start). Cheap polls first, so the wait does not load the server it measures:
/// max(id) (an index lookup) every poll until it reaches the expected max, then count(*)
/// every 5th poll until it reaches the expected count, then the full fingerprint every 25th
/// poll until it matches. For a table copied in id order that is one count and one
/// fingerprint at the end.
pub async fn wait_fingerprint(
    target: &Db,
    expected: &Fingerprint,
    monitor: &mut Monitor,
    deadline: &Deadline,
) -> anyhow::Result<Duration> {
    let mut polls: u64 = 0;
    let mut stage = 0;
    // When the target was first seen complete: the time before the query that saw it.
    let mut complete_at: Option<Duration> = None;
    loop {
        if polls.is_multiple_of([1, 5, 25][stage]) {
            let asked_at = deadline.elapsed();
            match stage {
                0 => {
                    if max_id(target).await? >= expected.max_id {
                        (stage, polls) = (1, 0);
                        continue;
                    }
                }
                1 => {
                    let rows = count(target).await?;
                    ensure!(
                        rows <= expected.rows,
                        "the target has {rows} rows in items, more than the {} expected",
                        expected.rows
                    );
                    if rows == expected.rows {
                        complete_at = Some(asked_at);
                        (stage, polls) = (2, 0);
                        continue;
                    }
                }
                _ => {
                    if fingerprint(target).await? == *expected {
                        return Ok(complete_at.unwrap_or(asked_at));
                    }
                    // Complete in count but not yet equal: the time is when it becomes equal.
                    complete_at = None;
                }
            }
        }
        polls += 1;
        deadline.tick(monitor).await?;
    }
}
