//! The hub's handle on one connection: an id and its outbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Frame, Outbox, Pushed};

/// Identifies one connection for the lifetime of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A cheap, cloneable handle to a connection's outbox.
#[derive(Debug, Clone)]
pub struct Peer {
    id: ConnId,
    outbox: Arc<Outbox>,
}

impl Peer {
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Self {
            id: ConnId::next(),
            outbox,
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Queues a frame without waiting. Fan-out must never wait on one slow
    /// socket, so a full outbox means this client cannot keep up: it is closed
    /// with [`close::TRY_AGAIN_LATER`](crate::protocol::close::TRY_AGAIN_LATER)
    /// and may reconnect and resume with `since` — nothing is lost because
    /// every message is in storage.
    pub fn push(&self, frame: Frame) -> Pushed {
        self.outbox.push(frame)
    }

    /// Queues frames without writing them: the caller holds a lock that
    /// socket writes must not be made under, and calls
    /// [`Peer::write_queued`] once it has let go. Returns how many were queued.
    pub fn queue(&self, frames: &[Frame]) -> u64 {
        self.outbox.enqueue(frames).1
    }

    /// Writes what [`Peer::queue`] queued (see [`Peer::push`]).
    pub fn write_queued(&self) {
        self.outbox.write_queued();
    }

    /// The outbox this handle queues to.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn kick(&self, code: u16, reason: &'static str) {
        self.outbox.kick().kick(code, reason);
    }
}
