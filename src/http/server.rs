//! The accept loop: HTTP/1.1 over each accepted TCP connection, served by
//! hyper with the axum router, upgrades allowed.
//!
//! Not `axum::serve`: it wraps every socket in a private type (for HTTP/2
//! detection), so an upgraded WebSocket could not be taken back as the plain
//! `TcpStream` that `conn` reads and writes directly. The browser app and
//! the WebSocket need HTTP/1.1 only.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// A client gets this long to send its request headers (slow-loris guard;
/// it also closes keep-alive connections that stay silent).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of descriptors, typically) so the loop
/// does not spin while connections drain.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until `stop` fires, then lets requests in flight
/// finish (graceful HTTP shutdown) and returns once every HTTP connection is
/// done. Upgraded WebSockets are not HTTP connections any more: shutdown
/// closes them separately.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let (tcp, remote) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Chat frames are small and latency matters: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        connections.spawn(serve_connection(tcp, remote, router.clone(), stop.clone()));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    router: Router,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        let mut router = router.clone();
        async move { router.call(request).await }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
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
