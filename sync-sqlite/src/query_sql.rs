//! A `Query` as SQL text and parameters: a pure function with table tests. Field paths
//! and the collection name are written into the text (both are validated to hold only
//! ASCII letters, digits, `_` and `.`), because SQLite uses an expression index only
//! for the very expression it was built on, and a partial index only when the query's
//! own text implies its condition; every value is a bound parameter.

use sync_core::store::{After, Cmp, FieldPath, Filter, Order, Query, Scalar};

use crate::codec::STATE_EXPR;

/// A parameter value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bind {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

impl From<&Scalar> for Bind {
    fn from(s: &Scalar) -> Self {
        match s {
            Scalar::Null => Bind::Null,
            // SQLite's json_extract gives 1 and 0 for true and false.
            Scalar::Bool(b) => Bind::Int(i64::from(*b)),
            Scalar::Int(i) => Bind::Int(*i),
            Scalar::Float(f) => Bind::Float(*f),
            Scalar::Text(t) => Bind::Text(t.clone()),
        }
    }
}

/// SQL text with its parameters, in order.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Sql {
    pub(crate) text: String,
    pub(crate) binds: Vec<Bind>,
}

impl Sql {
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, value: Bind) -> &mut Self {
        self.text.push('?');
        self.binds.push(value);
        self
    }
}

/// The indexed expression of a field: what declared indexes are built on.
pub(crate) fn field_expr(field: &FieldPath) -> String {
    format!("json_extract(data, '{}')", field.json_path())
}

/// The field as the query reads it: the live data, or for pending deletes the data the
/// server last acknowledged.
fn read_expr(field: &FieldPath, pending_deletes: bool) -> String {
    if pending_deletes {
        format!("json_extract(coalesce(r.data, r.base), '{}')", field.json_path())
    } else {
        format!("json_extract(r.data, '{}')", field.json_path())
    }
}

/// The rows a query may see: the collection's live records (the condition of every
/// declared index), and with `include_pending_deletes` its local tombstones whose delete
/// waits in the outbox and that have acknowledged data to show.
fn scope(sql: &mut Sql, query: &Query) {
    sql.push(&format!("WHERE r.collection = '{}' AND ", query.collection.as_str()));
    if query.include_pending_deletes {
        sql.push(
            "(r.deleted = 0 OR (r.base IS NOT NULL AND EXISTS (SELECT 1 FROM offsync_outbox o \
             WHERE o.collection = r.collection AND o.record_id = r.id AND o.op = 'delete')))",
        );
    } else {
        sql.push("r.deleted = 0");
    }
}

fn filter(sql: &mut Sql, f: &Filter, pending_deletes: bool) {
    match f {
        Filter::Compare { field, op, value } => {
            let e = read_expr(field, pending_deletes);
            match (op, value) {
                (Cmp::Eq, Scalar::Null) => {
                    sql.push(&format!("{e} IS NULL"));
                }
                (Cmp::Ne, Scalar::Null) => {
                    sql.push(&format!("{e} IS NOT NULL"));
                }
                // A missing or null field differs from any value.
                (Cmp::Ne, v) => {
                    sql.push(&format!("{e} IS NOT ")).bind(v.into());
                }
                (op, v) => {
                    let symbol = match op {
                        Cmp::Eq => "=",
                        Cmp::Lt => "<",
                        Cmp::Le => "<=",
                        Cmp::Gt => ">",
                        Cmp::Ge | Cmp::Ne => ">=",
                    };
                    sql.push(&format!("{e} {symbol} ")).bind(v.into());
                }
            }
        }
        Filter::In { field, values } => {
            if values.is_empty() {
                sql.push("0");
                return;
            }
            sql.push(&format!("{} IN (", read_expr(field, pending_deletes)));
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(v.into());
            }
            sql.push(")");
        }
        Filter::Prefix { field, prefix } => {
            // A range the index can serve, then the exact test (a string that starts with
            // the prefix sorts below prefix + the highest code point, save pathological ones).
            let e = read_expr(field, pending_deletes);
            let mut upper = prefix.clone();
            upper.push(char::MAX);
            sql.push(&format!("({e} >= ")).bind(Bind::Text(prefix.clone()));
            sql.push(&format!(" AND {e} < ")).bind(Bind::Text(upper));
            sql.push(&format!(" AND substr({e}, 1, length(")).bind(Bind::Text(prefix.clone()));
            sql.push(")) = ").bind(Bind::Text(prefix.clone())).push(")");
        }
        Filter::All(all) | Filter::Any(all) if all.is_empty() => {
            sql.push(if matches!(f, Filter::All(_)) { "1" } else { "0" });
        }
        Filter::All(parts) | Filter::Any(parts) => {
            let joiner = if matches!(f, Filter::All(_)) { " AND " } else { " OR " };
            sql.push("(");
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    sql.push(joiner);
                }
                filter(sql, part, pending_deletes);
            }
            sql.push(")");
        }
    }
}

