//! `tidesync agent --hub URL --token TOKEN [--dir DIR]`: runs next to a database with nothing
//! configured locally.
//!
//! 1. Fetches its settings from the hub (`GET /v1/agent/config`), retrying with backoff while
//!    the hub is unreachable; keeps the last good ones in `DIR/agent.json`, and starts from
//!    those when the hub cannot be reached.
//! 2. On a first start whose hub already holds rows of this agent (its folder was lost or
//!    moved): downloads the hub's rows of every stream into the store's fingerprints and
//!    starts its log after the hub's seq, so the first comparison sends only what differs
//!    and no seq is used twice. The download resumes where it stopped (`DIR/download.json`).
//! 3. Runs the configuration: the hub's `diff`/`incremental` source and the hub sink
//!    (`tidesync_deliver::hub`), which pushes the log's batches exactly once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidesync_core::codec::binary::{encode_row_parts, row_hash};
use tidesync_core::protocol::{
    self, AGENT_DIR_VAR, AGENT_TOKEN_VAR, AgentSettings, Applied, ErrorBody, HUB_URL_VAR, RowsPage,
};
use tidesync_core::with_causes;
use tidesync_core::{Seq, Value};
use tidesync_engine::Config;
use tidesync_store::SqliteStore;
use tokio_util::sync::CancellationToken;

