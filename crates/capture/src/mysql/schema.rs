//! The captured tables of a MySQL/MariaDB source, as `information_schema` describes them: each
//! column's kind (which decides how its values are read, from the binlog and from queries),
//! its type for targets, and the primary key.

use mysql_async::Conn;
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use tidesync_core::{ColumnSchema, Dialect, TableSchema};

/// How a column's values are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// TINYINT .. BIGINT; `bytes`: 1, 2, 3, 4 or 8.
    Int {
        unsigned: bool,
        bytes: u8,
    },
    Decimal,
    Float,
    Double,
    /// CHAR, VARCHAR, TEXT: the binlog carries the bytes in the column's charset.
    Text(Charset),
    /// BINARY(n) (`pad`: n, MySQL pads with zero bytes), VARBINARY, BLOB, GEOMETRY.
    Binary {
        pad: Option<usize>,
    },
    Date,
    Time,
    /// DATETIME: a wall-clock time, kept as if it were UTC.
    DateTime,
    /// TIMESTAMP: an instant (the binlog carries seconds since the epoch).
    Timestamp,
    Year,
    Bit {
        bits: u32,
    },
    /// The labels, in declaration order (the binlog carries the 1-based index).
    Enum(Vec<String>),
    /// The labels, in declaration order (the binlog carries a bit mask).
    Set(Vec<String>),
    Json,
}

/// Character sets whose bytes we decode from the binlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Charset {
    Utf8,
    /// MySQL's `latin1` is Windows-1252.
    Latin1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub name: String,
    pub kind: Kind,
    /// `COLUMN_TYPE` (e.g. `int(10) unsigned`, `enum('a','b')`), `json` for MariaDB's JSON.
    pub type_name: String,
    pub nullable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    /// The stream name: the table as configured (`table` or `db.table`).
    pub stream: String,
    pub database: String,
    pub name: String,
    pub columns: Vec<Column>,
    pub key: Vec<String>,
}

impl Table {
    pub fn qualified(&self) -> String {
        format!(
            "{}.{}",
            tidesync_core::mysql::quote_ident(&self.database),
            tidesync_core::mysql::quote_ident(&self.name)
        )
    }

    pub fn schema(&self) -> TableSchema {
        TableSchema {
            name: self.stream.clone(),
            columns: self
                .columns
                .iter()
                .map(|c| ColumnSchema {
                    name: c.name.clone(),
                    type_name: c.type_name.clone(),
                    nullable: c.nullable,
                })
                .collect(),
            key: self.key.clone(),
            dialect: Dialect::Mysql,
        }
    }

    /// Positions of the key columns in `columns`.
    pub fn key_positions(&self) -> Vec<usize> {
        self.key
            .iter()
            .filter_map(|k| self.columns.iter().position(|c| &c.name == k))
            .collect()
    }
}

/// Splits a configured table into (database, table); `default_db` when it has no `db.` part.
pub(crate) fn split_name(stream: &str, default_db: &str) -> (String, String) {
    match stream.split_once('.') {
        Some((db, table)) => (db.to_owned(), table.to_owned()),
        None => (default_db.to_owned(), stream.to_owned()),
    }
}

/// Why a table could not be read.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// A query failed (classified by the caller: a lost connection is worth retrying).
    Query(mysql_async::Error),
    /// The table cannot be captured as it is; names the table and column.
    Table(String),
}

impl From<mysql_async::Error> for LoadError {
    fn from(e: mysql_async::Error) -> Self {
        LoadError::Query(e)
    }
}

