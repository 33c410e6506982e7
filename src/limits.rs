//! Abuse limits: how fast one connection may act, how many connections one
//! address and the whole server may hold, and how fast an address may create
//! rooms. Policy only — the connection layer asks, this module answers.
//!
//! Rates are token buckets (the `governor` crate's GCRA): a burst is allowed,
//! then a steady rate. A refusal says how long to wait, which becomes the
//! `retry_after_ms` of a `rate_limited` error.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::domain::RoomName;

/// The limits, as configured (see `config.rs` for each one's meaning and default).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub msg_rate: NonZeroU32,
    pub msg_burst: NonZeroU32,
    pub join_rate: NonZeroU32,
    pub join_burst: NonZeroU32,
    pub request_rate: NonZeroU32,
    pub request_burst: NonZeroU32,
    pub max_rooms_per_conn: usize,
    pub abuse_strikes: NonZeroU32,
    pub max_connections: usize,
    pub max_conns_per_ip: usize,
    pub conns_per_ip_per_minute: NonZeroU32,
    pub rooms_per_ip_per_minute: NonZeroU32,
    pub rejoins_per_minute: NonZeroU32,
    pub room_joins_per_ip_per_minute: NonZeroU32,
}

/// Which limit refused a request; strikes are judged per kind, so waiting
/// out a long room-creation refusal does not make message retries "early".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Messages,
    Joins,
    Rooms,
    NewRooms,
    Rejoins,
    RoomJoins,
}

impl LimitKind {
    const COUNT: usize = 7;
}

/// How long to wait before trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    // Both round up, so a client that waits exactly this long succeeds.
    pub fn millis(self) -> u64 {
        u64::try_from(self.0.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
    }

    pub fn secs(self) -> u64 {
        self.millis().div_ceil(1000)
    }
}

fn check(limiter: &DefaultDirectRateLimiter, clock: &DefaultClock) -> Result<(), RetryAfter> {
    limiter
        .check()
        .map_err(|not_until| RetryAfter(not_until.wait_time_from(clock.now())))
}

fn per_second(rate: NonZeroU32, burst: NonZeroU32) -> Quota {
    Quota::per_second(rate).allow_burst(burst)
}

/// One connection's buckets.
pub struct ConnLimits {
    messages: DefaultDirectRateLimiter,
    joins: DefaultDirectRateLimiter,
    requests: DefaultDirectRateLimiter,
    /// A request refused before the wait announced by an earlier refusal
    /// was over takes a strike; strikes refill at one per second. A client
    /// that keeps ignoring `retry_after_ms` runs out and is closed with 1008.
    /// A client that waits as told is never struck, however eager.
    strikes: DefaultDirectRateLimiter,
    clock: DefaultClock,
    /// For each kind of limit, when its last refusal said trying again would work.
    not_before: [Cell<Option<Instant>>; LimitKind::COUNT],
    max_rooms: usize,
    /// Rejoining a room this connection left (see [`ConnLimits::rejoin`]).
    churn: RejoinLimits,
}

impl ConnLimits {
    /// `clock` is shared: building a clock calibrates a timer, far too
    /// costly to do four times per connection.
    pub fn new(config: &LimitsConfig, clock: &DefaultClock) -> Self {
        Self {
            messages: RateLimiter::direct_with_clock(
                per_second(config.msg_rate, config.msg_burst),
                clock.clone(),
            ),
            joins: RateLimiter::direct_with_clock(
                per_second(config.join_rate, config.join_burst),
                clock.clone(),
            ),
            requests: RateLimiter::direct_with_clock(
                per_second(config.request_rate, config.request_burst),
                clock.clone(),
            ),
            strikes: RateLimiter::direct_with_clock(
                per_second(NonZeroU32::MIN, config.abuse_strikes),
                clock.clone(),
            ),
            clock: clock.clone(),
            not_before: Default::default(),
            max_rooms: config.max_rooms_per_conn,
            churn: RejoinLimits::new(config.rejoins_per_minute, clock),
        }
    }

