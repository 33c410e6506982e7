//! Abuse limits: how fast one connection may act, how many connections one
//! address and the whole server may hold, how fast an address may create
//! rooms, make HTTP requests and be served bytes. Policy only — the
//! connection layer asks, this module answers.
//!
//! Rates are token buckets (the `governor` crate's GCRA): a burst is allowed,
//! then a steady rate. A refusal says how long to wait, which becomes the
//! `retry_after_ms` of a `rate_limited` error (or an HTTP `Retry-After`).
//!
//! Bytes served are the exception: what a reply costs is known only once it
//! is built, and one reply may be larger than a whole burst, which GCRA
//! cannot charge. They are a [`ByteBucket`] that may go into debt: a reply
//! is served while the bucket is not in debt, then charged in full.

use std::cell::{Cell, OnceCell, RefCell};
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
    pub http_rate: NonZeroU32,
    pub http_burst: NonZeroU32,
    pub served_bytes_per_conn: ByteRate,
    pub served_bytes_per_ip: ByteRate,
    pub rejoins_per_minute: NonZeroU32,
    pub room_joins_per_ip_per_minute: NonZeroU32,
}

/// A steady rate of bytes per second and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByteRate {
    pub per_second: u64,
    pub burst: u64,
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
    Bytes,
    Rejoins,
    RoomJoins,
}

impl LimitKind {
    const COUNT: usize = 8;
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
    /// Bytes of costly replies (history, room lists) served.
    served: Cell<ByteBucket>,
    served_rate: ByteRate,
    /// Rejoining a room this connection left (see [`ConnLimits::rejoin`]),
    /// made on its first leave: most connections never leave a room, and
    /// every byte here is paid by each idle connection (its task's size
    /// decides the allocator bin it lands in).
    churn: OnceCell<Box<RejoinLimits>>,
    rejoins_per_minute: NonZeroU32,
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
            served: Cell::new(ByteBucket::full(
                config.served_bytes_per_conn,
                Instant::now(),
            )),
            served_rate: config.served_bytes_per_conn,
            churn: OnceCell::new(),
            rejoins_per_minute: config.rejoins_per_minute,
        }
    }

    /// May this connection be served another costly reply now?
    pub fn may_serve(&self) -> Result<(), RetryAfter> {
        let mut bucket = self.served.get();
        let verdict = bucket.may_spend(self.served_rate, Instant::now());
        self.served.set(bucket);
        verdict
    }

    /// Charges a costly reply of `bytes` to this connection.
    pub fn served(&self, bytes: usize) {
        let mut bucket = self.served.get();
        bucket.spend(self.served_rate, bytes, Instant::now());
        self.served.set(bucket);
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
        match self.churn.get() {
            Some(churn) => churn.check(room, &self.clock),
            None => Ok(()),
        }
    }

    /// This connection left `room`.
    pub fn left_room(&self, room: &RoomName) {
        self.churn
            .get_or_init(|| Box::new(RejoinLimits::new(self.rejoins_per_minute, &self.clock)))
            .left(room);
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

/// A token bucket of bytes that may go into debt (see the module doc): it
/// holds up to `burst` bytes, refills at `per_second`, and a reply is
/// allowed while it is not below zero. A client that took a large reply
/// waits until the debt is repaid, so over time it gets the steady rate
/// and never more than one reply beyond the burst.
#[derive(Debug, Clone, Copy)]
pub struct ByteBucket {
    /// Bytes available; negative while in debt.
    tokens: f64,
    at: Instant,
}

impl ByteBucket {
    pub fn full(rate: ByteRate, now: Instant) -> Self {
        Self {
            tokens: rate.burst as f64,
            at: now,
        }
    }

    fn refill(&mut self, rate: ByteRate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second as f64).min(rate.burst as f64);
        self.at = now;
    }

    /// `Ok` unless in debt; the error says when the debt will be repaid.
    pub fn may_spend(&mut self, rate: ByteRate, now: Instant) -> Result<(), RetryAfter> {
        self.refill(rate, now);
        if self.tokens >= 0.0 {
            return Ok(());
        }
        let secs = -self.tokens / rate.per_second.max(1) as f64;
        Err(RetryAfter(Duration::from_secs_f64(secs.min(3600.0))))
    }

    pub fn spend(&mut self, rate: ByteRate, bytes: usize, now: Instant) {
        self.refill(rate, now);
        self.tokens -= bytes as f64;
    }

    fn is_full(&mut self, rate: ByteRate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst as f64
    }
}

