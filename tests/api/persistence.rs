//! History that survives restarts, and joining a busy room without gaps or duplicates.

use serde_json::json;

use crate::helpers::{seqs, spawn_app, spawn_app_on, spawn_app_with, texts, unlimited};

#[tokio::test]
async fn history_and_since_survive_a_restart() {
    let mut app = spawn_app().await;
    let dir = app.take_dir();
    let db_url = app.db_url.clone();
    {
        let mut alice = app.member("alice", "Chat Room").await;
        let mut bob = app.member("bob", "Book Club").await;
        for i in 1..=5 {
            alice.say("Chat Room", &format!("chat {i}")).await;
            bob.say("Book Club", &format!("book {i}")).await;
        }
    }
    app.stop().await;

    let app = spawn_app_on(&db_url, |_| {}).await;
    let mut carol = app.user("carol").await;
    // The created room is still listed.
    carol.send_json(json!({"type":"rooms"})).await;
    let rooms = carol.recv_type("rooms").await;
    assert!(
        rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "Book Club")
    );

    let joined = carol.join("Chat Room").await;
    assert_eq!(
        texts(&joined["messages"]),
        ["chat 1", "chat 2", "chat 3", "chat 4", "chat 5"]
    );
    assert_eq!(joined["last_seq"], 5);
    carol
        .send_json(json!({"type":"join","room":"Book Club","since":3}))
        .await;
    let joined = carol.recv_type("joined").await;
    assert_eq!(texts(&joined["messages"]), ["book 4", "book 5"]);
    carol.recv_type("notice").await;
    carol
        .send_json(json!({"type":"history","room":"Book Club","before":3}))
        .await;
    assert_eq!(
        texts(&carol.recv_type("history").await["messages"]),
        ["book 1", "book 2"]
    );
    // Seqs continue where they stopped.
    assert_eq!(carol.say("Chat Room", "after restart").await["seq"], 6);
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_during_a_burst_sees_every_message_exactly_once_in_order() {
    let app = spawn_app_with(unlimited).await;
    let mut sender = app.member("sender", "Chat Room").await;
    let total = 600u64;
    let burst = tokio::spawn(async move {
        for i in 1..=total {
            sender
                .send_json(json!({"type":"send","room":"Chat Room","text":format!("m{i}")}))
                .await;
        }
        let mut acks = 0;
        while acks < total {
            if sender.recv().await["type"] == "sent" {
                acks += 1;
            }
        }
        sender
    });
    // Join several times while the burst is going on.
    let mut joiners = Vec::new();
    for i in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let mut c = app.user(&format!("joiner{i}")).await;
        c.send_json(json!({"type":"join","room":"Chat Room","since":0}))
            .await;
        joiners.push(c);
    }
    let _sender = burst.await.unwrap();
    for mut c in joiners {
        let joined = c.recv_type("joined").await;
        let mut seqs: Vec<u64> = seqs(&joined["messages"]);
        assert_eq!(seqs.len() as u64, joined["last_seq"].as_u64().unwrap());
        c.recv_type("notice").await;
        while seqs.len() < total as usize {
            let v = c.recv().await;
            if v["type"] == "message" {
                seqs.push(v["seq"].as_u64().unwrap());
            }
        }
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_dropped_client_resumes_with_exactly_what_it_missed() {
    let app = spawn_app_with(unlimited).await;
    let mut sender = app.member("sender", "Chat Room").await;
    let mut alice = app.client().await;
    let session = alice.hello("alice").await["session"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.join("Chat Room").await;
    sender.recv_type("presence").await;
    for i in 0..5 {
        sender.say("Chat Room", &format!("before {i}")).await;
    }
    let mut last_seen = 0;
    while last_seen < 5 {
        let m = alice.recv_until("message").await;
        last_seen = m["seq"].as_u64().unwrap();
    }
    // Abrupt: the TCP connection goes away without a close frame.
    drop(alice);
    for i in 0..200 {
        sender
            .send_json(json!({"type":"send","room":"Chat Room","text":format!("missed {i}")}))
            .await;
    }
    let mut acked = 0;
    while acked < 200 {
        if sender.recv().await["type"] == "sent" {
            acked += 1;
        }
    }
    // Whether or not the server has noticed the drop yet, the token reclaims the name.
    let mut back = app.client().await;
    back.send_json(json!({"type":"hello","name":"alice","session":session}))
        .await;
    back.recv_type("welcome").await;
    back.send_json(json!({"type":"join","room":"Chat Room","since":last_seen}))
        .await;
    let joined = back.recv_type("joined").await;
    let expected: Vec<String> = (0..200).map(|i| format!("missed {i}")).collect();
    assert_eq!(texts(&joined["messages"]), expected);
    let seqs: Vec<u64> = seqs(&joined["messages"]);
    assert_eq!(seqs, (6..=205).collect::<Vec<_>>());
    assert_eq!(joined["last_seq"], 205);
    // And live delivery continues after the catch-up, with nothing repeated.
    back.recv_type("notice").await;
    sender.say("Chat Room", "welcome back").await;
    let m = back.recv_until("message").await;
    assert_eq!(
        (m["seq"].as_u64(), m["text"].as_str()),
        (Some(206), Some("welcome back"))
    );
}

/// `--commit-interval`: a send after a quiet spell, and a trickle of sends
/// each alone in its commit, are stored at once; once commits carry several
/// sends, the next waits out the interval so that the sends arriving
/// meanwhile share it.
#[tokio::test]
async fn a_trickle_of_sends_is_not_delayed_and_a_flood_shares_commits() {
    let interval = std::time::Duration::from_millis(400);
    let app = spawn_app_with(|c| {
        unlimited(c);
        c.commit_interval = interval;
    })
    .await;
    let commits = || app.metric("chatterpro_storage_commits_total");
    let mut alice = app.member("alice", "Chat Room").await;
    let before = commits().await.unwrap_or(0.0);
    for i in 0..4 {
        let started = tokio::time::Instant::now();
        alice.say("Chat Room", &format!("lone {i}")).await;
        assert!(
            started.elapsed() < interval / 2,
            "send {i} of a trickle waited {:?}",
            started.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let trickle = commits().await.unwrap() - before;
    assert_eq!(trickle, 4.0, "each send of the trickle had its own commit");

    // Five people sending every 50 ms for half a second: one commit per
    // tick at least without the interval; with it, once a commit has
    // carried several sends, at most one per 400 ms.
    let mut people = Vec::new();
    for k in 0..5 {
        people.push(app.member(&format!("p{k}"), "Chat Room").await);
    }
    let before = commits().await.unwrap();
    for tick in 0..10 {
        for person in &mut people {
            person
                .send_json(json!({"type":"send","room":"Chat Room","text":format!("t{tick}")}))
                .await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for person in &mut people {
        assert_eq!(person.recv_sents(10).await.len(), 10);
    }
    let flood = commits().await.unwrap() - before;
    assert!(
        flood <= 5.0,
        "50 sends over 10 ticks took {flood} commits: the interval did not apply"
    );
}
