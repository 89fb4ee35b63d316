//! Compressed bodies both ways: answers in zstd or gzip as the client accepts (over
//! 1 KiB), requests decoded per their Content-Encoding within the size limit, and
//! `HttpTransport` compressing its pushes once the server has said it decodes them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use serde_json::{Value, json};
use sync_core::protocol::{PushRequest, WireMutation};
use sync_core::{AccountId, ClientId, CollectionName, Credentials, MutationId, RecordId, Transport};
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start};

async fn server(dir: &std::path::Path) -> RunningServer {
    let text = format!(
        "database = \"sqlite://{}\"\nmax_body_bytes = 1000000\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\
         [collections.notes]\naccess = \"owner\"\n",
        dir.join("server.db").display(),
        token_sha256("alice-token")
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap()
}

/// A client that sees the bytes as they come (no automatic decompression).
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder().no_gzip().no_zstd().build().unwrap()
}

fn push_body(from: usize, n: usize) -> Vec<u8> {
    let mutations: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({"mutation_id": uuid::Uuid::now_v7().to_string(), "collection": "notes", "record_id": format!("n{i:04}"),
                   "op": "upsert", "base_version": null, "data": {"text": format!("note number {i} about the pump")}})
        })
        .collect();
    json!({"client_id": "d", "mutations": mutations}).to_string().into_bytes()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn post(
    server: &RunningServer,
    path: &str,
    body: Vec<u8>,
    encoding: Option<&str>,
    accept: Option<&str>,
) -> reqwest::Response {
    let mut request = raw_client()
        .post(format!("{}{path}", server.url()))
        .header("authorization", "Bearer alice-token")
        .header("content-type", "application/json")
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    request.send().await.unwrap()
}

async fn code_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or("ok").to_owned())
}

#[tokio::test]
async fn requests_and_answers_are_compressed_as_negotiated() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    // Pushes in gzip and zstd.
    let gz = post(&server, "/v1/push", gzip(&push_body(0, 100)), Some("gzip"), None).await;
    assert_eq!(gz.headers()["accept-encoding"], "zstd, gzip");
    assert_eq!(code_of(gz).await, (200, "ok".into()));
    let zs =
        post(&server, "/v1/push", zstd::encode_all(&push_body(100, 100)[..], 3).unwrap(), Some("zstd"), None).await;
    assert_eq!(code_of(zs).await, (200, "ok".into()));
    // A pull page, in each coding the client accepts, and plain when it accepts none.
    let pull = json!({"client_id": "d", "collections": {"notes": null}}).to_string().into_bytes();
    let mut plain_len = 0;
    for accept in [None, Some("gzip"), Some("zstd"), Some("zstd, gzip")] {
        let response = post(&server, "/v1/pull", pull.clone(), None, accept).await;
        let coding = response.headers().get("content-encoding").map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.bytes().await.unwrap();
        let json = match coding.as_deref() {
            None => bytes.to_vec(),
            Some("gzip") => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out).unwrap();
                out
            }
            Some("zstd") => zstd::decode_all(&bytes[..]).unwrap(),
            Some(other) => panic!("unexpected coding {other}"),
        };
        let page: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(page["changes"].as_array().unwrap().len(), 200, "{accept:?}");
        match accept {
            None => {
                assert_eq!(coding, None);
                plain_len = bytes.len();
            }
            Some(a) => {
                assert_eq!(coding.as_deref(), Some(a.split(',').next().unwrap()), "{a}");
                assert!(bytes.len() * 4 < plain_len, "{a}: {} bytes against {plain_len}", bytes.len());
            }
        }
    }
    // Small answers go as they are.
    let health =
        raw_client().get(format!("{}/v1/health", server.url())).header("accept-encoding", "zstd").send().await.unwrap();
    assert!(health.headers().get("content-encoding").is_none());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn compressed_bodies_that_are_bombs_broken_or_unknown_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    // 50 MB of spaces inside a JSON string, a few KB compressed: past max_body_bytes once decoded.
    let mut bomb = b"{\"client_id\": \"".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 50_000_000));
    bomb.extend(b"\", \"mutations\": []}");
    let bomb = zstd::encode_all(&bomb[..], 19).unwrap();
    assert!(bomb.len() < 100_000);
    assert_eq!(
        code_of(post(&server, "/v1/push", bomb, Some("zstd"), None).await).await,
        (413, "body_too_large".into())
    );
    assert_eq!(
        code_of(post(&server, "/v1/push", b"not gzip at all".to_vec(), Some("gzip"), None).await).await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        code_of(post(&server, "/v1/push", push_body(0, 1), Some("br"), None).await).await,
        (415, "unsupported_encoding".into())
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn http_transport_compresses_its_pushes_once_the_server_said_it_decodes_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let transport = sync_http::HttpTransport::new(&server.url()).unwrap();
    transport.set_credentials(Some(Credentials::new(AccountId::new("alice").unwrap(), "alice-token").unwrap()));
    transport.probe().await.unwrap();
    let push = PushRequest {
        client_id: ClientId("phone".into()),
        mutations: (0..200)
            .map(|i| WireMutation {
                mutation_id: MutationId::generate(),
                collection: CollectionName::new("notes").unwrap(),
                record_id: Some(RecordId::new(format!("n{i}")).unwrap()),
                body: sync_core::protocol::MutationBody::Upsert {
                    data: json!({"text": format!("note number {i} about the pump")}).as_object().cloned().unwrap(),
                },
                base_version: None,
                owner: None,
            })
            .collect(),
    };
    let json_len = serde_json::to_vec(&push).unwrap().len() as u64;
    let answer = transport.push(&push).await.unwrap();
    assert_eq!(answer.results.len(), 200);
    assert!(transport.sent_bytes() * 3 < json_len, "sent {} bytes of a {json_len}-byte push", transport.sent_bytes());
    server.stop().await.unwrap();
}
