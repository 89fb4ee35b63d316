//! `/metrics`: what the server counts (requests by route and status, latencies,
//! mutations by outcome, records served, open event streams, pool use), and who may read
//! it (a token on the main listener, or a listener of its own). Both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, upsert};
use serde_json::json;
use sync_server::config::{ServerConfig, token_sha256};

async fn scrape(s: &TestServer, url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = s.http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_server_did_and_need_their_token() {
    let extra = format!("[metrics]\ntoken_sha256 = \"{}\"", token_sha256("metrics-token"));
    for s in common::servers(&extra).await {
        let (_, body) = s
            .push(
                "alice-token",
                vec![upsert("work_orders", "a1", None, json!({})), upsert("work_orders", "a2", None, json!({}))],
            )
            .await;
        assert_eq!(body["results"][1]["status"], "applied");
        // A conflict (stale base) and a rejection (alice may not write products).
        s.push("alice-token", vec![upsert("work_orders", "a1", Some(99), json!({}))]).await;
        s.push("alice-token", vec![upsert("products", "p1", None, json!({}))]).await;
        let (status, _) = s.pull("alice-token", json!({"work_orders": null}), None).await;
        assert_eq!(status, 200);
        let (status, _) = s.post("/wp-admin/setup.php", None, json!({})).await;
        assert_eq!(status, 404);
        let stream = s.http.get(format!("{}/v1/events", s.url)).bearer_auth("bob-token").send().await.unwrap();
        assert_eq!(stream.status(), 200);

        let url = format!("{}/metrics", s.url);
        assert_eq!(scrape(&s, &url, None).await.0, 401, "metrics without a token");
        assert_eq!(scrape(&s, &url, Some("alice-token")).await.0, 401, "a user's token is not the metrics token");
        let (status, text) = scrape(&s, &url, Some("metrics-token")).await;
        assert_eq!(status, 200, "{text}");
        let writer_pool = if s.backend == "sqlite" { "writer" } else { "main" };
        for line in [
            "offsync_http_requests_total{route=\"/v1/push\",status=\"200\"} 3",
            "offsync_http_requests_total{route=\"/v1/pull\",status=\"200\"} 1",
            "offsync_http_requests_total{route=\"other\",status=\"404\"} 1",
            "offsync_http_request_duration_seconds_count{route=\"/v1/push\"} 3",
            "offsync_mutations_total{outcome=\"applied\"} 2",
            "offsync_mutations_total{outcome=\"conflict\"} 1",
            "offsync_mutations_total{outcome=\"rejected\"} 1",
            "offsync_pull_records_total 2",
            "offsync_event_streams_open 1",
            &format!(
                "offsync_db_pool_connections{{pool=\"{writer_pool}\",state=\"max\"}} {}",
                if s.backend == "sqlite" { 1 } else { 16 }
            ),
        ] {
            assert!(has_line(&text, line), "{}: {line} missing from\n{text}", s.backend);
        }
        // Nothing of a user or a record is in the metrics.
        assert!(!text.contains("alice") && !text.contains("a1"), "{text}");
        drop(stream);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_a_listener_of_their_own_need_no_token_and_leave_the_main_one() {
    // A free port for the metrics listener (the test binds it, lets go, and names it).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"");
    let s = common::servers(&extra).await.into_iter().next().unwrap();
    s.push("alice-token", vec![upsert("work_orders", "a1", None, json!({}))]).await;
    let (status, text) = scrape(&s, &format!("http://127.0.0.1:{port}/metrics"), None).await;
    assert_eq!(status, 200, "{text}");
    assert!(has_line(&text, "offsync_mutations_total{outcome=\"applied\"} 1"), "{text}");
    assert!(text.starts_with("# HELP") && text.trim_end().ends_with("# EOF"), "{text}");
    assert_eq!(scrape(&s, &format!("{}/metrics", s.url), None).await.0, 404, "metrics on the public listener");
    assert_eq!(scrape(&s, &format!("{}/metrics", s.url), Some("root-token")).await.0, 404);
}

#[test]
fn a_metrics_table_must_say_where_metrics_go() {
    for (extra, complaint) in [
        ("[metrics]\n", "needs `listen`"),
        ("[metrics]\ntoken_sha256 = \"abc\"\n", "64 hex digits"),
        ("[metrics]\npath = \"/m\"\n", "unknown field"),
    ] {
        let text = common::config_text("sqlite::memory:", extra);
        let error = ServerConfig::from_toml(&text).unwrap_err().to_string();
        assert!(error.contains(complaint), "{extra:?}: {error}");
    }
}
