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

use super::reader::{
    ChunkFilter, ChunkSum, HashedRow, Page, Pager, QueryColumn, QueryReader, derived, short_query,
    subquery,
};
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
    /// Per query, whether sampling its chunk sums is worth it, and since when.
    sample_worth: std::collections::HashMap<String, (bool, std::time::Instant)>,
}

impl PgQueryReader {
    pub fn new(url: &str) -> Self {
        PgQueryReader {
            url: url.to_owned(),
            target: describe_url(url),
            client: None,
            sample_worth: std::collections::HashMap::new(),
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
            let target = self.target.clone();
            let client = self.client().await?;
            let types = types_of(client, query, columns, &target, &err).await?;
            let sql = format!(
                "COPY ({} ORDER BY {}) TO STDOUT",
                derived(query),
                order_by(columns, &types, order)
            );
            let context = format!("source {target}: query {shown}");
            copy_rows(
                client,
                &sql,
                &err,
                &context,
                Pager::new(page_rows, out),
                |line| decode_line(line, &types, columns),
            )
            .await
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
        Box::pin(async move {
            let shown = format!("`{}`", short_query(query));
            let err = self.error(&format!("reading rows changed in query {shown}"));
            let target = self.target.clone();
            let client = self.client().await?;
            let types = types_of(client, query, columns, &target, &err).await?;
            let selected: Vec<String> = columns
                .iter()
                .zip(&types)
                .map(|(c, ty)| output_text(&format!("q.{}", quote_ident(&c.name)), ty))
                .collect();
            let column = format!("q.{}", quote_ident(&columns[changed].name));
            let ty = &types[changed];
            let condition = match since {
                None => String::new(),
                Some(_) if ty.oid() >= 16_384 => format!(" WHERE {column}::text >= $1::text"),
                Some(_) => format!(" WHERE {column} >= $1::text::{}", ty.name()),
            };
            let mut sort = vec![column];
            sort.push(order_by(columns, &types, order));
            let sql = format!(
                "SELECT {} FROM {}{condition} ORDER BY {}",
                selected.join(", "),
                subquery(query),
                sort.join(", ")
            );
            let param: Vec<String> = since
                .map(tidesync_core::pg::input_text)
                .into_iter()
                .collect();
            let rows = client
                .query_raw(sql.as_str(), param.iter())
                .await
                .map_err(&err)?;
            let mut rows = std::pin::pin!(rows);
            let mut pager = Pager::new(page_rows, out);
            while let Some(row) = rows.next().await {
                let row = row.map_err(&err)?;
                let mut values = Vec::with_capacity(columns.len());
                for (i, (c, ty)) in columns.iter().zip(&types).enumerate() {
                    let text: Option<&str> = row.try_get(i).map_err(&err)?;
                    values.push(cell(ty, &c.name, text).map_err(|e| {
                        StageError::definite(format!("source {target}: query {shown}: {e}"))
                    })?);
                }
                if !pager.push(values).await {
                    return Ok(());
                }
            }
            pager.finish().await;
            Ok(())
        })
    }

    fn hashes_rows(&self) -> bool {
        true
    }

    fn read_hashes<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        order: &'a [usize],
        values: bool,
        only: Option<&'a ChunkFilter>,
        page_rows: usize,
        out: mpsc::Sender<Vec<HashedRow>>,
    ) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(async move {
            let shown = format!("`{}`", short_query(query));
            let err = self.error(&format!("reading query {shown}"));
            let target = self.target.clone();
            let client = self.client().await?;
            let types = types_of(client, query, columns, &target, &err).await?;
            // COPY takes no parameters: the chunks travel as settings of the session, set
            // through bound parameters, and the statement reads them back.
            let filter = match only {
                None => String::new(),
                Some(only) => {
                    let bucket = chunk_of(columns, &types, order).ok_or_else(|| {
                        StageError::definite(format!(
                            "source {target}: query {shown}: its key cannot be read in chunks"
                        ))
                    })?;
                    set_chunk_settings(client, &only.bounds, Some(&only.chunks), &err).await?;
                    format!(
                        " WHERE {bucket} IN (SELECT unnest(current_setting('{CHUNKS_SETTING}')\
                         ::int4[]))"
                    )
                }
            };
            let selected: Vec<String> = if values {
                vec!["q.*".to_owned()]
            } else {
                order
                    .iter()
                    .map(|&i| format!("q.{}", quote_ident(&columns[i].name)))
                    .collect()
            };
            let sql = format!(
                "COPY (SELECT {}, {} FROM {}{filter} ORDER BY {}) TO STDOUT",
                selected.join(", "),
                row_hash_sql(columns, &types),
                subquery(query),
                order_by(columns, &types, order)
            );
            let width = if values { columns.len() } else { order.len() };
            let context = format!("source {target}: query {shown}");
            copy_rows(
                client,
                &sql,
                &err,
                &context,
                Pager::new(page_rows, out),
                |line| hashed_line(line, width, values, &types, columns, order),
            )
            .await
        })
    }

    fn chunk_sums<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        order: &'a [usize],
        bounds: &'a [Value],
    ) -> BoxFuture<'a, Result<Option<Vec<ChunkSum>>, StageError>> {
        Box::pin(async move {
            let shown = format!("`{}`", short_query(query));
            let err = self.error(&format!("summing query {shown} in chunks"));
            let target = self.target.clone();
            let client = self.client().await?;
            let types = types_of(client, query, columns, &target, &err).await?;
            let Some(bucket) = chunk_of(columns, &types, order) else {
                return Ok(None);
            };
            if bounds.is_empty() {
                return Ok(None);
            }
            if !sums_supported(client, &err).await? {
                return Ok(None);
            }
            let sql = sums_sql(&bucket, columns, &types, query, "");
            read_only_sums(client, &err, async {
                set_chunk_settings(client, bounds, None, &err).await?;
                let rows = client.query(sql.as_str(), &[]).await.map_err(&err)?;
                chunk_sums_of(&rows, &err).map(Some)
            })
            .await
        })
    }

    fn sample_sums<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        order: &'a [usize],
        sample: &'a ChunkFilter,
    ) -> BoxFuture<'a, Result<Option<Vec<ChunkSum>>, StageError>> {
        Box::pin(async move {
            let judged = self
                .sample_worth
                .get(query)
                .filter(|(_, at)| at.elapsed() < SAMPLE_JUDGED_FOR)
                .map(|(worth, _)| *worth);
            if judged == Some(false) {
                return Ok(None);
            }
            let shown = format!("`{}`", short_query(query));
            let err = self.error(&format!("sampling the chunk sums of query {shown}"));
            let target = self.target.clone();
            let client = self.client().await?;
            let types = types_of(client, query, columns, &target, &err).await?;
            let ([key], Some(every_bucket)) = (order, chunk_of(columns, &types, order)) else {
                return Ok(None);
            };
            let bounds = &sample.bounds;
            let ty = &types[*key];
            let column = format!("q.{}", quote_ident(&columns[*key].name));
            let (column, elem) = if collatable(ty) {
                (format!("{column} COLLATE \"C\""), "text")
            } else {
                (column, ty.name())
            };
            // Each sampled chunk's rows, by its two bounds (bound parameters, as text cast
            // to the key's type, so the planner sees the values and can use an index), and
            // grouped by where they fall among all those bounds (`$1`): range j's rows are
            // in bucket 2j + 1.
            let mut ranges = Vec::with_capacity(sample.chunks.len());
            let mut edges: Vec<String> = Vec::with_capacity(2 * sample.chunks.len());
            for &c in &sample.chunks {
                let (Some(lo), Some(hi)) = (
                    usize::try_from(c - 1).ok().and_then(|i| bounds.get(i)),
                    usize::try_from(c).ok().and_then(|i| bounds.get(i)),
                ) else {
                    return Err(StageError::definite(format!(
                        "source {target}: query {shown}: chunk {c} of {} has no two bounds to \
                         sample it by",
                        bounds.len() + 1
                    )));
                };
                let n = edges.len() + 2;
                ranges.push(format!(
                    "({column} >= ${n}::text::{elem} AND {column} < ${}::text::{elem})",
                    n + 1
                ));
                edges.push(tidesync_core::pg::input_text(lo));
                edges.push(tidesync_core::pg::input_text(hi));
            }
            if ranges.is_empty() || !sums_supported(client, &err).await? {
                return Ok(None);
            }
            let all_edges = array_literal(edges.iter().cloned());
            let mut values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&all_edges];
            values.extend(
                edges
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)),
            );
            let sampled = sums_sql(
                // A scalar subquery: evaluated once, not the cast per row.
                &format!("width_bucket({column}, (SELECT $1::text::{elem}[]))"),
                columns,
                &types,
                query,
                &format!(" WHERE {}", ranges.join(" OR ")),
            );
            let summed = read_only_sums(client, &err, async {
                // The plans' own estimates, judged again now and then: a sample that scans
                // the query's rows (no index on the key, a query the planner cannot narrow)
                // costs about as much as the sums of every chunk, and is not worth it.
                let worth = match judged {
                    Some(worth) => worth,
                    None => {
                        // (`EXPLAIN` evaluates no setting: none need be made first.)
                        let all = sums_sql(&every_bucket, columns, &types, query, "");
                        let sampled_cost = plan_cost(client, &sampled, &values, &err).await?;
                        let all_cost = plan_cost(client, &all, &[], &err).await?;
                        let worth = matches!((sampled_cost, all_cost),
                            (Some(s), Some(a)) if s * SAMPLE_COST_SHARE <= a);
                        tracing::debug!(
                            source = %target,
                            query = %shown,
                            sampled_cost,
                            all_cost,
                            worth,
                            "judged a sample of the chunk sums"
                        );
                        worth
                    }
                };
                if !worth {
                    return Ok((worth, None));
                }
                let rows = client
                    .query(sampled.as_str(), &values)
                    .await
                    .map_err(&err)?;
                let sums = chunk_sums_of(&rows, &err)?
                    .into_iter()
                    .map(|s| ChunkSum {
                        chunk: s
                            .chunk
                            .filter(|b| b % 2 == 1)
                            .and_then(|b| usize::try_from((b - 1) / 2).ok())
                            .and_then(|j| sample.chunks.get(j).copied()),
                        ..s
                    })
                    .collect();
                Ok((worth, Some(sums)))
            })
            .await;
            let (worth, sums) = summed?;
            if judged.is_none() {
                self.sample_worth
                    .insert(query.to_owned(), (worth, std::time::Instant::now()));
            }
            Ok(sums)
        })
    }

    fn read_keys<'a>(
        &'a mut self,
        query: &'a str,
        columns: &'a [QueryColumn],
        order: &'a [usize],
        keys: &'a [Vec<Value>],
    ) -> BoxFuture<'a, Result<Vec<HashedRow>, StageError>> {
        Box::pin(async move {
            let shown = format!("`{}`", short_query(query));
            let err = self.error(&format!("reading rows of query {shown} by key"));
            let target = self.target.clone();
            let client = self.client().await?;
            let types = types_of(client, query, columns, &target, &err).await?;
            let selected: Vec<String> = columns
                .iter()
                .zip(&types)
                .map(|(c, ty)| output_text(&format!("q.{}", quote_ident(&c.name)), ty))
                .collect();
            let key_columns: Vec<String> = order
                .iter()
                .map(|&i| format!("q.{}", quote_ident(&columns[i].name)))
                .collect();
            // Each key column's values travel as one text array, read back through the
            // column's own type (user-defined types compare as their text).
            let unnested: Vec<String> = order
                .iter()
                .enumerate()
                .map(|(n, &i)| {
                    let ty = &types[i];
                    if ty.oid() >= 16_384 {
                        format!("u.c{n}")
                    } else {
                        format!("u.c{n}::{}", ty.name())
                    }
                })
                .collect();
            let compared: Vec<String> = order
                .iter()
                .zip(&key_columns)
                .map(|(&i, c)| {
                    if types[i].oid() >= 16_384 {
                        format!("{c}::text")
                    } else {
                        c.clone()
                    }
                })
                .collect();
            let params: Vec<String> = (1..=order.len()).map(|n| format!("${n}::text[]")).collect();
            let names: Vec<String> = (0..order.len()).map(|n| format!("c{n}")).collect();
            let sql = format!(
                "SELECT {}, {} FROM {} WHERE ({}) IN (SELECT {} FROM unnest({}) AS u({}))",
                selected.join(", "),
                row_hash_sql(columns, &types),
                subquery(query),
                compared.join(", "),
                unnested.join(", "),
                params.join(", "),
                names.join(", ")
            );
            let arrays: Vec<Vec<Option<String>>> = (0..order.len())
                .map(|n| {
                    keys.iter()
                        .map(|k| match &k[n] {
                            Value::Null => None,
                            v => Some(tidesync_core::pg::input_text(v)),
                        })
                        .collect()
                })
                .collect();
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
                .iter()
                .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let rows = client.query(sql.as_str(), &refs).await.map_err(&err)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mut values = Vec::with_capacity(columns.len());
                for (i, (c, ty)) in columns.iter().zip(&types).enumerate() {
                    let text: Option<&str> = row.try_get(i).map_err(&err)?;
                    values.push(cell(ty, &c.name, text).map_err(|e| {
                        StageError::definite(format!("source {target}: query {shown}: {e}"))
                    })?);
                }
                let hash: i64 = row.try_get(columns.len()).map_err(&err)?;
                let key = order.iter().map(|&i| values[i].clone()).collect();
                out.push(HashedRow {
                    key,
                    values: Some(values),
                    hash,
                });
            }
            Ok(out)
        })
    }
}

