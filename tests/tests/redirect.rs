//! `weft-proxy init` for real: two network namespaces joined by a veth pair — a "pod" with
//! the redirection rules, a real proxy running as uid 2102 and an application on two ports,
//! and "another pod" with a meshed client, a plain client and another service. Needs root,
//! `ip`, `iptables` (nft and legacy) and `setpriv`, which the test command has; it fails, not
//! skips, without them.
//!
//! The outer test builds the namespaces and runs the inner test inside the pod's; processes
//! of the other pod are started with `ip netns exec`, some of them this test binary in a
//! helper role (an echo server, one HTTP GET).
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use weft_tests::mesh::{TestMesh, workload};

const POD_IP: &str = "10.231.0.2";
const OTHER_IP: &str = "10.231.0.1";
const POD_IP6: &str = "fd31::2";
/// The control plane, forwarded on the pod's IP for the other pod's proxies (and skipped by
/// the inbound rules: `--skip-inbound-ports`).
const CP_PORT: u16 = 18443;
/// The pod's application ports: the first is --app-port, the second reached only by
/// redirection.
const APP_PORTS: [u16; 2] = [8080, 9090];
/// The other service's backend (in the other pod) and a port skipped by the pod's outbound
/// rules.
const EXT_PORT: u16 = 7070;
const EXT_SKIPPED: u16 = 7071;
/// An address in front of the other service that is no mesh endpoint (as a Kubernetes
/// Service's cluster IP is).
const CLUSTER_IP: &str = "10.231.0.9";
/// The meshed client's local port in the other pod (its proxy's `--upstream`).
const CLIENT_UPSTREAM: u16 = 15001;

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (this test needs root, iproute2 and iptables)"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_pods_traffic_goes_through_its_proxy_and_init_is_idempotent_and_undoable() {
    let id = std::process::id();
    let (pod, other) = (format!("wpod-{id}"), format!("wother-{id}"));
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
    sh(&["ip", "netns", "add", &pod]);
    let _cleanup = Cleanup(vec![pod.clone(), other.clone()]);
    sh(&["ip", "netns", "add", &other]);
    let (a, b) = (format!("wv{id}a"), format!("wv{id}b"));
    sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
    sh(&["ip", "link", "set", &a, "netns", &pod]);
    sh(&["ip", "link", "set", &b, "netns", &other]);
    for (ns, dev, v4, v6) in [
        (&pod, &a, POD_IP, POD_IP6),
        (&other, &b, OTHER_IP, "fd31::1"),
    ] {
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            dev,
        ]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            dev,
            "nodad",
        ]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    // An address of the other pod's that no endpoint registers: a Service's cluster IP.
    sh(&[
        "ip",
        "-n",
        &other,
        "addr",
        "add",
        &format!("{CLUSTER_IP}/24"),
        "dev",
        &b,
    ]);
    let out = Command::new("ip")
        .args(["netns", "exec", &pod])
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "inside_the_pod", "--nocapture"])
        .env("WEFT_TEST_OTHER_NS", &other)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "inner test failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the inner test did not run:\n{text}"
    );
}

/// Answers every request with `<local port> <x-weft-client-id or none> <peer ip>`.
async fn echo(listen: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let local = tcp.local_addr().unwrap().port();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let id = req
                        .headers()
                        .get("x-weft-client-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                            "{local} {id} {}",
                            peer.ip().to_canonical()
                        )))))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// One GET; `Err` with what went wrong.
async fn get(addr: &str, path: &str, host: &str) -> Result<String, String> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// The helper roles this binary plays in the other pod: `echo` (serve until killed) or `get`
/// (print one response).
#[tokio::test]
#[ignore = "a helper role, run by the tests above with WEFT_HELPER set"]
async fn helper() {
    match std::env::var("WEFT_HELPER").unwrap().as_str() {
        "echo" => {
            let listens: Vec<SocketAddr> = std::env::var("WEFT_HELPER_LISTEN")
                .unwrap()
                .split(',')
                .map(|a| a.parse().unwrap())
                .collect();
            let servers: Vec<_> = listens.into_iter().map(|a| tokio::spawn(echo(a))).collect();
            for s in servers {
                s.await.unwrap();
            }
        }
        "get" => {
            let path = std::env::var("WEFT_HELPER_PATH").unwrap_or_else(|_| "/".into());
            let addr = std::env::var("WEFT_HELPER_ADDR").unwrap();
            let host = std::env::var("WEFT_HELPER_HOST").unwrap_or_else(|_| addr.clone());
            match get(&addr, &path, &host).await {
                Ok(body) => println!("RESULT ok {body}"),
                Err(e) => println!("RESULT err {e}"),
            }
        }
        other => panic!("unknown helper {other}"),
    }
}

