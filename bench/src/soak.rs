//! `chatterpro-bench soak`: moderate, mixed, long-running traffic that checks the
//! protocol's promises while it watches the server's memory.
//!
//! Each virtual user owns one connection (one task, no shared state) and
//! wanders: joins and leaves rooms, sends messages, asks for history and the
//! room list, sends bad frames on purpose, and now and then drops its socket
//! without a close frame and resumes (`hello` with its reclaim token, then
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
    /// a resume with the reclaim token and `since`.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub reconnect_every: Duration,

    /// Fraction of the run that counts as warm-up: the "warm" RSS figure is
    /// taken when it ends.
    #[arg(long, default_value_t = 0.1)]
    pub warmup: f64,

    /// Seed for the users' random choices (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Fail when the server's RSS (sampled through --server-pid) grew more
    /// than this many KiB from the end of warm-up to the end of the run: a
    /// leak shows as steady growth under steady traffic.
    #[arg(long)]
    pub max_rss_growth_kib: Option<u64>,
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
            max_rss_growth_kib: None,
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
    /// The growth allowed (`--max-rss-growth-kib`), if any.
    pub max_rss_growth_kib: Option<u64>,
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
            out.push(format!(
                "{} users stuck past the deadline",
                self.stuck_users
            ));
        }
        if self.counts.messages_acked == 0 {
            out.push("no message was acknowledged".to_owned());
        }
        if let Some(limit) = self.max_rss_growth_kib {
            match self.rss_growth_kib {
                None => out.push(
                    "server memory growth unknown (--max-rss-growth-kib needs --server-pid \
                     and a run longer than its warm-up)"
                        .to_owned(),
                ),
                Some(growth) if growth > i64::try_from(limit).unwrap_or(i64::MAX) => out.push(
                    format!("server memory grew {growth} KiB after warm-up (allowed {limit})"),
                ),
                Some(_) => {}
            }
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
            let allowed = self.max_rss_growth_kib.map_or(String::new(), |k| {
                format!(" (allowed {:.1} MiB)", k as f64 / 1024.0)
            });
            let growth = self.rss_growth_kib.map_or(String::new(), |g| {
                format!(", growth {:+.1} MiB{allowed}", g as f64 / 1024.0)
            });
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
        max_rss_growth_kib: plan.args.max_rss_growth_kib,
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
    Join {
        room: String,
        since: Option<u64>,
    },
    Send {
        room: String,
        text: String,
    },
    Leave {
        room: String,
    },
    History {
        room: String,
        before: Option<u64>,
        limit: u64,
    },
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
                        self.c.unexpected(format!("connect_{}", e.key()), || {
                            format!("user {id}: {e}")
                        });
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
        let next_drop = Instant::now()
            + exp_delay(
                &mut self.rng,
                1.0 / plan.args.reconnect_every.as_secs_f64().max(0.001),
            );
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
            let kind = code.map_or("connection_lost".to_owned(), |c| {
                format!("server_close_{c}")
            });
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
            self.c.unexpected(kind, || {
                format!("user {id}: no answer by the end to {pending:?}")
            });
        }
        for (name, room) in &self.rooms {
            for seq in room.echoes.keys() {
                self.c.unexpected.bump("lost_echo".to_owned());
                if self.c.anomalies.len() < ANOMALIES_KEPT {
                    self.c.anomalies.push(format!(
                        "user {id}: no echo of own seq {seq} in {name} by the end"
                    ));
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
            self.c
                .unexpected(format!("timeout_{}", pending.reply_type()), || {
                    format!("user {id}: no answer in {REQUEST_TIMEOUT:?} to {pending:?}")
                });
            self.undo(pending);
        }
    }

    /// Sends a request with a fresh ref and remembers what answers it.
    async fn request(
        &mut self,
        ws: &mut Ws,
        mut body: Value,
        pending: Pending,
    ) -> Result<(), Broken> {
        self.next_ref += 1;
        body["ref"] = json!(self.next_ref);
        self.pending
            .insert(self.next_ref, (pending, Instant::now()));
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
                self.join(ws, room, None, BTreeMap::new()).await
            } else {
                Ok(())
            };
        }
        let room = joined[self.rng.random_range(0..joined.len())].clone();
        // Messages against everything else, by the configured rates.
        if self.rng.random::<f64>() < self.msg_share {
            return self.say(ws, room).await;
        }
        // A roll below a threshold picks that action when it is possible now,
        // else falls through to the next.
        let roll = self.rng.random_range(0..100);
        if roll < 30 && can_join {
            let room = outside[self.rng.random_range(0..outside.len())].clone();
            self.join(ws, room, None, BTreeMap::new()).await
        } else if roll < 50 && joined.len() > 1 && self.quiet(&room) {
            self.rooms.get_mut(&room).expect("joined").state = RoomState::Leaving;
            self.c.leaves += 1;
            let body = json!({"type":"leave","room":room});
            self.request(ws, body, Pending::Leave { room }).await
        } else if roll < 70 {
            let last = self.rooms[&room].last;
            let before = (last > 0 && self.rng.random_bool(0.5))
                .then(|| self.rng.random_range(1..=last + 1));
            let limit = self.rng.random_range(1..=60u64);
            self.c.histories += 1;
            let mut body = json!({"type":"history","room":room,"limit":limit});
            if let Some(b) = before {
                body["before"] = json!(b);
            }
            self.request(
                ws,
                body,
                Pending::History {
                    room,
                    before,
                    limit,
                },
            )
            .await
        } else if roll < 80 {
            self.request(ws, json!({"type":"rooms"}), Pending::Rooms)
                .await
        } else {
            self.misbehave(ws, room, outside.first().cloned()).await
        }
    }

    /// No send to `room` awaits its `sent` or its echo: leaving now cannot
    /// race the fan-out of our own message.
    fn quiet(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| r.echoes.is_empty())
            && !self
                .pending
                .values()
                .any(|(p, _)| matches!(p, Pending::Send { room: r, .. } if r == room))
    }

    async fn join(
        &mut self,
        ws: &mut Ws,
        room: String,
        since: Option<u64>,
        echoes: BTreeMap<u64, String>,
    ) -> Result<(), Broken> {
        let state = Room {
            state: RoomState::Joining,
            last: since.unwrap_or(0),
            echoes,
        };
        self.rooms.insert(room.clone(), state);
        self.c.joins += 1;
        let mut body = json!({"type":"join","room":room});
        if let Some(since) = since {
            body["since"] = json!(since);
        }
        self.request(ws, body, Pending::Join { room, since }).await
    }

    async fn say(&mut self, ws: &mut Ws, room: String) -> Result<(), Broken> {
        let text = self.text();
        self.c.messages_sent += 1;
        let body = json!({"type":"send","room":room,"text":text});
        self.request(ws, body, Pending::Send { room, text }).await
    }

    /// A unique message text of varied length and content; no surrounding
    /// whitespace, since the server stores the trimmed text.
    fn text(&mut self) -> String {
        const ALPHABET: &[char] = &[
            'a', 'e', 'i', 'o', 'u', 's', 't', 'r', ' ', ' ', 'é', '✓', '字',
        ];
        self.message_counter += 1;
        let len = self.rng.random_range(0..160);
        let filler: String = (0..len)
            .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())])
            .collect();
        let mut text = format!("{} #{} {filler}", self.name, self.message_counter);
        if self.rng.random_bool(0.1) {
            text.push_str("\nsecond line\twith a tab");
        }
        text.push('.');
        text
    }

    /// A deliberately bad frame; each has a documented error code.
    async fn misbehave(
        &mut self,
        ws: &mut Ws,
        member_of: String,
        outside: Option<String>,
    ) -> Result<(), Broken> {
        self.c.bad_frames += 1;
        match self.rng.random_range(0..7) {
            0 => {
                // Not JSON: the error cannot carry a ref.
                self.unref_bad_requests += 1;
                self.c.requests += 1;
                client::send_text(ws, "this is not JSON {".to_owned())
                    .await
                    .map_err(|_| Broken)
            }
            1 => {
                self.request(
                    ws,
                    json!({"type":"dance"}),
                    Pending::Refusal("unknown_type"),
                )
                .await
            }
            2 => {
                let text = "y".repeat(MAX_TEXT_CHARS + 1 + self.rng.random_range(0..500));
                let body = json!({"type":"send","room":member_of,"text":text});
                self.request(ws, body, Pending::Refusal("too_large")).await
            }
            3 if outside.is_some() => {
                let body = json!({"type":"send","room":outside,"text":"not a member"});
                self.request(ws, body, Pending::Refusal("not_member")).await
            }
            4 => {
                let body = json!({"type":"join","room":"   "});
                self.request(ws, body, Pending::Refusal("invalid_room"))
                    .await
            }
            5 => {
                let body = json!({"type":"hello","name":format!("{}x", self.name)});
                self.request(ws, body, Pending::Refusal("bad_request"))
                    .await
            }
            _ => {
                let body = json!({"type":"send","room":member_of});
                self.request(ws, body, Pending::Refusal("bad_request"))
                    .await
            }
        }
    }

    async fn handle(&mut self, ws: &mut Ws, v: Value) -> Result<(), Broken> {
        let kind = v["type"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "message" => {
                self.on_message(&v);
                return Ok(());
            }
            "presence" => {
                self.on_presence(&v);
                return Ok(());
            }
            "notice" => {
                self.c.notices += 1;
                return Ok(());
            }
            _ => {}
        }
        let id = self.id;
        let Some(r) = v.get("ref").and_then(Value::as_i64) else {
            let code = v["code"].as_str().unwrap_or_default();
            if kind == "error" && self.unref_bad_requests > 0 && code == "bad_request" {
                self.unref_bad_requests -= 1;
                self.c.errors_expected.bump("bad_request".to_owned());
            } else if kind == "error" && self.unref_bad_requests > 0 && code == "rate_limited" {
                self.unref_bad_requests -= 1;
                self.rate_limited(&v);
            } else {
                self.c
                    .unexpected(format!("unsolicited_{kind}"), || format!("user {id}: {v}"));
            }
            return Ok(());
        };
        let Some((pending, _)) = self.pending.remove(&r) else {
            self.c.unexpected("unmatched_ref", || {
                format!("user {id}: reply to no request: {v}")
            });
            return Ok(());
        };
        if kind == "error" {
            let hello_failed = matches!(pending, Pending::Hello);
            self.on_error(&v, pending);
            return if hello_failed { Err(Broken) } else { Ok(()) };
        }
        if kind != pending.reply_type() {
            self.c.unexpected("wrong_reply", || {
                format!(
                    "user {id}: {pending:?} answered by {}",
                    client::truncate(&v.to_string(), 200)
                )
            });
            self.undo(pending);
            return Ok(());
        }
        match pending {
            Pending::Hello => self.on_welcome(ws, &v).await?,
            Pending::Join { room, since } => self.on_joined(&room, since, &v),
            Pending::Send { room, text } => self.on_sent(&room, text, &v),
            Pending::Leave { room } => self.on_left(&room),
            Pending::History {
                room,
                before,
                limit,
            } => self.on_history(&room, before, limit, &v),
            Pending::Rooms => self.on_rooms(&v),
            Pending::Refusal(_) => unreachable!("an error reply, handled above"),
        }
        Ok(())
    }

    fn on_error(&mut self, v: &Value, pending: Pending) {
        let id = self.id;
        let code = v["code"].as_str().unwrap_or("?").to_owned();
        if v["message"].as_str().is_none_or(str::is_empty) {
            self.c
                .unexpected("error_without_message", || format!("user {id}: {v}"));
        }
        match &pending {
            Pending::Refusal(want) if *want == code => self.c.errors_expected.bump(code),
            _ if code == "rate_limited" => self.rate_limited(v),
            _ => self.c.unexpected(format!("error_{code}"), || {
                format!("user {id}: {pending:?} refused: {v}")
            }),
        }
        self.undo(pending);
    }

    fn rate_limited(&mut self, v: &Value) {
        self.c.rate_limited += 1;
        if let Some(ms) = v["retry_after_ms"].as_u64() {
            self.hold_until = self
                .hold_until
                .max(Instant::now() + Duration::from_millis(ms));
        }
    }

    /// Reverts the bookkeeping of a request that did not happen.
    fn undo(&mut self, pending: Pending) {
        match pending {
            Pending::Join { room, .. } => {
                self.rooms.remove(&room);
            }
            Pending::Leave { room } => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.state = RoomState::Joined;
                }
            }
            _ => {}
        }
    }

    async fn on_welcome(&mut self, ws: &mut Ws, v: &Value) -> Result<(), Broken> {
        let id = self.id;
        if v["name"] != self.name.as_str() || v["protocol"] != 1 || !v["rooms"].is_array() {
            self.c
                .unexpected("bad_welcome", || format!("user {id}: {v}"));
        }
        match v["session"].as_str() {
            Some(token) if !token.is_empty() => self.session = Some(token.to_owned()),
            _ => self
                .c
                .unexpected("welcome_without_session", || format!("user {id}: {v}")),
        }
        self.identified = true;
        for (room, since, echoes) in std::mem::take(&mut self.resume) {
            if since.is_some() {
                self.c.resumed_rooms += 1;
            }
            self.join(ws, room, since, echoes).await?;
        }
        Ok(())
    }

    /// Checks a `joined`: the catch-up must continue exactly after `since`
    /// (or, without it, end at `last_seq`), and carry the echoes still owed.
    fn on_joined(&mut self, room: &str, since: Option<u64>, v: &Value) {
        let id = self.id;
        let name = self.name.clone();
        let c = &mut self.c;
        let Some(r) = self.rooms.get_mut(room) else {
            c.unexpected("joined_unknown_room", || format!("user {id}: {v}"));
            return;
        };
        let (Some(last_seq), Some(messages)) = (v["last_seq"].as_u64(), v["messages"].as_array())
        else {
            c.unexpected("bad_joined", || format!("user {id}: {v}"));
            return;
        };
        if v["room"] != room
            || !v["users"]
                .as_array()
                .is_some_and(|u| u.iter().any(|n| n == name.as_str()))
        {
            c.unexpected("bad_joined", || format!("user {id}: {v}"));
        }
        let truncated = v["truncated"] == true;
        let (mut gaps, mut dups) = (0, 0);
        let mut prev = since;
        for (i, m) in messages.iter().enumerate() {
            let Some(seq) = m["seq"].as_u64() else {
                c.unexpected("bad_joined", || {
                    format!("user {id}: message without seq {m}")
                });
                continue;
            };
            match prev {
                Some(p) if seq <= p => dups += 1,
                Some(p) if seq > p + 1 && !(truncated && i == 0) => gaps += seq - p - 1,
                _ => {}
            }
            if seq > last_seq || m["room"] != room {
                c.unexpected("bad_joined", || {
                    format!("user {id}: catch-up message {m} vs last_seq {last_seq}")
                });
            }
            prev = Some(prev.map_or(seq, |p| p.max(seq)));
            if m["from"] == name.as_str() {
                let text = m["text"].as_str().unwrap_or_default();
                match r.echoes.remove(&seq) {
                    Some(sent) if sent == text => c.echoes_verified += 1,
                    Some(sent) => c.unexpected("echo_text_mismatch", || {
                        format!("user {id}: sent {sent:?}, got back {text:?} as seq {seq}")
                    }),
                    None => {
                        self.orphans.remove(text);
                    }
                }
            }
        }
        c.catch_up_received += messages.len() as u64;
        match since {
            Some(s) if s > last_seq => {
                c.unexpected("since_beyond_last_seq", || {
                    format!("user {id}: join {room} since {s} but last_seq {last_seq}")
                });
            }
            Some(s) => {
                let end = prev.unwrap_or(s);
                if end < last_seq {
                    gaps += last_seq - end;
                }
            }
            None => {
                if prev.is_some_and(|p| p != last_seq) {
                    c.unexpected("joined_last_seq_mismatch", || {
                        format!("user {id}: {room} history ends at {prev:?}, last_seq {last_seq}")
                    });
                }
            }
        }
        if truncated {
            c.truncated_resumes += 1;
        }
        if gaps + dups > 0 {
            c.gaps += gaps;
            c.duplicates += dups;
            note(c, || {
                format!(
                    "user {id}: join {room} since {since:?}: {gaps} missing, {dups} repeated (last_seq {last_seq}, {} messages)",
                    messages.len()
                )
            });
        }
        // The catch-up holds every message after `since`: owed echoes must be in it.
        for (seq, _) in std::mem::take(&mut r.echoes) {
            c.unexpected("lost_echo", || {
                format!("user {id}: own seq {seq} in {room} missing from the catch-up")
            });
        }
        r.state = RoomState::Joined;
        r.last = last_seq.max(prev.unwrap_or(0));
    }

    fn on_message(&mut self, v: &Value) {
        let id = self.id;
        let c = &mut self.c;
        let room = v["room"].as_str().unwrap_or_default();
        let (Some(seq), Some(text)) = (v["seq"].as_u64(), v["text"].as_str()) else {
            c.unexpected("bad_message", || format!("user {id}: {v}"));
            return;
        };
        let r = match self.rooms.get_mut(room) {
            Some(r) if r.state != RoomState::Joining => r,
            Some(_) => {
                c.unexpected("message_before_joined", || format!("user {id}: {v}"));
                return;
            }
            None => {
                c.unexpected("stray_message", || {
                    format!("user {id}: not in the room: {v}")
                });
                return;
            }
        };
        c.messages_received += 1;
        if seq > r.last + 1 {
            c.gaps += seq - r.last - 1;
            let last = r.last;
            note(c, || {
                format!("user {id}: {room} jumped from seq {last} to {seq}")
            });
        } else if seq <= r.last {
            c.duplicates += 1;
            let last = r.last;
            note(c, || {
                format!("user {id}: {room} seq {seq} again (already at {last})")
            });
        }
        r.last = r.last.max(seq);
        if v["from"] != self.name.as_str() {
            return;
        }
        match r.echoes.remove(&seq) {
            Some(sent) if sent == text => c.echoes_verified += 1,
            Some(sent) => c.unexpected("echo_text_mismatch", || {
                format!("user {id}: sent {sent:?}, got back {text:?} as seq {seq}")
            }),
            None if self.orphans.remove(text) => {}
            None if self
                .pending
                .values()
                .any(|(p, _)| matches!(p, Pending::Send { text: t, .. } if t == text)) =>
            {
                c.unexpected("echo_before_sent", || format!("user {id}: {v}"));
            }
            None => c.unexpected("unknown_own_message", || format!("user {id}: {v}")),
        }
    }

    fn on_sent(&mut self, room: &str, text: String, v: &Value) {
        let id = self.id;
        self.c.messages_acked += 1;
        let Some(seq) = v["seq"].as_u64() else {
            self.c.unexpected("bad_sent", || format!("user {id}: {v}"));
            return;
        };
        if v["room"] != room || !v["id"].is_string() || !v["ts"].is_i64() {
            self.c.unexpected("bad_sent", || format!("user {id}: {v}"));
        }
        match self.rooms.get_mut(room) {
            // An echo already seen was reported as echo_before_sent.
            Some(r) if r.state != RoomState::Joining && seq > r.last => {
                r.echoes.insert(seq, text);
            }
            Some(r) if r.state != RoomState::Joining => {}
            _ => self
                .c
                .unexpected("sent_outside_room", || format!("user {id}: {v}")),
        }
    }

    fn on_left(&mut self, room: &str) {
        let id = self.id;
        match self.rooms.remove(room) {
            Some(r) if r.state == RoomState::Leaving => {
                // Leaves are only sent once every echo is in.
                for (seq, _) in r.echoes {
                    self.c.unexpected("lost_echo", || {
                        format!("user {id}: left {room} without the echo of seq {seq}")
                    });
                }
            }
            _ => self
                .c
                .unexpected("left_unexpected", || format!("user {id}: left {room}")),
        }
    }

    /// `history`: the newest `limit` messages below `before`, contiguous.
    fn on_history(&mut self, room: &str, before: Option<u64>, limit: u64, v: &Value) {
        let id = self.id;
        let Some(messages) = v["messages"].as_array() else {
            self.c
                .unexpected("bad_history", || format!("user {id}: {v}"));
            return;
        };
        let seqs: Vec<u64> = messages.iter().filter_map(|m| m["seq"].as_u64()).collect();
        let contiguous = seqs.windows(2).all(|w| w[1] == w[0] + 1);
        let mut ok = v["room"] == room
            && seqs.len() == messages.len()
            && contiguous
            && seqs.len() as u64 <= limit;
        if let Some(before) = before {
            // `before` ≤ last seen + 1, so every seq below it exists.
            let want = limit.min(before - 1);
            ok &= seqs.len() as u64 == want && seqs.last().is_none_or(|&s| s == before - 1);
        }
        if !ok {
            self.c.unexpected("bad_history", || {
                format!(
                    "user {id}: history {room} before {before:?} limit {limit} gave seqs {:?}…{:?} ({})",
                    seqs.first(),
                    seqs.last(),
                    seqs.len()
                )
            });
        }
    }

    /// `rooms`: every room this connection is in is listed with someone online.
    fn on_rooms(&mut self, v: &Value) {
        let id = self.id;
        let Some(listed) = v["rooms"].as_array() else {
            self.c.unexpected("bad_rooms", || format!("user {id}: {v}"));
            return;
        };
        for (name, r) in &self.rooms {
            if r.state != RoomState::Joined {
                continue;
            }
            let online = listed
                .iter()
                .find(|e| e["name"] == name.as_str())
                .and_then(|e| e["online"].as_u64());
            if online.is_none_or(|n| n == 0) {
                self.c.unexpected.bump("bad_rooms".to_owned());
                note(&mut self.c, || {
                    format!("user {id}: rooms lists {name} with online {online:?} while in it")
                });
            }
        }
    }

    fn on_presence(&mut self, v: &Value) {
        let id = self.id;
        self.c.presences += 1;
        let room = v["room"].as_str().unwrap_or_default();
        if !self
            .rooms
            .get(room)
            .is_some_and(|r| r.state != RoomState::Joining)
        {
            self.c
                .unexpected("stray_presence", || format!("user {id}: {v}"));
            return;
        }
        // A net change: someone arrives or goes, and nobody does both.
        let consistent = match (v["joined"].as_array(), v["left"].as_array()) {
            (Some(joined), Some(left)) => {
                let says_something = !joined.is_empty() || !left.is_empty();
                says_something && !joined.iter().any(|name| left.contains(name))
            }
            _ => false,
        };
        if !consistent {
            self.c
                .unexpected("bad_presence", || format!("user {id}: {v}"));
        }
    }
}

