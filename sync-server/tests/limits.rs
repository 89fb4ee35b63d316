//! A node at its connection cap refuses newcomers with a complete 503 and `Retry-After`,
//! keeps serving the connections it holds, and takes new ones once some close.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    // A refused connection may be closed before the request is written; what it was
    // told is still there to read.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_with_retry_after() {
    let s = common::servers("max_connections = 3").await.into_iter().next().unwrap();
    let addr = s.server.addr.to_string();
    // Three idle connections fill the cap.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Accepting is asynchronous: wait until the server counts them.
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let answer = get(&addr, "/v1/health").await;
            if answer.starts_with("HTTP/1.1 503") {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a fourth connection was never refused");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 5"), "{refused}");
    assert!(refused.contains("\"overloaded\""), "{refused}");

    // A held connection is still served.
    let mut first = held.remove(0);
    first.write_all(format!("GET /v1/health HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buffer = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), first.read(&mut buffer)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));

    // Once connections close, newcomers are served again.
    drop(first);
    drop(held);
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let answer = get(&addr, "/v1/health").await;
            if answer.starts_with("HTTP/1.1 200") {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the closed connections' places were not freed");
}
