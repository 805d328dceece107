//! `weftctl demo`, the README's main command, run for real: the control plane, four proxies,
//! the demo applications and the traffic generator, for a few seconds, non-interactively.
#![allow(clippy::unwrap_used)]

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;
use weft_tests::bin;
use weft_tests::etcd::EtcdServer;

const TD: &str = "spiffe://demo.weft/ns/demo/sa/";

async fn demo(args: &[&str]) -> Output {
    let run = Command::new(bin("weftctl"))
        .arg("demo")
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("weftctl demo did not stop within 180 s")
        .expect("run weftctl demo")
}

fn summary(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "weftctl demo failed ({}):\n{stderr}",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "summary is not JSON ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// After the demo, nothing listens on the control plane's port any more.
async fn assert_stopped(summary: &Value) {
    let cp = summary["control_plane"].as_str().unwrap();
    assert!(
        tokio::net::TcpStream::connect(cp).await.is_err(),
        "the control plane at {cp} still accepts connections after the demo ended"
    );
}

#[tokio::test]
async fn demo_carries_traffic_over_mtls_and_shows_the_split() {
    let out = demo(&[
        "--duration",
        "10s",
        "--base-port",
        "0",
        "--rps",
        "50",
        "-o",
        "json",
    ])
    .await;
    let s = summary(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);

    // The generator's requests got through; api-v2's injected failures are mostly retried.
    let g = &s["generated"];
    let (sent, ok) = (g["sent"].as_u64().unwrap(), g["ok"].as_u64().unwrap());
    assert!(sent >= 300, "{s}");
    assert!(ok as f64 >= 0.95 * sent as f64, "{s}");

    // Every edge is mTLS, each end's identity verified by the other end's proxy.
    let edges = s["edges"].as_array().unwrap();
    for (from, to) in [("loadgen", "web"), ("web", "api-v1"), ("web", "api-v2")] {
        let e = edges
            .iter()
            .find(|e| e["from"] == from && e["to"] == to)
            .unwrap_or_else(|| panic!("no edge {from} → {to}: {s}"));
        assert_eq!(e["mtls"], true, "{e}");
        assert_eq!(e["client_id"], format!("{TD}{from}"), "{e}");
        assert_eq!(e["server_id"], format!("{TD}{to}"), "{e}");
        assert!(e["requests"].as_u64().unwrap() > 0, "{e}");
    }
    assert_eq!(edges.len(), 3, "an unexpected edge: {s}");

    // The 90/10 canary, observed at web's proxy. With ~500 requests a share outside
    // [4 %, 18 %] is more than 4 standard deviations from 10 %.
    let share = s["split"]["v2_share"].as_f64().unwrap();
    assert!((0.04..=0.18).contains(&share), "v2 share {share}: {s}");
    // api-v2 fails 30 % by default, and web's proxy retries those.
    let v2 = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "api-v2")
        .unwrap();
    assert!(v2["success_rate"].as_f64().unwrap() < 0.95, "{v2}");
    assert!(s["split"]["retries"].as_u64().unwrap() > 0, "{s}");

    // Progress for a person, and the commands to try next.
    for line in [
        "==> weft-control-plane on",
        "==> weft-proxy for api-v2 as spiffe://demo.weft/ns/demo/sa/api-v2",
        "api-50-50.yaml",
        "explain --admin",
        "==> stopping 5 processes",
    ] {
        assert!(stderr.contains(line), "missing {line:?}:\n{stderr}");
    }
    assert_stopped(&s).await;
}

#[tokio::test]
async fn demo_on_etcd_removes_its_keys() {
    let etcd = EtcdServer::start().await.unwrap();
    let url = etcd.client_url();
    let out = demo(&[
        "--etcd",
        &url,
        "--duration",
        "2s",
        "--base-port",
        "0",
        "--failure-rate",
        "0",
        "-o",
        "json",
    ])
    .await;
    let s = summary(&out);
    assert_eq!(s["store"], "etcd");
    assert!(s["generated"]["ok"].as_u64().unwrap() > 0, "{s}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deleted the demo's keys under /weft-demo-")
    );
    let mut client = etcd_client::Client::connect([url.as_str()], None)
        .await
        .unwrap();
    let left = client
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_all_keys()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<String> = left
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    assert!(keys.is_empty(), "the demo left keys in etcd: {keys:?}");
    assert_stopped(&s).await;
}

#[tokio::test]
async fn a_taken_port_is_named_with_what_to_do() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let out = demo(&["--base-port", &port, "--duration", "1s"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "port 127.0.0.1:{port} (for the control plane's gRPC) is not free"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--base-port 0"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_etcd_is_named_before_anything_starts() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = demo(&["--etcd", &url, "--base-port", "0", "--duration", "1s"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("--etcd {url}:")), "{stderr}");
    assert!(stderr.contains("leave out --etcd"), "{stderr}");
    assert!(!stderr.contains("==> weft-control-plane"), "{stderr}");
}

/// The state letter of `/proc/<pid>/stat`, or `None` once the process is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The pids whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(") ")?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

#[tokio::test]
async fn demo_killed_with_sigkill_leaves_nothing_running() {
    let mut demo = Command::new(bin("weftctl"))
        .args([
            "demo",
            "--duration",
            "120s",
            "--base-port",
            "0",
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = demo.id().unwrap();
    // The control plane and the four proxies are up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let started = loop {
        let kids = children(pid);
        if kids.len() >= 5 {
            break kids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the demo started {} children",
            kids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    demo.start_kill().unwrap();
    let _ = demo.wait().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let alive: Vec<u32> = started
            .iter()
            .copied()
            .filter(|p| state(*p).is_some_and(|s| s != 'Z'))
            .collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running after weftctl was killed: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