/// Keyset pagination: the rows after `after` in the order `(keys..., id ASC)`. NULL sorts
/// first ascending and last descending, as SQLite orders it.
fn after_clause(sql: &mut Sql, order_by: &[(FieldPath, Order)], after: &After, pending_deletes: bool) {
    sql.push("(");
    for i in 0..=order_by.len() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        // Equal on every earlier key...
        for (j, (field, _)) in order_by[..i].iter().enumerate() {
            let e = read_expr(field, pending_deletes);
            match after.keys.get(j) {
                Some(Scalar::Null) | None => sql.push(&format!("{e} IS NULL AND ")),
                Some(v) => sql.push(&format!("{e} = ")).bind(v.into()).push(" AND "),
            };
        }
        // ...and strictly after on this one (the id last).
        match order_by.get(i) {
            None => {
                sql.push("r.id > ").bind(Bind::Text(after.id.to_string()));
            }
            Some((field, order)) => {
                let e = read_expr(field, pending_deletes);
                match (order, after.keys.get(i)) {
                    (Order::Asc, Some(Scalar::Null) | None) => {
                        sql.push(&format!("{e} IS NOT NULL"));
                    }
                    (Order::Asc, Some(v)) => {
                        sql.push(&format!("{e} > ")).bind(v.into());
                    }
                    (Order::Desc, Some(Scalar::Null) | None) => {
                        sql.push("0");
                    }
                    (Order::Desc, Some(v)) => {
                        sql.push(&format!("({e} < ")).bind(v.into()).push(&format!(" OR {e} IS NULL)"));
                    }
                }
            }
        }
        sql.push(")");
    }
    sql.push(")");
}

/// What a `SELECT` of records reads of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Columns {
    /// Everything a `StoredRecord` holds, its sync state included.
    Tracked,
    /// Only the id and the data: no state lookups in the outbox and conflicts, which
    /// after another connection's write also means far fewer pages read again.
    Data,
}

/// `SELECT` of the records matching `query`, in its order.
pub(crate) fn select(query: &Query, columns: Columns) -> Sql {
    let pending = query.include_pending_deletes;
    let data = if pending { "coalesce(r.data, r.base)" } else { "r.data" };
    let mut sql = Sql::default();
    sql.push(&match columns {
        Columns::Tracked => format!(
            "SELECT r.id, {data} AS data, r.server_version, r.modified_at, {STATE_EXPR} AS state \
             FROM offsync_records r "
        ),
        Columns::Data => format!("SELECT r.id, {data} AS data FROM offsync_records r "),
    });
    scope(&mut sql, query);
    sql.push(" AND ");
    filter(&mut sql, &query.filter, pending);
    if let Some(after) = &query.after {
        sql.push(" AND ");
        after_clause(&mut sql, &query.order_by, after, pending);
    }
    sql.push(" ORDER BY ");
    for (field, order) in &query.order_by {
        let direction = if *order == Order::Asc { "ASC" } else { "DESC" };
        sql.push(&format!("{} {direction}, ", read_expr(field, pending)));
    }
    sql.push("r.id ASC");
    match (query.limit, query.offset) {
        (None, None) => {}
        (limit, offset) => {
            sql.push(" LIMIT ").bind(Bind::Int(limit.map_or(-1, i64::from)));
            sql.push(" OFFSET ").bind(Bind::Int(offset.map_or(0, i64::from)));
        }
    }
    sql
}

