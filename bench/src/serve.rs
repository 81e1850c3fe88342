//! `tally-bench serve`: invocation latency in process and over HTTP, each beside its reference.
//!
//! 1. **Cold invocation in process:** a fresh instance per invocation of a no-op function,
//!    metered with its usage captured, against a bare wasmtime pooling instantiate + run of the
//!    same uninstrumented module and against spawning `/bin/true`.
//! 2. **Over HTTP:** the real `tally serve` binary (`tally` beside this executable, built first
//!    with `cargo build --release -p tally-api` when run through cargo) on an ephemeral port with a
//!    temporary data directory, driven by a closed-loop HTTP/1.1 client with keep-alive
//!    connections on one tokio thread, latencies in an HDR histogram: p50/p99 at concurrency 1,
//!    throughput at concurrency 32, and the first invocation after a restart. The reference
//!    beside each is the same client against the server's `GET /healthz` (the HTTP floor of this
//!    machine), and for the restart a second invocation. At the end the ledger's record count is
//!    compared with the number of 2xx answers: every acknowledged invocation is a committed
//!    record.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hdrhistogram::Histogram;
use tally_instrument::{CostTable, Options, instrument};
use tally_runtime::{Invocation, Runtime, RuntimeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// The issue's targets.
const TARGET_P50_C1_US: f64 = 150.0;
const TARGET_INVOCATIONS_PER_SECOND_C32: f64 = 15_000.0;
const TARGET_FIRST_AFTER_RESTART_MS: f64 = 2.0;
/// Largest HTTP response head the client accepts, in bytes.
const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Longest wait for the server to print its address.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
const ADMIN_TOKEN: &str = "tally-bench-admin-token";

/// Arguments of `tally-bench serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Invocations per variant of the in-process benchmark.
    #[arg(long, default_value_t = 5000)]
    iterations: usize,
    /// The module to invoke.
    #[arg(long, default_value = "guests/wasm/noop.wasm")]
    module: PathBuf,
    /// Only the in-process cold-invocation benchmark.
    #[arg(long, conflicts_with = "http_only")]
    cold_only: bool,
    /// Only the HTTP benchmark.
    #[arg(long)]
    http_only: bool,
    /// The `tally` binary (default: `tally` beside this executable).
    #[arg(long)]
    tally_bin: Option<PathBuf>,
    /// Do not run `cargo build --release -p tally-api` first.
    #[arg(long)]
    no_build: bool,
    /// Seconds measured per HTTP run (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections of the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Restarts measured for the first invocation after a restart.
    #[arg(long, default_value_t = 5)]
    restarts: usize,
}

/// Runs the benchmark.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if !args.http_only {
        cold(args)?;
    }
    if !args.cold_only {
        if !args.http_only {
            println!();
        }
        http(args)?;
    }
    Ok(())
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

/// The in-process cold-invocation benchmark.
fn cold(args: &Args) -> anyhow::Result<()> {
    let wasm = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))?;

    // tally: instrumented, pooled, fresh store + instance, usage report.
    let runtime = Runtime::new(&RuntimeConfig {
        pooling_instances: 64,
        pooling_memory_bytes: 64 << 20,
        ..RuntimeConfig::default()
    })?;
    let instrumented = instrument(
        &wasm,
        &CostTable::preset("default").context("preset")?,
        &Options::default(),
    )?;
    let prepared = runtime.prepare(&instrumented)?;
    let mut tally = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let started = Instant::now();
        let output = runtime.run(&prepared, Invocation::new(vec!["noop".into()]))?;
        tally.push(started.elapsed());
        std::hint::black_box(output.usage.ops);
    }

    // Reference: bare wasmtime with the pooling allocator configured as tally's (memories
    // kept resident, reset via PAGEMAP_SCAN), uninstrumented module.
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_memories(64)
        .total_tables(64)
        .total_core_instances(64)
        .max_memory_size(64 << 20)
        .linear_memory_keep_resident(tally_runtime::POOLING_KEEP_RESIDENT_BYTES_DEFAULT)
        .table_keep_resident(tally_runtime::POOLING_KEEP_RESIDENT_BYTES_DEFAULT)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    let engine = Engine::new(&config)?;
    let module = Module::new(&engine, &wasm)?;
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx)?;
    let pre = linker.instantiate_pre(&module)?;
    let mut bare = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let started = Instant::now();
        let wasi = WasiCtxBuilder::new()
            .args(&["noop"])
            .stdout(MemoryOutputPipe::new(1 << 20))
            .build_p1();
        let mut store = Store::new(&engine, wasi);
        let instance = pre.instantiate(&mut store)?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call(&mut store, ())?;
        bare.push(started.elapsed());
    }

    // Floor of any container start: spawning /bin/true.
    let mut spawn = Vec::new();
    for _ in 0..(args.iterations / 10).max(50) {
        let started = Instant::now();
        std::process::Command::new("/bin/true").status()?;
        spawn.push(started.elapsed());
    }

    let (t50, t99) = percentiles(tally);
    let (b50, b99) = percentiles(bare);
    let (s50, s99) = percentiles(spawn);
    println!(
        "{:<58} {:>9} {:>9}",
        "cold invoke of a no-op function, in process", "p50 µs", "p99 µs"
    );
    println!(
        "{:<58} {:>9.1} {:>9.1}",
        "tally (instrumented, fresh instance, usage report)", t50, t99
    );
    println!(
        "{:<58} {:>9.1} {:>9.1}",
        "bare wasmtime pooling instantiate + run (reference)", b50, b99
    );
    println!(
        "{:<58} {:>9.1} {:>9.1}",
        "spawn /bin/true (floor of a container start)", s50, s99
    );
    println!(
        "tally / bare wasmtime p50: {:.2}×; /bin/true / tally p50: {:.1}×",
        t50 / b50,
        s50 / t50
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Over HTTP.

/// A `tally serve` child process.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// From spawning the process to its `listening on` line.
    ready: Duration,
}

