//! Accounts over HTTP: sign-up, sign-in, the session cookie, signing out,
//! password changes, the sign-in throttle and the origin rule — against the
//! real server, with real HTTP requests.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderMap, ORIGIN, RETRY_AFTER, SET_COOKIE};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// An answer: status, headers, JSON body (`Null` when empty).
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `Set-Cookie` line of the session cookie.
    pub fn set_cookie(&self) -> String {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with("chatterpro_session="))
            .unwrap_or_else(|| panic!("no session cookie in {:?}", self.headers))
    }

    /// The session token the cookie sets.
    pub fn token(&self) -> String {
        let line = self.set_cookie();
        let pair = line.split(';').next().unwrap();
        pair.trim_start_matches("chatterpro_session=").to_owned()
    }

    fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// A request to `path` with an optional JSON body, session token and Origin.
pub async fn request(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
    origin: Option<&str>,
) -> Reply {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(method, app.http(path));
    if let Some(body) = body {
        req = req.json(&body);
    }
    if let Some(token) = token {
        req = req.header("cookie", format!("other=1; chatterpro_session={token}"));
    }
    if let Some(origin) = origin {
        req = req.header(ORIGIN, origin);
    }
    let response = req.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn sign_up(app: &TestApp, name: &str, password: &str) -> Reply {
    let body = json!({"name": name, "password": password});
    request(app, "POST", "/api/accounts", Some(body), None, None).await
}

pub async fn sign_in(app: &TestApp, name: &str, password: &str) -> Reply {
    let body = json!({"name": name, "password": password});
    request(app, "POST", "/api/session", Some(body), None, None).await
}

async fn whoami(app: &TestApp, token: &str) -> Reply {
    request(app, "GET", "/api/session", None, Some(token), None).await
}

fn db(app: &TestApp) -> rusqlite::Connection {
    rusqlite::Connection::open(PathBuf::from(app.db_url.trim_start_matches("sqlite://")))
        .expect("open the test database")
}

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn sign_up_signs_in_with_a_hardened_cookie_and_stores_only_its_hash() {
    let app = spawn_app().await;
    let reply = sign_up(&app, "Alice", PASSWORD).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body, json!({"name": "Alice"}));
    let cookie = reply.set_cookie();
    let token = reply.token();
    assert_eq!(token.len(), 32, "128 bits in hex: {cookie}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=2592000"] {
        assert!(cookie.split("; ").any(|f| f == flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");

    let me = whoami(&app, &token).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body, json!({"name": "Alice", "admin": false}));

    // The database has the token's SHA-256, never the token.
    let conn = db(&app);
    let stored: Vec<u8> = conn
        .query_row("SELECT token_hash FROM account_sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, Sha256::digest(token.as_bytes()).to_vec());
    let with_token: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM account_sessions WHERE token_hash = ?1 OR CAST(token_hash AS TEXT) = ?1",
            [&token],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(with_token, 0);
}

#[tokio::test]
async fn the_cookie_is_secure_when_the_public_url_is_https() {
    let app = spawn_app_with(|c| c.public_url = Some("https://chat.example".into())).await;
    let reply = sign_up(&app, "alice", PASSWORD).await;
    assert_eq!(reply.status, 201);
    assert!(reply.set_cookie().split("; ").any(|f| f == "Secure"));
}

#[tokio::test]
async fn passwords_are_hashed_with_argon2id_and_owasp_parameters() {
    let app = spawn_app().await;
    assert_eq!(sign_up(&app, "alice", PASSWORD).await.status, 201);
    let hash: String = db(&app)
        .query_row("SELECT password_hash FROM accounts", [], |r| r.get(0))
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains(PASSWORD));
}

#[tokio::test]
async fn sign_in_with_the_right_password_and_not_with_a_wrong_one() {
    let app = spawn_app().await;
    sign_up(&app, "alice", PASSWORD).await;
    // Any look-alike of the name signs in to the account.
    let reply = sign_in(&app, "ALICE", PASSWORD).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, json!({"name": "alice", "admin": false}));
    assert_eq!(whoami(&app, &reply.token()).await.status, 200);

    let wrong = sign_in(&app, "alice", "correct horse batterY").await;
    let unknown = sign_in(&app, "nobody", PASSWORD).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.error_code(), "bad_credentials");
    // An unknown name and a wrong password are one answer.
    assert_eq!(unknown.status, wrong.status);
    assert_eq!(unknown.body, wrong.body);
    assert!(wrong.headers.get(SET_COOKIE).is_none());
    // A name that is not a valid name at all: the same answer again.
    let invalid = sign_in(&app, "", PASSWORD).await;
    assert_eq!((invalid.status, &invalid.body), (401, &wrong.body));
}

