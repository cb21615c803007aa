//! Calendar arithmetic for [`crate::Value`]'s date, time and timestamp types.
//!
//! Timestamps are microseconds since 1970-01-01T00:00:00Z (UTC), dates are days since
//! 1970-01-01, times are microseconds since midnight. The text forms are ISO 8601 / RFC 3339
//! with exactly six fractional digits, so formatting then parsing gives back the same number.
//! Years outside 0000..=9999 are written with a sign and at least six digits (ISO 8601's
//! expanded form), so the whole `i64` microsecond range round-trips.
//!
//! The day/civil conversions are Howard Hinnant's `days_from_civil` / `civil_from_days`.

use std::fmt::Write as _;

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// Why a date, time or timestamp text did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{text}`: expected {expected}")]
pub struct TimeParseError {
    pub what: &'static str,
    pub text: String,
    pub expected: &'static str,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

fn write_year(out: &mut String, year: i64) {
    if (0..=9999).contains(&year) {
        let _ = write!(out, "{year:04}");
    } else {
        let _ = write!(out, "{year:+07}");
    }
}

/// `YYYY-MM-DD` for a day count.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    let mut out = String::with_capacity(10);
    write_year(&mut out, y);
    let _ = write!(out, "-{m:02}-{d:02}");
    out
}

