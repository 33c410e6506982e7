//! The receiving end of the broker: this server's [`Subscriber`].
//!
//! Each message event is encoded here, once per room for every member of
//! it on this server — the message's JSON (kept for `joined` replies) and
//! its WebSocket frame, shared by every recipient. Each message is recorded
//! in the recent tail *before* it is delivered, wherever it was committed:
//! a joiner that reads the tail after that gets it in its reply, and one
//! that read it before has its gate up already and gets it live — never
//! neither (`recent`). A room's share of an event then goes to each member
//! in one write, and someone in several of the rooms is written once for
//! all of them.

use std::time::Instant;

use super::Registry;
use super::pacing::Paced;
use crate::broker::{Lost, RoomEvent, Subscriber};
use crate::domain::{Message, RoomName};
use crate::hub::encoded;
use crate::outbox::Frame;
use crate::outbox::Peer;
use crate::protocol;

impl Subscriber for Registry {
    fn receive(&self, events: &[RoomEvent]) {
        // Runs of message events go out in one round; a membership change
        // waits for what came before it.
        let mut rooms: Vec<(&RoomName, Vec<Frame>)> = Vec::new();
        for event in events {
            match event {
                RoomEvent::Messages(messages) => {
                    rooms.push((event.room(), self.frames(messages)));
                }
                RoomEvent::Membership(change) => {
                    if !rooms.is_empty() {
                        self.deliver(&rooms);
                        rooms.clear();
                    }
                    self.membership(change);
                }
            }
        }
        if !rooms.is_empty() {
            self.deliver(&rooms);
        }
    }

    /// Events were lost: the tails may have gaps and so may what members
    /// were shown. The tails are dropped (storage answers joins until they
    /// are rebuilt), and every member is closed with 1013, to rejoin with
    /// `since` and catch up from storage.
    fn lagged(&self, lost: Lost) {
        tracing::error!(
            lost = ?lost.events,
            "the broker lost room events: members are asked to reconnect"
        );
        self.metrics
            .broker_events_lost
            .inc_by(lost.events.unwrap_or(1));
        self.recent.clear();
        let state = self.lock();
        for room in state.rooms.values() {
            for member in room.members.values() {
                member
                    .peer
                    .kick(crate::protocol::close::TRY_AGAIN_LATER, "missed messages");
            }
        }
    }
}

impl Registry {
    /// One room's messages as frames, each recorded in the tail first.
    fn frames(&self, messages: &[Message]) -> Vec<Frame> {
        messages
            .iter()
            .map(|message| {
                let encoded = encoded(message);
                self.recent.committed(message, &encoded);
                Frame::message(protocol::encode_message(&encoded), message.seq)
            })
            .collect()
    }

    /// Hands each room's frames (in order) to its members, or to pacing.
    fn deliver(&self, rooms: &[(&RoomName, Vec<Frame>)]) {
        let now = Instant::now();
        let mut out: Vec<Peer> = Vec::new();
        let mut delivered = Vec::new();
        let mut flushes = Vec::new();
        let mut state = self.lock();
        let mut queued = 0;
        for (room, frames) in rooms {
            let Some(entry) = state.rooms.get_mut(*room) else {
                continue;
            };
            match entry.pace(frames, &self.pacing, now, &mut out) {
                Paced::Delivered(n) => {
                    queued += n;
                    delivered.push(*room);
                }
                Paced::Held(Some(at)) => flushes.push((*room, at)),
                Paced::Held(None) => {}
            }
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
    use super::super::testing::*;
    use crate::broker::{Lost, Subscriber};
    use crate::domain::{AuthorId, Message};
    use crate::hub::Peer;
    use crate::protocol::{ChatMessage, ServerMsg, encode};
    use crate::storage::CatchUp;

    #[test]
    fn one_commit_over_several_rooms_reaches_each_member_once_in_room_order() {
        let registry = unpaced();
        let both = outbox();
        let only_a = outbox();
        let peer = Peer::new(both.clone());
        join_as(&registry, &peer, "a", "both");
        join_as(&registry, &peer, "b", "both");
        join_as(&registry, &Peer::new(only_a.clone()), "a", "only");
        let _ = (seqs(&both), seqs(&only_a));
        let (a, b) = (room("a"), room("b"));
        // Seqs are per room; 10+ marks room b's.
        registry.receive(&[messages(&a, &[1, 2]), messages(&b, &[11, 12])]);
        let (frames, _) = both.take(100);
        assert_eq!(
            frames.iter().filter_map(|f| f.seq()).collect::<Vec<_>>(),
            [1, 2, 11, 12]
        );
        assert_eq!(seqs(&only_a), [1, 2]);
    }

    /// Members get exactly the wire's `message` frame, encoded on this side.
    #[test]
    fn a_message_event_reaches_members_as_the_wire_encodes_it() {
        let registry = unpaced();
        let member = outbox();
        join_as(&registry, &Peer::new(member.clone()), "a", "m");
        let _ = seqs(&member);
        let message = Message {
            room: room("a"),
            id: "0193".into(),
            seq: 7,
            from: "Zoë".into(),
            author: Some(AuthorId::from_stored(42)),
            text: "hi \"there\"".into(),
            at: 1_700_000_000_000,
        };
        registry.receive(&[crate::broker::RoomEvent::Messages(
            vec![message.clone()].into(),
        )]);
        let (frames, _) = member.take(10);
        let wire = encode(
            &ServerMsg::Message(ChatMessage {
                room: "a".into(),
                id: "0193".into(),
                seq: 7,
                from: "Zoë".into(),
                author: Some(42),
                text: "hi \"there\"".into(),
                ts: 1_700_000_000_000,
            }),
            None,
        );
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload(), wire.as_bytes());
    }

    /// The tail is fed from the event stream: messages committed on
    /// another server land in it, and a joiner reading it gets them.
    #[test]
    fn messages_from_the_broker_land_in_the_recent_tail() {
        let registry = unpaced();
        join(&registry, "a", "m");
        let a = room("a");
        let stored: Vec<Message> = (1..=3).map(|seq| message(&a, seq)).collect();
        registry.recent().offer(
            &a,
            &CatchUp {
                messages: stored,
                last_seq: 3,
                truncated: false,
            },
            16,
        );
        registry.receive(&[messages(&a, &[4, 5])]);
        let (json, last_seq) = registry.recent().catch_up(&a, None, 16).unwrap();
        let got: Vec<ChatMessage> = serde_json::from_str(json.as_json()).unwrap();
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(last_seq, 5);
    }

    /// Lost events are never passed over in silence: the tails go, and
    /// members are told to reconnect (and catch up with `since`).
    #[test]
    fn a_broker_that_lost_events_empties_the_tails_and_sends_members_to_catch_up() {
        let registry = unpaced();
        let member = outbox();
        let peer = Peer::new(member.clone());
        join_as(&registry, &peer, "a", "m");
        let a = room("a");
        registry.recent().offer(&a, &CatchUp::default(), 16);
        assert!(registry.recent().catch_up(&a, None, 16).is_some());
        registry.lagged(Lost { events: Some(3) });
        assert!(registry.recent().catch_up(&a, None, 16).is_none());
        assert_eq!(
            member.kick().reason(),
            Some((crate::protocol::close::TRY_AGAIN_LATER, "missed messages"))
        );
    }
}
