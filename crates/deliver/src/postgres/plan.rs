//! Grouping a batch's entries into statements, keeping seq order.
//!
//! Consecutive upserts of one table with the same column list become one multi-row
//! `INSERT .. ON CONFLICT`, consecutive deletes of one table one `DELETE .. IN (..)`. A patch
//! (an `UPDATE` of one row, which may change its key) and a truncate are steps of their own
//! that end the runs around them, so nothing is reordered across them. Only
//! neighbours are grouped, so the statements run in seq order and every key sees its changes
//! in order. A group ends before a key it already holds: PostgreSQL refuses to let one
//! `INSERT .. ON CONFLICT DO UPDATE` touch a row twice. Keys are compared by a hash of their
//! text form: two different keys with the same hash merely end a group early, which is always
//! correct. Our key comparison is textual, so
//! keys the server sees as equal but we do not (e.g. `1` and `1.0`, or a case-insensitive
//! collation) can still meet in one statement; the sink then replays the batch one row per
//! statement, which is always correct.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};

use tidesync_core::{Key, LogEntry, Op, Row, Value};

use super::bind::text_of;

/// At most this many parameters in one statement: the Bind message counts them in 16 bits,
/// which the server reads as unsigned.
pub(crate) const MAX_PARAMS: usize = 65_535;

#[derive(Debug)]
pub(crate) enum Action<'b> {
    /// Insert or update rows with these columns (in this order).
    Upsert {
        columns: Vec<&'b str>,
    },
    Delete,
    /// Remove every row of the table; always a step of its own.
    Truncate,
    /// Set these columns (in this order) on the row with the entry's key, if there is one;
    /// always a step of one entry (see [`tidesync_core::Op::Patch`]).
    Patch {
        columns: Vec<&'b str>,
    },
}

/// One statement: an action on one table for one or more entries.
#[derive(Debug)]
pub(crate) struct Step<'b> {
    pub(crate) stream: &'b str,
    pub(crate) action: Action<'b>,
    pub(crate) entries: Vec<&'b LogEntry>,
}

/// The row an entry upserts, or `None` if it deletes (or, for a truncate or a patch, neither).
pub(crate) fn upsert_row(entry: &LogEntry) -> Option<&Row> {
    match (entry.change.op, &entry.change.after) {
        (Op::Delete | Op::Truncate | Op::Patch, _) | (_, None) => None,
        (_, Some(after)) => Some(after),
    }
}

/// Splits `entries` (in seq order) into steps of at most `max_rows` entries each.
pub(crate) fn plan<'b>(
    entries: impl IntoIterator<Item = &'b LogEntry>,
    max_rows: usize,
    key_len: impl Fn(&str) -> usize,
) -> Vec<Step<'b>> {
    let mut steps: Vec<Step<'b>> = Vec::new();
    let mut keys: HashSet<u64> = HashSet::new();
    let mut text = String::new();
    for entry in entries {
        let stream = entry.change.stream.as_str();
        if entry.change.op == Op::Truncate {
            keys.clear();
            steps.push(Step {
                stream,
                action: Action::Truncate,
                entries: vec![entry],
            });
            continue;
        }
        if entry.change.op == Op::Patch {
            // Its own step, ending the runs: the patch may touch a key of the run before it
            // (its old key) and of the run after it (its new key). A patch of no column sets
            // nothing and needs no statement.
            let columns: Vec<&str> = entry.change.after.iter().flat_map(Row::columns).collect();
            if !columns.is_empty() {
                keys.clear();
                steps.push(Step {
                    stream,
                    action: Action::Patch { columns },
                    entries: vec![entry],
                });
            }
            continue;
        }
        let row = upsert_row(entry);
        let fingerprint = fingerprint(&entry.change.key, &mut text);
        let joins = steps.last().is_some_and(|step| {
            let width = match &step.action {
                Action::Upsert { columns } => columns.len(),
                Action::Delete => key_len(stream),
                Action::Truncate | Action::Patch { .. } => return false,
            };
            let room = step.entries.len() < max_rows.min(MAX_PARAMS / width.max(1));
            // Re-read rows go in steps of their own (applied only where they differ).
            let reads = |e: &LogEntry| e.change.op == Op::Read;
            let same = step.stream == stream
                && step
                    .entries
                    .first()
                    .is_none_or(|first| reads(first) == reads(entry))
                && match (&step.action, row) {
                    (Action::Upsert { columns }, Some(row)) => {
                        columns.iter().copied().eq(row.columns()) && !keys.contains(&fingerprint)
                    }
                    (Action::Delete, None) => true,
                    _ => false,
                };
            room && same
        });
        if !joins {
            keys.clear();
            steps.push(Step {
                stream,
                action: match row {
                    Some(row) => Action::Upsert {
                        columns: row.columns().collect(),
                    },
                    None => Action::Delete,
                },
                entries: Vec::new(),
            });
        }
        keys.insert(fingerprint);
        if let Some(step) = steps.last_mut() {
            step.entries.push(entry);
        }
    }
    steps
}

/// A hash of the key as the server would read it, for spotting a key twice in one statement
/// (`text`: a buffer to reuse).
fn fingerprint(key: &Key, text: &mut String) -> u64 {
    text.clear();
    for v in &key.0 {
        match v {
            // The common case, without text_of's allocation.
            Value::Int(i) => {
                let _ = write!(text, "{i}");
            }
            _ => match text_of(v) {
                Ok(t) => text.push_str(&t),
                Err(_) => text.push_str(&v.to_string()),
            },
        }
        text.push('\u{1f}');
    }
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}
