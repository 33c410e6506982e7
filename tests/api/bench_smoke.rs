//! The load generator against a real server: each scenario for a couple of
//! seconds at small sizes, asserting on its report — nothing lost,
//! duplicated or unexpected, and real traffic flowed.

use std::time::Duration;

use chatterpro::bench::churn::{self, ChurnArgs};
use chatterpro::bench::client::Target;
use chatterpro::bench::connections::{self, ConnectionsArgs};
use chatterpro::bench::fanout::{self, FanoutArgs};
use chatterpro::bench::rate_search::{self, RateSearchArgs};
use chatterpro::bench::soak::{self, SoakArgs};

use crate::helpers::{spawn_app_with, unlimited};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_runs_clean_with_resumes_and_bad_frames() {
    let app = spawn_app_with(unlimited).await;
    let mut args = SoakArgs::quick(app.ws_url(), 12, Duration::from_secs(3));
    args.target.server_pid = Some(std::process::id());
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

fn target(url: String) -> Target {
    Target {
        url,
        server_pid: Some(std::process::id()),
        source_ips: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_source_addresses_and_hold() {
    let app = spawn_app_with(unlimited).await;
    let args = ConnectionsArgs {
        target: target(app.ws_url()),
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
    let app = spawn_app_with(unlimited).await;
    let args = FanoutArgs {
        target: target(app.ws_url()),
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
    let app = spawn_app_with(|c| {
        unlimited(c);
        // Churn's people stay milliseconds: coalesced, their presence would
        // mostly cancel out and leave the bench little to check.
        c.presence_interval = Duration::ZERO;
    })
    .await;
    let args = ChurnArgs {
        target: target(app.ws_url()),
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
    let app = spawn_app_with(unlimited).await;
    let args = RateSearchArgs {
        fanout: FanoutArgs {
            target: target(app.ws_url()),
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
        let args = chatterpro::bench::loopback::LoopbackArgs {
            conns: 20,
            rounds: 50.0,
            frames: 2,
            frame_bytes: 100,
            duration: Duration::from_millis(400),
            writer_core: 0,
            reader_core: 1,
            io_uring,
        };
        let report = chatterpro::bench::loopback::run(args).expect("loopback runs");
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
