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

/// A `sync-server` binary running as a process of its own (killed when dropped), so that
/// its CPU and memory are its own and two builds can face the same load in one run.
pub struct ServerProcess {
    child: std::process::Child,
    /// `http://addr`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts `binary` with the configuration `config` (a `listen` of port 0 works: the
    /// address is read from the server's ready line). Logs at `warn` unless `RUST_LOG`
    /// says otherwise.
    pub fn start(binary: &str, config: &str) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, config.replace("{dir}", &dir.path().display().to_string())).unwrap();
        let mut child = Command::new(binary)
            .args(["--config", path.to_str().unwrap()])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,sync_server=info".into()))
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary}: {e} (build it with cargo build --release -p sync-server)")
            });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("server exited before it was ready").unwrap();
            if line.contains("sync-server ready")
                && let Some(rest) = line.split("listen=").nth(1)
            {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining the server's output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, url: format!("http://{addr}"), _dir: dir }
    }

    /// The process's resident memory now, in bytes (Linux).
    pub fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    }
}

/// The release `sync-server` binary of this workspace.
pub fn release_server_binary() -> String {
    let workspace = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    workspace.join("target/release/sync-server").display().to_string()
}
