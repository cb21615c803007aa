#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test, logging at `warn`; set `TEST_TIDESYNC_LOG` (e.g. `info` or
/// `tidesync_engine=debug,info`) to see more in the logs a failing test prints.
pub fn tidesync() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidesync"));
    cmd.env(
        "TIDESYNC_LOG",
        std::env::var("TEST_TIDESYNC_LOG").unwrap_or("warn".into()),
    );
    cmd
}

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// examples/NAME with `from` replaced by `to` (which must be there), written into `dir`: an
/// example as written, with a setting a test needs shorter.
pub fn example_with(dir: &Path, name: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(example(name)).unwrap();
    assert!(text.contains(from), "{from:?} not in examples/{name}");
    let path = dir.join(name);
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path
}

/// Runs the binary to completion with the three example variables set.
pub fn run(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = tidesync();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

thread_local! {
    /// The tidesync processes this test thread started, killed if the test panics so that a
    /// failed test does not leave them running (each test runs on its own thread).
    static SPAWNED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn kill_spawned_on_panic() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let pids = SPAWNED.with(|s| std::mem::take(&mut *s.borrow_mut()));
            for pid in pids {
                // Only if the pid is still a tidesync (it may have exited and been reused).
                // Best effort: the test is failing anyway, and its own message matters more.
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("tidesync") {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
            default(info);
        }));
    });
}

pub fn spawn(args: &[&str], env: &[(&str, &Path)], log: &Path) -> Child {
    kill_spawned_on_panic();
    let mut cmd = tidesync();
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    SPAWNED.with(|s| s.borrow_mut().push(child.id()));
    child
}

/// Polls `f` every 20 ms until it returns `Some`, failing after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a spawned run wrote to its log so far (empty if nothing yet).
/// Asserts that a finished command exited with `code`, showing its output if not.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The number after ` NAME=` in a tidesync log line (`rows=42`).
pub fn log_field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

pub fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// An integer `sql` answers in PostgreSQL database `db`.
pub fn pg_count(pg: &tidesync_testkit::Postgres, db: &str, sql: &str) -> i64 {
    pg.psql(db, sql).unwrap().trim().parse().unwrap()
}

/// Stops `child` with SIGTERM and asserts it exits cleanly, showing its `log` if not.
pub fn stop_cleanly(child: &mut Child, log: &Path) {
    terminate(child);
    assert!(child.wait().unwrap().success(), "{}", log_text(log));
}

/// Sends SIGTERM through kill(1) (the workspace forbids unsafe code, so no libc::kill).
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A seed for the test's randomness that differs between runs; printed so that a failure
/// can be replayed with TIDESYNC_TEST_SEED.
pub fn seed() -> u64 {
    let seed = std::env::var("TIDESYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
                | 1
        });
    eprintln!("TIDESYNC_TEST_SEED={seed}");
    seed
}

#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A temporary folder with a SQLite master holding the examples' empty `items` table, and the
/// paths for the examples' three variables.
#[derive(Debug)]
pub struct ExampleSetup {
    pub dir: tempfile::TempDir,
    pub master: PathBuf,
    pub replica: PathBuf,
    pub state: PathBuf,
}

impl ExampleSetup {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (master, replica, state) = (
            dir.path().join("m.db"),
            dir.path().join("r.db"),
            dir.path().join("state"),
        );
        rusqlite::Connection::open(&master)
            .unwrap()
            .execute(
                "CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT, name TEXT, price NUMERIC, qty INTEGER, updated_at TEXT)",
                [],
            )
            .unwrap();
        ExampleSetup {
            dir,
            master,
            replica,
            state,
        }
    }

    /// A connection to the master.
    pub fn master(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.master).unwrap()
    }

    /// SOURCE_URL, TARGET_URL and STATE_DIR for the examples.
    pub fn env(&self) -> [(&'static str, &Path); 3] {
        [
            ("SOURCE_URL", self.master.as_path()),
            ("TARGET_URL", self.replica.as_path()),
            ("STATE_DIR", self.state.as_path()),
        ]
    }
}

/// Databases `erp` and `shop` on `pg`, each with `items (id, ver, body)`; `erp` holds `rows`
/// rows at version 1, and a trigger on `shop` logs every (id, version) written into its
/// `items` to `audit (n, id, ver)`: the proof of exactly-once and per-key order.
pub fn audited_versions(pg: &tidesync_testkit::Postgres, rows: i64) {
    pg.create_database("erp").unwrap();
    pg.create_database("shop").unwrap();
    pg.psql(
        "erp",
        &format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, ver integer NOT NULL, body text); \
             INSERT INTO items SELECT g, 1, 'v' || g FROM generate_series(1, {rows}) g;"
        ),
    )
    .unwrap();
    pg.psql(
        "shop",
        "CREATE TABLE items (id bigint PRIMARY KEY, ver integer NOT NULL, body text); \
         CREATE TABLE audit (n bigserial PRIMARY KEY, id bigint, ver integer); \
         CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN INSERT INTO audit (id, ver) VALUES (NEW.id, NEW.ver); RETURN NEW; END$$; \
         CREATE TRIGGER audit AFTER INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION audit();",
    )
    .unwrap();
}

