//! Periodic tasks: `--schedule NAME=SPEC TEMPLATE` parsed and checked at
//! start, and each schedule's next firing computed from its SPEC.
//!
//! A schedule makes a task from TEMPLATE (a submission body, checked at
//! start-up exactly as a POST's, by [`crate::submit::parse_submission`])
//! each time SPEC fires. SPEC is cron's five fields in UTC, a shortcut
//! (`@daily`), or `@every DURATION`. The next firing is computed directly,
//! field by field — a day, then a time in it — so a spec that fires once
//! in years costs no more than one that fires every minute, and one that
//! never fires is refused at start, where cron would accept it and stay
//! silent. Read [`parse_spec`] for the grammar (cronie's, where cron
//! implementations differ) and [`firing_after`] for when the next firing
//! is: `@every` keeps to the grid its first firing set, so it does not
//! drift, and a server that fell behind skips to the next time on the grid
//! rather than firing the missed ones in a burst.
//!
//! When a schedule fires is the due-time loop's business
//! ([`crate::later`]): a schedule is one more entry in its heap, and when
//! it comes due [`fire`] creates its task through
//! [`Store::admit`](crate::store::Store::admit), as a POST would — unless
//! the schedule's previous task is still pending or its queue is full:
//! then the firing is skipped, counted and logged, because periodic work
//! must not pile up behind itself. Firings missed while the server was
//! down are not made up. What the store keeps of a schedule between
//! firings is its [`ScheduleState`], which counts each firing and logs a
//! skipped one ([`ScheduleState::fired`]).

use crate::{
    config::{Config, check_name},
    queue::Queue,
    store::{Admission, Store},
    submit::parse_submission,
    task::{State, TaskId, Text},
    time::{civil_from_days, days_from_civil, days_in_month, now_millis, parse_duration},
};
use log::{debug, info};

use std::sync::Arc;
use std::time::Duration;

/// A periodic task from `--schedule NAME=SPEC TEMPLATE`.
#[derive(Debug)]
pub(crate) struct ScheduleConfig {
    /// Its name, in task status, `/schedules` and metric labels.
    pub(crate) name: Arc<str>,
    /// SPEC as given, for `/schedules`.
    pub(crate) spec_text: Box<str>,
    /// SPEC, parsed.
    pub(crate) spec: Spec,
    /// TEMPLATE, a submission body; parsed again at each firing, by the
    /// same function a POST goes through.
    pub(crate) template: Box<str>,
}

/// Parses `NAME=SPEC TEMPLATE`: the template is the JSON object from the
/// first `{` on, SPEC what stands between. The template is checked like a
/// submission body against `config`; it may not say when to run (`run_at`,
/// `delay`): the schedule does.
pub(crate) fn parse_schedule(text: &str, config: &Config) -> Result<ScheduleConfig, String> {
    let (name, rest) = text.split_once('=').unwrap_or((text, ""));
    let bad = |why: String| format!("--schedule {name:?}: {why}");
    let Some(brace) = rest.find('{').filter(|_| text.contains('=')) else {
        return Err(bad(
            "expected NAME=SPEC TEMPLATE, the template a JSON object".into(),
        ));
    };
    check_name(name).map_err(bad)?;
    let (spec_text, template) = (rest[..brace].trim(), &rest[brace..]);
    let spec = parse_spec(spec_text).map_err(|e| bad(format!("SPEC {spec_text:?}: {e}")))?;
    let new =
        parse_submission(config, template.as_bytes()).map_err(|e| bad(format!("TEMPLATE: {e}")))?;
    // Any `delay`, even 0s, sets a start time as `run_at` does.
    if new.run_at != 0 {
        return Err(bad(
            "TEMPLATE: run_at and delay are for the schedule to say".into(),
        ));
    }
    Ok(ScheduleConfig {
        name: Arc::from(name),
        spec_text: spec_text.into(),
        spec,
        template: template.into(),
    })
}

/// How many years past the current one a firing is searched for. The
/// Gregorian calendar repeats every 400 years (146,097 days, exactly 20,871
/// weeks), so the 400 years after the current one hold every date with
/// every weekday it ever has, and a spec that fires in none of them never
/// fires. Eight years (leap day to leap day) would not do: in `0 0 29 2 */7`
/// the weekday field starts with `*`, so the day must be both February 29th
/// and a Sunday, which happens in 2088 and next in 2128.
const CALENDAR_CYCLE_YEARS: i64 = 400;

/// A parsed `--schedule` SPEC; `next_firing` says when it fires.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Spec {
    /// Five cron fields, matched in UTC.
    Cron(Cron),
    /// `@every DURATION`: a fixed interval, counted from the start and then
    /// from each firing's due time ([`firing_after`]).
    Every(Duration),
}

/// The five cron fields as bitsets: bit `n` is set when the value `n` matches.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cron {
    /// Minutes, 0–59.
    pub(crate) minutes: u64,
    /// Hours, 0–23.
    pub(crate) hours: u64,
    /// Days of the month, 1–31.
    pub(crate) days: u64,
    /// Months, 1–12.
    months: u64,
    /// Days of the week, 0–6 from Sunday; a 7 in the spec is folded into 0.
    weekdays: u64,
    /// Whether a day matches when either day field does rather than both:
    /// cron's rule when both are restricted, that is neither starts with `*`.
    either_day: bool,
}

