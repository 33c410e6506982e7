//! One WebSocket connection on a raw TCP socket: one task, two halves joined
//! with `join!` — a reader that turns client frames into hub calls (through
//! the connection's request handler, `handler`) and a socket writer for what the
//! connection's bounded outbox could not write straight through when it was
//! pushed (the socket was full, or the socket writer was busy).
//!
//! Why not a WebSocket library's stream type: a connection must cost as
//! little as possible while idle (thousands of them sit idle) and a
//! broadcast as little as possible per recipient. So reads are readiness
//! based and allocate only while bytes are being decoded (an idle connection
//! holds no buffer); frames arrive in the outbox already framed (see
//! [`Frame`]) and go out with one vectored write (`outbox`'s direct
//! writes), with no copy, no per-recipient UTF-8 check and no intermediate
//! buffer. tungstenite still
//! parses frame headers and builds control frames ([`wire`]), hyper still
//! does the HTTP handshake.
//!
//! Replies and room frames share the outbox, so a client sees them in the
//! order the hub queued them. Closing is always the socket writer's job: the reader,
//! the hub (slow consumer) and shutdown all ask for it through the
//! connection's [`Kick`].

mod handler;
mod wire;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, SendsInFlight};
use crate::identity::{Accounts, Session, SessionWatch};
use crate::limits::{AddressLimits, ConnPermit};
use crate::outbox::{Frame, Kick, Outbox, Peer, Position, WRITE_MAX, write_all, write_now};
use crate::protocol::{MAX_FRAME_BYTES, close};
use handler::Handler;
use wire::{Decoder, Incoming};

/// Per-connection settings from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Frames queued before the connection counts as too slow (`close::TRY_AGAIN_LATER`).
    pub outbox_capacity: usize,
    /// Bytes queued before the connection counts as too slow (`close::TRY_AGAIN_LATER`).
    pub outbox_bytes: usize,
    /// How often to ping; two intervals without a whole frame from the client close it.
    pub ping_interval: Duration,
    /// Longest a client may take to send one message, from its first byte
    /// to its last fragment (`close::POLICY_VIOLATION` past it).
    pub frame_timeout: Duration,
    /// Guests may say hello (`--guests`); otherwise only a connection
    /// signed in to an account has an identity.
    pub guests: bool,
}

/// Who a connection may be: `accounts` answers whether a guest's name is
/// an account's; `signed_in` is the account of the upgrade's session
/// cookie, if any.
pub struct Who {
    pub accounts: Arc<Accounts>,
    pub signed_in: Option<SignedIn>,
}

/// The account an upgrade's session cookie showed, and the connection's
/// registration under that session: revoking it closes the connection
/// with `close::SESSION_REVOKED`.
pub struct SignedIn {
    pub session: Session,
    pub watch: SessionWatch,
}

/// Bytes read at a time (more when a large frame is on its way).
const READ_CHUNK: usize = 4096;
/// How long the server waits for the client's close frame (or the end of
/// its stream) after its own.
const CLOSING_HANDSHAKE_GRACE: Duration = Duration::from_secs(2);
/// How long a connection being closed waits for the answers (`sent`) to
/// the sends it already handed to the commit task, so that its close frame does
/// not overtake their commit. A commit takes milliseconds; past this,
/// storage is stuck and the client resends with its nonces instead.
const ANSWERS_GRACE: Duration = Duration::from_secs(2);
/// How long a write already under way may go on after the connection was
/// told to close (a slow reader still gets its close code); past it the
/// socket is considered stuck and dropped without one.
const STALLED_WRITE_GRACE: Duration = Duration::from_secs(3);

