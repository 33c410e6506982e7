//! A connection's kill switch: whoever decides it must close (the reader,
//! a full outbox, a failed write, shutdown) asks through it; the
//! connection's socket writer sends the close frame.

use std::sync::OnceLock;

use tokio::sync::Notify;

/// Asks a connection to close with a code; the first request wins.
#[derive(Debug, Default)]
pub struct Kick {
    reason: OnceLock<(u16, &'static str)>,
    kicked: Notify,
}

impl Kick {
    pub fn kick(&self, code: u16, reason: &'static str) {
        if self.reason.set((code, reason)).is_ok() {
            self.kicked.notify_waiters();
        }
    }

    /// Resolves once the connection has been kicked.
    pub async fn kicked(&self) {
        loop {
            let notified = self.kicked.notified();
            tokio::pin!(notified);
            // Registered before the check, so a kick in between is not missed.
            notified.as_mut().enable();
            if self.is_kicked() {
                return;
            }
            notified.await;
        }
    }

    pub fn is_kicked(&self) -> bool {
        self.reason.get().is_some()
    }

    /// The close code and reason asked for, if any.
    pub fn reason(&self) -> Option<(u16, &'static str)> {
        self.reason.get().copied()
    }
}
