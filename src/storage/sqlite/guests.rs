//! [`GuestStore`] on SQLite: the `guests` table (migration 0003), through a
//! pool of its own without an fsync per commit (see `SqliteStore::guests_pool`):
//! a guest's row changes when its name is first claimed and when its holder
//! leaves, far off the message path.

use async_trait::async_trait;
use sqlx::FromRow;

use super::SqliteStore;
use crate::domain::AuthorId;
use crate::storage::{GuestStore, HoldRule, StorageError, StoredGuest};

#[derive(FromRow)]
struct GuestRow {
    token_hash: Vec<u8>,
    author_id: i64,
    name: String,
    name_key: String,
    name_shape: String,
    last_seen: i64,
}

impl GuestRow {
    fn into_guest(self) -> Option<StoredGuest> {
        Some(StoredGuest {
            token_hash: self.token_hash.try_into().ok()?,
            author: AuthorId::from_stored(self.author_id),
            name: self.name,
            name_key: self.name_key,
            name_shape: self.name_shape,
            last_seen: self.last_seen,
        })
    }
}

/// Whether a failed statement broke a UNIQUE constraint.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// How stale a guest's time of last use may be before a reclaim rewrites it.
const LAST_SEEN_PRECISION_MS: i64 = 60 * 60 * 1000;

/// Tries at picking a free author id before giving up (each a 1 in 2^53
/// chance of meeting a taken one times the number of guests).
const AUTHOR_ID_TRIES: usize = 4;

#[async_trait]
impl GuestStore for SqliteStore {
    async fn reclaim_guest(
        &self,
        token_hash: &[u8; 32],
        valid_since: i64,
        now: i64,
    ) -> Result<Option<StoredGuest>, StorageError> {
        let row: Option<GuestRow> = sqlx::query_as(
            "SELECT token_hash, author_id, name, name_key, name_shape, last_seen FROM guests \
             WHERE token_hash = ?1 AND last_seen >= ?2",
        )
        .bind(token_hash.as_slice())
        .bind(valid_since)
        .fetch_optional(&self.guests_pool)
        .await?;
        let Some(mut guest) = row.and_then(GuestRow::into_guest) else {
            return Ok(None);
        };
        // A write costs an fsync, and after a restart every page reclaims
        // at once: the time of use is only written when it has aged
        // (expiry is counted in days; the name's hold is counted from the
        // start or from when its holder leaves, written then).
        if guest.last_seen < now.saturating_sub(LAST_SEEN_PRECISION_MS) {
            sqlx::query("UPDATE guests SET last_seen = MAX(last_seen, ?2) WHERE token_hash = ?1")
                .bind(token_hash.as_slice())
                .bind(now)
                .execute(&self.guests_pool)
                .await?;
            guest.last_seen = now;
        }
        Ok(Some(guest))
    }

    async fn register_guest(
        &self,
        guest: &mut StoredGuest,
        hold: HoldRule,
    ) -> Result<bool, StorageError> {
        for _ in 0..AUTHOR_ID_TRIES {
            // IMMEDIATE: the check and the replacement happen under the
            // write lock, so two newcomers cannot both take a free name.
            // (A transaction dropped unfinished is rolled back.)
            let mut tx = self.guests_pool.begin_with("BEGIN IMMEDIATE").await?;
            match register(&mut tx, guest, hold).await {
                Ok(true) => {
                    tx.commit().await?;
                    return Ok(true);
                }
                Ok(false) => return Ok(false),
                Err(e) if is_unique_violation(&e) => guest.author = AuthorId::random(),
                Err(e) => return Err(e.into()),
            }
        }
        Err(StorageError::AuthorIdsExhausted)
    }

    async fn touch_guest(&self, token_hash: &[u8; 32], now: i64) -> Result<(), StorageError> {
        sqlx::query("UPDATE guests SET last_seen = MAX(last_seen, ?2) WHERE token_hash = ?1")
            .bind(token_hash.as_slice())
            .bind(now)
            .execute(&self.guests_pool)
            .await?;
        Ok(())
    }

    async fn prune_guests(&self, valid_since: i64, keep: u64) -> Result<u64, StorageError> {
        let expired = sqlx::query("DELETE FROM guests WHERE last_seen < ?1")
            .bind(valid_since)
            .execute(&self.guests_pool)
            .await?
            .rows_affected();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM guests")
            .fetch_one(&self.guests_pool)
            .await?;
        let excess = count.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX));
        if excess <= 0 {
            return Ok(expired);
        }
        let evicted = sqlx::query(
            "DELETE FROM guests WHERE token_hash IN \
             (SELECT token_hash FROM guests ORDER BY last_seen LIMIT ?1)",
        )
        .bind(excess)
        .execute(&self.guests_pool)
        .await?
        .rows_affected();
        Ok(expired + evicted)
    }
}

/// The body of [`SqliteStore::register_guest`], inside its transaction.
async fn register(
    conn: &mut sqlx::SqliteConnection,
    guest: &StoredGuest,
    hold: HoldRule,
) -> Result<bool, sqlx::Error> {
    let holder: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM guests WHERE (name_key = ?1 OR name_shape = ?2) \
         AND last_seen >= ?3 AND last_seen >= ?4 LIMIT 1",
    )
    .bind(&guest.name_key)
    .bind(&guest.name_shape)
    .bind(hold.seen_since)
    .bind(hold.valid_since)
    .fetch_optional(&mut *conn)
    .await?;
    if holder.is_some() {
        return Ok(false);
    }
    // Whoever held a look-alike of the name before has let it lapse.
    sqlx::query("DELETE FROM guests WHERE name_key = ?1 OR name_shape = ?2")
        .bind(&guest.name_key)
        .bind(&guest.name_shape)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO guests (token_hash, author_id, name, name_key, name_shape, last_seen) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(guest.token_hash.as_slice())
    .bind(guest.author.to_stored())
    .bind(&guest.name)
    .bind(&guest.name_key)
    .bind(&guest.name_shape)
    .bind(guest.last_seen)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}
