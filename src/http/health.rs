//! `GET /healthz` and `GET /metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use crate::storage::StorageError;

/// 200 when storage answers, 503 otherwise, saying what kind of failure
/// (the details are logged, not served).
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let Err(e) = state.hub.health().await else {
        return (StatusCode::OK, "ok\n");
    };
    tracing::warn!(error = &e as &dyn std::error::Error, "health check failed");
    let body = match e {
        StorageError::Unavailable { .. } => "storage unavailable\n",
        StorageError::Corrupt { .. } => "stored data cannot be read\n",
        StorageError::Conflict { .. } | StorageError::Invalid { .. } => "storage failing\n",
    };
    (StatusCode::SERVICE_UNAVAILABLE, body)
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
