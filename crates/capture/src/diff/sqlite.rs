//! [`SqliteQueryReader`]: the `diff` mode's reader for SQLite.
//!
//! The database is opened read-only, with a busy timeout, on first use; every call runs on
//! tokio's blocking pool, the connection moving into the task and back. After a transient
//! error (busy, locked, I/O) the connection is dropped and the next call opens a new one.
//!
//! A read is `SELECT * FROM (query) AS q ORDER BY q."k" COLLATE BINARY, ..` inside one read
//! transaction (`BEGIN` .. `COMMIT`), so its rows are one state of the database. `BINARY`
//! compares text with `memcmp` (the UTF-8 bytes, in a UTF-8 database), whatever collation
//! (`NOCASE`, `RTRIM`) the column declares, which is the order [`super::ord`] encodes; across
//! storage classes SQLite orders integers before text before blobs, as `ord`'s tags do. Pages
//! go to the receiver from the blocking task (`blocking_send`); a closed receiver ends the
//! read there.
//!
//! A read of changed rows ([`QueryReader::read_changed`]) is the same read with
//! `WHERE q."c" COLLATE BINARY >= ?1` and `q."c" COLLATE BINARY` first in the `ORDER BY`: the
//! filter compares as the sort does, so "at or after the watermark" is in the order the rows
//! arrive. SQLite has no date type: the watermark is bound as the storage class the reader gave
//! for it (`Int` an integer, `Text` text, ...), and the column's affinity applies to it as to
//! any literal. Rows whose changed column is NULL come first without a watermark and never
//! match one.
//!
//! Values follow the storage class, as the trigger source's `quote()` literals do: INTEGER
//! `Int`, REAL `Float`, TEXT `Text`, BLOB `Bytes`, NULL `Null`. Text that is not UTF-8 is an
//! error naming the column (the trigger source cannot read it either).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OpenFlags};
use tidesync_core::sql::quote_ident;
use tidesync_core::{BoxFuture, Dialect, StageError, Value};
use tidesync_store::sqlite_is_transient;
use tokio::sync::mpsc;

use super::reader::{Page, QueryColumn, QueryReader, derived, short_query};

/// How long a read waits for a writer's lock (a database not in WAL mode).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a SQLite query or table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SqliteReadError {
    #[error("source database {path} does not exist")]
    NoDatabase { path: PathBuf },
    #[error("source database {path}: {context}: {source}")]
    Sqlite {
        path: PathBuf,
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "source database {path}: query `{query}` returns more than one column named {column}; \
         name them apart (`AS`)"
    )]
    DuplicateColumn {
        path: PathBuf,
        query: String,
        column: String,
    },
    #[error("source database {path}: query `{query}` is not a read-only query (a SELECT)")]
    NotReadOnly { path: PathBuf, query: String },
    #[error("source database {path}: query `{query}` column {column}: {problem}")]
    Column {
        path: PathBuf,
        query: String,
        column: String,
        problem: String,
    },
    #[error(
        "source database {path}: query `{query}` now returns the columns {now:?}, not \
         {described:?} as when it was described"
    )]
    Changed {
        path: PathBuf,
        query: String,
        described: Vec<String>,
        now: Vec<String>,
    },
    #[error("source database {path}: table `{table}` does not exist")]
    NoTable { path: PathBuf, table: String },
    #[error(
        "source database {path}: table `{table}` has no primary key; give the stream's `key` \
         (the columns that identify a row)"
    )]
    NoPrimaryKey { path: PathBuf, table: String },
    #[error("source database {path}: the reading task failed: {problem}")]
    Task { path: PathBuf, problem: String },
}

impl SqliteReadError {
    fn is_transient(&self) -> bool {
        match self {
            SqliteReadError::Sqlite { source, .. } => sqlite_is_transient(source),
            SqliteReadError::Task { .. } => true,
            _ => false,
        }
    }
}

impl From<SqliteReadError> for StageError {
    fn from(e: SqliteReadError) -> Self {
        if e.is_transient() {
            StageError::transient(e)
        } else {
            StageError::definite(e)
        }
    }
}

/// Reads the queries of one `diff` source on a SQLite database.
#[derive(Debug)]
pub struct SqliteQueryReader {
    path: PathBuf,
    /// `None` before first use, after a transient error, and while a call has it.
    conn: Option<Connection>,
}

