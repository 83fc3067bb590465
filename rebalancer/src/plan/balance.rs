//! Balancing by load: move the least load (or data) so that the predicted
//! peak-to-mean load per weight falls under a target.
//!
//! Load is taken as uniform within a histogram bucket, so an arc can be split
//! at an interpolated token; a hot token's load stays whole. Peak-to-mean is
//! [`Skew::of`] with weights, the measure `postshard skew` reports.

// Every per-shard vector here (loads, fair shares, sheds, needs, caps) has
// the map's shard count, and every index into one is a shard index taken
// from the same map or a bucket index below the histogram's length, so the
// arithmetic kernels index directly.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;

use postshard_router::{ShardMap, Token};

use super::histogram::{HotToken, TokenHistogram};
use super::intent::{base_shards, plan_of};
use super::moves::{apply_moves, arcs_of, moves_between, owner_at, spans, Move, Span};
use super::Plan;
use crate::skew::Skew;

/// The default target peak-to-mean.
pub const DEFAULT_TARGET: f64 = 1.05;

/// Steps of the search for the least movement that reaches the target.
const SEARCH_STEPS: usize = 30;

/// Why a balance cannot be planned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BalanceError {
    /// The target is not a number of at least 1.
    #[error("target peak-to-mean {target} must be a number of at least 1")]
    BadTarget {
        /// The target given.
        target: f64,
    },
    /// The histogram holds no load.
    #[error("the load histogram holds no load: there is nothing to balance")]
    NoLoad,
    /// One hot token carries more than any shard may at the target.
    #[error(
        "hot token {token} alone carries load {load}, more than {limit:.0}, the most even \
         the biggest shard `{shard}` may carry at peak-to-mean {target}; no plan can reach \
         the target (spread that key's load or raise the target)"
    )]
    HotToken {
        /// The token.
        token: Token,
        /// Its load.
        load: u64,
        /// The biggest shard's fair share of the load times the target.
        limit: f64,
        /// The biggest shard.
        shard: String,
        /// The target.
        target: f64,
    },
    /// No plan found brings peak-to-mean under the target.
    #[error(
        "no plan brings peak-to-mean under {target}: the best found is {best:.4}, with \
         shard `{shard}` hottest{}",
        hot.map_or(String::new(), |h| format!(" holding hot token {} (load {})", h.token, h.load))
    )]
    Unreachable {
        /// The target.
        target: f64,
        /// The lowest predicted peak-to-mean found.
        best: f64,
        /// The hottest shard in that best plan.
        shard: String,
        /// The heaviest hot token on that shard, if any.
        hot: Option<HotToken>,
    },
}

/// A plan moving the least load so that predicted peak-to-mean (per
/// weight) falls to `target_peak_to_mean` or below; a plan without moves when
/// it already does.
///
/// Shards above `level` times their fair share of the load shed the excess:
/// first any hot token too heavy to stay (it goes to the shard where it
/// weighs least), then their most loaded runs whole, then one piece split at
/// an interpolated token. Shards below the level fill up evenly from the
/// least loaded. The level starts at the target and is lowered only when
/// unequal weights or hot tokens keep the prediction above the target.
pub fn balance(
    map: &ShardMap,
    histogram: &TokenHistogram,
    target_peak_to_mean: f64,
) -> Result<Plan, BalanceError> {
    let target = target_peak_to_mean;
    if !(target.is_finite() && target >= 1.0) {
        return Err(BalanceError::BadTarget { target });
    }
    let arcs = arcs_of(map.ring());
    let weights: Vec<f64> = map.shards().iter().map(|s| f64::from(s.weight)).collect();
    let loads = histogram.loads_by_owner(&arcs, weights.len());
    let before = peak_to_mean(&loads, &weights).ok_or(BalanceError::NoLoad)?;
    let union = base_shards(map);
    let plan = |intent: String, moves: &[Move]| plan_of(map, intent, &union, union.clone(), moves);
    if before <= target {
        let intent = format!("balance: peak-to-mean {before:.4} is already within {target}");
        return Ok(plan(intent, &[]));
    }
    let total: f64 = loads.iter().sum();
    let weight_sum: f64 = weights.iter().sum();
    check_hot_tokens(map, histogram, total / weight_sum, target)?;
    let ctx = Context {
        arcs: &arcs,
        histogram,
        weights: &weights,
        fair: weights.iter().map(|w| total * w / weight_sum).collect(),
        target,
        tolerance: total * 1e-12,
    };
    // Rounding in the interpolation is forgiven up to a millionth.
    let reaches = |(_, predicted): &(Vec<Move>, f64)| *predicted <= target * (1.0 + 1e-6);
    let mut best = ctx.attempt(target);
    if !reaches(&best) {
        // The level 1 plan evens every shard out; search between it and the target.
        let even = ctx.attempt(1.0);
        if !reaches(&even) {
            let lowest = if even.1 < best.1 { even } else { best };
            return Err(ctx.unreachable(map, target, &lowest.0, lowest.1));
        }
        best = even;
        let (mut low, mut high) = (1.0, target);
        for _ in 0..SEARCH_STEPS {
            let level = (low + high) / 2.0;
            let attempt = ctx.attempt(level);
            if reaches(&attempt) {
                best = attempt;
                low = level;
            } else {
                high = level;
            }
        }
    }
    let (moves, after) = best;
    let intent = format!("balance: peak-to-mean {before:.4} -> {after:.4} (target {target})");
    Ok(plan(intent, &moves))
}

