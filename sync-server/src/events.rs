//! Change notifications: a hub every push publishes to, routing each change only to the
//! event streams (`GET /v1/events`) of users who may read it.
//!
//! An idle stream costs memory, not CPU: a change is handed to its readers' streams
//! (looked up by the audience keys of the record before and after the change, see
//! [`crate::rules::key`]) and never to the others. Each stream holds the
//! set of collections changed since it last wrote an event, so a burst of changes, or a
//! slow reader, becomes one event naming the collections, never an unbounded queue.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::Notify;

use sync_core::CollectionName;
use sync_core::protocol::ChangeNotification;

use crate::logic::User;
use crate::store::Touched;

/// Routes change notifications to the event streams that may hear of them.
#[derive(Debug, Clone)]
pub struct ChangeHub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    routes: Mutex<Routes>,
    /// Most streams open at once (beyond: [`ChangeHub::listen`] refuses).
    max_streams: AtomicUsize,
    /// Set when the server stops: every event stream ends, so that a graceful shutdown
    /// does not wait forever for devices that hold their stream open.
    closing: tokio::sync::watch::Sender<bool>,
}

/// The open streams, indexed by the audience keys of their users.
#[derive(Debug, Default)]
struct Routes {
    next_id: u64,
    /// How many streams are open.
    open: usize,
    /// Streams by audience key: a user's stream is filed under each of their keys.
    by_key: HashMap<String, HashMap<u64, Arc<Listener>>>,
    /// Admins' streams (they read everything).
    admins: HashMap<u64, Arc<Listener>>,
}

/// One open event stream.
#[derive(Debug)]
struct Listener {
    /// The device's client id: changes of its own pushes are not announced to it.
    client: Option<String>,
    /// Collections changed since the stream last wrote an event.
    pending: Mutex<BTreeSet<CollectionName>>,
    wake: Notify,
}

impl Listener {
    fn tell(&self, collection: &CollectionName) {
        let newly = lock(&self.pending).insert(collection.clone());
        if newly {
            self.wake.notify_one();
        }
    }

    async fn next_change(&self) -> Vec<CollectionName> {
        loop {
            let names: Vec<_> = std::mem::take(&mut *lock(&self.pending)).into_iter().collect();
            if !names.is_empty() {
                return names;
            }
            self.wake.notified().await;
        }
    }
}

/// A registered stream; dropping it (the client went away) unregisters it.
#[derive(Debug)]
struct Registration {
    hub: Arc<HubInner>,
    id: u64,
    user: User,
    listener: Arc<Listener>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut routes = lock(&self.hub.routes);
        routes.open = routes.open.saturating_sub(1);
        if self.user.admin {
            routes.admins.remove(&self.id);
        }
        for key in self.user.keys() {
            if let Some(streams) = routes.by_key.get_mut(&key) {
                streams.remove(&self.id);
                if streams.is_empty() {
                    routes.by_key.remove(&key);
                }
            }
        }
    }
}

/// A mutex whose holder panicked still guards consistent data here (every critical
/// section is a single insert or remove), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Too many event streams are open: answer 503 and let the client retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamsFull;

impl Default for ChangeHub {
    fn default() -> Self {
        Self::new()
    }
}

impl ChangeHub {
    /// Most event streams a hub holds by default.
    pub const DEFAULT_MAX_STREAMS: usize = 45_000;

    /// A hub for up to [`Self::DEFAULT_MAX_STREAMS`] streams.
    pub fn new() -> Self {
        Self::with_max_streams(Self::DEFAULT_MAX_STREAMS)
    }

    /// A hub for up to `max_streams` streams at once.
    pub fn with_max_streams(max_streams: usize) -> Self {
        let (closing, _) = tokio::sync::watch::channel(false);
        Self {
            inner: Arc::new(HubInner {
                routes: Mutex::new(Routes::default()),
                max_streams: AtomicUsize::new(max_streams),
                closing,
            }),
        }
    }

    /// The most streams open at once from now on (streams already open stay).
    pub fn set_max_streams(&self, max_streams: usize) {
        self.inner.max_streams.store(max_streams, Ordering::Relaxed);
    }

    /// The most streams open at once.
    pub fn max_streams(&self) -> usize {
        self.inner.max_streams.load(Ordering::Relaxed)
    }

    /// Ends every event stream (the server is stopping).
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Completes when the hub is closed.
    pub(crate) fn closed(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut closing = self.inner.closing.subscribe();
        async move {
            let _ = closing.wait_for(|closed| *closed).await;
        }
    }

    /// The number of event streams open now.
    pub fn open_streams(&self) -> usize {
        lock(&self.inner.routes).open
    }

    /// Hands each change to the streams of the users who may read it (before or after
    /// it), except the stream of the device that made it. Costs the number of
    /// receivers, not of open streams.
    pub fn publish(&self, touched: Vec<Touched>) {
        let routes = lock(&self.inner.routes);
        for t in &touched {
            let tell = |listener: &Arc<Listener>| {
                if t.client.is_none() || listener.client != t.client {
                    listener.tell(&t.collection);
                }
            };
            for key in &t.keys {
                if let Some(streams) = routes.by_key.get(key) {
                    streams.values().for_each(tell);
                }
            }
            // A stream told twice (an admin who also holds a key, a user with two of
            // the keys) is harmless: the pending set holds the collection once.
            routes.admins.values().for_each(tell);
        }
    }

