//! The WebSocket layer itself (handshake, framing rules), driven by a raw
//! TCP client that writes frames byte by byte: a WebSocket library client
//! cannot send the malformed frames a server must survive.

use std::io;
use std::time::{Duration, Instant};

use chatterpro::protocol::close;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app};

/// A client frame: FIN flag, opcode, payload masked (or not, to break the rules).
pub fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = header(fin, opcode, payload.len() as u64, masked.then_some(mask));
    if masked {
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Just a frame's header, claiming `len` bytes of payload (in the shortest
/// length encoding), with the mask if any.
pub fn header(fin: bool, opcode: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
    out
}

/// A masked, final text frame.
pub fn text(payload: &str) -> Vec<u8> {
    frame(true, 1, payload.as_bytes(), true)
}

/// A masked close frame with this code and reason.
pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    frame(true, 8, &[&code.to_be_bytes()[..], reason].concat(), true)
}

const HANDSHAKE: &str = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// A server frame as read off the socket.
#[derive(Debug, PartialEq)]
pub enum ServerFrame {
    Text(Value),
    Pong(Vec<u8>),
    /// The close frame's code (1005, "no status", for an empty body).
    Close(u16),
}

/// A WebSocket client on a raw TCP socket: it writes whatever bytes a test
/// makes and reads the server's frames by hand.
pub struct RawClient {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Opens a socket and completes the handshake, sending `extra` in the
    /// same write as the request.
    pub async fn connect(app: &TestApp, extra: &[u8]) -> Self {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        let mut request = HANDSHAKE.as_bytes().to_vec();
        request.extend_from_slice(extra);
        tcp.write_all(&request).await.unwrap();
        let mut client = Self {
            tcp,
            buf: Vec::new(),
        };
        let head = client.read_until_blank_line().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // The accept key of RFC 6455's own example.
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        client
    }

