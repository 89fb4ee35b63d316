//! What the benchmarks share: the ~200-byte work order, environment knobs, percentiles.
#![allow(dead_code)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sync_core::LocalEntity;

/// About 200 bytes of JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub site: String,
    pub task: String,
    pub status: String,
    pub n: u64,
}

impl LocalEntity for Order {
    const COLLECTION: &'static str = "work_orders";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Work order number `n` (ids sort in `n`'s order).
pub fn order(n: u64) -> Order {
    Order {
        id: format!("order-{n:012}"),
        site: format!("Depot {n:06} north wing, second floor"),
        task: format!("Replace the intake filter and log pressure readings #{n:08}"),
        status: "open".into(),
        n,
    }
}

/// A number from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The `p` percentile (0 to 1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Microseconds.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
