//! A connection's request handler: its protocol state (identity, rate
//! limits) and the dispatch of each decoded request to the hub. Every reply
//! goes through the outbox. Dropped when the connection stops reading, which
//! takes it out of its rooms and releases its name.
//!
//! `hello` decides who the connection is: the account of its upgrade's
//! session cookie, under the account's own name; else a guest, under a
//! name no account has (when `--guests` allows guests at all).

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::Nickname;
use crate::hub::{self, Hub, Outgoing, Refusal, SendsInFlight};
use crate::identity::{Accounts, Claim};
use crate::limits::{AddressLimits, ConnLimits, LimitKind, RetryAfter};
use crate::outbox::{Frame, Peer};
use crate::protocol::{
    self, ClientMsg, ErrorCode, PROTOCOL_VERSION, Ref, Request, ServerMsg, close, encode,
};
use crate::storage::StoredAccount;

/// Who a connection may say hello as.
pub struct Identities {
    /// For whether a guest's name is an account's.
    pub accounts: Arc<Accounts>,
    /// The account of the upgrade's session cookie.
    pub account: Option<StoredAccount>,
    /// Guests may say hello (`--guests`).
    pub guests: bool,
}

pub struct Handler {
    hub: Arc<Hub>,
    peer: Peer,
    /// The name granted by `hello`, and the identity behind it.
    identity: Option<Claim>,
    identities: Identities,
    limits: ConnLimits,
    /// Set when the client ran out of strikes; it is closed after the reply.
    abusive: Cell<bool>,
    address_limits: Arc<AddressLimits>,
    ip: IpAddr,
    /// This connection's sends not yet answered (shared with the connection,
    /// which waits for them before closing).
    sends: Arc<SendsInFlight>,
}

fn rate_limited(what: &str, retry: RetryAfter) -> Refusal {
    Refusal::rate_limited(
        format!("too many {what}; try again in {} ms", retry.millis()),
        Some(retry.millis()),
    )
}

impl Handler {
    /// A refusal by the `kind` limit, recorded against the client's strikes.
    fn limited(&self, kind: LimitKind, refusal: Refusal) -> Refusal {
        let retry = refusal.retry_after_ms.map(Duration::from_millis);
        if !self.limits.refused(kind, retry) {
            self.abusive.set(true);
        }
        refusal
    }
}

impl Handler {
    pub fn new(
        hub: Arc<Hub>,
        peer: Peer,
        address_limits: Arc<AddressLimits>,
        ip: IpAddr,
        sends: Arc<SendsInFlight>,
        identities: Identities,
    ) -> Self {
        Self {
            identities,
            sends,
            hub,
            peer,
            identity: None,
            limits: address_limits.conn_limits(),
            abusive: Cell::new(false),
            address_limits,
            ip,
        }
    }