/// Peak-to-mean of `loads` per weight.
fn peak_to_mean(loads: &[f64], weights: &[f64]) -> Option<f64> {
    Skew::of(loads, Some(weights)).map(|s| s.peak_to_mean)
}

/// Fails on the hottest token that no shard can carry within the target.
fn check_hot_tokens(
    map: &ShardMap,
    histogram: &TokenHistogram,
    load_per_weight: f64,
    target: f64,
) -> Result<(), BalanceError> {
    let Some(biggest) = map.shards().iter().max_by_key(|s| s.weight) else {
        return Ok(());
    };
    let limit = target * load_per_weight * f64::from(biggest.weight);
    let hottest = histogram.hot_tokens().iter().max_by_key(|h| h.load);
    match hottest {
        Some(h) if h.load as f64 > limit => Err(BalanceError::HotToken {
            token: h.token,
            load: h.load,
            limit,
            shard: biggest.name.clone(),
            target,
        }),
        _ => Ok(()),
    }
}

/// What every attempt works from.
struct Context<'a> {
    /// The map's arcs.
    arcs: &'a [(Token, usize)],
    histogram: &'a TokenHistogram,
    weights: &'a [f64],
    /// Each shard's fair share of the total load.
    fair: Vec<f64>,
    /// The target peak-to-mean.
    target: f64,
    /// Load small enough to ignore.
    tolerance: f64,
}

/// An ownership of the ring and each shard's load under it.
struct State {
    arcs: Vec<(Token, usize)>,
    spans: Vec<Span>,
    loads: Vec<f64>,
}

