//! Every request and reply of protocol v1, and every error code.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Client, seqs, spawn_app, spawn_app_with, texts, unlimited};

#[tokio::test]
async fn hello_gets_welcome_with_session_and_rooms() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    c.send_json(json!({"type":"hello","name":"  alice ","ref":1}))
        .await;
    let w = c.recv_type("welcome").await;
    assert_eq!(w["name"], "alice");
    assert_eq!(w["protocol"], 1);
    assert_eq!(w["ref"], 1);
    assert!(w["session"].as_str().unwrap().len() >= 32);
    assert_eq!(
        w["rooms"],
        json!([
            {"name":"Chat Room","online":0},
            {"name":"Business Room","online":0},
            {"name":"Gaming Room","online":0}
        ])
    );
}

#[tokio::test]
async fn every_request_before_hello_gets_no_identity() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    for (i, request) in [
        json!({"type":"join","room":"Chat Room"}),
        json!({"type":"send","room":"Chat Room","text":"hi"}),
        json!({"type":"leave","room":"Chat Room"}),
        json!({"type":"history","room":"Chat Room"}),
        json!({"type":"rooms"}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut request = request;
        request["ref"] = json!(i);
        c.send_json(request).await;
        let e = c.recv_error("no_identity").await;
        assert_eq!(e["ref"], i);
    }
    // Still open and usable.
    c.hello("alice").await;
}

#[tokio::test]
async fn invalid_names_are_refused() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    for name in [
        "",
        "   ",
        &"x".repeat(33),
        "bad\nname",
        "tab\tname",
        "ChatterPro Bot",
        "chatterpro BOT",
    ] {
        c.send_json(json!({"type":"hello","name":name,"ref":"h"}))
            .await;
        let e = c.recv_error("invalid_name").await;
        assert_eq!(e["ref"], "h");
    }
    assert_eq!(c.hello(&"é".repeat(32)).await["name"], "é".repeat(32));
}

