//! `chatterpro-bench fanout`: end-to-end delivery latency and exactness under a steady
//! message rate.
//!
//! R rooms × M members (one connection each), S of whom per room also send,
//! together offering `--rate` messages a second for `--duration`. Each text
//! is `fan <run> <sender> <counter> <µs since start>`, so every receiver can
//! measure latency (sender and receivers share this process's clock) and
//! check, per sender, that nothing is lost, repeated or reordered. The
//! counters a sender's server accepted (`sent`) are compared with what each
//! member of its room received, so refused messages are not counted as lost.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::client::{Dialer, IncomingText, Target};
use super::raw::RawWs;
use super::{Latency, LatencySummary, Tally, default_seed};

/// How long one set-up reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Set-up traffic counts as drained after this long without a frame.
const SETTLE_QUIET: Duration = Duration::from_millis(300);
/// The longest the set-up traffic may take to drain.
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// After the sending window, acknowledgements and deliveries still in
/// flight are waited for as long as they keep arriving: the drain ends when
/// everything accepted has landed, after this long without progress, or at
/// [`DRAIN_MAX`]. A saturated server seconds behind is let finish (its
/// backlog is not loss); one that stopped delivering is caught.
const DRAIN_QUIET: Duration = Duration::from_secs(5);
const DRAIN_MAX: Duration = Duration::from_secs(60);
/// The server's default per-connection message rate.
const SERVER_DEFAULT_MSG_RATE: f64 = 10.0;

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: Target,

    /// Rooms.
    #[arg(long, default_value_t = 4)]
    pub rooms: usize,

    /// Members per room, senders included.
    #[arg(long, default_value_t = 10)]
    pub members: usize,

    /// Senders per room.
    #[arg(long, default_value_t = 2)]
    pub senders: usize,

    /// Messages per second offered in total, over all senders (each sender
    /// sends rate / (rooms × senders); the server's default limit is 10/s
    /// per connection).
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,

    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Prefix of the room names.
    #[arg(long, default_value = "bench-")]
    pub room_prefix: String,
}

/// What a fanout run found.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub url: String,
    pub rooms: usize,
    pub members: usize,
    pub senders: usize,
    pub duration_s: f64,
    /// Members that could not connect, hello or join, by reason.
    pub setup_failed: BTreeMap<String, u64>,
    pub offered: u64,
    pub offered_per_s: f64,
    /// Messages acknowledged with `sent`.
    pub accepted: u64,
    /// Message frames received by members (messages × recipients).
    pub delivered: u64,
    pub delivered_per_s: f64,
    pub latency: LatencySummary,
    /// How late the senders sent against their schedule. Latency counts
    /// from when a message was actually sent, so time a sender lost (the
    /// bench's own core busy reading) is not in it: if this grows, the
    /// bench is the limit and the latency above flatters the server.
    pub send_lateness: LatencySummary,
    /// Accepted messages a member of the room never received.
    pub lost: u64,
    pub duplicated: u64,
    /// Messages received after a later one from the same sender.
    pub reordered: u64,
    /// Messages received that their sender never saw acknowledged.
    pub unacknowledged_received: u64,
    /// Room seqs skipped or repeated on a connection.
    pub seq_gaps: u64,
    pub seq_duplicates: u64,
    pub rate_limited: u64,
    /// Errors, closes and timeouts that are no refusal.
    pub unexpected: BTreeMap<String, u64>,
    /// With `--server-pid`: the server's CPU time from the window's start
    /// to the end of the drain, and per delivery. Far steadier than latency
    /// on a shared machine: it says what a delivery costs, not how long it waited.
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Seconds from the window's start to the end of the drain.
    pub measured_s: f64,
    pub ok: bool,
}

