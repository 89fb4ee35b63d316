//! The page and its fragments, as HTML (maud escapes every value), with the page's CSS
//! and script. Element ids are what the browser test reads.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use sync_core::Tracked;
use sync_core::store::{Conflict, OutboxEntry, RecordState};
use sync_patterns::diff::{FieldChange, field_diff};

use crate::model::{Product, STATUSES, Visit, WorkOrder};
use crate::web::StatusView;

const STYLE: &str = r#"
body { font-family: system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #222; }
header { display: flex; gap: 1.2em; align-items: center; padding: .6em 1em; background: #1f2937; color: #fff; flex-wrap: wrap; }
header h1 { font-size: 1.1em; margin: 0 1em 0 0; }
.badge { padding: .15em .6em; border-radius: 1em; font-weight: 600; }
.online { background: #16a34a; } .offline { background: #dc2626; }
.fresh { color: #86efac; } .stale { color: #fca5a5; }
main { display: grid; grid-template-columns: 1.2fr 1fr; gap: 1em; padding: 1em; }
section { background: #fff; border-radius: 8px; padding: .8em 1em; box-shadow: 0 1px 2px #0002; }
h2 { font-size: 1em; margin: .2em 0 .6em; }
table { border-collapse: collapse; width: 100%; font-size: .9em; }
td, th { padding: .25em .4em; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
tr.row { cursor: pointer; } tr.row:hover { background: #eef2ff; }
.state { font-size: .8em; font-weight: 600; padding: .1em .5em; border-radius: .8em; }
.state-synced { background: #dcfce7; } .state-pending { background: #fef9c3; }
.state-conflict { background: #fee2e2; } .state-failed { background: #fecaca; }
.differs td { background: #fff7ed; } .both td { background: #fee2e2; }
label { display: block; margin: .3em 0; } input[type=text], textarea, select { width: 95%; }
#flash { min-height: 1.2em; color: #2563eb; }
#orders { max-height: 55vh; overflow: auto; } #catalogue { max-height: 25vh; overflow: auto; }
.error { color: #b91c1c; }
"#;

const SCRIPT: &str = r#"
const $ = (id) => document.getElementById(id);
let openOrder = null, editing = false;
async function load(id, url) { const r = await fetch(url); $(id).innerHTML = await r.text(); }
function ordersUrl() {
  const q = encodeURIComponent($('search').value), s = encodeURIComponent($('status-filter').value);
  return `/fragment/orders?q=${q}&status=${s}`;
}
const reload = {
  orders: () => load('orders', ordersUrl()),
  detail: () => openOrder && !editing ? load('detail', `/fragment/order/${encodeURIComponent(openOrder)}`) : null,
  conflicts: () => load('conflicts', '/fragment/conflicts'),
  failed: () => load('failed-list', '/fragment/failed'),
  catalogue: () => load('catalogue', `/fragment/catalogue?q=${encodeURIComponent($('catalogue-search').value)}`),
};
function showStatus(s) {
  const n = $('network'); n.textContent = s.network; n.className = 'badge ' + s.network;
  $('pending').textContent = s.pending; $('failed').textContent = s.failed;
  $('conflict-count').textContent = s.conflicts;
  $('last-sync').textContent = s.last_sync || 'never';
  const f = $('freshness'); f.textContent = s.up_to_date ? 'up to date' : 'not up to date';
  f.className = s.up_to_date ? 'fresh' : 'stale';
  $('phase').textContent = s.phase;
  $('online-switch').checked = s.switch_online;
}
function connect() {
  const events = new EventSource('/events');
  events.addEventListener('status', (e) => showStatus(JSON.parse(e.data)));
  events.addEventListener('changed', (e) => {
    const what = e.data;
    if (what === 'work_orders' || what === 'all') { reload.orders(); reload.detail(); }
    if (what === 'states') reload.orders();
    if (what === 'visits' || what === 'all') reload.detail();
    if (what === 'products' || what === 'all') reload.catalogue();
    if (what === 'conflicts' || what === 'all') { reload.conflicts(); reload.orders(); }
    if (what === 'failed' || what === 'all') { reload.failed(); reload.orders(); }
  });
}
document.addEventListener('submit', async (e) => {
  const form = e.target;
  if (!form.dataset.post) return;
  e.preventDefault();
  const body = new URLSearchParams(new FormData(form, e.submitter));
  const r = await fetch(form.dataset.post, { method: 'POST', body });
  $('flash').innerHTML = await r.text();
  editing = false;
  if (form.dataset.after === 'conflicts') reload.conflicts();
  if (form.dataset.after === 'failed') reload.failed();
  if (form.dataset.after === 'detail') reload.detail();
});
document.addEventListener('input', (e) => { if (e.target.closest('#order-form')) editing = true; });
document.addEventListener('click', (e) => {
  const row = e.target.closest('tr.row');
  if (row) { openOrder = row.dataset.id; editing = false; reload.detail(); }
});
window.addEventListener('DOMContentLoaded', () => {
  $('search').addEventListener('input', reload.orders);
  $('status-filter').addEventListener('change', reload.orders);
  $('catalogue-search').addEventListener('input', reload.catalogue);
  $('online-switch').addEventListener('change', (e) =>
    fetch('/network', { method: 'POST', body: new URLSearchParams({ online: e.target.checked }) }));
  reload.orders(); reload.conflicts(); reload.failed(); reload.catalogue();
  connect();
});
"#;

/// The whole page for device `name`, with the status as it is now.
pub fn full(name: &str, status: &StatusView) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (name) " · offsync field service" }
                style { (PreEscaped(STYLE)) }
                script { (PreEscaped(SCRIPT)) }
            }
            body {
                header {
                    h1 { (name) }
                    label { input #online-switch type="checkbox" checked[status.switch_online]; " online" }
                    span #network class={ "badge " (status.network) } { (status.network) }
                    span { "pending " b #pending { (status.pending) } }
                    span { "failed " b #failed { (status.failed) } }
                    span { "conflicts " b #conflict-count { (status.conflicts) } }
                    span { "last sync " span #last-sync { (status.last_sync.as_deref().unwrap_or("never")) } }
                    span #freshness class=(if status.up_to_date { "fresh" } else { "stale" }) {
                        (if status.up_to_date { "up to date" } else { "not up to date" })
                    }
                    span #phase { (status.phase) }
                }
                main {
                    div {
                        section {
                            h2 { "Work orders" }
                            input #search type="text" placeholder="search by site (prefix)";
                            select #status-filter {
                                option value="" { "any status" }
                                @for s in STATUSES { option value=(s) { (s) } }
                            }
                            div #orders {}
                        }
                        section { h2 { "Catalogue" } input #catalogue-search type="text" placeholder="search products"; div #catalogue {} }
                    }
                    div {
                        section { div #flash {} div #detail { p { "Choose a work order." } } }
                        section { h2 { "Conflicts" } div #conflicts {} }
                        section { h2 { "Failed changes" } div #failed-list {} }
                    }
                }
            }
        }
    }
}

fn state_label(state: RecordState) -> &'static str {
    match state {
        RecordState::Synced => "synced",
        RecordState::Pending(_) => "pending",
        RecordState::Conflict => "conflict",
        RecordState::Failed => "failed",
    }
}

/// The work-order list, each row with its sync state.
pub fn orders(rows: &[Tracked<WorkOrder>]) -> Markup {
    html! {
        table {
            tr { th { "#" } th { "site" } th { "task" } th { "status" } th { "sync" } }
            @for row in rows {
                @let state = state_label(row.state);
                tr.row data-id=(row.entity.id) {
                    td { "WO-" (row.entity.number) }
                    td.site { (row.entity.site) }
                    td { (row.entity.task) }
                    td { (row.entity.status) }
                    td { span class={ "state state-" (state) } { (state) } }
                }
            }
        }
        @if rows.is_empty() { p { "No work orders match." } }
    }
}

/// The edit form of one work order, its custom action and its visits.
pub fn order_form(order: &WorkOrder, visits: &[Visit]) -> Markup {
    let post = format!("/order/{}", order.id);
    html! {
        h2 { "WO-" (order.number) }
        form #order-form data-post=(post) data-after="detail" {
            label { "site " input name="site" type="text" value=(order.site); }
            label { "task " input name="task" type="text" value=(order.task); }
            label { "status "
                select name="status" {
                    @for s in STATUSES { option value=(s) selected[order.status == s] { (s) } }
                }
            }
            label { "notes " textarea name="notes" { (order.notes) } }
            button #save type="submit" { "Save" }
        }
        form data-post={ (post) "/arrived" } data-after="detail" {
            button #arrived type="submit" { "Mark arrived" }
            @if let Some(at) = &order.arrived_at { " arrived " (at) }
        }
        h2 { "Visits" }
        ul { @for v in visits { li { (v.at) ": " (v.note) } } }
        form data-post={ (post) "/visits" } data-after="detail" {
            input name="note" type="text" placeholder="what was done";
            button type="submit" { "Add visit" }
        }
    }
}

/// The catalogue's first products (of `total`).
pub fn catalogue(products: &[Product], total: u64) -> Markup {
    html! {
        p { (total) " products on this device" }
        table {
            @for p in products {
                tr { td { (p.sku) } td { (p.name) } td { (format!("{:.2}", f64::from(p.price_cents) / 100.0)) } }
            }
        }
    }
}

fn json(v: Option<&serde_json::Value>) -> String {
    v.map_or_else(|| "(none)".to_owned(), |v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
}

/// The open conflicts: base, mine and theirs side by side, the fields that differ
/// highlighted, and the choices.
pub fn conflicts(list: &[Conflict]) -> Markup {
    html! {
        @if list.is_empty() { p #no-conflicts { "No conflicts." } }
        @for c in list {
            @let server = c.server.as_ref().and_then(|s| if s.deleted { None } else { s.data.clone() });
            @let fields = field_diff(c.base.as_ref(), c.local.as_ref(), server.as_ref());
            div.conflict data-id=(c.record_id) {
                h3 { (c.collection) " / " (c.record_id) }
                form data-post={ "/conflict/" (c.collection) "/" (c.record_id) } data-after="conflicts" {
                    table {
                        tr { th { "field" } th { "base" } th { "mine" } th { "theirs" } th { "keep" } }
                        @for f in &fields {
                            tr class=(if f.change == FieldChange::Conflict { "both" } else { "differs" }) data-field=(f.path) {
                                td { (if f.path.is_empty() { "(record)" } else { &f.path }) }
                                td { (json(f.base.as_ref())) }
                                td.mine { (json(f.local.as_ref())) }
                                td.theirs { (json(f.server.as_ref())) }
                                td {
                                    @match f.change {
                                        FieldChange::Conflict => {
                                            label { input type="radio" name={ "field:" (f.path) } value="local" checked; " mine" }
                                            label { input type="radio" name={ "field:" (f.path) } value="server"; " theirs" }
                                        }
                                        FieldChange::Local => { "mine (only I changed it)" }
                                        FieldChange::Server => { "theirs (only they changed it)" }
                                        FieldChange::Same => { "same" }
                                    }
                                }
                            }
                        }
                    }
                    button.keep-mine type="submit" name="choice" value="mine" { "Keep mine" }
                    " "
                    button.keep-theirs type="submit" name="choice" value="theirs" { "Keep theirs" }
                    " "
                    button.apply-fields type="submit" name="choice" value="fields" { "Apply my choices" }
                }
            }
        }
    }
}

/// The parked mutations with their errors, to retry or discard.
pub fn failed(list: &[OutboxEntry]) -> Markup {
    html! {
        @if list.is_empty() { p { "Nothing failed." } }
        @for e in list {
            div.failed-entry {
                p {
                    b { (e.collection) " / " (e.record_id.as_ref().map_or("", |r| r.as_str())) }
                    " " span.error { (e.last_error.as_deref().unwrap_or("")) }
                }
                form data-post={ "/failed/" (e.mutation_id) "/retry" } data-after="failed" { button type="submit" { "Retry" } }
                form data-post={ "/failed/" (e.mutation_id) "/discard" } data-after="failed" { button type="submit" { "Discard" } }
            }
        }
    }
}

/// A short confirmation.
pub fn saved(what: &str) -> Markup {
    html! { span { (what) } }
}

/// An error for the person, with the engine's explanation.
pub fn error(message: &str) -> Markup {
    html! { span.error { (message) } }
}
