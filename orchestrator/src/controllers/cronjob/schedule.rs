//! Cron schedules as CronJobs use them (upstream parses them with
//! robfig/cron's standard parser): five fields — minute, hour, day of
//! month, month, day of week — each `*`/`?`, `a`, `a-b`, with `/step` and
//! `,` lists, month and weekday names (`jan`, `mon`), and the macros
//! `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`,
//! `@hourly`. As in Vixie cron, when both day fields are restricted a day
//! matching either runs. Times are computed in a time zone (`spec.timeZone`
//! or a `CRON_TZ=`/`TZ=` prefix); without one, in UTC (upstream uses the
//! controller manager's local zone, which on Cairn is UTC).
//!
//! A hand-written parser: the maintained crates (`cron`, `croner`) bring
//! chrono and their own time-zone database, while jiff is already here.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// A day field was `*`/`?` (no step): days match when both do.
    any_day: bool,
    tz: TimeZone,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Why a schedule or time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not a valid cron expression.
    #[error("unparseable schedule {0:?}: {1}")]
    Syntax(String, String),
    /// The time zone is not known.
    #[error("unknown time zone {0}")]
    TimeZone(String),
}

/// One field: the bits of its values, and whether it was a bare `*`/`?`.
fn field(text: &str, min: u32, max: u32, names: &[&str], base: u32) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + base);
        }
        s.parse::<u32>().map_err(|_| format!("bad value {s:?}"))
    };
    let mut bits = 0u64;
    let mut star = false;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                Some(s.parse::<u32>().map_err(|_| format!("bad step {s:?}"))?),
            ),
            None => (item, None),
        };
        let (start, end, is_star) = if range == "*" || range == "?" {
            (min, max, true)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?, false)
        } else {
            let a = value(range)?;
            // `a/step` runs from a to the end.
            (a, if step.is_some() { max } else { a }, false)
        };
        let step = step.unwrap_or(1);
        if start < min || end > max || start > end || step == 0 {
            return Err(format!("{item:?} is out of range {min}-{max}"));
        }
        star |= is_star && step == 1;
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses `spec` (with an optional `CRON_TZ=`/`TZ=` prefix) in the
    /// zone `time_zone` (`spec.timeZone`), UTC if neither names one.
    pub fn parse(spec: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let syntax = |why: String| ScheduleError::Syntax(spec.to_owned(), why);
        let mut text = spec.trim();
        let mut zone = time_zone.map(str::to_owned);
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = text.strip_prefix(prefix) {
                let (tz, rest) = rest
                    .split_once(' ')
                    .ok_or_else(|| syntax("no schedule after the time zone".into()))?;
                zone = Some(tz.to_owned());
                text = rest.trim();
            }
        }
        let tz = match zone.as_deref() {
            None | Some("") | Some("UTC") | Some("Etc/UTC") => TimeZone::UTC,
            Some("Local") => TimeZone::system(),
            Some(name) => {
                TimeZone::get(name).map_err(|_| ScheduleError::TimeZone(name.to_owned()))?
            }
        };
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => return Err(syntax("unknown macro".into())),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [m, h, dom, mon, dow] = fields[..] else {
            return Err(syntax(format!("expected 5 fields, found {}", fields.len())));
        };
        let (minutes, _) = field(m, 0, 59, &[], 0).map_err(syntax)?;
        let (hours, _) = field(h, 0, 23, &[], 0).map_err(syntax)?;
        let (days, dom_star) = field(dom, 1, 31, &[], 0).map_err(syntax)?;
        let (months, _) = field(mon, 1, 12, MONTHS, 1).map_err(syntax)?;
        let (weekdays, dow_star) = field(dow, 0, 6, WEEKDAYS, 0).map_err(syntax)?;
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            any_day: dom_star || dow_star,
            tz,
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.any_day { dom && dow } else { dom || dow }
    }

    /// The first scheduled time strictly after `after`.
    pub fn next(&self, after: Timestamp) -> Option<Timestamp> {
        let local = after.to_zoned(self.tz.clone()).datetime();
        let minute = local.with().second(0).subsec_nanosecond(0).build().ok()?;
        let mut t: DateTime = minute.checked_add(1.minute()).ok()?;
        // Five years covers every satisfiable schedule (Feb 29 included).
        let limit = t.checked_add(5.years()).ok()?;
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                let first = t.date().first_of_month().checked_add(1.month()).ok()?;
                t = first.to_datetime(Time::midnight());
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.to_datetime(Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                let hour = t.with().minute(0).build().ok()?;
                t = hour.checked_add(1.hour()).ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            let zoned: Zoned = self.tz.to_zoned(t).ok()?;
            let ts = zoned.timestamp();
            if ts > after {
                return Some(ts);
            }
            // A repeated hour at a DST change: look further.
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// The time zone times are computed in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(spec: &str, after: &str) -> String {
        Schedule::parse(spec, None)
            .expect("parse")
            .next(ts(after))
            .expect("next")
            .to_string()
    }

    #[test]
    fn fields_steps_ranges_and_names() {
        assert_eq!(
            next("* * * * *", "2026-01-01T10:00:30Z"),
            "2026-01-01T10:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "2026-01-01T10:00:00Z"),
            "2026-01-01T10:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T10:01:00Z"),
            "2026-01-01T10:15:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-01-01T10:26:00Z"),
            "2026-01-01T10:45:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * *", "2026-01-01T10:00:00Z"),
            "2026-01-01T13:00:00Z"
        );
        assert_eq!(
            next("30 2 * jun,dec *", "2026-01-01T00:00:00Z"),
            "2026-06-01T02:30:00Z"
        );
        // 2026-01-01 is a Thursday.
        assert_eq!(
            next("0 0 * * MON-fri", "2026-01-02T12:00:00Z"),
            "2026-01-05T00:00:00Z"
        );
        assert_eq!(
            next("@hourly", "2026-01-01T10:59:59Z"),
            "2026-01-01T11:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2026-03-01T00:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("@weekly", "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-01-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 13th, or any Friday: Friday 2026-01-02 comes first.
        assert_eq!(
            next("0 0 13 * 5", "2026-01-01T00:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
        // A `*` day of month: only Fridays.
        assert_eq!(
            next("0 0 * * 5", "2026-01-03T00:00:00Z"),
            "2026-01-09T00:00:00Z"
        );
    }

    #[test]
    fn time_zones() {
        let s = Schedule::parse("0 9 * * *", Some("Europe/Paris")).expect("parse");
        assert_eq!(
            s.next(ts("2026-01-01T00:00:00Z"))
                .expect("next")
                .to_string(),
            "2026-01-01T08:00:00Z"
        );
        let s = Schedule::parse("CRON_TZ=America/New_York 0 9 * * *", None).expect("parse");
        assert_eq!(
            s.next(ts("2026-07-01T00:00:00Z"))
                .expect("next")
                .to_string(),
            "2026-07-01T13:00:00Z"
        );
        assert!(matches!(
            Schedule::parse("* * * * *", Some("Mars/Olympus")),
            Err(ScheduleError::TimeZone(_))
        ));
    }

    #[test]
    fn bad_schedules() {
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* * 0 * *",
            "* * * 13 *",
            "*/0 * * * *",
            "@every 5m",
            "5-1 * * * *",
            "x * * * *",
        ] {
            assert!(Schedule::parse(bad, None).is_err(), "{bad}");
        }
    }
}