    /// Any frame at all.
    pub fn request(&self) -> Result<(), RetryAfter> {
        check(&self.requests, &self.clock)
    }

    pub fn message(&self) -> Result<(), RetryAfter> {
        check(&self.messages, &self.clock)
    }

    pub fn join(&self) -> Result<(), RetryAfter> {
        check(&self.joins, &self.clock)
    }

    pub fn max_rooms(&self) -> usize {
        self.max_rooms
    }

    /// A join of `room` that is not a re-sync: free if this connection
    /// never left it, else it takes a rejoin token too.
    pub fn rejoin(&self, room: &RoomName) -> Result<(), RetryAfter> {
        self.churn.check(room, &self.clock)
    }

    /// This connection left `room`.
    pub fn left_room(&self, room: &RoomName) {
        self.churn.left(room);
    }

    /// Records a refusal by the `kind` limit that told the client to wait
    /// `retry` (if known); false when the client has ignored such waits once
    /// too often.
    pub fn refused(&self, kind: LimitKind, retry: Option<Duration>) -> bool {
        let now = Instant::now();
        let not_before = &self.not_before[kind as usize];
        let ignored_a_wait = not_before.get().is_some_and(|t| now < t);
        if let Some(retry) = retry {
            let until = now + retry;
            not_before.set(Some(not_before.get().map_or(until, |t| t.max(until))));
        }
        !ignored_a_wait || self.strikes.check().is_ok()
    }
}

/// Why a new connection was turned away at the HTTP upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The server holds its maximum number of connections (HTTP 503).
    ServerFull,
    /// This address holds its maximum number of connections (HTTP 429).
    TooManyFromAddress,
    /// This address opened connections too fast (HTTP 429).
    TooFastFromAddress(RetryAfter),
}

/// Connection counts and per-address rates, shared by all connections.
pub struct AddressLimits {
    config: LimitsConfig,
    clock: DefaultClock,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    new_conns: DefaultKeyedRateLimiter<IpAddr>,
    new_rooms: DefaultKeyedRateLimiter<IpAddr>,
    admissions: AtomicUsize,
    room_joins: RoomJoinLimits,
}

/// Holds one connection's place in the counts; dropping it frees the place.
pub struct ConnPermit {
    limits: Arc<AddressLimits>,
    ip: IpAddr,
    key: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(n) = per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.key);
            }
        }
    }
}

