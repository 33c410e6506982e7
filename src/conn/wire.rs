//! Reading client WebSocket frames (RFC 6455) out of a connection's input bytes.
//!
//! tungstenite parses each frame header (and refuses reserved opcodes); this
//! module applies the rules a server must enforce on top (client frames are
//! masked, control frames are short and unfragmented, text is UTF-8, no
//! extensions were negotiated, a close frame's body is a status code an
//! endpoint may send and a UTF-8 reason) and joins fragments. It owns no
//! socket and no clock: the connection feeds it bytes (and times how long a
//! message takes, with [`Decoder::in_message`]), which keeps it testable
//! and lets an idle connection hold no buffer at all.

use std::io::Cursor;

use bytes::{Bytes, BytesMut};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::protocol::MAX_FRAME_BYTES;
use crate::protocol::close::{self, INVALID_PAYLOAD, PROTOCOL_ERROR};

/// One complete thing the client said.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole text message (fragments joined), checked to be UTF-8.
    Text(Bytes),
    Ping(Bytes),
    Pong,
    /// The client's close frame, with its status code if it gave one
    /// (checked: a code an endpoint may send, and a UTF-8 reason): it will
    /// send nothing more.
    Close(Option<u16>),
}

/// Why the connection must close; `code` is the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// Longest control-frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Splits input into [`Incoming`] items. Holds only the fragments of a
/// message still being received, which is empty (unallocated) almost always.
#[derive(Debug, Default)]
pub struct Decoder {
    fragments: Option<BytesMut>,
}

impl Decoder {
    /// Whether a fragmented message has begun and not ended: its frames so
    /// far are held here, and the connection's clock for the message keeps
    /// running across the control frames it may carry in between.
    pub fn in_message(&self) -> bool {
        self.fragments.is_some()
    }

    /// How many more bytes the frame at the start of `input` needs, at
    /// least; lets the reader size one read for a large frame.
    pub fn wanted(input: &[u8]) -> usize {
        match FrameHeader::parse(&mut Cursor::new(input)) {
            Ok(Some((header, len))) => {
                let total = (header.len(len) as u64).saturating_add(len);
                usize::try_from(total)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(input.len())
            }
            _ => 0,
        }
    }

    /// Takes the next complete item off the front of `input`, or `None`
    /// when more bytes are needed (nothing is consumed then).
    pub fn next(&mut self, input: &mut BytesMut) -> Result<Option<Incoming>, Violation> {
        loop {
            let mut cursor = Cursor::new(&input[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                Err(_) => return Err(violation(PROTOCOL_ERROR, "invalid frame header")),
            };
            let header_len = cursor.position() as usize;
            self.check(&header, len)?;
            // `check` bounds `len` by the frame limit, so this cannot overflow.
            let len = len as usize;
            if input.len() < header_len + len {
                return Ok(None);
            }
            let _ = input.split_to(header_len);
            let mut payload = input.split_to(len);
            let mask = header.mask.expect("checked: client frames are masked");
            unmask(&mut payload, mask);
            match header.opcode {
                OpCode::Control(Control::Ping) => {
                    return Ok(Some(Incoming::Ping(payload.freeze())));
                }
                OpCode::Control(Control::Pong) => return Ok(Some(Incoming::Pong)),
                OpCode::Control(Control::Close) => return close_frame(&payload).map(Some),
                OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                    unreachable!("tungstenite refuses reserved opcodes in the header")
                }
                OpCode::Data(Data::Binary) => {
                    return Err(violation(
                        close::UNSUPPORTED_DATA,
                        "binary frames are not supported",
                    ));
                }
                OpCode::Data(Data::Text) if header.is_final => return text(payload),
                OpCode::Data(Data::Text) => self.fragments = Some(payload),
                OpCode::Data(Data::Continue) => {
                    let Some(mut fragments) = self.fragments.take() else {
                        unreachable!("checked: a continuation follows a first fragment");
                    };
                    fragments.unsplit(payload);
                    if header.is_final {
                        return text(fragments);
                    }
                    self.fragments = Some(fragments);
                }
            }
        }
    }

