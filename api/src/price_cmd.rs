//! `tally price --plan PLAN.json --usage USAGE.json [--json]`: prices a usage file with a plan
//! and prints the invoice as a table (or JSON). The usage file format is
//! [`tally_pricing::UsageDocument`], documented in `docs/pricing.md`:
//!
//! ```json
//! { "period": { "start_ms": 1767225600000, "end_ms": 1769904000000 },
//!   "usage": [ { "function": "api", "meter": "ops", "at_ms": 1767229200000, "quantity": "3000000000" } ] }
//! ```
//!
//! Exit codes: 0 priced, 1 the plan or usage is invalid (one line per problem on stderr),
//! 2 a file cannot be read or the usage cannot be priced.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tally_pricing::{Error, Plan, UsageDocument, price};

/// Arguments of `tally price`.
#[derive(clap::Args, Debug)]
pub struct PriceArgs {
    /// The plan (JSON), e.g. examples/plans/tally-native.json.
    #[arg(long)]
    pub plan: PathBuf,
    /// The usage (JSON): a period and usage aggregates.
    #[arg(long)]
    pub usage: PathBuf,
    /// Print the priced invoice as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tally price`.
pub fn run(args: &PriceArgs) -> anyhow::Result<ExitCode> {
    let plan_text = std::fs::read_to_string(&args.plan)
        .with_context(|| format!("reading plan {}", args.plan.display()))?;
    let usage_text = std::fs::read_to_string(&args.usage)
        .with_context(|| format!("reading usage {}", args.usage.display()))?;
    let plan = match Plan::from_json(&plan_text) {
        Ok(plan) => plan,
        Err(error) => return Ok(report(&args.plan, &error, 1)),
    };
    let usage = match UsageDocument::from_json(&usage_text) {
        Ok(usage) => usage,
        Err(error) => return Ok(report(&args.usage, &error, 1)),
    };
    let invoice = match price(&plan, &usage.usage, usage.period) {
        Ok(invoice) => invoice,
        Err(error) => return Ok(report(&args.usage, &error, 2)),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&invoice)?);
    } else {
        print!("{}", invoice.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per problem, prefixed with the file.
fn report(file: &std::path::Path, error: &Error, code: u8) -> ExitCode {
    match error {
        Error::InvalidPlan(problems) => {
            for problem in &problems.0 {
                eprintln!("{}: {problem}", file.display());
            }
        }
        other => eprintln!("{}: {other}", file.display()),
    }
    ExitCode::from(code)
}
