//! Compile-time checks that handles, futures and streams can cross tasks and threads.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::WorkOrder;
use sync_core::{Collection, Engine, LocalStore, SyncPattern, Transport, WatchStream};

fn send_sync_static<T: Send + Sync + 'static>() {}
fn send_static<T: Send + 'static>(_: &T) {}

/// Never called: it only has to compile.
#[allow(dead_code)]
fn futures_and_streams_are_send(engine: Engine, orders: Collection<WorkOrder>) {
    // Each future runs inside a 'static task that owns a clone of the handle.
    let e = engine.clone();
    send_static(&async move { e.sync_now().await });
    let e = engine.clone();
    send_static(&async move { e.sync_unit("all", Default::default()).await });
    let e = engine.clone();
    send_static(&async move { e.conflicts().await });
    send_static(&engine.clone().shutdown());
    let o = orders.clone();
    send_static(&async move { o.insert(&common::wo("a", "b", 1)).await });
    send_static(&async move { orders.list().await });
    send_static(&engine.events());
    send_static(&engine.status());
}

#[test]
fn handles_are_send_sync_and_traits_are_object_safe() {
    send_sync_static::<Engine>();
    send_sync_static::<Collection<WorkOrder>>();
    send_sync_static::<Arc<dyn LocalStore>>();
    send_sync_static::<Arc<dyn Transport>>();
    send_sync_static::<Arc<dyn SyncPattern>>();
    send_sync_static::<Arc<dyn sync_core::ConflictResolver>>();
    send_sync_static::<Arc<dyn sync_core::ServerMapping>>();
    send_sync_static::<sync_core::Error>();
    fn stream_is_send<T: Send + 'static>() {}
    stream_is_send::<WatchStream<WorkOrder>>();
}
