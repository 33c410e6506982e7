//! One connection's bounded queue of frames to write, and the socket it
//! writes through to.
//!
//! Everything a connection shares with the rest of the server lives in one
//! allocation, [`Outbox`], which holds no buffer while it is empty: thousands
//! of idle connections cost a few dozen bytes here each.
//!
//! **Writing through.** When the connection's socket writer is not busy, a
//! push writes the queue straight to the socket ([`DirectWrite`]) from the
//! pushing task: handing a message to a thousand members is then a thousand
//! `writev`s in one loop, instead of a thousand connection tasks woken,
//! scheduled and polled to make the same calls. Only what the socket does
//! not take at once is left for the socket writer. The queue's lock is held
//! across the direct write, so bytes of two writes never mix and frames
//! leave in the order they were queued, whoever writes them.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures_util::task::AtomicWaker;

use super::{DirectWrite, Frame, Kick, Position, advance};
use crate::protocol::close;

/// The front of a queue claimed for a round's writes through io_uring
/// ([`Outbox::claim`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    pub fd: RawFd,
    /// Bytes of the first claimed frame already on the socket.
    pub offset: usize,
}

/// Most frames a round's write through io_uring carries for one socket (a
/// round usually carries a handful; the socket writer takes care of long
/// queues).
pub(super) const CLAIM_MAX: usize = 64;

/// One connection's queue of frames to write, bounded in frames and in
/// bytes. Frames stay counted in bytes until the socket writer has put them on the
/// socket, not merely taken them off the queue: a client that stops reading
/// fills the socket, then the outbox, and is cut off
/// ([`close::TRY_AGAIN_LATER`]). Replies such as
/// `history` are large frames of their own: counting bytes keeps a client
/// that asks for them without reading from pinning memory.
///
/// The queue is a `VecDeque` behind a mutex that only the hub's pushes and
/// this connection's socket writer ever take (never held across anything but a
/// push or a swap): uncontended, it costs what a channel's atomics cost, and
/// unlike a channel it allocates nothing until a frame is queued and gives
/// its buffer away to the socket writer, so an idle connection holds none.
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Where pushes write through to (none in tests of the queue alone).
    socket: Option<Arc<dyn DirectWrite>>,
    /// Set by a push, cleared by the socket writer: spares waking a socket
    /// writer that has been woken already and not yet run.
    signalled: AtomicBool,
    socket_writer: AtomicWaker,
    kick: Kick,
    max_frames: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Frame>,
    /// Bytes queued plus bytes taken by the socket writer and not yet written.
    bytes: usize,
    /// Bytes of the front frame already on the socket (a direct write
    /// stopped inside it): the socket writer must go on from there.
    offset: usize,
    /// The socket writer holds frames it took and has not finished writing: no
    /// push may write through until it has.
    writing: bool,
    /// A round's write through io_uring (`uring`) has claimed the front of
    /// the queue: nobody else writes or takes frames until it settles.
    claimed: bool,
    closed: bool,
    /// A frame was refused for lack of room. Every later one is refused
    /// too, so that what is queued (and flushed if the connection closes for
    /// another reason first) never has a gap: a client resuming from the
    /// last seq it saw gets everything after it. Except answers
    /// ([`Frame::answer`]) while the connection is closing as too slow: those
    /// are all it is still sent (its room frames are dropped), and they are
    /// bounded by `late_answers`.
    overflowed: bool,
    /// Answers queued past the limits after an overflow: at most
    /// `max_frames`. (They come only from sends accepted before the
    /// connection stopped reading, a few hundred bytes each.)
    late_answers: usize,
}

