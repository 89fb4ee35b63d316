//! Local queries: filters, sort keys, pagination and declared indexes, as data the
//! store turns into SQL. Values are checked here once; a store binds them as parameters.

use serde_json::Value;

use crate::error::Error;
use crate::ids::{CollectionName, RecordId};
use crate::store::FieldPath;

/// A sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Ascending.
    Asc,
    /// Descending.
    Desc,
}

/// How a field compares with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// Equal (with a null value: the field is null or missing).
    Eq,
    /// Not equal (with a null value: the field is present and not null).
    Ne,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Ge,
}

/// A value a field can be compared with: JSON's scalars. Objects and arrays do not
/// compare.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// `null`.
    Null,
    /// `true` or `false` (stored by SQLite as 1 and 0).
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number with a fraction (or beyond `i64`).
    Float(f64),
    /// A string.
    Text(String),
}

impl Scalar {
    /// The scalar of a JSON value.
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] for an object or an array, which do not compare.
    pub fn from_json(value: &Value) -> Result<Self, Error> {
        Ok(match value {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None => Scalar::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Scalar::Text(s.clone()),
            Value::Array(_) | Value::Object(_) => {
                return Err(Error::InvalidQuery {
                    message: format!("cannot compare with {value}: only strings, numbers, booleans and null compare"),
                });
            }
        })
    }
}

/// A condition on a collection's records. Build leaves with the constructors (they
/// check the field path and the value) and combine them with [`Filter::and`] and
/// [`Filter::or`].
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `field <op> value`.
    Compare {
        /// The field.
        field: FieldPath,
        /// The comparison.
        op: Cmp,
        /// The value.
        value: Scalar,
    },
    /// The field equals one of the values.
    In {
        /// The field.
        field: FieldPath,
        /// The values (none of them null).
        values: Vec<Scalar>,
    },
    /// The field is a string starting with `prefix`.
    Prefix {
        /// The field.
        field: FieldPath,
        /// The prefix.
        prefix: String,
    },
    /// Every one holds (true when empty).
    All(Vec<Filter>),
    /// At least one holds (false when empty).
    Any(Vec<Filter>),
}

impl Filter {
    /// `field <op> value`.
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] for a bad field path, an object or array value, or null
    /// with an ordering comparison (`<`, `<=`, `>`, `>=`: null has no order).
    pub fn compare(field: &str, op: Cmp, value: impl Into<Value>) -> Result<Self, Error> {
        let field = FieldPath::new(field)?;
        let value = Scalar::from_json(&value.into())?;
        if value == Scalar::Null && !matches!(op, Cmp::Eq | Cmp::Ne) {
            return Err(Error::InvalidQuery {
                message: format!("{field:?} {op:?} null: null has no order; use is_null or not_null"),
            });
        }
        Ok(Filter::Compare { field, op, value })
    }

    /// The field equals `value` (null: is null or missing).
    ///
    /// # Errors
    /// As [`Filter::compare`].
    pub fn eq(field: &str, value: impl Into<Value>) -> Result<Self, Error> {
        Self::compare(field, Cmp::Eq, value)
    }

    /// The field is null or missing.
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] for a bad field path.
    pub fn is_null(field: &str) -> Result<Self, Error> {
        Self::compare(field, Cmp::Eq, Value::Null)
    }

    /// The field is present and not null.
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] for a bad field path.
    pub fn not_null(field: &str) -> Result<Self, Error> {
        Self::compare(field, Cmp::Ne, Value::Null)
    }

    /// The field equals one of `values`.
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] for a bad field path, an object, array or null among the
    /// values (for null, combine with [`Filter::is_null`]).
    pub fn one_of<V: Into<Value>>(field: &str, values: impl IntoIterator<Item = V>) -> Result<Self, Error> {
        let field = FieldPath::new(field)?;
        let values = values
            .into_iter()
            .map(|v| match Scalar::from_json(&v.into())? {
                Scalar::Null => {
                    Err(Error::InvalidQuery { message: "null in an `in` list: use is_null alongside".into() })
                }
                scalar => Ok(scalar),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filter::In { field, values })
    }

    /// The field is a string that starts with `prefix`.
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] for a bad field path.
    pub fn starts_with(field: &str, prefix: impl Into<String>) -> Result<Self, Error> {
        Ok(Filter::Prefix { field: FieldPath::new(field)?, prefix: prefix.into() })
    }

    /// Both hold.
    pub fn and(self, other: Filter) -> Filter {
        match self {
            Filter::All(mut all) => {
                all.push(other);
                Filter::All(all)
            }
            first => Filter::All(vec![first, other]),
        }
    }

    /// Either holds.
    pub fn or(self, other: Filter) -> Filter {
        match self {
            Filter::Any(mut any) => {
                any.push(other);
                Filter::Any(any)
            }
            first => Filter::Any(vec![first, other]),
        }
    }
}

