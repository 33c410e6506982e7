//! Rooms come and go: a room nobody uses is removed with its messages, and
//! an operator can remove any room (`chatterpro admin delete-room`), so the
//! number of rooms follows use, not how many were ever created.
//!
//! The [`Reaper`] is the hub's background loop. Every `--room-reap-interval`
//! it records the rooms people are in as in use, then removes rooms that
//! [`StaleRooms`] names — no message and nobody seen in them for
//! `--unused-room-ttl`, or nobody seen and nothing written for
//! `--idle-room-ttl` — unless they are default rooms or someone is in them
//! here. Every second (or every interval, if shorter) it also reads the
//! removals operators recorded in storage and applies them here: the
//! room's members get a notice and `left`, and the room is deleted again
//! in case sends stored meanwhile recreated it.
//!
//! A removed room must not live on in memory: it leaves the known-rooms set
//! (so a later join creates it afresh), its recent-messages tail and last
//! committed seq, its pacing state (with the registry's room), and the room
//! list. A removal holds the hub's lifecycle lock for writing, so no join or
//! send is half done for that room meanwhile, and first waits until every
//! send already queued is settled — stored and published, or failed
//! (counted by the publisher, `super::publish`): none of them can recreate
//! the room, or be delivered to it, after it is gone.
//!
//! A room created again under a removed room's name starts its seqs at 1;
//! a client that rejoins with a `since` from the old room is answered as a
//! fresh join with `truncated` (see [`super::Hub::join`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::clock;
use crate::domain::RoomName;
use crate::storage::{RoomDeletion, StaleRooms, StorageError};

/// Rooms removed in one transaction; a pass repeats rounds while they come full.
const REAP_BATCH: u32 = 500;
/// Rounds in one pass (at most 10,000 rooms): a backlog is worked off over
/// passes, with joins and sends let through between rounds.
const REAP_ROUNDS: usize = 20;
/// How often operators' removals are looked for (unless the reap interval is shorter).
const DELETIONS_POLL: Duration = Duration::from_secs(1);
/// Records of operators' removals are kept this long: every running server
/// reads them within a second or so.
const DELETIONS_KEPT: Duration = Duration::from_secs(24 * 3600);
/// Longest a removal waits for the commit task to settle queued sends (a hung
/// disk must not stop the reaper for good; the commit task has its own grace).
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// What members of a room an operator removed are told, before `left`.
pub const REMOVED_NOTICE: &str = "This room was removed by the server's operator.";

/// The reaper's settings (`--unused-room-ttl`, `--idle-room-ttl`, `--room-reap-interval`).
#[derive(Debug, Clone, Copy)]
pub struct ReaperConfig {
    pub unused_ttl: Duration,
    pub idle_ttl: Duration,
    pub interval: Duration,
}

impl ReaperConfig {
    /// The rooms stale at `now` (Unix ms).
    fn stale_at(&self, now: i64) -> StaleRooms {
        StaleRooms {
            unused_before: now.saturating_sub(millis(self.unused_ttl)),
            idle_before: now.saturating_sub(millis(self.idle_ttl)),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The hub's background loop that removes rooms (see the module documentation).
pub struct Reaper {
    hub: Arc<Hub>,
    config: ReaperConfig,
    /// The newest operator's removal already applied here.
    last_deletion: i64,
}

impl Reaper {
    /// Starts from the removals already recorded: they predate this server's
    /// memory of any room.
    pub async fn build(hub: Arc<Hub>, config: ReaperConfig) -> Result<Self, StorageError> {
        let last_deletion = hub.store.last_room_deletion().await?;
        Ok(Self {
            hub,
            config,
            last_deletion,
        })
    }

    /// Runs until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let poll = self.config.interval.min(DELETIONS_POLL);
        let mut next_pass = Instant::now() + self.config.interval;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(poll) => {}
            }
            if let Err(e) = self.follow_deletions().await {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "reading room removals failed"
                );
            }
            if Instant::now() >= next_pass {
                if let Err(e) = self.pass().await {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "removing unused rooms failed"
                    );
                }
                next_pass = Instant::now() + self.config.interval;
            }
        }
        tracing::debug!("room reaper stopped");
    }

    /// Applies the removals operators recorded since the last look.
    async fn follow_deletions(&mut self) -> Result<(), StorageError> {
        for RoomDeletion { id, room } in self.hub.store.room_deletions(self.last_deletion).await? {
            let members = self.hub.room_removed(&room).await?;
            tracing::info!(room = %room, members, "room removed by the operator");
            self.last_deletion = id;
        }
        Ok(())
    }

    /// One pass: rooms in use are recorded as such, then stale rooms go.
    async fn pass(&self) -> Result<(), StorageError> {
        let hub = &self.hub;
        hub.store
            .touch_rooms(&hub.registry.occupied(), clock::now_ms())
            .await?;
        let mut removed = 0;
        for _ in 0..REAP_ROUNDS {
            let (looked_at, gone) = hub
                .reap(self.config.stale_at(clock::now_ms()), REAP_BATCH)
                .await?;
            removed += gone;
            if looked_at < REAP_BATCH as usize {
                break;
            }
            // Let the joins and sends that queued behind this round through.
            tokio::task::yield_now().await;
        }
        if removed > 0 {
            tracing::info!(removed, "removed unused rooms with their messages");
        }
        hub.store
            .forget_room_deletions(clock::now_ms().saturating_sub(millis(DELETIONS_KEPT)))
            .await
    }
}

