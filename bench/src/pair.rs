//! `pair`: what a request pays for going through two proxies. In one run, interleaved round by
//! round, the load generator talks to an nginx backend on loopback either directly or through a
//! pair of proxies (client proxy → mTLS HTTP/2 → server proxy → backend), and the bench
//! measures closed-loop throughput (wrk), latency at a fixed rate (oha, latency-corrected), and
//! the proxies' memory and CPU from /proc. It also times a fresh `weft-proxy` from spawn to its
//! first `/ready` 200. A third target, `weft-split`, is the pair with traffic management
//! active (a 90/10 HTTPRoute split with retries and timeouts, see [`split`]). Two more are
//! the peers Weft is compared with: an HAProxy pair and an nginx pair, both mutual TLS
//! between the two sides (see [`peers`]); the report gives Weft's ratios to HAProxy.
//!
//! Each way to the backend is a [`Target`]; adding one means a [`TargetKind`] variant, its
//! setup in [`Lab::start`] and its URL and proxy PIDs in [`Lab::targets`]. Everything runs as child processes of the bench on 127.0.0.1 with files
//! in one temp dir; all are killed on drop. The load generator, the proxies, the control plane
//! and the backend share the machine's cores.

pub(crate) mod abuse;
mod authz;
mod goals;
mod load;
mod peers;
mod process;
pub(crate) mod report;
mod setup;
mod split;
mod tools;
mod traced;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use load::{OhaResult, Usage, WrkResult};
use peers::{PeerKind, PeerPair};
use setup::{Backend, Bins, Mesh, ProxyKind, START_TIMEOUT, WeftProxy};
use split::SplitCounts;

#[derive(clap::Args, Debug, Clone)]
#[group(id = "pair_args")]
pub(crate) struct Args {
    /// Length of each load run (closed-loop and fixed-rate, per target, per round).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Rounds; each runs every target once (A B A B …).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections the load generators keep open.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Requests per second of the fixed-rate run.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Fresh proxies timed from spawn to ready.
    #[arg(long, default_value_t = 5)]
    starts: usize,
    /// Smoke test: 1 round of 2 s runs, no warm-up, 2 starts.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Where weft-proxy, weft-control-plane and weftctl are.
    #[arg(long, default_value = "target/release")]
    pub(crate) bin_dir: PathBuf,
    /// Measure only these targets (comma-separated: direct, weft, weft-split, weft-authz,
    /// weft-twin, weft-traced, haproxy, nginx-pair); all are still set up. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,
    /// The weft-proxy binary to measure, if not the one in --bin-dir (e.g. the sidecar build,
    /// the path `deploy/build-proxy.sh` prints).
    #[arg(long)]
    pub(crate) proxy_bin: Option<PathBuf>,
}

impl Args {
    /// The arguments this run is equivalent to, as `weft-bench pair` flags.
    pub(crate) fn command_line(&self) -> String {
        let mut s = format!(
            "weft-bench pair --rounds {} --duration {}s --connections {} --rate {} --starts {} --bin-dir {}",
            self.rounds,
            self.duration.as_secs(),
            self.connections,
            self.rate,
            self.starts,
            self.bin_dir.display()
        );
        if let Some(p) = &self.proxy_bin {
            s += &format!(" --proxy-bin {}", p.display());
        }
        if !self.only.is_empty() {
            s += &format!(" --only {}", self.only.join(","));
        }
        s
    }
}

/// A way from the load generator to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetKind {
    /// The load generator → the backend.
    Direct,
    /// → client weft-proxy (`--upstream`, plain HTTP/1.1) → mTLS HTTP/2 → server weft-proxy
    /// (`--app-port`) → the backend.
    Weft,
    /// As `Weft`, through its own client proxy addressing `api-split`, whose HTTPRoute splits
    /// 90/10 between two server proxies (`api-v1`, `api-v2`) with retries and timeouts on.
    WeftSplit,
    /// As `Weft`, through its own client and server proxies, the server enforcing 10
    /// AuthorizationPolicies and a rate limit that is never hit (see [`authz`]).
    WeftAuthz,
    /// A second plain pair, identical to `Weft` (its own client and server proxies, service
    /// `api-twin`): the noise floor of a ratio between two pairs of one run. `weft-twin / weft`
    /// is what `weft-authz / weft` would be if policy cost nothing.
    WeftTwin,
    /// As `Weft`, through its own pair (service `api-traced`) with tracing on: the client
    /// starts a trace for 1 % of requests, both propagate and export spans over OTLP/gRPC to
    /// an in-process receiver (see [`traced`]).
    WeftTraced,
    /// → client HAProxy (plain HTTP/1.1) → mutual TLS 1.3, HTTP/1.1 → server HAProxy → the
    /// backend; one thread each.
    Haproxy,
    /// The same with nginx on both sides; one process each.
    NginxPair,
}

