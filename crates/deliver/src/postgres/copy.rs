//! Inserting rows with `COPY .. FROM STDIN` instead of `INSERT .. ON CONFLICT`.
//!
//! A run of inserts (`Insert` and snapshot `Read` changes, never `Update`) usually meets no
//! existing row: an initial copy into an empty table, new rows while streaming. For those,
//! `COPY` is much cheaper for the server than an upsert (no speculative insertion, no
//! per-parameter expressions; measured in bench/RESULTS.md). When a row does exist, `COPY`
//! fails with a unique violation, which aborts the transaction: the sink then rolls the batch
//! back and applies it again with upserts only, so the result is always the upsert's. The same
//! holds for any other definite error (invalid input, a view, row security): the upsert replay
//! either succeeds or names the failing change exactly as it would have without `COPY`. After
//! a failed `COPY`, a table's next runs skip it for a while ([`Backoff`]), so a target that
//! already holds the rows costs little more than upserts alone.
//!
//! Values are written in `COPY`'s text format (tab-separated, `\N` for null, backslash
//! escapes; PostgreSQL docs, "COPY", "Text Format"), converted first by the same `bind` as the
//! upsert's parameters, so what reaches a column is the same value: ints range-checked for
//! narrow columns, integral floats into integer columns, bytes as bytea hex, timestamps, dates
//! and times in ISO 8601 (the session's TimeZone is UTC), everything else as the text the
//! column type's input function parses. A timestamp or date whose year has no ISO form
//! PostgreSQL reads (before year 1 or after 9999), or a time outside the day, makes the run
//! use the upsert instead.

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::BytesMut;
use tidesync_core::time::{MICROS_PER_DAY, MICROS_PER_SECOND, civil_from_days};
use tidesync_core::{LogEntry, Op};

use super::bind::{Bound, PG_EPOCH_DAYS, PG_EPOCH_US};

/// Runs shorter than this use the upsert: `COPY` costs one more round trip.
pub(crate) const MIN_ROWS: usize = 2;

/// Whether a run of upserts may go through `COPY`: only inserts, of which there are enough.
pub(crate) fn eligible(entries: &[&LogEntry]) -> bool {
    entries.len() >= MIN_ROWS
        && entries
            .iter()
            .all(|e| matches!(e.change.op, Op::Insert | Op::Read))
}

/// A value `COPY`'s text format cannot carry exactly as the upsert would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotCopyable;

/// Appends one row (its values in column order) as a line of `COPY` text.
pub(crate) fn put_row(out: &mut BytesMut, values: &[Bound<'_>]) -> Result<(), NotCopyable> {
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\t");
        }
        put_value(out, value)?;
    }
    out.extend_from_slice(b"\n");
    Ok(())
}

fn put_value(out: &mut BytesMut, value: &Bound<'_>) -> Result<(), NotCopyable> {
    // `write!` into a BytesMut cannot fail (it grows).
    match value {
        Bound::Null => out.extend_from_slice(b"\\N"),
        Bound::Int8(v) => put_int(out, *v),
        Bound::Int4(v) => put_int(out, i64::from(*v)),
        Bound::Int2(v) => put_int(out, i64::from(*v)),
        Bound::Float8(v) => put_float(out, *v, v.is_nan(), v.is_infinite()),
        Bound::Float4(v) => put_float(out, *v, v.is_nan(), v.is_infinite()),
        Bound::Bool(v) => out.extend_from_slice(if *v { b"t" } else { b"f" }),
        Bound::Bytes(bytes) => {
            // bytea's hex input `\x0a..`, its backslash escaped for COPY.
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.reserve(3 + 2 * bytes.len());
            out.extend_from_slice(b"\\\\x");
            for b in *bytes {
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
        }
        Bound::Timestamp(pg_us) => {
            let unix_us = pg_us.checked_add(PG_EPOCH_US).ok_or(NotCopyable)?;
            put_date(out, unix_us.div_euclid(MICROS_PER_DAY))?;
            out.extend_from_slice(b"T");
            put_time(out, unix_us.rem_euclid(MICROS_PER_DAY))?;
            // For timestamp (without time zone) PostgreSQL ignores the zone: the UTC wall
            // clock, as the binary form.
            out.extend_from_slice(b"Z");
        }
        Bound::Date(pg_days) => put_date(out, i64::from(*pg_days) + i64::from(PG_EPOCH_DAYS))?,
        Bound::Time(us) => put_time(out, *us)?,
        Bound::Text(text) => put_text(out, text),
    }
    Ok(())
}

/// The shortest text that reads back as the same float; `NaN` and `±Infinity` by name.
fn put_float<F: std::fmt::Debug + PartialOrd + Default>(
    out: &mut BytesMut,
    v: F,
    nan: bool,
    infinite: bool,
) {
    if nan {
        out.extend_from_slice(b"NaN");
    } else if infinite {
        out.extend_from_slice(if v > F::default() {
            b"Infinity"
        } else {
            b"-Infinity"
        });
    } else {
        let _ = write!(out, "{v:?}");
    }
}

/// Decimal digits of an integer (the formatting machinery is a measurable part of a copy).
fn put_int(out: &mut BytesMut, v: i64) {
    let mut digits = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.extend_from_slice(b"-");
    }
    out.extend_from_slice(&digits[at..]);
}

