//! A lean WebSocket client for the bench's hot receive loops.
//!
//! The fan-out scenario must receive a million frames a second on one core
//! to measure the server rather than itself. tokio-tungstenite allocates a
//! message per frame and re-checks UTF-8; here a connection reads large
//! chunks and hands out each text payload as a slice of them (a
//! reference-count bump, no copy). tungstenite still parses the frame
//! headers and generates the handshake key; only what a client needs is
//! here: text frames, pongs for pings, the close code.

use std::io::Cursor;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::client::{CallError, ConnectError, IncomingText};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

pub struct RawWs {
    stream: TcpStream,
    input: BytesMut,
    /// Pongs not yet written (written before the next send, or whenever the
    /// socket takes them without waiting: receiving stays cancel-safe).
    pending: Vec<u8>,
}

impl RawWs {
    /// Upgrades a connected socket: `host` and `path` go in the request.
    pub async fn handshake(
        mut stream: TcpStream,
        host: &str,
        path: &str,
    ) -> Result<Self, ConnectError> {
        let key = tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let failed = |e: std::io::Error| ConnectError::Failed(format!("handshake: {e}"));
        stream.write_all(request.as_bytes()).await.map_err(failed)?;
        let mut input = BytesMut::with_capacity(4096);
        let end = loop {
            if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if input.len() > 16 * 1024 {
                return Err(ConnectError::Failed("handshake: response too long".into()));
            }
            if stream.read_buf(&mut input).await.map_err(failed)? == 0 {
                return Err(ConnectError::Failed("handshake: connection closed".into()));
            }
        };
        let head = String::from_utf8_lossy(&input[..end]).into_owned();
        let _ = input.split_to(end + 4);
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 101 {
            let retry_after = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .map(Duration::from_secs);
            return Err(ConnectError::Refused {
                status,
                retry_after,
            });
        }
        Ok(Self {
            stream,
            input,
            pending: Vec::new(),
        })
    }

    /// Sends one text frame (masked, as a client must).
    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        let mut out = std::mem::take(&mut self.pending);
        push_frame(&mut out, OpCode::Data(Data::Text), text.as_bytes());
        self.stream.write_all(&out).await
    }

    pub async fn send_json(&mut self, value: &Value) -> std::io::Result<()> {
        self.send_text(&value.to_string()).await
    }

    /// The next text frame; pings are answered, pongs skipped. Cancel-safe.
    pub async fn next_text(&mut self) -> IncomingText<Bytes> {
        loop {
            match self.parse() {
                Ok(Some(Parsed::Text(text))) => return IncomingText::Text(text),
                Ok(Some(Parsed::Close(code))) => return IncomingText::Closed(code),
                Ok(Some(Parsed::Skip)) => continue,
                Ok(None) => {}
                Err(what) => return IncomingText::Garbage(what.to_owned()),
            }
            if !self.pending.is_empty() {
                match self.stream.try_write(&self.pending) {
                    Ok(n) => drop(self.pending.drain(..n)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return IncomingText::Closed(None),
                }
            }
            self.input.reserve(READ_CHUNK);
            match self.stream.read_buf(&mut self.input).await {
                Ok(0) | Err(_) => return IncomingText::Closed(None),
                Ok(_) => {}
            }
        }
    }

    /// The next frame already read, without reading more: what arrived
    /// with the frame [`Self::next_text`] returned. `None` once the buffer
    /// holds no whole frame.
    pub fn next_buffered(&mut self) -> Option<IncomingText<Bytes>> {
        loop {
            return match self.parse() {
                Ok(Some(Parsed::Text(text))) => Some(IncomingText::Text(text)),
                Ok(Some(Parsed::Close(code))) => Some(IncomingText::Closed(code)),
                Ok(Some(Parsed::Skip)) => continue,
                Ok(None) => None,
                Err(what) => Some(IncomingText::Garbage(what.to_owned())),
            };
        }
    }

    /// The next frame as a JSON object.
    pub async fn next_json(&mut self) -> Result<Value, CallError> {
        match self.next_text().await {
            IncomingText::Text(text) => match serde_json::from_slice::<Value>(&text) {
                Ok(v) if v.is_object() => Ok(v),
                _ => Err(CallError::Garbage(
                    String::from_utf8_lossy(&text[..text.len().min(120)]).into_owned(),
                )),
            },
            IncomingText::Closed(code) => Err(CallError::Closed(code)),
            IncomingText::Garbage(g) => Err(CallError::Garbage(g)),
        }
    }

    /// Sends `body` with `ref` set and waits for the frame with that ref.
    pub async fn call(
        &mut self,
        mut body: Value,
        r#ref: i64,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        body["ref"] = r#ref.into();
        self.send_json(&body)
            .await
            .map_err(|_| CallError::Closed(None))?;
        let wait = async {
            loop {
                let v = self.next_json().await?;
                if v["ref"] == r#ref {
                    return Ok(v);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    /// Closes politely (close frame 1000), without waiting long for the answer.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut out = std::mem::take(&mut self.pending);
            push_frame(
                &mut out,
                OpCode::Control(Control::Close),
                &1000u16.to_be_bytes(),
            );
            self.stream.write_all(&out).await?;
            loop {
                if let IncomingText::Closed(_) | IncomingText::Garbage(_) = self.next_text().await {
                    return Ok::<(), std::io::Error>(());
                }
            }
        })
        .await;
    }

    fn parse(&mut self) -> Result<Option<Parsed>, &'static str> {
        let mut cursor = Cursor::new(&self.input[..]);
        let Some((header, len)) =
            FrameHeader::parse(&mut cursor).map_err(|_| "invalid frame header")?
        else {
            return Ok(None);
        };
        let header_len = cursor.position() as usize;
        let len = usize::try_from(len).map_err(|_| "frame too long")?;
        if self.input.len() < header_len + len {
            self.input.reserve(header_len + len - self.input.len());
            return Ok(None);
        }
        if header.mask.is_some() || !header.is_final {
            return Err("server frames are final and unmasked here");
        }
        let _ = self.input.split_to(header_len);
        let payload = self.input.split_to(len).freeze();
        Ok(Some(match header.opcode {
            OpCode::Data(Data::Text) => Parsed::Text(payload),
            OpCode::Control(Control::Ping) => {
                push_frame(&mut self.pending, OpCode::Control(Control::Pong), &payload);
                Parsed::Skip
            }
            OpCode::Control(Control::Pong) => Parsed::Skip,
            OpCode::Control(Control::Close) => Parsed::Close(
                (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
            ),
            _ => return Err("unexpected frame type"),
        }))
    }
}

enum Parsed {
    Text(Bytes),
    Close(Option<u16>),
    Skip,
}

/// Appends one masked client frame.
fn push_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mask: [u8; 4] = rand::random();
    let header = FrameHeader {
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    header
        .format(payload.len() as u64, out)
        .expect("writing to a Vec cannot fail");
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}
