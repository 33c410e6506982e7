//! The HTTP surface: `router()` assembles the WebSocket endpoint, the JSON
//! room list and server facts, accounts and their sessions (state-changing
//! `/api/` requests behind the origin check), health and the embedded
//! browser app, all
//! behind the security headers every response carries, the plain routes
//! behind a per-address request rate; `metrics_router()` serves `/metrics` on its own listener
//! (`--metrics-addr`, loopback by default), never on the public one.

mod accounts;
mod api;
mod assets;
mod client_ip;
mod descriptors;
mod health;
mod origin;
mod server;
mod ws;

pub use descriptors::SocketBudget;
pub use origin::AllowedOrigins;
pub use server::{Settings as ServeSettings, serve};

use std::sync::Arc;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::set_header::SetResponseHeaderLayer;

pub use client_ip::TrustedProxies;

use crate::conn;
use crate::hub::Hub;
use crate::identity::Accounts;
use crate::limits::AddressLimits;

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub conn_settings: conn::Settings,
    /// Connection counts and per-address rates.
    pub limits: Arc<AddressLimits>,
    /// Origins allowed to open WebSockets.
    pub origins: Arc<AllowedOrigins>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// Fires when connections must close (server shutdown).
    pub close_connections: CancellationToken,
    /// Tracks WebSocket connections so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Accounts, their sessions, and the live connections of each session
    /// (`accounts.sessions()`).
    pub accounts: Arc<Accounts>,
    /// The session cookie is `Secure` (the public URL is https).
    pub secure_cookies: bool,
}

/// The page may load only its own scripts, styles and images, talk only to
/// its own server, and never be framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/rooms", get(api::rooms))
        .route("/api/info", get(api::info))
        .route("/api/accounts", post(accounts::sign_up))
        .route(
            "/api/session",
            get(accounts::whoami)
                .post(accounts::sign_in)
                .delete(accounts::sign_out),
        )
        .route(
            "/api/sessions",
            axum::routing::delete(accounts::sign_out_everywhere),
        )
        .route("/api/account/password", post(accounts::change_password))
        .layer(DefaultBodyLimit::max(accounts::BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            accounts::require_same_origin,
        ))
        .route("/healthz", get(health::healthz))
        .fallback(get(assets::serve))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit_http_requests,
        ))
        // After the rate limit's layer, so not under it: upgrades have
        // limits of their own (`AddressLimits::admit_websocket`).
        .route("/ws", get(ws::upgrade))
        .with_state(state)
        .layer(header_layer(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::REFERRER_POLICY, "no-referrer"))
        .layer(header_layer(header::X_FRAME_OPTIONS, "DENY"))
}

/// `/metrics` alone, for the metrics listener: counts and timings tell an
/// attacker how busy the server is and what hurts it, so they are served
/// only where the operator chose (`--metrics-addr`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .with_state(state)
}

/// Plain HTTP requests, per client address (as named by a trusted proxy):
/// 429 with `Retry-After` beyond `--http-rate`/`--http-burst`.
async fn limit_http_requests(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let client = state
        .trusted_proxies
        .client_ip(remote.ip(), request.headers());
    match state.limits.http_request(client) {
        Ok(()) => next.run(request).await,
        Err(retry) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry.secs().max(1).to_string())],
            "too many requests from your address\n",
        )
            .into_response(),
    }
}

fn header_layer(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}
