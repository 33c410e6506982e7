//! The hub: names, rooms, presence and message flow — the only code that
//! knows who is in which room. Connections call it with parsed requests; it
//! answers through each connection's outbox ([`Peer`]).
//!
//! It holds state only, and never sees a WebSocket, a socket or a file
//! descriptor: a connection is a [`Peer`] (`outbox`: a bounded queue of
//! frames plus a kill switch), and the bytes and the writes are the
//! outbox's. Storage, names and cross-server fan-out are the
//! [`MessageStore`], [`NameClaims`] and [`Broker`] traits, chosen once in
//! `app.rs`.
//!
//! The order of events for a send: membership checked here → queued to the
//! commit task (`commit`) → stored (group commit) → `sent` queued to the sender → the
//! commit's messages handed to the publisher (`publish`, a bounded
//! hand-off) → published through the broker as one
//! [`RoomEvent`](crate::broker::RoomEvent) per room
//! → on every subscribed server (this one included) received by the
//! [`Registry`]: encoded once per room, recorded in the `recent` tail,
//! queued to each member's outbox → the round's socket writes handed to
//! the kernel together (`outbox::write_round`) → the senders' `sent` written if the
//! round did not take it along. A join: the join gate goes up, the room is
//! subscribed (on its first local member) and the joiner waits for the
//! subscription, then reads its catch-up from `recent` when it can, from
//! storage otherwise. A person's first connection in a room, and their
//! last leaving it, are published as membership events through the same
//! hand-off; presence is computed from them, wherever they happened.
//!
//! Rooms nobody uses, and rooms an operator removed, are removed by the
//! [`Reaper`] (`lifecycle`), which also makes the hub forget them.

mod commit;
mod lifecycle;
mod presence;
mod publish;
mod recent;
mod refusal;
mod registry;

pub use commit::{SendTicket, SendsInFlight};
pub use lifecycle::{Reaper, ReaperConfig};
pub use publish::{Handoff, PUBLISH_BACKLOG, Publications, handoff};
pub use refusal::Refusal;
pub use registry::{Delivery, Pacing, PreparedCatchUp, Registry};

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{RwLock, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError};
use crate::clock;
use crate::domain::{AuthorId, InputError, Message, MessageText, Nickname, Nonce, RoomName};
use crate::identity::{Claim, ClaimError, NameClaims};
use crate::metrics::Metrics;
use crate::outbox::Peer;
use crate::protocol::{
    self, ChatMessage, EncodedMessage, EncodedMessages, ErrorCode, HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX, Ref, RoomInfo, SINCE_LIMIT, SINCE_MAX_BYTES,
};
use crate::storage::{MessageStore, RoomCreation, SendKey, StorageError};
use commit::{CommitTask, SendJob};
use publish::Publisher;

/// Most rooms a room list holds.
pub const ROOM_LIST_MAX: usize = 100;
/// Newest messages kept in memory per subscribed room (at least the join history).
const RECENT_KEPT: usize = 100;

/// Settings the hub takes from the configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Rooms that always exist, listed first.
    pub default_rooms: Vec<RoomName>,
    /// Welcome notice; `{name}` is replaced by the joiner's name.
    pub welcome: String,
    /// Messages in a `joined` reply without `since`.
    pub history_on_join: u32,
    /// Whether guests may say hello (`--guests`), announced in the facts.
    pub guests: bool,
    /// Most messages stored in one transaction.
    pub write_batch_max: usize,
    /// Accepted sends waiting for the commit task before senders wait too.
    pub write_queue: usize,
    /// Least time between the starts of two commits.
    pub commit_interval: Duration,
    /// Empty rooms are listed if they had a message within this.
    pub room_list_window: Duration,
    /// How long one room list is reused (zero: built for every request).
    pub room_list_refresh: Duration,
}

/// The room list as last built: for `welcome` and `rooms` replies, and as
/// the body of `GET /api/rooms`, serialized once.
pub struct RoomList {
    built: Instant,
    pub rooms: Vec<RoomInfo>,
    /// `{"rooms":[…]}`.
    pub json: Bytes,
}

