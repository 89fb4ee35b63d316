//! JWT identity tokens, end to end over HTTP: HS256 with a shared secret, RS256 and
//! ES256 with keys from a JWKS file; expiry with its own code; and the forgeries that
//! must fail with nothing revealed (alg none, key confusion, another audience or issuer,
//! a tampered payload, a huge token). The ES256 key is made in the test; the RS256 test
//! key is below (ring cannot generate RSA keys).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start};

const SECRET: &str = "a shared secret of at least thirty-two bytes";

/// A 2048-bit RSA key made for this test only (openssl genpkey).
const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCmbu+IQBaxJYY+\nkZyeVyVjG7EBiKUNGnDgV8TSprKkyntYo44mKfRkfMl25ye0yt4D4B2fT/aVLwCE\naKEL7bq1TPDQA+eVFMImpptt/YPkXNjM0qK5pWfxtIXNYaUNQpnYZpjtRRfM3wZs\nnES2v3d+oRD0jztbEHRxnKheut/ujMshI0hSbyShJKT0ZWaasN9WaS+7BhXCuwW5\ndWwb48eSWjp7i+S8vkrHG96A0vS3bLMB83rGKXgUKAP95aEMU2omzT+ZkjlltBeL\nI/JX+6SsCWz06OYuXWgleDhDF1raeU6dexE6zNdbkyPjN34Rsspqk85Q2Yv46iKl\nvOITTxEVAgMBAAECggEAEf9nGbXMfmWPac63QAwud9QzxPWw24Tjde8n0pvCL73R\nrtko8wmQaxlvc9M1YQCbF5IxwduUz7cgeDEUUUTo7tgeJnB1p5JyGFnl7vP+QkCk\nFSol/KtdXS7nVTlc7t0n49XcbbQOCdKIUFBpwdVcp63lNn0SrxtNbEfDkVLmCla0\nYLf9lUN9xS+AOabkO55rUqduigALJ/7kJu6zSR2JsfHmqJJ7UtVCOo7x0qkMDvU2\nxG9IMa2jmvUOHvxy8e0ZTbcHVf1PAoFVkUpN9dEGbiNP3oF8IJCx9Y4UVHLlSLdh\nFEnq8LzRAiNUhGTAkZQKc6twLUuX42n6oqAB3eRs4QKBgQDoNkqSDKr2k7hGywJl\nS5jykPjgeWDq7MfEx7CrdxaKNDkmIAPA/Df5Uhhma5w45mRA480lIzJChFSgNeKo\nvYi8FEtlQ6yuPrUxmF2Tp7DxX+1m7ltT2UxL2xP34JvUGRjxHrDDt/3lHoGdHOEQ\nl/KGlaFY7V90N3i3qzb64h+COQKBgQC3e5yzoFvbYTe499KONE2a4QJPRuXkpfpU\nDz/1WmVSe13skdGd1aviIlvrU+1XyxAdGSB+/424qjUZJpiE/cR1ZyFU7z/Zi3nb\nRQfHVMIKRjsWr0SwkKOj9SQjZTg9Z5aOasdL3J4eKkXFo0oAvCiDave867P9kQsw\ngre7/kdVvQKBgB2BIHJ0J5jS5hwgmTpTo6hWYTjsUzMmSK+pC7qNlBCVWBmPAcsY\ngOgt1SnWTHAyXdSc3Sj10uH+vF3q2tTD2EbFcVr5gUxWbWFS0bj8GpBgtuJYMMRz\nnK0atevN3x7Q3Yltc9o6W4ksGh3jWHlqRQdypaCN8I3sqmrz1zWDW6uJAoGBAK8s\nY+IWojwjZ9i/OZWsl77bPaJEdO3EDOe+G3j6UavavkRCv1aqDcz6srlMylc8Nmkh\neSXmg/6e+czGTW0C/lJ8IJV/SX0/rRpLoG6NHChE/trcgH71yFWbkGH+nB/7ywCz\nLwzdV1RDVZOoHtnuydsV/+mtOo1GseEhm5ru3FodAoGBAMBAXpKzcyQSD9ATPprH\nZftOnxfYnIxpLKsP0q6sREom9dy8N4GjOik0zNIlGYDsDxTBiIvOIScM/yRI7QIW\nRA9GbMMlJmRlOO9JnQVk3Ij/X4j3Ak54b/htXvUWqmaxxUHgKBdbkibq5u88nAHb\nDC4A58EwkaF1T18X0T51XATj\n-----END PRIVATE KEY-----";
const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApm7viEAWsSWGPpGcnlcl\nYxuxAYilDRpw4FfE0qaypMp7WKOOJin0ZHzJducntMreA+Adn0/2lS8AhGihC+26\ntUzw0APnlRTCJqabbf2D5FzYzNKiuaVn8bSFzWGlDUKZ2GaY7UUXzN8GbJxEtr93\nfqEQ9I87WxB0cZyoXrrf7ozLISNIUm8koSSk9GVmmrDfVmkvuwYVwrsFuXVsG+PH\nklo6e4vkvL5KxxvegNL0t2yzAfN6xil4FCgD/eWhDFNqJs0/mZI5ZbQXiyPyV/uk\nrAls9OjmLl1oJXg4Qxda2nlOnXsROszXW5Mj4zd+EbLKapPOUNmL+OoipbziE08R\nFQIDAQAB\n-----END PUBLIC KEY-----";
const RSA_N: &str = "pm7viEAWsSWGPpGcnlclYxuxAYilDRpw4FfE0qaypMp7WKOOJin0ZHzJducntMreA-Adn0_2lS8AhGihC-26tUzw0APnlRTCJqabbf2D5FzYzNKiuaVn8bSFzWGlDUKZ2GaY7UUXzN8GbJxEtr93fqEQ9I87WxB0cZyoXrrf7ozLISNIUm8koSSk9GVmmrDfVmkvuwYVwrsFuXVsG-PHklo6e4vkvL5KxxvegNL0t2yzAfN6xil4FCgD_eWhDFNqJs0_mZI5ZbQXiyPyV_ukrAls9OjmLl1oJXg4Qxda2nlOnXsROszXW5Mj4zd-EbLKapPOUNmL-OoipbziE08RFQ";

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

