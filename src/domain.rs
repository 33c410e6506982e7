//! Newtypes that parse user input once, at the edge, so the rest of the server
//! can trust a `Nickname`, `RoomName` or `MessageText` without re-checking it.
//!
//! Lengths count Unicode scalar values (what a person perceives as characters
//! closely enough for limits), after trimming surrounding whitespace.
//!
//! **Look-alike names.** Names are what people trust to tell who is
//! speaking, so two names that look alike must be one name. A name is kept
//! in NFC (so `José` typed precomposed or decomposed is one string), runs of
//! spaces become one space, and characters that draw nothing or look like a
//! blank — controls, format characters (bidi controls, zero-width joiners,
//! the musical beam controls U+1D173–U+1D17A), default-ignorable code
//! points, spaces other than U+0020, U+2800 BRAILLE PATTERN BLANK, the
//! Hangul fillers, private-use and unassigned code points — are refused.
//! Names are then compared by their confusable skeleton (Unicode TS #39,
//! `unicode-security`): `alice` with a Cyrillic `а`, or `ｂｏｂ` in full
//! width, has the skeleton of `alice` or `bob`. A nickname has two keys and
//! clashes with another when either matches: [`Nickname::key`] (the
//! skeleton of the lower-cased name: `Alice` is `alice`) and
//! [`Nickname::shape`] (the skeleton of the name as written: `aIice`, with
//! a capital I, is `alice` — the skeleton maps `I` to `l` — which lower-casing
//! first would miss). Rooms, whose names are case-sensitive, have one key,
//! their shape ([`RoomName::key`]).

use std::fmt;
use std::sync::LazyLock;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Name of the server's own bot; no person may take it, nor a look-alike of it.
pub const BOT_NAME: &str = "ChatterPro Bot";

/// Maximum nickname length in characters.
pub const NICKNAME_MAX_CHARS: usize = 32;
/// Maximum room-name length in characters.
pub const ROOM_NAME_MAX_CHARS: usize = 64;
/// Maximum message length in characters.
pub const MESSAGE_MAX_CHARS: usize = 4000;
/// Maximum length of a send's `nonce`: a UUID (36) or a ULID (26) fits.
pub const NONCE_MAX_CHARS: usize = 64;

/// Why a piece of user input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must not contain invisible, blank-looking or unusual space characters")]
    Invisible,
    #[error("is reserved")]
    Reserved,
}

/// Why a nonce was refused: it breaks the one rule of [`Nonce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 1–64 ASCII letters, digits, '-' or '_'")]
pub struct BadNonce;

/// Characters that draw nothing, or a blank, in common fonts, named one by
/// one: zero-width, bidirectional-control and other formatting characters,
/// fillers and blanks that are letters or symbols to Unicode (U+2800,
/// U+3164, U+115F/U+1160, U+FFA0), variation selectors. The general rules
/// in [`is_invisible`] catch most of them too; this list is the one people
/// can read.
fn is_listed_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Whether `c` must not appear in a name: see the module documentation.
/// Controls are [`InputError::ControlCharacter`] and checked before this.
fn is_invisible(c: char) -> bool {
    // Room names are parsed on every send: the common case stays cheap.
    // (ASCII controls are refused before this is asked.)
    if c.is_ascii() {
        return false;
    }
    // White_Space other than the plain space: NBSP, the en/em/thin/ideographic
    // spaces, line and paragraph separators, Ogham space.
    if c.is_whitespace() || is_listed_invisible(c) {
        return true;
    }
    if matches!(
        c.general_category(),
        GeneralCategory::Format
            | GeneralCategory::SpaceSeparator
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
            | GeneralCategory::PrivateUse
            | GeneralCategory::Surrogate
            | GeneralCategory::Unassigned
    ) {
        return true;
    }
    // Default-ignorable code points are exactly what the skeleton drops:
    // a character whose skeleton is empty draws nothing.
    let mut buf = [0u8; 4];
    unicode_security::skeleton(c.encode_utf8(&mut buf))
        .next()
        .is_none()
}

