//! The replication connection of PostgreSQL log capture: slot commands, `START_REPLICATION`,
//! the stream of decoded pgoutput messages, and confirming LSNs back to the server.
//!
//! This is the only module that touches the `pgwire-replication` crate (young, one maintainer,
//! breaking changes between minor versions), so it can be replaced without the rest of
//! capture noticing. What it adds on top of the crate:
//!
//! - a typestate: [`PgReplication`] is a *gated* session (commands may run, nothing streams)
//!   and [`PgReplication::start`] consumes it into a [`PgReplicationStream`];
//! - decoding with our own [`pgoutput::decode`] (the crate hands over raw bytes), with errors
//!   naming the LSN;
//! - errors sorted into definite and transient, with messages that name the setting to change.
//!
//! Constraints of the crate that shape this API:
//!
//! - The slot, the publication and the start LSN are fixed when the session is opened
//!   (`ReplicationConfig`); `START_REPLICATION` cannot take new ones. So they are given to
//!   [`PgReplication::connect`] in a [`StreamSpec`], not to `start`. A slot created on the same
//!   session is started with [`StreamSpec::start_lsn`] `= None`: the server then starts at the
//!   slot's `confirmed_flush_lsn`, which for a new slot *is* its consistent point.
//! - The crate consumes pgoutput `Begin`, `Commit` and `Message` itself and hands over their
//!   fields, not their bytes or XLogData header. So a `Begin` has no `wal_start`
//!   ([`WalMessage::wal_start`] is `None`); a `Commit`'s is its `end_lsn` and a `Message`'s its
//!   `lsn`, which is what PostgreSQL writes there (`logical.c`: `write_location`). The crate
//!   does not check the commit flags byte and reads a message prefix lossily as UTF-8.
//! - Standby status updates carry one LSN as write, flush and apply position. The crate sends
//!   one within [`StreamSpec::status_interval`] of a [`PgReplicationStream::confirm`] and
//!   answers keepalives that ask for a reply on its own, also while we are not reading.
//! - Server errors arrive flattened to `"message (SQLSTATE xxxxx)"`; the SQLSTATE is parsed
//!   back out of that text to classify them (details and hints are lost).
//!
//! Session settings: the connection sets `DateStyle=ISO`, `IntervalStyle=postgres`,
//! `extra_float_digits=3`, `bytea_output=hex` and `TimeZone=UTC` through the startup `options`
//! parameter, because the walsender formats column values with them and
//! [`super::text::text_to_value`] expects exactly those forms.
//!
//! TLS is not compiled in (the crate's `tls-rustls` feature would bring a second rustls
//! configuration); a URL asking for it is refused.

use std::time::Duration;

use pgwire_replication::{
    PgWireError, QueryRow, ReplicationClient, ReplicationConfig, ReplicationEvent,
};

use super::pgoutput::{
    self, Lsn, MessageKind, PgOutputError, PgOutputMessage, Problem, Xid, pg_micros_to_unix_micros,
};

/// Startup `options`: the session settings the text forms in [`super::text`] assume.
pub(crate) const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 \
     -c bytea_output=hex -c TimeZone=UTC";

/// How long connecting, authenticating and short commands may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// `application_name` of the session, shown in `pg_stat_replication`.
const APPLICATION_NAME: &str = "tidesync";

/// What a session streams: fixed when it is opened (see the module docs for why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// The logical replication slot (pgoutput); lowercase letters, digits and `_`, at most 63
    /// bytes, as PostgreSQL requires.
    pub slot: String,
    /// The publication whose tables are streamed.
    pub publication: String,
    /// Where to start: `None` is the slot's `confirmed_flush_lsn` (for a slot created on this
    /// session, its consistent point); `Some` is a position we stored durably, which is also
    /// what the session reports as flushed until [`PgReplicationStream::confirm`] raises it.
    pub start_lsn: Option<Lsn>,
    /// What the session reports as flushed until [`PgReplicationStream::confirm`] raises it;
    /// `None`: `start_lsn`. A consumer that restarts a stream after changes it has handed on
    /// but not yet made durable starts at the end of those and acks only what is durable.
    pub ack_lsn: Option<Lsn>,
    /// At most this long passes between a confirm and the standby status update carrying it.
    pub status_interval: Duration,
}

