//! Who is in which room on this server, and what reaches them. (Who holds
//! which name is `identity`'s.) One concern per file:
//!
//! - `membership`: members and the people they are — local connections
//!   and people on other servers (from the broker's membership events) —
//!   leaving and disconnecting, and presence announcements;
//! - `gate`: joining — live frames held back for a joiner until its
//!   `joined` reply is out, so that reply plus the live stream has no gap
//!   and no repeat;
//! - `pacing`: a busy room's messages held back to go out together, and
//!   the timers that flush them;
//! - `delivery`: the receiving end of the broker — each event encoded once
//!   per room, recorded in the recent-messages tail, queued to the members.
//!
//! One `std::sync::Mutex` guards it all. Sections are short and never await,
//! and one lock keeps the invariants simple: a room's people list always
//! matches its connections, frames go out in the order the changes
//! happened (they are queued under the same lock), and the broker hears
//! about rooms this server needs (first join) and no longer needs (last
//! leave) in the order those happened. Socket writes never happen under
//! it: frames are queued to each member's outbox under the lock and written
//! once it is released ([`Peer::queue`], [`Peer::write_queued`]); whoever
//! writes takes the outbox's frames in queue order, so order is kept.

mod delivery;
mod gate;
mod membership;
mod pacing;

pub use gate::PreparedCatchUp;
pub use pacing::Pacing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use super::presence::RoomPresence;
use super::publish::Handoff;
use super::recent::RecentMessages;
use crate::broker::{Broker, ServerId, Subscriber};
use crate::domain::{Nickname, RoomName};
use crate::metrics::Metrics;
use crate::outbox::{self, ConnId, Frame, Peer, SocketWrites};
use gate::Gate;

/// How the registry delivers (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub pacing: Pacing,
    pub writes: SocketWrites,
}

pub struct Registry {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    pacing: Pacing,
    writes: SocketWrites,
    /// Told which rooms this server needs, under the lock.
    broker: Arc<dyn Broker>,
    /// Where membership changes go to be published, under the lock.
    handoff: Handoff,
    /// This server, as membership events name it.
    server: ServerId,
    /// Newest messages of subscribed rooms, fed by [`delivery`].
    recent: Arc<RecentMessages>,
    /// Itself, for the tasks that flush held frames.
    me: Weak<Registry>,
}

#[derive(Default)]
struct State {
    /// Rooms each connection is in, to leave them all on disconnect.
    conns: HashMap<ConnId, HashSet<RoomName>>,
    /// Rooms with at least one local member; empty rooms are dropped.
    rooms: HashMap<RoomName, Room>,
}

#[derive(Default)]
struct Room {
    members: HashMap<ConnId, Member>,
    /// Distinct people in the room, here and on other servers, by
    /// lower-cased name: in the order `users` lists them. Lower-cased names
    /// are unique among the people online, as their look-alike keys are.
    people: BTreeMap<String, Person>,
    /// Messages held back by pacing, oldest first; a flush is scheduled
    /// whenever this is not empty.
    held: Vec<Frame>,
    /// When frames were last handed to the members.
    last_delivery: Option<Instant>,
    /// Presence changes not yet announced.
    presence: RoomPresence,
}

/// A person in a room, and where they are in it.
struct Person {
    /// The name as the room lists it.
    display: String,
    /// Local connections counted in the room.
    here: usize,
    /// Other servers where the person is in the room.
    elsewhere: usize,
}

struct Member {
    peer: Peer,
    name: Nickname,
    gate: Gate,
    /// Counted in the room's people list (from its first `joined` on).
    counted: bool,
}

/// A person's entry in a room's people list: `users` are sorted
/// case-insensitively.
fn person_key(name: &str) -> String {
    name.to_lowercase()
}

impl Room {
    fn users(&self) -> Vec<String> {
        self.people.values().map(|p| p.display.clone()).collect()
    }
}

