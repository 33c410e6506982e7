//! Wire protocol v1: every message a client may send and the server may
//! answer, the error codes, and the limits. This is the only module that knows
//! the JSON shape of a frame; `docs/protocol.md` documents the same thing for people.
//!
//! Decoding is two-step so that a bad request still gets a useful answer: the
//! frame is parsed as a JSON object first (to recover `ref` and tell an
//! unknown `type` from a malformed known one), then into [`ClientMsg`].
//! A well-formed request with only known fields skips the first step (the
//! fast path). Neither path accepts a duplicate key, at any depth: with
//! `{"type":"join","type":"send"}` a filter reading the first key would
//! judge another request than the one a last-key-wins parser runs.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest WebSocket frame/message the server reads; larger ones close the connection with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest `limit` a `history` request may ask for.
pub const HISTORY_LIMIT_MAX: u32 = 200;
/// `limit` of a `history` request that gives none.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
/// Most messages a `join` with `since` returns; beyond it the reply says `truncated`.
pub const SINCE_LIMIT: u32 = 1000;
/// Most bytes of messages (their JSON) a `join` with `since` returns; beyond
/// it the oldest are left out, as past [`SINCE_LIMIT`]. Without it one reply
/// could be 1,000 messages of 16 KB, held in full for a client that does
/// not read, on each of its connections.
pub const SINCE_MAX_BYTES: usize = 1 << 20;
/// How long a send's `nonce` is remembered: a resend within it is answered
/// with the original `sent`; after it, it would be stored as a new message.
/// A day covers a laptop closed overnight on a page that then reconnects.
pub const NONCE_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// WebSocket close codes (RFC 6455 §7.4.1): their one home. Every code the
/// server sends is a constant here, and `docs/protocol.md`'s close-code table
/// lists exactly these (a test checks it); [`close::may_be_received`] says
/// which codes a client's close frame may carry.
pub mod close {
    /// A normal close: the client left, or its connection failed; also the
    /// answer to a client's close frame without a code.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the framing rules (RFC 6455 §5, §7.4.1).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A binary frame: the protocol is JSON text only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Text (or a close reason) that is not UTF-8 (RFC 6455 §8.1).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The client kept breaking rate limits after being told to slow down,
    /// or took longer than `--frame-timeout` to send one message.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame over [`super::MAX_FRAME_BYTES`].
    pub const TOO_BIG: u16 = 1009;
    /// The client could not keep up with its rooms; it may reconnect and resume with `since`.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The client did not answer pings for two intervals (application code).
    pub const PING_TIMEOUT: u16 = 4000;
    /// The account session the connection belongs to was revoked: signed
    /// out, signed out everywhere, a password change, an account disabled
    /// (application code; `identity::sessions`).
    pub const SESSION_REVOKED: u16 = 4001;

    /// Whether a close frame may carry `code` (RFC 6455 §7.4.1 and §7.4.2,
    /// with the codes IANA registered since: 1012–1014). 1004 is reserved,
    /// 1005, 1006 and 1015 only ever describe a close to the application and
    /// must not be sent, 1016–2999 are for future RFCs, 3000–4999 belong to
    /// libraries and applications; anything else is outside the range.
    /// (tungstenite's `CloseCode::is_allowed` leaves 1014 out, hence our own.)
    pub fn may_be_received(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// Codes on both sides of each edge of [`may_be_received`]'s ranges, for
    /// tests of the decoder: the ones a client may send…
    #[cfg(test)]
    pub(crate) const RECEIVABLE_EDGES: [u16; 11] = [
        1000, 1001, 1002, 1003, 1007, 1010, 1011, 1014, 3000, 4000, 4999,
    ];
    /// …and the ones it may not.
    #[cfg(test)]
    pub(crate) const UNRECEIVABLE_EDGES: [u16; 11] = [
        0,
        999,
        1004,
        1005,
        1006,
        1015,
        1016,
        2000,
        2999,
        5000,
        u16::MAX,
    ];
}

/// The client's correlation id for a request, echoed on the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Ref {
    Int(i64),
    Str(String),
}

