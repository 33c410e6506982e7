//! Accounts and their signed-in sessions, behind the [`AccountStore`] trait.
//!
//! The store keeps what `identity` and the HTTP layer decide: it never hashes
//! a password or a token (it is handed the argon2id PHC string and the
//! token's SHA-256), never judges a password, and knows nothing of cookies.
//! Names are unique by their two look-alike keys ([`Nickname::key`] and
//! [`Nickname::shape`](crate::domain::Nickname::shape)), as guests' are: a
//! new account whose name looks like a stored one is refused with
//! [`CreateAccountError::NameTaken`].
//!
//! [`Nickname::key`]: crate::domain::Nickname::key

use async_trait::async_trait;

use super::StorageError;
use crate::domain::{AccountId, AuthorId};

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAccount {
    pub id: AccountId,
    /// Stored with every message the account sends.
    pub author: AuthorId,
    /// The name as registered (NFC, trimmed).
    pub name: String,
    pub name_key: String,
    pub name_shape: String,
    /// The argon2id hash, a PHC string (parameters and salt included).
    pub password_hash: String,
    pub admin: bool,
    /// A disabled account cannot sign in and has no sessions.
    pub disabled: bool,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// What [`AccountStore::create_account`] is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    pub name: String,
    pub name_key: String,
    pub name_shape: String,
    pub password_hash: String,
    pub admin: bool,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// One signed-in browser: the SHA-256 of its cookie's token, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSession {
    pub token_hash: [u8; 32],
    pub account: AccountId,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds: the session expires a while after this.
    pub last_used: i64,
}

/// Why an account was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateAccountError {
    /// A stored account's name looks like this one (same key or shape):
    /// nothing was stored. Holds that account's name.
    #[error("the name looks like the account {0}'s")]
    NameTaken(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Accounts and their sessions. Every write is one transaction.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Stores a new account with a fresh random author id, unless a stored
    /// account's name has the same key or shape.
    async fn create_account(
        &self,
        account: NewAccount,
    ) -> Result<StoredAccount, CreateAccountError>;

    /// The account whose name has this key, else the one whose name has
    /// this shape (disabled accounts included).
    async fn find_account(
        &self,
        name_key: &str,
        name_shape: &str,
    ) -> Result<Option<StoredAccount>, StorageError>;

    /// Replaces the password hash; returns whether the account exists.
    async fn set_password_hash(&self, id: AccountId, hash: &str) -> Result<bool, StorageError>;

    /// Makes the account a server admin or not; returns whether it exists.
    async fn set_admin(&self, id: AccountId, admin: bool) -> Result<bool, StorageError>;

    /// Disables the account and deletes its sessions, in one transaction;
    /// returns the token hashes of the sessions deleted (`None` if there is
    /// no such account).
    async fn disable_account(&self, id: AccountId) -> Result<Option<Vec<[u8; 32]>>, StorageError>;

    /// Stores a new session.
    async fn create_session(&self, session: AccountSession) -> Result<(), StorageError>;

    /// The session of `token_hash`, with its account, if it was last used at
    /// or after `valid_since` (it has not expired) and its account is not
    /// disabled.
    async fn find_session(
        &self,
        token_hash: &[u8; 32],
        valid_since: i64,
    ) -> Result<Option<(AccountSession, StoredAccount)>, StorageError>;

    /// Records a use of the session at `at`; an earlier time than the stored
    /// one changes nothing.
    async fn touch_session(&self, token_hash: &[u8; 32], at: i64) -> Result<(), StorageError>;

    /// Deletes one session; returns whether it existed.
    async fn revoke_session(&self, token_hash: &[u8; 32]) -> Result<bool, StorageError>;

    /// Deletes every session of the account but `except` (if given);
    /// returns the token hashes deleted.
    async fn revoke_sessions(
        &self,
        account: AccountId,
        except: Option<&[u8; 32]>,
    ) -> Result<Vec<[u8; 32]>, StorageError>;

    /// Deletes the sessions last used before `valid_since`; returns how many.
    async fn prune_sessions(&self, valid_since: i64) -> Result<u64, StorageError>;
}
