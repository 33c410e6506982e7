//! The store contract of [`RoomAccessStore`]: the rules `access` and the
//! hub rely on, for every backend. A backend's test module implements
//! [`AccessFactory`] (its [`StoreFactory`], and a way to make an account
//! row for the facts to refer to) and calls [`access_contract!`].

use std::future::Future;

use futures_util::future::join_all;

use super::{StoreFactory, message, now, stored};
use crate::access::{Role, RoomKind};
use crate::domain::{AccountId, RoomName};
use crate::storage::access::{
    DM_ROOM_PREFIX, INVITE_VALID_MS, MemberRoom, MessageAuthor, Redeemed, RoomAccess,
    RoomAccessStore,
};
use crate::storage::{MessageStore, RoomCreation, StaleRooms, StorageError};

/// A [`StoreFactory`] whose stores keep room access, and can make accounts.
pub trait AccessFactory: StoreFactory<Store: RoomAccessStore> {
    /// Stores an account named `name` (distinct names per test); its id.
    fn account(&self, store: &Self::Store, name: &str) -> impl Future<Output = AccountId> + Send;
}

/// A fresh store holding the accounts `alice` and `bob`, with its place
/// (kept for the test's length).
async fn alice_and_bob<F: AccessFactory>(f: &F) -> (F::Place, F::Store, AccountId, AccountId) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let alice = f.account(&store, "alice").await;
    let bob = f.account(&store, "bob").await;
    (place, store, alice, bob)
}

/// Expands to one `#[tokio::test]` per rule of room access.
macro_rules! access_contract {
    ($factory:expr) => {
        $crate::storage::contract::access::access_contract!(@each $factory;
            a_private_room_is_created_with_its_owner_as_its_member,
            rooms_are_public_without_an_owner_until_changed,
            ownership_moves_with_the_owner_role,
            members_have_one_role_and_the_owner_stays,
            an_account_lists_the_rooms_it_has_a_place_in,
            a_ban_ends_membership_and_keeps_out_until_it_expires,
            an_invite_admits_one_account_once_within_seven_days,
            concurrent_redemptions_of_an_invite_admit_exactly_one,
            a_block_counts_either_way,
            a_dm_is_one_room_per_pair_whichever_side_opens_it,
            concurrent_dm_opens_from_both_sides_make_one_room,
            a_deleted_message_is_a_tombstone_without_its_text,
            private_rooms_and_dms_are_never_listed_nor_stale,
            a_removed_room_takes_its_members_bans_and_invites,
        );
    };
    (@each $factory:expr; $($rule:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $rule() {
                $crate::storage::contract::access::$rule(&$factory).await;
            }
        )*
    };
}
pub(crate) use access_contract;

fn room(name: &str) -> RoomName {
    RoomName::parse(name).unwrap()
}

fn invalid<T: std::fmt::Debug>(r: Result<T, StorageError>) {
    assert!(matches!(r, Err(StorageError::Invalid { .. })), "{r:?}");
}

fn conflict<T: std::fmt::Debug>(r: Result<T, StorageError>) {
    assert!(matches!(r, Err(StorageError::Conflict { .. })), "{r:?}");
}

pub async fn a_private_room_is_created_with_its_owner_as_its_member<F: AccessFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let alice = f.account(&store, "alice").await;
    let r = room("Secret");
    assert_eq!(
        store.create_private_room(&r, alice).await.unwrap(),
        RoomCreation::Created
    );
    assert_eq!(
        store.room_access(&r).await.unwrap(),
        Some(RoomAccess {
            kind: RoomKind::Private,
            owner: Some(alice),
        })
    );
    assert_eq!(store.members(&r).await.unwrap(), [(alice, Role::Owner)]);
    // One namespace with public rooms: neither kind takes the other's name
    // or a look-alike of it.
    assert_eq!(
        store.create_private_room(&r, alice).await.unwrap(),
        RoomCreation::Existed
    );
    assert_eq!(
        store
            .create_private_room(&room("Sеcret"), alice)
            .await
            .unwrap(),
        RoomCreation::LooksLike("Secret".into())
    );
    assert_eq!(store.create_room(&r).await.unwrap(), RoomCreation::Existed);
    store.create_room(&room("Open")).await.unwrap();
    assert_eq!(
        store
            .create_private_room(&room("Open"), alice)
            .await
            .unwrap(),
        RoomCreation::Existed
    );
    assert_eq!(
        store
            .room_access(&room("Open"))
            .await
            .unwrap()
            .unwrap()
            .kind,
        RoomKind::Public,
        "an existing public room is not made private by the attempt"
    );
}