/// A `send` request, its fields not yet parsed (but the room's).
pub struct Outgoing<'a> {
    pub room: RoomName,
    pub text: &'a str,
    pub nonce: Option<&'a str>,
    pub r#ref: Option<Ref>,
}

pub struct Hub {
    /// Who is where, presence, delivery, and the newest messages of the
    /// rooms followed (most joins need no storage read).
    registry: Arc<Registry>,
    /// Rooms known to exist in storage, so that checking before a join
    /// does not cost a query each time. A room is taken out when it is
    /// removed ([`lifecycle`]).
    known_rooms: Mutex<HashSet<RoomName>>,
    /// The last room list built, shared by every request for it until it
    /// is older than `room_list_refresh`.
    room_list: Mutex<Option<Arc<RoomList>>>,
    /// Held while a room list is built, so that a flood of requests finding
    /// it stale builds it once, not once each.
    room_list_build: tokio::sync::Mutex<()>,
    /// Joins and sends hold it to read; removing a room holds it to write,
    /// so that no join or send is half done for a room while it goes.
    lifecycle: RwLock<()>,
    /// Sends handed to the commit task so far, and (from the publisher) sends
    /// stored and published, or failed: a removal waits until the second
    /// reaches the first, so that no send accepted before it recreates the
    /// room or is delivered after it.
    queued: AtomicU64,
    settled: watch::Receiver<u64>,
    store: Arc<dyn MessageStore>,
    claims: Arc<dyn NameClaims>,
    broker: Arc<dyn Broker>,
    jobs_tx: mpsc::Sender<SendJob>,
    config: HubConfig,
    /// The server's names and limits, for `welcome` and `GET /api/info`.
    info: ServerFacts,
    metrics: Arc<Metrics>,
}

/// [`crate::protocol::ServerInfo`], and its JSON serialized once: it never
/// changes while the server runs.
struct ServerFacts {
    info: crate::protocol::ServerInfo,
    json: Bytes,
}

impl ServerFacts {
    fn new(config: &HubConfig) -> Self {
        use crate::domain::{BOT_NAME, MESSAGE_MAX_CHARS, NICKNAME_MAX_CHARS, ROOM_NAME_MAX_CHARS};
        let info = crate::protocol::ServerInfo {
            bot: BOT_NAME.to_owned(),
            default_rooms: config
                .default_rooms
                .iter()
                .map(|room| room.as_str().to_owned())
                .collect(),
            max_name_chars: NICKNAME_MAX_CHARS,
            max_room_chars: ROOM_NAME_MAX_CHARS,
            max_text_chars: MESSAGE_MAX_CHARS,
            history_on_join: config.history_on_join,
            history_max: HISTORY_LIMIT_MAX,
            guests: config.guests,
        };
        let json = Bytes::from(serde_json::to_vec(&info).expect("plain data serializes"));
        Self { info, json }
    }
}

pub(crate) fn internal(e: StorageError) -> Refusal {
    // As an error value: the subscriber prints the driver's error (the
    // source) after what went wrong.
    tracing::error!(
        error = &e as &dyn std::error::Error,
        "storage request failed"
    );
    Refusal::new(
        ErrorCode::Internal,
        "the server could not complete this request",
    )
}

fn claim_refused(e: ClaimError) -> Refusal {
    match e {
        ClaimError::Online(_) | ClaimError::Held(_) => {
            Refusal::new(ErrorCode::NameTaken, e.to_string())
        }
        ClaimError::Storage(e) => internal(e),
    }
}

/// Parses a name from a request.
pub fn parse_name(raw: &str) -> Result<Nickname, Refusal> {
    Nickname::parse(raw).map_err(|e| Refusal::new(ErrorCode::InvalidName, format!("name {e}")))
}

/// Parses a room name from a request.
pub fn parse_room(raw: &str) -> Result<RoomName, Refusal> {
    RoomName::parse(raw).map_err(|e| Refusal::new(ErrorCode::InvalidRoom, format!("room name {e}")))
}

