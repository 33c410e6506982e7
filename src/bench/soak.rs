//! `bench soak`: moderate, mixed, long-running traffic that checks the
//! protocol's promises while it watches the server's memory.
//!
//! Each virtual user owns one connection (one task, no shared state) and
//! wanders: joins and leaves rooms, sends messages, asks for history and the
//! room list, sends bad frames on purpose, and now and then drops its socket
//! without a close frame and resumes (`hello` with its session token, then
//! `join` with `since`). Along the way it checks, per room, that the seqs it
//! sees — live and in catch-up batches — have no gaps and no duplicates, that
//! each acknowledged message comes back to it intact, and that every request
//! gets the documented answer. Requests carry integer refs and may be
//! pipelined; replies are matched by ref.
//!
//! Rates stay under the server's default per-connection limits, so a
//! `rate_limited` here is reported (and honoured) but is not a failure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rand::rngs::StdRng;
use rand::seq::IteratorRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use super::client::{self, Dialer, Incoming, Target, Ws};
use super::probe::{RssFigures, RssSampler};
use super::{Tally, default_seed, exp_delay};

/// Rooms one user is in at most at once.
const MAX_ROOMS_PER_USER: usize = 3;
/// A request unanswered this long counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After the deadline: time to collect outstanding replies and echoes.
const DRAIN: Duration = Duration::from_secs(5);
/// Beyond the drain, how long stuck users get before they are abandoned.
const HARD_STOP_GRACE: Duration = Duration::from_secs(5);
/// Detailed anomaly descriptions kept for the report.
const ANOMALIES_KEPT: usize = 20;
/// Message text length the server refuses with `too_large` beyond.
const MAX_TEXT_CHARS: usize = 4000;

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub target: Target,

    /// How long to generate traffic (then up to 5 s of drain).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Virtual users, one connection each.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,

    /// Rooms the users wander among, named PREFIX0, PREFIX1, …
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,

    /// Prefix of the room names (rooms are created on first join).
    #[arg(long, default_value = "bench-")]
    pub room_prefix: String,

    /// Messages each user sends per second, on average (server default
    /// limit: 10/s).
    #[arg(long, default_value_t = 1.0)]
    pub msg_rate: f64,

    /// Other requests each user makes per second, on average: joins,
    /// leaves, history, room lists and deliberately bad frames.
    #[arg(long, default_value_t = 1.0)]
    pub action_rate: f64,

    /// Average time between one user's abrupt disconnects, each followed by
    /// a resume with the session token and `since`.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub reconnect_every: Duration,

    /// Fraction of the run that counts as warm-up: the "warm" RSS figure is
    /// taken when it ends.
    #[arg(long, default_value_t = 0.1)]
    pub warmup: f64,

    /// Seed for the users' random choices (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SoakArgs {
    /// Small, fast settings for tests: `clients` users for `duration`.
    pub fn quick(url: String, clients: usize, duration: Duration) -> Self {
        Self {
            target: Target {
                url,
                server_pid: None,
                source_ips: None,
            },
            duration,
            clients,
            rooms: 4,
            room_prefix: "soak-".into(),
            msg_rate: 5.0,
            action_rate: 5.0,
            reconnect_every: duration / 3,
            warmup: 0.1,
            seed: None,
        }
    }
}

