//! Time as the contract writes it: Go durations, RFC 3339 timestamps,
//! HTTP dates, and the civil calendar under them.
//!
//! Written by hand because the dependency rule leaves no date crate, and
//! because each form is small and exactly specified: [`parse_duration`]
//! is Go's `time.ParseDuration` (the original server was Go, and its
//! flags and bodies say `1m30s`), [`parse_rfc3339`] is RFC 3339's
//! `date-time`, [`write_timestamp`] writes the one form every timestamp
//! the API shows takes, and the calendar is Howard Hinnant's
//! `civil_from_days` and its inverse. The parsers are pure and tested
//! table-first against what Go and the RFCs say; only the `now_*`
//! functions, [`instant_at`] and [`with_http_date`] read the clock.
//!
//! A task's times are wall-clock milliseconds since the epoch (0 for "not
//! yet"), because they are shown to clients and kept in the journal
//! across restarts; the due-time loop waits for one on the monotonic
//! clock, converting it with [`instant_at`] when it arms its timer.

use crate::json::VecWriter;
use std::cell::Cell;
use std::fmt::Write as _;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Parses a duration exactly as Go's `time.ParseDuration` does — units `ns`,
/// `us`, `µs` (U+00B5), `μs` (U+03BC), `ms`, `s`, `m`, `h`, fractions, a lone
/// `0` — and refuses negative values, which no wait in bgtasks can use.
///
/// Like Go it counts in unsigned 64-bit nanoseconds, refuses anything past
/// `2562047h47m16.854775807s` (`i64::MAX` ns), and truncates fractions below
/// one nanosecond. The error is a sentence for the flag parser's message.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    const LIMIT: u64 = 1 << 63;
    let invalid = || format!("invalid duration {text:?}");
    let (negative, mut s) = match text.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        rest => (false, rest),
    };
    if s == b"0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // The whole part: refuse it as soon as it passes 2^63.
        let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
        let mut whole: u64 = 0;
        for &d in &s[..digits] {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u64::from(d - b'0')))
                .filter(|&w| w <= LIMIT)
                .ok_or_else(invalid)?;
        }
        s = &s[digits..];
        // The fraction: digits past what fits are read and ignored, as Go does.
        let (mut fraction, mut scale, mut fraction_digits) = (0u64, 1f64, 0);
        if let [b'.', rest @ ..] = s {
            fraction_digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let mut overflow = false;
            for &d in &rest[..fraction_digits] {
                match fraction
                    .checked_mul(10)
                    .and_then(|f| f.checked_add(u64::from(d - b'0')))
                {
                    Some(f) if !overflow && fraction <= (LIMIT - 1) / 10 && f <= LIMIT => {
                        fraction = f;
                        scale *= 10.0;
                    }
                    _ => overflow = true,
                }
            }
            s = &rest[fraction_digits..];
        } else if digits == 0 {
            return Err(invalid());
        }
        if digits == 0 && fraction_digits == 0 {
            return Err(invalid());
        }
        let unit_len = s
            .iter()
            .take_while(|&&b| b != b'.' && !b.is_ascii_digit())
            .count();
        let unit: u64 = match &s[..unit_len] {
            b"ns" => 1,
            // "µs" (micro sign) and "μs" (Greek mu) in UTF-8.
            b"us" | b"\xC2\xB5s" | b"\xCE\xBCs" => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            [] => return Err(format!("missing unit in duration {text:?}")),
            _ => return Err(format!("unknown unit in duration {text:?}")),
        };
        s = &s[unit_len..];
        if whole > LIMIT / unit {
            return Err(invalid());
        }
        let mut value = whole * unit;
        if fraction > 0 {
            // Go's own rounding: float64(f) * (float64(unit) / scale).
            value += (fraction as f64 * (unit as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(invalid());
            }
        }
        total = total
            .checked_add(value)
            .filter(|&t| t <= LIMIT)
            .ok_or_else(invalid)?;
    }
    if total > LIMIT - 1 {
        return Err(invalid());
    }
    if negative && total > 0 {
        return Err(format!("negative duration {text:?}"));
    }
    Ok(Duration::from_nanos(total))
}

