//! RFC 6455 against the real server, rule by rule: a raw TCP client writes
//! hand-made frames (a WebSocket library will not send the broken ones) and
//! reads the server's answer byte by byte. Each test is named after the rule
//! it checks and cites its section.
//!
//! Every refusal is checked the whole way: the close code, then the closing
//! handshake (§7.1.1) — the client answers with its own close frame and the
//! server then ends the TCP connection with FIN, not with a reset.

use std::time::{Duration, Instant};

use chatterpro::protocol::close;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app, spawn_app_with, unlimited};
use crate::wire::{RawClient, ServerFrame, close_frame, frame, header, text};

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CONTINUATION: u8 = 0;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

/// The most a clean end may take: the server's grace for the client's
/// close frame (2 s) and a margin for a loaded machine.
const CLEAN_END: Duration = Duration::from_secs(6);

/// Sends `bytes` on a fresh connection; returns the server's close code
/// after the closing handshake ended cleanly (see the module comment).
async fn closes_with(app: &TestApp, bytes: &[u8]) -> u16 {
    let mut client = RawClient::connect(app, b"").await;
    client.send(bytes).await;
    let code = client.close_code().await;
    // The server may already have ended the connection (a reset only if
    // it failed to read what was sent); the end is checked below.
    client.try_send(&close_frame(close::NORMAL, b"")).await;
    client.expect_clean_end(CLEAN_END).await;
    code
}

