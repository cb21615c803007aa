#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

fn canon_of(class: Class, v: Value) -> Value {
    canon(class, v, &mut Oracle::default()).unwrap()
}

fn dec(s: &str) -> Value {
    Value::Decimal(Decimal::parse(s).unwrap())
}

#[test]
fn affinity_follows_sqlite_rules_in_order() {
    use Affinity::*;
    for (declared, affinity) in [
        ("INTEGER", Integer),
        ("BIGINT", Integer),
        ("POINT INT", Integer),
        ("VARCHAR(20)", Text),
        ("CLOB", Text),
        ("BLOB", Blob),
        ("", Blob),
        ("DOUBLE PRECISION", Real),
        ("FLOATING POINT", Integer), // "INT" matches first, as in SQLite
        ("NUMERIC", Numeric),
        ("DECIMAL(10,2)", Numeric),
        ("BOOLEAN", Numeric),
        ("DATETIME", Numeric),
    ] {
        assert_eq!(Affinity::of(declared), affinity, "{declared}");
    }
}

#[test]
fn sqlite_affinity_is_applied_by_sqlite_itself() {
    use Affinity::*;
    let cases = [
        (Numeric, Value::Text("1.50".into()), Value::Float(1.5)),
        (Numeric, Value::Text("1.00".into()), Value::Int(1)),
        (Numeric, Value::Float(2.0), Value::Int(2)),
        (Numeric, Value::Text(" 12 ".into()), Value::Int(12)),
        (
            Numeric,
            Value::Text("12 apples".into()),
            Value::Text("12 apples".into()),
        ),
        (Integer, dec("12.50"), Value::Float(12.5)),
        (Text, Value::Int(7), Value::Text("7".into())),
        (Text, Value::Float(12.5), Value::Text("12.5".into())),
        (Real, Value::Int(3), Value::Float(3.0)),
        (Real, Value::Text("2.5".into()), Value::Float(2.5)),
        (Blob, Value::Text("1".into()), Value::Text("1".into())),
        // What the sink binds: bools as 0/1, times as ISO text.
        (Integer, Value::Bool(true), Value::Int(1)),
        (
            Text,
            Value::Timestamp(0),
            Value::Text("1970-01-01T00:00:00.000000Z".into()),
        ),
        (Text, dec("1.50"), Value::Text("1.50".into())),
    ];
    for (affinity, input, expected) in cases {
        let got = canon_of(Class::Sqlite(affinity), input.clone());
        assert_eq!(got, expected, "{affinity:?} {input:?}");
        // Idempotent: the target's own stored value stays as it is.
        assert_eq!(canon_of(Class::Sqlite(affinity), got.clone()), got);
    }
}

#[test]
fn numeric_keeps_the_input_scale_without_a_typmod() {
    for (input, out) in [
        ("12.50", "12.50"),
        ("12.5", "12.5"),
        ("0012", "12"),
        ("-0.00", "0.00"),
        ("1e-7", "0.0000001"),
        ("1.5e3", "1500"),
        ("1.0", "1.0"),
        (" 7 ", "7"),
        ("+3.25", "3.25"),
        (".5", "0.5"),
        ("5.", "5"),
        ("NaN", "NaN"),
        ("-inf", "-Infinity"),
        ("Infinity", "Infinity"),
    ] {
        assert_eq!(numeric_text(input, None).as_deref(), Some(out), "{input}");
    }
    for bad in [
        "",
        ".",
        "abc",
        "1e",
        "1.2.3",
        "--1",
        "1e99999999999",
        "0x10",
        "+NaN",
    ] {
        assert_eq!(numeric_text(bad, None), None, "{bad:?}");
    }
}

#[test]
fn numeric_with_a_scale_rounds_half_away_from_zero() {
    for (input, scale, out) in [
        ("12.5", 2, "12.50"),
        ("0.005", 2, "0.01"),
        ("-0.005", 2, "-0.01"),
        ("0.004", 2, "0.00"),
        ("9.995", 2, "10.00"),
        ("7", 2, "7.00"),
        ("1234.5", -2, "1200"),
        ("1250", -2, "1300"),
        ("0.5", 0, "1"),
    ] {
        assert_eq!(
            numeric_text(input, Some(scale)).as_deref(),
            Some(out),
            "{input} {scale}"
        );
    }
    assert_eq!(numeric_text("Infinity", Some(2)), None);
    assert_eq!(numeric_scale(-1), None);
    // numeric(12,2) and numeric(5,-2) typmods as PostgreSQL stores them.
    assert_eq!(numeric_scale(((12 << 16) | 2) + 4), Some(2));
    assert_eq!(numeric_scale(((5 << 16) | (-2i32 & 0x7ff)) + 4), Some(-2));
}

