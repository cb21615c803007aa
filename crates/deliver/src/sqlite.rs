//! Database apply into SQLite.
//!
//! Each batch is one transaction: upserts (`INSERT .. ON CONFLICT (key) DO UPDATE`), deletes
//! and patches in seq order, plus the batch's last seq in `_tidesync_applied`. Entries at or
//! below the recorded seq are skipped, so a batch replayed after a crash (the store's cursor
//! moves only after this commit) is never applied twice: exactly-once.
//!
//! A patch ([`Op::Patch`]: the store could not fill an update's unchanged values) is an
//! `UPDATE t SET c = ?1, .. WHERE k = ?n` of the columns it holds, so the row's other columns
//! keep their values (an upsert would write nulls or fail a `NOT NULL` check); it may set the
//! key columns (a key update), and a patch of a key the table lacks changes nothing.
//!
//! Values map onto SQLite storage classes: int, float, text and bytes as themselves, bool as
//! 0/1, decimal as its exact text, timestamp/date/time as ISO 8601 text (`time` module formats),
//! json as its text. SQLite to SQLite is therefore an exact copy.
//!
//! With `create_tables`, missing tables are created from the source schema (declared types and
//! primary key as in the source); otherwise a missing table is a definite error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tidesync_core::sql::quote_ident;
use tidesync_core::{Batch, BoxFuture, Dialect, Op, Seq, Sink, StageError, TableSchema, Value};
use tidesync_store::{SqliteParam, sqlite_is_transient};

/// What went wrong applying to SQLite, and where.
#[derive(Debug, thiserror::Error)]
pub enum SqliteSinkError {
    #[error("target database {path}: {context}: {source}")]
    Sqlite {
        path: PathBuf,
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "target database {path}: table `{table}` does not exist (set create_tables = true to create it from the source)"
    )]
    NoTable { path: PathBuf, table: String },
    #[error(
        "target database {path}: no schema for stream `{stream}` (seq {seq}); the source did not declare it"
    )]
    UnknownStream {
        path: PathBuf,
        stream: String,
        seq: Seq,
    },
    #[error("target database {path}: seq {seq} on `{table}` key {key}: {problem}")]
    BadChange {
        path: PathBuf,
        table: String,
        seq: Seq,
        key: String,
        problem: String,
    },
}

impl From<SqliteSinkError> for StageError {
    fn from(e: SqliteSinkError) -> Self {
        match &e {
            SqliteSinkError::Sqlite { source, .. } if sqlite_is_transient(source) => {
                StageError::transient(e)
            }
            SqliteSinkError::BadChange { problem, .. }
                if problem.contains("database is locked") =>
            {
                StageError::transient(e)
            }
            _ => StageError::definite(e),
        }
    }
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    pipeline: String,
    sink: String,
    create_tables: bool,
    conn: Option<Connection>,
    /// stream -> key columns.
    keys: HashMap<String, Vec<String>>,
    /// stream -> (column list, upsert SQL) for each column list seen; deletes by stream.
    upserts: HashMap<String, Vec<(Vec<String>, String)>>,
    deletes: HashMap<String, String>,
    /// stream -> (column list, patch SQL) for each column list seen.
    patches: HashMap<String, Vec<(Vec<String>, String)>>,
}

/// Applies batches to one SQLite database.
#[derive(Debug)]
pub struct SqliteSink {
    inner: Arc<Mutex<Inner>>,
}

impl SqliteSink {
    /// `pipeline` and `sink` name this sink's row in `_tidesync_applied`.
    pub fn new(path: &Path, pipeline: &str, sink: &str, create_tables: bool) -> Self {
        SqliteSink {
            inner: Arc::new(Mutex::new(Inner {
                path: path.to_owned(),
                pipeline: pipeline.to_owned(),
                sink: sink.to_owned(),
                create_tables,
                conn: None,
                keys: HashMap::new(),
                upserts: HashMap::new(),
                deletes: HashMap::new(),
                patches: HashMap::new(),
            })),
        }
    }

    fn blocking<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, StageError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Inner) -> Result<T, SqliteSinkError> + Send + 'static,
    {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
                let result = f(&mut guard);
                if result.is_err() {
                    // Reconnect on the next call: the connection may be the problem.
                    guard.conn = None;
                }
                result
            })
            .await
            .map_err(|e| StageError::transient(format!("sink task failed: {e}")))?
            .map_err(StageError::from)
        })
    }
}

impl Inner {
    fn err(&self, context: &str) -> impl Fn(rusqlite::Error) -> SqliteSinkError + use<> {
        let (path, context) = (self.path.clone(), context.to_owned());
        move |source| SqliteSinkError::Sqlite {
            path: path.clone(),
            context: context.clone(),
            source,
        }
    }