impl Context<'_> {
    fn load(&self, from: i128, to: i128) -> f64 {
        self.histogram.load_between(from, to)
    }

    fn state(&self, arcs: Vec<(Token, usize)>) -> State {
        State {
            spans: spans(&arcs),
            loads: self.histogram.loads_by_owner(&arcs, self.fair.len()),
            arcs,
        }
    }

    /// Moves that bring every shard to at most `level` times its fair share,
    /// and the predicted peak-to-mean after them.
    fn attempt(&self, level: f64) -> (Vec<Move>, f64) {
        let state = self.state(apply_moves(self.arcs, &self.place_hot_tokens(level)));
        let shed: Vec<f64> = state
            .loads
            .iter()
            .zip(&self.fair)
            .map(|(l, f)| (l - level * f).max(0.0))
            .map(|s| if s > self.tolerance { s } else { 0.0 })
            .collect();
        let pieces = self.carve(
            &state,
            &shed,
            &self.water_fill(&state, &shed, shed.iter().sum()),
        );
        // Hot tokens can make the pieces carry a little more or less than planned.
        let carved = pieces.iter().map(|p| self.load(p.from, p.to)).sum();
        let need = self.water_fill(&state, &shed, carved);
        let caps: Vec<f64> = self.fair.iter().map(|f| self.target * f).collect();
        let moves = self.assign(&state, &pieces, &shed, need, &caps);
        let after = apply_moves(&state.arcs, &moves);
        let loads = self.histogram.loads_by_owner(&after, self.fair.len());
        let predicted = peak_to_mean(&loads, self.weights).unwrap_or(f64::INFINITY);
        (moves_between(self.arcs, &after), predicted)
    }

    /// Single-token moves for the hot tokens too heavy for their owner at
    /// `level`, biggest first, each to the shard where the hot load it then
    /// holds weighs least per fair share.
    fn place_hot_tokens(&self, level: f64) -> Vec<Move> {
        let spans = spans(self.arcs);
        let mut hot: Vec<HotToken> = self.histogram.hot_tokens().to_vec();
        hot.sort_by(|a, b| b.load.cmp(&a.load).then(a.token.cmp(&b.token)));
        let mut held = vec![0.0; self.fair.len()];
        let mut moves = Vec::new();
        for h in hot {
            let (token, load) = (i128::from(h.token), h.load as f64);
            let Some(owner) = owner_at(&spans, token) else {
                continue;
            };
            let weighs = |j: usize| (held[j] + load) / self.fair[j];
            let place = if held[owner] + load <= level * self.fair[owner] {
                owner
            } else {
                (0..held.len())
                    .min_by(|a, b| weighs(*a).total_cmp(&weighs(*b)))
                    .unwrap_or(owner)
            };
            held[place] += load;
            if place != owner {
                moves.push(Move {
                    from: h.token,
                    to: token + 1,
                    source: owner,
                    target: place,
                });
            }
        }
        moves.sort_by_key(|m| m.from);
        moves
    }

    /// How much each non-shedding shard receives of `amount`: the least
    /// loaded (per fair share) are raised to one common level until it fits.
    fn water_fill(&self, state: &State, shed: &[f64], amount: f64) -> Vec<f64> {
        let ratio = |j: usize| state.loads[j] / self.fair[j];
        let mut order: Vec<usize> = (0..shed.len()).filter(|j| shed[*j] == 0.0).collect();
        order.sort_by(|a, b| ratio(*a).total_cmp(&ratio(*b)));
        let (mut loads, mut fair, mut level) = (0.0, 0.0, 0.0);
        for (k, j) in order.iter().enumerate() {
            loads += state.loads[*j];
            fair += self.fair[*j];
            level = (amount + loads) / fair;
            if order.get(k + 1).is_none_or(|next| level <= ratio(*next)) {
                break;
            }
        }
        (0..shed.len())
            .map(|j| {
                if shed[j] > 0.0 {
                    0.0
                } else {
                    (level * self.fair[j] - state.loads[j]).max(0.0)
                }
            })
            .collect()
    }

    /// The pieces each shedding shard gives away, sorted by start: first its
    /// hot tokens too heavy to keep under its cap, then, most loaded first,
    /// its other hot tokens and the runs between hot tokens whole while they
    /// fit, else a piece cut from an end of a run.
    fn carve(&self, state: &State, shed: &[f64], need: &[f64]) -> Vec<Span> {
        let receives = |o: Option<usize>| o.is_some_and(|o| need.get(o).is_some_and(|n| *n > 0.0));
        let mut pieces = Vec::new();
        let mut owned: Vec<Vec<Span>> = vec![Vec::new(); shed.len()];
        for s in &state.spans {
            if let Some(list) = owned.get_mut(s.owner).filter(|_| shed[s.owner] > 0.0) {
                list.push(*s);
            }
        }
        for (giver, amount) in shed.iter().enumerate().filter(|(_, s)| **s > 0.0) {
            let cap = state.loads[giver] - amount;
            let mut remaining = *amount;
            let mut runs = Vec::new();
            for s in &owned[giver] {
                let mut from = s.from;
                // Runs stop at every hot token, so that a cut never has to
                // take or leave a hot token to shed the right amount.
                for h in self.histogram.hot_in(s.from, s.to) {
                    let token = i128::from(h.token);
                    runs.push(Span {
                        from,
                        to: token,
                        ..*s
                    });
                    let single = Span {
                        from: token,
                        to: token + 1,
                        ..*s
                    };
                    if h.load as f64 > cap {
                        pieces.push(single);
                        remaining -= h.load as f64;
                    } else {
                        runs.push(single);
                    }
                    from = token + 1;
                }
                runs.push(Span { from, ..*s });
            }
            let mut runs: Vec<(Span, f64)> = runs
                .into_iter()
                .map(|r| (r, self.load(r.from, r.to)))
                .filter(|(_, load)| *load > 0.0)
                .collect();
            runs.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (run, load) in runs {
                if remaining <= self.tolerance {
                    break;
                }
                if load <= remaining + self.tolerance {
                    remaining -= load;
                    pieces.push(run);
                    continue;
                }
                if run.to - run.from == 1 {
                    // A hot token heavier than what is left to shed stays.
                    continue;
                }
                // Cuts from either end shedding just over or just under
                // `remaining` (they differ at a hot token): the nearest wins,
                // then over before under, then the end touching a receiver.
                let (from, to) = (run.from, run.to);
                let head_over = first_true(from, to, |x| self.load(from, x) >= remaining);
                let head_under = first_true(from, to, |x| self.load(from, x) > remaining) - 1;
                let tail_over = first_true(from, to, |x| self.load(x, to) < remaining) - 1;
                let tail_under = first_true(from, to, |x| self.load(x, to) <= remaining);
                let tail_first = receives(owner_at(&state.spans, to))
                    || !receives(owner_at(&state.spans, from - 1));
                let head = |to: i128| Span { to, ..run };
                let tail = |from: i128| Span { from, ..run };
                let candidates = [
                    (head(head_over), 0, tail_first),
                    (head(head_under.max(from)), 1, tail_first),
                    (tail(tail_over.max(from)), 0, !tail_first),
                    (tail(tail_under), 1, !tail_first),
                ];
                let miss = |p: &Span| (self.load(p.from, p.to) - remaining).abs();
                let best = candidates.iter().min_by(|a, b| {
                    let (ma, mb) = (miss(&a.0), miss(&b.0));
                    if (ma - mb).abs() > self.tolerance {
                        ma.total_cmp(&mb)
                    } else {
                        (a.1, a.2).cmp(&(b.1, b.2))
                    }
                });
                if let Some((piece, _, _)) = best {
                    // Short of `remaining` only at a hot token: other runs shed the rest.
                    remaining -= self.load(piece.from, piece.to);
                    pieces.push(*piece);
                }
            }
        }
        pieces.retain(|p| p.from < p.to);
        pieces.sort_by_key(|p| p.from);
        pieces
    }

    /// Hands pieces to receivers. Hot tokens go first, biggest first, each to
    /// the receiver whose need fits it most tightly (else the one with the
    /// most room under its cap, the target times its fair share); the load
    /// between them then fills each receiver's remaining need.
    fn assign(
        &self,
        state: &State,
        pieces: &[Span],
        shed: &[f64],
        need: Vec<f64>,
        caps: &[f64],
    ) -> Vec<Move> {
        let mut ledger = Ledger {
            moves: Vec::with_capacity(pieces.len()),
            need,
            current: state.loads.clone(),
            cursor: 0,
        };
        let mut hot: Vec<HotToken> = pieces
            .iter()
            .flat_map(|p| self.histogram.hot_in(p.from, p.to).iter().copied())
            .collect();
        hot.sort_by(|a, b| b.load.cmp(&a.load).then(a.token.cmp(&b.token)));
        let mut receiver_of = BTreeMap::new();
        for h in hot {
            let load = h.load as f64;
            let fits = (0..shed.len())
                .filter(|r| shed[*r] == 0.0 && ledger.need[*r] + self.tolerance >= load)
                .min_by(|a, b| ledger.need[*a].total_cmp(&ledger.need[*b]));
            if let Some(r) = fits.or_else(|| ledger.roomiest(shed, caps)) {
                ledger.take(r, load);
                receiver_of.insert(h.token, r);
            }
        }
        let hand_out = |ledger: &mut Ledger, source, from, to, right| {
            Run {
                source,
                from,
                to,
                right,
            }
            .assign(self, state, ledger, shed, caps)
        };
        for piece in pieces {
            let mut from = piece.from;
            for h in self.histogram.hot_in(piece.from, piece.to) {
                let token = i128::from(h.token);
                let r = receiver_of.get(&h.token).copied();
                hand_out(&mut ledger, piece.owner, from, token, r);
                if let Some(r) = r {
                    ledger.push(piece.owner, r, token, token + 1);
                }
                from = token + 1;
            }
            let right = owner_at(&state.spans, piece.to);
            hand_out(&mut ledger, piece.owner, from, piece.to, right);
        }
        ledger.moves
    }

    /// The end of the longest run from `from` (up to `to`) whose load is
    /// within `need`.
    fn front(&self, from: i128, to: i128, need: f64) -> i128 {
        if self.load(from, to) <= need + self.tolerance {
            return to;
        }
        first_true(from, to, |x| self.load(from, x) > need + self.tolerance) - 1
    }

    /// The error for a target no attempt reached: the hottest shard of the
    /// best attempt and its heaviest hot token.
    fn unreachable(&self, map: &ShardMap, target: f64, moves: &[Move], best: f64) -> BalanceError {
        let after = apply_moves(self.arcs, moves);
        let loads = self.histogram.loads_by_owner(&after, self.fair.len());
        let hottest = Skew::of(&loads, Some(self.weights)).map_or(0, |s| s.hottest);
        let spans = spans(&after);
        let hot = self
            .histogram
            .hot_tokens()
            .iter()
            .filter(|h| owner_at(&spans, i128::from(h.token)) == Some(hottest))
            .max_by_key(|h| h.load)
            .copied();
        BalanceError::Unreachable {
            target,
            best,
            shard: map
                .shards()
                .get(hottest)
                .map_or_else(String::new, |s| s.name.clone()),
            hot,
        }
    }
}

