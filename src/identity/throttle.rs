//! Failed sign-ins, counted per account name and per client address: after
//! [`PER_ACCOUNT`] failures for one name, or [`PER_ADDRESS`] from one
//! address, within [`WINDOW`], sign-ins are refused until the oldest of
//! those failures is a window old. The name counts whether or not an
//! account has it, so a refusal tells nothing about which names exist.
//!
//! Each key keeps the times of its last few failures (a sliding window, no
//! more entries than its limit). Memory is bounded: at most [`MAX_KEYS`]
//! names and as many addresses; a full map first forgets keys whose
//! failures are all a window old, then the key failed least recently.
//! Evicting a key takes that many other keys' failures first, each one a
//! password hash (bounded per second by `identity::password`), so an
//! attacker cannot cheaply wipe the count of the account it is guessing.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::{RetryAfter, address_key};

/// Failures allowed per account name within [`WINDOW`].
pub const PER_ACCOUNT: usize = 5;
/// Failures allowed per client address within [`WINDOW`].
pub const PER_ADDRESS: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Names (and, apart, addresses) remembered at most.
pub const MAX_KEYS: usize = 65_536;

/// The recent failures of each key.
struct Failures<K> {
    limit: usize,
    by_key: HashMap<K, VecDeque<Instant>>,
}

impl<K: Eq + Hash + Clone> Failures<K> {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            by_key: HashMap::new(),
        }
    }

    /// How long until `key` may try again, if it has used its failures up.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let times = self.by_key.get(key)?;
        let recent = times
            .iter()
            .filter(|&&t| now.duration_since(t) < WINDOW)
            .count();
        if recent < self.limit {
            return None;
        }
        // The oldest recent failure leaving the window frees one try.
        let oldest = times.iter().find(|&&t| now.duration_since(t) < WINDOW)?;
        Some(WINDOW - now.duration_since(*oldest))
    }

    fn record(&mut self, key: K, now: Instant) {
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_KEYS {
            self.by_key.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|&t| now.duration_since(t) < WINDOW)
            });
            if self.by_key.len() >= MAX_KEYS
                && let Some(stalest) = self
                    .by_key
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(k, _)| k.clone())
            {
                self.by_key.remove(&stalest);
            }
        }
        let times = self.by_key.entry(key).or_default();
        while times
            .front()
            .is_some_and(|&t| now.duration_since(t) >= WINDOW)
        {
            times.pop_front();
        }
        if times.len() == self.limit {
            times.pop_front();
        }
        times.push_back(now);
    }

    fn forget(&mut self, key: &K) {
        self.by_key.remove(key);
    }
}

/// Failed sign-ins, shared by all requests.
pub struct LoginThrottle {
    state: Mutex<(Failures<String>, Failures<IpAddr>)>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self {
            state: Mutex::new((Failures::new(PER_ACCOUNT), Failures::new(PER_ADDRESS))),
        }
    }
}

impl LoginThrottle {
    /// May a sign-in for `name_key` from `ip` be tried at `now`?
    pub fn check(&self, name_key: &str, ip: IpAddr, now: Instant) -> Result<(), RetryAfter> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let wait = [
            state.0.wait(&name_key.to_owned(), now),
            state.1.wait(&address_key(ip), now),
        ]
        .into_iter()
        .flatten()
        .max();
        wait.map_or(Ok(()), |w| Err(RetryAfter(w)))
    }

    /// A sign-in for `name_key` from `ip` failed at `now`.
    pub fn failed(&self, name_key: &str, ip: IpAddr, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0.record(name_key.to_owned(), now);
        state.1.record(address_key(ip), now);
    }

    /// A sign-in for `name_key` succeeded: its name's failures are forgotten
    /// (the address's stay: it may be guessing other names).
    pub fn succeeded(&self, name_key: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0.forget(&name_key.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn five_failures_for_a_name_block_it_for_the_rest_of_the_window() {
        let throttle = LoginThrottle::default();
        let t0 = Instant::now();
        for i in 0..5 {
            let at = t0 + Duration::from_secs(i * 60);
            assert!(throttle.check("alice", ip("10.0.0.1"), at).is_ok());
            // From different addresses: the name's count is what stops it.
            throttle.failed("alice", ip(&format!("10.0.0.{}", i + 1)), at);
        }
        let at = t0 + Duration::from_secs(5 * 60);
        let wait = throttle.check("alice", ip("10.9.9.9"), at).unwrap_err();
        assert_eq!(wait.0, Duration::from_secs(10 * 60));
        assert!(throttle.check("bob", ip("10.9.9.9"), at).is_ok());
        // Once the first failure is a window old, one more try.
        assert!(throttle.check("alice", ip("10.9.9.9"), t0 + WINDOW).is_ok());
        // A success forgets the name's failures.
        throttle.succeeded("alice");
        assert!(throttle.check("alice", ip("10.9.9.9"), at).is_ok());
    }

    #[test]
    fn twenty_failures_from_an_address_block_it_for_every_name() {
        let throttle = LoginThrottle::default();
        let t0 = Instant::now();
        for i in 0..20 {
            throttle.failed(&format!("name{i}"), ip("2001:db8::1"), t0);
        }
        // The same /64.
        assert!(throttle.check("other", ip("2001:db8::2"), t0).is_err());
        assert!(throttle.check("other", ip("2001:db8:1::1"), t0).is_ok());
        assert!(
            throttle
                .check("other", ip("2001:db8::2"), t0 + WINDOW)
                .is_ok()
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut failures = Failures::new(PER_ACCOUNT);
        let t0 = Instant::now();
        for i in 0..MAX_KEYS + 10 {
            failures.record(i, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(failures.by_key.len(), MAX_KEYS);
        // The stalest went.
        assert!(!failures.by_key.contains_key(&0));
        assert!(failures.by_key.contains_key(&(MAX_KEYS + 9)));
        for times in failures.by_key.values() {
            assert!(times.len() <= PER_ACCOUNT);
        }
    }
}
