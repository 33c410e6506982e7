//! Property tests, our fuzz harness (cargo-fuzz needs nightly).
//!
//! Two layers. The decoder and the domain parsers are checked in-process
//! against the rules of `docs/protocol.md`, thousands of cases each. Then
//! random scripts of requests from a few clients run against a fresh server
//! over real WebSockets, next to a model of what the server should do: every
//! reply and every frame each client receives is predicted and compared, and
//! after the script the stored history must be exactly what was acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::time::Duration;

use chatterpro::domain::{InputError, MessageText, Nickname, RoomName};
use chatterpro::protocol::{ClientMsg, ErrorCode, Ref, close, decode};
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Client, TestApp, spawn_app_with, unlimited};

/// Cases for the cheap in-process properties (PROPTEST_CASES may raise it).
fn cheap_cases() -> u32 {
    env_cases().map_or(2000, |n| n.max(2000))
}

/// Cases for the server scripts: each starts a server (PROPTEST_CASES overrides).
fn script_cases() -> u32 {
    env_cases().unwrap_or(24)
}

fn env_cases() -> Option<u32> {
    std::env::var("PROPTEST_CASES").ok()?.parse().ok()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures print the shrunk input; no regression files in the tree.
        failure_persistence: None,
        max_shrink_iters: 400,
        ..ProptestConfig::default()
    }
}

// ===========================================================================
// Part 1: the decoder and the domain parsers, in-process.

const KNOWN_TYPES: [&str; 6] = ["hello", "join", "send", "leave", "history", "rooms"];

/// Any JSON value, a few levels deep.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Mostly a string, sometimes anything.
fn stringish() -> impl Strategy<Value = Value> {
    prop_oneof![3 => ".{0,10}".prop_map(Value::from), 1 => arb_json()]
}

/// Mostly a small unsigned integer, sometimes a big one, sometimes anything.
fn numberish() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => any::<u32>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => arb_json(),
    ]
}

/// A JSON object shaped like a request: a `type` from the known ones or
/// not, a `ref` of any kind, the request fields with values of any type.
fn arb_frame_object() -> impl Strategy<Value = Map<String, Value>> {
    let kind = prop_oneof![
        4 => prop::sample::select(KNOWN_TYPES.to_vec()).prop_map(|t| Some(Value::from(t))),
        1 => "[a-z_]{0,8}".prop_map(|t| Some(Value::from(t))),
        1 => arb_json().prop_map(Some),
        1 => Just(None),
    ];
    let r#ref = prop_oneof![
        2 => Just(None),
        1 => Just(Some(Value::Null)),
        2 => any::<i64>().prop_map(|n| Some(Value::from(n))),
        1 => any::<u64>().prop_map(|n| Some(Value::from(n))),
        2 => ".{0,6}".prop_map(|s| Some(Value::from(s))),
        1 => arb_json().prop_map(Some),
    ];
    let strings = (
        prop::option::of(stringish()),
        prop::option::of(stringish()),
        prop::option::of(stringish()),
        prop::option::of(stringish()),
    );
    let numbers = (
        prop::option::of(numberish()),
        prop::option::of(numberish()),
        prop::option::of(numberish()),
    );
    let extra = prop::collection::btree_map("[a-z]{1,6}", arb_json(), 0..3);
    (kind, r#ref, strings, numbers, extra).prop_map(
        |(kind, r#ref, (name, session, room, text), (since, before, limit), extra)| {
            let mut object: Map<String, Value> = extra.into_iter().collect();
            let fields = [
                ("type", kind),
                ("ref", r#ref),
                ("name", name),
                ("session", session),
                ("room", room),
                ("text", text),
                ("since", since),
                ("before", before),
                ("limit", limit),
            ];
            for (key, value) in fields {
                if let Some(value) = value {
                    object.insert(key.to_owned(), value);
                }
            }
            object
        },
    )
}

/// Text that is nearly a request: a request object, cut or spliced.
fn almost_json() -> impl Strategy<Value = String> {
    (arb_frame_object(), any::<prop::sample::Index>(), ".{0,3}").prop_map(|(object, at, junk)| {
        let text = Value::Object(object).to_string();
        let cut = at.index(text.len() + 1);
        let cut = (0..=cut)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}{junk}", &text[..cut])
    })
}

/// The `ref` the reply must carry, or `Err` when the `ref` itself is invalid.
fn expected_ref(object: &Map<String, Value>) -> Result<Option<Ref>, ()> {
    match object.get("ref") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Ref::Str(s.clone()))),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64().map(Ref::Int)),
        Some(_) => Err(()),
    }
}

/// What a request object of a known type decodes to, by the documented
/// field types; `None` when a field is missing or mistyped.
fn expected_msg(kind: &str, object: &Map<String, Value>) -> Option<ClientMsg> {
    let string = |key: &str| match object.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    // Optional fields: absent or null is None; the wrong type is an error.
    let opt_string = |key: &str| match object.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s.clone())),
        Some(_) => None,
    };
    let opt_u64 = |key: &str| match object.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(Value::Number(n)) => n.as_u64().map(Some),
        Some(_) => None,
    };
    let opt_u32 = |key: &str| match opt_u64(key)? {
        None => Some(None),
        Some(n) => u32::try_from(n).ok().map(Some),
    };
    Some(match kind {
        "hello" => ClientMsg::Hello {
            name: opt_string("name")?,
            session: opt_string("session")?,
        },
        "join" => ClientMsg::Join {
            room: string("room")?,
            since: opt_u64("since")?,
        },
        "send" => ClientMsg::Send {
            room: string("room")?,
            text: string("text")?,
            nonce: opt_string("nonce")?,
        },
        "leave" => ClientMsg::Leave {
            room: string("room")?,
        },
        "history" => ClientMsg::History {
            room: string("room")?,
            before: opt_u64("before")?,
            limit: opt_u32("limit")?,
        },
        "rooms" => ClientMsg::Rooms,
        _ => return None,
    })
}

