//! [`MysqlQueryReader`]: the `diff` mode's reader for MySQL/MariaDB.
//!
//! A query's columns come from the server's own description of `SELECT * FROM (query) AS q`
//! (a prepared statement's column definitions: type, flags, length, decimals, character set),
//! so describing a query reads none of its rows. Values are read with the binary protocol
//! (prepared statements type their values) and converted by [`crate::mysql::value::convert`],
//! the same function the log source's snapshot uses, so a cell reads the same in both modes.
//!
//! A read is `SELECT * FROM (query) AS q ORDER BY ..` inside
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY` (REPEATABLE READ), streamed row by
//! row into pages. Text keys are ordered by `CAST(CONVERT(q.k USING utf8mb4) AS BINARY)`: the
//! UTF-8 bytes, whatever the column's collation (case-insensitive, PAD SPACE) or character set
//! (latin1's bytes do not order as their UTF-8), which is the order [`super::ord`] encodes.
//! Numbers, dates and times order as they are.
//!
//! A read of changed rows ([`QueryReader::read_changed`]) is the same read, with
//! `WHERE <changed> >= ?` and the changed column first in the `ORDER BY`. The filter compares
//! with the very expression the sort uses (a text column by its UTF-8 bytes), so "at or after
//! the watermark" means at or after it in the order the rows arrive. The watermark is bound as
//! a parameter of its column's type (a `Timestamp` as a DATETIME, which the UTC session reads
//! as UTC; an exact decimal cast to the column's DECIMAL, not compared as a double). Rows whose
//! changed column is NULL come first without a watermark and never match one.
//!
//! Sessions run with `time_zone = '+00:00'` (TIMESTAMP values are UTC instants) and
//! `SET NAMES utf8mb4` (text arrives as UTF-8). While a page waits for its receiver the server
//! waits to write; `net_write_timeout` is raised so a slow consumer does not cut the read.
//!
//! The connection is opened on first use. After any error in a read, or a read stopped early
//! (its receiver closed), it is closed without reading the rest of the result (the server
//! notices and stops); the next call opens a new one.
//!
//! MariaDB describes its JSON columns as LONGTEXT: their values read as `Text` here (the log
//! source, which reads `information_schema`, gives `Json`).

use std::time::Duration;

use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use tidesync_core::mysql::{describe, describe_url, mysql_url, quote_ident};
use tidesync_core::{BoxFuture, Dialect, StageError, Value};
use tokio::sync::mpsc;

use super::reader::{Page, QueryColumn, QueryReader, derived, short_query};
use crate::mysql::schema::{Charset, Column, Kind, split_name};
use crate::mysql::value::{Origin, convert, key_param};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Describing a query or a table: a prepare waits for metadata locks (an `ALTER TABLE` in
/// progress), so it is bounded. Reads are not (a large sort may take long before its first
/// row); TCP keepalive finds a dead server there.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(120);

const KEEPALIVE: Duration = Duration::from_secs(30);

/// How long closing a connection with an unread result may read what is already on its way
/// before the socket is closed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// `utf8mb4`'s bytes per character: the server gives text lengths in the session's
/// character set, which is utf8mb4.
const UTF8MB4_MAXLEN: u32 = 4;

/// The `binary` character set (binary strings and blobs).
const BINARY_CHARSET: u16 = 63;

/// Why a MySQL/MariaDB query or table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MysqlReadError {
    #[error("source {db}: invalid connection URL: {problem}")]
    Url { db: String, problem: String },
    #[error("source {db}: connecting: no answer within {secs} s")]
    ConnectTimeout { db: String, secs: u64 },
    #[error("source {db}: {context}: no answer within {secs} s")]
    Timeout {
        db: String,
        context: String,
        secs: u64,
    },
    /// The server or the connection failed; `transient` when retrying may help.
    #[error("source {db}: {context}: {problem}")]
    Server {
        db: String,
        context: String,
        problem: String,
        transient: bool,
    },
    #[error(
        "source {db}: query `{query}` returns more than one column named {column}; name them \
         apart (`AS`)"
    )]
    DuplicateColumn {
        db: String,
        query: String,
        column: String,
    },
    #[error("source {db}: query `{query}` column {column}: {problem}")]
    Column {
        db: String,
        query: String,
        column: String,
        problem: String,
    },
    #[error(
        "source {db}: query `{query}` now returns the columns {now:?}, not {described:?} as \
         when it was described"
    )]
    Changed {
        db: String,
        query: String,
        described: Vec<String>,
        now: Vec<String>,
    },
    #[error(
        "source {db}: table {table} has no database: write it `db.table` or name a database \
         in the URL"
    )]
    NoDatabase { db: String, table: String },
    #[error("source {db}: table {table} does not exist (database {database})")]
    NoTable {
        db: String,
        table: String,
        database: String,
    },
    #[error(
        "source {db}: table {table} has no primary key; give the stream's `key` (the columns \
         that identify a row)"
    )]
    NoPrimaryKey { db: String, table: String },
}

impl From<MysqlReadError> for StageError {
    fn from(e: MysqlReadError) -> Self {
        match &e {
            MysqlReadError::ConnectTimeout { .. }
            | MysqlReadError::Timeout { .. }
            | MysqlReadError::Server {
                transient: true, ..
            } => StageError::transient(e),
            _ => StageError::definite(e),
        }
    }
}

/// Reads the queries of one `diff` source on a MySQL or MariaDB server.
#[derive(Debug)]
pub struct MysqlQueryReader {
    url: String,
    /// The URL without its password, for messages.
    db: String,
    conn: Option<Conn>,
}

/// What [`QueryReader::read_changed`] adds to a read: the column it filters and sorts by
/// first, and the value its rows are at or after (`None`: every row).
#[derive(Debug, Clone, Copy)]
struct ChangedSince<'a> {
    column: usize,
    since: Option<&'a Value>,
}

/// How a read ended.
enum ReadEnd {
    Done,
    /// The receiver was closed; the rest of the result is unread.
    Stopped,
}

impl MysqlQueryReader {
    /// A reader of the database at `url` (`mysql://` or `mariadb://`; its database is where
    /// tables without a `db.` part live). Connects on first use.
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        MysqlQueryReader {
            db: describe_url(&url),
            url,
            conn: None,
        }
    }

    fn server_error(&self, context: &str, e: &mysql_async::Error) -> MysqlReadError {
        let (problem, transient) = describe(e);
        MysqlReadError::Server {
            db: self.db.clone(),
            context: context.to_owned(),
            problem,
            transient,
        }
    }

    async fn connect(&self) -> Result<Conn, MysqlReadError> {
        let opts = Opts::from_url(&mysql_url(&self.url)).map_err(|e| MysqlReadError::Url {
            db: self.db.clone(),
            problem: e.to_string(),
        })?;
        let opts = OptsBuilder::from_opts(opts)
            .tcp_keepalive(Some(KEEPALIVE))
            .init(vec![
                "SET NAMES utf8mb4",
                "SET SESSION time_zone = '+00:00'",
                // Seconds the server waits for us to take the next packet.
                "SET SESSION net_write_timeout = 3600",
            ]);
        match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
            Err(_) => Err(MysqlReadError::ConnectTimeout {
                db: self.db.clone(),
                secs: CONNECT_TIMEOUT.as_secs(),
            }),
            Ok(r) => r.map_err(|e| self.server_error("connecting", &e)),
        }
    }

    async fn conn(&mut self) -> Result<&mut Conn, MysqlReadError> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        Ok(self.conn.insert(conn))
    }

    /// Closes the connection (the next call opens a new one), without reading much of an
    /// unread result: the server stops when the socket closes.
    async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            match tokio::time::timeout(CLOSE_TIMEOUT, conn.disconnect()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(db = %self.db, error = %e, "closing the connection"),
                Err(_) => tracing::debug!(db = %self.db, "closed the connection unread"),
            }
        }
    }

    /// Runs `f` on the connection; a transient error or a timeout closes it.
    async fn describing<T>(
        &mut self,
        context: &str,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, mysql_async::Error>,
    ) -> Result<T, MysqlReadError> {
        let conn = self.conn().await?;
        let result = tokio::time::timeout(DESCRIBE_TIMEOUT, f(conn)).await;
        let err = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => self.server_error(context, &e),
            Err(_) => MysqlReadError::Timeout {
                db: self.db.clone(),
                context: context.to_owned(),
                secs: DESCRIBE_TIMEOUT.as_secs(),
            },
        };
        if !matches!(
            err,
            MysqlReadError::Server {
                transient: false,
                ..
            }
        ) {
            self.close().await;
        }
        Err(err)
    }

    async fn columns_inner(&mut self, query: &str) -> Result<Vec<QueryColumn>, MysqlReadError> {
        let sql = derived(query);
        let context = format!("describing query `{}`", short_query(query));
        let described = self
            .describing(&context, async |conn| {
                let stmt = conn.prep(sql).await?;
                let columns = stmt.columns();
                conn.close(stmt).await?;
                Ok(columns)
            })
            .await?;
        let columns = self.columns_of(query, &described)?;
        Ok(columns
            .into_iter()
            .map(|(column, nullable)| QueryColumn {
                name: column.name,
                type_name: column.type_name,
                nullable,
            })
            .collect())
    }

    /// The columns of `query` as the server describes them, with their nullability; a
    /// duplicate name or an unsupported type is an error naming the column.
    fn columns_of(
        &self,
        query: &str,
        described: &[mysql_async::Column],
    ) -> Result<Vec<(Column, bool)>, MysqlReadError> {
        let mut out: Vec<(Column, bool)> = Vec::with_capacity(described.len());
        for c in described {
            let name = c.name_str().into_owned();
            // MySQL's column names are case-insensitive.
            if out.iter().any(|(o, _)| o.name.eq_ignore_ascii_case(&name)) {
                return Err(MysqlReadError::DuplicateColumn {
                    db: self.db.clone(),
                    query: short_query(query),
                    column: name,
                });
            }
            let (kind, type_name) = kind_of(c).map_err(|problem| MysqlReadError::Column {
                db: self.db.clone(),
                query: short_query(query),
                column: name.clone(),
                problem,
            })?;
            let nullable = !c.flags().contains(ColumnFlags::NOT_NULL_FLAG);
            out.push((
                Column {
                    name,
                    kind,
                    type_name,
                    nullable,
                },
                nullable,
            ));
        }
        Ok(out)
    }

    async fn primary_key_inner(&mut self, table: &str) -> Result<Vec<String>, MysqlReadError> {
        let default_db = Opts::from_url(&mysql_url(&self.url))
            .ok()
            .and_then(|o| o.db_name().map(str::to_owned))
            .unwrap_or_default();
        let (database, name) = split_name(table, &default_db);
        if database.is_empty() {
            return Err(MysqlReadError::NoDatabase {
                db: self.db.clone(),
                table: table.to_owned(),
            });
        }
        let context = format!("reading the primary key of table {table}");
        let (exists, key) = self
            .describing(&context, async |conn| {
                let exists: Option<u8> = conn
                    .exec_first(
                        "SELECT 1 FROM information_schema.TABLES \
                         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                        (&database, &name),
                    )
                    .await?;
                let key: Vec<String> = conn
                    .exec(
                        "SELECT CAST(COLUMN_NAME AS CHAR) \
                         FROM information_schema.KEY_COLUMN_USAGE \
                         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
                         AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                        (&database, &name),
                    )
                    .await?;
                Ok((exists.is_some(), key))
            })
            .await?;
        if !exists {
            return Err(MysqlReadError::NoTable {
                db: self.db.clone(),
                table: table.to_owned(),
                database,
            });
        }
        if key.is_empty() {
            return Err(MysqlReadError::NoPrimaryKey {
                db: self.db.clone(),
                table: table.to_owned(),
            });
        }
        Ok(key)
    }

    async fn read_inner(
        &mut self,
        query: &str,
        columns: &[QueryColumn],
        changed: Option<ChangedSince<'_>>,
        order: &[usize],
        page_rows: usize,
        out: &mpsc::Sender<Page>,
    ) -> Result<ReadEnd, MysqlReadError> {
        let context = format!("reading query `{}`", short_query(query));
        let db = self.db.clone();
        let conn = self.conn().await?;
        let ended = read_ordered(conn, query, columns, changed, order, page_rows, out).await;
        let shown = short_query(query);
        let err = match ended {
            Ok(ReadEnd::Done) => return Ok(ReadEnd::Done),
            Ok(ReadEnd::Stopped) => {
                self.close().await;
                return Ok(ReadEnd::Stopped);
            }
            Err(ReadFailure::Server(e)) => self.server_error(&context, &e),
            Err(ReadFailure::Changed(now)) => MysqlReadError::Changed {
                db,
                query: shown,
                described: columns.iter().map(|c| c.name.clone()).collect(),
                now,
            },
            Err(ReadFailure::Order(i, n)) => MysqlReadError::Column {
                db,
                query: shown,
                column: format!("#{i}"),
                problem: format!("ordered by column position {i} of {n}"),
            },
            Err(ReadFailure::Width(got, want)) => MysqlReadError::Column {
                db,
                query: shown,
                column: "*".to_owned(),
                problem: format!("a row of {got} values for {want} columns"),
            },
            Err(ReadFailure::Value(column, problem)) => MysqlReadError::Column {
                db,
                query: shown,
                column,
                problem,
            },
        };
        // The transaction may be open and a result unread: start over on a new connection.
        self.close().await;
        Err(err)
    }

    fn log_end(&self, end: ReadEnd) {
        match end {
            ReadEnd::Done => tracing::debug!(db = %self.db, "query read"),
            ReadEnd::Stopped => {
                tracing::debug!(db = %self.db, "query read stopped: receiver closed")
            }
        }
    }
}

