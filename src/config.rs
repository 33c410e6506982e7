//! Settings, from command-line flags or `CHATTERPRO_*` environment variables.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use ipnet::{IpNet, Ipv4Net};

use crate::limits::LimitsConfig;

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
    /// Load generator: drives any ChatterPro server with protocol v1 traffic.
    Bench(crate::bench::BenchArgs),
}

/// The server's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CHATTERPRO_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,

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

    /// How long a guest's session token stays valid after its last use: while
    /// valid, the browser that holds it gets its name (and author id) back,
    /// across restarts. Unused longer, it is forgotten.
    #[arg(long, env = "CHATTERPRO_SESSION_TTL", default_value = "30days",
          value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,

    /// How long a guest's name stays theirs after they were last online
    /// (and after each server start): only their session token claims it
    /// meanwhile. Past it, anyone may take the name (a new identity).
    #[arg(long, env = "CHATTERPRO_NAME_HOLD", default_value = "1h",
          value_parser = humantime::parse_duration)]
    pub name_hold: Duration,

    /// Most guests (names with a session token) stored. Checked hourly;
    /// beyond it the least recently seen are forgotten, and their tokens no
    /// longer reclaim anything. Without it, a client making up a new name
    /// per connection could grow the database for the whole --session-ttl.
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
    /// the server's own (comma-separated). Requests without Origin (non-browser
    /// clients) are always allowed.
    #[arg(long, env = "CHATTERPRO_ALLOWED_ORIGINS", value_delimiter = ',')]
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

    /// Connections the whole server holds; beyond it upgrades get HTTP 503.
    /// Keep it under the process's open-file limit.
    #[arg(long, env = "CHATTERPRO_MAX_CONNECTIONS", default_value_t = 15_000)]
    pub max_connections: usize,

    /// Connections one IP address may hold at once (HTTP 429 beyond).
    #[arg(long, env = "CHATTERPRO_MAX_CONNS_PER_IP", default_value_t = 50)]
    pub max_conns_per_ip: usize,

    /// New connections one IP address may open per minute (HTTP 429 beyond).
    #[arg(
        long,
        env = "CHATTERPRO_CONNS_PER_IP_PER_MINUTE",
        default_value = "120"
    )]
    pub conns_per_ip_per_minute: NonZeroU32,

    /// New rooms one IP address may create per minute (rate_limited beyond).
    #[arg(long, env = "CHATTERPRO_ROOMS_PER_IP_PER_MINUTE", default_value = "10")]
    pub rooms_per_ip_per_minute: NonZeroU32,
}

fn parse_ping_interval(raw: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if interval < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(interval)
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

fn parse_window(raw: &str) -> Result<Duration, String> {
    let window = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if window > Duration::from_secs(1) {
        return Err("must be at most 1s".into());
    }
    Ok(window)
}

impl Config {
    /// Checks settings that depend on each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.name_hold > self.session_ttl {
            return Err(format!(
                "--name-hold ({}) must not exceed --session-ttl ({}): a name is held for a valid token",
                humantime::format_duration(self.name_hold),
                humantime::format_duration(self.session_ttl)
            ));
        }
        if self.outbox_capacity < 2 * self.write_batch {
            return Err(format!(
                "--outbox-capacity ({}) must be at least twice --write-batch ({}): one commit \
                 can deliver that many frames to a member at once",
                self.outbox_capacity, self.write_batch
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
        }
    }

    /// Settings for tests and embedding: defaults, with this database and a free port.
    pub fn for_tests(database_url: impl Into<String>) -> Self {
        let mut config = Cli::parse_from(["chatterpro"]).serve;
        config.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database_url = database_url.into();
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
}
