//! The stored facts of room access, behind [`RoomAccessStore`]: a room's
//! kind and owner, accounts' memberships and roles, bans, invite links,
//! blocks between accounts, direct messages, and message tombstones.
//!
//! The store keeps the facts consistent (one owner per room and it is a
//! member; a DM has exactly its two accounts; a banned account is no
//! member; an invite is redeemed once), atomically where two people can
//! race. Whether someone *may* do something is `access::decide`'s, read
//! from these facts by the caller: the store does not know who asks.

use async_trait::async_trait;

use super::{RoomCreation, StorageError};
use crate::access::{Role, RoomKind};
use crate::domain::{AccountId, AuthorId, RoomName};

/// How long an invite link is valid: 7 days, in milliseconds.
pub const INVITE_VALID_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// The prefix of every DM room's name; the rest is 32 random hexadecimal
/// digits. Not a name to offer people for public rooms.
pub const DM_ROOM_PREFIX: &str = "dm:";

/// A room's kind and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomAccess {
    pub kind: RoomKind,
    /// `None`: no owner account (the server's admins own the room).
    pub owner: Option<AccountId>,
}

/// A room an account has a place in, for its room list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRoom {
    pub room: RoomName,
    pub kind: RoomKind,
    pub role: Role,
}

/// An invite link's secret, returned once by [`RoomAccessStore::create_invite`];
/// only its SHA-256 is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteToken(pub String);

impl std::fmt::Debug for InviteToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret: never in logs.
        f.write_str("InviteToken(..)")
    }
}

/// What redeeming an invite did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// The account is a member of the room now; the invite is used up.
    Joined(RoomName),
    /// The account was a member already; the invite stays unused.
    AlreadyMember(RoomName),
    /// The account is banned from the room; the invite stays unused.
    Banned,
    /// No invite has this token (or its room is gone).
    Unknown,
    Expired,
    /// Someone redeemed it before.
    Used,
}

/// The DM of two accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dm {
    pub room: RoomName,
    /// Made by this call (the first open of the pair).
    pub created: bool,
}

/// A stored message's author, for deciding who may delete it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageAuthor {
    /// `None` for messages stored before identities were.
    pub author: Option<AuthorId>,
    /// It is a tombstone already.
    pub deleted: bool,
}

