//! [`NameClaims`] for guests: who is online in memory, guests in storage,
//! and the writes to storage queued in memory and saved in batches.
//! Accounts' connections are counted online in the same memory, so that a
//! name is online once whoever holds it, with no token and no storage
//! write (the account is stored already).
//!
//! One `std::sync::Mutex` guards who is online and the queued writes; it is
//! never held across a storage call. A claim reads storage (the token's
//! guest, or who else holds a look-alike of the name) and then decides
//! under the lock, against the online names and the queued writes, which
//! are newer than anything stored. Two newcomers never both get a name:
//! the first is online (and queued) before the second decides. A save that
//! completes while a claim reads may hide from that read what it saved
//! and no longer shows as queued: each save bumps an epoch, and a claim
//! that sees it moved reads again.
//!
//! **Why queued.** A `hello` under a new name, and every last leaving, is
//! a write. A transaction for each costs about 350 µs of server CPU per
//! join in the churn benchmark (556 µs per join against 208 without them,
//! measured for issue #14). Queued, a claim is answered at once, and
//! everything claimed or left within [`SAVE_EVERY`] is one transaction. What that costs is written in
//! the module documentation of `identity`: a crash loses the claims and
//! leavings of the last interval; a clean stop saves them ([`GuestClaims::save_queued`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::{Claim, ClaimError, NameClaims};
use crate::clock;
use crate::domain::{AuthorId, Nickname};
use crate::storage::{GuestStore, GuestWrite, StorageError, StoredGuest};

/// How often expired guests are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often queued guest writes are saved, in one transaction: what a
/// crash may lose, and what a burst of new names shares.
pub const SAVE_EVERY: Duration = Duration::from_millis(200);
/// Queued writes that make a save start before its interval (a flood of
/// new names is saved in transactions of about this many).
const SAVE_AT: usize = 4096;
/// How stale a guest's time of last use may be before a reclaim queues a
/// newer one: expiry is counted in days, and after a restart every page
/// reclaims at once.
const LAST_SEEN_PRECISION_MS: i64 = 60 * 60 * 1000;
/// Reads a claim makes again when saves keep completing under it.
const CLAIM_TRIES: usize = 8;

/// Settings from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct IdentityConfig {
    /// A reclaim token unused for this long no longer claims anything (`--guest-ttl`).
    pub guest_ttl: Duration,
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
    state: Mutex<State>,
    /// Wakes the saving task early (a full queue, or a stop).
    save_soon: Notify,
    /// One save at a time, in queue order.
    saving: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    online: Online,
    queued: Queued,
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
    /// The guest's reclaim token's hash; `None` for an account, which has
    /// none (no token claims its name).
    token_hash: Option<[u8; 32]>,
    author: AuthorId,
    conns: usize,
}

/// Guest writes not saved yet, and what they change, for claims to see
/// before storage does.
#[derive(Default)]
struct Queued {
    /// In order.
    writes: Vec<GuestWrite>,
    /// Registrations not saved yet, by token hash, with their latest time seen.
    registered: HashMap<[u8; 32], StoredGuest>,
    /// Token hash of the registration queued for each name key and shape.
    by_key: HashMap<String, [u8; 32]>,
    by_shape: HashMap<String, [u8; 32]>,
    /// The latest time each token's guest was seen, not saved yet.
    seen: HashMap<[u8; 32], i64>,
    /// Saves completed.
    epoch: u64,
    /// What the latest saves took out of the queue (oldest first, at most
    /// [`SAVES_REMEMBERED`]): a claim that read storage before one of
    /// them completed needs to read again only if that save concerned its
    /// name or a guest it read.
    saves: VecDeque<SavedWrites>,
}

/// What one save took out of the queue.
struct SavedWrites {
    /// The epoch the save completed.
    epoch: u64,
    /// The name keys and shapes it registered.
    names: HashSet<String>,
    /// Tokens whose time seen it saved.
    seen: HashSet<[u8; 32]>,
}

/// Saves remembered for claims that read storage while they completed;
/// a claim whose read spans more saves than this reads again.
const SAVES_REMEMBERED: usize = 64;