/// `HH:MM:SS.ffffff` for microseconds since midnight (0 ..= 24h; 24:00:00 is allowed as in SQL).
pub fn format_time(micros: i64) -> String {
    let secs = micros.div_euclid(MICROS_PER_SECOND);
    let frac = micros.rem_euclid(MICROS_PER_SECOND);
    format!(
        "{:02}:{:02}:{:02}.{frac:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Now, in microseconds since 1970-01-01T00:00:00Z (0 on a clock set before 1970).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// RFC 3339 in UTC with six fractional digits: `2026-11-23T14:21:00.000000Z`.
pub fn format_timestamp(micros: i64) -> String {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    let mut out = format_date(days);
    out.push('T');
    out.push_str(&format_time(in_day));
    out.push('Z');
    out
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, min: usize, max: usize) -> Option<i64> {
        let rest = &self.text.as_bytes()[self.pos..];
        let n = rest
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if n < min {
            return None;
        }
        let value = self.text[self.pos..self.pos + n].parse().ok()?;
        self.pos += n;
        Some(value)
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.text.as_bytes().get(self.pos) == Some(&byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn done(&self) -> bool {
        self.pos == self.text.len()
    }
}

fn parse_date_at(c: &mut Cursor<'_>) -> Option<i64> {
    let sign = if c.eat(b'-') {
        -1
    } else {
        c.eat(b'+');
        1
    };
    let year = sign * c.digits(4, 12)?;
    if !c.eat(b'-') {
        return None;
    }
    let month = u32::try_from(c.digits(2, 2)?).ok()?;
    if !c.eat(b'-') {
        return None;
    }
    let day = u32::try_from(c.digits(2, 2)?).ok()?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

fn parse_time_at(c: &mut Cursor<'_>) -> Option<i64> {
    let h = c.digits(2, 2)?;
    if !c.eat(b':') {
        return None;
    }
    let m = c.digits(2, 2)?;
    if !c.eat(b':') {
        return None;
    }
    let s = c.digits(2, 2)?;
    let mut frac = 0;
    if c.eat(b'.') {
        let start = c.pos;
        let digits = c.digits(1, 6)?;
        let width = c.pos - start;
        frac = digits * 10_i64.pow(6 - width as u32);
    }
    if m > 59 || s > 59 || h > 24 || (h == 24 && (m, s, frac) != (0, 0, 0)) {
        return None;
    }
    Some((h * 3600 + m * 60 + s) * MICROS_PER_SECOND + frac)
}

/// Parses `YYYY-MM-DD` into days since 1970-01-01.
pub fn parse_date(text: &str) -> Result<i64, TimeParseError> {
    let mut c = Cursor { text, pos: 0 };
    parse_date_at(&mut c)
        .filter(|_| c.done())
        .ok_or_else(|| TimeParseError {
            what: "date",
            text: text.to_owned(),
            expected: "YYYY-MM-DD",
        })
}

/// Parses `HH:MM:SS[.ffffff]` into microseconds since midnight.
pub fn parse_time(text: &str) -> Result<i64, TimeParseError> {
    let mut c = Cursor { text, pos: 0 };
    parse_time_at(&mut c)
        .filter(|_| c.done())
        .ok_or_else(|| TimeParseError {
            what: "time",
            text: text.to_owned(),
            expected: "HH:MM:SS[.ffffff]",
        })
}

/// Parses an RFC 3339 timestamp (`T` or space separator, `Z` or `±HH:MM` offset, up to six
/// fractional digits) into microseconds since the epoch, UTC.
pub fn parse_timestamp(text: &str) -> Result<i64, TimeParseError> {
    let err = || TimeParseError {
        what: "timestamp",
        text: text.to_owned(),
        expected: "YYYY-MM-DDTHH:MM:SS[.ffffff](Z|±HH:MM)",
    };
    let mut c = Cursor { text, pos: 0 };
    let days = parse_date_at(&mut c).ok_or_else(err)?;
    if !(c.eat(b'T') || c.eat(b' ')) {
        return Err(err());
    }
    let in_day = parse_time_at(&mut c).ok_or_else(err)?;
    let offset_micros = if c.eat(b'Z') {
        0
    } else {
        let sign = if c.eat(b'+') {
            1
        } else if c.eat(b'-') {
            -1
        } else {
            return Err(err());
        };
        let oh = c.digits(2, 2).ok_or_else(err)?;
        if !c.eat(b':') {
            return Err(err());
        }
        let om = c.digits(2, 2).ok_or_else(err)?;
        sign * (oh * 3600 + om * 60) * MICROS_PER_SECOND
    };
    if !c.done() {
        return Err(err());
    }
    // i128: the floor day of i64::MIN times a day's micros is below i64::MIN before the
    // time of day is added back.
    let micros = i128::from(days) * i128::from(MICROS_PER_DAY) + i128::from(in_day)
        - i128::from(offset_micros);
    i64::try_from(micros).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants_format_as_rfc3339() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            format_timestamp(1_795_443_660_123_456),
            "2026-11-23T14:21:00.123456Z"
        );
        assert_eq!(format_date(days_from_civil(2000, 2, 29)), "2000-02-29");
    }

    #[test]
    fn offsets_and_short_fractions_parse() {
        assert_eq!(
            parse_timestamp("2026-11-23T15:21:00.5+01:00").unwrap(),
            1_795_443_660_500_000
        );
        assert_eq!(parse_timestamp("1970-01-01 00:00:00Z").unwrap(), 0);
    }

    #[test]
    fn invalid_calendar_dates_are_rejected() {
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-1-01",
            "2026-01-01x",
        ] {
            assert!(parse_date(bad).is_err(), "{bad} should not parse");
        }
        assert!(parse_time("24:00:01").is_err());
        assert!(parse_timestamp("2026-11-23T14:21:00").is_err());
    }

    proptest! {
        #[test]
        fn timestamp_text_round_trips(micros in any::<i64>()) {
            prop_assert_eq!(parse_timestamp(&format_timestamp(micros)).unwrap(), micros);
        }

        #[test]
        fn date_text_round_trips(days in -100_000_000i64..100_000_000) {
            prop_assert_eq!(parse_date(&format_date(days)).unwrap(), days);
        }

        #[test]
        fn time_text_round_trips(micros in 0..=MICROS_PER_DAY) {
            prop_assert_eq!(parse_time(&format_time(micros)).unwrap(), micros);
        }

        #[test]
        fn garbage_never_panics(text in ".{0,40}") {
            let _ = parse_timestamp(&text);
            let _ = parse_date(&text);
            let _ = parse_time(&text);
        }
    }
}
