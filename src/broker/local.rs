//! The in-process broker: one server, so publishing is delivering.
//!
//! `publish` hands the events of subscribed rooms to the subscriber before
//! it returns, on the publishing task: the order of publishing is the order
//! of delivery, and a subscriber that is slow slows the publisher instead
//! of losing events (so [`Subscriber::lagged`] is never called). The hub's
//! hand-off in front of the publisher bounds how far that can reach back
//! into the commit task (`hub::publish`).

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, Weak};

use async_trait::async_trait;

use super::{Broker, BrokerError, RoomEvent, Subscriber};
use crate::domain::RoomName;

#[derive(Default)]
pub struct LocalBroker {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    subscriber: Option<Weak<dyn Subscriber>>,
    rooms: HashSet<RoomName>,
}

impl LocalBroker {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Broker for LocalBroker {
    fn attach(&self, subscriber: Weak<dyn Subscriber>) {
        self.lock().subscriber = Some(subscriber);
    }

    async fn publish(&self, mut events: Vec<RoomEvent>) -> Result<(), BrokerError> {
        let subscriber = {
            let state = self.lock();
            let subscriber = state.subscriber.as_ref().and_then(Weak::upgrade);
            // Usually every room is subscribed: a commit's senders are members.
            if !events.iter().all(|e| state.rooms.contains(e.room())) {
                events.retain(|e| state.rooms.contains(e.room()));
            }
            subscriber
        };
        let Some(subscriber) = subscriber else {
            return Err(BrokerError::Unavailable("no subscriber attached".into()));
        };
        // Outside the lock: the subscriber's own lock is taken before this
        // one when a room is subscribed.
        if !events.is_empty() {
            subscriber.receive(&events);
        }
        Ok(())
    }

    fn subscribe(&self, room: &RoomName) {
        let mut state = self.lock();
        if !state.rooms.contains(room) {
            state.rooms.insert(room.clone());
        }
    }

    fn unsubscribe(&self, room: &RoomName) {
        self.lock().rooms.remove(room);
    }

    async fn subscribed(&self, _room: &RoomName) -> Result<(), BrokerError> {
        // `subscribe` took effect when it returned.
        Ok(())
    }

    fn health(&self) -> Result<(), BrokerError> {
        match &self.lock().subscriber {
            Some(subscriber) if subscriber.strong_count() > 0 => Ok(()),
            Some(_) => Err(BrokerError::Unavailable("the subscriber is gone".into())),
            None => Err(BrokerError::Unavailable("no subscriber attached".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LocalBroker;
    use crate::broker::contract;

    #[tokio::test]
    async fn keeps_each_rooms_order() {
        contract::keeps_each_rooms_order(LocalBroker::new).await;
    }

    #[tokio::test]
    async fn delivers_only_subscribed_rooms() {
        contract::delivers_only_subscribed_rooms(LocalBroker::new).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_subscriber_loses_nothing_unreported() {
        contract::a_slow_subscriber_loses_nothing_unreported(LocalBroker::new).await;
    }

    #[tokio::test]
    async fn reports_its_health() {
        contract::reports_its_health(LocalBroker::new).await;
    }
}
