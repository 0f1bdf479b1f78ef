//! UTC calendar arithmetic for budget periods and per-day reports, kept in-crate because all we need
//! is days <-> civil dates (Howard Hinnant's algorithms) and a date-time parser for `--since`.

use serde::{Deserialize, Serialize};

use crate::error::{LedgerError, Result};

pub(crate) const MS_PER_DAY: i64 = 86_400_000;

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        // A clock before 1970 is a misconfigured host; treat it as the epoch rather than panic.
        Err(_) => 0,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD` of the UTC day containing `ts_ms`.
pub fn format_day(ts_ms: i64) -> String {
    let (y, m, d) = civil_from_days(ts_ms.div_euclid(MS_PER_DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM:SSZ` of `ts_ms`.
pub fn format_rfc3339(ts_ms: i64) -> String {
    let day = ts_ms.div_euclid(MS_PER_DAY);
    let secs = ts_ms.rem_euclid(MS_PER_DAY) / 1000;
    let (y, m, d) = civil_from_days(day);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Parses the time forms a person types for `--since/--until`: `YYYY-MM-DD` (midnight UTC),
/// `YYYY-MM-DDTHH:MM[:SS]` optionally followed by `Z`, or a plain number of Unix seconds.
pub fn parse_time(s: &str) -> Result<i64> {
    let bad = |reason: &str| LedgerError::InvalidInput {
        field: "time",
        reason: format!("{s:?}: {reason}"),
    };
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: i64 = s.parse().map_err(|_| bad("number out of range"))?;
        return secs
            .checked_mul(1000)
            .ok_or_else(|| bad("number out of range"));
    }
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t.trim_end_matches('Z'))),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected YYYY-MM-DD"));
    };
    let y: i64 = y.parse().map_err(|_| bad("bad year"))?;
    let m: u32 = m.parse().map_err(|_| bad("bad month"))?;
    let d: u32 = d.parse().map_err(|_| bad("bad day"))?;
    if !(1..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return Err(bad("no such date"));
    }
    let mut ms = days_from_civil(y, m, d) * MS_PER_DAY;
    if let Some(t) = time {
        let f: Vec<&str> = t.split(':').collect();
        if f.len() < 2 || f.len() > 3 {
            return Err(bad("expected HH:MM[:SS]"));
        }
        let hh: i64 = f[0].parse().map_err(|_| bad("bad hour"))?;
        let mm: i64 = f[1].parse().map_err(|_| bad("bad minute"))?;
        let ss: i64 = match f.get(2) {
            Some(x) => x.parse().map_err(|_| bad("bad second"))?,
            None => 0,
        };
        if !(0..24).contains(&hh) || !(0..60).contains(&mm) || !(0..60).contains(&ss) {
            return Err(bad("time of day out of range"));
        }
        ms += ((hh * 60 + mm) * 60 + ss) * 1000;
    }
    Ok(ms)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// How often a budget resets. Periods are UTC calendar periods (weeks start on Monday), so every
/// node of a fleet agrees on when a period starts without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    /// `[start, end)` in Unix ms of the period containing `ts_ms`.
    pub fn bounds(self, ts_ms: i64) -> (i64, i64) {
        let day = ts_ms.div_euclid(MS_PER_DAY);
        match self {
            Period::Day => (day * MS_PER_DAY, (day + 1) * MS_PER_DAY),
            Period::Week => {
                // 1970-01-01 was a Thursday: +3 makes Monday weekday 0.
                let monday = day - (day + 3).rem_euclid(7);
                (monday * MS_PER_DAY, (monday + 7) * MS_PER_DAY)
            }
            Period::Month => {
                let (y, m, _) = civil_from_days(day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    days_from_civil(y, m, 1) * MS_PER_DAY,
                    days_from_civil(ny, nm, 1) * MS_PER_DAY,
                )
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        match s.to_ascii_lowercase().as_str() {
            "day" | "daily" => Some(Period::Day),
            "week" | "weekly" => Some(Period::Week),
            "month" | "monthly" => Some(Period::Month),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        for d in -800_000..800_000i64 {
            if d % 997 == 0 {
                let (y, m, dd) = civil_from_days(d);
                assert_eq!(days_from_civil(y, m, dd), d);
            }
        }
    }

    #[test]
    fn periods_are_calendar_aligned() {
        let t = parse_time("2024-02-29T13:45:10Z").unwrap();
        assert_eq!(format_rfc3339(t), "2024-02-29T13:45:10Z");
        let (s, e) = Period::Month.bounds(t);
        assert_eq!(format_day(s), "2024-02-01");
        assert_eq!(format_day(e), "2024-03-01");
        // 2024-02-29 is a Thursday; its ISO week starts Monday 2024-02-26.
        let (s, e) = Period::Week.bounds(t);
        assert_eq!(format_day(s), "2024-02-26");
        assert_eq!(format_day(e), "2024-03-04");
        let (s, e) = Period::Day.bounds(t);
        assert_eq!((e - s), MS_PER_DAY);
        assert_eq!(format_day(s), "2024-02-29");
        let (s, e) = Period::Month.bounds(parse_time("2023-12-31").unwrap());
        assert_eq!(
            (format_day(s).as_str(), format_day(e).as_str()),
            ("2023-12-01", "2024-01-01")
        );
    }

    #[test]
    fn parse_time_rejects_nonsense() {
        assert!(parse_time("2023-02-29").is_err());
        assert!(parse_time("2023-13-01").is_err());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2023-01-01T25:00").is_err());
        assert!(parse_time("99999999999999999-01-01").is_err());
        assert!(parse_time("99999999999999999").is_err());
        assert_eq!(parse_time("86400").unwrap(), MS_PER_DAY);
        assert_eq!(parse_time("1970-01-02").unwrap(), MS_PER_DAY);
    }
}
