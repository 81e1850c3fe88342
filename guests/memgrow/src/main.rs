//! memgrow: grows linear memory again and again. Each round allocates a
//! Vec<u32> larger than the last, writes every element, keeps every third
//! one alive (dropping the oldest when the live set passes a cap), so the
//! allocator keeps asking for fresh pages (memory.grow) and reuses freed ones.
//! Argument: number of rounds.

#[cfg(target_arch = "wasm32")]
fn pages() -> usize {
    core::arch::wasm32::memory_size(0)
}
#[cfg(not(target_arch = "wasm32"))]
fn pages() -> usize {
    0
}

const LIVE_CAP: usize = 48 << 20; // bytes kept alive at most

fn main() {
    let rounds = common::arg_u64(300) as usize;
    let start_pages = pages();
    let mut live: std::collections::VecDeque<Vec<u32>> = Default::default();
    let mut live_bytes = 0usize;
    let mut allocated = 0u64;
    let mut sum = 0u64;
    let mut grows = 0u32;
    let mut last_pages = start_pages;
    for i in 0..rounds {
        // 16 KiB, growing by 16 KiB per round (plus some jitter).
        let words = 4096 * (i + 1) + (i * 7919) % 4096;
        let mut v: Vec<u32> = Vec::with_capacity(words);
        let seed = i as u32;
        for j in 0..words as u32 {
            v.push(j.wrapping_mul(2_654_435_761) ^ seed);
        }
        // Read back a stride so the writes are observable.
        sum = v
            .iter()
            .step_by(1021)
            .fold(sum, |s, &x| s.wrapping_mul(31).wrapping_add(x as u64));
        allocated += (words * 4) as u64;
        if i % 3 == 0 {
            live_bytes += words * 4;
            live.push_back(v);
            while live_bytes > LIVE_CAP {
                let old = live.pop_front().unwrap();
                live_bytes -= old.len() * 4;
            }
        }
        let p = pages();
        if p != last_pages {
            grows += 1;
            last_pages = p;
        }
    }
    let live_sum: u64 = live.iter().map(|v| v[v.len() / 2] as u64).sum();
    println!(
        "rounds={rounds} allocated={allocated} live_vecs={} live_bytes={live_bytes} live_sum={live_sum} sum={sum:016x}",
        live.len()
    );
    println!(
        "pages: start={start_pages} end={} grow_events={grows}",
        pages()
    );
}
