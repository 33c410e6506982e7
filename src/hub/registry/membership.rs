//! Members and people: who is in each room — this server's connections,
//! and people on other servers as their membership events tell — leaving,
//! disconnecting, the queries the room list asks, and presence.
//!
//! **People.** A person is in a room while any of their connections is,
//! on any server. Local connections count at once, under the lock (so a
//! joiner's own `joined` lists it, and a room's list always matches its
//! connections); a person's first connection here joining, or last one
//! leaving, is published as a [`Membership`] event for the other servers.
//! Other servers' events are applied as they arrive ([`Registry::membership`]);
//! this server's own come back from the broker too and are skipped, being
//! counted already. A server learns of people elsewhere in a room only
//! from events published while it is subscribed to the room.
//!
//! **Presence** is coalesced per room ([`super::super::presence`]): `joined`
//! carries the room's full list, and changes after it are announced at
//! most once per `--presence-interval`, as the net change since the
//! previous announcement — whichever server the change happened on. A room
//! announces at once when its previous announcement is older than the
//! interval, else when the interval ends. An announcement first flushes
//! what pacing holds, so members see events in the order they happened.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{Person, Registry, Room, State, person_key};
use crate::broker::{Change, Membership, RoomEvent};
use crate::clock;
use crate::domain::{Nickname, RoomName};
use crate::outbox::Frame;
use crate::outbox::{ConnId, Peer};
use crate::protocol::{self, ServerMsg, encode};

impl Room {
    /// Counts a local connection of `name` in the people list. Returns
    /// whether it is the person's first connection here, and whether the
    /// person is new to the room (on no server before).
    pub(super) fn count_in(&mut self, name: &Nickname) -> (bool, bool) {
        let person = self
            .people
            .entry(person_key(name.as_str()))
            .or_insert_with(|| Person {
                display: name.as_str().to_owned(),
                here: 0,
                elsewhere: 0,
            });
        person.here += 1;
        (person.here == 1, person.here + person.elsewhere == 1)
    }

    /// After a presence change: announces now if the room's previous
    /// announcement is an interval old, else returns when to (unless a
    /// wake-up is scheduled already). Returns frames queued too.
    pub(super) fn presence_changed(
        &mut self,
        room: &RoomName,
        interval: Duration,
        out: &mut Vec<Peer>,
    ) -> (u64, Option<Instant>) {
        let now = Instant::now();
        match self.presence.not_before(now, interval) {
            None => (self.announce(room, now, out), None),
            Some(_) if self.presence.scheduled => (0, None),
            Some(at) => {
                self.presence.scheduled = true;
                (0, Some(at))
            }
        }
    }

    /// Announces the presence changes since the previous announcement,
    /// after whatever is held (so members see events in the order they
    /// happened); returns frames queued.
    fn announce(&mut self, room: &RoomName, now: Instant, out: &mut Vec<Peer>) -> u64 {
        let announcement = self.presence.take(room, now);
        let mut queued = self.flush_held(now, out);
        for (id, member) in &mut self.members {
            let Some(frame) = announcement.frame_for(*id) else {
                continue;
            };
            if member.is_live() {
                queued += member.peer.queue(std::slice::from_ref(frame));
                out.push(member.peer.clone());
            } else {
                member.buffer(std::slice::from_ref(frame));
            }
        }
        queued
    }
}

impl Registry {
    pub fn is_member(&self, room: &RoomName, conn: ConnId) -> bool {
        self.lock()
            .rooms
            .get(room)
            .is_some_and(|r| r.members.contains_key(&conn))
    }

    /// Rooms `conn` is in now.
    pub fn rooms_of(&self, conn: ConnId) -> usize {
        self.lock().conns.get(&conn).map_or(0, HashSet::len)
    }

    /// Removes `conn` from `room`; tells the others if its person left.
    /// Returns false if it was not a member.
    pub fn leave(&self, room: &RoomName, conn: ConnId) -> bool {
        let mut state = self.lock();
        if let Some(rooms) = state.conns.get_mut(&conn) {
            rooms.remove(room);
        }
        let mut out = Vec::new();
        let mut wakes = Vec::new();
        let left = self.leave_locked(&mut state, room, conn, &mut out, &mut wakes);
        drop(state);
        self.write_out(&out);
        self.schedule_presences(wakes);
        left
    }