/// Runs `COPY .. TO STDOUT` statement `sql` and hands each text line, decoded by `decode`, to
/// `pager`; a line that does not decode is a definite error naming `context` and the row.
async fn copy_rows<T>(
    client: &Client,
    sql: &str,
    err: &impl Fn(tokio_postgres::Error) -> StageError,
    context: &str,
    mut pager: Pager<T>,
    mut decode: impl FnMut(&[u8]) -> Result<T, String>,
) -> Result<(), StageError> {
    let stream = client.copy_out(sql).await.map_err(err)?;
    let mut stream = std::pin::pin!(stream);
    let mut line_no = 0_u64;
    while let Some(data) = stream.next().await {
        let data = data.map_err(err)?;
        // One `CopyData` message per row, but accept several lines in one.
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            line_no += 1;
            let row = decode(line)
                .map_err(|e| StageError::definite(format!("{context}, row {line_no}: {e}")))?;
            if !pager.push(row).await {
                return Ok(());
            }
        }
    }
    pager.finish().await;
    Ok(())
}

/// The session settings [`chunk_of`] and a chunk filter read: array literals of the chunks'
/// bounds (as text, read back through the key's type) and of the chunks wanted.
const BOUNDS_SETTING: &str = "tidesync.chunk_bounds";
const CHUNKS_SETTING: &str = "tidesync.chunks";

