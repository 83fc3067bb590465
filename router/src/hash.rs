//! PostgreSQL's `hashint8extended(bigint, bigint)`, reproduced bit for bit.
//!
//! A key's token is exactly what `SELECT hashint8extended(key, seed)` returns on
//! a PostgreSQL server, so SQL running on a shard can select the rows of a token
//! range with the same arithmetic the router uses. The code follows
//! `src/backend/access/hash/hashfunc.c` (`hashint8extended`) and
//! `src/common/hashfn.c` (`hash_bytes_uint32_extended`, Bob Jenkins' lookup3).

/// A position on the ring: the signed 64-bit value `hashint8extended` returns.
pub type Token = i64;

/// The token of `key` under `seed`, equal to PostgreSQL's `hashint8extended(key, seed)`.
#[inline]
pub fn hashint8extended(key: i64, seed: i64) -> Token {
    // int8 values that fit in int4 must hash like int4 (cross-type hash
    // opclass), so the high half is folded into the low half; negative
    // values fold the complement so that -1 hashes like int4 -1.
    let lo = key as u32;
    let hi = (key >> 32) as u32;
    let folded = if key >= 0 { lo ^ hi } else { lo ^ !hi };
    hash_uint32_extended(folded, seed as u64) as i64
}

/// `hash_bytes_uint32_extended` from PostgreSQL's `src/common/hashfn.c`.
#[inline]
fn hash_uint32_extended(k: u32, seed: u64) -> u64 {
    let init = 0x9e37_79b9_u32
        .wrapping_add(std::mem::size_of::<u32>() as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    a = a.wrapping_add(k);
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// lookup3's `mix(a, b, c)`.
#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

/// lookup3's `final(a, b, c)`.
#[inline(always)]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_values_that_fit_in_int4_fold_like_int4() {
        // -1 as int8 folds to 0xffff_ffff, the same word int4 -1 hashes.
        assert_eq!(
            hashint8extended(-1, 0),
            hash_uint32_extended(0xffff_ffff, 0) as i64
        );
        assert_eq!(hashint8extended(7, 0), hash_uint32_extended(7, 0) as i64);
        // 2^32 folds to 1 (low 0 ^ high 1).
        assert_eq!(hashint8extended(1 << 32, 0), hashint8extended(1, 0));
    }

    #[test]
    fn seed_changes_the_token() {
        assert_ne!(hashint8extended(42, 0), hashint8extended(42, 1));
    }
}
