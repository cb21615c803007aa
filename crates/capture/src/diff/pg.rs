//! The `diff` mode's reader for PostgreSQL: a query's rows through
//! `COPY (SELECT * FROM (query) AS q ORDER BY ..) TO STDOUT`, one statement and so one
//! consistent snapshot, decoded from the text format with the log source's conversions
//! ([`crate::pg::text`]).

use std::str::FromStr;
use std::time::Duration;

use futures_util::StreamExt;
use tidesync_core::pg::{describe, describe_url, is_transient};
use tidesync_core::sql::quote_ident;
use tidesync_core::{BoxFuture, Dialect, StageError, Value};
use tokio::sync::mpsc;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, NoTls};

use super::reader::{Page, QueryColumn, QueryReader, derived, short_query};
use crate::pg::copy_text::unescape;
use crate::pg::pgoutput::Oid;
use crate::pg::replication::SESSION_OPTIONS;
use crate::pg::text::text_to_value;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads `diff` queries from one PostgreSQL database.
#[derive(Debug)]
pub struct PgQueryReader {
    url: String,
    target: String,
    client: Option<Client>,
}

impl PgQueryReader {
    pub fn new(url: &str) -> Self {
        PgQueryReader {
            url: url.to_owned(),
            target: describe_url(url),
            client: None,
        }
    }

    fn error(&self, context: &str) -> impl Fn(tokio_postgres::Error) -> StageError + use<> {
        let prefix = format!("source {}: {context}", self.target);
        move |e| {
            let message = format!("{prefix}: {}", describe(&e));
            if is_transient(&e) {
                StageError::transient(message)
            } else {
                StageError::definite(message)
            }
        }
    }

    async fn client(&mut self) -> Result<&Client, StageError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let mut config = Config::from_str(&self.url).map_err(|e| {
                StageError::definite(format!(
                    "source PostgreSQL: invalid connection URL: {}",
                    describe(&e)
                ))
            })?;
            config.options(SESSION_OPTIONS);
            config.connect_timeout(CONNECT_TIMEOUT);
            if config.get_application_name().is_none() {
                config.application_name("tidesync diff");
            }
            let (client, connection) =
                tokio::time::timeout(CONNECT_TIMEOUT * 2, config.connect(NoTls))
                    .await
                    .map_err(|_| {
                        StageError::transient(format!(
                            "source {}: connecting timed out",
                            self.target
                        ))
                    })?
                    .map_err(self.error("connecting"))?;
            let target = self.target.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(source = %target, error = %describe(&e), "diff connection ended");
                }
            });
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| StageError::transient("no connection"))
    }
}

/// Types whose order follows a collation: ordered `COLLATE "C"` (byte order) instead.
fn collatable(ty: &Type) -> bool {
    matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME)
}

impl QueryReader for PgQueryReader {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn describe_db(&self) -> String {
        self.target.clone()
    }