/// Why `/healthz` fails.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("storage unavailable")]
    Storage(#[source] StorageError),
    #[error("broker unavailable")]
    Broker(#[source] BrokerError),
}

impl Hub {
    /// Builds the hub — its registry attached to `broker` — and starts its
    /// commit task and publisher. The commit task stops when `commit_stop` fires,
    /// after storing everything already queued; the returned handle
    /// finishes once that is published too.
    pub fn start(
        config: HubConfig,
        delivery: Delivery,
        store: Arc<dyn MessageStore>,
        claims: Arc<dyn NameClaims>,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        commit_stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (jobs_tx, jobs_rx) = mpsc::channel(config.write_queue);
        let (handoff, publications) = publish::handoff(PUBLISH_BACKLOG, metrics.clone());
        let registry = Registry::new(
            metrics.clone(),
            delivery,
            (config.history_on_join as usize).max(RECENT_KEPT),
            broker.clone(),
            handoff.clone(),
        );
        let (settled_tx, settled) = watch::channel(0);
        let publisher = Publisher {
            broker: broker.clone(),
            metrics: metrics.clone(),
            settled: settled_tx,
        };
        tokio::spawn(publisher.run(publications));
        let commit_task = CommitTask {
            store: store.clone(),
            handoff,
            metrics: metrics.clone(),
            batch_max: config.write_batch_max,
            commit_interval: config.commit_interval,
        };
        let commit_task = tokio::spawn(commit_task.run(jobs_rx, commit_stop));
        let info = ServerFacts::new(&config);
        let hub = Self {
            registry,
            known_rooms: Mutex::new(HashSet::new()),
            room_list: Mutex::new(None),
            room_list_build: tokio::sync::Mutex::new(()),
            lifecycle: RwLock::new(()),
            queued: AtomicU64::new(0),
            settled,
            store,
            claims,
            broker,
            jobs_tx,
            config,
            info,
            metrics,
        };
        (hub, commit_task)
    }

    /// Who is where on this server (for shutdown's last flush).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The server's names and limits, as `welcome` carries them.
    pub fn server_info(&self) -> &crate::protocol::ServerInfo {
        &self.info.info
    }

    /// [`Hub::server_info`] as JSON: the body of `GET /api/info`.
    pub fn server_info_json(&self) -> Bytes {
        self.info.json.clone()
    }

    /// Claims a guest's name for a connection: who it is until it closes.
    pub async fn hello(&self, name: Nickname, session: Option<&str>) -> Result<Claim, Refusal> {
        self.claims
            .claim(name, session)
            .await
            .map_err(claim_refused)
    }

    /// Counts a connection signed in to the account named `name` (whose
    /// messages carry `author`) online under that name.
    pub fn hello_account(&self, name: Nickname, author: AuthorId) -> Result<Claim, Refusal> {
        self.claims
            .claim_account(name, author)
            .map_err(claim_refused)
    }

    /// Joins `peer` to a room (creating it), replying `joined` through the
    /// peer. Returns the size of that reply as queued (0 if the peer went
    /// meanwhile), for the caller to charge to whatever budget it keeps.
    pub async fn join(
        &self,
        peer: &Peer,
        name: &Nickname,
        room: RoomName,
        since: Option<u64>,
        r#ref: Option<&Ref>,
    ) -> Result<usize, Refusal> {
        // Not while the room is being removed (see `lifecycle`).
        let _open = self.lifecycle.read().await;
        // A known room needs no write. A new room must not look like an
        // existing one.
        if !self.known_rooms().contains(&room) {
            match self.store.create_room(&room).await.map_err(internal)? {
                RoomCreation::Created | RoomCreation::Existed => {}
                RoomCreation::LooksLike(existing) => {
                    return Err(Refusal::new(
                        ErrorCode::InvalidRoom,
                        format!(
                            "the room name {:?} looks like the existing room {existing:?}; join that one",
                            room.as_str()
                        ),
                    ));
                }
            }
        }
        let was_member = self.registry.begin_join(&room, peer, name);
        let catch_up = async {
            // Whatever is stored after the read below must reach the
            // joiner live: only once the room's subscription holds.
            if let Err(e) = self.broker.subscribed(&room).await {
                return Err(JoinFailed::Broker(e));
            }
            let prepared = self.catch_up(&room, since).await?;
            // A `since` beyond the room's newest message was given for an
            // earlier room of this name, since removed: the client is told
            // to start over (`truncated`) with this room's latest messages.
            if since.is_some_and(|since| since > prepared.last_seq) {
                let mut fresh = self.catch_up(&room, None).await?;
                fresh.truncated = true;
                return Ok(fresh);
            }
            Ok::<_, JoinFailed>(prepared)
        };
        match catch_up.await {
            Ok(catch_up) => {
                self.remember_room(&room);
                let welcome = self.config.welcome.replace("{name}", name.as_str());
                Ok(self
                    .registry
                    .finish_join(&room, peer.id(), catch_up, &welcome, r#ref))
            }
            Err(e) => {
                self.registry.abort_join(&room, peer.id(), was_member);
                Err(match e {
                    JoinFailed::Storage(e) => internal(e),
                    JoinFailed::Broker(e) => {
                        tracing::error!(error = %e, "subscribing to a room failed");
                        Refusal::new(
                            ErrorCode::Internal,
                            "the server could not complete this request",
                        )
                    }
                })
            }
        }
    }

    /// A joiner's catch-up, creating the room if needed. The join gate must
    /// be up (`begin_join`), so that a snapshot taken now, from memory or
    /// storage, is followed by everything newer, live.
    async fn catch_up(
        &self,
        room: &RoomName,
        since: Option<u64>,
    ) -> Result<PreparedCatchUp, StorageError> {
        let limit = if since.is_some() {
            SINCE_LIMIT
        } else {
            self.config.history_on_join
        };
        let recent = self.registry.recent();
        if let Some((messages, last_seq)) = recent.catch_up(room, since, limit)
            && (since.is_none() || messages.as_json().len() <= SINCE_MAX_BYTES)
        {
            return Ok(PreparedCatchUp {
                messages,
                last_seq,
                truncated: false,
            });
        }
        // A known room needs no write: a removed one is forgotten first.
        if !self.known_rooms().contains(room) {
            self.store.create_room(room).await?;
        }
        let stored = self.store.catch_up(room, since, limit).await?;
        if since.is_none() {
            recent.offer(room, &stored, limit);
        }
        // Serialized here, outside the registry's lock.
        if since.is_some() {
            let (messages, cut) = newest_within(stored.messages, SINCE_MAX_BYTES);
            return Ok(PreparedCatchUp {
                messages,
                last_seq: stored.last_seq,
                truncated: stored.truncated || cut,
            });
        }
        let messages: Vec<ChatMessage> =
            stored.messages.into_iter().map(ChatMessage::from).collect();
        Ok(PreparedCatchUp {
            messages: EncodedMessages::encode(&messages),
            last_seq: stored.last_seq,
            truncated: stored.truncated,
        })
    }

    /// Accepts a message for storing; the commit task replies `sent` once it is
    /// durable. With a `nonce`, a resend of a message stored before (same
    /// sender, same nonce, within [`crate::protocol::NONCE_WINDOW_MS`]) is
    /// answered with that message's `sent` instead. The send counts in
    /// `in_flight` until its answer is queued.
    pub async fn send(
        &self,
        peer: &Peer,
        name: &Nickname,
        author: AuthorId,
        outgoing: Outgoing<'_>,
        in_flight: &Arc<SendsInFlight>,
    ) -> Result<(), Refusal> {
        let Outgoing {
            room,
            text,
            nonce,
            r#ref,
        } = outgoing;
        // Held until the send is queued: a room's removal waits for it,
        // then for the commit task to store it (see `lifecycle`).
        let _open = self.lifecycle.read().await;
        self.require_member(&room, peer)?;
        let text = MessageText::parse(text).map_err(|e| match e {
            InputError::TooLong(_) => Refusal::new(ErrorCode::TooLarge, format!("text {e}")),
            _ => Refusal::new(ErrorCode::BadRequest, format!("text {e}")),
        })?;
        let key = nonce
            .map(|nonce| {
                let nonce = Nonce::parse(nonce)
                    .map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("nonce {e}")))?;
                // "The same sender" is the identity, not the name: a guest
                // keeps its author id across reconnects and restarts (with
                // its token), and someone who takes a free name later does
                // not inherit its holder's nonces. Opaque to the store.
                Ok(SendKey {
                    sender: author.get().to_string(),
                    nonce,
                })
            })
            .transpose()?;
        let job = SendJob {
            room,
            from: name.clone(),
            author,
            text,
            key,
            sender: peer.clone(),
            r#ref,
            accepted: tokio::time::Instant::now(),
            _ticket: in_flight.ticket(),
        };
        self.jobs_tx
            .send(job)
            .await
            .map_err(|_| Refusal::new(ErrorCode::Internal, "the server is shutting down"))?;
        self.queued.fetch_add(1, Ordering::Release);
        self.metrics.messages_received.inc();
        Ok(())
    }

    pub fn leave(&self, peer: &Peer, room: RoomName) -> Result<RoomName, Refusal> {
        if self.registry.leave(&room, peer.id()) {
            Ok(room)
        } else {
            Err(not_member(&room))
        }
    }

    pub async fn history(
        &self,
        peer: &Peer,
        room: RoomName,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(RoomName, Vec<ChatMessage>), Refusal> {
        self.require_member(&room, peer)?;
        let limit = limit
            .unwrap_or(HISTORY_LIMIT_DEFAULT)
            .clamp(1, HISTORY_LIMIT_MAX);
        let messages = self
            .store
            .history(&room, before, limit)
            .await
            .map_err(internal)?;
        Ok((room, messages.into_iter().map(ChatMessage::from).collect()))
    }

    /// The room list people pick from (see [`Hub::room_list`]).
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>, Refusal> {
        Ok(self.room_list().await?.rooms.clone())
    }

    /// The room list people pick from: the default rooms in their configured
    /// order, then rooms with people in them (most first), then those with
    /// the latest messages within `room_list_window`; at most
    /// [`ROOM_LIST_MAX`], however many rooms exist. Rooms nobody is in and
    /// nobody wrote in lately are left out, so creating rooms fills nothing.
    ///
    /// Built at most once per `room_list_refresh` and shared: every `hello`,
    /// `rooms` request and `GET /api/rooms` wants it, and a flood of them
    /// must cost neither a storage read nor a pass over every room each.
    /// Its order and counts may lag that much.
    pub async fn room_list(&self) -> Result<Arc<RoomList>, Refusal> {
        if let Some(list) = self.fresh_room_list() {
            return Ok(list);
        }
        let _building = self.room_list_build.lock().await;
        // Built meanwhile by the request this one waited for?
        if let Some(list) = self.fresh_room_list() {
            return Ok(list);
        }
        let list = Arc::new(self.build_room_list().await?);
        *self.room_list_slot() = Some(list.clone());
        Ok(list)
    }

    fn fresh_room_list(&self) -> Option<Arc<RoomList>> {
        self.room_list_slot()
            .as_ref()
            .filter(|list| list.built.elapsed() < self.config.room_list_refresh)
            .cloned()
    }

    fn room_list_slot(&self) -> MutexGuard<'_, Option<Arc<RoomList>>> {
        self.room_list.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn build_room_list(&self) -> Result<RoomList, Refusal> {
        let window = i64::try_from(self.config.room_list_window.as_millis()).unwrap_or(i64::MAX);
        let recent = self
            .store
            .recent_rooms(clock::now_ms().saturating_sub(window), ROOM_LIST_MAX as u32)
            .await
            .map_err(internal)?;
        // Enough of the busiest rooms to fill the list even if every default
        // room is among them.
        let busy = self
            .registry
            .busiest(ROOM_LIST_MAX + self.config.default_rooms.len());
        let mut seen = HashSet::new();
        let names: Vec<&str> = self
            .config
            .default_rooms
            .iter()
            .map(RoomName::as_str)
            .chain(busy.iter().map(|(room, _)| room.as_str()))
            .chain(recent.iter().map(String::as_str))
            .filter(|name| seen.insert(*name))
            .take(ROOM_LIST_MAX)
            .collect();
        let online = self.registry.online_in(&names);
        let rooms: Vec<RoomInfo> = names
            .into_iter()
            .zip(online)
            .map(|(name, online)| RoomInfo {
                name: name.to_owned(),
                online,
            })
            .collect();
        let json = serde_json::to_vec(&serde_json::json!({ "rooms": rooms }))
            .expect("room names serialize");
        Ok(RoomList {
            built: Instant::now(),
            rooms,
            json: Bytes::from(json),
        })
    }

    /// Whether the room exists (joining it would not create it).
    pub async fn room_exists(&self, room: &RoomName) -> Result<bool, Refusal> {
        if self.known_rooms().contains(room) {
            return Ok(true);
        }
        let exists = self.store.room_exists(room).await.map_err(internal)?;
        if exists {
            self.remember_room(room);
        }
        Ok(exists)
    }

    /// How many rooms `peer` is in.
    pub fn rooms_of(&self, peer: &Peer) -> usize {
        self.registry.rooms_of(peer.id())
    }

    pub fn is_member(&self, room: &RoomName, peer: &Peer) -> bool {
        self.registry.is_member(room, peer.id())
    }

    fn known_rooms(&self) -> MutexGuard<'_, HashSet<RoomName>> {
        self.known_rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_room(&self, room: &RoomName) {
        let mut known = self.known_rooms();
        if !known.contains(room) {
            known.insert(room.clone());
        }
    }

    /// Forgets a closed connection, and releases its name if it had one.
    pub fn disconnect(&self, peer: &Peer, claim: Option<&Claim>) {
        self.registry.disconnect(peer.id());
        if let Some(claim) = claim {
            self.claims.release(claim);
        }
    }

    /// Whether storage answers and the broker can deliver.
    pub async fn health(&self) -> Result<(), Unhealthy> {
        self.store.ping().await.map_err(Unhealthy::Storage)?;
        self.broker.health().map_err(Unhealthy::Broker)
    }

    fn require_member(&self, room: &RoomName, peer: &Peer) -> Result<(), Refusal> {
        if self.registry.is_member(room, peer.id()) {
            Ok(())
        } else {
            Err(not_member(room))
        }
    }
}

/// The newest of `messages` (oldest first) whose JSON fits in `max_bytes`,
/// as a reply's array, and whether any were left out.
fn newest_within(messages: Vec<Message>, max_bytes: usize) -> (EncodedMessages, bool) {
    let total = messages.len();
    let mut kept: Vec<EncodedMessage> = Vec::new();
    let mut bytes = 0;
    for message in messages.iter().rev() {
        let json = encoded(message);
        bytes += json.as_json().len() + 1;
        if bytes > max_bytes {
            break;
        }
        kept.push(json);
    }
    let cut = kept.len() < total;
    (EncodedMessages::concat(kept.iter().rev()), cut)
}

/// Why a join's catch-up could not be prepared.
enum JoinFailed {
    Storage(StorageError),
    Broker(BrokerError),
}

impl From<StorageError> for JoinFailed {
    fn from(e: StorageError) -> Self {
        JoinFailed::Storage(e)
    }
}

/// A stored message's JSON as clients see it, serialized from borrowed
/// fields. With the `From` below, the hub is where the domain's [`Message`]
/// becomes the wire's [`ChatMessage`] (storage and the broker never see the
/// wire type).
pub(crate) fn encoded(message: &Message) -> EncodedMessage {
    EncodedMessage::new(&protocol::ChatMessageRef {
        room: message.room.as_str(),
        id: &message.id,
        seq: message.seq,
        from: &message.from,
        author: message.author.map(AuthorId::get),
        text: &message.text,
        ts: message.at,
    })
}

/// A stored message as clients see it, owned (history replies).
impl From<Message> for ChatMessage {
    fn from(message: Message) -> Self {
        ChatMessage {
            room: message.room.into_string(),
            id: message.id,
            seq: message.seq,
            from: message.from,
            author: message.author.map(AuthorId::get),
            text: message.text,
            ts: message.at,
        }
    }
}

fn not_member(room: &RoomName) -> Refusal {
    Refusal::new(
        ErrorCode::NotMember,
        format!("you have not joined the room {:?}", room.as_str()),
    )
}