/// Returns the wall-clock time in microseconds since the epoch.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Returns the wall-clock time in milliseconds since the epoch.
pub(crate) fn now_millis() -> u64 {
    now_micros() / 1000
}

/// Converts days since 1970-01-01 to a (year, month, day) civil date, by
/// Howard Hinnant's `civil_from_days`.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends an RFC 3339 UTC timestamp with milliseconds, quoted, such as
/// `"2026-11-27T20:00:00.123Z"`; 0 means "not yet" and is written `null`.
pub(crate) fn write_timestamp(out: &mut Vec<u8>, millis: u64) {
    if millis == 0 {
        out.extend_from_slice(b"null");
        return;
    }
    // Tuning: the events of a busy moment carry the same time, so each
    // thread keeps the last text it made and copies it while it holds.
    thread_local! {
        static LAST: Cell<(u64, [u8; 26])> = const { Cell::new((0, [0; 26])) };
    }
    let (last, text) = LAST.get();
    if last == millis {
        out.extend_from_slice(&text);
        return;
    }
    let secs = millis / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    // Tuning: every status answer and event has a few of these, and
    // placing digits in a template costs a fraction of `write!`'s
    // formatting.
    let mut text = *b"\"0000-00-00T00:00:00.000Z\"";
    let fields = [
        (1..5, year.rem_euclid(10_000) as u64),
        (6..8, u64::from(month)),
        (9..11, u64::from(day)),
        (12..14, t / 3600),
        (15..17, t / 60 % 60),
        (18..20, t % 60),
        (21..24, millis % 1000),
    ];
    for (place, mut n) in fields {
        for digit in text[place].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    if year < 10_000 {
        LAST.set((millis, text));
        out.extend_from_slice(&text);
    } else {
        // Past the year 9999 (a clock set wrong) the year is wider.
        let _ = write!(VecWriter(out), "\"{year}");
        out.extend_from_slice(&text[5..]);
    }
}

/// Parses an RFC 3339 timestamp with any offset, such as
/// `2026-12-01T03:00:00+01:00`, into milliseconds since the epoch (UTC).
///
/// This is RFC 3339 §5.6 `date-time` exactly: a four-digit year 0000–9999,
/// a date that exists (February 29th only in leap years), a fraction of one
/// or more digits truncated to milliseconds however many there are, and a
/// required `Z` or `±HH:MM` offset. `T` and `Z` may be lowercase, and `T` may
/// be a single space, as §5.6's notes allow, because `date --rfc-3339` and
/// SQL write a space. A leap second (`:60`) is refused, as Go's `time.Parse`
/// refuses it: the epoch count has no place for one. Anything else (missing
/// parts, extra bytes, signs, non-ASCII digits) is `None`.
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    // Reads the fixed-width ASCII number in `range`.
    let number = |range: std::ops::Range<usize>| {
        b.get(range)?.iter().try_fold(0, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    // The shortest timestamp, `YYYY-MM-DDTHH:MM:SSZ`, has 20 bytes.
    if b.len() < 20
        || (b[4], b[7], b[13], b[16]) != (b'-', b'-', b':', b':')
        || !matches!(b[10], b'T' | b't' | b' ')
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let year = i64::from(year);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if let [b'.', fraction @ ..] = rest {
        let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        // Pad to three digits and drop the rest: .5 is 500 ms, .1239 is 123.
        millis = fraction[..digits]
            .iter()
            .chain(b"00")
            .take(3)
            .fold(0, |ms, &d| ms * 10 + i64::from(d - b'0'));
        rest = &fraction[digits..];
    }
    let at = b.len() - rest.len();
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (number(at + 1..at + 3)?, number(at + 4..at + 6)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let minutes = i64::from(hours * 60 + minutes);
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let minutes = (days * 24 + i64::from(hour)) * 60 + i64::from(minute) - offset;
    Some((minutes * 60 + i64::from(second)) * 1000 + millis)
}

/// Converts a (year, month, day) civil date to days since 1970-01-01, by
/// Howard Hinnant's `days_from_civil` (the inverse of `civil_from_days`).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Years start in March here, so that February's leap day ends them.
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * ((i64::from(month) + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Returns the number of days in `month` (1–12) of `year`, by the
/// Gregorian rule: a leap year divides by 4, and by 400 if it divides by 100.
pub(crate) fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Converts a wall-clock time in ms since the epoch to an `Instant`.
pub(crate) fn instant_at(millis: u64) -> Instant {
    Instant::now() + Duration::from_millis(millis.saturating_sub(now_millis()))
}

/// Calls `f` with the current time as an HTTP date (RFC 9110 §5.6.7),
/// such as `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(crate) fn with_http_date(f: impl FnOnce(&[u8])) {
    use std::cell::RefCell;
    // Tuning: the plain version formats the date for each answer; each
    // thread here formats it once a second and keeps it, which spares a
    // `core::fmt` call and a division by 86,400 on every answer.
    thread_local! {
        static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let secs = now_micros() / 1_000_000;
    DATE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            cache.1.clear();
            write_http_date(&mut cache.1, secs);
            cache.0 = secs;
        }
        f(&cache.1);
    });
}

/// Appends an HTTP date for `secs` since the epoch.
fn write_http_date(out: &mut Vec<u8>, secs: u64) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let t = secs % 86_400;
    let _ = write!(
        VecWriter(out),
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[month as usize - 1],
        t / 3600,
        t / 60 % 60,
        t % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    /// Durations Go accepts, with their values in nanoseconds (most from
    /// Go's own `time` tests).
    const GOOD_DURATIONS: &[(&str, u64)] = &[
        ("0", 0),
        ("+0", 0),
        ("-0", 0),
        ("0s", 0),
        ("-0s", 0),
        ("5s", 5_000_000_000),
        ("30s", 30_000_000_000),
        ("1478s", 1_478_000_000_000),
        ("+5s", 5_000_000_000),
        ("5.0s", 5_000_000_000),
        ("5.6s", 5_600_000_000),
        ("5.s", 5_000_000_000),
        (".5s", 500_000_000),
        ("1.0s", 1_000_000_000),
        ("1.00s", 1_000_000_000),
        ("1.004s", 1_004_000_000),
        ("1.0040s", 1_004_000_000),
        ("100.00100s", 100_001_000_000),
        ("10ns", 10),
        ("11us", 11_000),
        ("12µs", 12_000),
        ("12μs", 12_000),
        ("13ms", 13_000_000),
        ("14s", 14_000_000_000),
        ("15m", 900_000_000_000),
        ("16h", 57_600_000_000_000),
        ("3h30m", 12_600_000_000_000),
        ("10.5s4m", 250_500_000_000),
        ("1h2m3s4ms5us6ns", 3_723_004_005_006),
        ("39h9m14.425s", 140_954_425_000_000),
        ("52763797000ns", 52_763_797_000),
        ("0.3333333333333333333h", 1_200_000_000_000),
        ("9007199254740993ns", 9_007_199_254_740_993),
        ("9223372036854775807ns", 9_223_372_036_854_775_807),
        ("9223372036854775.807us", 9_223_372_036_854_775_807),
        ("9223372036s854ms775us807ns", 9_223_372_036_854_775_807),
        ("0.100000000000000000000h", 360_000_000_000),
        ("0.830103483285477580700h", 2_988_372_539_827),
        ("2562047h47m16.854775807s", 9_223_372_036_854_775_807),
        ("1.5h", 5_400_000_000_000),
        ("300ms", 300_000_000),
        ("1m30s", 90_000_000_000),
        ("2h45m", 9_900_000_000_000),
    ];

    /// Strings Go refuses, and negative values, which bgtasks refuses too.
    const BAD_DURATIONS: &[&str] = &[
        "",
        "3",
        "-",
        "+",
        "s",
        ".",
        "-.",
        ".s",
        "+.s",
        "1d",
        "1.5",
        "1 s",
        " 1s",
        "1s ",
        "1S",
        "1sec",
        "1e3s",
        "0x10s",
        "\u{85}\u{85}",
        "\u{ff}ff",
        "hello \u{ff}ff world",
        "-5s",
        "-1ns",
        "-2m3.4s",
        "-9223372036854775808ns",
        "9223372036854775808ns",
        "9223372036854775.808us",
        "9223372036854ms775us808ns",
        "9223372036s854ms775us808ns",
        "2562047h47m16.854775808s",
        "2562048h",
        "3000000h",
        "9223372036854775807ns1ns",
        "18446744073709551616ns",
        "18446744073709551615ns",
        "99999999999999999999s",
        "1844674407370955161.6s",
        "1.5µ",
        "1us1",
    ];

    #[test]
    fn durations_parse_exactly_as_go_does() {
        for &(text, nanos) in GOOD_DURATIONS {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_nanos(nanos)),
                "{text:?}"
            );
        }
        for &text in BAD_DURATIONS {
            assert!(parse_duration(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn timestamps_are_rfc_3339_with_milliseconds() {
        let cases: &[(u64, &str)] = &[
            (0, "null"),
            (1, "\"1970-01-01T00:00:00.001Z\""),
            (951_782_400_000, "\"2000-02-29T00:00:00.000Z\""),
            (951_868_799_999, "\"2000-02-29T23:59:59.999Z\""),
            (1_798_401_600_123, "\"2026-12-27T20:00:00.123Z\""),
            (1_796_000_000_000, "\"2026-11-30T00:53:20.000Z\""),
            (4_102_444_800_000, "\"2100-01-01T00:00:00.000Z\""),
            (253_402_300_799_999, "\"9999-12-31T23:59:59.999Z\""),
            (253_402_300_800_000, "\"10000-01-01T00:00:00.000Z\""),
        ];
        // Twice each, and then in the other order: the text a thread keeps
        // for the last time it wrote is the right one.
        let twice = cases.iter().flat_map(|case| [case, case]);
        for &(millis, expected) in twice.clone().chain(twice.rev()) {
            let mut out = Vec::new();
            write_timestamp(&mut out, millis);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{millis}");
        }
    }

    /// Timestamps RFC 3339 allows, with their milliseconds since the epoch,
    /// computed independently with Python's `datetime`
    /// (`tools/rfc3339_values.py`).
    const GOOD_TIMESTAMPS: &[(&str, i64)] = &[
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.001Z", 1),
        ("1970-01-01T01:00:00+01:00", 0),
        ("1969-12-31T23:59:59Z", -1_000),
        ("1969-12-31T23:59:59.999Z", -1),
        ("1969-07-20T20:17:40Z", -14_182_940_000),
        ("1900-01-01T00:00:00Z", -2_208_988_800_000),
        ("1600-02-29T00:00:00Z", -11_670_998_400_000),
        ("0001-01-01T00:00:00Z", -62_135_596_800_000),
        ("0000-01-01T00:00:00Z", -62_167_219_200_000),
        ("0000-02-29T00:00:00Z", -62_162_121_600_000),
        ("2026-12-01T03:00:00Z", 1_796_094_000_000),
        ("2026-12-01T03:00:00+00:00", 1_796_094_000_000),
        ("2026-12-01T03:00:00-00:00", 1_796_094_000_000),
        ("2026-12-01T03:00:00+01:00", 1_796_090_400_000),
        ("2026-12-01T03:00:00-05:00", 1_796_112_000_000),
        ("2026-12-01T03:00:00+05:30", 1_796_074_200_000),
        ("2026-12-01T03:00:00+05:45", 1_796_073_300_000),
        ("2026-12-01T03:00:00+14:00", 1_796_043_600_000),
        ("2026-12-01T03:00:00-12:00", 1_796_137_200_000),
        ("2026-12-01T03:00:00+23:59", 1_796_007_660_000),
        ("2026-12-01T03:00:00-23:59", 1_796_180_340_000),
        ("2026-01-01T00:30:00+01:00", 1_767_223_800_000),
        ("2026-12-31T23:59:59-01:00", 1_798_765_199_000),
        ("2000-02-29T12:00:00Z", 951_825_600_000),
        ("2024-02-29T23:59:59Z", 1_709_251_199_000),
        ("2100-03-01T00:00:00Z", 4_107_542_400_000),
        ("2026-12-01T03:00:00.1Z", 1_796_094_000_100),
        ("2026-12-01T03:00:00.12Z", 1_796_094_000_120),
        ("2026-12-01T03:00:00.123Z", 1_796_094_000_123),
        ("2026-12-01T03:00:00.000Z", 1_796_094_000_000),
        ("2026-12-01T03:00:00.1239Z", 1_796_094_000_123),
        ("2026-12-01T03:00:00.123456789Z", 1_796_094_000_123),
        (
            "2026-12-01T03:00:00.99999999999999999999Z",
            1_796_094_000_999,
        ),
        ("2026-12-01T03:00:00.5-05:00", 1_796_112_000_500),
        ("2026-12-01t03:00:00z", 1_796_094_000_000),
        ("2026-12-01 03:00:00Z", 1_796_094_000_000),
        ("2026-12-01 03:00:00.25+02:00", 1_796_086_800_250),
        ("1985-04-12T23:20:50.52Z", 482_196_050_520),
        ("1996-12-19T16:39:57-08:00", 851_042_397_000),
        ("1937-01-01T12:00:27.87+00:20", -1_041_337_172_130),
        ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
    ];

    /// Strings that are not RFC 3339 `date-time`s, or name no real time.
    const BAD_TIMESTAMPS: &[&str] = &[
        "",
        "now",
        "2026-12-01",
        "2026-12-01T03:00:00",
        "2026-12-01T03:00:00.123",
        "2026-12-01T03:00Z",
        "2026-12-01T03:00:00+0100",
        "2026-12-01T03:00:00+01",
        "2026-12-01T03:00:00+2400",
        "2026-12-01T03:00:00+24:00",
        "2026-12-01T03:00:00+01:60",
        "2026-12-01T03:00:00+1:00",
        "2026-12-01T03:00:00+01:00:00",
        "2026-12-01T03:00:00-",
        "2026-12-01T03:00:00UTC",
        "2026-12-01T03:00:00 Z",
        "2026-12-01T03:00:00ZZ",
        "2026-12-01T03:00:00Z ",
        " 2026-12-01T03:00:00Z",
        "2026-12-01T03:00:00Z\n",
        "2026-12-01T3:00:00Z",
        "2026-12-1T03:00:00Z",
        "26-12-01T03:00:00Z",
        "+2026-12-01T03:00:00Z",
        "-2026-12-01T03:00:00Z",
        "12026-12-01T03:00:00Z",
        "2026-12-01T03:00:00.Z",
        "2026-12-01T03:00:00.+01:00",
        "2026-12-01T03:00:00,5Z",
        "2026-12-01T03:00:00.5.5Z",
        "2026/12/01T03:00:00Z",
        "2026-12-01X03:00:00Z",
        "2026-12-01  03:00:00Z",
        "2026-12-01T-3:00:00Z",
        "2026-12-01T03:+0:00Z",
        "1900-02-29T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2100-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-06-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-12-00T00:00:00Z",
        "2026-12-32T00:00:00Z",
        "2026-12-01T24:00:00Z",
        "2026-12-01T23:60:00Z",
        "2016-12-31T23:59:60Z",
        "\u{ff12}\u{ff10}\u{ff12}\u{ff16}-12-01T03:00:00Z",
        "2026-12-01T03:00:00\u{e9}",
    ];

    #[test]
    fn timestamps_parse_as_rfc_3339_says() {
        for &(text, millis) in GOOD_TIMESTAMPS {
            assert_eq!(parse_rfc3339(text), Some(millis), "{text:?}");
        }
        for &text in BAD_TIMESTAMPS {
            assert_eq!(parse_rfc3339(text), None, "{text:?} should be refused");
        }
    }

    #[test]
    fn days_from_civil_inverts_civil_from_days() {
        // Every day from 0000-01-01 to 9999-12-31, each the day after the last.
        let mut previous = (-1, 12, 31);
        for days in -719_528..=2_932_896 {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(
                days_from_civil(year, month, day),
                days,
                "{year}-{month}-{day}"
            );
            let next = if previous.2 < days_in_month(previous.0, previous.1) {
                (previous.0, previous.1, previous.2 + 1)
            } else if previous.1 < 12 {
                (previous.0, previous.1 + 1, 1)
            } else {
                (previous.0 + 1, 1, 1)
            };
            assert_eq!((year, month, day), next, "{days}");
            previous = next;
        }
    }

    #[test]
    fn http_dates_follow_rfc_9110() {
        let cases: &[(u64, &str)] = &[
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_795_636_800, "Wed, 25 Nov 2026 20:00:00 GMT"),
        ];
        for &(secs, expected) in cases {
            let mut out = Vec::new();
            write_http_date(&mut out, secs);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
