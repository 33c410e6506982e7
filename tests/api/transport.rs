//! How the server closes connections: binary frames, oversize frames, slow
//! consumers, shutdown — and that nothing rejected is stored or forwarded.

use std::time::Duration;

use chatterpro::protocol::close;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use futures_util::SinkExt;

use crate::helpers::{seqs, spawn_app, spawn_app_with, texts, unlimited};

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let app = spawn_app().await;
    let mut watcher = app.member("watcher", "Chat Room").await;
    let mut c = app.member("alice", "Chat Room").await;
    watcher.recv_type("presence").await;
    c.ws.send(Message::Binary(
        br#"{"type":"send","room":"Chat Room","text":"x"}"#.to_vec().into(),
    ))
    .await
    .unwrap();
    assert_eq!(c.recv_close().await, Some(close::UNSUPPORTED_DATA));
    // Alice left; her binary "message" went nowhere.
    let p = watcher.recv_type("presence").await;
    assert_eq!(p["event"], "leave");
    watcher
        .send_json(json!({"type":"history","room":"Chat Room"}))
        .await;
    assert_eq!(watcher.recv_type("history").await["messages"], json!([]));
}

#[tokio::test]
async fn frames_over_64_kib_close_with_1009_and_are_not_stored() {
    let app = spawn_app().await;
    let mut watcher = app.member("watcher", "Chat Room").await;
    let mut c = app.member("alice", "Chat Room").await;
    watcher.recv_type("presence").await;
    let text = "x".repeat(70 * 1024);
    c.send_json(json!({"type":"send","room":"Chat Room","text":text}))
        .await;
    assert_eq!(c.recv_close().await, Some(close::TOO_BIG));
    assert_eq!(watcher.recv_type("presence").await["event"], "leave");
    watcher
        .send_json(json!({"type":"history","room":"Chat Room"}))
        .await;
    assert_eq!(watcher.recv_type("history").await["messages"], json!([]));
}

