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
/// (docs/performance.md, "What each optimisation bought").
pub(super) const CHECKPOINT_PAGES: i32 = 8000;
/// WAL pages after which the append connection checkpoints by itself (~128 MiB).
pub(super) const HARD_LIMIT_PAGES: i32 = 4 * CHECKPOINT_PAGES;
/// How long the thread waits for a nudge before checkpointing anyway. Only
/// appends nudge it; this copies back what other writes left in the WAL
/// (rooms created through the read pool, which never checkpoints) and
/// whatever a quiet server's last appends left.
pub(super) const IDLE_CHECKPOINT: Duration = Duration::from_secs(30);
/// Most checkpoint rounds per nudge: each copies what the appends wrote
/// during the previous one, so they shrink fast; a writer faster than the
/// copying is left to the hard limit.
const ROUNDS: usize = 8;

/// The handle; the thread stops when every clone of it is dropped.
#[derive(Clone)]
pub(super) struct Checkpointer {
    nudge: mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread on `path` (already created, in WAL mode); it
    /// checkpoints when nudged, and after `idle` without a nudge.
    pub(super) fn start(path: &Path, idle: Duration) -> Result<Self, StorageError> {
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
                loop {
                    match nudged.recv_timeout(idle) {
                        Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => catch_up(&conn),
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(super::error::no_thread)?;
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

/// Test fixtures: a database written by a connection that never checkpoints.
#[cfg(test)]
pub(super) mod fixture {
    use std::path::Path;

    use rusqlite::Connection;

    /// Opens `path` in WAL mode with automatic checkpoints off, with an empty table `t`.
    pub fn never_checkpointing(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        let _: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
            .unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        conn
    }

    /// Adds `rows` rows of 4,000 bytes to `t`: they stay in the WAL.
    pub fn write_rows(conn: &Connection, rows: usize) {
        for _ in 0..rows {
            conn.execute("INSERT INTO t VALUES (zeroblob(4000))", [])
                .unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{never_checkpointing, write_rows};
    use super::*;

    #[test]
    fn what_other_writers_leave_in_the_wal_is_copied_back_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idle.db");
        // A writer that never checkpoints, like the read pool creating rooms.
        let conn = never_checkpointing(&path);
        let db_len = || std::fs::metadata(&path).unwrap().len();
        // Written before the thread starts: started first, on a loaded
        // machine it could copy part of them back before `before` is read.
        write_rows(&conn, 50);
        let before = db_len();
        let checkpointer = Checkpointer::start(&path, Duration::from_millis(50)).unwrap();
        // Never nudged: the rows reach the database file all the same.
        for _ in 0..100 {
            if db_len() > before + 50 * 4000 {
                drop(checkpointer);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the WAL was not copied back: {} → {}", before, db_len());
    }
}
