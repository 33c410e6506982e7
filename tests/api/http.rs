//! The HTTP surface: app assets, room list, health, metrics, security headers, Origin checks.

use serde_json::{Value, json};

use crate::helpers::{Client, spawn_app, spawn_app_with};

#[tokio::test]
async fn the_app_is_served_with_security_headers() {
    let app = spawn_app().await;
    let response = reqwest::get(app.http("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"));
    assert!(csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let body = response.text().await.unwrap();
    assert!(body.contains("ChatterPro"));
    // Nothing is loaded from another host.
    assert!(!body.contains("http://") && !body.contains("https://"));

    let js = reqwest::get(app.http("/js/main.js")).await.unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert_eq!(
        reqwest::get(app.http("/nope.txt")).await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn api_rooms_lists_rooms_for_the_join_page() {
    let app = spawn_app_with(|c| c.default_rooms = vec!["Lobby".into(), "Dev".into()]).await;
    let _alice = app.member("alice", "Dev").await;
    let v: Value = reqwest::get(app.http("/api/rooms"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"rooms":[{"name":"Lobby","online":0},{"name":"Dev","online":1}]})
    );
}

#[tokio::test]
async fn healthz_answers_when_storage_does() {
    let app = spawn_app().await;
    let response = reqwest::get(app.http("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn metrics_count_connections_messages_and_errors() {
    let app = spawn_app().await;
    let mut alice = app.member("alice", "Chat Room").await;
    let _bob = app.member("bob", "Chat Room").await;
    alice.recv_type("presence").await;
    alice.say("Chat Room", "hi").await;
    alice.send_json(json!({"type":"nope"})).await;
    alice.recv_until("error").await;
    let value = async |series: &str| -> f64 {
        app.metric(series)
            .await
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
    };
    assert_eq!(value("chatterpro_connections ").await, 2.0);
    assert_eq!(value("chatterpro_rooms_active ").await, 1.0);
    assert_eq!(value("chatterpro_messages_stored_total ").await, 1.0);
    assert_eq!(
        value("chatterpro_errors_total{code=\"unknown_type\"}").await,
        1.0
    );
    assert_eq!(
        value("chatterpro_errors_total{code=\"not_member\"}").await,
        0.0
    );
    // bob's join presence to alice + the message to both.
    assert!(value("chatterpro_frames_delivered_total ").await >= 3.0);
    // Where the message's time went: one wait, one commit, one publish. The
    // publish is timed after its writes, which may reach alice first.
    for series in [
        "chatterpro_send_wait_seconds_count ",
        "chatterpro_commit_seconds_count ",
        "chatterpro_publish_seconds_count ",
    ] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while value(series).await < 1.0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(value(series).await, 1.0, "{series}");
    }
    // A commit includes its fsync: never free.
    assert!(value("chatterpro_commit_seconds_sum ").await > 0.0);
    assert_eq!(
        value("chatterpro_commit_seconds_bucket{le=\"+Inf\"}").await,
        1.0
    );
}

#[tokio::test]
async fn cross_site_websocket_upgrades_are_refused() {
    let app = spawn_app_with(|c| c.allowed_origins = vec!["https://chat.example".into()]).await;
    assert_eq!(
        Client::connect_with_origin(&app, "http://evil.example")
            .await
            .err(),
        Some(403)
    );
    let own = format!("http://{}", app.addr);
    assert!(Client::connect_with_origin(&app, &own).await.is_ok());
    assert!(
        Client::connect_with_origin(&app, "https://chat.example")
            .await
            .is_ok()
    );
    // No Origin: not a browser (bots, the bench, a CLI).
    let mut c = app.client().await;
    c.hello("bot").await;
}
