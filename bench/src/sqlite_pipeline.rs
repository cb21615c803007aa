//! Benchmark `sqlite-pipeline`: the embedded SQLite -> SQLite pipeline's sustained throughput
//! and peak memory, beside the raw rate at which the same rows can be written into a SQLite
//! file in 1,000-row transactions (the physical floor of this pipeline), in the same run.
//!
//! Steps:
//! 1. Floor: insert the N rows into a fresh SQLite file (WAL, synchronous=FULL, as tidesync's
//!    sink) in 1,000-row transactions with a prepared statement; again with
//!    synchronous=NORMAL (extra information); again with FULL after the pipeline, so drift of
//!    the machine during the run shows. The floor is the faster of the two FULL runs.
//! 2. A master database with `items` and one seed row; `tidesync run` starts once, installs
//!    its triggers, snapshots the seed row and applies it (target `_tidesync_applied.seq` = 1),
//!    and is stopped with SIGTERM. (`--no-seed` starts on an empty table instead: a regression
//!    check that the first start records its position and the restart does not snapshot the
//!    backlog a second time.)
//! 3. The N rows are written into the master in 1,000-row transactions (same pragmas as the
//!    floor); the triggers capture them into the change table: the backlog. This rate beside
//!    the floor is the trigger overhead.
//! 4. `tidesync run` starts again; the drain time runs from the spawn until the target's
//!    `_tidesync_applied.seq` reaches N + 1 (polled every 20 ms). Throughput = N / drain time.
//!    The child's VmHWM is sampled at every poll and right before the SIGTERM.
//! 5. Verification, or the run fails: the store's log head is exactly N + 1 (nothing captured
//!    twice), the target has N + 1 rows, and it equals the master row by row.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::Common;
use crate::child::{Tidesync, write_bytes};
use crate::report::{
    add_result_row, command_line, git_commit, iso_utc, load_avg, machine, now_utc, thousands,
};

/// Options of `tidesync-bench sqlite-pipeline`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Rows written into the master: the backlog the pipeline drains.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// The pipeline's batch_size (rows per capture poll and per target transaction).
    #[arg(long, default_value_t = 1000)]
    batch_size: u64,
    /// The source's poll_interval_ms.
    #[arg(long, default_value_t = 20)]
    poll_interval_ms: u64,
    /// Skip the extra raw run with synchronous=NORMAL.
    #[arg(long)]
    no_normal: bool,
    /// Start tidesync the first time on an empty table, without the seed row: checks that the
    /// restart does not snapshot the backlog again (the store's head must end at exactly N).
    #[arg(long)]
    no_seed: bool,
    /// Give up when the drain takes longer than this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    #[command(flatten)]
    common: Common,
}

/// Rows per transaction of the floor and of the master writes (fixed by the benchmark's
/// definition).
const TXN_ROWS: u64 = 1000;
const POLL: Duration = Duration::from_millis(20);
const TABLE_SQL: &str = "CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT NOT NULL, name TEXT NOT NULL, \
     price TEXT NOT NULL, qty INTEGER NOT NULL, updated_at TEXT NOT NULL)";
const INSERT_SQL: &str =
    "INSERT INTO items (id, sku, name, price, qty, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const APPLIED_SQL: &str =
    "SELECT seq FROM _tidesync_applied WHERE pipeline = 'items' AND sink = 'replica'";

/// One generated row.
#[derive(Debug)]
struct Item {
    id: i64,
    sku: String,
    name: String,
    price: String,
    qty: i64,
    updated_at: String,
}