/// `values` as a PostgreSQL array literal of quoted elements (`{"a","b\"c"}`), which reads
/// back through any element type's input function.
fn array_literal(values: impl IntoIterator<Item = String>) -> String {
    let mut out = String::from("{");
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in v.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// A sample of chunk sums is read when its plan's estimated cost is at most this share
/// (its inverse) of the estimate for the sums of every chunk.
const SAMPLE_COST_SHARE: f64 = 8.0;
/// How long that judgement of a query holds (a table grows, gets an index).
const SAMPLE_JUDGED_FOR: Duration = Duration::from_secs(600);

/// Whether the server sums chunks: `bit_xor` came with PostgreSQL 14 (older servers
/// compare row by row).
async fn sums_supported(
    client: &Client,
    err: &impl Fn(tokio_postgres::Error) -> StageError,
) -> Result<bool, StageError> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(err)?;
    Ok(version >= 140_000)
}

/// The statement summing `query`'s rows (those passing `filter`, a `WHERE` clause or
/// nothing) per chunk `bucket`.
fn sums_sql(
    bucket: &str,
    columns: &[QueryColumn],
    types: &[Type],
    query: &str,
    filter: &str,
) -> String {
    format!(
        "SELECT {bucket}, count(*)::int8, coalesce(bit_xor({}), 0)::int8 FROM {}{filter} GROUP BY 1",
        row_hash_sql(columns, types),
        subquery(query),
    )
}

