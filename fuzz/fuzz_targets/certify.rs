//! A `Certify` request as the control plane's certificate service receives it: protobuf decode,
//! then `IdentityService::certify` (the `CertifyRequest` → `CertifyInput` `TryFrom`: TTL and
//! CSR checks; the token through the `Attestor`; the CSR through `VerifiedCsr` and the CA),
//! with the fixture CA, join-token key and JWKS. The future never waits on anything, so it is
//! polled once.
#![no_main]
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use prost::Message;
use weft_control_plane::identity::IdentityService;
use weft_proto::identity::v1::CertifyRequest;
use weft_proto::identity::v1::identity_server::Identity;

fn service() -> &'static IdentityService {
    static S: OnceLock<IdentityService> = OnceLock::new();
    S.get_or_init(|| {
        let f = weft_fuzz::fixtures();
        IdentityService::new(
            f.ca_source.clone(),
            f.attestor.clone(),
            Arc::new(Default::default()),
        )
    })
}

fn seeds() -> Vec<Vec<u8>> {
    let csrs = weft_fuzz::csrs();
    let mut out = Vec::new();
    for (i, token) in weft_fuzz::tokens().into_iter().enumerate() {
        for csr in csrs.iter().take(2) {
            out.push(
                CertifyRequest {
                    token: token.clone(),
                    csr_der: csr.clone(),
                    requested_ttl: (i == 1).then_some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                }
                .encode_to_vec(),
            );
        }
    }
    out
}

libfuzzer_sys::fuzz_target!(
    init: {
        weft_fuzz::seeds_then_exit(seeds);
        service();
    },
    |data: &[u8]| {
        let Ok(req) = CertifyRequest::decode(data) else { return };
        let fut = service().certify(tonic::Request::new(req));
        let mut fut = std::pin::pin!(fut);
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(_) => {}
            Poll::Pending => panic!("certify waited on something"),
        }
    }
);