/// A process in the other pod, killed on drop.
struct Bg(std::process::Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_other(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &std::env::var("WEFT_TEST_OTHER_NS").unwrap(),
    ])
    .args(args)
    .envs(envs.iter().copied())
    .stdin(Stdio::null());
    cmd
}

/// `GET path` from the other pod (a helper process there).
fn get_path_from_other(addr: &str, path: &str) -> Result<String, String> {
    let exe = std::env::current_exe().unwrap().display().to_string();
    let args = [
        exe.as_str(),
        "--ignored",
        "--exact",
        "helper",
        "--nocapture",
    ];
    let envs = [
        ("WEFT_HELPER", "get"),
        ("WEFT_HELPER_ADDR", addr),
        ("WEFT_HELPER_PATH", path),
    ];
    let out = in_other(&args, &envs).output().unwrap();
    result(&out)
}

fn get_from_other(addr: &str) -> Result<String, String> {
    get_path_from_other(addr, "/")
}

/// GET from inside the pod, as `uid` (a helper process, so the uid is its own).
fn get_in_pod_as(uid: u32, addr: &str) -> Result<String, String> {
    get_in_pod_with_host(uid, addr, addr)
}

/// The same with another Host header (what an application that resolved a name sends).
fn get_in_pod_with_host(uid: u32, addr: &str, host: &str) -> Result<String, String> {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
        ])
        .arg(exe)
        .args(["--ignored", "--exact", "helper", "--nocapture"])
        .env("WEFT_HELPER", "get")
        .env("WEFT_HELPER_ADDR", addr)
        .env("WEFT_HELPER_HOST", host)
        .output()
        .unwrap();
    result(&out)
}