impl StreamSpec {
    /// A spec starting at the slot's `confirmed_flush_lsn`, reporting confirmed positions
    /// within a second.
    pub fn new(slot: impl Into<String>, publication: impl Into<String>) -> Self {
        Self {
            slot: slot.into(),
            publication: publication.into(),
            start_lsn: None,
            ack_lsn: None,
            status_interval: Duration::from_secs(1),
        }
    }
}

/// The `IDENTIFY_SYSTEM` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (decimal text).
    pub system_id: String,
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The session's database.
    pub dbname: Option<String>,
}

/// A slot created with an exported snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The first position the slot streams: changes committed after it.
    pub consistent_point: Lsn,
    /// For `SET TRANSACTION SNAPSHOT` on another connection. Valid only until this session
    /// runs another command or starts streaming.
    pub snapshot_name: String,
}

/// One decoded pgoutput message with where it sits in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalMessage {
    /// The XLogData `dataStart`; `None` for `Begin`, whose header the crate does not pass on.
    pub wal_start: Option<Lsn>,
    pub message: PgOutputMessage,
}

/// Why a replication operation failed. [`ReplicationError::is_transient`] tells whether a
/// retry with backoff can help; everything else is definite (fix the setup or the data).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicationError {
    #[error("invalid PostgreSQL URL: {reason}")]
    InvalidUrl { reason: String },
    #[error("invalid {what} name `{name}`: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("cannot reach PostgreSQL at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("timed out after {timeout_ms} ms waiting for {what}")]
    Timeout { what: &'static str, timeout_ms: u64 },
    #[error("the replication stream ended: the server or the session closed it")]
    StreamEnded,
    #[error(
        "wal_level is {actual}; set wal_level = logical in postgresql.conf and restart PostgreSQL"
    )]
    WalLevelNotLogical { actual: String },
    #[error(
        "authentication of user `{user}` failed: {message}; check the user and password in the source URL"
    )]
    Authentication { user: String, message: String },
    #[error(
        "user `{user}` may not open a replication connection: {message}; grant it with `ALTER ROLE {user} REPLICATION` (and LOGIN)"
    )]
    NoReplicationPrivilege { user: String, message: String },
    #[error(
        "the server refused the replication connection of user `{user}`: {message}; add a pg_hba.conf line for database `{dbname}` (a `replication` line is not needed for logical replication) and reload"
    )]
    HbaRejected {
        user: String,
        dbname: String,
        message: String,
    },
    #[error(
        "all replication slots are in use: {message}; drop unused slots (see pg_replication_slots) or raise max_replication_slots in postgresql.conf and restart PostgreSQL"
    )]
    SlotsExhausted { message: String },
    #[error(
        "too many replication connections: {message}; raise max_wal_senders in postgresql.conf and restart PostgreSQL, or stop other replication clients"
    )]
    WalSendersExhausted { message: String },
    #[error(
        "replication slot `{slot}` already exists; drop it (SELECT pg_drop_replication_slot('{slot}')) or choose another slot name"
    )]
    SlotExists { slot: String },
    #[error("replication slot `{slot}` does not exist: {message}")]
    SlotMissing { slot: String, message: String },
    #[error("replication slot `{slot}` is in use by another session: {message}")]
    SlotInUse { slot: String, message: String },
    #[error("{command} failed: {message}{}", sqlstate_suffix(.sqlstate))]
    Server {
        command: &'static str,
        sqlstate: Option<String>,
        message: String,
    },
    #[error("{command}: unexpected reply: {reason}")]
    BadReply {
        command: &'static str,
        reason: String,
    },
    #[error("replication protocol error: {message}")]
    Protocol { message: String },
    #[error("replication client failed: {message}")]
    Client { message: String },
    #[error("pgoutput message at LSN {} did not decode: {source}", show_lsn(*.wal_start))]
    Decode {
        wal_start: Option<Lsn>,
        source: PgOutputError,
    },
}

fn sqlstate_suffix(sqlstate: &Option<String>) -> String {
    sqlstate
        .as_deref()
        .map(|code| format!(" (SQLSTATE {code})"))
        .unwrap_or_default()
}

fn show_lsn(lsn: Option<Lsn>) -> String {
    lsn.map_or_else(|| "(not sent)".to_owned(), |lsn| lsn.to_string())
}

