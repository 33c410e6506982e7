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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::recent::RecentMessages;
use super::{Frame, Peer};
use crate::broker::Broker;
use crate::clock;
use crate::domain::{AuthorId, MessageText, Nickname, RoomName};
use crate::metrics::Metrics;
use crate::protocol::{self, ChatMessage, EncodedMessage, ErrorCode, Ref, ServerMsg, encode};
use crate::storage::{MessageStore, NewMessage, StorageError};

/// One accepted send, waiting to be stored.
pub struct SendJob {
    pub room: RoomName,
    pub from: Nickname,
    pub author: AuthorId,
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

/// A commit handed to the store and not yet reported on, with the sends it carries.
struct InFlight<'a> {
    jobs: Vec<SendJob>,
    started: Instant,
    stored: StoreFuture<'a>,
}

type StoreFuture<'a> = Pin<Box<dyn Future<Output = StoreResult> + Send + 'a>>;
type StoreResult = Result<Vec<ChatMessage>, StorageError>;

impl Writer {
    /// Stores and publishes queued sends until `shutdown`; then refuses new
    /// ones and finishes everything already queued before returning.
    ///
    /// When the writer falls behind, commits are pipelined with deliveries:
    /// as a commit ends, the sends that queued up meanwhile are handed to
    /// the store at once, and only then are the finished commit's messages
    /// delivered — so the next commit's fsync and SQLite work overlap this
    /// one's socket writes instead of following them. Commits still run one
    /// after another, and their messages are delivered in commit order, by
    /// this one task.
    pub async fn run(self, mut jobs_rx: mpsc::Receiver<SendJob>, shutdown: CancellationToken) {
        let mut closing = false;
        let mut last_commit: Option<(Instant, usize)> = None;
        let mut in_flight: Option<InFlight<'_>> = None;
        // A published commit's emptied buffer, to gather the next one in
        // (two alternate while commits overlap deliveries).
        let mut spare: Vec<SendJob> = Vec::with_capacity(self.batch_max);
        loop {
            // A writer that stays behind never waits below, where `shutdown`
            // is also watched: it must still stop taking new sends.
            if !closing && shutdown.is_cancelled() {
                closing = true;
                jobs_rx.close();
            }
            let Some(InFlight {
                jobs,
                started,
                stored,
            }) = in_flight.take()
            else {
                // Nothing in flight: wait for sends.
                let mut jobs = std::mem::take(&mut spare);
                tokio::select! {
                    n = jobs_rx.recv_many(&mut jobs, self.batch_max) => {
                        if n == 0 {
                            break;
                        }
                    }
                    () = shutdown.cancelled(), if !closing => {
                        closing = true;
                        jobs_rx.close();
                        spare = jobs;
                        continue;
                    }
                }
                // Under load, wait out the interval so that the sends
                // arriving meanwhile share this commit (see `wait_until`).
                if let Some(at) = wait_until(last_commit, self.commit_interval)
                    && Instant::now() < at
                    && !closing
                {
                    tokio::time::sleep_until(at).await;
                    take_queued(&mut jobs_rx, &mut jobs, self.batch_max);
                }
                last_commit = Some((Instant::now(), jobs.len()));
                in_flight = Some(self.start_commit(jobs).await);
                continue;
            };
            let stored = stored.await;
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            // Behind (see `falling_behind`): the sends that arrived during
            // the commit start theirs now, before its deliveries are
            // written, if the interval allows.
            if falling_behind(jobs_rx.len(), self.batch_max)
                && wait_until(last_commit, self.commit_interval)
                    .is_none_or(|at| Instant::now() >= at)
            {
                let mut next = std::mem::take(&mut spare);
                take_queued(&mut jobs_rx, &mut next, self.batch_max);
                // (An empty `next` is dropped: publishing hands back a buffer.)
                if !next.is_empty() {
                    last_commit = Some((Instant::now(), next.len()));
                    in_flight = Some(self.start_commit(next).await);
                }
            }
            spare = self.publish(jobs, stored).await;
        }
        tracing::debug!("writer stopped");
    }

    /// Hands `jobs` to the store as one batch. The store's future is polled
    /// once here, which for SQLite passes the batch to its thread: the
    /// commit proceeds there while this task goes on.
    async fn start_commit(&self, jobs: Vec<SendJob>) -> InFlight<'_> {
        let started = Instant::now();
        for job in &jobs {
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
                author: job.author,
                text: job.text.clone(),
                ts,
            })
            .collect();
        let mut stored = self.store.append(batch);
        let stored: StoreFuture<'_> =
            match std::future::poll_fn(|cx| Poll::Ready(stored.as_mut().poll(cx))).await {
                Poll::Ready(done) => Box::pin(std::future::ready(done)),
                Poll::Pending => stored,
            };
        InFlight {
            jobs,
            started,
            stored,
        }
    }

    /// Acknowledges and delivers a finished commit's sends, or reports its
    /// failure; returns the emptied buffer for the next commit.
    async fn publish(&self, mut jobs: Vec<SendJob>, stored: StoreResult) -> Vec<SendJob> {
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
        jobs
    }
}

