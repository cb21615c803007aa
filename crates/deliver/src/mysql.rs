//! Database apply into MySQL or MariaDB, exactly-once.
//!
//! # Exactly-once
//!
//! Each batch is one InnoDB transaction: lock this sink's row in `_tidesync_applied`
//! (`SELECT seq .. FOR UPDATE`), skip the entries at or below that seq, apply the rest in seq
//! order, write the batch's last seq into the same row, `COMMIT`. The store moves the sink's
//! cursor only after that commit, so a batch replayed after a crash or a lost `COMMIT` reply
//! finds its seq already recorded and changes nothing. Any failure rolls the whole batch back.
//!
//! # Statements
//!
//! - runs of inserts and updates of one table with the same columns: one multi-row
//!   `INSERT .. ON DUPLICATE KEY UPDATE c = VALUES(c)` (at most 1,000 rows and 65,535
//!   placeholders); a key seen twice starts a new statement, so per-key order holds;
//! - runs of deletes: `DELETE .. WHERE k IN (..)` (one key column) or `(k1 = ? AND k2 = ?) OR ..`;
//! - `TRUNCATE` becomes `DELETE FROM t`: MySQL's `TRUNCATE` commits the transaction;
//! - a patch (`Op::Patch`) is `UPDATE t SET (its columns) WHERE (its key)`.
//!
//! A multi-row statement that fails definitely is replayed one row per statement, so the error
//! names the change. Columns the source adds while streaming are added with `ALTER TABLE`
//! before the batch's transaction (MySQL commits around DDL).
//!
//! # Values
//!
//! Values are bound as parameters, never spliced into SQL. The session runs with
//! `time_zone = '+00:00'` (timestamps are UTC) and a strict `sql_mode`, so a value a column
//! cannot hold (out of range, too long, an exact decimal `NaN`) is an error naming the
//! change, not a silently truncated row.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, TxOpts};
pub use tidesync_core::mysql::{bind, describe, describe_url, mysql_url, quote_ident};
use tidesync_core::{
    Batch, BoxFuture, Dialect, LogEntry, Op, Row, Seq, Sink, StageError, TableSchema, Value,
};

/// Most rows in one statement.
pub const MAX_ROWS: usize = 1000;
/// MySQL's limit of placeholders in one prepared statement.
const MAX_PARAMS: usize = 65_535;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const SESSION: &str = "SET SESSION time_zone = '+00:00', \
     sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'";

/// A statement, not the variable: MariaDB before 11.1 calls it `tx_isolation`, MySQL 8
/// `transaction_isolation`.
const ISOLATION: &str = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED";

const CREATE_APPLIED: &str = "CREATE TABLE IF NOT EXISTS _tidesync_applied (
    pipeline VARCHAR(255) NOT NULL, sink VARCHAR(255) NOT NULL, seq BIGINT NOT NULL,
    position LONGTEXT NULL,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (pipeline, sink)) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4";

/// What went wrong applying to MySQL or MariaDB, and where.
#[derive(Debug, thiserror::Error)]
pub enum MysqlSinkError {
    #[error("target MySQL: invalid connection URL: {problem}")]
    Url { problem: String },
    #[error("target {target}: {context}: {problem}")]
    Query {
        target: String,
        context: String,
        problem: String,
        transient: bool,
    },
    #[error(
        "target {target}: table `{table}` does not exist (set create_tables = true to create it from the source)"
    )]
    NoTable { target: String, table: String },
    #[error(
        "target {target}: table `{table}` has no primary key or unique index on exactly the key columns ({key}), which upserts need"
    )]
    NoUniqueKey {
        target: String,
        table: String,
        key: String,
    },
    #[error(
        "target {target}: no schema for stream `{stream}` (seq {seq}); the source did not declare it"
    )]
    UnknownStream {
        target: String,
        stream: String,
        seq: Seq,
    },
    #[error("target {target}: seq {seq} on `{table}` key {key}: {problem}")]
    BadChange {
        target: String,
        table: String,
        seq: Seq,
        key: String,
        problem: String,
        transient: bool,
    },
}

