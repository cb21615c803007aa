//! [`Value`]: one typed cell of a row.
//!
//! Every source type maps onto one of these variants explicitly, and nothing converts silently
//! into a lossier one: a decimal stays its exact text (`12.50` keeps its scale), timestamps are
//! microseconds in UTC, floats compare bit for bit (so `-0.0`, `NaN` and `0.0` stay distinct).
//!
//! The serde form of a value is its JSON form: JSON's own types where they are exact (null,
//! bool, integers, finite floats, which `serde_json` always writes with a `.` or an exponent so
//! they read back as floats) and a one-key object for the rest:
//! `{"$decimal":"12.50"}`, `{"$timestamp":"2026-11-23T14:21:00.000000Z"}`, `{"$date":"2026-11-23"}`,
//! `{"$time":"14:21:00.000000"}`, `{"$bytes":"<base64>"}`, `{"$json":"<json text>"}`,
//! `{"$float":"NaN"|"inf"|"-inf"}`.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time;

/// A value that could not be built from its text form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(
        "invalid decimal `{0}`: expected digits with an optional sign and fraction, NaN or [-]Infinity"
    )]
    Decimal(String),
    #[error(transparent)]
    Time(#[from] time::TimeParseError),
    #[error("invalid base64 in a bytes value: {0}")]
    Base64(String),
}

/// An exact decimal number kept as validated canonical text (`-?digits(.digits)?`, `NaN`,
/// `Infinity`, `-Infinity`). Text, not a fixed-width type: MySQL DECIMAL(65,30) and PostgreSQL
/// NUMERIC exceed every 128-bit decimal type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Decimal(String);

