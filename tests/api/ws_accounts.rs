//! Accounts over the WebSocket: an upgrade with a valid session cookie is
//! that account, guests cannot take accounts' names, `--guests=false`, and
//! revoking a session closes its live sockets with 4001 — against the real
//! server, with the cookie from a real sign-up over HTTP.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::accounts::{request, sign_in, sign_up};
use crate::helpers::{Client, TestApp, spawn_app, spawn_app_with};

const PASSWORD: &str = "correct horse battery";

/// A WebSocket whose upgrade carries the session cookie `token`.
async fn connect_as(app: &TestApp, token: &str) -> Client {
    let mut upgrade = app.ws_url().into_client_request().unwrap();
    upgrade.headers_mut().insert(
        "cookie",
        format!("other=1; chatterpro_session={token}")
            .parse()
            .unwrap(),
    );
    Client::try_connect(upgrade)
        .await
        .expect("the upgrade is accepted")
}

/// Signs up `name` over HTTP; returns the session token.
async fn account(app: &TestApp, name: &str) -> String {
    let reply = sign_up(app, name, PASSWORD).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.token()
}

#[tokio::test]
async fn a_signed_in_hello_is_the_account_and_its_messages_carry_its_author() {
    let app = spawn_app().await;
    let token = account(&app, "Alice").await;
    let mut alice = connect_as(&app, &token).await;
    alice.send_json(json!({"type":"hello"})).await;
    let welcome = alice.recv_type("welcome").await;
    assert_eq!(welcome["name"], "Alice");
    assert_eq!(welcome["account"], true);
    let author = welcome["author"].as_u64().unwrap();

    // The author id is the account's, stored with it.
    let db = rusqlite::Connection::open(app.db_url.trim_start_matches("sqlite://")).unwrap();
    let stored: i64 = db
        .query_row(
            "SELECT author_id FROM accounts WHERE name = 'Alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored as u64, author);

    // Another session's connection is the same person, same author.
    let other = sign_in(&app, "alice", PASSWORD).await.token();
    let mut tab = connect_as(&app, &other).await;
    tab.send_json(json!({"type":"hello","name":"ALICE"})).await;
    let second = tab.recv_type("welcome").await;
    assert_eq!(
        (second["name"].clone(), second["author"].clone()),
        ("Alice".into(), author.into())
    );

    alice.join("Chat Room").await;
    let mut bob = app.user("bob").await;
    let joined = bob.join("Chat Room").await;
    assert!(
        joined["users"]
            .as_array()
            .unwrap()
            .contains(&json!("Alice")),
        "the account is online in the room: {joined}"
    );
    alice.say("Chat Room", "hi from an account").await;
    let message = bob.recv_until("message").await;
    assert_eq!(message["from"], "Alice");
    assert_eq!(message["author"], author);

    // Said again, the hello is answered again; another name is refused.
    alice.send_json(json!({"type":"hello"})).await;
    assert_eq!(alice.recv_type("welcome").await["name"], "Alice");
    alice.send_json(json!({"type":"hello","name":"bob"})).await;
    alice.recv_error("bad_request").await;
}

#[tokio::test]
async fn a_signed_in_hello_with_another_name_is_a_bad_request() {
    let app = spawn_app().await;
    let token = account(&app, "alice").await;
    let mut c = connect_as(&app, &token).await;
    c.send_json(json!({"type":"hello","name":"mallory"})).await;
    c.recv_error("bad_request").await;
    c.send_json(json!({"type":"rooms"})).await;
    c.recv_error("no_identity").await;
    // A look-alike of its own name is its own.
    c.send_json(json!({"type":"hello","name":"aIice"})).await;
    let welcome = c.recv_type("welcome").await;
    assert_eq!(welcome["name"], "alice");
    assert_eq!(welcome["account"], true);
}

#[tokio::test]
async fn guests_cannot_take_an_accounts_name_nor_a_look_alike() {
    let app = spawn_app().await;
    account(&app, "alice").await;
    for name in ["alice", "Alice", "аlice", "aIice"] {
        let mut guest = app.client().await;
        guest.send_json(json!({"type":"hello","name":name})).await;
        guest.recv_error("name_taken").await;
    }
    // A guest's welcome says nothing of accounts, and keeps its token.
    let mut guest = app.client().await;
    let welcome = guest.hello("bob").await;
    assert!(welcome.get("account").is_none(), "{welcome}");
    assert!(!welcome["session"].as_str().unwrap().is_empty());
    // Without a cookie, a hello must name someone.
    let mut nameless = app.client().await;
    nameless.send_json(json!({"type":"hello"})).await;
    nameless.recv_error("bad_request").await;
}

#[tokio::test]
async fn a_bad_or_revoked_cookie_is_a_guest() {
    let app = spawn_app().await;
    let token = account(&app, "alice").await;
    let signed_out = request(&app, "DELETE", "/api/session", None, Some(&token), None).await;
    assert_eq!(signed_out.status, 204);
    let cookies = [token.as_str(), "0123456789abcdef0123456789abcdef", "junk"];
    for (i, cookie) in cookies.into_iter().enumerate() {
        let mut c = connect_as(&app, cookie).await;
        c.send_json(json!({"type":"hello"})).await;
        c.recv_error("bad_request").await;
        // Each a new name: a name just left is held for its guest.
        let welcome = c.hello(&format!("carol{i}")).await;
        assert!(welcome.get("account").is_none(), "{welcome}");
        c.close().await;
    }
}

#[tokio::test]
async fn without_guests_only_accounts_have_an_identity() {
    let app = spawn_app_with(|c| c.guests = false).await;
    let mut guest = app.client().await;
    guest.send_json(json!({"type":"hello","name":"bob"})).await;
    let refused = guest.recv_error("no_identity").await;
    assert!(
        refused["message"].as_str().unwrap().contains("sign in"),
        "{refused}"
    );
    guest.send_json(json!({"type":"rooms"})).await;
    guest.recv_error("no_identity").await;
    // The join page learns it from the facts, before any socket.
    let info: Value = reqwest::get(app.http("/api/info"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["guests"], false, "{info}");

    let token = account(&app, "alice").await;
    let mut alice = connect_as(&app, &token).await;
    alice.send_json(json!({"type":"hello"})).await;
    assert_eq!(alice.recv_type("welcome").await["account"], true);
    alice.join("Chat Room").await;
}

#[tokio::test]
async fn signing_out_closes_that_sessions_sockets_with_4001_and_no_other() {
    let app = spawn_app().await;
    let first = account(&app, "alice").await;
    let second = sign_in(&app, "alice", PASSWORD).await.token();
    let mut a1 = connect_as(&app, &first).await;
    a1.send_json(json!({"type":"hello"})).await;
    a1.recv_type("welcome").await;
    // Not yet said hello: registered at the upgrade all the same.
    let mut a2 = connect_as(&app, &first).await;
    let mut b = connect_as(&app, &second).await;
    b.send_json(json!({"type":"hello"})).await;
    b.recv_type("welcome").await;

    let reply = request(&app, "DELETE", "/api/session", None, Some(&first), None).await;
    assert_eq!(reply.status, 204);
    for c in [&mut a1, &mut a2] {
        let closed = tokio::time::timeout(Duration::from_millis(500), c.recv_close())
            .await
            .expect("closed well under a second");
        assert_eq!(closed, Some(4001));
    }
    b.sync().await;

    // Signing out everywhere closes the rest.
    let third = sign_in(&app, "alice", PASSWORD).await.token();
    let mut c = connect_as(&app, &third).await;
    c.send_json(json!({"type":"hello"})).await;
    c.recv_type("welcome").await;
    let reply = request(&app, "DELETE", "/api/sessions", None, Some(&third), None).await;
    assert_eq!(reply.status, 204);
    for c in [&mut b, &mut c] {
        let closed = tokio::time::timeout(Duration::from_millis(500), c.recv_close())
            .await
            .expect("closed well under a second");
        assert_eq!(closed, Some(4001));
    }
}

#[tokio::test]
async fn a_password_change_closes_the_other_sessions_sockets() {
    let app = spawn_app().await;
    let mine = account(&app, "alice").await;
    let other = sign_in(&app, "alice", PASSWORD).await.token();
    let mut keep = connect_as(&app, &mine).await;
    keep.send_json(json!({"type":"hello"})).await;
    keep.recv_type("welcome").await;
    let mut gone = connect_as(&app, &other).await;
    let body = json!({"current": PASSWORD, "new": "another horse battery"});
    let reply = request(
        &app,
        "POST",
        "/api/account/password",
        Some(body),
        Some(&mine),
        None,
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(gone.recv_close().await, Some(4001));
    keep.sync().await;
}
