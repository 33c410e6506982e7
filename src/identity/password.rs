//! Account passwords: what is strong enough, and argon2id hashing and
//! verification off the async runtime.
//!
//! **Parameters.** argon2id, 19 MiB of memory, 2 passes, 1 lane: the first
//! configuration of the OWASP Password Storage Cheat Sheet (its minimum for
//! argon2id). The PHC string stores them with each hash, so a hash made
//! under other parameters still verifies.
//!
//! **Off the runtime, and bounded.** A hash takes tens of milliseconds of
//! CPU and 19 MiB: each runs on a blocking thread, and at most
//! [`Passwords::new`]'s `concurrent` run at once (half the cores, at least
//! one), so a flood of sign-ins cannot take the cores chat traffic needs.
//! Requests beyond [`MAX_WAITING`] waiting for a turn are refused as
//! [`PasswordError::Busy`] rather than queued without bound.
//!
//! **Same time for unknown names.** [`Passwords::verify`] without a stored
//! hash verifies against a dummy hash made with the same parameters, so a
//! sign-in under a name nobody has takes as long as a wrong password.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::SaltString;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::{OnceCell, Semaphore};

/// Shortest password accepted, in bytes of UTF-8.
pub const MIN_BYTES: usize = 8;
/// Longest password accepted, in bytes: hashing cost grows with length.
pub const MAX_BYTES: usize = 1024;
/// argon2id's memory, in KiB (19 MiB).
pub const MEMORY_KIB: u32 = 19 * 1024;
/// argon2id's passes over the memory.
pub const ITERATIONS: u32 = 2;
/// argon2id's lanes.
pub const PARALLELISM: u32 = 1;
/// Hashes waiting for a turn beyond which more are refused.
pub const MAX_WAITING: usize = 64;

/// The built-in list of common passwords, lower-cased (see the file's header).
static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("common-passwords.txt")
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
});

/// Why a new password was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    #[error("the password must be at least {MIN_BYTES} bytes long")]
    TooShort,
    #[error("the password must be at most {MAX_BYTES} bytes long")]
    TooLong,
    #[error("the password is one of the most common passwords")]
    Common,
}

/// Checks a new password: 8–1024 bytes, not in the common list (compared
/// without case).
pub fn check_strength(password: &str) -> Result<(), WeakPassword> {
    if password.len() < MIN_BYTES {
        return Err(WeakPassword::TooShort);
    }
    if password.len() > MAX_BYTES {
        return Err(WeakPassword::TooLong);
    }
    if COMMON.contains(password.to_lowercase().as_str()) {
        return Err(WeakPassword::Common);
    }
    Ok(())
}

/// Why hashing or verifying did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Too many hashes are waiting for a turn: try again shortly.
    #[error("too many passwords are being checked")]
    Busy,
    /// A stored hash is not a PHC string argon2 reads, or hashing failed.
    #[error("password hashing failed: {0}")]
    Failed(String),
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .expect("the parameters are within argon2's bounds");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_blocking(password: &[u8]) -> Result<String, PasswordError> {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Failed(e.to_string()))?;
    argon2()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError::Failed(e.to_string()))
}

fn verify_blocking(password: &[u8], phc: &str) -> Result<bool, PasswordError> {
    let hash = PasswordHash::new(phc).map_err(|e| PasswordError::Failed(e.to_string()))?;
    // The parameters are the stored hash's own.
    match argon2().verify_password(password, &hash) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(PasswordError::Failed(e.to_string())),
    }
}

/// Hashes and verifies passwords, a bounded number at a time.
pub struct Passwords {
    permits: Semaphore,
    waiting: AtomicUsize,
    /// A hash of a random password, made on first need.
    dummy: OnceCell<String>,
}

impl Passwords {
    /// At most `concurrent` hashes at once (at least one).
    pub fn new(concurrent: usize) -> Self {
        Self {
            permits: Semaphore::new(concurrent.max(1)),
            waiting: AtomicUsize::new(0),
            dummy: OnceCell::new(),
        }
    }

    /// Half the cores this process may use, at least one.
    pub fn default_concurrency() -> usize {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }

