//! The server transaction, written once: the push, pull and purge steps both backends
//! take, over a small per-backend set of statements ([`PushStatements`],
//! [`PullStatements`], [`PurgeStatements`]). A backend owns its SQL text, its row types
//! and how it makes a change's position commit in order (SQLite's single writer,
//! PostgreSQL's head-row lock); everything else (ledger replay, version floors, the
//! plan, positions, cursors and resets) lives here, once.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sync_core::protocol::MutationOutcome;
use sync_core::{CollectionName, RecordId};
use uuid::Uuid;

use super::{
    PageBuilder, PullItem, PullPage, PushContext, PushPlan, RecordWrite, SubscriptionItem, SubscriptionPart, Touched,
    join_arrays, next_position, plan_push, prefetch_keys, start_position, touched, version_floors,
};
use crate::cursor;
use crate::error::ServerError;
#[cfg(test)]
use crate::logic::User;
use crate::logic::{StoredRecord, WireResult};
use crate::rules::ReadScope;
use crate::subscriptions::{self, Key, SubPosition, Subscription, SubscriptionIndex};
use sync_core::store::FieldPath;

pub(crate) fn corrupt(message: impl Into<String>) -> ServerError {
    ServerError::Database { message: message.into(), retryable: false }
}

/// A record's new row: its final state in this push and its feed position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PositionedWrite<'a> {
    pub(crate) collection: &'a str,
    pub(crate) id: &'a str,
    pub(crate) record: &'a StoredRecord,
    pub(crate) mutation_id: String,
    pub(crate) seq: i64,
    /// The audience keys to store for the record (None: its collection stores none).
    pub(crate) keys: Option<&'a std::collections::BTreeSet<String>>,
}

