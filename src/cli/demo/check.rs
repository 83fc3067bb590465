//! The end check: every row on every shard, read row by row, against what
//! the load put there and what the workload's acknowledged writes changed.
//! Nothing lost, duplicated, misplaced or resurrected; edits kept.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use postshard_router::ShardMap;

use super::forum::Forum;
use super::workload::Record;

/// How many examples of each problem are kept.
const EXAMPLES: usize = 5;

/// What the check found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Posts and comments expected (from the load and acknowledged writes).
    pub expected: [u64; 2],
    /// Posts and comments found on the shards.
    pub found: [u64; 2],
    /// Acknowledged writes checked: inserts, edits, deletes.
    pub acknowledged: u64,
    /// Writes whose outcome is unknown (they failed), left out of the check.
    pub uncertain: usize,
    /// Problems, each `table key: what`, at most [`EXAMPLES`] per kind.
    pub problems: Vec<String>,
    /// Number of problems of all kinds.
    pub problem_count: u64,
}

/// Reads every shard of `map` (the live map after the move) and compares.
pub async fn check(map: &ShardMap, forum: &Forum, records: &[Record]) -> anyhow::Result<Checked> {
    let deleted: BTreeSet<i64> = records
        .iter()
        .flat_map(|r| r.deletes.iter().copied())
        .collect();
    let uncertain: BTreeSet<i64> = records
        .iter()
        .flat_map(|r| r.errors.iter().map(|e| e.0))
        .collect();
    let mut out = Checked {
        uncertain: uncertain.len(),
        ..Checked::default()
    };
    out.acknowledged = records
        .iter()
        .map(|r| (r.posts.len() + r.comments.len() + r.edits.len() + r.deletes.len()) as u64)
        .sum();

    // Expected keys, sorted.
    let mut posts: Vec<i64> = (1..=forum.posts)
        .filter(|id| !deleted.contains(id))
        .chain(records.iter().flat_map(|r| r.posts.iter().copied()))
        .collect();
    posts.sort_unstable();
    let mut comments: Vec<(i64, i64)> = (1..=forum.posts)
        .filter(|id| !deleted.contains(id))
        .flat_map(|id| (1..=forum.comments_of(id)).map(move |k| (id, k)))
        .chain(
            records
                .iter()
                .flat_map(|r| r.comments.iter().copied())
                .filter(|(post, _)| !deleted.contains(post)),
        )
        .collect();
    comments.sort_unstable();
    out.expected = [posts.len() as u64, comments.len() as u64];

    // Found rows, with the shard each was on.
    let mut found_posts: Vec<((i64, i64), usize)> = Vec::new();
    let mut found_comments: Vec<((i64, i64), usize)> = Vec::new();
    let mut titles: HashMap<i64, String> = HashMap::new();
    let edits: HashMap<i64, &String> = records
        .iter()
        .flat_map(|r| r.edits.iter().map(|(k, v)| (*k, v)))
        .collect();
    let edited: Vec<i64> = edits.keys().copied().collect();
    for (index, shard) in map.shards().iter().enumerate() {
        let client = postshard_router::connect(&shard.url, Duration::from_secs(10)).await?;
        for (table, sql, into) in [
            (
                "posts",
                "COPY (SELECT id, 0 FROM posts) TO STDOUT",
                &mut found_posts,
            ),
            (
                "comments",
                "COPY (SELECT post_id, id FROM comments) TO STDOUT",
                &mut found_comments,
            ),
        ] {
            let stream = client.copy_out(sql).await?;
            futures_util::pin_mut!(stream);
            let mut rest = Vec::new();
            while let Some(chunk) = stream.next().await {
                rest.extend_from_slice(&chunk?);
                let end = rest.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                for line in rest.get(..end).unwrap_or_default().split(|&b| b == b'\n') {
                    if line.is_empty() {
                        continue;
                    }
                    let text = std::str::from_utf8(line)?;
                    let (a, b) = text.split_once('\t').ok_or_else(|| {
                        anyhow::anyhow!("shard {}: {table}: bad row {text}", shard.name)
                    })?;
                    into.push(((a.parse()?, b.parse()?), index));
                }
                rest.drain(..end);
            }
        }
        for row in client
            .query("SELECT id, title FROM posts WHERE id = ANY($1)", &[&edited])
            .await?
        {
            titles.insert(row.try_get(0)?, row.try_get(1)?);
        }
    }
    out.found = [found_posts.len() as u64, found_comments.len() as u64];
    found_posts.sort_unstable();
    found_comments.sort_unstable();
    let posts: Vec<(i64, i64)> = posts.into_iter().map(|id| (id, 0)).collect();
    compare(&mut out, map, "posts", &posts, &found_posts, &uncertain);
    compare(
        &mut out,
        map,
        "comments",
        &comments,
        &found_comments,
        &uncertain,
    );

    let mut wrong = 0;
    for (id, title) in &edits {
        if uncertain.contains(id) {
            continue;
        }
        if titles.get(id) != Some(*title) {
            wrong += 1;
            if wrong <= EXAMPLES {
                out.problems
                    .push(format!("posts {id}: acknowledged edit lost"));
            }
        }
    }
    out.problem_count += wrong as u64;
    Ok(out)
}

/// Merges sorted `expected` keys with sorted `found` (key, shard) rows.
fn compare(
    out: &mut Checked,
    map: &ShardMap,
    table: &str,
    expected: &[(i64, i64)],
    found: &[((i64, i64), usize)],
    uncertain: &BTreeSet<i64>,
) {
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let mut problem = |out: &mut Checked, kind: &'static str, key: (i64, i64), detail: String| {
        let n = counts.entry(kind).or_default();
        *n += 1;
        out.problem_count += 1;
        if *n <= EXAMPLES {
            let key = if table == "posts" {
                key.0.to_string()
            } else {
                format!("({}, {})", key.0, key.1)
            };
            out.problems.push(format!("{table} {key}: {kind}{detail}"));
        }
    };
    let name = |i: usize| {
        map.shards()
            .get(i)
            .map_or("?", |s| s.name.as_str())
            .to_owned()
    };
    let (mut e, mut f) = (expected.iter().peekable(), found.iter().peekable());
    loop {
        match (e.peek().copied(), f.peek().copied()) {
            (None, None) => break,
            (Some(&want), Some(&(have, shard))) if want == have => {
                e.next();
                f.next();
                let owner = map.shard_index_for(have.0);
                if shard != owner {
                    problem(
                        out,
                        "misplaced",
                        have,
                        format!(" on {}, owner {}", name(shard), name(owner)),
                    );
                }
                while let Some((_, other)) = f.next_if(|(k, _)| *k == have) {
                    problem(
                        out,
                        "duplicated",
                        have,
                        format!(" also on {}", name(*other)),
                    );
                }
            }
            (Some(&want), None) => {
                e.next();
                if !uncertain.contains(&want.0) {
                    problem(out, "lost", want, String::new());
                }
            }
            (Some(&want), Some(&(have, _))) if want < have => {
                e.next();
                if !uncertain.contains(&want.0) {
                    problem(out, "lost", want, String::new());
                }
            }
            (_, Some(&(have, shard))) => {
                f.next();
                if !uncertain.contains(&have.0) {
                    problem(
                        out,
                        "unexpected (deleted or never written)",
                        have,
                        format!(" on {}", name(shard)),
                    );
                }
            }
        }
    }
}
