//! `weftctl`: the Weft command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_certs::{SpiffeId, TrustDomain};
use weft_control_plane::ctl;

#[derive(Parser)]
#[command(name = "weftctl", version, about = "Operate a Weft service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and inspect the mesh certificate authority.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Mint join tokens that let a workload get its first certificate.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Inspect certificates, or request one from the control plane.
    #[command(subcommand)]
    Cert(CertCmd),
}

#[derive(Subcommand)]
enum CaCmd {
    /// Generate a root CA (ECDSA P-256) and a join-token key in a new directory.
    Init {
        #[arg(long)]
        trust_domain: TrustDomain,
        #[arg(long)]
        out: PathBuf,
        /// Root lifetime.
        #[arg(long, default_value = "87600h", value_parser = humantime::parse_duration)]
        validity: Duration,
    },
    /// Show the CA's trust domain, certificates, expiry and fingerprints.
    Inspect { dir: PathBuf },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print a join token for a workload identity.
    Create {
        #[arg(long)]
        ca_dir: PathBuf,
        /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
        #[arg(long)]
        identity: SpiffeId,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Show the SPIFFE ID, issuer and validity of each certificate in a PEM file.
    Inspect { file: PathBuf },
    /// Generate a key, get it certified with a join token, and write svid.crt, svid.key, bundle.crt.
    Request {
        /// host:port of the control plane.
        #[arg(long, env = "WEFT_CONTROL_PLANE")]
        control_plane: String,
        /// The trust bundle (ca.crt) to verify the control plane with.
        #[arg(long)]
        trust_bundle: PathBuf,
        /// File holding the join token or Kubernetes service-account token.
        #[arg(long)]
        token_file: PathBuf,
        #[arg(long)]
        identity: SpiffeId,
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Ca(CaCmd::Init {
            trust_domain,
            out: dir,
            validity,
        }) => ctl::ca_init(&trust_domain, &dir, validity, &mut out),
        Command::Ca(CaCmd::Inspect { dir }) => ctl::ca_inspect(&dir, &mut out),
        Command::Token(TokenCmd::Create {
            ca_dir,
            identity,
            ttl,
        }) => ctl::token_create(&ca_dir, &identity, ttl, &mut out),
        Command::Cert(CertCmd::Inspect { file }) => ctl::cert_inspect(&file, &mut out),
        Command::Cert(CertCmd::Request {
            control_plane,
            trust_bundle,
            token_file,
            identity,
            ttl,
            out: dir,
        }) => {
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("read {}", token_file.display()))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(ctl::cert_request(
                ctl::CertRequest {
                    control_plane: &control_plane,
                    trust_bundle: &trust_bundle,
                    token: token.trim().to_owned(),
                    identity: &identity,
                    ttl,
                    out: &dir,
                },
                &mut out,
            ))
        }
    }
}
