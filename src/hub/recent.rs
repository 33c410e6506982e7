//! The newest messages of the rooms this server follows, in memory, so
//! that a join — and a reconnect whose `since` is recent — needs no storage
//! read.
//!
//! Correctness rests on one rule: a room's tail is always exactly the newest
//! messages up to its `last_seq`, with no gap. The tail is fed from the
//! broker's event stream (`registry::delivery`), so messages committed on
//! any server land in it: every message of a subscribed room is recorded
//! here, in seq order, before it is delivered, and a tail that would gap is
//! dropped. A snapshot read from storage is only adopted if no message of
//! that room arrived since it was read. The join gate in the registry then
//! works as with a storage read: everything up to `last_seq` is in the
//! reply, and everything after arrives live.
//!
//! The stream only covers subscribed rooms, so a room's tail lives while the
//! server is subscribed to it: when its last local member leaves, the
//! registry unsubscribes and forgets the tail in the same step (under its
//! lock), and the next joiner waits for the new subscription before it
//! reads, so a snapshot it offers is followed by every later message. A
//! broker that lost events clears every tail ([`RecentMessages::clear`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::domain::{Message, RoomName};
use crate::protocol::{EncodedMessage, EncodedMessages};
use crate::storage::CatchUp;

/// Rooms whose tails are kept; beyond it an arbitrary tail is dropped
/// (it is only a cache: storage answers for the room again).
const ROOMS_KEPT: usize = 4096;
/// Bytes of message JSON kept over all tails; beyond it arbitrary tails are
/// dropped. Counting messages alone would let 4,096 rooms of 100 messages of
/// 16 KB each hold 6.5 GB.
const BYTES_KEPT: usize = 64 << 20;

pub struct RecentMessages {
    keep: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tails: HashMap<RoomName, Tail>,
    /// Bytes of message JSON in `tails`.
    bytes: usize,
    /// The last seq that arrived in each subscribed room: a snapshot older
    /// than this is stale. One small entry per room.
    committed: HashMap<RoomName, u64>,
}

struct Tail {
    /// Each message serialized once, as every reply carrying it sends it.
    messages: VecDeque<(u64, EncodedMessage)>,
    last_seq: u64,
    /// The tail starts at the room's first message.
    complete: bool,
}

impl RecentMessages {
    /// Keeps the newest `keep` messages of each cached room.
    pub fn new(keep: usize) -> Self {
        Self::with_budget(keep, BYTES_KEPT)
    }