    /// Registers a stream for `user` (on the device `client`).
    fn listen(&self, user: User, client: Option<String>) -> Result<Registration, StreamsFull> {
        let listener = Arc::new(Listener { client, pending: Mutex::new(BTreeSet::new()), wake: Notify::new() });
        let mut routes = lock(&self.inner.routes);
        if routes.open >= self.inner.max_streams.load(Ordering::Relaxed) {
            return Err(StreamsFull);
        }
        routes.next_id += 1;
        routes.open += 1;
        let id = routes.next_id;
        if user.admin {
            routes.admins.insert(id, listener.clone());
        }
        for key in user.keys() {
            routes.by_key.entry(key).or_default().insert(id, listener.clone());
        }
        drop(routes);
        Ok(Registration { hub: self.inner.clone(), id, user, listener })
    }
}

/// The SSE response for one user: a `change` event naming the collections changed
/// (that they may read) since the previous event.
///
/// # Errors
/// [`StreamsFull`] when the hub holds its most streams already.
pub fn sse_for(
    user: User,
    client: Option<String>,
    hub: &ChangeHub,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, StreamsFull> {
    let registration = hub.listen(user, client)?;
    let closed = hub.closed();
    let stream = futures::stream::unfold(registration, |registration| async move {
        let collections = registration.listener.next_change().await;
        let data = serde_json::to_string(&ChangeNotification { collections }).unwrap_or_default();
        Some((Ok(Event::default().event("change").data(data)), registration))
    });
    let stream = futures::StreamExt::take_until(stream, closed);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> CollectionName {
        CollectionName::new(s).unwrap()
    }

    fn user(name: &str, admin: bool) -> User {
        User::new(name, admin)
    }

    /// A change to a record whose audience keys are `keys`.
    fn touched(collection: &str, keys: &[&str], client: Option<&str>) -> Touched {
        Touched {
            collection: name(collection),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            client: client.map(str::to_owned),
        }
    }

    fn hub() -> ChangeHub {
        ChangeHub::new()
    }

    fn pending(r: &Registration) -> Vec<String> {
        lock(&r.listener.pending).iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn a_change_reaches_exactly_the_streams_that_may_read_it() {
        let hub = hub();
        let alice = hub.listen(user("alice", false), Some("a1".into())).unwrap();
        let alice_phone = hub.listen(user("alice", false), Some("a2".into())).unwrap();
        let bob = hub.listen(user("bob", false), None).unwrap();
        let admin = hub.listen(user("root", true), None).unwrap();

        // Alice's own change, pushed from a1: her other device and admins hear of it.
        hub.publish(vec![touched("orders", &["u:alice"], Some("a1"))]);
        assert_eq!(pending(&alice), Vec::<String>::new(), "the pushing device is not told");
        assert_eq!(pending(&alice_phone), vec!["orders"]);
        assert_eq!(pending(&bob), Vec::<String>::new(), "bob may not read alice's orders");
        assert_eq!(pending(&admin), vec!["orders"]);

        // A catalogue change reaches everyone.
        hub.publish(vec![touched("catalogue", &["*"], None)]);
        assert_eq!(pending(&alice), vec!["catalogue"]);
        assert_eq!(pending(&bob), vec!["catalogue"]);
        assert_eq!(pending(&admin), vec!["catalogue", "orders"]);

        // A job reassigned from bob to the north region's team: bob (before) and the
        // region's users (after) hear of it; a user of another region does not.
        let mut north = user("nina", false);
        north.attributes.insert("region".into(), "north".into());
        let north = hub.listen(north, None).unwrap();
        let mut south = user("sam", false);
        south.attributes.insert("region".into(), "south".into());
        let south = hub.listen(south, None).unwrap();
        hub.publish(vec![touched("jobs", &["u:bob", "a:region=north"], None)]);
        assert_eq!(pending(&bob), vec!["catalogue", "jobs"]);
        assert_eq!(pending(&north), vec!["jobs"]);
        assert_eq!(pending(&south), Vec::<String>::new());
    }

    #[test]
    fn a_burst_folds_into_one_pending_set_and_streams_unregister_when_dropped() {
        let hub = hub();
        let alice = hub.listen(user("alice", false), None).unwrap();
        for _ in 0..10_000 {
            hub.publish(vec![touched("orders", &["u:alice"], None)]);
        }
        assert_eq!(pending(&alice), vec!["orders"]);
        assert_eq!(hub.open_streams(), 1);
        drop(alice);
        assert_eq!(hub.open_streams(), 0);
        assert!(lock(&hub.inner.routes).by_key.is_empty());
    }

    #[test]
    fn streams_beyond_the_cap_are_refused() {
        let hub = ChangeHub::with_max_streams(2);
        let a = hub.listen(user("a", false), None).unwrap();
        let _b = hub.listen(user("b", false), None).unwrap();
        assert_eq!(hub.listen(user("c", false), None).err(), Some(StreamsFull));
        drop(a);
        assert!(hub.listen(user("c", false), None).is_ok());
    }

    #[tokio::test]
    async fn a_waiting_stream_wakes_with_every_collection_changed_meanwhile() {
        let hub = hub();
        let alice = hub.listen(user("alice", true), None).unwrap();
        let listener = alice.listener.clone();
        let waiter = tokio::spawn(async move { listener.next_change().await });
        tokio::task::yield_now().await;
        hub.publish(vec![touched("orders", &["u:bob"], None), touched("catalogue", &["*"], None)]);
        let names: Vec<String> = waiter.await.unwrap().iter().map(|c| c.to_string()).collect();
        assert_eq!(names, vec!["catalogue", "orders"]);
    }
}