    fn leave_locked(
        &self,
        state: &mut State,
        room: &RoomName,
        conn: ConnId,
        out: &mut Vec<Peer>,
        wakes: &mut Vec<(RoomName, Instant)>,
    ) -> bool {
        let Some(entry) = state.rooms.get_mut(room) else {
            return false;
        };
        let Some(member) = entry.members.remove(&conn) else {
            return false;
        };
        entry.presence.forget(conn);
        let key = person_key(member.name.as_str());
        // The name as the room lists it: a person's tabs may spell it in
        // other cases, and clients remove names as they were listed.
        let mut person_left = None;
        if member.counted
            && let Some(person) = entry.people.get_mut(&key)
        {
            person.here -= 1;
            if person.here == 0 {
                self.handoff.membership(RoomEvent::Membership(Membership {
                    room: room.clone(),
                    person: member.name.clone(),
                    change: Change::Left,
                    origin: self.server,
                }));
                if person.elsewhere == 0 {
                    person_left = entry.people.remove(&key).map(|p| p.display);
                }
            }
        }
        if entry.members.is_empty() {
            // Nobody here needs the room's events any more; its tail would
            // go stale without them.
            state.rooms.remove(room);
            self.metrics.rooms_active.dec();
            self.stop_following(room);
        } else if let Some(display) = person_left {
            entry.presence.left(&key, &display);
            let (n, wake) = entry.presence_changed(room, self.pacing.presence_interval, out);
            self.metrics.frames_out.inc_by(n);
            wakes.extend(wake.map(|at| (room.clone(), at)));
        }
        true
    }

    /// The room has no local member left: unsubscribed at the broker, and
    /// its recent tail dropped (no longer fed, it would miss messages).
    fn stop_following(&self, room: &RoomName) {
        self.broker.unsubscribe(room);
        self.recent.forget(room);
    }

    /// Forgets a closed connection: leaves its rooms.
    pub fn disconnect(&self, conn: ConnId) {
        let mut state = self.lock();
        let rooms = state.conns.remove(&conn).unwrap_or_default();
        let mut out = Vec::new();
        let mut wakes = Vec::new();
        for room in &rooms {
            self.leave_locked(&mut state, room, conn, &mut out, &mut wakes);
        }
        drop(state);
        self.write_out(&out);
        self.schedule_presences(wakes);
    }

    /// Applies another server's membership change to the room's people,
    /// and announces it if someone arrived or went. This server's own
    /// changes were applied when they happened.
    pub(super) fn membership(&self, change: &Membership) {
        if change.origin == self.server {
            return;
        }
        let mut state = self.lock();
        // Not a room this server follows (any more).
        let Some(entry) = state.rooms.get_mut(&change.room) else {
            return;
        };
        let key = person_key(change.person.as_str());
        let announced = match change.change {
            Change::Joined => {
                let person = entry.people.entry(key.clone()).or_insert_with(|| Person {
                    display: change.person.as_str().to_owned(),
                    here: 0,
                    elsewhere: 0,
                });
                person.elsewhere += 1;
                (person.here + person.elsewhere == 1).then(|| {
                    entry.presence.joined(&key, &person.display);
                })
            }
            Change::Left => {
                let Some(person) = entry.people.get_mut(&key) else {
                    return;
                };
                person.elsewhere = person.elsewhere.saturating_sub(1);
                (person.here + person.elsewhere == 0).then(|| {
                    let display = entry.people.remove(&key).expect("just read").display;
                    entry.presence.left(&key, &display);
                })
            }
        };
        if announced.is_none() {
            return;
        }
        let mut out = Vec::new();
        let (n, wake) =
            entry.presence_changed(&change.room, self.pacing.presence_interval, &mut out);
        self.metrics.frames_out.inc_by(n);
        drop(state);
        self.write_out(&out);
        if let Some(at) = wake {
            self.schedule_presence(&change.room, at);
        }
    }

