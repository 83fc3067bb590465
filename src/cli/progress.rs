//! How `apply`, `resume` and `abort` show a migration as it goes.
//!
//! Three styles, chosen by flags:
//!
//! - text (default): a line on stdout per phase change (any event that is
//!   not a progress report) and, when stderr is a terminal, one progress bar
//!   per move on stderr (rows copied of the estimate, rows/s, ETA, catch-up
//!   lag); bars and lines never garble each other (lines are printed with
//!   the bars suspended). When stderr is not a terminal there are no bars
//!   and no escape codes: progress becomes a plain line at most every
//!   [`PLAIN_EVERY`] per move.
//! - `--quiet`: nothing but errors (stderr) and the final line.
//! - `--json`: every event as one JSON object per line on stdout, flushed,
//!   with a `time` (RFC 3339, UTC, milliseconds); no bars, no text.
//!
//! Events are read generically ([`Reading`]), never by name, so events the
//! orchestrator adds later render without changes: an event whose `detail`
//! carries a row count (`rows`) or a catch-up lag (`backlog`, `lag`,
//! `lag_*`) is progress; anything else is a phase line with its detail as
//! `key=value` pairs.
//!
//! Output goes through [`super::output`]: a closed stdout silences the rest
//! of the migration's output (the migration itself goes on) and the command
//! then ends quietly.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{
    HumanCount, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle,
};
use postshard_rebalancer::migrate::Event;
use serde_json::Value;

use super::output;
use super::Failure;

/// How often a plain (non-terminal) progress line is printed per move.
pub const PLAIN_EVERY: Duration = Duration::from_secs(30);

/// Events that end a migration's output.
const FINAL: [&str; 2] = ["done", "aborted"];

/// What the operator asked to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Phase lines, plus bars on a terminal.
    Text,
    /// Errors and the final line only.
    Quiet,
    /// One JSON event per line.
    Json,
}

impl Style {
    /// The style for `--quiet` and `--json` (clap makes them exclusive).
    pub fn from_flags(quiet: bool, json: bool) -> Style {
        match (quiet, json) {
            (_, true) => Style::Json,
            (true, false) => Style::Quiet,
            (false, false) => Style::Text,
        }
    }
}

/// What an event's detail says about progress, read by key, not by event
/// name: `rows` (the move's rows copied so far), `estimate` (the move's rows
/// expected), `table` (the table being copied), `phase`, and the catch-up
/// lag: `backlog` (captured changes waiting), or any numeric `lag` or
/// `lag_<unit>` (`lag_rows`, `lag_ms`, `lag_bytes`…).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// The move's rows copied so far.
    pub rows: Option<u64>,
    /// The move's rows expected in all.
    pub estimate: Option<u64>,
    /// The table being copied.
    pub table: Option<String>,
    /// A phase named in the detail.
    pub phase: Option<String>,
    /// Catch-up lag: (unit, amount); the unit is empty for a bare `lag`.
    pub lag: Option<(String, f64)>,
    /// Rows per second, as recorded (`rows_per_sec`).
    pub rate: Option<f64>,
    /// Seconds left, as recorded (`eta_s`).
    pub eta_s: Option<f64>,
    /// Milliseconds since the record was made (`age_ms`).
    pub age_ms: Option<u64>,
}

impl Reading {
    /// Reads `detail` (anything but an object reads as nothing).
    pub fn of(detail: &Value) -> Reading {
        let Value::Object(o) = detail else {
            return Reading::default();
        };
        let count = |keys: &[&str]| keys.iter().find_map(|k| o.get(*k).and_then(Value::as_u64));
        let lag = o.iter().find_map(|(k, v)| {
            let unit = match k.as_str() {
                "lag" => "",
                "backlog" => "changes",
                other => other.strip_prefix("lag_")?,
            };
            Some((unit.to_string(), v.as_f64()?))
        });
        Reading {
            rows: count(&["rows", "rows_copied"]),
            estimate: count(&["estimate", "rows_estimate", "estimated_rows"]),
            table: o.get("table").and_then(Value::as_str).map(str::to_string),
            phase: o.get("phase").and_then(Value::as_str).map(str::to_string),
            lag,
            rate: o.get("rows_per_sec").and_then(Value::as_f64),
            eta_s: o.get("eta_s").and_then(Value::as_f64),
            age_ms: o.get("age_ms").and_then(Value::as_u64),
        }
    }

