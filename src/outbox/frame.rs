//! A server message, serialized and framed once, shared by every recipient.

use std::sync::Arc;

use bytes::Bytes;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Frame as WsFrame;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// One WebSocket frame exactly as it goes on the wire (server frames are
/// never masked, so the bytes are the same for every recipient): a broadcast
/// is encoded and framed once, then cloned — a reference-count bump — into
/// each recipient's outbox, and written with vectored writes without being
/// copied or re-checked per recipient. Chat messages carry their `seq` so a
/// member who is still catching up can drop what its `joined` reply already holds.
/// Answers ([`Frame::answer`]) are marked: they are what a connection cut
/// off for slowness still receives.
///
/// One pointer wide: the outbox's slots are paid for by every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Arc<Inner>);

#[derive(Debug, PartialEq, Eq)]
struct Inner {
    wire: Bytes,
    /// Where the JSON text starts in `wire` (after the frame header).
    header_len: u8,
    seq: Option<u64>,
    answer: bool,
}

impl Frame {
    /// A text frame holding this JSON.
    pub fn new(text: String) -> Self {
        Self::text(text, None, false)
    }

    /// A `message` frame for the message with this room seq.
    pub fn message(text: String, seq: u64) -> Self {
        Self::text(text, Some(seq), false)
    }

    /// The answer to one of the connection's own requests that it must
    /// get even when it is closed for being too slow (`sent`, `error`):
    /// what tells its client whether to resend. A few hundred bytes; a
    /// client cut off gets these and none of its room frames (see `conn`).
    pub fn answer(text: String) -> Self {
        Self::text(text, None, true)
    }

    fn text(text: String, seq: Option<u64>, answer: bool) -> Self {
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let len = text.len() as u64;
        let header_len = header.len(len);
        let mut wire = Vec::with_capacity(header_len + text.len());
        header
            .format(len, &mut wire)
            .expect("writing to a Vec cannot fail");
        wire.extend_from_slice(text.as_bytes());
        Self(Arc::new(Inner {
            wire: Bytes::from(wire),
            header_len: header_len as u8,
            seq,
            answer,
        }))
    }

    /// A ping (the heartbeat).
    pub fn ping() -> Self {
        Self::control(WsFrame::ping(Bytes::new()))
    }

    /// The answer to a client's ping, echoing its payload.
    pub fn pong(payload: Bytes) -> Self {
        Self::control(WsFrame::pong(payload))
    }

    /// A close frame with this code and reason.
    pub fn close(code: u16, reason: &'static str) -> Self {
        Self::control(WsFrame::close(Some(CloseFrame {
            code: code.into(),
            reason: reason.into(),
        })))
    }

    fn control(frame: WsFrame) -> Self {
        let header_len = frame.header().len(frame.payload().len() as u64);
        let mut wire = Vec::with_capacity(frame.len());
        frame
            .format(&mut wire)
            .expect("writing to a Vec cannot fail");
        Self(Arc::new(Inner {
            wire: Bytes::from(wire),
            header_len: header_len as u8,
            seq: None,
            answer: false,
        }))
    }

    /// Length on the wire, header included.
    pub fn len(&self) -> usize {
        self.0.wire.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.wire.is_empty()
    }

    pub fn seq(&self) -> Option<u64> {
        self.0.seq
    }

    /// Whether this is an [answer](Frame::answer).
    pub fn is_answer(&self) -> bool {
        self.0.answer
    }

    /// The framed bytes to write to the socket.
    pub fn wire(&self) -> &[u8] {
        &self.0.wire
    }

    /// The payload: for data frames, the UTF-8 JSON text.
    pub fn payload(&self) -> &[u8] {
        &self.0.wire[usize::from(self.0.header_len)..]
    }
}

/// Where a write of a run of frames stopped: the next frame to write and
/// how many of its bytes are already on the socket.
pub type Position = (usize, usize);

/// Where a write of `frames` from `at` stops after `written` more bytes.
pub fn advance(frames: &[Frame], (mut next, mut offset): Position, mut written: usize) -> Position {
    while written > 0 {
        let left = frames[next].len() - offset;
        if written >= left {
            written -= left;
            next += 1;
            offset = 0;
        } else {
            offset += written;
            written = 0;
        }
    }
    (next, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::close;

    #[test]
    fn advance_walks_whole_frames_and_stops_inside_one() {
        let frames = [Frame::new("ab".into()), Frame::new("cdef".into())];
        // Each frame is its text plus a 2-byte header: 4 and 6 bytes.
        assert_eq!(advance(&frames, (0, 0), 0), (0, 0));
        assert_eq!(advance(&frames, (0, 0), 4), (1, 0));
        assert_eq!(advance(&frames, (0, 1), 5), (1, 2));
        assert_eq!(advance(&frames, (1, 2), 4), (2, 0));
    }

    #[test]
    fn text_frames_carry_a_short_or_extended_length() {
        let short = Frame::new("{}".to_owned());
        assert_eq!(short.wire(), b"\x81\x02{}");
        assert_eq!(short.payload(), b"{}");

        let long = "x".repeat(300);
        let frame = Frame::message(long.clone(), 7);
        assert_eq!(&frame.wire()[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(frame.payload(), long.as_bytes());
        assert_eq!(frame.seq(), Some(7));
        assert_eq!(frame.len(), 304);
    }

    #[test]
    fn control_frames_are_framed_too() {
        assert_eq!(Frame::ping().wire(), b"\x89\x00");
        assert_eq!(Frame::pong(Bytes::from_static(b"hi")).wire(), b"\x8a\x02hi");
        assert_eq!(
            Frame::close(close::GOING_AWAY, "bye").wire(),
            b"\x88\x05\x03\xe9bye"
        );
    }
}