/// Checks the decoder's answer for one frame against the documented rules.
fn check_decode(text: &str) -> Result<(), TestCaseError> {
    let result = decode(text);
    // A refusal from the decoder is always one of these two, with words.
    if let Err(rejection) = &result {
        prop_assert!(
            matches!(
                rejection.code,
                ErrorCode::BadRequest | ErrorCode::UnknownType
            ),
            "decoder refused with {:?}",
            rejection.code
        );
        prop_assert!(!rejection.message.is_empty());
    }
    let object = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => object,
        // Not JSON, or JSON but not an object: bad_request, no ref to echo.
        _ => {
            let rejection = result.expect_err("only objects decode");
            prop_assert_eq!(rejection.code, ErrorCode::BadRequest);
            prop_assert_eq!(rejection.r#ref, None);
            return Ok(());
        }
    };
    let Ok(r#ref) = expected_ref(&object) else {
        let rejection = result.expect_err("an invalid ref is refused");
        prop_assert_eq!(rejection.code, ErrorCode::BadRequest);
        prop_assert_eq!(rejection.r#ref, None);
        return Ok(());
    };
    let got_ref = match &result {
        Ok(request) => &request.r#ref,
        Err(rejection) => &rejection.r#ref,
    };
    prop_assert_eq!(got_ref, &r#ref, "the ref was not kept");
    match object.get("type") {
        Some(Value::String(kind)) if KNOWN_TYPES.contains(&kind.as_str()) => {
            match (expected_msg(kind, &object), result) {
                (Some(expected), Ok(request)) => prop_assert_eq!(request.msg, expected),
                (None, Err(rejection)) => prop_assert_eq!(rejection.code, ErrorCode::BadRequest),
                (expected, got) => {
                    prop_assert!(false, "expected {expected:?}, decoded {got:?}")
                }
            }
        }
        Some(Value::String(_)) => {
            prop_assert_eq!(result.map_err(|r| r.code), Err(ErrorCode::UnknownType));
        }
        // No type, or a type that is not a string.
        _ => prop_assert_eq!(result.map_err(|r| r.code), Err(ErrorCode::BadRequest)),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(cheap_cases()))]

    #[test]
    fn decode_survives_any_string(text in any::<String>()) {
        check_decode(&text)?;
    }

    #[test]
    fn decode_survives_nearly_json(text in almost_json()) {
        check_decode(&text)?;
    }

    #[test]
    fn decode_survives_any_json_value(value in arb_json()) {
        check_decode(&value.to_string())?;
    }

    #[test]
    fn decode_follows_the_documented_shapes(object in arb_frame_object()) {
        check_decode(&Value::Object(object).to_string())?;
    }
}

// --- domain parsers -------------------------------------------------------

/// Characters that make names and texts interesting: whitespace of several
/// kinds (U+0085 is both whitespace and a control), controls, non-ASCII.
const TRICKY_CHARS: &[char] = &[
    ' ', '\t', '\n', '\r', '\u{0}', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{a0}', '\u{ad}',
    '\u{200b}', '\u{200d}', '\u{202e}', '\u{2028}', '\u{2066}', '\u{3000}', '\u{3164}', '\u{feff}',
    'a', 'Z', '-', 'é', 'ß', 'İ', '日', '😀',
];

/// The invisible and direction-changing characters the protocol names as
/// refused in names: zero-width spaces and joiners, bidi controls, the BOM.
fn documented_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}'
            | '\u{2060}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{061C}'
            | '\u{FEFF}'
    )
}

/// Characters a name may certainly contain: plainly visible ones (and the space).
fn plainly_visible(c: char) -> bool {
    c.is_ascii_graphic() || c == ' ' || "éßİ日😀".contains(c)
}

fn tricky_string(max_len: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TRICKY_CHARS), 0..max_len)
        .prop_map(|chars| chars.into_iter().collect())
}

fn whitespace_pad() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![' ', '\t', '\n', '\u{3000}']),
        0..3,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// Strings of about `limit` characters (one to two either side), padded.
fn near_limit(limit: usize) -> impl Strategy<Value = String> {
    (
        limit - 2..=limit + 2,
        prop::sample::select(vec!['a', 'é', '日', '😀']),
        whitespace_pad(),
        whitespace_pad(),
    )
        .prop_map(|(n, c, pre, post)| format!("{pre}{}{post}", c.to_string().repeat(n)))
}

/// The bot's name in random letter case, maybe padded.
fn bot_name_variant() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(any::<bool>(), 14),
        whitespace_pad(),
        whitespace_pad(),
    )
        .prop_map(|(upper, pre, post)| {
            let name: String = chatterpro::domain::BOT_NAME
                .chars()
                .zip(upper)
                .map(|(c, up)| {
                    if up {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect();
            format!("{pre}{name}{post}")
        })
}

fn label_input(limit: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        tricky_string(12),
        near_limit(limit),
        bot_name_variant(),
    ]
}

/// Checks one label parse (nickname or room name) against the documented
/// rules: 1..=`max` characters after trimming, in NFC, with runs of spaces
/// made one; no control characters, no invisible, blank-looking or
/// direction-changing characters, and for nicknames not the bot's name in
/// any case. What is accepted is that normal form and breaks no rule; a
/// name of plainly visible characters within the limits is accepted; a
/// refusal names a rule the input breaks. (Which other unusual characters
/// count as invisible, and which names look like the bot's, is the server's
/// call.)
fn check_label(
    raw: &str,
    parsed: Result<&str, InputError>,
    max: usize,
    reserved: Option<&str>,
) -> Result<(), TestCaseError> {
    use unicode_normalization::UnicodeNormalization;
    let trimmed = raw.trim();
    let mut normal = String::new();
    for c in trimmed.nfc() {
        if !(c == ' ' && normal.ends_with(' ')) {
            normal.push(c);
        }
    }
    let chars = normal.chars().count();
    let in_bounds = (1..=max).contains(&chars);
    let forbidden = trimmed
        .chars()
        .any(|c| c.is_control() || documented_invisible(c));
    let visible = trimmed.chars().all(plainly_visible);
    let is_reserved = reserved.is_some_and(|r| normal.to_lowercase() == r.to_lowercase());
    match parsed {
        Ok(value) => {
            prop_assert!(in_bounds && !forbidden && !is_reserved, "accepted {raw:?}");
            prop_assert_eq!(value, normal.as_str());
            prop_assert!(!value.starts_with(char::is_whitespace));
            prop_assert!(!value.ends_with(char::is_whitespace));
        }
        Err(e) => {
            prop_assert!(
                !(in_bounds && visible && !is_reserved),
                "refused {raw:?} with {e:?}"
            );
            let broken = match e {
                InputError::Empty => chars == 0,
                InputError::TooLong(n) => n == max && chars > max,
                InputError::ControlCharacter | InputError::Invisible => !visible,
                InputError::Reserved => reserved.is_some(),
            };
            prop_assert!(broken, "{raw:?} refused with {e:?}, a rule it keeps");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(cheap_cases()))]

    #[test]
    fn nickname_parse_follows_the_rules(raw in label_input(32)) {
        let parsed = Nickname::parse(&raw);
        check_label(
            &raw,
            parsed.as_ref().map(|n| n.as_str()).map_err(Clone::clone),
            32,
            Some(chatterpro::domain::BOT_NAME),
        )?;
        if let Ok(name) = parsed {
            // Letter case never tells two names apart.
            if let Ok(upper) = Nickname::parse(&name.as_str().to_ascii_uppercase()) {
                prop_assert_eq!(name.key(), upper.key());
            }
        }
    }

    #[test]
    fn room_name_parse_follows_the_rules(raw in label_input(64)) {
        let parsed = RoomName::parse(&raw);
        check_label(
            &raw,
            parsed.as_ref().map(|n| n.as_str()).map_err(Clone::clone),
            64,
            None,
        )?;
    }

    #[test]
    fn message_text_parse_follows_the_rules(
        raw in prop_oneof![any::<String>(), tricky_string(40), near_limit(4000)]
    ) {
        let trimmed = raw.trim();
        let chars = trimmed.chars().count();
        let forbidden = trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t');
        let valid = (1..=4000).contains(&chars) && !forbidden;
        match MessageText::parse(&raw) {
            Ok(text) => {
                prop_assert!(valid, "accepted {:?}", raw);
                prop_assert_eq!(text.as_str(), trimmed);
            }
            Err(e) => {
                prop_assert!(!valid, "refused {:?} with {:?}", raw, e);
                let broken = match e {
                    InputError::Empty => chars == 0,
                    InputError::TooLong(n) => n == 4000 && chars > 4000,
                    InputError::ControlCharacter => forbidden,
                    InputError::Invisible | InputError::Reserved => false,
                };
                prop_assert!(broken, "{:?} refused with {:?}, a rule it keeps", raw, e);
            }
        }
    }
}

// ===========================================================================
// Part 2: scripts of requests against a real server, next to a model.

/// Clients in a script.
const CLIENTS: usize = 4;
/// Rooms every server starts with (the defaults), in order.
const DEFAULT_ROOMS: [&str; 3] = ["Chat Room", "Business Room", "Gaming Room"];
/// How long a frame that should come may take.
const FRAME_WAIT: Duration = Duration::from_secs(5);

/// Nicknames a script uses: some collide (ignoring case), some are invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Ann,
    /// "ANN": Ann's name in another case, so the same person.
    AnnUpper,
    /// " bob ": trimmed to "bob".
    BobPadded,
    Bob,
    Cat,
    Dan,
    Empty,
    Blank,
    Tab,
    TooLong,
    Bot,
}

