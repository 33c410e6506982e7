//! The bench's side of the wire: dialing the server (optionally from many
//! loopback source addresses), reading frames as JSON, and telling refusals
//! (HTTP 429/503 at the upgrade) from failures.
//!
//! Only protocol v1 as documented in `docs/protocol.md`; nothing here knows
//! the server's internals.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use super::raw::RawWs;

/// A client WebSocket (plain `ws://`; the bench does not speak TLS).
pub type Ws = WebSocketStream<TcpStream>;

/// How long dialing plus the upgrade may take before it counts as a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per source address when spreading automatically: under the
/// server's default `--max-conns-per-ip` (50), with room for reconnects that
/// race the server noticing the old socket is gone.
pub const AUTO_PER_SOURCE: usize = 40;

/// Where the server is and how to reach it; shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// WebSocket URL of the server (`ws://` only).
    #[arg(long, default_value = "ws://127.0.0.1:3000/ws")]
    pub url: String,

    /// The server's process id: its resident memory (VmRSS in
    /// /proc/PID/status) is sampled every second and reported.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Spread connections over this many loopback source addresses
    /// (127.0.0.2, 127.0.0.3, …), each with its own per-IP limits and
    /// ephemeral ports; 0 lets the OS pick. Default: one address per 40
    /// connections when the server is on loopback, else 0.
    #[arg(long)]
    pub source_ips: Option<usize>,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone)]
pub enum ConnectError {
    /// The server refused the upgrade with this HTTP status (429: per-IP
    /// limits, 503: server full), possibly saying when to retry.
    Refused {
        status: u16,
        retry_after: Option<Duration>,
    },
    Timeout,
    /// Anything else: the TCP connect, the bind, the handshake.
    Failed(String),
}

impl ConnectError {
    /// A short key for counting: `http_429`, `http_503`, `timeout`, `io`.
    pub fn key(&self) -> String {
        match self {
            ConnectError::Refused { status, .. } => format!("http_{status}"),
            ConnectError::Timeout => "timeout".to_owned(),
            ConnectError::Failed(_) => "io".to_owned(),
        }
    }

    /// Whether the server asked to slow down (worth retrying later).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ConnectError::Refused { .. })
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused { status, .. } => write!(f, "upgrade refused with HTTP {status}"),
            ConnectError::Timeout => write!(f, "connect timed out"),
            ConnectError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Opens connections to one server, round-robin over its source addresses.
#[derive(Debug, Clone)]
pub struct Dialer {
    url: String,
    /// `Host` header and path, for the lean client's own handshake.
    host: String,
    path: String,
    server: SocketAddr,
    sources: Vec<IpAddr>,
}

impl Dialer {
    /// Resolves the server; `planned` (connections open at once) sizes the
    /// automatic spread over source addresses.
    pub async fn build(target: &Target, planned: usize) -> anyhow::Result<Self> {
        let request = target
            .url
            .as_str()
            .into_client_request()
            .with_context(|| format!("bad --url {:?}", target.url))?;
        let uri = request.uri();
        if uri.scheme_str() != Some("ws") {
            bail!("--url must be a ws:// URL (the bench does not speak TLS)");
        }
        let authority = uri
            .authority()
            .context("--url has no host")?
            .as_str()
            .to_owned();
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let host = uri.host().context("--url has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let server = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} resolves to no address"))?;
        let loopback_v4 = matches!(server.ip(), IpAddr::V4(ip) if ip.is_loopback());
        let count = match target.source_ips {
            Some(0) => 0,
            Some(n) if loopback_v4 => n,
            Some(_) => bail!("--source-ips needs a server on an IPv4 loopback address"),
            None if loopback_v4 => planned.div_ceil(AUTO_PER_SOURCE),
            None => 0,
        };
        Ok(Self {
            url: target.url.clone(),
            host: authority,
            path,
            server,
            sources: loopback_sources(count),
        })
    }

    /// The source addresses in use (empty: the OS picks).
    pub fn sources(&self) -> &[IpAddr] {
        &self.sources
    }

    /// Opens connection number `index` (which picks its source address).
    pub async fn connect(&self, index: usize) -> Result<Ws, ConnectError> {
        let source = (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()]);
        match tokio::time::timeout(CONNECT_TIMEOUT, self.dial(source)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    /// Like [`Dialer::connect`], with the lean client (see [`RawWs`]).
    pub async fn connect_raw(&self, index: usize) -> Result<RawWs, ConnectError> {
        let source = (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()]);
        let dial = async {
            let stream = self.tcp(source).await?;
            RawWs::handshake(stream, &self.host, &self.path).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    async fn dial(&self, source: Option<IpAddr>) -> Result<Ws, ConnectError> {
        let stream = self.tcp(source).await?;
        let request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Failed(e.to_string()))?;
        match tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()))
            .await
        {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Err(ConnectError::Refused {
                    status: response.status().as_u16(),
                    retry_after,
                })
            }
            Err(e) => Err(ConnectError::Failed(format!("handshake: {e}"))),
        }
    }

    /// A TCP connection to the server from `source`, Nagle off.
    async fn tcp(&self, source: Option<IpAddr>) -> Result<TcpStream, ConnectError> {
        let failed = |what: &str, e: std::io::Error| ConnectError::Failed(format!("{what}: {e}"));
        let socket = if self.server.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| failed("socket", e))?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| failed(&format!("bind {ip}"), e))?;
        }
        let stream = socket
            .connect(self.server)
            .await
            .map_err(|e| failed("connect", e))?;
        // Chat frames are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// `count` loopback addresses from 127.0.0.2 on, skipping .0 and .255 octets.