impl Queued {
    /// The queued registration of a look-alike of the name, if any.
    fn registration(&self, key: &str, shape: &str) -> Option<&StoredGuest> {
        let token = self
            .by_key
            .get(key)
            .or_else(|| self.by_shape.get(shape))
            .or_else(|| self.by_key.get(shape))
            .or_else(|| self.by_shape.get(key))?;
        self.registered.get(token)
    }

    fn register(&mut self, guest: StoredGuest) {
        self.by_key.insert(guest.name_key.clone(), guest.token_hash);
        self.by_shape
            .insert(guest.name_shape.clone(), guest.token_hash);
        self.writes.push(GuestWrite::Register(guest.clone()));
        self.registered.insert(guest.token_hash, guest);
    }

    fn seen(&mut self, token_hash: [u8; 32], at: i64) {
        if let Some(guest) = self.registered.get_mut(&token_hash) {
            guest.last_seen = guest.last_seen.max(at);
        }
        let latest = self.seen.entry(token_hash).or_insert(at);
        *latest = (*latest).max(at);
        self.writes.push(GuestWrite::Seen { token_hash, at });
    }

    /// When a stored guest was last seen, counting what is queued.
    fn last_seen(&self, guest: &StoredGuest) -> i64 {
        self.seen
            .get(&guest.token_hash)
            .map_or(guest.last_seen, |&at| at.max(guest.last_seen))
    }

    /// `writes` were saved: what they changed is storage's to answer now.
    fn saved(&mut self, writes: &[GuestWrite]) {
        let mut saved = SavedWrites {
            epoch: self.epoch + 1,
            names: HashSet::new(),
            seen: HashSet::new(),
        };
        for write in writes {
            match write {
                GuestWrite::Register(guest) => {
                    saved.names.insert(guest.name_key.clone());
                    saved.names.insert(guest.name_shape.clone());
                    saved.seen.insert(guest.token_hash);
                    // A token is registered once. Its times seen since are
                    // `Seen` writes, in `seen` until they are saved too.
                    self.registered.remove(&guest.token_hash);
                    if self.by_key.get(&guest.name_key) == Some(&guest.token_hash) {
                        self.by_key.remove(&guest.name_key);
                    }
                    if self.by_shape.get(&guest.name_shape) == Some(&guest.token_hash) {
                        self.by_shape.remove(&guest.name_shape);
                    }
                }
                GuestWrite::Seen { token_hash, at } => {
                    saved.seen.insert(*token_hash);
                    if self.seen.get(token_hash).is_some_and(|latest| latest <= at) {
                        self.seen.remove(token_hash);
                    }
                }
            }
        }
        self.epoch += 1;
        if self.saves.len() == SAVES_REMEMBERED {
            self.saves.pop_front();
        }
        self.saves.push_back(saved);
    }

    /// Whether a read of storage for `key`/`shape` that found `found`,
    /// made while the queue was at `epoch`, may have missed what a save
    /// since took out of the queue (so that neither the read nor the queue
    /// shows it).
    fn read_is_stale(&self, epoch: u64, key: &str, shape: &str, found: &Found) -> bool {
        if self.epoch == epoch {
            return false;
        }
        if self
            .saves
            .front()
            .is_none_or(|oldest| oldest.epoch > epoch + 1)
        {
            return true;
        }
        let read: Vec<&[u8; 32]> = match found {
            Found::Holder(guest) => vec![&guest.token_hash],
            Found::Newcomer(holders) => holders.iter().map(|g| &g.token_hash).collect(),
        };
        self.saves
            .iter()
            .filter(|save| save.epoch > epoch)
            .any(|save| {
                save.names.contains(key)
                    || save.names.contains(shape)
                    || read.iter().any(|token| save.seen.contains(*token))
            })
    }
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

