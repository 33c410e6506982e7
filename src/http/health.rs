//! `GET /healthz` and `GET /metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use crate::hub::Unhealthy;

/// 200 when storage answers and the broker can deliver, 503 otherwise
/// (naming which failed; the cause goes to the log).
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.hub.health().await {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(e) => {
            tracing::warn!(error = %e, cause = %std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default(), "unhealthy");
            let body = match e {
                Unhealthy::Storage(_) => "storage unavailable\n",
                Unhealthy::Broker(_) => "broker unavailable\n",
            };
            (StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.hub.metrics().render(),
    )
}