/// Reads `query` on `conn` in one consistent snapshot, ordered by the columns at `order`
/// (after the `changed` column, whose rows are at or after its `since`, when given), into pages
/// on `out`.
async fn read_ordered(
    conn: &mut Conn,
    query: &str,
    columns: &[QueryColumn],
    changed: Option<ChangedSince<'_>>,
    order: &[usize],
    page_rows: usize,
    out: &mpsc::Sender<Page>,
) -> Result<ReadEnd, ReadFailure> {
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await?;
    let stmt = conn.prep(derived(query)).await?;
    let described = stmt.columns();
    conn.close(stmt).await?;
    let names: Vec<String> = described
        .iter()
        .map(|c| c.name_str().into_owned())
        .collect();
    if names.len() != columns.len() || names.iter().zip(columns).any(|(n, c)| *n != c.name) {
        return Err(ReadFailure::Changed(names));
    }
    let described_column = |i: usize| -> Result<Column, ReadFailure> {
        let c = described
            .get(i)
            .ok_or(ReadFailure::Order(i, described.len()))?;
        let name = c.name_str().into_owned();
        let (kind, type_name) =
            kind_of(c).map_err(|problem| ReadFailure::Value(name.clone(), problem))?;
        Ok(Column {
            name,
            kind,
            type_name,
            nullable: true,
        })
    };
    let mut keys = Vec::with_capacity(order.len() + 1);
    let mut filter = None;
    let mut params = Vec::new();
    if let Some(ChangedSince { column, since }) = changed {
        let c = described_column(column)?;
        let expr = order_expr(&c.name, &c.kind);
        if let Some(since) = since {
            let (placeholder, param) =
                since_param(&c, since).map_err(|problem| ReadFailure::Value(c.name, problem))?;
            filter = Some(format!("{expr} >= {placeholder}"));
            params.push(param);
        }
        keys.push(expr);
    }
    for &i in order {
        let c = described_column(i)?;
        keys.push(order_expr(&c.name, &c.kind));
    }
    let mut sql = derived(query);
    if let Some(filter) = filter {
        sql = format!("{sql} WHERE {filter}");
    }
    if !keys.is_empty() {
        sql = format!("{sql} ORDER BY {}", keys.join(", "));
    }
    let mut result = conn.exec_iter(sql, params).await?;
    // The result's own description decides how its values read.
    let mut read_as = Vec::with_capacity(described.len());
    for c in result.columns_ref() {
        let name = c.name_str().into_owned();
        let (kind, type_name) =
            kind_of(c).map_err(|problem| ReadFailure::Value(name.clone(), problem))?;
        read_as.push(Column {
            name,
            kind,
            type_name,
            nullable: true,
        });
    }
    let page_rows = page_rows.max(1);
    let mut page: Page = Vec::with_capacity(page_rows.min(1024));
    while let Some(row) = result.next().await? {
        let values = row.unwrap();
        if values.len() != read_as.len() {
            return Err(ReadFailure::Width(values.len(), read_as.len()));
        }
        let mut cells: Vec<Value> = Vec::with_capacity(values.len());
        for (column, value) in read_as.iter().zip(values) {
            let v = convert(column, value, Origin::Query)
                .map_err(|problem| ReadFailure::Value(column.name.clone(), problem))?;
            cells.push(v);
        }
        page.push(cells);
        if page.len() >= page_rows {
            let full = std::mem::replace(&mut page, Vec::with_capacity(page_rows.min(1024)));
            if out.send(full).await.is_err() {
                return Ok(ReadEnd::Stopped);
            }
        }
    }
    drop(result);
    conn.query_drop("COMMIT").await?;
    if !page.is_empty() && out.send(page).await.is_err() {
        return Ok(ReadEnd::Stopped);
    }
    Ok(ReadEnd::Done)
}