impl ReplicationError {
    /// Whether retrying (reconnect with backoff) can succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Unreachable { .. }
            | ReplicationError::Timeout { .. }
            | ReplicationError::StreamEnded
            | ReplicationError::WalSendersExhausted { .. }
            | ReplicationError::SlotInUse { .. }
            | ReplicationError::Client { .. } => true,
            ReplicationError::Server { sqlstate, .. } => sqlstate_is_transient(sqlstate.as_deref()),
            ReplicationError::InvalidUrl { .. }
            | ReplicationError::InvalidName { .. }
            | ReplicationError::WalLevelNotLogical { .. }
            | ReplicationError::Authentication { .. }
            | ReplicationError::NoReplicationPrivilege { .. }
            | ReplicationError::HbaRejected { .. }
            | ReplicationError::SlotsExhausted { .. }
            | ReplicationError::SlotExists { .. }
            | ReplicationError::SlotMissing { .. }
            | ReplicationError::BadReply { .. }
            | ReplicationError::Protocol { .. }
            | ReplicationError::Decode { .. } => false,
        }
    }

    /// Not [`ReplicationError::is_transient`]: stop and say why.
    pub fn is_definite(&self) -> bool {
        !self.is_transient()
    }
}

/// Connection trouble, server shutdown or restart, resource shortage: may pass by itself.
/// An unknown SQLSTATE counts as transient, as unknown errors do.
fn sqlstate_is_transient(sqlstate: Option<&str>) -> bool {
    let Some(code) = sqlstate else { return true };
    let class = code.get(..2).unwrap_or(code);
    // 08 connection exception, 53 insufficient resources, 57 operator intervention
    // (admin shutdown, crash shutdown, cannot connect now), 58 system error (I/O), XX internal,
    // 40 transaction rollback.
    matches!(class, "08" | "53" | "57" | "58" | "XX" | "40")
}

/// Where and as whom we connect, from the URL. `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
struct ConnInfo {
    user: String,
    password: String,
    host: String,
    port: u16,
    dbname: String,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("user", &self.user)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .finish_non_exhaustive()
    }
}

impl ConnInfo {
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Checks that `url` is one a replication session can use (see [`parse_url`]), so a source
/// refuses it before doing anything else rather than after its regular connection, which
/// accepts more (e.g. `sslmode=require`), has already worked.
pub fn check_url(url: &str) -> Result<(), ReplicationError> {
    parse_url(url).map(drop)
}

/// Parses `postgres://user[:password]@host[:port]/dbname` (or `postgresql://`), with
/// percent-encoded user, password and database. The only query parameter accepted is
/// `sslmode=disable` (no TLS is compiled in).
fn parse_url(url: &str) -> Result<ConnInfo, ReplicationError> {
    let invalid = |reason: &str| ReplicationError::InvalidUrl {
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| invalid("expected it to start with postgres:// or postgresql://"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    for param in query.into_iter().flat_map(|q| q.split('&')) {
        if param != "sslmode=disable" {
            return Err(ReplicationError::InvalidUrl {
                reason: format!(
                    "unsupported parameter `{param}`: only sslmode=disable is accepted, the replication connection has no TLS"
                ),
            });
        }
    }
    let (authority, dbname) = rest
        .split_once('/')
        .ok_or_else(|| invalid("no database: expected /dbname after the host"))?;
    let (userinfo, hostport) = authority
        .rsplit_once('@')
        .ok_or_else(|| invalid("no user: expected user@ before the host"))?;
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, password),
        None => (userinfo, ""),
    };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("unterminated [ in the host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None => 5432,
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| ReplicationError::InvalidUrl {
                reason: format!("port `{port}` is not a number from 1 to 65535"),
            })?,
    };
    let info = ConnInfo {
        user: percent_decode(user, "user")?,
        password: percent_decode(password, "password")?,
        host: host.to_owned(),
        port,
        dbname: percent_decode(dbname, "database")?,
    };
    if info.user.is_empty() || info.host.is_empty() || info.dbname.is_empty() || port == 0 {
        return Err(invalid(
            "user, host, port and database must not be empty or zero",
        ));
    }
    Ok(info)
}

