//! The hub's HTTP API (docs/protocol.md): agents fetch their settings, send their schemas,
//! ask for their position, push batches and download the hub's rows.
//!
//! Every request but `/v1/health` carries `Authorization: Bearer TOKEN`; the token is compared
//! with every agent's in constant time and never logged. Every error answer is JSON
//! ([`ErrorBody`]) with a status and a `code` naming the problem; a push with any problem is
//! refused whole, before anything of it is queued.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use tidesync_core::codec::compress::{self, Encoding};
use tidesync_core::codec::json::decode_batch;
use tidesync_core::protocol::{
    self, AgentSettings, Applied, ErrorBody, KeyedRow, RowsPage, Schemas,
};
use tidesync_core::{Batch, Key, Op, TableSchema};
use tidesync_store::SqliteStore;

use crate::inbox::{Inbox, PushError};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    applied_through: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            applied_through: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, error = %self.message, "answering {}", self.status);
        } else {
            tracing::info!(code = self.code, error = %self.message, "answering {}", self.status);
        }
        let body = ErrorBody {
            error: self.message,
            code: self.code.to_owned(),
            applied_through: self.applied_through,
        };
        json(self.status, &body)
    }
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from(bytes),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// One agent as the hub knows it.
#[derive(Debug)]
pub struct Agent {
    pub name: String,
    token: String,
    pub revoked: bool,
    /// The streams it may write (its source's tables).
    pub streams: BTreeSet<String>,
    pub settings: AgentSettings,
    pub inbox: Arc<Inbox>,
    /// Where its schemas are kept between restarts.
    pub schemas_file: PathBuf,
}

impl Agent {
    pub fn new(
        name: &str,
        token: &str,
        revoked: bool,
        streams: BTreeSet<String>,
        settings: AgentSettings,
        inbox: Arc<Inbox>,
        schemas_file: PathBuf,
    ) -> Agent {
        Agent {
            name: name.to_owned(),
            token: token.to_owned(),
            revoked,
            streams,
            settings,
            inbox,
            schemas_file,
        }
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct Hub {
    pub agents: Vec<Agent>,
    pub store: SqliteStore,
    /// The most bytes a request body may have, before and after decompression.
    pub max_body_bytes: usize,
    /// Fires when the hub stops: pushes waiting for the log are answered 503 at once, so the
    /// server's graceful shutdown does not wait for them.
    pub stopping: tokio_util::sync::CancellationToken,
}

/// The routes of the API.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route(protocol::HEALTH_PATH, get(health))
        .route(protocol::CONFIG_PATH, get(agent_config))
        .route(protocol::SCHEMAS_PATH, axum::routing::put(put_schemas))
        .route(protocol::POSITION_PATH, get(position))
        .route(protocol::BATCHES_PATH, post(push))
        .route(protocol::ROWS_PATH, get(rows))
        .route(protocol::INSTANCE_PATH, axum::routing::delete(release))
        // Bodies are read by `read_body`, which applies the limit itself.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(hub)
}

async fn health() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Equal bytes, in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses a write from another instance of the agent than the one writing (see
/// [`protocol::AGENT_INSTANCE`]); requests without the header are not checked. Returns the
/// seq the instance's pushes must start after (0: any).
fn claim(agent: &Agent, headers: &HeaderMap) -> Result<u64, ApiError> {
    let Some(instance) = headers
        .get(protocol::AGENT_INSTANCE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(0);
    };
    agent.inbox.claim(instance).map_err(|(other, ago)| {
        ApiError::new(
            StatusCode::CONFLICT,
            "other_instance",
            format!(
                "another agent ({other}) wrote for agent {} {} s ago; run one agent per token \
                 (this one may take over {} s after the other stopped)",
                agent.name,
                ago.as_secs(),
                crate::inbox::INSTANCE_LEASE.as_secs()
            ),
        )
    })
}

impl Hub {
    /// The agent the request's bearer token belongs to: 401 without a known token, 403 for a
    /// revoked one.
    fn agent(&self, headers: &HeaderMap) -> Result<&Agent, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no Authorization header (expected `Authorization: Bearer TOKEN`)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the Authorization header is not `Bearer TOKEN`",
                )
            })?;
        // Compare with every agent's token, so the time taken says nothing about which.
        let mut found = None;
        for agent in &self.agents {
            if constant_time_eq(agent.token.as_bytes(), token.as_bytes()) {
                found = Some(agent);
            }
        }
        let Some(agent) = found else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown token",
            ));
        };
        if agent.revoked {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "revoked",
                format!("the token of agent {} is revoked", agent.name),
            ));
        }
        Ok(agent)
    }
}

