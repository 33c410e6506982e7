//! [`MessageStore`] on an embedded SQLite file in WAL mode: the default
//! backend, needing no setup.
//!
//! `synchronous = FULL` makes a committed transaction survive power loss, not
//! only a process crash: `sent` promises durability. The cost is one fsync per
//! transaction, which the hub's commit task amortises by committing sends in batches.
//!
//! Reads, room creation and migrations go through an sqlx pool; appends, the
//! hot path, through one rusqlite connection on a thread of its own
//! ([`append`]); guests' batched writes through another rusqlite
//! connection ([`guests`]). The WAL is copied back into the database by a
//! third thread ([`checkpoint`]), not inside the commits that grew it.
//! Every driver error becomes a [`StorageError`] in one place ([`error`]).
//!
//! **Why two drivers.** sqlx gives what is convenient and not hot: a pool,
//! async reads, the embedded migrations (`sqlx::migrate!`). But it runs
//! each statement, `BEGIN` and `COMMIT` as a round trip to its connection's
//! own worker thread, and streams rows back one by one: `perf stat` counted
//! ~46 context switches per 20-message commit, and sqlx's SQLite thread was
//! a third of storage's CPU on a one-core server. rusqlite, driven from a
//! thread of our own, makes a whole batch one hand-off there and one back,
//! with statements prepared once and cached. Moving appends to it bought
//! (docs/performance.md, "What each optimisation bought", release build on
//! the 2 vCPU EPYC VM): `cargo bench --bench storage` +51 % to +73 %
//! messages/s; server CPU per delivery in small rooms at 5,000 msg/s
//! 17.3 → 13.0–14.5 µs (storage's thread 25 % → 14–15 % of the core);
//! churn 236–239 → 218–225 µs per join. One driver would mean giving that
//! back (sqlx everywhere) or writing a pool, async reads and migrations
//! here (rusqlite everywhere); both link the same SQLite, so two cost
//! nothing at run time but a second dependency. A PostgreSQL store, whose
//! driver is async throughout, needs neither thread.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

mod access;
mod accounts;
mod append;
mod checkpoint;
mod error;
mod guests;

use append::Appender;

use super::{
    Appended, CatchUp, MessageStore, NewMessage, RoomCreation, RoomDeletion, StaleRooms,
    StorageError,
};
use crate::domain::{AuthorId, Message, RoomName};

/// Reads run concurrently in WAL mode; writes are serialised by SQLite (and
/// in practice come from the one writer task), so a few connections suffice.
const POOL_SIZE: u32 = 4;
/// Guests' writes are serialised by SQLite anyway; reads are one row each.
const GUESTS_POOL_SIZE: u32 = 2;

pub struct SqliteStore {
    /// Reads, room creation and migrations.
    pool: SqlitePool,
    /// Guests' reads and pruning ([`guests`]), with `synchronous = NORMAL`
    /// like their writes.
    guests_pool: SqlitePool,
    /// Guests' batches of writes (see [`guests`]).
    guest_writer: guests::GuestWriter,
    /// Appends: the hot path, on a thread of its own (see [`append`]).
    appender: Appender,
}

#[derive(FromRow)]
struct MessageRow {
    seq: i64,
    id: String,
    author: String,
    author_id: Option<i64>,
    body: String,
    ts: i64,
}

impl MessageRow {
    fn into_message(self, room: &RoomName) -> Message {
        Message {
            room: room.clone(),
            id: self.id,
            seq: self.seq as u64,
            from: self.author,
            author: self.author_id.map(AuthorId::from_stored),
            text: self.body,
            at: self.ts,
        }
    }
}

