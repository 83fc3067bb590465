//! The demo's report: one self-contained HTML file (inline SVG charts drawn
//! with plotters' SVG backend, inline CSS, no script, nothing fetched).
//! Figures: `#ring-chart` (which shard owns which arcs, before and after),
//! `#shard-chart` (rows and requests per shard, before and after),
//! `#latency-chart` (p50/p99 per second, the move and its events marked).

use std::fmt::Write as _;
use std::time::Duration;

use plotters::prelude::*;
use postshard_router::ShardMap;

use super::workload::{Kind, Sample};
use super::{ms, percentile, thousands, Outcome, ShardFigures};

/// Shard colours, by shard index in the map after the move.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// The whole HTML page.
pub fn html(outcome: &Outcome) -> String {
    let [before, after] = &outcome.maps;
    let names: Vec<String> = after.shards().iter().map(|s| s.name.clone()).collect();
    let colour = |name: &str| {
        let i = names.iter().position(|n| n == name).unwrap_or(0);
        COLOURS.get(i % COLOURS.len()).copied().unwrap_or(BLACK)
    };
    let ring = chart(|| ring_chart(before, after, &colour));
    let shards = chart(|| shard_chart(&outcome.figures, &colour));
    let latency = chart(|| latency_chart(&outcome.samples, outcome.move_window, &outcome.events));
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>postshard demo report</title><style>\
         body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f3f3f3}}figure{{margin:1.5em 0}}figcaption{{color:#555}}.ok{{color:#080}}.bad{{color:#b00}}\
         </style></head><body>\n<h1>postshard demo: adding a shard online under load</h1>\n"
    );
    let (posts, comments, took) = outcome.loaded;
    let _ = writeln!(
        page,
        "<p>Loaded {} posts and {} comments in {:.1} s; epoch {} → {}; the move took {:.1} s while the workload ran.</p>",
        thousands(posts as i64),
        thousands(comments as i64),
        took.as_secs_f64(),
        before.version(),
        after.version(),
        (outcome.move_window.1 - outcome.move_window.0).as_secs_f64()
    );
    let c = &outcome.checked;
    let clean = c.problem_count == 0 && outcome.verify_ok;
    let _ = writeln!(
        page,
        "<p class=\"{}\" id=\"verdict\">Row-by-row check: {} posts and {} comments expected, {} and {} found, {} acknowledged writes checked, {} problems; <code>postshard verify</code> {}.</p>",
        if clean { "ok" } else { "bad" },
        thousands(c.expected[0] as i64),
        thousands(c.expected[1] as i64),
        thousands(c.found[0] as i64),
        thousands(c.found[1] as i64),
        thousands(c.acknowledged as i64),
        c.problem_count,
        if outcome.verify_ok { "passed" } else { "FAILED" }
    );
    for p in &c.problems {
        let _ = writeln!(page, "<p class=\"bad\">{}</p>", escape(p));
    }
    let _ = writeln!(
        page,
        "<h2>The ring</h2><figure id=\"ring-chart\">{ring}<figcaption>Which shard owns which arc of the token space (hashint8extended(post_id, 0)), before and after.</figcaption></figure>"
    );
    let _ = writeln!(
        page,
        "<h2>Shards</h2><figure id=\"shard-chart\">{shards}<figcaption>Rows (posts + comments) and requests per second per shard, before and after the move.</figcaption></figure>"
    );
    page.push_str(&figures_table(&outcome.figures));
    let _ = writeln!(
        page,
        "<h2>Latency</h2><figure id=\"latency-chart\">{latency}<figcaption>Per second: p50 and p99 of reads and writes as the app saw them; the shaded band is the move, the dashed lines its steps; log scale; a gap means no request of that kind started in that second (every worker was waiting).</figcaption></figure>"
    );
    page.push_str(&latency_table(outcome));
    page.push_str("<h2>Steps of the move</h2><table><tr><th>at (s)</th><th style=\"text-align:left\">apply said</th></tr>\n");
    for (at, line) in &outcome.events {
        let _ = writeln!(
            page,
            "<tr><td>{:.2}</td><td style=\"text-align:left\">{}</td></tr>",
            at.as_secs_f64(),
            escape(line)
        );
    }
    page.push_str("</table>\n</body></html>\n");
    page
}

