//! The load generator against a real server: each scenario for a couple of
//! seconds at small sizes, asserting on its report — nothing lost,
//! duplicated or unexpected, and real traffic flowed.
//!
//! The server is the `chatterpro` binary, run as a child process (the bench
//! depends on nothing of the server crate, not even in its tests): the one
//! `cargo test --workspace` builds beside this test, or `CHATTERPRO_BIN`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use chatterpro_bench::churn::{self, ChurnArgs};
use chatterpro_bench::client::Target;
use chatterpro_bench::connections::{self, ConnectionsArgs};
use chatterpro_bench::fanout::{self, FanoutArgs};
use chatterpro_bench::loopback::{self, LoopbackArgs};
use chatterpro_bench::rate_search::{self, RateSearchArgs};
use chatterpro_bench::soak::{self, SoakArgs};

/// Every per-connection and per-address limit lifted: the scenarios measure
/// delivery, not the server's protection against floods.
const UNLIMITED: &[&str] = &[
    "--msg-rate=1000000",
    "--msg-burst=1000000",
    "--request-rate=1000000",
    "--request-burst=1000000",
    "--join-rate=1000000",
    "--join-burst=1000000",
    "--rooms-per-ip-per-minute=1000000",
    "--rejoins-per-minute=1000000",
    "--room-joins-per-ip-per-minute=1000000",
    "--conns-per-ip-per-minute=1000000",
    "--max-conns-per-ip=100000",
    "--http-rate=1000000",
    "--http-burst=1000000",
    "--served-bytes-per-conn=1099511627776",
    "--served-bytes-burst-per-conn=1099511627776",
    "--served-bytes-per-ip=1099511627776",
    "--served-bytes-burst-per-ip=1099511627776",
    // The soak checks a `rooms` reply lists the rooms just joined.
    "--room-list-refresh=0s",
];

