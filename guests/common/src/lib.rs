//! Helpers shared by the workload guests: argument parsing, a deterministic
//! PRNG and a fixed (non-random) hash, so every output is reproducible.

use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;

/// First CLI argument as an integer, or `default` when absent.
/// An unparsable argument is an error (exit code 2), never silently ignored.
pub fn arg_u64(default: u64) -> u64 {
    match std::env::args().nth(1) {
        None => default,
        Some(s) => parse_or_die(&s, s.trim().parse::<u64>().ok()),
    }
}

/// First CLI argument as a byte size. A bare number counts `unit` bytes
/// (e.g. MiB); the suffixes `b`, `k`, `m` (case-insensitive) mean bytes,
/// KiB and MiB. Returns `default_units * unit` when absent.
pub fn arg_size(default_units: u64, unit: u64) -> usize {
    match std::env::args().nth(1) {
        None => (default_units * unit) as usize,
        Some(s) => {
            let t = s.trim().to_ascii_lowercase();
            let (num, mul) = match t.chars().last() {
                Some('b') => (&t[..t.len() - 1], 1),
                Some('k') => (&t[..t.len() - 1], 1024),
                Some('m') => (&t[..t.len() - 1], 1024 * 1024),
                _ => (&t[..], unit),
            };
            let n = parse_or_die(&s, num.parse::<u64>().ok());
            (n * mul) as usize
        }
    }
}

/// Second CLI argument, if any.
pub fn arg2() -> Option<String> {
    std::env::args().nth(2)
}

fn parse_or_die(s: &str, v: Option<u64>) -> u64 {
    match v {
        Some(v) => v,
        None => {
            eprintln!("bad size argument: {s:?}");
            std::process::exit(2);
        }
    }
}

/// Flush stdout (println! is line-buffered; this is for the trap guest).
pub fn flush() {
    let _ = std::io::stdout().flush();
}

/// xorshift64* PRNG: tiny, fast, deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    /// Uniform-ish value in `0..n` (n > 0); the tiny modulo bias is irrelevant here.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Fill a byte slice with PRNG output.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over a byte slice.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_with(FNV_OFFSET, bytes)
}

/// FNV-1a continuing from `h`.
pub fn fnv1a_with(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// A `Hasher` with a fixed key (FNV-1a), for `HashMap`s whose contents
/// must not depend on host randomness.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_OFFSET)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a_with(self.0, bytes);
    }
}

pub type FixedState = BuildHasherDefault<Fnv>;

/// Lower-case hex of a byte slice.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}