fn percent_decode(text: &str, what: &str) -> Result<String, ReplicationError> {
    let bad = || ReplicationError::InvalidUrl {
        reason: format!("bad percent-encoding or UTF-8 in the {what}"),
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// PostgreSQL's rule for slot names (`ReplicationSlotValidateName`).
fn validate_slot_name(name: &str) -> Result<(), ReplicationError> {
    let invalid = |reason| ReplicationError::InvalidName {
        what: "replication slot",
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 63 {
        return Err(invalid("must be 1 to 63 bytes long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(
            "may contain only lowercase letters, digits and underscores",
        ));
    }
    Ok(())
}

/// A slot name as a quoted identifier for replication commands (a valid name can start with
/// a digit, which the replication grammar does not lex as an identifier unquoted).
fn quote_slot(name: &str) -> String {
    format!("\"{name}\"")
}

/// The publication as an element of the `publication_names` list, which PostgreSQL splits
/// like identifiers (`SplitIdentifierString`): quoted, so case, commas and spaces survive.
/// The crate then escapes single quotes for the option's string literal.
fn quote_publication(name: &str) -> Result<String, ReplicationError> {
    if name.is_empty() || name.contains('\0') {
        return Err(ReplicationError::InvalidName {
            what: "publication",
            name: name.to_owned(),
            reason: "must be non-empty and contain no NUL",
        });
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

fn to_wire(lsn: Lsn) -> pgwire_replication::Lsn {
    pgwire_replication::Lsn(lsn.0)
}

fn from_wire(lsn: pgwire_replication::Lsn) -> Lsn {
    Lsn(lsn.0)
}

/// Splits the crate's `"message (SQLSTATE xxxxx)"` back into message and code.
fn split_sqlstate(text: &str) -> (&str, Option<&str>) {
    if let Some(head) = text.strip_suffix(')')
        && let Some((message, code)) = head.rsplit_once(" (SQLSTATE ")
        && code.len() == 5
        && code.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return (message, Some(code));
    }
    (text, None)
}

/// Classifies an error of the crate for `command`, run by `info.user` (for messages) on
/// `slot` (if the command concerns one).
fn classify(
    error: PgWireError,
    command: &'static str,
    info: &ConnInfo,
    slot: Option<&str>,
) -> ReplicationError {
    let user = || info.user.clone();
    match error {
        PgWireError::Io(io) => ReplicationError::Unreachable {
            addr: info.addr(),
            message: io.to_string(),
        },
        PgWireError::Auth(message) => ReplicationError::Authentication {
            user: user(),
            message,
        },
        PgWireError::Server(text) => {
            let (message, sqlstate) = split_sqlstate(&text);
            let message = message.to_owned();
            let slot = || slot.unwrap_or("?").to_owned();
            match sqlstate {
                // invalid_password, invalid_authorization_specification (wrong user)
                Some("28P01") => ReplicationError::Authentication {
                    user: user(),
                    message,
                },
                // pg_hba.conf has no line (or a reject line) for this connection.
                Some("28000") if message.contains("pg_hba.conf") => ReplicationError::HbaRejected {
                    user: user(),
                    dbname: info.dbname.clone(),
                    message,
                },
                Some("28000") => ReplicationError::Authentication {
                    user: user(),
                    message,
                },
                // "must be superuser or replication role to start walsender"
                Some("42501") => ReplicationError::NoReplicationPrivilege {
                    user: user(),
                    message,
                },
                // "all replication slots are in use"
                Some("53400") => ReplicationError::SlotsExhausted { message },
                // "number of requested standby connections exceeds max_wal_senders"
                Some("53300") if message.contains("max_wal_senders") => {
                    ReplicationError::WalSendersExhausted { message }
                }
                Some("42710") => ReplicationError::SlotExists { slot: slot() },
                Some("42704") if message.contains("replication slot") => {
                    ReplicationError::SlotMissing {
                        slot: slot(),
                        message,
                    }
                }
                Some("55006") => ReplicationError::SlotInUse {
                    slot: slot(),
                    message,
                },
                // "logical decoding requires wal_level >= logical"
                Some("55000") if message.contains("wal_level") => {
                    ReplicationError::WalLevelNotLogical {
                        actual: "below logical".to_owned(),
                    }
                }
                sqlstate => ReplicationError::Server {
                    command,
                    sqlstate: sqlstate.map(str::to_owned),
                    message,
                },
            }
        }
        PgWireError::Protocol(message) => ReplicationError::Protocol { message },
        PgWireError::MessageTooLarge { .. } => ReplicationError::Protocol {
            message: error.to_string(),
        },
        other => ReplicationError::Client {
            message: other.to_string(),
        },
    }
}

async fn with_timeout<T>(
    what: &'static str,
    future: impl Future<Output = Result<T, ReplicationError>>,
) -> Result<T, ReplicationError> {
    tokio::time::timeout(COMMAND_TIMEOUT, future)
        .await
        .unwrap_or(Err(ReplicationError::Timeout {
            what,
            timeout_ms: u64::try_from(COMMAND_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        }))
}

/// A replication session (`replication=database`) that has not started streaming: slot
/// commands run on it. Dropping it ends the session (and with it an exported snapshot).
pub struct PgReplication {
    client: ReplicationClient,
    info: ConnInfo,
    spec: StreamSpec,
}

impl PgReplication {
    /// Opens a replication session to `url` for `spec` and checks `wal_level = logical`, so a
    /// misconfigured server is reported here rather than at slot creation.
    pub async fn connect(url: &str, spec: StreamSpec) -> Result<Self, ReplicationError> {
        let info = parse_url(url)?;
        validate_slot_name(&spec.slot)?;
        let publication = quote_publication(&spec.publication)?;
        let mut config = ReplicationConfig::new(
            info.host.clone(),
            info.user.clone(),
            info.password.clone(),
            info.dbname.clone(),
            quote_slot(&spec.slot),
            publication,
        )
        .with_port(info.port)
        .with_options(SESSION_OPTIONS)
        .with_application_name(APPLICATION_NAME)
        .with_status_interval(spec.status_interval);
        if let Some(lsn) = spec.start_lsn {
            config = config.with_start_lsn(to_wire(lsn));
        }
        if let Some(lsn) = spec.ack_lsn {
            config = config.with_ack_lsn(to_wire(lsn));
        }
        let client = ReplicationClient::connect_gated(config)
            .await
            .map_err(|e| classify(e, "connect", &info, None))?;
        let mut session = Self { client, info, spec };
        let wal_level = session.show("wal_level").await?;
        if wal_level != "logical" {
            return Err(ReplicationError::WalLevelNotLogical { actual: wal_level });
        }
        Ok(session)
    }

    /// The spec this session was opened for.
    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    async fn query(
        &mut self,
        command: &'static str,
        sql: &str,
        slot: Option<&str>,
    ) -> Result<Vec<QueryRow>, ReplicationError> {
        self.client
            .simple_query(sql)
            .await
            .map_err(|e| classify(e, command, &self.info, slot))
    }

    /// `SHOW name` (allowed on replication sessions since PostgreSQL 10).
    async fn show(&mut self, name: &'static str) -> Result<String, ReplicationError> {
        with_timeout("SHOW", async {
            let rows = self.query("SHOW", &format!("SHOW {name}"), None).await?;
            let row = single_row("SHOW", rows, 1)?;
            text_column("SHOW", &row, 0)
        })
        .await
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        const COMMAND: &str = "IDENTIFY_SYSTEM";
        with_timeout(COMMAND, async {
            let rows = self.query(COMMAND, COMMAND, None).await?;
            let row = single_row(COMMAND, rows, 4)?;
            let timeline = text_column(COMMAND, &row, 1)?;
            let timeline = timeline.parse().map_err(|_| ReplicationError::BadReply {
                command: COMMAND,
                reason: format!("timeline `{timeline}` is not a number"),
            })?;
            Ok(SystemIdentity {
                system_id: text_column(COMMAND, &row, 0)?,
                timeline,
                xlogpos: lsn_column(COMMAND, &row, 2)?,
                dbname: text_column(COMMAND, &row, 3).ok(),
            })
        })
        .await
    }

    /// `CREATE_REPLICATION_SLOT <spec.slot> LOGICAL pgoutput EXPORT_SNAPSHOT`.
    ///
    /// No timeout: the server waits for transactions running at the time to end before it
    /// reaches a consistent point. The snapshot stays importable only while this session runs
    /// no other command, so import it elsewhere before calling anything else here.
    pub async fn create_slot_exporting_snapshot(
        &mut self,
    ) -> Result<CreatedSlot, ReplicationError> {
        const COMMAND: &str = "CREATE_REPLICATION_SLOT";
        let slot = self.spec.slot.clone();
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
            quote_slot(&slot)
        );
        let rows = self.query(COMMAND, &sql, Some(&slot)).await?;
        // slot_name, consistent_point, snapshot_name, output_plugin
        let row = single_row(COMMAND, rows, 4)?;
        Ok(CreatedSlot {
            consistent_point: lsn_column(COMMAND, &row, 1)?,
            snapshot_name: text_column(COMMAND, &row, 2)?,
        })
    }

    /// `DROP_REPLICATION_SLOT <name>`; fails with [`ReplicationError::SlotInUse`] while
    /// another session streams from it.
    pub async fn drop_slot(&mut self, name: &str) -> Result<(), ReplicationError> {
        const COMMAND: &str = "DROP_REPLICATION_SLOT";
        validate_slot_name(name)?;
        let sql = format!("DROP_REPLICATION_SLOT {}", quote_slot(name));
        with_timeout(COMMAND, self.query(COMMAND, &sql, Some(name)))
            .await
            .map(drop)
    }

    /// `START_REPLICATION SLOT <slot> LOGICAL <start> (proto_version '1', publication_names
    /// '<publication>', messages 'true')`; returns once the server accepted it, so a missing
    /// slot or a slot in use is reported here. (A missing publication is reported by the
    /// server only when the first change is decoded, through
    /// [`PgReplicationStream::next`].)
    pub async fn start(mut self) -> Result<PgReplicationStream, ReplicationError> {
        const COMMAND: &str = "START_REPLICATION";
        let slot = self.spec.slot.clone();
        let info = self.info.clone();
        with_timeout(COMMAND, async {
            self.client
                .start()
                .await
                .map_err(|e| classify(e, COMMAND, &info, Some(&slot)))?;
            self.client
                .wait_started()
                .await
                .map_err(|e| classify(e, COMMAND, &info, Some(&slot)))
        })
        .await?;
        Ok(PgReplicationStream {
            client: self.client,
            info: self.info,
            slot,
            wal_end: Lsn(0),
        })
    }
}

fn single_row(
    command: &'static str,
    rows: Vec<QueryRow>,
    columns: usize,
) -> Result<QueryRow, ReplicationError> {
    let count = rows.len();
    let mut rows = rows.into_iter();
    match (rows.next(), rows.next()) {
        (Some(row), None) if row.len() >= columns => Ok(row),
        _ => Err(ReplicationError::BadReply {
            command,
            reason: format!("expected one row of {columns} columns, got {count} rows"),
        }),
    }
}

fn text_column(
    command: &'static str,
    row: &QueryRow,
    index: usize,
) -> Result<String, ReplicationError> {
    let bytes =
        row.get(index)
            .and_then(Option::as_ref)
            .ok_or_else(|| ReplicationError::BadReply {
                command,
                reason: format!("column {index} is missing or NULL"),
            })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| ReplicationError::BadReply {
        command,
        reason: format!("column {index} is not UTF-8"),
    })
}

fn lsn_column(
    command: &'static str,
    row: &QueryRow,
    index: usize,
) -> Result<Lsn, ReplicationError> {
    let text = text_column(command, row, index)?;
    text.parse().map_err(|e| ReplicationError::BadReply {
        command,
        reason: format!("column {index}: {e}"),
    })
}

/// A started replication session: decoded messages in WAL order, and confirmations back.
pub struct PgReplicationStream {
    client: ReplicationClient,
    info: ConnInfo,
    slot: String,
    /// The server's WAL end from its last keepalive.
    wal_end: Lsn,
}

// By hand: the crate's client is not `Debug`, and the password must not be printed.
impl std::fmt::Debug for PgReplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReplication")
            .field("addr", &self.info.addr())
            .field("user", &self.info.user)
            .field("dbname", &self.info.dbname)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PgReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReplicationStream")
            .field("addr", &self.info.addr())
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl PgReplicationStream {
    /// The next pgoutput message. Keepalives are answered by the crate and not returned.
    ///
    /// Cancel-safe (a message is either returned or stays queued). Waits as long as the
    /// server sends nothing: the crate's keepalive handling keeps the session alive, and a
    /// dead connection surfaces as a transient error once the socket reports it.
    pub async fn next(&mut self) -> Result<WalMessage, ReplicationError> {
        loop {
            let event = self
                .client
                .recv()
                .await
                .map_err(|e| classify(e, "START_REPLICATION", &self.info, Some(&self.slot)))?
                .ok_or(ReplicationError::StreamEnded)?;
            if let ReplicationEvent::KeepAlive { wal_end, .. } = &event {
                self.wal_end = self.wal_end.max(from_wire(*wal_end));
            }
            if let Some(message) = convert(event)? {
                return Ok(message);
            }
        }
    }

    /// Reports `lsn` to the server as written, flushed and applied: the slot's
    /// `confirmed_flush_lsn` moves there, and the server may discard WAL before it. Call it
    /// only once everything up to `lsn` is durably stored (normally with a `Commit`'s
    /// `end_lsn`). Monotonic (a lower LSN is ignored) and cheap: the update is sent within
    /// [`StreamSpec::status_interval`].
    pub fn confirm(&self, lsn: Lsn) {
        self.client.update_applied_lsn(to_wire(lsn));
    }

    /// The WAL position of the server's last keepalive: every transaction committed before
    /// it was sent before that keepalive (the walsender reports how far it decoded). Once
    /// everything read before it is durable, confirming it lets the server recycle WAL that
    /// only other tables wrote.
    pub fn server_wal_end(&self) -> Lsn {
        self.wal_end
    }

    /// Ends the stream cleanly (`CopyDone`), discarding messages not yet read.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        with_timeout("the replication session to close", async {
            self.client
                .shutdown()
                .await
                .map_err(|e| classify(e, "START_REPLICATION", &self.info, Some(&self.slot)))
        })
        .await
    }
}

