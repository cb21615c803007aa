//! [`MysqlLogSource`]: MySQL/MariaDB capture in mode `log` (the row-based binary log, read
//! as a replica).
//!
//! # Snapshots at a binlog position
//!
//! Every row read from a table (the initial copy, a copy resumed after a crash, a backfill,
//! a repair's keys) is read inside `START TRANSACTION WITH CONSISTENT SNAPSHOT`, together with
//! the binlog position `P` that snapshot stands at: MariaDB reports it
//! (`binlog_snapshot_file/position`); on MySQL the captured tables are read-locked
//! (`FLUSH TABLES .. WITH READ LOCK`) while the snapshot starts and `SHOW MASTER STATUS` is
//! read. The rows are then exactly the state after the transactions before `P` and before
//! every one after it, so they are handed out at `P` in the stream: after every transaction
//! that ends at or before `P`, before every one that ends after it. No key loses or reorders a
//! version, and nothing is locked for longer than a moment.
//!
//! On a fresh start the stream begins at the first snapshot's `P`, so the whole initial copy
//! is handed out before the first streamed transaction (as long as the snapshot lives:
//! [`SNAPSHOT_REUSE`]; after that a new snapshot lets the stream catch up first).
//!
//! # Positions
//!
//! - `Snapshot { stream: Binlog(P), table, after }` while copying (the copy resumes after key
//!   `after` of `table`, the stream at `P`);
//! - `Binlog { file, offset }` afterwards: the end of the last transaction handed out.
//!
//! Transactions are handed out whole. The server keeps binlog files by its own retention
//! (`binlog_expire_logs_seconds`): a position whose file was purged cannot be resumed, and the
//! error says to start the pipeline over (`tidesync drop`, then `run`).
//!
//! # Rows in the binlog
//!
//! Column names come from the binlog when the server writes them
//! (`binlog_row_metadata = FULL`); otherwise columns map by position onto the table as
//! `information_schema` describes it, re-read after each `ALTER TABLE` of a captured table
//! that the stream passes; a row whose column count or types do not fit stops capture with
//! an error that says to set `binlog_row_metadata = FULL`. `TRUNCATE` becomes a truncate
//! change. An update that changes the key is a delete of the old key and an insert of the
//! new one.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mysql_async::binlog::events::{Event, EventData, RowsEventData, TableMapEvent};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts, OptsBuilder};
use mysql_common::io::ParseBuf;
use tidesync_core::mysql::{describe, describe_url, mysql_url, quote_ident};
use tidesync_core::{
    BatchKind, BoxFuture, Captured, Change, CopyChunk, Key, Op, Opened, Position, Request,
    RequestKind, RequestProgress, Row, Source, StageError, Value,
};

use super::ddl::{Ddl, ddl_target, first_word};
use super::schema::{LoadError, Table, binlog_type_fits, load_table, split_name};
use super::value::{Origin, convert, from_binlog, key_param, put_copy_value};

/// How long one consistent snapshot serves chunks while the stream waits; then the next
/// chunk takes a new snapshot and the stream first catches up to it.
pub const SNAPSHOT_REUSE: Duration = Duration::from_secs(10);

/// With only other tables' transactions (or none) arriving, the position still advances this
/// often, so a restart does not re-read (or find purged) what was long passed.
const IDLE_POSITION_EVERY: Duration = Duration::from_secs(1);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The server sends a heartbeat after this long without events; three missed ones mean the
/// connection is dead.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Keys read per statement of a key re-read.
const KEYS_PER_READ: usize = 200;

/// MariaDB's GTID event (not known to the driver).
const MARIADB_GTID_EVENT: u8 = 0xA2;
/// MariaDB's GTID event flag: a statement outside a transaction (DDL).
const FL_STANDALONE: u8 = 1;

/// What a [`MysqlLogSource`] captures and how.
#[derive(Debug, Clone)]
pub struct MysqlLogOptions {
    /// `mysql://user:password@host:port/db` (or `mariadb://`); the database is where tables
    /// without a `db.` part live.
    pub url: String,
    pub pipeline: String,
    /// `table` or `db.table`; also the stream names.
    pub tables: Vec<String>,
    /// The replica server id this source registers with; `None`: derived from the pipeline
    /// name (see [`default_server_id`]). Must differ from every server's and replica's id.
    pub server_id: Option<u32>,
    /// Rows per chunk of a copy.
    pub chunk_rows: usize,
    /// After the first transaction of a batch arrives, how long to wait for more.
    pub linger: Duration,
}

impl MysqlLogOptions {
    pub fn new(url: impl Into<String>, pipeline: impl Into<String>, tables: Vec<String>) -> Self {
        MysqlLogOptions {
            url: url.into(),
            pipeline: pipeline.into(),
            tables,
            server_id: None,
            chunk_rows: 10_000,
            linger: Duration::from_millis(5),
        }
    }
}

/// A server id for pipeline `name`: a hash in 1,000,000 ..= 2^31 - 1, away from the small ids
/// people give their servers.
pub fn default_server_id(pipeline: &str) -> u32 {
    // FNV-1a: stable across builds (std's hasher is not).
    let mut h: u32 = 0x811c_9dc5;
    for b in pipeline.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    1_000_000 + h % (i32::MAX as u32 - 1_000_000)
}

/// A place in the binlog: a file and a byte offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BinlogPos {
    file: String,
    offset: u64,
}

impl Ord for BinlogPos {
    fn cmp(&self, other: &Self) -> Ordering {
        tidesync_core::position::binlog_file_cmp(&self.file, &other.file)
            .then(self.offset.cmp(&other.offset))
    }
}

impl PartialOrd for BinlogPos {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    MariaDb,
    MySql,
}

/// An open `START TRANSACTION WITH CONSISTENT SNAPSHOT` on `conn`, standing at `at`.
#[derive(Debug)]
struct Snap {
    at: BinlogPos,
    /// MariaDB: the same position as a GTID position.
    gtid: Option<String>,
    opened: Instant,
}

/// Where a copy stands: the table being copied and the last key handed out of it.
type Cursor = (usize, Option<Key>);

/// A transaction being received from the stream.
#[derive(Debug)]
struct Txn {
    id: String,
    /// MariaDB: the transaction's GTID domain.
    domain: Option<u32>,
    changes: Vec<Change>,
    /// Begun by a GTID event with no `BEGIN` after it yet: a statement (DDL) ends it.
    standalone: bool,
    /// A `BEGIN` query began it (or followed its GTID event).
    begun: bool,
}

/// Changes ready to hand out, ending at `end`.
#[derive(Debug)]
struct Ready {
    changes: Vec<Change>,
    end: BinlogPos,
    /// MariaDB: the GTID position at `end`.
    gtid: Option<String>,
    kind: BatchKind,
    /// Rows read from a table: handed out alone.
    read: bool,
    /// The copy's cursor once this is handed out.
    cursor: Option<Cursor>,
    progress: Option<RequestProgress>,
}

/// How to read the rows of one binlog table id.
#[derive(Debug)]
struct Decoder {
    /// For each binlog column, the table's column it is (`None`: one the table no longer has).
    map: Vec<Option<usize>>,
    /// Each binlog column's type and metadata (computed once: the table map event finds a
    /// column's metadata by walking all before it).
    types: Vec<(ColumnType, Vec<u8>)>,
}

/// Reads one row image: the null bitmap of the present columns, then each present non-null
/// value. One entry per binlog column (`None`: not in this image).
fn read_image<'a>(
    buf: &mut ParseBuf<'a>,
    present: &[bool],
    types: &'a [(ColumnType, Vec<u8>)],
) -> std::io::Result<Vec<Option<BinlogValue<'a>>>> {
    let count = present.iter().filter(|p| **p).count();
    let nulls: &[u8] = buf.parse(count.div_ceil(8))?;
    let mut out = Vec::with_capacity(present.len());
    let mut k = 0;
    for (i, &here) in present.iter().enumerate() {
        if !here {
            out.push(None);
            continue;
        }
        let null = nulls[k / 8] & (1 << (k % 8)) != 0;
        k += 1;
        if null {
            out.push(Some(BinlogValue::Value(mysql_async::Value::NULL)));
            continue;
        }
        let (ty, meta) = &types[i];
        out.push(Some(buf.parse::<BinlogValue<'a>>((
            *ty,
            meta.as_slice(),
            false,
            false,
        ))?));
    }
    Ok(out)
}

/// A re-read request being served.
#[derive(Debug)]
struct Asked {
    id: i64,
    table: usize,
    keys: Option<Vec<Key>>,
    /// Table re-read: the last key read so far.
    next: Option<Key>,
    /// The same, of what was handed out.
    handed: Option<Key>,
    /// Everything is read; what remains is handing out the last part.
    finished: bool,
}

