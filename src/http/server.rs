//! The accept loop: HTTP/1.1 over each accepted TCP connection, served by
//! hyper with the axum router, upgrades allowed.
//!
//! Not `axum::serve`: it wraps every socket in a private type (for HTTP/2
//! detection), so an upgraded WebSocket could not be taken back as the plain
//! `TcpStream` that `conn` reads and writes directly. The browser app and
//! the WebSocket need HTTP/1.1 only.
//!
//! Every accepted socket takes a place in the connection limits at once
//! (`AddressLimits::admit_socket`), before it has sent a byte: a client that
//! opens connections and stays silent is capped like one that upgrades. The
//! place travels with the request as a [`SocketPermit`], so the WebSocket
//! the connection becomes keeps it instead of taking a second one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use super::client_ip::TrustedProxies;
use super::descriptors::{self, Spare};
use super::ws::refusal_parts;
use crate::limits::{AddressLimits, Admission, ConnPermit};

/// Least time given for a request head once its first byte has come.
const MIN_HEAD_TIMEOUT: Duration = Duration::from_millis(100);
/// Pause after a failed accept (out of descriptors, typically) so the loop
/// does not spin while connections drain.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Accept failures are logged at most once per this interval, with how many
/// were not: a flood must not turn into a flood of log lines.
const ACCEPT_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// Connections refused at accept are answered (a 429 or 503 a client can
/// read) by at most this many tasks at once; beyond it they are closed
/// without an answer. Their descriptors come out of `descriptors::RESERVE`.
pub(super) const REFUSALS_AT_ONCE: usize = 32;
/// How long a refused connection is given to send its request head before
/// the answer: answering first would let the client's late request meet a
/// closed socket, and a reset instead of the answer.
const REFUSAL_READ_GRACE: Duration = Duration::from_millis(500);
/// Most bytes read from a refused connection.
const REFUSAL_READ_MAX: usize = 8 * 1024;

/// What the accept loop needs besides the router.
pub struct Settings {
    pub limits: Arc<AddressLimits>,
    pub trusted_proxies: Arc<TrustedProxies>,
    /// Longest a connection may take to send a request head.
    pub handshake_timeout: Duration,
}

/// A connection's place in the limits, in each of its requests'
/// extensions; the WebSocket upgrade takes it out (`ws.rs`). Shared because
/// hyper's connection task and the request handler both hold it.
#[derive(Clone)]
pub struct SocketPermit(pub Arc<Mutex<Option<ConnPermit>>>);

/// Accepts connections until `stop` fires, then lets requests in flight
/// finish (graceful HTTP shutdown) and returns once every HTTP connection is
/// done. Upgraded WebSockets are not HTTP connections any more: shutdown
/// closes them separately.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let mut spare = Spare::new();
    let mut failures = AcceptFailures::default();
    loop {
        let (tcp, remote) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    let shed = descriptors::is_exhaustion(&e) && spare.shed_one(&listener);
                    failures.record(&e, shed);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let counted = !settings.trusted_proxies.contains(remote.ip());
        let permit = match settings.limits.admit_socket(remote.ip(), counted) {
            Ok(permit) => permit,
            Err(refusal) => {
                // No permit, no wait for one: the socket is answered by a
                // bounded set of tasks, or closed now.
                if let Ok(slot) = refusals.clone().try_acquire_owned() {
                    connections.spawn(async move {
                        answer_refusal(tcp, refusal).await;
                        drop(slot);
                    });
                }
                continue;
            }
        };
        // Chat frames are small and latency matters: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        connections.spawn(serve_connection(
            tcp,
            remote,
            router.clone(),
            SocketPermit(Arc::new(Mutex::new(Some(permit)))),
            settings.handshake_timeout,
            stop.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    router: Router,
    permit: SocketPermit,
    handshake_timeout: Duration,
    stop: CancellationToken,
) {
    // Nothing is allocated for a connection before its first byte: hyper
    // takes an 8 KiB read buffer as soon as it reads, which made each
    // silent connection of a flood cost ~10 KiB instead of ~2.
    let started = Instant::now();
    // `peek`, not `readable`: a new socket may report readiness before
    // any byte has come.
    let mut byte = [0u8; 1];
    let first_byte = tokio::select! {
        peeked = tokio::time::timeout(handshake_timeout, tcp.peek(&mut byte)) => {
            matches!(peeked, Ok(Ok(n)) if n > 0)
        }
        () = stop.cancelled() => false,
    };
    if !first_byte {
        return;
    }
    // The deadline counts from accept: what is left of it for the head.
    let head_timeout = handshake_timeout
        .saturating_sub(started.elapsed())
        .max(MIN_HEAD_TIMEOUT);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        request.extensions_mut().insert(permit.clone());
        let mut router = router.clone();
        async move { router.call(request).await }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        // Runs from the moment hyper waits for a head, so it bounds a
        // silent new connection, a slow-loris head and an idle keep-alive.
        .header_read_timeout(head_timeout)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Reads what the refused client sends (up to its head, briefly), answers
/// with the refusal's status and closes.
async fn answer_refusal(mut tcp: TcpStream, refusal: Admission) {
    let mut head = Vec::with_capacity(1024);
    let read_head = async {
        let mut chunk = [0u8; 1024];
        while head.len() < REFUSAL_READ_MAX && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(REFUSAL_READ_GRACE, read_head).await,
        Ok(true)
    ) {
        return;
    }
    let (status, retry_after_secs, text) = refusal_parts(refusal);
    let response = format!(
        "HTTP/1.1 {} {}\r\nretry-after: {retry_after_secs}\r\ncontent-type: text/plain; \
         charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text.len(),
    );
    let _ = tokio::time::timeout(REFUSAL_READ_GRACE, async {
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// Logs accept failures once per [`ACCEPT_FAILURE_LOG_EVERY`].
#[derive(Default)]
struct AcceptFailures {
    last_logged: Option<Instant>,
    unlogged: u64,
    shed: u64,
}

impl AcceptFailures {
    fn record(&mut self, error: &std::io::Error, shed: bool) {
        self.unlogged += 1;
        self.shed += u64::from(shed);
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < ACCEPT_FAILURE_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            error = %error,
            failures = self.unlogged,
            shed = self.shed,
            "accept failed (failures and clients shed since the last such line)"
        );
        self.last_logged = Some(now);
        self.unlogged = 0;
        self.shed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_are_logged_once_per_interval_with_a_count() {
        let mut failures = AcceptFailures::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        failures.record(&emfile, true);
        // The first is logged at once; the next ones wait for the interval.
        assert_eq!((failures.unlogged, failures.shed), (0, 0));
        for _ in 0..159 {
            failures.record(&emfile, false);
        }
        assert_eq!(failures.unlogged, 159);
        failures.last_logged = Some(Instant::now() - ACCEPT_FAILURE_LOG_EVERY);
        failures.record(&emfile, false);
        assert_eq!(failures.unlogged, 0);
    }
}