    fn add(&mut self, key: String, shape: String, token_hash: Option<[u8; 32]>, author: AuthorId) {
        let shape = (shape != key).then_some(shape);
        if let Some(shape) = &shape {
            self.keys_by_shape.insert(shape.clone(), key.clone());
        }
        self.by_key.insert(
            key,
            OnlineGuest {
                shape,
                token_hash,
                author,
                conns: 1,
            },
        );
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

/// When a stored guest still holds its name against newcomers.
#[derive(Debug, Clone, Copy)]
struct HoldRule {
    /// Guests seen at or after this (Unix ms) hold their name.
    seen_since: i64,
    /// Guests whose token was used before this (Unix ms) have expired.
    valid_since: i64,
}

impl HoldRule {
    fn holds(self, last_seen: i64) -> bool {
        last_seen >= self.seen_since && last_seen >= self.valid_since
    }
}

/// What a claim found in storage, before it decides under the lock.
enum Found {
    /// The token's own guest, under a look-alike of the name.
    Holder(StoredGuest),
    /// A newcomer; these stored guests hold look-alikes of the name.
    Newcomer(Vec<StoredGuest>),
}

impl GuestClaims {
    /// Starts answering claims; saves queued writes every [`SAVE_EVERY`],
    /// and forgets expired guests now and hourly, while `self` lives.
    pub fn start(store: Arc<dyn GuestStore>, config: IdentityConfig) -> Arc<Self> {
        Self::start_saving_every(store, config, SAVE_EVERY)
    }

    fn start_saving_every(
        store: Arc<dyn GuestStore>,
        config: IdentityConfig,
        every: Duration,
    ) -> Arc<Self> {
        let claims = Arc::new(Self {
            store,
            config,
            started_at: clock::now_ms(),
            state: Mutex::new(State::default()),
            save_soon: Notify::new(),
            saving: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&claims);
        tokio::spawn(prune(weak.clone()));
        tokio::spawn(save_periodically(weak, every));
        claims
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn valid_since(&self, now: i64) -> i64 {
        now.saturating_sub(millis(self.config.guest_ttl))
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

    /// Saves every write queued so far in one transaction (nothing if none
    /// is). Called every [`SAVE_EVERY`], and on a clean stop, after the
    /// last connection has closed. On failure the writes stay queued, in
    /// order, for the next save.
    pub async fn save_queued(&self) -> Result<(), StorageError> {
        let _one_at_a_time = self.saving.lock().await;
        let writes = std::mem::take(&mut self.lock().queued.writes);
        if writes.is_empty() {
            return Ok(());
        }
        match self.store.save_guests(writes.clone()).await {
            Ok(()) => {
                self.lock().queued.saved(&writes);
                Ok(())
            }
            Err(e) => {
                let mut state = self.lock();
                let newer = std::mem::replace(&mut state.queued.writes, writes);
                state.queued.writes.extend(newer);
                Err(e)
            }
        }
    }

    /// Asks for a save before the interval if many writes are queued.
    fn save_if_full(&self, state: &State) {
        if state.queued.writes.len() >= SAVE_AT {
            self.save_soon.notify_one();
        }
    }

    /// Reads what storage knows for a claim of `key`/`shape`.
    async fn find(
        &self,
        key: &str,
        shape: &str,
        token_hash: Option<[u8; 32]>,
        now: i64,
    ) -> Result<Found, StorageError> {
        let valid_since = self.valid_since(now);
        if let Some(hash) = token_hash
            && let Some(guest) = self.store.find_guest(&hash, valid_since).await?
            && (guest.name_key == key || guest.name_shape == shape)
        {
            return Ok(Found::Holder(guest));
        }
        Ok(Found::Newcomer(
            self.store.name_holders(key, shape, valid_since).await?,
        ))
    }

    /// Decides a claim with what `find` read (at `epoch`), under the lock;
    /// `None` if a save completed since: read again.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        state: &mut State,
        epoch: u64,
        found: Found,
        name: &Nickname,
        key: &str,
        shape: &str,
        token: Option<&str>,
        now: i64,
    ) -> Option<Result<Claim, ClaimError>> {
        if state.queued.read_is_stale(epoch, key, shape, &found) {
            return None;
        }
        if let Some(held) = state.online.holder_key(key, shape) {
            // Came online while storage was read.
            let holder = state.online.by_key.get_mut(&held).expect("found above");
            return Some(match token.map(hash_token) {
                Some(hash) if Some(hash) == holder.token_hash => {
                    holder.conns += 1;
                    Ok(Claim {
                        name: name.clone(),
                        token: token.expect("hashed above").to_owned(),
                        author: holder.author,
                        key: held,
                    })
                }
                _ => Err(ClaimError::Online(name.as_str().to_owned())),
            });
        }
        let hold = self.hold_rule(now);
        let queued = state.queued.registration(key, shape).cloned();
        let holders = match found {
            Found::Holder(guest) => {
                // The holder coming back (after a restart, or later), unless
                // a newcomer took the name since (queued, not saved yet).
                if queued
                    .as_ref()
                    .is_none_or(|q| q.token_hash == guest.token_hash)
                {
                    let token = token.expect("a holder was found by its token");
                    if guest.last_seen < now.saturating_sub(LAST_SEEN_PRECISION_MS) {
                        state.queued.seen(guest.token_hash, now);
                        self.save_if_full(state);
                    }
                    state.online.add(
                        key.to_owned(),
                        shape.to_owned(),
                        Some(guest.token_hash),
                        guest.author,
                    );
                    return Some(Ok(Claim {
                        name: name.clone(),
                        token: token.to_owned(),
                        author: guest.author,
                        key: key.to_owned(),
                    }));
                }
                Vec::new()
            }
            Found::Newcomer(holders) => holders,
        };
        // A newcomer: a new identity, if nobody holds the name. A queued
        // registration is newer than anything stored: it alone decides.
        let held = match &queued {
            Some(q) => hold.holds(q.last_seen),
            None => holders
                .iter()
                .any(|h| hold.holds(state.queued.last_seen(h))),
        };
        if held {
            return Some(Err(ClaimError::Held(name.as_str().to_owned())));
        }
        let token = new_token();
        let guest = StoredGuest {
            token_hash: hash_token(&token),
            author: AuthorId::random(),
            name: name.as_str().to_owned(),
            name_key: key.to_owned(),
            name_shape: shape.to_owned(),
            last_seen: now,
        };
        let author = guest.author;
        state.online.add(
            key.to_owned(),
            shape.to_owned(),
            Some(guest.token_hash),
            author,
        );
        state.queued.register(guest);
        self.save_if_full(state);
        Some(Ok(Claim {
            name: name.clone(),
            token,
            author,
            key: key.to_owned(),
        }))
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
            Err(e) => tracing::warn!(
                error = &e as &dyn std::error::Error,
                "could not forget expired guests"
            ),
        }
    }
}

async fn save_periodically(claims: Weak<GuestClaims>, every: Duration) {
    loop {
        let asked = {
            let claims = claims.clone();
            async move {
                match claims.upgrade() {
                    Some(claims) => claims.save_soon.notified().await,
                    None => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = asked => {}
        }
        let Some(claims) = claims.upgrade() else {
            return;
        };
        if let Err(e) = claims.save_queued().await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "could not save guests; retrying"
            );
        }
    }
}

#[async_trait]
impl NameClaims for GuestClaims {
    async fn claim(&self, name: Nickname, token: Option<&str>) -> Result<Claim, ClaimError> {
        let (key, shape) = (name.key(), name.shape());
        let token_hash = token.map(hash_token);
        for _ in 0..CLAIM_TRIES {
            let epoch = {
                let mut state = self.lock();
                // Online already: another tab of the holder, or someone else.
                if let Some(held) = state.online.holder_key(&key, &shape) {
                    let holder = state.online.by_key.get_mut(&held).expect("found above");
                    return match (token, token_hash) {
                        (Some(token), Some(hash)) if Some(hash) == holder.token_hash => {
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
                // Claimed under this token, not saved yet.
                if let (Some(token), Some(hash)) = (token, token_hash)
                    && let Some(guest) = state.queued.registered.get(&hash)
                    && (guest.name_key == key || guest.name_shape == shape)
                    && guest.last_seen >= self.valid_since(clock::now_ms())
                {
                    let author = guest.author;
                    state
                        .online
                        .add(key.clone(), shape.clone(), Some(hash), author);
                    return Ok(Claim {
                        name,
                        token: token.to_owned(),
                        author,
                        key,
                    });
                }
                state.queued.epoch
            };
            let now = clock::now_ms();
            let found = self.find(&key, &shape, token_hash, now).await?;
            let mut state = self.lock();
            if let Some(decided) =
                self.decide(&mut state, epoch, found, &name, &key, &shape, token, now)
            {
                return decided;
            }
        }
        Err(ClaimError::Storage(StorageError::unavailable(
            "guests kept changing while a name was claimed",
            None,
        )))
    }

    fn claim_account(&self, name: Nickname, author: AuthorId) -> Result<Claim, ClaimError> {
        let (key, shape) = (name.key(), name.shape());
        let mut state = self.lock();
        if let Some(held) = state.online.holder_key(&key, &shape) {
            let holder = state.online.by_key.get_mut(&held).expect("found above");
            // Another connection of the same account (its author id is its own).
            if holder.token_hash.is_none() && holder.author == author {
                holder.conns += 1;
                return Ok(Claim {
                    name,
                    token: String::new(),
                    author,
                    key: held,
                });
            }
            return Err(ClaimError::Online(name.into_string()));
        }
        state.online.add(key.clone(), shape, None, author);
        Ok(Claim {
            name,
            token: String::new(),
            author,
            key,
        })
    }

    fn is_online(&self, name: &Nickname) -> bool {
        self.lock()
            .online
            .holder_key(&name.key(), &name.shape())
            .is_some()
    }

    fn release(&self, claim: &Claim) {
        let mut state = self.lock();
        let Some(holder) = state.online.by_key.get_mut(claim.key()) else {
            return;
        };
        holder.conns -= 1;
        if holder.conns > 0 {
            return;
        }
        let holder = state
            .online
            .by_key
            .remove(claim.key())
            .expect("looked up above");
        if let Some(shape) = &holder.shape {
            state.online.keys_by_shape.remove(shape);
        }
        // The hold counts from now: saved with the next batch (or at a clean
        // stop). An account's name needs no hold: storage keeps it.
        if let Some(token_hash) = holder.token_hash {
            state.queued.seen(token_hash, clock::now_ms());
            self.save_if_full(&state);
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
            guest_ttl: 30 * 24 * HOUR,
            name_hold,
            max_guests: 1_000_000,
        }
    }

    /// An account's connections share one online entry, counted like a
    /// guest's, with nothing stored; no guest (token or not) can take it,
    /// and a guest online under the name refuses the account.
    #[tokio::test]
    async fn an_account_is_online_under_its_name_without_storing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let claims = claims_on(&dir, config(HOUR)).await;
        let author = AuthorId::random();
        let first = claims.claim_account(name("Alice"), author).unwrap();
        let second = claims.claim_account(name("aIice"), author).unwrap();
        assert_eq!((first.author, second.author), (author, author));
        assert!(claims.is_online(&name("alice")));
        assert!(matches!(
            claims.claim_account(name("alice"), AuthorId::random()),
            Err(ClaimError::Online(_))
        ));
        assert!(matches!(
            claims.claim(name("alice"), Some("any token")).await,
            Err(ClaimError::Online(_))
        ));
        assert!(claims.lock().queued.writes.is_empty(), "nothing to store");
        claims.release(&first);
        assert!(claims.is_online(&name("alice")), "one connection left");
        claims.release(&second);
        assert!(!claims.is_online(&name("alice")));
        assert!(claims.lock().queued.writes.is_empty(), "no hold to store");

        claims.claim(name("bob"), None).await.unwrap();
        assert!(matches!(
            claims.claim_account(name("Bob"), author),
            Err(ClaimError::Online(_))
        ));
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
    async fn is_online_sees_look_alikes_until_the_last_release() {
        let dir = tempfile::tempdir().unwrap();
        let claims = claims_on(&dir, config(Duration::from_secs(60))).await;
        let alice = claims.claim(name("alice"), None).await.unwrap();
        for look_alike in ["Alice", "\u{430}lice", "aIice"] {
            assert!(claims.is_online(&name(look_alike)), "{look_alike}");
        }
        assert!(!claims.is_online(&name("bob")));
        claims.release(&alice);
        // Held for its token, but not online.
        assert!(!claims.is_online(&name("alice")));
    }

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
        claims.save_queued().await.unwrap();
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
        // Online when the server dies (after its claim was saved): never released.
        let carol = claims.claim(name("carol"), None).await.unwrap();
        claims.save_queued().await.unwrap();
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
                guest_ttl: Duration::from_millis(1),
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
        claims.save_queued().await.unwrap();
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

    /// A [`GuestStore`] that counts the transactions of writes it is asked for.
    struct Counting {
        inner: SqliteStore,
        saves: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl GuestStore for Counting {
        async fn find_guest(
            &self,
            token_hash: &[u8; 32],
            valid_since: i64,
        ) -> Result<Option<StoredGuest>, StorageError> {
            self.inner.find_guest(token_hash, valid_since).await
        }
        async fn name_holders(
            &self,
            key: &str,
            shape: &str,
            valid_since: i64,
        ) -> Result<Vec<StoredGuest>, StorageError> {
            self.inner.name_holders(key, shape, valid_since).await
        }
        async fn save_guests(&self, writes: Vec<GuestWrite>) -> Result<(), StorageError> {
            self.saves
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.save_guests(writes).await
        }
        async fn prune_guests(&self, valid_since: i64, keep: u64) -> Result<u64, StorageError> {
            self.inner.prune_guests(valid_since, keep).await
        }
    }

    async fn counting(dir: &tempfile::TempDir) -> Arc<Counting> {
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        Arc::new(Counting {
            inner: SqliteStore::connect(&url).await.unwrap(),
            saves: Default::default(),
        })
    }

    /// Churn's cost: a burst of new names and leavings is answered from
    /// memory, without one write each, and saved as one transaction.
    #[tokio::test]
    async fn a_burst_of_hellos_is_saved_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = counting(&dir).await;
        // Saved only when asked, for a count that does not depend on timing.
        let claims = GuestClaims::start_saving_every(store.clone(), config(HOUR), 24 * HOUR);
        const N: usize = 300;
        let mut granted = Vec::new();
        for i in 0..N {
            let claim = claims
                .claim(name(&format!("guest {i}")), None)
                .await
                .unwrap();
            if i % 2 == 0 {
                claims.release(&claim);
            }
            granted.push(claim);
        }
        let saves = || store.saves.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(saves(), 0, "no write per hello or leaving");
        claims.save_queued().await.unwrap();
        assert_eq!(
            saves(),
            1,
            "{N} hellos and {} leavings, one transaction",
            N / 2
        );
        claims.save_queued().await.unwrap();
        assert_eq!(saves(), 1, "nothing left to save");
        // Saved, they are storage's to answer.
        let stored = store
            .inner
            .find_guest(&hash_token(&granted[7].token), 0)
            .await
            .unwrap();
        assert_eq!(stored.map(|g| g.author), Some(granted[7].author));
    }

    /// What a clean stop saves, a restart finds: every token reclaims its
    /// name and author id, and nobody else gets those names meanwhile.
    #[tokio::test]
    async fn claims_survive_a_clean_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = counting(&dir).await;
        let claims = GuestClaims::start_saving_every(store.clone(), config(HOUR), 24 * HOUR);
        let mut granted = Vec::new();
        for i in 0..20 {
            let claim = claims.claim(name(&format!("g{i}")), None).await.unwrap();
            if i % 2 == 0 {
                claims.release(&claim);
            }
            granted.push(claim);
        }
        // The clean stop's save (`App::run`), then a new server on the same data.
        claims.save_queued().await.unwrap();
        drop(claims);
        drop(store);
        let claims = claims_on(&dir, config(HOUR)).await;
        for (i, claim) in granted.iter().enumerate() {
            assert!(
                matches!(
                    claims.claim(name(&format!("G{i}")), None).await,
                    Err(ClaimError::Held(_))
                ),
                "g{i} is held for its token"
            );
            let back = claims
                .claim(name(&format!("g{i}")), Some(&claim.token))
                .await
                .unwrap();
            assert_eq!((back.author, &back.token), (claim.author, &claim.token));
        }
    }

    /// Before its save, a claim is seen by the next ones: its token claims
    /// it again, and once its holder has left it is held against newcomers.
    #[tokio::test]
    async fn a_claim_not_saved_yet_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = counting(&dir).await;
        let claims = GuestClaims::start_saving_every(store.clone(), config(HOUR), 24 * HOUR);
        let erin = claims.claim(name("erin"), None).await.unwrap();
        claims.release(&erin);
        assert!(matches!(
            claims.claim(name("Erin"), None).await,
            Err(ClaimError::Held(_))
        ));
        let back = claims.claim(name("erin"), Some(&erin.token)).await.unwrap();
        assert_eq!(back.author, erin.author);
        claims.release(&back);
        assert_eq!(store.saves.load(std::sync::atomic::Ordering::Relaxed), 0);
        // A newcomer whose queued claim replaces a stored holder whose hold
        // lapsed: the old token no longer claims the name, saved or not.
        let claims =
            GuestClaims::start_saving_every(store.clone(), config(Duration::ZERO), 24 * HOUR);
        let frank = claims.claim(name("frank"), None).await.unwrap();
        claims.release(&frank);
        claims.save_queued().await.unwrap();
        let other = claims.claim(name("frank"), None).await.unwrap();
        claims.release(&other);
        let old = claims
            .claim(name("frank"), Some(&frank.token))
            .await
            .unwrap();
        assert_ne!(old.author, frank.author, "a new identity");
        claims.release(&old);
    }

    #[test]
    fn only_the_digest_of_a_token_is_kept() {
        let token = new_token();
        assert_eq!(token.len(), 48);
        assert_eq!(hash_token(&token), hash_token(&token.clone()));
        assert_ne!(hash_token(&token), hash_token(&new_token()));
    }

    fn stored(name: &str, token: u8) -> StoredGuest {
        let nick = Nickname::parse(name).unwrap();
        StoredGuest {
            token_hash: [token; 32],
            author: AuthorId::random(),
            name: name.to_owned(),
            name_key: nick.key(),
            name_shape: nick.shape(),
            last_seen: 1,
        }
    }

    /// A claim that read storage while saves completed reads again only if
    /// a save concerned its name (or a look-alike) or a guest it read, or
    /// if more saves completed than are remembered: under a flood of new
    /// names, claims of other names go through instead of retrying until
    /// they give up.
    #[test]
    fn a_read_is_stale_only_if_a_save_since_concerned_it() {
        let mut queued = Queued::default();
        let alice = Nickname::parse("alice").unwrap();
        let (key, shape) = (alice.key(), alice.shape());
        let holder = stored("bob", 7);
        let read = Found::Newcomer(vec![holder.clone()]);
        let epoch = queued.epoch;
        assert!(!queued.read_is_stale(epoch, &key, &shape, &read));
        // Other names saved: the read still stands.
        queued.saved(&[GuestWrite::Register(stored("carol", 1))]);
        queued.saved(&[GuestWrite::Register(stored("dave", 2))]);
        assert!(!queued.read_is_stale(epoch, &key, &shape, &read));
        // A look-alike of the name saved since: read again.
        let mut lookalike = queued_copy(&queued);
        lookalike.saved(&[GuestWrite::Register(stored("Alice", 3))]);
        assert!(lookalike.read_is_stale(epoch, &key, &shape, &read));
        // A guest the read found, seen since: read again.
        let mut seen = queued_copy(&queued);
        seen.saved(&[GuestWrite::Seen {
            token_hash: holder.token_hash,
            at: 2,
        }]);
        assert!(seen.read_is_stale(epoch, &key, &shape, &read));
        // More saves than remembered: read again.
        for i in 0..SAVES_REMEMBERED {
            queued.saved(&[GuestWrite::Register(stored(&format!("x{i}"), 9))]);
        }
        assert!(queued.read_is_stale(epoch, &key, &shape, &read));
        assert!(!queued.read_is_stale(queued.epoch - 1, &key, &shape, &read));
    }

    /// The save history of `queued` (what `read_is_stale` looks at).
    fn queued_copy(queued: &Queued) -> Queued {
        Queued {
            epoch: queued.epoch,
            saves: queued
                .saves
                .iter()
                .map(|s| SavedWrites {
                    epoch: s.epoch,
                    names: s.names.clone(),
                    seen: s.seen.clone(),
                })
                .collect(),
            ..Queued::default()
        }
    }
}