    fn columns<'a>(
        &'a mut self,
        query: &'a str,
    ) -> BoxFuture<'a, Result<Vec<QueryColumn>, StageError>> {
        Box::pin(async move {
            let err = self.error(&format!("describing query `{}`", short_query(query)));
            let statement = self.client().await?.prepare(query).await.map_err(err)?;
            let columns: Vec<QueryColumn> = statement
                .columns()
                .iter()
                .map(|c| QueryColumn {
                    name: c.name().to_owned(),
                    // User-defined types (enums, domains) arrive as their text.
                    type_name: if c.type_().oid() >= 16_384 {
                        "text".to_owned()
                    } else {
                        c.type_().name().to_owned()
                    },
                    nullable: true,
                })
                .collect();
            super::reader_check_names(&self.target, query, &columns)?;
            Ok(columns)
        })
    }

    fn primary_key<'a>(
        &'a mut self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StageError>> {
        Box::pin(async move {
            let err = self.error(&format!("reading the primary key of {table}"));
            let qualified = qualified(table);
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT to_regclass($1) IS NOT NULL, a.attname::text FROM (SELECT 1) AS one \
                     LEFT JOIN pg_index i ON i.indrelid = to_regclass($1) AND i.indisprimary \
                     LEFT JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
                     LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     ORDER BY k.ord",
                    &[&qualified],
                )
                .await
                .map_err(err)?;
            if !rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
                return Err(StageError::definite(format!(
                    "source {}: table {table} does not exist (or the user cannot see it)",
                    self.target
                )));
            }
            let key: Vec<String> = rows
                .iter()
                .filter_map(|r| r.get::<_, Option<String>>(1))
                .collect();
            if key.is_empty() {
                return Err(StageError::definite(format!(
                    "source {}: table {table} has no primary key; give the stream a `key`",
                    self.target
                )));
            }
            Ok(key)
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
        Box::pin(async move {
            let shown = format!("`{}`", short_query(query));
            let err = self.error(&format!("reading query {shown}"));
            let client = self.client().await?;
            let statement = client.prepare(query).await.map_err(&err)?;
            let types: Vec<Type> = statement
                .columns()
                .iter()
                .map(|c| c.type_().clone())
                .collect();
            if types.len() != columns.len() {
                return Err(StageError::transient(format!(
                    "source {}: query {shown} now returns {} columns, not {}",
                    self.target,
                    types.len(),
                    columns.len()
                )));
            }
            let order_by: Vec<String> = order
                .iter()
                .map(|&i| {
                    let c = format!("q.{}", quote_ident(&columns[i].name));
                    if collatable(&types[i]) {
                        format!("{c} COLLATE \"C\"")
                    } else {
                        c
                    }
                })
                .collect();
            let sql = format!(
                "COPY ({} ORDER BY {}) TO STDOUT",
                derived(query),
                order_by.join(", ")
            );
            let stream = client.copy_out(sql.as_str()).await.map_err(&err)?;
            let mut stream = std::pin::pin!(stream);
            let mut page: Page = Vec::with_capacity(page_rows);
            let mut line_no = 0_u64;
            while let Some(data) = stream.next().await {
                let data = data.map_err(&err)?;
                // One `CopyData` message per row, but accept several lines in one.
                for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    line_no += 1;
                    let row = decode_line(line, &types, columns).map_err(|e| {
                        StageError::definite(format!(
                            "source {}: query {shown}, row {line_no}: {e}",
                            self.target
                        ))
                    })?;
                    page.push(row);
                    if page.len() >= page_rows {
                        let full = std::mem::replace(&mut page, Vec::with_capacity(page_rows));
                        if out.send(full).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            if !page.is_empty() {
                let _closed = out.send(page).await;
            }
            Ok(())
        })
    }
}

/// `table` or `schema.table` as a quoted name.
pub(crate) fn qualified(table: &str) -> String {
    match table.split_once('.') {
        Some((schema, name)) => format!("{}.{}", quote_ident(schema), quote_ident(name)),
        None => quote_ident(table),
    }
}

/// One `COPY` text line as values.
fn decode_line(line: &[u8], types: &[Type], columns: &[QueryColumn]) -> Result<Vec<Value>, String> {
    let mut row = Vec::with_capacity(types.len());
    for (i, field) in line.split(|&b| b == b'\t').enumerate() {
        let Some(ty) = types.get(i) else {
            return Err(format!("more than the {} columns described", types.len()));
        };
        if field == b"\\N" {
            row.push(Value::Null);
            continue;
        }
        let owned;
        let bytes = if field.contains(&b'\\') {
            owned = unescape(field);
            &owned[..]
        } else {
            field
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|_| format!("column {} is not UTF-8 text", columns[i].name))?;
        let value = text_to_value(Oid(ty.oid()), Some(ty.name()), text)
            .map_err(|e| format!("column {}: {e}", columns[i].name))?;
        row.push(value);
    }
    if row.len() != types.len() {
        return Err(format!("{} values, not {}", row.len(), types.len()));
    }
    Ok(row)
}