impl SqliteQueryReader {
    /// A reader of the database file at `path`, opened read-only on first use.
    pub fn new(path: &Path) -> Self {
        SqliteQueryReader {
            path: path.to_owned(),
            conn: None,
        }
    }

    /// Runs `f` on the connection on the blocking pool (opening it first if needed). The
    /// connection comes back unless `f` failed transiently.
    async fn blocking<T, F>(&mut self, f: F) -> Result<T, SqliteReadError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Path) -> Result<T, SqliteReadError> + Send + 'static,
    {
        let path = self.path.clone();
        let conn = self.conn.take();
        let task = tokio::task::spawn_blocking(move || {
            let mut conn = match conn {
                Some(conn) => conn,
                None => match open(&path) {
                    Ok(conn) => conn,
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = f(&mut conn, &path);
            (Some(conn), result)
        });
        let (conn, result) = task.await.map_err(|e| SqliteReadError::Task {
            path: self.path.clone(),
            problem: e.to_string(),
        })?;
        if !result.as_ref().is_err_and(SqliteReadError::is_transient) {
            self.conn = conn;
        }
        result
    }
}

fn sqlite_err(
    path: &Path,
    context: impl Into<String>,
) -> impl Fn(rusqlite::Error) -> SqliteReadError {
    let (path, context) = (path.to_owned(), context.into());
    move |source| SqliteReadError::Sqlite {
        path: path.clone(),
        context: context.clone(),
        source,
    }
}

fn open(path: &Path) -> Result<Connection, SqliteReadError> {
    if !path.exists() {
        return Err(SqliteReadError::NoDatabase {
            path: path.to_owned(),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(path, "opening read-only"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite_err(path, "setting busy_timeout"))?;
    Ok(conn)
}

/// The names of a prepared statement's columns; a name that is not UTF-8 is an error (SQLite
/// hands over what the query wrote).
fn column_names(stmt: &rusqlite::Statement<'_>) -> rusqlite::Result<Vec<String>> {
    (0..stmt.column_count())
        .map(|i| stmt.column_name(i).map(str::to_owned))
        .collect()
}

fn columns_of(
    conn: &Connection,
    path: &Path,
    query: &str,
) -> Result<Vec<QueryColumn>, SqliteReadError> {
    let context = format!("describing query `{}`", short_query(query));
    let stmt = conn.prepare(query).map_err(sqlite_err(path, &context))?;
    if !stmt.readonly() {
        return Err(SqliteReadError::NotReadOnly {
            path: path.to_owned(),
            query: short_query(query),
        });
    }
    let names = column_names(&stmt).map_err(sqlite_err(path, &context))?;
    for (i, name) in names.iter().enumerate() {
        // SQLite's identifiers are case-insensitive (ASCII).
        if names[..i].iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(SqliteReadError::DuplicateColumn {
                path: path.to_owned(),
                query: short_query(query),
                column: name.clone(),
            });
        }
    }
    // The names were read above, so `columns()` cannot meet one that is not UTF-8.
    Ok(stmt
        .columns()
        .zip(names)
        .map(|(c, name)| QueryColumn {
            name,
            type_name: c.decl_type().unwrap_or_default().to_owned(),
            // SQLite does not say whether a result column can be null.
            nullable: true,
        })
        .collect())
}

fn primary_key_of(
    conn: &Connection,
    path: &Path,
    table: &str,
) -> Result<Vec<String>, SqliteReadError> {
    let context = format!("reading the primary key of table `{table}`");
    let err = sqlite_err(path, &context);
    let info = |schema: &str, name: &str| -> rusqlite::Result<Vec<(String, i64)>> {
        let mut st = conn.prepare("SELECT name, pk FROM pragma_table_info(?1, ?2) ORDER BY cid")?;
        let rows = st.query_map([name, schema], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    };
    // `schema.table` when the whole name is no table of `main` (a name may hold a dot).
    let mut rows = info("main", table).map_err(&err)?;
    if rows.is_empty()
        && let Some((schema, name)) = table.split_once('.')
    {
        rows = info(schema, name).map_err(&err)?;
    }
    if rows.is_empty() {
        return Err(SqliteReadError::NoTable {
            path: path.to_owned(),
            table: table.to_owned(),
        });
    }
    let mut key: Vec<(i64, String)> = rows
        .into_iter()
        .filter(|(_, pk)| *pk > 0)
        .map(|(name, pk)| (pk, name))
        .collect();
    if key.is_empty() {
        return Err(SqliteReadError::NoPrimaryKey {
            path: path.to_owned(),
            table: table.to_owned(),
        });
    }
    key.sort();
    Ok(key.into_iter().map(|(_, name)| name).collect())
}

/// A cell by its storage class.
fn value_of(v: ValueRef<'_>) -> Result<Value, String> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(t) => Value::Text(
            String::from_utf8(t.to_vec()).map_err(|_| "text that is not valid UTF-8".to_owned())?,
        ),
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
    })
}

/// A watermark as the parameter of its storage class; the kinds [`value_of`] never gives are
/// errors (SQLite would compare them as some other class).
fn since_param(since: &Value) -> Result<SqlValue, String> {
    Ok(match since {
        Value::Int(i) => SqlValue::Integer(*i),
        Value::Float(f) => SqlValue::Real(*f),
        Value::Text(t) => SqlValue::Text(t.clone()),
        Value::Bytes(b) => SqlValue::Blob(b.clone()),
        Value::Null => return Err("the watermark is NULL, which no row is at or after".to_owned()),
        other => {
            return Err(format!(
                "the watermark {other:?} is no value a SQLite column reads as (integer, real, \
                 text or blob)"
            ));
        }
    })
}

/// What a read is asked for, owned (it runs on the blocking pool).
struct ReadPlan {
    query: String,
    columns: Vec<String>,
    /// For [`QueryReader::read_changed`]: the column sorted by first, and the value its rows
    /// are at or after (`None`: every row).
    changed: Option<(usize, Option<Value>)>,
    order: Vec<usize>,
    page_rows: usize,
}

/// Reads `plan.query` in one read transaction; `Ok(false)` when the receiver closed first.
fn read_ordered(
    conn: &mut Connection,
    path: &Path,
    plan: &ReadPlan,
    out: &mpsc::Sender<Page>,
) -> Result<bool, SqliteReadError> {
    let shown = short_query(&plan.query);
    let err = sqlite_err(path, format!("reading query `{shown}`"));
    let column = |i: usize| {
        plan.columns.get(i).ok_or_else(|| SqliteReadError::Column {
            path: path.to_owned(),
            query: shown.clone(),
            column: format!("#{i}"),
            problem: format!("ordered by column position {i} of {}", plan.columns.len()),
        })
    };
    let sorted = |name: &str| format!("q.{} COLLATE BINARY", quote_ident(name));
    let mut keys = Vec::with_capacity(plan.order.len() + 1);
    let mut filter = None;
    let mut params = Vec::new();
    if let Some((i, since)) = &plan.changed {
        let name = column(*i)?;
        if let Some(since) = since {
            params.push(
                since_param(since).map_err(|problem| SqliteReadError::Column {
                    path: path.to_owned(),
                    query: shown.clone(),
                    column: name.clone(),
                    problem,
                })?,
            );
            filter = Some(format!("{} >= ?1", sorted(name)));
        }
        keys.push(sorted(name));
    }
    for &i in &plan.order {
        keys.push(sorted(column(i)?));
    }
    let mut sql = derived(&plan.query);
    if let Some(filter) = filter {
        sql = format!("{sql} WHERE {filter}");
    }
    if !keys.is_empty() {
        sql = format!("{sql} ORDER BY {}", keys.join(", "));
    }
    let tx = conn.transaction().map_err(&err)?;
    let mut stmt = tx.prepare(&sql).map_err(&err)?;
    let names = column_names(&stmt).map_err(&err)?;
    if names != plan.columns {
        return Err(SqliteReadError::Changed {
            path: path.to_owned(),
            query: shown,
            described: plan.columns.clone(),
            now: names,
        });
    }
    let width = names.len();
    let page_rows = plan.page_rows.max(1);
    let mut page: Page = Vec::with_capacity(page_rows.min(1024));
    let mut rows = stmt
        .query(rusqlite::params_from_iter(&params))
        .map_err(&err)?;
    let mut open = true;
    while let Some(row) = rows.next().map_err(&err)? {
        let mut cells = Vec::with_capacity(width);
        for (i, name) in names.iter().enumerate() {
            let v = row.get_ref(i).map_err(&err)?;
            cells.push(value_of(v).map_err(|problem| SqliteReadError::Column {
                path: path.to_owned(),
                query: shown.clone(),
                column: name.clone(),
                problem,
            })?);
        }
        page.push(cells);
        if page.len() >= page_rows {
            let full = std::mem::replace(&mut page, Vec::with_capacity(page_rows.min(1024)));
            if out.blocking_send(full).is_err() {
                open = false;
                break;
            }
        }
    }
    drop(rows);
    drop(stmt);
    // Read-only: ending it only releases the read lock (and the snapshot, in WAL mode).
    tx.commit().map_err(&err)?;
    if open && !page.is_empty() && out.blocking_send(page).is_err() {
        open = false;
    }
    Ok(open)
}

impl QueryReader for SqliteQueryReader {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn describe_db(&self) -> String {
        self.path.display().to_string()
    }

    fn columns<'a>(
        &'a mut self,
        query: &'a str,
    ) -> BoxFuture<'a, Result<Vec<QueryColumn>, StageError>> {
        let query = query.to_owned();
        Box::pin(async move {
            Ok(self
                .blocking(move |conn, path| columns_of(conn, path, &query))
                .await?)
        })
    }

    fn primary_key<'a>(
        &'a mut self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StageError>> {
        let table = table.to_owned();
        Box::pin(async move {
            Ok(self
                .blocking(move |conn, path| primary_key_of(conn, path, &table))
                .await?)
        })
    }

    fn read<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        order: &'a [usize],
        page_rows: usize,
        out: mpsc::Sender<Page>,
    ) -> BoxFuture<'a, Result<(), StageError>> {
        let plan = ReadPlan {
            query: query.to_owned(),
            columns: columns.iter().map(|c| c.name.clone()).collect(),
            changed: None,
            order: order.to_vec(),
            page_rows,
        };
        Box::pin(self.read_plan(plan, out))
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
        let plan = ReadPlan {
            query: query.to_owned(),
            columns: columns.iter().map(|c| c.name.clone()).collect(),
            changed: Some((changed, since.cloned())),
            order: order.to_vec(),
            page_rows,
        };
        Box::pin(self.read_plan(plan, out))
    }
}

