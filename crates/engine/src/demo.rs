//! `tidesync demo`: pattern P2 on one machine, with no external service.
//!
//! It creates a shop's master SQLite database (products, prices, stock), writes the
//! configuration it uses (so `tidesync run DIR/tidesync.toml` reruns it), starts the pipeline to
//! a replica database, drives a stream of price and stock changes in small transactions at a
//! steady rate, reports progress, waits for the replica to catch up and compares every table
//! row by row.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tidesync_core::BoxError;
use tokio_util::sync::CancellationToken;

use crate::compare::{TableDiff, compare_sqlite_table};
use crate::{Config, Engine};

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dir: PathBuf,
    pub duration: Duration,
    /// Row changes per second the shop writes.
    pub rate: u32,
    /// Products in the catalogue before the pipeline starts.
    pub products: u32,
}

/// A progress sample, once a second.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub elapsed: Duration,
    /// Row changes committed to the master (seed rows included).
    pub written: u64,
    pub captured: u64,
    pub applied: u64,
    /// Changes captured but not yet applied.
    pub lag: u64,
    /// True while the demo waits for the replica to catch up after the writes stopped.
    pub catching_up: bool,
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub config_path: PathBuf,
    pub written: u64,
    pub captured: u64,
    pub applied: u64,
    pub write_time: Duration,
    pub catch_up_time: Duration,
    pub tables: Vec<TableDiff>,
}

impl DemoReport {
    pub fn is_equal(&self) -> bool {
        self.tables.iter().all(TableDiff::is_equal)
    }
}

const TABLES: [(&str, &[&str]); 3] = [
    ("products", &["id"]),
    ("prices", &["product_id"]),
    ("stock", &["product_id", "warehouse"]),
];
const WAREHOUSES: [&str; 3] = ["north", "south", "online"];

/// xorshift64*: a small deterministic generator; the workload needs variety, not security.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn now_text() -> String {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    tidesync_core::time::format_timestamp(us)
}

fn price_text(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Creates the master database with `products` products; returns the row count written.
pub fn create_master(path: &Path, products: u32) -> rusqlite::Result<u64> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(
        "CREATE TABLE products (id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, name TEXT NOT NULL, active INTEGER NOT NULL);
         CREATE TABLE prices (product_id INTEGER PRIMARY KEY, price TEXT NOT NULL, currency TEXT NOT NULL, updated_at TEXT NOT NULL);
         CREATE TABLE stock (product_id INTEGER NOT NULL, warehouse TEXT NOT NULL, qty INTEGER NOT NULL, updated_at TEXT NOT NULL,
                             PRIMARY KEY (product_id, warehouse));",
    )?;
    let tx = conn.transaction()?;
    let mut rng = Rng(0x5EED);
    let now = now_text();
    for id in 1..=u64::from(products) {
        insert_product(&tx, &mut rng, id, &now)?;
    }
    tx.commit()?;
    Ok(u64::from(products) * 5)
}

fn insert_product(conn: &Connection, rng: &mut Rng, id: u64, now: &str) -> rusqlite::Result<()> {
    const NAMES: [&str; 6] = [
        "Espresso beans",
        "Oat milk",
        "Croissant",
        "Green tea",
        "Sourdough",
        "Dark chocolate",
    ];
    conn.execute(
        "INSERT INTO products (id, sku, name, active) VALUES (?1, ?2, ?3, 1)",
        params![
            id as i64,
            format!("SKU-{id:06}"),
            format!("{} #{id}", NAMES[(id % 6) as usize])
        ],
    )?;
    conn.execute(
        "INSERT INTO prices (product_id, price, currency, updated_at) VALUES (?1, ?2, 'EUR', ?3)",
        params![id as i64, price_text(99 + rng.below(5000)), now],
    )?;
    for w in WAREHOUSES {
        conn.execute(
            "INSERT INTO stock (product_id, warehouse, qty, updated_at) VALUES (?1, ?2, ?3, ?4)",
            params![id as i64, w, rng.below(500) as i64, now],
        )?;
    }
    Ok(())
}

