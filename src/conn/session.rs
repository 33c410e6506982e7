//! Protocol state of one connection: its identity, and the dispatch of each
//! decoded request to the hub. Every reply goes through the outbox.

use std::sync::Arc;

use crate::domain::Nickname;
use crate::hub::{Frame, Hub, Peer, Refusal};
use crate::protocol::{
    self, ClientMsg, ErrorCode, PROTOCOL_VERSION, Ref, Request, ServerMsg, encode,
};

pub struct Session {
    hub: Arc<Hub>,
    peer: Peer,
    identity: Option<Identity>,
}

struct Identity {
    name: Nickname,
    session: String,
}

impl Session {
    pub fn new(hub: Arc<Hub>, peer: Peer) -> Self {
        Self {
            hub,
            peer,
            identity: None,
        }
    }

    /// Handles one text frame. Protocol mistakes become `error` replies; the
    /// connection stays open.
    pub async fn handle(&mut self, text: &str) {
        let Request { r#ref, msg } = match protocol::decode(text) {
            Ok(request) => request,
            Err(rejection) => {
                self.reply_error(
                    rejection.r#ref.as_ref(),
                    Refusal::new(rejection.code, rejection.message),
                );
                return;
            }
        };
        match self.dispatch(msg, r#ref.as_ref()).await {
            Ok(Some(reply)) => self.reply(&reply, r#ref.as_ref()),
            Ok(None) => {}
            Err(refusal) => self.reply_error(r#ref.as_ref(), refusal),
        }
    }

    /// Returns the reply to queue, or `None` when the hub queues it itself
    /// (`joined` and `sent` must be ordered against room frames).
    async fn dispatch(
        &mut self,
        msg: ClientMsg,
        r#ref: Option<&Ref>,
    ) -> Result<Option<ServerMsg>, Refusal> {
        if let ClientMsg::Hello { name, session } = msg {
            return self.hello(&name, session.as_deref()).await.map(Some);
        }
        let Some(identity) = &self.identity else {
            return Err(Refusal::new(
                ErrorCode::NoIdentity,
                "say hello with a name first",
            ));
        };
        let hub = &self.hub;
        let peer = &self.peer;
        match msg {
            ClientMsg::Hello { .. } => unreachable!("handled above"),
            ClientMsg::Join { room, since } => {
                hub.join(peer, &identity.name, &room, since, r#ref).await?;
                Ok(None)
            }
            ClientMsg::Send { room, text } => {
                hub.send(peer, &identity.name, &room, &text, r#ref.cloned())
                    .await?;
                Ok(None)
            }
            ClientMsg::Leave { room } => {
                let room = hub.leave(peer, &room)?;
                Ok(Some(ServerMsg::Left {
                    room: room.as_str().to_owned(),
                }))
            }
            ClientMsg::History {
                room,
                before,
                limit,
            } => {
                let (room, messages) = hub.history(peer, &room, before, limit).await?;
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

    async fn hello(&mut self, name: &str, session: Option<&str>) -> Result<ServerMsg, Refusal> {
        match &self.identity {
            // Saying hello again with the same name is harmless: answer it again.
            Some(identity)
                if Nickname::parse(name).is_ok_and(|n| n.key() == identity.name.key()) => {}
            Some(identity) => {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    format!(
                        "this connection is already {}; open a new connection for another name",
                        identity.name
                    ),
                ));
            }
            None => {
                let (name, session) = self.hub.hello(name, session)?;
                tracing::debug!(name = ?name.as_str(), "hello");
                self.identity = Some(Identity { name, session });
            }
        }
        let identity = self.identity.as_ref().expect("set above");
        Ok(ServerMsg::Welcome {
            name: identity.name.as_str().to_owned(),
            session: identity.session.clone(),
            protocol: PROTOCOL_VERSION,
            rooms: self.hub.rooms().await?,
        })
    }

    fn reply(&self, msg: &ServerMsg, r#ref: Option<&Ref>) {
        self.peer.push(Frame::new(encode(msg, r#ref)));
    }

    fn reply_error(&self, r#ref: Option<&Ref>, refusal: Refusal) {
        self.hub.metrics().count_error(refusal.code);
        self.reply(&ServerMsg::error(refusal.code, refusal.message), r#ref);
    }

    /// Leaves every room and releases the name.
    pub fn close(&mut self) {
        let name = self.identity.take().map(|i| i.name);
        self.hub.disconnect(&self.peer, name.as_ref());
    }
}
