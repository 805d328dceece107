//! Zero-trust policy end to end: a control plane, a server proxy in front of `api`, and client
//! proxies with different identities, all on loopback. Each test applies policies through the
//! config API and checks what clients, the application and the metrics see.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_proto::config::v1::config_client::ConfigClient;
use weft_proto::config::v1::{DeleteRequest, Document, Kind, ObjectRef, document};
use weft_proto::mesh::v1::{self as pb, Protocol};
use weft_tests::dataplane::{
    ProxyOpts, apply, echo, grpc_echo, http_backend, proxy_get, start_proxy, wait_endpoints,
};
use weft_tests::mesh::{TestMesh, workload};
use weft_tests::{metric_value, poll};

const DEADLINE: Duration = Duration::from_secs(10);

fn service(
    name: &str,
    port: u32,
    protocol: Protocol,
    default: pb::DefaultInboundPolicy,
) -> Document {
    Document {
        kind: Some(document::Kind::Service(pb::Service {
            namespace: "default".into(),
            name: name.into(),
            ports: vec![pb::Port {
                name: String::new(),
                port,
                protocol: protocol.into(),
            }],
            default_inbound_policy: default.into(),
            ..Default::default()
        })),
    }
}

fn policy(
    name: &str,
    target: &str,
    action: pb::AuthorizationAction,
    mode: pb::PolicyMode,
    from: Vec<pb::AuthorizationFrom>,
    to: Vec<pb::AuthorizationTo>,
) -> Document {
    Document {
        kind: Some(document::Kind::AuthorizationPolicy(
            pb::AuthorizationPolicy {
                namespace: "default".into(),
                name: name.into(),
                target_ref: Some(pb::PolicyTargetRef {
                    kind: "Service".into(),
                    name: target.into(),
                }),
                action: action.into(),
                mode: mode.into(),
                from,
                to,
            },
        )),
    }
}

fn from_ids(ids: &[&str]) -> Vec<pb::AuthorizationFrom> {
    vec![pb::AuthorizationFrom {
        identities: ids.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }]
}

fn path_prefix(p: &str) -> Vec<pb::AuthorizationTo> {
    vec![pb::AuthorizationTo {
        paths: vec![pb::PathMatch {
            r#type: pb::path_match::Type::PathPrefix.into(),
            value: p.into(),
        }],
        ..Default::default()
    }]
}

use pb::AuthorizationAction::{Allow, Deny};
use pb::PolicyMode::{Audit, Enforce};

async fn delete(mesh: &TestMesh, kind: Kind, name: &str) {
    ConfigClient::new(mesh.admin().await.unwrap())
        .delete(DeleteRequest {
            objects: vec![ObjectRef {
                kind: kind.into(),
                namespace: "default".into(),
                name: name.into(),
            }],
        })
        .await
        .unwrap();
    mesh.cp.wait_synced().await.unwrap();
}

/// A mesh with `api` (HTTP/1.1 on port 80, behind its proxy) and client proxies by
/// (namespace, service account).
struct Setup {
    mesh: TestMesh,
    _dir: tempfile::TempDir,
    api: weft_proxy::Proxy,
    clients: Vec<weft_proxy::Proxy>,
}

impl Setup {
    async fn start(
        default: pb::DefaultInboundPolicy,
        probe: bool,
        clients: &[(&str, &str)],
    ) -> Self {
        let mesh = TestMesh::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cp = mesh.cp.grpc_addr().to_string();
        apply(&mesh, vec![service("api", 80, Protocol::Http1, default)])
            .await
            .unwrap();
        let backend = http_backend("api-v1", false).await.unwrap();
        let opts = ProxyOpts {
            app: Some((backend.port(), "api".into())),
            probe_paths: if probe {
                vec![(backend.port(), "/healthz".into())]
            } else {
                vec![]
            },
            ..Default::default()
        };
        let api = start_proxy(&mesh, &cp, dir.path(), "api", opts)
            .await
            .unwrap();
        let mut started = Vec::new();
        for (ns, sa) in clients {
            let opts = ProxyOpts {
                namespace: Some((*ns).to_owned()),
                ..Default::default()
            };
            let p = start_proxy(&mesh, &cp, dir.path(), sa, opts).await.unwrap();
            wait_endpoints(&p, "api", 1).await.unwrap();
            started.push(p);
        }
        Setup {
            mesh,
            _dir: dir,
            api,
            clients: started,
        }
    }

