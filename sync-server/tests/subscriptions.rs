//! Subscriptions over HTTP, on every backend: a date window downloads exactly its
//! records, with the user's read rule on top, and later pulls bring records that enter
//! it and remove those that leave it (moved out of the window, reassigned, deleted);
//! refusals are per subscription; a cursor of other parameters starts over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{TestServer, delete, upsert};
use serde_json::{Value, json};
use sync_server::config::token_sha256;

fn config(database: &str) -> String {
    let mut text = format!("database = \"{database}\"\nmax_batch = 50\n");
    for (name, groups) in [("disp", "[\"dispatchers\"]"), ("tom", "[]"), ("ann", "[]")] {
        text.push_str(&format!(
            "[[users]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nrole = \"user\"\ngroups = {groups}\n",
            token_sha256(&format!("{name}-token"))
        ));
    }
    text.push_str(
        r#"[collections.jobs]
read = ["assigned_to = user", "user in dispatchers"]
write = ["user in dispatchers"]
subscription_indexes = [["assigned_to", "due"], ["status"], ["assigned_to"]]

[collections.parts]
access = "read_only"
"#,
    );
    text
}

async fn servers() -> Vec<TestServer> {
    let mut out = Vec::new();
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let url = common::database_url(backend, &dir).await;
        out.push(common::start_config(backend, &config(&url), dir).await);
    }
    out
}

fn day(d: u32) -> String {
    format!("2026-12-{d:02}")
}

fn job(assigned_to: &str, d: u32) -> Value {
    json!({"assigned_to": assigned_to, "due": day(d), "status": "open"})
}

/// Tom's jobs due from the 5th (inclusive) to the 15th (exclusive).
fn window(assigned_to: &str) -> Value {
    json!({"collection": "jobs", "where": {"assigned_to": assigned_to},
           "range": {"field": "due", "gte": day(5), "lt": day(15)}})
}

/// Pulls one subscription to the end in pages of `limit`; returns its changes, its
/// last part (for the cursor) and the first part's total.
async fn pull_sub(s: &TestServer, user: &str, sub: &Value, cursor: Value, limit: i64) -> (Vec<Value>, Value, Value) {
    let mut cursor = cursor;
    let mut changes = Vec::new();
    let mut total = Value::Null;
    for page in 0..1_000 {
        let mut asked = sub.clone();
        asked["cursor"] = cursor.clone();
        let body = json!({"client_id": "c1", "collections": {}, "subscriptions": {"s1": asked}, "limit": limit});
        let (status, answer) = s.post("/v1/pull", Some(&format!("{user}-token")), body).await;
        assert_eq!(status, 200, "{} backend: {answer}", s.backend);
        let part = answer["subscriptions"]["s1"].clone();
        assert!(part["error"].is_null(), "{part}");
        if page == 0 {
            total = part["total"].clone();
        }
        let got = part["changes"].as_array().unwrap();
        assert!(got.len() <= usize::try_from(limit).unwrap(), "a page holds at most the limit");
        changes.extend(got.iter().cloned());
        cursor = part["cursor"].clone();
        assert_eq!(answer["has_more"], part["has_more"], "the answer's has_more covers its subscriptions");
        if part["has_more"] == false {
            return (changes, part, total);
        }
    }
    panic!("the subscription never finished");
}

fn ids(changes: &[Value], pick: impl Fn(&Value) -> bool) -> BTreeSet<String> {
    changes.iter().filter(|c| pick(c)).map(|c| c["record_id"].as_str().unwrap().to_owned()).collect()
}