impl Server {
    fn start(bin: &Path, data: &Path) -> anyhow::Result<Server> {
        let started = Instant::now();
        let log = std::fs::File::create(data.with_extension("log"))?;
        let mut child = Command::new(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-token",
                ADMIN_TOKEN,
            ])
            .arg("--data")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sender = Some(sender);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on http://")
                    && let Some(sender) = sender.take()
                {
                    let _ = sender.send(addr.to_owned());
                }
            }
        });
        let addr = match receiver.recv_timeout(SERVER_START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the server did not start; its log: {}",
                    std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
                );
            }
        };
        let ready = started.elapsed();
        Ok(Server {
            child,
            addr: addr.parse().context("the server's address")?,
            ready,
        })
    }

    /// SIGTERM (graceful: requests in flight finish, the ledger closes), then wait.
    fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("the server did not stop within 20 s of SIGTERM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Connection {
    async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends a complete request and reads one response (`Content-Length` framing).
    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<Answer> {
        self.stream.write_all(request).await?;
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            ensure!(
                self.buf.len() < RESPONSE_HEAD_BYTES_MAX,
                "response head too long"
            );
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .context("status line")?;
        let mut length = None;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>().context("content-length")?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked responses are not supported by this client");
                }
            }
        }
        let length = length.context("no content-length")?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Ok(Answer { status, body })
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        ensure!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn request(method: &str, path: &str, token: Option<&str>, body: &[u8], json: bool) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: tally\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if json {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

async fn call_json(
    connection: &mut Connection,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    let answer = connection
        .exchange(&request(method, path, Some(token), body, json))
        .await?;
    ensure!(
        (200..300).contains(&answer.status),
        "{method} {path}: {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    Ok(serde_json::from_slice(&answer.body)?)
}

/// Creates a tenant, a key, uploads the module and binds the function `noop`; returns the key.
async fn provision(addr: SocketAddr, wasm: &[u8]) -> anyhow::Result<String> {
    let mut c = Connection::open(addr).await?;
    let tenant = call_json(
        &mut c,
        "POST",
        "/v1/tenants",
        ADMIN_TOKEN,
        br#"{"name":"bench"}"#,
        true,
    )
    .await?;
    let tenant = tenant["id"].as_i64().context("tenant id")?;
    let key = call_json(
        &mut c,
        "POST",
        &format!("/v1/tenants/{tenant}/keys"),
        ADMIN_TOKEN,
        b"",
        false,
    )
    .await?;
    let key = key["key"].as_str().context("key")?.to_owned();
    let module = call_json(&mut c, "POST", "/v1/modules", &key, wasm, false).await?;
    let module = module["id"].as_str().context("module id")?.to_owned();
    let function = serde_json::json!({ "module": module }).to_string();
    call_json(
        &mut c,
        "PUT",
        "/v1/functions/noop",
        &key,
        function.as_bytes(),
        true,
    )
    .await?;
    Ok(key)
}

/// What one closed-loop run measured.
struct Load {
    /// Latency of every request completed in the measured window, in nanoseconds.
    latency_ns: Histogram<u64>,
    /// 2xx answers in the measured window.
    ok_measured: u64,
    /// 2xx answers including warm-up.
    ok_total: u64,
    /// Other answers (including warm-up).
    failed: u64,
    window: Duration,
}

impl Load {
    fn per_second(&self) -> f64 {
        self.ok_measured as f64 / self.window.as_secs_f64()
    }
    fn p_us(&self, q: f64) -> f64 {
        self.latency_ns.value_at_quantile(q) as f64 / 1e3
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// `connections` keep-alive connections, each sending the next request when the previous answer
/// arrived, for a second of warm-up and then `window`.
async fn closed_loop(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    connections: usize,
    window: Duration,
) -> anyhow::Result<Load> {
    let warm = Instant::now() + Duration::from_secs(1);
    let end = warm + window;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr).await?;
            let mut latency_ns = histogram();
            let (mut ok_measured, mut ok_total, mut failed) = (0u64, 0u64, 0u64);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let answer = connection.exchange(&request).await?;
                let done = Instant::now();
                if (200..300).contains(&answer.status) {
                    ok_total += 1;
                } else {
                    failed += 1;
                    continue;
                }
                if sent >= warm && done <= end {
                    ok_measured += 1;
                    latency_ns.record((done - sent).as_nanos() as u64)?;
                }
            }
            anyhow::Ok((latency_ns, ok_measured, ok_total, failed))
        }));
    }
    let mut load = Load {
        latency_ns: histogram(),
        ok_measured: 0,
        ok_total: 0,
        failed: 0,
        window,
    };
    for task in tasks {
        let (latency_ns, ok_measured, ok_total, failed) = task.await??;
        load.latency_ns.add(latency_ns)?;
        load.ok_measured += ok_measured;
        load.ok_total += ok_total;
        load.failed += failed;
    }
    Ok(load)
}

