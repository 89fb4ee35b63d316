//! The reports laid out for people: short lines, one thing per line, JSON values
//! compact.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sync_patterns::diff::FieldChange;

use crate::views::{ConflictView, Entry, Outbox, RecordView, Status};

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "never".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn value(v: Option<&Value>) -> String {
    v.map_or_else(|| "(none)".to_owned(), Value::to_string)
}

/// `offsync status` as text.
pub fn status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "store          {}", s.store);
    let _ = writeln!(out, "schema version {}", s.schema_version);
    let _ = writeln!(out, "client id      {}", s.client_id.as_deref().unwrap_or("(none yet)"));
    let _ = writeln!(out, "account        {}", s.account.as_deref().unwrap_or("(none)"));
    let _ = writeln!(out, "pending        {}", s.pending);
    let _ = writeln!(out, "conflicts      {}", s.conflicts);
    let _ = writeln!(out, "failed         {}", s.failed);
    let _ = writeln!(out, "last sync      {}", when(s.last_sync));
    match &s.syncing {
        Some(l) => {
            let _ = writeln!(out, "syncing now    {} (lease until {})", l.holder, when(Some(l.until)));
        }
        None => {
            let _ = writeln!(out, "syncing now    no");
        }
    }
    let _ = writeln!(out, "\n{:<24} {:>9} {:>8}  {:<25} cursor", "collection", "records", "pending", "last sync");
    for c in &s.collections {
        let _ = writeln!(
            out,
            "{:<24} {:>9} {:>8}  {:<25} {}",
            c.name,
            c.records,
            c.pending,
            when(c.synced_at),
            c.cursor.as_deref().unwrap_or("-")
        );
    }
    out
}

fn entry_line(out: &mut String, e: &Entry) {
    let what = match (&e.action, &e.record_id) {
        (Some(action), Some(id)) => format!("action {action} on {}/{id}", e.collection),
        (Some(action), None) => format!("action {action} on {}", e.collection),
        (None, id) => format!("{} {}/{}", e.op, e.collection, id.as_deref().unwrap_or("?")),
    };
    let _ = writeln!(out, "#{:<6} {:<7} {}  {}  attempts {}", e.seq, e.state, e.mutation_id, what, e.attempts);
    if let Some(error) = &e.error {
        let _ = writeln!(out, "        error: {error}");
    }
}

/// `offsync outbox` as text.
pub fn outbox(o: &Outbox) -> String {
    let mut out = format!("{} queued, {} parked\n", o.queued, o.parked);
    for e in &o.entries {
        entry_line(&mut out, e);
    }
    out
}

/// `offsync conflicts` as text: each conflict with its differing fields side by side.
pub fn conflicts(list: &[ConflictView]) -> String {
    let mut out = format!("{} open conflict{}\n", list.len(), if list.len() == 1 { "" } else { "s" });
    for c in list {
        let _ = writeln!(
            out,
            "\n{}/{}  found {}  base v{}  server {}",
            c.collection,
            c.record_id,
            when(Some(c.detected_at)),
            c.base_version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            c.server_version.map_or_else(|| "missing".to_owned(), |v| format!("v{v}")),
        );
        let _ = writeln!(out, "  {:<20} {:<8} {:<20} {:<20} {:<20}", "field", "changed", "base", "local", "server");
        for f in &c.fields {
            let change = match f.change {
                FieldChange::Local => "local",
                FieldChange::Server => "server",
                FieldChange::Same => "same",
                FieldChange::Conflict => "BOTH",
            };
            let path = if f.path.is_empty() { "(record)" } else { &f.path };
            let _ = writeln!(
                out,
                "  {:<20} {:<8} {:<20} {:<20} {:<20}",
                path,
                change,
                value(f.base.as_ref()),
                value(f.local.as_ref()),
                value(f.server.as_ref())
            );
        }
    }
    out
}

/// `offsync record` as text.
pub fn record(r: &RecordView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}/{}", r.collection, r.id);
    let _ = writeln!(out, "state          {}{}", r.state, if r.deleted { " (deleted here)" } else { "" });
    let _ = writeln!(
        out,
        "server version {}",
        r.server_version.map_or_else(|| "none (never acknowledged)".to_owned(), |v| v.to_string())
    );
    let _ = writeln!(out, "modified       {}", when(Some(r.modified_at)));
    let _ = writeln!(out, "data           {}", value(r.data.as_ref()));
    let _ = writeln!(out, "base           {}", value(r.base.as_ref()));
    let _ = writeln!(out, "queued         {}", r.queued.len());
    for e in &r.queued {
        entry_line(&mut out, e);
    }
    out
}