/// Rooms' kinds, owners, members, bans, invites, blocks and DMs. Methods
/// naming a room that does not exist fail with [`StorageError::Invalid`],
/// except the lookups, which answer `None` or `false`; those changing what
/// the consistency rules protect fail with [`StorageError::Conflict`] and
/// change nothing.
#[async_trait]
pub trait RoomAccessStore: Send + Sync + 'static {
    /// Creates a private room owned (and joined, as `owner`) by `owner`, if
    /// no room has this name or looks like it; otherwise changes nothing.
    async fn create_private_room(
        &self,
        room: &RoomName,
        owner: AccountId,
    ) -> Result<RoomCreation, StorageError>;

    /// The room's kind and owner; `None` if there is no such room.
    async fn room_access(&self, room: &RoomName) -> Result<Option<RoomAccess>, StorageError>;

    /// Makes a public room private or a private one public. A DM stays a DM
    /// and no room becomes one: [`StorageError::Invalid`].
    async fn set_room_kind(&self, room: &RoomName, kind: RoomKind) -> Result<(), StorageError>;

    /// Hands the room to `owner` (a member as `owner` from now on), or to
    /// the server's admins (`None`). The previous owner stays a member as a
    /// moderator. Not for a DM ([`StorageError::Invalid`]).
    async fn set_room_owner(
        &self,
        room: &RoomName,
        owner: Option<AccountId>,
    ) -> Result<(), StorageError>;

    /// Makes `account` a member with `role`; `false` if it was one already
    /// (its role unchanged). `Owner` is given only by
    /// [`RoomAccessStore::set_room_owner`], and a DM takes no third member:
    /// [`StorageError::Invalid`]. A banned account: [`StorageError::Conflict`].
    async fn add_member(
        &self,
        room: &RoomName,
        account: AccountId,
        role: Role,
    ) -> Result<bool, StorageError>;

    /// Ends `account`'s membership; `false` if it had none. The owner
    /// cannot be removed ([`StorageError::Conflict`]): the room is handed
    /// over first.
    async fn remove_member(
        &self,
        room: &RoomName,
        account: AccountId,
    ) -> Result<bool, StorageError>;

    /// `account`'s role in the room, if it is a member.
    async fn member_role(
        &self,
        room: &RoomName,
        account: AccountId,
    ) -> Result<Option<Role>, StorageError>;

    /// Changes a member's role to `Member` or `Moderator`; `false` if it is
    /// no member. `Owner` ([`StorageError::Invalid`]) and the owner's own
    /// role ([`StorageError::Conflict`]) change only with the ownership.
    async fn set_role(
        &self,
        room: &RoomName,
        account: AccountId,
        role: Role,
    ) -> Result<bool, StorageError>;

    /// The room's members and their roles, highest role first, then by account.
    async fn members(&self, room: &RoomName) -> Result<Vec<(AccountId, Role)>, StorageError>;

    /// The rooms `account` has a place in: its private rooms and DMs, and
    /// public rooms where it holds a role. By name.
    async fn rooms_of(&self, account: AccountId) -> Result<Vec<MemberRoom>, StorageError>;

    /// Bans `account` from the room until `until` (Unix ms; `None`: until
    /// unbanned), by `by` (`None`: the operator), and ends its membership, in
    /// one transaction. Banning again replaces the ban. The owner cannot be
    /// banned ([`StorageError::Conflict`]).
    async fn ban(
        &self,
        room: &RoomName,
        account: AccountId,
        by: Option<AccountId>,
        until: Option<i64>,
        now: i64,
    ) -> Result<(), StorageError>;

    /// Lifts a ban; `false` if there was none in force at `now`.
    async fn unban(
        &self,
        room: &RoomName,
        account: AccountId,
        now: i64,
    ) -> Result<bool, StorageError>;

    /// Whether `account` is banned from the room at `now`.
    async fn is_banned(
        &self,
        room: &RoomName,
        account: AccountId,
        now: i64,
    ) -> Result<bool, StorageError>;

    /// A new single-use invite to the room, by `by`, valid for
    /// [`INVITE_VALID_MS`] from `now`. Not for a DM ([`StorageError::Invalid`]).
    async fn create_invite(
        &self,
        room: &RoomName,
        by: AccountId,
        now: i64,
    ) -> Result<InviteToken, StorageError>;

    /// Redeems an invite for `account` at `now`: makes it a member and uses
    /// the invite up, atomically — of concurrent redemptions of one token,
    /// one joins and the others get [`Redeemed::Used`].
    async fn redeem_invite(
        &self,
        token: &str,
        account: AccountId,
        now: i64,
    ) -> Result<Redeemed, StorageError>;

    /// `blocker` blocks `blocked` (again: no change). Blocking oneself is
    /// [`StorageError::Invalid`].
    async fn block(
        &self,
        blocker: AccountId,
        blocked: AccountId,
        now: i64,
    ) -> Result<(), StorageError>;

    /// Lifts `blocker`'s block of `blocked`; `false` if there was none.
    async fn unblock(&self, blocker: AccountId, blocked: AccountId) -> Result<bool, StorageError>;

    /// Whether either of the two blocked the other.
    async fn is_blocked(&self, a: AccountId, b: AccountId) -> Result<bool, StorageError>;

    /// The DM of `a` and `b`, made with both as members on first use. The
    /// same room whichever side asks, also when both ask at once. With
    /// oneself: [`StorageError::Invalid`].
    async fn open_dm(&self, a: AccountId, b: AccountId, now: i64) -> Result<Dm, StorageError>;

    /// The author of message `id` of the room, if the room has it.
    async fn message_author(
        &self,
        room: &RoomName,
        id: &str,
    ) -> Result<Option<MessageAuthor>, StorageError>;

    /// Turns message `id` into a tombstone: its text removed from the
    /// database, who deleted it and when recorded; `history` and `catch_up`
    /// give it with an empty text. Returns the message's author as before
    /// the call (`deleted` if it was a tombstone already, which stays as
    /// it was), or `None` if the room has no such message.
    async fn delete_message(
        &self,
        room: &RoomName,
        id: &str,
        by: AccountId,
        now: i64,
    ) -> Result<Option<MessageAuthor>, StorageError>;
}
