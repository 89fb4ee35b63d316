//! HTTPS end to end: the server serves TLS from the configuration's files, and
//! `HttpTransport` trusts a private CA the app passes in. Certificates are made inside
//! the test (rcgen): no files from outside.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::json;
use sync_core::protocol::{PullRequest, PushRequest, WireMutation};
use sync_core::{AccountId, ClientId, CollectionName, Credentials, Error, MutationId, RecordId, Transport};
use sync_http::{HttpOptions, HttpTransport};
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start_tls};

/// A CA, and a server certificate it signed for `hosts`: (CA PEM, cert PEM, key PEM).
fn certificates(hosts: &[&str]) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "offsync test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()).unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

async fn tls_server(dir: &Path, cert: &str, key: &str) -> RunningServer {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let text = format!(
        "database = \"sqlite://{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n[collections.notes]\naccess = \"owner\"\n",
        dir.join("server.db").display(),
        dir.join("cert.pem").display(),
        dir.join("key.pem").display(),
        token_sha256("alice-token")
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let tls = config.tls.as_ref().expect("the [tls] table").server_config().unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    start_tls("127.0.0.1:0", state, store, config.tombstone_retention, tls).await.unwrap()
}

fn client(url: &str, roots: Vec<Vec<u8>>) -> HttpTransport {
    let transport =
        HttpTransport::with_options(url, HttpOptions { root_certificates_pem: roots, ..Default::default() }).unwrap();
    let alice = Credentials::new(AccountId::new("alice").unwrap(), "alice-token").unwrap();
    transport.set_credentials(Some(alice));
    transport
}

#[tokio::test]
async fn a_device_syncs_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(&["localhost"]);
    let server = tls_server(dir.path(), &cert, &key).await;
    assert!(server.url().starts_with("https://"));
    let url = format!("https://localhost:{}", server.addr.port());
    let transport = client(&url, vec![ca.into_bytes()]);
    transport.probe().await.unwrap();
    let push = PushRequest {
        client_id: ClientId("phone".into()),
        mutations: vec![WireMutation {
            mutation_id: MutationId::generate(),
            collection: CollectionName::new("notes").unwrap(),
            record_id: Some(RecordId::new("n1").unwrap()),
            body: sync_core::protocol::MutationBody::Upsert {
                data: json!({"text": "over TLS"}).as_object().cloned().unwrap(),
            },
            base_version: None,
            owner: None,
        }],
    };
    let answer = transport.push(&push).await.unwrap();
    assert!(matches!(answer.results[0].outcome, sync_core::protocol::MutationOutcome::Applied { .. }));
    let page = transport
        .pull(&PullRequest {
            client_id: ClientId("phone".into()),
            collections: [(CollectionName::new("notes").unwrap(), None)].into(),
            limit: None,
            subscriptions: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 1);
    // Plain HTTP to the TLS port gets nowhere.
    let plain = client(&format!("http://localhost:{}", server.addr.port()), vec![]);
    assert!(plain.probe().await.is_err());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_certificate_for_another_host_or_from_an_unknown_ca_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(&["sync.other.example"]);
    let server = tls_server(dir.path(), &cert, &key).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let wrong_host = client(&url, vec![ca.into_bytes()]).probe().await;
    match wrong_host {
        Err(Error::Unreachable { message }) => {
            assert!(message.contains("certificate"), "the error does not say why: {message}");
            assert!(message.to_lowercase().contains("name"), "{message}");
        }
        other => panic!("expected a refused certificate, got {other:?}"),
    }
    // The right host name, but a CA the device does not know.
    let (_, cert, key) = certificates(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let other = tls_server(dir.path(), &cert, &key).await;
    let unknown = client(&format!("https://localhost:{}", other.addr.port()), vec![]).probe().await;
    match unknown {
        Err(Error::Unreachable { message }) => assert!(message.contains("certificate"), "{message}"),
        other => panic!("expected a refused certificate, got {other:?}"),
    }
    server.stop().await.unwrap();
    other.stop().await.unwrap();
}

#[test]
fn bad_tls_files_are_configuration_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = certificates(&["localhost"]);
    let (_, _, other_key) = certificates(&["localhost"]);
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    std::fs::write(dir.path().join("other-key.pem"), &other_key).unwrap();
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate").unwrap();
    let files = |c: &str, k: &str| sync_server::tls::TlsFiles { cert: dir.path().join(c), key: dir.path().join(k) };
    assert!(files("cert.pem", "key.pem").server_config().is_ok());
    for (cert, key, named) in [
        ("missing.pem", "key.pem", "missing.pem"),
        ("garbage.pem", "key.pem", "garbage.pem"),
        ("cert.pem", "garbage.pem", "garbage.pem"),
        ("cert.pem", "other-key.pem", "other-key.pem"),
    ] {
        let error = files(cert, key).server_config().unwrap_err();
        assert!(matches!(error, sync_server::ServerError::Config { .. }), "{error:?}");
        assert!(error.to_string().contains(named), "{cert}/{key}: {error}");
    }
    // A private CA that is not PEM is refused by the client too.
    let bad = HttpTransport::with_options(
        "https://localhost:1",
        HttpOptions { root_certificates_pem: vec![b"nope".to_vec()], ..Default::default() },
    );
    assert!(matches!(bad, Err(Error::Config { .. })));
}
