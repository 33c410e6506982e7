//! Who is online, under which name, in which room: this server's membership
//! state, and local delivery of frames to room members.
//!
//! One `std::sync::Mutex` guards it all. Sections are short and never await,
//! and one lock keeps the invariants simple: a room's people list always
//! matches its connections, and presence frames go out in the order the
//! changes happened (they are delivered under the same lock).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::RngCore;

use super::Frame;
use super::peer::{ConnId, Peer, Pushed};
use crate::broker::LocalDelivery;
use crate::clock;
use crate::domain::{Nickname, RoomName};
use crate::metrics::Metrics;
use crate::protocol::{EncodedMessages, ErrorCode, PresenceEvent, Ref, ServerMsg, encode};

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
}

#[derive(Default)]
struct State {
    /// Online people by case-folded name.
    people: HashMap<String, Person>,
    /// Rooms each connection is in, to leave them all on disconnect.
    conns: HashMap<ConnId, HashSet<RoomName>>,
    /// Rooms with at least one member; empty rooms are dropped.
    rooms: HashMap<RoomName, Room>,
}

struct Person {
    session: String,
    conns: usize,
}

#[derive(Default)]
struct Room {
    members: HashMap<ConnId, Member>,
    /// Distinct people in the room (case-folded name -> display name, connection count).
    people: BTreeMap<String, (String, usize)>,
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
    /// Between registering and sending `joined`: frames wait here so the
    /// client never sees a live message before the reply that catches it up.
    CatchingUp(Vec<Frame>),
    /// Frames with `seq <= after_seq` were in `joined` already and are skipped.
    Live { after_seq: u64 },
}

/// Frames buffered for one catching-up member before it counts as too slow.
const CATCH_UP_BUFFER: usize = 1024;

impl Room {
    fn users(&self) -> Vec<String> {
        self.people.values().map(|(name, _)| name.clone()).collect()
    }

    /// Hands `frame` to every member; returns how many took it.
    fn deliver(&mut self, frame: &Frame, except: Option<ConnId>) -> u64 {
        let mut delivered = 0;
        for (id, member) in &mut self.members {
            if Some(*id) == except {
                continue;
            }
            match &mut member.gate {
                Gate::CatchingUp(buffer) => {
                    if buffer.len() >= CATCH_UP_BUFFER {
                        member
                            .peer
                            .kick(crate::protocol::close::TRY_AGAIN_LATER, "too slow");
                    } else {
                        buffer.push(frame.clone());
                    }
                }
                Gate::Live { after_seq } => {
                    if frame.seq().is_some_and(|seq| seq <= *after_seq) {
                        continue;
                    }
                    if member.peer.push(frame.clone()) == Pushed::Queued {
                        delivered += 1;
                    }
                }
            }
        }
        delivered
    }

    fn presence(&self, room: &RoomName, event: PresenceEvent, user: &str) -> Frame {
        Frame::new(encode(
            &ServerMsg::Presence {
                room: room.as_str().to_owned(),
                event,
                user: user.to_owned(),
                users: self.users(),
            },
            None,
        ))
    }
}

