//! [`PgLogSource`]: PostgreSQL capture in mode `log` (logical replication with `pgoutput`).
//!
//! On a fresh start the source creates its publication (unless one is named in config) and
//! its replication slot with an exported snapshot, copies every table in key-ordered chunks
//! inside a transaction that imported that snapshot, and then streams from the slot's
//! consistent point: the copy shows exactly the transactions committed before that point and
//! the stream exactly those after it, so nothing is lost or doubled at the hand-off.
//!
//! Positions it hands to the store:
//! - `Snapshot { stream: Lsn(C), table, after }` while copying: the stream resumes at `C`, and
//!   the copy after key `after` of `table` (keys in PostgreSQL's text form and order).
//! - `Lsn(E)` afterwards: the end of the last transaction stored. A restart resumes there;
//!   the slot's `confirmed_flush_lsn` moves only in [`Source::ack`], i.e. after the store
//!   committed, so the server keeps every transaction we may still need.
//!
//! A copy interrupted by a crash continues from its stored position without the exported
//! snapshot (which died with the session that exported it): the stream restarts at `C` and the
//! remaining chunks are read while it runs, each between a low and a high watermark written
//! into the WAL with `pg_logical_emit_message` (DBLog's algorithm). Rows of a chunk that the
//! stream changes between its two watermarks are dropped from the chunk (the stream carries
//! their newer version), the rest are emitted at the high watermark, so every key still sees
//! its versions in commit order.
//!
//! Transactions are handed out whole (a batch may hold several, never part of one), so a
//! position is always a transaction boundary. Unchanged TOASTed values are not sent by
//! PostgreSQL: such an update carries their columns in [`Change::unchanged`] and the store
//! fills them from its current state (or, inside a watermark window, the source fills them
//! from the chunk row it holds for that key).

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tidesync_core::codec::binary::key_to_vec;
use tidesync_core::pg::{describe, is_transient};
use tidesync_core::{
    BatchKind, BoxFuture, Captured, Change, ColumnSchema, CopyChunk, Dialect, Key, Op, Opened,
    Position, Request, RequestKind, RequestProgress, Row, Source, StageError, TableSchema, Value,
};
use tokio_postgres::{Client, Config, CopyOutStream, NoTls, Statement};

use super::pgoutput::{Lsn, Oid, OldTuple, PgOutputMessage, Relation, Tuple, TupleValue};
use super::replication::{
    PgReplication, PgReplicationStream, ReplicationError, SESSION_OPTIONS, StreamSpec,
};
use super::text::text_to_value;
use super::{copy_binary, copy_text};

/// The prefix of our watermark messages in the WAL.
const WATERMARK_PREFIX: &str = "tidesync";

/// How long a connect or a catalog query may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A direct-copy chunk ends at this many bytes even if it has fewer rows than asked for, to
/// bound the memory two chunks in flight take.
const MAX_CHUNK_BYTES: usize = 16 << 20;

/// Types with smaller OIDs are built into every PostgreSQL (`FirstGenbkiObjectId`): the same
/// type with the same binary form on source and target. Types from this OID on (extensions,
/// user types, initdb-made ones) differ between databases, so their tables copy as text.
const FIRST_USER_OID: u32 = 10_000;

/// The direct copy remembers where this many chunks began, to rewind to one of them.
const CHUNK_STARTS_KEPT: usize = 8;

/// With nothing but transactions of other tables (or none) arriving, the position still
/// advances this often, so the slot does not hold WAL for a quiet pipeline.
const IDLE_POSITION_EVERY: Duration = Duration::from_secs(2);

/// The most changes a transaction's list is given room for up front (see
/// `PgLogSource::last_txn_changes`); larger transactions grow it as before.
const TXN_CAPACITY_MAX: usize = 4096;

/// What a [`PgLogSource`] captures and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgLogOptions {
    /// `postgres://user:password@host:port/db`.
    pub url: String,
    /// The pipeline: names the default slot and publication.
    pub pipeline: String,
    /// `table` (schema `public`) or `schema.table`, at least one; also the stream names.
    pub tables: Vec<String>,
    /// An existing publication to use as is; `None`: `tidesync_<pipeline>`, created (and
    /// extended with missing tables) by the source and dropped by `tidesync drop`.
    pub publication: Option<String>,
    /// `None`: `tidesync_<pipeline>`.
    pub slot: Option<String>,
    /// Rows per snapshot chunk.
    pub chunk_rows: usize,
    /// After the first transaction of a batch arrives, wait at most this long for more
    /// before handing the batch on.
    pub linger: Duration,
}

impl PgLogOptions {
    pub fn new(url: impl Into<String>, pipeline: impl Into<String>, tables: Vec<String>) -> Self {
        PgLogOptions {
            url: url.into(),
            pipeline: pipeline.into(),
            tables,
            publication: None,
            slot: None,
            chunk_rows: 10_000,
            linger: Duration::from_millis(5),
        }
    }

    fn slot(&self) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| format!("tidesync_{}", self.pipeline))
    }

    fn publication(&self) -> String {
        self.publication
            .clone()
            .unwrap_or_else(|| format!("tidesync_{}", self.pipeline))
    }
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    type_oid: Oid,
    /// `format_type()`; `text` for user-defined types (their values arrive as text).
    type_name: String,
    nullable: bool,
}

#[derive(Debug, Clone)]
struct Table {
    /// The name in config: the stream name.
    stream: String,
    schema: String,
    name: String,
    columns: Vec<Column>,
    key: Vec<String>,
}

impl Table {
    fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    fn schema(&self) -> TableSchema {
        TableSchema {
            name: self.stream.clone(),
            columns: self
                .columns
                .iter()
                .map(|c| ColumnSchema {
                    name: c.name.clone(),
                    type_name: c.type_name.clone(),
                    nullable: c.nullable,
                })
                .collect(),
            key: self.key.clone(),
            dialect: Dialect::Postgres,
        }
    }

    /// Positions of the key columns in `columns`.
    fn key_positions(&self) -> Vec<usize> {
        self.key
            .iter()
            .filter_map(|k| self.columns.iter().position(|c| &c.name == k))
            .collect()
    }
}

fn quote_ident(name: &str) -> String {
    tidesync_core::sql::quote_ident(name)
}

/// A chunk read between two watermarks, waiting for the stream to reach them.
#[derive(Debug)]
struct Window {
    id: u64,
    table: usize,
    /// The low watermark passed: stream changes now remove keys from `rows`.
    open: bool,
    /// Key texts of the chunk's last row (the cursor after this chunk), `None` when the
    /// chunk was empty (the table is done).
    last: Option<Vec<String>>,
    /// The chunk, in key order, with each row's key.
    rows: Vec<(Key, Row)>,
    /// Keys of `rows` (and of `absent`) still to emit (encoded: values are not `Hash`).
    pending: HashSet<Vec<u8>>,
    /// A request's keys that the table does not have (emitted as deletes).
    absent: Vec<Key>,
    /// The request this window serves; `None`: the initial copy's.
    request: Option<i64>,
}

/// A re-read request (see [`Request`]) being served, one window at a time.
#[derive(Debug)]
struct Asked {
    id: i64,
    table: usize,
    /// `Some`: these keys (one window); `None`: the whole table in chunks.
    keys: Option<Vec<Key>>,
    /// Table re-read: key texts of the last row of the last window read (the next window
    /// starts after it).
    next: Option<Vec<String>>,
    /// The same as of what was handed out: a reconnect resumes here.
    handed: Option<Vec<String>>,
    /// Every window is read; what remains is handing out the last one.
    finished: bool,
    window: Option<Window>,
}

/// Copying tables: where, and how.
#[derive(Debug)]
struct Copy {
    /// Index into `tables` of the table being copied.
    table: usize,
    /// Key texts of the last row copied of that table.
    after: Option<Vec<String>>,
    /// Reads under the exported snapshot (fresh start) rather than between watermarks.
    exported: bool,
    /// A chunk in flight between watermarks.
    window: Option<Window>,
}