/// Whether sends are queuing faster than the writer stores and publishes
/// them in turn: a quarter of a batch or more waiting when a commit ends.
/// Only then does the next commit overlap this one's deliveries. Below
/// that, overlapping them bought nothing and cost 5–15 % more CPU per
/// delivery (small rooms at 5,000 msg/s, docs/performance.md): on a
/// one-core server the storage thread then preempts the rounds of writes.
fn falling_behind(backlog: usize, batch_max: usize) -> bool {
    backlog >= (batch_max / 4).max(1)
}

/// Moves sends already queued into `jobs`, up to `max`, without waiting.
fn take_queued(jobs_rx: &mut mpsc::Receiver<SendJob>, jobs: &mut Vec<SendJob>, max: usize) {
    while jobs.len() < max {
        let Ok(job) = jobs_rx.try_recv() else { break };
        jobs.push(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tokio::sync::Notify;

    use crate::broker::BrokerError;
    use crate::hub::Outbox;
    use crate::storage::{CatchUp, RoomCreation};

    /// What the writer did, in order: `append` when a batch reached the
    /// store, `publish` when its messages went to the broker.
    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl Log {
        fn push(&self, event: String) {
            self.0.lock().unwrap().push(event);
        }
        fn events(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    /// A store whose first `gated` commits each wait for `release`; the
    /// first fails if told to.
    struct GatedStore {
        log: Arc<Log>,
        release: Notify,
        gated: u64,
        fail_first: bool,
        commits: Mutex<u64>,
        seq: Mutex<u64>,
    }

    #[async_trait]
    impl MessageStore for GatedStore {
        async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<ChatMessage>, StorageError> {
            let texts: Vec<&str> = batch.iter().map(|m| m.text.as_str()).collect();
            self.log.push(format!("append {}", texts.join(",")));
            let n = {
                let mut commits = self.commits.lock().unwrap();
                *commits += 1;
                *commits
            };
            if n <= self.gated {
                self.release.notified().await;
            }
            if n == 1 && self.fail_first {
                return Err(StorageError::AppenderGone);
            }
            let mut seq = self.seq.lock().unwrap();
            Ok(batch
                .into_iter()
                .map(|m| {
                    *seq += 1;
                    ChatMessage {
                        room: m.room.into_string(),
                        id: m.id,
                        seq: *seq,
                        from: m.from.into_string(),
                        author: Some(m.author.get()),
                        text: m.text.into_string(),
                        ts: m.ts,
                    }
                })
                .collect())
        }
        async fn create_room(&self, _: &RoomName) -> Result<RoomCreation, StorageError> {
            unreachable!("the writer only appends")
        }
        async fn room_exists(&self, _: &RoomName) -> Result<bool, StorageError> {
            unreachable!("the writer only appends")
        }
        async fn recent_rooms(&self, _: u32) -> Result<Vec<String>, StorageError> {
            unreachable!("the writer only appends")
        }
        async fn catch_up(
            &self,
            _: &RoomName,
            _: Option<u64>,
            _: u32,
        ) -> Result<CatchUp, StorageError> {
            unreachable!("the writer only appends")
        }
        async fn history(
            &self,
            _: &RoomName,
            _: Option<u64>,
            _: u32,
        ) -> Result<Vec<ChatMessage>, StorageError> {
            unreachable!("the writer only appends")
        }
        async fn ping(&self) -> Result<(), StorageError> {
            Ok(())
        }
    }

    struct LoggingBroker(Arc<Log>);

    #[async_trait]
    impl Broker for LoggingBroker {
        async fn publish(&self, frames: Vec<(RoomName, Frame)>) -> Result<(), BrokerError> {
            let texts: Vec<String> = frames
                .iter()
                .map(|(_, frame)| {
                    let v: serde_json::Value = serde_json::from_slice(frame.payload()).unwrap();
                    v["text"].as_str().unwrap().to_owned()
                })
                .collect();
            self.0.push(format!("publish {}", texts.join(",")));
            Ok(())
        }
    }

    struct Running {
        log: Arc<Log>,
        store: Arc<GatedStore>,
        jobs: mpsc::Sender<SendJob>,
        stop: CancellationToken,
        writer: tokio::task::JoinHandle<()>,
    }

    fn start(fail_first: bool) -> Running {
        start_gated(1, fail_first)
    }

    fn start_gated(gated: u64, fail_first: bool) -> Running {
        let log = Arc::new(Log::default());
        let store = Arc::new(GatedStore {
            log: log.clone(),
            release: Notify::new(),
            gated,
            fail_first,
            commits: Mutex::new(0),
            seq: Mutex::new(0),
        });
        let writer = Writer {
            recent: Arc::new(RecentMessages::new(16)),
            store: store.clone(),
            broker: Arc::new(LoggingBroker(log.clone())),
            metrics: Arc::new(Metrics::new()),
            // Falling behind from two queued sends on.
            batch_max: 8,
            commit_interval: Duration::ZERO,
        };
        let (jobs, jobs_rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let writer = tokio::spawn(writer.run(jobs_rx, stop.clone()));
        Running {
            log,
            store,
            jobs,
            stop,
            writer,
        }
    }

    fn job(text: &str, sender: &Peer) -> SendJob {
        SendJob {
            room: RoomName::parse("r").unwrap(),
            from: Nickname::parse("alice").unwrap(),
            author: AuthorId::from_stored(1),
            text: MessageText::parse(text).unwrap(),
            sender: sender.clone(),
            r#ref: None,
            accepted: Instant::now(),
        }
    }

    async fn wait_for(log: &Log, events: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while log.events().len() < events {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the writer got that far");
    }

    /// Sends "a", waits until the store holds its commit, and queues `more`
    /// behind it; returns their sender.
    async fn a_held_then(w: &Running, more: &[&str]) -> Peer {
        let sender = Peer::new(Arc::new(Outbox::new(64, 1 << 20)));
        w.jobs.send(job("a", &sender)).await.unwrap();
        wait_for(&w.log, 1).await;
        for text in more {
            w.jobs.send(job(text, &sender)).await.unwrap();
        }
        sender
    }

    async fn stop(w: Running) {
        w.stop.cancel();
        w.writer.await.unwrap();
    }

    /// Pipelining, once sends queue up: those that did during a commit reach
    /// the store before that commit's messages are published, so the next
    /// commit's fsync overlaps this one's socket writes; publishing stays in
    /// commit order.
    #[tokio::test]
    async fn the_next_commit_starts_before_the_last_one_is_published() {
        let w = start(false);
        a_held_then(&w, &["b", "c"]).await;
        w.store.release.notify_one();
        wait_for(&w.log, 4).await;
        assert_eq!(
            w.log.events(),
            ["append a", "append b,c", "publish a", "publish b,c"]
        );
        stop(w).await;
    }

    /// A writer keeping up publishes each commit before starting the next.
    #[tokio::test]
    async fn a_writer_keeping_up_commits_and_publishes_in_turn() {
        let w = start(false);
        a_held_then(&w, &["b"]).await;
        w.store.release.notify_one();
        wait_for(&w.log, 4).await;
        assert_eq!(
            w.log.events(),
            ["append a", "publish a", "append b", "publish b"]
        );
        stop(w).await;
    }

    #[test]
    fn falling_behind_means_a_quarter_batch_waiting() {
        assert!(!falling_behind(127, 512));
        assert!(falling_behind(128, 512));
        assert!(falling_behind(1, 1), "a batch of one");
    }

    /// A failed commit answers its own senders with an error; the next
    /// commit is stored and published as usual.
    #[tokio::test]
    async fn a_failed_commit_does_not_take_the_next_one_with_it() {
        let w = start(true);
        let failed = Peer::new(Arc::new(Outbox::new(64, 1 << 20)));
        let fine = Peer::new(Arc::new(Outbox::new(64, 1 << 20)));
        w.jobs.send(job("lost", &failed)).await.unwrap();
        wait_for(&w.log, 1).await;
        w.jobs.send(job("kept", &fine)).await.unwrap();
        w.store.release.notify_one();
        wait_for(&w.log, 3).await;
        assert_eq!(
            w.log.events(),
            ["append lost", "append kept", "publish kept"]
        );
        let (frames, _) = failed.outbox().take(16);
        let error: serde_json::Value = serde_json::from_slice(frames[0].payload()).unwrap();
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some("internal"))
        );
        let (frames, _) = fine.outbox().take(16);
        let sent: serde_json::Value = serde_json::from_slice(frames[0].payload()).unwrap();
        assert_eq!(sent["type"], "sent");
        stop(w).await;
    }

    /// A writer kept behind by a flood still stops taking sends when told
    /// to stop, though it never waits for one.
    #[tokio::test]
    async fn a_writer_behind_stops_taking_sends_when_told() {
        let w = start_gated(2, false);
        let sender = a_held_then(&w, &["b", "c"]).await;
        w.stop.cancel();
        w.store.release.notify_one();
        // "b,c" is still being committed (held by the store) when the
        // writer closes its queue.
        tokio::time::timeout(Duration::from_secs(5), w.jobs.closed())
            .await
            .expect("the writer closed its queue while a commit was in flight");
        assert_eq!(w.log.events(), ["append a", "append b,c", "publish a"]);
        assert!(w.jobs.send(job("late", &sender)).await.is_err());
        w.store.release.notify_one();
        w.writer.await.unwrap();
        assert_eq!(
            w.log.events(),
            ["append a", "append b,c", "publish a", "publish b,c"]
        );
    }

    /// Sends queued when the writer is told to stop are still stored and published.
    #[tokio::test]
    async fn stopping_finishes_the_commits_in_flight() {
        let w = start(false);
        a_held_then(&w, &["b", "c"]).await;
        w.stop.cancel();
        w.store.release.notify_one();
        tokio::time::timeout(Duration::from_secs(5), w.writer)
            .await
            .expect("the writer stopped")
            .unwrap();
        assert_eq!(
            w.log.events(),
            ["append a", "append b,c", "publish a", "publish b,c"]
        );
    }

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
