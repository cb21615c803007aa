//! The direct copy into PostgreSQL ([`Sink::copy`](tidesync_core::Sink::copy)): a chunk of
//! the source's `COPY` text goes into `COPY .. FROM STDIN` as it is, no row decoded or
//! re-encoded, and the chunk's position is recorded in `_tidesync_copied` in the same
//! transaction. After a crash between that commit and the log's, the runtime reads the
//! recorded position back ([`Sink::copied`](tidesync_core::Sink::copied)) and resumes after
//! it, so no chunk is applied twice.
//!
//! The target parses the source's text output with its own column types, as PostgreSQL's own
//! initial table synchronisation does: the same types (tables created from the source schema)
//! or types whose input accepts that text. A row that exists already, or a value the target
//! type refuses, fails the chunk definitely; the runtime then sends the rows through the log
//! (upserts, with errors naming the row).

use std::sync::Arc;

use futures_util::SinkExt as _;
use tidesync_core::{CopyChunk, Position};

use super::error::PostgresSinkError;
use super::{PostgresSink, sql, within};

const CREATE_COPIED: &str = "CREATE TABLE IF NOT EXISTS _tidesync_copied (
    pipeline text NOT NULL, sink text NOT NULL, position text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (pipeline, sink))";

const WRITE_COPIED: &str = "INSERT INTO _tidesync_copied (pipeline, sink, position)
    VALUES ($1, $2, $3) ON CONFLICT (pipeline, sink)
    DO UPDATE SET position = EXCLUDED.position, updated_at = now()";

const READ_COPIED: &str = "SELECT position FROM _tidesync_copied WHERE pipeline = $1 AND sink = $2";

const CLEAR_COPIED: &str = "DELETE FROM _tidesync_copied WHERE pipeline = $1 AND sink = $2";

/// The chunk's rows as a `Bytes` without copying them.
struct ChunkData(Arc<CopyChunk>);

impl AsRef<[u8]> for ChunkData {
    fn as_ref(&self) -> &[u8] {
        &self.0.data
    }
}

impl PostgresSink {
    pub(super) async fn copy_inner(
        &mut self,
        chunk: Arc<CopyChunk>,
    ) -> Result<(), PostgresSinkError> {
        let target = self.target.clone();
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let context = format!("copying {} rows into {}", chunk.rows, chunk.stream);
        let err = self.query_error(&context);
        let conn = self.connect().await?;
        conn.dirty = true;
        let tx = within(&target, &context, conn.client.transaction())
            .await?
            .map_err(&err)?;
        within(&target, &context, tx.batch_execute(CREATE_COPIED))
            .await?
            .map_err(&err)?;
        let statement = within(
            &target,
            &context,
            tx.prepare(&sql::copy_sql(&chunk.stream, &chunk.columns)),
        )
        .await?
        .map_err(&err)?;
        let rows = within(&target, &context, tx.copy_in::<_, bytes::Bytes>(&statement))
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
        let position = chunk.position.to_json();
        within(
            &target,
            &context,
            tx.execute(WRITE_COPIED, &[&pipeline, &sink, &position]),
        )
        .await?
        .map_err(&err)?;
        within(&target, &context, tx.commit())
            .await?
            .map_err(&err)?;
        conn.dirty = false;
        Ok(())
    }

    pub(super) async fn copied_inner(&mut self) -> Result<Option<Position>, PostgresSinkError> {
        let target = self.target.clone();
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let context = "reading the direct copy's position";
        let err = self.query_error(context);
        let conn = self.connect().await?;
        within(&target, context, conn.client.batch_execute(CREATE_COPIED))
            .await?
            .map_err(&err)?;
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

    /// Forgets the recorded position; `true` if there was one.
    pub(super) async fn clear_copied_inner(&mut self) -> Result<bool, PostgresSinkError> {
        let target = self.target.clone();
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        let context = "clearing the direct copy's position";
        let err = self.query_error(context);
        let conn = self.connect().await?;
        within(&target, context, conn.client.batch_execute(CREATE_COPIED))
            .await?
            .map_err(&err)?;
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