impl FanoutReport {
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, n) in [
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("reordered", self.reordered),
            (
                "received but never acknowledged",
                self.unacknowledged_received,
            ),
            ("seq gaps", self.seq_gaps),
            ("seq duplicates", self.seq_duplicates),
        ] {
            if n > 0 {
                out.push(format!("{n} {what}"));
            }
        }
        if !self.unexpected.is_empty() {
            out.push(format!("unexpected: {}", self.unexpected.render()));
        }
        let setup_unexpected = self.setup_failed.keys().any(|k| !k.starts_with("http_"));
        if setup_unexpected {
            out.push(format!("set-up failed: {}", self.setup_failed.render()));
        }
        if self.delivered == 0 {
            out.push("nothing was delivered".to_owned());
        }
        out
    }
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fanout: {} rooms × {} members, {} senders each, {:.0} s against {}",
            self.rooms, self.members, self.senders, self.duration_s, self.url
        )?;
        writeln!(
            f,
            "  offered {} ({:.1} msg/s), accepted {}, delivered {} ({:.1} msg/s incl. fan-out)",
            self.offered, self.offered_per_s, self.accepted, self.delivered, self.delivered_per_s
        )?;
        writeln!(f, "  end-to-end latency: {}", self.latency)?;
        writeln!(
            f,
            "  senders' lateness against their schedule: {}",
            self.send_lateness
        )?;
        writeln!(
            f,
            "  lost {}, duplicated {}, reordered {}, seq gaps {}, seq duplicates {}, rate_limited {}, unexpected {}, set-up failures {}",
            self.lost,
            self.duplicated,
            self.reordered,
            self.seq_gaps,
            self.seq_duplicates,
            self.rate_limited,
            self.unexpected.render(),
            self.setup_failed.render()
        )?;
        if let (Some(cpu), Some(per)) = (self.server_cpu_s, self.server_cpu_us_per_delivery) {
            writeln!(
                f,
                "  server CPU: {cpu:.2} s ({:.0} % of one core over the window and drain), {per:.2} µs per delivery",
                100.0 * cpu / self.measured_s
            )?;
        }
        let failures = self.failures();
        if failures.is_empty() {
            write!(f, "  result: OK")
        } else {
            write!(f, "  result: FAILED ({})", failures.join("; "))
        }
    }
}

/// The sending window, announced once every member is in its room.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// The clock the texts' timestamps count from.
    epoch: Instant,
    end: Instant,
}

/// Running totals the coordinator watches to know when delivery is complete.
#[derive(Default)]
struct Progress {
    /// Frames received before the window opens (presence of later joiners).
    setup_frames: AtomicU64,
    /// Sends without an answer yet.
    in_flight: AtomicU64,
    /// For each room: accepted messages × members present.
    expected_deliveries: AtomicU64,
    delivered: AtomicU64,
}

/// What one member saw.
#[derive(Default)]
struct MemberResult {
    room: usize,
    /// Whether it got into its room (otherwise it has no stream to check).
    joined: bool,
    /// Global sender index and which of its counters were accepted.
    sender: Option<(usize, Vec<bool>)>,
    offered: u64,
    rate_limited: u64,
    unexpected: BTreeMap<String, u64>,
    /// Per sender: how many times each counter arrived.
    received: BTreeMap<usize, Vec<u32>>,
    /// How late each send was against its tick, in µs.
    send_late_us: Vec<u64>,
    delivered: u64,
    reordered: u64,
    seq_gaps: u64,
    seq_duplicates: u64,
}