/// Why a connection was turned away, at accept or at its WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The server holds its maximum number of connections (HTTP 503). At
    /// accept, "connections" are TCP sockets of any kind.
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
    /// Room creation again, per IPv6 /48 (see [`site_key`]).
    new_rooms_per_site: DefaultKeyedRateLimiter<IpAddr>,
    http_requests: DefaultKeyedRateLimiter<IpAddr>,
    /// Bytes of costly replies served per address; an address whose bucket
    /// has refilled is forgotten.
    served: Mutex<HashMap<IpAddr, ByteBucket>>,
    admissions: AtomicUsize,
    room_joins: RoomJoinLimits,
}

/// Holds one TCP connection's place in the counts from accept to close,
/// through its upgrade to a WebSocket; dropping it frees the place.
pub struct ConnPermit {
    limits: Arc<AddressLimits>,
    ip: IpAddr,
    /// The per-address count this connection holds a place in; `None` for a
    /// connection from a trusted proxy until a WebSocket upgrade names its
    /// client (the proxy's own keep-alive connections are counted in the
    /// total only, or one busy proxy would be capped like one client).
    key: Option<IpAddr>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(key) = self.key
            && let Some(n) = per_ip.get_mut(&key)
        {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&key);
            }
        }
    }
}

impl ConnPermit {
    /// The client's address (after an upgrade, as named by a trusted proxy).
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

/// The key room creation is also limited under for IPv6: the /48 prefix,
/// the usual allocation of a whole site, which holds 65,536 /64s. Without it,
/// one customer could create rooms 65,536 times as fast as the limit means.
/// IPv4 addresses have no such key.
pub fn site_key(ip: IpAddr) -> Option<IpAddr> {
    match address_key(ip) {
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 80) - 1);
            Some(IpAddr::V6(prefix.into()))
        }
    }
}

