//! Trigger capture on SQLite.
//!
//! [`TriggerSource::open`] installs, per captured table, AFTER INSERT/UPDATE/DELETE triggers
//! that append one row per change to the pipeline's change table
//! `_tidesync_<pipeline>_changes (id, schema_id, op, old, new, at_us)`. `old` and `new` hold
//! the row as `quote()` literals (lossless, see `literal.rs`); `schema_id` points at
//! `_tidesync_<pipeline>_schemas`, which records the column list the trigger was built for, so
//! rows captured before an `ALTER TABLE` still decode with their own columns.
//!
//! Invariants:
//! - The trigger row is written in the user's own transaction: a committed change always has
//!   its change row, a rolled-back one never.
//! - `id` is AUTOINCREMENT, so ids are never reused after rows are deleted: the last drained id
//!   is a total order and is the source [`Position`].
//! - Rows are deleted only in [`TriggerSource::ack`], after the store committed them. A crash
//!   before that leaves rows the restarted source skips (`id <=` stored position) and deletes.
//! - An update that changes key columns is emitted as a delete of the old key and an insert of
//!   the new one.
//! - On the first start (no stored position), and for a table captured for the first time,
//!   the table's existing rows are copied into the change table as `R` (read) rows in the
//!   same transaction that installs the triggers: a consistent snapshot (FULL) followed by
//!   the changes after it (INCREMENTAL), drained and resumed the same way.
//! - Changes are per row, in commit order; SQLite has one writer at a time, so id order is
//!   commit order. Commit time has millisecond precision (SQLite's clock).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tidesync_core::sql::quote_ident;
use tidesync_core::{
    BatchKind, BoxFuture, Captured, Change, ColumnSchema, Key, Op, Opened, Position, Request,
    RequestKind, RequestProgress, Row, Source, StageError, TableSchema, Value,
};
use tidesync_store::{SqliteParam, sqlite_is_transient};

use super::literal;

/// What went wrong capturing from SQLite, and where.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("source database {path} does not exist")]
    NoDatabase { path: PathBuf },
    #[error("source database {path}: {context}: {source}")]
    Sqlite {
        path: PathBuf,
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("source database {path}: table `{table}` does not exist")]
    NoTable { path: PathBuf, table: String },
    #[error(
        "source database {path}: table `{table}` has no primary key; trigger capture needs one to key its changes"
    )]
    NoPrimaryKey { path: PathBuf, table: String },
    #[error("source database {path}: change row {id} of table `{table}`: {problem}")]
    BadChange {
        path: PathBuf,
        table: String,
        id: i64,
        problem: String,
    },
    #[error("source database {path}: a request to re-read rows of `{table}`: {problem}")]
    BadRequest {
        path: PathBuf,
        table: String,
        problem: String,
    },
    #[error("source database {path}: change row {id} refers to unknown schema {schema_id}")]
    UnknownSchema {
        path: PathBuf,
        id: i64,
        schema_id: i64,
    },
    #[error(
        "source database {path}: the store has captured up to change row {stored}, but the change table has only issued ids up to {issued}; \
         the change table was dropped or the database restored from an older copy. Changes since then cannot be told apart: \
         re-sync the target and start the pipeline with a new store"
    )]
    PositionAhead {
        path: PathBuf,
        issued: i64,
        stored: i64,
    },
    #[error("trigger capture resumes from a row id, but the stored position is {0}")]
    WrongPosition(Position),
}

impl From<TriggerError> for StageError {
    fn from(e: TriggerError) -> Self {
        match &e {
            TriggerError::Sqlite { source, .. } if sqlite_is_transient(source) => {
                StageError::transient(e)
            }
            _ => StageError::definite(e),
        }
    }
}