    /// Whether this is a progress report (rows or lag) rather than a phase change.
    pub fn is_progress(&self) -> bool {
        self.rows.is_some() || self.lag.is_some()
    }
}

/// `lag 1,234 rows`, `lag 250 ms`, `lag 3`.
fn lag_text((unit, amount): &(String, f64)) -> String {
    let amount = if amount.fract() == 0.0 && amount.abs() < 1e15 {
        // Whole and small enough: exact as an integer.
        HumanCount(amount.abs() as u64).to_string()
    } else {
        format!("{amount:.1}")
    };
    if unit.is_empty() {
        format!("lag {amount}")
    } else {
        format!("lag {amount} {unit}")
    }
}

/// `key=value` pairs of an object detail (nested values as JSON), a
/// non-object detail as JSON, nothing for `{}` or `null`.
pub fn detail_text(detail: &Value) -> String {
    match detail {
        Value::Null => String::new(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// `migration 7: move 0: fenced detail…`.
pub fn event_line(event: &Event) -> String {
    let mut line = format!("migration {}: ", event.migration);
    if let Some(i) = event.move_index {
        let _ = write!(line, "move {i}: ");
    }
    line.push_str(&event.event);
    let detail = detail_text(&event.detail);
    if !detail.is_empty() {
        line.push(' ');
        line.push_str(&detail);
    }
    line
}

/// `2026-11-30T01:09:02.123Z` for `t` (UTC; before 1970 reads as 1970).
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Year, month, day of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// One JSON line for `event`: its fields plus `time`.
pub fn json_line(event: &Event, now: SystemTime) -> Result<String, serde_json::Error> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        time: String,
        #[serde(flatten)]
        event: &'a Event,
    }
    serde_json::to_string(&Line {
        time: rfc3339(now),
        event,
    })
}

/// A move's progress as the events told it.
#[derive(Debug, Default)]
struct MoveState {
    /// Rows copied so far, once reported.
    rows: Option<u64>,
    estimate: Option<u64>,
    /// The table being copied.
    table: Option<String>,
    lag: Option<(String, f64)>,
    phase: String,
    first_rows: Option<(Instant, u64)>,
    /// Rate and time left as another process recorded them (`status`).
    recorded_rate: Option<f64>,
    eta_s: Option<f64>,
    last_plain: Option<Instant>,
    bar: Option<ProgressBar>,
}

impl MoveState {
    fn rows(&self) -> u64 {
        self.rows.unwrap_or(0)
    }

    fn update(&mut self, reading: &Reading) {
        if let Some(rows) = reading.rows {
            self.rows = Some(rows);
            if reading.estimate.is_some() {
                self.estimate = reading.estimate;
            }
            if reading.table.is_some() {
                self.table.clone_from(&reading.table);
            }
            self.first_rows.get_or_insert((Instant::now(), rows));
        }
        if reading.lag.is_some() {
            self.lag.clone_from(&reading.lag);
        }
        if reading.rate.is_some() {
            self.recorded_rate = reading.rate;
            self.eta_s = reading.eta_s;
        }
    }

    /// `1,234 of ~5,000 rows (24%), 850 rows/s, lag 12 rows` for plain lines.
    fn summary(&self) -> String {
        let rows = self.rows();
        let mut out = format!("{} ", HumanCount(rows));
        match self.estimate {
            Some(est) if est > 0 => {
                let pct = (rows as f64 / est as f64 * 100.0).min(100.0);
                let _ = write!(out, "of ~{} rows ({pct:.0}%)", HumanCount(est));
            }
            _ => out.push_str("rows"),
        }
        let seen = self.first_rows.and_then(|(t0, r0)| {
            let secs = t0.elapsed().as_secs_f64();
            (secs > 0.0 && rows > r0).then(|| (rows - r0) as f64 / secs)
        });
        if let Some(rate) = self.recorded_rate.or(seen) {
            let _ = write!(out, ", {} rows/s", HumanCount(rate as u64));
        }
        if let Some(eta) = self.eta_s {
            let _ = write!(
                out,
                ", ETA {}",
                HumanDuration(Duration::from_secs_f64(eta.max(0.0)))
            );
        }
        if let Some(lag) = &self.lag {
            let _ = write!(out, ", {}", lag_text(lag));
        }
        out
    }

    /// The bar's message: phase, the table being copied, lag when known.
    fn message(&self) -> String {
        let mut out = self.phase.clone();
        if let Some(table) = &self.table {
            let _ = write!(out, " ({table})");
        }
        if let Some(lag) = &self.lag {
            let _ = write!(out, " · {}", lag_text(lag));
        }
        out
    }
}

/// A progress record read on its own (`postshard status`): rows of the
/// estimate and lag, as a plain progress line shows them.
pub fn reading_summary(reading: &Reading) -> String {
    let mut state = MoveState::default();
    state.update(reading);
    let mut out = state.summary();
    if let Some(age) = reading.age_ms {
        let _ = write!(out, " ({:.1} s ago)", age as f64 / 1000.0);
    }
    out
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>8} {spinner} {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn counting_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>8} {spinner} {human_pos} rows, {rate} {elapsed:>4} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_spinner())
    .with_key("rate", rate_key)
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>8} [{bar:28}] {human_pos}/{human_len} rows, {rate}, ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key("rate", rate_key)
    .progress_chars("=> ")
}