/// Where a keyset page starts: after the row with these sort-key values and this id.
#[derive(Debug, Clone, PartialEq)]
pub struct After {
    /// The last row's value of each sort key, in order.
    pub keys: Vec<Scalar>,
    /// The last row's id (the final tiebreak).
    pub id: RecordId,
}

/// A query on one collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The collection.
    pub collection: CollectionName,
    /// Which records (`Filter::All(vec![])`: all).
    pub filter: Filter,
    /// Sort keys in order; the record id breaks ties (ascending) and is the order when
    /// there is none.
    pub order_by: Vec<(FieldPath, Order)>,
    /// The most records returned.
    pub limit: Option<u32>,
    /// Records skipped first.
    pub offset: Option<u32>,
    /// Keyset pagination: only records after this row in the query's order.
    pub after: Option<After>,
    /// Records deleted here whose delete is not sent yet appear too (with the data the
    /// server last acknowledged), so a list can show them struck through.
    pub include_pending_deletes: bool,
}

impl Query {
    /// Every live record of `collection`, by id.
    pub fn all(collection: CollectionName) -> Self {
        Self {
            collection,
            filter: Filter::All(Vec::new()),
            order_by: Vec::new(),
            limit: None,
            offset: None,
            after: None,
            include_pending_deletes: false,
        }
    }
}

/// An index a collection declares: the fields it is queried by, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    /// The collection.
    pub collection: CollectionName,
    /// The fields, most selective first (equality fields before a range or sort field).
    pub fields: Vec<FieldPath>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bad_filters_are_typed_errors() {
        for bad in [
            Filter::eq("a b", 1),
            Filter::eq("status", serde_json::json!({"x": 1})),
            Filter::eq("status", serde_json::json!([1])),
            Filter::compare("due", Cmp::Lt, Value::Null),
            Filter::one_of("status", [Value::Null]),
            Filter::starts_with("", "x"),
        ] {
            assert!(matches!(bad, Err(Error::InvalidQuery { .. })), "{bad:?}");
        }
        assert!(Filter::eq("site.city", "Lyon").is_ok());
        assert!(Filter::compare("n", Cmp::Ge, 2.5).is_ok());
    }

    #[test]
    fn and_or_flatten() {
        let a = Filter::eq("a", 1).unwrap();
        let b = Filter::eq("b", 2).unwrap();
        let c = Filter::eq("c", 3).unwrap();
        assert_eq!(a.clone().and(b.clone()).and(c.clone()), Filter::All(vec![a.clone(), b.clone(), c.clone()]));
        assert_eq!(a.clone().or(b.clone()).or(c.clone()), Filter::Any(vec![a, b, c]));
    }

    #[test]
    fn numbers_keep_their_kind() {
        assert_eq!(Scalar::from_json(&serde_json::json!(3)).unwrap(), Scalar::Int(3));
        assert_eq!(Scalar::from_json(&serde_json::json!(2.5)).unwrap(), Scalar::Float(2.5));
        assert_eq!(Scalar::from_json(&serde_json::json!(true)).unwrap(), Scalar::Bool(true));
    }
}
