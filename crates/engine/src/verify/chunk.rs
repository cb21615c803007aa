//! Rows, chunk hashes and the row-by-row merge of one chunk: pure logic, no I/O.
//!
//! Both sides are read in key order, in pages of at most `chunk_rows` rows. A page of each side
//! starts after the same key; the chunk they can be compared on ends at the smaller of their
//! last keys ([`cut`]): below it each side has shown every row it has. If the two parts hash
//! the same they are equal; otherwise they are merged row by row ([`merge`]), which names each
//! key that is missing, extra or different. At least one side's page is used up whole by every
//! cut, so the walk always advances, and neither side ever holds more than one page.

use std::cmp::Ordering;
use std::hash::{DefaultHasher, Hasher};

use rusqlite::types::Value as SqlValue;
use serde::Serialize;
use tidesync_core::Value;
use tidesync_core::codec::binary::encode_value;

use super::canon::cmp_value;

/// One key cell in the form its own database reads back exactly, for the next page's bound.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Native {
    Sqlite(SqlValue),
    /// PostgreSQL's text output of the value (keys are read as text and bound as text cast to
    /// the column type).
    Postgres(Option<String>),
    /// The value as MySQL sent it (bound back as it is).
    Mysql(mysql_async::Value),
}

/// A row read from one side: its key in that side's own form, and its canonical values.
#[derive(Debug, Clone)]
pub(crate) struct SideRow {
    pub(crate) native: Vec<Native>,
    /// Canonical key values, in key order.
    pub(crate) key: Vec<Value>,
    /// Canonical values of the compared columns, in the source's column order.
    pub(crate) values: Vec<Value>,
    /// Hash of the encoded canonical values.
    pub(crate) hash: u64,
}

impl SideRow {
    pub(crate) fn new(
        native: Vec<Native>,
        key: Vec<Value>,
        values: Vec<Value>,
        buf: &mut Vec<u8>,
    ) -> Self {
        let hash = row_hash(&values, buf);
        SideRow {
            native,
            key,
            values,
            hash,
        }
    }
}

/// A hash of the values' binary encoding (`tidesync_core::codec::binary`: tagged, so `1`,
/// `1.0` and `"1"` differ; floats by their bits). The hasher is std's SipHash with fixed keys:
/// both sides are hashed in this process, so it only has to be deterministic within it, and
/// it costs no dependency. 64 bits: two differing chunks collide with probability 2^-64.
pub(crate) fn row_hash(values: &[Value], buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    for v in values {
        encode_value(buf, v);
    }
    let mut h = DefaultHasher::new();
    h.write(buf);
    h.finish()
}

/// The hash of a run of rows: their row hashes in key order.
pub(crate) fn chunk_hash(rows: &[SideRow]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_usize(rows.len());
    for r in rows {
        h.write_u64(r.hash);
    }
    h.finish()
}

/// Key order (see [`cmp_value`]), column by column.
pub(crate) fn cmp_key(a: &[Value], b: &[Value]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| cmp_value(x, y))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

/// The first row whose key is not above the previous one's, if any: the database returned
/// rows in an order verify does not walk in (e.g. text keys under a collation other than
/// byte order), which would make every later comparison wrong.
pub(crate) fn out_of_order(rows: &[SideRow]) -> Option<usize> {
    rows.windows(2)
        .position(|w| cmp_key(&w[0].key, &w[1].key) != Ordering::Less)
        .map(|i| i + 1)
}

/// Where the chunk made of two pages ends: `None` when both sides are used up (everything
/// they returned belongs to it), else the smaller last key of a full page. A page that is
/// not full has shown everything its side holds up to the range's end.
pub(crate) fn cut<'a>(
    a: &'a [SideRow],
    a_full: bool,
    b: &'a [SideRow],
    b_full: bool,
) -> Option<&'a [Value]> {
    let last = |rows: &'a [SideRow]| rows.last().map(|r| r.key.as_slice());
    match (a_full, b_full) {
        (false, false) => None,
        (true, false) => last(a),
        (false, true) => last(b),
        (true, true) => match (last(a), last(b)) {
            (Some(x), Some(y)) => Some(if cmp_key(x, y) == Ordering::Greater {
                y
            } else {
                x
            }),
            (x, y) => x.or(y),
        },
    }
}

/// How many of `rows` (in key order) are at or below `cut` (all of them for `None`).
pub(crate) fn count_upto(rows: &[SideRow], cut: Option<&[Value]>) -> usize {
    match cut {
        None => rows.len(),
        Some(c) => rows.partition_point(|r| cmp_key(&r.key, c) != Ordering::Greater),
    }
}

/// What is wrong with one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffKind {
    /// In the source, not in the target.
    Missing,
    /// In the target, not in the source.
    Extra,
    /// On both sides, with different values.
    Different,
}

impl DiffKind {
    pub fn name(self) -> &'static str {
        match self {
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Different => "different",
        }
    }
}

/// One differing key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Diff {
    pub(crate) kind: DiffKind,
    pub(crate) key: Vec<Value>,
    /// For `Different`: the indexes of the compared columns whose values differ.
    pub(crate) columns: Vec<usize>,
    /// The key in each side's own form, where that side has the row (for re-reading it).
    pub(crate) source_native: Option<Vec<Native>>,
    pub(crate) target_native: Option<Vec<Native>>,
}

