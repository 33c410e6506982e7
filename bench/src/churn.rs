//! `chatterpro-bench churn`: people coming and going as fast as they can.
//!
//! C clients loop for `--duration`: connect, `hello` under a fresh name,
//! then one to three rounds of `join` → `send` → `leave` (the last round
//! sometimes skips the leave), then close — politely or by dropping the
//! socket. It measures joins and connections per second and join latency,
//! and checks what is cheap to check about presence: `joined.users` lists
//! the joiner and is sorted case-insensitively; a `presence` frame's
//! `joined` and `left` are sorted, name someone, and nobody is in both.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

use super::client::{
    self, AUTO_PER_SOURCE, CallError, ConnectError, Dialer, IncomingText, Target, Ws,
};
use super::{Latency, LatencySummary, Tally, default_seed};

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Beyond the deadline, how long a client may take to finish its round.
const HARD_STOP_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub target: Target,

    /// Clients churning at once. Against a loopback server each gets its own
    /// source address unless --source-ips says otherwise (the server's
    /// default allows 120 new connections a minute per address).
    #[arg(long, default_value_t = 20)]
    pub clients: usize,

    /// Rooms to join, named PREFIX0, PREFIX1, …
    #[arg(long, default_value_t = 5)]
    pub rooms: usize,

    /// Prefix of the room names.
    #[arg(long, default_value = "bench-")]
    pub room_prefix: String,

    /// How long to churn.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Seed for the clients' random choices (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnCounts {
    pub connects: u64,
    pub hellos: u64,
    pub joins: u64,
    pub messages_acked: u64,
    pub leaves: u64,
    pub closes_polite: u64,
    pub closes_abrupt: u64,
    /// Refusals: `http_429`, `http_503` at the upgrade, `rate_limited` replies.
    pub refused: BTreeMap<String, u64>,
    /// Errors, timeouts and closes that are no refusal.
    pub unexpected: BTreeMap<String, u64>,
    pub presence_checked: u64,
    pub presence_errors: u64,
    /// A few descriptions of what went wrong.
    pub anomalies: Vec<String>,
}

impl ChurnCounts {
    fn merge(&mut self, o: ChurnCounts) {
        self.connects += o.connects;
        self.hellos += o.hellos;
        self.joins += o.joins;
        self.messages_acked += o.messages_acked;
        self.leaves += o.leaves;
        self.closes_polite += o.closes_polite;
        self.closes_abrupt += o.closes_abrupt;
        self.refused.add_all(o.refused);
        self.unexpected.add_all(o.unexpected);
        self.presence_checked += o.presence_checked;
        self.presence_errors += o.presence_errors;
        let room = 10usize.saturating_sub(self.anomalies.len());
        self.anomalies.extend(o.anomalies.into_iter().take(room));
    }

    fn anomaly(&mut self, detail: String) {
        if self.anomalies.len() < 10 {
            self.anomalies.push(detail);
        }
    }

    /// Checks one unsolicited frame (`raw` is its text, for the report).
    fn observe(&mut self, frame: &Frame, raw: &str) {
        if frame.kind != "presence" {
            return;
        }
        self.presence_checked += 1;
        if !frame.presence_consistent() {
            self.presence_errors += 1;
            self.anomaly(format!("presence: {}", client::truncate(raw, 300)));
        }
    }
}

/// The fields churn looks at. Everything else in a frame (a `joined` reply's
/// recent messages, a `welcome`'s room list) is skipped without building
/// anything: parsing every frame into a `serde_json::Value` tree was ~45 %
/// of the bench's core, and the bench, not the server, limited the run.
#[derive(Debug, Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "ref")]
    reference: Option<i64>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    retry_after_ms: Option<u64>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    users: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    joined: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    left: Option<Vec<Cow<'a, str>>>,
}

impl Frame<'_> {
    /// The same fields, owning their text (a reply outlives the frame it came in).
    fn into_owned(self) -> Frame<'static> {
        let own = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
        Frame {
            kind: own(self.kind),
            reference: self.reference,
            code: self.code.map(own),
            retry_after_ms: self.retry_after_ms,
            name: self.name.map(own),
            user: self.user.map(own),
            event: self.event.map(own),
            users: self.users.map(|users| users.into_iter().map(own).collect()),
            joined: self
                .joined
                .map(|users| users.into_iter().map(own).collect()),
            left: self.left.map(|users| users.into_iter().map(own).collect()),
        }
    }

    /// Whether `users` lists `name` (`None`: the frame has no list).
    fn lists(&self, name: &str) -> Option<bool> {
        self.users
            .as_ref()
            .map(|users| users.iter().any(|u| u == name))
    }

    /// `users` is present and sorted case-insensitively.
    fn users_sorted(&self) -> bool {
        self.users.as_deref().is_some_and(sorted)
    }

    /// A presence frame's change is well-formed: `joined` and `left` are
    /// sorted, name someone, and nobody both arrives and goes; `event` and
    /// `user`, when there, describe the single change.
    fn presence_consistent(&self) -> bool {
        let (Some(joined), Some(left)) = (&self.joined, &self.left) else {
            return false;
        };
        let single = match (self.event.as_deref(), self.user.as_deref()) {
            (None, None) => true,
            (Some("join"), Some(user)) => joined.len() == 1 && joined[0] == user && left.is_empty(),
            (Some("leave"), Some(user)) => left.len() == 1 && left[0] == user && joined.is_empty(),
            _ => false,
        };
        single
            && !(joined.is_empty() && left.is_empty())
            && sorted(joined)
            && sorted(left)
            && !joined.iter().any(|name| left.contains(name))
    }
}

