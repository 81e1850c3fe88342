//! End-to-end tests of the real `tally serve` binary on an ephemeral port with a temporary data
//! directory: two tenants, real guests, invoices checked against usage records, the audit
//! chain, bad input of every kind, SIGKILL under load, and the quickstart's curl commands.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest;

const ADMIN: &str = "e2e-admin-token-0123456789";

struct Server {
    child: Child,
    base: String,
    data: PathBuf,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-token",
                ADMIN,
                "--data",
            ])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tally serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("tally serve exited before listening")
                .unwrap();
            if let Some(address) = line.strip_prefix("listening on ") {
                break address.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            base,
            data: data.to_owned(),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn problem(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "status {} body {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        self.json()["type"]
            .as_str()
            .unwrap()
            .trim_start_matches("https://tally.dev/problems/")
            .to_owned()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn agent() -> ureq::Agent {
    // No pooled connections: a server that answers 401 before reading a body may close the
    // connection, and a reused pooled connection would then fail the next request.
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .max_idle_connections(0)
        .build()
}

fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut request = agent.request(method, url);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = match request.send_bytes(body) {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(other) => return Err(other.to_string()),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| {
            let value = response.header(&name)?.to_owned();
            Some((name, value))
        })
        .collect();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body)
        .map_err(|e| e.to_string())?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    fn new(server: &Server) -> Client {
        Client {
            agent: agent(),
            base: server.base.clone(),
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Answer {
        call(
            &self.agent,
            method,
            &format!("{}{path}", self.base),
            token,
            body,
            headers,
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn get(&self, path: &str, token: &str) -> Answer {
        self.send("GET", path, Some(token), b"", &[])
    }

    fn post_json(&self, path: &str, token: &str, body: &Value) -> Answer {
        self.send(
            "POST",
            path,
            Some(token),
            body.to_string().as_bytes(),
            &[("content-type", "application/json")],
        )
    }

    fn tenant(&self, name: &str) -> (i64, String) {
        let tenant = self.post_json("/v1/tenants", ADMIN, &json!({ "name": name }));
        assert_eq!(tenant.status, 201, "{}", tenant.text());
        let id = tenant.json()["id"].as_i64().unwrap();
        let key = self.send(
            "POST",
            &format!("/v1/tenants/{id}/keys"),
            Some(ADMIN),
            b"",
            &[],
        );
        assert_eq!(key.status, 201);
        (id, key.json()["key"].as_str().unwrap().to_owned())
    }

    fn upload(&self, key: &str, wasm: &[u8]) -> String {
        let answer = self.send("POST", "/v1/modules", Some(key), wasm, &[]);
        assert!(
            answer.status == 201 || answer.status == 200,
            "{}",
            answer.text()
        );
        answer.json()["id"].as_str().unwrap().to_owned()
    }

    fn function(&self, key: &str, name: &str, config: Value) -> Answer {
        self.send(
            "PUT",
            &format!("/v1/functions/{name}"),
            Some(key),
            config.to_string().as_bytes(),
            &[],
        )
    }

    fn invoke(&self, key: &str, name: &str, stdin: &[u8]) -> Answer {
        self.send(
            "POST",
            &format!("/v1/functions/{name}/invoke"),
            Some(key),
            stdin,
            &[],
        )
    }

    fn all_usage(&self, key: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/usage?limit=1000&cursor={c}"),
                None => "/v1/usage?limit=1000".to_owned(),
            };
            let page = self.get(&path, key);
            assert_eq!(page.status, 200, "{}", page.text());
            let page = page.json();
            out.extend(page["records"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return out,
            }
        }
    }
}

fn guest(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guests/wasm")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A plan every test can subscribe to: in effect since 1970, per-unit ops and invocations.
fn plan(name: &str) -> Value {
    json!({
        "plan": name,
        "currency": "USD",
        "versions": [{
            "version": 1,
            "effective_from_ms": 0,
            "meters": {
                "ops": { "unit": { "size": "1000000", "name": "10^6 ops" },
                         "per_unit": { "unit_price": "0.01" } },
                "invocations": { "per_unit": { "unit_price": "0.001" } }
            }
        }]
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `YYYY-MM` of the current UTC month (Howard Hinnant's civil_from_days).
fn this_month() -> String {
    let days = now_ms().div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}")
}

fn decimal_cents(amount: &str) -> i64 {
    let (units, cents) = amount.split_once('.').unwrap_or((amount, "00"));
    units.parse::<i64>().unwrap() * 100 + cents.parse::<i64>().unwrap()
}

#[test]
fn two_tenants_invoke_get_invoiced_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let api = Client::new(&server);
    assert_eq!(api.get("/healthz", ADMIN).status, 200);

    let (alice_id, alice) = api.tenant("alice");
    let (bob_id, bob) = api.tenant("bob");
    let fib = api.upload(&alice, &guest("fib"));
    let trap = api.upload(&alice, &guest("trap"));
    let noop = api.upload(&bob, &guest("noop"));
    // The module's id is the SHA-256 of the original, and both variants can be downloaded.
    assert_eq!(fib, hex::encode(sha2::Sha256::digest(guest("fib"))));
    let original = api.get(&format!("/v1/modules/{fib}/original"), &alice);
    assert_eq!(original.body, guest("fib"));
    let instrumented = api.get(&format!("/v1/modules/{fib}/instrumented"), &alice);
    assert_eq!(&instrumented.body[..4], b"\0asm");
    assert!(instrumented.body.len() > original.body.len());

    assert_eq!(
        api.function(&alice, "fib", json!({"module": fib, "args": ["18"]}))
            .status,
        201
    );
    assert_eq!(
        api.function(
            &alice,
            "fib-tight",
            json!({"module": fib, "args": ["25"], "limits": {"max_ops": 20000}})
        )
        .status,
        201
    );
    assert_eq!(
        api.function(&alice, "trap", json!({"module": trap, "args": ["50"]}))
            .status,
        201
    );
    assert_eq!(
        api.function(&bob, "noop", json!({"module": noop})).status,
        201
    );

    let mut ops_alice: u64 = 0;
    for _ in 0..20 {
        let answer = api.invoke(&alice, "fib", b"");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "fib(18) = 2584\n");
        ops_alice += answer.header("tally-ops").unwrap().parse::<u64>().unwrap();
    }
    for _ in 0..5 {
        let answer = api.invoke(&alice, "trap", b"");
        assert_eq!(answer.status, 422);
        assert_eq!(answer.problem(), "guest-trapped");
        assert!(answer.json()["usage_id"].as_u64().is_some());
        ops_alice += answer.header("tally-ops").unwrap().parse::<u64>().unwrap();
    }
    for _ in 0..3 {
        let answer = api.invoke(&alice, "fib-tight", b"");
        assert_eq!(answer.problem(), "budget-exhausted");
        let ops: u64 = answer.header("tally-ops").unwrap().parse().unwrap();
        assert!(ops > 20000 && ops < 200_000, "{ops}");
        ops_alice += ops;
    }
    for _ in 0..10 {
        assert_eq!(api.invoke(&bob, "noop", b"").status, 200);
    }
    // Idempotency: the retry returns the first answer and is billed once.
    let first = api.send(
        "POST",
        "/v1/functions/fib/invoke",
        Some(&alice),
        b"",
        &[("Idempotency-Key", "order-7")],
    );
    let again = api.send(
        "POST",
        "/v1/functions/fib/invoke",
        Some(&alice),
        b"",
        &[("Idempotency-Key", "order-7")],
    );
    assert_eq!(again.header("tally-replayed"), Some("true"));
    assert_eq!(first.body, again.body);
    assert_eq!(
        first.header("tally-usage-id"),
        again.header("tally-usage-id")
    );
    ops_alice += first.header("tally-ops").unwrap().parse::<u64>().unwrap();

    // Isolation: bob sees none of alice's objects.
    assert_eq!(api.get(&format!("/v1/modules/{fib}"), &bob).status, 404);
    assert_eq!(api.invoke(&bob, "fib", b"").problem(), "unknown-function");
    let usage_id = first.header("tally-usage-id").unwrap();
    assert_eq!(api.get(&format!("/v1/usage/{usage_id}"), &bob).status, 404);
    assert_eq!(
        api.get(&format!("/v1/audit/records/{usage_id}"), &bob)
            .status,
        404
    );

    let records = api.all_usage(&alice);
    assert_eq!(records.len(), 29);
    let listed_ops: u64 = records
        .iter()
        .map(|r| r["meters"]["ops"].as_u64().unwrap())
        .sum();
    assert_eq!(listed_ops, ops_alice);
    assert_eq!(api.all_usage(&bob).len(), 10);
    let daily = api.get("/v1/usage/daily", &alice).json();
    let daily_invocations: u64 = daily
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["meters"]["invocations"].as_u64().unwrap())
        .sum();
    assert_eq!(daily_invocations, 29);

    // Plans, subscriptions, invoices.
    let created = api.post_json("/v1/plans", ADMIN, &plan("standard"));
    assert_eq!(created.status, 201, "{}", created.text());
    let plan_id = created.json()["id"].as_i64().unwrap();
    for tenant in [alice_id, bob_id] {
        let sub = api.post_json(
            &format!("/v1/tenants/{tenant}/subscriptions"),
            ADMIN,
            &json!({"plan_id": plan_id}),
        );
        assert_eq!(sub.status, 201, "{}", sub.text());
    }
    let month = this_month();
    let draft = api.post_json("/v1/invoices/draft", &alice, &json!({"period": month}));
    assert_eq!(draft.status, 200, "{}", draft.text());
    let draft = draft.json();
    assert_eq!(draft["records"], 29);
    let ops_line = draft["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["meter"] == "ops")
        .unwrap();
    assert_eq!(ops_line["quantity"], ops_alice.to_string());
    let lines_cents: i64 = draft["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| decimal_cents(l["amount"].as_str().unwrap()))
        .sum();
    assert_eq!(lines_cents, decimal_cents(draft["total"].as_str().unwrap()));

    let finalized = api.post_json(
        "/v1/invoices",
        ADMIN,
        &json!({"tenant": alice_id, "period": month}),
    );
    assert_eq!(finalized.status, 201, "{}", finalized.text());
    let finalized = finalized.json();
    assert_eq!(finalized["total"], draft["total"]);
    let invoice_id = finalized["id"].as_i64().unwrap();
    let as_json = api
        .get(&format!("/v1/invoices/{invoice_id}"), &alice)
        .json();
    assert_eq!(as_json["status"], "finalized");
    assert_eq!(as_json["number"], 1);
    let csv = api.send(
        "GET",
        &format!("/v1/invoices/{invoice_id}"),
        Some(&alice),
        b"",
        &[("Accept", "text/csv")],
    );
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let csv = csv.text();
    let mut rows = csv.lines();
    let columns: Vec<&str> = rows.next().unwrap().split(',').collect();
    let amount = columns.iter().position(|c| *c == "amount").unwrap();
    let csv_cents: i64 = rows
        .map(|row| decimal_cents(row.split(',').nth(amount).unwrap()))
        .sum();
    assert_eq!(
        csv_cents,
        decimal_cents(finalized["total"].as_str().unwrap())
    );
    assert_eq!(
        api.get(&format!("/v1/invoices/{invoice_id}"), &bob).status,
        404
    );
    // Tenant keys cannot finalize or void.
    assert_eq!(
        api.post_json("/v1/invoices", &alice, &json!({"period": month}))
            .status,
        401
    );

    // Concurrent finalize of the same period: exactly one wins.
    let winners = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let winners = winners.clone();
            let api = &api;
            let month = &month;
            scope.spawn(move || {
                let answer = api.post_json(
                    "/v1/invoices",
                    ADMIN,
                    &json!({"tenant": bob_id, "period": month}),
                );
                let kind = if answer.status == 201 {
                    "created".to_owned()
                } else {
                    answer.problem()
                };
                winners.lock().unwrap().push(kind);
            });
        }
    });
    let mut kinds = winners.lock().unwrap().clone();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "created",
            "period-already-finalized",
            "period-already-finalized",
            "period-already-finalized"
        ]
    );
    let void = api.post_json(
        &format!("/v1/invoices/{invoice_id}/void"),
        ADMIN,
        &json!({"reason": "test"}),
    );
    assert_eq!(void.status, 200, "{}", void.text());
    assert_eq!(void.json()["status"], "void");
    let again = api.post_json(
        &format!("/v1/invoices/{invoice_id}/void"),
        ADMIN,
        &json!({"reason": "test"}),
    );
    assert_eq!(again.problem(), "invoice-already-void");

    // Audit: the chain verifies and a record's hash is the SHA-256 of its canonical bytes.
    let verdict = api.get("/v1/audit/verify", &alice).json();
    assert_eq!(verdict["intact"], true);
    assert_eq!(verdict["records"], 39);
    let audit = api
        .get(&format!("/v1/audit/records/{usage_id}"), &alice)
        .json();
    let canonical = hex::decode(audit["canonical_bytes"].as_str().unwrap()).unwrap();
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&canonical)),
        audit["hash"].as_str().unwrap()
    );
    assert_eq!(audit["position"].to_string(), usage_id);

    let metrics = api.send("GET", "/metrics", None, b"", &[]).text();
    assert!(
        metrics.contains(&format!(
            "tally_invocations_total{{tenant=\"{alice_id}\",function=\"fib\",outcome=\"exit\"}} 21"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("tally_invocation_duration_seconds_bucket"));
    let openapi = api.send("GET", "/openapi.json", None, b"", &[]).json();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));

    // Graceful shutdown on SIGTERM.
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = &server.data;
}

