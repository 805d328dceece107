//! The sidecar injector: `inject(object, config) -> (object', report)` over Kubernetes objects
//! as JSON values, used by both the admission webhook (in the control plane) and
//! `weftctl inject` (in the CLI). No I/O.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod names;
