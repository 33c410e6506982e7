//! ChatterPro: a real-time, multi-room chat server and the browser app it serves.
//!
//! Module map (dependencies point down this list, never up):
//! - [`app`]: builds everything from [`config`], binds, runs until shutdown.
//! - [`admin`]: `chatterpro admin …`, an operator's tasks on the server's database.
//! - [`bench`]: the `chatterpro bench` load generator (a client; uses nothing of the server).
//! - [`http`]: the accept loop (hyper, HTTP/1.1) and the router — WebSocket
//!   handshake, embedded assets, health, metrics.
//! - [`conn`]: one WebSocket session on its TCP socket, one task: a reader
//!   (frames decoded in `conn::wire`) and a writer for what the outbox could
//!   not write straight through (`hub::peer`).
//! - [`hub`]: names, rooms, presence and pacing, the commit task (group commit) and its publisher — who is where;
//!   a delivery round's socket writes batched through io_uring (`hub::batch`);
//!   removal of unused rooms (`hub::lifecycle`).
//! - [`identity`]: who someone is — guests' name claims and session tokens
//!   (the `NameClaims` trait; guests stored through `storage::GuestStore`).
//! - [`storage`]: the `MessageStore` and `GuestStore` traits and their SQLite implementation.
//! - [`broker`]: the `Broker` trait (room events between servers, its contract
//!   tests) and its in-process implementation.
//! - [`protocol`]: the wire format (requests, replies, error codes, limits).
//! - [`domain`]: validated names and texts, look-alike keys, author ids; [`frame`]: a server frame, encoded
//!   and WebSocket-framed once, shared by its recipients; [`clock`],
//!   [`metrics`], [`telemetry`].

pub mod admin;
pub mod app;
pub mod bench;
pub mod broker;
pub mod clock;
pub mod config;
pub mod conn;
pub mod domain;
pub mod frame;
pub mod http;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod storage;
pub mod telemetry;

pub use app::App;
pub use config::Config;