/// The rows of `sql` on the SQLite database at `path` as `a|b|c` lines, the way `psql -At`
/// prints PostgreSQL's (integers and texts as they are, other values in Rust's debug form);
/// `None` while the database or table is not there yet.
pub fn sqlite_lines(path: &Path, sql: &str) -> Option<String> {
    let c = rusqlite::Connection::open(path).ok()?;
    let mut st = c.prepare(sql).ok()?;
    let n = st.column_count();
    let rows: Vec<String> = st
        .query_map([], |r| {
            let cols: Vec<String> = (0..n)
                .map(|i| {
                    r.get_ref(i).map(|v| match v {
                        rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                        rusqlite::types::ValueRef::Text(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                        other => format!("{other:?}"),
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(cols.join("|"))
        })
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    Some(rows.join("\n"))
}

/// A SQLite master `items (id, sku, name, price NUMERIC, qty, updated_at)` with 2,000 rows, in
/// WAL mode.
pub fn seed_master(master: &Path) {
    let c = rusqlite::Connection::open(master).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT, name TEXT, price NUMERIC, qty INTEGER, updated_at TEXT)",
        [],
    )
    .unwrap();
    for id in 1..=2000 {
        c.execute(
            "INSERT INTO items VALUES (?1, ?2, 'seed', '12.50', 1, '2026-11-23T00:00:00Z')",
            rusqlite::params![id, format!("SKU-{id}")],
        )
        .unwrap();
    }
}

/// How [`spawn_master_writer`] writes: the master holds ids up to `rows`; transactions of
/// `per_txn` changes, `pause` apart; randomness from `seed`.
pub struct Writes {
    pub rows: u64,
    pub per_txn: usize,
    pub pause: Duration,
    pub seed: u64,
}

/// Writes to a master `items (id, sku, qty, ..)` until `stop`: transactions of random updates
/// (7 in 10), inserts (2 in 10) and deletes.
pub fn spawn_master_writer(
    master: &Path,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    writes: Writes,
) -> std::thread::JoinHandle<()> {
    let (master, stop) = (master.to_path_buf(), stop.clone());
    std::thread::spawn(move || {
        let mut c = rusqlite::Connection::open(&master).unwrap();
        c.busy_timeout(Duration::from_secs(30)).unwrap();
        let mut rng = Rng(writes.seed);
        let mut next = writes.rows;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            for _ in 0..writes.per_txn {
                let id = 1 + rng.below(next) as i64;
                match rng.below(10) {
                    0..=6 => tx
                        .execute("UPDATE items SET qty = qty + 1 WHERE id = ?1", [id])
                        .unwrap(),
                    7 | 8 => {
                        next += 1;
                        tx.execute(
                            "INSERT INTO items (id, sku, qty) VALUES (?1, 'new', 0)",
                            [next as i64],
                        )
                        .unwrap()
                    }
                    _ => tx.execute("DELETE FROM items WHERE id = ?1", [id]).unwrap(),
                };
            }
            tx.commit().unwrap();
            std::thread::sleep(writes.pause);
        }
    })
}

/// The steady writes of the kill -9 tests.
pub const KILL_TEST_WRITES: Writes = Writes {
    rows: 2000,
    per_txn: 10,
    pause: Duration::from_millis(2),
    seed: 0x9E37_79B9_7F4A_7C15,
};

/// SQLite master (`examples/<example>`, a SQLite source) -> the target at `url`, whose rows
/// `target_rows` returns as `id|sku|qty` lines and whose `_tidesync_applied.seq`
/// `target_applied` returns: the snapshot, kill -9, restart, writes all along; the target
/// ends equal to the master. Returns the folder (its `run.log`) for further checks.
pub fn sqlite_master_survives_kill_9(
    example_name: &str,
    url: &str,
    target_rows: impl Fn() -> Option<String>,
    target_applied: impl Fn() -> Option<i64>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (master, state) = (dir.path().join("shop.db"), dir.path().join("state"));
    seed_master(&master);
    let env = [
        ("SOURCE_URL", master.as_path()),
        ("TARGET_URL", Path::new(url)),
        ("STATE_DIR", state.as_path()),
    ];
    let config = example(example_name);
    let args = ["run", config.to_str().unwrap()];
    let log = dir.path().join("run.log");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_master_writer(&master, &stop, KILL_TEST_WRITES);
    let mut child = spawn(&args, &env, &log);
    let first = wait_for(
        "the target to receive the snapshot",
        Duration::from_secs(60),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tidesync exited early with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            target_applied().filter(|s| *s >= 2000)
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = spawn(&args, &env, &log);
    wait_for(
        "progress after the restart",
        Duration::from_secs(60),
        || target_applied().filter(|s| *s > first),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let expected = sqlite_lines(&master, "SELECT id, sku, qty FROM items ORDER BY id").unwrap();
    wait_for(
        "the target to equal the master",
        Duration::from_secs(60),
        || (target_rows()?.trim_end() == expected).then_some(()),
    );
    stop_cleanly(&mut child, &log);
    dir
}

/// Waits for a run armed with a failpoint to abort (non-zero exit) after it said it streams
/// directly into its sink.
pub fn wait_for_direct_stream_failpoint(child: &mut Child, log: &Path) {
    let status = wait_for("the failpoint", Duration::from_secs(60), || {
        child.try_wait().unwrap()
    });
    assert!(!status.success(), "{}", log_text(log));
    assert!(
        log_text(log).contains("streaming directly into the sink"),
        "{}",
        log_text(log)
    );
}
