//! The peers built into PostgreSQL: native logical replication (a publication on the source, a
//! subscription on the target) and `pg_recvlogical` decoding a slot with pgoutput.
//!
//! The subscription is created with PostgreSQL's defaults (text format, no streaming of large
//! transactions, one table sync worker for the one table) except `synchronous_commit`, which is
//! a benchmark option (default `off`, PostgreSQL's own default for subscriptions).
//!
//! `pg_recvlogical` measures the raw decode rate of a backlog: a slot is created right before a
//! workload, and once the workload is over (and native apply has finished, so nothing else
//! competes for the two cores) `pg_recvlogical --start --endpos=END -f /dev/null` decodes the
//! slot with pgoutput (proto_version 1, the publication) and exits when it reaches the WAL
//! position read right after the workload's last commit. Its run time is the ceiling of any
//! consumer of the slot: it does nothing with what it receives.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::NativeOptions;
use super::client::{Db, Lsn};
use super::server::{Servers, conninfo};
use super::watch::{Deadline, Monitor, POLL, Peak};
use crate::child::{log_tail, memory};

/// The publication of `items` on the source (native replication and pg_recvlogical).
pub const PUBLICATION: &str = "bench_pub";
/// The subscription on the target.
pub const SUBSCRIPTION: &str = "bench_sub";

/// `CREATE PUBLICATION bench_pub FOR TABLE items` on the source.
pub async fn create_publication(source: &Db) -> anyhow::Result<()> {
    source
        .batch_execute(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE items"))
        .await
        .context("creating the publication on the source")
}

/// Drops the publication (so the tidesync side starts from a source without the peer's
/// objects).
pub async fn drop_publication(source: &Db) -> anyhow::Result<()> {
    source
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {PUBLICATION}"))
        .await
        .context("dropping the publication on the source")
}

/// `CREATE SUBSCRIPTION` on the target (it creates its slot on the source before it returns;
/// the launcher then starts the apply worker, which starts the table sync).
///
/// PostgreSQL's launcher starts apply workers at most once per `wal_retrieve_retry_interval`
/// (5 s): a subscription created sooner after the previous one waits for the rest of that
/// interval before its worker starts. A user creates one subscription, so the benchmark waits
/// out the interval BEFORE it starts the clock, instead of measuring that pause.
pub async fn create_subscription(
    target: &Db,
    servers: &Servers,
    native: &NativeOptions,
    monitor: &mut Monitor,
) -> anyhow::Result<()> {
    let sync = match native.native_synchronous_commit.as_str() {
        s @ ("off" | "local" | "on" | "remote_write" | "remote_apply") => s,
        other => bail!("--native-synchronous-commit {other}: expected off, local or on"),
    };
    wait_launcher(target, monitor).await?;
    monitor.last_subscription = Some(Instant::now());
    target
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION {SUBSCRIPTION} CONNECTION '{}' PUBLICATION {PUBLICATION} \
             WITH (copy_data = true, synchronous_commit = '{sync}')",
            conninfo(&servers.source)
        ))
        .await
        .context("creating the subscription on the target")
}

