//! The agent <-> hub HTTP protocol's shared pieces (docs/protocol.md): paths, headers and the
//! JSON bodies both sides exchange. The hub (`tidesync serve`) and the agent's hub sink are
//! written against these, so the two cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::TableSchema;

/// `GET`: the agent's settings ([`AgentSettings`]).
pub const CONFIG_PATH: &str = "/v1/agent/config";
/// `PUT`: the schemas of the agent's streams ([`Schemas`]), before its first push.
pub const SCHEMAS_PATH: &str = "/v1/agent/schemas";
/// `GET`: how far the hub holds the agent's log ([`Applied`]).
pub const POSITION_PATH: &str = "/v1/agent/position";
/// `POST`: one batch of the agent's log (JSON [`crate::Batch`], compressed).
pub const BATCHES_PATH: &str = "/v1/agent/batches";
/// `GET`: the hub's current rows of one stream of the agent, a page at a time ([`RowsPage`]);
/// `{stream}` is the stream name.
pub const ROWS_PATH: &str = "/v1/agent/streams/{stream}/rows";
/// `DELETE`: the agent instance named by [`AGENT_INSTANCE`] stopped; another may write for
/// the token at once.
pub const INSTANCE_PATH: &str = "/v1/agent/instance";
/// `GET`, no token: `{"status":"ok"}`.
pub const HEALTH_PATH: &str = "/v1/health";

/// The header naming a push uniquely: `AGENT:FIRST_SEQ-LAST_SEQ`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header naming the agent process's folder (`HOST/RANDOM`, made once per agent folder):
/// while one instance pushes for a token, another is refused (409 `other_instance`), so two
/// agents sharing a token cannot both number changes from the same seqs.
pub const AGENT_INSTANCE: &str = "tidesync-agent-instance";

/// The variables an agent's configuration text ([`AgentSettings::config`]) leaves for the
/// agent to fill: its state folder, the hub's URL as the agent reaches it, and its token
/// (kept out of every file).
pub const AGENT_DIR_VAR: &str = "TIDESYNC_AGENT_DIR";
pub const HUB_URL_VAR: &str = "TIDESYNC_HUB_URL";
pub const AGENT_TOKEN_VAR: &str = "TIDESYNC_AGENT_TOKEN";

/// `GET /v1/agent/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// The agent's name in the hub's configuration.
    pub agent: String,
    /// The pipeline its pushes feed on the hub (and the agent's own pipeline name).
    pub pipeline: String,
    /// A complete tidesync configuration for the agent, TOML: its store in
    /// `${TIDESYNC_AGENT_DIR}`, the source the hub configured for it (secrets already
    /// substituted by the hub), and one sink, the hub.
    pub config: String,
}

/// `PUT /v1/agent/schemas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schemas {
    pub schemas: Vec<TableSchema>,
}

/// `GET /v1/agent/position`, and the answer to a push (`200` and `409`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    /// The last seq of the agent's log that the hub holds durably (0: none yet).
    pub applied_through: u64,
}

/// `GET /v1/agent/streams/{stream}/rows?after=CURSOR&limit=N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowsPage {
    /// The stream's key fields, in key order.
    pub key: Vec<String>,
    /// The rows, in the hub's key order.
    pub rows: Vec<KeyedRow>,
    /// Pass as `after` for the next page; `None`: this was the last page.
    pub next: Option<String>,
    /// The agent seq these rows reflect (the hub's [`Applied::applied_through`] when the
    /// download started is what the agent's log continues after).
    pub applied_through: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyedRow {
    pub key: crate::Key,
    pub row: crate::Row,
}

/// Every error answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people; never contains a token.
    pub error: String,
    /// A stable word for programs: `unauthorized`, `revoked`, `forbidden_stream`, `bad_json`,
    /// `bad_encoding`, `unsupported_encoding`, `too_large`, `bad_batch`, `bad_schema`, `gap`,
    /// `no_schemas`, `other_instance`, `stale_instance`, `unavailable`, `unknown_stream`,
    /// `bad_request`, `internal`.
    pub code: String,
    /// With `gap`: where the agent must resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_through: Option<u64>,
}
