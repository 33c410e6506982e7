-- Rooms and their messages. `last_seq` is the room's sequence counter: a
-- message takes `last_seq + 1` in the same transaction that stores it, so a
-- room's seqs are contiguous and never reused, even across crashes.
CREATE TABLE rooms (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE messages (
    room_id INTEGER NOT NULL REFERENCES rooms (id),
    seq     INTEGER NOT NULL,
    id      TEXT    NOT NULL UNIQUE,
    author  TEXT    NOT NULL,
    body    TEXT    NOT NULL,
    ts      INTEGER NOT NULL,
    PRIMARY KEY (room_id, seq)
) WITHOUT ROWID;