/// WASI commands that misbehave, written in WAT.
fn wat_guest(body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             {body})"#
    ))
    .unwrap()
}

#[test]
fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--max-module-bytes",
            "100000",
            "--max-body-bytes",
            "65536",
            "--max-ops",
            "50000000",
            "--max-memory-bytes",
            "16777216",
            "--max-wall-ms",
            "3000",
            "--max-output-bytes",
            "65536",
        ],
    );
    let api = Client::new(&server);
    let (alice_id, alice) = api.tenant("alice");
    let (_, bob) = api.tenant("bob");

    // Sizes and malformed modules.
    let big = [0u8; 150_000];
    let answer = api.send("POST", "/v1/modules", Some(&alice), &big, &[]);
    assert_eq!(
        (answer.status, answer.problem()),
        (413, "module-too-large".into())
    );
    let answer = api.send("POST", "/v1/modules", Some(&alice), b"not wasm at all", &[]);
    assert_eq!(
        (answer.status, answer.problem()),
        (422, "invalid-module".into())
    );
    let answer = api.send("POST", "/v1/modules", Some(&alice), b"", &[]);
    assert_eq!(answer.problem(), "invalid-module");
    let answer = api.post_json("/v1/plans", ADMIN, &json!({"plan": "bad", "versions": []}));
    assert_eq!(
        (answer.status, answer.problem()),
        (422, "invalid-plan".into())
    );
    let answer = api.send("POST", "/v1/plans", Some(ADMIN), b"{\"plan\":", &[]);
    assert_eq!(answer.problem(), "invalid-plan");

    // Misbehaving guests: each is stopped, billed, and answered with its own problem type.
    let guests = [
        (
            "start-loop",
            r#"(func $spin (loop $l (br $l))) (start $spin) (func (export "_start"))"#,
            "start",
        ),
        (
            "memory-bomb",
            r#"(func (export "_start") (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable)"#,
            "memory-limit",
        ),
        (
            "recursion",
            r#"(func $r (export "_start") (call $r))"#,
            "guest-trapped",
        ),
        (
            "flood",
            r#"(data (i32.const 16) "flood flood flood flood flood flood flood flood flood flood\n")
            (func (export "_start")
              (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 60))
              (loop $l (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l)))"#,
            "output-limit",
        ),
        (
            "spin",
            r#"(func (export "_start") (loop $l (br $l)))"#,
            "budget-exhausted",
        ),
    ];
    for (name, body, expected) in guests {
        let module = api.upload(&alice, &wat_guest(body));
        assert_eq!(
            api.function(&alice, name, json!({"module": module})).status,
            201
        );
        let started = Instant::now();
        let answer = api.invoke(&alice, name, b"");
        assert_eq!(answer.status, 422, "{name}: {}", answer.text());
        let problem = answer.problem();
        if expected == "output-limit" {
            // The write that crossed the cap ended the run at once (a guest that ignores the
            // failed writes is not left looping until its budget or deadline): what fit is
            // kept, and the work done is billed.
            assert_eq!(problem, "output-limit", "{name}: {}", answer.text());
            assert_eq!(answer.header("tally-outcome").unwrap(), "output_limit");
            let out: u64 = answer
                .header("tally-io-out-bytes")
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(out, 65536, "the output is kept up to the cap");
            let ops: u64 = answer.header("tally-ops").unwrap().parse().unwrap();
            assert!(ops > 0 && ops < 50_000_000, "{ops} ops");
            let calls: u64 = answer.header("tally-host-calls").unwrap().parse().unwrap();
            assert_eq!(
                calls,
                65536 / 60 + 1,
                "stopped at the write that crossed the cap"
            );
        } else if expected == "start" {
            // The start function runs inside the invocation: bounded by the budget or the
            // deadline, and its work is billed.
            assert!(
                ["budget-exhausted", "deadline-exceeded"].contains(&problem.as_str()),
                "{name}: {problem}"
            );
            let ops: u64 = answer.header("tally-ops").unwrap().parse().unwrap();
            assert!(
                ops > 1_000_000,
                "{name}: the start function's work is billed ({ops} ops)"
            );
        } else {
            assert_eq!(problem, expected, "{name}: {}", answer.text());
        }
        assert!(answer.json()["usage_id"].as_u64().is_some(), "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name} took {:?}",
            started.elapsed()
        );
    }
    // Limits above the server's maximums are refused.
    let noop = api.upload(&alice, &guest("noop"));
    let answer = api.function(
        &alice,
        "greedy",
        json!({"module": noop, "limits": {"max_memory_bytes": 1u64 << 32}}),
    );
    assert_eq!(
        (answer.status, answer.problem()),
        (422, "limit-above-maximum".into())
    );
    assert_eq!(
        api.function(&alice, "noop", json!({"module": noop})).status,
        201
    );
    // Body size limit on invoke.
    let answer = api.invoke(&alice, "noop", &[b'x'; 100_000]);
    assert_eq!(
        (answer.status, answer.problem()),
        (413, "body-too-large".into())
    );
    assert_eq!(
        api.invoke(&alice, "nope", b"").problem(),
        "unknown-function"
    );

    // Every endpoint with a wrong, missing or other tenant's key: 401 or 404, never data.
    let usage_id = api
        .invoke(&alice, "noop", b"")
        .header("tally-usage-id")
        .unwrap()
        .to_owned();
    let endpoints: Vec<(&str, String)> = vec![
        ("GET", "/v1/tenants".into()),
        ("POST", "/v1/tenants".into()),
        ("GET", format!("/v1/tenants/{alice_id}")),
        ("POST", format!("/v1/tenants/{alice_id}/keys")),
        ("GET", format!("/v1/tenants/{alice_id}/keys")),
        ("DELETE", format!("/v1/tenants/{alice_id}/keys/1")),
        ("POST", format!("/v1/tenants/{alice_id}/subscriptions")),
        ("GET", format!("/v1/tenants/{alice_id}/subscriptions")),
        ("POST", "/v1/plans".into()),
        ("GET", "/v1/plans/1".into()),
        ("POST", "/v1/plans/1/versions".into()),
        ("GET", format!("/v1/modules/{noop}")),
        ("GET", format!("/v1/modules/{noop}/original")),
        ("GET", format!("/v1/modules/{noop}/instrumented")),
        ("GET", "/v1/functions/noop".into()),
        ("PUT", "/v1/functions/noop".into()),
        ("POST", "/v1/functions/noop/invoke".into()),
        ("GET", format!("/v1/usage/{usage_id}")),
        ("GET", format!("/v1/audit/records/{usage_id}")),
        ("GET", "/v1/invoices/1".into()),
        ("POST", "/v1/invoices".into()),
        ("POST", "/v1/invoices/1/void".into()),
        ("POST", "/v1/invoices/draft".into()),
    ];
    let put_body = json!({"module": noop}).to_string();
    let draft_body = json!({"tenant": alice_id, "period": "2026-01"}).to_string();
    for (method, path) in &endpoints {
        let body: &[u8] = match (*method, path.as_str()) {
            ("PUT", _) => put_body.as_bytes(),
            (_, "/v1/invoices/draft") => draft_body.as_bytes(),
            ("GET" | "DELETE", _) => b"",
            _ => b"{}",
        };
        for token in [None, Some("tly_0000"), Some(bob.as_str())] {
            let url = format!("{}{path}", api.base);
            let answer = call(&api.agent, method, &url, token, body, &[])
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert!(
                [401, 404].contains(&answer.status),
                "{method} {path} with {token:?}: {} {}",
                answer.status,
                answer.text()
            );
            assert!(
                !answer.text().contains("alice"),
                "{method} {path} leaked: {}",
                answer.text()
            );
        }
    }
    // Tenant-scoped lists with bob's key show only bob's (empty) data.
    assert_eq!(api.get("/v1/modules", &bob).json(), json!([]));
    assert_eq!(api.get("/v1/functions", &bob).json(), json!([]));
    assert_eq!(api.get("/v1/usage", &bob).json()["records"], json!([]));

    // Nothing accepted was lost, and the server still serves.
    let records = api.all_usage(&alice);
    assert_eq!(records.len(), 6, "five misbehaving guests and one noop");
    assert_eq!(api.invoke(&alice, "noop", b"").status, 200);
    assert_eq!(api.get("/v1/audit/verify", ADMIN).json()["intact"], true);
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let api = Client::new(&server);
    let (tenant_id, key) = api.tenant("load");
    let fib = api.upload(&key, &guest("fib"));
    assert_eq!(
        api.function(&key, "fib", json!({"module": fib, "args": ["12"]}))
            .status,
        201
    );

    let acknowledged = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|worker| {
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            let url = format!("{}/v1/functions/fib/invoke", server.base);
            let key = key.clone();
            std::thread::spawn(move || {
                let agent = agent();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let idempotency = format!("w{worker}-{n}");
                    n += 1;
                    match call(
                        &agent,
                        "POST",
                        &url,
                        Some(&key),
                        b"",
                        &[("Idempotency-Key", &idempotency)],
                    ) {
                        Ok(answer) if answer.status == 200 => {
                            let id = answer.header("tally-usage-id").unwrap().parse().unwrap();
                            acknowledged.lock().unwrap().push((idempotency, id));
                        }
                        Ok(answer) => panic!("unexpected {}: {}", answer.status, answer.text()),
                        Err(_) => return, // the server is gone
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    server.kill(); // SIGKILL in the middle of the load
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 10,
        "only {} invocations before the kill",
        acknowledged.len()
    );

    let server = Server::start(dir.path(), &[]);
    let api = Client::new(&server);
    let records = api.all_usage(&key);
    for (idempotency, id) in &acknowledged {
        let matching: Vec<&Value> = records
            .iter()
            .filter(|r| r["idempotency_key"] == *idempotency)
            .collect();
        assert_eq!(matching.len(), 1, "{idempotency}");
        assert_eq!(matching[0]["id"].as_u64().unwrap(), *id);
    }
    // A retry of an acknowledged invocation is answered from the ledger, not run again.
    let (idempotency, id) = &acknowledged[0];
    let retry = api.send(
        "POST",
        "/v1/functions/fib/invoke",
        Some(&key),
        b"",
        &[("Idempotency-Key", idempotency)],
    );
    assert_eq!(
        retry.header("tally-usage-id"),
        Some(id.to_string().as_str())
    );
    assert_eq!(api.all_usage(&key).len(), records.len());
    // The restarted server reloads the function lazily and keeps invoking.
    assert_eq!(api.invoke(&key, "fib", b"").status, 200);

    // Every acknowledged invocation is on the next invoice.
    let plan = api.post_json("/v1/plans", ADMIN, &plan("load")).json();
    api.post_json(
        &format!("/v1/tenants/{tenant_id}/subscriptions"),
        ADMIN,
        &json!({"plan_id": plan["id"]}),
    );
    let invoice = api.post_json(
        "/v1/invoices",
        ADMIN,
        &json!({"tenant": tenant_id, "period": this_month()}),
    );
    assert_eq!(invoice.status, 201, "{}", invoice.text());
    let invoice = invoice.json();
    assert_eq!(
        invoice["records"].as_u64().unwrap(),
        records.len() as u64 + 1
    );
    assert_eq!(api.get("/v1/audit/verify", ADMIN).json()["intact"], true);
}

#[test]
fn the_quickstart_runs() {
    let quickstart = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/quickstart.md"),
    )
    .unwrap();
    let mut script = String::new();
    let mut in_block = false;
    for line in quickstart.lines() {
        if line.trim_start().starts_with("```sh") {
            in_block = true;
        } else if line.trim_start().starts_with("```") {
            in_block = false;
        } else if in_block {
            script.push_str(line);
            script.push('\n');
        }
    }
    assert!(script.contains("curl"), "no sh blocks found");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let output = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", &script])
        .env("TALLY", &server.base)
        .env("ADMIN", ADMIN)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "quickstart failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("fib(20) = 6765"), "{stdout}");
}

/// A connection that sends half a request's headers and then nothing is closed after
/// `--header-timeout-secs`; one that sends a whole request in time is answered.
#[test]
fn slow_headers_are_cut_off() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--header-timeout-secs", "1"]);
    let address = server.base.trim_start_matches("http://").to_owned();

    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: tally\r\n")
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    // The server closes the connection (end of stream, perhaps after a 408 answer).
    slow.read_to_end(&mut answer)
        .expect("the server closed the connection before the client's read timeout");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("200 OK"), "{answer}");

    let mut prompt = std::net::TcpStream::connect(&address).unwrap();
    prompt
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    prompt
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: tally\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    prompt.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

