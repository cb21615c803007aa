//! The standard data model of a `diff` stream: which query column (or constant) each model
//! field comes from, and the cast that makes every ERP's values the same kind, so sources with
//! different schemas produce the same rows.

use tidesync_core::time::{format_date, format_time, format_timestamp, parse_date, parse_time};
use tidesync_core::{Decimal, Dialect, Value};

/// The kind a field is cast to (`cast = "decimal"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cast {
    Int,
    Float,
    Decimal,
    Text,
    Bool,
    Timestamp,
    Date,
    Time,
    Json,
    Bytes,
}

impl Cast {
    pub const ALL: [Cast; 10] = [
        Cast::Int,
        Cast::Float,
        Cast::Decimal,
        Cast::Text,
        Cast::Bool,
        Cast::Timestamp,
        Cast::Date,
        Cast::Time,
        Cast::Json,
        Cast::Bytes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cast::Int => "int",
            Cast::Float => "float",
            Cast::Decimal => "decimal",
            Cast::Text => "text",
            Cast::Bool => "bool",
            Cast::Timestamp => "timestamp",
            Cast::Date => "date",
            Cast::Time => "time",
            Cast::Json => "json",
            Cast::Bytes => "bytes",
        }
    }

    pub fn parse(s: &str) -> Option<Cast> {
        Cast::ALL.into_iter().find(|c| c.name() == s)
    }

    /// The column type a sink creates for a field of this kind, in `dialect`'s names.
    pub fn type_name(self, dialect: Dialect) -> &'static str {
        match (dialect, self) {
            (Dialect::Postgres, Cast::Int) => "int8",
            (Dialect::Postgres, Cast::Float) => "float8",
            (Dialect::Postgres, Cast::Decimal) => "numeric",
            (Dialect::Postgres, Cast::Text) => "text",
            (Dialect::Postgres, Cast::Bool) => "bool",
            (Dialect::Postgres, Cast::Timestamp) => "timestamptz",
            (Dialect::Postgres, Cast::Date) => "date",
            (Dialect::Postgres, Cast::Time) => "time",
            (Dialect::Postgres, Cast::Json) => "jsonb",
            (Dialect::Postgres, Cast::Bytes) => "bytea",
            (Dialect::Mysql, Cast::Int) => "bigint",
            (Dialect::Mysql, Cast::Float) => "double",
            (Dialect::Mysql, Cast::Decimal) => "decimal(65,30)",
            (Dialect::Mysql, Cast::Text) => "longtext",
            (Dialect::Mysql, Cast::Bool) => "tinyint(1)",
            (Dialect::Mysql, Cast::Timestamp) => "datetime(6)",
            (Dialect::Mysql, Cast::Date) => "date",
            (Dialect::Mysql, Cast::Time) => "time(6)",
            (Dialect::Mysql, Cast::Json) => "json",
            (Dialect::Mysql, Cast::Bytes) => "longblob",
            (Dialect::Sqlite, Cast::Int) => "INTEGER",
            (Dialect::Sqlite, Cast::Float) => "REAL",
            (Dialect::Sqlite, Cast::Decimal) => "NUMERIC",
            (Dialect::Sqlite, Cast::Text) => "TEXT",
            (Dialect::Sqlite, Cast::Bool) => "BOOLEAN",
            (Dialect::Sqlite, Cast::Timestamp) => "TIMESTAMP",
            (Dialect::Sqlite, Cast::Date) => "DATE",
            (Dialect::Sqlite, Cast::Time) => "TIME",
            (Dialect::Sqlite, Cast::Json) => "JSON",
            (Dialect::Sqlite, Cast::Bytes) => "BLOB",
        }
    }

    /// The kind a value already is, for the type of a constant field.
    pub fn of(value: &Value) -> Cast {
        match value {
            Value::Null | Value::Text(_) => Cast::Text,
            Value::Bool(_) => Cast::Bool,
            Value::Int(_) => Cast::Int,
            Value::Float(_) => Cast::Float,
            Value::Decimal(_) => Cast::Decimal,
            Value::Bytes(_) => Cast::Bytes,
            Value::Timestamp(_) => Cast::Timestamp,
            Value::Date(_) => Cast::Date,
            Value::Time(_) => Cast::Time,
            Value::Json(_) => Cast::Json,
        }
    }

    /// `value` as this kind; null stays null. The error says what could not be converted.
    pub fn apply(self, value: Value) -> Result<Value, String> {
        let fail = |v: &Value| {
            Err(format!(
                "cannot cast {} {v} to {}",
                v.type_name(),
                self.name()
            ))
        };
        Ok(match (self, value) {
            (_, Value::Null) => Value::Null,
            (Cast::Int, v @ Value::Int(_)) => v,
            (Cast::Int, Value::Bool(b)) => Value::Int(i64::from(b)),
            (Cast::Int, v @ Value::Decimal(_)) => match v.to_string().parse() {
                Ok(i) => Value::Int(i),
                Err(_) => return fail(&v),
            },
            (Cast::Int, Value::Float(x)) if x.fract() == 0.0 && x.abs() < 9.0e18 => {
                Value::Int(x as i64)
            }
            (Cast::Int, Value::Text(s)) => match s.trim().parse() {
                Ok(i) => Value::Int(i),
                Err(_) => return fail(&Value::Text(s)),
            },
            (Cast::Float, v @ Value::Float(_)) => v,
            (Cast::Float, Value::Int(i)) => Value::Float(i as f64),
            (Cast::Float, v @ (Value::Decimal(_) | Value::Text(_))) => {
                let text = match &v {
                    Value::Decimal(d) => d.as_str().to_owned(),
                    Value::Text(s) => s.trim().to_owned(),
                    _ => unreachable!("matched above"),
                };
                match text.parse::<f64>() {
                    Ok(x) if x.is_finite() || matches!(v, Value::Decimal(_)) => Value::Float(x),
                    _ => return fail(&v),
                }
            }
            (Cast::Decimal, v @ Value::Decimal(_)) => v,
            (Cast::Decimal, Value::Int(i)) => Value::Decimal(decimal(&i.to_string())?),
            (Cast::Decimal, Value::Float(x)) if x.is_finite() => {
                Value::Decimal(decimal(&x.to_string())?)
            }
            (Cast::Decimal, Value::Text(s)) => match Decimal::parse(s.trim()) {
                Ok(d) => Value::Decimal(d),
                Err(_) => return fail(&Value::Text(s)),
            },
            (Cast::Text, v @ Value::Text(_)) => v,
            (Cast::Text, Value::Json(s)) => Value::Text(s),
            (Cast::Text, Value::Int(i)) => Value::Text(i.to_string()),
            (Cast::Text, Value::Float(x)) => Value::Text(x.to_string()),
            (Cast::Text, Value::Decimal(d)) => Value::Text(d.as_str().to_owned()),
            (Cast::Text, Value::Bool(b)) => Value::Text(b.to_string()),
            (Cast::Text, Value::Timestamp(t)) => Value::Text(format_timestamp(t)),
            (Cast::Text, Value::Date(d)) => Value::Text(format_date(i64::from(d))),
            (Cast::Text, Value::Time(t)) => Value::Text(format_time(t)),
            (Cast::Text, Value::Bytes(b)) => match String::from_utf8(b) {
                Ok(s) => Value::Text(s),
                Err(e) => return fail(&Value::Bytes(e.into_bytes())),
            },
            (Cast::Bool, v @ Value::Bool(_)) => v,
            (Cast::Bool, Value::Int(i @ (0 | 1))) => Value::Bool(i == 1),
            (Cast::Bool, Value::Text(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "1" | "yes" | "y" => Value::Bool(true),
                "false" | "f" | "0" | "no" | "n" => Value::Bool(false),
                _ => return fail(&Value::Text(s)),
            },
            (Cast::Timestamp, v @ Value::Timestamp(_)) => v,
            (Cast::Timestamp, Value::Date(d)) => Value::Timestamp(i64::from(d) * 86_400_000_000),
            (Cast::Timestamp, Value::Text(s)) => match parse_timestamp_utc(s.trim()) {
                Some(t) => Value::Timestamp(t),
                None => return fail(&Value::Text(s)),
            },
            (Cast::Date, v @ Value::Date(_)) => v,
            (Cast::Date, Value::Timestamp(t)) => {
                Value::Date(i32::try_from(t.div_euclid(86_400_000_000)).map_err(|_| {
                    format!("cannot cast timestamp {} to date", format_timestamp(t))
                })?)
            }
            (Cast::Date, Value::Text(s)) => match parse_date(s.trim())
                .ok()
                .and_then(|d| i32::try_from(d).ok())
            {
                Some(d) => Value::Date(d),
                None => return fail(&Value::Text(s)),
            },
            (Cast::Time, v @ Value::Time(_)) => v,
            (Cast::Time, Value::Text(s)) => match parse_time(s.trim()) {
                Ok(t) => Value::Time(t),
                Err(_) => return fail(&Value::Text(s)),
            },
            (Cast::Json, v @ Value::Json(_)) => v,
            (Cast::Json, Value::Text(s)) => match serde_json::from_str::<serde_json::Value>(&s) {
                Ok(_) => Value::Json(s),
                Err(_) => return fail(&Value::Text(s)),
            },
            (Cast::Json, Value::Int(i)) => Value::Json(i.to_string()),
            (Cast::Json, Value::Bool(b)) => Value::Json(b.to_string()),
            (Cast::Json, Value::Decimal(d)) => Value::Json(d.as_str().to_owned()),
            (Cast::Bytes, v @ Value::Bytes(_)) => v,
            (Cast::Bytes, Value::Text(s)) => Value::Bytes(s.into_bytes()),
            (_, v) => return fail(&v),
        })
    }
}

