//! The store contract: what every backend of [`MessageStore`],
//! [`GuestStore`] and [`AccountStore`] must do, written once, generic over
//! the backend.
//!
//! Accounts' rules are in `contract/accounts.rs`.
//!
//! A backend's test module implements [`StoreFactory`] (a fresh place for
//! one test's data, and a way to open a store on it — opening the same
//! place again is a restart) and calls [`store_contract!`] with it: each
//! rule below becomes a `#[tokio::test]` of that module. `sqlite` does so;
//! a PostgreSQL store would do the same with a fresh schema per place.
//!
//! Each check is one rule the hub, the writer or identity rely on; the
//! backend's own tests cover what only it has (SQLite's WAL, its threads).

use std::future::Future;

/// The rules of `RoomAccessStore`, with a macro of their own.
pub(crate) mod access;
mod accounts;
pub use accounts::*;

use crate::domain::{AuthorId, Message, MessageText, Nickname, Nonce, RoomName};
use crate::storage::{
    AccountStore, Appended, GuestStore, GuestWrite, MessageStore, NewMessage, Receipt,
    RoomCreation, SendKey, StaleRooms, StorageError, StoredGuest,
};

/// Opens stores for the contract.
pub trait StoreFactory: Sync {
    /// Where one test's data lives (a temporary directory, a fresh schema),
    /// kept for the test's length.
    type Place: Send + Sync;
    type Store: MessageStore + GuestStore + AccountStore;

    /// A new, empty place.
    fn place(&self) -> impl Future<Output = Self::Place> + Send;

    /// Opens a store on `place`. Called again on the same place (the last
    /// store dropped), it is a restart: everything committed is there.
    fn open(&self, place: &Self::Place) -> impl Future<Output = Self::Store> + Send;
}

/// Expands to one `#[tokio::test]` per rule of the contract, each calling
/// the function of that name here with `$factory`.
macro_rules! store_contract {
    ($factory:expr) => {
        $crate::storage::contract::store_contract!(@each $factory;
            appends_number_each_room_from_one_in_batch_order,
            a_batch_spans_rooms_and_keeps_what_was_sent,
            a_failed_batch_stores_nothing,
            a_resent_nonce_is_stored_once_and_answered_with_the_first_receipt,
            copies_of_a_nonce_in_one_batch_store_one,
            nonces_belong_to_their_sender,
            catch_up_gives_the_newest_after_since_and_says_what_it_left_out,
            history_pages_back_by_seq,
            concurrent_creations_of_a_room_create_it_once,
            a_look_alike_room_is_not_created,
            a_removed_room_takes_its_messages_and_starts_over,
            operator_removals_are_recorded_for_running_servers,
            rooms_are_listed_by_their_latest_message,
            stale_rooms_go_and_rooms_in_use_stay,
            a_restart_keeps_everything_and_numbering_continues,
            a_registered_guest_is_found_by_its_token_until_it_expires,
            guests_holding_a_look_alike_name_are_found,
            a_registration_replaces_look_alikes_whose_hold_lapsed,
            guest_writes_are_one_batch_and_survive_a_restart,
            guests_are_pruned_expired_then_least_recently_seen,
            an_account_is_found_by_either_look_alike_key,
            a_look_alike_of_an_account_is_not_created,
            password_admin_and_disabling_are_stored,
            a_session_is_found_touched_and_expires,
            sessions_are_revoked_one_all_or_all_but_one,
            expired_sessions_are_pruned,
        );
    };
    (@each $factory:expr; $($rule:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $rule() {
                $crate::storage::contract::$rule(&$factory).await;
            }
        )*
    };
}
pub(crate) use store_contract;

fn room(name: &str) -> RoomName {
    RoomName::parse(name).unwrap()
}

pub(crate) fn now() -> i64 {
    crate::clock::now_ms()
}

pub(crate) fn message(room_name: &str, id: &str) -> NewMessage {
    NewMessage {
        room: room(room_name),
        id: id.to_owned(),
        from: Nickname::parse("alice").unwrap(),
        author: AuthorId::from_stored(7),
        text: MessageText::parse(&format!("text of {id}")).unwrap(),
        ts: now(),
        key: None,
    }
}

