//! Look-alike names: two names that look alike are one name, for people
//! and for rooms; blank-looking names are refused; the bot cannot be faked.

use serde_json::{Value, json};

use crate::helpers::{Client, spawn_app, spawn_app_on, texts};

/// Says hello as `name`; returns the reply (`welcome` or `error`).
async fn hello(client: &mut Client, name: &str) -> Value {
    client.send_json(json!({"type":"hello","name":name})).await;
    client.recv().await
}

async fn refused(app: &crate::helpers::TestApp, name: &str, code: &str) {
    let mut c = app.client().await;
    let reply = hello(&mut c, name).await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some(code)),
        "{name:?} got {reply}"
    );
}

#[tokio::test]
async fn look_alike_names_cannot_be_online_at_the_same_time() {
    let app = spawn_app().await;
    let mut online = Vec::new();
    for (name, look_alikes) in [
        ("alice", &["\u{430}lice", "Alice", "aIice"][..]), // Cyrillic а; capital I
        ("bob", &["\u{FF42}\u{FF4F}\u{FF42}", "b\u{43E}b"][..]), // full-width; Cyrillic о
        ("Jos\u{e9}", &["Jose\u{301}", "JOSÉ"][..]),       // decomposed
        ("carol", &["carol\u{2800}", "car\u{3164}ol"][..]), // blank-looking (refused below)
    ] {
        online.push(app.user(name).await);
        for look_alike in look_alikes {
            let mut c = app.client().await;
            let reply = hello(&mut c, look_alike).await;
            assert_eq!(
                reply["type"], "error",
                "{look_alike:?} beside {name:?}: {reply}"
            );
            assert!(
                matches!(reply["code"].as_str(), Some("name_taken" | "invalid_name")),
                "{look_alike:?}: {reply}"
            );
        }
    }
    // The blank-looking ones are refused outright, not only beside carol.
    for name in [
        "dave\u{2800}",
        "e\u{1D173}ve",
        "\u{115F}\u{1160}",
        "\u{3164}",
    ] {
        refused(&app, name, "invalid_name").await;
    }
    // Names are kept in NFC: a decomposed name is welcomed precomposed.
    let mut zoe = app.client().await;
    let welcome = hello(&mut zoe, "Zoe\u{308}").await;
    assert_eq!(welcome["name"], "Zo\u{eb}", "{welcome}");
    drop(online);
}

#[tokio::test]
async fn the_bot_and_its_look_alikes_are_reserved() {
    let app = spawn_app().await;
    for name in [
        "ChatterPro Bot",
        "ChatterPro  Bot",       // two spaces
        "ChatterPr\u{43E} Bot",  // Cyrillic о
        "ChatterPro B\u{3BF}t",  // Greek ο
        "\u{FF23}hatterPro Bot", // full-width Ｃ
        "chatterpro bot",
    ] {
        refused(&app, name, "invalid_name").await;
    }
    for name in [
        "ChatterPro\u{a0}Bot",
        "ChatterPro Bot\u{2800}",
        "ChatterPro\u{2007}Bot",
    ] {
        refused(&app, name, "invalid_name").await;
    }
}

#[tokio::test]
async fn a_room_that_looks_like_an_existing_room_is_refused() {
    let app = spawn_app().await;
    let mut alice = app.member("alice", "Book Club").await;
    for look_alike in [
        "B\u{43E}\u{43E}k Club", // Cyrillic о
        "Book  Club",            // collapsed to "Book Club": the same room
        "Chat R\u{43E}om",       // a default room's look-alike
    ] {
        alice
            .send_json(json!({"type":"join","room":look_alike}))
            .await;
        let reply = alice.recv().await;
        if look_alike == "Book  Club" {
            // One space: it is "Book Club" itself.
            assert_eq!(reply["type"], "joined", "{reply}");
            assert_eq!(reply["room"], "Book Club");
            continue;
        }
        assert_eq!(reply["code"], "invalid_room", "{look_alike:?}: {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains("looks like"), "{message}");
    }
    // Case still tells rooms apart.
    alice.join("book club").await;
    // Blank-looking room names are refused.
    for name in ["Book Club\u{2800}", "Book\u{a0}Club", "\u{3164}"] {
        alice.send_json(json!({"type":"join","room":name})).await;
        let reply = alice.recv_type("error").await;
        assert_eq!(reply["code"], "invalid_room", "{name:?}: {reply}");
    }
    // Nothing of the refused names reached the room list.
    alice.send_json(json!({"type":"rooms"})).await;
    let rooms = alice.recv_until("rooms").await;
    let names: Vec<&str> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Book Club") && names.contains(&"book club"));
    assert!(!names.iter().any(|n| n.contains('\u{43E}')), "{names:?}");
}

/// Applies only the migrations before room keys and author ids to a new
/// database at `dir/test.db`, as a server of that time left it.
async fn database_before_keys(dir: &tempfile::TempDir) -> String {
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    for file in ["0001_rooms_and_messages.sql", "0002_room_activity.sql"] {
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(file);
        std::fs::copy(from, old.join(file)).unwrap();
    }
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let options = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .unwrap()
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    // Two rooms that look alike, from before, with a message each.
    for (id, name) in [(1, "Old Room"), (2, "\u{41E}ld Room")] {
        sqlx::query(
            "INSERT INTO rooms (id, name, last_seq, created_at, last_active) VALUES (?1, ?2, 1, 1, 1)",
        )
        .bind(id)
        .bind(name)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO messages (room_id, seq, id, author, body, ts) VALUES (?1, 1, ?2, 'alice', ?3, 1)",
        )
        .bind(id)
        .bind(format!("m{id}"))
        .bind(format!("in {name}"))
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    url
}

#[tokio::test]
async fn a_database_from_before_room_keys_migrates_and_keeps_its_look_alikes() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_before_keys(&dir).await;
    let app = spawn_app_on(&url, |_| {}).await;
    let mut alice = app.user("alice").await;
    // Both old rooms keep their names and messages; their messages have no author.
    for (room, text) in [
        ("Old Room", "in Old Room"),
        ("\u{41E}ld Room", "in \u{41E}ld Room"),
    ] {
        let joined = alice.join(room).await;
        assert_eq!(texts(&joined["messages"]), [text]);
        assert!(joined["messages"][0].get("author").is_none(), "{joined}");
    }
    // No third room may look like them.
    alice
        .send_json(json!({"type":"join","room":"\u{39F}ld Room"})) // Greek Ο
        .await;
    assert_eq!(alice.recv_type("error").await["code"], "invalid_room");
    alice
        .send_json(json!({"type":"join","room":"0ld Room"}))
        .await;
    let reply = alice.recv().await;
    assert_eq!(reply["code"], "invalid_room", "0 for O: {reply}");
    drop(dir);
}