/// What happened to a frame handed to [`Peer::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The outbox was full: the connection is being closed with
    /// [`close::TRY_AGAIN_LATER`].
    Overflowed,
    /// The connection is already gone.
    Closed,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queue", &self.queue)
            .field("kick", &self.kick)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An outbox whose frames only the connection's socket writer writes.
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self::with_socket(max_frames, max_bytes, None)
    }

    /// An outbox that writes pushes through to `socket` when it can.
    pub fn with_socket(
        max_frames: usize,
        max_bytes: usize,
        socket: Option<Arc<dyn DirectWrite>>,
    ) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            socket,
            signalled: AtomicBool::new(false),
            socket_writer: AtomicWaker::new(),
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
    pub(super) fn push(&self, frame: Frame) -> Pushed {
        let pushed = self.enqueue(std::slice::from_ref(&frame)).0;
        self.write_queued();
        pushed
    }

    /// Queues frames in order, without writing or waking anyone (see
    /// [`Outbox::write_queued`]). From the first that does not fit on (the
    /// connection is then being closed with [`close::TRY_AGAIN_LATER`]),
    /// only answers are queued. Returns what happened and how many were
    /// queued.
    pub(super) fn enqueue(&self, frames: &[Frame]) -> (Pushed, u64) {
        let mut queued = 0;
        let mut outcome = Pushed::Queued;
        {
            let mut queue = self.lock();
            if queue.closed {
                return (Pushed::Closed, 0);
            }
            for frame in frames {
                let len = frame.len();
                let full = queue.overflowed
                    || queue.frames.len() >= self.max_frames
                    || (queue.bytes > 0 && queue.bytes + len > self.max_bytes);
                if full {
                    queue.overflowed = true;
                    outcome = Pushed::Overflowed;
                    // Closing as too slow (or about to, below): its answers
                    // still go out before the close frame.
                    let too_slow = self
                        .kick
                        .reason()
                        .is_none_or(|(code, _)| code == close::TRY_AGAIN_LATER);
                    if !(frame.is_answer() && too_slow && queue.late_answers < self.max_frames) {
                        continue;
                    }
                    queue.late_answers += 1;
                }
                queue.frames.push_back(frame.clone());
                queue.bytes += len;
                queued += 1;
            }
        }
        if outcome == Pushed::Overflowed {
            self.kick
                .kick(close::TRY_AGAIN_LATER, "too slow: outbox full");
        }
        (outcome, queued)
    }

    /// Puts what is queued on the socket now if nobody else is writing and
    /// it takes it; wakes the socket writer for whatever remains.
    pub(super) fn write_queued(&self) {
        let mut queue = self.lock();
        if queue.frames.is_empty() {
            return;
        }
        if let Some(socket) = &self.socket
            && !queue.writing
            && !queue.claimed
            && !self.kick.is_kicked()
        {
            let offset = queue.offset;
            let frames = queue.frames.make_contiguous();
            let wrote = socket.write_now(frames, offset);
            self.wrote(queue, wrote);
            return;
        }
        drop(queue);
        self.wake_socket_writer();
    }

    /// Accounts for a direct write that stopped at `wrote` (the queue's
    /// frames before it are on the socket), then leaves the rest to the
    /// socket writer.
    fn wrote(&self, mut queue: MutexGuard<'_, Queue>, wrote: io::Result<Position>) {
        match wrote {
            Ok((done, offset)) => {
                let bytes: usize = queue.frames.drain(..done).map(|f| f.len()).sum();
                queue.bytes -= bytes;
                queue.offset = offset;
                if queue.frames.is_empty() {
                    // Everything went straight out: the socket writer has nothing to do.
                    queue.frames = VecDeque::new();
                    return;
                }
            }
            Err(_) => {
                drop(queue);
                // The client is gone; its reader will notice too.
                self.kick.kick(close::NORMAL, "");
                return;
            }
        }
        drop(queue);
        self.wake_socket_writer();
    }

    fn wake_socket_writer(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            self.socket_writer.wake();
        }
    }

    /// Claims the front of the queue for a round's write through io_uring:
    /// clones up to [`CLAIM_MAX`] frames onto `frames` (so the round owns the
    /// bytes it hands the kernel) and keeps everyone else from writing until
    /// [`Outbox::settle`]. `None` when there is nothing to write through, the
    /// socket writer is busy, the connection is kicked or the socket has no
    /// descriptor: [`Outbox::write_queued`] then does what it always does.
    pub(super) fn claim(&self, frames: &mut Vec<Frame>) -> Option<Claim> {
        let fd = self.socket.as_ref()?.raw_fd()?;
        let mut queue = self.lock();
        if queue.frames.is_empty() || queue.writing || queue.claimed || self.kick.is_kicked() {
            return None;
        }
        queue.claimed = true;
        frames.extend(queue.frames.iter().take(CLAIM_MAX).cloned());
        Some(Claim {
            fd,
            offset: queue.offset,
        })
    }

    /// Ends a claimed write: `frames` are the claimed ones, `written` what
    /// the socket took of them.
    pub(super) fn settle(&self, frames: &[Frame], written: io::Result<usize>) {
        let mut queue = self.lock();
        queue.claimed = false;
        let wrote = match written {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => Ok(advance(frames, (0, queue.offset), n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((0, queue.offset)),
            Err(e) => Err(e),
        };
        self.wrote(queue, wrote);
    }

    #[cfg(test)]
    pub(super) fn socket_for_tests(&self) -> &dyn DirectWrite {
        self.socket.as_deref().expect("an outbox with a socket")
    }

    /// Whether a round's write through io_uring has the socket right now
    /// (on another thread).
    pub fn claimed(&self) -> bool {
        self.lock().claimed
    }

    /// Resolves when frames may have been queued since the last call.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if self.signalled.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.socket_writer.register(cx.waker());
            if self.signalled.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }

    /// Takes up to `max` queued frames, oldest first, and how many bytes of
    /// the first are already on the socket. Until [`Outbox::written`] their
    /// bytes stay counted and no push writes through.
    pub fn take(&self, max: usize) -> (Vec<Frame>, usize) {
        let mut queue = self.lock();
        if queue.claimed {
            // The round wakes the socket writer for whatever it leaves.
            return (Vec::new(), 0);
        }
        let offset = std::mem::take(&mut queue.offset);
        queue.writing = !queue.frames.is_empty();
        if queue.frames.len() <= max {
            // The whole buffer goes to the socket writer: the queue keeps none.
            return (Vec::from(std::mem::take(&mut queue.frames)), offset);
        }
        let taken = queue.frames.drain(..max).collect();
        drop(queue);
        // More is waiting: the socket writer comes back for it.
        self.signalled.store(true, Ordering::Release);
        (taken, offset)
    }

    /// Called by the socket writer once `bytes` taken with [`Outbox::take`] are on
    /// the socket: pushes may write through again.
    pub fn written(&self, bytes: usize) {
        let mut queue = self.lock();
        queue.bytes -= bytes;
        queue.writing = false;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Peer;

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
        let (taken, _) = outbox.take(10);
        assert_eq!(taken.len(), 1);
        // Taken but not yet written: still counted.
        assert_eq!(peer.push(frame(10)), Pushed::Overflowed);
    }

    #[test]
    fn after_one_frame_is_refused_no_later_frame_is_queued() {
        // A connection already closing for another reason (here a shutdown)
        // flushes its queue: that queue must not skip a frame.
        let outbox = Arc::new(Outbox::new(100, 100));
        let peer = Peer::new(outbox.clone());
        peer.kick(close::GOING_AWAY, "server shutting down");
        assert_eq!(peer.push(frame(60)), Pushed::Queued);
        assert_eq!(peer.push(frame(60)), Pushed::Overflowed);
        // Room enough for this one, but it would follow a gap.
        assert_eq!(peer.push(frame(10)), Pushed::Overflowed);
        assert_eq!(peer.queue(&[frame(10)]), 0);
        let (taken, _) = outbox.take(10);
        assert_eq!(taken.len(), 1);
        // The first close reason stands.
        assert_eq!(outbox.kick().reason().map(|r| r.0), Some(close::GOING_AWAY));
    }

    #[test]
    fn a_connection_closing_as_too_slow_still_queues_its_answers_within_a_bound() {
        let outbox = Arc::new(Outbox::new(2, 1000));
        let peer = Peer::new(outbox.clone());
        peer.push(frame(10));
        peer.push(frame(10));
        assert_eq!(peer.push(frame(10)), Pushed::Overflowed);
        // Past the overflow, answers still get in (at most `max_frames` of
        // them), room frames do not.
        let answer = Frame::answer("{}".into());
        assert_eq!(peer.queue(&[frame(10), answer.clone()]), 1);
        assert_eq!(peer.queue(std::slice::from_ref(&answer)), 1);
        assert_eq!(peer.queue(std::slice::from_ref(&answer)), 0);
        let (taken, _) = outbox.take(10);
        assert_eq!(
            taken.iter().map(Frame::is_answer).collect::<Vec<_>>(),
            [false, false, true, true]
        );

        // Closing for another reason, the queue keeps its no-gap rule.
        let outbox = Arc::new(Outbox::new(1, 1000));
        let peer = Peer::new(outbox.clone());
        peer.kick(close::GOING_AWAY, "server shutting down");
        peer.push(frame(10));
        assert_eq!(peer.queue(std::slice::from_ref(&answer)), 0);
    }

    #[test]
    fn written_bytes_free_the_budget_and_take_respects_its_limit() {
        let outbox = Arc::new(Outbox::new(100, 100));
        let peer = Peer::new(outbox.clone());
        let a = frame(40);
        let len = a.len();
        assert_eq!(peer.push(a), Pushed::Queued);
        assert_eq!(outbox.take(10).0.len(), 1);
        outbox.written(len);
        for _ in 0..2 {
            assert_eq!(peer.push(frame(40)), Pushed::Queued);
        }
        assert_eq!(outbox.take(1).0.len(), 1);
        assert_eq!(outbox.take(1).0.len(), 1);
        assert!(outbox.take(1).0.is_empty());
        outbox.close();
        assert_eq!(peer.push(frame(1)), Pushed::Closed);
    }

    #[tokio::test]
    async fn a_push_wakes_the_socket_writer_and_a_kick_wakes_everyone() {
        let outbox = Arc::new(Outbox::new(10, 1000));
        let peer = Peer::new(outbox.clone());
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                outbox.ready().await;
                outbox.take(10).0.len()
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
        peer.kick(close::GOING_AWAY, "bye");
        kicked.await.unwrap();
        // Kicked already: resolves at once.
        outbox.kick().kicked().await;
    }

    /// A socket that takes `room` more bytes, then would block.
    #[derive(Default)]
    struct FakeSocket {
        taken: Mutex<Vec<u8>>,
        room: Mutex<usize>,
    }

    impl DirectWrite for FakeSocket {
        fn write_now(&self, frames: &[Frame], offset: usize) -> io::Result<(usize, usize)> {
            let mut room = self.room.lock().unwrap();
            let mut taken = self.taken.lock().unwrap();
            let mut offset = offset;
            for (i, frame) in frames.iter().enumerate() {
                let rest = &frame.wire()[offset..];
                let n = rest.len().min(*room);
                taken.extend_from_slice(&rest[..n]);
                *room -= n;
                if n < rest.len() {
                    return Ok((i, offset + n));
                }
                offset = 0;
            }
            Ok((frames.len(), 0))
        }
    }

    #[test]
    fn pushes_write_through_and_leave_the_socket_writer_only_what_the_socket_refused() {
        let socket = Arc::new(FakeSocket::default());
        let outbox = Arc::new(Outbox::with_socket(100, 10_000, Some(socket.clone())));
        let peer = Peer::new(outbox.clone());
        let (a, b, c) = (frame(10), frame(20), frame(30));
        *socket.room.lock().unwrap() = a.len() + 5;
        assert_eq!(peer.push(a.clone()), Pushed::Queued);
        assert_eq!(peer.queue(&[b.clone(), c.clone()]), 2);
        peer.write_queued();
        // `a` went out whole, `b` stopped 5 bytes in: the socket writer goes on from there.
        assert_eq!(socket.taken.lock().unwrap().len(), a.len() + 5);
        let (taken, offset) = outbox.take(10);
        assert_eq!((taken.len(), offset), (2, 5));
        // While the socket writer holds frames, pushes queue behind them.
        *socket.room.lock().unwrap() = 1000;
        let d = frame(5);
        assert_eq!(peer.push(d.clone()), Pushed::Queued);
        assert_eq!(socket.taken.lock().unwrap().len(), a.len() + 5);
        socket.write_now(&taken, offset).unwrap();
        outbox.written(taken.iter().map(Frame::len).sum());
        // Written: the next push writes the queue (d) and itself, in order.
        let e = frame(7);
        assert_eq!(peer.push(e.clone()), Pushed::Queued);
        let expected: Vec<u8> = [&a, &b, &c, &d, &e]
            .iter()
            .flat_map(|f| f.wire().to_vec())
            .collect();
        assert_eq!(*socket.taken.lock().unwrap(), expected);
        assert!(outbox.take(10).0.is_empty());
        // Nothing was left counted: a frame over the whole budget passes
        // alone, as it only does into an outbox with nothing counted.
        *socket.room.lock().unwrap() = 0;
        assert_eq!(peer.push(frame(20_000)), Pushed::Queued);
    }
}