/// Sorted case-insensitively.
fn sorted(names: &[Cow<'_, str>]) -> bool {
    names.windows(2).all(|w| {
        let (a, b) = (&w[0], &w[1]);
        a.chars()
            .flat_map(char::to_lowercase)
            .le(b.chars().flat_map(char::to_lowercase))
    })
}

/// A reply: its fields, and its text for the report.
struct Reply {
    frame: Frame<'static>,
    text: tungstenite::Utf8Bytes,
}

/// Sends `body` with `ref` set and returns the frame carrying the same ref
/// (a reply or an `error`), parsed once; frames arriving first are checked
/// with [`ChurnCounts::observe`].
async fn call(
    ws: &mut Ws,
    mut body: Value,
    reference: i64,
    c: &mut ChurnCounts,
) -> Result<Reply, CallError> {
    body["ref"] = reference.into();
    client::send_json(ws, &body)
        .await
        .map_err(|_| CallError::Closed(None))?;
    let wait = async {
        loop {
            match client::next_text(ws).await {
                IncomingText::Text(text) => match serde_json::from_str::<Frame>(&text) {
                    Ok(frame) if frame.reference == Some(reference) => {
                        let frame = frame.into_owned();
                        return Ok(Reply { frame, text });
                    }
                    Ok(frame) => c.observe(&frame, &text),
                    Err(_) => return Err(CallError::Garbage(client::truncate(&text, 120))),
                },
                IncomingText::Closed(code) => return Err(CallError::Closed(code)),
                IncomingText::Garbage(g) => return Err(CallError::Garbage(g)),
            }
        }
    };
    tokio::time::timeout(REPLY_TIMEOUT, wait)
        .await
        .unwrap_or(Err(CallError::Timeout))
}

#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    pub scenario: &'static str,
    pub url: String,
    pub clients: usize,
    pub rooms: usize,
    pub duration_s: f64,
    pub source_ips: usize,
    #[serde(flatten)]
    pub counts: ChurnCounts,
    pub joins_per_s: f64,
    pub connects_per_s: f64,
    pub join_latency: LatencySummary,
    pub stuck_clients: u64,
    /// With `--server-pid`: the server's CPU time during the run, and per
    /// join (each join comes with its share of connects, sends and leaves).
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_join: Option<f64>,
    pub ok: bool,
}

impl ChurnReport {
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.counts.unexpected.is_empty() {
            out.push(format!("unexpected: {}", self.counts.unexpected.render()));
        }
        if self.counts.presence_errors > 0 {
            out.push(format!(
                "{} wrong presence lists",
                self.counts.presence_errors
            ));
        }
        if self.stuck_clients > 0 {
            out.push(format!(
                "{} clients stuck past the deadline",
                self.stuck_clients
            ));
        }
        if self.counts.joins == 0 {
            out.push("no join succeeded".to_owned());
        }
        out
    }
}

impl fmt::Display for ChurnReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "churn: {} clients over {} rooms for {:.0} s against {}",
            self.clients, self.rooms, self.duration_s, self.url
        )?;
        writeln!(
            f,
            "  connections {} ({:.1}/s), joins {} ({:.1}/s), messages acked {}, leaves {}, closes polite {} / abrupt {}",
            c.connects,
            self.connects_per_s,
            c.joins,
            self.joins_per_s,
            c.messages_acked,
            c.leaves,
            c.closes_polite,
            c.closes_abrupt
        )?;
        writeln!(f, "  join latency: {}", self.join_latency)?;
        if let (Some(cpu), Some(per)) = (self.server_cpu_s, self.server_cpu_us_per_join) {
            writeln!(f, "  server CPU: {cpu:.2} s, {per:.0} µs per join")?;
        }
        writeln!(
            f,
            "  presence frames checked {}, wrong {}; refused {}; unexpected {}",
            c.presence_checked,
            c.presence_errors,
            c.refused.render(),
            c.unexpected.render()
        )?;
        for a in &c.anomalies {
            writeln!(f, "    ! {a}")?;
        }
        let failures = self.failures();
        if failures.is_empty() {
            write!(f, "  result: OK")
        } else {
            write!(f, "  result: FAILED ({})", failures.join("; "))
        }
    }
}

