//! Who may do what in which room: the authorization policy, as one pure
//! function ([`decide`]) of the actor, the operation and stored facts about
//! the room and the actor's place in it ([`Room`]).
//!
//! It depends on nothing but [`crate::domain`] and does no I/O: the caller
//! reads the facts (from `storage::RoomAccessStore`), asks, and acts on the
//! [`Decision`]. Keeping the rules in one function makes them one table to
//! read and test (`matrix.md`, checked cell by cell by `matrix.rs`), and the
//! same answer on every path that reaches a room.
//!
//! # The rules
//!
//! - **Kinds.** A `public` room is visible to everyone; anyone not banned
//!   may join it, read it and send to it, guests included. A `private` room
//!   exists only for its members; a `dm` only for its two accounts.
//! - **Not found, not forbidden.** Anything asked of a private room or a DM
//!   by someone who may not see it is [`Decision::NotFound`], the answer for
//!   a room that does not exist, so that its existence does not leak.
//!   [`Decision::Forbidden`] is for someone who sees the room but may not do
//!   this (a member kicking the owner, a blocked DM partner sending).
//! - **Guests** join public rooms, read them and send; nothing else.
//!   Only accounts create private rooms and open DMs.
//! - **Roles** rank `owner > moderator > member`. Kick, ban and deleting
//!   another's message take a moderator or the owner, acting on a strictly
//!   lower role: a moderator acts on members, not on other moderators nor
//!   on the owner. Unban takes a moderator. `set_role` is the owner's alone,
//!   and gives `member` or `moderator`: the owner's own role is never
//!   changed by it (a room always keeps its owner; handing ownership over is
//!   a store operation, `set_room_owner`, not a role change). People in a
//!   public room without a stored role rank as members.
//! - **Invitations** are for private rooms: the owner and moderators invite
//!   and create invite links. A public room needs none (`forbidden`); a DM
//!   never takes a third member (`forbidden` for its two accounts,
//!   `not_found` for everyone else).
//! - **Bans** keep an account out of a room: it may not join, read, send or
//!   act there (`forbidden` in a public room, which it still sees listed).
//!   A ban also ends a private room's membership, so a banned account sees
//!   a private room as anyone outside it does (`not_found`). Bans bind
//!   everyone, admins included.
//! - **DMs** have two members and no roles: no kick, ban, role change or
//!   moderation of the other's messages inside a DM. A block between the two
//!   (either way) stops sending in both directions and opening the DM;
//!   both can still join it and read its history, and delete their own
//!   messages.
//! - **Admins** (server administrators) act as moderators in every public
//!   and private room, whether members or not (they may join a private room
//!   by name to deal with abuse, although it is not listed for them unless
//!   they are members), and as owners of rooms without an owner (the
//!   default rooms). They are never in a DM they are not one of the two of.
//!   They may delete any room, a DM included.
//! - **Owners** may delete their own room. Deleting a DM is for admins only:
//!   it would take the other account's history too.
//! - **Deleting one's own message** is for accounts (guests have no lasting
//!   identity to prove authorship with), wherever they may read.
//!
//! The checks of a target's existence, the store's consistency (one owner
//! per room, no third DM member) and the protocol's state (joined or not)
//! are the caller's and the store's; this module answers only "may this
//! actor do this here".

#[cfg(test)]
mod matrix;

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// Someone without an account: a name held for a browser session.
    Guest,
    /// A signed-in account; `admin` for the server's administrators.
    Account { admin: bool },
}

impl Actor {
    fn is_admin(self) -> bool {
        matches!(self, Self::Account { admin: true })
    }
}

/// What kind of room it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomKind {
    Public,
    Private,
    Dm,
}

impl RoomKind {
    /// The stored (and wire) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Dm => "dm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Self::Public),
            "private" => Some(Self::Private),
            "dm" => Some(Self::Dm),
            _ => None,
        }
    }
}

/// A member's role in a room, ordered by rank: `Member < Moderator < Owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Member,
    Moderator,
    Owner,
}

impl Role {
    /// The stored (and wire) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Moderator => "moderator",
            Self::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(Self::Member),
            "moderator" => Some(Self::Moderator),
            "owner" => Some(Self::Owner),
            _ => None,
        }
    }
}

/// What the policy needs to know about a room and the actor's place in it,
/// read from storage by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub kind: RoomKind,
    /// The room has an owner account. Rooms without one (the default rooms)
    /// are owned by the server's admins.
    pub has_owner: bool,
    /// The actor's stored role in the room; `None`: not a member (always
    /// `None` for a guest, who has no stored membership).
    pub role: Option<Role>,
    /// The actor is banned from the room now (an expired ban is no ban).
    pub banned: bool,
    /// DMs only: a block stands between the two accounts, either way.
    pub blocked: bool,
}

