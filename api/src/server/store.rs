//! Files under the data directory: module bytes and idempotent replies.
//!
//! * `modules/<sha256 of the original>.wasm`: the uploaded bytes (content-addressed).
//! * `instrumented/<sha256 of the instrumented bytes>.wasm` and `.meter.json`: what runs, and
//!   the meter map needed to make a trap's count exact. The ledger stores the relative path.
//! * `replies/<tenant>/<sha256 of the idempotency key>`: the first answer to an invocation
//!   (status, usage id, body), so a retry gets the same body.
//!
//! Module files are written (and synced) before the ledger row that names them.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tally_instrument::MeterMap;
use tally_ledger::TenantId;

use super::error::ApiError;

/// The data directory's file store.
pub struct Store {
    dir: PathBuf,
}

/// The first answer to an invocation with an idempotency key.
pub struct Reply {
    /// The function invoked.
    pub function: String,
    /// The usage record.
    pub usage_id: u64,
    /// HTTP status.
    pub status: u16,
    /// Response body.
    pub body: Vec<u8>,
}

/// Writes a file readable only by the owner (0600 on Unix).
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(random)));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        if sync {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl Store {
    /// Creates the directories.
    pub fn open(dir: PathBuf) -> anyhow::Result<Store> {
        for sub in ["modules", "instrumented", "replies"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.join(sub).display()))?;
        }
        Ok(Store { dir })
    }

    fn original_path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.dir
            .join("modules")
            .join(format!("{}.wasm", hex::encode(sha256)))
    }

    /// Stores the original bytes.
    pub fn put_original(&self, sha256: &[u8; 32], bytes: &[u8]) -> Result<(), ApiError> {
        let path = self.original_path(sha256);
        if !path.exists() {
            write_atomic(&path, bytes, true)?;
        }
        Ok(())
    }

    /// The original bytes.
    pub fn original(&self, sha256: &[u8; 32]) -> Result<Vec<u8>, ApiError> {
        Ok(std::fs::read(self.original_path(sha256))?)
    }

    /// Stores instrumented bytes and their meter map; returns the path relative to the data
    /// directory, as the ledger stores it.
    pub fn put_instrumented(&self, wasm: &[u8], meter_map: &MeterMap) -> Result<String, ApiError> {
        let name = hex::encode(Sha256::digest(wasm));
        let relative = format!("instrumented/{name}.wasm");
        let path = self.dir.join(&relative);
        if !path.exists() {
            let map = serde_json::to_vec(meter_map)
                .map_err(|e| ApiError::Internal(format!("meter map: {e}")))?;
            write_atomic(&path.with_extension("meter.json"), &map, true)?;
            write_atomic(&path, wasm, true)?;
        }
        Ok(relative)
    }

    fn resolve(&self, relative: &str) -> PathBuf {
        let path = Path::new(relative);
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.dir.join(path)
        }
    }

    /// Instrumented bytes by stored path.
    pub fn instrumented(&self, relative: &str) -> Result<Vec<u8>, ApiError> {
        Ok(std::fs::read(self.resolve(relative))?)
    }

    /// The meter map stored beside instrumented bytes.
    pub fn meter_map(&self, relative: &str) -> Result<MeterMap, ApiError> {
        let bytes = std::fs::read(self.resolve(relative).with_extension("meter.json"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Internal(format!("stored meter map for {relative}: {e}")))
    }

    fn reply_path(&self, tenant: TenantId, key: &str) -> PathBuf {
        self.dir
            .join("replies")
            .join(tenant.0.to_string())
            .join(hex::encode(Sha256::digest(key.as_bytes())))
    }

    /// Records the first answer to an idempotent invocation (not synced: a lost reply is
    /// answered from the usage record, without the body).
    pub fn put_reply(&self, tenant: TenantId, key: &str, reply: &Reply) -> Result<(), ApiError> {
        let path = self.reply_path(tenant, key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut bytes =
            format!("{}\n{}\n{}\n", reply.usage_id, reply.status, reply.function).into_bytes();
        bytes.extend_from_slice(&reply.body);
        write_atomic(&path, &bytes, false)?;
        Ok(())
    }

    /// The first answer to an idempotent invocation, if recorded.
    pub fn reply(&self, tenant: TenantId, key: &str) -> Result<Option<Reply>, ApiError> {
        let bytes = match std::fs::read(self.reply_path(tenant, key)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut parts = bytes.splitn(4, |b| *b == b'\n');
        let mut field = || {
            parts
                .next()
                .and_then(|p| std::str::from_utf8(p).ok())
                .map(str::to_owned)
        };
        let (Some(usage_id), Some(status), Some(function)) = (field(), field(), field()) else {
            return Ok(None);
        };
        let header_len = usage_id.len() + status.len() + function.len() + 3;
        let (Ok(usage_id), Ok(status)) = (usage_id.parse(), status.parse()) else {
            return Ok(None);
        };
        Ok(Some(Reply {
            function,
            usage_id,
            status,
            body: bytes.get(header_len..).unwrap_or_default().to_vec(),
        }))
    }
}
