//! Pacing: a busy room's messages held back to go out together.
//!
//! Handing a frame to N members costs N socket writes, and on loopback a
//! write costs several microseconds whether it carries one frame or fifty.
//! So a room delivered to less than its window ago (N × 5 µs by default,
//! capped by `--broadcast-window`, counted from the end of the previous
//! delivery's writes) holds new messages back until the window has passed,
//! and they then go out together: one write per member for the lot. A quiet
//! room's message goes out at once; a busy big room's members are written
//! about once per window instead of once per message. An announcement of
//! presence first flushes what is held, so the order members see is
//! unchanged.

use std::time::{Duration, Instant};

use super::{Registry, Room};
use crate::domain::RoomName;
use crate::outbox::Frame;
use crate::outbox::Peer;

/// How long a room's messages may be held back to go out together (see the
/// module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// The window per member. The default (5 µs) is about half what one
    /// small write costs on loopback on the machines measured
    /// (docs/performance.md): a room's window is then about half as long as
    /// writing to every member takes, so a busy room's writes keep at most
    /// about two thirds of a core busy however fast messages come.
    pub per_member: Duration,
    /// The longest window, whatever the room's size (zero: never hold).
    pub max_window: Duration,
    /// Least time between two presence frames of a room (zero: announce
    /// each change as it happens).
    pub presence_interval: Duration,
}

impl Pacing {
    /// Never holds anything back.
    pub const OFF: Pacing = Pacing {
        per_member: Duration::ZERO,
        max_window: Duration::ZERO,
        presence_interval: Duration::ZERO,
    };

    fn window(&self, members: usize) -> Duration {
        self.per_member
            .saturating_mul(u32::try_from(members).unwrap_or(u32::MAX))
            .min(self.max_window)
    }
}

/// What pacing decided for a room's new frames.
pub(super) enum Paced {
    /// Delivered now.
    Delivered(u64),
    /// Held; a flush is due then (unless one is scheduled already).
    Held(Option<Instant>),
}

impl Room {
    /// Hands `frames` to the members now, or holds them back if the room
    /// was delivered to less than its window ago.
    pub(super) fn pace(
        &mut self,
        frames: &[Frame],
        pacing: &Pacing,
        now: Instant,
        out: &mut Vec<Peer>,
    ) -> Paced {
        if !self.held.is_empty() {
            // A flush is already scheduled; these go out with it.
            self.held.extend_from_slice(frames);
            return Paced::Held(None);
        }
        let window = pacing.window(self.members.len());
        if let Some(last) = self.last_delivery
            && now < last + window
        {
            self.held.extend_from_slice(frames);
            return Paced::Held(Some(last + window));
        }
        self.last_delivery = Some(now);
        Paced::Delivered(self.deliver(frames, out))
    }

    /// Hands the held messages to every member, each member's share in one
    /// go; returns how many frames were queued in all.
    pub(super) fn flush_held(&mut self, now: Instant, out: &mut Vec<Peer>) -> u64 {
        if self.held.is_empty() {
            return 0;
        }
        self.last_delivery = Some(now);
        let held = std::mem::take(&mut self.held);
        self.deliver(&held, out)
    }
}

impl Registry {
    /// Delivers what pacing holds for `room` (a scheduled flush).
    fn flush(&self, room: &RoomName) {
        let mut state = self.lock();
        let Some(entry) = state.rooms.get_mut(room) else {
            return;
        };
        let mut out = Vec::new();
        let n = entry.flush_held(Instant::now(), &mut out);
        self.metrics.frames_out.inc_by(n);
        drop(state);
        self.write_rooms(&[room], &out);
    }

    /// Delivers everything pacing holds, in every room (at shutdown, before
    /// connections are closed).
    pub fn flush_all(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let mut out = Vec::new();
        let n: u64 = state
            .rooms
            .values_mut()
            .map(|r| r.flush_held(now, &mut out))
            .sum();
        self.metrics.frames_out.inc_by(n);
        drop(state);
        self.write_out(&out);
    }

    /// Writes room deliveries queued under the lock, then starts the rooms'
    /// pacing windows: from the end of the writes, so that a delivery that
    /// takes long is not followed at once by the next.
    pub(super) fn write_rooms(&self, rooms: &[&RoomName], out: &[Peer]) {
        self.write_out(out);
        if self.pacing.max_window.is_zero() || rooms.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
        for room in rooms {
            if let Some(entry) = state.rooms.get_mut(*room) {
                entry.last_delivery = Some(now);
            }
        }
    }

    /// Flushes `room` at `at`. Without a runtime (a benchmark driving the
    /// registry by hand) the flush happens now.
    pub(super) fn schedule_flush(&self, room: &RoomName, at: Instant) {
        self.at(
            room,
            at,
            |me, room| me.flush(room),
            |me, room| me.flush(room),
        );
    }

    /// Runs `due` on `room` at `at` on the runtime, or `now` at once where
    /// there is no runtime (a benchmark driving the registry by hand).
    pub(super) fn at(
        &self,
        room: &RoomName,
        at: Instant,
        due: fn(&Registry, &RoomName),
        now: fn(&Registry, &RoomName),
    ) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let room = room.clone();
                runtime.spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    due(&me, &room);
                });
            }
            Err(_) => now(&me, room),
        }
    }
}
