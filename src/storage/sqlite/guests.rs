//! [`GuestStore`] on SQLite: the `guests` table (migration 0003).
//!
//! Reads go through the sqlx pool `SqliteStore::guests_pool`. Writes come
//! in batches (`identity` queues claims and leavings and saves them
//! together): each batch is one transaction on a rusqlite connection of
//! their own, run on a blocking thread — one hand-off per batch, statements
//! prepared once — with `synchronous = NORMAL`, no fsync per commit (WAL
//! mode keeps it safe from a process crash; the next fsync of a message
//! commit makes it durable; a power cut may lose the newest claims).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use sqlx::FromRow;

use super::SqliteStore;
use crate::domain::AuthorId;
use crate::storage::{GuestStore, GuestWrite, StorageError, StoredGuest};

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

/// The connection guests' batches are written on (see the module doc).
pub(super) type GuestWriter = Arc<Mutex<Connection>>;

/// Opens `path` (created and migrated) for guests' writes.
pub(super) fn open_writer(path: &Path) -> Result<GuestWriter, StorageError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", "normal")?;
    // SQLite's own checkpoint after its commits (its default, 1,000
    // pages): a flood of new names writes the WAL without any message
    // commit nudging the checkpoint thread, and must not grow it unbounded.
    conn.pragma_update(None, "wal_autocheckpoint", 1000)?;
    Ok(Arc::new(Mutex::new(conn)))
}

macro_rules! columns {
    () => {
        "token_hash, author_id, name, name_key, name_shape, last_seen"
    };
}

#[async_trait]
impl GuestStore for SqliteStore {
    async fn find_guest(
        &self,
        token_hash: &[u8; 32],
        valid_since: i64,
    ) -> Result<Option<StoredGuest>, StorageError> {
        let row: Option<GuestRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM guests WHERE token_hash = ?1 AND last_seen >= ?2"
        ))
        .bind(token_hash.as_slice())
        .bind(valid_since)
        .fetch_optional(&self.guests_pool)
        .await?;
        Ok(row.and_then(GuestRow::into_guest))
    }

    async fn name_holders(
        &self,
        name_key: &str,
        name_shape: &str,
        valid_since: i64,
    ) -> Result<Vec<StoredGuest>, StorageError> {
        // Each side searches its own unique index.
        let rows: Vec<GuestRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM guests WHERE name_key = ?1 AND last_seen >= ?3 UNION SELECT ",
            columns!(),
            " FROM guests WHERE name_shape = ?2 AND last_seen >= ?3"
        ))
        .bind(name_key)
        .bind(name_shape)
        .bind(valid_since)
        .fetch_all(&self.guests_pool)
        .await?;
        Ok(rows.into_iter().filter_map(GuestRow::into_guest).collect())
    }

    async fn save_guests(&self, writes: Vec<GuestWrite>) -> Result<(), StorageError> {
        if writes.is_empty() {
            return Ok(());
        }
        let writer = self.guest_writer.clone();
        let skipped = tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|e| e.into_inner());
            save(&mut conn, &writes)
        })
        .await
        .map_err(|e| {
            StorageError::unavailable("saving guests did not finish", Some(Box::new(e)))
        })??;
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "guests not stored: their author id was taken (their tokens reclaim nothing after a restart)"
            );
        }
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

/// One transaction applying `writes` in order; returns how many
/// registrations were skipped for a taken author id.
fn save(conn: &mut Connection, writes: &[GuestWrite]) -> Result<usize, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut skipped = 0;
    {
        let mut replace =
            tx.prepare_cached("DELETE FROM guests WHERE name_key = ?1 OR name_shape = ?2")?;
        // A taken author id (or, as unlikely, token) is left alone: without
        // a conflict target, DO NOTHING covers every unique index, and the
        // name's own were cleared just before.
        let mut insert = tx.prepare_cached(
            "INSERT INTO guests (token_hash, author_id, name, name_key, name_shape, last_seen) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )?;
        let mut seen = tx.prepare_cached(
            "UPDATE guests SET last_seen = MAX(last_seen, ?2) WHERE token_hash = ?1",
        )?;
        for write in writes {
            match write {
                GuestWrite::Register(g) => {
                    replace.execute(params![g.name_key, g.name_shape])?;
                    let stored = insert.execute(params![
                        g.token_hash.as_slice(),
                        g.author.to_stored(),
                        g.name,
                        g.name_key,
                        g.name_shape,
                        g.last_seen
                    ])?;
                    if stored == 0 {
                        skipped += 1;
                    }
                }
                GuestWrite::Seen { token_hash, at } => {
                    seen.execute(params![token_hash.as_slice(), at])?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(skipped)
}
