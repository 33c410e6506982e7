//! Builds the server from its configuration and runs it until shutdown.
//!
//! Shutdown order matters for "nothing acknowledged is lost": stop accepting
//! connections, let the writer store every send already queued (so every
//! `sent` is true), hand every member what pacing still holds, then close
//! each connection with 1001 after flushing its outbox, and wait for them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, LocalBroker};
use crate::config::Config;
use crate::conn;
use crate::domain::RoomName;
use crate::http::{self, AppState, TrustedProxies};
use crate::hub::{Hub, HubConfig, Pacing, Registry, SocketWrites};
use crate::identity::{GuestClaims, IdentityConfig};
use crate::limits::AddressLimits;
use crate::metrics::Metrics;
use crate::storage::{GuestStore, MessageStore, RoomCreation, SqliteStore, StorageError};

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long shutdown waits for storage to take what was queued (a hung disk
/// must not hang the process forever).
const WRITER_GRACE: Duration = Duration::from_secs(30);

pub struct App {
    listener: TcpListener,
    state: AppState,
    registry: Arc<Registry>,
    writer: JoinHandle<()>,
    writer_stop: CancellationToken,
}

/// Picks the storage backend from the URL's scheme: messages and guests
/// live in the same database.
async fn open_store(
    url: &str,
) -> Result<(Arc<dyn MessageStore>, Arc<dyn GuestStore>), StorageError> {
    if url.starts_with("sqlite:") {
        let store = Arc::new(SqliteStore::connect(url).await?);
        Ok((store.clone(), store))
    } else {
        Err(StorageError::UnsupportedUrl(url.to_owned()))
    }
}

impl App {
    /// Opens storage, creates the default rooms and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let (store, guests) = open_store(&config.database_url)
            .await
            .with_context(|| format!("opening {}", config.database_url))?;
        let mut default_rooms = Vec::new();
        for name in &config.default_rooms {
            let room = RoomName::parse(name)
                .map_err(|e| anyhow::anyhow!("default room {name:?}: room name {e}"))?;
            if let RoomCreation::LooksLike(existing) = store.create_room(&room).await? {
                anyhow::bail!("default room {name:?} looks like the existing room {existing:?}");
            }
            default_rooms.push(room);
        }
        let metrics = Arc::new(Metrics::new());
        let writes = SocketWrites::detect(config.io_uring);
        tracing::debug!(?writes, "room deliveries' socket writes");
        let registry = Registry::new(
            metrics.clone(),
            Pacing {
                per_member: config.broadcast_per_member,
                max_window: config.broadcast_window,
            },
            writes,
        );
        let broker: Arc<dyn Broker> = Arc::new(LocalBroker::new(registry.clone()));
        let writer_stop = CancellationToken::new();
        let hub_config = HubConfig {
            default_rooms,
            welcome: config.welcome.clone(),
            history_on_join: config.history_on_join,
            write_batch_max: config.write_batch as usize,
            write_queue: 4 * config.write_batch as usize,
            commit_interval: config.commit_interval,
        };
        let claims = GuestClaims::start(
            guests,
            IdentityConfig {
                session_ttl: config.session_ttl,
                name_hold: config.name_hold,
                max_guests: config.max_guests,
            },
        );
        let (hub, writer) = Hub::start(
            hub_config,
            registry.clone(),
            store,
            claims,
            broker,
            metrics,
            writer_stop.clone(),
        );
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let state = AppState {
            hub: Arc::new(hub),
            conn_settings: conn::Settings {
                outbox_capacity: config.outbox_capacity as usize,
                outbox_bytes: config.outbox_bytes,
                ping_interval: config.ping_interval,
            },
            limits: AddressLimits::new(config.limits()),
            allowed_origins: Arc::new(config.allowed_origins.clone()),
            trusted_proxies: Arc::new(TrustedProxies::new(config.trusted_proxies.clone())),
            close_connections: CancellationToken::new(),
            sessions: TaskTracker::new(),
        };
        Ok(Self {
            listener,
            state,
            registry,
            writer,
            writer_stop,
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then shuts down in order.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            registry,
            writer,
            writer_stop,
        } = self;
        tracing::info!(addr = %listener.local_addr()?, "serving");
        let router = http::router(state.clone());
        let stop_accepting = CancellationToken::new();
        let server = tokio::spawn(http::serve(listener, router, stop_accepting.clone()));
        shutdown.await;
        stop_accepting.cancel();
        // Store everything queued before any connection is told to go.
        writer_stop.cancel();
        match tokio::time::timeout(WRITER_GRACE, writer).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "writer task failed"),
            Err(_) => tracing::error!("storage did not finish the queued writes in time"),
        }
        // Messages held back by pacing go to the outboxes now, to be flushed
        // with everything else before the close frame.
        registry.flush_all();
        state.close_connections.cancel();
        state.sessions.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, state.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
            Err(_) => tracing::warn!("HTTP server did not stop in time"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}
