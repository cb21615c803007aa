//! tidesync's engine: the configuration, the pipeline runtime, and the wiring from a
//! configuration to running pipelines.

pub mod compare;
pub mod config;
pub mod demo;
pub mod rename;
pub mod repair;
mod retry;
pub mod runtime;
pub mod verify;

use std::sync::Arc;

use tidesync_capture::mysql::source::{MysqlLogOptions, MysqlLogSource};
use tidesync_capture::pg::source::{PgLogOptions, PgLogSource};
use tidesync_capture::sqlite::TriggerSource;
use tidesync_core::{Sink, Source};
use tidesync_deliver::postgres::PostgresSink;
use tidesync_deliver::sqlite::SqliteSink;
use tidesync_store::{SqliteStore, StoreError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError};
pub use retry::jitter;
pub use runtime::{Pipeline, PipelineError, PipelineOptions, PipelineStats};

pub use config::PipelineConfig;
use config::{DiffDb, SinkSpec, SourceSpec};
use rename::Renamer;

/// Every pipeline of a configuration, built and ready to run.
#[derive(Debug)]
pub struct Engine {
    pub store: SqliteStore,
    pub pipelines: Vec<Pipeline>,
}

/// Builds the source a configuration names.
fn build_source(
    config: &Config,
    pipeline: &PipelineConfig,
    store: &SqliteStore,
) -> Box<dyn Source> {
    match &config.sources[&pipeline.source].spec {
        SourceSpec::SqliteTrigger {
            path,
            tables,
            poll_interval,
        } => Box::new(TriggerSource::new(
            path,
            &pipeline.name,
            tables.clone(),
            *poll_interval,
        )),
        spec @ SourceSpec::PostgresLog { .. } => match pg_log_source(spec, &pipeline.name) {
            Some(source) => Box::new(source),
            None => unreachable!("a PostgresLog spec makes a PostgreSQL log source"),
        },
        SourceSpec::MysqlLog {
            url,
            tables,
            server_id,
            chunk_rows,
            linger,
            direct_copy: _,
        } => Box::new(MysqlLogSource::new(MysqlLogOptions {
            server_id: *server_id,
            chunk_rows: *chunk_rows,
            linger: *linger,
            ..MysqlLogOptions::new(url, &pipeline.name, tables.clone())
        })),
        SourceSpec::Diff {
            db,
            tables: _,
            streams,
            interval,
            chunk_rows,
            incremental,
        } => {
            use tidesync_capture::diff::{self, DiffOptions, DiffSource};
            let db = db.clone();
            let connect = move || -> Box<dyn diff::reader::QueryReader> {
                match &db {
                    DiffDb::Postgres { url } => Box::new(diff::pg::PgQueryReader::new(url)),
                    DiffDb::Mysql { url } => {
                        Box::new(diff::mysql::MysqlQueryReader::new(url.clone()))
                    }
                    DiffDb::Sqlite { path } => Box::new(diff::sqlite::SqliteQueryReader::new(path)),
                }
            };
            Box::new(DiffSource::new(
                DiffOptions {
                    pipeline: pipeline.name.clone(),
                    streams: streams.clone(),
                    interval: *interval,
                    chunk_rows: *chunk_rows,
                    incremental: *incremental,
                },
                connect,
                store.clone(),
            ))
        }
    }
}

/// The PostgreSQL log source of a pipeline whose source is one (also for `status`, which asks
/// it about its slot without running it).
fn pg_log_source(spec: &SourceSpec, pipeline: &str) -> Option<PgLogSource> {
    match spec {
        SourceSpec::PostgresLog {
            url,
            tables,
            publication,
            slot,
            chunk_rows,
            linger,
            direct_copy: _,
        } => Some(PgLogSource::new(PgLogOptions {
            publication: publication.clone(),
            slot: slot.clone(),
            chunk_rows: *chunk_rows,
            linger: *linger,
            ..PgLogOptions::new(url, pipeline, tables.clone())
        })),
        SourceSpec::SqliteTrigger { .. }
        | SourceSpec::MysqlLog { .. }
        | SourceSpec::Diff { .. } => None,
    }
}

fn build_sink(config: &Config, pipeline: &PipelineConfig, sink: &str) -> Box<dyn Sink> {
    match &config.sinks[sink].spec {
        SinkSpec::Sqlite {
            path,
            create_tables,
        } => Box::new(SqliteSink::new(path, &pipeline.name, sink, *create_tables)),
        SinkSpec::Postgres { url, create_tables } => {
            Box::new(PostgresSink::new(url, &pipeline.name, sink, *create_tables))
        }
        SinkSpec::Mysql { url, create_tables } => Box::new(
            tidesync_deliver::mysql::MysqlSink::new(url, &pipeline.name, sink, *create_tables),
        ),
        SinkSpec::Hub {
            url,
            token,
            ca_cert,
            instance,
        } => Box::new(
            tidesync_deliver::hub::HubSink::new(url, token, &pipeline.name)
                .with_ca_cert(ca_cert.clone())
                .with_instance(instance.clone()),
        ),
    }
}