#[test]
fn sqlite_values_map_onto_postgres_classes_as_the_sink_writes_them() {
    let numeric = Class::PgNumeric { scale: None };
    let cases = [
        // SQLite NUMERIC affinity turned '12.50' into the REAL 12.5; the sink sends "12.5".
        (numeric, Value::Float(12.5), dec("12.5")),
        (numeric, Value::Int(12), dec("12")),
        (numeric, Value::Text("12.50".into()), dec("12.50")),
        (numeric, Value::Float(1e21), dec("1000000000000000000000")),
        (
            Class::PgNumeric { scale: Some(2) },
            Value::Int(7),
            dec("7.00"),
        ),
        (Class::PgInt, Value::Float(3.0), Value::Int(3)),
        (Class::PgInt, Value::Text(" 42".into()), Value::Int(42)),
        (Class::PgInt, Value::Bool(true), Value::Int(1)),
        (Class::PgFloat8, Value::Int(3), Value::Float(3.0)),
        (
            Class::PgFloat8,
            Value::Text("0.1".into()),
            Value::Float(0.1),
        ),
        (
            Class::PgFloat4,
            Value::Float(0.1),
            Value::Float(f64::from(0.1f32)),
        ),
        (Class::PgBool, Value::Int(1), Value::Bool(true)),
        (Class::PgBool, Value::Text("off".into()), Value::Bool(false)),
        (
            Class::PgText {
                blank_padded: false,
            },
            Value::Float(1.0),
            Value::Text("1.0".into()),
        ),
        (
            Class::PgText {
                blank_padded: false,
            },
            Value::Int(5),
            Value::Text("5".into()),
        ),
        (
            Class::PgText { blank_padded: true },
            Value::Text("ab   ".into()),
            Value::Text("ab".into()),
        ),
        (
            Class::PgBytea,
            Value::Text("hi".into()),
            Value::Bytes(b"hi".to_vec()),
        ),
        (
            Class::PgTimestamp { zoned: true },
            Value::Text("2026-11-23T10:00:00+02:00".into()),
            Value::Timestamp(1_795_420_800_000_000),
        ),
        (
            Class::PgTimestamp { zoned: false },
            Value::Text("2026-11-23 10:00:00+02".into()),
            Value::Timestamp(1_795_428_000_000_000),
        ),
        (
            Class::PgTimestamp { zoned: true },
            Value::Text("Infinity".into()),
            Value::Text("infinity".into()),
        ),
        (
            Class::PgDate,
            Value::Text("2026-11-23T23:00:00-05".into()),
            Value::Date(20_780),
        ),
        (
            Class::PgTime,
            Value::Text("10:00".into()),
            Value::Time(36_000_000_000),
        ),
        (
            Class::PgJsonb,
            Value::Text(r#"{"b": 1, "a": [true, null]}"#.into()),
            Value::Json(r#"{"a":[true,null],"b":1}"#.into()),
        ),
        (
            Class::PgJson,
            Value::Text(r#"{"b": 1}"#.into()),
            Value::Json(r#"{"b": 1}"#.into()),
        ),
        (
            Class::PgUuid,
            Value::Text("{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}".into()),
            Value::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
        ),
        (Class::PgOther, Value::Int(5), Value::Text("5".into())),
    ];
    for (class, input, expected) in cases {
        let got = canon_of(class, input.clone());
        assert_eq!(got, expected, "{class:?} {input:?}");
        assert_eq!(canon_of(class, got.clone()), got, "idempotent: {class:?}");
    }
}

#[test]
fn values_the_pipeline_could_not_have_written_stay_different() {
    // The sink's write fails (the pipeline stops), so nothing in the target can equal them.
    assert_eq!(
        canon_of(Class::PgInt, Value::Text("abc".into())),
        Value::Text("abc".into())
    );
    assert_eq!(canon_of(Class::PgInt, Value::Float(1.5)), Value::Float(1.5));
    assert_eq!(canon_of(Class::PgBool, Value::Int(2)), Value::Int(2));
    assert_eq!(
        canon_of(
            Class::PgTimestamp { zoned: true },
            Value::Text("soon".into())
        ),
        Value::Text("soon".into())
    );
    assert_eq!(
        canon_of(Class::PgInt, Value::Null),
        Value::Null,
        "null is null in every class"
    );
}

#[test]
fn postgres_input_spellings() {
    assert_eq!(parse_pg_int(" -12 "), Some(-12));
    assert_eq!(parse_pg_int("+5"), Some(5));
    for bad in ["", "-", "1.0", "1e3", "9223372036854775808", "0x10"] {
        assert_eq!(parse_pg_int(bad), None, "{bad:?}");
    }
    assert_eq!(parse_pg_float(" 1e3 ", false), Some(1000.0));
    assert!(parse_pg_float("nan", false).unwrap().is_nan());
    assert_eq!(parse_pg_float("-Infinity", false), Some(f64::NEG_INFINITY));
    assert_eq!(parse_pg_float("1e400", false), None, "overflow is an error");
    assert_eq!(
        parse_pg_float("1e-400", false),
        None,
        "underflow is an error"
    );
    assert_eq!(parse_pg_float("0", false), Some(0.0));
    assert_eq!(parse_pg_float("1e39", true), None, "float4 overflow");
    for (t, v) in [
        ("t", true),
        ("TRUE", true),
        ("ye", true),
        ("on", true),
        ("1", true),
    ] {
        assert_eq!(parse_pg_bool(t), Some(v), "{t}");
    }
    for (t, v) in [
        ("f", false),
        ("no", false),
        ("of", false),
        ("OFF", false),
        ("0", false),
    ] {
        assert_eq!(parse_pg_bool(t), Some(v), "{t}");
    }
    for bad in ["o", "2", "truth", ""] {
        assert_eq!(parse_pg_bool(bad), None, "{bad:?}");
    }
}

#[test]
fn timestamp_fractions_round_like_postgres() {
    // PostgreSQL: rint(0.1234565 * 1e6) = 123456, rint(0.1234575 * 1e6) = 123458.
    let base = 1_795_428_000_000_000;
    assert_eq!(
        parse_pg_timestamp("2026-11-23 10:00:00.1234565", false),
        Some(PgInstant::At(base + 123_456))
    );
    assert_eq!(
        parse_pg_timestamp("2026-11-23 10:00:00.1234575", false),
        Some(PgInstant::At(base + 123_458))
    );
    assert_eq!(
        parse_pg_timestamp("2026-11-23", true),
        Some(PgInstant::At(1_795_392_000_000_000))
    );
    assert_eq!(
        parse_pg_timestamp("2026-11-23T10:00:00 UTC", true),
        Some(PgInstant::At(base))
    );
    assert_eq!(
        parse_pg_timestamp("2026-11-23T12:30:00+0230", true),
        Some(PgInstant::At(base))
    );
    for bad in [
        "2026-02-30",
        "2026-11-23T25:00",
        "Nov 23 2026",
        "2026-11-23T10:00:00+02:00x",
    ] {
        assert_eq!(parse_pg_timestamp(bad, true), None, "{bad:?}");
    }
}

#[test]
fn key_order_compares_decimals_by_value() {
    use std::cmp::Ordering::*;
    for (a, b, o) in [
        ("9", "10", Less),
        ("-1.5", "-1.25", Less),
        ("0.50", "0.5", Equal),
        ("-0", "0", Equal),
        ("NaN", "Infinity", Greater),
        ("-Infinity", "-99999", Less),
    ] {
        assert_eq!(cmp_value(&dec(a), &dec(b)), o, "{a} vs {b}");
    }
    assert_eq!(cmp_value(&Value::Int(2), &Value::Float(2.5)), Less);
    assert_eq!(cmp_value(&Value::Int(3), &dec("2.99")), Greater);
}

proptest! {
    #[test]
    fn numeric_text_is_idempotent(
        int in "[0-9]{1,20}",
        frac in proptest::option::of("[0-9]{1,12}"),
        exp in proptest::option::of(-30i32..30),
        neg in any::<bool>(),
        scale in proptest::option::of(-3i32..8),
    ) {
        let mut text = format!("{}{int}", if neg { "-" } else { "" });
        if let Some(f) = frac {
            text = format!("{text}.{f}");
        }
        if let Some(e) = exp {
            text = format!("{text}e{e}");
        }
        let once = numeric_text(&text, scale).unwrap();
        prop_assert_eq!(numeric_text(&once, scale).unwrap(), once.clone());
        prop_assert!(Decimal::parse(&once).is_ok(), "{}", once);
    }

    #[test]
    fn parsers_never_panic_on_garbage(text in ".{0,40}") {
        let _ = numeric_text(&text, None);
        let _ = numeric_text(&text, Some(2));
        let _ = parse_pg_timestamp(&text, true);
        let _ = parse_pg_time(&text);
        let _ = parse_pg_int(&text);
        let _ = parse_pg_float(&text, true);
        let _ = parse_pg_bool(&text);
        let _ = normalize_uuid(&text);
    }

    #[test]
    fn float_round_trips_through_float8_text(bits in any::<u64>()) {
        let f = f64::from_bits(bits);
        // NaN payloads are not kept by any text form (PostgreSQL has one NaN).
        prop_assume!(!f.is_nan());
        let got = canon_of(Class::PgFloat8, Value::Text(float_text(f)));
        prop_assert_eq!(got, Value::Float(f));
    }
}
