//! Weft's gRPC API: generated tonic/prost code for the `.proto` files beside this crate.
//!
//! Wire types only. Each consumer converts them into its domain types through one `TryFrom`
//! per type (the validation boundary); nothing past that boundary sees `pb` types.

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
