//! The append path of [`super::SqliteStore`]: a thread of its own holding
//! one rusqlite connection, handed a whole batch at a time.
//!
//! Why not sqlx here, as for reads: sqlx runs each statement, `BEGIN` and
//! `COMMIT` as a separate round trip to its connection's thread, and streams
//! rows back one by one — `perf stat` counted ~46 context switches per
//! 20-message commit, a third of storage's CPU on a one-core server. Here a
//! batch is one hand-off to this thread and one back, its statements are
//! prepared once and cached, and single-row inserts need no statement journal.
//! Its commits never checkpoint the WAL: a thread of its own does that
//! ([`super::checkpoint`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{self, CHECKPOINT_PAGES, Checkpointer, HARD_LIMIT_PAGES};
use crate::protocol::ChatMessage;
use crate::storage::{NewMessage, StorageError};

/// Batches waiting for the thread; the hub's writer has one in flight at a time.
const QUEUE: usize = 16;

type Reply = oneshot::Sender<Result<Vec<ChatMessage>, rusqlite::Error>>;

struct Job {
    batch: Vec<NewMessage>,
    reply: Reply,
}

/// The handle; the thread stops when it is dropped.
pub(super) struct Appender {
    jobs: mpsc::Sender<Job>,
}

impl Appender {
    /// Opens `path` (already created and migrated) on a new thread.
    pub(super) async fn open(path: &Path) -> Result<Self, StorageError> {
        let path = path.to_owned();
        let (jobs, mut jobs_rx) = mpsc::channel::<Job>(QUEUE);
        let (opened_tx, opened) = oneshot::channel();
        let checkpointer = Checkpointer::start(&path, checkpoint::IDLE_CHECKPOINT)?;
        std::thread::Builder::new()
            .name("sqlite-append".into())
            .spawn(move || {
                let mut conn = match open(&path) {
                    Ok(conn) => {
                        let _ = opened_tx.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(job) = jobs_rx.blocking_recv() {
                    let _ = job.reply.send(append(&mut conn, job.batch));
                    // After the reply: nothing here delays this commit's sends.
                    keep_wal_short(&conn, &checkpointer);
                }
            })
            .map_err(StorageError::Thread)?;
        opened.await.map_err(|_| StorageError::AppenderGone)??;
        Ok(Self { jobs })
    }

    /// Whether the thread is still taking batches.
    pub(super) fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Stores `batch` in one transaction; returns the stored messages, in batch order.
    pub(super) async fn append(
        &self,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<ChatMessage>, StorageError> {
        let (reply, stored) = oneshot::channel();
        self.jobs
            .send(Job { batch, reply })
            .await
            .map_err(|_| StorageError::AppenderGone)?;
        Ok(stored.await.map_err(|_| StorageError::AppenderGone)??)
    }
}

fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // Per connection, like the pool's: WAL is a property of the file (set
    // when the pool created it), the rest are not.
    let _mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
    conn.pragma_update(None, "synchronous", "full")?;
    conn.pragma_update(None, "foreign_keys", "on")?;
    // Replaces SQLite's automatic checkpoint in the commit (see `checkpoint`).
    conn.wal_hook(Some(note_wal_pages));
    Ok(conn)
}

thread_local! {
    /// Pages in the WAL after the append thread's last commit.
    static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

/// SQLite's hook after each commit, on the committing (append) thread.
fn note_wal_pages(_: &Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// Asks the checkpoint thread to copy the WAL into the database once it is
/// long, or does it here if it has grown far past that.
fn keep_wal_short(conn: &Connection, checkpointer: &Checkpointer) {
    let pages = WAL_PAGES.with(Cell::get);
    if pages >= HARD_LIMIT_PAGES {
        if let Err(e) = checkpoint::checkpoint(conn) {
            tracing::warn!(error = %e, pages, "WAL checkpoint on the append thread failed");
        }
    } else if pages >= CHECKPOINT_PAGES {
        checkpointer.nudge();
    }
}

/// One transaction: advance each room's counter by its share of the batch
/// (creating rooms as needed), then insert the messages with their seqs.
/// Dropping the transaction on an error rolls all of it back. The batch is
/// moved into the stored messages, not copied.
fn append(
    conn: &mut Connection,
    batch: Vec<NewMessage>,
) -> Result<Vec<ChatMessage>, rusqlite::Error> {
    // IMMEDIATE takes the write lock up front, so the counters read here
    // are the ones the messages are written under.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut shares: HashMap<&str, i64> = HashMap::new();
    for message in &batch {
        *shares.entry(message.room.as_str()).or_default() += 1;
    }
    // name -> (room id, last seq before this batch). Rooms reach here made
    // by `create_room` (a send needs a join), with their look-alike key; a
    // room first made here would get its key at the next start.
    let mut counters: HashMap<&str, (i64, i64)> = HashMap::with_capacity(shares.len());
    {
        let mut advance = tx.prepare_cached(
            "INSERT INTO rooms (name, created_at, last_active, last_seq) VALUES (?1, ?2, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET last_active = excluded.last_active, \
             last_seq = rooms.last_seq + excluded.last_seq RETURNING id, last_seq",
        )?;
        let ts = batch.first().map_or(0, |m| m.ts);
        for (room, n) in &shares {
            let (id, last_seq): (i64, i64) =
                advance.query_row(params![room, ts, n], |row| Ok((row.get(0)?, row.get(1)?)))?;
            counters.insert(room, (id, last_seq - n));
        }
    }
    let mut seqs = Vec::with_capacity(batch.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (room_id, seq, id, author, author_id, body, ts) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for message in &batch {
            let (room_id, last_seq) = counters
                .get_mut(message.room.as_str())
                .expect("every room of the batch was advanced above");
            *last_seq += 1;
            let seq = *last_seq;
            insert.execute(params![
                *room_id,
                seq,
                message.id,
                message.from.as_str(),
                message.author.to_stored(),
                message.text.as_str(),
                message.ts
            ])?;
            seqs.push(seq as u64);
        }
    }
    tx.commit()?;
    Ok(batch
        .into_iter()
        .zip(seqs)
        .map(|(message, seq)| ChatMessage {
            room: message.room.into_string(),
            id: message.id,
            seq,
            from: message.from.into_string(),
            author: Some(message.author.get()),
            text: message.text.into_string(),
            ts: message.ts,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageText, Nickname, RoomName};

    #[tokio::test]
    async fn a_stopped_thread_is_reported_not_waited_for() {
        // What a handle sees once its thread has ended (it only ends by panicking).
        let (jobs, thread_side) = mpsc::channel(1);
        drop(thread_side);
        let appender = Appender { jobs };
        assert!(!appender.is_running());
        let batch = vec![NewMessage {
            room: RoomName::parse("r").unwrap(),
            id: "1".into(),
            from: Nickname::parse("alice").unwrap(),
            author: crate::domain::AuthorId::random(),
            text: MessageText::parse("hi").unwrap(),
            ts: 1,
        }];
        assert!(matches!(
            appender.append(batch).await,
            Err(StorageError::AppenderGone)
        ));
    }

    #[test]
    fn a_wal_past_the_hard_limit_is_checkpointed_by_the_append_thread_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = checkpoint::fixture::never_checkpointing(&path);
        checkpoint::fixture::write_rows(&conn, 50);
        // The rows are in the WAL; the database file holds only the schema.
        let db_len = || std::fs::metadata(&path).unwrap().len();
        let before = db_len();
        let checkpointer = Checkpointer::start(&path, checkpoint::IDLE_CHECKPOINT).unwrap();
        // A short WAL: nothing to do.
        WAL_PAGES.with(|p| p.set(10));
        keep_wal_short(&conn, &checkpointer);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(db_len(), before);
        // Past the hard limit: copied before `keep_wal_short` returns (the
        // checkpoint thread was not asked to).
        WAL_PAGES.with(|p| p.set(HARD_LIMIT_PAGES));
        keep_wal_short(&conn, &checkpointer);
        assert!(db_len() > before + 50 * 4000, "{} → {}", before, db_len());
    }

    #[tokio::test]
    async fn a_database_that_cannot_be_opened_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        // Not created beforehand: the thread opens read-write, never creating.
        let missing = dir.path().join("missing.db");
        assert!(matches!(
            Appender::open(&missing).await,
            Err(StorageError::Sqlite(_))
        ));
    }
}
