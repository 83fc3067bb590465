//! `postshard demo`: the whole product in one command. A sandbox of local
//! servers, a forum loaded through the router's routing, a live workload,
//! a shard added with the real `plan add-shard` and `apply` (child processes
//! of this executable, so the demo shows whatever `apply` does), skew and
//! latency before, during and after, a row-by-row check against what the
//! workload acknowledged, `verify`, and an HTML report. Ctrl-C at any point
//! stops the servers and removes the sandbox.

/// Prints a line on stdout through `output` (a closed stdout is ignored:
/// the command still finishes, and the demo still cleans up).
macro_rules! say {
    ($($arg:tt)*) => {
        drop(crate::cli::output::print(format!("{}\n", format_args!($($arg)*))))
    };
}

/// Prints a line on stderr, best effort.
macro_rules! say_err {
    ($($arg:tt)*) => {
        crate::cli::output::eprint(format!("{}\n", format_args!($($arg)*)))
    };
}

mod check;
mod forum;
mod load;
mod report;
mod workload;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postshard_router::{ConnUrl, Router, ShardMap};
use postshard_sandbox::Sandbox;
use tokio::io::AsyncBufReadExt;

use super::sandbox::{human_bytes, CONTROL_DATABASE, DATABASE, MAP_FILE};
use super::Failure;
use forum::Forum;
use workload::{Kind, Sample, Workload};

