//! json: serde_json. Builds N records, serializes them, parses the text back
//! into typed records and into an untyped `Value`, and checks both.
//! Branchy byte-at-a-time parsing, string allocation, float formatting.
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Point {
    x: i32,
    y: i32,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Record {
    id: u64,
    name: String,
    email: String,
    score: f64,
    active: bool,
    tags: Vec<String>,
    position: Point,
    history: Vec<u32>,
    note: Option<String>,
}

const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
];

fn build(n: usize) -> Vec<Record> {
    let mut rng = common::Rng::new(0x5EED_0003);
    (0..n)
        .map(|i| {
            let w = |r: &mut common::Rng| WORDS[r.below(WORDS.len() as u64) as usize];
            let first = w(&mut rng);
            let last = w(&mut rng);
            let ntags = rng.below(5) as usize;
            let nhist = rng.below(8) as usize;
            Record {
                id: i as u64 * 7 + 1,
                name: format!("{first} {last} \"{i}\""),
                email: format!("{first}.{last}{i}@example.com"),
                // Dyadic values print and parse back exactly.
                score: (rng.below(2_000_000) as f64 - 1_000_000.0) / 64.0,
                active: rng.below(3) != 0,
                tags: (0..ntags).map(|_| w(&mut rng).to_string()).collect(),
                position: Point {
                    x: rng.below(20_001) as i32 - 10_000,
                    y: rng.below(20_001) as i32 - 10_000,
                },
                history: (0..nhist).map(|_| rng.next_u32()).collect(),
                note: if i % 5 == 0 {
                    Some(format!("line1\nline2\t{i}\u{e9}"))
                } else {
                    None
                },
            }
        })
        .collect()
}

fn walk(v: &Value, acc: &mut u64) {
    *acc = acc.wrapping_mul(31);
    match v {
        Value::Null => *acc ^= 1,
        Value::Bool(b) => *acc ^= 2 + *b as u64,
        Value::Number(n) => {
            *acc ^= if let Some(u) = n.as_u64() {
                u
            } else if let Some(i) = n.as_i64() {
                i as u64
            } else {
                n.as_f64().unwrap().to_bits()
            }
        }
        Value::String(s) => *acc ^= common::fnv1a(s.as_bytes()),
        Value::Array(a) => {
            for x in a {
                walk(x, acc);
            }
        }
        Value::Object(o) => {
            // serde_json's Map is a BTreeMap here: sorted, deterministic order.
            for (k, x) in o {
                *acc ^= common::fnv1a(k.as_bytes());
                walk(x, acc);
            }
        }
    }
}

fn main() {
    let n = common::arg_u64(30_000) as usize;
    let records = build(n);
    let text = serde_json::to_string(&records).unwrap();
    let back: Vec<Record> = serde_json::from_str(&text).unwrap();
    assert!(back == records, "typed round trip differs");
    let value: Value = serde_json::from_str(&text).unwrap();
    let mut acc = 0u64;
    walk(&value, &mut acc);
    let active = back.iter().filter(|r| r.active).count();
    let score: f64 = back.iter().map(|r| r.score).sum();
    println!(
        "records={n} bytes={} fnv={:016x}",
        text.len(),
        common::fnv1a(text.as_bytes())
    );
    println!("active={active} score_sum={score} value_hash={acc:016x}");
}
