//! `chatterpro-bench`: a load generator that speaks protocol v1
//! (`docs/protocol.md`) to any ChatterPro server. It is a client only: it
//! depends on nothing of the server crate and shares with it only the wire
//! format, which it speaks as JSON values.
//!
//! Module map:
//! - [`client`]: dialing (optionally from many loopback source addresses),
//!   frames in and out, upgrade refusals.
//! - [`raw`]: a lean client for hot receive loops (fan-out).
//! - [`probe`]: the server's RSS and our open-file limit, through /proc.
//! - [`soak`], [`connections`], [`fanout`], [`churn`]: one scenario each.
//! - [`loopback`]: the machine's own cost of a socket write, no server.
//!   Each `run(args)` returns a report; [`run`] prints it as a human summary
//!   followed by exactly one JSON line, the last line on stdout.

pub mod churn;
pub mod client;
pub mod connections;
pub mod fanout;
pub mod loopback;
pub mod probe;
pub mod rate_search;
pub mod raw;
pub mod soak;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rand::Rng;
use serde::Serialize;

/// Load generator: drives any ChatterPro server with protocol v1 traffic.
///
/// Every scenario stops by itself, prints a short summary and then one JSON
/// line, and exits non-zero when the server broke a promise.
#[derive(Debug, Clone, Parser)]
#[command(name = "chatterpro-bench", version, about, after_help = LIMITS_HELP)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Shown under `chatterpro-bench --help`: which server limits bite, and how
/// to raise them.
const LIMITS_HELP: &str = "\
Every scenario stops by itself (its duration plus a drain: fan-out waits for
what is still arriving, at most a minute, and ends after 5 s without progress),
prints a short summary and then one JSON line (the last line on stdout), and
exits non-zero when the server broke a promise: lost, duplicated or reordered
messages, unexpected errors or closes.

Server limits: they are per connection and per source address. The defaults
(messages 10/s burst 20, joins 5/s burst 20, requests 30/s burst 60, 6
rejoins of rooms left a minute per connection, 50 connections and 120 new
connections a minute per IP, 10 new rooms and 60 joins of one room a minute
per IP, 15000 connections in all) fit `soak` mostly (scripts/soak lifts the
two join/leave churn limits). For big runs of the other scenarios start the
server with higher limits, for example:
  chatterpro --max-conns-per-ip 100000 --conns-per-ip-per-minute 1000000 \\
    --rooms-per-ip-per-minute 1000 --msg-rate 1000 --msg-burst 1000 \\
    --join-rate 1000 --join-burst 1000 --request-rate 1000 \\
    --request-burst 1000 --max-connections 19000 \\
    --rejoins-per-minute 1000000 --room-joins-per-ip-per-minute 1000000
and mind both processes' open-file limits (ulimit -n). Against a server on
loopback the bench spreads its connections over source addresses 127.0.0.2,
127.0.0.3, ... (--source-ips), 40 per address, which keeps per-IP limits and
the ephemeral-port range out of the way. Refusals are counted and reported
(rate_limited, http_429, http_503), and waited out; they do not fail a run.";

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Mixed traffic for a long time: joins, leaves, messages, history, bad
    /// frames, abrupt reconnects with resume; checks seqs and echoes; samples
    /// the server's RSS.
    Soak(soak::SoakArgs),
    /// Many idle members: hello + join N connections over R rooms, hold
    /// them; time to connect, failures, server RSS per connection.
    Connections(connections::ConnectionsArgs),
    /// R rooms × M members with S senders each at a total rate: delivery
    /// latency percentiles, loss, duplicates, reordering.
    Fanout(fanout::FanoutArgs),
    /// Clients that connect, hello, join, send, leave and close as fast as
    /// they can: joins/s, errors, presence lists.
    Churn(churn::ChurnArgs),
    /// Repeated fan-out runs: the highest rate whose p99 stays under a bound.
    RateSearch(rate_search::RateSearchArgs),
    /// No server: what one small write to a loopback socket costs the
    /// writing thread on this machine (the floor under fan-out figures).
    Loopback(loopback::LoopbackArgs),
}

/// Runs a scenario; prints a human summary and one JSON line. Fails (non-zero
/// exit) when the report shows a broken promise.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let failures = match args.scenario {
        Scenario::Soak(args) => {
            let report = soak::run(args).await?;
            emit(&report)?;
            report.failures()
        }
        Scenario::Connections(args) => {
            let report = connections::run(args).await?;
            emit(&report)?;
            report.failures()
        }
        Scenario::Fanout(args) => {
            let report = fanout::run(args).await?;
            emit(&report)?;
            report.failures()
        }
        Scenario::Churn(args) => {
            let report = churn::run(args).await?;
            emit(&report)?;
            report.failures()
        }
        Scenario::RateSearch(args) => {
            let report = rate_search::run(args).await?;
            emit(&report)?;
            report.failures()
        }
        Scenario::Loopback(args) => {
            let report = tokio::task::spawn_blocking(move || loopback::run(args)).await??;
            emit(&report)?;
            report.failures()
        }
    };
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("bench failed: {}", failures.join("; "))
    }
}

/// Prints the human summary, then the report as one JSON line (last on stdout).
fn emit<R: Serialize + Display>(report: &R) -> anyhow::Result<()> {
    println!("{report}");
    println!("{}", serde_json::to_string(report)?);
    Ok(())
}

/// Counts by key, as reported.
pub trait Tally {
    fn bump(&mut self, key: String);
    fn add_all(&mut self, other: Self);
    /// `a 3, b 1`, or `none`.
    fn render(&self) -> String;
}

impl Tally for BTreeMap<String, u64> {
    fn bump(&mut self, key: String) {
        *self.entry(key).or_default() += 1;
    }

    fn add_all(&mut self, other: Self) {
        for (k, v) in other {
            *self.entry(k).or_default() += v;
        }
    }

    fn render(&self) -> String {
        if self.is_empty() {
            return "none".to_owned();
        }
        self.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A seed from the clock, for runs that do not ask for one.
pub fn default_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A random wait with mean `1/rate` (exponential: a Poisson process).
pub fn exp_delay(rng: &mut impl Rng, rate_per_s: f64) -> Duration {
    if rate_per_s <= 0.0 {
        return Duration::from_secs(3600);
    }
    let u: f64 = rng.random();
    Duration::from_secs_f64((-(1.0 - u).ln() / rate_per_s).min(3600.0))
}

/// A latency histogram in microseconds (1 µs to 10 min, 2 significant
/// digits: 1 % resolution). Every receiver keeps its own, so each must be
/// small: at 3 digits one takes ~240 KiB and a thousand of them made
/// recording a sample a cache miss — 12 % of the bench's time at 500,000
/// deliveries/s.
#[derive(Debug, Clone)]
pub struct Latency(hdrhistogram::Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.max(1));
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn summary(&self) -> LatencySummary {
        let ms = |q: f64| self.0.value_at_quantile(q) as f64 / 1000.0;
        LatencySummary {
            count: self.0.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.0.max() as f64 / 1000.0,
        }
    }
}

/// Percentiles of a [`Latency`], in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}