/// The body, decompressed as its `Content-Encoding` says, at most `limit` bytes either way,
/// and how many bytes it had on the wire.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(Vec<u8>, usize), ApiError> {
    let encoding = match headers.get(header::CONTENT_ENCODING) {
        None => Encoding::Identity,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(Encoding::from_header)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_encoding",
                    format!(
                        "Content-Encoding {:?} is not supported (expected zstd, gzip or none)",
                        String::from_utf8_lossy(value.as_bytes())
                    ),
                )
            })?,
    };
    let too_large = |what: &str| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the {what} body is over the hub's limit of {limit} bytes (hub.max_body_bytes)"
            ),
        )
    };
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large("request"))?;
    let wire = bytes.len();
    match encoding {
        Encoding::Identity => Ok((bytes.to_vec(), wire)),
        _ => compress::decompress(&bytes, encoding, limit)
            .map(|plain| (plain, wire))
            .map_err(|e| match e {
                tidesync_core::codec::DecodeError::TooLarge { .. } => too_large("decompressed"),
                other => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_encoding",
                    format!("the body is not {} data: {other}", encoding.as_str()),
                ),
            }),
    }
}

async fn agent_config(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    // An agent's settings poll keeps its instance's lease while it has nothing to push.
    match hub
        .agent(&headers)
        .and_then(|agent| claim(agent, &headers).map(|_| agent))
    {
        Ok(agent) => json(StatusCode::OK, &agent.settings),
        Err(e) => e.into_response(),
    }
}

async fn release(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let agent = match hub.agent(&headers) {
        Ok(agent) => agent,
        Err(e) => return e.into_response(),
    };
    if let Some(instance) = headers
        .get(protocol::AGENT_INSTANCE)
        .and_then(|v| v.to_str().ok())
    {
        agent.inbox.release(instance);
    }
    json(StatusCode::OK, &serde_json::json!({ "released": true }))
}

async fn position(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    match hub.agent(&headers) {
        Ok(agent) => json(
            StatusCode::OK,
            &Applied {
                applied_through: agent.inbox.durable(),
            },
        ),
        Err(e) => e.into_response(),
    }
}

async fn put_schemas(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Body) -> Response {
    match put_schemas_inner(&hub, &headers, body).await {
        Ok(n) => json(StatusCode::OK, &serde_json::json!({ "streams": n })),
        Err(e) => e.into_response(),
    }
}

async fn put_schemas_inner(hub: &Hub, headers: &HeaderMap, body: Body) -> Result<usize, ApiError> {
    let agent = hub.agent(headers)?;
    claim(agent, headers)?;
    let (bytes, _) = read_body(headers, body, hub.max_body_bytes).await?;
    let schemas: Schemas = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the schemas are not valid: {e}"),
        )
    })?;
    let mut seen = BTreeSet::new();
    for schema in &schemas.schemas {
        if !agent.streams.contains(&schema.name) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_stream",
                format!(
                    "agent {} may not write stream {:?} (its streams: {})",
                    agent.name,
                    schema.name,
                    agent.streams.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if !seen.insert(schema.name.clone()) {
            return Err(unprocessable(format!(
                "stream {} is listed twice",
                schema.name
            )));
        }
        if let Some(column) = schema
            .columns
            .iter()
            .find(|c| !plain_type_name(&c.type_name))
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_schema",
                format!(
                    "stream {}: column {:?} has type {:?}, not a plain type name (letters, \
                     digits, spaces and _, then at most one (digits) or (digits,digits) and \
                     []); cast it to text in the stream's fields",
                    schema.name, column.name, column.type_name
                ),
            ));
        }
        if schema.key.is_empty()
            || schema
                .key
                .iter()
                .any(|k| !schema.columns.iter().any(|c| &c.name == k))
        {
            return Err(unprocessable(format!(
                "stream {}: its key {:?} is empty or names a column it does not have",
                schema.name, schema.key
            )));
        }
    }
    let n = schemas.schemas.len();
    if agent.inbox.schemas().as_ref() != Some(&schemas.schemas) {
        write_schemas(&agent.schemas_file, &schemas)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!(
                        "cannot record the schemas at {}: {e}",
                        agent.schemas_file.display()
                    ),
                )
            })?;
        let had = agent.inbox.schemas().is_some();
        agent.inbox.set_schemas(schemas.schemas);
        tracing::info!(agent = %agent.name, streams = n, restart = had, "agent sent its schemas");
    }
    Ok(n)
}