pub(crate) fn keyed(room_name: &str, id: &str, sender: &str, nonce: &str) -> NewMessage {
    NewMessage {
        key: Some(SendKey {
            sender: sender.to_owned(),
            nonce: Nonce::parse(nonce).unwrap(),
        }),
        ..message(room_name, id)
    }
}

/// The stored messages of an append's outcomes (panics on a duplicate).
pub(crate) fn stored(outcomes: Vec<Appended>) -> Vec<Message> {
    outcomes
        .into_iter()
        .map(|o| match o {
            Appended::Stored(m) => m,
            Appended::Duplicate(r) => panic!("unexpected duplicate {r:?}"),
        })
        .collect()
}

pub(crate) fn receipt(m: &Message) -> Receipt {
    Receipt {
        room: m.room.as_str().to_owned(),
        id: m.id.clone(),
        seq: m.seq,
        ts: m.at,
    }
}

fn ids_and_seqs(messages: &[Message]) -> Vec<(&str, u64)> {
    messages.iter().map(|m| (m.id.as_str(), m.seq)).collect()
}

async fn history_ids(store: &impl MessageStore, name: &str) -> Vec<String> {
    store
        .history(&room(name), None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect()
}

/// `n` messages in room `name`, ids `{name}1…`, one batch each.
async fn fill(store: &impl MessageStore, name: &str, n: u64) {
    for i in 1..=n {
        store
            .append(vec![message(name, &format!("{name}{i}"))])
            .await
            .unwrap();
    }
}

pub async fn appends_number_each_room_from_one_in_batch_order<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let first = stored(
        store
            .append(vec![
                message("a", "1"),
                message("b", "2"),
                message("a", "3"),
            ])
            .await
            .unwrap(),
    );
    assert_eq!(ids_and_seqs(&first), [("1", 1), ("2", 1), ("3", 2)]);
    let second = stored(
        store
            .append(vec![message("b", "4"), message("a", "5")])
            .await
            .unwrap(),
    );
    assert_eq!(ids_and_seqs(&second), [("4", 2), ("5", 3)]);
    assert_eq!(history_ids(&store, "a").await, ["1", "3", "5"]);
    assert!(store.append(Vec::new()).await.unwrap().is_empty());
}

pub async fn a_batch_spans_rooms_and_keeps_what_was_sent<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let batch: Vec<NewMessage> = (0..30)
        .map(|i| message(&format!("room {}", i % 7), &format!("m{i}")))
        .collect();
    let sent = batch.clone();
    let outcomes = stored(store.append(batch).await.unwrap());
    assert_eq!(outcomes.len(), sent.len());
    for (m, s) in outcomes.iter().zip(&sent) {
        assert_eq!(m.room, s.room);
        assert_eq!(m.id, s.id);
        assert_eq!(m.from, s.from.as_str());
        assert_eq!(m.author, Some(s.author));
        assert_eq!(m.text, s.text.as_str());
        assert_eq!(m.at, s.ts);
    }
    // Room k got messages k, k+7, … numbered 1, 2, …
    for (i, m) in outcomes.iter().enumerate() {
        assert_eq!(m.seq, (i / 7) as u64 + 1, "{m:?}");
    }
    // What is read back is what was returned.
    let read = store.history(&room("room 3"), None, 100).await.unwrap();
    let returned: Vec<&Message> = outcomes
        .iter()
        .filter(|m| m.room == room("room 3"))
        .collect();
    assert_eq!(read.iter().collect::<Vec<_>>(), returned);
}

pub async fn a_failed_batch_stores_nothing<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    store.append(vec![message("a", "1")]).await.unwrap();
    // The third message reuses a stored id: the batch is refused whole.
    let failed = store
        .append(vec![
            keyed("a", "2", "alice", "n1"),
            message("new", "3"),
            message("a", "1"),
        ])
        .await;
    assert!(
        matches!(failed, Err(StorageError::Conflict { .. })),
        "{failed:?}"
    );
    assert_eq!(history_ids(&store, "a").await, ["1"]);
    assert!(!store.room_exists(&room("new")).await.unwrap());
    // Nor its nonce: the resend is stored, numbering resumes where it was.
    let retried = stored(
        store
            .append(vec![keyed("a", "2", "alice", "n1")])
            .await
            .unwrap(),
    );
    assert_eq!(ids_and_seqs(&retried), [("2", 2)]);
}