fn rate_key(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{} rows/s", HumanCount(state.per_sec() as u64));
}

/// What a move is doing once step `phase` is journaled, for bars and
/// progress lines (the journal names a step by its outcome: `copied` is
/// journaled before the copy starts, so "copied 0 rows" would misread).
fn doing(phase: &str) -> &str {
    match phase {
        "copied" => "copying",
        "caught_up" => "catching up",
        "fenced" => "fencing",
        "verified" => "verifying",
        "flipped" => "flipping",
        "routers_acked" => "waiting for routers",
        "cleaned" => "cleaning up",
        other => other,
    }
}

/// Renders a migration's events in one [`Style`].
pub struct Progress {
    style: Style,
    /// Bars on stderr; `None` unless text style on a terminal.
    multi: Option<MultiProgress>,
    moves: BTreeMap<(i64, u32), MoveState>,
    /// Stdout's reader went away: print nothing more.
    closed: bool,
}

impl Progress {
    /// A renderer; bars only in text style with stderr a terminal.
    pub fn new(style: Style) -> Progress {
        let multi = (style == Style::Text)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            .filter(|m| !m.is_hidden());
        Progress {
            style,
            multi,
            moves: BTreeMap::new(),
            closed: false,
        }
    }

    /// Shows one event.
    pub fn event(&mut self, event: &Event) {
        match self.style {
            Style::Quiet => {}
            Style::Json => match json_line(event, SystemTime::now()) {
                Ok(line) => self.print(&format!("{line}\n")),
                Err(e) => output::eprint(format!("warning: event not encoded: {e}\n")),
            },
            Style::Text => self.text(event),
        }
    }

