//! `weft-proxy run`: the sidecar.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand, ValueEnum};
use weft_certs::TrustDomain;
use weft_proto::model::{self, ObjectRef};
use weft_proxy::identity::ControlPlane;
use weft_proxy::limits::Limits;
use weft_proxy::listen::{DataPathConfig, MtlsMode};
use weft_proxy::{Config, InboundConfig, Proxy};

#[derive(Parser)]
#[command(name = "weft-proxy", version, about = "The Weft sidecar proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Install the nat rules that send a pod's TCP through its proxy (the init container's
    /// job); --cleanup removes them, --dry-run prints them.
    Init(weft_proxy::init::Args),
    /// Wait until a proxy's admin /ready answers 200 (for a Kubernetes postStart hook or a
    /// script); exits 1 with what it last saw if the timeout passes first.
    WaitReady(WaitReadyArgs),
}

#[derive(clap::Args)]
struct WaitReadyArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:4191")]
    admin: SocketAddr,
    /// How long to wait.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    timeout: Duration,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The control plane's gRPC address (host:port).
    #[arg(long, env = "WEFT_CONTROL_PLANE")]
    control_plane: String,
    /// PEM file of the roots to trust (the CA's ca.crt); the live bundle then comes over
    /// discovery.
    #[arg(long, env = "WEFT_TRUST_BUNDLE")]
    trust_bundle: PathBuf,
    /// The trust domain. Default: the one the bundle's root names (its spiffe://<td> URI SAN,
    /// as `weftctl ca init` makes it); a value that contradicts the bundle is refused.
    #[arg(long, env = "WEFT_TRUST_DOMAIN")]
    trust_domain: Option<TrustDomain>,
    /// Join token or Kubernetes service account token file (read again whenever needed).
    #[arg(long, env = "WEFT_TOKEN_FILE")]
    token_file: PathBuf,
    /// Admin HTTP address (/live, /ready, /metrics, /config_dump, /certs, POST /shutdown).
    #[arg(long, env = "WEFT_ADMIN", default_value = "127.0.0.1:4191")]
    admin: SocketAddr,
    /// Requested certificate lifetime (e.g. 1h); default: the control plane's.
    #[arg(long, env = "WEFT_CERT_TTL", value_parser = humantime::parse_duration)]
    cert_ttl: Option<Duration>,
    /// This instance's name in the control plane's logs; default: the host name.
    #[arg(long, env = "WEFT_NODE_ID")]
    node_id: Option<String>,
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// The service this workload's inbound endpoint is registered under (NAMESPACE/NAME).
    /// Without it nothing is registered.
    #[arg(long, env = "WEFT_SERVICE", value_parser = parse_service)]
    service: Option<ObjectRef>,
    /// Labels of the registered endpoint (k=v,k2=v2), e.g. version=v2.
    #[arg(long, env = "WEFT_LABELS", value_parser = parse_labels, default_value = "")]
    labels: Labels,
    /// The application's port on 127.0.0.1, for inbound connections that were not redirected
    /// (redirected ones go to the port they were for).
    #[arg(long, env = "WEFT_APP_PORT")]
    app_port: Option<u16>,
    /// Health-probe paths answered for GET and HEAD from any client, plaintext included, even
    /// under --mtls strict or a denying policy (kubelet cannot present a certificate):
    /// PORT:/path, comma-separated. The Kubernetes injector sets it from the pod's probes.
    #[arg(long, env = "WEFT_PROBE_PATHS", value_parser = parse_probe_path, value_delimiter = ',')]
    probe_paths: Vec<(u16, String)>,
    /// This workload's default for inbound requests no Allow policy speaks about: allow,
    /// authenticated or deny. It only tightens: the strictest of it and the served services'
    /// own defaults applies. Default: the services' (the control plane's).
    #[arg(long, env = "WEFT_DEFAULT_INBOUND_POLICY", value_parser = model::DefaultInbound::parse)]
    default_inbound_policy: Option<model::DefaultInbound>,
    /// Inbound listener: mTLS from peer proxies (and plaintext in permissive mode), and the
    /// connections `weft-proxy init` redirects. It runs when --app-port is given, or when this
    /// is given explicitly (flag or env).
    #[arg(long, env = "WEFT_INBOUND", default_value = "0.0.0.0:4143")]
    inbound: SocketAddr,
    /// This pod's inbound ports are all redirected to the proxy (`weft-proxy init`): client
    /// proxies then dial the port their application asked for, and every port of the pod is
    /// reached with the client's identity. The injector sets it.
    #[arg(long, env = "WEFT_INBOUND_REDIRECTED")]
    inbound_redirected: bool,
    /// Set from the parse: whether --inbound was given rather than defaulted.
    #[arg(skip)]
    inbound_explicit: bool,
    /// The IP registered for the inbound endpoint; default: the inbound IP, or if that is
    /// 0.0.0.0, the local IP that reaches the control plane.
    #[arg(long, env = "WEFT_ADVERTISE_IP")]
    advertise_ip: Option<IpAddr>,
    /// Outbound listener: iptables-redirected connections and HTTP-proxy requests.
    #[arg(long, env = "WEFT_OUTBOUND", default_value = "127.0.0.1:4140")]
    outbound: SocketAddr,
    /// A local port that forwards to one service: LOCAL_ADDR=SERVICE.NAMESPACE:PORT
    /// (LOCAL_ADDR may be a bare port on 127.0.0.1). Repeatable; comma-separated in the env.
    #[arg(long, env = "WEFT_UPSTREAM", value_parser = parse_upstream, value_delimiter = ',')]
    upstream: Vec<(SocketAddr, String)>,
    /// Threads that run the proxy (1..=64). One serves a sidecar's traffic with the fewest
    /// wake-ups; raise it only for a proxy that needs more than one core.
    #[arg(long, env = "WEFT_PROXY_CORES", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    cores: u16,
    /// How long SIGTERM or POST /shutdown waits for open connections before exiting.
    #[arg(long, env = "WEFT_DRAIN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    drain_timeout: Duration,
    /// Inbound: accept plaintext from clients outside the mesh (permissive) or only mTLS (strict).
    #[arg(long, env = "WEFT_MTLS", value_enum, default_value = "permissive")]
    mtls: Mtls,
    /// Destinations outside the mesh: pass through as plain TCP/HTTP, or refuse.
    #[arg(
        long,
        env = "WEFT_OUTSIDE_MESH",
        value_enum,
        default_value = "passthrough"
    )]
    outside_mesh: OutsideMesh,
    /// How long to wait for a client's first bytes on a port whose protocol is not declared
    /// before treating the connection as opaque TCP.
    #[arg(long, env = "WEFT_DETECT_TIMEOUT", value_parser = humantime::parse_duration, default_value = "100ms")]
    detect_timeout: Duration,
    /// Opaque TCP connections idle (no bytes either way) this long are closed.
    #[arg(long, env = "WEFT_TCP_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "1h")]
    tcp_idle_timeout: Duration,
    /// Accepted HTTP connections (from the application, from peer proxies) with no request in
    /// flight for this long are closed gracefully.
    #[arg(long, env = "WEFT_HTTP_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5m")]
    http_idle_timeout: Duration,
    /// Connecting to a peer proxy or destination, TCP and TLS each.
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s")]
    connect_timeout: Duration,
    /// Tracing: export spans over OTLP (--otlp-protocol) to this collector (http://HOST:PORT, or https://
    /// with --otlp-ca). Given, the proxy also propagates W3C trace context: a sampled
    /// `traceparent` gets a span of ours as its parent. Without it, nothing is traced and the
    /// headers pass untouched.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// PEM roots that verify an https:// --otlp-endpoint.
    #[arg(long, env = "WEFT_OTLP_CA", requires = "otlp_endpoint")]
    otlp_ca: Option<PathBuf>,
    /// How spans reach the collector: grpc (OTLP/gRPC) or http/protobuf (OTLP/HTTP: POST to
    /// the endpoint's path, /v1/traces when it has none).
    #[arg(long, env = "WEFT_OTLP_PROTOCOL", default_value = "grpc", value_parser = weft_proto::trace::parse_protocol, requires = "otlp_endpoint")]
    otlp_protocol: weft_proto::trace::Protocol,
    /// The share (0 to 1) of requests with no valid `traceparent` that start a trace. Requests
    /// with one follow its sampled flag.
    #[arg(long, env = "WEFT_TRACE_SAMPLE_RATE", default_value_t = 0.0, value_parser = weft_proto::trace::parse_sample_rate, requires = "otlp_endpoint")]
    trace_sample_rate: f64,
    /// `service.name` of the exported spans; default: --service's NAMESPACE/NAME, else the
    /// node ID.
    #[arg(long, env = "WEFT_TRACE_SERVICE_NAME")]
    trace_service_name: Option<String>,
    /// One line per HTTP request or TCP connection: off, json or text.
    #[arg(long, env = "WEFT_ACCESS_LOG", value_enum, default_value = "off")]
    access_log: AccessLog,
    /// Write the access log to this file (appended) instead of stderr.
    #[arg(long, env = "WEFT_ACCESS_LOG_FILE")]
    access_log_file: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AccessLog {
    Off,
    Json,
    Text,
}

