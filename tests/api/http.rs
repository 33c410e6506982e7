//! The HTTP surface: app assets, room list, health, metrics (on their own
//! listener), security headers, Origin checks, per-address request rates.

use std::net::IpAddr;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{Client, TestApp, spawn_app, spawn_app_with};

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
async fn metrics_are_served_only_on_the_metrics_address() {
    let app = spawn_app().await;
    assert_ne!(app.metrics_addr.port(), app.addr.port());
    assert!(app.metrics_addr.ip().is_loopback());
    let public = reqwest::get(app.http("/metrics")).await.unwrap();
    assert_eq!(public.status(), 404);
    assert!(!public.text().await.unwrap().contains("chatterpro_"));
    let private = reqwest::get(app.metrics_url()).await.unwrap();
    assert_eq!(private.status(), 200);
    assert!(
        private
            .text()
            .await
            .unwrap()
            .contains("chatterpro_connections")
    );
}

/// Upgrades with these `Origin` and `Host` headers; the HTTP status on refusal.
async fn connect_with(app: &TestApp, origin: &str, host: &str) -> Result<Client, u16> {
    let mut request = app.ws_url().into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("origin", origin.parse().unwrap());
    headers.insert("host", host.parse().unwrap());
    Client::try_connect(request).await
}

#[tokio::test]
async fn a_dns_rebinding_upgrade_is_refused() {
    // The attacker's page at evil.example:PORT, its name now resolving to
    // this server: Host and Origin agree, and neither is the server's.
    let app = spawn_app().await;
    let port = app.addr.port();
    let evil = format!("evil.example:{port}");
    assert_eq!(
        connect_with(&app, &format!("http://{evil}"), &evil)
            .await
            .err(),
        Some(403)
    );
    // The loopback defaults: the bound address and localhost, same port.
    let own = app.addr.to_string();
    assert!(
        connect_with(&app, &format!("http://{own}"), &own)
            .await
            .is_ok()
    );
    let localhost = format!("localhost:{port}");
    assert!(
        connect_with(&app, &format!("http://{localhost}"), &localhost)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_https_origin_is_not_an_http_servers_own() {
    let app = spawn_app().await;
    let own = app.addr.to_string();
    assert_eq!(
        connect_with(&app, &format!("https://{own}"), &own)
            .await
            .err(),
        Some(403)
    );
}

#[tokio::test]
async fn with_a_public_url_only_that_origin_is_the_servers_own() {
    let app = spawn_app_with(|c| c.public_url = Some("https://chat.example".into())).await;
    let own = app.addr.to_string();
    assert!(
        connect_with(&app, "https://chat.example", "chat.example")
            .await
            .is_ok()
    );
    assert_eq!(
        connect_with(&app, "http://chat.example", "chat.example")
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        connect_with(&app, &format!("http://{own}"), &own)
            .await
            .err(),
        Some(403)
    );
}

#[tokio::test]
async fn a_public_bind_without_a_public_url_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        chatterpro::Config::for_tests(format!("sqlite://{}", dir.path().join("t.db").display()));
    config.addr = "0.0.0.0:0".parse().unwrap();
    let refusal = chatterpro::App::build(config).await.err().expect("refused");
    assert!(refusal.to_string().contains("--public-url"), "{refusal}");
}

/// A GET from `source` (a loopback address other than 127.0.0.1 stands for
/// another client).
async fn get_from(source: &str, url: &str) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    client.get(url).send().await.unwrap()
}

#[tokio::test]
async fn plain_http_requests_are_rate_limited_per_address() {
    let app = spawn_app_with(|c| {
        c.http_rate = std::num::NonZeroU32::new(1).unwrap();
        c.http_burst = std::num::NonZeroU32::new(3).unwrap();
    })
    .await;
    for path in ["/api/rooms", "/healthz", "/"] {
        assert_eq!(get_from("127.0.0.1", &app.http(path)).await.status(), 200);
    }
    let refused = get_from("127.0.0.1", &app.http("/api/rooms")).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    // Another address is served; WebSockets are limited apart.
    assert_eq!(
        get_from("127.0.0.2", &app.http("/api/rooms"))
            .await
            .status(),
        200
    );
    let mut c = app.client().await;
    c.hello("alice").await;
    // The steady rate refills.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        get_from("127.0.0.1", &app.http("/healthz")).await.status(),
        200
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
