//! Pricing for tally: plan + usage aggregates + period → priced invoice lines, in exact money.
//!
//! The crate is pure: no I/O, no clock, no wasm, and no floating point anywhere (a test scans the
//! sources). Money is [`rust_decimal::Decimal`] with checked arithmetic; an overflow or a result
//! that would need more than 28 significant digits is an [`Error::Overflow`], never a wrap or a
//! silent rounding.
//!
//! # Model
//! * A [`Plan`] has a [`Currency`], a [`RoundingMode`] (half-even by default) and one or more
//!   [`PlanVersion`]s, each with an `effective_from` instant. A version that has priced usage is
//!   immutable: [`Plan::with_version`] refuses to replace it.
//! * A version prices [`Meter`]s with one charge model each (per-unit with a unit size, package,
//!   graduated tiers, volume tiers) plus a free allowance, and has flat fees, a minimum
//!   commitment and optional per-function overrides of a meter's charge.
//! * [`price`] splits the usage by the version in effect at each aggregate's timestamp and
//!   prices each (version, meter, overridden function) as one [`InvoiceLine`]. Tiers and free
//!   allowances count the usage of the whole period: a line that follows a version change starts
//!   where the previous version's usage ended.
//!
//! # Rounding rule
//! Amounts keep full precision until the invoice line. Each line is rounded **once**, to the
//! currency's ISO 4217 minor units, with the plan's rounding mode; the subtotal and the total are
//! sums of rounded lines, so the lines always add up to the total exactly.
//!
//! # Example
//! ```
//! use tally_pricing::{Meter, Period, Plan, UnixMillis, UsageAggregate, price};
//!
//! let plan = Plan::from_json(r#"{
//!     "plan": "starter",
//!     "currency": "USD",
//!     "versions": [{
//!         "version": 1,
//!         "effective_from_ms": 0,
//!         "meters": {
//!             "ops": {
//!                 "free_allowance": "1000000000",
//!                 "unit": { "size": "1000000000", "name": "10^9 ops" },
//!                 "per_unit": { "unit_price": "0.05" }
//!             }
//!         }
//!     }]
//! }"#)?;
//! let usage = vec![UsageAggregate {
//!     function: "resize".to_owned(),
//!     meter: Meter::Ops,
//!     at: UnixMillis(1_000),
//!     quantity: 4_500_000_000,
//! }];
//! let invoice = price(&plan, &usage, Period::new(0, 2_592_000_000))?;
//! // (4.5e9 - 1e9 free) ops × 0.05 / 1e9 = 0.175, half-even to cents = 0.18
//! assert_eq!(invoice.lines[0].amount_exact.to_string(), "0.175");
//! assert_eq!(invoice.total.to_string(), "0.18");
//! # Ok::<(), tally_pricing::Error>(())
//! ```
#![deny(missing_docs)]

mod engine;
mod error;
mod invoice;
mod meter;
mod money;
mod plan;
mod usage;

pub use engine::price;
pub use error::{Error, Problem, Problems, Result};
pub use invoice::{AppliedPackage, AppliedTier, InvoiceLine, LineKind, PricedInvoice, VersionSpan};
pub use meter::{Meter, Period, UnixMillis, UnknownMeter};
pub use money::{Currency, RoundingMode};
pub use plan::{
    FlatFee, MeterCharge, Package, PackageRounding, PerUnit, Plan, PlanSpec, PlanVersion, Tier,
    Unit,
};
pub use rust_decimal::Decimal;
pub use usage::{UsageAggregate, UsageDocument};

/// Most decimal places a unit price, tier price or tier flat amount may have (as Stripe).
pub const PRICE_DECIMAL_PLACES_MAX: u32 = 12;
/// Largest unit price, package price or flat amount, in the plan's currency.
pub const PRICE_MAX: u64 = 1_000_000_000;
/// Most tiers in one graduated or volume charge.
pub const TIERS_MAX: usize = 64;
/// Most versions in one plan.
pub const VERSIONS_MAX: usize = 1_024;
/// Most flat fees in one version.
pub const FLAT_FEES_MAX: usize = 64;
/// Most functions with overrides in one version.
pub const OVERRIDES_MAX: usize = 100_000;
/// Largest unit size or package size, in raw meter units (10^18).
pub const UNIT_SIZE_MAX: u128 = 1_000_000_000_000_000_000;
/// Longest plan, function, unit or fee name, in bytes.
pub const NAME_BYTES_MAX: usize = 256;
/// Most lines in one invoice.
pub const LINES_MAX: usize = 200_000;
/// Most usage aggregates in one call to [`price`].
pub const USAGE_AGGREGATES_MAX: usize = 10_000_000;

const _: () = assert!(LINES_MAX >= 10_000, "the benchmark invoice must fit");
const _: () = assert!(PRICE_DECIMAL_PLACES_MAX <= 28);
const _: () = assert!(UNIT_SIZE_MAX <= u64::MAX as u128);
