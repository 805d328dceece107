//! Data path harness: backends on 127.0.0.1:0 (HTTP/1.1, HTTP/2, gRPC, TCP echo), proxies
//! in-process or as `weft-proxy` processes, and clients that speak through them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;
use weft_proto::config::v1::config_client::ConfigClient;
use weft_proto::config::v1::{ApplyRequest, Document, document};
use weft_proto::mesh::v1 as pb;
use weft_proxy::identity::ControlPlane;
use weft_proxy::listen::{DataPathConfig, MtlsMode};
use weft_proxy::{Config, InboundConfig, Proxy};

use crate::mesh::{TD, TestMesh, workload};

pub mod echo {
    #![allow(clippy::all, unreachable_pub, missing_debug_implementations)]
    tonic::include_proto!("weft.test.v1");
}

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// An HTTP backend. Paths: `/echo` streams the request body back; `/count` answers the number
/// of body bytes received; `/bytes/<n>` streams n bytes; `/slow/<ms>` answers after a delay;
/// `/upgrade` switches to a byte echo. Every answer carries what the backend saw:
/// `x-seen-client-id`, `x-seen-host`, `x-seen-version`, and `x-backend` (its name).
pub async fn http_backend(name: &str, http2: bool) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name: Arc<str> = name.into();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(answer(&name, req).await) }
                });
                let io = TokioIo::new(tcp);
                if http2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    Ok(addr)
}

async fn answer(name: &str, mut req: Request<Incoming>) -> Response<Body> {
    let seen = |h: &str| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned()
    };
    let client_id = seen("x-weft-client-id");
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| seen("host"));
    let version = format!("{:?}", req.version());
    let path = req.uri().path().to_owned();
    let mut resp = if path == "/echo" {
        Response::new(req.into_body().map_err(Into::into).boxed())
    } else if path == "/count" {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return Response::new(full(format!("error {e}"))),
            }
        }
        Response::new(full(n.to_string()))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(0u64, move |sent| {
            let chunk = chunk.clone();
            async move {
                if sent >= total {
                    return None;
                }
                let n = (total - sent).min(chunk.len() as u64);
                Some((
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(
                        chunk.slice(..n as usize),
                    )),
                    sent + n,
                ))
            }
        });
        Response::new(BodyExt::boxed(StreamBody::new(stream)))
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full("slow done"))
    } else if path == "/upgrade" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut().insert("upgrade", "echo".parse().unwrap());
        r
    } else {
        Response::new(full(format!("{name} {path}")))
    };
    let h = resp.headers_mut();
    h.insert("x-backend", name.parse().unwrap());
    h.insert("x-seen-client-id", client_id.parse().unwrap());
    h.insert("x-seen-host", host.parse().unwrap());
    h.insert("x-seen-version", version.parse().unwrap());
    resp
}