/// One business transaction; returns the row changes it made.
fn write_one(conn: &mut Connection, rng: &mut Rng, next_id: &mut u64) -> rusqlite::Result<u64> {
    // IMMEDIATE: a transaction that reads and then writes must hold the write lock from the
    // start, or SQLite refuses the upgrade when the capture is deleting acked rows.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = now_text();
    let live: (i64, i64) = tx.query_row("SELECT min(id), max(id) FROM products", [], |r| {
        Ok((
            r.get::<_, Option<i64>>(0)?.unwrap_or(1),
            r.get::<_, Option<i64>>(1)?.unwrap_or(1),
        ))
    })?;
    let pick = |rng: &mut Rng| live.0 + rng.below((live.1 - live.0 + 1) as u64) as i64;
    let dice = rng.below(100);
    let changed = if dice < 55 {
        // A price change.
        tx.execute(
            "UPDATE prices SET price = ?1, updated_at = ?2 WHERE product_id = ?3",
            params![price_text(99 + rng.below(5000)), now, pick(rng)],
        )? as u64
    } else if dice < 90 {
        // An order or a delivery: stock moves in one to three warehouses.
        let mut n = 0;
        for _ in 0..=rng.below(3) {
            let delta = rng.below(21) as i64 - 10;
            n += tx.execute(
                "UPDATE stock SET qty = max(0, qty + ?1), updated_at = ?2 WHERE product_id = ?3 AND warehouse = ?4",
                params![delta, now, pick(rng), WAREHOUSES[rng.below(3) as usize]],
            )? as u64;
        }
        n
    } else if dice < 95 {
        // A new product with its price and stock.
        *next_id += 1;
        insert_product(&tx, rng, *next_id, &now)?;
        5
    } else if dice < 98 {
        // A product is discontinued: stock, price and product go.
        let id = pick(rng);
        let mut n = tx.execute("DELETE FROM stock WHERE product_id = ?1", [id])? as u64;
        n += tx.execute("DELETE FROM prices WHERE product_id = ?1", [id])? as u64;
        n + tx.execute("DELETE FROM products WHERE id = ?1", [id])? as u64
    } else {
        tx.execute(
            "UPDATE products SET name = name || ' (new recipe)' WHERE id = ?1",
            [pick(rng)],
        )? as u64
    };
    tx.commit()?;
    Ok(changed)
}