/// splitmix64: a deterministic hash of the row id, for variety in the values.
fn mix(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Item {
    /// Row `id`: always the same values for the same id.
    fn new(id: u64) -> Item {
        const ADJ: [&str; 8] = [
            "Roasted", "Organic", "Smoked", "Classic", "Spiced", "Golden", "Rustic", "Toasted",
        ];
        const NOUN: [&str; 8] = [
            "coffee", "oat milk", "almonds", "rye tea", "bagels", "granola", "honey", "cocoa",
        ];
        let h = mix(id);
        let cents = 99 + h % 9900;
        Item {
            id: id as i64,
            sku: format!("SKU-{id:06}"),
            name: format!(
                "{} {} {:04}",
                ADJ[(h % 8) as usize],
                NOUN[(h >> 3) as usize % 8],
                id % 10_000
            ),
            price: format!("{}.{:02}", cents / 100, cents % 100),
            qty: ((h >> 20) % 1000) as i64,
            updated_at: iso_utc(1_704_067_200 + id as i64),
        }
    }
}

/// Opens a SQLite file with tidesync's sink pragmas (WAL, the given synchronous level).
fn open_writer(path: &Path, synchronous: &str) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// Opens an existing SQLite file for reading only (query_only: no write can slip through).
fn open_reader(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    conn.pragma_update(None, "query_only", true)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// What writing rows cost.
#[derive(Debug, Clone, Copy)]
struct Written {
    rows: u64,
    /// Time inside the transactions (row generation excluded).
    time: Duration,
    /// Bytes this process sent to storage meanwhile (/proc/self/io), 0 if unknown.
    bytes: u64,
}

impl Written {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.time.as_secs_f64()
    }
}

/// Inserts rows `ids` in transactions of [`TXN_ROWS`] with one prepared statement.
fn write_rows(
    conn: &mut Connection,
    ids: RangeInclusive<u64>,
    label: &str,
) -> anyhow::Result<Written> {
    let (first, last) = (*ids.start(), *ids.end());
    let total = last + 1 - first;
    let bytes_before = write_bytes("/proc/self/io");
    let mut time = Duration::ZERO;
    let mut chunk = Vec::with_capacity(TXN_ROWS as usize);
    let mut next = first;
    let started = Instant::now();
    let mut shown = Instant::now();
    while next <= last {
        let hi = last.min(next + TXN_ROWS - 1);
        chunk.clear();
        chunk.extend((next..=hi).map(Item::new));
        let t = Instant::now();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(INSERT_SQL)?;
            for r in &chunk {
                st.execute(params![r.id, r.sku, r.name, r.price, r.qty, r.updated_at])
                    .with_context(|| format!("{label}: inserting row {}", r.id))?;
            }
        }
        tx.commit()
            .with_context(|| format!("{label}: committing"))?;
        time += t.elapsed();
        next = hi + 1;
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            eprintln!(
                "  {label:<28} {:>6.1} s  {:>11} / {} rows",
                started.elapsed().as_secs_f64(),
                thousands((next - first) as f64),
                thousands(total as f64)
            );
        }
    }
    let bytes = match (bytes_before, write_bytes("/proc/self/io")) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    let w = Written {
        rows: total,
        time,
        bytes,
    };
    eprintln!(
        "  {label:<28} {:>6.1} s  {} rows/s",
        time.as_secs_f64(),
        thousands(w.rate())
    );
    Ok(w)
}

/// The raw floor: the rows into a fresh file, then the file is removed.
fn raw_floor(dir: &Path, n: u64, synchronous: &str, label: &str) -> anyhow::Result<Written> {
    let path = dir.join(format!("raw-{}.db", synchronous.to_lowercase()));
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", p.display()));
            }
            _ => {}
        }
    }
    let mut conn = open_writer(&path, synchronous)?;
    conn.execute_batch(TABLE_SQL)?;
    let w = write_rows(&mut conn, 1..=n, label)?;
    let count: i64 = conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0))?;
    ensure!(
        count as u64 == n,
        "{label}: wrote {n} rows but the file has {count}"
    );
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(w)
}

/// A TOML literal string of a path.
fn toml_path(p: &Path) -> anyhow::Result<String> {
    let s = p.display().to_string();
    ensure!(
        !s.contains('\'') && !s.contains('\n'),
        "path {s} cannot be written as a TOML literal string"
    );
    Ok(format!("'{s}'"))
}

