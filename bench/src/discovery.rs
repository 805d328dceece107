//! `discovery`: delta-discovery fan-out. Starts the real `weft-control-plane` binary (its own
//! process, so its memory can be read from /proc), applies S services with one HTTPRoute each,
//! connects N simulated proxies (one mTLS connection and one DeltaResources stream each), then
//! times K route changes from the Apply RPC until every subscribed proxy has ACKed the new
//! version.
//!
//! Proxies and the control plane run on the same machine and share its cores; the proxies do
//! as little as they can (see [`proxy`]).

mod control_plane;
mod proxy;
mod report;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use weft_certs::{CertificateAuthority, SpiffeId, Svid, TrustDomain, WorkloadKey};
use weft_control_plane::{client, control_plane_id, default_admin_id};
use weft_proto::config::v1 as cfg;
use weft_proto::mesh::v1 as mesh;
use weft_proto::registry::v1 as reg;

use control_plane::{ControlPlaneProcess, Histogram};
use proxy::{Report, Shared, Subscription, Synced, Target};

const NAMESPACE: &str = "bench";
const PUSH_LATENCY: &str = "discovery_push_latency_seconds";
const CONNECTED: &str = "discovery_connected_proxies";

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Simulated proxies, each on its own mTLS connection with one DeltaResources stream.
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Services applied at start, each with one HTTPRoute.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// wildcard: every proxy subscribes to all Services and all Endpoints. on-demand: each
    /// subscribes to `--subscriptions` named Services and their Endpoints.
    #[arg(long, value_enum, default_value_t = Mode::Wildcard)]
    mode: Mode,
    /// Services per proxy in on-demand mode.
    #[arg(long, default_value_t = 3)]
    subscriptions: usize,
    /// Route changes timed (one HTTPRoute re-applied with new weights each).
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// Proxies connecting and syncing at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Distinct proxy identities (one key and SVID each, shared round-robin).
    #[arg(long, default_value_t = 4)]
    identities: usize,
    /// Endpoints registered (RegisterExternal) per service. 0: proxies subscribe to Services
    /// only.
    #[arg(long, default_value_t = 2)]
    endpoints_per_service: usize,
    /// The control plane binary. Default: `weft-control-plane` beside this executable.
    #[arg(long)]
    control_plane_bin: Option<PathBuf>,
    /// Deadline for the initial sync and for each change to converge.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Wildcard,
    OnDemand,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Wildcard => "wildcard",
            Mode::OnDemand => "on-demand",
        }
    }
}

fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

fn key(i: usize) -> String {
    format!("{NAMESPACE}/{}", service_name(i))
}

/// The services proxy `p` subscribes to in on-demand mode: spread evenly over the services so
/// each has about N·m/S subscribers.
fn on_demand_services(p: usize, m: usize, s: usize) -> Vec<usize> {
    let m = m.clamp(1, s);
    let mut v: Vec<usize> = (0..m).map(|j| (p + j * (s / m)) % s).collect();
    v.sort_unstable();
    v.dedup();
    v
}

pub(crate) async fn run(args: Args, json: bool) -> anyhow::Result<()> {
    let result = collect(&args).await?;
    report::print(&args, &result, json);
    Ok(())
}

/// Runs the bench and returns the JSON object `--json` prints (for `weft-bench all`).
pub(crate) async fn run_to_json(args: &Args) -> anyhow::Result<serde_json::Value> {
    let result = collect(args).await?;
    Ok(report::to_json(args, &result))
}

async fn collect(args: &Args) -> anyhow::Result<Results> {
    if args.proxies == 0 || args.services == 0 {
        bail!("--proxies and --services must be at least 1");
    }
    check_fd_limit(args.proxies)?;
    let bin = control_plane::locate(args.control_plane_bin.clone())?;

    // CA, as `weftctl ca init` makes it, and the identities the bench needs.
    let dir = tempfile::tempdir()?;
    let ca_dir = dir.path().join("ca");
    let td = TrustDomain::parse("bench.test")?;
    weft_cli::ca_init(
        &td,
        &ca_dir,
        Duration::from_secs(86400),
        &mut std::io::sink(),
    )?;
    let ca = CertificateAuthority::load_dir(&ca_dir, None)?;
    let bundle = Arc::new(ca.bundle().clone());
    let server_id = control_plane_id(&td);
    let admin_id = default_admin_id(&td);
    let admin = mint(&ca, &admin_id)?;
    let svids = (0..args.identities.max(1))
        .map(|i| mint(&ca, &td.workload(NAMESPACE, &format!("proxy-{i}"))?))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let cp = ControlPlaneProcess::start(&bin, &control_plane_args(&ca_dir, &admin_id)).await?;
    let result = measure(args, &cp, bundle, server_id, admin, svids).await;
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            let tail = cp.log_tail();
            cp.stop().await;
            return Err(e.context(format!("control plane log (last lines):\n{tail}")));
        }
    };
    cp.stop().await;
    Ok(result)
}

