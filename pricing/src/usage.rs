//! Usage aggregates: what the ledger sums from usage records, and the CLI's usage file.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::meter::{Meter, Period, UnixMillis};
use crate::money::quantity_string;

/// The sum of one meter over usage records of one function, all priced by the same plan
/// version. `at` is a timestamp of those records (e.g. the earliest, or the start of the
/// bucket): the version in effect at `at` prices the whole aggregate, so an aggregate must not
/// mix records from both sides of a version's `effective_from`. Several aggregates may share a
/// function, meter and version; they are added up.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageAggregate {
    /// The function's name.
    pub function: String,
    /// Which meter.
    pub meter: Meter,
    /// A timestamp of the records summed (Unix milliseconds), inside the period.
    #[serde(rename = "at_ms")]
    pub at: UnixMillis,
    /// The summed quantity, in the meter's raw units.
    #[serde(with = "quantity_string")]
    pub quantity: u128,
}

/// A usage file as the `tally price` CLI reads it: a period and its aggregates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageDocument {
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The period to price, `[start_ms, end_ms)`.
    pub period: Period,
    /// The aggregates.
    pub usage: Vec<UsageAggregate>,
}

impl UsageDocument {
    /// Parses usage JSON; unknown fields and unknown meters are rejected with the JSON path.
    pub fn from_json(text: &str) -> Result<UsageDocument> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|error| Error::Json {
            what: "usage",
            path: error.path().to_string(),
            message: error.inner().to_string(),
        })
    }
}
