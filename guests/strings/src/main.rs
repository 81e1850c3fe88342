//! strings: allocation-heavy string work: format!, push_str, split,
//! to_uppercase, replace, a BTreeMap<String, _> and a HashMap<String, _> with a
//! fixed (FNV) hasher. Malloc/free and byte loops.
use std::collections::{BTreeMap, HashMap};

const WORDS: &[&str] = &[
    "wasm", "meter", "tally", "ledger", "invoice", "tenant", "block", "branch", "Grüße", "naïve",
    "plan", "price", "usage", "trap", "page", "fuel", "epoch", "budget", "cost", "table",
];

fn main() {
    let n = (common::arg_u64(300_000) as usize).max(1);
    let mut rng = common::Rng::new(0x5EED_0008);
    // 1. Build one big CSV-ish string.
    let mut doc = String::new();
    for i in 0..n {
        let w1 = WORDS[rng.below(WORDS.len() as u64) as usize];
        let w2 = WORDS[rng.below(WORDS.len() as u64) as usize];
        let item = format!("{w1}-{i:06}-{w2}");
        doc.push_str(&item);
        doc.push(if i % 16 == 15 { '\n' } else { ',' });
    }
    // 2. Split it apart again and count.
    let mut by_word: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_pair: HashMap<String, u64, common::FixedState> = HashMap::default();
    let mut upper_len = 0usize;
    let mut lines = 0u64;
    for line in doc.lines() {
        lines += 1;
        for field in line.split(',').filter(|f| !f.is_empty()) {
            let mut parts = field.split('-');
            let a = parts.next().unwrap();
            let num = parts.next().unwrap();
            let b = parts.next().unwrap();
            *by_word.entry(a.to_string()).or_insert(0) += 1;
            *by_word.entry(b.to_lowercase()).or_insert(0) += num.len() as u64;
            let key = format!("{a}+{b}");
            *by_pair.entry(key).or_insert(0) += 1;
            upper_len += field.to_uppercase().len();
        }
    }
    // 3. Rewrite: replace, reverse words, join.
    let replaced = doc.replace("meter", "METER").replace(",", ";");
    let reversed: String = replaced
        .split(';')
        .take(n.min(10_000))
        .map(|f| f.chars().rev().collect::<String>())
        .collect::<Vec<_>>()
        .join("|");

    let mut h = common::FNV_OFFSET;
    for (k, v) in &by_word {
        h = common::fnv1a_with(h, k.as_bytes());
        h = common::fnv1a_with(h, &v.to_le_bytes());
    }
    // HashMap iteration order is not part of the output: sort the entries.
    let mut pairs: Vec<(&String, &u64)> = by_pair.iter().collect();
    pairs.sort();
    let (top_pair, top_count) = pairs
        .iter()
        .max_by_key(|(k, v)| (**v, std::cmp::Reverse(*k)))
        .unwrap();
    println!(
        "items={n} doc_len={} lines={lines} words={} pairs={}",
        doc.len(),
        by_word.len(),
        pairs.len()
    );
    println!("upper_len={upper_len} top={top_pair}:{top_count} map_fnv={h:016x}");
    println!(
        "replaced_fnv={:016x} reversed_len={} reversed_fnv={:016x}",
        common::fnv1a(replaced.as_bytes()),
        reversed.len(),
        common::fnv1a(reversed.as_bytes())
    );
}
