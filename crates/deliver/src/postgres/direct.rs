//! The direct copy into PostgreSQL ([`CopyWriter`]): a chunk of the source's `COPY` text goes
//! into `COPY .. FROM STDIN` as it is, no row decoded or re-encoded, on a writer connection of
//! its own, and the chunk's position is recorded in `_tidesync_copied` in the same
//! transaction when the runtime commits it. After a crash between that commit and the log's, the runtime reads the
//! recorded position back ([`Sink::copied`](tidesync_core::Sink::copied)) and resumes after
//! it, so no chunk is applied twice.
//!
//! The target parses the source's text output with its own column types, as PostgreSQL's own
//! initial table synchronisation does: the same types (tables created from the source schema)
//! or types whose input accepts that text. A row that exists already, or a value the target
//! type refuses, fails the chunk definitely; the runtime then sends the rows through the log
//! (upserts, with errors naming the row).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::SinkExt as _;
use tidesync_core::{
    BoxFuture, CopyChunk, CopyWriter, Dialect, Position, Seq, StageError, TableSchema,
};

use super::error::PostgresSinkError;
use super::{PostgresSink, sql, within};

const CREATE_COPIED: &str = "CREATE TABLE IF NOT EXISTS _tidesync_copied (
    pipeline text NOT NULL, sink text NOT NULL, position text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (pipeline, sink))";

const WRITE_COPIED: &str = "INSERT INTO _tidesync_copied (pipeline, sink, position)
    VALUES ($1, $2, $3) ON CONFLICT (pipeline, sink)
    DO UPDATE SET position = EXCLUDED.position, updated_at = now()";

const READ_COPIED: &str = "SELECT position FROM _tidesync_copied WHERE pipeline = $1 AND sink = $2";

/// The columns of table `$1` (a quoted name): name, type as `format_type` prints it, type oid.
const TABLE_TYPES: &str = "SELECT attname::text, format_type(atttypid, atttypmod), atttypid::int8 \
    FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped";

const CLEAR_COPIED: &str = "DELETE FROM _tidesync_copied WHERE pipeline = $1 AND sink = $2";

/// Creates `_tidesync_copied` if missing, under the setup lock (see `sql::locked_ddl`).
async fn create_copied(
    conn: &super::Conn,
    target: &str,
    context: &str,
    err: &impl Fn(tokio_postgres::Error) -> PostgresSinkError,
) -> Result<(), PostgresSinkError> {
    within(
        target,
        context,
        conn.client.batch_execute(&sql::locked_ddl(CREATE_COPIED)),
    )
    .await?
    .map_err(err)
}

/// The chunk's rows as a `Bytes` without copying them.
struct ChunkData(Arc<CopyChunk>);

impl AsRef<[u8]> for ChunkData {
    fn as_ref(&self) -> &[u8] {
        &self.0.data
    }
}

/// A [`CopyWriter`] with its own connection (a [`PostgresSink`] used for its connection only).
pub(super) struct PgCopyWriter {
    conn: PostgresSink,
    /// The chunk written (its transaction open) or being committed.
    chunk: Option<Arc<CopyChunk>>,
    /// A commit failed without saying whether it happened.
    uncertain: bool,
    /// `_tidesync_copied` is known to exist (created once per writer, not per chunk).
    has_copied_table: bool,
}

impl PgCopyWriter {
    pub(super) fn new(sink: &PostgresSink) -> Self {
        PgCopyWriter {
            conn: PostgresSink::new(&sink.url, &sink.pipeline, &sink.sink, false),
            chunk: None,
            uncertain: false,
            has_copied_table: false,
        }
    }

