//! Benchmark `hub-sync`: pattern P1 end to end. An agent reads a PostgreSQL table by `diff`,
//! pushes it to a hub over HTTP (zstd), and the hub applies it into another PostgreSQL
//! database; both are real `tidesync` processes on loopback.
//!
//! Steps:
//! 1. One PostgreSQL server with databases `erp` (the source, N generated rows) and `shop`
//!    (the hub's target, created by the hub's sink), and `floor`.
//! 2. Floor: `COPY items TO STDOUT` from `erp` streamed straight into `COPY items FROM STDIN`
//!    of `floor` (what moving the rows costs with nothing in between), twice; the faster
//!    counts. The ratio is the agent -> hub -> PostgreSQL time over it.
//! 3. Initial sync: the hub starts, then the agent (clock starts); done when the shop's
//!    `_tidesync_applied` says the hub applied N changes (the hub's log seqs count changes).
//! 4. Changed rows: `--changed` percent of the rows get a new price; done when N + that many
//!    changes are applied. Bytes per changed row come from the hub's log of the pushes of
//!    that phase: the compressed bodies (on the wire, HTTP headers aside) against their
//!    decompressed JSON, the same changes as plain JSON.
//! 5. The shop's table is checked equal to the source's (count, max id, hash of every row).
//!    Peak RSS of the hub and of the agent.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};

use crate::Common;
use crate::child::{Tidesync, log_tail};
use crate::pg::client::Db;
use crate::pg::items::{CREATE_TABLE, ensure_equal, load, settle};
use crate::pg::{mb, runtime};
use crate::report::{
    add_result_row, command_line, git_commit, load_avg, log_field as field, log_lines, machine,
    now_utc, thousands,
};

const BENCH: &str = "hub-sync";
const TOKEN: &str = "bench-agent-token-0123456789";

/// Options of `tidesync-bench hub-sync`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Rows in the table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Percent of the rows changed after the initial sync.
    #[arg(long, default_value_t = 1.0)]
    changed: f64,
    /// The agent's interval_secs (a run of N rows must fit in it).
    #[arg(long, default_value_t = 30)]
    interval_secs: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    #[command(flatten)]
    common: Common,
}

/// One push as the hub logged it.
#[derive(Debug, Clone, Copy)]
struct Push {
    first: u64,
    changes: u64,
    wire: u64,
    json: u64,
}

fn pushes(log: &Path) -> Vec<Push> {
    log_lines(log, "push taken")
        .iter()
        .filter_map(|l| {
            Some(Push {
                first: field(l, "first")?,
                changes: field(l, "changes")?,
                wire: field(l, "wire_bytes")?,
                json: field(l, "json_bytes")?,
            })
        })
        .collect()
}

/// The floor: the table streamed from `COPY TO STDOUT` into `COPY FROM STDIN`.
async fn floor(source: &Db, floor: &Db) -> anyhow::Result<Duration> {
    floor.batch_execute("TRUNCATE items").await?;
    let t = Instant::now();
    let out = source
        .copy_out("COPY items TO STDOUT")
        .await
        .context("COPY items TO STDOUT")?;
    let sink = floor
        .copy_in::<_, bytes::Bytes>("COPY items FROM STDIN")
        .await
        .context("COPY items FROM STDIN")?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    while let Some(chunk) = out.next().await {
        sink.feed(chunk.context("reading the COPY")?)
            .await
            .context("writing the COPY")?;
    }
    let n = sink.as_mut().finish().await.context("finishing the COPY")?;
    ensure!(n > 0, "the floor copied no rows");
    Ok(t.elapsed())
}

