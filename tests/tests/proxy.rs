//! The proxy's configuration path against a real control plane (embedded store): it certifies
//! with a join token, becomes ready with its first configuration, follows changes, renews its
//! certificate, and never shows a key.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use weft_proto::config::v1::config_client::ConfigClient;
use weft_proto::config::v1::{ApplyRequest, DeleteRequest, Document, Kind, ObjectRef, document};
use weft_proto::mesh::v1 as pb;
use weft_proxy::identity::ControlPlane;
use weft_proxy::{Config, Proxy};
use weft_tests::http_get;
use weft_tests::mesh::{TD, TestMesh, workload};

fn service(name: &str, port: u32) -> Document {
    Document {
        kind: Some(document::Kind::Service(pb::Service {
            namespace: "default".into(),
            name: name.into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port,
                protocol: pb::Protocol::Http1.into(),
            }],
            ..Default::default()
        })),
    }
}

async fn apply(mesh: &TestMesh, docs: Vec<Document>) {
    ConfigClient::new(mesh.admin().await.unwrap())
        .apply(ApplyRequest {
            documents: docs,
            dry_run: false,
        })
        .await
        .unwrap();
    mesh.cp.wait_synced().await.unwrap();
}

/// A proxy for `default/<sa>` with a join token in `dir`.
async fn start_proxy(
    mesh: &TestMesh,
    dir: &tempfile::TempDir,
    sa: &str,
    ttl: Option<Duration>,
) -> anyhow::Result<Proxy> {
    let token = mesh.ca.token(&workload("default", sa), "10m").await?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token)?;
    Ok(Proxy::start(Config {
        control_plane: ControlPlane {
            addr: mesh.cp.grpc_addr().to_string(),
            token_file,
            cert_ttl: ttl,
        },
        trust_bundle: mesh.ca.bundle_file(),
        trust_domain: Some(weft_certs::TrustDomain::parse(TD)?),
        admin: "127.0.0.1:0".parse()?,
        node_id: sa.to_owned(),
        inbound: None,
        outbound: None,
        upstreams: vec![],
        data: Default::default(),
        drain_timeout: Duration::from_secs(5),
        trace: None,
        access_log: None,
    })
    .await?)
}