/// Counts kept by each user and summed for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakCounts {
    /// Connections opened, first ones included.
    pub connects: u64,
    /// Abrupt disconnects (no close frame) followed by a resume.
    pub reconnects: u64,
    /// Rooms re-joined with `since` after a reconnect.
    pub resumed_rooms: u64,
    /// Frames sent.
    pub requests: u64,
    pub messages_sent: u64,
    /// `sent` acknowledgements.
    pub messages_acked: u64,
    /// Live `message` frames received.
    pub messages_received: u64,
    /// Messages received inside `joined` replies.
    pub catch_up_received: u64,
    /// Own messages whose echo came back with the acknowledged seq and the same text.
    pub echoes_verified: u64,
    pub joins: u64,
    pub leaves: u64,
    pub histories: u64,
    pub notices: u64,
    pub presences: u64,
    /// Frames sent on purpose to provoke a documented error.
    pub bad_frames: u64,
    /// Requests refused with `rate_limited` (honoured, not a failure).
    pub rate_limited: u64,
    /// Upgrades refused (`http_429`, `http_503`) or failed (`io`, `timeout`).
    pub connect_refused: BTreeMap<String, u64>,
    /// Error replies that were the point of the request, by code.
    pub errors_expected: BTreeMap<String, u64>,
    /// Everything that broke a promise of the protocol, by kind.
    pub unexpected: BTreeMap<String, u64>,
    /// Seqs skipped in a room's stream (live or catch-up).
    pub gaps: u64,
    /// Seqs received twice on one connection.
    pub duplicates: u64,
    /// Resumes whose catch-up was cut at 1000 messages.
    pub truncated_resumes: u64,
    /// Requests in flight when the user dropped its own connection.
    pub abandoned_requests: u64,
    /// A few descriptions of what went wrong, for debugging.
    pub anomalies: Vec<String>,
}

impl SoakCounts {
    fn merge(&mut self, o: SoakCounts) {
        self.connects += o.connects;
        self.reconnects += o.reconnects;
        self.resumed_rooms += o.resumed_rooms;
        self.requests += o.requests;
        self.messages_sent += o.messages_sent;
        self.messages_acked += o.messages_acked;
        self.messages_received += o.messages_received;
        self.catch_up_received += o.catch_up_received;
        self.echoes_verified += o.echoes_verified;
        self.joins += o.joins;
        self.leaves += o.leaves;
        self.histories += o.histories;
        self.notices += o.notices;
        self.presences += o.presences;
        self.bad_frames += o.bad_frames;
        self.rate_limited += o.rate_limited;
        self.connect_refused.add_all(o.connect_refused);
        self.errors_expected.add_all(o.errors_expected);
        self.unexpected.add_all(o.unexpected);
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        self.truncated_resumes += o.truncated_resumes;
        self.abandoned_requests += o.abandoned_requests;
        let room = ANOMALIES_KEPT.saturating_sub(self.anomalies.len());
        self.anomalies.extend(o.anomalies.into_iter().take(room));
    }

    fn unexpected(&mut self, kind: impl Into<String>, detail: impl FnOnce() -> String) {
        self.unexpected.bump(kind.into());
        if self.anomalies.len() < ANOMALIES_KEPT {
            self.anomalies.push(detail());
        }
    }
}

/// What a soak run found.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub scenario: &'static str,
    pub url: String,
    pub seed: u64,
    pub clients: usize,
    pub rooms: usize,
    pub duration_s: f64,
    /// Wall time including connection ramp and drain.
    pub elapsed_s: f64,
    #[serde(flatten)]
    pub counts: SoakCounts,
    /// Users that had to be abandoned at the hard deadline.
    pub stuck_users: u64,
    pub rss: Option<RssFigures>,
    pub rss_growth_kib: Option<i64>,
    pub ok: bool,
}