/// Runs one connection until it closes. `pre_read` holds bytes the HTTP
/// layer read past the handshake. `close_all` asks every connection to
/// close with `close::GOING_AWAY` (server shutdown), after flushing what is queued. The
/// `permit` holds the connection's place in the connection limits.
///
/// Not an `async fn`: the connection's state is built here and moved into
/// the returned future once (an `async fn` would keep its arguments twice,
/// and every byte of this future is paid by every idle connection).
// Each argument is a separate owner's hand-off (HTTP layer, limits, shutdown).
#[allow(clippy::too_many_arguments)]
pub fn serve(
    stream: TcpStream,
    pre_read: Bytes,
    hub: Arc<Hub>,
    settings: Settings,
    permit: ConnPermit,
    address_limits: Arc<AddressLimits>,
    close_all: CancellationToken,
    who: Who,
) -> impl Future<Output = ()> + Send {
    // Shared with the outbox, which writes pushes straight through when
    // nothing is queued (`outbox::DirectWrite`).
    let stream = Arc::new(stream);
    let outbox = Arc::new(Outbox::with_socket(
        settings.outbox_capacity,
        settings.outbox_bytes,
        Some(stream.clone()),
    ));
    let peer = Peer::new(outbox.clone());
    let sends = Arc::new(SendsInFlight::default());
    let Who {
        accounts,
        signed_in,
    } = who;
    let account = signed_in.map(|SignedIn { session, watch }| {
        close_when_revoked(outbox.clone(), watch);
        session.account
    });
    let handler = Handler::new(
        hub.clone(),
        peer.clone(),
        address_limits,
        permit.ip(),
        sends.clone(),
        handler::Identities {
            accounts,
            account,
            guests: settings.guests,
        },
    );
    let mut connection = Connection {
        stream,
        reader: Reader {
            // `pre_read` shares the HTTP layer's whole read buffer (8 KiB):
            // copied and dropped here, not kept for the connection's life.
            input: BytesMut::from(&pre_read[..]),
            decoder: Decoder::default(),
            frame_timeout: settings.frame_timeout,
            message_deadline: None,
            handler: Some(handler),
            close_all,
        },
        socket_writer: SocketWriter {
            ping_interval: settings.ping_interval,
        },
        shared: Shared {
            outbox,
            peer,
            heard: AtomicBool::new(false),
            sends,
        },
        _gauge: ConnectionGauge::new(&hub),
        hub,
        _permit: permit,
    };
    async move { connection.run().await }
}

/// Closes the connection with `close::SESSION_REVOKED` once its session
/// is revoked. A task of its own, so that only signed-in connections pay
/// for the watch; it ends (dropping the registration) when the connection
/// is kicked, which every connection is as it ends.
fn close_when_revoked(outbox: Arc<Outbox>, watch: SessionWatch) {
    tokio::spawn(async move {
        let kick = outbox.kick();
        tokio::select! {
            () = watch.revoked() => kick.kick(close::SESSION_REVOKED, "signed out"),
            () = kick.kicked() => {}
        }
    });
}

/// Everything one connection owns, in one place (the task's future).
struct Connection {
    stream: Arc<TcpStream>,
    reader: Reader,
    socket_writer: SocketWriter,
    shared: Shared,
    hub: Arc<Hub>,
    _gauge: ConnectionGauge,
    /// The connection's place in the connection limits, held to the end.
    _permit: ConnPermit,
}

/// What the reader and the socket writer both use.
struct Shared {
    outbox: Arc<Outbox>,
    /// The connection's own handle, for pongs.
    peer: Peer,
    /// Set by the reader whenever bytes arrive; the heartbeat clears it.
    heard: AtomicBool,
    /// Sends handed to the commit task and not answered yet.
    sends: Arc<SendsInFlight>,
}

struct Reader {
    /// Bytes read and not yet decoded; unallocated while idle.
    input: BytesMut,
    decoder: Decoder,
    frame_timeout: Duration,
    /// When the message being received (a partial frame in `input`, or a
    /// fragmented message begun) must be complete; `None` between messages.
    /// Without it a client could hold a 64 KiB buffer open forever by
    /// sending a frame one byte at a time.
    message_deadline: Option<Instant>,
    /// Dropped when reading ends: the connection leaves its rooms then.
    handler: Option<Handler>,
    close_all: CancellationToken,
}

/// The connection's socket writer: writes what the outbox could not write
/// through, pings, and sends the close frame.
struct SocketWriter {
    ping_interval: Duration,
}