/// Compares session tokens in time independent of where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn new_session_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still the best we have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `name` for `conn`: free names are granted with a new session
    /// token; a name in use only with the token issued for it. Returns the token.
    pub fn claim_name(&self, name: &Nickname, session: Option<&str>) -> Result<String, Refusal> {
        let mut state = self.lock();
        match state.people.get_mut(&name.key()) {
            Some(person) => match session {
                Some(token) if same_token(token, &person.session) => {
                    person.conns += 1;
                    Ok(person.session.clone())
                }
                _ => Err(Refusal::new(
                    ErrorCode::NameTaken,
                    format!("the name {name} is taken by someone online"),
                )),
            },
            None => {
                let token = new_session_token();
                state.people.insert(
                    name.key(),
                    Person {
                        session: token.clone(),
                        conns: 1,
                    },
                );
                Ok(token)
            }
        }
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
                if let Gate::Live { .. } = member.gate {
                    member.gate = Gate::CatchingUp(Vec::new());
                }
                true
            }
            None => {
                entry.members.insert(
                    peer.id(),
                    Member {
                        peer: peer.clone(),
                        name: name.clone(),
                        gate: Gate::CatchingUp(Vec::new()),
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
        let Gate::CatchingUp(buffered) = std::mem::replace(
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
                .entry(name.key())
                .or_insert_with(|| (name.as_str().to_owned(), 0));
            count.1 += 1;
            is_new_person = count.1 == 1;
        }
        let last_seq = catch_up.last_seq;
        peer.push(Frame::new(encode(
            &ServerMsg::Joined {
                room: room.as_str().to_owned(),
                users: entry.users(),
                messages: catch_up.messages,
                last_seq,
                truncated: catch_up.truncated,
            },
            r#ref,
        )));
        if first_join {
            peer.push(Frame::new(encode(
                &ServerMsg::Notice {
                    room: room.as_str().to_owned(),
                    text: welcome.to_owned(),
                    ts: clock::now_ms(),
                },
                None,
            )));
        }
        // Of what arrived meanwhile, only messages newer than the reply
        // matter. Presence frames are dropped: `users` in `joined` was
        // computed just now and already includes their effect, while their
        // own lists are older.
        for frame in buffered {
            if frame.seq().is_some_and(|seq| seq > last_seq) {
                peer.push(frame);
            }
        }
        if is_new_person {
            let frame = entry.presence(room, PresenceEvent::Join, name.as_str());
            let n = entry.deliver(&frame, Some(conn));
            self.metrics.frames_out.inc_by(n);
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
                // The client is still a member; let frames flow again.
                if let Gate::CatchingUp(buffered) =
                    std::mem::replace(&mut member.gate, Gate::Live { after_seq: 0 })
                {
                    for frame in buffered {
                        member.peer.push(frame);
                    }
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
        self.leave_locked(&mut state, room, conn)
    }

    fn leave_locked(&self, state: &mut State, room: &RoomName, conn: ConnId) -> bool {
        let Some(entry) = state.rooms.get_mut(room) else {
            return false;
        };
        let Some(member) = entry.members.remove(&conn) else {
            return false;
        };
        let key = member.name.key();
        let mut person_left = false;
        if member.counted
            && let Some((_, n)) = entry.people.get_mut(&key)
        {
            *n -= 1;
            if *n == 0 {
                entry.people.remove(&key);
                person_left = true;
            }
        }
        if entry.members.is_empty() {
            state.rooms.remove(room);
            self.metrics.rooms_active.dec();
        } else if person_left {
            let frame = entry.presence(room, PresenceEvent::Leave, member.name.as_str());
            let n = entry.deliver(&frame, None);
            self.metrics.frames_out.inc_by(n);
        }
        true
    }

    /// Forgets a closed connection: leaves its rooms and releases its name
    /// when it was that person's last connection.
    pub fn disconnect(&self, conn: ConnId, name: Option<&Nickname>) {
        let mut state = self.lock();
        let rooms = state.conns.remove(&conn).unwrap_or_default();
        for room in &rooms {
            self.leave_locked(&mut state, room, conn);
        }
        if let Some(name) = name {
            let key = name.key();
            if let Some(person) = state.people.get_mut(&key) {
                person.conns -= 1;
                if person.conns == 0 {
                    state.people.remove(&key);
                }
            }
        }
    }

    /// Distinct people online in each non-empty room.
    pub fn online_counts(&self) -> HashMap<RoomName, usize> {
        self.lock()
            .rooms
            .iter()
            .map(|(name, room)| (name.clone(), room.people.len()))
            .collect()
    }
}

impl LocalDelivery for Registry {
    fn deliver(&self, room: &RoomName, frame: &Frame) {
        let mut state = self.lock();
        if let Some(entry) = state.rooms.get_mut(room) {
            let n = entry.deliver(frame, None);
            self.metrics.frames_out.inc_by(n);
        }
    }
}
