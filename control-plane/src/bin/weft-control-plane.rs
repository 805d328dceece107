//! `weft-control-plane`: the certificate service, the service registry (embedded or etcd),
//! delta discovery, endpoint registration and the config API, on one mTLS gRPC port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use weft_certs::{SpiffeId, TrustDomain};
use weft_control_plane::attest::{JwksSource, K8sConfig};
use weft_control_plane::injector::{Injector, InjectorConfig};
use weft_control_plane::model::DefaultInbound;
use weft_control_plane::store::EtcdConfig;
use weft_control_plane::{Config, ControlPlane, StoreConfig};

#[derive(Parser)]
#[command(name = "weft-control-plane", version, about = "The Weft control plane")]
struct Args {
    /// CA directory: tls.crt, tls.key, ca.crt (cert-manager layout) and token.key.
    #[arg(long, env = "WEFT_CA_DIR")]
    ca_dir: PathBuf,
    /// Trust domain, when the CA certificate carries no spiffe:// URI SAN.
    #[arg(long, env = "WEFT_TRUST_DOMAIN")]
    trust_domain: Option<TrustDomain>,
    /// gRPC (mTLS) listen address.
    #[arg(long, env = "WEFT_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Admin HTTP address (/metrics, /live, /ready; /ca and POST /ca/reload for root
    /// rotation). Localhost unless Prometheus or `weftctl ca rotate` on another host must reach it.
    #[arg(long, env = "WEFT_ADMIN", default_value = "127.0.0.1:9191")]
    admin: SocketAddr,
    /// What the admin port answers clients that are not on loopback: `public` (only /live,
    /// /ready and /metrics; 403 for the rest) or `all` (also /ca and POST /ca/reload, for
    /// `weftctl ca rotate --admin` across hosts on a network you trust).
    #[arg(long, env = "WEFT_ADMIN_REMOTE", value_enum, default_value = "public")]
    admin_remote: weft_control_plane::admin::Remote,
    /// Longest lifetime of an issued SVID.
    #[arg(long, env = "WEFT_SVID_TTL", default_value = "24h", value_parser = parse_svid_ttl)]
    svid_ttl: Duration,
    /// DNS SAN for the serving certificate (repeatable).
    #[arg(long = "server-name", env = "WEFT_SERVER_NAMES", value_delimiter = ',')]
    server_names: Vec<String>,
    /// JWKS file for Kubernetes service-account token attestation.
    #[arg(long, env = "WEFT_JWKS", requires_all = ["jwt_issuer", "jwt_audience"], conflicts_with = "jwks_url")]
    jwks: Option<PathBuf>,
    /// The JWKS fetched from the API server instead (in a cluster:
    /// https://kubernetes.default.svc/openid/v1/jwks), and refreshed.
    #[arg(long, env = "WEFT_JWKS_URL", requires_all = ["jwt_issuer", "jwt_audience", "jwks_ca"])]
    jwks_url: Option<String>,
    /// The CA that verifies --jwks-url's server (in a pod: the service-account ca.crt).
    #[arg(long, env = "WEFT_JWKS_CA")]
    jwks_ca: Option<PathBuf>,
    /// A bearer token sent to --jwks-url, read per fetch (in a pod: its service-account token).
    #[arg(long, env = "WEFT_JWKS_TOKEN_FILE")]
    jwks_token_file: Option<PathBuf>,
    /// Required `iss` of Kubernetes tokens.
    #[arg(long, env = "WEFT_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required audience of Kubernetes tokens.
    #[arg(long, env = "WEFT_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// etcd client URLs (comma-separated, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379).
    /// Without them the registry is embedded in this process.
    #[arg(long, env = "WEFT_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = "/weft/")]
    etcd_prefix: String,
    /// Embedded store only: a snapshot file that keeps services, routes and policies across
    /// restarts.
    #[arg(long, env = "WEFT_STORE_SNAPSHOT", conflicts_with = "etcd_endpoints")]
    store_snapshot: Option<PathBuf>,
    /// An identity allowed to change config (repeatable). Default: the one `weftctl login`
    /// mints, spiffe://<trust-domain>/ns/weft-system/sa/weft-admin.
    #[arg(
        long = "admin-identity",
        env = "WEFT_ADMIN_IDENTITIES",
        value_delimiter = ','
    )]
    admin_identities: Vec<SpiffeId>,
    /// Lease TTL of proxy registrations: how long a dead proxy's endpoints linger.
    #[arg(long, env = "WEFT_REGISTRATION_TTL", default_value = "20s", value_parser = parse_registration_ttl)]
    registration_ttl: Duration,
    /// Connections the gRPC port keeps open at once (handshaking or established); past it, new
    /// connections are closed at once (connections_refused_total{listener="grpc"}).
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = weft_control_plane::transport::MAX_CONNECTIONS)]
    max_connections: usize,
    /// The decision for inbound requests to a service that sets no spec.defaultInboundPolicy
    /// and that no Allow policy speaks about: allow (every client, plaintext included),
    /// authenticated (any client with a verified mesh identity) or deny (nobody; health probe
    /// paths excepted).
    #[arg(long, env = "WEFT_DEFAULT_INBOUND_POLICY", default_value = "allow", value_parser = DefaultInbound::parse)]
    default_inbound_policy: DefaultInbound,
    /// The sidecar injector's HTTPS address (POST /inject, the MutatingWebhookConfiguration's
    /// service; GET /live and /ready for kubelet). Without it there is no injector.
    #[arg(long, env = "WEFT_INJECTOR_LISTEN", requires = "injector_tls_dir")]
    injector_listen: Option<SocketAddr>,
    /// The injector's serving certificate: tls.crt and tls.key (a Kubernetes TLS secret
    /// mounted as a directory). Re-read when they change.
    #[arg(long, env = "WEFT_INJECTOR_TLS_DIR")]
    injector_tls_dir: Option<PathBuf>,
    /// The proxy image injected pods run.
    #[arg(long, env = "WEFT_PROXY_IMAGE", default_value_t = weft_inject::config::default_image("weft-proxy"))]
    proxy_image: String,
    /// The init image injected pods run (`weft-proxy init`; has iptables).
    #[arg(long, env = "WEFT_PROXY_INIT_IMAGE", default_value_t = weft_inject::config::default_image("weft-proxy-init"))]
    proxy_init_image: String,
    /// The control plane's address as injected proxies dial it.
    #[arg(long, env = "WEFT_INJECTOR_CONTROL_PLANE_ADDR", default_value_t = weft_inject::names::control_plane_addr())]
    injector_control_plane_addr: String,
    /// The control plane's own namespace, never injected.
    #[arg(long, env = "WEFT_NAMESPACE", default_value = weft_inject::names::NAMESPACE)]
    namespace: String,
    /// Tracing: export spans of the control plane's RPCs (Certify, Apply, …) and discovery
    /// pushes over OTLP (--otlp-protocol) to this collector (http://HOST:PORT, or https:// with --otlp-ca).
    /// Without it, nothing is traced.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// PEM roots that verify an https:// --otlp-endpoint.
    #[arg(long, env = "WEFT_OTLP_CA", requires = "otlp_endpoint")]
    otlp_ca: Option<PathBuf>,
    /// How spans reach the collector: grpc (OTLP/gRPC) or http/protobuf (OTLP/HTTP: POST to
    /// the endpoint's path, /v1/traces when it has none).
    #[arg(long, env = "WEFT_OTLP_PROTOCOL", default_value = "grpc", value_parser = weft_proto::trace::parse_protocol, requires = "otlp_endpoint")]
    otlp_protocol: weft_proto::trace::Protocol,
    /// The share (0 to 1) of RPCs with no valid `traceparent`, and of discovery pushes no
    /// traced change caused, that start a trace. RPCs with one follow its sampled flag.
    /// Control-plane RPCs are few: 1 is a sensible setting.
    #[arg(long, env = "WEFT_TRACE_SAMPLE_RATE", default_value_t = 0.0, value_parser = weft_proto::trace::parse_sample_rate, requires = "otlp_endpoint")]
    trace_sample_rate: f64,
    /// `service.name` of the exported spans.
    #[arg(
        long,
        env = "WEFT_TRACE_SERVICE_NAME",
        default_value = "weft-control-plane"
    )]
    trace_service_name: String,
}