struct Member {
    room: usize,
    room_name: String,
    /// Global sender index, when this member sends.
    sender: Option<usize>,
    members_in_room: Arc<AtomicU64>,
    /// Shared by the room's members: a thousand histograms of their own,
    /// each touched at random, made recording a sample a cache miss (9 % of
    /// the bench's time at 500,000 deliveries/s); one per room stays in cache.
    latency: Arc<Mutex<Latency>>,
    progress: Arc<Progress>,
    run_id: String,
    period: Duration,
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<FanoutReport> {
    anyhow::ensure!(
        args.rooms > 0 && args.members > 0 && args.senders > 0 && args.senders <= args.members,
        "need at least one room and member, and 1 ≤ --senders ≤ --members"
    );
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let total = args.rooms * args.members;
    super::probe::check_fd_budget(total as u64)?;
    let per_sender = args.rate / (args.rooms * args.senders) as f64;
    if per_sender > SERVER_DEFAULT_MSG_RATE {
        eprintln!(
            "note: each sender offers {per_sender:.1} msg/s; a server with default limits \
             allows {SERVER_DEFAULT_MSG_RATE}/s per connection (raise --msg-rate/--msg-burst)"
        );
    }
    let dialer = Arc::new(Dialer::build(&args.target, total).await?);
    let run_id = format!("{:04x}", default_seed() & 0xffff);
    let progress = Arc::new(Progress::default());
    let (window_tx, window_rx) = watch::channel(None::<Window>);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let stop = CancellationToken::new();
    let period = Duration::from_secs_f64(1.0 / per_sender);
    let mut tasks = JoinSet::new();
    let mut latencies = Vec::with_capacity(args.rooms);
    for room in 0..args.rooms {
        let members_in_room = Arc::new(AtomicU64::new(0));
        let latency = Arc::new(Mutex::new(Latency::default()));
        latencies.push(latency.clone());
        for m in 0..args.members {
            let member = Member {
                room,
                room_name: format!("{}{room}", args.room_prefix),
                sender: (m < args.senders).then_some(room * args.senders + m),
                members_in_room: members_in_room.clone(),
                latency: latency.clone(),
                progress: progress.clone(),
                run_id: run_id.clone(),
                period,
            };
            let dialer = dialer.clone();
            let name = format!("fn{run_id}-{room}-{m}");
            let (window_rx, ready_tx, stop) = (window_rx.clone(), ready_tx.clone(), stop.clone());
            let index = room * args.members + m;
            tasks.spawn(async move {
                member
                    .run(&dialer, index, &name, window_rx, ready_tx, stop)
                    .await
            });
        }
    }
    drop(ready_tx);

    let mut setup_failed = BTreeMap::new();
    for _ in 0..total {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(key)) => setup_failed.bump(key),
            None => break,
        }
    }
    // Every join tells every member already in the room, so a big room's
    // set-up leaves a backlog of presence frames (half a million for 1,000
    // members). Timing starts once it has drained — quiet for a moment —
    // or the first messages would measure the backlog, not the server.
    let settle_deadline = Instant::now() + SETTLE_MAX;
    let mut last = progress.setup_frames.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(SETTLE_QUIET).await;
        let now = progress.setup_frames.load(Ordering::SeqCst);
        if now == last || Instant::now() >= settle_deadline {
            break;
        }
        last = now;
    }
    let server_pid = args.target.server_pid;
    let cpu_at_start = server_pid.and_then(super::probe::cpu_time);
    let epoch = Instant::now();
    let window = Window {
        epoch,
        end: epoch + args.duration,
    };
    let _ = window_tx.send(Some(window));

    // Wait for the window, then for every accepted message to reach every member.
    tokio::time::sleep_until(window.end).await;
    let drain_max = window.end + DRAIN_MAX;
    let mut seen = (u64::MAX, u64::MAX);
    let mut last_progress = Instant::now();
    loop {
        let in_flight = progress.in_flight.load(Ordering::SeqCst);
        let delivered = progress.delivered.load(Ordering::SeqCst);
        let done =
            in_flight == 0 && delivered >= progress.expected_deliveries.load(Ordering::SeqCst);
        if (in_flight, delivered) != seen {
            seen = (in_flight, delivered);
            last_progress = Instant::now();
        }
        if done || last_progress.elapsed() >= DRAIN_QUIET || Instant::now() >= drain_max {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server_cpu = cpu_at_start
        .zip(server_pid.and_then(super::probe::cpu_time))
        .map(|(start, end)| end.saturating_sub(start));
    let measured_s = epoch.elapsed().as_secs_f64();
    stop.cancel();
    let mut results = Vec::new();
    let mut unexpected = BTreeMap::new();
    let hard = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(hard);
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(Ok(r)) => results.push(r),
                Some(Err(_)) => unexpected.bump("member_task_failed".to_owned()),
                None => break,
            },
            () = &mut hard => {
                unexpected.bump("members_stuck".to_owned());
                tasks.abort_all();
                break;
            }
        }
    }
    let mut latency = Latency::default();
    for room in &latencies {
        latency.merge(&room.lock().unwrap_or_else(|e| e.into_inner()));
    }
    let mut report = tally(&args, setup_failed, unexpected, results, &latency);
    report.measured_s = measured_s;
    if let Some(cpu) = server_cpu {
        report.server_cpu_s = Some(cpu.as_secs_f64());
        report.server_cpu_us_per_delivery =
            (report.delivered > 0).then(|| cpu.as_secs_f64() * 1e6 / report.delivered as f64);
    }
    Ok(report)
}