#[tokio::test]
async fn weak_and_badly_sized_passwords_and_invalid_names_are_refused() {
    let app = spawn_app().await;
    for password in ["short", "1234567", "password", "Password", "iloveyou"] {
        let reply = sign_up(&app, "alice", password).await;
        assert_eq!(reply.status, 400, "{password}");
        assert_eq!(reply.error_code(), "weak_password", "{password}");
    }
    let long = "x".repeat(1025);
    let reply = sign_up(&app, "alice", &long).await;
    assert_eq!((reply.status, reply.error_code()), (400, "weak_password"));
    assert_eq!(sign_up(&app, "alice", &"x".repeat(1024)).await.status, 201);
    for name in [
        "",
        "ChatterPro Bot",
        "chatterpro bot",
        "ali\u{200B}ce",
        &"n".repeat(33),
    ] {
        let reply = sign_up(&app, name, PASSWORD).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (400, "invalid_name"),
            "{name:?}"
        );
    }
    // Not JSON, or fields missing.
    let reply = request(
        &app,
        "POST",
        "/api/accounts",
        Some(json!({"name": "bob"})),
        None,
        None,
    )
    .await;
    assert_eq!((reply.status, reply.error_code()), (400, "bad_request"));
    assert_eq!(
        db(&app)
            .query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_name_like_an_accounts_or_an_online_guests_is_taken() {
    let app = spawn_app().await;
    assert_eq!(sign_up(&app, "alice", PASSWORD).await.status, 201);
    for look_alike in ["Alice", "\u{430}lice", "aIice"] {
        let reply = sign_up(&app, look_alike, PASSWORD).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (409, "name_taken"),
            "{look_alike}"
        );
    }
    // A guest online as carol: nobody signs up as carol meanwhile.
    let carol = app.user("carol").await;
    let reply = sign_up(&app, "Carol", PASSWORD).await;
    assert_eq!((reply.status, reply.error_code()), (409, "name_taken"));
    drop(carol);
    // Gone offline, the guest no longer stops it.
    let mut reply = sign_up(&app, "Carol", PASSWORD).await;
    for _ in 0..100 {
        if reply.status != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply = sign_up(&app, "Carol", PASSWORD).await;
    }
    assert_eq!(reply.status, 201, "{}", reply.body);
}

