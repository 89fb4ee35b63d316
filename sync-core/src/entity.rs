//! What the app declares per record type: `LocalEntity` and its `ServerMapping`.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::store::FieldPath;

/// A record type the app stores locally and syncs. The whole value is stored as JSON.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sync_core::LocalEntity;
///
/// #[derive(Serialize, Deserialize)]
/// struct WorkOrder { id: String, title: String }
///
/// impl LocalEntity for WorkOrder {
///     const COLLECTION: &'static str = "work_orders";
///     fn id(&self) -> &str { &self.id }
/// }
/// ```
pub trait LocalEntity: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The collection's name; must match `[a-z][a-z0-9_]{0,62}` (checked at build time).
    const COLLECTION: &'static str;

    /// The record's id (a UUIDv7 from [`crate::RecordId::generate`] by default).
    fn id(&self) -> &str;
}

/// Why a [`ServerMapping`] refused a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError(pub String);

/// Converts between the local shape of a record and the server's. Object-safe: the
/// engine holds one `Arc<dyn ServerMapping>` per collection. Both directions are
/// fallible; a failure is reported as [`crate::Error::Mapping`] and nothing is applied.
pub trait ServerMapping: Send + Sync + 'static {
    /// The server's shape of a local record.
    ///
    /// # Errors
    /// A [`MappingError`] when the record cannot be expressed on the server.
    fn to_server(&self, local: &Value) -> Result<Value, MappingError>;

    /// The local shape of a server record. Takes the record by value: pulled data is
    /// not needed afterwards, so a mapping that changes little needs no copy.
    ///
    /// # Errors
    /// A [`MappingError`] when the server's record cannot be expressed locally.
    fn to_local(&self, server: Value) -> Result<Value, MappingError>;

    /// Who chooses the ids of records created on this device. By default the device
    /// does ([`IdAssignment::Client`], UUIDv7s): the server keeps them. A mapping for a
    /// server that gives created records ids of its own answers
    /// [`IdAssignment::Server`]: the create goes out under the local id, and when the
    /// server answers with the id it chose, the engine renames the record, rewrites the
    /// foreign keys of related records that point at it (see [`crate::pattern::Parent`])
    /// and remembers the old id ([`crate::Engine::server_id`]).
    fn id_assignment(&self) -> IdAssignment {
        IdAssignment::Client
    }
}

/// Who chooses the ids of records created on a device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IdAssignment {
    /// The device: the server stores records under the ids they were created with.
    #[default]
    Client,
    /// The server may store a created record under an id of its own and answer with it.
    Server {
        /// The field of the local data that holds the record's own id (such as `id`),
        /// rewritten to the server's id; None when the data does not hold its id.
        id_field: Option<FieldPath>,
    },
}

/// The mapping used when none is given: both shapes are the same.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityMapping;

impl ServerMapping for IdentityMapping {
    fn to_server(&self, local: &Value) -> Result<Value, MappingError> {
        Ok(local.clone())
    }

    fn to_local(&self, server: Value) -> Result<Value, MappingError> {
        Ok(server)
    }
}
