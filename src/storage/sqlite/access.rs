//! [`RoomAccessStore`] on the sqlx pool: not a hot path (a few writes per
//! join, invite or moderation, never per message). Writes that read first
//! run in `BEGIN IMMEDIATE` transactions: SQLite's write lock is taken
//! before the read, so two racing requests (both sides opening a DM, two
//! people redeeming one invite) are serialised and the second sees the
//! first's result.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::{Sqlite, SqliteConnection, Transaction};

use super::SqliteStore;
use crate::access::{Role, RoomKind};
use crate::domain::{AccountId, AuthorId, RoomName};
use crate::storage::access::{
    DM_ROOM_PREFIX, Dm, INVITE_VALID_MS, InviteToken, MemberRoom, MessageAuthor, Redeemed,
    RoomAccess, RoomAccessStore,
};
use crate::storage::{RoomCreation, StorageError};

/// Draws of a DM room name before giving up: a clash of 128 random bits
/// with an existing name does not happen twice.
const DM_NAME_DRAWS: usize = 3;

fn no_room(room: &RoomName) -> StorageError {
    StorageError::invalid(format!("no room {:?}", room.as_str()), None)
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn read_kind(s: &str) -> Result<RoomKind, StorageError> {
    RoomKind::parse(s)
        .ok_or_else(|| StorageError::corrupt(format!("unknown room kind {s:?}"), None))
}

fn read_role(s: &str) -> Result<Role, StorageError> {
    Role::parse(s).ok_or_else(|| StorageError::corrupt(format!("unknown role {s:?}"), None))
}

/// The room's id and kind.
async fn find_room(
    conn: &mut SqliteConnection,
    room: &RoomName,
) -> Result<Option<(i64, RoomKind)>, StorageError> {
    let row: Option<(i64, String)> = sqlx::query_as("SELECT id, kind FROM rooms WHERE name = ?1")
        .bind(room.as_str())
        .fetch_optional(conn)
        .await?;
    row.map(|(id, kind)| Ok((id, read_kind(&kind)?)))
        .transpose()
}

async fn require_room(
    tx: &mut Transaction<'static, Sqlite>,
    room: &RoomName,
) -> Result<(i64, RoomKind), StorageError> {
    find_room(tx, room).await?.ok_or_else(|| no_room(room))
}

async fn role_in(
    conn: &mut SqliteConnection,
    room_id: i64,
    account: AccountId,
) -> Result<Option<Role>, StorageError> {
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM room_members WHERE room_id = ?1 AND account_id = ?2")
            .bind(room_id)
            .bind(account.0)
            .fetch_optional(conn)
            .await?;
    role.as_deref().map(read_role).transpose()
}

async fn banned_in(
    conn: &mut SqliteConnection,
    room_id: i64,
    account: AccountId,
    now: i64,
) -> Result<bool, StorageError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM room_bans WHERE room_id = ?1 AND account_id = ?2 \
         AND (until IS NULL OR until > ?3)",
    )
    .bind(room_id)
    .bind(account.0)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