    /// Handles one text frame. Protocol mistakes become `error` replies; the
    /// connection stays open unless the client keeps breaking rate limits.
    pub async fn handle(&mut self, text: &str) {
        let decoded = protocol::decode(text);
        let r#ref = match &decoded {
            Ok(request) => request.r#ref.clone(),
            Err(rejection) => rejection.r#ref.clone(),
        };
        // Every frame counts, well-formed or not: bad frames cost work too.
        if let Err(retry) = self.limits.request() {
            let refusal = self.limited(LimitKind::Requests, rate_limited("requests", retry));
            self.reply_error(r#ref.as_ref(), refusal);
            return;
        }
        let Request { r#ref, msg } = match decoded {
            Ok(request) => request,
            Err(rejection) => {
                self.reply_error(
                    r#ref.as_ref(),
                    Refusal::new(rejection.code, rejection.message),
                );
                return;
            }
        };
        // A request of a few bytes may cost a large reply: those are
        // served within byte budgets, charged their size once built. A
        // join with `since` (a catch-up: up to 1000 messages, 1 MiB) is
        // charged in `dispatch`, its reply being queued by the hub. A join
        // without it is not: its reply holds at most `--history-on-join`
        // messages, the ones an honest client needs to show the room, and
        // joins are paced by their own limits (per connection, and per
        // address and room for membership changes).
        let costly = matches!(
            msg,
            ClientMsg::History { .. } | ClientMsg::Rooms | ClientMsg::Join { since: Some(_), .. }
        );
        if costly && let Err(refusal) = self.may_serve() {
            self.reply_error(r#ref.as_ref(), refusal);
            return;
        }
        match self.dispatch(msg, r#ref.as_ref()).await {
            Ok(Some(reply)) => {
                let encoded = encode(&reply, r#ref.as_ref());
                if costly && let Err(refusal) = self.serve(encoded.len()) {
                    self.reply_error(r#ref.as_ref(), refusal);
                    return;
                }
                self.peer.push(Frame::new(encoded));
            }
            Ok(None) => {}
            Err(refusal) => self.reply_error(r#ref.as_ref(), refusal),
        }
    }

    /// Whether this connection and its address are within their budgets
    /// of bytes served (a cheap refusal before the work).
    fn may_serve(&self) -> Result<(), Refusal> {
        self.limits
            .may_serve()
            .and_then(|()| self.address_limits.may_serve(self.ip))
            .map_err(|r| self.limited(LimitKind::Bytes, rate_limited("bytes requested", r)))
    }

    /// Charges a reply of `bytes` to the address (checked again: its other
    /// connections may have spent the budget meanwhile) and the connection.
    fn serve(&self, bytes: usize) -> Result<(), Refusal> {
        self.address_limits
            .serve(self.ip, bytes)
            .map_err(|r| self.limited(LimitKind::Bytes, rate_limited("bytes requested", r)))?;
        self.limits.served(bytes);
        Ok(())
    }

    /// Charges a reply of `bytes` already queued (a catch-up's `joined`)
    /// to the connection and its address, overdrawing them if it must.
    fn charge(&self, bytes: usize) {
        self.address_limits.charge(self.ip, bytes);
        self.limits.served(bytes);
    }

    /// Returns the reply to queue, or `None` when the hub queues it itself
    /// (`joined` and `sent` must be ordered against room frames).
    async fn dispatch(
        &mut self,
        msg: ClientMsg,
        r#ref: Option<&Ref>,
    ) -> Result<Option<ServerMsg>, Refusal> {
        if let ClientMsg::Hello { name, session } = msg {
            return self
                .hello(name.as_deref(), session.as_deref())
                .await
                .map(Some);
        }
        let Some(identity) = &self.identity else {
            return Err(self.no_identity());
        };
        let hub = &self.hub;
        let peer = &self.peer;
        match msg {
            ClientMsg::Hello { .. } => unreachable!("handled above"),
            ClientMsg::Join { room, since } => {
                let room = hub::parse_room(&room)?;
                self.limits
                    .join()
                    .map_err(|r| self.limited(LimitKind::Joins, rate_limited("joins", r)))?;
                if !hub.is_member(&room, peer) {
                    // Join/leave churn: joining a room left before costs
                    // more, and one address's joins of one room share a bucket.
                    self.limits.rejoin(&room).map_err(|r| {
                        self.limited(LimitKind::Rejoins, rate_limited("rejoins", r))
                    })?;
                    self.address_limits.join_room(self.ip, &room).map_err(|r| {
                        self.limited(
                            LimitKind::RoomJoins,
                            rate_limited("joins of this room from your address", r),
                        )
                    })?;
                    if hub.rooms_of(peer) >= self.limits.max_rooms() {
                        return Err(self.limited(LimitKind::Rooms, Refusal::rate_limited(
                            format!(
                                "you are in {} rooms, the most allowed at once; leave one first",
                                self.limits.max_rooms()
                            ),
                            None,
                        )));
                    }
                    if !hub.room_exists(&room).await? {
                        self.address_limits.create_room(self.ip).map_err(|r| {
                            self.limited(LimitKind::NewRooms, rate_limited("new rooms", r))
                        })?;
                    }
                }
                let queued = hub.join(peer, &identity.name, room, since, r#ref).await?;
                if since.is_some() {
                    self.charge(queued);
                }
                Ok(None)
            }
            ClientMsg::Send { room, text, nonce } => {
                let room = hub::parse_room(&room)?;
                self.limits
                    .message()
                    .map_err(|r| self.limited(LimitKind::Messages, rate_limited("messages", r)))?;
                let outgoing = Outgoing {
                    room,
                    text: &text,
                    nonce: nonce.as_deref(),
                    r#ref: r#ref.cloned(),
                };
                hub.send(peer, &identity.name, identity.author, outgoing, &self.sends)
                    .await?;
                Ok(None)
            }
            ClientMsg::Leave { room } => {
                let room = hub.leave(peer, hub::parse_room(&room)?)?;
                self.limits.left_room(&room);
                Ok(Some(ServerMsg::Left {
                    room: room.as_str().to_owned(),
                }))
            }
            ClientMsg::History {
                room,
                before,
                limit,
            } => {
                let room = hub::parse_room(&room)?;
                let (room, messages) = hub.history(peer, room, before, limit).await?;
                Ok(Some(ServerMsg::History {
                    room: room.as_str().to_owned(),
                    messages,
                }))
            }
            ClientMsg::Rooms => Ok(Some(ServerMsg::Rooms {
                rooms: hub.rooms().await?,
            })),
        }
    }

    fn no_identity(&self) -> Refusal {
        let message = match (&self.identities.account, self.identities.guests) {
            (Some(_), _) => "say hello first",
            (None, true) => "say hello with a name first",
            (None, false) => "this server has no guests: sign in to an account first",
        };
        Refusal::new(ErrorCode::NoIdentity, message)
    }

    async fn hello(
        &mut self,
        name: Option<&str>,
        session: Option<&str>,
    ) -> Result<ServerMsg, Refusal> {
        if self.identities.account.is_none() && !self.identities.guests {
            return Err(self.no_identity());
        }
        if let Some(identity) = &self.identity {
            // Saying hello again as the same name is harmless: answer it
            // again. An account's own name is any look-alike of it.
            let signed_in = self.identities.account.is_some();
            let same = match name.map(Nickname::parse) {
                Some(Ok(name)) if signed_in => looks_like(&name, &identity.name),
                Some(Ok(name)) => name.key() == identity.key(),
                Some(Err(_)) => false,
                None => signed_in,
            };
            if !same {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    format!(
                        "this connection is already {}; open a new connection for another name",
                        identity.name
                    ),
                ));
            }
        }
        let name = name.map(hub::parse_name).transpose()?;
        // The room list first: if storage fails, the hello has had no effect.
        let rooms = self.hub.rooms().await?;
        if self.identity.is_none() {
            let claim = match &self.identities.account {
                Some(account) => self.hello_account(account, name)?,
                None => {
                    Self::hello_guest(&self.hub, &self.identities.accounts, name, session).await?
                }
            };
            tracing::debug!(name = ?claim.name.as_str(), "hello");
            self.identity = Some(claim);
        }
        let identity = self.identity.as_ref().expect("set above");
        Ok(ServerMsg::Welcome {
            name: identity.name.as_str().to_owned(),
            session: identity.token.clone(),
            account: self.identities.account.is_some(),
            author: identity.author.get(),
            protocol: PROTOCOL_VERSION,
            rooms,
            server: self.hub.server_info().clone(),
        })
    }

    /// A connection signed in speaks as its account, under its own name.
    fn hello_account(
        &self,
        account: &StoredAccount,
        name: Option<Nickname>,
    ) -> Result<Claim, Refusal> {
        let own = Nickname::parse(&account.name).map_err(|e| {
            tracing::error!(account = %account.name, error = %e, "a stored account's name does not parse");
            Refusal::new(ErrorCode::Internal, "the server could not complete this request")
        })?;
        if let Some(name) = name
            && !looks_like(&name, &own)
        {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "this connection is signed in as {}; say hello without a name, or with that one",
                    own.as_str()
                ),
            ));
        }
        self.hub.hello_account(own, account.author)
    }

