//! Database apply into PostgreSQL, exactly-once.
//!
//! # Exactly-once
//!
//! Each batch is one transaction: lock this sink's row in `_tidesync_applied`
//! (`SELECT seq .. FOR UPDATE`), skip the entries at or below that seq, apply the rest in seq
//! order, write the batch's last seq into the same row, `COMMIT`. The store moves the sink's
//! cursor only after that commit, so a batch replayed after a crash or a lost `COMMIT` reply
//! finds its seq already recorded and changes nothing; a batch straddling the recorded seq
//! applies only its new part. The row lock also serialises two appliers of the same
//! pipeline and sink (READ COMMITTED re-reads the row after the lock wait). Any failure rolls
//! the whole batch back. `open` returns the recorded seq (`Some(Seq(0))` before the first
//! batch); the runtime resumes after it.
//!
//! # Statements
//!
//! Consecutive upserts of one table with the same column list are sent as one multi-row
//! `INSERT .. ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c` (up to [`MAX_ROWS`] rows),
//! consecutive deletes as one `DELETE .. WHERE (key) IN (..)` (see `plan`). A patch
//! ([`tidesync_core::Op::Patch`]: the store could not fill an update's unchanged TOASTed
//! values) is one `UPDATE t SET c = $1, .. WHERE k = $n` of the columns it holds, a statement of
//! its own between the runs: the other columns keep the target's values (an upsert would
//! write nulls, or fail a `NOT NULL` check), and a patch of a key the target lacks changes
//! nothing. It never goes through `COPY`. Statements are
//! prepared once per connection and cached by their text; the server infers each parameter's
//! type from its column, and values are bound to that type (see `bind`): natively where a
//! value has an exact binary form, otherwise as text parsed by the column type's input
//! function. Identifiers are always quoted; values never appear in SQL text. If a multi-row
//! statement fails with a definite error, the batch is replayed one row per statement: that
//! either succeeds (the failure came from grouping, e.g. two keys equal only to the server)
//! or names the exact seq, table and key that fails.
//!
//! A run of two or more inserts (`Insert` or snapshot `Read`, no `Update`) goes through
//! `COPY .. FROM STDIN` instead, which costs the server far less than an upsert; a row that
//! already exists makes the `COPY` fail, and the batch is then replayed with upserts only, so
//! the result is always the upsert's (see `copy`). The applied seq is written in the same
//! transaction either way.
//!
//! # Creating tables
//!
//! With `create_tables`, a missing table is created from the source schema (columns in order,
//! `NOT NULL` where the source has it, the source key as primary key). Declared type names map
//! as below: SQLite's affinity rules, first match wins, case-insensitive substring match;
//! within SQLite's NUMERIC affinity the names are refined further.
//!
//! | declared type contains              | PostgreSQL type    |
//! |-------------------------------------|--------------------|
//! | `INT`                               | `bigint`           |
//! | `CHAR`, `CLOB`, `TEXT`              | `text`             |
//! | `BLOB`                              | `bytea`            |
//! | `REAL`, `FLOA`, `DOUB`              | `double precision` |
//! | `BOOL`                              | `boolean`          |
//! | `DATETIME`, `TIMESTAMP`             | `timestamptz`      |
//! | `DATE`                              | `date`             |
//! | `NUMERIC`, `DECIMAL`                | `numeric`          |
//! | anything else, or no declared type  | `text`             |
//!
//! `text` for the rest because an untyped SQLite column may hold ints, floats and text, all of
//! which `text` keeps exactly (a blob that is not UTF-8 is then a definite error).
//!
//! A PostgreSQL source's types are used as they are. A MySQL/MariaDB source's `COLUMN_TYPE`s
//! map to the narrowest type that holds every value the source emits for them (`sql::
//! pg_type_for_mysql`; the table is in docs/mysql.md): unsigned integers one size up (`bigint
//! unsigned` to `numeric(20,0)`), `decimal(p,s)` to `numeric(p,s)`, `float` to `real`,
//! `char(n)`/`varchar(n)` to `varchar(n)` (MySQL drops `CHAR`'s trailing blanks, so no
//! padding), enum/set and the text types to `text`, binary strings, blobs, geometry and
//! `bit(n>1)` to `bytea`, `bit(1)` to `boolean`, `year` to `smallint`, `time(n)`,
//! `datetime(n)` to `timestamp(n)` (wall clock), `timestamp(n)` to `timestamptz(n)`, `json`
//! to `jsonb`, anything else to `text`. Without
//! `create_tables` a missing table is a definite error naming it, and an existing table must
//! have a primary key or unique index on exactly the key columns.
//!
//! # Values
//!
//! | value       | binary into                                 | otherwise (text format)      |
//! |-------------|---------------------------------------------|------------------------------|
//! | `Int`       | int8, int4, int2 (range-checked), float8 (if exact), bool (0/1) | decimal text |
//! | `Float`     | float8, float4; integer columns if integral | shortest exact text, `NaN`, `±Infinity` |
//! | `Bool`      | bool; integer columns as 0/1                | `true`/`false`               |
//! | `Decimal`   | –                                           | its exact text (numeric keeps the scale) |
//! | `Text`      | bytea as its UTF-8 bytes                    | itself                       |
//! | `Bytes`     | bytea                                       | UTF-8 text, else an error    |
//! | `Timestamp` | timestamp, timestamptz (µs, UTC)            | ISO 8601 `..Z`               |
//! | `Date`      | date                                        | `YYYY-MM-DD`                 |
//! | `Time`      | time                                        | `HH:MM:SS.ffffff`            |
//! | `Json`      | –                                           | its text (json, jsonb, text) |
//!
//! Sessions run with `TimeZone = 'UTC'`, so text timestamps without a zone read as UTC.
//!
//! # Errors
//!
//! Transient (retried; the connection is dropped after any error and the next call
//! reconnects): refused or lost connections, timeouts, serialization failures (40001),
//! deadlocks (40P01), shutdowns and restarts (57P01..57P03), too many connections and other
//! resource errors (53xxx), and unknown errors. Definite (the pipeline stops): constraint
//! violations, invalid input for a column type, undefined tables or columns, missing
//! privileges, a wrong password, a missing database, values that do not fit (an int out of
//! an int4 column's range); messages name the seq, table and key, as in the SQLite sink.
//! Messages name the target as `postgres://user@host:port/db`, never with its password.