/// Runs `sums` in a read-only transaction of its own with the settings chunk sums want:
/// the planner takes the chunk expression for as many groups as keys and would sort a
/// million rows to group them into ten thousand; hashing (and a parallel scan where the
/// server allows one) is what these statements want.
async fn read_only_sums<T>(
    client: &Client,
    err: &impl Fn(tokio_postgres::Error) -> StageError,
    sums: impl std::future::Future<Output = Result<T, StageError>>,
) -> Result<T, StageError> {
    client
        .batch_execute(
            "BEGIN READ ONLY; SET LOCAL jit = off; SET LOCAL enable_sort = off; \
             SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0",
        )
        .await
        .map_err(err)?;
    let summed = sums.await;
    let end = if summed.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = client.batch_execute(end).await.map_err(err);
    let summed = summed?;
    ended?;
    Ok(summed)
}

/// The rows of a [`sums_sql`] statement.
fn chunk_sums_of(
    rows: &[tokio_postgres::Row],
    err: &impl Fn(tokio_postgres::Error) -> StageError,
) -> Result<Vec<ChunkSum>, StageError> {
    rows.iter()
        .map(|row| {
            Ok(ChunkSum {
                chunk: row
                    .try_get::<_, Option<i32>>(0)
                    .map_err(err)?
                    .map(i64::from),
                rows: row.try_get(1).map_err(err)?,
                sum: row.try_get(2).map_err(err)?,
            })
        })
        .collect()
}

