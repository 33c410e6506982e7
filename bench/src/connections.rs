//! `chatterpro-bench connections`: how many idle members the server holds, how fast
//! they arrive, and what each costs in server memory.
//!
//! Opens N connections (at most `--concurrency` being set up at a time),
//! each `hello` + `join` into one of R rooms, holds them all for H seconds
//! while reading (so pings are answered and presence frames drained), then
//! closes them politely. Connections are spread over loopback source
//! addresses to get past per-IP limits and the ephemeral-port range.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{self, CallError, ConnectError, Dialer, Incoming, Target, Ws};
use super::probe::{self, rss_kib};
use super::{Latency, LatencySummary, Tally, default_seed};

/// How long one reply may take during set-up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Connect attempts per connection when the server says "slow down".
const CONNECT_ATTEMPTS: usize = 3;

#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub target: Target,

    /// Connections to open (this process needs one descriptor each).
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,

    /// Rooms to spread them over (each join sends a presence frame listing
    /// the room's people to every member: keep rooms small).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,

    /// Prefix of the room names.
    #[arg(long, default_value = "bench-")]
    pub room_prefix: String,

    /// How long to hold every connection open once all are set up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub hold: Duration,

    /// Connections being set up at the same time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// Give up setting up connections after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub setup_timeout: Duration,
}

/// What a connections run found.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsReport {
    pub scenario: &'static str,
    pub url: String,
    pub conns: usize,
    pub rooms: usize,
    pub source_ips: usize,
    /// Connections that said hello and joined.
    pub connected: usize,
    /// Seconds from the first attempt until every connection was set up (or failed).
    pub setup_s: f64,
    pub connects_per_s: f64,
    /// Time for one connection's connect + hello + join.
    pub setup_latency: LatencySummary,
    /// Refusals by the server (`http_429`, `http_503`, `rate_limited`), counted per attempt.
    pub refused: BTreeMap<String, u64>,
    /// Connections that could not be set up, by reason.
    pub failed: BTreeMap<String, u64>,
    /// Connections the server closed (or that broke) while held.
    pub dropped_while_held: BTreeMap<String, u64>,
    /// Frames received after joining (notices, presence of later joiners).
    pub frames_received: u64,
    pub rss_before_kib: Option<u64>,
    pub rss_held_kib: Option<u64>,
    pub rss_after_close_kib: Option<u64>,
    /// (held − before) / connected.
    pub bytes_per_conn: Option<u64>,
    pub elapsed_s: f64,
    pub ok: bool,
}

impl ConnectionsReport {
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let unexpected: u64 = self
            .failed
            .iter()
            .filter(|(k, _)| !is_refusal(k))
            .map(|(_, v)| v)
            .sum();
        if unexpected > 0 {
            out.push(format!("connections failed: {}", self.failed.render()));
        }
        if !self.dropped_while_held.is_empty() {
            out.push(format!(
                "connections dropped while held: {}",
                self.dropped_while_held.render()
            ));
        }
        if self.connected == 0 {
            out.push("no connection was set up".to_owned());
        }
        out
    }
}

fn is_refusal(key: &str) -> bool {
    key.starts_with("http_") || key == "rate_limited"
}