/// Rows per page of the first-start download.
const DOWNLOAD_PAGE: usize = 5000;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent folder {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the hub {hub} refused this agent: {status} {code}: {message}")]
    Refused {
        hub: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("the hub {hub} answered something this agent does not understand: {message}")]
    Protocol { hub: String, message: String },
    #[error("the configuration the hub sent: {0}")]
    Config(#[from] tidesync_engine::ConfigError),
    #[error("store: {0}")]
    Store(#[from] tidesync_store::StoreError),
    #[error("the hub's rows of stream {stream}: {message}")]
    Download { stream: String, message: String },
    #[error(transparent)]
    Pipeline(#[from] tidesync_engine::PipelineError),
    #[error("stopped before the agent started")]
    Cancelled,
}

/// What `tidesync agent` is given.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The hub's base URL (`http://host:port`).
    pub hub: String,
    pub token: String,
    /// Where the agent keeps its store and the hub's last settings.
    pub dir: PathBuf,
    /// How often it asks the hub whether its settings changed (it restarts its pipeline with
    /// the new ones).
    pub config_poll: Duration,
    /// A PEM file of certificate authorities to trust for an `https://` hub, besides the
    /// public ones.
    pub ca_cert: Option<PathBuf>,
}

/// How a request to the hub failed.
enum Failure {
    /// Unreachable, timed out, 5xx: try again later.
    Retry(String),
    /// Refused for good (401, 403, other 4xx) or not understood.
    Fatal(AgentError),
}

struct Client {
    http: reqwest::Client,
    hub: String,
    token: String,
    /// This agent folder's instance name (`protocol::AGENT_INSTANCE`).
    instance: String,
}

impl Client {
    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, Failure> {
        let response = self
            .http
            .get(format!("{}{path}", self.hub))
            .bearer_auth(&self.token)
            .header(protocol::AGENT_INSTANCE, &self.instance)
            .send()
            .await
            .map_err(|e| Failure::Retry(format!("{}: {}", self.hub, with_causes(&e))))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::Retry(format!("{}: {}", self.hub, with_causes(&e))))?;
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(Failure::Retry(format!(
                "{} answered {status}: {}",
                self.hub,
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            )));
        }
        let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        if let Some(body) = body.as_ref().filter(|b| b.code == "other_instance") {
            // Another agent holds this token; it may be a dead one whose lease runs out.
            return Err(Failure::Retry(format!(
                "{} refused: {}",
                self.hub, body.error
            )));
        }
        if !status.is_success() {
            return Err(Failure::Fatal(AgentError::Refused {
                hub: self.hub.clone(),
                status: status.as_u16(),
                code: body.as_ref().map(|b| b.code.clone()).unwrap_or_default(),
                message: body.map(|b| b.error).unwrap_or_else(|| {
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
                }),
            }));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Fatal(AgentError::Protocol {
                hub: self.hub.clone(),
                message: format!("{path}: {e}"),
            })
        })
    }

    /// Tells the hub this instance stopped, so that another may write for the token at once
    /// (best effort: an unreachable hub lets the lease run out instead).
    async fn release(&self) {
        let sent = self
            .http
            .delete(format!("{}{}", self.hub, protocol::INSTANCE_PATH))
            .bearer_auth(&self.token)
            .header(protocol::AGENT_INSTANCE, &self.instance)
            .send()
            .await;
        if let Err(e) = sent {
            tracing::info!(error = %with_causes(&e), "could not tell the hub this agent stopped");
        }
    }

    /// [`Self::get`], retried with backoff (1 s doubling to 60 s, with jitter) until it
    /// succeeds, is refused, or `cancel` fires. `give_up` ends the retries early when it
    /// returns true after a failure (the caller has something to fall back on).
    async fn get_retrying<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        cancel: &CancellationToken,
        give_up: &dyn Fn(u32) -> bool,
    ) -> Result<Option<T>, AgentError> {
        let mut delay = FIRST_BACKOFF;
        let mut attempt = 1u32;
        loop {
            match self.get(path).await {
                Ok(v) => return Ok(Some(v)),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(why)) => {
                    if give_up(attempt) {
                        tracing::warn!(error = %why, "the hub is unreachable");
                        return Ok(None);
                    }
                    tracing::warn!(attempt, retry_in_s = delay.as_secs(), error = %why, "the hub is unreachable or busy; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Err(AgentError::Cancelled),
                        () = tokio::time::sleep(delay.mul_f64(tidesync_engine::jitter())) => {}
                    }
                    delay = (delay * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
            }
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The agent's settings: from the hub, or from the last ones kept in `DIR/agent.json` when
/// the hub cannot be reached (after a few tries).
async fn settings(
    client: &Client,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<AgentSettings, AgentError> {
    let cache = dir.join("agent.json");
    let cached: Option<AgentSettings> = std::fs::read(&cache)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let has_cache = cached.is_some();
    let fetched = client
        .get_retrying::<AgentSettings>(protocol::CONFIG_PATH, cancel, &|attempt| {
            has_cache && attempt >= 3
        })
        .await?;
    match (fetched, cached) {
        (Some(settings), _) => {
            save_settings(client, dir, &settings)?;
            tracing::info!(agent = %settings.agent, pipeline = %settings.pipeline, "settings from the hub");
            Ok(settings)
        }
        (None, Some(settings)) => {
            tracing::warn!(
                "starting with the settings kept in {} (the hub is unreachable; pushes wait for it)",
                cache.display()
            );
            Ok(settings)
        }
        (None, None) => Err(AgentError::Cancelled),
    }
}

/// Keeps `settings` in `DIR/agent.json` for a restart while the hub is unreachable.
fn save_settings(client: &Client, dir: &Path, settings: &AgentSettings) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(settings).map_err(|e| AgentError::Protocol {
        hub: client.hub.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join("agent.json"), &bytes).map_err(|source| AgentError::Dir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// What only the agent knows about its hub sinks: its `--ca-cert` and its instance name.
fn local_settings(config: &mut Config, ca: &Option<PathBuf>, name: &str) {
    for sink in config.sinks.values_mut() {
        if let tidesync_engine::config::SinkSpec::Hub {
            ca_cert, instance, ..
        } = &mut sink.spec
        {
            ca_cert.clone_from(ca);
            *instance = Some(name.to_owned());
        }
    }
}

/// The name of this agent folder (`DIR/instance`, made on first use): the host's name and a
/// random number, sent with every write so that the hub refuses a second agent that shares
/// the token (see `protocol::AGENT_INSTANCE`).
fn instance_name(dir: &Path) -> Result<String, AgentError> {
    let file = dir.join("instance");
    if let Ok(name) = std::fs::read_to_string(&file) {
        let name = name.trim();
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
    }
    use std::hash::{BuildHasher, Hasher};
    // A randomly seeded hasher over the clock and the process id: unique enough, no RNG crate.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let name = format!(
        "{}/{:016x}",
        if host.is_empty() { "host" } else { &host },
        hasher.finish()
    );
    write_atomic(&file, name.as_bytes()).map_err(|source| AgentError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    Ok(name)
}

/// `DIR/agent.toml`: the configuration the agent runs, with its folder and the hub's URL
/// filled in and the token left as `${TIDESYNC_AGENT_TOKEN}`, so that
/// `TIDESYNC_AGENT_TOKEN=... tidesync status DIR/agent.toml` shows the agent's log and cursor.
fn write_status_config(dir: &Path, hub: &str, settings: &AgentSettings) -> Result<(), AgentError> {
    let literal = |s: &str| s.replace("${", "$${");
    let text = settings
        .config
        .replace(
            &format!("${{{AGENT_DIR_VAR}}}"),
            &literal(&dir.to_string_lossy()),
        )
        .replace(&format!("${{{HUB_URL_VAR}}}"), &literal(hub));
    write_atomic(&dir.join("agent.toml"), text.as_bytes()).map_err(|source| AgentError::Dir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Where a first-start download got to.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Download {
    /// The hub's seq when the download started: the log continues after it.
    applied_through: u64,
    /// Streams downloaded completely.
    done: Vec<String>,
    /// The stream in progress and the cursor to continue after.
    stream: Option<String>,
    after: Option<String>,
}

/// The first-start download (see the module docs). Does nothing when the store has logged
/// anything for the pipeline or the hub holds nothing of this agent.
async fn download(
    client: &Client,
    config: &Config,
    store: &SqliteStore,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<(), AgentError> {
    let pipeline = &config.pipelines[0];
    let status = store.status_blocking(&pipeline.name)?;
    if status.position.is_some() || status.head != Seq::ZERO {
        return Ok(());
    }
    let progress_file = dir.join("download.json");
    let mut progress: Download = match std::fs::read(&progress_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            // Only progress: the download starts over (it replaces what it wrote).
            tracing::warn!(file = %progress_file.display(), error = %e, "unreadable download progress; starting the download over");
            Download::default()
        }),
        Err(_) => Download::default(),
    };
    if progress.applied_through == 0 {
        let never = |_| false;
        let Some(applied) = client
            .get_retrying::<Applied>(protocol::POSITION_PATH, cancel, &never)
            .await?
        else {
            return Err(AgentError::Cancelled);
        };
        if applied.applied_through == 0 {
            return Ok(());
        }
        progress.applied_through = applied.applied_through;
    }
    let tidesync_engine::config::SourceSpec::Diff { streams, .. } =
        &config.sources[&pipeline.source].spec
    else {
        return Ok(());
    };
    tracing::info!(
        hub_seq = progress.applied_through,
        "first start: downloading the hub's rows of this agent's streams"
    );
    for spec in streams {
        let stream = &spec.name;
        if progress.done.contains(stream) {
            continue;
        }
        let mut after = match &progress.stream {
            Some(s) if s == stream => progress.after.clone(),
            _ => None,
        };
        let mut rows_total = 0u64;
        loop {
            let mut path = format!(
                "{}?limit={DOWNLOAD_PAGE}",
                protocol::ROWS_PATH.replace("{stream}", stream)
            );
            if let Some(a) = &after {
                path.push_str("&after=");
                path.push_str(a);
            }
            let never = |_| false;
            let page = match client.get_retrying::<RowsPage>(&path, cancel, &never).await {
                Ok(Some(page)) => page,
                Ok(None) => return Err(AgentError::Cancelled),
                // The hub lost what it knew of this stream's shape (its schemas file): nothing
                // to download, the first comparison sends every row of it instead.
                Err(AgentError::Refused { code, message, .. }) if code == "no_schemas" => {
                    tracing::warn!(%stream, %message, "the hub has no rows of this stream to download");
                    break;
                }
                Err(e) => return Err(e),
            };
            if page.applied_through != progress.applied_through {
                return Err(AgentError::Download {
                    stream: stream.clone(),
                    message: format!(
                        "the hub's seq moved from {} to {} during the download: is another \
                         agent running with this token?",
                        progress.applied_through, page.applied_through
                    ),
                });
            }
            let mut seeds = Vec::with_capacity(page.rows.len());
            let mut buf = Vec::new();
            for keyed in &page.rows {
                let key_values: Vec<&Value> = keyed.key.0.iter().collect();
                let mut ord = Vec::with_capacity(16);
                tidesync_capture::diff::ord::encode(&mut ord, &page.key, &key_values).map_err(
                    |e| AgentError::Download {
                        stream: stream.clone(),
                        message: e.to_string(),
                    },
                )?;
                let (names, values): (Vec<String>, Vec<Value>) =
                    keyed.row.0.iter().cloned().unzip();
                buf.clear();
                encode_row_parts(&mut buf, &names, &values);
                seeds.push((ord, keyed.key.clone(), row_hash(&buf)));
            }
            let (s, p, n) = (store.clone(), pipeline.name.clone(), stream.clone());
            tokio::task::spawn_blocking(move || s.seed_fingerprints(&p, &n, &seeds))
                .await
                .map_err(|e| AgentError::Download {
                    stream: stream.clone(),
                    message: e.to_string(),
                })??;
            rows_total += page.rows.len() as u64;
            after = page.next;
            progress.stream = Some(stream.clone());
            progress.after = after.clone();
            if after.is_none() {
                progress.done.push(stream.clone());
                progress.stream = None;
            }
            save(&progress_file, &progress, dir)?;
            if after.is_none() {
                tracing::info!(%stream, rows = rows_total, "downloaded");
                break;
            }
            tracing::info!(%stream, rows = rows_total, "downloading");
        }
    }
    store.seed_head(&pipeline.name, Seq(progress.applied_through))?;
    let _ = std::fs::remove_file(&progress_file);
    Ok(())
}

fn save(file: &Path, progress: &Download, dir: &Path) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec(progress).map_err(|e| AgentError::Dir {
        dir: dir.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(file, &bytes).map_err(|source| AgentError::Dir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Runs the agent until `cancel` fires or it fails for good.
pub async fn run(options: AgentOptions, cancel: CancellationToken) -> Result<(), AgentError> {
    let dir = options.dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| AgentError::Dir {
        dir: dir.clone(),
        source,
    })?;
    let hub = options.hub.trim_end_matches('/').to_owned();
    let http =
        tidesync_deliver::hub::http_client(Duration::from_secs(60), options.ca_cert.as_deref())
            .map_err(|message| AgentError::Protocol {
                hub: hub.clone(),
                message: format!("building the HTTP client: {message}"),
            })?;
    let instance = instance_name(&dir)?;
    let client = Client {
        http,
        hub: hub.clone(),
        token: options.token.clone(),
        instance: instance.clone(),
    };
    let mut settings = settings(&client, &dir, &cancel).await?;
    let dir_text = dir.to_string_lossy().into_owned();
    let env = |name: &str| match name {
        AGENT_DIR_VAR => Some(dir_text.clone()),
        HUB_URL_VAR => Some(hub.clone()),
        AGENT_TOKEN_VAR => Some(options.token.clone()),
        _ => None,
    };
    let mut config = Config::from_str(&settings.config, &dir.join("agent.json"), &env)?;
    local_settings(&mut config, &options.ca_cert, &instance);
    loop {
        write_status_config(&dir, &hub, &settings)?;
        let store = SqliteStore::open(&config.store.path)?;
        download(&client, &config, &store, &dir, &cancel).await?;
        drop(store);
        let engine = tidesync_engine::Engine::build(&config)?;
        let run_cancel = cancel.child_token();
        let running = engine.run(run_cancel.clone());
        tokio::pin!(running);
        // Runs until stopped, or until the hub has other settings for this agent.
        let (new_settings, new_config) = loop {
            tokio::select! {
                result = &mut running => {
                    result?;
                    client.release().await;
                    return Ok(());
                }
                () = tokio::time::sleep(options.config_poll) => {}
            }
            match client.get::<AgentSettings>(protocol::CONFIG_PATH).await {
                Ok(new) if new.config != settings.config => {
                    match Config::from_str(&new.config, &dir.join("agent.json"), &env) {
                        Ok(mut parsed) => {
                            local_settings(&mut parsed, &options.ca_cert, &instance);
                            break (new, parsed);
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            "the hub sent settings this agent cannot use; keeping the current ones"
                        ),
                    }
                }
                Ok(_) => {}
                // Unreachable or refusing: the pipeline's own pushes retry or stop.
                Err(Failure::Retry(_)) => {}
                Err(Failure::Fatal(e)) => tracing::warn!(error = %e, "asking the hub for settings"),
            }
        };
        tracing::info!("the hub changed this agent's settings: restarting with them");
        run_cancel.cancel();
        (&mut running).await?;
        save_settings(&client, &dir, &new_settings)?;
        (settings, config) = (new_settings, new_config);
    }
}
