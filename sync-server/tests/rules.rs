//! Sync rules end to end, on every backend: who reads and writes which record under
//! field, attribute, group and list rules; reassignments that move records out of one
//! user's pulls (as removals) and into another's; a user whose groups change starting
//! over; and forged or mistyped writes that change nothing and reveal nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, delete, next_change, status_of, upsert};
use serde_json::{Value, json};
use sync_server::config::token_sha256;

const JOBS: &str = "read = [\"assigned_to = user\", \"user in dispatchers\"]
write = [\"user in dispatchers\", \"assigned_to = user\"]";

/// disp dispatches; tom (north) and ann (south) are technicians; root is an admin.
fn config(database: &str, tom_groups: &str) -> String {
    config_with(database, tom_groups, JOBS)
}

/// As [`config`], with `jobs` as the jobs collection's rules.
fn config_with(database: &str, tom_groups: &str, jobs: &str) -> String {
    let mut text = format!("database = \"{database}\"\nmax_batch = 50\n");
    for (name, role, groups, region) in [
        ("disp", "user", "[\"dispatchers\"]", None),
        ("tom", "user", tom_groups, Some("north")),
        ("ann", "user", "[]", Some("south")),
        ("root", "admin", "[]", None),
    ] {
        text.push_str(&format!(
            "[[users]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nrole = \"{role}\"\ngroups = {groups}\n",
            token_sha256(&format!("{name}-token"))
        ));
        if let Some(region) = region {
            text.push_str(&format!("attributes = {{ region = \"{region}\" }}\n"));
        }
    }
    text.push_str(&format!("[collections.jobs]\n{jobs}\n"));
    text.push_str(
        r#"
[collections.sites]
read = ["region = user.region"]
write = []

[collections.notes]
read = ["members contains user", "team in user.groups"]
write = ["members contains user"]
"#,
    );
    text
}

async fn servers(tom_groups: &str) -> Vec<(TestServer, String)> {
    let mut out = Vec::new();
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let url = common::database_url(backend, &dir).await;
        let server = common::start_config(backend, &config(&url, tom_groups), dir).await;
        out.push((server, url));
    }
    out
}

fn token(user: &str) -> String {
    format!("{user}-token")
}