/// A string or an integer that fits in i64 — nothing else (no floats, no null).
impl<'de> Deserialize<'de> for Ref {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor;
        impl serde::de::Visitor<'_> for RefVisitor {
            type Value = Ref;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Ref, E> {
                Ok(Ref::Int(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Ref, E> {
                i64::try_from(n)
                    .map(Ref::Int)
                    .map_err(|_| E::custom("integer ref out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Ref, E> {
                Ok(Ref::Str(s.to_owned()))
            }
        }
        deserializer.deserialize_any(RefVisitor)
    }
}

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Hello {
        /// Optional on a connection signed in to an account (its own name
        /// is used); a guest must give one.
        #[serde(default)]
        name: Option<String>,
        /// The guest's reclaim token from an earlier `welcome` (named
        /// `session` on the wire since v1; not an account's session).
        #[serde(default)]
        session: Option<String>,
    },
    Join {
        room: String,
        #[serde(default)]
        since: Option<u64>,
    },
    Send {
        room: String,
        text: String,
        /// The client's key for this message: a resend with the same nonce
        /// (same sender, within [`NONCE_WINDOW_MS`]) is answered with the
        /// first one's `sent` and stores nothing.
        #[serde(default)]
        nonce: Option<String>,
    },
    Leave {
        room: String,
    },
    History {
        room: String,
        #[serde(default)]
        before: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
    },
    Rooms,
}

/// Every `type` a client may send, for telling `unknown_type` from `bad_request`.
const CLIENT_TYPES: &[&str] = &["hello", "join", "send", "leave", "history", "rooms"];

/// A decoded request with its correlation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub r#ref: Option<Ref>,
    pub msg: ClientMsg,
}

/// Error codes sent in `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    NoIdentity,
    InvalidName,
    NameTaken,
    InvalidRoom,
    NotMember,
    TooLarge,
    RateLimited,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::NoIdentity,
        ErrorCode::InvalidName,
        ErrorCode::NameTaken,
        ErrorCode::InvalidRoom,
        ErrorCode::NotMember,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::NoIdentity => "no_identity",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::NotMember => "not_member",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A request the server refuses: the code and words for the `error` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub r#ref: Option<Ref>,
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    fn new(r#ref: Option<Ref>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            r#ref,
            code,
            message: message.into(),
        }
    }
}

/// Every field any request has, in one flat struct: well-formed requests
/// (nearly all of them) decode in one pass with borrowed strings, instead of
/// through a JSON tree. Anything this cannot take — a missing or mistyped
/// field, an unknown type, an unknown field, a duplicate key — goes the
/// careful way, which produces the precise error.
///
/// Duplicates cost this path nothing: serde's derive refuses a field seen
/// twice, unknown fields are refused (they could hide a duplicate, at any
/// depth, that ignoring them would not see), and every field is a scalar.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatRequest<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "ref", default)]
    r#ref: Option<Ref>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    session: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    nonce: Option<Cow<'a, str>>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    limit: Option<u32>,
}

fn decode_fast(text: &str) -> Option<Request> {
    // serde would also fill a struct from a JSON array; a request is an object.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let flat: FlatRequest = serde_json::from_str(text).ok()?;
    let owned = |s: Option<Cow<'_, str>>| s.map(Cow::into_owned);
    let msg = match flat.kind.as_ref() {
        "hello" => ClientMsg::Hello {
            name: owned(flat.name),
            session: owned(flat.session),
        },
        "join" => ClientMsg::Join {
            room: owned(flat.room)?,
            since: flat.since,
        },
        "send" => ClientMsg::Send {
            room: owned(flat.room)?,
            text: owned(flat.text)?,
            nonce: owned(flat.nonce),
        },
        "leave" => ClientMsg::Leave {
            room: owned(flat.room)?,
        },
        "history" => ClientMsg::History {
            room: owned(flat.room)?,
            before: flat.before,
            limit: flat.limit,
        },
        "rooms" => ClientMsg::Rooms,
        _ => return None,
    };
    Some(Request {
        r#ref: flat.r#ref,
        msg,
    })
}

/// Parses one text frame into a request.
pub fn decode(text: &str) -> Result<Request, Rejection> {
    if let Some(request) = decode_fast(text) {
        return Ok(request);
    }
    decode_carefully(text)
}

/// The slow path: a JSON tree first, to recover `ref` and tell an unknown
/// `type` from a malformed known one.
fn decode_carefully(text: &str) -> Result<Request, Rejection> {
    let UniqueKeys(value) = serde_json::from_str(text).map_err(|e| {
        // Our own error (a duplicate key) is a data error; the rest are
        // the JSON text's. Which `ref` a duplicate-key frame has is not
        // known, so the reply has none, as for text that is not JSON.
        let message = if e.is_data() {
            e.to_string()
        } else {
            format!("not valid JSON: {e}")
        };
        Rejection::new(None, ErrorCode::BadRequest, message)
    })?;
    let Value::Object(mut object) = value else {
        return Err(Rejection::new(
            None,
            ErrorCode::BadRequest,
            "a frame must be a JSON object",
        ));
    };
    let r#ref = take_ref(&mut object)?;
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind,
        Some(_) => {
            return Err(Rejection::new(
                r#ref,
                ErrorCode::BadRequest,
                "\"type\" must be a string",
            ));
        }
        None => {
            return Err(Rejection::new(
                r#ref,
                ErrorCode::BadRequest,
                "missing \"type\"",
            ));
        }
    };
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        let message = format!("unknown type {:?}", truncate(kind, 40));
        return Err(Rejection::new(r#ref, ErrorCode::UnknownType, message));
    }
    match ClientMsg::deserialize(Value::Object(object)) {
        Ok(msg) => Ok(Request { r#ref, msg }),
        Err(e) => Err(Rejection::new(r#ref, ErrorCode::BadRequest, e.to_string())),
    }
}

/// A JSON value whose objects, at every depth, have distinct keys:
/// serde_json's own `Value` keeps the last of two equal keys silently.
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity: `from` never makes a null here.
        Ok(Value::from(n))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate key {:?}",
                    truncate(&key, 40)
                )));
            }
            let UniqueKeys(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

fn take_ref(object: &mut Map<String, Value>) -> Result<Option<Ref>, Rejection> {
    match object.remove("ref") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Ref::Str(s))),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64().map(Ref::Int)),
        Some(_) => Err(Rejection::new(
            None,
            ErrorCode::BadRequest,
            "\"ref\" must be a string or an integer",
        )),
    }
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A stored chat message as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: String,
    pub id: String,
    pub seq: u64,
    /// The sender's display name.
    pub from: String,
    /// The sender's identity (`domain::AuthorId`), an opaque id stable
    /// across its connections and restarts: two senders with the same `from` and different
    /// `author` are two people. Absent on messages stored before identities were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<u64>,
    pub text: String,
    /// Server time of acceptance, Unix milliseconds.
    pub ts: i64,
}

