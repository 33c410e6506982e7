//! The writer: the one task that stores sends and then publishes them.
//!
//! Every accepted `send` is queued here. The writer takes whatever is queued
//! (up to a batch limit), stores it in one transaction — concurrent senders
//! share one commit and one fsync — and only then, in seq order, queues
//! `sent` to each sender and publishes each `message`. Because one task does
//! both, delivery order equals storage order for every member. Commits start
//! at most every `--commit-interval` (2 ms): under load the sends arriving
//! meanwhile join the next commit, so the cost of a transaction (its fsync,
//! its hand-off to the storage thread) is shared by more of them.

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

impl Writer {
    /// Stores and publishes queued sends until `shutdown`; then refuses new
    /// ones and finishes everything already queued before returning.
    pub async fn run(self, mut jobs_rx: mpsc::Receiver<SendJob>, shutdown: CancellationToken) {
        let mut jobs = Vec::with_capacity(self.batch_max);
        let mut closing = false;
        let mut last_commit: Option<Instant> = None;
        loop {
            tokio::select! {
                n = jobs_rx.recv_many(&mut jobs, self.batch_max) => {
                    if n == 0 {
                        break;
                    }
                    // Under load, wait out the interval so that the sends
                    // arriving meanwhile share this commit (one transaction,
                    // one fsync, one hand-off to the storage thread); a
                    // send after a quiet spell is committed at once.
                    if let Some(last) = last_commit
                        && last.elapsed() < self.commit_interval
                        && !closing
                    {
                        tokio::time::sleep_until(last + self.commit_interval).await;
                        while jobs.len() < self.batch_max {
                            let Ok(job) = jobs_rx.try_recv() else { break };
                            jobs.push(job);
                        }
                    }
                    last_commit = Some(Instant::now());
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
        match self.store.append(batch).await {
            Ok(stored) => {
                self.metrics.messages_stored.inc_by(stored.len() as u64);
                self.metrics.commits.inc();
                for (job, message) in jobs.drain(..).zip(stored) {
                    // Before publishing: a joiner that reads the tail after
                    // this gets the message in its reply, or live — never neither.
                    let encoded = EncodedMessage::new(&message);
                    self.recent.committed(&message, &encoded);
                    // Queued, not written yet: the sender is usually a member,
                    // and its `sent` then leaves in one write with its own
                    // copy of the message.
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
                    if let Err(e) = self.broker.publish(&job.room, frame).await {
                        // Stored, so nobody loses it: members catch up with `since`.
                        tracing::error!(room = ?job.room.as_str(), error = %e, "publish failed");
                    }
                    // Whatever the delivery did not take along (pacing held
                    // the message, or the sender left the room).
                    job.sender.write_queued();
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