/// A server process on a fresh database; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    /// Kept open: the server writes to stdout after its `listening on` line,
    /// and a closed pipe would fail that write.
    _stdout: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server with [`UNLIMITED`] and `extra` flags; returns once
    /// it printed `listening on http://ADDR`.
    fn start(extra: &[&str]) -> Self {
        let bin = server_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let mut child = Command::new(&bin)
            .arg("--addr=127.0.0.1:0")
            .arg(format!(
                "--database-url=sqlite://{}",
                dir.path().join("bench.db").display()
            ))
            .args(UNLIMITED)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let started = Instant::now();
        let mut line = String::new();
        let addr = loop {
            line.clear();
            let read = stdout.read_line(&mut line).expect("server stdout");
            if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                break addr.to_owned();
            }
            if read == 0 || started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let log =
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                panic!("{} did not start:\n{log}", bin.display());
            }
        };
        Self {
            child,
            addr,
            _stdout: stdout,
            _dir: dir,
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The bench's target: this server, its memory sampled through its pid.
    fn target(&self) -> Target {
        Target {
            url: self.ws_url(),
            server_pid: Some(self.pid()),
            source_ips: None,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `CHATTERPRO_BIN`, or the `chatterpro` binary in this test's own profile
/// directory (`<target>/<profile>/deps/smoke-…` → `<target>/<profile>/`).
fn server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CHATTERPRO_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in <target>/<profile>/deps")
        .join("chatterpro");
    assert!(
        bin.exists(),
        "no server binary at {}: run `cargo test --workspace` (it builds the server) \
         or set CHATTERPRO_BIN",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_runs_clean_with_resumes_and_bad_frames() {
    let server = Server::start(&[]);
    let mut args = SoakArgs::quick(server.ws_url(), 12, Duration::from_secs(3));
    args.target.server_pid = Some(server.pid());
    let report = soak::run(args).await.expect("soak runs");
    println!("{report}");
    let c = &report.counts;
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    assert!(report.ok);
    assert_eq!((c.gaps, c.duplicates), (0, 0));
    assert!(c.unexpected.is_empty(), "{:?}", c.unexpected);
    assert!(c.messages_acked > 0 && c.messages_received > 0, "{c:?}");
    assert!(c.echoes_verified > 0, "{c:?}");
    assert!(c.reconnects > 0 && c.resumed_rooms > 0, "{c:?}");
    assert!(!c.errors_expected.is_empty() && c.bad_frames > 0, "{c:?}");
    assert!(report.rss.as_ref().is_some_and(|r| r.max_kib.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_source_addresses_and_hold() {
    let server = Server::start(&[]);
    let args = ConnectionsArgs {
        target: server.target(),
        conns: 60,
        rooms: 3,
        room_prefix: "conns-".into(),
        hold: Duration::from_millis(500),
        concurrency: 16,
        setup_timeout: Duration::from_secs(20),
    };
    let report = connections::run(args).await.expect("connections runs");
    println!("{report}");
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    assert_eq!(report.connected, 60);
    assert_eq!(report.source_ips, 2, "60 connections at 40 per address");
    assert!(report.failed.is_empty() && report.dropped_while_held.is_empty());
    // Later joiners' presence reached the earlier members.
    assert!(report.frames_received > 0);
    assert!(report.rss_held_kib.is_some() && report.bytes_per_conn.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_message_in_order_and_measures_latency() {
    let server = Server::start(&[]);
    let args = FanoutArgs {
        target: server.target(),
        rooms: 3,
        members: 4,
        senders: 2,
        rate: 60.0,
        duration: Duration::from_secs(2),
        room_prefix: "fan-".into(),
    };
    let report = fanout::run(args).await.expect("fanout runs");
    println!("{report}");
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    assert!(report.accepted > 50, "{report:?}");
    assert_eq!(report.accepted, report.offered);
    // Every accepted message reached all four members of its room.
    assert_eq!(report.delivered, report.accepted * 4);
    assert_eq!(
        (report.lost, report.duplicated, report.reordered),
        (0, 0, 0)
    );
    assert_eq!(report.latency.count, report.delivered);
    assert!(report.latency.p50_ms > 0.0 && report.latency.max_ms >= report.latency.p99_ms);
    // Every send's lateness against its schedule is known.
    assert_eq!(report.send_lateness.count, report.offered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_joins_and_leaves_with_consistent_presence() {
    // Churn's people stay milliseconds: coalesced, their presence would
    // mostly cancel out and leave the bench little to check.
    let server = Server::start(&["--presence-interval=0s"]);
    let args = ChurnArgs {
        target: server.target(),
        clients: 6,
        rooms: 3,
        room_prefix: "churn-".into(),
        duration: Duration::from_secs(2),
        seed: None,
    };
    let report = churn::run(args).await.expect("churn runs");
    println!("{report}");
    let c = &report.counts;
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    assert!(c.connects > 6 && c.joins > 6 && c.leaves > 0, "{c:?}");
    assert_eq!(c.messages_acked, c.joins);
    assert!(c.presence_checked > 0 && c.presence_errors == 0, "{c:?}");
    assert!(c.unexpected.is_empty() && c.refused.is_empty(), "{c:?}");
    assert!(report.join_latency.count > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_search_finds_a_passing_rate_and_doubles_it() {
    let server = Server::start(&[]);
    let args = RateSearchArgs {
        fanout: FanoutArgs {
            target: server.target(),
            rooms: 2,
            members: 3,
            senders: 1,
            rate: 10.0,
            duration: Duration::from_secs(1),
            room_prefix: "search-".into(),
        },
        // Generous: a debug build on a busy machine must pass at these rates.
        p99: Duration::from_secs(2),
        steps: 2,
    };
    let report = rate_search::run(args).await.expect("rate search runs");
    println!("{report}");
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    let rates: Vec<f64> = report.steps.iter().map(|s| s.rate).collect();
    assert_eq!(rates, [10.0, 20.0], "a passing step doubles the rate");
    assert!(report.best_rate >= 10.0 && report.best_delivered_per_s > 0.0);
}

#[test]
fn loopback_measures_the_cost_of_a_write_one_by_one_and_through_io_uring() {
    for io_uring in [false, true] {
        let args = LoopbackArgs {
            conns: 20,
            rounds: 50.0,
            frames: 2,
            frame_bytes: 100,
            duration: Duration::from_millis(400),
            writer_core: 0,
            reader_core: 1,
            io_uring,
        };
        let report = loopback::run(args).expect("loopback runs");
        println!("{report}");
        assert!(report.failures().is_empty(), "{:?}", report.failures());
        assert_eq!((report.bytes_per_write, report.io_uring), (200, io_uring));
        // 20 sockets, a round every 20 ms, for 400 ms: about 20 rounds.
        assert!(
            report.writes >= 100 && report.writes.is_multiple_of(20),
            "{report:?}"
        );
        assert!(report.us_per_write.is_finite());
    }
}