/// One message serialized once — when it is committed, or read from
/// storage — and reused by its broadcast frame and by every `joined` reply
/// that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedMessage(std::sync::Arc<str>);

/// [`ChatMessage`]'s wire form over borrowed fields: the same JSON, for a
/// server that holds a message in another shape and encodes it without
/// copying it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ChatMessageRef<'a> {
    pub room: &'a str,
    pub id: &'a str,
    pub seq: u64,
    pub from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<u64>,
    pub text: &'a str,
    pub ts: i64,
}

impl EncodedMessage {
    /// Serializes a [`ChatMessage`] or a [`ChatMessageRef`].
    pub fn new<M: Serialize>(message: &M) -> Self {
        Self(
            serde_json::to_string(message)
                .expect("messages always serialize")
                .into(),
        )
    }

    pub fn as_json(&self) -> &str {
        &self.0
    }
}

/// A JSON array of messages serialized ahead of time, so that a large
/// `joined` reply is encoded outside any lock and spliced in as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedMessages(std::sync::Arc<str>);

impl EncodedMessages {
    /// Serializes messages (`ChatMessage`s or references to them).
    pub fn encode<M: Serialize>(messages: &[M]) -> Self {
        Self(
            serde_json::to_string(messages)
                .expect("messages always serialize")
                .into(),
        )
    }

    /// The array of messages serialized one by one before: no message is
    /// serialized again.
    pub fn concat<'a>(messages: impl IntoIterator<Item = &'a EncodedMessage>) -> Self {
        let mut json = String::from("[");
        for (i, message) in messages.into_iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(message.as_json());
        }
        json.push(']');
        Self(json.into())
    }

    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl Serialize for EncodedMessages {
    /// The general path (tests and debugging): the array is checked again.
    /// Replies use [`encode_joined`], which splices the text in unchecked.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.0.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// A room and how many people are in it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub name: String,
    pub online: usize,
}

/// What a client needs to know about this server to follow its rules and
/// show what it sends: in every `welcome` (`server`) and as the body of
/// `GET /api/info`, so that an app keeps no copy of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The name the server's own notices come from (no person may take it).
    pub bot: String,
    /// The rooms that always exist, in the order the server lists them.
    pub default_rooms: Vec<String>,
    /// Longest nickname, in characters (Unicode scalar values, after trimming).
    pub max_name_chars: usize,
    /// Longest room name, in characters.
    pub max_room_chars: usize,
    /// Longest message text, in characters.
    pub max_text_chars: usize,
    /// Messages a `joined` without `since` carries at most: fewer means
    /// the room has no older ones.
    pub history_on_join: u32,
    /// Largest `limit` a `history` request is answered with.
    pub history_max: u32,
    /// Whether people may chat without an account (`--guests`).
    pub guests: bool,
}

/// What a `notice` is about, for clients that treat one kind apart (the
/// browser app shows a room's welcome once however often it rejoins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The bot's greeting to someone who joined a room.
    Welcome,
    /// The room was removed; a `left` for it follows.
    RoomRemoved,
}

