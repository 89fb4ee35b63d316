//! One-to-many: a child collection whose records point at parent records.

use sync_core::pattern::{LocalRecordState, Parent, PullAction, PullMode, Resolution};
use sync_core::protocol::Change;
use sync_core::store::Conflict;
use sync_core::{CollectionName, Error, FieldPath, SyncPattern};

/// One-to-many, on the child's side: the records of this collection hold, in a field,
/// the id of a record of a parent collection (order lines → orders, visits → sites).
/// Everything else (base versions, conflicts, resolvers) is the inner pattern's.
///
/// **When to use it:** a parent and its children are created and edited together
/// offline, and the server checks the link (a foreign key), or gives created records
/// ids of its own.
///
/// **What the server needs:** the inner pattern's needs; where the server assigns ids,
/// it answers a create with `"record_id"` (the reference server does for collections
/// configured with `ids = "server"`), and the parent's `ServerMapping` says so with
/// [`sync_core::IdAssignment::Server`].
///
/// **Behaviour**, within every push:
/// - parents before children: a child's change goes only once the server has
///   acknowledged the parent it points at (a new parent's create goes in an earlier
///   batch of the same cycle);
/// - when the server gives the parent its own id, the local id → server id map rewrites
///   the key in every pending child, created or updated, before it is sent (and in the
///   children's local data, with a [`sync_core::SyncEvent::RecordChanged`]);
/// - deletes go children first: a parent's delete waits until no pending change of a
///   child that points at it (locally or on the server) is left.
///
/// A child held back this way is not blocked for good: it goes in the same cycle as soon
/// as its parent is acknowledged. A parent that is parked as failed or held by a conflict
/// holds its new children until it is settled.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use serde_json::Value;
/// use sync_core::entity::{IdAssignment, MappingError};
/// use sync_core::{CollectionSpec, FieldPath, LocalEntity, ServerMapping};
/// use sync_patterns::{ConflictDetection, OneToMany};
///
/// #[derive(Serialize, Deserialize)]
/// struct Order { id: String, customer: String }
/// impl LocalEntity for Order {
///     const COLLECTION: &'static str = "orders";
///     fn id(&self) -> &str { &self.id }
/// }
///
/// #[derive(Serialize, Deserialize)]
/// struct OrderLine { id: String, order_id: String, product: String, quantity: u32 }
/// impl LocalEntity for OrderLine {
///     const COLLECTION: &'static str = "order_lines";
///     fn id(&self) -> &str { &self.id }
/// }
///
/// /// The server numbers orders itself; the order's id lives in its `id` field.
/// struct OrderMapping;
/// impl ServerMapping for OrderMapping {
///     fn to_server(&self, local: &Value) -> Result<Value, MappingError> { Ok(local.clone()) }
///     fn to_local(&self, server: Value) -> Result<Value, MappingError> { Ok(server) }
///     fn id_assignment(&self) -> IdAssignment {
///         IdAssignment::Server { id_field: FieldPath::new("id").ok() }
///     }
/// }
///
/// # fn main() -> Result<(), sync_core::Error> {
/// let orders = CollectionSpec::of::<Order>(ConflictDetection::new()).mapping(OrderMapping);
/// let lines = CollectionSpec::of::<OrderLine>(
///     OneToMany::new(ConflictDetection::new()).belongs_to("order_id", "orders")?,
/// );
/// # let _ = (orders, lines);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct OneToMany<P> {
    inner: P,
    parents: Vec<Parent>,
}

impl<P: SyncPattern> OneToMany<P> {
    /// Children synced with `inner` (such as [`crate::ConflictDetection`] or
    /// [`crate::LastWriteWins`]); name their parents with [`OneToMany::belongs_to`].
    pub fn new(inner: P) -> Self {
        Self { inner, parents: Vec::new() }
    }

    /// The child's `field` (a dotted path) holds the id of a record of `collection`.
    /// A child may belong to several parents; `collection` may be its own (a tree).
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] for a bad field path, [`Error::InvalidCollectionName`] for
    /// a bad collection name. (A collection that is not registered is found by
    /// `EngineBuilder::build`.)
    pub fn belongs_to(mut self, field: &str, collection: &str) -> Result<Self, Error> {
        self.parents.push(Parent { field: FieldPath::new(field)?, collection: CollectionName::new(collection)? });
        Ok(self)
    }

    /// The inner pattern.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<P: SyncPattern> SyncPattern for OneToMany<P> {
    fn name(&self) -> &'static str {
        "one_to_many"
    }

    fn accepts_local_writes(&self) -> bool {
        self.inner.accepts_local_writes()
    }

    fn pull_mode(&self) -> PullMode {
        self.inner.pull_mode()
    }

    fn sends_base_version(&self) -> bool {
        self.inner.sends_base_version()
    }

    fn on_incoming(&self, local: Option<&LocalRecordState>, incoming: &Change) -> PullAction {
        self.inner.on_incoming(local, incoming)
    }

    fn resolve(&self, conflict: &Conflict) -> Resolution {
        self.inner.resolve(conflict)
    }

    fn parents(&self) -> Vec<Parent> {
        self.parents.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConflictDetection, LastWriteWins};

    #[test]
    fn delegates_to_the_inner_pattern_and_names_its_parents() {
        let lww = OneToMany::new(LastWriteWins).belongs_to("order_id", "orders").unwrap();
        assert!(!lww.sends_base_version());
        let cd = OneToMany::new(ConflictDetection::new()).belongs_to("site.id", "sites").unwrap();
        assert!(cd.sends_base_version());
        assert_eq!(
            cd.parents(),
            vec![Parent {
                field: FieldPath::new("site.id").unwrap(),
                collection: CollectionName::new("sites").unwrap()
            }]
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(OneToMany::new(LastWriteWins).belongs_to("order id", "orders").is_err());
        assert!(OneToMany::new(LastWriteWins).belongs_to("order_id", "Orders!").is_err());
    }
}
