//! Renaming streams and columns on their way into one sink (`[sinks.NAME.tables."STREAM"]`).
//!
//! A sink writes each stream into the table named like the stream, under the changes' own
//! column names. For a sink with renames, the runtime's sink task hands the schemas to
//! `Sink::open` through [`Renamer::schemas`] and every batch's entries to `Sink::apply`
//! through [`Renamer::entries`]: the sink sees the target's names only, and behaves exactly
//! as if the source had used them. This is the one place renames happen; no sink knows about
//! them. A sink without renames gets no `Renamer` and its batches pass untouched.
//!
//! The entries are renamed in place, before the batch is shared with the sink, so renaming
//! costs no copy of the rows: per change one map lookup, and per row of a renamed stream one
//! lookup per column.
//!
//! The configuration has already checked what it can see: every renamed stream reaches the
//! sink, no two streams share a target table, no two renamed columns share a target column.
//! Columns come from the source at run time, so the rest is checked here: at open, that every
//! renamed column exists; at open and in every change, that a renamed column does not land on
//! a column that keeps its own name (a column added to the source later could), which would
//! give a target row one column twice.

use std::collections::{BTreeMap, HashMap};

use tidesync_core::{CopyChunk, LogEntry, Row, Seq, TableSchema};

use crate::config::{TableRename, toml_key};

/// Why renaming failed: the source does not match the sink's renames. Definite.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenameError {
    #[error(
        "sinks.{sink}.tables.{key}.columns renames column `{column}`, which table `{stream}` does \
         not have (its columns: {columns})",
        key = toml_key(stream)
    )]
    NoColumn {
        sink: String,
        stream: String,
        column: String,
        columns: String,
    },
    #[error(
        "{at}table `{stream}` has a column `{column}` that keeps its name, but sinks.{sink}.tables.{key}.columns \
         also writes column `{renamed}` to `{column}`; rename `{column}` too, or write `{renamed}` elsewhere",
        key = toml_key(stream),
        at = seq.map_or(String::new(), |s| format!("seq {s}: "))
    )]
    Collision {
        sink: String,
        stream: String,
        /// The column that keeps its name.
        column: String,
        /// The column renamed to `column`.
        renamed: String,
        /// The change it was found in; `None`: in the schema, at open.
        seq: Option<Seq>,
    },
}

/// What becomes of a column name of a renamed stream.
#[derive(Debug)]
enum Column {
    /// Written to this target column.
    To(String),
    /// Keeps its name, which another column is renamed to: a collision (holds that column).
    Taken(String),
}

#[derive(Debug)]
struct StreamRename {
    /// `None`: the stream keeps its name.
    table: Option<String>,
    /// Renamed columns, and the targets of renames that are not renamed themselves.
    columns: HashMap<String, Column>,
    /// Source column -> target column, as configured.
    renamed: BTreeMap<String, String>,
}

/// One sink's renames, applied to what the sink receives.
#[derive(Debug)]
pub struct Renamer {
    sink: String,
    streams: HashMap<String, StreamRename>,
}

impl Renamer {
    /// The renamer of sink `sink` with `renames` (see [`crate::config::SinkConfig::renames`]);
    /// `None` when it renames nothing, so that its batches pass untouched.
    pub fn new(sink: &str, renames: &BTreeMap<String, TableRename>) -> Option<Renamer> {
        if renames.is_empty() {
            return None;
        }
        let streams = renames
            .iter()
            .map(|(stream, rename)| {
                let mut columns: HashMap<String, Column> = rename
                    .columns
                    .iter()
                    .map(|(from, to)| (from.clone(), Column::To(to.clone())))
                    .collect();
                for (from, to) in &rename.columns {
                    columns
                        .entry(to.clone())
                        .or_insert_with(|| Column::Taken(from.clone()));
                }
                let table = (rename.table != *stream).then(|| rename.table.clone());
                (
                    stream.clone(),
                    StreamRename {
                        table,
                        columns,
                        renamed: rename.columns.clone(),
                    },
                )
            })
            .collect();
        Some(Renamer {
            sink: sink.to_owned(),
            streams,
        })
    }