    /// The `limit` rooms with the most people online, most first (ties by
    /// name), and how many. Every `hello` asks, so only the winners' names
    /// are copied: with thousands of rooms, copying and sorting them all was
    /// most of the cost of setting up a connection.
    pub fn busiest(&self, limit: usize) -> Vec<(RoomName, usize)> {
        let state = self.lock();
        let mut rooms: Vec<(&RoomName, usize)> = state
            .rooms
            .iter()
            .map(|(name, room)| (name, room.people.len()))
            .collect();
        let order = |a: &(&RoomName, usize), b: &(&RoomName, usize)| {
            b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0))
        };
        if limit < rooms.len() {
            rooms.select_nth_unstable_by(limit, order);
            rooms.truncate(limit);
        }
        rooms.sort_unstable_by(order);
        rooms
            .into_iter()
            .map(|(name, n)| (name.clone(), n))
            .collect()
    }

    /// Rooms with at least one member now.
    pub fn occupied(&self) -> Vec<RoomName> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// Whether anyone is in `room` (a member, or a joiner still catching up).
    pub fn is_occupied(&self, room: &RoomName) -> bool {
        self.lock().rooms.contains_key(room)
    }

    /// Distinct people online in each of `rooms` (0 where nobody is).
    pub fn online_in(&self, rooms: &[&str]) -> Vec<usize> {
        let state = self.lock();
        rooms
            .iter()
            .map(|room| state.rooms.get(*room).map_or(0, |r| r.people.len()))
            .collect()
    }

    /// Takes everyone out of a room that no longer exists: each member gets
    /// what pacing still held for it (those messages were stored), then
    /// `notice` and a `left` for the room, which is forgotten with its
    /// pacing state. Returns how many connections were in it. (Every server
    /// removes the room itself: nothing is published.)
    pub fn close_room(&self, room: &RoomName, notice: &str) -> usize {
        let mut state = self.lock();
        let Some(mut entry) = state.rooms.remove(room) else {
            return 0;
        };
        self.metrics.rooms_active.dec();
        self.stop_following(room);
        let mut out = Vec::new();
        let n = entry.flush_held(Instant::now(), &mut out);
        self.metrics.frames_out.inc_by(n);
        let frames = [
            Frame::new(encode(
                &ServerMsg::Notice {
                    room: room.as_str().to_owned(),
                    text: notice.to_owned(),
                    kind: protocol::NoticeKind::RoomRemoved,
                    ts: clock::now_ms(),
                },
                None,
            )),
            Frame::new(encode(
                &ServerMsg::Left {
                    room: room.as_str().to_owned(),
                },
                None,
            )),
        ];
        let members = entry.members.len();
        for (conn, member) in entry.members {
            if let Some(rooms) = state.conns.get_mut(&conn) {
                rooms.remove(room);
            }
            member.peer.queue(&frames);
            out.push(member.peer);
        }
        drop(state);
        self.write_out(&out);
        members
    }

    /// Announces `room`'s presence changes if its interval is over (a
    /// scheduled wake-up), or at once when `now_anyway`.
    fn announce_due(&self, room: &RoomName, now_anyway: bool) {
        let mut state = self.lock();
        let Some(entry) = state.rooms.get_mut(room) else {
            return;
        };
        entry.presence.scheduled = false;
        if !entry.presence.pending() {
            return;
        }
        let interval = if now_anyway {
            Duration::ZERO
        } else {
            self.pacing.presence_interval
        };
        let mut out = Vec::new();
        let (n, wake) = entry.presence_changed(room, interval, &mut out);
        self.metrics.frames_out.inc_by(n);
        drop(state);
        self.write_out(&out);
        if let Some(at) = wake {
            self.schedule_presence(room, at);
        }
    }

    fn schedule_presences(&self, wakes: Vec<(RoomName, Instant)>) {
        for (room, at) in wakes {
            self.schedule_presence(&room, at);
        }
    }

    /// Announces `room`'s presence at `at`. Without a runtime (a benchmark
    /// driving the registry by hand) it is announced now.
    pub(super) fn schedule_presence(&self, room: &RoomName, at: Instant) {
        self.at(
            room,
            at,
            |me, room| me.announce_due(room, false),
            |me, room| me.announce_due(room, true),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::broker::{Change, Membership, RoomEvent, ServerId, Subscriber};
    use crate::domain::{Nickname, RoomName};
    use crate::hub::Peer;

    #[test]
    fn the_busiest_rooms_come_most_first_then_by_name() {
        let registry = unpaced();
        for (room, people) in [("d", 1), ("b", 3), ("a", 1), ("c", 3), ("e", 2)] {
            for i in 0..people {
                join(&registry, room, &format!("{room}{i}"));
            }
        }
        let names = |list: Vec<(RoomName, usize)>| -> Vec<(String, usize)> {
            list.into_iter()
                .map(|(r, n)| (r.as_str().to_owned(), n))
                .collect()
        };
        assert_eq!(
            names(registry.busiest(3)),
            [("b".into(), 3), ("c".into(), 3), ("e".into(), 2)]
        );
        assert_eq!(registry.busiest(10).len(), 5);
        assert_eq!(registry.busiest(0).len(), 0);
        assert_eq!(registry.online_in(&["c", "nowhere", "a"]), [3, 0, 1]);
    }

    #[test]
    fn a_person_leaves_under_the_name_the_room_listed() {
        let registry = unpaced();
        let watcher = outbox();
        join_as(&registry, &Peer::new(watcher.clone()), "a", "watcher");
        let (tab1, tab2) = (Peer::new(outbox()), Peer::new(outbox()));
        // Two tabs of one person, the second spelling the name otherwise.
        join_as(&registry, &tab1, "a", "alice");
        join_as(&registry, &tab2, "a", "ALICE");
        let a = room("a");
        registry.leave(&a, tab1.id());
        registry.leave(&a, tab2.id());
        let seen = presences(&watcher);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0]["joined"], serde_json::json!(["alice"]));
        assert_eq!(seen[1]["left"], serde_json::json!(["alice"]));
    }

    fn membership(room: &RoomName, person: &str, change: Change, origin: ServerId) -> RoomEvent {
        RoomEvent::Membership(Membership {
            room: room.clone(),
            person: Nickname::parse(person).unwrap(),
            change,
            origin,
        })
    }

    /// Presence is computed from membership events: a person on another
    /// server is announced, listed and counted like a local one, and stays
    /// while any server has them in the room.
    #[test]
    fn people_on_other_servers_come_and_go_through_membership_events() {
        let registry = unpaced();
        let watcher = outbox();
        join_as(&registry, &Peer::new(watcher.clone()), "a", "watcher");
        let _ = presences(&watcher);
        let a = room("a");
        let (one, two) = (ServerId::random(), ServerId::random());
        registry.receive(&[membership(&a, "Bob", Change::Joined, one)]);
        assert_eq!(presences(&watcher)[0]["joined"], serde_json::json!(["Bob"]));
        assert_eq!(registry.online_in(&["a"]), [2]);
        // Bob on a second server too, and a local tab of his: still one person.
        registry.receive(&[membership(&a, "bob", Change::Joined, two)]);
        let tab = Peer::new(outbox());
        join_as(&registry, &tab, "a", "bob");
        assert_eq!(presences(&watcher), Vec::<serde_json::Value>::new());
        // A newcomer's `joined` lists him as the room does.
        let newcomer = outbox();
        join_as(&registry, &Peer::new(newcomer.clone()), "a", "carol");
        let (frames, _) = newcomer.take(10);
        let joined: serde_json::Value = serde_json::from_slice(frames[0].payload()).unwrap();
        assert_eq!(
            joined["users"],
            serde_json::json!(["Bob", "carol", "watcher"])
        );
        let _ = presences(&watcher);
        // He leaves everywhere: announced once, when the last place goes.
        registry.receive(&[membership(&a, "Bob", Change::Left, one)]);
        registry.leave(&a, tab.id());
        assert_eq!(presences(&watcher), Vec::<serde_json::Value>::new());
        registry.receive(&[membership(&a, "bob", Change::Left, two)]);
        let seen = presences(&watcher);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0]["left"], serde_json::json!(["Bob"]));
        assert_eq!(registry.online_in(&["a"]), [2]);
    }

    /// This server's own changes, coming back from the broker, are not
    /// counted twice; a room nobody here is in ignores other servers' events.
    #[test]
    fn own_echoes_and_unfollowed_rooms_change_nothing() {
        let registry = unpaced();
        let watcher = outbox();
        join_as(&registry, &Peer::new(watcher.clone()), "a", "watcher");
        let a = room("a");
        registry.receive(&[membership(&a, "watcher", Change::Left, registry.server)]);
        assert_eq!(registry.online_in(&["a"]), [1]);
        registry.receive(&[membership(
            &room("b"),
            "bob",
            Change::Joined,
            ServerId::random(),
        )]);
        assert_eq!(registry.online_in(&["b"]), [0]);
    }
}
