//! The commit task: the one task that stores sends and hands them on to be published.
//!
//! Every accepted `send` is queued here. The commit task takes whatever is queued
//! (up to a batch limit), stores it in one transaction — concurrent senders
//! share one commit and one fsync — and only then, in seq order, queues
//! `sent` to each sender and hands the commit's messages to the publisher
//! ([`super::publish`]), which publishes commits in the order they were
//! stored. Because one task stores and one task publishes, delivery order
//! equals storage order for every member. Commits start at most every
//! `--commit-interval` (2 ms) once commits carry several sends: under load
//! the sends arriving meanwhile join the next commit, so the cost of a
//! transaction (its fsync, its hand-off to the storage thread) is shared by
//! more of them, while a trickle of sends is stored without waiting.
//!
//! A send may carry the client's nonce: the store then keeps the message at
//! most once per (sender, nonce), and a resend is answered with the first
//! copy's `sent` — nothing is published for it. Every send a connection
//! hands over holds a [`SendTicket`] until its answer is queued, so that the
//! connection can wait for its answers before it sends its close frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::future::Future;
use std::task::Poll;
use tokio::sync::{Notify, mpsc};

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::publish::{Commit, Handoff, Place};
use crate::broker::RoomEvent;
use crate::clock;
use crate::domain::{AuthorId, Message, MessageText, Nickname, RoomName};
use crate::metrics::Metrics;
use crate::outbox::{Frame, Peer};
use crate::protocol::{ErrorCode, Ref, ServerMsg, encode};
use crate::storage::{Appended, MessageStore, NewMessage, SendKey, StorageError};

/// One accepted send, waiting to be stored.
pub struct SendJob {
    pub room: RoomName,
    pub from: Nickname,
    pub author: AuthorId,
    pub text: MessageText,
    /// The sender's nonce for it, if the client gave one (taken by the commit).
    pub key: Option<SendKey>,
    pub sender: Peer,
    pub r#ref: Option<Ref>,
    /// When the send was accepted (for `chatterpro_send_wait_seconds`).
    pub accepted: Instant,
    /// Held until the send's answer is queued to the sender (dropped with the job).
    pub _ticket: SendTicket,
}

/// One connection's sends handed to the commit task and not answered yet (their
/// `sent` or `error` not queued). A connection being closed — for abuse,
/// on shutdown — waits for them before its close frame, so that the close
/// does not overtake the commit: a client then knows which of its sends
/// were stored without having to resend them.
#[derive(Debug, Default)]
pub struct SendsInFlight {
    count: AtomicUsize,
    answered: Notify,
}

impl SendsInFlight {
    /// Counts one more send until the returned ticket is dropped.
    pub fn ticket(self: &Arc<Self>) -> SendTicket {
        self.count.fetch_add(1, Ordering::AcqRel);
        SendTicket(self.clone())
    }

    /// How many sends are waiting for their answer.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once every send counted so far has its answer queued.
    pub async fn all_answered(&self) {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            // Registered before the check, so an answer in between is not missed.
            answered.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            answered.await;
        }
    }
}

/// A send's place in its connection's [`SendsInFlight`], given up on drop:
/// once its answer is queued, or with the send if it never reached the commit task.
#[derive(Debug)]
pub struct SendTicket(Arc<SendsInFlight>);

impl Drop for SendTicket {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.answered.notify_waiters();
        }
    }
}

