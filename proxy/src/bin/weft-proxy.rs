//! `weft-proxy run`: the sidecar.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use weft_certs::TrustDomain;
use weft_proxy::identity::ControlPlane;
use weft_proxy::{Config, Proxy};

#[derive(Parser)]
#[command(name = "weft-proxy", version, about = "The Weft sidecar proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run(RunArgs),
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
    /// The trust domain (the one of the bundle's CA).
    #[arg(long, env = "WEFT_TRUST_DOMAIN")]
    trust_domain: TrustDomain,
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
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let Command::Run(args) = Cli::parse().command;
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft-proxy: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: RunArgs) -> ExitCode {
    let node_id = args.node_id.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "weft-proxy".into())
    });
    let config = Config {
        control_plane: ControlPlane {
            addr: args.control_plane,
            token_file: args.token_file,
            cert_ttl: args.cert_ttl,
        },
        trust_bundle: args.trust_bundle,
        trust_domain: args.trust_domain,
        admin: args.admin,
        node_id,
    };
    let proxy = match Proxy::start(config).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weft-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        () = terminated() => {}
        () = proxy.shutdown_requested() => {}
    }
    proxy.shutdown(Duration::from_secs(5)).await;
    ExitCode::SUCCESS
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
