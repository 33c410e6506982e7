//! A round of socket writes in one system call.
//!
//! A room delivery writes the same frames to every member, and one commit's
//! messages go to the members of many rooms. On loopback one `writev` costs
//! 5–7 µs on the machines measured; handing a round of sends to the kernel in
//! one `io_uring_enter` instead of one system call each cut the server's CPU
//! per delivery by 5–15 % (docs/performance.md): TCP's own work is the same,
//! the per-call overhead and the bookkeeping around each call are not.
//!
//! The ring is used as a vectored system call, never as an event loop:
//! every `sendmsg` carries `MSG_DONTWAIT`, so the kernel completes it —
//! with the bytes the socket took, or `EAGAIN` — before `io_uring_enter`
//! returns, and nothing is left in flight when [`write_round`] returns. That is
//! what makes the raw pointers below sound: the frames (cloned into the
//! round), their `iovec`s and `msghdr`s all outlive the call that uses them.
//! What a socket does not take is left in its outbox for the connection's
//! socket writer, exactly as after a direct write (`direct`).
//!
//! One ring per thread, made on first use. Where the kernel refuses
//! io_uring (older kernels, seccomp profiles such as Docker's default) the
//! writes go one by one, as they do with `--io-uring false`.

use std::io;
use std::ops::Range;

use super::queue::Claim;
use super::{Frame, Peer};

/// How a round's socket writes reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketWrites {
    /// One `writev` per socket.
    OneByOne,
    /// All of a round's in one `io_uring_enter` where the kernel allows it.
    Ring,
}

impl SocketWrites {
    /// Through io_uring if asked for and the kernel allows it (checked on
    /// this thread: the ring made here serves it from now on).
    pub fn detect(io_uring: bool) -> Self {
        if io_uring && ring::available() {
            Self::Ring
        } else {
            Self::OneByOne
        }
    }
}

/// What a round's writes through io_uring took: system calls made and the
/// sends they carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingSends {
    pub calls: u64,
    pub sends: u64,
}

/// Writes what is queued for each of `peers` (see [`Peer::write_queued`]).
pub fn write_round(peers: &[Peer], how: SocketWrites) -> RingSends {
    if how == SocketWrites::Ring
        && peers.len() > 1
        && let Some(sends) = ring::write_all(peers)
    {
        return sends;
    }
    for peer in peers {
        peer.write_queued();
    }
    RingSends::default()
}

/// The claimed writes of one chunk of a round, and what became of them.
#[derive(Default)]
struct Round {
    /// Index into the chunk's peers, what was claimed, and its frames.
    claims: Vec<(usize, Claim, Range<usize>)>,
    frames: Vec<Frame>,
    /// The kernel's result for each claim: bytes sent or `-errno`
    /// ([`NOT_SENT`] for a send it never reported on).
    results: Vec<i32>,
}

/// A send the kernel never reported on: nothing of it was sent.
const NOT_SENT: i32 = -libc::EAGAIN;

impl Round {
    /// Claims each peer's queue; peers that cannot be claimed are written
    /// the usual way at once.
    fn claim(&mut self, peers: &[Peer]) {
        self.claims.clear();
        self.frames.clear();
        for (i, peer) in peers.iter().enumerate() {
            let start = self.frames.len();
            match peer.outbox().claim(&mut self.frames) {
                Some(claim) => self.claims.push((i, claim, start..self.frames.len())),
                None => peer.write_queued(),
            }
        }
        self.results.clear();
        self.results.resize(self.claims.len(), NOT_SENT);
    }

