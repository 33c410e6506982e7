//! Integration tests: the real server on port 0, driven by real WebSocket clients.

mod helpers;
mod http;
mod persistence;
mod protocol;
mod rooms;
mod transport;
