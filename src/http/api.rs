//! JSON endpoints for the join page, which needs the room list and the
//! server's names and limits before it has a WebSocket identity.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;

/// `GET /api/rooms`: `{"rooms":[{"name":"Chat Room","online":2},…]}`, the
/// hub's shared room list, serialized once per refresh, not per request.
pub async fn rooms(State(state): State<AppState>) -> Result<impl IntoResponse, StatusCode> {
    let list = state
        .hub
        .room_list()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        list.json.clone(),
    ))
}

/// `GET /api/info`: the server's names and limits (`server` in `welcome`),
/// serialized once at start. Needs no storage, so the join page can offer
/// the default rooms while the room list cannot be built.
pub async fn info(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.hub.server_info_json(),
    )
}
