//! WAL checkpoints off the append path.
//!
//! SQLite's default checkpoints the WAL into the database file inside the
//! commit that takes it past 1,000 pages, so one commit in tens pays for
//! copying every page the others wrote, and its `sent` and deliveries wait:
//! under load that was the whole tail of commit time (p99 4.7–5.9 ms
//! instead of 1.3–2.1 ms at 5,000 msg/s over 1,000 rooms, docs/performance.md).
//! Here the append connection only notes how large the WAL has grown, and
//! this thread, with a connection of its own, checkpoints while the appends
//! go on. A `PASSIVE` checkpoint never blocks the writer; SQLite starts the
//! WAL over at the first commit after one that caught up, so rounds repeat
//! until nothing is left to copy. If the WAL still grows past
//! [`HARD_LIMIT_PAGES`] (this thread cannot keep up, or is gone), the append
//! connection checkpoints itself, as SQLite would have.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::storage::StorageError;

/// WAL pages after which a checkpoint is started: ~32 MiB of WAL.
///
/// Eight times SQLite's default, because a checkpoint writes each page once
/// however many versions of it the WAL holds. With messages spread over many
/// rooms, each commit rewrites the tail page of every room it touches; over
/// 1,000 frames few pages repeat, over 8,000 most do. Measured with 1,000
/// rooms at 5,000 msg/s: the checkpoint thread's writes 218 → 50 MB and its
/// CPU 0.37 → 0.08 s per 10 s, ~5 % of the server's CPU per delivery
/// (docs/performance.md, eighth session).
pub(super) const CHECKPOINT_PAGES: i32 = 8000;
/// WAL pages after which the append connection checkpoints by itself (~128 MiB).
pub(super) const HARD_LIMIT_PAGES: i32 = 4 * CHECKPOINT_PAGES;
/// Most checkpoint rounds per nudge: each copies what the appends wrote
/// during the previous one, so they shrink fast; a writer faster than the
/// copying is left to the hard limit.
const ROUNDS: usize = 8;

/// The handle; the thread stops when it is dropped.
pub(super) struct Checkpointer {
    nudge: mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread on `path` (already created, in WAL mode).
    pub(super) fn start(path: &Path) -> Result<Self, StorageError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // Copying pages into the database file is followed by its fsync.
        conn.pragma_update(None, "synchronous", "full")?;
        // A nudge while a checkpoint runs is kept (one is enough); more are dropped.
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while nudged.recv().is_ok() {
                    catch_up(&conn);
                }
            })
            .map_err(StorageError::Thread)?;
        Ok(Self { nudge })
    }

    /// Asks for a checkpoint soon; never waits.
    pub(super) fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }
}

/// Checkpoints until the WAL is copied, or for [`ROUNDS`] rounds.
fn catch_up(conn: &Connection) {
    for _ in 0..ROUNDS {
        match checkpoint(conn) {
            Ok((log, copied)) if copied < log => continue,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed");
                return;
            }
        }
    }
}

/// One `PASSIVE` checkpoint: (frames in the WAL, frames copied).
pub(super) fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}