    fn connect(&mut self) -> Result<&mut Connection, SqliteSinkError> {
        if self.conn.is_none() {
            let err = self.err("opening");
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                        "{}: {e}",
                        dir.display()
                    ))))
                })?;
            }
            let conn = Connection::open(&self.path).map_err(&err)?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(&err)?;
            // FULL: the applied seq is durable before the store's cursor moves past it.
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(&err)?;
            conn.busy_timeout(Duration::from_secs(10)).map_err(&err)?;
            conn.set_prepared_statement_cache_capacity(128);
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS _tidesync_applied (
                     pipeline TEXT NOT NULL, sink TEXT NOT NULL, seq INTEGER NOT NULL,
                     updated_us INTEGER NOT NULL, PRIMARY KEY (pipeline, sink))",
            )
            .map_err(self.err("creating _tidesync_applied"))?;
            self.conn = Some(conn);
        }
        let err = self.err("opening");
        self.conn
            .as_mut()
            .ok_or_else(|| err(rusqlite::Error::InvalidQuery))
    }

    fn open(&mut self, schemas: &[TableSchema]) -> Result<Option<Seq>, SqliteSinkError> {
        let (path, create) = (self.path.clone(), self.create_tables);
        let err = self.err("preparing tables");
        let conn = self.connect()?;
        for schema in schemas {
            let exists: bool = conn
                .query_row(
                    "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [&schema.name],
                    |r| r.get(0),
                )
                .map_err(&err)?;
            if !exists {
                if !create {
                    return Err(SqliteSinkError::NoTable {
                        path,
                        table: schema.name.clone(),
                    });
                }
                conn.execute_batch(&create_table_sql(schema))
                    .map_err(&err)?;
                tracing::info!(table = %schema.name, "created target table");
            }
        }
        self.keys = schemas
            .iter()
            .map(|s| (s.name.clone(), s.key.clone()))
            .collect();
        self.upserts.clear();
        self.deletes.clear();
        self.patches.clear();
        self.applied()
    }

    fn applied(&mut self) -> Result<Option<Seq>, SqliteSinkError> {
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let err = self.err("reading the applied seq");
        let conn = self.connect()?;
        conn.query_row(
            "SELECT seq FROM _tidesync_applied WHERE pipeline = ?1 AND sink = ?2",
            [&pipeline, &sink],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        // Some even when nothing was applied yet: this sink records its seq (exactly-once).
        .map(|s| Some(Seq(s.unwrap_or(0) as u64)))
        .map_err(err)
    }

    fn apply(&mut self, batch: &Batch) -> Result<(), SqliteSinkError> {
        let (path, pipeline, sink) = (self.path.clone(), self.pipeline.clone(), self.sink.clone());
        let err = self.err("applying a batch");
        // Build the SQL we need before borrowing the connection mutably.
        let mut alters: Vec<String> = Vec::new();
        // (table, column) of each ALTER above: two column lists of one batch (an upsert's and
        // a patch's, say) may both hold a column the table lacks, and it is added once.
        let mut added: Vec<(&str, String)> = Vec::new();
        for entry in &batch.entries {
            let stream = &entry.change.stream;
            let Some(key) = self.keys.get(stream) else {
                return Err(SqliteSinkError::UnknownStream {
                    path,
                    stream: stream.clone(),
                    seq: entry.seq,
                });
            };
            let patching = entry.change.op == Op::Patch;
            let statements = if patching {
                &self.patches
            } else {
                &self.upserts
            };
            if let Some(after) = &entry.change.after
                && !(patching && after.is_empty())
                && find_statement(statements, stream, after).is_none()
            {
                // A new column list: columns the source added (ALTER TABLE ADD COLUMN) are
                // added to the target first, in the batch's transaction.
                let conn = self
                    .conn
                    .as_ref()
                    .ok_or_else(|| err(rusqlite::Error::InvalidQuery))?;
                let missing: Vec<String> = missing_columns(conn, stream, after)
                    .map_err(&err)?
                    .into_iter()
                    .filter(|c| {
                        !added
                            .iter()
                            .any(|(t, a)| t == stream && a.eq_ignore_ascii_case(c))
                    })
                    .collect();
                if !missing.is_empty() && !self.create_tables {
                    return Err(SqliteSinkError::BadChange {
                        path,
                        table: stream.clone(),
                        seq: entry.seq,
                        key: entry.change.key.to_string(),
                        problem: format!(
                            "the target table has no column {}; add it or set create_tables = true",
                            missing.join(", ")
                        ),
                    });
                }
                for column in missing {
                    let ty = after.get(&column).map_or("TEXT", sqlite_type_of_value);
                    alters.push(format!(
                        "ALTER TABLE {} ADD COLUMN {} {ty}",
                        quote_ident(stream),
                        quote_ident(&column)
                    ));
                    added.push((stream.as_str(), column));
                }
                let columns: Vec<String> = after.columns().map(str::to_owned).collect();
                let (sql, statements) = if patching {
                    (patch_sql(stream, &columns, key), &mut self.patches)
                } else {
                    (upsert_sql(stream, &columns, key), &mut self.upserts)
                };
                statements
                    .entry(stream.clone())
                    .or_default()
                    .push((columns, sql));
            }
            if !self.deletes.contains_key(stream) {
                let sql = delete_sql(stream, key);
                self.deletes.insert(stream.clone(), sql);
            }
        }
        let Inner {
            conn,
            upserts,
            deletes,
            patches,
            ..
        } = self;
        let conn = conn
            .as_mut()
            .ok_or_else(|| err(rusqlite::Error::InvalidQuery))?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        let applied: i64 = tx
            .query_row(
                "SELECT seq FROM _tidesync_applied WHERE pipeline = ?1 AND sink = ?2",
                [&pipeline, &sink],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?
            .unwrap_or(0);
        for alter in &alters {
            tx.execute_batch(alter).map_err(&err)?;
            tracing::info!(table = ?alter, "added a column to the target table");
        }
        for entry in batch.entries.iter().filter(|e| e.seq.0 as i64 > applied) {
            let change = &entry.change;
            let bad = |e: rusqlite::Error| SqliteSinkError::BadChange {
                path: path.clone(),
                table: change.stream.clone(),
                seq: entry.seq,
                key: change.key.to_string(),
                problem: e.to_string(),
            };
            match (change.op, &change.after) {
                (Op::Truncate, _) => {
                    let sql = format!("DELETE FROM {}", quote_ident(&change.stream));
                    let mut st = tx.prepare_cached(&sql).map_err(&err)?;
                    st.execute([]).map_err(bad)?;
                }
                (Op::Patch, Some(after)) if !after.is_empty() => {
                    let sql = find_statement(patches, &change.stream, after)
                        .ok_or_else(|| err(rusqlite::Error::InvalidQuery))?;
                    let mut st = tx.prepare_cached(sql).map_err(&err)?;
                    // The columns' values, then the key's (the old key, for a key update).
                    let params: Vec<SqliteParam<'_>> = after
                        .0
                        .iter()
                        .map(|(_, v)| v)
                        .chain(&change.key.0)
                        .map(SqliteParam)
                        .collect();
                    st.execute(rusqlite::params_from_iter(params))
                        .map_err(bad)?;
                }
                // A patch of no column: nothing to set.
                (Op::Patch, _) => {}
                (Op::Delete, _) | (_, None) => {
                    let sql = &deletes[&change.stream];
                    let mut st = tx.prepare_cached(sql).map_err(&err)?;
                    let params: Vec<SqliteParam<'_>> =
                        change.key.0.iter().map(SqliteParam).collect();
                    st.execute(rusqlite::params_from_iter(params))
                        .map_err(bad)?;
                }
                (_, Some(after)) => {
                    let sql = find_statement(upserts, &change.stream, after)
                        .ok_or_else(|| err(rusqlite::Error::InvalidQuery))?;
                    let mut st = tx.prepare_cached(sql).map_err(&err)?;
                    let params: Vec<SqliteParam<'_>> =
                        after.0.iter().map(|(_, v)| SqliteParam(v)).collect();
                    st.execute(rusqlite::params_from_iter(params))
                        .map_err(bad)?;
                }
            }
        }
        let last = batch
            .entries
            .last()
            .map_or(batch.last_seq, |e| e.seq.max(batch.last_seq));
        if last.0 as i64 > applied {
            tx.execute(
                "INSERT INTO _tidesync_applied (pipeline, sink, seq, updated_us) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (pipeline, sink) DO UPDATE SET seq = excluded.seq, updated_us = excluded.updated_us",
                params![pipeline, sink, last.0 as i64, tidesync_core::time::now_us()],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(err)
    }
}

/// Columns of `row` that table `table` lacks.
fn missing_columns(
    conn: &Connection,
    table: &str,
    row: &tidesync_core::Row,
) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare_cached("SELECT name FROM pragma_table_info(?1)")?;
    let have: Vec<String> = st
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(row
        .columns()
        .filter(|c| !have.iter().any(|h| h.eq_ignore_ascii_case(c)))
        .map(str::to_owned)
        .collect())
}

/// The column type for a column added while streaming, from a value of it: exact forms as
/// in [`sqlite_type_for_pg`] (decimals as TEXT).
fn sqlite_type_of_value(value: &Value) -> &'static str {
    match value {
        Value::Int(_) | Value::Bool(_) => "INTEGER",
        Value::Float(_) => "REAL",
        Value::Bytes(_) => "BLOB",
        _ => "TEXT",
    }
}

/// The statement cached in `statements` for `row`'s column list.
fn find_statement<'a>(
    statements: &'a HashMap<String, Vec<(Vec<String>, String)>>,
    stream: &str,
    row: &tidesync_core::Row,
) -> Option<&'a str> {
    statements
        .get(stream)?
        .iter()
        .find(|(cols, _)| cols.iter().map(String::as_str).eq(row.columns()))
        .map(|(_, sql)| sql.as_str())
}

