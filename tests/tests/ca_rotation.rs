//! Live root-CA rotation with real `weft-control-plane` and `weft-proxy` processes: steady
//! request loops through two client proxies to a server proxy count every outcome across
//! `weftctl ca rotate prepare`, `switch` and `finish`; one proxy is cut off from the control
//! plane during `switch` and comes back; `finish` refuses while a connected proxy holds a
//! certificate of the old CA; bad input is refused by name and changes nothing.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weft_proto::config::v1::ApplyRequest;
use weft_proto::config::v1::config_client::ConfigClient;
use weft_proto::mesh::v1::{self as pb, Protocol};
use weft_tests::dataplane::{ProxyProcess, http_backend, proxy_get, service};
use weft_tests::mesh::{DeltaClient, TD, TestMesh, workload};
use weft_tests::{ControlPlaneProcess, http_get, poll, weftctl};

/// A TCP relay to the control plane that can be cut (every relayed connection closed, new
/// ones refused) and restored: a proxy behind it is offline as far as the control plane knows.
struct Link {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl Link {
    async fn start(target: String) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, up_rx) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*up_rx.borrow() {
                    continue; // dropped: refused while cut
                }
                let mut cut = up_rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Link { addr, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// GETs through `outbound` until `stop`, counting successes; every failure is kept.
fn load(
    outbound: SocketAddr,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<Vec<String>>) {
    let ok = Arc::new(AtomicU64::new(0));
    let counted = ok.clone();
    let task = tokio::spawn(async move {
        let mut failures = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match proxy_get(outbound, "http://api.default/ping").await {
                Ok((200, _, _)) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, headers, text)) => {
                    failures.push(format!("{status} {headers:?} {text}"))
                }
                Err(e) => failures.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        failures
    });
    (ok, task)
}

async fn more(ok: &AtomicU64, n: u64) {
    let start = ok.load(Ordering::Relaxed);
    poll(Duration::from_secs(20), || {
        (ok.load(Ordering::Relaxed) >= start + n).then_some(())
    })
    .await
    .unwrap();
}

async fn served(cp: &ControlPlaneProcess) -> Value {
    let (status, body) = http_get(&cp.admin_addr, "/ca").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn proxies(v: &Value, role: &str) -> i64 {
    if role == "unknown" {
        return v["proxies_unknown"].as_i64().unwrap();
    }
    v["cas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == role)
        .map(|c| c["proxies"].as_i64().unwrap())
        .sum()
}

/// Polls the control plane's `GET /ca` until `f` holds.
async fn wait_served(cp: &ControlPlaneProcess, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = served(cp).await;
        if f(&v) {
            return v;
        }
        if tokio::time::Instant::now() > end {
            panic!("never {what}; the control plane serves {v:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn certs(p: &ProxyProcess) -> Value {
    let (_, body) = http_get(&p.admin, "/certs").await.unwrap();
    serde_json::from_str(&body).unwrap()
}

/// Polls a proxy's `/certs` until `f` holds.
async fn wait_certs(p: &ProxyProcess, what: &str, f: impl Fn(&Value) -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = certs(p).await;
        if f(&v) {
            return;
        }
        if tokio::time::Instant::now() > end {
            panic!("proxy never {what}: {v:#}\nlog:\n{}", p.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A discovery stream that never renews, opened with a certificate minted from the CA in
/// `dir` as it is now, that acknowledges only the first trust bundle: a proxy the control
/// plane counts under that CA while it stays open.
async fn unacking_stream(mesh: &TestMesh, cp: &ControlPlaneProcess, sa: &str) -> DeltaClient {
    let channel = mesh
        .channel_at(&cp.grpc_addr, Some(&workload("default", sa)))
        .await
        .unwrap();
    let mut c = DeltaClient::open(channel, sa).await.unwrap();
    c.subscribe(pb::TRUST_BUNDLE_TYPE_URL, &[]).await.unwrap();
    let first = c.recv().await.unwrap();
    c.ack(&first).await.unwrap();
    c
}

/// Closes its stream when dropped.
struct Held(tokio::task::JoinHandle<()>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// As [`unacking_stream`], but acknowledging every trust bundle pushed to it, as a proxy does:
/// one that holds on to its certificate, not to its bundle.
async fn held_stream(mesh: &TestMesh, cp: &ControlPlaneProcess, sa: &str) -> Held {
    let mut c = unacking_stream(mesh, cp, sa).await;
    Held(tokio::spawn(async move {
        while let Ok(push) = c.recv().await {
            if c.ack(&push).await.is_err() {
                return;
            }
        }
    }))
}

fn ca_init(parent: &Path, name: &str, td: &str) -> String {
    let dir = parent.join(name);
    let out = std::process::Command::new(weft_tests::bin("weftctl"))
        .args(["ca", "init", "--trust-domain", td, "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    dir.to_str().unwrap().to_owned()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_rotates_under_load_without_a_failed_request() {
    let mesh = TestMesh::start().await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let dir = mesh.ca.path();
    let ca_dir = dir.to_str().unwrap().to_owned();
    let new = ca_init(scratch.path(), "new", TD);
    let cp = ControlPlaneProcess::start(&dir, &["--svid-ttl", "5m"])
        .await
        .unwrap();
    let admin = cp.admin_addr.clone();
    ConfigClient::new(mesh.admin_at(&cp.grpc_addr).await.unwrap())
        .apply(ApplyRequest {
            documents: vec![service("api", 80, Protocol::Http1)],
            dry_run: false,
        })
        .await
        .unwrap();
    let backend = http_backend("api", false).await.unwrap();
    let port = backend.port().to_string();
    let api = ProxyProcess::start(
        &mesh,
        &cp.grpc_addr,
        scratch.path(),
        "api",
        &["--app-port", &port, "--service", "default/api"],
    )
    .await
    .unwrap();
    let web = ProxyProcess::start(&mesh, &cp.grpc_addr, scratch.path(), "web", &[])
        .await
        .unwrap();
    // This one reaches the control plane through a link the test cuts during `switch`.
    let link = Link::start(cp.grpc_addr.clone()).await;
    let off = ProxyProcess::start(&mesh, &link.addr.to_string(), scratch.path(), "off", &[])
        .await
        .unwrap();
    web.wait_endpoints("api", 1).await.unwrap();
    off.wait_endpoints("api", 1).await.unwrap();
    // A proxy that never renews: `finish` must wait for it.
    let legacy = held_stream(&mesh, &cp, "legacy").await;
    let before = wait_served(&cp, "counts the four proxies under the current CA", |v| {
        proxies(v, "current") == 4
    })
    .await;
    let old_key = before["cas"][0]["key_id"].as_str().unwrap().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok_web, web_load) = load(web.outbound, stop.clone());
    let (ok_off, off_load) = load(off.outbound, stop.clone());
    more(&ok_web, 50).await;
    more(&ok_off, 50).await;

    // prepare: both roots trusted everywhere, the old CA still signs.
    let out = weftctl(&[
        "ca", "rotate", "prepare", "--ca-dir", &ca_dir, "--new", &new, "--admin", &admin,
    ])
    .await
    .unwrap();
    assert!(
        out.contains("prepared") && out.contains("serving it"),
        "{out}"
    );
    let prepared = served(&cp).await;
    assert_eq!(prepared["step"], "prepared");
    assert_eq!(prepared["roots"].as_array().unwrap().len(), 2);
    assert_eq!(proxies(&prepared, "current"), 4);
    assert_eq!(proxies(&prepared, "next"), 0);
    for p in [&api, &web, &off] {
        wait_certs(p, "took the two-root bundle", |c| {
            c["bundle_sha256"].as_array().unwrap().len() == 2
        })
        .await;
    }
    more(&ok_web, 50).await;

    // `off` goes offline, then the new CA signs.
    link.set(false);
    wait_served(&cp, "saw the offline proxy go", |v| {
        proxies(v, "current") == 3
    })
    .await;
    let out = weftctl(&[
        "ca",
        "rotate",
        "switch",
        "--ca-dir",
        &ca_dir,
        "--renew-within",
        "3s",
        "--admin",
        &admin,
    ])
    .await
    .unwrap();
    assert!(out.contains("switched"), "{out}");
    // api and web renew early (within 3 s) and reopen their streams with the new certificate;
    // the held stream stays on the old CA.
    let switched = wait_served(&cp, "counted api and web under the new CA", |v| {
        v["step"] == "switched" && proxies(v, "current") == 2 && proxies(v, "previous") == 1
    })
    .await;
    let new_key = switched["cas"][0]["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_key, old_key);
    for p in [&api, &web] {
        wait_certs(p, "renewed with the new CA", |c| {
            c["issuer_key_id"] == new_key.as_str()
        })
        .await;
    }
    // The reopened streams said which bundle they hold (it is not sent again) and count as
    // holding it, as does the held stream that acknowledged it.
    wait_served(
        &cp,
        "counted every connected proxy as holding the bundle",
        |v| v["bundle"]["proxies_holding"] == 3 && v["bundle"]["proxies_behind"] == 0,
    )
    .await;
    let status = weftctl(&[
        "ca", "rotate", "status", "--ca-dir", &ca_dir, "--admin", &admin,
    ])
    .await
    .unwrap();
    assert!(
        status.contains("step switched") && status.contains("serving these files"),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["previous", "1"])),
        "{status}"
    );
    // finish refuses while a connected proxy holds an old certificate.
    let err = weftctl(&[
        "ca", "rotate", "finish", "--ca-dir", &ca_dir, "--admin", &admin,
    ])
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("refusing to finish: 1 proxies"), "{err}");
    assert_eq!(served(&cp).await["step"], "switched", "nothing changed");

    // The offline proxy comes back with its old certificate: the control plane still trusts
    // the old root (until finish) and the proxy the new one (since prepare), so it connects,
    // renews with its old certificate, and moves to the new CA.
    assert_eq!(certs(&off).await["issuer_key_id"], old_key.as_str());
    link.set(true);
    wait_certs(&off, "renewed with the new CA after coming back", |c| {
        c["issuer_key_id"] == new_key.as_str()
    })
    .await;
    wait_served(&cp, "counted the returned proxy under the new CA", |v| {
        proxies(v, "current") == 3 && proxies(v, "previous") == 1
    })
    .await;
    more(&ok_off, 50).await;

    // The last old certificate goes; finish succeeds without --force.
    drop(legacy);
    wait_served(&cp, "saw the held stream close", |v| {
        proxies(v, "previous") == 0
    })
    .await;
    let out = weftctl(&[
        "ca", "rotate", "finish", "--ca-dir", &ca_dir, "--admin", &admin,
    ])
    .await
    .unwrap();
    assert!(out.contains("finished"), "{out}");
    let finished = served(&cp).await;
    assert_eq!(finished["step"], "none");
    assert_eq!(finished["roots"].as_array().unwrap().len(), 1);
    assert_eq!(proxies(&finished, "current"), 3);
    for p in [&api, &web, &off] {
        wait_certs(p, "dropped the old root", |c| {
            c["bundle_sha256"].as_array().unwrap().len() == 1
        })
        .await;
    }
    more(&ok_web, 50).await;
    more(&ok_off, 50).await;

    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = [web_load.await.unwrap(), off_load.await.unwrap()].concat();
    let sent = ok_web.load(Ordering::Relaxed) + ok_off.load(Ordering::Relaxed);
    eprintln!("{sent} requests answered, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        sent + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    let metrics = http_get(&admin, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains("ca_rotation_proxies{ca=\"current\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("ca_rotation_step 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_steps_are_refused_by_name_and_force_finishes_over_an_old_certificate() {
    let mesh = TestMesh::start().await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let dir = mesh.ca.path();
    let ca_dir = dir.to_str().unwrap().to_owned();
    let new = ca_init(scratch.path(), "new", TD);
    let other = ca_init(scratch.path(), "other", TD);
    let foreign = ca_init(scratch.path(), "foreign", "elsewhere.test");
    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let cp = ControlPlaneProcess::start(&dir, &[]).await.unwrap();
    let admin = cp.admin_addr.clone();
    let rotate = |args: &[&str]| {
        let mut v = vec!["ca", "rotate"];
        v.extend_from_slice(args);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let refused = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        weftctl(&args).await.unwrap_err().to_string()
    };
    let untouched = files(&dir);
    for (args, expect) in [
        (
            rotate(&[
                "prepare", "--ca-dir", &ca_dir, "--new", &foreign, "--admin", &admin,
            ]),
            "elsewhere.test",
        ),
        (
            rotate(&[
                "prepare",
                "--ca-dir",
                &ca_dir,
                "--new",
                empty.to_str().unwrap(),
                "--admin",
                &admin,
            ]),
            "not a usable CA",
        ),
        (
            rotate(&[
                "prepare", "--ca-dir", &ca_dir, "--new", &ca_dir, "--admin", &admin,
            ]),
            "already signs with",
        ),
        (
            rotate(&["switch", "--ca-dir", &ca_dir, "--admin", &admin]),
            "no rotation is prepared",
        ),
        (
            rotate(&["finish", "--ca-dir", &ca_dir, "--admin", &admin]),
            "nothing to finish",
        ),
    ] {
        let e = refused(args.clone()).await;
        assert!(e.contains(expect), "{args:?}: {e}");
        assert_eq!(files(&dir), untouched, "{args:?} changed the directory");
    }
    let legacy = held_stream(&mesh, &cp, "legacy").await;
    let mut stuck = unacking_stream(&mesh, &cp, "stuck").await;

    // prepare with --no-wait, then SIGHUP: the control plane reloads on the signal.
    weftctl(
        &rotate(&["prepare", "--ca-dir", &ca_dir, "--new", &new, "--no-wait"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let pid = cp.pid().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    cp.wait_for_log("SIGHUP: CA directory reloaded")
        .await
        .unwrap();
    assert_eq!(served(&cp).await["step"], "prepared");

    let prepared = files(&dir);
    for (args, expect) in [
        (
            rotate(&[
                "prepare", "--ca-dir", &ca_dir, "--new", &other, "--admin", &admin,
            ]),
            "already prepared",
        ),
        (
            rotate(&["finish", "--ca-dir", &ca_dir, "--admin", &admin]),
            "only prepared",
        ),
    ] {
        let e = refused(args.clone()).await;
        assert!(e.contains(expect), "{args:?}: {e}");
        assert_eq!(files(&dir), prepared, "{args:?} changed the directory");
    }
    // A proxy that has not acknowledged the two-root bundle holds switch back: it would refuse
    // what the new CA signs. `status` counts it.
    wait_served(&cp, "legacy took the two-root bundle, stuck did not", |v| {
        v["bundle"]["proxies_holding"] == 1 && v["bundle"]["proxies_behind"] == 1
    })
    .await;
    let e = refused(rotate(&[
        "switch", "--ca-dir", &ca_dir, "--wait", "1s", "--admin", &admin,
    ]))
    .await;
    assert!(
        e.contains("refusing to switch: 1 proxies") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(
        files(&dir),
        prepared,
        "a refused switch changed the directory"
    );
    let status = weftctl(
        &rotate(&["status", "--ca-dir", &ca_dir, "--admin", &admin])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert!(
        status.contains("held by 1 proxies, not acknowledged by 1"),
        "{status}"
    );
    // Once it acknowledges the bundle with both roots, switch goes ahead.
    let push = stuck.recv().await.unwrap();
    stuck.ack(&push).await.unwrap();
    weftctl(
        &rotate(&[
            "switch",
            "--ca-dir",
            &ca_dir,
            "--renew-within",
            "1s",
            "--admin",
            &admin,
        ])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let e = refused(rotate(&["switch", "--ca-dir", &ca_dir, "--admin", &admin])).await;
    assert!(e.contains("already switched"), "{e}");
    drop(stuck);
    wait_served(&cp, "saw the stuck stream go", |v| {
        proxies(v, "previous") == 1
    })
    .await;
    let e = refused(rotate(&["finish", "--ca-dir", &ca_dir, "--admin", &admin])).await;
    assert!(e.contains("refusing to finish: 1 proxies"), "{e}");
    assert_eq!(served(&cp).await["step"], "switched");
    weftctl(
        &rotate(&["finish", "--ca-dir", &ca_dir, "--force", "--admin", &admin])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let done = served(&cp).await;
    assert_eq!(done["step"], "none");
    assert_eq!(done["roots"].as_array().unwrap().len(), 1);
    // The stream opened before finish lives on, now under a CA nobody trusts.
    assert_eq!(proxies(&done, "unknown"), 1);
    let names: Vec<String> = files(&dir).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["ca.crt", "tls.crt", "tls.key", "token.key"]);
    drop(legacy);
}
