//! The facts a server announces about itself — `server` in `welcome` and
//! `GET /api/info` — and the `kind` of its notices: the configured values,
//! and limits the server really enforces, so that a client reading them
//! needs no copy of its own.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with, unlimited};

const WELCOME: &str = "Hi {name}, this is the facts test server.";

/// A server configured away from every default a client could have copied.
async fn spawn_unusual_app() -> TestApp {
    spawn_app_with(|c| {
        unlimited(c);
        c.default_rooms = vec!["Lobby".into(), "Den".into()];
        c.welcome = WELCOME.into();
        c.history_on_join = 7;
    })
    .await
}

async fn api_info(app: &TestApp) -> Value {
    let response = reqwest::get(app.http("/api/info")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

#[tokio::test]
async fn welcome_and_api_info_carry_the_configured_facts() {
    let app = spawn_unusual_app().await;
    let mut alice = app.client().await;
    let welcome = alice.hello("alice").await;
    let server = &welcome["server"];
    assert_eq!(server["bot"], "ChatterPro Bot", "{welcome}");
    assert_eq!(server["default_rooms"], json!(["Lobby", "Den"]));
    assert_eq!(server["history_on_join"], 7);
    assert_eq!(server["guests"], true);
    for key in [
        "max_name_chars",
        "max_room_chars",
        "max_text_chars",
        "history_max",
    ] {
        assert!(
            server[key].as_u64().is_some_and(|n| n > 0),
            "{key} in {welcome}"
        );
    }
    // The join page's copy, without a socket, is the same.
    assert_eq!(&api_info(&app).await, server);
    // Nothing else of `welcome` moved.
    assert_eq!(welcome["name"], "alice");
    assert_eq!(welcome["protocol"], 1);
    assert_eq!(welcome["rooms"][0], json!({"name":"Lobby","online":0}));
}

/// Each announced limit is the one the server applies: its value passes,
/// one more character is refused.
#[tokio::test]
async fn the_announced_limits_are_the_enforced_ones() {
    let app = spawn_unusual_app().await;
    let facts = api_info(&app).await;
    let limit = |key: &str| facts[key].as_u64().unwrap() as usize;

    let longest_name = "n".repeat(limit("max_name_chars"));
    let mut c = app.client().await;
    c.send_json(json!({"type":"hello","name":format!("{longest_name}n")}))
        .await;
    c.recv_error("invalid_name").await;
    assert_eq!(c.hello(&longest_name).await["name"], longest_name.as_str());

    let longest_room = "r".repeat(limit("max_room_chars"));
    c.send_json(json!({"type":"join","room":format!("{longest_room}r")}))
        .await;
    c.recv_error("invalid_room").await;
    c.join(&longest_room).await;

    let longest_text = "t".repeat(limit("max_text_chars"));
    c.send_json(json!({"type":"send","room":longest_room,"text":format!("{longest_text}t")}))
        .await;
    c.recv_error("too_large").await;
    c.say(&longest_room, &longest_text).await;

    // `history_on_join`: a join returns that many of the room's messages.
    for i in 0..10 {
        c.say(&longest_room, &format!("m{i}")).await;
    }
    let mut reader = app.user("reader").await;
    let joined = reader.join(&longest_room).await;
    assert_eq!(
        joined["messages"].as_array().unwrap().len(),
        limit("history_on_join")
    );
    // `history_max`: a larger `limit` is answered with that many.
    for i in 0..limit("history_max") {
        c.send_json(json!({"type":"send","room":longest_room,"text":format!("h{i}")}))
            .await;
    }
    let _ = c.recv_sents(limit("history_max")).await;
    reader
        .send_json(json!({"type":"history","room":longest_room,"limit":100_000,"ref":"h"}))
        .await;
    let history = reader.recv_until("history").await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        limit("history_max")
    );
}

#[tokio::test]
async fn the_welcome_notice_says_it_is_the_welcome() {
    let app = spawn_unusual_app().await;
    let mut alice = app.client().await;
    let token = alice.hello("alice").await["session"].clone();
    alice.send_json(json!({"type":"join","room":"Lobby"})).await;
    alice.recv_type("joined").await;
    let notice = alice.recv_type("notice").await;
    assert_eq!(notice["kind"], "welcome", "{notice}");
    assert_eq!(notice["text"], "Hi alice, this is the facts test server.");
    assert_eq!(notice["room"], "Lobby");

    // A rejoin on a new connection (what a reconnecting page does) is
    // welcomed again, flagged the same way: the page recognises it by that.
    drop(alice);
    let mut again = app.client().await;
    again
        .send_json(json!({"type":"hello","name":"alice","session":token}))
        .await;
    again.recv_type("welcome").await;
    again
        .send_json(json!({"type":"join","room":"Lobby","since":0}))
        .await;
    again.recv_type("joined").await;
    assert_eq!(again.recv_type("notice").await["kind"], "welcome");
}

#[tokio::test]
async fn a_removal_notice_says_what_it_is_about() {
    let app = spawn_unusual_app().await;
    let mut alice = app.member("alice", "Doomed").await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatterpro"))
        .args([
            "admin",
            "--database-url",
            &app.db_url,
            "delete-room",
            "Doomed",
        ])
        .env_remove("CHATTERPRO_ROOMS")
        .output()
        .await
        .expect("chatterpro admin runs");
    assert!(out.status.success(), "{out:?}");
    let notice = alice.recv_until("notice").await;
    assert_eq!(notice["kind"], "room_removed", "{notice}");
    assert_eq!(alice.recv_until("left").await["room"], "Doomed");
}

#[tokio::test]
async fn api_info_is_rate_limited_like_the_other_routes() {
    let app = spawn_app_with(|c| {
        c.http_rate = std::num::NonZeroU32::new(1).unwrap();
        c.http_burst = std::num::NonZeroU32::new(2).unwrap();
    })
    .await;
    for _ in 0..2 {
        assert_eq!(
            reqwest::get(app.http("/api/info")).await.unwrap().status(),
            200
        );
    }
    let refused = reqwest::get(app.http("/api/info")).await.unwrap();
    assert_eq!(refused.status(), 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        reqwest::get(app.http("/api/info")).await.unwrap().status(),
        200
    );
}