/// One cron field: its name for error messages, its range and its names.
struct CronField {
    /// What one value of the field is called: "minute", "month", ….
    pub(crate) name: &'static str,
    /// The smallest value.
    pub(crate) low: u32,
    /// The largest value.
    pub(crate) high: u32,
    /// The names of `low`, `low + 1`, …, matched in any case.
    pub(crate) names: &'static [&'static str],
}

impl CronField {
    /// Describes a field of values `low..=high` with these names.
    pub(crate) const fn new(
        name: &'static str,
        low: u32,
        high: u32,
        names: &'static [&'static str],
    ) -> Self {
        CronField {
            name,
            low,
            high,
            names,
        }
    }
}

/// The five fields in the order a spec writes them. Day of week runs to 7
/// because cron lets 7 mean Sunday, as 0 does.
const CRON_FIELDS: [CronField; 5] = [
    CronField::new("minute", 0, 59, &[]),
    CronField::new("hour", 0, 23, &[]),
    CronField::new("day of month", 1, 31, &[]),
    CronField::new("month", 1, 12, &MONTH_NAMES),
    CronField::new("day of week", 0, 7, &WEEKDAY_NAMES),
];

/// The weekday names cron knows, `sun` for 0.
const WEEKDAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The month names cron knows, `jan` for 1.
const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Parses a `--schedule` SPEC: five cron fields, `@yearly` (`@annually`),
/// `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`, or `@every
/// DURATION` of at least 1s; the error is a sentence saying what is wrong.
///
/// Fields are separated by runs of spaces or tabs. Each is a comma-separated
/// list of `*`, `N`, `A-B`, `*/S` and `A-B/S`, where months and weekdays may
/// be names in any case, also in ranges (`mon-fri`). As in cronie, a weekday
/// range ending at Sunday (`fri-sun`, `5-0`) ends at 7, and `N/S` is refused
/// rather than read as `N-MAX/S` (Vixie cron and cronie refuse it too; some
/// libraries accept it). A step may not exceed the field's largest value. A
/// spec that can never fire (`0 0 31 2 *`) is refused: cron would accept it
/// and silently never run it.
fn parse_spec(text: &str) -> Result<Spec, String> {
    let text = text.trim_matches([' ', '\t']);
    if let Some(rest) = text.strip_prefix("@every") {
        let duration = rest.trim_start_matches([' ', '\t']);
        if duration.is_empty() {
            return Err("@every needs a duration, such as @every 30s".into());
        }
        // `@everyday` is not `@every` and falls through to "unknown".
        if duration.len() < rest.len() {
            let every = parse_duration(duration)?;
            if every < Duration::from_secs(1) {
                return Err(format!("@every needs at least 1s, not {duration}"));
            }
            return Ok(Spec::Every(every));
        }
    }
    let fields = match text {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ if text.starts_with('@') => {
            let known = "@yearly, @monthly, @weekly, @daily, @hourly or @every";
            return Err(format!("unknown schedule {text:?}: use {known}"));
        }
        _ => text,
    };
    let fields: Vec<&str> = fields
        .split([' ', '\t'])
        .filter(|f| !f.is_empty())
        .collect();
    let [minutes, hours, days, months, weekdays] = fields[..] else {
        return Err(format!("expected 5 fields, found {}", fields.len()));
    };
    let cron = Cron {
        minutes: parse_cron_field(minutes, &CRON_FIELDS[0])?,
        hours: parse_cron_field(hours, &CRON_FIELDS[1])?,
        days: parse_cron_field(days, &CRON_FIELDS[2])?,
        months: parse_cron_field(months, &CRON_FIELDS[3])?,
        weekdays: parse_cron_field(weekdays, &CRON_FIELDS[4]).map(|w| (w | w >> 7) & 0x7f)?,
        // Vixie cron's test, kept by cronie: `*/2` counts as unrestricted too.
        either_day: !days.starts_with('*') && !weekdays.starts_with('*'),
    };
    // Any date that can ever match appears in the first calendar cycle.
    if cron.first_from(0).is_none() {
        return Err("it can never fire: no date matches its day and month fields".into());
    }
    Ok(Spec::Cron(cron))
}

/// Parses one cron field into the bitset of the values it matches.
fn parse_cron_field(text: &str, field: &CronField) -> Result<u64, String> {
    let mut bits = 0;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let (first, last) = match (range.split_once('-'), step) {
            _ if range == "*" => (field.low, field.high),
            (Some((first, last)), _) => {
                let first = parse_cron_value(first, field, text)?;
                let last = match parse_cron_value(last, field, text)? {
                    0 if field.high == 7 && first > 0 => 7,
                    last => last,
                };
                if first > last {
                    return Err(format!("range {range} is backwards"));
                }
                (first, last)
            }
            (None, Some(step)) => {
                let high = field.high;
                let fix = format!("{range}-{high}/{step}");
                return Err(format!("{item:?} has a step but no range: write {fix:?}"));
            }
            (None, None) => {
                let value = parse_cron_value(range, field, text)?;
                (value, value)
            }
        };
        let steps = CronField::new("step", 1, field.high, &[]);
        let step = match step {
            Some(step) => parse_cron_value(step, &steps, text)?,
            None => 1,
        };
        for value in (first..=last).step_by(step as usize) {
            bits |= 1 << value;
        }
    }
    Ok(bits)
}

