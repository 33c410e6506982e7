//! The hub's handle on one connection: its bounded outbox and its kill switch.
//!
//! Everything a connection shares with the rest of the server lives in one
//! allocation, [`Outbox`], which holds no buffer while it is empty: thousands
//! of idle connections cost a few dozen bytes here each.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

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
    reason: OnceLock<(u16, &'static str)>,
    kicked: Notify,
}

impl Kick {
    pub fn kick(&self, code: u16, reason: &'static str) {
        if self.reason.set((code, reason)).is_ok() {
            self.kicked.notify_waiters();
        }
    }

    /// Resolves once the connection has been kicked.
    pub async fn kicked(&self) {
        loop {
            let notified = self.kicked.notified();
            tokio::pin!(notified);
            // Registered before the check, so a kick in between is not missed.
            notified.as_mut().enable();
            if self.is_kicked() {
                return;
            }
            notified.await;
        }
    }

    pub fn is_kicked(&self) -> bool {
        self.reason.get().is_some()
    }

    /// The close code and reason asked for, if any.
    pub fn reason(&self) -> Option<(u16, &'static str)> {
        self.reason.get().copied()
    }
}

/// One connection's queue of frames to write, bounded in frames and in
/// bytes. Frames stay counted in bytes until the writer has put them on the
/// socket, not merely taken them off the queue: a client that stops reading
/// fills the socket, then the outbox, and is cut off (1013). Replies such as
/// `history` are large frames of their own: counting bytes keeps a client
/// that asks for them without reading from pinning memory.
///
/// The queue is a `VecDeque` behind a mutex that only the hub's pushes and
/// this connection's own writer ever take (never held across anything but a
/// push or a swap): uncontended, it costs what a channel's atomics cost, and
/// unlike a channel it allocates nothing until a frame is queued and gives
/// its buffer away to the writer, so an idle connection holds none.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Set by a push, cleared by the writer: spares waking a writer that
    /// has been woken already and not yet run.
    signalled: AtomicBool,
    writer: AtomicWaker,
    kick: Kick,
    max_frames: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Frame>,
    /// Bytes queued plus bytes taken by the writer and not yet written.
    bytes: usize,
    closed: bool,
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

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            signalled: AtomicBool::new(false),
            writer: AtomicWaker::new(),
            kick: Kick::default(),
            max_frames,
            max_bytes,
        }
    }

    pub fn kick(&self) -> &Kick {
        &self.kick
    }

    /// Queues a frame without waiting. A single frame larger than the byte
    /// budget still passes when nothing else is queued, so one large reply
    /// to a reading client is never refused.
    fn push(&self, frame: Frame) -> Pushed {
        let len = frame.len();
        {
            let mut queue = self.lock();
            if queue.closed {
                return Pushed::Closed;
            }
            let full = queue.frames.len() >= self.max_frames
                || (queue.bytes > 0 && queue.bytes + len > self.max_bytes);
            if !full {
                queue.frames.push_back(frame);
                queue.bytes += len;
            }
            drop(queue);
            if full {
                self.kick
                    .kick(close::TRY_AGAIN_LATER, "too slow: outbox full");
                return Pushed::Overflowed;
            }
        }
        if !self.signalled.swap(true, Ordering::AcqRel) {
            self.writer.wake();
        }
        Pushed::Queued
    }

    /// Resolves when frames may have been queued since the last call.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if self.signalled.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.writer.register(cx.waker());
            if self.signalled.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }

    /// Takes up to `max` queued frames, oldest first. Their bytes stay
    /// counted until [`Outbox::written`].
    pub fn take(&self, max: usize) -> Vec<Frame> {
        let mut queue = self.lock();
        if queue.frames.len() <= max {
            // The whole buffer goes to the writer: the queue keeps none.
            return Vec::from(std::mem::take(&mut queue.frames));
        }
        let batch = queue.frames.drain(..max).collect();
        drop(queue);
        // More is waiting: the writer comes back for it.
        self.signalled.store(true, Ordering::Release);
        batch
    }

    /// Whether at least half of the frame bound is queued: past this, the
    /// writer must not wait for more to gather.
    pub fn filling(&self) -> bool {
        self.lock().frames.len() >= self.max_frames / 2
    }

    /// Called by the writer once `bytes` taken with [`Outbox::take`] are on the socket.
    pub fn written(&self, bytes: usize) {
        self.lock().bytes -= bytes;
    }

    /// Refuses further frames (the connection is going away).
    pub fn close(&self) {
        self.lock().closed = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue holds no invariant a panicking pusher could break halfway.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
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
    /// with 1013 and may reconnect and resume with `since` — nothing is lost
    /// because every message is in storage.
    pub fn push(&self, frame: Frame) -> Pushed {
        self.outbox.push(frame)
    }

    pub fn kick(&self, code: u16, reason: &'static str) {
        self.outbox.kick.kick(code, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Frame {
        Frame::new("x".repeat(len))
    }

    #[test]
    fn the_outbox_is_bounded_in_frames_and_in_unwritten_bytes() {
        let outbox = Arc::new(Outbox::new(3, 1000));
        let peer = Peer::new(outbox.clone());
        for _ in 0..3 {
            assert_eq!(peer.push(frame(10)), Pushed::Queued);
        }
        assert_eq!(peer.push(frame(10)), Pushed::Overflowed);
        assert_eq!(
            outbox.kick().reason().map(|r| r.0),
            Some(close::TRY_AGAIN_LATER)
        );

        let outbox = Arc::new(Outbox::new(100, 1000));
        let peer = Peer::new(outbox.clone());
        // One frame over the budget passes alone.
        assert_eq!(peer.push(frame(2000)), Pushed::Queued);
        let taken = outbox.take(10);
        assert_eq!(taken.len(), 1);
        // Taken but not yet written: still counted.
        assert_eq!(peer.push(frame(10)), Pushed::Overflowed);
    }

    #[test]
    fn written_bytes_free_the_budget_and_take_respects_its_limit() {
        let outbox = Arc::new(Outbox::new(100, 100));
        let peer = Peer::new(outbox.clone());
        let a = frame(40);
        let len = a.len();
        assert_eq!(peer.push(a), Pushed::Queued);
        assert_eq!(outbox.take(10).len(), 1);
        outbox.written(len);
        for _ in 0..2 {
            assert_eq!(peer.push(frame(40)), Pushed::Queued);
        }
        assert_eq!(outbox.take(1).len(), 1);
        assert_eq!(outbox.take(1).len(), 1);
        assert!(outbox.take(1).is_empty());
        outbox.close();
        assert_eq!(peer.push(frame(1)), Pushed::Closed);
    }

    #[tokio::test]
    async fn a_push_wakes_the_writer_and_a_kick_wakes_everyone() {
        let outbox = Arc::new(Outbox::new(10, 1000));
        let peer = Peer::new(outbox.clone());
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                outbox.ready().await;
                outbox.take(10).len()
            }
        });
        tokio::task::yield_now().await;
        peer.push(frame(1));
        assert_eq!(waiter.await.unwrap(), 1);

        let kicked = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.kick().kicked().await }
        });
        tokio::task::yield_now().await;
        peer.kick(1001, "bye");
        kicked.await.unwrap();
        // Kicked already: resolves at once.
        outbox.kick().kicked().await;
    }
}
