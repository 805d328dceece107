//! Weft's gRPC API: generated tonic/prost code for the `.proto` files beside this crate.
//!
//! The generated wire types, and [`model`]: the validated domain types the control plane and the
//! proxy both convert them into, through one `TryFrom` per type (the validation boundary, shared
//! so both sides accept exactly the same resources); nothing past that boundary sees `pb` types.
//!
//! With the feature `otlp`: OpenTelemetry's trace export service ([`otlp`]) and the tracer both
//! binaries use ([`trace`]).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod client;
pub mod codec;
pub mod limits;
pub mod model;
pub mod process;
pub mod process_metrics;
#[cfg(feature = "otlp")]
pub mod trace;

/// `weft.identity.v1`: the certificate service.
pub mod identity {
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("weft.identity.v1");

        impl std::fmt::Debug for CertifyRequest {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("CertifyRequest")
                    .field(
                        "token",
                        &if self.token.is_empty() {
                            ""
                        } else {
                            "<redacted>"
                        },
                    )
                    .field("csr_der", &format_args!("{} bytes", self.csr_der.len()))
                    .field("requested_ttl", &self.requested_ttl)
                    .finish()
            }
        }

        #[cfg(test)]
        mod tests {
            #[test]
            fn debug_never_prints_the_token() {
                let req = super::CertifyRequest {
                    token: "eyJsecret.eyJpayload.sig".into(),
                    ..Default::default()
                };
                let dbg = format!("{req:?}");
                assert!(!dbg.contains("eyJ") && dbg.contains("<redacted>"), "{dbg}");
            }
        }
    }
}

/// `weft.mesh.v1`: the resource types (services, endpoints, HTTP routes, the trust bundle).
pub mod mesh {
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("weft.mesh.v1");

        /// `type_url`s of the discovery resources, as carried in `google.protobuf.Any`.
        pub const SERVICE_TYPE_URL: &str = "type.googleapis.com/weft.mesh.v1.Service";
        pub const ENDPOINTS_TYPE_URL: &str = "type.googleapis.com/weft.mesh.v1.Endpoints";
        pub const TRUST_BUNDLE_TYPE_URL: &str = "type.googleapis.com/weft.mesh.v1.TrustBundle";
    }
}

/// `weft.discovery.v1`: delta discovery (incremental xDS transport).
pub mod discovery {
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("weft.discovery.v1");
    }
}

/// `weft.registry.v1`: endpoint registration.
pub mod registry {
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("weft.registry.v1");
    }
}

/// `weft.config.v1`: the config API behind `weftctl apply/get/delete`.
pub mod config {
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("weft.config.v1");
    }
}

/// OTLP (`opentelemetry.proto.*`): the trace export service and its messages, generated from
/// the OpenTelemetry definitions vendored under `opentelemetry/` (feature `otlp`).
#[cfg(feature = "otlp")]
pub mod otlp {
    #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.common.v1");
        }
    }
    pub mod resource {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.resource.v1");
        }
    }
    pub mod trace {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.trace.v1");
        }
    }
    pub mod collector {
        pub mod trace {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
            }
        }
    }
}