/// Waits until the launcher may start another apply worker: `wal_retrieve_retry_interval`
/// (+ 0.5 s) after the last subscription was created or enabled (see
/// [`create_subscription`]).
pub async fn wait_launcher(target: &Db, monitor: &mut Monitor) -> anyhow::Result<()> {
    let Some(last) = monitor.last_subscription else {
        return Ok(());
    };
    let row = target
        .query_one(
            "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_retrieve_retry_interval'",
            &[],
        )
        .await
        .context("reading wal_retrieve_retry_interval")?;
    let interval = Duration::from_millis(row.get::<_, i64>(0).max(0) as u64);
    let wait = (interval + Duration::from_millis(500)).saturating_sub(last.elapsed());
    if !wait.is_zero() {
        eprintln!(
            "  (waiting {:.1} s: the launcher starts a subscription's worker at most once per wal_retrieve_retry_interval)",
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
    }
    Ok(())
}

/// `ALTER SUBSCRIPTION ... DISABLE`, and waits until its apply worker has exited (changes
/// then pile up in its slot).
pub async fn disable_subscription(target: &Db, monitor: &mut Monitor) -> anyhow::Result<()> {
    target
        .batch_execute(&format!("ALTER SUBSCRIPTION {SUBSCRIPTION} DISABLE"))
        .await
        .context("disabling the subscription")?;
    let deadline = Deadline::new("the apply worker to exit", Duration::from_secs(60));
    loop {
        let row = target
            .query_one(
                "SELECT count(*) FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL",
                &[&SUBSCRIPTION],
            )
            .await
            .context("reading pg_stat_subscription")?;
        if row.get::<_, i64>(0) == 0 {
            return Ok(());
        }
        deadline.tick(monitor).await?;
    }
}

/// `ALTER SUBSCRIPTION ... ENABLE` (call [`wait_launcher`] first).
pub async fn enable_subscription(target: &Db, monitor: &mut Monitor) -> anyhow::Result<()> {
    monitor.last_subscription = Some(Instant::now());
    target
        .batch_execute(&format!("ALTER SUBSCRIPTION {SUBSCRIPTION} ENABLE"))
        .await
        .context("enabling the subscription")
}

/// The table's state in `pg_subscription_rel` (i, d, f, s, r), None before the subscription
/// lists it.
pub async fn sync_state(target: &Db) -> anyhow::Result<Option<char>> {
    let row = target
        .query_opt(
            "SELECT r.srsubstate::text FROM pg_subscription_rel AS r \
             JOIN pg_subscription AS s ON s.oid = r.srsubid \
             WHERE s.subname = $1 AND r.srrelid = 'items'::regclass",
            &[&SUBSCRIPTION],
        )
        .await
        .context("reading pg_subscription_rel")?;
    Ok(row.and_then(|r| r.get::<_, String>(0).chars().next()))
}

/// Waits until the table's sync state is `r` (ready); returns each state seen and when it was
/// first seen (from the deadline's start).
pub async fn wait_ready(
    target: &Db,
    monitor: &mut Monitor,
    deadline: &Deadline,
) -> anyhow::Result<Vec<(char, Duration)>> {
    let mut states: Vec<(char, Duration)> = Vec::new();
    loop {
        let state = sync_state(target).await?;
        let now = deadline.elapsed();
        if let Some(s) = state
            && states.last().is_none_or(|(last, _)| *last != s)
        {
            states.push((s, now));
        }
        if state == Some('r') {
            return Ok(states);
        }
        deadline.tick(monitor).await?;
    }
}

/// `i 0.01 s, d 0.5 s, ...`: the states and when they were first seen.
pub fn show_states(states: &[(char, Duration)]) -> String {
    let all: Vec<String> = states
        .iter()
        .map(|(s, t)| format!("{s} {:.2} s", t.as_secs_f64()))
        .collect();
    all.join(", ")
}

/// Drops the subscription (and with it its slot on the source).
pub async fn drop_subscription(target: &Db) -> anyhow::Result<()> {
    target
        .batch_execute(&format!("DROP SUBSCRIPTION IF EXISTS {SUBSCRIPTION}"))
        .await
        .context("dropping the subscription on the target")
}

/// Drops every inactive replication slot of the source (those a stopped tidesync left), so a
/// peer run after tidesync's does not keep WAL and catalog rows for them.
pub async fn drop_idle_slots(source: &Db) -> anyhow::Result<()> {
    source
        .batch_execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active",
        )
        .await
        .context("dropping idle replication slots on the source")
}

/// Creates a pgoutput slot on the source; returns its consistent point.
pub async fn create_slot(source: &Db, slot: &str) -> anyhow::Result<Lsn> {
    let row = source
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .with_context(|| format!("creating the replication slot {slot}"))?;
    Lsn::parse(row.get(0))
}