/// Parses one value of a field (a number, or a name for months and
/// weekdays) from `text`, a part of the field `whole`.
fn parse_cron_value(text: &str, field: &CronField, whole: &str) -> Result<u32, String> {
    let name = field.name;
    let value = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // A number too long for a u32 is out of range like any other.
        text.parse().unwrap_or(u32::MAX)
    } else if let Some(i) = field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
    {
        field.low + i as u32
    } else if text.is_empty() {
        return Err(format!("missing {name} in {whole:?}"));
    } else if field.names.is_empty() {
        return Err(format!("{name} {text:?} is not a number"));
    } else {
        return Err(format!("unknown name {text:?} for a {name}"));
    };
    if !(field.low..=field.high).contains(&value) {
        let (low, high) = (field.low, field.high);
        return Err(format!("{name} {text} is out of range {low}-{high}"));
    }
    Ok(value)
}

/// Returns the first firing of `spec` strictly after `after_ms`, both in
/// milliseconds since the epoch; `None` if there is none before the end of
/// time as a u64 counts it. `@every` fires `after_ms` plus its interval: the
/// caller passes the previous firing, or the start.
fn next_firing(spec: &Spec, after_ms: u64) -> Option<u64> {
    match spec {
        Spec::Every(every) => after_ms.checked_add(u64::try_from(every.as_millis()).ok()?),
        // Cron fires on whole minutes, so the first candidate is the next one.
        Spec::Cron(cron) => cron.first_from(after_ms / 60_000 + 1)?.checked_mul(60_000),
    }
}

/// Returns when a schedule fires next after its firing due at `due`, at
/// `now` (ms since the epoch). `@every` keeps to the grid its first firing
/// set: the next is `due` plus the interval, however late this one ran, so
/// firings do not drift by the time each takes to start. A server that fell
/// more than an interval behind skips to the first time on that grid from
/// `now` on rather than firing the missed ones in a burst; cron specs fire
/// at the first whole minute after both. Missed firings are not made up.
pub(crate) fn firing_after(spec: &Spec, due: u64, now: u64) -> Option<u64> {
    match spec {
        Spec::Every(every) => {
            let every = u64::try_from(every.as_millis()).ok().filter(|&e| e > 0)?;
            let intervals = now.saturating_sub(due).div_ceil(every).max(1);
            due.checked_add(intervals.checked_mul(every)?)
        }
        Spec::Cron(_) => next_firing(spec, due.max(now)),
    }
}

impl Cron {
    /// Finds the first firing at or after `start`, both in minutes since
    /// the epoch, field by field: the day first, then the time in that day.
    fn first_from(&self, start: u64) -> Option<u64> {
        let today = start / 1440;
        let mut day = self.next_day(today)?;
        if day == today {
            match self.time_from(start % 1440) {
                Some(minute) => return Some(today * 1440 + minute),
                None => day = self.next_day(today + 1)?,
            }
        }
        Some(day * 1440 + self.time_from(0)?)
    }

    /// Finds the first minute of a day at or after `from` (minutes since
    /// midnight) whose hour and minute match.
    fn time_from(&self, from: u64) -> Option<u64> {
        let (hour, minute) = (from / 60, from % 60);
        if self.hours >> hour & 1 == 1
            && let Some(minute) = next_bit(self.minutes, minute)
        {
            return Some(hour * 60 + minute);
        }
        Some(next_bit(self.hours, hour + 1)? * 60 + next_bit(self.minutes, 0)?)
    }

    /// Finds the first day at or after `from` (days since the epoch) whose
    /// month and day match, within one calendar cycle.
    fn next_day(&self, from: u64) -> Option<u64> {
        let (start_year, start_month, start_day) = civil_from_days(i64::try_from(from).ok()?);
        for year in start_year..=start_year + CALENDAR_CYCLE_YEARS {
            let first_month = if year == start_year { start_month } else { 1 };
            for month in first_month..=12 {
                if self.months >> month & 1 == 0 {
                    continue;
                }
                let first_day = if (year, month) == (start_year, start_month) {
                    start_day
                } else {
                    1
                };
                if let Some(day) = next_bit(self.matching_days(year, month), u64::from(first_day)) {
                    return u64::try_from(days_from_civil(year, month, day as u32)).ok();
                }
            }
        }
        None
    }

    /// Returns the days of `month` in `year` that match, as a bitset: by
    /// cron's rule, the days either day field matches if both are
    /// restricted, else the days both match.
    fn matching_days(&self, year: i64, month: u32) -> u64 {
        // The weekday of the 1st, 0 for Sunday: 1970-01-01 was a Thursday.
        let first = (days_from_civil(year, month, 1) + 4).rem_euclid(7) as u32;
        // Bit i of `week` says whether day i + 1 has a matching weekday;
        // five weeks of it cover the longest month.
        let week = (self.weekdays >> first | self.weekdays << (7 - first)) & 0x7f;
        let by_weekday = (0..5).fold(0, |days, n| days | week << (1 + 7 * n));
        let days = if self.either_day {
            self.days | by_weekday
        } else {
            self.days & by_weekday
        };
        days & ((2 << days_in_month(year, month)) - 2)
    }
}

