//! Sends with a nonce: a message whose `sent` was lost (the connection
//! dropped between `send` and `sent`) is resent with its nonce and stored
//! once; a connection closed on purpose gets its accepted sends' `sent`
//! before the close frame.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use chatterpro::protocol::close;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Client, Event, TestApp, spawn_app, spawn_app_with, texts, unlimited};

const ROOM: &str = "Chat Room";

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A TCP proxy for one WebSocket connection to `upstream` that forwards
/// the client's frames until its `cut_at`-th (counting from 1 after the
/// handshake) and cuts both sides then: that frame reaches the server,
/// nothing the server sends after it reaches the client — the connection
/// dropped between a `send` and its `sent`. Returns the proxy's address.
async fn cutting_proxy(upstream: SocketAddr, cut_at: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(upstream).await.unwrap();
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut server_rx, mut server_tx) = server.into_split();
        // Server to client: copied as it comes, until the cut.
        let downstream = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
        });
        // Client to server: the handshake as it comes, then frame by frame.
        let mut buf = Vec::new();
        let mut handshake_done = false;
        let mut frames = 0;
        loop {
            let mut chunk = [0u8; 4096];
            let n = client_rx.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            if !handshake_done {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                server_tx.write_all(&buf[..end + 4]).await.unwrap();
                buf.drain(..end + 4);
                handshake_done = true;
            }
            while let Some(len) = frame_len(&buf) {
                frames += 1;
                if frames == cut_at {
                    // Nothing more reaches the client, from before or after.
                    downstream.abort();
                    server_tx.write_all(&buf[..len]).await.unwrap();
                    // FIN after the frame: the server reads it, then the end.
                    server_tx.shutdown().await.unwrap();
                    return;
                }
                server_tx.write_all(&buf[..len]).await.unwrap();
                buf.drain(..len);
            }
        }
    });
    addr
}

/// The length of the complete (masked, client-to-server) WebSocket frame at
/// the start of `buf`, if it is all there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 2 {
        return None;
    }
    let mask = if buf[1] & 0x80 != 0 { 4 } else { 0 };
    let (header, payload) = match buf[1] & 0x7f {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (2, n as usize),
    };
    let len = header + mask + payload;
    (buf.len() >= len).then_some(len)
}

/// A client connected through `proxy`, as if to `app`.
async fn client_via(app: &TestApp, proxy: SocketAddr) -> Client {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        app.ws_url(),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("websocket connects through the proxy");
    Client { ws }
}

/// The room's stored messages, oldest first (up to 200).
async fn history(c: &mut Client) -> Value {
    c.send_json(json!({"type":"history","room":ROOM,"limit":200}))
        .await;
    c.recv_until("history").await["messages"].clone()
}

/// Everything until the connection ends: the types of the frames received,
/// and the close code.
async fn frames_until_closed(c: &mut Client) -> (Vec<Value>, Option<u16>) {
    let mut frames = Vec::new();
    loop {
        match c.next_event().await {
            Event::Json(v) => frames.push(v),
            Event::Closed(frame) => return (frames, frame.map(|f| u16::from(f.code))),
        }
    }
}

/// Fails if a `message` arrives within `wait` (other frames are fine).
async fn assert_no_message_within(c: &mut Client, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(event) = tokio::time::timeout_at(deadline, c.next_event()).await {
        if let Event::Json(v) = event {
            assert_ne!(v["type"], "message", "published again: {v}");
        }
    }
}

fn of_type<'a>(frames: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames.iter().filter(|v| v["type"] == kind).collect()
}

/// The attack of issue 11: the connection drops after the `send` reached
/// the server and before its `sent` came back. The message is stored; the
/// client cannot know. Resending it with its nonce returns the original
/// `sent` (same id, seq, ts) and stores nothing: exactly one copy.
#[tokio::test]
async fn a_resend_after_the_sent_was_lost_is_stored_once() {
    let app = spawn_app().await;
    let mut watcher = app.member("watcher", ROOM).await;
    // hello, join, send: the cut comes after the third frame.
    let proxy = cutting_proxy(app.addr, 3).await;
    let mut alice = client_via(&app, proxy).await;
    let welcome = alice.hello("alice").await;
    alice.join(ROOM).await;
    let nonce = "0192f1c2-7a3b-7c4d-8e5f-60718293a4b5";
    let send = json!({"type":"send","room":ROOM,"text":"typed just before the drop","nonce":nonce});
    alice.send_json(send.clone()).await;
    let (frames, _) = frames_until_closed(&mut alice).await;
    assert!(
        of_type(&frames, "sent").is_empty(),
        "the proxy let a sent through: {frames:?}"
    );
    // Stored all the same: the other member got it.
    let original = watcher.recv_until("message").await;
    assert_eq!(original["text"], "typed just before the drop");

    // The page reconnects (reclaiming its name) and resends with the nonce.
    let mut alice = app.client().await;
    alice
        .send_json(json!({"type":"hello","name":"alice","session":welcome["session"]}))
        .await;
    alice.recv_type("welcome").await;
    alice.join(ROOM).await;
    let mut resend = send;
    resend["ref"] = json!(7);
    alice.send_json(resend).await;
    let sent = alice.recv_until("sent").await;
    assert_eq!(sent["ref"], 7);
    for field in ["room", "id", "seq", "ts"] {
        assert_eq!(sent[field], original[field], "the original's {field}");
    }
    // Nothing was published again, and one copy is stored.
    assert_no_message_within(&mut watcher, Duration::from_millis(300)).await;
    let stored = history(&mut watcher).await;
    assert_eq!(texts(&stored), ["typed just before the drop"]);
}