mod bind;
mod copy;
mod direct;
mod error;
mod plan;
mod sql;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt as _;
use tidesync_core::pg::describe_config;
use tidesync_core::{
    Batch, BoxFuture, CopyWriter, Position, Seq, Sink, StageError, TableSchema, Value,
};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Statement, Transaction};

use self::bind::{Bound, ColumnKind, bind};
pub use self::error::PostgresSinkError;
use self::error::{describe, is_transient};
use self::plan::{Action, Step, plan, upsert_row};

/// Rows per multi-row statement at most.
pub const MAX_ROWS: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Any one round trip (a statement, `COMMIT`, a lock wait) taking longer is a transient error.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Prepared statements kept per connection; the cache is emptied when it would grow past this.
const MAX_CACHED_STATEMENTS: usize = 256;

/// One connection and what was prepared on it.
struct Conn {
    client: Client,
    /// SQL text -> prepared statement.
    statements: HashMap<String, Statement>,
    /// Drives the connection; aborted when the connection is dropped.
    task: JoinHandle<()>,
    /// Set while a transaction may be open: a call whose future was dropped half-way leaves
    /// it set, and the next call starts on a fresh connection.
    dirty: bool,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("statements", &self.statements.len())
            .field("dirty", &self.dirty)
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies batches to one PostgreSQL database.
pub struct PostgresSink {
    /// May hold the password: never printed (see the `Debug` impl).
    url: String,
    /// The target for messages: `postgres://user@host:port/db`, no password.
    target: String,
    pipeline: String,
    sink: String,
    create_tables: bool,
    conn: Option<Conn>,
    /// stream -> key columns, from the schemas given to `open`.
    keys: HashMap<String, Vec<String>>,
    /// stream -> the target table's columns, to add those the source adds while streaming.
    columns: HashMap<String, HashSet<String>>,
    /// Which tables' runs of inserts skip `COPY` for now, after it failed on them.
    copy_backoff: copy::Backoff,
}

impl fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSink")
            .field("target", &self.target)
            .field("pipeline", &self.pipeline)
            .field("sink", &self.sink)
            .field("create_tables", &self.create_tables)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

/// How a batch attempt failed: `grouped` when a multi-row statement failed definitely, so
/// that replaying one row per statement may succeed or point at the row; `copy` when a `COPY`
/// failed definitely, so that replaying with upserts only may succeed or name the change.
struct Failure {
    error: PostgresSinkError,
    grouped: bool,
    copy: bool,
}

impl From<PostgresSinkError> for Failure {
    fn from(error: PostgresSinkError) -> Self {
        Failure {
            error,
            grouped: false,
            copy: false,
        }
    }
}

impl PostgresSink {
    /// `url` is a libpq-style URL or key-value string (`postgres://user:pw@host:port/db`);
    /// `pipeline` and `sink` name this sink's row in `_tidesync_applied`. Nothing connects
    /// before [`Sink::open`].
    pub fn new(url: &str, pipeline: &str, sink: &str, create_tables: bool) -> Self {
        let target = url
            .parse::<Config>()
            .map(|c| describe_config(&c))
            .unwrap_or_else(|_| "PostgreSQL".to_owned());
        PostgresSink {
            url: url.to_owned(),
            target,
            pipeline: pipeline.to_owned(),
            sink: sink.to_owned(),
            create_tables,
            conn: None,
            keys: HashMap::new(),
            columns: HashMap::new(),
            copy_backoff: copy::Backoff::default(),
        }
    }

