//! The MariaDB -> PostgreSQL benchmarks: `mysql-streaming` and `mysql-snapshot`.
//!
//! Each starts a private MariaDB (the source: row binlog, `binlog_row_metadata=FULL`,
//! `sync_binlog=1`, `innodb_flush_log_at_trx_commit=1`: durable commits) and a private
//! PostgreSQL (the target, with the PostgreSQL benchmarks' [`SETTINGS`]), runs the release
//! `tidesync run` on `mysql://` -> `postgres://` (direct streaming, the default for one
//! PostgreSQL sink), checks the target against the source (row count, sums of every numeric
//! column, max id) before reporting, and measures beside the floor in the same run:
//!
//! - `mysql-streaming`: N inserts in transactions of 1,000 rows, written by one connection.
//!   Floors: the server's own binlog write rate (N / the writer's time: tidesync cannot apply
//!   faster than the source commits in a streaming run), and `mariadb-binlog -v` reading the
//!   same binlog range from the server and decoding every row to /dev/null (what it costs just
//!   to fetch and decode the events). tidesync's rate runs from the first write until the
//!   target has the last row (commit order: the last row there means all are).
//! - `mysql-snapshot`: the initial copy of an N-row table into the empty target, timed from
//!   the start of `tidesync run` until the target has every row, beside
//!   `SELECT * INTO OUTFILE` of the same table on the server (the dump floor) and the
//!   `mariadb` client reading it to /dev/null over TCP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use mysql_async::prelude::Queryable;
use tidesync_testkit::{MariaDb, Postgres};

use crate::Common;
use crate::child::Tidesync;
use crate::pg::server::SETTINGS;
use crate::pg::{mb, runtime};
use crate::report::{
    add_result_row, command_line, git_commit, load_avg, machine, now_utc, thousands,
};

const CREATE: &str = "CREATE TABLE items (id BIGINT PRIMARY KEY, sku VARCHAR(32) NOT NULL, \
     name VARCHAR(100) NOT NULL, price DECIMAL(12,2) NOT NULL, qty INT NOT NULL, \
     updated_at DATETIME(6) NOT NULL) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4";

/// Rows `a..=b` as one statement (one transaction under autocommit).
fn insert_sql(a: u64, b: u64) -> String {
    format!(
        "INSERT INTO items SELECT seq, CONCAT('SKU-', seq), CONCAT('item number ', seq), \
         seq * 0.25, seq % 1000, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq SECOND \
         FROM seq_{a}_to_{b}"
    )
}

/// Options of both MySQL benchmarks.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Rows inserted (streaming) or copied (snapshot).
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Rows per transaction of the streaming writer.
    #[arg(long, default_value_t = 1000)]
    txn_rows: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    #[command(flatten)]
    common: Common,
}

struct Setup {
    source: MariaDb,
    target: Postgres,
    dir: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn start(dir: &Path, common: &Common) -> anyhow::Result<Setup> {
        let source = MariaDb::builder()
            .args([
                "--binlog-row-metadata=FULL",
                "--sync-binlog=1",
                "--innodb-flush-log-at-trx-commit=1",
                "--innodb-buffer-pool-size=512M",
                "--max-binlog-size=256M",
            ])
            .try_start()
            .context("starting MariaDB")?;
        source.create_database("shop")?;
        let mut builder = Postgres::builder();
        for (name, value) in SETTINGS {
            builder = builder.setting(*name, *value);
        }
        let target = builder.try_start().context("starting PostgreSQL")?;
        target.create_database("warehouse")?;
        let config = dir.join("tidesync.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\npath = \"{}\"\n\n[sources.shop]\nurl = \"{}\"\ntables = [\"items\"]\n{}\n\
                 [sinks.warehouse]\nurl = \"{}\"\n\n[pipelines.items]\nsource = \"shop\"\n\
                 sinks = [\"warehouse\"]\n{}\n",
                dir.join("state/tidesync.db").display(),
                source.url("shop"),
                common.source_settings.join("\n"),
                target.url("warehouse"),
                common.pipeline_settings.join("\n"),
            ),
        )?;
        Ok(Setup {
            source,
            target,
            dir: dir.to_owned(),
            config,
        })
    }

    async fn source_conn(&self) -> anyhow::Result<mysql_async::Conn> {
        let opts = mysql_async::Opts::from_url(&self.source.url("shop"))?;
        Ok(mysql_async::Conn::new(opts).await?)
    }

    async fn target_conn(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.target.url("warehouse"), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    fn version(&self) -> String {
        self.source
            .sql("shop", "SELECT VERSION()")
            .map(|v| format!("MariaDB {}", v.trim()))
            .unwrap_or_else(|_| "MariaDB".into())
    }
}

