//! The in-process broker: one server, so publishing is delivering.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Broker, BrokerError, LocalDelivery};
use crate::domain::RoomName;
use crate::outbox::Frame;

pub struct LocalBroker {
    delivery: Arc<dyn LocalDelivery>,
}

impl LocalBroker {
    pub fn new(delivery: Arc<dyn LocalDelivery>) -> Self {
        Self { delivery }
    }
}

#[async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, frames: Vec<(RoomName, Frame)>) -> Result<(), BrokerError> {
        // Synchronous hand-off keeps publish order equal to delivery order.
        self.delivery.deliver(&frames);
        Ok(())
    }
}