    /// Hands each claimed outbox what its socket took.
    fn settle(&mut self, peers: &[Peer]) {
        for ((i, _, frames), &result) in self.claims.iter().zip(&self.results) {
            let written = if result >= 0 {
                Ok(result as usize)
            } else {
                Err(io::Error::from_raw_os_error(-result))
            };
            peers[*i]
                .outbox()
                .settle(&self.frames[frames.clone()], written);
        }
        self.claims.clear();
        self.frames.clear();
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod ring {
    use std::cell::RefCell;
    use std::io;
    use std::sync::Once;

    use io_uring::{IoUring, Probe, opcode, types};

    use super::{Peer, RingSends, Round};

    /// Sends per `io_uring_enter`: a 1,000-member round is four calls.
    const ENTRIES: u32 = 256;

    enum State {
        Untried,
        Ready(Box<Ring>),
        Unavailable,
    }

    thread_local! {
        static STATE: RefCell<State> = const { RefCell::new(State::Untried) };
    }

    struct Ring {
        ring: IoUring,
        round: Round,
        /// Rebuilt for each chunk; only read by the kernel during the call.
        iovecs: Vec<libc::iovec>,
        headers: Vec<libc::msghdr>,
    }

    pub(super) fn available() -> bool {
        with_ring(|_| ()).is_some()
    }

    /// Writes a round through this thread's ring; `None` if there is none.
    pub(super) fn write_all(peers: &[Peer]) -> Option<RingSends> {
        let mut sends = RingSends::default();
        let failed = with_ring(|ring| {
            for chunk in peers.chunks(ENTRIES as usize) {
                ring.round.claim(chunk);
                let claims = ring.round.claims.len() as u64;
                if claims > 0 {
                    sends.calls += 1;
                    sends.sends += claims;
                }
                let sent = ring.send();
                // Sends the kernel did not report on sent nothing: those
                // outboxes keep their frames for their socket writers.
                ring.round.settle(chunk);
                if let Err(e) = sent {
                    return Some(e);
                }
            }
            None
        })?;
        match failed {
            None => Some(sends),
            Some(e) => {
                tracing::warn!(error = %e, "io_uring failed; socket writes go one by one from now on");
                // Dropping the ring discards whatever it did not take.
                STATE.with(|state| *state.borrow_mut() = State::Unavailable);
                // The rest of the round (and anything the failed chunk left
                // queued) the usual way.
                for peer in peers {
                    peer.write_queued();
                }
                Some(sends)
            }
        }
    }

    fn with_ring<T>(f: impl FnOnce(&mut Ring) -> T) -> Option<T> {
        STATE.with(|state| {
            // A round started from inside a round (nothing does that) goes
            // one by one rather than panic.
            let mut state = state.try_borrow_mut().ok()?;
            if let State::Untried = *state {
                *state = match Ring::new() {
                    Ok(ring) => State::Ready(Box::new(ring)),
                    Err(e) => {
                        static ONCE: Once = Once::new();
                        ONCE.call_once(|| {
                            tracing::info!(error = %e, "io_uring unavailable; socket writes go one by one");
                        });
                        State::Unavailable
                    }
                };
            }
            match &mut *state {
                State::Ready(ring) => Some(f(ring)),
                _ => None,
            }
        })
    }

    impl Ring {
        fn new() -> io::Result<Self> {
            let ring = IoUring::new(ENTRIES)?;
            let mut probe = Probe::new();
            ring.submitter().register_probe(&mut probe)?;
            if !probe.is_supported(opcode::SendMsg::CODE) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the kernel's io_uring has no sendmsg",
                ));
            }
            Ok(Self {
                ring,
                round: Round::default(),
                iovecs: Vec::new(),
                headers: Vec::new(),
            })
        }