/// `count, sum(id), sum(qty), sum(price), max(id)` as text, the same on both sides when equal.
async fn fingerprint_source(conn: &mut mysql_async::Conn) -> anyhow::Result<String> {
    let row: Option<(i64, String, String, String, i64)> = conn
        .query_first(
            "SELECT COUNT(*), CAST(SUM(id) AS CHAR), CAST(SUM(qty) AS CHAR), \
             CAST(SUM(price) AS CHAR), MAX(id) FROM items",
        )
        .await?;
    let (n, a, b, c, m) = row.context("no fingerprint row")?;
    Ok(format!("{n} {a} {b} {c} {m}"))
}

async fn fingerprint_target(client: &tokio_postgres::Client) -> anyhow::Result<String> {
    let row = client
        .query_one(
            "SELECT count(*), sum(id)::text, sum(qty)::text, sum(price)::text, max(id) FROM items",
            &[],
        )
        .await?;
    Ok(format!(
        "{} {} {} {} {}",
        row.get::<_, i64>(0),
        row.get::<_, String>(1),
        row.get::<_, String>(2),
        row.get::<_, String>(3),
        row.get::<_, i64>(4)
    ))
}

/// Waits until the target has row `id`, sampling tidesync; the time it was first seen.
async fn wait_for_row(
    setup: &Setup,
    child: &mut Tidesync,
    id: u64,
    deadline: Instant,
) -> anyhow::Result<Instant> {
    let mut client = None;
    loop {
        ensure!(
            Instant::now() < deadline,
            "timed out waiting for row {id} in the target; tidesync's log: {}",
            child.log().display()
        );
        child.check_running()?;
        if let Err(e) = child.sample() {
            // Most likely the child just exited: say so if it did.
            child.check_running()?;
            return Err(e);
        }
        if client.is_none() {
            client = setup.target_conn().await.ok();
        }
        if let Some(c) = &client {
            match c
                .query_opt("SELECT 1 FROM items WHERE id = $1", &[&(id as i64)])
                .await
            {
                Ok(Some(_)) => return Ok(Instant::now()),
                Ok(None) => {}
                // Not created yet.
                Err(_) => client = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `SHOW MASTER STATUS`: (file, offset).
async fn binlog_position(conn: &mut mysql_async::Conn) -> anyhow::Result<(String, u64)> {
    let mut row: mysql_async::Row = conn
        .query_first("SHOW MASTER STATUS")
        .await?
        .context("SHOW MASTER STATUS is empty")?;
    let file: String = row.take(0).context("no file")?;
    let offset: u64 = row.take(1).context("no offset")?;
    Ok((file, offset))
}

pub fn streaming(options: &Options) -> anyhow::Result<()> {
    const BENCH: &str = "mysql-streaming";
    options.common.require_release_harness()?;
    ensure!(
        options.rows > 0 && options.txn_rows > 0,
        "--rows and --txn-rows must be positive"
    );
    let binary = options.common.tidesync_binary()?;
    let (dir, _guard) = options.common.work_dir()?;
    eprintln!(
        "tidesync-bench {BENCH}: {} inserts in {}-row transactions; work dir {}",
        thousands(options.rows as f64),
        options.txn_rows,
        dir.display()
    );
    let setup = Setup::start(&dir, &options.common)?;
    let date = now_utc();
    let load_before = load_avg();
    runtime()?.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(options.timeout_secs);
        let mut source = setup.source_conn().await?;
        source.query_drop(CREATE).await?;
        source.query_drop(insert_sql(0, 0)).await?;
        let mut child = Tidesync::start(&binary, &setup.config, &dir.join("tidesync.log"))?;
        let started = Instant::now();
        wait_for_row(&setup, &mut child, 0, deadline).await?;
        eprintln!("  ready (seed row copied) after {:.1} s", started.elapsed().as_secs_f64());
        let from = binlog_position(&mut source).await?;
        let t0 = Instant::now();
        let mut a = 1;
        while a <= options.rows {
            let b = (a + options.txn_rows - 1).min(options.rows);
            source.query_drop(insert_sql(a, b)).await?;
            a = b + 1;
        }
        let write_time = t0.elapsed();
        let last_commit = Instant::now();
        eprintln!("  written in {:.2} s", write_time.as_secs_f64());
        let seen = wait_for_row(&setup, &mut child, options.rows, deadline).await?;
        let apply_time = seen - t0;
        let lag = seen.saturating_duration_since(last_commit);
        let to = binlog_position(&mut source).await?;
        let want = fingerprint_source(&mut source).await?;
        let target = setup.target_conn().await?;
        let got = fingerprint_target(&target).await?;
        ensure!(want == got, "the target differs: source {want}, target {got}");
        child.stop(Duration::from_secs(60))?;
        let peak = child.peak_bytes();
        let cpu = child.usage().cpu;

        // The same binlog range, fetched and decoded by the server's own tool.
        let decode_start = Instant::now();
        let status = Command::new("mariadb-binlog")
            .args([
                "--no-defaults",
                "--read-from-remote-server",
                "--host=127.0.0.1",
                &format!("--port={}", setup.source.port()),
                "--user=root",
                "--verbose",
                &format!("--start-position={}", from.1),
                "--to-last-log",
                &from.0,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("running mariadb-binlog (package mariadb-client)")?;
        let decode_time = decode_start.elapsed();
        if !status.status.success() {
            bail!(
                "mariadb-binlog failed: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
        let rows = options.rows as f64;
        let write_rate = rows / write_time.as_secs_f64();
        let apply_rate = rows / apply_time.as_secs_f64();
        let decode_rate = rows / decode_time.as_secs_f64();
        let binlog_bytes = if to.0 == from.0 {
            format!("{:.0} MB", (to.1 - from.1) as f64 / 1e6)
        } else {
            format!("{} .. {}", from.0, to.0)
        };
        let load_after = load_avg();
        println!("## {BENCH} ({date}, {})", setup.version());
        println!();
        println!("| measure | value |");
        println!("|---|---|");
        println!("| rows, rows per transaction | {}, {} |", thousands(rows), options.txn_rows);
        println!("| binlog written | {binlog_bytes} |");
        println!(
            "| source writes (binlog write rate, the floor) | {:.2} s, {}/s |",
            write_time.as_secs_f64(),
            thousands(write_rate)
        );
        println!(
            "| tidesync: first write -> last row in PostgreSQL | {:.2} s, **{}/s = {:.2}x the write rate** (last row {:.0} ms after the last commit) |",
            apply_time.as_secs_f64(),
            thousands(apply_rate),
            apply_rate / write_rate,
            lag.as_secs_f64() * 1000.0
        );
        println!(
            "| mariadb-binlog -v, same range to /dev/null | {:.2} s, {}/s (tidesync = {:.2}x of it) |",
            decode_time.as_secs_f64(),
            thousands(decode_rate),
            apply_rate / decode_rate
        );
        println!("| tidesync peak RSS | {} MB |", mb(peak));
        println!(
            "| tidesync CPU | {:.1} s ({:.1} s per 1M rows) |",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / rows
        );
        println!("| load before / after | {load_before:.1} / {load_after:.1} |");
        if options.common.write_results {
            add_result_row(
                &options.common.results,
                BENCH,
                "### mysql-streaming\n\nMariaDB -> PostgreSQL (direct streaming) of N inserts in \
                 1,000-row transactions from one writer, beside the source's own binlog write rate \
                 and `mariadb-binlog -v` decoding the same range to /dev/null. MariaDB with \
                 sync_binlog=1 and innodb_flush_log_at_trx_commit=1; PostgreSQL with the \
                 PostgreSQL benchmarks' settings. Checked equal (count and sums) before reporting.",
                &[
                    "date", "commit", "machine", "rows", "write rate/s", "tidesync rows/s",
                    "vs write rate", "mariadb-binlog -v rows/s", "vs decode", "lag ms",
                    "peak RSS MB", "CPU s", "load", "command",
                ],
                &[
                    date.clone(),
                    git_commit(),
                    machine(),
                    thousands(rows),
                    thousands(write_rate),
                    thousands(apply_rate),
                    format!("**{:.2}x**", apply_rate / write_rate),
                    thousands(decode_rate),
                    format!("{:.2}x", apply_rate / decode_rate),
                    format!("{:.0}", lag.as_secs_f64() * 1000.0),
                    mb(peak),
                    format!("{:.1}", cpu.as_secs_f64()),
                    format!("{load_before:.1} / {load_after:.1}"),
                    format!("`{}`", command_line()),
                ],
            )?;
        }
        anyhow::Ok(())
    })?;
    if options.common.keep || options.common.dir.is_some() {
        eprintln!("  kept: {}", setup.dir.display());
    }
    Ok(())
}

pub fn snapshot(options: &Options) -> anyhow::Result<()> {
    const BENCH: &str = "mysql-snapshot";
    options.common.require_release_harness()?;
    ensure!(options.rows > 0, "--rows must be positive");
    let binary = options.common.tidesync_binary()?;
    let (dir, _guard) = options.common.work_dir()?;
    eprintln!(
        "tidesync-bench {BENCH}: copy of {} rows; work dir {}",
        thousands(options.rows as f64),
        dir.display()
    );
    let setup = Setup::start(&dir, &options.common)?;
    let date = now_utc();
    let load_before = load_avg();
    runtime()?.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(options.timeout_secs);
        let mut source = setup.source_conn().await?;
        source.query_drop(CREATE).await?;
        let mut a = 1;
        while a <= options.rows {
            let b = (a + 99_999).min(options.rows);
            source.query_drop(insert_sql(a, b)).await?;
            a = b + 1;
        }
        // Warm the buffer pool the same way for every reader.
        let _: Option<i64> = source.query_first("SELECT COUNT(*) FROM items").await?;
        let outfile = setup.source.data_dir().join("items-dump.tsv");
        let t = Instant::now();
        source
            .query_drop(format!(
                "SELECT * INTO OUTFILE '{}' FROM items",
                outfile.display()
            ))
            .await
            .context("SELECT .. INTO OUTFILE")?;
        let outfile_time = t.elapsed();
        let dump_bytes = std::fs::metadata(&outfile).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(&outfile)
            .with_context(|| format!("removing {}", outfile.display()))?;
        let t = Instant::now();
        let client = Command::new("mariadb")
            .args([
                "--no-defaults",
                "--protocol=TCP",
                "--host=127.0.0.1",
                &format!("--port={}", setup.source.port()),
                "--user=root",
                "--quick",
                "-N",
                "-B",
                "shop",
                "-e",
                "SELECT * FROM items",
            ])
            .stdout(Stdio::null())
            .status()
            .context("running the mariadb client")?;
        let client_time = t.elapsed();
        ensure!(client.success(), "the mariadb client failed: {client}");

        // The peer: the same copy without tidesync, the mariadb client's tab-separated output
        // piped into psql's COPY (the table has no NULLs and no values needing conversion,
        // so MySQL's text is PostgreSQL's input).
        let target = setup.target_conn().await?;
        target
            .batch_execute(
                "CREATE TABLE items_pipe (id bigint PRIMARY KEY, sku varchar(32) NOT NULL, \
                 name varchar(100) NOT NULL, price numeric(12,2) NOT NULL, qty integer NOT NULL, \
                 updated_at timestamp(6) NOT NULL)",
            )
            .await?;
        let psql = setup.target.bin_dir().join("psql");
        let pipe = format!(
            "mariadb --no-defaults --protocol=TCP --host=127.0.0.1 --port={} --user=root \
             --quick -N -B shop -e 'SELECT * FROM items ORDER BY id' \
             | '{}' -X -q -v ON_ERROR_STOP=1 '{}' -c '\\copy items_pipe FROM STDIN'",
            setup.source.port(),
            psql.display(),
            setup.target.url("warehouse")
        );
        let t = Instant::now();
        let piped = Command::new("bash")
            .args(["-o", "pipefail", "-c", &pipe])
            .status()
            .context("running mariadb | psql")?;
        let pipe_time = t.elapsed();
        ensure!(piped.success(), "mariadb | psql \\copy failed: {piped}");
        let n: i64 = target
            .query_one("SELECT count(*) FROM items_pipe", &[])
            .await?
            .get(0);
        ensure!(n as u64 == options.rows, "mariadb | psql copied {n} rows");
        target.batch_execute("DROP TABLE items_pipe; CHECKPOINT").await?;

        let mut child = Tidesync::start(&binary, &setup.config, &dir.join("tidesync.log"))?;
        let t0 = Instant::now();
        let seen = wait_for_row(&setup, &mut child, options.rows, deadline).await?;
        let copy_time = seen - t0;
        let want = fingerprint_source(&mut source).await?;
        let target = setup.target_conn().await?;
        let got = fingerprint_target(&target).await?;
        ensure!(want == got, "the target differs: source {want}, target {got}");
        child.stop(Duration::from_secs(60))?;
        let peak = child.peak_bytes();
        let cpu = child.usage().cpu;
        let rows = options.rows as f64;
        let load_after = load_avg();
        println!("## {BENCH} ({date}, {})", setup.version());
        println!();
        println!("| measure | value |");
        println!("|---|---|");
        println!("| rows | {} |", thousands(rows));
        println!(
            "| SELECT * INTO OUTFILE (the floor) | {:.2} s, {}/s ({:.0} MB) |",
            outfile_time.as_secs_f64(),
            thousands(rows / outfile_time.as_secs_f64()),
            dump_bytes as f64 / 1e6
        );
        println!(
            "| mariadb client to /dev/null over TCP | {:.2} s, {}/s |",
            client_time.as_secs_f64(),
            thousands(rows / client_time.as_secs_f64())
        );
        println!(
            "| mariadb client piped into psql \\copy (the peer: the same copy without tidesync) | {:.2} s, {}/s |",
            pipe_time.as_secs_f64(),
            thousands(rows / pipe_time.as_secs_f64())
        );
        println!(
            "| tidesync: start -> every row in PostgreSQL | {:.2} s, {}/s = **{:.2}x the OUTFILE time, {:.2}x the pipe's** |",
            copy_time.as_secs_f64(),
            thousands(rows / copy_time.as_secs_f64()),
            copy_time.as_secs_f64() / outfile_time.as_secs_f64(),
            copy_time.as_secs_f64() / pipe_time.as_secs_f64()
        );
        println!("| tidesync peak RSS | {} MB |", mb(peak));
        println!("| tidesync CPU | {:.1} s |", cpu.as_secs_f64());
        println!("| load before / after | {load_before:.1} / {load_after:.1} |");
        if options.common.write_results {
            add_result_row(
                &options.common.results,
                BENCH,
                "### mysql-snapshot\n\nMariaDB -> PostgreSQL initial copy of an N-row table \
                 (start of `tidesync run` until every row is in PostgreSQL), beside \
                 `SELECT * INTO OUTFILE` of the same table on the server (the dump floor), the \
                 `mariadb` client reading it to /dev/null, and the same copy without tidesync \
                 (`mariadb -B | psql \\copy`, the peer; n/a: recorded before the peer was \
                 measured). Checked equal before reporting.",
                &[
                    "date", "commit", "machine", "rows", "OUTFILE s", "client s", "pipe s",
                    "tidesync s", "tidesync / OUTFILE", "tidesync / pipe", "peak RSS MB",
                    "CPU s", "load", "command",
                ],
                &[
                    date.clone(),
                    git_commit(),
                    machine(),
                    thousands(rows),
                    format!("{:.2}", outfile_time.as_secs_f64()),
                    format!("{:.2}", client_time.as_secs_f64()),
                    format!("{:.2}", pipe_time.as_secs_f64()),
                    format!("{:.2}", copy_time.as_secs_f64()),
                    format!("**{:.2}x**", copy_time.as_secs_f64() / outfile_time.as_secs_f64()),
                    format!("**{:.2}x**", copy_time.as_secs_f64() / pipe_time.as_secs_f64()),
                    mb(peak),
                    format!("{:.1}", cpu.as_secs_f64()),
                    format!("{load_before:.1} / {load_after:.1}"),
                    format!("`{}`", command_line()),
                ],
            )?;
        }
        anyhow::Ok(())
    })?;
    if options.common.keep || options.common.dir.is_some() {
        eprintln!("  kept: {}", setup.dir.display());
    }
    Ok(())
}