impl Name {
    fn raw(self) -> String {
        match self {
            Name::Ann => "ann".into(),
            Name::AnnUpper => "ANN".into(),
            Name::BobPadded => " bob ".into(),
            Name::Bob => "bob".into(),
            Name::Cat => "cat".into(),
            Name::Dan => "Dan".into(),
            Name::Empty => "".into(),
            Name::Blank => "   ".into(),
            Name::Tab => "a\tb".into(),
            Name::TooLong => "n".repeat(33),
            Name::Bot => "chatterpro BOT".into(),
        }
    }
}

/// Room names a script uses: "R1" and "r1" differ, " r1 " is "r1".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    Chat,
    R1,
    R1Padded,
    R1Upper,
    R2,
    Empty,
    Newline,
    TooLong,
}

impl Room {
    fn raw(self) -> String {
        match self {
            Room::Chat => "Chat Room".into(),
            Room::R1 => "r1".into(),
            Room::R1Padded => " r1 ".into(),
            Room::R1Upper => "R1".into(),
            Room::R2 => "r2".into(),
            Room::Empty => " ".into(),
            Room::Newline => "a\nb".into(),
            Room::TooLong => "z".repeat(65),
        }
    }
}

/// The room of a `send`, `leave` or `history`: mostly one the client is in
/// (the n-th, if it is in any), sometimes one by name, joined or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Mine(usize),
    Named(Room),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    None,
    /// The token the server last gave for this name, if any (maybe stale).
    Known,
    Bogus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    Plain,
    /// Surrounding whitespace, stored trimmed.
    Padded,
    Multiline,
    /// Exactly 4000 characters, two bytes each.
    Max,
    /// Whitespace only.
    Empty,
    /// A bell character.
    Control,
    /// 4001 characters.
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Junk {
    NotJson,
    NotObject,
    UnknownType,
    WrongFieldType,
    MissingType,
    /// A `ref` that is neither a string nor an integer.
    BadRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Hello {
        c: usize,
        name: Name,
        session: Session,
    },
    Join {
        c: usize,
        room: Room,
        since: Option<u64>,
    },
    Leave {
        c: usize,
        room: Target,
    },
    Send {
        c: usize,
        room: Target,
        text: Text,
    },
    History {
        c: usize,
        room: Target,
        before: Option<u64>,
        limit: Option<u32>,
    },
    Rooms {
        c: usize,
    },
    Malformed {
        c: usize,
        kind: Junk,
    },
    /// A binary frame: the server closes with 1003.
    Binary {
        c: usize,
    },
    /// Drops the connection: with a close handshake, or just the TCP connection.
    Disconnect {
        c: usize,
        abrupt: bool,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    use prop::sample::select;
    let c = 0..CLIENTS;
    let name = select(vec![
        Name::Ann,
        Name::AnnUpper,
        Name::BobPadded,
        Name::Bob,
        Name::Cat,
        Name::Dan,
        Name::Empty,
        Name::Blank,
        Name::Tab,
        Name::TooLong,
        Name::Bot,
    ]);
    let valid_name = select(vec![
        Name::Ann,
        Name::AnnUpper,
        Name::BobPadded,
        Name::Cat,
        Name::Dan,
    ]);
    let room = || {
        prop_oneof![
            6 => select(vec![Room::Chat, Room::R1, Room::R1Padded, Room::R1Upper, Room::R2]),
            1 => select(vec![Room::Empty, Room::Newline, Room::TooLong]),
        ]
    };
    let target = || {
        prop_oneof![
            3 => (0..3usize).prop_map(Target::Mine),
            1 => room().prop_map(Target::Named),
        ]
    };
    let session = select(vec![
        Session::None,
        Session::Known,
        Session::Known,
        Session::Bogus,
    ]);
    let text = prop_oneof![
        6 => select(vec![Text::Plain, Text::Padded, Text::Multiline, Text::Max]),
        2 => select(vec![Text::Empty, Text::Control, Text::TooLong]),
    ];
    let malformed = select(vec![
        Junk::NotJson,
        Junk::NotObject,
        Junk::UnknownType,
        Junk::WrongFieldType,
        Junk::MissingType,
        Junk::BadRef,
    ]);
    let since = prop::option::of(select(vec![0u64, 1, 2, 5, 1000]));
    let before = prop::option::of(select(vec![1u64, 2, 4, 100]));
    let limit = prop::option::of(select(vec![0u32, 1, 2, 3, 300]));
    prop_oneof![
        3 => (c.clone(), valid_name, session.clone())
            .prop_map(|(c, name, session)| Op::Hello { c, name, session }),
        1 => (c.clone(), name, session).prop_map(|(c, name, session)| Op::Hello { c, name, session }),
        5 => (c.clone(), room(), since).prop_map(|(c, room, since)| Op::Join { c, room, since }),
        2 => (c.clone(), target()).prop_map(|(c, room)| Op::Leave { c, room }),
        14 => (c.clone(), target(), text).prop_map(|(c, room, text)| Op::Send { c, room, text }),
        2 => (c.clone(), target(), before, limit)
            .prop_map(|(c, room, before, limit)| Op::History { c, room, before, limit }),
        1 => c.clone().prop_map(|c| Op::Rooms { c }),
        1 => (c.clone(), malformed).prop_map(|(c, kind)| Op::Malformed { c, kind }),
        1 => c.clone().prop_map(|c| Op::Binary { c }),
        2 => (c, any::<bool>()).prop_map(|(c, abrupt)| Op::Disconnect { c, abrupt }),
    ]
}

/// A script: most clients first say hello (each its own name, or as a
/// second tab of ann's) and join a room, so that later requests mostly find
/// someone to talk to; then anything goes.
fn arb_script() -> impl Strategy<Value = Vec<Op>> {
    use prop::sample::select;
    let own_names = [Name::Ann, Name::BobPadded, Name::Cat, Name::Dan];
    let setup = (
        any::<bool>(),
        select(vec![Room::Chat, Room::R1, Room::R1Padded]),
    );
    (
        prop::collection::vec(prop::option::weighted(0.85, setup), CLIENTS),
        prop::collection::vec(arb_op(), 0..=32),
    )
        .prop_map(move |(setup, ops)| {
            let mut script = Vec::new();
            for (c, setup) in setup.into_iter().enumerate() {
                let Some((second_tab, room)) = setup else {
                    continue;
                };
                script.push(if second_tab && c > 0 {
                    Op::Hello {
                        c,
                        name: Name::AnnUpper,
                        session: Session::Known,
                    }
                } else {
                    Op::Hello {
                        c,
                        name: own_names[c],
                        session: Session::None,
                    }
                });
                script.push(Op::Join {
                    c,
                    room,
                    since: None,
                });
            }
            script.extend(ops);
            script
        })
}

// --- the model -----------------------------------------------------------

/// The server's state as the protocol says it must be.
#[derive(Debug, Default)]
struct Model {
    conns: [Option<ModelConn>; CLIENTS],
    /// Online people by case-folded name: their reclaim token and connection count.
    people: HashMap<String, (String, usize)>,
    /// The last token the server gave for each name, even once released.
    tokens: HashMap<String, String>,
    /// The author id of each name's last identity (from `welcome`).
    authors: HashMap<String, Value>,
    /// Every room, oldest first.
    rooms: Vec<String>,
    /// People in each room: case-folded name -> (display name, connections).
    room_people: HashMap<String, BTreeMap<String, (String, usize)>>,
    /// Each room's stored messages, seq order (as `message` JSON).
    log: HashMap<String, Vec<Value>>,
    /// Texts of sends the server refused; none may ever be seen or stored.
    refused_texts: Vec<String>,
}

#[derive(Debug, Default, Clone)]
struct ModelConn {
    /// Display name and case-folded key, after a successful hello.
    name: Option<(String, String)>,
    /// The identity's author id, from `welcome`.
    author: Value,
    rooms: BTreeSet<String>,
}

/// Trims and checks a nickname by the documented rules.
fn model_name(raw: &str) -> Option<(String, String)> {
    let t = raw.trim();
    let n = t.chars().count();
    let ok = (1..=32).contains(&n)
        && !t.chars().any(|c| c.is_control() || documented_invisible(c))
        && t.to_lowercase() != "chatterpro bot";
    ok.then(|| (t.to_owned(), t.to_lowercase()))
}

/// Trims and checks a room name by the documented rules.
fn model_room(raw: &str) -> Option<String> {
    let t = raw.trim();
    let n = t.chars().count();
    let forbidden = t.chars().any(|c| c.is_control() || documented_invisible(c));
    ((1..=64).contains(&n) && !forbidden).then(|| t.to_owned())
}

/// The stored text of a send, or the error code refusing it.
fn model_text(raw: &str) -> Result<String, &'static str> {
    let t = raw.trim();
    if t.is_empty() || t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        Err("bad_request")
    } else if t.chars().count() > 4000 {
        Err("too_large")
    } else {
        Ok(t.to_owned())
    }
}

