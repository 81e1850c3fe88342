//! `tally audit verify` and `tally invoice`: the ledger's command-line entry points.
//!
//! This is the only place that turns a `YYYY-MM` label into a millisecond range (UTC, plain
//! integer calendar arithmetic).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use tally_ledger::{ChainVerdict, Ledger, Period, SqliteLedger, TenantId};

const MS_PER_DAY: i64 = 86_400_000;
/// Years accepted in a period label.
const YEAR_MIN: i64 = 1970;
/// Years accepted in a period label.
const YEAR_MAX: i64 = 9999;

/// `tally audit ...`
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// What to audit.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Subcommands of `tally audit`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Recompute the usage hash chain; exit 0 if intact, 1 with the first bad record otherwise.
    Verify {
        /// Data directory holding ledger.sqlite3.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
}

/// `tally invoice --data DIR --tenant T --period 2026-11 [--finalize] [--csv]`
#[derive(Debug, clap::Args)]
pub struct InvoiceArgs {
    /// Data directory holding ledger.sqlite3.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Tenant name (or numeric id).
    #[arg(long)]
    pub tenant: String,
    /// Calendar month, `YYYY-MM`, in UTC.
    #[arg(long)]
    pub period: String,
    /// Store the invoice immutably (otherwise a draft is printed).
    #[arg(long)]
    pub finalize: bool,
    /// Print CSV (one row per line) instead of JSON.
    #[arg(long)]
    pub csv: bool,
}

/// Days from 1970-01-01 to `year-month-day` (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12; // March = 0
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `YYYY-MM` → `[first instant of the month, first instant of the next month)` in Unix ms, UTC.
pub fn month_period(label: &str) -> anyhow::Result<Period> {
    let (year, month) = label
        .split_once('-')
        .filter(|(y, m)| y.len() == 4 && m.len() == 2)
        .with_context(|| format!("period {label:?} is not YYYY-MM"))?;
    let year: i64 = year
        .parse()
        .with_context(|| format!("bad year in {label:?}"))?;
    let month: i64 = month
        .parse()
        .with_context(|| format!("bad month in {label:?}"))?;
    if !(YEAR_MIN..=YEAR_MAX).contains(&year) || !(1..=12).contains(&month) {
        bail!("period {label:?} is out of range");
    }
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let start = days_from_civil(year, month, 1) * MS_PER_DAY;
    let end = days_from_civil(next_year, next_month, 1) * MS_PER_DAY;
    Ok(Period::new(start, end)?)
}

/// Runs `tally audit ...`.
pub fn run_audit(args: &AuditArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        AuditCommand::Verify { data } => {
            // Read-only: works beside a running `tally serve` (WAL readers see committed state).
            let ledger = SqliteLedger::open_read_only(data)
                .with_context(|| format!("opening the ledger in {} read-only", data.display()))?;
            match ledger.verify()? {
                ChainVerdict::Intact {
                    records,
                    head_seq,
                    head_hash,
                } => {
                    println!(
                        "chain intact: {records} records, head {head_seq} {}",
                        hex_encode(&head_hash)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                ChainVerdict::Broken(chain_break) => {
                    println!("chain broken at {chain_break}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `tally invoice ...`. The finalization instant is the system clock (the CLI owns it).
pub fn run_invoice(args: &InvoiceArgs) -> anyhow::Result<ExitCode> {
    let period = month_period(&args.period)?;
    // A draft only reads, so it runs beside `tally serve`; finalizing writes and needs the
    // directory's writer lock.
    let ledger = if args.finalize {
        match SqliteLedger::open(&args.data) {
            Err(tally_ledger::Error::Locked { dir }) => bail!(
                "cannot finalize: another process (probably `tally serve`) holds the ledger in \
                 {dir}; finalize through the running server (POST /v1/invoices) or stop it first"
            ),
            other => {
                other.with_context(|| format!("opening the ledger in {}", args.data.display()))?
            }
        }
    } else {
        SqliteLedger::open_read_only(&args.data)
            .with_context(|| format!("opening the ledger in {} read-only", args.data.display()))?
    };
    let tenant = match ledger.find_tenant(&args.tenant)? {
        Some(tenant) => tenant,
        None => match args.tenant.parse::<i64>() {
            Ok(id) => ledger.get_tenant(TenantId(id))?,
            Err(_) => bail!("tenant {:?} not found", args.tenant),
        },
    };
    let invoice = if args.finalize {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("system clock before 1970")?
            .as_millis();
        ledger.finalize_invoice(tenant.id, period, i64::try_from(now_ms)?)?
    } else {
        ledger.draft_invoice(tenant.id, period)?
    };
    if args.csv {
        print!("{}", tally_ledger::export_csv(&invoice));
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&tally_ledger::export_json(&invoice))?
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::month_period;

    #[test]
    fn months_map_to_utc_millisecond_ranges() {
        let november = month_period("2026-11").unwrap();
        assert_eq!(
            (november.start_ms, november.end_ms),
            (1_793_491_200_000, 1_796_083_200_000)
        );
        let december = month_period("2026-12").unwrap();
        assert_eq!(december.start_ms, november.end_ms);
        assert_eq!(december.end_ms, 1_798_761_600_000); // 2027-01-01
        let leap = month_period("2028-02").unwrap();
        assert_eq!(leap.end_ms - leap.start_ms, 29 * 86_400_000);
        assert_eq!(month_period("1970-01").unwrap().start_ms, 0);
        for bad in [
            "2026-13", "2026-00", "26-11", "2026/11", "2026-1", "abcd-ef",
        ] {
            assert!(month_period(bad).is_err(), "{bad}");
        }
    }
}