    /// Begins a transaction and copies `chunk` in it.
    async fn write_inner(&mut self, chunk: &Arc<CopyChunk>) -> Result<(), PostgresSinkError> {
        let target = self.conn.target.clone();
        let context = format!("copying {} rows into {}", chunk.rows, chunk.stream);
        let err = self.conn.query_error(&context);
        // A connection that was in a transaction (an earlier attempt) starts afresh.
        if self.conn.conn.as_ref().is_some_and(|c| c.dirty) {
            self.conn.conn = None;
        }
        let conn = self.conn.connect().await?;
        conn.dirty = true;
        // Created outside the chunk's transaction: created inside it, the table would make
        // every other writer wait for this commit.
        if !self.has_copied_table {
            create_copied(conn, &target, &context, &err).await?;
            self.has_copied_table = true;
        }
        within(&target, &context, conn.client.batch_execute("BEGIN"))
            .await?
            .map_err(&err)?;
        let mut copy = sql::copy_sql(&chunk.stream, &chunk.columns);
        if chunk.binary {
            copy.push_str(" (FORMAT binary)");
        }
        let statement = within(&target, &context, conn.client.prepare(&copy))
            .await?
            .map_err(&err)?;
        let rows = within(
            &target,
            &context,
            conn.client.copy_in::<_, bytes::Bytes>(&statement),
        )
        .await?
        .map_err(&err)?;
        let mut rows = std::pin::pin!(rows);
        let data = bytes::Bytes::from_owner(ChunkData(chunk.clone()));
        within(&target, &context, rows.send(data))
            .await?
            .map_err(&err)?;
        within(&target, &context, rows.as_mut().finish())
            .await?
            .map_err(&err)?;
        Ok(())
    }

    /// Records the chunk's position and commits; after an uncertain commit, first finds out
    /// whether it happened (the recorded position is the chunk's) and else writes it again.
    async fn commit_inner(&mut self) -> Result<(), PostgresSinkError> {
        let Some(chunk) = self.chunk.clone() else {
            return Ok(());
        };
        if self.uncertain {
            self.conn.conn = None;
            if self.conn.copied_inner().await? == Some(chunk.position.clone()) {
                self.uncertain = false;
                self.chunk = None;
                return Ok(());
            }
            self.write_inner(&chunk).await?;
            self.uncertain = false;
        }
        let target = self.conn.target.clone();
        let (pipeline, sink) = (self.conn.pipeline.clone(), self.conn.sink.clone());
        let context = format!("committing {} rows into {}", chunk.rows, chunk.stream);
        let err = self.conn.query_error(&context);
        // The connection whose transaction holds the rows (never a new one: committing
        // there would record the position without the rows).
        let Some(conn) = self.conn.conn.as_mut().filter(|c| c.dirty) else {
            return Err(PostgresSinkError::Connect {
                target,
                problem: "the connection that wrote the chunk is gone".to_owned(),
                transient: true,
            });
        };
        let position = chunk.position.to_json();
        within(
            &target,
            &context,
            conn.client
                .execute(WRITE_COPIED, &[&pipeline, &sink, &position]),
        )
        .await?
        .map_err(&err)?;
        within(&target, &context, conn.client.batch_execute("COMMIT"))
            .await?
            .map_err(&err)?;
        conn.dirty = false;
        self.uncertain = false;
        self.chunk = None;
        Ok(())
    }
}

impl CopyWriter for PgCopyWriter {
    fn write(&mut self, chunk: Arc<CopyChunk>) -> BoxFuture<'_, Result<(), StageError>> {
        Box::pin(async move {
            self.uncertain = false;
            self.chunk = Some(chunk.clone());
            let result = self.write_inner(&chunk).await;
            if result.is_err() {
                self.conn.conn = None;
            }
            result.map_err(StageError::from)
        })
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), StageError>> {
        Box::pin(async move {
            let result = self.commit_inner().await;
            if result.is_err() {
                // Whether the error came before or after COMMIT reached the server, the next
                // call finds out from the recorded position, and writes the chunk again if
                // it is not there.
                self.uncertain = true;
            }
            result.map_err(StageError::from)
        })
    }
}