/// Whether an agent's column type name is one a sink may put into `CREATE TABLE`: the
/// schemas come from outside the hub, so only the shape of a built-in type name passes
/// (`bigint`, `numeric(12,2)`, `timestamp with time zone`, `text[]`, `int unsigned`), nothing
/// that could end the column list or the statement. Empty is allowed (no declared type).
fn plain_type_name(name: &str) -> bool {
    if name.len() > 64 {
        return false;
    }
    let (head, rest) = match name.split_once('(') {
        None => (name, None),
        Some((head, rest)) => (head, Some(rest)),
    };
    let word = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_')
    };
    let tail_ok = |s: &str| {
        let s = s.strip_suffix("[]").unwrap_or(s);
        word(s)
    };
    match rest {
        None => tail_ok(head),
        Some(rest) => {
            let Some((args, tail)) = rest.split_once(')') else {
                return false;
            };
            word(head)
                && !head.trim().is_empty()
                && !args.is_empty()
                && args
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == ' ')
                && tail_ok(tail)
        }
    }
}

/// Writes the schemas file atomically (a temporary file, synced, renamed).
async fn write_schemas(path: &std::path::Path, schemas: &Schemas) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(schemas).map_err(std::io::Error::other)?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })
    .await
    .map_err(std::io::Error::other)?
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_batch", message)
}

async fn push(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Body) -> Response {
    match push_inner(&hub, &headers, body).await {
        Ok(applied_through) => json(StatusCode::OK, &Applied { applied_through }),
        Err(e) => e.into_response(),
    }
}

async fn push_inner(hub: &Hub, headers: &HeaderMap, body: Body) -> Result<u64, ApiError> {
    let agent = hub.agent(headers)?;
    let since = claim(agent, headers)?;
    let (bytes, wire_bytes) = read_body(headers, body, hub.max_body_bytes).await?;
    let json_bytes = bytes.len();
    let batch = decode_batch(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not a batch: {e}"),
        )
    })?;
    let Some(schemas) = agent.inbox.schemas() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_schemas",
            format!(
                "agent {} has not sent its streams' schemas yet (PUT {})",
                agent.name,
                protocol::SCHEMAS_PATH
            ),
        ));
    };
    check_batch(agent, &batch, &schemas)?;
    if batch.first_seq.0 <= since {
        return Err(ApiError {
            applied_through: Some(agent.inbox.durable()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "stale_instance",
                format!(
                    "another agent wrote for agent {} up to seq {since} while this one was \
                     away, and this one's log numbers seqs from {} on: its changes would be \
                     taken for that agent's. Stop it, delete its folder, and start it again: it \
                     then downloads the hub's rows and sends what differs",
                    agent.name, batch.first_seq
                ),
            )
        });
    }
    let key = headers
        .get(protocol::IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let (first, last, n) = (batch.first_seq, batch.last_seq, batch.entries.len());
    let pushed = tokio::select! {
        // A push that is durable is answered 200 even when the hub is stopping.
        biased;
        pushed = agent.inbox.push(batch) => pushed,
        () = hub.stopping.cancelled() => Err(PushError::Timeout),
    };
    match pushed {
        Ok(durable) => {
            // The byte counts are what `tidesync-bench hub-sync` sums.
            tracing::debug!(
                agent = %agent.name, %key, %first, %last, changes = n, durable, wire_bytes,
                json_bytes, "push taken"
            );
            Ok(durable)
        }
        Err(PushError::Gap { durable, first }) => Err(ApiError {
            applied_through: Some(durable),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "gap",
                format!(
                    "the batch starts at seq {first}, but the hub holds this agent's log only \
                     through {durable}: send from {} on",
                    durable + 1
                ),
            )
        }),
        Err(PushError::Timeout) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "the hub's log did not take the batch (within {} s, or the hub is stopping); \
                 retry later",
                crate::inbox::PUSH_WAIT.as_secs()
            ),
        )),
    }
}

