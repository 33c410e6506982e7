//! [`NameClaims`] for guests: online names in memory, guests in storage.
//!
//! One `std::sync::Mutex` guards who is online; it is never held across a
//! storage call. Every path that grants a name re-checks who is online
//! under it just before granting, and storage serialises the grants of
//! free names (`register_guest` is one write transaction), so two
//! newcomers never both get a name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{Claim, ClaimError, NameClaims};
use crate::clock;
use crate::domain::{AuthorId, Nickname};
use crate::storage::{GuestStore, HoldRule, StoredGuest};

/// How often expired guests are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Settings from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct IdentityConfig {
    /// A token unused for this long no longer claims anything (`--session-ttl`).
    pub session_ttl: Duration,
    /// How long an offline guest's name stays theirs (`--name-hold`).
    pub name_hold: Duration,
    /// Most guests stored; beyond, the least recently seen are forgotten at
    /// the next hourly pruning (`--max-guests`).
    pub max_guests: u64,
}

pub struct GuestClaims {
    store: Arc<dyn GuestStore>,
    config: IdentityConfig,
    /// When this server started (Unix ms): guests stored before may have
    /// been online when the previous one stopped.
    started_at: i64,
    online: Mutex<Online>,
}

#[derive(Default)]
struct Online {
    /// By [`Nickname::key`].
    by_key: HashMap<String, OnlineGuest>,
    /// [`Nickname::shape`] -> key, for look-alikes that differ in key;
    /// only for names whose shape is not their key (most lower-case names'
    /// are): every online person's entries are memory each one holds.
    keys_by_shape: HashMap<String, String>,
}

struct OnlineGuest {
    /// The name's shape, when it is not its key.
    shape: Option<String>,
    token_hash: [u8; 32],
    author: AuthorId,
    conns: usize,
}

impl Online {
    /// The key under which someone is online with a look-alike of the name
    /// (same key, or same shape): the key their claims release.
    fn holder_key(&self, key: &str, shape: &str) -> Option<String> {
        if self.by_key.contains_key(key) {
            return Some(key.to_owned());
        }
        if let Some(key) = self.keys_by_shape.get(shape) {
            return Some(key.clone());
        }
        // A holder whose shape is its key has no `keys_by_shape` entry.
        self.by_key
            .get(shape)
            .filter(|holder| holder.shape.is_none())
            .map(|_| shape.to_owned())
    }

    fn add(
        &mut self,
        key: String,
        shape: String,
        guest: impl FnOnce(Option<String>) -> OnlineGuest,
    ) {
        let shape = (shape != key).then_some(shape);
        if let Some(shape) = &shape {
            self.keys_by_shape.insert(shape.clone(), key.clone());
        }
        self.by_key.insert(key, guest(shape));
    }
}

fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 192 random bits, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl GuestClaims {
    /// Starts answering claims, and forgets expired guests now and hourly
    /// while `self` lives.
    pub fn start(store: Arc<dyn GuestStore>, config: IdentityConfig) -> Arc<Self> {
        let claims = Arc::new(Self {
            store,
            config,
            started_at: clock::now_ms(),
            online: Mutex::new(Online::default()),
        });
        let weak = Arc::downgrade(&claims);
        tokio::spawn(prune(weak));
        claims
    }

    fn lock(&self) -> MutexGuard<'_, Online> {
        self.online.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn valid_since(&self, now: i64) -> i64 {
        now.saturating_sub(millis(self.config.session_ttl))
    }

    fn hold_rule(&self, now: i64) -> HoldRule {
        let valid_since = self.valid_since(now);
        let hold_from = now.saturating_sub(millis(self.config.name_hold));
        let seen_since = if self.config.name_hold.is_zero() {
            // No hold: only online names are taken.
            i64::MAX
        } else if self.started_at >= hold_from {
            // Within a hold of the start, every valid guest may have been
            // online when the previous server stopped.
            valid_since
        } else {
            hold_from
        };
        HoldRule {
            seen_since,
            valid_since,
        }
    }

    /// Grants the name to the identity of `token_hash` unless someone else
    /// is online with it (a race with another claim).
    fn go_online(
        &self,
        name: Nickname,
        key: String,
        shape: String,
        token: String,
        token_hash: [u8; 32],
        author: AuthorId,
    ) -> Result<Claim, ClaimError> {
        let mut online = self.lock();
        if let Some(held) = online.holder_key(&key, &shape) {
            let holder = online.by_key.get_mut(&held).expect("found above");
            if holder.token_hash != token_hash {
                return Err(ClaimError::Online(name.into_string()));
            }
            holder.conns += 1;
            return Ok(Claim {
                name,
                token,
                author: holder.author,
                key: held,
            });
        }
        online.add(key.clone(), shape, |shape| OnlineGuest {
            shape,
            token_hash,
            author,
            conns: 1,
        });
        Ok(Claim {
            name,
            token,
            author,
            key,
        })
    }
}

