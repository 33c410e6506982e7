//! Who is in which room: this server's membership state, and local
//! delivery of frames to room members. (Who holds which name is
//! `identity`'s.)
//!
//! One `std::sync::Mutex` guards it all. Sections are short and never await,
//! and one lock keeps the invariants simple: a room's people list always
//! matches its connections, and presence frames go out in the order the
//! changes happened (they are queued under the same lock).
//!
//! **Presence** is coalesced per room ([`super::presence`]): `joined`
//! carries the room's full list, and changes after it are announced at
//! most once per `--presence-interval`, as the net change since the
//! previous announcement. A room announces at once when its previous
//! announcement is older than the interval, else when the interval ends. Socket writes
//! never happen under it: frames are queued to each member's outbox under
//! the lock and written once it is released ([`Peer::queue`],
//! [`Peer::write_queued`]); whoever writes takes the outbox's frames in
//! queue order, so order is kept.
//!
//! **Pacing.** Handing a frame to N members costs N socket writes, and on
//! loopback a write costs several microseconds whether it carries one frame
//! or fifty. So a room delivered to less than its window ago (N × 5 µs by
//! default, capped by `--broadcast-window`, counted from the end of the
//! previous delivery's writes) holds new messages back until the window has
//! passed, and they then go out together: one write per member for the lot.
//! A quiet room's message goes out at once; a busy big room's members are
//! written about once per window instead of once per message. An
//! announcement of presence first flushes what is held, so the order
//! members see is unchanged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::presence::RoomPresence;
use crate::broker::LocalDelivery;
use crate::clock;
use crate::domain::{Nickname, RoomName};
use crate::metrics::Metrics;
use crate::outbox::{self, ConnId, Frame, Peer, SocketWrites};
use crate::protocol::{self, EncodedMessages, ErrorCode, Ref, ServerMsg, encode};

/// A joiner's catch-up, its messages already serialized.
pub struct PreparedCatchUp {
    pub messages: EncodedMessages,
    pub last_seq: u64,
    pub truncated: bool,
}

/// A refused request: what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    /// For `rate_limited`: when trying again will work.
    pub retry_after_ms: Option<u64>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn rate_limited(message: impl Into<String>, retry_after_ms: Option<u64>) -> Self {
        Self {
            code: ErrorCode::RateLimited,
            message: message.into(),
            retry_after_ms,
        }
    }
}

pub struct Registry {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    pacing: Pacing,
    writes: SocketWrites,
    /// Itself, for the tasks that flush held frames.
    me: Weak<Registry>,
}

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

#[derive(Default)]
struct State {
    /// Rooms each connection is in, to leave them all on disconnect.
    conns: HashMap<ConnId, HashSet<RoomName>>,
    /// Rooms with at least one member; empty rooms are dropped.
    rooms: HashMap<RoomName, Room>,
}

#[derive(Default)]
struct Room {
    members: HashMap<ConnId, Member>,
    /// Distinct people in the room (lower-cased name -> display name,
    /// connection count): in the order `users` lists them. Lower-cased names
    /// are unique among the people online, as their look-alike keys are.
    people: BTreeMap<String, (String, usize)>,
    /// Messages held back by pacing, oldest first; a flush is scheduled
    /// whenever this is not empty.
    held: Vec<Frame>,
    /// When frames were last handed to the members.
    last_delivery: Option<Instant>,
    /// Presence changes not yet announced.
    presence: RoomPresence,
}

struct Member {
    peer: Peer,
    name: Nickname,
    gate: Gate,
    /// Counted in the room's people list (from its first `joined` on).
    counted: bool,
}

/// Whether live frames go straight to a member or wait for its `joined` reply.
enum Gate {
    /// Between registering and sending `joined`: frames wait in `buffered`
    /// so the client never sees a live message before the reply that
    /// catches it up. `after_seq` is the member's filter from before this
    /// join (0 on a first join), put back if the join is abandoned.
    CatchingUp {
        buffered: Vec<Frame>,
        after_seq: u64,
    },
    /// Frames with `seq <= after_seq` were in `joined` already and are skipped.
    Live { after_seq: u64 },
}

/// A person's entry in a room's people list: `users` are sorted
/// case-insensitively.
fn person_key(name: &Nickname) -> String {
    name.as_str().to_lowercase()
}

/// Frames buffered for one catching-up member before it counts as too slow.
const CATCH_UP_BUFFER: usize = 1024;

impl Room {
    fn users(&self) -> Vec<String> {
        self.people.values().map(|(name, _)| name.clone()).collect()
    }