/// The statements of a push, inside the backend's write transaction.
#[async_trait]
pub(crate) trait PushStatements: Send {
    /// The feed's last position, held for this transaction: no other push may assign
    /// positions until it commits.
    async fn head(&mut self) -> Result<i64, ServerError>;
    /// The stored answers (as JSON text) of those of `ids` that `user` pushed before.
    async fn ledger(&mut self, user: &str, ids: &[Uuid]) -> Result<Vec<(String, String)>, ServerError>;
    /// The stored records among `keys` (collection, id), with their keys as stored.
    async fn records(&mut self, keys: &[(String, String)]) -> Result<Vec<(String, String, StoredRecord)>, ServerError>;
    /// Per collection, the highest version its purged tombstones had.
    async fn purged_versions(&mut self) -> Result<Vec<(String, i64)>, ServerError>;
    /// Writes the records' new rows (one per record) at `now` (µs since the epoch).
    async fn write_records(&mut self, rows: &[PositionedWrite<'_>], now: i64) -> Result<(), ServerError>;
    /// Stores the audience keys of the rows that have them (see [`PositionedWrite`]):
    /// each key of a row present at the row's position, and each key the record held
    /// and no longer holds marked absent at that position (so a pull from before it
    /// sends its former readers a removal). Called only with rows that have keys.
    async fn write_audience(&mut self, rows: &[PositionedWrite<'_>]) -> Result<(), ServerError>;
    /// Moves the feed's last position to `head`.
    async fn set_head(&mut self, head: i64) -> Result<(), ServerError>;
    /// Tells other server nodes what changed, when they commit (a no-op by default).
    async fn announce(&mut self, touched: &[Touched]) -> Result<(), ServerError> {
        let _ = touched;
        Ok(())
    }
    /// Remembers first answers: (mutation id, answer as JSON text).
    async fn remember(&mut self, user: &str, entries: &[(String, String)]) -> Result<(), ServerError>;
}

/// A push inside the caller's transaction (the caller commits): look up the ledger and
/// the records, plan, position and write. Nothing is written when nothing applies.
pub(crate) async fn push_in(
    tx: &mut impl PushStatements,
    ctx: &PushContext<'_>,
    raw: &[Value],
) -> Result<(Vec<WireResult>, Vec<Touched>), ServerError> {
    let (ids, keys) = prefetch_keys(raw);
    let head = tx.head().await?;
    let ledger = parse_ledger(tx.ledger(&ctx.user.name, &ids).await?)?;
    let current = parse_records(tx.records(&keys).await?)?;
    let floors = version_floors(tx.purged_versions().await?);
    let plan = plan_push(ctx, raw, ledger, current, &floors);
    let touched = touched(&plan, ctx.client_id);
    if !plan.writes.is_empty() {
        let (rows, new_head) = positioned(&plan.writes, head);
        tx.write_records(&rows, Utc::now().timestamp_micros()).await?;
        let keyed: Vec<PositionedWrite<'_>> = rows.iter().filter(|r| r.keys.is_some()).cloned().collect();
        if !keyed.is_empty() {
            tx.write_audience(&keyed).await?;
        }
        tx.set_head(new_head).await?;
        tx.announce(&touched).await?;
    }
    if !plan.ledger.is_empty() {
        tx.remember(&ctx.user.name, &ledger_entries(&plan)?).await?;
    }
    Ok((plan.results, touched))
}

/// Parses stored ledger rows; a row that does not parse is corruption.
fn parse_ledger(rows: Vec<(String, String)>) -> Result<HashMap<Uuid, MutationOutcome>, ServerError> {
    rows.into_iter()
        .map(|(id, result)| {
            let id = Uuid::parse_str(&id).map_err(|e| corrupt(format!("ledger id: {e}")))?;
            let outcome = serde_json::from_str(&result).map_err(|e| corrupt(format!("ledger answer: {e}")))?;
            Ok((id, outcome))
        })
        .collect()
}

/// Keys the stored records. A stored key that does not parse is corruption: skipping it
/// would plan the record as a new create over the one that exists.
fn parse_records(
    rows: Vec<(String, String, StoredRecord)>,
) -> Result<HashMap<(CollectionName, RecordId), StoredRecord>, ServerError> {
    rows.into_iter()
        .map(|(c, r, record)| {
            let c = CollectionName::new(c).map_err(|e| corrupt(e.to_string()))?;
            let r = RecordId::new(r).map_err(|e| corrupt(e.to_string()))?;
            Ok(((c, r), record))
        })
        .collect()
}

/// The rows a push writes: each record's last state with the position of its last
/// write, positions following `head` one per write in order; and the new head. A record
/// written twice in one push keeps one row (a single upsert cannot touch a row twice),
/// and the head still counts both writes, so positions never repeat.
pub(crate) fn positioned(writes: &[RecordWrite], head: i64) -> (Vec<PositionedWrite<'_>>, i64) {
    let mut seq = head;
    let mut order: Vec<(&str, &str)> = Vec::new();
    let mut last: HashMap<(&str, &str), PositionedWrite<'_>> = HashMap::new();
    for w in writes {
        seq += 1;
        let key = (w.collection.as_str(), w.id.as_str());
        if !last.contains_key(&key) {
            order.push(key);
        }
        last.insert(
            key,
            PositionedWrite {
                collection: key.0,
                id: key.1,
                record: &w.record,
                mutation_id: w.mutation_id.to_string(),
                seq,
                keys: w.keys.as_ref(),
            },
        );
    }
    let rows = order.into_iter().filter_map(|key| last.remove(&key)).collect();
    (rows, seq)
}

fn ledger_entries(plan: &PushPlan) -> Result<Vec<(String, String)>, ServerError> {
    plan.ledger
        .iter()
        .map(|(id, outcome)| {
            let text = serde_json::to_string(outcome).map_err(|e| corrupt(e.to_string()))?;
            Ok((id.to_string(), text))
        })
        .collect()
}

/// One collection's page as the database assembled it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FeedPage {
    /// How many changes.
    pub(crate) count: i64,
    /// The position of the last change in it (the start position when empty).
    pub(crate) last: i64,
    /// The changes as a JSON array.
    pub(crate) json: String,
}

/// A page of a subscription's first phase as the database assembled it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MatchPage {
    /// How many records.
    pub(crate) count: i64,
    /// The last record in it (None when empty).
    pub(crate) last: Option<Key>,
    /// The records as a JSON array of changes.
    pub(crate) json: String,
}

/// What a first-phase statement answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MatchShape {
    /// `n`, `last` and `page`, for `LIMIT` (the last parameter).
    Page,
    /// Whether any row matches.
    Exists,
    /// How many rows match.
    Count,
}

/// How a backend writes the parts of a subscription's SQL that differ; the statements'
/// shape (which conditions, in which parameter order) is [`matching_sql`]'s and
/// [`filter_sql`]'s, once.
pub(crate) struct Dialect {
    /// The `n`th parameter (`?n`, `$n`).
    pub(crate) parameter: fn(usize) -> String,
    /// A field's value in a record's JSON text column, as the subscription indexes
    /// hold it.
    pub(crate) field: fn(&str, &FieldPath) -> String,
    /// A parameter holding a value a field is compared with.
    pub(crate) value: fn(String) -> String,
    /// The condition that `r` is a live record.
    pub(crate) live: &'static str,
    /// The condition that `a.key` is one of the keys in a list parameter.
    pub(crate) key_in: fn(String) -> String,
    /// The `FROM` of the first phase, through the subscription's index when it has one.
    pub(crate) from: fn(Option<&SubscriptionIndex>) -> String,
    /// The page statement over `page`, a common table of `id, version, data,
    /// mutation_id, k` (the range field's value), as `n`, `last` (`[k, id]` of the
    /// last row) and `page` (the JSON array of changes of `collection`).
    pub(crate) page: fn(&str) -> String,
}

/// A subscription's first phase: its collection's live records matching its terms,
/// after the keyset position when `after`, in the user's scope, in the order of its
/// index. Parameters: the terms' values, the position (range value and id, or id), the
/// scope's, then the limit.
pub(crate) fn matching_sql(
    dialect: &Dialect,
    subscription: &Subscription,
    scope: &ReadScope,
    after: bool,
    shape: MatchShape,
) -> String {
    let mut n = 0;
    let mut next = || {
        n += 1;
        (dialect.parameter)(n)
    };
    let mut filter = vec![format!("r.collection = '{}'", subscription.collection), dialect.live.to_owned()];
    for (field, op, _) in subscription.terms() {
        filter.push(format!("{} {op} {}", (dialect.field)("r.data", field), (dialect.value)(next())));
    }
    let key = subscription.key_field().map(|f| (dialect.field)("r.data", f));
    if after {
        filter.push(match &key {
            Some(key) => format!("({key}, r.id) > ({}, {})", (dialect.value)(next()), next()),
            None => format!("r.id > {}", next()),
        });
    }
    let access =
        "EXISTS (SELECT 1 FROM sync_access a WHERE a.collection = r.collection AND a.id = r.id AND a.present AND";
    match scope {
        ReadScope::Everything => {}
        ReadScope::Owned(_) => filter.push(format!("r.owner = {}", next())),
        ReadScope::Keys(keys) if keys.len() == 1 => filter.push(format!("{access} a.key = {})", next())),
        ReadScope::Keys(_) => filter.push(format!("{access} {})", (dialect.key_in)(next()))),
    }
    let from = (dialect.from)(subscription.index.as_ref());
    let filter = filter.join(" AND ");
    match shape {
        MatchShape::Exists => format!("SELECT EXISTS (SELECT 1 FROM {from} WHERE {filter})"),
        MatchShape::Count => format!("SELECT count(*) FROM {from} WHERE {filter}"),
        MatchShape::Page => {
            let order = key.as_ref().map_or_else(|| "r.id".to_owned(), |key| format!("{key}, r.id"));
            let k = key.unwrap_or_else(|| "NULL".to_owned());
            format!(
                "WITH page AS MATERIALIZED (SELECT r.id, r.version, r.data, r.mutation_id, {k} AS k \
                   FROM {from} WHERE {filter} ORDER BY {order} LIMIT {}) {}",
                next(),
                (dialect.page)(subscription.collection.as_str())
            )
        }
    }
}

/// For a subscription's changes phase: the condition on a feed row (`present`,
/// `deleted`, `data`) under which it is sent as the record rather than a removal, with
/// the terms' parameters numbered after `first - 1`.
pub(crate) fn filter_sql(dialect: &Dialect, filter: Option<&Subscription>, first: usize) -> String {
    let terms: Vec<String> = filter
        .map(Subscription::terms)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, (field, op, _))| {
            format!("{} {op} {}", (dialect.field)("data", field), (dialect.value)((dialect.parameter)(first + i)))
        })
        .collect();
    match terms.is_empty() {
        true => "present".to_owned(),
        false => format!("(present AND (deleted OR ({})))", terms.join(" AND ")),
    }
}