    /// Runs `work` on a blocking thread once a permit is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(PasswordError::Busy);
        }
        let permit = self.permits.acquire().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let _permit = permit.map_err(|_| PasswordError::Busy)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| PasswordError::Failed(e.to_string()))?
    }

    /// The argon2id PHC string of `password` (with a fresh 128-bit salt).
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let password = password.as_bytes().to_vec();
        self.run(move || hash_blocking(&password)).await
    }

    /// Whether `password` matches `stored`. Without a stored hash (no such
    /// account) the dummy hash is verified instead, taking the same time,
    /// and the answer is `false`.
    pub async fn verify(
        &self,
        password: &str,
        stored: Option<&str>,
    ) -> Result<bool, PasswordError> {
        let (phc, real) = match stored {
            Some(phc) => (phc.to_owned(), true),
            None => (self.dummy_hash().await?.to_owned(), false),
        };
        let password = password.as_bytes().to_vec();
        let matches = self.run(move || verify_blocking(&password, &phc)).await?;
        Ok(matches && real)
    }

    async fn dummy_hash(&self) -> Result<&str, PasswordError> {
        self.dummy
            .get_or_try_init(|| async {
                let random: [u8; 16] = rand::random();
                self.run(move || hash_blocking(&random)).await
            })
            .await
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn lengths_count_bytes_and_common_passwords_are_refused_in_any_case() {
        assert_eq!(check_strength("short12"), Err(WeakPassword::TooShort));
        // 4 characters, 8 bytes.
        assert_eq!(check_strength("éééé"), Ok(()));
        assert_eq!(check_strength(&"x".repeat(1024)), Ok(()));
        assert_eq!(
            check_strength(&"x".repeat(1025)),
            Err(WeakPassword::TooLong)
        );
        for common in ["password", "PassWord", "12345678", "iloveyou", "Sunshine"] {
            assert_eq!(
                check_strength(common),
                Err(WeakPassword::Common),
                "{common}"
            );
        }
        assert_eq!(check_strength("correct horse battery"), Ok(()));
        assert!(COMMON.len() >= 4000, "{}", COMMON.len());
    }

    #[tokio::test]
    async fn a_hash_is_argon2id_with_the_owasp_parameters_and_verifies() {
        let passwords = Passwords::new(1);
        let phc = passwords.hash("correct horse").await.unwrap();
        let parsed = PasswordHash::new(&phc).unwrap();
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        assert_eq!(parsed.version, Some(0x13));
        let params = Params::try_from(&parsed).unwrap();
        assert_eq!(params.m_cost(), 19_456);
        assert_eq!(params.t_cost(), 2);
        assert_eq!(params.p_cost(), 1);
        assert_eq!(parsed.salt.unwrap().len(), 22, "128 bits of salt in base64");
        assert!(passwords.verify("correct horse", Some(&phc)).await.unwrap());
        assert!(!passwords.verify("correct horsE", Some(&phc)).await.unwrap());
        // Two hashes of one password differ by their salt.
        assert_ne!(passwords.hash("correct horse").await.unwrap(), phc);
    }

    /// An unknown name's check really runs argon2: it takes about as long
    /// as a wrong password's, and far longer than no hash at all would.
    #[tokio::test]
    async fn the_dummy_path_hashes() {
        let passwords = Passwords::new(1);
        let phc = passwords.hash("correct horse").await.unwrap();
        assert!(!passwords.verify("x", None).await.unwrap(), "never a match");
        let dummy = passwords.dummy.get().unwrap();
        assert_eq!(
            Params::try_from(&PasswordHash::new(dummy).unwrap()).unwrap(),
            Params::try_from(&PasswordHash::new(&phc).unwrap()).unwrap()
        );
        let mut real = Duration::MAX;
        let mut unknown = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            passwords.verify("wrong horse", Some(&phc)).await.unwrap();
            real = real.min(t.elapsed());
            let t = Instant::now();
            passwords.verify("wrong horse", None).await.unwrap();
            unknown = unknown.min(t.elapsed());
        }
        // The fastest of each: load only slows a run down.
        assert!(unknown * 3 >= real, "unknown {unknown:?}, real {real:?}");
        assert!(unknown >= Duration::from_millis(2), "{unknown:?}");
    }

    #[tokio::test]
    async fn hashes_beyond_the_waiting_bound_are_refused() {
        let passwords = std::sync::Arc::new(Passwords::new(1));
        let held = passwords.permits.acquire().await.unwrap();
        let waiting: Vec<_> = (0..MAX_WAITING)
            .map(|_| {
                let p = passwords.clone();
                tokio::spawn(async move { p.hash("correct horse").await })
            })
            .collect();
        while passwords.waiting.load(Ordering::Relaxed) < MAX_WAITING {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            passwords.hash("one too many").await,
            Err(PasswordError::Busy)
        ));
        drop(held);
        for w in waiting {
            assert!(w.await.unwrap().is_ok());
        }
    }
}