impl Model {
    fn new() -> Self {
        Self {
            rooms: DEFAULT_ROOMS.iter().map(|r| r.to_string()).collect(),
            ..Self::default()
        }
    }

    fn users(&self, room: &str) -> Vec<String> {
        self.room_people
            .get(room)
            .map(|p| p.values().map(|(display, _)| display.clone()).collect())
            .unwrap_or_default()
    }

    /// Every listed room with the number of distinct people in it now: the
    /// default rooms, rooms with people, and rooms with messages (all of
    /// them recent here); a room merely created is not listed.
    fn room_counts(&self) -> Vec<(String, usize)> {
        self.rooms
            .iter()
            .map(|r| (r.clone(), self.room_people.get(r).map_or(0, BTreeMap::len)))
            .filter(|(r, people)| {
                DEFAULT_ROOMS.contains(&r.as_str())
                    || *people > 0
                    || self.log.get(r).is_some_and(|log| !log.is_empty())
            })
            .collect()
    }

    /// Connections in `room`, in client order.
    fn members(&self, room: &str) -> Vec<usize> {
        (0..CLIENTS)
            .filter(|&i| {
                self.conns[i]
                    .as_ref()
                    .is_some_and(|c| c.rooms.contains(room))
            })
            .collect()
    }

    fn connected(&self) -> usize {
        self.conns.iter().flatten().count()
    }

    /// Removes connection `c` from `room`; returns who must hear the presence leave.
    fn leave(&mut self, c: usize, room: &str) -> Vec<(usize, Expect)> {
        let conn = self.conns[c].as_mut().expect("connected");
        conn.rooms.remove(room);
        let (_, key) = conn.name.clone().expect("members have names");
        let people = self.room_people.get_mut(room).expect("room has people");
        let count = &mut people.get_mut(&key).expect("member counted").1;
        *count -= 1;
        if *count > 0 {
            return Vec::new();
        }
        // Under the name the room listed, whatever this tab's spelling.
        let (display, _) = people.remove(&key).expect("member counted");
        let users = self.users(room);
        if users.is_empty() {
            self.room_people.remove(room);
            return Vec::new();
        }
        let frame = Expect::event(json!({
            "type": "presence", "room": room, "joined": [], "left": [display],
            "event": "leave", "user": display,
        }));
        self.members(room)
            .into_iter()
            .map(|m| (m, frame.clone()))
            .collect()
    }

    /// Forgets connection `c`: leaves its rooms, releases its name.
    fn disconnect(&mut self, c: usize) -> Vec<(usize, Expect)> {
        let Some(conn) = self.conns[c].clone() else {
            return Vec::new();
        };
        let mut frames = Vec::new();
        for room in &conn.rooms {
            frames.extend(self.leave(c, room));
        }
        if let Some((_, key)) = &conn.name {
            let person = self
                .people
                .get_mut(key)
                .expect("named connections are people");
            person.1 -= 1;
            if person.1 == 0 {
                self.people.remove(key);
            }
        }
        self.conns[c] = None;
        frames
    }
}

// --- expectations --------------------------------------------------------

/// A frame a client must receive: these fields with these values, and the
/// `ref` (absent for frames the server sends on its own).
#[derive(Debug, Clone)]
struct Expect {
    fields: Value,
    r#ref: Option<Value>,
    /// For `welcome` and `rooms`: the rooms and online counts the list must hold.
    rooms: Option<Vec<(String, usize)>>,
}

impl Expect {
    fn reply(fields: Value, r#ref: &Option<Value>) -> Self {
        Self {
            fields,
            r#ref: r#ref.clone(),
            rooms: None,
        }
    }

    fn event(fields: Value) -> Self {
        Self {
            fields,
            r#ref: None,
            rooms: None,
        }
    }

    fn with_rooms(mut self, model: &Model) -> Self {
        self.rooms = Some(model.room_counts());
        self
    }

    fn error(code: &str, r#ref: &Option<Value>) -> Self {
        Self::reply(json!({"type": "error", "code": code}), r#ref)
    }

    fn room(&self) -> &str {
        self.fields["room"].as_str().unwrap_or("")
    }

    fn check(&self, actual: &Value) -> Result<(), String> {
        let fields = self.fields.as_object().expect("expectations are objects");
        for (key, value) in fields {
            if &actual[key] != value {
                return Err(format!(
                    "expected {key} = {value}\n  in {}\n  got {actual}",
                    self.fields
                ));
            }
        }
        if actual.get("ref") != self.r#ref.as_ref() {
            return Err(format!(
                "expected ref {:?}, got {actual}",
                self.r#ref.as_ref().map(Value::to_string)
            ));
        }
        if actual["type"] == "error" && actual["message"].as_str().is_none_or(str::is_empty) {
            return Err(format!("an error without words: {actual}"));
        }
        if let Some(rooms) = &self.rooms {
            check_room_list(&actual["rooms"], rooms)
                .map_err(|e| format!("{e}\n  expected rooms {rooms:?}\n  got {actual}"))?;
        }
        Ok(())
    }
}

