//! bulkmem: bulk memory operations (memory.copy / memory.fill in wasm):
//! large fill, copy_from_slice and overlapping copy_within, plus many
//! small variable-length copies and fills. Per-byte cost of bulk ops.
//! Argument: buffer size in MiB (suffix `k` for KiB, `b` for bytes).
use std::hint::black_box;

fn main() {
    let n = common::arg_size(24, 1024 * 1024).max(8192);
    let rounds = 24usize;
    let small_ops = (n / 1024).clamp(16, 2048);
    let mut a = vec![0u8; n];
    let mut b = vec![0u8; n];
    let mut rng = common::Rng::new(0x5EED_000A);
    let mut check = 0u64;
    for r in 0..rounds {
        // Large operations: the lengths are runtime values, so these stay
        // memory.fill / memory.copy rather than unrolled stores.
        let len = black_box(n);
        a[..len].fill(r as u8 ^ 0x5A);
        let half = len / 2;
        a[half..len].fill(black_box(r as u8 + 1));
        b[..len].copy_from_slice(&a[..len]);
        let shift = 1 + rng.below(4096) as usize;
        b.copy_within(0..len - shift, shift); // overlapping, forwards
        b.copy_within(shift..len, 0); // overlapping, backwards
        // Many small variable-length operations (2048 per round at bench size).
        for _ in 0..small_ops {
            let x = rng.next_u64();
            let l = 1 + (x & 1023) as usize;
            let src = ((x >> 10) as u32 as usize) % (n - l);
            let dst = ((x >> 34) as u32 as usize) % (n - l);
            if x >> 63 == 0 {
                a.copy_within(src..src + l, dst);
            } else {
                b[dst..dst + l].copy_from_slice(&a[src..src + l]);
                a[src..src + l / 2].fill((x >> 56) as u8);
            }
        }
        for k in (0..n).step_by(4093) {
            check = check.wrapping_mul(0x100_0000_01b3) ^ (a[k] as u64) ^ ((b[k] as u64) << 8);
        }
    }
    println!(
        "bulkmem: buf={n} rounds={rounds} check={check:016x} a_fnv={:016x} b_fnv={:016x}",
        common::fnv1a(&a[..4096.min(n)]),
        common::fnv1a(&b[n - 4096.min(n)..])
    );
}
