//! sort: sort N pseudo-random u32 with the standard unstable sort.
//! Compare-and-swap loops, data-dependent branches, many loads and stores.
fn main() {
    let n = common::arg_u64(4_000_000) as usize;
    let mut rng = common::Rng::new(0x5EED_0004);
    let mut v: Vec<u32> = (0..n).map(|_| rng.next_u32()).collect();
    v.sort_unstable();
    assert!(v.windows(2).all(|w| w[0] <= w[1]), "not sorted");
    let mut sum = 0u64;
    for (i, &x) in v.iter().enumerate() {
        sum = sum
            .wrapping_mul(0x100_0000_01b3)
            .wrapping_add(x as u64 ^ i as u64);
    }
    let min = v.first().copied().unwrap_or(0);
    let max = v.last().copied().unwrap_or(0);
    let median = v.get(n / 2).copied().unwrap_or(0);
    println!("sorted {n} u32: min={min} median={median} max={max} checksum={sum:016x}");
}