/// The direct copy of one table: its `COPY (SELECT ..) TO STDOUT` under the exported snapshot,
/// cut into chunks as it arrives.
struct Direct {
    table: usize,
    rows: Pin<Box<CopyOutStream>>,
    /// `Some`: the binary format, cut into rows by this.
    binary: Option<copy_binary::Cutter>,
    /// The table's row count as the planner's statistics have it.
    estimate: Option<u64>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// A transaction being received.
#[derive(Debug)]
struct Txn {
    /// The transaction id as text (`Change::txn`), formatted once, not once per change.
    xid: String,
    commit_time_us: i64,
    changes: Vec<Change>,
    /// The copy's cursor after a watermark window that closed in this transaction: it
    /// holds only once the transaction (with the chunk's rows) is handed out.
    cursor: Option<Cursor>,
    /// A request's window closed in this transaction: its rows are the transaction's.
    progress: Option<RequestProgress>,
}

/// Where the copy stands: the table being copied and its last copied key (texts).
type Cursor = (usize, Option<Vec<String>>);

/// A whole transaction received and not yet handed out.
#[derive(Debug)]
struct Ready {
    changes: Vec<Change>,
    end: Lsn,
    cursor: Option<Cursor>,
    /// Set when `changes` are a request's rows: handed out alone, as a `Full` batch.
    progress: Option<RequestProgress>,
}

/// PostgreSQL log capture. See the module docs.
pub struct PgLogSource {
    opts: PgLogOptions,
    slot: String,
    publication: String,
    target: String,
    tables: Vec<Table>,
    /// Relation oid -> index into `tables`, from the stream's `Relation` messages; `None` for
    /// relations that are not ours.
    relations: HashMap<Oid, Option<usize>>,
    /// A regular connection: catalog, snapshot reads, watermarks.
    client: Option<Client>,
    statements: HashMap<(usize, bool), Statement>,
    copy: Option<Copy>,
    /// The table the direct copy is reading, if it is (see [`Source::copy_chunk`]).
    direct: Option<Direct>,
    /// Chunks the direct copy handed out.
    chunks: u64,
    /// Where the last chunks handed out began (chunk number, cursor), for `copy_abandon`.
    chunk_starts: VecDeque<(u64, Cursor)>,
    /// Streams whose direct copy may be binary (see [`Source::allow_binary_copy`]).
    copy_binary: HashSet<String>,
    /// Re-read requests, served in order once the initial copy is done.
    requests: VecDeque<Asked>,
    stream: Option<PgReplicationStream>,
    txn: Option<Txn>,
    /// Changes of the last transaction received: the next one's first capacity, so a large
    /// transaction's change list is not grown (and copied) ten times over.
    last_txn_changes: usize,
    /// Whole transactions received but not handed out: changes and the commit's end.
    ready: VecDeque<Ready>,
    /// Changes in `ready` (kept, not summed: checked after every message).
    ready_changes: usize,
    /// End of the last transaction handed out (where a reconnect resumes).
    handed: Lsn,
    /// The copy's cursor as of what was handed out (`None`: no copy running): what the
    /// position says, and where a reconnect resumes the copy.
    handed_cursor: Option<Cursor>,
    /// Last position acked (durable in the store).
    acked: Lsn,
    /// The newest commit end seen, handed out or not (includes transactions with nothing
    /// of ours).
    seen: Lsn,
    last_handed_at: Instant,
    next_window: u64,
    /// Names this process's watermarks: after a restart the stream replays the watermarks an
    /// earlier process wrote, and taking one of those for ours would emit a chunk at a point
    /// in the stream older than the chunk (applying versions twice and out of order).
    run: i64,
    snapshot_time_us: i64,
}

impl std::fmt::Debug for PgLogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLogSource")
            .field("target", &self.target)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("handed", &self.handed)
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

fn definite(e: impl Into<tidesync_core::BoxError>) -> StageError {
    StageError::definite(e)
}

fn from_replication(e: ReplicationError) -> StageError {
    if e.is_transient() {
        StageError::transient(e)
    } else {
        StageError::definite(e)
    }
}

impl PgLogSource {
    pub fn new(opts: PgLogOptions) -> Self {
        PgLogSource {
            slot: opts.slot(),
            publication: opts.publication(),
            target: tidesync_core::pg::describe_url(&opts.url),
            opts,
            tables: Vec::new(),
            relations: HashMap::new(),
            client: None,
            statements: HashMap::new(),
            copy: None,
            direct: None,
            chunks: 0,
            chunk_starts: VecDeque::new(),
            copy_binary: HashSet::new(),
            requests: VecDeque::new(),
            stream: None,
            txn: None,
            last_txn_changes: 0,
            ready: VecDeque::new(),
            ready_changes: 0,
            handed: Lsn(0),
            handed_cursor: None,
            acked: Lsn(0),
            seen: Lsn(0),
            last_handed_at: Instant::now(),
            next_window: 1,
            run: tidesync_core::time::now_us(),
            snapshot_time_us: 0,
        }
    }

    fn pg_error(&self, context: &str) -> impl Fn(tokio_postgres::Error) -> StageError + use<> {
        let prefix = format!("source {}: {context}", self.target);
        move |e| {
            let mut message = format!("{prefix}: {}", describe(&e));
            match e.code().map(|c| c.code()) {
                Some("28P01" | "28000") => {
                    message.push_str("; check the user and password in the source URL")
                }
                Some("3D000") => message.push_str("; check the database name in the source URL"),
                Some("42501") => message.push_str(
                    "; the source user needs SELECT on the captured tables, and to create the publication CREATE on the database and ownership of the tables (or name a publication created beforehand in `publication`)",
                ),
                _ => {}
            }
            if is_transient(&e) {
                StageError::transient(message)
            } else {
                StageError::definite(message)
            }
        }
    }