/// The `WHERE` of the records a query selects, its order, limit and offset aside:
/// scope, filter, and keyset position.
fn matches(sql: &mut Sql, query: &Query) {
    scope(sql, query);
    sql.push(" AND ");
    filter(sql, &query.filter, query.include_pending_deletes);
    if let Some(after) = &query.after {
        sql.push(" AND ");
        after_clause(sql, &query.order_by, after, query.include_pending_deletes);
    }
}

/// `SELECT r.id` of those of `ids` that match `query`'s scope, filter and keyset position: a primary-key
/// lookup per id, whatever the collection's size.
pub(crate) fn matching(query: &Query, ids: &[sync_core::RecordId]) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT r.id FROM offsync_records r ");
    matching_where(&mut sql, query, ids);
    sql
}

/// The asks per statement of [`matching_each`]: under SQLite's 500 terms of a compound
/// `SELECT`, and with a watch's at most 257 ids each, under its 32,766 parameters.
pub(crate) const ASKS_PER_STATEMENT: usize = 100;

/// Several [`matching`] asks in one statement per [`ASKS_PER_STATEMENT`]: each ask's
/// `SELECT` tagged with its position in `asks` (column `ask`), joined by `UNION ALL`.
pub(crate) fn matching_each(asks: &[(Query, Vec<sync_core::RecordId>)]) -> Vec<Sql> {
    asks.chunks(ASKS_PER_STATEMENT)
        .enumerate()
        .map(|(chunk, part)| {
            let mut sql = Sql::default();
            for (i, (query, ids)) in part.iter().enumerate() {
                if i > 0 {
                    sql.push(" UNION ALL ");
                }
                let ask = chunk * ASKS_PER_STATEMENT + i;
                sql.push(&format!("SELECT {ask} AS ask, r.id FROM offsync_records r "));
                matching_where(&mut sql, query, ids);
            }
            sql
        })
        .collect()
}

/// The `WHERE` of a [`matching`] ask: the query's, and the record among `ids`.
fn matching_where(sql: &mut Sql, query: &Query, ids: &[sync_core::RecordId]) {
    matches(sql, query);
    sql.push(" AND r.id IN (");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.bind(Bind::Text(id.to_string()));
    }
    sql.push(")");
}

