//! Per-shard load bars, drawn with plotters' SVG backend (text as SVG
//! `<text>`, so no font files are needed).

use plotters::prelude::*;

use super::{shard_name, Change, Loads, Outcome};

const BEFORE: RGBColor = RGBColor(0x4e, 0x79, 0xa7);
const AFTER: RGBColor = RGBColor(0xf2, 0x8e, 0x2b);
/// Height of one outcome's panel, caption and shard labels included.
const PANEL: u32 = 300;
/// Room for the title and legend above the panels.
const TOP: u32 = 60;

/// An SVG of one panel per outcome, titled `title`: a bar per shard of the
/// keys it holds before and, after a change, a second bar beside it; dashed
/// lines mark the even share. All panels share one scale. A drawing error
/// (none is expected from the in-memory backend) is written into the SVG
/// as a comment.
pub fn svg(title: &str, outcomes: &[Outcome]) -> String {
    let slots = outcomes.iter().map(slot_count).max().unwrap_or(1).max(1);
    let width = (slots as u32 * 14).max(700) + 90;
    let height = TOP + outcomes.len() as u32 * PANEL + 8;
    let peak = outcomes
        .iter()
        .flat_map(|o| series(o).into_iter().flat_map(|(_, l)| l.shards.iter()))
        .map(|s| s.keys)
        .max()
        .unwrap_or(0);
    let scale = nice_ceiling(peak);
    let mut out = String::new();
    let drawn = draw(&mut out, (width, height), title, outcomes, slots, scale);
    if let Err(e) = drawn {
        out.push_str(&format!("<!-- plot failed: {} -->\n", escape(&e)));
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    // A white page under transparent plotters output (dark viewers).
    out.replacen("<svg ", "<svg style=\"background:white\" ", 1)
}

fn draw(
    out: &mut String,
    size: (u32, u32),
    title: &str,
    outcomes: &[Outcome],
    slots: usize,
    scale: u64,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| format!("{e:?}");
    let root = SVGBackend::with_string(out, size).into_drawing_area();
    let (head, body) = root.split_vertically(TOP);
    head.draw(&Text::new(
        title.to_owned(),
        (70, 8),
        ("sans-serif", 16).into_font().style(FontStyle::Bold),
    ))
    .map_err(err)?;
    let changes = outcomes.iter().any(|o| o.rebalance.is_some());
    let legend = [(BEFORE, "before"), (AFTER, "after")];
    for (i, (color, label)) in legend.iter().take(if changes { 2 } else { 1 }).enumerate() {
        let x = 70 + i as i32 * 80;
        head.draw(&Rectangle::new([(x, 32), (x + 10, 42)], color.filled()))
            .map_err(err)?;
        head.draw(&Text::new(*label, (x + 14, 31), ("sans-serif", 11)))
            .map_err(err)?;
    }
    head.draw(&PathElement::new(
        [(240, 37), (266, 37)],
        BLACK.stroke_width(1),
    ))
    .map_err(err)?;
    head.draw(&Text::new(
        "even share (dashed)",
        (270, 31),
        ("sans-serif", 11),
    ))
    .map_err(err)?;
    let panels = body.split_evenly((outcomes.len().max(1), 1));
    for (area, outcome) in panels.iter().zip(outcomes) {
        panel(area, outcome, slots, scale)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Draws one outcome's panel into `area`.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    outcome: &Outcome,
    slots: usize,
    scale: u64,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| format!("{e:?}");
    let mut chart = ChartBuilder::on(area)
        .caption(caption(outcome), ("sans-serif", 13))
        .margin(8)
        .x_label_area_size(20)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(slots as f64 - 0.5), 0f64..scale as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(slots.min(32) + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                shard_name(i as usize)
            } else {
                String::new()
            }
        })
        .y_labels(5)
        .y_label_formatter(&|y| compact(*y))
        .draw()
        .map_err(err)?;
    let drawn = series(outcome);
    let bar = if drawn.len() > 1 { 0.4 } else { 0.7 };
    for (k, (color, loads)) in drawn.iter().enumerate() {
        let offset = -bar * drawn.len() as f64 / 2.0 + bar * k as f64;
        chart
            .draw_series(loads.shards.iter().map(|s| {
                let x = s.shard as f64 + offset;
                Rectangle::new([(x, 0.0), (x + bar, s.keys as f64)], color.filled())
            }))
            .map_err(err)?;
        let total: u64 = loads.shards.iter().map(|s| s.keys).sum();
        let even = total as f64 / loads.shards.len().max(1) as f64;
        chart
            .draw_series(DashedLineSeries::new(
                [(-0.5, even), (slots as f64 - 0.5, even)],
                4,
                3,
                color.stroke_width(1),
            ))
            .map_err(err)?;
    }
    Ok(())
}

/// The bars to draw: before, then after when there was a change.
fn series(outcome: &Outcome) -> Vec<(RGBColor, &Loads)> {
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
        assert!(
            svg.starts_with("<svg ") && svg.ends_with("</svg>\n"),
            "{svg}"
        );
        assert!(!svg.contains("plot failed"), "{svg}");
        // jump: 4 + 5 bars; modulo: 4 + 3 bars (s2 removed); 2 legend swatches.
        assert_eq!(svg.matches("<rect x=").count(), 16 + 2, "{svg}");
        assert!(svg.contains("4 shards &lt;+1&gt;"), "{svg}");
        assert!(svg.contains("jump: peak/mean"));
        assert!(svg.contains("after removing s2"));
        assert!(
            svg.contains(">s4</text>") || svg.contains(">\ns4\n</text>"),
            "{svg}"
        );
    }
}
