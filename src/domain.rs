//! Newtypes that parse user input once, at the edge, so the rest of the server
//! can trust a `Nickname`, `RoomName` or `MessageText` without re-checking it.
//!
//! Lengths count Unicode scalar values (what a person perceives as characters
//! closely enough for limits), after trimming surrounding whitespace.

use std::fmt;

/// Name of the server's own bot; no person may take it.
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
    #[error("must not contain control or invisible characters")]
    ControlCharacter,
    #[error("is reserved")]
    Reserved,
}

/// Why a nonce was refused: it breaks the one rule of [`Nonce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 1–64 ASCII letters, digits, '-' or '_'")]
pub struct BadNonce;

/// Zero-width, bidirectional-control and other invisible formatting
/// characters (Unicode category Cf and the default-ignorable code points
/// that matter in practice).
fn is_invisible(c: char) -> bool {
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
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Trims `raw` and checks it is a one-line label of 1..=`max` characters.
fn parse_label(raw: &str, max: usize) -> Result<String, InputError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(InputError::Empty);
    }
    // Control characters (newlines included) in names could forge log lines
    // or break the layout of every member's screen; invisible and
    // direction-changing characters let "ali\u{200B}ce" pass for "alice".
    if trimmed.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(InputError::ControlCharacter);
    }
    if trimmed.chars().count() > max {
        return Err(InputError::TooLong(max));
    }
    Ok(trimmed.to_owned())
}

/// A person's display name: 1–32 characters, no control characters, not the bot's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nickname(String);

impl Nickname {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let name = parse_label(raw, NICKNAME_MAX_CHARS)?;
        if name.to_lowercase() == BOT_NAME.to_lowercase() {
            return Err(InputError::Reserved);
        }
        Ok(Self(name))
    }

    /// The key under which names are unique: names differing only in case are the same person.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
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

/// A room's name: 1–64 characters, no control characters. Room names are
/// case-sensitive: "Chat Room" and "chat room" are different rooms.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl RoomName {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        parse_label(raw, ROOM_NAME_MAX_CHARS).map(Self)
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
                Err(InputError::ControlCharacter),
                "{name:?}"
            );
            assert_eq!(
                RoomName::parse(name),
                Err(InputError::ControlCharacter),
                "{name:?}"
            );
        }
        // Visible non-ASCII is fine.
        assert!(Nickname::parse("Zoë 🚀").is_ok());
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