struct Keys {
    es_private_pem: String,
}

/// Writes the JWKS (RSA "rsa-1" and a fresh P-256 "ec-1") and returns the EC key.
fn write_jwks(path: &Path) -> Keys {
    let ec = rcgen::KeyPair::generate().unwrap();
    let raw = ec.public_key_raw();
    assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB"},
        {"kty": "EC", "kid": "ec-1", "alg": "ES256", "use": "sig", "crv": "P-256",
         "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65])}
    ]});
    std::fs::write(path, jwks.to_string()).unwrap();
    Keys { es_private_pem: ec.serialize_pem() }
}

async fn server(dir: &Path) -> (RunningServer, Keys) {
    let keys = write_jwks(&dir.join("jwks.json"));
    let text = format!(
        "database = \"sqlite://{}\"\nuser_attributes = [\"region\"]\n\
         [collections.boards]\nread = [\"team in user.groups\", \"region = user.region\"]\nwrite = []\n\
         [jwt]\nhs256_secret = \"{SECRET}\"\njwks_file = \"{}\"\nissuer = \"https://id.example\"\naudience = \"offsync\"\nleeway = \"5s\"\n\
         [[users]]\nname = \"static\"\ntoken_sha256 = \"{}\"\n[collections.notes]\naccess = \"owner\"\n",
        dir.join("server.db").display(),
        dir.join("jwks.json").display(),
        token_sha256("static-token")
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    (start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap(), keys)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": "https://id.example", "aud": "offsync", "exp": now() + 600, "nbf": now() - 10})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, None, claims, &EncodingKey::from_secret(SECRET.as_bytes()))
}

/// A pull with `token`: (status, error code or "ok").
async fn pull_as(server: &RunningServer, token: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/pull", server.url()))
        .header("authorization", format!("Bearer {token}"))
        .json(&json!({"client_id": "d", "collections": {"notes": null}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("ok").to_owned();
    if status == 401 {
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            ["invalid token", "token expired", "unknown token"].iter().any(|m| message.contains(m)),
            "a refusal revealed more than it should: {message}"
        );
    }
    (status, code)
}

/// The owner of a record `user` pushes: who the server took the token for.
async fn push_as(server: &RunningServer, token: &str, id: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/v1/push", server.url()))
        .header("authorization", format!("Bearer {token}"))
        .json(&json!({"client_id": "d", "mutations": [{"mutation_id": uuid::Uuid::now_v7().to_string(),
            "collection": "notes", "record_id": id, "op": "upsert", "base_version": null, "data": {"t": id}}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn tokens_signed_with_each_configured_key_name_their_user() {
    let dir = tempfile::tempdir().unwrap();
    let (server, keys) = server(dir.path()).await;
    let rs = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("carol"),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    );
    let es = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &claims("dave"),
        &EncodingKey::from_ec_pem(keys.es_private_pem.as_bytes()).unwrap(),
    );
    for (name, token) in
        [("HS256", hs(&claims("bob"))), ("RS256", rs.clone()), ("ES256", es.clone()), ("static", "static-token".into())]
    {
        assert_eq!(pull_as(&server, &token).await, (200, "ok".into()), "{name}");
    }
    // The user is the `sub` claim: carol's record is hers, invisible to dave.
    assert_eq!(push_as(&server, &rs, "c1").await, 200);
    assert!(ids_for(&server, &es, "notes").await.is_empty(), "dave sees carol's record");
    server.stop().await.unwrap();
}

/// The ids of the records of `collection` a full pull with `token` brings.
async fn ids_for(server: &RunningServer, token: &str, collection: &str) -> Vec<String> {
    let body: Value = reqwest::Client::new()
        .post(format!("{}/v1/pull", server.url()))
        .header("authorization", format!("Bearer {token}"))
        .json(&json!({"client_id": "d", "collections": {collection: null}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["changes"].as_array().unwrap().iter().map(|c| c["record_id"].as_str().unwrap().to_owned()).collect()
}

/// Sync rules read a token's `groups` and `attributes` claims; malformed ones grant
/// nothing and refuse nothing else.
#[tokio::test]
async fn a_tokens_groups_and_attributes_claims_feed_the_sync_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server(dir.path()).await;
    let mut admin_claims = claims("root");
    admin_claims["role"] = json!("admin");
    let admin = hs(&admin_claims);
    let body = json!({"client_id": "d", "mutations": [
        {"mutation_id": uuid::Uuid::now_v7().to_string(), "collection": "boards", "record_id": "b-team",
         "op": "upsert", "data": {"team": "pumps", "region": "east"}},
        {"mutation_id": uuid::Uuid::now_v7().to_string(), "collection": "boards", "record_id": "b-north",
         "op": "upsert", "data": {"team": "valves", "region": "north"}}]});
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/v1/push", server.url()))
        .header("authorization", format!("Bearer {admin}"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer["results"].as_array().unwrap().iter().all(|r| r["status"] == "applied"), "{answer}");
    let with = |extra: Value| {
        let mut c = claims("erin");
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        hs(&c)
    };
    assert_eq!(ids_for(&server, &with(json!({"groups": ["pumps"]})), "boards").await, ["b-team"]);
    assert_eq!(ids_for(&server, &with(json!({"attributes": {"region": "north"}})), "boards").await, ["b-north"]);
    assert!(ids_for(&server, &with(json!({})), "boards").await.is_empty());
    // Claims of the wrong shape grant nothing (and the token still names its user).
    let odd = with(json!({"groups": "pumps", "attributes": {"region": ["north"]}}));
    assert!(ids_for(&server, &odd, "boards").await.is_empty());
    assert_eq!(pull_as(&server, &odd).await, (200, "ok".into()));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn expiry_not_before_and_leeway_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server(dir.path()).await;
    let mut expired = claims("bob");
    expired["exp"] = json!(now() - 60);
    assert_eq!(pull_as(&server, &hs(&expired)).await, (401, "token_expired".into()));
    let mut within_leeway = claims("bob");
    within_leeway["exp"] = json!(now() - 2);
    assert_eq!(pull_as(&server, &hs(&within_leeway)).await.0, 200);
    let mut early = claims("bob");
    early["nbf"] = json!(now() + 600);
    assert_eq!(pull_as(&server, &hs(&early)).await, (401, "unauthorized".into()));
    let mut no_exp = claims("bob");
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(pull_as(&server, &hs(&no_exp)).await, (401, "unauthorized".into()));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn forged_tokens_get_401_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server(dir.path()).await;
    let good = hs(&claims("bob"));
    let parts: Vec<&str> = good.split('.').collect();
    let forgeries: Vec<(&str, String)> = vec![
        // alg none, no signature.
        ("alg none", format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), parts[1])),
        // Key confusion: HS256 "signed" with the RSA public key as the secret.
        (
            "key confusion",
            sign(Algorithm::HS256, Some("rsa-1"), &claims("mallory"), &EncodingKey::from_secret(RSA_PUBLIC.as_bytes())),
        ),
        (
            "another audience",
            hs(&{
                let mut c = claims("bob");
                c["aud"] = json!("someone-else");
                c
            }),
        ),
        (
            "another issuer",
            hs(&{
                let mut c = claims("bob");
                c["iss"] = json!("https://evil.example");
                c
            }),
        ),
        ("another secret", sign(Algorithm::HS256, None, &claims("bob"), &EncodingKey::from_secret(&[7u8; 40]))),
        ("tampered payload", format!("{}.{}.{}", parts[0], b64url(claims("admin").to_string().as_bytes()), parts[2])),
        ("malformed", "a.b.c".into()),
        ("huge", format!("{}.{}.{}", parts[0], "A".repeat(20_000), parts[2])),
        (
            "no user claim",
            hs(&{
                let mut c = claims("bob");
                c.as_object_mut().unwrap().remove("sub");
                c
            }),
        ),
    ];
    for (name, token) in forgeries {
        assert_eq!(pull_as(&server, &token).await, (401, "unauthorized".into()), "{name}");
    }
    server.stop().await.unwrap();
}

#[test]
fn a_bad_jwt_configuration_stops_the_server_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.json"), r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
    for (jwt, named) in [
        ("hs256_secret = \"short\"".to_owned(), "hs256_secret"),
        ("issuer = \"x\"".to_owned(), "needs hs256_secret or jwks_file"),
        (format!("jwks_file = \"{}\"", dir.path().join("missing.json").display()), "missing.json"),
        (format!("jwks_file = \"{}\"", dir.path().join("bad.json").display()), "bad.json"),
        (format!("hs256_secret = \"{SECRET}\"\nleeway = \"soon\""), "leeway"),
    ] {
        let text = format!("[jwt]\n{jwt}\n");
        let error = ServerConfig::from_toml(&text).unwrap_err();
        assert!(error.to_string().contains(named), "{jwt}: {error}");
    }
}
