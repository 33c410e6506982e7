//! The contract every [`Broker`] keeps, as tests generic over the broker.
//! Each implementation runs every function here from its own test module,
//! with a function that makes a fresh broker (see `local.rs`).
//!
//! Delivery may be asynchronous (a remote broker), so the tests wait for
//! what should arrive, and to know that something did *not* arrive they
//! wait for a later event that the broker must deliver after it.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{Broker, Change, Lost, Membership, RoomEvent, ServerId, Subscriber};
use crate::domain::{Message, Nickname, RoomName};

/// How long an event that should come may take.
const WAIT: Duration = Duration::from_secs(10);

/// A subscriber that writes down what it is given, and may take its time.
#[derive(Default)]
struct Recorder {
    /// `(room, label)` in the order received: `"12"` for the message with
    /// seq 12, `"+name"`/`"-name"` for membership.
    seen: Mutex<Vec<(String, String)>>,
    lost: Mutex<u64>,
    /// Time each `receive` takes (a subscriber falling behind).
    delay: Duration,
}

impl Subscriber for Recorder {
    fn receive(&self, events: &[RoomEvent]) {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let mut seen = self.seen.lock().unwrap();
        for event in events {
            let room = event.room().as_str().to_owned();
            match event {
                RoomEvent::Messages(messages) => {
                    seen.extend(messages.iter().map(|m| (room.clone(), m.seq.to_string())));
                }
                RoomEvent::Membership(m) => {
                    let sign = if m.change == Change::Joined { '+' } else { '-' };
                    seen.push((room, format!("{sign}{}", m.person.as_str())));
                }
            }
        }
    }

    fn lagged(&self, lost: Lost) {
        *self.lost.lock().unwrap() += lost.events.unwrap_or(u64::MAX / 2);
    }
}

impl Recorder {
    /// Labels received for `room`, in order.
    fn of(&self, room: &RoomName) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(r, _)| r == room.as_str())
            .map(|(_, label)| label.clone())
            .collect()
    }

    fn count(&self) -> u64 {
        self.seen.lock().unwrap().len() as u64
    }

    async fn until(&self, what: &str, done: impl Fn(&Recorder) -> bool) {
        tokio::time::timeout(WAIT, async {
            while !done(self) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("waited for {what}; seen {:?}", self.seen.lock().unwrap()));
    }
}

/// A broker attached to a fresh recorder, and rooms of names no other run uses.
fn setup<B: Broker>(make: impl Fn() -> B, delay: Duration) -> (B, Arc<Recorder>, Rooms) {
    let broker = make();
    let recorder = Arc::new(Recorder {
        delay,
        ..Recorder::default()
    });
    let weak: Weak<Recorder> = Arc::downgrade(&recorder);
    broker.attach(weak);
    (broker, recorder, Rooms(rand::random::<u32>()))
}

struct Rooms(u32);

impl Rooms {
    fn name(&self, name: &str) -> RoomName {
        RoomName::parse(&format!("{name}-{}", self.0)).unwrap()
    }
}

fn messages(room: &RoomName, seqs: impl IntoIterator<Item = u64>) -> RoomEvent {
    let messages: Vec<Message> = seqs
        .into_iter()
        .map(|seq| Message {
            room: room.clone(),
            id: format!("id-{seq}"),
            seq,
            from: "alice".into(),
            author: None,
            text: format!("text {seq}"),
            at: 0,
        })
        .collect();
    RoomEvent::Messages(messages.into())
}

fn joined(room: &RoomName, person: &str) -> RoomEvent {
    RoomEvent::Membership(Membership {
        room: room.clone(),
        person: Nickname::parse(person).unwrap(),
        change: Change::Joined,
        origin: ServerId::random(),
    })
}

async fn subscribe<B: Broker + ?Sized>(broker: &B, room: &RoomName) {
    broker.subscribe(room);
    broker.subscribed(room).await.expect("subscribed");
}