async fn applied(shop: &Db) -> u64 {
    shop.query_opt(
        "SELECT seq FROM _tidesync_applied WHERE pipeline = 'items'",
        &[],
    )
    .await
    .ok()
    .flatten()
    .and_then(|r| r.try_get::<_, i64>(0).ok())
    .map_or(0, |s| s as u64)
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    options.common.require_release_harness()?;
    crate::pg::check_rows_changed(options.rows, options.changed)?;
    let binary = options.common.tidesync_binary()?;
    let (dir, _guard) = options.common.work_dir()?;
    eprintln!(
        "tidesync-bench {BENCH}: agent -> hub -> PostgreSQL of {} rows, then {}% changed; work dir {}",
        thousands(options.rows as f64),
        options.changed,
        dir.display()
    );
    let pg = crate::pg::start_server()?;
    for db in ["erp", "shop", "floor"] {
        pg.create_database(db)
            .with_context(|| format!("creating database {db}"))?;
    }
    let date = now_utc();
    let load_before = load_avg();
    let deadline = Instant::now() + Duration::from_secs(options.timeout_secs);
    let rt = runtime()?;
    let (source, floor_db, shop) = rt.block_on(async {
        let source = Db::connect(&pg.url("erp"), "source").await?;
        source.batch_execute(CREATE_TABLE).await?;
        load(&source, options.rows, "source").await?;
        settle(&source).await?;
        let floor_db = Db::connect(&pg.url("floor"), "floor").await?;
        floor_db.batch_execute(CREATE_TABLE).await?;
        let shop = Db::connect(&pg.url("shop"), "shop").await?;
        anyhow::Ok((source, floor_db, shop))
    })?;
    let mut floors = Vec::new();
    for _ in 0..2 {
        floors.push(rt.block_on(floor(&source, &floor_db))?);
    }
    rt.block_on(floor_db.batch_execute("DROP TABLE items"))?;

    let port = tidesync_testkit::free_port();
    let config = dir.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{state}\"\n\n[hub]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [sources.erp]\nurl = \"{erp}\"\nmode = \"diff\"\ntables = [\"items\"]\n\
             interval_secs = {interval}\n{source}\n\n[sinks.shop]\nurl = \"{shop}\"\n\n\
             [pipelines.items]\nsource = \"erp\"\nsinks = [\"shop\"]\n{pipeline}\n\n\
             [agents.bench]\ntoken = \"{TOKEN}\"\npipeline = \"items\"\n",
            state = dir.join("hub/hub.db").display(),
            erp = pg.url("erp"),
            shop = pg.url("shop"),
            interval = options.interval_secs,
            source = options.common.source_settings.join("\n"),
            pipeline = options.common.pipeline_settings.join("\n"),
        ),
    )?;
    let (hub_log, agent_log) = (dir.join("hub.log"), dir.join("agent.log"));
    let env = Path::new("/usr/bin/env");
    let os = std::ffi::OsStr::new;
    let mut hub = Tidesync::spawn(
        env,
        &[
            os("TIDESYNC_LOG=info,tidesync_hub::server=debug"),
            binary.as_os_str(),
            os("serve"),
            config.as_os_str(),
        ],
        &hub_log,
    )?;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        hub.check_running()
            .with_context(|| log_tail(&hub_log, 30))?;
        ensure!(Instant::now() < deadline, "the hub did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let token = format!("TIDESYNC_AGENT_TOKEN={TOKEN}");
    let hub_url = format!("http://127.0.0.1:{port}");
    let agent_dir = dir.join("agent");
    let started = Instant::now();
    let mut agent = Tidesync::spawn(
        env,
        &[
            os("TIDESYNC_LOG=info"),
            os(&token),
            binary.as_os_str(),
            os("agent"),
            os("--hub"),
            os(&hub_url),
            os("--dir"),
            agent_dir.as_os_str(),
        ],
        &agent_log,
    )?;
    let wait_applied = |hub: &mut Tidesync,
                        agent: &mut Tidesync,
                        target: u64,
                        what: &str|
     -> anyhow::Result<Duration> {
        loop {
            for (child, log) in [(&mut *hub, &hub_log), (&mut *agent, &agent_log)] {
                child.sample()?;
                child.check_running().with_context(|| log_tail(log, 30))?;
            }
            let now = rt.block_on(applied(&shop));
            if now >= target {
                return Ok(started.elapsed());
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what} ({now} of {target} applied)\n{}\n{}",
                    log_tail(&hub_log, 20),
                    log_tail(&agent_log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let initial = wait_applied(&mut hub, &mut agent, options.rows, "the initial sync")?;
    let (hub_cpu, agent_cpu) = (hub.usage().cpu, agent.usage().cpu);
    let every = (100.0 / options.changed).round().max(1.0) as u64;
    let changed_rows = rt.block_on(async {
        source
            .execute(
                &format!("UPDATE items SET price = price + 1 WHERE id % {every} = 0"),
                &[],
            )
            .await
            .context("changing rows")
    })?;
    wait_applied(
        &mut hub,
        &mut agent,
        options.rows + changed_rows,
        "the changed rows",
    )?;
    // The hub logs a push right after its log took it, which may be just after the sink
    // applied it: wait for the lines before stopping it.
    let logged = |log: &Path| pushes(log).iter().map(|p| p.changes).sum::<u64>();
    while logged(&hub_log) < options.rows + changed_rows && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (hub_peak, agent_peak) = (hub.peak_bytes(), agent.peak_bytes());
    agent.stop(Duration::from_secs(30))?;
    hub.stop(Duration::from_secs(30))?;
    rt.block_on(ensure_equal(&source, &shop, BENCH))?;

    let all = pushes(&hub_log);
    let sum = |phase: &dyn Fn(&Push) -> bool| {
        all.iter()
            .filter(|p| phase(p))
            .fold((0u64, 0u64, 0u64), |acc, p| {
                (acc.0 + p.changes, acc.1 + p.wire, acc.2 + p.json)
            })
    };
    let (init_changes, init_wire, init_json) = sum(&|p| p.first <= options.rows);
    let (chg_changes, chg_wire, chg_json) = sum(&|p| p.first > options.rows);
    ensure!(
        init_changes == options.rows && chg_changes == changed_rows,
        "the hub's log shows {init_changes} + {chg_changes} pushed changes, expected {} + \
         {changed_rows} (is tidesync_hub::server at debug?)",
        options.rows
    );
    let per = |bytes: u64, n: u64| bytes as f64 / n.max(1) as f64;
    let floor_s = floors
        .iter()
        .min()
        .copied()
        .unwrap_or_default()
        .as_secs_f64();
    let initial_s = initial.as_secs_f64();
    let rate = options.rows as f64 / initial_s;
    let ratio = initial_s / floor_s;
    let changed_wire = per(chg_wire, chg_changes);
    let changed_json = per(chg_json, chg_changes);
    println!("| | |\n|---|---|");
    println!("| rows | {} |", thousands(options.rows as f64));
    println!(
        "| floor: COPY TO STDOUT -> COPY FROM STDIN | {floor_s:.3} s = {} rows/s |",
        thousands(options.rows as f64 / floor_s)
    );
    println!(
        "| initial sync, agent -> hub -> PostgreSQL | {initial_s:.3} s = {} rows/s = {ratio:.2}x floor |",
        thousands(rate)
    );
    println!(
        "| initial sync bytes per row | {:.1} on the wire (zstd), {:.1} as JSON = {:.1}% |",
        per(init_wire, init_changes),
        per(init_json, init_changes),
        100.0 * init_wire as f64 / init_json.max(1) as f64
    );
    println!(
        "| {}% changed ({} rows) bytes per row | {changed_wire:.1} on the wire (zstd), {changed_json:.1} as JSON = {:.1}% |",
        options.changed,
        thousands(changed_rows as f64),
        100.0 * changed_wire / changed_json.max(1.0)
    );
    println!(
        "| CPU during the initial sync | hub {:.1} s, agent {:.1} s |",
        hub_cpu.as_secs_f64(),
        agent_cpu.as_secs_f64()
    );
    println!(
        "| peak RSS | hub {} MB, agent {} MB |",
        mb(hub_peak),
        mb(agent_peak)
    );
    if options.common.write_results {
        add_result_row(
            &options.common.results,
            BENCH,
            "### hub-sync: agent -> hub -> PostgreSQL (pattern P1)\n\n\
             An agent reads `items` by `diff` and pushes it over HTTP (zstd) to a hub that \
             applies it into PostgreSQL, all on one machine. Floor: the same table streamed \
             from `COPY TO STDOUT` into `COPY FROM STDIN` between two databases of the server \
             (faster of 2). Bytes per row: the pushes' bodies as sent (zstd) and as JSON \
             (decompressed), from the hub's log, for the initial sync and for the changed rows \
             (issue 6, benchmarks 2 and 3).",
            &[
                "date (UTC)",
                "commit",
                "rows",
                "floor s",
                "initial sync s",
                "rows/s",
                "sync / floor",
                "changed rows",
                "wire B/changed row",
                "JSON B/changed row",
                "wire B/row (initial)",
                "JSON B/row (initial)",
                "hub RSS MB",
                "agent RSS MB",
                "load",
                "machine",
                "command",
            ],
            &[
                date,
                git_commit(),
                thousands(options.rows as f64),
                format!("{floor_s:.3}"),
                format!("{initial_s:.3}"),
                thousands(rate),
                format!("{ratio:.2}"),
                thousands(changed_rows as f64),
                format!("{changed_wire:.1}"),
                format!("{changed_json:.1}"),
                format!("{:.1}", per(init_wire, init_changes)),
                format!("{:.1}", per(init_json, init_changes)),
                mb(hub_peak),
                mb(agent_peak),
                format!("{load_before:.2}"),
                machine(),
                format!("`{}`", command_line()),
            ],
        )?;
    }
    Ok(())
}