/// MySQL/MariaDB log capture. See the module docs.
pub struct MysqlLogSource {
    opts: MysqlLogOptions,
    /// The server for messages, without the password.
    target: String,
    server_id: u32,
    flavor: Flavor,
    default_db: String,
    tables: Vec<Table>,
    /// Tables an `ALTER TABLE` passed in the stream: re-read before their next row.
    stale: HashSet<usize>,
    /// Binlog table ids of the tables we capture (`None`: not ours).
    table_ids: HashMap<u64, Option<usize>>,
    /// How to read the rows of a table id, made from its last table map event.
    decoders: HashMap<u64, Decoder>,
    conn: Option<Conn>,
    snap: Option<Snap>,
    stream: Option<BinlogStream>,
    /// The binlog file the stream is in.
    file: String,
    /// The stream has shown its format description event (before it, the server's fake
    /// rotate event arrives with its checksum not yet known to the decoder).
    described: bool,
    /// The server writes a checksum after each event (`binlog_checksum` is not NONE).
    checksums: bool,
    /// The end of the last whole transaction (or event outside one) received.
    seen: BinlogPos,
    /// The end of what was handed out.
    handed: BinlogPos,
    /// The server's `@@server_id`: positions name the server their file and offset are of.
    server_number: u32,
    /// MariaDB: the GTID position (`domain-server-seq` per domain) as of `handed`, and as of
    /// `seen` per domain.
    handed_gtid: Option<String>,
    seen_gtid: std::collections::BTreeMap<u32, String>,
    /// MariaDB: the stream starts at this GTID position (a resume on another server than the
    /// stored position's) until a transaction of this server is handed out.
    start_gtid: Option<String>,
    /// Where the fresh start's stream begins (its first snapshot's position).
    fresh_at: Option<BinlogPos>,
    txn: Option<Txn>,
    ready: VecDeque<Ready>,
    ready_changes: usize,
    /// Rows read at a snapshot position the stream has not reached yet.
    pending: Option<Ready>,
    /// The copy: what to read next; `None` when no copy runs.
    copy: Option<Cursor>,
    /// The copy's cursor as of what was handed out.
    handed_cursor: Option<Cursor>,
    requests: VecDeque<Asked>,
    /// The direct copy (see [`Source::copy_chunk`]): chunks handed out and where each began,
    /// and whether it has ended (a rewind or the first snapshot gone).
    chunks: u64,
    chunk_starts: VecDeque<(u64, Cursor)>,
    direct_ended: bool,
    /// The row estimate of the table the direct copy is in.
    estimate: Option<(usize, Option<u64>)>,
    snapshot_time_us: i64,
    last_handed_at: Instant,
    /// When the stream last delivered an event (heartbeats included).
    last_event: Instant,
}

impl std::fmt::Debug for MysqlLogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlLogSource")
            .field("target", &self.target)
            .field("server_id", &self.server_id)
            .field("handed", &self.handed)
            .field("copy", &self.copy)
            .finish_non_exhaustive()
    }
}

fn definite(e: impl Into<tidesync_core::BoxError>) -> StageError {
    StageError::definite(e)
}

impl MysqlLogSource {
    pub fn new(opts: MysqlLogOptions) -> Self {
        let server_id = opts
            .server_id
            .unwrap_or_else(|| default_server_id(&opts.pipeline));
        let start = BinlogPos {
            file: String::new(),
            offset: 4,
        };
        MysqlLogSource {
            target: describe_url(&opts.url),
            server_id,
            flavor: Flavor::MariaDb,
            default_db: String::new(),
            tables: Vec::new(),
            stale: HashSet::new(),
            table_ids: HashMap::new(),
            decoders: HashMap::new(),
            conn: None,
            snap: None,
            stream: None,
            file: String::new(),
            described: false,
            checksums: true,
            seen: start.clone(),
            handed: start,
            server_number: 0,
            handed_gtid: None,
            seen_gtid: std::collections::BTreeMap::new(),
            start_gtid: None,
            fresh_at: None,
            txn: None,
            ready: VecDeque::new(),
            ready_changes: 0,
            pending: None,
            copy: None,
            handed_cursor: None,
            requests: VecDeque::new(),
            chunks: 0,
            chunk_starts: VecDeque::new(),
            direct_ended: false,
            estimate: None,
            snapshot_time_us: 0,
            last_handed_at: Instant::now(),
            last_event: Instant::now(),
            opts,
        }
    }

    /// The replica server id this source registers with.
    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    fn error(&self, context: &str) -> impl Fn(mysql_async::Error) -> StageError + use<> {
        let (target, context) = (self.target.clone(), context.to_owned());
        move |e| {
            let (problem, transient) = describe(&e);
            let text = format!("source {target}: {context}: {problem}");
            if transient {
                StageError::transient(text)
            } else {
                StageError::definite(text)
            }
        }
    }