    fn text(&mut self, event: &Event) {
        let reading = Reading::of(&event.detail);
        let progress = reading.is_progress();
        if let Some(index) = event.move_index {
            let state = self.moves.entry((event.migration, index)).or_default();
            state.update(&reading);
            if !progress {
                state.phase = reading
                    .phase
                    .clone()
                    .unwrap_or_else(|| doing(&event.event).to_string());
            }
            if let Some(multi) = &self.multi {
                draw(multi, index, state);
            } else if progress && state.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
                state.last_plain = Some(Instant::now());
                let line = format!(
                    "migration {}: move {index}: {} {}\n",
                    event.migration,
                    state.phase,
                    state.summary()
                );
                self.print(&line);
                return;
            }
        }
        if FINAL.contains(&event.event.as_str()) {
            self.finish_bars(event.migration);
        }
        if !progress {
            self.print(&format!("{}\n", event_line(event)));
        }
    }

    /// Ends every bar of `migration`, leaving its last state on screen.
    fn finish_bars(&mut self, migration: i64) {
        for ((m, _), state) in self.moves.iter_mut() {
            if *m == migration {
                if let Some(bar) = state.bar.take() {
                    bar.finish();
                }
            }
        }
    }

    /// Writes to stdout, above the bars; a closed stdout silences the rest.
    fn print(&mut self, text: &str) {
        if self.closed {
            return;
        }
        let result = match &self.multi {
            Some(multi) => multi.suspend(|| output::print(text)),
            None => output::print(text),
        };
        match result {
            Ok(()) => {}
            Err(Failure::ClosedStdout) => self.closed = true,
            Err(e) => {
                if let Some(message) = e.message() {
                    output::eprint(format!("{message}\n"));
                }
                self.closed = true;
            }
        }
    }

    /// Ends the output with `line` (text and quiet styles; JSON ends with
    /// the final event). A closed stdout ends the command quietly.
    pub fn finish(mut self, line: &str) -> Result<(), Failure> {
        for state in self.moves.values_mut() {
            if let Some(bar) = state.bar.take() {
                bar.finish();
            }
        }
        if self.closed {
            return Err(Failure::ClosedStdout);
        }
        if self.style != Style::Json {
            output::print(format!("{line}\n"))?;
        }
        Ok(())
    }

    /// Clears the bars without a final line (the command failed: its error
    /// follows on stderr).
    pub fn abandon(mut self) {
        for state in self.moves.values_mut() {
            if let Some(bar) = state.bar.take() {
                bar.abandon();
            }
        }
    }
}

