//! One side of a comparison: a connected database, its catalog, and how the compared columns
//! of a table are read from it and turned into canonical rows.

use std::sync::Arc;

use tidesync_core::Value;

use super::canon::{Class, Oracle, canon};
use super::chunk::{Native, SideRow};
use super::mysql::MysqlSide;
use super::postgres::PgSide;
use super::sqlite::SqliteSide;
use super::{Endpoint, VerifyError};

/// Whether a side is the pipeline's source or one of its targets: it decides how a table
/// name resolves (see [`Side::table_sql`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Source,
    Target,
}

/// A column's type as its database declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ColType {
    /// The declared type (decides the affinity).
    Sqlite { declared: String },
    Postgres {
        /// The base type's oid (a domain's underlying type).
        type_oid: u32,
        typmod: i32,
        /// `format_type`: usable in SQL (`CAST(.. AS numeric(12,2))`) and compared between
        /// two PostgreSQL sides.
        format: String,
        /// Whether the column's collation orders text by bytes (`C`/`POSIX`, or not
        /// collatable). Key columns that do not are compared `COLLATE "C"`.
        byte_order: bool,
    },
    /// A MySQL/MariaDB column: its `DATA_TYPE` and the class its values compare in.
    Mysql { data_type: String, class: Class },
}

/// A column from the catalog.
#[derive(Debug, Clone)]
pub(crate) struct CatalogColumn {
    pub(crate) name: String,
    pub(crate) ty: ColType,
    /// Computed by the database (PostgreSQL `GENERATED`): not replicated, not compared.
    pub(crate) generated: bool,
}

/// A table as its catalog describes it.
#[derive(Debug, Clone)]
pub(crate) struct TableShape {
    pub(crate) columns: Vec<CatalogColumn>,
    /// The primary key (or replica identity), in key order; `None` without one.
    pub(crate) key: Option<Vec<String>>,
}

/// How one side reads a table's compared columns.
#[derive(Debug)]
pub(crate) struct SidePlan {
    /// The database, for messages.
    pub(crate) db: String,
    /// The table as configured, for messages.
    pub(crate) table: String,
    /// The table in SQL, quoted.
    pub(crate) table_sql: String,
    /// The compared columns, in the source's order, with this side's types.
    pub(crate) columns: Vec<(String, ColType)>,
    /// Indexes into `columns` of the key, in key order.
    pub(crate) key: Vec<usize>,
    /// Per column, the class its values are canonicalized for; `None` where this side's
    /// values already are canonical (the target's own SQLite values, or a SQLite source
    /// column with the target column's affinity).
    pub(crate) conv: Vec<Option<Class>>,
}

impl SidePlan {
    /// A canonical row from this side's raw values (in `columns` order).
    pub(crate) fn row(
        &self,
        raw: Vec<Value>,
        native: Vec<Native>,
        oracle: &mut Oracle,
        buf: &mut Vec<u8>,
    ) -> Result<SideRow, VerifyError> {
        let mut values = Vec::with_capacity(raw.len());
        for (v, conv) in raw.into_iter().zip(&self.conv) {
            values.push(match conv {
                None => v,
                Some(class) => canon(*class, v, oracle).map_err(|source| VerifyError::Sqlite {
                    db: self.db.clone(),
                    context: format!(
                        "table `{}`: applying a SQLite column affinity to a value",
                        self.table
                    ),
                    source,
                })?,
            });
        }
        let key = self.key.iter().map(|i| values[*i].clone()).collect();
        Ok(SideRow::new(native, key, values, buf))
    }
}

/// A key to look up on one side: in the side's own form when a row of that side named it,
/// else the canonical values (converted to the side's form for the query).
#[derive(Debug, Clone)]
pub(crate) enum LookupKey {
    Native(Vec<Native>),
    Canonical(Vec<Value>),
}

/// A connected database.
#[derive(Debug)]
pub(crate) enum Side {
    Sqlite(SqliteSide),
    Postgres(Box<PgSide>),
    Mysql(Box<MysqlSide>),
}