    /// The same, with at most `max_bytes` of message JSON over all rooms.
    fn with_budget(keep: usize, max_bytes: usize) -> Self {
        Self {
            keep: keep.max(1),
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A message was committed (`encoded` is its JSON). Called as it
    /// arrives from the broker, in seq order, before it is delivered.
    pub fn committed(&self, message: &Message, encoded: &EncodedMessage) {
        let mut inner = self.lock();
        let room = &message.room;
        let seq = message.seq;
        match inner.committed.get_mut(room) {
            Some(last) => *last = (*last).max(seq),
            None => {
                inner.committed.insert(room.clone(), seq);
            }
        }
        let keep = self.keep;
        let Some(tail) = inner.tails.get_mut(room) else {
            return;
        };
        if seq <= tail.last_seq {
            return; // the snapshot already had it
        }
        if seq != tail.last_seq + 1 {
            inner.drop_tail(room);
            return;
        }
        tail.messages.push_back((seq, encoded.clone()));
        tail.last_seq = seq;
        let mut bytes = inner.bytes + encoded.as_json().len();
        let tail = inner.tails.get_mut(room).expect("just pushed to");
        if tail.messages.len() > keep
            && let Some((_, dropped)) = tail.messages.pop_front()
        {
            bytes -= dropped.as_json().len();
            tail.complete = false;
        }
        inner.bytes = bytes;
        inner.keep_within(self.max_bytes);
    }

    /// What `MessageStore::catch_up(room, after, limit)` would answer — its
    /// messages as one JSON array, and the room's `last_seq` — if the cached
    /// tail covers it without leaving anything out.
    pub fn catch_up(
        &self,
        room: &RoomName,
        after: Option<u64>,
        limit: u32,
    ) -> Option<(EncodedMessages, u64)> {
        let inner = self.lock();
        let tail = inner.tails.get(room)?;
        let limit = limit as usize;
        let first = tail.messages.front().map(|(seq, _)| *seq);
        let skip = match after {
            None => {
                if tail.messages.len() < limit && !tail.complete {
                    return None;
                }
                tail.messages.len().saturating_sub(limit)
            }
            Some(after) => {
                let missing = tail.last_seq.saturating_sub(after) as usize;
                if missing > limit {
                    return None; // a truncated answer: leave it to storage
                }
                if missing > 0 && !tail.complete && first.is_none_or(|f| f > after + 1) {
                    return None;
                }
                tail.messages.partition_point(|(seq, _)| *seq <= after)
            }
        };
        let wanted = tail.messages.iter().skip(skip).map(|(_, json)| json);
        Some((EncodedMessages::concat(wanted), tail.last_seq))
    }

    /// Offers the newest messages of a room read from storage with no `since`
    /// and a `limit` of `asked`. Adopted only if nothing was committed in the
    /// room after it was read.
    pub fn offer(&self, room: &RoomName, snapshot: &CatchUp, asked: u32) {
        let mut inner = self.lock();
        if inner.tails.contains_key(room) {
            return;
        }
        if inner
            .committed
            .get(room)
            .is_some_and(|&c| c > snapshot.last_seq)
        {
            return;
        }
        if inner.tails.len() >= ROOMS_KEPT
            && let Some(victim) = inner.tails.keys().next().cloned()
        {
            inner.drop_tail(&victim);
        }
        let skip = snapshot.messages.len().saturating_sub(self.keep);
        let messages: VecDeque<(u64, EncodedMessage)> = snapshot
            .messages
            .iter()
            .skip(skip)
            .map(|m| (m.seq, super::encoded(m)))
            .collect();
        let complete = skip == 0 && snapshot.messages.len() < asked as usize
            || snapshot.last_seq == 0
            || messages.front().is_some_and(|(seq, _)| *seq == 1);
        inner.bytes += messages
            .iter()
            .map(|(_, json)| json.as_json().len())
            .sum::<usize>();
        inner.tails.insert(
            room.clone(),
            Tail {
                messages,
                last_seq: snapshot.last_seq,
                complete,
            },
        );
        inner.keep_within(self.max_bytes);
    }
}

impl RecentMessages {
    /// Forgets a room: its tail and its last committed seq. For a room no
    /// longer subscribed (nothing would keep its tail whole), and for a
    /// removed room (one created again under the name starts its seqs over).
    pub fn forget(&self, room: &RoomName) {
        let mut inner = self.lock();
        inner.drop_tail(room);
        inner.committed.remove(room);
    }

    /// Forgets every tail: some message may have been lost on its way here.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.tails.clear();
        inner.bytes = 0;
    }
}

impl Inner {
    fn drop_tail(&mut self, room: &RoomName) {
        if let Some(tail) = self.tails.remove(room) {
            self.bytes -= tail
                .messages
                .iter()
                .map(|(_, json)| json.as_json().len())
                .sum::<usize>();
        }
    }

