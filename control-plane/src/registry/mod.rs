//! The service registry: the store's objects, validated and indexed into discovery resources.
//!
//! [`keys`] is the store layout, [`index`] the synchronous index that turns changes into
//! versioned resources.

pub mod codec;
pub mod index;
pub mod keys;
pub mod mirror;
pub mod sync;

pub use index::{Change, Index, Resource, ResourceType, Snapshot};
pub use mirror::Mirror;
pub use sync::Registry;

/// A snapshot as the discovery streams receive it.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub snapshot: Snapshot,
    /// When the first store event behind this snapshot reached the control plane (push latency
    /// is measured from here).
    pub observed_at: Option<std::time::Instant>,
    /// The store revision the snapshot reflects.
    pub revision: crate::store::Revision,
    /// False until the first complete listing: streams wait rather than tell proxies that
    /// everything was removed.
    pub synced: bool,
}