impl Decimal {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        if matches!(text, "NaN" | "Infinity" | "-Infinity") {
            return Ok(Decimal(text.to_owned()));
        }
        let digits = text.strip_prefix('-').unwrap_or(text);
        let (int, frac) = match digits.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (digits, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if all_digits(int) && frac.is_none_or(all_digits) {
            Ok(Decimal(text.to_owned()))
        } else {
            Err(ValueError::Decimal(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One typed cell.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Decimal(Decimal),
    Text(String),
    Bytes(Vec<u8>),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// JSON document text, kept exactly as the source wrote it.
    Json(String),
}

impl Value {
    /// The name of the variant, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Decimal(_) => "decimal",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Timestamp(_) => "timestamp",
            Value::Date(_) => "date",
            Value::Time(_) => "time",
            Value::Json(_) => "json",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// Bitwise equality for floats: sync compares what was stored, not arithmetic (so `0.0` and
/// `-0.0` differ). Every NaN equals every other NaN: no database or text form keeps a NaN's
/// payload bits, so only "not a number" is data.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            (Decimal(a), Decimal(b)) => a == b,
            (Text(a), Text(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Date(a), Date(b)) => a == b,
            (Time(a), Time(b)) => a == b,
            (Json(a), Json(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl fmt::Display for Value {
    /// A plain text rendering for people (status output, error messages).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Decimal(d) => f.write_str(d.as_str()),
            Value::Text(s) | Value::Json(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => {
                f.write_str("0x")?;
                b.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
            Value::Timestamp(t) => f.write_str(&time::format_timestamp(*t)),
            Value::Date(d) => f.write_str(&time::format_date(i64::from(*d))),
            Value::Time(t) => f.write_str(&time::format_time(*t)),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl From<Decimal> for Value {
    fn from(v: Decimal) -> Self {
        Value::Decimal(v)
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tagged = |s: S, tag: &str, text: &str| {
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry(tag, text)?;
            map.end()
        };
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(x) if x.is_finite() => s.serialize_f64(*x),
            Value::Float(x) => tagged(
                s,
                "$float",
                if x.is_nan() {
                    "NaN"
                } else if *x > 0.0 {
                    "inf"
                } else {
                    "-inf"
                },
            ),
            Value::Decimal(d) => tagged(s, "$decimal", d.as_str()),
            Value::Text(t) => s.serialize_str(t),
            Value::Bytes(b) => tagged(s, "$bytes", &B64.encode(b)),
            Value::Timestamp(t) => tagged(s, "$timestamp", &time::format_timestamp(*t)),
            Value::Date(d) => tagged(s, "$date", &time::format_date(i64::from(*d))),
            Value::Time(t) => tagged(s, "$time", &time::format_time(*t)),
            Value::Json(j) => tagged(s, "$json", j),
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a tidesync value: null, bool, number, string or a one-key {\"$type\": text} object",
        )
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        // An integer above i64::MAX (e.g. MySQL's unsigned BIGINT) stays exact as a decimal.
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or_else(|_| Value::Decimal(Decimal(v.to_string()))))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Text(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Text(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Some(tag) = map.next_key::<String>()? else {
            return Err(de::Error::custom("empty object is not a value"));
        };
        let text: String = map.next_value()?;
        if map.next_key::<String>()?.is_some() {
            return Err(de::Error::custom(format!(
                "a `{tag}` value object must have exactly one key"
            )));
        }
        let value = match tag.as_str() {
            "$decimal" => Decimal::parse(&text).map(Value::Decimal),
            "$bytes" => B64
                .decode(text.as_bytes())
                .map(Value::Bytes)
                .map_err(|e| ValueError::Base64(e.to_string())),
            "$timestamp" => time::parse_timestamp(&text)
                .map(Value::Timestamp)
                .map_err(Into::into),
            "$date" => time::parse_date(&text)
                .map_err(ValueError::from)
                .and_then(|d| {
                    i32::try_from(d).map_err(|_| {
                        ValueError::Time(time::TimeParseError {
                            what: "date",
                            text: text.clone(),
                            expected: "a date within ±5.8 million years",
                        })
                    })
                })
                .map(Value::Date),
            "$time" => time::parse_time(&text).map(Value::Time).map_err(Into::into),
            "$json" => Ok(Value::Json(text)),
            "$float" => match text.as_str() {
                "NaN" => Ok(Value::Float(f64::NAN)),
                "inf" => Ok(Value::Float(f64::INFINITY)),
                "-inf" => Ok(Value::Float(f64::NEG_INFINITY)),
                _ => {
                    return Err(de::Error::custom(format!(
                        "invalid $float `{text}`: expected NaN, inf or -inf"
                    )));
                }
            },
            other => {
                return Err(de::Error::custom(format!(
                    "unknown value type `{other}`: expected one of $decimal, $bytes, $timestamp, $date, $time, $json, $float"
                )));
            }
        };
        value.map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every variant, across its whole range (NaN payloads included).
    pub(crate) fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(|bits| Value::Float(f64::from_bits(bits))),
            (
                any::<bool>(),
                "[0-9]{1,40}",
                proptest::option::of("[0-9]{1,30}")
            )
                .prop_map(|(neg, int, frac)| {
                    let mut s = if neg { format!("-{int}") } else { int };
                    if let Some(f) = frac {
                        s = format!("{s}.{f}");
                    }
                    Value::Decimal(Decimal::parse(&s).unwrap())
                }),
            prop_oneof![Just("NaN"), Just("Infinity"), Just("-Infinity")]
                .prop_map(|s| Value::Decimal(Decimal::parse(s).unwrap())),
            ".*".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Bytes),
            any::<i64>().prop_map(Value::Timestamp),
            (-2_000_000_000i32..2_000_000_000).prop_map(Value::Date),
            (0..=time::MICROS_PER_DAY).prop_map(Value::Time),
            ".*".prop_map(|s| Value::Json(serde_json::to_string(&s).unwrap())),
        ]
    }

    #[test]
    fn decimals_are_validated_and_keep_their_scale() {
        assert_eq!(Decimal::parse("12.50").unwrap().as_str(), "12.50");
        assert!(Decimal::parse("-0.000").is_ok());
        for bad in ["", "1.", ".5", "1e5", "+1", "1,5", "--1", "NaNs"] {
            assert!(Decimal::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn floats_compare_bitwise() {
        assert_eq!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
        assert_ne!(Value::Int(1), Value::Float(1.0));
    }

    #[test]
    fn json_form_uses_native_types_where_exact() {
        let row = vec![
            Value::Int(7),
            Value::Float(1.0),
            Value::Text("a".into()),
            Value::Decimal(Decimal::parse("12.50").unwrap()),
            Value::Null,
        ];
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"[7,1.0,"a",{"$decimal":"12.50"},null]"#
        );
    }

    #[test]
    fn unsigned_above_i64_becomes_exact_decimal() {
        let v: Value = serde_json::from_str("18446744073709551615").unwrap();
        assert_eq!(
            v,
            Value::Decimal(Decimal::parse("18446744073709551615").unwrap())
        );
    }

    #[test]
    fn bad_tagged_values_name_the_problem() {
        let err = serde_json::from_str::<Value>(r#"{"$decimal":"1e5"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid decimal `1e5`"), "{err}");
        let err = serde_json::from_str::<Value>(r#"{"$money":"1"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown value type `$money`"),
            "{err}"
        );
        let err = serde_json::from_str::<Value>(r#"{"$date":"2026-02-30"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid date"), "{err}");
    }

    proptest! {
        #[test]
        fn every_value_round_trips_through_json(v in any_value()) {
            let text = serde_json::to_string(&v).unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, v, "json was {}", text);
        }
    }
}
