//! Which live connections belong to which account session, so that revoking
//! a session (signing out, signing out everywhere, a password change, an
//! operator disabling the account) reaches them at once.
//!
//! A connection [`register`](SessionRegistry::register)s the SHA-256 of its
//! session's token and holds the returned [`SessionWatch`] while it lives;
//! [`SessionWatch::revoked`] resolves when the session is revoked, and the
//! connection closes itself (WebSocket close code 4001). Dropping the watch
//! unregisters it. Only this server's connections are reached: a session
//! revoked elsewhere (another server, `chatterpro admin`) is gone from
//! storage, which the next check of the session sees.
//!
//! **Order.** A connection registers first and checks its session in
//! storage second: a revocation then either happens before the check (which
//! fails) or signals the registration. Checked first, a revocation between
//! the check and the registration would be missed.
//!
//! One `std::sync::Mutex` over a map; never held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

#[derive(Default)]
pub struct SessionRegistry {
    live: Mutex<HashMap<[u8; 32], Live>>,
}

/// The connections of one session.
struct Live {
    revoked: CancellationToken,
    watches: usize,
    /// Tells a watch of an entry revoked and registered again from a watch
    /// of the new entry.
    generation: u64,
}

/// One connection's registration; unregisters on drop.
pub struct SessionWatch {
    registry: Arc<SessionRegistry>,
    token_hash: [u8; 32],
    generation: u64,
    revoked: CancellationToken,
}

impl SessionWatch {
    /// Resolves when the session is revoked (at once if it already was).
    pub fn revoked(&self) -> WaitForCancellationFutureOwned {
        self.revoked.clone().cancelled_owned()
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.is_cancelled()
    }

    /// The session's token hash.
    pub fn token_hash(&self) -> &[u8; 32] {
        &self.token_hash
    }
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
        let mut live = self.registry.lock();
        if let Some(entry) = live.get_mut(&self.token_hash)
            && entry.generation == self.generation
        {
            entry.watches -= 1;
            if entry.watches == 0 {
                live.remove(&self.token_hash);
            }
        }
    }
}

impl SessionRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection of the session whose token hashes to `token_hash`.
    pub fn register(self: &Arc<Self>, token_hash: [u8; 32]) -> SessionWatch {
        static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut live = self.lock();
        let entry = live.entry(token_hash).or_insert_with(|| Live {
            revoked: CancellationToken::new(),
            watches: 0,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        });
        entry.watches += 1;
        SessionWatch {
            registry: self.clone(),
            token_hash,
            generation: entry.generation,
            revoked: entry.revoked.clone(),
        }
    }

    /// Signals every connection registered under these sessions; returns
    /// how many sessions had some.
    pub fn revoke(&self, token_hashes: &[[u8; 32]]) -> usize {
        let mut live = self.lock();
        let mut reached = 0;
        for hash in token_hashes {
            if let Some(entry) = live.remove(hash) {
                entry.revoked.cancel();
                reached += 1;
            }
        }
        reached
    }

    /// Sessions with a registered connection.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn revoking_a_session_signals_each_of_its_connections_and_no_other() {
        let registry = SessionRegistry::new();
        let a1 = registry.register([1; 32]);
        let a2 = registry.register([1; 32]);
        let b = registry.register([2; 32]);
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.revoke(&[[1; 32], [3; 32]]), 1);
        tokio::time::timeout(Duration::from_secs(1), a1.revoked())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), a2.revoked())
            .await
            .unwrap();
        assert!(!b.is_revoked());
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn dropped_watches_unregister_and_a_new_registration_starts_unrevoked() {
        let registry = SessionRegistry::new();
        let a1 = registry.register([1; 32]);
        let a2 = registry.register([1; 32]);
        drop(a1);
        assert_eq!(registry.len(), 1);
        drop(a2);
        assert!(registry.is_empty());
        // Revoked, then the same hash registered again (a later check will
        // refuse it, but the registry itself must not stay revoked).
        let old = registry.register([1; 32]);
        registry.revoke(&[[1; 32]]);
        let new = registry.register([1; 32]);
        assert!(old.is_revoked() && !new.is_revoked());
        // The revoked watch's drop leaves the new entry alone.
        drop(old);
        assert_eq!(registry.len(), 1);
        drop(new);
        assert!(registry.is_empty());
    }
}