#[tokio::test]
async fn sign_out_revokes_the_session_and_clears_the_cookie() {
    let app = spawn_app().await;
    let token = sign_up(&app, "alice", PASSWORD).await.token();
    let other = sign_in(&app, "alice", PASSWORD).await.token();
    let none = request(&app, "GET", "/api/session", None, None, None).await;
    assert_eq!((none.status, none.error_code()), (401, "not_signed_in"));

    let out = request(&app, "DELETE", "/api/session", None, Some(&token), None).await;
    assert_eq!(out.status, 204);
    let cleared = out.set_cookie();
    assert!(cleared.starts_with("chatterpro_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(whoami(&app, &token).await.status, 401);
    // Revoked server-side: the same token again is not signed in.
    let again = request(&app, "DELETE", "/api/session", None, Some(&token), None).await;
    assert_eq!(again.status, 401);
    // The other session is untouched.
    assert_eq!(whoami(&app, &other).await.status, 200);
}

#[tokio::test]
async fn sign_out_everywhere_revokes_every_session() {
    let app = spawn_app().await;
    let first = sign_up(&app, "alice", PASSWORD).await.token();
    let second = sign_in(&app, "alice", PASSWORD).await.token();
    let bobs = sign_up(&app, "bob", PASSWORD).await.token();
    let out = request(&app, "DELETE", "/api/sessions", None, Some(&second), None).await;
    assert_eq!(out.status, 204);
    assert!(out.set_cookie().contains("Max-Age=0"));
    assert_eq!(whoami(&app, &first).await.status, 401);
    assert_eq!(whoami(&app, &second).await.status, 401);
    assert_eq!(whoami(&app, &bobs).await.status, 200);
}

#[tokio::test]
async fn a_password_change_revokes_every_other_session() {
    let app = spawn_app().await;
    let this = sign_up(&app, "alice", PASSWORD).await.token();
    let other = sign_in(&app, "alice", PASSWORD).await.token();
    let change = |current: &str, new: &str| json!({"current": current, "new": new});
    let path = "/api/account/password";

    let reply = request(
        &app,
        "POST",
        path,
        Some(change("wrong one!", "new horse battery")),
        Some(&this),
        None,
    )
    .await;
    assert_eq!((reply.status, reply.error_code()), (401, "bad_credentials"));
    let reply = request(
        &app,
        "POST",
        path,
        Some(change(PASSWORD, "password1")),
        Some(&this),
        None,
    )
    .await;
    assert_eq!((reply.status, reply.error_code()), (400, "weak_password"));
    let reply = request(
        &app,
        "POST",
        path,
        Some(change(PASSWORD, "new horse battery")),
        None,
        None,
    )
    .await;
    assert_eq!((reply.status, reply.error_code()), (401, "not_signed_in"));
    assert_eq!(
        whoami(&app, &other).await.status,
        200,
        "refusals revoke nothing"
    );

    let reply = request(
        &app,
        "POST",
        path,
        Some(change(PASSWORD, "new horse battery")),
        Some(&this),
        None,
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(whoami(&app, &this).await.status, 200);
    assert_eq!(whoami(&app, &other).await.status, 401);
    assert_eq!(sign_in(&app, "alice", PASSWORD).await.status, 401);
    assert_eq!(
        sign_in(&app, "alice", "new horse battery").await.status,
        200
    );
}

#[tokio::test]
async fn a_session_unused_for_30_days_has_expired_and_a_use_is_recorded() {
    let app = spawn_app().await;
    let token = sign_up(&app, "alice", PASSWORD).await.token();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let day = 24 * 60 * 60 * 1000;
    let conn = db(&app);
    let set_last_used = |at: i64| {
        conn.execute("UPDATE account_sessions SET last_used = ?1", [at])
            .unwrap();
    };
    // 29 days: still valid, and the use moves its expiry.
    set_last_used(now - 29 * day);
    assert_eq!(whoami(&app, &token).await.status, 200);
    let last_used: i64 = conn
        .query_row("SELECT last_used FROM account_sessions", [], |r| r.get(0))
        .unwrap();
    assert!(last_used >= now, "touched: {last_used} < {now}");
    // 30 days and a minute: expired.
    set_last_used(now - 30 * day - 60_000);
    let reply = whoami(&app, &token).await;
    assert_eq!((reply.status, reply.error_code()), (401, "not_signed_in"));
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_account_and_per_address() {
    let app = spawn_app().await;
    sign_up(&app, "alice", PASSWORD).await;
    for _ in 0..5 {
        assert_eq!(sign_in(&app, "alice", "wrong password").await.status, 401);
    }
    // The sixth try is refused before the password is looked at: even the right one.
    let reply = sign_in(&app, "Alice", PASSWORD).await;
    assert_eq!((reply.status, reply.error_code()), (429, "rate_limited"));
    let retry: u64 = reply.headers[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    // Other names from this address still may, up to 20 failures in all.
    for i in 0..15 {
        let reply = sign_in(&app, &format!("nobody{i}"), "wrong password").await;
        assert_eq!(reply.status, 401, "failure {}", 6 + i);
    }
    let reply = sign_in(&app, "someone", "wrong password").await;
    assert_eq!((reply.status, reply.error_code()), (429, "rate_limited"));
    assert!(reply.headers.contains_key(RETRY_AFTER));
}

#[tokio::test]
async fn state_changing_requests_from_another_origin_are_refused() {
    let app = spawn_app().await;
    let own = format!("http://{}", app.addr);
    let body = || Some(json!({"name": "alice", "password": PASSWORD}));
    let evil = Some("http://evil.example");

    let reply = request(&app, "POST", "/api/accounts", body(), None, evil).await;
    assert_eq!((reply.status, reply.error_code()), (403, "bad_origin"));
    let reply = request(&app, "POST", "/api/accounts", body(), None, Some(&own)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let token = reply.token();

    let reply = request(&app, "POST", "/api/session", body(), None, evil).await;
    assert_eq!(reply.status, 403);
    for path in ["/api/session", "/api/sessions"] {
        let reply = request(&app, "DELETE", path, None, Some(&token), evil).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (403, "bad_origin"),
            "{path}"
        );
    }
    let change = Some(json!({"current": PASSWORD, "new": "new horse battery"}));
    let reply = request(
        &app,
        "POST",
        "/api/account/password",
        change,
        Some(&token),
        evil,
    )
    .await;
    assert_eq!(reply.status, 403);
    // Nothing was changed; reading needs no origin check.
    let reply = request(&app, "GET", "/api/session", None, Some(&token), evil).await;
    assert_eq!(reply.status, 200);
    let localhost = format!("http://localhost:{}", app.addr.port());
    let reply = request(
        &app,
        "DELETE",
        "/api/session",
        None,
        Some(&token),
        Some(&localhost),
    )
    .await;
    assert_eq!(reply.status, 204);
}

#[tokio::test]
async fn listed_origins_may_change_state() {
    let app = spawn_app_with(|c| c.allowed_origins = vec!["http://app.example".into()]).await;
    let body = Some(json!({"name": "alice", "password": PASSWORD}));
    let reply = request(
        &app,
        "POST",
        "/api/accounts",
        body,
        None,
        Some("http://app.example"),
    )
    .await;
    assert_eq!(reply.status, 201);
}

/// `chatterpro admin ARGS…` on the app's database, with `stdin` as its
/// standard input, as an operator would run it while the server runs.
async fn admin(app: &TestApp, args: &[&str], stdin: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatterpro"))
        .arg("admin")
        .args(["--database-url", &app.db_url])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chatterpro admin runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_operator_creates_accounts_and_admins_while_the_server_runs() {
    let app = spawn_app().await;
    let out = admin(
        &app,
        &["create-account", "root", "--admin"],
        "operator horse battery\n",
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let reply = sign_in(&app, "root", "operator horse battery").await;
    assert_eq!(reply.body, json!({"name": "root", "admin": true}));

    let out = admin(
        &app,
        &["create-account", "alice"],
        "correct horse battery\r\n",
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let alice = sign_in(&app, "alice", PASSWORD).await;
    assert_eq!(alice.body, json!({"name": "alice", "admin": false}));
    let out = admin(&app, &["set-admin", "Alice"], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let me = whoami(&app, &alice.token()).await;
    assert_eq!(me.body, json!({"name": "alice", "admin": true}));

    // The sign-up rules hold here too.
    let out = admin(
        &app,
        &["create-account", "ALICE"],
        "another horse battery\n",
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("looks like"), "{}", stderr(&out));
    let out = admin(&app, &["create-account", "bob"], "password\n").await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("common"), "{}", stderr(&out));
    let out = admin(&app, &["create-account", "bob"], "").await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("standard input"), "{}", stderr(&out));
    let out = admin(&app, &["set-admin", "nobody"], "").await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no account"), "{}", stderr(&out));
}

#[tokio::test]
async fn reset_password_and_disable_sign_the_account_out_everywhere() {
    let app = spawn_app().await;
    let first = sign_up(&app, "alice", PASSWORD).await.token();
    let second = sign_in(&app, "alice", PASSWORD).await.token();
    let bob = sign_up(&app, "bob", PASSWORD).await.token();

    let out = admin(
        &app,
        &["reset-password", "alice"],
        "operator set this one\n",
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(whoami(&app, &first).await.status, 401);
    assert_eq!(whoami(&app, &second).await.status, 401);
    assert_eq!(sign_in(&app, "alice", PASSWORD).await.status, 401);
    let third = sign_in(&app, "alice", "operator set this one").await;
    assert_eq!(third.status, 200);

    let out = admin(&app, &["disable", "alice"], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(whoami(&app, &third.token()).await.status, 401);
    // Cannot sign in, with the same answer as a wrong password.
    let reply = sign_in(&app, "alice", "operator set this one").await;
    assert_eq!((reply.status, reply.error_code()), (401, "bad_credentials"));
    // Its name stays taken; bob is untouched.
    assert_eq!(sign_up(&app, "Alice", PASSWORD).await.status, 409);
    assert_eq!(whoami(&app, &bob).await.status, 200);
}
