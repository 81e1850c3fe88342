//! primes: sieve of Eratosthenes over odd numbers up to N (byte per odd
//! number), then count and sum. Tight integer loops with strided stores.
fn main() {
    let n = common::arg_u64(64_000_000) as usize;
    // index i stands for 2*i+1
    let half = n / 2 + 1;
    let mut composite = vec![false; half];
    let mut i = 1;
    while (2 * i + 1) * (2 * i + 1) <= n {
        if !composite[i] {
            let p = 2 * i + 1;
            let mut j = (p * p) / 2;
            while j < half {
                composite[j] = true;
                j += p;
            }
        }
        i += 1;
    }
    let mut count = if n >= 2 { 1u64 } else { 0 };
    let mut sum = if n >= 2 { 2u64 } else { 0 };
    let mut last = if n >= 2 { 2u64 } else { 0 };
    for (i, &c) in composite.iter().enumerate().skip(1) {
        let p = (2 * i + 1) as u64;
        if p > n as u64 {
            break;
        }
        if !c {
            count += 1;
            sum += p;
            last = p;
        }
    }
    println!("primes <= {n}: count={count} sum={sum} largest={last}");
}
