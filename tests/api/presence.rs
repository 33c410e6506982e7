//! Presence cannot be amplified: a join/leave flood from one address costs
//! every member of the room a bounded number of bytes, and messages sent
//! during it still arrive at once.

use std::num::NonZeroU32;
use std::time::Duration;

use chatterpro::Config;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{Client, TestApp, WAIT, spawn_app, spawn_app_with, unlimited};

const ROOM: &str = "Chat Room";
/// The attack of issue 14: 50 connections from one address looping
/// join/leave on a room with 100 members, each waiting `retry_after_ms`
/// when refused.
const MEMBERS: usize = 100;
const ATTACKERS: usize = 50;
const FLOOD: Duration = Duration::from_secs(5);
/// Presence of a room goes out at most once per `--presence-interval`.
const INTERVAL: Duration = Duration::from_millis(250);
/// What one member may receive while it is counted (the 5 s flood plus
/// ~1 s of setting up and settling): at most one presence frame per
/// interval, 1 + 6 s / 250 ms = 25 frames, each listing an attacker at most
/// once (~14 bytes a name) besides ~100 bytes of fields: 25 × (100 + 50 ×
/// 14) = 20 KB in the worst case, plus the probe message. Without
/// coalescing a member received ~1.1 MB over this flood (834 frames, each
/// carrying the whole list of ~150 names).
const BYTES_PER_MEMBER_MAX: usize = 32 * 1024;
/// How soon a message sent during the flood must reach every member.
const PROMPT: Duration = Duration::from_secs(1);

/// Connects as a reverse proxy would, naming the client `ip`, so that the
/// members and the attacker are different addresses on loopback.
async fn connect_from(app: &TestApp, ip: &str) -> Client {
    let mut request = app.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", ip.parse().unwrap());
    Client::try_connect(request).await.expect("connects")
}

/// What one member saw from the start of the flood until told to stop.
#[derive(Debug, Default)]
struct Seen {
    bytes: usize,
    presence_frames: usize,
    /// When the probe message arrived.
    probe_at: Option<Instant>,
}

/// Reads a member's socket until `stop`, counting what arrives.
async fn watch_member(mut c: Client, mut stop: watch::Receiver<bool>) -> Seen {
    let mut seen = Seen::default();
    loop {
        tokio::select! {
            _ = stop.changed() => return seen,
            next = c.ws.next() => match next {
                Some(Ok(Message::Text(text))) => {
                    seen.bytes += text.len();
                    let v: Value = serde_json::from_str(&text).expect("JSON");
                    match v["type"].as_str() {
                        Some("presence") => seen.presence_frames += 1,
                        Some("message") if v["text"] == "probe" => {
                            seen.probe_at.get_or_insert_with(Instant::now);
                        }
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("member lost its connection: {other:?}"),
            },
        }
    }
}

/// Sends `request` and waits for its reply (by `ref`), skipping room
/// traffic; a `rate_limited` refusal is waited out as told, and reported.
async fn ask(c: &mut Client, mut request: Value, n: &mut u64) -> Result<(), ()> {
    *n += 1;
    request["ref"] = json!(*n);
    c.send_json(request).await;
    loop {
        let v = c.recv().await;
        if v["ref"] != json!(*n) {
            continue;
        }
        if v["type"] != "error" {
            return Ok(());
        }
        assert_eq!(v["code"], "rate_limited", "{v}");
        let wait = v["retry_after_ms"].as_u64().unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        return Err(());
    }
}

/// One attacking connection: join, leave, again, until `until`, waiting
/// whatever a refusal says. Returns the joins that succeeded.
async fn attack(mut c: Client, until: Instant) -> u64 {
    let (mut n, mut joins) = (0, 0);
    while Instant::now() < until {
        if ask(&mut c, json!({"type":"join","room":ROOM}), &mut n)
            .await
            .is_err()
        {
            continue;
        }
        joins += 1;
        // A leave is refused only by the request rate; retry until it passes.
        while ask(&mut c, json!({"type":"leave","room":ROOM}), &mut n)
            .await
            .is_err()
        {}
    }
    joins
}

/// What a flood did: joins that got through, and the worst a member saw.
struct Flood {
    joins: u64,
    /// How long members were counted.
    counted: Duration,
    most_bytes: usize,
    most_frames: usize,
    slowest_probe: Duration,
}

/// Runs the attack against `app`: members join from addresses of their own,
/// then 50 attackers from one address loop join/leave for [`FLOOD`] while
/// one member sends a probe half-way through.
async fn flood(app: &TestApp) -> Flood {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut members = Vec::new();
    let mut speaker = None;
    for i in 0..MEMBERS {
        let mut c = connect_from(app, &format!("10.0.{}.{}", i / 200, i % 200 + 1)).await;
        c.hello(&format!("member{i:03}")).await;
        c.join(ROOM).await;
        if i == 0 {
            speaker = Some(c);
        } else {
            members.push(c);
        }
    }
    let mut speaker = speaker.unwrap();
    // The presence of the last joiners settles before counting starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // What the joins queued to members is read now, not counted as the
    // flood's (on a loaded machine setting up takes many intervals).
    for c in &mut members {
        c.send_json(json!({"type":"rooms","ref":"settled"})).await;
        c.recv_until("rooms").await;
    }
    let counting = Instant::now();
    let watchers: Vec<_> = members
        .into_iter()
        .map(|c| tokio::spawn(watch_member(c, stop_rx.clone())))
        .collect();

    let until = Instant::now() + FLOOD;
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let mut c = connect_from(app, "10.6.6.6").await;
        c.hello(&format!("attacker{i:02}")).await;
        attackers.push(tokio::spawn(attack(c, until)));
    }

    tokio::time::sleep(FLOOD / 2).await;
    let probe_sent = Instant::now();
    speaker
        .send_json(json!({"type":"send","room":ROOM,"text":"probe"}))
        .await;
    let mut joins = 0;
    for a in attackers {
        joins += tokio::time::timeout(FLOOD + WAIT, a)
            .await
            .unwrap()
            .unwrap();
    }
    // The last change of the flood is announced within an interval.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let counted = counting.elapsed();
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(w.await.unwrap());
    }
    let flood = Flood {
        joins,
        counted,
        most_bytes: seen.iter().map(|s| s.bytes).max().unwrap(),
        most_frames: seen.iter().map(|s| s.presence_frames).max().unwrap(),
        slowest_probe: seen
            .iter()
            .map(|s| s.probe_at.expect("every member got the probe") - probe_sent)
            .max()
            .unwrap(),
    };
    eprintln!(
        "flood of {FLOOD:?}: {} joins got through; per member at most {} bytes, \
         {} presence frames; the probe reached every member within {:?}",
        flood.joins, flood.most_bytes, flood.most_frames, flood.slowest_probe
    );
    flood
}