impl TargetKind {
    const ALL: [TargetKind; 8] = [
        TargetKind::Direct,
        TargetKind::Weft,
        TargetKind::WeftSplit,
        TargetKind::WeftAuthz,
        TargetKind::WeftTwin,
        TargetKind::WeftTraced,
        TargetKind::Haproxy,
        TargetKind::NginxPair,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Weft => "weft",
            TargetKind::WeftSplit => "weft-split",
            TargetKind::WeftAuthz => "weft-authz",
            TargetKind::WeftTwin => "weft-twin",
            TargetKind::WeftTraced => "weft-traced",
            TargetKind::Haproxy => "haproxy",
            TargetKind::NginxPair => "nginx-pair",
        }
    }
}

/// One target: its URL and the proxies on its path (measured during the runs).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) kind: TargetKind,
    pub(crate) url: String,
    pub(crate) proxies: Vec<ProxyRef>,
}

#[derive(Debug, Clone)]
pub(crate) struct ProxyRef {
    /// e.g. "client", "server", "server-v1".
    pub(crate) role: &'static str,
    pub(crate) pid: u32,
}

/// The twin target's service: a plain one, like `api`.
const TWIN_SERVICE: &str = "api-twin";
const TWIN_MANIFESTS: &str = "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {namespace: default, name: api-twin}\nspec:\n  ports: [{name: http, port: 80, protocol: http1}]\n";

/// Everything the targets need, running. Field order is drop order: processes first, then
/// the temp dir they write in.
struct Lab {
    weft_client: WeftProxy,
    weft_server: WeftProxy,
    /// The split target's own client (so its CPU and RSS are its own) and its two servers.
    split_client: WeftProxy,
    split_v1: WeftProxy,
    split_v2: WeftProxy,
    /// The authz target's own pair.
    authz_client: WeftProxy,
    authz_server: WeftProxy,
    /// The twin target's pair (a plain pair like the first: the noise floor).
    twin_client: WeftProxy,
    twin_server: WeftProxy,
    /// The traced target's pair, and the OTLP receiver its spans go to.
    traced_client: WeftProxy,
    traced_server: WeftProxy,
    otlp: traced::Sink,
    haproxy: PeerPair,
    nginx_pair: PeerPair,
    mesh: Mesh,
    backend: Backend,
    dir: tempfile::TempDir,
}

