//! Reading a MySQL or MariaDB target for verify.
//!
//! Rows are compared one by one (canonical values, see `canon`): each column gets the class of
//! the PostgreSQL type whose semantics it shares with what the MySQL sink stores into it
//! (integers, `DOUBLE`/`FLOAT`, `DECIMAL(p,s)` at its scale, text with `CHAR` trailing blanks
//! insignificant, binary strings, `DATETIME(6)`/`TIMESTAMP(6)` in UTC, `DATE`, `TIME(6)`,
//! MySQL's `JSON` compared as JSON). Other types (and date-times of less than microsecond
//! precision, whose rounding differs between MySQL and MariaDB) compare as text, which may
//! report a false difference but never a false equality.
//!
//! Pages walk the key in byte order (`BINARY` for text keys, whatever the column's collation),
//! the order the other side is walked in. The session is UTC and read-only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Value as MyValue};
use tidesync_core::time::{MICROS_PER_DAY, MICROS_PER_SECOND, days_from_civil};
use tidesync_core::{Decimal, Value};
use tidesync_deliver::mysql::{bind, describe, describe_url, mysql_url, quote_ident};

use super::VerifyError;
use super::canon::{Class, Oracle};
use super::chunk::{Native, SideRow};
use super::side::{CatalogColumn, ColType, LookupKey, SidePlan, TableShape};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A MySQL or MariaDB database, one connection.
#[derive(Debug)]
pub(crate) struct MysqlSide {
    db: String,
    conn: tokio::sync::Mutex<Conn>,
    oracle: Mutex<Oracle>,
}