/// Arguments of `postshard demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Posts to load (each with 0–3 comments; ten viral threads with many).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(100..=100_000_000))]
    posts: i64,
    /// Shards to start with; the demo adds one more.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    shards: u16,
    /// Seconds of workload measured before and after the move.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=600))]
    window: u64,
    /// Keep the sandbox running afterwards (stop it with `sandbox down`).
    #[arg(long)]
    keep: bool,
    /// Where to write the HTML report.
    #[arg(long, default_value = "postshard-demo.html")]
    report: PathBuf,
    /// The sandbox directory [default: a new directory in the temp directory].
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs the demo; the sandbox is removed afterwards (also on error or
/// Ctrl-C) unless `--keep`.
pub fn run(args: Args) -> Result<(), Failure> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("postshard-demo-{}", std::process::id()))
    });
    if dir.exists() {
        return Err(Failure::invalid(format!(
            "{} exists; the demo starts its own sandbox: give a new --dir",
            dir.display()
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    let keep = args.keep;
    let outcome = rt.block_on(async {
        // Handlers are installed before anything starts, so a Ctrl-C (or a
        // SIGTERM) at any point, even while servers start, ends in cleanup.
        use tokio::signal::unix::{signal, SignalKind};
        let (mut interrupt, mut terminate) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => return Err(Failure::Runtime(e.into())),
        };
        tokio::select! {
            result = demo(&args, &dir) => result,
            _ = interrupt.recv() => Err(Failure::Runtime(anyhow::anyhow!("interrupted (Ctrl-C)"))),
            _ = terminate.recv() => Err(Failure::Runtime(anyhow::anyhow!("terminated (SIGTERM)"))),
        }
    });
    // Stop the workload's and apply's tasks before the servers go.
    rt.shutdown_timeout(Duration::from_secs(2));
    let interrupted_or_failed = outcome.is_err();
    if keep && !interrupted_or_failed {
        let map = dir.join(MAP_FILE);
        say!(
            "\nthe sandbox keeps running in {}; explore it:",
            dir.display()
        );
        say!("  postshard status --map {}", map.display());
        say!("  postshard skew --map {}", map.display());
        say!("  postshard verify --map {}", map.display());
        say!("  postshard sandbox status --dir {}", dir.display());
        say!("  postshard sandbox down --dir {}", dir.display());
    } else {
        cleanup(&dir);
    }
    outcome
}

/// Stops the sandbox's servers and removes its directory (best effort,
/// said on stderr if it fails).
fn cleanup(dir: &Path) {
    let result = match Sandbox::open(dir) {
        Ok(sandbox) => sandbox.down().map_err(|e| e.to_string()),
        Err(_) if dir.exists() => std::fs::remove_dir_all(dir).map_err(|e| e.to_string()),
        Err(_) => Ok(()),
    };
    match result {
        Ok(()) => say!("cleaned up: servers stopped, {} removed", dir.display()),
        Err(e) => say_err!("cleanup of {} failed: {e}", dir.display()),
    }
}

/// A skew snapshot: per shard rows, bytes and requests per second.
#[derive(Debug, Clone)]
pub struct ShardFigures {
    /// Shard name.
    pub name: String,
    /// Posts on it.
    pub posts: i64,
    /// Comments on it.
    pub comments: i64,
    /// Bytes of both tables with indexes and TOAST.
    pub bytes: i64,
    /// Requests per second routed to it in the window.
    pub requests: f64,
}

/// Latency percentiles of one kind in one window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Number of requests.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// Everything the report shows.
pub struct Outcome {
    /// Map before and after the move.
    pub maps: [ShardMap; 2],
    /// Skew before and after.
    pub figures: [Vec<ShardFigures>; 2],
    /// All requests.
    pub samples: Vec<Sample>,
    /// Move start, end (since the workload began) and the events apply printed.
    pub move_window: (Duration, Duration),
    /// Events of `apply` with their time since the workload began.
    pub events: Vec<(Duration, String)>,
    /// Latency per window (before, during, after) for reads and writes.
    pub latency: [[Latency; 3]; 2],
    /// The row-by-row check.
    pub checked: check::Checked,
    /// Whether `postshard verify` passed.
    pub verify_ok: bool,
    /// Posts and comments loaded, and the load's time.
    pub loaded: (u64, u64, Duration),
}

async fn demo(args: &Args, dir: &Path) -> Result<(), Failure> {
    let started = Instant::now();
    let shards = usize::from(args.shards);
    let forum = Forum::new(args.posts);
    let new_shard = format!("s{shards}");
    say!(
        "postshard demo: a forum sharded over {shards} local PostgreSQL servers; then shard {new_shard} is added online under load\n"
    );

    // 1. Sandbox.
    step(
        1,
        &format!("sandbox: {} servers in {}", shards + 1, dir.display()),
    );
    let (mut sandbox, _) = super::sandbox::up_async(dir, shards).await?;
    let spare = sandbox
        .add(&new_shard, DATABASE)
        .map_err(super::sandbox::sandbox_failure)?;
    let map_path = dir.join(MAP_FILE);
    say!(
        "      map {} (control store: {CONTROL_DATABASE}); {new_shard} on port {} is not in the map yet ({:.1} s)",
        map_path.display(),
        spare.port,
        started.elapsed().as_secs_f64()
    );
    let control_template = ShardMap::from_path(&map_path)?
        .control()
        .map(|c| c.template().to_owned())
        .ok_or_else(|| Failure::invalid("the sandbox map names no control store"))?;
    let control = ConnUrl::expand(&control_template, postshard_router::map::env_var)
        .map_err(|p| Failure::invalid(p.join("; ")))?;
    let router = Arc::new(
        Router::from_control(&control)
            .await
            .map_err(|e| Failure::Runtime(e.into()))?,
    );

    // 2. Load.
    let total_comments = forum.total_comments();
    step(
        2,
        &format!(
            "loading {} posts and {} comments with COPY, each row routed by the live map to its shard",
            thousands(forum.posts),
            thousands(total_comments)
        ),
    );
    let t = Instant::now();
    let loaded = load::load(&router, &forum)
        .await
        .map_err(Failure::Runtime)?;
    let took = t.elapsed();
    let (posts, comments) = loaded
        .iter()
        .fold((0, 0), |(p, c), l| (p + l.posts, c + l.comments));
    say!(
        "      {} rows in {:.1} s ({} rows/s)",
        thousands((posts + comments) as i64),
        took.as_secs_f64(),
        thousands(((posts + comments) as f64 / took.as_secs_f64().max(0.001)) as i64)
    );

    // 3. Workload.
    step(
        3,
        "workload through Router::from_control: 4 workers; 70% reads (new posts hot, 10 viral threads, Zipf), new posts and comments, edits, deletes",
    );
    let workload = Workload::start(router.clone(), &forum, 4, Duration::from_millis(2));
    let window = Duration::from_secs(args.window);
    tokio::time::sleep(window).await;
    let map_before = router.map().clone();
    // Request counts need the samples, which the workers hand over at the
    // end; the row figures are taken now.
    let rows_before = rows(&map_before).await?;
    print_rows(
        "skew before the move (rows and bytes now; requests below)",
        &rows_before,
    );

    // 4. Move.
    step(
        4,
        &format!("adding shard {new_shard} while the workload runs: postshard plan add-shard, then postshard apply"),
    );
    let plan_path = dir.join(format!("add-{new_shard}.yaml"));
    let exe = std::env::current_exe().map_err(|e| Failure::Runtime(e.into()))?;
    let plan = tokio::process::Command::new(&exe)
        .arg("plan")
        .arg("add-shard")
        .arg(format!("{new_shard}={}", Sandbox::url(&spare, DATABASE)))
        .arg("--map")
        .arg(&map_path)
        .arg("--out")
        .arg(&plan_path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;
    for line in String::from_utf8_lossy(&plan.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&plan.stderr).lines())
    {
        say!("      plan │ {line}");
    }
    if !plan.status.success() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "plan add-shard failed ({})",
            plan.status
        )));
    }
    let origin = workload.origin;
    let move_start = origin.elapsed();
    let mut apply = tokio::process::Command::new(&exe)
        .arg("apply")
        .arg(&plan_path)
        .arg("--map")
        .arg(&map_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::Runtime(e.into()))?;
    let mut events = Vec::new();
    if let Some(stdout) = apply.stdout.take() {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let at = origin.elapsed();
            say!("      apply │ {line}");
            events.push((at, line));
        }
    }
    let status = apply.wait().await.map_err(|e| Failure::Runtime(e.into()))?;
    let move_end = origin.elapsed();
    if !status.success() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "apply failed ({status}); the sandbox shows where it stopped: postshard status --map {}",
            map_path.display()
        )));
    }
    say!(
        "      the move took {:.1} s",
        (move_end - move_start).as_secs_f64()
    );

    // 5. After.
    step(
        5,
        &format!(
            "workload keeps running for {} s after the move",
            args.window
        ),
    );
    tokio::time::sleep(window).await;
    let end = origin.elapsed();
    let records = workload.finish().await;
    let map_after = router.map().clone();
    let samples: Vec<Sample> = records
        .iter()
        .flat_map(|r| r.samples.iter().cloned())
        .collect();
    let rows_after = rows(&map_after).await?;
    let figures_before = with_requests(rows_before, &samples, (Duration::ZERO, move_start));
    let figures_after = with_requests(rows_after, &samples, (move_end, end));
    print_figures("skew before the move", &figures_before);
    print_figures(
        &format!("skew after the move (epoch {})", map_after.version()),
        &figures_after,
    );

    // 6. Latency.
    let windows = [
        (Duration::ZERO, move_start),
        (move_start, move_end),
        (move_end, end),
    ];
    let latency =
        [Kind::Read, Kind::Write].map(|kind| windows.map(|w| latency_of(&samples, kind, w)));
    step(6, "latency seen by the app (ms)");
    say!(
        "      {:<7} {:<7} {:>8} {:>8} {:>8} {:>8}",
        "",
        "window",
        "requests",
        "p50",
        "p99",
        "max"
    );
    for (kind, rows) in ["reads", "writes"].iter().zip(&latency) {
        for (name, l) in ["before", "during", "after"].iter().zip(rows) {
            say!(
                "      {kind:<7} {name:<7} {:>8} {:>8.2} {:>8.2} {:>8.1}",
                l.count,
                ms(l.p50),
                ms(l.p99),
                ms(l.max)
            );
        }
    }
    let errors: Vec<&(i64, String)> = records.iter().flat_map(|r| r.errors.iter()).collect();
    say!("      errors seen by the app: {}", errors.len());
    for (key, e) in errors.iter().take(5) {
        say!("        key {key}: {e}");
    }

    // 7. Check.
    step(
        7,
        "checking every row on every shard against what the workload acknowledged",
    );
    let checked = check::check(&map_after, &forum, &records)
        .await
        .map_err(Failure::Runtime)?;
    say!(
        "      posts: {} expected, {} found; comments: {} expected, {} found; {} acknowledged writes checked",
        thousands(checked.expected[0] as i64),
        thousands(checked.found[0] as i64),
        thousands(checked.expected[1] as i64),
        thousands(checked.found[1] as i64),
        thousands(checked.acknowledged as i64)
    );
    if checked.uncertain > 0 {
        say!(
            "      {} keys left out: their writes failed, so their outcome is unknown",
            checked.uncertain
        );
    }
    if checked.problem_count == 0 {
        say!("      nothing lost, duplicated, misplaced or resurrected; every acknowledged edit kept");
    } else {
        say!("      {} PROBLEMS:", checked.problem_count);
        for p in &checked.problems {
            say!("        {p}");
        }
    }
    say!("      postshard verify:");
    let _ = std::io::stdout().flush();
    let verify = tokio::process::Command::new(&exe)
        .arg("verify")
        .arg("--map")
        .arg(&map_path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;
    for line in String::from_utf8_lossy(&verify.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&verify.stderr).lines())
    {
        say!("      verify │ {line}");
    }

    let outcome = Outcome {
        maps: [map_before, map_after],
        figures: [figures_before, figures_after],
        samples,
        move_window: (move_start, move_end),
        events,
        latency,
        verify_ok: verify.status.success(),
        checked,
        loaded: (posts, comments, took),
    };
    let html = report::html(&outcome);
    write_report(&args.report, &html)?;
    say!(
        "\nreport: {}\ndemo finished in {:.0} s",
        absolute(&args.report).display(),
        started.elapsed().as_secs_f64()
    );
    // Deregister, so a kept sandbox's `status` lists no lapsed demo router.
    if let Ok(router) = Arc::try_unwrap(router) {
        router.shutdown().await;
    }
    if outcome.checked.problem_count > 0 || !outcome.verify_ok || !errors.is_empty() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "the check found problems (see above)"
        )));
    }
    Ok(())
}

