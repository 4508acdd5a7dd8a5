//! Schedules, as pure functions of the time: when a policy is next due and why. Standard 5-field
//! cron (parsed here, so that its semantics across daylight-saving changes are ours to define and
//! test), windows in which rotations may start, IANA time zones, deterministic jitter, and the
//! "first due from the credential's age" rule. Nothing here reads a clock: `now` is passed in.
//!
//! Daylight saving: schedule times are local wall-clock times in the policy's zone. A time that
//! does not exist (the spring-forward gap) fires at the first instant after the gap; a time that
//! exists twice (fall back) fires once, at its first occurrence.

use std::time::Duration;

use chrono::{
    DateTime, Datelike, Duration as Span, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;
use sha2::{Digest, Sha256};

/// A parsed 5-field cron expression: minute hour day-of-month month day-of-week.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Vixie cron: when both day fields are restricted, a date matches if either does.
    days_restricted: bool,
    weekdays_restricted: bool,
    text: String,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "`{text}` has {} fields; write 5: minute hour day-of-month month day-of-week (e.g. `0 3 * * SUN`)",
                fields.len()
            ));
        }
        let minutes = field(fields[0], "minute", 0, 59, &[])?;
        let hours = field(fields[1], "hour", 0, 23, &[])?;
        let days = field(fields[2], "day-of-month", 1, 31, &[])?;
        let months = field(fields[3], "month", 1, 12, &MONTHS)?;
        // 0 and 7 are both Sunday.
        let weekdays_raw = field(fields[4], "day-of-week", 0, 7, &WEEKDAYS)?;
        let weekdays = ((weekdays_raw & 0x7f) | (weekdays_raw >> 7)) as u8;
        let cron = Cron {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays,
            // As in Vixie cron and cronie: a field starting with `*` (also `*/2`) is unrestricted
            // for the "either day field" rule.
            days_restricted: !fields[2].starts_with('*'),
            weekdays_restricted: !fields[4].starts_with('*'),
            text: text.trim().to_string(),
        };
        if !(1..=12).any(|m| cron.months & (1 << m) != 0 && (1..=max_day(m)).any(|d| cron.days & (1 << d) != 0))
            && cron.days_restricted
            && !cron.weekdays_restricted
        {
            return Err(format!("`{text}` never fires: no selected month has the selected day of month"));
        }
        Ok(cron)
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn matches_date(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            _ => day && weekday,
        }
    }

    /// The first firing strictly after `after`, in zone `tz`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        let first_day = local.date();
        // Eight years covers every leap-day-only expression. Months that cannot match are
        // skipped whole, so rare expressions (yearly, leap day) stay cheap.
        let last_day = first_day + Span::days(366 * 8);
        let mut date = first_day;
        while date <= last_day {
            if self.months & (1 << date.month()) == 0 {
                let (y, m) = if date.month() == 12 { (date.year() + 1, 1) } else { (date.year(), date.month() + 1) };
                date = NaiveDate::from_ymd_opt(y, m, 1)?;
                continue;
            }
            let today = date;
            date = date.succ_opt()?;
            if !self.matches_date(today) {
                continue;
            }
            for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                for minute in (0..60).filter(|m| self.minutes & (1u64 << m) != 0) {
                    let naive = today.and_hms_opt(hour, minute, 0)?;
                    if today == first_day && naive + Span::hours(3) < local {
                        // Well before `after` even allowing for a DST shift; skip quickly.
                        continue;
                    }
                    if let Some(at) = resolve(naive, tz).filter(|at| *at > after) {
                        return Some(at);
                    }
                }
            }
        }
        None
    }
}

