//! The real binary as a subprocess: what in-process tests cannot reach.
//!
//! A crash (SIGKILL) and a graceful stop (SIGTERM) in the middle of a flood,
//! each followed by a restart on the same database; the process's resident
//! memory while stalled clients stop reading; and the heartbeat dropping a
//! half-open connection. Each test starts `chatterpro` with its own temporary
//! database on port 0 and learns the port from the `listening on` line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatterpro::protocol::close;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Client, Event};

/// Flags that lift every rate and connection limit, for floods on purpose.
const LIFTED_LIMITS: &[&str] = &[
    "--msg-rate",
    "1000000",
    "--msg-burst",
    "1000000",
    "--request-rate",
    "1000000",
    "--request-burst",
    "1000000",
    "--join-rate",
    "1000000",
    "--join-burst",
    "1000000",
    "--rooms-per-ip-per-minute",
    "1000000",
    "--rejoins-per-minute",
    "1000000",
    "--room-joins-per-ip-per-minute",
    "1000000",
    "--max-conns-per-ip",
    "10000",
    "--conns-per-ip-per-minute",
    "1000000",
    // The checkers read every stored message back through `history`: how
    // many bytes that is depends on how fast the flood ran.
    "--served-bytes-per-conn",
    "1000000000",
    "--served-bytes-burst-per-conn",
    "1000000000",
    "--served-bytes-per-ip",
    "1000000000",
    "--served-bytes-burst-per-ip",
    "1000000000",
];

/// Stderr lines kept to print when a test fails.
const LOG_LINES_KEPT: usize = 200;

