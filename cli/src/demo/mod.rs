//! `weftctl demo`: a whole mesh on one machine, in one command. It starts the control plane
//! (embedded store, or `--etcd`), configures it as an operator would (login, apply), and runs
//! four members, each an application with its own `weft-proxy`:
//!
//! ```text
//!  generator ─► loadgen's proxy ═mTLS═► web's proxy ─► web ─► web's proxy ═mTLS═╦═► api-v1's proxy ─► api-v1
//!                                                          (HTTPRoute demo/api 90/10) ╚═► api-v2's proxy ─► api-v2 (fails 30 %)
//! ```
//!
//! The view refreshes every second from the proxies' own `/metrics`; the web dashboard
//! ([`crate::dashboard`], in-process, scraping the same admin ports) shows it in a browser. Ctrl-C (or `--duration`)
//! stops every process it started and removes its files (and its keys, with `--etcd`).

mod apps;
mod procs;
mod view;

use std::io::{IsTerminal as _, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::net::TcpListener;
use weft_certs::{SpiffeId, TrustDomain};

use apps::App;
use procs::{Child, Ports, lo};
use view::{Counters, History, Member, Snapshot, Stats};

/// The demo's trust domain and namespace.
const TRUST_DOMAIN: &str = "demo.weft";
const NAMESPACE: &str = "demo";
/// The port every demo service declares.
const SERVICE_PORT: u16 = 8080;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stop after this long (e.g. 30s) instead of at Ctrl-C, and print a summary.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Use this etcd (e.g. http://127.0.0.1:2379) instead of the embedded store; the demo's
    /// keys go under their own prefix and are deleted at the end.
    #[arg(long)]
    pub etcd: Option<String>,
    /// First of the ports the demo uses (it needs BASE..BASE+44 on 127.0.0.1); 0: any free
    /// ports.
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Requests per second the generator sends to web.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub rps: u32,
    /// Share of requests api-v2 fails with 503 (0..=1).
    #[arg(long, default_value_t = 0.3, value_parser = parse_share)]
    pub failure_rate: f64,
    /// Where weft-control-plane and weft-proxy are (default: beside weftctl).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The summary at the end of --duration: text, or json.
    #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
    /// Keep the work directory (CA, tokens, logs) instead of removing it.
    #[arg(long)]
    pub keep: bool,
    /// The port of the web dashboard on 127.0.0.1 [default: BASE+2; any free port with
    /// --base-port 0]; 0: any free port.
    #[arg(long, conflicts_with = "no_dashboard")]
    pub dashboard_port: Option<u16>,
    /// Do not serve the web dashboard.
    #[arg(long)]
    pub no_dashboard: bool,
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

/// The members, in the order the view lists them. `serves`: has an application behind an
/// inbound listener. `upstream`: the service its proxy's upstream port forwards to.
struct Spec {
    name: &'static str,
    serves: bool,
    upstream: Option<&'static str>,
    labels: &'static str,
}

const MEMBERS: [Spec; 4] = [
    Spec {
        name: "web",
        serves: true,
        upstream: Some("api"),
        labels: "app=web",
    },
    Spec {
        name: "api-v1",
        serves: true,
        upstream: None,
        labels: "app=api,version=v1",
    },
    Spec {
        name: "api-v2",
        serves: true,
        upstream: None,
        labels: "app=api,version=v2",
    },
    Spec {
        name: "loadgen",
        serves: false,
        upstream: Some("web"),
        labels: "app=loadgen",
    },
];

/// The configuration the demo applies: the four services, the 90/10 canary, and a policy
/// that lets only `web` call `api` (whose selector takes in both versions' workloads, so their
/// proxies enforce it).
fn manifests(v1: u32, v2: u32) -> String {
    let mut docs = Vec::new();
    for name in ["web", "api", "api-v1", "api-v2"] {
        let selector = if name == "api" {
            "  selector: {app: api}\n"
        } else {
            ""
        };
        docs.push(format!(
            "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {{namespace: {NAMESPACE}, name: {name}}}\n\
             spec:\n  ports: [{{name: http, port: {SERVICE_PORT}, protocol: http1}}]\n{selector}"
        ));
    }
    docs.push(format!(
        r#"apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  namespace: {NAMESPACE}
  name: api-from-web
spec:
  targetRef: {{kind: Service, name: api}}
  action: Allow
  from:
  - identities: ["spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/web"]
"#
    ));
    docs.push(format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  namespace: {NAMESPACE}
  name: api-canary
spec:
  parentRefs: [{{kind: Service, name: api, port: {SERVICE_PORT}}}]
  rules:
  - name: canary
    backendRefs:
    - {{name: api-v1, port: {SERVICE_PORT}, weight: {v1}}}
    - {{name: api-v2, port: {SERVICE_PORT}, weight: {v2}}}
    timeouts: {{request: 5s, backendRequest: 2s}}
    retry: {{codes: [503], attempts: 2, backoff: 25ms}}
"#
    ));
    docs.join("---\n")
}

/// The summary `-o json` prints.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    control_plane: String,
    store: &'a str,
    trust_domain: &'a str,
    #[serde(flatten)]
    stats: &'a Stats,
}