pub async fn a_resent_nonce_is_stored_once_and_answered_with_the_first_receipt<F: StoreFactory>(
    f: &F,
) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let first = stored(
        store
            .append(vec![keyed("a", "1", "alice", "n1")])
            .await
            .unwrap(),
    );
    let again = store
        .append(vec![
            keyed("a", "2", "alice", "n1"),
            keyed("a", "3", "alice", "n2"),
        ])
        .await
        .unwrap();
    assert_eq!(again[0], Appended::Duplicate(receipt(&first[0])));
    let Appended::Stored(next) = &again[1] else {
        panic!("a new nonce is stored: {again:?}")
    };
    assert_eq!(next.seq, 2, "the resend took no seq");
    assert_eq!(history_ids(&store, "a").await, ["1", "3"]);
    // A resend naming another room is still the first copy's.
    let elsewhere = store
        .append(vec![keyed("b", "4", "alice", "n1")])
        .await
        .unwrap();
    assert_eq!(elsewhere, [Appended::Duplicate(receipt(&first[0]))]);
    assert!(history_ids(&store, "b").await.is_empty());
    // Across a restart.
    drop(store);
    let store = f.open(&place).await;
    let after_restart = store
        .append(vec![keyed("a", "5", "alice", "n1")])
        .await
        .unwrap();
    assert_eq!(after_restart, [Appended::Duplicate(receipt(&first[0]))]);
}

pub async fn copies_of_a_nonce_in_one_batch_store_one<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let outcomes = store
        .append(vec![
            keyed("a", "1", "alice", "n1"),
            message("a", "2"),
            keyed("a", "3", "alice", "n1"),
        ])
        .await
        .unwrap();
    let Appended::Stored(first) = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert!(matches!(&outcomes[1], Appended::Stored(m) if m.seq == 2));
    assert_eq!(outcomes[2], Appended::Duplicate(receipt(first)));
    assert_eq!(history_ids(&store, "a").await, ["1", "2"]);
}

pub async fn nonces_belong_to_their_sender<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let outcomes = store
        .append(vec![
            keyed("a", "1", "alice", "n1"),
            keyed("a", "2", "bob", "n1"),
        ])
        .await
        .unwrap();
    assert_eq!(stored(outcomes).len(), 2);
}

pub async fn catch_up_gives_the_newest_after_since_and_says_what_it_left_out<F: StoreFactory>(
    f: &F,
) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let r = room("r");
    let unknown = store.catch_up(&r, None, 5).await.unwrap();
    assert!(unknown.messages.is_empty() && unknown.last_seq == 0 && !unknown.truncated);
    fill(&store, "r", 10).await;
    let seqs = |c: &crate::storage::CatchUp| c.messages.iter().map(|m| m.seq).collect::<Vec<_>>();

    // No `since`: the newest `limit`, oldest first; nothing is "left out".
    let newest = store.catch_up(&r, None, 5).await.unwrap();
    assert_eq!((seqs(&newest), newest.last_seq), (vec![6, 7, 8, 9, 10], 10));
    assert!(!newest.truncated);
    // A `since` within reach: everything after it.
    let after = store.catch_up(&r, Some(7), 5).await.unwrap();
    assert_eq!((seqs(&after), after.truncated), (vec![8, 9, 10], false));
    let exactly = store.catch_up(&r, Some(5), 5).await.unwrap();
    assert_eq!(
        (seqs(&exactly), exactly.truncated),
        (vec![6, 7, 8, 9, 10], false)
    );
    // Too far back: the newest `limit`, and `truncated` (a gap to fill with history).
    let gap = store.catch_up(&r, Some(2), 5).await.unwrap();
    assert_eq!((seqs(&gap), gap.truncated), (vec![6, 7, 8, 9, 10], true));
    // Up to date.
    let current = store.catch_up(&r, Some(10), 5).await.unwrap();
    assert!(current.messages.is_empty() && current.last_seq == 10 && !current.truncated);
    // Another room's messages are not this room's.
    fill(&store, "other", 3).await;
    assert_eq!(
        store.catch_up(&r, None, 50).await.unwrap().messages.len(),
        10
    );
}