/// A run of tokens to hand out, holding no hot token.
struct Run {
    source: usize,
    from: i128,
    to: i128,
    /// The owner of the token after the run once the plan is done.
    right: Option<usize>,
}

impl Run {
    /// Hands the run out, each receiver up to its need: first to the owner
    /// of the token before it and of the token after it (their arcs then
    /// grow), then in index order; anything left over goes to the receiver
    /// with the most room under its cap.
    fn assign(
        self,
        ctx: &Context<'_>,
        state: &State,
        ledger: &mut Ledger,
        shed: &[f64],
        caps: &[f64],
    ) {
        let Run {
            source,
            mut from,
            mut to,
            right,
        } = self;
        if from >= to {
            return;
        }
        let tolerance = ctx.tolerance;
        let left = match ledger.moves.last() {
            Some(m) if m.to == from => Some(m.target),
            _ => owner_at(&state.spans, from - 1),
        };
        if let Some(r) = ledger.wanting(left, tolerance) {
            let cut = ctx.front(from, to, ledger.need[r]);
            ledger.give(ctx, source, r, from, cut);
            from = cut;
        }
        let mut tail = None;
        if let Some(r) = ledger.wanting(right.filter(|_| from < to), tolerance) {
            let cut = first_true(from, to, |x| ctx.load(x, to) <= ledger.need[r] + tolerance);
            ledger.take(r, ctx.load(cut, to));
            tail = Some((r, cut, to));
            to = cut;
        }
        while from < to {
            let wanting = ledger.next_wanting(tolerance);
            let Some(r) = wanting.or_else(|| ledger.roomiest(shed, caps)) else {
                break;
            };
            let cut = match wanting {
                // At least one token, so that the loop ends.
                Some(_) => ctx.front(from, to, ledger.need[r]).max(from + 1),
                None => to,
            };
            ledger.give(ctx, source, r, from, cut);
            from = cut;
        }
        if let Some((r, from, to)) = tail {
            ledger.push(source, r, from, to);
        }
    }
}

