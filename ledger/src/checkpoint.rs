//! WAL checkpoints off the writer thread.
//!
//! The writer connection runs with `wal_autocheckpoint=0`: SQLite's automatic checkpoint would
//! otherwise run inside the commit that crosses the threshold, on the writer thread, and fsync
//! the WAL and the database there (even with `synchronous=NORMAL`). Instead a checkpointer thread
//! with its own connection runs `PRAGMA wal_checkpoint(PASSIVE)` every
//! [`CHECKPOINT_INTERVAL_MS`]: it copies committed pages into the database and fsyncs beside the
//! writer, never blocking it.
//!
//! A passive checkpoint can only copy what was committed when it started, so under continuous
//! appends it never catches up with the end of the WAL, and SQLite only rewinds the WAL to its
//! start when a write transaction begins with every frame copied. Once the WAL holds more than
//! [`WAL_RESTART_FRAMES`] frames, the checkpointer therefore asks the writer, between two
//! batches, to run one passive checkpoint itself: nothing is appended meanwhile, so it copies the
//! few frames committed since the last background checkpoint, and the writer's next transaction
//! starts writing at the beginning of the WAL again (its file is reused, and cut back to
//! `journal_size_limit` if it grew past it). That pause costs the writer two fsyncs every
//! `WAL_RESTART_FRAMES` frames.
//!
//! A reader still reading an older snapshot keeps frames from being copied (and the WAL from
//! being rewound) until it finishes; the WAL then grows past the limit and is rewound at the next
//! attempt after the reader is gone. Errors of a checkpoint (`SQLITE_BUSY`, I/O) are counted and
//! retried on the next tick; they never affect appends, which only need the WAL.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::writer::WriterHandle;

/// Milliseconds between background checkpoints.
pub const CHECKPOINT_INTERVAL_MS: u64 = 20;
/// WAL frames (pages) beyond which the writer is asked to finish a checkpoint so that the WAL
/// is rewound (16 MiB with 4 KiB pages).
pub const WAL_RESTART_FRAMES: i64 = 4_096;
/// Bytes the WAL file is cut back to when it is rewound (`PRAGMA journal_size_limit`).
pub const WAL_FILE_BYTES_LIMIT: i64 = 64 << 20;

const _: () = assert!(WAL_RESTART_FRAMES * 4096 < WAL_FILE_BYTES_LIMIT);

/// Counters of the checkpointer, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// Background passive checkpoints run.
    pub checkpoints: AtomicU64,
    /// Checkpoints run by the writer to rewind the WAL.
    pub writer_checkpoints: AtomicU64,
    /// Checkpoints that failed (retried on the next tick).
    pub errors: AtomicU64,
    /// Frames in the WAL at the last checkpoint.
    pub wal_frames: AtomicU64,
}

/// The checkpointer thread; stops (and is joined) on drop.
pub(crate) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<CheckpointStats>,
}

/// Runs `PRAGMA wal_checkpoint(PASSIVE)`: `(busy, frames in the WAL, frames copied)`.
pub(crate) fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<(bool, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(0)? != 0, row.get(1)?, row.get(2)?))
    })
}

impl Checkpointer {
    pub fn spawn(path: &Path, writer: WriterHandle) -> Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Only the checkpoint itself: no automatic checkpoints (it never writes anyway).
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.busy_timeout(std::time::Duration::from_millis(0))?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stats = Arc::new(CheckpointStats::default());
        let thread = {
            let stop = Arc::clone(&stop);
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name("tally-ledger-checkpoint".into())
                .spawn(move || run(&conn, &writer, &stop, &stats))
                .map_err(|source| Error::Io {
                    what: "spawning the ledger checkpoint thread".into(),
                    source,
                })?
        };
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
            stats,
        })
    }

    pub fn stats(&self) -> &CheckpointStats {
        &self.stats
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self
            .stop
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.stop.1.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    conn: &Connection,
    writer: &WriterHandle,
    stop: &(Mutex<bool>, Condvar),
    stats: &CheckpointStats,
) {
    let interval = std::time::Duration::from_millis(CHECKPOINT_INTERVAL_MS);
    loop {
        {
            let stopped = stop
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (stopped, _) = stop
                .1
                .wait_timeout_while(stopped, interval, |stopped| !*stopped)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *stopped {
                return;
            }
        }
        let frames = match passive_checkpoint(conn) {
            Ok((_, frames, _)) => frames,
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        stats
            .wal_frames
            .store(frames.max(0) as u64, Ordering::Relaxed);
        if frames >= WAL_RESTART_FRAMES {
            let result = writer.run(|state| Ok(passive_checkpoint(&state.conn)?));
            match result {
                Ok(_) => stats.writer_checkpoints.fetch_add(1, Ordering::Relaxed),
                Err(Error::WriterStopped) => return,
                Err(_) => stats.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}
