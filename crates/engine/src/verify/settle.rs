//! Waiting for a pipeline to deliver what its source held at some moment, so that a
//! difference that is only a change in flight is not reported.
//!
//! The source's position now (a SQLite trigger source: the last id its change table issued;
//! PostgreSQL: `pg_current_wal_lsn()`; MySQL/MariaDB: the end of the binary log, `SHOW MASTER
//! STATUS`, as a [`Position::Binlog`]) is where the store will stand once everything committed
//! so far is captured. [`Settle::wait`] polls the store (opened read-only, beside a running
//! `tidesync run`) until its position has passed that point, takes the log head at that
//! moment, and waits until the sink's cursor reaches that head: then every change the source
//! had committed is in the target. Only the sink being compared is waited for, so a broken
//! second sink does not hold up the comparison of the first.
//!
//! If that does not happen within the settle time (the pipeline is stopped, or far behind),
//! the wait gives up, remembers why ([`Settle::lag`]) and never waits again in this run: the
//! report then says the pipeline has not caught up instead of hanging.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tidesync_core::{LogStatus, Position, Seq};
use tidesync_store::{SqliteStore, StoreError};

use super::mysql::MysqlSide;
use super::postgres::{PgSide, wal_position};
use super::{Endpoint, VerifyError};

/// How often the store is polled while waiting.
const POLL: Duration = Duration::from_millis(25);

/// The store and source position of one pipeline.
#[derive(Debug)]
pub(crate) struct Settle {
    store_path: PathBuf,
    store: Option<SqliteStore>,
    pipeline: String,
    source: Endpoint,
    /// A connection to a PostgreSQL source, for its WAL position.
    pg: Option<PgSide>,
    /// A connection to a MySQL/MariaDB source, for its binary log position.
    mysql: Option<MysqlSide>,
    timeout: Duration,
    /// Why the last wait gave up; once set, no more waits.
    lag: Option<String>,
    /// The source is a `diff` source: its position is the start of a comparison run, and
    /// the pipeline has caught up with "now" once a run started after now is complete.
    diff: bool,
}

impl Settle {
    pub(crate) fn new(
        store_path: PathBuf,
        pipeline: &str,
        source: Endpoint,
        timeout: Duration,
    ) -> Self {
        Settle {
            store_path,
            store: None,
            pipeline: pipeline.to_owned(),
            source,
            pg: None,
            mysql: None,
            timeout,
            lag: None,
            diff: false,
        }
    }

    /// For a `diff` source (see the field).
    pub(crate) fn for_diff_source(mut self, diff: bool) -> Self {
        self.diff = diff;
        self
    }

    /// Why the pipeline was found not caught up, if it was.
    pub(crate) fn lag(&self) -> Option<&str> {
        self.lag.as_deref()
    }

    /// The source's position now; `None` when capture was never set up there.
    pub(crate) async fn position(&mut self) -> Result<Option<Position>, VerifyError> {
        if self.diff {
            return Ok(Some(Position::DiffRun {
                full_us: 0,
                marks: Vec::new(),
                started_us: tidesync_core::time::now_us(),
            }));
        }
        match &self.source {
            Endpoint::Sqlite { path } => {
                super::sqlite::trigger_position(path, &self.pipeline).await
            }
            Endpoint::Postgres { url } => {
                if self.pg.is_none() {
                    self.pg = Some(PgSide::connect(url).await?);
                }
                match &self.pg {
                    Some(pg) => wal_position(pg).await.map(Some),
                    None => Ok(None),
                }
            }
            Endpoint::Mysql { url } => {
                if self.mysql.is_none() {
                    self.mysql = Some(MysqlSide::connect(url).await?);
                }
                match &self.mysql {
                    Some(m) => m.binlog_position().await,
                    None => Ok(None),
                }
            }
        }
    }

    async fn status(&mut self) -> Result<Option<LogStatus>, VerifyError> {
        let path = self.store_path.clone();
        let store = match &self.store {
            Some(s) => s.clone(),
            None => {
                let opened = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || SqliteStore::open_read_only(&path)
                })
                .await
                .map_err(|e| VerifyError::Task(format!("a store task failed: {e}")))?;
                match opened {
                    Ok(s) => {
                        self.store = Some(s.clone());
                        s
                    }
                    Err(StoreError::Missing(_)) => return Ok(None),
                    Err(source) => return Err(VerifyError::Store { path, source }),
                }
            }
        };
        let pipeline = self.pipeline.clone();
        tokio::task::spawn_blocking(move || store.status_blocking(&pipeline))
            .await
            .map_err(|e| VerifyError::Task(format!("a store task failed: {e}")))?
            .map(Some)
            .map_err(|source| VerifyError::Store { path, source })
    }

    /// Waits until `sink` has applied every change the source had at `position`. Returns
    /// `false` (and records why) if that does not happen within the settle time, or at once
    /// after an earlier wait gave up.
    pub(crate) async fn wait(
        &mut self,
        sink: &str,
        position: Option<&Position>,
    ) -> Result<bool, VerifyError> {
        if self.lag.is_some() {
            return Ok(false);
        }
        let Some(position) = position else {
            self.lag = Some(format!(
                "pipeline {} has not started capturing: the source {} has no capture set up for it",
                self.pipeline,
                self.source.describe()
            ));
            return Ok(false);
        };
        let deadline = Instant::now() + self.timeout;
        // The log head when the store first showed the position passed.
        let mut head: Option<Seq> = None;
        loop {
            let Some(status) = self.status().await? else {
                self.lag = Some(format!(
                    "pipeline {} has never run: no store at {}",
                    self.pipeline,
                    self.store_path.display()
                ));
                return Ok(false);
            };
            let Some(stored) = &status.position else {
                self.lag = Some(format!(
                    "pipeline {} has not started: the store {} has no source position for it",
                    self.pipeline,
                    self.store_path.display()
                ));
                return Ok(false);
            };
            let passed = stored
                .partial_cmp_same_source(position)
                .is_some_and(|o| o.is_ge());
            if passed && head.is_none() {
                head = Some(status.head);
            }
            let cursor = status
                .cursors
                .iter()
                .find(|(c, _)| c == sink)
                .map(|(_, s)| *s);
            if let (Some(h), Some(c)) = (head, cursor)
                && c >= h
            {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                self.lag = Some(match head {
                    None => format!(
                        "pipeline {} has not caught up: store at {stored}, source at {position} (waited {} s)",
                        self.pipeline,
                        self.timeout.as_secs_f64()
                    ),
                    Some(h) => match cursor {
                        Some(c) => format!(
                            "pipeline {} has not caught up: sink {sink} at seq {c}, log head {h} (waited {} s)",
                            self.pipeline,
                            self.timeout.as_secs_f64()
                        ),
                        None => format!(
                            "pipeline {}: sink {sink} has not started (no cursor in the store)",
                            self.pipeline
                        ),
                    },
                });
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
