//! The bytes going out: everything between a server message and the socket.
//!
//! - `frame`: a server message encoded and WebSocket-framed once
//!   ([`Frame`]), shared by every recipient.
//! - `queue`: each connection's bounded queue of frames ([`Outbox`]) and
//!   what a push into it did ([`Pushed`]).
//! - `kick`: the connection's kill switch ([`Kick`]): a close code asked
//!   for, first request wins.
//! - `peer`: the cheap handle ([`Peer`], [`ConnId`]) the hub holds for a
//!   connection.
//! - `direct`: writes to one socket, made by whoever pushes when nobody
//!   else is writing ([`DirectWrite`]) and by the connection's socket writer.
//! - `uring`: a delivery round's socket writes handed to the kernel in one
//!   `io_uring_enter` ([`SocketWrites`], [`write_round`]) — the one module
//!   allowed `unsafe`, with its safety argument written there.
//!
//! The hub decides who gets which frame and hands them over through
//! [`Peer`]; `conn` owns the socket and runs the socket writer for what a push could
//! not write through. This module depends on neither (nor on `http`): only
//! on [`crate::protocol`] for close codes.

mod direct;
mod frame;
mod kick;
mod peer;
mod queue;
mod uring;

pub use direct::{DirectWrite, WRITE_MAX, write_all, write_now};
pub use frame::{Frame, Position, advance};
pub use kick::Kick;
pub use peer::{ConnId, Peer};
pub use queue::{Outbox, Pushed};
pub use uring::{RingSends, SocketWrites, write_round};
