//! One WebSocket session on a raw TCP socket: one task, two halves joined
//! with `join!` — a reader that turns client frames into hub calls and a
//! writer that drains the connection's bounded outbox onto the socket.
//!
//! Why not a WebSocket library's stream type: a connection must cost as
//! little as possible while idle (thousands of them sit idle) and a
//! broadcast as little as possible per recipient. So reads are readiness
//! based and allocate only while bytes are being decoded (an idle connection
//! holds no buffer); frames arrive in the outbox already framed (see
//! [`Frame`]) and go out with one vectored write per wake-up, with no copy,
//! no per-recipient UTF-8 check and no intermediate buffer. tungstenite still
//! parses frame headers and builds control frames ([`wire`]), hyper still
//! does the HTTP handshake.
//!
//! Replies and room frames share the outbox, so a client sees them in the
//! order the hub queued them. Closing is always the writer's job: the reader,
//! the hub (slow consumer) and shutdown all ask for it through the
//! connection's [`Kick`].

mod session;
mod wire;

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::hub::{Frame, Hub, Kick, OutboxBudget, Peer};
use crate::limits::{AddressLimits, ConnPermit};
use crate::protocol::{MAX_FRAME_BYTES, close};
use session::Session;
use wire::{Decoder, Incoming};

/// Per-connection settings from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Frames queued before the connection counts as too slow (1013).
    pub outbox_capacity: usize,
    /// Bytes queued before the connection counts as too slow (1013).
    pub outbox_bytes: usize,
    /// How often to ping; two intervals without hearing from the client close it.
    pub ping_interval: Duration,
}

/// Most frames taken off the outbox for one vectored write (well under the
/// kernel's 1024-slice limit; 256 small frames are ~50 KiB).
const COALESCE_MAX: usize = 256;
/// Bytes read at a time (more when a large frame is on its way).
const READ_CHUNK: usize = 4096;
/// How long the server waits for the client's close frame after its own.
const CLOSING_HANDSHAKE_GRACE: Duration = Duration::from_secs(2);
/// How long a write already under way may go on after the connection was
/// told to close (a slow reader still gets its close code); past it the
/// socket is considered stuck and dropped without one.
const STALLED_WRITE_GRACE: Duration = Duration::from_secs(3);

/// Runs one connection until it closes. `pre_read` holds bytes the HTTP
/// layer read past the handshake. `close_all` asks every connection to
/// close with 1001 (server shutdown), after flushing what is queued. The
/// `permit` holds the connection's place in the connection limits.
pub async fn serve(
    stream: TcpStream,
    pre_read: Bytes,
    hub: Arc<Hub>,
    settings: Settings,
    permit: ConnPermit,
    address_limits: Arc<AddressLimits>,
    close_all: CancellationToken,
) {
    let metrics_guard = ConnectionGauge::new(&hub);
    let (outbox_tx, outbox_rx) = mpsc::channel(settings.outbox_capacity);
    let kick = Arc::new(Kick::default());
    let budget = Arc::new(OutboxBudget::new(settings.outbox_bytes));
    let peer = Peer::new(outbox_tx, budget.clone(), kick.clone());
    let heard = AtomicBool::new(false);
    let mut input = BytesMut::from(&pre_read[..]);
    let mut decoder = Decoder::default();

    let reader = async {
        let session = Session::new(hub.clone(), peer.clone(), address_limits, permit.ip());
        let end = read_loop(
            &stream,
            &mut input,
            &mut decoder,
            session,
            &peer,
            &kick,
            &heard,
            &close_all,
        )
        .await;
        // The session is gone (rooms left, name released); the writer
        // finishes with the most specific code asked for.
        match end {
            ReadEnd::Violation(v) => kick.kick(v.code, v.reason),
            _ => kick.kick(1000, ""),
        }
        end
    };
    let outbox = Outbox {
        rx: outbox_rx,
        budget,
    };
    let writer = write_loop(&stream, outbox, &kick, &heard, settings.ping_interval);
    let (end, closed_sent) = tokio::join!(reader, writer);
    drop(peer);

    // The client may still be talking; wait for its close frame so the
    // socket is not reset (a reset discards what is still on its way).
    if closed_sent && matches!(end, ReadEnd::Kicked | ReadEnd::Violation(_)) {
        finish_closing_handshake(&stream, &mut input, &mut decoder).await;
    }
    if let Some((code, _)) = kick.reason()
        && code != 1000
    {
        hub.metrics().count_close(code);
    }
    drop(metrics_guard);
    drop(permit);
}

