//! JSON endpoints for the join page, which needs the room list before it has
//! a WebSocket identity.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::AppState;
use crate::protocol::RoomInfo;

#[derive(Serialize)]
pub struct Rooms {
    rooms: Vec<RoomInfo>,
}

/// `GET /api/rooms`: `{"rooms":[{"name":"Chat Room","online":2},…]}`.
pub async fn rooms(State(state): State<AppState>) -> Result<Json<Rooms>, StatusCode> {
    let rooms = state
        .hub
        .rooms()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(Json(Rooms { rooms }))
}
