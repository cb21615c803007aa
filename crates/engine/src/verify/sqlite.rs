//! Reading a SQLite database for verify: read-only, on tokio's blocking pool.
//!
//! Pages are `SELECT .. WHERE (key) > (lo) AND (key) <= (hi) ORDER BY key LIMIT n`, which
//! SQLite answers from the primary key's b-tree (the rowid for an `INTEGER PRIMARY KEY`), so a
//! page costs its own rows, not a scan from the start. Text keys are ordered by the column's
//! collation; the default (BINARY) is byte order, which is what verify walks in. Each page is
//! its own read transaction: a streaming pipeline writes between pages, and rows that change
//! in between are sorted out by the re-check.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tidesync_core::Position;
use tidesync_core::sql::quote_ident;

use super::VerifyError;
use super::canon::{Oracle, from_sqlite, sqlite_bind};
use super::chunk::{Native, SideRow};
use super::side::{CatalogColumn, ColType, LookupKey, SidePlan, TableShape};

/// How long a read waits for a writer's lock (a database not in WAL mode).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct State {
    conn: Connection,
    oracle: Oracle,
    buf: Vec<u8>,
}

/// A SQLite database opened read-only.
#[derive(Debug)]
pub(crate) struct SqliteSide {
    db: String,
    state: Arc<Mutex<State>>,
}

impl SqliteSide {
    pub(crate) async fn open(path: &Path) -> Result<SqliteSide, VerifyError> {
        let db = path.display().to_string();
        let p = path.to_owned();
        let d = db.clone();
        let conn = blocking(move || open_read_only(&p, &d)).await??;
        Ok(SqliteSide {
            db,
            state: Arc::new(Mutex::new(State {
                conn,
                oracle: Oracle::default(),
                buf: Vec::new(),
            })),
        })
    }

    pub(crate) fn db(&self) -> &str {
        &self.db
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T, VerifyError>
    where
        T: Send + 'static,
        F: FnOnce(&mut State, &str) -> Result<T, VerifyError> + Send + 'static,
    {
        let state = self.state.clone();
        let db = self.db.clone();
        blocking(move || {
            let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard, &db)
        })
        .await?
    }

    pub(crate) async fn describe(&self, table: &str) -> Result<TableShape, VerifyError> {
        let table = table.to_owned();
        self.with(move |st, db| {
            let err = sql_error(db, format!("reading the columns of `{table}`"));
            let mut q = st
                .conn
                .prepare("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid")
                .map_err(&err)?;
            let rows: Vec<(String, String, i64)> = q
                .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .and_then(|rows| rows.collect())
                .map_err(&err)?;
            if rows.is_empty() {
                return Err(VerifyError::NoTable {
                    db: db.to_owned(),
                    table,
                });
            }
            let mut key: Vec<(i64, String)> = rows
                .iter()
                .filter(|r| r.2 > 0)
                .map(|r| (r.2, r.0.clone()))
                .collect();
            key.sort();
            Ok(TableShape {
                columns: rows
                    .into_iter()
                    .map(|(name, declared, _)| CatalogColumn {
                        name,
                        ty: ColType::Sqlite { declared },
                        generated: false,
                    })
                    .collect(),
                key: (!key.is_empty()).then(|| key.into_iter().map(|(_, k)| k).collect()),
            })
        })
        .await
    }