    /// A guest: a name no account has (nor one like it). Takes no
    /// `&self`: the handler is not `Sync`, and this future awaits.
    async fn hello_guest(
        hub: &Hub,
        accounts: &Accounts,
        name: Option<Nickname>,
        session: Option<&str>,
    ) -> Result<Claim, Refusal> {
        let Some(name) = name else {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "hello needs a name (or sign in to an account)",
            ));
        };
        let registered = accounts
            .name_registered(&name)
            .await
            .map_err(hub::internal)?;
        if registered {
            return Err(Refusal::new(
                ErrorCode::NameTaken,
                format!("the name {} belongs to an account", name.as_str()),
            ));
        }
        hub.hello(name, session).await
    }

    /// An `error` is an answer: a connection closed as too slow still
    /// gets it, so that its client knows which of its sends were refused.
    fn reply_error(&self, r#ref: Option<&Ref>, refusal: Refusal) {
        let code = refusal.code;
        self.hub.metrics().count_error(code);
        let error = ServerMsg::Error {
            code,
            message: refusal.message,
            retry_after_ms: refusal.retry_after_ms,
        };
        self.peer.push(Frame::answer(encode(&error, r#ref)));
        // A client told to slow down that keeps going is abusing the server.
        if self.abusive.get() {
            tracing::info!(ip = %self.ip, "closing a connection for persistent abuse");
            self.peer
                .kick(close::POLICY_VIOLATION, "rate limits exceeded persistently");
        }
    }
}

/// The same person's name: the same key or the same shape (`Nickname::key`).
fn looks_like(a: &Nickname, b: &Nickname) -> bool {
    a.key() == b.key() || a.shape() == b.shape()
}

/// However the connection ends — closed, kicked, or a panic unwinding through
/// its handler — it leaves every room and its name is released.
impl Drop for Handler {
    fn drop(&mut self) {
        let claim = self.identity.take();
        self.hub.disconnect(&self.peer, claim.as_ref());
    }
}