impl Connection {
    async fn run(&mut self) {
        let Self {
            stream,
            reader,
            socket_writer,
            shared,
            ..
        } = self;
        // Two halves in one task: the socket writer keeps draining the outbox while
        // the reader awaits the hub. Both end once the connection is kicked.
        let stream = &**stream;
        let (end, closed_sent) = tokio::join!(
            reader.run(stream, shared),
            socket_writer.run(stream, shared)
        );
        shared.outbox.close();
        // The client may still be talking; wait for its close frame so the
        // socket is not reset (a reset discards what is still on its way).
        let violated = matches!(end, ReadEnd::Violation(_));
        if closed_sent && (violated || matches!(end, ReadEnd::Kicked)) {
            Box::pin(reader.finish_closing_handshake(stream, violated)).await;
        }
        // Only the server's own closes are counted: a client's code echoed
        // back is the client's choice (and would let it mint metric labels).
        if let Some((code, _)) = shared.outbox.kick().reason()
            && code != close::NORMAL
            && !matches!(end, ReadEnd::ClientClosed(Some(echoed)) if echoed == code)
        {
            self.hub.metrics().count_close(code);
        }
    }
}

/// Why the reader stopped.
#[derive(Debug, Clone, Copy)]
enum ReadEnd {
    /// The client closed the TCP connection, or reading failed.
    Gone,
    /// The client sent its close frame, with this status code if any.
    ClientClosed(Option<u16>),
    /// The client broke the WebSocket rules.
    Violation(wire::Violation),
    /// Something else asked the connection to close.
    Kicked,
}

impl Reader {
    /// Reads until the connection ends, then asks the socket writer to finish
    /// with the most specific code (the handler is gone by then: rooms left,
    /// name released).
    async fn run(&mut self, stream: &TcpStream, shared: &Shared) -> ReadEnd {
        let end = self.read_loop(stream, shared).await;
        self.handler = None;
        let kick = shared.outbox.kick();
        match end {
            ReadEnd::Violation(v) => kick.kick(v.code, v.reason),
            // RFC 6455 §5.5.1: the answer to a close frame echoes its code.
            ReadEnd::ClientClosed(code) => kick.kick(code.unwrap_or(close::NORMAL), ""),
            ReadEnd::Gone | ReadEnd::Kicked => kick.kick(close::NORMAL, ""),
        }
        end
    }

    async fn read_loop(&mut self, stream: &TcpStream, shared: &Shared) -> ReadEnd {
        let kick = shared.outbox.kick();
        let Some(handler) = self.handler.as_mut() else {
            return ReadEnd::Kicked;
        };
        loop {
            loop {
                let item = match self.decoder.next(&mut self.input) {
                    Ok(Some(item)) => item,
                    Ok(None) => break,
                    Err(violation) => return ReadEnd::Violation(violation),
                };
                // A whole frame is a sign of life, pongs included; bytes
                // trickling in are not (see `message_deadline`).
                shared.heard.store(true, Ordering::Relaxed);
                if !self.decoder.in_message() {
                    // A message or a control frame between messages is
                    // complete: the next one gets time of its own.
                    self.message_deadline = None;
                }
                match item {
                    Incoming::Text(text) => {
                        let text = std::str::from_utf8(&text).expect("the decoder checked UTF-8");
                        // Boxed: handling a request awaits storage and the
                        // hub, a deep future that would otherwise sit in
                        // every idle connection's task.
                        Box::pin(handler.handle(text)).await;
                        if kick.is_kicked() {
                            return ReadEnd::Kicked;
                        }
                    }
                    Incoming::Ping(payload) => {
                        shared.peer.push(Frame::pong(payload));
                    }
                    Incoming::Pong => {}
                    Incoming::Close(code) => return ReadEnd::ClientClosed(code),
                }
            }
            if self.input.is_empty() && !self.decoder.in_message() {
                // An idle connection holds no read buffer.
                self.input = BytesMut::new();
            } else if self.message_deadline.is_none() {
                self.message_deadline = Some(Instant::now() + self.frame_timeout);
            }
            let close_all = &self.close_all;
            let woken = match self.message_deadline {
                // The same as `wake`, written out: an idle connection's
                // task is smaller without a call's copy of its arguments.
                None => tokio::select! {
                    () = kick.kicked() => Woken::Kicked,
                    () = close_all.cancelled() => Woken::ShuttingDown,
                    ready = stream.readable() => match ready {
                        Ok(()) => Woken::Readable,
                        Err(_) => Woken::Gone,
                    },
                },
                // Boxed: only a connection in the middle of a message pays
                // for a timer; an idle one holds none.
                Some(deadline) => {
                    let woken = tokio::time::timeout_at(deadline, wake(kick, close_all, stream));
                    match Box::pin(woken).await {
                        Ok(woken) => woken,
                        Err(_) => return ReadEnd::Violation(MESSAGE_TOO_SLOW),
                    }
                }
            };
            match woken {
                Woken::Readable => {}
                Woken::Kicked => return ReadEnd::Kicked,
                Woken::ShuttingDown => {
                    kick.kick(close::GOING_AWAY, "server shutting down");
                    return ReadEnd::Kicked;
                }
                Woken::Gone => return ReadEnd::Gone,
            }
            match read_some(stream, &mut self.input) {
                Ok(0) => return ReadEnd::Gone,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return ReadEnd::Gone,
            }
        }
    }

