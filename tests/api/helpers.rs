//! Test harness: a real server on port 0 with a temporary database, and a
//! WebSocket client with typed helpers for the protocol.

use std::net::SocketAddr;
use std::time::Duration;

use chatterpro::{App, Config};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame that should come.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/metrics` is served (`--metrics-addr`).
    pub metrics_addr: SocketAddr,
    pub db_url: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    // Kept alive until the test ends; dropped last.
    _dir: Option<tempfile::TempDir>,
}

/// Lifts the rate limits, for tests that send floods on purpose.
pub fn unlimited(config: &mut Config) {
    let many = std::num::NonZeroU32::new(1_000_000).unwrap();
    config.msg_rate = many;
    config.msg_burst = many;
    config.request_rate = many;
    config.request_burst = many;
    config.join_rate = many;
    config.join_burst = many;
    config.rooms_per_ip_per_minute = many;
    config.rejoins_per_minute = many;
    config.room_joins_per_ip_per_minute = many;
    config.conns_per_ip_per_minute = many;
    config.max_conns_per_ip = 100_000;
    config.http_rate = many;
    config.http_burst = many;
    config.served_bytes_per_conn = 1 << 40;
    config.served_bytes_burst_per_conn = 1 << 40;
    config.served_bytes_per_ip = 1 << 40;
    config.served_bytes_burst_per_ip = 1 << 40;
}

/// A server on a fresh temporary database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server on a fresh temporary database, with settings adjusted by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}", dir.path().join("test.db").display());
    let mut app = spawn_app_on(&db_url, tweak).await;
    app._dir = Some(dir);
    app
}

/// A server on an existing database URL (to test restarts).
pub async fn spawn_app_on(db_url: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config::for_tests(db_url);
    tweak(&mut config);
    let app = App::build(config).await.expect("app builds");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));
    TestApp {
        addr,
        metrics_addr,
        db_url: db_url.to_owned(),
        stop: Some(stop_tx),
        handle: Some(handle),
        _dir: None,
    }
}

impl TestApp {
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url())
            .await
            .expect("websocket connects");
        Client { ws }
    }

    /// A client whose socket receive buffer is small and fixed (no kernel
    /// autotuning, which on loopback can absorb tens of megabytes): what a
    /// stalled reader looks like to the server, quickly.
    pub async fn stalled_client(&self) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(32 * 1024).expect("SO_RCVBUF");
        let stream = socket.connect(self.addr).await.expect("tcp connect");
        let (ws, _) = tokio_tungstenite::client_async(self.ws_url(), MaybeTlsStream::Plain(stream))
            .await
            .expect("websocket connects");
        Client { ws }
    }

    /// A client that has said hello as `name`.
    pub async fn user(&self, name: &str) -> Client {
        let mut c = self.client().await;
        c.hello(name).await;
        c
    }

    /// A client that has said hello as `name` and joined `room` (welcome notice consumed).
    pub async fn member(&self, name: &str, room: &str) -> Client {
        let mut c = self.user(name).await;
        c.join(room).await;
        c
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    /// The value of the first `/metrics` line starting with `series`
    /// (e.g. `chatterpro_errors_total{code="not_member"}`), if any.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(self.metrics_url())
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Graceful shutdown, as on SIGTERM; waits until the server has stopped.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server runs");
        }
    }

    /// Takes the temp dir so a restarted server can reuse the database.
    pub fn take_dir(&mut self) -> Option<tempfile::TempDir> {
        self._dir.take()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the next thing on a socket was.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Closed(Option<CloseFrame>),
}

impl Client {
    /// Connects with an explicit `Origin` header; returns the HTTP status on refusal.
    pub async fn connect_with_origin(app: &TestApp, origin: &str) -> Result<Client, u16> {
        let mut request = app.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        Self::try_connect(request).await
    }

    /// Connects; returns the HTTP status if the upgrade is refused.
    pub async fn try_connect(request: impl IntoClientRequest + Unpin) -> Result<Client, u16> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("unexpected connect error: {e}"),
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send frame");
    }

    /// The next frame or close, within [`WAIT`].
    pub async fn next_event(&mut self) -> Event {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Event::Json(serde_json::from_str(&text).expect("server sends JSON"));
                }
                Some(Ok(Message::Close(frame))) => return Event::Closed(frame),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    /// The next JSON message; panics on close.
    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Event::Json(v) => v,
            Event::Closed(frame) => panic!("connection closed: {frame:?}"),
        }
    }

    /// The next message, which must have this type.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], kind, "expected a {kind} message, got {v}");
        v
    }

    /// Skips messages until one of this type arrives.
    pub async fn recv_until(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The next message must be an error with this code.
    pub async fn recv_error(&mut self, code: &str) -> Value {
        let v = self.recv_type("error").await;
        assert_eq!(v["code"], code, "wrong error: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {v}"
        );
        v
    }

    /// Waits for the server to close the connection; returns the close code.
    pub async fn recv_close(&mut self) -> Option<u16> {
        loop {
            match self.next_event().await {
                Event::Closed(frame) => return frame.map(|f| u16::from(f.code)),
                Event::Json(_) => continue,
            }
        }
    }

    /// Asserts nothing but pings arrives for `wait` (reading all along, so
    /// pings are answered).
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Makes sure everything sent so far was handled: a `rooms` round trip.
    pub async fn sync(&mut self) {
        self.send_json(json!({"type":"rooms","ref":"sync"})).await;
        let v = self.recv_type("rooms").await;
        assert_eq!(v["ref"], "sync");
    }

    pub async fn hello(&mut self, name: &str) -> Value {
        self.send_json(json!({"type":"hello","name":name})).await;
        self.recv_type("welcome").await
    }

    /// Joins and consumes the welcome notice; returns `joined`.
    pub async fn join(&mut self, room: &str) -> Value {
        self.send_json(json!({"type":"join","room":room})).await;
        let joined = self.recv_type("joined").await;
        let notice = self.recv_type("notice").await;
        assert_eq!(notice["room"], room);
        joined
    }

    /// Sends a message, waits for its `sent` and its own echo (skipping
    /// anything else on the way); returns the `sent`.
    pub async fn say(&mut self, room: &str, text: &str) -> Value {
        self.send_json(json!({"type":"send","room":room,"text":text}))
            .await;
        let sent = self.recv_until("sent").await;
        loop {
            let echo = self.recv_until("message").await;
            if echo["seq"] == sent["seq"] && echo["room"] == sent["room"] {
                return sent;
            }
        }
    }

    /// Waits for `n` `sent` acknowledgements (skipping anything else on the
    /// way); returns their seqs in arrival order.
    pub async fn recv_sents(&mut self, n: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(n);
        while seqs.len() < n {
            let v = self.recv_until("sent").await;
            seqs.push(v["seq"].as_u64().expect("sent carries its seq"));
        }
        seqs
    }

    /// Reads until presence frames have announced everyone in `arrived` as
    /// present and everyone in `gone` as gone (skipping anything else):
    /// however the server grouped the changes into frames.
    pub async fn recv_presence_of(&mut self, arrived: &[&str], gone: &[&str]) {
        let mut present = Vec::new();
        let mut went = Vec::new();
        while !(arrived.iter().all(|a| present.iter().any(|p| p == a))
            && gone.iter().all(|g| went.iter().any(|w| w == g)))
        {
            let v = self.recv_until("presence").await;
            for name in v["left"].as_array().expect("left") {
                present.retain(|p| p != name);
                went.push(name.clone());
            }
            for name in v["joined"].as_array().expect("joined") {
                present.push(name.clone());
                went.retain(|w| w != name);
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Applies a `presence` frame to a users list: `left` go, then `joined`
/// come; the list stays sorted case-insensitively, as the server sorts it.
pub fn apply_presence(users: &mut Vec<String>, presence: &Value) {
    let names = |field: &str| -> Vec<String> {
        presence[field]
            .as_array()
            .unwrap_or_else(|| panic!("presence without {field}: {presence}"))
            .iter()
            .map(|u| u.as_str().expect("names are strings").to_owned())
            .collect()
    };
    let left = names("left");
    users.retain(|u| !left.contains(u));
    for name in names("joined") {
        if !users.contains(&name) {
            users.push(name);
        }
    }
    users.sort_by_key(|u| u.to_lowercase());
}

/// The `text` fields of a list of message objects.
/// The seqs of a `messages` array, in order.
pub fn seqs(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .expect("an array of messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

pub fn texts(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .expect("an array of messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_owned())
        .collect()
}
