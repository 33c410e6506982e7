-- Room lifecycle: rooms nobody uses are removed, so their number stays
-- bounded by use, not by how many were ever created.
--
-- `last_message` is when the room last had a message (0: never); the join
-- page lists rooms with a recent one. `last_active` (0002) now also moves
-- while people are in a room, so that "empty and silent for a while" can be
-- read from it.
ALTER TABLE rooms ADD COLUMN last_message INTEGER NOT NULL DEFAULT 0;
UPDATE rooms SET last_message = COALESCE(
    (SELECT MAX(ts) FROM messages WHERE messages.room_id = rooms.id), 0);
-- Partial: a room without messages is not in it, so creating a room writes
-- no page of it (a flood of created rooms already costs the WAL ~12 KB a
-- room, for the table and its two other indexes).
CREATE INDEX rooms_by_message ON rooms (last_message DESC) WHERE last_message > 0;

-- Rooms an operator removed (`chatterpro admin delete-room`), for the
-- running server to notice: it removes the room's members and forgets what
-- it remembers of the room. Entries are dropped after a day.
CREATE TABLE room_deletions (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    deleted_at INTEGER NOT NULL
);