/// Runs the demo until Ctrl-C, SIGTERM or `--duration`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("find weftctl's own path")?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => me.parent().context("weftctl's directory")?.to_owned(),
    };
    let control_plane_bin = procs::binary(&bin_dir, "weft-control-plane")?;
    let proxy_bin = procs::binary(&bin_dir, "weft-proxy")?;

    let names: Vec<&str> = MEMBERS.iter().map(|m| m.name).collect();
    let ports = Ports::plan(args.base_port, MEMBERS.len())?;
    ports.check_free(&names, args.base_port)?;
    if let Some(url) = &args.etcd {
        check_etcd(url).await?;
    }
    let dashboard = match (args.no_dashboard, args.dashboard_port) {
        (true, _) => None,
        (false, Some(port)) => Some(port),
        (false, None) if args.base_port == 0 => Some(0),
        (false, None) => Some(
            args.base_port
                .checked_add(2)
                .context("--base-port too high")?,
        ),
    };
    let dashboard = match dashboard {
        Some(port) => Some(crate::dashboard::bind(lo(port)).await.context(
            "the web dashboard (choose another with --dashboard-port, or --no-dashboard)",
        )?),
        None => None,
    };

    let dir = tempfile::Builder::new()
        .prefix("weft-demo.")
        .tempdir()
        .context("create the demo's work directory")?;
    let mut demo = Demo {
        children: Vec::new(),
        tasks: tokio::task::JoinSet::new(),
        etcd_cleanup: None,
        dashboard,
        dashboard_url: None,
    };
    // Watched from here on, so an interrupt while starting still stops what has started.
    let mut signal = tokio::spawn(stop_signal());
    let bins = (control_plane_bin.as_path(), proxy_bin.as_path());
    let result = demo
        .run(&args, dir.path(), &ports, &me, bins, &mut signal)
        .await;
    signal.abort();
    let stopped = demo.stop().await;
    if args.keep {
        let kept = dir.keep();
        eprintln!("kept the work directory {}", kept.display());
    }
    result.and(stopped)
}

/// What the view shows and where it reads it.
#[derive(Clone, Copy)]
struct View<'a> {
    members: &'a [Member],
    admins: &'a [SocketAddr],
    counts: &'a apps::Counts,
    tty: bool,
    header: &'a str,
    next: &'a str,
}

