//! `GET /ws`: checks the Origin, then hands the upgraded socket to `conn`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::conn;
use crate::limits::Admission;
use crate::protocol::MAX_FRAME_BYTES;

/// Read buffer per connection. Client frames are small; a larger one grows
/// the buffer and is read in chunks of this size (a few more syscalls for a
/// long message, 3 KiB less per idle connection than 4 KiB).
const READ_BUFFER_BYTES: usize = 1024;
/// Frames are gathered up to this many bytes before a write to the socket.
const WRITE_COALESCE_BYTES: usize = 32 * 1024;

pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers, &state.allowed_origins) {
        return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused").into_response();
    }
    let permit = match state.limits.admit(remote.ip()) {
        Ok(permit) => permit,
        Err(refusal) => return refused(refusal),
    };
    let AppState {
        hub,
        conn_settings,
        limits,
        close_connections,
        sessions,
        ..
    } = state;
    // tungstenite reserves a 128 KiB read buffer per connection by default;
    // chat frames are small, so a small one (grown on demand for a large
    // frame) cuts idle memory per connection by an order of magnitude. The
    // write buffer is where queued frames are coalesced into one syscall, so
    // it stays big enough for a burst; it only grows as frames arrive.
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_COALESCE_BYTES)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| {
            sessions.track_future(conn::serve(
                socket,
                hub,
                conn_settings,
                permit,
                limits,
                close_connections,
            ))
        })
}

fn refused(admission: Admission) -> Response {
    let (status, retry_after_secs, text) = match admission {
        Admission::ServerFull => (
            StatusCode::SERVICE_UNAVAILABLE,
            5,
            "the server is at its connection limit\n",
        ),
        Admission::TooManyFromAddress => (
            StatusCode::TOO_MANY_REQUESTS,
            5,
            "too many connections from your address\n",
        ),
        Admission::TooFastFromAddress(retry) => (
            StatusCode::TOO_MANY_REQUESTS,
            retry.secs().max(1),
            "too many new connections from your address\n",
        ),
    };
    (
        status,
        [(header::RETRY_AFTER, retry_after_secs.to_string())],
        text,
    )
        .into_response()
}

/// Browsers always send `Origin` on WebSocket upgrades; a page on another
/// site must not be able to open a socket with this site's cookies
/// (cross-site WebSocket hijacking). Clients without `Origin` are not
/// browsers and are allowed.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let own = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    own.is_some_and(|o| o.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    #[test]
    fn same_origin_and_originless_are_allowed() {
        assert!(origin_allowed(&headers(None, "127.0.0.1:3000"), &[]));
        assert!(origin_allowed(
            &headers(Some("http://127.0.0.1:3000"), "127.0.0.1:3000"),
            &[]
        ));
        assert!(origin_allowed(
            &headers(Some("https://chat.example"), "chat.example"),
            &[]
        ));
    }

    #[test]
    fn cross_origin_is_refused_unless_listed() {
        let h = headers(Some("http://evil.example"), "127.0.0.1:3000");
        assert!(!origin_allowed(&h, &[]));
        assert!(origin_allowed(&h, &["http://evil.example".to_owned()]));
        assert!(!origin_allowed(
            &headers(Some("http://127.0.0.1:3000.evil.example"), "127.0.0.1:3000"),
            &[]
        ));
    }
}
