//! Durable storage of rooms and messages, behind the [`MessageStore`] trait.
//!
//! The trait is shaped by what the chat needs (append a batch, catch up a
//! joiner, page back through history), not by tables, so a PostgreSQL
//! implementation can sit beside [`SqliteStore`] without the hub changing.
//! SQL lives only in this module. Guests' stored identities are behind a
//! trait of their own, [`GuestStore`], used by `identity`.

mod sqlite;

pub use sqlite::SqliteStore;

use async_trait::async_trait;

use crate::domain::{AuthorId, MessageText, Nickname, RoomName};
use crate::protocol::ChatMessage;

/// A message accepted by the hub, not yet stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: RoomName,
    pub id: String,
    pub from: Nickname,
    /// Who sent it, stored with it.
    pub author: AuthorId,
    pub text: MessageText,
    /// Unix milliseconds.
    pub ts: i64,
}

/// What [`MessageStore::create_room`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomCreation {
    Created,
    /// A room of exactly this name exists.
    Existed,
    /// Another room's name looks like this one (same [`RoomName::key`]):
    /// no room was created. Holds that room's name.
    LooksLike(String),
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
    #[error("no free author id found")]
    AuthorIdsExhausted,
    #[error("unsupported database URL {0:?}: expected sqlite://PATH (a file)")]
    UnsupportedUrl(String),
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Creates the room if it does not exist and no room looks like it.
    async fn create_room(&self, room: &RoomName) -> Result<RoomCreation, StorageError>;

    async fn room_exists(&self, room: &RoomName) -> Result<bool, StorageError>;

    /// Up to `limit` room names, the most recently active (last message, or
    /// creation) first; of rooms active in the same millisecond, the newest.
    async fn recent_rooms(&self, limit: u32) -> Result<Vec<String>, StorageError>;

    /// Stores a batch in one transaction, giving each message the next seq of
    /// its room (creating rooms as needed). Returns the stored messages in
    /// batch order. Either all are stored or none.
    async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<ChatMessage>, StorageError>;

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

/// A guest identity as stored: who holds a name, by their token's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGuest {
    /// SHA-256 of the session token.
    pub token_hash: [u8; 32],
    pub author: AuthorId,
    pub name: String,
    /// [`Nickname::key`] and [`Nickname::shape`] of `name`.
    pub name_key: String,
    pub name_shape: String,
    /// Unix milliseconds: last use of the token, or its holder last leaving.
    pub last_seen: i64,
}

/// When a stored guest still holds its name against newcomers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldRule {
    /// Guests seen at or after this (Unix ms) hold their name.
    pub seen_since: i64,
    /// Guests whose token was used before this (Unix ms) have expired.
    pub valid_since: i64,
}

/// Guests' identities, stored so that a name and its author id survive a
/// restart of the server.
#[async_trait]
pub trait GuestStore: Send + Sync + 'static {
    /// The guest whose token hashes to `token_hash`, if it has not expired
    /// (used at or after `valid_since`); marks it used at `now` (an
    /// implementation may skip the write while the stored time is recent:
    /// expiry is counted in days).
    async fn reclaim_guest(
        &self,
        token_hash: &[u8; 32],
        valid_since: i64,
        now: i64,
    ) -> Result<Option<StoredGuest>, StorageError>;

    /// Stores `guest` as the holder of its name, unless a guest whose name
    /// looks like it (same key or shape) still holds it by `hold`: then
    /// nothing changes and `false` is returned. Guests whose hold has lapsed
    /// are replaced (their tokens no longer reclaim anything). Picks another
    /// author id if `guest`'s is taken.
    async fn register_guest(
        &self,
        guest: &mut StoredGuest,
        hold: HoldRule,
    ) -> Result<bool, StorageError>;

    /// Notes that the guest was seen at `now` (its holder just left).
    async fn touch_guest(&self, token_hash: &[u8; 32], now: i64) -> Result<(), StorageError>;

    /// Forgets guests whose token was last used before `valid_since`, then
    /// the least recently seen beyond `keep`; returns how many.
    async fn prune_guests(&self, valid_since: i64, keep: u64) -> Result<u64, StorageError>;
}