/// Why the reader stopped.
#[derive(Debug, Clone, Copy)]
enum ReadEnd {
    /// The client closed the TCP connection, or reading failed.
    Gone,
    /// The client sent its close frame.
    ClientClosed,
    /// The client broke the WebSocket rules.
    Violation(wire::Violation),
    /// Something else asked the connection to close.
    Kicked,
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    stream: &TcpStream,
    input: &mut BytesMut,
    decoder: &mut Decoder,
    mut session: Session,
    peer: &Peer,
    kick: &Kick,
    heard: &AtomicBool,
    close_all: &CancellationToken,
) -> ReadEnd {
    loop {
        loop {
            match decoder.next(input) {
                Ok(Some(Incoming::Text(text))) => {
                    let text = std::str::from_utf8(&text).expect("the decoder checked UTF-8");
                    session.handle(text).await;
                    if kick.is_kicked() {
                        return ReadEnd::Kicked;
                    }
                }
                Ok(Some(Incoming::Ping(payload))) => {
                    peer.push(Frame::pong(payload));
                }
                Ok(Some(Incoming::Pong)) => {}
                Ok(Some(Incoming::Close)) => return ReadEnd::ClientClosed,
                Ok(None) => break,
                Err(violation) => return ReadEnd::Violation(violation),
            }
        }
        // An idle connection holds no read buffer.
        if input.is_empty() {
            *input = BytesMut::new();
        }
        tokio::select! {
            () = kick.kicked() => return ReadEnd::Kicked,
            () = close_all.cancelled() => {
                kick.kick(close::GOING_AWAY, "server shutting down");
                return ReadEnd::Kicked;
            }
            ready = stream.readable() => if ready.is_err() { return ReadEnd::Gone },
        }
        match read_some(stream, input) {
            Ok(0) => return ReadEnd::Gone,
            // Any frame counts as a sign of life, pongs included.
            Ok(_) => heard.store(true, Ordering::Relaxed),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return ReadEnd::Gone,
        }
    }
}

/// Reads what the socket has, growing `input` for a large frame on its way.
fn read_some(stream: &TcpStream, input: &mut BytesMut) -> io::Result<usize> {
    let wanted = Decoder::wanted(input).clamp(READ_CHUNK, MAX_FRAME_BYTES + 14);
    input.reserve(wanted);
    stream.try_read_buf(input)
}