/// Keeps a description of an anomaly counted elsewhere.
fn note(c: &mut SoakCounts, detail: impl FnOnce() -> String) {
    if c.anomalies.len() < ANOMALIES_KEPT {
        c.anomalies.push(detail());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clean run's report whose server grew `growth` KiB after warm-up,
    /// checked against `limit`.
    fn report(growth: Option<i64>, limit: Option<u64>) -> SoakReport {
        SoakReport {
            scenario: "soak",
            url: "ws://127.0.0.1:1/ws".into(),
            seed: 1,
            clients: 1,
            rooms: 1,
            duration_s: 1.0,
            elapsed_s: 1.0,
            counts: SoakCounts {
                messages_acked: 1,
                ..SoakCounts::default()
            },
            stuck_users: 0,
            rss: None,
            rss_growth_kib: growth,
            max_rss_growth_kib: limit,
            ok: true,
        }
    }

    #[test]
    fn memory_growth_beyond_the_allowed_fails_the_run() {
        assert!(report(Some(20_000), None).failures().is_empty());
        assert!(report(Some(16_384), Some(16_384)).failures().is_empty());
        assert!(report(Some(-500), Some(0)).failures().is_empty());
        let failures = report(Some(16_385), Some(16_384)).failures();
        assert_eq!(
            failures,
            ["server memory grew 16385 KiB after warm-up (allowed 16384)"]
        );
        // Asked to check, without a figure to check: a failure, not a pass.
        assert_eq!(report(None, Some(16_384)).failures().len(), 1);
    }
}