fn max_day(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses one cron field into a bitset of allowed values.
fn field(text: &str, name: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |t: &str| -> Result<u32, String> {
        let lower = t.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names count from 1, weekday names from 0 (Sunday).
            return Ok(i as u32 + if names.len() == 12 { 1 } else { 0 });
        }
        let n: u32 = t.parse().map_err(|_| {
            format!("{name} field: `{t}` is not a number{}", if names.is_empty() { "" } else { " or a name" })
        })?;
        if n < min || n > max {
            return Err(format!("{name} field: {n} is outside {min}-{max}"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0 && *s <= max)
                    .ok_or_else(|| format!("{name} field: bad step `{s}` (1-{max})"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("{name} field: range `{range}` runs backwards"));
            }
            (a, b)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if part.contains('/') { max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    if bits == 0 {
        return Err(format!("{name} field: `{text}` selects nothing"));
    }
    Ok(bits)
}

/// A local wall-clock time in `tz` as an instant: the first occurrence when it exists twice,
/// the first instant after the gap when it does not exist.
fn resolve(naive: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap: the clock jumped over this time. The first minute that exists is the
            // end of the gap, the moment the time "happened".
            (1..=180)
                .find_map(|m| match tz.from_local_datetime(&(naive + Span::minutes(m))) {
                    LocalResult::Single(t) => Some(t),
                    LocalResult::Ambiguous(a, _) => Some(a),
                    LocalResult::None => None,
                })
                .map(|t| t.with_timezone(&Utc))
        }
    }
}

/// A rotation window: on `days` (all when empty) from `start` local time for `duration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub days: Vec<Weekday>,
    pub start: NaiveTime,
    pub duration: Duration,
}

/// Longest window: one that long is always open, so it means nothing.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 86_400);

impl Window {
    /// Parses the policy's `days`, `start` and `duration`.
    pub fn parse(days: &[String], start: &str, duration: Duration) -> Result<Window, (String, String)> {
        let mut parsed = Vec::new();
        for (i, day) in days.iter().enumerate() {
            let weekday = parse_weekday(day).ok_or_else(|| {
                (format!("days[{i}]"), format!("`{day}` is not a day; use mon, tue, wed, thu, fri, sat, sun"))
            })?;
            if !parsed.contains(&weekday) {
                parsed.push(weekday);
            }
        }
        let start = NaiveTime::parse_from_str(start, "%H:%M").map_err(|_| {
            ("start".to_string(), format!("`{start}` is not a time of day; write HH:MM, e.g. \"02:00\""))
        })?;
        if duration.is_zero() {
            return Err(("duration".into(), "a window of 0s never opens".into()));
        }
        if duration > MAX_WINDOW {
            return Err((
                "duration".into(),
                "a window longer than 7d is always open; remove the window instead".into(),
            ));
        }
        Ok(Window { days: parsed, start, duration })
    }

    fn on(&self, day: Weekday) -> bool {
        self.days.is_empty() || self.days.contains(&day)
    }

    /// The first instant at or after `t` inside a window, and the end of that window.
    pub fn next_open(&self, t: DateTime<Utc>, tz: Tz) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let local_date = t.with_timezone(&tz).date_naive();
        let length = Span::from_std(self.duration).ok()?;
        // Windows that started up to 8 days ago may still be open.
        (-8..=8)
            .map(|offset| local_date + Span::days(offset))
            .filter(|date| self.on(date.weekday()))
            .filter_map(|date| resolve(date.and_time(self.start), tz))
            .map(|start| (start, start + length))
            .filter(|(_, end)| *end > t)
            .map(|(start, end)| (start.max(t), end))
            .min()
    }
}

pub fn parse_weekday(text: &str) -> Option<Weekday> {
    let t = text.to_ascii_lowercase();
    let prefix = t.get(..3)?;
    let full = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    let index = full.iter().position(|f| f.starts_with(prefix) && (t.len() == 3 || **f == t))?;
    Some([Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri, Weekday::Sat, Weekday::Sun][index])
}

/// What triggers a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Due this long after the last rotation.
    Every(Duration),
    /// Due at the first firing after the last rotation.
    Cron(Cron),
}

/// A policy's validated schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub trigger: Trigger,
    pub window: Option<Window>,
    pub timezone: Tz,
    pub jitter: Duration,
}

/// What the due time was computed from.
/// When a credential came to be, and what says so.
pub type Since = (DateTime<Utc>, Basis);