pub async fn rooms_are_public_without_an_owner_until_changed<F: AccessFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let r = room("lobby");
    assert_eq!(store.room_access(&r).await.unwrap(), None);
    store.create_room(&r).await.unwrap();
    // Rooms made by a first message, too.
    store.append(vec![message("chat", "1")]).await.unwrap();
    for name in ["lobby", "chat"] {
        assert_eq!(
            store.room_access(&room(name)).await.unwrap(),
            Some(RoomAccess {
                kind: RoomKind::Public,
                owner: None,
            })
        );
    }
    store.set_room_kind(&r, RoomKind::Private).await.unwrap();
    assert_eq!(
        store.room_access(&r).await.unwrap().unwrap().kind,
        RoomKind::Private
    );
    store.set_room_kind(&r, RoomKind::Public).await.unwrap();
    assert_eq!(
        store.room_access(&r).await.unwrap().unwrap().kind,
        RoomKind::Public
    );
    invalid(store.set_room_kind(&r, RoomKind::Dm).await);
    invalid(
        store
            .set_room_kind(&room("nowhere"), RoomKind::Private)
            .await,
    );
    // A restart keeps what was set.
    store.set_room_kind(&r, RoomKind::Private).await.unwrap();
    drop(store);
    let store = f.open(&place).await;
    assert_eq!(
        store.room_access(&r).await.unwrap().unwrap().kind,
        RoomKind::Private
    );
}

pub async fn ownership_moves_with_the_owner_role<F: AccessFactory>(f: &F) {
    let (_place, store, alice, bob) = alice_and_bob(f).await;
    let r = room("team");
    store.create_private_room(&r, alice).await.unwrap();
    store.set_room_owner(&r, Some(bob)).await.unwrap();
    assert_eq!(
        store.room_access(&r).await.unwrap().unwrap().owner,
        Some(bob)
    );
    assert_eq!(
        store.members(&r).await.unwrap(),
        [(bob, Role::Owner), (alice, Role::Moderator)]
    );
    // To the admins: no owner account, no owner role.
    store.set_room_owner(&r, None).await.unwrap();
    assert_eq!(store.room_access(&r).await.unwrap().unwrap().owner, None);
    assert_eq!(
        store.members(&r).await.unwrap(),
        [(alice, Role::Moderator), (bob, Role::Moderator)]
    );
    // A public room can have an owner too.
    store.create_room(&room("hall")).await.unwrap();
    store
        .set_room_owner(&room("hall"), Some(alice))
        .await
        .unwrap();
    assert_eq!(
        store.member_role(&room("hall"), alice).await.unwrap(),
        Some(Role::Owner)
    );
    invalid(store.set_room_owner(&room("nowhere"), Some(alice)).await);
    let dm = store.open_dm(alice, bob, now()).await.unwrap();
    invalid(store.set_room_owner(&dm.room, Some(alice)).await);
}

pub async fn members_have_one_role_and_the_owner_stays<F: AccessFactory>(f: &F) {
    let (_place, store, alice, bob) = alice_and_bob(f).await;
    let carol = f.account(&store, "carol").await;
    let r = room("team");
    store.create_private_room(&r, alice).await.unwrap();
    assert!(store.add_member(&r, bob, Role::Member).await.unwrap());
    assert!(
        !store.add_member(&r, bob, Role::Moderator).await.unwrap(),
        "a second add changes nothing"
    );
    assert_eq!(
        store.member_role(&r, bob).await.unwrap(),
        Some(Role::Member)
    );
    assert!(store.set_role(&r, bob, Role::Moderator).await.unwrap());
    assert!(store.add_member(&r, carol, Role::Member).await.unwrap());
    assert_eq!(
        store.members(&r).await.unwrap(),
        [
            (alice, Role::Owner),
            (bob, Role::Moderator),
            (carol, Role::Member)
        ]
    );
    assert!(store.remove_member(&r, carol).await.unwrap());
    assert!(!store.remove_member(&r, carol).await.unwrap());
    assert_eq!(store.member_role(&r, carol).await.unwrap(), None);
    assert!(!store.set_role(&r, carol, Role::Moderator).await.unwrap());
    // The owner role moves only with the ownership; the owner stays.
    invalid(store.add_member(&r, carol, Role::Owner).await);
    invalid(store.set_role(&r, bob, Role::Owner).await);
    conflict(store.set_role(&r, alice, Role::Member).await);
    conflict(store.remove_member(&r, alice).await);
    assert_eq!(
        store.member_role(&r, alice).await.unwrap(),
        Some(Role::Owner)
    );
    invalid(store.add_member(&room("nowhere"), bob, Role::Member).await);
    invalid(store.remove_member(&room("nowhere"), bob).await);
    assert_eq!(
        store.member_role(&room("nowhere"), bob).await.unwrap(),
        None
    );
}

