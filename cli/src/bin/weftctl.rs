//! `weftctl`: the Weft command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_certs::{SpiffeId, TrustDomain};
use weft_cli::{self as ctl, GetKind, Output};
use weft_control_plane::model::ObjectRef;
use weft_proto::config::v1 as cfg;

#[derive(Parser)]
#[command(name = "weftctl", version, about = "Operate a Weft service mesh")]
struct Cli {
    /// The context file written by `weftctl login` [default: ~/.config/weft/config.yaml].
    #[arg(long, global = true, env = "WEFT_CONFIG")]
    config: Option<PathBuf>,
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
    /// Mint an admin certificate from the CA directory and write the context file.
    Login {
        /// host:port of the control plane.
        #[arg(long, env = "WEFT_CONTROL_PLANE")]
        control_plane: String,
        /// Mint the admin certificate locally from the CA directory (needs the CA key).
        #[arg(long, required_unless_present = "token_file", conflicts_with_all = ["token_file", "trust_bundle"])]
        ca_dir: Option<PathBuf>,
        /// Or: get a certificate from the control plane for what this token attests (a join
        /// token, or `kubectl create token weft-admin -n weft-system --audience weft`).
        #[arg(long, requires = "trust_bundle")]
        token_file: Option<PathBuf>,
        /// The mesh's trust bundle (ca.crt), with --token-file.
        #[arg(long)]
        trust_bundle: Option<PathBuf>,
        /// Lifetime of the admin certificate.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The admin identity [default: spiffe://<td>/ns/weft-system/sa/weft-admin].
        #[arg(long)]
        identity: Option<SpiffeId>,
    },
    /// Validate documents and store them in one atomic change.
    Apply {
        /// A YAML file, or - for stdin (repeatable).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Validate on the control plane too, but store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Add the Weft proxy to the pod templates of Kubernetes objects (files or stdin), as the
    /// injector webhook would; every document is written back in order, a summary to stderr.
    Inject {
        /// A file, a directory of .yaml/.yml/.json files, or - for stdin (repeatable).
        #[arg(short = 'f', long = "filename", default_value = "-")]
        files: Vec<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: ctl::inject::Format,
        /// Only label pod templates weft.io/inject=enabled, for the webhook to inject at
        /// admission.
        #[arg(long)]
        annotate: bool,
        /// The proxy image.
        #[arg(long, default_value_t = weft_inject::config::default_image("weft-proxy"))]
        proxy_image: String,
        /// The init image (weft-proxy init, with iptables).
        #[arg(long, default_value_t = weft_inject::config::default_image("weft-proxy-init"))]
        init_image: String,
        /// The control plane's address as the pods dial it.
        #[arg(long, default_value_t = weft_inject::names::control_plane_addr())]
        control_plane_addr: String,
        /// The trust bundle (ca.crt): its root's fingerprint is recorded on injected pods.
        #[arg(long)]
        trust_bundle: Option<PathBuf>,
        /// The control plane's namespace, never injected.
        #[arg(long, default_value = weft_inject::names::NAMESPACE)]
        namespace: String,
    },
    /// Print the Kubernetes manifests of a Weft control plane (pipe to kubectl apply -f -).
    Install {
        /// Three control-plane replicas (anti-affinity, disruption budgets), a 3-member etcd
        /// unless --etcd-endpoints, and a webhook that fails closed.
        #[arg(long)]
        ha: bool,
        /// The CA directory from `weftctl ca init` (put into the weft-ca Secret).
        #[arg(
            long,
            required_unless_present = "external_ca",
            conflicts_with = "external_ca"
        )]
        ca_dir: Option<PathBuf>,
        /// A Secret (tls.crt, tls.key, ca.crt: cert-manager's layout) that holds the CA
        /// instead; needs --trust-bundle and --trust-domain.
        #[arg(long, requires_all = ["trust_bundle", "trust_domain"])]
        external_ca: Option<String>,
        /// The trust bundle (PEM roots) with --external-ca.
        #[arg(long)]
        trust_bundle: Option<PathBuf>,
        /// The trust domain with --external-ca.
        #[arg(long)]
        trust_domain: Option<TrustDomain>,
        /// An existing etcd cluster's client URLs (comma-separated).
        #[arg(long, value_delimiter = ',')]
        etcd_endpoints: Vec<String>,
        /// Where the Weft images are (REGISTRY/weft-control-plane:VERSION, …).
        #[arg(long, default_value = weft_inject::names::DEFAULT_REGISTRY)]
        registry: String,
        /// The images' tag.
        #[arg(long, default_value = weft_inject::VERSION)]
        version: String,
        /// The cluster's service-account token issuer (kubectl get --raw
        /// /.well-known/openid-configuration shows it).
        #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
        jwt_issuer: String,
        /// The etcd image for --ha without --etcd-endpoints.
        #[arg(long, default_value = "quay.io/coreos/etcd:v3.5.21")]
        etcd_image: String,
    },
    /// Remove what `weftctl inject` (or the webhook) added.
    Uninject {
        /// A file, a directory of .yaml/.yml/.json files, or - for stdin (repeatable).
        #[arg(short = 'f', long = "filename", default_value = "-")]
        files: Vec<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: ctl::inject::Format,
    },
    /// List services, endpoints, routes or policies.
    Get {
        /// services (svc), endpoints (ep), routes (httproutes), authorizationpolicies (authz)
        /// or ratelimitpolicies (ratelimits).
        kind: GetKind,
        /// Only this object (for endpoints: this service's).
        name: Option<String>,
        #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// table, yaml or json (both re-appliable; json as kubectl prints it).
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Delete the objects a file declares, or one object.
    Delete {
        /// A YAML file, or - for stdin (repeatable).
        #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "target"])]
        files: Vec<PathBuf>,
        /// service, route, authorizationpolicy (authz) or ratelimitpolicy (ratelimit).
        #[arg(required_unless_present = "files", requires = "target")]
        kind: Option<DeleteKind>,
        /// NAMESPACE/NAME.
        target: Option<String>,
    },
    /// Register an endpoint outside the mesh (a database, a VM).
    Register {
        /// NAMESPACE/NAME of the service.
        #[arg(long, value_parser = ObjectRef::parse)]
        service: ObjectRef,
        /// IP:PORT (IPv6 in brackets).
        #[arg(long)]
        address: String,
        /// The SPIFFE ID that proxies will require of it.
        #[arg(long)]
        identity: String,
        /// k=v,k2=v2
        #[arg(long, default_value = "", value_parser = ctl::registry::parse_labels)]
        labels: Labels,
        #[arg(long)]
        zone: Option<String>,
        /// Load-balancing weight, 1..=10000.
        #[arg(long)]
        weight: Option<u32>,
        /// Expire this long after registering (at least 5s); default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// A whole mesh on this machine: the control plane, four proxies, demo services with a
    /// 90/10 canary, a traffic generator, and a live view of it (Ctrl-C stops it all).
    Demo(ctl::demo::Args),
    /// Serve a live web page of the mesh: services, who calls whom (rate, success, mTLS),
    /// splits, proxy errors, denials, the control plane. Reads the proxies' /metrics or
    /// Prometheus.
    Dashboard(ctl::dashboard::Args),
    /// Ask a proxy what it would do with a request: the route rule that matches, backends and
    /// weights, timeouts, retries, and each endpoint with its latency and ejection state.
    Explain {
        /// http://NAME.NAMESPACE[:PORT]/PATH (the scheme may be left out).
        url: String,
        /// The proxy's admin address (the client side's, which makes the choice).
        #[arg(long, env = "WEFT_PROXY_ADMIN", default_value = "127.0.0.1:4191")]
        admin: String,
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// "Name: value" (repeatable), for routes that match on headers.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// text or json (the proxy's answer as it is).
        #[arg(short = 'o', long, default_value = "text")]
        output: String,
        /// Ask the server side instead: what the inbound policy of the proxy at --admin (the
        /// server's) would decide for this request, and why. A tcp:// URL asks about an opaque
        /// connection; the URL's port is the port the request reaches (default: --app-port).
        #[arg(long, requires = "client")]
        inbound: bool,
        /// With --inbound: the client's SPIFFE ID.
        #[arg(long, group = "client")]
        from: Option<String>,
        /// With --inbound: a client without a certificate.
        #[arg(long, group = "client")]
        plaintext: bool,
    },
    /// Remove an endpoint registered with `weftctl register`.
    Deregister {
        #[arg(long, value_parser = ObjectRef::parse)]
        service: ObjectRef,
        #[arg(long)]
        address: String,
    },
}

type Labels = Vec<(String, String)>;

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeleteKind {
    #[value(alias = "svc")]
    Service,
    #[value(alias = "httproute")]
    Route,
    #[value(
        name = "authorizationpolicy",
        alias = "authorizationpolicies",
        alias = "authz"
    )]
    AuthorizationPolicy,
    #[value(
        name = "ratelimitpolicy",
        alias = "ratelimitpolicies",
        alias = "ratelimit",
        alias = "ratelimits"
    )]
    RateLimitPolicy,
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
    /// Replace the root (or issuing intermediate) live: prepare, switch, finish.
    #[command(subcommand)]
    Rotate(RotateCmd),
}