/// Reads (and drops) what the client still sends until its close frame or
/// the end of the stream. Dropping a socket with unread data makes the kernel
/// reset the connection, and a reset discards our close frame and whatever
/// was still on its way to the client.
async fn finish_closing_handshake(stream: &TcpStream, input: &mut BytesMut, decoder: &mut Decoder) {
    let drain = async {
        loop {
            loop {
                match decoder.next(input) {
                    Ok(Some(Incoming::Close)) | Err(_) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            }
            if stream.readable().await.is_err() {
                return;
            }
            match read_some(stream, input) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSING_HANDSHAKE_GRACE, drain).await;
}

/// The receiving end of a connection's outbox, with its byte count. Bytes
/// stay counted until they are written to the socket, not merely taken off
/// the queue.
struct Outbox {
    rx: mpsc::Receiver<Frame>,
    budget: Arc<OutboxBudget>,
}

impl Outbox {
    /// Everything queued right now, up to [`COALESCE_MAX`] frames.
    fn take_queued(&mut self) -> Vec<Frame> {
        let mut batch = Vec::new();
        while batch.len() < COALESCE_MAX {
            match self.rx.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(_) => break,
            }
        }
        batch
    }
}

/// What the writer does next.
enum Work {
    /// Frames from the outbox (their bytes are counted in its budget).
    Frames(Vec<Frame>),
    Ping,
    Stop,
}

/// Writes until the connection is told to close, then flushes (unless the
/// client is too slow) and sends the close frame. Returns whether the close
/// frame went out.
async fn write_loop(
    stream: &TcpStream,
    mut outbox: Outbox,
    kick: &Kick,
    heard: &AtomicBool,
    ping_interval: Duration,
) -> bool {
    let mut heartbeat = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut silent_intervals = 0;
    loop {
        let mut batch = Vec::new();
        let work = tokio::select! {
            biased;
            () = kick.kicked() => Work::Stop,
            n = outbox.rx.recv_many(&mut batch, COALESCE_MAX) => {
                if n == 0 { Work::Stop } else { Work::Frames(batch) }
            }
            _ = heartbeat.tick() => {
                if heard.swap(false, Ordering::Relaxed) {
                    silent_intervals = 0;
                } else {
                    silent_intervals += 1;
                }
                if silent_intervals >= 2 {
                    kick.kick(close::PING_TIMEOUT, "ping timeout");
                    Work::Stop
                } else {
                    Work::Ping
                }
            }
        };
        let (frames, counted) = match work {
            Work::Stop => break,
            Work::Frames(frames) => (frames, true),
            Work::Ping => (vec![Frame::ping()], false),
        };
        // A client that stopped reading can block a write forever; once the
        // connection is told to close, give it a moment, then drop it.
        let stalled = async {
            kick.kicked().await;
            tokio::time::sleep(STALLED_WRITE_GRACE).await;
        };
        let written = tokio::select! {
            written = write_frames(stream, &frames) => written,
            () = stalled => return false,
        };
        if written.is_err() {
            kick.kick(1000, "");
            return false;
        }
        if counted {
            outbox.budget.release(frames.iter().map(Frame::len).sum());
        }
    }
    let (code, reason) = kick.reason().unwrap_or((1000, ""));
    // A slow consumer is cut off at once. Otherwise everything queued (the
    // last `sent`s and messages before a shutdown) is flushed first, within
    // the grace a stuck socket gets.
    let finish = async {
        if code != close::TRY_AGAIN_LATER {
            loop {
                let frames = outbox.take_queued();
                if frames.is_empty() {
                    break;
                }
                write_frames(stream, &frames).await?;
                outbox.budget.release(frames.iter().map(Frame::len).sum());
            }
        }
        write_frames(stream, &[Frame::close(code, reason)]).await
    };
    matches!(
        tokio::time::timeout(STALLED_WRITE_GRACE, finish).await,
        Ok(Ok(()))
    )
}

/// Writes every frame, with as few syscalls as the socket allows.
async fn write_frames(stream: &TcpStream, frames: &[Frame]) -> io::Result<()> {
    let mut next = 0;
    let mut offset = 0;
    while next < frames.len() {
        match write_some(stream, &frames[next..], offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut written) => {
                while written > 0 {
                    let left = frames[next].len() - offset;
                    if written >= left {
                        written -= left;
                        next += 1;
                        offset = 0;
                    } else {
                        offset += written;
                        written = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One vectored write of `frames`, the first from `offset` on.
fn write_some(stream: &TcpStream, frames: &[Frame], offset: usize) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); COALESCE_MAX];
    let count = frames.len().min(COALESCE_MAX);
    for (slice, frame) in slices.iter_mut().zip(&frames[..count]) {
        *slice = IoSlice::new(frame.wire());
    }
    slices[0] = IoSlice::new(&frames[0].wire()[offset..]);
    stream.try_write_vectored(&slices[..count])
}

/// Counts a connection in the gauge for exactly as long as it lives.
struct ConnectionGauge(Arc<Hub>);

impl ConnectionGauge {
    fn new(hub: &Arc<Hub>) -> Self {
        hub.metrics().connections.inc();
        Self(hub.clone())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.metrics().connections.dec();
    }
}