    /// Reads what the client still sends until its close frame or the end of
    /// the stream, and drops it. Dropping a socket with unread data makes
    /// the kernel reset the connection, and a reset discards our close frame
    /// and whatever was still on its way to the client.
    ///
    /// After a violation (`violated`), the bytes in hand are the offending
    /// frame and what followed it: they are dropped unread, never decoded
    /// again. Whenever the frames cannot be told apart (a violation, or
    /// garbage after it), what is in hand is dropped and the close frame is
    /// looked for in what arrives next: a client answering our close frame
    /// sends its own in a later write.
    async fn finish_closing_handshake(&mut self, stream: &TcpStream, violated: bool) {
        if violated {
            self.input.clear();
            self.decoder = Decoder::default();
        }
        let drain = async {
            loop {
                loop {
                    match self.decoder.next(&mut self.input) {
                        Ok(Some(Incoming::Close(_))) => return,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => {
                            self.input.clear();
                            self.decoder = Decoder::default();
                            break;
                        }
                    }
                }
                if stream.readable().await.is_err() {
                    return;
                }
                match read_some(stream, &mut self.input) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSING_HANDSHAKE_GRACE, drain).await;
    }
}

/// Waits until the socket has bytes, the connection is kicked or the server
/// shuts down.
async fn wake(kick: &Kick, close_all: &CancellationToken, stream: &TcpStream) -> Woken {
    tokio::select! {
        () = kick.kicked() => Woken::Kicked,
        () = close_all.cancelled() => Woken::ShuttingDown,
        ready = stream.readable() => match ready {
            Ok(()) => Woken::Readable,
            Err(_) => Woken::Gone,
        },
    }
}

/// What woke an idle reader.
enum Woken {
    Readable,
    Kicked,
    ShuttingDown,
    Gone,
}

/// A message (all its fragments) not complete within `--frame-timeout`.
const MESSAGE_TOO_SLOW: wire::Violation = wire::Violation {
    code: close::POLICY_VIOLATION,
    reason: "message not completed in time",
};

/// Reads what the socket has, growing `input` for a large frame on its way.
fn read_some(stream: &TcpStream, input: &mut BytesMut) -> io::Result<usize> {
    let wanted = Decoder::wanted(input).clamp(READ_CHUNK, MAX_FRAME_BYTES + 14);
    input.reserve(wanted);
    stream.try_read_buf(input)
}

/// What the socket writer does next.
enum Work {
    /// Frames the outbox could not write through.
    Frames,
    Stop,
}

impl SocketWriter {
    /// Writes until the connection is told to close, then flushes (only the
    /// answers, if the client is too slow) and sends the close frame.
    /// Returns whether the close frame went out.
    async fn run(&mut self, stream: &TcpStream, shared: &Shared) -> bool {
        let outbox = &*shared.outbox;
        let kick = outbox.kick();
        let interval = self.ping_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut silent_intervals = 0;
        loop {
            let work = tokio::select! {
                biased;
                () = kick.kicked() => Work::Stop,
                () = outbox.ready() => Work::Frames,
                _ = heartbeat.tick() => {
                    if shared.heard.swap(false, Ordering::Relaxed) {
                        silent_intervals = 0;
                    } else {
                        silent_intervals += 1;
                    }
                    if silent_intervals >= 2 {
                        kick.kick(close::PING_TIMEOUT, "ping timeout");
                        Work::Stop
                    } else {
                        // Through the outbox: only one party writes at a time.
                        shared.peer.push(Frame::ping());
                        continue;
                    }
                }
            };
            if let Work::Stop = work {
                break;
            }
            let (frames, offset) = outbox.take(WRITE_MAX);
            if frames.is_empty() {
                continue;
            }
            let written = match write_now(stream, &frames, (0, offset)) {
                Ok(None) => Ok(()),
                // The socket is full: wait for it (boxed, this slow path
                // takes no room in an idle connection's task).
                Ok(Some(rest)) => Box::pin(write_rest(stream, &frames, rest, kick)).await,
                Err(e) => Err(e),
            };
            if written.is_err() {
                kick.kick(close::NORMAL, "");
                return false;
            }
            outbox.written(frames.iter().map(Frame::len).sum());
        }
        let (code, _) = kick.reason().unwrap_or((close::NORMAL, ""));
        if awaits_answers(code) && shared.sends.count() > 0 {
            // Their `sent`s join the queue flushed before the close frame.
            let _ = tokio::time::timeout(ANSWERS_GRACE, shared.sends.all_answered()).await;
        }
        Box::pin(finish(stream, outbox)).await
    }
}

/// Whether a connection closing with `code` first waits for the answers to
/// its sends in flight: when it is closed on purpose — abuse
/// (`POLICY_VIOLATION`), slowness (`TRY_AGAIN_LATER`), shutdown
/// (`GOING_AWAY`), a broken rule (`UNSUPPORTED_DATA`, `TOO_BIG`) — and may
/// still read them. Not when the client left (`NORMAL`) or went silent
/// (`PING_TIMEOUT`). Codes are [`close`]'s.
fn awaits_answers(code: u16) -> bool {
    !matches!(code, close::NORMAL | close::PING_TIMEOUT)
}

/// After the kick: flushes what is queued and sends the close frame, within
/// the grace a stuck socket gets. A slow consumer (`TRY_AGAIN_LATER`) gets
/// only the answers to its own requests ([`Frame::answer`]: `sent`,
/// `error`), so that its client knows what to resend; its room frames are
/// dropped (it resumes them with `since`), and so is any other reply.
async fn finish(stream: &TcpStream, outbox: &Outbox) -> bool {
    let (code, reason) = outbox.kick().reason().unwrap_or((close::NORMAL, ""));
    let answers_only = code == close::TRY_AGAIN_LATER;
    let flush = async {
        loop {
            let (mut frames, offset) = outbox.take(WRITE_MAX);
            if frames.is_empty() {
                if outbox.claimed() {
                    // A round's write through io_uring on another thread has
                    // this socket for a moment (it started before the kick):
                    // the close frame must not land in the middle of its bytes.
                    tokio::task::yield_now().await;
                    continue;
                }
                break;
            }
            let taken = frames.iter().map(Frame::len).sum();
            if answers_only {
                // The frame a direct write left half-way is finished
                // whatever it is, so that nothing lands inside it.
                let mut started = offset > 0;
                frames.retain(|frame| std::mem::take(&mut started) || frame.is_answer());
            }
            write_all(stream, &frames, (0, offset)).await?;
            outbox.written(taken);
        }
        write_all(stream, &[Frame::close(code, reason)], (0, 0)).await
    };
    matches!(
        tokio::time::timeout(STALLED_WRITE_GRACE, flush).await,
        Ok(Ok(()))
    )
}

/// Finishes a write the socket could not take at once. A client that stopped
/// reading can block it forever; once the connection is told to close, it
/// gets a moment, then the write fails.
async fn write_rest(
    stream: &TcpStream,
    frames: &[Frame],
    at: Position,
    kick: &Kick,
) -> io::Result<()> {
    let stalled = async {
        kick.kicked().await;
        tokio::time::sleep(STALLED_WRITE_GRACE).await;
    };
    tokio::select! {
        written = write_all(stream, frames, at) => written,
        () = stalled => Err(io::ErrorKind::TimedOut.into()),
    }
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
