//! A range of tokens: what a move copies, a fence refuses and capture
//! records. Pure: no I/O, only the SQL text that names a range.
//!
//! A [`TokenRange`] holds its first and last token (both inclusive), so
//! every value is a real token, an empty or reversed range cannot be built,
//! and the top of the ring (`i64::MAX`, one before 2^63) needs no sentinel:
//! the exclusive end is [`TokenRange::to`] (an `i128`, up to [`RING_END`])
//! or, as a token, [`TokenRange::end`] (`None` at the top). Ranges do not
//! wrap: the ring starts at `i64::MIN`.

use postshard_router::map::Table;
use postshard_router::Token;

/// One past the last token of the ring (2^63).
pub const RING_END: i128 = 1 << 63;

/// Tokens `from ..= last`, never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenRange {
    from: Token,
    last: Token,
}

/// A range that is empty, reversed or past the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("token range [{from}, {to}) is not a non-empty part of the ring [-2^63, 2^63)")]
pub struct BadRange {
    /// First token asked for.
    pub from: i128,
    /// End asked for (exclusive).
    pub to: i128,
}

impl TokenRange {
    /// The half-open range `[from, to)`; a planned move's range is
    /// `TokenRange::new(m.from.into(), m.to)` (`Move` and `PlannedMove` alike).
    ///
    /// Errors: [`BadRange`] unless `i64::MIN <= from < to <= 2^63`.
    pub fn new(from: i128, to: i128) -> Result<TokenRange, BadRange> {
        let last = to.checked_sub(1).map(Token::try_from);
        match (Token::try_from(from), last) {
            (Ok(from), Some(Ok(last))) if from <= last => Ok(TokenRange { from, last }),
            _ => Err(BadRange { from, to }),
        }
    }

    /// The closed range `[from, last]` (an arc of the ring, a fence).
    ///
    /// Errors: [`BadRange`] unless `from <= last`.
    pub fn inclusive(from: Token, last: Token) -> Result<TokenRange, BadRange> {
        if from <= last {
            Ok(TokenRange { from, last })
        } else {
            Err(BadRange {
                from: i128::from(from),
                to: i128::from(last) + 1,
            })
        }
    }

    /// The whole ring.
    pub fn ring() -> TokenRange {
        TokenRange {
            from: Token::MIN,
            last: Token::MAX,
        }
    }

    /// First token.
    pub fn from(&self) -> Token {
        self.from
    }

    /// Last token (inclusive).
    pub fn last(&self) -> Token {
        self.last
    }

    /// One past the last token (up to 2^63).
    pub fn to(&self) -> i128 {
        i128::from(self.last) + 1
    }

    /// One past the last token as a token; `None` when the range reaches
    /// the top of the ring.
    pub fn end(&self) -> Option<Token> {
        self.last.checked_add(1)
    }

    /// Whether `token` lies in the range.
    pub fn contains(&self, token: Token) -> bool {
        (self.from..=self.last).contains(&token)
    }

    /// SQL that is true for rows of `table` whose key's token lies in the
    /// range (false for NULL keys). Bounds and seed are spelled as typed
    /// literals (COPY takes no parameters), so the comparison stays on
    /// `int8` and can use an expression index on the token.
    pub fn predicate(&self, table: &Table, seed: i64) -> String {
        let token = format!(
            "hashint8extended({}::int8, '{seed}'::int8)",
            table.sql_key()
        );
        let mut sql = format!("{token} >= '{}'::int8", self.from);
        if let Some(end) = self.end() {
            sql.push_str(&format!(" AND {token} < '{end}'::int8"));
        }
        sql
    }

    /// The range as an `int8range` literal (half-open, unbounded above when
    /// it reaches the top of the ring).
    fn sql_literal(self) -> String {
        match self.end() {
            Some(end) => format!("[{},{end})", self.from),
            None => format!("[{},)", self.from),
        }
    }
}

impl std::fmt::Display for TokenRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", self.from, self.to())
    }
}

