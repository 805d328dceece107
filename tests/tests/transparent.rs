//! Transparent interception: an iptables (and ip6tables) REDIRECT sends the application's connection to the
//! outbound port, and the proxy finds the original destination with `SO_ORIGINAL_DST`.
//!
//! iptables rules are per network namespace, so the scenario runs in a namespace of its own:
//! the outer test (needs root, `ip` and `iptables`, which `.ci/install-deps.sh` installs)
//! creates it and runs the inner test inside it, where every server is on that namespace's
//! loopback.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_proto::mesh::v1::Protocol;
use weft_tests::dataplane::{ProxyOpts, apply, http_backend, service, start_proxy, wait_endpoints};
use weft_tests::mesh::{TestMesh, workload};

/// The port the application dials; nothing listens there, the REDIRECT catches it.
const DIALED: u16 = 9999;

#[test]
fn redirected_connections_reach_the_endpoint_behind_their_original_destination() {
    let ns = format!("weft-test-{}", std::process::id());
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["ip", "netns", "add", &ns]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args([
            "--ignored",
            "--exact",
            "inside_the_namespace",
            "--nocapture",
        ])
        .env("WEFT_TEST_NETNS", &ns)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the test above, inside its network namespace"]
async fn inside_the_namespace() {
    assert!(
        std::env::var("WEFT_TEST_NETNS").is_ok(),
        "run only inside the test namespace"
    );
    let mesh = TestMesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = mesh.cp.grpc_addr().to_string();
    apply(&mesh, vec![service("api", 80, Protocol::Http1)])
        .await
        .unwrap();
    let backend = http_backend("api", false).await.unwrap();
    let opts = ProxyOpts {
        app: Some((backend.port(), "api".into())),
        ..Default::default()
    };
    let _api = start_proxy(&mesh, &cp, dir.path(), "api", opts)
        .await
        .unwrap();
    let web = start_proxy(&mesh, &cp, dir.path(), "web", ProxyOpts::default())
        .await
        .unwrap();
    wait_endpoints(&web, "api", 1).await.unwrap();
    let outbound = web.outbound_addr.unwrap().port().to_string();
    let status = Command::new("iptables")
        .args([
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "127.0.0.1",
            "--dport",
            &DIALED.to_string(),
        ])
        .args(["-j", "REDIRECT", "--to-ports", &outbound])
        .status()
        .unwrap();
    assert!(status.success());

    // The application dials the endpoint's IP on a port of its own; the Host is not a mesh
    // name, so the request goes to the endpoint behind that IP, over mTLS.
    let mut tcp = TcpStream::connect(("127.0.0.1", DIALED)).await.unwrap();
    tcp.write_all(b"GET /direct HTTP/1.1\r\nhost: 127.0.0.1:9999\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("x-seen-client-id: {}", workload("default", "web"))),
        "{answer}"
    );
    assert!(answer.ends_with("api /direct"), "{answer}");
    let m = web.metrics.encode();
    assert!(m.contains("direction=\"outbound\""), "{m}");

    // The same over IPv6: SO_ORIGINAL_DST's IPv6 form (IP6T_SO_ORIGINAL_DST).
    apply(&mesh, vec![service("api6", 80, Protocol::Http1)])
        .await
        .unwrap();
    let opts = ProxyOpts {
        app: Some((backend.port(), "api6".into())),
        ipv6: true,
        ..Default::default()
    };
    let _api6 = start_proxy(&mesh, &cp, dir.path(), "api6", opts)
        .await
        .unwrap();
    let web6 = start_proxy(
        &mesh,
        &cp,
        dir.path(),
        "web6",
        ProxyOpts {
            ipv6: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_endpoints(&web6, "api6", 1).await.unwrap();
    let outbound = web6.outbound_addr.unwrap().port().to_string();
    let status = Command::new("ip6tables")
        .args([
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "::1",
            "--dport",
            &DIALED.to_string(),
        ])
        .args(["-j", "REDIRECT", "--to-ports", &outbound])
        .status()
        .unwrap();
    assert!(status.success());
    let mut tcp = TcpStream::connect(("::1", DIALED)).await.unwrap();
    tcp.write_all(b"GET /v6 HTTP/1.1\r\nhost: [::1]:9999\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!(
            "x-seen-client-id: {}",
            workload("default", "web6")
        )),
        "{answer}"
    );
    assert!(answer.ends_with("api /v6"), "{answer}");
}