/// One request on a new connection (connect included), its latency.
async fn one_on_new_connection(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut connection = Connection::open(addr).await?;
    let answer = connection.exchange(request).await?;
    let took = started.elapsed();
    ensure!(
        (200..300).contains(&answer.status),
        "status {}: {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    Ok(took)
}

fn tally_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &args.tally_bin {
        return Ok(bin.clone());
    }
    let here = std::env::current_exe()?;
    let dir = here.parent().context("executable directory")?;
    // Under `cargo run` the tally binary may be stale or missing: build it (quick when fresh).
    if !args.no_build
        && let Some(cargo) = std::env::var_os("CARGO")
    {
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("release");
        let mut build = Command::new(cargo);
        build.args(["build", "-q", "-p", "tally-api", "--bin", "tally"]);
        if profile == "release" {
            build.arg("--release");
        }
        let status = build.status().context("cargo build")?;
        ensure!(status.success(), "building the tally binary failed");
    }
    let bin = dir.join("tally");
    ensure!(
        bin.exists(),
        "{} not found: `cargo build --release -p tally-api` or pass --tally-bin",
        bin.display()
    );
    Ok(bin)
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}

fn load_row(what: &str, load: &Load) {
    println!(
        "{what:<58} {:>9.1} {:>9.1} {:>11.0}{}",
        load.p_us(0.50),
        load.p_us(0.99),
        load.per_second(),
        if load.failed > 0 {
            format!("  ({} non-2xx)", load.failed)
        } else {
            String::new()
        }
    );
}

fn median_max(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
    )
}