pub async fn history_pages_back_by_seq<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let r = room("r");
    fill(&store, "r", 10).await;
    let page = |before, limit| {
        let store = &store;
        let r = &r;
        async move {
            store
                .history(r, before, limit)
                .await
                .unwrap()
                .iter()
                .map(|m| m.seq)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None, 4).await, [7, 8, 9, 10]);
    assert_eq!(page(Some(7), 4).await, [3, 4, 5, 6]);
    assert_eq!(page(Some(3), 4).await, [1, 2]);
    assert!(page(Some(1), 4).await.is_empty());
    assert_eq!(page(Some(100), 2).await, [9, 10]);
    assert!(
        store
            .history(&room("none"), None, 4)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn concurrent_creations_of_a_room_create_it_once<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    for round in 0..10 {
        let r = room(&format!("race {round}"));
        let (a, b, c) = tokio::join!(
            store.create_room(&r),
            store.create_room(&r),
            store.create_room(&r)
        );
        let outcomes = [a.unwrap(), b.unwrap(), c.unwrap()];
        let created = outcomes
            .iter()
            .filter(|o| **o == RoomCreation::Created)
            .count();
        assert_eq!(created, 1, "{outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, RoomCreation::Created | RoomCreation::Existed)),
            "{outcomes:?}"
        );
        assert!(store.room_exists(&r).await.unwrap());
    }
    assert_eq!(
        store.create_room(&room("race 0")).await.unwrap(),
        RoomCreation::Existed
    );
}

pub async fn a_look_alike_room_is_not_created<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let (latin, cyrillic) = (room("general"), room("g\u{435}neral"));
    let (a, b) = tokio::join!(store.create_room(&latin), store.create_room(&cyrillic));
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| o != &RoomCreation::Created);
    assert_eq!(outcomes[0], RoomCreation::Created, "{outcomes:?}");
    assert!(
        matches!(&outcomes[1], RoomCreation::LooksLike(name) if name == "general" || name == "g\u{435}neral"),
        "{outcomes:?}"
    );
    assert_ne!(
        store.room_exists(&latin).await.unwrap(),
        store.room_exists(&cyrillic).await.unwrap()
    );
}

pub async fn a_removed_room_takes_its_messages_and_starts_over<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    store
        .append(vec![keyed("a", "1", "alice", "n1")])
        .await
        .unwrap();
    fill(&store, "a", 3).await;
    fill(&store, "b", 2).await;
    assert!(store.delete_room(&room("a"), false).await.unwrap());
    assert!(!store.delete_room(&room("a"), false).await.unwrap());
    assert!(!store.room_exists(&room("a")).await.unwrap());
    assert!(history_ids(&store, "a").await.is_empty());
    let caught = store.catch_up(&room("a"), None, 10).await.unwrap();
    assert_eq!((caught.messages.len(), caught.last_seq), (0, 0));
    // Created again, it numbers from 1; a resend of a removed message is new.
    let again = stored(
        store
            .append(vec![keyed("a", "2", "alice", "n1")])
            .await
            .unwrap(),
    );
    assert_eq!(ids_and_seqs(&again), [("2", 1)]);
    assert_eq!(
        history_ids(&store, "b").await,
        ["b1", "b2"],
        "others untouched"
    );
}

pub async fn operator_removals_are_recorded_for_running_servers<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    fill(&store, "a", 1).await;
    fill(&store, "b", 1).await;
    assert_eq!(store.last_room_deletion().await.unwrap(), 0);
    assert!(store.delete_room(&room("a"), true).await.unwrap());
    assert!(store.delete_room(&room("b"), false).await.unwrap());
    // Recorded even when there was nothing to remove.
    assert!(!store.delete_room(&room("a"), true).await.unwrap());
    let seen = store.room_deletions(0).await.unwrap();
    let rooms: Vec<&str> = seen.iter().map(|d| d.room.as_str()).collect();
    assert_eq!(rooms, ["a", "a"]);
    assert!(seen[0].id < seen[1].id);
    let last = store.last_room_deletion().await.unwrap();
    assert_eq!(last, seen[1].id);
    assert!(store.room_deletions(last).await.unwrap().is_empty());
    // Old records go, never the newest: its id is where servers start.
    store.forget_room_deletions(now() + 1).await.unwrap();
    assert_eq!(store.last_room_deletion().await.unwrap(), last);
    assert_eq!(store.room_deletions(0).await.unwrap().len(), 1);
}