/// An answer given before the body was looked at (here 401: no key) reaches a client whose body
/// arrives after the server decided, and the connection stays usable. A server that answers
/// and closes without reading the body makes the client's late body meet a reset, and the
/// second request on the connection fail.
#[test]
fn an_early_answer_reaches_a_client_still_sending_its_body() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let address = server.base.trim_start_matches("http://").to_owned();
    let stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    // Reads one answer: its status line, and its body by Content-Length.
    let answer = |reader: &mut BufReader<std::net::TcpStream>| -> std::io::Result<String> {
        let mut status = String::new();
        reader.read_line(&mut status)?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line.trim().is_empty() {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        Ok(format!(
            "{}{}",
            status.trim(),
            String::from_utf8_lossy(&body)
        ))
    };
    let body = br#"{"name": "late"}"#;
    write!(
        writer,
        "POST /v1/plans HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    writer.flush().unwrap();
    // Long enough for a server that answers from the headers alone to answer and close.
    std::thread::sleep(Duration::from_millis(300));
    let late = writer.write_all(body).and_then(|()| writer.flush());
    let first = late.and_then(|()| answer(&mut reader));
    let first = first.expect("the answer to the request whose body came late");
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    assert!(first.contains("unauthorized"), "{first}");
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: tally\r\n\r\n")
        .unwrap();
    let second = answer(&mut reader).expect("a second request on the same connection");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
}

/// `tally run` instruments and runs a module, writes the usage report, and exits with the
/// guest's code or the documented code of the limit that stopped it.
#[test]
fn tally_run_exits_with_the_code_of_what_stopped_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let spin = dir.path().join("spin.wasm");
    std::fs::write(
        &spin,
        wat_guest(r#"(func (export "_start") (loop $l (br $l)))"#),
    )
    .unwrap();
    let usage = dir.path().join("usage.json");
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_tally"))
            .arg("run")
            .arg("--usage-json")
            .arg(&usage)
            .args(args)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&std::fs::read(&usage).unwrap()).unwrap();
        std::fs::remove_file(&usage).unwrap();
        (output, report)
    };

    let (output, report) = run(&["guests/wasm/fib.wasm", "--", "20"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "fib(20) = 6765\n");
    assert!(report["ops"].as_u64().unwrap() > 10_000, "{report}");

    // No deadline: the budget alone stops a loop that never calls the host.
    let spin = spin.to_str().unwrap();
    let (output, report) = run(&[spin, "--max-ops", "1000000"]);
    assert_eq!(output.status.code(), Some(137), "{report}");
    assert!(report["ops"].as_u64().unwrap() > 1_000_000, "{report}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("BudgetExhausted"));

    // A deadline stops it (epoch checks), billed.
    let started = Instant::now();
    let (output, report) = run(&[spin, "--timeout-ms", "100"]);
    assert_eq!(output.status.code(), Some(142), "{report}");
    assert!(report["ops"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["wall_ns"].as_u64().unwrap() >= 100_000_000,
        "{report}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Deadline"));
}
