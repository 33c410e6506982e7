//! Room isolation, ordering under concurrent senders, and presence lists
//! under many joins, leaves and disconnects.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Client, apply_presence, spawn_app, spawn_app_with, unlimited};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_isolated() {
    let app = spawn_app().await;
    let rooms = ["Chat Room", "Business Room", "Gaming Room"];
    let mut clients: Vec<(String, &str, Client)> = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for i in 0..4 {
            let name = format!("u{r}{i}");
            let c = app.member(&name, room).await;
            clients.push((name, room, c));
        }
    }
    // Drain the join presences (all announced within the presence
    // interval); each must be of the client's own room.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut drained = Vec::new();
    for (name, room, mut c) in clients {
        c.send_json(json!({"type":"rooms","ref":"drain"})).await;
        loop {
            let v = c.recv().await;
            if v["type"] == "rooms" {
                break;
            }
            assert_eq!(v["type"], "presence");
            assert_eq!(v["room"], *room, "presence leaked into {name}'s socket");
        }
        drained.push((name, room, c));
    }
    // Everyone says something in their room.
    for (name, room, c) in &mut drained {
        c.send_json(json!({"type":"send","room":room,"text":format!("from {name}")}))
            .await;
    }
    for (name, room, c) in &mut drained {
        let mut got = Vec::new();
        let mut sent = 0;
        while got.len() < 4 || sent < 1 {
            let m = c.recv().await;
            assert_eq!(m["room"], **room, "{name} received a frame of another room");
            match m["type"].as_str() {
                Some("sent") => sent += 1,
                Some("message") => got.push(m["from"].as_str().unwrap().to_owned()),
                other => panic!("unexpected {other:?}"),
            }
        }
        c.expect_silence(Duration::from_millis(100)).await;
        got.sort();
        let r = rooms.iter().position(|x| x == room).unwrap();
        let expected: Vec<String> = (0..4).map(|i| format!("u{r}{i}")).collect();
        assert_eq!(got, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_are_seen_in_one_order_by_everyone() {
    let app = spawn_app_with(unlimited).await;
    let senders = 5;
    let per_sender = 60;
    let mut watchers = Vec::new();
    for i in 0..3 {
        watchers.push(app.member(&format!("watcher{i}"), "Chat Room").await);
    }
    let mut tasks = Vec::new();
    for s in 0..senders {
        let mut c = app.member(&format!("sender{s}"), "Chat Room").await;
        tasks.push(tokio::spawn(async move {
            for i in 0..per_sender {
                c.send_json(json!({"type":"send","room":"Chat Room","text":format!("{s}:{i}")}))
                    .await;
            }
            // Wait for our own acks so the server has them all.
            let mut acks = 0;
            while acks < per_sender {
                if c.recv().await["type"] == "sent" {
                    acks += 1;
                }
            }
            c
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = senders * per_sender;
    let mut orders: Vec<Vec<String>> = Vec::new();
    for w in &mut watchers {
        let mut order = Vec::new();
        let mut last_seq = 0;
        while order.len() < total {
            let v = w.recv().await;
            if v["type"] != "message" {
                continue;
            }
            let seq = v["seq"].as_u64().unwrap();
            assert_eq!(seq, last_seq + 1, "seq gap or reorder");
            last_seq = seq;
            order.push(v["text"].as_str().unwrap().to_owned());
        }
        // Each sender's own messages keep their sending order.
        let mut next: HashMap<String, usize> = HashMap::new();
        for text in &order {
            let (s, i) = text.split_once(':').unwrap();
            let expected = next.entry(s.to_owned()).or_default();
            assert_eq!(
                i.parse::<usize>().unwrap(),
                *expected,
                "sender {s} reordered"
            );
            *expected += 1;
        }
        orders.push(order);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "watchers disagree on order"
    );
}

/// The users list of a `joined` reply.
fn users_of(v: &Value) -> Vec<String> {
    v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn presence_lists_follow_joins_leaves_and_disconnects() {
    let app = spawn_app().await;
    let mut observer = app.member("observer", "Gaming Room").await;
    let mut heard = vec!["observer".to_owned()];
    let mut members = Vec::new();
    for i in 0..6 {
        members.push(app.member(&format!("p{i}"), "Gaming Room").await);
    }
    // However the server grouped the changes, the list the observer builds
    // from them ends as the room is.
    let all = ["observer", "p0", "p1", "p2", "p3", "p4", "p5"];
    hear_until(&mut observer, &mut heard, &all).await;
    // p1 leaves politely, p3 drops its connection, p5 joins another room too.
    members[1]
        .send_json(json!({"type":"leave","room":"Gaming Room"}))
        .await;
    let without_p1 = ["observer", "p0", "p2", "p3", "p4", "p5"];
    hear_until(&mut observer, &mut heard, &without_p1).await;
    let p3 = members.remove(3);
    drop(p3); // abrupt: no close frame
    let without_p3 = ["observer", "p0", "p2", "p4", "p5"];
    hear_until(&mut observer, &mut heard, &without_p3).await;
    let p5 = members.last_mut().unwrap();
    p5.send_json(json!({"type":"join","room":"Chat Room"}))
        .await;
    p5.recv_until("joined").await;
    // Longer than the presence interval: nothing was pending.
    observer.expect_silence(Duration::from_millis(400)).await;

    // A newcomer's joined list matches what the observer last heard, plus itself.
    let mut newcomer = app.user("newcomer").await;
    let joined = newcomer.join("Gaming Room").await;
    assert_eq!(
        users_of(&joined),
        ["newcomer", "observer", "p0", "p2", "p4", "p5"]
    );
}

/// Regression: a presence frame held back while a member was still joining
/// used to arrive after its `joined`, carrying an older users list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joiners_end_with_the_full_users_list() {
    let app = spawn_app_with(unlimited).await;
    for round in 0..10 {
        let room = format!("Round {round}");
        let mut clients = Vec::new();
        for i in 0..6 {
            clients.push(app.user(&format!("r{round}u{i}")).await);
        }
        // Fire all joins before reading anything.
        for c in &mut clients {
            c.send_json(json!({"type":"join","room":room})).await;
        }
        let expected: Vec<String> = (0..6).map(|i| format!("r{round}u{i}")).collect();
        for c in &mut clients {
            let mut users = users_of(&c.recv_until("joined").await);
            // Read until the room is complete; nobody ever seems to leave.
            while users.len() < 6 {
                let v = c.recv().await;
                if v["type"] == "presence" {
                    assert_eq!(v["left"], json!([]), "a stale presence frame {v}");
                    apply_presence(&mut users, &v);
                }
            }
            assert_eq!(users, expected);
        }
    }
}

/// Room deliveries go to the kernel through io_uring (the default) or as one
/// `writev` per member (`--io-uring false`, and wherever io_uring is
/// refused). Either way, a pipelined burst over two rooms — several messages
/// per commit, several rooms per commit — reaches every member of each room
/// complete and in order, and the sender's `sent` comes before its echo.
#[tokio::test]
async fn both_socket_write_paths_deliver_a_burst_over_two_rooms_in_order() {
    for io_uring in [true, false] {
        let app = spawn_app_with(|c| {
            unlimited(c);
            c.io_uring = io_uring;
        })
        .await;
        let mut ann = app.member("ann", "Chat Room").await;
        ann.join("Other").await;
        let mut bob = app.member("bob", "Chat Room").await;
        let mut cat = app.member("cat", "Other").await;
        const N: usize = 40;
        let room = |i: usize| {
            if i.is_multiple_of(2) {
                "Chat Room"
            } else {
                "Other"
            }
        };
        for i in 0..N {
            ann.send_json(json!({"type":"send","room":room(i),"text":format!("m{i}")}))
                .await;
        }
        // Each member's messages, by room, in arrival order.
        async fn messages(client: &mut Client, n: usize) -> Vec<(String, String)> {
            let mut got = Vec::new();
            while got.len() < n {
                let v = client.recv_until("message").await;
                got.push((
                    v["room"].as_str().unwrap().to_owned(),
                    v["text"].as_str().unwrap().to_owned(),
                ));
            }
            got
        }
        let expected = |r: &str| -> Vec<String> {
            (0..N)
                .filter(|i| room(*i) == r)
                .map(|i| format!("m{i}"))
                .collect()
        };
        let only = |got: &[(String, String)], r: &str| -> Vec<String> {
            got.iter()
                .filter(|(room, _)| room == r)
                .map(|(_, t)| t.clone())
                .collect()
        };
        let got = messages(&mut bob, N / 2).await;
        assert_eq!(
            only(&got, "Chat Room"),
            expected("Chat Room"),
            "io_uring {io_uring}"
        );
        let got = messages(&mut cat, N / 2).await;
        assert_eq!(
            only(&got, "Other"),
            expected("Other"),
            "io_uring {io_uring}"
        );
        // The sender: every `sent` before its own echo, each room in order.
        let mut acked = std::collections::HashSet::new();
        let mut echoes = Vec::new();
        while echoes.len() < N {
            let v = ann.recv().await;
            let key = (v["room"].to_string(), v["seq"].to_string());
            match v["type"].as_str() {
                Some("sent") => {
                    acked.insert(key);
                }
                Some("message") => {
                    assert!(acked.contains(&key), "an echo before its sent: {v}");
                    echoes.push((
                        v["room"].as_str().unwrap().to_owned(),
                        v["text"].as_str().unwrap().to_owned(),
                    ));
                }
                _ => {}
            }
        }
        assert_eq!(only(&echoes, "Chat Room"), expected("Chat Room"));
        assert_eq!(only(&echoes, "Other"), expected("Other"));
        let batched = app
            .metric("chatterpro_socket_batched_sends_total")
            .await
            .unwrap_or(0.0);
        if !io_uring {
            assert_eq!(batched, 0.0, "--io-uring false sent through io_uring");
        } else if batched == 0.0 {
            // The kernel refused io_uring: fine on a developer's machine
            // (e.g. Docker's seccomp profile), not on CI's.
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "no send went through io_uring"
            );
        }
    }
}

/// Reads presence frames into `heard` until it is `expected`.
async fn hear_until(c: &mut Client, heard: &mut Vec<String>, expected: &[&str]) {
    while heard != expected {
        apply_presence(heard, &c.recv_until("presence").await);
    }
}
