//! `GET /ws`: checks the Origin, then hands the upgraded socket to `conn`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::AppState;
use crate::conn;
use crate::limits::Admission;

/// Answers a WebSocket handshake (RFC 6455 §4.2) and hands the upgraded TCP
/// socket to `conn`. The socket is taken back from hyper as the plain
/// `TcpStream` it accepted, so a connection costs only what `conn` keeps.
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    if !origin_allowed(headers, &state.allowed_origins) {
        return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused").into_response();
    }
    let accept = match handshake_accept(headers) {
        Ok(accept) => accept,
        Err(refusal) => return refusal,
    };
    let client = state.trusted_proxies.client_ip(remote.ip(), headers);
    let permit = match state.limits.admit(client) {
        Ok(permit) => permit,
        Err(refusal) => return refused(refusal),
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let AppState {
        hub,
        conn_settings,
        limits,
        close_connections,
        sessions,
        ..
    } = state;
    let session = async move {
        let Some((tcp, pre_read)) = take_socket(on_upgrade).await else {
            return;
        };
        conn::serve(
            tcp,
            pre_read,
            hub,
            conn_settings,
            permit,
            limits,
            close_connections,
        )
        .await;
    };
    sessions.spawn(session);
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response()
}

/// Waits for hyper to hand the connection over after the 101 response, and
/// takes it back as the TCP stream it accepted, with any bytes read past the
/// handshake.
async fn take_socket(on_upgrade: hyper::upgrade::OnUpgrade) -> Option<(TcpStream, Bytes)> {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket upgrade failed");
            return None;
        }
    };
    let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
        tracing::error!("an upgraded connection is not a TCP stream");
        return None;
    };
    Some((parts.io.into_inner(), parts.read_buf))
}

/// Checks the upgrade request and computes `Sec-WebSocket-Accept`.
#[allow(clippy::result_large_err)]
fn handshake_accept(headers: &HeaderMap) -> Result<HeaderValue, Response> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "this endpoint speaks WebSocket only\n",
        )
            .into_response());
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "WebSocket version 13 is required\n",
        )
            .into_response());
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err((StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing\n").into_response());
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok(HeaderValue::from_str(&accept).expect("base64 is a valid header value"))
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