/// What each data-path listener bounds (docs/configuration.md, "Limits").
#[derive(clap::Args)]
struct LimitArgs {
    /// Connections each listener (inbound, outbound, each --upstream) keeps open at once; past
    /// it, new connections are closed at once (tcp_refused_connections_total).
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections,
          value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    max_connections: usize,
    /// An HTTP/1 request head (first byte to the end of its headers) must arrive within this.
    #[arg(long, env = "WEFT_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    header_read_timeout: Duration,
    /// Largest request head, in bytes (HTTP/1 start line and headers; HTTP/2 header list);
    /// larger ones get 431 (HTTP/1) or a stream error (HTTP/2).
    #[arg(long, env = "WEFT_MAX_HEADER_BYTES", default_value_t = Limits::default().max_header_bytes,
          value_parser = clap::value_parser!(u32).range(1024..))]
    max_header_bytes: u32,
    /// Most header fields in one HTTP/1 request (431 past it).
    #[arg(long, env = "WEFT_MAX_HEADERS", default_value_t = Limits::default().max_headers,
          value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    max_headers: usize,
    /// A request body that sends nothing for this long is cut off.
    #[arg(long, env = "WEFT_BODY_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    body_idle_timeout: Duration,
    /// An HTTP/1 keep-alive connection quiet for one to two of this between requests gives
    /// its buffers back until the next one (0: never).
    #[arg(long, env = "WEFT_HTTP1_PARK_AFTER", value_parser = humantime::parse_duration, default_value = "1s")]
    http1_park_after: Duration,
    /// Streams one HTTP/2 client may have open at once.
    #[arg(long, env = "WEFT_H2_MAX_CONCURRENT_STREAMS", default_value_t = Limits::default().h2_max_concurrent_streams,
          value_parser = clap::value_parser!(u32).range(1..))]
    h2_max_concurrent_streams: u32,
    /// Requests one HTTP/2 client may cancel before their answer within 10 s; past it, once
    /// its cancels outnumber its answered requests (or past ten times it), the connection gets
    /// a GOAWAY (the rapid-reset attack, CVE-2023-44487).
    #[arg(long, env = "WEFT_H2_MAX_RESETS", default_value_t = Limits::default().h2_max_resets_per_conn)]
    h2_max_resets: u32,
}