/// The live records a full pull gives `user`, by id.
async fn visible(s: &TestServer, user: &str, collection: &str) -> Vec<String> {
    let (changes, _) = s.pull_all(&token(user), collection, Value::Null).await;
    let mut ids: Vec<String> =
        changes.iter().filter(|c| c["deleted"] == false).map(|c| c["record_id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids.dedup();
    ids
}

fn assert_forbidden(body: &Value, i: usize) {
    let r = &body["results"][i];
    assert_eq!(status_of(body, i), "rejected:forbidden", "{r}");
    assert!(r.get("version").is_none() && r.get("server").is_none(), "a refusal carries nothing: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_reads_and_writes_what_the_rules_grant() {
    for (s, _) in servers("[\"north-team\"]").await {
        let (_, b) = s
            .push(
                &token("disp"),
                vec![
                    upsert("jobs", "j1", None, json!({"assigned_to": "tom", "title": "pump"})),
                    upsert("jobs", "j2", None, json!({"assigned_to": "ann", "title": "valve"})),
                    upsert("jobs", "j3", None, json!({"title": "unassigned"})),
                ],
            )
            .await;
        assert_eq!((0..3).map(|i| status_of(&b, i)).collect::<Vec<_>>(), ["applied"; 3], "{b}");
        assert_eq!(visible(&s, "tom", "jobs").await, ["j1"]);
        assert_eq!(visible(&s, "ann", "jobs").await, ["j2"]);
        assert_eq!(visible(&s, "disp", "jobs").await, ["j1", "j2", "j3"]);
        assert_eq!(visible(&s, "root", "jobs").await, ["j1", "j2", "j3"]);

        // Tom updates his job; he may not touch Ann's, reassign his, or forge his way in.
        let (_, b) = s
            .push(
                &token("tom"),
                vec![
                    upsert("jobs", "j1", Some(1), json!({"assigned_to": "tom", "title": "pump fixed"})),
                    upsert("jobs", "j2", None, json!({"assigned_to": "tom", "title": "mine now"})),
                    upsert("jobs", "j1", None, json!({"assigned_to": "ann", "title": "yours"})),
                    delete("jobs", "j2", None),
                    upsert("jobs", "j3", None, json!({"assigned_to": "tom"})),
                    upsert("jobs", "j4", None, json!({"assigned_to": "ann"})),
                    // Forged versions, ids and owners reveal and change nothing either.
                    upsert("jobs", "j2", Some(1), json!({"assigned_to": "tom"})),
                    upsert("jobs", "j2", Some(99), json!({"assigned_to": "ann"})),
                    delete("jobs", "j2", Some(1)),
                    json!({"mutation_id": common::mid(), "collection": "jobs", "record_id": "j2", "op": "action", "action": "x"}),
                    json!({"mutation_id": common::mid(), "collection": "jobs", "record_id": "j9", "op": "upsert",
                        "data": {"assigned_to": "tom"}, "owner": "disp"}),
                    upsert("jobs", "j3", Some(0), json!({"assigned_to": "tom"})),
                ],
            )
            .await;
        assert_eq!(status_of(&b, 0), "applied", "{b}");
        for i in 1..12 {
            assert_forbidden(&b, i);
        }
        assert_eq!(visible(&s, "ann", "jobs").await, ["j2"], "Ann's job is untouched");
        assert_eq!(visible(&s, "disp", "jobs").await, ["j1", "j2", "j3"], "nothing was created");
        assert_eq!(visible(&s, "ann", "jobs").await, ["j2"]);

        // A rule field of the wrong type is refused, whoever writes it.
        let (_, b) = s.push(&token("disp"), vec![upsert("jobs", "j5", None, json!({"assigned_to": 7}))]).await;
        assert_eq!(status_of(&b, 0), "rejected:invalid_mutation", "{b}");
        assert!(b["results"][0]["error"]["message"].as_str().unwrap().contains("assigned_to"), "{b}");

        // An attribute rule: each region reads its sites; only admins write them.
        let (_, b) = s
            .push(
                &token("root"),
                vec![
                    upsert("sites", "s1", None, json!({"region": "north"})),
                    upsert("sites", "s2", None, json!({"region": "south"})),
                    upsert("sites", "s3", None, json!({"region": ["north"]})),
                ],
            )
            .await;
        assert_eq!(status_of(&b, 2), "rejected:invalid_mutation", "{b}");
        assert_eq!(visible(&s, "tom", "sites").await, ["s1"]);
        assert_eq!(visible(&s, "ann", "sites").await, ["s2"]);
        assert!(visible(&s, "disp", "sites").await.is_empty(), "no region attribute: no site");
        let (_, b) = s.push(&token("tom"), vec![upsert("sites", "s1", None, json!({"region": "north"}))]).await;
        assert_forbidden(&b, 0);

        // List and group rules.
        let (_, b) = s
            .push(
                &token("ann"),
                vec![
                    upsert("notes", "n1", None, json!({"members": ["ann", "tom"]})),
                    upsert("notes", "n2", None, json!({"members": ["ann"], "team": "north-team"})),
                    upsert("notes", "n3", None, json!({"members": ["ann"]})),
                    upsert("notes", "n4", None, json!({"members": ["tom"]})),
                ],
            )
            .await;
        assert_eq!((0..3).map(|i| status_of(&b, i)).collect::<Vec<_>>(), ["applied"; 3], "{b}");
        assert_forbidden(&b, 3);
        assert_eq!(visible(&s, "tom", "notes").await, ["n1", "n2"]);
        assert_eq!(visible(&s, "ann", "notes").await, ["n1", "n2", "n3"]);
        // A list longer than a rule reads is refused, and the server goes on serving.
        let crowd: Vec<String> = (0..1001).map(|i| format!("u{i}")).chain(["ann".to_owned()]).collect();
        let (status, b) = s.push(&token("ann"), vec![upsert("notes", "n5", None, json!({"members": crowd}))]).await;
        assert_eq!((status, status_of(&b, 0)), (200, "rejected:invalid_mutation".to_owned()), "{b}");
        assert_eq!(visible(&s, "ann", "notes").await, ["n1", "n2", "n3"]);
        s.server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reassigned_record_moves_out_of_one_users_pulls_and_into_anothers() {
    for (s, _) in servers("[]").await {
        s.push(&token("disp"), vec![upsert("jobs", "j1", None, json!({"assigned_to": "tom", "title": "pump"}))]).await;
        // Ann's feed position passes the job while she may not read it.
        for i in 0..5 {
            s.push(&token("disp"), vec![upsert("jobs", &format!("x{i}"), None, json!({"assigned_to": "ann"}))]).await;
        }
        let (tom_seen, tom_cursor) = s.pull_all(&token("tom"), "jobs", Value::Null).await;
        assert_eq!(tom_seen.len(), 1);
        let (_, ann_cursor) = s.pull_all(&token("ann"), "jobs", Value::Null).await;

        let (_, b) = s
            .push(&token("disp"), vec![upsert("jobs", "j1", Some(1), json!({"assigned_to": "ann", "title": "pump"}))])
            .await;
        assert_eq!(status_of(&b, 0), "applied", "{b}");

        // Tom's next pull removes it: no data, marked as a removal, not a delete.
        let (changes, tom_cursor) = s.pull_all(&token("tom"), "jobs", tom_cursor).await;
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0]["record_id"], "j1");
        assert_eq!((changes[0]["deleted"].clone(), changes[0]["removed"].clone()), (json!(true), json!(true)));
        assert_eq!(changes[0]["data"], Value::Null);
        // Ann's next pull brings it, though it sits before her cursor's old position.
        let (changes, ann_cursor) = s.pull_all(&token("ann"), "jobs", ann_cursor).await;
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0]["record_id"], "j1");
        assert_eq!(changes[0]["data"]["assigned_to"], "ann");
        assert!(changes[0].get("removed").is_none(), "{}", changes[0]);

        // A change Tom may not read no longer reaches him at all.
        s.push(&token("ann"), vec![upsert("jobs", "j1", None, json!({"assigned_to": "ann", "title": "done"}))]).await;
        let (changes, tom_cursor) = s.pull_all(&token("tom"), "jobs", tom_cursor).await;
        assert!(changes.is_empty(), "{changes:?}");

        // Back to Tom, then deleted: Tom hears of the delete as a delete; Ann, a removal
        // that came before it.
        s.push(&token("disp"), vec![upsert("jobs", "j1", None, json!({"assigned_to": "tom"}))]).await;
        let (changes, ann_cursor) = s.pull_all(&token("ann"), "jobs", ann_cursor).await;
        assert_eq!(changes.iter().map(|c| c["removed"].clone()).collect::<Vec<_>>(), [json!(true)]);
        s.push(&token("disp"), vec![delete("jobs", "j1", None)]).await;
        let (changes, _) = s.pull_all(&token("tom"), "jobs", tom_cursor.clone()).await;
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0]["deleted"], true);
        assert!(changes[0].get("removed").is_none(), "{}", changes[0]);
        assert_eq!(changes[0]["data"], Value::Null);
        let (changes, _) = s.pull_all(&token("ann"), "jobs", ann_cursor).await;
        assert!(changes.is_empty(), "Ann no longer had it: {changes:?}");

        // The tombstone is purged with its audience keys: pulls go on, an old cursor
        // starts over, and the full set no longer names it.
        let purged = s.store.purge_tombstones(chrono::Utc::now() + chrono::Duration::seconds(1)).await.unwrap();
        assert_eq!(purged, 1);
        let (status, body) = s.pull(&token("tom"), json!({"jobs": tom_cursor}), None).await;
        assert_eq!((status, body["reset"].clone()), (200, json!(["jobs"])), "{body}");
        assert!(visible(&s, "tom", "jobs").await.is_empty());
        let (changes, _) = s.pull_all(&token("tom"), "jobs", Value::Null).await;
        assert!(changes.iter().all(|c| c["record_id"] != "j1"), "{changes:?}");
        s.server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_groups_change_starts_over_with_what_they_may_read_now() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let url = common::database_url(backend, &dir).await;
        let keep = tempfile::tempdir().unwrap();
        let s = common::start_config(backend, &config(&url, "[\"north-team\"]"), keep).await;
        s.push(&token("ann"), vec![upsert("notes", "n1", None, json!({"members": ["ann"], "team": "north-team"}))])
            .await;
        let (changes, cursor) = s.pull_all(&token("tom"), "notes", Value::Null).await;
        assert_eq!(changes.len(), 1);
        s.server.stop().await.unwrap();

        // Tom leaves the team (a new configuration over the same database).
        let s = common::start_config(backend, &config(&url, "[]"), dir).await;
        let (status, body) = s.pull(&token("tom"), json!({"notes": cursor}), None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["reset"], json!(["notes"]), "the old cursor starts over: {body}");
        assert_eq!(body["changes"], json!([]), "{body}");
        s.server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_before_a_rule_changed_are_read_by_the_new_rule() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let url = common::database_url(backend, &dir).await;
        // First every job belongs to its creator.
        let owner = "access = \"owner\"";
        let s = common::start_config(backend, &config_with(&url, "[]", owner), tempfile::tempdir().unwrap()).await;
        s.push(&token("disp"), vec![upsert("jobs", "j1", None, json!({"assigned_to": "tom"}))]).await;
        s.push(&token("disp"), vec![upsert("jobs", "j2", None, json!({"assigned_to": "ann"}))]).await;
        s.push(&token("tom"), vec![upsert("jobs", "j3", None, json!({"assigned_to": "tom"}))]).await;
        // Records the new rule cannot judge: a number where a name goes, no field at all.
        s.push(&token("disp"), vec![upsert("jobs", "j4", None, json!({"assigned_to": 5}))]).await;
        s.push(&token("disp"), vec![upsert("jobs", "j5", None, json!({}))]).await;
        let (_, tom_cursor) = s.pull_all(&token("tom"), "jobs", Value::Null).await;
        assert_eq!(visible(&s, "tom", "jobs").await, ["j3"]);
        s.server.stop().await.unwrap();

        // Then by assignment: the records written before are keyed at start, and Tom's
        // old cursor starts over with exactly what he may read now.
        let s = common::start_config(backend, &config(&url, "[]"), tempfile::tempdir().unwrap()).await;
        let (status, body) = s.pull(&token("tom"), json!({"jobs": tom_cursor}), None).await;
        assert_eq!((status, body["reset"].clone()), (200, json!(["jobs"])), "{body}");
        assert_eq!(visible(&s, "tom", "jobs").await, ["j1", "j3"]);
        assert_eq!(visible(&s, "ann", "jobs").await, ["j2"]);
        // The records it cannot judge are no technician's; the grants that need no
        // field (the dispatchers' group) and admins still read them.
        assert_eq!(visible(&s, "disp", "jobs").await, ["j1", "j2", "j3", "j4", "j5"]);
        assert_eq!(visible(&s, "root", "jobs").await, ["j1", "j2", "j3", "j4", "j5"]);
        s.server.stop().await.unwrap();

        // A second start with the same rules finds nothing to do, and serves the same.
        let config = sync_server::config::ServerConfig::from_toml(&config(&url, "[]")).unwrap();
        let store = sync_server::server::open_store(&url).await.unwrap();
        assert_eq!(store.prepare_rules(&config.collections).await.unwrap(), 0);
        // Back to owner: the keys are dropped and the owner column decides again.
        let s = common::start_config(backend, &config_with(&url, "[]", owner), dir).await;
        assert_eq!(visible(&s, "tom", "jobs").await, ["j3"]);
        s.server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tell_each_user_about_records_they_may_read_before_or_after_a_change() {
    for (s, _) in servers("[]").await {
        let open = |user: &str| s.http.get(format!("{}/v1/events", s.url)).bearer_auth(token(user)).send();
        let (tom, ann) = (open("tom").await.unwrap(), open("ann").await.unwrap());
        let (mut tom, mut ann) = (tom.bytes_stream(), ann.bytes_stream());
        let (mut tom_buffer, mut ann_buffer) = (String::new(), String::new());
        // A job for Ann, then a site in Tom's region: each hears only of their own; had
        // Ann's job reached Tom, his first event would name it (the same for Ann).
        s.push(&token("disp"), vec![upsert("jobs", "j1", None, json!({"assigned_to": "ann"}))]).await;
        s.push(&token("root"), vec![upsert("sites", "s1", None, json!({"region": "north"}))]).await;
        assert_eq!(next_change(&mut tom, &mut tom_buffer).await, json!({"collections": ["sites"]}));
        assert_eq!(next_change(&mut ann, &mut ann_buffer).await, json!({"collections": ["jobs"]}));
        // Reassigned from Ann to Tom: both hear of it (Ann of its leaving, Tom of its
        // coming), and a change of neither's reaches neither.
        s.push(&token("disp"), vec![upsert("jobs", "j1", None, json!({"assigned_to": "tom"}))]).await;
        assert_eq!(next_change(&mut tom, &mut tom_buffer).await, json!({"collections": ["jobs"]}));
        assert_eq!(next_change(&mut ann, &mut ann_buffer).await, json!({"collections": ["jobs"]}));
        s.push(&token("disp"), vec![upsert("jobs", "j2", None, json!({"assigned_to": "disp"}))]).await;
        s.push(&token("root"), vec![upsert("sites", "s2", None, json!({"region": "south"}))]).await;
        assert_eq!(next_change(&mut ann, &mut ann_buffer).await, json!({"collections": ["sites"]}));
        s.push(&token("root"), vec![upsert("sites", "s3", None, json!({"region": "north"}))]).await;
        assert_eq!(next_change(&mut tom, &mut tom_buffer).await, json!({"collections": ["sites"]}));
        s.server.stop().await.unwrap();
    }
}
