-- Accounts: people who signed up with a name and a password. The name is
-- unique by its two look-alike keys (src/domain.rs), as guests' names are;
-- a guest may not take an account's name, nor an account a name a guest
-- holds online (src/identity/). Only an argon2id hash of the password is
-- stored (a PHC string, parameters included). `author_id` is stored with
-- every message the account sends, like a guest's.
CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY,
    author_id     INTEGER NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    name_key      TEXT    NOT NULL UNIQUE,
    name_shape    TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    admin         INTEGER NOT NULL DEFAULT 0,
    -- A disabled account cannot sign in and has no sessions.
    disabled      INTEGER NOT NULL DEFAULT 0,
    -- Unix milliseconds.
    created_at    INTEGER NOT NULL
);

-- Signed-in browsers: the cookie's 128-bit token is never stored, only its
-- SHA-256. A session unused for 30 days has expired.
CREATE TABLE account_sessions (
    token_hash BLOB    NOT NULL PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    last_used  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX account_sessions_by_account ON account_sessions (account_id);
CREATE INDEX account_sessions_by_last_used ON account_sessions (last_used);