pub struct CommitTask {
    pub store: Arc<dyn MessageStore>,
    /// Where finished commits go to be published ([`super::publish`]).
    pub handoff: Handoff,
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

/// A commit handed to the store and not yet reported on, with the sends it
/// carries and its place in the publishing backlog.
struct InFlight {
    jobs: Vec<SendJob>,
    started: Instant,
    /// The append (see [`CommitTask::start_commit`]).
    stored: Append,
    place: Place,
}

/// A started append: answered at its first poll, or running as a task.
enum Append {
    Done(StoreResult),
    Running(JoinHandle<StoreResult>),
}

impl Append {
    async fn result(self) -> StoreResult {
        match self {
            Append::Done(result) => result,
            Append::Running(task) => task.await.unwrap_or_else(|e| {
                // The store panicked (or the runtime is going away): its
                // senders are told, as for any failed commit.
                Err(StorageError::unavailable(
                    "the commit did not finish",
                    Some(Box::new(e)),
                ))
            }),
        }
    }
}

type StoreResult = Result<Vec<Appended>, StorageError>;

impl CommitTask {
    /// Stores queued sends and hands them to the publisher until
    /// `shutdown`; then refuses new ones, finishes everything already
    /// queued and waits for it to be published before returning.
    ///
    /// Publishing is the [`super::publish::Publisher`]'s: this task never
    /// awaits the broker, only a place in the publishing backlog before it
    /// starts a commit (see [`super::publish`]). When it falls behind,
    /// commits are pipelined with deliveries: as a commit ends and is
    /// handed off, the sends that queued up meanwhile are handed to the
    /// store at once, so the next commit's fsync and SQLite work overlap
    /// this one's socket writes instead of following them. When it keeps
    /// up, it lets the publisher deliver before it starts the next commit.
    /// Commits still run one after another, and are published in commit
    /// order.
    pub async fn run(self, mut jobs_rx: mpsc::Receiver<SendJob>, shutdown: CancellationToken) {
        let mut closing = false;
        let mut last_commit: Option<(Instant, usize)> = None;
        let mut in_flight: Option<InFlight> = None;
        // A finished commit's emptied buffer, to gather the next one in
        // (two alternate while commits overlap deliveries).
        let mut spare: Vec<SendJob> = Vec::with_capacity(self.batch_max);
        loop {
            // A commit task that stays behind never waits below, where `shutdown`
            // is also watched: it must still stop taking new sends.
            if !closing && shutdown.is_cancelled() {
                closing = true;
                jobs_rx.close();
            }
            let Some(InFlight {
                jobs,
                started,
                stored,
                place,
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
                let place = self.handoff.place().await;
                last_commit = Some((Instant::now(), jobs.len()));
                in_flight = Some(self.start_commit(jobs, place).await);
                continue;
            };
            let stored = stored.result().await;
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            let behind = falling_behind(jobs_rx.len(), self.batch_max);
            // Behind (see `falling_behind`): the sends that arrived during
            // the commit start theirs now, before its deliveries are
            // written, if the interval allows. With a place free in the
            // backlog the next commit's task is spawned before this one is
            // handed to the publisher, so that it runs first and its
            // storage work overlaps the deliveries (on a one-core runtime
            // it would otherwise wait for the publishing to end).
            let mut next = Vec::new();
            if behind
                && wait_until(last_commit, self.commit_interval)
                    .is_none_or(|at| Instant::now() >= at)
            {
                next = std::mem::take(&mut spare);
                take_queued(&mut jobs_rx, &mut next, self.batch_max);
            }
            if !next.is_empty()
                && let Some(place) = self.handoff.try_place()
            {
                last_commit = Some((Instant::now(), next.len()));
                in_flight = Some(self.start_commit(std::mem::take(&mut next), place).await);
            }
            let emptied = self.finish(jobs, stored, place);
            if !next.is_empty() {
                // Every place taken: this commit's (just handed over) frees
                // once published.
                let place = self.handoff.place().await;
                last_commit = Some((Instant::now(), next.len()));
                in_flight = Some(self.start_commit(next, place).await);
            }
            // Lets the next commit's task start, or (keeping up) the
            // publisher deliver this commit before the next one starts: on
            // a one-core server the storage thread would otherwise preempt
            // the round of writes.
            tokio::task::yield_now().await;
            spare = emptied;
        }
        self.handoff.drained().await;
        tracing::debug!("commit task stopped");
    }

    /// Hands `jobs` to the store as one batch. The append is polled once
    /// here, which starts it at once (SQLite's thread gets the batch now; a
    /// task spawned first would wait its turn behind every runnable
    /// connection, which made commits fewer and slower under load), and
    /// what is left of it runs as a task of its own: the commit makes
    /// progress whatever this task does meanwhile, with any store (a driver
    /// whose future only works while polled, as most async database
    /// clients', as well as SQLite's thread). At most one commit is in
    /// flight, so commits still follow one another in order.
    async fn start_commit(&self, mut jobs: Vec<SendJob>, place: Place) -> InFlight {
        let started = Instant::now();
        for job in &jobs {
            self.metrics
                .send_wait
                .observe(started.duration_since(job.accepted).as_secs_f64());
        }
        let ts = clock::now_ms();
        let batch: Vec<NewMessage> = jobs
            .iter_mut()
            .map(|job| NewMessage {
                room: job.room.clone(),
                id: uuid::Uuid::now_v7().to_string(),
                from: job.from.clone(),
                author: job.author,
                text: job.text.clone(),
                ts,
                key: job.key.take(),
            })
            .collect();
        let store = self.store.clone();
        let mut append = Box::pin(async move { store.append(batch).await });
        let stored = match std::future::poll_fn(|cx| Poll::Ready(append.as_mut().poll(cx))).await {
            Poll::Ready(result) => Append::Done(result),
            Poll::Pending => Append::Running(tokio::spawn(append)),
        };
        InFlight {
            jobs,
            started,
            stored,
            place,
        }
    }

    /// Answers a finished commit's senders (`sent`, or an error) and hands
    /// its messages to the publisher; returns the emptied buffer for the
    /// next commit.
    fn finish(&self, mut jobs: Vec<SendJob>, stored: StoreResult, place: Place) -> Vec<SendJob> {
        let settled = jobs.len() as u64;
        match stored {
            Ok(outcomes) => {
                self.metrics.commits.inc();
                let mut messages = Vec::with_capacity(outcomes.len());
                let mut senders = Vec::with_capacity(outcomes.len());
                for (job, outcome) in jobs.drain(..).zip(outcomes) {
                    let message = match outcome {
                        Appended::Stored(message) => message,
                        Appended::Duplicate(receipt) => {
                            // A resend: the first copy's `sent` again; its
                            // message was published when it was stored.
                            let sent = ServerMsg::Sent {
                                room: receipt.room,
                                id: receipt.id,
                                seq: receipt.seq,
                                ts: receipt.ts,
                            };
                            let sent = Frame::answer(encode(&sent, job.r#ref.as_ref()));
                            job.sender.queue(std::slice::from_ref(&sent));
                            senders.push(job.sender);
                            continue;
                        }
                    };
                    // Queued, not written yet: the sender is usually a member,
                    // and its `sent` then leaves in one write with its own
                    // copy of the message (and after it is stored, before it).
                    let sent = Frame::answer(encode(
                        &ServerMsg::Sent {
                            room: message.room.as_str().to_owned(),
                            id: message.id.clone(),
                            seq: message.seq,
                            ts: message.at,
                        },
                        job.r#ref.as_ref(),
                    ));
                    job.sender.queue(std::slice::from_ref(&sent));
                    senders.push(job.sender);
                    messages.push(message);
                }
                self.metrics.messages_stored.inc_by(messages.len() as u64);
                // The whole commit at once: its deliveries, over however
                // many rooms, go out in one round of writes. (A commit of
                // resends only has nothing to publish.)
                self.handoff.commit(Commit {
                    events: events_by_room(messages),
                    senders,
                    settled,
                    place,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, messages = jobs.len(), "storing messages failed");
                for job in jobs.drain(..) {
                    self.metrics.count_error(ErrorCode::Internal);
                    job.sender.push(Frame::answer(encode(
                        &ServerMsg::error(ErrorCode::Internal, "the message could not be stored"),
                        job.r#ref.as_ref(),
                    )));
                }
                self.handoff.commit(Commit {
                    events: Vec::new(),
                    senders: Vec::new(),
                    settled,
                    place,
                });
            }
        }
        jobs
    }
}

/// A commit's messages as one event per room, rooms in the order they first
/// appear, each room's messages in commit (seq) order.
fn events_by_room(messages: Vec<Message>) -> Vec<RoomEvent> {
    if messages.len() <= 1 {
        return messages
            .into_iter()
            .map(|m| RoomEvent::Messages(Arc::from([m])))
            .collect();
    }
    let mut index: HashMap<&RoomName, usize> = HashMap::with_capacity(messages.len());
    let groups: Vec<usize> = messages
        .iter()
        .map(|m| {
            let next = index.len();
            *index.entry(&m.room).or_insert(next)
        })
        .collect();
    let mut rooms: Vec<Vec<Message>> = (0..index.len()).map(|_| Vec::new()).collect();
    for (message, group) in messages.into_iter().zip(groups) {
        rooms[group].push(message);
    }
    rooms
        .into_iter()
        .map(|room| RoomEvent::Messages(room.into()))
        .collect()
}

/// Whether sends are queuing faster than the commit task stores and publishes
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

    use crate::domain::Message;

    use async_trait::async_trait;

    use super::super::publish::{PUBLISH_BACKLOG, Publisher};
    use crate::broker::{Broker, BrokerError};
    use crate::outbox::Outbox;
    use crate::storage::{CatchUp, RoomCreation, RoomDeletion, StaleRooms};

    /// What the commit task did, in order: `append` when a batch reached the
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
        /// Appends that returned.
        finished: AtomicUsize,
    }

    #[async_trait]
    impl MessageStore for GatedStore {
        async fn append(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, StorageError> {
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
                return Err(StorageError::unavailable("gated to fail", None));
            }
            self.finished.fetch_add(1, Ordering::AcqRel);
            let mut seq = self.seq.lock().unwrap();
            Ok(batch
                .into_iter()
                .map(|m| {
                    // "again…": a resend of the message stored first.
                    if m.text.as_str().starts_with("again") {
                        return Appended::Duplicate(crate::storage::Receipt {
                            room: "r".into(),
                            id: "first".into(),
                            seq: 1,
                            ts: 5,
                        });
                    }
                    *seq += 1;
                    Appended::Stored(Message {
                        room: m.room,
                        id: m.id,
                        seq: *seq,
                        from: m.from.into_string(),
                        author: Some(m.author),
                        text: m.text.into_string(),
                        at: m.ts,
                    })
                })
                .collect())
        }
        async fn create_room(&self, _: &RoomName) -> Result<RoomCreation, StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn room_exists(&self, _: &RoomName) -> Result<bool, StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn recent_rooms(&self, _: i64, _: u32) -> Result<Vec<String>, StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn touch_rooms(&self, _: &[RoomName], _: i64) -> Result<(), StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn stale_rooms(&self, _: StaleRooms, _: u32) -> Result<Vec<RoomName>, StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn delete_stale_messages(
            &self,
            _: StaleRooms,
            _: &[RoomName],
        ) -> Result<u64, StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn delete_stale_rooms(
            &self,
            _: StaleRooms,
            _: &[RoomName],
        ) -> Result<Vec<RoomName>, StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn delete_room(&self, _: &RoomName, _: bool) -> Result<bool, StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn room_deletions(&self, _: i64) -> Result<Vec<RoomDeletion>, StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn last_room_deletion(&self) -> Result<i64, StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn forget_room_deletions(&self, _: i64) -> Result<(), StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn catch_up(
            &self,
            _: &RoomName,
            _: Option<u64>,
            _: u32,
        ) -> Result<CatchUp, StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn history(
            &self,
            _: &RoomName,
            _: Option<u64>,
            _: u32,
        ) -> Result<Vec<Message>, StorageError> {
            unreachable!("the commit task only appends")
        }
        async fn ping(&self) -> Result<(), StorageError> {
            Ok(())
        }
    }

    /// Logs each commit it publishes; the first `held` publishes each wait
    /// for `release` (a broker that stalls).
    struct LoggingBroker {
        log: Arc<Log>,
        held: Mutex<u64>,
        release: Notify,
    }

    #[async_trait]
    impl Broker for LoggingBroker {
        fn attach(&self, _: std::sync::Weak<dyn crate::broker::Subscriber>) {}

        async fn publish(&self, events: Vec<RoomEvent>) -> Result<(), BrokerError> {
            let texts: Vec<String> = events
                .iter()
                .flat_map(|event| match event {
                    RoomEvent::Messages(messages) => messages.to_vec(),
                    RoomEvent::Membership(_) => Vec::new(),
                })
                .map(|m| m.text)
                .collect();
            self.log.push(format!("publish {}", texts.join(",")));
            let hold = {
                let mut held = self.held.lock().unwrap();
                let hold = *held > 0;
                *held = held.saturating_sub(1);
                hold
            };
            if hold {
                self.release.notified().await;
            }
            Ok(())
        }

        fn subscribe(&self, _: &RoomName) {}

        fn unsubscribe(&self, _: &RoomName) {}

        async fn subscribed(&self, _: &RoomName) -> Result<(), BrokerError> {
            Ok(())
        }

        fn health(&self) -> Result<(), BrokerError> {
            Ok(())
        }
    }

    struct Running {
        log: Arc<Log>,
        store: Arc<GatedStore>,
        broker: Arc<LoggingBroker>,
        metrics: Arc<Metrics>,
        jobs: mpsc::Sender<SendJob>,
        stop: CancellationToken,
        commit_task: tokio::task::JoinHandle<()>,
    }

    fn start(fail_first: bool) -> Running {
        start_gated(1, fail_first)
    }

    fn start_gated(gated: u64, fail_first: bool) -> Running {
        start_with(gated, fail_first, 0, PUBLISH_BACKLOG)
    }

    /// A commit task whose store holds its first `gated` commits and whose
    /// broker holds its first `held` publishes, with `backlog` places.
    fn start_with(gated: u64, fail_first: bool, held: u64, backlog: usize) -> Running {
        let log = Arc::new(Log::default());
        let store = Arc::new(GatedStore {
            log: log.clone(),
            release: Notify::new(),
            gated,
            fail_first,
            commits: Mutex::new(0),
            seq: Mutex::new(0),
            finished: AtomicUsize::new(0),
        });
        let broker = Arc::new(LoggingBroker {
            log: log.clone(),
            held: Mutex::new(held),
            release: Notify::new(),
        });
        let metrics = Arc::new(Metrics::new());
        let (handoff, publications) = super::super::publish::handoff(backlog, metrics.clone());
        let (settled, _) = tokio::sync::watch::channel(0);
        let publisher = Publisher {
            broker: broker.clone(),
            metrics: metrics.clone(),
            settled,
        };
        tokio::spawn(publisher.run(publications));
        let commit_task = CommitTask {
            store: store.clone(),
            handoff,
            metrics: metrics.clone(),
            // Falling behind from two queued sends on.
            batch_max: 8,
            commit_interval: Duration::ZERO,
        };
        let (jobs, jobs_rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let commit_task = tokio::spawn(commit_task.run(jobs_rx, stop.clone()));
        Running {
            log,
            store,
            broker,
            metrics,
            jobs,
            stop,
            commit_task,
        }
    }

    fn job(text: &str, sender: &Peer) -> SendJob {
        SendJob {
            room: RoomName::parse("r").unwrap(),
            from: Nickname::parse("alice").unwrap(),
            author: AuthorId::from_stored(1),
            text: MessageText::parse(text).unwrap(),
            key: None,
            sender: sender.clone(),
            r#ref: None,
            accepted: Instant::now(),
            _ticket: Arc::new(SendsInFlight::default()).ticket(),
        }
    }

    async fn wait_for(log: &Log, events: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while log.events().len() < events {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the commit task got that far");
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
        w.commit_task.await.unwrap();
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

    /// A commit task keeping up publishes each commit before starting the next.
    #[tokio::test]
    async fn a_commit_task_keeping_up_commits_and_publishes_in_turn() {
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

    /// The hand-off's policy when publishing falls behind (a stalled
    /// broker): the commit task goes on committing until every place in the
    /// backlog is taken, then waits before starting its next commit — and
    /// counts the wait. Nothing stored is dropped: each stored send is
    /// answered at once, and once the broker resumes every commit is
    /// published, in commit order.
    #[tokio::test]
    async fn a_stalled_broker_holds_commits_back_only_once_the_backlog_is_full() {
        let w = start_with(0, false, 1, 2);
        let sender = Peer::new(Arc::new(Outbox::new(64, 1 << 20)));
        // "a" is stored and its publishing stalls; "b" is stored behind it.
        w.jobs.send(job("a", &sender)).await.unwrap();
        wait_for(&w.log, 2).await;
        w.jobs.send(job("b", &sender)).await.unwrap();
        wait_for(&w.log, 3).await;
        // Both places are taken: "c" is not committed.
        w.jobs.send(job("c", &sender)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(w.log.events(), ["append a", "publish a", "append b"]);
        assert_eq!(w.metrics.publish_waits.get(), 1);
        assert_eq!(w.metrics.publish_backlog.get(), 2);
        let (frames, _) = sender.outbox().take(16);
        let sent = frames
            .iter()
            .map(|f| serde_json::from_slice::<serde_json::Value>(f.payload()).unwrap())
            .filter(|v| v["type"] == "sent")
            .count();
        assert_eq!(sent, 2, "a and b were answered while unpublished");
        w.broker.release.notify_one();
        wait_for(&w.log, 6).await;
        assert_eq!(publishes(&w.log), ["publish a", "publish b", "publish c"]);
        assert!(w.log.events().contains(&"append c".to_owned()));
        stop(w).await;
    }

    /// A commit's messages are published as one event per room, rooms in
    /// the order they first came, each room's messages in seq order.
    #[test]
    fn a_commit_is_one_event_per_room() {
        let message = |room: &str, seq| Message {
            room: RoomName::parse(room).unwrap(),
            id: String::new(),
            seq,
            from: String::new(),
            author: None,
            text: String::new(),
            at: 0,
        };
        let events = events_by_room(vec![
            message("b", 7),
            message("a", 1),
            message("b", 8),
            message("a", 2),
            message("c", 4),
        ]);
        let rooms: Vec<(String, Vec<u64>)> = events
            .iter()
            .map(|e| match e {
                RoomEvent::Messages(m) => (
                    e.room().as_str().to_owned(),
                    m.iter().map(|m| m.seq).collect(),
                ),
                RoomEvent::Membership(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            rooms,
            [
                ("b".to_owned(), vec![7, 8]),
                ("a".to_owned(), vec![1, 2]),
                ("c".to_owned(), vec![4])
            ]
        );
        assert!(events_by_room(Vec::new()).is_empty());
    }

    #[test]
    fn falling_behind_means_a_quarter_batch_waiting() {
        assert!(!falling_behind(127, 512));
        assert!(falling_behind(128, 512));
        assert!(falling_behind(1, 1), "a batch of one");
    }

    /// A resend the store recognised is answered with the first copy's
    /// `sent` and published to nobody; each send's ticket is given up once
    /// its answer is queued.
    #[tokio::test]
    async fn a_resend_is_answered_with_the_first_receipt_and_not_published() {
        let w = start_gated(0, false);
        let log = w.log.clone();
        let sender = Peer::new(Arc::new(Outbox::new(64, 1 << 20)));
        let in_flight = Arc::new(SendsInFlight::default());
        for text in ["again", "new"] {
            let mut job = job(text, &sender);
            job._ticket = in_flight.ticket();
            w.jobs.send(job).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), in_flight.all_answered())
            .await
            .expect("both sends were answered");
        let (frames, _) = sender.outbox().take(16);
        let sent: Vec<serde_json::Value> = frames
            .iter()
            .map(|f| serde_json::from_slice(f.payload()).unwrap())
            .filter(|v: &serde_json::Value| v["type"] == "sent")
            .collect();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(
            (&sent[0]["id"], &sent[0]["seq"]),
            (&"first".into(), &1.into())
        );
        assert_ne!(sent[1]["id"], "first");
        stop(w).await;
        let published: Vec<String> = publishes(&log);
        assert_eq!(published, ["publish new"]);
    }

    fn publishes(log: &Log) -> Vec<String> {
        log.events()
            .into_iter()
            .filter(|e| e.starts_with("publish"))
            .collect()
    }

    #[tokio::test]
    async fn all_answered_waits_for_every_ticket() {
        let in_flight = Arc::new(SendsInFlight::default());
        in_flight.all_answered().await;
        let (a, b) = (in_flight.ticket(), in_flight.ticket());
        let waiting = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.all_answered().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("answered")
            .unwrap();
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

    /// A commit task kept behind by a flood still stops taking sends when told
    /// to stop, though it never waits for one.
    #[tokio::test]
    async fn a_commit_task_behind_stops_taking_sends_when_told() {
        let w = start_gated(2, false);
        let sender = a_held_then(&w, &["b", "c"]).await;
        w.stop.cancel();
        w.store.release.notify_one();
        // "b,c" is still being committed (held by the store) when the
        // commit task closes its queue.
        tokio::time::timeout(Duration::from_secs(5), w.jobs.closed())
            .await
            .expect("the commit task closed its queue while a commit was in flight");
        assert_eq!(w.log.events(), ["append a", "append b,c", "publish a"]);
        assert!(w.jobs.send(job("late", &sender)).await.is_err());
        w.store.release.notify_one();
        w.commit_task.await.unwrap();
        assert_eq!(
            w.log.events(),
            ["append a", "append b,c", "publish a", "publish b,c"]
        );
    }

    /// Sends queued when the commit task is told to stop are still stored and published.
    #[tokio::test]
    async fn stopping_finishes_the_commits_in_flight() {
        let w = start(false);
        a_held_then(&w, &["b", "c"]).await;
        w.stop.cancel();
        w.store.release.notify_one();
        tokio::time::timeout(Duration::from_secs(5), w.commit_task)
            .await
            .expect("the commit task stopped")
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

    /// A started commit makes progress while the commit task does anything
    /// but wait for it: the store's future runs as a task of its own. A
    /// store whose future only works while polled — like an async database
    /// client's; this one waits on a `Notify` — still commits. Polled once
    /// and then left alone, it would not.
    #[tokio::test]
    async fn a_commit_progresses_while_the_commit_task_does_not_poll_it() {
        let log = Arc::new(Log::default());
        let store = Arc::new(GatedStore {
            log: log.clone(),
            release: Notify::new(),
            gated: 1,
            fail_first: false,
            commits: Mutex::new(0),
            seq: Mutex::new(0),
            finished: AtomicUsize::new(0),
        });
        let metrics = Arc::new(Metrics::new());
        let (handoff, _publications) = super::super::publish::handoff(2, metrics.clone());
        let commit_task = CommitTask {
            store: store.clone(),
            handoff,
            metrics,
            batch_max: 8,
            commit_interval: Duration::ZERO,
        };
        let sender = Peer::new(Arc::new(Outbox::new(64, 1 << 20)));
        let place = commit_task.handoff.place().await;
        let in_flight = commit_task
            .start_commit(vec![job("a", &sender)], place)
            .await;
        wait_for(&log, 1).await;
        store.release.notify_one();
        tokio::time::timeout(Duration::from_secs(5), async {
            while store.finished.load(Ordering::Acquire) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the commit finished without the commit task polling it");
        let stored = in_flight.stored.result().await.unwrap();
        assert!(matches!(&stored[..], [Appended::Stored(m)] if m.seq == 1));
    }
}
