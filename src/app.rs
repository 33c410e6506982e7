//! Builds the server from its configuration and runs it until shutdown.
//!
//! Shutdown order matters for "nothing acknowledged is lost": stop accepting
//! connections, let the commit task store every send already queued (so every
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
use crate::http::{self, AllowedOrigins, AppState, ServeSettings, SocketBudget, TrustedProxies};
use crate::hub::{Delivery, Hub, HubConfig, Pacing, Reaper, ReaperConfig, Registry};
use crate::identity::{Accounts, AccountsConfig, GuestClaims, IdentityConfig};
use crate::limits::AddressLimits;
use crate::metrics::Metrics;
use crate::outbox::SocketWrites;
use crate::storage::{
    AccountStore, GuestStore, MessageStore, RoomCreation, SqliteStore, StorageError,
};

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long shutdown waits for storage to take what was queued (a hung disk
/// must not hang the process forever).
const COMMIT_GRACE: Duration = Duration::from_secs(30);

pub struct App {
    listener: TcpListener,
    metrics_listener: TcpListener,
    handshake_timeout: Duration,
    state: AppState,
    registry: Arc<Registry>,
    commit_task: JoinHandle<()>,
    commit_stop: CancellationToken,
    reaper: Reaper,
    /// To save guests' queued writes once every connection has closed.
    claims: Arc<GuestClaims>,
}

/// The stores of one database, each behind its trait.
type Stores = (
    Arc<dyn MessageStore>,
    Arc<dyn GuestStore>,
    Arc<dyn AccountStore>,
);

/// Picks the storage backend from the URL's scheme: messages, guests and
/// accounts live in the same database.
async fn open_store(url: &str) -> Result<Stores, StorageError> {
    if url.starts_with("sqlite:") {
        let store = Arc::new(SqliteStore::connect(url).await?);
        Ok((store.clone(), store.clone(), store))
    } else {
        Err(StorageError::invalid(
            format!("unsupported database URL {url:?}: expected sqlite://PATH (a file)"),
            None,
        ))
    }
}

impl App {
    /// Opens storage, creates the default rooms and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // One server: its broker is in-process.
        Self::build_with_broker(config, Arc::new(LocalBroker::new())).await
    }

    /// [`App::build`] with the broker given (tests: a broker that fails).
    pub async fn build_with_broker(
        config: Config,
        broker: Arc<dyn Broker>,
    ) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let (store, guests, account_store) = open_store(&config.database_url)
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
        let delivery = Delivery {
            pacing: Pacing {
                per_member: config.broadcast_per_member,
                max_window: config.broadcast_window,
                presence_interval: config.presence_interval,
            },
            writes,
        };
        let commit_stop = CancellationToken::new();
        let hub_config = HubConfig {
            default_rooms,
            welcome: config.welcome.clone(),
            history_on_join: config.history_on_join,
            guests: config.guests,
            write_batch_max: config.write_batch as usize,
            write_queue: 4 * config.write_batch as usize,
            commit_interval: config.commit_interval,
            room_list_window: config.room_list_window,
            room_list_refresh: config.room_list_refresh,
        };
        let claims = GuestClaims::start(
            guests,
            IdentityConfig {
                guest_ttl: config.guest_ttl(),
                name_hold: config.name_hold,
                max_guests: config.max_guests,
            },
        );
        let accounts = Accounts::start(account_store, claims.clone(), AccountsConfig::default());
        let (hub, commit_task) = Hub::start(
            hub_config,
            delivery,
            store,
            claims.clone(),
            broker,
            metrics,
            commit_stop.clone(),
        );
        let registry = hub.registry().clone();
        let hub = Arc::new(hub);
        let reaper = Reaper::build(
            hub.clone(),
            ReaperConfig {
                unused_ttl: config.unused_room_ttl,
                idle_ttl: config.idle_room_ttl,
                interval: config.room_reap_interval,
            },
        )
        .await?;
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| format!("binding {} (--metrics-addr)", config.metrics_addr))?;
        if !config.metrics_addr.ip().is_loopback() {
            tracing::warn!(
                metrics_addr = %config.metrics_addr,
                "/metrics has no authentication: keep --metrics-addr out of the public's reach"
            );
        }
        let origins = AllowedOrigins::new(
            config.public_url.as_deref(),
            listener.local_addr()?,
            &config.allowed_origins,
        );
        tracing::debug!(origins = ?origins.list(), "WebSocket origins allowed");
        let mut limits = config.limits();
        let budget = SocketBudget::of_this_process();
        if budget.sockets < limits.max_connections {
            tracing::warn!(
                open_files = budget.open_files,
                max_connections = budget.sockets,
                "--max-connections lowered to the open-file limit less the server's reserve"
            );
            limits.max_connections = budget.sockets;
        }
        let state = AppState {
            hub,
            conn_settings: conn::Settings {
                outbox_capacity: config.outbox_capacity as usize,
                outbox_bytes: config.outbox_bytes,
                ping_interval: config.ping_interval,
                frame_timeout: config.frame_timeout,
                guests: config.guests,
            },
            limits: AddressLimits::new(limits),
            origins: Arc::new(origins),
            trusted_proxies: Arc::new(TrustedProxies::new(config.trusted_proxies.clone())),
            close_connections: CancellationToken::new(),
            connections: TaskTracker::new(),
            accounts,
            secure_cookies: config
                .public_url
                .as_deref()
                .is_some_and(|url| url.starts_with("https:")),
        };
        Ok(Self {
            listener,
            metrics_listener,
            handshake_timeout: config.handshake_timeout,
            state,
            registry,
            commit_task,
            commit_stop,
            reaper,
            claims,
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served (the real port when configured with port 0).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
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
            metrics_listener,
            handshake_timeout,
            state,
            registry,
            commit_task,
            commit_stop,
            reaper,
            claims,
        } = self;
        tracing::info!(
            addr = %listener.local_addr()?,
            metrics_addr = %metrics_listener.local_addr()?,
            "serving"
        );
        let router = http::router(state.clone());
        let stop_accepting = CancellationToken::new();
        let settings = ServeSettings {
            limits: state.limits.clone(),
            trusted_proxies: state.trusted_proxies.clone(),
            handshake_timeout,
        };
        let server = tokio::spawn(http::serve(
            listener,
            router,
            settings,
            stop_accepting.clone(),
        ));
        let metrics_server = {
            let stop = stop_accepting.clone();
            let router = http::metrics_router(state.clone());
            tokio::spawn(async move {
                let served = axum::serve(metrics_listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            })
        };
        let stop_reaping = CancellationToken::new();
        let reaper = tokio::spawn(reaper.run(stop_reaping.clone()));
        shutdown.await;
        stop_accepting.cancel();
        // No room is removed while shutting down (a removal waits for the commit task).
        stop_reaping.cancel();
        if let Err(e) = reaper.await {
            tracing::error!(error = %e, "room reaper failed");
        }
        // Store everything queued before any connection is told to go.
        commit_stop.cancel();
        match tokio::time::timeout(COMMIT_GRACE, commit_task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "commit task failed"),
            Err(_) => tracing::error!("storage did not finish the queued writes in time"),
        }
        // Messages held back by pacing go to the outboxes now, to be flushed
        // with everything else before the close frame.
        registry.flush_all();
        state.close_connections.cancel();
        state.connections.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, state.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        // Their last leavings included: a clean restart loses no claim.
        match tokio::time::timeout(COMMIT_GRACE, claims.save_queued()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(
                error = &e as &dyn std::error::Error,
                "could not save guests' claims"
            ),
            Err(_) => tracing::error!("storage did not save guests' claims in time"),
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
            Err(_) => tracing::warn!("HTTP server did not stop in time"),
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, metrics_server)
            .await
            .is_err()
        {
            tracing::warn!("metrics listener did not stop in time");
        }
        tracing::info!("stopped");
        Ok(())
    }
}