/// Events of a room arrive in the order they were published, within one
/// publish and across publishes, messages and membership alike, however
/// the rooms interleave.
pub async fn keeps_each_rooms_order<B: Broker>(make: impl Fn() -> B) {
    let (broker, recorder, rooms) = setup(make, Duration::ZERO);
    let (a, b) = (rooms.name("a"), rooms.name("b"));
    subscribe(&broker, &a).await;
    subscribe(&broker, &b).await;
    let (mut want_a, mut want_b) = (Vec::new(), Vec::new());
    for i in 0..50u64 {
        let person = format!("p{i}");
        broker
            .publish(vec![
                messages(&a, [3 * i + 1]),
                messages(&b, [i + 1]),
                messages(&a, [3 * i + 2, 3 * i + 3]),
                joined(&a, &person),
            ])
            .await
            .expect("published");
        want_a.extend([3 * i + 1, 3 * i + 2, 3 * i + 3].map(|s| s.to_string()));
        want_a.push(format!("+{person}"));
        want_b.push((i + 1).to_string());
    }
    recorder.until("every event", |r| r.count() == 250).await;
    assert_eq!(recorder.of(&a), want_a);
    assert_eq!(recorder.of(&b), want_b);
}

/// Only subscribed rooms' events arrive: none of a room never subscribed,
/// none published while unsubscribed, and those published after
/// subscribing again.
pub async fn delivers_only_subscribed_rooms<B: Broker>(make: impl Fn() -> B) {
    let (broker, recorder, rooms) = setup(make, Duration::ZERO);
    let (a, b, c) = (rooms.name("a"), rooms.name("b"), rooms.name("c"));
    subscribe(&broker, &a).await;
    broker
        .publish(vec![messages(&b, [1]), messages(&a, [1])])
        .await
        .unwrap();
    broker.publish(vec![messages(&b, [2])]).await.unwrap();
    broker.publish(vec![messages(&a, [2])]).await.unwrap();
    recorder.until("a's 2", |r| r.of(&a).len() == 2).await;

    broker.unsubscribe(&a);
    broker.publish(vec![messages(&a, [3])]).await.unwrap();
    // c's message is published after a's 3: once it is here, a's 3 would be too.
    subscribe(&broker, &c).await;
    broker.publish(vec![messages(&c, [1])]).await.unwrap();
    recorder.until("c's 1", |r| r.of(&c).len() == 1).await;

    subscribe(&broker, &a).await;
    broker.publish(vec![messages(&a, [4])]).await.unwrap();
    recorder.until("a's 4", |r| r.of(&a).len() == 3).await;
    assert_eq!(recorder.of(&a), ["1", "2", "4"]);
    assert_eq!(recorder.of(&b), Vec::<String>::new());
}

/// A subscriber slower than the publisher: every event published either
/// arrives, in order, or is reported lost through `lagged` — none goes
/// missing without a word.
pub async fn a_slow_subscriber_loses_nothing_unreported<B: Broker>(make: impl Fn() -> B) {
    let (broker, recorder, rooms) = setup(make, Duration::from_millis(2));
    let a = rooms.name("a");
    subscribe(&broker, &a).await;
    let broker = Arc::new(broker);
    // Two events per publish, as fast as the broker takes them.
    const PUBLISHES: u64 = 100;
    let publisher = tokio::spawn({
        let broker = broker.clone();
        let a = a.clone();
        async move {
            for i in 0..PUBLISHES {
                broker
                    .publish(vec![messages(&a, [2 * i + 1]), messages(&a, [2 * i + 2])])
                    .await
                    .unwrap();
            }
        }
    });
    publisher.await.unwrap();
    let total = 2 * PUBLISHES;
    recorder
        .until("every event, or word of it lost", |r| {
            r.count() + *r.lost.lock().unwrap() >= total
        })
        .await;
    // Anything still on its way arrives before a later event.
    let last = rooms.name("last");
    subscribe(&*broker, &last).await;
    broker.publish(vec![messages(&last, [1])]).await.unwrap();
    recorder
        .until("the last event", |r| r.of(&last).len() == 1)
        .await;
    let received: Vec<u64> = recorder.of(&a).iter().map(|s| s.parse().unwrap()).collect();
    let lost = *recorder.lost.lock().unwrap();
    assert_eq!(
        received.len() as u64 + lost,
        total,
        "received + reported lost"
    );
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "in order: {received:?}"
    );
}

/// Healthy while it can deliver to its subscriber; not once the subscriber
/// is gone.
pub async fn reports_its_health<B: Broker>(make: impl Fn() -> B) {
    let (broker, recorder, rooms) = setup(make, Duration::ZERO);
    subscribe(&broker, &rooms.name("a")).await;
    assert_eq!(broker.health(), Ok(()));
    drop(recorder);
    assert!(
        broker.health().is_err(),
        "a broker with nobody to deliver to"
    );
}
