//! The join gate: between registering a joiner and queuing its `joined`
//! reply, live frames for it wait in a buffer, so the client never sees a
//! live message before the reply that catches it up; afterwards only
//! messages newer than the reply's `last_seq` reach it. The reply plus the
//! live stream then has no gap and no repeat, whatever the reply was read
//! from (the recent tail or storage), because the gate is up before the
//! read starts.

use super::{Member, Registry, Room, person_key};
use crate::broker::{Change, Membership, RoomEvent};
use crate::clock;
use crate::domain::{Nickname, RoomName};
use crate::outbox::Frame;
use crate::outbox::{ConnId, Peer};
use crate::protocol::{self, EncodedMessages, Ref, ServerMsg, encode};

/// A joiner's catch-up, its messages already serialized.
pub struct PreparedCatchUp {
    pub messages: EncodedMessages,
    pub last_seq: u64,
    pub truncated: bool,
}

/// Whether live frames go straight to a member or wait for its `joined` reply.
pub(super) enum Gate {
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

/// Frames buffered for one catching-up member before it counts as too slow.
pub(super) const CATCH_UP_BUFFER: usize = 1024;

impl Member {
    /// Whether frames go straight to the member.
    pub(super) fn is_live(&self) -> bool {
        matches!(self.gate, Gate::Live { .. })
    }

    /// Holds `frames` for a member catching up; false if its buffer would
    /// overflow (it is then told to go: too slow).
    pub(super) fn buffer(&mut self, frames: &[Frame]) -> bool {
        let Gate::CatchingUp { buffered, .. } = &mut self.gate else {
            return true;
        };
        if buffered.len() + frames.len() > CATCH_UP_BUFFER {
            self.peer
                .kick(crate::protocol::close::TRY_AGAIN_LATER, "too slow");
            return false;
        }
        buffered.extend_from_slice(frames);
        true
    }
}

impl Registry {
    /// First half of a join: from now on, frames for `room` are kept for
    /// `peer` until [`Registry::finish_join`]. A room new to this server is
    /// subscribed to at the broker (the joiner waits for
    /// [`crate::broker::Broker::subscribed`] before reading its catch-up).
    /// Returns whether it was already a member.
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
            self.broker.subscribe(room);
        }
        already
    }

    /// Second half of a join: queues `joined` (and, on a first join, the
    /// `welcome` notice), then what arrived meanwhile, and tells the other
    /// members if a new person arrived. Returns the size on the wire of the
    /// `joined` frame queued (0 if the member went meanwhile), for the
    /// caller to account for: the registry knows nothing of budgets.
    pub fn finish_join(
        &self,
        room: &RoomName,
        conn: ConnId,
        catch_up: PreparedCatchUp,
        welcome: &str,
        r#ref: Option<&Ref>,
    ) -> usize {
        let mut state = self.lock();
        let Some(entry) = state.rooms.get_mut(room) else {
            return 0;
        };
        let Some(member) = entry.members.get_mut(&conn) else {
            return 0;
        };
        let name = member.name.clone();
        let Gate::CatchingUp { buffered, .. } = std::mem::replace(
            &mut member.gate,
            Gate::Live {
                after_seq: catch_up.last_seq,
            },
        ) else {
            return 0;
        };
        let peer = member.peer.clone();
        let first_join = !member.counted;
        member.counted = true;
        let mut is_new_person = false;
        if first_join {
            let (arrived_here, arrived) = entry.count_in(&name);
            is_new_person = arrived;
            if arrived_here {
                // Other servers learn of the person through the broker; the
                // change is queued under the lock, so in order.
                self.handoff.membership(RoomEvent::Membership(Membership {
                    room: room.clone(),
                    person: name.clone(),
                    change: Change::Joined,
                    origin: self.server,
                }));
            }
        }
        if is_new_person {
            entry
                .presence
                .joined(&person_key(name.as_str()), name.as_str());
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
        let joined_bytes = frames[0].len();
        if first_join {
            frames.push(Frame::new(encode(
                &ServerMsg::Notice {
                    room: room.as_str().to_owned(),
                    text: welcome.to_owned(),
                    kind: protocol::NoticeKind::Welcome,
                    ts: clock::now_ms(),
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
        joined_bytes
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
}

impl Room {
    /// Queues `frames` (in order) for every member, adding each member
    /// given any to `out`, to be written once the registry's lock is
    /// released; members catching up keep them for later. Returns how many
    /// frames were queued in all.
    pub(super) fn deliver(&mut self, frames: &[Frame], out: &mut Vec<Peer>) -> u64 {
        let mut delivered = 0;
        for member in self.members.values_mut() {
            match &mut member.gate {
                Gate::CatchingUp { .. } => {
                    member.buffer(frames);
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::broker::Subscriber;
    use crate::hub::Peer;

    #[test]
    fn an_abandoned_rejoin_keeps_skipping_what_the_first_join_carried() {
        let registry = unpaced();
        let outbox = outbox();
        let peer = Peer::new(outbox.clone());
        let a = room("a");
        join_after(&registry, &peer, "a", "m", 20);
        let _ = seqs(&outbox);
        // A second join begins; meanwhile 19 and 20 (held by pacing when the
        // first `joined` was built, so already in it) and 21 arrive.
        let name = crate::domain::Nickname::parse("m").unwrap();
        assert!(registry.begin_join(&a, &peer, &name));
        registry.receive(&[messages(&a, &[19, 20])]);
        registry.receive(&[messages(&a, &[21])]);
        // Its storage read fails: the join is abandoned.
        registry.abort_join(&a, peer.id(), true);
        assert_eq!(seqs(&outbox), [21]);
        // And the member is live again, with the same filter.
        registry.receive(&[messages(&a, &[20, 22])]);
        assert_eq!(seqs(&outbox), [22]);
    }

    #[test]
    fn what_arrives_while_catching_up_follows_the_reply_without_repeats() {
        let registry = unpaced();
        let outbox = outbox();
        let peer = Peer::new(outbox.clone());
        let a = room("a");
        let name = crate::domain::Nickname::parse("m").unwrap();
        registry.begin_join(&a, &peer, &name);
        // 5 and 6 arrive while the reply (read up to 5) is prepared.
        registry.receive(&[messages(&a, &[5, 6])]);
        assert_eq!(seqs(&outbox), Vec::<u64>::new(), "held until `joined`");
        registry.finish_join(
            &a,
            peer.id(),
            super::PreparedCatchUp {
                messages: crate::protocol::EncodedMessages::encode::<crate::protocol::ChatMessage>(
                    &[],
                ),
                last_seq: 5,
                truncated: false,
            },
            "hi",
            None,
        );
        assert_eq!(seqs(&outbox), [6]);
    }
}