/// The NFC form of `raw`, trimmed, with runs of spaces made one, checked to
/// be a one-line label of 1..=`max` characters with nothing invisible in it.
fn parse_label(raw: &str, max: usize) -> Result<String, InputError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(InputError::Empty);
    }
    // Control characters (newlines included) in names could forge log lines
    // or break the layout of every member's screen; invisible and
    // direction-changing characters let "ali\u{200B}ce" pass for "alice".
    if trimmed.chars().any(char::is_control) {
        return Err(InputError::ControlCharacter);
    }
    if trimmed.chars().any(is_invisible) {
        return Err(InputError::Invisible);
    }
    // Nearly every name is NFC already: the quick check saves the copy.
    let mut name = if is_nfc_quick(trimmed.chars()) == IsNormalized::Yes {
        trimmed.to_owned()
    } else {
        trimmed.nfc().collect()
    };
    // "ChatterPro  Bot" must not pass for the bot, nor "a  b" for "a b".
    if name.contains("  ") {
        let mut collapsed = String::with_capacity(name.len());
        for c in name.chars() {
            if !(c == ' ' && collapsed.ends_with(' ')) {
                collapsed.push(c);
            }
        }
        name = collapsed;
    }
    if name.chars().count() > max {
        return Err(InputError::TooLong(max));
    }
    Ok(name)
}

/// The confusable skeleton of `s` (UTS #39): equal for strings that look alike.
fn skeleton(s: &str) -> String {
    unicode_security::skeleton(s).collect()
}

/// The bot's two keys, for refusing its look-alikes.
static BOT_KEYS: LazyLock<(String, String)> =
    LazyLock::new(|| (skeleton(&BOT_NAME.to_lowercase()), skeleton(BOT_NAME)));

/// A registered account's row id (never shown on the wire: accounts are
/// named by their name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub i64);

/// The opaque, stable id of an identity (today a guest's session), stored
/// with each message it sends, so that two people who used the same display
/// name are told apart in history. Ids are random, below 2^53 so that
/// JavaScript reads them exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AuthorId(u64);

impl AuthorId {
    /// Ids are below this (2^53, the largest exact integer in JavaScript).
    pub const LIMIT: u64 = 1 << 53;

    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random_range(1..Self::LIMIT))
    }

    /// An id read back from storage (any value it once wrote).
    pub fn from_stored(id: i64) -> Self {
        Self(id.unsigned_abs())
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// For storage: ids fit in an i64.
    pub fn to_stored(self) -> i64 {
        self.0 as i64
    }
}

/// A chat message as stored: what storage returns, what the commit task
/// hands to the broker, and what each server encodes (as the wire's
/// `protocol::ChatMessage`) for its own members. Fields read back from
/// storage are kept as written then, so `from` is a plain string: a name
/// stored under older rules need not parse as a [`Nickname`] today.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub room: RoomName,
    /// Globally unique, time-ordered (UUID v7, text form).
    pub id: String,
    /// Position in its room: 1, 2, 3… without gaps.
    pub seq: u64,
    /// The sender's display name.
    pub from: String,
    /// The sender's identity; absent on messages stored before identities were.
    pub author: Option<AuthorId>,
    pub text: String,
    /// Server time of acceptance, Unix milliseconds.
    pub at: i64,
}

/// A person's display name: 1–32 characters in NFC, nothing invisible in
/// it, not the bot's nor a look-alike of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nickname(String);

