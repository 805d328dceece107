//! The service registry: the store's objects, validated and indexed into discovery resources.
//!
//! [`keys`] is the store layout, [`index`] the synchronous index that turns changes into
//! versioned resources.

pub mod index;
pub mod keys;

pub use index::{Change, Index, Resource, ResourceType, Snapshot};