struct Plan {
    args: ChurnArgs,
    dialer: Dialer,
    run_id: String,
    seed: u64,
    deadline: Instant,
}

pub async fn run(args: ChurnArgs) -> anyhow::Result<ChurnReport> {
    anyhow::ensure!(
        args.clients > 0 && args.rooms > 0,
        "--clients and --rooms must be at least 1"
    );
    super::probe::check_fd_budget(args.clients as u64 * 2)?;
    // One source address per client by default: churn opens many connections.
    let dialer = Dialer::build(&args.target, args.clients * AUTO_PER_SOURCE).await?;
    let seed = args.seed.unwrap_or_else(default_seed);
    let server_pid = args.target.server_pid;
    let cpu_at_start = server_pid.and_then(super::probe::cpu_time);
    let start = Instant::now();
    let plan = Arc::new(Plan {
        run_id: format!("{:04x}", seed & 0xffff),
        seed,
        deadline: start + args.duration,
        dialer,
        args,
    });
    let mut clients = JoinSet::new();
    for id in 0..plan.args.clients {
        let plan = plan.clone();
        clients.spawn(async move { churn(&plan, id).await });
    }
    let mut counts = ChurnCounts::default();
    let mut latency = Latency::default();
    let mut stuck_clients = 0;
    let hard_stop = plan.deadline + HARD_STOP_GRACE;
    loop {
        match tokio::time::timeout_at(hard_stop, clients.join_next()).await {
            Ok(Some(Ok((c, l)))) => {
                counts.merge(c);
                latency.merge(&l);
            }
            Ok(Some(Err(e))) => {
                counts.unexpected.bump("client_task_failed".to_owned());
                counts.anomaly(e.to_string());
            }
            Ok(None) => break,
            Err(_) => {
                stuck_clients = clients.len() as u64;
                clients.abort_all();
                break;
            }
        }
    }
    let server_cpu = cpu_at_start
        .zip(server_pid.and_then(super::probe::cpu_time))
        .map(|(start, end)| end.saturating_sub(start).as_secs_f64());
    let counts_joins = counts.joins;
    let secs = plan.args.duration.as_secs_f64();
    let mut report = ChurnReport {
        scenario: "churn",
        url: plan.args.target.url.clone(),
        clients: plan.args.clients,
        rooms: plan.args.rooms,
        duration_s: secs,
        source_ips: plan.dialer.sources().len(),
        joins_per_s: counts.joins as f64 / secs,
        connects_per_s: counts.connects as f64 / secs,
        counts,
        join_latency: latency.summary(),
        stuck_clients,
        server_cpu_s: server_cpu,
        server_cpu_us_per_join: server_cpu
            .filter(|_| counts_joins > 0)
            .map(|cpu| cpu * 1e6 / counts_joins as f64),
        ok: false,
    };
    report.ok = report.failures().is_empty();
    Ok(report)
}

/// What ended a round early.
enum Stop {
    /// Refused or broken: counted already; start a new connection.
    Again,
}