fn decimal(text: &str) -> Result<Decimal, String> {
    Decimal::parse(text).map_err(|e| e.to_string())
}

/// An RFC 3339 timestamp; one without an offset is taken as UTC (timestamps are kept in one
/// unit everywhere: microseconds since the epoch, UTC).
fn parse_timestamp_utc(text: &str) -> Option<i64> {
    tidesync_core::time::parse_timestamp(text)
        .or_else(|_| tidesync_core::time::parse_timestamp(&format!("{text}Z")))
        .ok()
}

/// Where a model field's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldFrom {
    /// A column of the query's result.
    Column(String),
    /// The same value in every row (e.g. which ERP the rows come from).
    Value(Value),
}

/// One model field of a stream: `{ name = "price", column = "unit_price", cast = "decimal" }`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    pub name: String,
    pub from: FieldFrom,
    pub cast: Option<Cast>,
}

/// A field resolved against the query's columns.
#[derive(Debug, Clone)]
pub(crate) enum Resolved {
    Column { at: usize, cast: Option<Cast> },
    Constant(Value),
}

/// Maps a query row to the model's values.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    pub(crate) stream: String,
    /// The model's field names, in order.
    pub(crate) names: Vec<String>,
    pub(crate) fields: Vec<Resolved>,
    /// Positions (in `names`) of the key fields, in key order.
    pub(crate) key_at: Vec<usize>,
    /// The key fields' names, in key order.
    pub(crate) key_names: Vec<String>,
}

