//! Waiting with a deadline while watching the processes that do the work: the tidesync child
//! (if it runs) and PostgreSQL's replication processes.
//!
//! Every wait of the PostgreSQL benchmarks polls a condition every [`POLL`] (no sleeps as
//! synchronisation) and, at each poll, samples memory from /proc: tidesync's `VmHWM` (see
//! [`crate::child`]), and for the peer, the walsenders of the source and the logical
//! replication workers (apply and table sync) of the target, found in `pg_stat_activity`.
//! For those backends `VmHWM` counts the pages of shared_buffers they touched, so the report
//! gives their private memory (`RssAnon`, sampled peak) as the comparable figure, and `VmHWM`
//! beside it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::client::Db;
use super::server::{DB, Servers};
use crate::child::{Memory, Tidesync, memory};

/// How often conditions are polled and memory is sampled.
pub const POLL: Duration = Duration::from_millis(20);
/// How often the list of replication processes is refreshed from pg_stat_activity.
const REFRESH: Duration = Duration::from_millis(200);

/// The peak memory seen of a group of processes, in kB (the largest single process).
#[derive(Debug, Clone, Copy, Default)]
pub struct Peak {
    pub hwm_kb: u64,
    pub anon_kb: u64,
    /// Whether any process of the group was sampled.
    pub seen: bool,
}

impl Peak {
    fn add(&mut self, m: Memory) {
        self.hwm_kb = self.hwm_kb.max(m.hwm_kb);
        self.anon_kb = self.anon_kb.max(m.anon_kb);
        self.seen = true;
    }

    /// `private X MB (VmHWM Y MB)`, or `n/a` if no process was seen.
    pub fn show(&self) -> String {
        if self.seen {
            format!(
                "{:.1} MB private (RssAnon), VmHWM {:.1} MB incl. shared buffers",
                self.anon_kb as f64 / 1024.0,
                self.hwm_kb as f64 / 1024.0
            )
        } else {
            "n/a (not seen)".to_owned()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Walsender,
    Worker,
}

/// Samples the memory of the source's walsenders and the target's logical replication
/// workers.
#[derive(Debug)]
pub struct Workers {
    source: Db,
    target: Db,
    pids: Vec<(u32, Role)>,
    refreshed: Option<Instant>,
    /// The target server's log, quoted when native replication reports errors.
    target_log: PathBuf,
    /// The source's walsenders (native subscription, table sync, tidesync's replication
    /// connection).
    pub walsender: Peak,
    /// The target's logical replication workers (apply and table sync): native only.
    pub worker: Peak,
}

impl Workers {
    /// Opens the two monitoring connections.
    pub async fn new(servers: &Servers) -> anyhow::Result<Workers> {
        Ok(Workers {
            source: Db::connect(&servers.source.url(DB), "source").await?,
            target: Db::connect(&servers.target.url(DB), "target").await?,
            pids: Vec::new(),
            refreshed: None,
            target_log: servers.target.log_path().to_owned(),
            walsender: Peak::default(),
            worker: Peak::default(),
        })
    }

    /// Forgets the peaks (a new run starts).
    pub fn reset(&mut self) {
        self.walsender = Peak::default();
        self.worker = Peak::default();
        self.refreshed = None;
    }

    async fn refresh(&mut self) -> anyhow::Result<()> {
        if self.refreshed.is_some_and(|t| t.elapsed() < REFRESH) {
            return Ok(());
        }
        self.refreshed = Some(Instant::now());
        let mut pids = Vec::new();
        for (db, role, filter) in [
            (&self.source, Role::Walsender, "backend_type = 'walsender'"),
            (
                &self.target,
                Role::Worker,
                "backend_type LIKE 'logical replication%worker'",
            ),
        ] {
            let rows = db
                .query(
                    &format!("SELECT pid FROM pg_stat_activity WHERE {filter}"),
                    &[],
                )
                .await
                .context("listing replication processes in pg_stat_activity")?;
            pids.extend(rows.iter().map(|r| (r.get::<_, i32>(0) as u32, role)));
        }
        self.pids = pids;
        // A native subscription whose apply or table sync worker fails is restarted by
        // PostgreSQL forever: fail at the first error instead of waiting for the deadline.
        let row = self
            .target
            .query_one(
                "SELECT coalesce(sum(apply_error_count + sync_error_count), 0)::int8 \
                 FROM pg_stat_subscription_stats",
                &[],
            )
            .await
            .context("reading pg_stat_subscription_stats")?;
        let errors: i64 = row.get(0);
        if errors > 0 {
            let log = std::fs::read_to_string(&self.target_log).unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("FATAL"))
                .collect();
            bail!(
                "native logical replication failed ({errors} errors in pg_stat_subscription_stats); \
                 the target's last errors ({}):\n{}",
                self.target_log.display(),
                lines[lines.len().saturating_sub(5)..].join("\n")
            );
        }
        Ok(())
    }

    /// Refreshes the process list if due, and samples each process. A process that has
    /// exited since (a table sync worker) is skipped: its last sample stands.
    pub async fn sample(&mut self) -> anyhow::Result<()> {
        self.refresh().await?;
        for &(pid, role) in &self.pids {
            if let Some(m) = memory(pid) {
                match role {
                    Role::Walsender => self.walsender.add(m),
                    Role::Worker => self.worker.add(m),
                }
            }
        }
        Ok(())
    }
}

/// What is watched during a wait: the replication processes, and tidesync when it runs.
#[derive(Debug)]
pub struct Monitor {
    pub workers: Workers,
    pub child: Option<Tidesync>,
    /// When the last native subscription was created (see
    /// [`super::native::create_subscription`]).
    pub last_subscription: Option<Instant>,
}

impl Monitor {
    /// Watches the servers' replication processes; no tidesync yet.
    pub async fn new(servers: &Servers) -> anyhow::Result<Monitor> {
        Ok(Monitor {
            workers: Workers::new(servers).await?,
            child: None,
            last_subscription: None,
        })
    }
}

impl Monitor {
    /// Fails if tidesync has exited; samples tidesync and the replication processes.
    pub async fn sample(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            child.check_running()?;
            child.sample()?;
        }
        self.workers.sample().await
    }

    /// Stops tidesync (SIGTERM, up to 60 s for a clean exit) and returns its peak memory and
    /// CPU time.
    pub fn stop_child(&mut self) -> anyhow::Result<Option<(u64, Duration)>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        // stop() blocks this worker thread while tidesync shuts down: let the runtime know.
        tokio::task::block_in_place(|| child.stop(Duration::from_secs(60)))?;
        Ok(Some((child.peak_bytes(), child.usage().cpu)))
    }
}

/// A deadline for one wait, and the clock of the step it belongs to.
#[derive(Debug)]
pub struct Deadline {
    what: String,
    started: Instant,
    timeout: Duration,
}

impl Deadline {
    pub fn new(what: impl Into<String>, timeout: Duration) -> Deadline {
        Deadline {
            what: what.into(),
            started: Instant::now(),
            timeout,
        }
    }

    /// Time since the deadline was set.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Samples (see [`Monitor::sample`]), fails past the deadline, then sleeps one [`POLL`].
    pub async fn tick(&self, monitor: &mut Monitor) -> anyhow::Result<()> {
        monitor.sample().await?;
        if self.elapsed() > self.timeout {
            let log = monitor
                .child
                .as_ref()
                .map(|c| format!(" (tidesync's log: {})", c.log().display()))
                .unwrap_or_default();
            bail!(
                "{}: not done within {} s{log}",
                self.what,
                self.timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
        Ok(())
    }
}