/// Where the control planes serving the CA directory answer (their admin ports).
#[derive(clap::Args)]
struct AdminArgs {
    /// A control plane's admin address (repeatable: every replica serving the directory).
    #[arg(
        long = "admin",
        env = "WEFT_CONTROL_PLANE_ADMIN",
        value_delimiter = ',',
        default_value = "127.0.0.1:9191"
    )]
    admins: Vec<String>,
    /// How long to wait for each control plane to load the change.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

#[derive(Subcommand)]
enum RotateCmd {
    /// Add a new CA beside the current one: both roots are trusted, the old CA still signs.
    Prepare {
        /// The directory the control plane serves (--ca-dir).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The new CA: a `weftctl ca init` directory, or tls.crt/tls.key/ca.crt from cert-manager.
        #[arg(long)]
        new: PathBuf,
        /// Only when the CA certificate has no spiffe:// URI SAN (as for the control plane).
        #[arg(long)]
        trust_domain: Option<TrustDomain>,
        #[command(flatten)]
        admin: AdminArgs,
        /// Only change the files (a copy that reaches the control plane some other way, e.g. a
        /// Kubernetes Secret).
        #[arg(long)]
        no_wait: bool,
    },
    /// The new CA signs; every proxy renews early, at a random instant within --renew-within.
    Switch {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        renew_within: Duration,
        /// Switch even if a control plane cannot be shown to serve the prepared step.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        no_wait: bool,
    },
    /// Drop the old root; refused while a connected proxy holds a certificate of the old CA.
    Finish {
        #[arg(long)]
        ca_dir: PathBuf,
        /// Finish even so (those proxies fail their handshakes until they re-certify).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
        /// Only change the files (needs --force: nothing checks the proxies).
        #[arg(long, requires = "force")]
        no_wait: bool,
    },
    /// The rotation's step and, per control plane, connected proxies per issuing CA.
    Status {
        #[arg(long)]
        ca_dir: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

impl AdminArgs {
    fn admins(self, no_wait: bool) -> ctl::rotate::Admins {
        ctl::rotate::Admins {
            addrs: self.admins,
            wait: self.wait,
            no_wait,
        }
    }
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
            // Several problems (every violation of an apply) print one per line, each prefixed,
            // so `grep weftctl:` and people both read them.
            for line in message(&e).lines() {
                eprintln!("weftctl: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", skipping a cause whose text its parent already
/// includes (many errors print their source inline, which `{:#}` would repeat).
fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn config_path(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(p) => Ok(p),
        None => Ok(ctl::context::default_path()?),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let context = |flag: Option<PathBuf>| -> anyhow::Result<ctl::Context> {
        Ok(ctl::Context::load(&config_path(flag)?)?)
    };
    match cli.command {
        Command::Login {
            control_plane,
            ca_dir: None,
            token_file: Some(token_file),
            trust_bundle: Some(trust_bundle),
            ttl,
            identity: _,
        } => runtime()?.block_on(ctl::login_with_token(
            ctl::TokenLogin {
                control_plane: &control_plane,
                trust_bundle: &trust_bundle,
                token_file: &token_file,
                ttl,
                config: &config_path(cli.config)?,
            },
            &mut out,
        )),
        Command::Login { ca_dir: None, .. } => {
            anyhow::bail!("give --ca-dir, or --token-file with --trust-bundle")
        }
        Command::Login {
            control_plane,
            ca_dir: Some(ca_dir),
            ttl,
            identity,
            ..
        } => ctl::login(
            ctl::Login {
                control_plane: &control_plane,
                ca_dir: &ca_dir,
                ttl,
                identity,
                config: &config_path(cli.config)?,
            },
            &mut out,
        ),
        Command::Inject {
            files,
            output,
            annotate,
            proxy_image,
            init_image,
            control_plane_addr,
            trust_bundle,
            namespace,
        } => {
            let mode = if annotate {
                ctl::inject::Mode::Annotate
            } else {
                let trust_root_sha256 = match trust_bundle {
                    Some(b) => Some(ctl::inject::trust_root_fingerprint(&b)?),
                    None => None,
                };
                ctl::inject::Mode::Inject(weft_inject::InjectConfig {
                    proxy_image,
                    init_image,
                    control_plane_addr,
                    control_plane_namespace: namespace,
                    trust_root_sha256,
                })
            };
            let inputs = ctl::inject::read_inputs(&files)?;
            ctl::inject::run(&inputs, &mode, output, &mut out, &mut std::io::stderr())
        }
        Command::Install {
            ha,
            ca_dir,
            external_ca,
            trust_bundle,
            trust_domain,
            etcd_endpoints,
            registry,
            version,
            jwt_issuer,
            etcd_image,
        } => {
            let ca = match (ca_dir, external_ca, trust_bundle, trust_domain) {
                (Some(dir), None, _, _) => ctl::install::CaSource::Dir(dir),
                (None, Some(secret), Some(trust_bundle), Some(trust_domain)) => {
                    ctl::install::CaSource::External {
                        secret,
                        trust_bundle,
                        trust_domain,
                    }
                }
                _ => anyhow::bail!(
                    "give --ca-dir, or --external-ca with --trust-bundle and --trust-domain"
                ),
            };
            let text = ctl::install::render(&ctl::install::Install {
                ha,
                ca,
                etcd_endpoints,
                registry,
                version,
                jwt_issuer,
                etcd_image,
            })?;
            use std::io::Write as _;
            out.write_all(text.as_bytes())?;
            Ok(())
        }
        Command::Uninject { files, output } => {
            let inputs = ctl::inject::read_inputs(&files)?;
            let mode = ctl::inject::Mode::Uninject;
            ctl::inject::run(&inputs, &mode, output, &mut out, &mut std::io::stderr())
        }
        Command::Apply { files, dry_run } => {
            // Parse before loading the context: a broken file is reported even when logged out.
            let parsed = ctl::config::parse_files(&files)?;
            let ctx = context(cli.config)?;
            let args = ctl::ApplyArgs { parsed, dry_run };
            runtime()?.block_on(ctl::apply(&ctx, &args, &mut out))
        }
        Command::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
        } => {
            let ctx = context(cli.config)?;
            let namespace = if all_namespaces {
                None
            } else {
                Some(namespace.unwrap_or_else(|| "default".into()))
            };
            let args = ctl::GetArgs {
                kind,
                name,
                namespace,
                output,
            };
            runtime()?.block_on(ctl::get(&ctx, &args, &mut out))
        }
        Command::Delete {
            files,
            kind,
            target,
        } => {
            let ctx = context(cli.config)?;
            if !files.is_empty() {
                return runtime()?.block_on(ctl::delete_files(&ctx, &files, &mut out));
            }
            let (Some(kind), Some(target)) = (kind, target) else {
                anyhow::bail!("delete: give -f FILE, or a kind and NAMESPACE/NAME");
            };
            let id = ObjectRef::parse(&target).map_err(anyhow::Error::msg)?;
            let kind = match kind {
                DeleteKind::Service => cfg::Kind::Service,
                DeleteKind::Route => cfg::Kind::HttpRoute,
                DeleteKind::AuthorizationPolicy => cfg::Kind::AuthorizationPolicy,
                DeleteKind::RateLimitPolicy => cfg::Kind::RateLimitPolicy,
            };
            let object = cfg::ObjectRef {
                kind: kind.into(),
                namespace: id.namespace,
                name: id.name,
            };
            runtime()?.block_on(ctl::delete_objects(&ctx, vec![object], &mut out))
        }
        Command::Register {
            service,
            address,
            identity,
            labels,
            zone,
            weight,
            ttl,
        } => {
            let ctx = context(cli.config)?;
            let r = ctl::Register {
                service,
                address,
                identity,
                labels,
                zone,
                weight,
                ttl,
            };
            runtime()?.block_on(ctl::register(&ctx, &r, &mut out))
        }
        Command::Demo(args) => runtime()?.block_on(ctl::demo::run(args)),
        Command::Dashboard(args) => runtime()?.block_on(ctl::dashboard::run(args)),
        Command::Explain {
            url,
            admin,
            method,
            headers,
            output,
            inbound,
            from,
            plaintext,
        } => {
            let json = match output.as_str() {
                "json" => true,
                "text" => false,
                other => anyhow::bail!("-o {other}: use text or json"),
            };
            let inbound = match (inbound, from, plaintext) {
                (false, None, false) => None,
                (false, _, _) => anyhow::bail!("--from and --plaintext go with --inbound"),
                (true, Some(id), _) => Some(ctl::explain::InboundClient::Identity(id)),
                (true, None, _) => Some(ctl::explain::InboundClient::Plaintext),
            };
            let e = ctl::explain::Explain {
                admin,
                url,
                method,
                headers,
                json,
                inbound,
            };
            runtime()?.block_on(ctl::explain::explain(&e, &mut out))
        }
        Command::Deregister { service, address } => {
            let ctx = context(cli.config)?;
            let d = ctl::Deregister { service, address };
            runtime()?.block_on(ctl::deregister(&ctx, &d, &mut out))
        }
        Command::Ca(CaCmd::Init {
            trust_domain,
            out: dir,
            validity,
        }) => ctl::ca_init(&trust_domain, &dir, validity, &mut out),
        Command::Ca(CaCmd::Inspect { dir }) => ctl::ca_inspect(&dir, &mut out),
        Command::Ca(CaCmd::Rotate(cmd)) => runtime()?.block_on(async {
            match cmd {
                RotateCmd::Prepare {
                    ca_dir,
                    new,
                    trust_domain,
                    admin,
                    no_wait,
                } => {
                    let admins = admin.admins(no_wait);
                    ctl::rotate::prepare(&ca_dir, &new, trust_domain.as_ref(), &admins, &mut out)
                        .await
                }
                RotateCmd::Switch {
                    ca_dir,
                    renew_within,
                    force,
                    admin,
                    no_wait,
                } => {
                    let admins = admin.admins(no_wait);
                    ctl::rotate::switch(&ca_dir, renew_within, force, &admins, &mut out).await
                }
                RotateCmd::Finish {
                    ca_dir,
                    force,
                    admin,
                    no_wait,
                } => {
                    let admins = admin.admins(no_wait);
                    ctl::rotate::finish(&ca_dir, force, &admins, &mut out).await
                }
                RotateCmd::Status { ca_dir, admin } => {
                    ctl::rotate::status(&ca_dir, &admin.admins(false), &mut out).await
                }
            }
        }),
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
            runtime()?.block_on(ctl::cert_request(
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