impl Registry {
    /// A registry that asks `broker` for the rooms its members are in, is
    /// attached to it as this server's subscriber, publishes membership
    /// changes through `handoff`, and keeps the newest `recent_kept`
    /// messages of each room it follows.
    pub fn new(
        metrics: Arc<Metrics>,
        delivery: Delivery,
        recent_kept: usize,
        broker: Arc<dyn Broker>,
        handoff: Handoff,
    ) -> Arc<Self> {
        let registry = Arc::new_cyclic(|me| Self {
            state: Mutex::new(State::default()),
            metrics,
            pacing: delivery.pacing,
            writes: delivery.writes,
            broker: broker.clone(),
            handoff,
            server: ServerId::random(),
            recent: Arc::new(RecentMessages::new(recent_kept)),
            me: me.clone(),
        });
        let subscriber: Weak<dyn Subscriber> = Arc::downgrade(&registry) as Weak<Registry>;
        broker.attach(subscriber);
        registry
    }

    /// The tail of recent messages this registry keeps for joins.
    pub(in crate::hub) fn recent(&self) -> &Arc<RecentMessages> {
        &self.recent
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still the best we have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what was queued for `peers` under the registry's lock, once it
    /// is released: socket writes never happen under it.
    fn write_out(&self, peers: &[Peer]) {
        let ring = outbox::write_round(peers, self.writes);
        self.metrics.send_batches.inc_by(ring.calls);
        self.metrics.batched_sends.inc_by(ring.sends);
    }
}

#[cfg(test)]
mod testing {
    //! What the registry's tests share.

    use super::*;
    use crate::broker::{LocalBroker, RoomEvent};
    use crate::domain::Message;
    use crate::hub::publish;
    use crate::outbox::Outbox;
    use crate::protocol::EncodedMessages;

    /// A registry that never holds frames and writes one socket at a time.
    pub(super) fn unpaced() -> Arc<Registry> {
        with_pacing(Pacing::OFF)
    }

    pub(super) fn with_pacing(pacing: Pacing) -> Arc<Registry> {
        let metrics = Arc::new(Metrics::new());
        // Membership changes are not published in these tests.
        let (handoff, _) = publish::handoff(8, metrics.clone());
        Registry::new(
            metrics,
            Delivery {
                pacing,
                writes: SocketWrites::OneByOne,
            },
            16,
            Arc::new(LocalBroker::new()),
            handoff,
        )
    }

    pub(super) fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(64, 1 << 20))
    }

    pub(super) fn join(registry: &Registry, room: &str, name: &str) {
        join_as(registry, &Peer::new(outbox()), room, name);
    }

    pub(super) fn join_as(registry: &Registry, peer: &Peer, room: &str, name: &str) {
        join_after(registry, peer, room, name, 0);
    }

    /// Joins with a `joined` reply that carried the room up to `last_seq`.
    pub(super) fn join_after(
        registry: &Registry,
        peer: &Peer,
        room: &str,
        name: &str,
        last_seq: u64,
    ) {
        let room = RoomName::parse(room).unwrap();
        let name = Nickname::parse(name).unwrap();
        registry.begin_join(&room, peer, &name);
        let catch_up = PreparedCatchUp {
            messages: EncodedMessages::encode::<crate::protocol::ChatMessage>(&[]),
            last_seq,
            truncated: false,
        };
        registry.finish_join(&room, peer.id(), catch_up, "hi", None);
    }

    pub(super) fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    /// Message `seq` of `room`, from alice, text `m{seq}`.
    pub(super) fn message(room: &RoomName, seq: u64) -> Message {
        Message {
            room: room.clone(),
            id: format!("id{seq}"),
            seq,
            from: "alice".into(),
            author: None,
            text: format!("m{seq}"),
            at: 0,
        }
    }

    /// An event of messages `seqs` in `room`.
    pub(super) fn messages(room: &RoomName, seqs: &[u64]) -> RoomEvent {
        let messages: Vec<Message> = seqs.iter().map(|&seq| message(room, seq)).collect();
        RoomEvent::Messages(messages.into())
    }

    /// Chat messages queued for an outbox (join replies and presence aside).
    pub(super) fn seqs(outbox: &Outbox) -> Vec<u64> {
        let (frames, _) = outbox.take(1000);
        frames.iter().filter_map(Frame::seq).collect()
    }

    /// The presence frames queued for an outbox, as JSON.
    pub(super) fn presences(outbox: &Outbox) -> Vec<serde_json::Value> {
        let (frames, _) = outbox.take(1000);
        frames
            .iter()
            .map(|f| serde_json::from_slice::<serde_json::Value>(f.payload()).unwrap())
            .filter(|v| v["type"] == "presence")
            .collect()
    }
}
