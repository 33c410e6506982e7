-- Look-alike room names: each room's key, the confusable skeleton of its
-- name (Unicode TS #39), unique. SQL cannot compute it: the server fills
-- the key of every room that has none when it starts (`SqliteStore::connect`).
-- Rooms that already looked alike before keys existed keep a NULL key
-- (NULLs are distinct in a unique index): they stay as they were, and no
-- new room may look like the first of them.
ALTER TABLE rooms ADD COLUMN name_key TEXT;
CREATE UNIQUE INDEX rooms_by_key ON rooms (name_key);

-- The identity that sent a message (an opaque random id, below 2^53);
-- NULL for messages stored before identities were.
ALTER TABLE messages ADD COLUMN author_id INTEGER;

-- Guests: people without an account, known by the session token their
-- browser keeps. Only the token's SHA-256 is stored. A guest's name is
-- held for its token while the token is valid and its holder was seen
-- recently (src/identity/); `name_key` and `name_shape` are the two
-- look-alike keys of the name (src/domain.rs), unique: one holder per name.
CREATE TABLE guests (
    token_hash BLOB    NOT NULL PRIMARY KEY,
    author_id  INTEGER NOT NULL UNIQUE,
    name       TEXT    NOT NULL,
    name_key   TEXT    NOT NULL UNIQUE,
    name_shape TEXT    NOT NULL UNIQUE,
    -- Unix milliseconds: when the token was last used, or its holder last left.
    last_seen  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX guests_by_last_seen ON guests (last_seen);