async fn prune(claims: Weak<GuestClaims>) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        every.tick().await;
        let Some(claims) = claims.upgrade() else {
            return;
        };
        let valid_since = claims.valid_since(clock::now_ms());
        match claims
            .store
            .prune_guests(valid_since, claims.config.max_guests)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(guests = n, "forgot expired or least recently seen guests"),
            Err(e) => tracing::warn!(error = %e, "could not forget expired guests"),
        }
    }
}

#[async_trait]
impl NameClaims for GuestClaims {
    async fn claim(&self, name: Nickname, token: Option<&str>) -> Result<Claim, ClaimError> {
        let (key, shape) = (name.key(), name.shape());
        let token_hash = token.map(hash_token);
        // Online already: another tab of the holder, or someone else.
        {
            let mut online = self.lock();
            if let Some(held) = online.holder_key(&key, &shape) {
                let holder = online.by_key.get_mut(&held).expect("found above");
                return match (token, token_hash) {
                    (Some(token), Some(hash)) if hash == holder.token_hash => {
                        holder.conns += 1;
                        Ok(Claim {
                            author: holder.author,
                            name,
                            token: token.to_owned(),
                            key: held,
                        })
                    }
                    _ => Err(ClaimError::Online(name.into_string())),
                };
            }
        }
        let now = clock::now_ms();
        // The holder coming back (after a restart, or later).
        if let (Some(token), Some(hash)) = (token, token_hash)
            && let Some(guest) = self
                .store
                .reclaim_guest(&hash, self.valid_since(now), now)
                .await?
            && (guest.name_key == key || guest.name_shape == shape)
        {
            return self.go_online(name, key, shape, token.to_owned(), hash, guest.author);
        }
        // A newcomer: a new identity, if nobody holds the name.
        let token = new_token();
        let mut guest = StoredGuest {
            token_hash: hash_token(&token),
            author: AuthorId::random(),
            name: name.as_str().to_owned(),
            name_key: key.clone(),
            name_shape: shape.clone(),
            last_seen: now,
        };
        if !self
            .store
            .register_guest(&mut guest, self.hold_rule(now))
            .await?
        {
            return Err(ClaimError::Held(name.into_string()));
        }
        self.go_online(name, key, shape, token, guest.token_hash, guest.author)
    }

