//! The PostgreSQL sink against a real PostgreSQL. Every test starts its own server.

mod apply;
mod direct;
mod from_mysql;
mod patch;
mod restart;
mod setup;
mod types;

use std::sync::Arc;

use tidesync_core::{
    Batch, BatchKind, Change, ColumnSchema, Key, LogEntry, Op, Row, Seq, Sink, TableSchema, Value,
};
use tidesync_deliver::postgres::PostgresSink;
use tidesync_testkit::Postgres;

pub const DB: &str = "target";

/// A server with an empty database [`DB`].
pub fn server() -> Postgres {
    let pg = Postgres::start();
    pg.create_database(DB).unwrap();
    pg
}

pub fn column(name: &str, type_name: &str, nullable: bool) -> ColumnSchema {
    ColumnSchema {
        name: name.into(),
        type_name: type_name.into(),
        nullable,
    }
}

/// `items (id INTEGER key, sku TEXT NOT NULL, price <untyped>)`, as a SQLite source declares it.
pub fn items_schema() -> Vec<TableSchema> {
    vec![TableSchema {
        name: "items".into(),
        columns: vec![
            column("id", "INTEGER", false),
            column("sku", "TEXT", false),
            column("price", "", true),
        ],
        key: vec!["id".into()],
        dialect: Default::default(),
    }]
}

/// An upsert of `items` row `id`.
pub fn upsert(seq: u64, id: i64, sku: Option<&str>, price: Value) -> LogEntry {
    let sku = sku.map_or(Value::Null, Value::from);
    entry(
        seq,
        "items",
        Op::Insert,
        Key(vec![Value::Int(id)]),
        Some(Row(vec![
            ("id".into(), Value::Int(id)),
            ("sku".into(), sku),
            ("price".into(), price),
        ])),
    )
}

/// A delete of `items` row `id`.
pub fn delete(seq: u64, id: i64) -> LogEntry {
    entry(seq, "items", Op::Delete, Key(vec![Value::Int(id)]), None)
}

pub fn entry(seq: u64, stream: &str, op: Op, key: Key, after: Option<Row>) -> LogEntry {
    LogEntry {
        seq: Seq(seq),
        change: Change {
            stream: stream.into(),
            op,
            key,
            before: None,
            after,
            commit_time_us: 0,
            position: None,
            txn: None,
            unchanged: Vec::new(),
        },
    }
}

pub fn batch(entries: Vec<LogEntry>) -> Arc<Batch> {
    Arc::new(Batch {
        pipeline: "p".into(),
        kind: BatchKind::Incremental,
        first_seq: entries.first().map_or(Seq(0), |e| e.seq),
        last_seq: entries.last().map_or(Seq(0), |e| e.seq),
        entries,
        position: None,
    })
}

/// A sink for pipeline `p`, sink `replica`, opened on `schemas`.
pub async fn open_sink(
    pg: &Postgres,
    schemas: Vec<TableSchema>,
    create_tables: bool,
) -> (PostgresSink, Option<Seq>) {
    let mut sink = PostgresSink::new(&pg.url(DB), "p", "replica", create_tables);
    let applied = sink.open(schemas).await.unwrap();
    (sink, applied)
}

/// `items` as `id|sku|price` lines.
pub fn items(pg: &Postgres) -> String {
    pg.psql(DB, "SELECT id, sku, price FROM items ORDER BY id")
        .unwrap()
}

/// The seq recorded for pipeline `p`, sink `replica`.
pub fn applied_seq(pg: &Postgres) -> String {
    pg.psql(
        DB,
        "SELECT seq FROM _tidesync_applied WHERE pipeline = 'p' AND sink = 'replica'",
    )
    .unwrap()
}
