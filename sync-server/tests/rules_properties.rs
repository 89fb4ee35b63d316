//! Property test of the sync rules on every backend: random read and write rules,
//! users with random groups and regions, and random histories of writes, deletes,
//! reassignments, membership changes (a restart with the new configuration), tombstone
//! purges and incremental pulls in small pages. After every pull, what the user's device holds is
//! exactly the records the rules grant them now, and no page ever delivered a record
//! the rules did not grant them at that moment. The oracle is `Rule::grants`, the
//! rules' reference semantics; the server decides through audience keys and SQL.
//! `PROPTEST_CASES` sets the number of histories per backend (16 by default).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{TestServer, status_of};
use proptest::prelude::*;
use serde_json::{Value, json};
use sync_server::config::token_sha256;
use sync_server::rules::{Rule, User};

const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const GROUPS: [&str; 3] = ["g0", "g1", "g2"];
const REGIONS: [&str; 2] = ["north", "south"];
const GRANTS: [&str; 8] = [
    "everyone",
    "owner",
    "assigned_to = user",
    "region = user.region",
    "team in user.groups",
    "members contains user",
    "teams contains user.groups",
    "user in g0",
];

#[derive(Debug, Clone)]
struct Member {
    groups: BTreeSet<String>,
    region: Option<String>,
}

#[derive(Debug, Clone)]
enum Step {
    /// A user (or the admin, `None`) writes a record.
    Write { by: Option<usize>, id: usize, data: Value },
    /// The admin deletes a record.
    Delete { id: usize },
    /// A user's device pulls to the end in pages of `limit`.
    Pull { user: usize, limit: i64 },
    /// A user's groups and region change (the server restarts with them).
    Move { user: usize, member: Member },
    /// Every tombstone is purged (older cursors start over).
    Purge,
}

fn member() -> impl Strategy<Value = Member> {
    (
        proptest::sample::subsequence(GROUPS.to_vec(), 0..=2),
        proptest::option::of(proptest::sample::select(REGIONS.to_vec())),
    )
        .prop_map(|(groups, region)| Member {
            groups: groups.into_iter().map(str::to_owned).collect(),
            region: region.map(str::to_owned),
        })
}

fn data() -> impl Strategy<Value = Value> {
    let name = prop_oneof![proptest::sample::select(USERS.to_vec()).prop_map(|u| json!(u)), Just(json!("nobody"))];
    (
        name,
        proptest::sample::select(REGIONS.to_vec()),
        proptest::sample::select(GROUPS.to_vec()),
        proptest::sample::subsequence(USERS.to_vec(), 0..=2),
        proptest::sample::subsequence(GROUPS.to_vec(), 0..=2),
        0u8..4,
    )
        .prop_map(|(assigned, region, team, members, teams, n)| {
            json!({"assigned_to": assigned, "region": region, "team": team, "members": members, "teams": teams, "n": n})
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (proptest::option::weighted(0.4, 0..USERS.len()), 0..6usize, data())
            .prop_map(|(by, id, data)| Step::Write { by, id, data }),
        1 => (0..6usize).prop_map(|id| Step::Delete { id }),
        4 => (0..USERS.len(), 1..4i64).prop_map(|(user, limit)| Step::Pull { user, limit }),
        1 => (0..USERS.len(), member()).prop_map(|(user, member)| Step::Move { user, member }),
        1 => Just(Step::Purge),
    ]
}

fn rule() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(GRANTS.to_vec(), 1..=3).prop_map(|g| g.into_iter().map(str::to_owned).collect())
}

fn config(database: &str, members: &[Member], read: &[String], write: &[String]) -> String {
    let list = |items: &[String]| items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ");
    let mut text = format!("database = \"{database}\"\nuser_attributes = [\"region\"]\n");
    for (name, m) in USERS.iter().zip(members) {
        let groups = m.groups.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(", ");
        text.push_str(&format!(
            "[[users]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\ngroups = [{groups}]\n",
            token_sha256(name)
        ));
        if let Some(region) = &m.region {
            text.push_str(&format!("attributes = {{ region = \"{region}\" }}\n"));
        }
    }
    text.push_str(&format!(
        "[[users]]\nname = \"root\"\ntoken_sha256 = \"{}\"\nrole = \"admin\"\n",
        token_sha256("root")
    ));
    text.push_str(&format!("[collections.items]\nread = [{}]\nwrite = [{}]\n", list(read), list(write)));
    text
}

fn subject(name: &str, m: &Member) -> User {
    let mut user = User::new(name, false);
    user.groups = m.groups.clone();
    user.attributes = m.region.iter().map(|r| ("region".to_owned(), r.clone())).collect();
    user
}

/// The server's records as the test knows them from the answers: id -> (owner, data;
/// None for a tombstone).
type Model = BTreeMap<String, (String, Option<Value>)>;