/// `ranges` as an `int8multirange` literal, e.g. `{[-9223372036854775808,0),[10,)}`.
pub fn multirange_literal(ranges: &[TokenRange]) -> String {
    let parts: Vec<String> = ranges.iter().map(|r| r.sql_literal()).collect();
    format!("{{{}}}", parts.join(","))
}

/// The union of `ranges`: sorted, overlapping and adjacent ranges merged.
pub fn union(ranges: impl IntoIterator<Item = TokenRange>) -> Vec<TokenRange> {
    let mut all: Vec<TokenRange> = ranges.into_iter().collect();
    all.sort();
    let mut out: Vec<TokenRange> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(prev) if prev.end().is_none_or(|end| r.from <= end) => {
                prev.last = prev.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_must_be_non_empty_parts_of_the_ring() {
        let min = i128::from(i64::MIN);
        for (from, to, ok) in [
            (min, RING_END, true),
            (0, 1, true),
            (min - 1, 0, false),
            (0, 0, false),
            (5, 4, false),
            (0, RING_END + 1, false),
            (i128::MIN, i128::MIN, false),
            (RING_END, RING_END + 1, false),
        ] {
            assert_eq!(TokenRange::new(from, to).is_ok(), ok, "[{from}, {to})");
        }
        assert!(TokenRange::inclusive(5, 5).is_ok());
        assert_eq!(
            TokenRange::inclusive(i64::MAX, i64::MIN),
            Err(BadRange {
                from: i128::from(i64::MAX),
                to: min + 1
            })
        );
        assert_eq!(
            TokenRange::new(min, RING_END),
            TokenRange::inclusive(i64::MIN, i64::MAX)
        );
        assert_eq!(TokenRange::new(min, RING_END), Ok(TokenRange::ring()));
    }

    #[test]
    fn top_of_ring_has_no_upper_bound() {
        let posts = Table {
            name: "posts".into(),
            key: "id".into(),
        };
        let top = TokenRange::new(0, RING_END).unwrap();
        assert_eq!(
            top.predicate(&posts, 7),
            "hashint8extended(\"id\"::int8, '7'::int8) >= '0'::int8"
        );
        assert_eq!(
            (top.to(), top.end(), top.last()),
            (RING_END, None, i64::MAX)
        );
        let low = TokenRange::new(i128::from(i64::MIN), -5).unwrap();
        assert_eq!(
            low.predicate(&posts, 0),
            "hashint8extended(\"id\"::int8, '0'::int8) >= '-9223372036854775808'::int8 \
             AND hashint8extended(\"id\"::int8, '0'::int8) < '-5'::int8"
        );
        assert!(top.contains(i64::MAX) && !top.contains(-1));
        assert!(low.contains(i64::MIN) && low.contains(-6) && !low.contains(-5));
        assert_eq!(top.to_string(), "[0, 9223372036854775808)");
    }

    #[test]
    fn literals_are_half_open_and_unbounded_at_the_top() {
        let r = |from, last| TokenRange::inclusive(from, last).unwrap();
        assert_eq!(
            multirange_literal(&[r(i64::MIN, -1), r(10, i64::MAX)]),
            "{[-9223372036854775808,0),[10,)}"
        );
        assert_eq!(multirange_literal(&[r(7, 7)]), "{[7,8)}");
        assert_eq!(multirange_literal(&[]), "{}");
    }

    #[test]
    fn union_merges_overlapping_and_adjacent_ranges() {
        let r = |from, last| TokenRange::inclusive(from, last).unwrap();
        assert_eq!(
            union([r(10, 19), r(40, 49), r(20, 29), r(45, 60), r(100, 100)]),
            vec![r(10, 29), r(40, 60), r(100, 100)]
        );
        assert_eq!(
            union([r(i64::MIN, -1), r(0, i64::MAX)]),
            vec![TokenRange::ring()]
        );
        assert_eq!(
            union([r(i64::MAX, i64::MAX), r(5, i64::MAX), r(i64::MIN, 3)]),
            vec![r(i64::MIN, 3), r(5, i64::MAX)]
        );
        assert_eq!(union([]), vec![]);
    }
}