/// What the demo started, so it can stop it.
struct Demo {
    /// Stopped in reverse order: proxies (they deregister), then the control plane.
    children: Vec<Child>,
    /// The applications and the generator.
    tasks: tokio::task::JoinSet<()>,
    /// `(etcd URL, key prefix)` to delete at the end.
    etcd_cleanup: Option<(String, String)>,
    /// The web dashboard's listener, until it is served.
    dashboard: Option<TcpListener>,
    dashboard_url: Option<String>,
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

/// A started demo, as the view needs it.
struct Running {
    members: Vec<Member>,
    admins: Vec<SocketAddr>,
    counts: Arc<apps::Counts>,
    grpc: SocketAddr,
    store: &'static str,
}

/// Resolves at Ctrl-C, SIGTERM or SIGHUP.
type Signal = tokio::task::JoinHandle<anyhow::Result<()>>;

impl Demo {
    /// Starts everything, shows the view until a signal or `--duration`, prints the summary.
    async fn run(
        &mut self,
        args: &Args,
        dir: &Path,
        ports: &Ports,
        weftctl: &Path,
        bins: (&Path, &Path),
        signal: &mut Signal,
    ) -> anyhow::Result<()> {
        let running = tokio::select! {
            r = self.start(args, dir, ports, bins) => r?,
            r = &mut *signal => {
                r.context("the signal watcher")??;
                bail!("interrupted while starting; stopping what has started");
            }
        };
        let Running {
            members,
            admins,
            counts,
            grpc,
            store,
        } = &running;
        if let Some(listener) = self.dashboard.take() {
            let url = crate::dashboard::url_of(listener.local_addr()?);
            // Every proxy's admin address and the control plane's.
            let mut targets: Vec<String> = admins.iter().map(ToString::to_string).collect();
            targets.push(lo(ports.cp_admin).to_string());
            let source = crate::dashboard::scrape_source(&targets, None)?;
            self.tasks.spawn(async move {
                if let Err(e) =
                    crate::dashboard::serve(listener, Box::new(source), Duration::from_secs(2))
                        .await
                {
                    eprintln!("the web dashboard stopped: {e:#}");
                }
            });
            step(&format!("web dashboard: {url}"));
            self.dashboard_url = Some(url);
        }
        let web = &ports.members[0];
        let (api_v1, loadgen) = (&ports.members[1], &ports.members[3]);
        let mut next = next_steps(weftctl, dir, web, (loadgen.outbound, api_v1.admin));
        if let Some(url) = &self.dashboard_url {
            next = format!("Web dashboard: {url}\n{next}");
        }
        let tty = std::io::stdout().is_terminal() && args.duration.is_none();
        if !tty {
            eprintln!("{next}");
        }
        let header = format!(
            "Weft demo: control plane {grpc} ({store}), 4 proxies, trust domain {TRUST_DOMAIN}. {}{}",
            match args.duration {
                Some(d) => format!("Stops after {}.", humantime::format_duration(d)),
                None => "Ctrl-C stops everything.".to_owned(),
            },
            match &self.dashboard_url {
                Some(url) => format!("\nWeb dashboard: {url}"),
                None => String::new(),
            }
        );
        let view = View {
            members,
            admins,
            counts,
            tty,
            header: &header,
            next: &next,
        };
        let history = self.watch(args, &view, signal).await?;
        let Some(total) = history.total(members) else {
            eprintln!("stopped before a second of traffic was measured: no summary");
            return Ok(());
        };
        let mut out = std::io::stdout().lock();
        if args.output == "json" {
            let summary = Summary {
                control_plane: grpc.to_string(),
                store,
                trust_domain: TRUST_DOMAIN,
                stats: &total,
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        } else {
            writeln!(
                out,
                "\n{}",
                view::render(
                    &total,
                    "Summary, from the first request to the last second:"
                )
            )?;
        }
        Ok(())
    }

    /// The CA, the control plane, the configuration, the applications and their proxies, and
    /// the generator once a request gets through.
    async fn start(
        &mut self,
        args: &Args,
        dir: &Path,
        ports: &Ports,
        (control_plane_bin, proxy_bin): (&Path, &Path),
    ) -> anyhow::Result<Running> {
        let td = TrustDomain::parse(TRUST_DOMAIN)?;
        let ca_dir = dir.join("ca");
        step(&format!(
            "a mesh CA for trust domain {TRUST_DOMAIN} in {}",
            ca_dir.display()
        ));
        super::ca_init(
            &td,
            &ca_dir,
            Duration::from_secs(24 * 3600),
            &mut std::io::sink(),
        )?;

        let grpc = lo(ports.grpc);
        let cp_admin = lo(ports.cp_admin);
        let store = if args.etcd.is_some() {
            "etcd"
        } else {
            "embedded store"
        };
        step(&format!(
            "weft-control-plane on {grpc} ({store}), admin http://{cp_admin}"
        ));
        let mut cmd = std::process::Command::new(control_plane_bin);
        cmd.arg("--ca-dir")
            .arg(&ca_dir)
            .args(["--listen", &grpc.to_string()])
            .args(["--admin", &cp_admin.to_string()])
            .args(["--registration-ttl", "10s"]);
        if let Some(url) = &args.etcd {
            let prefix = format!(
                "/weft-demo-{}-{:08x}/",
                std::process::id(),
                fastrand::u32(..)
            );
            cmd.args(["--etcd-endpoints", url, "--etcd-prefix", &prefix]);
            self.etcd_cleanup = Some((url.clone(), prefix));
        }
        self.children.push(Child::spawn(
            "weft-control-plane",
            cmd,
            &dir.join("control-plane.log"),
        )?);
        let cp = self.children.last_mut().context("the control plane")?;
        cp.wait_ready(cp_admin).await?;

        step("weftctl login, and apply the services and a 90/10 canary of api");
        let config = dir.join("config.yaml");
        super::login(
            super::Login {
                control_plane: &grpc.to_string(),
                ca_dir: &ca_dir,
                ttl: Duration::from_secs(24 * 3600),
                identity: None,
                config: &config,
            },
            &mut std::io::sink(),
        )?;
        let manifest = dir.join("demo.yaml");
        std::fs::write(&manifest, manifests(90, 10))?;
        std::fs::write(dir.join("api-50-50.yaml"), manifests(50, 50))?;
        let ctx = super::Context::load(&config)?;
        let mut applied = Vec::new();
        super::apply(
            &ctx,
            &super::ApplyArgs {
                parsed: super::config::parse_files(std::slice::from_ref(&manifest))?,
                dry_run: false,
            },
            &mut applied,
        )
        .await?;
        for l in String::from_utf8_lossy(&applied).lines() {
            eprintln!("    {l}");
        }

        let mut members = Vec::new();
        let mut admins = Vec::new();
        for (spec, p) in MEMBERS.iter().zip(&ports.members) {
            let id: SpiffeId = td.workload(NAMESPACE, spec.name)?;
            let token = dir.join(format!("{}.token", spec.name));
            let mut t = Vec::new();
            super::token_create(&ca_dir, &id, Duration::from_secs(24 * 3600), &mut t)?;
            std::fs::write(&token, t)?;
            if spec.serves {
                let app = match spec.name {
                    "web" => App::Web {
                        upstream: lo(p.upstream),
                    },
                    "api-v1" => App::Api {
                        version: "v1",
                        think: Duration::from_millis(5),
                        failure_rate: 0.0,
                    },
                    _ => App::Api {
                        version: "v2",
                        think: Duration::from_millis(10),
                        failure_rate: args.failure_rate,
                    },
                };
                let listener = TcpListener::bind(lo(p.app)).await.with_context(|| {
                    format!("listen on {} for the {} application", lo(p.app), spec.name)
                })?;
                self.tasks.spawn(apps::serve(listener, app));
            }
            step(&format!(
                "weft-proxy for {} as {id}, admin http://{}",
                spec.name,
                lo(p.admin)
            ));
            let mut cmd = std::process::Command::new(proxy_bin);
            cmd.arg("run")
                .args(["--control-plane", &grpc.to_string()])
                .arg("--trust-bundle")
                .arg(ca_dir.join("ca.crt"))
                .args(["--trust-domain", TRUST_DOMAIN])
                .arg("--token-file")
                .arg(&token)
                .args(["--admin", &lo(p.admin).to_string()])
                .args(["--outbound", &lo(p.outbound).to_string()])
                .args(["--node-id", spec.name])
                .args(["--drain-timeout", "2s"])
                .env("WEFT_LOG", "info");
            if spec.serves {
                cmd.args(["--service", &format!("{NAMESPACE}/{}", spec.name)])
                    .args(["--labels", spec.labels])
                    .args(["--app-port", &p.app.to_string()])
                    .args(["--inbound", &lo(p.inbound).to_string()])
                    .args(["--advertise-ip", "127.0.0.1"]);
            }
            if let Some(to) = spec.upstream {
                cmd.args([
                    "--upstream",
                    &format!("{}={to}.{NAMESPACE}:{SERVICE_PORT}", lo(p.upstream)),
                ]);
            }
            self.children.push(Child::spawn(
                &format!("weft-proxy ({})", spec.name),
                cmd,
                &dir.join(format!("proxy-{}.log", spec.name)),
            )?);
            members.push(Member {
                name: spec.name,
                identity: id.to_string(),
                serves: spec.serves,
            });
            admins.push(lo(p.admin));
        }
        for (child, admin) in self.children[1..].iter_mut().zip(&admins) {
            child.wait_ready(*admin).await?;
        }

        let loadgen = &ports.members[3];
        step("waiting for web to answer through the mesh");
        self.wait_first_answer(lo(loadgen.upstream)).await?;
        let counts = Arc::new(apps::Counts::default());
        self.tasks.spawn(apps::generate(
            apps::root_uri(lo(loadgen.upstream))?,
            args.rps,
            counts.clone(),
        ));
        step(&format!("traffic: {} requests per second to web", args.rps));

        Ok(Running {
            members,
            admins,
            counts,
            grpc,
            store,
        })
    }

    /// Polls the generator's path until one request succeeds (the proxies have their
    /// configuration and web's endpoint), failing with the proxies' logs at the deadline.
    async fn wait_first_answer(&mut self, target: SocketAddr) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + procs::READY_TIMEOUT;
        loop {
            for c in &mut self.children {
                c.check_alive()?;
            }
            let last = match procs::get(target, "/").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status}: {}", body.trim_end()),
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "no request reached web through the mesh within {:?}; the last answer: {last}",
                    procs::READY_TIMEOUT
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Refreshes the view every second until a signal or the duration ends; returns what it
    /// saw.
    async fn watch(
        &mut self,
        args: &Args,
        v: &View<'_>,
        signal: &mut Signal,
    ) -> anyhow::Result<History> {
        let View {
            members,
            admins,
            counts,
            tty,
            header,
            next,
        } = *v;
        let start = tokio::time::Instant::now();
        let mut history = History::new(Duration::from_secs(10));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = &mut *signal => {
                    r.context("the signal watcher")??;
                    eprintln!("\nstopping…");
                    break;
                }
            }
            for c in &mut self.children {
                c.check_alive()?;
            }
            history.push(scrape_all(admins, counts).await?);
            if let Some(recent) = history.recent(members) {
                if tty {
                    print!("\x1b[H\x1b[2J{}\n{next}", view::render(&recent, header));
                    std::io::stdout().flush()?;
                } else {
                    eprintln!("{}", view::line(&recent, start.elapsed()));
                }
            }
            if args.duration.is_some_and(|d| start.elapsed() >= d) {
                break;
            }
        }
        Ok(history)
    }