/// The HTTP benchmark.
fn http(args: &Args) -> anyhow::Result<()> {
    ensure!(args.concurrency > 0 && args.restarts > 0 && args.seconds > 0);
    let bin = tally_binary(args)?;
    let wasm = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))?;
    let scratch = std::env::temp_dir().join(format!("tally-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let data = scratch.join("data");
    let result = http_in(args, &bin, &wasm, &data);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn http_in(args: &Args, bin: &Path, wasm: &[u8], data: &Path) -> anyhow::Result<()> {
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let window = Duration::from_secs(args.seconds);
    let server = Server::start(bin, data)?;
    let addr = server.addr;
    let key = client.block_on(provision(addr, wasm))?;
    let invoke = Arc::new(request(
        "POST",
        "/v1/functions/noop/invoke",
        Some(&key),
        b"",
        false,
    ));
    let healthz = Arc::new(request("GET", "/healthz", None, b"", false));

    println!(
        "over HTTP: {} serve on {addr}, a no-op function; client: closed loop, keep-alive \
         HTTP/1.1, one tokio thread on the same machine; {} s per run after 1 s of warm-up",
        bin.display(),
        args.seconds
    );
    println!(
        "{:<58} {:>9} {:>9} {:>11}",
        "what", "p50 µs", "p99 µs", "per second"
    );
    let mut ok_invocations = 0;
    let c1 = client.block_on(closed_loop(addr, invoke.clone(), 1, window))?;
    ok_invocations += c1.ok_total;
    load_row("POST invoke, concurrency 1", &c1);
    let h1 = client.block_on(closed_loop(addr, healthz.clone(), 1, window))?;
    load_row("  reference: GET /healthz, concurrency 1", &h1);
    let cn = client.block_on(closed_loop(addr, invoke.clone(), args.concurrency, window))?;
    ok_invocations += cn.ok_total;
    load_row(
        &format!("POST invoke, concurrency {}", args.concurrency),
        &cn,
    );
    let hn = client.block_on(closed_loop(addr, healthz.clone(), args.concurrency, window))?;
    load_row(
        &format!(
            "  reference: GET /healthz, concurrency {}",
            args.concurrency
        ),
        &hn,
    );
    server.stop()?;

    let (mut first, mut second, mut health, mut ready) = (vec![], vec![], vec![], vec![]);
    for _ in 0..args.restarts {
        let restarted = Server::start(bin, data)?;
        let addr = restarted.addr;
        ready.push(restarted.ready);
        first.push(client.block_on(one_on_new_connection(addr, &invoke))?);
        second.push(client.block_on(one_on_new_connection(addr, &invoke))?);
        health.push(client.block_on(one_on_new_connection(addr, &healthz))?);
        ok_invocations += 2;
        restarted.stop()?;
    }
    let (first_ms, first_max_ms) = median_max(first);
    let (second_ms, second_max_ms) = median_max(second);
    let (health_ms, health_max_ms) = median_max(health);
    let (ready_ms, ready_max_ms) = median_max(ready);
    println!(
        "{:<58} {:>9} {:>9}",
        format!(
            "after a restart (new connection each; {} restarts)",
            args.restarts
        ),
        "median ms",
        "max ms"
    );
    println!(
        "{:<58} {:>9.2} {:>9.2}",
        "first POST invoke", first_ms, first_max_ms
    );
    println!(
        "{:<58} {:>9.2} {:>9.2}",
        "  reference: second POST invoke", second_ms, second_max_ms
    );
    println!(
        "{:<58} {:>9.2} {:>9.2}",
        "  reference: GET /healthz", health_ms, health_max_ms
    );
    println!(
        "{:<58} {:>9.1} {:>9.1}",
        "  (process start to `listening on`)", ready_ms, ready_max_ms
    );

    // Every 2xx answer is a committed record: count them in the ledger.
    let server = Server::start(bin, data)?;
    let verdict = client.block_on(async {
        let mut c = Connection::open(server.addr).await?;
        call_json(&mut c, "GET", "/v1/audit/verify", ADMIN_TOKEN, b"", false).await
    })?;
    server.stop()?;
    let records = verdict["records"].as_u64().context("records")?;
    println!(
        "usage records in the ledger after the runs: {records}; 2xx invoke answers: \
         {ok_invocations}; chain intact: {}",
        verdict["intact"]
    );
    ensure!(
        records == ok_invocations,
        "every 2xx answer must be exactly one committed record"
    );
    println!(
        "targets: p50 at concurrency 1 ≤ {TARGET_P50_C1_US} µs: {} ({:.1}); ≥ {} invocations/s \
         at concurrency {}: {} ({:.0}); first invoke after restart ≤ {} ms: {} ({:.2})",
        met(c1.p_us(0.5) <= TARGET_P50_C1_US),
        c1.p_us(0.5),
        TARGET_INVOCATIONS_PER_SECOND_C32,
        args.concurrency,
        met(cn.per_second() >= TARGET_INVOCATIONS_PER_SECOND_C32),
        cn.per_second(),
        TARGET_FIRST_AFTER_RESTART_MS,
        met(first_ms <= TARGET_FIRST_AFTER_RESTART_MS),
        first_ms
    );
    Ok(())
}
