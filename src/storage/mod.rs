//! Durable storage of rooms and messages, behind the [`MessageStore`] trait.
//!
//! The trait is shaped by what the chat needs (append a batch, catch up a
//! joiner, page back through history), not by tables, so a PostgreSQL
//! implementation can sit beside [`SqliteStore`] without the hub changing.
//! It speaks in domain types ([`Message`], never the wire's `ChatMessage`),
//! and its errors say what the caller can do about them ([`StorageError`]),
//! not which driver failed. SQL lives only in this module. Guests' stored
//! identities are behind a trait of their own, [`GuestStore`], used by
//! `identity`; accounts and their sessions behind [`AccountStore`]; rooms'
//! kinds, members, roles, bans, invites, blocks and DMs behind
//! [`RoomAccessStore`] (`access`), the facts `crate::access` decides from.
//!
//! What every backend must do is one test suite, `contract`, generic over
//! the backend: a new backend's tests call it with a factory of its own
//! (`sqlite` does). Futures returned by a store need not make progress
//! unless polled: callers that overlap a store call with other work (the
//! hub's commit task) spawn it.

pub mod access;
mod accounts;
#[cfg(test)]
pub(crate) mod contract;
mod sqlite;

pub use access::RoomAccessStore;
pub use accounts::{AccountSession, AccountStore, CreateAccountError, NewAccount, StoredAccount};
pub use sqlite::SqliteStore;

use async_trait::async_trait;

use crate::domain::{AuthorId, Message, MessageText, Nickname, Nonce, RoomName};

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
    Stored(Message),
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
    pub messages: Vec<Message>,
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

/// A driver's own error, kept as the `source` of a [`StorageError`] for logs.
pub type ErrorSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, in terms a caller can act on — never which driver or
/// thread it came from: each backend maps its driver's errors to these once,
/// and keeps the driver's error as the [`source`](std::error::Error::source)
/// (log it with `error = &e as &dyn std::error::Error` to see it).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend cannot answer now: down, busy past its timeout, out of
    /// space, an I/O failure, its worker gone. The same request may succeed
    /// later; a failed write may or may not have been applied only where the
    /// method says so (an append's batch is all or nothing).
    #[error("storage is unavailable: {reason}")]
    Unavailable {
        reason: String,
        #[source]
        source: Option<ErrorSource>,
    },
    /// A uniqueness rule or a concurrent change refused the write: nothing
    /// was changed; the caller decides (other values, or report the clash).
    #[error("storage refused a conflicting write: {reason}")]
    Conflict {
        reason: String,
        #[source]
        source: Option<ErrorSource>,
    },
    /// Stored data cannot be read back as what it should be (a damaged
    /// file, a schema this server does not know). Retrying will not help.
    #[error("stored data cannot be read back: {reason}")]
    Corrupt {
        reason: String,
        #[source]
        source: Option<ErrorSource>,
    },
    /// The store refuses the request itself (an unsupported URL, a value it
    /// cannot hold). Retrying the same request will not help.
    #[error("storage refused the request: {reason}")]
    Invalid {
        reason: String,
        #[source]
        source: Option<ErrorSource>,
    },
}

impl StorageError {
    pub fn unavailable(reason: impl Into<String>, source: Option<ErrorSource>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            source,
        }
    }

    pub fn conflict(reason: impl Into<String>, source: Option<ErrorSource>) -> Self {
        Self::Conflict {
            reason: reason.into(),
            source,
        }
    }

    pub fn corrupt(reason: impl Into<String>, source: Option<ErrorSource>) -> Self {
        Self::Corrupt {
            reason: reason.into(),
            source,
        }
    }

    pub fn invalid(reason: impl Into<String>, source: Option<ErrorSource>) -> Self {
        Self::Invalid {
            reason: reason.into(),
            source,
        }
    }

    /// Whether the same request may succeed later ([`StorageError::Unavailable`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Creates the room if it does not exist and no room looks like it.
    async fn create_room(&self, room: &RoomName) -> Result<RoomCreation, StorageError>;

    async fn room_exists(&self, room: &RoomName) -> Result<bool, StorageError>;

    /// Up to `limit` names of rooms with a message at or after `since`
    /// (Unix ms), the latest message first; of rooms whose last messages
    /// share a millisecond, the newest room first. Rooms without messages
    /// are never listed, however recently created; nor private rooms and DMs.
    async fn recent_rooms(&self, since: i64, limit: u32) -> Result<Vec<String>, StorageError>;

    /// Records that people are in these rooms at `now` (Unix ms): they are
    /// in use, and [`StaleRooms`] counts from here.
    async fn touch_rooms(&self, rooms: &[RoomName], now: i64) -> Result<(), StorageError>;

    /// Up to `limit` rooms that `stale` would remove, least recently used
    /// first. Only public rooms are ever stale.
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
    ) -> Result<Vec<Message>, StorageError>;

    /// Answers when the database does (for health checks).
    async fn ping(&self) -> Result<(), StorageError>;
}

/// A guest identity as stored: who holds a name, by the digest of their
/// reclaim token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGuest {
    /// SHA-256 of the reclaim token.
    pub token_hash: [u8; 32],
    pub author: AuthorId,
    pub name: String,
    /// [`Nickname::key`] and [`Nickname::shape`] of `name`.
    pub name_key: String,
    pub name_shape: String,
    /// Unix milliseconds: last use of the token, or its holder last leaving.
    pub last_seen: i64,
}

/// One change to stored guests, applied by [`GuestStore::save_guests`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestWrite {
    /// The guest holds its name from now on. Stored guests whose name looks
    /// like it (same key or shape) are replaced: the caller has decided that
    /// their hold lapsed. If its author id is taken (a 1 in 2^53 chance per
    /// stored guest) it is not stored, and its token reclaims nothing after
    /// a restart.
    Register(StoredGuest),
    /// The guest of `token_hash` was seen at `at` (its token used, or its
    /// holder leaving). An earlier time than the stored one changes nothing.
    Seen { token_hash: [u8; 32], at: i64 },
}

/// Guests' identities, stored so that a name and its author id survive a
/// restart of the server. Deciding who holds a name is `identity`'s; the
/// store finds and keeps guests, and applies the writes `identity` queues,
/// many per transaction.
#[async_trait]
pub trait GuestStore: Send + Sync + 'static {
    /// The guest whose token hashes to `token_hash`, if the token was last
    /// used at or after `valid_since` (it has not expired).
    async fn find_guest(
        &self,
        token_hash: &[u8; 32],
        valid_since: i64,
    ) -> Result<Option<StoredGuest>, StorageError>;

    /// The unexpired guests (seen at or after `valid_since`) whose name has
    /// this [`Nickname::key`] or [`Nickname::shape`]: at most two.
    async fn name_holders(
        &self,
        name_key: &str,
        name_shape: &str,
        valid_since: i64,
    ) -> Result<Vec<StoredGuest>, StorageError>;

    /// Applies `writes` in order, in one transaction: all of them or none.
    async fn save_guests(&self, writes: Vec<GuestWrite>) -> Result<(), StorageError>;

    /// Forgets guests whose token was last used before `valid_since`, then
    /// the least recently seen beyond `keep`; returns how many.
    async fn prune_guests(&self, valid_since: i64, keep: u64) -> Result<u64, StorageError>;
}
