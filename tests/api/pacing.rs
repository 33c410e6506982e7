//! Pacing (`--broadcast-window`): a busy room's messages wait out the room's
//! window and go out together — complete, in order, never duplicated, never
//! overtaken by later presence, and never lost at shutdown.

use std::time::Duration;

use chatterpro::protocol::close;
use serde_json::json;

use crate::helpers::{Client, Event, TestApp, spawn_app_with, unlimited};

/// Windows long enough to tell apart from scheduling noise: a room of `n`
/// members waits `n × 200 ms`, at most `WINDOW`.
const WINDOW: Duration = Duration::from_millis(400);

async fn paced_app() -> TestApp {
    spawn_app_with(|c| {
        unlimited(c);
        c.broadcast_per_member = Duration::from_millis(200);
        c.broadcast_window = WINDOW;
    })
    .await
}

/// Two people in the room, the member past the sender's arrival.
async fn member_and_sender(app: &TestApp) -> (Client, Client) {
    let mut member = app.member("member", "Chat Room").await;
    let sender = app.member("sender", "Chat Room").await;
    member.recv_type("presence").await;
    (member, sender)
}

async fn send(client: &mut Client, text: &str) {
    client
        .send_json(json!({"type":"send","room":"Chat Room","text":text}))
        .await;
}

#[tokio::test]
async fn a_quiet_room_delivers_at_once_and_a_busy_one_waits_out_its_window() {
    let app = paced_app().await;
    let (mut member, mut sender) = member_and_sender(&app).await;

    let sent_at = tokio::time::Instant::now();
    send(&mut sender, "first").await;
    assert_eq!(member.recv_type("message").await["text"], "first");
    let first = sent_at.elapsed();
    send(&mut sender, "second").await;
    assert_eq!(member.recv_type("message").await["text"], "second");
    let gap = sent_at.elapsed() - first;
    assert!(first < WINDOW, "a quiet room's message waited {first:?}");
    assert!(
        gap >= WINDOW - Duration::from_millis(100),
        "a message right after another went out after {gap:?}"
    );
}

#[tokio::test]
async fn held_messages_arrive_complete_in_order_before_later_presence() {
    let app = paced_app().await;
    let (mut member, mut sender) = member_and_sender(&app).await;
    let total = 30;
    for i in 0..total {
        send(&mut sender, &format!("m{i}")).await;
    }
    sender.recv_sents(total).await;
    // All but the first are held now; a join must not overtake them.
    let _late = app.member("late", "Chat Room").await;
    let mut texts = Vec::new();
    let mut seqs = Vec::new();
    let presence = loop {
        let v = member.recv().await;
        match v["type"].as_str() {
            Some("message") => {
                texts.push(v["text"].as_str().unwrap().to_owned());
                seqs.push(v["seq"].as_u64().unwrap());
            }
            Some("presence") => break v,
            _ => panic!("unexpected {v}"),
        }
    };
    assert_eq!(
        texts,
        (0..total).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    assert_eq!(presence["event"], "join");
    assert_eq!(presence["user"], "late");
}

#[tokio::test]
async fn a_joiner_gets_held_messages_once_in_its_reply_not_again_live() {
    let app = paced_app().await;
    let mut sender = app.member("sender", "Chat Room").await;
    let mut member = app.member("member", "Chat Room").await;
    sender.recv_type("presence").await;
    sender.say("Chat Room", "one").await;
    // Delivered a moment ago: "two" is held for the room's window.
    send(&mut sender, "two").await;
    sender.recv_type("sent").await;
    let mut joiner = app.client().await;
    joiner.hello("joiner").await;
    let joined = joiner.join("Chat Room").await;
    let texts: Vec<_> = joined["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["one", "two"]);
    // The flush hands "two" to the others, not to the joiner again.
    assert_eq!(member.recv_until("message").await["text"], "one");
    assert_eq!(member.recv_until("message").await["text"], "two");
    joiner
        .expect_silence(WINDOW + Duration::from_millis(200))
        .await;
    send(&mut sender, "three").await;
    let live = joiner.recv_type("message").await;
    assert_eq!(live["text"], "three");
    assert_eq!(live["seq"], 3);
}

#[tokio::test]
async fn shutdown_delivers_what_pacing_holds_before_closing() {
    let mut app = paced_app().await;
    let (mut member, mut sender) = member_and_sender(&app).await;
    send(&mut sender, "first").await;
    send(&mut sender, "held").await;
    sender.recv_sents(2).await;
    let stopping = tokio::spawn(async move { app.stop().await });
    let mut texts = Vec::new();
    let close = loop {
        match member.next_event().await {
            Event::Json(v) if v["type"] == "message" => {
                texts.push(v["text"].as_str().unwrap().to_owned());
            }
            Event::Json(_) => {}
            Event::Closed(frame) => break frame.map(|f| u16::from(f.code)),
        }
    };
    assert_eq!(texts, ["first", "held"]);
    assert_eq!(close, Some(close::GOING_AWAY));
    stopping.await.unwrap();
}