fn control_plane_args(ca_dir: &std::path::Path, admin_id: &SpiffeId) -> Vec<String> {
    [
        "--ca-dir",
        &ca_dir.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--admin-identity",
        admin_id.as_str(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Every proxy's connection is one fd here and one in the control plane (a child, which
/// inherits this limit). No unsafe here to raise it: say what to do instead.
fn check_fd_limit(proxies: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        let need = proxies + 256;
        if soft < need {
            bail!(
                "the open-file limit (ulimit -n) is {soft}, but {proxies} proxies need about {need} \
                 file descriptors in this process and as many in the control plane: raise it \
                 (ulimit -n {need}, up to the hard limit `ulimit -Hn`) or run fewer --proxies"
            );
        }
    }
    Ok(())
}

fn mint(ca: &CertificateAuthority, id: &SpiffeId) -> anyhow::Result<Svid> {
    let key = WorkloadKey::generate()?;
    let issued = ca.issue(key.key_pair(), id, &[], Some(Duration::from_secs(6 * 3600)))?;
    Ok(Svid {
        id: id.clone(),
        certified: key.certified(issued.chain)?,
        not_after: issued.not_after,
    })
}

fn http_route(i: usize, services: usize, canary: i64) -> mesh::HttpRoute {
    let backend = |j: usize, weight: i64| mesh::BackendRef {
        name: service_name(j),
        weight: Some(weight),
        ..Default::default()
    };
    let backend_refs = if services > 1 {
        vec![
            backend(i, 100 - canary),
            backend((i + 1) % services, canary),
        ]
    } else {
        vec![backend(i, 100 + canary)]
    };
    mesh::HttpRoute {
        namespace: NAMESPACE.into(),
        name: service_name(i),
        parent_refs: vec![mesh::ParentRef {
            name: service_name(i),
            ..Default::default()
        }],
        rules: vec![mesh::HttpRouteRule {
            backend_refs,
            ..Default::default()
        }],
        retry_policy: None,
    }
}

fn route_doc(route: mesh::HttpRoute) -> cfg::Document {
    cfg::Document {
        kind: Some(cfg::document::Kind::HttpRoute(route)),
    }
}

/// Services, routes and endpoints, through the config and registration APIs as an admin.
async fn populate(
    config: &mut cfg::config_client::ConfigClient<tonic::transport::Channel>,
    registry: &mut reg::registration_client::RegistrationClient<tonic::transport::Channel>,
    td: &TrustDomain,
    args: &Args,
) -> anyhow::Result<()> {
    let services = (0..args.services)
        .map(|i| cfg::Document {
            kind: Some(cfg::document::Kind::Service(mesh::Service {
                namespace: NAMESPACE.into(),
                name: service_name(i),
                ports: vec![mesh::Port {
                    name: "http".into(),
                    port: 8080,
                    protocol: mesh::Protocol::Http1 as i32,
                }],
                ..Default::default()
            })),
        })
        .collect();
    config
        .apply(cfg::ApplyRequest {
            documents: services,
            dry_run: false,
        })
        .await
        .context("Apply services")?;
    let routes = (0..args.services)
        .map(|i| route_doc(http_route(i, args.services, 10)))
        .collect();
    config
        .apply(cfg::ApplyRequest {
            documents: routes,
            dry_run: false,
        })
        .await
        .context("Apply routes")?;
    for i in 0..args.services {
        for e in 0..args.endpoints_per_service {
            let endpoint = mesh::Endpoint {
                namespace: NAMESPACE.into(),
                service: service_name(i),
                address: format!("10.{}.{}.{}:8080", i / 250, i % 250, e + 1),
                identity: td.workload(NAMESPACE, &service_name(i))?.to_string(),
                ready: true,
                weight: 1,
                ..Default::default()
            };
            registry
                .register_external(reg::RegisterExternalRequest {
                    endpoint: Some(endpoint),
                    ttl: None,
                })
                .await
                .with_context(|| format!("RegisterExternal for {}", key(i)))?;
        }
    }
    Ok(())
}

/// Everything measured in one run.
#[derive(Debug, Default)]
struct Results {
    cores: usize,
    initial_sync: Duration,
    per_proxy_sync: Vec<Duration>,
    rss_before_kib: u64,
    rss_after_kib: u64,
    bench_rss_kib: u64,
    connected_gauge: Option<f64>,
    changes: Vec<Change>,
    push_all: Option<Histogram>,
    push_changes: Option<Histogram>,
    log_warnings: u64,
    log_errors: u64,
}

#[derive(Debug)]
struct Change {
    service: String,
    subscribers: usize,
    /// Time from just before Apply until the last subscriber ACKed.
    converged: Duration,
    apply_rpc: Duration,
    /// Per-proxy latencies, sorted.
    per_proxy: Vec<Duration>,
    distinct_versions: usize,
}

async fn measure(
    args: &Args,
    cp: &ControlPlaneProcess,
    bundle: Arc<weft_certs::TrustBundle>,
    server_id: SpiffeId,
    admin: Svid,
    svids: Vec<Svid>,
) -> anyhow::Result<Results> {
    let td = server_id.trust_domain();
    let admin_channel = client::connect(
        &cp.grpc_addr,
        bundle.clone(),
        server_id.clone(),
        Some(admin.certified.clone()),
    )
    .await?;
    let mut config = cfg::config_client::ConfigClient::new(admin_channel.clone());
    let mut registry = reg::registration_client::RegistrationClient::new(admin_channel);
    populate(&mut config, &mut registry, &td, args).await?;

    let mut res = Results {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Default::default()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    res.rss_before_kib = cp.rss_kib()?;

    // Subscriptions per proxy, and who subscribes to each service.
    let with_endpoints = args.endpoints_per_service > 0;
    let mut subscribers = vec![0usize; args.services];
    let plans: Vec<Vec<Subscription>> = (0..args.proxies)
        .map(|p| {
            let (names, expected) = match args.mode {
                Mode::Wildcard => {
                    subscribers.iter_mut().for_each(|c| *c += 1);
                    (vec![], args.services)
                }
                Mode::OnDemand => {
                    let chosen = on_demand_services(p, args.subscriptions, args.services);
                    chosen.iter().for_each(|&i| subscribers[i] += 1);
                    let n = chosen.len();
                    (chosen.into_iter().map(key).collect(), n)
                }
            };
            let mut subs = vec![Subscription {
                type_url: mesh::SERVICE_TYPE_URL,
                names: names.clone(),
                expected,
            }];
            if with_endpoints {
                subs.push(Subscription {
                    type_url: mesh::ENDPOINTS_TYPE_URL,
                    names,
                    expected,
                });
            }
            subs
        })
        .collect();

    // Phase 1: connect and sync every proxy.
    let (synced_tx, mut synced_rx) = mpsc::channel::<Synced>(args.proxies);
    let shared = Arc::new(Shared {
        addr: cp.grpc_addr.clone(),
        bundle,
        server_id,
        svids,
        target: RwLock::new(None),
        synced: synced_tx,
    });
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut proxies = JoinSet::new();
    let start = Instant::now();
    for (idx, subs) in plans.into_iter().enumerate() {
        let (shared, gate) = (shared.clone(), gate.clone());
        proxies.spawn(async move {
            let permit = gate.acquire_owned().await?;
            proxy::run(idx, subs, shared, permit).await
        });
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    while res.per_proxy_sync.len() < args.proxies {
        tokio::select! {
            s = synced_rx.recv() => match s {
                Some(s) => res.per_proxy_sync.push(s.took),
                None => bail!("sync channel closed"),
            },
            failed = proxies.join_next() => return Err(proxy_failure(failed)),
            _ = tokio::time::sleep_until(deadline) => bail!(
                "only {} of {} proxies synced within {:?}",
                res.per_proxy_sync.len(), args.proxies, args.timeout
            ),
        }
    }
    res.initial_sync = start.elapsed();
    res.per_proxy_sync.sort_unstable();

    // Memory with everyone connected, once the last ACKs have been processed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    res.rss_after_kib = cp.rss_kib()?;
    res.bench_rss_kib = control_plane::rss_kib("/proc/self/status").unwrap_or_default();
    let before_changes = cp.metrics().await?;
    res.connected_gauge = before_changes.sum(CONNECTED);

    // Phase 2: route changes, one at a time.
    for k in 0..args.changes {
        let i = pick_changed_service(k, &subscribers);
        let (tx, mut rx) = mpsc::channel::<Report>(args.proxies);
        let name = key(i);
        let target = Arc::new(Target {
            type_url: mesh::SERVICE_TYPE_URL,
            name: name.clone(),
            start: Instant::now(),
            reports: tx,
        });
        // Canary weights 20, 30, ..., 90, 20, ... (the initial one is 10): always a change.
        let canary = 20 + (k as i64 % 8) * 10;
        if let Ok(mut t) = shared.target.write() {
            *t = Some(target.clone());
        }
        let apply_start = Instant::now();
        config
            .apply(cfg::ApplyRequest {
                documents: vec![route_doc(http_route(i, args.services, canary))],
                dry_run: false,
            })
            .await
            .with_context(|| format!("Apply route change {k}"))?;
        let apply_rpc = apply_start.elapsed();
        let deadline = tokio::time::Instant::now() + args.timeout;
        let mut per_proxy = Vec::with_capacity(subscribers[i]);
        let mut versions = std::collections::BTreeSet::new();
        while per_proxy.len() < subscribers[i] {
            tokio::select! {
                r = rx.recv() => if let Some(r) = r {
                    per_proxy.push(r.latency);
                    versions.insert(r.version);
                },
                failed = proxies.join_next() => return Err(proxy_failure(failed)),
                _ = tokio::time::sleep_until(deadline) => bail!(
                    "change {k} of {name}: only {} of {} subscribers got it within {:?}",
                    per_proxy.len(), subscribers[i], args.timeout
                ),
            }
        }
        let converged = target.start.elapsed();
        if let Ok(mut t) = shared.target.write() {
            *t = None;
        }
        per_proxy.sort_unstable();
        res.changes.push(Change {
            service: name,
            subscribers: subscribers[i],
            converged,
            apply_rpc,
            per_proxy,
            distinct_versions: versions.len(),
        });
        // Let the control plane take the ACKs before the next change.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let after = cp.metrics().await?;
    res.push_all = after.histogram(PUSH_LATENCY);
    res.push_changes = match (&res.push_all, before_changes.histogram(PUSH_LATENCY)) {
        (Some(a), Some(b)) => Some(a.since(&b)),
        _ => None,
    };
    (res.log_warnings, res.log_errors) = cp.log_counts();
    proxies.shutdown().await;
    Ok(res)
}

fn proxy_failure(
    failed: Option<Result<anyhow::Result<()>, tokio::task::JoinError>>,
) -> anyhow::Error {
    match failed {
        Some(Ok(Err(e))) => e.context("a simulated proxy failed"),
        Some(Ok(Ok(()))) => anyhow::anyhow!("a simulated proxy stopped"),
        Some(Err(e)) => anyhow::anyhow!("a simulated proxy task: {e}"),
        None => anyhow::anyhow!("no simulated proxies left"),
    }
}

/// Change `k` goes to a service that has subscribers, spread over the services.
fn pick_changed_service(k: usize, subscribers: &[usize]) -> usize {
    let s = subscribers.len();
    (0..s)
        .map(|j| (k * 37 + j) % s)
        .find(|&i| subscribers[i] > 0)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_demand_spreads_subscriptions() {
        assert_eq!(on_demand_services(0, 3, 100), vec![0, 33, 66]);
        assert_eq!(on_demand_services(99, 3, 100), vec![32, 65, 99]);
        assert_eq!(on_demand_services(5, 3, 2), vec![0, 1]);
        assert_eq!(on_demand_services(5, 3, 1), vec![0]);
    }
}
