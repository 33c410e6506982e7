//! Prometheus metrics, one registry per server instance (tests run several
//! servers in one process, so nothing here is global).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    code: u16,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub rooms_active: Gauge,
    pub messages_received: Counter,
    pub messages_stored: Counter,
    /// Transactions that stored messages (messages_stored / commits is the group-commit batch).
    pub commits: Counter,
    pub frames_out: Counter,
    /// Socket sends of delivery rounds handed to the kernel through
    /// io_uring, and the system calls that carried them (`outbox::uring`).
    pub batched_sends: Counter,
    pub send_batches: Counter,
    /// Where a message's time goes on the server (seconds): waiting for
    /// the commit task (`send_wait`), its transaction (`commit`), and the
    /// delivery round that publishing its commit ran (`publish`).
    pub send_wait: Histogram,
    pub commit_seconds: Histogram,
    pub publish_seconds: Histogram,
    /// Commits stored and waiting to be published (`hub::publish`).
    pub publish_backlog: Gauge,
    /// Times the commit task waited for a place in the publishing backlog.
    pub publish_waits: Counter,
    /// Commits the broker refused to publish (stored; members catch up).
    pub publish_failures: Counter,
    /// Room events the broker reported lost (`broker::Subscriber::lagged`).
    pub broker_events_lost: Counter,
    errors: Family<ErrorLabels, Counter>,
    closes: Family<CloseLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("chatterpro");
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        let rooms_active = Gauge::default();
        registry.register(
            "rooms_active",
            "Rooms with at least one member on this server",
            rooms_active.clone(),
        );
        let messages_received = Counter::default();
        registry.register(
            "messages_received",
            "Chat messages accepted from clients",
            messages_received.clone(),
        );
        let messages_stored = Counter::default();
        registry.register(
            "messages_stored",
            "Chat messages durably stored",
            messages_stored.clone(),
        );
        let commits = Counter::default();
        registry.register(
            "storage_commits",
            "Transactions that stored chat messages (one fsync each)",
            commits.clone(),
        );
        let frames_out = Counter::default();
        registry.register(
            "frames_delivered",
            "Room frames (messages, presence) queued to members",
            frames_out.clone(),
        );
        let batched_sends = Counter::default();
        registry.register(
            "socket_batched_sends",
            "Socket sends of room deliveries handed to the kernel through io_uring",
            batched_sends.clone(),
        );
        let send_batches = Counter::default();
        registry.register(
            "socket_send_batches",
            "io_uring_enter calls that carried delivery rounds' socket sends",
            send_batches.clone(),
        );
        // 50 µs to ~1.6 s, doubling.
        let buckets = || Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let send_wait = buckets();
        registry.register(
            "send_wait_seconds",
            "Time an accepted send waited for the commit task to take it into a commit",
            send_wait.clone(),
        );
        let commit_seconds = buckets();
        registry.register(
            "commit_seconds",
            "Time a storage transaction of sends took, fsync included",
            commit_seconds.clone(),
        );
        let publish_seconds = buckets();
        registry.register(
            "publish_seconds",
            "Time publishing a commit's messages took (the delivery round it ran, unless pacing held them)",
            publish_seconds.clone(),
        );
        let publish_backlog = Gauge::default();
        registry.register(
            "publish_backlog",
            "Commits stored and not yet published through the broker",
            publish_backlog.clone(),
        );
        let publish_waits = Counter::default();
        registry.register(
            "publish_waits",
            "Times the commit task waited to start a commit because the publishing backlog was full",
            publish_waits.clone(),
        );
        let publish_failures = Counter::default();
        registry.register(
            "publish_failures",
            "Commits the broker failed to publish (stored: members catch up with since)",
            publish_failures.clone(),
        );
        let broker_events_lost = Counter::default();
        registry.register(
            "broker_events_lost",
            "Room events the broker reported lost before they reached this server",
            broker_events_lost.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("errors", "Error replies sent, by code", errors.clone());
        let closes = Family::<CloseLabels, Counter>::default();
        registry.register(
            "server_closes",
            "Connections the server closed, by close code",
            closes.clone(),
        );
        // Every code appears from the start, so dashboards see zeros, not gaps.
        for code in ErrorCode::ALL {
            let _ = errors.get_or_create(&ErrorLabels {
                code: code.as_str(),
            });
        }
        Self {
            registry,
            connections,
            rooms_active,
            messages_received,
            messages_stored,
            commits,
            frames_out,
            batched_sends,
            send_batches,
            send_wait,
            commit_seconds,
            publish_seconds,
            publish_backlog,
            publish_waits,
            publish_failures,
            broker_events_lost,
            errors,
            closes,
        }
    }

    pub fn count_error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&ErrorLabels {
                code: code.as_str(),
            })
            .inc();
    }

    pub fn count_close(&self, code: u16) {
        self.closes.get_or_create(&CloseLabels { code }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
