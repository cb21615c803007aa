//! Reading a MySQL or MariaDB database for verify, as a pipeline's target or as its source.
//!
//! Each cell is read as the [`Value`] the MySQL source emits for its column type (the value
//! rules in docs/mysql.md): integers of every width, signed or not, and `year` as `Int`;
//! `bigint unsigned` as `Int` up to `i64::MAX`, else an exact `Decimal`; `decimal(p,s)` as
//! `Decimal` at its scale; `float` as the `f32` widened; text, `enum` and `set` as `Text`;
//! binary strings, blobs, geometry and `bit(n>1)` as `Bytes`; `bit(1)` as `Bool`; `date`,
//! `time`, `datetime` (its wall clock taken as UTC) and `timestamp` (UTC: the session's
//! `time_zone` is `+00:00`) as `Date`, `Time` and `Timestamp`; `json` as `Json`, and so is
//! MariaDB's `json`, which is `LONGTEXT` with a `json_valid` check found in
//! `information_schema.CHECK_CONSTRAINTS`. A zero date (`0000-00-00`) stays text: no
//! other side holds it, so it shows as a difference.
//!
//! As a target, each column compares in the class (see `canon`) of the PostgreSQL type whose
//! semantics it shares with what a sink stores into it: integers (`bigint unsigned` as
//! `numeric(20,0)`), `DOUBLE`, `FLOAT` (as `f32`), `DECIMAL(p,s)` at its scale, text (`CHAR`'s
//! trailing blanks insignificant), binary strings, `bit(1)` as boolean, `DATETIME(6)` and
//! `TIMESTAMP(6)` in UTC, `DATE`, `TIME(6)`, JSON as JSON. Other types (and date-times of less
//! than microsecond precision, whose rounding of a finer input differs between MySQL and
//! MariaDB) compare as text, which may report a false difference but never a false equality.
//! As a source, the target column's class decides, as for any source.
//!
//! Pages walk the key in byte order (`BINARY` for text keys, whatever the column's collation),
//! the order the other side is walked in. The session is UTC and read-only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Value as MyValue};
use tidesync_core::time::{MICROS_PER_DAY, MICROS_PER_SECOND, days_from_civil};
use tidesync_core::{Decimal, Position, Value};
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
    /// MariaDB: its `json` columns are `LONGTEXT` with a `json_valid` check.
    mariadb: bool,
}

