//! Meters, instants and periods.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A quantity a plan can price. The names are the usage record's field names.
///
/// Every meter is a non-negative integer quantity summed over usage records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Meter {
    /// Number of invocations (one per usage record).
    Invocations,
    /// Cost units counted by the instrumented module (`__tally_ops`).
    Ops,
    /// Peak linear-memory size in bytes, summed over invocations.
    MemoryPeakBytes,
    /// Deterministic memory-time: bytes held × ops executed.
    MemoryOpsIntegral,
    /// Wall-clock memory-time in byte-seconds.
    MemoryByteSeconds,
    /// Bytes read by the guest (stdin, request body).
    IoInBytes,
    /// Bytes written by the guest (stdout, response body).
    IoOutBytes,
    /// Number of host calls made by the guest.
    HostCalls,
    /// Wall-clock time in nanoseconds.
    WallNs,
}

impl Meter {
    /// Every meter, in the order invoices list them.
    pub const ALL: [Meter; 9] = [
        Meter::Invocations,
        Meter::Ops,
        Meter::MemoryPeakBytes,
        Meter::MemoryOpsIntegral,
        Meter::MemoryByteSeconds,
        Meter::IoInBytes,
        Meter::IoOutBytes,
        Meter::HostCalls,
        Meter::WallNs,
    ];

    /// The snake_case name used in plans, usage files and usage records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Meter::Invocations => "invocations",
            Meter::Ops => "ops",
            Meter::MemoryPeakBytes => "memory_peak_bytes",
            Meter::MemoryOpsIntegral => "memory_ops_integral",
            Meter::MemoryByteSeconds => "memory_byte_seconds",
            Meter::IoInBytes => "io_in_bytes",
            Meter::IoOutBytes => "io_out_bytes",
            Meter::HostCalls => "host_calls",
            Meter::WallNs => "wall_ns",
        }
    }

    /// The name of one raw unit of this meter, used when a plan names no unit.
    pub const fn base_unit(self) -> &'static str {
        match self {
            Meter::Invocations => "invocation",
            Meter::Ops => "op",
            Meter::MemoryPeakBytes | Meter::IoInBytes | Meter::IoOutBytes => "byte",
            Meter::MemoryOpsIntegral => "byte-op",
            Meter::MemoryByteSeconds => "byte-second",
            Meter::HostCalls => "host call",
            Meter::WallNs => "ns",
        }
    }
}

impl fmt::Display for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of [`Meter::from_str`]: the name is not one of [`Meter::ALL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownMeter(pub String);

impl fmt::Display for UnknownMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown meter \"{}\"; expected one of ", self.0)?;
        for (index, meter) in Meter::ALL.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            f.write_str(meter.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownMeter {}

impl FromStr for Meter {
    type Err = UnknownMeter;

    fn from_str(name: &str) -> Result<Meter, UnknownMeter> {
        Meter::ALL
            .iter()
            .copied()
            .find(|meter| meter.as_str() == name)
            .ok_or_else(|| UnknownMeter(name.to_owned()))
    }
}

/// An instant as integer milliseconds since the Unix epoch (UTC). The crate has no clock:
/// callers supply every instant.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A half-open billing period `[start, end)`. Its label (e.g. "2026-11") is the caller's business.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// First instant inside the period.
    #[serde(rename = "start_ms")]
    pub start: UnixMillis,
    /// First instant after the period.
    #[serde(rename = "end_ms")]
    pub end: UnixMillis,
}

impl Period {
    /// A period from `start_ms` (inclusive) to `end_ms` (exclusive); not validated here,
    /// [`crate::price`] rejects an empty period.
    pub const fn new(start_ms: i64, end_ms: i64) -> Period {
        Period {
            start: UnixMillis(start_ms),
            end: UnixMillis(end_ms),
        }
    }

    /// Whether `at` falls inside the period.
    pub fn contains(&self, at: UnixMillis) -> bool {
        self.start <= at && at < self.end
    }
}
