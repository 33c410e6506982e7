//! The contract's rules for [`AccountStore`]: accounts by their look-alike
//! keys, and sessions found, touched, expired and revoked.

use super::{StoreFactory, now};
use crate::domain::Nickname;
use crate::storage::{AccountSession, AccountStore, CreateAccountError, NewAccount};

fn new_account(name: &str) -> NewAccount {
    let nick = Nickname::parse(name).unwrap();
    NewAccount {
        name: nick.as_str().to_owned(),
        name_key: nick.key(),
        name_shape: nick.shape(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$hash-of-{name}"),
        admin: false,
        created_at: now(),
    }
}

fn session(token: u8, account: &crate::storage::StoredAccount, last_used: i64) -> AccountSession {
    AccountSession {
        token_hash: [token; 32],
        account: account.id,
        created_at: last_used,
        last_used,
    }
}

async fn find(store: &impl AccountStore, name: &str) -> Option<crate::storage::StoredAccount> {
    let nick = Nickname::parse(name).unwrap();
    store
        .find_account(&nick.key(), &nick.shape())
        .await
        .unwrap()
}

pub async fn an_account_is_found_by_either_look_alike_key<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let alice = store.create_account(new_account("Alice")).await.unwrap();
    assert_eq!(alice.name, "Alice");
    assert!(!alice.admin && !alice.disabled);
    assert_eq!(alice.password_hash, new_account("Alice").password_hash);
    // Same key (case, a Cyrillic а), same shape (a capital I for l).
    for look_alike in ["alice", "ALICE", "\u{430}lice", "AIice"] {
        assert_eq!(
            find(&store, look_alike).await,
            Some(alice.clone()),
            "{look_alike}"
        );
    }
    assert_eq!(find(&store, "alicia").await, None);
    // A second account gets its own id and author id.
    let bob = store.create_account(new_account("bob")).await.unwrap();
    assert_ne!(bob.id, alice.id);
    assert_ne!(bob.author, alice.author);
}

pub async fn a_look_alike_of_an_account_is_not_created<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    store.create_account(new_account("alice")).await.unwrap();
    for look_alike in ["Alice", "\u{430}lice", "aIice"] {
        match store.create_account(new_account(look_alike)).await {
            Err(CreateAccountError::NameTaken(holder)) => assert_eq!(holder, "alice"),
            other => panic!("{look_alike}: {other:?}"),
        }
    }
    // Concurrent sign-ups of one name: one account.
    let tries = (0..8).map(|_| store.create_account(new_account("carol")));
    let created = futures_util::future::join_all(tries)
        .await
        .into_iter()
        .filter(|r| r.is_ok())
        .count();
    assert_eq!(created, 1);
}

pub async fn password_admin_and_disabling_are_stored<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let alice;
    {
        let store = f.open(&place).await;
        alice = store.create_account(new_account("alice")).await.unwrap();
        assert!(
            store
                .set_password_hash(alice.id, "$argon2id$new")
                .await
                .unwrap()
        );
        assert!(store.set_admin(alice.id, true).await.unwrap());
        let s = session(1, &alice, now());
        store.create_session(s.clone()).await.unwrap();
        store
            .create_session(session(2, &alice, now()))
            .await
            .unwrap();
        let mut revoked = store.disable_account(alice.id).await.unwrap().unwrap();
        revoked.sort();
        assert_eq!(revoked, [[1; 32], [2; 32]]);
        // Unknown accounts: nothing changed, and the caller is told.
        let nobody = crate::domain::AccountId(alice.id.0 + 1000);
        assert!(!store.set_password_hash(nobody, "x").await.unwrap());
        assert!(!store.set_admin(nobody, true).await.unwrap());
        assert_eq!(store.disable_account(nobody).await.unwrap(), None);
    }
    // After a restart.
    let store = f.open(&place).await;
    let stored = find(&store, "alice").await.unwrap();
    assert_eq!(stored.password_hash, "$argon2id$new");
    assert!(stored.admin && stored.disabled);
    assert_eq!(stored.author, alice.author);
    assert_eq!(store.find_session(&[1; 32], 0).await.unwrap(), None);
    // A disabled account's name stays taken.
    assert!(matches!(
        store.create_account(new_account("Alice")).await,
        Err(CreateAccountError::NameTaken(_))
    ));
}

