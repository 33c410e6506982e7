//! Settings, from command-line flags or `CHATTERPRO_*` environment variables.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use ipnet::{IpNet, Ipv4Net};

use crate::limits::{ByteRate, LimitsConfig};

/// ChatterPro: a real-time multi-room chat server with its browser app.
///
/// With no subcommand it serves http://127.0.0.1:3000 and keeps its data in
/// ./chatterpro.db (SQLite).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chatterpro",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Operator's tasks on the server's database (also while it runs).
    Admin(AdminArgs),
}

/// `chatterpro admin …`: works on the database a server uses, running or not.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The server's database (the same flag and variable as the server's).
    #[arg(
        long,
        env = "CHATTERPRO_DATABASE_URL",
        default_value = "sqlite://chatterpro.db"
    )]
    pub database_url: String,

    /// The server's default rooms, which are never removed (the same flag
    /// and variable as the server's).
    #[arg(
        long = "rooms",
        env = "CHATTERPRO_ROOMS",
        value_delimiter = ',',
        default_value = "Chat Room,Business Room,Gaming Room"
    )]
    pub default_rooms: Vec<String>,

    #[command(subcommand)]
    pub task: AdminTask,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminTask {
    /// Removes a room and all its messages. A running server on the same
    /// database notices within a second: the room's members get a notice
    /// and `left`. Default rooms cannot be removed.
    DeleteRoom {
        /// The room's name, as shown in the app.
        name: String,
    },
    /// Creates an account; its password is read from standard input (one
    /// line). The name follows the sign-up rules.
    CreateAccount {
        name: String,
        /// Makes the account a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// Makes an account a server admin.
    SetAdmin { name: String },
    /// Sets an account's password, read from standard input (one line),
    /// and signs it out everywhere.
    ResetPassword { name: String },
    /// Disables an account: signed out everywhere, and it cannot sign in.
    Disable { name: String },
}

/// The server's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port). An address other
    /// than loopback needs --public-url.
    #[arg(long, env = "CHATTERPRO_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,

    /// The origin browsers reach the server at (scheme://host[:port], e.g.
    /// https://chat.example.com): a WebSocket upgrade whose Origin is not
    /// this one (scheme, host and port) nor in --allowed-origins is refused.
    /// Default, for a loopback --addr only: http://127.0.0.1:PORT and
    /// http://localhost:PORT with the port actually bound.
    #[arg(long, env = "CHATTERPRO_PUBLIC_URL", value_parser = parse_origin)]
    pub public_url: Option<String>,

    /// Address /metrics is served on, apart from the app and the WebSocket;
    /// the default is a free loopback port, announced on stdout at start
    /// ("metrics on http://…"). Give a fixed one for a scraper.
    #[arg(long, env = "CHATTERPRO_METRICS_ADDR", default_value = "127.0.0.1:0")]
    pub metrics_addr: SocketAddr,

    /// How long a connection may take to send a complete request head (the
    /// WebSocket handshake included) — and how long a keep-alive connection
    /// may stay silent between requests — before it is closed.
    #[arg(long, env = "CHATTERPRO_HANDSHAKE_TIMEOUT", default_value = "10s",
          value_parser = parse_handshake_timeout)]
    pub handshake_timeout: Duration,

    /// Where messages are stored: sqlite://PATH (created if missing; WAL mode).
    #[arg(
        long,
        env = "CHATTERPRO_DATABASE_URL",
        default_value = "sqlite://chatterpro.db"
    )]
    pub database_url: String,

    /// Rooms that always exist, in the order the join page lists them (comma-separated).
    #[arg(
        long = "rooms",
        env = "CHATTERPRO_ROOMS",
        value_delimiter = ',',
        default_value = "Chat Room,Business Room,Gaming Room"
    )]
    pub default_rooms: Vec<String>,

    /// The bot's welcome notice to each joiner; {name} becomes the joiner's name.
    #[arg(
        long,
        env = "CHATTERPRO_WELCOME",
        default_value = "Welcome to ChatterPro, {name}!"
    )]
    pub welcome: String,

    /// How long a guest's reclaim token stays valid after its last use: while
    /// valid, the browser that holds it gets its name (and author id) back,
    /// across restarts. Unused longer, it is forgotten. [default: 30days]
    #[arg(long = "guest-ttl", env = "CHATTERPRO_GUEST_TTL",
          value_parser = humantime::parse_duration)]
    guest_ttl_set: Option<Duration>,

    /// The older name of `--guest-ttl` (`CHATTERPRO_SESSION_TTL`), still
    /// accepted, hidden from the help; `--guest-ttl` wins if both are given.
    #[arg(long = "session-ttl", env = "CHATTERPRO_SESSION_TTL", hide = true,
          value_parser = humantime::parse_duration)]
    old_session_ttl: Option<Duration>,

    /// How long a guest's name stays theirs after they were last online
    /// (and after each server start): only their reclaim token claims it
    /// meanwhile. Past it, anyone may take the name (a new identity).
    #[arg(long, env = "CHATTERPRO_NAME_HOLD", default_value = "1h",
          value_parser = humantime::parse_duration)]
    pub name_hold: Duration,

    /// Whether people may chat as guests (a name, no account). Off, only
    /// connections signed in to an account get an identity: every request
    /// before it is refused with `no_identity`.
    #[arg(long, env = "CHATTERPRO_GUESTS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub guests: bool,

    /// Most guests (names with a reclaim token) stored. Checked hourly;
    /// beyond it the least recently seen are forgotten, and their tokens no
    /// longer reclaim anything. Without it, a client making up a new name
    /// per connection could grow the database for the whole --guest-ttl.
    #[arg(long, env = "CHATTERPRO_MAX_GUESTS", default_value_t = 1_000_000)]
    pub max_guests: u64,

    /// Messages shown on joining a room (at most 1000).
    #[arg(long, env = "CHATTERPRO_HISTORY_ON_JOIN", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub history_on_join: u32,

    /// Frames queued for one connection before it counts as too slow and is
    /// closed with 1013 (it can reconnect and resume without loss).
    #[arg(long, env = "CHATTERPRO_OUTBOX_CAPACITY", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(16..))]
    pub outbox_capacity: u32,

    /// Bytes queued for one connection before it counts as too slow (1013).
    /// One reply larger than this still goes out to a connection with nothing queued.
    #[arg(long, env = "CHATTERPRO_OUTBOX_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub outbox_bytes: usize,

    /// Longest a room's new message may wait to go out with the next ones.
    /// A room delivered to less than (members × --broadcast-per-member) ago,
    /// capped by this, holds new messages until that much has passed, so a
    /// busy big room costs one write per member per window instead of one
    /// per message; a quiet room's message goes out at once (0 turns it off).
    #[arg(long, env = "CHATTERPRO_BROADCAST_WINDOW", default_value = "10ms",
          value_parser = parse_window)]
    pub broadcast_window: Duration,

    /// A room's pacing window per member (see --broadcast-window): under
    /// what one small socket write costs on this kind of machine. 4 µs gave
    /// a lower p99 than 5 (and 3) under heavy fan-out in docs/performance.md.
    #[arg(long, env = "CHATTERPRO_BROADCAST_PER_MEMBER", default_value = "4us",
          value_parser = parse_window)]
    pub broadcast_per_member: Duration,

    /// Least time between two presence frames of a room (at most 1s). A
    /// room whose last presence frame is older announces a change at once;
    /// otherwise the changes of the interval go out together when it ends,
    /// as their net effect (a join undone meanwhile is never announced). 0
    /// announces every change as it happens.
    #[arg(long, env = "CHATTERPRO_PRESENCE_INTERVAL", default_value = "250ms",
          value_parser = parse_window)]
    pub presence_interval: Duration,

    /// Hand a room delivery's socket writes to the kernel in one io_uring
    /// call instead of one system call each (Linux; where the kernel or a
    /// seccomp profile refuses io_uring, writes go one by one regardless).
    #[arg(long, env = "CHATTERPRO_IO_URING", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub io_uring: bool,

    /// Least time between the starts of two commits. A send after a quiet
    /// spell is stored at once; under load, the sends arriving meanwhile
    /// share the next transaction and its fsync (0: commit whenever the
    /// previous one is done).
    #[arg(long, env = "CHATTERPRO_COMMIT_INTERVAL", default_value = "2ms",
          value_parser = parse_window)]
    pub commit_interval: Duration,

    /// Most messages stored in one transaction (group commit). One commit
    /// delivers up to this many frames at once, so --outbox-capacity must be
    /// at least twice this.
    #[arg(long, env = "CHATTERPRO_WRITE_BATCH", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub write_batch: u32,

    /// Extra origins (scheme://host[:port]) allowed to open WebSockets, besides
    /// --public-url (comma-separated). Requests without Origin (non-browser
    /// clients) are always allowed.
    #[arg(long, env = "CHATTERPRO_ALLOWED_ORIGINS", value_delimiter = ',',
          value_parser = parse_origin)]
    pub allowed_origins: Vec<String>,

    /// Reverse proxies (addresses, or networks holding only proxies,
    /// comma-separated, e.g. 127.0.0.1,10.0.0.8/29) whose X-Forwarded-For
    /// names the client for the per-address limits. Empty: each
    /// connection's TCP peer is its address.
    #[arg(long, env = "CHATTERPRO_TRUSTED_PROXIES", value_delimiter = ',',
          value_parser = parse_network)]
    pub trusted_proxies: Vec<IpNet>,

    /// How often the server pings each connection (at least 100ms); one that
    /// has not answered a ping within two intervals is closed (4000) and leaves its rooms.
    #[arg(long, env = "CHATTERPRO_PING_INTERVAL", default_value = "20s",
          value_parser = parse_ping_interval)]
    pub ping_interval: Duration,

    /// Longest a client may take to send one WebSocket message, from its
    /// first byte to its last fragment (at least 100ms). Past it the
    /// connection is closed with 1008: a client trickling a frame in a byte
    /// at a time cannot hold its read buffer (up to 64 KiB) open.
    #[arg(long, env = "CHATTERPRO_FRAME_TIMEOUT", default_value = "10s",
          value_parser = parse_frame_timeout)]
    pub frame_timeout: Duration,

    /// Messages one connection may send per second, steadily...
    #[arg(long, env = "CHATTERPRO_MSG_RATE", default_value = "10")]
    pub msg_rate: NonZeroU32,

    /// ...and in a burst.
    #[arg(long, env = "CHATTERPRO_MSG_BURST", default_value = "20")]
    pub msg_burst: NonZeroU32,

    /// Joins one connection may make per second, steadily...
    #[arg(long, env = "CHATTERPRO_JOIN_RATE", default_value = "5")]
    pub join_rate: NonZeroU32,

    /// ...and in a burst.
    #[arg(long, env = "CHATTERPRO_JOIN_BURST", default_value = "20")]
    pub join_burst: NonZeroU32,

    /// Requests of any kind one connection may make per second, steadily...
    #[arg(long, env = "CHATTERPRO_REQUEST_RATE", default_value = "30")]
    pub request_rate: NonZeroU32,

    /// ...and in a burst.
    #[arg(long, env = "CHATTERPRO_REQUEST_BURST", default_value = "60")]
    pub request_burst: NonZeroU32,

    /// Rooms one connection may be in at once.
    #[arg(long, env = "CHATTERPRO_MAX_ROOMS_PER_CONN", default_value_t = 100)]
    pub max_rooms_per_conn: usize,

    /// Refusals (rate_limited) a connection may collect, refilling at one per
    /// second, before it is closed with 1008 for persistent abuse.
    #[arg(long, env = "CHATTERPRO_ABUSE_STRIKES", default_value = "30")]
    pub abuse_strikes: NonZeroU32,

    /// TCP connections (WebSockets, HTTP, not yet upgraded) the whole server
    /// holds; beyond it new ones are answered 503 and closed. Lowered at
    /// start to the open-file limit less a reserve for the server's own files.
    #[arg(long, env = "CHATTERPRO_MAX_CONNECTIONS", default_value_t = 15_000)]
    pub max_connections: usize,

    /// TCP connections one IP address may hold at once, counted from accept
    /// (a WebSocket keeps its connection's place); beyond it new ones are
    /// answered 429 and closed.
    #[arg(long, env = "CHATTERPRO_MAX_CONNS_PER_IP", default_value_t = 50)]
    pub max_conns_per_ip: usize,

    /// New WebSockets one IP address may open per minute (HTTP 429 beyond).
    #[arg(
        long,
        env = "CHATTERPRO_CONNS_PER_IP_PER_MINUTE",
        default_value = "120"
    )]
    pub conns_per_ip_per_minute: NonZeroU32,

    /// The join page lists, besides the default rooms and rooms with people
    /// in them, rooms with a message within this long (newest first).
    #[arg(long, env = "CHATTERPRO_ROOM_LIST_WINDOW", default_value = "7d",
          value_parser = parse_duration)]
    pub room_list_window: Duration,

    /// How long one room list (join page, `welcome`, `rooms`) is reused
    /// before it is built again from storage and presence (0: for every request).
    #[arg(long, env = "CHATTERPRO_ROOM_LIST_REFRESH", default_value = "1s",
          value_parser = parse_duration)]
    pub room_list_refresh: Duration,

    /// A room that never had a message is removed once nobody has been in
    /// it for this long (default rooms never).
    #[arg(long, env = "CHATTERPRO_UNUSED_ROOM_TTL", default_value = "1h",
          value_parser = parse_duration)]
    pub unused_room_ttl: Duration,

    /// A room nobody has been in or written to for this long is removed
    /// with its messages (default rooms never).
    #[arg(long, env = "CHATTERPRO_IDLE_ROOM_TTL", default_value = "30d",
          value_parser = parse_duration)]
    pub idle_room_ttl: Duration,

    /// How often unused rooms are looked for, and rooms with people in them
    /// are recorded as in use (at least 10ms).
    #[arg(long, env = "CHATTERPRO_ROOM_REAP_INTERVAL", default_value = "1m",
          value_parser = parse_reap_interval)]
    pub room_reap_interval: Duration,

    /// New rooms one IP address may create per minute (rate_limited
    /// beyond); an IPv6 /48 may create four times as many.
    #[arg(long, env = "CHATTERPRO_ROOMS_PER_IP_PER_MINUTE", default_value = "10")]
    pub rooms_per_ip_per_minute: NonZeroU32,

    /// Plain HTTP requests (app files, /api/rooms, /healthz) one IP address
    /// may make per second, steadily (HTTP 429 with Retry-After beyond)...
    #[arg(long, env = "CHATTERPRO_HTTP_RATE", default_value = "20")]
    pub http_rate: NonZeroU32,

    /// ...and in a burst (loading the app takes about ten).
    #[arg(long, env = "CHATTERPRO_HTTP_BURST", default_value = "100")]
    pub http_burst: NonZeroU32,

    /// Bytes of history and room-list replies one connection may be served
    /// per second, steadily; a request while over budget is refused
    /// (rate_limited with retry_after_ms)...
    #[arg(long, env = "CHATTERPRO_SERVED_BYTES_PER_CONN", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub served_bytes_per_conn: u64,

    /// ...and in a burst.
    #[arg(long, env = "CHATTERPRO_SERVED_BYTES_BURST_PER_CONN", default_value_t = 2 * 1024 * 1024)]
    pub served_bytes_burst_per_conn: u64,

    /// The same, for all connections of one IP address together...
    #[arg(long, env = "CHATTERPRO_SERVED_BYTES_PER_IP", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub served_bytes_per_ip: u64,

    /// ...and in a burst.
    #[arg(long, env = "CHATTERPRO_SERVED_BYTES_BURST_PER_IP", default_value_t = 8 * 1024 * 1024)]
    pub served_bytes_burst_per_ip: u64,

    /// Rejoins one connection may make per minute, at most this many at
    /// once: joining a room it left costs one of these besides a join
    /// (rate_limited beyond).
    #[arg(long, env = "CHATTERPRO_REJOINS_PER_MINUTE", default_value = "6")]
    pub rejoins_per_minute: NonZeroU32,

    /// Joins of one room the connections of one IP address may make per
    /// minute, at most this many at once (rate_limited beyond; re-syncs of a
    /// room already joined do not count).
    #[arg(
        long,
        env = "CHATTERPRO_ROOM_JOINS_PER_IP_PER_MINUTE",
        default_value = "60"
    )]
    pub room_joins_per_ip_per_minute: NonZeroU32,
}