    /// Hands the held messages to every member, each member's share in one
    /// go; returns how many frames were queued in all.
    fn flush_held(&mut self, now: Instant, out: &mut Vec<Peer>) -> u64 {
        if self.held.is_empty() {
            return 0;
        }
        self.last_delivery = Some(now);
        let held = std::mem::take(&mut self.held);
        self.deliver(&held, None, out)
    }

    /// Queues `frames` (in order) for every member but `except`, adding each
    /// member given any to `out`, to be written once the registry's lock is
    /// released; returns how many frames were queued in all.
    fn deliver(&mut self, frames: &[Frame], except: Option<ConnId>, out: &mut Vec<Peer>) -> u64 {
        let mut delivered = 0;
        for (id, member) in &mut self.members {
            if Some(*id) == except {
                continue;
            }
            match &mut member.gate {
                Gate::CatchingUp {
                    buffered: buffer, ..
                } => {
                    if buffer.len() + frames.len() > CATCH_UP_BUFFER {
                        member
                            .peer
                            .kick(crate::protocol::close::TRY_AGAIN_LATER, "too slow");
                    } else {
                        buffer.extend_from_slice(frames);
                    }
                }
                Gate::Live { after_seq } => {
                    // Messages the member's `joined` carried already come
                    // first (messages are delivered in seq order).
                    let after_seq = *after_seq;
                    let fresh =
                        frames.partition_point(|f| f.seq().is_some_and(|seq| seq <= after_seq));
                    if fresh < frames.len() {
                        delivered += member.peer.queue(&frames[fresh..]);
                        out.push(member.peer.clone());
                    }
                }
            }
        }
        delivered
    }