async fn insert_member(
    conn: &mut SqliteConnection,
    room_id: i64,
    account: AccountId,
    role: Role,
    now: i64,
) -> Result<bool, StorageError> {
    let added = sqlx::query(
        "INSERT INTO room_members (room_id, account_id, role, joined_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (room_id, account_id) DO NOTHING",
    )
    .bind(room_id)
    .bind(account.0)
    .bind(role.as_str())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(added.rows_affected() == 1)
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

#[async_trait]
impl RoomAccessStore for SqliteStore {
    async fn create_private_room(
        &self,
        room: &RoomName,
        owner: AccountId,
    ) -> Result<RoomCreation, StorageError> {
        let now = now_ms();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // As `create_room`: neither the same name nor a look-alike makes a row.
        let created = sqlx::query(
            "INSERT INTO rooms (name, name_key, created_at, last_active, kind, owner_id) \
             VALUES (?1, ?2, ?3, ?3, 'private', ?4) ON CONFLICT DO NOTHING",
        )
        .bind(room.as_str())
        .bind(room.key())
        .bind(now)
        .bind(owner.0)
        .execute(&mut *tx)
        .await?;
        if created.rows_affected() == 1 {
            let id = created.last_insert_rowid();
            insert_member(&mut tx, id, owner, Role::Owner, now).await?;
            tx.commit().await?;
            return Ok(RoomCreation::Created);
        }
        let same: Option<String> = sqlx::query_scalar(
            "SELECT name FROM rooms WHERE name = ?1 UNION ALL \
             SELECT name FROM rooms WHERE name_key = ?2 LIMIT 1",
        )
        .bind(room.as_str())
        .bind(room.key())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match same {
            Some(name) if name != room.as_str() => RoomCreation::LooksLike(name),
            _ => RoomCreation::Existed,
        })
    }

    async fn room_access(&self, room: &RoomName) -> Result<Option<RoomAccess>, StorageError> {
        let row: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT kind, owner_id FROM rooms WHERE name = ?1")
                .bind(room.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(kind, owner)| {
            Ok(RoomAccess {
                kind: read_kind(&kind)?,
                owner: owner.map(AccountId),
            })
        })
        .transpose()
    }

    async fn set_room_kind(&self, room: &RoomName, kind: RoomKind) -> Result<(), StorageError> {
        if kind == RoomKind::Dm {
            return Err(StorageError::invalid(
                "a room becomes a DM only by open_dm",
                None,
            ));
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let (id, current) = require_room(&mut tx, room).await?;
        if current == RoomKind::Dm {
            return Err(StorageError::invalid("a DM stays a DM", None));
        }
        sqlx::query("UPDATE rooms SET kind = ?2 WHERE id = ?1")
            .bind(id)
            .bind(kind.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_room_owner(
        &self,
        room: &RoomName,
        owner: Option<AccountId>,
    ) -> Result<(), StorageError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let (id, kind) = require_room(&mut tx, room).await?;
        if kind == RoomKind::Dm {
            return Err(StorageError::invalid("a DM has no owner", None));
        }
        // The previous owner first, so that the one-owner index never sees two.
        sqlx::query(
            "UPDATE room_members SET role = 'moderator' WHERE room_id = ?1 AND role = 'owner'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(owner) = owner {
            if banned_in(&mut tx, id, owner, now_ms()).await? {
                return Err(StorageError::conflict(
                    "a banned account cannot own the room",
                    None,
                ));
            }
            sqlx::query(
                "INSERT INTO room_members (room_id, account_id, role, joined_at) \
                 VALUES (?1, ?2, 'owner', ?3) \
                 ON CONFLICT (room_id, account_id) DO UPDATE SET role = 'owner'",
            )
            .bind(id)
            .bind(owner.0)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE rooms SET owner_id = ?2 WHERE id = ?1")
            .bind(id)
            .bind(owner.map(|o| o.0))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_member(
        &self,
        room: &RoomName,
        account: AccountId,
        role: Role,
    ) -> Result<bool, StorageError> {
        if role == Role::Owner {
            return Err(StorageError::invalid(
                "ownership is given by set_room_owner",
                None,
            ));
        }
        let now = now_ms();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let (id, kind) = require_room(&mut tx, room).await?;
        if kind == RoomKind::Dm {
            return Err(StorageError::invalid("a DM takes no third member", None));
        }
        if banned_in(&mut tx, id, account, now).await? {
            return Err(StorageError::conflict(
                "the account is banned from the room",
                None,
            ));
        }
        let added = insert_member(&mut tx, id, account, role, now).await?;
        tx.commit().await?;
        Ok(added)
    }

    async fn remove_member(
        &self,
        room: &RoomName,
        account: AccountId,
    ) -> Result<bool, StorageError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let (id, _) = require_room(&mut tx, room).await?;
        match role_in(&mut tx, id, account).await? {
            None => return Ok(false),
            Some(Role::Owner) => {
                return Err(StorageError::conflict(
                    "the owner cannot leave its room",
                    None,
                ));
            }
            Some(_) => {}
        }
        sqlx::query("DELETE FROM room_members WHERE room_id = ?1 AND account_id = ?2")
            .bind(id)
            .bind(account.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn member_role(
        &self,
        room: &RoomName,
        account: AccountId,
    ) -> Result<Option<Role>, StorageError> {
        let role: Option<String> = sqlx::query_scalar(
            "SELECT m.role FROM room_members m JOIN rooms r ON r.id = m.room_id \
             WHERE r.name = ?1 AND m.account_id = ?2",
        )
        .bind(room.as_str())
        .bind(account.0)
        .fetch_optional(&self.pool)
        .await?;
        role.as_deref().map(read_role).transpose()
    }

    async fn set_role(
        &self,
        room: &RoomName,
        account: AccountId,
        role: Role,
    ) -> Result<bool, StorageError> {
        if role == Role::Owner {
            return Err(StorageError::invalid(
                "ownership is given by set_room_owner",
                None,
            ));
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let (id, kind) = require_room(&mut tx, room).await?;
        if kind == RoomKind::Dm {
            return Err(StorageError::invalid("a DM has no roles", None));
        }
        match role_in(&mut tx, id, account).await? {
            None => return Ok(false),
            Some(Role::Owner) => {
                return Err(StorageError::conflict(
                    "the owner's role changes only with the ownership",
                    None,
                ));
            }
            Some(_) => {}
        }
        sqlx::query("UPDATE room_members SET role = ?3 WHERE room_id = ?1 AND account_id = ?2")
            .bind(id)
            .bind(account.0)
            .bind(role.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn members(&self, room: &RoomName) -> Result<Vec<(AccountId, Role)>, StorageError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT m.account_id, m.role FROM room_members m JOIN rooms r ON r.id = m.room_id \
             WHERE r.name = ?1",
        )
        .bind(room.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut members = rows
            .into_iter()
            .map(|(id, role)| Ok((AccountId(id), read_role(&role)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        members.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(members)
    }

    async fn rooms_of(&self, account: AccountId) -> Result<Vec<MemberRoom>, StorageError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT r.name, r.kind, m.role FROM room_members m JOIN rooms r ON r.id = m.room_id \
             WHERE m.account_id = ?1 ORDER BY r.name",
        )
        .bind(account.0)
        .fetch_all(&self.pool)
        .await?;
        let mut rooms = Vec::with_capacity(rows.len());
        for (name, kind, role) in rows {
            // A stored name that no longer parses is not a room one can enter.
            let Ok(room) = RoomName::parse(&name) else {
                continue;
            };
            rooms.push(MemberRoom {
                room,
                kind: read_kind(&kind)?,
                role: read_role(&role)?,
            });
        }
        Ok(rooms)
    }

    async fn ban(
        &self,
        room: &RoomName,
        account: AccountId,
        by: Option<AccountId>,
        until: Option<i64>,
        now: i64,
    ) -> Result<(), StorageError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let (id, _) = require_room(&mut tx, room).await?;
        if role_in(&mut tx, id, account).await? == Some(Role::Owner) {
            return Err(StorageError::conflict("the owner cannot be banned", None));
        }
        sqlx::query(
            "INSERT INTO room_bans (room_id, account_id, banned_by, banned_at, until) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (room_id, account_id) DO UPDATE SET \
             banned_by = excluded.banned_by, banned_at = excluded.banned_at, until = excluded.until",
        )
        .bind(id)
        .bind(account.0)
        .bind(by.map(|b| b.0))
        .bind(now)
        .bind(until)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM room_members WHERE room_id = ?1 AND account_id = ?2")
            .bind(id)
            .bind(account.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unban(
        &self,
        room: &RoomName,
        account: AccountId,
        now: i64,
    ) -> Result<bool, StorageError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let (id, _) = require_room(&mut tx, room).await?;
        let in_force = banned_in(&mut tx, id, account, now).await?;
        sqlx::query("DELETE FROM room_bans WHERE room_id = ?1 AND account_id = ?2")
            .bind(id)
            .bind(account.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(in_force)
    }

    async fn is_banned(
        &self,
        room: &RoomName,
        account: AccountId,
        now: i64,
    ) -> Result<bool, StorageError> {
        let mut conn = self.pool.acquire().await?;
        let Some((id, _)) = find_room(&mut conn, room).await? else {
            return Ok(false);
        };
        banned_in(&mut conn, id, account, now).await
    }

    async fn create_invite(
        &self,
        room: &RoomName,
        by: AccountId,
        now: i64,
    ) -> Result<InviteToken, StorageError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let (id, kind) = require_room(&mut tx, room).await?;
        if kind == RoomKind::Dm {
            return Err(StorageError::invalid("a DM takes no third member", None));
        }
        let token = format!("{:032x}", rand::random::<u128>());
        sqlx::query(
            "INSERT INTO room_invites (token_hash, room_id, created_by, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&token_hash(&token)[..])
        .bind(id)
        .bind(by.0)
        .bind(now)
        .bind(now.saturating_add(INVITE_VALID_MS))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(InviteToken(token))
    }

    async fn redeem_invite(
        &self,
        token: &str,
        account: AccountId,
        now: i64,
    ) -> Result<Redeemed, StorageError> {
        let hash = token_hash(token);
        // IMMEDIATE: of two redemptions, the second reads the first's `used_at`.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let invite: Option<(i64, String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT r.id, r.name, r.kind, i.expires_at, i.used_at FROM room_invites i \
             JOIN rooms r ON r.id = i.room_id WHERE i.token_hash = ?1",
        )
        .bind(&hash[..])
        .fetch_optional(&mut *tx)
        .await?;
        let Some((room_id, name, kind, expires_at, used_at)) = invite else {
            return Ok(Redeemed::Unknown);
        };
        let Ok(room) = RoomName::parse(&name) else {
            return Ok(Redeemed::Unknown);
        };
        if read_kind(&kind)? == RoomKind::Dm {
            return Ok(Redeemed::Unknown);
        }
        if used_at.is_some() {
            return Ok(Redeemed::Used);
        }
        if expires_at <= now {
            return Ok(Redeemed::Expired);
        }
        if banned_in(&mut tx, room_id, account, now).await? {
            return Ok(Redeemed::Banned);
        }
        if !insert_member(&mut tx, room_id, account, Role::Member, now).await? {
            return Ok(Redeemed::AlreadyMember(room));
        }
        let used = sqlx::query(
            "UPDATE room_invites SET used_at = ?2, used_by = ?3 \
             WHERE token_hash = ?1 AND used_at IS NULL",
        )
        .bind(&hash[..])
        .bind(now)
        .bind(account.0)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            // Cannot happen under the write lock; if it did, nothing is kept.
            return Ok(Redeemed::Used);
        }
        tx.commit().await?;
        Ok(Redeemed::Joined(room))
    }

    async fn block(
        &self,
        blocker: AccountId,
        blocked: AccountId,
        now: i64,
    ) -> Result<(), StorageError> {
        if blocker == blocked {
            return Err(StorageError::invalid(
                "an account cannot block itself",
                None,
            ));
        }
        sqlx::query(
            "INSERT INTO account_blocks (blocker_id, blocked_id, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(blocker.0)
        .bind(blocked.0)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unblock(&self, blocker: AccountId, blocked: AccountId) -> Result<bool, StorageError> {
        let removed =
            sqlx::query("DELETE FROM account_blocks WHERE blocker_id = ?1 AND blocked_id = ?2")
                .bind(blocker.0)
                .bind(blocked.0)
                .execute(&self.pool)
                .await?;
        Ok(removed.rows_affected() == 1)
    }

    async fn is_blocked(&self, a: AccountId, b: AccountId) -> Result<bool, StorageError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM account_blocks WHERE (blocker_id = ?1 AND blocked_id = ?2) \
             OR (blocker_id = ?2 AND blocked_id = ?1) LIMIT 1",
        )
        .bind(a.0)
        .bind(b.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn open_dm(&self, a: AccountId, b: AccountId, now: i64) -> Result<Dm, StorageError> {
        if a == b {
            return Err(StorageError::invalid("a DM is between two accounts", None));
        }
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        // IMMEDIATE: two first opens of one pair are serialised, and the
        // second finds the first's room. The primary key of `dm_rooms`
        // would refuse a second room anyway.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let found: Option<String> = sqlx::query_scalar(
            "SELECT r.name FROM dm_rooms d JOIN rooms r ON r.id = d.room_id \
             WHERE d.low_account = ?1 AND d.high_account = ?2",
        )
        .bind(low.0)
        .bind(high.0)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(name) = found {
            let room = RoomName::parse(&name)
                .map_err(|_| StorageError::corrupt(format!("a DM named {name:?}"), None))?;
            return Ok(Dm {
                room,
                created: false,
            });
        }
        for _ in 0..DM_NAME_DRAWS {
            let room = RoomName::parse(&format!("{DM_ROOM_PREFIX}{:032x}", rand::random::<u128>()))
                .map_err(|_| StorageError::invalid("a DM name does not parse", None))?;
            let created = sqlx::query(
                "INSERT INTO rooms (name, name_key, created_at, last_active, kind) \
                 VALUES (?1, ?2, ?3, ?3, 'dm') ON CONFLICT DO NOTHING",
            )
            .bind(room.as_str())
            .bind(room.key())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if created.rows_affected() == 0 {
                continue;
            }
            let id = created.last_insert_rowid();
            sqlx::query(
                "INSERT INTO dm_rooms (low_account, high_account, room_id) VALUES (?1, ?2, ?3)",
            )
            .bind(low.0)
            .bind(high.0)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            insert_member(&mut tx, id, low, Role::Member, now).await?;
            insert_member(&mut tx, id, high, Role::Member, now).await?;
            tx.commit().await?;
            return Ok(Dm {
                room,
                created: true,
            });
        }
        Err(StorageError::conflict("no free name for a DM", None))
    }

    async fn message_author(
        &self,
        room: &RoomName,
        id: &str,
    ) -> Result<Option<MessageAuthor>, StorageError> {
        let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT m.author_id, m.deleted_at FROM messages m JOIN rooms r ON r.id = m.room_id \
             WHERE r.name = ?1 AND m.id = ?2",
        )
        .bind(room.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(author, deleted_at)| MessageAuthor {
            author: author.map(AuthorId::from_stored),
            deleted: deleted_at.is_some(),
        }))
    }

    async fn delete_message(
        &self,
        room: &RoomName,
        id: &str,
        by: AccountId,
        now: i64,
    ) -> Result<Option<MessageAuthor>, StorageError> {
        let mut conn = self.pool.acquire().await?;
        // The old text is overwritten with zeros in the database file, not
        // only unlinked: "gone from the database" must hold for someone
        // reading the file. For this connection only, and reset after.
        sqlx::query("PRAGMA secure_delete = ON")
            .execute(&mut *conn)
            .await?;
        let result = async {
            let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
            let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
                "SELECT m.author_id, m.deleted_at FROM messages m \
                 JOIN rooms r ON r.id = m.room_id WHERE r.name = ?1 AND m.id = ?2",
            )
            .bind(room.as_str())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((author, deleted_at)) = row else {
                return Ok(None);
            };
            if deleted_at.is_none() {
                sqlx::query(
                    "UPDATE messages SET body = '', deleted_at = ?2, deleted_by = ?3 \
                     WHERE id = ?1 AND deleted_at IS NULL",
                )
                .bind(id)
                .bind(now)
                .bind(by.0)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Some(MessageAuthor {
                author: author.map(AuthorId::from_stored),
                deleted: deleted_at.is_some(),
            }))
        }
        .await;
        sqlx::query("PRAGMA secure_delete = OFF")
            .execute(&mut *conn)
            .await?;
        result
    }
}

/// What only SQLite has: a database file someone may read.
#[cfg(test)]
mod tests {
    use crate::domain::{AccountId, MessageText, RoomName};
    use crate::storage::contract::{message, now};
    use crate::storage::sqlite::SqliteStore;
    use crate::storage::{MessageStore, NewMessage, RoomAccessStore};

    async fn open(dir: &tempfile::TempDir) -> SqliteStore {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        SqliteStore::connect(&url).await.unwrap()
    }

    async fn account(store: &SqliteStore) -> AccountId {
        AccountId(
            sqlx::query_scalar(
                "INSERT INTO accounts (author_id, name, name_key, name_shape, password_hash, \
                 created_at) VALUES (1, 'alice', 'alice', 'alice', '', 0) RETURNING id",
            )
            .fetch_one(&store.pool)
            .await
            .unwrap(),
        )
    }

    /// The database file and its WAL, with everything committed copied
    /// into the file and the WAL emptied.
    async fn file_bytes(store: &SqliteStore, dir: &tempfile::TempDir) -> Vec<u8> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&store.pool)
            .await
            .unwrap();
        let mut bytes = std::fs::read(dir.path().join("t.db")).unwrap();
        bytes.extend(std::fs::read(dir.path().join("t.db-wal")).unwrap_or_default());
        bytes
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    #[tokio::test]
    async fn a_deleted_text_is_gone_from_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let alice = account(&store).await;
        // Short, and long enough to spill onto overflow pages.
        let short = "the launch code is 7f3a9c";
        let long = format!("{} {}", "overflowing secret 41d2e8", "x".repeat(3_900));
        for (id, text) in [("m1", short), ("m2", long.as_str())] {
            store
                .append(vec![NewMessage {
                    text: MessageText::parse(text).unwrap(),
                    ..message("hall", id)
                }])
                .await
                .unwrap();
        }
        let before = file_bytes(&store, &dir).await;
        assert!(contains(&before, "7f3a9c") && contains(&before, "41d2e8"));
        let hall = RoomName::parse("hall").unwrap();
        for id in ["m1", "m2"] {
            store
                .delete_message(&hall, id, alice, now())
                .await
                .unwrap()
                .unwrap();
        }
        let after = file_bytes(&store, &dir).await;
        assert!(
            !contains(&after, "7f3a9c"),
            "the short text is still in the file"
        );
        assert!(
            !contains(&after, "41d2e8"),
            "the long text is still in the file"
        );
    }

    #[tokio::test]
    async fn only_an_invite_tokens_digest_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let alice = account(&store).await;
        let team = RoomName::parse("team").unwrap();
        store.create_private_room(&team, alice).await.unwrap();
        let token = store.create_invite(&team, alice, now()).await.unwrap();
        assert_eq!(token.0.len(), 32, "128 bits in hex");
        assert!(!contains(&file_bytes(&store, &dir).await, &token.0));
        assert_eq!(format!("{token:?}"), "InviteToken(..)", "never in logs");
    }
}