    async fn connect(&self) -> Result<Client, StageError> {
        let mut config = Config::from_str(&self.opts.url).map_err(|e| {
            definite(format!(
                "source PostgreSQL: invalid connection URL: {}",
                describe(&e)
            ))
        })?;
        config.options(SESSION_OPTIONS);
        config.connect_timeout(COMMAND_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("tidesync");
        }
        let connecting = tokio::time::timeout(COMMAND_TIMEOUT * 2, config.connect(NoTls));
        let (client, connection) = connecting
            .await
            .map_err(|_| {
                StageError::transient(format!("source {}: connecting timed out", self.target))
            })?
            .map_err(self.pg_error("connecting"))?;
        let target = self.target.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(source = %target, error = %describe(&e), "source connection ended");
            }
        });
        Ok(client)
    }

    async fn client(&mut self) -> Result<&Client, StageError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.statements.clear();
            self.client = Some(self.connect().await?);
        }
        self.client
            .as_ref()
            .ok_or_else(|| StageError::transient("no connection"))
    }

    /// Reads the configured tables from the catalog and checks they can be captured.
    async fn load_tables(&mut self) -> Result<(), StageError> {
        let specs = self.opts.tables.clone();
        let target = self.target.clone();
        let err = self.pg_error("reading the catalog");
        let client = self.client().await?;
        let wal_level: String = client
            .query_one("SHOW wal_level", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(&err)?;
        if wal_level != "logical" {
            return Err(definite(format!(
                "source {target}: wal_level is {wal_level}; set wal_level = logical in postgresql.conf and restart PostgreSQL"
            )));
        }
        let (user, may_replicate): (String, bool) = client
            .query_one(
                "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .and_then(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .map_err(&err)?;
        if !may_replicate {
            return Err(definite(format!(
                "source {target}: user `{user}` may not open a replication connection; grant it with `ALTER ROLE {} REPLICATION`",
                quote_ident(&user)
            )));
        }
        let mut tables = Vec::with_capacity(specs.len());
        for spec in &specs {
            let (schema, name) = match spec.split_once('.') {
                Some((s, n)) => (s.to_owned(), n.to_owned()),
                None => ("public".to_owned(), spec.clone()),
            };
            let found = client
                .query_opt(
                    "SELECT c.oid, c.relreplident::text, c.relkind::text FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2",
                    &[&schema, &name],
                )
                .await
                .map_err(&err)?;
            let Some(found) = found else {
                return Err(definite(format!(
                    "source {target}: table {schema}.{name} does not exist (tables = [\"{spec}\"] in the config)"
                )));
            };
            let oid: u32 = found.try_get(0).map_err(&err)?;
            let identity: String = found.try_get(1).map_err(&err)?;
            let kind: String = found.try_get(2).map_err(&err)?;
            if kind != "r" && kind != "p" {
                return Err(definite(format!(
                    "source {target}: {schema}.{name} is not a table (relkind {kind}); only tables can be captured"
                )));
            }
            let columns = client
                .query(
                    "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), a.attnotnull \
                     FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 \
                     AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
                    &[&oid],
                )
                .await
                .map_err(&err)?
                .into_iter()
                .map(|r| {
                    let type_oid: u32 = r.try_get(1)?;
                    let declared: String = r.try_get(2)?;
                    Ok(Column {
                        name: r.try_get(0)?,
                        type_oid: Oid(type_oid),
                        type_name: type_name_for(type_oid, declared),
                        nullable: !r.try_get::<_, bool>(3)?,
                    })
                })
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                .map_err(&err)?;
            let key: Vec<String> = client
                .query(
                    "SELECT a.attname::text FROM pg_index i \
                     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
                    &[&oid],
                )
                .await
                .map_err(&err)?
                .into_iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(&err)?;
            let key = if !key.is_empty() {
                key
            } else if identity == "f" {
                columns.iter().map(|c| c.name.clone()).collect()
            } else {
                return Err(definite(format!(
                    "source {target}: table {schema}.{name} has no primary key, so its updates and deletes cannot be matched to rows; add one, or run ALTER TABLE {}.{} REPLICA IDENTITY FULL (every column then forms the key)",
                    quote_ident(&schema),
                    quote_ident(&name)
                )));
            };
            if identity == "n" {
                return Err(definite(format!(
                    "source {target}: table {schema}.{name} has REPLICA IDENTITY NOTHING, so its deletes carry no key; run ALTER TABLE {}.{} REPLICA IDENTITY DEFAULT",
                    quote_ident(&schema),
                    quote_ident(&name)
                )));
            }
            tables.push(Table {
                stream: spec.clone(),
                schema,
                name,
                columns,
                key,
            });
        }
        self.tables = tables;
        Ok(())
    }

    /// Makes sure the publication exists and covers every table.
    async fn ensure_publication(&mut self) -> Result<(), StageError> {
        let target = self.target.clone();
        let publication = self.publication.clone();
        let owned = self.opts.publication.is_none();
        let wanted: Vec<(String, String)> = self
            .tables
            .iter()
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect();
        let qualified: Vec<String> = self.tables.iter().map(Table::qualified).collect();
        let err = self.pg_error("checking the publication");
        let client = self.client().await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(&err)?
            .is_some();
        if !exists {
            if !owned {
                return Err(definite(format!(
                    "source {target}: publication {publication} does not exist; create it (CREATE PUBLICATION {} FOR TABLE {}) or leave `publication` out of the config to let tidesync create one",
                    quote_ident(&publication),
                    qualified.join(", ")
                )));
            }
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(&publication),
                qualified.join(", ")
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(self.pg_error("creating the publication"))?;
            tracing::info!(source = %target, %publication, "created publication");
            return Ok(());
        }
        let published: HashSet<(String, String)> = client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(&err)?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(&err)?;
        let missing: Vec<String> = wanted
            .iter()
            .zip(&qualified)
            .filter(|(w, _)| !published.contains(*w))
            .map(|(_, q)| q.clone())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !owned {
            return Err(definite(format!(
                "source {target}: publication {publication} does not include {}; run ALTER PUBLICATION {} ADD TABLE {}",
                missing.join(", "),
                quote_ident(&publication),
                missing.join(", ")
            )));
        }
        let sql = format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(&publication),
            missing.join(", ")
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(self.pg_error("adding tables to the publication"))?;
        tracing::info!(source = %target, %publication, tables = ?missing, "added tables to the publication");
        Ok(())
    }

    async fn slot_exists(&mut self) -> Result<bool, StageError> {
        let slot = self.slot.clone();
        let err = self.pg_error("looking up the replication slot");
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(err)?
            .is_some())
    }

    fn spec(&self) -> StreamSpec {
        StreamSpec::new(self.slot.clone(), self.publication.clone())
    }

    /// Fresh start: creates the slot with an exported snapshot and imports the snapshot into
    /// the regular connection's transaction, for the copy.
    async fn start_fresh(&mut self) -> Result<Position, StageError> {
        if self.slot_exists().await? {
            // Only a crash between creating the slot and storing the first position leaves
            // our slot without a stored position: nothing depends on it yet.
            tracing::warn!(source = %self.target, slot = %self.slot, "dropping a replication slot left by an interrupted first start");
            self.drop_slot().await?;
        }
        let mut session = PgReplication::connect(&self.opts.url, self.spec())
            .await
            .map_err(from_replication)?;
        let created = session
            .create_slot_exporting_snapshot()
            .await
            .map_err(from_replication)?;
        let name = created.snapshot_name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_')
        {
            return Err(definite(format!(
                "source {}: the server exported a snapshot named `{name}`, which is not a snapshot name",
                self.target
            )));
        }
        // A fresh connection for the copy: its transaction imports the snapshot.
        self.client = None;
        let err = self.pg_error("importing the slot's snapshot");
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{name}'"
            ))
            .await
            .map_err(err)?;
        drop(session);
        tracing::info!(
            source = %self.target, slot = %self.slot, consistent_point = %created.consistent_point,
            "created the replication slot; copying the tables under its snapshot"
        );
        self.handed = created.consistent_point;
        self.acked = created.consistent_point;
        self.start_copy((0, None), true);
        Ok(self.position())
    }

    /// The position that stands for everything handed out so far.
    fn position(&self) -> Position {
        let stream = Position::Lsn(self.handed.0);
        match &self.handed_cursor {
            Some((table, after)) if *table < self.tables.len() => Position::Snapshot {
                stream: Box::new(stream),
                table: self.tables[*table].stream.clone(),
                after: after
                    .as_ref()
                    .map(|texts| Key(texts.iter().cloned().map(Value::Text).collect())),
            },
            _ => stream,
        }
    }

    /// Starts (or restarts) the copy at `cursor`, nothing of it handed out beyond that.
    fn start_copy(&mut self, cursor: Cursor, exported: bool) {
        self.handed_cursor = Some(cursor.clone());
        self.copy = Some(Copy {
            table: cursor.0,
            after: cursor.1,
            exported,
            window: None,
        });
    }

    async fn drop_slot(&mut self) -> Result<(), StageError> {
        let mut session = PgReplication::connect(&self.opts.url, self.spec())
            .await
            .map_err(from_replication)?;
        let slot = self.slot.clone();
        session.drop_slot(&slot).await.map_err(from_replication)
    }

    /// The statement reading one chunk of table `t` (`after`: with a lower key bound).
    async fn chunk_statement(&mut self, t: usize, after: bool) -> Result<Statement, StageError> {
        if let Some(st) = self.statements.get(&(t, after)) {
            return Ok(st.clone());
        }
        let table = &self.tables[t];
        let columns: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("t.{}::text", quote_ident(&c.name)))
            .collect();
        // Qualified with the alias: a bare name in ORDER BY would mean the output column,
        // which is the `::text` of the key (ordering 10 before 9).
        let key_list: Vec<String> = table
            .key
            .iter()
            .map(|k| format!("t.{}", quote_ident(k)))
            .collect();
        let mut sql = format!(
            "SELECT {} FROM ONLY {} AS t",
            columns.join(", "),
            table.qualified()
        );
        let limit_param = if after {
            let params: Vec<String> = table
                .key
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let ty = table
                        .columns
                        .iter()
                        .find(|c| &c.name == k)
                        .map_or("text", |c| c.type_name.as_str());
                    format!(
                        "(${}::text)::{}",
                        i + 1,
                        tidesync_core::sql::safe_type_name(ty)
                    )
                })
                .collect();
            sql.push_str(&format!(
                " WHERE ({}) > ({})",
                key_list.join(", "),
                params.join(", ")
            ));
            table.key.len() + 1
        } else {
            1
        };
        sql.push_str(&format!(
            " ORDER BY {} LIMIT ${limit_param}",
            key_list.join(", ")
        ));
        let err = self.pg_error("preparing the snapshot query");
        let client = self.client().await?;
        let st = client.prepare(&sql).await.map_err(err)?;
        self.statements.insert((t, after), st.clone());
        Ok(st)
    }

    /// Reads up to `limit` rows of table `t` after `after`: (key, row, key texts) each.
    async fn read_chunk(
        &mut self,
        t: usize,
        after: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<(Key, Row, Vec<String>)>, StageError> {
        let st = self.chunk_statement(t, after.is_some()).await?;
        let limit = limit as i64;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        if let Some(after) = after {
            for text in after {
                params.push(text);
            }
        }
        params.push(&limit);
        let err = self.pg_error(&format!("copying table {}", self.tables[t].stream));
        let client = self.client().await?;
        let rows = client.query(&st, &params).await.map_err(err)?;
        let table = &self.tables[t];
        let key_at = table.key_positions();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut values = Vec::with_capacity(table.columns.len());
            let mut texts = Vec::with_capacity(table.columns.len());
            for (i, c) in table.columns.iter().enumerate() {
                let text: Option<String> = r.try_get(i).map_err(self.pg_error("reading a row"))?;
                let value = match &text {
                    None => Value::Null,
                    Some(t) => text_to_value(c.type_oid, Some(&c.type_name), t).map_err(|e| {
                        definite(format!(
                            "source {}: table {} column {}: {e}",
                            self.target, table.stream, c.name
                        ))
                    })?,
                };
                values.push((c.name.clone(), value));
                texts.push(text);
            }
            let key = Key(key_at.iter().map(|&i| values[i].1.clone()).collect());
            let key_texts = key_at
                .iter()
                .map(|&i| texts[i].clone().unwrap_or_default())
                .collect();
            out.push((key, Row(values), key_texts));
        }
        Ok(out)
    }

    /// The copy under the exported snapshot is done: ends the snapshot transaction; the
    /// stream starts at the next poll.
    async fn end_snapshot(&mut self) -> Result<(), StageError> {
        self.copy = None;
        self.handed_cursor = None;
        self.direct = None;
        if let Some(client) = self.client.as_ref() {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(self.pg_error("ending the snapshot transaction"))?;
        }
        tracing::info!(source = %self.target, "initial copy done; streaming");
        Ok(())
    }

    /// Reading under the exported snapshot failed: the snapshot is lost with its
    /// transaction (or its connection), so the copy goes on between watermarks from what was
    /// handed out, as after a restart.
    fn lose_snapshot(&mut self) {
        if !self.copy.as_ref().is_some_and(|c| c.exported) {
            return;
        }
        tracing::warn!(source = %self.target, "the copy lost its snapshot; going on between watermarks while streaming");
        self.direct = None;
        self.client = None;
        let cursor = self.handed_cursor.clone().unwrap_or((0, None));
        self.start_copy(cursor, false);
    }

    /// One chunk of the copy under the exported snapshot; moves to the next table (and
    /// finally to streaming) as tables end.
    async fn poll_exported(&mut self, max: usize) -> Result<Captured, StageError> {
        let polled = self.poll_exported_inner(max).await;
        if polled.is_err() {
            self.lose_snapshot();
        }
        polled
    }

    async fn poll_exported_inner(&mut self, max: usize) -> Result<Captured, StageError> {
        let mut changes = Vec::new();
        while let Some(copy) = self.copy.as_ref() {
            if copy.table >= self.tables.len() {
                self.end_snapshot().await?;
                break;
            }
            let (t, after) = (copy.table, copy.after.clone());
            let want = max
                .saturating_sub(changes.len())
                .clamp(1, self.opts.chunk_rows);
            let rows = self.read_chunk(t, after.as_deref(), want).await?;
            let full = rows.len() == want;
            let stream = self.tables[t].stream.clone();
            let mut last = None;
            for (key, row, texts) in rows {
                changes.push(self.read_change(&stream, key, row));
                last = Some(texts);
            }
            if let Some(copy) = self.copy.as_mut() {
                if full {
                    copy.after = last;
                } else {
                    copy.table += 1;
                    copy.after = None;
                }
            }
            if changes.len() >= max {
                break;
            }
        }
        self.handed_cursor = self.copy.as_ref().map(|c| (c.table, c.after.clone()));
        Ok(Captured {
            refreshed: Vec::new(),
            fingerprints: Vec::new(),
            kind: BatchKind::Full,
            changes,
            position: self.position(),
            progress: None,
        })
    }

    /// The statement copying table `t` whole, in key order (no parameters: `COPY` takes none;
    /// the chunks are cut from its output).
    fn copy_statement(&self, t: usize, binary: bool) -> String {
        let table = &self.tables[t];
        let columns: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("t.{}", quote_ident(&c.name)))
            .collect();
        let key: Vec<String> = table
            .key
            .iter()
            .map(|k| format!("t.{}", quote_ident(k)))
            .collect();
        format!(
            "COPY (SELECT {} FROM ONLY {} AS t ORDER BY {}) TO STDOUT{}",
            columns.join(", "),
            table.qualified(),
            key.join(", "),
            if binary { " (FORMAT binary)" } else { "" }
        )
    }

    /// See [`Source::copy_chunk`].
    async fn copy_chunk_inner(&mut self, max_rows: usize) -> Result<Option<CopyChunk>, StageError> {
        let max_rows = max_rows.min(self.opts.chunk_rows).max(1);
        loop {
            let Some(copy) = self.copy.as_ref().filter(|c| c.exported) else {
                return Ok(None);
            };
            let start: Cursor = (copy.table, copy.after.clone());
            let t = start.0;
            if t >= self.tables.len() {
                self.end_snapshot().await?;
                return Ok(None);
            }
            let stream = self.tables[t].stream.clone();
            let err = self.pg_error(&format!("copying table {stream}"));
            if self.direct.as_ref().is_none_or(|d| d.table != t) {
                if start.1.is_some() {
                    // A table begun by `poll` (after an abandoned chunk): `poll` finishes it.
                    return Ok(None);
                }
                let table = &self.tables[t];
                // Binary where the sink takes it and the keys can be read from it.
                let binary = self.copy_binary.contains(&stream)
                    && table.columns.iter().all(|c| c.type_oid.0 < FIRST_USER_OID)
                    && table
                        .key_positions()
                        .iter()
                        .all(|&i| copy_binary::key_type_readable(table.columns[i].type_oid.0));
                let width = table.columns.len();
                let qualified = table.qualified();
                let sql = self.copy_statement(t, binary);
                let client = self.client().await?;
                let estimate = client
                    .query_one(
                        "SELECT reltuples::int8 FROM pg_class WHERE oid = to_regclass($1)",
                        &[&qualified],
                    )
                    .await
                    .map_err(&err)?
                    .try_get::<_, i64>(0)
                    .ok()
                    .and_then(|n| u64::try_from(n).ok())
                    .filter(|&n| n > 0);
                let rows = client.copy_out(sql.as_str()).await.map_err(&err)?;
                tracing::info!(source = %self.target, table = %stream, binary, "copying directly into the sink");
                self.direct = Some(Direct {
                    table: t,
                    rows: Box::pin(rows),
                    binary: binary.then(|| copy_binary::Cutter::new(width)),
                    estimate,
                });
            }
            let Some(direct) = self.direct.as_mut() else {
                return Ok(None);
            };
            let table = &self.tables[t];
            let key_at = table.key_positions();
            let bad = |e: String| {
                definite(format!(
                    "source {}: copying table {stream}: {e}",
                    self.target
                ))
            };
            let (data, rows, end, last_key) = match direct.binary.as_mut() {
                None => {
                    let (data, rows, end) = read_text(&mut direct.rows, max_rows, &err).await?;
                    let key = if end || rows == 0 {
                        None
                    } else {
                        let key = copy_text::last_row_values(&data, table.columns.len(), &key_at)
                            .map_err(|e| bad(format!("the last row of a chunk: {e}")))?;
                        Some(key.into_iter().map(Option::unwrap_or_default).collect())
                    };
                    (data, rows, end, key)
                }
                Some(cutter) => {
                    let end = read_binary(&mut direct.rows, cutter, max_rows, &err)
                        .await?
                        .map_err(|e| bad(e.to_string()))?;
                    match cutter.take(&key_at).map_err(|e| bad(e.to_string()))? {
                        None => (Vec::new(), 0, end, None),
                        Some(copy_binary::Taken { data, rows, key }) => {
                            let mut texts = Vec::with_capacity(key.len());
                            for (value, &i) in key.iter().zip(&key_at) {
                                texts.push(match value {
                                    None => String::new(),
                                    Some(bytes) => {
                                        copy_binary::key_text(table.columns[i].type_oid.0, bytes, i)
                                            .map_err(|e| bad(e.to_string()))?
                                    }
                                });
                            }
                            (data, rows, end, Some(texts))
                        }
                    }
                }
            };
            let binary = direct.binary.is_some();
            let table_rows = direct.estimate;
            let next: Cursor = if end {
                self.direct = None;
                (t + 1, None)
            } else {
                (t, last_key)
            };
            let columns = table.columns.iter().map(|c| c.name.clone()).collect();
            self.start_copy(next, true);
            if rows == 0 {
                continue;
            }
            self.chunks += 1;
            self.chunk_starts.push_back((self.chunks, start));
            if self.chunk_starts.len() > CHUNK_STARTS_KEPT {
                self.chunk_starts.pop_front();
            }
            return Ok(Some(CopyChunk {
                number: self.chunks,
                stream,
                columns,
                data,
                binary,
                rows,
                table_rows,
                position: self.position(),
            }));
        }
    }

    fn read_change(&self, stream: &str, key: Key, row: Row) -> Change {
        Change {
            stream: stream.to_owned(),
            op: Op::Read,
            key,
            before: None,
            after: Some(row),
            commit_time_us: self.snapshot_time_us,
            position: None,
            txn: None,
            unchanged: Vec::new(),
        }
    }

    async fn ensure_stream(&mut self) -> Result<(), StageError> {
        if self.stream.is_some() {
            return Ok(());
        }
        let mut spec = self.spec();
        spec.start_lsn = Some(self.handed);
        spec.ack_lsn = Some(self.acked);
        let session = PgReplication::connect(&self.opts.url, spec)
            .await
            .map_err(from_replication)?;
        let stream = session.start().await.map_err(from_replication)?;
        tracing::info!(source = %self.target, slot = %self.slot, from = %self.handed, "streaming");
        self.stream = Some(stream);
        self.relations.clear();
        Ok(())
    }

    /// Drops the stream after an error: what was received but not handed out is discarded
    /// and received again from `handed`.
    fn reset_stream(&mut self) {
        self.stream = None;
        self.txn = None;
        self.ready.clear();
        self.ready_changes = 0;
        self.seen = self.handed;
        // Windows that closed in what is discarded are read again.
        if let Some(cursor) = self.handed_cursor.clone() {
            self.start_copy(cursor, false);
        }
        for asked in &mut self.requests {
            asked.window = None;
            asked.next = asked.handed.clone();
            asked.finished = false;
        }
    }

    /// Whether the next poll should read a chunk between watermarks: the copy has no window
    /// open, or (once the copy is done) the oldest request has none and more to read.
    fn wants_window(&self) -> bool {
        match &self.copy {
            Some(copy) => copy.window.is_none(),
            None => self
                .requests
                .front()
                .is_some_and(|a| a.window.is_none() && !a.finished),
        }
    }

    /// The window between watermarks, if one is in flight.
    fn window_mut(&mut self) -> Option<&mut Window> {
        match self.copy.as_mut() {
            Some(copy) => copy.window.as_mut(),
            None => self.requests.front_mut().and_then(|a| a.window.as_mut()),
        }
    }

    /// Streams whole transactions: the first wait is up to `wait`, then up to the linger.
    async fn poll_stream(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Captured>, StageError> {
        self.ensure_stream().await?;
        if self.wants_window() {
            let opened = if self.copy.is_some() {
                self.open_window().await
            } else {
                self.open_request_window().await
            };
            if let Err(e) = opened {
                self.reset_stream();
                return Err(e);
            }
        }
        let start = Instant::now();
        let mut deadline = start + wait;
        let mut lingering = false;
        // The deadline has passed (it never moves later), and messages read since.
        let mut overdue = false;
        let mut read_overdue = 0_usize;
        loop {
            if self.ready_changes >= max {
                break;
            }
            if !self.ready.is_empty() && !lingering {
                lingering = true;
                deadline = deadline.min(Instant::now() + self.opts.linger);
            }
            // Inside a transaction keep reading: a batch ends only at a commit. So the clock is
            // read only between transactions, or before waiting.
            let in_txn = self.txn.is_some();
            if !in_txn {
                overdue = overdue || Instant::now() >= deadline;
                // Past the deadline, messages already received are still read (no waiting),
                // but at most about `max` of them: so a poll with no wait (the runtime's read
                // ahead while the last batch is appended) decodes the next transactions
                // instead of returning empty, and a stream of other tables' transactions
                // cannot keep it here.
                if overdue && read_overdue >= max {
                    break;
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                break;
            };
            // A message already received is taken without arming a timer: a timer and two
            // clock reads per message were a visible part of the capture loop's time.
            // `next` is cancel-safe, and the same future is awaited below if it must wait.
            let received = {
                let mut next = std::pin::pin!(stream.next());
                let ready = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(match next.as_mut().poll(cx) {
                        std::task::Poll::Ready(r) => Some(r),
                        std::task::Poll::Pending => None,
                    })
                })
                .await;
                match ready {
                    Some(r) => Ok(r),
                    None if overdue && !in_txn => break,
                    None => {
                        let now = Instant::now();
                        if now >= deadline && !in_txn {
                            break;
                        }
                        let left = deadline.saturating_duration_since(now);
                        let left = if in_txn {
                            left.max(Duration::from_millis(100))
                        } else {
                            left
                        };
                        tokio::time::timeout(left, next).await
                    }
                }
            };
            match received {
                Err(_) => {
                    if self.txn.is_none() {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    self.reset_stream();
                    return Err(from_replication(e));
                }
                Ok(Ok(message)) => {
                    if overdue {
                        read_overdue += 1;
                    }
                    if let Err(e) = self.handle(message.message).await {
                        self.reset_stream();
                        return Err(e);
                    }
                    if self.wants_window() && self.txn.is_none() {
                        // A window closed: hand out what we have, the next poll opens another.
                        break;
                    }
                }
            }
        }
        // Hand out whole transactions, up to `max` changes (at least one transaction); a
        // request's rows go alone, logged as read (a `Full` batch).
        let mut changes: Vec<Change> = Vec::new();
        let mut end = None;
        let mut progress = None;
        while let Some(next) = self.ready.front() {
            if !changes.is_empty()
                && (next.progress.is_some() || changes.len() + next.changes.len() > max)
            {
                break;
            }
            let Some(ready) = self.ready.pop_front() else {
                break;
            };
            self.ready_changes -= ready.changes.len();
            if changes.is_empty() {
                // Mostly one transaction per batch: hand its changes on without a copy.
                changes = ready.changes;
            } else {
                changes.extend(ready.changes);
            }
            end = Some(ready.end);
            if let Some(cursor) = ready.cursor {
                self.handed_cursor = Some(cursor);
            }
            if let Some(p) = ready.progress {
                self.request_handed(&p);
                progress = Some(p);
                break;
            }
        }
        // Nothing of ours arrived for a while: once everything handed out is durable and no
        // transaction is half received, the position moves to what the server says it has
        // decoded, so the slot does not hold WAL that other tables write.
        let idle_to = self
            .stream
            .as_ref()
            .map_or(self.seen, |s| s.server_wal_end().max(self.seen));
        let idle = end.is_none()
            && self.txn.is_none()
            && self.ready.is_empty()
            && self.acked >= self.handed
            && idle_to > self.handed
            && self.last_handed_at.elapsed() >= IDLE_POSITION_EVERY;
        if let Some(end) = end.or(idle.then_some(idle_to)) {
            self.handed = self.handed.max(end);
            self.last_handed_at = Instant::now();
            let kind = if progress.is_some() {
                BatchKind::Full
            } else {
                BatchKind::Incremental
            };
            return Ok(Some(Captured {
                refreshed: Vec::new(),
                fingerprints: Vec::new(),
                kind,
                changes,
                position: self.position(),
                progress,
            }));
        }
        Ok(None)
    }

    /// Writes a low watermark, reads the next chunk of the table being copied, writes a high
    /// watermark; the chunk waits in `copy.window` until the stream passes both.
    async fn open_window(&mut self) -> Result<(), StageError> {
        let Some(copy) = self.copy.as_ref() else {
            return Ok(());
        };
        if copy.table >= self.tables.len() {
            self.copy = None;
            tracing::info!(source = %self.target, "initial copy done");
            return Ok(());
        }
        let (t, after) = (copy.table, copy.after.clone());
        let id = self.next_window;
        self.next_window += 1;
        self.emit_watermark('L', id).await?;
        let rows = self
            .read_chunk(t, after.as_deref(), self.opts.chunk_rows)
            .await?;
        self.emit_watermark('H', id).await?;
        let last = rows.last().map(|(_, _, texts)| texts.clone());
        let mut pending = HashSet::with_capacity(rows.len());
        let mut chunk = Vec::with_capacity(rows.len());
        for (key, row, _) in rows {
            pending.insert(key_to_vec(&key));
            chunk.push((key, row));
        }
        if let Some(copy) = self.copy.as_mut() {
            copy.window = Some(Window {
                id,
                table: t,
                open: false,
                last,
                rows: chunk,
                pending,
                absent: Vec::new(),
                request: None,
            });
        }
        Ok(())
    }

    async fn emit_watermark(&mut self, which: char, id: u64) -> Result<(), StageError> {
        let content = format!("{which} {} {} {id}", self.slot, self.run);
        let err = self.pg_error("writing a snapshot watermark (pg_logical_emit_message)");
        let client = self.client().await?;
        client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&WATERMARK_PREFIX, &content],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    /// A watermark message of ours: opens or closes the window.
    fn watermark(&mut self, content: &[u8]) {
        let text = String::from_utf8_lossy(content);
        let mut parts = text.split(' ');
        let (Some(which), Some(slot), Some(run), Some(id)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Ok(run), Ok(id)) = (run.parse::<i64>(), id.parse::<u64>()) else {
            return;
        };
        if slot != self.slot || run != self.run {
            return;
        }
        let Some(window) = self.window_mut().filter(|w| w.id == id) else {
            return;
        };
        match which {
            "L" => window.open = true,
            "H" if window.open => self.close_window(),
            _ => {}
        }
    }

    /// The high watermark passed: the window's rows still pending join the transaction
    /// being received (which holds only that watermark), and the copy's cursor or the
    /// request's progress moves with it.
    fn close_window(&mut self) {
        let window = match self.copy.as_mut() {
            Some(copy) => copy.window.take(),
            None => self.requests.front_mut().and_then(|a| a.window.take()),
        };
        let Some(window) = window else {
            return;
        };
        let stream = self.tables[window.table].stream.clone();
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        let commit_time_us = match window.request {
            Some(_) => txn.commit_time_us,
            None => self.snapshot_time_us,
        };
        let read = |key: Key, row: Option<Row>| Change {
            stream: stream.clone(),
            op: if row.is_some() { Op::Read } else { Op::Delete },
            key,
            before: None,
            after: row,
            commit_time_us,
            position: None,
            txn: None,
            unchanged: Vec::new(),
        };
        let mut emitted: Vec<Change> = window
            .rows
            .into_iter()
            .filter(|(key, _)| window.pending.contains(&key_to_vec(key)))
            .map(|(key, row)| read(key, Some(row)))
            .collect();
        emitted.extend(
            window
                .absent
                .into_iter()
                .filter(|key| window.pending.contains(&key_to_vec(key)))
                .map(|key| read(key, None)),
        );
        txn.changes.extend(emitted);
        match (window.request, self.copy.as_mut()) {
            (None, Some(copy)) => {
                match window.last {
                    Some(last) => copy.after = Some(last),
                    None => {
                        copy.table += 1;
                        copy.after = None;
                    }
                }
                txn.cursor = Some((copy.table, copy.after.clone()));
            }
            (Some(id), _) => {
                let Some(asked) = self.requests.front_mut().filter(|a| a.id == id) else {
                    return;
                };
                let done = asked.keys.is_some() || window.last.is_none();
                if window.last.is_some() {
                    asked.next = window.last.clone();
                }
                asked.finished = done;
                txn.progress = Some(RequestProgress {
                    id,
                    after: window.last.map(text_key),
                    done,
                    error: None,
                });
            }
            (None, None) => {}
        }
    }

    /// A request's batch was handed out: its progress holds from now on.
    fn request_handed(&mut self, progress: &RequestProgress) {
        let Some(asked) = self.requests.front_mut().filter(|a| a.id == progress.id) else {
            return;
        };
        if progress.done {
            self.requests.pop_front();
            return;
        }
        if let Some(after) = &progress.after {
            asked.handed = key_texts(after);
        }
    }

    /// Writes a low watermark, reads the rows the oldest request asks for next, writes a
    /// high watermark; like a copy chunk, they wait in the request's window. A request the
    /// server cannot serve (a key that is not of the key columns' types) ends with its
    /// error instead of stopping capture.
    async fn open_request_window(&mut self) -> Result<(), StageError> {
        let Some(asked) = self.requests.front() else {
            return Ok(());
        };
        let (t, keys, after) = (asked.table, asked.keys.clone(), asked.next.clone());
        let id = self.next_window;
        self.next_window += 1;
        self.emit_watermark('L', id).await?;
        let read = match &keys {
            Some(keys) => self.read_keys(t, keys).await,
            None => self
                .read_chunk(t, after.as_deref(), self.opts.chunk_rows)
                .await
                .map(|rows| {
                    let last = rows.last().map(|(_, _, texts)| texts.clone());
                    let rows = rows.into_iter().map(|(k, r, _)| (k, r)).collect();
                    (rows, Vec::new(), last)
                }),
        };
        let (rows, absent, last) = match read {
            Ok(read) => read,
            Err(StageError::Definite(e)) => {
                let Some(asked) = self.requests.pop_front() else {
                    return Ok(());
                };
                tracing::warn!(source = %self.target, request = asked.id, error = %e, "a re-read request failed");
                // Handed out on its own, after everything received so far.
                self.ready.push_back(Ready {
                    changes: Vec::new(),
                    end: self.seen.max(self.handed),
                    cursor: None,
                    progress: Some(RequestProgress {
                        id: asked.id,
                        after: None,
                        done: true,
                        error: Some(e.to_string()),
                    }),
                });
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.emit_watermark('H', id).await?;
        let mut pending = HashSet::with_capacity(rows.len() + absent.len());
        for key in rows.iter().map(|(k, _)| k).chain(&absent) {
            pending.insert(key_to_vec(key));
        }
        if let Some(asked) = self.requests.front_mut() {
            asked.window = Some(Window {
                id,
                table: t,
                open: false,
                last,
                rows,
                pending,
                absent,
                request: Some(asked.id),
            });
        }
        Ok(())
    }

    /// Reads the rows of `keys` in table `t` as they are now: the rows found, and the keys
    /// (as the server reads them) that the table does not have.
    #[allow(clippy::type_complexity)]
    async fn read_keys(
        &mut self,
        t: usize,
        keys: &[Key],
    ) -> Result<(Vec<(Key, Row)>, Vec<Key>, Option<Vec<String>>), StageError> {
        let table = &self.tables[t];
        let key_types: Vec<(Oid, String)> = table
            .key
            .iter()
            .map(|k| {
                table
                    .columns
                    .iter()
                    .find(|c| &c.name == k)
                    .map_or((Oid(25), "text".to_owned()), |c| {
                        (c.type_oid, c.type_name.clone())
                    })
            })
            .collect();
        // One text array per key column; duplicates asked once.
        let mut seen = HashSet::new();
        let mut columns: Vec<Vec<String>> = vec![Vec::with_capacity(keys.len()); table.key.len()];
        for key in keys {
            if key.0.len() != table.key.len() {
                return Err(definite(format!(
                    "source {}: table {}: a requested key has {} values for the {} key columns {:?}",
                    self.target,
                    table.stream,
                    key.0.len(),
                    table.key.len(),
                    table.key
                )));
            }
            let texts: Vec<String> = key.0.iter().map(tidesync_core::pg::input_text).collect();
            if seen.insert(texts.clone()) {
                for (column, text) in columns.iter_mut().zip(texts) {
                    column.push(text);
                }
            }
        }
        let names: Vec<String> = (0..table.key.len()).map(|i| format!("k{i}")).collect();
        let cast = |i: usize| {
            format!(
                "(r.k{i})::{}",
                tidesync_core::sql::safe_type_name(&key_types[i].1)
            )
        };
        let sql = format!(
            "SELECT {}, t.ctid IS NOT NULL, {} FROM unnest({}) AS r({}) LEFT JOIN ONLY {} AS t ON ({}) = ({})",
            (0..table.key.len())
                .map(|i| format!("({})::text", cast(i)))
                .collect::<Vec<_>>()
                .join(", "),
            table
                .columns
                .iter()
                .map(|c| format!("t.{}::text", quote_ident(&c.name)))
                .collect::<Vec<_>>()
                .join(", "),
            (1..=table.key.len())
                .map(|i| format!("${i}::text[]"))
                .collect::<Vec<_>>()
                .join(", "),
            names.join(", "),
            table.qualified(),
            table
                .key
                .iter()
                .map(|k| format!("t.{}", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", "),
            (0..table.key.len())
                .map(cast)
                .collect::<Vec<_>>()
                .join(", "),
        );
        let err = self.pg_error(&format!("re-reading rows of table {}", table.stream));
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns
            .iter()
            .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let client = self.client().await?;
        let rows = client.query(&sql, &params).await.map_err(err)?;
        let table = &self.tables[t];
        let nkey = table.key.len();
        let key_at = table.key_positions();
        let convert = |oid: Oid, type_name: &str, column: &str, text: &str| {
            text_to_value(oid, Some(type_name), text).map_err(|e| {
                definite(format!(
                    "source {}: table {} column {column}: {e}",
                    self.target, table.stream
                ))
            })
        };
        let (mut found, mut absent) = (Vec::new(), Vec::new());
        for r in rows {
            let text = |i: usize| -> Result<Option<String>, StageError> {
                r.try_get(i).map_err(self.pg_error("reading a row"))
            };
            let present: bool = r.try_get(nkey).map_err(self.pg_error("reading a row"))?;
            if present {
                let mut values = Vec::with_capacity(table.columns.len());
                for (i, c) in table.columns.iter().enumerate() {
                    let value = match text(nkey + 1 + i)? {
                        None => Value::Null,
                        Some(t) => convert(c.type_oid, &c.type_name, &c.name, &t)?,
                    };
                    values.push((c.name.clone(), value));
                }
                let key = Key(key_at.iter().map(|&i| values[i].1.clone()).collect());
                found.push((key, Row(values)));
            } else {
                let mut key = Vec::with_capacity(nkey);
                for (i, (oid, type_name)) in key_types.iter().enumerate() {
                    let t = text(i)?.unwrap_or_default();
                    key.push(convert(*oid, type_name, &table.key[i], &t)?);
                }
                absent.push(Key(key));
            }
        }
        Ok((found, absent, None))
    }

    /// Applies one message of the stream to the transaction being received.
    async fn handle(&mut self, message: PgOutputMessage) -> Result<(), StageError> {
        match message {
            PgOutputMessage::Begin {
                commit_time_us,
                xid,
                ..
            } => {
                self.txn = Some(Txn {
                    xid: xid.0.to_string(),
                    commit_time_us,
                    changes: Vec::with_capacity(self.last_txn_changes.min(TXN_CAPACITY_MAX)),
                    cursor: None,
                    progress: None,
                });
            }
            PgOutputMessage::Commit { end_lsn, .. } => {
                let txn = self.txn.take().ok_or_else(|| {
                    definite(format!(
                        "source {}: a Commit arrived outside a transaction (at {end_lsn})",
                        self.target
                    ))
                })?;
                self.seen = self.seen.max(end_lsn);
                self.last_txn_changes = txn.changes.len();
                if !txn.changes.is_empty() || txn.cursor.is_some() || txn.progress.is_some() {
                    self.ready_changes += txn.changes.len();
                    self.ready.push_back(Ready {
                        changes: txn.changes,
                        end: end_lsn,
                        cursor: txn.cursor,
                        progress: txn.progress,
                    });
                }
            }
            PgOutputMessage::Relation(relation) => self.relation(relation),
            PgOutputMessage::Message {
                prefix, content, ..
            } if prefix == WATERMARK_PREFIX => self.watermark(&content),
            PgOutputMessage::Insert { rel, new } => {
                if let Some(t) = self.table_of(rel)? {
                    let (row, unchanged) = self.row(t, &new)?;
                    let key = self.key_of(t, &row)?;
                    self.push(t, Op::Insert, key, None, Some(row), unchanged)?;
                }
            }
            PgOutputMessage::Update { rel, old, new } => {
                if let Some(t) = self.table_of(rel)? {
                    let (row, unchanged) = self.row(t, &new)?;
                    let key = self.key_of(t, &row)?;
                    let before = match &old {
                        Some(OldTuple::Full(tuple)) => Some(self.row(t, tuple)?.0),
                        _ => None,
                    };
                    let old_key = match &old {
                        Some(old) => Some(self.key_of(t, &self.row(t, old.tuple())?.0)?),
                        None => None,
                    };
                    match old_key {
                        Some(old_key) if old_key != key => {
                            // The key changed: a delete of the old key, an insert of the new.
                            self.push(t, Op::Delete, old_key, before, None, Vec::new())?;
                            self.push(t, Op::Insert, key, None, Some(row), unchanged)?;
                        }
                        _ => self.push(t, Op::Update, key, before, Some(row), unchanged)?,
                    }
                }
            }
            PgOutputMessage::Delete { rel, old } => {
                if let Some(t) = self.table_of(rel)? {
                    let row = self.row(t, old.tuple())?.0;
                    let key = self.key_of(t, &row)?;
                    let before = matches!(old, OldTuple::Full(_)).then_some(row);
                    self.push(t, Op::Delete, key, before, None, Vec::new())?;
                }
            }
            PgOutputMessage::Truncate { rels, .. } => {
                for rel in rels {
                    if let Some(t) = self.table_of(rel)? {
                        self.push(t, Op::Truncate, Key(Vec::new()), None, None, Vec::new())?;
                    }
                }
            }
            PgOutputMessage::Origin { .. }
            | PgOutputMessage::Type { .. }
            | PgOutputMessage::Message { .. } => {}
        }
        Ok(())
    }

    /// Records a relation's shape; a changed column list (ALTER TABLE ADD/DROP COLUMN)
    /// replaces the table's columns, so later rows carry the new ones.
    fn relation(&mut self, relation: Relation) {
        let found = self
            .tables
            .iter()
            .position(|t| t.schema == relation.namespace && t.name == relation.name);
        if let Some(t) = found {
            let table = &mut self.tables[t];
            let changed = table.columns.len() != relation.columns.len()
                || table
                    .columns
                    .iter()
                    .zip(&relation.columns)
                    .any(|(a, b)| a.name != b.name || a.type_oid != b.type_oid);
            if changed {
                let old: HashMap<String, Column> = table
                    .columns
                    .drain(..)
                    .map(|c| (c.name.clone(), c))
                    .collect();
                table.columns = relation
                    .columns
                    .iter()
                    .map(|rc| match old.get(&rc.name) {
                        Some(c) if c.type_oid == rc.type_oid => c.clone(),
                        _ => Column {
                            name: rc.name.clone(),
                            type_oid: rc.type_oid,
                            type_name: type_name_for(
                                rc.type_oid.0,
                                super::text::builtin_name(rc.type_oid)
                                    .unwrap_or("text")
                                    .to_owned(),
                            ),
                            nullable: true,
                        },
                    })
                    .collect();
                self.statements.retain(|(i, _), _| *i != t);
                tracing::info!(
                    source = %self.target, table = %table.stream,
                    columns = ?table.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                    "table columns changed"
                );
            }
        }
        self.relations.insert(relation.oid, found);
    }

    fn table_of(&self, rel: Oid) -> Result<Option<usize>, StageError> {
        match self.relations.get(&rel) {
            Some(found) => Ok(*found),
            None => Err(definite(format!(
                "source {}: a change of relation {rel} arrived before its Relation message",
                self.target
            ))),
        }
    }

    /// A tuple as a row of table `t`, and the columns whose values were not sent.
    fn row(&self, t: usize, tuple: &Tuple) -> Result<(Row, Vec<String>), StageError> {
        let table = &self.tables[t];
        if tuple.0.len() != table.columns.len() {
            return Err(definite(format!(
                "source {}: table {}: a row of {} values for {} columns",
                self.target,
                table.stream,
                tuple.0.len(),
                table.columns.len()
            )));
        }
        let mut values = Vec::with_capacity(tuple.0.len());
        let mut unchanged = Vec::new();
        for (c, v) in table.columns.iter().zip(&tuple.0) {
            let value = match v {
                TupleValue::Null => Value::Null,
                TupleValue::Unchanged => {
                    unchanged.push(c.name.clone());
                    Value::Null
                }
                TupleValue::Text(bytes) => {
                    let text = std::str::from_utf8(bytes).map_err(|_| {
                        definite(format!(
                            "source {}: table {} column {}: the value is not UTF-8",
                            self.target, table.stream, c.name
                        ))
                    })?;
                    text_to_value(c.type_oid, Some(&c.type_name), text).map_err(|e| {
                        definite(format!(
                            "source {}: table {} column {}: {e}",
                            self.target, table.stream, c.name
                        ))
                    })?
                }
                TupleValue::Binary(_) => {
                    return Err(definite(format!(
                        "source {}: table {} column {}: a binary value, but the stream was opened for text",
                        self.target, table.stream, c.name
                    )));
                }
            };
            values.push((c.name.clone(), value));
        }
        Ok((Row(values), unchanged))
    }

    fn key_of(&self, t: usize, row: &Row) -> Result<Key, StageError> {
        let table = &self.tables[t];
        row.key(&table.key).ok_or_else(|| {
            definite(format!(
                "source {}: table {}: a row without its key columns {:?}",
                self.target, table.stream, table.key
            ))
        })
    }

    /// Adds a change to the transaction being received, and keeps a watermark window right:
    /// a key the stream changes inside the window leaves the chunk (the stream's version is
    /// newer), and its unchanged values come from the chunk's row.
    fn push(
        &mut self,
        t: usize,
        op: Op,
        key: Key,
        before: Option<Row>,
        mut after: Option<Row>,
        mut unchanged: Vec<String>,
    ) -> Result<(), StageError> {
        if let Some(window) = self.window_mut().filter(|w| w.open && w.table == t) {
            if op == Op::Truncate {
                window.pending.clear();
            } else if window.pending.remove(&key_to_vec(&key))
                && !unchanged.is_empty()
                && let Some(row) = after.as_mut()
                && let Some((_, chunk_row)) = window.rows.iter().find(|(k, _)| *k == key)
            {
                for (column, value) in row.0.iter_mut() {
                    if unchanged.contains(column)
                        && let Some(v) = chunk_row.get(column)
                    {
                        *value = v.clone();
                    }
                }
                unchanged.clear();
            }
        }
        let stream = self.tables[t].stream.clone();
        let txn = self.txn.as_mut().ok_or_else(|| {
            definite(format!(
                "source {}: a change arrived outside a transaction",
                self.target
            ))
        })?;
        txn.changes.push(Change {
            stream,
            op,
            key,
            before,
            after,
            commit_time_us: txn.commit_time_us,
            position: None,
            txn: Some(txn.xid.clone()),
            unchanged,
        });
        Ok(())
    }
}

/// Reads text `COPY` rows until `max_rows` whole lines (or [`MAX_CHUNK_BYTES`]) or the end:
/// (data, rows, ended).
async fn read_text(
    stream: &mut Pin<Box<CopyOutStream>>,
    max_rows: usize,
    err: &impl Fn(tokio_postgres::Error) -> StageError,
) -> Result<(Vec<u8>, u64, bool), StageError> {
    let mut data: Vec<u8> = Vec::new();
    let mut rows = 0u64;
    // Whole lines only: PostgreSQL sends one row per message, but a chunk is cut only where
    // a line ends, whatever the messages.
    while (rows < max_rows as u64 && data.len() < MAX_CHUNK_BYTES)
        || data.last().is_some_and(|&b| b != b'\n')
    {
        match stream.next().await {
            Some(Ok(bytes)) => {
                rows += copy_text::count_rows(&bytes);
                data.extend_from_slice(&bytes);
            }
            Some(Err(e)) => return Err(err(e)),
            None => return Ok((data, rows, true)),
        }
    }
    Ok((data, rows, false))
}

/// Feeds binary `COPY` data to `cutter` until it holds `max_rows` whole rows (or
/// [`MAX_CHUNK_BYTES`]) or the stream ends: whether it ended. The inner error is the data's.
async fn read_binary(
    stream: &mut Pin<Box<CopyOutStream>>,
    cutter: &mut copy_binary::Cutter,
    max_rows: usize,
    err: &impl Fn(tokio_postgres::Error) -> StageError,
) -> Result<Result<bool, copy_binary::CopyBinaryError>, StageError> {
    loop {
        let (rows, bytes) = cutter.rows();
        if rows >= max_rows as u64 || bytes >= MAX_CHUNK_BYTES {
            return Ok(Ok(false));
        }
        match stream.next().await {
            Some(Ok(bytes)) => {
                if let Err(e) = cutter.push(&bytes) {
                    return Ok(Err(e));
                }
            }
            Some(Err(e)) => return Err(err(e)),
            None => return Ok(cutter.finish().map(|()| true)),
        }
    }
}

/// Key texts as a key (the progress form of a table re-read, like the copy's position).
fn text_key(texts: Vec<String>) -> Key {
    Key(texts.into_iter().map(Value::Text).collect())
}

/// The texts of a key in [`text_key`] form; `None` if a value is not text.
fn key_texts(key: &Key) -> Option<Vec<String>> {
    key.0
        .iter()
        .map(|v| match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// The type name reported for a column: `format_type()` for built-in types, `text` for
/// user-defined ones (enums, domains, composites), whose values arrive as text and which a
/// target database may not have.
fn type_name_for(type_oid: u32, declared: String) -> String {
    if type_oid >= 16_384 {
        "text".to_owned()
    } else {
        declared
    }
}

impl Source for PgLogSource {
    fn open(&mut self, from: Option<Position>) -> BoxFuture<'_, Result<Opened, StageError>> {
        Box::pin(async move {
            super::replication::check_url(&self.opts.url).map_err(from_replication)?;
            self.stream = None;
            self.txn = None;
            self.ready.clear();
            self.ready_changes = 0;
            self.copy = None;
            self.handed_cursor = None;
            self.run = tidesync_core::time::now_us().max(self.run + 1);
            self.load_tables().await?;
            self.ensure_publication().await?;
            self.snapshot_time_us = tidesync_core::time::now_us();
            let start = match from {
                None => Some(self.start_fresh().await?),
                Some(Position::Lsn(lsn)) => {
                    self.resume_at(Lsn(lsn)).await?;
                    None
                }
                Some(Position::Snapshot {
                    stream,
                    table,
                    after,
                }) => {
                    let Position::Lsn(lsn) = *stream else {
                        return Err(definite(format!(
                            "source {}: the stored position {stream} is not a PostgreSQL LSN; was the pipeline's source changed? Run `tidesync drop` for the pipeline and start again",
                            self.target
                        )));
                    };
                    let Some(t) = self.tables.iter().position(|x| x.stream == table) else {
                        return Err(definite(format!(
                            "source {}: the stored snapshot was copying table {table}, which is no longer in the config; run `tidesync drop` for the pipeline and start again",
                            self.target
                        )));
                    };
                    let after = after
                        .map(|key| {
                            key.0
                                .into_iter()
                                .map(|v| match v {
                                    Value::Text(s) => Ok(s),
                                    other => Err(definite(format!(
                                        "source {}: the stored snapshot key {other} is not text",
                                        self.target
                                    ))),
                                })
                                .collect::<Result<Vec<_>, _>>()
                        })
                        .transpose()?;
                    self.resume_at(Lsn(lsn)).await?;
                    tracing::info!(source = %self.target, table = %table, "resuming the interrupted initial copy between watermarks");
                    self.start_copy((t, after), false);
                    None
                }
                Some(other) => {
                    return Err(definite(format!(
                        "source {}: the stored position {other} is not a PostgreSQL position; was the pipeline's source changed? Run `tidesync drop` for the pipeline and start again",
                        self.target
                    )));
                }
            };
            Ok(Opened {
                schemas: self.tables.iter().map(Table::schema).collect(),
                start,
            })
        })
    }

    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Captured>, StageError>> {
        Box::pin(async move {
            if self.copy.as_ref().is_some_and(|c| c.exported) {
                return self.poll_exported(max).await.map(Some);
            }
            self.poll_stream(max, wait).await
        })
    }

    fn copy_chunk(
        &mut self,
        max_rows: usize,
    ) -> BoxFuture<'_, Result<Option<CopyChunk>, StageError>> {
        Box::pin(async move {
            let chunk = self.copy_chunk_inner(max_rows).await;
            if chunk.is_err() {
                self.lose_snapshot();
            }
            chunk
        })
    }

    fn allow_binary_copy(&mut self, streams: HashSet<String>) {
        self.copy_binary = streams;
    }

    fn copy_abandon(&mut self, chunk: &CopyChunk) {
        let Some(at) = self
            .chunk_starts
            .iter()
            .position(|(number, _)| *number == chunk.number)
        else {
            tracing::error!(source = %self.target, chunk = chunk.number, "asked to rewind to a chunk it does not know; going on from what it handed out");
            self.direct = None;
            return;
        };
        let (_, start) = self.chunk_starts[at].clone();
        self.chunk_starts.truncate(at);
        // Dropping the stream leaves the rest of the `COPY` to be read and discarded by the
        // connection; the snapshot transaction goes on for `poll`.
        self.direct = None;
        let exported = self.copy.as_ref().is_some_and(|c| c.exported);
        self.start_copy(start, exported);
    }

    fn ack(&mut self, position: Position) -> BoxFuture<'_, Result<(), StageError>> {
        Box::pin(async move {
            let lsn = match position {
                Position::Lsn(lsn) => lsn,
                Position::Snapshot { stream, .. } => match *stream {
                    Position::Lsn(lsn) => lsn,
                    _ => return Ok(()),
                },
                _ => return Ok(()),
            };
            let lsn = Lsn(lsn);
            if lsn > self.acked {
                self.acked = lsn;
                if let Some(stream) = self.stream.as_ref() {
                    stream.confirm(lsn);
                }
            }
            Ok(())
        })
    }

    fn release(&mut self) {
        if self.stream.is_some() {
            tracing::info!(source = %self.target, slot = %self.slot, "closing the replication connection until the pipeline can take changes again");
            self.reset_stream();
        }
    }

    fn request(&mut self, request: Request) -> Result<(), StageError> {
        if self.requests.iter().any(|a| a.id == request.id) {
            return Ok(());
        }
        let Some(table) = self.tables.iter().position(|t| t.stream == request.stream) else {
            return Err(definite(format!(
                "source {}: `{}` is not a table this pipeline captures (tables: {})",
                self.target,
                request.stream,
                self.opts.tables.join(", ")
            )));
        };
        let (keys, after) = match request.what {
            RequestKind::Keys(keys) => (Some(keys), None),
            RequestKind::Table { after } => {
                let after = match after {
                    None => None,
                    Some(key) => Some(key_texts(&key).ok_or_else(|| {
                        definite(format!(
                            "source {}: request {}: the stored progress {key} is not a key of this source",
                            self.target, request.id
                        ))
                    })?),
                };
                (None, after)
            }
        };
        self.requests.push_back(Asked {
            id: request.id,
            table,
            keys,
            next: after.clone(),
            handed: after,
            finished: false,
            window: None,
        });
        Ok(())
    }

    fn remove(&mut self) -> BoxFuture<'_, Result<Vec<String>, StageError>> {
        Box::pin(async move {
            let mut done = Vec::new();
            // Fresh connections: the regular one may hold the copy's read-only transaction.
            self.stream = None;
            self.copy = None;
            self.client = None;
            if self.slot_exists().await? {
                self.drop_slot().await?;
                done.push(format!(
                    "dropped replication slot {} on {}",
                    self.slot, self.target
                ));
            }
            if self.opts.publication.is_none() {
                let publication = self.publication.clone();
                let err = self.pg_error("dropping the publication");
                let client = self.client().await?;
                let dropped = client
                    .query_opt(
                        "SELECT 1 FROM pg_publication WHERE pubname = $1",
                        &[&publication],
                    )
                    .await
                    .map_err(&err)?
                    .is_some();
                if dropped {
                    client
                        .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(&publication)))
                        .await
                        .map_err(&err)?;
                    done.push(format!(
                        "dropped publication {publication} on {}",
                        self.target
                    ));
                }
            }
            Ok(done)
        })
    }
}

