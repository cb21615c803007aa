//! The hub and the agent of pattern P1 (docs/protocol.md).
//!
//! - [`serve`] (`tidesync serve CONFIG`): the HTTP API ([`server`]) and the configuration's
//!   pipelines. A pipeline an agent feeds gets that agent's [`inbox`] as its source: pushes
//!   go into the hub's log like any captured batch, and its sinks apply them exactly once.
//! - [`agent`] (`tidesync agent --hub URL --token TOKEN`): fetches its configuration from the
//!   hub and runs it: the `diff`/`incremental` source the hub configured, and the hub sink.

pub mod agent;
pub mod inbox;
pub mod server;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tidesync_core::protocol::{AGENT_DIR_VAR, AGENT_TOKEN_VAR, AgentSettings, HUB_URL_VAR};
use tidesync_core::{Position, StageError};
use tidesync_engine::config::AgentConfig;
use tidesync_engine::{Config, PipelineError};
use tidesync_store::SqliteStore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::inbox::Inbox;
use crate::server::{Agent, Hub};

/// Why the hub stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0} has no [hub] table: `tidesync serve` needs `[hub] listen = \"HOST:PORT\"`")]
    NoHub(PathBuf),
    #[error("opening the store: {0}")]
    Store(#[from] tidesync_store::StoreError),
    #[error("hub: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hub: the HTTP server stopped: {0}")]
    Server(std::io::Error),
    #[error("hub: agent {agent}: {message}")]
    Agent { agent: String, message: String },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// The agent's configuration text: its store, the source the hub configured for it, the hub
/// as its one sink. `${TIDESYNC_AGENT_DIR}`, `${TIDESYNC_HUB_URL}` and
/// `${TIDESYNC_AGENT_TOKEN}` are left for the agent to fill.
pub fn agent_config_text(config: &Config, agent: &AgentConfig) -> String {
    let pipeline = config
        .pipeline(&agent.pipeline)
        .unwrap_or_else(|| unreachable!("a resolved agent names a pipeline of its config"));
    format!(
        "# The configuration of agent {name}, written by the hub from {file}.\n\
         [store]\n\
         path = \"${{{AGENT_DIR_VAR}}}/store.db\"\n\n\
         {source}\n\
         [sinks.hub]\n\
         url = \"${{{HUB_URL_VAR}}}\"\n\
         token = \"${{{AGENT_TOKEN_VAR}}}\"\n\n\
         [pipelines.{pipeline_name}]\n\
         source = {source_name:?}\n\
         sinks = [\"hub\"]\n\
         batch_size = {batch_size}\n\
         max_lag = {max_lag}\n",
        name = agent.name,
        file = config.file.display(),
        source = agent.source_toml,
        pipeline_name = pipeline.name,
        source_name = pipeline.source,
        batch_size = pipeline.batch_size,
        max_lag = pipeline.max_lag,
    )
}

/// Where the hub keeps the schemas an agent sent (next to the store).
pub fn schemas_file(store: &Path, pipeline: &str) -> PathBuf {
    let mut name = store
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".agent-{pipeline}.json"));
    store.with_file_name(name)
}