    /// Stops the generator and applications, then the children in reverse order, then
    /// removes the demo's etcd keys. Every step runs even if an earlier one failed.
    async fn stop(&mut self) -> anyhow::Result<()> {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if !self.children.is_empty() {
            let n = self.children.len();
            step(&format!(
                "stopping {n} {}",
                if n == 1 { "process" } else { "processes" }
            ));
        }
        while let Some(mut c) = self.children.pop() {
            c.stop().await;
        }
        if let Some((url, prefix)) = self.etcd_cleanup.take() {
            let mut client = etcd_client::Client::connect([url.as_str()], None)
                .await
                .with_context(|| format!("connect to {url} to delete the demo's keys"))?;
            client
                .delete(
                    prefix.as_str(),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await
                .with_context(|| format!("delete the demo's keys under {prefix} in {url}"))?;
            step(&format!("deleted the demo's keys under {prefix} in {url}"));
        }
        Ok(())
    }
}

/// Fails with what to do unless etcd at `url` answers within a few seconds (the control plane
/// would otherwise wait for it, and the demo with it).
async fn check_etcd(url: &str) -> anyhow::Result<()> {
    let hint = "start one (Debian: apt-get install etcd-server; it listens on http://127.0.0.1:2379), or leave out --etcd to use the embedded store";
    let reach = async {
        let mut c = etcd_client::Client::connect([url], None).await?;
        c.status().await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(5), reach).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("--etcd {url}: {e:#}; {hint}"),
        Err(_) => bail!("--etcd {url}: no answer within 5 s; {hint}"),
    }
}