fn tally(
    args: &FanoutArgs,
    setup_failed: BTreeMap<String, u64>,
    mut unexpected: BTreeMap<String, u64>,
    results: Vec<MemberResult>,
    latency: &Latency,
) -> FanoutReport {
    let accepted_by: BTreeMap<usize, (usize, &Vec<bool>)> = results
        .iter()
        .filter_map(|r| r.sender.as_ref().map(|(s, acc)| (*s, (r.room, acc))))
        .collect();
    let (mut lost, mut duplicated, mut phantom) = (0, 0, 0);
    let (mut offered, mut rate_limited, mut delivered, mut reordered) = (0, 0, 0, 0);
    let (mut seq_gaps, mut seq_duplicates) = (0, 0);
    let mut send_lateness = Latency::default();
    for r in &results {
        for &us in &r.send_late_us {
            send_lateness.record_us(us);
        }
        offered += r.offered;
        rate_limited += r.rate_limited;
        delivered += r.delivered;
        reordered += r.reordered;
        seq_gaps += r.seq_gaps;
        seq_duplicates += r.seq_duplicates;
        unexpected.add_all(r.unexpected.clone());
        // Only members that got into their room have a stream to check.
        if !r.joined {
            continue;
        }
        for (sender, (room, accepted)) in &accepted_by {
            if *room != r.room {
                continue;
            }
            let got = r.received.get(sender).map_or(&[][..], Vec::as_slice);
            for (i, &acc) in accepted.iter().enumerate() {
                let n = got.get(i).copied().unwrap_or(0);
                match (acc, n) {
                    (true, 0) => lost += 1,
                    (true, n) => duplicated += u64::from(n - 1),
                    (false, 0) => {}
                    (false, n) => phantom += u64::from(n),
                }
            }
            phantom += got
                .iter()
                .skip(accepted.len())
                .map(|&n| u64::from(n))
                .sum::<u64>();
        }
    }
    let accepted = accepted_by
        .values()
        .map(|(_, acc)| acc.iter().filter(|a| **a).count() as u64)
        .sum();
    let secs = args.duration.as_secs_f64();
    let mut report = FanoutReport {
        scenario: "fanout",
        url: args.target.url.clone(),
        rooms: args.rooms,
        members: args.members,
        senders: args.senders,
        duration_s: secs,
        setup_failed,
        offered,
        offered_per_s: offered as f64 / secs,
        accepted,
        delivered,
        delivered_per_s: delivered as f64 / secs,
        latency: latency.summary(),
        send_lateness: send_lateness.summary(),
        lost,
        duplicated,
        reordered,
        unacknowledged_received: phantom,
        seq_gaps,
        seq_duplicates,
        rate_limited,
        unexpected,
        server_cpu_s: None,
        server_cpu_us_per_delivery: None,
        measured_s: secs,
        ok: false,
    };
    report.ok = report.failures().is_empty();
    report
}