pub async fn a_session_is_found_touched_and_expires<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let alice = store.create_account(new_account("alice")).await.unwrap();
    let t = now();
    let s = session(7, &alice, t);
    store.create_session(s.clone()).await.unwrap();
    let (found, account) = store.find_session(&[7; 32], t).await.unwrap().unwrap();
    assert_eq!(found, s);
    assert_eq!(account, alice);
    assert_eq!(store.find_session(&[8; 32], 0).await.unwrap(), None);
    // Expired: last used before the cutoff.
    assert_eq!(store.find_session(&[7; 32], t + 1).await.unwrap(), None);
    store.touch_session(&[7; 32], t + 500).await.unwrap();
    // An older touch does not move it back.
    store.touch_session(&[7; 32], t + 100).await.unwrap();
    let (found, _) = store.find_session(&[7; 32], t + 1).await.unwrap().unwrap();
    assert_eq!(found.last_used, t + 500);
    assert_eq!(found.created_at, t);
    // A disabled account's session is not found (nor kept).
    let bob = store.create_account(new_account("bob")).await.unwrap();
    store.create_session(session(9, &bob, t)).await.unwrap();
    store.disable_account(bob.id).await.unwrap();
    assert_eq!(store.find_session(&[9; 32], 0).await.unwrap(), None);
}

pub async fn sessions_are_revoked_one_all_or_all_but_one<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let alice = store.create_account(new_account("alice")).await.unwrap();
    let bob = store.create_account(new_account("bob")).await.unwrap();
    let t = now();
    for token in 1..=4 {
        store
            .create_session(session(token, &alice, t))
            .await
            .unwrap();
    }
    store.create_session(session(9, &bob, t)).await.unwrap();
    assert!(store.revoke_session(&[1; 32]).await.unwrap());
    assert!(!store.revoke_session(&[1; 32]).await.unwrap());
    assert_eq!(store.find_session(&[1; 32], 0).await.unwrap(), None);
    let mut revoked = store
        .revoke_sessions(alice.id, Some(&[2; 32]))
        .await
        .unwrap();
    revoked.sort();
    assert_eq!(revoked, [[3; 32], [4; 32]]);
    assert!(store.find_session(&[2; 32], 0).await.unwrap().is_some());
    assert_eq!(
        store.revoke_sessions(alice.id, None).await.unwrap(),
        [[2; 32]]
    );
    assert_eq!(store.find_session(&[2; 32], 0).await.unwrap(), None);
    // Bob's were never touched.
    assert!(store.find_session(&[9; 32], 0).await.unwrap().is_some());
}

pub async fn expired_sessions_are_pruned<F: StoreFactory>(f: &F) {
    let place = f.place().await;
    let store = f.open(&place).await;
    let alice = store.create_account(new_account("alice")).await.unwrap();
    let t = now();
    store
        .create_session(session(1, &alice, t - 10_000))
        .await
        .unwrap();
    store
        .create_session(session(2, &alice, t - 5_000))
        .await
        .unwrap();
    store.create_session(session(3, &alice, t)).await.unwrap();
    assert_eq!(store.prune_sessions(t - 5_000).await.unwrap(), 1);
    assert_eq!(store.find_session(&[1; 32], 0).await.unwrap(), None);
    assert!(store.find_session(&[2; 32], 0).await.unwrap().is_some());
    assert_eq!(store.prune_sessions(t + 1).await.unwrap(), 2);
    assert_eq!(store.prune_sessions(t + 1).await.unwrap(), 0);
}