        /// Sends every claim of the round and records each result. Returns
        /// once the kernel has reported on every send it took.
        fn send(&mut self) -> io::Result<()> {
            let round = &mut self.round;
            if round.claims.is_empty() {
                return Ok(());
            }
            // Filled completely before any pointer into them is taken.
            self.iovecs.clear();
            for (_, claim, frames) in &round.claims {
                for (k, frame) in round.frames[frames.clone()].iter().enumerate() {
                    let wire = frame.wire();
                    let bytes = if k == 0 { &wire[claim.offset..] } else { wire };
                    self.iovecs.push(libc::iovec {
                        iov_base: bytes.as_ptr() as *mut libc::c_void,
                        iov_len: bytes.len(),
                    });
                }
            }
            self.headers.clear();
            let mut at = 0;
            for (_, _, frames) in &round.claims {
                // SAFETY: msghdr is plain old data; all zeroes is a valid value.
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                header.msg_iov = self.iovecs[at..].as_mut_ptr();
                header.msg_iovlen = frames.len() as _;
                at += frames.len();
                self.headers.push(header);
            }
            {
                let mut queue = self.ring.submission();
                for (i, ((_, claim, _), header)) in
                    round.claims.iter().zip(&self.headers).enumerate()
                {
                    // MSG_DONTWAIT: the kernel completes the send inline,
                    // with EAGAIN rather than waiting for room.
                    let send = opcode::SendMsg::new(types::Fd(claim.fd), header)
                        .flags((libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32)
                        .build()
                        .user_data(i as u64);
                    // SAFETY: the header, its iovecs and the frames they
                    // point into stay in `self`, untouched, until every send
                    // has been reported on (below) or the ring is dropped;
                    // the descriptor stays open while the peer (held by the
                    // caller) lives.
                    unsafe { queue.push(&send) }.expect("a chunk never exceeds the ring");
                }
            }
            let total = round.claims.len();
            let mut reported = 0;
            while reported < total {
                let entered = self.ring.submit_and_wait(total - reported);
                for completion in self.ring.completion() {
                    round.results[completion.user_data() as usize] = completion.result();
                    reported += 1;
                }
                match entered {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod ring {
    use super::{Peer, RingSends};

    pub(super) fn available() -> bool {
        false
    }

    pub(super) fn write_all(_: &[Peer]) -> Option<RingSends> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::outbox::{DirectWrite, Outbox, Position, advance};

    /// A real non-blocking socket, written the way the connection's own is.
    struct TestSocket(TcpStream);

    impl DirectWrite for TestSocket {
        fn write_now(&self, frames: &[Frame], offset: usize) -> io::Result<Position> {
            let mut at = (0, offset);
            while at.0 < frames.len() {
                let rest = &frames[at.0].wire()[at.1..];
                match (&self.0).write(rest) {
                    Ok(n) => at = advance(frames, at, n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(at),
                    Err(e) => return Err(e),
                }
            }
            Ok(at)
        }

        fn raw_fd(&self) -> Option<RawFd> {
            Some(self.0.as_raw_fd())
        }
    }

    /// Peers on real loopback sockets, and the client ends to read them from.
    fn peers(n: usize) -> (Vec<Peer>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..n {
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            server.set_nonblocking(true).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let socket = Arc::new(TestSocket(server));
            let outbox = Outbox::with_socket(1000, 64 << 20, Some(socket));
            peers.push(Peer::new(Arc::new(outbox)));
            clients.push(client);
        }
        (peers, clients)
    }

    fn wire(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(|f| f.wire().to_vec()).collect()
    }

    /// The io_uring path where the kernel has it; CI must have it.
    fn through_ring() -> SocketWrites {
        let how = SocketWrites::detect(true);
        if how != SocketWrites::Ring {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "io_uring is unavailable on this CI machine"
            );
            eprintln!("io_uring unavailable here: testing the one-by-one path only");
        }
        how
    }

    #[test]
    fn a_round_reaches_every_socket_whole_and_in_order() {
        let how = through_ring();
        // More than one chunk of the ring.
        let (peers, mut clients) = peers(300);
        let frames: Vec<Frame> = (0..3)
            .map(|i| Frame::new(format!("{{\"n\":{i}}}")))
            .collect();
        for peer in &peers {
            peer.queue(&frames[..2]);
        }
        let sends = write_round(&peers, how);
        if how == SocketWrites::Ring {
            // 300 sockets: one call for 256 of them, one for the rest.
            assert_eq!(
                sends,
                RingSends {
                    calls: 2,
                    sends: 300
                }
            );
        }
        for peer in &peers {
            peer.queue(&frames[2..]);
        }
        write_round(&peers, how);
        let expected = wire(&frames);
        for (peer, client) in peers.iter().zip(&mut clients) {
            let mut got = vec![0; expected.len()];
            client.read_exact(&mut got).unwrap();
            assert_eq!(got, expected);
            assert!(peer.outbox().take(10).0.is_empty(), "nothing left queued");
        }
    }

    #[test]
    fn what_a_full_socket_refuses_stays_queued_for_the_socket_writer() {
        let how = through_ring();
        let (peers, mut clients) = peers(2);
        // Far more than loopback's socket buffers take while nobody reads.
        let frames: Vec<Frame> = (0..64u8)
            .map(|i| Frame::new(char::from(b'a' + i % 26).to_string().repeat(100_000)))
            .collect();
        peers[0].queue(&frames);
        peers[1].queue(&frames[..1]);
        let (done, finished) = std::sync::mpsc::channel();
        let round = peers.clone();
        std::thread::spawn(move || {
            write_round(&round, how);
            done.send(()).unwrap();
        });
        // A full socket fails the send at once; it never waits for room.
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the round returned");
        let (left, offset) = peers[0].outbox().take(1000);
        assert!(!left.is_empty(), "the socket cannot have taken 6.4 MB");
        // What the socket writer finishes is exactly what the round did not send.
        let reader = std::thread::spawn({
            let mut client = clients.remove(0);
            let len = wire(&frames).len();
            move || {
                let mut got = vec![0; len];
                client.read_exact(&mut got).unwrap();
                got
            }
        });
        let socket = peers[0].outbox();
        let mut at = (0, offset);
        while at.0 < left.len() {
            at = match socket_write(&peers[0], &left, at) {
                Some(at) => at,
                None => {
                    std::thread::sleep(Duration::from_millis(1));
                    at
                }
            };
        }
        socket.written(left.iter().map(Frame::len).sum());
        assert_eq!(reader.join().unwrap(), wire(&frames));
        let mut other = vec![0; frames[0].len()];
        clients[0].read_exact(&mut other).unwrap();
        assert_eq!(other, frames[0].wire());
    }

    /// One direct write through the peer's socket, as the connection's socket writer makes.
    fn socket_write(peer: &Peer, frames: &[Frame], at: Position) -> Option<Position> {
        let socket = peer.outbox().socket_for_tests();
        let (next, offset) = socket.write_now(&frames[at.0..], at.1).unwrap();
        let moved = (at.0 + next, offset);
        (moved != at).then_some(moved)
    }

    #[test]
    fn a_busy_socket_writer_keeps_its_socket_and_its_order() {
        let how = through_ring();
        let (peers, mut clients) = peers(2);
        let a = Frame::new("\"a\"".into());
        let b = Frame::new("\"b\"".into());
        peers[0].queue(std::slice::from_ref(&a));
        // The connection's socket writer took `a` and has not written it yet.
        let (taken, _) = peers[0].outbox().take(10);
        peers[0].queue(std::slice::from_ref(&b));
        peers[1].queue(std::slice::from_ref(&b));
        write_round(&peers, how);
        // `b` waited behind `a` rather than overtake it.
        let mut got = vec![0; b.len()];
        clients[1].read_exact(&mut got).unwrap();
        assert_eq!(got, b.wire());
        assert!(socket_write(&peers[0], &taken, (0, 0)).is_some());
        peers[0].outbox().written(a.len());
        write_round(&peers, how);
        let mut got = vec![0; a.len() + b.len()];
        clients[0].read_exact(&mut got).unwrap();
        assert_eq!(got, wire(&[a, b]));
    }

    #[test]
    fn a_socket_whose_client_is_gone_kicks_its_connection() {
        let how = through_ring();
        let (peers, clients) = peers(2);
        drop(clients);
        let frame = Frame::new("x".repeat(1000));
        for _ in 0..50 {
            for peer in &peers {
                peer.queue(std::slice::from_ref(&frame));
            }
            write_round(&peers, how);
            if peers.iter().all(|p| p.outbox().kick().is_kicked()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("writing to a closed connection never failed");
    }
}
