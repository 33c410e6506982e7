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

use crate::domain::{AuthorId, MessageText, Nickname, Nonce, RoomName};
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

/// Which rooms are removed for lack of use: those created, or last seen in
/// use (a message, or people in them), before a cutoff. Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleRooms {
    /// A room that never had a message, last in use before this.
    pub unused_before: i64,
    /// Any room last in use before this.
    pub idle_before: i64,
}

/// A room an operator removed, as recorded for running servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomDeletion {
    /// Increases with each removal: a server asks for those after the last it saw.
    pub id: i64,
    pub room: RoomName,
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

    /// Up to `limit` names of rooms with a message at or after `since`
    /// (Unix ms), the latest message first; of rooms whose last messages
    /// share a millisecond, the newest room first. Rooms without messages
    /// are never listed, however recently created.
    async fn recent_rooms(&self, since: i64, limit: u32) -> Result<Vec<String>, StorageError>;

    /// Records that people are in these rooms at `now` (Unix ms): they are
    /// in use, and [`StaleRooms`] counts from here.
    async fn touch_rooms(&self, rooms: &[RoomName], now: i64) -> Result<(), StorageError>;

    /// Up to `limit` rooms that `stale` would remove, least recently used first.
    async fn stale_rooms(
        &self,
        stale: StaleRooms,
        limit: u32,
    ) -> Result<Vec<RoomName>, StorageError>;

    /// Deletes the messages of those of `rooms` that `stale` still removes,
    /// oldest first, in transactions of a few thousand rows, leaving the
    /// rooms and their newest messages for [`MessageStore::delete_stale_rooms`]:
    /// removing a room with a long history then never holds the database's
    /// write lock (or the hub's) for long. Returns how many were deleted.
    async fn delete_stale_messages(
        &self,
        stale: StaleRooms,
        rooms: &[RoomName],
    ) -> Result<u64, StorageError>;

    /// Removes those of `rooms` that `stale` still removes (checked again
    /// here, in the same transaction), with their messages; returns them.
    async fn delete_stale_rooms(
        &self,
        stale: StaleRooms,
        rooms: &[RoomName],
    ) -> Result<Vec<RoomName>, StorageError>;

    /// Removes a room and its messages, whatever its state; returns whether
    /// it existed. With `announce`, the removal is also recorded for running
    /// servers to notice ([`MessageStore::room_deletions`]): an operator's
    /// removal, made outside the server.
    async fn delete_room(&self, room: &RoomName, announce: bool) -> Result<bool, StorageError>;

    /// Announced removals with an id above `after`, oldest first.
    async fn room_deletions(&self, after: i64) -> Result<Vec<RoomDeletion>, StorageError>;

    /// The id of the newest announced removal (0 if none): where a starting
    /// server begins watching.
    async fn last_room_deletion(&self) -> Result<i64, StorageError>;

    /// Drops the records of announced removals made before `before` (Unix ms).
    async fn forget_room_deletions(&self, before: i64) -> Result<(), StorageError>;

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
