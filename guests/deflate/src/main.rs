//! deflate: miniz_oxide compress (level 6) then decompress N MiB of
//! semi-compressible text-like data, verify the round trip, print sizes.
//! Hash-chain matching, bit packing, table lookups.
//! Argument: size in MiB (suffix `k` for KiB, `b` for bytes).
use miniz_oxide::deflate::compress_to_vec;
use miniz_oxide::inflate::decompress_to_vec_with_limit;

const WORDS: &[&str] = &[
    "the",
    "meter",
    "counts",
    "every",
    "instruction",
    "of",
    "module",
    "and",
    "bills",
    "tenant",
    "invoice",
    "ledger",
    "block",
    "branch",
    "loop",
    "call",
    "memory",
    "page",
    "grow",
    "trap",
    "price",
    "plan",
    "usage",
    "record",
    "hash",
    "chain",
    "a",
    "to",
    "in",
    "is",
    "for",
    "with",
];

/// Words from a small vocabulary, numbers, and a sprinkling of random bytes:
/// compresses to roughly a third, like logs or JSON.
fn generate(n: usize) -> Vec<u8> {
    let mut rng = common::Rng::new(0x5EED_0006);
    let mut out = Vec::with_capacity(n + 64);
    while out.len() < n {
        let r = rng.next_u64();
        match r % 16 {
            0 => {
                let num = (r >> 8) % 100_000;
                out.extend_from_slice(num.to_string().as_bytes());
            }
            1 => {
                for _ in 0..(r >> 8) % 6 {
                    out.push(rng.next_u32() as u8);
                }
            }
            2 => out.push(b'\n'),
            _ => out.extend_from_slice(WORDS[((r >> 8) % WORDS.len() as u64) as usize].as_bytes()),
        }
        out.push(b' ');
    }
    out.truncate(n);
    out
}

fn main() {
    let n = common::arg_size(2, 1024 * 1024);
    let data = generate(n);
    let packed = compress_to_vec(&data, 6);
    let unpacked = decompress_to_vec_with_limit(&packed, n).expect("inflate failed");
    assert!(unpacked == data, "round trip mismatch");
    println!(
        "deflate: in={n} compressed={} ratio={:.4} in_fnv={:016x} z_fnv={:016x}",
        packed.len(),
        packed.len() as f64 / n.max(1) as f64,
        common::fnv1a(&data),
        common::fnv1a(&packed)
    );
}
