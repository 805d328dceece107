//! The names a Weft install and its injected pods agree on. `weftctl install` writes objects
//! with these names and the injector refers to them; change one here and both follow.

/// The control plane's namespace (never injected).
pub const NAMESPACE: &str = "weft-system";
/// The control plane's Deployment, Service and ServiceAccount.
pub const CONTROL_PLANE: &str = "weft-control-plane";
/// The service account whose tokens `weftctl login --token-file` turns into admin certificates.
pub const ADMIN_SERVICE_ACCOUNT: &str = "weft-admin";
/// The ConfigMap with the trust bundle (key [`TRUST_BUNDLE_KEY`]), mounted into every proxy.
pub const TRUST_BUNDLE_CONFIGMAP: &str = "weft-trust-bundle";
/// The trust bundle's key in [`TRUST_BUNDLE_CONFIGMAP`].
pub const TRUST_BUNDLE_KEY: &str = "ca.crt";
/// The CA secret, in cert-manager's layout (`tls.crt`, `tls.key`, `ca.crt`).
pub const CA_SECRET: &str = "weft-ca";
/// The injector webhook's serving certificate (a `kubernetes.io/tls` secret).
pub const INJECTOR_TLS_SECRET: &str = "weft-injector-tls";
/// The `MutatingWebhookConfiguration`.
pub const WEBHOOK_CONFIGURATION: &str = "weft-injector";
/// The control plane's gRPC (mTLS) port.
pub const GRPC_PORT: u16 = 8443;
/// The control plane's admin port (/live, /ready, /metrics on the pod IP for Prometheus; /ca on
/// loopback only).
pub const CONTROL_PLANE_ADMIN_PORT: u16 = 9191;
/// The injector's HTTPS port in the control-plane pod (the Service exposes it as 443).
pub const INJECTOR_PORT: u16 = 9443;
/// The injector's path.
pub const INJECTOR_PATH: &str = "/inject";
/// The audience of the projected service-account token a proxy presents
/// (the control plane's `--jwt-audience`).
pub const TOKEN_AUDIENCE: &str = "weft";
/// The proxy's uid (its own traffic is exempt from redirection by this uid).
pub const PROXY_UID: u32 = 2102;
/// The proxy's inbound (mTLS) port.
pub const PROXY_INBOUND_PORT: u16 = 4143;
/// The proxy's outbound port (the application's redirected connections).
pub const PROXY_OUTBOUND_PORT: u16 = 4140;
/// The proxy's admin port (/live, /ready, /metrics), never redirected.
pub const PROXY_ADMIN_PORT: u16 = 4191;
/// Opt-in and opt-out label, on a namespace or a pod template: `enabled` | `disabled`.
pub const INJECT_LABEL: &str = "weft.io/inject";
/// Overrides the service a pod's endpoint is registered under.
pub const SERVICE_ANNOTATION: &str = "weft.io/service";
/// Prefix of the per-pod override annotations (`config.weft.io/proxy-cpu-request`, …).
pub const CONFIG_ANNOTATION_PREFIX: &str = "config.weft.io/";

/// The control plane's address as proxies in the cluster dial it.
pub fn control_plane_addr() -> String {
    format!("{CONTROL_PLANE}.{NAMESPACE}.svc:{GRPC_PORT}")
}

/// The registry of the default images (`<registry>/weft-proxy:<version>`). A placeholder: an
/// install sets its own (`weftctl install --registry`, the control plane's `--proxy-image`).
pub const DEFAULT_REGISTRY: &str = "ghcr.io/weft-mesh";
/// The containers the injector adds.
pub const PROXY_CONTAINER: &str = "weft-proxy";
pub const INIT_CONTAINER: &str = "weft-init";
/// Annotation on an injected pod: `injected`.
pub const STATUS_ANNOTATION: &str = "weft.io/inject-status";
/// Annotation on an injected pod: the proxy version.
pub const VERSION_ANNOTATION: &str = "weft.io/proxy-version";
/// Annotation on an injected pod: the trust root's SHA-256 fingerprint.
pub const TRUST_ROOT_ANNOTATION: &str = "weft.io/trust-root-sha256";
/// Annotation on an injected pod: the keys the injector created (so uninject removes exactly
/// those and gives back the object it was given).
pub const CREATED_ANNOTATION: &str = "weft.io/inject-created";
