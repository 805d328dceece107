//! `weftctl dashboard` as `weftctl demo` serves it: its JSON (`/api/mesh`) against the demo's
//! topology, then its page in a real headless Chromium (Debian's `chromium`, installed by
//! `.ci/install-deps.sh`): the DOM must draw the demo's workloads and edges, and a screenshot is
//! saved under the target directory (`artifacts/dashboard.png`) for a person to look at.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use weft_tests::{bin, http_get};

const TD: &str = "spiffe://demo.weft/ns/demo/sa/";

/// A running `weftctl demo`, its stderr collected, and its dashboard's address.
struct Demo {
    child: Child,
    stderr: Arc<Mutex<String>>,
    dashboard: String,
}

impl Demo {
    async fn start() -> Demo {
        let mut child = Command::new(bin("weftctl"))
            .args([
                "demo",
                "--base-port",
                "0",
                "--duration",
                "150s",
                "--rps",
                "40",
                "-o",
                "json",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("==> web dashboard: ") {
                    let _ = tx.try_send(url.trim().to_owned());
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let url = tokio::time::timeout(Duration::from_secs(90), rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "the demo printed no dashboard URL within 90 s:\n{}",
                    stderr.lock().unwrap()
                )
            });
        let dashboard = url
            .strip_prefix("http://")
            .and_then(|u| u.strip_suffix('/'))
            .unwrap_or_else(|| panic!("not a dashboard URL: {url}"))
            .to_owned();
        Demo {
            child,
            stderr,
            dashboard,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The admin addresses the demo announced: the control plane's and each proxy's.
    fn admins(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.starts_with("==> weft-"))
            .filter_map(|l| l.split("admin http://").nth(1))
            .map(|a| a.trim().trim_end_matches('/').to_owned())
            .collect()
    }

    /// SIGTERM, as Ctrl-C would: the demo stops its processes and exits.
    async fn stop(mut self) {
        let pid = self.child.id().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the demo did not stop within 30 s of SIGTERM")
            .unwrap();
        assert!(
            status.success(),
            "the demo failed: {status}\n{}",
            self.log()
        );
    }
}

/// `/api/mesh` once the demo's three edges carry traffic (rates need two scrapes first).
async fn mesh_with_edges(demo: &Demo, addr: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    loop {
        if let Ok((200, body)) = http_get(addr, "/api/mesh").await {
            last = serde_json::from_str(&body).unwrap();
            let edges = last["edges"].as_array().map_or(0, |e| {
                e.iter()
                    .filter(|e| e["traffic"]["rps"].as_f64() > Some(0.0))
                    .count()
            });
            // api-v2 takes a tenth of the traffic: wait until it has failed some.
            let v2_failed = last["services"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["name"] == "api-v2" && s["inbound"]["success"].as_f64() < Some(1.0))
            });
            // And a trend of at least two readings.
            let trend = last["services"].as_array().is_some_and(|s| {
                s.iter()
                    .all(|s| s["trend"].as_array().is_some_and(|t| t.len() >= 2))
            });
            if last["ready"] == true && edges >= 3 && v2_failed && trend {
                return last;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no three edges on the dashboard within 60 s; last answer: {last:#}\n{}",
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A request with a given method and Host header; the status and content type.
async fn request(addr: &str, method: &str, host: &str, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = resp.into_body().collect().await;
    (status, ct)
}

fn find<'a>(list: &'a Value, what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| pred(v))
        .unwrap_or_else(|| panic!("no {what} in {list:#}"))
}

/// The JSON the page polls, checked against the demo's topology.
fn check_mesh(m: &Value) {
    let id = |n: &str| format!("{TD}{n}");
    for name in ["loadgen", "web", "api-v1", "api-v2"] {
        let s = find(&m["services"], name, |s| s["name"] == name);
        assert_eq!(s["id"], id(name), "{s}");
        assert_eq!(s["kind"], "workload", "{s}");
    }
    let web = find(&m["services"], "web", |s| s["name"] == "web");
    assert!(web["inbound"]["rps"].as_f64().unwrap() > 5.0, "{web}");
    assert!(web["inbound"]["p99_ms"].as_f64().unwrap() > 0.0, "{web}");
    assert!(web["trend"].as_array().unwrap().len() >= 2, "{web}");
    assert_eq!(web["authorities"][0], "web.demo:8080", "{web}");

    for (from, to) in [("loadgen", "web"), ("web", "api-v1"), ("web", "api-v2")] {
        let e = find(&m["edges"], &format!("edge {from} → {to}"), |e| {
            e["from"] == id(from) && e["to"] == id(to)
        });
        assert_eq!(e["mtls"], true, "{e}");
        assert_eq!(e["client_id"], id(from), "{e}");
        assert_eq!(e["server_id"], id(to), "{e}");
        assert!(e["traffic"]["rps"].as_f64().unwrap() > 0.0, "{e}");
    }
    assert_eq!(m["edges"].as_array().unwrap().len(), 3, "{:#}", m["edges"]);

    // The 90/10 canary as web's proxy saw it answered.
    let split = find(&m["splits"], "split of api", |s| {
        s["client"] == id("web") && s["authority"] == "api.demo:8080"
    });
    let share = |n: &str| {
        find(&split["backends"], n, |b| b["name"] == n)["share"]
            .as_f64()
            .unwrap()
    };
    assert!((0.6..=0.99).contains(&share("api-v1")), "{split}");
    assert!(
        (share("api-v1") + share("api-v2") - 1.0).abs() < 1e-9,
        "{split}"
    );
    // api-v2 fails 30 %, and web's proxy retries those on the canary route.
    let v2 = find(&m["services"], "api-v2", |s| s["name"] == "api-v2");
    assert!(v2["inbound"]["success"].as_f64().unwrap() < 1.0, "{v2}");

    let targets = m["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 5, "{targets:#?}");
    assert_eq!(
        targets.iter().filter(|t| t["kind"] == "proxy").count(),
        4,
        "{targets:#?}"
    );
    for t in targets {
        assert_eq!(t["up"], true, "{t}");
        if t["kind"] == "proxy" {
            assert_eq!(t["connected"], true, "{t}");
            assert!(t["cert_expires_in_s"].as_f64().unwrap() > 3600.0, "{t}");
        }
    }
    let cp = &m["control_plane"];
    assert_eq!(cp["up"], true, "{cp}");
    assert_eq!(cp["connected_proxies"], 4.0, "{cp}");
    assert!(cp["config_version"].as_f64().unwrap() > 0.0, "{cp}");
    assert_eq!(cp["nacks_total"], 0.0, "{cp}");
}

/// The target directory (`…/target`), from this test's own path (`target/debug/deps/…`).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn chromium() -> PathBuf {
    for c in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(c);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("this test needs Debian's chromium (headless): run .ci/install-deps.sh");
}

/// Runs headless Chromium on `url` with `args`, returning its stdout.
async fn headless(profile: &Path, url: &str, args: &[&str]) -> String {
    let run = Command::new(chromium())
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            "--window-size=1400,1500",
            // Virtual time runs the page's timers fast but waits for its fetches: a few
            // polls of /api/mesh happen before the DOM is dumped.
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium did not finish within 90 s")
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attributes of every element whose start tag begins with `prefix` (`<g class="edge`).
fn tags<'a>(dom: &'a str, prefix: &str) -> Vec<&'a str> {
    dom.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &dom[i..];
            &rest[..rest.find('>').unwrap_or(rest.len())]
        })
        .collect()
}

fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=\"");
    tag.find(&key)
        .map(|i| {
            let v = &tag[i + key.len()..];
            &v[..v.find('"').unwrap_or(v.len())]
        })
        .unwrap_or("")
}

