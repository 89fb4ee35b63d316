//! The conflict story through the devices' pages over HTTP (the same requests the page's
//! script makes): ana goes offline and edits a work order, ben edits the same field
//! differently and another field, ana comes back, the conflict shows on her page with
//! the fields that differ, she picks per field, and both devices converge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use field_service::{Options, model::WorkOrder};
use serde_json::Value;

async fn text(client: &reqwest::Client, url: String) -> String {
    let answer = client.get(&url).send().await.unwrap();
    assert!(answer.status().is_success(), "GET {url}: {}", answer.status());
    answer.text().await.unwrap()
}

async fn post(client: &reqwest::Client, url: String, form: &[(&str, &str)]) -> String {
    let answer = client.post(&url).form(form).send().await.unwrap();
    let status = answer.status();
    let body = answer.text().await.unwrap();
    assert!(status.is_success(), "POST {url}: {status} {body}");
    body
}

async fn status(client: &reqwest::Client, base: &str) -> Value {
    client.get(format!("{base}/api/status")).send().await.unwrap().json().await.unwrap()
}

/// Waits until `check` holds on the device's status, or fails with the last one.
async fn until_status(client: &reqwest::Client, base: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(client, base).await;
        if check(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: the status stayed {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn order_on(app: &field_service::FieldService, device: usize, id: &str) -> WorkOrder {
    app.devices[device].engine.collection::<WorkOrder>().unwrap().get(id).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_made_offline_is_settled_field_by_field_on_the_page_and_both_devices_converge() {
    let dir = tempfile::tempdir().unwrap();
    let app = field_service::start(Options { orders: 40, products: 15, ..Options::new(dir.path()) }).await.unwrap();
    let client = reqwest::Client::new();
    let (ana, ben) = (app.devices[0].url(), app.devices[1].url());
    for base in [&ana, &ben] {
        until_status(&client, base, "first sync", |s| s["up_to_date"] == true).await;
        let page = text(&client, base.to_string()).await;
        assert!(page.contains("id=\"online-switch\"") && page.contains("id=\"pending\""), "{page}");
    }
    let list = text(&client, format!("{ana}/fragment/orders?q=&status=")).await;
    assert!(list.contains("data-id=\"wo-0\"") && list.contains("state-synced"), "{list}");
    let filtered = text(&client, format!("{ana}/fragment/orders?q=Depot&status=open")).await;
    assert!(filtered.contains("wo-0") && !filtered.contains("wo-1\""), "{filtered}");
    let missing = client.get(format!("{ana}/fragment/order/nope")).send().await.unwrap();
    assert_eq!(missing.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    assert!(missing.text().await.unwrap().contains("no work order nope"));
    let refused =
        client.post(format!("{ana}/conflict/work_orders/wo-0")).form(&[("choice", "fields")]).send().await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY, "no conflict to settle");
    let catalogue = text(&client, format!("{ana}/fragment/catalogue?q=")).await;
    assert!(catalogue.contains("15 products on this device"), "{catalogue}");

    // Ana goes offline and edits wo-0's task; the row says pending.
    post(&client, format!("{ana}/network"), &[("online", "false")]).await;
    until_status(&client, &ana, "offline", |s| s["network"] == "offline" && s["switch_online"] == false).await;
    let wo0 = order_on(&app, 0, "wo-0").await;
    post(
        &client,
        format!("{ana}/order/wo-0"),
        &[("site", &wo0.site), ("task", "replace filter (ana)"), ("status", "open"), ("notes", "")],
    )
    .await;
    until_status(&client, &ana, "ana's edit queued", |s| s["pending"] == 1 && s["up_to_date"] == false).await;
    assert!(text(&client, format!("{ana}/fragment/orders?q=&status=")).await.contains("state-pending"));

    // Ben edits the same field differently, and the notes.
    post(
        &client,
        format!("{ben}/order/wo-0"),
        &[("site", &wo0.site), ("task", "replace filter (ben)"), ("status", "open"), ("notes", "gate code 1234")],
    )
    .await;
    // The counts lag a write by up to 50 ms: wait for the server's acknowledgement itself.
    let orders = app.devices[1].engine.collection::<WorkOrder>().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stored = orders.get_stored("wo-0").await.unwrap().unwrap();
        if stored.server_version == Some(sync_core::Version(2)) && stored.state == sync_core::store::RecordState::Synced
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "ben's edit was never acknowledged: {stored:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Ana comes back: the conflict shows, with the task both changed and ben's notes.
    post(&client, format!("{ana}/network"), &[("online", "true")]).await;
    until_status(&client, &ana, "the conflict arrives", |s| s["conflicts"] == 1 && s["network"] == "online").await;
    let conflicts = text(&client, format!("{ana}/fragment/conflicts")).await;
    assert!(conflicts.contains("data-field=\"/task\"") && conflicts.contains("class=\"both\""), "{conflicts}");
    assert!(conflicts.contains("replace filter (ana)") && conflicts.contains("replace filter (ben)"), "{conflicts}");
    assert!(text(&client, format!("{ana}/fragment/orders?q=&status=")).await.contains("state-conflict"));

    // She keeps ben's task; ben's notes come along (only he changed them).
    post(&client, format!("{ana}/conflict/work_orders/wo-0"), &[("choice", "fields"), ("field:/task", "server")]).await;
    until_status(&client, &ana, "resolved and sent", |s| {
        s["conflicts"] == 0 && s["pending"] == 0 && s["up_to_date"] == true
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (order_on(&app, 0, "wo-0").await, order_on(&app, 1, "wo-0").await);
        if a == b {
            assert_eq!((a.task.as_str(), a.notes.as_str()), ("replace filter (ben)", "gate code 1234"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the devices did not converge: {a:?} / {b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text(&client, format!("{ana}/fragment/conflicts")).await.contains("No conflicts."));

    // Mark arrived and a visit: on both devices.
    post(&client, format!("{ana}/order/wo-1/arrived"), &[]).await;
    post(&client, format!("{ana}/order/wo-1/visits"), &[("note", "replaced the filter")]).await;
    until_status(&client, &ana, "sent", |s| s["pending"] == 0 && s["failed"] == 0).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let detail = text(&client, format!("{ben}/fragment/order/wo-1")).await;
        if detail.contains("replaced the filter") {
            assert!(detail.contains("arrived 20"), "{detail}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "ben never saw the visit: {detail}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A change the server refuses (moving a job to another team is outside ana's write
    // rule) is parked: the failed panel shows it with its error, and discarding it puts
    // the record back to the server's version.
    let orders = app.devices[0].engine.collection::<WorkOrder>().unwrap();
    let mut moved = orders.get("wo-3").await.unwrap().unwrap();
    moved.team = "south".into();
    orders.update(&moved).await.unwrap();
    until_status(&client, &ana, "the refusal parked", |s| s["failed"] == 1).await;
    let failed = text(&client, format!("{ana}/fragment/failed")).await;
    assert!(failed.contains("work_orders / wo-3") && failed.contains("forbidden"), "{failed}");
    let discard = failed
        .split("data-post=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|path| path.ends_with("/discard"))
        .unwrap()
        .to_owned();
    post(&client, format!("{ana}{discard}"), &[]).await;
    until_status(&client, &ana, "the refusal discarded", |s| s["failed"] == 0).await;
    assert_eq!(orders.get("wo-3").await.unwrap().unwrap().team, "north", "back to the server's version");
    assert!(text(&client, format!("{ana}/fragment/failed")).await.contains("Nothing failed."));
    app.stop().await;
}