impl MysqlSide {
    pub(crate) async fn connect(url: &str) -> Result<MysqlSide, VerifyError> {
        let db = describe_url(url);
        let fail = |context: &str, problem: String| VerifyError::Mysql {
            db: db.clone(),
            context: context.to_owned(),
            problem,
        };
        let opts =
            Opts::from_url(&mysql_url(url)).map_err(|e| fail("reading the URL", e.to_string()))?;
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts))
            .await
            .map_err(|_| fail("connecting", "no answer within 10 s".into()))?
            .map_err(|e| fail("connecting", describe(&e).0))?;
        conn.query_drop("SET SESSION time_zone = '+00:00'")
            .await
            .map_err(|e| fail("setting up the session", describe(&e).0))?;
        Ok(MysqlSide {
            db,
            conn: tokio::sync::Mutex::new(conn),
            oracle: Mutex::default(),
        })
    }

    pub(crate) fn db(&self) -> &str {
        &self.db
    }

    fn error(&self, context: String) -> impl Fn(mysql_async::Error) -> VerifyError + use<> {
        let db = self.db.clone();
        move |e| VerifyError::Mysql {
            db: db.clone(),
            context: context.clone(),
            problem: describe(&e).0,
        }
    }

    pub(crate) async fn describe(&self, table: &str) -> Result<TableShape, VerifyError> {
        let err = self.error(format!("reading the catalog of `{table}`"));
        let mut conn = self.conn.lock().await;
        type Column = (String, String, Option<u64>, Option<u64>, String);
        let rows: Vec<Column> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_SCALE, DATETIME_PRECISION, EXTRA \
                 FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (table,),
            )
            .await
            .map_err(&err)?;
        if rows.is_empty() {
            return Err(VerifyError::NoTable {
                db: self.db.clone(),
                table: table.to_owned(),
            });
        }
        let key: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' \
                 ORDER BY SEQ_IN_INDEX",
                (table,),
            )
            .await
            .map_err(&err)?;
        Ok(TableShape {
            columns: rows
                .into_iter()
                .map(|(name, data_type, scale, precision, extra)| {
                    let data_type = data_type.to_ascii_lowercase();
                    let class = class_of(&data_type, scale, precision);
                    CatalogColumn {
                        name,
                        ty: ColType::Mysql { data_type, class },
                        generated: extra.to_ascii_uppercase().contains("GENERATED"),
                    }
                })
                .collect(),
            key: (!key.is_empty()).then_some(key),
        })
    }

    /// Up to `limit` rows with keys above `lo` and at most `hi`, in key order (bytes for text).
    pub(crate) async fn page(
        &self,
        plan: &Arc<SidePlan>,
        lo: Option<&[Native]>,
        hi: Option<&[Native]>,
        limit: usize,
    ) -> Result<Vec<SideRow>, VerifyError> {
        let keys = key_exprs(plan)?;
        let key_list = keys.join(", ");
        let holes = vec!["?"; keys.len()].join(", ");
        let mut conditions = Vec::new();
        let mut params: Vec<MyValue> = Vec::new();
        for (bound, op) in [(lo, ">"), (hi, "<=")] {
            if let Some(cells) = bound {
                conditions.push(format!("({key_list}) {op} ({holes})"));
                params.extend(cells.iter().map(native));
            }
        }
        let sql = format!(
            "SELECT {} FROM {}{} ORDER BY {key_list} LIMIT {limit}",
            columns(plan),
            plan.table_sql,
            if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            },
        );
        let err = self.error(format!("reading `{}`", plan.table));
        let rows: Vec<mysql_async::Row> = self
            .conn
            .lock()
            .await
            .exec(sql, params)
            .await
            .map_err(err)?;
        self.rows(plan, rows)
    }

    /// The rows of these keys that exist.
    pub(crate) async fn lookup(
        &self,
        plan: &Arc<SidePlan>,
        keys: Vec<LookupKey>,
    ) -> Result<Vec<SideRow>, VerifyError> {
        let condition = key_exprs(plan)?
            .iter()
            .map(|k| format!("{k} = ?"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "SELECT {} FROM {} WHERE {condition}",
            columns(plan),
            plan.table_sql
        );
        let err = self.error(format!("re-reading rows of `{}`", plan.table));
        let mut found = Vec::new();
        let mut conn = self.conn.lock().await;
        for key in keys {
            let params: Vec<MyValue> = match key {
                LookupKey::Native(cells) => cells.iter().map(native).collect(),
                // A key value MySQL cannot hold (a decimal NaN, a year past 9999) cannot be a
                // row's key there either: NULL matches no row, so the key reads as missing.
                LookupKey::Canonical(values) => values
                    .iter()
                    .map(|v| bind(v).unwrap_or(MyValue::NULL))
                    .collect(),
            };
            let rows: Vec<mysql_async::Row> = conn.exec(&sql, params).await.map_err(&err)?;
            found.extend(rows);
        }
        drop(conn);
        self.rows(plan, found)
    }

    fn rows(
        &self,
        plan: &SidePlan,
        rows: Vec<mysql_async::Row>,
    ) -> Result<Vec<SideRow>, VerifyError> {
        let mut oracle = self.oracle.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = Vec::new();
        rows.into_iter()
            .map(|row| {
                let cells: Vec<MyValue> = row.unwrap();
                let native_key = plan
                    .key
                    .iter()
                    .map(|i| Native::Mysql(cells.get(*i).cloned().unwrap_or(MyValue::NULL)))
                    .collect();
                let raw = cells
                    .into_iter()
                    .zip(&plan.columns)
                    .map(|(cell, (_, ty))| value_of(cell, ty))
                    .collect();
                plan.row(raw, native_key, &mut oracle, &mut buf)
            })
            .collect()
    }
}

/// The comparison class of a MySQL column (see the module docs).
fn class_of(data_type: &str, scale: Option<u64>, precision: Option<u64>) -> Class {
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => Class::PgInt,
        "double" | "real" => Class::PgFloat8,
        "float" => Class::PgFloat4,
        "decimal" | "numeric" => Class::PgNumeric {
            scale: scale.and_then(|s| i32::try_from(s).ok()),
        },
        "char" => Class::PgText { blank_padded: true },
        "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => {
            Class::PgText {
                blank_padded: false,
            }
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Class::PgBytea,
        "datetime" | "timestamp" if precision == Some(6) => Class::PgTimestamp { zoned: true },
        "date" => Class::PgDate,
        "time" if precision == Some(6) => Class::PgTime,
        "json" => Class::PgJsonb,
        _ => Class::PgOther,
    }
}