fn config_text(dir: &Path, options: &Options) -> anyhow::Result<String> {
    Ok(format!(
        "# Written by tidesync-bench sqlite-pipeline.\n\
         [store]\npath = {store}\n\n\
         [sources.shop]\nurl = {master}\nmode = \"trigger\"\ntables = [\"items\"]\npoll_interval_ms = {poll}\n\n\
         [sinks.replica]\nurl = {replica}\n\n\
         [pipelines.items]\nsource = \"shop\"\nsinks = [\"replica\"]\nbatch_size = {batch}\n",
        store = toml_path(&dir.join("state").join("tidesync.db"))?,
        master = toml_path(&dir.join("master.db"))?,
        replica = toml_path(&dir.join("replica.db"))?,
        poll = options.poll_interval_ms,
        batch = options.batch_size,
    ))
}

/// The target's applied seq, None while the table or row does not exist yet.
fn applied_seq(conn: &Connection) -> anyhow::Result<Option<u64>> {
    match conn
        .query_row(APPLIED_SQL, [], |r| r.get::<_, i64>(0))
        .optional()
    {
        Ok(seq) => Ok(seq.map(|s| s as u64)),
        Err(e) if e.to_string().contains("no such table") => Ok(None),
        Err(e) => Err(e).context("reading the target's _tidesync_applied"),
    }
}

/// Polls `ready` every [`POLL`] while the child runs, up to `timeout`.
fn wait_for(
    child: &mut Tidesync,
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        child.check_running()?;
        child.sample()?;
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: not done within {} s", timeout.as_secs());
        }
        std::thread::sleep(POLL);
    }
}

/// First start: triggers installed, the seed row (if any) applied; then SIGTERM.
fn first_start(
    binary: &Path,
    dir: &Path,
    config: &Path,
    master: &Path,
    seeded: bool,
) -> anyhow::Result<()> {
    let target = dir.join("replica.db");
    let mut child = Tidesync::start(binary, config, &dir.join("tidesync-first-start.log"))?;
    let mut conn: Option<Connection> = None;
    let probe = open_reader(master)?;
    wait_for(
        &mut child,
        Duration::from_secs(60),
        "tidesync's first start",
        || {
            if conn.is_none() && target.exists() {
                conn = Some(open_reader(&target)?);
            }
            let Some(c) = conn.as_ref() else {
                return Ok(false);
            };
            if seeded {
                return Ok(applied_seq(c)? >= Some(1));
            }
            // No row to wait for: the triggers exist in the master and the sink has set up the
            // target (its `_tidesync_applied` and `items`).
            let triggers: i64 = probe.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN \
                 ('_tidesync_items_items_ins', '_tidesync_items_items_upd', '_tidesync_items_items_del')",
                [],
                |r| r.get(0),
            )?;
            let tables: i64 = c.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('items', '_tidesync_applied')",
                [],
                |r| r.get(0),
            )?;
            Ok(triggers == 3 && tables == 2)
        },
    )?;
    drop(conn);
    child.stop(Duration::from_secs(30))
}

/// What the drain measured.
#[derive(Debug)]
struct Drain {
    time: Duration,
    /// From the spawn to the first applied change.
    startup: Duration,
    peak_bytes: u64,
    cpu: Duration,
    write_bytes: u64,
}