/// The planner's estimated total cost of `sql` with `params`: the first line of its
/// `EXPLAIN` (`Node  (cost=START..TOTAL rows=..`); `None` when it reads otherwise.
async fn plan_cost(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    err: &impl Fn(tokio_postgres::Error) -> StageError,
) -> Result<Option<f64>, StageError> {
    let rows = client
        .query(format!("EXPLAIN {sql}").as_str(), params)
        .await
        .map_err(err)?;
    let first: Option<String> = rows
        .first()
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(err)?;
    Ok(first.as_deref().and_then(total_cost))
}

/// TOTAL of `..(cost=START..TOTAL rows=..`.
fn total_cost(line: &str) -> Option<f64> {
    let (_, after) = line.split_once("(cost=")?;
    let (_, total) = after.split_once("..")?;
    total.split_whitespace().next()?.parse().ok()
}

/// Sets the session's [`BOUNDS_SETTING`] (and [`CHUNKS_SETTING`]) through bound parameters.
async fn set_chunk_settings(
    client: &Client,
    bounds: &[Value],
    chunks: Option<&[i64]>,
    err: &impl Fn(tokio_postgres::Error) -> StageError,
) -> Result<(), StageError> {
    let bounds = array_literal(bounds.iter().map(tidesync_core::pg::input_text));
    let chunks = array_literal(chunks.unwrap_or(&[]).iter().map(i64::to_string));
    client
        .execute(
            &format!(
                "SELECT set_config('{BOUNDS_SETTING}', $1, false), \
                 set_config('{CHUNKS_SETTING}', $2, false)"
            ),
            &[&bounds, &chunks],
        )
        .await
        .map_err(err)?;
    Ok(())
}

/// The SQL of a row's chunk number under the session's [`BOUNDS_SETTING`], for a key of one
/// column whose type PostgreSQL compares in the order tidesync keeps keys in ([`order_by`]'s,
/// and [`super::ord`]'s); `None` for any other key.
fn chunk_of(columns: &[QueryColumn], types: &[Type], order: &[usize]) -> Option<String> {
    let [i] = order else {
        return None;
    };
    let ty = &types[*i];
    let chunkable = matches!(
        *ty,
        Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::NUMERIC
            | Type::TEXT
            | Type::VARCHAR
            | Type::DATE
            | Type::TIMESTAMP
            | Type::TIMESTAMPTZ
    );
    if !chunkable {
        return None;
    }
    let column = format!("q.{}", quote_ident(&columns[*i].name));
    let operand = if collatable(ty) {
        format!("{column} COLLATE \"C\"")
    } else {
        column
    };
    // One evaluation per statement (a scalar subquery), not per row.
    Some(format!(
        "width_bucket({operand}, (SELECT current_setting('{BOUNDS_SETTING}')::{}[]))",
        ty.name()
    ))
}