/// The key columns as compared and ordered: text in byte order.
fn key_exprs(plan: &SidePlan) -> Result<Vec<String>, VerifyError> {
    plan.key
        .iter()
        .map(|i| {
            let (name, ty) = &plan.columns[*i];
            let column = quote_ident(name);
            match ty {
                ColType::Mysql { class, .. } => match class {
                    Class::PgInt | Class::PgDate | Class::PgTimestamp { .. } | Class::PgBytea => {
                        Ok(column)
                    }
                    Class::PgText { .. } => Ok(format!("BINARY {column}")),
                    _ => Err(VerifyError::Mysql {
                        db: plan.db.clone(),
                        context: format!("walking `{}` in key order", plan.table),
                        problem: format!(
                            "key column `{name}` has a type verify cannot order like the source \
                             yet (integers, text, binary strings, dates and date-times can)"
                        ),
                    }),
                },
                _ => Ok(column),
            }
        })
        .collect()
}

fn columns(plan: &SidePlan) -> String {
    plan.columns
        .iter()
        .map(|(c, _)| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A key cell of any side as a MySQL parameter.
fn native(n: &Native) -> MyValue {
    match n {
        Native::Mysql(v) => v.clone(),
        Native::Postgres(Some(t)) => MyValue::Bytes(t.as_bytes().to_vec()),
        Native::Postgres(None) => MyValue::NULL,
        Native::Sqlite(v) => bind(&super::canon::from_sqlite(v.clone())).unwrap_or(MyValue::NULL),
    }
}

/// A MySQL cell as a value, typed by its column (binary protocol: integers, floats, dates and
/// times arrive typed; decimals, text, binary strings and JSON as bytes).
fn value_of(cell: MyValue, ty: &ColType) -> Value {
    let class = match ty {
        ColType::Mysql { class, .. } => *class,
        _ => Class::PgOther,
    };
    match cell {
        MyValue::NULL => Value::Null,
        MyValue::Int(i) => Value::Int(i),
        MyValue::UInt(u) => i64::try_from(u).map_or_else(
            |_| Decimal::parse(&u.to_string()).map_or(Value::Text(u.to_string()), Value::Decimal),
            Value::Int,
        ),
        MyValue::Float(f) => Value::Float(f64::from(f)),
        MyValue::Double(d) => Value::Float(d),
        MyValue::Bytes(bytes) => match class {
            Class::PgBytea => Value::Bytes(bytes),
            _ => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                match class {
                    Class::PgNumeric { .. } => {
                        Decimal::parse(&text).map_or(Value::Text(text), Value::Decimal)
                    }
                    Class::PgJsonb => Value::Json(text),
                    _ => Value::Text(text),
                }
            }
        },
        MyValue::Date(year, month, day, hour, minute, second, micros) => {
            let days = days_from_civil(i64::from(year), u32::from(month), u32::from(day));
            match class {
                Class::PgDate => Value::Date(i32::try_from(days).unwrap_or(i32::MAX)),
                _ => Value::Timestamp(
                    days * MICROS_PER_DAY
                        + (i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second))
                            * MICROS_PER_SECOND
                        + i64::from(micros),
                ),
            }
        }
        MyValue::Time(negative, days, hours, minutes, seconds, micros) => {
            let us = ((i64::from(days) * 24 + i64::from(hours)) * 3600
                + i64::from(minutes) * 60
                + i64::from(seconds))
                * MICROS_PER_SECOND
                + i64::from(micros);
            Value::Time(if negative { -us } else { us })
        }
    }
}
