//! WAL checkpoints off the append path, and the WAL file cut back once a
//! burst of writes is over.
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
//!
//! **Shrinking the file.** Starting the WAL over reuses the file from its
//! beginning but never makes it smaller: after a burst that outran the
//! checkpoints (a flood of created rooms grows it ~14 KB a room while
//! readers keep it from starting over), the file would keep its largest
//! size. So once the WAL is copied back and its file is larger than
//! [`SHRINK_ABOVE_BYTES`], this thread watches it, and when nothing has
//! written to it for [`QUIET`], cuts it to nothing with a `TRUNCATE`
//! checkpoint run without a busy handler: if a writer or a reader of an
//! older snapshot is there, it gives up at once instead of waiting (and
//! tries again after the next quiet interval), and a writer arriving during
//! it waits only for the truncation of an already copied WAL. Whether the
//! WAL was written is read from its file's modification time and size: a
//! `stat`, no checkpoint, so watching costs nothing while writes go on.
//!
//! Not SQLite's `journal_size_limit`: it truncates the file in the first
//! commit after each restart of the WAL, that is on the append thread, and
//! under load the WAL runs to [`CHECKPOINT_PAGES`] (~32 MiB) between
//! restarts. A limit below that would cut and regrow the file every cycle
//! (commits extending the file pay for it in their fsyncs); a limit above it
//! would leave tens of MB after a flood.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

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
/// A WAL file larger than this is cut back once nothing writes to it for
/// [`QUIET`] (~1 MiB: 256 pages; between two restarts a quiet server's
/// WAL stays far below it, a flood of created rooms goes far past it).
pub(super) const SHRINK_ABOVE_BYTES: u64 = 1 << 20;
/// How long the WAL must go unwritten before its file is cut back.
pub(super) const QUIET: Duration = Duration::from_secs(1);
/// Quiet intervals in a row the thread tries a cut that readers keep
/// refusing, before it leaves the file to the next checkpoint.
const SHRINK_TRIES: u32 = 30;
/// The connection's busy timeout, but while it tries to cut the WAL.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Copying pages into the database file is followed by its fsync.
        conn.pragma_update(None, "synchronous", "full")?;
        // A nudge while a checkpoint runs is kept (one is enough); more are dropped.
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        let wal = wal_path(path);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                // Set while the WAL file is large and copied back: how it
                // looked then, to tell whether anything wrote to it since.
                let mut watch: Option<Watch> = None;
                loop {
                    let wait = if watch.is_some() { QUIET } else { idle };
                    watch = match nudged.recv_timeout(wait) {
                        Ok(()) => catch_up(&conn).then(|| Watch::large(&wal)).flatten(),
                        Err(mpsc::RecvTimeoutError::Timeout) => match watch {
                            Some(watch) => watch.quiet(&conn, &wal),
                            None => catch_up(&conn).then(|| Watch::large(&wal)).flatten(),
                        },
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    };
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

/// Checkpoints until the WAL is copied, or for [`ROUNDS`] rounds. Returns
/// whether it is all copied.
fn catch_up(conn: &Connection) -> bool {
    for _ in 0..ROUNDS {
        match checkpoint(conn) {
            Ok((log, copied)) if copied < log => continue,
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed");
                return false;
            }
        }
    }
    false
}

fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// A WAL file over [`SHRINK_ABOVE_BYTES`], as it was when last seen.
struct Watch {
    seen: (SystemTime, u64),
    tries: u32,
}

impl Watch {
    /// A watch on the WAL file if it is large.
    fn large(wal: &Path) -> Option<Self> {
        let seen = look(wal)?;
        (seen.1 > SHRINK_ABOVE_BYTES).then_some(Self { seen, tries: 0 })
    }

    /// After [`QUIET`]: cuts the file if nothing wrote to it meanwhile.
    /// Returns the watch to keep, if any: none once cut, none while writes
    /// go on (the next checkpoint looks again), the same while readers
    /// refuse the cut (for [`SHRINK_TRIES`] intervals).
    fn quiet(self, conn: &Connection, wal: &Path) -> Option<Self> {
        if look(wal) != Some(self.seen) {
            return None;
        }
        match truncate(conn) {
            Ok(true) => {
                tracing::debug!(bytes = self.seen.1, "WAL file cut back");
                None
            }
            Ok(false) if self.tries + 1 < SHRINK_TRIES => Some(Self {
                seen: look(wal)?,
                tries: self.tries + 1,
            }),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cutting the WAL file back failed");
                None
            }
        }
    }
}

/// The WAL file's modification time and size (none if it is missing).
fn look(wal: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(wal).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Copies what is left of the WAL (normally nothing: it was copied back
/// before the quiet interval), then cuts its file to nothing with a
/// `TRUNCATE` checkpoint that never waits: without a busy handler it gives
/// up at once if a writer holds the WAL or a reader an older snapshot.
/// Returns whether the file was cut.
fn truncate(conn: &Connection) -> rusqlite::Result<bool> {
    if !catch_up(conn) {
        return Ok(false);
    }
    conn.busy_timeout(Duration::ZERO)?;
    let cut = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        row.get::<_, i64>(0)
    });
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(cut? == 0)
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

    #[test]
    fn a_large_wal_file_is_cut_back_once_nothing_writes_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shrink.db");
        let conn = never_checkpointing(&path);
        let wal = wal_path(&path);
        let wal_len = || std::fs::metadata(&wal).unwrap().len();
        // ~2 MB of WAL, over the threshold; the writer stays open.
        write_rows(&conn, 500);
        assert!(wal_len() > SHRINK_ABOVE_BYTES, "{}", wal_len());
        let checkpointer = Checkpointer::start(&path, Duration::from_millis(50)).unwrap();
        for _ in 0..200 {
            if wal_len() == 0 {
                // Still a working database: the next write grows it again.
                write_rows(&conn, 1);
                assert!(wal_len() > 0);
                drop(checkpointer);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the WAL file kept {} bytes", wal_len());
    }

    #[test]
    fn a_wal_file_written_to_all_along_is_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let conn = never_checkpointing(&path);
        let wal = wal_path(&path);
        let wal_len = || std::fs::metadata(&wal).unwrap().len();
        write_rows(&conn, 500);
        let checkpointer = Checkpointer::start(&path, Duration::from_millis(50)).unwrap();
        // A write every 100 ms: never quiet for a second.
        for _ in 0..30 {
            write_rows(&conn, 1);
            assert!(wal_len() > SHRINK_ABOVE_BYTES, "cut while written to");
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(checkpointer);
    }
}