/// The `ORDER BY` list for the key columns at `order`: text in byte order.
fn order_by(columns: &[QueryColumn], types: &[Type], order: &[usize]) -> String {
    order
        .iter()
        .map(|&i| {
            let c = format!("q.{}", quote_ident(&columns[i].name));
            if collatable(&types[i]) {
                format!("{c} COLLATE \"C\"")
            } else {
                c
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The column types of `query` now, checked against what it was described with.
async fn types_of(
    client: &Client,
    query: &str,
    columns: &[QueryColumn],
    target: &str,
    err: &impl Fn(tokio_postgres::Error) -> StageError,
) -> Result<Vec<Type>, StageError> {
    let statement = client.prepare(query).await.map_err(err)?;
    let types: Vec<Type> = statement
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect();
    if types.len() != columns.len()
        || statement
            .columns()
            .iter()
            .zip(columns)
            .any(|(a, b)| a.name() != b.name)
    {
        return Err(StageError::definite(format!(
            "source {target}: query `{}` now returns other columns than when the source \
             started; restart the pipeline",
            short_query(query)
        )));
    }
    Ok(types)
}

/// One line of a hashed `COPY`: the key columns (or all columns), then the hash.
fn hashed_line(
    line: &[u8],
    width: usize,
    values: bool,
    types: &[Type],
    columns: &[QueryColumn],
    order: &[usize],
) -> Result<HashedRow, String> {
    let mut fields = line.split(|&b| b == b'\t');
    let mut cells = Vec::with_capacity(width);
    let column_at = |n: usize| if values { n } else { order[n] };
    for (n, i) in (0..width).map(|n| (n, column_at(n))) {
        let field = fields
            .next()
            .ok_or_else(|| format!("{} values, not {}", n, width + 1))?;
        let text = copy_field(field)
            .map_err(|()| format!("column {} is not UTF-8 text", columns[i].name))?;
        cells.push(cell(&types[i], &columns[i].name, text.as_deref())?);
    }
    let hash = fields
        .next()
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| "no row hash at the end of the line".to_owned())?;
    if fields.next().is_some() {
        return Err(format!("more than {} values", width + 1));
    }
    Ok(if values {
        HashedRow {
            key: order.iter().map(|&i| cells[i].clone()).collect(),
            values: Some(cells),
            hash,
        }
    } else {
        HashedRow {
            key: cells,
            values: None,
            hash,
        }
    })
}

/// The SQL hash of column `c` of type `ty`, seeded by `seed`; NULL for a NULL. Types with one
/// output text per value use their own hash functions (no text output); every other type is
/// hashed by its output text, so that any change of the value changes the hash (numeric's own
/// hash treats `1.50` and `1.5` as equal, which the model does not).
fn column_hash_sql(c: &str, ty: &Type, seed: usize) -> String {
    match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 => format!("hashint8extended({c}::int8, {seed})"),
        Type::BOOL => format!("hashint4extended({c}::int4, {seed})"),
        Type::TEXT | Type::VARCHAR | Type::NAME => {
            format!("hashtextextended({c}::text COLLATE \"C\", {seed})")
        }
        Type::UUID => format!("uuid_hash_extended({c}, {seed})"),
        Type::TIMESTAMP => format!("timestamp_hash_extended({c}, {seed})"),
        // The session's time zone is UTC: one local time per instant.
        Type::TIMESTAMPTZ => format!("timestamp_hash_extended({c}::timestamp, {seed})"),
        _ => format!(
            "hashtextextended({} COLLATE \"C\", {seed})",
            output_text(c, ty)
        ),
    }
}

/// Column `c` as its output function's text (what `COPY` sends). A `::text` cast is that for
/// every type but `char(n)`, whose cast drops the padding.
fn output_text(c: &str, ty: &Type) -> String {
    if *ty == Type::BPCHAR {
        format!("(CASE WHEN {c} IS NULL THEN NULL ELSE concat({c}) END)")
    } else {
        format!("{c}::text")
    }
}

/// The hash of a whole row of columns `q.NAME` of `types`.
fn row_hash_sql(columns: &[QueryColumn], types: &[Type]) -> String {
    let parts: Vec<String> = columns
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (c, ty))| {
            let seed = i + 1;
            let column = format!("q.{}", quote_ident(&c.name));
            format!("coalesce({}, {seed})", column_hash_sql(&column, ty, seed))
        })
        .collect();
    if parts.is_empty() {
        return "0::int8".to_owned();
    }
    format!("hashint8extended({}, 0)", parts.join(" # "))
}

/// A value of type `ty` from its text, the error naming `column`.
fn cell(ty: &Type, column: &str, text: Option<&str>) -> Result<Value, String> {
    match text {
        None => Ok(Value::Null),
        Some(text) => text_to_value(Oid(ty.oid()), Some(ty.name()), text)
            .map_err(|e| format!("column {column}: {e}")),
    }
}

/// One field of a `COPY` text line, unescaped; `None` for `\N`.
fn copy_field(field: &[u8]) -> Result<Option<std::borrow::Cow<'_, str>>, ()> {
    if field == b"\\N" {
        return Ok(None);
    }
    if field.contains(&b'\\') {
        String::from_utf8(unescape(field))
            .map(|s| Some(std::borrow::Cow::Owned(s)))
            .map_err(|_| ())
    } else {
        std::str::from_utf8(field)
            .map(|s| Some(std::borrow::Cow::Borrowed(s)))
            .map_err(|_| ())
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
        let (Some(ty), Some(column)) = (types.get(i), columns.get(i)) else {
            return Err(format!("more than the {} columns described", types.len()));
        };
        let text =
            copy_field(field).map_err(|()| format!("column {} is not UTF-8 text", column.name))?;
        row.push(cell(ty, &column.name, text.as_deref())?);
    }
    if row.len() != types.len() {
        return Err(format!("{} values, not {}", row.len(), types.len()));
    }
    Ok(row)
}