/// A first-phase position as the database gave it: `[value, id]`.
pub(crate) fn parse_key(text: &str) -> Result<Key, ServerError> {
    match serde_json::from_str::<Value>(text).map_err(|_| corrupt("bad subscription key"))? {
        Value::Array(pair) => match pair.as_slice() {
            [Value::Null, Value::String(id)] => Ok(Key { value: None, id: id.clone() }),
            [value @ (Value::String(_) | Value::Number(_)), Value::String(id)] => {
                Ok(Key { value: Some(value.clone()), id: id.clone() })
            }
            _ => Err(corrupt("bad subscription key")),
        },
        _ => Err(corrupt("bad subscription key")),
    }
}

/// The statements of a pull, inside one read snapshot.
#[async_trait]
pub(crate) trait PullStatements: Send {
    /// The feed's last committed position, in this snapshot.
    async fn head(&mut self) -> Result<i64, ServerError>;
    /// The position through which `collection`'s tombstones were purged (0: none).
    async fn purged_through(&mut self, collection: &str) -> Result<i64, ServerError>;
    /// Up to `limit` changes of `collection` after `after` in `scope`, in feed order.
    /// A record of a [`ReadScope::Keys`] scope whose keys all left the scope after
    /// `after` is sent as a removal (`"deleted": true, "removed": true`, no data), and
    /// so is a live record that does not match `filter` (a subscription's changes).
    /// Never called with an empty key set.
    async fn page(
        &mut self,
        collection: &str,
        after: i64,
        limit: i64,
        scope: &ReadScope,
        filter: Option<&Subscription>,
    ) -> Result<FeedPage, ServerError>;
    /// Whether `collection` has changes after `after` in `scope`.
    async fn more_after(&mut self, collection: &str, after: i64, scope: &ReadScope) -> Result<bool, ServerError>;
    /// Up to `limit` live records in `scope` that match `subscription`, after `after`
    /// in the order of its index (range field, then id), through that index only.
    async fn matching(
        &mut self,
        subscription: &Subscription,
        scope: &ReadScope,
        after: Option<&Key>,
        limit: i64,
    ) -> Result<MatchPage, ServerError>;
    /// Whether more live records in `scope` match `subscription` after `after`.
    async fn more_matching(
        &mut self,
        subscription: &Subscription,
        scope: &ReadScope,
        after: &Key,
    ) -> Result<bool, ServerError>;
    /// How many live records in `scope` match `subscription`.
    async fn count_matching(&mut self, subscription: &Subscription, scope: &ReadScope) -> Result<i64, ServerError>;
}