    /// GET through client `i`'s proxy.
    async fn get(&self, i: usize, path: &str) -> (u16, hyper::HeaderMap, String) {
        let out = self.clients[i].outbound_addr.unwrap();
        proxy_get(out, &format!("http://api.default{path}"))
            .await
            .unwrap()
    }

    /// Polls until client `i` gets `status` for `path` (a policy change has reached the proxy).
    async fn until(&self, i: usize, path: &str, status: u16) -> hyper::HeaderMap {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (got, headers, body) = self.get(i, path).await;
            if got == status {
                return headers;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "client {i} {path}: still {got} ({body}), want {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The sum of the series of `text` that start with `prefix` and contain every one of `labels`.
fn sum_series(text: &str, prefix: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const DECISIONS: &str = "authz_decisions_total{service=\"default/api\",port=";

/// A plaintext HTTP/1.1 request written as the bytes given, straight to `addr`; the status.
async fn raw_status(addr: std::net::SocketAddr, request_line: &str) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("{request_line}\r\nhost: api.default\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{request_line}: no status in {text:?}"))
}

#[tokio::test]
async fn allow_by_identity_namespace_and_service_account() {
    let s = Setup::start(
        pb::DefaultInboundPolicy::Allow,
        false,
        &[
            ("default", "web"),
            ("default", "other"),
            ("shop", "web"),
            ("shop-admin", "web"),
        ],
    )
    .await;
    // Before any policy: everyone in.
    assert_eq!(s.get(1, "/").await.0, 200);

    let web = workload("default", "web");
    apply(
        &s.mesh,
        vec![policy(
            "api-access",
            "api",
            Allow,
            Enforce,
            from_ids(&[&web]),
            vec![],
        )],
    )
    .await
    .unwrap();
    let h = s.until(1, "/", 403).await;
    assert_eq!(h["x-weft-error"], "denied");
    assert!(h.contains_key("x-weft-policy"), "{h:?}");
    assert_eq!(s.get(0, "/").await.0, 200);

    // By namespace: segment-exact, so shop-admin is not shop.
    let ns = vec![pb::AuthorizationFrom {
        namespaces: vec!["shop".into()],
        ..Default::default()
    }];
    apply(
        &s.mesh,
        vec![policy("api-access", "api", Allow, Enforce, ns, vec![])],
    )
    .await
    .unwrap();
    s.until(2, "/", 200).await;
    assert_eq!(s.get(3, "/").await.0, 403);
    assert_eq!(s.get(0, "/").await.0, 403);

    // By service account.
    let sa = vec![pb::AuthorizationFrom {
        service_accounts: vec![pb::ServiceAccountRef {
            namespace: "default".into(),
            name: "other".into(),
        }],
        ..Default::default()
    }];
    apply(
        &s.mesh,
        vec![policy("api-access", "api", Allow, Enforce, sa, vec![])],
    )
    .await
    .unwrap();
    s.until(1, "/", 200).await;
    assert_eq!(s.get(0, "/").await.0, 403);
    assert_eq!(s.get(2, "/").await.0, 403);
    // Denials were counted, with the client's TLS.
    let text = s.api.metrics.encode();
    let denied = sum_series(&text, DECISIONS, &["decision=\"deny\"", "tls=\"true\""]);
    assert!(denied >= 4.0, "{text}");
}

#[tokio::test]
async fn deny_overrides_allow_and_is_not_retried() {
    let s = Setup::start(
        pb::DefaultInboundPolicy::Allow,
        false,
        &[("default", "web")],
    )
    .await;
    let authenticated = vec![pb::AuthorizationFrom {
        authenticated: true,
        ..Default::default()
    }];
    let web = workload("default", "web");
    apply(
        &s.mesh,
        vec![
            policy("any-mesh", "api", Allow, Enforce, authenticated, vec![]),
            policy(
                "no-admin",
                "api",
                Deny,
                Enforce,
                from_ids(&[&web]),
                path_prefix("/admin"),
            ),
        ],
    )
    .await
    .unwrap();
    let h = s.until(0, "/admin/users", 403).await;
    assert_eq!(h["x-weft-policy"], "default/no-admin");
    assert_eq!(s.get(0, "/public").await.0, 200);
    // Each denied request reached the server proxy once: the client's proxy did not retry.
    let denials = || sum_series(&s.api.metrics.encode(), DECISIONS, &["decision=\"deny\""]);
    let before = denials();
    for _ in 0..4 {
        assert_eq!(s.get(0, "/admin").await.0, 403);
    }
    assert_eq!(denials(), before + 4.0, "{}", s.api.metrics.encode());
    let client_side = s.clients[0].metrics.encode();
    assert!(!client_side.contains("retries_total{"), "{client_side}");

    // "Why was I denied?", asked of the server's proxy, says which policy and why.
    let admin = s.api.admin_addr.to_string();
    let explain = |from: String, path: &'static str| {
        let admin = admin.clone();
        async move {
            let url = format!("http://api.default{path}");
            weft_tests::weftctl(&[
                "explain",
                "--admin",
                &admin,
                "--inbound",
                "--from",
                &from,
                &url,
            ])
            .await
            .unwrap()
        }
    };
    let out = explain(web.clone(), "/x/../admin/users").await;
    assert!(
        out.contains("GET /admin/users"),
        "normalized path shown: {out}"
    );
    assert!(
        out.contains("default/no-admin") && out.contains("DENY by default/no-admin"),
        "{out}"
    );
    let out = explain(web.clone(), "/public").await;
    assert!(out.contains("ALLOW by default/any-mesh"), "{out}");
    assert!(out.contains("not matched (to: path /public"), "{out}");
}

#[tokio::test]
async fn defaults_authenticated_and_deny_with_probe_paths() {
    let s = Setup::start(
        pb::DefaultInboundPolicy::Authenticated,
        true,
        &[("default", "web")],
    )
    .await;
    let inbound = s.api.inbound_addr.unwrap();
    // A plaintext client is refused, and told nothing about why.
    let resp = proxy_get(inbound, "http://api.default/x").await.unwrap();
    assert_eq!(resp.0, 403);
    assert!(
        !resp.1.contains_key("x-weft-error") && !resp.1.contains_key("x-weft-policy"),
        "{:?}",
        resp.1
    );
    // A meshed one is in.
    assert_eq!(s.get(0, "/x").await.0, 200);

    apply(
        &s.mesh,
        vec![service(
            "api",
            80,
            Protocol::Http1,
            pb::DefaultInboundPolicy::Deny,
        )],
    )
    .await
    .unwrap();
    let h = s.until(0, "/x", 403).await;
    assert_eq!(h["x-weft-policy"], "default:deny");
    // The probe path answers anyone, plaintext included, for GET and HEAD only.
    assert_eq!(raw_status(inbound, "GET /healthz HTTP/1.1").await, 200);
    assert_eq!(raw_status(inbound, "HEAD /healthz HTTP/1.1").await, 200);
    assert_eq!(raw_status(inbound, "POST /healthz HTTP/1.1").await, 403);
    assert_eq!(raw_status(inbound, "GET /healthz/more HTTP/1.1").await, 403);
    // Both probes were allowed as probes, from a plaintext client.
    let text = s.api.metrics.encode();
    let probes = sum_series(&text, DECISIONS, &["policy=\"probe\"", "tls=\"false\""]);
    assert_eq!(probes, 2.0, "{text}");
}

#[tokio::test]
async fn audit_policies_count_but_never_decide() {
    let s = Setup::start(
        pb::DefaultInboundPolicy::Allow,
        false,
        &[("default", "web")],
    )
    .await;
    let web = workload("default", "web");
    apply(
        &s.mesh,
        vec![policy(
            "audit-deny",
            "api",
            Deny,
            Audit,
            from_ids(&[&web]),
            vec![],
        )],
    )
    .await
    .unwrap();
    poll(DEADLINE, || {
        s.api
            .config
            .borrow()
            .inbound
            .as_ref()
            .is_some_and(|p| !p.rules.policies.is_empty())
            .then_some(())
    })
    .await
    .unwrap();
    for _ in 0..3 {
        assert_eq!(s.get(0, "/").await.0, 200, "an Audit Deny never denies");
    }
    let count = |decision: &str, policy: &str| -> f64 {
        let (d, p) = (
            format!("decision=\"{decision}\""),
            format!("policy=\"{policy}\""),
        );
        sum_series(&s.api.metrics.encode(), DECISIONS, &[&d, &p])
    };
    assert_eq!(count("would-deny", "default/audit-deny"), 3.0);

    // On a default-deny service, an Audit Allow says what it would let in.
    apply(
        &s.mesh,
        vec![
            service("api", 80, Protocol::Http1, pb::DefaultInboundPolicy::Deny),
            policy(
                "audit-allow",
                "api",
                Allow,
                Audit,
                from_ids(&[&web]),
                vec![],
            ),
        ],
    )
    .await
    .unwrap();
    delete(&s.mesh, Kind::AuthorizationPolicy, "audit-deny").await;
    s.until(0, "/", 403).await;
    let before = count("would-allow", "default/audit-allow");
    assert_eq!(s.get(0, "/").await.0, 403, "an Audit Allow never allows");
    assert_eq!(count("would-allow", "default/audit-allow"), before + 1.0);
}

#[tokio::test]
async fn path_normalization_bypasses_are_denied() {
    let s = Setup::start(
        pb::DefaultInboundPolicy::Allow,
        false,
        &[("default", "web")],
    )
    .await;
    apply(
        &s.mesh,
        vec![policy(
            "no-admin",
            "api",
            Deny,
            Enforce,
            vec![],
            path_prefix("/admin"),
        )],
    )
    .await
    .unwrap();
    s.until(0, "/admin", 403).await;
    let inbound = s.api.inbound_addr.unwrap();
    for (line, want) in [
        ("GET //admin HTTP/1.1", 403),
        ("GET /./admin HTTP/1.1", 403),
        ("GET /x/../admin HTTP/1.1", 403),
        ("GET /%61dmin HTTP/1.1", 403),
        ("GET /%2e%2e/admin HTTP/1.1", 403),
        ("GET /x/%2E%2E/admin/ HTTP/1.1", 403),
        ("GET /admin/./users HTTP/1.1", 403),
        ("GET /admin?x=1 HTTP/1.1", 403),
        ("GET /%2Fadmin HTTP/1.1", 400),
        ("GET /admin%00 HTTP/1.1", 400),
        ("GET /administrator HTTP/1.1", 200),
        ("GET /x/../administrator HTTP/1.1", 200),
    ] {
        assert_eq!(raw_status(inbound, line).await, want, "{line}");
    }
    // The application gets the normalized path.
    let (status, _, body) = s.get(0, "/x/../administrator/%7euser").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "api-v1 /administrator/~user")
    );
}

