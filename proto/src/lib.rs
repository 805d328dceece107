//! Weft's gRPC API: generated tonic/prost code for the `.proto` files beside this crate.
//!
//! Wire types only. Each consumer converts them into its domain types through one `TryFrom`
//! per type (the validation boundary); nothing past that boundary sees `pb` types.

/// `weft.identity.v1`: the certificate service.
pub mod identity {
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("weft.identity.v1");
    }
}