fn loopback_sources(count: usize) -> Vec<IpAddr> {
    let mut next = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let ip = Ipv4Addr::from(next);
        next += 1;
        let last = ip.octets()[3];
        if last != 0 && last != 255 {
            out.push(IpAddr::V4(ip));
        }
    }
    out
}

/// What came off a socket.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    /// The server closed (with its close code, if it sent one) or the
    /// connection broke.
    Closed(Option<u16>),
    /// A frame that is not one JSON object per text frame.
    Garbage(String),
}

/// tungstenite's defaults give each connection 128 KiB read and write
/// buffers, zeroed when allocated: setting up 19,000 connections spent a
/// fifth of the bench's core in `memset`, and the bench (not the server) was
/// what limited set-up time. Chat frames are small; 4 KiB grows as needed.
fn client_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
}

/// The next frame, skipping pings and pongs (tungstenite answers pings
/// itself as long as the socket is read).
pub async fn next_frame(ws: &mut Ws) -> Incoming {
    loop {
        return match ws.next().await {
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(&text) {
                Ok(value) if value.is_object() => Incoming::Json(value),
                _ => Incoming::Garbage(truncate(&text, 120)),
            },
            Some(Ok(Message::Close(frame))) => Incoming::Closed(frame.map(|f| u16::from(f.code))),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => Incoming::Garbage(format!("non-text frame {other:?}")),
            Some(Err(_)) | None => Incoming::Closed(None),
        };
    }
}

/// What came in, unparsed: for hot receive loops that pick only the fields
/// they need out of each frame instead of building a JSON tree.
pub enum IncomingText<T = tungstenite::Utf8Bytes> {
    Text(T),
    Closed(Option<u16>),
    Garbage(String),
}

/// The next text frame, skipping pings and pongs.
pub async fn next_text(ws: &mut Ws) -> IncomingText {
    loop {
        return match ws.next().await {
            Some(Ok(Message::Text(text))) => IncomingText::Text(text),
            Some(Ok(Message::Close(frame))) => {
                IncomingText::Closed(frame.map(|f| u16::from(f.code)))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => IncomingText::Garbage(format!("non-text frame {other:?}")),
            Some(Err(_)) | None => IncomingText::Closed(None),
        };
    }
}

/// Sends one text frame.
pub async fn send_text(ws: &mut Ws, text: String) -> Result<(), tungstenite::Error> {
    ws.send(Message::Text(text.into())).await
}

/// Sends one JSON object.
pub async fn send_json(ws: &mut Ws, value: &Value) -> Result<(), tungstenite::Error> {
    send_text(ws, value.to_string()).await
}

/// Closes politely (close frame 1000), without waiting long for the answer.
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Why a request made with [`call`] got no reply.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The connection ended (with the server's close code, if any).
    Closed(Option<u16>),
    Timeout,
    Garbage(String),
}

impl CallError {
    /// A short key for counting.
    pub fn key(&self) -> String {
        match self {
            CallError::Closed(Some(code)) => format!("server_close_{code}"),
            CallError::Closed(None) => "connection_lost".to_owned(),
            CallError::Timeout => "timeout".to_owned(),
            CallError::Garbage(_) => "garbage_frame".to_owned(),
        }
    }
}

/// Sends `body` with `ref` set and waits up to `timeout` for the frame that
/// carries the same ref (a reply or an `error`); frames that arrive first
/// are handed to `other`.
pub async fn call(
    ws: &mut Ws,
    mut body: Value,
    r#ref: i64,
    timeout: Duration,
    mut other: impl FnMut(&Value),
) -> Result<Value, CallError> {
    body["ref"] = r#ref.into();
    send_json(ws, &body)
        .await
        .map_err(|_| CallError::Closed(None))?;
    let wait = async {
        loop {
            match next_frame(ws).await {
                Incoming::Json(v) if v["ref"] == r#ref => return Ok(v),
                Incoming::Json(v) => other(&v),
                Incoming::Closed(code) => return Err(CallError::Closed(code)),
                Incoming::Garbage(g) => return Err(CallError::Garbage(g)),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or(Err(CallError::Timeout))
}

/// The first `max` characters of `s`.
pub fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_skip_network_and_broadcast_octets() {
        let ips = loopback_sources(300);
        assert_eq!(ips[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(ips[252], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 254)));
        assert_eq!(ips[253], IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)));
        assert_eq!(ips.len(), 300);
    }
}