/// SQLite stores integers as i64; seqs and limits in the protocol are u64/u32.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and applies the embedded migrations.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // The pool writes only new rooms. Left at SQLite's default, such a
            // commit would copy the whole WAL into the database while a join
            // waits for it; the checkpoint thread does that instead.
            .pragma("wal_autocheckpoint", "0");
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        fill_room_keys(&pool).await?;
        let guests_pool = SqlitePoolOptions::new()
            .max_connections(GUESTS_POOL_SIZE)
            .connect_with(
                options
                    .clone()
                    .synchronous(SqliteSynchronous::Normal)
                    // SQLite's own checkpoint after its commits (its
                    // default, 1,000 pages): a flood of new names writes
                    // the WAL without any message commit nudging the
                    // checkpoint thread, and must not grow it unbounded.
                    .pragma("wal_autocheckpoint", "1000"),
            )
            .await?;
        let path = options.get_filename();
        // An in-memory database would be a different one on each connection.
        if path.as_os_str() == ":memory:" || path.starts_with("file:") {
            return Err(StorageError::invalid(
                format!("unsupported database URL {url:?}: expected sqlite://PATH (a file)"),
                None,
            ));
        }
        let appender = Appender::open(path).await?;
        let guest_writer = guests::open_writer(path)?;
        Ok(Self {
            pool,
            guests_pool,
            guest_writer,
            appender,
        })
    }
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// The rule of [`StaleRooms`] as SQL, over `?1` (`unused_before`) and `?2`
/// (`idle_before`): `last_active` is creation, the last message, or the
/// last time people were seen in the room, whichever is latest. The first
/// term lets SQLite read only that range of `rooms_by_activity`. Only
/// public rooms go: a private room or a DM is kept for its members however
/// long it is quiet.
macro_rules! stale {
    () => {
        "(last_active < MAX(?1, ?2) AND ((last_seq = 0 AND last_active < ?1) OR last_active < ?2) \
         AND kind = 'public')"
    };
}

/// Messages deleted per transaction when a room goes: a few milliseconds
/// of holding the write lock, which appends wait for.
const DELETE_CHUNK: i64 = 5_000;

