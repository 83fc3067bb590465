//! Per-shard load bars as a hand-written SVG document.

use super::{shard_name, Change, Loads, Outcome};

const BEFORE: &str = "#4e79a7";
const AFTER: &str = "#f28e2b";
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 56.0;
const PANEL: f64 = 200.0;
/// Room under each panel's bars (shard labels) and above the next (title).
const GAP: f64 = 64.0;

/// An SVG of one panel per outcome, titled `title`: a bar per shard of the
/// keys it holds before and, after a change, a second bar beside it; dashed
/// lines mark the even share. All panels share one scale.
pub fn svg(title: &str, outcomes: &[Outcome]) -> String {
    let slots = outcomes.iter().map(slot_count).max().unwrap_or(1).max(1);
    let plot_width = (slots as f64 * 14.0).max(700.0);
    let width = LEFT + plot_width + RIGHT;
    let height = TOP + outcomes.len() as f64 * (PANEL + GAP) + 8.0;
    let peak = outcomes
        .iter()
        .flat_map(|o| series(o).into_iter().flat_map(|(_, l)| l.shards.iter()))
        .map(|s| s.keys)
        .max()
        .unwrap_or(0);
    let scale = nice_ceiling(peak);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    let legend = [(BEFORE, "before"), (AFTER, "after")];
    let changes = outcomes.iter().any(|o| o.rebalance.is_some());
    for (i, (color, label)) in legend.iter().take(if changes { 2 } else { 1 }).enumerate() {
        let x = LEFT + i as f64 * 80.0;
        out.push_str(&format!(
            "<rect x=\"{x}\" y=\"30\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"39\">{label}</text>\n",
            x + 14.0
        ));
    }
    out.push_str(&format!(
        "<line x1=\"{}\" y1=\"35\" x2=\"{}\" y2=\"35\" stroke=\"#333\" stroke-dasharray=\"4 3\"/>\
         <text x=\"{}\" y=\"39\">even share</text>\n",
        LEFT + 170.0,
        LEFT + 196.0,
        LEFT + 200.0
    ));
    for (i, outcome) in outcomes.iter().enumerate() {
        let top = TOP + 24.0 + i as f64 * (PANEL + GAP);
        panel(&mut out, outcome, top, plot_width, slots, scale);
    }
    out.push_str("</svg>\n");
    out
}

/// Draws one outcome's panel with its plot area starting at `top`.
fn panel(out: &mut String, outcome: &Outcome, top: f64, plot_width: f64, slots: usize, scale: u64) {
    let bottom = top + PANEL;
    let y = |keys: f64| bottom - keys / scale as f64 * PANEL;
    out.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"13\">{}</text>\n",
        top - 8.0,
        escape(&caption(outcome))
    ));
    for step in 0..=4 {
        let keys = scale as f64 * f64::from(step) / 4.0;
        out.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{4}</text>\n",
            y(keys),
            LEFT + plot_width,
            LEFT - 6.0,
            y(keys) + 4.0,
            compact(keys)
        ));
    }
    let group = plot_width / slots as f64;
    let drawn = series(outcome);
    let bar = group * if drawn.len() > 1 { 0.4 } else { 0.7 };
    let label_every = slots.div_ceil(32);
    for slot in (0..slots).step_by(label_every) {
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            LEFT + (slot as f64 + 0.5) * group,
            bottom + 14.0,
            shard_name(slot)
        ));
    }
    for (k, (color, loads)) in drawn.iter().enumerate() {
        let offset = (group - bar * drawn.len() as f64) / 2.0 + bar * k as f64;
        for s in &loads.shards {
            let x = LEFT + s.shard as f64 * group + offset;
            out.push_str(&format!(
                "<rect x=\"{x:.2}\" y=\"{:.2}\" width=\"{bar:.2}\" height=\"{:.2}\" fill=\"{color}\">\
                 <title>{} {}: {} keys</title></rect>\n",
                y(s.keys as f64),
                bottom - y(s.keys as f64),
                shard_name(s.shard),
                if k == 0 { "before" } else { "after" },
                s.keys
            ));
        }
        let total: u64 = loads.shards.iter().map(|s| s.keys).sum();
        let even = y(total as f64 / loads.shards.len().max(1) as f64);
        out.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{even:.1}\" x2=\"{}\" y2=\"{even:.1}\" stroke=\"{color}\" \
             stroke-dasharray=\"4 3\"/>\n",
            LEFT + plot_width
        ));
    }
    out.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"#333\"/>\n",
        LEFT + plot_width
    ));
}