/// The age of a current credential no rotation in the journal made (one rotator adopts): the
/// value's own `rotated_at`, else Toktra's `created_at`; failing both, `now`, so a credential
/// just adopted is never due at once, and `false`: its age is not known. `plan` and the daemon
/// both date credentials with this.
pub fn credential_since(
    rotated_at: Option<DateTime<Utc>>,
    created_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (Since, bool) {
    match rotated_at.or(created_at) {
        Some(since) => ((since, Basis::Credential), true),
        None => ((now, Basis::Credential), false),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The last rotation the journal recorded.
    Journal,
    /// The current credential's own age (its `rotated_at`, Toktra's `created_at`, or the
    /// destination's version time), for a credential rotator has not rotated yet.
    Credential,
    /// No credential at all: the first rotation creates one.
    Nothing,
}

/// When a policy is due, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Due {
    /// When the policy becomes (or became) due.
    pub at: DateTime<Utc>,
    /// When a rotation may start: `at`, or `now` if that is later, pushed into the window.
    pub next_start: DateTime<Utc>,
    /// Due for longer than the slack a scheduler needs: something is not rotating it.
    pub overdue: bool,
    pub basis: Basis,
    /// The reasoning, in order, as short sentences.
    pub why: Vec<String>,
}

/// A scheduler runs due work within this; past it, a due policy is overdue.
pub const OVERDUE_AFTER: Duration = Duration::from_secs(3_600);

/// The deterministic jitter of a policy: a fraction of `jitter` derived from its name, so plans
/// are stable and policies with the same schedule start at different times.
pub fn jitter_offset(policy: &str, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return Duration::ZERO;
    }
    let digest = Sha256::digest(policy.as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
    Duration::from_secs(n % jitter.as_secs().max(1))
}

/// When `policy` is next due. `last` is when its current credential came to be (with `basis`
/// saying how that is known), `None` when there is no credential.
pub fn due(policy: &str, schedule: &Schedule, last: Option<(DateTime<Utc>, Basis)>, now: DateTime<Utc>) -> Due {
    let fmt = |t: DateTime<Utc>| t.with_timezone(&schedule.timezone).format("%Y-%m-%d %H:%M %Z").to_string();
    let mut why = Vec::new();
    let (mut at, basis) = match last {
        None => {
            why.push("no credential yet: due now".to_string());
            (now, Basis::Nothing)
        }
        Some((last, basis)) => {
            let source = match basis {
                Basis::Journal => "last rotated",
                _ => "current credential dates from",
            };
            match &schedule.trigger {
                Trigger::Every(every) => {
                    let at = last + Span::from_std(*every).unwrap_or_else(|_| Span::days(36_500));
                    why.push(format!(
                        "{source} {}; every {} → {}",
                        fmt(last),
                        crate::duration::format(*every),
                        fmt(at)
                    ));
                    (at, basis)
                }
                Trigger::Cron(cron) => {
                    let at = cron.next_after(last, schedule.timezone).unwrap_or(last + Span::days(36_500));
                    why.push(format!(
                        "{source} {}; next `{}` ({}) → {}",
                        fmt(last),
                        cron.text(),
                        schedule.timezone,
                        fmt(at)
                    ));
                    (at, basis)
                }
            }
        }
    };
    let offset = Span::from_std(jitter_offset(policy, schedule.jitter)).unwrap_or_default();
    if !offset.is_zero() && basis != Basis::Nothing {
        at += offset;
        why.push(format!("jitter +{} → {}", crate::duration::format(offset.to_std().unwrap_or_default()), fmt(at)));
    }
    let mut next_start = at.max(now);
    // When the policy first could start: `at`, or the first window opening after it. A policy
    // waiting for its window is not overdue.
    let mut first_chance = at;
    if let Some(window) = &schedule.window {
        if let Some((open, _)) = window.next_open(at, schedule.timezone) {
            // Policies due outside the window would all start at its opening; their jitter
            // spreads them inside it instead (within the window's length).
            let spread = if open > at && basis != Basis::Nothing {
                offset.min(Span::from_std(window.duration).unwrap_or_default() - Span::minutes(1)).max(Span::zero())
            } else {
                Span::zero()
            };
            first_chance = open + spread;
        }
        if let Some((open, end)) = window.next_open(next_start, schedule.timezone) {
            let start = if open > next_start && basis != Basis::Nothing {
                (open + offset.min(end - open - Span::minutes(1)).max(Span::zero())).max(open)
            } else {
                open
            };
            if start > next_start {
                why.push(format!("window opens {}", fmt(start)));
            }
            next_start = start;
        }
    }
    let overdue = now > first_chance + Span::from_std(OVERDUE_AFTER).unwrap_or_default();
    if overdue {
        let late = Duration::from_secs((now - first_chance).num_seconds().max(0) as u64);
        why.push(format!("overdue by {}", crate::duration::format(late)));
    }
    Due { at, next_start, overdue, basis, why }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(t: &str) -> DateTime<Utc> {
        t.parse().unwrap()
    }

    fn sched(trigger: Trigger, tz: &str) -> Schedule {
        Schedule { trigger, window: None, timezone: tz.parse().unwrap(), jitter: Duration::ZERO }
    }

    #[test]
    fn cron_parsing() {
        for good in [
            "0 3 * * SUN",
            "*/15 * * * *",
            "0 0 1 jan,jul *",
            "30 2 * * 1-5",
            "0 0 * * 7",
            "@daily",
            "5/20 8-18/2 * * mon-fri",
        ] {
            Cron::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let bad = [
            ("0 3 * *", "has 4 fields"),
            ("0 0 3 * * *", "has 6 fields"),
            ("61 * * * *", "minute field: 61 is outside 0-59"),
            ("* 24 * * *", "hour field: 24 is outside 0-23"),
            ("* * * * funday", "day-of-week field: `funday` is not a number or a name"),
            ("* * 5-1 * *", "runs backwards"),
            ("* * */0 * *", "bad step"),
            ("0 0 31 2 *", "never fires"),
        ];
        for (text, expected) in bad {
            let e = Cron::parse(text).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn cron_next_in_utc_and_vixie_day_semantics() {
        let c = Cron::parse("0 3 * * SUN").unwrap();
        // 2026-11-29 is a Sunday.
        assert_eq!(c.next_after(utc("2026-11-29T02:59:00Z"), Tz::UTC), Some(utc("2026-11-29T03:00:00Z")));
        assert_eq!(c.next_after(utc("2026-11-29T03:00:00Z"), Tz::UTC), Some(utc("2026-12-06T03:00:00Z")));
        // Both day fields restricted: the 1st of the month OR any Monday.
        let c = Cron::parse("0 0 1 * mon").unwrap();
        assert_eq!(c.next_after(utc("2026-11-29T00:00:00Z"), Tz::UTC), Some(utc("2026-11-30T00:00:00Z")));
        assert_eq!(c.next_after(utc("2026-11-30T00:00:00Z"), Tz::UTC), Some(utc("2026-12-01T00:00:00Z")));
        // Leap day only.
        let c = Cron::parse("0 0 29 2 *").unwrap();
        assert_eq!(c.next_after(utc("2026-11-29T00:00:00Z"), Tz::UTC), Some(utc("2028-02-29T00:00:00Z")));
    }

    #[test]
    fn cron_in_berlin_across_daylight_saving() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // 03:00 local every day: UTC+1 in winter, UTC+2 in summer (change on 2027-03-28).
        let c = Cron::parse("0 3 * * *").unwrap();
        assert_eq!(c.next_after(utc("2027-03-26T12:00:00Z"), berlin), Some(utc("2027-03-27T02:00:00Z")));
        assert_eq!(c.next_after(utc("2027-03-27T12:00:00Z"), berlin), Some(utc("2027-03-28T01:00:00Z")));
        assert_eq!(c.next_after(utc("2027-03-28T12:00:00Z"), berlin), Some(utc("2027-03-29T01:00:00Z")));
        // 02:30 does not exist on 2027-03-28 (02:00 → 03:00): it fires when the gap ends.
        let c = Cron::parse("30 2 * * *").unwrap();
        assert_eq!(c.next_after(utc("2027-03-27T12:00:00Z"), berlin), Some(utc("2027-03-28T01:00:00Z")));
        // 02:30 exists twice on 2026-10-25 (03:00 → 02:00): it fires once, the first time.
        assert_eq!(c.next_after(utc("2026-10-24T12:00:00Z"), berlin), Some(utc("2026-10-25T00:30:00Z")));
        assert_eq!(c.next_after(utc("2026-10-25T00:30:00Z"), berlin), Some(utc("2026-10-26T01:30:00Z")));
    }

    #[test]
    fn windows_including_across_midnight() {
        let w = Window::parse(&["sat".into(), "sun".into()], "22:00", Duration::from_secs(4 * 3600)).unwrap();
        // Friday noon → Saturday 22:00.
        assert_eq!(
            w.next_open(utc("2026-11-27T12:00:00Z"), Tz::UTC),
            Some((utc("2026-11-28T22:00:00Z"), utc("2026-11-29T02:00:00Z")))
        );
        // Sunday 01:00 is inside Saturday's window, which crosses midnight.
        assert_eq!(
            w.next_open(utc("2026-11-29T01:00:00Z"), Tz::UTC),
            Some((utc("2026-11-29T01:00:00Z"), utc("2026-11-29T02:00:00Z")))
        );
        // Monday 01:00 is inside Sunday's window; Monday 03:00 waits for Saturday.
        assert_eq!(w.next_open(utc("2026-11-30T01:00:00Z"), Tz::UTC).unwrap().0, utc("2026-11-30T01:00:00Z"));
        assert_eq!(w.next_open(utc("2026-11-30T03:00:00Z"), Tz::UTC).unwrap().0, utc("2026-12-05T22:00:00Z"));
        // Every day when no days are given, in a zone.
        let w = Window::parse(&[], "02:00", Duration::from_secs(3600)).unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(w.next_open(utc("2026-11-29T12:00:00Z"), berlin).unwrap().0, utc("2026-11-30T01:00:00Z"));
        for (days, start, duration, field) in [
            (vec!["someday".to_string()], "02:00", 3600, "days[0]"),
            (vec![], "2am", 3600, "start"),
            (vec![], "02:00", 0, "duration"),
            (vec![], "02:00", 8 * 86_400, "duration"),
        ] {
            assert_eq!(Window::parse(&days, start, Duration::from_secs(duration)).unwrap_err().0, field);
        }
    }

    #[test]
    fn due_from_interval_cron_window_jitter_and_overdue() {
        let now = utc("2026-11-29T12:00:00Z");
        let every = sched(Trigger::Every(Duration::from_secs(90 * 86_400)), "UTC");
        // A credential 30 days old is due in 60 days, not now.
        let d = due("p", &every, Some((utc("2026-10-30T12:00:00Z"), Basis::Credential)), now);
        assert_eq!(
            (d.at, d.next_start, d.overdue, d.basis),
            (utc("2027-01-28T12:00:00Z"), utc("2027-01-28T12:00:00Z"), false, Basis::Credential)
        );
        // 100 days old: overdue, next start now.
        let d = due("p", &every, Some((utc("2026-08-21T12:00:00Z"), Basis::Journal)), now);
        assert_eq!((d.at, d.next_start, d.overdue), (utc("2026-11-19T12:00:00Z"), now, true));
        assert!(d.why.last().unwrap().starts_with("overdue by 10d"), "{:?}", d.why);
        // Nothing yet: due now, not overdue.
        let d = due("p", &every, None, now);
        assert_eq!((d.at, d.overdue, d.basis), (now, false, Basis::Nothing));
        // Cron in Berlin.
        let cron = sched(Trigger::Cron(Cron::parse("0 3 * * SUN").unwrap()), "Europe/Berlin");
        let d = due("p", &cron, Some((utc("2026-11-20T00:00:00Z"), Basis::Journal)), now);
        assert_eq!(d.at, utc("2026-11-22T02:00:00Z"));
        assert!(d.overdue);
        // A window pushes the start.
        let mut windowed = every.clone();
        windowed.window = Some(Window::parse(&["sat".into()], "02:00", Duration::from_secs(3600)).unwrap());
        let d = due("p", &windowed, Some((utc("2026-08-21T12:00:00Z"), Basis::Journal)), now);
        assert_eq!(d.next_start, utc("2026-12-05T02:00:00Z"));
        assert!(d.why.iter().any(|w| w.starts_with("window opens")), "{:?}", d.why);
    }

    #[test]
    fn an_adopted_credential_is_dated_by_its_value_then_toktra_then_now() {
        let now = utc("2026-12-01T12:00:00Z");
        let (rotated, created) = (utc("2026-10-01T00:00:00Z"), utc("2026-09-01T00:00:00Z"));
        assert_eq!(credential_since(Some(rotated), Some(created), now), ((rotated, Basis::Credential), true));
        assert_eq!(credential_since(None, Some(created), now), ((created, Basis::Credential), true));
        assert_eq!(credential_since(None, None, now), ((now, Basis::Credential), false));
    }

    #[test]
    fn review_regressions() {
        // Vixie: `*/2` counts as unrestricted, so day-of-month AND day-of-week apply.
        let c = Cron::parse("0 0 */2 * mon").unwrap();
        // 2026-11-30 is an even-day Monday (not matched: */2 starts at 1), 2026-12-07 is odd.
        assert_eq!(c.next_after(utc("2026-11-29T00:00:00Z"), Tz::UTC), Some(utc("2026-12-07T00:00:00Z")));
        assert!(Cron::parse("5/4294967295 3 * * *").unwrap_err().contains("bad step"));
        // Rare expressions are found (their cost is measured by `benches/schedule.rs`).
        let yearly = Cron::parse("0 3 1 1 *").unwrap();
        assert_eq!(yearly.next_after(utc("2026-01-02T00:00:00Z"), Tz::UTC), Some(utc("2027-01-01T03:00:00Z")));
        let leap = Cron::parse("0 0 29 2 *").unwrap();
        assert_eq!(leap.next_after(utc("2026-01-02T00:00:00Z"), Tz::UTC), Some(utc("2028-02-29T00:00:00Z")));
        // Waiting for a window is not overdue; jitter spreads policies inside the window.
        let mut windowed = sched(Trigger::Every(Duration::from_secs(86_400)), "UTC");
        windowed.window = Some(Window::parse(&["sat".into()], "02:00", Duration::from_secs(4 * 3600)).unwrap());
        let d = due("p", &windowed, Some((utc("2026-11-23T00:00:00Z"), Basis::Journal)), utc("2026-11-25T12:00:00Z"));
        assert!(!d.overdue, "{d:?}");
        windowed.jitter = Duration::from_secs(3 * 3600);
        let starts: std::collections::BTreeSet<_> = (0..8)
            .map(|i| {
                due(
                    &format!("p{i}"),
                    &windowed,
                    Some((utc("2026-11-23T00:00:00Z"), Basis::Journal)),
                    utc("2026-11-25T12:00:00Z"),
                )
                .next_start
            })
            .collect();
        assert!(starts.len() > 4, "jittered starts inside the window: {starts:?}");
        assert!(
            starts.iter().all(|s| *s >= utc("2026-11-28T02:00:00Z") && *s < utc("2026-11-28T06:00:00Z")),
            "{starts:?}"
        );
    }

    #[test]
    fn jitter_is_deterministic_and_spreads_policies() {
        let hour = Duration::from_secs(3600);
        assert_eq!(jitter_offset("billing", hour), jitter_offset("billing", hour));
        assert!(jitter_offset("billing", hour) < hour);
        let offsets: std::collections::BTreeSet<_> =
            (0..20).map(|i| jitter_offset(&format!("policy-{i}"), hour)).collect();
        assert!(offsets.len() >= 18, "related policies spread out: {offsets:?}");
        assert_eq!(jitter_offset("billing", Duration::ZERO), Duration::ZERO);
        let mut jittered = sched(Trigger::Every(Duration::from_secs(86_400)), "UTC");
        jittered.jitter = hour;
        let d =
            due("billing", &jittered, Some((utc("2026-11-28T00:00:00Z"), Basis::Journal)), utc("2026-11-28T01:00:00Z"));
        assert_eq!(d.at, utc("2026-11-29T00:00:00Z") + Span::from_std(jitter_offset("billing", hour)).unwrap());
    }
}