impl MysqlSinkError {
    fn is_transient(&self) -> bool {
        match self {
            MysqlSinkError::Query { transient, .. }
            | MysqlSinkError::BadChange { transient, .. } => *transient,
            _ => false,
        }
    }
}

impl From<MysqlSinkError> for StageError {
    fn from(e: MysqlSinkError) -> Self {
        if e.is_transient() {
            StageError::transient(e)
        } else {
            StageError::definite(e)
        }
    }
}

/// Applies batches to one MySQL or MariaDB database.
pub struct MysqlSink {
    /// May hold the password: never printed (see the `Debug` impl).
    url: String,
    /// The target for messages: `mysql://user@host:port/db`, no password.
    target: String,
    pipeline: String,
    sink: String,
    create_tables: bool,
    conn: Option<Conn>,
    /// stream -> key columns, from the schemas given to `open`.
    keys: HashMap<String, Vec<String>>,
    /// stream -> the target table's columns, to add those the source adds while streaming.
    columns: HashMap<String, HashSet<String>>,
}

impl fmt::Debug for MysqlSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlSink")
            .field("target", &self.target)
            .field("pipeline", &self.pipeline)
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

fn quote_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(", ")
}

impl MysqlSink {
    /// `url`: `mysql://user:password@host:port/db` (or `mariadb://`); `pipeline` and `sink`
    /// name this sink's row in `_tidesync_applied`. Nothing connects before [`Sink::open`].
    pub fn new(url: &str, pipeline: &str, sink: &str, create_tables: bool) -> Self {
        MysqlSink {
            url: mysql_url(url),
            target: describe_url(url),
            pipeline: pipeline.to_owned(),
            sink: sink.to_owned(),
            create_tables,
            conn: None,
            keys: HashMap::new(),
            columns: HashMap::new(),
        }
    }

    fn query_error(&self, context: &str) -> impl Fn(mysql_async::Error) -> MysqlSinkError + use<> {
        let (target, context) = (self.target.clone(), context.to_owned());
        move |e| {
            let (problem, transient) = describe(&e);
            MysqlSinkError::Query {
                target: target.clone(),
                context: context.clone(),
                problem,
                transient,
            }
        }
    }

