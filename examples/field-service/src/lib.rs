//! The offsync flagship: a field-service app a person can click through.
//!
//! [`start`] runs the reference server on an embedded SQLite file (seeded with work
//! orders and a product catalogue) and two technicians' devices in this process, each
//! with its own store and its own web page on 127.0.0.1. A page shows the device live
//! (network state with a switch that takes the engine offline, pending and failed
//! counts, last sync, whether it is up to date), the work orders with each row's sync
//! state, an edit form, "mark arrived", visits, the catalogue, the conflicts with the
//! fields that differ and a choice per field, and the failed changes with retry and
//! discard. Everything goes through the engine's public API.
//!
//! `cargo run -p field-service` starts it and prints the two URLs.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let app = field_service::start(field_service::Options::new(dir.path())).await?;
//! for device in &app.devices {
//!     println!("{}: {}", device.name, device.url());
//! }
//! app.stop().await;
//! # Ok(()) }
//! ```

pub mod device;
pub mod merge;
pub mod model;
pub mod page;
pub mod server;
pub mod web;

use std::path::{Path, PathBuf};

use sync_server::server::RunningServer;

pub use device::Device;

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the server's and the devices' SQLite files go.
    pub dir: PathBuf,
    /// Work orders to seed.
    pub orders: u32,
    /// Products to seed.
    pub products: u32,
    /// The two pages' ports on 127.0.0.1 (0: any free port).
    pub ports: [u16; 2],
    /// Draw the seeding progress bar on stderr.
    pub progress: bool,
}

impl Options {
    /// The defaults: 3,000 work orders, 500 products, any free ports, no progress bar.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), orders: 3_000, products: 500, ports: [0, 0], progress: false }
    }
}

/// The running app: the server and the two devices.
pub struct FieldService {
    /// The reference server.
    pub server: RunningServer,
    /// Ana's and Ben's devices.
    pub devices: Vec<Device>,
}

impl FieldService {
    /// Stops the devices, then the server.
    pub async fn stop(self) {
        for device in self.devices {
            device.stop().await;
        }
        if let Err(e) = self.server.stop().await {
            tracing::warn!(error = %e, "the server stopped with an error");
        }
    }
}

/// Starts the server and the two devices (see the crate's documentation).
///
/// # Errors
/// When the server, a store or a listener cannot start.
pub async fn start(options: Options) -> anyhow::Result<FieldService> {
    let server = server::start_seeded(&options.dir, options.orders, options.products, options.progress).await?;
    let mut devices = Vec::new();
    for ((user, token), port) in server::TECHNICIANS.into_iter().zip(options.ports) {
        let db = options.dir.join(format!("{user}.db"));
        devices.push(device::open(&format!("{user}'s device"), user, token, &db, &server.url(), port).await?);
    }
    Ok(FieldService { server, devices })
}