impl PgLogSource {
    /// Resumes streaming at a stored position: the slot must still exist.
    async fn resume_at(&mut self, lsn: Lsn) -> Result<(), StageError> {
        if !self.slot_exists().await? {
            return Err(definite(format!(
                "source {}: replication slot {} does not exist any more (dropped by hand, or invalidated by max_slot_wal_keep_size), so the changes after {lsn} are lost to this pipeline; run `tidesync drop` for the pipeline and start it again to copy the tables afresh",
                self.target, self.slot
            )));
        }
        self.handed = lsn;
        self.acked = lsn;
        self.seen = lsn;
        Ok(())
    }

    /// The replication slot this source owns.
    pub fn slot_name(&self) -> &str {
        &self.slot
    }

    /// Bytes of WAL the slot holds back (`pg_current_wal_lsn() - restart_lsn`), and its
    /// confirmed position; `None` when the slot does not exist.
    pub async fn slot_lag(&mut self) -> Result<Option<(i64, Option<String>)>, StageError> {
        let slot = self.slot.clone();
        let err = self.pg_error("reading the slot");
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint, confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(&err)?;
        row.map(|r| Ok((r.try_get::<_, Option<i64>>(0)?.unwrap_or(0), r.try_get(1)?)))
            .transpose()
            .map_err(err)
    }
}