/// A column as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MysqlColumn {
    /// `DATA_TYPE`, lower case: `int`, `varchar`, `bit`.
    data_type: String,
    /// `COLUMN_TYPE`, lower case: `int(10) unsigned`, `bit(1)`.
    column_type: String,
    scale: Option<u64>,
    /// `DATETIME_PRECISION`: fractional digits of a time, datetime or timestamp.
    precision: Option<u64>,
    /// Has a `json_valid(column)` check (MariaDB's `json`).
    json_checked: bool,
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
        // Read-only: verify reads a pipeline's source and targets and must never write them.
        conn.query_drop("SET SESSION time_zone = '+00:00'; SET SESSION TRANSACTION READ ONLY")
            .await
            .map_err(|e| fail("setting up the session", describe(&e).0))?;
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(|e| fail("reading the server version", describe(&e).0))?;
        Ok(MysqlSide {
            db,
            conn: tokio::sync::Mutex::new(conn),
            oracle: Mutex::default(),
            mariadb: version.is_some_and(|v| v.to_ascii_lowercase().contains("mariadb")),
        })
    }

    /// The end of the binary log now (`SHOW MASTER STATUS`; MySQL 8.4 names it `SHOW BINARY
    /// LOG STATUS`): where a binlog source's stored position stands once it has read every
    /// transaction committed so far. `None` when the server keeps no binary log.
    pub(crate) async fn binlog_position(&self) -> Result<Option<Position>, VerifyError> {
        let err = self.error("reading the binary log position".into());
        let mut conn = self.conn.lock().await;
        let rows: Vec<mysql_async::Row> = match conn.query("SHOW MASTER STATUS").await {
            Ok(rows) => rows,
            Err(mysql_async::Error::Server(_)) => {
                conn.query("SHOW BINARY LOG STATUS").await.map_err(&err)?
            }
            Err(e) => return Err(err(e)),
        };
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let fail = |problem: &str| VerifyError::Mysql {
            db: self.db.clone(),
            context: "reading the binary log position".into(),
            problem: problem.to_owned(),
        };
        let file = match row.as_ref(0) {
            Some(MyValue::Bytes(b)) => String::from_utf8(b.clone())
                .map_err(|_| fail("the binary log file name is not UTF-8"))?,
            _ => return Err(fail("no binary log file name in the status")),
        };
        let offset = match row.as_ref(1) {
            Some(MyValue::UInt(u)) => *u,
            Some(MyValue::Int(i)) => u64::try_from(*i).map_err(|_| fail("a negative offset"))?,
            Some(MyValue::Bytes(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| fail("the binary log offset is not a number"))?,
            _ => return Err(fail("no binary log offset in the status")),
        };
        Ok(Some(Position::Binlog {
            file,
            offset,
            gtid: None,
            server: None,
        }))
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

    /// The columns and primary key of `table`, in database `schema` (`None`: the URL's).
    pub(crate) async fn describe(
        &self,
        schema: Option<&str>,
        table: &str,
    ) -> Result<TableShape, VerifyError> {
        let err = self.error(format!("reading the catalog of `{table}`"));
        let mut conn = self.conn.lock().await;
        type Column = (String, String, String, Option<u64>, Option<u64>, String);
        let rows: Vec<Column> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_SCALE, DATETIME_PRECISION, EXTRA \
                 FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                 ORDER BY ORDINAL_POSITION",
                (schema, table),
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
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                 AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
                (schema, table),
            )
            .await
            .map_err(&err)?;
        // MariaDB's `json` is an alias of LONGTEXT with a column check `json_valid(`c`)`.
        // (MySQL reports `json` itself, and its CHECK_CONSTRAINTS has no TABLE_NAME.)
        let checks: Vec<String> = if self.mariadb {
            conn.exec(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
                (schema, table),
            )
            .await
            .map_err(&err)?
        } else {
            Vec::new()
        };
        Ok(TableShape {
            columns: rows
                .into_iter()
                .map(|(name, data_type, column_type, scale, precision, extra)| {
                    let check = format!("json_valid({})", quote_ident(&name));
                    let column = MysqlColumn {
                        data_type: data_type.to_ascii_lowercase(),
                        column_type: column_type.to_ascii_lowercase(),
                        scale,
                        precision,
                        json_checked: checks.iter().any(|c| c.trim() == check),
                    };
                    let class = class_of(&column);
                    CatalogColumn {
                        name,
                        ty: ColType::Mysql {
                            data_type: column.data_type,
                            class,
                        },
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
                LookupKey::Canonical(values) => values.iter().map(key_param).collect(),
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
fn class_of(c: &MysqlColumn) -> Class {
    let unsigned = c
        .column_type
        .split_whitespace()
        .any(|m| m == "unsigned" || m == "zerofill");
    match c.data_type.as_str() {
        // Up to 18446744073709551615: exact as numeric(20,0), the PostgreSQL type it maps to.
        "bigint" if unsigned => Class::PgNumeric { scale: Some(0) },
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => {
            Class::PgInt
        }
        "double" | "real" => Class::PgFloat8,
        "float" => Class::PgFloat4,
        "decimal" | "numeric" => Class::PgNumeric {
            scale: c.scale.and_then(|s| i32::try_from(s).ok()),
        },
        "char" => Class::PgText { blank_padded: true },
        "longtext" if c.json_checked => Class::PgJsonb,
        "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => {
            Class::PgText {
                blank_padded: false,
            }
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry"
        | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => Class::PgBytea,
        "bit" if c.column_type == "bit(1)" => Class::PgBool,
        "bit" => Class::PgBytea,
        "datetime" | "timestamp" if c.precision == Some(6) => Class::PgTimestamp { zoned: true },
        "date" => Class::PgDate,
        "time" if c.precision == Some(6) => Class::PgTime,
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
                    // MySQL orders these by value, as verify does.
                    Class::PgInt
                    | Class::PgNumeric { .. }
                    | Class::PgDate
                    | Class::PgTime
                    | Class::PgTimestamp { .. }
                    | Class::PgBytea => Ok(column),
                    Class::PgText { .. } => Ok(format!("BINARY {column}")),
                    _ => Err(VerifyError::Mysql {
                        db: plan.db.clone(),
                        context: format!("walking `{}` in key order", plan.table),
                        problem: format!(
                            "key column `{name}` has a type verify cannot order like the source \
                             yet (integers, decimals, text, binary strings, dates, times and \
                             date-times can)"
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

/// A canonical key value as a MySQL parameter. An integral decimal (a `bigint unsigned` key
/// compared as `numeric(20,0)`) goes as an integer: MySQL compares a string with an integer
/// column as doubles, which cannot tell 2^64-1 from 2^64-2. A key value MySQL cannot hold (a
/// decimal NaN, a year past 9999) cannot be a row's key there either: NULL matches no row, so
/// the key reads as missing.
fn key_param(v: &Value) -> MyValue {
    if let Value::Decimal(d) = v {
        if let Ok(u) = d.as_str().parse::<u64>() {
            return MyValue::UInt(u);
        }
        if let Ok(i) = d.as_str().parse::<i64>() {
            return MyValue::Int(i);
        }
    }
    bind(v).unwrap_or(MyValue::NULL)
}

/// A MySQL cell as the value the MySQL source emits for it, typed by its column (binary
/// protocol: integers, floats, dates and times arrive typed; decimals, text, binary strings,
/// bits and JSON as bytes).
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
            // bit(1): one byte, 0 or 1.
            Class::PgBool => Value::Bool(bytes.iter().any(|b| *b != 0)),
            // Text in the connection's utf8mb4; anything else (a binary string in a column of
            // a type verify does not know) stays bytes rather than be mangled into equality.
            _ => match String::from_utf8(bytes) {
                Ok(text) => match class {
                    Class::PgNumeric { .. } => {
                        Decimal::parse(&text).map_or(Value::Text(text), Value::Decimal)
                    }
                    Class::PgJsonb => Value::Json(text),
                    _ => Value::Text(text),
                },
                Err(e) => Value::Bytes(e.into_bytes()),
            },
        },
        // A zero date or a date with a zero part (allowed outside strict modes): kept as the
        // text MySQL shows, which no other side holds.
        MyValue::Date(year, month, day, hour, minute, second, micros) if month == 0 || day == 0 => {
            let date = format!("{year:04}-{month:02}-{day:02}");
            Value::Text(match class {
                Class::PgDate => date,
                _ => format!("{date} {hour:02}:{minute:02}:{second:02}.{micros:06}"),
            })
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn column(data_type: &str, column_type: &str) -> MysqlColumn {
        MysqlColumn {
            data_type: data_type.into(),
            column_type: column_type.into(),
            scale: None,
            precision: None,
            json_checked: false,
        }
    }

    #[test]
    fn columns_compare_in_the_class_of_what_the_source_emits() {
        let cases = [
            (column("int", "int(10) unsigned"), Class::PgInt),
            (column("tinyint", "tinyint(1)"), Class::PgInt),
            (column("year", "year(4)"), Class::PgInt),
            (column("bigint", "bigint(20)"), Class::PgInt),
            (
                column("bigint", "bigint(20) unsigned"),
                Class::PgNumeric { scale: Some(0) },
            ),
            (
                column("bigint", "bigint(20) unsigned zerofill"),
                Class::PgNumeric { scale: Some(0) },
            ),
            (column("float", "float"), Class::PgFloat4),
            (column("bit", "bit(1)"), Class::PgBool),
            (column("bit", "bit(12)"), Class::PgBytea),
            (column("geometry", "geometry"), Class::PgBytea),
            (column("point", "point"), Class::PgBytea),
            (
                column("enum", "enum('a','b c')"),
                Class::PgText {
                    blank_padded: false,
                },
            ),
            (
                column("longtext", "longtext"),
                Class::PgText {
                    blank_padded: false,
                },
            ),
            (
                MysqlColumn {
                    json_checked: true,
                    ..column("longtext", "longtext")
                },
                Class::PgJsonb,
            ),
            (column("json", "json"), Class::PgJsonb),
            (column("inet6", "inet6"), Class::PgOther),
        ];
        for (c, class) in cases {
            assert_eq!(class_of(&c), class, "{c:?}");
        }
    }

    #[test]
    fn cells_read_as_the_source_values() {
        let ty = |data_type: &str, column_type: &str| ColType::Mysql {
            data_type: data_type.into(),
            class: class_of(&column(data_type, column_type)),
        };
        let bit1 = ty("bit", "bit(1)");
        assert_eq!(value_of(MyValue::Bytes(vec![1]), &bit1), Value::Bool(true));
        assert_eq!(value_of(MyValue::Bytes(vec![0]), &bit1), Value::Bool(false));
        assert_eq!(
            value_of(MyValue::Bytes(vec![0x0f, 0xff]), &ty("bit", "bit(12)")),
            Value::Bytes(vec![0x0f, 0xff])
        );
        let unsigned = ty("bigint", "bigint(20) unsigned");
        assert_eq!(value_of(MyValue::UInt(7), &unsigned), Value::Int(7));
        assert_eq!(
            value_of(MyValue::UInt(u64::MAX), &unsigned),
            Value::Decimal(
                Decimal::parse("18446744073709551615").unwrap_or_else(|e| panic!("{e}"))
            )
        );
        assert_eq!(
            value_of(MyValue::Float(1.1), &ty("float", "float")),
            Value::Float(f64::from(1.1f32))
        );
        assert_eq!(
            value_of(MyValue::Date(0, 0, 0, 0, 0, 0, 0), &ty("date", "date")),
            Value::Text("0000-00-00".into())
        );
        assert_eq!(
            value_of(MyValue::Bytes(vec![0xff]), &ty("inet6", "inet6")),
            Value::Bytes(vec![0xff])
        );
    }

    #[test]
    fn integral_decimal_keys_are_looked_up_as_integers() {
        let d = |t: &str| Value::Decimal(Decimal::parse(t).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            key_param(&d("18446744073709551615")),
            MyValue::UInt(u64::MAX)
        );
        assert_eq!(key_param(&d("5")), MyValue::UInt(5));
        assert_eq!(key_param(&d("-5")), MyValue::Int(-5));
        assert_eq!(key_param(&d("1.50")), MyValue::Bytes(b"1.50".to_vec()));
        assert_eq!(key_param(&d("NaN")), MyValue::NULL);
    }
}