/// A TCP backend that echoes, passing on the client's half-close.
pub async fn tcp_echo() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// A gRPC echo backend (h2c). A unary message `unavailable-once:<id>` fails with UNAVAILABLE,
/// and `exhausted-once:<id>` with RESOURCE_EXHAUSTED, the first time each id is seen (for retry
/// tests).
pub async fn grpc_echo() -> anyhow::Result<SocketAddr> {
    use echo::Msg;
    use echo::echo_server::{Echo, EchoServer};
    #[derive(Debug, Default)]
    struct Server {
        seen: Mutex<std::collections::HashSet<String>>,
    }
    #[tonic::async_trait]
    impl Echo for Server {
        async fn unary(
            &self,
            req: tonic::Request<Msg>,
        ) -> Result<tonic::Response<Msg>, tonic::Status> {
            let text = &req.get_ref().text;
            if text.starts_with("unavailable-once:")
                && self.seen.lock().unwrap().insert(text.clone())
            {
                return Err(tonic::Status::unavailable(format!("{text}: try again")));
            }
            if text.starts_with("exhausted-once:") && self.seen.lock().unwrap().insert(text.clone())
            {
                return Err(tonic::Status::resource_exhausted(format!(
                    "{text}: try again"
                )));
            }
            let client = req
                .metadata()
                .get("x-weft-client-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            Ok(tonic::Response::new(Msg {
                text: format!("{} from {client}", req.into_inner().text),
            }))
        }
        type ChatStream =
            Pin<Box<dyn tokio_stream::Stream<Item = Result<Msg, tonic::Status>> + Send>>;
        async fn chat(
            &self,
            req: tonic::Request<tonic::Streaming<Msg>>,
        ) -> Result<tonic::Response<Self::ChatStream>, tonic::Status> {
            let mut inbound = req.into_inner();
            let out = async_stream(move |tx| async move {
                let mut n = 0;
                while let Some(Ok(m)) = inbound.next().await {
                    n += 1;
                    if tx
                        .send(Ok(Msg {
                            text: format!("echo {}", m.text),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // The status travels in the trailers.
                let _ = tx
                    .send(Err(tonic::Status::resource_exhausted(format!(
                        "done after {n}"
                    ))))
                    .await;
            });
            Ok(tonic::Response::new(Box::pin(out)))
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(Server::default()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

fn async_stream<T, F, Fut>(f: F) -> impl tokio_stream::Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A `Service` document with one port.
pub fn service(name: &str, port: u32, protocol: pb::Protocol) -> Document {
    Document {
        kind: Some(document::Kind::Service(pb::Service {
            namespace: "default".into(),
            name: name.into(),
            ports: vec![pb::Port {
                name: String::new(),
                port,
                protocol: protocol.into(),
            }],
            ..Default::default()
        })),
    }
}

pub async fn apply(mesh: &TestMesh, docs: Vec<Document>) -> anyhow::Result<()> {
    ConfigClient::new(mesh.admin().await?)
        .apply(ApplyRequest {
            documents: docs,
            dry_run: false,
        })
        .await?;
    mesh.cp.wait_synced().await?;
    Ok(())
}

/// What a test proxy serves.
#[derive(Debug, Clone, Default)]
pub struct ProxyOpts {
    /// The application's port and the service it registers under (`default/<name>`).
    pub app: Option<(u16, String)>,
    pub upstreams: Vec<String>,
    pub strict: bool,
    pub cert_ttl: Option<Duration>,
    /// Listen on [::1] instead of 127.0.0.1.
    pub ipv6: bool,
    /// Refuse destinations outside the mesh (`--outside-mesh refuse`).
    pub refuse_outside: bool,
    /// `--probe-paths`.
    pub probe_paths: Vec<(u16, String)>,
    /// The namespace of the proxy's identity (`spiffe://mesh.test/ns/<it>/sa/<sa>`); default
    /// `default`. Its service, if any, is still `default/<name>`.
    pub namespace: Option<String>,
    /// `--default-inbound-policy`: the workload's own (tightening) default.
    pub default_inbound: Option<weft_proto::model::DefaultInbound>,
    /// `--otlp-endpoint` and the rest of tracing.
    pub trace: Option<weft_proxy::trace::TraceConfig>,
    /// `--access-log`.
    pub access_log: Option<weft_proxy::access_log::AccessLogConfig>,
}

/// Writes a join token for `default/<sa>` into `dir`.
pub async fn token_file(
    mesh: &TestMesh,
    dir: &Path,
    sa: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let token = mesh.ca.token(&workload("default", sa), "10m").await?;
    let file = dir.join(format!("{sa}.token"));
    std::fs::write(&file, token)?;
    Ok(file)
}

/// An in-process proxy for `default/<sa>`: outbound on 127.0.0.1:0, inbound on 127.0.0.1:0
/// when it has an app.
pub async fn start_proxy(
    mesh: &TestMesh,
    cp_addr: &str,
    dir: &Path,
    sa: &str,
    opts: ProxyOpts,
) -> anyhow::Result<Proxy> {
    let token_file = match &opts.namespace {
        None => token_file(mesh, dir, sa).await?,
        Some(ns) => {
            let token = mesh.ca.token(&workload(ns, sa), "10m").await?;
            let file = dir.join(format!("{ns}-{sa}.token"));
            std::fs::write(&file, token)?;
            file
        }
    };
    let any_port: std::net::SocketAddr =
        if opts.ipv6 { "[::1]:0" } else { "127.0.0.1:0" }.parse()?;
    let proxy = Proxy::start(Config {
        control_plane: ControlPlane {
            addr: cp_addr.to_owned(),
            token_file,
            cert_ttl: opts.cert_ttl,
        },
        trust_bundle: mesh.ca.bundle_file(),
        trust_domain: Some(weft_certs::TrustDomain::parse(TD)?),
        admin: "127.0.0.1:0".parse()?,
        node_id: sa.to_owned(),
        inbound: opts.app.map(|(port, service)| InboundConfig {
            listen: any_port,
            app_port: Some(port),
            service: Some(weft_proto::model::ObjectRef::new("default", service)),
            labels: Default::default(),
            advertise: None,
            probe_paths: opts.probe_paths.clone(),
            default_inbound: opts.default_inbound,
            redirected: false,
        }),
        outbound: Some(any_port),
        upstreams: opts
            .upstreams
            .iter()
            .map(|a| ("127.0.0.1:0".parse().unwrap(), a.clone()))
            .collect(),
        data: DataPathConfig {
            mtls: if opts.strict {
                MtlsMode::Strict
            } else {
                MtlsMode::Permissive
            },
            passthrough: !opts.refuse_outside,
            ..DataPathConfig::default()
        },
        drain_timeout: Duration::from_secs(5),
        trace: opts.trace.clone(),
        access_log: opts.access_log.clone(),
    })
    .await?;
    Ok(proxy)
}

/// Waits until `proxy` holds at least `n` ready endpoints for `default/<service>`.
pub async fn wait_endpoints(proxy: &Proxy, service: &str, n: usize) -> anyhow::Result<()> {
    let key = format!("default/{service}");
    crate::poll(Duration::from_secs(10), || {
        let c = proxy.config.borrow();
        c.endpoints
            .get(&key)
            .filter(|e| e.value.endpoints.iter().filter(|e| e.ready).count() >= n)
            .map(|_| ())
    })
    .await
    .with_context(|| format!("{key} never had {n} endpoint(s) at the proxy"))
}

/// One HTTP/1.1 request through an HTTP proxy at `proxy` (absolute-form URI).
pub async fn proxy_request(
    proxy: SocketAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> anyhow::Result<Response<Incoming>> {
    let tcp = TcpStream::connect(proxy).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender
        .send_request(proxy_form(method, url, headers, body)?)
        .await?)
}

/// An HTTP-proxy request: absolute-form URI, its authority as `Host`, and `headers`.
pub fn proxy_form<B>(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: B,
) -> anyhow::Result<Request<B>> {
    let uri: hyper::Uri = url.parse()?;
    let mut req = Request::builder().method(method).uri(&uri);
    if let Some(a) = uri.authority() {
        req = req.header("host", a.as_str());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok(req.body(body)?)
}

/// GET through an HTTP proxy; returns status, headers and the body as text.
pub async fn proxy_get(
    proxy: SocketAddr,
    url: &str,
) -> anyhow::Result<(u16, hyper::HeaderMap, String)> {
    let resp = proxy_request(proxy, "GET", url, &[], full("")).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

pub fn body(b: impl Into<Bytes>) -> Body {
    full(b)
}

/// A body of `total` bytes made in 64 KiB chunks as it is sent (never held whole).
pub fn generated(total: u64) -> Body {
    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(chunk.len() as u64);
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(
                    chunk.slice(..n as usize),
                )),
                sent + n,
            ))
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// A `weft-proxy run` process, killed on drop.
#[derive(Debug)]
pub struct ProxyProcess {
    pub child: Child,
    pub admin: String,
    pub outbound: SocketAddr,
    pub inbound: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    /// Starts `weft-proxy run` for `default/<sa>` with free ports; returns once it is ready.
    pub async fn start(
        mesh: &TestMesh,
        cp_addr: &str,
        dir: &Path,
        sa: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_ca(&mesh.ca, cp_addr, dir, sa, extra).await
    }

    /// [`ProxyProcess::start`] for a control plane of `ca` that is not a [`TestMesh`]'s (a
    /// `weft-control-plane` process).
    pub async fn start_with_ca(
        ca: &crate::TestCa,
        cp_addr: &str,
        dir: &Path,
        sa: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let token = dir.join(format!("{sa}.token"));
        std::fs::write(&token, ca.token(&workload("default", sa), "10m").await?)?;
        let free = || -> anyhow::Result<SocketAddr> {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            Ok(l.local_addr()?)
        };
        let (admin, outbound, inbound) = (free()?, free()?, free()?);
        let has_app = extra.contains(&"--app-port");
        let mut child = Command::new(crate::bin("weft-proxy"))
            .arg("run")
            .args(["--control-plane", cp_addr])
            .args(["--trust-bundle", ca.bundle_file().to_str().unwrap()])
            .args(["--trust-domain", TD])
            .args(["--token-file", token.to_str().unwrap()])
            .args(["--admin", &admin.to_string()])
            .args(["--outbound", &outbound.to_string()])
            .args(["--inbound", &inbound.to_string()])
            .args(["--node-id", sa])
            .args(extra)
            .env("WEFT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn weft-proxy")?;
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().unwrap().push(line);
            }
        });
        let p = Self {
            child,
            admin: admin.to_string(),
            outbound,
            inbound: has_app.then_some(inbound),
            log,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = crate::http_get(&p.admin, "/ready").await {
                return Ok(p);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("weft-proxy never became ready; log:\n{}", p.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM")
    }

    /// Waits until the proxy's config holds `n` ready endpoints of `default/<service>`.
    pub async fn wait_endpoints(&self, service: &str, n: usize) -> anyhow::Result<()> {
        let key = format!("\"default/{service}\"");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, dump) = crate::http_get(&self.admin, "/config_dump").await?;
            let v: serde_json::Value = serde_json::from_str(&dump)?;
            let ready = v["endpoints"][&key[1..key.len() - 1]]["endpoints"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|e| e["ready"] == true).count());
            if ready >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{key}: {ready} ready endpoints, wanted {n}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