impl ConnPermit {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// The key per-address limits count under. One IPv6 customer usually holds
/// a whole /64, so IPv6 addresses are grouped by their /64 prefix; an
/// IPv4-mapped IPv6 address counts as the IPv4 address it is.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Keyed limiters keep a cell per address; forget idle ones this often.
const PRUNE_EVERY: usize = 1024;

impl AddressLimits {
    pub fn new(config: LimitsConfig) -> Arc<Self> {
        let per_minute = |n: NonZeroU32| Quota::per_minute(n).allow_burst(n);
        let clock = DefaultClock::default();
        Arc::new(Self {
            room_joins: RoomJoinLimits::new(config.room_joins_per_ip_per_minute, &clock),
            new_conns: RateLimiter::dashmap_with_clock(
                per_minute(config.conns_per_ip_per_minute),
                clock.clone(),
            ),
            new_rooms: RateLimiter::dashmap_with_clock(
                per_minute(config.rooms_per_ip_per_minute),
                clock.clone(),
            ),
            clock,
            config,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            admissions: AtomicUsize::new(0),
        })
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Fresh per-connection buckets.
    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits::new(&self.config, &self.clock)
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Admission> {
        let key = address_key(ip);
        if self
            .admissions
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
        {
            self.new_conns.retain_recent();
            self.new_rooms.retain_recent();
        }
        // Check and count under one lock, so concurrent upgrades cannot
        // overshoot either cap.
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.config.max_connections {
            return Err(Admission::ServerFull);
        }
        let held = per_ip.get(&key).copied().unwrap_or(0);
        if held >= self.config.max_conns_per_ip {
            return Err(Admission::TooManyFromAddress);
        }
        self.new_conns.check_key(&key).map_err(|not_until| {
            Admission::TooFastFromAddress(RetryAfter(not_until.wait_time_from(self.clock.now())))
        })?;
        self.total.fetch_add(1, Ordering::Relaxed);
        per_ip.insert(key, held + 1);
        Ok(ConnPermit {
            limits: self.clone(),
            ip,
            key,
        })
    }

    /// May `ip` create a new room now?
    pub fn create_room(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        self.new_rooms
            .check_key(&address_key(ip))
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// May a connection from `ip` join `room` now (a join that is not a re-sync)?
    pub fn join_room(&self, ip: IpAddr, room: &RoomName) -> Result<(), RetryAfter> {
        self.room_joins.check(ip, room, &self.clock)
    }
}

// ------------------------------------------------------------ join/leave churn
//
// Each join or leave that changes who is in a room is news for every member.
// Presence is coalesced (hub::presence), so churn no longer multiplies bytes,
// but joins still cost catch-up reads and announcements; these two limits
// keep churn of one room cheap to refuse. A first join of a room costs a
// join token (`--join-rate`); leaving and joining it again on the same
// connection costs a rejoin token too (`--rejoins-per-minute`), and every
// join of a room by the connections of one address draws from one bucket per
// address and room (`--room-joins-per-ip-per-minute`, its burst as large as
// its rate per minute: an office behind one NAT joining in the morning
// passes, a loop of joins and leaves does not).

/// Rooms one connection remembers having left. A connection cycling through
/// more rooms than this to dodge the rejoin cost still meets the
/// per-address bucket of each room.
const ROOMS_LEFT_REMEMBERED: usize = 16;

/// One connection's rejoin bucket and the rooms it left.
struct RejoinLimits {
    rejoins: DefaultDirectRateLimiter,
    /// Oldest first; a `RefCell` because a connection is one task.
    left: RefCell<VecDeque<RoomName>>,
}

impl RejoinLimits {
    fn new(per_minute: NonZeroU32, clock: &DefaultClock) -> Self {
        Self {
            rejoins: RateLimiter::direct_with_clock(
                Quota::per_minute(per_minute).allow_burst(per_minute),
                clock.clone(),
            ),
            left: RefCell::new(VecDeque::new()),
        }
    }

    fn check(&self, room: &RoomName, clock: &DefaultClock) -> Result<(), RetryAfter> {
        if self.left.borrow().contains(room) {
            check(&self.rejoins, clock)
        } else {
            Ok(())
        }
    }

    fn left(&self, room: &RoomName) {
        let mut left = self.left.borrow_mut();
        if left.contains(room) {
            return;
        }
        if left.len() == ROOMS_LEFT_REMEMBERED {
            left.pop_front();
        }
        left.push_back(room.clone());
    }
}

/// Joins per address and room, shared by all connections.
struct RoomJoinLimits {
    joins: DefaultKeyedRateLimiter<(IpAddr, RoomName)>,
    /// Checks so far, to forget idle keys now and then.
    checks: AtomicUsize,
}

impl RoomJoinLimits {
    fn new(per_minute: NonZeroU32, clock: &DefaultClock) -> Self {
        Self {
            joins: RateLimiter::dashmap_with_clock(
                Quota::per_minute(per_minute).allow_burst(per_minute),
                clock.clone(),
            ),
            checks: AtomicUsize::new(0),
        }
    }

    fn check(&self, ip: IpAddr, room: &RoomName, clock: &DefaultClock) -> Result<(), RetryAfter> {
        // A key is kept per address and room joined; those idle long enough
        // to have a full bucket again carry nothing and are forgotten.
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
        {
            self.joins.retain_recent();
        }
        self.joins
            .check_key(&(address_key(ip), room.clone()))
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(clock.now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn config() -> LimitsConfig {
        LimitsConfig {
            msg_rate: nz(10),
            msg_burst: nz(20),
            join_rate: nz(5),
            join_burst: nz(10),
            request_rate: nz(50),
            request_burst: nz(100),
            max_rooms_per_conn: 100,
            abuse_strikes: nz(3),
            max_connections: 3,
            max_conns_per_ip: 2,
            conns_per_ip_per_minute: nz(100),
            rooms_per_ip_per_minute: nz(2),
            rejoins_per_minute: nz(2),
            room_joins_per_ip_per_minute: nz(3),
        }
    }

    #[test]
    fn messages_allow_a_burst_then_say_when_to_retry() {
        let limits = ConnLimits::new(&config(), &DefaultClock::default());
        for _ in 0..20 {
            assert!(limits.message().is_ok());
        }
        let retry = limits.message().unwrap_err();
        assert!(retry.millis() > 0 && retry.millis() <= 100, "{retry:?}");
    }

    #[test]
    fn ignoring_retry_after_runs_out_of_strikes() {
        let limits = ConnLimits::new(&config(), &DefaultClock::default());
        let wait = Some(Duration::from_secs(60));
        // The first refusal is no strike; coming back early is, three times.
        for _ in 0..4 {
            assert!(limits.refused(LimitKind::Messages, wait));
        }
        assert!(!limits.refused(LimitKind::Messages, wait));
    }

    #[test]
    fn waiting_as_told_is_never_struck() {
        let limits = ConnLimits::new(&config(), &DefaultClock::default());
        // A long wait for one kind does not make another kind's retries early.
        assert!(limits.refused(LimitKind::NewRooms, Some(Duration::from_secs(60))));
        for _ in 0..10 {
            assert!(limits.refused(LimitKind::Messages, Some(Duration::ZERO)));
        }
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());

        let limits = AddressLimits::new(config());
        let _p1 = limits.admit(a).unwrap();
        let _p2 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).err(), Some(Admission::TooManyFromAddress));
    }

    #[test]
    fn connections_are_capped_per_address_and_in_total() {
        let limits = AddressLimits::new(config());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = limits.admit(a).unwrap();
        let _p2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Admission::TooManyFromAddress));
        let _p3 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).err(), Some(Admission::ServerFull));
        drop(p1);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn room_creation_is_rate_limited_per_address() {
        let limits = AddressLimits::new(config());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(limits.create_room(a).is_ok());
        assert!(limits.create_room(a).is_ok());
        let retry = limits.create_room(a).unwrap_err();
        assert!(retry.millis() > 1000);
        assert!(limits.create_room("10.0.0.9".parse().unwrap()).is_ok());
    }

    #[test]
    fn rejoining_a_room_left_costs_a_rejoin_token() {
        let limits = ConnLimits::new(&config(), &DefaultClock::default());
        let (a, b) = (RoomName::parse("a").unwrap(), RoomName::parse("b").unwrap());
        // First joins are free of it, however many.
        for _ in 0..5 {
            assert!(limits.rejoin(&a).is_ok());
        }
        limits.left_room(&a);
        assert!(limits.rejoin(&a).is_ok());
        assert!(limits.rejoin(&a).is_ok());
        let retry = limits.rejoin(&a).unwrap_err();
        // Two a minute: the next one in about 30 s.
        assert!(retry.secs() > 20, "{retry:?}");
        assert!(limits.rejoin(&b).is_ok());
    }

    #[test]
    fn joins_of_one_room_are_limited_per_address() {
        let limits = AddressLimits::new(config());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let room = RoomName::parse("Chat Room").unwrap();
        for _ in 0..3 {
            assert!(limits.join_room(a, &room).is_ok());
        }
        assert!(limits.join_room(a, &room).unwrap_err().millis() > 1000);
        // Another room, another address: their own buckets.
        assert!(limits.join_room(a, &RoomName::parse("b").unwrap()).is_ok());
        assert!(limits.join_room("10.0.0.2".parse().unwrap(), &room).is_ok());
    }
}