    /// The schemas as the sink is to see them. Streams without renames (including those of
    /// other pipelines this sink serves) are unchanged.
    pub fn schemas(&self, schemas: &[TableSchema]) -> Result<Vec<TableSchema>, RenameError> {
        schemas
            .iter()
            .map(|schema| {
                let mut schema = schema.clone();
                let Some(rename) = self.streams.get(&schema.name) else {
                    return Ok(schema);
                };
                for column in rename.renamed.keys() {
                    if !schema.columns.iter().any(|c| c.name == *column) {
                        let columns: Vec<&str> =
                            schema.columns.iter().map(|c| c.name.as_str()).collect();
                        return Err(RenameError::NoColumn {
                            sink: self.sink.clone(),
                            stream: schema.name.clone(),
                            column: column.clone(),
                            columns: columns.join(", "),
                        });
                    }
                }
                for column in &mut schema.columns {
                    self.column(&schema.name, rename, &mut column.name, None)?;
                }
                for key in &mut schema.key {
                    self.column(&schema.name, rename, key, None)?;
                }
                if let Some(table) = &rename.table {
                    schema.name = table.clone();
                }
                Ok(schema)
            })
            .collect()
    }

    /// Renames the streams and columns of `entries` in place.
    pub fn entries(&self, entries: &mut [LogEntry]) -> Result<(), RenameError> {
        for entry in entries {
            let Some(rename) = self.streams.get(&entry.change.stream) else {
                continue;
            };
            let (change, seq) = (&mut entry.change, Some(entry.seq));
            for row in [change.before.as_mut(), change.after.as_mut()]
                .into_iter()
                .flatten()
            {
                self.row(&change.stream, rename, row, seq)?;
            }
            for column in &mut change.unchanged {
                self.column(&change.stream, rename, column, seq)?;
            }
            if let Some(table) = &rename.table {
                change.stream.clone_from(table);
            }
        }
        Ok(())
    }

    /// Renames the table and columns a direct-copy chunk goes into (its rows stay as they
    /// are: values are in column order).
    pub fn copy_chunk(&self, chunk: &mut CopyChunk) -> Result<(), RenameError> {
        let Some(rename) = self.streams.get(&chunk.stream) else {
            return Ok(());
        };
        for column in &mut chunk.columns {
            self.column(&chunk.stream, rename, column, None)?;
        }
        if let Some(table) = &rename.table {
            chunk.stream.clone_from(table);
        }
        Ok(())
    }

    fn row(
        &self,
        stream: &str,
        rename: &StreamRename,
        row: &mut Row,
        seq: Option<Seq>,
    ) -> Result<(), RenameError> {
        for (column, _) in &mut row.0 {
            self.column(stream, rename, column, seq)?;
        }
        Ok(())
    }