#[tokio::test]
async fn the_demo_dashboard_shows_the_mesh_in_chromium() {
    let chromium_bin = chromium();
    let demo = Demo::start().await;
    let addr = demo.dashboard.clone();

    // The JSON endpoint, against the demo's topology.
    let mesh = mesh_with_edges(&demo, &addr).await;
    check_mesh(&mesh);

    // loadgen may not call api (the demo's AuthorizationPolicy): a few tries through its proxy
    // show as a denial and as the `denied` reason, with who was denied.
    let loadgen_proxy = demo
        .log()
        .lines()
        .find(|l| l.contains("# 403, x-weft-error: denied"))
        .and_then(|l| l.split("-x http://").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no loadgen proxy in the demo's hints:\n{}", demo.log()))
        .to_owned();
    for _ in 0..5 {
        let tcp = tokio::net::TcpStream::connect(&loadgen_proxy)
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("http://api.demo:8080/")
            .header("host", "api.demo:8080")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 403);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let denied = loop {
        let (_, body) = http_get(&addr, "/api/mesh").await.unwrap();
        let m: Value = serde_json::from_str(&body).unwrap();
        let seen = m["errors"].as_array().unwrap().iter().any(|e| {
            e["reason"] == "denied"
                && e["status"] == "403"
                && e["direction"] == "inbound"
                && e["client_id"] == format!("{TD}loadgen")
        }) && m["decisions"].as_array().unwrap().iter().any(|d| {
            d["decision"] == "deny"
                && d["service"].as_str().unwrap().starts_with("demo/api-v")
                && d["policy"] == "allow-policies:demo/api-from-web"
        });
        if seen {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no denial of loadgen on the dashboard within 30 s: {m:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        denied["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["from"] == format!("{TD}loadgen")
                && e["to"].as_str().unwrap().starts_with(&format!("{TD}api-v"))),
        "the denied calls are an edge too: {:#}",
        denied["edges"]
    );

    // The page and its parts are served from the binary; the server is read-only and refuses
    // a Host that names another site (DNS rebinding).
    assert_eq!(
        request(&addr, "GET", &addr, "/").await,
        (200, "text/html; charset=utf-8".into())
    );
    assert_eq!(request(&addr, "GET", &addr, "/app.js").await.0, 200);
    assert_eq!(request(&addr, "GET", &addr, "/style.css").await.0, 200);
    assert_eq!(
        request(&addr, "GET", &addr, "/api/mesh").await,
        (200, "application/json".into())
    );
    assert_eq!(request(&addr, "GET", &addr, "/nothing").await.0, 404);
    assert_eq!(request(&addr, "POST", &addr, "/api/mesh").await.0, 405);
    assert_eq!(
        request(&addr, "GET", "attacker.example", "/api/mesh")
            .await
            .0,
        403
    );
    let (_, page) = http_get(&addr, "/").await.unwrap();
    assert!(
        !page.contains("https://") && !page.contains("//cdn"),
        "the page must load nothing from elsewhere:\n{page}"
    );

    // The page in a real browser: the graph is drawn with the demo's workloads and edges.
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/");
    let dom = headless(profile.path(), &url, &["--dump-dom"]).await;
    assert!(
        dom.contains("id=\"graph\"")
            && attr(tags(&dom, "<svg id=\"graph\"")[0], "data-ready") == "true",
        "the graph was not drawn:\n{dom}"
    );
    let nodes: Vec<&str> = tags(&dom, "<g class=\"node")
        .into_iter()
        .map(|t| attr(t, "data-name"))
        .collect();
    for name in ["loadgen", "web", "api-v1", "api-v2"] {
        assert!(nodes.contains(&name), "no node {name} in {nodes:?}");
    }
    let edges: Vec<(&str, &str, &str, &str, &str)> = tags(&dom, "<g class=\"edge")
        .into_iter()
        .map(|t| {
            (
                attr(t, "data-from"),
                attr(t, "data-to"),
                attr(t, "data-mtls"),
                attr(t, "data-client-id"),
                attr(t, "data-server-id"),
            )
        })
        .collect();
    let (l, w, v1, v2) = (
        format!("{TD}loadgen"),
        format!("{TD}web"),
        format!("{TD}api-v1"),
        format!("{TD}api-v2"),
    );
    for want in [
        ("loadgen", "web", "true", l.as_str(), w.as_str()),
        ("web", "api-v1", "true", w.as_str(), v1.as_str()),
        ("web", "api-v2", "true", w.as_str(), v2.as_str()),
    ] {
        assert!(edges.contains(&want), "no edge {want:?} in {edges:?}");
    }
    // The three edges of the demo (and loadgen → api while its denied calls are in the window).
    assert!(edges.len() >= 3, "{edges:?}");
    assert!(
        dom.contains("data-reason=\"denied\"") && dom.contains("data-decision=\"deny\""),
        "the denial is not on the page"
    );
    for name in ["web", "api-v1", "api-v2", "loadgen"] {
        assert!(
            dom.contains(&format!("<tr data-service=\"{name}\"")),
            "no row for {name} in the workloads table"
        );
    }
    assert!(
        dom.contains("data-backend=\"api-v2\""),
        "no api-v2 in the split"
    );
    assert!(dom.contains("data-target="), "no targets table");

    // A screenshot, for a person (and CI's artifacts).
    let dir = target_dir().join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        profile.path(),
        &url,
        &[&format!("--screenshot={}", shot.display())],
    )
    .await;
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "a {} byte screenshot is blank",
        png.len()
    );
    println!(
        "dashboard screenshot: {} ({})",
        shot.display(),
        chromium_bin.display()
    );

    demo.stop().await;
}

/// A Prometheus (Debian's) on a free loopback port, scraping `targets` every second; killed on
/// drop.
struct Prometheus {
    _child: Child,
    _dir: tempfile::TempDir,
    addr: String,
}

impl Prometheus {
    async fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: weft\n  static_configs:\n  - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("this test needs Debian's prometheus: run .ci/install-deps.sh");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(&addr, "/-/ready").await, Ok((200, _))) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus on {addr} not ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Prometheus {
            _child: child,
            _dir: dir,
            addr,
        }
    }
}