impl PostgresSink {
    /// See [`Sink::copy_binary`](tidesync_core::Sink::copy_binary): PostgreSQL schemas whose
    /// every column the target table has with the same type name, and that a built-in type
    /// (the same binary form in every database).
    pub(super) async fn copy_binary_inner(
        &mut self,
        schemas: &[TableSchema],
    ) -> Result<HashSet<String>, PostgresSinkError> {
        let target = self.target.clone();
        let context = "reading the target's column types";
        let err = self.query_error(context);
        let conn = self.connect().await?;
        let mut binary = HashSet::new();
        for schema in schemas.iter().filter(|s| s.dialect == Dialect::Postgres) {
            let name = sql::quote_ident(&schema.name);
            let rows = within(&target, context, conn.client.query(TABLE_TYPES, &[&name]))
                .await?
                .map_err(&err)?;
            let mut types: HashMap<String, (String, i64)> = HashMap::new();
            for row in rows {
                let column: String = row.try_get(0).map_err(&err)?;
                let type_name: String = row.try_get(1).map_err(&err)?;
                let oid: i64 = row.try_get(2).map_err(&err)?;
                types.insert(column, (type_name, oid));
            }
            let same = schema.columns.iter().all(|c| {
                types
                    .get(&c.name)
                    .is_some_and(|(type_name, oid)| *type_name == c.type_name && *oid < 10_000)
            });
            if same {
                binary.insert(schema.name.clone());
            }
        }
        Ok(binary)
    }

    pub(super) async fn copied_inner(&mut self) -> Result<Option<Position>, PostgresSinkError> {
        let target = self.target.clone();
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let context = "reading the direct copy's position";
        let err = self.query_error(context);
        let conn = self.connect().await?;
        create_copied(conn, &target, context, &err).await?;
        let row = within(
            &target,
            context,
            conn.client.query_opt(READ_COPIED, &[&pipeline, &sink]),
        )
        .await?
        .map_err(&err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let text: String = row.try_get(0).map_err(&err)?;
        Position::from_json(&text)
            .map(Some)
            .map_err(|e| PostgresSinkError::Query {
                target,
                context: context.to_owned(),
                problem: format!(
                    "_tidesync_copied holds `{text}` for {pipeline}/{sink}, not a position: {e}"
                ),
                transient: false,
            })
    }

    /// The applied seq and position a direct stream recorded (see `Sink::applied_position`).
    pub(super) async fn applied_position_inner(
        &mut self,
    ) -> Result<Option<(Seq, Position)>, PostgresSinkError> {
        let target = self.target.clone();
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let context = "reading the direct stream's position";
        let err = self.query_error(context);
        let conn = self.connect().await?;
        let row = within(
            &target,
            context,
            conn.client
                .query_opt(sql::READ_APPLIED_POSITION, &[&pipeline, &sink]),
        )
        .await?
        .map_err(&err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let seq: i64 = row.try_get(0).map_err(&err)?;
        let Some(text) = row.try_get::<_, Option<String>>(1).map_err(&err)? else {
            return Ok(None);
        };
        let position = Position::from_json(&text).map_err(|e| PostgresSinkError::Query {
            target,
            context: context.to_owned(),
            problem: format!(
                "_tidesync_applied holds `{text}` for {pipeline}/{sink}, not a position: {e}"
            ),
            transient: false,
        })?;
        Ok(Some((Seq(seq.max(0) as u64), position)))
    }

    /// Forgets the recorded position; `true` if there was one.
    pub(super) async fn clear_copied_inner(&mut self) -> Result<bool, PostgresSinkError> {
        let target = self.target.clone();
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let context = "clearing the direct copy's position";
        let err = self.query_error(context);
        let conn = self.connect().await?;
        create_copied(conn, &target, context, &err).await?;
        let n = within(
            &target,
            context,
            conn.client.execute(CLEAR_COPIED, &[&pipeline, &sink]),
        )
        .await?
        .map_err(&err)?;
        Ok(n > 0)
    }
}