fn result(out: &std::process::Output) -> Result<String, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().find_map(|l| l.strip_prefix("RESULT ")) {
        Some(r) => match r.split_once(' ') {
            Some(("ok", body)) => Ok(body.to_owned()),
            Some((_, e)) => Err(e.to_owned()),
            None => Err(r.to_owned()),
        },
        None => Err(format!(
            "no result: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// Polls `f` until it returns `Ok` passing `check`, or panics with the last answer.
async fn until<F, C>(what: &str, mut f: F, check: C) -> String
where
    F: FnMut() -> Result<String, String>,
    C: Fn(&str) -> bool,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = tokio::task::block_in_place(&mut f);
        if let Ok(body) = &r
            && check(body)
        {
            return body.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: last answer {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn nat_rules(save: &str) -> String {
    let out = sh(&[save, "-t", "nat"]);
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn init(args: &[&str]) -> String {
    let mut all = vec![
        weft_tests::bin("weft-proxy").display().to_string(),
        "init".into(),
    ];
    all.extend(["--skip-inbound-ports".into(), CP_PORT.to_string()]);
    all.extend(["--skip-outbound-ports".into(), EXT_SKIPPED.to_string()]);
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    sh(&refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the test above, inside the pod's network namespace"]
async fn inside_the_pod() {
    std::env::var("WEFT_TEST_OTHER_NS").expect("run only inside the test's pod namespace");
    let mesh = TestMesh::start().await.unwrap();
    let cp = mesh.cp.grpc_addr();
    // The other pod reaches the control plane through the pod's IP.
    let forward = tokio::net::TcpListener::bind((POD_IP, CP_PORT))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = forward.accept().await {
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(cp).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
    let services = [("api", APP_PORTS[0]), ("ext", EXT_PORT)];
    weft_tests::dataplane::apply(
        &mesh,
        services
            .iter()
            .map(|(n, p)| {
                weft_tests::dataplane::service(
                    n,
                    u32::from(*p),
                    weft_proto::mesh::v1::Protocol::Http1,
                )
            })
            .collect(),
    )
    .await
    .unwrap();

    // Files every process may read (the proxy runs as 2102).
    let dir = tempfile::tempdir().unwrap();
    sh(&["chmod", "755", dir.path().to_str().unwrap()]);
    let token = |sa: &str| {
        let path = dir.path().join(format!("{sa}.token"));
        (sa.to_owned(), path)
    };
    let mut tokens = Vec::new();
    for sa in ["api", "ext", "web"] {
        let (sa, path) = token(sa);
        std::fs::write(
            &path,
            mesh.ca
                .token(&workload("default", &sa), "10m")
                .await
                .unwrap(),
        )
        .unwrap();
        sh(&["chmod", "644", path.to_str().unwrap()]);
        tokens.push(path);
    }
    let bundle = dir.path().join("ca.crt");
    std::fs::copy(mesh.ca.bundle_file(), &bundle).unwrap();
    sh(&["chmod", "644", bundle.to_str().unwrap()]);

    // The application on two ports, then the rules, then the proxy as uid 2102.
    for port in APP_PORTS {
        tokio::spawn(echo(SocketAddr::from(([0, 0, 0, 0], port))));
    }
    let first = init(&[]);
    assert!(first.contains("backend nft"), "{first}");
    let installed = (nat_rules("iptables-save"), nat_rules("ip6tables-save"));
    assert!(installed.0.contains("WEFT_INBOUND") && installed.1.contains("WEFT_OUTPUT"));
    init(&[]);
    assert_eq!(
        (nat_rules("iptables-save"), nat_rules("ip6tables-save")),
        installed,
        "a second init changed the rules"
    );
    let proxy_bin = weft_tests::bin("weft-proxy");
    let mut proxy = Command::new("setpriv");
    proxy
        .args(["--reuid=2102", "--regid=2102", "--clear-groups", "--"])
        .arg(&proxy_bin)
        .args(["run", "--control-plane", &cp.to_string()])
        .arg("--trust-bundle")
        .arg(&bundle)
        .arg("--token-file")
        .arg(&tokens[0])
        .args(["--service", "default/api", "--app-port", "8080"])
        .args(["--inbound", "[::]:4143", "--outbound", "[::]:4140"])
        .args(["--admin", "0.0.0.0:4191", "--advertise-ip", POD_IP])
        .arg("--inbound-redirected")
        .stdin(Stdio::null());
    let _proxy = Bg(proxy.spawn().unwrap());

    // The other pod: the other service (its backend on two ports, its proxy) and a meshed
    // client's proxy.
    let exe = std::env::current_exe().unwrap().display().to_string();
    let listens = format!("0.0.0.0:{EXT_PORT},0.0.0.0:{EXT_SKIPPED}");
    let _ext_backend = Bg(in_other(
        &[&exe, "--ignored", "--exact", "helper", "--nocapture"],
        &[("WEFT_HELPER", "echo"), ("WEFT_HELPER_LISTEN", &listens)],
    )
    .stdout(Stdio::null())
    .spawn()
    .unwrap());
    let cp_there = format!("{POD_IP}:{CP_PORT}");
    let proxy_str = proxy_bin.display().to_string();
    let bundle_str = bundle.display().to_string();
    let (ext_token, web_token) = (
        tokens[1].display().to_string(),
        tokens[2].display().to_string(),
    );
    let as_proxy = [
        "setpriv",
        "--reuid=2102",
        "--regid=2102",
        "--clear-groups",
        "--",
    ];
    let _ext_proxy = Bg(in_other(
        &[
            as_proxy[0],
            as_proxy[1],
            as_proxy[2],
            as_proxy[3],
            as_proxy[4],
            &proxy_str,
            "run",
            "--control-plane",
            &cp_there,
            "--trust-bundle",
            &bundle_str,
            "--token-file",
            &ext_token,
            "--service",
            "default/ext",
            "--app-port",
            "7070",
            "--inbound",
            "0.0.0.0:4143",
            "--advertise-ip",
            OTHER_IP,
            "--admin",
            "127.0.0.1:4191",
            "--outbound",
            "127.0.0.1:4140",
        ],
        &[],
    )
    .spawn()
    .unwrap());
    let upstream = format!("127.0.0.1:{CLIENT_UPSTREAM}=api.default:8080");
    let _web_proxy = Bg(in_other(
        &[
            as_proxy[0],
            as_proxy[1],
            as_proxy[2],
            as_proxy[3],
            as_proxy[4],
            &proxy_str,
            "run",
            "--control-plane",
            &cp_there,
            "--trust-bundle",
            &bundle_str,
            "--token-file",
            &web_token,
            "--upstream",
            &upstream,
            "--admin",
            "127.0.0.1:4192",
            "--outbound",
            "127.0.0.1:4141",
        ],
        &[],
    )
    .spawn()
    .unwrap());

    // A meshed client reaches the app port through the inbound proxy, with its identity.
    let web_id = workload("default", "web");
    let meshed = until(
        "meshed client to api",
        || get_from_other(&format!("127.0.0.1:{CLIENT_UPSTREAM}")),
        |b| b.starts_with("8080 "),
    )
    .await;
    assert_eq!(meshed, format!("8080 {web_id} 127.0.0.1"));
    // A plain client reaches both ports on the pod's IP, IPv4 and IPv6; the application sees
    // the proxy (loopback) as its peer: the connections went through it.
    for port in APP_PORTS {
        for ip in [POD_IP.to_owned(), format!("[{POD_IP6}]")] {
            let body = get_from_other(&format!("{ip}:{port}")).unwrap();
            assert_eq!(body, format!("{port} none 127.0.0.1"), "{ip}:{port}");
        }
    }
    // The admin port answers the other pod directly (never redirected): health only.
    let admin = format!("{POD_IP}:4191");
    assert_eq!(get_path_from_other(&admin, "/ready"), Ok("ok".to_owned()));
    let forbidden = get_path_from_other(&admin, "/config_dump");
    assert!(
        forbidden.as_ref().is_err_and(|e| e.starts_with("403")),
        "{forbidden:?}"
    );

    // The application's outbound connection to the other service goes through the outbound
    // proxy: the other service's backend sees the pod's identity.
    let api_id = workload("default", "api");
    let out = until(
        "outbound through the proxy",
        || get_in_pod_as(0, &format!("{OTHER_IP}:{EXT_PORT}")),
        |b| b.starts_with("7070 spiffe://"),
    )
    .await;
    assert_eq!(out, format!("7070 {api_id} 127.0.0.1"));
    // To an address that is no endpoint (a cluster IP), HTTP is routed by its Host: a mesh
    // service's name (qualified, or one label in the pod's own namespace) goes over mTLS to
    // that service; any other host goes on, as it was, to where the application was going.
    let cluster = format!("{CLUSTER_IP}:{EXT_PORT}");
    for host in [
        "ext.default:7070",
        "ext.default.svc.cluster.local:7070",
        "ext:7070",
    ] {
        assert_eq!(
            get_in_pod_with_host(0, &cluster, host),
            Ok(format!("7070 {api_id} 127.0.0.1")),
            "Host {host}"
        );
    }
    assert_eq!(
        get_in_pod_with_host(0, &cluster, "elsewhere.example"),
        Ok(format!("7070 none {POD_IP}"))
    );

    // The proxy's own uid bypasses it, and so does a skipped port.
    assert_eq!(
        get_in_pod_as(2102, &format!("{OTHER_IP}:{EXT_PORT}")).unwrap(),
        format!("7070 none {POD_IP}")
    );
    assert_eq!(
        get_in_pod_as(0, &format!("{OTHER_IP}:{EXT_SKIPPED}")).unwrap(),
        format!("{EXT_SKIPPED} none {POD_IP}")
    );

    // The other pod gets its own rules (its proxies run as 2102 too; its backend's ports are
    // skipped): its application's connections to either of the pod's ports now go through
    // its proxy, which dials the port asked for over mTLS (the pod registered as redirected),
    // so the application on each port sees the client's identity.
    let skip = format!("{EXT_PORT},{EXT_SKIPPED}");
    let other_init = in_other(
        &[
            &proxy_str,
            "init",
            "--outbound-port",
            "4141",
            "--skip-inbound-ports",
            &skip,
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(other_init.status.success(), "{other_init:?}");
    for port in APP_PORTS {
        let body = until(
            "meshed client to both ports",
            || get_from_other(&format!("{POD_IP}:{port}")),
            |b| b.contains("spiffe://"),
        )
        .await;
        assert_eq!(body, format!("{port} {web_id} 127.0.0.1"));
    }
    let other_undo = in_other(&[&proxy_str, "init", "--cleanup"], &[])
        .output()
        .unwrap();
    assert!(other_undo.status.success(), "{other_undo:?}");

    // --cleanup leaves no rule of ours; legacy mode works the same, and auto then picks it.
    let undo = init(&["--cleanup"]);
    assert!(undo.contains("removed"), "{undo}");
    for save in ["iptables-save", "ip6tables-save"] {
        assert!(!nat_rules(save).contains("WEFT"), "{save} still has rules");
    }
    assert_eq!(
        get_from_other(&format!("{POD_IP}:9090")).unwrap(),
        format!("9090 none {OTHER_IP}"),
        "without the rules the application is reached directly"
    );
    init(&["--mode", "legacy"]);
    assert!(nat_rules("iptables-legacy-save").contains("WEFT_INBOUND"));
    assert_eq!(
        get_from_other(&format!("{POD_IP}:9090")).unwrap(),
        "9090 none 127.0.0.1"
    );
    let auto = init(&[]);
    assert!(auto.contains("backend legacy (auto"), "{auto}");
    init(&["--mode", "legacy", "--cleanup"]);
    for save in [
        "iptables-legacy-save",
        "ip6tables-legacy-save",
        "iptables-save",
    ] {
        assert!(!nat_rules(save).contains("WEFT"), "{save} still has rules");
    }
}
