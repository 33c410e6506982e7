//! The hub's handle on one connection: its bounded outbox and its kill switch.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::Frame;
use crate::protocol::close;

/// Identifies one connection for the lifetime of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Asks a connection to close with a code; the first request wins.
#[derive(Debug, Default)]
pub struct Kick {
    token: CancellationToken,
    reason: OnceLock<(u16, &'static str)>,
}

impl Kick {
    pub fn kick(&self, code: u16, reason: &'static str) {
        let _ = self.reason.set((code, reason));
        self.token.cancel();
    }

    pub async fn kicked(&self) {
        self.token.cancelled().await
    }

    pub fn is_kicked(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The close code and reason asked for, if any.
    pub fn reason(&self) -> Option<(u16, &'static str)> {
        self.reason.get().copied()
    }
}

/// Bytes waiting in one connection's outbox. The outbox is bounded in frames
/// too, but replies such as `history` or a `joined` with `since` are large
/// frames of their own: counting bytes keeps a client that asks for them
/// without reading from pinning memory.
#[derive(Debug)]
pub struct OutboxBudget {
    queued: AtomicUsize,
    max: usize,
}

impl OutboxBudget {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            max: max_bytes,
        }
    }

    /// Called by the connection's writer once `bytes` are on the socket.
    pub fn release(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Reserves room for `len` bytes. A single frame larger than the budget
    /// still passes when nothing else is queued, so one large reply to a
    /// reading client is never refused.
    fn reserve(&self, len: usize) -> bool {
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > self.max {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn unreserve(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::Relaxed);
    }
}

/// A cheap, cloneable handle to a connection's outbox.
#[derive(Debug, Clone)]
pub struct Peer {
    id: ConnId,
    outbox: mpsc::Sender<Frame>,
    budget: Arc<OutboxBudget>,
    kick: Arc<Kick>,
}

/// What happened to a frame handed to [`Peer::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The outbox was full: the connection is being closed with 1013.
    Overflowed,
    /// The connection is already gone.
    Closed,
}

impl Peer {
    pub fn new(outbox: mpsc::Sender<Frame>, budget: Arc<OutboxBudget>, kick: Arc<Kick>) -> Self {
        Self {
            id: ConnId::next(),
            outbox,
            budget,
            kick,
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Queues a frame without waiting. Fan-out must never wait on one slow
    /// socket, so a full outbox means this client cannot keep up: it is closed
    /// with 1013 and may reconnect and resume with `since` — nothing is lost
    /// because every message is in storage.
    pub fn push(&self, frame: Frame) -> Pushed {
        let len = frame.len();
        if !self.budget.reserve(len) {
            self.kick
                .kick(close::TRY_AGAIN_LATER, "too slow: outbox full");
            return Pushed::Overflowed;
        }
        match self.outbox.try_send(frame) {
            Ok(()) => Pushed::Queued,
            Err(TrySendError::Full(_)) => {
                self.budget.unreserve(len);
                self.kick
                    .kick(close::TRY_AGAIN_LATER, "too slow: outbox full");
                Pushed::Overflowed
            }
            Err(TrySendError::Closed(_)) => {
                self.budget.unreserve(len);
                Pushed::Closed
            }
        }
    }

    pub fn kick(&self, code: u16, reason: &'static str) {
        self.kick.kick(code, reason);
    }
}