/// What stopped a read, before it is put into words.
enum ReadFailure {
    Server(mysql_async::Error),
    /// The query's columns now (they differ from those it was described with).
    Changed(Vec<String>),
    /// An order position past the columns: (position, columns).
    Order(usize, usize),
    /// A row's width: (values, columns).
    Width(usize, usize),
    /// A column's value (or type) could not be read: (column, problem).
    Value(String, String),
}

impl From<mysql_async::Error> for ReadFailure {
    fn from(e: mysql_async::Error) -> Self {
        ReadFailure::Server(e)
    }
}

/// The `ORDER BY` term of column `name` of the derived table `q`: text by its UTF-8 bytes,
/// binary strings by their bytes, everything else by its own (numeric or temporal) order.
fn order_expr(name: &str, kind: &Kind) -> String {
    let col = format!("q.{}", quote_ident(name));
    match kind {
        Kind::Text(_) | Kind::Enum(_) | Kind::Set(_) => {
            format!("CAST(CONVERT({col} USING utf8mb4) AS BINARY)")
        }
        Kind::Binary { .. } => format!("CAST({col} AS BINARY)"),
        _ => col,
    }
}

/// The right side of `<changed> >= ..` (as [`order_expr`] writes the left) and its parameter:
/// `since` as a value of `column`'s type, so the server compares in that type (dates and times
/// as such, unsigned BIGINTs exactly, decimals as decimals, not as doubles; text and binary
/// strings by their bytes).
fn since_param(column: &Column, since: &Value) -> Result<(String, mysql_async::Value), String> {
    if *since == Value::Null {
        return Err("the watermark is NULL, which no row is at or after".to_owned());
    }
    let param = key_param(column, since).map_err(|problem| format!("the watermark: {problem}"))?;
    let placeholder = match &column.kind {
        Kind::Text(_) | Kind::Enum(_) | Kind::Set(_) | Kind::Binary { .. } => {
            "CAST(? AS BINARY)".to_owned()
        }
        // `decimal(p,s)` as described, without `unsigned` (CAST takes none).
        Kind::Decimal => format!(
            "CAST(? AS {})",
            column
                .type_name
                .trim_end_matches(" unsigned")
                .to_uppercase()
        ),
        _ => "?".to_owned(),
    };
    Ok((placeholder, param))
}

