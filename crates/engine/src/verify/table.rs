//! Comparing one table with one target's copy: planning the columns, walking the key space
//! chunk by chunk, and re-checking differing keys before they are reported.
//!
//! Two walks:
//! - [`Walk::by_rows`]: pages of `chunk_rows` canonical rows from both sides at once, cut at
//!   the smaller last key, hashed, merged where the hashes differ (see `chunk`).
//! - [`Walk::by_database`] (both sides PostgreSQL, same column types): a second source
//!   connection finds the chunks' ends in the key index, 32 at a time and one batch ahead;
//!   each server hashes the batch's chunks back to back, both at once, so neither waits for
//!   the other per chunk; a chunk whose count or hash differs is walked by rows within its
//!   range, which also keeps memory at one page per side.
//!
//! Differing keys collect (at most `chunk_rows` at a time) and are re-checked together
//! ([`recheck`]): rows still moving through the pipeline are not differences.

use std::sync::Arc;

use tidesync_core::{Key, Value};

use super::canon::{Affinity, Class};
use super::chunk::{self, Diff, DiffKind, Native, SideRow, chunk_hash, count_upto, merge};
use super::postgres::{PgSide, max_key_sql};
use super::settle::Settle;
use super::side::{CatalogColumn, ColType, LookupKey, Role, Side, SidePlan, TableShape};
use super::{Endpoint, KeyDiff, Method, TableReport, VerifyError, VerifyOptions};
use crate::config::TableRename;

/// Rounds of re-checking a key that still differs while the source keeps changing.
const MAX_ROUNDS: usize = 5;
/// Chunks hashed per round trip of the database walk (their boundaries are held meanwhile).
const BATCH: usize = 32;

/// The keys above the first bound and up to the second, each side's own form; `None`: open.
type KeyRange = (Option<Vec<Native>>, Option<Vec<Native>>);

/// Compares `table` of `source` with its copy in `target`, filling `report`. The copy is the
/// table of the same name with the same column names, or as `rename` (the sink's
/// `[sinks.NAME.tables."TABLE"]`) says. With `settle` (the pipeline's store and the sink's
/// name), differing keys are re-checked once the pipeline has caught up; without, they are
/// reported as found.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    source: &Endpoint,
    target: &Endpoint,
    table: &str,
    rename: Option<&TableRename>,
    options: &VerifyOptions,
    settle: Option<(&mut Settle, &str)>,
    progress: &(dyn Fn(u64) + Sync),
    report: &mut TableReport,
) -> Result<(), VerifyError> {
    let (s, t) = tokio::try_join!(Side::connect(source), Side::connect(target))?;
    let t_table = rename.map_or(table, |r| r.table.as_str());
    let (s_sql, t_sql) = (
        s.table_sql(table, Role::Source),
        t.table_sql(t_table, Role::Target),
    );
    let (s_shape, t_shape) = tokio::try_join!(
        s.describe(&s_sql, table, Role::Source),
        t.describe(&t_sql, t_table, Role::Target)
    )?;
    let (splan, tplan) = plan(
        (&s, table, s_sql, s_shape),
        (&t, t_table, t_sql, t_shape),
        rename,
    )?;
    let by_database = matches!((&s, &t), (Side::Postgres(_), Side::Postgres(_)))
        && splan
            .columns
            .iter()
            .zip(&tplan.columns)
            .all(|((_, a), (_, b))| same_pg_type(a, b));
    report.method = if by_database {
        Method::DatabaseHash
    } else {
        Method::RowHash
    };
    let mut walk = Walk {
        source: &s,
        target: &t,
        splan: Arc::new(splan),
        tplan: Arc::new(tplan),
        rows: options.chunk_rows.max(1),
        max_keys: options.max_keys,
        collect: options.collect_keys,
        settle,
        progress,
        report,
        pending: Vec::new(),
        scanned: 0,
    };
    let max_key = by_database.then(|| max_key_sql(&walk.splan)).flatten();
    if let Some(max_key) = max_key {
        walk.by_pages(&max_key).await?;
    } else if let (true, Endpoint::Postgres { url }) = (by_database, source) {
        // A second source connection finds chunk boundaries ahead of the hashing.
        let scout = PgSide::connect(url).await?;
        walk.by_database(&scout).await?;
    } else {
        walk.by_rows(None, None, None, true).await?;
    }
    walk.flush().await
}

fn same_pg_type(a: &ColType, b: &ColType) -> bool {
    matches!((a, b), (ColType::Postgres { format: x, .. }, ColType::Postgres { format: y, .. }) if x == y)
}