    async fn connect(&self) -> Result<Conn, MysqlSinkError> {
        let opts = Opts::from_url(&self.url).map_err(|e| MysqlSinkError::Url {
            problem: e.to_string(),
        })?;
        let opts = OptsBuilder::from_opts(opts).stmt_cache_size(64);
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts))
            .await
            .map_err(|_| MysqlSinkError::Query {
                target: self.target.clone(),
                context: "connecting".into(),
                problem: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                transient: true,
            })?
            .map_err(self.query_error("connecting"))?;
        let mut conn = conn;
        for statement in [SESSION, ISOLATION] {
            conn.query_drop(statement)
                .await
                .map_err(self.query_error("setting up the session"))?;
        }
        conn.query_drop(CREATE_APPLIED)
            .await
            .map_err(self.query_error("creating _tidesync_applied"))?;
        // The source position of the last applied batch (direct streaming); tables made
        // before it existed get it.
        let has_position: Option<i64> = conn
            .query_first(
                "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME = '_tidesync_applied' AND COLUMN_NAME = 'position'",
            )
            .await
            .map_err(self.query_error("reading _tidesync_applied's columns"))?;
        if has_position.unwrap_or(0) == 0 {
            conn.query_drop("ALTER TABLE _tidesync_applied ADD COLUMN position LONGTEXT NULL")
                .await
                .map_err(self.query_error("adding _tidesync_applied.position"))?;
        }
        conn.exec_drop(
            "INSERT IGNORE INTO _tidesync_applied (pipeline, sink, seq) VALUES (?, ?, 0)",
            (&self.pipeline, &self.sink),
        )
        .await
        .map_err(self.query_error("initialising _tidesync_applied"))?;
        tracing::info!(server = %self.target, pipeline = %self.pipeline, sink = %self.sink, "connected to the MySQL target");
        Ok(conn)
    }

    async fn conn(&mut self) -> Result<&mut Conn, MysqlSinkError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        self.conn.as_mut().ok_or_else(|| MysqlSinkError::Query {
            target: self.target.clone(),
            context: "connecting".into(),
            problem: "no connection".into(),
            transient: true,
        })
    }

    /// The target table's columns; empty when it does not exist.
    async fn table_columns(&mut self, table: &str) -> Result<HashSet<String>, MysqlSinkError> {
        let err = self.query_error(&format!("reading the columns of `{table}`"));
        let conn = self.conn().await?;
        let names: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                (table,),
            )
            .await
            .map_err(err)?;
        Ok(names.into_iter().collect())
    }

    /// Whether a primary key or unique index covers exactly `key` (in any order).
    async fn has_unique_key(
        &mut self,
        table: &str,
        key: &[String],
    ) -> Result<bool, MysqlSinkError> {
        let err = self.query_error(&format!("reading the indexes of `{table}`"));
        let conn = self.conn().await?;
        let rows: Vec<(String, String)> = conn
            .exec(
                "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0",
                (table,),
            )
            .await
            .map_err(err)?;
        let mut indexes: HashMap<String, HashSet<String>> = HashMap::new();
        for (index, column) in rows {
            indexes.entry(index).or_default().insert(column);
        }
        let wanted: HashSet<String> = key.iter().cloned().collect();
        Ok(indexes.values().any(|columns| *columns == wanted))
    }

    async fn open_inner(
        &mut self,
        schemas: Vec<TableSchema>,
    ) -> Result<Option<Seq>, MysqlSinkError> {
        self.conn = None;
        self.keys.clear();
        self.columns.clear();
        for schema in &schemas {
            let mut columns = self.table_columns(&schema.name).await?;
            if columns.is_empty() {
                if !self.create_tables {
                    return Err(MysqlSinkError::NoTable {
                        target: self.target.clone(),
                        table: schema.name.clone(),
                    });
                }
                let sql = create_table_sql(schema);
                let err = self.query_error(&format!("creating table `{}`", schema.name));
                self.conn().await?.query_drop(&sql).await.map_err(err)?;
                tracing::info!(target = %self.target, table = %schema.name, "created the target table");
                columns = self.table_columns(&schema.name).await?;
            }
            if !self.has_unique_key(&schema.name, &schema.key).await? {
                return Err(MysqlSinkError::NoUniqueKey {
                    target: self.target.clone(),
                    table: schema.name.clone(),
                    key: schema.key.join(", "),
                });
            }
            self.keys.insert(schema.name.clone(), schema.key.clone());
            self.columns.insert(schema.name.clone(), columns);
        }
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let err = self.query_error("reading the applied seq");
        let conn = self.conn().await?;
        let applied: Option<i64> = conn
            .exec_first(
                "SELECT seq FROM _tidesync_applied WHERE pipeline = ? AND sink = ?",
                (&pipeline, &sink),
            )
            .await
            .map_err(err)?;
        Ok(Some(Seq(applied.unwrap_or(0).max(0) as u64)))
    }

    /// Adds the columns that changes of `batch` carry and their tables lack (`ALTER TABLE`
    /// commits in MySQL: done before the batch's transaction), typed from the first non-null
    /// value.
    async fn add_missing_columns(&mut self, batch: &Batch) -> Result<(), MysqlSinkError> {
        let mut missing: Vec<(String, String, &Value)> = Vec::new();
        for entry in &batch.entries {
            let Some(known) = self.columns.get(&entry.change.stream) else {
                continue;
            };
            for (column, value) in entry.change.after.iter().flat_map(|r| r.0.iter()) {
                if known.contains(column) {
                    continue;
                }
                match missing
                    .iter_mut()
                    .find(|(t, c, _)| *t == entry.change.stream && c == column)
                {
                    Some(slot) if matches!(slot.2, Value::Null) => slot.2 = value,
                    Some(_) => {}
                    None => missing.push((entry.change.stream.clone(), column.clone(), value)),
                }
            }
        }
        for (table, column, value) in missing {
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                quote_ident(&table),
                quote_ident(&column),
                type_of_value(value)
            );
            let context = format!("adding column `{column}` to `{table}`");
            let err = self.query_error(&context);
            let conn = self.conn().await?;
            conn.query_drop(&sql).await.map_err(err)?;
            tracing::info!(target = %self.target, table = %table, column = %column, "added a column the source added");
            if let Some(known) = self.columns.get_mut(&table) {
                known.insert(column);
            }
        }
        Ok(())
    }

    async fn apply_inner(&mut self, batch: &Batch) -> Result<(), MysqlSinkError> {
        if let Some(entry) = batch
            .entries
            .iter()
            .find(|e| !self.keys.contains_key(&e.change.stream))
        {
            return Err(MysqlSinkError::UnknownStream {
                target: self.target.clone(),
                stream: entry.change.stream.clone(),
                seq: entry.seq,
            });
        }
        self.add_missing_columns(batch).await?;
        let mut max_rows = MAX_ROWS;
        loop {
            match self.attempt(batch, max_rows).await {
                Ok(()) => return Ok(()),
                Err((error, grouped)) if grouped && max_rows > 1 && !error.is_transient() => {
                    tracing::debug!(pipeline = %self.pipeline, error = %error, "a multi-row statement failed; replaying the batch one row per statement");
                    max_rows = 1;
                }
                Err((error, _)) => {
                    if error.is_transient() {
                        // The connection may be gone: start on a fresh one.
                        self.conn = None;
                    }
                    return Err(error);
                }
            }
        }
    }

    /// One transaction for the batch. On failure: the error and whether a multi-row
    /// statement failed (so a replay one row per statement may name the row).
    async fn attempt(
        &mut self,
        batch: &Batch,
        max_rows: usize,
    ) -> Result<(), (MysqlSinkError, bool)> {
        self.conn().await.map_err(|e| (e, false))?;
        // Disjoint fields: the connection is used while the names and keys are read.
        let MysqlSink {
            target,
            pipeline,
            sink,
            conn,
            keys,
            ..
        } = self;
        let (target, pipeline, sink, keys) = (&*target, &*pipeline, &*sink, &*keys);
        let Some(conn) = conn.as_mut() else {
            return Err((
                MysqlSinkError::Query {
                    target: target.clone(),
                    context: "connecting".into(),
                    problem: "no connection".into(),
                    transient: true,
                },
                false,
            ));
        };
        let query_error = |context: &str, e: mysql_async::Error| {
            let (problem, transient) = describe(&e);
            (
                MysqlSinkError::Query {
                    target: target.clone(),
                    context: context.to_owned(),
                    problem,
                    transient,
                },
                false,
            )
        };
        let mut tx = conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| query_error("beginning a transaction", e))?;
        let applied: Option<i64> = tx
            .exec_first(
                "SELECT seq FROM _tidesync_applied WHERE pipeline = ? AND sink = ? FOR UPDATE",
                (pipeline, sink),
            )
            .await
            .map_err(|e| query_error("locking the applied seq", e))?;
        let applied = Seq(applied.unwrap_or(0).max(0) as u64);
        let todo: Vec<&LogEntry> = batch.entries.iter().filter(|e| e.seq > applied).collect();
        for step in plan(&todo, max_rows, keys) {
            let first = step.entries[0];
            let key_columns = &keys[step.stream];
            let bad_change = |problem, transient| MysqlSinkError::BadChange {
                target: target.clone(),
                table: step.stream.to_owned(),
                seq: first.seq,
                key: first.change.key.to_string(),
                problem,
                transient,
            };
            let (sql, params) = step_sql(&step, key_columns)
                .map_err(|problem| (bad_change(problem, false), false))?;
            tx.exec_drop(sql, params).await.map_err(|e| {
                let (problem, transient) = describe(&e);
                (bad_change(problem, transient), step.entries.len() > 1)
            })?;
        }
        let last = batch
            .entries
            .last()
            .map_or(batch.last_seq, |e| e.seq.max(batch.last_seq));
        if last > applied {
            tx.exec_drop(
                "UPDATE _tidesync_applied SET seq = ?, position = ?, \
                 updated_at = CURRENT_TIMESTAMP(6) WHERE pipeline = ? AND sink = ?",
                (
                    last.0 as i64,
                    batch
                        .position
                        .as_ref()
                        .map(tidesync_core::Position::to_json),
                    pipeline,
                    sink,
                ),
            )
            .await
            .map_err(|e| query_error("recording the applied seq", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| query_error("committing", e))?;
        tracing::debug!(pipeline = %pipeline, sink = %sink, applied = %applied, last_seq = %last, rows = todo.len(), "applied batch");
        Ok(())
    }
}