/// Builds the hub's shared state: one inbox per agent, at the position its store holds.
fn hub_state(
    config: &Config,
    store: &SqliteStore,
    stopping: CancellationToken,
) -> Result<Hub, ServeError> {
    let hub = config
        .hub
        .as_ref()
        .ok_or_else(|| ServeError::NoHub(config.file.clone()))?;
    let mut agents = Vec::new();
    for agent in config.agents.values() {
        let failed = |message: String| ServeError::Agent {
            agent: agent.name.clone(),
            message,
        };
        let durable = match store.status_blocking(&agent.pipeline)?.position {
            None => 0,
            Some(Position::Agent { seq }) => seq,
            Some(other) => {
                return Err(failed(format!(
                    "the store holds {other} for pipeline {}, which is not an agent's position \
                     (was it run with `tidesync run`? `tidesync drop` it first)",
                    agent.pipeline
                )));
            }
        };
        let file = schemas_file(&config.store.path, &agent.pipeline);
        let schemas = match std::fs::read(&file) {
            Ok(bytes) => Some(
                serde_json::from_slice::<tidesync_core::protocol::Schemas>(&bytes)
                    .map_err(|e| failed(format!("{} is unreadable: {e}", file.display())))?
                    .schemas,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(failed(format!("cannot read {}: {e}", file.display()))),
        };
        let pipeline = config
            .pipeline(&agent.pipeline)
            .unwrap_or_else(|| unreachable!("a resolved agent names a pipeline of its config"));
        let streams: BTreeSet<String> = config.sources[&pipeline.source]
            .spec
            .tables()
            .iter()
            .cloned()
            .collect();
        let settings = AgentSettings {
            agent: agent.name.clone(),
            pipeline: agent.pipeline.clone(),
            config: agent_config_text(config, agent),
        };
        agents.push(Agent::new(
            &agent.name,
            &agent.token,
            agent.revoked,
            streams,
            settings,
            Arc::new(Inbox::new(&agent.pipeline, durable, schemas)),
            file,
        ));
    }
    Ok(Hub {
        agents,
        store: store.clone(),
        max_body_bytes: hub.max_body_bytes,
        stopping,
    })
}

/// Runs the hub until `cancel` fires or something fails for good: the HTTP API on
/// `[hub] listen`, every pipeline of the configuration, agents' pipelines fed by their pushes.
/// `on_listening` is told the bound address (useful with port 0).
pub async fn serve(
    config: &Config,
    cancel: CancellationToken,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServeError> {
    let store = SqliteStore::open(&config.store.path)?;
    let hub = Arc::new(hub_state(config, &store, cancel.clone())?);
    let listen = config
        .hub
        .as_ref()
        .map(|h| h.listen.clone())
        .ok_or_else(|| ServeError::NoHub(config.file.clone()))?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: listen.clone(),
        source,
    })?;
    tracing::info!(%local, agents = hub.agents.len(), "hub listening");
    on_listening(local);

    let mut tasks: JoinSet<Result<(), ServeError>> = JoinSet::new();
    let app = server::router(hub.clone());
    let server_cancel = cancel.clone();
    tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { server_cancel.cancelled().await })
            .await
            .map_err(ServeError::Server)
    });
    for pipeline in &config.pipelines {
        let inbox = hub
            .agents
            .iter()
            .find(|a| a.settings.pipeline == pipeline.name)
            .map(|a| a.inbox.clone());
        let (config, store, cancel) = (config.clone(), store.clone(), cancel.child_token());
        let name = pipeline.name.clone();
        tasks.spawn(async move {
            let Some(pipeline) = config.pipeline(&name) else {
                return Ok(());
            };
            match inbox {
                None => tidesync_engine::build_pipeline(&config, pipeline, &store, None)
                    .run(cancel)
                    .await
                    .map_err(ServeError::from),
                Some(inbox) => supervise(&config, pipeline, &store, inbox, cancel).await,
            }
        });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(ServeError::Pipeline(PipelineError {
                pipeline: "?".into(),
                stage: "hub".into(),
                source: StageError::definite(format!("task panicked: {e}")),
            }))
        });
        if let Err(e) = result {
            cancel.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// How long an agent's pipeline that failed waits before it starts again.
const RESTART_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs an agent's pipeline, restarting it when the agent sends other schemas (a stream
/// added or changed on the hub's side), so that its sinks open with them.
///
/// An agent's data comes from outside: when its pipeline fails (e.g. a value its target
/// column refuses), the error is logged and the pipeline starts again after
/// [`RESTART_AFTER_FAILURE`], while the hub goes on serving the other agents. The agent's
/// pushes keep landing in the hub's log until `max_lag`, then wait (503).
async fn supervise(
    config: &Config,
    pipeline: &tidesync_engine::PipelineConfig,
    store: &SqliteStore,
    inbox: Arc<Inbox>,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    loop {
        let mut opened_with = inbox.schemas();
        let run_cancel = cancel.child_token();
        let source = Box::new(inbox.source());
        let run = tidesync_engine::build_pipeline(config, pipeline, store, Some(source))
            .run(run_cancel.clone());
        tokio::pin!(run);
        let result = loop {
            let changed = inbox.schemas_changed.notified();
            tokio::select! {
                result = &mut run => break Some(result),
                () = changed => {
                    let now = inbox.schemas();
                    if opened_with.is_none() {
                        // A new agent's first schemas: the waiting source opens with them.
                        opened_with = now;
                    } else if now != opened_with {
                        break None;
                    }
                }
            }
        };
        let result = match result {
            Some(result) => result,
            None => {
                tracing::info!(pipeline = %pipeline.name, "the agent's schemas changed: restarting the pipeline");
                run_cancel.cancel();
                (&mut run).await
            }
        };
        match result {
            Ok(()) if cancel.is_cancelled() => return Ok(()),
            Ok(()) => {}
            Err(e) => {
                tracing::error!(
                    pipeline = %pipeline.name,
                    error = %tidesync_core::with_causes(&e),
                    retry_in_s = RESTART_AFTER_FAILURE.as_secs(),
                    "the agent's pipeline stopped; the hub serves the other agents meanwhile"
                );
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(RESTART_AFTER_FAILURE) => {}
                }
            }
        }
    }
}
