//! Crash safety: a child process appends under load and is killed with SIGKILL at a random
//! moment; every acknowledged record survives, the chain verifies, appends continue.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tally_ledger::bench_support::{fixture, sample_record};
use tally_ledger::{ChainVerdict, Ledger, SqliteLedger};

const CHILD_DIR_VAR: &str = "TALLY_LEDGER_CRASH_CHILD_DIR";
const CHILD_RUN_VAR: &str = "TALLY_LEDGER_CRASH_CHILD_RUN";
const CRASHES: u32 = 4;
const CHILD_PRODUCERS: usize = 8;

/// Acts as the child when re-executed by `acknowledged_appends_survive_sigkill`; a no-op test
/// otherwise.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let run: u32 = std::env::var(CHILD_RUN_VAR).unwrap().parse().unwrap();
    let ledger = Arc::new(SqliteLedger::open(std::path::Path::new(&dir)).unwrap());
    let fixture = match ledger.find_tenant("crash").unwrap() {
        None => fixture(ledger.as_ref(), "crash").unwrap(),
        Some(tenant) => {
            let function = ledger.find_function(tenant.id, "main").unwrap().unwrap();
            tally_ledger::bench_support::Fixture {
                tenant,
                module: function.module,
                function: function.id,
            }
        }
    };
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    std::thread::scope(|scope| {
        for producer in 0..CHILD_PRODUCERS {
            let (ledger, fixture, stdout) =
                (Arc::clone(&ledger), fixture.clone(), Arc::clone(&stdout));
            scope.spawn(move || {
                let prefix = format!("r{run}p{producer}");
                for n in 0.. {
                    let record = sample_record(&fixture, &prefix, n, n as i64);
                    let appended = ledger.append(record).unwrap();
                    // Printed only after the append returned: acknowledged.
                    let mut out = stdout.lock().unwrap();
                    writeln!(
                        out,
                        "ack {} {}",
                        appended.record.record.idempotency_key, appended.record.seq
                    )
                    .unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}

fn random_below(limit: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    // splitmix64 of the clock: good enough to vary the kill moment.
    let mut z = nanos.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % limit
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged: HashMap<String, u64> = HashMap::new();
    for run in 0..CRASHES {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, dir.path())
            .env(CHILD_RUN_VAR, run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ack ") {
                    let (key, seq) = rest.split_once(' ').unwrap();
                    acks.push((key.to_owned(), seq.parse::<u64>().unwrap()));
                }
            }
            acks
        });
        // Wait for the first acknowledgement, then kill at a random moment.
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(150 + random_below(400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        assert!(
            !acks.is_empty() || started.elapsed() < Duration::from_millis(100),
            "child made no progress in run {run}"
        );
        for (key, seq) in acks {
            assert!(acknowledged.insert(key, seq).is_none());
        }

        let ledger = SqliteLedger::open(dir.path()).unwrap();
        let head = match ledger.verify().unwrap() {
            ChainVerdict::Intact { head_seq, .. } => head_seq,
            broken => panic!("chain broken after crash {run}: {broken:?}"),
        };
        for (key, seq) in &acknowledged {
            let record = ledger
                .get_usage(*seq)
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged {key} lost"));
            assert_eq!(&record.record.idempotency_key, key);
        }
        assert!(head as usize >= acknowledged.len());
        // Appends continue from the right sequence number.
        let tenant = ledger.find_tenant("crash").unwrap().unwrap();
        let function = ledger.find_function(tenant.id, "main").unwrap().unwrap();
        let fixture = tally_ledger::bench_support::Fixture {
            tenant,
            module: function.module,
            function: function.id,
        };
        let next = ledger
            .append(sample_record(&fixture, &format!("parent{run}"), 0, 0))
            .unwrap();
        assert_eq!(next.record.seq, head + 1);
        assert_eq!(
            next.record.prev_hash,
            ledger.get_usage(head).unwrap().unwrap().hash
        );
    }
    assert!(
        acknowledged.len() > 100,
        "only {} acknowledged appends",
        acknowledged.len()
    );
}
