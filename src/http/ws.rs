//! `GET /ws`: checks the Origin, then hands the upgraded socket to `conn`
//! with the place in the connection limits its TCP connection took at accept,
//! and the account its session cookie shows (an invalid or expired cookie
//! is no cookie: a guest).

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::AppState;
use super::accounts::{ApiError, session_token};
use super::server::SocketPermit;
use crate::conn;
use crate::identity::accounts::hash_token;
use crate::limits::Admission;
use crate::storage::StorageError;

/// Answers a WebSocket handshake (RFC 6455 §4.2) and hands the upgraded TCP
/// socket to `conn`. The socket is taken back from hyper as the plain
/// `TcpStream` it accepted, so a connection costs only what `conn` keeps.
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Extension(socket_permit): Extension<SocketPermit>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    if !state.origins.allow(headers) {
        return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused").into_response();
    }
    let accept = match handshake_accept(headers) {
        Ok(accept) => accept,
        Err(refusal) => return refusal,
    };
    let signed_in = match signed_in(&state, headers).await {
        Ok(signed_in) => signed_in,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let client = state.trusted_proxies.client_ip(remote.ip(), headers);
    // Taken only once admitted: a refused upgrade leaves the place with the
    // connection, which may go on as plain HTTP.
    let permit = {
        let mut slot = socket_permit.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(permit) = slot.as_mut() else {
            // A second upgrade request on a connection already upgrading.
            return (
                StatusCode::BAD_REQUEST,
                "this connection is already upgrading\n",
            )
                .into_response();
        };
        if let Err(refusal) = state.limits.admit_websocket(permit, client) {
            return refused(refusal);
        }
        slot.take().expect("checked above")
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let AppState {
        hub,
        conn_settings,
        limits,
        close_connections,
        connections,
        accounts,
        ..
    } = state;
    let connection = async move {
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
            conn::Who {
                accounts,
                signed_in,
            },
        )
        .await;
    };
    connections.spawn(connection);
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

/// The account of the request's session cookie. Registered under the
/// session before the session is checked (`identity::sessions`): a
/// revocation in between then closes the connection.
async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<conn::SignedIn>, StorageError> {
    let Some(token) = session_token(headers) else {
        return Ok(None);
    };
    let watch = state.accounts.sessions().register(hash_token(token));
    Ok(state
        .accounts
        .session(token)
        .await?
        .map(|session| conn::SignedIn { session, watch }))
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
    let (status, retry_after_secs, text) = refusal_parts(admission);
    (
        status,
        [(header::RETRY_AFTER, retry_after_secs.to_string())],
        text,
    )
        .into_response()
}

/// A refused connection's status, `Retry-After` seconds and text.
pub(super) fn refusal_parts(admission: Admission) -> (StatusCode, u64, &'static str) {
    match admission {
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
    }
}
