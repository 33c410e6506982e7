//! Guests' identities across restarts: the reclaim token that held a name
//! gets it back, nobody else does meanwhile, and history tells two people
//! who used one name apart by their author id.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Client, spawn_app, spawn_app_on, spawn_app_with, texts};

/// Says hello as `name` with `session`; returns the reply.
async fn hello_with(client: &mut Client, name: &str, session: Option<&str>) -> Value {
    let mut request = json!({"type":"hello","name":name});
    if let Some(session) = session {
        request["session"] = json!(session);
    }
    client.send_json(request).await;
    client.recv().await
}

/// The `author` of each message in a `messages` array.
fn authors(messages: &Value) -> Vec<Value> {
    messages
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["author"].clone())
        .collect()
}

#[tokio::test]
async fn after_a_restart_the_token_reclaims_its_name_and_nobody_else_can() {
    let mut app = spawn_app().await;
    let dir = app.take_dir();
    let db_url = app.db_url.clone();
    let (token, author) = {
        let mut alice = app.client().await;
        let welcome = hello_with(&mut alice, "alice", None).await;
        alice.join("Chat Room").await;
        let sent = alice.say("Chat Room", "before the restart").await;
        assert_eq!(sent["type"], "sent");
        (
            welcome["session"].as_str().unwrap().to_owned(),
            welcome["author"].clone(),
        )
    };
    assert!(author.is_u64(), "welcome carries the author id");
    app.stop().await;

    let app = spawn_app_on(&db_url, |_| {}).await;
    // First come is no longer first served: without the token, neither the
    // name nor a look-alike of it.
    for (name, session) in [
        ("alice", None),
        ("Alice", None),
        ("\u{430}lice", None),
        (
            "alice",
            Some("0123456789abcdef0123456789abcdef0123456789abcdef"),
        ),
    ] {
        let mut mallory = app.client().await;
        let reply = hello_with(&mut mallory, name, session).await;
        assert_eq!(reply["code"], "name_taken", "{name:?}: {reply}");
    }
    // The page that held it gets it back, as the same identity.
    let mut alice = app.client().await;
    let welcome = hello_with(&mut alice, "alice", Some(&token)).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["session"], token.as_str());
    assert_eq!(welcome["author"], author);
    let joined = alice.join("Chat Room").await;
    assert_eq!(authors(&joined["messages"]), std::slice::from_ref(&author));
    alice.say("Chat Room", "after the restart").await;
    alice
        .send_json(json!({"type":"history","room":"Chat Room"}))
        .await;
    let history = alice.recv_type("history").await;
    assert_eq!(
        texts(&history["messages"]),
        ["before the restart", "after the restart"]
    );
    assert_eq!(authors(&history["messages"]), [author.clone(), author]);
    drop(dir);
}

#[tokio::test]
async fn two_people_who_used_one_name_have_different_author_ids() {
    // No hold: a name is free as soon as its holder leaves.
    let app = spawn_app_with(|config| config.name_hold = Duration::ZERO).await;
    let mut first = app.client().await;
    let first_author = hello_with(&mut first, "alice", None).await["author"].clone();
    first.join("Chat Room").await;
    first.say("Chat Room", "I am alice").await;
    first.close().await;

    let mut watcher = app.member("watcher", "Chat Room").await;
    // The name is taken again by someone else once the first has gone.
    let mut second = app.client().await;
    let second_author = loop {
        let reply = hello_with(&mut second, "alice", None).await;
        if reply["type"] == "welcome" {
            break reply["author"].clone();
        }
        assert_eq!(reply["code"], "name_taken", "{reply}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(first_author, second_author);
    second.join("Chat Room").await;
    second.say("Chat Room", "I am alice too").await;
    let live = watcher.recv_until("message").await;
    assert_eq!(live["author"], second_author);

    watcher
        .send_json(json!({"type":"history","room":"Chat Room"}))
        .await;
    let history = watcher.recv_until("history").await;
    let from: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["from"].as_str().unwrap())
        .collect();
    assert_eq!(from, ["alice", "alice"]);
    assert_eq!(authors(&history["messages"]), [first_author, second_author]);
}

#[tokio::test]
async fn an_offline_name_is_held_for_its_token() {
    let app = spawn_app().await;
    let mut bob = app.client().await;
    let token = hello_with(&mut bob, "bob", None).await["session"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.close().await;
    // Gone, but the name stays bob's (default --name-hold).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut other = app.client().await;
    let reply = hello_with(&mut other, "bob", None).await;
    assert_eq!(reply["code"], "name_taken", "{reply}");
    let mut back = app.client().await;
    let welcome = hello_with(&mut back, "bob", Some(&token)).await;
    assert_eq!(welcome["session"], token.as_str(), "{welcome}");
}
