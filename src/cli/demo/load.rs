//! Loading the forum: every row routed by the router's live map, grouped
//! per shard and streamed into that shard with `COPY … FROM STDIN`, all
//! shards at once. The fence triggers stay on, so a row sent to the wrong
//! shard would be refused.

use std::fmt::Write as _;

use bytes::Bytes;
use futures_util::SinkExt;
use postshard_router::Router;

use super::forum::{self, Forum, BOARDS};

/// Bytes buffered before a chunk is sent.
const CHUNK: usize = 256 * 1024;

/// Rows loaded into one shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loaded {
    /// Posts.
    pub posts: u64,
    /// Comments.
    pub comments: u64,
}

/// Loads `forum` through `router`'s routing: boards on every shard, each
/// post and its comments on the shard owning the post's token.
pub async fn load(router: &Router, forum: &Forum) -> anyhow::Result<Vec<Loaded>> {
    let shards = router.map().shards().len();
    let jobs = (0..shards).map(|index| load_shard(router, forum, index));
    futures_util::future::try_join_all(jobs).await
}

async fn load_shard(router: &Router, forum: &Forum, index: usize) -> anyhow::Result<Loaded> {
    let map = router.map();
    let name = map
        .shards()
        .get(index)
        .map_or_else(String::new, |s| s.name.clone());
    let mine: Vec<i64> = (1..=forum.posts)
        .filter(|&id| map.shard_index_for(id) == index)
        .collect();
    drop(map);
    let client = router.client_of(index).await?;
    client
        .batch_execute(&format!(
            "INSERT INTO boards SELECT g, 'Board ' || g FROM generate_series(1, {BOARDS}) g"
        ))
        .await?;
    let mut loaded = Loaded::default();
    let posts = stream(
        &client,
        "COPY posts (id, board_id, author_id, title, body) FROM STDIN",
        mine.iter().map(|&id| {
            let mut line = String::with_capacity(160);
            let _ = writeln!(
                line,
                "{id}\t{}\t{}\t{}\t{}",
                id % BOARDS + 1,
                forum::mix(id) % 50_000,
                forum::title(id),
                body(id)
            );
            line
        }),
    );
    loaded.posts = posts
        .await
        .map_err(|e| anyhow::anyhow!("shard {name}: COPY posts: {e}"))?;
    let comments = stream(
        &client,
        "COPY comments (post_id, id, author_id, body) FROM STDIN",
        mine.iter().flat_map(|&id| {
            (1..=forum.comments_of(id)).map(move |k| {
                format!(
                    "{id}\t{k}\t{}\tComment {k} on post {id}: agreed.\n",
                    forum::mix(id ^ k) % 50_000
                )
            })
        }),
    );
    loaded.comments = comments
        .await
        .map_err(|e| anyhow::anyhow!("shard {name}: COPY comments: {e}"))?;
    client
        .batch_execute("ANALYZE posts; ANALYZE comments;")
        .await?;
    Ok(loaded)
}

/// Streams `lines` (each ending in a newline) into `copy`; returns the rows
/// the server reports.
async fn stream(
    client: &tokio_postgres::Client,
    copy: &str,
    lines: impl Iterator<Item = String>,
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in::<_, Bytes>(copy).await?;
    futures_util::pin_mut!(sink);
    let mut buf = String::with_capacity(CHUNK + 1024);
    for line in lines {
        buf.push_str(&line);
        if buf.len() >= CHUNK {
            sink.send(Bytes::from(std::mem::take(&mut buf).into_bytes()))
                .await?;
            buf.reserve(CHUNK + 1024);
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf.into_bytes())).await?;
    }
    sink.finish().await
}

/// A post body of about 100 bytes.
fn body(id: i64) -> String {
    let words = [
        "shard", "ring", "token", "forum", "thread", "reply", "viral", "arc",
    ];
    (0..14)
        .map(|i| {
            let pick = (forum::mix(id.wrapping_mul(31) + i) % words.len() as u64) as usize;
            words.get(pick).copied().unwrap_or("post")
        })
        .collect::<Vec<_>>()
        .join(" ")
}
