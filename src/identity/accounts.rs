//! Accounts: signing up, signing in and out, and the sessions that keep a
//! browser signed in. The HTTP layer turns these into endpoints and the
//! cookie; this module decides.
//!
//! A session is a 128-bit random token, handed to the browser once; storage
//! keeps its SHA-256 only ([`AccountStore`]). It expires after
//! [`SESSION_TTL`] without use; a use is recorded at most once per
//! [`TOUCH_EVERY`], not on every request. Revoking sessions deletes them
//! from storage and signals this server's connections of them through the
//! [`SessionRegistry`].
//!
//! A new account's name follows the nickname rules ([`Nickname`]) and must
//! not look like another account's, nor like a guest's who is online now
//! ([`NameClaims::is_online`]). Sign-in failures are throttled
//! ([`LoginThrottle`]); an unknown name and a wrong password get the same
//! answer after the same work ([`Passwords::verify`]).

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use super::NameClaims;
use super::password::{self, PasswordError, Passwords, WeakPassword};
use super::sessions::SessionRegistry;
use super::throttle::LoginThrottle;
use crate::clock;
use crate::domain::{InputError, NICKNAME_MAX_CHARS, Nickname};
use crate::limits::RetryAfter;
use crate::storage::{
    AccountSession, AccountStore, CreateAccountError, NewAccount, StorageError, StoredAccount,
};

/// A session unused this long has expired.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// A session's use is stored at most this often: expiry counts in days.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// How often expired sessions are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Settings.
#[derive(Debug, Clone, Copy)]
pub struct AccountsConfig {
    pub session_ttl: Duration,
    /// Password hashes computed at once at most.
    pub hash_concurrency: usize,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        Self {
            session_ttl: SESSION_TTL,
            hash_concurrency: Passwords::default_concurrency(),
        }
    }
}

/// A browser signed in: the token goes into its cookie, and nowhere else.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub name: String,
    pub admin: bool,
    pub token: String,
}

/// A valid session, as a request's cookie showed it.
#[derive(Debug, Clone)]
pub struct Session {
    pub account: StoredAccount,
    pub token_hash: [u8; 32],
}

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the name {0}")]
    InvalidName(InputError),
    #[error(transparent)]
    WeakPassword(WeakPassword),
    #[error("the name is taken")]
    NameTaken,
    #[error("wrong name or password")]
    BadCredentials,
    #[error("too many failed sign-ins")]
    RateLimited(RetryAfter),
    #[error("too many passwords are being checked")]
    Busy,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Failed(String),
}

impl From<PasswordError> for AccountError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => Self::Busy,
            PasswordError::Failed(reason) => Self::Failed(reason),
        }
    }
}