/// A pull inside the caller's read snapshot: per collection, where to start (or reset),
/// one page within the request's limit, and the cursor after it.
pub(crate) async fn pull_in(
    tx: &mut impl PullStatements,
    epoch: &str,
    items: &[PullItem],
    subscriptions: &[SubscriptionItem],
    limit: usize,
) -> Result<PullPage, ServerError> {
    let head = tx.head().await?;
    let mut response = PageBuilder::default();
    for item in items {
        // The cursor names the rule and the user's scope beside the database: when
        // either changed since, the collection starts over (see `scope_tag`).
        let tagged = &format!("{epoch}.{}", item.tag);
        let parsed = match cursor::parse(item.cursor.as_ref(), tagged)? {
            // A cursor from before rules had tags names the bare epoch. Under `owner`
            // or `everyone` alone it was made for what the user reads now, so it goes
            // on (an upgrade does not make every device download everything again).
            Some((position, false))
                if item.legacy && cursor::parse(item.cursor.as_ref(), epoch)?.is_some_and(|c| c.1) =>
            {
                Some((position, true))
            }
            parsed => parsed,
        };
        let epoch = tagged;
        let purged = tx.purged_through(item.collection.as_str()).await?;
        let (start, reset) = start_position(parsed, purged);
        if reset {
            response.reset.push(item.collection.clone());
        }
        let remaining = limit.saturating_sub(response.count);
        if remaining == 0 {
            response.has_more = true;
            response.cursors.insert(item.collection.clone(), cursor::format(epoch, start));
            continue;
        }
        if matches!(&item.scope, ReadScope::Keys(keys) if keys.is_empty()) {
            // A rule that grants this user nothing: no query, and nothing to wait for.
            let position = next_position(start, start.seq, false, head);
            response.cursors.insert(item.collection.clone(), cursor::format(epoch, position));
            continue;
        }
        let page_limit = i64::try_from(remaining).unwrap_or(i64::MAX);
        let page = tx.page(item.collection.as_str(), start.seq, page_limit, &item.scope, None).await?;
        let n = usize::try_from(page.count).map_err(|_| corrupt("negative count"))?;
        let more = n >= remaining && tx.more_after(item.collection.as_str(), page.last, &item.scope).await?;
        response.add(page.json, n);
        response.has_more |= more;
        let position = next_position(start, page.last, more, head);
        response.cursors.insert(item.collection.clone(), cursor::format(epoch, position));
    }
    // Subscriptions of one collection share its purge mark: read once per pull.
    let mut purged: HashMap<String, i64> = HashMap::new();
    for item in subscriptions {
        let remaining = limit.saturating_sub(response.count);
        let (part, n) = match &item.query {
            Err(refusal) => (SubscriptionPart::refused(refusal.clone())?, 0),
            Ok(query) => {
                let collection = query.collection.as_str();
                let through = match purged.get(collection) {
                    Some(through) => *through,
                    None => {
                        let through = tx.purged_through(collection).await?;
                        purged.insert(collection.to_owned(), through);
                        through
                    }
                };
                pull_subscription(tx, epoch, head, through, item, query, remaining).await?
            }
        };
        response.count += n;
        response.has_more |= part.has_more;
        response.subscriptions.insert(item.id.clone(), part);
    }
    response.finish()
}

/// One subscription's part of a pull, within `remaining` changes: the rest of its first
/// phase (records that match now, in index order), then its changes from the head the
/// first phase began at. Returns the part and how many changes it holds.
async fn pull_subscription(
    tx: &mut impl PullStatements,
    epoch: &str,
    head: i64,
    purged: i64,
    item: &SubscriptionItem,
    query: &Subscription,
    remaining: usize,
) -> Result<(SubscriptionPart, usize), ServerError> {
    let epoch = subscriptions::epoch(&format!("{epoch}.{}", item.tag), query);
    let parsed = subscriptions::parse_cursor(item.cursor.as_ref(), &epoch)?;
    let collection = query.collection.as_str();
    let (mut position, reset) = subscriptions::start(parsed, purged, head);
    let nothing = matches!(&item.scope, ReadScope::Keys(keys) if keys.is_empty());
    let beginning = matches!(position, SubPosition::Initial { after: None, .. });
    let total = match (beginning, nothing) {
        (false, _) => None,
        (true, true) => Some(0),
        (true, false) => Some(u64::try_from(tx.count_matching(query, &item.scope).await?).unwrap_or(0)),
    };
    let mut part =
        SubscriptionPart { changes: join_arrays(&[])?, cursor: None, has_more: false, reset, total, error: None };
    if nothing {
        // A rule that grants this user nothing: no query, and nothing to wait for.
        part.cursor = Some(subscriptions::format_cursor(&epoch, &SubPosition::Changes(head)));
        return Ok((part, 0));
    }
    let (mut parts, mut sent) = (Vec::new(), 0usize);
    if let SubPosition::Initial { head: began, after } = &position {
        if remaining == 0 {
            part.has_more = true;
            part.cursor = Some(subscriptions::format_cursor(&epoch, &position));
            return Ok((part, 0));
        }
        let limit = i64::try_from(remaining).unwrap_or(i64::MAX);
        let page = tx.matching(query, &item.scope, after.as_ref(), limit).await?;
        sent = usize::try_from(page.count).map_err(|_| corrupt("negative count"))?;
        parts.push(page.json);
        let last = page.last.or_else(|| after.clone());
        if sent >= remaining
            && let Some(last) = last
            && tx.more_matching(query, &item.scope, &last).await?
        {
            part.changes = join_arrays(&parts)?;
            part.has_more = true;
            part.cursor =
                Some(subscriptions::format_cursor(&epoch, &SubPosition::Initial { head: *began, after: Some(last) }));
            return Ok((part, sent));
        }
        position = SubPosition::Changes(*began);
    }
    let SubPosition::Changes(seq) = position else { return Err(corrupt("subscription position")) };
    let left = remaining - sent;
    let next = if left == 0 {
        part.has_more = tx.more_after(collection, seq, &item.scope).await?;
        seq
    } else {
        let limit = i64::try_from(left).unwrap_or(i64::MAX);
        let page = tx.page(collection, seq, limit, &item.scope, Some(query)).await?;
        let n = usize::try_from(page.count).map_err(|_| corrupt("negative count"))?;
        sent += n;
        parts.push(page.json);
        let more = n >= left && tx.more_after(collection, page.last, &item.scope).await?;
        part.has_more = more;
        next_position(cursor::Position { seq, full: false }, page.last, more, head).seq
    };
    part.changes = join_arrays(&parts)?;
    part.cursor = Some(subscriptions::format_cursor(&epoch, &SubPosition::Changes(next)));
    Ok((part, sent))
}

