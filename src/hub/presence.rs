//! Presence of one room, coalesced: who joined and who left since the room's
//! last announcement, and the frames that announce it. State only: the
//! registry owns the lock, the members and the clock's wake-ups, and records
//! here each person arriving or going — on this server, or on another one
//! as its membership events tell (`registry::membership`).
//!
//! Why coalesce: a presence frame goes to every member, so one connection
//! looping join/leave makes N frames per loop for a room of N. Here a room
//! announces at most once per interval (`--presence-interval`, 250 ms by
//! default: at most four frames a second however fast people come and go),
//! and an announcement carries the **net** change since the previous one —
//! a join undone before it is announced is never announced at all. Members
//! get the full list once, in `joined`; frames carry only the change.
//!
//! Two kinds of recipients:
//! - members in step with the previous announcement (everyone who joined
//!   before it) get the net change: the people whose presence differs from
//!   what was announced;
//! - members whose `joined` was built since then were given the room as it
//!   was at that moment, which no announcement describes. If anything
//!   changed after their reply they get, instead, the current state of every
//!   person who changed in the interval: applied to their list it gives the
//!   room as it is, whatever they saw. A member whose reply came after the
//!   last change gets nothing.
//!
//! A frame lists each person at most once, so one announcement is bounded by
//! the people who changed in the interval, and those by the join limits.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::domain::RoomName;
use crate::outbox::{ConnId, Frame};
use crate::protocol::{PresenceEvent, ServerMsg, encode};

/// One room's presence changes since its last announcement.
#[derive(Default)]
pub(super) struct RoomPresence {
    /// People whose presence changed since the last announcement, by
    /// case-folded name (so lists come out sorted case-insensitively).
    touched: BTreeMap<String, Change>,
    /// Changes recorded since the last announcement.
    changes: u64,
    /// Members whose `joined` was built since the last announcement, with
    /// `changes` at that moment.
    fresh: HashMap<ConnId, u64>,
    /// When the room last announced.
    last: Option<Instant>,
    /// A wake-up to announce is scheduled.
    pub(super) scheduled: bool,
}

/// One person's presence: as last announced, and now.
struct Change {
    /// The display name announced as present (None: announced absent).
    announced: Option<String>,
    /// The display name present now (None: absent now).
    now: Option<String>,
    /// Display names the person had in the interval (a name freed and
    /// claimed again may change case), the announced one included.
    seen: Vec<String>,
}

/// Display names kept per person and interval: each new one takes a new
/// `hello` after the name was released, so more is not worth keeping.
const NAMES_SEEN: usize = 4;

/// The frames of one announcement and who gets which.
pub(super) struct Announcement {
    /// For members in step with the previous announcement (None: nothing changed for them).
    net: Option<Frame>,
    /// For members whose `joined` came since, and who missed a change.
    current: Option<Frame>,
    fresh: HashMap<ConnId, u64>,
    changes: u64,
}

impl Announcement {
    /// The frame for member `conn`, if it needs one.
    pub(super) fn frame_for(&self, conn: ConnId) -> Option<&Frame> {
        match self.fresh.get(&conn) {
            None => self.net.as_ref(),
            Some(&seen) if seen < self.changes => self.current.as_ref(),
            Some(_) => None,
        }
    }
}

impl RoomPresence {
    /// A person (`key` case-folded, `name` as shown) is in the room now.
    pub(super) fn joined(&mut self, key: &str, name: &str) {
        self.record(key, Some(name), name);
    }

    /// A person is no longer in the room.
    pub(super) fn left(&mut self, key: &str, name: &str) {
        self.record(key, None, name);
    }

    fn record(&mut self, key: &str, now: Option<&str>, name: &str) {
        self.changes += 1;
        let change = self.touched.entry(key.to_owned()).or_insert_with(|| {
            // Before this interval's first change the person was the opposite.
            let announced = now.is_none().then(|| name.to_owned());
            Change {
                seen: announced.iter().cloned().collect(),
                announced,
                now: None,
            }
        });
        change.now = now.map(str::to_owned);
        if change.seen.len() < NAMES_SEEN && !change.seen.iter().any(|n| n == name) {
            change.seen.push(name.to_owned());
        }
    }

    /// Member `conn` was just sent the room's full list (`joined`).
    pub(super) fn synced(&mut self, conn: ConnId) {
        self.fresh.insert(conn, self.changes);
    }

    /// Member `conn` left the room.
    pub(super) fn forget(&mut self, conn: ConnId) {
        self.fresh.remove(&conn);
    }

    /// Whether there is anything to announce.
    pub(super) fn pending(&self) -> bool {
        !self.touched.is_empty()
    }

    /// When the room may announce next: `None` if it may now.
    pub(super) fn not_before(&self, now: Instant, interval: Duration) -> Option<Instant> {
        let at = self.last? + interval;
        (now < at).then_some(at)
    }

    /// Ends the interval: the frames announcing what changed in it.
    pub(super) fn take(&mut self, room: &RoomName, now: Instant) -> Announcement {
        self.last = Some(now);
        let touched = std::mem::take(&mut self.touched);
        let (mut net, mut current) = (Diff::default(), Diff::default());
        for change in touched.into_values() {
            if change.announced != change.now {
                net.add(change.announced, change.now.clone());
            }
            // Someone synced mid-interval may hold any name the person had
            // in it: all but the current one go.
            let now = change.now;
            current
                .left
                .extend(change.seen.into_iter().filter(|n| Some(n) != now.as_ref()));
            current.joined.extend(now);
        }
        Announcement {
            net: net.frame(room),
            current: current.frame(room),
            fresh: std::mem::take(&mut self.fresh),
            changes: std::mem::take(&mut self.changes),
        }
    }
}