    async fn read_until_blank_line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                self.buf.drain(..end + 4);
                return head;
            }
            self.fill().await;
        }
    }

    /// Reads what the socket has; `Ok(0)` at the end of the stream.
    async fn read_more(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut chunk))
            .await
            .expect("the server answers")?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn fill(&mut self) {
        let n = self.read_more().await.unwrap();
        assert!(n > 0, "the server closed the socket without a close frame");
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Sends, and tells whether the server took the bytes (it may have
    /// closed the connection already).
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.tcp.write_all(bytes).await.is_ok()
    }

    pub async fn next(&mut self) -> ServerFrame {
        loop {
            if let Some(frame) = self.parse_next() {
                return frame;
            }
            self.fill().await;
        }
    }

    /// The next whole frame already read, skipping pings; `None` if more
    /// bytes are needed.
    fn parse_next(&mut self) -> Option<ServerFrame> {
        loop {
            if self.buf.len() < 2 {
                return None;
            }
            let (opcode, len7) = (self.buf[0] & 0x0f, usize::from(self.buf[1] & 0x7f));
            assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
            assert_eq!(self.buf[0] & 0x70, 0, "server frames set no RSV bit");
            let (header, len) = match len7 {
                126 if self.buf.len() >= 4 => (
                    4,
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                ),
                126 => return None,
                127 => panic!("no test frame is that long"),
                n => (2, n),
            };
            if self.buf.len() < header + len {
                return None;
            }
            let payload = self.buf[header..header + len].to_vec();
            self.buf.drain(..header + len);
            return Some(match opcode {
                1 => ServerFrame::Text(serde_json::from_slice(&payload).unwrap()),
                8 => ServerFrame::Close(match payload[..] {
                    [] => 1005,
                    [high, low, ..] => u16::from_be_bytes([high, low]),
                    [_] => panic!("a 1-byte close body from the server"),
                }),
                9 => continue,
                10 => ServerFrame::Pong(payload),
                other => panic!("unexpected opcode {other}"),
            });
        }
    }

    /// Sends `pieces` one at a time, `every` apart, until the server sends
    /// its close frame (skipping what comes before it). Returns the close
    /// code and how many pieces went out.
    pub async fn drip_until_answered(
        &mut self,
        pieces: &[Vec<u8>],
        every: Duration,
    ) -> (u16, usize) {
        let mut sent = 0;
        let mut ticks = tokio::time::interval(every);
        loop {
            while let Some(frame) = self.parse_next() {
                if let ServerFrame::Close(code) = frame {
                    return (code, sent);
                }
            }
            let (mut read, mut write) = self.tcp.split();
            let mut chunk = [0u8; 4096];
            tokio::select! {
                n = read.read(&mut chunk) => {
                    let n = n.expect("the connection ends with a close frame, not a reset");
                    assert!(n > 0, "the server closed the socket without a close frame");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                _ = ticks.tick(), if sent < pieces.len() => {
                    if write.write_all(&pieces[sent]).await.is_ok() {
                        sent += 1;
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(10)) => {
                    panic!("no close frame within 10 s of the last byte");
                }
            }
        }
    }

    /// The close code the server ends with, skipping frames before it.
    pub async fn close_code(&mut self) -> u16 {
        loop {
            if let ServerFrame::Close(code) = self.next().await {
                return code;
            }
        }
    }

    /// After the server's close frame: the server sends nothing more and
    /// ends the TCP connection with FIN (the read sees the end of the
    /// stream), not with a reset, within `within`. Returns how long it took.
    pub async fn expect_clean_end(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            assert!(
                self.buf.is_empty(),
                "bytes after the close frame: {:x?}",
                self.buf
            );
            let read = tokio::time::timeout(within, self.read_more())
                .await
                .expect("the server ends the connection");
            match read {
                Ok(0) => return start.elapsed(),
                Ok(_) => {}
                Err(e) => panic!("the connection ended with {e} (a reset), not with FIN"),
            }
        }
    }
}

#[tokio::test]
async fn a_frame_sent_with_the_handshake_is_read() {
    let app = spawn_app().await;
    let hello = text(r#"{"type":"hello","name":"early","ref":1}"#);
    let mut client = RawClient::connect(&app, &hello).await;
    let ServerFrame::Text(welcome) = client.next().await else {
        panic!("expected the welcome");
    };
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["name"], "early");
}

#[tokio::test]
async fn fragments_are_joined_and_control_frames_between_them_answered() {
    let app = spawn_app().await;
    let mut client = RawClient::connect(&app, b"").await;
    let hello = br#"{"type":"hello","name":"frag","ref":"f"}"#;
    let mut bytes = frame(false, 1, &hello[..10], true);
    bytes.extend(frame(true, 9, b"mid", true));
    bytes.extend(frame(false, 0, &hello[10..20], true));
    bytes.extend(frame(true, 0, &hello[20..], true));
    // One byte at a time: the server must wait for whole frames.
    for byte in bytes {
        client.send(&[byte]).await;
    }
    let ServerFrame::Pong(payload) = client.next().await else {
        panic!("expected the pong first");
    };
    assert_eq!(payload, b"mid");
    let ServerFrame::Text(welcome) = client.next().await else {
        panic!("expected the welcome");
    };
    assert_eq!(
        (welcome["type"].as_str(), welcome["ref"].as_str()),
        (Some("welcome"), Some("f"))
    );
}

#[tokio::test]
async fn protocol_violations_close_with_1002_and_bad_utf8_with_1007() {
    let app = spawn_app().await;
    let cases: [(&str, Vec<u8>, u16); 5] = [
        (
            "unmasked frame",
            frame(true, 1, b"{}", false),
            close::PROTOCOL_ERROR,
        ),
        (
            "extension bit",
            {
                let mut f = text("{}");
                f[0] |= 0x40;
                f
            },
            close::PROTOCOL_ERROR,
        ),
        (
            "orphan continuation",
            frame(true, 0, b"{}", true),
            close::PROTOCOL_ERROR,
        ),
        (
            "fragmented ping",
            frame(false, 9, b"", true),
            close::PROTOCOL_ERROR,
        ),
        (
            "invalid UTF-8",
            frame(true, 1, &[b'"', 0xc3, 0x28, b'"'], true),
            close::INVALID_PAYLOAD,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut client = RawClient::connect(&app, b"").await;
        client.send(&bytes).await;
        assert_eq!(client.close_code().await, code, "{what}");
    }
    // The server is unharmed.
    let mut client = app.client().await;
    client.hello("after").await;
}

#[tokio::test]
async fn a_continuation_claiming_an_enormous_length_closes_with_1009() {
    let app = spawn_app().await;
    let mut client = RawClient::connect(&app, b"").await;
    // A first fragment, then a continuation whose 64-bit length would wrap
    // the running total if added naively.
    let mut bytes = frame(false, 1, b"{", true);
    bytes.extend([0x80, 0x80 | 127]);
    bytes.extend(u64::MAX.to_be_bytes());
    bytes.extend([1, 2, 3, 4]);
    client.send(&bytes).await;
    assert_eq!(client.close_code().await, close::TOO_BIG);
    let mut other = app.client().await;
    other.hello("after").await;
}

#[tokio::test]
async fn plain_http_requests_to_the_socket_endpoint_are_told_to_upgrade() {
    let app = spawn_app().await;
    let response = reqwest::get(app.http("/ws")).await.unwrap();
    assert_eq!(response.status(), 426);
    assert_eq!(response.headers()["upgrade"], "websocket");

    let response = reqwest::Client::new()
        .get(app.http("/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 426);
    assert_eq!(response.headers()["sec-websocket-version"], "13");
}