/// Prints a numbered step.
fn step(n: u32, what: &str) {
    say!("[{n}/7] {what}");
}

/// `1234567` as `1,234,567`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Milliseconds as a float.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Rows and bytes on each shard of `map`, now.
async fn rows(map: &ShardMap) -> Result<Vec<ShardFigures>, Failure> {
    let mut out = Vec::new();
    for shard in map.shards() {
        let client = postshard_router::connect(&shard.url, Duration::from_secs(10))
            .await
            .map_err(|e| Failure::Runtime(e.into()))?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM posts), (SELECT count(*) FROM comments), \
                 pg_total_relation_size('posts') + pg_total_relation_size('comments')",
                &[],
            )
            .await
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("shard {}: {e}", shard.name)))?;
        let get = |i| row.try_get::<_, i64>(i).unwrap_or_default();
        out.push(ShardFigures {
            name: shard.name.clone(),
            posts: get(0),
            comments: get(1),
            bytes: get(2),
            requests: 0.0,
        });
    }
    Ok(out)
}

/// `figures` with the requests per second each shard got in `window`.
fn with_requests(
    mut figures: Vec<ShardFigures>,
    samples: &[Sample],
    window: (Duration, Duration),
) -> Vec<ShardFigures> {
    let secs = (window.1 - window.0).as_secs_f64().max(0.001);
    for f in &mut figures {
        let n = samples
            .iter()
            .filter(|s| s.at >= window.0 && s.at < window.1 && s.shard == f.name)
            .count();
        f.requests = n as f64 / secs;
    }
    figures
}