/// How a result column's values read, and its type for `CREATE TABLE`, from the server's
/// description of it.
fn kind_of(c: &mysql_async::Column) -> Result<(Kind, String), String> {
    use ColumnType::*;
    let flags = c.flags();
    let unsigned = flags.contains(ColumnFlags::UNSIGNED_FLAG);
    let sign = if unsigned { " unsigned" } else { "" };
    let int = |bytes: u8, name: &str| (Kind::Int { unsigned, bytes }, format!("{name}{sign}"));
    let binary = c.character_set() == BINARY_CHARSET;
    let length = c.column_length();
    let chars = length / UTF8MB4_MAXLEN;
    // Fractional second digits of temporal types (MariaDB may say 39 for "not fixed").
    let fsp = |name: &str| match c.decimals() {
        d @ 1..=6 => format!("{name}({d})"),
        _ => name.to_owned(),
    };
    Ok(match c.column_type() {
        MYSQL_TYPE_TINY => int(1, "tinyint"),
        MYSQL_TYPE_SHORT => int(2, "smallint"),
        MYSQL_TYPE_INT24 => int(3, "mediumint"),
        MYSQL_TYPE_LONG => int(4, "int"),
        MYSQL_TYPE_LONGLONG => int(8, "bigint"),
        MYSQL_TYPE_YEAR => (Kind::Year, "year".to_owned()),
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => {
            // The display length counts the digits, the point and the sign.
            let scale = u32::from(c.decimals());
            let precision = length
                .saturating_sub(u32::from(scale > 0))
                .saturating_sub(u32::from(!unsigned))
                .clamp(1, 65);
            (
                Kind::Decimal,
                format!("decimal({precision},{}){sign}", scale.min(precision)),
            )
        }
        MYSQL_TYPE_FLOAT => (Kind::Float, "float".to_owned()),
        MYSQL_TYPE_DOUBLE => (Kind::Double, "double".to_owned()),
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => (Kind::Date, "date".to_owned()),
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => (Kind::Time, fsp("time")),
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => (Kind::DateTime, fsp("datetime")),
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => (Kind::Timestamp, fsp("timestamp")),
        MYSQL_TYPE_BIT => (
            Kind::Bit { bits: length },
            format!("bit({})", length.clamp(1, 64)),
        ),
        MYSQL_TYPE_JSON => (Kind::Json, "json".to_owned()),
        // ENUM and SET arrive as their labels; the labels themselves are not described.
        MYSQL_TYPE_ENUM => (Kind::Enum(Vec::new()), format!("varchar({})", chars.max(1))),
        MYSQL_TYPE_SET => (Kind::Set(Vec::new()), format!("varchar({})", chars.max(1))),
        MYSQL_TYPE_STRING | MYSQL_TYPE_VAR_STRING | MYSQL_TYPE_VARCHAR
            if flags.contains(ColumnFlags::ENUM_FLAG) =>
        {
            (Kind::Enum(Vec::new()), format!("varchar({})", chars.max(1)))
        }
        MYSQL_TYPE_STRING | MYSQL_TYPE_VAR_STRING | MYSQL_TYPE_VARCHAR
            if flags.contains(ColumnFlags::SET_FLAG) =>
        {
            (Kind::Set(Vec::new()), format!("varchar({})", chars.max(1)))
        }
        t @ (MYSQL_TYPE_STRING | MYSQL_TYPE_VAR_STRING | MYSQL_TYPE_VARCHAR) => {
            let fixed = t == MYSQL_TYPE_STRING;
            match (binary, fixed) {
                (true, true) => (Kind::Binary { pad: None }, format!("binary({length})")),
                (true, false) => (Kind::Binary { pad: None }, format!("varbinary({length})")),
                (false, true) => (Kind::Text(Charset::Utf8), format!("char({chars})")),
                (false, false) => (Kind::Text(Charset::Utf8), format!("varchar({chars})")),
            }
        }
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB => {
            // One type code for the four sizes on the wire: the length tells them apart.
            let size = if binary { length } else { chars };
            let prefix = match size {
                0..=255 => "tiny",
                256..=65_535 => "",
                65_536..=16_777_215 => "medium",
                _ => "long",
            };
            if binary {
                (Kind::Binary { pad: None }, format!("{prefix}blob"))
            } else {
                (Kind::Text(Charset::Utf8), format!("{prefix}text"))
            }
        }
        MYSQL_TYPE_GEOMETRY => (Kind::Binary { pad: None }, "geometry".to_owned()),
        // `SELECT NULL`: only nulls; MySQL's own `CREATE TABLE .. AS SELECT NULL` makes it so.
        MYSQL_TYPE_NULL => (Kind::Binary { pad: None }, "binary(0)".to_owned()),
        other => return Err(format!("type {other:?} is not supported")),
    })
}