impl Lab {
    fn start(tools: &tools::Tools, bins: &Bins) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("weft-bench-pair.")
            .tempdir()
            .context("create a temp dir")?;
        process::remove_on_signal(dir.path());
        let backend = Backend::start(&tools.nginx, dir.path())?;
        let mesh = Mesh::start(bins, dir.path())?;
        mesh.apply("split.yaml", split::MANIFESTS)?;
        mesh.apply("authz.yaml", &authz::manifests())?;
        mesh.apply("twin.yaml", TWIN_MANIFESTS)?;
        mesh.apply("traced.yaml", traced::MANIFESTS)?;
        let app_port = backend.addr.port();
        let server = |role: &str, service: &'static str| -> anyhow::Result<WeftProxy> {
            let token = mesh.token(service)?;
            let mut p = mesh.spawn_proxy(role, &token, ProxyKind::Server { service, app_port })?;
            p.wait_ready(Duration::from_millis(5))?;
            Ok(p)
        };
        let client = |role: &str, service: &'static str| -> anyhow::Result<WeftProxy> {
            let token = mesh.token(role)?;
            let mut p = mesh.spawn_proxy(role, &token, ProxyKind::Client { service })?;
            p.wait_ready(Duration::from_millis(5))?;
            p.wait_routable(Duration::from_millis(10))?;
            Ok(p)
        };
        let weft_server = server("server", "api")?;
        let weft_client = client("client", "api")?;
        let split_v1 = server("split-server-v1", split::V1)?;
        let split_v2 = server("split-server-v2", split::V2)?;
        let mut split_client = client("split-client", split::PARENT)?;
        split::wait_both_backends(&mut split_client, &split_v1, &split_v2, START_TIMEOUT)?;
        let authz_server = server("authz-server", authz::SERVICE)?;
        let authz_client = {
            let token = mesh.token(authz::CLIENT)?;
            let mut p = mesh.spawn_proxy(
                authz::CLIENT,
                &token,
                ProxyKind::Client {
                    service: authz::SERVICE,
                },
            )?;
            p.wait_ready(Duration::from_millis(5))?;
            p.wait_routable(Duration::from_millis(10))?;
            p
        };
        let twin_server = server("twin-server", TWIN_SERVICE)?;
        let twin_client = client("twin-client", TWIN_SERVICE)?;
        let otlp = traced::Sink::start()?;
        let tracing = |rate: &str| {
            vec![
                "--otlp-endpoint".to_owned(),
                otlp.endpoint(),
                "--trace-sample-rate".to_owned(),
                rate.to_owned(),
            ]
        };
        let traced_server = {
            let token = mesh.token(traced::SERVICE)?;
            let kind = ProxyKind::Server {
                service: traced::SERVICE,
                app_port,
            };
            let mut p = mesh.spawn_proxy_with("traced-server", &token, kind, &tracing("0"))?;
            p.wait_ready(Duration::from_millis(5))?;
            p
        };
        let traced_client = {
            let token = mesh.token("traced-client")?;
            let kind = ProxyKind::Client {
                service: traced::SERVICE,
            };
            let rate = tracing(traced::SAMPLE_RATE);
            let mut p = mesh.spawn_proxy_with("traced-client", &token, kind, &rate)?;
            p.wait_ready(Duration::from_millis(5))?;
            p.wait_routable(Duration::from_millis(10))?;
            p
        };
        let peer = |kind| PeerPair::start(kind, tools, &mesh.ca_dir, backend.addr, dir.path());
        let haproxy = peer(PeerKind::Haproxy)?;
        let nginx_pair = peer(PeerKind::Nginx)?;
        Ok(Self {
            weft_client,
            weft_server,
            split_client,
            split_v1,
            split_v2,
            authz_client,
            authz_server,
            twin_client,
            twin_server,
            traced_client,
            traced_server,
            otlp,
            haproxy,
            nginx_pair,
            mesh,
            backend,
            dir,
        })
    }

    fn targets(&self) -> anyhow::Result<Vec<Target>> {
        let upstream = self
            .weft_client
            .upstream
            .context("the client proxy has no upstream port")?;
        let split_upstream = self
            .split_client
            .upstream
            .context("the split client proxy has no upstream port")?;
        Ok(vec![
            Target {
                kind: TargetKind::Direct,
                url: format!("http://{}/", self.backend.addr),
                proxies: vec![],
            },
            Target {
                kind: TargetKind::Weft,
                url: format!("http://{upstream}/"),
                proxies: vec![
                    ProxyRef {
                        role: "client",
                        pid: self.weft_client.proc.pid(),
                    },
                    ProxyRef {
                        role: "server",
                        pid: self.weft_server.proc.pid(),
                    },
                ],
            },
            Target {
                kind: TargetKind::WeftSplit,
                url: format!("http://{split_upstream}/"),
                proxies: vec![
                    ProxyRef {
                        role: "client",
                        pid: self.split_client.proc.pid(),
                    },
                    ProxyRef {
                        role: "server-v1",
                        pid: self.split_v1.proc.pid(),
                    },
                    ProxyRef {
                        role: "server-v2",
                        pid: self.split_v2.proc.pid(),
                    },
                ],
            },
            Target {
                kind: TargetKind::WeftAuthz,
                url: format!(
                    "http://{}/",
                    self.authz_client
                        .upstream
                        .context("the authz client proxy has no upstream port")?
                ),
                proxies: vec![
                    ProxyRef {
                        role: "client",
                        pid: self.authz_client.proc.pid(),
                    },
                    ProxyRef {
                        role: "server",
                        pid: self.authz_server.proc.pid(),
                    },
                ],
            },
            Target {
                kind: TargetKind::WeftTwin,
                url: format!(
                    "http://{}/",
                    self.twin_client
                        .upstream
                        .context("the twin client proxy has no upstream port")?
                ),
                proxies: vec![
                    ProxyRef {
                        role: "client",
                        pid: self.twin_client.proc.pid(),
                    },
                    ProxyRef {
                        role: "server",
                        pid: self.twin_server.proc.pid(),
                    },
                ],
            },
            Target {
                kind: TargetKind::WeftTraced,
                url: format!(
                    "http://{}/",
                    self.traced_client
                        .upstream
                        .context("the traced client proxy has no upstream port")?
                ),
                proxies: vec![
                    ProxyRef {
                        role: "client",
                        pid: self.traced_client.proc.pid(),
                    },
                    ProxyRef {
                        role: "server",
                        pid: self.traced_server.proc.pid(),
                    },
                ],
            },
            peer_target(TargetKind::Haproxy, &self.haproxy),
            peer_target(TargetKind::NginxPair, &self.nginx_pair),
        ])
    }

    /// The split target's counters now (requests at each server, retries by its client).
    fn split_counts(&self) -> anyhow::Result<SplitCounts> {
        SplitCounts::read(
            self.split_client.admin,
            self.split_v1.admin,
            self.split_v2.admin,
        )
    }

    /// Errors naming the process (with its log) if any has died.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.backend.proc.check_alive()?;
        self.mesh.proc.check_alive()?;
        self.weft_server.proc.check_alive()?;
        self.weft_client.proc.check_alive()?;
        self.split_v1.proc.check_alive()?;
        self.split_v2.proc.check_alive()?;
        self.split_client.proc.check_alive()?;
        self.traced_server.proc.check_alive()?;
        self.traced_client.proc.check_alive()?;
        self.haproxy.check_alive()?;
        self.nginx_pair.check_alive()
    }

    /// Spawns a fresh client proxy `n` times, each time timing from spawn to its first
    /// `/ready` 200 and to its first request through the pair answered with the backend's body
    /// (both polled every 1 ms), then kills it.
    fn start_to_ready(&self, n: usize) -> anyhow::Result<Vec<StartTime>> {
        let token = self.mesh.token("start-probe")?;
        let mut times = Vec::new();
        for i in 0..n {
            let mut proxy = self.mesh.spawn_proxy(
                &format!("start-{i}"),
                &token,
                ProxyKind::Client { service: "api" },
            )?;
            let ready = proxy.wait_ready(Duration::from_millis(1))?;
            let first_request = proxy.wait_routable(Duration::from_millis(1))?;
            times.push(StartTime {
                ready: Some(ready),
                first_request,
            });
        }
        Ok(times)
    }

    /// The same for a fresh client side of each peer pair (which has no readiness endpoint:
    /// spawn to the first request through the pair).
    fn peers_start_to_first_request(
        &self,
        tools: &tools::Tools,
        n: usize,
    ) -> anyhow::Result<Vec<(TargetKind, Vec<StartTime>)>> {
        [
            (TargetKind::Haproxy, &self.haproxy),
            (TargetKind::NginxPair, &self.nginx_pair),
        ]
        .into_iter()
        .map(|(kind, pair)| {
            let times = pair.start_to_first_request(tools, n)?;
            Ok((
                kind,
                times
                    .into_iter()
                    .map(|first_request| StartTime {
                        ready: None,
                        first_request,
                    })
                    .collect(),
            ))
        })
        .collect()
    }

    /// The peer pairs' configs: (file name, text).
    fn peer_configs(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut all = self.haproxy.configs()?;
        all.extend(self.nginx_pair.configs()?);
        Ok(all)
    }
}

