//! Integration tests: the real server on port 0, driven by real WebSocket clients.

mod bench_smoke;
mod helpers;
mod http;
mod identity;
mod limits;
mod names;
mod pacing;
mod persistence;
mod process;
mod properties;
mod protocol;
mod rooms;
mod transport;
mod wire;
