//! The `sync-server` binary: `sync-server --config sync-server.toml [--listen ADDR] [--database URL]`.

use std::path::PathBuf;

use clap::Parser;
use sync_server::config::ServerConfig;
use sync_server::server::{from_config, serve};
use sync_server::tls::TlsListener;

/// offsync reference sync server.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file (TOML).
    #[arg(long, default_value = "sync-server.toml")]
    config: PathBuf,
    /// Overrides `listen` from the file.
    #[arg(long)]
    listen: Option<String>,
    /// Overrides `database` from the file (`sqlite://path`).
    #[arg(long)]
    database: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let mut config = ServerConfig::from_file(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(database) = args.database {
        config.database = database;
    }
    let (state, store) = from_config(&config).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let addr = listener.local_addr()?;
    match &config.tls {
        Some(files) => {
            let tls = TlsListener::new(listener, files.server_config()?)?;
            tracing::info!(listen = %addr, database = %config.database, "sync-server ready (https)");
            serve(tls, state, store, config.tombstone_retention, shutdown_signal()).await?;
        }
        None => {
            tracing::info!(listen = %addr, database = %config.database, "sync-server ready (plain http)");
            serve(listener, state, store, config.tombstone_retention, shutdown_signal()).await?;
        }
    }
    tracing::info!("sync-server stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