impl fmt::Display for ConnectionsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "connections: {} of {} set up in {:.2} s ({:.0}/s) over {} rooms from {} source addresses against {}",
            self.connected,
            self.conns,
            self.setup_s,
            self.connects_per_s,
            self.rooms,
            self.source_ips.max(1),
            self.url
        )?;
        writeln!(f, "  connect+hello+join: {}", self.setup_latency)?;
        writeln!(
            f,
            "  refused {}; failed {}; dropped while held {}; frames received after joining {}",
            self.refused.render(),
            self.failed.render(),
            self.dropped_while_held.render(),
            self.frames_received
        )?;
        if let Some(before) = self.rss_before_kib {
            let mib =
                |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            writeln!(
                f,
                "  server RSS: before {}, held {}, after close {} → {} per connection",
                mib(Some(before)),
                mib(self.rss_held_kib),
                mib(self.rss_after_close_kib),
                self.bytes_per_conn
                    .map_or("?".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0))
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

/// How one connection's set-up went.
struct SetUp {
    result: Result<Duration, String>,
    refused: BTreeMap<String, u64>,
}

/// How one connection's hold went.
#[derive(Default)]
struct Held {
    dropped: Option<String>,
    frames: u64,
}

pub async fn run(args: ConnectionsArgs) -> anyhow::Result<ConnectionsReport> {
    anyhow::ensure!(
        args.conns > 0 && args.rooms > 0,
        "--conns and --rooms must be at least 1"
    );
    probe::check_fd_budget(args.conns as u64)?;
    if let Some(pid) = args.target.server_pid
        && let (Some(limit), _) = probe::open_file_limit(&pid.to_string())
        && args.conns as u64 + 64 > limit
    {
        eprintln!(
            "warning: the server (pid {pid}) may open {limit} files; {} connections may not fit",
            args.conns
        );
    }
    let dialer = Arc::new(Dialer::build(&args.target, args.conns).await?);
    let run_id = format!("{:04x}", default_seed() & 0xffff);
    let rss_before = args.target.server_pid.and_then(rss_kib);
    let start = Instant::now();
    let setup_deadline = start + args.setup_timeout;
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let release = CancellationToken::new();
    let (setup_tx, mut setup_rx) = mpsc::unbounded_channel::<SetUp>();
    let mut tasks = JoinSet::new();
    for i in 0..args.conns {
        let dialer = dialer.clone();
        let gate = gate.clone();
        let release = release.clone();
        let setup_tx = setup_tx.clone();
        let name = format!("cn{run_id}-{i}");
        let room = format!("{}{}", args.room_prefix, i % args.rooms);
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await;
            let (ws, setup) = set_up(&dialer, i, &name, &room, setup_deadline).await;
            drop(permit);
            let _ = setup_tx.send(setup);
            // The coordinator counts set-ups until every sender is gone.
            drop(setup_tx);
            match ws {
                Some(ws) => hold(ws, &release).await,
                None => Held::default(),
            }
        });
    }
    drop(setup_tx);

    let mut latency = Latency::default();
    let mut refused = BTreeMap::new();
    let mut failed = BTreeMap::new();
    let mut connected = 0;
    while let Some(setup) = setup_rx.recv().await {
        refused.add_all(setup.refused);
        match setup.result {
            Ok(took) => {
                connected += 1;
                latency.record(took);
            }
            Err(key) => failed.bump(key),
        }
    }
    let setup_s = start.elapsed().as_secs_f64();
    eprintln!(
        "{connected} connections set up in {setup_s:.2} s; holding for {:?}",
        args.hold
    );
    tokio::time::sleep(args.hold).await;
    let rss_held = args.target.server_pid.and_then(rss_kib);

    release.cancel();
    let mut dropped = BTreeMap::new();
    let mut frames = 0;
    let drain = tokio::time::sleep(Duration::from_secs(15));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(Ok(held)) => {
                    frames += held.frames;
                    if let Some(key) = held.dropped {
                        dropped.bump(key);
                    }
                }
                Some(Err(_)) => dropped.bump("task_failed".to_owned()),
                None => break,
            },
            () = &mut drain => {
                tasks.abort_all();
                break;
            }
        }
    }
    // Give the server a moment to notice the closes and free what it can.
    let rss_after_close = match args.target.server_pid {
        Some(pid) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss_kib(pid)
        }
        None => None,
    };
    let bytes_per_conn = match (rss_before, rss_held) {
        (Some(b), Some(h)) if connected > 0 => Some(h.saturating_sub(b) * 1024 / connected as u64),
        _ => None,
    };
    let mut report = ConnectionsReport {
        scenario: "connections",
        url: args.target.url.clone(),
        conns: args.conns,
        rooms: args.rooms,
        source_ips: dialer.sources().len(),
        connected,
        setup_s,
        connects_per_s: connected as f64 / setup_s.max(1e-9),
        setup_latency: latency.summary(),
        refused,
        failed,
        dropped_while_held: dropped,
        frames_received: frames,
        rss_before_kib: rss_before,
        rss_held_kib: rss_held,
        rss_after_close_kib: rss_after_close,
        bytes_per_conn,
        elapsed_s: start.elapsed().as_secs_f64(),
        ok: false,
    };
    report.ok = report.failures().is_empty();
    Ok(report)
}

