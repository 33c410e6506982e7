//! Who someone is: which name a connection speaks under, and the identity
//! behind it. On the WebSocket a connection is either an account's (its
//! upgrade carried a valid session cookie; [`NameClaims::claim_account`]
//! counts it online under the account's name, storing nothing) or a
//! guest's: a name, claimed with `hello`, and a reclaim token that proves
//! the claim again later (the wire calls it `session`; "session" here is
//! kept for accounts' sessions).
//!
//! The hub asks through [`NameClaims`]; [`GuestClaims`] answers from two
//! places. Who is online is kept in memory (one entry per name, counting
//! connections). Guests themselves are stored ([`GuestStore`]): the
//! token's SHA-256 (the token itself is never stored), the name's
//! look-alike keys, a random [`AuthorId`] stored with each message the
//! guest sends, and when the token was last used. So after a restart the
//! page that held a name gets it back with its token, and its messages keep
//! their author id; and nobody else may take that name while its holder is
//! online or, once offline, for `--name-hold` after it was last seen (a
//! restart counts as seeing every stored guest: they may have been online).
//! A token unused for `--guest-ttl` expires and its row is forgotten.
//!
//! Claims are answered from memory and storage's reads; the writes they
//! make (a new guest, a time last seen) are queued and saved together every
//! [`guests::SAVE_EVERY`] (200 ms), and on a clean stop. So a clean
//! restart loses nothing; a crash (or power cut) loses the claims and
//! leavings of its last 200 ms: those pages' tokens claim nothing after it,
//! and they get new identities (under the same name, unless someone took it
//! first). A lost leaving costs nothing: a start holds every stored name
//! for a hold anyway.
//!
//! Accounts ([`accounts`]) are people who signed up with a name and a
//! password (hashed in [`password`]); a signed-in browser holds a session
//! token, and [`sessions`] knows which live connections belong to which
//! session, so revoking one reaches them. Failed sign-ins are counted in
//! [`throttle`].
//!
//! It must not touch rooms, messages or sockets.

pub mod accounts;
mod guests;
pub mod password;
pub mod sessions;
pub mod throttle;

pub use accounts::{AccountError, Accounts, AccountsConfig, Session, SignedIn};
pub use guests::{GuestClaims, IdentityConfig};
pub use sessions::{SessionRegistry, SessionWatch};

use async_trait::async_trait;

use crate::domain::{AuthorId, Nickname};
use crate::storage::StorageError;

/// A granted name: what the connection speaks as until it closes.
#[derive(Debug, Clone)]
pub struct Claim {
    pub name: Nickname,
    /// The reclaim token that claims the name again (`welcome.session` on the wire).
    pub token: String,
    /// Stored with every message sent under this claim.
    pub author: AuthorId,
    /// The name's uniqueness key, to release it.
    key: String,
}

impl Claim {
    /// The name's uniqueness key ([`Nickname::key`]).
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Why a name was not granted.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Someone online holds the name (or a look-alike of it).
    #[error("the name {0} is taken by someone online")]
    Online(String),
    /// Its holder is offline, but holds it for a while longer.
    #[error("the name {0} belongs to someone who was here a moment ago")]
    Held(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Grants names to connections and takes them back.
#[async_trait]
pub trait NameClaims: Send + Sync + 'static {
    /// Claims `name`. With the `token` issued for it (or a look-alike of
    /// it) before, the same identity is granted again, whether it is online
    /// now (another tab) or not (after a restart); without one, the name is
    /// granted to a new identity if nobody holds it.
    async fn claim(&self, name: Nickname, token: Option<&str>) -> Result<Claim, ClaimError>;

    /// Counts a connection of the account whose messages carry `author`
    /// online under its name: nothing is stored (the account is). Another
    /// connection of the same account shares the claim; a guest online
    /// under the name (or a look-alike) refuses it. Released with
    /// [`NameClaims::release`].
    fn claim_account(&self, name: Nickname, author: AuthorId) -> Result<Claim, ClaimError>;

    /// One connection under `claim` has closed.
    fn release(&self, claim: &Claim);

    /// Whether someone is online under `name` or a look-alike of it now
    /// (a new account must not take that name from them).
    fn is_online(&self, name: &Nickname) -> bool;
}