fn live(c: &Value) -> bool {
    c["deleted"] == false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_window_gets_exactly_its_records_and_then_what_enters_and_leaves_it() {
    for s in servers().await {
        // 20 days of jobs for tom and ann each, written by the dispatcher.
        let mut writes = Vec::new();
        for d in 1..=20 {
            writes.push(upsert("jobs", &format!("tom-{d}"), None, job("tom", d)));
            writes.push(upsert("jobs", &format!("ann-{d}"), None, job("ann", d)));
        }
        for chunk in writes.chunks(50) {
            let (status, body) = s.push("disp-token", chunk.to_vec()).await;
            assert_eq!(status, 200, "{body}");
        }
        let expected: BTreeSet<String> = (5..15).map(|d| format!("tom-{d}")).collect();

        let (changes, last, total) = pull_sub(&s, "tom", &window("tom"), Value::Null, 3).await;
        assert_eq!(ids(&changes, live), expected, "{} backend: exactly the window", s.backend);
        assert_eq!(changes.len(), expected.len(), "each record once");
        assert_eq!(total, json!(10), "the first page's total counts what matches");
        assert!(changes.iter().all(|c| c["data"]["assigned_to"] == "tom" && c["version"] == 1));

        // Tom asking for ann's window gets nothing: his read rule applies on top.
        let (theirs, _, total) = pull_sub(&s, "tom", &window("ann"), Value::Null, 50).await;
        assert!(theirs.is_empty(), "{theirs:?}");
        assert_eq!(total, json!(0));
        // The dispatcher reads every job: ann's window is hers.
        let (hers, _, _) = pull_sub(&s, "disp", &window("ann"), Value::Null, 50).await;
        assert_eq!(ids(&hers, live), (5..15).map(|d| format!("ann-{d}")).collect());

        // Moves: one out of the window, one into it, one deleted, one reassigned to
        // ann, one unrelated change of ann's, one change inside the window.
        let v = |n: u64| Some(n);
        let (status, body) = s
            .push(
                "disp-token",
                vec![
                    upsert("jobs", "tom-5", v(1), job("tom", 25)),
                    upsert("jobs", "tom-3", v(1), job("tom", 7)),
                    delete("jobs", "tom-6", v(1)),
                    upsert("jobs", "tom-7", v(1), job("ann", 7)),
                    upsert("jobs", "ann-9", v(1), job("ann", 10)),
                    upsert("jobs", "tom-8", v(1), json!({"assigned_to": "tom", "due": day(8), "status": "done"})),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (after, _, total) = pull_sub(&s, "tom", &window("tom"), last["cursor"].clone(), 50).await;
        assert_eq!(total, Value::Null, "no total after the download");
        let by_id = |id: &str| after.iter().find(|c| c["record_id"] == id).cloned();
        assert_eq!(ids(&after, live), BTreeSet::from(["tom-3".to_owned(), "tom-8".to_owned()]), "{after:?}");
        let out = by_id("tom-5").expect("tom-5 left the window");
        assert_eq!(
            (out["deleted"].clone(), out["removed"].clone(), out["version"].clone()),
            (json!(true), json!(true), json!(2))
        );
        let gone = by_id("tom-6").expect("tom-6 was deleted");
        assert_eq!(
            (gone["deleted"].clone(), gone.get("removed").cloned()),
            (json!(true), None),
            "a delete, not a removal"
        );
        let moved = by_id("tom-7").expect("tom-7 left tom's scope");
        assert_eq!(moved["removed"], true);
        assert!(by_id("ann-9").is_none(), "a change tom may not read is not his to hear of");
        assert_eq!(after.len(), 5, "{after:?}");

        // Nothing new: an empty page and the same cursor position.
        let (none, _, _) = pull_sub(&s, "tom", &window("tom"), last["cursor"].clone(), 50).await;
        assert_eq!(none.len(), 5, "the old cursor gets the same changes again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_per_subscription_and_the_rest_of_the_pull_goes_on() {
    for s in servers().await {
        let (status, body) = s.push("disp-token", vec![upsert("jobs", "j1", None, job("tom", 6))]).await;
        assert_eq!(status, 200, "{body}");
        let subs = json!({
            "good": window("tom"),
            "unindexed": {"collection": "jobs", "where": {"due": day(6)}},
            "gap": {"collection": "jobs", "where": {"status": "open"}, "range": {"field": "due", "gte": day(1)}},
            "bool": {"collection": "jobs", "where": {"status": true}},
            "path": {"collection": "jobs", "where": {"a..b": "x"}},
            "bounds": {"collection": "jobs", "where": {"assigned_to": "tom"}, "range": {"field": "due"}},
            "unknown": {"collection": "nope", "where": {}},
            "shape": {"collection": 7},
        });
        let body = json!({"client_id": "c1", "collections": {"parts": null}, "subscriptions": subs});
        let (status, answer) = s.post("/v1/pull", Some("tom-token"), body).await;
        assert_eq!(status, 200, "{answer}");
        let code = |id: &str| answer["subscriptions"][id]["error"]["code"].clone();
        assert_eq!(code("good"), Value::Null);
        assert_eq!(answer["subscriptions"]["good"]["changes"][0]["record_id"], "j1");
        for id in ["unindexed", "gap"] {
            assert_eq!(code(id), "unindexed_subscription", "{id}: {answer}");
            assert!(answer["subscriptions"][id].get("cursor").is_none());
        }
        for id in ["bool", "path", "bounds", "shape"] {
            assert_eq!(code(id), "invalid_subscription", "{id}: {answer}");
        }
        assert_eq!(code("unknown"), "unknown_collection");
        assert!(answer["cursors"]["parts"].is_string(), "the collections are answered too");

        // A request-level shape error is still a 400.
        let bad = json!({"client_id": "c1", "collections": {}, "subscriptions": []});
        let (status, answer) = s.post("/v1/pull", Some("tom-token"), bad).await;
        assert_eq!((status, answer["error"]["code"].clone()), (400, json!("invalid_request")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_of_other_parameters_starts_over_and_a_forged_one_is_refused() {
    for s in servers().await {
        let writes: Vec<Value> = (1..=20).map(|d| upsert("jobs", &format!("t{d}"), None, job("tom", d))).collect();
        let (status, body) = s.push("disp-token", writes).await;
        assert_eq!(status, 200, "{body}");
        let (_, last, _) = pull_sub(&s, "tom", &window("tom"), Value::Null, 4).await;
        // The same cursor with a wider window: the new window's full set, marked reset.
        let wider = json!({"collection": "jobs", "where": {"assigned_to": "tom"},
                           "range": {"field": "due", "gte": day(1), "lt": day(30)}, "cursor": last["cursor"]});
        let body = json!({"client_id": "c1", "collections": {}, "subscriptions": {"s1": wider}, "limit": 50});
        let (status, answer) = s.post("/v1/pull", Some("tom-token"), body).await;
        assert_eq!(status, 200, "{answer}");
        let part = &answer["subscriptions"]["s1"];
        assert_eq!(part["reset"], true, "{part}");
        assert_eq!(part["changes"].as_array().unwrap().len(), 20);
        assert_eq!(part["total"], 20);

        let forged = json!({"collection": "jobs", "where": {"assigned_to": "tom"}, "cursor": "x:i:1:zz"});
        let body = json!({"client_id": "c1", "collections": {}, "subscriptions": {"s1": forged}});
        let (status, answer) = s.post("/v1/pull", Some("tom-token"), body).await;
        assert_eq!((status, answer["error"]["code"].clone()), (400, json!("invalid_request")), "{answer}");
    }
}
