//! Fan-out of room events between servers, behind the [`Broker`] trait.
//!
//! A broker carries an already-serialized frame for a room to every server
//! (this one included), where the hub hands it to its local members through
//! [`LocalDelivery`]. Today there is one server and [`LocalBroker`] loops the
//! frame straight back; a Redis broker can be added beside it without the hub
//! or connections changing.

mod local;

pub use local::LocalBroker;

use async_trait::async_trait;

use crate::domain::RoomName;
use crate::outbox::Frame;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Delivers each frame to every member of its room on every server:
    /// usually the messages of one commit, handed over together so that a
    /// server can write them out together. Frames of a room published from
    /// one task arrive in the order they were published.
    async fn publish(&self, frames: Vec<(RoomName, Frame)>) -> Result<(), BrokerError>;
}

/// The receiving end on each server: hands frames to this server's members
/// of their rooms, in order within each room.
pub trait LocalDelivery: Send + Sync + 'static {
    fn deliver(&self, frames: &[(RoomName, Frame)]);
}