    fn check(&self, header: &FrameHeader, len: u64) -> Result<(), Violation> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(violation(PROTOCOL_ERROR, "no extension was negotiated"));
        }
        if header.mask.is_none() {
            return Err(violation(PROTOCOL_ERROR, "client frames must be masked"));
        }
        match header.opcode {
            OpCode::Control(_) => {
                if !header.is_final || len > MAX_CONTROL_PAYLOAD {
                    return Err(violation(PROTOCOL_ERROR, "invalid control frame"));
                }
            }
            OpCode::Data(data) => {
                let continuation = matches!(data, Data::Continue);
                if continuation != self.fragments.is_some() {
                    return Err(violation(PROTOCOL_ERROR, "unexpected fragment"));
                }
                let so_far = self.fragments.as_ref().map_or(0, |f| f.len()) as u64;
                // `len` is the client's 64-bit claim: it must not wrap.
                if so_far.saturating_add(len) > MAX_FRAME_BYTES as u64 {
                    return Err(violation(close::TOO_BIG, "frame larger than 64 KiB"));
                }
            }
        }
        Ok(())
    }
}

/// The body of a close frame (RFC 6455 §5.5.1): empty, or a status code
/// (§7.4) followed by a UTF-8 reason.
fn close_frame(payload: &[u8]) -> Result<Incoming, Violation> {
    match payload {
        [] => Ok(Incoming::Close(None)),
        [_] => Err(violation(
            PROTOCOL_ERROR,
            "a close frame's body is at least a code",
        )),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !close::may_be_received(code) {
                return Err(violation(PROTOCOL_ERROR, "invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(violation(INVALID_PAYLOAD, "close reason is not UTF-8"));
            }
            Ok(Incoming::Close(Some(code)))
        }
    }
}

fn text(payload: BytesMut) -> Result<Option<Incoming>, Violation> {
    if std::str::from_utf8(&payload).is_err() {
        return Err(violation(INVALID_PAYLOAD, "text is not UTF-8"));
    }
    Ok(Some(Incoming::Text(payload.freeze())))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: FIN flag, opcode, masked payload.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn decode_all(bytes: &[u8]) -> (Vec<Incoming>, Option<Violation>, usize) {
        let mut input = BytesMut::from(bytes);
        let mut decoder = Decoder::default();
        let mut items = Vec::new();
        loop {
            match decoder.next(&mut input) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return (items, None, input.len()),
                Err(v) => return (items, Some(v), input.len()),
            }
        }
    }

    #[test]
    fn texts_pings_and_close_come_out_in_order() {
        let mut bytes = frame(true, 1, b"{\"type\":\"rooms\"}");
        bytes.extend(frame(true, 9, b"p"));
        bytes.extend(frame(true, 10, b""));
        bytes.extend(frame(true, 8, &close::NORMAL.to_be_bytes()));
        let (items, violation, left) = decode_all(&bytes);
        assert_eq!(
            items,
            vec![
                Incoming::Text(Bytes::from_static(b"{\"type\":\"rooms\"}")),
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Pong,
                Incoming::Close(Some(close::NORMAL)),
            ]
        );
        assert_eq!((violation, left), (None, 0));
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let bytes = frame(true, 1, "héllo".as_bytes());
        for cut in 0..bytes.len() {
            let (items, violation, left) = decode_all(&bytes[..cut]);
            assert!(items.is_empty() && violation.is_none() && left == cut);
            // Header (2 bytes) and mask (4) known: the rest is.
            if cut >= 6 {
                assert_eq!(Decoder::wanted(&bytes[..cut]), bytes.len() - cut);
            }
        }
    }

    #[test]
    fn fragments_are_joined_and_may_carry_control_frames_between() {
        let mut bytes = frame(false, 1, b"hel");
        bytes.extend(frame(true, 9, b""));
        bytes.extend(frame(false, 0, b"lo "));
        bytes.extend(frame(true, 0, b"there"));
        let (items, violation, _) = decode_all(&bytes);
        assert_eq!(violation, None);
        assert_eq!(
            items,
            vec![
                Incoming::Ping(Bytes::new()),
                Incoming::Text(Bytes::from_static(b"hello there")),
            ]
        );
    }

    #[test]
    fn rule_breakers_get_the_right_close_code() {
        let unmasked = b"\x81\x02{}".to_vec();
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, PROTOCOL_ERROR),
            (frame(true, 2, b"bin"), close::UNSUPPORTED_DATA),
            (frame(true, 1, &[0xff, 0xfe]), INVALID_PAYLOAD),
            (frame(true, 0, b"orphan"), PROTOCOL_ERROR),
            (frame(false, 9, b""), PROTOCOL_ERROR),
            (frame(true, 9, &[0; 126]), PROTOCOL_ERROR),
            (frame(true, 3, b""), PROTOCOL_ERROR),
            (frame(true, 0x41, b"x"), PROTOCOL_ERROR),
            (
                frame(true, 1, &vec![b'a'; MAX_FRAME_BYTES + 1]),
                close::TOO_BIG,
            ),
            (
                [frame(false, 1, b"a"), frame(true, 1, b"b")].concat(),
                PROTOCOL_ERROR,
            ),
            (
                [
                    frame(false, 1, &vec![b'a'; MAX_FRAME_BYTES]),
                    frame(true, 0, b"b"),
                ]
                .concat(),
                close::TOO_BIG,
            ),
        ];
        for (bytes, code) in cases {
            let (items, violation, _) = decode_all(&bytes);
            assert!(items.is_empty(), "{items:?}");
            assert_eq!(violation.map(|v| v.code), Some(code), "{:x?}", &bytes[..2]);
        }
    }

    /// The close frame's verdict: the code it was accepted with, or the
    /// close code of the violation.
    fn close_verdict(body: &[u8]) -> Result<Option<u16>, u16> {
        match decode_all(&frame(true, 8, body)) {
            (items, None, 0) => match items.as_slice() {
                [Incoming::Close(code)] => Ok(*code),
                other => panic!("{other:?}"),
            },
            (items, Some(violation), _) if items.is_empty() => Err(violation.code),
            other => panic!("{other:?}"),
        }
    }

    fn with_code(code: u16, reason: &[u8]) -> Vec<u8> {
        [&code.to_be_bytes()[..], reason].concat()
    }

    #[test]
    fn close_frames_carry_nothing_or_an_allowed_code_and_a_utf8_reason() {
        assert_eq!(close_verdict(b""), Ok(None));
        assert_eq!(close_verdict(&[3]), Err(PROTOCOL_ERROR));
        for code in close::RECEIVABLE_EDGES {
            assert_eq!(
                close_verdict(&with_code(code, b"")),
                Ok(Some(code)),
                "{code}"
            );
            assert_eq!(
                close_verdict(&with_code(code, "bye ✓".as_bytes())),
                Ok(Some(code))
            );
        }
        for code in close::UNRECEIVABLE_EDGES {
            assert_eq!(
                close_verdict(&with_code(code, b"")),
                Err(PROTOCOL_ERROR),
                "{code}"
            );
        }
        for reason in [&[0xff][..], &[b'o', b'k', 0xc3], &[0xed, 0xa0, 0x80]] {
            assert_eq!(
                close_verdict(&with_code(close::NORMAL, reason)),
                Err(INVALID_PAYLOAD),
                "{reason:x?}"
            );
        }
    }

    #[test]
    fn in_message_lasts_from_the_first_fragment_to_the_last() {
        let mut decoder = Decoder::default();
        let mut input = BytesMut::from(&frame(false, 1, b"he")[..]);
        assert_eq!(decoder.next(&mut input), Ok(None));
        assert!(decoder.in_message());
        input.extend_from_slice(&frame(true, 9, b""));
        assert_eq!(
            decoder.next(&mut input),
            Ok(Some(Incoming::Ping(Bytes::new())))
        );
        assert!(
            decoder.in_message(),
            "a ping between fragments does not end the message"
        );
        input.extend_from_slice(&frame(true, 0, b"y"));
        assert_eq!(
            decoder.next(&mut input),
            Ok(Some(Incoming::Text(Bytes::from_static(b"hey"))))
        );
        assert!(!decoder.in_message());
    }

    #[test]
    fn an_oversize_frame_is_refused_from_its_header_alone() {
        let bytes = frame(true, 1, &vec![b'a'; MAX_FRAME_BYTES + 1]);
        let (_, violation, _) = decode_all(&bytes[..14]);
        assert_eq!(violation.map(|v| v.code), Some(close::TOO_BIG));
    }

    /// Just the header of a masked frame claiming a 64-bit `len`.
    fn header_claiming(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode, 0x80 | 127];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[1, 2, 3, 4]);
        out
    }

    #[test]
    fn lengths_near_the_top_of_u64_are_refused_not_overflowed() {
        for len in [u64::MAX, u64::MAX - 1, 1 << 63] {
            // Alone, and as the continuation of a message already begun.
            for bytes in [
                header_claiming(true, 1, len),
                [frame(false, 1, b"a"), header_claiming(true, 0, len)].concat(),
            ] {
                let (items, violation, _) = decode_all(&bytes);
                assert!(items.is_empty(), "{items:?}");
                assert_eq!(violation.map(|v| v.code), Some(close::TOO_BIG), "{len}");
            }
            // The reader clamps this to one frame's worth; it must not wrap to a small number.
            let wanted = Decoder::wanted(&header_claiming(true, 1, len));
            assert!(wanted > MAX_FRAME_BYTES, "{len}: {wanted}");
        }
    }

    #[test]
    fn the_largest_allowed_frame_passes() {
        let bytes = frame(true, 1, &vec![b'a'; MAX_FRAME_BYTES]);
        let (items, violation, _) = decode_all(&bytes);
        assert_eq!((items.len(), violation), (1, None));
    }

    /// The fuzz harness of the frame decoder (cargo-fuzz needs nightly;
    /// proptest runs everywhere). `cargo test` runs a few hundred cases of
    /// each property; `scripts/fuzz` runs a million (`PROPTEST_CASES`).
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

        /// Up to `max` characters of any kind (cheaper to generate than a
        /// regex strategy: a million inputs are run).
        fn text(max: usize) -> impl Strategy<Value = String> {
            prop::collection::vec(any::<char>(), 0..=max).prop_map(String::from_iter)
        }

        /// Close bodies worth trying: every class of code, odd lengths,
        /// reasons valid and not.
        fn close_body() -> impl Strategy<Value = Vec<u8>> {
            let code = prop_oneof![
                prop::sample::select([close::RECEIVABLE_EDGES, close::UNRECEIVABLE_EDGES].concat()),
                any::<u16>(),
            ];
            let reason = prop_oneof![
                text(20).prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..8),
            ];
            prop_oneof![
                1 => Just(Vec::new()),
                1 => any::<u8>().prop_map(|b| vec![b]),
                6 => (code, reason).prop_map(|(code, reason)| [&code.to_be_bytes()[..], &reason].concat()),
            ]
        }

        /// One piece of input: mostly frames close to the rules (any of
        /// them may break one), sometimes a header claiming a length it
        /// does not bring, sometimes plain garbage.
        fn piece() -> impl Strategy<Value = Vec<u8>> {
            let opcode = prop_oneof![
                8 => prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
                1 => 0u8..16,
            ];
            let payload = prop_oneof![
                4 => text(30).prop_map(String::into_bytes),
                4 => prop::collection::vec(any::<u8>(), 0..40),
                3 => close_body(),
                // The edges: empty, the control-frame limit, the first
                // 16-bit length, the message limit.
                1 => (0usize..4).prop_map(|n| vec![b' '; [0, 125, 126, MAX_FRAME_BYTES][n]]),
            ];
            let frame = (
                prop::bool::weighted(0.7),
                prop::bool::weighted(0.05),
                prop::bool::weighted(0.95),
                opcode,
                payload,
            )
                .prop_map(|(fin, rsv, masked, opcode, payload)| {
                    let mut bytes = frame(fin, opcode, &payload);
                    if rsv {
                        bytes[0] |= 0x40;
                    }
                    if !masked {
                        // Drop the mask bit and the mask (payload left masked:
                        // it is garbage either way).
                        bytes[1] &= 0x7f;
                        let at = bytes.len() - payload.len() - 4;
                        bytes.drain(at..at + 4);
                    }
                    bytes
                });
            let lying_header = (any::<bool>(), 0u8..16, any::<u64>(), any::<bool>()).prop_map(
                |(fin, opcode, len, small)| {
                    let len = if small { len % 70_000 } else { len };
                    header_claiming(fin, opcode, len)
                },
            );
            prop_oneof![
                12 => frame,
                2 => lying_header,
                1 => prop::collection::vec(any::<u8>(), 0..16),
            ]
        }

        /// Bytes to decode: pieces, then a few bytes overwritten.
        fn input() -> impl Strategy<Value = Vec<u8>> {
            (
                prop::collection::vec(piece(), 0..8),
                prop::collection::vec((any::<Index>(), any::<u8>()), 0..3),
            )
                .prop_map(|(pieces, flips)| {
                    let mut bytes = pieces.concat();
                    if !bytes.is_empty() {
                        for (at, byte) in flips {
                            let i = at.index(bytes.len());
                            bytes[i] = byte;
                        }
                    }
                    bytes
                })
        }

        /// Decodes `bytes` fed in chunks of these sizes (cycled), as reads
        /// would; stops at the first violation.
        fn decode_in_chunks(bytes: &[u8], sizes: &[usize]) -> (Vec<Incoming>, Option<Violation>) {
            let mut decoder = Decoder::default();
            let mut input = BytesMut::new();
            let mut items = Vec::new();
            let mut fed = 0;
            for size in sizes.iter().cycle() {
                let end = (fed + size).min(bytes.len());
                // What a read would be sized by must not panic either.
                let _ = Decoder::wanted(&input);
                input.extend_from_slice(&bytes[fed..end]);
                fed = end;
                loop {
                    match decoder.next(&mut input) {
                        Ok(Some(item)) => items.push(item),
                        Ok(None) => break,
                        Err(violation) => return (items, Some(violation)),
                    }
                }
                if fed == bytes.len() {
                    return (items, None);
                }
            }
            unreachable!("`sizes` is never empty")
        }

        proptest! {
            #![proptest_config(config())]

            /// Any input: no panic; how the bytes are cut into reads
            /// changes nothing; whatever comes out obeys the rules.
            #[test]
            fn fuzz_frame_decoder(
                bytes in input(),
                sizes in prop::collection::vec(1usize..200, 1..6),
            ) {
                let whole = decode_in_chunks(&bytes, &[bytes.len().max(1)]);
                let chunked = decode_in_chunks(&bytes, &sizes);
                prop_assert_eq!(&chunked, &whole);
                for item in &whole.0 {
                    match item {
                        Incoming::Text(text) => {
                            prop_assert!(text.len() <= MAX_FRAME_BYTES);
                            prop_assert!(std::str::from_utf8(text).is_ok());
                        }
                        Incoming::Ping(payload) => prop_assert!(payload.len() <= 125),
                        Incoming::Pong | Incoming::Close(None) => {}
                        Incoming::Close(Some(code)) => prop_assert!(close::may_be_received(*code)),
                    }
                }
                if let Some(violation) = whole.1 {
                    prop_assert!(
                        [PROTOCOL_ERROR, close::UNSUPPORTED_DATA, INVALID_PAYLOAD, close::TOO_BIG]
                            .contains(&violation.code)
                    );
                }
            }

            /// Well-formed input: messages cut into fragments at any
            /// points, with pings between fragments, come out whole and in
            /// order, however the bytes are cut into reads.
            #[test]
            fn fuzz_frame_decoder_joins_what_it_should(
                messages in prop::collection::vec(
                    (text(40), prop::collection::vec(any::<Index>(), 0..4), any::<bool>()),
                    0..5,
                ),
                sizes in prop::collection::vec(1usize..100, 1..6),
            ) {
                let mut bytes = Vec::new();
                let mut expected = Vec::new();
                for (text, cuts, ping) in &messages {
                    let mut cuts: Vec<usize> =
                        cuts.iter().map(|cut| cut.index(text.len() + 1)).collect();
                    cuts.sort_unstable();
                    cuts.dedup();
                    let mut bounds = vec![0];
                    bounds.extend(cuts);
                    bounds.push(text.len());
                    let pieces: Vec<&[u8]> =
                        bounds.windows(2).map(|w| &text.as_bytes()[w[0]..w[1]]).collect();
                    for (i, piece) in pieces.iter().enumerate() {
                        let opcode = if i == 0 { 1 } else { 0 };
                        bytes.extend(frame(i == pieces.len() - 1, opcode, piece));
                        if *ping && i < pieces.len() - 1 {
                            bytes.extend(frame(true, 9, &[i as u8]));
                            expected.push(Incoming::Ping(Bytes::from(vec![i as u8])));
                        }
                    }
                    expected.push(Incoming::Text(Bytes::from(text.clone())));
                }
                prop_assert_eq!(decode_in_chunks(&bytes, &sizes), (expected, None));
            }
        }
    }
}