/// SHA-256 of a session token: what storage and the registry know it by.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 128 random bits, 32 lower-case hex digits.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `token` is shaped like one [`new_token`] makes (anything else is
/// no session, without asking storage).
fn well_formed(token: &str) -> bool {
    token.len() == 32
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The key a name's failed sign-ins count under: its look-alike key when it
/// parses as a name, else (it cannot be an account's) a bounded prefix.
fn throttle_key(name: Option<&Nickname>, raw: &str) -> String {
    match name {
        Some(name) => name.key(),
        None => raw.chars().take(NICKNAME_MAX_CHARS * 2).collect(),
    }
}

pub struct Accounts {
    store: Arc<dyn AccountStore>,
    guests: Arc<dyn NameClaims>,
    passwords: Passwords,
    throttle: LoginThrottle,
    sessions: Arc<SessionRegistry>,
    config: AccountsConfig,
}

impl Accounts {
    /// Starts answering; deletes expired sessions now and hourly while
    /// `self` lives.
    pub fn start(
        store: Arc<dyn AccountStore>,
        guests: Arc<dyn NameClaims>,
        config: AccountsConfig,
    ) -> Arc<Self> {
        let accounts = Arc::new(Self {
            store,
            guests,
            passwords: Passwords::new(config.hash_concurrency),
            throttle: LoginThrottle::default(),
            sessions: SessionRegistry::new(),
            config,
        });
        tokio::spawn(prune(Arc::downgrade(&accounts)));
        accounts
    }

    /// The live connections of each session, to close when it is revoked.
    pub fn sessions(&self) -> &Arc<SessionRegistry> {
        &self.sessions
    }

    fn valid_since(&self, now: i64) -> i64 {
        now.saturating_sub(millis(self.config.session_ttl))
    }

    async fn new_session(&self, account: &StoredAccount) -> Result<SignedIn, AccountError> {
        let token = new_token();
        let now = clock::now_ms();
        self.store
            .create_session(AccountSession {
                token_hash: hash_token(&token),
                account: account.id,
                created_at: now,
                last_used: now,
            })
            .await?;
        Ok(SignedIn {
            name: account.name.clone(),
            admin: account.admin,
            token,
        })
    }

    /// Creates an account and signs it in.
    pub async fn sign_up(&self, name: &str, password: &str) -> Result<SignedIn, AccountError> {
        let name = Nickname::parse(name).map_err(AccountError::InvalidName)?;
        password::check_strength(password).map_err(AccountError::WeakPassword)?;
        // Before hashing: a taken name costs no hash.
        if self.guests.is_online(&name)
            || self
                .store
                .find_account(&name.key(), &name.shape())
                .await?
                .is_some()
        {
            return Err(AccountError::NameTaken);
        }
        let password_hash = self.passwords.hash(password).await?;
        // A guest may have come online under it while the hash was made.
        if self.guests.is_online(&name) {
            return Err(AccountError::NameTaken);
        }
        let account = self
            .store
            .create_account(NewAccount {
                name: name.as_str().to_owned(),
                name_key: name.key(),
                name_shape: name.shape(),
                password_hash,
                admin: false,
                created_at: clock::now_ms(),
            })
            .await
            .map_err(|e| match e {
                CreateAccountError::NameTaken(_) => AccountError::NameTaken,
                CreateAccountError::Storage(e) => AccountError::Storage(e),
            })?;
        self.new_session(&account).await
    }

    /// Signs in with a name and password, from `client`.
    pub async fn sign_in(
        &self,
        name: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<SignedIn, AccountError> {
        let parsed = Nickname::parse(name).ok();
        let key = throttle_key(parsed.as_ref(), name);
        self.throttle
            .check(&key, client, Instant::now())
            .map_err(AccountError::RateLimited)?;
        let account = match &parsed {
            Some(name) => self.store.find_account(&name.key(), &name.shape()).await?,
            None => None,
        };
        // A disabled account, a password no account could have, and an
        // unknown name all verify the dummy hash: the same work, the same answer.
        let stored = account
            .as_ref()
            .filter(|a| !a.disabled && password.len() <= password::MAX_BYTES)
            .map(|a| a.password_hash.as_str());
        let matches = self.passwords.verify(password, stored).await?;
        let Some(account) = account.filter(|_| matches) else {
            self.throttle.failed(&key, client, Instant::now());
            return Err(AccountError::BadCredentials);
        };
        self.throttle.succeeded(&key);
        self.new_session(&account).await
    }

    /// Whether an account's name is `name` or looks like it (a guest may
    /// not take it): one indexed lookup.
    pub async fn name_registered(&self, name: &Nickname) -> Result<bool, StorageError> {
        Ok(self
            .store
            .find_account(&name.key(), &name.shape())
            .await?
            .is_some())
    }

    /// The valid session of a cookie's token, if any; records its use.
    pub async fn session(&self, token: &str) -> Result<Option<Session>, StorageError> {
        if !well_formed(token) {
            return Ok(None);
        }
        let token_hash = hash_token(token);
        let now = clock::now_ms();
        let Some((session, account)) = self
            .store
            .find_session(&token_hash, self.valid_since(now))
            .await?
        else {
            return Ok(None);
        };
        if now - session.last_used >= millis(TOUCH_EVERY) {
            self.store.touch_session(&token_hash, now).await?;
        }
        Ok(Some(Session {
            account,
            token_hash,
        }))
    }

    /// Revokes this session.
    pub async fn sign_out(&self, session: &Session) -> Result<(), StorageError> {
        self.store.revoke_session(&session.token_hash).await?;
        self.sessions.revoke(&[session.token_hash]);
        Ok(())
    }

    /// Revokes every session of the account, this one included.
    pub async fn sign_out_everywhere(&self, session: &Session) -> Result<(), StorageError> {
        let revoked = self.store.revoke_sessions(session.account.id, None).await?;
        self.sessions.revoke(&revoked);
        Ok(())
    }

    /// Changes the password, given the current one; revokes every other
    /// session of the account. A wrong current password counts as a failed
    /// sign-in.
    pub async fn change_password(
        &self,
        session: &Session,
        current: &str,
        new: &str,
        client: IpAddr,
    ) -> Result<(), AccountError> {
        let key = session.account.name_key.clone();
        self.throttle
            .check(&key, client, Instant::now())
            .map_err(AccountError::RateLimited)?;
        let stored = (current.len() <= password::MAX_BYTES)
            .then_some(session.account.password_hash.as_str());
        if !self.passwords.verify(current, stored).await? {
            self.throttle.failed(&key, client, Instant::now());
            return Err(AccountError::BadCredentials);
        }
        password::check_strength(new).map_err(AccountError::WeakPassword)?;
        let hash = self.passwords.hash(new).await?;
        self.store
            .set_password_hash(session.account.id, &hash)
            .await?;
        let revoked = self
            .store
            .revoke_sessions(session.account.id, Some(&session.token_hash))
            .await?;
        self.sessions.revoke(&revoked);
        Ok(())
    }
}

async fn prune(accounts: Weak<Accounts>) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        every.tick().await;
        let Some(accounts) = accounts.upgrade() else {
            return;
        };
        let valid_since = accounts.valid_since(clock::now_ms());
        match accounts.store.prune_sessions(valid_since).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(sessions = n, "expired sessions deleted"),
            Err(e) => tracing::warn!(
                error = &e as &dyn std::error::Error,
                "could not delete expired sessions"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{GuestClaims, IdentityConfig};
    use crate::storage::SqliteStore;

    async fn accounts_on(dir: &tempfile::TempDir) -> Arc<Accounts> {
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
        let guests = GuestClaims::start(
            store.clone(),
            IdentityConfig {
                guest_ttl: Duration::from_secs(3600),
                name_hold: Duration::from_secs(60),
                max_guests: 100,
            },
        );
        Accounts::start(store, guests, AccountsConfig::default())
    }

    async fn session_of(accounts: &Accounts, signed: &SignedIn) -> Session {
        accounts.session(&signed.token).await.unwrap().unwrap()
    }

    const PASSWORD: &str = "correct horse battery";
    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// Each way of revoking sessions reaches the live connections of
    /// exactly the sessions it revokes.
    #[tokio::test]
    async fn revocations_signal_the_connections_of_the_sessions_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = accounts_on(&dir).await;
        let first = accounts.sign_up("alice", PASSWORD).await.unwrap();
        let second = accounts.sign_in("alice", PASSWORD, CLIENT).await.unwrap();
        let third = accounts.sign_in("alice", PASSWORD, CLIENT).await.unwrap();
        let (s1, s2, s3) = (
            session_of(&accounts, &first).await,
            session_of(&accounts, &second).await,
            session_of(&accounts, &third).await,
        );
        let registry = accounts.sessions();
        let (w1, w2, w3) = (
            registry.register(s1.token_hash),
            registry.register(s2.token_hash),
            registry.register(s3.token_hash),
        );
        accounts.sign_out(&s1).await.unwrap();
        assert!(w1.is_revoked() && !w2.is_revoked() && !w3.is_revoked());
        accounts
            .change_password(&s2, PASSWORD, "another horse battery", CLIENT)
            .await
            .unwrap();
        assert!(!w2.is_revoked(), "the session that changed it stays");
        assert!(w3.is_revoked());
        accounts.sign_out_everywhere(&s2).await.unwrap();
        assert!(w2.is_revoked());
        assert!(accounts.session(&second.token).await.unwrap().is_none());
    }

    #[test]
    fn tokens_are_128_random_bits_in_hex() {
        let a = new_token();
        assert!(well_formed(&a), "{a}");
        assert_ne!(a, new_token());
        assert!(!well_formed(&a.to_uppercase()));
        assert!(!well_formed(&a[1..]));
        assert_eq!(
            hash_token(&a),
            <[u8; 32]>::from(Sha256::digest(a.as_bytes()))
        );
    }
}
