//! The demo forum's deterministic content: which posts exist, how many
//! comments each has, which threads are viral, and which posts the
//! workload may edit or delete. Loading and the final check both derive
//! what must be there from these functions.

/// Boards every shard holds.
pub const BOARDS: i64 = 20;

/// Number of viral threads.
pub const VIRAL: i64 = 10;

/// Posts with `id % 10 == DELETABLE` (in the older half) are the only ones
/// the workload deletes; nothing comments on them meanwhile.
pub const DELETABLE: i64 = 3;

/// Posts with `id % 10 == EDITABLE` are the only ones it edits.
pub const EDITABLE: i64 = 5;

/// The first ID of a comment written by the workload (loaded comments of
/// a post are numbered 1, 2, …).
pub const FIRST_NEW_COMMENT: i64 = 1 << 40;

/// The forum of `posts` posts loaded before the workload starts.
#[derive(Debug, Clone)]
pub struct Forum {
    /// Posts `1..=posts` are loaded.
    pub posts: i64,
    /// The viral threads: ten posts spread over the ID range, none deletable.
    pub viral: Vec<i64>,
}

impl Forum {
    /// The forum with posts `1..=posts` (at least 100).
    pub fn new(posts: i64) -> Forum {
        let viral = (1..=VIRAL)
            .map(|k| {
                let id = (posts * k / (VIRAL + 1)).max(1);
                if id % 10 == DELETABLE {
                    id + 1
                } else {
                    id
                }
            })
            .collect();
        Forum { posts, viral }
    }

    /// Loaded comments of post `id`: 0–3 for most posts, many more for a
    /// viral thread.
    pub fn comments_of(&self, id: i64) -> i64 {
        let base = (mix(id) % 4) as i64;
        if self.viral.contains(&id) {
            base + (self.posts / 500).max(20)
        } else {
            base
        }
    }

    /// Total loaded comments.
    pub fn total_comments(&self) -> i64 {
        (1..=self.posts).map(|id| self.comments_of(id)).sum()
    }
}

/// A fixed 64-bit mix (splitmix64's finalizer) for deterministic content.
pub fn mix(x: i64) -> u64 {
    let mut z = (x as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The loaded title of post `id`.
pub fn title(id: i64) -> String {
    format!("Post {id}: thoughts on topic {}", mix(id) % 997)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viral_threads_are_distinct_have_many_comments_and_are_never_deleted() {
        let forum = Forum::new(1_000_000);
        let viral = forum.viral.clone();
        let mut sorted = viral.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), VIRAL as usize);
        for id in viral {
            assert_ne!(id % 10, DELETABLE);
            assert!(forum.comments_of(id) >= 2000);
        }
        assert!(forum.comments_of(2) < 4);
    }
}
