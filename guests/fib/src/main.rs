//! fib: naive doubly-recursive Fibonacci. Call-heavy: ~1.6^n calls, each a tiny
//! function body, so per-call metering overhead dominates.
use std::hint::black_box;

#[inline(never)]
fn fib(n: u32) -> u64 {
    if n < 2 {
        return n as u64;
    }
    // black_box on each result keeps LLVM from turning one of the two calls
    // into an accumulator loop (tail-recursion elimination): both stay calls.
    black_box(fib(n - 1)) + black_box(fib(n - 2))
}

fn main() {
    let n = common::arg_u64(37) as u32;
    let r = fib(black_box(n));
    println!("fib({n}) = {r}");
}
