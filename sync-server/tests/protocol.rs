//! The wire protocol against a real server on 127.0.0.1 (SQLite backend).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{delete, mid, status_of, upsert};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_no_token_and_everything_else_does() {
    for s in common::servers("").await {
        let resp = s.http.get(format!("{}/v1/health", s.url)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json::<Value>().await.unwrap(), json!({"status": "ok"}));
        for token in [None, Some("wrong-token")] {
            let (status, body) = s.post("/v1/push", token, json!({"client_id": "c", "mutations": []})).await;
            assert_eq!(status, 401);
            assert_eq!(body["error"]["code"], "unauthorized");
            let (status, _) = s.post("/v1/pull", token, json!({"client_id": "c", "collections": {}})).await;
            assert_eq!(status, 401);
        }
        let resp = s.http.get(format!("{}/v1/events", s.url)).send().await.unwrap();
        assert_eq!(resp.status(), 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_applies_versions_detects_conflicts_and_answers_in_order() {
    for s in common::servers("").await {
        let (status, body) = s
            .push(
                "alice-token",
                vec![
                    upsert("work_orders", "a", None, json!({"t": 1})),
                    upsert("work_orders", "a", Some(1), json!({"t": 2})),
                    upsert("work_orders", "a", Some(1), json!({"t": 3})),
                    upsert("work_orders", "b", Some(4), json!({"t": 1})),
                    delete("work_orders", "never", None),
                    delete("work_orders", "a", Some(2)),
                    upsert("work_orders", "a", Some(2), json!({"t": 4})),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let statuses: Vec<_> = (0..7).map(|i| status_of(&body, i)).collect();
        assert_eq!(statuses, ["applied", "applied", "conflict", "conflict", "applied", "applied", "conflict"]);
        assert_eq!(body["results"][1]["version"], 2);
        assert_eq!(body["results"][2]["server"], json!({"version": 2, "deleted": false, "data": {"t": 2}}));
        assert_eq!(body["results"][3]["server"], Value::Null, "a create with a number on a missing record");
        assert_eq!(body["results"][4]["version"], 1, "a tombstone at version 1");
        assert_eq!(body["results"][6]["server"], json!({"version": 3, "deleted": true, "data": null}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_push_is_applied_once_and_answered_the_same_also_six_at_once() {
    for s in common::servers("").await {
        let s = std::sync::Arc::new(s);
        let batch =
            vec![upsert("work_orders", "x", None, json!({"n": 1})), upsert("work_orders", "y", None, json!({"n": 1}))];
        let (_, first) = s.push("alice-token", batch.clone()).await;
        let (_, again) = s.push("alice-token", batch.clone()).await;
        assert_eq!(first, again);

        let concurrent =
            vec![upsert("work_orders", "z", None, json!({"n": 1})), upsert("work_orders", "x", None, json!({"n": 2}))];
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let s = s.clone();
                let batch = concurrent.clone();
                tokio::spawn(async move { s.push("alice-token", batch).await })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!(status, 200, "{} backend: {body}", s.backend);
            answers.push(body);
        }
        assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
        let (changes, _) = s.pull_all("alice-token", "work_orders", Value::Null).await;
        let x = changes.iter().find(|c| c["record_id"] == "x").unwrap();
        assert_eq!(x["version"], 2, "x was changed once by the concurrent batch");
        // Another user's repeat of the same mutation id is their own mutation.
        let (_, bob) = s.push("bob-token", vec![concurrent[0].clone()]).await;
        assert_eq!(status_of(&bob, 0), "rejected:forbidden");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_pages_by_cursor_with_tombstones_and_caps_the_limit() {
    for s in common::servers("").await {
        let writes: Vec<_> =
            (0..45).map(|i| upsert("work_orders", &format!("r{i:02}"), None, json!({"i": i}))).collect();
        let (status, _) = s.push("alice-token", writes).await;
        assert_eq!(status, 200);
        let deletion = delete("work_orders", "r07", Some(1));
        s.push("alice-token", vec![deletion.clone()]).await;

        let (status, body) = s.pull("alice-token", json!({"work_orders": null}), Some(1_000_000)).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["changes"].as_array().unwrap().len(),
            45,
            "the limit is capped at max_batch (50) and the feed holds 45"
        );
        let (status, body) = s.pull("alice-token", json!({"work_orders": null}), None).await;
        assert_eq!(status, 200, "a missing limit means max_batch");
        assert!(!body["has_more"].as_bool().unwrap());

        let (changes, cursor) = s.pull_all("alice-token", "work_orders", Value::Null).await;
        assert_eq!(changes.len(), 45);
        let r07 = changes.iter().find(|c| c["record_id"] == "r07").unwrap();
        assert_eq!(
            r07,
            &json!({"collection": "work_orders", "record_id": "r07", "version": 2, "deleted": true, "data": null,
                    "mutation_id": deletion["mutation_id"]}),
            "a change names the mutation that made it"
        );
        // Nothing new: an empty page and the same position.
        let (changes, again) = s.pull_all("alice-token", "work_orders", cursor.clone()).await;
        assert!(changes.is_empty());
        assert_eq!(again, cursor);
        s.push("alice-token", vec![upsert("work_orders", "r01", Some(1), json!({"i": 100}))]).await;
        let (changes, _) = s.pull_all("alice-token", "work_orders", cursor).await;
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0]["data"], json!({"i": 100}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_the_retained_tombstones_gets_reset_and_the_resync_is_not_reset_again() {
    for s in common::servers("").await {
        s.push(
            "alice-token",
            vec![upsert("work_orders", "a", None, json!({})), upsert("work_orders", "b", None, json!({}))],
        )
        .await;
        let (_, old_cursor) = s.pull_all("alice-token", "work_orders", Value::Null).await;
        s.push("alice-token", vec![delete("work_orders", "a", Some(1))]).await;
        // Purge every tombstone (the server's loop would do this once they pass the retention).
        let purged = s.store.purge_tombstones(chrono::Utc::now() + chrono::Duration::seconds(1)).await.unwrap();
        assert_eq!(purged, 1);
        let (status, body) = s.pull("alice-token", json!({"work_orders": old_cursor}), Some(1)).await;
        assert_eq!(status, 200);
        assert_eq!(body["reset"], json!(["work_orders"]));
        assert_eq!(body["changes"][0]["record_id"], "b");
        let next = body["cursors"]["work_orders"].clone();
        let (status, body) = s.pull("alice-token", json!({"work_orders": next}), Some(1)).await;
        assert_eq!(status, 200);
        assert_eq!(body["reset"], json!([]), "the pages of the resync are not reset again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_created_again_after_its_tombstone_was_purged_never_reuses_a_version() {
    for s in common::servers("").await {
        s.push("alice-token", vec![upsert("work_orders", "a", None, json!({"i": 1}))]).await;
        s.push("alice-token", vec![upsert("work_orders", "a", Some(1), json!({"i": 2}))]).await;
        s.push("alice-token", vec![delete("work_orders", "a", Some(2))]).await;
        s.store.purge_tombstones(chrono::Utc::now() + chrono::Duration::seconds(1)).await.unwrap();
        // A device that still holds "a" at version 2 would skip a new version 1 as stale
        let (status, body) = s.push("alice-token", vec![upsert("work_orders", "a", Some(0), json!({"i": 3}))]).await;
        assert_eq!(status, 200);
        assert_eq!(body["results"][0]["status"], "applied", "{body}");
        assert_eq!(body["results"][0]["version"], 4, "above the purged tombstone's version 3");
        let (status, body) = s.push("alice-token", vec![upsert("work_orders", "a", Some(4), json!({"i": 4}))]).await;
        assert_eq!((status, body["results"][0]["version"].clone()), (200, json!(5)));
        // The floor is the collection's: any record created in it now starts above it
        let (_, body) = s.push("alice-token", vec![upsert("work_orders", "b", None, json!({}))]).await;
        assert_eq!(body["results"][0]["version"], 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_conflict_is_answered_with_the_record_as_it_is_now() {
    for s in common::servers("").await {
        s.push("alice-token", vec![upsert("work_orders", "a", None, json!({"i": 1}))]).await;
        let create = upsert("work_orders", "a", Some(0), json!({"i": 9}));
        let (_, first) = s.push("alice-token", vec![create.clone()]).await;
        assert_eq!(first["results"][0]["status"], "conflict");
        assert_eq!(first["results"][0]["server"]["version"], 1);
        s.push("alice-token", vec![delete("work_orders", "a", Some(1))]).await;
        // The retry changes nothing, and shows the tombstone rather than the old record
        let (_, again) = s.push("alice-token", vec![create.clone()]).await;
        assert_eq!(again["results"][0]["status"], "conflict", "{again}");
        assert_eq!(again["results"][0]["server"], json!({"version": 2, "deleted": true, "data": null}));
        s.store.purge_tombstones(chrono::Utc::now() + chrono::Duration::seconds(1)).await.unwrap();
        let (_, purged) = s.push("alice-token", vec![create]).await;
        assert_eq!(purged["results"][0]["status"], "conflict", "still the original decision: {purged}");
        assert_eq!(purged["results"][0]["server"], Value::Null, "the record is gone");
        let (changes, _) = s.pull_all("alice-token", "work_orders", Value::Null).await;
        assert!(changes.is_empty(), "nothing was applied: {changes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_4xx_with_a_code_changes_nothing_and_the_server_keeps_serving() {
    for s in common::servers("").await {
        let check = |status: u16, body: &Value, want: u16, code: &str| {
            assert_eq!(status, want, "{body}");
            assert_eq!(body["error"]["code"], code, "{body}");
            assert!(body["error"]["message"].is_string());
        };
        let (st, b) = s.post_raw("/v1/push", Some("alice-token"), "{not json".into()).await;
        check(st, &b, 400, "invalid_request");
        let (st, b) = s.post("/v1/push", Some("alice-token"), json!({"client_id": 5, "mutations": []})).await;
        check(st, &b, 400, "invalid_request");
        let (st, b) = s.post("/v1/push", Some("alice-token"), json!({"client_id": "c", "mutations": {}})).await;
        check(st, &b, 400, "invalid_request");
        let too_many: Vec<_> = (0..51).map(|i| upsert("work_orders", &format!("t{i}"), None, json!({}))).collect();
        let (st, b) = s.push("alice-token", too_many).await;
        check(st, &b, 400, "batch_too_large");
        let big = "x".repeat(70_000);
        let (st, b) = s.push("alice-token", vec![upsert("work_orders", "big", None, json!({"s": big}))]).await;
        check(st, &b, 413, "body_too_large");
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({"d": deep});
        }
        let (st, b) = s.push("alice-token", vec![upsert("work_orders", "deep", None, deep)]).await;
        check(st, &b, 400, "invalid_request");
        let (st, b) = s.pull("alice-token", json!({"nope": null}), None).await;
        check(st, &b, 400, "unknown_collection");
        let (st, b) = s.pull("alice-token", json!({"Bad Name": null}), None).await;
        check(st, &b, 400, "invalid_collection");
        for limit in [0, -5] {
            let (st, b) = s.pull("alice-token", json!({"work_orders": null}), Some(limit)).await;
            check(st, &b, 400, "invalid_request");
        }
        let (st, b) =
            s.post("/v1/pull", Some("alice-token"), json!({"client_id": "c", "collections": {"work_orders": 5}})).await;
        check(st, &b, 400, "invalid_request");
        let (st, b) = s.pull("alice-token", json!({"work_orders": "forged:cursor"}), None).await;
        check(st, &b, 400, "invalid_request");
        let long_id = "i".repeat(300);
        let (st, b) = s
            .push(
                "alice-token",
                vec![
                    upsert("nope", "a", None, json!({})),
                    upsert("Bad-Name", "a", None, json!({})),
                    json!({"mutation_id": "not-a-uuid", "collection": "work_orders", "record_id": "a", "op": "upsert", "data": {}}),
                    json!({"mutation_id": mid(), "collection": "work_orders", "record_id": "a", "op": "upsert", "data": "text"}),
                    json!({"mutation_id": mid(), "collection": "work_orders", "record_id": long_id, "op": "upsert", "data": {}}),
                    json!({"mutation_id": mid(), "collection": "work_orders", "op": "action", "action": "nothing_handles_this"}),
                    upsert("work_orders", "fine", None, json!({})),
                ],
            )
            .await;
        assert_eq!(st, 200);
        let statuses: Vec<_> = (0..7).map(|i| status_of(&b, i)).collect();
        assert_eq!(
            statuses,
            [
                "rejected:unknown_collection",
                "rejected:invalid_collection",
                "rejected:invalid_mutation",
                "rejected:invalid_mutation",
                "rejected:invalid_mutation",
                "rejected:unknown_action",
                "applied"
            ]
        );
        assert_eq!(b["results"][2]["mutation_id"], "not-a-uuid");
        // Nothing else changed: the feed holds only the one valid record.
        let (changes, _) = s.pull_all("root-token", "work_orders", Value::Null).await;
        let ids: Vec<_> = changes.iter().map(|c| c["record_id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(ids, ["fine"]);
        let resp = s.http.get(format!("{}/v1/health", s.url)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "still serving");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_with_server_ids_stores_creates_under_ids_of_its_own() {
    let extra = "[collections.jobs]\naccess = \"owner\"\nids = \"server\"\n";
    for s in common::servers(extra).await {
        let create = upsert("jobs", "tmp-1", Some(0), json!({"title": "a"}));
        let (status, body) = s.push("alice-token", vec![create.clone()]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(status_of(&body, 0), "applied");
        assert_eq!(body["results"][0]["version"], 1);
        let id = body["results"][0]["record_id"].as_str().expect("the server's id").to_owned();
        assert_ne!(id, "tmp-1");
        // A retry of the same mutation gets the same id back and makes no second record
        let (_, again) = s.push("alice-token", vec![create]).await;
        assert_eq!(again["results"][0], body["results"][0], "{} backend", s.backend);
        // Updates and deletes name the server's id and are answered without one
        let (_, body) = s.push("alice-token", vec![upsert("jobs", &id, Some(1), json!({"title": "b"}))]).await;
        assert_eq!(body["results"][0]["version"], 2);
        assert!(body["results"][0].get("record_id").is_none(), "{body}");
        // A create without a base version is renamed as well; a numbered base on a missing
        // record is still a conflict
        let (_, body) = s
            .push(
                "alice-token",
                vec![upsert("jobs", "tmp-2", None, json!({"title": "c"})), upsert("jobs", "tmp-3", Some(4), json!({}))],
            )
            .await;
        let second = body["results"][0]["record_id"].as_str().unwrap().to_owned();
        assert!(second != id && second != "tmp-2");
        assert_eq!(status_of(&body, 1), "conflict");
        let (changes, _) = s.pull_all("alice-token", "jobs", Value::Null).await;
        let mut ids: Vec<_> = changes.iter().map(|c| c["record_id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        let mut want = vec![id.clone(), second];
        want.sort();
        assert_eq!(ids, want, "{} backend: only the server's ids exist", s.backend);
        // Collections with client ids never answer with one
        let (_, body) = s.push("alice-token", vec![upsert("work_orders", "w1", Some(0), json!({}))]).await;
        assert!(body["results"][0].get("record_id").is_none(), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_request_id_given_or_a_new_one() {
    for s in common::servers("").await {
        let given = "0192f5e4-1111-7aaa-8bbb-123456789abc";
        let resp = s
            .http
            .post(format!("{}/v1/pull", s.url))
            .bearer_auth("alice-token")
            .header("x-request-id", given)
            .json(&json!({"client_id": "c", "collections": {"work_orders": null}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-request-id"], given);
        // Without one, the server makes one (a UUID), also on refusals.
        let mut seen = std::collections::BTreeSet::new();
        for path in ["/v1/health", "/v1/push", "/no/such/path"] {
            let resp = s.http.get(format!("{}{path}", s.url)).send().await.unwrap();
            let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{path}: {id}");
            assert!(seen.insert(id), "request ids repeat");
        }
    }
}
