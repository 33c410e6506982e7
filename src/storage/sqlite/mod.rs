//! [`MessageStore`] on an embedded SQLite file in WAL mode: the default
//! backend, needing no setup.
//!
//! `synchronous = FULL` makes a committed transaction survive power loss, not
//! only a process crash: `sent` promises durability. The cost is one fsync per
//! transaction, which the hub's writer amortises by committing sends in batches.
//!
//! Reads, room creation and migrations go through an sqlx pool; appends, the
//! hot path, through one rusqlite connection on a thread of its own
//! ([`append`]), because sqlx's per-statement hand-offs to its own thread
//! cost more than the SQL itself. Both libraries link the same SQLite. The
//! WAL is copied back into the database by a third thread ([`checkpoint`]),
//! not inside the commits that grew it.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

mod append;
mod checkpoint;
mod guests;

use append::Appender;

use super::{CatchUp, MessageStore, NewMessage, RoomCreation, StorageError};
use crate::domain::{AuthorId, RoomName};
use crate::protocol::ChatMessage;

/// Reads run concurrently in WAL mode; writes are serialised by SQLite (and
/// in practice come from the one writer task), so a few connections suffice.
const POOL_SIZE: u32 = 4;
/// Guests' writes are serialised by SQLite anyway; reads are one row each.
const GUESTS_POOL_SIZE: u32 = 2;

pub struct SqliteStore {
    /// Reads, room creation and migrations.
    pool: SqlitePool,
    /// Guests' identities ([`guests`]), with `synchronous = NORMAL`: a
    /// commit there costs no fsync (WAL mode keeps it safe from a process
    /// crash, and the next fsync of a message commit makes it durable), so
    /// a burst of new names is not a burst of fsyncs. What a power cut
    /// could lose is the newest claims: their pages get new identities.
    /// Its commits checkpoint the WAL themselves past 1,000 pages.
    guests_pool: SqlitePool,
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
    fn into_message(self, room: &RoomName) -> ChatMessage {
        ChatMessage {
            room: room.as_str().to_owned(),
            id: self.id,
            seq: self.seq as u64,
            from: self.author,
            author: self.author_id.map(|id| AuthorId::from_stored(id).get()),
            text: self.body,
            ts: self.ts,
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
            return Err(StorageError::UnsupportedUrl(url.to_owned()));
        }
        let appender = Appender::open(path).await?;
        Ok(Self {
            pool,
            guests_pool,
            appender,
        })
    }
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
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

    async fn recent_rooms(&self, limit: u32) -> Result<Vec<String>, StorageError> {
        let names = sqlx::query_scalar(
            "SELECT name FROM rooms ORDER BY last_active DESC, id DESC LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(names)
    }

    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<ChatMessage>, StorageError> {
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
    ) -> Result<Vec<ChatMessage>, StorageError> {
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
            return Err(StorageError::AppenderGone);
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageText, Nickname};

    fn message(room: &str, id: &str) -> NewMessage {
        NewMessage {
            room: RoomName::parse(room).unwrap(),
            id: id.to_owned(),
            from: Nickname::parse("alice").unwrap(),
            author: AuthorId::from_stored(7),
            text: MessageText::parse(&format!("text of {id}")).unwrap(),
            ts: 1_764_111_111_111,
        }
    }

    async fn open(dir: &tempfile::TempDir) -> SqliteStore {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        SqliteStore::connect(&url).await.unwrap()
    }

    fn seqs(stored: &[ChatMessage]) -> Vec<(&str, u64)> {
        stored.iter().map(|m| (m.id.as_str(), m.seq)).collect()
    }

    #[tokio::test]
    async fn appends_number_each_room_contiguously_in_batch_order_across_batches_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let first = store
            .append(vec![
                message("a", "1"),
                message("b", "2"),
                message("a", "3"),
            ])
            .await
            .unwrap();
        assert_eq!(seqs(&first), [("1", 1), ("2", 1), ("3", 2)]);
        assert_eq!(first[2].text, "text of 3");
        let second = store
            .append(vec![message("b", "4"), message("a", "5")])
            .await
            .unwrap();
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
        let third = store.append(vec![message("a", "6")]).await.unwrap();
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
        assert!(matches!(failed, Err(StorageError::Sqlite(_))), "{failed:?}");
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
        let next = store.append(vec![message("a", "4")]).await.unwrap();
        assert_eq!(seqs(&next), [("4", 2)]);
    }
}