/// Every proxy's counters now.
async fn scrape_all(admins: &[SocketAddr], counts: &apps::Counts) -> anyhow::Result<Snapshot> {
    let at = std::time::Instant::now();
    let generated = counts.get();
    let mut members = Vec::new();
    for admin in admins {
        let (status, text) = procs::get(*admin, "/metrics").await?;
        if status != 200 {
            bail!("GET http://{admin}/metrics: {status}");
        }
        let samples =
            super::scrape::parse(&text).with_context(|| format!("http://{admin}/metrics"))?;
        members.push(Counters::from_samples(&samples));
    }
    Ok(Snapshot {
        at,
        members,
        generated,
    })
}

/// Ctrl-C, SIGTERM or SIGHUP.
async fn stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    Ok(())
}

/// What to try while the demo runs, with its real paths and ports.
fn next_steps(
    weftctl: &Path,
    dir: &Path,
    web: &procs::MemberPorts,
    (loadgen_outbound, api_admin): (u16, u16),
) -> String {
    let ctl = weftctl.display();
    let d = dir.display();
    let (web_outbound, web_admin) = (web.outbound, web.admin);
    let loadgen = format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/loadgen");
    format!(
        "Try, in another terminal:
  export WEFT_CONFIG={d}/config.yaml
  {ctl} apply -f {d}/api-50-50.yaml     # move the canary to 50/50; watch the split follow
  {ctl} apply -f {d}/demo.yaml          # and back to 90/10
  {ctl} get endpoints -n {NAMESPACE}
  {ctl} explain --admin 127.0.0.1:{web_admin} http://api.{NAMESPACE}:{SERVICE_PORT}/
  curl -x http://127.0.0.1:{web_outbound} http://api.{NAMESPACE}:{SERVICE_PORT}/    # as web, through its proxy
  curl -s 127.0.0.1:{web_admin}/metrics | grep response_total
  curl -s 127.0.0.1:{web_admin}/certs
Zero-trust: only web may call api (AuthorizationPolicy demo/api-from-web). As loadgen, denied:
  curl -i -x http://127.0.0.1:{loadgen_outbound} http://api.{NAMESPACE}:{SERVICE_PORT}/    # 403, x-weft-error: denied
  {ctl} explain --admin 127.0.0.1:{api_admin} --inbound --from {loadgen} http://api.{NAMESPACE}:{SERVICE_PORT}/
Logs: {d}/*.log
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_manifests_parse_and_carry_the_weights() {
        for (v1, v2) in [(90, 10), (50, 50)] {
            let text = manifests(v1, v2);
            let docs = weft_control_plane::manifest::parse_manifests("demo.yaml", &text).unwrap();
            assert_eq!(docs.len(), 6);
            assert!(text.contains(&format!("name: api-v2, port: 8080, weight: {v2}")));
        }
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        assert_eq!(parse_share("0.3"), Ok(0.3));
        assert!(parse_share("1.5").unwrap_err().contains("between 0 and 1"));
        assert!(parse_share("x").is_err());
    }
}