/// GETs `path` on the admin port until `ok` accepts the answer, or fails after 10 s.
async fn admin_until(proxy: &Proxy, path: &str, ok: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let addr = proxy.admin_addr.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(&addr, path).await.unwrap();
        if ok(status, &body) {
            return (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never matched; last answer {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_proxy_certifies_becomes_ready_and_follows_the_configuration() {
    let mesh = TestMesh::start().await.unwrap();
    apply(&mesh, vec![service("reviews", 9080)]).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&mesh, &dir, "web", None).await.unwrap();
    assert_eq!(
        proxy.identity.svid().id.as_str(),
        workload("default", "web")
    );

    admin_until(&proxy, "/ready", |s, _| s == 200).await;
    let (_, dump) = admin_until(&proxy, "/config_dump", |_, b| b.contains("default/reviews")).await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["services"]["default/reviews"]["ports"][0]["port"],
        9080
    );
    assert_eq!(dump["trust_bundle"]["trust_domain"], TD);

    // A change reaches the proxy; a removal too.
    apply(&mesh, vec![service("ratings", 9090)]).await;
    admin_until(&proxy, "/config_dump", |_, b| b.contains("default/ratings")).await;
    ConfigClient::new(mesh.admin().await.unwrap())
        .delete(DeleteRequest {
            objects: vec![ObjectRef {
                kind: Kind::Service.into(),
                namespace: "default".into(),
                name: "ratings".into(),
            }],
        })
        .await
        .unwrap();
    let (_, dump) = admin_until(&proxy, "/config_dump", |_, b| {
        !b.contains("default/ratings")
    })
    .await;
    assert!(dump.contains("default/reviews"), "{dump}");

    let (_, certs) = admin_until(&proxy, "/certs", |s, _| s == 200).await;
    assert!(certs.contains(&workload("default", "web")), "{certs}");
    assert!(!certs.contains("PRIVATE KEY"), "{certs}");
    let (_, metrics) = admin_until(&proxy, "/metrics", |s, _| s == 200).await;
    assert!(metrics.contains("discovery_connected 1"), "{metrics}");
    assert!(
        metrics.contains("identity_cert_expiration_timestamp_seconds"),
        "{metrics}"
    );
    assert_eq!(
        weft_tests::metric_value(&metrics, "discovery_nacks_total{type=\"service\"}"),
        Some(0.0),
        "{metrics}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_refused_token_fails_the_start_with_the_reason() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "not-a-token").unwrap();
    let err = Proxy::start(Config {
        control_plane: ControlPlane {
            addr: mesh.cp.grpc_addr().to_string(),
            token_file,
            cert_ttl: None,
        },
        trust_bundle: mesh.ca.bundle_file(),
        trust_domain: Some(weft_certs::TrustDomain::parse(TD).unwrap()),
        admin: "127.0.0.1:0".parse().unwrap(),
        node_id: "web".into(),
        inbound: None,
        outbound: None,
        upstreams: vec![],
        data: Default::default(),
        drain_timeout: Duration::from_secs(5),
        trace: None,
        access_log: None,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("Certify refused"), "{err}");
}

#[tokio::test]
async fn the_certificate_is_renewed_before_it_expires_and_the_proxy_stays_ready() {
    let mesh = TestMesh::start().await.unwrap();
    apply(&mesh, vec![service("reviews", 9080)]).await;
    let dir = tempfile::tempdir().unwrap();
    // The control plane's shortest lifetime: renewed ~7 s in.
    let proxy = start_proxy(&mesh, &dir, "web", Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let first = proxy.identity.svid();
    let mut renewals = proxy.identity.renewals();
    tokio::time::timeout(Duration::from_secs(15), renewals.changed())
        .await
        .expect("no renewal within 15 s of a 10 s certificate")
        .unwrap();
    let now = proxy.identity.svid();
    assert_eq!(now.id, first.id);
    assert!(now.not_after > first.not_after);
    assert_ne!(now.certified.cert[0], first.certified.cert[0]);
    admin_until(&proxy, "/ready", |s, _| s == 200).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_bad_flag_is_one_line_and_exit_2() {
    for (args, log, names) in [
        (vec!["--mtls", "sometimes"], "info", "--mtls"),
        (vec!["--upstream", "5000=api"], "info", "--upstream"),
        (vec!["--service", "no-slash"], "info", "--service"),
        (vec!["--labels", "version"], "info", "--labels"),
        (vec!["--cores", "0"], "info", "--cores"),
        (vec![], "weft_proxy=loud", "WEFT_LOG"),
    ] {
        let out = tokio::process::Command::new(weft_tests::bin("weft-proxy"))
            .args([
                "run",
                "--control-plane",
                "127.0.0.1:1",
                "--trust-bundle",
                "/nonexistent",
            ])
            .args([
                "--trust-domain",
                "mesh.test",
                "--token-file",
                "/nonexistent",
            ])
            .args(&args)
            .env("WEFT_LOG", log)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("weft-proxy: ") && stderr.contains(names),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_missing_or_unknown_flag_is_named_in_one_line() {
    for (args, names) in [
        (
            vec!["run"],
            vec!["--control-plane", "--trust-bundle", "--token-file"],
        ),
        (
            vec![
                "run",
                "--control-plane",
                "127.0.0.1:1",
                "--trust-bundle",
                "/x",
                "--token-file",
                "/x",
                "--no-such-flag",
            ],
            vec!["--no-such-flag"],
        ),
        (vec!["wait-ready", "--admin", "nowhere"], vec!["--admin"]),
    ] {
        let out = tokio::process::Command::new(weft_tests::bin("weft-proxy"))
            .args(&args)
            .env_remove("WEFT_CONTROL_PLANE")
            .env_remove("WEFT_TRUST_BUNDLE")
            .env_remove("WEFT_TOKEN_FILE")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        for name in names {
            assert!(
                stderr.contains(name),
                "{args:?} does not name {name}: {stderr}"
            );
        }
    }
}

/// A client-only proxy for `default/web`, its trust domain taken from the bundle.
fn web_config(mesh: &TestMesh, token_file: std::path::PathBuf, admin: &str) -> Config {
    Config {
        control_plane: ControlPlane {
            addr: mesh.cp.grpc_addr().to_string(),
            token_file,
            cert_ttl: None,
        },
        trust_bundle: mesh.ca.bundle_file(),
        trust_domain: None,
        admin: admin.parse().unwrap(),
        node_id: "web".into(),
        inbound: None,
        outbound: None,
        upstreams: vec![],
        data: Default::default(),
        drain_timeout: Duration::from_secs(5),
        trace: None,
        access_log: None,
    }
}

#[tokio::test]
async fn the_trust_domain_comes_from_the_bundle_and_a_contradicting_flag_is_refused() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = mesh
        .ca
        .token(&workload("default", "web"), "10m")
        .await
        .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    // Without the flag: the bundle's root names the trust domain.
    let proxy = Proxy::start(web_config(&mesh, token_file.clone(), "127.0.0.1:0"))
        .await
        .unwrap();
    let (_, certs) = admin_until(&proxy, "/certs", |s, _| s == 200).await;
    assert!(
        certs.contains(&format!("spiffe://{TD}/ns/default/sa/web")),
        "{certs}"
    );
    proxy.shutdown().await;

    // A flag that contradicts the bundle: refused before anything is asked of the control plane.
    let bundle = mesh.ca.bundle_file();
    let out = tokio::process::Command::new(weft_tests::bin("weft-proxy"))
        .args(["run", "--control-plane", &mesh.cp.grpc_addr().to_string()])
        .arg("--trust-bundle")
        .arg(&bundle)
        .arg("--token-file")
        .arg(&token_file)
        .args(["--trust-domain", "other.test", "--admin", "127.0.0.1:0"])
        .args(["--outbound", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("other.test") && stderr.contains(TD),
        "the refusal names both trust domains: {stderr}"
    );
}

#[tokio::test]
async fn wait_ready_returns_once_the_proxy_is_ready_and_fails_with_what_it_saw() {
    // Nothing listens: it gives up after its timeout, exit 1, naming the address and the cause.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = tokio::process::Command::new(weft_tests::bin("weft-proxy"))
        .args(["wait-ready", "--admin", &format!("127.0.0.1:{port}")])
        .args(["--timeout", "1s"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}/ready")) && stderr.contains("refused"),
        "{stderr}"
    );

    // Started before the proxy, as a postStart hook is: it is still waiting while nothing is
    // ready, and exits 0 once the proxy's /ready answers 200.
    let mut waiter = tokio::process::Command::new(weft_tests::bin("weft-proxy"))
        .args(["wait-ready", "--admin", &format!("127.0.0.1:{port}")])
        .args(["--timeout", "60s"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mesh = TestMesh::start().await.unwrap();
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "wait-ready returned before any proxy existed"
    );
    let dir = tempfile::tempdir().unwrap();
    let token = mesh
        .ca
        .token(&workload("default", "web"), "10m")
        .await
        .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let proxy = Proxy::start(web_config(&mesh, token_file, &format!("127.0.0.1:{port}")))
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), waiter.wait())
        .await
        .expect("wait-ready never returned")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let (code, _) = http_get(&proxy.admin_addr.to_string(), "/ready")
        .await
        .unwrap();
    assert_eq!(code, 200, "wait-ready returned while /ready was not 200");
    proxy.shutdown().await;
}

/// Forwards every connection on `listener` to `to` (a control plane that "comes back").
fn forward(listener: tokio::net::TcpListener, to: std::net::SocketAddr) {
    tokio::spawn(async move {
        while let Ok((mut a, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
}

#[tokio::test]
async fn a_proxy_started_before_its_control_plane_waits_unready_then_becomes_ready() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = mesh
        .ca
        .token(&workload("default", "web"), "10m")
        .await
        .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // Nothing listens on `cp` yet: the control plane is "down".
    let (cp, admin) = (free(), free());
    let spawn = || {
        tokio::process::Command::new(weft_tests::bin("weft-proxy"))
            .args(["run", "--control-plane", &cp.to_string()])
            .arg("--trust-bundle")
            .arg(mesh.ca.bundle_file())
            .arg("--token-file")
            .arg(&token_file)
            .args(["--admin", &admin.to_string(), "--outbound", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut proxy = spawn();
    let admin_s = admin.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let (Ok((200, _)), Ok((503, why))) = (
            http_get(&admin_s, "/live").await,
            http_get(&admin_s, "/ready").await,
        ) && why.contains("waiting for the control plane")
        {
            break;
        }
        assert!(proxy.try_wait().unwrap().is_none(), "the proxy exited");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never live-but-waiting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The control plane "comes back" on its address: the proxy certifies and is ready.
    forward(
        tokio::net::TcpListener::bind(cp).await.unwrap(),
        mesh.cp.grpc_addr(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = http_get(&admin_s, "/ready").await {
            break;
        }
        assert!(proxy.try_wait().unwrap().is_none(), "the proxy exited");
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = proxy.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), proxy.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sigterm_while_waiting_for_the_control_plane_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let ca = weft_tests::TestCa::init(TD).await.unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "x").unwrap();
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (cp, admin) = (free(), free());
    let mut proxy = tokio::process::Command::new(weft_tests::bin("weft-proxy"))
        .args(["run", "--control-plane", &cp.to_string()])
        .arg("--trust-bundle")
        .arg(ca.bundle_file())
        .arg("--token-file")
        .arg(&token_file)
        .args(["--admin", &admin.to_string(), "--outbound", "127.0.0.1:0"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin_s = admin.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !matches!(http_get(&admin_s, "/ready").await, Ok((503, _))) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "admin never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = proxy.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `Max open files` of a process: (soft, hard).
fn open_files_limit(pid: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_open_files_soft_limit_is_raised_to_the_hard_limit_at_start() {
    let (_, hard) = open_files_limit("self");
    assert_ne!(hard, "1024", "this test needs a hard limit above 1024");
    let ca = weft_tests::TestCa::init(TD).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "x").unwrap();
    // Started with a soft limit of 1024 (as many systems default to); no control plane is
    // needed: the proxy waits for it, and the limit is raised before.
    let mut proxy = tokio::process::Command::new("prlimit")
        .arg(format!("--nofile=1024:{hard}"))
        .arg(weft_tests::bin("weft-proxy"))
        .args(["run", "--control-plane", "127.0.0.1:1"])
        .arg("--trust-bundle")
        .arg(ca.bundle_file())
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .args(["--admin", "127.0.0.1:0", "--outbound", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = proxy.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let said = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("open files soft limit raised") {
                return line;
            }
        }
        String::new()
    })
    .await
    .unwrap();
    assert!(
        said.contains("from=1024") && said.contains(&format!("to={hard}")),
        "{said}"
    );
    let pid = proxy.id().unwrap().to_string();
    assert_eq!(open_files_limit(&pid), (hard.clone(), hard));
}