#[tokio::test]
async fn a_frame_just_under_64_kib_is_read_and_judged_by_the_text_limit() {
    let app = spawn_app().await;
    let mut c = app.member("alice", "Chat Room").await;
    let text = "x".repeat(60 * 1024);
    c.send_json(json!({"type":"send","room":"Chat Room","text":text}))
        .await;
    c.recv_error("too_large").await;
    c.sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_1013_and_others_are_unaffected() {
    // A batch commit fans out up to `write_batch` frames at once, so an
    // honest reader needs an outbox at least that deep.
    let app = spawn_app_with(|c| {
        unlimited(c);
        c.outbox_capacity = 256;
        c.write_batch = 16;
    })
    .await;
    let mut reader = app.member("reader", "Chat Room").await;
    let mut sender = app.member("sender", "Chat Room").await;
    let mut stalled = app.stalled_client().await;
    let session = stalled.hello("stalled").await["session"].clone();
    stalled.join("Chat Room").await;
    reader.recv_presence_of(&["sender", "stalled"], &[]).await;
    sender.recv_presence_of(&["stalled"], &[]).await;

    // ~12 MB of messages: far more than the stalled client's 32 KiB receive
    // buffer, the server's send buffer (at most 4 MiB here) and its
    // 256-frame outbox can hold.
    let text = "z".repeat(3900);
    let total = 3000;
    use futures_util::StreamExt;
    let (mut sender_tx, mut sender_rx) = sender.ws.split();
    // The honest clients read as they go: the flood stays at most 64
    // messages ahead of the slower of them, so only the stalled client can
    // fill its outbox (the sender gets two frames per message, `sent` and
    // the message itself).
    let reader_seen = std::cell::Cell::new(0);
    let sender_seen = std::cell::Cell::new(0);
    let flood = async {
        for i in 0..total {
            while i > reader_seen.get().min(sender_seen.get()) + 64 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let frame = json!({"type":"send","room":"Chat Room","text":format!("{i} {text}")});
            sender_tx
                .send(Message::Text(frame.to_string().into()))
                .await
                .unwrap();
        }
    };
    let (left_tx, left_rx) = tokio::sync::oneshot::channel();
    let read_all = async {
        let mut seen = 0;
        let mut left = Vec::new();
        let mut left_tx = Some(left_tx);
        while seen < total || left.is_empty() {
            let v = reader.recv().await;
            if v["type"] == "message" {
                assert_eq!(v["seq"], seen + 1, "reader saw messages out of order");
                seen += 1;
                reader_seen.set(seen);
            } else if v["type"] == "presence" {
                assert_eq!(v["event"], "leave");
                left.push(v["user"].as_str().unwrap().to_owned());
                if let Some(tx) = left_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
        left
    };
    // Once the server has given up on the stalled client, it reads again:
    // whatever was buffered, then the 1013 close.
    let stalled_wakes = async {
        left_rx.await.expect("the stalled client was dropped");
        stalled.recv_close().await
    };
    let drain_sender = async {
        let mut seen = 0;
        while seen < total {
            if let Some(Ok(Message::Text(t))) = sender_rx.next().await
                && t.contains(r#""type":"message""#)
            {
                seen += 1;
                sender_seen.set(seen);
            }
        }
    };
    let ((), left, (), close) = tokio::join!(flood, read_all, drain_sender, stalled_wakes);
    // The stalled client left the room for the others, and only it did.
    assert_eq!(left, ["stalled"]);
    assert_eq!(close, Some(close::TRY_AGAIN_LATER));

    // And it can come back (its name is held for its token) and resume without loss.
    let mut back = app.client().await;
    back.send_json(json!({"type":"hello","name":"stalled","session":session}))
        .await;
    back.recv_type("welcome").await;
    back.send_json(json!({"type":"join","room":"Chat Room","since":total - 10}))
        .await;
    let joined = back.recv_type("joined").await;
    assert_eq!(joined["messages"].as_array().unwrap().len(), 10);
    assert_eq!(joined["last_seq"], total);
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001_after_storing_what_was_acknowledged() {
    let mut app = spawn_app_with(unlimited).await;
    let mut alice = app.member("alice", "Chat Room").await;
    for i in 0..100 {
        alice
            .send_json(json!({"type":"send","room":"Chat Room","text":format!("m{i}")}))
            .await;
    }
    // Wait for a few acknowledgements, then stop mid-stream.
    let mut acked = Vec::new();
    while acked.len() < 5 {
        let v = alice.recv().await;
        if v["type"] == "sent" {
            acked.push(v["seq"].as_u64().unwrap());
        }
    }
    let dir = app.take_dir();
    let db_url = app.db_url.clone();
    let stopping = tokio::spawn(async move {
        app.stop().await;
    });
    loop {
        match alice.next_event().await {
            crate::helpers::Event::Json(v) => {
                if v["type"] == "sent" {
                    acked.push(v["seq"].as_u64().unwrap());
                }
            }
            crate::helpers::Event::Closed(frame) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(close::GOING_AWAY));
                break;
            }
        }
    }
    stopping.await.unwrap();

    // Every acknowledged message is in storage after a restart.
    let app = crate::helpers::spawn_app_on(&db_url, |_| {}).await;
    let mut check = app.user("checker").await;
    check
        .send_json(json!({"type":"join","room":"Chat Room","since":0}))
        .await;
    let joined = check.recv_type("joined").await;
    let stored: Vec<u64> = seqs(&joined["messages"]);
    for seq in &acked {
        assert!(stored.contains(seq), "acknowledged seq {seq} was lost");
    }
    // Seqs are contiguous from 1.
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>());
    assert_eq!(texts(&joined["messages"])[0], "m0");
    drop(dir);
}

#[tokio::test]
async fn pings_are_answered() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    c.ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        use futures_util::StreamExt;
        loop {
            if let Some(Ok(Message::Pong(p))) = c.ws.next().await {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"are you there");
}

/// Regression: shutdown used to flush only 64 queued frames before closing.
#[tokio::test]
async fn shutdown_flushes_the_whole_outbox_before_closing() {
    let mut app = spawn_app_with(unlimited).await;
    let mut sender = app.member("sender", "Chat Room").await;
    let mut slow = app.stalled_client().await;
    slow.hello("slow").await;
    slow.join("Chat Room").await;
    sender.recv_type("presence").await;
    let total = 700;
    let text = "q".repeat(300);
    for i in 0..total {
        sender
            .send_json(json!({"type":"send","room":"Chat Room","text":format!("{i} {text}")}))
            .await;
    }
    let mut acked = 0;
    while acked < total {
        if sender.recv().await["type"] == "sent" {
            acked += 1;
        }
    }
    // ~200 KB are queued for `slow`, far more than its socket takes.
    let stopping = tokio::spawn(async move { app.stop().await });
    let mut seqs = Vec::new();
    let close = loop {
        match slow.next_event().await {
            crate::helpers::Event::Json(v) => {
                if v["type"] == "message" {
                    seqs.push(v["seq"].as_u64().unwrap());
                }
            }
            crate::helpers::Event::Closed(frame) => break frame.map(|f| u16::from(f.code)),
        }
    };
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    assert_eq!(close, Some(close::GOING_AWAY));
    stopping.await.unwrap();
}

/// Regression: the outbox was bounded in frames only, so large replies
/// (`history`) requested without reading could pin hundreds of megabytes.
#[tokio::test]
async fn large_replies_requested_without_reading_hit_the_byte_budget() {
    let app = spawn_app_with(|c| {
        unlimited(c);
        c.outbox_bytes = 1024 * 1024;
    })
    .await;
    let mut writer = app.member("writer", "Chat Room").await;
    let text = "h".repeat(3000);
    for _ in 0..200 {
        writer
            .send_json(json!({"type":"send","room":"Chat Room","text":text}))
            .await;
    }
    let mut acked = 0;
    while acked < 200 {
        if writer.recv().await["type"] == "sent" {
            acked += 1;
        }
    }
    let mut hoarder = app.stalled_client().await;
    hoarder.hello("hoarder").await;
    hoarder.join("Chat Room").await;
    // Each reply is ~600 KB; 20 of them are more than the socket buffers
    // (a few MB on loopback) plus the 1 MiB budget.
    for _ in 0..20 {
        hoarder
            .send_json(json!({"type":"history","room":"Chat Room","limit":200}))
            .await;
    }
    // The server gives up on it (counted when it decides, whatever the
    // client reads later)...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app
        .metric(&format!(
            "chatterpro_server_closes_total{{code=\"{}\"}}",
            close::TRY_AGAIN_LATER
        ))
        .await
        != Some(1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hoarder was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the client, reading at last, finds the connection closed: with
    // 1013 if it read in time to take the close frame, else without one.
    let close = hoarder.recv_close().await;
    assert!(
        matches!(close, Some(close::TRY_AGAIN_LATER) | None),
        "{close:?}"
    );
}

/// Regression (#14): a slow consumer closed with 1013 lost the `sent` of
/// messages the server had accepted and stored — its queue was cut off at
/// once, answers included — so its client could not tell what to resend.
/// Here its `sent`s are queued behind ~2,000 room frames it does not read;
/// once cut off, it reads what is left and finds each of them before the
/// close frame (and none of the room frames queued after its socket filled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_closed_with_1013_first_gets_the_sent_of_what_it_sent() {
    use std::cell::{Cell, RefCell};

    use futures_util::StreamExt;

    let app = spawn_app_with(|c| {
        unlimited(c);
        c.outbox_capacity = 2048;
        c.outbox_bytes = 64 << 20;
        c.write_batch = 16;
        c.ping_interval = Duration::from_secs(60);
    })
    .await;
    let mut reader = app.member("reader", "Chat Room").await;
    let mut sender = app.member("sender", "Chat Room").await;
    let mut stalled = app.stalled_client().await;
    stalled.hello("stalled").await;
    stalled.join("Chat Room").await;
    reader.recv_presence_of(&["sender", "stalled"], &[]).await;
    sender.recv_presence_of(&["stalled"], &[]).await;

    // From here `stalled` reads nothing until it is cut off. The first
    // flood (~6.6 MB) is more than its socket buffers take (its 32 KiB and
    // the server's at most 4 MiB) plus one write of the socket writer (256
    // frames), less than its 2,048-frame outbox: its `sent`s then wait in
    // the queue, behind room frames.
    let text = "z".repeat(3900);
    let first_flood = 1700;
    let (mut sender_tx, mut sender_rx) = sender.ws.split();
    let reader_seen = Cell::new(0);
    let sender_seen = Cell::new(0);
    let flooded = Cell::new(None);
    let stalled_seqs = RefCell::new(Vec::new());
    let stalled_left = Cell::new(false);
    let mine = 5;
    let drive = async {
        let mut sent = 0;
        let mut flood_until = async |sent: &mut u64, done: &dyn Fn(u64) -> bool| {
            while !done(*sent) {
                // The honest clients read as they go (at most 64 behind).
                if *sent > reader_seen.get().min(sender_seen.get()) + 64 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let frame =
                    json!({"type":"send","room":"Chat Room","text":format!("{sent} {text}")});
                sender_tx
                    .send(Message::Text(frame.to_string().into()))
                    .await
                    .unwrap();
                *sent += 1;
            }
        };
        flood_until(&mut sent, &|sent| sent == first_flood).await;
        while reader_seen.get() < first_flood {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for k in 0..mine {
            stalled
                .send_json(json!({"type":"send","room":"Chat Room","text":format!("mine {k}")}))
                .await;
        }
        while stalled_seqs.borrow().len() < mine {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The second flood overflows its outbox: it is closed with 1013.
        flood_until(&mut sent, &|sent| stalled_left.get() || sent > 8000).await;
        assert!(stalled_left.get(), "the stalled client was never cut off");
        flooded.set(Some(sent + mine as u64));
        // Cut off: it reads what is left on its socket.
        let mut sents = Vec::new();
        let close = loop {
            match stalled.next_event().await {
                crate::helpers::Event::Json(v) if v["type"] == "sent" => {
                    sents.push(v["seq"].as_u64().unwrap());
                }
                crate::helpers::Event::Json(_) => {}
                crate::helpers::Event::Closed(frame) => break frame.map(|f| u16::from(f.code)),
            }
        };
        (sents, close)
    };
    let read_all = async {
        loop {
            if flooded
                .get()
                .is_some_and(|total| reader_seen.get() >= total)
            {
                break;
            }
            let v = reader.recv().await;
            if v["type"] == "message" {
                assert_eq!(v["seq"], reader_seen.get() + 1, "out of order");
                reader_seen.set(reader_seen.get() + 1);
                if v["from"] == "stalled" {
                    stalled_seqs.borrow_mut().push(v["seq"].as_u64().unwrap());
                }
            } else if v["type"] == "presence"
                && v["left"].as_array().unwrap().iter().any(|n| n == "stalled")
            {
                stalled_left.set(true);
            }
        }
    };
    let drain_sender = async {
        loop {
            if flooded
                .get()
                .is_some_and(|total| sender_seen.get() >= total)
            {
                break;
            }
            let next = tokio::time::timeout(Duration::from_secs(30), sender_rx.next()).await;
            if let Ok(Some(Ok(Message::Text(t)))) = next
                && t.contains(r#""type":"message""#)
            {
                sender_seen.set(sender_seen.get() + 1);
            }
        }
    };
    let ((sents, close), (), ()) = tokio::join!(drive, read_all, drain_sender);
    assert_eq!(close, Some(close::TRY_AGAIN_LATER));
    // What was stored of its messages, as history has it.
    let stored = stalled_seqs.into_inner();
    let before = stored.last().unwrap() + 1;
    let mut check = app.member("check", "Chat Room").await;
    check
        .send_json(json!({"type":"history","room":"Chat Room","before":before,"limit":200}))
        .await;
    let history = check.recv_until("history").await;
    let in_history: Vec<u64> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["from"] == "stalled")
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(in_history, stored);
    assert_eq!(sents, stored, "the `sent`s it read before the close frame");
}