impl Nickname {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let name = Self(parse_label(raw, NICKNAME_MAX_CHARS)?);
        let (bot_key, bot_shape) = &*BOT_KEYS;
        if name.key() == *bot_key || name.shape() == *bot_shape {
            return Err(InputError::Reserved);
        }
        Ok(name)
    }

    /// The key under which names are unique: the skeleton of the lower-cased
    /// name, so names differing only in case or by look-alike letters
    /// (`alice`, `Alice`, `аlice` in Cyrillic) are the same person.
    pub fn key(&self) -> String {
        skeleton(&self.0.to_lowercase())
    }

    /// The skeleton of the name as written, case kept: a second key, for
    /// look-alikes that lower-casing would tell apart (`aIice` and `alice`).
    pub fn shape(&self) -> String {
        skeleton(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Nickname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A room's name: 1–64 characters in NFC, with the nickname's character
/// rules. Room names are case-sensitive: "Chat Room" and "chat room" are
/// different rooms; but a name that looks like an existing room's (same
/// [`RoomName::key`]) does not make a new room (see `storage`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl RoomName {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        parse_label(raw, ROOM_NAME_MAX_CHARS).map(Self)
    }

    /// The look-alike key: the name's confusable skeleton, case kept (room
    /// names are case-sensitive). Stored with the room, unique.
    pub fn key(&self) -> String {
        skeleton(&self.0)
    }

    /// The key of a room name stored before these rules, which may not
    /// parse any more: its parsed form's key where it parses.
    pub fn key_of_stored(name: &str) -> String {
        match Self::parse(name) {
            Ok(room) => room.key(),
            Err(_) => skeleton(name),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Rooms keyed by name can be looked up by a plain `&str` (same hash, same equality).
impl std::borrow::Borrow<str> for RoomName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text of a chat message: 1–4000 characters after trimming. Newlines and
/// tabs are kept (people paste code and lists); other control characters are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(InputError::Empty);
        }
        if trimmed
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(InputError::ControlCharacter);
        }
        if trimmed.chars().count() > MESSAGE_MAX_CHARS {
            return Err(InputError::TooLong(MESSAGE_MAX_CHARS));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The key a client picks for one message it sends (`send.nonce`), so that
/// resending it after a lost connection cannot store it twice: 1–64 ASCII
/// letters, digits, `-` or `_` (a UUID, a ULID, base64url). Narrow on purpose:
/// it is stored beside every message for a day and appears in logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nonce(String);

impl Nonce {
    pub fn parse(raw: &str) -> Result<Self, BadNonce> {
        let token = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if raw.is_empty() || raw.len() > NONCE_MAX_CHARS || !token {
            return Err(BadNonce);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nickname_is_trimmed_and_bounded() {
        assert_eq!(Nickname::parse("  alice ").unwrap().as_str(), "alice");
        assert_eq!(Nickname::parse("   "), Err(InputError::Empty));
        assert!(Nickname::parse(&"x".repeat(32)).is_ok());
        assert_eq!(
            Nickname::parse(&"x".repeat(33)),
            Err(InputError::TooLong(32))
        );
        // Length counts characters, not bytes.
        assert!(Nickname::parse(&"é".repeat(32)).is_ok());
    }

    #[test]
    fn nickname_refuses_control_characters_and_the_bot() {
        assert_eq!(
            Nickname::parse("al\nice"),
            Err(InputError::ControlCharacter)
        );
        assert_eq!(
            Nickname::parse("a\u{1b}[31m"),
            Err(InputError::ControlCharacter)
        );
        assert_eq!(Nickname::parse("chatterpro bot"), Err(InputError::Reserved));
    }

    #[test]
    fn names_refuse_invisible_and_bidi_characters() {
        for name in ["ali\u{200B}ce", "\u{202E}ecila", "a\u{FEFF}", "x\u{2066}y"] {
            assert_eq!(
                Nickname::parse(name),
                Err(InputError::Invisible),
                "{name:?}"
            );
            assert_eq!(
                RoomName::parse(name),
                Err(InputError::Invisible),
                "{name:?}"
            );
        }
        // Visible non-ASCII is fine.
        assert!(Nickname::parse("Zoë 🚀").is_ok());
        assert!(Nickname::parse("日本語の名前").is_ok());
        assert!(Nickname::parse("Ἀλέξανδρος").is_ok());
    }

    #[test]
    fn names_refuse_blank_looking_characters_and_unusual_spaces() {
        for c in [
            '\u{2800}',  // BRAILLE PATTERN BLANK
            '\u{3164}',  // HANGUL FILLER
            '\u{115F}',  // HANGUL CHOSEONG FILLER
            '\u{1160}',  // HANGUL JUNGSEONG FILLER
            '\u{FFA0}',  // HALFWIDTH HANGUL FILLER
            '\u{1D173}', // MUSICAL SYMBOL BEGIN BEAM
            '\u{1D17A}', // MUSICAL SYMBOL END PHRASE
            '\u{00A0}',  // NO-BREAK SPACE
            '\u{2007}',  // FIGURE SPACE
            '\u{202F}',  // NARROW NO-BREAK SPACE
            '\u{3000}',  // IDEOGRAPHIC SPACE
            '\u{1680}',  // OGHAM SPACE MARK
            '\u{2028}',  // LINE SEPARATOR
            '\u{E000}',  // private use
            '\u{0378}',  // unassigned
            '\u{180E}',  // MONGOLIAN VOWEL SEPARATOR
            '\u{1BCA0}', // SHORTHAND FORMAT LETTER OVERLAP
        ] {
            // (At either end, White_Space is trimmed: "carol\u{a0}" is "carol".)
            let mut names = vec![format!("car{c}ol"), format!("ChatterPro{c}Bot")];
            if !c.is_whitespace() {
                names.push(format!("carol{c}"));
            }
            for name in names {
                assert_eq!(
                    Nickname::parse(&name),
                    Err(InputError::Invisible),
                    "{name:?}"
                );
                assert_eq!(
                    RoomName::parse(&name),
                    Err(InputError::Invisible),
                    "{name:?}"
                );
            }
        }
    }

    #[test]
    fn runs_of_spaces_are_one_space() {
        assert_eq!(Nickname::parse("a   b").unwrap().as_str(), "a b");
        assert_eq!(RoomName::parse("Chat  Room").unwrap().as_str(), "Chat Room");
    }

    #[test]
    fn names_are_kept_in_nfc() {
        let decomposed = Nickname::parse("Jose\u{301}").unwrap();
        assert_eq!(decomposed.as_str(), "Jos\u{e9}");
        assert_eq!(decomposed, Nickname::parse("Jos\u{e9}").unwrap());
        assert_eq!(
            RoomName::parse("Cafe\u{301}").unwrap(),
            RoomName::parse("Caf\u{e9}").unwrap()
        );
    }

    /// Both keys of a name equal to those of `other` in at least one.
    fn clash(a: &str, b: &str) -> bool {
        let (a, b) = (Nickname::parse(a).unwrap(), Nickname::parse(b).unwrap());
        a.key() == b.key() || a.shape() == b.shape()
    }

    #[test]
    fn look_alike_nicknames_are_one_name() {
        for (a, b) in [
            ("alice", "\u{430}lice"),               // Cyrillic а
            ("bob", "\u{FF42}\u{FF4F}\u{FF42}"),    // full-width ｂｏｂ
            ("Jos\u{e9}", "Jose\u{301}"),           // precomposed, decomposed
            ("Alice", "aLICE"),                     // case
            ("alice", "aIice"),                     // capital I for l
            ("paypal", "\u{440}\u{430}y\u{440}al"), // Cyrillic р, а
            ("admin", "\u{430}dmin"),
            ("cam", "carn"), // TS #39 lists "rn" as "m"
        ] {
            assert!(clash(a, b), "{a:?} and {b:?} should be one name");
        }
        for (a, b) in [("alice", "alicia"), ("bob", "rob"), ("Jose", "José")] {
            assert!(!clash(a, b), "{a:?} and {b:?} are different names");
        }
    }

    #[test]
    fn the_bot_and_its_look_alikes_are_reserved() {
        for name in [
            "ChatterPro Bot",
            "chatterpro bot",
            "ChatterPro  Bot",      // two spaces
            "ChatterPr\u{43E} Bot", // Cyrillic о
            "\u{421}hatterPro Bot", // Cyrillic С
            "ChatterPro B\u{43E}t",
            "ChatterPro BOT",
            "ChatterPrо Bоt",
            "Chatter\u{420}ro Bot", // Cyrillic Р
            " ChatterPro Bot ",
        ] {
            assert_eq!(Nickname::parse(name), Err(InputError::Reserved), "{name:?}");
        }
        for name in ["ChatterPro Bot\u{2800}", "ChatterPro\u{a0}Bot"] {
            assert!(Nickname::parse(name).is_err(), "{name:?}");
        }
        assert!(Nickname::parse("ChatterPro Fan").is_ok());
    }

    #[test]
    fn look_alike_room_names_share_a_key_and_case_still_counts() {
        let key = |s: &str| RoomName::parse(s).unwrap().key();
        assert_eq!(key("Chat Room"), key("Chat R\u{43E}\u{43E}m"));
        assert_eq!(key("Chat Room"), key("Chat  Room"));
        assert_eq!(key("Caf\u{e9}"), key("Cafe\u{301}"));
        assert_ne!(key("Chat Room"), key("chat room"));
    }

    #[test]
    fn author_ids_are_exact_in_javascript() {
        for _ in 0..1000 {
            let id = AuthorId::random();
            assert!((1..AuthorId::LIMIT).contains(&id.get()));
            assert_eq!(AuthorId::from_stored(id.to_stored()), id);
        }
    }

    #[test]
    fn nickname_key_ignores_case() {
        assert_eq!(
            Nickname::parse("Alice").unwrap().key(),
            Nickname::parse("aLICE").unwrap().key()
        );
    }

    #[test]
    fn room_name_rules() {
        assert_eq!(
            RoomName::parse(" Chat Room ").unwrap().as_str(),
            "Chat Room"
        );
        assert!(RoomName::parse(&"r".repeat(64)).is_ok());
        assert_eq!(
            RoomName::parse(&"r".repeat(65)),
            Err(InputError::TooLong(64))
        );
        assert_eq!(RoomName::parse(""), Err(InputError::Empty));
        assert_eq!(RoomName::parse("a\tb"), Err(InputError::ControlCharacter));
    }

    #[test]
    fn message_text_keeps_newlines_but_not_other_controls() {
        assert_eq!(
            MessageText::parse("  line one\nline two  ")
                .unwrap()
                .as_str(),
            "line one\nline two"
        );
        assert_eq!(MessageText::parse(" \n "), Err(InputError::Empty));
        assert_eq!(
            MessageText::parse("a\u{0}b"),
            Err(InputError::ControlCharacter)
        );
        assert!(MessageText::parse(&"m".repeat(4000)).is_ok());
        assert_eq!(
            MessageText::parse(&"m".repeat(4001)),
            Err(InputError::TooLong(4000))
        );
    }

    #[test]
    fn nonce_rules() {
        let uuid = "0192f1c2-7a3b-7c4d-8e5f-60718293a4b5";
        assert_eq!(Nonce::parse(uuid).unwrap().as_str(), uuid);
        assert!(Nonce::parse("01JABCDEFGHJKMNPQRSTVWXYZ_").is_ok());
        assert!(Nonce::parse(&"n".repeat(64)).is_ok());
        let too_long = "n".repeat(65);
        for bad in [
            "",
            &too_long,
            " a",
            "a b",
            "a\n",
            "é",
            "a/b",
            "a\u{200B}b",
            "a.b",
        ] {
            assert_eq!(Nonce::parse(bad), Err(BadNonce), "{bad:?}");
        }
    }
}