/// The bars to draw: before, then after when there was a change.
fn series(outcome: &Outcome) -> Vec<(&'static str, &Loads)> {
    let mut drawn = vec![(BEFORE, &outcome.before)];
    if let Some(r) = &outcome.rebalance {
        drawn.push((AFTER, &r.after));
    }
    drawn
}

/// Shard positions on the x axis: every shard before and after.
fn slot_count(outcome: &Outcome) -> usize {
    series(outcome)
        .iter()
        .flat_map(|(_, l)| l.shards.iter().map(|s| s.shard + 1))
        .max()
        .unwrap_or(0)
}

/// The panel's title line: strategy, skew and moved keys.
fn caption(outcome: &Outcome) -> String {
    let before = &outcome.before.skew;
    match &outcome.rebalance {
        None => format!(
            "{}: peak/mean {:.3}, cv {:.3}",
            outcome.strategy, before.peak_to_mean, before.cv
        ),
        Some(r) => format!(
            "{}: peak/mean {:.3} → {:.3} after {}; moved {:.1}% of keys (optimal {:.1}%)",
            outcome.strategy,
            before.peak_to_mean,
            r.after.skew.peak_to_mean,
            match r.change {
                Change::Add(m) => format!("adding {m} shard{}", if m == 1 { "" } else { "s" }),
                Change::Remove(s) => format!("removing {}", shard_name(s)),
            },
            r.moved_fraction * 100.0,
            r.optimal_moved_fraction * 100.0
        ),
    }
}

/// The smallest 1, 2, 3, 4, 6 or 8 times a power of ten that is at least `n`
/// (1 for 0): an axis top whose quarters are round numbers.
fn nice_ceiling(n: u64) -> u64 {
    let mut power = 1u64;
    loop {
        for m in [1, 2, 3, 4, 6, 8] {
            let candidate = power.saturating_mul(m);
            if candidate >= n || candidate == u64::MAX {
                return candidate;
            }
        }
        power = power.saturating_mul(10);
    }
}

/// `62.5k`, `1.2M`: an axis label.
fn compact(n: f64) -> String {
    let (value, unit) = match n {
        n if n >= 1e9 => (n / 1e9, "G"),
        n if n >= 1e6 => (n / 1e6, "M"),
        n if n >= 1e3 => (n / 1e3, "k"),
        n => (n, ""),
    };
    let text = format!("{value:.2}");
    format!("{}{unit}", text.trim_end_matches('0').trim_end_matches('.'))
}

/// Text safe inside an SVG element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{simulate, Distribution, Strategy, Workload};

    #[test]
    fn axis_helpers() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(62_500), 80_000);
        assert_eq!(nice_ceiling(1_900), 2_000);
        assert_eq!(nice_ceiling(4_001), 6_000);
        assert_eq!(nice_ceiling(u64::MAX), u64::MAX);
        assert_eq!(compact(62_500.0), "62.5k");
        assert_eq!(compact(1_000_000.0), "1M");
        assert_eq!(compact(0.0), "0");
        assert_eq!(escape("a<b&c>"), "a&lt;b&amp;c&gt;");
    }

    #[test]
    fn draws_a_bar_per_shard_before_and_after() {
        let w = Workload::new(Distribution::Sequential, 10_000, 1, 0).unwrap();
        let outcomes = [
            simulate(&w, Strategy::Jump, 4, Some(Change::Add(1))).unwrap(),
            simulate(&w, Strategy::Modulo, 4, Some(Change::Remove(2))).unwrap(),
        ];
        let svg = svg("4 shards <+1>", &outcomes);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        // jump: 4 + 5 bars; modulo: 4 + 3 bars (s2 removed).
        assert_eq!(svg.matches("<title>").count(), 16);
        assert!(svg.contains("4 shards &lt;+1&gt;"));
        assert!(svg.contains("jump: peak/mean"));
        assert!(svg.contains("after removing s2"));
        assert!(svg.contains(">s4</text>"));
    }
}