/// Turns one event of the crate into a decoded message; `None` for keepalives.
fn convert(event: ReplicationEvent) -> Result<Option<WalMessage>, ReplicationError> {
    let message = match event {
        ReplicationEvent::KeepAlive { .. } => return Ok(None),
        ReplicationEvent::StoppedAt { .. } => return Err(ReplicationError::StreamEnded),
        ReplicationEvent::XLogData {
            wal_start, data, ..
        } => {
            let wal_start = from_wire(wal_start);
            let message = pgoutput::decode(&data).map_err(|source| ReplicationError::Decode {
                wal_start: Some(wal_start),
                source,
            })?;
            WalMessage {
                wal_start: Some(wal_start),
                message,
            }
        }
        ReplicationEvent::Begin {
            final_lsn,
            xid,
            commit_time_micros,
        } => WalMessage {
            wal_start: None,
            message: PgOutputMessage::Begin {
                final_lsn: from_wire(final_lsn),
                // Kind byte, final_lsn (8), then the timestamp.
                commit_time_us: unix_micros(commit_time_micros, MessageKind::Begin, 9, None)?,
                xid: Xid(xid),
            },
        },
        ReplicationEvent::Commit {
            lsn,
            end_lsn,
            commit_time_micros,
        } => {
            let end_lsn = from_wire(end_lsn);
            WalMessage {
                // PostgreSQL writes the commit's end LSN as its XLogData dataStart.
                wal_start: Some(end_lsn),
                message: PgOutputMessage::Commit {
                    commit_lsn: from_wire(lsn),
                    end_lsn,
                    // Kind byte, flags, commit_lsn (8), end_lsn (8), then the timestamp.
                    commit_time_us: unix_micros(
                        commit_time_micros,
                        MessageKind::Commit,
                        18,
                        Some(end_lsn),
                    )?,
                },
            }
        }
        ReplicationEvent::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            let lsn = from_wire(lsn);
            WalMessage {
                wal_start: Some(lsn),
                message: PgOutputMessage::Message {
                    transactional,
                    lsn,
                    prefix,
                    content: content.to_vec(),
                },
            }
        }
    };
    Ok(Some(message))
}

