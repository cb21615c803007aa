//! Checkpoints of the store's write-ahead log, on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside the commit that pushed the log past 1,000 pages:
//! the append that happens to cross it copies every page of the log back into the database
//! file and syncs it before it returns. For a batch of scattered updates (every one on a page
//! of its own in `current` and `fingerprints`) that was a quarter of the append's time, spent
//! while the source waited for the append (measured: 10 appends of 1,000 updates into a store
//! of a million rows, 0.44 s with the automatic checkpoint, 0.31 s without).
//!
//! Here the writer's commit hook only looks at the log's size: at [`Limits::start_at`] pages it
//! wakes this thread, which checkpoints (`PASSIVE`: it never blocks the writer nor a reader)
//! on a connection of its own while the writer goes on. Should the writer outrun it, a commit
//! that finds the log at [`Limits::wait_at`] pages or more waits for the round under way to
//! finish, so the log stays bounded whatever the write rate. Durability is unchanged: a commit
//! is in the log (synced, `synchronous=FULL`) before it returns; a checkpoint only moves
//! committed pages into the database file, and syncs it, as SQLite's own one does.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

/// When the log gets a checkpoint, in pages (4 KiB each by default).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Log size that wakes the checkpoint thread: SQLite's own automatic checkpoint size.
    pub start_at: i32,
    /// Log size at which a commit waits for the checkpoint under way (64 MiB of pages).
    pub wait_at: i32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            start_at: 1_000,
            wait_at: 16_000,
        }
    }
}

/// How long a commit waits for a checkpoint round before it goes on regardless (a reader
/// holding an old snapshot for that long can keep any checkpoint from emptying the log).
const WAIT_AT_MOST: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    /// A commit asked for a checkpoint since the last round started.
    wanted: bool,
    stop: bool,
    /// A round is under way (it may have started before the latest commit).
    running: bool,
    /// Checkpoint rounds finished.
    rounds: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when `wanted` or `stop` is set.
    wake: Condvar,
    /// Signalled when a round finishes.
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain flags and a counter: a panic elsewhere leaves it consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the writer after each commit with the log's size in pages.
    fn committed(&self, pages: i32, limits: Limits) {
        if pages < limits.start_at {
            return;
        }
        let mut state = self.lock();
        if state.stop {
            return;
        }
        state.wanted = true;
        self.wake.notify_one();
        if pages < limits.wait_at {
            return;
        }
        // The round under way may have started before this commit: then wait for the next.
        let target = state.rounds + if state.running { 2 } else { 1 };
        let deadline = Instant::now() + WAIT_AT_MOST;
        while state.rounds < target && !state.stop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    pages,
                    "the store's write-ahead log is not getting checkpointed (a long-running \
                     reader?); writing on"
                );
                return;
            }
            state = self
                .done
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The checkpoint thread of one store; stops (and is joined) when dropped.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the store at `path` for `writer`, whose commit hook it takes
    /// over (this replaces SQLite's automatic checkpoint on that connection).
    pub(crate) fn start(
        path: &Path,
        writer: &mut Connection,
        limits: Limits,
    ) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Its own checkpoints only: this connection writes nothing.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // Reading the mode opens the database file: until a connection has, it takes the
        // database for one without a log and its checkpoints do nothing.
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
                Some(format!("the database is in journal mode {mode}, not wal")),
            ));
        }
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("tidesync-checkpoint".into())
            .spawn({
                let shared = shared.clone();
                move || run(&conn, &shared)
            })
            .map_err(|e| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(format!("cannot start the checkpoint thread: {e}")),
                )
            })?;
        let hook = shared.clone();
        writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
            hook.committed(pages, limits);
            Ok(())
        }))?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// Checkpoint rounds finished so far.
    #[cfg(test)]
    pub(crate) fn rounds(&self) -> u64 {
        self.shared.lock().rounds
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        self.shared.done.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the store's checkpoint thread panicked");
        }
    }
}

fn run(conn: &Connection, shared: &Shared) {
    loop {
        {
            let mut state = shared.lock();
            while !state.wanted && !state.stop {
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.stop {
                return;
            }
            state.wanted = false;
            state.running = true;
        }
        let started = Instant::now();
        match conn.wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::PASSIVE) {
            Ok((log, copied)) => tracing::debug!(
                log,
                copied,
                ms = started.elapsed().as_millis() as u64,
                "checkpointed the store's write-ahead log"
            ),
            // Another process checkpointing the same store: it does the work.
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                tracing::debug!("the store's write-ahead log is being checkpointed elsewhere");
            }
            Err(e) => tracing::warn!("checkpointing the store's write-ahead log failed: {e}"),
        }
        {
            let mut state = shared.lock();
            state.running = false;
            state.rounds += 1;
        }
        shared.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A WAL database with table `t`, and its writer with a checkpointer of `limits`.
    fn open(dir: &Path, limits: Limits) -> (Connection, Checkpointer) {
        let path = dir.join("db");
        let mut writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
                 CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
            )
            .unwrap();
        let checkpointer = Checkpointer::start(&path, &mut writer, limits).unwrap();
        (writer, checkpointer)
    }

    /// Writes `pages` pages' worth of new rows in one transaction.
    fn write(writer: &mut Connection, first: i64, pages: i64) {
        let tx = writer.transaction().unwrap();
        for id in first..first + pages {
            tx.execute(
                "INSERT INTO t (id, v) VALUES (?1, zeroblob(3000))",
                rusqlite::params![id],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("db-wal")).map_or(0, |m| m.len())
    }

    #[test]
    fn the_log_stays_bounded_and_every_commit_reaches_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            start_at: 40,
            wait_at: 200,
        };
        let (mut writer, checkpointer) = open(dir.path(), limits);
        // 60 commits of ~50 pages: without checkpoints the log would hold ~3,000 pages.
        for round in 0..60 {
            write(&mut writer, round * 50, 50);
        }
        assert!(checkpointer.rounds() > 0, "no checkpoint ran");
        // At most `wait_at` pages, plus the commit that crossed it, plus the one that may
        // have been written while the last round ran.
        let bound = (limits.wait_at as u64 + 3 * 60) * 4096 + 4096;
        assert!(
            wal_bytes(dir.path()) <= bound,
            "log of {} bytes, bound {bound}",
            wal_bytes(dir.path())
        );
        drop(checkpointer);
        // Everything committed is readable, by a connection of another "process" too.
        let other = Connection::open(dir.path().join("db")).unwrap();
        let n: i64 = other
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3_000);
    }

    #[test]
    fn small_commits_below_the_start_size_do_not_wake_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, checkpointer) = open(
            dir.path(),
            Limits {
                start_at: 1_000,
                wait_at: 16_000,
            },
        );
        for round in 0..10 {
            write(&mut writer, round, 1);
        }
        assert_eq!(checkpointer.rounds(), 0);
    }

    #[test]
    fn a_commit_at_the_wait_size_waits_for_a_checkpoint_round() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, checkpointer) = open(
            dir.path(),
            Limits {
                start_at: 1,
                wait_at: 1,
            },
        );
        for round in 0..5 {
            write(&mut writer, round * 10, 10);
            // Waited for: a round finished after this commit, so its pages are copied.
            assert!(checkpointer.rounds() > round as u64);
        }
        let log: (i32, i32) = writer
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(log.0, log.1, "pages left uncopied: {log:?}");
    }
}
