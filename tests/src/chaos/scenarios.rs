//! The five scenarios of issue 18's chaos suite. Each builds its own lab (a CA, a control plane
//! or two, proxies, backends; etcd where it says so), runs an open-loop load through a client
//! proxy, injects its fault, and returns what the load saw plus its own checks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{ControlPlane, Forwarder, Lab, Outcome, Params, ProxyProc, Role, until};
use crate::dataplane::{http_backend, tcp_echo};
use crate::etcd::EtcdServer;
use crate::http_get;
use crate::load::{Load, LoadConfig, Protocol};

/// The store behind the control plane of scenario 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Etcd,
    /// The embedded store with `--store-snapshot`.
    Embedded,
}

/// Scenario names, as `weft-bench chaos --scenario` takes them.
pub const NAMES: [&str; 6] = [
    "cp-restart-etcd",
    "cp-restart-embedded",
    "etcd-quorum",
    "cert-rotation",
    "cp-rolling",
    "endpoints-killed",
];

/// Runs the scenario called `name` (one of [`NAMES`]).
pub async fn run(name: &str, p: &Params) -> anyhow::Result<Outcome> {
    match name {
        "cp-restart-etcd" => control_plane_restart(p, Store::Etcd).await,
        "cp-restart-embedded" => control_plane_restart(p, Store::Embedded).await,
        "etcd-quorum" => etcd_quorum_loss(p).await,
        "cert-rotation" => cert_rotation(p).await,
        "cp-rolling" => rolling_restart(p).await,
        "endpoints-killed" => endpoints_killed(p).await,
        other => anyhow::bail!("no scenario {other:?}; known: {}", NAMES.join(", ")),
    }
}