pub async fn an_account_lists_the_rooms_it_has_a_place_in<F: AccessFactory>(f: &F) {
    let (_place, store, alice, bob) = alice_and_bob(f).await;
    store
        .create_private_room(&room("b team"), alice)
        .await
        .unwrap();
    store
        .create_private_room(&room("a team"), bob)
        .await
        .unwrap();
    store
        .add_member(&room("a team"), alice, Role::Member)
        .await
        .unwrap();
    store.create_room(&room("hall")).await.unwrap();
    store.create_room(&room("plaza")).await.unwrap();
    store
        .add_member(&room("hall"), alice, Role::Moderator)
        .await
        .unwrap();
    let dm = store.open_dm(bob, alice, now()).await.unwrap();
    let mut expected = vec![
        MemberRoom {
            room: room("a team"),
            kind: RoomKind::Private,
            role: Role::Member,
        },
        MemberRoom {
            room: room("b team"),
            kind: RoomKind::Private,
            role: Role::Owner,
        },
        MemberRoom {
            room: dm.room.clone(),
            kind: RoomKind::Dm,
            role: Role::Member,
        },
        MemberRoom {
            room: room("hall"),
            kind: RoomKind::Public,
            role: Role::Moderator,
        },
    ];
    expected.sort_by(|a, b| a.room.cmp(&b.room));
    assert_eq!(store.rooms_of(alice).await.unwrap(), expected);
    let carol = f.account(&store, "carol").await;
    assert!(store.rooms_of(carol).await.unwrap().is_empty());
}

pub async fn a_ban_ends_membership_and_keeps_out_until_it_expires<F: AccessFactory>(f: &F) {
    let (_place, store, alice, bob) = alice_and_bob(f).await;
    let carol = f.account(&store, "carol").await;
    let r = room("team");
    store.create_private_room(&r, alice).await.unwrap();
    store.add_member(&r, bob, Role::Moderator).await.unwrap();
    let t = now();
    store
        .ban(&r, bob, Some(alice), Some(t + 60_000), t)
        .await
        .unwrap();
    assert!(store.is_banned(&r, bob, t).await.unwrap());
    assert_eq!(
        store.member_role(&r, bob).await.unwrap(),
        None,
        "a ban ends the membership"
    );
    conflict(store.add_member(&r, bob, Role::Member).await);
    // Expired: no ban.
    assert!(!store.is_banned(&r, bob, t + 60_000).await.unwrap());
    // Banning again replaces the ban: until unbanned.
    store.ban(&r, bob, Some(alice), None, t).await.unwrap();
    assert!(store.is_banned(&r, bob, t + 1_000_000_000).await.unwrap());
    assert!(store.unban(&r, bob, t).await.unwrap());
    assert!(!store.unban(&r, bob, t).await.unwrap());
    assert!(!store.is_banned(&r, bob, t).await.unwrap());
    assert!(store.add_member(&r, bob, Role::Member).await.unwrap());
    // A non-member can be banned ahead (by the operator); the owner never.
    store.ban(&r, carol, None, None, t).await.unwrap();
    assert!(store.is_banned(&r, carol, t).await.unwrap());
    conflict(store.ban(&r, alice, Some(bob), None, t).await);
    assert!(!store.is_banned(&r, alice, t).await.unwrap());
    // Bans are per room.
    store.create_room(&room("hall")).await.unwrap();
    assert!(!store.is_banned(&room("hall"), carol, t).await.unwrap());
    assert!(!store.is_banned(&room("nowhere"), carol, t).await.unwrap());
    invalid(store.ban(&room("nowhere"), carol, None, None, t).await);
}

