//! sha256: SHA-256 of a deterministic pseudo-random buffer. Straight-line
//! integer arithmetic in big basic blocks (few branches per byte).
//! Argument: size in MiB (suffix `k` for KiB, `b` for bytes).
use sha2::{Digest, Sha256};

fn main() {
    let n = common::arg_size(48, 1024 * 1024);
    let mut buf = vec![0u8; n];
    common::Rng::new(0x5EED_0001).fill(&mut buf);
    let digest = Sha256::digest(&buf);
    println!("sha256 of {n} bytes = {}", common::hex(&digest));
}