/// Names that arrived and names that went.
#[derive(Default)]
struct Diff {
    joined: Vec<String>,
    left: Vec<String>,
}

impl Diff {
    fn add(&mut self, gone: Option<String>, present: Option<String>) {
        self.left.extend(gone);
        self.joined.extend(present);
    }

    fn frame(self, room: &RoomName) -> Option<Frame> {
        // A single change also carries `event` and `user`, as presence
        // frames always did, for clients written against that form.
        let (event, user) = match (&self.joined[..], &self.left[..]) {
            ([], []) => return None,
            ([user], []) => (Some(PresenceEvent::Join), Some(user.clone())),
            ([], [user]) => (Some(PresenceEvent::Leave), Some(user.clone())),
            _ => (None, None),
        };
        Some(Frame::new(encode(
            &ServerMsg::Presence {
                room: room.as_str().to_owned(),
                joined: self.joined,
                left: self.left,
                event,
                user,
            },
            None,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn room() -> RoomName {
        RoomName::parse("r").unwrap()
    }

    fn json_of(frame: Option<&Frame>) -> Value {
        match frame {
            Some(frame) => serde_json::from_slice(frame.payload()).unwrap(),
            None => Value::Null,
        }
    }

    /// Distinct connections, by index.
    fn conn(n: usize) -> ConnId {
        thread_local!(static IDS: Vec<ConnId> = (0..4).map(|_| ConnId::next()).collect());
        IDS.with(|ids| ids[n])
    }

    #[test]
    fn a_join_undone_before_the_announcement_is_never_announced() {
        let mut p = RoomPresence::default();
        p.joined("bob", "bob");
        p.left("bob", "bob");
        p.joined("carol", "Carol");
        let a = p.take(&room(), Instant::now());
        assert_eq!(
            json_of(a.frame_for(conn(1))),
            json!({"type":"presence","room":"r","joined":["Carol"],"left":[],"event":"join","user":"Carol"})
        );
        // Nothing changed since: nothing to say.
        p.left("carol", "Carol");
        p.joined("carol", "Carol");
        let a = p.take(&room(), Instant::now());
        assert_eq!(json_of(a.frame_for(conn(1))), Value::Null);
    }

    #[test]
    fn a_burst_is_one_frame_with_the_net_change_sorted() {
        let mut p = RoomPresence::default();
        for name in ["dave", "Bob", "alice"] {
            p.joined(&name.to_lowercase(), name);
        }
        let _ = p.take(&room(), Instant::now());
        p.left("dave", "dave");
        p.joined("eve", "eve");
        p.left("alice", "alice");
        p.joined("alice", "alice");
        p.joined("carl", "Carl");
        let a = p.take(&room(), Instant::now());
        assert_eq!(
            json_of(a.frame_for(conn(1))),
            json!({"type":"presence","room":"r","joined":["Carl","eve"],"left":["dave"]})
        );
    }

    #[test]
    fn a_member_synced_mid_interval_gets_the_state_of_everyone_touched() {
        let mut p = RoomPresence::default();
        // bob was announced absent; he comes, a member joins and sees him,
        // then he goes: the net change is nothing, but the newcomer holds bob.
        p.joined("bob", "bob");
        p.synced(conn(2));
        p.left("bob", "bob");
        // A member synced after the last change needs nothing.
        p.synced(conn(3));
        let a = p.take(&room(), Instant::now());
        assert_eq!(json_of(a.frame_for(conn(1))), Value::Null);
        assert_eq!(
            json_of(a.frame_for(conn(2))),
            json!({"type":"presence","room":"r","joined":[],"left":["bob"],"event":"leave","user":"bob"})
        );
        assert_eq!(json_of(a.frame_for(conn(3))), Value::Null);
        // After the announcement everyone is in step again.
        p.joined("eve", "eve");
        let a = p.take(&room(), Instant::now());
        assert_eq!(json_of(a.frame_for(conn(2))), json_of(a.frame_for(conn(1))));
    }

    #[test]
    fn a_name_that_changes_case_is_replaced() {
        let mut p = RoomPresence::default();
        p.joined("bob", "bob");
        let _ = p.take(&room(), Instant::now());
        p.left("bob", "bob");
        p.joined("bob", "Bob");
        p.synced(conn(2));
        p.left("bob", "Bob");
        p.joined("bob", "BOB");
        let a = p.take(&room(), Instant::now());
        assert_eq!(
            json_of(a.frame_for(conn(1))),
            json!({"type":"presence","room":"r","joined":["BOB"],"left":["bob"]})
        );
        // The newcomer held "Bob": every earlier name goes.
        let current = json_of(a.frame_for(conn(2)));
        assert_eq!(current["joined"], json!(["BOB"]));
        assert_eq!(current["left"], json!(["bob", "Bob"]));
    }

    #[test]
    fn announcements_are_an_interval_apart() {
        let mut p = RoomPresence::default();
        let t0 = Instant::now();
        let interval = Duration::from_millis(250);
        assert_eq!(p.not_before(t0, interval), None);
        p.joined("a", "a");
        let _ = p.take(&room(), t0);
        let later = t0 + Duration::from_millis(100);
        assert_eq!(p.not_before(later, interval), Some(t0 + interval));
        assert_eq!(p.not_before(t0 + interval, interval), None);
        assert_eq!(p.not_before(later, Duration::ZERO), None);
    }
}
