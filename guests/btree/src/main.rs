//! btree: BTreeMap<u64, u64> inserts, lookups, range scans and removals of
//! N pseudo-random keys. Pointer chasing, node splits/merges, small memmoves.
use std::collections::BTreeMap;

fn main() {
    let n = common::arg_u64(400_000).max(1);
    let mut rng = common::Rng::new(0x5EED_000B);
    let space = n * 4;
    let mut map: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..n {
        let k = rng.below(space);
        *map.entry(k).or_insert(0) += i;
    }
    let mut hits = 0u64;
    let mut hit_sum = 0u64;
    for _ in 0..n {
        if let Some(v) = map.get(&rng.below(space)) {
            hits += 1;
            hit_sum = hit_sum.wrapping_add(*v);
        }
    }
    let mut range_sum = 0u64;
    for _ in 0..(n / 100).max(1) {
        let lo = rng.below(space);
        let hi = lo + space / 1000 + 1;
        range_sum = map
            .range(lo..hi)
            .fold(range_sum, |s, (k, v)| s.wrapping_add(k ^ v));
    }
    let before = map.len();
    map.retain(|k, _| k % 3 != 0);
    for _ in 0..n / 4 {
        let k = rng.below(space);
        map.remove(&k);
    }
    let mut h = common::FNV_OFFSET;
    for (k, v) in &map {
        h = common::fnv1a_with(h, &k.to_le_bytes());
        h = common::fnv1a_with(h, &v.to_le_bytes());
    }
    println!("btree n={n}: distinct={before} hits={hits} hit_sum={hit_sum} range_sum={range_sum}");
    println!("after removals: len={} fnv={h:016x}", map.len());
}