/// The statements that rebuild a collection's audience keys, inside the backend's
/// write transaction (with [`PushStatements`] for the head and the key writes).
#[async_trait]
pub(crate) trait AudienceStatements: PushStatements {
    /// The mark of the read rule the collection's keys were built for (None: none).
    async fn rule_mark(&mut self, collection: &str) -> Result<Option<String>, ServerError>;
    /// Records the mark (None: forgets it).
    async fn set_rule_mark(&mut self, collection: &str, mark: Option<&str>) -> Result<(), ServerError>;
    /// Deletes every audience key of the collection.
    async fn drop_audience(&mut self, collection: &str) -> Result<(), ServerError>;
    /// Up to `limit` records of the collection after position `after`, in feed order:
    /// (id, position, record).
    async fn records_after(
        &mut self,
        collection: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64, StoredRecord)>, ServerError>;
}

/// Brings a collection's audience keys in line with its read rule, inside the caller's
/// transaction: nothing when they were built for this rule; otherwise dropped and, when
/// the rule needs keys, built again for every record at its own position. Returns how
/// many records were keyed. A changed rule also changes the collection's cursors
/// (`scope_tag`), so every device starts over and no removal has to be kept.
pub(crate) async fn rebuild_audience_in(
    tx: &mut impl AudienceStatements,
    collection: &str,
    read: &crate::rules::Rule,
) -> Result<u64, ServerError> {
    tx.head().await?;
    let mark = read.needs_keys().then(|| super::rule_mark(read));
    if tx.rule_mark(collection).await? == mark {
        return Ok(0);
    }
    tx.drop_audience(collection).await?;
    let mut keyed = 0u64;
    if mark.is_some() {
        let mut after = 0;
        loop {
            let page = tx.records_after(collection, after, 1000).await?;
            let Some((_, last, _)) = page.last() else { break };
            after = *last;
            let keys: Vec<_> = page
                .iter()
                .map(|(_, _, r)| read.record_keys(&r.owner, if r.deleted { None } else { r.data.as_ref() }))
                .collect();
            let rows: Vec<PositionedWrite<'_>> = page
                .iter()
                .zip(&keys)
                .map(|((id, seq, record), keys)| PositionedWrite {
                    collection,
                    id,
                    record,
                    mutation_id: String::new(),
                    seq: *seq,
                    keys: Some(keys),
                })
                .collect();
            tx.write_audience(&rows).await?;
            keyed += rows.len() as u64;
        }
    }
    tx.set_rule_mark(collection, mark.as_deref()).await?;
    Ok(keyed)
}

/// The statements of a tombstone purge, inside the backend's write transaction.
#[async_trait]
pub(crate) trait PurgeStatements: Send {
    /// Holds the feed's head, so that no push interleaves with the mark.
    async fn hold_head(&mut self) -> Result<(), ServerError>;
    /// Marks, per collection, the last position and highest version among the
    /// tombstones updated before `before` (µs since the epoch), keeping earlier marks'
    /// maxima.
    async fn mark_purged(&mut self, before: i64) -> Result<(), ServerError>;
    /// Deletes those tombstones; returns how many.
    async fn delete_purged(&mut self, before: i64) -> Result<u64, ServerError>;
}