fn service_yaml(name: &str, protocol: &str) -> String {
    format!(
        "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {{namespace: default, name: {name}}}\nspec:\n  ports: [{{name: p, port: 80, protocol: {protocol}}}]\n"
    )
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

fn server(service: &str, app: SocketAddr) -> Role {
    Role::Server {
        service: service.into(),
        app_port: app.port(),
    }
}

fn client_of(services: &[&str]) -> Role {
    Role::Client {
        upstreams: services.iter().map(|s| ((*s).to_owned(), 80)).collect(),
    }
}

/// The Service `api` with two server proxies, a client proxy that holds both as endpoints, and
/// a third backend for a server a scenario starts later.
struct ApiPair {
    s1: ProxyProc,
    s2: ProxyProc,
    client: ProxyProc,
    b3: SocketAddr,
}

async fn api_pair(lab: &Lab, addr: &str) -> anyhow::Result<ApiPair> {
    lab.apply("api.yaml", &service_yaml("api", "http1")).await?;
    let (b1, b2, b3) = (
        http_backend("api-1", false).await?,
        http_backend("api-2", false).await?,
        http_backend("api-3", false).await?,
    );
    let s1 = ProxyProc::start(lab, addr, "api-1", "api", server("api", b1)).await?;
    let s2 = ProxyProc::start(lab, addr, "api-2", "api", server("api", b2)).await?;
    let client = ProxyProc::start(lab, addr, "client", "client", client_of(&["api"])).await?;
    client
        .wait_endpoints(
            "api",
            &[inbound(&s1)?, inbound(&s2)?],
            Duration::from_secs(10),
        )
        .await?;
    Ok(ApiPair { s1, s2, client, b3 })
}

fn inbound(p: &ProxyProc) -> anyhow::Result<SocketAddr> {
    p.inbound.context("a server proxy has an inbound address")
}

/// Waits until every proxy has its discovery stream open again and every server proxy is
/// registered: they reconnected by themselves.
async fn reconnected(
    clients: &[&ProxyProc],
    servers: &[&ProxyProc],
    deadline: Duration,
) -> anyhow::Result<()> {
    until(
        "every proxy reconnected to the control plane",
        deadline,
        || async {
            for c in clients.iter().chain(servers) {
                if c.metric("discovery_connected ").await != Some(1.0) {
                    return None;
                }
            }
            for s in servers {
                if s.metric("registered_endpoints ").await != Some(1.0) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
}

/// GETs through `upstream` until backend `name` answers one (at most `tries`).
async fn reaches(upstream: SocketAddr, name: &str, tries: usize) -> bool {
    for _ in 0..tries {
        if let Ok((200, body)) = http_get(&upstream.to_string(), "/").await
            && body.starts_with(&format!("{name} "))
        {
            return true;
        }
    }
    false
}

/// 1. The control plane SIGKILLed under load for `outage`, then restarted; a new endpoint
///    starts while it is down and must be routed to within 2 s of the restart.
pub async fn control_plane_restart(p: &Params, store: Store) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new(match store {
        Store::Etcd => "1. control plane SIGKILL + restart (etcd)",
        Store::Embedded => "1. control plane SIGKILL + restart (embedded, --store-snapshot)",
    });
    let lab = Lab::new().await?;
    let etcd = match store {
        Store::Etcd => Some(EtcdServer::start().await?),
        Store::Embedded => None,
    };
    let mut args = vec!["--registration-ttl".to_owned(), secs(p.registration_ttl)];
    match &etcd {
        Some(e) => args.extend(["--etcd-endpoints".into(), e.client_url()]),
        None => args.extend([
            "--store-snapshot".into(),
            lab.path("store.json").display().to_string(),
        ]),
    }
    let mut cp = ControlPlane::start(&lab, "control-plane", &args).await?;
    let addr = cp.addr();
    lab.login(&addr).await?;
    let ApiPair { s1, s2, client, b3 } = api_pair(&lab, &addr).await?;

    let load = Load::start(LoadConfig::new(
        client.upstreams[0],
        Protocol::Http1,
        p.rate,
    ));
    tokio::time::sleep(p.steady).await;
    load.fault_begins();
    cp.proc.kill().await?;
    // A new endpoint starts while the control plane is down: its proxy waits for it.
    let mut s3 = ProxyProc::spawn(&lab, &addr, "api-3", "api", server("api", b3), &[]).await?;
    tokio::time::sleep(p.outage).await;
    let restarted = Instant::now();
    cp.restart().await?;
    let ready_in = restarted.elapsed();
    let s3_addr = inbound(&s3)?.to_string();
    let routed = until(
        "the client holding the new endpoint",
        Duration::from_secs(30),
        || async {
            client
                .endpoints("api")
                .await
                .ok()?
                .contains(&s3_addr)
                .then(|| restarted.elapsed())
        },
    )
    .await;
    match routed {
        Ok(t) => {
            let hit = reaches(client.upstreams[0], "api-3", 60).await;
            out.check(
                "new endpoint routed to within 2 s of the restart",
                t <= Duration::from_secs(2) && hit,
                format!(
                    "in the client's endpoints {:.2} s after the restart (control plane ready after {:.2} s); a request reached it: {hit}",
                    t.as_secs_f64(),
                    ready_in.as_secs_f64()
                ),
            );
        }
        Err(e) => out.check(
            "new endpoint routed to within 2 s of the restart",
            false,
            format!("{e:#}"),
        ),
    }
    s3.wait_ready(Duration::from_secs(10)).await?;
    let back = reconnected(&[&client], &[&s1, &s2, &s3], Duration::from_secs(10)).await;
    out.check(
        "proxies reconnected by themselves",
        back.is_ok(),
        match back {
            Ok(()) => format!(
                "all 4 within {:.2} s of the restart",
                restarted.elapsed().as_secs_f64()
            ),
            Err(e) => format!("{e:#}"),
        },
    );
    load.fault_ends();
    tokio::time::sleep(p.steady).await;
    out.loads.push(("http/1.1".into(), load.stop().await));
    Ok(out)
}

/// 2. etcd, 3 members: the leader killed under load, then a second member (quorum lost) for
///    `outage`; meanwhile `weftctl get` (answered from the last state, with its age), `weftctl
///    apply` (all or nothing, never lost) and a new endpoint's registration (lands once quorum
///    is back).
pub async fn etcd_quorum_loss(p: &Params) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new("2. etcd 3 members: leader killed, then quorum lost");
    let lab = Lab::new().await?;
    let mut etcd = EtcdServer::cluster(3).await?;
    let urls: Vec<String> = etcd.iter().map(EtcdServer::client_url).collect();
    let cp = ControlPlane::start(
        &lab,
        "control-plane",
        &["--etcd-endpoints".into(), urls.join(",")],
    )
    .await?;
    let addr = cp.addr();
    lab.login(&addr).await?;
    let ApiPair { s1, s2, client, b3 } = api_pair(&lab, &addr).await?;

    let load = Load::start(LoadConfig::new(
        client.upstreams[0],
        Protocol::Http1,
        p.rate,
    ));
    tokio::time::sleep(p.steady).await;
    load.fault_begins();
    let leader = leader_of(&etcd).await?;
    etcd[leader].stop().await?;
    let second = until("a new etcd leader", Duration::from_secs(20), || async {
        let i = leader_of(&etcd).await.ok()?;
        (i != leader).then_some(i)
    })
    .await?;
    let new_leader_at = Instant::now();
    // The same Service applied while two of three members serve: etcd keeps working.
    lab.apply("api.yaml", &service_yaml("api", "http1")).await?;
    out.check(
        "leader killed: a new one, apply works with 2 of 3",
        true,
        format!("member n{leader} killed, n{second} elected"),
    );
    etcd[second].stop().await?;
    let lost_at = Instant::now();

    // Quorum lost. `get` answers from the control plane's last state.
    let get = lab.weftctl(&["get", "services", "-o", "yaml"]).await?;
    let first_get = Instant::now();
    let warned = get
        .stderr
        .lines()
        .find(|l| l.contains("last state"))
        .map(str::to_owned);
    out.check(
        "weftctl get without quorum: last state + its age",
        get.success && get.stdout.contains("name: api") && warned.is_some(),
        format!(
            "exit ok {}, lists api {}, stderr: {}",
            get.success,
            get.stdout.contains("name: api"),
            warned.unwrap_or_else(|| get.stderr.trim().to_owned())
        ),
    );
    // An apply of two documents: all or nothing.
    let web = lab.write(
        "web.yaml",
        &format!(
            "{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{namespace: default, name: web}}\nspec:\n  parentRefs: [{{name: web}}]\n  rules: [{{backendRefs: [{{name: web}}]}}]\n",
            service_yaml("web", "http1")
        ),
    )?;
    let apply = lab.weftctl(&["apply", "-f", &web]).await?;
    // A new endpoint starts: it gets its certificate (no store needed) and keeps trying to
    // register.
    let s3 = ProxyProc::spawn(&lab, &addr, "api-3", "api", server("api", b3), &[]).await?;
    // Two seconds later (the age is in whole seconds), the same answer says it has aged.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(first_get.elapsed())).await;
    let again = lab.weftctl(&["get", "services", "-o", "yaml"]).await?;
    let aged = again
        .stderr
        .lines()
        .find(|l| l.contains("last state"))
        .map(str::to_owned);
    out.check(
        "the age grows while the store stays unreachable",
        again.success
            && aged
                .as_ref()
                .is_some_and(|l| !l.contains("at least 0s old")),
        match aged {
            Some(l) => l.split("), ").last().unwrap_or_default().to_owned(),
            None => again.stderr.trim().to_owned(),
        },
    );
    tokio::time::sleep(p.outage.saturating_sub(lost_at.elapsed())).await;
    etcd[leader].start_again()?;
    etcd[second].start_again()?;
    for m in &mut etcd {
        m.wait_healthy(Duration::from_secs(30)).await?;
    }
    let quorum_at = Instant::now();

    // After quorum: the apply landed whole, or failed with a clear error and nothing of it is
    // there; applying again works. Nothing applied before is lost.
    let present = |kind: &'static str| {
        let lab = &lab;
        async move {
            let r = lab.weftctl(&["get", kind, "-o", "yaml"]).await.ok()?;
            Some(r.stdout.contains("name: web"))
        }
    };
    let (svc, route) = (present("services").await, present("httproutes").await);
    let first_line = |s: &str| s.lines().next().unwrap_or_default().to_owned();
    let (ok, detail) = if apply.success {
        (
            svc == Some(true) && route == Some(true),
            format!("applied during the loss; after quorum service {svc:?} route {route:?}"),
        )
    } else {
        let clear =
            apply.stderr.to_lowercase().contains("unavailable") || apply.stderr.contains("store");
        let again = lab.weftctl(&["apply", "-f", &web]).await?;
        (
            clear && svc == Some(false) && route == Some(false) && again.success,
            format!(
                "refused during the loss ({}); nothing half-applied (service {svc:?} route {route:?}); applied again after quorum: {}",
                first_line(apply.stderr.trim()),
                again.success
            ),
        )
    };
    out.check(
        "weftctl apply during the loss: whole or clearly refused",
        ok,
        detail,
    );
    let api_kept = lab
        .weftctl(&["get", "services", "-o", "yaml"])
        .await?
        .stdout
        .contains("name: api");
    let registered = client
        .wait_endpoints(
            "api",
            &[inbound(&s1)?, inbound(&s2)?, inbound(&s3)?],
            Duration::from_secs(30),
        )
        .await;
    out.check(
        "registration during the loss lands once quorum is back; nothing lost",
        registered.is_ok() && api_kept,
        match registered {
            Ok(()) => format!(
                "3 endpoints at the client {:.2} s after quorum; service api kept: {api_kept}",
                quorum_at.elapsed().as_secs_f64()
            ),
            Err(e) => format!("{e:#}"),
        },
    );
    load.fault_ends();
    let _ = new_leader_at;
    tokio::time::sleep(p.steady).await;
    out.loads.push(("http/1.1".into(), load.stop().await));
    drop(s3);
    Ok(out)
}

/// The index of the member that is the leader (polled: elections take a moment).
async fn leader_of(etcd: &[EtcdServer]) -> anyhow::Result<usize> {
    until("an etcd leader", Duration::from_secs(20), || async {
        for (i, m) in etcd.iter().enumerate() {
            if m.is_leader().await {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// 3. Certificates that live `svid_ttl`, renewed under load over long-lived HTTP/2 and TCP
///    connections for `rotation_run`: no failed request, no broken connection, every proxy
///    renewed at least `min_renewals` times.
pub async fn cert_rotation(p: &Params) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new(&format!(
        "3. certificate rotation (SVID TTL {}) over HTTP/2 + TCP",
        secs(p.svid_ttl)
    ));
    let lab = Lab::new().await?;
    let cp = ControlPlane::start(
        &lab,
        "control-plane",
        &["--svid-ttl".into(), secs(p.svid_ttl)],
    )
    .await?;
    let addr = cp.addr();
    lab.login(&addr).await?;
    lab.apply(
        "services.yaml",
        &format!(
            "{}---\n{}",
            service_yaml("api-h2", "http2"),
            service_yaml("api-tcp", "tcp")
        ),
    )
    .await?;
    let h2_app = http_backend("api-h2", true).await?;
    let tcp_app = tcp_echo().await?;
    let s_h2 = ProxyProc::start(&lab, &addr, "api-h2", "api-h2", server("api-h2", h2_app)).await?;
    let s_tcp = ProxyProc::start(
        &lab,
        &addr,
        "api-tcp",
        "api-tcp",
        server("api-tcp", tcp_app),
    )
    .await?;
    let client = ProxyProc::start(
        &lab,
        &addr,
        "client",
        "client",
        client_of(&["api-h2", "api-tcp"]),
    )
    .await?;
    client
        .wait_endpoints("api-h2", &[inbound(&s_h2)?], Duration::from_secs(10))
        .await?;
    client
        .wait_endpoints("api-tcp", &[inbound(&s_tcp)?], Duration::from_secs(10))
        .await?;

    let half = (p.rate / 2).max(1);
    let mut h2 = LoadConfig::new(client.upstreams[0], Protocol::Http2, half);
    h2.authority = "api-h2.default".into();
    let h2 = Load::start(h2);
    let tcp = Load::start(LoadConfig::new(client.upstreams[1], Protocol::Tcp, half));
    // The whole run is the fault: certificates expire and are replaced throughout.
    h2.fault_begins();
    tcp.fault_begins();
    tokio::time::sleep(p.rotation_run).await;
    let (h2, tcp) = (h2.stop().await, tcp.stop().await);
    let mut renewals = Vec::new();
    for proxy in [&client, &s_h2, &s_tcp] {
        let n = proxy
            .metric("identity_cert_renewals_total ")
            .await
            .unwrap_or(0.0) as u64;
        renewals.push((proxy.proc_name(), n));
    }
    out.check(
        &format!("every proxy renewed ≥ {} times", p.min_renewals),
        renewals.iter().all(|(_, n)| *n >= p.min_renewals),
        renewals
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.check(
        "0 long-lived connections reset",
        h2.connections_lost == 0 && tcp.connections_lost == 0,
        format!(
            "http/2: {} opened, {} lost; tcp: {} opened, {} lost",
            h2.connections_opened,
            h2.connections_lost,
            tcp.connections_opened,
            tcp.connections_lost
        ),
    );
    out.loads.push(("http/2".into(), h2));
    out.loads.push(("tcp".into(), tcp));
    Ok(out)
}

/// 4. Two control-plane replicas on one etcd behind a forwarder (as a Kubernetes Service):
///    kill one, start it again, kill the other, start it again, under load. Proxies move
///    between them; versions are equal on both, so nothing is sent again.
pub async fn rolling_restart(p: &Params) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new("4. rolling restart of 2 control-plane replicas (one etcd)");
    let lab = Lab::new().await?;
    let etcd = EtcdServer::start().await?;
    let args = ["--etcd-endpoints".to_owned(), etcd.client_url()];
    let mut a = ControlPlane::start(&lab, "control-plane-a", &args).await?;
    let mut b = ControlPlane::start(&lab, "control-plane-b", &args).await?;
    let fwd = Forwarder::start(vec![a.grpc, b.grpc]).await?;
    let addr = fwd.addr.to_string();
    lab.login(&a.addr()).await?;
    lab.apply("api.yaml", &service_yaml("api", "http1")).await?;
    let (b1, b2) = (
        http_backend("api-1", false).await?,
        http_backend("api-2", false).await?,
    );
    let s1 = ProxyProc::start(&lab, &addr, "api-1", "api", server("api", b1)).await?;
    let s2 = ProxyProc::start(&lab, &addr, "api-2", "api", server("api", b2)).await?;
    let client = ProxyProc::start(&lab, &addr, "client", "client", client_of(&["api"])).await?;
    client
        .wait_endpoints(
            "api",
            &[inbound(&s1)?, inbound(&s2)?],
            Duration::from_secs(10),
        )
        .await?;
    let before = client.config().await?;
    let generation = |c: &serde_json::Value| c["generation"].as_u64().unwrap_or(0);

    let load = Load::start(LoadConfig::new(
        client.upstreams[0],
        Protocol::Http1,
        p.rate,
    ));
    tokio::time::sleep(p.steady).await;
    load.fault_begins();
    let started = Instant::now();
    let mut moves = Vec::new();
    for replica in [&mut a, &mut b] {
        replica.proc.kill().await?;
        let t = Instant::now();
        // The proxies on it notice and reconnect through the forwarder to the other one.
        let back = reconnected(&[&client], &[&s1, &s2], Duration::from_secs(15)).await;
        moves.push(match back {
            Ok(()) => format!("{:.2} s", t.elapsed().as_secs_f64()),
            Err(e) => format!("{e:#}"),
        });
        tokio::time::sleep(p.steady).await;
        replica.restart().await?;
        tokio::time::sleep(p.steady).await;
    }
    let after = client.config().await?;
    load.fault_ends();
    out.check(
        "proxies moved between replicas by themselves",
        moves.iter().all(|m| m.ends_with(" s")),
        format!("reconnected after each kill in: {}", moves.join(", ")),
    );
    out.check(
        "no resync storm: same versions on both replicas",
        before["system_version"] == after["system_version"] && generation(&after) == generation(&before),
        format!(
            "client's system_version {} → {}; responses accepted during the restarts: {} (over {:.0} s)",
            before["system_version"],
            after["system_version"],
            generation(&after).saturating_sub(generation(&before)),
            started.elapsed().as_secs_f64()
        ),
    );
    tokio::time::sleep(p.steady).await;
    out.loads.push(("http/1.1".into(), load.stop().await));
    Ok(out)
}

/// 5. Three endpoints behind a route that retries connect failures, refused streams, resets and
///    gateway errors; two are SIGKILLed one after the other under load.
pub async fn endpoints_killed(p: &Params) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new("5. backend endpoints SIGKILLed one by one (route with retries)");
    let lab = Lab::new().await?;
    let cp = ControlPlane::start(&lab, "control-plane", &[]).await?;
    let addr = cp.addr();
    lab.login(&addr).await?;
    lab.apply(
        "api.yaml",
        &format!(
            "{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  namespace: default\n  name: api\n  annotations:\n    retry.weft.io/on: connect-failure,refused-stream,reset,gateway-error\nspec:\n  parentRefs: [{{name: api}}]\n  rules:\n  - backendRefs: [{{name: api}}]\n    retry: {{attempts: 3, backoff: 10ms}}\n",
            service_yaml("api", "http1")
        ),
    )
    .await?;
    let mut servers = Vec::new();
    for i in 1..=3 {
        let app = http_backend(&format!("api-{i}"), false).await?;
        servers.push(
            ProxyProc::start(&lab, &addr, &format!("api-{i}"), "api", server("api", app)).await?,
        );
    }
    let client = ProxyProc::start(&lab, &addr, "client", "client", client_of(&["api"])).await?;
    let all: Vec<SocketAddr> = servers.iter().map(inbound).collect::<anyhow::Result<_>>()?;
    client
        .wait_endpoints("api", &all, Duration::from_secs(10))
        .await?;

    let load = Load::start(LoadConfig::new(
        client.upstreams[0],
        Protocol::Http1,
        p.rate,
    ));
    tokio::time::sleep(p.steady).await;
    load.fault_begins();
    for s in servers.iter_mut().take(2) {
        s.proc.kill().await?;
        tokio::time::sleep(p.steady.max(Duration::from_secs(2))).await;
    }
    load.fault_ends();
    let last = reaches(client.upstreams[0], "api-3", 20).await;
    out.check(
        "the last endpoint serves",
        last,
        format!("api-3 answered: {last}"),
    );
    tokio::time::sleep(p.steady).await;
    out.loads.push(("http/1.1".into(), load.stop().await));
    Ok(out)
}