/// Reads one table's columns and primary key. `Ok(None)`: there is no such table.
pub(crate) async fn load_table(
    conn: &mut Conn,
    stream: &str,
    database: &str,
    name: &str,
    mariadb: bool,
) -> Result<Option<Table>, LoadError> {
    type ColumnRow = (String, String, String, String, Option<String>);
    let rows: Vec<ColumnRow> = conn
        .exec(
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), CAST(COLUMN_TYPE AS CHAR), \
             CAST(IS_NULLABLE AS CHAR), CAST(CHARACTER_SET_NAME AS CHAR) \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (database, name),
        )
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let key: Vec<String> = conn
        .exec(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
             ORDER BY ORDINAL_POSITION",
            (database, name),
        )
        .await?;
    if key.is_empty() {
        return Err(LoadError::Table(format!(
            "table {stream} has no primary key, which capture needs to know which row a change \
             is of (add one: ALTER TABLE {} ADD PRIMARY KEY (...))",
            tidesync_core::mysql::quote_ident(name)
        )));
    }
    // MariaDB's JSON is LONGTEXT with a `json_valid(col)` check.
    let json_checked: Vec<String> = if mariadb {
        conn.exec(
            "SELECT CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (database, name),
        )
        .await?
    } else {
        Vec::new()
    };
    let mut columns = Vec::with_capacity(rows.len());
    for (column, data_type, column_type, nullable, charset) in rows {
        let data_type = data_type.to_ascii_lowercase();
        let column_type = column_type.to_ascii_lowercase();
        let is_json = data_type == "json"
            || (data_type == "longtext"
                && json_checked
                    .iter()
                    .any(|c| c.replace(' ', "") == format!("json_valid(`{column}`)")));
        let kind = if is_json {
            Kind::Json
        } else {
            kind_of(&data_type, &column_type, charset.as_deref()).map_err(|problem| {
                LoadError::Table(format!(
                    "table {stream} column {column} ({column_type}): {problem}"
                ))
            })?
        };
        let type_name = if is_json {
            "json".to_owned()
        } else {
            column_type
        };
        columns.push(Column {
            name: column,
            kind,
            type_name,
            nullable: nullable == "YES",
        });
    }
    Ok(Some(Table {
        stream: stream.to_owned(),
        database: database.to_owned(),
        name: name.to_owned(),
        columns,
        key,
    }))
}

/// The kind of a column from its `DATA_TYPE`, `COLUMN_TYPE` and character set.
pub(crate) fn kind_of(
    data_type: &str,
    column_type: &str,
    charset: Option<&str>,
) -> Result<Kind, String> {
    let unsigned = column_type.contains("unsigned");
    let int = |bytes| Ok(Kind::Int { unsigned, bytes });
    let args = column_type
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(a, _)| a);
    match data_type {
        "tinyint" => int(1),
        "smallint" => int(2),
        "mediumint" => int(3),
        "int" | "integer" => int(4),
        "bigint" => int(8),
        "decimal" | "numeric" => Ok(Kind::Decimal),
        "float" => Ok(Kind::Float),
        "double" | "real" => Ok(Kind::Double),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => match charset {
            Some("utf8mb4" | "utf8mb3" | "utf8" | "ascii") => Ok(Kind::Text(Charset::Utf8)),
            Some("latin1") => Ok(Kind::Text(Charset::Latin1)),
            Some("binary") => Ok(Kind::Binary { pad: None }),
            Some(other) => Err(format!(
                "character set {other} is not supported (supported: utf8mb4, utf8mb3, ascii, \
                 latin1); convert the column, e.g. ALTER TABLE .. MODIFY .. CHARACTER SET utf8mb4"
            )),
            None => Err("a text column without a character set".to_owned()),
        },
        "binary" => Ok(Kind::Binary {
            pad: args.and_then(|a| a.trim().parse().ok()),
        }),
        "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry" | "point"
        | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
        | "geometrycollection" => Ok(Kind::Binary { pad: None }),
        "date" => Ok(Kind::Date),
        "time" => Ok(Kind::Time),
        "datetime" => Ok(Kind::DateTime),
        "timestamp" => Ok(Kind::Timestamp),
        "year" => Ok(Kind::Year),
        "bit" => Ok(Kind::Bit {
            bits: args.and_then(|a| a.trim().parse().ok()).unwrap_or(1),
        }),
        "enum" => Ok(Kind::Enum(labels(args_all(column_type)))),
        "set" => Ok(Kind::Set(labels(args_all(column_type)))),
        "json" => Ok(Kind::Json),
        other => Err(format!("type {other} is not supported")),
    }
}

