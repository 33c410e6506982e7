-- The nonce a sender chose for each message it sent (`send.nonce`), so that a
-- resend after a lost connection is answered with the first copy's receipt
-- instead of being stored again. Written in the transaction that stores the
-- message: one is never stored without the other. Rows older than the window
-- (24 h) are ignored by lookups and deleted in the background; `ts` is the
-- message's. `sender` is an opaque identity (the sender's author id).
CREATE TABLE send_nonces (
    sender     TEXT    NOT NULL,
    nonce      TEXT    NOT NULL,
    room_id    INTEGER NOT NULL REFERENCES rooms (id),
    seq        INTEGER NOT NULL,
    message_id TEXT    NOT NULL,
    ts         INTEGER NOT NULL,
    PRIMARY KEY (sender, nonce)
) WITHOUT ROWID;
CREATE INDEX send_nonces_by_ts ON send_nonces (ts);
