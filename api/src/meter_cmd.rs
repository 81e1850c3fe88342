//! `tally instrument` and `tally run`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tally_instrument::{CostTable, Options, instrument as instrument_module};
use tally_runtime::{DeadlineChecks, Invocation, Runtime, RuntimeConfig};

/// Arguments of `tally instrument`.
#[derive(clap::Args)]
pub struct InstrumentArgs {
    /// The module to instrument.
    input: PathBuf,
    /// Where to write the instrumented module.
    #[arg(short, long)]
    output: PathBuf,
    /// A preset (`default`, `wasmtime-fuel`) or a cost table JSON file.
    #[arg(long, default_value = "default")]
    costs: String,
}

/// Arguments of `tally run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The (uninstrumented) WASI command module to run.
    input: PathBuf,
    /// A preset (`default`, `wasmtime-fuel`) or a cost table JSON file.
    #[arg(long, default_value = "default")]
    costs: String,
    /// Stop the guest when its count exceeds this many cost units.
    #[arg(long)]
    max_ops: Option<u64>,
    /// Cap on linear memory, in bytes.
    #[arg(long)]
    max_memory: Option<u64>,
    /// Wall-clock limit, in milliseconds, enforced with wasmtime's epoch interruption (checks
    /// in compiled code that cost run time); without it the engine has no epoch checks.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// A file whose bytes are the guest's stdin.
    #[arg(long)]
    stdin: Option<PathBuf>,
    /// Write the usage report as JSON to this file.
    #[arg(long)]
    usage_json: Option<PathBuf>,
    /// Arguments for the guest (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

/// A preset name or a cost table file.
pub fn load_costs(spec: &str) -> anyhow::Result<CostTable> {
    if let Some(table) = CostTable::preset(spec) {
        return Ok(table);
    }
    let path = Path::new(spec);
    if !path.exists() {
        anyhow::bail!(
            "`{spec}` is neither a cost table preset ({}) nor a file",
            tally_instrument::PRESETS.join(", ")
        );
    }
    let json =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(CostTable::from_json(&json)?)
}

fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > tally_instrument::MODULE_BYTES_MAX as u64 {
        anyhow::bail!(
            "{} is {len} bytes, more than the limit of {}",
            path.display(),
            tally_instrument::MODULE_BYTES_MAX
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `tally instrument IN -o OUT`.
pub fn instrument(args: &InstrumentArgs) -> anyhow::Result<ExitCode> {
    let costs = load_costs(&args.costs)?;
    let wasm = read_module(&args.input)?;
    let out = instrument_module(&wasm, &costs, &Options::default())
        .with_context(|| format!("instrumenting {}", args.input.display()))?;
    std::fs::write(&args.output, &out.wasm)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let s = &out.stats;
    eprintln!(
        "instrumented {} functions ({} basic blocks): {} counters, {} budget checks, {} -> {} bytes, cost table {}",
        s.functions,
        s.basic_blocks,
        s.counters_placed,
        s.budget_checks_placed,
        s.input_bytes,
        s.output_bytes,
        costs.id()
    );
    Ok(ExitCode::SUCCESS)
}

/// `tally run IN -- ARGS`.
pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let costs = load_costs(&args.costs)?;
    let wasm = read_module(&args.input)?;
    let instrumented = instrument_module(
        &wasm,
        &costs,
        &Options {
            defer_start: true,
            ..Options::default()
        },
    )
    .with_context(|| format!("instrumenting {}", args.input.display()))?;
    // Epoch checks cost run time (docs/benchmarks.md, "Deadlines"): only when there is a
    // deadline to enforce.
    let runtime = Runtime::new(&RuntimeConfig {
        deadline_checks: if args.timeout_ms.is_some() {
            DeadlineChecks::Epoch
        } else {
            DeadlineChecks::HostCalls
        },
        ..RuntimeConfig::default()
    })?;
    let prepared = runtime.prepare(&instrumented)?;
    let program = args
        .input
        .file_name()
        .map_or("main".into(), |n| n.to_string_lossy().into_owned());
    let mut invocation = Invocation::new(
        std::iter::once(program)
            .chain(args.args.iter().cloned())
            .collect(),
    );
    if let Some(max_ops) = args.max_ops {
        invocation.max_ops = max_ops;
    }
    if let Some(max_memory) = args.max_memory {
        invocation.max_memory_bytes = max_memory;
    }
    invocation.deadline = args.timeout_ms.map(Duration::from_millis);
    if let Some(stdin) = &args.stdin {
        invocation.stdin =
            std::fs::read(stdin).with_context(|| format!("reading {}", stdin.display()))?;
    }
    let output = runtime.run(&prepared, invocation)?;
    use std::io::Write;
    std::io::stdout().write_all(&output.stdout)?;
    std::io::stderr().write_all(&output.stderr)?;
    if let Some(path) = &args.usage_json {
        let json = serde_json::to_string_pretty(&output.usage)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    let usage = &output.usage;
    if usage.outcome != (tally_runtime::Outcome::Exit { code: 0 }) {
        eprintln!(
            "tally: guest ended with {:?} after {} ops",
            usage.outcome, usage.ops
        );
    }
    Ok(ExitCode::from(
        u8::try_from(usage.outcome.exit_code()).unwrap_or(1),
    ))
}