impl SoakReport {
    /// Why the run counts as failed; empty when it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.counts.unexpected.is_empty() {
            out.push(format!("unexpected: {}", self.counts.unexpected.render()));
        }
        if self.counts.gaps > 0 {
            out.push(format!("{} seq gaps", self.counts.gaps));
        }
        if self.counts.duplicates > 0 {
            out.push(format!("{} duplicate seqs", self.counts.duplicates));
        }
        if self.stuck_users > 0 {
            out.push(format!("{} users stuck past the deadline", self.stuck_users));
        }
        if self.counts.messages_acked == 0 {
            out.push("no message was acknowledged".to_owned());
        }
        out
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "soak: {} users, {} rooms, {:.0} s against {} (seed {})",
            self.clients, self.rooms, self.duration_s, self.url, self.seed
        )?;
        writeln!(
            f,
            "  connections {} (abrupt reconnects {}, rooms resumed with since {}); upgrade refusals: {}",
            c.connects,
            c.reconnects,
            c.resumed_rooms,
            c.connect_refused.render()
        )?;
        writeln!(
            f,
            "  messages: sent {}, acked {}, received {} live + {} in catch-up; own echoes verified {}",
            c.messages_sent,
            c.messages_acked,
            c.messages_received,
            c.catch_up_received,
            c.echoes_verified
        )?;
        writeln!(
            f,
            "  requests {}: joins {}, leaves {}, history {}, bad frames {} → expected errors {}",
            c.requests,
            c.joins,
            c.leaves,
            c.histories,
            c.bad_frames,
            c.errors_expected.render()
        )?;
        writeln!(
            f,
            "  rate_limited {}; gaps {}; duplicates {}; unexpected {}",
            c.rate_limited,
            c.gaps,
            c.duplicates,
            c.unexpected.render()
        )?;
        for a in &c.anomalies {
            writeln!(f, "    ! {a}")?;
        }
        if let Some(rss) = &self.rss {
            let growth = self
                .rss_growth_kib
                .map_or(String::new(), |g| format!(", growth {:+.1} MiB", g as f64 / 1024.0));
            writeln!(f, "  server RSS: {rss}{growth}")?;
        }
        let failures = self.failures();
        if failures.is_empty() {
            write!(f, "  result: OK")
        } else {
            write!(f, "  result: FAILED ({})", failures.join("; "))
        }
    }
}

/// What all users share: where to go and when to stop.
struct Plan {
    args: SoakArgs,
    dialer: Dialer,
    run_id: String,
    seed: u64,
    start: Instant,
    deadline: Instant,
    drain_deadline: Instant,
}