pub async fn an_invite_admits_one_account_once_within_seven_days<F: AccessFactory>(f: &F) {
    let (_place, store, alice, bob) = alice_and_bob(f).await;
    let carol = f.account(&store, "carol").await;
    let dave = f.account(&store, "dave").await;
    let r = room("team");
    store.create_private_room(&r, alice).await.unwrap();
    let t = now();
    let invite = store.create_invite(&r, alice, t).await.unwrap();
    let other = store.create_invite(&r, alice, t).await.unwrap();
    assert_ne!(invite, other, "each invite is a new token");
    // A member or a banned account leaves the invite unused.
    assert_eq!(
        store.redeem_invite(&invite.0, alice, t).await.unwrap(),
        Redeemed::AlreadyMember(r.clone())
    );
    store.ban(&r, dave, Some(alice), None, t).await.unwrap();
    assert_eq!(
        store.redeem_invite(&invite.0, dave, t).await.unwrap(),
        Redeemed::Banned
    );
    assert_eq!(store.member_role(&r, dave).await.unwrap(), None);
    assert_eq!(
        store.redeem_invite(&invite.0, bob, t + 1).await.unwrap(),
        Redeemed::Joined(r.clone())
    );
    assert_eq!(
        store.member_role(&r, bob).await.unwrap(),
        Some(Role::Member)
    );
    assert_eq!(
        store.redeem_invite(&invite.0, carol, t + 2).await.unwrap(),
        Redeemed::Used
    );
    assert_eq!(store.member_role(&r, carol).await.unwrap(), None);
    // Valid for seven days, not a millisecond more.
    assert_eq!(
        store
            .redeem_invite(&other.0, carol, t + INVITE_VALID_MS)
            .await
            .unwrap(),
        Redeemed::Expired
    );
    assert_eq!(
        store
            .redeem_invite(&other.0, carol, t + INVITE_VALID_MS - 1)
            .await
            .unwrap(),
        Redeemed::Joined(r.clone())
    );
    assert_eq!(
        store.redeem_invite("not a token", carol, t).await.unwrap(),
        Redeemed::Unknown
    );
    invalid(store.create_invite(&room("nowhere"), alice, t).await);
    let dm = store.open_dm(alice, bob, t).await.unwrap();
    invalid(store.create_invite(&dm.room, alice, t).await);
}

pub async fn concurrent_redemptions_of_an_invite_admit_exactly_one<F: AccessFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let alice = f.account(&store, "alice").await;
    let mut accounts = Vec::new();
    for i in 0..8 {
        accounts.push(f.account(&store, &format!("guest{i}")).await);
    }
    let r = room("team");
    store.create_private_room(&r, alice).await.unwrap();
    for round in 0..5 {
        let invite = store.create_invite(&r, alice, now()).await.unwrap();
        let outcomes = join_all(
            accounts
                .iter()
                .map(|a| store.redeem_invite(&invite.0, *a, now())),
        )
        .await;
        let outcomes: Vec<Redeemed> = outcomes.into_iter().map(Result::unwrap).collect();
        let joined = outcomes
            .iter()
            .filter(|o| matches!(o, Redeemed::Joined(_)))
            .count();
        assert_eq!(joined, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes.iter().all(|o| matches!(
                o,
                Redeemed::Joined(_) | Redeemed::Used | Redeemed::AlreadyMember(_)
            )),
            "{outcomes:?}"
        );
        assert_eq!(store.members(&r).await.unwrap().len(), 2 + round);
    }
}

pub async fn a_block_counts_either_way<F: AccessFactory>(f: &F) {
    let (_place, store, alice, bob) = alice_and_bob(f).await;
    let carol = f.account(&store, "carol").await;
    assert!(!store.is_blocked(alice, bob).await.unwrap());
    store.block(alice, bob, now()).await.unwrap();
    store.block(alice, bob, now()).await.unwrap();
    assert!(store.is_blocked(alice, bob).await.unwrap());
    assert!(store.is_blocked(bob, alice).await.unwrap());
    assert!(!store.is_blocked(alice, carol).await.unwrap());
    // Only the blocker lifts its block.
    assert!(!store.unblock(bob, alice).await.unwrap());
    assert!(store.is_blocked(bob, alice).await.unwrap());
    store.block(bob, alice, now()).await.unwrap();
    assert!(store.unblock(alice, bob).await.unwrap());
    assert!(
        store.is_blocked(alice, bob).await.unwrap(),
        "bob's block stands"
    );
    assert!(store.unblock(bob, alice).await.unwrap());
    assert!(!store.is_blocked(alice, bob).await.unwrap());
    invalid(store.block(alice, alice, now()).await);
}

