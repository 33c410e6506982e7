//! [`MessageStore`] on an embedded SQLite file in WAL mode: the default
//! backend, needing no setup.
//!
//! `synchronous = FULL` makes a committed transaction survive power loss, not
//! only a process crash: `sent` promises durability. The cost is one fsync per
//! transaction, which the hub's writer amortises by committing sends in batches.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, QueryBuilder, Sqlite, SqlitePool};

use super::{CatchUp, MessageStore, NewMessage, StorageError};
use crate::domain::RoomName;
use crate::protocol::ChatMessage;

/// Rows per multi-row statement: well under SQLite's 32,766 bound
/// parameters (messages take 6 each).
const ROWS_PER_STATEMENT: usize = 1000;

/// Reads run concurrently in WAL mode; writes are serialised by SQLite (and
/// in practice come from the one writer task), so a few connections suffice.
const POOL_SIZE: u32 = 4;

pub struct SqliteStore {
    pool: SqlitePool,
}

#[derive(FromRow)]
struct MessageRow {
    seq: i64,
    id: String,
    author: String,
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
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn create_room(&self, room: &RoomName) -> Result<bool, StorageError> {
        let result = sqlx::query(
            "INSERT INTO rooms (name, created_at, last_active) VALUES (?1, ?2, ?2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(room.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn room_exists(&self, room: &RoomName) -> Result<bool, StorageError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM rooms WHERE name = ?1")
            .bind(room.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn recent_rooms(&self, limit: u32) -> Result<Vec<String>, StorageError> {
        let names =
            sqlx::query_scalar("SELECT name FROM rooms ORDER BY last_active DESC, id LIMIT ?1")
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        Ok(names)
    }

    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<ChatMessage>, StorageError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Three statements per batch, however many messages it holds: each
        // is a round trip to SQLite's worker thread (two context switches),
        // which per message would cost more than the commit itself.
        // IMMEDIATE takes the write lock up front, so advancing the rooms'
        // counters and writing the messages is one atomic step.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Each room of the batch, with how many of its messages it holds.
        let mut shares: HashMap<&str, i64> = HashMap::new();
        for message in batch {
            *shares.entry(message.room.as_str()).or_default() += 1;
        }
        let rooms: Vec<(&str, i64)> = shares.iter().map(|(room, n)| (*room, *n)).collect();
        let ts = batch[0].ts;
        // One upsert creates missing rooms and advances every counter by its
        // room's share of the batch, returning the new values:
        // name -> (id, last seq before this batch).
        let mut counters: HashMap<&str, (i64, i64)> = HashMap::with_capacity(rooms.len());
        for chunk in rooms.chunks(ROWS_PER_STATEMENT) {
            let advanced: Vec<(i64, String, i64)> = QueryBuilder::<Sqlite>::new(
                "INSERT INTO rooms (name, created_at, last_active, last_seq) ",
            )
            .push_values(chunk, |mut row, (room, n)| {
                row.push_bind(*room)
                    .push_bind(ts)
                    .push_bind(ts)
                    .push_bind(*n);
            })
            .push(
                " ON CONFLICT (name) DO UPDATE SET last_active = excluded.last_active, \
                 last_seq = rooms.last_seq + excluded.last_seq RETURNING id, name, last_seq",
            )
            .build_query_as()
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?;
            for (id, name, last_seq) in advanced {
                let (room, n) = shares
                    .get_key_value(name.as_str())
                    .expect("the rooms just written");
                counters.insert(room, (id, last_seq - n));
            }
        }
        let mut rows = Vec::with_capacity(batch.len());
        for message in batch {
            let (room_id, last_seq) = counters
                .get_mut(message.room.as_str())
                .expect("every room of the batch exists now");
            *last_seq += 1;
            rows.push((*room_id, *last_seq, message));
        }
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            QueryBuilder::<Sqlite>::new(
                "INSERT INTO messages (room_id, seq, id, author, body, ts) ",
            )
            .push_values(chunk, |mut row, (room_id, seq, message)| {
                row.push_bind(*room_id)
                    .push_bind(*seq)
                    .push_bind(message.id.as_str())
                    .push_bind(message.from.as_str())
                    .push_bind(message.text.as_str())
                    .push_bind(message.ts);
            })
            .build()
            .persistent(false)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(_, seq, message)| ChatMessage {
                room: message.room.as_str().to_owned(),
                id: message.id.clone(),
                seq: seq as u64,
                from: message.from.as_str().to_owned(),
                text: message.text.as_str().to_owned(),
                ts: message.ts,
            })
            .collect())
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
            "SELECT m.seq, m.id, m.author, m.body, m.ts FROM messages m \
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
            "SELECT m.seq, m.id, m.author, m.body, m.ts FROM messages m \
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
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
