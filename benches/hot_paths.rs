//! Micro-benchmarks of the per-message hot paths: decoding and validating a
//! request, encoding a broadcast once, and fanning a frame out to 1,000
//! members' outboxes. `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::sync::Arc;

use chatterpro::broker::{LocalBroker, RoomEvent, Subscriber};
use chatterpro::domain::{Message, MessageText, Nickname, RoomName};
use chatterpro::hub::{Delivery, Pacing, PreparedCatchUp, Registry};
use chatterpro::metrics::Metrics;
use chatterpro::outbox::{Frame, Outbox, Peer, SocketWrites};
use chatterpro::protocol::{self, ChatMessage, ClientMsg, EncodedMessages};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const SEND: &str = r#"{"type":"send","room":"Chat Room","text":"hello everyone, how is it going today?","ref":42}"#;

fn decode_and_validate(c: &mut Criterion) {
    c.bench_function("decode + validate a send", |b| {
        b.iter(|| {
            let request = protocol::decode(black_box(SEND)).unwrap();
            let ClientMsg::Send { room, text, .. } = request.msg else {
                unreachable!()
            };
            (
                RoomName::parse(&room).unwrap(),
                MessageText::parse(&text).unwrap(),
            )
        })
    });
}

fn message() -> ChatMessage {
    ChatMessage {
        room: "Chat Room".into(),
        id: "0193a5b2-7c1d-7e00-8000-000000000001".into(),
        seq: 123_456,
        from: "alice".into(),
        author: Some(4_503_599_627_370_495),
        text: "hello everyone, how is it going today?".into(),
        ts: 1_764_111_111_111,
    }
}

fn encode_broadcast(c: &mut Criterion) {
    c.bench_function("encode a broadcast once", |b| {
        b.iter_batched(
            message,
            |m| {
                // As the writer does: serialized once (kept for joins), then
                // framed for the broadcast.
                let encoded = protocol::EncodedMessage::new(&m);
                Frame::message(protocol::encode_message(&encoded), m.seq)
            },
            BatchSize::SmallInput,
        )
    });
}

fn fanout(c: &mut Criterion) {
    const MEMBERS: usize = 1000;
    // Pacing off: this measures encoding one message (once) and handing
    // its frame to every member, as a server receiving it from the broker does.
    let metrics = Arc::new(Metrics::new());
    let (handoff, _publications) = chatterpro::hub::handoff(8, metrics.clone());
    let registry = Registry::new(
        metrics,
        Delivery {
            pacing: Pacing::OFF,
            writes: SocketWrites::OneByOne,
        },
        100,
        Arc::new(LocalBroker::new()),
        handoff,
    );
    let room = RoomName::parse("Big Room").unwrap();
    let mut outboxes = Vec::with_capacity(MEMBERS);
    for i in 0..MEMBERS {
        let outbox = Arc::new(Outbox::new(1024, usize::MAX / 2));
        let peer = Peer::new(outbox.clone());
        let name = Nickname::parse(&format!("member{i}")).unwrap();
        registry.begin_join(&room, &peer, &name);
        registry.finish_join(
            &room,
            peer.id(),
            PreparedCatchUp {
                messages: EncodedMessages::encode::<ChatMessage>(&[]),
                last_seq: 0,
                truncated: false,
            },
            "welcome",
            None,
        );
        outboxes.push((peer, outbox));
    }
    // Empty the outboxes of join replies and presence.
    for (_, outbox) in &outboxes {
        let (taken, _) = outbox.take(usize::MAX);
        outbox.written(taken.iter().map(Frame::len).sum());
    }
    let mut seq = 1;
    let mut group = c.benchmark_group("fan-out");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    group.bench_function("one message to 1,000 outboxes", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = std::time::Duration::ZERO;
            for _ in 0..iters {
                let m = message();
                let events = [RoomEvent::Messages(Arc::from([Message {
                    room: room.clone(),
                    id: m.id,
                    seq,
                    from: m.from,
                    author: None,
                    text: m.text,
                    at: m.ts,
                }]))];
                seq += 1;
                let start = std::time::Instant::now();
                registry.receive(&events);
                elapsed += start.elapsed();
                // Drain outside the timed part, as the connections' writers would.
                for (_, outbox) in &outboxes {
                    let (taken, _) = outbox.take(usize::MAX);
                    outbox.written(taken.iter().map(Frame::len).sum());
                }
            }
            elapsed
        })
    });
    group.finish();
}

fn name_keys(c: &mut Criterion) {
    // Once per hello: the name parsed (NFC, character rules, the bot's
    // look-alikes) and its two look-alike keys (UTS #39 skeletons).
    c.bench_function("parse a nickname and its look-alike keys", |b| {
        b.iter(|| {
            let name = Nickname::parse(black_box("Zoë Martín-López")).unwrap();
            (name.key(), name.shape())
        })
    });
}

criterion_group!(
    benches,
    decode_and_validate,
    encode_broadcast,
    fanout,
    name_keys
);
criterion_main!(benches);