/// `SELECT count(*)` of the records matching `query` (its order, limit and offset
/// ignored; a keyset position counts only what follows it).
pub(crate) fn count(query: &Query) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT count(*) FROM offsync_records r ");
    matches(&mut sql, query);
    sql
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use sync_core::{CollectionName, RecordId};

    use super::*;

    fn query() -> Query {
        Query::all(CollectionName::new("orders").unwrap())
    }

    /// The main query's WHERE clause (after the state expression's own subqueries).
    fn where_of(sql: &Sql) -> &str {
        let start = sql.text.find("WHERE r.collection").unwrap();
        let end = sql.text.rfind(" ORDER BY").filter(|e| *e > start).unwrap_or(sql.text.len());
        &sql.text[start..end]
    }

    #[test]
    fn filters_become_sql_on_the_indexed_expressions_with_bound_values() {
        let open = Filter::eq("status", "open").unwrap();
        let cases: Vec<(Filter, &str, Vec<Bind>)> = vec![
            (Filter::All(vec![]), "1", vec![]),
            (Filter::Any(vec![]), "0", vec![]),
            (open.clone(), "json_extract(r.data, '$.status') = ?", vec![Bind::Text("open".into())]),
            (Filter::is_null("due").unwrap(), "json_extract(r.data, '$.due') IS NULL", vec![]),
            (Filter::not_null("due").unwrap(), "json_extract(r.data, '$.due') IS NOT NULL", vec![]),
            (Filter::compare("n", Cmp::Ne, 3).unwrap(), "json_extract(r.data, '$.n') IS NOT ?", vec![Bind::Int(3)]),
            (Filter::compare("n", Cmp::Ge, 2.5).unwrap(), "json_extract(r.data, '$.n') >= ?", vec![Bind::Float(2.5)]),
            (Filter::eq("done", true).unwrap(), "json_extract(r.data, '$.done') = ?", vec![Bind::Int(1)]),
            (
                Filter::one_of("status", ["a", "b"]).unwrap(),
                "json_extract(r.data, '$.status') IN (?, ?)",
                vec![Bind::Text("a".into()), Bind::Text("b".into())],
            ),
            (Filter::one_of::<&str>("status", []).unwrap(), "0", vec![]),
            (
                open.clone().or(Filter::compare("site.city", Cmp::Lt, "M").unwrap()),
                "(json_extract(r.data, '$.status') = ? OR json_extract(r.data, '$.site.city') < ?)",
                vec![Bind::Text("open".into()), Bind::Text("M".into())],
            ),
        ];
        for (f, expected, binds) in cases {
            let q = Query { filter: f.clone(), ..query() };
            let sql = select(&q, Columns::Tracked);
            assert_eq!(
                where_of(&sql),
                format!("WHERE r.collection = 'orders' AND r.deleted = 0 AND {expected}"),
                "{f:?}"
            );
            assert_eq!(sql.binds, binds, "{f:?}");
        }
    }

    #[test]
    fn a_prefix_is_a_range_the_index_can_serve_then_an_exact_test() {
        let q = Query { filter: Filter::starts_with("title", "Val").unwrap(), ..query() };
        let sql = select(&q, Columns::Tracked);
        assert!(
            where_of(&sql).contains("json_extract(r.data, '$.title') >= ? AND json_extract(r.data, '$.title') < ?")
        );
        assert_eq!(sql.binds.len(), 4);
        assert_eq!(sql.binds[1], Bind::Text(format!("Val{}", char::MAX)));
    }

    #[test]
    fn order_limit_offset_and_the_id_tiebreak() {
        let mut q = query();
        q.order_by = vec![(FieldPath::new("due").unwrap(), Order::Desc), (FieldPath::new("n").unwrap(), Order::Asc)];
        q.limit = Some(50);
        let sql = select(&q, Columns::Tracked);
        assert!(
            sql.text.ends_with(
                "ORDER BY json_extract(r.data, '$.due') DESC, json_extract(r.data, '$.n') ASC, r.id ASC LIMIT ? OFFSET ?"
            ),
            "{}",
            sql.text
        );
        assert_eq!(sql.binds, [Bind::Int(50), Bind::Int(0)]);
        q.limit = None;
        q.offset = Some(10);
        assert_eq!(select(&q, Columns::Tracked).binds, [Bind::Int(-1), Bind::Int(10)]);
    }

    #[test]
    fn keyset_positions_cover_nulls_in_both_directions() {
        let mut q = query();
        q.order_by = vec![(FieldPath::new("due").unwrap(), Order::Desc)];
        q.after = Some(After { keys: vec![Scalar::Null], id: RecordId::new("r5").unwrap() });
        let sql = select(&q, Columns::Tracked);
        // Descending, NULL comes last: after a NULL row only NULL rows with a larger id.
        assert!(
            where_of(&sql).ends_with("((0) OR (json_extract(r.data, '$.due') IS NULL AND r.id > ?))"),
            "{}",
            sql.text
        );
        q.after = Some(After { keys: vec![Scalar::Int(3)], id: RecordId::new("r5").unwrap() });
        let sql = select(&q, Columns::Tracked);
        assert!(
            where_of(&sql).ends_with(
                "(((json_extract(r.data, '$.due') < ? OR json_extract(r.data, '$.due') IS NULL)) OR \
                 (json_extract(r.data, '$.due') = ? AND r.id > ?))"
            ),
            "{}",
            sql.text
        );
    }

    #[test]
    fn pending_deletes_read_the_acknowledged_data() {
        let q = Query { include_pending_deletes: true, filter: Filter::eq("status", "open").unwrap(), ..query() };
        let sql = select(&q, Columns::Tracked);
        assert!(sql.text.starts_with("SELECT r.id, coalesce(r.data, r.base) AS data"));
        assert!(where_of(&sql).contains("json_extract(coalesce(r.data, r.base), '$.status') = ?"));
        assert!(where_of(&sql).contains("o.op = 'delete'"));
    }
}
