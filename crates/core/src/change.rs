//! What flows through a pipeline: [`Row`], [`Key`], [`Change`], [`LogEntry`], [`Batch`].

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Position, Value};

/// A sequence number assigned by the log: strictly increasing per pipeline, starting at 1.
/// Every cursor is a `Seq`; `Seq(0)` means "nothing yet".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);

    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An ordered set of named values. Column order is the source's and is kept everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Row(pub Vec<(String, Value)>);

impl Row {
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.iter().find(|(c, _)| c == column).map(|(_, v)| v)
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(c, _)| c.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values of `key_columns`, in that order; `None` if one is missing.
    pub fn key(&self, key_columns: &[String]) -> Option<Key> {
        key_columns
            .iter()
            .map(|c| self.get(c).cloned())
            .collect::<Option<Vec<_>>>()
            .map(Key)
    }
}

/// A row is a JSON object whose key order is the column order.
impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (c, v) in &self.0 {
            map.serialize_entry(c, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Row, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a row: an object of column -> value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                let mut columns: Vec<(String, Value)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((c, v)) = map.next_entry::<String, Value>()? {
                    if columns.iter().any(|(seen, _)| *seen == c) {
                        return Err(serde::de::Error::custom(format!(
                            "column `{c}` appears twice in one row"
                        )));
                    }
                    columns.push((c, v));
                }
                Ok(Row(columns))
            }
        }
        d.deserialize_map(RowVisitor)
    }
}

/// The primary-key values of a row, in key-column order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(pub Vec<Value>);

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{v}")?;
        }
        f.write_str(")")
    }
}

/// The kind of a change. `Read` is a row of a full snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Read,
    /// Every row of the stream was removed (PostgreSQL `TRUNCATE`). `key` is empty and there
    /// are no rows.
    Truncate,
    /// Sets the columns `after` holds on the existing row whose key is `key`; columns `after`
    /// does not hold keep their values; when the target has no row with that key, nothing
    /// happens. `after` may hold new values of the key columns (the row's key then changes).
    /// Made by the log when a change's unchanged values cannot be filled (see
    /// [`Change::unchanged`]); `unchanged` is empty on a patch.
    ///
    /// Why not an upsert: the log has no complete row for the key (e.g. the target got its
    /// rows from a copy that bypassed the log), so a sink must keep the values it has; an
    /// insert would write nulls or fail a `NOT NULL` check.
    Patch,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Read => "read",
            Op::Truncate => "truncate",
            Op::Patch => "patch",
        }
    }
}

/// One captured change of one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// The table or business type.
    pub stream: String,
    pub op: Op,
    /// The row's key (for a delete: the deleted row's key). An update that changes key
    /// columns is captured as a delete of the old key followed by an insert of the new one, so
    /// a captured change never moves a row between keys; only a [`Op::Patch`] the log made of
    /// such a pair does (`key` is then the old key, `after` holds the new key's values).
    pub key: Key,
    /// The row before the change, when the source knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Row>,
    /// The row after the change; `None` for deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Row>,
    /// When the source committed the change: microseconds since the epoch, UTC.
    pub commit_time_us: i64,
    /// Where in the source this change was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// The source transaction, when the source has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    /// Columns of `after` whose values the source did not send because the change left them
    /// as they were (PostgreSQL's unchanged TOASTed values); `after` holds a null for each.
    /// The log fills them from its current state before anything reads the change, so no
    /// entry a sink sees has any; when its current state has no row to fill them from, it
    /// logs the change as an [`Op::Patch`] of the columns that were sent instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<String>,
}

impl Change {
    /// This change as an [`Op::Patch`] of the row whose key is `key`: its `after` without the
    /// columns it left unchanged (their values are not known, and the target keeps its own).
    /// For a key update, `self` is the insert of the new key and `key` the old one.
    pub fn as_patch(&self, key: Key, before: Option<Row>) -> Change {
        let mut patch = self.clone();
        patch.op = Op::Patch;
        patch.key = key;
        patch.before = before;
        if let Some(after) = patch.after.as_mut() {
            after
                .0
                .retain(|(column, _)| !self.unchanged.contains(column));
        }
        patch.unchanged.clear();
        patch
    }
}

/// A change with the sequence number the log gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    pub seq: Seq,
    pub change: Change,
}

/// Whether a batch carries a full copy of its streams or changes since a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BatchKind {
    Full,
    Incremental,
}

/// The unit between stages and on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub pipeline: String,
    pub kind: BatchKind,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub entries: Vec<LogEntry>,
    /// The source position after this batch, when it was streamed without the log (direct
    /// streaming): a sink that [records positions](crate::Sink::records_positions) writes it
    /// with the applied seq, in the batch's transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

impl Batch {
    /// Checks the invariants a receiver relies on: entries in strictly increasing seq order,
    /// inside `first_seq..=last_seq`.
    pub fn validate(&self) -> Result<(), String> {
        if self.first_seq > self.last_seq {
            return Err(format!(
                "first_seq {} is after last_seq {}",
                self.first_seq, self.last_seq
            ));
        }
        let mut previous: Option<Seq> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if e.seq < self.first_seq || e.seq > self.last_seq {
                return Err(format!(
                    "entry {i} has seq {} outside {}..={}",
                    e.seq, self.first_seq, self.last_seq
                ));
            }
            if previous.is_some_and(|p| e.seq <= p) {
                return Err(format!("entry {i} has seq {} out of order", e.seq));
            }
            previous = Some(e.seq);
        }
        Ok(())
    }
}