/// Sends a request and expects the answer to it (before `hello` that is a
/// `no_identity` error, with the request's `ref`): the connection is open
/// and reading. Skips pongs.
async fn still_serves(client: &mut RawClient, r#ref: &str) {
    client
        .send(&text(&format!(r#"{{"type":"rooms","ref":"{ref}"}}"#)))
        .await;
    assert_eq!(next_text(client).await["ref"], r#ref);
}

/// The next text frame (a reply: requests here are answered by their
/// `ref`, with an error before `hello`). Skips pongs.
async fn next_text(client: &mut RawClient) -> Value {
    loop {
        match client.next().await {
            ServerFrame::Text(reply) => return reply,
            ServerFrame::Pong(_) => {}
            ServerFrame::Close(code) => panic!("closed with {code}"),
        }
    }
}

// ---------------------------------------------------------------------------
// §5.1–5.2: framing

/// §5.1: "a client MUST mask all frames that it sends to the server"; the
/// server closes on an unmasked one (1002).
#[tokio::test]
async fn client_frames_must_be_masked_5_1() {
    let app = spawn_app().await;
    for opcode in [TEXT, PING, CLOSE] {
        let payload: &[u8] = if opcode == CLOSE { &[3, 232] } else { b"{}" };
        let code = closes_with(&app, &frame(true, opcode, payload, false)).await;
        assert_eq!(code, close::PROTOCOL_ERROR, "opcode {opcode}");
    }
}

/// §5.2: RSV1–3 "MUST be 0 unless an extension is negotiated" (none is).
#[tokio::test]
async fn rsv_bits_need_a_negotiated_extension_5_2() {
    let app = spawn_app().await;
    for bit in [0x40, 0x20, 0x10] {
        let mut bytes = text(r#"{"type":"rooms"}"#);
        bytes[0] |= bit;
        assert_eq!(
            closes_with(&app, &bytes).await,
            close::PROTOCOL_ERROR,
            "bit {bit:#x}"
        );
    }
}

/// §5.2: opcodes 3–7 and 0xB–0xF are reserved; receiving one fails the
/// connection.
#[tokio::test]
async fn reserved_opcodes_are_refused_5_2() {
    let app = spawn_app().await;
    for opcode in (3..=7).chain(0xb..=0xf) {
        let code = closes_with(&app, &frame(true, opcode, b"", true)).await;
        assert_eq!(code, close::PROTOCOL_ERROR, "opcode {opcode:#x}");
    }
}

// ---------------------------------------------------------------------------
// §5.4: fragmentation

/// §5.4: a message may come in any number of fragments, empty ones included.
#[tokio::test]
async fn a_message_may_span_many_fragments_5_4() {
    let app = spawn_app().await;
    let mut client = RawClient::connect(&app, b"").await;
    let request = br#"{"type":"rooms","ref":"frag"}"#;
    let mut bytes = frame(false, TEXT, b"", true);
    for piece in request.chunks(3) {
        bytes.extend(frame(false, CONTINUATION, piece, true));
        bytes.extend(frame(false, CONTINUATION, b"", true));
    }
    bytes.extend(frame(true, CONTINUATION, b"", true));
    client.send(&bytes).await;
    assert_eq!(next_text(&mut client).await["ref"], "frag");
}

/// §5.4: a continuation frame only continues a message begun by a text or
/// binary frame without FIN.
#[tokio::test]
async fn a_continuation_without_a_message_is_refused_5_4() {
    let app = spawn_app().await;
    for fin in [true, false] {
        let code = closes_with(&app, &frame(fin, CONTINUATION, b"{}", true)).await;
        assert_eq!(code, close::PROTOCOL_ERROR, "fin {fin}");
    }
    // Also right after a message that was complete.
    let bytes = [
        text(r#"{"type":"rooms"}"#),
        frame(true, CONTINUATION, b"", true),
    ]
    .concat();
    assert_eq!(closes_with(&app, &bytes).await, close::PROTOCOL_ERROR);
}

/// §5.4: the fragments of one message are not interleaved with another
/// message: a new text frame before the last fragment is refused.
#[tokio::test]
async fn a_new_message_inside_a_fragmented_one_is_refused_5_4() {
    let app = spawn_app().await;
    for second in [
        frame(true, TEXT, b"}", true),
        frame(false, TEXT, b"}", true),
        frame(true, BINARY, b"}", true),
    ] {
        let bytes = [frame(false, TEXT, b"{", true), second].concat();
        let code = closes_with(&app, &bytes).await;
        assert!(
            code == close::PROTOCOL_ERROR || code == close::UNSUPPORTED_DATA,
            "{code}"
        );
    }
}

// ---------------------------------------------------------------------------
// §5.5: control frames

/// §5.5: "All control frames MUST have a payload length of 125 bytes or
/// less": 125 is answered, 126 refused.
#[tokio::test]
async fn control_frames_carry_at_most_125_bytes_5_5() {
    let app = spawn_app().await;
    let mut client = RawClient::connect(&app, b"").await;
    let payload: Vec<u8> = (0..125).collect();
    client.send(&frame(true, PING, &payload, true)).await;
    assert_eq!(client.next().await, ServerFrame::Pong(payload));

    for opcode in [PING, PONG, CLOSE] {
        let mut payload = vec![b'a'; 126];
        payload[..2].copy_from_slice(&1000u16.to_be_bytes());
        let code = closes_with(&app, &frame(true, opcode, &payload, true)).await;
        assert_eq!(code, close::PROTOCOL_ERROR, "opcode {opcode}");
    }
}

/// §5.5: "Control frames themselves MUST NOT be fragmented."
#[tokio::test]
async fn control_frames_are_never_fragmented_5_5() {
    let app = spawn_app().await;
    for opcode in [PING, PONG, CLOSE] {
        let code = closes_with(&app, &frame(false, opcode, b"", true)).await;
        assert_eq!(code, close::PROTOCOL_ERROR, "opcode {opcode}");
    }
}

/// §5.4: "Control frames MAY be injected in the middle of a fragmented
/// message": a ping between fragments is answered at once, the message
/// still arrives whole.
#[tokio::test]
async fn control_frames_may_come_between_fragments_5_4() {
    let app = spawn_app().await;
    let mut client = RawClient::connect(&app, b"").await;
    let request = br#"{"type":"rooms","ref":"mid"}"#;
    let mut bytes = frame(false, TEXT, &request[..8], true);
    bytes.extend(frame(true, PING, b"between", true));
    bytes.extend(frame(false, CONTINUATION, &request[8..16], true));
    bytes.extend(frame(true, PONG, b"unasked", true));
    bytes.extend(frame(true, CONTINUATION, &request[16..], true));
    client.send(&bytes).await;
    assert_eq!(client.next().await, ServerFrame::Pong(b"between".to_vec()));
    assert_eq!(next_text(&mut client).await["ref"], "mid");
}

/// §5.5.2–5.5.3: a ping is answered with a pong carrying the same payload;
/// an unsolicited pong needs no answer.
#[tokio::test]
async fn pings_get_pongs_with_their_payload_and_pongs_need_nothing_5_5_2() {
    let app = spawn_app().await;
    let mut client = RawClient::connect(&app, b"").await;
    client.send(&frame(true, PONG, b"unsolicited", true)).await;
    for payload in [&b""[..], b"x", &[0xff, 0x00, 0x80]] {
        client.send(&frame(true, PING, payload, true)).await;
        assert_eq!(client.next().await, ServerFrame::Pong(payload.to_vec()));
    }
    still_serves(&mut client, "after pongs").await;
}

// ---------------------------------------------------------------------------
// §5.5.1, §7.4: close frames

/// §5.5.1: a close frame may have no body; the server answers with its own
/// close frame (1000) and ends the connection.
#[tokio::test]
async fn a_close_frame_may_have_no_body_5_5_1() {
    let app = spawn_app().await;
    let mut client = RawClient::connect(&app, b"").await;
    client.send(&frame(true, CLOSE, b"", true)).await;
    assert_eq!(client.close_code().await, close::NORMAL);
    client.expect_clean_end(CLEAN_END).await;
}

/// §5.5.1: a body, if any, starts with a 2-byte status code: a 1-byte body
/// is a protocol error.
#[tokio::test]
async fn a_close_body_of_one_byte_is_refused_5_5_1() {
    let app = spawn_app().await;
    assert_eq!(
        closes_with(&app, &frame(true, CLOSE, &[3], true)).await,
        close::PROTOCOL_ERROR
    );
}

/// §7.4.1–7.4.2: codes below 1000, 1004 (reserved), 1005, 1006 and 1015
/// (never sent: they describe a close to the application), 1016–2999
/// (reserved for future RFCs) and 5000 and above are not codes an endpoint
/// may send; receiving one fails the connection (1002).
#[tokio::test]
async fn close_codes_no_endpoint_may_send_are_refused_7_4() {
    let app = spawn_app().await;
    for code in [
        0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let answer = closes_with(&app, &close_frame(code, b"")).await;
        assert_eq!(answer, close::PROTOCOL_ERROR, "close code {code}");
    }
}

/// §5.5.1: "the endpoint typically echos the status code it received":
/// the codes defined by RFC 6455 and registered with IANA (1000–1003,
/// 1007–1014) and those for libraries and applications (3000–4999), with
/// or without a reason, are echoed — and not counted as the server's own
/// closes in the metrics (the client picks them).
#[tokio::test]
async fn close_codes_in_use_are_echoed_5_5_1() {
    let app = spawn_app().await;
    let codes = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ];
    for (i, code) in codes.into_iter().enumerate() {
        let mut client = RawClient::connect(&app, b"").await;
        let reason = if i % 2 == 0 { "" } else { "fin ✓" };
        client.send(&close_frame(code, reason.as_bytes())).await;
        assert_eq!(client.close_code().await, code, "reason {reason:?}");
        client.expect_clean_end(CLEAN_END).await;
    }
    // The longest reason a control frame has room for.
    let mut client = RawClient::connect(&app, b"").await;
    client.send(&close_frame(close::NORMAL, &[b'r'; 123])).await;
    assert_eq!(client.close_code().await, close::NORMAL);
    client.expect_clean_end(CLEAN_END).await;

    for code in [3000, 4999, 1002] {
        let series = format!("chatterpro_server_closes_total{{code=\"{code}\"}}");
        assert_eq!(app.metric(&series).await, None, "{series}");
    }
}

/// §7.4 with §8.1: a close reason is UTF-8; one that is not fails the
/// connection with 1007.
#[tokio::test]
async fn a_close_reason_must_be_utf8_8_1() {
    let app = spawn_app().await;
    for reason in [&[0xff][..], b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf"] {
        let answer = closes_with(&app, &close_frame(close::NORMAL, reason)).await;
        assert_eq!(answer, close::INVALID_PAYLOAD, "{reason:x?}");
    }
}

// ---------------------------------------------------------------------------
// §8.1: UTF-8

/// §8.1: a text message that is not UTF-8 fails the connection (1007):
/// stray continuation bytes, overlong forms, surrogates, code points past
/// U+10FFFF, bytes never valid, a sequence cut at the end.
#[tokio::test]
async fn text_must_be_utf8_8_1() {
    let app = spawn_app().await;
    let bad: [&[u8]; 7] = [
        &[0x80],
        &[0xc0, 0xaf],
        &[0xe0, 0x80, 0xaf],
        &[0xed, 0xa0, 0x80],
        &[0xf4, 0x90, 0x80, 0x80],
        &[0xfe],
        &[0xe2, 0x82],
    ];
    for sequence in bad {
        let payload = [br#"{"type":"rooms","ref":""#, sequence].concat();
        let code = closes_with(&app, &frame(true, TEXT, &payload, true)).await;
        assert_eq!(code, close::INVALID_PAYLOAD, "{sequence:x?}");
    }
}

/// §8.1 applies to the whole message: a code point may be split across
/// fragments (it is valid once joined), and bytes that are invalid only
/// once joined are refused.
#[tokio::test]
async fn utf8_is_judged_on_the_whole_message_across_fragments_8_1() {
    let app = spawn_app().await;
    let mut client = RawClient::connect(&app, b"").await;
    // 😀 is F0 9F 98 80: split over three fragments.
    let request = r#"{"type":"rooms","ref":"😀"}"#.as_bytes();
    let at = request.iter().position(|&b| b == 0xf0).unwrap();
    let mut bytes = frame(false, TEXT, &request[..at + 1], true);
    bytes.extend(frame(false, CONTINUATION, &request[at + 1..at + 3], true));
    bytes.extend(frame(true, CONTINUATION, &request[at + 3..], true));
    client.send(&bytes).await;
    assert_eq!(next_text(&mut client).await["ref"], "😀");

    // E2 82 alone is a cut sequence; followed by 28 it is invalid.
    let mut bytes = frame(false, TEXT, b"{\"ref\":\"\xe2\x82", true);
    bytes.extend(frame(true, CONTINUATION, b"(\"}", true));
    assert_eq!(closes_with(&app, &bytes).await, close::INVALID_PAYLOAD);
}

// ---------------------------------------------------------------------------
// Limits the server sets (§10.4) and the data it takes (§7.4.1)

/// §10.4: the server limits a message to 64 KiB (1009), whether one frame
/// or its fragments add up to it; the header alone is enough to refuse.
#[tokio::test]
async fn a_message_over_64_kib_is_refused_with_1009_10_4() {
    let app = spawn_app().await;
    let limit = 64 * 1024;
    // One frame claiming one byte too many, its payload never sent.
    let bytes = header(true, TEXT, limit + 1, Some([1, 2, 3, 4]));
    assert_eq!(closes_with(&app, &bytes).await, close::TOO_BIG);
    // Fragments: exactly the limit, then one more byte.
    let mut bytes = frame(false, TEXT, &vec![b' '; limit as usize], true);
    bytes.extend(frame(true, CONTINUATION, b" ", true));
    assert_eq!(closes_with(&app, &bytes).await, close::TOO_BIG);
    // A claimed length with the top bit set (§5.2 forbids it).
    let bytes = header(true, TEXT, 1 << 63, Some([1, 2, 3, 4]));
    assert_eq!(closes_with(&app, &bytes).await, close::TOO_BIG);
}

/// §7.4.1 (1003: "a type of data it cannot accept"): the protocol is JSON
/// text; binary messages are refused, fragmented or not.
#[tokio::test]
async fn binary_messages_are_refused_with_1003_7_4_1() {
    let app = spawn_app().await;
    for fin in [true, false] {
        let code = closes_with(&app, &frame(fin, BINARY, b"{}", true)).await;
        assert_eq!(code, close::UNSUPPORTED_DATA, "fin {fin}");
    }
}

// ---------------------------------------------------------------------------
// §7.1: closing the connection

/// §7.1.1: after its close frame the server waits for the client's, then
/// ends TCP with FIN — also when the offending frame is followed by more
/// bytes than one read takes (a server that drops a socket with unread
/// bytes sends a reset, and the reset discards the close frame).
#[tokio::test]
async fn after_a_violation_the_server_waits_for_the_clients_close_and_ends_with_fin_7_1_1() {
    let app = spawn_app().await;
    let garbage: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    for (what, offending) in [
        ("unmasked", frame(true, TEXT, b"{}", false)),
        ("bad UTF-8", frame(true, TEXT, &[0xff], true)),
        ("binary", frame(true, BINARY, b"x", true)),
        ("1-byte close", frame(true, CLOSE, &[3], true)),
        ("too big", header(true, TEXT, 1 << 20, Some([1, 2, 3, 4]))),
    ] {
        // Followed by nothing, by garbage, and by garbage then more frames.
        for tail in [&[][..], &garbage[..2000], &garbage] {
            let code = closes_with(&app, &[&offending[..], tail].concat()).await;
            assert!(
                [
                    close::PROTOCOL_ERROR,
                    close::UNSUPPORTED_DATA,
                    close::INVALID_PAYLOAD,
                    close::TOO_BIG
                ]
                .contains(&code),
                "{what}: {code}"
            );
        }
    }
}

/// §7.1.1: a client that never answers the close frame is let go after a
/// grace, still with FIN, not at once with a reset.
#[tokio::test]
async fn a_client_that_never_answers_the_close_is_let_go_with_fin_7_1_1() {
    let app = spawn_app().await;
    let mut client = RawClient::connect(&app, b"").await;
    client
        .send(&[&frame(true, TEXT, b"{}", false)[..], &[0x55; 10_000]].concat())
        .await;
    assert_eq!(client.close_code().await, close::PROTOCOL_ERROR);
    let waited = client.expect_clean_end(CLEAN_END).await;
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
}

/// §7.1.2–7.1.3: when the client starts the closing handshake, the server
/// sends what it owes, echoes the close and ends TCP with FIN.
#[tokio::test]
async fn a_client_close_is_answered_and_the_connection_ends_with_fin_7_1_2() {
    let app = spawn_app().await;
    let mut client = RawClient::connect(&app, b"").await;
    let bytes = [
        text(r#"{"type":"rooms","ref":"last"}"#),
        close_frame(close::GOING_AWAY, b"bye"),
    ]
    .concat();
    client.send(&bytes).await;
    assert_eq!(next_text(&mut client).await["ref"], "last");
    assert_eq!(client.close_code().await, close::GOING_AWAY);
    client.expect_clean_end(CLEAN_END).await;
}

// ---------------------------------------------------------------------------
// Time limits on a message (--frame-timeout; §10.4 "limits on frame size")

const FRAME_TIMEOUT: Duration = Duration::from_secs(1);

/// The slow-drip attack: 65,000 bytes of a 65,535-byte frame, then one byte
/// at a time. The message has `--frame-timeout` to complete; past it the
/// connection is closed with 1008 (and the 64 KiB buffer freed).
#[tokio::test]
async fn a_message_must_complete_within_the_frame_timeout() {
    let app = spawn_app_with(|c| c.frame_timeout = FRAME_TIMEOUT).await;
    let mut client = RawClient::connect(&app, b"").await;
    let payload = vec![b' '; 65_535];
    let bytes = frame(true, TEXT, &payload, true);
    let start = Instant::now();
    client.send(&bytes[..65_008]).await;
    let drops: Vec<Vec<u8>> = bytes[65_008..].chunks(1).map(<[u8]>::to_vec).collect();
    let (code, sent) = client
        .drip_until_answered(&drops, Duration::from_millis(100))
        .await;
    let took = start.elapsed();
    assert_eq!(code, close::POLICY_VIOLATION);
    assert!(sent < drops.len(), "the frame was never completed");
    assert!(
        took >= FRAME_TIMEOUT && took < FRAME_TIMEOUT * 4,
        "closed after {took:?}"
    );
    client.try_send(&close_frame(close::NORMAL, b"")).await;
    client.expect_clean_end(CLEAN_END).await;
}

/// The deadline covers a whole message: fragments that each arrive in time
/// (with pings between them) do not extend it.
#[tokio::test]
async fn a_fragmented_message_must_complete_within_the_frame_timeout() {
    let app = spawn_app_with(|c| c.frame_timeout = FRAME_TIMEOUT).await;
    let mut client = RawClient::connect(&app, b"").await;
    let mut pieces = vec![frame(false, TEXT, b"{", true)];
    for _ in 0..40 {
        pieces.push(
            [
                frame(true, PING, b"", true),
                frame(false, CONTINUATION, b" ", true),
            ]
            .concat(),
        );
    }
    let start = Instant::now();
    let (code, sent) = client
        .drip_until_answered(&pieces, Duration::from_millis(100))
        .await;
    assert_eq!(code, close::POLICY_VIOLATION);
    assert!(sent < pieces.len());
    assert!(start.elapsed() >= FRAME_TIMEOUT, "{:?}", start.elapsed());
    client.try_send(&close_frame(close::NORMAL, b"")).await;
    client.expect_clean_end(CLEAN_END).await;
}

/// Each message is timed on its own: a client streaming requests back to
/// back, every write ending inside a frame, for longer than the timeout,
/// is never closed.
#[tokio::test]
async fn back_to_back_messages_are_timed_one_by_one() {
    let app = spawn_app_with(|c| {
        unlimited(c);
        c.frame_timeout = FRAME_TIMEOUT;
    })
    .await;
    let mut client = RawClient::connect(&app, b"").await;
    let count = 50;
    let stream: Vec<u8> = (0..count)
        .flat_map(|i| text(&format!(r#"{{"type":"rooms","ref":"{i}"}}"#)))
        .collect();
    // 50 writes 50 ms apart (2.5 s), each cut in the middle of a frame.
    let step = stream.len() / count;
    let start = Instant::now();
    for piece in stream.chunks(step) {
        client.send(piece).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(start.elapsed() > FRAME_TIMEOUT * 2);
    for i in 0..count {
        assert_eq!(next_text(&mut client).await["ref"], i.to_string());
    }
}

/// Trickled bytes are not a sign of life: only whole frames are. Inside a
/// frame a client cannot send a pong, so a connection dripping one frame
/// is closed at the ping timeout (4000) even when the frame timeout is long.
#[tokio::test]
async fn trickled_bytes_are_no_sign_of_life() {
    let app = spawn_app_with(|c| {
        c.ping_interval = Duration::from_millis(200);
        c.frame_timeout = Duration::from_secs(60);
    })
    .await;
    let mut client = RawClient::connect(&app, b"").await;
    let bytes = frame(true, TEXT, &[b' '; 1000], true);
    let drops: Vec<Vec<u8>> = bytes.chunks(1).map(<[u8]>::to_vec).collect();
    let start = Instant::now();
    let (code, _) = client
        .drip_until_answered(&drops, Duration::from_millis(20))
        .await;
    assert_eq!(code, close::PING_TIMEOUT);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}