/// Checks every change against the agent's rights and schemas: nothing of a batch with a
/// problem is taken.
fn check_batch(agent: &Agent, batch: &Batch, schemas: &[TableSchema]) -> Result<(), ApiError> {
    if batch.pipeline != agent.settings.pipeline {
        return Err(unprocessable(format!(
            "the batch is of pipeline {:?}; agent {} feeds {}",
            batch.pipeline, agent.name, agent.settings.pipeline
        )));
    }
    if batch.entries.is_empty() {
        return Err(unprocessable("the batch has no changes"));
    }
    let by_name: BTreeMap<&str, &TableSchema> =
        schemas.iter().map(|s| (s.name.as_str(), s)).collect();
    for (i, entry) in batch.entries.iter().enumerate() {
        let change = &entry.change;
        let at = format!("change {i} (seq {}, stream {:?})", entry.seq, change.stream);
        if !agent.streams.contains(&change.stream) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_stream",
                format!("{at}: agent {} may not write this stream", agent.name),
            ));
        }
        let Some(schema) = by_name.get(change.stream.as_str()) else {
            return Err(unprocessable(format!(
                "{at}: the agent sent no schema for this stream"
            )));
        };
        if change.key.0.len() != schema.key.len() {
            return Err(unprocessable(format!(
                "{at}: the key has {} values; the stream's key is ({})",
                change.key.0.len(),
                schema.key.join(", ")
            )));
        }
        let row = match change.op {
            Op::Insert | Op::Update | Op::Read => match &change.after {
                Some(row) => Some(row),
                None => {
                    return Err(unprocessable(format!(
                        "{at}: {:?} without a row",
                        change.op
                    )));
                }
            },
            Op::Delete => None,
            Op::Truncate | Op::Patch => {
                return Err(unprocessable(format!(
                    "{at}: {:?} is not taken from agents",
                    change.op
                )));
            }
        };
        let unknown = row.and_then(|row| {
            row.0
                .iter()
                .find(|(c, _)| !schema.columns.iter().any(|s| &s.name == c))
        });
        if let Some((column, _)) = unknown {
            return Err(unprocessable(format!(
                "{at}: column {column:?} is not in the stream's schema"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::plain_type_name;

    #[test]
    fn only_plain_type_names_pass() {
        for ok in [
            "",
            "bigint",
            "numeric(12,2)",
            "decimal(65, 30)",
            "timestamp with time zone",
            "text[]",
            "int unsigned",
            "varchar(20)",
            "double precision",
        ] {
            assert!(plain_type_name(ok), "{ok}");
        }
        for bad in [
            "int); DROP TABLE items; --",
            "int) INHERITS (items",
            "enum('a','b')",
            "int -- comment",
            "numeric(12,2))",
            "numeric((12)",
            "text/*x*/",
            "()",
        ] {
            assert!(!plain_type_name(bad), "{bad}");
        }
    }
}

#[derive(Debug, Deserialize)]
struct RowsQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// Rows per page of a download, at most.
const MAX_ROWS_PAGE: usize = 10_000;

async fn rows(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(stream): Path<String>,
    Query(query): Query<RowsQuery>,
) -> Response {
    match rows_inner(&hub, &headers, &stream, query).await {
        Ok(page) => json(StatusCode::OK, &page),
        Err(e) => e.into_response(),
    }
}

async fn rows_inner(
    hub: &Hub,
    headers: &HeaderMap,
    stream: &str,
    query: RowsQuery,
) -> Result<RowsPage, ApiError> {
    let agent = hub.agent(headers)?;
    if !agent.streams.contains(stream) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_stream",
            format!("agent {} has no stream {stream:?}", agent.name),
        ));
    }
    let after = query
        .after
        .as_deref()
        .map(|a| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(a))
        .transpose()
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("`after` is not a cursor this hub gave out: {e}"),
            )
        })?;
    let limit = query.limit.unwrap_or(1000).clamp(1, MAX_ROWS_PAGE);
    let key_columns = agent
        .inbox
        .schemas()
        .and_then(|schemas| schemas.into_iter().find(|s| s.name == stream))
        .map(|s| s.key)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_schemas",
                format!(
                    "agent {} has sent no schema for stream {stream:?} yet",
                    agent.name
                ),
            )
        })?;
    let applied_through = agent.inbox.durable();
    let store = hub.store.clone();
    let (pipeline, name) = (agent.settings.pipeline.clone(), stream.to_owned());
    let page = tokio::task::spawn_blocking(move || {
        store.current_page(&pipeline, &name, after.as_deref(), limit)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    let next = (page.len() == limit)
        .then(|| page.last())
        .flatten()
        .map(|(stored, _)| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(stored));
    let mut rows = Vec::with_capacity(page.len());
    for (_, row) in page {
        let key = key_columns
            .iter()
            .map(|k| row.0.iter().find(|(c, _)| c == k).map(|(_, v)| v.clone()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!(
                        "a stored row of {stream} lacks a key column of ({})",
                        key_columns.join(", ")
                    ),
                )
            })?;
        rows.push(KeyedRow { key: Key(key), row });
    }
    Ok(RowsPage {
        key: key_columns,
        rows,
        next,
        applied_through,
    })
}