pub async fn a_dm_is_one_room_per_pair_whichever_side_opens_it<F: AccessFactory>(f: &F) {
    let (place, store, alice, bob) = alice_and_bob(f).await;
    let carol = f.account(&store, "carol").await;
    let first = store.open_dm(alice, bob, now()).await.unwrap();
    assert!(first.created);
    let again = store.open_dm(bob, alice, now()).await.unwrap();
    assert_eq!(again.room, first.room);
    assert!(!again.created);
    let other = store.open_dm(carol, alice, now()).await.unwrap();
    assert_ne!(other.room, first.room);
    // Its name tells nothing and cannot be guessed.
    let name = first.room.as_str();
    let digits = name.strip_prefix(DM_ROOM_PREFIX).unwrap();
    assert_eq!(digits.len(), 32, "{name}");
    assert!(digits.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
    assert_eq!(
        store.room_access(&first.room).await.unwrap(),
        Some(RoomAccess {
            kind: RoomKind::Dm,
            owner: None,
        })
    );
    let mut both = [(alice, Role::Member), (bob, Role::Member)];
    both.sort_by_key(|(a, _)| *a);
    assert_eq!(store.members(&first.room).await.unwrap(), both);
    // Never a third member, never another kind.
    invalid(store.add_member(&first.room, carol, Role::Member).await);
    invalid(store.set_role(&first.room, bob, Role::Moderator).await);
    invalid(store.set_room_kind(&first.room, RoomKind::Public).await);
    invalid(store.open_dm(alice, alice, now()).await);
    // Messages work as in any room; a restart finds the same DM.
    store
        .append(vec![crate::storage::NewMessage {
            room: first.room.clone(),
            ..message("x", "dm1")
        }])
        .await
        .unwrap();
    drop(store);
    let store = f.open(&place).await;
    assert_eq!(
        store.open_dm(bob, alice, now()).await.unwrap().room,
        first.room
    );
    assert_eq!(store.history(&first.room, None, 10).await.unwrap().len(), 1);
}

pub async fn concurrent_dm_opens_from_both_sides_make_one_room<F: AccessFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let mut accounts = Vec::new();
    for i in 0..10 {
        accounts.push(f.account(&store, &format!("user{i}")).await);
    }
    for pair in accounts.chunks(2) {
        let (a, b) = (pair[0], pair[1]);
        let opens = join_all((0..8).map(|i| {
            let (x, y) = if i % 2 == 0 { (a, b) } else { (b, a) };
            store.open_dm(x, y, now())
        }))
        .await;
        let dms: Vec<_> = opens.into_iter().map(Result::unwrap).collect();
        assert_eq!(dms.iter().filter(|d| d.created).count(), 1, "{dms:?}");
        assert!(dms.iter().all(|d| d.room == dms[0].room), "{dms:?}");
        assert_eq!(store.members(&dms[0].room).await.unwrap().len(), 2);
    }
}

pub async fn a_deleted_message_is_a_tombstone_without_its_text<F: AccessFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let alice = f.account(&store, "alice").await;
    let sent = stored(
        store
            .append(vec![
                message("hall", "m1"),
                message("hall", "m2"),
                message("hall", "m3"),
            ])
            .await
            .unwrap(),
    );
    let author = MessageAuthor {
        author: Some(sent[1].author.unwrap()),
        deleted: false,
    };
    assert_eq!(
        store.message_author(&room("hall"), "m2").await.unwrap(),
        Some(author)
    );
    assert_eq!(
        store
            .delete_message(&room("hall"), "m2", alice, now())
            .await
            .unwrap(),
        Some(author),
        "the author as it was"
    );
    // In its place, with its seq and author, without its text.
    let check = |history: Vec<crate::domain::Message>| {
        assert_eq!(history.len(), 3);
        assert_eq!(history[0], sent[0]);
        assert_eq!(history[2], sent[2]);
        let tombstone = &history[1];
        assert_eq!((tombstone.id.as_str(), tombstone.seq), ("m2", 2));
        assert_eq!(tombstone.author, sent[1].author);
        assert_eq!(tombstone.text, "");
    };
    check(store.history(&room("hall"), None, 10).await.unwrap());
    check(
        store
            .catch_up(&room("hall"), Some(0), 10)
            .await
            .unwrap()
            .messages,
    );
    // Deleting again changes nothing and says so.
    let deleted = MessageAuthor {
        deleted: true,
        ..author
    };
    assert_eq!(
        store
            .delete_message(&room("hall"), "m2", alice, now())
            .await
            .unwrap(),
        Some(deleted)
    );
    assert_eq!(
        store.message_author(&room("hall"), "m2").await.unwrap(),
        Some(deleted)
    );
    // Only a message of that room.
    store.append(vec![message("other", "o1")]).await.unwrap();
    assert_eq!(
        store
            .delete_message(&room("hall"), "o1", alice, now())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.message_author(&room("hall"), "o1").await.unwrap(),
        None
    );
    assert_eq!(
        store
            .delete_message(&room("hall"), "nope", alice, now())
            .await
            .unwrap(),
        None
    );
    // Numbering goes on after it, and a restart keeps the tombstone.
    let next = stored(store.append(vec![message("hall", "m4")]).await.unwrap());
    assert_eq!(next[0].seq, 4);
    drop(store);
    let store = f.open(&place).await;
    assert_eq!(
        store.history(&room("hall"), None, 10).await.unwrap()[1].text,
        ""
    );
}