    fn release(&self, claim: &Claim) {
        let mut online = self.lock();
        let Some(holder) = online.by_key.get_mut(claim.key()) else {
            return;
        };
        holder.conns -= 1;
        if holder.conns > 0 {
            return;
        }
        let holder = online.by_key.remove(claim.key()).expect("looked up above");
        if let Some(shape) = &holder.shape {
            online.keys_by_shape.remove(shape);
        }
        drop(online);
        // The hold counts from now. Without a runtime (shutting down) the
        // next start holds every stored name anyway.
        let store = self.store.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.touch_guest(&holder.token_hash, clock::now_ms()).await {
                    tracing::warn!(error = %e, "could not note when a guest left");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SqliteStore;

    const HOUR: Duration = Duration::from_secs(3600);

    async fn claims_on(dir: &tempfile::TempDir, config: IdentityConfig) -> Arc<GuestClaims> {
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
        GuestClaims::start(store, config)
    }

    fn name(s: &str) -> Nickname {
        Nickname::parse(s).unwrap()
    }

    fn config(name_hold: Duration) -> IdentityConfig {
        IdentityConfig {
            session_ttl: 30 * 24 * HOUR,
            name_hold,
            max_guests: 1_000_000,
        }
    }

    #[tokio::test]
    async fn an_online_name_and_its_look_alikes_need_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let claims = claims_on(&dir, config(HOUR)).await;
        let alice = claims.claim(name("alice"), None).await.unwrap();
        for look_alike in ["alice", "Alice", "\u{430}lice", "aIice"] {
            assert!(
                matches!(
                    claims.claim(name(look_alike), None).await,
                    Err(ClaimError::Online(_))
                ),
                "{look_alike:?}"
            );
        }
        let tab = claims
            .claim(name("Alice"), Some(&alice.token))
            .await
            .unwrap();
        assert_eq!(tab.author, alice.author);
        assert_eq!(tab.token, alice.token);
    }

    /// A tab that claimed the name under a look-alike spelling (found by
    /// its shape, not its key) releases the holder's entry: once every tab
    /// is closed the person is offline, not stuck online.
    #[tokio::test]
    async fn a_look_alike_tab_releases_the_name_it_shares() {
        let dir = tempfile::tempdir().unwrap();
        let claims = claims_on(&dir, config(Duration::ZERO)).await;
        let alice = claims.claim(name("alice"), None).await.unwrap();
        // Capital I: a different key, the same shape.
        let tab = claims
            .claim(name("aIice"), Some(&alice.token))
            .await
            .unwrap();
        assert_eq!(tab.author, alice.author);
        claims.release(&tab);
        claims.release(&alice);
        let newcomer = claims.claim(name("alice"), None).await.unwrap();
        assert_ne!(newcomer.author, alice.author, "the name was free again");
    }

    #[tokio::test]
    async fn an_offline_name_is_held_for_its_token_then_free() {
        let dir = tempfile::tempdir().unwrap();
        let claims = claims_on(&dir, config(HOUR)).await;
        let bob = claims.claim(name("bob"), None).await.unwrap();
        claims.release(&bob);
        assert!(matches!(
            claims.claim(name("b\u{43E}b"), None).await,
            Err(ClaimError::Held(_))
        ));
        let back = claims.claim(name("bob"), Some(&bob.token)).await.unwrap();
        assert_eq!(back.author, bob.author);
        claims.release(&back);
        drop(claims);

        // With no hold, a newcomer may take it, and the old token no longer
        // claims it.
        let claims = claims_on(&dir, config(Duration::ZERO)).await;
        let newcomer = claims.claim(name("bob"), None).await.unwrap();
        assert_ne!(newcomer.author, bob.author);
        claims.release(&newcomer);
        let old = claims.claim(name("bob"), Some(&bob.token)).await.unwrap();
        assert_ne!(old.author, bob.author, "a new identity, not the old one");
    }

    #[tokio::test]
    async fn a_restart_holds_every_stored_name_for_a_hold() {
        let dir = tempfile::tempdir().unwrap();
        let claims = claims_on(&dir, config(HOUR)).await;
        // Online when the server dies: never released.
        let carol = claims.claim(name("carol"), None).await.unwrap();
        drop(claims);
        let claims = claims_on(&dir, config(HOUR)).await;
        assert!(matches!(
            claims.claim(name("carol"), None).await,
            Err(ClaimError::Held(_))
        ));
        assert!(matches!(
            claims.claim(name("carol"), Some("not the token")).await,
            Err(ClaimError::Held(_))
        ));
        let back = claims
            .claim(name("carol"), Some(&carol.token))
            .await
            .unwrap();
        assert_eq!(back.author, carol.author);
    }

    #[tokio::test]
    async fn an_expired_token_claims_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let claims = claims_on(
            &dir,
            IdentityConfig {
                session_ttl: Duration::from_millis(1),
                name_hold: Duration::ZERO,
                max_guests: 1_000_000,
            },
        )
        .await;
        let dave = claims.claim(name("dave"), None).await.unwrap();
        claims.release(&dave);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let again = claims.claim(name("dave"), Some(&dave.token)).await.unwrap();
        assert_ne!(again.token, dave.token);
        assert_ne!(again.author, dave.author);
    }

    #[tokio::test]
    async fn stored_guests_are_bounded_least_recently_seen_first() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
        let claims = GuestClaims::start(store.clone(), config(Duration::ZERO));
        let mut tokens = Vec::new();
        for i in 0..5 {
            let claim = claims.claim(name(&format!("g{i}")), None).await.unwrap();
            tokens.push(claim.token.clone());
            claims.release(&claim);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.prune_guests(0, 3).await.unwrap(), 2);
        // The two seen longest ago are forgotten: their tokens are new identities.
        for (i, token) in tokens.iter().enumerate() {
            let back = claims
                .claim(name(&format!("g{i}")), Some(token))
                .await
                .unwrap();
            assert_eq!(&back.token == token, i >= 2, "g{i}");
        }
    }

    #[test]
    fn only_the_digest_of_a_token_is_kept() {
        let token = new_token();
        assert_eq!(token.len(), 48);
        assert_eq!(hash_token(&token), hash_token(&token.clone()));
        assert_ne!(hash_token(&token), hash_token(&new_token()));
    }
}