/// How many times an address's room-creation rate a whole IPv6 /48 gets:
/// a few /64s of one site may create rooms each, not thousands.
const ROOMS_PER_SITE_FACTOR: u32 = 4;

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
            new_rooms_per_site: RateLimiter::dashmap_with_clock(
                per_minute(
                    config
                        .rooms_per_ip_per_minute
                        .saturating_mul(NonZeroU32::new(ROOMS_PER_SITE_FACTOR).expect("not 0")),
                ),
                clock.clone(),
            ),
            http_requests: RateLimiter::dashmap_with_clock(
                per_second(config.http_rate, config.http_burst),
                clock.clone(),
            ),
            clock,
            config,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            served: Mutex::new(HashMap::new()),
            admissions: AtomicUsize::new(0),
        })
    }

    /// Forgets idle keyed-limiter cells every [`PRUNE_EVERY`] calls.
    fn prune_now_and_then(&self) {
        if self
            .admissions
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY)
        {
            self.new_conns.retain_recent();
            self.new_rooms.retain_recent();
            self.new_rooms_per_site.retain_recent();
            self.http_requests.retain_recent();
            let now = Instant::now();
            let rate = self.config.served_bytes_per_ip;
            self.served
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, bucket| !bucket.is_full(rate, now));
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Fresh per-connection buckets.
    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits::new(&self.config, &self.clock)
    }

    /// Admits a TCP connection just accepted from `peer`, or says why not:
    /// every socket counts against the server's total, and against its
    /// address unless `peer` is a trusted proxy (`counted` false). Only
    /// caps are checked here; the per-minute rate applies to WebSockets.
    pub fn admit_socket(
        self: &Arc<Self>,
        peer: IpAddr,
        counted: bool,
    ) -> Result<ConnPermit, Admission> {
        let key = counted.then(|| address_key(peer));
        // Check and count under one lock, so concurrent accepts cannot
        // overshoot either cap.
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.config.max_connections {
            return Err(Admission::ServerFull);
        }
        if let Some(key) = key {
            let held = per_ip.get(&key).copied().unwrap_or(0);
            if held >= self.config.max_conns_per_ip {
                return Err(Admission::TooManyFromAddress);
            }
            per_ip.insert(key, held + 1);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnPermit {
            limits: self.clone(),
            ip: peer.to_canonical(),
            key,
        })
    }

    /// Admits the upgrade of the connection holding `permit` to a WebSocket
    /// for `client`: the connection keeps its place, so only the rate of new
    /// WebSockets is checked, and — for a connection from a trusted proxy,
    /// not yet counted per address — the cap of `client`'s address.
    pub fn admit_websocket(
        &self,
        permit: &mut ConnPermit,
        client: IpAddr,
    ) -> Result<(), Admission> {
        self.prune_now_and_then();
        let key = address_key(client);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let held = per_ip.get(&key).copied().unwrap_or(0);
        if permit.key.is_none() && held >= self.config.max_conns_per_ip {
            return Err(Admission::TooManyFromAddress);
        }
        self.new_conns.check_key(&key).map_err(|not_until| {
            Admission::TooFastFromAddress(RetryAfter(not_until.wait_time_from(self.clock.now())))
        })?;
        if permit.key.is_none() {
            per_ip.insert(key, held + 1);
            permit.key = Some(key);
        }
        permit.ip = client.to_canonical();
        Ok(())
    }

    /// May `ip` make another plain HTTP request now?
    pub fn http_request(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        self.prune_now_and_then();
        self.http_requests
            .check_key(&address_key(ip))
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// May `ip` be served another costly reply now?
    pub fn may_serve(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        let rate = self.config.served_bytes_per_ip;
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        match served.get_mut(&address_key(ip)) {
            Some(bucket) => bucket.may_spend(rate, Instant::now()),
            None => Ok(()),
        }
    }

    /// Charges a costly reply of `bytes` to `ip` if its budget is not
    /// overdrawn, in one step: the connections of an address run at once,
    /// and each checking first and charging later would let all of them
    /// through on the same credit.
    pub fn serve(&self, ip: IpAddr, bytes: usize) -> Result<(), RetryAfter> {
        self.prune_now_and_then();
        let rate = self.config.served_bytes_per_ip;
        let now = Instant::now();
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = served
            .entry(address_key(ip))
            .or_insert_with(|| ByteBucket::full(rate, now));
        bucket.may_spend(rate, now)?;
        bucket.spend(rate, bytes, now);
        Ok(())
    }

    /// Charges `bytes` already served to `ip`, overdrawn or not: for a
    /// reply that could not wait for the check (`joined`, queued by the hub
    /// in order with the room's frames).
    pub fn charge(&self, ip: IpAddr, bytes: usize) {
        self.prune_now_and_then();
        let rate = self.config.served_bytes_per_ip;
        let now = Instant::now();
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        served
            .entry(address_key(ip))
            .or_insert_with(|| ByteBucket::full(rate, now))
            .spend(rate, bytes, now);
    }

    /// May `ip` create a new room now? Checked per address, then for IPv6
    /// per /48 as well.
    pub fn create_room(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        let retry = |not_until: governor::NotUntil<_>| {
            RetryAfter(not_until.wait_time_from(self.clock.now()))
        };
        self.new_rooms.check_key(&address_key(ip)).map_err(retry)?;
        if let Some(site) = site_key(ip) {
            self.new_rooms_per_site.check_key(&site).map_err(retry)?;
        }
        Ok(())
    }

    /// May a connection from `ip` join `room` now (a join that is not a re-sync)?
    pub fn join_room(&self, ip: IpAddr, room: &RoomName) -> Result<(), RetryAfter> {
        self.room_joins.check(ip, room, &self.clock)
    }
}

