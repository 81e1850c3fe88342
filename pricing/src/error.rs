//! The one error type of the crate.

use std::fmt;

use crate::meter::UnixMillis;

/// One problem found while validating a plan, with the JSON path of the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// JSON path of the field, e.g. `versions[0].meters.ops.graduated[2].up_to`.
    pub path: String,
    /// What is wrong, lowercase, without a trailing period.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Wrapper that displays a list of problems, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong in `tally-pricing`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The JSON text is not well-formed or does not have the expected shape (the first problem
    /// only: serde stops at the first one).
    #[error("{what} json is malformed at {path}: {message}")]
    Json {
        /// `plan` or `usage`.
        what: &'static str,
        /// JSON path of the offending value (`.` when it is the document itself).
        path: String,
        /// What serde reported.
        message: String,
    },
    /// The plan is well-formed JSON but breaks one or more rules; every problem is listed.
    #[error("plan is invalid ({} problem(s)):\n{}", .0.0.len(), .0)]
    InvalidPlan(Problems),
    /// The period is empty or reversed.
    #[error("period [{start}, {end}) is empty: start must be before end")]
    EmptyPeriod {
        /// Start of the period.
        start: UnixMillis,
        /// End of the period.
        end: UnixMillis,
    },
    /// A usage aggregate has a timestamp outside the period being priced.
    #[error("usage[{index}] at {at} is outside the period [{start}, {end})")]
    UsageOutsidePeriod {
        /// Index in the usage slice.
        index: usize,
        /// Its timestamp.
        at: UnixMillis,
        /// Start of the period.
        start: UnixMillis,
        /// End of the period.
        end: UnixMillis,
    },
    /// A usage aggregate is timestamped before the first version of the plan takes effect.
    #[error("usage[{index}] at {at} is before the first plan version takes effect ({first})")]
    NoVersionInEffect {
        /// Index in the usage slice.
        index: usize,
        /// Its timestamp.
        at: UnixMillis,
        /// When the first version takes effect.
        first: UnixMillis,
    },
    /// More usage aggregates than [`crate::USAGE_AGGREGATES_MAX`].
    #[error("{count} usage aggregates exceed the limit of {max}")]
    TooMuchUsage {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The invoice would have more lines than [`crate::LINES_MAX`].
    #[error("the invoice would have more than {max} lines")]
    TooManyLines {
        /// The limit.
        max: usize,
    },
    /// A checked operation overflowed, or an amount needs more than the 28 significant digits a
    /// decimal holds exactly. Nothing wraps and nothing is silently rounded.
    #[error("arithmetic overflow while {context}")]
    Overflow {
        /// What was being computed.
        context: String,
    },
    /// A plan version that has already priced usage cannot be changed: add a new version.
    #[error("plan version {version} has priced usage and is immutable; add a new version instead")]
    VersionImmutable {
        /// The version number.
        version: u32,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn overflow(context: impl Into<String>) -> Error {
    Error::Overflow {
        context: context.into(),
    }
}
