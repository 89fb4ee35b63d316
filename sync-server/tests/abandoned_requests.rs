//! Devices that vanish in the middle of a request: a push whose client resets its TCP
//! connection while the server is applying it must not leave the server's database in a
//! transaction (which, on SQLite, held the write lock until the pooled connection was
//! recycled, 30 minutes later, and every other push failed with 'database is locked').
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestServer, status_of, upsert};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Pushes abandoned per backend; `ABANDONED_PUSHES` overrides it.
fn abandoned_target() -> usize {
    std::env::var("ABANDONED_PUSHES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

/// How long a push may take once nobody abandons anything any more. The old jam showed
/// as the busy timeout (10 s) per push, or an error at once.
const PROMPT: Duration = Duration::from_secs(3);

/// A push of `n` records for alice, each with a unique payload, written as a raw
/// HTTP/1.1 request; returns the request bytes and the mutations.
fn raw_push(tag: &str, n: usize) -> (Vec<u8>, Vec<Value>) {
    let mutations: Vec<Value> =
        (0..n).map(|i| upsert("work_orders", &format!("{tag}-{i}"), None, json!({"tag": tag, "i": i}))).collect();
    let body = json!({"client_id": tag, "mutations": mutations}).to_string();
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer alice-token\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    (bytes, mutations)
}

/// Sends a push and resets the connection (RST, not FIN) after a random delay, at a
/// random point of the server's handling. Returns the mutations sent.
async fn abandon_one(addr: std::net::SocketAddr, tag: String, delay: Duration) -> Vec<Value> {
    let (bytes, mutations) = raw_push(&tag, 20);
    let Ok(mut stream) = TcpStream::connect(addr).await else { return Vec::new() };
    if stream.write_all(&bytes).await.is_err() {
        return mutations;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    // SO_LINGER 0: closing sends a reset, as a killed process or a lost radio does.
    // (Deprecated because a non-zero linger blocks the thread on close; zero never does.)
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
    mutations
}

async fn timed_push(s: &TestServer, token: &str, mutations: Vec<Value>) -> Result<(u16, Value), String> {
    match tokio::time::timeout(PROMPT, s.push(token, mutations)).await {
        Ok(answer) => Ok(answer),
        Err(_) => Err(format!("no answer within {PROMPT:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_abandoned_mid_request_never_jam_the_server() {
    let target = abandoned_target();
    for s in common::servers("").await {
        let s = Arc::new(s);
        let addr = s.server.addr;
        let started = Instant::now();
        let done = Arc::new(AtomicBool::new(false));
        let abandoned = Arc::new(AtomicUsize::new(0));

        // Six devices that keep vanishing mid-push.
        let vanishing: Vec<_> = (0..6u64)
            .map(|d| {
                let abandoned = abandoned.clone();
                tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(d);
                    let mut sent = Vec::new();
                    let mut n = 0;
                    while abandoned.fetch_add(1, Ordering::SeqCst) < target {
                        // Anywhere from before the body is read to well into the transaction.
                        let delay = Duration::from_micros(rng.random_range(0..3_000));
                        sent.extend(abandon_one(addr, format!("gone{d}-{n}"), delay).await);
                        n += 1;
                    }
                    sent
                })
            })
            .collect();

        // Two devices that behave, writing all the while; every push of theirs must be
        // answered, and every answer must be 200.
        let steady: Vec<_> = (0..2)
            .map(|w| {
                let (s, done) = (s.clone(), done.clone());
                tokio::spawn(async move {
                    let mut acknowledged = BTreeMap::new();
                    let mut failures = Vec::new();
                    let mut batch = 0;
                    while !done.load(Ordering::SeqCst) {
                        let id = format!("steady{w}-{batch}");
                        let m = upsert("work_orders", &id, None, json!({"w": w, "b": batch}));
                        match timed_push(&s, "bob-token", vec![m.clone()]).await {
                            Ok((200, body)) if status_of(&body, 0) == "applied" => {
                                acknowledged.insert(id, m["data"].clone());
                            }
                            Ok((status, body)) => failures.push(format!("{status} {body}")),
                            Err(e) => failures.push(e),
                        }
                        batch += 1;
                    }
                    (acknowledged, failures)
                })
            })
            .collect();

        let mut sent_by_vanishing = Vec::new();
        for v in vanishing {
            sent_by_vanishing.extend(v.await.unwrap());
        }
        done.store(true, Ordering::SeqCst);
        let mut acknowledged = BTreeMap::new();
        let mut failures = Vec::new();
        for t in steady {
            let (a, f) = t.await.unwrap();
            acknowledged.extend(a);
            failures.extend(f);
        }
        eprintln!(
            "{}: {} pushes abandoned in {:?}; the steady devices had {} pushes acknowledged, {} failed",
            s.backend,
            abandoned.load(Ordering::SeqCst).min(target),
            started.elapsed(),
            acknowledged.len(),
            failures.len()
        );
        assert!(
            failures.is_empty(),
            "{}: pushes failed during the storm: {:?}",
            s.backend,
            &failures[..3.min(failures.len())]
        );

        // Nobody abandons anything now: every push is answered promptly, and applied.
        for i in 0..30 {
            let id = format!("after-{i}");
            let m = upsert("work_orders", &id, None, json!({"after": i}));
            let (status, body) = timed_push(&s, "bob-token", vec![m.clone()])
                .await
                .unwrap_or_else(|e| panic!("{}: push {i} after the storm: {e}", s.backend));
            assert_eq!((status, status_of(&body, 0)), (200, "applied".to_owned()), "{}: {body}", s.backend);
            acknowledged.insert(id, m["data"].clone());
        }

        // Bob's acknowledged writes are all there, as written.
        let (changes, _) = s.pull_all("bob-token", "work_orders", Value::Null).await;
        let bob: BTreeMap<String, Value> =
            changes.iter().map(|c| (c["record_id"].as_str().unwrap().to_owned(), c["data"].clone())).collect();
        assert_eq!(bob, acknowledged, "{}: bob's data differs from what was acknowledged", s.backend);

        // Alice's abandoned pushes were applied whole or not at all, once: a record is
        // there with exactly its payload at version 1, and its push's other records are
        // all there too. Re-sending a push with the same mutation ids applies the rest and
        // answers the applied ones from the ledger with the same version.
        let (changes, _) = s.pull_all("alice-token", "work_orders", Value::Null).await;
        let alice: BTreeMap<String, (u64, Value)> = changes
            .iter()
            .map(|c| (c["record_id"].as_str().unwrap().to_owned(), (c["version"].as_u64().unwrap(), c["data"].clone())))
            .collect();
        let mut applied_pushes = 0;
        for push in sent_by_vanishing.chunks(20) {
            let present = push.iter().filter(|m| alice.contains_key(m["record_id"].as_str().unwrap())).count();
            assert!(
                present == 0 || present == push.len(),
                "{}: a push was applied in part ({present} of 20)",
                s.backend
            );
            if present > 0 {
                applied_pushes += 1;
                for m in push {
                    assert_eq!(alice[m["record_id"].as_str().unwrap()], (1, m["data"].clone()), "{}", s.backend);
                }
            }
        }
        eprintln!("{}: {applied_pushes} of the abandoned pushes had been applied", s.backend);
        for push in sent_by_vanishing.chunks(20).step_by(97) {
            let (status, body) = timed_push(&s, "alice-token", push.to_vec()).await.unwrap();
            assert_eq!(status, 200, "{body}");
            for (i, m) in push.iter().enumerate() {
                assert_eq!(status_of(&body, i), "applied", "{}: {body}", s.backend);
                assert_eq!(body["results"][i]["version"], json!(1), "{}: {} applied twice", s.backend, m["record_id"]);
            }
        }
    }
}