    async fn connect(&self) -> Result<Conn, StageError> {
        let opts = Opts::from_url(&mysql_url(&self.opts.url)).map_err(|e| {
            definite(format!(
                "source {}: invalid connection URL: {e}",
                self.target
            ))
        })?;
        let opts = OptsBuilder::from_opts(opts).init(vec![
            "SET NAMES utf8mb4",
            "SET SESSION time_zone = '+00:00'",
        ]);
        match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
            Err(_) => Err(StageError::transient(format!(
                "source {}: connecting: no answer within {} s",
                self.target,
                CONNECT_TIMEOUT.as_secs()
            ))),
            Ok(r) => r.map_err(self.error("connecting")),
        }
    }

    async fn conn(&mut self) -> Result<&mut Conn, StageError> {
        if self.conn.is_none() {
            self.snap = None;
            self.conn = Some(self.connect().await?);
        }
        self.conn.as_mut().ok_or_else(|| definite("no connection"))
    }

    /// Checks that the server writes a binlog capture can read, and that we may read it.
    async fn check_server(&mut self) -> Result<(), StageError> {
        let target = self.target.clone();
        let err = self.error("checking the server's binlog settings");
        let conn = self.conn().await?;
        let row: Option<(String, i64, String, String, Option<String>, u32)> = conn
            .query_first(
                "SELECT VERSION(), @@log_bin, CAST(@@binlog_format AS CHAR), \
                 CAST(@@binlog_row_image AS CHAR), CAST(DATABASE() AS CHAR), @@server_id",
            )
            .await
            .map_err(&err)?;
        let Some((version, log_bin, format, image, db, server_number)) = row else {
            return Err(definite(format!(
                "source {target}: no answer to a settings query"
            )));
        };
        self.flavor = if version.to_ascii_lowercase().contains("mariadb") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        };
        self.default_db = db.unwrap_or_default();
        self.server_number = server_number;
        if log_bin == 0 {
            return Err(definite(format!(
                "source {target}: the binary log is off; start the server with `log_bin` \
                 (e.g. `log-bin = mysql-bin` under [mysqld] in its option file) and restart it"
            )));
        }
        if !format.eq_ignore_ascii_case("ROW") {
            return Err(definite(format!(
                "source {target}: binlog_format is {format}, capture needs ROW; set \
                 `binlog_format = ROW` in the server's option file (or SET GLOBAL \
                 binlog_format = 'ROW' and reconnect the writers)"
            )));
        }
        if !image.eq_ignore_ascii_case("FULL") {
            return Err(definite(format!(
                "source {target}: binlog_row_image is {image}, capture needs FULL (every \
                 column of every changed row); set `binlog_row_image = FULL` in the server's \
                 option file (or SET GLOBAL binlog_row_image = 'FULL')"
            )));
        }
        // REPLICATION CLIENT (MariaDB: BINLOG MONITOR) lets us ask where the binlog is.
        self.master_status().await?;
        Ok(())
    }

    /// The server's current binlog position (`SHOW MASTER STATUS`).
    async fn master_status(&mut self) -> Result<BinlogPos, StageError> {
        let target = self.target.clone();
        let err = self.error("reading the binlog position");
        let conn = self.conn().await?;
        let mut result = conn
            .query_first::<mysql_async::Row, _>("SHOW MASTER STATUS")
            .await;
        if let Err(mysql_async::Error::Server(s)) = &result
            && s.code == 1064
        {
            // MySQL 8.4 renamed it.
            result = conn
                .query_first::<mysql_async::Row, _>("SHOW BINARY LOG STATUS")
                .await;
        }
        let row = match result {
            Err(mysql_async::Error::Server(s)) if s.code == 1227 => {
                return Err(definite(format!(
                    "source {target}: the user may not read the binlog position ({}); grant it \
                     REPLICATION CLIENT (MariaDB 10.5+: BINLOG MONITOR) and REPLICATION SLAVE, \
                     e.g. GRANT REPLICATION CLIENT, REPLICATION SLAVE ON *.* TO 'user'@'host'",
                    s.message
                )));
            }
            r => r.map_err(&err)?,
        };
        let Some(mut row) = row else {
            return Err(definite(format!(
                "source {target}: SHOW MASTER STATUS is empty: the binary log is off"
            )));
        };
        let file: Option<String> = row.take_opt(0).and_then(Result::ok);
        let offset: Option<u64> = row.take_opt(1).and_then(Result::ok);
        match (file, offset) {
            (Some(file), Some(offset)) => Ok(BinlogPos { file, offset }),
            _ => Err(definite(format!(
                "source {target}: unreadable SHOW MASTER STATUS"
            ))),
        }
    }

    /// Registers as a replica for a moment: a user without REPLICATION SLAVE learns it now,
    /// not when the initial copy is done.
    async fn check_replication(&mut self, at: &BinlogPos) -> Result<(), StageError> {
        let conn = self.connect().await?;
        let request = BinlogStreamRequest::new(self.server_id)
            .with_filename(at.file.as_bytes())
            .with_pos(at.offset)
            .with_non_blocking();
        let mut stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| self.stream_error(e, at))?;
        if let Some(Err(e)) = stream.next().await {
            return Err(self.stream_error(e, at));
        }
        if let Err(e) = stream.close().await {
            // The probe's answer is in; a connection that does not close cleanly is dropped.
            tracing::debug!(source = %self.target, error = %e, "closing the replication probe");
        }
        Ok(())
    }

    /// A binlog stream error, with what to do about the ones a user must fix.
    fn stream_error(&self, e: mysql_async::Error, at: &BinlogPos) -> StageError {
        if let mysql_async::Error::Server(s) = &e {
            match s.code {
                1227 | 1045 | 1044 => {
                    return definite(format!(
                        "source {}: the user may not read the binlog as a replica ({}); grant \
                         it REPLICATION SLAVE, e.g. GRANT REPLICATION SLAVE, REPLICATION CLIENT \
                         ON *.* TO 'user'@'host'",
                        self.target, s.message
                    ));
                }
                1236 => {
                    return definite(format!(
                        "source {}: the server cannot send the binlog from {} ({}). Its file was \
                         purged (binlog_expire_logs_seconds / expire_logs_days) while the \
                         pipeline was stopped, or the position is of another server and has \
                         no GTIDs this one knows: changes since are lost to capture, a new \
                         snapshot is needed. Run `tidesync drop CONFIG {}` and start the \
                         pipeline again (it copies the tables anew), and keep binlogs longer \
                         than the pipeline may be down",
                        self.target,
                        match (&self.start_gtid, at.file.is_empty()) {
                            (Some(gtid), true) => format!("GTID position {gtid}"),
                            _ => format!("{}:{}", at.file, at.offset),
                        },
                        s.message,
                        self.opts.pipeline
                    ));
                }
                _ => {}
            }
        }
        let (problem, transient) = describe(&e);
        let text = format!("source {}: reading the binlog: {problem}", self.target);
        if transient || matches!(e, mysql_async::Error::Io(_)) {
            StageError::transient(text)
        } else {
            definite(text)
        }
    }

    async fn load_tables(&mut self) -> Result<(), StageError> {
        let mariadb = self.flavor == Flavor::MariaDb;
        let mut tables = Vec::with_capacity(self.opts.tables.len());
        for stream in self.opts.tables.clone() {
            tables.push(self.load_one(&stream, mariadb).await?);
        }
        self.tables = tables;
        self.table_ids.clear();
        self.decoders.clear();
        self.stale.clear();
        Ok(())
    }

    async fn load_one(&mut self, stream: &str, mariadb: bool) -> Result<Table, StageError> {
        let (db, name) = split_name(stream, &self.default_db);
        let target = self.target.clone();
        if db.is_empty() {
            return Err(definite(format!(
                "source {target}: table {stream} has no database: name one in the URL \
                 (mysql://host/db) or write db.{stream}"
            )));
        }
        let err = self.error(&format!("reading the columns of table {stream}"));
        let conn = self.conn().await?;
        match load_table(conn, stream, &db, &name, mariadb).await {
            Ok(Some(table)) => Ok(table),
            Ok(None) => Err(definite(format!(
                "source {target}: table {stream} does not exist (database {db})"
            ))),
            Err(LoadError::Query(e)) => Err(err(e)),
            Err(LoadError::Table(problem)) => Err(definite(format!("source {target}: {problem}"))),
        }
    }

    /// Opens a consistent snapshot on the query connection (ending any open one) and learns
    /// its binlog position.
    async fn open_snapshot(&mut self) -> Result<(), StageError> {
        let target = self.target.clone();
        let err = self.error("starting a consistent snapshot");
        let flavor = self.flavor;
        let lock_list: Vec<String> = self.tables.iter().map(Table::qualified).collect();
        self.snap = None;
        let conn = self.conn().await?;
        conn.query_drop("ROLLBACK").await.map_err(&err)?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(&err)?;
        let at = match flavor {
            Flavor::MariaDb => {
                conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    .await
                    .map_err(&err)?;
                let rows: Vec<(String, String)> = conn
                    .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
                    .await
                    .map_err(&err)?;
                let get = |name: &str| {
                    rows.iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                match (
                    get("binlog_snapshot_file"),
                    get("binlog_snapshot_position").and_then(|p| p.parse().ok()),
                ) {
                    (Some(file), Some(offset)) if !file.is_empty() => BinlogPos { file, offset },
                    _ => {
                        return Err(definite(format!(
                            "source {target}: the server reports no binlog position for a \
                             consistent snapshot (binlog_snapshot_file/position)"
                        )));
                    }
                }
            }
            Flavor::MySql => {
                // Writers to the captured tables wait while the snapshot starts, so the
                // position and the snapshot agree.
                conn.query_drop(format!(
                    "FLUSH TABLES {} WITH READ LOCK",
                    lock_list.join(", ")
                ))
                .await
                .map_err(&err)?;
                let started = conn
                    .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    .await;
                let at = match started {
                    Ok(()) => self.master_status().await,
                    Err(e) => Err(err(e)),
                };
                let conn = self.conn().await?;
                conn.query_drop("UNLOCK TABLES").await.map_err(&err)?;
                at?
            }
        };
        let gtid = match flavor {
            Flavor::MariaDb => self.gtid_at(&at).await?,
            Flavor::MySql => None,
        };
        self.snap = Some(Snap {
            at,
            gtid,
            opened: Instant::now(),
        });
        Ok(())
    }

    /// Resumes at a stored position: on the same server by file and offset; on another one
    /// (a failover: its file names and offsets are its own) by the position's GTIDs.
    async fn resume_from(
        &mut self,
        file: String,
        offset: u64,
        gtid: Option<String>,
        server: Option<u32>,
    ) -> Result<(), StageError> {
        self.start_gtid = None;
        if server.is_none_or(|s| s == self.server_number) {
            self.handed = BinlogPos { file, offset };
            self.seen = self.handed.clone();
            let gtid = match gtid {
                Some(g) => Some(g),
                None if self.flavor == Flavor::MariaDb => {
                    let at = self.handed.clone();
                    self.gtid_at(&at).await.ok().flatten()
                }
                None => None,
            };
            self.set_gtid(gtid);
            let at = self.handed.clone();
            return self.check_replication(&at).await;
        }
        let stored = server.unwrap_or_default();
        match (self.flavor, gtid.filter(|g| !g.is_empty())) {
            (Flavor::MariaDb, Some(gtid)) => {
                tracing::warn!(source = %self.target, stored_server_id = stored, server_id = self.server_number, gtid = %gtid, "the source is another server than the stored position's (a failover?); resuming at the position's GTIDs");
                self.handed = BinlogPos {
                    file: String::new(),
                    offset: 0,
                };
                self.seen = self.handed.clone();
                self.set_gtid(Some(gtid.clone()));
                self.start_gtid = Some(gtid);
                Ok(())
            }
            _ => Err(definite(format!(
                "source {}: the stored position {file}:{offset} is of the server with server_id \
                 {stored}, this one has server_id {}, and the position has no MariaDB GTIDs to \
                 resume at on it (MySQL GTIDs are not used yet): run `tidesync drop` for the \
                 pipeline and start it again for a new snapshot",
                self.target, self.server_number
            ))),
        }
    }

    /// Streaming from a GTID position on another server, before its first transaction: the
    /// server skips what came before the GTIDs without sending it, so an offset of an event
    /// outside a transaction (the file's start) is not a place everything before which was
    /// received, and must not become a position (a restart there would send again what the
    /// other server already gave).
    fn gtid_starting(&self) -> bool {
        self.start_gtid.is_some() && self.handed.file.is_empty() && self.seen.file.is_empty()
    }

    /// The GTID position as of `seen` (`None` before any GTID is known).
    fn seen_gtid_text(&self) -> Option<String> {
        (!self.seen_gtid.is_empty()).then(|| {
            self.seen_gtid
                .values()
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// MariaDB: the GTID position of a binlog file and offset (`BINLOG_GTID_POS`); `None`
    /// when the server cannot say (the file is gone).
    async fn gtid_at(&mut self, at: &BinlogPos) -> Result<Option<String>, StageError> {
        let err = self.error("reading the GTID position of a binlog position");
        let conn = self.conn().await?;
        let gtid: Option<Option<String>> = conn
            .exec_first(
                "SELECT CAST(BINLOG_GTID_POS(?, ?) AS CHAR)",
                (at.file.as_str(), at.offset),
            )
            .await
            .map_err(err)?;
        Ok(gtid.flatten())
    }

    /// Sets the GTID state (handed out and seen) to `gtid`.
    fn set_gtid(&mut self, gtid: Option<String>) {
        self.seen_gtid = gtid_domains(gtid.as_deref());
        self.handed_gtid = gtid.filter(|g| !g.is_empty());
    }

    /// A snapshot that may serve the next chunk: one at or after what was handed out (rows
    /// read at a position the stream already handed out past would be older than what the
    /// sinks have), and young enough. The server may report a position a moment before a
    /// transaction the stream already delivered (it writes the binlog before it commits):
    /// then the snapshot is taken again.
    async fn usable_snapshot(&mut self) -> Result<BinlogPos, StageError> {
        for attempt in 0.. {
            let usable = self
                .snap
                .as_ref()
                .is_some_and(|s| s.at >= self.handed && s.opened.elapsed() < SNAPSHOT_REUSE);
            if usable {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(10 * attempt.min(20))).await;
            }
            if attempt > 200 {
                return Err(StageError::transient(format!(
                    "source {}: no consistent snapshot at or after {}:{} in 200 attempts",
                    self.target, self.handed.file, self.handed.offset
                )));
            }
            self.open_snapshot().await?;
        }
        self.snap
            .as_ref()
            .map(|s| s.at.clone())
            .ok_or_else(|| definite("no snapshot"))
    }

    /// The statement reading the next `limit` rows of table `t` after `after` in key order.
    fn chunk_sql(&self, t: usize, after: bool, limit: usize) -> String {
        let table = &self.tables[t];
        let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let key: Vec<String> = table.key.iter().map(|k| quote_ident(k)).collect();
        let filter = if after {
            // (k1 > ?) OR (k1 = ? AND k2 > ?) OR ..: every optimizer turns it into a range.
            let mut ors = Vec::new();
            for i in 0..key.len() {
                let mut ands: Vec<String> = key[..i].iter().map(|k| format!("{k} = ?")).collect();
                ands.push(format!("{} > ?", key[i]));
                ors.push(format!("({})", ands.join(" AND ")));
            }
            format!(" WHERE {}", ors.join(" OR "))
        } else {
            String::new()
        };
        format!(
            "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {limit}",
            columns.join(", "),
            table.qualified(),
            key.join(", ")
        )
    }

    /// Parameters for [`Self::chunk_sql`]'s filter after key `after`.
    fn chunk_params(&self, t: usize, after: &Key) -> Result<Vec<mysql_async::Value>, StageError> {
        let table = &self.tables[t];
        let key_at = table.key_positions();
        if after.0.len() != key_at.len() {
            return Err(definite(format!(
                "source {}: table {}: the stored key {after} does not have the {} key columns",
                self.target,
                table.stream,
                key_at.len()
            )));
        }
        let bound: Vec<mysql_async::Value> = key_at
            .iter()
            .zip(&after.0)
            .map(|(&i, v)| key_param(&table.columns[i], v))
            .collect::<Result<_, _>>()
            .map_err(|e| {
                definite(format!(
                    "source {}: table {}: key {after}: {e}",
                    self.target, table.stream
                ))
            })?;
        let mut params = Vec::new();
        for i in 0..bound.len() {
            params.extend(bound[..=i].iter().cloned());
        }
        Ok(params)
    }

    /// Converts one query row of table `t`.
    fn query_row(&self, t: usize, row: mysql_async::Row) -> Result<(Key, Row), StageError> {
        let table = &self.tables[t];
        let values = row.unwrap();
        if values.len() != table.columns.len() {
            return Err(definite(format!(
                "source {}: table {}: a row of {} values for {} columns",
                self.target,
                table.stream,
                values.len(),
                table.columns.len()
            )));
        }
        let mut out = Vec::with_capacity(values.len());
        for (column, value) in table.columns.iter().zip(values) {
            let v = convert(column, value, Origin::Query).map_err(|e| {
                definite(format!(
                    "source {}: table {} column {}: {e}",
                    self.target, table.stream, column.name
                ))
            })?;
            out.push((column.name.clone(), v));
        }
        let key = Key(table
            .key_positions()
            .iter()
            .map(|&i| out[i].1.clone())
            .collect());
        Ok((key, Row(out)))
    }

    /// Reads up to `limit` rows of table `t` after `after` under the open snapshot as
    /// PostgreSQL `COPY` text, row by row as they arrive (no rows kept): the text, the number
    /// of rows and the last row's key.
    async fn read_copy_text(
        &mut self,
        t: usize,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<(Vec<u8>, u64, Option<Key>), StageError> {
        let sql = self.chunk_sql(t, after.is_some(), limit);
        let params = match after {
            Some(key) => self.chunk_params(t, key)?,
            None => Vec::new(),
        };
        let err = self.error(&format!("reading table {}", self.tables[t].stream));
        self.conn().await?;
        let Some(mut conn) = self.conn.take() else {
            return Err(definite("no connection"));
        };
        let table = &self.tables[t];
        // For each column, its place in the key (key order), if it is a key column.
        let mut key_slot: Vec<Option<usize>> = vec![None; table.columns.len()];
        for (slot, &i) in table.key_positions().iter().enumerate() {
            key_slot[i] = Some(slot);
        }
        let mut data = Vec::with_capacity(limit * 64);
        let mut rows = 0_u64;
        let mut key: Vec<Value> = vec![Value::Null; table.key.len()];
        let mut failure: Option<String> = None;
        let read = async {
            let mut result = conn.exec_iter(sql, params).await?;
            result
                .for_each(|row| {
                    if failure.is_some() {
                        return;
                    }
                    let values = row.unwrap();
                    if values.len() != table.columns.len() {
                        failure = Some(format!(
                            "a row of {} values for {} columns",
                            values.len(),
                            table.columns.len()
                        ));
                        return;
                    }
                    for (i, (column, value)) in table.columns.iter().zip(values).enumerate() {
                        if i > 0 {
                            data.push(b'\t');
                        }
                        match convert(column, value, Origin::Query) {
                            Ok(v) => {
                                put_copy_value(&mut data, &v);
                                if let Some(slot) = key_slot[i] {
                                    key[slot] = v;
                                }
                            }
                            Err(e) => {
                                failure = Some(format!("column {}: {e}", column.name));
                                return;
                            }
                        }
                    }
                    data.push(b'\n');
                    rows += 1;
                })
                .await
        }
        .await;
        self.conn = Some(conn);
        read.map_err(err)?;
        if let Some(problem) = failure {
            return Err(definite(format!(
                "source {}: table {}: {problem}",
                self.target, self.tables[t].stream
            )));
        }
        Ok((data, rows, (rows > 0).then_some(Key(key))))
    }

    /// Reads up to `limit` rows of table `t` after `after` under the open snapshot.
    async fn read_chunk(
        &mut self,
        t: usize,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<(Key, Row)>, StageError> {
        let sql = self.chunk_sql(t, after.is_some(), limit);
        let params = match after {
            Some(key) => self.chunk_params(t, key)?,
            None => Vec::new(),
        };
        let err = self.error(&format!("reading table {}", self.tables[t].stream));
        let conn = self.conn().await?;
        // Always prepared: the binary protocol types its values (the text one sends text).
        let rows: Vec<mysql_async::Row> = conn.exec(sql, params).await.map_err(&err)?;
        rows.into_iter().map(|r| self.query_row(t, r)).collect()
    }

    fn read_change(&self, stream: &str, key: Key, row: Option<Row>) -> Change {
        Change {
            stream: stream.to_owned(),
            op: if row.is_some() { Op::Read } else { Op::Delete },
            key,
            before: None,
            after: row,
            commit_time_us: self.snapshot_time_us,
            position: None,
            txn: None,
            unchanged: Vec::new(),
        }
    }

    /// Reads the next chunk the copy or the oldest request needs, under a snapshot; it waits
    /// in `pending` until the stream reaches the snapshot's position.
    async fn read_next(&mut self, max: usize) -> Result<(), StageError> {
        if let Some((t, after)) = self.copy.clone() {
            if t >= self.tables.len() {
                // Nothing left: the end of the copy is handed out at the current position.
                let (at, gtid) = if self.seen > self.handed {
                    (self.seen.clone(), self.seen_gtid_text())
                } else {
                    (self.handed.clone(), self.handed_gtid.clone())
                };
                self.pending = Some(Ready {
                    gtid,
                    changes: Vec::new(),
                    end: at,
                    kind: BatchKind::Incremental,
                    read: true,
                    cursor: Some((t, None)),
                    progress: None,
                });
                self.copy = None;
                return Ok(());
            }
            let at = self.usable_snapshot().await?;
            let limit = max.clamp(1, self.opts.chunk_rows);
            let rows = self.read_chunk(t, after.as_ref(), limit).await?;
            let full = rows.len() == limit;
            let stream = self.tables[t].stream.clone();
            let last = rows.last().map(|(k, _)| k.clone());
            let changes: Vec<Change> = rows
                .into_iter()
                .map(|(k, r)| self.read_change(&stream, k, Some(r)))
                .collect();
            let next = if full { (t, last) } else { (t + 1, None) };
            self.copy = Some(next.clone());
            let kind = if self.fresh_at.as_ref() == Some(&at) {
                BatchKind::Full
            } else {
                BatchKind::Incremental
            };
            self.pending = Some(Ready {
                gtid: self.snap.as_ref().and_then(|s| s.gtid.clone()),
                changes,
                end: at,
                kind,
                read: true,
                cursor: Some(next),
                progress: None,
            });
            return Ok(());
        }
        let Some(asked) = self.requests.front() else {
            return Ok(());
        };
        let (id, t, keys, next) = (
            asked.id,
            asked.table,
            asked.keys.clone(),
            asked.next.clone(),
        );
        let at = self.usable_snapshot().await?;
        let stream = self.tables[t].stream.clone();
        let read = match &keys {
            Some(keys) => self.read_keys(t, keys).await.map(|(found, absent)| {
                let mut changes: Vec<Change> = found
                    .into_iter()
                    .map(|(k, r)| self.read_change(&stream, k, Some(r)))
                    .collect();
                changes.extend(
                    absent
                        .into_iter()
                        .map(|k| self.read_change(&stream, k, None)),
                );
                (changes, None, true)
            }),
            None => {
                let limit = self.opts.chunk_rows;
                self.read_chunk(t, next.as_ref(), limit).await.map(|rows| {
                    let done = rows.len() < limit;
                    let last = rows.last().map(|(k, _)| k.clone());
                    let changes = rows
                        .into_iter()
                        .map(|(k, r)| self.read_change(&stream, k, Some(r)))
                        .collect();
                    (changes, last, done)
                })
            }
        };
        let (changes, last, done, error) = match read {
            Ok((changes, last, done)) => (changes, last, done, None),
            Err(StageError::Definite(e)) => {
                tracing::warn!(source = %self.target, request = id, error = %e, "a re-read request failed");
                (Vec::new(), None, true, Some(e.to_string()))
            }
            Err(e) => return Err(e),
        };
        if let Some(asked) = self.requests.front_mut() {
            if last.is_some() {
                asked.next = last.clone();
            }
            asked.finished = done;
        }
        self.pending = Some(Ready {
            gtid: self.snap.as_ref().and_then(|s| s.gtid.clone()),
            changes,
            end: at,
            kind: BatchKind::Full,
            read: true,
            cursor: None,
            progress: Some(RequestProgress {
                id,
                after: last,
                done,
                error,
            }),
        });
        Ok(())
    }

    /// Reads the rows of `keys` in table `t` under the open snapshot: the rows found, and
    /// the keys (in this source's form) that the table does not have.
    async fn read_keys(
        &mut self,
        t: usize,
        keys: &[Key],
    ) -> Result<(Vec<(Key, Row)>, Vec<Key>), StageError> {
        let table = self.tables[t].clone();
        let key_at = table.key_positions();
        let mut asked: Vec<Key> = Vec::with_capacity(keys.len());
        let mut unique = HashSet::new();
        for key in keys {
            if key.0.len() != key_at.len() {
                return Err(definite(format!(
                    "source {}: table {}: a requested key has {} values for the {} key columns {:?}",
                    self.target,
                    table.stream,
                    key.0.len(),
                    key_at.len(),
                    table.key
                )));
            }
            let mut normal = Vec::with_capacity(key.0.len());
            for (&i, v) in key_at.iter().zip(&key.0) {
                normal.push(normalize_key(&table.columns[i], v).map_err(|e| {
                    definite(format!(
                        "source {}: table {}: requested key {key}: {e}",
                        self.target, table.stream
                    ))
                })?);
            }
            let normal = Key(normal);
            if unique.insert(format!("{normal:?}")) {
                asked.push(normal);
            }
        }
        let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let matches: String = table
            .key
            .iter()
            .map(|k| format!("{} = ?", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut found = Vec::new();
        let mut present = HashSet::new();
        for part in asked.chunks(KEYS_PER_READ) {
            let sql = format!(
                "SELECT {} FROM {} WHERE {}",
                columns.join(", "),
                table.qualified(),
                vec![format!("({matches})"); part.len()].join(" OR ")
            );
            let mut params = Vec::new();
            for key in part {
                for (&i, v) in key_at.iter().zip(&key.0) {
                    params.push(key_param(&table.columns[i], v).map_err(|e| {
                        definite(format!(
                            "source {}: table {}: requested key {key}: {e}",
                            self.target, table.stream
                        ))
                    })?);
                }
            }
            let err = self.error(&format!("re-reading rows of table {}", table.stream));
            let conn = self.conn().await?;
            let rows: Vec<mysql_async::Row> = conn.exec(sql, params).await.map_err(err)?;
            for r in rows {
                let (key, row) = self.query_row(t, r)?;
                present.insert(format!("{key:?}"));
                found.push((key, row));
            }
        }
        let absent = asked
            .into_iter()
            .filter(|k| !present.contains(&format!("{k:?}")))
            .collect();
        Ok((found, absent))
    }

    /// Puts the pending rows into the ready queue once the stream has passed their position:
    /// after every transaction ending at or before it, before every one ending after it.
    fn place_pending(&mut self) -> bool {
        let Some(p) = self.pending.as_ref() else {
            return false;
        };
        if p.end > self.seen && p.end > self.handed {
            return false;
        }
        let Some(p) = self.pending.take() else {
            return false;
        };
        let at = self
            .ready
            .iter()
            .position(|r| r.end > p.end)
            .unwrap_or(self.ready.len());
        self.ready_changes += p.changes.len();
        self.ready.insert(at, p);
        true
    }

    fn has_read_work(&self) -> bool {
        self.copy.is_some() || self.requests.front().is_some_and(|a| !a.finished)
    }

    async fn ensure_stream(&mut self) -> Result<(), StageError> {
        if self.stream.is_some() {
            return Ok(());
        }
        let from = self.handed.clone();
        let mut conn = self.connect().await?;
        let err = self.error("preparing the binlog stream");
        if self.flavor == Flavor::MariaDb {
            // GTID events as themselves (not rewritten into BEGIN queries).
            conn.query_drop("SET @mariadb_slave_capability = 4")
                .await
                .map_err(&err)?;
        }
        let checksum: Option<String> = conn
            .query_first("SELECT CAST(@@global.binlog_checksum AS CHAR)")
            .await
            .map_err(&err)?;
        self.checksums = checksum.is_none_or(|c| !c.eq_ignore_ascii_case("NONE"));
        // A heartbeat every 5 s when idle: a dead connection shows.
        conn.query_drop(format!(
            "SET @master_heartbeat_period = {}",
            HEARTBEAT.as_nanos()
        ))
        .await
        .map_err(&err)?;
        let by_gtid = self.start_gtid.clone().filter(|_| from.file.is_empty());
        if let Some(gtid) = &by_gtid {
            conn.exec_drop("SET @slave_connect_state = ?", (gtid.as_str(),))
                .await
                .map_err(&err)?;
            conn.query_drop("SET @slave_gtid_strict_mode = 1")
                .await
                .map_err(&err)?;
        }
        let request = match &by_gtid {
            Some(_) => BinlogStreamRequest::new(self.server_id)
                .with_filename(b"")
                .with_pos(4),
            None => BinlogStreamRequest::new(self.server_id)
                .with_filename(from.file.as_bytes())
                .with_pos(from.offset),
        };
        let stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| self.stream_error(e, &from))?;
        tracing::info!(source = %self.target, server_id = self.server_id, from = %format!("{}:{}", from.file, from.offset), "streaming the binlog");
        self.stream = Some(stream);
        self.last_event = Instant::now();
        self.file = from.file.clone();
        self.described = false;
        self.seen = from;
        self.table_ids.clear();
        self.decoders.clear();
        Ok(())
    }

    /// Drops the stream after an error: what was received but not handed out is received
    /// again from `handed`. Rows read at a snapshot stay pending (their position holds).
    fn reset_stream(&mut self) {
        self.stream = None;
        self.txn = None;
        // What was received but not handed out is received again.
        self.seen_gtid = gtid_domains(self.handed_gtid.as_deref());
        self.ready.retain(|r| r.read);
        self.ready_changes = self.ready.iter().map(|r| r.changes.len()).sum();
        self.seen = self.handed.clone();
        // Read rows not handed out go back to pending; their snapshot position holds.
        if let Some(first) = self.ready.pop_front() {
            self.ready_changes -= first.changes.len();
            let rest: Vec<Ready> = self.ready.drain(..).collect();
            self.ready_changes = 0;
            // More than one read entry cannot be waiting: one is read at a time.
            debug_assert!(rest.is_empty(), "one read entry at a time");
            if self.pending.is_none() {
                self.pending = Some(first);
            }
        }
    }

    /// Reads the stream: the first wait up to `wait`, then up to the linger; stops early when
    /// pending rows got their place.
    async fn read_stream(&mut self, max: usize, wait: Duration) -> Result<(), StageError> {
        self.ensure_stream().await?;
        let start = Instant::now();
        let mut deadline = start + wait;
        let mut lingering = false;
        loop {
            if self.ready_changes >= max {
                break;
            }
            if self.place_pending() {
                break;
            }
            if !self.ready.is_empty() && !lingering {
                lingering = true;
                deadline = deadline.min(Instant::now() + self.opts.linger);
            }
            let in_txn = self.txn.is_some();
            let now = Instant::now();
            if now >= deadline && !in_txn {
                break;
            }
            let left = if in_txn {
                deadline
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(100))
            } else {
                deadline.saturating_duration_since(now)
            };
            let Some(stream) = self.stream.as_mut() else {
                break;
            };
            let event = match tokio::time::timeout(left, stream.next()).await {
                Err(_) => {
                    if self.last_event.elapsed() > HEARTBEAT * 3 {
                        // Not even a heartbeat: the connection is dead without having said so
                        // (a network partition, a frozen server).
                        let at = self.handed.clone();
                        self.reset_stream();
                        return Err(StageError::transient(format!(
                            "source {}: no binlog event or heartbeat for {} s (at {}:{}); \
                             reconnecting",
                            self.target,
                            (HEARTBEAT * 3).as_secs(),
                            at.file,
                            at.offset
                        )));
                    }
                    if self.txn.is_none() {
                        break;
                    }
                    continue;
                }
                Ok(None) => {
                    let at = self.handed.clone();
                    self.reset_stream();
                    return Err(StageError::transient(format!(
                        "source {}: the server ended the binlog stream (at {}:{})",
                        self.target, at.file, at.offset
                    )));
                }
                Ok(Some(Err(e))) => {
                    let at = self.seen.clone();
                    self.reset_stream();
                    return Err(self.stream_error(e, &at));
                }
                Ok(Some(Ok(event))) => {
                    self.last_event = Instant::now();
                    event
                }
            };
            if let Err(e) = self.handle(event).await {
                self.reset_stream();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Applies one binlog event.
    async fn handle(&mut self, event: Event) -> Result<(), StageError> {
        let header = event.header();
        let log_pos = u64::from(header.log_pos());
        let timestamp_us = i64::from(header.timestamp()) * 1_000_000;
        if header.event_type_raw() == MARIADB_GTID_EVENT {
            let data = event.data();
            let (seq, domain, flags) = parse_mariadb_gtid(data).ok_or_else(|| {
                definite(format!(
                    "source {}: an unreadable MariaDB GTID event at {}:{log_pos}",
                    self.target, self.file
                ))
            })?;
            self.txn = Some(Txn {
                domain: Some(domain),
                id: format!("{domain}-{}-{seq}", header.server_id()),
                changes: Vec::new(),
                standalone: flags & FL_STANDALONE != 0,
                begun: false,
            });
            return Ok(());
        }
        let data = event.read_data().map_err(|e| {
            definite(format!(
                "source {}: an unreadable binlog event at {}:{log_pos}: {e}",
                self.target, self.file
            ))
        })?;
        match data {
            Some(EventData::FormatDescriptionEvent(_)) => {
                self.described = true;
                return Ok(());
            }
            Some(EventData::RotateEvent(r)) => {
                let mut name = r.name().into_owned();
                if !self.described {
                    // The server's first (fake) rotate event comes before the format
                    // description, so the decoder left the event's checksum in the name.
                    if name.starts_with(&self.file) && !self.file.is_empty() {
                        name = self.file.clone();
                    } else if self.checksums {
                        let raw = r.name_raw();
                        name = String::from_utf8_lossy(&raw[..raw.len().saturating_sub(4)])
                            .into_owned();
                    }
                }
                if name.is_empty() || name.chars().any(|c| c.is_control() || c == '\u{FFFD}') {
                    return Err(definite(format!(
                        "source {}: a rotate event names an unreadable binlog file {name:?}",
                        self.target
                    )));
                }
                self.file = name;
                if self.txn.is_none() && !self.gtid_starting() {
                    let at = BinlogPos {
                        file: self.file.clone(),
                        offset: r.position(),
                    };
                    if at > self.seen {
                        self.seen = at;
                    }
                }
                return Ok(());
            }
            Some(EventData::GtidEvent(g)) => {
                self.txn = Some(Txn {
                    domain: None,
                    id: format!("{}:{}", uuid_text(&g.sid()), g.gno()),
                    changes: Vec::new(),
                    standalone: true,
                    begun: false,
                });
            }
            Some(EventData::AnonymousGtidEvent(_)) => {
                self.txn = Some(Txn {
                    domain: None,
                    id: String::new(),
                    changes: Vec::new(),
                    standalone: true,
                    begun: false,
                });
            }
            Some(EventData::QueryEvent(q)) => {
                let query = q.query();
                let word = first_word(&query);
                if word.eq_ignore_ascii_case("BEGIN") || word.eq_ignore_ascii_case("XA") {
                    match self.txn.as_mut() {
                        Some(txn) => {
                            txn.begun = true;
                            txn.standalone = false;
                        }
                        None => {
                            self.txn = Some(Txn {
                                domain: None,
                                id: String::new(),
                                changes: Vec::new(),
                                standalone: false,
                                begun: true,
                            })
                        }
                    }
                    return Ok(());
                }
                if word.eq_ignore_ascii_case("COMMIT") || word.eq_ignore_ascii_case("ROLLBACK") {
                    self.end_txn(log_pos, timestamp_us);
                    return Ok(());
                }
                let schema = q.schema().into_owned();
                self.statement(&query, &schema, timestamp_us)?;
                if self.txn.as_ref().is_none_or(|t| t.standalone || !t.begun) {
                    self.end_txn(log_pos, timestamp_us);
                }
            }
            Some(EventData::XidEvent(_)) => self.end_txn(log_pos, timestamp_us),
            Some(EventData::TableMapEvent(tme)) => {
                let found = self
                    .tables
                    .iter()
                    .position(|t| t.database == tme.database_name() && t.name == tme.table_name());
                self.table_ids.insert(tme.table_id(), found);
                // A new map of the id: its columns may have changed.
                self.decoders.remove(&tme.table_id());
            }
            Some(EventData::RowsEvent(rows)) => self.rows(rows).await?,
            _ => {
                if self.txn.is_none() && log_pos > 0 && !self.gtid_starting() {
                    let at = BinlogPos {
                        file: self.file.clone(),
                        offset: log_pos,
                    };
                    if at > self.seen {
                        self.seen = at;
                    }
                }
            }
        }
        Ok(())
    }

    /// A transaction ends at `log_pos` in the current file.
    fn end_txn(&mut self, log_pos: u64, timestamp_us: i64) {
        let end = BinlogPos {
            file: self.file.clone(),
            offset: log_pos,
        };
        let txn = self.txn.take();
        if end > self.seen {
            self.seen = end.clone();
        }
        if let Some(Txn {
            domain: Some(domain),
            id,
            ..
        }) = &txn
        {
            self.seen_gtid.insert(*domain, id.clone());
        }
        if let Some(mut txn) = txn
            && !txn.changes.is_empty()
        {
            // The commit's own time is the transaction's.
            for c in &mut txn.changes {
                c.commit_time_us = timestamp_us;
            }
            self.ready_changes += txn.changes.len();
            self.ready.push_back(Ready {
                gtid: self.seen_gtid_text(),
                changes: txn.changes,
                end,
                kind: BatchKind::Incremental,
                read: false,
                cursor: None,
                progress: None,
            });
        }
    }

    /// A statement in the binlog (DDL in row format): `TRUNCATE` of a captured table is a
    /// truncate change; `ALTER TABLE` re-reads its columns before its next row; dropping or
    /// renaming it stops capture.
    fn statement(&mut self, query: &str, schema: &str, time_us: i64) -> Result<(), StageError> {
        let Some((verb, names)) = ddl_target(query, schema) else {
            return Ok(());
        };
        let Some(t) = self.tables.iter().position(|t| {
            names
                .iter()
                .any(|(db, name)| t.database == *db && t.name == *name)
        }) else {
            return Ok(());
        };
        match verb {
            Ddl::Truncate => {
                let stream = self.tables[t].stream.clone();
                let txn = self.txn.get_or_insert_with(|| Txn {
                    domain: None,
                    id: String::new(),
                    changes: Vec::new(),
                    standalone: true,
                    begun: false,
                });
                txn.changes.push(Change {
                    stream,
                    op: Op::Truncate,
                    key: Key(Vec::new()),
                    before: None,
                    after: None,
                    commit_time_us: time_us,
                    position: None,
                    txn: Some(txn.id.clone()),
                    unchanged: Vec::new(),
                });
            }
            Ddl::Alter => {
                tracing::info!(source = %self.target, table = %self.tables[t].stream, "ALTER TABLE in the binlog; re-reading the table's columns before its next row");
                self.stale.insert(t);
            }
            Ddl::Gone => {
                return Err(definite(format!(
                    "source {}: table {} was dropped or renamed in the source (`{}`); capture \
                     cannot follow it. Fix the config's tables and start the pipeline over \
                     (`tidesync drop`, then `run`)",
                    self.target,
                    self.tables[t].stream,
                    query.chars().take(200).collect::<String>()
                )));
            }
        }
        Ok(())
    }

    /// A rows event: its rows of a captured table become changes of the transaction.
    async fn rows(&mut self, rows: RowsEventData<'_>) -> Result<(), StageError> {
        let table_id = rows.table_id();
        let Some(&found) = self.table_ids.get(&table_id) else {
            return Err(definite(format!(
                "source {}: a rows event of table id {table_id} without its table map event",
                self.target
            )));
        };
        let Some(t) = found else {
            return Ok(());
        };
        if matches!(rows, RowsEventData::PartialUpdateRowsEvent(_)) {
            return Err(definite(format!(
                "source {}: table {}: a partial JSON update: set binlog_row_value_options = '' \
                 on the server so the binlog carries whole rows",
                self.target, self.tables[t].stream
            )));
        }
        if !self.decoders.contains_key(&table_id) {
            let Some(tme) = self
                .stream
                .as_ref()
                .and_then(|s| s.get_tme(table_id))
                .cloned()
            else {
                return Err(definite(format!(
                    "source {}: no table map for table id {table_id}",
                    self.target
                )));
            };
            let map = self.column_map(t, &tme).await?;
            let mut types = Vec::with_capacity(map.len());
            for i in 0..map.len() {
                let ty = tme.get_column_type(i).ok().flatten().ok_or_else(|| {
                    definite(format!(
                        "source {}: table {}: column {i} has an unknown binlog type",
                        self.target, self.tables[t].stream
                    ))
                })?;
                types.push((ty, tme.get_column_metadata(i).unwrap_or(&[]).to_vec()));
            }
            self.decoders.insert(table_id, Decoder { map, types });
        }
        let Some(decoder) = self.decoders.get(&table_id) else {
            return Ok(());
        };
        let table = &self.tables[t];
        let key_at = table.key_positions();
        let (map, types) = (&decoder.map, &decoder.types);
        let row_of = |values: Vec<Option<BinlogValue<'_>>>| -> Result<(Key, Row), StageError> {
            let mut cells: Vec<Option<Value>> = vec![None; table.columns.len()];
            for (value, &to) in values.into_iter().zip(map) {
                let (Some(value), Some(to)) = (value, to) else {
                    continue;
                };
                let column = &table.columns[to];
                let v = from_binlog(column, value).map_err(|e| {
                    definite(format!(
                        "source {}: table {} column {}: {e}",
                        self.target, table.stream, column.name
                    ))
                })?;
                cells[to] = Some(v);
            }
            let mut key = Vec::with_capacity(key_at.len());
            for &i in &key_at {
                match &cells[i] {
                    Some(v) => key.push(v.clone()),
                    None => {
                        return Err(definite(format!(
                            "source {}: table {}: a binlog row without key column {}: is \
                             binlog_row_image FULL?",
                            self.target, table.stream, table.columns[i].name
                        )));
                    }
                }
            }
            let row = Row(table
                .columns
                .iter()
                .zip(cells)
                .filter_map(|(c, v)| v.map(|v| (c.name.clone(), v)))
                .collect());
            Ok((Key(key), row))
        };
        let op = match &rows {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => Op::Insert,
            RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => Op::Delete,
            _ => Op::Update,
        };
        let stream = table.stream.clone();
        let unreadable = |e: std::io::Error| {
            definite(format!(
                "source {}: table {stream}: an unreadable binlog row: {e}",
                self.target
            ))
        };
        let n = map.len();
        let before_present: Option<Vec<bool>> = rows
            .columns_before_image()
            .map(|b| (0..n).map(|i| b.get(i).is_some_and(|x| *x)).collect());
        let after_present: Option<Vec<bool>> = rows
            .columns_after_image()
            .map(|b| (0..n).map(|i| b.get(i).is_some_and(|x| *x)).collect());
        let mut buf = ParseBuf(rows.rows_data());
        let mut changes = Vec::new();
        while !buf.is_empty() {
            let before = match &before_present {
                Some(p) => Some(row_of(read_image(&mut buf, p, types).map_err(unreadable)?)?),
                None => None,
            };
            let after = match &after_present {
                Some(p) => Some(row_of(read_image(&mut buf, p, types).map_err(unreadable)?)?),
                None => None,
            };
            let change = |op: Op, key: Key, before: Option<Row>, after: Option<Row>| Change {
                stream: stream.clone(),
                op,
                key,
                before,
                after,
                commit_time_us: 0,
                position: None,
                txn: None,
                unchanged: Vec::new(),
            };
            match (op, before, after) {
                (Op::Insert, _, Some((key, row))) => {
                    changes.push(change(Op::Insert, key, None, Some(row)))
                }
                (Op::Delete, Some((key, row)), _) => {
                    changes.push(change(Op::Delete, key, Some(row), None))
                }
                (Op::Update, Some((old_key, old)), Some((key, row))) => {
                    if old_key == key {
                        changes.push(change(Op::Update, key, Some(old), Some(row)));
                    } else {
                        changes.push(change(Op::Delete, old_key, Some(old), None));
                        changes.push(change(Op::Insert, key, None, Some(row)));
                    }
                }
                _ => {
                    return Err(definite(format!(
                        "source {}: table {stream}: a binlog row event without its row image",
                        self.target
                    )));
                }
            }
        }
        let txn = self.txn.get_or_insert_with(|| Txn {
            domain: None,
            id: String::new(),
            changes: Vec::new(),
            standalone: false,
            begun: true,
        });
        let id = (!txn.id.is_empty()).then(|| txn.id.clone());
        txn.changes.reserve(changes.len());
        for mut c in changes {
            c.txn.clone_from(&id);
            txn.changes.push(c);
        }
        Ok(())
    }

    /// For each column of a table map event, the column of table `t` it is. Re-reads the
    /// table once when an `ALTER TABLE` passed or the event does not fit.
    async fn column_map(
        &mut self,
        t: usize,
        tme: &TableMapEvent<'static>,
    ) -> Result<Vec<Option<usize>>, StageError> {
        if self.stale.remove(&t) {
            self.reload(t).await?;
        }
        match self.try_map(t, tme, false) {
            Ok(map) => Ok(map),
            Err(_) => {
                self.reload(t).await?;
                self.try_map(t, tme, true).map_err(|problem| {
                    definite(format!(
                        "source {}: table {}: {problem}. The binlog row does not fit the \
                         table's columns as they are now (several ALTER TABLEs since this row \
                         was written?): set binlog_row_metadata = FULL on the server, so rows \
                         carry their column names",
                        self.target, self.tables[t].stream
                    ))
                })
            }
        }
    }

    async fn reload(&mut self, t: usize) -> Result<(), StageError> {
        let stream = self.tables[t].stream.clone();
        let before: Vec<String> = self.tables[t]
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let table = self
            .load_one(&stream, self.flavor == Flavor::MariaDb)
            .await?;
        let now: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
        if now != before {
            tracing::info!(source = %self.target, table = %stream, columns = ?now, "table columns changed");
        }
        self.tables[t] = table;
        Ok(())
    }

    /// `gone_ok`: a named column the table no longer has (added and dropped again since
    /// the row was written) is left out of the row (there is nothing to read it as).
    fn try_map(
        &self,
        t: usize,
        tme: &TableMapEvent<'static>,
        gone_ok: bool,
    ) -> Result<Vec<Option<usize>>, String> {
        use mysql_async::binlog::events::OptionalMetadataField;
        let table = &self.tables[t];
        let count = tme.columns_count() as usize;
        let mut names: Option<Vec<String>> = None;
        for field in tme.iter_optional_meta() {
            if let Ok(OptionalMetadataField::ColumnName(n)) = field {
                names = Some(
                    n.iter_names()
                        .filter_map(Result::ok)
                        .map(|n| n.name().into_owned())
                        .collect(),
                );
            }
        }
        let mut map = Vec::with_capacity(count);
        for i in 0..count {
            let to = match &names {
                Some(names) => {
                    let name = names
                        .get(i)
                        .ok_or_else(|| format!("column {i} has no name in the binlog"))?;
                    match table.columns.iter().position(|c| &c.name == name) {
                        Some(at) => Some(at),
                        None if gone_ok => {
                            tracing::warn!(source = %self.target, table = %table.stream, column = %name, "a binlog row has a column the table no longer has; its values are left out");
                            None
                        }
                        None => {
                            return Err(format!(
                                "the binlog has a column {name} the table has not"
                            ));
                        }
                    }
                }
                None => {
                    if count != table.columns.len() {
                        return Err(format!(
                            "the binlog row has {count} columns, the table {}",
                            table.columns.len()
                        ));
                    }
                    Some(i)
                }
            };
            if let Some(to) = to {
                let ty = tme
                    .get_column_type(i)
                    .ok()
                    .flatten()
                    .ok_or_else(|| format!("column {i} has an unknown binlog type"))?;
                let column = &table.columns[to];
                if !binlog_type_fits(&column.kind, ty) {
                    return Err(format!(
                        "column {} ({}) arrives as binlog type {ty:?}",
                        column.name, column.type_name
                    ));
                }
            }
            map.push(to);
        }
        Ok(map)
    }

    /// The position that stands for everything handed out so far.
    fn position(&self) -> Position {
        let stream = Position::Binlog {
            file: self.handed.file.clone(),
            offset: self.handed.offset,
            gtid: self.handed_gtid.clone(),
            server: Some(self.server_number),
        };
        match &self.handed_cursor {
            Some((t, after)) if *t < self.tables.len() => Position::Snapshot {
                stream: Box::new(stream),
                table: self.tables[*t].stream.clone(),
                after: after.clone(),
            },
            _ => stream,
        }
    }

    async fn poll_inner(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Captured>, StageError> {
        if self.pending.is_none()
            && !self.ready.iter().any(|r| r.read)
            && self.has_read_work()
            && let Err(e) = self.read_next(max).await
        {
            // The connection (and its snapshot) may be gone: start over with new ones.
            self.conn = None;
            self.snap = None;
            return Err(e);
        }
        let placed = self.place_pending();
        let front_read = self.ready.front().is_some_and(|r| r.read);
        if !(placed || front_read) {
            let wait = if self.pending.is_some() {
                wait.max(Duration::from_millis(200))
            } else {
                wait
            };
            self.read_stream(max, wait).await?;
        }
        // Hand out whole transactions, up to `max` changes (at least one); read rows alone.
        let mut changes: Vec<Change> = Vec::new();
        let mut end = None;
        let mut kind = BatchKind::Incremental;
        let mut progress = None;
        while let Some(next) = self.ready.front() {
            if !changes.is_empty() && (next.read || changes.len() + next.changes.len() > max) {
                break;
            }
            if end.is_some() && next.read {
                break;
            }
            let Some(ready) = self.ready.pop_front() else {
                break;
            };
            self.ready_changes -= ready.changes.len();
            if ready.gtid.is_some() {
                self.handed_gtid = ready.gtid;
            }
            if changes.is_empty() {
                changes = ready.changes;
            } else {
                changes.extend(ready.changes);
            }
            end = Some(ready.end);
            if ready.read {
                kind = ready.kind;
                if let Some(cursor) = ready.cursor {
                    self.handed_cursor = Some(cursor);
                }
                if let Some(p) = ready.progress {
                    self.request_handed(&p);
                    progress = Some(p);
                }
                break;
            }
        }
        let idle = end.is_none()
            && self.txn.is_none()
            && self.ready.is_empty()
            && self.pending.is_none()
            && self.seen > self.handed
            && self.last_handed_at.elapsed() >= IDLE_POSITION_EVERY;
        if idle && let Some(gtid) = self.seen_gtid_text() {
            self.handed_gtid = Some(gtid);
        }
        if let Some(end) = end.or(idle.then(|| self.seen.clone())) {
            if end > self.handed {
                self.handed = end;
            }
            self.last_handed_at = Instant::now();
            if self
                .handed_cursor
                .as_ref()
                .is_some_and(|(t, _)| *t >= self.tables.len())
            {
                self.handed_cursor = None;
                self.fresh_at = None;
                self.snap = None;
                // End the snapshot's read-only transaction; a connection that cannot is
                // dropped (the next query connects anew).
                if let Some(conn) = self.conn.as_mut()
                    && let Err(e) = conn.query_drop("ROLLBACK").await
                {
                    tracing::debug!(source = %self.target, error = %e, "ending the snapshot transaction");
                    self.conn = None;
                }
                tracing::info!(source = %self.target, "initial copy done; streaming");
            }
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

    /// The next chunk of the fresh start's copy as PostgreSQL `COPY` text, read under the
    /// first snapshot (which the stream has not moved from): see [`Source::copy_chunk`].
    async fn copy_chunk_inner(&mut self, max_rows: usize) -> Result<Option<CopyChunk>, StageError> {
        let Some(fresh) = self.fresh_at.clone() else {
            return Ok(None);
        };
        let usable = !self.direct_ended
            && self.pending.is_none()
            && self.ready.is_empty()
            && self.handed == fresh
            && self.snap.as_ref().is_some_and(|s| s.at == fresh);
        let Some((t, after)) = self.copy.clone().filter(|_| usable) else {
            self.direct_ended = true;
            return Ok(None);
        };
        if t >= self.tables.len() {
            return Ok(None);
        }
        if self.estimate.as_ref().is_none_or(|(at, _)| *at != t) {
            let table = &self.tables[t];
            let (db, name) = (table.database.clone(), table.name.clone());
            let err = self.error("reading the table's size");
            let conn = self.conn().await?;
            let rows: Option<Option<u64>> = conn
                .exec_first(
                    "SELECT TABLE_ROWS FROM information_schema.TABLES \
                     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (db, name),
                )
                .await
                .map_err(err)?;
            self.estimate = Some((t, rows.flatten()));
            tracing::info!(source = %self.target, table = %self.tables[t].stream, "copying the table directly into the sink");
        }
        let limit = max_rows.min(self.opts.chunk_rows).max(1);
        let (data, chunk_rows, last) = self.read_copy_text(t, after.as_ref(), limit).await?;
        let next: Cursor = if chunk_rows == limit as u64 {
            (t, last)
        } else {
            (t + 1, None)
        };
        let table = &self.tables[t];
        self.chunks += 1;
        self.chunk_starts.push_back((self.chunks, (t, after)));
        if self.chunk_starts.len() > 64 {
            self.chunk_starts.pop_front();
        }
        self.copy = Some(next.clone());
        self.handed_cursor = Some(next);
        Ok(Some(CopyChunk {
            number: self.chunks,
            stream: table.stream.clone(),
            columns: table.columns.iter().map(|c| c.name.clone()).collect(),
            data,
            binary: false,
            rows: chunk_rows,
            table_rows: self.estimate.as_ref().and_then(|(_, n)| *n),
            position: self.position(),
        }))
    }

    /// A request's part was handed out: its progress holds from now on.
    fn request_handed(&mut self, progress: &RequestProgress) {
        let Some(asked) = self.requests.front_mut().filter(|a| a.id == progress.id) else {
            return;
        };
        if progress.done {
            self.requests.pop_front();
            return;
        }
        if progress.after.is_some() {
            asked.handed = progress.after.clone();
        }
    }
}

/// A requested key value in this source's form for a column (the target's form of a key may
/// differ: a PostgreSQL numeric for a BIGINT UNSIGNED, text for an ENUM, ...).
fn normalize_key(column: &super::schema::Column, value: &Value) -> Result<Value, String> {
    use super::schema::Kind;
    let bad = || {
        format!(
            "{value} is not a value of key column {} ({})",
            column.name, column.type_name
        )
    };
    Ok(match (&column.kind, value) {
        (Kind::Int { .. } | Kind::Year, Value::Int(i)) => Value::Int(*i),
        (Kind::Int { .. } | Kind::Year, Value::Decimal(d)) => {
            let text = d.as_str();
            match text.parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => {
                    text.parse::<u64>().map_err(|_| bad())?;
                    value.clone()
                }
            }
        }
        (Kind::Int { .. } | Kind::Year, Value::Text(t)) => match t.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => {
                t.parse::<u64>().map_err(|_| bad())?;
                Value::Decimal(tidesync_core::Decimal::parse(t).map_err(|_| bad())?)
            }
        },
        (Kind::Decimal, Value::Int(i)) => {
            Value::Decimal(tidesync_core::Decimal::parse(&i.to_string()).map_err(|_| bad())?)
        }
        (Kind::Text(_) | Kind::Enum(_) | Kind::Set(_), Value::Text(_)) => value.clone(),
        (Kind::Binary { .. }, Value::Text(t)) => Value::Bytes(t.as_bytes().to_vec()),
        (_, v) => v.clone(),
    })
}

/// A MariaDB GTID position (`d-s-n,d-s-n`, one per domain) by domain.
fn gtid_domains(gtid: Option<&str>) -> std::collections::BTreeMap<u32, String> {
    let mut out = std::collections::BTreeMap::new();
    for one in gtid
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        if let Some(domain) = one.split('-').next().and_then(|d| d.parse().ok()) {
            out.insert(domain, one.to_owned());
        }
    }
    out
}

/// `seq_no` (u64), `domain_id` (u32) and flags of a MariaDB GTID event's body.
fn parse_mariadb_gtid(data: &[u8]) -> Option<(u64, u32, u8)> {
    let seq = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    let flags = *data.get(12)?;
    Some((seq, domain, flags))
}

fn uuid_text(sid: &[u8; 16]) -> String {
    let hex: String = sid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Where the server's binlog stands beside a pipeline's position, for `tidesync status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogStatus {
    /// `FILE:OFFSET` the server writes at.
    pub server: String,
    /// The oldest binlog file the server still has, and how many it has.
    pub oldest: String,
    pub files: usize,
    /// Bytes of binlog the server keeps.
    pub kept_bytes: u64,
    /// The pipeline's binlog file, if it has a position.
    pub pipeline_file: Option<String>,
    /// Bytes of binlog after the pipeline's position; `None` when it has none or its file is
    /// no longer on the server.
    pub behind: Option<u64>,
}

impl MysqlLogSource {
    /// The server's binlog files beside the stored `position` (the file it reads must still
    /// be there, else the pipeline needs a new snapshot).
    pub async fn binlog_status(
        mut self,
        position: Option<&Position>,
    ) -> Result<BinlogStatus, StageError> {
        let server = self.master_status().await?;
        let err = self.error("listing the binlog files");
        let conn = self.conn().await?;
        let files: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await.map_err(err)?;
        let files: Vec<(String, u64)> = files
            .into_iter()
            .filter_map(|mut r| {
                let name: Option<String> = r.take_opt(0).and_then(Result::ok);
                let size: Option<u64> = r.take_opt(1).and_then(Result::ok);
                Some((name?, size?))
            })
            .collect();
        let at = match position {
            Some(Position::Binlog { file, offset, .. }) => Some((file.clone(), *offset)),
            Some(Position::Snapshot { stream, .. }) => match stream.as_ref() {
                Position::Binlog { file, offset, .. } => Some((file.clone(), *offset)),
                _ => None,
            },
            _ => None,
        };
        let behind = at.as_ref().and_then(|(file, offset)| {
            let i = files.iter().position(|(f, _)| f == file)?;
            Some(
                files[i..]
                    .iter()
                    .map(|(_, size)| *size)
                    .sum::<u64>()
                    .saturating_sub(*offset),
            )
        });
        Ok(BinlogStatus {
            server: format!("{}:{}", server.file, server.offset),
            oldest: files.first().map(|(f, _)| f.clone()).unwrap_or_default(),
            files: files.len(),
            kept_bytes: files.iter().map(|(_, size)| size).sum(),
            pipeline_file: at.map(|(f, _)| f),
            behind,
        })
    }
}

impl Source for MysqlLogSource {
    fn open(&mut self, from: Option<Position>) -> BoxFuture<'_, Result<Opened, StageError>> {
        Box::pin(async move {
            self.stream = None;
            self.txn = None;
            self.ready.clear();
            self.ready_changes = 0;
            self.pending = None;
            self.copy = None;
            self.handed_cursor = None;
            self.fresh_at = None;
            self.conn = None;
            self.snap = None;
            self.chunk_starts.clear();
            self.direct_ended = false;
            self.estimate = None;
            self.check_server().await?;
            self.load_tables().await?;
            self.snapshot_time_us = tidesync_core::time::now_us();
            let target = self.target.clone();
            let not_ours = |p: &Position| {
                definite(format!(
                    "source {target}: the stored position {p} is not a MySQL binlog position; \
                     was the pipeline's source changed? Run `tidesync drop` for the pipeline and \
                     start again"
                ))
            };
            let start = match from {
                None => {
                    self.open_snapshot().await?;
                    let at = self
                        .snap
                        .as_ref()
                        .map(|s| s.at.clone())
                        .ok_or_else(|| definite("no snapshot"))?;
                    self.check_replication(&at).await?;
                    tracing::info!(source = %self.target, at = %format!("{}:{}", at.file, at.offset), "copying the tables under a consistent snapshot");
                    self.handed = at.clone();
                    self.seen = at.clone();
                    let gtid = self.snap.as_ref().and_then(|s| s.gtid.clone());
                    self.set_gtid(gtid);
                    self.start_gtid = None;
                    self.fresh_at = Some(at);
                    self.copy = Some((0, None));
                    self.handed_cursor = Some((0, None));
                    Some(self.position())
                }
                Some(Position::Binlog {
                    file,
                    offset,
                    gtid,
                    server,
                }) => {
                    self.resume_from(file, offset, gtid, server).await?;
                    None
                }
                Some(Position::Snapshot {
                    stream,
                    table,
                    after,
                }) => {
                    let Position::Binlog {
                        file,
                        offset,
                        gtid,
                        server,
                    } = *stream
                    else {
                        return Err(not_ours(&stream));
                    };
                    let Some(t) = self.tables.iter().position(|x| x.stream == table) else {
                        return Err(definite(format!(
                            "source {target}: the stored snapshot was copying table {table}, \
                             which is no longer in the config; run `tidesync drop` for the \
                             pipeline and start again"
                        )));
                    };
                    self.resume_from(file, offset, gtid, server).await?;
                    tracing::info!(source = %self.target, table = %table, "resuming the interrupted initial copy while streaming");
                    self.copy = Some((t, after.clone()));
                    self.handed_cursor = Some((t, after));
                    None
                }
                Some(other) => return Err(not_ours(&other)),
            };
            self.last_handed_at = Instant::now();
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
        Box::pin(self.poll_inner(max, wait))
    }

    fn copy_chunk(
        &mut self,
        max_rows: usize,
    ) -> BoxFuture<'_, Result<Option<CopyChunk>, StageError>> {
        Box::pin(async move {
            let chunk = self.copy_chunk_inner(max_rows).await;
            if chunk.is_err() {
                // `poll` goes on from what was handed out, with a new connection.
                self.direct_ended = true;
                self.conn = None;
                self.snap = None;
            }
            chunk
        })
    }

    fn copy_abandon(&mut self, chunk: &CopyChunk) {
        self.direct_ended = true;
        let Some(at) = self
            .chunk_starts
            .iter()
            .position(|(number, _)| *number == chunk.number)
        else {
            tracing::error!(source = %self.target, chunk = chunk.number, "asked to rewind to a chunk it does not know; going on from what it handed out");
            return;
        };
        let (_, start) = self.chunk_starts[at].clone();
        self.chunk_starts.truncate(at);
        self.copy = Some(start.clone());
        self.handed_cursor = Some(start);
    }

    fn ack(&mut self, _position: Position) -> BoxFuture<'_, Result<(), StageError>> {
        // The server keeps binlogs by its own retention; there is nothing to release.
        Box::pin(async { Ok(()) })
    }

    fn release(&mut self) {
        if self.stream.is_some() {
            tracing::info!(source = %self.target, "closing the binlog stream until the pipeline can take changes again");
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
            RequestKind::Table { after } => (None, after),
        };
        self.requests.push_back(Asked {
            id: request.id,
            table,
            keys,
            next: after.clone(),
            handed: after,
            finished: false,
        });
        Ok(())
    }

    fn remove(&mut self) -> BoxFuture<'_, Result<Vec<String>, StageError>> {
        // Nothing is installed on the server: a replica connection leaves nothing behind.
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binlog_positions_order_by_file_number_then_offset() {
        let p = |file: &str, offset| BinlogPos {
            file: file.into(),
            offset,
        };
        assert!(p("binlog.000002", 4) > p("binlog.000001", 900));
        assert!(p("binlog.1000000", 4) > p("binlog.999999", 900));
        assert!(p("binlog.000001", 900) > p("binlog.000001", 4));
    }

    #[test]
    fn gtid_positions_split_by_domain() {
        let d = gtid_domains(Some("0-1-42, 3-2-7"));
        assert_eq!(d.get(&0).map(String::as_str), Some("0-1-42"));
        assert_eq!(d.get(&3).map(String::as_str), Some("3-2-7"));
        assert!(gtid_domains(None).is_empty());
        assert!(gtid_domains(Some("")).is_empty());
    }

    #[test]
    fn mariadb_gtid_events_parse() {
        let mut data = 42_u64.to_le_bytes().to_vec();
        data.extend(7_u32.to_le_bytes());
        data.push(FL_STANDALONE);
        assert_eq!(parse_mariadb_gtid(&data), Some((42, 7, 1)));
        assert_eq!(parse_mariadb_gtid(&data[..10]), None);
    }

    #[test]
    fn server_ids_are_stable_and_away_from_small_ones() {
        let a = default_server_id("orders");
        assert_eq!(a, default_server_id("orders"));
        assert_ne!(a, default_server_id("orders2"));
        assert!(a >= 1_000_000 && a < i32::MAX as u32);
    }
}