/// A captured table as the triggers were built for it.
#[derive(Debug, Clone, PartialEq)]
struct TableShape {
    table: String,
    columns: Vec<String>,
    /// Positions of the key columns in `columns`, in key order.
    key_indexes: Vec<usize>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    pipeline: String,
    tables: Vec<String>,
    conn: Option<Connection>,
    /// schema id -> shape, loaded lazily.
    shapes: HashMap<i64, Arc<TableShape>>,
    /// The last change id handed out by `poll` (not yet necessarily acked).
    last_polled: i64,
    /// Re-read requests not yet written into the change table.
    requests: std::collections::VecDeque<Request>,
    /// Requests written into the change table: (id, last change id of their rows).
    served: std::collections::VecDeque<(i64, i64)>,
}

/// Trigger capture from one SQLite database.
#[derive(Debug)]
pub struct TriggerSource {
    inner: Arc<Mutex<Inner>>,
    poll_interval: Duration,
}

impl TriggerSource {
    /// `pipeline` names the change table and triggers, so several pipelines can capture the
    /// same database independently. It must be a plain identifier (the config checks this).
    pub fn new(path: &Path, pipeline: &str, tables: Vec<String>, poll_interval: Duration) -> Self {
        TriggerSource {
            inner: Arc::new(Mutex::new(Inner {
                path: path.to_owned(),
                pipeline: pipeline.to_owned(),
                tables,
                conn: None,
                shapes: HashMap::new(),
                last_polled: 0,
                requests: Default::default(),
                served: Default::default(),
            })),
            poll_interval,
        }
    }

    /// Runs `f` on the blocking pool with the source's state.
    fn blocking<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, StageError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Inner) -> Result<T, TriggerError> + Send + 'static,
    {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut guard)
            })
            .await
            .map_err(|e| StageError::transient(format!("capture task failed: {e}")))?
            .map_err(StageError::from)
        })
    }
}

/// Microseconds since the epoch, in SQLite.
const NOW_US: &str = "CAST(unixepoch('subsec') * 1000000 AS INTEGER)";

/// The SQL of a row as the change table stores it: each expression's `quote()` literal,
/// comma-separated (see `literal.rs`).
fn quoted_row(exprs: impl Iterator<Item = String>) -> String {
    exprs
        .map(|e| format!("quote({e})"))
        .collect::<Vec<_>>()
        .join(" || ',' || ")
}

/// The names of the change table and schema table of `pipeline`.
pub fn change_table(pipeline: &str) -> String {
    format!("_tidesync_{pipeline}_changes")
}

fn schema_table(pipeline: &str) -> String {
    format!("_tidesync_{pipeline}_schemas")
}

/// A row of the change table: id, schema_id, op, old, new, at_us.
type ChangeRow = (i64, i64, String, Option<String>, Option<String>, i64);

impl Inner {
    fn err(&self, context: &str) -> impl Fn(rusqlite::Error) -> TriggerError + use<> {
        let (path, context) = (self.path.clone(), context.to_owned());
        move |source| TriggerError::Sqlite {
            path: path.clone(),
            context: context.clone(),
            source,
        }
    }