fn assert_contained(flood: &Flood) {
    let intervals = (flood.counted.as_millis() / INTERVAL.as_millis()) as usize;
    // One frame per interval, plus the first (sent at once), plus one for
    // delivery jitter: frames are counted as they arrive, and on a loaded
    // machine two frames sent an interval apart can arrive closer together.
    assert!(
        flood.most_frames <= intervals + 2,
        "{} presence frames in {:?}",
        flood.most_frames,
        flood.counted
    );
    assert!(
        flood.most_bytes <= BYTES_PER_MEMBER_MAX,
        "a member received {} bytes during the flood",
        flood.most_bytes
    );
    assert!(
        flood.slowest_probe < PROMPT,
        "the probe took {:?}",
        flood.slowest_probe
    );
}

fn behind_a_proxy(c: &mut Config) {
    c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

/// With the join limits lifted, coalescing alone bounds what members get.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_leave_flood_costs_members_little_even_with_the_join_limits_lifted() {
    let app = spawn_app_with(|c| {
        behind_a_proxy(c);
        unlimited(c);
    })
    .await;
    let flood = flood(&app).await;
    assert!(flood.joins > 1000, "the flood was no flood");
    assert_contained(&flood);
}

/// With the default limits, the flood is refused early as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_leave_flood_from_one_address_is_refused_and_contained() {
    let app = spawn_app_with(behind_a_proxy).await;
    let flood = flood(&app).await;
    // 60 joins of the room at once for the address, then one a second.
    assert!(flood.joins <= 60 + 10, "{} joins got through", flood.joins);
    assert_contained(&flood);
}

#[tokio::test]
async fn leaving_and_rejoining_a_room_costs_more_than_a_first_join() {
    let app = spawn_app().await; // defaults: 6 rejoins a minute
    let mut c = app.member("alice", ROOM).await;
    for _ in 0..6 {
        c.send_json(json!({"type":"leave","room":ROOM})).await;
        c.recv_type("left").await;
        c.join(ROOM).await;
    }
    c.send_json(json!({"type":"leave","room":ROOM})).await;
    c.recv_type("left").await;
    c.send_json(json!({"type":"join","room":ROOM})).await;
    let refused = c.recv_error("rate_limited").await;
    let wait = refused["retry_after_ms"].as_u64().unwrap();
    assert!((5_000..=10_000).contains(&wait), "{refused}");
    // A room it never left is a first join, and passes.
    c.join("Gaming Room").await;
}

#[tokio::test]
async fn the_joins_of_one_room_from_one_address_share_a_bucket() {
    let app = spawn_app_with(|c| {
        behind_a_proxy(c);
        c.room_joins_per_ip_per_minute = NonZeroU32::new(3).unwrap();
    })
    .await;
    for i in 0..3 {
        let mut c = connect_from(&app, "10.6.6.6").await;
        c.hello(&format!("a{i}")).await;
        c.join(ROOM).await;
    }
    let mut fourth = connect_from(&app, "10.6.6.6").await;
    fourth.hello("a3").await;
    fourth.send_json(json!({"type":"join","room":ROOM})).await;
    let refused = fourth.recv_error("rate_limited").await;
    assert!(
        refused["retry_after_ms"].as_u64().unwrap() > 1_000,
        "{refused}"
    );
    // Other rooms, and other addresses, are not affected.
    fourth.join("Gaming Room").await;
    let mut other = connect_from(&app, "10.7.7.7").await;
    other.hello("b").await;
    other.join(ROOM).await;
}