/// Both sides' plans: the source's columns (generated ones excepted), each with the class of
/// its target column (the column of the same name, or the one `rename` names). Each side is
/// (database, table name, table in SQL, catalog shape).
fn plan(
    (s, table, s_sql, s_shape): (&Side, &str, String, TableShape),
    (t, t_table, t_sql, t_shape): (&Side, &str, String, TableShape),
    rename: Option<&TableRename>,
) -> Result<(SidePlan, SidePlan), VerifyError> {
    let target_column =
        |name: &'_ str| -> String { rename.map_or(name, |r| r.target_column(name)).to_owned() };
    let key = s_shape.key.ok_or_else(|| VerifyError::NoKey {
        db: s.db().to_owned(),
        table: table.to_owned(),
    })?;
    let columns: Vec<CatalogColumn> = s_shape
        .columns
        .into_iter()
        .filter(|c| !c.generated)
        .collect();
    let mut missing = Vec::new();
    let mut t_columns = Vec::with_capacity(columns.len());
    for c in &columns {
        let name = target_column(&c.name);
        match t_shape.columns.iter().find(|t| t.name == name) {
            Some(tc) => t_columns.push(tc.clone()),
            None if name == c.name => missing.push(format!("`{name}`")),
            None => missing.push(format!("`{name}` (renamed from `{}`)", c.name)),
        }
    }
    if !missing.is_empty() {
        return Err(VerifyError::MissingColumns {
            db: t.db().to_owned(),
            table: t_table.to_owned(),
            columns: missing.join(", "),
        });
    }
    let key_indexes = key
        .iter()
        .map(|k| columns.iter().position(|c| &c.name == k))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| VerifyError::NoKey {
            db: s.db().to_owned(),
            table: table.to_owned(),
        })?;
    let classes: Vec<Class> = t_columns
        .iter()
        .map(|c| match &c.ty {
            ColType::Sqlite { declared } => Class::Sqlite(Affinity::of(declared)),
            ColType::Postgres {
                type_oid, typmod, ..
            } => Class::postgres(*type_oid, *typmod),
            ColType::Mysql { class, .. } => *class,
        })
        .collect();
    let s_conv = columns
        .iter()
        .zip(&classes)
        .map(|(c, class)| match (&c.ty, class) {
            // Stored under the same affinity already: canonical as it is.
            (ColType::Sqlite { declared }, Class::Sqlite(a)) if Affinity::of(declared) == *a => {
                None
            }
            _ => Some(*class),
        })
        .collect();
    let t_conv = t_columns
        .iter()
        .zip(&classes)
        .map(|(c, class)| match c.ty {
            ColType::Sqlite { .. } => None,
            ColType::Postgres { .. } | ColType::Mysql { .. } => Some(*class),
        })
        .collect();
    let side = |side: &Side, table: &str, table_sql, columns: Vec<CatalogColumn>, conv| SidePlan {
        db: side.db().to_owned(),
        table: table.to_owned(),
        table_sql,
        columns: columns.into_iter().map(|c| (c.name, c.ty)).collect(),
        key: key_indexes.clone(),
        conv,
    };
    Ok((
        side(s, table, s_sql, columns, s_conv),
        side(t, t_table, t_sql, t_columns, t_conv),
    ))
}

struct Walk<'a> {
    source: &'a Side,
    target: &'a Side,
    splan: Arc<SidePlan>,
    tplan: Arc<SidePlan>,
    rows: usize,
    max_keys: usize,
    /// Every differing key is kept (up to this many) for a repair.
    collect: usize,
    settle: Option<(&'a mut Settle, &'a str)>,
    progress: &'a (dyn Fn(u64) + Sync),
    report: &'a mut TableReport,
    /// Differing keys waiting for their re-check.
    pending: Vec<Diff>,
    /// Source rows walked, for progress.
    scanned: u64,
}