/// A device: its records and its cursor.
#[derive(Default, Clone)]
struct Device {
    records: BTreeMap<String, Value>,
    cursor: Value,
}

async fn run(backend: &'static str, read: Vec<String>, write: Vec<String>, mut members: Vec<Member>, steps: Vec<Step>) {
    let dir = tempfile::tempdir().unwrap();
    let url = common::database_url(backend, &dir).await;
    let start = |members: &[Member]| {
        let text = config(&url, members, &read, &write);
        async move { common::start_config(backend, &text, tempfile::tempdir().unwrap()).await }
    };
    let mut server: TestServer = start(&members).await;
    let read_rule = Rule::parse(&read, &["region".to_owned()].into()).unwrap();
    let write_rule = Rule::parse(&write, &["region".to_owned()].into()).unwrap();
    let mut model = Model::new();
    let mut devices = vec![Device { cursor: Value::Null, ..Device::default() }; USERS.len()];
    for (n, step) in steps.into_iter().enumerate() {
        match step {
            Step::Write { by, id, data } => {
                let token = by.map_or("root", |u| USERS[u]);
                let id = format!("r{id}");
                let (status, body) = server.push(token, vec![common::upsert("items", &id, None, data.clone())]).await;
                assert_eq!(status, 200, "{body}");
                let outcome = status_of(&body, 0);
                let owner = model.get(&id).map_or(token.to_owned(), |(o, _)| o.clone());
                if let Some(u) = by {
                    // A user's write applies exactly when the write rule grants them the
                    // record before (if live) and after.
                    let who = subject(USERS[u], &members[u]);
                    let before = model.get(&id).is_none_or(|(o, d)| write_rule.grants(&who, o, d.as_ref()));
                    let granted = before && write_rule.grants(&who, &owner, Some(&data));
                    assert_eq!(outcome == "applied", granted, "step {n}: {USERS:?}[{u}] writes {id}: {body}");
                }
                if outcome == "applied" {
                    model.insert(id, (owner, Some(data)));
                }
            }
            Step::Delete { id } => {
                let id = format!("r{id}");
                let (_, body) = server.push("root", vec![common::delete("items", &id, None)]).await;
                assert_eq!(status_of(&body, 0), "applied", "{body}");
                let owner = model.get(&id).map_or("root".to_owned(), |(o, _)| o.clone());
                model.insert(id, (owner, None));
            }
            Step::Purge => {
                let soon = chrono::Utc::now() + chrono::Duration::seconds(1);
                server.store.purge_tombstones(soon).await.unwrap();
                model.retain(|_, (_, data)| data.is_some());
            }
            Step::Move { user, member } => {
                members[user] = member;
                server.server.stop().await.unwrap();
                server = start(&members).await;
            }
            Step::Pull { user, limit } => {
                let who = subject(USERS[user], &members[user]);
                let device = &mut devices[user];
                for _ in 0..1000 {
                    let (status, body) = server.pull(USERS[user], json!({"items": device.cursor}), Some(limit)).await;
                    assert_eq!(status, 200, "{body}");
                    if body["reset"] == json!(["items"]) {
                        device.records.clear();
                    }
                    for change in body["changes"].as_array().unwrap() {
                        let id = change["record_id"].as_str().unwrap().to_owned();
                        if change["deleted"] == true {
                            assert_eq!(change["data"], Value::Null, "a tombstone or removal carries no data");
                            device.records.remove(&id);
                            continue;
                        }
                        let (owner, data) = &model[&id];
                        assert_eq!(Some(&change["data"]), data.as_ref(), "step {n}: {id} delivered stale");
                        assert!(
                            read_rule.grants(&who, owner, data.as_ref()),
                            "step {n}: {id} ({data:?}, owner {owner}) delivered to {who:?}, whom the rule {read:?} excludes"
                        );
                        device.records.insert(id, change["data"].clone());
                    }
                    device.cursor = body["cursors"]["items"].clone();
                    if body["has_more"] == false {
                        break;
                    }
                }
                let expected: BTreeMap<String, Value> = model
                    .iter()
                    .filter_map(|(id, (owner, data))| {
                        let data = data.as_ref()?;
                        read_rule.grants(&who, owner, Some(data)).then(|| (id.clone(), data.clone()))
                    })
                    .collect();
                assert_eq!(device.records, expected, "step {n}: {who:?} under {read:?} holds the wrong set");
            }
        }
    }
    server.server.stop().await.unwrap();
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn each_device_holds_exactly_what_the_rules_grant_its_user(
        read in rule(),
        write in rule(),
        members in proptest::collection::vec(member(), USERS.len()),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        for backend in common::backends() {
            runtime.block_on(run(backend, read.clone(), write.clone(), members.clone(), steps.clone()));
        }
    }
}
