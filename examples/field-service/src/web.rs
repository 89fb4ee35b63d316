//! The device's web page: HTML rendered here, a little JavaScript, and a stream of
//! server-sent events from the engine's status and events, so the page follows the
//! device live without polling. Every action goes through the engine's public API.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sync_core::{Engine, MutationId, Network, Order, Phase, Resolution, SyncEvent, SyncStatus};
use tokio_stream::wrappers::{BroadcastStream, WatchStream};

use crate::model::{Product, Visit, WorkOrder};
use crate::page;

#[derive(Clone)]
struct Device {
    name: String,
    engine: Engine,
}

/// The device page's routes for `engine`.
pub fn router(name: String, engine: Engine) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/events", get(events))
        .route("/api/status", get(status_json))
        .route("/network", post(network))
        .route("/fragment/orders", get(orders))
        .route("/fragment/order/{id}", get(order))
        .route("/order/{id}", post(save_order))
        .route("/order/{id}/arrived", post(arrived))
        .route("/order/{id}/visits", post(add_visit))
        .route("/fragment/catalogue", get(catalogue))
        .route("/fragment/conflicts", get(conflicts))
        .route("/conflict/{collection}/{id}", post(resolve))
        .route("/fragment/failed", get(failed))
        .route("/failed/{id}/{what}", post(failed_action))
        .with_state(Device { name, engine })
}

/// An error shown to the person as the fragment's text, with the engine's message.
struct Shown(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Shown {
    fn from(e: E) -> Self {
        Shown(e.into())
    }
}

impl IntoResponse for Shown {
    fn into_response(self) -> Response {
        (StatusCode::UNPROCESSABLE_ENTITY, Html(page::error(&self.0.to_string()).into_string())).into_response()
    }
}

type Page = Result<Html<String>, Shown>;

/// The status as the page shows it (and as `/api/status` answers it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusView {
    /// `online` or `offline`.
    pub network: &'static str,
    /// Whether the app has the device online (the switch).
    pub switch_online: bool,
    /// Queued mutations.
    pub pending: u64,
    /// Parked mutations.
    pub failed: u64,
    /// Open conflicts.
    pub conflicts: u64,
    /// The last successful sync (RFC 3339).
    pub last_sync: Option<String>,
    /// Online, nothing queued, the last sync succeeded.
    pub up_to_date: bool,
    /// "idle", or what the running cycle does.
    pub phase: String,
    /// The last sync error.
    pub last_error: Option<String>,
}

fn status_view(engine: &Engine, s: &SyncStatus) -> StatusView {
    let online = s.network == Network::Online;
    StatusView {
        network: if online { "online" } else { "offline" },
        switch_online: engine.is_online(),
        pending: s.pending,
        failed: s.failed,
        conflicts: s.conflicts,
        last_sync: s.last_success.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        up_to_date: online && s.pending == 0 && s.last_success.is_some() && s.last_error.is_none(),
        phase: match &s.phase {
            Phase::Idle => "idle".to_owned(),
            Phase::Syncing { pushed, push_total, pulled, .. } => {
                format!("syncing: pushed {pushed} of {push_total}, pulled {pulled}")
            }
        },
        last_error: s.last_error.clone(),
    }
}

async fn index(State(d): State<Device>) -> Page {
    let status = status_view(&d.engine, &d.engine.status().borrow());
    Ok(Html(page::full(&d.name, &status).into_string()))
}

async fn status_json(State(d): State<Device>) -> Json<StatusView> {
    Json(status_view(&d.engine, &d.engine.status().borrow()))
}

/// `status` events with the status view whenever it changes, and `changed` events
/// naming what to draw again when records, conflicts or parked mutations change, or
/// (`states`) when a cycle's acknowledgements changed rows' sync states.
async fn events(State(d): State<Device>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let engine = d.engine.clone();
    let statuses = WatchStream::new(d.engine.status()).map(move |s| {
        let view = status_view(&engine, &s);
        Event::default().event("status").json_data(view).unwrap_or_else(|_| Event::default().comment("status"))
    });
    let changes = BroadcastStream::new(d.engine.events()).filter_map(|event| async move {
        let what = match event {
            Ok(SyncEvent::RecordChanged { collection, .. }) => collection.to_string(),
            Ok(SyncEvent::ConflictDetected { .. } | SyncEvent::ConflictResolved { .. }) => "conflicts".to_owned(),
            Ok(SyncEvent::MutationRejected { .. }) => "failed".to_owned(),
            // Acknowledged writes change rows' sync state without changing the records.
            Ok(SyncEvent::CycleCompleted { report }) if report.pushed > 0 => "states".to_owned(),
            // Events were missed: draw everything again.
            Err(_) => "all".to_owned(),
            Ok(_) => return None,
        };
        Some(Event::default().event("changed").data(what))
    });
    let stream = futures::stream::select(statuses, changes).map(Ok);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[derive(Deserialize)]
struct NetworkForm {
    online: String,
}

async fn network(State(d): State<Device>, Form(form): Form<NetworkForm>) -> StatusCode {
    d.engine.set_online(form.online == "true");
    StatusCode::NO_CONTENT
}

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
}