/// What the source side holds for a pipeline, for `tidesync status`: for a PostgreSQL log
/// source its replication slot and the WAL it keeps on the server; nothing for trigger
/// sources (their change table is drained as the store commits). One `(label, text)` per
/// line.
pub async fn source_status(
    config: &Config,
    pipeline: &PipelineConfig,
    position: Option<&tidesync_core::Position>,
) -> Result<Vec<(String, String)>, tidesync_core::StageError> {
    let spec = &config.sources[&pipeline.source].spec;
    if let SourceSpec::MysqlLog { url, tables, .. } = spec {
        let source = MysqlLogSource::new(MysqlLogOptions::new(url, &pipeline.name, tables.clone()));
        let status = source.binlog_status(position).await?;
        let behind = match (status.behind, &status.pipeline_file) {
            (Some(bytes), _) => format!("{} of binlog not read yet", human_bytes(bytes as i64)),
            (None, Some(file)) => format!(
                "the pipeline's binlog file {file} is no longer on the server (purged): changes \
                 since are lost to capture; run `tidesync drop` for the pipeline and start it \
                 again for a new snapshot"
            ),
            (None, None) => "the pipeline has no binlog position yet".to_owned(),
        };
        return Ok(vec![
            (
                "binlog".to_owned(),
                format!(
                    "server at {}, {} kept in {} files from {}",
                    status.server,
                    human_bytes(status.kept_bytes as i64),
                    status.files,
                    status.oldest
                ),
            ),
            ("binlog behind".to_owned(), behind),
        ]);
    }
    let Some(mut source) = pg_log_source(spec, &pipeline.name) else {
        return Ok(Vec::new());
    };
    let text = match source.slot_lag().await? {
        Some((retained, confirmed)) => format!(
            "retains {} of WAL, confirmed up to {}",
            human_bytes(retained),
            confirmed.as_deref().unwrap_or("nothing yet")
        ),
        None => "does not exist (created on the first run)".to_owned(),
    };
    Ok(vec![(format!("slot {}", source.slot_name()), text)])
}

fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Removes a pipeline for good (`tidesync drop`): the source's capture objects (triggers,
/// change tables, later replication slots), each sink's record of applied seqs, and the
/// store's log, state, cursors and position for it. Target data stays. Run it while the
/// pipeline is stopped. Returns one line per thing removed.
pub async fn drop_pipeline(config: &Config, name: &str) -> Result<Vec<String>, PipelineError> {
    let Some(pipeline) = config.pipeline(name) else {
        return Err(PipelineError {
            pipeline: name.to_owned(),
            stage: "config".into(),
            source: tidesync_core::StageError::definite(format!(
                "no pipeline named {name} in {}",
                config.file.display()
            )),
        });
    };
    let failed = |stage: String| {
        move |source| PipelineError {
            pipeline: name.to_owned(),
            stage,
            source,
        }
    };
    let store =
        SqliteStore::open(&config.store.path).map_err(|e| failed("store".into())(e.into()))?;
    let mut done = build_source(config, pipeline, &store)
        .remove()
        .await
        .map_err(failed(format!("source {}", pipeline.source)))?;
    for sink in &pipeline.sinks {
        done.extend(
            build_sink(config, pipeline, sink)
                .forget()
                .await
                .map_err(failed(format!("sink {sink}")))?,
        );
    }
    let entries = store
        .drop_pipeline(name)
        .map_err(|e| failed("store".into())(e.into()))?;
    done.push(format!(
        "deleted pipeline {name} from the store {} ({entries} log entries)",
        config.store.path.display()
    ));
    Ok(done)
}

/// Builds one pipeline of `config` on `store`; `source`, when given, replaces the source the
/// configuration names (a hub's inbox of an agent's pushes).
pub fn build_pipeline(
    config: &Config,
    p: &PipelineConfig,
    store: &SqliteStore,
    source: Option<Box<dyn Source>>,
) -> Pipeline {
    let log: Arc<dyn tidesync_core::Log> = Arc::new(store.clone());
    let sinks = p
        .sinks
        .iter()
        .map(|s| (s.clone(), build_sink(config, p, s)))
        .collect();
    let source = source.unwrap_or_else(|| build_source(config, p, store));
    let mut pipeline = Pipeline::new(
        &p.name,
        &p.source,
        source,
        sinks,
        log,
        PipelineOptions {
            batch_size: p.batch_size,
            max_lag: p.max_lag,
            retention: config.store.retention,
            direct_stream: p.direct_stream,
            direct_copy: matches!(
                config.sources[&p.source].spec,
                SourceSpec::PostgresLog {
                    direct_copy: true,
                    ..
                } | SourceSpec::MysqlLog {
                    direct_copy: true,
                    ..
                }
            ),
            ..PipelineOptions::default()
        },
    );
    for sink in &p.sinks {
        if let Some(renamer) = Renamer::new(sink, &config.sinks[sink].renames) {
            pipeline.renames.insert(sink.clone(), renamer);
        }
    }
    pipeline
}

impl Engine {
    /// Opens the store and builds every pipeline. Connections to sources and sinks are made
    /// when the pipelines start.
    pub fn build(config: &Config) -> Result<Engine, StoreError> {
        let store = SqliteStore::open(&config.store.path)?;
        let pipelines = config
            .pipelines
            .iter()
            .map(|p| build_pipeline(config, p, &store, None))
            .collect();
        Ok(Engine { store, pipelines })
    }

    /// Runs every pipeline until `cancel` fires or one fails; a failure stops the others and
    /// is returned.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), PipelineError> {
        let mut tasks = JoinSet::new();
        for pipeline in self.pipelines {
            tasks.spawn(pipeline.run(cancel.child_token()));
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let result = joined.unwrap_or_else(|e| {
                Err(PipelineError {
                    pipeline: "?".into(),
                    stage: "runtime".into(),
                    source: tidesync_core::StageError::definite(format!("task panicked: {e}")),
                })
            });
            if let Err(e) = result {
                cancel.cancel();
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