/// Runs the soak and returns its report (it does not print).
pub async fn run(args: SoakArgs) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.rooms > 0, "--rooms must be at least 1");
    anyhow::ensure!(
        args.msg_rate > 0.0 && args.action_rate >= 0.0,
        "--msg-rate must be positive and --action-rate not negative"
    );
    super::probe::check_fd_budget(args.clients as u64)?;
    let dialer = Dialer::build(&args.target, args.clients).await?;
    let seed = args.seed.unwrap_or_else(default_seed);
    let start = Instant::now();
    let deadline = start + args.duration;
    let warmup = args.duration.mul_f64(args.warmup.clamp(0.0, 1.0));
    let sampler = args
        .target
        .server_pid
        .map(|pid| RssSampler::start(pid, warmup));
    let plan = Arc::new(Plan {
        run_id: format!("{:04x}", seed & 0xffff),
        seed,
        start,
        deadline,
        drain_deadline: deadline + DRAIN,
        dialer,
        args,
    });

    let mut users = JoinSet::new();
    for id in 0..plan.args.clients {
        let plan = plan.clone();
        users.spawn(async move { User::new(&plan, id).run(&plan).await });
    }
    let mut counts = SoakCounts::default();
    let hard_stop = plan.drain_deadline + HARD_STOP_GRACE;
    let mut stuck_users = 0;
    loop {
        match tokio::time::timeout_at(hard_stop, users.join_next()).await {
            Ok(Some(Ok(user))) => counts.merge(user),
            Ok(Some(Err(e))) => counts.unexpected("user_task_failed", || e.to_string()),
            Ok(None) => break,
            Err(_) => {
                stuck_users = users.len() as u64;
                users.abort_all();
                break;
            }
        }
    }
    let rss = match sampler {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    let mut report = SoakReport {
        scenario: "soak",
        url: plan.args.target.url.clone(),
        seed,
        clients: plan.args.clients,
        rooms: plan.args.rooms,
        duration_s: plan.args.duration.as_secs_f64(),
        elapsed_s: plan.start.elapsed().as_secs_f64(),
        counts,
        stuck_users,
        rss_growth_kib: rss.as_ref().and_then(RssFigures::growth_kib),
        rss,
        ok: false,
    };
    report.ok = report.failures().is_empty();
    Ok(report)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoomState {
    Joining,
    Joined,
    Leaving,
}

/// One room as one connection sees it.
#[derive(Debug)]
struct Room {
    state: RoomState,
    /// Highest seq seen (or the `last_seq` of `joined`).
    last: u64,
    /// Acknowledged own messages whose echo has not arrived: seq → text.
    echoes: BTreeMap<u64, String>,
}

/// A request in flight, and what answers it.
#[derive(Debug)]
enum Pending {
    Hello,
    Join { room: String, since: Option<u64> },
    Send { room: String, text: String },
    Leave { room: String },
    History { room: String, before: Option<u64>, limit: u64 },
    Rooms,
    /// A deliberately bad request: the answer is this error code.
    Refusal(&'static str),
}

impl Pending {
    fn reply_type(&self) -> &'static str {
        match self {
            Pending::Hello => "welcome",
            Pending::Join { .. } => "joined",
            Pending::Send { .. } => "sent",
            Pending::Leave { .. } => "left",
            Pending::History { .. } => "history",
            Pending::Rooms => "rooms",
            Pending::Refusal(_) => "error",
        }
    }
}

/// A rejoin after a reconnect: the room, the seq to resume after, and the
/// echoes still owed from before.
type Resume = (String, Option<u64>, BTreeMap<u64, String>);

/// How a connection ended.
enum End {
    /// The run is over.
    Done,
    /// Connect again and resume.
    Reconnect,
}

/// Why the connection must end now (from inside the frame handlers).
struct Broken;

struct User {
    id: usize,
    name: String,
    session: Option<String>,
    rng: StdRng,
    room_names: Vec<String>,
    rooms: HashMap<String, Room>,
    resume: Vec<Resume>,
    pending: HashMap<i64, (Pending, Instant)>,
    next_ref: i64,
    /// "Not JSON" frames sent: their `bad_request` comes without a ref.
    unref_bad_requests: u32,
    /// Texts sent on a connection that was dropped before their `sent`:
    /// they may or may not have been stored, and may come back later.
    orphans: HashSet<String>,
    message_counter: u64,
    /// The chance that an action is a message rather than something else.
    msg_share: f64,
    identified: bool,
    /// No action before this (set by `rate_limited`'s `retry_after_ms`).
    hold_until: Instant,
    c: SoakCounts,
}

impl User {
    fn new(plan: &Plan, id: usize) -> Self {
        Self {
            id,
            name: format!("soak{}-{id}", plan.run_id),
            session: None,
            rng: StdRng::seed_from_u64(plan.seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            room_names: (0..plan.args.rooms)
                .map(|i| format!("{}{i}", plan.args.room_prefix))
                .collect(),
            rooms: HashMap::new(),
            resume: Vec::new(),
            pending: HashMap::new(),
            next_ref: 0,
            unref_bad_requests: 0,
            orphans: HashSet::new(),
            message_counter: 0,
            msg_share: plan.args.msg_rate / (plan.args.msg_rate + plan.args.action_rate),
            identified: false,
            hold_until: plan.start,
            c: SoakCounts::default(),
        }
    }

    async fn run(mut self, plan: &Plan) -> SoakCounts {
        // Spread the first connections over the first seconds.
        let ramp = (plan.args.duration / 10).min(Duration::from_secs(2));
        let offset = ramp.mul_f64(self.id as f64 / plan.args.clients as f64);
        tokio::time::sleep(offset).await;
        while let Some(ws) = self.connect(plan).await {
            match self.session(plan, ws).await {
                End::Done => break,
                End::Reconnect => continue,
            }
        }
        self.c
    }

    /// Connects, waiting out refusals; `None` once the run is over.
    async fn connect(&mut self, plan: &Plan) -> Option<Ws> {
        let mut backoff = Duration::from_millis(100);
        loop {
            if Instant::now() >= plan.deadline {
                return None;
            }
            match plan.dialer.connect(self.id).await {
                Ok(ws) => {
                    self.c.connects += 1;
                    return Some(ws);
                }
                Err(e) => {
                    self.c.connect_refused.bump(e.key());
                    if !e.is_refusal() {
                        let id = self.id;
                        self.c
                            .unexpected(format!("connect_{}", e.key()), || format!("user {id}: {e}"));
                    }
                    let wait = match &e {
                        client::ConnectError::Refused {
                            retry_after: Some(r),
                            ..
                        } => *r,
                        _ => backoff,
                    };
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    let until = (Instant::now() + wait).min(plan.deadline);
                    tokio::time::sleep_until(until).await;
                }
            }
        }
    }

    /// One connection, from `hello` until the run ends or the connection does.
    async fn session(&mut self, plan: &Plan, mut ws: Ws) -> End {
        self.identified = false;
        let hello = match &self.session {
            Some(token) => json!({"type":"hello","name":self.name,"session":token}),
            None => json!({"type":"hello","name":self.name}),
        };
        if self.request(&mut ws, hello, Pending::Hello).await.is_err() {
            return self.broken(plan, None);
        }
        let total_rate = plan.args.msg_rate + plan.args.action_rate;
        let mut next_action = Instant::now() + exp_delay(&mut self.rng, total_rate);
        let mut next_drop = Instant::now() + exp_delay(&mut self.rng, 1.0 / plan.args.reconnect_every.as_secs_f64().max(0.001));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let now = Instant::now();
            let draining = now >= plan.deadline;
            if draining && (self.settled() || now >= plan.drain_deadline) {
                self.finish();
                client::close(ws).await;
                return End::Done;
            }
            let acting = self.identified && !draining;
            tokio::select! {
                incoming = client::next_frame(&mut ws) => match incoming {
                    Incoming::Json(v) => {
                        if self.handle(&mut ws, v).await.is_err() {
                            return self.broken(plan, None);
                        }
                    }
                    Incoming::Closed(code) => return self.broken(plan, code),
                    Incoming::Garbage(g) => {
                        let id = self.id;
                        self.c.unexpected("garbage_frame", || format!("user {id}: {g}"));
                    }
                },
                () = sleep_until(next_action.max(self.hold_until)), if acting => {
                    if self.act(&mut ws).await.is_err() {
                        return self.broken(plan, None);
                    }
                    next_action = Instant::now() + exp_delay(&mut self.rng, total_rate);
                }
                () = sleep_until(next_drop), if acting => {
                    // Abrupt: no close frame, the socket just goes away.
                    drop(ws);
                    self.c.reconnects += 1;
                    self.disconnected();
                    return End::Reconnect;
                }
                () = sleep_until(plan.deadline), if !draining => {}
                () = sleep_until(plan.drain_deadline) => {}
                _ = tick.tick() => self.expire(),
            }
        }
    }

    /// The connection broke or the server closed it.
    fn broken(&mut self, plan: &Plan, code: Option<u16>) -> End {
        if Instant::now() < plan.deadline {
            let id = self.id;
            let kind = code.map_or("connection_lost".to_owned(), |c| format!("server_close_{c}"));
            self.c
                .unexpected(kind.clone(), || format!("user {id}: {kind} mid-run"));
        }
        self.disconnected();
        if Instant::now() >= plan.deadline {
            End::Done
        } else {
            End::Reconnect
        }
    }

    /// Forgets the connection's state, keeping what a resume needs.
    fn disconnected(&mut self) {
        self.c.abandoned_requests += self.pending.len() as u64;
        for (pending, _) in std::mem::take(&mut self.pending).into_values() {
            if let Pending::Send { text, .. } = pending {
                self.orphans.insert(text);
            }
        }
        self.unref_bad_requests = 0;
        self.identified = false;
        self.resume = self
            .rooms
            .drain()
            .filter_map(|(name, room)| match room.state {
                RoomState::Joined => Some((name, Some(room.last), room.echoes)),
                RoomState::Joining => Some((name, None, BTreeMap::new())),
                RoomState::Leaving => None,
            })
            .collect();
    }

    /// Nothing in flight and every acknowledged message echoed.
    fn settled(&self) -> bool {
        self.pending.is_empty()
            && self.unref_bad_requests == 0
            && self.rooms.values().all(|r| r.echoes.is_empty())
    }

    /// The end of the run: whatever is still owed is lost.
    fn finish(&mut self) {
        let id = self.id;
        for (pending, _) in std::mem::take(&mut self.pending).into_values() {
            let kind = format!("unanswered_{}", pending.reply_type());
            self.c
                .unexpected(kind, || format!("user {id}: no answer by the end to {pending:?}"));
        }
        for (name, room) in &self.rooms {
            for (seq, _) in &room.echoes {
                self.c.unexpected.bump("lost_echo".to_owned());
                if self.c.anomalies.len() < ANOMALIES_KEPT {
                    self.c
                        .anomalies
                        .push(format!("user {id}: no echo of own seq {seq} in {name} by the end"));
                }
            }
        }
    }

    /// Requests older than [`REQUEST_TIMEOUT`] count as lost.
    fn expire(&mut self) {
        let now = Instant::now();
        let old: Vec<i64> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) > REQUEST_TIMEOUT)
            .map(|(r, _)| *r)
            .collect();
        for r in old {
            let (pending, _) = self.pending.remove(&r).expect("listed above");
            let id = self.id;
            self.c.unexpected(format!("timeout_{}", pending.reply_type()), || {
                format!("user {id}: no answer in {REQUEST_TIMEOUT:?} to {pending:?}")
            });
            self.undo(pending);
        }
    }

    /// Sends a request with a fresh ref and remembers what answers it.
    async fn request(&mut self, ws: &mut Ws, mut body: Value, pending: Pending) -> Result<(), Broken> {
        self.next_ref += 1;
        body["ref"] = json!(self.next_ref);
        self.pending.insert(self.next_ref, (pending, Instant::now()));
        self.c.requests += 1;
        client::send_json(ws, &body).await.map_err(|_| Broken)
    }

    /// One random action.
    async fn act(&mut self, ws: &mut Ws) -> Result<(), Broken> {
        let joined: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.state == RoomState::Joined)
            .map(|(n, _)| n.clone())
            .collect();
        let outside: Vec<String> = self
            .room_names
            .iter()
            .filter(|n| !self.rooms.contains_key(*n))
            .cloned()
            .collect();
        let in_rooms = self.rooms.len();
        let can_join = in_rooms < MAX_ROOMS_PER_USER && !outside.is_empty();
        if joined.is_empty() {
            return if can_join {
                let room = outside[self.rng.random_range(0..outside.len())].clone();
                self.join(ws, room, None).await
            } else {
                Ok(())
            };
        }
        let room = joined[self.rng.random_range(0..joined.len())].clone();
        // Messages against everything else, by the configured rates.
        if self.rng.random::<f64>() < self.msg_share {
            return self.say(ws, room).await;
        }
        match self.rng.random_range(0..100) {
            0..30 if can_join => {
                let room = outside[self.rng.random_range(0..outside.len())].clone();
                self.join(ws, room, None).await
            }
            0..50 if joined.len() > 1 => {
                self.rooms.get_mut(&room).expect("joined").state = RoomState::Leaving;
                self.c.leaves += 1;
                let body = json!({"type":"leave","room":room});
                self.request(ws, body, Pending::Leave { room }).await
            }
            0..70 => {
                let last = self.rooms[&room].last;
                let before = (last > 0 && self.rng.random_bool(0.5))
                    .then(|| self.rng.random_range(1..=last + 1));
                let limit = self.rng.random_range(1..=60u64);
                self.c.histories += 1;
                let mut body = json!({"type":"history","room":room,"limit":limit});
                if let Some(b) = before {
                    body["before"] = json!(b);
                }
                self.request(ws, body, Pending::History { room, before, limit })
                    .await
            }
            0..80 => self.request(ws, json!({"type":"rooms"}), Pending::Rooms).await,
            _ => self.misbehave(ws, room, outside.first().cloned()).await,
        }
