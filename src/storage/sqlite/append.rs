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
use super::error;
use crate::domain::Message;
use crate::protocol::NONCE_WINDOW_MS;
use crate::storage::{Appended, NewMessage, Receipt, SendKey, StorageError};

/// Batches waiting for the thread; the hub's writer has one in flight at a time.
const QUEUE: usize = 16;

type Reply = oneshot::Sender<Result<Vec<Appended>, rusqlite::Error>>;

struct Job {
    batch: Vec<NewMessage>,
    reply: Reply,
}

/// The handle; the thread stops when it is dropped.
pub(super) struct Appender {
    jobs: mpsc::Sender<Job>,
    /// For writes made elsewhere that leave much in the WAL (room removals).
    checkpointer: Option<Checkpointer>,
}

impl Appender {
    /// Opens `path` (already created and migrated) on a new thread.
    pub(super) async fn open(path: &Path) -> Result<Self, StorageError> {
        let path = path.to_owned();
        let (jobs, mut jobs_rx) = mpsc::channel::<Job>(QUEUE);
        let (opened_tx, opened) = oneshot::channel();
        let checkpointer = Checkpointer::start(&path, checkpoint::IDLE_CHECKPOINT)?;
        let nudger = checkpointer.clone();
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
                    let _ = job
                        .reply
                        .send(append(&mut conn, job.batch, NONCE_WINDOW_MS));
                    // After the reply: nothing here delays this commit's sends.
                    keep_wal_short(&conn, &checkpointer);
                }
            })
            .map_err(error::no_thread)?;
        opened.await.map_err(|_| error::worker_gone())??;
        Ok(Self {
            jobs,
            checkpointer: Some(nudger),
        })
    }

    /// Asks the checkpoint thread to copy the WAL back soon (never waits).
    pub(super) fn nudge_checkpoint(&self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.nudge();
        }
    }

    /// Whether the thread is still taking batches.
    pub(super) fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Stores `batch` in one transaction; returns the stored messages, in batch order.
    pub(super) async fn append(
        &self,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>, StorageError> {
        let (reply, stored) = oneshot::channel();
        self.jobs
            .send(Job { batch, reply })
            .await
            .map_err(|_| error::worker_gone())?;
        Ok(stored.await.map_err(|_| error::worker_gone())??)
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

/// What a message of a batch turned out to be, before the batch is stored.
#[derive(Clone, Copy)]
enum Kind {
    /// To be stored.
    New,
    /// Its key was stored before: the receipt at this index of `earlier`.
    StoredBefore(usize),
    /// Its key appears earlier in the batch, at this index.
    CopyOf(usize),
}

/// One transaction: sort out resends (see [`MessageStore::append`]), advance
/// each room's counter by its share of the rest (creating rooms as needed),
/// then insert those messages with their seqs and their keys, and delete
/// as many expired keys as twice the keys added. Dropping the
/// transaction on an error rolls all of it back. The batch is moved into the
/// stored messages, not copied.
///
/// [`MessageStore::append`]: crate::storage::MessageStore::append
fn append(
    conn: &mut Connection,
    batch: Vec<NewMessage>,
    window_ms: i64,
) -> Result<Vec<Appended>, rusqlite::Error> {
    // IMMEDIATE takes the write lock up front, so the counters and keys read
    // here are the ones the messages are written under.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (kinds, earlier) = sort_out_resends(&tx, &batch, window_ms)?;
    let mut shares: HashMap<&str, i64> = HashMap::new();
    for (message, kind) in batch.iter().zip(&kinds) {
        if let Kind::New = kind {
            *shares.entry(message.room.as_str()).or_default() += 1;
        }
    }
    // name -> (room id, last seq before this batch). Rooms reach here made
    // by `create_room` (a send needs a join), with their look-alike key; a
    // room first made here would get its key at the next start.
    let mut counters: HashMap<&str, (i64, i64)> = HashMap::with_capacity(shares.len());
    {
        let mut advance = tx.prepare_cached(
            "INSERT INTO rooms (name, created_at, last_active, last_message, last_seq) \
             VALUES (?1, ?2, ?2, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET last_active = excluded.last_active, \
             last_message = excluded.last_message, \
             last_seq = rooms.last_seq + excluded.last_seq RETURNING id, last_seq",
        )?;
        let ts = batch.first().map_or(0, |m| m.ts);
        for (room, n) in &shares {
            let (id, last_seq): (i64, i64) =
                advance.query_row(params![room, ts, n], |row| Ok((row.get(0)?, row.get(1)?)))?;
            counters.insert(room, (id, last_seq - n));
        }
    }
    // The seq of each message stored (0 for a resend).
    let mut seqs = Vec::with_capacity(batch.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (room_id, seq, id, author, author_id, body, ts) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        // A row past the window may still be there (pruning lags): it is replaced.
        let mut remember = tx.prepare_cached(
            "INSERT INTO send_nonces (sender, nonce, room_id, seq, message_id, ts) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (sender, nonce) DO UPDATE SET \
             room_id = excluded.room_id, seq = excluded.seq, \
             message_id = excluded.message_id, ts = excluded.ts",
        )?;
        for (message, kind) in batch.iter().zip(&kinds) {
            let Kind::New = kind else {
                seqs.push(0);
                continue;
            };
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
            if let Some(key) = &message.key {
                remember.execute(params![
                    key.sender,
                    key.nonce.as_str(),
                    *room_id,
                    seq,
                    message.id,
                    message.ts
                ])?;
            }
            seqs.push(seq as u64);
        }
    }
    let keys = batch.iter().filter(|m| m.key.is_some()).count();
    if keys > 0 {
        let now = batch.first().map_or(0, |m| m.ts);
        prune(&tx, now - window_ms, keys * PRUNE_PER_KEY)?;
    }
    tx.commit()?;
    let mut outcomes: Vec<Appended> = Vec::with_capacity(batch.len());
    for ((message, seq), kind) in batch.into_iter().zip(seqs).zip(kinds) {
        let outcome = match kind {
            Kind::New => Appended::Stored(Message {
                room: message.room,
                id: message.id,
                seq,
                from: message.from.into_string(),
                author: Some(message.author),
                text: message.text.into_string(),
                at: message.ts,
            }),
            Kind::StoredBefore(i) => Appended::Duplicate(earlier[i].clone()),
            Kind::CopyOf(first) => Appended::Duplicate(match &outcomes[first] {
                Appended::Stored(m) => Receipt {
                    room: m.room.as_str().to_owned(),
                    id: m.id.clone(),
                    seq: m.seq,
                    ts: m.at,
                },
                Appended::Duplicate(receipt) => receipt.clone(),
            }),
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Keys looked up by one statement. A batch's keys are looked up this many at
/// a time — padded with repeats of the last, so there is one statement to
/// prepare and cache — and a commit of up to 32 sends costs one query.
const LOOKUP_CHUNK: usize = 32;

/// The receipts of up to [`LOOKUP_CHUNK`] keys: `?1` is the window's start,
/// the (sender, nonce) pairs follow. The pairs drive a CROSS JOIN (which
/// SQLite never reorders), so each is one primary-key search; a row-value
/// `IN (VALUES …)` or a free join order let the planner scan the whole table.
fn lookup_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let pairs: Vec<String> = (0..LOOKUP_CHUNK)
            .map(|i| format!("(?{}, ?{})", 2 + 2 * i, 3 + 2 * i))
            .collect();
        format!(
            "SELECT n.sender, n.nonce, r.name, n.message_id, n.seq, n.ts \
             FROM (VALUES {}) AS k CROSS JOIN send_nonces n \
             ON n.sender = k.column1 AND n.nonce = k.column2 \
             JOIN rooms r ON r.id = n.room_id WHERE +n.ts > ?1",
            pairs.join(", ")
        )
    })
}

/// Which messages of `batch` are resends: of a key stored within the window
/// (looked up [`LOOKUP_CHUNK`] keys per query, inside the batch's own
/// transaction — no round trip of its own), or of a key earlier in the
/// batch. Returns each message's kind and the receipts found.
fn sort_out_resends(
    tx: &rusqlite::Transaction<'_>,
    batch: &[NewMessage],
    window_ms: i64,
) -> Result<(Vec<Kind>, Vec<Receipt>), rusqlite::Error> {
    let mut kinds = vec![Kind::New; batch.len()];
    // The first message of each distinct key, in batch order.
    let mut firsts: Vec<(usize, &SendKey)> = Vec::new();
    let mut first_of: HashMap<&SendKey, usize> = HashMap::new();
    for (i, message) in batch.iter().enumerate() {
        let Some(key) = &message.key else { continue };
        match first_of.get(key) {
            Some(&first) => kinds[i] = Kind::CopyOf(first),
            None => {
                first_of.insert(key, i);
                firsts.push((i, key));
            }
        }
    }
    let mut earlier = Vec::new();
    if firsts.is_empty() {
        return Ok((kinds, earlier));
    }
    // The writer stamps a whole batch with one time.
    let since = batch[0].ts - window_ms;
    let mut lookup = tx.prepare_cached(lookup_sql())?;
    for chunk in firsts.chunks(LOOKUP_CHUNK) {
        let nonces: Vec<&str> = chunk.iter().map(|(_, key)| key.nonce.as_str()).collect();
        let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(1 + 2 * LOOKUP_CHUNK);
        values.push(&since);
        for n in 0..LOOKUP_CHUNK {
            let last = n.min(chunk.len() - 1);
            values.push(&chunk[last].1.sender);
            values.push(&nonces[last]);
        }
        let mut rows = lookup.query(values.as_slice())?;
        while let Some(row) = rows.next()? {
            let (sender, nonce): (String, String) = (row.get(0)?, row.get(1)?);
            let Some(&(i, _)) = chunk
                .iter()
                .find(|(_, key)| key.sender == sender && key.nonce.as_str() == nonce)
            else {
                continue;
            };
            kinds[i] = Kind::StoredBefore(earlier.len());
            earlier.push(Receipt {
                room: row.get(2)?,
                id: row.get(3)?,
                seq: row.get::<_, i64>(4)? as u64,
                ts: row.get(5)?,
            });
        }
    }
    Ok((kinds, earlier))
}

/// Expired keys deleted per key stored, in the same transaction: twice the
/// rate they are added, so the table stays about one window's worth of keys
/// and the cost is spread over every commit — no periodic sweep, no extra
/// commit (and fsync) of its own, no pause once a minute under load.
const PRUNE_PER_KEY: usize = 2;

/// The oldest expired keys, found through the ts index, deleted by primary key.
const PRUNE_SQL: &str = "DELETE FROM send_nonces WHERE (sender, nonce) IN \
     (SELECT sender, nonce FROM send_nonces WHERE ts < ?1 ORDER BY ts LIMIT ?2)";

/// Deletes up to `limit` keys stored before `cutoff` (Unix ms), oldest
/// first; returns how many. Lookups ignore such keys anyway: this only keeps
/// the table from growing.
fn prune(conn: &Connection, cutoff: i64, limit: usize) -> Result<usize, rusqlite::Error> {
    conn.prepare_cached(PRUNE_SQL)?
        .execute(params![cutoff, limit as i64])
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
        let appender = Appender {
            jobs,
            checkpointer: None,
        };
        assert!(!appender.is_running());
        let batch = vec![NewMessage {
            room: RoomName::parse("r").unwrap(),
            id: "1".into(),
            from: Nickname::parse("alice").unwrap(),
            author: crate::domain::AuthorId::random(),
            text: MessageText::parse("hi").unwrap(),
            ts: 1,
            key: None,
        }];
        assert!(matches!(
            appender.append(batch).await,
            Err(StorageError::Unavailable { .. })
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
            Err(StorageError::Unavailable { .. })
        ));
    }

    /// A database migrated like the server's, and the append thread's kind
    /// of connection to it.
    async fn migrated(dir: &tempfile::TempDir) -> Connection {
        let path = dir.path().join("a.db");
        let url = format!("sqlite://{}", path.display());
        drop(crate::storage::SqliteStore::connect(&url).await.unwrap());
        open(&path).unwrap()
    }

    #[tokio::test]
    async fn pruning_deletes_the_oldest_keys_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated(&dir).await;
        conn.execute(
            "INSERT INTO rooms (id, name, created_at) VALUES (1, 'r', 0)",
            [],
        )
        .unwrap();
        for (nonce, ts) in [("a", 100), ("b", 200), ("c", 300)] {
            conn.execute(
                "INSERT INTO send_nonces (sender, nonce, room_id, seq, message_id, ts) \
                 VALUES ('alice', ?1, 1, ?2, ?1, ?2)",
                params![nonce, ts],
            )
            .unwrap();
        }
        let left = || -> Vec<String> {
            conn.prepare("SELECT nonce FROM send_nonces ORDER BY nonce")
                .unwrap()
                .query_map([], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(prune(&conn, 250, 1).unwrap(), 1);
        assert_eq!(left(), ["b", "c"], "the oldest first");
        assert_eq!(prune(&conn, 250, 10).unwrap(), 1);
        assert_eq!(prune(&conn, 250, 10).unwrap(), 0);
        assert_eq!(left(), ["c"], "nothing within the window");
    }

    /// What nonces cost the append thread: the CPU time of `append` per
    /// message (this thread's on-CPU time from `/proc/thread-self/schedstat`,
    /// so other processes' load does not count) for batches of 20 over 20
    /// rooms, without and with a nonce on every message, fsync left out
    /// (`synchronous = OFF`) so the SQL itself is measured. Run:
    /// `cargo test --release --lib measure_nonce_cost -- --ignored --nocapture`.
    /// This thread's time on a CPU so far, in nanoseconds.
    fn on_cpu_ns() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        stat.split_whitespace().next().unwrap().parse().unwrap()
    }

    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn measure_nonce_cost() {
        use crate::domain::Nonce;
        use crate::storage::SendKey;
        let dir = tempfile::tempdir().unwrap();
        let mut conn = migrated(&dir).await;
        conn.pragma_update(None, "synchronous", "off").unwrap();
        let from = Nickname::parse("bench").unwrap();
        let text = MessageText::parse("a typical chat message of some forty bytes").unwrap();
        let rooms: Vec<RoomName> = (0..20)
            .map(|i| RoomName::parse(&format!("room {i}")).unwrap())
            .collect();
        let mut n = 0u64;
        let mut batch = |keyed: bool| -> Vec<NewMessage> {
            (0..20)
                .map(|i| {
                    n += 1;
                    NewMessage {
                        room: rooms[i].clone(),
                        id: uuid::Uuid::now_v7().to_string(),
                        from: from.clone(),
                        author: crate::domain::AuthorId::from_stored(1),
                        text: text.clone(),
                        ts: crate::clock::now_ms(),
                        key: keyed.then(|| SendKey {
                            sender: format!("user{}", n % 500),
                            nonce: Nonce::parse(&uuid::Uuid::now_v7().to_string()).unwrap(),
                        }),
                    }
                })
                .collect()
        };
        const BATCHES: usize = 3_000;
        for round in 0..2 {
            for keyed in [false, true] {
                let batches: Vec<_> = (0..BATCHES).map(|_| batch(keyed)).collect();
                let (cpu, wall) = (on_cpu_ns(), std::time::Instant::now());
                for b in batches {
                    append(&mut conn, b, NONCE_WINDOW_MS).unwrap();
                }
                let messages = (BATCHES * 20) as f64;
                println!(
                    "round {round}, nonces {keyed}: {:.1} µs CPU, {:.1} µs wall per message",
                    (on_cpu_ns() - cpu) as f64 / messages / 1e3,
                    wall.elapsed().as_secs_f64() * 1e6 / messages,
                );
            }
        }
    }

    /// The lookup searches the primary key once per key: a plan that scans
    /// the table would cost a day of keys per commit.
    #[tokio::test]
    async fn the_key_lookup_searches_the_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated(&dir).await;
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", lookup_sql()))
            .unwrap()
            .query_map(
                rusqlite::params_from_iter(vec![
                    rusqlite::types::Value::Null;
                    1 + 2 * LOOKUP_CHUNK
                ]),
                |row| row.get::<_, String>(3),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH n USING PRIMARY KEY")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN n")),
            "{plan:?}"
        );
        // Pruning walks the ts index and deletes by primary key.
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {PRUNE_SQL}"))
            .unwrap()
            .query_map(params![0, 1], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "{plan:?}"
        );
    }
}
