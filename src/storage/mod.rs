//! Durable storage of rooms and messages, behind the [`MessageStore`] trait.
//!
//! The trait is shaped by what the chat needs (append a batch, catch up a
//! joiner, page back through history), not by tables, so a PostgreSQL
//! implementation can sit beside [`SqliteStore`] without the hub changing.
//! SQL lives only in this module.

mod sqlite;

pub use sqlite::SqliteStore;

use async_trait::async_trait;

use crate::domain::{MessageText, Nickname, Nonce, RoomName};
use crate::protocol::ChatMessage;

/// A message accepted by the hub, not yet stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: RoomName,
    pub id: String,
    pub from: Nickname,
    pub text: MessageText,
    /// Unix milliseconds.
    pub ts: i64,
    /// The sender's key for it, when the client gave one: the message is
    /// stored at most once per key within [`crate::protocol::NONCE_WINDOW_MS`].
    pub key: Option<SendKey>,
}

/// Who sent a message and the nonce they chose for it. `sender` is one
/// opaque value (today the sender's name key), so that what "the same
/// sender" means can change without the store changing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SendKey {
    pub sender: String,
    pub nonce: Nonce,
}

/// What became of one message of an appended batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored now, with its seq.
    Stored(ChatMessage),
    /// Its key was stored before (in an earlier batch within the window, or
    /// earlier in this one): nothing was stored; this is the first copy's receipt.
    Duplicate(Receipt),
}

/// Where and when a message was stored: what its `sent` reply says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub room: String,
    pub id: String,
    pub seq: u64,
    pub ts: i64,
}

/// What a joiner needs: recent messages and the room's sequence position,
/// read from one consistent snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Oldest first.
    pub messages: Vec<ChatMessage>,
    /// The seq of the room's newest stored message (0 for none).
    pub last_seq: u64,
    /// More messages matched than `limit`; the oldest were left out.
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("could not start the storage thread: {0}")]
    Thread(std::io::Error),
    #[error("the storage thread stopped")]
    AppenderGone,
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: expected sqlite://PATH (a file)")]
    UnsupportedUrl(String),
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Creates the room if it does not exist; returns whether it was created.
    async fn create_room(&self, room: &RoomName) -> Result<bool, StorageError>;

    async fn room_exists(&self, room: &RoomName) -> Result<bool, StorageError>;

    /// Up to `limit` room names, the most recently active (last message, or
    /// creation) first; of rooms active in the same millisecond, the newest.
    async fn recent_rooms(&self, limit: u32) -> Result<Vec<String>, StorageError>;

    /// Stores a batch in one transaction, giving each message the next seq of
    /// its room (creating rooms as needed), and each message's key with it.
    /// A message whose key was stored within the window, or appears earlier
    /// in the batch, is not stored: its outcome is the first copy's receipt.
    /// Returns one outcome per message, in batch order. Either all are
    /// stored or none.
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, StorageError>;

    /// The newest `limit` messages, only those with `seq > after` if given.
    /// `truncated` says that more than `limit` messages followed `after`: the
    /// client has a gap it can fill with [`MessageStore::history`].
    async fn catch_up(
        &self,
        room: &RoomName,
        after: Option<u64>,
        limit: u32,
    ) -> Result<CatchUp, StorageError>;

    /// The newest `limit` messages with `seq < before` (all seqs if `None`), oldest first.
    async fn history(
        &self,
        room: &RoomName,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StorageError>;

    /// Answers when the database does (for health checks).
    async fn ping(&self) -> Result<(), StorageError>;
}