fn peer_target(kind: TargetKind, pair: &PeerPair) -> Target {
    Target {
        kind,
        url: format!("http://{}/", pair.client.listen),
        proxies: vec![
            ProxyRef {
                role: "client",
                pid: pair.client.proc.pid(),
            },
            ProxyRef {
                role: "server",
                pid: pair.server.proc.pid(),
            },
        ],
    }
}

/// A fresh client-side proxy from spawn: to its readiness endpoint's first 200 (Weft only) and
/// to the first request through the pair answered with the backend's body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StartTime {
    pub(crate) ready: Option<Duration>,
    pub(crate) first_request: Duration,
}

/// The figures of one target in one round.
#[derive(Debug, Clone)]
pub(crate) struct Round {
    pub(crate) wrk: WrkResult,
    /// Per proxy of the target, in its order, over the closed-loop run.
    pub(crate) wrk_usage: Vec<Usage>,
    /// Cores busy on the whole machine during the closed-loop run.
    pub(crate) wrk_machine_vcpu: f64,
    pub(crate) oha: OhaResult,
    /// Per proxy, over the fixed-rate run.
    pub(crate) oha_usage: Vec<Usage>,
    /// Cores busy on the whole machine during the fixed-rate run.
    pub(crate) oha_machine_vcpu: f64,
}