    fn conn(&mut self) -> Result<&mut Connection, TriggerError> {
        if self.conn.is_none() {
            if !self.path.exists() {
                return Err(TriggerError::NoDatabase {
                    path: self.path.clone(),
                });
            }
            let conn = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(self.err("opening"))?;
            conn.busy_timeout(Duration::from_secs(10))
                .map_err(self.err("setting busy_timeout"))?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or_else(|| TriggerError::NoDatabase {
            path: self.path.clone(),
        })
    }

    /// Reads a table's columns and key from the database.
    fn table_schema(
        conn: &Connection,
        path: &Path,
        table: &str,
    ) -> Result<TableSchema, TriggerError> {
        let err = |source| TriggerError::Sqlite {
            path: path.to_owned(),
            context: format!("reading the columns of `{table}`"),
            source,
        };
        let mut st = conn
            .prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid")
            .map_err(err)?;
        let rows: Vec<(String, String, bool, i64)> = st
            .query_map([table], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(err)?;
        if rows.is_empty() {
            return Err(TriggerError::NoTable {
                path: path.to_owned(),
                table: table.to_owned(),
            });
        }
        let mut key: Vec<(i64, String)> = rows
            .iter()
            .filter(|r| r.3 > 0)
            .map(|r| (r.3, r.0.clone()))
            .collect();
        if key.is_empty() {
            return Err(TriggerError::NoPrimaryKey {
                path: path.to_owned(),
                table: table.to_owned(),
            });
        }
        key.sort();
        Ok(TableSchema {
            name: table.to_owned(),
            columns: rows
                .iter()
                .map(|(name, ty, notnull, pk)| ColumnSchema {
                    name: name.clone(),
                    type_name: ty.clone(),
                    nullable: !notnull && *pk == 0,
                })
                .collect(),
            key: key.into_iter().map(|(_, k)| k).collect(),
            dialect: tidesync_core::Dialect::Sqlite,
        })
    }

    /// Creates the change and schema tables and (re)installs the triggers of every table whose
    /// columns changed since they were built, all in one transaction.
    fn install(&mut self, from: Option<i64>) -> Result<Vec<TableSchema>, TriggerError> {
        let (path, pipeline, tables) = (
            self.path.clone(),
            self.pipeline.clone(),
            self.tables.clone(),
        );
        let err = self.err("installing capture triggers");
        let conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let changes = quote_ident(&change_table(&pipeline));
        let schemas = quote_ident(&schema_table(&pipeline));
        let e = |context: String| {
            let path = path.clone();
            move |source| TriggerError::Sqlite {
                path,
                context,
                source,
            }
        };
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {changes} (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, schema_id INTEGER NOT NULL,
                 op TEXT NOT NULL, old TEXT, new TEXT, at_us INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS {schemas} (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL,
                 columns TEXT NOT NULL, key TEXT NOT NULL);"
        ))
        .map_err(e("creating the change table".into()))?;
        let mut out = Vec::new();
        for table in &tables {
            let schema = Self::table_schema(&tx, &path, table)?;
            let columns: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
            let quote_list = |names: &[String]| {
                names
                    .iter()
                    .map(|n| format!("'{}'", n.replace('\'', "''")))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let (cols_text, key_text) = (quote_list(&columns), quote_list(&schema.key));
            let current: Option<(i64, String, String)> = tx
                .query_row(
                    &format!("SELECT id, columns, key FROM {schemas} WHERE tbl = ?1 ORDER BY id DESC LIMIT 1"),
                    [table],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(e(format!("reading the capture schema of `{table}`")))?;
            let trigger = |op: &str| format!("_tidesync_{pipeline}_{table}_{op}");
            let triggers_present: i64 = tx
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN (?1, ?2, ?3)",
                    params![trigger("ins"), trigger("upd"), trigger("del")],
                    |r| r.get(0),
                )
                .map_err(e(format!("looking up the triggers of `{table}`")))?;
            // A table seen for the first time, or every table when the store is new, gets a
            // snapshot: its rows are copied into the change table as reads IN THIS
            // TRANSACTION, together with the triggers, so the snapshot and the changes after it
            // meet exactly: nothing lost, nothing doubled, and the copy drains in chunks and
            // resumes like any other change.
            let snapshot = from.is_none() || current.is_none();
            let reuse = current.filter(|(_, c, k)| *c == cols_text && *k == key_text);
            if reuse.is_some() && triggers_present == 3 && !snapshot {
                out.push(schema);
                continue;
            }
            let schema_id = match reuse {
                Some((id, ..)) => id,
                None => {
                    tx.execute(
                        &format!("INSERT INTO {schemas} (tbl, columns, key) VALUES (?1, ?2, ?3)"),
                        params![table, cols_text, key_text],
                    )
                    .map_err(e(format!("recording the capture schema of `{table}`")))?;
                    tx.last_insert_rowid()
                }
            };
            let row_expr = |prefix: &str| {
                quoted_row(
                    columns
                        .iter()
                        .map(|c| format!("{prefix}{}", quote_ident(c))),
                )
            };
            let (new_row, old_row) = (row_expr("NEW."), row_expr("OLD."));
            let tbl = quote_ident(table);
            let now = NOW_US;
            let sql = format!(
                "DROP TRIGGER IF EXISTS {ins};
                 DROP TRIGGER IF EXISTS {upd};
                 DROP TRIGGER IF EXISTS {del};
                 CREATE TRIGGER {ins} AFTER INSERT ON {tbl} BEGIN
                   INSERT INTO {changes} (schema_id, op, old, new, at_us) VALUES ({schema_id}, 'I', NULL, {new_row}, {now});
                 END;
                 CREATE TRIGGER {upd} AFTER UPDATE ON {tbl} BEGIN
                   INSERT INTO {changes} (schema_id, op, old, new, at_us) VALUES ({schema_id}, 'U', {old_row}, {new_row}, {now});
                 END;
                 CREATE TRIGGER {del} AFTER DELETE ON {tbl} BEGIN
                   INSERT INTO {changes} (schema_id, op, old, new, at_us) VALUES ({schema_id}, 'D', {old_row}, NULL, {now});
                 END;",
                ins = quote_ident(&trigger("ins")),
                upd = quote_ident(&trigger("upd")),
                del = quote_ident(&trigger("del")),
            );
            tx.execute_batch(&sql)
                .map_err(e(format!("creating the capture triggers of `{table}`")))?;
            tracing::info!(table = %table, schema_id, "installed capture triggers");
            if snapshot {
                let copied = tx
                    .execute(
                        &format!(
                            "INSERT INTO {changes} (schema_id, op, old, new, at_us)
                             SELECT {schema_id}, 'R', NULL, {}, {now} FROM {tbl}",
                            row_expr("")
                        ),
                        [],
                    )
                    .map_err(e(format!("snapshotting `{table}`")))?;
                tracing::info!(table = %table, rows = copied, "queued initial snapshot");
            }
            out.push(schema);
        }
        // Rows at or below the stored position were committed to the store before a crash
        // kept us from deleting them.
        if let Some(from) = from {
            // The change table's id counter must have reached the stored position; if it is
            // behind, the table was dropped or the database restored from an older copy, and
            // new changes would get ids we consider already captured: refuse, loudly.
            let issued: i64 = tx
                .query_row(
                    "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = ?1",
                    [change_table(&pipeline)],
                    |r| r.get(0),
                )
                .map_err(e("reading the change table's id counter".into()))?;
            if issued < from {
                return Err(TriggerError::PositionAhead {
                    path,
                    issued,
                    stored: from,
                });
            }
            tx.execute(&format!("DELETE FROM {changes} WHERE id <= ?1"), [from])
                .map_err(e("clearing already captured changes".into()))?;
        }
        tx.commit()
            .map_err(e("committing the capture setup".into()))?;
        self.last_polled = from.unwrap_or(0);
        self.shapes.clear();
        Ok(out)
    }

    fn shape(&mut self, schema_id: i64, id: i64) -> Result<Arc<TableShape>, TriggerError> {
        if let Some(shape) = self.shapes.get(&schema_id) {
            return Ok(shape.clone());
        }
        let (path, pipeline) = (self.path.clone(), self.pipeline.clone());
        let err = self.err("reading a capture schema");
        let found: Option<(String, String, String)> = self
            .conn()?
            .query_row(
                &format!(
                    "SELECT tbl, columns, key FROM {} WHERE id = ?1",
                    quote_ident(&schema_table(&pipeline))
                ),
                [schema_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(err)?;
        let (table, columns, key) = found.ok_or_else(|| TriggerError::UnknownSchema {
            path: path.clone(),
            id,
            schema_id,
        })?;
        let names = |text: &str| -> Result<Vec<String>, TriggerError> {
            literal::parse_list(text)
                .map_err(|problem| TriggerError::BadChange {
                    path: path.clone(),
                    table: table.clone(),
                    id,
                    problem: format!("capture schema {schema_id}: {problem}"),
                })?
                .into_iter()
                .map(|v| match v {
                    Value::Text(s) => Ok(s),
                    other => Err(TriggerError::BadChange {
                        path: path.clone(),
                        table: table.clone(),
                        id,
                        problem: format!("capture schema {schema_id}: column name {other}"),
                    }),
                })
                .collect()
        };
        let columns = names(&columns)?;
        let key_indexes = names(&key)?
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|c| c == k)
                    .ok_or_else(|| TriggerError::BadChange {
                        path: path.clone(),
                        table: table.clone(),
                        id,
                        problem: format!(
                            "capture schema {schema_id}: key column `{k}` is not a column"
                        ),
                    })
            })
            .collect::<Result<_, _>>()?;
        let shape = Arc::new(TableShape {
            table: table.clone(),
            columns,
            key_indexes,
        });
        self.shapes.insert(schema_id, shape.clone());
        Ok(shape)
    }

    /// Writes the oldest request's rows into the change table, in one transaction: each
    /// asked row as it is now (`P`, read as [`Op::Read`]) and each asked key the table lacks
    /// (`X`, a delete of that key). In the change table they sit after every change committed
    /// before them and before every change after them, so no key sees its versions out of
    /// order. Returns `(id, last change id)`; a request that wrote nothing is done at once.
    fn serve_request(&mut self) -> Result<Option<(i64, i64)>, TriggerError> {
        let Some(request) = self.requests.pop_front() else {
            return Ok(None);
        };
        let (path, pipeline) = (self.path.clone(), self.pipeline.clone());
        let err = self.err(&format!(
            "re-reading rows of `{}` on request",
            request.stream
        ));
        let conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        let (changes, schemas) = (
            quote_ident(&change_table(&pipeline)),
            quote_ident(&schema_table(&pipeline)),
        );
        let schema_id: i64 = tx
            .query_row(
                &format!("SELECT max(id) FROM {schemas} WHERE tbl = ?1"),
                [&request.stream],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map_err(&err)?
            .ok_or_else(|| TriggerError::NoTable {
                path: path.clone(),
                table: request.stream.clone(),
            })?;
        let schema = Self::table_schema(&tx, &path, &request.stream)?;
        let row_expr = quoted_row(schema.columns.iter().map(|c| quote_ident(&c.name)));
        let tbl = quote_ident(&request.stream);
        let now = NOW_US;
        let mut written = 0;
        match &request.what {
            RequestKind::Table { .. } => {
                written += tx
                    .execute(
                        &format!(
                            "INSERT INTO {changes} (schema_id, op, old, new, at_us)
                             SELECT ?1, 'P', NULL, {row_expr}, {now} FROM {tbl}"
                        ),
                        [schema_id],
                    )
                    .map_err(&err)?;
            }
            RequestKind::Keys(keys) => {
                let matches = schema
                    .key
                    .iter()
                    .enumerate()
                    .map(|(i, k)| format!("{} = ?{}", quote_ident(k), i + 2))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let key_literal = quoted_row((0..schema.key.len()).map(|i| format!("?{}", i + 2)));
                let mut read = tx
                    .prepare(&format!(
                        "INSERT INTO {changes} (schema_id, op, old, new, at_us)
                         SELECT ?1, 'P', NULL, {row_expr}, {now} FROM {tbl} WHERE {matches}"
                    ))
                    .map_err(&err)?;
                let mut gone = tx
                    .prepare(&format!(
                        "INSERT INTO {changes} (schema_id, op, old, new, at_us)
                         VALUES (?1, 'X', {key_literal}, NULL, {now})"
                    ))
                    .map_err(&err)?;
                for key in keys {
                    if key.0.len() != schema.key.len() {
                        return Err(TriggerError::BadRequest {
                            path,
                            table: request.stream.clone(),
                            problem: format!(
                                "a key of {} values for the {} key columns {:?}",
                                key.0.len(),
                                schema.key.len(),
                                schema.key
                            ),
                        });
                    }
                    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&schema_id];
                    let bound: Vec<SqliteParam<'_>> = key.0.iter().map(SqliteParam).collect();
                    params.extend(bound.iter().map(|p| p as &dyn rusqlite::ToSql));
                    let n = read.execute(params.as_slice()).map_err(&err)?;
                    if n == 0 {
                        gone.execute(params.as_slice()).map_err(&err)?;
                    }
                    written += n.max(1);
                }
            }
        }
        let last = tx.last_insert_rowid();
        tx.commit().map_err(&err)?;
        tracing::info!(path = %path.display(), request = request.id, table = %request.stream, rows = written, "queued requested rows");
        Ok(Some((request.id, if written == 0 { 0 } else { last })))
    }

    fn poll_once(&mut self, max: usize) -> Result<Option<Captured>, TriggerError> {
        let front = self.requests.front().map(|r| r.id);
        let served = match self.serve_request() {
            // A request this source cannot serve fails alone; capture goes on.
            Err(e @ TriggerError::BadRequest { .. }) => {
                return Ok(Some(Captured {
                    refreshed: Vec::new(),
                    fingerprints: Vec::new(),
                    kind: BatchKind::Full,
                    changes: Vec::new(),
                    position: Position::RowId(self.last_polled),
                    progress: front.map(|id| RequestProgress {
                        id,
                        after: None,
                        done: true,
                        error: Some(e.to_string()),
                    }),
                }));
            }
            other => other?,
        };
        if let Some((id, last)) = served {
            if last == 0 {
                // Nothing to read (an empty table): done with no rows.
                return Ok(Some(Captured {
                    refreshed: Vec::new(),
                    fingerprints: Vec::new(),
                    kind: BatchKind::Full,
                    changes: Vec::new(),
                    position: Position::RowId(self.last_polled),
                    progress: Some(RequestProgress {
                        id,
                        after: None,
                        done: true,
                        error: None,
                    }),
                }));
            }
            self.served.push_back((id, last));
        }
        let pipeline = self.pipeline.clone();
        let after = self.last_polled;
        let err = self.err("reading captured changes");
        let rows: Vec<ChangeRow> = {
            let conn = self.conn()?;
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT id, schema_id, op, old, new, at_us FROM {} WHERE id > ?1 ORDER BY id LIMIT ?2",
                    quote_ident(&change_table(&pipeline))
                ))
                .map_err(&err)?;
            st.query_map(params![after, max as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(err)?
        };
        // Requested rows (`P`, `X`) travel in batches of their own, logged as they are (a
        // `Full` batch), and a batch ends with the last row of a request.
        let requested = |op: &str| op == "P" || op == "X";
        let mut rows = rows;
        let Some(first) = rows.first().map(|r| requested(&r.2)) else {
            return Ok(None);
        };
        let cut = rows.iter().position(|r| requested(&r.2) != first);
        rows.truncate(cut.unwrap_or(rows.len()));
        let mut progress = None;
        if first
            && let Some(&(id, end)) = self.served.front()
            && let Some(at) = rows.iter().position(|r| r.0 >= end)
        {
            rows.truncate(at + 1);
            self.served.pop_front();
            progress = Some(RequestProgress {
                id,
                after: None,
                done: true,
                error: None,
            });
        }
        let Some(last) = rows.last().map(|r| r.0) else {
            return Ok(None);
        };
        let mut changes = Vec::with_capacity(rows.len());
        for (id, schema_id, op, old, new, at_us) in rows {
            let shape = self.shape(schema_id, id)?;
            let bad = |problem: String| TriggerError::BadChange {
                path: self.path.clone(),
                table: shape.table.clone(),
                id,
                problem,
            };
            let decode = |text: Option<String>, which: &str| -> Result<Option<Row>, TriggerError> {
                let Some(text) = text else { return Ok(None) };
                let values =
                    literal::parse_list(&text).map_err(|p| bad(format!("{which} row: {p}")))?;
                if values.len() != shape.columns.len() {
                    return Err(bad(format!(
                        "{which} row has {} values for {} columns",
                        values.len(),
                        shape.columns.len()
                    )));
                }
                Ok(Some(Row(shape
                    .columns
                    .iter()
                    .cloned()
                    .zip(values)
                    .collect())))
            };
            if op == "X" {
                // A requested key the table lacks: `old` holds just the key's values.
                let text = old.unwrap_or_default();
                let values =
                    literal::parse_list(&text).map_err(|p| bad(format!("requested key: {p}")))?;
                if values.len() != shape.key_indexes.len() {
                    return Err(bad(format!(
                        "requested key has {} values for {} key columns",
                        values.len(),
                        shape.key_indexes.len()
                    )));
                }
                changes.push(Change {
                    stream: shape.table.clone(),
                    op: Op::Delete,
                    key: Key(values),
                    before: None,
                    after: None,
                    commit_time_us: at_us,
                    position: Some(Position::RowId(id)),
                    txn: None,
                    unchanged: Vec::new(),
                });
                continue;
            }
            let (before, after) = (decode(old, "old")?, decode(new, "new")?);
            let key_of = |row: &Row| {
                Key(shape
                    .key_indexes
                    .iter()
                    .map(|i| row.0[*i].1.clone())
                    .collect())
            };
            let make = |op: Op, key: Key, before: Option<Row>, after: Option<Row>| Change {
                stream: shape.table.clone(),
                op,
                key,
                before,
                after,
                commit_time_us: at_us,
                position: Some(Position::RowId(id)),
                txn: None,
                unchanged: Vec::new(),
            };
            match (op.as_str(), before, after) {
                ("I", None, Some(a)) => changes.push(make(Op::Insert, key_of(&a), None, Some(a))),
                ("R" | "P", None, Some(a)) => {
                    changes.push(make(Op::Read, key_of(&a), None, Some(a)))
                }
                ("D", Some(b), None) => changes.push(make(Op::Delete, key_of(&b), Some(b), None)),
                ("U", Some(b), Some(a)) => {
                    let (old_key, new_key) = (key_of(&b), key_of(&a));
                    if old_key == new_key {
                        changes.push(make(Op::Update, new_key, Some(b), Some(a)));
                    } else {
                        changes.push(make(Op::Delete, old_key, Some(b), None));
                        changes.push(make(Op::Insert, new_key, None, Some(a)));
                    }
                }
                (op, ..) => return Err(bad(format!("op `{op}` with the wrong row images"))),
            }
        }
        self.last_polled = last;
        let kind = if first || changes.iter().all(|c| c.op == Op::Read) {
            BatchKind::Full
        } else {
            BatchKind::Incremental
        };
        Ok(Some(Captured {
            refreshed: Vec::new(),
            fingerprints: Vec::new(),
            kind,
            changes,
            position: Position::RowId(last),
            progress,
        }))
    }
}

impl Inner {
    /// Drops the triggers of every table this pipeline ever captured and its change and
    /// schema tables, in one transaction.
    fn remove(&mut self) -> Result<Vec<String>, TriggerError> {
        let (path, pipeline, configured) = (
            self.path.clone(),
            self.pipeline.clone(),
            self.tables.clone(),
        );
        let e = |context: String| {
            let path = path.clone();
            move |source| TriggerError::Sqlite {
                path,
                context,
                source,
            }
        };
        let conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e("beginning the removal".into()))?;
        let (changes, schemas) = (change_table(&pipeline), schema_table(&pipeline));
        let exists = |name: &str| -> Result<bool, TriggerError> {
            tx.query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(e(format!("looking up {name}")))
        };
        let mut tables: Vec<String> = configured;
        if exists(&schemas)? {
            let mut st = tx
                .prepare(&format!(
                    "SELECT DISTINCT tbl FROM {}",
                    quote_ident(&schemas)
                ))
                .map_err(e("reading captured tables".into()))?;
            let known: Vec<String> = st
                .query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(e("reading captured tables".into()))?;
            tables.extend(known);
        }
        tables.sort();
        tables.dedup();
        let mut done = Vec::new();
        for table in &tables {
            let mut dropped = 0;
            for op in ["ins", "upd", "del"] {
                let name = format!("_tidesync_{pipeline}_{table}_{op}");
                let present: bool = tx
                    .query_row(
                        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                        [&name],
                        |r| r.get(0),
                    )
                    .map_err(e(format!("looking up trigger {name}")))?;
                if present {
                    tx.execute_batch(&format!("DROP TRIGGER {}", quote_ident(&name)))
                        .map_err(e(format!("dropping trigger {name}")))?;
                    dropped += 1;
                }
            }
            if dropped > 0 {
                done.push(format!(
                    "dropped the capture triggers on {table} in {}",
                    path.display()
                ));
            }
        }
        if exists(&changes)? {
            let pending: i64 = tx
                .query_row(
                    &format!("SELECT count(*) FROM {}", quote_ident(&changes)),
                    [],
                    |r| r.get(0),
                )
                .map_err(e("counting pending changes".into()))?;
            tx.execute_batch(&format!("DROP TABLE {}", quote_ident(&changes)))
                .map_err(e(format!("dropping {changes}")))?;
            done.push(format!(
                "dropped {changes} ({pending} uncaptured changes) in {}",
                path.display()
            ));
        }
        if exists(&schemas)? {
            tx.execute_batch(&format!("DROP TABLE {}", quote_ident(&schemas)))
                .map_err(e(format!("dropping {schemas}")))?;
            done.push(format!("dropped {schemas} in {}", path.display()));
        }
        tx.commit().map_err(e("committing the removal".into()))?;
        self.shapes.clear();
        Ok(done)
    }
}