fn parse_registration_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(3) || d > Duration::from_secs(3600) {
        return Err(format!("{s} is outside 3s..=1h"));
    }
    Ok(d)
}

/// `--svid-ttl`: a duration of at least the shortest TTL a client may request.
fn parse_svid_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    let min = weft_control_plane::identity::MIN_TTL;
    if d < min {
        return Err(format!(
            "{s} is shorter than the minimum {}",
            humantime::format_duration(min)
        ));
    }
    Ok(d)
}

fn main() -> ExitCode {
    weft_proto::process::exit_with_parent();
    let args = Args::parse();
    init_tracing(&args.log_format);
    weft_proto::process::raise_open_files_limit_and_log();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft-control-plane: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Before anything starts: from here on SIGHUP cannot end the process.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let server_names = if args.server_names.is_empty() {
        Config::DEFAULT_SERVER_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.server_names
    };
    let jwks = match (args.jwks, args.jwks_url, args.jwks_ca) {
        (Some(file), _, _) => Some(JwksSource::File(file)),
        (None, Some(url), Some(ca)) => Some(JwksSource::Url {
            url,
            ca,
            token_file: args.jwks_token_file,
        }),
        _ => None,
    };
    let k8s = match (jwks, args.jwt_issuer, args.jwt_audience) {
        (Some(jwks), Some(issuer), Some(audience)) => Some(K8sConfig {
            jwks,
            issuer,
            audience,
        }),
        _ => None,
    };
    let config = Config {
        ca_dir: args.ca_dir,
        trust_domain: args.trust_domain,
        listen: args.listen,
        admin: args.admin,
        svid_ttl: args.svid_ttl,
        server_names,
        k8s,
        store: if args.etcd_endpoints.is_empty() {
            StoreConfig::Memory {
                snapshot: args.store_snapshot,
            }
        } else {
            StoreConfig::Etcd(EtcdConfig {
                endpoints: args.etcd_endpoints,
                prefix: args.etcd_prefix,
                ..EtcdConfig::default()
            })
        },
        admin_identities: args.admin_identities,
        registration_ttl: args.registration_ttl,
        max_connections: args.max_connections,
        admin_remote: args.admin_remote,
    };
    let trace = args
        .otlp_endpoint
        .map(|endpoint| weft_proto::trace::TraceConfig {
            endpoint,
            protocol: args.otlp_protocol,
            ca: args.otlp_ca,
            sample_rate: args.trace_sample_rate,
            service_name: args.trace_service_name,
        });
    let cp = ControlPlane::start_traced(config, args.default_inbound_policy, trace).await?;
    let (stop_injector, stopped) = tokio::sync::watch::channel(false);
    if let (Some(listen), Some(tls_dir)) = (args.injector_listen, args.injector_tls_dir) {
        let inject = weft_inject::InjectConfig {
            proxy_image: args.proxy_image,
            init_image: args.proxy_init_image,
            control_plane_addr: args.injector_control_plane_addr,
            control_plane_namespace: args.namespace,
            trust_root_sha256: cp.trust_bundle().fingerprints().into_iter().next(),
        };
        let config = InjectorConfig {
            listen,
            tls_dir,
            inject,
        };
        let injector = Injector::start(config, cp.metrics(), stopped).await?;
        tracing::info!(addr = %injector.addr, "injector started");
    }
    shutdown_signal(hup, cp.ca().clone()).await;
    tracing::info!("shutting down");
    stop_injector.send_replace(true);
    cp.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C. SIGHUP re-reads the CA directory now (a root rotation's
/// step; the directory is also polled every 2 s); a directory that does not load is logged and
/// the last good CA keeps serving. SIGHUP never ends the process.
async fn shutdown_signal(
    mut hup: Option<tokio::signal::unix::Signal>,
    ca: std::sync::Arc<weft_control_plane::rotation::CaSource>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading the CA directory");
                let ca = ca.clone();
                match tokio::task::spawn_blocking(move || ca.reload(true)).await {
                    Ok(Ok(changed)) => tracing::info!(changed, "SIGHUP: CA directory reloaded; still serving"),
                    Ok(Err(_)) => {} // logged by reload; the last good CA serves
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: reload task failed"),
                }
            }
        }
    }
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
