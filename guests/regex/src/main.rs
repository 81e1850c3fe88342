//! regex: the `regex` crate over N KiB of generated log text: compile a few
//! patterns (NFA/DFA construction), then search (lazy-DFA state machine
//! loops, captures, replace_all). Argument: text size in KiB.
//! The crate is built without its Unicode tables (ASCII patterns, `(?-u)`):
//! that keeps the module near 0.5 MB instead of 1.2 MB, and its compile time low.
use regex::{Regex, RegexSet};

const USERS: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];
const DOMAINS: &[&str] = &["example.com", "tally.dev", "mail.org", "corp.net"];
const LEVELS: &[&str] = &["INFO", "WARN", "ERROR", "DEBUG", "info", "Error"];
const MSGS: &[&str] = &[
    "logged in",
    "uploaded module",
    "invoked function",
    "hit memory limit",
    "trap: unreachable",
    "invoice finalized",
    "payment failed: card declined",
    "rate limited",
];

fn generate(n: usize) -> String {
    let mut rng = common::Rng::new(0x5EED_0007);
    let mut s = String::with_capacity(n + 256);
    while s.len() < n {
        let pick = |r: &mut common::Rng, xs: &[&'static str]| xs[r.below(xs.len() as u64) as usize];
        let y = 2020 + rng.below(7);
        let mo = 1 + rng.below(12);
        let d = 1 + rng.below(28);
        let level = pick(&mut rng, LEVELS);
        let user = pick(&mut rng, USERS);
        let dom = pick(&mut rng, DOMAINS);
        let msg = pick(&mut rng, MSGS);
        let ip = [
            rng.below(256),
            rng.below(256),
            rng.below(256),
            rng.below(256),
        ];
        let ms = rng.below(5000);
        s.push_str(&format!(
            "{y:04}-{mo:02}-{d:02} {level} user {user}@{dom} from {}.{}.{}.{} {msg} took {ms}ms\n",
            ip[0], ip[1], ip[2], ip[3]
        ));
    }
    s.truncate(n);
    s
}

fn main() {
    let n = common::arg_size(8192, 1024);
    let text = generate(n);
    let date = Regex::new(r"(?-u)\b(\d{4})-(\d{2})-(\d{2})\b").unwrap();
    let email = Regex::new(r"(?-u)\b[a-z]+@[a-z]+(?:\.[a-z]+)*\.(?:com|dev|org|net)\b").unwrap();
    let ip = Regex::new(r"(?-u)\b(?:\d{1,3}\.){3}\d{1,3}\b").unwrap();
    let error = Regex::new(r"(?i-u)\berror\b").unwrap();
    let slow = Regex::new(r"(?-u)took (\d{4,})ms").unwrap();
    let set =
        RegexSet::new([r"failed", r"limit", r"trap", r"(?-u)^\d{4}-01-", r"(?m)ms$"]).unwrap();

    let mut month_sum = 0u64;
    let mut dates = 0u64;
    for c in date.captures_iter(&text) {
        dates += 1;
        month_sum += c[2].parse::<u64>().unwrap();
    }
    let emails = email.find_iter(&text).count();
    let ips = ip.find_iter(&text).count();
    let errors = error.find_iter(&text).count();
    let mut slow_ms = 0u64;
    for c in slow.captures_iter(&text) {
        slow_ms += c[1].parse::<u64>().unwrap();
    }
    let mut set_hits = [0u64; 5];
    for line in text.lines() {
        for i in set.matches(line).iter() {
            set_hits[i] += 1;
        }
    }
    let redacted = email.replace_all(&text, "<redacted>");
    println!(
        "text={n} dates={dates} month_sum={month_sum} emails={emails} ips={ips} errors={errors}"
    );
    println!(
        "slow_ms={slow_ms} set={set_hits:?} redacted_len={} redacted_fnv={:016x}",
        redacted.len(),
        common::fnv1a(redacted.as_bytes())
    );
}