/// A purge inside the caller's transaction: the mark first, so that a cursor older
/// than the deleted tombstones is answered with `reset`, and a record created again
/// starts above their versions.
pub(crate) async fn purge_in(tx: &mut impl PurgeStatements, older_than: DateTime<Utc>) -> Result<u64, ServerError> {
    let before = older_than.timestamp_micros();
    tx.hold_head().await?;
    tx.mark_purged(before).await?;
    tx.delete_purged(before).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(collection: &str, id: &str, version: u64) -> RecordWrite {
        RecordWrite {
            collection: CollectionName::new(collection).unwrap(),
            id: RecordId::new(id).unwrap(),
            record: StoredRecord { version, deleted: false, owner: "alice".into(), data: None },
            mutation_id: Uuid::now_v7(),
            keys: None,
            told: Default::default(),
        }
    }

    #[test]
    fn positions_follow_the_head_one_per_write_and_never_repeat() {
        let writes = [write("c", "a", 1), write("c", "b", 1), write("c", "a", 2), write("d", "a", 1)];
        let (rows, head) = positioned(&writes, 10);
        assert_eq!(head, 14, "every write takes a position, also a record's earlier one");
        let got: Vec<_> = rows.iter().map(|r| (r.collection, r.id, r.record.version, r.seq)).collect();
        // One row per record, in first-write order, with its last state and position.
        assert_eq!(got, [("c", "a", 2, 13), ("c", "b", 1, 12), ("d", "a", 1, 14)]);
        assert_eq!(rows[0].mutation_id, writes[2].mutation_id.to_string());
        let (none, same) = positioned(&[], 7);
        assert!(none.is_empty());
        assert_eq!(same, 7);
    }

    /// A feed in memory behind the same statements a backend gives: the skeleton's own
    /// rules (ledger replay, version floors, positions, cursors, resets) are tested here
    /// without a database; both real backends run the same steps in their own tests.
    #[derive(Default)]
    struct MemoryFeed {
        head: i64,
        ledger: HashMap<(String, String), String>,
        /// (collection, id) -> (record, position, updated at)
        records: std::collections::BTreeMap<(String, String), (StoredRecord, i64, i64)>,
        /// collection -> (through position, highest version)
        purged: HashMap<String, (i64, i64)>,
        /// (collection, id, key) -> (position, present)
        audience: std::collections::BTreeMap<(String, String, String), (i64, bool)>,
    }

    #[async_trait]
    impl PushStatements for MemoryFeed {
        async fn head(&mut self) -> Result<i64, ServerError> {
            Ok(self.head)
        }
        async fn ledger(&mut self, user: &str, ids: &[Uuid]) -> Result<Vec<(String, String)>, ServerError> {
            Ok(ids
                .iter()
                .filter_map(|id| {
                    let key = (user.to_owned(), id.to_string());
                    self.ledger.get(&key).map(|r| (key.1.clone(), r.clone()))
                })
                .collect())
        }
        async fn records(
            &mut self,
            keys: &[(String, String)],
        ) -> Result<Vec<(String, String, StoredRecord)>, ServerError> {
            Ok(keys
                .iter()
                .filter_map(|k| self.records.get(k).map(|(r, _, _)| (k.0.clone(), k.1.clone(), r.clone())))
                .collect())
        }
        async fn purged_versions(&mut self) -> Result<Vec<(String, i64)>, ServerError> {
            Ok(self.purged.iter().map(|(c, (_, v))| (c.clone(), *v)).collect())
        }
        async fn write_records(&mut self, rows: &[PositionedWrite<'_>], now: i64) -> Result<(), ServerError> {
            for w in rows {
                self.records.insert((w.collection.into(), w.id.into()), (w.record.clone(), w.seq, now));
            }
            Ok(())
        }
        async fn write_audience(&mut self, rows: &[PositionedWrite<'_>]) -> Result<(), ServerError> {
            for w in rows {
                let keys = w.keys.unwrap();
                for ((c, id, key), (seq, present)) in &mut self.audience {
                    if c == w.collection && id == w.id && *present {
                        *seq = w.seq;
                        *present = keys.contains(key);
                    }
                }
                for key in keys {
                    self.audience.insert((w.collection.into(), w.id.into(), key.clone()), (w.seq, true));
                }
            }
            Ok(())
        }
        async fn set_head(&mut self, head: i64) -> Result<(), ServerError> {
            self.head = head;
            Ok(())
        }
        async fn remember(&mut self, user: &str, entries: &[(String, String)]) -> Result<(), ServerError> {
            for (id, result) in entries {
                self.ledger.insert((user.to_owned(), id.clone()), result.clone());
            }
            Ok(())
        }
    }

    #[async_trait]
    impl PullStatements for MemoryFeed {
        async fn head(&mut self) -> Result<i64, ServerError> {
            Ok(self.head)
        }
        async fn purged_through(&mut self, collection: &str) -> Result<i64, ServerError> {
            Ok(self.purged.get(collection).map_or(0, |(through, _)| *through))
        }
        async fn page(
            &mut self,
            collection: &str,
            after: i64,
            limit: i64,
            scope: &ReadScope,
            filter: Option<&Subscription>,
        ) -> Result<FeedPage, ServerError> {
            if filter.is_some() {
                return Err(corrupt("the memory feed does not model subscriptions (the stores' tests do)"));
            }
            // (position, id, present) of each record in the scope changed after `after`.
            let mut rows: Vec<(i64, String, bool)> = match scope {
                ReadScope::Keys(keys) => {
                    let mut by_id: std::collections::BTreeMap<String, (i64, bool)> = Default::default();
                    for ((c, id, key), (seq, present)) in &self.audience {
                        if c == collection && *seq > after && keys.contains(key) {
                            let e = by_id.entry(id.clone()).or_insert((0, false));
                            *e = (e.0.max(*seq), e.1 || *present);
                        }
                    }
                    by_id.into_iter().map(|(id, (seq, present))| (seq, id, present)).collect()
                }
                _ => self
                    .records
                    .iter()
                    .filter(|((c, _), (r, seq, _))| {
                        c == collection
                            && *seq > after
                            && match scope {
                                ReadScope::Owned(u) => &r.owner == u,
                                _ => true,
                            }
                    })
                    .map(|((_, id), (_, seq, _))| (*seq, id.clone(), true))
                    .collect(),
            };
            rows.sort();
            rows.truncate(usize::try_from(limit).unwrap());
            let last = rows.last().map_or(after, |(seq, _, _)| *seq);
            let changes: Vec<Value> = rows
                .iter()
                .map(|(_, id, present)| {
                    let r = &self.records[&(collection.to_owned(), id.clone())].0;
                    if *present {
                        serde_json::json!({"collection": collection, "record_id": id, "version": r.version,
                            "deleted": r.deleted, "data": r.data})
                    } else {
                        serde_json::json!({"collection": collection, "record_id": id, "version": r.version,
                            "deleted": true, "removed": true, "data": null})
                    }
                })
                .collect();
            Ok(FeedPage { count: rows.len() as i64, last, json: Value::from(changes).to_string() })
        }
        async fn more_after(&mut self, collection: &str, after: i64, scope: &ReadScope) -> Result<bool, ServerError> {
            Ok(self.page(collection, after, 1, scope, None).await?.count > 0)
        }

        async fn matching(
            &mut self,
            _: &Subscription,
            _: &ReadScope,
            _: Option<&Key>,
            _: i64,
        ) -> Result<MatchPage, ServerError> {
            Err(corrupt("the memory feed does not model subscriptions (the stores' tests do)"))
        }

        async fn more_matching(&mut self, _: &Subscription, _: &ReadScope, _: &Key) -> Result<bool, ServerError> {
            Err(corrupt("the memory feed does not model subscriptions (the stores' tests do)"))
        }

        async fn count_matching(&mut self, _: &Subscription, _: &ReadScope) -> Result<i64, ServerError> {
            Err(corrupt("the memory feed does not model subscriptions (the stores' tests do)"))
        }
    }

    #[async_trait]
    impl PurgeStatements for MemoryFeed {
        async fn hold_head(&mut self) -> Result<(), ServerError> {
            Ok(())
        }
        async fn mark_purged(&mut self, before: i64) -> Result<(), ServerError> {
            for ((c, _), (r, seq, at)) in &self.records {
                if r.deleted && *at < before {
                    let mark = self.purged.entry(c.clone()).or_insert((0, 0));
                    mark.0 = mark.0.max(*seq);
                    mark.1 = mark.1.max(i64::try_from(r.version).unwrap());
                }
            }
            Ok(())
        }
        async fn delete_purged(&mut self, before: i64) -> Result<u64, ServerError> {
            let n = self.records.len();
            self.records.retain(|_, (r, _, at)| !(r.deleted && *at < before));
            let records = &self.records;
            self.audience.retain(|(c, id, _), _| records.contains_key(&(c.clone(), id.clone())));
            Ok((n - self.records.len()) as u64)
        }
    }

    struct World {
        feed: MemoryFeed,
        alice: User,
        collections: std::collections::BTreeMap<CollectionName, crate::config::CollectionConfig>,
        users: std::collections::HashSet<String>,
        actions: HashMap<String, std::sync::Arc<dyn super::super::ActionHandler>>,
    }

    impl World {
        fn new() -> Self {
            let config = crate::config::CollectionConfig::new(crate::config::Access::Owner);
            Self {
                feed: MemoryFeed::default(),
                alice: User::new("alice", false),
                collections: [(CollectionName::new("notes").unwrap(), config)].into(),
                users: ["alice".to_owned()].into(),
                actions: HashMap::new(),
            }
        }

        async fn push(&mut self, mutations: Vec<Value>) -> Vec<WireResult> {
            let ctx = PushContext {
                user: &self.alice,
                collections: &self.collections,
                users: &self.users,
                actions: &self.actions,
                client_id: "device",
            };
            push_in(&mut self.feed, &ctx, &mutations).await.unwrap().0
        }

        async fn pull(&mut self, cursor: Option<sync_core::Cursor>) -> PullPage {
            let notes = CollectionName::new("notes").unwrap();
            let item = PullItem::new(notes.clone(), &self.collections[&notes].rules.read, &self.alice, cursor);
            pull_in(&mut self.feed, "epoch1", &[item], &[], 100).await.unwrap()
        }
    }

    fn upsert(id: Uuid, record: &str, base: Option<u64>) -> Value {
        serde_json::json!({"mutation_id": id.to_string(), "collection": "notes", "record_id": record,
            "op": "upsert", "base_version": base, "data": {"text": record}})
    }

    fn delete(record: &str) -> Value {
        serde_json::json!({"mutation_id": Uuid::now_v7().to_string(), "collection": "notes", "record_id": record,
            "op": "delete", "base_version": null, "data": null})
    }

    fn version_of(result: &WireResult) -> Option<u64> {
        match &result.outcome {
            MutationOutcome::Applied { version, .. } => Some(version.0),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_repeated_mutation_is_answered_from_the_ledger_and_writes_nothing() {
        let mut world = World::new();
        let id = Uuid::now_v7();
        let first = world.push(vec![upsert(id, "r1", Some(0))]).await;
        let head = world.feed.head;
        let again = world.push(vec![upsert(id, "r1", Some(0))]).await;
        assert_eq!(first, again);
        assert_eq!(world.feed.head, head, "the repeat took a feed position");
        assert_eq!(world.feed.records.len(), 1);
    }

    #[tokio::test]
    async fn versions_never_repeat_even_after_the_tombstones_are_purged() {
        let mut world = World::new();
        let v1 = version_of(&world.push(vec![upsert(Uuid::now_v7(), "r1", None)]).await[0]);
        let v2 = version_of(&world.push(vec![upsert(Uuid::now_v7(), "r1", None)]).await[0]);
        let gone = version_of(&world.push(vec![delete("r1")]).await[0]);
        assert_eq!((v1, v2, gone), (Some(1), Some(2), Some(3)));
        assert_eq!(purge_in(&mut world.feed, Utc::now() + chrono::Duration::seconds(1)).await.unwrap(), 1);
        let again = version_of(&world.push(vec![upsert(Uuid::now_v7(), "r1", Some(0))]).await[0]);
        assert!(again > gone, "created again at {again:?}, at or below the purged {gone:?}");
    }

    #[tokio::test]
    async fn a_cursor_from_before_a_purge_is_reset_and_a_current_one_is_not() {
        let mut world = World::new();
        world.push(vec![upsert(Uuid::now_v7(), "r1", None)]).await;
        let old = world.pull(None).await;
        world.push(vec![upsert(Uuid::now_v7(), "r2", None), delete("r1")]).await;
        purge_in(&mut world.feed, Utc::now() + chrono::Duration::seconds(1)).await.unwrap();
        let current = world.pull(None).await;
        let old_cursor = old.cursors.values().next().cloned();
        let reset = world.pull(old_cursor).await;
        assert_eq!(reset.reset, [CollectionName::new("notes").unwrap()]);
        assert_eq!(reset.count, 1, "the full set follows the reset");
        let fresh = world.pull(current.cursors.values().next().cloned()).await;
        assert!(fresh.reset.is_empty());
        assert_eq!(fresh.count, 0);
    }

    #[tokio::test]
    async fn a_cursor_from_before_scope_tags_goes_on_under_owner_and_resets_under_other_rules() {
        let mut world = World::new();
        world.push(vec![upsert(Uuid::now_v7(), "r1", None)]).await;
        let current = world.pull(None).await;
        let position = current.cursors.values().next().unwrap().0.split(':').nth(1).unwrap().to_owned();
        let legacy = sync_core::Cursor(format!("epoch1:{position}:0"));
        let again = world.pull(Some(legacy.clone())).await;
        assert!(again.reset.is_empty(), "an owner collection keeps its old cursor");
        assert_eq!(again.count, 0);
        // The same cursor for a collection under a field rule starts over.
        let notes = CollectionName::new("notes").unwrap();
        let rule = crate::rules::Rule::parse(&["assigned_to = user".into()], &Default::default()).unwrap();
        let item = PullItem::new(notes.clone(), &rule, &User::new("alice", false), Some(legacy));
        let keyed = pull_in(&mut world.feed, "epoch1", &[item], &[], 100).await.unwrap();
        assert_eq!(keyed.reset, [notes]);
    }

    #[tokio::test]
    async fn a_cursor_at_the_head_misses_nothing_that_follows() {
        let mut world = World::new();
        for i in 0..3 {
            world.push(vec![upsert(Uuid::now_v7(), &format!("r{i}"), None)]).await;
        }
        let caught_up = world.pull(None).await;
        assert_eq!((caught_up.count, caught_up.has_more), (3, false));
        world.push(vec![upsert(Uuid::now_v7(), "r9", None)]).await;
        let next = world.pull(caught_up.cursors.values().next().cloned()).await;
        assert_eq!(next.count, 1);
        assert!(next.changes.get().contains("r9"));
    }

    #[test]
    fn stored_rows_that_do_not_parse_are_corruption() {
        assert!(parse_ledger(vec![("not a uuid".into(), "{}".into())]).is_err());
        assert!(parse_ledger(vec![(Uuid::now_v7().to_string(), "not json".into())]).is_err());
        let record = StoredRecord { version: 1, deleted: false, owner: "alice".into(), data: None };
        assert!(parse_records(vec![("Bad Name".into(), "r".into(), record.clone())]).is_err());
        assert!(parse_records(vec![("c".into(), String::new(), record.clone())]).is_err());
        assert_eq!(parse_records(vec![("c".into(), "r".into(), record)]).unwrap().len(), 1);
    }
}