/// A room list as documented: every room (there are fewer than 100) with its
/// online count, the default rooms first in their order, then rooms with
/// people (most first), then the empty ones.
fn check_room_list(list: &Value, expected: &[(String, usize)]) -> Result<(), String> {
    let list: Vec<(String, usize)> = list
        .as_array()
        .ok_or("no room list")?
        .iter()
        .map(|r| {
            let name = r["name"].as_str().ok_or("a room without a name")?;
            let online = r["online"].as_u64().ok_or("a room without online")?;
            Ok((name.to_owned(), online as usize))
        })
        .collect::<Result<_, &str>>()?;
    let mut sorted = list.clone();
    sorted.sort();
    let mut want = expected.to_vec();
    want.sort();
    if sorted != want {
        return Err("the rooms or their online counts are wrong".into());
    }
    let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
    if names[..DEFAULT_ROOMS.len()] != DEFAULT_ROOMS {
        return Err("the default rooms are not first, in order".into());
    }
    let rest: Vec<usize> = list[DEFAULT_ROOMS.len()..]
        .iter()
        .map(|(_, n)| *n)
        .collect();
    if rest.windows(2).any(|w| w[0] < w[1]) {
        return Err("rooms with people are not first, most first".into());
    }
    Ok(())
}

// --- running a script ----------------------------------------------------

/// What one client has learned from the frames it received.
#[derive(Debug, Default)]
struct View {
    /// The last users list for each room it is in (from `joined` and `presence`).
    users: BTreeMap<String, Vec<String>>,
    /// The highest seq it knows of in each room it is in.
    last_seq: BTreeMap<String, u64>,
}

struct Conn {
    client: Client,
    view: View,
}

enum Got {
    Frame(Value),
    Closed(Option<u16>),
}

struct Run {
    app: TestApp,
    model: Model,
    conns: [Option<Conn>; CLIENTS],
    /// Index of the op being run, for refs and unique texts.
    step: usize,
}

async fn next_frame(client: &mut Client) -> Result<Got, String> {
    loop {
        let next = tokio::time::timeout(FRAME_WAIT, client.ws.next())
            .await
            .map_err(|_| "timed out waiting for a frame".to_owned())?;
        return Ok(match next {
            Some(Ok(Message::Text(text))) => Got::Frame(
                serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {text}"))?,
            ),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(frame))) => Got::Closed(frame.map(|f| f.code.into())),
            Some(Ok(other)) => return Err(format!("unexpected frame {other:?}")),
            Some(Err(_)) | None => Got::Closed(None),
        });
    }
}

impl Run {
    async fn start() -> Self {
        let app = spawn_app_with(|config| {
            unlimited(config);
            // The model predicts one presence frame per change, as it happens.
            config.presence_interval = std::time::Duration::ZERO;
            config.max_conns_per_ip = 1000;
            config.conns_per_ip_per_minute = NonZeroU32::new(1_000_000).unwrap();
            // The model frees a name when its last connection closes.
            config.name_hold = Duration::ZERO;
        })
        .await;
        Self {
            app,
            model: Model::new(),
            conns: Default::default(),
            step: 0,
        }
    }