/// What one statement does.
#[derive(Debug, PartialEq)]
enum Action<'b> {
    Upsert(Vec<&'b str>),
    Delete,
    Truncate,
    Patch(Vec<&'b str>),
}

/// One statement: an action on one table for one or more entries.
#[derive(Debug)]
struct Step<'b> {
    stream: &'b str,
    action: Action<'b>,
    entries: Vec<&'b LogEntry>,
}

/// Splits `entries` (in seq order) into statements: neighbours of one table and action (and,
/// for upserts, the same columns) share one, up to `max_rows` rows and the placeholder
/// limit, until a key repeats (its later change must follow the earlier one).
fn plan<'b>(
    entries: &[&'b LogEntry],
    max_rows: usize,
    keys: &HashMap<String, Vec<String>>,
) -> Vec<Step<'b>> {
    let mut steps: Vec<Step<'b>> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for entry in entries {
        let change = &entry.change;
        let stream = change.stream.as_str();
        let action = match change.op {
            Op::Truncate => Action::Truncate,
            Op::Delete => Action::Delete,
            Op::Patch => Action::Patch(change.after.iter().flat_map(Row::columns).collect()),
            Op::Insert | Op::Update | Op::Read => match &change.after {
                Some(row) => Action::Upsert(row.columns().collect()),
                None => Action::Delete,
            },
        };
        if matches!(&action, Action::Patch(columns) if columns.is_empty()) {
            continue;
        }
        let key = change.key.to_string();
        let width = match &action {
            Action::Upsert(columns) => columns.len(),
            _ => keys.get(stream).map_or(1, Vec::len),
        };
        let joins = steps.last().is_some_and(|step| {
            step.stream == stream
                && step.action == action
                && matches!(action, Action::Upsert(_) | Action::Delete)
                && step.entries.len() < max_rows.min(MAX_PARAMS / width.max(1))
                && !seen.contains(&key)
        });
        if !joins {
            seen.clear();
            steps.push(Step {
                stream,
                action,
                entries: Vec::new(),
            });
        }
        seen.insert(key);
        if let Some(step) = steps.last_mut() {
            step.entries.push(entry);
        }
    }
    steps
}