/// Runs a chart function; a drawing error becomes a visible message.
fn chart(draw: impl FnOnce() -> Result<String, String>) -> String {
    draw().unwrap_or_else(|e| format!("<p class=\"bad\">chart failed: {}</p>", escape(&e)))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// Fraction of the token space before `token`.
fn position(token: i64) -> f64 {
    (i128::from(token) - i128::from(i64::MIN)) as f64 / 2f64.powi(64)
}

fn ring_chart(
    before: &ShardMap,
    after: &ShardMap,
    colour: &dyn Fn(&str) -> RGBColor,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 230)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Ring: owner of each arc", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..1f64, 0f64..2f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(5)
            .y_label_formatter(&|y| match (y * 2.0).round() as i64 {
                1 => "after".to_owned(),
                3 => "before".to_owned(),
                _ => String::new(),
            })
            .x_label_formatter(&|x| format!("{:.0}%", x * 100.0))
            .x_desc("position on the ring (share of the token space)")
            .draw()
            .map_err(err)?;
        for (row, map) in [(1.0, before), (0.0, after)] {
            let arcs: Vec<(f64, f64, String)> = map
                .ring()
                .arcs()
                .map(|arc| {
                    let name = map
                        .shards()
                        .get(arc.shard)
                        .map_or_else(|| "?".to_owned(), |s| s.name.clone());
                    let end = if arc.last == i64::MAX {
                        1.0
                    } else {
                        position(arc.last + 1)
                    };
                    (position(arc.from), end, name)
                })
                .collect();
            chart
                .draw_series(arcs.iter().map(|(x0, x1, name)| {
                    Rectangle::new(
                        [(*x0, row + 0.15), (*x1, row + 0.85)],
                        colour(name).filled(),
                    )
                }))
                .map_err(err)?;
            chart
                .draw_series(arcs.iter().filter(|(x0, x1, _)| x1 - x0 > 0.03).map(
                    |(x0, x1, name)| {
                        Text::new(
                            name.clone(),
                            ((x0 + x1) / 2.0 - 0.01, row + 0.6),
                            ("sans-serif", 15).into_font().color(&WHITE),
                        )
                    },
                ))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One figure of a shard, for a bar.
type Metric = dyn Fn(&ShardFigures) -> f64;

fn shard_chart(
    figures: &[Vec<ShardFigures>; 2],
    colour: &dyn Fn(&str) -> RGBColor,
) -> Result<String, String> {
    let [before, after] = figures;
    let names: Vec<String> = after.iter().map(|f| f.name.clone()).collect();
    let lookup = |set: &[ShardFigures], name: &str| set.iter().find(|f| f.name == name).cloned();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let panels = root.split_evenly((1, 2));
        let metrics: [(&str, &Metric); 2] = [
            ("Rows per shard (posts + comments)", &|f| {
                (f.posts + f.comments) as f64
            }),
            ("Requests per second per shard", &|f| f.requests),
        ];
        for (panel, (title, value)) in panels.iter().zip(metrics) {
            let top = before
                .iter()
                .chain(after)
                .map(value)
                .fold(0.0, f64::max)
                .max(1.0)
                * 1.15;
            let n = names.len() as f64;
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(-0.5f64..(n - 0.5), 0f64..top)
                .map_err(err)?;
            let label_names = names.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(names.len() * 2 + 1)
                .x_label_formatter(&move |x| {
                    let i = x.round();
                    if (x - i).abs() < 0.01 && i >= 0.0 {
                        label_names.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|y| thousands(*y as i64))
                .draw()
                .map_err(err)?;
            for (i, name) in names.iter().enumerate() {
                let x = i as f64;
                let c = colour(name);
                if let Some(f) = lookup(before, name) {
                    chart
                        .draw_series([Rectangle::new(
                            [(x - 0.38, 0.0), (x - 0.02, value(&f))],
                            c.mix(0.35).filled(),
                        )])
                        .map_err(err)?;
                }
                if let Some(f) = lookup(after, name) {
                    chart
                        .draw_series([Rectangle::new(
                            [(x + 0.02, 0.0), (x + 0.38, value(&f))],
                            c.filled(),
                        )])
                        .map_err(err)?;
                }
            }
            chart
                .draw_series([
                    Text::new(
                        "light: before",
                        (-0.45, top * 0.95),
                        ("sans-serif", 13).into_font(),
                    ),
                    Text::new(
                        "dark: after",
                        (-0.45, top * 0.89),
                        ("sans-serif", 13).into_font(),
                    ),
                ])
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Per-second percentile series of one kind.
fn series(samples: &[Sample], kind: Kind, p: f64, seconds: usize) -> Vec<(f64, f64)> {
    let mut buckets: Vec<Vec<Duration>> = vec![Vec::new(); seconds + 1];
    for s in samples.iter().filter(|s| s.kind == kind) {
        if let Some(b) = buckets.get_mut(s.at.as_secs() as usize) {
            b.push(s.latency);
        }
    }
    buckets
        .into_iter()
        .enumerate()
        .filter(|(_, b)| !b.is_empty())
        .map(|(i, mut b)| {
            b.sort_unstable();
            (i as f64 + 0.5, ms(percentile(&b, p)))
        })
        .collect()
}

fn latency_chart(
    samples: &[Sample],
    window: (Duration, Duration),
    events: &[(Duration, String)],
) -> Result<String, String> {
    let end = samples.iter().map(|s| s.at).max().unwrap_or_default();
    let seconds = end.as_secs() as usize + 1;
    let lines = [
        (Kind::Write, 0.99, "writes p99", RGBColor(214, 39, 40)),
        (Kind::Write, 0.50, "writes p50", RGBColor(255, 152, 150)),
        (Kind::Read, 0.99, "reads p99", RGBColor(31, 119, 180)),
        (Kind::Read, 0.50, "reads p50", RGBColor(158, 202, 225)),
    ];
    let data: Vec<Vec<(f64, f64)>> = lines
        .iter()
        .map(|(k, p, _, _)| series(samples, *k, *p, seconds))
        .collect();
    // Log scale: a write blocked for seconds and reads of a millisecond on
    // one chart.
    const FLOOR: f64 = 0.05;
    let top = data.iter().flatten().map(|(_, y)| *y).fold(1.0, f64::max) * 2.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Latency seen by the app, per second", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..seconds as f64, (FLOOR..top).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the workload started")
            .y_desc("ms (log scale)")
            .y_label_formatter(&|y| {
                if *y >= 1.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y}")
                }
            })
            .draw()
            .map_err(err)?;
        let (a, b) = (window.0.as_secs_f64(), window.1.as_secs_f64());
        chart
            .draw_series([Rectangle::new(
                [(a, FLOOR), (b, top)],
                RGBColor(255, 220, 120).mix(0.35).filled(),
            )])
            .map_err(err)?
            .label("the move (apply running)")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 15, y + 5)],
                    RGBColor(255, 220, 120).filled(),
                )
            });
        for (at, _) in events {
            let x = at.as_secs_f64();
            chart
                .draw_series(DashedLineSeries::new(
                    [(x, FLOOR), (x, top)],
                    4,
                    3,
                    RGBColor(120, 120, 120).stroke_width(1),
                ))
                .map_err(err)?;
        }
        for ((_, _, label, c), points) in lines.iter().zip(&data) {
            let c = *c;
            // Seconds without a request of this kind (every worker waiting
            // on a blocked write) break the line rather than being bridged.
            let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
            for &(x, y) in points {
                let point = (x, y.max(FLOOR));
                match runs.last_mut() {
                    Some(run) if run.last().is_some_and(|(px, _)| x - px < 1.5) => run.push(point),
                    _ => runs.push(vec![point]),
                }
            }
            let mut first = true;
            for run in runs {
                let lone = if run.len() == 1 {
                    run.clone()
                } else {
                    Vec::new()
                };
                chart
                    .draw_series(lone.into_iter().map(|xy| Circle::new(xy, 3, c.filled())))
                    .map_err(err)?;
                let drawn = chart
                    .draw_series(LineSeries::new(run, c.stroke_width(2)))
                    .map_err(err)?;
                if first {
                    drawn.label(*label).legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 15, y)], c.stroke_width(2))
                    });
                    first = false;
                }
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn figures_table(figures: &[Vec<ShardFigures>; 2]) -> String {
    let mut t = String::from(
        "<table><tr><th></th><th>shard</th><th>posts</th><th>comments</th><th>bytes</th><th>requests/s</th></tr>\n",
    );
    for (when, set) in ["before", "after"].iter().zip(figures) {
        for f in set {
            let _ = writeln!(
                t,
                "<tr><td>{when}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td></tr>",
                escape(&f.name),
                thousands(f.posts),
                thousands(f.comments),
                thousands(f.bytes),
                f.requests
            );
        }
    }
    t.push_str("</table>\n");
    t
}

fn latency_table(outcome: &Outcome) -> String {
    let mut t = String::from(
        "<table><tr><th></th><th>window</th><th>requests</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th></tr>\n",
    );
    for (kind, rows) in ["reads", "writes"].iter().zip(&outcome.latency) {
        for (when, l) in ["before", "during", "after"].iter().zip(rows) {
            let _ = writeln!(
                t,
                "<tr><td>{kind}</td><td>{when}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.1}</td></tr>",
                l.count,
                ms(l.p50),
                ms(l.p99),
                ms(l.max)
            );
        }
    }
    t.push_str("</table>\n");
    t
}