    fn query_error(
        &self,
        context: &str,
    ) -> impl Fn(tokio_postgres::Error) -> PostgresSinkError + use<> {
        query_error(&self.target, context)
    }

    async fn connect(&mut self) -> Result<&mut Conn, PostgresSinkError> {
        if self.conn.as_ref().is_some_and(|c| c.dirty) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.new_conn().await?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| PostgresSinkError::Connect {
                target: self.target.clone(),
                problem: "no connection".to_owned(),
                transient: true,
            })
    }

    async fn new_conn(&self) -> Result<Conn, PostgresSinkError> {
        let mut config: Config =
            self.url
                .parse()
                .map_err(|e: tokio_postgres::Error| PostgresSinkError::Url {
                    problem: describe(&e),
                })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("tidesync");
        }
        let target = describe_config(&config);
        let connect_error = |e: tokio_postgres::Error| PostgresSinkError::Connect {
            target: target.clone(),
            problem: describe(&e),
            transient: is_transient(&e),
        };
        let connecting = config.connect(NoTls);
        let (client, connection) =
            within_limit(&target, "connecting", CONNECT_TIMEOUT * 2, connecting)
                .await?
                .map_err(connect_error)?;
        let task_target = target.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(server = %task_target, error = %describe(&e), "connection to the PostgreSQL target ended");
            }
        });
        let conn = Conn {
            client,
            statements: HashMap::new(),
            task,
            dirty: false,
        };
        let setup = format!(
            "SET TimeZone = 'UTC'; {}",
            sql::locked_ddl(sql::CREATE_APPLIED)
        );
        within(
            &target,
            "creating _tidesync_applied",
            conn.client.batch_execute(&setup),
        )
        .await?
        .map_err(self.query_error("creating _tidesync_applied"))?;
        let has_position = within(
            &target,
            "reading _tidesync_applied's columns",
            conn.client.query_one(sql::HAS_APPLIED_POSITION, &[]),
        )
        .await?
        .and_then(|row| row.try_get::<_, bool>(0))
        .map_err(self.query_error("reading _tidesync_applied's columns"))?;
        if !has_position {
            within(
                &target,
                "adding _tidesync_applied.position",
                conn.client.batch_execute(sql::ADD_APPLIED_POSITION),
            )
            .await?
            .map_err(self.query_error("adding _tidesync_applied.position"))?;
        }
        within(
            &target,
            "initialising _tidesync_applied",
            conn.client
                .execute(sql::INIT_APPLIED, &[&self.pipeline, &self.sink]),
        )
        .await?
        .map_err(self.query_error("initialising _tidesync_applied"))?;
        tracing::info!(server = %target, pipeline = %self.pipeline, sink = %self.sink, "connected to the PostgreSQL target");
        Ok(conn)
    }

    async fn open_inner(
        &mut self,
        schemas: &[TableSchema],
    ) -> Result<Option<Seq>, PostgresSinkError> {
        let target = self.target.clone();
        let create = self.create_tables;
        let check_error = self.query_error("checking target tables");
        let create_error = self.query_error("creating a target table");
        let read_error = self.query_error("reading the applied seq");
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let conn = self.connect().await?;
        for schema in schemas {
            let name = sql::quote_ident(&schema.name);
            let row = within(
                &target,
                "checking target tables",
                conn.client
                    .query_opt(sql::TABLE_HAS_UNIQUE_KEY, &[&name, &schema.key]),
            )
            .await?
            .map_err(&check_error)?;
            let has_unique_key = match row {
                Some(row) => row.try_get::<_, bool>(0).map_err(&check_error)?,
                None if !create => {
                    return Err(PostgresSinkError::NoTable {
                        target,
                        table: schema.name.clone(),
                    });
                }
                None if schema.key.is_empty() => false,
                None => {
                    within(
                        &target,
                        "creating a target table",
                        conn.client
                            .batch_execute(&sql::locked_ddl(&sql::create_table_sql(schema))),
                    )
                    .await?
                    .map_err(&create_error)?;
                    tracing::info!(table = %schema.name, "created target table");
                    true
                }
            };
            if !has_unique_key {
                let key = if schema.key.is_empty() {
                    "none declared by the source".to_owned()
                } else {
                    schema.key.join(", ")
                };
                return Err(PostgresSinkError::NoUniqueKey {
                    target,
                    table: schema.name.clone(),
                    key,
                });
            }
        }
        let seq: i64 = within(
            &target,
            "reading the applied seq",
            conn.client
                .query_opt(sql::READ_APPLIED, &[&pipeline, &sink]),
        )
        .await?
        .map_err(&read_error)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(&read_error)?
        .unwrap_or(0);
        let mut columns = HashMap::new();
        for schema in schemas {
            let name = sql::quote_ident(&schema.name);
            let have: HashSet<String> = within(
                &target,
                "reading target columns",
                conn.client.query(sql::TABLE_COLUMNS, &[&name]),
            )
            .await?
            .map_err(&check_error)?
            .into_iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(&check_error)?;
            columns.insert(schema.name.clone(), have);
        }
        self.columns = columns;
        self.keys = schemas
            .iter()
            .map(|s| (s.name.clone(), s.key.clone()))
            .collect();
        // Some even when nothing was applied yet: this sink records its seq (exactly-once).
        Ok(Some(Seq(seq.max(0) as u64)))
    }

    async fn apply_inner(&mut self, batch: &Batch) -> Result<(), PostgresSinkError> {
        if let Some(entry) = batch
            .entries
            .iter()
            .find(|e| !self.keys.contains_key(&e.change.stream))
        {
            return Err(PostgresSinkError::UnknownStream {
                target: self.target.clone(),
                stream: entry.change.stream.clone(),
                seq: entry.seq,
            });
        }
        // First with COPY for runs of inserts, then (if a COPY failed definitely) with upserts
        // only, then (if a multi-row statement failed definitely) one row per statement.
        let (mut max_rows, mut use_copy) = (MAX_ROWS, true);
        loop {
            match self.attempt(batch, max_rows, use_copy).await {
                Ok(()) => return Ok(()),
                Err(failure) if failure.copy && use_copy => {
                    tracing::debug!(
                        pipeline = %self.pipeline, first_seq = %batch.first_seq, last_seq = %batch.last_seq,
                        error = %failure.error, "a COPY failed; replaying the batch with upserts"
                    );
                    use_copy = false;
                }
                Err(failure) if failure.grouped && max_rows > 1 => {
                    tracing::debug!(
                        pipeline = %self.pipeline, first_seq = %batch.first_seq, last_seq = %batch.last_seq,
                        error = %failure.error, "a multi-row statement failed; replaying the batch one row per statement"
                    );
                    (max_rows, use_copy) = (1, false);
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// One transaction applying `batch` with at most `max_rows` rows per statement, runs of
    /// inserts through `COPY` if `use_copy`.
    async fn attempt(
        &mut self,
        batch: &Batch,
        max_rows: usize,
        use_copy: bool,
    ) -> Result<(), Failure> {
        let target = self.target.clone();
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let begin_error = self.query_error("beginning a transaction");
        let commit_error = self.query_error("committing");
        self.connect().await?;
        let create_tables = self.create_tables;
        let PostgresSink {
            conn,
            keys,
            columns,
            copy_backoff,
            ..
        } = self;
        let Some(conn) = conn.as_mut() else {
            return Err(PostgresSinkError::Connect {
                target,
                problem: "no connection".to_owned(),
                transient: true,
            }
            .into());
        };
        conn.dirty = true;
        let Conn {
            client, statements, ..
        } = conn;
        let tx = within(&target, "beginning a transaction", client.transaction())
            .await?
            .map_err(begin_error)?;
        let mut work = Work {
            tx: &tx,
            statements,
            keys,
            columns,
            create_tables,
            added: Vec::new(),
            copy_backoff: use_copy.then_some(copy_backoff),
            target: &target,
            pipeline: &pipeline,
            sink: &sink,
        };
        let written = work.write(batch, max_rows).await;
        let added = std::mem::take(&mut work.added);
        match written {
            Ok(()) => {
                within(&target, "committing", tx.commit())
                    .await?
                    .map_err(commit_error)?;
                conn.dirty = false;
                for (table, column) in added {
                    columns.entry(table).or_default().insert(column);
                }
                Ok(())
            }
            Err(failure) => {
                // Leaves the connection usable for a replay; if this fails, the connection
                // is dropped with the error anyway.
                if let Ok(Ok(())) = tokio::time::timeout(STATEMENT_TIMEOUT, tx.rollback()).await {
                    conn.dirty = false;
                }
                Err(failure)
            }
        }
    }
}

/// The statements of one batch attempt, inside its transaction.
struct Work<'a> {
    tx: &'a Transaction<'a>,
    statements: &'a mut HashMap<String, Statement>,
    keys: &'a HashMap<String, Vec<String>>,
    /// The target tables' columns as of the last commit.
    columns: &'a HashMap<String, HashSet<String>>,
    create_tables: bool,
    /// Columns added in this transaction: known once it commits.
    added: Vec<(String, String)>,
    /// `Some` when runs of inserts may go through `COPY`.
    copy_backoff: Option<&'a mut copy::Backoff>,
    target: &'a str,
    pipeline: &'a str,
    sink: &'a str,
}

impl Work<'_> {
    fn query_error(
        &self,
        context: &str,
    ) -> impl Fn(tokio_postgres::Error) -> PostgresSinkError + use<> {
        query_error(self.target, context)
    }

    /// The statement for `sql`, prepared once per connection. The outer error is a timeout.
    async fn prepare(
        &mut self,
        sql: &str,
    ) -> Result<Result<Statement, tokio_postgres::Error>, PostgresSinkError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(Ok(statement.clone()));
        }
        let prepared = within(self.target, "preparing a statement", self.tx.prepare(sql)).await?;
        if let Ok(statement) = &prepared {
            if self.statements.len() >= MAX_CACHED_STATEMENTS {
                self.statements.clear();
            }
            self.statements.insert(sql.to_owned(), statement.clone());
        }
        Ok(prepared)
    }

    async fn write(&mut self, batch: &Batch, max_rows: usize) -> Result<(), Failure> {
        let lock = self
            .prepare(sql::LOCK_APPLIED)
            .await?
            .map_err(self.query_error("locking the applied seq"))?;
        let applied: i64 = within(
            self.target,
            "locking the applied seq",
            self.tx.query_opt(&lock, &[&self.pipeline, &self.sink]),
        )
        .await?
        .map_err(self.query_error("locking the applied seq"))?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(self.query_error("locking the applied seq"))?
        .unwrap_or(0);
        let applied = Seq(applied.max(0) as u64);
        let todo = batch.entries.iter().filter(|e| e.seq > applied);
        let keys = self.keys;
        let steps = plan(todo, max_rows, |stream| {
            keys.get(stream).map_or(1, Vec::len)
        });
        let rows: usize = steps.iter().map(|s| s.entries.len()).sum();
        for step in &steps {
            self.run(step).await?;
        }
        let last = batch
            .entries
            .last()
            .map_or(batch.last_seq, |e| e.seq.max(batch.last_seq));
        if last > applied {
            let write = self
                .prepare(sql::WRITE_APPLIED)
                .await?
                .map_err(self.query_error("recording the applied seq"))?;
            within(
                self.target,
                "recording the applied seq",
                self.tx.execute(
                    &write,
                    &[
                        &self.pipeline,
                        &self.sink,
                        &(last.0 as i64),
                        &batch.position.as_ref().map(Position::to_json),
                    ],
                ),
            )
            .await?
            .map_err(self.query_error("recording the applied seq"))?;
        }
        tracing::debug!(
            pipeline = %self.pipeline, sink = %self.sink, applied = %applied, last_seq = %last,
            rows, statements = steps.len(), "applying batch"
        );
        Ok(())
    }

    /// Runs one step. Errors name the first entry of the step (its only one when a replay
    /// runs one row per statement).
    async fn run(&mut self, step: &Step<'_>) -> Result<(), Failure> {
        let Some(first) = step.entries.first() else {
            return Ok(());
        };
        let (target, keys) = (self.target, self.keys);
        let key_columns = keys.get(step.stream).map_or(&[][..], Vec::as_slice);
        let fail = |problem: String, transient: bool| Failure {
            error: PostgresSinkError::BadChange {
                target: target.to_owned(),
                table: step.stream.to_owned(),
                seq: first.seq,
                key: first.change.key.to_string(),
                problem,
                transient,
            },
            grouped: step.entries.len() > 1 && !transient,
            copy: false,
        };
        let pg_fail = |e: tokio_postgres::Error| fail(describe(&e), is_transient(&e));
        let rows = step.entries.len();
        if let Action::Patch { columns } = &step.action {
            self.add_missing_columns(step, columns).await?;
        }
        if let Action::Upsert { columns } = &step.action {
            self.add_missing_columns(step, columns).await?;
            if copy::eligible(&step.entries)
                && self
                    .copy_backoff
                    .as_mut()
                    .is_some_and(|b| b.try_now(step.stream))
                && self.copy(step, columns, key_columns).await?
            {
                return Ok(());
            }
        }
        let sql = match &step.action {
            Action::Upsert { columns } => {
                let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
                if step
                    .entries
                    .iter()
                    .all(|e| e.change.op == tidesync_core::Op::Read)
                {
                    sql::upsert_if_changed_sql(step.stream, &columns, key_columns, rows)
                } else {
                    sql::upsert_sql(step.stream, &columns, key_columns, rows)
                }
            }
            Action::Delete => sql::delete_sql(step.stream, key_columns, rows),
            Action::Patch { columns } => {
                let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
                sql::patch_sql(step.stream, &columns, key_columns)
            }
            Action::Truncate => format!("TRUNCATE {}", sql::quote_ident(step.stream)),
        };
        let statement = self.prepare(&sql).await?.map_err(&pg_fail)?;
        let kinds: Vec<ColumnKind> = statement.params().iter().map(ColumnKind::of).collect();
        let mut bound: Vec<Bound<'_>> = Vec::with_capacity(kinds.len());
        for entry in step
            .entries
            .iter()
            .filter(|_| !matches!(step.action, Action::Truncate))
        {
            let bad = |problem: String| Failure {
                error: PostgresSinkError::BadChange {
                    target: target.to_owned(),
                    table: step.stream.to_owned(),
                    seq: entry.seq,
                    key: entry.change.key.to_string(),
                    problem,
                    transient: false,
                },
                grouped: false,
                copy: false,
            };
            let key = || {
                if entry.change.key.0.len() != key_columns.len() {
                    return Err(bad(format!(
                        "the key has {} values but the table's key has {} columns",
                        entry.change.key.0.len(),
                        key_columns.len()
                    )));
                }
                Ok(key_columns
                    .iter()
                    .map(String::as_str)
                    .zip(&entry.change.key.0))
            };
            let values: Vec<(&str, &Value)> = match (&step.action, upsert_row(entry)) {
                // `SET` the row's columns `WHERE` the key (the old one, for a key update).
                (Action::Patch { .. }, _) => entry
                    .change
                    .after
                    .iter()
                    .flat_map(|row| row.0.iter().map(|(c, v)| (c.as_str(), v)))
                    .chain(key()?)
                    .collect(),
                (_, Some(row)) => row.0.iter().map(|(c, v)| (c.as_str(), v)).collect(),
                (_, None) => key()?.collect(),
            };
            for (column, value) in values {
                let Some(kind) = kinds.get(bound.len()) else {
                    return Err(bad(format!(
                        "the statement has {} parameters, fewer than the values",
                        kinds.len()
                    )));
                };
                bound.push(bind(value, *kind).map_err(|p| bad(format!("column `{column}`: {p}")))?);
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            bound.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        within(
            target,
            "applying a change",
            self.tx.execute(&statement, &params),
        )
        .await?
        .map_err(&pg_fail)?;
        Ok(())
    }
}

impl Work<'_> {
    /// Inserts the rows of `step` (inserts only, see `copy::eligible`) with `COPY`. `false`
    /// when a value has no exact `COPY` text form: the caller upserts instead. A definite
    /// failure of the `COPY` itself aborts the transaction and asks for a replay with upserts
    /// (`Failure::copy`), which gives the result, or the error, the upsert would have.
    async fn copy(
        &mut self,
        step: &Step<'_>,
        columns: &[&str],
        key_columns: &[String],
    ) -> Result<bool, Failure> {
        let Some(first) = step.entries.first() else {
            return Ok(true);
        };
        let target = self.target;
        let fail = |e: tokio_postgres::Error| {
            let transient = is_transient(&e);
            Failure {
                error: PostgresSinkError::BadChange {
                    target: target.to_owned(),
                    table: step.stream.to_owned(),
                    seq: first.seq,
                    key: first.change.key.to_string(),
                    problem: format!("COPY of {} rows: {}", step.entries.len(), describe(&e)),
                    transient,
                },
                grouped: false,
                copy: !transient,
            }
        };
        let owned: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        // The one-row upsert's parameter types (the columns' types) decide how each value is
        // converted, exactly as for an upsert; it also serves a replay one row per statement.
        let upsert = self
            .prepare(&sql::upsert_sql(step.stream, &owned, key_columns, 1))
            .await?
            .map_err(fail)?;
        let kinds: Vec<ColumnKind> = upsert.params().iter().map(ColumnKind::of).collect();
        if kinds.len() != columns.len() {
            return Ok(false);
        }
        let mut data = bytes::BytesMut::with_capacity(step.entries.len() * 128);
        let mut bound: Vec<Bound<'_>> = Vec::with_capacity(kinds.len());
        for entry in &step.entries {
            let Some(row) = upsert_row(entry) else {
                return Ok(false);
            };
            bound.clear();
            for ((column, value), kind) in row.0.iter().zip(&kinds) {
                let value = bind(value, *kind).map_err(|problem| Failure {
                    error: PostgresSinkError::BadChange {
                        target: target.to_owned(),
                        table: step.stream.to_owned(),
                        seq: entry.seq,
                        key: entry.change.key.to_string(),
                        problem: format!("column `{column}`: {problem}"),
                        transient: false,
                    },
                    grouped: false,
                    copy: false,
                })?;
                bound.push(value);
            }
            if copy::put_row(&mut data, &bound).is_err() {
                return Ok(false);
            }
        }
        let statement = self
            .prepare(&sql::copy_sql(step.stream, &owned))
            .await?
            .map_err(fail)?;
        let copied = async {
            let sink = within(
                target,
                "starting a COPY",
                self.tx.copy_in::<_, bytes::Bytes>(&statement),
            )
            .await??;
            let mut sink = std::pin::pin!(sink);
            within(target, "sending rows to COPY", sink.send(data.freeze())).await??;
            within(target, "finishing a COPY", sink.as_mut().finish()).await??;
            Ok::<_, CopyError>(())
        }
        .await;
        let backoff = self.copy_backoff.as_mut();
        match copied {
            Ok(()) => {
                if let Some(b) = backoff {
                    b.succeeded(step.stream);
                }
                Ok(true)
            }
            Err(CopyError::Timeout(e)) => Err(e.into()),
            Err(CopyError::Pg(e)) => {
                let failure = fail(e);
                if failure.copy
                    && let Some(b) = backoff
                {
                    b.failed(step.stream);
                }
                Err(failure)
            }
        }
    }
}

