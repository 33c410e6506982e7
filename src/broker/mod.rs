//! Room events between servers, behind the [`Broker`] trait.
//!
//! A broker carries typed [`RoomEvent`]s — a commit's messages, a person
//! arriving in or leaving a room — from the server where they happened to
//! every server subscribed to the room, this one included. Nothing on it is
//! encoded for the wire: each receiving server's hub encodes an event once
//! per room for its own members. A new kind of event (an edit, a deletion,
//! a reaction, typing) is a new [`RoomEvent`] variant; a broker carries it
//! without knowing what it means.
//!
//! **The contract** (checked by the suite in `contract.rs`, which every
//! implementation runs):
//! - events of a room published by one task reach each subscriber in the
//!   order they were published;
//! - a server receives the events of the rooms it is subscribed to, and no
//!   others: the hub subscribes to a room when its first local member
//!   joins and unsubscribes when the last one leaves;
//! - no event is dropped silently: a broker that cannot deliver some (its
//!   subscriber fell behind a remote feed, a connection was lost) tells the
//!   subscriber through [`Subscriber::lagged`], with how many it lost,
//!   before it delivers anything newer;
//! - [`Broker::health`] says whether it can deliver at all, and `/healthz`
//!   reports a broker that cannot as a failure.
//!
//! [`LocalBroker`] is the broker of a single server: publishing hands the
//! events straight to this server's subscriber. A Redis broker goes beside
//! it (`redis.rs`), chosen once in `app.rs`: it implements these six
//! methods over Redis channels, one per room, and runs the same contract
//! suite. The hub only calls the trait, so it does not change; what a
//! second server adds beyond the broker (shared name claims, a shared
//! presence snapshot for servers that subscribe late) is outside it.

#[cfg(test)]
pub(crate) mod contract;
mod local;

pub use local::LocalBroker;

use std::sync::{Arc, Weak};

use async_trait::async_trait;

use crate::domain::{Message, Nickname, RoomName};

/// What a broker reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Identifies one server process among those sharing a broker: a server
/// recognises its own membership events when they come back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerId(u64);

impl ServerId {
    /// A fresh id for this process.
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// Something that happened in one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// Messages committed in one room, in seq order; never empty.
    Messages(Arc<[Message]>),
    /// A person arrived in a room on a server, or left it there.
    Membership(Membership),
}

impl RoomEvent {
    /// The room the event happened in.
    pub fn room(&self) -> &RoomName {
        match self {
            RoomEvent::Messages(messages) => &messages[0].room,
            RoomEvent::Membership(membership) => &membership.room,
        }
    }
}

/// A person's presence in a room on one server changed: their first
/// connection there joined it, or their last one left. A person is in a
/// room while they are in it on any server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub room: RoomName,
    /// The name as the room lists it.
    pub person: Nickname,
    pub change: Change,
    /// The server where it happened.
    pub origin: ServerId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Joined,
    Left,
}

/// Events a broker could not deliver to its subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// How many, when the broker knows (`None`: an unknown number).
    pub events: Option<u64>,
}

/// The receiving end on each server (the hub): called by the broker, never
/// concurrently with itself, with the events of subscribed rooms.
pub trait Subscriber: Send + Sync + 'static {
    /// Events in publish order within each room. Must not block for long
    /// nor call the broker's `publish`: a local broker calls it from the
    /// publishing task.
    fn receive(&self, events: &[RoomEvent]);

    /// Events were lost and will not come: whatever the subscriber built
    /// from the stream (a cache of recent messages, what its members were
    /// shown) may have a gap.
    fn lagged(&self, lost: Lost);
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Names this server's subscriber. Held weakly: the broker does not
    /// keep the hub alive (the hub holds the broker).
    fn attach(&self, subscriber: Weak<dyn Subscriber>);

    /// Hands `events` to every server subscribed to their rooms, this one
    /// included: usually one commit's messages, one event per room, handed
    /// over together so that a server can write them out together.
    async fn publish(&self, events: Vec<RoomEvent>) -> Result<(), BrokerError>;

    /// This server wants `room`'s events. Called in the order the hub
    /// decides it (under its membership lock), so it must not block nor
    /// call the subscriber; [`Broker::subscribed`] waits for it to take effect.
    fn subscribe(&self, room: &RoomName);

    /// This server no longer wants `room`'s events (same rules as `subscribe`).
    fn unsubscribe(&self, room: &RoomName);

    /// Resolves once events of `room` published from now on reach this
    /// server (a remote broker: once its subscription is confirmed). A
    /// joiner waits for it before reading its catch-up, so that nothing
    /// stored after that read is missed.
    async fn subscribed(&self, room: &RoomName) -> Result<(), BrokerError>;

    /// Whether events can be delivered now.
    fn health(&self) -> Result<(), BrokerError>;
}