/// `weftctl dashboard --prometheus` on a real Prometheus that scrapes the demo shows the same
/// mesh as the demo's own dashboard (which scrapes directly).
#[tokio::test]
async fn the_dashboard_reads_the_mesh_from_prometheus() {
    let demo = Demo::start().await;
    let admins = demo.admins();
    assert_eq!(admins.len(), 5, "{admins:?}\n{}", demo.log());
    let prom = Prometheus::start(&admins).await;
    let mut dash = Command::new(bin("weftctl"))
        .args(["dashboard", "--listen", "127.0.0.1:0", "--window", "10s"])
        .args(["--prometheus", &format!("http://{}", prom.addr)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dash.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("weftctl dashboard printed nothing within 30 s")
        .unwrap()
        .unwrap_or_default();
    let addr = first
        .strip_prefix("weftctl dashboard: http://")
        .and_then(|l| l.split('/').next())
        .unwrap_or_else(|| panic!("not the dashboard's URL: {first}"))
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let mesh = mesh_with_edges(&demo, &addr).await;
    assert!(
        mesh["source"]
            .as_str()
            .unwrap()
            .starts_with("Prometheus http://"),
        "{}",
        mesh["source"]
    );
    check_mesh(&mesh);
    drop(dash);
    demo.stop().await;
}