/// Receivers' remaining needs and loads, and the moves so far.
struct Ledger {
    moves: Vec<Move>,
    need: Vec<f64>,
    current: Vec<f64>,
    /// No receiver before this index still needs load (needs only shrink).
    cursor: usize,
}

impl Ledger {
    /// The first receiver, in index order, that still needs load.
    fn next_wanting(&mut self, tolerance: f64) -> Option<usize> {
        while self.need.get(self.cursor).is_some_and(|n| *n <= tolerance) {
            self.cursor += 1;
        }
        (self.cursor < self.need.len()).then_some(self.cursor)
    }

    /// `r`, if it still needs load.
    fn wanting(&self, r: Option<usize>, tolerance: f64) -> Option<usize> {
        r.filter(|r| self.need.get(*r).is_some_and(|n| *n > tolerance))
    }

    /// Counts `load` as received by `r`.
    fn take(&mut self, r: usize, load: f64) {
        if let (Some(n), Some(c)) = (self.need.get_mut(r), self.current.get_mut(r)) {
            *n -= load;
            *c += load;
        }
    }

    /// The non-shedding shard with the most room under its cap.
    fn roomiest(&self, shed: &[f64], caps: &[f64]) -> Option<usize> {
        let room = |j: usize| caps[j] - self.current[j];
        (0..caps.len())
            .filter(|j| shed[*j] == 0.0)
            .max_by(|a, b| room(*a).total_cmp(&room(*b)))
    }

    /// Records the move of [from, to) from `source` to `r`.
    fn push(&mut self, source: usize, r: usize, from: i128, to: i128) {
        if let (true, Ok(start)) = (from < to, Token::try_from(from)) {
            self.moves.push(Move {
                from: start,
                to,
                source,
                target: r,
            });
        }
    }

    /// Moves [from, to) from `source` to `r`, counting its load.
    fn give(&mut self, ctx: &Context<'_>, source: usize, r: usize, from: i128, to: i128) {
        if from < to {
            self.take(r, ctx.load(from, to));
            self.push(source, r, from, to);
        }
    }
}

/// The smallest `x` in `[low, high]` for which `pred` holds, `pred` being
/// false then true as `x` grows; `high` when it never holds before.
fn first_true(mut low: i128, mut high: i128, pred: impl Fn(i128) -> bool) -> i128 {
    while low < high {
        let mid = low + (high - low) / 2;
        if pred(mid) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    low
}