/// Creates or updates move `index`'s bar from its state.
fn draw(multi: &MultiProgress, index: u32, state: &mut MoveState) {
    let bar = state
        .bar
        .get_or_insert_with(|| {
            let bar = multi.add(ProgressBar::no_length());
            bar.set_style(spinner_style());
            bar.set_prefix(format!("move {index}"));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        })
        .clone();
    if state.rows.is_some() {
        match state.estimate {
            Some(est) if bar.length() != Some(est) => {
                bar.set_style(bar_style());
                // Never a length below what is already copied.
                bar.set_length(est.max(state.rows()));
            }
            Some(_) => {}
            None if bar.length().is_none() => bar.set_style(counting_style()),
            None => {}
        }
        bar.set_position(state.rows());
    }
    bar.set_message(state.message());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reading_finds_rows_estimate_table_phase_and_lag_by_key() {
        let cases = [
            (json!({}), Reading::default(), false),
            (json!(null), Reading::default(), false),
            (json!({"epoch": 2}), Reading::default(), false),
            // Blocking mode's per-table counts are not progress reports.
            (json!({"copied": {"posts": 10}}), Reading::default(), false),
            (
                json!({"rows": 120, "estimate": 500, "table": "posts"}),
                Reading {
                    rows: Some(120),
                    estimate: Some(500),
                    table: Some("posts".into()),
                    ..Reading::default()
                },
                true,
            ),
            (
                json!({"lag_rows": 12, "phase": "catch_up"}),
                Reading {
                    phase: Some("catch_up".into()),
                    lag: Some(("rows".into(), 12.0)),
                    ..Reading::default()
                },
                true,
            ),
            (
                json!({"backlog": 0, "replayed": 12, "fenced": true}),
                Reading {
                    lag: Some(("changes".into(), 0.0)),
                    ..Reading::default()
                },
                true,
            ),
            (
                json!({"lag": 3}),
                Reading {
                    lag: Some((String::new(), 3.0)),
                    ..Reading::default()
                },
                true,
            ),
            // A lag that is not a number is not a lag.
            (json!({"lag_note": "none"}), Reading::default(), false),
        ];
        for (detail, want, progress) in cases {
            let got = Reading::of(&detail);
            assert_eq!(got, want, "{detail}");
            assert_eq!(got.is_progress(), progress, "{detail}");
        }
    }

    #[test]
    fn event_lines_show_move_name_and_flat_detail() {
        let e = |move_index, event: &str, detail| Event {
            migration: 7,
            move_index,
            event: event.into(),
            detail,
        };
        assert_eq!(
            event_line(&e(None, "planned", json!({}))),
            "migration 7: planned"
        );
        assert_eq!(
            event_line(&e(Some(1), "fenced", json!(null))),
            "migration 7: move 1: fenced"
        );
        assert_eq!(
            event_line(&e(
                Some(0),
                "stall",
                json!({"seconds": 12, "reason": "target down"})
            )),
            "migration 7: move 0: stall reason=target down seconds=12"
        );
        assert_eq!(
            event_line(&e(Some(0), "verified", json!({"copied": {"posts": 3}}))),
            "migration 7: move 0: verified copied={\"posts\":3}"
        );
        assert_eq!(
            event_line(&e(None, "note", json!("text"))),
            "migration 7: note \"text\""
        );
    }

    #[test]
    fn lag_reads_with_its_unit() {
        assert_eq!(lag_text(&("rows".into(), 1234.0)), "lag 1,234 rows");
        assert_eq!(lag_text(&("ms".into(), 2.5)), "lag 2.5 ms");
        assert_eq!(lag_text(&(String::new(), 3.0)), "lag 3");
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        for (secs, millis, want) in [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.005Z"),
            (1_709_251_199, 999, "2024-02-29T23:59:59.999Z"),
            (1_796_000_942, 123, "2026-11-30T01:09:02.123Z"),
            (4_102_444_800, 0, "2100-01-01T00:00:00.000Z"),
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis);
            assert_eq!(rfc3339(t), want, "{secs}");
        }
    }

    #[test]
    fn json_lines_keep_the_event_and_add_a_time() {
        let event = Event {
            migration: 3,
            move_index: Some(0),
            event: "backfill".into(),
            detail: json!({"rows": 10, "estimate": 20}),
        };
        let line = json_line(&event, UNIX_EPOCH).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["migration"], 3);
        assert_eq!(v["move_index"], 0);
        assert_eq!(v["event"], "backfill");
        assert_eq!(v["detail"]["rows"], 10);
        assert!(!line.contains('\n'));
    }

    #[test]
    fn plain_summary_shows_rows_of_the_estimate_and_lag() {
        let mut state = MoveState::default();
        assert!(state.summary().starts_with("0 rows"), "{}", state.summary());
        // The online backfill's shape: the move's totals, the current table.
        for (table, rows) in [("posts", 100), ("comments", 400)] {
            state.update(&Reading::of(
                &json!({"table": table, "table_rows": 50, "rows": rows, "estimate": 1000}),
            ));
        }
        assert_eq!(state.rows(), 400);
        assert!(
            state.summary().starts_with("400 of ~1,000 rows (40%)"),
            "{}",
            state.summary()
        );
        // Catch-up's shape: the backlog of captured changes.
        state.update(&Reading::of(
            &json!({"backlog": 7, "replayed": 100, "fenced": false}),
        ));
        assert!(
            state.summary().ends_with("lag 7 changes"),
            "{}",
            state.summary()
        );
        assert_eq!(state.rows(), 400);
        state.phase = "caught_up".into();
        assert_eq!(state.message(), "caught_up (comments) · lag 7 changes");
    }
}