    pub(crate) async fn page(
        &self,
        plan: &Arc<SidePlan>,
        lo: Option<&[Native]>,
        hi: Option<&[Native]>,
        limit: usize,
    ) -> Result<Vec<SideRow>, VerifyError> {
        let key_list = list(plan.key.iter().map(|i| plan.columns[*i].0.as_str()));
        let holes = vec!["?"; plan.key.len()].join(", ");
        let mut conditions = Vec::new();
        let mut params: Vec<SqlValue> = Vec::new();
        if let Some(lo) = lo {
            conditions.push(format!("({key_list}) > ({holes})"));
            params.extend(lo.iter().map(native));
        }
        if let Some(hi) = hi {
            conditions.push(format!("({key_list}) <= ({holes})"));
            params.extend(hi.iter().map(native));
        }
        let sql = format!(
            "SELECT {} FROM {}{} ORDER BY {key_list} LIMIT {limit}",
            list(plan.columns.iter().map(|(c, _)| c.as_str())),
            plan.table_sql,
            if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            },
        );
        let plan = plan.clone();
        self.with(move |st, db| {
            let err = sql_error(db, format!("reading `{}`", plan.table));
            let State { conn, oracle, buf } = st;
            let mut q = conn.prepare_cached(&sql).map_err(&err)?;
            let mut rows = q.query(rusqlite::params_from_iter(params)).map_err(&err)?;
            let mut out = Vec::with_capacity(limit.min(65_536));
            while let Some(r) = rows.next().map_err(&err)? {
                out.push(read_row(&plan, r, oracle, buf).map_err(|e| match e {
                    ReadError::Sql(e) => err(e),
                    ReadError::Verify(e) => e,
                })?);
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn lookup(
        &self,
        plan: &Arc<SidePlan>,
        keys: Vec<LookupKey>,
    ) -> Result<Vec<SideRow>, VerifyError> {
        let condition = plan
            .key
            .iter()
            .enumerate()
            .map(|(n, i)| format!("{} = ?{}", quote_ident(&plan.columns[*i].0), n + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "SELECT {} FROM {} WHERE {condition}",
            list(plan.columns.iter().map(|(c, _)| c.as_str())),
            plan.table_sql,
        );
        let plan = plan.clone();
        self.with(move |st, db| {
            let err = sql_error(db, format!("re-reading rows of `{}`", plan.table));
            let State { conn, oracle, buf } = st;
            let mut q = conn.prepare_cached(&sql).map_err(&err)?;
            let mut out = Vec::new();
            for key in keys {
                let params: Vec<SqlValue> = match key {
                    LookupKey::Native(cells) => cells.iter().map(native).collect(),
                    LookupKey::Canonical(values) => values.iter().map(sqlite_bind).collect(),
                };
                let mut rows = q.query(rusqlite::params_from_iter(params)).map_err(&err)?;
                if let Some(r) = rows.next().map_err(&err)? {
                    out.push(read_row(&plan, r, oracle, buf).map_err(|e| match e {
                        ReadError::Sql(e) => err(e),
                        ReadError::Verify(e) => e,
                    })?);
                }
            }
            Ok(out)
        })
        .await
    }
}

enum ReadError {
    Sql(rusqlite::Error),
    Verify(VerifyError),
}

fn read_row(
    plan: &SidePlan,
    r: &rusqlite::Row<'_>,
    oracle: &mut Oracle,
    buf: &mut Vec<u8>,
) -> Result<SideRow, ReadError> {
    let mut raw = Vec::with_capacity(plan.columns.len());
    for i in 0..plan.columns.len() {
        raw.push(r.get::<_, SqlValue>(i).map_err(ReadError::Sql)?);
    }
    let native_key = plan
        .key
        .iter()
        .map(|i| Native::Sqlite(raw[*i].clone()))
        .collect();
    plan.row(
        raw.into_iter().map(from_sqlite).collect(),
        native_key,
        oracle,
        buf,
    )
    .map_err(ReadError::Verify)
}

/// A key cell as a SQLite parameter. A PostgreSQL cell never reaches a SQLite side (native
/// keys only go back to their own side); its text would do no harm.
fn native(n: &Native) -> SqlValue {
    match n {
        Native::Sqlite(v) => v.clone(),
        Native::Postgres(Some(t)) => SqlValue::Text(t.clone()),
        Native::Postgres(None) => SqlValue::Null,
        Native::Mysql(v) => match v {
            mysql_async::Value::NULL => SqlValue::Null,
            mysql_async::Value::Int(i) => SqlValue::Integer(*i),
            mysql_async::Value::Double(d) => SqlValue::Real(*d),
            mysql_async::Value::Bytes(b) => SqlValue::Text(String::from_utf8_lossy(b).into_owned()),
            other => SqlValue::Text(other.as_sql(true)),
        },
    }
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(quote_ident).collect::<Vec<_>>().join(", ")
}

fn sql_error(db: &str, context: String) -> impl Fn(rusqlite::Error) -> VerifyError + use<> {
    let db = db.to_owned();
    move |source| VerifyError::Sqlite {
        db: db.clone(),
        context: context.clone(),
        source,
    }
}

fn open_read_only(path: &Path, db: &str) -> Result<Connection, VerifyError> {
    let err = sql_error(db, "opening".into());
    if !path.exists() {
        return Err(err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
            "{db}: no such file"
        )))));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
    Ok(conn)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, VerifyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VerifyError::Task(format!("a SQLite read task failed: {e}")))
}

/// The position of a SQLite trigger source: the last id its change table issued
/// (`sqlite_sequence`; AUTOINCREMENT never reuses one), i.e. where the store stands once it
/// has captured every change committed so far. `None` before the pipeline installed capture.
pub(crate) async fn trigger_position(
    path: &Path,
    pipeline: &str,
) -> Result<Option<Position>, VerifyError> {
    let (path, table) = (
        path.to_owned(),
        tidesync_capture::sqlite::trigger::change_table(pipeline),
    );
    blocking(move || {
        let db = path.display().to_string();
        let conn = open_read_only(&path, &db)?;
        let err = sql_error(&db, format!("reading the id counter of {table}"));
        let exists: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [&table],
                |r| r.get(0),
            )
            .map_err(&err)?;
        if !exists {
            return Ok(None);
        }
        let seq: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                [&table],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?;
        Ok(Some(Position::RowId(seq.unwrap_or(0))))
    })
    .await?
}