/// Drops a slot.
pub async fn drop_slot(source: &Db, slot: &str) -> anyhow::Result<()> {
    source
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .with_context(|| format!("dropping the replication slot {slot}"))
        .map(drop)
}

/// What decoding a backlog with pg_recvlogical cost.
#[derive(Debug, Clone, Copy)]
pub struct Decode {
    /// From the spawn of pg_recvlogical to its exit at the end position.
    pub time: Duration,
    /// WAL bytes decoded (the slot's consistent point to the end position).
    pub wal_bytes: u64,
    /// pg_recvlogical's own peak memory (VmHWM), kB.
    pub client_hwm_kb: u64,
    /// The walsender that decoded the slot.
    pub walsender: Peak,
}

/// Runs pg_recvlogical on `slot` until `end` and checks the slot was confirmed up to there.
pub async fn decode(
    servers: &Servers,
    source: &Db,
    dir: &Path,
    slot: &str,
    (start, end): (Lsn, Lsn),
    timeout: Duration,
) -> anyhow::Result<Decode> {
    let program = servers.bin_dir().join("pg_recvlogical");
    let log = dir.join(format!("pg_recvlogical-{slot}.log"));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new(&program);
    for (key, _) in std::env::vars_os() {
        // A developer's PGSSLMODE or PGOPTIONS must not change what is measured.
        if key.to_string_lossy().starts_with("PG") {
            command.env_remove(&key);
        }
    }
    command
        .arg("--dbname")
        .arg(conninfo(&servers.source))
        .args(["--slot", slot, "--start", "--no-loop"])
        .args(["--option", "proto_version=1"])
        .arg("--option")
        .arg(format!("publication_names={PUBLICATION}"))
        // No fsync of the output (it is /dev/null anyway).
        .args(["--fsync-interval", "0", "--file", "/dev/null"])
        .arg(format!("--endpos={end}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let pid = child.id();
    let mut client_hwm_kb = 0;
    let mut walsender = Peak::default();
    let mut walsender_pid: Option<u32> = None;
    let status = loop {
        if let Some(m) = memory(pid) {
            client_hwm_kb = client_hwm_kb.max(m.hwm_kb);
        }
        if walsender_pid.is_none() {
            let row = source
                .query_opt(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
                    &[&slot],
                )
                .await
                .context("finding the walsender of pg_recvlogical")?;
            walsender_pid = row
                .and_then(|r| r.get::<_, Option<i32>>(0))
                .map(|p| p as u32);
        }
        if let Some(m) = walsender_pid.and_then(memory) {
            walsender.hwm_kb = walsender.hwm_kb.max(m.hwm_kb);
            walsender.anon_kb = walsender.anon_kb.max(m.anon_kb);
            walsender.seen = true;
        }
        if let Some(status) = child.try_wait().context("waiting for pg_recvlogical")? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "pg_recvlogical did not reach {end} within {} s; its log ({}):\n{}",
                timeout.as_secs(),
                log.display(),
                log_tail(&log, 20)
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let time = started.elapsed();
    ensure!(
        status.success(),
        "pg_recvlogical failed ({status}); its log ({}):\n{}",
        log.display(),
        log_tail(&log, 20)
    );
    // It exits at the end position only after it has received everything before it; the
    // feedback it sends on the way out moves the slot's confirmed position there.
    let row = source
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .context("reading the slot's confirmed position")?;
    let confirmed = Lsn::parse(row.get(0))?;
    ensure!(
        confirmed >= end,
        "pg_recvlogical exited but the slot {slot} is confirmed only up to {confirmed}, before \
         the end of the workload at {end}; its log ({}):\n{}",
        log.display(),
        log_tail(&log, 20)
    );
    Ok(Decode {
        time,
        wal_bytes: end.bytes_since(start),
        client_hwm_kb,
        walsender,
    })
}