/// Connect (retrying refusals a few times), hello, join.
async fn set_up(
    dialer: &Dialer,
    index: usize,
    name: &str,
    room: &str,
    deadline: Instant,
) -> (Option<Ws>, SetUp) {
    let started = Instant::now();
    let mut refused = BTreeMap::new();
    let fail = |key: String, refused| {
        (
            None,
            SetUp {
                result: Err(key),
                refused,
            },
        )
    };
    let mut attempt = 0;
    let mut ws = loop {
        attempt += 1;
        match dialer.connect(index).await {
            Ok(ws) => break ws,
            Err(e @ ConnectError::Refused { retry_after, .. }) => {
                refused.bump(e.key());
                let wait = retry_after.unwrap_or(Duration::from_secs(1));
                if attempt >= CONNECT_ATTEMPTS || Instant::now() + wait > deadline {
                    return fail(e.key(), refused);
                }
                tokio::time::sleep(wait).await;
            }
            Err(e) => return fail(format!("connect_{}", e.key()), refused),
        }
    };
    let hello = json!({"type":"hello","name":name});
    match client::call(&mut ws, hello, 1, REPLY_TIMEOUT, |_| {}).await {
        Ok(v) if v["type"] == "welcome" => {}
        Ok(v) => {
            return fail(
                format!("hello_{}", v["code"].as_str().unwrap_or("?")),
                refused,
            );
        }
        Err(e) => return fail(format!("hello_{}", e.key()), refused),
    }
    // Joins may be refused for creating rooms too fast: wait as told, a few times.
    for attempt in 1.. {
        let join = json!({"type":"join","room":room});
        match client::call(&mut ws, join, 1 + attempt, REPLY_TIMEOUT, |_| {}).await {
            Ok(v) if v["type"] == "joined" => break,
            Ok(v) if v["code"] == "rate_limited" && attempt < 5 => {
                refused.bump("rate_limited".to_owned());
                let ms = v["retry_after_ms"].as_u64().unwrap_or(1000);
                if Instant::now() + Duration::from_millis(ms) > deadline {
                    return fail("rate_limited".to_owned(), refused);
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Ok(v) => {
                return fail(
                    format!("join_{}", v["code"].as_str().unwrap_or("?")),
                    refused,
                );
            }
            Err(CallError::Timeout) => return fail("join_timeout".to_owned(), refused),
            Err(e) => return fail(format!("join_{}", e.key()), refused),
        }
    }
    let took = started.elapsed();
    (
        Some(ws),
        SetUp {
            result: Ok(took),
            refused,
        },
    )
}

/// Reads until released, then closes politely.
async fn hold(mut ws: Ws, release: &CancellationToken) -> Held {
    let mut held = Held::default();
    loop {
        tokio::select! {
            () = release.cancelled() => break,
            incoming = client::next_frame(&mut ws) => match incoming {
                Incoming::Json(_) => held.frames += 1,
                Incoming::Closed(code) => {
                    held.dropped = Some(code.map_or("connection_lost".to_owned(), |c| format!("server_close_{c}")));
                    return held;
                }
                Incoming::Garbage(_) => held.frames += 1,
            }
        }
    }
    client::close(ws).await;
    held
}
