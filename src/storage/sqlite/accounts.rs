//! [`AccountStore`] on SQLite: the `accounts` and `account_sessions` tables
//! (migration 0006), through the sqlx pool with `synchronous = FULL`.
//! Account writes are rare (a sign-up, a sign-in, a session touched at most
//! once a minute), so they take no path of their own.

use async_trait::async_trait;
use sqlx::FromRow;

use super::SqliteStore;
use crate::domain::{AccountId, AuthorId};
use crate::storage::{
    AccountSession, AccountStore, CreateAccountError, NewAccount, StorageError, StoredAccount,
};

#[derive(FromRow)]
struct AccountRow {
    id: i64,
    author_id: i64,
    name: String,
    name_key: String,
    name_shape: String,
    password_hash: String,
    admin: bool,
    disabled: bool,
    created_at: i64,
}

impl From<AccountRow> for StoredAccount {
    fn from(row: AccountRow) -> Self {
        Self {
            id: AccountId(row.id),
            author: AuthorId::from_stored(row.author_id),
            name: row.name,
            name_key: row.name_key,
            name_shape: row.name_shape,
            password_hash: row.password_hash,
            admin: row.admin,
            disabled: row.disabled,
            created_at: row.created_at,
        }
    }
}

#[derive(FromRow)]
struct SessionRow {
    token_hash: Vec<u8>,
    account_id: i64,
    created_at: i64,
    last_used: i64,
}

impl SessionRow {
    fn into_session(self) -> Option<AccountSession> {
        Some(AccountSession {
            token_hash: self.token_hash.try_into().ok()?,
            account: AccountId(self.account_id),
            created_at: self.created_at,
            last_used: self.last_used,
        })
    }
}

macro_rules! account_columns {
    ($prefix:literal) => {
        concat!(
            $prefix,
            "id, ",
            $prefix,
            "author_id, ",
            $prefix,
            "name, ",
            $prefix,
            "name_key, ",
            $prefix,
            "name_shape, ",
            $prefix,
            "password_hash, ",
            $prefix,
            "admin, ",
            $prefix,
            "disabled, ",
            $prefix,
            "created_at"
        )
    };
}

/// Tries at a fresh author id when the random one is taken (a 1 in 2^53
/// chance per account) before giving up.
const AUTHOR_ID_TRIES: usize = 4;

fn hashes(rows: Vec<Vec<u8>>) -> Vec<[u8; 32]> {
    rows.into_iter().filter_map(|h| h.try_into().ok()).collect()
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        account: NewAccount,
    ) -> Result<StoredAccount, CreateAccountError> {
        for _ in 0..AUTHOR_ID_TRIES {
            let author = AuthorId::random();
            // Without a conflict target: a taken key, shape or author id
            // stores nothing; which one it was is asked below.
            let row: Option<AccountRow> = sqlx::query_as(concat!(
                "INSERT INTO accounts (author_id, name, name_key, name_shape, password_hash, \
                 admin, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT DO NOTHING RETURNING ",
                account_columns!("")
            ))
            .bind(author.to_stored())
            .bind(&account.name)
            .bind(&account.name_key)
            .bind(&account.name_shape)
            .bind(&account.password_hash)
            .bind(account.admin)
            .bind(account.created_at)
            .fetch_optional(&self.pool)
            .await
            .map_err(StorageError::from)?;
            if let Some(row) = row {
                return Ok(row.into());
            }
            if let Some(holder) = self
                .find_account(&account.name_key, &account.name_shape)
                .await?
            {
                return Err(CreateAccountError::NameTaken(holder.name));
            }
        }
        Err(StorageError::conflict("no free author id for a new account", None).into())
    }

    async fn find_account(
        &self,
        name_key: &str,
        name_shape: &str,
    ) -> Result<Option<StoredAccount>, StorageError> {
        // Each side searches its own unique index; the key's match first.
        let row: Option<AccountRow> = sqlx::query_as(concat!(
            "SELECT ",
            account_columns!(""),
            ", 0 AS rank FROM accounts WHERE name_key = ?1 UNION ALL SELECT ",
            account_columns!(""),
            ", 1 AS rank FROM accounts WHERE name_shape = ?2 ORDER BY rank LIMIT 1"
        ))
        .bind(name_key)
        .bind(name_shape)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Into::into))
    }

    async fn set_password_hash(&self, id: AccountId, hash: &str) -> Result<bool, StorageError> {
        let n = sqlx::query("UPDATE accounts SET password_hash = ?2 WHERE id = ?1")
            .bind(id.0)
            .bind(hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn set_admin(&self, id: AccountId, admin: bool) -> Result<bool, StorageError> {
        let n = sqlx::query("UPDATE accounts SET admin = ?2 WHERE id = ?1")
            .bind(id.0)
            .bind(admin)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn disable_account(&self, id: AccountId) -> Result<Option<Vec<[u8; 32]>>, StorageError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let n = sqlx::query("UPDATE accounts SET disabled = 1 WHERE id = ?1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        let revoked: Vec<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM account_sessions WHERE account_id = ?1 RETURNING token_hash",
        )
        .bind(id.0)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(hashes(revoked)))
    }

    async fn create_session(&self, session: AccountSession) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO account_sessions (token_hash, account_id, created_at, last_used) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(session.token_hash.as_slice())
        .bind(session.account.0)
        .bind(session.created_at)
        .bind(session.last_used)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_session(
        &self,
        token_hash: &[u8; 32],
        valid_since: i64,
    ) -> Result<Option<(AccountSession, StoredAccount)>, StorageError> {
        let mut tx = self.pool.begin().await?;
        let session: Option<SessionRow> = sqlx::query_as(
            "SELECT token_hash, account_id, created_at, last_used FROM account_sessions \
             WHERE token_hash = ?1 AND last_used >= ?2",
        )
        .bind(token_hash.as_slice())
        .bind(valid_since)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(session) = session.and_then(SessionRow::into_session) else {
            return Ok(None);
        };
        let account: Option<AccountRow> = sqlx::query_as(concat!(
            "SELECT ",
            account_columns!(""),
            " FROM accounts WHERE id = ?1 AND disabled = 0"
        ))
        .bind(session.account.0)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(account.map(|a| (session, a.into())))
    }

    async fn touch_session(&self, token_hash: &[u8; 32], at: i64) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE account_sessions SET last_used = MAX(last_used, ?2) WHERE token_hash = ?1",
        )
        .bind(token_hash.as_slice())
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoke_session(&self, token_hash: &[u8; 32]) -> Result<bool, StorageError> {
        let n = sqlx::query("DELETE FROM account_sessions WHERE token_hash = ?1")
            .bind(token_hash.as_slice())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn revoke_sessions(
        &self,
        account: AccountId,
        except: Option<&[u8; 32]>,
    ) -> Result<Vec<[u8; 32]>, StorageError> {
        // An empty blob matches no token hash: "all but none".
        let except: &[u8] = except.map_or(&[], |h| h.as_slice());
        let revoked: Vec<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM account_sessions WHERE account_id = ?1 AND token_hash != ?2 \
             RETURNING token_hash",
        )
        .bind(account.0)
        .bind(except)
        .fetch_all(&self.pool)
        .await?;
        Ok(hashes(revoked))
    }

    async fn prune_sessions(&self, valid_since: i64) -> Result<u64, StorageError> {
        let n = sqlx::query("DELETE FROM account_sessions WHERE last_used < ?1")
            .bind(valid_since)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }
}
