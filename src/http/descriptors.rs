//! Open-file descriptors: how many sockets the server may hold, and what it
//! keeps in reserve so that running out never starves it.
//!
//! Every accepted socket is a descriptor. When the process reaches its
//! open-file limit, `accept` fails with EMFILE while clients keep queueing
//! in the kernel, and the server can open nothing else either (SQLite's
//! files, a new io_uring). So the accept loop holds at most
//! [`SocketBudget::sockets`] connections — the limit less [`RESERVE`] — and
//! answers the rest at once; and it keeps one spare descriptor, given up to
//! accept-and-close a waiting client should the limit be reached anyway
//! (descriptors used elsewhere in the process).

use std::fs::File;

use futures_util::FutureExt;
use tokio::net::TcpListener;

/// Descriptors never given to accepted sockets: the listeners, the runtime's
/// epoll and eventfds, io_uring rings, SQLite's database, WAL and shared
/// memory files per pooled connection, stdio, the spare, and the refusals
/// being answered at once (`server::REFUSALS_AT_ONCE`). An idle server holds
/// about 30; the rest is headroom.
pub const RESERVE: u64 = 128;

/// The fewest sockets the budget allows, whatever the limit says: below
/// this the server would refuse nearly everyone, which is a configuration
/// mistake better seen in the log than as an empty server.
const MIN_SOCKETS: u64 = 16;

/// The process's open-file limit and the sockets it leaves for connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBudget {
    /// The soft RLIMIT_NOFILE in effect.
    pub open_files: u64,
    /// Connections the accept loop may hold at once.
    pub sockets: usize,
}

impl SocketBudget {
    /// Raises the soft open-file limit to the hard one (the soft default of
    /// 1024 is a relic of `select`, which this server does not use), then
    /// reads it. Where the limit cannot be read, nothing is capped.
    pub fn of_this_process() -> Self {
        let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit");
                return Self {
                    open_files: u64::MAX,
                    sockets: usize::MAX,
                };
            }
        };
        Self::within(open_files)
    }

    /// The budget under a limit of `open_files` descriptors.
    pub fn within(open_files: u64) -> Self {
        let sockets = open_files.saturating_sub(RESERVE).max(MIN_SOCKETS);
        Self {
            open_files,
            sockets: usize::try_from(sockets).unwrap_or(usize::MAX),
        }
    }
}

/// One descriptor held in reserve (an open `/dev/null`) for when the limit
/// is reached anyway.
pub struct Spare(Option<File>);

impl Spare {
    pub fn new() -> Self {
        Self(File::open("/dev/null").ok())
    }

    /// Out of descriptors with a client waiting: frees the spare to accept
    /// that client and close it at once (it sees a closed connection, not a
    /// hang, and leaves the kernel's queue), then takes the spare back.
    /// Returns whether a client was shed.
    pub fn shed_one(&mut self, listener: &TcpListener) -> bool {
        self.0 = None;
        // The listener just reported a waiting connection, so one poll is
        // enough; `now_or_never` never waits.
        let shed = matches!(listener.accept().now_or_never(), Some(Ok(_)));
        self.0 = File::open("/dev/null").ok();
        shed
    }
}

impl Default for Spare {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an accept error means the process or the system is out of
/// descriptors (or of memory for socket buffers).
pub fn is_exhaustion(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_the_reserve_to_the_server() {
        assert_eq!(SocketBudget::within(256).sockets, 128);
        assert_eq!(SocketBudget::within(20_000).sockets, 19_872);
        assert_eq!(SocketBudget::within(64).sockets, 16);
    }
}