    /// Drops arbitrary tails until the rest fit in `max_bytes`.
    fn keep_within(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some(victim) = self.tails.keys().next().cloned() else {
                break;
            };
            self.drop_tail(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChatMessage;

    fn msg(seq: u64) -> ChatMessage {
        ChatMessage {
            room: "r".into(),
            id: format!("id{seq}"),
            seq,
            from: "a".into(),
            author: None,
            text: format!("m{seq}"),
            ts: 0,
        }
    }

    fn commit(recent: &RecentMessages, seq: u64) {
        let m = msg(seq);
        let message = Message {
            room: room(),
            id: m.id.clone(),
            seq,
            from: m.from.clone(),
            author: None,
            text: m.text.clone(),
            at: m.ts,
        };
        recent.committed(&message, &EncodedMessage::new(&m));
    }

    fn room() -> RoomName {
        RoomName::parse("r").unwrap()
    }

    fn stored(seq: u64) -> crate::domain::Message {
        crate::domain::Message {
            room: room(),
            id: format!("id{seq}"),
            seq,
            from: "a".into(),
            author: None,
            text: format!("m{seq}"),
            at: 0,
        }
    }

    fn snapshot(seqs: std::ops::RangeInclusive<u64>) -> CatchUp {
        CatchUp {
            messages: seqs.clone().map(stored).collect(),
            last_seq: *seqs.end(),
            truncated: false,
        }
    }

    /// The seqs of a cached answer, read back from its JSON, and `last_seq`.
    fn seqs(answer: Option<(EncodedMessages, u64)>) -> Option<(Vec<u64>, u64)> {
        let (messages, last_seq) = answer?;
        let messages: Vec<ChatMessage> = serde_json::from_str(messages.as_json()).unwrap();
        Some((messages.iter().map(|m| m.seq).collect(), last_seq))
    }

    #[test]
    fn serves_joins_from_an_adopted_snapshot_and_later_commits() {
        let recent = RecentMessages::new(5);
        assert!(recent.catch_up(&room(), None, 5).is_none());
        recent.offer(&room(), &snapshot(6..=10), 5);
        commit(&recent, 11);
        assert_eq!(
            seqs(recent.catch_up(&room(), None, 5)),
            Some((vec![7, 8, 9, 10, 11], 11))
        );
        assert_eq!(
            seqs(recent.catch_up(&room(), None, 2)),
            Some((vec![10, 11], 11))
        );
        // `since` inside the tail is served; before it, storage must answer.
        assert_eq!(
            seqs(recent.catch_up(&room(), Some(9), 1000)),
            Some((vec![10, 11], 11))
        );
        assert!(recent.catch_up(&room(), Some(2), 1000).is_none());
        assert_eq!(
            seqs(recent.catch_up(&room(), Some(11), 1000)),
            Some((vec![], 11))
        );
    }

    #[test]
    fn a_snapshot_older_than_a_commit_is_refused() {
        let recent = RecentMessages::new(5);
        commit(&recent, 11);
        recent.offer(&room(), &snapshot(6..=10), 5);
        assert!(recent.catch_up(&room(), None, 5).is_none());
    }

    #[test]
    fn a_gap_drops_the_tail() {
        let recent = RecentMessages::new(5);
        recent.offer(&room(), &snapshot(6..=10), 5);
        commit(&recent, 12);
        assert!(recent.catch_up(&room(), None, 5).is_none());
    }

    /// The byte count kept, and the bytes the tails really hold.
    fn counted(recent: &RecentMessages) -> (usize, usize) {
        let inner = recent.lock();
        let held = inner
            .tails
            .values()
            .flat_map(|t| t.messages.iter())
            .map(|(_, json)| json.as_json().len())
            .sum();
        (inner.bytes, held)
    }

    #[test]
    fn the_tails_together_stay_within_their_byte_budget() {
        let one = EncodedMessage::new(&msg(1)).as_json().len();
        // Room for about three rooms of five messages.
        let recent = RecentMessages::with_budget(5, 16 * one);
        let rooms: Vec<RoomName> = (0..6)
            .map(|i| RoomName::parse(&format!("r{i}")).unwrap())
            .collect();
        for room in &rooms {
            recent.offer(room, &snapshot(1..=5), 5);
            let (bytes, held) = counted(&recent);
            assert_eq!(bytes, held);
            assert!(bytes <= 16 * one, "{bytes} > {}", 16 * one);
        }
        let kept = rooms
            .iter()
            .filter(|room| recent.catch_up(room, None, 5).is_some())
            .count();
        assert!((1..=3).contains(&kept), "{kept} rooms kept");
        // Commits, the oldest message leaving, and a gap keep the count exact.
        let recent = RecentMessages::with_budget(5, usize::MAX);
        recent.offer(&room(), &snapshot(1..=5), 5);
        commit(&recent, 6);
        assert_eq!(
            seqs(recent.catch_up(&room(), None, 5)),
            Some((vec![2, 3, 4, 5, 6], 6))
        );
        assert_eq!(counted(&recent), (5 * one, 5 * one));
        commit(&recent, 8);
        assert_eq!(counted(&recent), (0, 0));
    }

    #[test]
    fn a_short_room_is_complete() {
        let recent = RecentMessages::new(50);
        recent.offer(&room(), &snapshot(1..=3), 50);
        assert_eq!(
            seqs(recent.catch_up(&room(), None, 50)),
            Some((vec![1, 2, 3], 3))
        );
        assert_eq!(
            seqs(recent.catch_up(&room(), Some(0), 1000)),
            Some((vec![1, 2, 3], 3))
        );
        let empty = RecentMessages::new(50);
        empty.offer(&room(), &CatchUp::default(), 50);
        commit(&empty, 1);
        assert_eq!(
            seqs(empty.catch_up(&room(), Some(0), 1000)),
            Some((vec![1], 1))
        );
    }
}