#[tokio::test]
async fn grpc_denials_and_rate_limits_are_grpc_statuses_and_not_retried() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    let route = Document {
        kind: Some(document::Kind::HttpRoute(pb::HttpRoute {
            namespace: "default".into(),
            name: "grpc-route".into(),
            parent_refs: vec![pb::ParentRef {
                name: "grpc".into(),
                ..Default::default()
            }],
            rules: vec![pb::HttpRouteRule {
                backend_refs: vec![pb::BackendRef {
                    name: "grpc".into(),
                    ..Default::default()
                }],
                retry: Some(pb::Retry {
                    attempts: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            // The route retries RESOURCE_EXHAUSTED from the backend; a rate limit's is not.
            retry_policy: Some(pb::RetryPolicy {
                grpc_on: vec!["resource-exhausted".into()],
                ..Default::default()
            }),
        })),
    };
    apply(
        &mesh,
        vec![
            service(
                "grpc",
                50051,
                Protocol::Grpc,
                pb::DefaultInboundPolicy::Allow,
            ),
            route,
        ],
    )
    .await
    .unwrap();
    let backend = grpc_echo().await.unwrap();
    let server = start_proxy(
        &mesh,
        &cp,
        dir.path(),
        "grpc",
        ProxyOpts {
            app: Some((backend.port(), "grpc".into())),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let web = start_proxy(
        &mesh,
        &cp,
        dir.path(),
        "web",
        ProxyOpts {
            upstreams: vec!["grpc.default:50051".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_endpoints(&web, "grpc", 1).await.unwrap();
    let mut client =
        echo::echo_client::EchoClient::connect(format!("http://{}", web.upstream_addrs[0]))
            .await
            .unwrap();
    let call = |mut c: echo::echo_client::EchoClient<tonic::transport::Channel>| async move {
        let r = c.unary(echo::Msg { text: "hi".into() }).await;
        (c, r)
    };
    let r = client.unary(echo::Msg { text: "hi".into() }).await;
    assert!(r.is_ok(), "{r:?}");
    // The route does retry RESOURCE_EXHAUSTED when the backend answers it: without this, "not
    // retried" below would prove nothing.
    let r = client
        .unary(echo::Msg {
            text: "exhausted-once:control".into(),
        })
        .await;
    assert!(
        r.is_ok(),
        "the backend's RESOURCE_EXHAUSTED was not retried: {r:?}"
    );
    let retries = |text: &str| sum_series(text, "retries_total{", &[]);
    let retried = retries(&web.metrics.encode());
    assert_eq!(retried, 1.0, "one retry for the backend's refusal");

    let web_id = workload("default", "web");
    apply(
        &mesh,
        vec![policy(
            "no-web",
            "grpc",
            Deny,
            Enforce,
            from_ids(&[&web_id]),
            vec![],
        )],
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        let (c, r) = call(client).await;
        client = c;
        match r {
            Err(s) if s.code() == tonic::Code::PermissionDenied => break s,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "never denied: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.metadata().get("x-weft-error").unwrap(), "denied");
    assert_eq!(
        status.metadata().get("x-weft-policy").unwrap(),
        "default/no-web"
    );

    // A bucket of one token (refilled one a second) answers RESOURCE_EXHAUSTED once empty.
    delete(&mesh, Kind::AuthorizationPolicy, "no-web").await;
    let limit = Document {
        kind: Some(document::Kind::RateLimitPolicy(pb::RateLimitPolicy {
            namespace: "default".into(),
            name: "grpc-limit".into(),
            target_ref: Some(pb::PolicyTargetRef {
                kind: "Service".into(),
                name: "grpc".into(),
            }),
            total: Some(pb::RateLimit {
                requests_per_second: 1,
                burst: 1,
            }),
            ..Default::default()
        })),
    };
    apply(&mesh, vec![limit]).await.unwrap();
    poll(DEADLINE, || {
        server
            .config
            .borrow()
            .inbound
            .as_ref()
            .is_some_and(|p| p.rules.rate_limit.is_some() && p.rules.policies.is_empty())
            .then_some(())
    })
    .await
    .unwrap();
    let mut exhausted = 0;
    for _ in 0..3 {
        let (c, r) = call(client).await;
        client = c;
        if let Err(s) = r {
            assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
            assert_eq!(s.metadata().get("x-weft-error").unwrap(), "rate-limited");
            exhausted += 1;
        }
    }
    assert!(exhausted >= 1, "the bucket of one token never ran out");
    let text = server.metrics.encode();
    let limited = metric_value(
        &text,
        "rate_limited_total{service=\"default/grpc\",scope=\"total\"}",
    );
    assert_eq!(
        limited,
        Some(f64::from(exhausted)),
        "each refusal reached the server once: {text}"
    );
    assert_eq!(
        retries(&web.metrics.encode()),
        retried,
        "a denial or rate limit was retried"
    );
}

/// A TCP backend that counts the bytes it receives and echoes them.
async fn counting_tcp() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::SeqCst);
                    if tcp.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn opaque_tcp_is_decided_before_a_byte_and_cut_when_its_allow_goes() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    let web_id = workload("default", "web");
    apply(
        &mesh,
        vec![
            service("db", 5432, Protocol::Tcp, pb::DefaultInboundPolicy::Deny),
            policy(
                "db-from-web",
                "db",
                Allow,
                Enforce,
                from_ids(&[&web_id]),
                vec![],
            ),
        ],
    )
    .await
    .unwrap();
    let (backend, seen) = counting_tcp().await;
    let db = start_proxy(
        &mesh,
        &cp,
        dir.path(),
        "db",
        ProxyOpts {
            app: Some((backend.port(), "db".into())),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = |sa: &'static str| {
        let (mesh, cp, dir) = (&mesh, cp.clone(), dir.path().to_owned());
        async move {
            start_proxy(
                mesh,
                &cp,
                &dir,
                sa,
                ProxyOpts {
                    upstreams: vec!["db.default:5432".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        }
    };
    let web = client("web").await;
    let other = client("other").await;
    wait_endpoints(&web, "db", 1).await.unwrap();
    wait_endpoints(&other, "db", 1).await.unwrap();

    // Denied: closed after the handshake, nothing forwarded.
    let mut tcp = TcpStream::connect(other.upstream_addrs[0]).await.unwrap();
    let _ = tcp.write_all(b"secret").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "a denied connection reads EOF");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "no byte reached the backend"
    );

    // Allowed: bytes flow.
    let mut tcp = TcpStream::connect(web.upstream_addrs[0]).await.unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(DEADLINE, tcp.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");

    // The Allow goes: the open connection is closed.
    delete(&mesh, Kind::AuthorizationPolicy, "db-from-web").await;
    let n = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection was closed");
    let text = db.metrics.encode();
    assert_eq!(
        metric_value(&text, "authz_terminated_total{service=\"default/db\"}"),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn rate_limits_per_identity_with_an_override() {
    let s = Setup::start(
        pb::DefaultInboundPolicy::Allow,
        false,
        &[("default", "web"), ("default", "loader")],
    )
    .await;
    let limit = Document {
        kind: Some(document::Kind::RateLimitPolicy(pb::RateLimitPolicy {
            namespace: "default".into(),
            name: "api-limits".into(),
            target_ref: Some(pb::PolicyTargetRef {
                kind: "Service".into(),
                name: "api".into(),
            }),
            per_identity: Some(pb::RateLimit {
                requests_per_second: 1,
                burst: 3,
            }),
            overrides: vec![pb::RateLimitOverride {
                identities: vec![workload("default", "loader")],
                requests_per_second: 1,
                burst: 6,
            }],
            ..Default::default()
        })),
    };
    apply(&s.mesh, vec![limit]).await.unwrap();
    poll(DEADLINE, || {
        s.api
            .config
            .borrow()
            .inbound
            .as_ref()
            .is_some_and(|p| p.rules.rate_limit.is_some())
            .then_some(())
    })
    .await
    .unwrap();
    let mut ok = [0u32; 2];
    let mut limited = [0u32; 2];
    for round in 0..10 {
        for i in 0..2 {
            let (status, h, _) = s.get(i, &format!("/r{round}")).await;
            match status {
                200 => ok[i] += 1,
                429 => {
                    limited[i] += 1;
                    assert_eq!(h["x-weft-error"], "rate-limited");
                    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
                }
                other => panic!("unexpected {other}"),
            }
        }
    }
    // A bucket refills one token a second: a slow run may earn one more.
    assert!((3..=5).contains(&ok[0]), "web (burst 3): {ok:?}");
    assert!(
        (6..=8).contains(&ok[1]),
        "loader (override, burst 6): {ok:?}"
    );
    let text = s.api.metrics.encode();
    let m = |scope: &str| {
        metric_value(
            &text,
            &format!("rate_limited_total{{service=\"default/api\",scope=\"{scope}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(m("identity"), f64::from(limited[0]), "{text}");
    assert_eq!(m("override"), f64::from(limited[1]), "{text}");
}

#[tokio::test]
async fn strict_mtls_lets_plaintext_in_for_probe_paths_only() {
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(
        &mesh,
        vec![service(
            "api",
            80,
            Protocol::Http1,
            pb::DefaultInboundPolicy::Allow,
        )],
    )
    .await
    .unwrap();
    let backend = http_backend("api-v1", false).await.unwrap();
    let opts = ProxyOpts {
        app: Some((backend.port(), "api".into())),
        probe_paths: vec![(backend.port(), "/healthz".into())],
        strict: true,
        ..Default::default()
    };
    let api = start_proxy(&mesh, &cp, dir.path(), "api", opts)
        .await
        .unwrap();
    let inbound = api.inbound_addr.unwrap();
    // kubelet's probe (plaintext, no certificate) reaches the application...
    assert_eq!(raw_status(inbound, "GET /healthz HTTP/1.1").await, 200);
    assert_eq!(raw_status(inbound, "HEAD /healthz HTTP/1.1").await, 200);
    // ...and nothing else does in plaintext, not even with an allowing default.
    assert_eq!(raw_status(inbound, "GET /x HTTP/1.1").await, 403);
    assert_eq!(raw_status(inbound, "POST /healthz HTTP/1.1").await, 403);
    // A meshed client still gets everything.
    let web = start_proxy(&mesh, &cp, dir.path(), "web", ProxyOpts::default())
        .await
        .unwrap();
    wait_endpoints(&web, "api", 1).await.unwrap();
    let out = web.outbound_addr.unwrap();
    let (status, _, _) = proxy_get(out, "http://api.default/x").await.unwrap();
    assert_eq!(status, 200);
}