impl QueryReader for MysqlQueryReader {
    fn dialect(&self) -> Dialect {
        Dialect::Mysql
    }

    fn describe_db(&self) -> String {
        self.db.clone()
    }

    fn columns<'a>(
        &'a mut self,
        query: &'a str,
    ) -> BoxFuture<'a, Result<Vec<QueryColumn>, StageError>> {
        Box::pin(async move { Ok(self.columns_inner(query).await?) })
    }

    fn primary_key<'a>(
        &'a mut self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StageError>> {
        Box::pin(async move { Ok(self.primary_key_inner(table).await?) })
    }

    fn read<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        order: &'a [usize],
        page_rows: usize,
        out: mpsc::Sender<Page>,
    ) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(async move {
            let end = self
                .read_inner(query, columns, None, order, page_rows, &out)
                .await?;
            self.log_end(end);
            Ok(())
        })
    }

    fn read_changed<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        changed: usize,
        since: Option<&'a Value>,
        order: &'a [usize],
        page_rows: usize,
        out: mpsc::Sender<Page>,
    ) -> BoxFuture<'a, Result<(), StageError>> {
        let changed = ChangedSince {
            column: changed,
            since,
        };
        Box::pin(async move {
            let end = self
                .read_inner(query, columns, Some(changed), order, page_rows, &out)
                .await?;
            self.log_end(end);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_in_messages_are_one_short_line() {
        assert_eq!(short_query("SELECT a,\n\t b  FROM t"), "SELECT a, b FROM t");
        let long = format!("SELECT {} FROM t", "é".repeat(200));
        let short = short_query(&long);
        assert_eq!(short.chars().count(), 121);
        assert!(short.ends_with('…'));
    }

    #[test]
    fn queries_become_derived_tables() {
        assert_eq!(
            derived("SELECT 1 -- one ;\n ; \n"),
            "SELECT * FROM (\nSELECT 1 -- one\n) AS q"
        );
    }

    #[test]
    fn text_keys_order_by_their_utf8_bytes() {
        assert_eq!(
            order_expr("k`1", &Kind::Text(Charset::Latin1)),
            "CAST(CONVERT(q.`k``1` USING utf8mb4) AS BINARY)"
        );
        assert_eq!(
            order_expr("b", &Kind::Binary { pad: None }),
            "CAST(q.`b` AS BINARY)"
        );
        assert_eq!(order_expr("d", &Kind::Date), "q.`d`");
    }

    #[test]
    fn watermarks_bind_as_their_columns_type() {
        use mysql_async::Value as M;
        let col = |kind: Kind, type_name: &str| Column {
            name: "c".into(),
            kind,
            type_name: type_name.into(),
            nullable: true,
        };
        let day = tidesync_core::time::days_from_civil(2024, 2, 29);
        let at = Value::Timestamp(day * 86_400_000_000 + 86_399_123_456);
        assert_eq!(
            since_param(&col(Kind::DateTime, "datetime(6)"), &at),
            Ok(("?".to_owned(), M::Date(2024, 2, 29, 23, 59, 59, 123_456)))
        );
        assert_eq!(
            since_param(&col(Kind::Date, "date"), &Value::Date(day as i32)),
            Ok(("?".to_owned(), M::Date(2024, 2, 29, 0, 0, 0, 0)))
        );
        let decimal = Value::Decimal(tidesync_core::Decimal::parse("12.50").unwrap());
        assert_eq!(
            since_param(&col(Kind::Decimal, "decimal(12,2) unsigned"), &decimal),
            Ok((
                "CAST(? AS DECIMAL(12,2))".to_owned(),
                M::Bytes(b"12.50".to_vec())
            ))
        );
        assert_eq!(
            since_param(
                &col(Kind::Text(Charset::Utf8), "varchar(9)"),
                &Value::Text("v9".into())
            ),
            Ok(("CAST(? AS BINARY)".to_owned(), M::Bytes(b"v9".to_vec())))
        );
        assert!(since_param(&col(Kind::Date, "date"), &Value::Null).is_err());
        assert!(
            since_param(
                &col(Kind::DateTime, "datetime"),
                &Value::Timestamp(i64::MIN)
            )
            .is_err()
        );
    }
}