/// Drives `rate` row changes per second until `stop`; adds them to `written`.
fn drive(
    path: &Path,
    rate: u32,
    start_id: u64,
    stop: &AtomicBool,
    written: &AtomicU64,
) -> rusqlite::Result<()> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let mut rng = Rng(0xD1CE);
    let mut next_id = start_id;
    let started = Instant::now();
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        if done >= due {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let n = write_one(&mut conn, &mut rng, &mut next_id)?;
        done += n.max(1);
        written.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

fn config_text(dir: &Path) -> String {
    // Paths are written as TOML literal strings; the demo directory is ours, but quote
    // defensively anyway.
    let lit = |p: PathBuf| format!("'{}'", p.display().to_string().replace('\'', ""));
    format!(
        "# Written by `tidesync demo`. Rerun with: tidesync run {config}\n\
         [store]\npath = {store}\n\n\
         [sources.shop]\nurl = {master}\nmode = \"trigger\"\ntables = [\"products\", \"prices\", \"stock\"]\npoll_interval_ms = 20\n\n\
         [sinks.replica]\nurl = {replica}\n\n\
         [pipelines.shop]\nsource = \"shop\"\nsinks = [\"replica\"]\nbatch_size = 2000\n",
        config = dir.join("tidesync.toml").display(),
        store = lit(dir.join("state").join("tidesync.db")),
        master = lit(dir.join("master.db")),
        replica = lit(dir.join("replica.db")),
    )
}

/// Runs the demo; `progress` is called about once a second.
pub async fn run_demo(
    options: DemoOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<DemoReport, BoxError> {
    let dir = std::path::absolute(&options.dir)?;
    std::fs::create_dir_all(&dir)?;
    for name in [
        "master.db",
        "master.db-wal",
        "master.db-shm",
        "replica.db",
        "replica.db-wal",
        "replica.db-shm",
    ] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    match std::fs::remove_dir_all(dir.join("state")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let master = dir.join("master.db");
    let seeded = create_master(&master, options.products)?;
    let config_path = dir.join("tidesync.toml");
    std::fs::write(&config_path, config_text(&dir))?;
    let config = Config::load(&config_path)?;
    let engine = Engine::build(&config)?;
    let stats = engine.pipelines[0].stats.clone();
    let cancel = CancellationToken::new();
    let mut engine_task = tokio::spawn(engine.run(cancel.clone()));

    let started = Instant::now();
    let written = Arc::new(AtomicU64::new(seeded));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = {
        let (master, stop, written) = (master.clone(), stop.clone(), written.clone());
        let (rate, start_id) = (options.rate, u64::from(options.products));
        tokio::task::spawn_blocking(move || drive(&master, rate, start_id, &stop, &written))
    };
    let sample = |catching_up| Progress {
        elapsed: started.elapsed(),
        written: written.load(Ordering::Relaxed),
        captured: stats.captured.load(Ordering::Relaxed),
        applied: stats
            .sinks
            .iter()
            .map(|s| s.applied.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0),
        lag: stats.lag(),
        catching_up,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let write_until = started + options.duration;
    let engine_failed =
        |r: Result<Result<(), crate::PipelineError>, tokio::task::JoinError>| -> BoxError {
            match r {
                Ok(Ok(())) => "the pipeline stopped unexpectedly".into(),
                Ok(Err(e)) => e.into(),
                Err(e) => e.into(),
            }
        };
    while Instant::now() < write_until {
        tokio::select! {
            r = &mut engine_task => { stop.store(true, Ordering::Relaxed); return Err(engine_failed(r)); }
            r = &mut writer => {
                cancel.cancel();
                r??;
                return Err("the shop's writer stopped early".into());
            }
            _ = tick.tick() => progress(&sample(false)),
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer
        .await?
        .map_err(|e| format!("writing to the master: {e}"))?;
    let write_time = started.elapsed();

    // Caught up when the master's change table is drained (acked after the store commit) and
    // every sink's cursor is at the head.
    let catch_up_started = Instant::now();
    let pending_sql = format!(
        "SELECT count(*) FROM {}",
        tidesync_core::sql::quote_ident(&tidesync_capture::sqlite::trigger::change_table("shop"))
    );
    let check = Connection::open(&master)?;
    loop {
        let pending: i64 = check.query_row(&pending_sql, [], |r| r.get(0))?;
        if pending == 0 && stats.lag() == 0 {
            break;
        }
        if catch_up_started.elapsed() > Duration::from_secs(120) {
            cancel.cancel();
            return Err(format!("the replica did not catch up within 120 s ({pending} changes not captured, lag {})", stats.lag()).into());
        }
        tokio::select! {
            r = &mut engine_task => return Err(engine_failed(r)),
            _ = tick.tick() => progress(&sample(true)),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let catch_up_time = catch_up_started.elapsed();
    progress(&sample(true));
    cancel.cancel();
    engine_task.await??;

    let replica = dir.join("replica.db");
    let mut tables = Vec::new();
    for (table, key) in TABLES {
        let key: Vec<String> = key.iter().map(|k| (*k).to_owned()).collect();
        tables.push(compare_sqlite_table(&master, &replica, table, &key, 5)?);
    }
    let last = sample(false);
    Ok(DemoReport {
        config_path,
        written: last.written,
        captured: last.captured,
        applied: last.applied,
        write_time,
        catch_up_time,
        tables,
    })
}