#[tokio::test]
async fn names_are_unique_online_ignoring_case_unless_the_session_is_presented() {
    let app = spawn_app().await;
    let mut alice = app.client().await;
    let session = alice.hello("Alice").await["session"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut impostor = app.client().await;
    impostor
        .send_json(json!({"type":"hello","name":"aLICE"}))
        .await;
    impostor.recv_error("name_taken").await;
    impostor
        .send_json(json!({"type":"hello","name":"alice","session":"wrong"}))
        .await;
    impostor.recv_error("name_taken").await;

    // A second tab with the token is the same person.
    let mut tab = app.client().await;
    tab.send_json(json!({"type":"hello","name":"Alice","session":session}))
        .await;
    let w = tab.recv_type("welcome").await;
    assert_eq!(w["session"], session.as_str());

    // Once every connection of Alice is gone, the name stays hers for a
    // while (--name-hold): only her token claims it.
    alice.close().await;
    tab.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut later = app.client().await;
    later
        .send_json(json!({"type":"hello","name":"alice"}))
        .await;
    later.recv_error("name_taken").await;
    later
        .send_json(json!({"type":"hello","name":"alice","session":session}))
        .await;
    assert_eq!(
        later.recv_type("welcome").await["session"],
        session.as_str()
    );
}

#[tokio::test]
async fn without_a_hold_a_name_is_free_once_its_connections_close() {
    let app = spawn_app_with(|config| config.name_hold = Duration::ZERO).await;
    let alice = app.user("alice").await;
    alice.close().await;
    let mut later = app.client().await;
    for _ in 0..50 {
        later
            .send_json(json!({"type":"hello","name":"alice"}))
            .await;
        let v = later.recv().await;
        if v["type"] == "welcome" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("name was not released after its connections closed");
}

#[tokio::test]
async fn second_hello_with_another_name_is_refused() {
    let app = spawn_app().await;
    let mut c = app.user("alice").await;
    c.send_json(json!({"type":"hello","name":"bob"})).await;
    c.recv_error("bad_request").await;
    // The same name again is answered with the same session.
    c.hello("alice").await;
}

#[tokio::test]
async fn join_replies_then_welcomes_and_tells_the_others() {
    let app = spawn_app().await;
    let mut alice = app.member("alice", "Chat Room").await;

    let mut bob = app.user("bob").await;
    bob.send_json(json!({"type":"join","room":"Chat Room","ref":"j"}))
        .await;
    let joined = bob.recv_type("joined").await;
    assert_eq!(joined["ref"], "j");
    assert_eq!(joined["room"], "Chat Room");
    assert_eq!(joined["users"], json!(["alice", "bob"]));
    assert_eq!(joined["messages"], json!([]));
    assert_eq!(joined["last_seq"], 0);
    assert!(joined.get("truncated").is_none());
    let notice = bob.recv_type("notice").await;
    assert_eq!(notice["text"], "Welcome to ChatterPro, bob!");
    assert!(notice["ts"].as_i64().unwrap() > 1_700_000_000_000);

    let presence = alice.recv_type("presence").await;
    assert_eq!(
        presence,
        json!({"type":"presence","room":"Chat Room","joined":["bob"],"left":[],"event":"join","user":"bob"})
    );
    // Bob is not told about himself.
    bob.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn joining_creates_a_room_that_is_then_listed() {
    let app = spawn_app().await;
    let mut c = app.user("alice").await;
    c.send_json(json!({"type":"join","room":"  Book Club "}))
        .await;
    assert_eq!(c.recv_type("joined").await["room"], "Book Club");
    assert_eq!(c.recv_type("notice").await["room"], "Book Club");
    c.send_json(json!({"type":"rooms","ref":2})).await;
    let rooms = c.recv_type("rooms").await;
    assert_eq!(rooms["ref"], 2);
    let list = rooms["rooms"].as_array().unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list[3], json!({"name":"Book Club","online":1}));
    assert_eq!(list[0], json!({"name":"Chat Room","online":0}));
}

#[tokio::test]
async fn invalid_room_names_are_refused_for_every_request() {
    let app = spawn_app().await;
    let mut c = app.user("alice").await;
    let long = "r".repeat(65);
    for room in ["", "  ", long.as_str(), "new\nline"] {
        for request in [
            json!({"type":"join","room":room}),
            json!({"type":"send","room":room,"text":"x"}),
            json!({"type":"leave","room":room}),
            json!({"type":"history","room":room}),
        ] {
            c.send_json(request).await;
            c.recv_error("invalid_room").await;
        }
    }
    c.join(&"r".repeat(64)).await;
}

#[tokio::test]
async fn send_is_acknowledged_then_delivered_to_every_member() {
    let app = spawn_app().await;
    let mut alice = app.member("alice", "Chat Room").await;
    let mut bob = app.member("bob", "Chat Room").await;
    alice.recv_type("presence").await;

    bob.send_json(json!({"type":"send","room":"Chat Room","text":"  hi all  ","ref":"s1"}))
        .await;
    let sent = bob.recv_type("sent").await;
    assert_eq!(sent["ref"], "s1");
    assert_eq!(sent["room"], "Chat Room");
    assert_eq!(sent["seq"], 1);
    let id = sent["id"].as_str().unwrap().to_owned();
    let ts = sent["ts"].as_i64().unwrap();

    let mut expected = json!({"type":"message","room":"Chat Room","id":id,"seq":1,"from":"bob","text":"hi all","ts":ts});
    let echo = bob.recv_type("message").await;
    // Bob's author id: opaque, an integer JavaScript reads exactly.
    assert!(
        echo["author"].as_u64().is_some_and(|a| a < 1 << 53),
        "{echo}"
    );
    expected["author"] = echo["author"].clone();
    assert_eq!(echo, expected);
    assert_eq!(alice.recv_type("message").await, expected);

    let second = alice.say("Chat Room", "second").await;
    assert_eq!(second["seq"], 2);
    assert_ne!(second["id"], id.as_str());
    assert!(second["ts"].as_i64().unwrap() >= ts);
}

#[tokio::test]
async fn message_text_rules() {
    let app = spawn_app().await;
    let mut c = app.member("alice", "Chat Room").await;
    c.send_json(json!({"type":"send","room":"Chat Room","text":"   "}))
        .await;
    c.recv_error("bad_request").await;
    c.send_json(json!({"type":"send","room":"Chat Room","text":"x".repeat(4001),"ref":4}))
        .await;
    assert_eq!(c.recv_error("too_large").await["ref"], 4);
    // Exactly at the limit, with newlines kept.
    let text = format!("line one\n{}", "y".repeat(3991));
    assert_eq!(text.chars().count(), 4000);
    c.say("Chat Room", &text).await;
    // Nothing rejected was stored.
    c.send_json(json!({"type":"history","room":"Chat Room"}))
        .await;
    assert_eq!(texts(&c.recv_type("history").await["messages"]), vec![text]);
}

#[tokio::test]
async fn requests_for_rooms_not_joined_get_not_member() {
    let app = spawn_app().await;
    let mut outsider = app.member("eve", "Gaming Room").await;
    let mut alice = app.member("alice", "Chat Room").await;
    alice.say("Chat Room", "secret").await;

    for request in [
        json!({"type":"send","room":"Chat Room","text":"let me in","ref":1}),
        json!({"type":"history","room":"Chat Room","ref":2}),
        json!({"type":"leave","room":"Chat Room","ref":3}),
    ] {
        let r = request["ref"].clone();
        outsider.send_json(request).await;
        assert_eq!(outsider.recv_error("not_member").await["ref"], r);
    }
    // Alice saw nothing of the outsider.
    alice.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn leave_replies_left_and_tells_the_others() {
    let app = spawn_app().await;
    let mut alice = app.member("alice", "Chat Room").await;
    let mut bob = app.member("bob", "Chat Room").await;
    alice.recv_type("presence").await;

    bob.send_json(json!({"type":"leave","room":"Chat Room","ref":9}))
        .await;
    assert_eq!(
        bob.recv_type("left").await,
        json!({"type":"left","room":"Chat Room","ref":9})
    );
    assert_eq!(
        alice.recv_type("presence").await,
        json!({"type":"presence","room":"Chat Room","joined":[],"left":["bob"],"event":"leave","user":"bob"})
    );
    // Bob no longer receives the room's messages.
    alice.say("Chat Room", "bye bob").await;
    bob.expect_silence(Duration::from_millis(200)).await;
    bob.send_json(json!({"type":"leave","room":"Chat Room"}))
        .await;
    bob.recv_error("not_member").await;
}

#[tokio::test]
async fn closing_the_socket_leaves_every_room() {
    let app = spawn_app().await;
    let mut alice = app.member("alice", "Chat Room").await;
    let mut carol = app.member("carol", "Gaming Room").await;
    let mut bob = app.member("bob", "Chat Room").await;
    bob.join("Gaming Room").await;
    alice.recv_type("presence").await;
    carol.recv_type("presence").await;

    bob.close().await;
    for c in [&mut alice, &mut carol] {
        let p = c.recv_type("presence").await;
        assert_eq!(p["event"], "leave");
        assert_eq!(p["user"], "bob");
        assert_eq!((&p["joined"], &p["left"]), (&json!([]), &json!(["bob"])));
    }
}

#[tokio::test]
async fn two_tabs_are_one_person_until_the_last_leaves() {
    let app = spawn_app().await;
    let mut bob = app.member("bob", "Chat Room").await;
    let mut tab1 = app.client().await;
    let session = tab1.hello("alice").await["session"].clone();
    tab1.join("Chat Room").await;
    assert_eq!(bob.recv_type("presence").await["joined"], json!(["alice"]));

    let mut tab2 = app.client().await;
    tab2.send_json(json!({"type":"hello","name":"alice","session":session}))
        .await;
    tab2.recv_type("welcome").await;
    let joined = tab2.join("Chat Room").await;
    assert_eq!(joined["users"], json!(["alice", "bob"]));
    // No second "alice joined".
    bob.expect_silence(Duration::from_millis(200)).await;

    // Both tabs receive messages.
    bob.say("Chat Room", "hello alice").await;
    assert_eq!(tab1.recv_type("message").await["text"], "hello alice");
    assert_eq!(tab2.recv_type("message").await["text"], "hello alice");

    tab1.close().await;
    bob.expect_silence(Duration::from_millis(300)).await;
    tab2.send_json(json!({"type":"leave","room":"Chat Room"}))
        .await;
    tab2.recv_type("left").await;
    let p = bob.recv_type("presence").await;
    assert_eq!(p["event"], "leave");
    assert_eq!(p["left"], json!(["alice"]));
}

#[tokio::test]
async fn history_pages_back_oldest_first() {
    let app = spawn_app_with(unlimited).await;
    let mut c = app.member("alice", "Chat Room").await;
    for i in 1..=30 {
        c.say("Chat Room", &format!("m{i}")).await;
    }
    c.send_json(json!({"type":"history","room":"Chat Room","before":21,"limit":5,"ref":"h"}))
        .await;
    let h = c.recv_type("history").await;
    assert_eq!(h["ref"], "h");
    assert_eq!(h["room"], "Chat Room");
    assert_eq!(texts(&h["messages"]), ["m16", "m17", "m18", "m19", "m20"]);
    let seqs: Vec<u64> = seqs(&h["messages"]);
    assert_eq!(seqs, [16, 17, 18, 19, 20]);
    // Without `before`: the newest; a page that reaches the start is short.
    c.send_json(json!({"type":"history","room":"Chat Room","limit":2}))
        .await;
    assert_eq!(
        texts(&c.recv_type("history").await["messages"]),
        ["m29", "m30"]
    );
    c.send_json(json!({"type":"history","room":"Chat Room","before":3}))
        .await;
    assert_eq!(
        texts(&c.recv_type("history").await["messages"]),
        ["m1", "m2"]
    );
}

#[tokio::test]
async fn history_limit_is_capped_at_200() {
    let app = spawn_app_with(|c| {
        unlimited(c);
        c.history_on_join = 0;
    })
    .await;
    let mut c = app.member("alice", "Chat Room").await;
    for i in 0..210 {
        c.send_json(json!({"type":"send","room":"Chat Room","text":format!("n{i}")}))
            .await;
    }
    for _ in 0..210 {
        c.recv_until("message").await;
    }
    c.send_json(json!({"type":"history","room":"Chat Room","limit":100000}))
        .await;
    let h = c.recv_until("history").await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 200);
}

#[tokio::test]
async fn joined_carries_the_latest_50_or_everything_since() {
    let app = spawn_app_with(unlimited).await;
    let mut alice = app.member("alice", "Chat Room").await;
    for i in 1..=60 {
        alice.say("Chat Room", &format!("m{i}")).await;
    }
    let mut bob = app.user("bob").await;
    let joined = bob.join("Chat Room").await;
    let got = texts(&joined["messages"]);
    assert_eq!(got.len(), 50);
    assert_eq!(got[0], "m11");
    assert_eq!(got[49], "m60");
    assert_eq!(joined["last_seq"], 60);

    let mut carol = app.user("carol").await;
    carol
        .send_json(json!({"type":"join","room":"Chat Room","since":55}))
        .await;
    let joined = carol.recv_type("joined").await;
    assert_eq!(
        texts(&joined["messages"]),
        ["m56", "m57", "m58", "m59", "m60"]
    );
    assert_eq!(joined["last_seq"], 60);
    assert!(joined.get("truncated").is_none());
}

/// Sends every text to "Chat Room" without waiting, then waits until the
/// sender has seen each of them come back.
async fn flood(sender: &mut Client, texts: impl Iterator<Item = String>) {
    let mut sent = 0;
    for text in texts {
        sender
            .send_json(json!({"type":"send","room":"Chat Room","text":text}))
            .await;
        sent += 1;
    }
    for _ in 0..sent {
        sender.recv_until("message").await;
    }
}

#[tokio::test]
async fn since_is_capped_at_1000_and_says_truncated() {
    let app = spawn_app_with(unlimited).await;
    let mut alice = app.member("alice", "Chat Room").await;
    flood(&mut alice, (1..=1005).map(|i| format!("m{i}"))).await;
    let mut bob = app.user("bob").await;
    bob.send_json(json!({"type":"join","room":"Chat Room","since":0}))
        .await;
    let joined = bob.recv_type("joined").await;
    assert_eq!(joined["truncated"], true);
    let got = texts(&joined["messages"]);
    assert_eq!(got.len(), 1000);
    // The newest 1000: the gap is at the old end, where `history` can fill it.
    assert_eq!(got[0], "m6");
    assert_eq!(got[999], "m1005");
}

#[tokio::test]
async fn since_is_capped_at_a_megabyte_of_messages_and_says_truncated() {
    let app = spawn_app_with(unlimited).await;
    let mut alice = app.member("alice", "Chat Room").await;
    // 100 messages of 16 KB (4,000 four-byte characters): 1.6 MB in all,
    // all of them still in the server's in-memory tail of the room.
    let long = "😀".repeat(3_997);
    flood(&mut alice, (1..=100).map(|i| format!("{i:03}{long}"))).await;
    let mut bob = app.user("bob").await;
    bob.send_json(json!({"type":"join","room":"Chat Room","since":0}))
        .await;
    let joined = bob.recv_type("joined").await;
    assert_eq!(joined["truncated"], true);
    let bytes = joined["messages"].to_string().len();
    assert!(bytes <= 1 << 20, "{bytes} bytes of messages");
    let seqs: Vec<u64> = seqs(&joined["messages"]);
    // The newest that fit, with no gap: history fills the old end.
    assert!(seqs.len() > 50 && seqs.len() < 100, "{}", seqs.len());
    assert_eq!(seqs, ((101 - seqs.len() as u64)..=100).collect::<Vec<_>>());
    assert_eq!(joined["last_seq"], 100);
    // A `since` close to the end is answered in full.
    let mut carol = app.user("carol").await;
    carol
        .send_json(json!({"type":"join","room":"Chat Room","since":90}))
        .await;
    let joined = carol.recv_type("joined").await;
    assert!(joined.get("truncated").is_none(), "{}", joined["truncated"]);
    assert_eq!(joined["messages"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn malformed_frames_are_bad_requests_and_the_connection_survives() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    for frame in [
        "not json",
        "[1,2,3]",
        "\"hello\"",
        r#"{"name":"alice"}"#,
        r#"{"type":7}"#,
        r#"{"type":"hello"}"#,
        r#"{"type":"hello","name":42}"#,
        r#"{"type":"rooms","ref":{"a":1}}"#,
    ] {
        c.send_text(frame).await;
        c.recv_error("bad_request").await;
    }
    c.send_text(r#"{"type":"hello","ref":"r7"}"#).await;
    assert_eq!(c.recv_error("bad_request").await["ref"], "r7");
    c.hello("alice").await;
    c.join("Chat Room").await;
    c.send_text(r#"{"type":"send","room":"Chat Room","text":["x"],"ref":5}"#)
        .await;
    assert_eq!(c.recv_error("bad_request").await["ref"], 5);
    c.send_text(r#"{"type":"join","room":"Chat Room","since":-3}"#)
        .await;
    c.recv_error("bad_request").await;
}

#[tokio::test]
async fn unknown_types_are_refused_with_their_ref() {
    let app = spawn_app().await;
    let mut c = app.user("alice").await;
    c.send_json(json!({"type":"dance","ref":"d"})).await;
    let e = c.recv_error("unknown_type").await;
    assert_eq!(e["ref"], "d");
    c.sync().await;
}

#[tokio::test]
async fn the_rooms_request_counts_people_online() {
    let app = spawn_app().await;
    let _a = app.member("alice", "Business Room").await;
    let _b = app.member("bob", "Business Room").await;
    let mut c = app.member("carol", "Gaming Room").await;
    c.send_json(json!({"type":"rooms"})).await;
    let rooms = c.recv_type("rooms").await;
    assert_eq!(
        rooms["rooms"],
        json!([
            {"name":"Chat Room","online":0},
            {"name":"Business Room","online":2},
            {"name":"Gaming Room","online":1}
        ])
    );
}

#[tokio::test]
async fn the_room_list_is_capped_and_puts_defaults_then_busy_rooms_first() {
    let app = spawn_app_with(unlimited).await;
    let mut c = app.user("builder").await;
    for i in 0..110 {
        c.send_json(json!({"type":"join","room":format!("r{i:03}")}))
            .await;
        c.recv_until("joined").await;
        // Listed while empty because of this message: merely created rooms are not.
        c.send_json(json!({"type":"send","room":format!("r{i:03}"),"text":"hi"}))
            .await;
        c.recv_until("sent").await;
        c.send_json(json!({"type":"leave","room":format!("r{i:03}")}))
            .await;
        c.recv_until("left").await;
    }
    let _busy = app.member("visitor", "r005").await;
    c.send_json(json!({"type":"rooms"})).await;
    let rooms = c.recv_until("rooms").await;
    let names: Vec<&str> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 100);
    assert_eq!(
        names[..4],
        ["Chat Room", "Business Room", "Gaming Room", "r005"]
    );
    // Then those with the latest messages first.
    assert_eq!(names[4], "r109");
    assert_eq!(rooms["rooms"][3]["online"], 1);
}

#[tokio::test]
async fn invisible_characters_cannot_make_a_look_alike_name() {
    let app = spawn_app().await;
    let _alice = app.user("alice").await;
    let mut c = app.client().await;
    c.send_json(json!({"type":"hello","name":"ali\u{200B}ce"}))
        .await;
    c.recv_error("invalid_name").await;
}

/// `{"type":"join","type":"send",…}`: a filter reading the first key judges
/// a join, a last-key-wins parser runs a send. Neither runs: a duplicate key
/// anywhere in a request is a bad_request, and nothing is stored or sent.
#[tokio::test]
async fn a_request_with_a_duplicate_key_is_a_bad_request_and_has_no_effect() {
    let app = spawn_app().await;
    let mut sender = app.member("alice", "Chat Room").await;
    let mut watcher = app.member("bob", "Chat Room").await;
    sender.recv_type("presence").await;
    for frame in [
        r#"{"type":"join","type":"send","room":"Chat Room","text":"smuggled","ref":1}"#,
        r#"{"type":"send","room":"Gaming Room","room":"Chat Room","text":"smuggled"}"#,
        r#"{"type":"send","room":"Chat Room","text":"first","text":"smuggled"}"#,
        r#"{"type":"send","room":"Chat Room","text":"smuggled","x":{"a":1,"a":2}}"#,
    ] {
        sender.send_text(frame).await;
        let error = sender.recv_error("bad_request").await;
        assert!(
            error["message"].as_str().unwrap().contains("duplicate key"),
            "{error}"
        );
    }
    sender.sync().await;
    watcher.expect_silence(Duration::from_millis(300)).await;
    sender
        .send_json(json!({"type":"history","room":"Chat Room","ref":"h"}))
        .await;
    assert!(texts(&sender.recv_type("history").await["messages"]).is_empty());
}