/// The single change a presence frame carries, when it carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    Join,
    Leave,
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Welcome {
        name: String,
        /// The guest's reclaim token for the name (see `Hello::session`);
        /// empty for an account, which the session cookie identifies.
        session: String,
        /// Signed in to an account; absent for a guest.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        account: bool,
        /// The identity's author id, as in its messages' `author`.
        author: u64,
        protocol: u32,
        rooms: Vec<RoomInfo>,
        /// The server's names and limits.
        server: ServerInfo,
    },
    Joined {
        room: String,
        users: Vec<String>,
        messages: EncodedMessages,
        last_seq: u64,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    Notice {
        room: String,
        text: String,
        ts: i64,
        /// What the notice is about: recognise a notice by this, never by
        /// its text (which operators configure).
        kind: NoticeKind,
    },
    /// Who arrived in and who left a room since its previous presence frame
    /// (the net change; `joined` carried the full list). Clients apply
    /// `left`, then `joined`.
    Presence {
        room: String,
        joined: Vec<String>,
        left: Vec<String>,
        /// With `user`, set when the frame carries a single change: the
        /// form presence frames had before they were coalesced.
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<PresenceEvent>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    Sent {
        room: String,
        id: String,
        seq: u64,
        ts: i64,
    },
    Message(ChatMessage),
    Left {
        room: String,
    },
    History {
        room: String,
        messages: Vec<ChatMessage>,
    },
    Rooms {
        rooms: Vec<RoomInfo>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerMsg {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMsg::Error {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

#[derive(Serialize)]
struct WithRef<'a> {
    #[serde(flatten)]
    msg: &'a ServerMsg,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    r#ref: Option<&'a Ref>,
}

/// Serializes a server message, with the `ref` of the request it answers.
pub fn encode(msg: &ServerMsg, r#ref: Option<&Ref>) -> String {
    // Serializing these types cannot fail: every map key is a string.
    serde_json::to_string(&WithRef { msg, r#ref }).expect("server messages always serialize")
}

/// `encode(&ServerMsg::Joined { .. }, ref)`, byte for byte, with the
/// messages spliced in as they are: a join in a busy room copies its catch-up
/// instead of serializing it again (the tests compare both ways).
pub fn encode_joined(
    room: &str,
    users: &[String],
    messages: &EncodedMessages,
    last_seq: u64,
    truncated: bool,
    r#ref: Option<&Ref>,
) -> String {
    let mut out = String::with_capacity(96 + messages.as_json().len());
    out.push_str(r#"{"type":"joined","room":"#);
    out.push_str(&json(room));
    out.push_str(r#","users":"#);
    out.push_str(&json(users));
    out.push_str(r#","messages":"#);
    out.push_str(messages.as_json());
    out.push_str(r#","last_seq":"#);
    out.push_str(&last_seq.to_string());
    if truncated {
        out.push_str(r#","truncated":true"#);
    }
    if let Some(r#ref) = r#ref {
        out.push_str(r#","ref":"#);
        out.push_str(&json(r#ref));
    }
    out.push('}');
    out
}

/// `encode(&ServerMsg::Message(message), None)`, byte for byte, from the
/// message serialized once: the same object with the type first.
pub fn encode_message(message: &EncodedMessage) -> String {
    let fields = message
        .as_json()
        .strip_prefix('{')
        .expect("a message serializes as an object");
    let mut out = String::with_capacity(16 + fields.len());
    out.push_str(r#"{"type":"message","#);
    out.push_str(fields);
    out
}

/// JSON of plain data (strings, lists of strings, refs), which cannot fail.
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The `close` module's constants as written in this file: name, code,
    /// and whether a doc comment precedes it.
    fn close_constants() -> Vec<(String, u16, bool)> {
        let source = include_str!("protocol.rs");
        let start = source.find("\npub mod close {").expect("the close module");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("its end")];
        let mut constants = Vec::new();
        let mut documented = false;
        for line in body.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("pub const ")
                && let Some((name, value)) = rest.split_once(": u16 = ")
            {
                let code = value.trim_end_matches(';').parse().expect("a u16");
                constants.push((name.to_owned(), code, documented));
            }
            documented = line.starts_with("///");
        }
        constants
    }

    /// The codes in the first column of `docs/protocol.md`'s close-code table.
    fn documented_close_codes() -> Vec<u16> {
        let doc = include_str!("../docs/protocol.md");
        let section = &doc[doc
            .find("\n## Close codes\n")
            .expect("the close-code section")..];
        let section = &section[1..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        section
            .lines()
            .filter_map(|line| line.strip_prefix('|')?.split('|').next())
            .filter_map(|cell| cell.trim().parse().ok())
            .collect()
    }

    #[test]
    fn the_close_code_table_lists_every_close_code_and_nothing_else() {
        let constants = close_constants();
        assert!(constants.len() >= 9, "{constants:?}");
        for (name, code, documented) in &constants {
            assert!(documented, "close::{name} ({code}) has no doc comment");
        }
        let mut defined: Vec<u16> = constants.iter().map(|c| c.1).collect();
        defined.sort_unstable();
        let mut documented = documented_close_codes();
        documented.sort_unstable();
        assert_eq!(
            defined, documented,
            "protocol::close and docs/protocol.md's close-code table differ"
        );
    }

    #[test]
    fn a_client_may_close_with_the_codes_the_rfc_and_iana_allow() {
        for code in close::RECEIVABLE_EDGES {
            assert!(close::may_be_received(code), "{code}");
        }
        for code in close::UNRECEIVABLE_EDGES {
            assert!(!close::may_be_received(code), "{code}");
        }
    }

    fn code_of(text: &str) -> ErrorCode {
        decode(text).unwrap_err().code
    }

    #[test]
    fn decodes_every_request() {
        let r = decode(r#"{"type":"hello","name":"alice","ref":7}"#).unwrap();
        assert_eq!(r.r#ref, Some(Ref::Int(7)));
        assert_eq!(
            r.msg,
            ClientMsg::Hello {
                name: Some("alice".into()),
                session: None
            }
        );
        let r = decode(r#"{"type":"join","room":"Chat Room","since":41,"ref":"a"}"#).unwrap();
        assert_eq!(r.r#ref, Some(Ref::Str("a".into())));
        assert_eq!(
            r.msg,
            ClientMsg::Join {
                room: "Chat Room".into(),
                since: Some(41)
            }
        );
        assert!(matches!(
            decode(r#"{"type":"send","room":"r","text":"hi"}"#)
                .unwrap()
                .msg,
            ClientMsg::Send { .. }
        ));
        assert!(matches!(
            decode(r#"{"type":"leave","room":"r"}"#).unwrap().msg,
            ClientMsg::Leave { .. }
        ));
        assert!(matches!(
            decode(r#"{"type":"history","room":"r","before":5,"limit":10}"#)
                .unwrap()
                .msg,
            ClientMsg::History {
                before: Some(5),
                limit: Some(10),
                ..
            }
        ));
        assert_eq!(decode(r#"{"type":"rooms"}"#).unwrap().msg, ClientMsg::Rooms);
    }

    #[test]
    fn the_fast_path_agrees_with_the_careful_one() {
        for frame in [
            r#"{"type":"hello","name":"alice","session":"t","ref":1}"#,
            r#"{"type":"hello","name":"al\u0069ce","session":null}"#,
            r#"{"type":"join","room":"Chat Room","since":41,"ref":"a"}"#,
            r#"{"type":"join","room":"r","since":null}"#,
            r#"{"type":"send","room":"r","text":"line\nbreak \"quoted\""}"#,
            r#"{"type":"send","room":"r","text":"hi","nonce":"0192f1c2-7a3b","ref":3}"#,
            r#"{"type":"send","room":"r","text":"hi","nonce":null}"#,
            r#"{"type":"leave","room":"r","ref":-5}"#,
            r#"{"type":"history","room":"r","before":9,"limit":3}"#,
            r#"{"ref":"x","type":"rooms"}"#,
        ] {
            let fast = decode_fast(frame).unwrap_or_else(|| panic!("fast path refused {frame}"));
            assert_eq!(Ok(fast), decode_carefully(frame), "{frame}");
        }
        // What the fast path leaves to the careful one.
        for frame in [
            r#"{"type":"send","room":"r","text":5}"#,
            r#"{"type":"send","room":"r","text":"hi","nonce":7}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"rooms","ref":1.5}"#,
            r#"{"type":"rooms","ref":9223372036854775808}"#,
            r#"{"type":"rooms","type":"rooms"}"#,
            r#"{"type":"send","room":"r","text":"hi","extra":[1,2]}"#,
            "[]",
            r#"["rooms", 1]"#,
        ] {
            assert!(decode_fast(frame).is_none(), "{frame}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        assert!(decode(r#"{"type":"rooms","extra":{"x":1}}"#).is_ok());
        assert_eq!(
            decode(r#"{"type":"send","room":"r","text":"hi","extra":[1,{"y":2}],"ref":3}"#),
            Ok(Request {
                r#ref: Some(Ref::Int(3)),
                msg: ClientMsg::Send {
                    room: "r".into(),
                    text: "hi".into(),
                    nonce: None,
                }
            })
        );
    }

    #[test]
    fn a_duplicate_key_anywhere_is_a_bad_request() {
        for frame in [
            // The attack: a filter reading the first `type` sees a join.
            r#"{"type":"join","type":"send","room":"r","text":"hi"}"#,
            r#"{"type":"send","room":"a","room":"b","text":"hi"}"#,
            r#"{"type":"send","room":"r","text":"a","text":"b"}"#,
            r#"{"type":"rooms","ref":1,"ref":2}"#,
            r#"{"type":"hello","name":"a","session":"x","session":"y"}"#,
            r#"{"type":"rooms","extra":1,"extra":2}"#,
            r#"{"type":"rooms","extra":{"a":1,"a":2}}"#,
            r#"{"type":"rooms","extra":[{"a":1,"b":{"c":1,"c":1}}]}"#,
            r#"{"type":"join","room":{"x":1,"x":1}}"#,
            r#"{"type":"dance","type":"dance"}"#,
            // Equal after unescaping.
            r#"{"type":"rooms","typ\u0065":"send"}"#,
        ] {
            assert!(decode_fast(frame).is_none(), "{frame}");
            let rejection = decode(frame).expect_err(frame);
            assert_eq!(rejection.code, ErrorCode::BadRequest, "{frame}");
            assert!(rejection.message.contains("duplicate key"), "{rejection:?}");
        }
        // Equal keys in different objects are not duplicates.
        assert!(decode(r#"{"type":"rooms","a":{"type":1},"b":[{"a":1},{"a":2}]}"#).is_ok());
    }

    #[test]
    fn malformed_frames_are_bad_requests() {
        assert_eq!(code_of("not json"), ErrorCode::BadRequest);
        assert_eq!(code_of("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"name":"x"}"#), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"type":5}"#), ErrorCode::BadRequest);
        // A hello without a name decodes: an account's connection may say it
        // (the handler refuses it from a guest).
        assert!(decode(r#"{"type":"hello"}"#).is_ok());
        assert_eq!(
            code_of(r#"{"type":"join","room":7}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"type":"join","room":"r","since":-1}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"type":"rooms","ref":1.5}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"type":"send","room":"r","text":"hi","nonce":["n"]}"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn a_send_carries_its_nonce_on_both_paths() {
        let nonce = Some("abc-1".to_owned());
        let fast = decode(r#"{"type":"send","room":"r","text":"hi","nonce":"abc-1"}"#).unwrap();
        assert_eq!(
            fast.msg,
            ClientMsg::Send {
                room: "r".into(),
                text: "hi".into(),
                nonce: nonce.clone()
            }
        );
        let careful =
            decode_carefully(r#"{"type":"send","room":"r","text":"hi","nonce":"abc-1"}"#).unwrap();
        assert_eq!(careful.msg, fast.msg);
    }

    #[test]
    fn a_bad_request_keeps_its_ref() {
        let err = decode(r#"{"type":"send","ref":"r1"}"#).unwrap_err();
        assert_eq!(err.r#ref, Some(Ref::Str("r1".into())));
        let err = decode(r#"{"type":"dance","ref":9}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownType);
        assert_eq!(err.r#ref, Some(Ref::Int(9)));
    }

    #[test]
    fn encodes_with_type_fields_and_ref() {
        let msg = ServerMsg::Sent {
            room: "r".into(),
            id: "i".into(),
            seq: 3,
            ts: 10,
        };
        let v: Value = serde_json::from_str(&encode(&msg, Some(&Ref::Int(4)))).unwrap();
        assert_eq!(
            v,
            json!({"type":"sent","room":"r","id":"i","seq":3,"ts":10,"ref":4})
        );
        let v: Value = serde_json::from_str(&encode(&msg, None)).unwrap();
        assert!(v.get("ref").is_none());
    }

    #[test]
    fn notices_say_what_they_are_about_and_welcome_carries_the_server_facts() {
        let notice = ServerMsg::Notice {
            room: "r".into(),
            text: "Hi!".into(),
            ts: 10,
            kind: NoticeKind::Welcome,
        };
        let v: Value = serde_json::from_str(&encode(&notice, None)).unwrap();
        assert_eq!(
            v,
            json!({"type":"notice","room":"r","text":"Hi!","ts":10,"kind":"welcome"})
        );
        let welcome = ServerMsg::Welcome {
            name: "alice".into(),
            session: "t".into(),
            account: false,
            author: 7,
            protocol: PROTOCOL_VERSION,
            rooms: vec![],
            server: ServerInfo {
                bot: "Bot".into(),
                default_rooms: vec!["Lobby".into()],
                max_name_chars: 1,
                max_room_chars: 2,
                max_text_chars: 3,
                history_on_join: 4,
                history_max: 5,
                guests: true,
            },
        };
        let v: Value = serde_json::from_str(&encode(&welcome, Some(&Ref::Int(1)))).unwrap();
        assert_eq!(
            v["server"],
            json!({"bot":"Bot","default_rooms":["Lobby"],"max_name_chars":1,"max_room_chars":2,
                   "max_text_chars":3,"history_on_join":4,"history_max":5,"guests":true})
        );
    }

    #[test]
    fn encodes_a_message_flat() {
        let msg = ServerMsg::Message(ChatMessage {
            room: "r".into(),
            id: "i".into(),
            seq: 1,
            from: "alice".into(),
            author: Some(9),
            text: "hi".into(),
            ts: 5,
        });
        let v: Value = serde_json::from_str(&encode(&msg, None)).unwrap();
        assert_eq!(
            v,
            json!({"type":"message","room":"r","id":"i","seq":1,"from":"alice","author":9,"text":"hi","ts":5})
        );
    }

    #[test]
    fn a_borrowed_message_encodes_as_the_owned_one() {
        for author in [Some(7), None] {
            let owned = ChatMessage {
                author,
                ..chat(3, "hé \"there\"")
            };
            let borrowed = ChatMessageRef {
                room: &owned.room,
                id: &owned.id,
                seq: owned.seq,
                from: &owned.from,
                author: owned.author,
                text: &owned.text,
                ts: owned.ts,
            };
            assert_eq!(EncodedMessage::new(&borrowed), EncodedMessage::new(&owned));
        }
    }

    fn chat(seq: u64, text: &str) -> ChatMessage {
        ChatMessage {
            room: "Chat \"Room\"".into(),
            id: format!("id-{seq}"),
            seq,
            from: "ünï".into(),
            author: seq.is_multiple_of(2).then_some(1 << 52),
            text: text.into(),
            ts: 1_700_000_000_000,
        }
    }

    #[test]
    fn spliced_replies_match_what_serde_writes() {
        let messages = [chat(1, "plain"), chat(2, "quote \" back\\ <b>\n\u{1}")];
        let pieces: Vec<EncodedMessage> = messages.iter().map(EncodedMessage::new).collect();
        let spliced = EncodedMessages::concat(&pieces);
        assert_eq!(spliced, EncodedMessages::encode(&messages));
        assert_eq!(
            EncodedMessages::concat(&[]),
            EncodedMessages::encode::<ChatMessage>(&[])
        );
        let users = vec!["alice".to_owned(), "b\"ob".to_owned()];
        for (truncated, r#ref) in [
            (false, None),
            (true, Some(Ref::Int(7))),
            (false, Some(Ref::Str("a\"b".into()))),
        ] {
            let by_serde = encode(
                &ServerMsg::Joined {
                    room: "Chat \"Room\"".into(),
                    users: users.clone(),
                    messages: spliced.clone(),
                    last_seq: 42,
                    truncated,
                },
                r#ref.as_ref(),
            );
            let spliced_reply = encode_joined(
                "Chat \"Room\"",
                &users,
                &spliced,
                42,
                truncated,
                r#ref.as_ref(),
            );
            assert_eq!(spliced_reply, by_serde);
        }
        for (message, piece) in messages.iter().zip(&pieces) {
            assert_eq!(
                encode_message(piece),
                encode(&ServerMsg::Message(message.clone()), None)
            );
        }
    }

    #[test]
    fn joined_omits_truncated_unless_set() {
        let mut msg = ServerMsg::Joined {
            room: "r".into(),
            users: vec![],
            messages: EncodedMessages::encode::<ChatMessage>(&[]),
            last_seq: 0,
            truncated: false,
        };
        assert!(!encode(&msg, None).contains("truncated"));
        if let ServerMsg::Joined { truncated, .. } = &mut msg {
            *truncated = true;
        }
        assert!(encode(&msg, None).contains(r#""truncated":true"#));
    }

    #[test]
    fn error_codes_serialize_as_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                Value::String(code.as_str().into())
            );
        }
    }

    /// The fuzz harness of the request decoder (see `conn::wire`'s for the
    /// frames). `cargo test` runs a few hundred cases; `scripts/fuzz` a
    /// million (`PROPTEST_CASES`).
    mod fuzz {
        use proptest::prelude::*;
        use proptest::sample::Index;

        use super::*;

        fn config() -> ProptestConfig {
            ProptestConfig {
                // Failures print the shrunk input; no regression files.
                failure_persistence: None,
                // `cases` comes from PROPTEST_CASES (256 when unset).
                ..ProptestConfig::default()
            }
        }

        /// A JSON document as written, keys kept in order, duplicates
        /// allowed: what a hostile client can put in a frame.
        #[derive(Debug, Clone)]
        enum Doc {
            /// A scalar, already JSON text.
            Scalar(String),
            Array(Vec<Doc>),
            /// Each key as the client spelled it (maybe with escapes) and
            /// as it reads once unescaped.
            Object(Vec<(String, String, Doc)>),
        }

        impl Doc {
            fn render(&self, out: &mut String) {
                match self {
                    Doc::Scalar(text) => out.push_str(text),
                    Doc::Array(items) => {
                        out.push('[');
                        for (i, item) in items.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            item.render(out);
                        }
                        out.push(']');
                    }
                    Doc::Object(fields) => {
                        out.push('{');
                        for (i, (spelled, _, value)) in fields.iter().enumerate() {
                            if i > 0 {
                                out.push_str(", ");
                            }
                            out.push_str(spelled);
                            out.push(':');
                            value.render(out);
                        }
                        out.push('}');
                    }
                }
            }

            fn has_duplicate_key(&self) -> bool {
                match self {
                    Doc::Scalar(_) => false,
                    Doc::Array(items) => items.iter().any(Doc::has_duplicate_key),
                    Doc::Object(fields) => {
                        let mut keys: Vec<&str> =
                            fields.iter().map(|(_, k, _)| k.as_str()).collect();
                        keys.sort_unstable();
                        let distinct = keys.len();
                        keys.dedup();
                        keys.len() != distinct
                            || fields.iter().any(|(_, _, v)| v.has_duplicate_key())
                    }
                }
            }
        }

        /// Up to `max` characters of any kind (cheaper to generate than a
        /// regex strategy: a million inputs are run).
        fn text(max: usize) -> impl Strategy<Value = String> {
            prop::collection::vec(any::<char>(), 0..=max).prop_map(String::from_iter)
        }

        fn key() -> impl Strategy<Value = (String, String)> {
            prop_oneof![
                8 => prop::sample::select(vec![
                    "type", "ref", "room", "text", "name", "session", "since", "before", "limit",
                    "extra",
                ])
                .prop_map(|k| (json(k), k.to_owned())),
                // The same key spelled with an escape.
                1 => Just(("\"typ\\u0065\"".to_owned(), "type".to_owned())),
                1 => prop::collection::vec(prop::char::range('a', 'c'), 0..3)
                    .prop_map(String::from_iter)
                    .prop_map(|k| (json(&k), k)),
            ]
        }

        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => prop::sample::select(vec![
                    "hello", "join", "send", "leave", "history", "rooms", "dance", "Chat Room", "",
                ])
                .prop_map(json),
                2 => text(12).prop_map(|s| json(&s)),
                1 => any::<i64>().prop_map(|n| n.to_string()),
                1 => any::<u64>().prop_map(|n| n.to_string()),
                1 => any::<f64>().prop_map(|f| json(&f)),
                1 => prop::sample::select(vec!["null", "true", "false", "-0", "1e400", "01"])
                    .prop_map(str::to_owned),
            ]
        }

        fn doc() -> impl Strategy<Value = Doc> {
            scalar()
                .prop_map(Doc::Scalar)
                .prop_recursive(3, 24, 6, |inner| {
                    prop_oneof![
                        prop::collection::vec(inner.clone(), 0..4).prop_map(Doc::Array),
                        prop::collection::vec((key(), inner), 0..7).prop_map(|fields| {
                            Doc::Object(fields.into_iter().map(|((s, k), v)| (s, k, v)).collect())
                        }),
                    ]
                })
        }

        /// A well-formed request (the fields its type needs, as strings)
        /// with more fields mixed in: any key, any value, often one of them
        /// a second time.
        fn request() -> impl Strategy<Value = Doc> {
            (
                prop::sample::select(CLIENT_TYPES.to_vec()),
                prop::collection::vec((any::<Index>(), key(), doc()), 0..4),
                prop::option::of((any::<Index>(), any::<Index>(), doc())),
            )
                .prop_map(|(kind, mut extra, again)| {
                    if let Some((which, at, value)) = again
                        && !extra.is_empty()
                    {
                        let (_, key, _) = extra[which.index(extra.len())].clone();
                        extra.push((at, key, value));
                    }
                    let field = |k: &str, v: &str| (json(k), k.to_owned(), Doc::Scalar(json(v)));
                    let mut fields = vec![field("type", kind)];
                    match kind {
                        "hello" => fields.push(field("name", "alice")),
                        "send" => fields.extend([field("room", "r"), field("text", "hi")]),
                        "rooms" => {}
                        _ => fields.push(field("room", "r")),
                    }
                    for (at, (spelled, key), value) in extra {
                        fields.insert(at.index(fields.len() + 1), (spelled, key, value));
                    }
                    Doc::Object(fields)
                })
        }

        /// Frame text: documents, then sometimes a few characters inserted
        /// or removed (broken JSON), or any string at all.
        fn frame_text() -> impl Strategy<Value = (String, Option<Doc>)> {
            let edited = (
                prop_oneof![request(), doc()],
                prop::collection::vec((any::<Index>(), prop::option::of(any::<char>())), 0..3),
            )
                .prop_map(|(doc, edits)| {
                    let mut text = String::new();
                    doc.render(&mut text);
                    if edits.is_empty() {
                        return (text, Some(doc));
                    }
                    let mut chars: Vec<char> = text.chars().collect();
                    for (at, edit) in edits {
                        let i = at.index(chars.len() + 1);
                        match edit {
                            Some(c) => chars.insert(i, c),
                            None if i < chars.len() => {
                                chars.remove(i);
                            }
                            None => {}
                        }
                    }
                    (chars.into_iter().collect(), None)
                });
            prop_oneof![
                8 => edited,
                1 => text(60).prop_map(|s| (s, None)),
            ]
        }

        proptest! {
            #![proptest_config(config())]

            /// Any text: no panic; the fast path never answers otherwise
            /// than the careful one would; a duplicate key anywhere is a
            /// bad_request on both.
            #[test]
            fn fuzz_request_decoder((text, doc) in frame_text()) {
                let decoded = decode(&text);
                prop_assert_eq!(&decoded, &decode_carefully(&text));
                if let Some(fast) = decode_fast(&text) {
                    prop_assert_eq!(&decoded, &Ok(fast));
                }
                if doc.is_some_and(|doc| doc.has_duplicate_key()) {
                    prop_assert!(decode_fast(&text).is_none());
                    let rejection = decoded.expect_err("a duplicate key is refused");
                    prop_assert_eq!(rejection.code, ErrorCode::BadRequest);
                }
            }
        }
    }
}