/// Everything between the first `(` and the last `)`: `enum('a','b)c')` -> `'a','b)c'`.
fn args_all(column_type: &str) -> &str {
    match (column_type.find('('), column_type.rfind(')')) {
        (Some(a), Some(b)) if b > a => &column_type[a + 1..b],
        _ => "",
    }
}

/// The labels of an ENUM or SET list: `'a','it''s'` -> `a`, `it's`.
fn labels(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut label = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    label.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(n) = chars.next() {
                        label.push(n);
                    }
                }
                c => label.push(c),
            }
        }
        out.push(label);
    }
    out
}

/// Whether the binlog's column type `t` can carry values of `kind` (a row of the table as
/// described, not of an older or newer shape of it).
pub(crate) fn binlog_type_fits(kind: &Kind, t: ColumnType) -> bool {
    use ColumnType::*;
    match kind {
        Kind::Int { bytes, .. } => matches!(
            (bytes, t),
            (1, MYSQL_TYPE_TINY)
                | (2, MYSQL_TYPE_SHORT)
                | (3, MYSQL_TYPE_INT24)
                | (4, MYSQL_TYPE_LONG)
                | (8, MYSQL_TYPE_LONGLONG)
        ),
        Kind::Decimal => matches!(t, MYSQL_TYPE_NEWDECIMAL),
        Kind::Float => matches!(t, MYSQL_TYPE_FLOAT),
        Kind::Double => matches!(t, MYSQL_TYPE_DOUBLE),
        Kind::Text(_) | Kind::Binary { .. } | Kind::Json => matches!(
            t,
            MYSQL_TYPE_VARCHAR
                | MYSQL_TYPE_VAR_STRING
                | MYSQL_TYPE_STRING
                | MYSQL_TYPE_TINY_BLOB
                | MYSQL_TYPE_MEDIUM_BLOB
                | MYSQL_TYPE_LONG_BLOB
                | MYSQL_TYPE_BLOB
                | MYSQL_TYPE_GEOMETRY
                | MYSQL_TYPE_JSON
        ),
        Kind::Date => matches!(t, MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE),
        Kind::Time => matches!(t, MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2),
        Kind::DateTime => matches!(t, MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2),
        Kind::Timestamp => matches!(t, MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2),
        Kind::Year => matches!(t, MYSQL_TYPE_YEAR),
        Kind::Bit { .. } => matches!(t, MYSQL_TYPE_BIT),
        Kind::Enum(_) => matches!(t, MYSQL_TYPE_ENUM | MYSQL_TYPE_STRING),
        Kind::Set(_) => matches!(t, MYSQL_TYPE_SET | MYSQL_TYPE_STRING),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_information_schema() {
        assert_eq!(
            kind_of("int", "int(10) unsigned", None),
            Ok(Kind::Int {
                unsigned: true,
                bytes: 4
            })
        );
        assert_eq!(
            kind_of("binary", "binary(4)", None),
            Ok(Kind::Binary { pad: Some(4) })
        );
        assert_eq!(kind_of("bit", "bit(12)", None), Ok(Kind::Bit { bits: 12 }));
        assert_eq!(
            kind_of("enum", "enum('a','it''s','b)c')", None),
            Ok(Kind::Enum(vec!["a".into(), "it's".into(), "b)c".into()]))
        );
        assert_eq!(
            kind_of("varchar", "varchar(3)", Some("latin1")),
            Ok(Kind::Text(Charset::Latin1))
        );
        let err = kind_of("varchar", "varchar(3)", Some("sjis")).unwrap_err();
        assert!(err.contains("character set sjis is not supported"), "{err}");
        assert!(
            kind_of("vector", "vector(3)", None)
                .unwrap_err()
                .contains("vector")
        );
    }

    #[test]
    fn qualified_names_split_on_the_first_dot() {
        assert_eq!(
            split_name("items", "shop"),
            ("shop".to_owned(), "items".to_owned())
        );
        assert_eq!(
            split_name("erp.items", "shop"),
            ("erp".to_owned(), "items".to_owned())
        );
    }
}
