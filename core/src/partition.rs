//! Partitioning exactly as Kinesis does it: the partition key of a trip is its id in
//! decimal, its hash key the MD5 of that key read as a big-endian `u128`, and a stream created with
//! N shards splits `[0, 2^128)` evenly into N ranges in order. The producer and local mode both
//! use this module, so local results equal cluster results.

use md5::{Digest, Md5};

/// An inclusive range of 128-bit hash keys owned by one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKeyRange {
    /// First hash key of the range.
    pub start: u128,
    /// Last hash key of the range (inclusive).
    pub end: u128,
}

/// MD5 of a partition key as a big-endian unsigned 128-bit integer.
pub fn hash_key(partition_key: &[u8]) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key).into())
}

/// The hash key of a trip: MD5 of its id written in decimal, formatted without allocating.
pub fn trip_hash_key(trip_id: u64) -> u128 {
    let mut buf = [0_u8; 20];
    let mut i = buf.len();
    let mut n = trip_id;
    loop {
        i -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    hash_key(&buf[i..])
}

/// The ranges of a newly created stream of `shards` shards: shard `i` starts at
/// ⌊i · 2^128 / N⌋, and each range ends one before the next begins.
pub fn even_ranges(shards: u32) -> Vec<HashKeyRange> {
    let n = u128::from(shards.max(1));
    if n == 1 {
        return vec![HashKeyRange { start: 0, end: u128::MAX }];
    }
    // 2^128 = q·n + r, computed without overflowing u128 (n ≥ 2, so q < u128::MAX).
    let (mut q, mut r) = (u128::MAX / n, u128::MAX % n + 1);
    if r == n {
        q += 1;
        r = 0;
    }
    let start = |i: u128| q * i + r * i / n;
    (0..n)
        .map(|i| HashKeyRange { start: start(i), end: if i + 1 == n { u128::MAX } else { start(i + 1) - 1 } })
        .collect()
}

/// Routes hash keys to shards by their ranges (sorted by start, covering the key space).
#[derive(Clone, Debug)]
pub struct ShardRouter {
    starts: Vec<u128>,
}

impl ShardRouter {
    /// A router over a freshly created stream of `shards` shards.
    pub fn even(shards: u32) -> ShardRouter {
        ShardRouter { starts: even_ranges(shards).iter().map(|r| r.start).collect() }
    }

    /// Number of shards routed to.
    pub fn shards(&self) -> usize {
        self.starts.len()
    }

    /// Index of the shard whose range holds `hash_key`.
    #[inline]
    pub fn shard_for(&self, hash_key: u128) -> usize {
        self.starts.partition_point(|&s| s <= hash_key).saturating_sub(1)
    }

    /// Index of the shard a trip goes to.
    #[inline]
    pub fn shard_for_trip(&self, trip_id: u64) -> usize {
        self.shard_for(trip_hash_key(trip_id))
    }
}

/// The Kinesis shard id of the `index`-th shard of a new stream (`shardId-000000000003`).
pub fn shard_id(index: usize) -> String {
    format!("shardId-{index:012}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn hash_key_is_md5_big_endian() {
        // md5("1") = c4ca4238a0b923820dcc509a6f75849b
        assert_eq!(hash_key(b"1"), 0xc4ca4238a0b923820dcc509a6f75849b);
        assert_eq!(trip_hash_key(1), hash_key(b"1"));
        assert_eq!(trip_hash_key(0), hash_key(b"0"));
        assert_eq!(trip_hash_key(u64::MAX), hash_key(u64::MAX.to_string().as_bytes()));
    }

    #[test]
    fn ranges_match_what_kinesis_creates() {
        // An 8-shard stream: 2^128 / 8 each.
        let eight = even_ranges(8);
        assert_eq!(eight[1].start, 42535295865117307932921825928971026432);
        assert_eq!(eight[0].end, 42535295865117307932921825928971026431);
        // A 3-shard stream as the Kinesis console shows it.
        let three = even_ranges(3);
        assert_eq!(three[1].start, 113427455640312821154458202477256070485);
        assert_eq!(three[2].start, 226854911280625642308916404954512140970);
        assert_eq!(three[2].end, u128::MAX);
        assert_eq!(even_ranges(1), vec![HashKeyRange { start: 0, end: u128::MAX }]);
    }

    #[test]
    fn router_maps_range_edges_to_their_shard() {
        let router = ShardRouter::even(4);
        let ranges = even_ranges(4);
        for (i, r) in ranges.iter().enumerate() {
            assert_eq!(router.shard_for(r.start), i);
            assert_eq!(router.shard_for(r.end), i);
        }
        assert_eq!(shard_id(3), "shardId-000000000003");
    }

    proptest! {
        #[test]
        fn ranges_tile_the_key_space(n in 1_u32..200) {
            let ranges = even_ranges(n);
            prop_assert_eq!(ranges.len(), n as usize);
            prop_assert_eq!(ranges[0].start, 0);
            prop_assert_eq!(ranges[ranges.len() - 1].end, u128::MAX);
            for w in ranges.windows(2) {
                prop_assert_eq!(w[0].end + 1, w[1].start);
                // Even split: sizes differ by at most one key.
                let a = w[0].end - w[0].start;
                let b = w[1].end - w[1].start;
                prop_assert!(a.abs_diff(b) <= 1);
            }
        }

        #[test]
        fn trips_spread_over_all_shards(n in 2_u32..16) {
            let router = ShardRouter::even(n);
            let mut seen = vec![0_u32; n as usize];
            for id in 1..2000_u64 {
                seen[router.shard_for_trip(id)] += 1;
            }
            prop_assert!(seen.iter().all(|&c| c > 0));
        }
    }
}