impl Side {
    pub(crate) async fn connect(endpoint: &Endpoint) -> Result<Side, VerifyError> {
        Ok(match endpoint {
            Endpoint::Sqlite { path } => Side::Sqlite(SqliteSide::open(path).await?),
            Endpoint::Postgres { url } => Side::Postgres(Box::new(PgSide::connect(url).await?)),
            Endpoint::Mysql { url } => Side::Mysql(Box::new(MysqlSide::connect(url).await?)),
        })
    }

    /// The table `name` in SQL. SQLite, and PostgreSQL and MySQL targets: one quoted
    /// identifier, as the trigger source and the sinks name it. A PostgreSQL source:
    /// `schema.table`, or `table` in schema `public`, as the log source reads it. A MySQL
    /// source: `database.table`, or `table` in the URL's database.
    pub(crate) fn table_sql(&self, name: &str, role: Role) -> String {
        use tidesync_core::sql::quote_ident;
        match (self, role) {
            (Side::Postgres(_), Role::Source) => {
                let (schema, table) = name.split_once('.').unwrap_or(("public", name));
                format!("{}.{}", quote_ident(schema), quote_ident(table))
            }
            (Side::Mysql(_), Role::Source) => {
                let (database, table) = mysql_source_table(name);
                let table = tidesync_deliver::mysql::quote_ident(table);
                match database {
                    Some(d) => format!("{}.{table}", tidesync_deliver::mysql::quote_ident(d)),
                    None => table,
                }
            }
            (Side::Mysql(_), Role::Target) => tidesync_deliver::mysql::quote_ident(name),
            _ => quote_ident(name),
        }
    }

    pub(crate) fn db(&self) -> &str {
        match self {
            Side::Sqlite(s) => s.db(),
            Side::Postgres(p) => p.db(),
            Side::Mysql(m) => m.db(),
        }
    }

    /// The columns and key of `table` (in SQL: `table_sql`, from [`Side::table_sql`] with
    /// the same `role`).
    pub(crate) async fn describe(
        &self,
        table_sql: &str,
        table: &str,
        role: Role,
    ) -> Result<TableShape, VerifyError> {
        match (self, role) {
            (Side::Sqlite(s), _) => s.describe(table).await,
            (Side::Postgres(p), _) => p.describe(table_sql, table).await,
            (Side::Mysql(m), Role::Source) => {
                let (database, name) = mysql_source_table(table);
                m.describe(database, name).await
            }
            (Side::Mysql(m), Role::Target) => m.describe(None, table).await,
        }
    }

    /// Up to `limit` rows with keys above `lo` and at most `hi`, in key order.
    pub(crate) async fn page(
        &self,
        plan: &Arc<SidePlan>,
        lo: Option<&[Native]>,
        hi: Option<&[Native]>,
        limit: usize,
    ) -> Result<Vec<SideRow>, VerifyError> {
        match self {
            Side::Sqlite(s) => s.page(plan, lo, hi, limit).await,
            Side::Postgres(p) => p.page(plan, lo, hi, limit).await,
            Side::Mysql(m) => m.page(plan, lo, hi, limit).await,
        }
    }

    /// The rows of these keys that exist, in no particular order.
    pub(crate) async fn lookup(
        &self,
        plan: &Arc<SidePlan>,
        keys: Vec<LookupKey>,
    ) -> Result<Vec<SideRow>, VerifyError> {
        match self {
            Side::Sqlite(s) => s.lookup(plan, keys).await,
            Side::Postgres(p) => p.lookup(plan, keys).await,
            Side::Mysql(m) => m.lookup(plan, keys).await,
        }
    }
}

/// A MySQL source's table name: `database.table`, or `table` in the URL's database.
fn mysql_source_table(name: &str) -> (Option<&str>, &str) {
    match name.split_once('.') {
        Some((database, table)) => (Some(database), table),
        None => (None, name),
    }
}
