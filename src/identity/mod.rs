//! Who someone is: which name a connection speaks under, and the identity
//! behind it. Today everyone is a guest: a name, claimed with `hello`, and a
//! session token that proves the claim again later.
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
//! A token unused for `--session-ttl` expires and its row is forgotten.
//!
//! It must not touch rooms, messages or sockets.

mod guests;

pub use guests::{GuestClaims, IdentityConfig};

use async_trait::async_trait;

use crate::domain::{AuthorId, Nickname};
use crate::storage::StorageError;

/// A granted name: what the connection speaks as until it closes.
#[derive(Debug, Clone)]
pub struct Claim {
    pub name: Nickname,
    /// The session token that claims the name again (sent in `welcome`).
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

    /// One connection under `claim` has closed.
    fn release(&self, claim: &Claim);
}