/// Returns the position of the lowest set bit of `bits` at or above `from`.
fn next_bit(bits: u64, from: u64) -> Option<u64> {
    let above = if from < 64 { bits >> from << from } else { 0 };
    (above != 0).then(|| u64::from(above.trailing_zeros()))
}

/// Fires schedule `i` of `config`, due at `at`, under the store lock:
/// creates its task in `store` as a POST would, or skips the firing, and
/// counts and logs which. Returns when it fires next.
pub(crate) fn fire(
    store: &mut Store,
    i: usize,
    at: u64,
    config: &Config,
    queues: &[Queue],
) -> Option<u64> {
    let schedule = &config.schedules[i];
    let made = fire_task(store, i, config, queues);
    if let Ok(id) = made {
        let id = store.tasks().task_id(id);
        debug!("schedule {} fired: task {id}", schedule.name);
    }
    store.schedule_fired(i, &schedule.spec, at, made)
}

/// Creates the task of schedule `i`'s firing, unless its previous task is
/// still pending or its queue is full; returns the new task's id, or why
/// there is none.
fn fire_task(
    store: &mut Store,
    i: usize,
    config: &Config,
    queues: &[Queue],
) -> Result<u64, String> {
    let last = store.schedules()[i].last_task();
    if let Some(task) = store.tasks().get(last)
        && matches!(
            task.state,
            State::Scheduled | State::Queued | State::Running
        )
    {
        return Err(format!("its previous task is still {}", task.state.name()));
    }
    // Checked at start-up, and nothing in it depends on the time.
    let schedule = &config.schedules[i];
    let mut new = parse_submission(config, schedule.template.as_bytes())?;
    new.label = new.label.or_else(|| Some(Text::new(&schedule.name)));
    new.schedule = Some(i as u16);
    match store.admit(new, queues) {
        Admission::Created(TaskId { num: id, .. }, ..) => Ok(id),
        Admission::Full => Err("its queue is full".into()),
        Admission::BadAfter(why) => Err(why),
        Admission::ShuttingDown => Err("the server is shutting down".into()),
        other => Err(format!("{other:?}")),
    }
}

/// What the store keeps of a schedule: its firings so far.
#[derive(Debug)]
pub(crate) struct ScheduleState {
    /// Its name.
    name: Arc<str>,
    /// When it fires next, ms since the epoch (0: never, past the end of
    /// time as a u64 counts it).
    next_at: u64,
    /// When it last fired, ms since the epoch; 0 if it has not.
    last_at: u64,
    /// The task its last created firing made; 0 if none.
    last_task: u64,
    /// Firings that created a task.
    created: u64,
    /// Firings skipped: the previous task was still pending, or the queue
    /// was full.
    skipped: u64,
}

impl ScheduleState {
    /// Makes a schedule's state at start: nothing fired yet, the first
    /// firing the next one due from now (missed ones are not made up).
    pub(crate) fn new(config: &ScheduleConfig) -> ScheduleState {
        ScheduleState {
            name: config.name.clone(),
            next_at: next_firing(&config.spec, now_millis()).unwrap_or(0),
            last_at: 0,
            last_task: 0,
            created: 0,
            skipped: 0,
        }
    }

    /// Returns its name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Returns when it fires next, ms since the epoch; 0: never.
    pub(crate) fn next_at(&self) -> u64 {
        self.next_at
    }

    /// Returns when it last fired, ms since the epoch; 0 if it has not.
    pub(crate) fn last_at(&self) -> u64 {
        self.last_at
    }

    /// Returns the task its last created firing made; 0 if none.
    pub(crate) fn last_task(&self) -> u64 {
        self.last_task
    }

    /// Counts its firings: those that created a task, and those skipped.
    pub(crate) fn firings(&self) -> (u64, u64) {
        (self.created, self.skipped)
    }

    /// Notes a firing of `spec` due at `at` that `made` a task (its id), or
    /// was skipped (why); returns when it fires next.
    pub(crate) fn fired(&mut self, spec: &Spec, at: u64, made: Result<u64, String>) -> Option<u64> {
        self.last_at = at;
        match made {
            Ok(id) => (self.last_task, self.created) = (id, self.created + 1),
            Err(why) => {
                self.skipped += 1;
                info!("schedule {}: firing skipped: {why}", self.name);
            }
        }
        self.next_at = firing_after(spec, at, now_millis())?;
        Some(self.next_at)
    }

    /// Counts the firing that made task `id`, taken back because its
    /// record could not be saved, as skipped after all; `earlier` is the
    /// task it made before (0 if none is retained).
    pub(crate) fn unfired(&mut self, id: u64, earlier: u64) {
        if self.last_task == id {
            self.last_task = earlier;
        }
        self.created -= 1;
        self.skipped += 1;
        info!(
            "schedule {}: firing skipped: its task could not be saved to disk",
            self.name
        );
    }