fn parse_handshake_timeout(raw: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if timeout < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(timeout)
}

/// An origin (`scheme://host[:port]`), in the form browsers send it:
/// lower case, without a default port or a trailing slash. Only http and
/// https are origins a page can have here.
pub(crate) fn parse_origin(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("`{raw}`: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{raw}`: an origin is http:// or https://"));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!(
            "`{raw}`: an origin is scheme://host[:port], without a path"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

fn parse_ping_interval(raw: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if interval < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(interval)
}

fn parse_frame_timeout(raw: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if timeout < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(timeout)
}

/// One `--trusted-proxies` entry: a network (`10.0.0.0/24`) or a single
/// address (`127.0.0.1`, `::1`). IPv4-mapped IPv6 entries are taken as the
/// IPv4 they map, since that is how connections from them are seen.
pub(crate) fn parse_network(raw: &str) -> Result<IpNet, String> {
    let raw = raw.trim();
    let net = IpNet::from_str(raw)
        .or_else(|_| {
            IpAddr::from_str(raw.trim_start_matches('[').trim_end_matches(']')).map(IpNet::from)
        })
        .map_err(|_| format!("`{raw}` is neither an IP address nor a network like 10.0.0.0/24"))?;
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .expect("a prefix of 96..=128 leaves 0..=32"),
            None => net,
        },
        _ => net,
    })
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| e.to_string())
}

