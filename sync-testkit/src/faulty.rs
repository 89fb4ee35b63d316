//! `FaultyTransport`: any transport with network and server faults injected, either
//! scheduled one by one (for histories that shrink) or drawn from a seed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sync_core::protocol::{PullRequest, PullResponse, PushRequest, PushResponse};
use sync_core::{Credentials, Error, Transport};
use tokio::sync::Notify;

/// One fault, applied to the next request (push or pull) that reaches the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// The request is lost before the server sees it (`Unreachable`).
    DropRequest,
    /// The server handles the request; its answer is lost (`Unreachable`).
    DropResponse,
    /// The request reaches the server twice; the client gets the second answer.
    Duplicate,
    /// The request is delivered after this many milliseconds.
    Delay(u64),
    /// A push is held back (the client sees `Unreachable`) and reaches the server only
    /// after the client's next push: the retry overtakes the original. (A pull changes
    /// nothing, so one held back is simply lost.)
    Reorder,
    /// The client is cut off: this and the next `n - 1` requests and probes fail
    /// (`Unreachable`) without reaching the server.
    CutOff(u32),
    /// The server answers 503 without handling the request (`Transient`).
    ServerError,
    /// The server answers 401 without handling the request (`Unauthorized`): pushes
    /// pause until the app supplies credentials again.
    Unauthorized,
    /// The server handles the request (a push is applied, a page is served); then the
    /// client crashes before it hears the answer: [`FaultyTransport::crashed`] fires and
    /// the call never returns, so the test can drop the engine at exactly that point.
    CrashAfterApply,
}

impl Fault {
    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::DropRequest => "drop_request",
            Fault::DropResponse => "drop_response",
            Fault::Duplicate => "duplicate",
            Fault::Delay(_) => "delay",
            Fault::Reorder => "reorder",
            Fault::CutOff(_) => "cut_off",
            Fault::ServerError => "server_error",
            Fault::Unauthorized => "unauthorized",
            Fault::CrashAfterApply => "crash_after_apply",
        }
    }
}

/// Random faults from a seed: each request meets a fault with probability `rate`,
/// chosen uniformly from `faults`. The same seed and the same sequence of requests
/// give the same faults.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// The seed.
    pub seed: u64,
    /// The probability that a request meets a fault, 0.0 to 1.0.
    pub rate: f64,
    /// The faults to draw from.
    pub faults: Vec<Fault>,
}

#[derive(Default)]
struct State {
    scheduled: VecDeque<Fault>,
    random: Option<(StdRng, FaultPlan)>,
    cut_off: u32,
    held_push: Option<PushRequest>,
    /// Requests to let through before the one that meets `CrashAfterApply`.
    crash_in: Option<u32>,
    injected: BTreeMap<&'static str, u64>,
}

/// Wraps any [`Transport`] and injects [`Fault`]s: scheduled with
/// [`FaultyTransport::inject`], or drawn from a [`FaultPlan`]'s seed.
///
/// ```
/// use sync_testkit::{Fault, FaultyTransport, MemoryServer};
///
/// let transport = FaultyTransport::new(MemoryServer::new());
/// transport.inject(Fault::DropResponse); // the next request is applied, its answer lost
/// ```
pub struct FaultyTransport<T> {
    inner: T,
    state: Mutex<State>,
    crashed: Notify,
}

impl<T: Transport> FaultyTransport<T> {
    /// `inner` with no faults yet.
    pub fn new(inner: T) -> Self {
        Self { inner, state: Mutex::new(State::default()), crashed: Notify::new() }
    }

    /// `inner` with random faults from `plan`.
    pub fn seeded(inner: T, plan: FaultPlan) -> Self {
        let transport = Self::new(inner);
        transport.lock().random = Some((StdRng::seed_from_u64(plan.seed), plan));
        transport
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// Schedules `fault` for the next request (after those already scheduled).
    pub fn inject(&self, fault: Fault) {
        self.lock().scheduled.push_back(fault);
    }

    /// Stops random faults, drops scheduled ones and ends a cut-off; a push held back
    /// by [`Fault::Reorder`] is still delivered with the next push.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.random = None;
        state.scheduled.clear();
        state.cut_off = 0;
    }

    /// Makes the `n`-th request from now (1: the next one) meet
    /// [`Fault::CrashAfterApply`]: the requests before it go through untouched (or meet
    /// faults already scheduled), so a test can crash a client at any point of a cycle.
    pub fn crash_after(&self, n: u32) {
        self.lock().crash_in = Some(n.saturating_sub(1));
    }