pub async fn rooms_are_listed_by_their_latest_message<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    store.create_room(&room("empty")).await.unwrap();
    let mut old = message("old", "1");
    old.ts = 1_000;
    store.append(vec![old]).await.unwrap();
    fill(&store, "fresh", 1).await;
    fill(&store, "fresher", 1).await;
    assert_eq!(
        store.recent_rooms(now() - 60_000, 100).await.unwrap(),
        ["fresher", "fresh"]
    );
    assert_eq!(
        store.recent_rooms(0, 100).await.unwrap(),
        ["fresher", "fresh", "old"]
    );
    assert_eq!(store.recent_rooms(0, 1).await.unwrap(), ["fresher"]);
}

pub async fn stale_rooms_go_and_rooms_in_use_stay<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    store.create_room(&room("unused")).await.unwrap();
    fill(&store, "occupied", 1).await;
    fill(&store, "talk", 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cutoff = now();
    store
        .touch_rooms(&[room("occupied")], cutoff + 10)
        .await
        .unwrap();
    let unused = StaleRooms {
        unused_before: cutoff,
        idle_before: 0,
    };
    assert_eq!(
        store.stale_rooms(unused, 10).await.unwrap(),
        [room("unused")]
    );
    let idle = StaleRooms {
        unused_before: cutoff,
        idle_before: cutoff,
    };
    assert_eq!(
        store
            .delete_stale_messages(idle, &[room("talk"), room("occupied")])
            .await
            .unwrap(),
        2,
        "the stale room's messages, none of the room in use"
    );
    assert_eq!(history_ids(&store, "occupied").await, ["occupied1"]);
    let asked = [room("unused"), room("talk"), room("occupied")];
    let deleted = store.delete_stale_rooms(idle, &asked).await.unwrap();
    assert_eq!(deleted, [room("unused"), room("talk")]);
    assert!(store.room_exists(&room("occupied")).await.unwrap());
    assert!(!store.room_exists(&room("talk")).await.unwrap());
    assert!(history_ids(&store, "talk").await.is_empty());
}

pub async fn a_restart_keeps_everything_and_numbering_continues<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    store.create_room(&room("quiet")).await.unwrap();
    let before = stored(
        store
            .append(vec![
                message("a", "1"),
                message("b", "2"),
                message("a", "3"),
            ])
            .await
            .unwrap(),
    );
    drop(store);
    let store = f.open(&place).await;
    assert!(store.room_exists(&room("quiet")).await.unwrap());
    assert_eq!(
        store.history(&room("a"), None, 10).await.unwrap(),
        [before[0].clone(), before[2].clone()]
    );
    let next = stored(
        store
            .append(vec![message("a", "4"), message("b", "5")])
            .await
            .unwrap(),
    );
    assert_eq!(ids_and_seqs(&next), [("4", 3), ("5", 2)]);
    assert_eq!(
        store.catch_up(&room("a"), None, 10).await.unwrap().last_seq,
        3
    );
}

fn guest(token: u8, name: &str, seen: i64) -> StoredGuest {
    let nick = Nickname::parse(name).unwrap();
    StoredGuest {
        token_hash: [token; 32],
        author: AuthorId::from_stored(1000 + i64::from(token)),
        name: name.to_owned(),
        name_key: nick.key(),
        name_shape: nick.shape(),
        last_seen: seen,
    }
}

fn register(g: &StoredGuest) -> GuestWrite {
    GuestWrite::Register(g.clone())
}