/// Deletes a room's messages, then the room (messages refer to it).
async fn delete_room_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    id: i64,
) -> Result<(), StorageError> {
    // The room's send nonces go too: a resend naming a removed message
    // must be stored as new, not answered with a receipt for nothing.
    sqlx::query("DELETE FROM send_nonces WHERE room_id = ?1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM messages WHERE room_id = ?1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM rooms WHERE id = ?1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Gives every room without a look-alike key its key (rooms stored before
/// keys existed; SQL cannot compute a skeleton). A room that looks like one
/// keyed already keeps no key: both stay as they are, and new rooms cannot
/// look like them.
async fn fill_room_keys(pool: &SqlitePool) -> Result<(), StorageError> {
    let unkeyed: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, name FROM rooms WHERE name_key IS NULL ORDER BY id")
            .fetch_all(pool)
            .await?;
    let mut look_alikes = 0;
    for (id, name) in unkeyed {
        let keyed = sqlx::query("UPDATE OR IGNORE rooms SET name_key = ?2 WHERE id = ?1")
            .bind(id)
            .bind(RoomName::key_of_stored(&name))
            .execute(pool)
            .await?;
        if keyed.rows_affected() == 0 {
            look_alikes += 1;
            tracing::warn!(room = ?name, "a stored room looks like another; it keeps its name");
        }
    }
    if look_alikes > 0 {
        tracing::warn!(
            look_alikes,
            "rooms stored before look-alike keys that look like others"
        );
    }
    Ok(())
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn create_room(&self, room: &RoomName) -> Result<RoomCreation, StorageError> {
        let key = room.key();
        // Without a conflict target: neither the same name nor a look-alike
        // (the unique key) makes a new row.
        let result = sqlx::query(
            "INSERT INTO rooms (name, name_key, created_at, last_active) VALUES (?1, ?2, ?3, ?3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(room.as_str())
        .bind(&key)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 1 {
            return Ok(RoomCreation::Created);
        }
        let same: Option<String> = sqlx::query_scalar(
            "SELECT name FROM rooms WHERE name = ?1 UNION ALL \
             SELECT name FROM rooms WHERE name_key = ?2 LIMIT 1",
        )
        .bind(room.as_str())
        .bind(&key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match same {
            Some(name) if name != room.as_str() => RoomCreation::LooksLike(name),
            _ => RoomCreation::Existed,
        })
    }

    async fn room_exists(&self, room: &RoomName) -> Result<bool, StorageError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM rooms WHERE name = ?1")
            .bind(room.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn recent_rooms(&self, since: i64, limit: u32) -> Result<Vec<String>, StorageError> {
        // `last_message` is 0 for rooms without messages: never at or after
        // a real `since`, however recently the room was created. Private
        // rooms and DMs are never listed to everyone.
        let names = sqlx::query_scalar(
            "SELECT name FROM rooms WHERE last_message >= ?1 AND last_message > 0 \
             AND kind = 'public' ORDER BY last_message DESC, id DESC LIMIT ?2",
        )
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(names)
    }

    async fn touch_rooms(&self, rooms: &[RoomName], now: i64) -> Result<(), StorageError> {
        if rooms.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for room in rooms {
            sqlx::query("UPDATE rooms SET last_active = MAX(last_active, ?2) WHERE name = ?1")
                .bind(room.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn stale_rooms(
        &self,
        stale: StaleRooms,
        limit: u32,
    ) -> Result<Vec<RoomName>, StorageError> {
        let names: Vec<String> = sqlx::query_scalar(concat!(
            "SELECT name FROM rooms WHERE ",
            stale!(),
            " ORDER BY last_active, id LIMIT ?3"
        ))
        .bind(stale.unused_before)
        .bind(stale.idle_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(names
            .iter()
            .filter_map(|name| RoomName::parse(name).ok())
            .collect())
    }

    async fn delete_stale_rooms(
        &self,
        stale: StaleRooms,
        rooms: &[RoomName],
    ) -> Result<Vec<RoomName>, StorageError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        // IMMEDIATE: the write lock first, so the rule is checked against
        // the rows that are then deleted (no append slips in between).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut deleted = Vec::new();
        for room in rooms {
            let id: Option<i64> = sqlx::query_scalar(concat!(
                "SELECT id FROM rooms WHERE name = ?3 AND ",
                stale!()
            ))
            .bind(stale.unused_before)
            .bind(stale.idle_before)
            .bind(room.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = id {
                delete_room_rows(&mut tx, id).await?;
                deleted.push(room.clone());
            }
        }
        tx.commit().await?;
        if !deleted.is_empty() {
            // The freed pages are reused by later rooms; the WAL that
            // recorded freeing them is copied back now rather than after
            // the idle timeout, so that it starts over short.
            self.appender.nudge_checkpoint();
        }
        Ok(deleted)
    }

    async fn delete_stale_messages(
        &self,
        stale: StaleRooms,
        rooms: &[RoomName],
    ) -> Result<u64, StorageError> {
        let mut deleted = 0;
        for room in rooms {
            loop {
                // One statement, one transaction: the oldest chunk of a room
                // that is still stale.
                let n = sqlx::query(concat!(
                    "DELETE FROM messages WHERE room_id = ",
                    "(SELECT id FROM rooms WHERE name = ?3 AND ",
                    stale!(),
                    ") AND seq < ?4 + ",
                    "(SELECT MIN(seq) FROM messages WHERE room_id = ",
                    "(SELECT id FROM rooms WHERE name = ?3))"
                ))
                .bind(stale.unused_before)
                .bind(stale.idle_before)
                .bind(room.as_str())
                .bind(DELETE_CHUNK)
                .execute(&self.pool)
                .await?
                .rows_affected();
                deleted += n;
                if n < DELETE_CHUNK as u64 {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    async fn delete_room(&self, room: &RoomName, announce: bool) -> Result<bool, StorageError> {
        // The history first, a chunk per transaction (messages sent
        // meanwhile get seqs above these), then the rest with the room.
        loop {
            let n = sqlx::query(
                "DELETE FROM messages WHERE room_id = (SELECT id FROM rooms WHERE name = ?1) \
                 AND seq < ?2 + (SELECT MIN(seq) FROM messages WHERE room_id = \
                 (SELECT id FROM rooms WHERE name = ?1))",
            )
            .bind(room.as_str())
            .bind(DELETE_CHUNK)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if n < DELETE_CHUNK as u64 {
                break;
            }
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM rooms WHERE name = ?1")
            .bind(room.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(id) = id {
            delete_room_rows(&mut tx, id).await?;
        }
        if announce {
            // Recorded even if the room was already gone: a server may
            // still hold members of it that the room never reached storage for.
            sqlx::query("INSERT INTO room_deletions (name, deleted_at) VALUES (?1, ?2)")
                .bind(room.as_str())
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.appender.nudge_checkpoint();
        Ok(id.is_some())
    }

    async fn room_deletions(&self, after: i64) -> Result<Vec<RoomDeletion>, StorageError> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, name FROM room_deletions WHERE id > ?1 ORDER BY id")
                .bind(after)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, name)| {
                RoomName::parse(&name)
                    .ok()
                    .map(|room| RoomDeletion { id, room })
            })
            .collect())
    }

    async fn last_room_deletion(&self) -> Result<i64, StorageError> {
        let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM room_deletions")
            .fetch_one(&self.pool)
            .await?;
        Ok(id.unwrap_or(0))
    }

    async fn forget_room_deletions(&self, before: i64) -> Result<(), StorageError> {
        // The newest record stays, whatever its age: its id is where a
        // starting server begins, and ids must never go back.
        sqlx::query(
            "DELETE FROM room_deletions WHERE deleted_at < ?1 \
             AND id < (SELECT MAX(id) FROM room_deletions)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, StorageError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.appender.append(batch).await
    }

    async fn catch_up(
        &self,
        room: &RoomName,
        after: Option<u64>,
        limit: u32,
    ) -> Result<CatchUp, StorageError> {
        // One read transaction: the messages and `last_seq` come from the same snapshot.
        let mut tx = self.pool.begin().await?;
        let last_seq: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM rooms WHERE name = ?1")
                .bind(room.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(last_seq) = last_seq else {
            return Ok(CatchUp::default());
        };
        // Newest first, one extra row to learn whether anything was left out.
        let mut rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT m.seq, m.id, m.author, m.author_id, m.body, m.ts FROM messages m \
             JOIN rooms r ON r.id = m.room_id \
             WHERE r.name = ?1 AND m.seq > ?2 ORDER BY m.seq DESC LIMIT ?3",
        )
        .bind(room.as_str())
        .bind(after.map_or(0, to_i64))
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let truncated = after.is_some() && rows.len() > limit as usize;
        rows.truncate(limit as usize);
        rows.reverse();
        Ok(CatchUp {
            messages: rows.into_iter().map(|r| r.into_message(room)).collect(),
            last_seq: last_seq as u64,
            truncated,
        })
    }

    async fn history(
        &self,
        room: &RoomName,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Message>, StorageError> {
        let mut rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT m.seq, m.id, m.author, m.author_id, m.body, m.ts FROM messages m \
             JOIN rooms r ON r.id = m.room_id \
             WHERE r.name = ?1 AND m.seq < ?2 ORDER BY m.seq DESC LIMIT ?3",
        )
        .bind(room.as_str())
        .bind(before.map_or(i64::MAX, to_i64))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.reverse();
        Ok(rows.into_iter().map(|r| r.into_message(room)).collect())
    }

    async fn ping(&self) -> Result<(), StorageError> {
        // Health covers both paths: a store that can read but no longer
        // append is not healthy.
        if !self.appender.is_running() {
            return Err(error::worker_gone());
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// The store contract ([`crate::storage::contract`]), on a database file
/// in a temporary directory per test.
#[cfg(test)]
mod contract {
    use super::SqliteStore;
    use crate::domain::AccountId;
    use crate::storage::contract::access::{AccessFactory, access_contract};
    use crate::storage::contract::{StoreFactory, store_contract};

    struct Sqlite;

    impl StoreFactory for Sqlite {
        type Place = tempfile::TempDir;
        type Store = SqliteStore;

        async fn place(&self) -> tempfile::TempDir {
            tempfile::tempdir().unwrap()
        }

        async fn open(&self, place: &tempfile::TempDir) -> SqliteStore {
            let url = format!("sqlite://{}", place.path().join("contract.db").display());
            SqliteStore::connect(&url).await.unwrap()
        }
    }

    impl AccessFactory for Sqlite {
        async fn account(&self, store: &SqliteStore, name: &str) -> AccountId {
            let id = sqlx::query_scalar(
                "INSERT INTO accounts (author_id, name, name_key, name_shape, password_hash, \
                 created_at) VALUES (?1, ?2, ?2, ?2, '', 0) RETURNING id",
            )
            .bind(crate::domain::AuthorId::random().get() as i64)
            .bind(name)
            .fetch_one(&store.pool)
            .await
            .unwrap();
            AccountId(id)
        }
    }

    store_contract!(Sqlite);
    access_contract!(Sqlite);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::NONCE_WINDOW_MS;

    // The contract suite's helpers: a message, one with a nonce, the
    // stored messages of an append, a message's receipt.
    use crate::storage::contract::{keyed, message, now, receipt, stored};

    async fn open(dir: &tempfile::TempDir) -> SqliteStore {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        SqliteStore::connect(&url).await.unwrap()
    }

    fn seqs(stored: &[Message]) -> Vec<(&str, u64)> {
        stored.iter().map(|m| (m.id.as_str(), m.seq)).collect()
    }

    #[tokio::test]
    async fn appends_number_each_room_contiguously_in_batch_order_across_batches_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let first = stored(
            store
                .append(vec![
                    message("a", "1"),
                    message("b", "2"),
                    message("a", "3"),
                ])
                .await
                .unwrap(),
        );
        assert_eq!(seqs(&first), [("1", 1), ("2", 1), ("3", 2)]);
        assert_eq!(first[2].text, "text of 3");
        let second = stored(
            store
                .append(vec![message("b", "4"), message("a", "5")])
                .await
                .unwrap(),
        );
        assert_eq!(seqs(&second), [("4", 2), ("5", 3)]);
        // Appends are written on their own connection: the pool's readers see them.
        let caught = store
            .catch_up(&RoomName::parse("a").unwrap(), None, 10)
            .await
            .unwrap();
        assert_eq!(caught.last_seq, 3);
        let ids: Vec<_> = caught.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["1", "3", "5"]);
        assert!(
            store
                .room_exists(&RoomName::parse("b").unwrap())
                .await
                .unwrap()
        );
        drop(store);

        let store = open(&dir).await;
        let third = stored(store.append(vec![message("a", "6")]).await.unwrap());
        assert_eq!(seqs(&third), [("6", 4)]);
    }

    #[tokio::test]
    async fn a_long_run_of_appends_keeps_the_wal_short_without_checkpointing_in_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        // 1,800 commits of 20 messages over 1,000 rooms, spaced like the
        // writer's under load: ~21,500 WAL pages if nothing were copied back
        // (measured), past twice the checkpoint threshold but below the
        // append thread's own hard limit, so only the checkpoint thread can
        // keep the WAL short here.
        let mut id = 0;
        for _ in 0..1_800 {
            let batch = (0..20)
                .map(|_| {
                    id += 1;
                    message(&format!("room {}", id * 7 % 1000), &id.to_string())
                })
                .collect();
            store.append(batch).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The WAL file keeps the length it once reached: frames of a page plus a header each.
        let wal = std::fs::metadata(dir.path().join("t.db-wal"))
            .unwrap()
            .len();
        let frames = wal / (4096 + 24);
        assert!(
            frames < 2 * checkpoint::CHECKPOINT_PAGES as u64,
            "the WAL reached {frames} frames"
        );
        let caught = store
            .catch_up(&RoomName::parse("room 7").unwrap(), None, 100)
            .await
            .unwrap();
        assert_eq!(caught.last_seq, 36);
    }

    #[tokio::test]
    async fn a_failing_batch_stores_nothing_and_advances_no_counter() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store.append(vec![message("a", "1")]).await.unwrap();
        // The third message reuses an id: the insert fails after the rooms'
        // counters were advanced and two messages were written.
        let failed = store
            .append(vec![
                message("a", "2"),
                message("new", "3"),
                message("a", "1"),
            ])
            .await;
        assert!(
            matches!(failed, Err(StorageError::Conflict { .. })),
            "{failed:?}"
        );
        let caught = store
            .catch_up(&RoomName::parse("a").unwrap(), None, 10)
            .await
            .unwrap();
        assert_eq!(caught.last_seq, 1);
        assert_eq!(caught.messages.len(), 1);
        assert!(
            !store
                .room_exists(&RoomName::parse("new").unwrap())
                .await
                .unwrap()
        );
        // The store is still usable, and numbering resumes where it was.
        let next = stored(store.append(vec![message("a", "4")]).await.unwrap());
        assert_eq!(seqs(&next), [("4", 2)]);
    }

    // Resends in a later batch, after a restart, copies in one batch and
    // another sender's nonce: the contract suite (`storage::contract`).

    /// Past the window a key is forgotten: the same nonce stores a new
    /// message (and replaces the old row, whether or not it was pruned).
    #[tokio::test]
    async fn a_key_older_than_the_window_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let first = keyed("a", "1", "alice", "n1");
        let ts = first.ts;
        store.append(vec![first]).await.unwrap();
        let mut within = keyed("a", "2", "alice", "n1");
        within.ts = ts + NONCE_WINDOW_MS - 1;
        assert!(matches!(
            store.append(vec![within]).await.unwrap()[0],
            Appended::Duplicate(_)
        ));
        let mut past = keyed("a", "3", "alice", "n1");
        past.ts = ts + NONCE_WINDOW_MS;
        let past = stored(store.append(vec![past]).await.unwrap());
        let mut again = keyed("a", "4", "alice", "n1");
        again.ts = ts + NONCE_WINDOW_MS + 1;
        assert_eq!(
            store.append(vec![again]).await.unwrap(),
            [Appended::Duplicate(receipt(&past[0]))]
        );
    }

    /// A batch that fails stores neither its messages nor their keys: a
    /// resend after the error is stored.
    #[tokio::test]
    async fn a_failed_batch_keeps_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store.append(vec![message("a", "1")]).await.unwrap();
        let failed = store
            .append(vec![keyed("a", "2", "alice", "n1"), message("a", "1")])
            .await;
        assert!(failed.is_err());
        let retried = stored(
            store
                .append(vec![keyed("a", "2", "alice", "n1")])
                .await
                .unwrap(),
        );
        assert_eq!(retried[0].seq, 2);
    }

    /// Each commit that stores keys deletes up to twice as many expired ones:
    /// the table keeps about a window's worth, without a sweep of its own.
    #[tokio::test]
    async fn commits_with_keys_delete_twice_as_many_expired_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let old = now() - NONCE_WINDOW_MS - 1_000;
        let batch = (0..3)
            .map(|i| NewMessage {
                ts: old,
                ..keyed("a", &format!("old{i}"), "alice", &format!("old{i}"))
            })
            .collect();
        store.append(batch).await.unwrap();
        let keys = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM send_nonces")
                .fetch_one(&store.pool)
                .await
                .unwrap()
        };
        assert_eq!(keys().await, 3);
        store.append(vec![message("a", "plain")]).await.unwrap();
        assert_eq!(keys().await, 3, "a commit without keys deletes none");
        store
            .append(vec![keyed("a", "new1", "alice", "new1")])
            .await
            .unwrap();
        assert_eq!(keys().await, 2, "two old gone, one new");
        store
            .append(vec![keyed("a", "new2", "alice", "new2")])
            .await
            .unwrap();
        assert_eq!(keys().await, 2, "the last old one gone, one new");
    }

    /// More keys than one lookup takes (32): every resend is still found.
    #[tokio::test]
    async fn a_batch_of_many_resends_finds_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let keyed_batch = |n: usize, from: usize| -> Vec<NewMessage> {
            (from..from + n)
                .map(|i| keyed("a", &format!("id{i}"), "alice", &format!("n{i}")))
                .collect()
        };
        let first = stored(store.append(keyed_batch(70, 0)).await.unwrap());
        // All 70 again, and 3 new ones after them.
        let mut batch = keyed_batch(70, 0);
        batch.extend(keyed_batch(3, 70));
        let outcomes = store.append(batch).await.unwrap();
        for (outcome, original) in outcomes.iter().zip(&first) {
            assert_eq!(*outcome, Appended::Duplicate(receipt(original)));
        }
        let new: Vec<u64> = outcomes[70..]
            .iter()
            .map(|o| match o {
                Appended::Stored(m) => m.seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(new, [71, 72, 73]);
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    async fn count(store: &SqliteStore, table: &str) -> i64 {
        let sql = match table {
            "rooms" => "SELECT COUNT(*) FROM rooms",
            "messages" => "SELECT COUNT(*) FROM messages",
            _ => "SELECT COUNT(*) FROM room_deletions",
        };
        sqlx::query_scalar(sql)
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn only_rooms_with_a_message_since_the_window_are_recent() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        for i in 0..20 {
            store
                .create_room(&room(&format!("spam {i}")))
                .await
                .unwrap();
        }
        let mut old = message("old", "1");
        old.ts = 1_000;
        store.append(vec![old]).await.unwrap();
        let mut fresh = message("fresh", "2");
        fresh.ts = now_ms();
        store.append(vec![fresh]).await.unwrap();
        assert_eq!(
            store.recent_rooms(now_ms() - 60_000, 100).await.unwrap(),
            ["fresh"]
        );
        assert_eq!(store.recent_rooms(0, 100).await.unwrap(), ["fresh", "old"]);
    }

    #[tokio::test]
    async fn stale_rooms_go_with_their_messages_and_rooms_in_use_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store.create_room(&room("unused")).await.unwrap();
        store.create_room(&room("occupied")).await.unwrap();
        let mut talk = message("talk", "1");
        talk.ts = now_ms();
        store
            .append(vec![talk, message("talk", "2")])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = now_ms();
        store
            .touch_rooms(&[room("occupied")], now + 10)
            .await
            .unwrap();

        // Unused rooms past their cutoff go; a room with messages is not unused.
        let unused = StaleRooms {
            unused_before: now,
            idle_before: 0,
        };
        assert_eq!(
            store.stale_rooms(unused, 10).await.unwrap(),
            [room("unused")]
        );
        // Everything idle before `now`, but the rule is checked again when deleting:
        // "occupied" was touched after it.
        let idle = StaleRooms {
            unused_before: now,
            idle_before: now,
        };
        let candidates = store.stale_rooms(idle, 10).await.unwrap();
        assert_eq!(candidates.len(), 2, "{candidates:?}");
        let asked = [room("unused"), room("talk"), room("occupied")];
        let deleted = store.delete_stale_rooms(idle, &asked).await.unwrap();
        assert_eq!(deleted, [room("unused"), room("talk")]);
        assert_eq!(count(&store, "rooms").await, 1);
        assert_eq!(count(&store, "messages").await, 0);
        assert!(!store.room_exists(&room("talk")).await.unwrap());
        // A room created again under the same name starts empty.
        let again = store.append(vec![message("talk", "3")]).await.unwrap();
        assert_eq!(seqs(&stored(again)), [("3", 1)]);
    }

    #[tokio::test]
    async fn a_long_history_is_deleted_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let mut id = 0;
        for _ in 0..12 {
            let batch = (0..1_000)
                .map(|_| {
                    id += 1;
                    message("long", &id.to_string())
                })
                .collect();
            store.append(batch).await.unwrap();
        }
        store.append(vec![message("other", "x")]).await.unwrap();
        let idle = StaleRooms {
            unused_before: 0,
            idle_before: now_ms() + 1,
        };
        // Only rooms still stale, oldest messages first, a chunk at a time.
        let deleted = store
            .delete_stale_messages(idle, &[room("long")])
            .await
            .unwrap();
        assert_eq!(deleted, 12_000);
        let kept = StaleRooms {
            unused_before: 0,
            idle_before: 0,
        };
        assert_eq!(
            store
                .delete_stale_messages(kept, &[room("other")])
                .await
                .unwrap(),
            0
        );
        assert_eq!(count(&store, "messages").await, 1);
        assert_eq!(
            store
                .delete_stale_rooms(idle, &[room("long")])
                .await
                .unwrap(),
            [room("long")]
        );
        // The operator's removal, also in chunks.
        store
            .append(
                (0..6_000)
                    .map(|i| message("big", &format!("b{i}")))
                    .collect(),
            )
            .await
            .unwrap();
        assert!(store.delete_room(&room("big"), false).await.unwrap());
        assert_eq!(count(&store, "messages").await, 1);
        assert_eq!(count(&store, "rooms").await, 1);
    }

    /// A removed room takes its send nonces with it: the removal is not
    /// blocked by them, and a resend afterwards is a new message.
    #[tokio::test]
    async fn a_removed_room_takes_its_nonces_along() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store
            .append(vec![keyed("a", "1", "alice", "n1")])
            .await
            .unwrap();
        assert!(store.delete_room(&room("a"), false).await.unwrap());
        let again = stored(
            store
                .append(vec![keyed("a", "2", "alice", "n1")])
                .await
                .unwrap(),
        );
        assert_eq!(again[0].seq, 1, "stored as new in the new room");
    }

    #[tokio::test]
    async fn operator_deletions_are_recorded_for_running_servers() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store
            .append(vec![message("a", "1"), message("b", "2")])
            .await
            .unwrap();
        assert_eq!(store.last_room_deletion().await.unwrap(), 0);
        assert!(store.delete_room(&room("a"), true).await.unwrap());
        assert!(!store.delete_room(&room("a"), true).await.unwrap());
        assert!(store.delete_room(&room("b"), false).await.unwrap());
        assert_eq!(count(&store, "messages").await, 0);
        let seen = store.room_deletions(0).await.unwrap();
        let rooms: Vec<&str> = seen.iter().map(|d| d.room.as_str()).collect();
        assert_eq!(rooms, ["a", "a"]);
        let last = store.last_room_deletion().await.unwrap();
        assert_eq!(last, seen[1].id);
        assert!(store.room_deletions(last).await.unwrap().is_empty());
        // Old records go, but never the newest: its id is where servers start.
        store.forget_room_deletions(now_ms() + 1).await.unwrap();
        assert_eq!(count(&store, "room_deletions").await, 1);
        assert_eq!(store.last_room_deletion().await.unwrap(), last);
    }
}