fn create_table_sql(schema: &TableSchema) -> String {
    let mut cols: Vec<String> = schema
        .columns
        .iter()
        .map(|c| {
            let mut def = quote_ident(&c.name);
            if schema.dialect == Dialect::Postgres {
                def.push(' ');
                def.push_str(sqlite_type_for_pg(&c.type_name));
            } else if !c.type_name.is_empty() {
                def.push(' ');
                // The declared type comes from the source's catalog; keep only characters a
                // type name can hold so it cannot smuggle SQL.
                def.extend(
                    c.type_name
                        .chars()
                        .filter(|ch| ch.is_ascii_alphanumeric() || " (),_".contains(*ch)),
                );
            }
            if !c.nullable {
                def.push_str(" NOT NULL");
            }
            def
        })
        .collect();
    let key: Vec<String> = schema.key.iter().map(|k| quote_ident(k)).collect();
    cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
    format!(
        "CREATE TABLE {} ({})",
        quote_ident(&schema.name),
        cols.join(", ")
    )
}

/// The SQLite column type for a PostgreSQL type (as `format_type` names it), chosen so the
/// values the sink binds keep every digit: integers as INTEGER, floats as REAL, bytea as BLOB,
/// and everything else, numeric included, as TEXT (a NUMERIC column would turn `12.50` into
/// the float 12.5).
fn sqlite_type_for_pg(pg: &str) -> &'static str {
    if pg.ends_with("[]") {
        return "TEXT";
    }
    match pg {
        "smallint" | "integer" | "bigint" | "boolean" | "int2" | "int4" | "int8" | "bool" => {
            "INTEGER"
        }
        "real" | "double precision" | "float4" | "float8" => "REAL",
        "bytea" => "BLOB",
        _ => "TEXT",
    }
}