/// The fields a fan-out receiver looks at, borrowed from the frame where
/// possible: parsing a full JSON tree per delivery would make the bench, not
/// the server, the bottleneck.
#[derive(serde::Deserialize)]
struct FanFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    seq: Option<u64>,
    #[serde(borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "ref")]
    r#ref: Option<i64>,
    #[serde(borrow)]
    code: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> FanFrame<'a> {
    /// Parses a frame, taking a short cut for the bench's own messages (the
    /// bulk of the traffic): at 500,000 deliveries/s a full JSON parse of
    /// each was the bench's largest item, and a bench that falls behind adds
    /// its own delay to the latency it reports. Anything unexpected —
    /// another shape, an escape in the text — goes the full way.
    fn parse(frame: &'a [u8]) -> Option<Self> {
        if let Some((seq, text)) = own_message(frame) {
            return Some(Self {
                kind: "message",
                seq: Some(seq),
                text: Some(std::borrow::Cow::Borrowed(text)),
                r#ref: None,
                code: None,
            });
        }
        serde_json::from_slice(frame).ok()
    }
}

/// `seq` and `text` of a `message` frame as the server writes them
/// (`{"type":"message","room":…,"id":…,"seq":N,"from":…,"text":"…",…}`),
/// if its text is plain ASCII without escapes (the bench's own texts).
/// Walks the fields in the server's order, finding each string's end with
/// `memchr`: searching for the field names with `memmem` was the largest
/// item of the bench's own code at 500,000 deliveries/s. A string with an
/// escaped quote leaves a `\` before the quote found, so the next field's
/// name does not match and the frame goes to the full parser.
fn own_message(frame: &[u8]) -> Option<(u64, &str)> {
    let rest = frame.strip_prefix(br#"{"type":"message","room":""#)?;
    let rest = skip_string(rest)?.strip_prefix(br#","id":""#)?;
    let rest = skip_string(rest)?.strip_prefix(br#","seq":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(br#","from":""#)?;
    let rest = skip_string(rest)?.strip_prefix(br#","text":""#)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[end] != b'"' || !rest[..end].is_ascii() {
        return None;
    }
    Some((seq, std::str::from_utf8(&rest[..end]).ok()?))
}

/// What follows the closing quote of the string `rest` starts inside.
fn skip_string(rest: &[u8]) -> Option<&[u8]> {
    memchr::memchr(b'"', rest).map(|end| &rest[end + 1..])
}

/// Whether a set-up frame is a `message` (to keep) rather than presence or
/// a reply (to count and drop), looking at its start only: the server
/// writes `type` first, and presence frames in a 1,000-member room carry up
/// to a thousand names that a parse would have to walk. Any other layout
/// goes through the parser.
fn is_message(frame: &[u8]) -> bool {
    const TYPE: &[u8] = br#"{"type":""#;
    match frame.strip_prefix(TYPE) {
        Some(rest) => rest.starts_with(br#"message""#),
        None => serde_json::from_slice::<FanFrame>(frame).is_ok_and(|f| f.kind == "message"),
    }
}

/// One sender's stream as a member sees it.
struct Stream {
    sender: usize,
    /// How many times each counter arrived.
    counts: Vec<u32>,
    /// The highest counter seen.
    max: u64,
}

/// What a member tracks while it receives. Frames that arrive in one read
/// are handled together: one clock reading, one lock of the room's
/// histogram and one update of the shared counters per read, not per
/// frame — per frame they were a fifth of the bench's core at 500,000
/// deliveries/s, and a bench that falls behind adds its own delay to the
/// latency it reports.
#[derive(Default)]
struct Receiving {
    /// This member's sends not answered yet: `ref` → counter.
    refs: BTreeMap<i64, u64>,
    /// Per sender, in the order first seen (a room has a handful).
    streams: Vec<Stream>,
    last_seq: u64,
    /// Latencies of the read being handled, in µs.
    samples: Vec<u64>,
}

impl Receiving {
    fn stream(&mut self, sender: usize) -> &mut Stream {
        let at = match self.streams.iter().position(|s| s.sender == sender) {
            Some(at) => at,
            None => {
                self.streams.push(Stream {
                    sender,
                    counts: Vec::new(),
                    max: 0,
                });
                self.streams.len() - 1
            }
        };
        &mut self.streams[at]
    }
}

/// Whether a member's receive loop goes on after a frame.
enum Flow {
    Continue,
    Stop,
}

impl Member {
    async fn run(
        self,
        dialer: &Dialer,
        index: usize,
        name: &str,
        mut window_rx: watch::Receiver<Option<Window>>,
        ready_tx: mpsc::UnboundedSender<Result<(), String>>,
        stop: CancellationToken,
    ) -> MemberResult {
        let mut out = MemberResult {
            room: self.room,
            sender: self.sender.map(|s| (s, Vec::new())),
            ..MemberResult::default()
        };
        let mut rx = Receiving::default();
        let mut ws = match self.set_up(dialer, index, name).await {
            Ok((ws, last_seq)) => {
                rx.last_seq = last_seq;
                ws
            }
            Err(key) => {
                // Counted in the report's set-up failures.
                let _ = ready_tx.send(Err(key));
                out.sender = None;
                return out;
            }
        };
        out.joined = true;
        self.members_in_room.fetch_add(1, Ordering::SeqCst);
        let _ = ready_tx.send(Ok(()));
        drop(ready_tx);
        // Until this task sees the window open, frames (presence of later
        // joiners) are drained — except messages: a sender that saw the
        // window first may already be sending, and its first messages must
        // be counted, not dropped (that once showed up as a lost first
        // message per room).
        let mut early = Vec::new();
        let window = loop {
            tokio::select! {
                changed = window_rx.changed() => {
                    if changed.is_err() {
                        return out;
                    }
                    if let Some(w) = *window_rx.borrow() {
                        break w;
                    }
                }
                // Only the type is looked at: a presence frame in a big
                // room carries a thousand names, not worth a JSON tree.
                incoming = ws.next_text() => match incoming {
                    IncomingText::Closed(code) => {
                        out.unexpected.bump(close_key(code));
                        return out;
                    }
                    IncomingText::Garbage(_) => {
                        out.unexpected.bump("garbage_frame".to_owned());
                        return out;
                    }
                    IncomingText::Text(text) if is_message(&text) => early.push(text),
                    IncomingText::Text(_) => {
                        self.progress.setup_frames.fetch_add(1, Ordering::Relaxed);
                    }
                },
                () = stop.cancelled() => return out,
            }
        };
        let now_us = window.epoch.elapsed().as_micros() as u64;
        for text in early {
            let _ = self.take(IncomingText::Text(text), now_us, &mut out, &mut rx);
        }
        self.settle(&mut out, &mut rx);
        // Senders start at a random phase so they do not tick together.
        let phase = self.period.mul_f64(rand::rng().random::<f64>());
        let mut tick = tokio::time::interval_at(window.epoch + phase, self.period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut counter: u64 = 0;
        let sending = self.sender.is_some();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                scheduled = tick.tick(), if sending && Instant::now() < window.end => {
                    // The tick may fire after the window closed (the guard was
                    // checked when the select began): a send now would race
                    // the coordinator's drain.
                    if Instant::now() >= window.end {
                        continue;
                    }
                    let sender = self.sender.expect("sending");
                    out.send_late_us.push(scheduled.elapsed().as_micros() as u64);
                    let us = window.epoch.elapsed().as_micros();
                    let text = format!("fan {} {sender} {counter} {us}", self.run_id);
                    let r = counter as i64 + 1;
                    let body = json!({"type":"send","room":self.room_name,"text":text,"ref":r});
                    rx.refs.insert(r, counter);
                    if let Some((_, acc)) = out.sender.as_mut() {
                        acc.push(false);
                    }
                    counter += 1;
                    out.offered += 1;
                    self.progress.in_flight.fetch_add(1, Ordering::SeqCst);
                    if ws.send_json(&body).await.is_err() {
                        out.unexpected.bump("connection_lost".to_owned());
                        break;
                    }
                }
                incoming = ws.next_text() => {
                    // Everything this read brought arrived now.
                    let now_us = window.epoch.elapsed().as_micros() as u64;
                    let mut flow = self.take(incoming, now_us, &mut out, &mut rx);
                    while let Flow::Continue = flow {
                        match ws.next_buffered() {
                            Some(incoming) => flow = self.take(incoming, now_us, &mut out, &mut rx),
                            None => break,
                        }
                    }
                    self.settle(&mut out, &mut rx);
                    if let Flow::Stop = flow {
                        break;
                    }
                }
            }
        }
        // Sends never answered no longer hold the coordinator up.
        self.progress
            .in_flight
            .fetch_sub(rx.refs.len() as u64, Ordering::SeqCst);
        if !rx.refs.is_empty() && !stop.is_cancelled() {
            out.unexpected.bump("unanswered_send".to_owned());
        }
        out.received = rx
            .streams
            .into_iter()
            .map(|s| (s.sender, s.counts))
            .collect();
        ws.close().await;
        out
    }

    /// Handles one incoming frame that arrived at `now_us`.
    fn take(
        &self,
        incoming: IncomingText<bytes::Bytes>,
        now_us: u64,
        out: &mut MemberResult,
        rx: &mut Receiving,
    ) -> Flow {
        match incoming {
            IncomingText::Text(text) => match FanFrame::parse(&text) {
                Some(frame) => self.on_frame(&frame, now_us, out, rx),
                None => out.unexpected.bump("garbage_frame".to_owned()),
            },
            IncomingText::Closed(code) => {
                out.unexpected.bump(close_key(code));
                return Flow::Stop;
            }
            // A frame header that does not parse leaves nothing to resume from.
            IncomingText::Garbage(_) => {
                out.unexpected.bump("garbage_frame".to_owned());
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Publishes what the frames of one read found: their latencies into
    /// the room's histogram, their count to the coordinator.
    fn settle(&self, out: &mut MemberResult, rx: &mut Receiving) {
        if rx.samples.is_empty() {
            return;
        }
        let n = rx.samples.len() as u64;
        {
            let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
            for &us in &rx.samples {
                latency.record_us(us);
            }
        }
        rx.samples.clear();
        out.delivered += n;
        self.progress.delivered.fetch_add(n, Ordering::SeqCst);
    }

    fn on_frame(&self, v: &FanFrame<'_>, now_us: u64, out: &mut MemberResult, rx: &mut Receiving) {
        match v.kind {
            "message" => {
                if let Some(seq) = v.seq {
                    if seq <= rx.last_seq {
                        out.seq_duplicates += 1;
                    } else if seq > rx.last_seq + 1 {
                        out.seq_gaps += seq - rx.last_seq - 1;
                    }
                    rx.last_seq = rx.last_seq.max(seq);
                }
                let Some((sender, counter, sent_us)) =
                    parse_text(v.text.as_deref().unwrap_or_default(), &self.run_id)
                else {
                    return; // someone else's traffic
                };
                rx.samples.push(now_us.saturating_sub(sent_us));
                let stream = rx.stream(sender);
                let i = counter as usize;
                if stream.counts.len() <= i {
                    stream.counts.resize(i + 1, 0);
                }
                stream.counts[i] += 1;
                if stream.counts[i] == 1 && counter < stream.max {
                    out.reordered += 1;
                }
                stream.max = stream.max.max(counter);
            }
            "sent" => {
                let Some(counter) = v.r#ref.and_then(|r| rx.refs.remove(&r)) else {
                    out.unexpected.bump("unmatched_sent".to_owned());
                    return;
                };
                if let Some((_, acc)) = out.sender.as_mut() {
                    acc[counter as usize] = true;
                }
                let members = self.members_in_room.load(Ordering::SeqCst);
                self.progress
                    .expected_deliveries
                    .fetch_add(members, Ordering::SeqCst);
                self.progress.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            "error" => {
                if let Some(r) = v.r#ref
                    && rx.refs.remove(&r).is_some()
                {
                    self.progress.in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                match v.code.as_deref() {
                    Some("rate_limited") => out.rate_limited += 1,
                    code => out
                        .unexpected
                        .bump(format!("error_{}", code.unwrap_or("?"))),
                }
            }
            // Presence of members joining late, notices: not measured.
            _ => {}
        }
    }

    /// Connect, hello, join; returns the socket and the room's `last_seq`.
    async fn set_up(
        &self,
        dialer: &Dialer,
        index: usize,
        name: &str,
    ) -> Result<(RawWs, u64), String> {
        let mut ws = dialer
            .connect_raw(index)
            .await
            .map_err(|e| format!("connect_{}", e.key()).replace("connect_http", "http"))?;
        let hello = json!({"type":"hello","name":name});
        match ws.call(hello, -1, REPLY_TIMEOUT).await {
            Ok(v) if v["type"] == "welcome" => {}
            Ok(v) => return Err(format!("hello_{}", v["code"].as_str().unwrap_or("?"))),
            Err(e) => return Err(format!("hello_{}", e.key())),
        }
        let join = json!({"type":"join","room":self.room_name});
        match ws.call(join, -2, REPLY_TIMEOUT).await {
            Ok(v) if v["type"] == "joined" => Ok((ws, v["last_seq"].as_u64().unwrap_or(0))),
            Ok(v) => Err(format!("join_{}", v["code"].as_str().unwrap_or("?"))),
            Err(e) => Err(format!("join_{}", e.key())),
        }
    }
}

fn close_key(code: Option<u16>) -> String {
    code.map_or("connection_lost".to_owned(), |c| {
        format!("server_close_{c}")
    })
}

/// `fan <run> <sender> <counter> <µs>` of this run → (sender, counter, µs).
fn parse_text(text: &str, run_id: &str) -> Option<(usize, u64, u64)> {
    let rest = text.strip_prefix("fan ")?.strip_prefix(run_id)?;
    let (sender, rest) = number(rest.strip_prefix(' ')?)?;
    let (counter, rest) = number(rest.strip_prefix(' ')?)?;
    let (us, rest) = number(rest.strip_prefix(' ')?)?;
    rest.is_empty()
        .then_some((usize::try_from(sender).ok()?, counter, us))
}

/// The decimal number `s` starts with, and what follows it.
fn number(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    Some((s[..digits].parse().ok()?, &s[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_cut_reads_what_serde_reads_and_leaves_the_rest_to_it() {
        let frames = [
            r#"{"type":"message","room":"fanout-0","id":"0193a5b2-7c1d","seq":17,"from":"fn00ab-0-1","text":"fan 00ab 3 17 123456","ts":1}"#,
            r#"{"type":"message","room":"r","id":"i","seq":2,"from":"a","text":"quote \" inside","ts":1}"#,
            r#"{"type":"message","room":"r","id":"i","seq":3,"from":"a","text":"ünïcode","ts":1}"#,
            r#"{"type":"sent","room":"r","id":"i","seq":4,"ts":1,"ref":9}"#,
            r#"{"type":"presence","room":"r","event":"join","user":"a","users":["a"]}"#,
        ];
        for frame in frames {
            let fast = FanFrame::parse(frame.as_bytes()).unwrap();
            let full: FanFrame = serde_json::from_str(frame).unwrap();
            assert_eq!(
                (fast.kind, fast.seq, fast.text.as_deref(), fast.r#ref),
                (full.kind, full.seq, full.text.as_deref(), full.r#ref),
                "{frame}"
            );
        }
        assert_eq!(
            own_message(frames[0].as_bytes()),
            Some((17, "fan 00ab 3 17 123456"))
        );
        // Escapes and non-ASCII go the full way.
        assert_eq!(own_message(frames[1].as_bytes()), None);
        assert_eq!(own_message(frames[2].as_bytes()), None);
        assert!(FanFrame::parse(b"{not json").is_none());
        assert!(is_message(frames[0].as_bytes()) && is_message(frames[2].as_bytes()));
        assert!(!is_message(frames[3].as_bytes()) && !is_message(frames[4].as_bytes()));
        assert!(is_message(br#"{ "seq": 1, "type": "message" }"#));
    }

    #[test]
    fn texts_carry_sender_counter_and_time() {
        assert_eq!(
            parse_text("fan 00ab 3 17 123456", "00ab"),
            Some((3, 17, 123456))
        );
        assert_eq!(parse_text("fan ffff 3 17 123456", "00ab"), None);
        assert_eq!(parse_text("hello", "00ab"), None);
    }
}