/// Second start: time from the spawn until the target's applied seq reaches `expected`.
fn drain(
    binary: &Path,
    dir: &Path,
    config: &Path,
    start_seq: u64,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<Drain> {
    let target = dir.join("replica.db");
    let conn = open_reader(&target)?;
    let backlog = expected - start_seq;
    let started = Instant::now();
    let mut child = Tidesync::start(binary, config, &dir.join("tidesync-drain.log"))?;
    let mut startup = None;
    let mut shown = Instant::now();
    let mut shown_seq = start_seq;
    let time = loop {
        std::thread::sleep(POLL);
        child.check_running()?;
        child.sample()?;
        let seq = applied_seq(&conn)?.unwrap_or(0);
        let now = started.elapsed();
        if seq > start_seq && startup.is_none() {
            startup = Some(now);
        }
        if seq >= expected {
            break now;
        }
        if now > timeout {
            bail!(
                "the drain did not finish within {} s ({} of {} changes applied); see {}",
                timeout.as_secs(),
                seq.saturating_sub(start_seq),
                backlog,
                dir.join("tidesync-drain.log").display()
            );
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            let dt = shown.elapsed().as_secs_f64();
            eprintln!(
                "  {:<28} {:>6.1} s  {:>11} / {} applied  ({}/s now, {}/s overall)  peak RSS {:.1} MB",
                "pipeline drain",
                now.as_secs_f64(),
                thousands(seq.saturating_sub(start_seq) as f64),
                thousands(backlog as f64),
                thousands(seq.saturating_sub(shown_seq) as f64 / dt),
                thousands(seq.saturating_sub(start_seq) as f64 / now.as_secs_f64()),
                child.peak_bytes() as f64 / 1e6,
            );
            shown = Instant::now();
            shown_seq = seq;
        }
    };
    // stop() samples VmHWM, CPU and I/O once more right before the SIGTERM.
    child.stop(Duration::from_secs(60))?;
    let usage = child.usage();
    eprintln!(
        "  {:<28} {:>6.1} s  {} changes/s",
        "pipeline drain",
        time.as_secs_f64(),
        thousands(backlog as f64 / time.as_secs_f64())
    );
    Ok(Drain {
        time,
        startup: startup.unwrap_or(time),
        peak_bytes: child.peak_bytes(),
        cpu: usage.cpu,
        write_bytes: usage.write_bytes,
    })
}

/// After the drain: the store captured exactly what was written, the target equals the master.
fn verify(dir: &Path, expected_seq: u64, expected_rows: u64) -> anyhow::Result<()> {
    let store = open_reader(&dir.join("state").join("tidesync.db"))?;
    let head: i64 = store
        .query_row(
            "SELECT head FROM positions WHERE pipeline = 'items'",
            [],
            |r| r.get(0),
        )
        .context("reading the store's log head")?;
    ensure!(
        head as u64 == expected_seq,
        "verification failed: the store's log head is seq {head}, but exactly {expected_seq} changes were \
         written to the master (tidesync captured some changes twice, e.g. a re-snapshot on restart)"
    );
    let master = open_reader(&dir.join("master.db"))?;
    master
        .execute(
            "ATTACH DATABASE ?1 AS target",
            [dir.join("replica.db").display().to_string()],
        )
        .context("attaching the target to the master")?;
    let count: i64 = master.query_row("SELECT count(*) FROM target.items", [], |r| r.get(0))?;
    ensure!(
        count as u64 == expected_rows,
        "verification failed: the target has {count} rows in items, expected {expected_rows}"
    );
    let diff = |a: &str, b: &str| -> anyhow::Result<i64> {
        Ok(master.query_row(
            &format!(
                "SELECT count(*) FROM (SELECT * FROM {a}.items EXCEPT SELECT * FROM {b}.items)"
            ),
            [],
            |r| r.get(0),
        )?)
    };
    let (missing, extra) = (diff("main", "target")?, diff("target", "main")?);
    ensure!(
        missing == 0 && extra == 0,
        "verification failed: the target differs from the master: {missing} master rows missing or \
         different in the target, {extra} target rows not in the master"
    );
    Ok(())
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let binary = options.common.tidesync_binary()?;
    ensure!(options.rows > 0, "--rows must be at least 1");
    ensure!(options.batch_size > 0, "--batch-size must be at least 1");
    let (dir, _guard) = options.common.work_dir()?;
    let n = options.rows;
    let date = now_utc();
    let command = command_line();
    let load_before = load_avg();
    eprintln!(
        "tidesync-bench sqlite-pipeline: {} rows",
        thousands(n as f64)
    );
    eprintln!("  tidesync: {}", binary.display());
    eprintln!("  work dir: {}", dir.display());

    // 1. The floor, before the pipeline.
    let raw_full = raw_floor(&dir, n, "FULL", "raw insert (FULL)")?;
    let raw_normal = if options.no_normal {
        None
    } else {
        Some(raw_floor(&dir, n, "NORMAL", "raw insert (NORMAL)")?)
    };

    // 2. The master, and tidesync's first start.
    let master = dir.join("master.db");
    let seeded = !options.no_seed;
    {
        let conn = open_writer(&master, "FULL")?;
        conn.execute_batch(TABLE_SQL)?;
        if seeded {
            let r = Item::new(0);
            conn.execute(
                INSERT_SQL,
                params![r.id, r.sku, r.name, r.price, r.qty, r.updated_at],
            )?;
        }
    }
    let config = dir.join("tidesync.toml");
    std::fs::write(&config, config_text(&dir, options)?)
        .with_context(|| format!("writing {}", config.display()))?;
    eprintln!("  first start: installing the capture triggers");
    first_start(&binary, &dir, &config, &master, seeded)?;
    let start_seq = u64::from(seeded);

    // 3. The backlog: the rows into the master, captured by the triggers.
    let with_triggers = {
        let mut conn = open_writer(&master, "FULL")?;
        let w = write_rows(&mut conn, 1..=n, "master insert + triggers")?;
        let pending: i64 =
            conn.query_row("SELECT count(*) FROM _tidesync_items_changes", [], |r| {
                r.get(0)
            })?;
        ensure!(
            pending as u64 == n,
            "the triggers captured {pending} changes for {n} rows written"
        );
        w
    };

    // 4. The drain.
    let expected = start_seq + n;
    let drained = drain(
        &binary,
        &dir,
        &config,
        start_seq,
        expected,
        Duration::from_secs(options.timeout_secs),
    )?;

    // 5. Verification.
    verify(&dir, expected, expected)?;
    eprintln!("  verified: store log head = {expected}, target equals master row by row");

    // The floor again, after the pipeline: drift of the machine during the run shows.
    let raw_after = raw_floor(&dir, n, "FULL", "raw insert (FULL), again")?;
    let floor = raw_full.rate().max(raw_after.rate());
    let load_after = load_avg();

    let pipeline_rate = n as f64 / drained.time.as_secs_f64();
    let ratio = pipeline_rate / floor;
    let peak_mb = drained.peak_bytes as f64 / 1e6;
    let cpu_share = drained.cpu.as_secs_f64() / drained.time.as_secs_f64();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let ratio_ok = ratio >= 0.30;
    let mem_ok = peak_mb < 100.0;
    let per_row = |bytes: u64, rows: u64| bytes as f64 / rows as f64;
    let commit = git_commit();

    println!("## sqlite-pipeline, {date} (commit {commit})");
    println!();
    println!("`{command}`");
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| rows (backlog) | {} |", thousands(n as f64));
    println!(
        "| raw insert, WAL + synchronous=FULL, 1,000-row txns (floor) | {} rows/s before, {} rows/s after the pipeline |",
        thousands(raw_full.rate()),
        thousands(raw_after.rate())
    );
    if let Some(w) = raw_normal {
        println!(
            "| raw insert, WAL + synchronous=NORMAL | {} rows/s |",
            thousands(w.rate())
        );
    }
    println!(
        "| master insert with capture triggers (FULL) | {} rows/s: {:.2}x the floor's time per row |",
        thousands(with_triggers.rate()),
        floor / with_triggers.rate()
    );
    println!(
        "| pipeline drain (batch_size {}, poll {} ms) | {} changes/s: {} changes in {:.2} s, first applied after {:.0} ms |",
        options.batch_size,
        options.poll_interval_ms,
        thousands(pipeline_rate),
        thousands(n as f64),
        drained.time.as_secs_f64(),
        drained.startup.as_secs_f64() * 1000.0
    );
    println!(
        "| **pipeline / floor** | **{:.1}%** (target >= 30%: {}) |",
        ratio * 100.0,
        verdict(ratio_ok)
    );
    println!(
        "| tidesync peak RSS (VmHWM) | {peak_mb:.1} MB (target < 100 MB: {}) |",
        verdict(mem_ok)
    );
    println!(
        "| tidesync CPU during the drain | {:.1} s = {:.0}% of one core (2 cores = 200%) |",
        drained.cpu.as_secs_f64(),
        cpu_share * 100.0
    );
    println!(
        "| bytes to storage per row: floor / master+triggers / tidesync drain | {:.0} / {:.0} / {:.0} |",
        per_row(raw_full.bytes, n),
        per_row(with_triggers.bytes, n),
        per_row(drained.write_bytes, n)
    );
    println!("| verified | store head = {expected}, target = master row by row |");
    println!(
        "| load average (1 min) at start / end | {load_before:.2} / {load_after:.2} (other work on the machine skews every rate) |"
    );

    if options.common.write_results {
        let intro = format!(
            "Each row is one run of the command in its last column (from the workspace root, after \
             `cargo build --release -p tidesync -p tidesync-bench`). Rates are rows or changes per \
             second; the floor is the faster of the two raw FULL runs; \"pipeline / floor\" is the \
             headline (target >= 30%), peak RSS is tidesync's VmHWM (target < 100 MB); tidesync CPU is its CPU time over the \
             drain time (100% = one core); bytes written are what tidesync \
             sent to storage during the drain (/proc/PID/io), per change (the floor writes ~160); load is the 1-minute load average at start / end. \
             Last run on: {}.",
            machine()
        );
        let header = [
            "date",
            "commit",
            "rows",
            "batch",
            "raw FULL rows/s (before / after)",
            "raw NORMAL rows/s",
            "master + triggers rows/s",
            "pipeline changes/s",
            "pipeline / floor",
            "drain s",
            "peak RSS MB",
            "tidesync CPU",
            "tidesync bytes written / change",
            "load",
            "command",
        ];
        let row = [
            date.clone(),
            commit.clone(),
            thousands(n as f64),
            options.batch_size.to_string(),
            format!(
                "{} / {}",
                thousands(raw_full.rate()),
                thousands(raw_after.rate())
            ),
            raw_normal.map_or("-".to_owned(), |w| thousands(w.rate())),
            format!(
                "{} ({:.2}x)",
                thousands(with_triggers.rate()),
                floor / with_triggers.rate()
            ),
            thousands(pipeline_rate),
            format!("**{:.1}%** ({})", ratio * 100.0, verdict(ratio_ok)),
            format!("{:.2}", drained.time.as_secs_f64()),
            format!("{peak_mb:.1} ({})", verdict(mem_ok)),
            format!("{:.0}%", cpu_share * 100.0),
            thousands(per_row(drained.write_bytes, n)),
            format!("{load_before:.1} / {load_after:.1}"),
            format!("`{command}`"),
        ];
        add_result_row(
            &options.common.results,
            "sqlite-pipeline",
            &intro,
            &header,
            &row,
        )?;
        eprintln!(
            "  results: added a row to {}",
            options.common.results.display()
        );
    }
    if options.common.keep || options.common.dir.is_some() {
        eprintln!("  kept: {}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_deterministic_and_shaped() {
        let a = Item::new(42);
        let b = Item::new(42);
        assert_eq!(
            (a.sku.as_str(), a.price.as_str()),
            ("SKU-000042", b.price.as_str())
        );
        assert_eq!(a.name, b.name);
        assert!((17..=24).contains(&a.name.len()), "{}", a.name);
        assert!(a.price.contains('.') && a.price.len() >= 4, "{}", a.price);
        assert_eq!(a.updated_at, "2024-01-01T00:00:42Z");
        assert!((0..1000).contains(&a.qty));
    }
}