/// Merges two runs of rows in key order and names every key that differs.
pub(crate) fn merge(source: &[SideRow], target: &[SideRow]) -> Vec<Diff> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < source.len() || j < target.len() {
        let order = match (source.get(i), target.get(j)) {
            (Some(s), Some(t)) => cmp_key(&s.key, &t.key),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                out.push(Diff {
                    kind: DiffKind::Missing,
                    key: source[i].key.clone(),
                    columns: Vec::new(),
                    source_native: Some(source[i].native.clone()),
                    target_native: None,
                });
                i += 1;
            }
            Ordering::Greater => {
                out.push(Diff {
                    kind: DiffKind::Extra,
                    key: target[j].key.clone(),
                    columns: Vec::new(),
                    source_native: None,
                    target_native: Some(target[j].native.clone()),
                });
                j += 1;
            }
            Ordering::Equal => {
                let (s, t) = (&source[i], &target[j]);
                let columns: Vec<usize> = s
                    .values
                    .iter()
                    .zip(&t.values)
                    .enumerate()
                    .filter(|(_, (x, y))| x != y)
                    .map(|(c, _)| c)
                    .collect();
                if !columns.is_empty() || s.values.len() != t.values.len() {
                    out.push(Diff {
                        kind: DiffKind::Different,
                        key: s.key.clone(),
                        columns,
                        source_native: Some(s.native.clone()),
                        target_native: Some(t.native.clone()),
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn row(id: i64, v: &str) -> SideRow {
        let mut buf = Vec::new();
        SideRow::new(
            vec![Native::Sqlite(SqlValue::Integer(id))],
            vec![Value::Int(id)],
            vec![Value::Int(id), Value::Text(v.into())],
            &mut buf,
        )
    }

    fn rows(ids: &[(i64, &str)]) -> Vec<SideRow> {
        ids.iter().map(|(i, v)| row(*i, v)).collect()
    }

    #[test]
    fn equal_runs_hash_equal_and_merge_to_nothing() {
        let a = rows(&[(1, "a"), (2, "b")]);
        let b = rows(&[(1, "a"), (2, "b")]);
        assert_eq!(chunk_hash(&a), chunk_hash(&b));
        assert!(merge(&a, &b).is_empty());
    }

    #[test]
    fn one_changed_value_changes_the_hash() {
        let a = rows(&[(1, "a"), (2, "b")]);
        let b = rows(&[(1, "a"), (2, "B")]);
        assert_ne!(chunk_hash(&a), chunk_hash(&b));
    }

    #[test]
    fn merge_names_missing_extra_and_different_keys_with_columns() {
        let source = rows(&[(1, "a"), (2, "b"), (4, "d")]);
        let target = rows(&[(2, "B"), (3, "c"), (4, "d")]);
        let diffs = merge(&source, &target);
        let got: Vec<(DiffKind, Vec<Value>, Vec<usize>)> = diffs
            .into_iter()
            .map(|d| (d.kind, d.key, d.columns))
            .collect();
        assert_eq!(
            got,
            vec![
                (DiffKind::Missing, vec![Value::Int(1)], vec![]),
                (DiffKind::Different, vec![Value::Int(2)], vec![1]),
                (DiffKind::Extra, vec![Value::Int(3)], vec![]),
            ]
        );
    }

    #[test]
    fn cut_is_the_smaller_last_key_of_full_pages() {
        let a = rows(&[(1, ""), (5, "")]);
        let b = rows(&[(1, ""), (3, "")]);
        assert_eq!(cut(&a, true, &b, true), Some(&[Value::Int(3)][..]));
        assert_eq!(cut(&a, true, &b, false), Some(&[Value::Int(5)][..]));
        assert_eq!(cut(&a, false, &b, true), Some(&[Value::Int(3)][..]));
        assert_eq!(cut(&a, false, &b, false), None);
        // A full page against an empty side still advances.
        assert_eq!(cut(&a, true, &[], false), Some(&[Value::Int(5)][..]));
        assert_eq!(count_upto(&a, Some(&[Value::Int(3)])), 1);
        assert_eq!(count_upto(&a, Some(&[Value::Int(5)])), 2);
        assert_eq!(count_upto(&a, None), 2);
    }

    #[test]
    fn out_of_order_rows_are_found() {
        assert_eq!(out_of_order(&rows(&[(1, ""), (2, ""), (3, "")])), None);
        assert_eq!(out_of_order(&rows(&[(1, ""), (3, ""), (2, "")])), Some(2));
        assert_eq!(out_of_order(&rows(&[(1, ""), (1, "")])), Some(1));
    }

    #[test]
    fn key_order_follows_sqlite_classes_and_byte_order() {
        use Value::*;
        let ordered = [
            vec![Null],
            vec![Int(-3)],
            vec![Float(-2.5)],
            vec![Int(2)],
            vec![Float(2.5)],
            vec![Text("B".into())],
            vec![Text("a".into())],
            vec![Text("é".into())],
            vec![Bytes(vec![0])],
        ];
        for w in ordered.windows(2) {
            assert_eq!(
                cmp_key(&w[0], &w[1]),
                Ordering::Less,
                "{:?} < {:?}",
                w[0],
                w[1]
            );
        }
        assert_eq!(
            cmp_key(&[Int(1), Text("b".into())], &[Int(1), Text("a".into())]),
            Ordering::Greater
        );
    }
}
