//! The hand-off between the commit task and the broker: what is published,
//! by whom, and what happens when publishing falls behind.
//!
//! The commit task never awaits the broker. It queues each finished commit
//! here — its messages as one [`RoomEvent`] per room, the senders whose
//! `sent` it queued, how many sends it settled — and goes on with the next
//! commit; the [`Publisher`], one task, publishes them in order and then
//! writes out whatever the senders' outboxes still hold (their `sent`,
//! when delivery did not take it along). Membership events from the
//! registry go through the same queue, so that a room's events leave in
//! the order they happened.
//!
//! **When publishing falls behind** (a slow or stalled remote broker): at
//! most [`PUBLISH_BACKLOG`] commits may be started and not yet published.
//! The commit task takes a place before it starts a commit, and the
//! publisher gives it back once that commit is published; with every place
//! taken, the commit task waits before starting its next commit
//! (`chatterpro_publish_waits` counts these waits). A stored message is
//! therefore never dropped from live delivery, and memory stays bounded:
//! while the commit task waits, sends queue up in front of it (at most
//! `--write-batch` × 4), and then senders wait in turn. Membership events
//! take no place: there are at most two per connection and room.
//!
//! With [`crate::broker::LocalBroker`], publishing is the delivery round
//! itself, so the backlog is normally empty.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::Peer;
use crate::broker::{Broker, RoomEvent};
use crate::metrics::Metrics;

/// Commits started and not yet published before the commit task waits.
/// Two are in flight when commits overlap deliveries; the rest absorb a
/// broker's hiccup without slowing commits.
pub const PUBLISH_BACKLOG: usize = 8;

/// The sending half, held by the commit task and the registry.
#[derive(Clone)]
pub struct Handoff {
    queue_tx: mpsc::UnboundedSender<Outbound>,
    places: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// The receiving half, run by [`Publisher`].
pub struct Publications(mpsc::UnboundedReceiver<Outbound>);

/// A bounded hand-off of `backlog` commits (see the module documentation).
pub fn handoff(backlog: usize, metrics: Arc<Metrics>) -> (Handoff, Publications) {
    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
    let handoff = Handoff {
        queue_tx,
        places: Arc::new(Semaphore::new(backlog)),
        metrics,
    };
    (handoff, Publications(queue_rx))
}

pub(super) enum Outbound {
    Commit(Commit),
    Membership(RoomEvent),
    /// Answered once everything queued before it is published.
    Drained(oneshot::Sender<()>),
}

/// One finished commit, to publish.
pub(super) struct Commit {
    /// One event per room, in the order the rooms came in the commit.
    pub events: Vec<RoomEvent>,
    /// Senders whose answers were queued, to write out after publishing.
    pub senders: Vec<Peer>,
    /// Sends the commit settled (stored, resent or failed).
    pub settled: u64,
    pub place: Place,
}

/// A commit's place in the backlog, given back when it is published.
pub(super) struct Place {
    _permit: OwnedSemaphorePermit,
}

impl Handoff {
    /// A place for the next commit if one is free.
    pub(super) fn try_place(&self) -> Option<Place> {
        let permit = self.places.clone().try_acquire_owned().ok()?;
        Some(Place { _permit: permit })
    }

    /// A place for the next commit, waiting while every place is taken.
    pub(super) async fn place(&self) -> Place {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Place { _permit: permit };
        }
        self.metrics.publish_waits.inc();
        let permit = self
            .places
            .clone()
            .acquire_owned()
            .await
            .expect("the backlog's semaphore is never closed");
        Place { _permit: permit }
    }

    /// Queues a finished commit for publishing.
    pub(super) fn commit(&self, commit: Commit) {
        self.metrics.publish_backlog.inc();
        if let Err(e) = self.queue_tx.send(Outbound::Commit(commit)) {
            // No publisher: shutting down after it stopped.
            self.metrics.publish_backlog.dec();
            drop(e);
        }
    }

    /// Queues a membership event (called under the registry's lock, so
    /// that events leave in the order the changes happened).
    pub(super) fn membership(&self, event: RoomEvent) {
        let _ = self.queue_tx.send(Outbound::Membership(event));
    }

    /// Resolves once everything queued so far is published.
    pub(super) async fn drained(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.queue_tx.send(Outbound::Drained(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
    }
}

/// The task that publishes what the hand-off carries, in order.
pub(super) struct Publisher {
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    /// Sends settled so far: a room's removal waits for it to reach the
    /// sends queued before it (`lifecycle`).
    pub settled: watch::Sender<u64>,
}

impl Publisher {
    /// Runs until every [`Handoff`] is dropped.
    pub(super) async fn run(self, Publications(mut queue_rx): Publications) {
        while let Some(outbound) = queue_rx.recv().await {
            match outbound {
                Outbound::Commit(commit) => self.publish_commit(commit).await,
                Outbound::Membership(event) => {
                    if let Err(e) = self.broker.publish(vec![event]).await {
                        tracing::warn!(error = %e, "publishing a membership change failed");
                    }
                }
                Outbound::Drained(done) => {
                    let _ = done.send(());
                }
            }
        }
        tracing::debug!("publisher stopped");
    }

    async fn publish_commit(&self, commit: Commit) {
        let Commit {
            events,
            senders,
            settled,
            place,
        } = commit;
        if !events.is_empty() {
            let publishing = Instant::now();
            if let Err(e) = self.broker.publish(events).await {
                // Stored, so nobody loses them: members catch up with `since`.
                tracing::error!(error = %e, "publishing a commit failed");
                self.metrics.publish_failures.inc();
            }
            self.metrics
                .publish_seconds
                .observe(publishing.elapsed().as_secs_f64());
        }
        for sender in senders {
            // Whatever the delivery did not take along (pacing held the
            // message, the sender left the room, or a remote broker
            // delivers later).
            sender.write_queued();
        }
        self.settled.send_modify(|n| *n += settled);
        self.metrics.publish_backlog.dec();
        drop(place);
    }
}