// ------------------------------------------------------------ join/leave churn
//
// Each join or leave that changes who is in a room is news for every member.
// Presence is coalesced (hub::presence), so churn does not multiply bytes,
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
            http_rate: nz(1),
            http_burst: nz(3),
            served_bytes_per_conn: ByteRate {
                per_second: 1000,
                burst: 10_000,
            },
            served_bytes_per_ip: ByteRate {
                per_second: 1000,
                burst: 20_000,
            },
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
        let _p1 = limits.admit_socket(a, true).unwrap();
        let _p2 = limits.admit_socket(b, true).unwrap();
        assert_eq!(
            limits.admit_socket(b, true).err(),
            Some(Admission::TooManyFromAddress)
        );
    }

    #[test]
    fn connections_are_capped_per_address_and_in_total() {
        let limits = AddressLimits::new(config());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = limits.admit_socket(a, true).unwrap();
        let _p2 = limits.admit_socket(a, true).unwrap();
        assert_eq!(
            limits.admit_socket(a, true).err(),
            Some(Admission::TooManyFromAddress)
        );
        let _p3 = limits.admit_socket(b, true).unwrap();
        assert_eq!(
            limits.admit_socket(b, true).err(),
            Some(Admission::ServerFull)
        );
        drop(p1);
        assert!(limits.admit_socket(a, true).is_ok());
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
    fn a_websocket_keeps_the_place_its_connection_took_at_accept() {
        let limits = AddressLimits::new(config());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut socket = limits.admit_socket(a, true).unwrap();
        limits.admit_websocket(&mut socket, a).unwrap();
        // Still one place of two: a second socket fits, a third does not.
        let _second = limits.admit_socket(a, true).unwrap();
        assert_eq!(
            limits.admit_socket(a, true).err(),
            Some(Admission::TooManyFromAddress)
        );
    }

    #[test]
    fn a_trusted_proxys_sockets_count_per_client_only_once_upgraded() {
        let limits = AddressLimits::new(LimitsConfig {
            max_connections: 10,
            ..config()
        });
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        // The proxy's keep-alive connections are not capped per address.
        let mut sockets: Vec<_> = (0..4)
            .map(|_| limits.admit_socket(proxy, false).unwrap())
            .collect();
        limits.admit_websocket(&mut sockets[0], client).unwrap();
        limits.admit_websocket(&mut sockets[1], client).unwrap();
        assert_eq!(sockets[1].ip(), client);
        assert_eq!(
            limits.admit_websocket(&mut sockets[2], client).err(),
            Some(Admission::TooManyFromAddress)
        );
        // A refused upgrade leaves the connection uncounted per address.
        sockets.swap_remove(1);
        limits.admit_websocket(&mut sockets[1], client).unwrap();
    }

    #[test]
    fn room_creation_is_also_limited_per_ipv6_48() {
        let limits = AddressLimits::new(config());
        // 2 per /64, 8 per /48: the fifth /64 of the same /48 is refused.
        let mut created = 0;
        for subnet in 0..5 {
            let ip: IpAddr = format!("2001:db8:1:{subnet}::1").parse().unwrap();
            while limits.create_room(ip).is_ok() {
                created += 1;
            }
        }
        assert_eq!(created, 8);
        assert!(limits.create_room("2001:db8:2::1".parse().unwrap()).is_ok());
        assert_eq!(site_key("10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn http_requests_are_rate_limited_per_address() {
        let limits = AddressLimits::new(config());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            limits.http_request(a).unwrap();
        }
        let retry = limits.http_request(a).unwrap_err();
        assert!(retry.secs() == 1, "{retry:?}");
        assert!(limits.http_request("10.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn a_byte_bucket_serves_one_reply_past_its_burst_then_waits_out_the_debt() {
        let rate = ByteRate {
            per_second: 1000,
            burst: 10_000,
        };
        let start = Instant::now();
        let mut bucket = ByteBucket::full(rate, start);
        assert!(bucket.may_spend(rate, start).is_ok());
        bucket.spend(rate, 15_000, start);
        let retry = bucket.may_spend(rate, start).unwrap_err();
        assert_eq!(retry.millis(), 5000);
        let later = start + Duration::from_secs(5);
        assert!(bucket.may_spend(rate, later).is_ok());
    }

    #[test]
    fn bytes_served_are_limited_per_connection_and_per_address() {
        let limits = AddressLimits::new(config());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let (one, two, three) = (
            limits.conn_limits(),
            limits.conn_limits(),
            limits.conn_limits(),
        );
        one.served(12_000);
        assert!(one.may_serve().is_err());
        assert!(two.may_serve().is_ok());
        limits.serve(a, 12_000).unwrap();
        assert!(limits.may_serve(a).is_ok());
        two.served(9_000);
        limits.serve(a, 9_000).unwrap();
        // Each connection is within its own budget; together they are not.
        assert!(three.may_serve().is_ok());
        assert!(limits.may_serve(a).is_err());
        assert!(limits.serve(a, 1).is_err());
        assert!(limits.may_serve("10.0.0.2".parse().unwrap()).is_ok());
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