/// How a `COPY` failed: the server's error, or no answer in time.
enum CopyError {
    Pg(tokio_postgres::Error),
    Timeout(PostgresSinkError),
}

impl From<tokio_postgres::Error> for CopyError {
    fn from(e: tokio_postgres::Error) -> Self {
        CopyError::Pg(e)
    }
}

impl From<PostgresSinkError> for CopyError {
    fn from(e: PostgresSinkError) -> Self {
        CopyError::Timeout(e)
    }
}

impl Work<'_> {
    /// Adds the columns of an upsert or a patch that the target table lacks (the source added
    /// them while streaming), typed from the first value of each that is not null.
    async fn add_missing_columns(
        &mut self,
        step: &Step<'_>,
        columns: &[&str],
    ) -> Result<(), Failure> {
        let known = self.columns.get(step.stream);
        let missing: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|c| !known.is_some_and(|k| k.contains(*c)))
            .filter(|c| !self.added.iter().any(|(t, a)| t == step.stream && a == c))
            .collect();
        let Some(first) = step.entries.first() else {
            return Ok(());
        };
        if missing.is_empty() {
            return Ok(());
        }
        if !self.create_tables {
            return Err(Failure {
                error: PostgresSinkError::BadChange {
                    target: self.target.to_owned(),
                    table: step.stream.to_owned(),
                    seq: first.seq,
                    key: first.change.key.to_string(),
                    problem: format!(
                        "the target table has no column {}; add it or set create_tables = true",
                        missing.join(", ")
                    ),
                    transient: false,
                },
                grouped: false,
                copy: false,
            });
        }
        for column in missing {
            // Upserts and patches both carry their columns in `after`.
            let value = step
                .entries
                .iter()
                .filter_map(|e| e.change.after.as_ref().and_then(|r| r.get(column)))
                .find(|v| !matches!(v, Value::Null));
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                sql::quote_ident(step.stream),
                sql::quote_ident(column),
                sql::pg_type_of_value(value)
            );
            within(self.target, "adding a column", self.tx.batch_execute(&sql))
                .await?
                .map_err(|e| Failure::from(query_error(self.target, "adding a column")(e)))?;
            tracing::info!(table = %step.stream, column, "added a column to the target table");
            self.added.push((step.stream.to_owned(), column.to_owned()));
        }
        Ok(())
    }
}