/// Two copies of one nonce in flight at once — back to back on one
/// connection, and from a second connection of the same person — store one
/// message; every copy is answered with its `sent`.
#[tokio::test]
async fn copies_of_a_nonce_in_flight_at_once_store_one() {
    let app = spawn_app_with(unlimited).await;
    let mut alice = app.member("alice", ROOM).await;
    let welcome = alice.hello("alice").await;
    let mut again = app.client().await;
    again
        .send_json(json!({"type":"hello","name":"alice","session":welcome["session"]}))
        .await;
    again.recv_type("welcome").await;
    again.join(ROOM).await;
    let send = json!({"type":"send","room":ROOM,"text":"once","nonce":"n-1"});
    // One TCP write on the first connection, the other right behind it.
    for _ in 0..3 {
        alice
            .ws
            .feed(Message::Text(send.to_string().into()))
            .await
            .unwrap();
    }
    alice.ws.flush().await.unwrap();
    again.send_json(send.clone()).await;
    let mut receipts = Vec::new();
    for _ in 0..3 {
        receipts.push(alice.recv_until("sent").await);
    }
    receipts.push(again.recv_until("sent").await);
    let key = |v: &Value| (v["id"].clone(), v["seq"].clone(), v["ts"].clone());
    assert!(
        receipts.iter().all(|r| key(r) == key(&receipts[0])),
        "{receipts:?}"
    );
    assert_eq!(texts(&history(&mut alice).await), ["once"]);
}

/// A nonce is the sender's: someone else's send with the same nonce is
/// another message.
#[tokio::test]
async fn the_same_nonce_from_someone_else_is_another_message() {
    let app = spawn_app().await;
    let mut alice = app.member("alice", ROOM).await;
    let mut bob = app.member("bob", ROOM).await;
    for c in [&mut alice, &mut bob] {
        c.send_json(json!({"type":"send","room":ROOM,"text":"hi","nonce":"same"}))
            .await;
        c.recv_until("sent").await;
    }
    assert_eq!(texts(&history(&mut alice).await), ["hi", "hi"]);
}

/// A malformed nonce is refused with bad_request, and nothing is stored.
#[tokio::test]
async fn a_malformed_nonce_is_a_bad_request() {
    let app = spawn_app().await;
    let mut alice = app.member("alice", ROOM).await;
    for nonce in [
        json!(""),
        json!("n".repeat(65)),
        json!("has space"),
        json!("ünï"),
        json!(42),
        json!({"a": 1}),
    ] {
        alice
            .send_json(json!({"type":"send","room":ROOM,"text":"x","nonce":nonce,"ref":"n"}))
            .await;
        let error = alice.recv_error("bad_request").await;
        assert_eq!(error["ref"], "n", "{nonce}");
    }
    // At the limit, and absent: fine.
    alice
        .send_json(json!({"type":"send","room":ROOM,"text":"x","nonce":"n".repeat(64)}))
        .await;
    alice.recv_until("sent").await;
    alice.say(ROOM, "y").await;
    assert_eq!(texts(&history(&mut alice).await), ["x", "y"]);
}

/// The 1008 burst of issue 11: a client that ignores retry_after is closed,
/// and before the close frame it gets the `sent` of every send the server
/// accepted — the close does not overtake their commit.
#[tokio::test]
async fn a_client_closed_for_abuse_gets_its_accepted_sends_sent_first() {
    let app = spawn_app_with(|c| {
        c.msg_rate = nz(1);
        c.msg_burst = nz(100);
        c.abuse_strikes = nz(1);
        c.request_rate = nz(1_000_000);
        c.request_burst = nz(1_000_000);
    })
    .await;
    let mut spammer = app.member("spammer", ROOM).await;
    // One burst, in one write: 100 accepted, then refusals until the close.
    for i in 0..130 {
        let send = json!({"type":"send","room":ROOM,"text":format!("burst {i}")});
        spammer
            .ws
            .feed(Message::Text(send.to_string().into()))
            .await
            .unwrap();
    }
    spammer.ws.flush().await.unwrap();
    let (frames, code) = frames_until_closed(&mut spammer).await;
    assert_eq!(code, Some(close::POLICY_VIOLATION));
    let mut watcher = app.member("watcher", ROOM).await;
    let stored = history(&mut watcher).await;
    assert_eq!(stored.as_array().unwrap().len(), 100);
    let sent: Vec<&Value> = of_type(&frames, "sent");
    assert_eq!(
        sent.len(),
        100,
        "every stored send was acknowledged before the close frame"
    );
    let sent_seqs: Vec<u64> = sent.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(sent_seqs, crate::helpers::seqs(&stored));
}

/// On shutdown (1001) a connection gets the `sent` of what it sent before
/// the server stopped taking sends, then the close frame.
#[tokio::test]
async fn a_shutdown_delivers_the_sent_of_accepted_sends_before_1001() {
    let mut app = spawn_app_with(unlimited).await;
    let mut alice = app.member("alice", ROOM).await;
    for i in 0..50 {
        let send = json!({"type":"send","room":ROOM,"text":format!("m{i}")});
        alice
            .ws
            .feed(Message::Text(send.to_string().into()))
            .await
            .unwrap();
    }
    alice.ws.flush().await.unwrap();
    // Stop as soon as the first is acknowledged: most are still in flight.
    alice.recv_until("sent").await;
    let stopping = tokio::spawn(async move {
        app.stop().await;
        app
    });
    let (frames, code) = frames_until_closed(&mut alice).await;
    assert_eq!(code, Some(close::GOING_AWAY));
    let answers = 1 + of_type(&frames, "sent").len() + of_type(&frames, "error").len();
    assert_eq!(
        answers, 50,
        "every send answered before the close: {frames:?}"
    );
    let app = stopping.await.unwrap();
    drop(app);
}
