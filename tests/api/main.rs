//! Integration tests: the real server on port 0, driven by real WebSocket clients.

mod bench_smoke;
mod helpers;
mod http;
mod limits;
mod pacing;
mod persistence;
mod process;
mod properties;
mod protocol;
mod room_lifecycle;
mod rooms;
mod transport;
mod wire;