/// Turns a server or connection error outside any one change into a [`PostgresSinkError`].
fn query_error(
    target: &str,
    context: &str,
) -> impl Fn(tokio_postgres::Error) -> PostgresSinkError + use<> {
    let (target, context) = (target.to_owned(), context.to_owned());
    move |e| PostgresSinkError::Query {
        target: target.clone(),
        context: context.clone(),
        problem: describe(&e),
        transient: is_transient(&e),
    }
}

/// Awaits `fut` for at most [`STATEMENT_TIMEOUT`].
async fn within<T>(
    target: &str,
    context: &str,
    fut: impl Future<Output = T>,
) -> Result<T, PostgresSinkError> {
    within_limit(target, context, STATEMENT_TIMEOUT, fut).await
}

async fn within_limit<T>(
    target: &str,
    context: &str,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Result<T, PostgresSinkError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| PostgresSinkError::Timeout {
            target: target.to_owned(),
            context: context.to_owned(),
            timeout_ms: limit.as_millis() as u64,
        })
}

impl Sink for PostgresSink {
    fn open(
        &mut self,
        schemas: Vec<TableSchema>,
    ) -> BoxFuture<'_, Result<Option<Seq>, StageError>> {
        Box::pin(async move {
            let result = self.open_inner(&schemas).await;
            if result.is_err() {
                // Reconnect on the next call: the connection may be the problem.
                self.conn = None;
            }
            result.map_err(StageError::from)
        })
    }

    fn forget(&mut self) -> BoxFuture<'_, Result<Vec<String>, StageError>> {
        Box::pin(async move {
            let (pipeline, sink, target) = (
                self.pipeline.clone(),
                self.sink.clone(),
                self.target.clone(),
            );
            let err = self.query_error("forgetting the applied seq");
            let conn = self.connect().await.map_err(StageError::from)?;
            let n = within(
                &target,
                "forgetting the applied seq",
                conn.client.execute(
                    "DELETE FROM _tidesync_applied WHERE pipeline = $1 AND sink = $2",
                    &[&pipeline, &sink],
                ),
            )
            .await
            .map_err(StageError::from)?
            .map_err(|e| StageError::from(err(e)))?;
            let copied = self.clear_copied_inner().await.map_err(StageError::from)?;
            // The connection re-creates the row on its next use; drop it so it does not.
            self.conn = None;
            let mut forgot = Vec::new();
            if n > 0 {
                forgot.push(format!(
                    "forgot the applied seq of {pipeline}/{sink} in {target}"
                ));
            }
            if copied {
                forgot.push(format!(
                    "forgot the direct copy's position of {pipeline}/{sink} in {target}"
                ));
            }
            Ok(forgot)
        })
    }

    fn apply(&mut self, batch: Arc<Batch>) -> BoxFuture<'_, Result<(), StageError>> {
        Box::pin(async move {
            let result = self.apply_inner(&batch).await;
            if result.is_err() {
                self.conn = None;
            }
            result.map_err(StageError::from)
        })
    }

    fn copy_writer(&self) -> Option<Box<dyn CopyWriter>> {
        Some(Box::new(direct::PgCopyWriter::new(self)))
    }

    fn copy_binary(
        &mut self,
        schemas: &[TableSchema],
    ) -> BoxFuture<'_, Result<HashSet<String>, StageError>> {
        let schemas = schemas.to_vec();
        Box::pin(async move {
            self.copy_binary_inner(&schemas)
                .await
                .map_err(StageError::from)
        })
    }

    fn copied(&mut self) -> BoxFuture<'_, Result<Option<Position>, StageError>> {
        Box::pin(async move { self.copied_inner().await.map_err(StageError::from) })
    }

    fn clear_copied(&mut self) -> BoxFuture<'_, Result<(), StageError>> {
        Box::pin(async move {
            self.clear_copied_inner()
                .await
                .map(drop)
                .map_err(StageError::from)
        })
    }

    fn records_positions(&self) -> bool {
        true
    }

    fn applied_position(&mut self) -> BoxFuture<'_, Result<Option<(Seq, Position)>, StageError>> {
        Box::pin(async move {
            self.applied_position_inner()
                .await
                .map_err(StageError::from)
        })
    }
}

#[cfg(test)]
mod tests;
