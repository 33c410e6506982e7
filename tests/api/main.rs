//! Integration tests: the real server on port 0, driven by real WebSocket clients.

mod accounts;
mod helpers;
mod http;
mod idempotency;
mod identity;
mod limits;
mod names;
mod pacing;
mod persistence;
mod presence;
mod process;
mod properties;
mod protocol;
mod rfc6455;
mod room_lifecycle;
mod rooms;
mod server_facts;
mod transport;
mod wire;
mod ws_accounts;
