//! Row-by-row comparison of a table in two SQLite databases, in key order with bounded memory
//! (both sides are read as ordered streams and merged). Used by `tidesync demo` and the
//! crash tests; `tidesync verify` (chunked hashes, every database kind) builds on the same
//! idea.

use std::cmp::Ordering;
use std::path::Path;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags};
use tidesync_core::sql::quote_ident;

/// The outcome of comparing one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDiff {
    pub table: String,
    /// Rows in the source.
    pub source_rows: u64,
    /// Rows in the target.
    pub target_rows: u64,
    /// Rows in the source but not the target.
    pub missing: u64,
    /// Rows in the target but not the source.
    pub extra: u64,
    /// Rows present on both sides with different values.
    pub different: u64,
    /// The first differences, e.g. `missing (42)`, `different ("north", 7)`.
    pub examples: Vec<String>,
}

impl TableDiff {
    pub fn is_equal(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }
}

fn render(values: &[SqlValue]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|v| match v {
            SqlValue::Null => "NULL".into(),
            SqlValue::Integer(i) => i.to_string(),
            SqlValue::Real(f) => format!("{f:?}"),
            SqlValue::Text(t) => format!("{t:?}"),
            SqlValue::Blob(b) => format!(
                "x'{}'",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        })
        .collect();
    format!("({})", parts.join(", "))
}

/// SQLite's own ordering of values (NULL < numbers < text < blob), so the merge agrees with
/// `ORDER BY`.
fn cmp_value(a: &SqlValue, b: &SqlValue) -> Ordering {
    use SqlValue::*;
    let class = |v: &SqlValue| match v {
        Null => 0,
        Integer(_) | Real(_) => 1,
        Text(_) => 2,
        Blob(_) => 3,
    };
    match (a, b) {
        (Integer(x), Integer(y)) => x.cmp(y),
        (Integer(x), Real(y)) => (*x as f64).total_cmp(y),
        (Real(x), Integer(y)) => x.total_cmp(&(*y as f64)),
        (Real(x), Real(y)) => x.total_cmp(y),
        (Text(x), Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Blob(x), Blob(y)) => x.cmp(y),
        _ => class(a).cmp(&class(b)),
    }
}

fn same(a: &SqlValue, b: &SqlValue) -> bool {
    match (a, b) {
        (SqlValue::Real(x), SqlValue::Real(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// Compares `table` in the databases at `source` and `target` row by row, ordered by
/// `key` (the primary-key columns). At most `max_listed` differing keys are listed; the
/// counts are always exact.
pub fn compare_sqlite_table(
    source: &Path,
    target: &Path,
    table: &str,
    key: &[String],
    max_listed: usize,
) -> rusqlite::Result<TableDiff> {
    let open = |p: &Path| Connection::open_with_flags(p, OpenFlags::SQLITE_OPEN_READ_ONLY);
    let (a, b) = (open(source)?, open(target)?);
    let columns: Vec<String> = {
        let mut st = a.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
        st.query_map([table], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let select = format!(
        "SELECT {} FROM {} ORDER BY {}",
        columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", "),
        quote_ident(table),
        key.iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let key_idx: Vec<usize> = key
        .iter()
        .filter_map(|k| columns.iter().position(|c| c == k))
        .collect();
    let (mut sa, mut sb) = (a.prepare(&select)?, b.prepare(&select)?);
    let n = columns.len();
    let read = |r: &rusqlite::Row<'_>| {
        (0..n)
            .map(|i| r.get::<_, SqlValue>(i))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut ra = sa.query([])?;
    let mut rb = sb.query([])?;
    let mut diff = TableDiff {
        table: table.to_owned(),
        ..TableDiff::default()
    };
    let mut next_a = ra.next()?.map(read).transpose()?;
    let mut next_b = rb.next()?.map(read).transpose()?;
    let key_of = |row: &[SqlValue]| key_idx.iter().map(|i| row[*i].clone()).collect::<Vec<_>>();
    let push = |list: &mut Vec<String>, what: &str, row: &[SqlValue]| {
        if list.len() < max_listed {
            list.push(format!("{what} {}", render(&key_of(row))));
        }
    };
    loop {
        let order = match (&next_a, &next_b) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => key_idx
                .iter()
                .map(|i| cmp_value(&x[*i], &y[*i]))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal),
        };
        match order {
            Ordering::Less => {
                if let Some(row) = &next_a {
                    push(&mut diff.examples, "missing", row);
                }
                diff.missing += 1;
                diff.source_rows += 1;
                next_a = ra.next()?.map(read).transpose()?;
            }
            Ordering::Greater => {
                if let Some(row) = &next_b {
                    push(&mut diff.examples, "extra", row);
                }
                diff.extra += 1;
                diff.target_rows += 1;
                next_b = rb.next()?.map(read).transpose()?;
            }
            Ordering::Equal => {
                if let (Some(x), Some(y)) = (&next_a, &next_b)
                    && !x.iter().zip(y).all(|(p, q)| same(p, q))
                {
                    push(&mut diff.examples, "different", x);
                    diff.different += 1;
                }
                diff.source_rows += 1;
                diff.target_rows += 1;
                next_a = ra.next()?.map(read).transpose()?;
                next_b = rb.next()?.map(read).transpose()?;
            }
        }
    }
    Ok(diff)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn differences_are_counted_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        for (path, rows) in [
            (&a, "(1,'x'),(2,'y'),(3,'z')"),
            (&b, "(2,'y'),(3,'Z'),(4,'w')"),
        ] {
            let c = Connection::open(path).unwrap();
            c.execute_batch(&format!(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES {rows};"
            ))
            .unwrap();
        }
        let d = compare_sqlite_table(&a, &b, "t", &["id".into()], 10).unwrap();
        assert_eq!((d.missing, d.extra, d.different), (1, 1, 1));
        assert_eq!(d.examples, ["missing (1)", "different (3)", "extra (4)"]);
        assert_eq!((d.source_rows, d.target_rows), (3, 3));
        assert!(!d.is_equal());
        assert!(
            compare_sqlite_table(&a, &a, "t", &["id".into()], 0)
                .unwrap()
                .is_equal()
        );
        // The cap limits the listing, never the verdict.
        assert!(
            !compare_sqlite_table(&a, &b, "t", &["id".into()], 0)
                .unwrap()
                .is_equal()
        );
    }
}
