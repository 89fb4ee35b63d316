//! Change notifications: a hub every push publishes to, and the SSE stream of
//! `GET /v1/events`, filtered per user.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use sync_core::CollectionName;
use sync_core::protocol::ChangeNotification;

use crate::config::CollectionConfig;
use crate::logic::{User, may_read};
use crate::store::Touched;

/// Fans change notifications out to every connected client.
#[derive(Debug, Clone)]
pub struct ChangeHub {
    sender: broadcast::Sender<Touched>,
    /// Set when the server stops: every event stream ends, so that a graceful shutdown
    /// does not wait forever for devices that hold their stream open.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for ChangeHub {
    fn default() -> Self {
        Self::new()
    }
}

impl ChangeHub {
    /// A hub with room for 1,024 notifications per slow listener.
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(1024);
        let (closing, _) = tokio::sync::watch::channel(false);
        Self { sender, closing }
    }

    /// Ends every event stream (the server is stopping).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes when the hub is closed.
    pub(crate) fn closed(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut closing = self.closing.subscribe();
        async move {
            let _ = closing.wait_for(|closed| *closed).await;
        }
    }

    /// Publishes the collections a push touched.
    pub fn publish(&self, touched: Vec<Touched>) {
        for t in touched {
            let _ = self.sender.send(t);
        }
    }

    /// A listener for everything published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Touched> {
        self.sender.subscribe()
    }
}

/// The SSE response for one user: a `change` event per change they may read. A listener
/// that falls behind is told that every collection changed, which is always safe.
pub fn sse_for(
    user: User,
    client: Option<String>,
    collections: BTreeMap<CollectionName, CollectionConfig>,
    hub: &ChangeHub,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let receiver = hub.subscribe();
    let closed = hub.closed();
    let all: Vec<CollectionName> = collections.keys().cloned().collect();
    let stream = BroadcastStream::new(receiver).filter_map(move |item| {
        let names = match item {
            Ok(t) => {
                let access = collections.get(&t.collection)?.access;
                if !may_read(&user, access, &t.owner) {
                    return None;
                }
                // The device that pushed the change has it already.
                if client.is_some() && t.client == client {
                    return None;
                }
                vec![t.collection]
            }
            Err(_lagged) => all.clone(),
        };
        let data = serde_json::to_string(&ChangeNotification { collections: names }).ok()?;
        Some(Ok(Event::default().event("change").data(data)))
    });
    let stream = futures::StreamExt::take_until(stream, closed);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
