-- Who may see and do what in a room: the stored facts the policy
-- (src/access/) decides from — a room's kind and owner, memberships and
-- roles, bans, invite links, blocks between accounts, direct messages —
-- and tombstones of deleted messages.

-- Every existing room is public. `owner_id` is NULL for a room without an
-- owner account: the default rooms and rooms guests created, which the
-- server's admins own. No row says so: being an admin is a flag of the
-- account (`accounts.admin`), and the policy gives admins the owner's
-- rights in rooms without an owner.
ALTER TABLE rooms ADD COLUMN kind TEXT NOT NULL DEFAULT 'public'
    CHECK (kind IN ('public', 'private', 'dm'));
ALTER TABLE rooms ADD COLUMN owner_id INTEGER REFERENCES accounts (id);

-- Accounts' places in rooms. A private room's members are exactly these
-- rows; a DM's are its two accounts; a public room needs a row only for a
-- role above `member` (anyone may be in it). The owner also has a row,
-- role `owner`, one per room, the same account as `rooms.owner_id`: both
-- are written in one transaction. Rows go with their room.
CREATE TABLE room_members (
    room_id    INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    account_id INTEGER NOT NULL REFERENCES accounts (id),
    role       TEXT    NOT NULL CHECK (role IN ('owner', 'moderator', 'member')),
    -- Unix milliseconds.
    joined_at  INTEGER NOT NULL,
    PRIMARY KEY (room_id, account_id)
) WITHOUT ROWID;
-- An account's rooms (its room list).
CREATE INDEX room_members_by_account ON room_members (account_id);
CREATE UNIQUE INDEX room_members_one_owner ON room_members (room_id) WHERE role = 'owner';

-- An account banned from a room may not join it; a ban ends its
-- membership. `until` NULL: until unbanned; otherwise a ban whose `until`
-- has passed is no ban (it is not deleted: a later ban replaces it).
-- `banned_by` NULL: by the operator.
CREATE TABLE room_bans (
    room_id    INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    account_id INTEGER NOT NULL REFERENCES accounts (id),
    banned_by  INTEGER REFERENCES accounts (id),
    banned_at  INTEGER NOT NULL,
    until      INTEGER,
    PRIMARY KEY (room_id, account_id)
) WITHOUT ROWID;

-- Invite links to private rooms: a 128-bit random token, of which only the
-- SHA-256 is stored. Valid for 7 days (`expires_at`), once: redeeming sets
-- `used_at` and `used_by` in the transaction that makes the member.
CREATE TABLE room_invites (
    token_hash BLOB    NOT NULL PRIMARY KEY,
    room_id    INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    created_by INTEGER NOT NULL REFERENCES accounts (id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    used_by    INTEGER REFERENCES accounts (id)
) WITHOUT ROWID;
CREATE INDEX room_invites_by_room ON room_invites (room_id);

-- `blocker_id` blocked `blocked_id`: their DM takes no messages either way.
CREATE TABLE account_blocks (
    blocker_id INTEGER NOT NULL REFERENCES accounts (id),
    blocked_id INTEGER NOT NULL REFERENCES accounts (id),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id),
    CHECK (blocker_id <> blocked_id)
) WITHOUT ROWID;

-- Direct messages: one room per unordered pair of accounts, the pair
-- stored in order (`low_account < high_account`) so that the primary key
-- makes it one room whichever side opens it first.
--
-- A DM's room is a row of `rooms` like any other (messages, seqs and the
-- hub's addressing work unchanged), of kind `dm`, named `dm:` and 32
-- random hexadecimal digits (128 bits; src/storage/sqlite/access.rs): no
-- one can name it without having been told, it says nothing of who is in
-- it, and it cannot be the name of a public room that exists (names are
-- unique; a clash is drawn again). Its name is never listed to anyone but
-- its two accounts, who are shown each other's name instead.
CREATE TABLE dm_rooms (
    low_account  INTEGER NOT NULL REFERENCES accounts (id),
    high_account INTEGER NOT NULL REFERENCES accounts (id),
    room_id      INTEGER NOT NULL UNIQUE REFERENCES rooms (id) ON DELETE CASCADE,
    PRIMARY KEY (low_account, high_account),
    CHECK (low_account < high_account)
) WITHOUT ROWID;

-- Tombstones: a deleted message keeps its row, id, seq and author (so
-- seqs stay contiguous and `history`/`since` can show where it was), but
-- its text is replaced by '' — gone from the database — and who deleted
-- it, when, is recorded. A stored text is never empty otherwise (a
-- message's text has 1–4000 characters), so '' alone marks a tombstone.
ALTER TABLE messages ADD COLUMN deleted_at INTEGER;
ALTER TABLE messages ADD COLUMN deleted_by INTEGER REFERENCES accounts (id);
