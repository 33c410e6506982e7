//! Settings, from command-line flags or `CHATTERPRO_*` environment variables.

use std::net::SocketAddr;

use clap::Parser;

/// ChatterPro: a real-time multi-room chat server with its browser app.
///
/// With no arguments it serves http://127.0.0.1:3000 and keeps its data in
/// ./chatterpro.db (SQLite).
#[derive(Debug, Clone, Parser)]
#[command(name = "chatterpro", version, about, long_about)]
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

    /// Messages shown on joining a room (at most 1000).
    #[arg(long, env = "CHATTERPRO_HISTORY_ON_JOIN", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub history_on_join: u32,

    /// Frames queued for one connection before it counts as too slow and is
    /// closed with 1013 (it can reconnect and resume without loss).
    #[arg(long, env = "CHATTERPRO_OUTBOX_CAPACITY", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(16..))]
    pub outbox_capacity: u32,

    /// Most messages stored in one transaction (group commit).
    #[arg(long, env = "CHATTERPRO_WRITE_BATCH", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub write_batch: u32,

    /// Extra origins (scheme://host[:port]) allowed to open WebSockets, besides
    /// the server's own (comma-separated). Requests without Origin (non-browser
    /// clients) are always allowed.
    #[arg(long, env = "CHATTERPRO_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
}

impl Config {
    /// Settings for tests and embedding: defaults, with this database and a free port.
    pub fn for_tests(database_url: impl Into<String>) -> Self {
        let mut config = Config::parse_from(["chatterpro"]);
        config.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database_url = database_url.into();
        config
    }
}