    /// Cancels a crash set with [`FaultyTransport::crash_after`] that has not fired
    /// (the cycle made fewer requests). True when one was pending.
    pub fn cancel_crash(&self) -> bool {
        self.lock().crash_in.take().is_some()
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.lock().injected.clone()
    }

    /// Resolves when a [`Fault::CrashAfterApply`] has fired (the push was applied and
    /// the call now hangs).
    pub async fn crashed(&self) {
        self.crashed.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fault for this request, if any (a running cut-off counts as one).
    fn next_fault(&self) -> Option<Fault> {
        let mut state = self.lock();
        match state.crash_in {
            Some(0) => {
                state.crash_in = None;
                *state.injected.entry(Fault::CrashAfterApply.name()).or_insert(0) += 1;
                return Some(Fault::CrashAfterApply);
            }
            Some(n) => state.crash_in = Some(n - 1),
            None => {}
        }
        if state.cut_off > 0 {
            state.cut_off -= 1;
            return Some(Fault::CutOff(0));
        }
        let fault = state.scheduled.pop_front().or_else(|| {
            let (rng, plan) = state.random.as_mut()?;
            if plan.faults.is_empty() || !rng.random_bool(plan.rate.clamp(0.0, 1.0)) {
                return None;
            }
            let index = rng.random_range(0..plan.faults.len());
            Some(plan.faults[index])
        })?;
        *state.injected.entry(fault.name()).or_insert(0) += 1;
        if let Fault::CutOff(n) = fault {
            state.cut_off = n.saturating_sub(1);
        }
        Some(fault)
    }
}

fn unreachable(what: &str) -> Error {
    Error::Unreachable { message: format!("fault injected: {what}") }
}

#[async_trait]
impl<T: Transport> Transport for FaultyTransport<T> {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, Error> {
        let fault = self.next_fault();
        let held = self.lock().held_push.take();
        let result = match fault {
            None => self.inner.push(request).await,
            Some(Fault::DropRequest) => Err(unreachable("request lost")),
            Some(Fault::CutOff(_)) => Err(unreachable("client cut off")),
            Some(Fault::ServerError) => Err(Error::Transient { message: "503: fault injected".into() }),
            Some(Fault::Unauthorized) => Err(Error::Unauthorized { message: "fault injected: token refused".into() }),
            Some(Fault::DropResponse) => {
                let _ = self.inner.push(request).await;
                Err(unreachable("answer lost after the server handled the push"))
            }
            Some(Fault::Duplicate) => {
                let _ = self.inner.push(request).await;
                self.inner.push(request).await
            }
            Some(Fault::Delay(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.inner.push(request).await
            }
            Some(Fault::Reorder) => {
                self.lock().held_push = Some(request.clone());
                Err(unreachable("push held back, to arrive after the next one"))
            }
            Some(Fault::CrashAfterApply) => {
                let _ = self.inner.push(request).await;
                self.crashed.notify_one();
                std::future::pending::<()>().await;
                Err(unreachable("crashed"))
            }
        };
        // A push held back by `Reorder` arrives now, after the one that overtook it.
        if let Some(old) = held {
            let _ = self.inner.push(&old).await;
        }
        result
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullResponse, Error> {
        match self.next_fault() {
            None => self.inner.pull(request).await,
            Some(Fault::DropRequest | Fault::Reorder) => Err(unreachable("request lost")),
            Some(Fault::CrashAfterApply) => {
                let _ = self.inner.pull(request).await;
                self.crashed.notify_one();
                std::future::pending::<()>().await;
                Err(unreachable("crashed"))
            }
            Some(Fault::CutOff(_)) => Err(unreachable("client cut off")),
            Some(Fault::ServerError) => Err(Error::Transient { message: "503: fault injected".into() }),
            Some(Fault::Unauthorized) => Err(Error::Unauthorized { message: "fault injected: token refused".into() }),
            Some(Fault::DropResponse) => {
                let _ = self.inner.pull(request).await;
                Err(unreachable("answer lost"))
            }
            Some(Fault::Duplicate) => {
                let _ = self.inner.pull(request).await;
                self.inner.pull(request).await
            }
            Some(Fault::Delay(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.inner.pull(request).await
            }
        }
    }

    async fn probe(&self) -> Result<(), Error> {
        let cut = {
            let mut state = self.lock();
            let cut = state.cut_off > 0;
            state.cut_off = state.cut_off.saturating_sub(1);
            cut
        };
        if cut { Err(unreachable("client cut off")) } else { self.inner.probe().await }
    }

    fn set_credentials(&self, credentials: Option<Credentials>) {
        self.inner.set_credentials(credentials);
    }
}