impl Walk<'_> {
    /// Walks `(lo, hi]` (each side after its own `lo`) in pages of both sides. `count`: add
    /// the rows and chunks to the report (not when narrowing a chunk already counted).
    async fn by_rows(
        &mut self,
        mut lo_s: Option<Vec<Native>>,
        mut lo_t: Option<Vec<Native>>,
        hi: Option<Vec<Native>>,
        count: bool,
    ) -> Result<(), VerifyError> {
        let n = self.rows;
        loop {
            let (a, b) = tokio::try_join!(
                self.source
                    .page(&self.splan, lo_s.as_deref(), hi.as_deref(), n),
                self.target
                    .page(&self.tplan, lo_t.as_deref(), hi.as_deref(), n),
            )?;
            in_order(&self.splan, &a)?;
            in_order(&self.tplan, &b)?;
            let cut = chunk::cut(&a, a.len() == n, &b, b.len() == n).map(<[Value]>::to_vec);
            let (a_part, b_part) = (
                &a[..count_upto(&a, cut.as_deref())],
                &b[..count_upto(&b, cut.as_deref())],
            );
            let differs = a_part.len() != b_part.len() || chunk_hash(a_part) != chunk_hash(b_part);
            if count {
                self.report.source_rows += a_part.len() as u64;
                self.report.target_rows += b_part.len() as u64;
                self.report.chunks += u64::from(!a_part.is_empty() || !b_part.is_empty());
                self.report.chunks_differing += u64::from(differs);
                self.scanned += a_part.len() as u64;
                (self.progress)(self.scanned);
            }
            if differs {
                self.found(merge(a_part, b_part)).await?;
            }
            if cut.is_none() {
                return Ok(());
            }
            // Each side resumes after its last row at or below the cut; a side with none
            // there re-reads its page from the same place.
            if let Some(r) = a_part.last() {
                lo_s = Some(r.native.clone());
            }
            if let Some(r) = b_part.last() {
                lo_t = Some(r.native.clone());
            }
        }
    }

    /// Both sides hash their next `rows` rows after the same key at once, each finding its
    /// chunk's last key in the same scan. Equal counts, hashes and last keys: the chunk is
    /// equal. Otherwise the rows up to the source's last key (to the end, once the source has
    /// no more) are compared row by row, and both sides go on after it.
    async fn by_pages(&mut self, max_key: &str) -> Result<(), VerifyError> {
        let (Side::Postgres(s), Side::Postgres(t)) = (self.source, self.target) else {
            return self.by_rows(None, None, None, true).await;
        };
        let n = self.rows;
        let mut lo: Option<Vec<Native>> = None;
        loop {
            let ((s_rows, s_hash, s_last), (t_rows, t_hash, t_last)) = tokio::try_join!(
                s.page_hash(&self.splan, max_key, lo.as_deref(), n),
                t.page_hash(&self.tplan, max_key, lo.as_deref(), n),
            )?;
            let end = (s_rows as usize >= n).then_some(s_last.clone()).flatten();
            if s_rows == t_rows && s_hash == t_hash && s_last == t_last {
                self.report.source_rows += s_rows;
                self.report.target_rows += t_rows;
                self.report.chunks += u64::from(s_rows > 0);
                self.scanned += s_rows;
                (self.progress)(self.scanned);
            } else {
                // Counted row by row; the key texts of one PostgreSQL side are valid for the
                // other: the column types are the same.
                let hi = end.clone().map(|k| vec![k]);
                self.by_rows(lo.clone(), lo.clone(), hi, true).await?;
            }
            match end {
                Some(k) => lo = Some(vec![k]),
                None => return Ok(()),
            }
        }
    }

    async fn by_database(&mut self, scout: &PgSide) -> Result<(), VerifyError> {
        let (Side::Postgres(s), Side::Postgres(t)) = (self.source, self.target) else {
            return self.by_rows(None, None, None, true).await;
        };
        let n = self.rows;
        let mut lo: Option<Vec<Native>> = None;
        let mut ends = scout.boundaries(&self.splan, None, n, BATCH).await?;
        loop {
            // The batch's ranges; after the table's last boundary, an open-ended one catches
            // target rows above the source's last key.
            let last = ends.len() < BATCH;
            let mut ranges = Vec::with_capacity(ends.len() + 1);
            let mut start = lo.clone();
            for end in ends {
                ranges.push((start.clone(), Some(end.clone())));
                start = Some(end);
            }
            if last {
                ranges.push((start.clone(), None));
            }
            // Both sides hash the batch while the scout finds the next batch's boundaries.
            let next = async {
                match (&start, last) {
                    (Some(from), false) => {
                        scout.boundaries(&self.splan, Some(from), n, BATCH).await
                    }
                    _ => Ok(Vec::new()),
                }
            };
            let (s_hashes, t_hashes, next) = tokio::try_join!(
                hash_ranges(s, &self.splan, &ranges),
                hash_ranges(t, &self.tplan, &ranges),
                next,
            )?;
            for ((range, (s_rows, s_hash)), (t_rows, t_hash)) in
                ranges.iter().zip(s_hashes).zip(t_hashes)
            {
                let differs = s_rows != t_rows || s_hash != t_hash;
                self.report.source_rows += s_rows;
                self.report.target_rows += t_rows;
                self.report.chunks += u64::from(s_rows + t_rows > 0);
                self.report.chunks_differing += u64::from(differs);
                self.scanned += s_rows;
                (self.progress)(self.scanned);
                if differs {
                    // The key texts of one PostgreSQL side are valid for the other: the
                    // column types are the same.
                    let (from, to) = range.clone();
                    self.by_rows(from.clone(), from, to, false).await?;
                }
            }
            if last {
                return Ok(());
            }
            lo = start;
            ends = next;
        }
    }

    /// Queues differing keys for their re-check, running it once a chunk's worth is waiting.
    async fn found(&mut self, diffs: Vec<Diff>) -> Result<(), VerifyError> {
        self.pending.extend(diffs);
        if self.pending.len() >= self.rows {
            self.flush().await?;
        }
        Ok(())
    }

    /// Re-checks the waiting keys and records what still differs.
    async fn flush(&mut self) -> Result<(), VerifyError> {
        let diffs = std::mem::take(&mut self.pending);
        if diffs.is_empty() {
            return Ok(());
        }
        let candidates = diffs.len();
        let confirmed = match &mut self.settle {
            None => diffs,
            Some((settle, sink)) => {
                recheck(
                    (self.source, &self.splan),
                    (self.target, &self.tplan),
                    settle,
                    sink,
                    diffs,
                )
                .await?
            }
        };
        tracing::debug!(
            table = %self.splan.table,
            candidates,
            confirmed = confirmed.len(),
            "re-checked differing keys"
        );
        for d in confirmed {
            match d.kind {
                DiffKind::Missing => self.report.missing += 1,
                DiffKind::Extra => self.report.extra += 1,
                DiffKind::Different => self.report.different += 1,
            }
            if self.collect > 0 {
                if self.report.all_keys.len() < self.collect {
                    self.report.all_keys.push(Key(d.key.clone()));
                } else {
                    self.report.all_keys_truncated = true;
                }
            }
            if self.report.keys.len() < self.max_keys {
                self.report.keys.push(KeyDiff {
                    kind: d.kind,
                    key: Key(d.key),
                    columns: d
                        .columns
                        .iter()
                        .map(|i| self.splan.columns[*i].0.clone())
                        .collect(),
                });
            }
        }
        Ok(())
    }
}