fn parse_reap_interval(raw: &str) -> Result<Duration, String> {
    let interval = parse_duration(raw)?;
    if interval < Duration::from_millis(10) {
        return Err("must be at least 10ms".into());
    }
    Ok(interval)
}

fn parse_window(raw: &str) -> Result<Duration, String> {
    let window = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if window > Duration::from_secs(1) {
        return Err("must be at most 1s".into());
    }
    Ok(window)
}

/// `--guest-ttl` when not given.
const GUEST_TTL_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);

impl Config {
    /// `--guest-ttl`, given under its name or its older one, or its default.
    pub fn guest_ttl(&self) -> Duration {
        self.guest_ttl_set
            .or(self.old_session_ttl)
            .unwrap_or(GUEST_TTL_DEFAULT)
    }

    /// Checks settings that depend on each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.name_hold > self.guest_ttl() {
            return Err(format!(
                "--name-hold ({}) must not exceed --guest-ttl ({}): a name is held for a valid token",
                humantime::format_duration(self.name_hold),
                humantime::format_duration(self.guest_ttl())
            ));
        }
        if self.outbox_capacity < 2 * self.write_batch {
            return Err(format!(
                "--outbox-capacity ({}) must be at least twice --write-batch ({}): one commit \
                 can deliver that many frames to a member at once",
                self.outbox_capacity, self.write_batch
            ));
        }
        if self.public_url.is_none() && !self.addr.ip().is_loopback() {
            return Err(format!(
                "--addr {} is reachable from other machines, so --public-url must say which \
                 origin browsers use to reach this server (e.g. https://chat.example.com): \
                 WebSocket upgrades are accepted only from that origin, and the Host header \
                 cannot be trusted to tell it",
                self.addr
            ));
        }
        Ok(())
    }

    pub fn limits(&self) -> LimitsConfig {
        LimitsConfig {
            msg_rate: self.msg_rate,
            msg_burst: self.msg_burst,
            join_rate: self.join_rate,
            join_burst: self.join_burst,
            request_rate: self.request_rate,
            request_burst: self.request_burst,
            max_rooms_per_conn: self.max_rooms_per_conn,
            abuse_strikes: self.abuse_strikes,
            max_connections: self.max_connections,
            max_conns_per_ip: self.max_conns_per_ip,
            conns_per_ip_per_minute: self.conns_per_ip_per_minute,
            rooms_per_ip_per_minute: self.rooms_per_ip_per_minute,
            http_rate: self.http_rate,
            http_burst: self.http_burst,
            served_bytes_per_conn: ByteRate {
                per_second: self.served_bytes_per_conn,
                burst: self.served_bytes_burst_per_conn,
            },
            served_bytes_per_ip: ByteRate {
                per_second: self.served_bytes_per_ip,
                burst: self.served_bytes_burst_per_ip,
            },
            rejoins_per_minute: self.rejoins_per_minute,
            room_joins_per_ip_per_minute: self.room_joins_per_ip_per_minute,
        }
    }

    /// Settings for tests and embedding: defaults, with this database and a free port.
    pub fn for_tests(database_url: impl Into<String>) -> Self {
        let mut config = Cli::parse_from(["chatterpro"]).serve;
        config.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database_url = database_url.into();
        // Tests check room lists right after the change they expect.
        config.room_list_refresh = Duration::ZERO;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_are_networks_or_single_addresses() {
        assert_eq!(parse_network("10.0.0.0/8").unwrap().prefix_len(), 8);
        assert_eq!(parse_network(" 127.0.0.1 ").unwrap().prefix_len(), 32);
        assert_eq!(parse_network("::1").unwrap().prefix_len(), 128);
        assert_eq!(parse_network("[::1]").unwrap().prefix_len(), 128);
        assert!(parse_network("localhost").is_err());
        assert!(parse_network("10.0.0.0/33").is_err());
    }

    #[test]
    fn mapped_entries_are_taken_as_the_ipv4_they_map() {
        assert_eq!(
            parse_network("::ffff:127.0.0.1").unwrap(),
            parse_network("127.0.0.1").unwrap()
        );
        assert_eq!(
            parse_network("::ffff:10.0.0.0/120").unwrap(),
            parse_network("10.0.0.0/24").unwrap()
        );
    }

    #[test]
    fn origins_are_kept_as_browsers_send_them() {
        assert_eq!(
            parse_origin("HTTPS://Chat.Example:443/").unwrap(),
            "https://chat.example"
        );
        assert_eq!(
            parse_origin("http://127.0.0.1:3000").unwrap(),
            "http://127.0.0.1:3000"
        );
        assert!(parse_origin("chat.example").is_err());
        assert!(parse_origin("https://chat.example/app").is_err());
        assert!(parse_origin("ftp://chat.example").is_err());
    }

    /// `--session-ttl` is the older name of `--guest-ttl`, still taken;
    /// the new name wins when both are given.
    #[test]
    fn the_guest_ttl_answers_to_its_older_name_too() {
        let ttl = |args: &[&str]| {
            let mut argv = vec!["chatterpro"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap().serve.guest_ttl()
        };
        let day = Duration::from_secs(86_400);
        assert_eq!(ttl(&[]), 30 * day);
        assert_eq!(ttl(&["--guest-ttl", "2days"]), 2 * day);
        assert_eq!(ttl(&["--session-ttl", "3days"]), 3 * day);
        assert_eq!(
            ttl(&["--session-ttl", "3days", "--guest-ttl", "2days"]),
            2 * day
        );
    }

    #[test]
    fn a_public_bind_without_a_public_url_is_refused_with_the_reason() {
        let mut config = Config::for_tests("sqlite::memory:");
        config.addr = "0.0.0.0:3000".parse().unwrap();
        let refusal = config.validate().unwrap_err();
        assert!(refusal.contains("--public-url"), "{refusal}");
        config.public_url = Some(parse_origin("https://chat.example").unwrap());
        assert!(config.validate().is_ok());
        config.public_url = None;
        config.addr = "[::1]:3000".parse().unwrap();
        assert!(config.validate().is_ok());
    }
}