async fn churn(plan: &Plan, id: usize) -> (ChurnCounts, Latency) {
    let mut c = ChurnCounts::default();
    let mut latency = Latency::default();
    let mut rng =
        StdRng::seed_from_u64(plan.seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut round = 0u64;
    let mut backoff = Duration::from_millis(100);
    while Instant::now() < plan.deadline {
        let ws = match plan.dialer.connect(id).await {
            Ok(ws) => {
                backoff = Duration::from_millis(100);
                ws
            }
            Err(e) => {
                c.refused.bump(e.key());
                let wait = match &e {
                    ConnectError::Refused { retry_after, .. } => {
                        retry_after.unwrap_or(Duration::from_secs(1))
                    }
                    _ => {
                        c.unexpected.bump(format!("connect_{}", e.key()));
                        c.anomaly(format!("client {id}: {e}"));
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        backoff
                    }
                };
                tokio::time::sleep_until((Instant::now() + wait).min(plan.deadline)).await;
                continue;
            }
        };
        c.connects += 1;
        round += 1;
        let name = format!("ch{}-{id}-{round}", plan.run_id);
        let mut ws = ws;
        match one_round(plan, &mut ws, &name, &mut rng, &mut c, &mut latency).await {
            Ok(()) => {
                if rng.random_bool(0.5) {
                    c.closes_polite += 1;
                    client::close(ws).await;
                } else {
                    c.closes_abrupt += 1;
                    drop(ws);
                }
            }
            Err(Stop::Again) => drop(ws),
        }
    }
    (c, latency)
}

/// hello, then one to three join → send → leave rounds on one connection.
async fn one_round(
    plan: &Plan,
    ws: &mut Ws,
    name: &str,
    rng: &mut StdRng,
    c: &mut ChurnCounts,
    latency: &mut Latency,
) -> Result<(), Stop> {
    let mut next_ref = 0i64;
    // The reply, or `Stop` when it is an error or did not come.
    let mut ask = async |ws: &mut Ws, body: Value, c: &mut ChurnCounts| {
        next_ref += 1;
        let reply = match call(ws, body, next_ref, c).await {
            Ok(reply) => reply,
            Err(e) => {
                if Instant::now() < plan.deadline || !matches!(e, CallError::Timeout) {
                    c.unexpected.bump(e.key());
                    c.anomaly(format!("{name}: {e:?}"));
                }
                return Err(Stop::Again);
            }
        };
        let frame = &reply.frame;
        if frame.kind == "error" {
            let code = frame.code.as_deref().unwrap_or("?");
            if code == "rate_limited" {
                c.refused.bump(code.to_owned());
                let ms = frame.retry_after_ms.unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            } else {
                c.unexpected.bump(format!("error_{code}"));
                c.anomaly(format!("{name}: {}", client::truncate(&reply.text, 300)));
            }
            return Err(Stop::Again);
        }
        Ok(reply)
    };
    let welcome = ask(ws, json!({"type":"hello","name":name}), c).await?.frame;
    if welcome.kind != "welcome" || welcome.name.as_deref() != Some(name) {
        c.unexpected.bump("bad_welcome".to_owned());
        return Err(Stop::Again);
    }
    c.hellos += 1;
    let rounds = rng.random_range(1..=3);
    for i in 0..rounds {
        if Instant::now() >= plan.deadline {
            break;
        }
        let room = format!(
            "{}{}",
            plan.args.room_prefix,
            rng.random_range(0..plan.args.rooms)
        );
        let asked = Instant::now();
        let joined = ask(ws, json!({"type":"join","room":room}), c).await?;
        latency.record(asked.elapsed());
        c.joins += 1;
        let Reply { frame, text } = &joined;
        if frame.kind != "joined" || frame.lists(name) != Some(true) || !frame.users_sorted() {
            c.presence_errors += 1;
            c.anomaly(format!(
                "{name}: joined {room}: {}",
                client::truncate(text, 300)
            ));
        }
        let sent = ask(
            ws,
            json!({"type":"send","room":room,"text":format!("{name} was here")}),
            c,
        )
        .await?;
        if sent.frame.kind == "sent" {
            c.messages_acked += 1;
        }
        if i + 1 < rounds || rng.random_bool(0.5) {
            ask(ws, json!({"type":"leave","room":room}), c).await?;
            c.leaves += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(frames: &[&str]) -> ChurnCounts {
        let mut c = ChurnCounts::default();
        for raw in frames {
            c.observe(&serde_json::from_str(raw).unwrap(), raw);
        }
        c
    }

    #[test]
    fn presence_frames_are_checked_from_the_fields_alone() {
        let good = observed(&[
            r#"{"type":"presence","room":"r","joined":["bob"],"left":[],"event":"join","user":"bob"}"#,
            r#"{"type":"presence","room":"r","joined":[],"left":["bob"],"event":"leave","user":"bob"}"#,
            r#"{"type":"presence","room":"r","joined":["alice","Carol"],"left":["bob"]}"#,
            r#"{"type":"message","room":"r","id":"x","seq":1,"from":"a","text":"hi","ts":1}"#,
        ]);
        assert_eq!((good.presence_checked, good.presence_errors), (3, 0));
        let bad = observed(&[
            // An event that is not the change, someone arriving and going,
            // an unsorted list, no change at all, the old form.
            r#"{"type":"presence","room":"r","joined":["alice"],"left":[],"event":"join","user":"bob"}"#,
            r#"{"type":"presence","room":"r","joined":["bob"],"left":["bob"]}"#,
            r#"{"type":"presence","room":"r","joined":["bob","Alice"],"left":[]}"#,
            r#"{"type":"presence","room":"r","joined":[],"left":[]}"#,
            r#"{"type":"presence","room":"r","event":"join","user":"bob","users":["bob"]}"#,
        ]);
        assert_eq!((bad.presence_checked, bad.presence_errors), (5, 5));
    }

    #[test]
    fn a_reply_is_read_without_its_bulky_fields() {
        let text = r#"{"type":"joined","ref":7,"room":"r","users":["a\"b","me"],
            "messages":[{"id":"1","seq":1,"from":"x","text":"y","ts":1}],"last_seq":1}"#;
        let frame: Frame = serde_json::from_str(text).unwrap();
        assert_eq!(frame.reference, Some(7));
        assert_eq!(frame.lists("me"), Some(true));
        assert_eq!(frame.lists("a\"b"), Some(true));
        assert!(frame.users_sorted());
    }
}