    /// The op's `ref`: none, an integer or a string, in turn.
    fn r#ref(&self) -> Option<Value> {
        match self.step % 3 {
            0 => None,
            1 => Some(json!(self.step)),
            _ => Some(json!(format!("op{}", self.step))),
        }
    }

    fn with_ref(&self, mut request: Value) -> Value {
        if let Some(r) = self.r#ref() {
            request["ref"] = r;
        }
        request
    }

    async fn ensure_connected(&mut self, c: usize) {
        if self.conns[c].is_none() {
            self.conns[c] = Some(Conn {
                client: self.app.client().await,
                view: View::default(),
            });
            self.model.conns[c] = Some(ModelConn::default());
        }
    }

    fn conn(&mut self, c: usize) -> &mut Conn {
        self.conns[c].as_mut().expect("connected")
    }

    async fn send(&mut self, c: usize, request: Value) {
        self.conn(c).client.send_json(request).await;
    }

    /// Reads one frame for client `c`, which must match `expect`; updates its view.
    async fn receive(&mut self, c: usize, expect: &Expect) -> Result<Value, String> {
        let conn = self.conns[c].as_mut().expect("connected");
        let frame = match next_frame(&mut conn.client).await? {
            Got::Frame(frame) => frame,
            Got::Closed(code) => {
                return Err(format!(
                    "client {c} was closed ({code:?}) while expecting {}",
                    expect.fields
                ));
            }
        };
        expect
            .check(&frame)
            .map_err(|e| format!("client {c}: {e}"))?;
        observe(&mut conn.view, &frame, &self.model).map_err(|e| format!("client {c}: {e}"))?;
        Ok(frame)
    }

    /// Runs one op, checks every frame it causes, then makes sure nothing else came.
    async fn run_op(&mut self, op: &Op) -> Result<(), String> {
        let r#ref = self.r#ref();
        // Frames each client must receive because of this op.
        let mut expected: Vec<(usize, Expect)> = Vec::new();
        let mut closed = false;
        match *op {
            Op::Disconnect { c, abrupt } => {
                if let Some(conn) = self.conns[c].take() {
                    let mut client = conn.client;
                    if abrupt {
                        drop(client);
                    } else {
                        let _ = client.ws.close(None).await;
                        loop {
                            match next_frame(&mut client).await? {
                                Got::Frame(_) => {}
                                Got::Closed(None | Some(close::NORMAL)) => break,
                                Got::Closed(code) => {
                                    return Err(format!("closing client {c}: got close {code:?}"));
                                }
                            }
                        }
                    }
                    expected.extend(self.model.disconnect(c));
                    closed = true;
                }
            }
            Op::Binary { c } => {
                self.ensure_connected(c).await;
                let conn = self.conns[c].as_mut().expect("connected");
                conn.client
                    .ws
                    .send(Message::Binary(br#"{"type":"rooms"}"#.to_vec().into()))
                    .await
                    .map_err(|e| format!("sending binary: {e}"))?;
                match next_frame(&mut conn.client).await? {
                    Got::Closed(Some(close::UNSUPPORTED_DATA)) => {}
                    Got::Closed(code) => return Err(format!("binary frame: closed with {code:?}")),
                    Got::Frame(f) => return Err(format!("binary frame: got {f} instead of 1003")),
                }
                self.conns[c] = None;
                expected.extend(self.model.disconnect(c));
                closed = true;
            }
            Op::Malformed { c, kind } => {
                self.ensure_connected(c).await;
                let (text, expect) = self.malformed(kind, &r#ref);
                self.conn(c).client.send_text(&text).await;
                expected.push((c, expect));
            }
            Op::Hello { c, name, session } => {
                self.ensure_connected(c).await;
                self.hello(c, name, session, &r#ref).await?;
            }
            Op::Rooms { c } => {
                self.ensure_connected(c).await;
                self.send(c, self.with_ref(json!({"type": "rooms"}))).await;
                let expect = match self.identified(c) {
                    false => Expect::error("no_identity", &r#ref),
                    true => Expect::reply(json!({"type": "rooms"}), &r#ref).with_rooms(&self.model),
                };
                expected.push((c, expect));
            }
            Op::Join { c, room, since } => {
                self.ensure_connected(c).await;
                let mut request = json!({"type": "join", "room": room.raw()});
                if let Some(since) = since {
                    request["since"] = json!(since);
                }
                self.send(c, self.with_ref(request)).await;
                expected.extend(self.join(c, room, since, &r#ref));
            }
            Op::Leave { c, room } => {
                self.ensure_connected(c).await;
                let raw = self.resolve(c, room);
                self.send(c, self.with_ref(json!({"type": "leave", "room": raw})))
                    .await;
                match self.member_check(c, &raw, &r#ref) {
                    Err(e) => expected.push((c, e)),
                    Ok(room) => {
                        expected.push((
                            c,
                            Expect::reply(json!({"type": "left", "room": room}), &r#ref),
                        ));
                        expected.extend(self.model.leave(c, &room));
                    }
                }
            }
            Op::History {
                c,
                room,
                before,
                limit,
            } => {
                self.ensure_connected(c).await;
                let raw = self.resolve(c, room);
                let mut request = json!({"type": "history", "room": raw});
                if let Some(before) = before {
                    request["before"] = json!(before);
                }
                if let Some(limit) = limit {
                    request["limit"] = json!(limit);
                }
                self.send(c, self.with_ref(request)).await;
                match self.member_check(c, &raw, &r#ref) {
                    Err(e) => expected.push((c, e)),
                    Ok(room) => {
                        // Outside 1..=200 is clamped.
                        let limit = limit.unwrap_or(50).clamp(1, 200) as usize;
                        let older: Vec<Value> = self.model.log[&room]
                            .iter()
                            .filter(|m| before.is_none_or(|b| m["seq"].as_u64().unwrap() < b))
                            .cloned()
                            .collect();
                        let messages = older[older.len().saturating_sub(limit)..].to_vec();
                        expected.push((
                            c,
                            Expect::reply(
                                json!({"type": "history", "room": room, "messages": messages}),
                                &r#ref,
                            ),
                        ));
                    }
                }
            }
            Op::Send { c, room, text } => {
                self.ensure_connected(c).await;
                let raw = self.text(text);
                let room = self.resolve(c, room);
                self.send(
                    c,
                    self.with_ref(json!({"type": "send", "room": room, "text": raw})),
                )
                .await;
                let checked = self.member_check(c, &room, &r#ref).and_then(|room| {
                    model_text(&raw)
                        .map(|text| (room, text))
                        .map_err(|code| Expect::error(code, &r#ref))
                });
                match checked {
                    Err(e) => {
                        self.model.refused_texts.push(raw.trim().to_owned());
                        expected.push((c, e));
                    }
                    Ok((room, text)) => {
                        expected.extend(self.send_accepted(c, &room, text, &r#ref).await?);
                    }
                }
            }
        }
        self.settle(expected).await?;
        if closed {
            self.await_connections().await?;
        }
        Ok(())
    }

    /// The room name a target stands for now.
    fn resolve(&self, c: usize, target: Target) -> String {
        match target {
            Target::Named(room) => room.raw(),
            Target::Mine(n) => {
                let rooms = &self.model.conns[c].as_ref().expect("connected").rooms;
                match rooms.len() {
                    0 => Room::Chat.raw(),
                    len => rooms.iter().nth(n % len).expect("in range").clone(),
                }
            }
        }
    }

    fn identified(&self, c: usize) -> bool {
        self.model.conns[c]
            .as_ref()
            .is_some_and(|conn| conn.name.is_some())
    }

    /// The checks shared by requests on a room: identity, room name, membership.
    fn member_check(&self, c: usize, raw: &str, r#ref: &Option<Value>) -> Result<String, Expect> {
        if !self.identified(c) {
            return Err(Expect::error("no_identity", r#ref));
        }
        let room = model_room(raw).ok_or_else(|| Expect::error("invalid_room", r#ref))?;
        let conn = self.model.conns[c].as_ref().expect("connected");
        if !conn.rooms.contains(&room) {
            return Err(Expect::error("not_member", r#ref));
        }
        Ok(room)
    }

    fn text(&self, text: Text) -> String {
        let n = self.step;
        match text {
            Text::Plain => format!("message {n}"),
            Text::Padded => format!("  \t padded {n}\n "),
            Text::Multiline => format!("line one {n}\n\tline two"),
            Text::Max => format!("{n:04}{}", "é".repeat(3996)),
            Text::Empty => " \n\t ".into(),
            Text::Control => format!("bell {n}\u{7}"),
            Text::TooLong => format!("{n:04}{}", "x".repeat(3997)),
        }
    }

    fn malformed(&self, kind: Junk, r#ref: &Option<Value>) -> (String, Expect) {
        let with_ref = |v: Value| self.with_ref(v).to_string();
        match kind {
            Junk::NotJson => (
                "{\"type\": \"rooms\"".into(),
                Expect::error("bad_request", &None),
            ),
            Junk::NotObject => ("[\"rooms\", 1]".into(), Expect::error("bad_request", &None)),
            Junk::UnknownType => (
                with_ref(json!({"type": "dance", "room": "r1"})),
                Expect::error("unknown_type", r#ref),
            ),
            Junk::WrongFieldType => (
                with_ref(json!({"type": "send", "room": ["r1"], "text": 5})),
                Expect::error("bad_request", r#ref),
            ),
            Junk::MissingType => (
                with_ref(json!({"room": "r1", "text": "hi"})),
                Expect::error("bad_request", r#ref),
            ),
            Junk::BadRef => (
                json!({"type": "rooms", "ref": {"id": 1}}).to_string(),
                Expect::error("bad_request", &None),
            ),
        }
    }

    /// Hello: the reply is read here, to learn the reclaim token.
    async fn hello(
        &mut self,
        c: usize,
        name: Name,
        session: Session,
        r#ref: &Option<Value>,
    ) -> Result<(), String> {
        let raw = name.raw();
        let parsed = model_name(&raw);
        let known = parsed
            .as_ref()
            .and_then(|(_, key)| self.model.tokens.get(key).cloned());
        let token = match session {
            Session::None => None,
            Session::Known => known.clone(),
            Session::Bogus => Some("0123456789abcdef".to_owned()),
        };
        let mut request = json!({"type": "hello", "name": raw});
        if let Some(token) = &token {
            request["session"] = json!(token);
        }
        self.send(c, self.with_ref(request)).await;

        let current = self.model.conns[c]
            .as_ref()
            .expect("connected")
            .name
            .clone();
        let expect_error = |code| Expect::error(code, r#ref);
        // Who this connection will be, and whether the token must be the known one.
        let (display, key, same_token) = match (current, parsed) {
            (Some((display, key)), Some((_, new_key))) if key == new_key => (display, key, true),
            (Some(_), _) => return self.settle(vec![(c, expect_error("bad_request"))]).await,
            (None, None) => return self.settle(vec![(c, expect_error("invalid_name"))]).await,
            (None, Some((display, key))) => match self.model.people.get(&key) {
                Some((person_token, _)) if token.as_ref() == Some(person_token) => {
                    self.model.people.get_mut(&key).expect("online").1 += 1;
                    (display, key, true)
                }
                Some(_) => return self.settle(vec![(c, expect_error("name_taken"))]).await,
                // Offline (no --name-hold here): the token last issued for
                // the name reclaims it, and the same token comes back.
                None if token.is_some() && token == known => {
                    let token = token.clone().expect("checked");
                    self.model.people.insert(key.clone(), (token, 1));
                    (display, key, true)
                }
                None => {
                    self.model.people.insert(key.clone(), (String::new(), 1));
                    (display, key, false)
                }
            },
        };
        self.model.conns[c].as_mut().expect("connected").name =
            Some((display.clone(), key.clone()));
        let expect = Expect::reply(
            json!({"type": "welcome", "name": display, "protocol": 1}),
            r#ref,
        )
        .with_rooms(&self.model);
        let welcome = self.receive(c, &expect).await?;
        let got = welcome["session"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("welcome without a session: {welcome}"))?
            .to_owned();
        let author = welcome["author"].clone();
        if !author.is_u64() {
            return Err(format!("welcome without an author id: {welcome}"));
        }
        self.model.conns[c].as_mut().expect("connected").author = author.clone();
        if same_token {
            let person_token = &self.model.people[&key].0;
            if &got != person_token {
                return Err(format!("welcome for {display} changed the reclaim token"));
            }
            if self.model.authors.get(&key) != Some(&author) {
                return Err(format!("the same token gave {display} another author id"));
            }
        } else {
            self.model.authors.insert(key.clone(), author);
            // A released name claimed without its token gets a fresh one.
            if known.as_ref() == Some(&got) {
                return Err(format!("{display} was given its old token again"));
            }
            self.model.people.get_mut(&key).expect("just added").0 = got.clone();
            self.model.tokens.insert(key, got);
        }
        self.settle(Vec::new()).await
    }

    /// Join: the reply, the welcome notice, and presence for the others.
    fn join(
        &mut self,
        c: usize,
        room: Room,
        since: Option<u64>,
        r#ref: &Option<Value>,
    ) -> Vec<(usize, Expect)> {
        if !self.identified(c) {
            return vec![(c, Expect::error("no_identity", r#ref))];
        }
        let Some(room) = model_room(&room.raw()) else {
            return vec![(c, Expect::error("invalid_room", r#ref))];
        };
        let model = &mut self.model;
        if !model.rooms.contains(&room) {
            model.rooms.push(room.clone());
        }
        let log = model.log.entry(room.clone()).or_default().clone();
        let conn = model.conns[c].as_mut().expect("connected");
        let (display, key) = conn.name.clone().expect("identified");
        let first_join = conn.rooms.insert(room.clone());
        let mut new_person = false;
        if first_join {
            let count = model
                .room_people
                .entry(room.clone())
                .or_default()
                .entry(key)
                .or_insert_with(|| (display.clone(), 0));
            count.1 += 1;
            new_person = count.1 == 1;
        }
        // A `since` past the room's last seq (from a removed room of that
        // name) is answered as no `since`, with `truncated`.
        let stale_since = since.is_some_and(|since| since > log.len() as u64);
        let messages: Vec<Value> = match since {
            Some(since) if !stale_since => log
                .iter()
                .filter(|m| m["seq"].as_u64().unwrap() > since)
                .cloned()
                .collect(),
            _ => log[log.len().saturating_sub(50)..].to_vec(),
        };
        let users = model.users(&room);
        let mut joined = json!({
            "type": "joined", "room": room, "users": users.clone(),
            "messages": messages, "last_seq": log.len(),
        });
        if stale_since {
            joined["truncated"] = json!(true);
        }
        let mut frames = vec![(c, Expect::reply(joined, r#ref))];
        if first_join {
            frames.push((
                c,
                Expect::event(json!({
                    "type": "notice", "room": room,
                    "text": format!("Welcome to ChatterPro, {display}!"),
                })),
            ));
        }
        if new_person {
            let presence = Expect::event(json!({
                "type": "presence", "room": room, "joined": [display], "left": [],
                "event": "join", "user": display,
            }));
            for m in model.members(&room) {
                if m != c {
                    frames.push((m, presence.clone()));
                }
            }
        }
        frames
    }

    /// An accepted send: `sent` is read here to learn the id, then the
    /// message is due to every member, the sender included.
    async fn send_accepted(
        &mut self,
        c: usize,
        room: &str,
        text: String,
        r#ref: &Option<Value>,
    ) -> Result<Vec<(usize, Expect)>, String> {
        let seq = self.model.log[room].len() + 1;
        let sent = self
            .receive(
                c,
                &Expect::reply(json!({"type": "sent", "room": room, "seq": seq}), r#ref),
            )
            .await?;
        let (Some(id), Some(ts)) = (sent["id"].as_str(), sent["ts"].as_i64()) else {
            return Err(format!("sent without id or ts: {sent}"));
        };
        let conn = self.model.conns[c].as_ref().unwrap();
        let from = conn.name.clone().unwrap().0;
        let author = conn.author.clone();
        let message = json!({
            "type": "message", "room": room, "id": id, "seq": seq,
            "from": from, "author": author, "text": text, "ts": ts,
        });
        let mut stored = message.clone();
        stored.as_object_mut().unwrap().remove("type");
        self.model.log.get_mut(room).unwrap().push(stored);
        Ok(self
            .model
            .members(room)
            .into_iter()
            .map(|m| (m, Expect::event(message.clone())))
            .collect())
    }

    /// Every connected client receives exactly its expected frames (within
    /// one room in order; rooms may interleave), then nothing else: a `rooms`
    /// round trip must be the next thing it sees.
    async fn settle(&mut self, expected: Vec<(usize, Expect)>) -> Result<(), String> {
        for c in 0..CLIENTS {
            if self.conns[c].is_none() {
                continue;
            }
            let mut mine: Vec<Expect> = expected
                .iter()
                .filter(|(to, _)| *to == c)
                .map(|(_, e)| e.clone())
                .collect();
            let mut got = Vec::new();
            for _ in 0..mine.len() {
                let conn = self.conns[c].as_mut().expect("connected");
                match next_frame(&mut conn.client).await? {
                    Got::Frame(frame) => got.push(frame),
                    Got::Closed(code) => {
                        return Err(format!(
                            "client {c} was closed ({code:?}); still expected {mine:?}"
                        ));
                    }
                }
            }
            mine.sort_by(|a, b| a.room().cmp(b.room()));
            got.sort_by(|a, b| {
                let room = |v: &Value| v["room"].as_str().unwrap_or("").to_owned();
                room(a).cmp(&room(b))
            });
            for (expect, frame) in mine.iter().zip(&got) {
                expect
                    .check(frame)
                    .map_err(|e| format!("client {c}: {e}"))?;
                let conn = self.conns[c].as_mut().expect("connected");
                observe(&mut conn.view, frame, &self.model)
                    .map_err(|e| format!("client {c}: {e}"))?;
            }
            let conn = self.conns[c].as_mut().expect("connected");
            conn.client
                .send_json(json!({"type": "rooms", "ref": "sync"}))
                .await;
            match next_frame(&mut conn.client).await? {
                Got::Frame(frame) if frame["ref"] == "sync" => {}
                Got::Frame(frame) => return Err(format!("client {c}: unexpected {frame}")),
                Got::Closed(code) => return Err(format!("client {c} was closed: {code:?}")),
            }
        }
        Ok(())
    }

    /// Waits until the server has forgotten closed connections (its
    /// connection gauge matches the model), so the next op sees names released.
    async fn await_connections(&self) -> Result<(), String> {
        let want = self.model.connected() as f64;
        let mut last = String::new();
        for _ in 0..500 {
            let text = reqwest::get(self.app.metrics_url())
                .await
                .map_err(|e| format!("GET /metrics: {e}"))?
                .text()
                .await
                .map_err(|e| format!("GET /metrics: {e}"))?;
            let now = text
                .lines()
                .find_map(|l| l.strip_prefix("chatterpro_connections "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            if now == Some(want) {
                return Ok(());
            }
            last = format!("{now:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!(
            "the server holds {last} connections, expected {want}"
        ))
    }

    /// After the script: each client's view matches the model, and storage
    /// holds exactly the acknowledged messages.
    async fn check_end(&mut self) -> Result<(), String> {
        for c in 0..CLIENTS {
            let (Some(conn), Some(model)) = (&self.conns[c], &self.model.conns[c]) else {
                continue;
            };
            let rooms: Vec<&String> = conn.view.users.keys().collect();
            let model_rooms: Vec<&String> = model.rooms.iter().collect();
            if rooms != model_rooms {
                return Err(format!(
                    "client {c} thinks it is in {rooms:?}, not {model_rooms:?}"
                ));
            }
            for room in &model.rooms {
                let users = self.model.users(room);
                if conn.view.users[room] != users {
                    return Err(format!(
                        "client {c} sees {:?} in {room:?}, not {users:?}",
                        conn.view.users[room]
                    ));
                }
                let last = self.model.log[room].len() as u64;
                if conn.view.last_seq[room] != last {
                    return Err(format!(
                        "client {c} saw {room:?} up to seq {}, not {last}",
                        conn.view.last_seq[room]
                    ));
                }
            }
        }
        // A newcomer reads every room back: the server still answers, and
        // history is exactly what was acknowledged, each once.
        let mut checker = self.app.client().await;
        checker
            .send_json(json!({"type": "hello", "name": "checker", "ref": "c"}))
            .await;
        let welcome = match next_frame(&mut checker).await? {
            Got::Frame(f) => f,
            Got::Closed(code) => return Err(format!("checker closed: {code:?}")),
        };
        Expect::reply(json!({"type": "welcome"}), &Some(json!("c")))
            .with_rooms(&self.model)
            .check(&welcome)?;
        for room in self.model.rooms.clone() {
            checker
                .send_json(json!({"type": "join", "room": room, "since": 0}))
                .await;
            let joined = checker.recv_type("joined").await;
            checker.recv_type("notice").await;
            let log = self.model.log.get(&room).cloned().unwrap_or_default();
            if joined["messages"] != Value::Array(log.clone()) {
                return Err(format!(
                    "{room:?} holds {}\n  expected {}",
                    joined["messages"],
                    Value::Array(log)
                ));
            }
            for m in joined["messages"].as_array().expect("messages") {
                if self
                    .model
                    .refused_texts
                    .iter()
                    .any(|t| m["text"] == t.as_str())
                {
                    return Err(format!("a refused send was stored in {room:?}: {m}"));
                }
            }
        }
        let health = reqwest::get(self.app.http("/healthz"))
            .await
            .map_err(|e| format!("GET /healthz: {e}"))?;
        if health.status() != 200 {
            return Err(format!("/healthz answered {}", health.status()));
        }
        Ok(())
    }
}

/// Updates a client's view with one frame, checking that what it learns is
/// consistent: messages are the stored ones and arrive gap-free.
fn observe(view: &mut View, frame: &Value, model: &Model) -> Result<(), String> {
    let room = frame["room"].as_str().unwrap_or("").to_owned();
    let stored = |m: &Value| -> Result<(), String> {
        let seq = m["seq"].as_u64().ok_or("a message without seq")? as usize;
        let mut m = m.clone();
        m.as_object_mut().unwrap().remove("type");
        match model
            .log
            .get(m["room"].as_str().unwrap_or(""))
            .and_then(|l| l.get(seq.wrapping_sub(1)))
        {
            Some(s) if *s == m => Ok(()),
            other => Err(format!("message {m} is not the stored {other:?}")),
        }
    };
    match frame["type"].as_str() {
        Some("joined") => {
            let users = frame["users"].as_array().ok_or("joined without users")?;
            view.users.insert(
                room.clone(),
                users
                    .iter()
                    .map(|u| u.as_str().unwrap_or("").to_owned())
                    .collect(),
            );
            let messages = frame["messages"]
                .as_array()
                .ok_or("joined without messages")?;
            for pair in messages.windows(2) {
                if pair[1]["seq"].as_u64() != pair[0]["seq"].as_u64().map(|s| s + 1) {
                    return Err(format!("joined has a gap: {frame}"));
                }
            }
            for m in messages {
                stored(m)?;
            }
            let last = frame["last_seq"]
                .as_u64()
                .ok_or("joined without last_seq")?;
            if let Some(newest) = messages.last()
                && newest["seq"].as_u64() != Some(last)
            {
                return Err(format!("joined's newest message is not last_seq: {frame}"));
            }
            view.last_seq.insert(room, last);
        }
        Some("presence") => {
            let Some(users) = view.users.get_mut(&room) else {
                return Err(format!("presence for a room it is not in: {frame}"));
            };
            crate::helpers::apply_presence(users, frame);
        }
        Some("left") => {
            view.users.remove(&room);
            view.last_seq.remove(&room);
        }
        Some("message") => {
            stored(frame)?;
            let last = view
                .last_seq
                .get_mut(&room)
                .ok_or_else(|| format!("a message for a room it is not in: {frame}"))?;
            if frame["seq"].as_u64() != Some(*last + 1) {
                return Err(format!("gap: after seq {last} came {frame}"));
            }
            *last += 1;
        }
        Some("history") => {
            for m in frame["messages"]
                .as_array()
                .ok_or("history without messages")?
            {
                stored(m)?;
            }
        }
        _ => {}
    }
    Ok(())
}

async fn run_script(script: &[Op]) -> Result<(), String> {
    let mut run = Run::start().await;
    for (i, op) in script.iter().enumerate() {
        run.step = i + 1;
        run.run_op(op)
            .await
            .map_err(|e| format!("op #{i} {op:?}: {e}"))?;
    }
    run.check_end()
        .await
        .map_err(|e| format!("after the script: {e}"))
}

proptest! {
    #![proptest_config(config(script_cases()))]

    #[test]
    fn scripts_of_requests_match_the_model(script in arb_script()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        if let Err(e) = runtime.block_on(run_script(&script)) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// A fixed script through the tricky paths (two tabs of one person, a
/// released name, a binary frame), so they run even when random scripts miss them.
#[test]
fn a_script_through_the_tricky_paths() {
    use Op::*;
    let script = [
        Hello {
            c: 0,
            name: Name::Ann,
            session: Session::None,
        },
        Join {
            c: 0,
            room: Room::R1,
            since: None,
        },
        Hello {
            c: 1,
            name: Name::AnnUpper,
            session: Session::None,
        },
        Hello {
            c: 1,
            name: Name::AnnUpper,
            session: Session::Known,
        },
        Join {
            c: 1,
            room: Room::R1Padded,
            since: Some(0),
        },
        Hello {
            c: 2,
            name: Name::BobPadded,
            session: Session::Bogus,
        },
        Join {
            c: 2,
            room: Room::R1,
            since: None,
        },
        Send {
            c: 1,
            room: Target::Mine(0),
            text: Text::Padded,
        },
        Send {
            c: 2,
            room: Target::Named(Room::R1Upper),
            text: Text::Plain,
        },
        Send {
            c: 2,
            room: Target::Named(Room::R1),
            text: Text::TooLong,
        },
        Send {
            c: 2,
            room: Target::Named(Room::R1),
            text: Text::Max,
        },
        Disconnect { c: 0, abrupt: true },
        Binary { c: 1 },
        Hello {
            c: 3,
            name: Name::Ann,
            session: Session::Known,
        },
        Join {
            c: 3,
            room: Room::R1,
            since: Some(1),
        },
        History {
            c: 3,
            room: Target::Mine(0),
            before: Some(3),
            limit: Some(1),
        },
        Leave {
            c: 2,
            room: Target::Named(Room::R1Padded),
        },
        Malformed {
            c: 0,
            kind: Junk::UnknownType,
        },
        Rooms { c: 3 },
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(e) = runtime.block_on(run_script(&script)) {
        panic!("{e}");
    }
}
