-- When a room last saw a message (or was created), so room lists can show
-- the active rooms first and stay short however many rooms exist.
ALTER TABLE rooms ADD COLUMN last_active INTEGER NOT NULL DEFAULT 0;
UPDATE rooms SET last_active = COALESCE(
    (SELECT MAX(ts) FROM messages WHERE messages.room_id = rooms.id), created_at);
CREATE INDEX rooms_by_activity ON rooms (last_active DESC);
