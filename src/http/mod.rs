//! The HTTP surface: `router()` assembles the WebSocket endpoint, the JSON
//! room list, health and metrics, and the embedded browser app, all behind
//! the security headers every response carries.

mod api;
mod assets;
mod client_ip;
mod health;
mod server;
mod ws;

pub use server::serve;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::set_header::SetResponseHeaderLayer;

pub use client_ip::TrustedProxies;

use crate::conn;
use crate::hub::Hub;
use crate::limits::AddressLimits;

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub conn_settings: conn::Settings,
    /// Connection counts and per-address rates.
    pub limits: Arc<AddressLimits>,
    /// Origins allowed besides the server's own.
    pub allowed_origins: Arc<Vec<String>>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// Fires when connections must close (server shutdown).
    pub close_connections: CancellationToken,
    /// Tracks WebSocket sessions so shutdown can wait for them.
    pub sessions: TaskTracker,
}

/// The page may load only its own scripts, styles and images, talk only to
/// its own server, and never be framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/api/rooms", get(api::rooms))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
        .fallback(get(assets::serve))
        .with_state(state)
        .layer(header_layer(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::REFERRER_POLICY, "no-referrer"))
        .layer(header_layer(header::X_FRAME_OPTIONS, "DENY"))
}

fn header_layer(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}