pub async fn private_rooms_and_dms_are_never_listed_nor_stale<F: AccessFactory>(f: &F) {
    let (_place, store, alice, bob) = alice_and_bob(f).await;
    store
        .create_private_room(&room("secret"), alice)
        .await
        .unwrap();
    let dm = store.open_dm(alice, bob, now()).await.unwrap();
    store.create_room(&room("quiet")).await.unwrap();
    for (i, r) in [room("secret"), dm.room.clone(), room("hall")]
        .into_iter()
        .enumerate()
    {
        store
            .append(vec![crate::storage::NewMessage {
                room: r,
                ..message("x", &format!("m{i}"))
            }])
            .await
            .unwrap();
    }
    assert_eq!(store.recent_rooms(0, 100).await.unwrap(), ["hall"]);
    // Whatever the cutoffs, only public rooms go.
    let everything = StaleRooms {
        unused_before: now() + 1_000_000,
        idle_before: now() + 1_000_000,
    };
    let mut stale = store.stale_rooms(everything, 100).await.unwrap();
    stale.sort();
    assert_eq!(stale, [room("hall"), room("quiet")]);
    let asked = [room("secret"), dm.room.clone(), room("hall")];
    store
        .delete_stale_messages(everything, &asked)
        .await
        .unwrap();
    assert_eq!(
        store.delete_stale_rooms(everything, &asked).await.unwrap(),
        [room("hall")]
    );
    assert_eq!(
        store
            .history(&room("secret"), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.history(&dm.room, None, 10).await.unwrap().len(), 1);
    assert_eq!(store.members(&dm.room).await.unwrap().len(), 2);
}

pub async fn a_removed_room_takes_its_members_bans_and_invites<F: AccessFactory>(f: &F) {
    let (_place, store, alice, bob) = alice_and_bob(f).await;
    let carol = f.account(&store, "carol").await;
    let r = room("team");
    store.create_private_room(&r, alice).await.unwrap();
    store.add_member(&r, bob, Role::Member).await.unwrap();
    store
        .ban(&r, carol, Some(alice), None, now())
        .await
        .unwrap();
    let invite = store.create_invite(&r, alice, now()).await.unwrap();
    assert!(store.delete_room(&r, true).await.unwrap());
    assert_eq!(store.room_access(&r).await.unwrap(), None);
    assert!(store.rooms_of(bob).await.unwrap().is_empty());
    assert_eq!(
        store.redeem_invite(&invite.0, carol, now()).await.unwrap(),
        Redeemed::Unknown
    );
    // A room made again under the name starts with none of it.
    store.create_room(&r).await.unwrap();
    assert!(store.members(&r).await.unwrap().is_empty());
    assert!(!store.is_banned(&r, carol, now()).await.unwrap());
    assert_eq!(store.room_access(&r).await.unwrap().unwrap().owner, None);
    // A removed DM: the pair gets a new one.
    let dm = store.open_dm(alice, bob, now()).await.unwrap();
    assert!(store.delete_room(&dm.room, true).await.unwrap());
    let again = store.open_dm(bob, alice, now()).await.unwrap();
    assert!(again.created);
    assert_ne!(again.room, dm.room);
}
