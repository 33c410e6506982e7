//! One WebSocket session: a reader loop that turns frames into hub calls, and
//! a writer task that drains the connection's bounded outbox onto the socket.
//!
//! Replies and room frames share the outbox, so a client sees them in the
//! order the hub queued them. The writer coalesces whatever is queued into
//! one flush. Closing is always the writer's job: the reader, the hub (slow
//! consumer) and shutdown all ask for it through the connection's [`Kick`].

mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::hub::{Frame, Hub, Kick, OutboxBudget, Peer};
use crate::limits::{AddressLimits, ConnPermit};
use crate::protocol::close;
use session::Session;

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

/// Most frames written before one flush (one `write` syscall, ideally).
const COALESCE_MAX: usize = 64;
/// How long a closing connection may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long the server waits for the client's close frame after its own.
const CLOSING_HANDSHAKE_GRACE: Duration = Duration::from_secs(2);
/// How long a write already under way may go on after the connection was
/// told to close (a slow reader still gets its close code); past it the
/// socket is considered stuck and dropped without one.
const STALLED_WRITE_GRACE: Duration = Duration::from_secs(3);

/// Runs one connection until it closes. `close_all` asks every connection to
/// close with 1001 (server shutdown), after flushing what is queued. The
/// `permit` holds the connection's place in the connection limits.
pub async fn serve(
    socket: WebSocket,
    hub: Arc<Hub>,
    settings: Settings,
    permit: ConnPermit,
    address_limits: Arc<AddressLimits>,
    close_all: CancellationToken,
) {
    let metrics_guard = ConnectionGauge::new(&hub);
    let (outbox_tx, outbox_rx) = mpsc::channel(settings.outbox_capacity);
    let kick = Arc::new(Kick::default());
    let ping = Arc::new(Notify::new());
    let budget = Arc::new(OutboxBudget::new(settings.outbox_bytes));
    let peer = Peer::new(outbox_tx, budget.clone(), kick.clone());
    let (sink, mut stream) = socket.split();
    let outbox = Outbox {
        rx: outbox_rx,
        budget,
    };
    let mut writer = tokio::spawn(write_loop(sink, outbox, kick.clone(), ping.clone()));

    let mut session = Session::new(hub.clone(), peer.clone(), address_limits, permit.ip());
    read_loop(
        &mut stream,
        &mut session,
        &kick,
        &ping,
        settings.ping_interval,
        &close_all,
    )
    .await;
    // Leaves the rooms and releases the name.
    drop(session);

    // Normal end: ask the writer to finish (it keeps an earlier, more specific code).
    kick.kick(1000, "");
    drop(peer);
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        tracing::debug!("connection writer did not finish in time");
        writer.abort();
    }
    finish_closing_handshake(&mut stream).await;
    if let Some((code, _)) = kick.reason()
        && code != 1000
    {
        hub.metrics().count_close(code);
    }
    drop(metrics_guard);
    drop(permit);
}

/// Reads (and drops) what the client still sends until its close frame or
/// the end of the stream. Dropping a socket with unread data makes the kernel
/// reset the connection, and a reset discards our close frame and whatever
/// was still on its way to the client.
async fn finish_closing_handshake(stream: &mut SplitStream<WebSocket>) {
    let drain = async {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Close(_) = message {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSING_HANDSHAKE_GRACE, drain).await;
}

async fn read_loop(
    stream: &mut SplitStream<WebSocket>,
    session: &mut Session,
    kick: &Kick,
    ping: &Notify,
    ping_interval: Duration,
    close_all: &CancellationToken,
) {
    let mut heartbeat = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        let next = tokio::select! {
            () = kick.kicked() => return,
            () = close_all.cancelled() => {
                kick.kick(close::GOING_AWAY, "server shutting down");
                return;
            }
            _ = heartbeat.tick() => {
                // Any frame counts as a sign of life, pongs included.
                if last_heard.elapsed() >= 2 * ping_interval {
                    kick.kick(close::PING_TIMEOUT, "ping timeout");
                    return;
                }
                ping.notify_one();
                continue;
            }
            next = stream.next() => next,
        };
        last_heard = Instant::now();
        match next {
            None | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Text(text))) => session.handle(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                kick.kick(close::UNSUPPORTED_DATA, "binary frames are not supported");
                return;
            }
            // Pings are answered by the WebSocket layer itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Err(e)) => {
                if is_too_big(e) {
                    kick.kick(close::TOO_BIG, "frame larger than 64 KiB");
                }
                return;
            }
        }
    }
}

fn is_too_big(e: axum::Error) -> bool {
    let inner = e.into_inner();
    matches!(
        inner.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// The receiving end of a connection's outbox, with its byte count. Bytes
/// stay counted until they are flushed to the socket, not merely taken off
/// the queue: frames handed to the WebSocket layer sit in its write buffer
/// until the peer reads.
struct Outbox {
    rx: mpsc::Receiver<Frame>,
    budget: Arc<OutboxBudget>,
}

impl Outbox {
    async fn recv(&mut self) -> Option<Frame> {
        self.rx.recv().await
    }

    fn try_recv(&mut self) -> Option<Frame> {
        self.rx.try_recv().ok()
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut outbox: Outbox,
    kick: Arc<Kick>,
    ping: Arc<Notify>,
) {
    loop {
        let written = tokio::select! {
            biased;
            () = kick.kicked() => break,
            () = ping.notified() => sink.send(Message::Ping(Default::default())).await,
            frame = outbox.recv() => {
                let Some(frame) = frame else { break };
                // A client that stopped reading can block a write forever;
                // once the connection is told to close, give it a moment, then drop it.
                let stalled = async {
                    kick.kicked().await;
                    tokio::time::sleep(STALLED_WRITE_GRACE).await;
                };
                tokio::select! {
                    written = write_batch(&mut sink, frame, &mut outbox) => written,
                    () = stalled => return,
                }
            }
        };
        if written.is_err() {
            kick.kick(1000, "");
            return;
        }
    }
    let (code, reason) = kick.reason().unwrap_or((1000, ""));
    // A slow consumer is cut off at once. Otherwise everything queued (the
    // last `sent`s and messages before a shutdown) is flushed first, within
    // the grace a stuck socket gets.
    if code != close::TRY_AGAIN_LATER {
        let flush_all = async {
            while let Some(frame) = outbox.try_recv() {
                write_batch(&mut sink, frame, &mut outbox).await?;
            }
            Ok::<(), axum::Error>(())
        };
        match tokio::time::timeout(STALLED_WRITE_GRACE, flush_all).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
    let close = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = sink.send(Message::Close(Some(close))).await;
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    first: Frame,
    outbox: &mut Outbox,
) -> Result<(), axum::Error> {
    let mut bytes = first.len();
    sink.feed(to_message(first)).await?;
    for _ in 1..COALESCE_MAX {
        match outbox.try_recv() {
            Some(frame) => {
                bytes += frame.len();
                sink.feed(to_message(frame)).await?;
            }
            None => break,
        }
    }
    sink.flush().await?;
    outbox.budget.release(bytes);
    Ok(())
}

fn to_message(frame: Frame) -> Message {
    // Frames are built from Strings, so this never fails; an empty frame would be a bug.
    let text = Utf8Bytes::try_from(frame.bytes().clone()).unwrap_or_default();
    Message::Text(text)
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
