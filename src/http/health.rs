//! `GET /healthz` and `GET /metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use crate::hub::Unhealthy;
use crate::storage::StorageError;

/// 200 when storage answers and the broker can deliver, 503 otherwise,
/// saying which failed and what kind of failure (the details are logged,
/// not served).
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let Err(e) = state.hub.health().await else {
        return (StatusCode::OK, "ok\n");
    };
    tracing::warn!(error = &e as &dyn std::error::Error, "health check failed");
    let body = match e {
        Unhealthy::Storage(StorageError::Unavailable { .. }) => "storage unavailable\n",
        Unhealthy::Storage(StorageError::Corrupt { .. }) => "stored data cannot be read\n",
        Unhealthy::Storage(StorageError::Conflict { .. } | StorageError::Invalid { .. }) => {
            "storage failing\n"
        }
        Unhealthy::Broker(_) => "broker unavailable\n",
    };
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.hub.metrics().render(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Weak};

    use async_trait::async_trait;

    use crate::broker::{Broker, BrokerError, LocalBroker, RoomEvent, Subscriber};
    use crate::domain::RoomName;
    use crate::{App, Config};

    /// A local broker that can be made to go away.
    #[derive(Default)]
    struct FailingBroker {
        inner: LocalBroker,
        gone: AtomicBool,
    }

    #[async_trait]
    impl Broker for FailingBroker {
        fn attach(&self, subscriber: Weak<dyn Subscriber>) {
            self.inner.attach(subscriber);
        }
        async fn publish(&self, events: Vec<RoomEvent>) -> Result<(), BrokerError> {
            self.inner.publish(events).await
        }
        fn subscribe(&self, room: &RoomName) {
            self.inner.subscribe(room);
        }
        fn unsubscribe(&self, room: &RoomName) {
            self.inner.unsubscribe(room);
        }
        async fn subscribed(&self, room: &RoomName) -> Result<(), BrokerError> {
            self.inner.subscribed(room).await
        }
        fn health(&self) -> Result<(), BrokerError> {
            if self.gone.load(Ordering::Relaxed) {
                return Err(BrokerError::Unavailable("connection lost".into()));
            }
            self.inner.health()
        }
    }

    /// A broker that went away fails `/healthz`, naming the broker.
    #[tokio::test]
    async fn a_broker_that_went_away_fails_healthz() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let broker = Arc::new(FailingBroker::default());
        let app = App::build_with_broker(Config::for_tests(url), broker.clone())
            .await
            .unwrap();
        let healthz = format!("http://{}/healthz", app.local_addr());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(app.run(async move {
            let _ = stop_rx.await;
        }));
        let answer = reqwest::get(&healthz).await.unwrap();
        assert_eq!(answer.status(), 200);
        broker.gone.store(true, Ordering::Relaxed);
        let answer = reqwest::get(&healthz).await.unwrap();
        assert_eq!(answer.status(), 503);
        assert_eq!(answer.text().await.unwrap(), "broker unavailable\n");
        stop_tx.send(()).unwrap();
        running.await.unwrap().unwrap();
    }
}
