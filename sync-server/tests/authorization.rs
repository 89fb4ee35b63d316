//! Users × collections × (pull, push create/update/delete, events), with forged ids,
//! versions and owner fields: nothing leaks and nothing changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestServer, delete, mid, next_change, status_of, upsert};
use serde_json::{Value, json};

async fn ids(s: &TestServer, token: &str, collection: &str) -> Vec<String> {
    let (changes, _) = s.pull_all(token, collection, Value::Null).await;
    let mut ids: Vec<_> =
        changes.iter().filter(|c| c["deleted"] == false).map(|c| c["record_id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

async fn record(s: &TestServer, id: &str, collection: &str) -> Value {
    let (changes, _) = s.pull_all("root-token", collection, Value::Null).await;
    changes.into_iter().find(|c| c["record_id"] == id).unwrap_or(Value::Null)
}

fn assert_no_leak(body: &Value, i: usize) {
    let r = &body["results"][i];
    assert_eq!(r["status"], "rejected", "{r}");
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    assert!(r.get("version").is_none() && r.get("server").is_none(), "a refusal carries nothing of the record: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_stays_in_scope_whatever_they_forge() {
    for s in common::servers("").await {
        let (_, b) = s.push("root-token", vec![upsert("products", "p1", None, json!({"price": 1}))]).await;
        assert_eq!(status_of(&b, 0), "applied");
        s.push("alice-token", vec![upsert("work_orders", "a1", None, json!({"owner": "alice"}))]).await;
        // Fields in the data never decide ownership.
        s.push("bob-token", vec![upsert("work_orders", "b1", None, json!({"owner": "alice", "user": "alice"}))]).await;
        let b1_before = record(&s, "b1", "work_orders").await;

        // Pull: owners see their own; admins all; read_only for everyone.
        assert_eq!(ids(&s, "alice-token", "work_orders").await, ["a1"]);
        assert_eq!(ids(&s, "bob-token", "work_orders").await, ["b1"]);
        assert_eq!(ids(&s, "root-token", "work_orders").await, ["a1", "b1"]);
        for token in ["alice-token", "bob-token", "root-token"] {
            assert_eq!(ids(&s, token, "products").await, ["p1"]);
        }

        // Alice against Bob's record: every op, every forged base version and owner.
        let forged = vec![
            upsert("work_orders", "b1", None, json!({"stolen": true})),
            upsert("work_orders", "b1", Some(1), json!({"stolen": true})),
            upsert("work_orders", "b1", Some(99), json!({"stolen": true})),
            delete("work_orders", "b1", None),
            delete("work_orders", "b1", Some(1)),
            json!({"mutation_id": mid(), "collection": "work_orders", "record_id": "b1", "op": "upsert", "data": {}, "owner": "alice"}),
            json!({"mutation_id": mid(), "collection": "work_orders", "record_id": "b1", "op": "upsert", "data": {}, "owner": "bob"}),
            json!({"mutation_id": mid(), "collection": "work_orders", "record_id": "new", "op": "upsert", "data": {}, "owner": "bob"}),
            json!({"mutation_id": mid(), "collection": "work_orders", "record_id": "b1", "op": "action", "action": "x"}),
        ];
        let n = forged.len();
        let (_, body) = s.push("alice-token", forged).await;
        for i in 0..n {
            assert_no_leak(&body, i);
        }
        assert_eq!(record(&s, "b1", "work_orders").await, b1_before, "Bob's record is unchanged");
        assert_eq!(ids(&s, "root-token", "work_orders").await, ["a1", "b1"], "nothing was created for Bob");

        // read_only: users cannot create, update or delete; admins can.
        for token in ["alice-token", "bob-token"] {
            let (_, body) = s
                .push(
                    token,
                    vec![
                        upsert("products", "p2", None, json!({})),
                        upsert("products", "p1", Some(1), json!({"price": 0})),
                        delete("products", "p1", None),
                    ],
                )
                .await;
            for i in 0..3 {
                assert_no_leak(&body, i);
            }
        }
        assert_eq!(record(&s, "p1", "products").await["data"], json!({"price": 1}));
        let (_, body) = s.push("root-token", vec![upsert("products", "p1", Some(1), json!({"price": 2}))]).await;
        assert_eq!(status_of(&body, 0), "applied");

        // Admins create for others, never for unknown users, never re-own a record.
        let (_, body) = s
            .push(
                "root-token",
                vec![
                    json!({"mutation_id": mid(), "collection": "work_orders", "record_id": "for_bob", "op": "upsert", "data": {}, "owner": "bob"}),
                    json!({"mutation_id": mid(), "collection": "work_orders", "record_id": "ghost", "op": "upsert", "data": {}, "owner": "nobody"}),
                    json!({"mutation_id": mid(), "collection": "work_orders", "record_id": "a1", "op": "upsert", "data": {}, "owner": "bob"}),
                ],
            )
            .await;
        assert_eq!(status_of(&body, 0), "applied");
        assert_eq!(status_of(&body, 1), "rejected:invalid_mutation");
        assert_eq!(status_of(&body, 2), "rejected:invalid_mutation");
        assert_eq!(ids(&s, "bob-token", "work_orders").await, ["b1", "for_bob"]);
        assert_eq!(ids(&s, "alice-token", "work_orders").await, ["a1"]);

        // A tombstone keeps its owner: Alice cannot recreate Bob's deleted record.
        s.push("bob-token", vec![delete("work_orders", "b1", None)]).await;
        let (_, body) = s.push("alice-token", vec![upsert("work_orders", "b1", None, json!({}))]).await;
        assert_no_leak(&body, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tell_each_user_only_about_changes_they_may_read() {
    for s in common::servers("").await {
        let resp = s.http.get(format!("{}/v1/events", s.url)).bearer_auth("alice-token").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        let mut buffer = String::new();
        // The handler subscribed before it answered 200, so every later write is seen.
        s.push("bob-token", vec![upsert("work_orders", "b1", None, json!({}))]).await;
        s.push("root-token", vec![upsert("products", "p1", None, json!({}))]).await;
        // Bob's write came first; had it leaked, the first event would name it (alone,
        // or folded in with the products change when both were pending).
        assert_eq!(next_change(&mut stream, &mut buffer).await, json!({"collections": ["products"]}));
        s.push("alice-token", vec![upsert("work_orders", "a1", None, json!({}))]).await;
        assert_eq!(next_change(&mut stream, &mut buffer).await, json!({"collections": ["work_orders"]}));
        // Root's write to Alice's record reaches Alice too.
        s.push("root-token", vec![upsert("work_orders", "a1", Some(1), json!({"by": "root"}))]).await;
        assert_eq!(next_change(&mut stream, &mut buffer).await, json!({"collections": ["work_orders"]}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_beyond_the_configured_cap_get_503_with_retry_after() {
    for s in common::servers("max_event_streams = 2").await {
        let open = |token: &'static str| s.http.get(format!("{}/v1/events", s.url)).bearer_auth(token).send();
        let first = open("alice-token").await.unwrap();
        let second = open("bob-token").await.unwrap();
        assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
        let third = open("root-token").await.unwrap();
        assert_eq!(third.status(), 503);
        assert_eq!(third.headers()["retry-after"], "30");
        let body: Value = third.json().await.unwrap();
        assert_eq!(body["error"]["code"], "overloaded");
        // A stream that closes frees its place.
        drop(first);
        let again = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let resp = open("root-token").await.unwrap();
                if resp.status() == 200 {
                    return resp;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the closed stream's place was not freed");
        assert_eq!(again.status(), 200);
        drop(second);
    }
}
