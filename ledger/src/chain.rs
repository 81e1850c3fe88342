//! The canonical byte encoding of a usage record and its hash (documented in `docs/ledger.md`).

use sha2::{Digest, Sha256 as Sha256Hasher};

use crate::types::{NewUsageRecord, Sha256};

/// Domain-separation tag at the start of every encoded record.
pub const RECORD_DOMAIN_TAG: &[u8] = b"tally.usage.v1\0";

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: Sha256 = [0; 32];

/// Fields of the chain encoding that are not part of [`NewUsageRecord`].
#[derive(Debug, Clone, Copy)]
pub struct ChainFields<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Hash of the previous record.
    pub prev_hash: &'a Sha256,
    /// SHA-256 of the module's original bytes.
    pub module_sha256: &'a Sha256,
    /// Cost-table id of the module.
    pub cost_table: &'a str,
    /// Late flag.
    pub late: bool,
}

fn put_bytes_u16(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("length checked against its limit before hashing");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends the canonical encoding of a record to `out`.
///
/// Layout (all integers big-endian, fixed width):
/// tag `tally.usage.v1\0` · seq u64 · prev_hash \[32\] · tenant i64 · function i64 · module i64 ·
/// module_sha256 \[32\] · cost_table (u16 length + UTF-8) · idempotency_key (u16 length + UTF-8) ·
/// started_ms i64 · finished_ms i64 · outcome code u8 · exit_code (u8 0, or u8 1 + i32) ·
/// trap (u8 0, or u8 1 + u16 length + UTF-8) · ops u64 · memory_peak_bytes u64 ·
/// memory_ops_integral u128 · memory_byte_ns u128 · io_in_bytes u64 · io_out_bytes u64 ·
/// host_calls u64 · wall_ns u64 · late u8.
pub fn encode_into(out: &mut Vec<u8>, chain: &ChainFields<'_>, r: &NewUsageRecord) {
    out.extend_from_slice(RECORD_DOMAIN_TAG);
    out.extend_from_slice(&chain.seq.to_be_bytes());
    out.extend_from_slice(chain.prev_hash);
    out.extend_from_slice(&r.tenant.0.to_be_bytes());
    out.extend_from_slice(&r.function.0.to_be_bytes());
    out.extend_from_slice(&r.module.0.to_be_bytes());
    out.extend_from_slice(chain.module_sha256);
    put_bytes_u16(out, chain.cost_table.as_bytes());
    put_bytes_u16(out, r.idempotency_key.as_bytes());
    out.extend_from_slice(&r.started_ms.to_be_bytes());
    out.extend_from_slice(&r.finished_ms.to_be_bytes());
    out.push(r.outcome.kind.code());
    match r.outcome.exit_code {
        None => out.push(0),
        Some(code) => {
            out.push(1);
            out.extend_from_slice(&code.to_be_bytes());
        }
    }
    match &r.outcome.trap {
        None => out.push(0),
        Some(trap) => {
            out.push(1);
            put_bytes_u16(out, trap.as_bytes());
        }
    }
    let m = &r.meters;
    out.extend_from_slice(&m.ops.to_be_bytes());
    out.extend_from_slice(&m.memory_peak_bytes.to_be_bytes());
    out.extend_from_slice(&m.memory_ops_integral.to_be_bytes());
    out.extend_from_slice(&m.memory_byte_ns.to_be_bytes());
    out.extend_from_slice(&m.io_in_bytes.to_be_bytes());
    out.extend_from_slice(&m.io_out_bytes.to_be_bytes());
    out.extend_from_slice(&m.host_calls.to_be_bytes());
    out.extend_from_slice(&m.wall_ns.to_be_bytes());
    out.push(u8::from(chain.late));
}

/// The canonical encoding as a new vector.
pub fn encode(chain: &ChainFields<'_>, r: &NewUsageRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    encode_into(&mut out, chain, r);
    out
}

/// SHA-256 of the canonical encoding, reusing `scratch` to avoid an allocation per record.
pub fn hash_with(scratch: &mut Vec<u8>, chain: &ChainFields<'_>, r: &NewUsageRecord) -> Sha256 {
    scratch.clear();
    encode_into(scratch, chain, r);
    Sha256Hasher::digest(scratch.as_slice()).into()
}

/// SHA-256 of a byte string.
pub fn sha256(bytes: &[u8]) -> Sha256 {
    Sha256Hasher::digest(bytes).into()
}