async fn orders(State(d): State<Device>, Query(query): Query<ListQuery>) -> Page {
    let mut q = d.engine.collection::<WorkOrder>()?.query();
    if !query.status.is_empty() {
        q = q.filter_eq("status", query.status.clone());
    }
    if !query.q.trim().is_empty() {
        q = q.filter_prefix("site", query.q.trim().to_owned());
    }
    let rows = q.order_by("number", Order::Asc).limit(100).fetch_tracked().await?;
    Ok(Html(page::orders(&rows).into_string()))
}

/// The work order `id` on this device, or a 422 saying there is none.
async fn find_order(engine: &Engine, id: &str) -> Result<WorkOrder, Shown> {
    engine.collection::<WorkOrder>()?.get(id).await?.ok_or_else(|| Shown(anyhow::anyhow!("no work order {id}")))
}

async fn order(State(d): State<Device>, Path(id): Path<String>) -> Page {
    let order = find_order(&d.engine, &id).await?;
    let visits = d.engine.collection::<Visit>()?.query().filter_eq("work_order_id", id.clone()).fetch().await?;
    Ok(Html(page::order_form(&order, &visits).into_string()))
}

#[derive(Deserialize)]
struct OrderForm {
    site: String,
    task: String,
    status: String,
    #[serde(default)]
    notes: String,
}

async fn save_order(State(d): State<Device>, Path(id): Path<String>, Form(form): Form<OrderForm>) -> Page {
    let orders = d.engine.collection::<WorkOrder>()?;
    let mut order = find_order(&d.engine, &id).await?;
    order.site = form.site;
    order.task = form.task;
    order.status = form.status;
    order.notes = form.notes;
    orders.update(&order).await?;
    Ok(Html(page::saved("saved").into_string()))
}

async fn arrived(State(d): State<Device>, Path(id): Path<String>) -> Page {
    let orders = d.engine.collection::<WorkOrder>()?;
    let mut order = find_order(&d.engine, &id).await?;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    order.arrived_at = Some(at.clone());
    if order.status == "open" {
        order.status = "in_progress".to_owned();
    }
    orders.update(&order).await?;
    orders.action("mark_arrived", Some(&id), json!({"at": at})).await?;
    Ok(Html(page::saved("arrival recorded").into_string()))
}

#[derive(Deserialize)]
struct VisitForm {
    note: String,
}

async fn add_visit(State(d): State<Device>, Path(id): Path<String>, Form(form): Form<VisitForm>) -> Page {
    let order = find_order(&d.engine, &id).await?;
    let visit = Visit {
        id: sync_core::RecordId::generate().to_string(),
        work_order_id: id,
        note: form.note,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        team: order.team,
    };
    d.engine.collection::<Visit>()?.insert(&visit).await?;
    Ok(Html(page::saved("visit added").into_string()))
}

async fn catalogue(State(d): State<Device>, Query(query): Query<ListQuery>) -> Page {
    let mut q = d.engine.collection::<Product>()?.query();
    if !query.q.trim().is_empty() {
        q = q.filter_prefix("name", query.q.trim().to_owned());
    }
    let products = q.order_by("name", Order::Asc).limit(50).fetch().await?;
    let total = d.engine.collection::<Product>()?.query().count().await?;
    Ok(Html(page::catalogue(&products, total).into_string()))
}

async fn conflicts(State(d): State<Device>) -> Page {
    let list = d.engine.conflicts().await?;
    Ok(Html(page::conflicts(&list).into_string()))
}

/// Settles a conflict: `choice` is `mine`, `theirs` or `fields`; with `fields`, each
/// differing field's `field:<path>` says `local` or `server`.
async fn resolve(
    State(d): State<Device>,
    Path((collection, id)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    let resolution = match form.get("choice").map(String::as_str) {
        Some("mine") => Resolution::KeepLocal,
        Some("theirs") => Resolution::KeepServer,
        Some("fields") => {
            let conflict = d
                .engine
                .conflicts()
                .await?
                .into_iter()
                .find(|c| c.collection.as_str() == collection && c.record_id.as_str() == id)
                .ok_or_else(|| anyhow::anyhow!("no open conflict for {collection}/{id}"))?;
            let choices: HashMap<String, bool> = form
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("field:").map(|path| (path.to_owned(), v == "server")))
                .collect();
            Resolution::Merged(crate::merge::by_field(&conflict, &choices)?)
        }
        other => return Err(anyhow::anyhow!("unknown choice {other:?}").into()),
    };
    d.engine.resolve(&collection, &id, resolution).await?;
    Ok(Html(page::saved("conflict resolved").into_string()))
}

async fn failed(State(d): State<Device>) -> Page {
    let list = d.engine.failed_mutations().await?;
    Ok(Html(page::failed(&list).into_string()))
}

async fn failed_action(State(d): State<Device>, Path((id, what)): Path<(String, String)>) -> Page {
    let id = MutationId::parse(&id)?;
    match what.as_str() {
        "retry" => d.engine.retry_failed(id).await?,
        "discard" => d.engine.discard_failed(id).await?,
        other => return Err(anyhow::anyhow!("unknown action {other}").into()),
    }
    Ok(Html(page::saved(&format!("{what} done")).into_string()))
}