pub async fn a_registered_guest_is_found_by_its_token_until_it_expires<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let alice = guest(1, "alice", 5_000);
    store.save_guests(vec![register(&alice)]).await.unwrap();
    assert_eq!(
        store.find_guest(&[1; 32], 5_000).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        store.find_guest(&[1; 32], 5_001).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(store.find_guest(&[2; 32], 0).await.unwrap(), None);
    // Seen later: valid longer. Never moved back.
    store
        .save_guests(vec![GuestWrite::Seen {
            token_hash: [1; 32],
            at: 9_000,
        }])
        .await
        .unwrap();
    store
        .save_guests(vec![GuestWrite::Seen {
            token_hash: [1; 32],
            at: 7_000,
        }])
        .await
        .unwrap();
    let found = store.find_guest(&[1; 32], 9_000).await.unwrap().unwrap();
    assert_eq!((found.author, found.last_seen), (alice.author, 9_000));
}

pub async fn guests_holding_a_look_alike_name_are_found<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    store
        .save_guests(vec![
            register(&guest(1, "alice", 5_000)),
            register(&guest(2, "bob", 5_000)),
        ])
        .await
        .unwrap();
    for look_alike in ["alice", "Alice", "\u{430}lice", "aIice"] {
        let n = Nickname::parse(look_alike).unwrap();
        let holders = store.name_holders(&n.key(), &n.shape(), 0).await.unwrap();
        assert_eq!(holders.len(), 1, "{look_alike:?}");
        assert_eq!(holders[0].token_hash, [1; 32]);
    }
    let carol = Nickname::parse("carol").unwrap();
    assert!(
        store
            .name_holders(&carol.key(), &carol.shape(), 0)
            .await
            .unwrap()
            .is_empty()
    );
    let alice = Nickname::parse("alice").unwrap();
    assert!(
        store
            .name_holders(&alice.key(), &alice.shape(), 5_001)
            .await
            .unwrap()
            .is_empty(),
        "an expired token holds nothing"
    );
}

pub async fn a_registration_replaces_look_alikes_whose_hold_lapsed<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    store
        .save_guests(vec![register(&guest(1, "alice", 5_000))])
        .await
        .unwrap();
    // The caller decided the hold had lapsed: the newcomer takes the name.
    store
        .save_guests(vec![register(&guest(2, "Alice", 6_000))])
        .await
        .unwrap();
    assert_eq!(store.find_guest(&[1; 32], 0).await.unwrap(), None);
    assert_eq!(
        store.find_guest(&[2; 32], 0).await.unwrap().map(|g| g.name),
        Some("Alice".to_owned())
    );
    // A registration whose author id is taken is skipped; the batch goes on.
    let mut clash = guest(3, "carol", 6_000);
    clash.author = guest(2, "x", 0).author;
    store
        .save_guests(vec![
            GuestWrite::Register(clash),
            register(&guest(4, "dave", 6_000)),
        ])
        .await
        .unwrap();
    assert_eq!(store.find_guest(&[3; 32], 0).await.unwrap(), None);
    assert!(store.find_guest(&[4; 32], 0).await.unwrap().is_some());
    assert!(store.find_guest(&[2; 32], 0).await.unwrap().is_some());
}

pub async fn guest_writes_are_one_batch_and_survive_a_restart<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let writes: Vec<GuestWrite> = (1..=200u8)
        .map(|i| register(&guest(i, &format!("guest {i}"), 5_000)))
        .chain([GuestWrite::Seen {
            token_hash: [7; 32],
            at: 8_000,
        }])
        .collect();
    store.save_guests(writes).await.unwrap();
    drop(store);
    let store = f.open(&place).await;
    for i in 1..=200u8 {
        let found = store.find_guest(&[i; 32], 0).await.unwrap().unwrap();
        assert_eq!(found.name, format!("guest {i}"));
        assert_eq!(found.last_seen, if i == 7 { 8_000 } else { 5_000 });
    }
}

pub async fn guests_are_pruned_expired_then_least_recently_seen<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let writes = (1..=6u8)
        .map(|i| register(&guest(i, &format!("g{i}"), 1_000 * i64::from(i))))
        .collect();
    store.save_guests(writes).await.unwrap();
    // g1 expired; of the rest, the 3 seen longest ago beyond `keep` 2.
    assert_eq!(store.prune_guests(2_000, 2).await.unwrap(), 4);
    for i in 1..=6u8 {
        assert_eq!(
            store.find_guest(&[i; 32], 0).await.unwrap().is_some(),
            i >= 5,
            "g{i}"
        );
    }
}