/// Peak over mean of `values` (1.0 is even).
fn peak_to_mean(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let peak = values.iter().copied().fold(0.0, f64::max);
    if mean > 0.0 {
        peak / mean
    } else {
        0.0
    }
}

fn print_rows(title: &str, figures: &[ShardFigures]) {
    say!("      {title}:");
    for f in figures {
        say!(
            "        {:<4} {:>10} posts {:>10} comments {:>10}",
            f.name,
            thousands(f.posts),
            thousands(f.comments),
            human_bytes(f.bytes.max(0) as u64)
        );
    }
}

fn print_figures(title: &str, figures: &[ShardFigures]) {
    say!("      {title}:");
    say!(
        "        {:<4} {:>10} {:>10} {:>10} {:>11}",
        "",
        "posts",
        "comments",
        "size",
        "requests/s"
    );
    for f in figures {
        say!(
            "        {:<4} {:>10} {:>10} {:>10} {:>11.0}",
            f.name,
            thousands(f.posts),
            thousands(f.comments),
            human_bytes(f.bytes.max(0) as u64),
            f.requests
        );
    }
    say!(
        "        peak/mean: rows {:.3}, bytes {:.3}, requests {:.3}",
        peak_to_mean(figures.iter().map(|f| (f.posts + f.comments) as f64)),
        peak_to_mean(figures.iter().map(|f| f.bytes as f64)),
        peak_to_mean(figures.iter().map(|f| f.requests)),
    );
}

/// Percentiles of the `kind` requests that started in `window`.
fn latency_of(samples: &[Sample], kind: Kind, window: (Duration, Duration)) -> Latency {
    let mut all: Vec<Duration> = samples
        .iter()
        .filter(|s| s.kind == kind && s.at >= window.0 && s.at < window.1)
        .map(|s| s.latency)
        .collect();
    all.sort_unstable();
    Latency {
        count: all.len(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        max: all.last().copied().unwrap_or_default(),
    }
}

/// The `p` quantile (nearest rank) of sorted `values`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn write_report(path: &Path, html: &str) -> Result<(), Failure> {
    std::fs::write(path, html)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("write {}: {e}", path.display())))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(-1000), "-1,000");
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
