//! What an operator watches: request counts and latencies by route and status, the
//! sync work done (mutations by outcome, records served), open event streams and
//! database pool use, in the Prometheus text format (OpenMetrics) from `/metrics`.
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client) with a registry
//! per server, not a process-wide one: several servers in one process (tests, an
//! embedding app) each report their own figures.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sync_core::protocol::MutationOutcome;

use crate::logic::WireResult;
use crate::store::PoolUse;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One request, by the route it matched (not the raw path: unknown paths share
/// `other`, so a scanner cannot grow the label set) and its status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

type Latency = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s, doubling.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The server's metrics. Cheap to clone (shared counters).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Latency,
    mutations: Family<OutcomeLabels, Counter>,
    pulled_records: Counter,
    event_streams: Gauge<i64, AtomicI64>,
    pool: Family<PoolLabels, Gauge<i64, AtomicI64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("offsync");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by route and status", requests.clone());
        let latency: Latency = Family::new_with_constructor(latency_histogram);
        registry.register("http_request_duration_seconds", "Time to answer a request, by route", latency.clone());
        let mutations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "mutations",
            "Mutations answered, by outcome (applied, conflict, rejected)",
            mutations.clone(),
        );
        let pulled_records = Counter::default();
        registry.register("pull_records", "Changes served by pulls", pulled_records.clone());
        let event_streams = Gauge::<i64, AtomicI64>::default();
        registry.register("event_streams_open", "Event streams (GET /v1/events) open now", event_streams.clone());
        let pool = Family::<PoolLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "db_pool_connections",
            "Database connections by pool and state (busy, idle, max)",
            pool.clone(),
        );
        Self { registry: Arc::new(registry), requests, latency, mutations, pulled_records, event_streams, pool }
    }

    /// Counts one answered request.
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        self.requests.get_or_create(&RequestLabels { route: route.to_owned(), status }).inc();
        self.latency.get_or_create(&RouteLabels { route: route.to_owned() }).observe(took.as_secs_f64());
    }

    /// Counts a push's answers by outcome.
    pub fn push_answered(&self, results: &[WireResult]) {
        for r in results {
            let outcome = match r.outcome {
                MutationOutcome::Applied { .. } => "applied",
                MutationOutcome::Conflict { .. } => "conflict",
                MutationOutcome::Rejected { .. } => "rejected",
            };
            self.mutations.get_or_create(&OutcomeLabels { outcome }).inc();
        }
    }

    /// Counts the changes a pull page served.
    pub fn pulled(&self, records: usize) {
        self.pulled_records.inc_by(records as u64);
    }

    /// The figures as Prometheus reads them, with the gauges read now: `streams` open
    /// and the store's `pools`.
    pub fn render(&self, streams: usize, pools: &[PoolUse]) -> String {
        self.event_streams.set(i64::try_from(streams).unwrap_or(i64::MAX));
        for p in pools {
            let busy = p.size.saturating_sub(p.idle);
            for (state, value) in [("busy", busy), ("idle", p.idle), ("max", p.max)] {
                self.pool.get_or_create(&PoolLabels { pool: p.pool, state }).set(i64::from(value));
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn figures_are_rendered_with_their_labels() {
        let m = Metrics::new();
        m.request("/v1/push", 200, Duration::from_millis(3));
        m.request("/v1/push", 200, Duration::from_millis(5));
        m.request("other", 404, Duration::from_millis(1));
        let applied = WireResult {
            mutation_id: json!("m1"),
            outcome: MutationOutcome::Applied { version: sync_core::Version(1), record_id: None },
        };
        m.push_answered(&[applied.clone(), applied]);
        m.pulled(7);
        let text = m.render(3, &[PoolUse { pool: "writer", size: 1, idle: 0, max: 1 }]);
        for line in [
            "offsync_http_requests_total{route=\"/v1/push\",status=\"200\"} 2",
            "offsync_http_requests_total{route=\"other\",status=\"404\"} 1",
            "offsync_http_request_duration_seconds_count{route=\"/v1/push\"} 2",
            "offsync_mutations_total{outcome=\"applied\"} 2",
            "offsync_pull_records_total 7",
            "offsync_event_streams_open 3",
            "offsync_db_pool_connections{pool=\"writer\",state=\"busy\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