impl SqliteQueryReader {
    /// [`QueryReader::read`] and [`QueryReader::read_changed`], on the blocking pool.
    async fn read_plan(
        &mut self,
        plan: ReadPlan,
        out: mpsc::Sender<Page>,
    ) -> Result<(), StageError> {
        let path = self.path.display().to_string();
        let finished = self
            .blocking(move |conn, path| read_ordered(conn, path, &plan, &out))
            .await?;
        if finished {
            tracing::debug!(db = %path, "query read");
        } else {
            tracing::debug!(db = %path, "query read stopped: receiver closed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_storage_class() {
        assert_eq!(value_of(ValueRef::Null), Ok(Value::Null));
        assert_eq!(value_of(ValueRef::Integer(-3)), Ok(Value::Int(-3)));
        assert_eq!(value_of(ValueRef::Real(2.5)), Ok(Value::Float(2.5)));
        assert_eq!(
            value_of(ValueRef::Text(b"h\xc3\xa9")),
            Ok(Value::Text("hé".into()))
        );
        assert_eq!(
            value_of(ValueRef::Blob(&[0, 255])),
            Ok(Value::Bytes(vec![0, 255]))
        );
        assert!(value_of(ValueRef::Text(&[0xff])).is_err());
    }

    #[test]
    fn watermarks_bind_as_the_storage_class_they_were_read_from() {
        assert_eq!(since_param(&Value::Int(7)), Ok(SqlValue::Integer(7)));
        assert_eq!(since_param(&Value::Float(2.5)), Ok(SqlValue::Real(2.5)));
        assert_eq!(
            since_param(&Value::Text("2024-01-01".into())),
            Ok(SqlValue::Text("2024-01-01".into()))
        );
        assert_eq!(
            since_param(&Value::Bytes(vec![1])),
            Ok(SqlValue::Blob(vec![1]))
        );
        assert!(since_param(&Value::Null).is_err());
        assert!(since_param(&Value::Timestamp(0)).is_err());
    }
}