/// A running `chatterpro` process. Dropping it kills the process; if the
/// test is failing, the tail of the server's log is printed first.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts the binary on `db_path` and waits until it is listening.
    fn start(db_path: &Path, extra_args: &[&str]) -> Self {
        Self::start_command(
            Command::new(env!("CARGO_BIN_EXE_chatterpro")),
            db_path,
            extra_args,
        )
    }

    /// The same, with the open-file limit (soft and hard) at `open_files`.
    fn start_with_open_files(db_path: &Path, extra_args: &[&str], open_files: u32) -> Self {
        let mut bash = Command::new("bash");
        bash.args([
            "-c",
            &format!("ulimit -n {open_files} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_chatterpro"),
        ]);
        Self::start_command(bash, db_path, extra_args)
    }

    fn start_command(mut command: Command, db_path: &Path, extra_args: &[&str]) -> Self {
        let mut child = command
            .args(["--addr", "127.0.0.1:0", "--database-url"])
            .arg(format!("sqlite://{}", db_path.display()))
            .args(extra_args)
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chatterpro starts");

        // Both pipes are drained for the whole life of the process, so the
        // server never blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on http://")
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    if log.len() >= LOG_LINES_KEPT {
                        log.remove(0);
                    }
                    log.push(line);
                }
            });
        }
        // The stdout thread drops the sender if the process exits first.
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("the listening line has an address"),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "chatterpro did not say where it listens ({e}); its log:\n{}",
                    log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
                );
            }
        };
        Self { child, addr, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn client(&self) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", self.addr))
            .await
            .expect("websocket connects");
        Client { ws }
    }

    /// SIGKILL: no chance to finish anything. Reaps the process.
    fn kill9(&mut self) {
        // `Child::kill` sends SIGKILL on Unix.
        self.child.kill().expect("SIGKILL delivered");
        self.child.wait().expect("killed process reaped");
    }

    /// SIGTERM: asks for a graceful shutdown.
    fn term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits up to `timeout` for the process to exit.
    async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size in KiB, from /proc/<pid>/status.
    fn rss_kib(&self) -> Option<u64> {
        rss_of(self.pid())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!(
                "--- chatterpro (pid {}) log tail ---\n{}",
                self.child.id(),
                log.join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The flood: 20 clients, 5 per room, sending as fast as their window allows.

const FLOOD_CLIENTS: usize = 20;
const FLOOD_ROOMS: usize = 4;
/// Sends a client may have unanswered. Pipelined, but bounded so that a
/// client's own `sent` replies and its room's messages never outgrow its
/// 1024-frame outbox (which would close it with 1013, not what these tests are about).
const FLOOD_WINDOW: usize = 64;

fn flood_name(client: usize) -> String {
    format!("c{client}")
}

fn flood_room(client: usize) -> String {
    format!("flood {}", client % FLOOD_ROOMS)
}

/// Unique per client and send: a stored text names its sender and position.
fn flood_text(client: usize, n: u64) -> String {
    format!("c{client}-{n}")
}

/// Inverse of [`flood_text`].
fn parse_flood_text(text: &str) -> Option<(usize, u64)> {
    let (client, n) = text.strip_prefix('c')?.split_once('-')?;
    Some((client.parse().ok()?, n.parse().ok()?))
}

#[derive(Debug, Clone)]
struct Ack {
    n: u64,
    seq: u64,
    id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredMessage {
    seq: u64,
    id: String,
    from: String,
    text: String,
}

impl StoredMessage {
    fn from_json(v: &Value) -> Self {
        Self {
            seq: v["seq"].as_u64().expect("seq"),
            id: v["id"].as_str().expect("id").to_owned(),
            from: v["from"].as_str().expect("from").to_owned(),
            text: v["text"].as_str().expect("text").to_owned(),
        }
    }
}

/// How a connection ended, seen from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// A close frame with this code (None: a close frame without a code).
    Close(Option<u16>),
    /// The connection dropped without a close frame (with the error, if any).
    Eof(Option<String>),
}

#[derive(Debug)]
struct FloodOutcome {
    client: usize,
    /// Sends written to the socket (numbered 0..written).
    written: u64,
    acks: Vec<Ack>,
    /// Sends refused with an error: (ref, code).
    refused: Vec<(u64, String)>,
    /// `message` frames received for the client's room, in arrival order.
    received: Vec<StoredMessage>,
    ending: Ending,
}

struct Flood {
    acked: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<FloodOutcome>>,
}

impl Flood {
    /// Connects every client, says hello, joins, then starts the burst.
    async fn start(server: &ServerProcess) -> Self {
        let mut clients = Vec::new();
        for i in 0..FLOOD_CLIENTS {
            let mut c = server.client().await;
            c.hello(&flood_name(i)).await;
            c.join(&flood_room(i)).await;
            clients.push(c);
        }
        let acked = Arc::new(AtomicU64::new(0));
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(flood_client(i, c, acked.clone())))
            .collect();
        Self { acked, tasks }
    }

    /// Waits at least `min` and until `target` sends are acknowledged (or `max` passed).
    async fn run_until(&self, min: Duration, target: u64, max: Duration) -> u64 {
        let started = Instant::now();
        tokio::time::sleep(min).await;
        while self.acked.load(Ordering::Relaxed) < target && started.elapsed() < max {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.acked.load(Ordering::Relaxed)
    }

    async fn finish(self) -> Vec<FloodOutcome> {
        let mut outcomes = Vec::new();
        for task in self.tasks {
            let outcome = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("a flood client finishes once the server is gone")
                .expect("flood client task");
            outcomes.push(outcome);
        }
        outcomes
    }
}

/// One flooding client: a writer that keeps `FLOOD_WINDOW` sends in flight
/// and a reader that records every reply and message until the connection ends.
async fn flood_client(client: usize, c: Client, acked: Arc<AtomicU64>) -> FloodOutcome {
    let room = flood_room(client);
    let (mut sink, mut stream) = c.ws.split();
    let window = Semaphore::new(FLOOD_WINDOW);
    let write = async {
        let mut written = 0u64;
        // The reader closes the window when the connection ends.
        while let Ok(permit) = window.acquire().await {
            permit.forget();
            let frame = json!({
                "type": "send",
                "room": room,
                "text": flood_text(client, written),
                "ref": written,
            });
            if sink
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
            written += 1;
        }
        written
    };
    let read = async {
        let mut acks = Vec::new();
        let mut refused = Vec::new();
        let mut received = Vec::new();
        let ending = loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).expect("server sends JSON");
                    match v["type"].as_str() {
                        Some("sent") => {
                            assert_eq!(v["room"], room.as_str(), "sent for another room: {v}");
                            acks.push(Ack {
                                n: v["ref"].as_u64().expect("sent carries its ref"),
                                seq: v["seq"].as_u64().expect("seq"),
                                id: v["id"].as_str().expect("id").to_owned(),
                            });
                            acked.fetch_add(1, Ordering::Relaxed);
                            window.add_permits(1);
                        }
                        Some("error") => {
                            refused.push((
                                v["ref"].as_u64().expect("error carries its ref"),
                                v["code"].as_str().unwrap_or_default().to_owned(),
                            ));
                            window.add_permits(1);
                        }
                        Some("message") => {
                            assert_eq!(v["room"], room.as_str(), "message from another room: {v}");
                            received.push(StoredMessage::from_json(&v));
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break Ending::Close(frame.map(|f| f.code.into()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Ending::Eof(Some(e.to_string())),
                None => break Ending::Eof(None),
            }
        };
        window.close();
        (acks, refused, received, ending)
    };
    let (written, (acks, refused, received, ending)) = tokio::join!(write, read);
    FloodOutcome {
        client,
        written,
        acks,
        refused,
        received,
        ending,
    }
}

/// Every message of `room`, oldest first: `join` with `since=0`, then
/// `history` pages back while the reply was truncated.
async fn fetch_room(c: &mut Client, room: &str) -> Vec<StoredMessage> {
    c.send_json(json!({"type":"join","room":room,"since":0,"ref":"fetch"}))
        .await;
    let joined = c.recv_type("joined").await;
    assert_eq!(joined["ref"], "fetch");
    c.recv_type("notice").await;
    let mut messages: Vec<StoredMessage> = joined["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(StoredMessage::from_json)
        .collect();
    let last_seq = joined["last_seq"].as_u64().expect("last_seq");
    let mut truncated = joined["truncated"] == true;
    while truncated {
        let before = messages.first().map_or(last_seq + 1, |m| m.seq);
        c.send_json(json!({"type":"history","room":room,"before":before,"limit":200}))
            .await;
        let page = c.recv_until("history").await;
        let older: Vec<StoredMessage> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(StoredMessage::from_json)
            .collect();
        truncated = older.len() == 200 && older.first().is_some_and(|m| m.seq > 1);
        messages.splice(0..0, older);
    }
    assert_eq!(
        messages.last().map_or(0, |m| m.seq),
        last_seq,
        "the newest message of {room:?} is not last_seq"
    );
    messages
}

/// Restarts on `db_path` and reads every flood room back.
async fn stored_rooms(db_path: &Path) -> BTreeMap<String, Vec<StoredMessage>> {
    let server = ServerProcess::start(db_path, LIFTED_LIMITS);
    let mut checker = server.client().await;
    checker.hello("checker").await;
    let mut rooms = BTreeMap::new();
    for r in 0..FLOOD_ROOMS {
        let room = flood_room(r);
        let messages = fetch_room(&mut checker, &room).await;
        rooms.insert(room, messages);
    }
    rooms
}

/// What must hold after any stop, crash or not:
/// - each room's seqs are exactly 1..=N;
/// - every acknowledged send is stored once, with the seq and id it was acknowledged with;
/// - every stored message is one some member of that room sent, stored at most once;
/// - what one client got stored is a prefix of what it sent (sends are
///   stored in order, and a batch is committed whole or not at all);
/// - what each client received live is a gap-free prefix of its room's
///   stored history (messages are published only once committed).
///
/// Returns the number of stored messages.
fn check_durability(
    outcomes: &[FloodOutcome],
    stored: &BTreeMap<String, Vec<StoredMessage>>,
) -> usize {
    let mut total = 0;
    let mut by_text: HashMap<(usize, u64), (String, &StoredMessage)> = HashMap::new();
    for (room, messages) in stored {
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        let expected: Vec<u64> = (1..=messages.len() as u64).collect();
        assert!(
            seqs == expected,
            "{room:?}: seqs are not 1..={} without gaps or duplicates",
            messages.len()
        );
        let mut ids = HashSet::new();
        for m in messages {
            assert!(ids.insert(m.id.as_str()), "{room:?}: id {} twice", m.id);
            let (client, n) = parse_flood_text(&m.text)
                .unwrap_or_else(|| panic!("{room:?}: a text nobody sent: {m:?}"));
            assert!(client < FLOOD_CLIENTS, "{room:?}: unknown client in {m:?}");
            assert_eq!(&flood_room(client), room, "stored in the wrong room: {m:?}");
            assert_eq!(m.from, flood_name(client), "wrong author: {m:?}");
            let written = outcomes[client].written;
            assert!(
                n < written,
                "{m:?} was stored but its client only wrote {written} sends"
            );
            if let Some((_, first)) = by_text.insert((client, n), (room.clone(), m)) {
                panic!("{:?} stored twice: {first:?} and {m:?}", m.text);
            }
        }
        total += messages.len();
    }
    for outcome in outcomes {
        let client = outcome.client;
        let room = flood_room(client);
        for ack in &outcome.acks {
            let Some((stored_room, m)) = by_text.get(&(client, ack.n)) else {
                panic!(
                    "c{client}'s send {} was acknowledged (seq {}) but is not stored",
                    ack.n, ack.seq
                );
            };
            assert_eq!(stored_room, &room);
            assert_eq!(
                (m.seq, m.id.as_str()),
                (ack.seq, ack.id.as_str()),
                "c{client}'s send {} is stored under another seq or id",
                ack.n
            );
        }
        // Stored sends of one client: 0..k with no hole.
        let mut mine: Vec<u64> = by_text
            .keys()
            .filter(|(c, _)| *c == client)
            .map(|(_, n)| *n)
            .collect();
        mine.sort_unstable();
        assert!(
            mine.iter().enumerate().all(|(i, n)| i as u64 == *n),
            "c{client}'s stored sends are not a prefix of what it sent: {:?}…",
            &mine[..mine.len().min(20)]
        );
        // What the client saw live is its room's stored history from the
        // start, without gaps: nothing was delivered before it was durable.
        let history = &stored[&room];
        for (i, m) in outcome.received.iter().enumerate() {
            assert_eq!(
                Some(m),
                history.get(i),
                "c{client}'s live message #{i} is not the stored one"
            );
        }
        // Acknowledged in sending order, with increasing seqs.
        assert!(
            outcome
                .acks
                .windows(2)
                .all(|w| w[0].n < w[1].n && w[0].seq < w[1].seq),
            "c{client}'s acks are out of order"
        );
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_test() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let mut server = ServerProcess::start(&db, LIFTED_LIMITS);
    let flood = Flood::start(&server).await;
    let acked = flood
        .run_until(Duration::from_secs(1), 3000, Duration::from_secs(10))
        .await;
    server.kill9();
    let outcomes = flood.finish().await;
    let acked_after: usize = outcomes.iter().map(|o| o.acks.len()).sum();
    assert!(
        acked > 100,
        "only {acked} sends were acknowledged before the kill: the test proves little"
    );
    for o in &outcomes {
        assert!(
            matches!(o.ending, Ending::Eof(_)),
            "c{} saw {:?}",
            o.client,
            o.ending
        );
        assert!(
            o.refused.is_empty(),
            "c{}: refused {:?}",
            o.client,
            &o.refused[..o.refused.len().min(5)]
        );
    }

    let stored = stored_rooms(&db).await;
    let total = check_durability(&outcomes, &stored);
    let written: u64 = outcomes.iter().map(|o| o.written).sum();
    eprintln!("crash_test: {written} written, {acked_after} acknowledged, {total} stored");
}

/// SIGTERM mid-burst. What the protocol promises on shutdown, fully: every
/// client is told 1001, and only after everything queued for it was flushed —
/// every stored message of its room, and a `sent` for every send of its that
/// was stored.
///
/// Regression: the server used to flush at most one batch (64 frames) of a
/// connection's outbox before the close frame, and to drop the socket without
/// reading what the client still sent, so the kernel reset the connection and
/// the client could lose the close frame itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load() {
    let run = graceful_stop_mid_flood().await;
    let mut problems = Vec::new();
    for o in &run.outcomes {
        let room = &run.stored[&flood_room(o.client)];
        if o.ending != Ending::Close(Some(close::GOING_AWAY)) {
            problems.push(format!("c{} ended with {:?}", o.client, o.ending));
        }
        if o.received.len() != room.len() {
            problems.push(format!(
                "c{} received {} of its room's {} messages",
                o.client,
                o.received.len(),
                room.len()
            ));
        }
        let mine = room
            .iter()
            .filter(|m| m.from == flood_name(o.client))
            .count();
        if o.acks.len() != mine {
            problems.push(format!(
                "c{} was acknowledged {} of its {mine} stored sends",
                o.client,
                o.acks.len()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

struct GracefulRun {
    outcomes: Vec<FloodOutcome>,
    stored: BTreeMap<String, Vec<StoredMessage>>,
}

/// The flood, SIGTERM mid-burst, the checks that hold regardless of how each
/// connection ended, then a restart to read everything back.
async fn graceful_stop_mid_flood() -> GracefulRun {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let mut server = ServerProcess::start(&db, LIFTED_LIMITS);
    let flood = Flood::start(&server).await;
    let acked = flood
        .run_until(Duration::from_secs(1), 3000, Duration::from_secs(10))
        .await;
    server.term();
    let exit = server.wait(Duration::from_secs(15)).await;
    let outcomes = flood.finish().await;
    assert!(
        acked > 100,
        "only {acked} sends were acknowledged before SIGTERM: the test proves little"
    );
    let status = exit.expect("the server exits within 15 s of SIGTERM");
    assert!(status.success(), "the server exited with {status}");
    for o in &outcomes {
        // Only sends that reached the server after its writer stopped may be refused.
        for (n, code) in &o.refused {
            assert_eq!(
                code, "internal",
                "c{}: send {n} refused with {code}",
                o.client
            );
        }
    }
    let stored = stored_rooms(&db).await;
    let total = check_durability(&outcomes, &stored);
    let acked: usize = outcomes.iter().map(|o| o.acks.len()).sum();
    let written: u64 = outcomes.iter().map(|o| o.written).sum();
    eprintln!("SIGTERM mid-flood: {written} sends written, {acked} acknowledged, {total} stored");
    GracefulRun { outcomes, stored }
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_keep_memory_bounded() {
    const STALLED: usize = 10;
    const TOTAL: u64 = 4000;
    const ROOM: &str = "stall";
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("db.sqlite"), LIFTED_LIMITS);

    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let mut c = server.client().await;
        c.hello(&format!("stalled{i}")).await;
        c.join(ROOM).await;
        stalled.push(c);
    }
    let mut reader = server.client().await;
    reader.hello("reader").await;
    reader.join(ROOM).await;
    let mut sender = server.client().await;
    sender.hello("sender").await;
    sender.join(ROOM).await;
    reader.recv_type("presence").await;

    let baseline = server.rss_kib().expect("VmRSS");
    let body = |n: u64| {
        let head = format!("m{n} ");
        format!("{head}{}", "x".repeat(4000 - head.len()))
    };

    // Samples VmRSS every 20 ms until told to stop.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let pid = server.pid();
        tokio::spawn(async move {
            let mut peak = 0u64;
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = rss_of(pid) {
                    peak = peak.max(kib);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };

    let (mut sender_tx, mut sender_rx) = sender.ws.split();
    let window = Semaphore::new(FLOOD_WINDOW);
    let flood = async {
        for n in 0..TOTAL {
            window.acquire().await.expect("window open").forget();
            let frame = json!({"type":"send","room":ROOM,"text":body(n),"ref":n});
            sender_tx
                .send(Message::Text(frame.to_string().into()))
                .await
                .expect("sender writes");
        }
    };
    let sender_reads = async {
        let (mut sent, mut echoed) = (0, 0);
        while sent < TOTAL || echoed < TOTAL {
            let next = tokio::time::timeout(Duration::from_secs(30), sender_rx.next())
                .await
                .expect("the sender hears back");
            let Some(Ok(Message::Text(text))) = next else {
                match next {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("the sender's connection ended: {other:?}"),
                }
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            match v["type"].as_str() {
                Some("sent") => {
                    sent += 1;
                    window.add_permits(1);
                }
                Some("message") => echoed += 1,
                Some("error") => panic!("a send was refused: {v}"),
                _ => {}
            }
        }
    };
    // The healthy reader gets every message, in order, with its text.
    let reader_reads = async {
        let mut next_seq = 1;
        let mut left = HashSet::new();
        while next_seq <= TOTAL {
            let v = reader.recv().await;
            match v["type"].as_str() {
                Some("message") => {
                    assert_eq!(
                        v["seq"], next_seq,
                        "the reader missed or reordered a message"
                    );
                    assert_eq!(v["text"], body(next_seq - 1));
                    next_seq += 1;
                }
                Some("presence") => {
                    // Leaves close together come in one frame.
                    assert_eq!(v["joined"], json!([]), "{v}");
                    for name in v["left"].as_array().unwrap() {
                        left.insert(name.as_str().unwrap().to_owned());
                    }
                }
                _ => panic!("unexpected frame for the reader: {v}"),
            }
        }
        left
    };
    let ((), (), left_during_flood) = tokio::join!(flood, sender_reads, reader_reads);
    let peak_during = server.rss_kib().unwrap_or(0);
    // A little longer, to see memory after the stalled clients were dropped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss_kib().expect("VmRSS");
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.await.unwrap().max(peak_during).max(after);

    // Each stalled client, read at last: whatever was buffered (a gap-free
    // prefix of the room), then a 1013 close or the end of the stream.
    let mut endings = Vec::new();
    for (i, mut c) in stalled.into_iter().enumerate() {
        let mut next_seq = 1;
        let ending = loop {
            match c.next_event().await {
                Event::Json(v) if v["type"] == "message" => {
                    assert_eq!(v["seq"], next_seq, "stalled{i} got a gap in its stream");
                    next_seq += 1;
                }
                Event::Json(_) => {}
                Event::Closed(frame) => break frame.map(|f| u16::from(f.code)),
            }
        };
        assert!(
            matches!(ending, Some(close::TRY_AGAIN_LATER) | None),
            "stalled{i} was closed with {ending:?}"
        );
        assert!(
            next_seq <= TOTAL,
            "stalled{i} received everything: it was never cut off"
        );
        endings.push((next_seq - 1, ending));
    }
    eprintln!(
        "stalled_clients_keep_memory_bounded: VmRSS baseline {baseline} KiB, peak {peak} KiB, \
         after {after} KiB; stalled clients got (messages, close) {endings:?}; \
         reader saw leaves of {} during the flood",
        left_during_flood.len()
    );
    // Observed in a debug build: baseline 17-19 MiB, peak 29-32 MiB (the
    // stalled clients are cut off after ~980 messages each). The bound is
    // about 2.6x that peak: a per-connection copy of what the stalled
    // clients missed (10 x 16 MB) would blow it, shared frames in bounded
    // outboxes do not.
    const PEAK_BOUND_KIB: u64 = 80 * 1024;
    assert!(
        peak < PEAK_BOUND_KIB,
        "peak VmRSS {peak} KiB is over the bound of {PEAK_BOUND_KIB} KiB"
    );
}

/// Resident set size of process `pid` in KiB, from /proc/<pid>/status.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test]
async fn half_open_client_is_dropped_by_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("db.sqlite"), &["--ping-interval", "300ms"]);
    let mut a = server.client().await;
    a.hello("alive").await;
    a.join("Chat Room").await;
    let mut b = server.client().await;
    b.hello("ghost").await;
    b.join("Chat Room").await;
    // From here on `b` is never polled: it never answers a ping, like a
    // peer whose network vanished without a FIN.
    let p = a.recv_type("presence").await;
    assert_eq!((&p["event"], &p["user"]), (&json!("join"), &json!("ghost")));
    let started = Instant::now();
    let leave = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let v = a.recv().await;
            if v["type"] == "presence" {
                return v;
            }
        }
    })
    .await
    .expect("the half-open client is dropped within two intervals plus slack");
    assert_eq!(leave["event"], "leave");
    assert_eq!(leave["user"], "ghost");
    assert_eq!(leave["left"], json!(["ghost"]));
    eprintln!("half-open client dropped after {:?}", started.elapsed());

    // A client that keeps reading (and so answers pings) stays connected
    // well past two intervals.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(1500) {
        match tokio::time::timeout(Duration::from_millis(100), a.ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("the live client got {other:?}"),
        }
    }
    a.sync().await;
    drop(b);
}

// ---------------------------------------------------------------------------
// Descriptor exhaustion: connections that never send a byte.

/// Opens `n` TCP connections from `source` to `addr` that send nothing,
/// at most 64 connecting at once.
async fn silent_connections(
    addr: SocketAddr,
    source: &str,
    n: usize,
) -> Vec<tokio::net::TcpStream> {
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    let gate = Arc::new(Semaphore::new(64));
    let connects = (0..n).map(|_| {
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await.unwrap();
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind(source).ok()?;
            tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
                .await
                .ok()?
                .ok()
        }
    });
    futures_util::future::join_all(connects)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Descriptors the process holds open.
fn open_files_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_starve_other_addresses_of_descriptors() {
    const OPEN_FILES: u32 = 256;
    const BURST: usize = 2100;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_open_files(
        &dir.path().join("db.sqlite"),
        &["--handshake-timeout", "10s"],
        OPEN_FILES,
    );
    let idle_files = open_files_of(server.pid());
    // More silent connections from one address than the server has
    // descriptors: without a cap per address counted from accept, they take
    // every descriptor, accept fails, and nobody else is served.
    let silent = silent_connections(server.addr, "127.0.0.1", BURST).await;
    assert!(
        silent.len() > OPEN_FILES as usize,
        "only {} connected",
        silent.len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held_files = open_files_of(server.pid());

    // Another address is served at once, over HTTP and WebSocket.
    let started = Instant::now();
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let health = other
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await
        .expect("/healthz answers another address during the burst");
    assert_eq!(health.status(), 200);
    let [stream] = <[_; 1]>::try_from(silent_connections(server.addr, "127.0.0.2", 1).await)
        .expect("another address connects");
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_tungstenite::client_async(
            format!("ws://{}/ws", server.addr),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        ),
    )
    .await
    .expect("the upgrade is answered in time")
    .expect("the upgrade succeeds");
    let mut c = Client { ws };
    c.hello("honest").await;
    let served_in = started.elapsed();
    drop(silent);
    eprintln!(
        "open files: {idle_files} idle, {held_files} during a burst of {BURST} silent \
         connections; another address served in {served_in:?}"
    );
    assert!(
        held_files < OPEN_FILES as usize,
        "{held_files} descriptors held"
    );
    // Accept failures, if any, are logged once per interval, not per failure.
    let failures = server
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(failures <= 1, "{failures} accept failure lines");
}

/// Holds `PER_ADDRESS` silent connections from each of `addresses`
/// loopback addresses (127.0.1.x: the per-address cap is 50), measures
/// the server's RSS, closes them and measures again 2 s later.
async fn silent_burst(server: &ServerProcess, c: &mut Client, addresses: usize) -> (u64, u64) {
    const PER_ADDRESS: usize = 50;
    let mut held = Vec::new();
    for a in 0..addresses {
        let source = format!("127.0.1.{}", a + 1);
        held.extend(silent_connections(server.addr, &source, PER_ADDRESS).await);
    }
    assert_eq!(held.len(), addresses * PER_ADDRESS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = server.rss_kib().unwrap();
    drop(held);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.sync().await;
    }
    (during, server.rss_kib().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cost_little_and_their_memory_returns_when_they_close() {
    const ADDRESSES: usize = 72;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("db.sqlite"), &[]);
    let mut c = server.client().await;
    c.hello("warm").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib().unwrap();
    let (during, after) = silent_burst(&server, &mut c, ADDRESSES).await;
    let (during_again, after_again) = silent_burst(&server, &mut c, ADDRESSES).await;
    let connections = ADDRESSES as u64 * 50;
    eprintln!(
        "RSS (KiB) with {connections} silent connections: {before} before, {during} during, \
         {after} after; a second burst: {during_again} during, {after_again} after"
    );
    // Before a connection's first byte, nothing but its socket and a small
    // task: measured ~2.1 KiB each (debug build), where hyper's buffers
    // taken at accept made it ~10.5 KiB.
    let per_connection = (during - before) * 1024 / connections;
    assert!(
        per_connection < 4 * 1024,
        "{per_connection} bytes per silent connection"
    );
    // Memory returns after a burst: each runtime thread gives its freed
    // pages back when idle (src/allocator.rs). Measured: of ~7.5 MiB a
    // burst took, 0.8–2.2 MiB stays (more while other tests load the
    // machine); without the collection ~6.8 MiB stayed.
    let grown = during - before;
    for (after, burst) in [(after, "first"), (after_again, "second")] {
        assert!(
            after.saturating_sub(before) < grown / 2,
            "after the {burst} burst RSS is {after} KiB: {before} before, {during} during"
        );
    }
    // What the allocator keeps after a burst is reused by the next one.
    assert!(
        during_again < during + 2 * 1024,
        "a second burst grew RSS from {during} to {during_again} KiB"
    );
}