impl Mapping {
    /// The model row of one query row; the error names the field.
    pub(crate) fn apply(&self, row: &mut [Value]) -> Result<Vec<Value>, String> {
        let mut out = Vec::with_capacity(self.fields.len());
        for (field, name) in self.fields.iter().zip(&self.names) {
            out.push(match field {
                Resolved::Column { at, cast: None } => {
                    std::mem::replace(&mut row[*at], Value::Null)
                }
                Resolved::Column {
                    at,
                    cast: Some(cast),
                } => cast
                    .apply(std::mem::replace(&mut row[*at], Value::Null))
                    .map_err(|e| format!("field {name}: {e}"))?,
                Resolved::Constant(v) => v.clone(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn casts_normalize_what_erps_store() {
        let d = |s: &str| Value::Decimal(Decimal::parse(s).unwrap());
        assert_eq!(
            Cast::Decimal.apply(Value::Text(" 12.50 ".into())).unwrap(),
            d("12.50")
        );
        assert_eq!(Cast::Decimal.apply(Value::Int(7)).unwrap(), d("7"));
        assert_eq!(Cast::Int.apply(d("42")).unwrap(), Value::Int(42));
        assert_eq!(
            Cast::Int.apply(Value::Text("0042".into())).unwrap(),
            Value::Int(42)
        );
        assert_eq!(
            Cast::Text.apply(Value::Int(5)).unwrap(),
            Value::Text("5".into())
        );
        assert_eq!(
            Cast::Bool.apply(Value::Text("Y".into())).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            Cast::Timestamp
                .apply(Value::Text("2024-03-01 10:00:00".into()))
                .unwrap(),
            Cast::Timestamp
                .apply(Value::Text("2024-03-01T10:00:00Z".into()))
                .unwrap()
        );
        assert_eq!(
            Cast::Date
                .apply(Value::Timestamp(86_400_000_000 + 5))
                .unwrap(),
            Value::Date(1)
        );
        assert_eq!(Cast::Json.apply(Value::Null).unwrap(), Value::Null);
    }

    #[test]
    fn a_failed_cast_names_the_value_and_kind() {
        assert_eq!(
            Cast::Int.apply(Value::Text("12a".into())).unwrap_err(),
            "cannot cast text \"12a\" to int"
        );
        assert_eq!(
            Cast::Int
                .apply(Value::Decimal(Decimal::parse("1.5").unwrap()))
                .unwrap_err(),
            "cannot cast decimal 1.5 to int"
        );
        assert!(Cast::Json.apply(Value::Text("{".into())).is_err());
        assert!(Cast::Timestamp.apply(Value::Int(5)).is_err());
    }

    #[test]
    fn mapping_renames_casts_and_adds_constants() {
        let m = Mapping {
            stream: "items".into(),
            names: vec!["id".into(), "price".into(), "origin".into()],
            fields: vec![
                Resolved::Column { at: 1, cast: None },
                Resolved::Column {
                    at: 0,
                    cast: Some(Cast::Decimal),
                },
                Resolved::Constant(Value::Text("erp-a".into())),
            ],
            key_at: vec![0],
            key_names: vec!["id".into()],
        };
        let mut row = vec![Value::Text("9.90".into()), Value::Int(3)];
        assert_eq!(
            m.apply(&mut row).unwrap(),
            vec![
                Value::Int(3),
                Value::Decimal(Decimal::parse("9.90").unwrap()),
                Value::Text("erp-a".into())
            ]
        );
        let mut bad = vec![Value::Text("x".into()), Value::Int(3)];
        assert_eq!(
            m.apply(&mut bad).unwrap_err(),
            "field price: cannot cast text \"x\" to decimal"
        );
    }
}
