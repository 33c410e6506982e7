//! ChatterPro: a real-time, multi-room chat server and the browser app it serves.
//!
//! Module map (dependencies point down this list, never up):
//! - [`app`]: builds everything from [`config`], binds, runs until shutdown.
//! - [`admin`]: `chatterpro admin …`, an operator's tasks on the server's database.
//! - [`allocator`]: gives a burst's freed memory back to the system when idle.
//! - [`http`]: the accept loop (hyper, HTTP/1.1) and the router — WebSocket
//!   handshake, accounts and their session cookie, embedded assets, health,
//!   metrics.
//! - [`conn`]: one WebSocket connection on its TCP socket, one task: a reader
//!   (frames decoded in `conn::wire`, requests handled in `conn::handler`)
//!   and a socket writer for what the outbox could not write straight through.
//! - [`hub`]: who is where, state only (never a socket): rooms, membership,
//!   the join gate, pacing and presence (`hub::registry`), the commit task
//!   (group commit) and its publisher, the recent tail, removal of unused
//!   rooms (`hub::lifecycle`).
//! - [`identity`]: who someone is — guests' name claims and reclaim tokens
//!   (the `NameClaims` trait; guests stored through `storage::GuestStore`),
//!   accounts, their passwords and sessions, and the live connections of
//!   each session (`storage::AccountStore`).
//! - [`storage`]: the `MessageStore`, `GuestStore`, `AccountStore` and
//!   `RoomAccessStore` traits and their SQLite implementation.
//! - [`broker`]: the `Broker` trait (room events between servers, its contract
//!   tests) and its in-process implementation.
//! - [`outbox`]: the bytes going out — server frames encoded and WebSocket-framed
//!   once, each connection's bounded queue and kill switch, direct socket writes,
//!   and a delivery round's writes handed to the kernel through io_uring.
//! - [`protocol`]: the wire format (requests, replies, error codes, close codes, limits).
//! - [`access`]: who may do what in which room — the authorization policy, a pure
//!   function of stored facts (depends only on [`domain`]).
//! - [`domain`]: validated names and texts, look-alike keys, author ids; [`clock`],
//!   [`metrics`], [`telemetry`].

pub mod access;
pub mod admin;
pub mod allocator;
pub mod app;
pub mod broker;
pub mod clock;
pub mod config;
pub mod conn;
pub mod domain;
pub mod http;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod storage;
pub mod telemetry;

pub use app::App;
pub use config::Config;
