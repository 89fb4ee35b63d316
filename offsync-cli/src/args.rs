//! The command line, as clap types.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Look inside an offsync store file, and retry or discard parked mutations.
#[derive(Debug, Parser)]
#[command(name = "offsync", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands. Reads open the store read-only; `retry` and `discard` write, and
/// refuse while another process syncs the store.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Counts, schema version, identity, each collection's records, queue, cursor and
    /// last sync, and who syncs the store now.
    Status(Read),
    /// The outbox in order: queued and parked mutations, with attempts and errors.
    Outbox(Read),
    /// Open conflicts, with the fields that differ between base, device and server.
    Conflicts(Read),
    /// One record: data, base, versions, state and its queued mutations.
    Record {
        /// The store.
        #[command(flatten)]
        read: Read,
        /// The record's collection.
        collection: String,
        /// The record's id.
        id: String,
    },
    /// Queue a parked mutation again (it is sent at the next sync).
    Retry(Write),
    /// Drop a parked mutation and put its record back to the server's version.
    Discard(Write),
}

/// A read command's arguments.
#[derive(Debug, clap::Args)]
pub struct Read {
    /// The store file (an app's `SqliteStore` path).
    pub store: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A write command's arguments.
#[derive(Debug, clap::Args)]
pub struct Write {
    /// The store file.
    pub store: PathBuf,
    /// The parked mutation's id (see `offsync outbox`).
    pub mutation_id: String,
}