/// `(rows, hash)` of each range. The first goes alone (it prepares the statement the others
/// share), the rest are sent at once: the connection pipelines them, so the server goes from
/// one chunk to the next without waiting for a round trip.
async fn hash_ranges(
    side: &PgSide,
    plan: &Arc<SidePlan>,
    ranges: &[KeyRange],
) -> Result<Vec<(u64, String)>, VerifyError> {
    let Some(((lo, hi), rest)) = ranges.split_first() else {
        return Ok(Vec::new());
    };
    let first = side.range_hash(plan, lo.as_deref(), hi.as_deref()).await?;
    let mut out = vec![first];
    out.extend(
        futures_util::future::try_join_all(
            rest.iter()
                .map(|(lo, hi)| side.range_hash(plan, lo.as_deref(), hi.as_deref())),
        )
        .await?,
    );
    Ok(out)
}

/// An error unless the rows come in key order.
fn in_order(plan: &SidePlan, rows: &[SideRow]) -> Result<(), VerifyError> {
    match chunk::out_of_order(rows) {
        None => Ok(()),
        Some(i) => Err(VerifyError::KeyOrder {
            db: plan.db.clone(),
            table: plan.table.clone(),
            previous: Key(rows[i - 1].key.clone()).to_string(),
            key: Key(rows[i].key.clone()).to_string(),
        }),
    }
}

/// Re-reads the differing keys until they agree, the source stops changing under them, or
/// the rounds run out; returns those that still differ.
///
/// Each round reads the source rows, then the source position, waits until the sink has
/// applied everything up to that position, and reads the target rows: a key the pipeline had
/// simply not delivered yet now agrees. A key that changed again in the source meanwhile may
/// still differ, so the round repeats; but if the source position did not move from before
/// the source read to after the target read, nothing was in flight and what differs is a
/// difference.
async fn recheck(
    (source, splan): (&Side, &Arc<SidePlan>),
    (target, tplan): (&Side, &Arc<SidePlan>),
    settle: &mut Settle,
    sink: &str,
    mut diffs: Vec<Diff>,
) -> Result<Vec<Diff>, VerifyError> {
    let lookup = |native: &Option<Vec<Native>>, key: &[Value]| match native {
        Some(n) => LookupKey::Native(n.clone()),
        None => LookupKey::Canonical(key.to_vec()),
    };
    for _ in 0..MAX_ROUNDS {
        let before = settle.position().await?;
        let keys = diffs
            .iter()
            .map(|d| lookup(&d.source_native, &d.key))
            .collect();
        let mut src = source.lookup(splan, keys).await?;
        let at = settle.position().await?;
        let delivered = settle.wait(sink, at.as_ref()).await?;
        let keys = diffs
            .iter()
            .map(|d| lookup(&d.target_native, &d.key))
            .collect();
        let mut tgt = target.lookup(tplan, keys).await?;
        let after = settle.position().await?;
        src.sort_by(|x, y| chunk::cmp_key(&x.key, &y.key));
        tgt.sort_by(|x, y| chunk::cmp_key(&x.key, &y.key));
        diffs = merge(&src, &tgt);
        if diffs.is_empty() || !delivered || before == after {
            break;
        }
    }
    Ok(diffs)
}