impl Hub {
    /// Removes up to `batch` stale rooms that nobody is in here and that are
    /// not default rooms. Returns how many rooms storage named (to know
    /// whether more may follow) and how many were removed.
    async fn reap(&self, stale: StaleRooms, batch: u32) -> Result<(usize, usize), StorageError> {
        let defaults = self.config.default_rooms.len() as u32;
        let mut rooms = self.store.stale_rooms(stale, batch + defaults).await?;
        let looked_at = rooms.len().saturating_sub(defaults as usize);
        rooms.retain(|room| !self.config.default_rooms.contains(room));
        rooms.retain(|room| !self.registry.is_occupied(room));
        if rooms.is_empty() {
            return Ok((looked_at, 0));
        }
        // The bulk of their messages first, without the lifecycle lock: a
        // long history takes a while, and joins and sends elsewhere go on.
        // (Someone joining such a room meanwhile finds it, and keeps it,
        // with only its newest messages.)
        self.store.delete_stale_messages(stale, &rooms).await?;
        let _closed = self.lifecycle.write().await;
        // Someone may have joined while the lock was awaited.
        rooms.retain(|room| !self.registry.is_occupied(room));
        self.settle_writes().await;
        // Checked again in storage: a send settled just now counts as use.
        let removed = self.store.delete_stale_rooms(stale, &rooms).await?;
        for room in &removed {
            self.forget_room(room);
        }
        Ok((looked_at, removed.len()))
    }

    /// An operator removed `room` from storage; the room goes here too: its
    /// members get [`REMOVED_NOTICE`] and `left`, and what the hub remembers
    /// of it is forgotten. Sends stored between the operator's removal and
    /// now recreated it in storage: it is deleted again (a default room is
    /// then created afresh, empty). Returns how many connections were in it.
    pub async fn room_removed(&self, room: &RoomName) -> Result<usize, StorageError> {
        let _closed = self.lifecycle.write().await;
        let members = self.registry.close_room(room, REMOVED_NOTICE);
        self.settle_writes().await;
        self.store.delete_room(room, false).await?;
        self.forget_room(room);
        if self.config.default_rooms.contains(room) {
            self.store.create_room(room).await?;
        }
        Ok(members)
    }

    /// Waits until every send queued so far is stored and published (or
    /// failed). Called with the lifecycle lock held for writing, so no send
    /// is between its membership check and the queue.
    async fn settle_writes(&self) {
        let target = self.queued.load(Ordering::Acquire);
        let mut settled = self.settled.clone();
        let waited = tokio::time::timeout(SETTLE_WAIT, settled.wait_for(|n| *n >= target)).await;
        if !matches!(waited, Ok(Ok(_))) {
            tracing::warn!("removing a room without waiting for the queued sends");
        }
    }

    /// Forgets what memory holds of a removed room.
    fn forget_room(&self, room: &RoomName) {
        self.known_rooms().remove(room);
        self.registry.recent().forget(room);
        *self.room_list_slot() = None;
    }
}
