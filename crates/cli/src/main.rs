//! The `tidesync` binary: parses arguments and wires the engine together.
//!
//! Exit codes: 0 success; 1 the work failed (a pipeline stopped with an error, the demo's
//! replica differs from its master, `verify` found a difference); 2 bad usage or an invalid
//! configuration.

mod status;
mod verify;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tidesync_engine::demo::{DemoOptions, Progress, run_demo};
use tidesync_engine::{Config, Engine};
use tokio_util::sync::CancellationToken;

/// tidesync: keep data in many places equal.
#[derive(Debug, Parser)]
#[command(name = "tidesync", version, about, long_about = None)]
struct Args {
    /// Log filter, e.g. `info`, `debug`, `tidesync_engine=debug` (also TIDESYNC_LOG).
    /// Default: `info`, or `warn` for `demo` and `verify`, whose own lines say what happens.
    #[arg(long, global = true, env = "TIDESYNC_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented example configuration.
    Init {
        /// Where to write it.
        #[arg(default_value = "tidesync.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate a configuration: exit 0, or print where it is wrong and exit 2.
    Check { config: PathBuf },
    /// Run the configuration's pipelines until stopped (Ctrl-C or SIGTERM).
    Run { config: PathBuf },
    /// Print each pipeline's source position, log head, and each sink's cursor and lag.
    Status {
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a pipeline for good: its capture triggers/change tables (or slot) in the source,
    /// each sink's record of applied seqs, and its log and state in the store. Target data
    /// stays. Stop `tidesync run` first.
    Drop { config: PathBuf, pipeline: String },
    /// Compare each captured table of the source with its copy in every sink, in key-ordered
    /// chunks with a hash per chunk, and print the keys that are missing, extra or different.
    /// Works while `tidesync run` streams: a key that differs is re-checked once the pipeline
    /// has caught up. Exit 0 when equal, 1 on any difference.
    Verify {
        config: PathBuf,
        /// Only this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// Rows per chunk (and per page read from each side at a time).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        chunk_rows: u64,
        /// How long to wait for the pipeline to catch up before re-checking a difference.
        #[arg(long, default_value_t = 30)]
        settle_secs: u64,
        /// Differing keys listed per table (the counts are always complete).
        #[arg(long, default_value_t = 100)]
        max_keys: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Re-send the differing rows through the pipeline (the source re-reads them as they
        /// are now; keys it no longer has are deleted), wait until every sink applied them,
        /// and compare again. Needs `tidesync run` to be running the pipeline.
        #[arg(long)]
        repair: bool,
        /// With --repair: how long to wait for the pipeline to re-send and apply the rows.
        #[arg(long, default_value_t = 120)]
        repair_wait_secs: u64,
    },
    /// Re-send whole tables through a running pipeline: the source reads them again in key
    /// order and chunks while it keeps streaming (no lock, no change reordered), and every
    /// sink applies the rows. Queued in the store; `tidesync run` picks it up.
    Backfill {
        config: PathBuf,
        /// The tables (as named in the source's `tables`).
        #[arg(required = true)]
        tables: Vec<String>,
        /// The pipeline (needed when the configuration has several).
        #[arg(long)]
        pipeline: Option<String>,
        /// Return once queued instead of waiting until every sink applied the rows.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait (0: no limit).
        #[arg(long, default_value_t = 0)]
        wait_secs: u64,
    },
    /// Run a hub (pattern P1): the HTTP API agents push to (`[hub]`, `[agents.NAME]`) and
    /// every pipeline of the configuration, agents' pipelines fed by their pushes.
    Serve { config: PathBuf },
    /// Run an agent next to a database, with nothing configured locally: it takes its source
    /// settings from the hub, captures by query (`diff`/`incremental`), and pushes to the hub.
    Agent {
        /// The hub's base URL, e.g. http://hub.example:8642.
        #[arg(long)]
        hub: String,
        /// This agent's token, as the hub's `[agents.NAME] token` (also from the environment,
        /// which keeps it out of process listings).
        #[arg(long, env = "TIDESYNC_AGENT_TOKEN", hide_env_values = true)]
        token: String,
        /// Where the agent keeps its store and the hub's last settings.
        #[arg(long, default_value = "tidesync-agent")]
        dir: PathBuf,
        /// How often to ask the hub whether this agent's settings changed (the pipeline then
        /// restarts with them); also what keeps this agent's hold on its token while it has
        /// nothing to push, so at most 240.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=240))]
        config_poll_secs: u64,
        /// A PEM file of certificate authorities to trust for an https:// hub, besides the
        /// public ones (a hub whose certificate a private CA signed).
        #[arg(long, value_name = "PEM")]
        ca_cert: Option<PathBuf>,
    },
    /// Run a shop master -> replica sync on this machine (SQLite, no other service needed),
    /// then check that the replica equals the master row by row.
    Demo {
        /// How long the shop keeps writing, in seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Where to put the databases and the configuration (default: a new temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Row changes per second the shop writes.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// Products in the catalogue at the start.
        #[arg(long, default_value_t = 2000)]
        products: u32,
    },
}

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // verify prints its own progress and report; the info lines of the pipelines it runs
    // inside (a query stream is read through a comparison run) would only be noise there.
    let default_log = if matches!(args.command, Command::Demo { .. } | Command::Verify { .. }) {
        "warn"
    } else {
        "info"
    };
    init_tracing(args.log.as_deref().unwrap_or(default_log));
    match dispatch(args.command) {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            // The chain on one line, without the repeats of errors that already show their
            // cause in their own message.
            eprintln!(
                "error: {}",
                tidesync_core::with_causes(error.as_ref() as &dyn std::error::Error)
            );
            ExitCode::from(code)
        }
    }
}

fn init_tracing(filter: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let targets: Targets = filter.parse().unwrap_or_else(|e| {
        eprintln!("warning: ignoring log filter {filter:?}: {e}; using `info`");
        Targets::new().with_default(tracing::Level::INFO)
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(targets)
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?)
}

fn load(path: &Path) -> Result<Config, Failure> {
    // ConfigError's Display already names the file, line and column with a caret.
    Config::load(path).map_err(usage)
}

fn dispatch(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Init { path, force } => {
            if path.exists() && !force {
                return Err(usage(anyhow::anyhow!(
                    "{} already exists (use --force to overwrite)",
                    path.display()
                )));
            }
            std::fs::write(&path, tidesync_engine::config::TEMPLATE)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
            println!(
                "set SOURCE_URL, TARGET_URL and STATE_DIR, then: tidesync run {}",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let cfg = load(&config)?;
            let names: Vec<&str> = cfg.pipelines.iter().map(|p| p.name.as_str()).collect();
            println!(
                "{}: ok ({} pipeline{}: {})",
                config.display(),
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let cfg = load(&config)?;
            if let Some(agent) = cfg.agents.values().next() {
                return Err(usage(anyhow::anyhow!(
                    "{} has agents (agent {} feeds pipeline {}): run it with `tidesync serve`",
                    config.display(),
                    agent.name,
                    agent.pipeline
                )));
            }
            let rt = runtime()?;
            rt.block_on(async {
                let engine = Engine::build(&cfg).context("opening the store")?;
                let cancel = CancellationToken::new();
                let signals = tokio::spawn(stop_on_signal(cancel.clone()));
                let result = engine.run(cancel.clone()).await;
                signals.abort();
                result?;
                Ok::<_, Failure>(ExitCode::SUCCESS)
            })
        }
        Command::Serve { config } => {
            let cfg = load(&config)?;
            if cfg.hub.is_none() {
                return Err(usage(anyhow::anyhow!(
                    "{} has no [hub] table: `tidesync serve` needs `[hub] listen = \"HOST:PORT\"`",
                    config.display()
                )));
            }
            let rt = runtime()?;
            rt.block_on(async {
                let cancel = CancellationToken::new();
                let signals = tokio::spawn(stop_on_signal(cancel.clone()));
                let result = tidesync_hub::serve(&cfg, cancel, |addr| {
                    eprintln!("tidesync hub listening on http://{addr}");
                })
                .await;
                signals.abort();
                result?;
                Ok::<_, Failure>(ExitCode::SUCCESS)
            })
        }
        Command::Agent {
            hub,
            token,
            dir,
            config_poll_secs,
            ca_cert,
        } => {
            let rt = runtime()?;
            rt.block_on(async {
                let cancel = CancellationToken::new();
                let signals = tokio::spawn(stop_on_signal(cancel.clone()));
                let options = tidesync_hub::agent::AgentOptions {
                    hub,
                    token,
                    dir,
                    config_poll: std::time::Duration::from_secs(config_poll_secs),
                    ca_cert,
                };
                let result = tidesync_hub::agent::run(options, cancel).await;
                signals.abort();
                match result {
                    Ok(()) | Err(tidesync_hub::agent::AgentError::Cancelled) => {}
                    Err(e) => return Err(e.into()),
                }
                Ok::<_, Failure>(ExitCode::SUCCESS)
            })
        }
        Command::Status { config, json } => {
            let cfg = load(&config)?;
            status::print(&cfg, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Drop { config, pipeline } => {
            let cfg = load(&config)?;
            tidesync_engine::repair::pick_pipeline(&cfg, Some(&pipeline)).map_err(usage)?;
            let done = runtime()?.block_on(tidesync_engine::drop_pipeline(&cfg, &pipeline))?;
            for line in &done {
                println!("{line}");
            }
            println!("pipeline {pipeline} dropped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            config,
            pipeline,
            chunk_rows,
            settle_secs,
            max_keys,
            json,
            repair,
            repair_wait_secs,
        } => {
            let cfg = load(&config)?;
            if let Some(name) = &pipeline {
                tidesync_engine::repair::pick_pipeline(&cfg, Some(name)).map_err(usage)?;
            }
            let options = tidesync_engine::verify::VerifyOptions {
                pipeline,
                chunk_rows: chunk_rows as usize,
                settle: Duration::from_secs(settle_secs),
                max_keys,
                collect_keys: 0,
            };
            let repair = repair.then(|| Duration::from_secs(repair_wait_secs));
            let equal = runtime()?.block_on(verify::run(&cfg, &options, json, repair))?;
            Ok(if equal {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Backfill {
            config,
            tables,
            pipeline,
            no_wait,
            wait_secs,
        } => {
            let cfg = load(&config)?;
            let picked =
                tidesync_engine::repair::pick_pipeline(&cfg, pipeline.as_deref()).map_err(usage)?;
            let queued =
                tidesync_engine::repair::queue_backfill(&cfg, picked, &tables).map_err(usage)?;
            for q in &queued {
                println!(
                    "queued backfill of {} (pipeline {}, request {})",
                    q.table,
                    q.pipeline,
                    q.ids
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if no_wait {
                println!(
                    "`tidesync run {}` serves it; `tidesync status` shows it",
                    config.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let timeout = if wait_secs == 0 {
                Duration::MAX
            } else {
                Duration::from_secs(wait_secs)
            };
            let complete = runtime()?.block_on(verify::wait_and_report(&cfg, &queued, timeout))?;
            Ok(if complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Demo {
            duration,
            dir,
            rate,
            products,
        } => demo(duration, dir, rate, products),
    }
}

/// Cancels `cancel` on Ctrl-C or SIGTERM; a second signal exits at once.
async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        tracing::warn!("cannot listen for SIGTERM");
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        if round == 0 {
            tracing::info!(
                "stopping: finishing the batches in flight (signal again to exit at once)"
            );
            cancel.cancel();
        } else {
            std::process::exit(130);
        }
    }
}

fn demo(
    duration: u64,
    dir: Option<PathBuf>,
    rate: u32,
    products: u32,
) -> Result<ExitCode, Failure> {
    let dir = match dir {
        Some(d) => d,
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            std::env::temp_dir().join(format!("tidesync-demo-{stamp}-{}", std::process::id()))
        }
    };
    println!("tidesync demo: a shop's master database kept equal to its replica (pattern P2)");
    println!("  folder:   {}", dir.display());
    println!(
        "  workload: {products} products, then {rate} row changes/s for {duration} s (prices, stock, new and discontinued products)"
    );
    let tty = std::io::stdout().is_terminal();
    let show = |p: &Progress| {
        let line = format!(
            "  {:>5.1}s {} written {:>9}  captured {:>9}  applied {:>9}  lag {:>6}",
            p.elapsed.as_secs_f64(),
            if p.catching_up {
                "catching up"
            } else {
                "writing    "
            },
            p.written,
            p.captured,
            p.applied,
            p.lag,
        );
        if tty {
            print!("\r{line}\x1b[K");
        } else {
            println!("{line}");
        }
        let _ = std::io::stdout().flush();
    };
    let rt = runtime()?;
    let report = rt.block_on(run_demo(
        DemoOptions {
            dir: dir.clone(),
            duration: Duration::from_secs(duration),
            rate,
            products,
        },
        show,
    ));
    if tty {
        println!();
    }
    let report = report.map_err(|e| anyhow::anyhow!("demo failed: {e}"))?;
    println!(
        "  wrote {} row changes in {:.1} s; {} captured, {} applied; the replica caught up {:.0} ms after the last write",
        report.written,
        report.write_time.as_secs_f64(),
        report.captured,
        report.applied,
        report.catch_up_time.as_secs_f64() * 1000.0
    );
    for t in &report.tables {
        let verdict = if t.is_equal() { "equal" } else { "DIFFERENT" };
        println!(
            "  {:<9} master {:>7} rows, replica {:>7} rows: {verdict}",
            t.table, t.source_rows, t.target_rows
        );
        if !t.is_equal() {
            println!(
                "            {} missing, {} extra, {} different; e.g. {}",
                t.missing,
                t.extra,
                t.different,
                t.examples.join(", ")
            );
        }
    }
    println!(
        "  rerun the pipeline:  tidesync run {}",
        report.config_path.display()
    );
    println!(
        "  inspect it:          tidesync status {}",
        report.config_path.display()
    );
    if report.is_equal() {
        println!("result: replica equals master, row by row");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("result: replica DIFFERS from master");
        Ok(ExitCode::from(1))
    }
}