impl Source for TriggerSource {
    fn open(&mut self, from: Option<Position>) -> BoxFuture<'_, Result<Opened, StageError>> {
        let from = match from {
            None => None,
            Some(Position::RowId(id)) => Some(id),
            Some(other) => {
                let e = TriggerError::WrongPosition(other);
                return Box::pin(async move { Err(e.into()) });
            }
        };
        self.blocking(move |inner| {
            let schemas = inner.install(from)?;
            // A fresh start begins before the snapshot rows just queued (or any rows an
            // earlier store left behind).
            Ok(Opened {
                schemas,
                start: Some(Position::RowId(from.unwrap_or(0))),
            })
        })
    }

    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Captured>, StageError>> {
        let deadline = Instant::now() + wait;
        let interval = self.poll_interval;
        Box::pin(async move {
            loop {
                if let Some(captured) = self.blocking(move |inner| inner.poll_once(max)).await? {
                    return Ok(Some(captured));
                }
                let now = Instant::now();
                if now >= deadline {
                    return Ok(None);
                }
                tokio::time::sleep(interval.min(deadline - now)).await;
            }
        })
    }

    fn remove(&mut self) -> BoxFuture<'_, Result<Vec<String>, StageError>> {
        self.blocking(|inner| inner.remove())
    }

    fn request(&mut self, request: Request) -> Result<(), StageError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !inner.tables.contains(&request.stream) {
            return Err(StageError::definite(format!(
                "source database {}: `{}` is not a table this pipeline captures (tables: {})",
                inner.path.display(),
                request.stream,
                inner.tables.join(", ")
            )));
        }
        let known = inner.requests.iter().any(|r| r.id == request.id)
            || inner.served.iter().any(|(id, _)| *id == request.id);
        if !known {
            inner.requests.push_back(request);
        }
        Ok(())
    }

    fn ack(&mut self, position: Position) -> BoxFuture<'_, Result<(), StageError>> {
        let Position::RowId(upto) = position else {
            let e = TriggerError::WrongPosition(position);
            return Box::pin(async move { Err(e.into()) });
        };
        self.blocking(move |inner| {
            let table = quote_ident(&change_table(&inner.pipeline));
            let err = inner.err("deleting acknowledged changes");
            inner
                .conn()?
                .prepare_cached(&format!("DELETE FROM {table} WHERE id <= ?1"))
                .and_then(|mut st| st.execute([upto]))
                .map_err(err)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