    /// Takes over task `id`, replayed from the journal, which a firing at
    /// `at` made: its next firing must know whether that one is still
    /// pending.
    pub(crate) fn replayed(&mut self, id: u64, at: u64) {
        (self.last_task, self.last_at) = (id, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::*, time::*};
    use std::ffi::OsString;

    use std::time::Duration;

    /// Specs, a time, and their first firing strictly after it. 2026-03-01
    /// is a Sunday. Checked independently by brute force, day by day with
    /// Python's `datetime` (`tools/cron_values.py`).
    #[rustfmt::skip]
    const NEXT_FIRINGS: &[(&str, &str, &str)] = &[
        ("* * * * *",             "2026-03-04T05:06:07Z",     "2026-03-04T05:07:00Z"),
        ("* * * * *",             "2026-03-04T05:06:00Z",     "2026-03-04T05:07:00Z"),
        ("* * * * *",             "2026-12-31T23:59:30Z",     "2027-01-01T00:00:00Z"),
        ("*\t*  * *   *",         "2026-03-04T05:06:07Z",     "2026-03-04T05:07:00Z"),
        ("  0 0 * * *  ",         "2026-03-04T00:00:00Z",     "2026-03-05T00:00:00Z"),
        ("*/7 * * * *",           "2026-03-04T05:56:00Z",     "2026-03-04T06:00:00Z"),
        ("*/7 * * * *",           "2026-03-04T05:49:59.999Z", "2026-03-04T05:56:00Z"),
        ("*/7 * * * *",           "2026-03-04T23:56:00Z",     "2026-03-05T00:00:00Z"),
        ("1-5,10-15/2 * * * *",   "2026-03-04T05:05:00Z",     "2026-03-04T05:10:00Z"),
        ("1-5,10-15/2 * * * *",   "2026-03-04T05:12:00Z",     "2026-03-04T05:14:00Z"),
        ("1-5,10-15/2 * * * *",   "2026-03-04T05:14:00Z",     "2026-03-04T06:01:00Z"),
        ("0,30 * * * *",          "2026-03-04T05:00:00Z",     "2026-03-04T05:30:00Z"),
        ("23 0-20/2 * * *",       "2026-03-04T20:23:00Z",     "2026-03-05T00:23:00Z"),
        ("0 9-17 * * mon-fri",    "2026-03-06T17:00:00Z",     "2026-03-09T09:00:00Z"),
        ("0 9-17 * * MON-FRI",    "2026-03-06T12:30:00Z",     "2026-03-06T13:00:00Z"),
        ("15 10 * * Mon,Wed,Fri", "2026-03-04T10:15:00Z",     "2026-03-06T10:15:00Z"),
        ("0 0 * * 7",             "2026-03-04T12:00:00Z",     "2026-03-08T00:00:00Z"),
        ("0 0 * * 0",             "2026-03-04T12:00:00Z",     "2026-03-08T00:00:00Z"),
        ("0 0 * * sun",           "2026-03-04T12:00:00Z",     "2026-03-08T00:00:00Z"),
        ("0 0 * * sun-sun",       "2026-03-04T12:00:00Z",     "2026-03-08T00:00:00Z"),
        ("0 0 * * 1",             "2026-03-09T00:00:00Z",     "2026-03-16T00:00:00Z"),
        ("5 4 * * sat-sun",       "2026-03-04T00:00:00Z",     "2026-03-07T04:05:00Z"),
        ("5 4 * * sat-sun",       "2026-03-07T04:05:00Z",     "2026-03-08T04:05:00Z"),
        ("0 0 * * fri-sun",       "2026-03-08T00:00:00Z",     "2026-03-13T00:00:00Z"),
        ("0 0 * * 5-7",           "2026-03-08T00:00:00Z",     "2026-03-13T00:00:00Z"),
        ("0 12 * jan,jul *",      "2026-02-01T00:00:00Z",     "2026-07-01T12:00:00Z"),
        ("30 4 1 JAN *",          "2026-01-01T04:30:00Z",     "2027-01-01T04:30:00Z"),
        ("0 0 1 */3 *",           "2026-10-01T00:00:00Z",     "2027-01-01T00:00:00Z"),
        // Friday or the 13th; both, and each alone.
        ("0 0 13 * 5",            "2026-03-01T00:00:00Z",     "2026-03-06T00:00:00Z"),
        ("0 0 13 * 5",            "2026-04-10T00:00:00Z",     "2026-04-13T00:00:00Z"),
        ("0 0 13 * fri",          "2026-03-06T00:00:00Z",     "2026-03-13T00:00:00Z"),
        ("0 0 1-7 * 1",           "2026-03-10T00:00:00Z",     "2026-03-16T00:00:00Z"),
        // A day field starting with `*` makes both fields count.
        ("0 0 */2 * 1",           "2026-03-01T00:00:00Z",     "2026-03-09T00:00:00Z"),
        ("0 0 31 * *",            "2026-04-01T00:00:00Z",     "2026-05-31T00:00:00Z"),
        ("0 0 31 * *",            "2026-05-31T00:00:00Z",     "2026-07-31T00:00:00Z"),
        ("0 0 31 1-12/2 *",       "2026-07-31T00:00:00Z",     "2027-01-31T00:00:00Z"),
        ("0 0 30 2,4 *",          "2026-03-01T00:00:00Z",     "2026-04-30T00:00:00Z"),
        ("0 0 28-31 2 *",         "2027-02-28T00:00:00Z",     "2028-02-28T00:00:00Z"),
        ("0 0 29 2 *",            "2025-01-01T00:00:00Z",     "2028-02-29T00:00:00Z"),
        ("0 0 29 2 *",            "2096-03-01T00:00:00Z",     "2104-02-29T00:00:00Z"),
        ("0 0 29 2 *",            "2000-02-29T00:00:00Z",     "2004-02-29T00:00:00Z"),
        ("0 0 29 2 1",            "2026-02-24T00:00:00Z",     "2027-02-01T00:00:00Z"),
        ("0 0 29 2 1",            "2028-02-28T00:00:00Z",     "2028-02-29T00:00:00Z"),
        ("0 0 29 2 mon",          "1970-01-01T00:00:00Z",     "1970-02-02T00:00:00Z"),
        ("0 0 29 2 */7",          "2088-03-01T00:00:00Z",     "2128-02-29T00:00:00Z"),
        ("0 0 1 1 *",             "2026-06-01T00:00:00Z",     "2027-01-01T00:00:00Z"),
        ("59 23 31 12 *",         "2026-12-31T23:59:00Z",     "2027-12-31T23:59:00Z"),
        ("0 0 31 12 *",           "2026-12-31T00:00:00.001Z", "2027-12-31T00:00:00Z"),
        ("0 0 1 1 *",             "9998-06-01T00:00:00Z",     "9999-01-01T00:00:00Z"),
        ("@hourly",               "2026-03-04T05:00:00Z",     "2026-03-04T06:00:00Z"),
        ("@daily",                "2026-03-04T00:00:00Z",     "2026-03-05T00:00:00Z"),
        ("@midnight",             "2026-03-04T23:59:59.999Z", "2026-03-05T00:00:00Z"),
        ("@weekly",               "2026-03-08T00:00:00Z",     "2026-03-15T00:00:00Z"),
        ("@monthly",              "2026-12-15T00:00:00Z",     "2027-01-01T00:00:00Z"),
        ("@yearly",               "2026-01-01T00:00:00Z",     "2027-01-01T00:00:00Z"),
        ("@annually",             "2026-06-01T00:00:00Z",     "2027-01-01T00:00:00Z"),
        ("@every 90s",            "2026-03-04T12:00:00.250Z", "2026-03-04T12:01:30.250Z"),
        ("@every 1h30m",          "2026-03-04T23:00:00Z",     "2026-03-05T00:30:00Z"),
    ];

    /// Specs that must be refused, with the start of their error sentence.
    const BAD_SPECS: &[(&str, &str)] = &[
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("99999999999 * * * *", "minute 99999999999 is out of"),
        ("* 24 * * *", "hour 24 is out of range 0-23"),
        ("* * 0 * *", "day of month 0 is out of range 1-31"),
        ("* * 32 * *", "day of month 32 is out of range 1-31"),
        ("* * * 0 *", "month 0 is out of range 1-12"),
        ("* * * 13 *", "month 13 is out of range 1-12"),
        ("* * * * 8", "day of week 8 is out of range 0-7"),
        ("5-2 * * * *", "range 5-2 is backwards"),
        ("* * * * sat-mon", "range sat-mon is backwards"),
        ("*/0 * * * *", "step 0 is out of range 1-59"),
        ("1-5/0 * * * *", "step 0 is out of range 1-59"),
        ("* */24 * * *", "step 24 is out of range 1-23"),
        ("*/x * * * *", "step \"x\" is not a number"),
        ("*/ * * * *", "missing step in \"*/\""),
        ("5/15 * * * *", "\"5/15\" has a step but no range"),
        ("* * * foo *", "unknown name \"foo\" for a month"),
        ("* * * january *", "unknown name \"january\" for a month"),
        ("* * * * funday", "unknown name \"funday\" for a day"),
        ("* * * * mon-foo", "unknown name \"foo\" for a day of week"),
        ("jan * * * *", "minute \"jan\" is not a number"),
        ("1.5 * * * *", "minute \"1.5\" is not a number"),
        ("+1 * * * *", "minute \"+1\" is not a number"),
        ("\u{ff11} * * * *", "minute \"\u{ff11}\" is not a number"),
        ("1, * * * *", "missing minute in \"1,\""),
        (",1 * * * *", "missing minute in \",1\""),
        ("--1 * * * *", "missing minute in \"--1\""),
        ("-1 * * * *", "missing minute in \"-1\""),
        ("* * * * * *", "expected 5 fields, found 6"),
        ("* * * *", "expected 5 fields, found 4"),
        ("", "expected 5 fields, found 0"),
        (" \t ", "expected 5 fields, found 0"),
        ("@every 0s", "@every needs at least 1s"),
        ("@every 500ms", "@every needs at least 1s"),
        ("@every", "@every needs a duration"),
        ("@every -5s", "negative duration"),
        ("@every 1x", "unknown unit in duration"),
        ("@reboot", "unknown schedule \"@reboot\""),
        ("@foo", "unknown schedule \"@foo\""),
        ("@everyday", "unknown schedule \"@everyday\""),
        ("@daily 5", "unknown schedule \"@daily 5\""),
        ("0 0 31 2 *", "it can never fire"),
        ("0 0 30 2 *", "it can never fire"),
        ("0 0 30-31 feb *", "it can never fire"),
        ("0 0 31 4,6,9,11 *", "it can never fire"),
        ("0 0 31 2 */7", "it can never fire"),
    ];

    /// Reads a time from the table, which writes them all in RFC 3339.
    fn millis(text: &str) -> u64 {
        parse_rfc3339(text)
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or_else(|| panic!("bad time {text:?} in the table"))
    }

    #[test]
    fn next_firings_match_the_table() {
        for &(text, after, expected) in NEXT_FIRINGS {
            let spec = parse_spec(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let next = next_firing(&spec, millis(after));
            assert_eq!(
                next,
                Some(millis(expected)),
                "{text:?} after {after}: {expected}"
            );
        }
    }

    #[test]
    fn every_keeps_to_its_grid_and_skips_what_it_fell_behind() {
        let every = parse_spec("@every 1s").unwrap();
        let due = 1_796_000_000_123;
        // (ms late, the next firing's distance from `due`)
        let cases = [
            (0, 1000),
            (1, 1000),
            (999, 1000),
            // Due again at the very moment: it fires at once, not skipped.
            (1000, 1000),
            (1001, 2000),
            (3500, 4000),
            (86_400_500, 86_401_000),
        ];
        for (late, next) in cases {
            assert_eq!(
                firing_after(&every, due, due + late),
                Some(due + next),
                "{late} ms late"
            );
        }
        // A clock that stepped back never fires before the next due time.
        assert_eq!(firing_after(&every, due, due - 5000), Some(due + 1000));
        // A thousand firings each run 1 ms late stay on the grid.
        let mut at = due;
        for _ in 0..1000 {
            at = firing_after(&every, at, at + 1).unwrap();
        }
        assert_eq!(at, due + 1_000_000);
        assert_eq!(firing_after(&every, u64::MAX - 999, u64::MAX), None);
        // Cron fires on the first whole minute after both the due time and now.
        let cron = parse_spec("* * * * *").unwrap();
        let minute = 1_796_000_040_000;
        assert_eq!(
            firing_after(&cron, minute, minute + 5),
            Some(minute + 60_000)
        );
        assert_eq!(
            firing_after(&cron, minute, minute + 150_000),
            Some(minute + 180_000)
        );
    }

    #[test]
    fn bad_specs_are_refused_with_a_sentence() {
        for &(text, start) in BAD_SPECS {
            match parse_spec(text) {
                Ok(spec) => panic!("{text:?} should be refused, got {spec:?}"),
                Err(error) => assert!(error.starts_with(start), "{text:?}: {error:?}"),
            }
        }
    }

    #[test]
    fn shortcuts_are_their_cron_fields() {
        let cases = [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ];
        for (shortcut, fields) in cases {
            assert_eq!(parse_spec(shortcut), parse_spec(fields), "{shortcut}");
        }
        assert_eq!(
            parse_spec("@every 1m30s"),
            Ok(Spec::Every(Duration::from_secs(90)))
        );
        assert_eq!(
            parse_spec("@every\t1s "),
            Ok(Spec::Every(Duration::from_secs(1)))
        );
    }

    #[test]
    fn firings_past_the_end_of_time_are_none() {
        for text in ["* * * * *", "@every 1s"] {
            let spec = parse_spec(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(next_firing(&spec, u64::MAX), None, "{text:?}");
            assert_eq!(next_firing(&spec, u64::MAX - 999), None, "{text:?}");
        }
    }

    /// Tells whether `cron` fires in `minute` (minutes since the epoch),
    /// straight from cron's definition, minute by minute: the reference.
    fn fires_in(cron: &Cron, minute: u64) -> bool {
        let has = |bits: u64, value: u64| bits >> value & 1 == 1;
        let days = minute / 1440;
        let (_, month, day) = civil_from_days(days as i64);
        let (by_day, by_weekday) = (
            has(cron.days, day.into()),
            has(cron.weekdays, (days + 4) % 7),
        );
        has(cron.minutes, minute % 60)
            && has(cron.hours, minute / 60 % 24)
            && has(cron.months, month.into())
            && if cron.either_day {
                by_day || by_weekday
            } else {
                by_day && by_weekday
            }
    }

    #[test]
    fn next_firings_agree_with_a_minute_by_minute_search() {
        // Each spec is asked after 10,000 consecutive times `stride` minutes
        // apart from `from`, each at 0, 1 and 59,999 ms past the minute.
        let cases = [
            ("*/7 * * * *", "2026-12-31T23:00:00Z", 1),
            ("1-5,10-15/2 9-17 * * *", "2026-03-01T08:00:00Z", 1),
            ("0 0 13 * 5", "2026-02-01T00:00:00Z", 60),
            ("0 0 */2 * 1", "2026-02-01T00:00:00Z", 60),
            ("30 23 31 * *", "2026-01-01T00:00:00Z", 60),
            ("0 0 29 2 *", "2096-01-01T00:00:00Z", 1440),
            ("0 0 29 2 1", "2027-12-01T00:00:00Z", 60),
            ("59 23 * * sat-sun", "2026-03-01T00:00:00Z", 7),
            ("@weekly", "2026-12-20T00:00:00Z", 30),
            ("0 0 1 1 *", "2026-12-31T22:00:00Z", 1),
            ("* 0 1 1 *", "2026-12-31T23:00:00Z", 1),
        ];
        for (text, from, stride) in cases {
            let Ok(Spec::Cron(cron)) = parse_spec(text) else {
                panic!("{text:?} should parse as cron fields");
            };
            let spec = Spec::Cron(cron.clone());
            let mut expected = 0; // a minute since the epoch
            for i in 0..10_000 {
                for offset in [0, 1, 59_999] {
                    let after = millis(from) + i * stride * 60_000 + offset;
                    if expected * 60_000 <= after {
                        expected = after / 60_000 + 1;
                        while !fires_in(&cron, expected) {
                            expected += 1;
                        }
                    }
                    let next = next_firing(&spec, after);
                    assert_eq!(next, Some(expected * 60_000), "{text:?} after {after} ms");
                }
            }
        }
    }

    #[test]
    fn schedules_are_checked_at_start_and_bad_ones_named() {
        let parse = |schedule: &str| {
            let args = ["--queue", "slow=1", "--schedule", schedule].map(OsString::from);
            parse_command(args, |_| None).map(|c| match c {
                Command::Run(config) => config.schedules.len(),
                _ => 0,
            })
        };
        let good = [
            r#"nightly-backup=0 3 * * * {"work_duration": "1s", "queue": "slow"}"#,
            r#"heartbeat=@every 30s {"work_duration": "1s"}"#,
            r#"x=*/7 1-5,10-15/2 * jan-mar MON-FRI {"work_duration": "0s", "payload": {"delay": 1}}"#,
        ];
        for schedule in good {
            assert_eq!(parse(schedule), Ok(1), "{schedule}");
        }
        let bad: &[(&str, &str)] = &[
            (
                "nightly 0 3 * * * {}",
                "--schedule \"nightly 0 3 * * * {}\": expected NAME=SPEC TEMPLATE",
            ),
            (
                r#"n=0 3 * * *"#,
                "--schedule \"n\": expected NAME=SPEC TEMPLATE",
            ),
            (
                r#"Bad=0 3 * * * {"work_duration": "1s"}"#,
                "--schedule \"Bad\": NAME must be",
            ),
            (
                r#"=0 3 * * * {"work_duration": "1s"}"#,
                "--schedule \"\": NAME must be",
            ),
            (
                r#"n=60 3 * * * {"work_duration": "1s"}"#,
                "--schedule \"n\": SPEC \"60 3 * * *\": minute 60 is out of range",
            ),
            (
                r#"n=5-2 3 * * * {"work_duration": "1s"}"#,
                "range 5-2 is backwards",
            ),
            (
                r#"n=*/0 3 * * * {"work_duration": "1s"}"#,
                "step 0 is out of range",
            ),
            (
                r#"n=0 3 * foo * {"work_duration": "1s"}"#,
                "unknown name \"foo\"",
            ),
            (
                r#"n=0 3 * * * * {"work_duration": "1s"}"#,
                "expected 5 fields, found 6",
            ),
            (
                r#"n=0 0 31 2 * {"work_duration": "1s"}"#,
                "it can never fire",
            ),
            (
                r#"n=@every 0s {"work_duration": "1s"}"#,
                "@every needs at least 1s",
            ),
            (
                r#"n=@every 500ms {"work_duration": "1s"}"#,
                "@every needs at least 1s",
            ),
            (
                r#"n=@reboot {"work_duration": "1s"}"#,
                "unknown schedule \"@reboot\"",
            ),
            (
                r#"n=@daily {"work_duration": 5}"#,
                "--schedule \"n\": TEMPLATE: failed to read POST body",
            ),
            (
                r#"n=@daily {"work_duration": "1s"} trailing"#,
                "TEMPLATE: failed to read POST body",
            ),
            (
                r#"n=@daily {}"#,
                "TEMPLATE: failed to parse work duration in request",
            ),
            (
                r#"n=@daily {"kind": "nope"}"#,
                "TEMPLATE: unknown task kind \"nope\"",
            ),
            (
                r#"n=@daily {"work_duration": "1s", "queue": "fast"}"#,
                "TEMPLATE: unknown queue \"fast\"",
            ),
            (
                r#"n=@daily {"work_duration": "1s", "delay": "0s"}"#,
                "TEMPLATE: run_at and delay are for the schedule to say",
            ),
            (
                r#"n=@daily {"work_duration": "1s", "run_at": "2020-01-01T00:00:00Z"}"#,
                "TEMPLATE: run_at and delay",
            ),
        ];
        for &(schedule, error) in bad {
            let got = parse(schedule);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(error)),
                "{schedule}: {got:?}"
            );
            assert!(got.is_err_and(|e| !e.contains('\n')));
        }
        let twice = ["--schedule", good[1], "--schedule", good[1]].map(OsString::from);
        assert!(parse_command(twice, |_| None).is_err_and(|e| e.contains("given twice")));
    }
}