/// `n` as exactly `width` digits (`n` is below 10^width).
fn put_digits(out: &mut BytesMut, n: u64, width: usize) {
    let mut digits = [b'0'; 6];
    let mut n = n;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// `YYYY-MM-DD` for days since 1970-01-01; years 1 to 9999 only.
fn put_date(out: &mut BytesMut, unix_days: i64) -> Result<(), NotCopyable> {
    let (y, m, d) = civil_from_days(unix_days);
    let year = u64::try_from(y)
        .ok()
        .filter(|y| (1..=9999).contains(y))
        .ok_or(NotCopyable)?;
    put_digits(out, year, 4);
    out.extend_from_slice(b"-");
    put_digits(out, u64::from(m), 2);
    out.extend_from_slice(b"-");
    put_digits(out, u64::from(d), 2);
    Ok(())
}

/// `HH:MM:SS.ffffff` for microseconds since midnight, 0 to 24:00:00 (as SQL allows).
fn put_time(out: &mut BytesMut, us: i64) -> Result<(), NotCopyable> {
    if !(0..=MICROS_PER_DAY).contains(&us) {
        return Err(NotCopyable);
    }
    let secs = us.unsigned_abs() / MICROS_PER_SECOND.unsigned_abs();
    let frac = us.unsigned_abs() % MICROS_PER_SECOND.unsigned_abs();
    put_digits(out, secs / 3600, 2);
    out.extend_from_slice(b":");
    put_digits(out, secs / 60 % 60, 2);
    out.extend_from_slice(b":");
    put_digits(out, secs % 60, 2);
    out.extend_from_slice(b".");
    put_digits(out, frac, 6);
    Ok(())
}

/// Text with COPY's escapes for the characters that end a value or a line, and backslash.
fn put_text(out: &mut BytesMut, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Per table: after a failed `COPY`, skip it for the next 1, 2, 4, .. 1024 runs of inserts.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    tables: HashMap<String, TableBackoff>,
}

#[derive(Debug, Default)]
struct TableBackoff {
    failures: u32,
    skip: u32,
}

impl Backoff {
    /// Whether this run of `table` may try `COPY` (counts a skipped run).
    pub(crate) fn try_now(&mut self, table: &str) -> bool {
        match self.tables.get_mut(table) {
            Some(t) if t.skip > 0 => {
                t.skip -= 1;
                false
            }
            _ => true,
        }
    }

    pub(crate) fn failed(&mut self, table: &str) {
        let t = self.tables.entry(table.to_owned()).or_default();
        t.skip = 1 << t.failures.min(10);
        t.failures = t.failures.saturating_add(1);
    }

    pub(crate) fn succeeded(&mut self, table: &str) {
        if self.tables.contains_key(table) {
            self.tables.remove(table);
        }
    }
}