/// `c1 = ? AND c2 = ?` over `columns` (joined by `sep`).
fn assignments<'a>(columns: impl IntoIterator<Item = &'a str>, sep: &str) -> String {
    columns
        .into_iter()
        .map(|c| format!("{} = ?", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Binds the values of `entry`'s row (`what` names the change when it has none).
fn bind_row(
    entry: &LogEntry,
    what: &str,
    params: &mut Vec<mysql_async::Value>,
) -> Result<(), String> {
    let after = entry
        .change
        .after
        .as_ref()
        .ok_or_else(|| format!("{what} without a row"))?;
    for (_, value) in &after.0 {
        params.push(bind(value)?);
    }
    Ok(())
}

/// Binds `entry`'s key, which must have the table's `key` columns.
fn bind_key(
    entry: &LogEntry,
    key: &[String],
    params: &mut Vec<mysql_async::Value>,
) -> Result<(), String> {
    if entry.change.key.0.len() != key.len() {
        return Err(format!(
            "the key has {} values, the table's key {} columns",
            entry.change.key.0.len(),
            key.len()
        ));
    }
    for value in &entry.change.key.0 {
        params.push(bind(value)?);
    }
    Ok(())
}

/// The statement of `step` and its parameters.
fn step_sql(step: &Step<'_>, key: &[String]) -> Result<(String, Vec<mysql_async::Value>), String> {
    let table = quote_ident(step.stream);
    let key_match = assignments(key.iter().map(String::as_str), " AND ");
    let mut params = Vec::new();
    let sql = match &step.action {
        Action::Upsert(columns) => {
            let row = format!("({})", vec!["?"; columns.len()].join(", "));
            for entry in &step.entries {
                bind_row(entry, "an upsert", &mut params)?;
            }
            let updates: Vec<String> = columns
                .iter()
                .filter(|c| !key.iter().any(|k| k == *c))
                .map(|c| format!("{0} = VALUES({0})", quote_ident(c)))
                .collect();
            let on_duplicate = if updates.is_empty() {
                // Nothing but the key: an existing row stays as it is.
                format!("{0} = {0}", quote_ident(&key[0]))
            } else {
                updates.join(", ")
            };
            format!(
                "INSERT INTO {table} ({}) VALUES {} ON DUPLICATE KEY UPDATE {on_duplicate}",
                quote_list(columns.iter().copied()),
                vec![row; step.entries.len()].join(", ")
            )
        }
        Action::Delete => {
            for entry in &step.entries {
                bind_key(entry, key, &mut params)?;
            }
            if let [one] = key {
                format!(
                    "DELETE FROM {table} WHERE {} IN ({})",
                    quote_ident(one),
                    vec!["?"; step.entries.len()].join(", ")
                )
            } else {
                format!(
                    "DELETE FROM {table} WHERE {}",
                    vec![format!("({key_match})"); step.entries.len()].join(" OR ")
                )
            }
        }
        Action::Truncate => format!("DELETE FROM {table}"),
        Action::Patch(columns) => {
            let entry = step.entries[0];
            bind_row(entry, "a patch", &mut params)?;
            bind_key(entry, key, &mut params)?;
            format!(
                "UPDATE {table} SET {} WHERE {key_match}",
                assignments(columns.iter().copied(), ", ")
            )
        }
    };
    Ok((sql, params))
}

/// The column type for a value of a column the source added while streaming.
fn type_of_value(value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "BOOLEAN",
        Value::Int(_) => "BIGINT",
        Value::Float(_) => "DOUBLE",
        Value::Decimal(_) => "DECIMAL(65, 30)",
        Value::Bytes(_) => "LONGBLOB",
        Value::Timestamp(_) => "DATETIME(6)",
        Value::Date(_) => "DATE",
        Value::Time(_) => "TIME(6)",
        Value::Json(_) => "JSON",
        Value::Null | Value::Text(_) => "LONGTEXT",
    }
}

/// `CREATE TABLE` for `schema`, its columns typed from the source's type names
/// ([`mysql_type_for`]); a text key column becomes `VARCHAR(768)` (InnoDB indexes at most
/// 3,072 bytes, 4 per utf8mb4 character).
pub fn create_table_sql(schema: &TableSchema) -> String {
    let columns: Vec<String> = schema
        .columns
        .iter()
        .map(|c| {
            let is_key = schema.key.contains(&c.name);
            let mut ty = mysql_type_for(schema.dialect, &c.type_name);
            if is_key && matches!(ty.as_str(), "LONGTEXT" | "LONGBLOB" | "JSON") {
                ty = if ty == "LONGBLOB" {
                    "VARBINARY(3072)".into()
                } else {
                    "VARCHAR(768)".into()
                };
            }
            let null = if c.nullable && !is_key {
                ""
            } else {
                " NOT NULL"
            };
            format!("{} {ty}{null}", quote_ident(&c.name))
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({})) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
        quote_ident(&schema.name),
        columns.join(", "),
        quote_list(schema.key.iter().map(String::as_str))
    )
}

/// The MySQL type for a source column type (documented in docs/mysql.md).
pub fn mysql_type_for(dialect: Dialect, type_name: &str) -> String {
    let t = type_name.trim().to_ascii_lowercase();
    match dialect {
        Dialect::Mysql => type_name.to_owned(),
        Dialect::Postgres => {
            if t.ends_with("[]") {
                // Arrays arrive as PostgreSQL's array text (`{a,"b c"}`), not JSON.
                return "LONGTEXT".into();
            }
            let (base, args) = match t.split_once('(') {
                Some((b, a)) => (b.trim(), Some(a.trim_end_matches(')'))),
                None => (t.as_str(), None),
            };
            match base {
                "smallint" | "int2" => "SMALLINT".into(),
                "integer" | "int" | "int4" => "INT".into(),
                "bigint" | "int8" => "BIGINT".into(),
                "real" | "float4" => "FLOAT".into(),
                "double precision" | "float8" => "DOUBLE".into(),
                "numeric" | "decimal" => match args {
                    Some(a) if a.contains(',') => format!("DECIMAL({a})"),
                    Some(a) => format!("DECIMAL({a}, 0)"),
                    None => "DECIMAL(65, 30)".into(),
                },
                "boolean" | "bool" => "BOOLEAN".into(),
                "character varying" | "varchar" => match args {
                    Some(n) if n.parse::<u32>().is_ok_and(|n| n <= 16_383) => {
                        format!("VARCHAR({n})")
                    }
                    _ => "LONGTEXT".into(),
                },
                "character" | "char" | "bpchar" => match args {
                    Some(n) if n.parse::<u32>().is_ok_and(|n| n <= 255) => format!("CHAR({n})"),
                    _ => "LONGTEXT".into(),
                },
                "timestamp with time zone"
                | "timestamptz"
                | "timestamp without time zone"
                | "timestamp" => "DATETIME(6)".into(),
                "date" => "DATE".into(),
                "time without time zone" | "time" => "TIME(6)".into(),
                "bytea" => "LONGBLOB".into(),
                "json" | "jsonb" => "JSON".into(),
                "uuid" => "CHAR(36)".into(),
                _ => "LONGTEXT".into(),
            }
        }
        Dialect::Sqlite => {
            // SQLite's affinity rules, in their order.
            if t.contains("int") {
                "BIGINT".into()
            } else if t.contains("char") || t.contains("clob") || t.contains("text") {
                "LONGTEXT".into()
            } else if t.contains("blob") || t.is_empty() {
                "LONGBLOB".into()
            } else if t.contains("real") || t.contains("floa") || t.contains("doub") {
                "DOUBLE".into()
            } else if let Some(args) = t
                .strip_prefix("decimal(")
                .or_else(|| t.strip_prefix("numeric("))
                .and_then(|a| a.strip_suffix(')'))
                .filter(|a| a.split(',').all(|n| n.trim().parse::<u32>().is_ok()))
            {
                format!("DECIMAL({args})")
            } else {
                // NUMERIC affinity without a declared precision: integers or reals.
                "DOUBLE".into()
            }
        }
    }
}

impl Sink for MysqlSink {
    fn open(
        &mut self,
        schemas: Vec<TableSchema>,
    ) -> BoxFuture<'_, Result<Option<Seq>, StageError>> {
        Box::pin(async move { self.open_inner(schemas).await.map_err(StageError::from) })
    }

    fn apply(&mut self, batch: Arc<Batch>) -> BoxFuture<'_, Result<(), StageError>> {
        Box::pin(async move { self.apply_inner(&batch).await.map_err(StageError::from) })
    }

    fn records_positions(&self) -> bool {
        true
    }

    fn applied_position(
        &mut self,
    ) -> BoxFuture<'_, Result<Option<(Seq, tidesync_core::Position)>, StageError>> {
        Box::pin(async move {
            let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
            let err = self.query_error("reading the applied position");
            let target = self.target.clone();
            let conn = self.conn().await.map_err(StageError::from)?;
            let row: Option<(i64, Option<String>)> = conn
                .exec_first(
                    "SELECT seq, position FROM _tidesync_applied WHERE pipeline = ? AND sink = ?",
                    (&pipeline, &sink),
                )
                .await
                .map_err(|e| StageError::from(err(e)))?;
            let Some((seq, Some(text))) = row else {
                return Ok(None);
            };
            let position = tidesync_core::Position::from_json(&text).map_err(|e| {
                StageError::definite(format!(
                    "target {target}: _tidesync_applied.position of {pipeline}/{sink} is not a \
                     position: {e}"
                ))
            })?;
            Ok(Some((Seq(seq.max(0) as u64), position)))
        })
    }

    fn forget(&mut self) -> BoxFuture<'_, Result<Vec<String>, StageError>> {
        Box::pin(async move {
            let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
            let err = self.query_error("forgetting the applied seq");
            let conn = self.conn().await.map_err(StageError::from)?;
            conn.exec_drop(
                "DELETE FROM _tidesync_applied WHERE pipeline = ? AND sink = ?",
                (&pipeline, &sink),
            )
            .await
            .map_err(|e| StageError::from(err(e)))?;
            Ok(vec![format!(
                "removed the applied seq of {pipeline}/{sink} from {}",
                self.target
            )])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidesync_core::ColumnSchema;

    #[test]
    fn timestamps_dates_and_times_bind_as_mysql_values() {
        use mysql_async::Value as M;
        // 2026-01-02 03:04:05.678901 UTC
        let us = 1_767_323_045_678_901;
        assert_eq!(
            bind(&Value::Timestamp(us)).unwrap(),
            M::Date(2026, 1, 2, 3, 4, 5, 678_901)
        );
        assert_eq!(
            bind(&Value::Date(-1)).unwrap(),
            M::Date(1969, 12, 31, 0, 0, 0, 0)
        );
        assert_eq!(
            bind(&Value::Time(-(3_600 * 25 + 61) * 1_000_000 - 5)).unwrap(),
            M::Time(true, 1, 1, 1, 1, 5)
        );
        assert!(bind(&Value::Timestamp(-70_000_000 * 1_000_000 * 1_000)).is_err());
        let nan = tidesync_core::Decimal::parse("NaN").unwrap();
        assert_eq!(
            bind(&Value::Decimal(nan)).unwrap_err(),
            "MySQL has no exact decimal `NaN`"
        );
    }

    #[test]
    fn tables_are_created_from_postgres_and_sqlite_types() {
        let schema = |dialect, columns: &[(&str, &str)], key: &[&str]| TableSchema {
            name: "we`ird".into(),
            columns: columns
                .iter()
                .map(|(n, t)| ColumnSchema {
                    name: (*n).into(),
                    type_name: (*t).into(),
                    nullable: true,
                })
                .collect(),
            key: key.iter().map(|k| (*k).to_owned()).collect(),
            dialect,
        };
        assert_eq!(
            create_table_sql(&schema(
                Dialect::Postgres,
                &[
                    ("code", "text"),
                    ("price", "numeric(12,2)"),
                    ("at", "timestamp with time zone"),
                    ("tags", "text[]"),
                    ("n", "numeric"),
                ],
                &["code"]
            )),
            "CREATE TABLE IF NOT EXISTS `we``ird` (`code` VARCHAR(768) NOT NULL, `price` DECIMAL(12,2), \
             `at` DATETIME(6), `tags` LONGTEXT, `n` DECIMAL(65, 30), PRIMARY KEY (`code`)) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"
        );
        assert_eq!(
            create_table_sql(&schema(
                Dialect::Sqlite,
                &[
                    ("id", "INTEGER"),
                    ("v", ""),
                    ("p", "DECIMAL(10,2)"),
                    ("x", "NUMERIC")
                ],
                &["id"]
            )),
            "CREATE TABLE IF NOT EXISTS `we``ird` (`id` BIGINT NOT NULL, `v` LONGBLOB, `p` DECIMAL(10,2), \
             `x` DOUBLE, PRIMARY KEY (`id`)) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"
        );
    }
}
