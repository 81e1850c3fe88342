//! trap: does real work (an FNV-style hashing loop), prints its result, then
//! traps for real inside wasm. Argument 1: loop iterations. Argument 2: the
//! kind of trap:
//!   `oob` (default)  an out-of-bounds i64.load from an address past linear memory
//!   `unreachable`    the wasm `unreachable` instruction
//!   `div0`           an i32.div_u by zero (no Rust-inserted check)
//! The `oob` load and the `div0` division sit in the middle of a basic block,
//! with instructions after them that an exact meter must not count; the
//! `unreachable` is the first instruction of the block a `br_if` jumps to.
use std::hint::black_box;
use std::num::NonZeroU32;

#[inline(never)]
fn work(n: u64) -> u64 {
    let mut h = common::FNV_OFFSET;
    for i in 0..n {
        h ^= i;
        h = h.wrapping_mul(common::FNV_PRIME);
        h = h.rotate_left(13) ^ (h >> 7);
    }
    h
}

#[inline(never)]
fn trap_oob(h: u64) -> u64 {
    // 0xFFFF_FFF0 is far past any memory this module grows to; the address is
    // opaque to the compiler, so this stays a plain load that traps.
    let addr = black_box(0xFFFF_FFF0usize) | (h as usize & 0);
    let x = unsafe { core::ptr::read_volatile(addr as *const u64) };
    x.wrapping_add(h)
}

#[inline(never)]
fn trap_unreachable(h: u64) -> u64 {
    if black_box(true) {
        #[cfg(target_arch = "wasm32")]
        core::arch::wasm32::unreachable();
        #[cfg(not(target_arch = "wasm32"))]
        std::process::abort();
    }
    h
}

#[inline(never)]
fn trap_div0(h: u64) -> u64 {
    // SAFETY: deliberately not upheld. In a release build (no UB checks)
    // this is a bare i32.div_u, and wasm defines division by zero as a trap.
    let d = unsafe { NonZeroU32::new_unchecked(black_box(0u32)) };
    ((h as u32) / d) as u64 + h
}

fn main() {
    let n = common::arg_u64(100_000_000);
    let kind = common::arg2().unwrap_or_else(|| "oob".to_string());
    let h = work(black_box(n));
    println!("work: n={n} h={h:016x}");
    println!("trapping now: {kind}");
    common::flush();
    let r = match kind.as_str() {
        "oob" => trap_oob(h),
        "unreachable" => trap_unreachable(h),
        "div0" => trap_div0(h),
        other => {
            eprintln!("unknown trap kind {other:?} (oob | unreachable | div0)");
            std::process::exit(2);
        }
    };
    // Only reached if the trap did not happen.
    println!("did not trap: {r}");
    std::process::exit(3);
}