    /// After a presence change: announces now if the room's previous
    /// announcement is an interval old, else returns when to (unless a
    /// wake-up is scheduled already). Returns frames queued too.
    fn presence_changed(
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
            match &mut member.gate {
                Gate::CatchingUp { buffered, .. } => {
                    if buffered.len() >= CATCH_UP_BUFFER {
                        member
                            .peer
                            .kick(crate::protocol::close::TRY_AGAIN_LATER, "too slow");
                    } else {
                        buffered.push(frame.clone());
                    }
                }
                Gate::Live { .. } => {
                    queued += member.peer.queue(std::slice::from_ref(frame));
                    out.push(member.peer.clone());
                }
            }
        }
        queued
    }
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>, pacing: Pacing, writes: SocketWrites) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            state: Mutex::new(State::default()),
            metrics,
            pacing,
            writes,
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still the best we have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

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

    /// First half of a join: from now on, frames for `room` are kept for
    /// `peer` until [`Registry::finish_join`]. Returns whether it was already a member.
    pub fn begin_join(&self, room: &RoomName, peer: &Peer, name: &Nickname) -> bool {
        let mut state = self.lock();
        state
            .conns
            .entry(peer.id())
            .or_default()
            .insert(room.clone());
        let is_new_room = !state.rooms.contains_key(room);
        let entry = state.rooms.entry(room.clone()).or_default();
        let already = match entry.members.get_mut(&peer.id()) {
            Some(member) => {
                // A repeated join re-syncs the client: hold live frames again
                // until the fresh `joined` reply is out.
                if let Gate::Live { after_seq } = member.gate {
                    member.gate = Gate::CatchingUp {
                        buffered: Vec::new(),
                        after_seq,
                    };
                }
                true
            }
            None => {
                entry.members.insert(
                    peer.id(),
                    Member {
                        peer: peer.clone(),
                        name: name.clone(),
                        gate: Gate::CatchingUp {
                            buffered: Vec::new(),
                            after_seq: 0,
                        },
                        counted: false,
                    },
                );
                false
            }
        };
        if is_new_room {
            self.metrics.rooms_active.inc();
        }
        already
    }

    /// Second half of a join: queues `joined` (and, on a first join, the
    /// `welcome` notice), then what arrived meanwhile, and tells the other
    /// members if a new person arrived.
    pub fn finish_join(
        &self,
        room: &RoomName,
        conn: ConnId,
        catch_up: PreparedCatchUp,
        welcome: &str,
        r#ref: Option<&Ref>,
    ) {
        let mut state = self.lock();
        let Some(entry) = state.rooms.get_mut(room) else {
            return;
        };
        let Some(member) = entry.members.get_mut(&conn) else {
            return;
        };
        let name = member.name.clone();
        let Gate::CatchingUp { buffered, .. } = std::mem::replace(
            &mut member.gate,
            Gate::Live {
                after_seq: catch_up.last_seq,
            },
        ) else {
            return;
        };
        let peer = member.peer.clone();
        let first_join = !member.counted;
        member.counted = true;
        let mut is_new_person = false;
        if first_join {
            let count = entry
                .people
                .entry(person_key(&name))
                .or_insert_with(|| (name.as_str().to_owned(), 0));
            count.1 += 1;
            is_new_person = count.1 == 1;
        }
        if is_new_person {
            entry.presence.joined(&person_key(&name), name.as_str());
        }
        // The list below is the room as it is now: later announcements
        // tell this member only what changes after it.
        entry.presence.synced(conn);
        let last_seq = catch_up.last_seq;
        let mut frames = vec![Frame::new(protocol::encode_joined(
            room.as_str(),
            &entry.users(),
            &catch_up.messages,
            last_seq,
            catch_up.truncated,
            r#ref,
        ))];
        if first_join {
            frames.push(Frame::new(encode(
                &ServerMsg::Notice {
                    room: room.as_str().to_owned(),
                    text: welcome.to_owned(),
                    ts: clock::now_ms(),
                    kind: protocol::NoticeKind::Welcome,
                },
                None,
            )));
        }
        // Of what arrived meanwhile, only messages newer than the reply
        // matter. Presence frames are dropped: `users` in `joined` was
        // computed just now and already includes their effect.
        frames.extend(
            buffered
                .into_iter()
                .filter(|frame| frame.seq().is_some_and(|seq| seq > last_seq)),
        );
        peer.queue(&frames);
        let mut out = vec![peer];
        let mut wake = None;
        if is_new_person {
            let (n, at) = entry.presence_changed(room, self.pacing.presence_interval, &mut out);
            self.metrics.frames_out.inc_by(n);
            wake = at;
        }
        drop(state);
        self.write_out(&out);
        if let Some(at) = wake {
            self.schedule_presence(room, at);
        }
    }

    /// Undoes [`Registry::begin_join`] when the join could not complete.
    pub fn abort_join(&self, room: &RoomName, conn: ConnId, was_member: bool) {
        if was_member {
            let mut state = self.lock();
            if let Some(member) = state
                .rooms
                .get_mut(room)
                .and_then(|r| r.members.get_mut(&conn))
            {
                // The client is still a member; let frames flow again, as
                // filtered as before this join: what arrived meanwhile may
                // include messages its previous `joined` carried (a pacing
                // hold flushed into the buffer).
                if let Gate::CatchingUp {
                    buffered,
                    after_seq,
                } = std::mem::replace(&mut member.gate, Gate::Live { after_seq: 0 })
                {
                    member.gate = Gate::Live { after_seq };
                    let fresh: Vec<Frame> = buffered
                        .into_iter()
                        .filter(|frame| frame.seq().is_none_or(|seq| seq > after_seq))
                        .collect();
                    member.peer.queue(&fresh);
                    let peer = member.peer.clone();
                    drop(state);
                    peer.write_queued();
                }
            }
        } else {
            self.leave(room, conn);
        }
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
        let key = person_key(&member.name);
        // The name as the room lists it: a person's tabs may spell it in
        // other cases, and clients remove names as they were listed.
        let mut person_left = None;
        if member.counted
            && let Some((_, n)) = entry.people.get_mut(&key)
        {
            *n -= 1;
            if *n == 0 {
                person_left = entry.people.remove(&key).map(|(display, _)| display);
            }
        }
        if entry.members.is_empty() {
            state.rooms.remove(room);
            self.metrics.rooms_active.dec();
        } else if let Some(display) = person_left {
            entry.presence.left(&key, &display);
            let (n, wake) = entry.presence_changed(room, self.pacing.presence_interval, out);
            self.metrics.frames_out.inc_by(n);
            wakes.extend(wake.map(|at| (room.clone(), at)));
        }
        true
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

    /// Takes everyone out of a room that no longer exists: each member gets
    /// what pacing still held for it (those messages were stored), then
    /// `notice` and a `left` for the room, which is forgotten with its
    /// pacing state. Returns how many connections were in it.
    pub fn close_room(&self, room: &RoomName, notice: &str) -> usize {
        let mut state = self.lock();
        let Some(mut entry) = state.rooms.remove(room) else {
            return 0;
        };
        self.metrics.rooms_active.dec();
        let mut out = Vec::new();
        let n = entry.flush_held(Instant::now(), &mut out);
        self.metrics.frames_out.inc_by(n);
        let frames = [
            Frame::new(encode(
                &ServerMsg::Notice {
                    room: room.as_str().to_owned(),
                    text: notice.to_owned(),
                    ts: clock::now_ms(),
                    kind: protocol::NoticeKind::RoomRemoved,
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

    /// Distinct people online in each of `rooms` (0 where nobody is).
    pub fn online_in(&self, rooms: &[&str]) -> Vec<usize> {
        let state = self.lock();
        rooms
            .iter()
            .map(|room| state.rooms.get(*room).map_or(0, |r| r.people.len()))
            .collect()
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
    fn write_rooms(&self, rooms: &[&RoomName], out: &[Peer]) {
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

    /// Writes what was queued for `peers` under the registry's lock, once it
    /// is released: socket writes never happen under it.
    fn write_out(&self, peers: &[Peer]) {
        let ring = outbox::write_round(peers, self.writes);
        self.metrics.send_batches.inc_by(ring.calls);
        self.metrics.batched_sends.inc_by(ring.sends);
    }

    /// Flushes `room` at `at`. Without a runtime (a benchmark driving the
    /// registry by hand) the flush happens now.
    fn schedule_flush(&self, room: &RoomName, at: Instant) {
        self.at(
            room,
            at,
            |me, room| me.flush(room),
            |me, room| me.flush(room),
        );
    }

    /// Runs `due` on `room` at `at` on the runtime, or `now` at once where
    /// there is no runtime (a benchmark driving the registry by hand).
    fn at(
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

impl Registry {
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
    fn schedule_presence(&self, room: &RoomName, at: Instant) {
        self.at(
            room,
            at,
            |me, room| me.announce_due(room, false),
            |me, room| me.announce_due(room, true),
        );
    }
}

impl LocalDelivery for Registry {
    fn deliver(&self, frames: &[(RoomName, Frame)]) {
        let now = Instant::now();
        // Each room's frames, in order: a room's share of a commit goes to
        // each member in one write.
        let mut rooms: Vec<(&RoomName, Vec<Frame>)> = Vec::new();
        let mut index: HashMap<&RoomName, usize> = HashMap::new();
        for (room, frame) in frames {
            let i = *index.entry(room).or_insert_with(|| {
                rooms.push((room, Vec::new()));
                rooms.len() - 1
            });
            rooms[i].1.push(frame.clone());
        }
        let mut out = Vec::new();
        let mut delivered = Vec::new();
        let mut flushes = Vec::new();
        let mut state = self.lock();
        let mut queued = 0;
        for (room, frames) in rooms {
            let Some(entry) = state.rooms.get_mut(room) else {
                continue;
            };
            if !entry.held.is_empty() {
                // A flush is already scheduled; these go out with it.
                entry.held.extend(frames);
                continue;
            }
            let window = self.pacing.window(entry.members.len());
            if let Some(last) = entry.last_delivery
                && now < last + window
            {
                entry.held.extend(frames);
                flushes.push((room, last + window));
                continue;
            }
            entry.last_delivery = Some(now);
            queued += entry.deliver(&frames, None, &mut out);
            delivered.push(room);
        }
        self.metrics.frames_out.inc_by(queued);
        drop(state);
        for (room, at) in flushes {
            self.schedule_flush(room, at);
        }
        if delivered.len() > 1 {
            // Someone in several of the rooms is written once, for all of them.
            out.sort_unstable_by_key(Peer::id);
            out.dedup_by_key(|peer| peer.id());
        }
        self.write_rooms(&delivered, &out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;

    fn join(registry: &Registry, room: &str, name: &str) {
        join_as(
            registry,
            &Peer::new(Arc::new(Outbox::new(64, 1 << 20))),
            room,
            name,
        );
    }

    fn join_as(registry: &Registry, peer: &Peer, room: &str, name: &str) {
        let room = RoomName::parse(room).unwrap();
        let name = Nickname::parse(name).unwrap();
        registry.begin_join(&room, peer, &name);
        let catch_up = PreparedCatchUp {
            messages: EncodedMessages::encode::<crate::protocol::ChatMessage>(&[]),
            last_seq: 0,
            truncated: false,
        };
        registry.finish_join(&room, peer.id(), catch_up, "hi", None);
    }

    /// A registry that never holds frames and writes one socket at a time.
    fn unpaced() -> Arc<Registry> {
        Registry::new(
            Arc::new(Metrics::new()),
            Pacing::OFF,
            SocketWrites::OneByOne,
        )
    }

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

    /// Chat messages queued for an outbox (join replies and presence aside).
    fn messages(outbox: &Outbox) -> Vec<u64> {
        let (frames, _) = outbox.take(1000);
        frames.iter().filter_map(Frame::seq).collect()
    }

    #[test]
    fn an_abandoned_rejoin_keeps_skipping_what_the_first_join_carried() {
        let registry = unpaced();
        let outbox = Arc::new(Outbox::new(64, 1 << 20));
        let peer = Peer::new(outbox.clone());
        let (room, name) = (RoomName::parse("a").unwrap(), Nickname::parse("m").unwrap());
        registry.begin_join(&room, &peer, &name);
        let carried_20 = PreparedCatchUp {
            messages: EncodedMessages::encode::<crate::protocol::ChatMessage>(&[]),
            last_seq: 20,
            truncated: false,
        };
        registry.finish_join(&room, peer.id(), carried_20, "hi", None);
        let _ = messages(&outbox);
        // A second join begins; meanwhile 19 and 20 (held by pacing when the
        // first `joined` was built, so already in it) and 21 arrive.
        assert!(registry.begin_join(&room, &peer, &name));
        let frame = |seq| Frame::message(format!("{{\"seq\":{seq}}}"), seq);
        registry.deliver(&[(room.clone(), frame(19)), (room.clone(), frame(20))]);
        registry.deliver(&[(room.clone(), frame(21))]);
        // Its storage read fails: the join is abandoned.
        registry.abort_join(&room, peer.id(), true);
        assert_eq!(messages(&outbox), [21]);
        // And the member is live again, with the same filter.
        registry.deliver(&[(room.clone(), frame(20)), (room.clone(), frame(22))]);
        assert_eq!(messages(&outbox), [22]);
    }

    /// The presence frames queued for an outbox, as JSON.
    fn presences(outbox: &Outbox) -> Vec<serde_json::Value> {
        let (frames, _) = outbox.take(1000);
        frames
            .iter()
            .map(|f| serde_json::from_slice::<serde_json::Value>(f.payload()).unwrap())
            .filter(|v| v["type"] == "presence")
            .collect()
    }

    #[test]
    fn a_person_leaves_under_the_name_the_room_listed() {
        let registry = unpaced();
        let watcher = Arc::new(Outbox::new(64, 1 << 20));
        join_as(&registry, &Peer::new(watcher.clone()), "a", "watcher");
        let (tab1, tab2) = (
            Peer::new(Arc::new(Outbox::new(64, 1 << 20))),
            Peer::new(Arc::new(Outbox::new(64, 1 << 20))),
        );
        // Two tabs of one person, the second spelling the name otherwise.
        join_as(&registry, &tab1, "a", "alice");
        join_as(&registry, &tab2, "a", "ALICE");
        let room = RoomName::parse("a").unwrap();
        registry.leave(&room, tab1.id());
        registry.leave(&room, tab2.id());
        let seen = presences(&watcher);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0]["joined"], serde_json::json!(["alice"]));
        assert_eq!(seen[1]["left"], serde_json::json!(["alice"]));
    }

    #[test]
    fn one_commit_over_several_rooms_reaches_each_member_once_in_room_order() {
        let registry = unpaced();
        let both = Arc::new(Outbox::new(64, 1 << 20));
        let only_a = Arc::new(Outbox::new(64, 1 << 20));
        let peer = Peer::new(both.clone());
        join_as(&registry, &peer, "a", "both");
        join_as(&registry, &peer, "b", "both");
        join_as(&registry, &Peer::new(only_a.clone()), "a", "only");
        let _ = (messages(&both), messages(&only_a));
        let (a, b) = (RoomName::parse("a").unwrap(), RoomName::parse("b").unwrap());
        // Seqs are per room; 10+ marks room b's.
        let frame = |seq| Frame::message(format!("{{\"seq\":{seq}}}"), seq);
        registry.deliver(&[
            (a.clone(), frame(1)),
            (b.clone(), frame(11)),
            (a.clone(), frame(2)),
            (b.clone(), frame(12)),
        ]);
        let mut got = messages(&both);
        // Each room's messages in order, each once, whatever the rooms' interleaving.
        let room_a: Vec<u64> = got.iter().copied().filter(|s| *s < 10).collect();
        assert_eq!(room_a, [1, 2]);
        got.retain(|s| *s > 10);
        assert_eq!(got, [11, 12]);
        assert_eq!(messages(&only_a), [1, 2]);
    }
}