/// A proxy's memory outside the runs.
#[derive(Debug, Clone)]
pub(crate) struct ProxyMemory {
    pub(crate) role: &'static str,
    /// VmRSS once ready and routable, before any load.
    pub(crate) rss_idle_kib: u64,
    /// Of that, anonymous memory (heap, stacks) and file-backed pages (the mapped binary).
    pub(crate) rss_anon_idle_kib: u64,
    pub(crate) rss_file_idle_kib: u64,
    /// VmHWM at the end: the peak over the proxy's life, closed-loop runs included.
    pub(crate) hwm_kib: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct TargetResult {
    pub(crate) kind: TargetKind,
    pub(crate) rounds: Vec<Round>,
    pub(crate) proxies: Vec<ProxyMemory>,
}

/// What the report prints.
#[derive(Debug)]
pub(crate) struct Results {
    pub(crate) args: Args,
    pub(crate) machine: tools::Machine,
    pub(crate) tools: tools::Tools,
    pub(crate) targets: Vec<TargetResult>,
    /// The split target's counters over the measured runs.
    pub(crate) split: SplitCounts,
    /// Spans the traced target's OTLP receiver got over the measured runs.
    pub(crate) traced_spans: u64,
    /// Fresh client-side proxies of each target that has them, spawn → ready.
    pub(crate) starts: Vec<(TargetKind, Vec<StartTime>)>,
    /// The exact commands: this run's, the load generators', the peers'.
    pub(crate) commands: Vec<String>,
    /// The peer pairs' configs as they ran: (file name, text).
    pub(crate) peer_configs: Vec<(String, String)>,
}

pub(crate) fn run(args: Args, json: bool) -> anyhow::Result<()> {
    let results = measure(args)?;
    report::print(&results, json);
    Ok(())
}

/// Sets up every target, runs the rounds, and returns every figure (the report is separate so
/// `weft-bench all` can put it beside the other benchmarks').
pub(crate) fn measure(mut args: Args) -> anyhow::Result<Results> {
    if args.quick {
        args.rounds = 1;
        args.duration = Duration::from_secs(2);
        args.starts = args.starts.min(2);
    }
    if args.rounds == 0 || args.connections == 0 || args.rate == 0 {
        bail!("--rounds, --connections and --rate must be at least 1");
    }
    if args.duration < Duration::from_secs(1) {
        bail!("--duration must be at least 1s (wrk and oha count whole seconds)");
    }
    let mut machine = tools::Machine::read();
    process::cleanup_on_signal()?;
    let cpu_before = process::CpuAccount::read()?;
    let mut bins = Bins::in_dir(&args.bin_dir)?;
    if let Some(p) = &args.proxy_bin {
        bins.proxy =
            std::path::absolute(p).with_context(|| format!("absolute path of {}", p.display()))?;
        anyhow::ensure!(bins.proxy.is_file(), "{} not found", p.display());
    }
    for name in &args.only {
        if !TargetKind::ALL.iter().any(|k| k.name() == name) {
            bail!(
                "--only {name}: no such target (there are: {})",
                TargetKind::ALL.map(TargetKind::name).join(", ")
            );
        }
    }
    let tools = tools::ensure()?;
    let mut lab = Lab::start(&tools, &bins)?;
    eprintln!(
        "pair: backend {}, control plane {}, proxies ready; files in {}",
        lab.backend.addr,
        lab.mesh.grpc_addr,
        lab.dir.path().display()
    );
    let targets: Vec<Target> = lab
        .targets()?
        .into_iter()
        .filter(|t| args.only.is_empty() || args.only.iter().any(|o| o == t.kind.name()))
        .collect();
    let peer_configs = lab.peer_configs()?;
    let mut commands = vec![args.command_line()];
    for t in &targets {
        commands.push(format!(
            "{}: wrk {} ; oha {}",
            t.kind.name(),
            load::wrk_args(&t.url, args.connections, args.duration).join(" "),
            load::oha_args(&tools, &t.url, args.connections, args.rate, args.duration).join(" ")
        ));
    }
    for p in [&lab.haproxy, &lab.nginx_pair] {
        commands.extend(p.commands());
    }
    let mut results: Vec<TargetResult> = targets
        .iter()
        .map(|t| {
            Ok(TargetResult {
                kind: t.kind,
                rounds: Vec::new(),
                proxies: t
                    .proxies
                    .iter()
                    .map(|p| {
                        Ok(ProxyMemory {
                            role: p.role,
                            rss_idle_kib: process::status_kib(p.pid, "VmRSS")?,
                            rss_anon_idle_kib: process::status_kib(p.pid, "RssAnon")?,
                            rss_file_idle_kib: process::status_kib(p.pid, "RssFile")?,
                            hwm_kib: 0,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            })
        })
        .collect::<anyhow::Result<_>>()?;

    if !args.quick {
        for t in &targets {
            eprintln!("pair: warm-up {} (1 s closed loop)", t.kind.name());
            load::wrk(&tools, &t.url, args.connections, Duration::from_secs(1))?;
        }
    }
    let split_before = lab.split_counts()?;
    let spans_before = lab.otlp.spans();
    for round in 1..=args.rounds {
        // Odd rounds run the targets in order, even rounds in reverse (A B, B A, …): a target
        // measured right after another (a warmer or hotter machine) must not always be the
        // same one — it skewed the weft-authz / weft ratio before (docs/benchmarks.md).
        let order: Vec<usize> = if round % 2 == 1 {
            (0..targets.len()).collect()
        } else {
            (0..targets.len()).rev().collect()
        };
        let mut wrk = vec![None; targets.len()];
        for &i in &order {
            let t = &targets[i];
            eprintln!(
                "pair: round {round}/{}: {} closed loop",
                args.rounds,
                t.kind.name()
            );
            wrk[i] = Some(observe(&t.proxies, || {
                load::wrk(&tools, &t.url, args.connections, args.duration)
            })?);
            lab.check_alive()?;
        }
        for &i in &order {
            let t = &targets[i];
            eprintln!(
                "pair: round {round}/{}: {} at {} rps",
                args.rounds,
                t.kind.name(),
                args.rate
            );
            let (oha, oha_usage, oha_machine_vcpu) = observe(&t.proxies, || {
                load::oha(&tools, &t.url, args.connections, args.rate, args.duration)
            })?;
            lab.check_alive()?;
            let Some((wrk, wrk_usage, wrk_machine_vcpu)) = wrk[i].clone() else {
                bail!("round {round}: {} was not measured", t.kind.name());
            };
            results[i].rounds.push(Round {
                wrk,
                wrk_usage,
                wrk_machine_vcpu,
                oha,
                oha_usage,
                oha_machine_vcpu,
            });
        }
    }
    let split = lab.split_counts()?.since(&split_before);
    let traced_spans = lab.otlp.spans() - spans_before;
    for (t, r) in targets.iter().zip(&mut results) {
        for (p, m) in t.proxies.iter().zip(&mut r.proxies) {
            m.hwm_kib = process::status_kib(p.pid, "VmHWM")?;
        }
    }
    eprintln!(
        "pair: {} fresh client proxies of each kind, spawn → ready",
        args.starts
    );
    let mut starts = vec![(TargetKind::Weft, lab.start_to_ready(args.starts)?)];
    starts.extend(lab.peers_start_to_first_request(&tools, args.starts)?);
    machine.loadavg_end = tools::loadavg();
    drop(lab);
    machine.other_vcpu = process::CpuAccount::read()?.other_vcpu_since(&cpu_before);
    Ok(Results {
        args,
        machine,
        tools,
        targets: results,
        split,
        traced_spans,
        starts,
        commands,
        peer_configs,
    })
}

/// Runs `load` while sampling the target's proxies; also how many of the machine's cores were
/// busy on average (whether the chain saturated the machine or left it idle).
fn observe<R>(
    proxies: &[ProxyRef],
    load: impl FnOnce() -> anyhow::Result<R>,
) -> anyhow::Result<(R, Vec<Usage>, f64)> {
    let pids: Vec<u32> = proxies.iter().map(|p| p.pid).collect();
    let before = process::CpuAccount::read()?;
    let (r, usage) = load::observe(&pids, load)?;
    let machine = process::CpuAccount::read()?.machine_vcpu_since(&before);
    Ok((r, usage, machine))
}