impl Room {
    /// The facts of a DM about to be opened between the actor and another
    /// account, for [`Operation::OpenDm`]: a member of it, blocked or not.
    pub fn dm_to_open(blocked: bool) -> Self {
        Self {
            kind: RoomKind::Dm,
            has_owner: false,
            role: Some(Role::Member),
            banned: false,
            blocked,
        }
    }
}

/// What the actor asks to do. Operations on another person carry that
/// person's rank in the room ([`rank`] gives it for anyone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Have the room listed (`rooms`, `/api/rooms`, metrics labels).
    SeeInRooms,
    Join,
    History,
    Since,
    Send,
    /// Make a named account a member.
    Invite,
    /// Make a single-use invite link.
    CreateInvite,
    Kick {
        target: Role,
    },
    Ban {
        target: Role,
    },
    Unban,
    /// Give `target`'s holder the role `to`.
    SetRole {
        target: Role,
        to: Role,
    },
    DeleteOwnMessage,
    /// Delete a message whose author ranks `author` in the room.
    DeleteOthersMessage {
        author: Role,
    },
    /// Open (or find) the DM with another account; asked with
    /// [`Room::dm_to_open`].
    OpenDm,
    DeleteRoom,
    /// Needs no room: the room argument is ignored.
    CreatePrivateRoom,
}

/// The policy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The same answer as for a room that does not exist.
    NotFound,
    /// The actor sees the room but may not do this.
    Forbidden,
}

/// The rank someone has in a room for moderation: their stored role,
/// raised for admins to moderator (to owner in a room without an owner);
/// `None` for someone without a place in it. In a public room everyone
/// ranks at least as a member. Admins have no place in a DM they are not in.
pub fn rank(actor: Actor, room: &Room) -> Option<Role> {
    let stored = room.role;
    let floor = match room.kind {
        RoomKind::Dm => None,
        _ if actor.is_admin() && !room.has_owner => Some(Role::Owner),
        _ if actor.is_admin() => Some(Role::Moderator),
        RoomKind::Public => Some(Role::Member),
        RoomKind::Private => None,
    };
    stored.max(floor)
}

/// Whether `actor` may do `op` in `room` (`None`: no such room).
pub fn decide(actor: Actor, op: Operation, room: Option<&Room>) -> Decision {
    use Decision::{Allow, Forbidden, NotFound};

    let account = matches!(actor, Actor::Account { .. });
    match op {
        Operation::CreatePrivateRoom => return if account { Allow } else { Forbidden },
        Operation::OpenDm => {
            return match room {
                _ if !account => Forbidden,
                Some(room) if room.blocked => Forbidden,
                _ => Allow,
            };
        }
        _ => {}
    }
    let Some(room) = room else {
        return NotFound;
    };
    if op == Operation::DeleteRoom && actor.is_admin() {
        return Allow;
    }
    // Listed only where one belongs: admins moderate private rooms they
    // are told of, without every private room filling their list.
    let listed = room.kind == RoomKind::Public || room.role.is_some();
    let rank = rank(actor, room);
    let visible = room.kind == RoomKind::Public || rank.is_some();
    if !visible {
        return NotFound;
    }
    if op == Operation::SeeInRooms {
        return if listed { Allow } else { NotFound };
    }
    if room.banned {
        return Forbidden;
    }
    // Visible and not banned: `rank` is `Some` from here on.
    let rank = rank.unwrap_or(Role::Member);
    let moderates = |target: Role| rank >= Role::Moderator && target < rank;
    let allowed = match op {
        Operation::Join | Operation::History | Operation::Since => true,
        Operation::Send => !room.blocked,
        Operation::Invite | Operation::CreateInvite => {
            room.kind == RoomKind::Private && rank >= Role::Moderator
        }
        _ if !account => false,
        _ if room.kind == RoomKind::Dm => matches!(op, Operation::DeleteOwnMessage),
        Operation::Kick { target } | Operation::Ban { target } => moderates(target),
        Operation::DeleteOthersMessage { author } => moderates(author),
        Operation::Unban => rank >= Role::Moderator,
        Operation::SetRole { target, to } => {
            rank == Role::Owner && target != Role::Owner && to != Role::Owner
        }
        Operation::DeleteOwnMessage => true,
        Operation::DeleteRoom => room.role == Some(Role::Owner),
        Operation::SeeInRooms | Operation::OpenDm | Operation::CreatePrivateRoom => {
            unreachable!("answered above")
        }
    };
    if allowed { Allow } else { Forbidden }
}