impl From<LimitArgs> for Limits {
    fn from(a: LimitArgs) -> Self {
        Self {
            max_connections: a.max_connections,
            header_read_timeout: a.header_read_timeout,
            max_header_bytes: a.max_header_bytes,
            max_headers: a.max_headers,
            body_idle_timeout: a.body_idle_timeout,
            http1_park_after: a.http1_park_after,
            h2_max_concurrent_streams: a.h2_max_concurrent_streams,
            h2_max_resets_per_conn: a.h2_max_resets,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Mtls {
    Permissive,
    Strict,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutsideMesh {
    Passthrough,
    Refuse,
}

type Labels = BTreeMap<String, String>;

fn parse_service(s: &str) -> Result<ObjectRef, String> {
    let r = ObjectRef::parse(s)?;
    model::dns_label(&r.namespace).map_err(|e| format!("namespace {:?}: {e}", r.namespace))?;
    model::dns_label(&r.name).map_err(|e| format!("name {:?}: {e}", r.name))?;
    Ok(r)
}

fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        model::label_key(k).map_err(|e| format!("label key {k:?}: {e}"))?;
        model::label_value(v).map_err(|e| format!("label value {v:?}: {e}"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok(labels)
}

fn parse_probe_path(s: &str) -> Result<(u16, String), String> {
    let (port, path) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not PORT:/path"))?;
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("{port:?} is not a port (1 to 65535)")),
    };
    match weft_proxy::authz::normalize::normalize_path(path) {
        Ok(p) if path.starts_with('/') => Ok((port, p.into_owned())),
        Ok(_) => Err(format!("{path:?} is not a path starting with '/'")),
        Err(e) => Err(format!("{path:?}: {e}")),
    }
}

fn parse_upstream(s: &str) -> Result<(SocketAddr, String), String> {
    let (local, target) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not LOCAL_ADDR=SERVICE.NAMESPACE:PORT"))?;
    let local: SocketAddr = match local.parse::<u16>() {
        Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
        Err(_) => local
            .parse()
            .map_err(|_| format!("{local:?} is not an address (ip:port) or a port"))?,
    };
    match weft_proxy::plan::parse_authority(target) {
        Some((_, Some(_))) => Ok((local, target.to_owned())),
        _ => Err(format!("{target:?} is not SERVICE.NAMESPACE:PORT")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    weft_proto::process::exit_with_parent();
    use clap::{CommandFactory as _, FromArgMatches as _};
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let (cli, matches) = match parsed {
        Ok(p) => p,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("weft-proxy: {}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    let mut args = match cli.command {
        Command::Run(args) => *args,
        Command::WaitReady(w) => return wait_ready(&w),
        Command::Init(a) => {
            return match weft_proxy::init::main(&a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("weft-proxy init: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    // `--inbound` (or WEFT_INBOUND) given explicitly runs the inbound listener even without
    // `--app-port`: a pod whose redirected connections say which port they are for.
    args.inbound_explicit = matches.subcommand_matches("run").is_some_and(|m| {
        m.value_source("inbound") != Some(clap::parser::ValueSource::DefaultValue)
    });
    // `Targets` (`info,weft_proxy=debug`), not `EnvFilter`: the same directives for targets and
    // levels, without the regex engine in the binary.
    let filter = match std::env::var("WEFT_LOG") {
        Ok(s) => match s.parse::<tracing_subscriber::filter::Targets>() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("weft-proxy: WEFT_LOG={s:?}: {e}");
                return ExitCode::from(2);
            }
        },
        Err(_) => tracing_subscriber::filter::Targets::new()
            .with_default(tracing_subscriber::filter::LevelFilter::INFO),
    };
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let registry = tracing_subscriber::registry().with(filter);
    match args.log_format {
        // Colours only on a terminal: `kubectl logs` and files get plain text.
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    weft_proto::process::raise_open_files_limit_and_log();
    // One core (the default) runs everything on one thread: a sidecar has less than a core of
    // work, and a second worker only adds wake-ups (futexes, work stealing) per request.
    let runtime = match args.cores {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft-proxy: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: RunArgs) -> ExitCode {
    // One listener for the whole run: a SIGTERM that arrives while start hands over to
    // serving must not fall between two listeners and be lost.
    let mut stop = StopSignals::new();
    let node_id = args.node_id.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "weft-proxy".into())
    });
    let service_name = args.service.as_ref().map(ToString::to_string);
    let config = Config {
        control_plane: ControlPlane {
            addr: args.control_plane,
            token_file: args.token_file,
            cert_ttl: args.cert_ttl,
        },
        trust_bundle: args.trust_bundle,
        trust_domain: args.trust_domain,
        admin: args.admin,
        node_id: node_id.clone(),
        inbound: (args.app_port.is_some() || args.inbound_explicit).then_some(InboundConfig {
            listen: args.inbound,
            app_port: args.app_port,
            service: args.service,
            labels: args.labels,
            advertise: args.advertise_ip,
            probe_paths: args.probe_paths,
            default_inbound: args.default_inbound_policy,
            redirected: args.inbound_redirected,
        }),
        outbound: Some(args.outbound),
        upstreams: args.upstream,
        data: DataPathConfig {
            detect_timeout: args.detect_timeout,
            tcp_idle_timeout: args.tcp_idle_timeout,
            http_idle_timeout: args.http_idle_timeout,
            connect_timeout: args.connect_timeout,
            passthrough: matches!(args.outside_mesh, OutsideMesh::Passthrough),
            mtls: match args.mtls {
                Mtls::Permissive => MtlsMode::Permissive,
                Mtls::Strict => MtlsMode::Strict,
            },
            limits: args.limits.into(),
        },
        drain_timeout: args.drain_timeout,
        trace: args
            .otlp_endpoint
            .map(|endpoint| weft_proxy::trace::TraceConfig {
                endpoint,
                protocol: args.otlp_protocol,
                ca: args.otlp_ca,
                sample_rate: args.trace_sample_rate,
                service_name: args
                    .trace_service_name
                    .or(service_name)
                    .unwrap_or_else(|| node_id.clone()),
            }),
        access_log: {
            use weft_proxy::access_log::{AccessLogConfig, Format};
            let format = match args.access_log {
                AccessLog::Off => None,
                AccessLog::Json => Some(Format::Json),
                AccessLog::Text => Some(Format::Text),
            };
            format.map(|format| AccessLogConfig {
                format,
                file: args.access_log_file,
            })
        },
    };
    // Start can wait a long time for an unreachable control plane; SIGTERM meanwhile is an
    // ordinary stop (exit 0: nothing was served, nothing failed).
    let started = tokio::select! {
        r = Proxy::start(config) => r,
        () = stop.recv() => {
            tracing::info!("stopped before the first certificate");
            return ExitCode::SUCCESS;
        }
    };
    let proxy = match started {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weft-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        () = stop.recv() => {}
        () = proxy.shutdown_requested() => {}
    }
    proxy.shutdown().await;
    ExitCode::SUCCESS
}

fn wait_ready(w: &WaitReadyArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft-proxy: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let interval = Duration::from_millis(200);
    match runtime.block_on(weft_proxy::wait_ready::wait_ready(
        w.admin, w.timeout, interval,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// clap's error as one line that names what is wrong. Its first line says what kind of error it
/// is and, for a missing argument, the indented lines after it name the flags:
/// `the following required arguments were not provided: --control-plane <CONTROL_PLANE>`.
fn one_line(text: &str) -> String {
    let mut lines = text.lines();
    let mut out = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned();
    if out.ends_with(':') {
        let named: Vec<&str> = lines
            .take_while(|l| l.starts_with("  "))
            .map(str::trim)
            .collect();
        if !named.is_empty() {
            out.push(' ');
            out.push_str(&named.join(", "));
        }
    }
    out
}

/// SIGTERM and SIGINT, listened for from the moment this is made until the process ends.
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves at the next SIGTERM or SIGINT (never, for one that could not be listened to).
    async fn recv(&mut self) {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(&mut self.term) => {}
            () = next(&mut self.int) => {}
        }
    }
}