fn unix_micros(
    pg_micros: i64,
    kind: MessageKind,
    offset: usize,
    wal_start: Option<Lsn>,
) -> Result<i64, ReplicationError> {
    pg_micros_to_unix_micros(pg_micros).ok_or(ReplicationError::Decode {
        wal_start,
        source: PgOutputError::Malformed {
            kind,
            offset,
            problem: Problem::TimestampOutOfRange { pg_micros },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let info = parse_url("postgres://postgres@127.0.0.1:5433/app").unwrap();
        assert_eq!(
            info,
            ConnInfo {
                user: "postgres".into(),
                password: String::new(),
                host: "127.0.0.1".into(),
                port: 5433,
                dbname: "app".into(),
            }
        );
        let info = parse_url("postgresql://u%40x:p%3Aw%2F@[::1]/my%20db?sslmode=disable").unwrap();
        assert_eq!(
            (info.user.as_str(), info.password.as_str()),
            ("u@x", "p:w/")
        );
        assert_eq!((info.host.as_str(), info.port), ("::1", 5432));
        assert_eq!(info.dbname, "my db");
        assert_eq!(info.addr(), "[::1]:5432");
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "mysql://u@h/db",
            "postgres://h/db",
            "postgres://u@h",
            "postgres://u@h:99999/db",
            "postgres://u@h:0/db",
            "postgres://u@h/",
            "postgres://u%zz@h/db",
            "postgres://u%ff@h/db",
            "postgres://u@h/db?sslmode=require",
            "postgres://u@h/db%",
        ] {
            let error = parse_url(url).unwrap_err();
            assert!(
                matches!(error, ReplicationError::InvalidUrl { .. }),
                "{url}: {error}"
            );
            assert!(error.is_definite());
        }
    }

    #[test]
    fn slot_names_follow_postgres_rules() {
        validate_slot_name("tidesync_1").unwrap();
        validate_slot_name("1abc").unwrap();
        for bad in ["", "Upper", "a-b", "a b", "x\"y", &"a".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            quote_publication("My \"pub\"").unwrap(),
            "\"My \"\"pub\"\"\""
        );
        assert!(quote_publication("").is_err());
    }

    #[test]
    fn splits_sqlstate_and_classifies() {
        assert_eq!(
            split_sqlstate("replication slot \"s\" already exists (SQLSTATE 42710)"),
            ("replication slot \"s\" already exists", Some("42710"))
        );
        assert_eq!(split_sqlstate("no code (here)"), ("no code (here)", None));
        let info = parse_url("postgres://bob@h/db").unwrap();
        let server = |text: &str| classify(PgWireError::Server(text.into()), "X", &info, Some("s"));
        let error = server("logical decoding requires wal_level >= logical (SQLSTATE 55000)");
        assert!(matches!(error, ReplicationError::WalLevelNotLogical { .. }));
        assert!(error.to_string().contains("set wal_level = logical"));
        let error = server("password authentication failed for user \"bob\" (SQLSTATE 28P01)");
        assert!(matches!(error, ReplicationError::Authentication { .. }));
        let error =
            server("must be superuser or replication role to start walsender (SQLSTATE 42501)");
        assert!(error.to_string().contains("ALTER ROLE bob REPLICATION"));
        assert!(matches!(
            server("all replication slots are in use (SQLSTATE 53400)"),
            ReplicationError::SlotsExhausted { .. }
        ));
        let error = server("replication slot \"s\" already exists (SQLSTATE 42710)");
        assert!(matches!(error, ReplicationError::SlotExists { .. }) && error.is_definite());
        assert!(server("terminating connection (SQLSTATE 57P01)").is_transient());
        assert!(server("syntax error (SQLSTATE 42601)").is_definite());
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(classify(PgWireError::from(io), "X", &info, None).is_transient());
    }

    #[test]
    fn converts_boundary_events() {
        let begin = convert(ReplicationEvent::Begin {
            final_lsn: pgwire_replication::Lsn(0x10),
            xid: 7,
            commit_time_micros: 0,
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            begin,
            WalMessage {
                wal_start: None,
                message: PgOutputMessage::Begin {
                    final_lsn: Lsn(0x10),
                    commit_time_us: pgoutput::PG_EPOCH_UNIX_MICROS,
                    xid: Xid(7),
                },
            }
        );
        let error = convert(ReplicationEvent::Commit {
            lsn: pgwire_replication::Lsn(1),
            end_lsn: pgwire_replication::Lsn(2),
            commit_time_micros: i64::MAX,
        })
        .unwrap_err();
        assert!(matches!(error, ReplicationError::Decode { .. }) && error.is_definite());
        let error = convert(ReplicationEvent::XLogData {
            wal_start: pgwire_replication::Lsn(0x2A),
            wal_end: pgwire_replication::Lsn(0x2A),
            server_time_micros: 0,
            data: bytes_of(b"Z"),
        })
        .unwrap_err();
        assert!(error.to_string().contains("LSN 0/2A"), "{error}");
        let keepalive = ReplicationEvent::KeepAlive {
            wal_end: pgwire_replication::Lsn(0),
            reply_requested: true,
            server_time_micros: 0,
        };
        assert_eq!(convert(keepalive).unwrap(), None);
    }

    fn bytes_of(data: &'static [u8]) -> bytes::Bytes {
        bytes::Bytes::from_static(data)
    }
}