    fn column(
        &self,
        stream: &str,
        rename: &StreamRename,
        column: &mut String,
        seq: Option<Seq>,
    ) -> Result<(), RenameError> {
        match rename.columns.get(column.as_str()) {
            None => Ok(()),
            Some(Column::To(target)) => {
                column.clone_from(target);
                Ok(())
            }
            Some(Column::Taken(renamed)) => Err(RenameError::Collision {
                sink: self.sink.clone(),
                stream: stream.to_owned(),
                column: column.clone(),
                renamed: renamed.clone(),
                seq,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tidesync_core::{Change, ColumnSchema, Dialect, Key, Op, Value};

    use super::*;

    fn renamer(table: &str, columns: &[(&str, &str)]) -> Renamer {
        let renames = BTreeMap::from([(
            "sales.orders".to_owned(),
            TableRename {
                table: table.to_owned(),
                columns: columns
                    .iter()
                    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                    .collect(),
            },
        )]);
        Renamer::new("target", &renames).unwrap()
    }

    fn schema(name: &str, columns: &[&str]) -> TableSchema {
        TableSchema {
            name: name.to_owned(),
            columns: columns
                .iter()
                .map(|c| ColumnSchema {
                    name: (*c).to_owned(),
                    type_name: "text".to_owned(),
                    nullable: true,
                })
                .collect(),
            key: vec![columns[0].to_owned()],
            dialect: Dialect::Postgres,
        }
    }

    fn row(columns: &[&str]) -> Row {
        Row(columns
            .iter()
            .map(|c| ((*c).to_owned(), Value::Text(format!("v-{c}"))))
            .collect())
    }

    fn update(stream: &str, columns: &[&str]) -> LogEntry {
        LogEntry {
            seq: Seq(7),
            change: Change {
                stream: stream.to_owned(),
                op: Op::Update,
                key: Key(vec![Value::Int(1)]),
                before: Some(row(columns)),
                after: Some(row(columns)),
                commit_time_us: 0,
                position: None,
                txn: None,
                unchanged: vec![columns[columns.len() - 1].to_owned()],
            },
        }
    }

    #[test]
    fn no_renames_means_no_renamer() {
        assert!(Renamer::new("target", &BTreeMap::new()).is_none());
    }

    #[test]
    fn schemas_get_the_target_table_columns_and_key() {
        let r = renamer("orders", &[("id", "order_id"), ("cust", "customer_id")]);
        let got = r
            .schemas(&[
                schema("sales.orders", &["id", "cust", "total"]),
                schema("items", &["id", "cust"]),
            ])
            .unwrap();
        assert_eq!(got[0].name, "orders");
        let names: Vec<_> = got[0].columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["order_id", "customer_id", "total"]);
        assert_eq!(got[0].key, ["order_id"]);
        // Another stream is left alone.
        assert_eq!(got[1], schema("items", &["id", "cust"]));
    }

    #[test]
    fn a_renamed_column_the_source_lacks_fails_at_open() {
        let r = renamer("orders", &[("cust", "customer_id")]);
        let err = r
            .schemas(&[schema("sales.orders", &["id", "customer", "total"])])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sinks.target.tables.\"sales.orders\".columns renames column `cust`, which table \
             `sales.orders` does not have (its columns: id, customer, total)"
        );
    }

    #[test]
    fn a_rename_onto_a_column_that_keeps_its_name_fails() {
        let r = renamer("orders", &[("cust", "total")]);
        let err = r
            .schemas(&[schema("sales.orders", &["id", "cust", "total"])])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "table `sales.orders` has a column `total` that keeps its name, but \
             sinks.target.tables.\"sales.orders\".columns also writes column `cust` to `total`; \
             rename `total` too, or write `cust` elsewhere"
        );
        // The same in a change (a column added to the source after the sink opened).
        let mut entries = vec![update("sales.orders", &["id", "total"])];
        let err = r.entries(&mut entries).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("seq 7: table `sales.orders` has a column `total`")
        );
    }

    #[test]
    fn swapped_columns_are_no_collision() {
        let r = renamer("sales.orders", &[("a", "b"), ("b", "a")]);
        let mut entries = vec![update("sales.orders", &["id", "a", "b"])];
        r.entries(&mut entries).unwrap();
        let after = entries[0].change.after.as_ref().unwrap();
        assert_eq!(after.columns().collect::<Vec<_>>(), ["id", "b", "a"]);
        assert_eq!(after.get("b"), Some(&Value::Text("v-a".into())));
        // The stream keeps its name.
        assert_eq!(entries[0].change.stream, "sales.orders");
    }

    #[test]
    fn entries_get_the_target_table_and_columns_everywhere() {
        let r = renamer("orders", &[("cust", "customer_id")]);
        let mut entries = vec![
            update("sales.orders", &["id", "total", "cust"]),
            update("items", &["id", "cust"]),
        ];
        let untouched = entries[1].clone();
        r.entries(&mut entries).unwrap();
        let change = &entries[0].change;
        assert_eq!(change.stream, "orders");
        for row in [change.before.as_ref(), change.after.as_ref()] {
            let row = row.unwrap();
            assert_eq!(
                row.columns().collect::<Vec<_>>(),
                ["id", "total", "customer_id"]
            );
            assert_eq!(row.get("customer_id"), Some(&Value::Text("v-cust".into())));
        }
        assert_eq!(change.unchanged, ["customer_id"]);
        assert_eq!(entries[1], untouched);
    }
}
