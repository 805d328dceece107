//! Where the registry lives: a small key-value contract ([`Store`]) with two implementations,
//! [`etcd::EtcdStore`] for production clusters and [`memory::MemoryStore`] (embedded, optional
//! snapshot file) for one machine.
//!
//! Keys are relative to the store's prefix (default `/weft/`) and laid out as
//! [`crate::registry::keys`] documents. Values are JSON. This module knows nothing of their
//! meaning: it stores bytes, revisions and leases with etcd's semantics, so the two
//! implementations pass the same test suite (`tests/tests/store.rs`).

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub mod etcd;
pub mod memory;
pub use etcd::{EtcdConfig, EtcdStore};
pub use memory::MemoryStore;

/// A store revision: increases by one with every successful write transaction, store-wide.
pub type Revision = i64;

/// A lease: keys attached to it are deleted when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// One stored key, relative to the store prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the last write to this key.
    pub mod_revision: Revision,
    /// The revision that created this key (kept across updates; a key deleted and written
    /// again is created anew). Orders routes by age, as Gateway API breaks ties.
    pub create_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// Everything under a prefix, as of one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The store revision the listing was read at; watch from `revision + 1` for no gap.
    pub revision: Revision,
    /// Ordered by key.
    pub items: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    /// `revision` is the revision of the delete (lease expiry included).
    Delete {
        key: String,
        revision: Revision,
    },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// The events of one or more revisions, in revision order.
pub type EventStream = BoxStream<'static, Result<Vec<Event>, StoreError>>;

/// A precondition of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's last write happened at `revision`; 0 means the key does not exist.
    ModRevision { key: String, revision: Revision },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    /// Deleting a missing key is not an error.
    Delete { key: String },
}

/// An atomic write: when every comparison holds, every op is applied at one new revision;
/// otherwise nothing is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Applied at this revision.
    Committed(Revision),
    /// A comparison failed; nothing was written.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The watch start revision has been compacted away: list again and diff.
    #[error("revision {requested} is compacted (oldest available {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// No endpoint could serve the request; the caller retries with backoff.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store: {0}")]
    Other(String),
}

/// The registry's storage contract. Implementations are cheap to share (`Arc<dyn Store>`) and
/// retry transient failures internally where that is safe; what they return as
/// [`StoreError::Unavailable`] the caller retries with backoff.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// A name for logs and metrics: "etcd" or "memory".
    fn kind(&self) -> &'static str;

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>>;

    /// Every key starting with `prefix` ("" for all), ordered by key, at one revision.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, StoreError>>;

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, StoreError>>;

    /// Every change under `prefix` from revision `from` (inclusive) on, with no gap. Ends with
    /// [`StoreError::Compacted`] when `from` is no longer available, and with another error when
    /// the store is lost (after the implementation's own retries); the caller lists again.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from: Revision,
    ) -> BoxFuture<'a, Result<EventStream, StoreError>>;

    /// Grants a lease of at least `ttl` (whole seconds, rounded up, at least 1).
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>>;

    /// Renews a lease for its full TTL.
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Revokes a lease and deletes its keys. Revoking a missing lease is not an error.
    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;
}
