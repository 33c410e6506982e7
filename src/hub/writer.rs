//! The writer: the one task that stores sends and then publishes them.
//!
//! Every accepted `send` is queued here. The writer takes whatever is queued
//! (up to a batch limit), stores it in one transaction — concurrent senders
//! share one commit and one fsync — and only then, in seq order, queues
//! `sent` to each sender and publishes each `message`. Because one task does
//! both, delivery order equals storage order for every member. Commits start
//! at most every `--commit-interval` (2 ms) once commits carry several sends:
//! under load the sends arriving meanwhile join the next commit, so the cost
//! of a transaction (its fsync, its hand-off to the storage thread) is shared
//! by more of them, while a trickle of sends is stored without waiting.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::recent::RecentMessages;
use super::{Frame, Peer};
use crate::broker::Broker;
use crate::clock;
use crate::domain::{MessageText, Nickname, RoomName};
use crate::metrics::Metrics;
use crate::protocol::{self, EncodedMessage, ErrorCode, Ref, ServerMsg, encode};
use crate::storage::{MessageStore, NewMessage};

/// One accepted send, waiting to be stored.
pub struct SendJob {
    pub room: RoomName,
    pub from: Nickname,
    pub text: MessageText,
    pub sender: Peer,
    pub r#ref: Option<Ref>,
    /// When the send was accepted (for `chatterpro_send_wait_seconds`).
    pub accepted: Instant,
}

pub struct Writer {
    pub recent: Arc<RecentMessages>,
    pub store: Arc<dyn MessageStore>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    pub batch_max: usize,
    /// Least time between the starts of two commits (see `--commit-interval`).
    pub commit_interval: Duration,
}

/// When the next commit may start, given when the last one started and how
/// many sends it carried. Under load — the last commit carried several — not
/// before the interval has passed, so that the sends arriving meanwhile share
/// one transaction, one fsync, one hand-off to the storage thread. A send
/// after a quiet spell, or a trickle of sends each alone in its commit, would
/// only be delayed by waiting: it is committed at once.
fn wait_until(last: Option<(Instant, usize)>, interval: Duration) -> Option<Instant> {
    let (started, carried) = last?;
    (carried > 1).then(|| started + interval)
}

impl Writer {
    /// Stores and publishes queued sends until `shutdown`; then refuses new
    /// ones and finishes everything already queued before returning.
    pub async fn run(self, mut jobs_rx: mpsc::Receiver<SendJob>, shutdown: CancellationToken) {
        let mut jobs = Vec::with_capacity(self.batch_max);
        let mut closing = false;
        let mut last_commit: Option<(Instant, usize)> = None;
        loop {
            tokio::select! {
                n = jobs_rx.recv_many(&mut jobs, self.batch_max) => {
                    if n == 0 {
                        break;
                    }
                    // Under load, wait out the interval so that the sends
                    // arriving meanwhile share this commit (see `wait_until`).
                    if let Some(at) = wait_until(last_commit, self.commit_interval)
                        && Instant::now() < at
                        && !closing
                    {
                        tokio::time::sleep_until(at).await;
                        while jobs.len() < self.batch_max {
                            let Ok(job) = jobs_rx.try_recv() else { break };
                            jobs.push(job);
                        }
                    }
                    last_commit = Some((Instant::now(), jobs.len()));
                    self.commit(&mut jobs).await;
                }
                () = shutdown.cancelled(), if !closing => {
                    closing = true;
                    jobs_rx.close();
                }
            }
        }
        tracing::debug!("writer stopped");
    }

    async fn commit(&self, jobs: &mut Vec<SendJob>) {
        let started = Instant::now();
        for job in jobs.iter() {
            self.metrics
                .send_wait
                .observe(started.duration_since(job.accepted).as_secs_f64());
        }
        let ts = clock::now_ms();
        let batch: Vec<NewMessage> = jobs
            .iter()
            .map(|job| NewMessage {
                room: job.room.clone(),
                id: uuid::Uuid::now_v7().to_string(),
                from: job.from.clone(),
                text: job.text.clone(),
                ts,
            })
            .collect();
        let stored = self.store.append(batch).await;
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match stored {
            Ok(stored) => {
                self.metrics.messages_stored.inc_by(stored.len() as u64);
                self.metrics.commits.inc();
                let mut frames = Vec::with_capacity(stored.len());
                let mut senders = Vec::with_capacity(stored.len());
                for (job, message) in jobs.drain(..).zip(stored) {
                    // Before publishing: a joiner that reads the tail after
                    // this gets the message in its reply, or live — never neither.
                    let encoded = EncodedMessage::new(&message);
                    self.recent.committed(&message, &encoded);
                    // Queued, not written yet: the sender is usually a member,
                    // and its `sent` then leaves in one write with its own
                    // copy of the message (and after it is stored, before it).
                    let sent = Frame::new(encode(
                        &ServerMsg::Sent {
                            room: message.room.clone(),
                            id: message.id.clone(),
                            seq: message.seq,
                            ts: message.ts,
                        },
                        job.r#ref.as_ref(),
                    ));
                    job.sender.queue(std::slice::from_ref(&sent));
                    let seq = message.seq;
                    let frame = Frame::message(protocol::encode_message(&encoded), seq);
                    frames.push((job.room, frame));
                    senders.push(job.sender);
                }
                // The whole commit at once: its deliveries, over however
                // many rooms, go out in one round of writes.
                let messages = frames.len();
                let publishing = Instant::now();
                if let Err(e) = self.broker.publish(frames).await {
                    // Stored, so nobody loses them: members catch up with `since`.
                    tracing::error!(error = %e, messages, "publish failed");
                }
                self.metrics
                    .publish_seconds
                    .observe(publishing.elapsed().as_secs_f64());
                for sender in senders {
                    // Whatever the delivery did not take along (pacing held
                    // the message, or the sender left the room).
                    sender.write_queued();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = jobs.len(), "storing messages failed");
                for job in jobs.drain(..) {
                    self.metrics.count_error(ErrorCode::Internal);
                    job.sender.push(Frame::new(encode(
                        &ServerMsg::error(ErrorCode::Internal, "the message could not be stored"),
                        job.r#ref.as_ref(),
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_commit_that_carried_several_sends_makes_the_next_wait() {
        let interval = Duration::from_millis(2);
        let started = Instant::now();
        assert_eq!(wait_until(None, interval), None, "the first commit");
        assert_eq!(wait_until(Some((started, 1)), interval), None, "a trickle");
        assert_eq!(
            wait_until(Some((started, 2)), interval),
            Some(started + interval),
            "under load"
        );
    }
}