fn upsert_sql(table: &str, columns: &[String], key: &[String]) -> String {
    let names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{0} = excluded.{0}", quote_ident(c)))
        .collect();
    let key_list: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    let action = if updates.is_empty() {
        "NOTHING".to_owned()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO {action}",
        quote_ident(table),
        names.join(", "),
        placeholders.join(", "),
        key_list.join(", "),
    )
}

/// `UPDATE t SET c1 = ?1, .. WHERE k1 = ?n AND ..`: the columns' values, then the key's.
fn patch_sql(table: &str, columns: &[String], key: &[String]) -> String {
    let sets: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", quote_ident(c), i + 1))
        .collect();
    let conds: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} = ?{}", quote_ident(k), columns.len() + i + 1))
        .collect();
    format!(
        "UPDATE {} SET {} WHERE {}",
        quote_ident(table),
        sets.join(", "),
        conds.join(" AND ")
    )
}

fn delete_sql(table: &str, key: &[String]) -> String {
    let conds: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} = ?{}", quote_ident(k), i + 1))
        .collect();
    format!(
        "DELETE FROM {} WHERE {}",
        quote_ident(table),
        conds.join(" AND ")
    )
}

impl Sink for SqliteSink {
    fn open(
        &mut self,
        schemas: Vec<TableSchema>,
    ) -> BoxFuture<'_, Result<Option<Seq>, StageError>> {
        self.blocking(move |inner| inner.open(&schemas))
    }

    fn forget(&mut self) -> BoxFuture<'_, Result<Vec<String>, StageError>> {
        self.blocking(|inner| {
            let (pipeline, sink, path) = (
                inner.pipeline.clone(),
                inner.sink.clone(),
                inner.path.clone(),
            );
            let err = inner.err("forgetting the applied seq");
            let n = inner
                .connect()?
                .execute(
                    "DELETE FROM _tidesync_applied WHERE pipeline = ?1 AND sink = ?2",
                    [&pipeline, &sink],
                )
                .map_err(err)?;
            Ok(if n > 0 {
                vec![format!(
                    "forgot the applied seq of {pipeline}/{sink} in {}",
                    path.display()
                )]
            } else {
                vec![]
            })
        })
    }

    fn apply(&mut self, batch: Arc<Batch>) -> BoxFuture<'_, Result<(), StageError>> {
        self.blocking(move |inner| {
            inner.connect()?;
            let applied = inner.apply(&batch);
            if applied.is_err() {
                // A failed batch may have rolled back an ALTER TABLE its statements expect.
                inner.upserts.clear();
                inner.patches.clear();
            }
            applied
        })
    }
}

#[cfg(test)]
mod tests;
