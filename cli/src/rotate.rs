//! `weftctl ca rotate prepare|switch|finish|status`: a live root rotation. Each step changes
//! the CA directory through [`weft_control_plane::ca_dir`] (one rename commits it), then asks
//! each control plane's admin port to reload (`POST /ca/reload`; the control plane also polls
//! the directory every 2 s, and reloads on SIGHUP) and waits until it serves exactly these
//! files (`GET /ca` reports their digest). `switch` and `finish` first check what the control
//! planes serve; `switch` waits until every connected proxy has acknowledged the bundle with
//! both roots, and `finish` refuses while a connected proxy holds a certificate of the old CA.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::Value;
use weft_certs::TrustDomain;
use weft_control_plane::ca_dir::{self, RotationState, Step};

/// Where the control planes' admin ports are, and how long to wait for them.
#[derive(Debug, Clone)]
pub struct Admins {
    pub addrs: Vec<String>,
    pub wait: Duration,
    /// Do not contact the control planes (the directory is a copy, e.g. of a Kubernetes Secret,
    /// that reaches them some other way).
    pub no_wait: bool,
}

async fn request(addr: &str, method: &str, path: &str) -> anyhow::Result<(u16, Value)> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect to the control plane's admin port {addr}: timed out"))?
        .with_context(|| format!("connect to the control plane's admin port {addr}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .body(Empty::<Bytes>::new())?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("{method} {path} to {addr}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    if status == 404 {
        bail!("the control plane at {addr} has no {path} (a version without live root rotation?)");
    }
    let v = serde_json::from_slice(&body).with_context(|| {
        format!(
            "{method} {path} to {addr} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )
    })?;
    Ok((status, v))
}

/// `GET /ca` of one control plane.
pub async fn served(addr: &str) -> anyhow::Result<Value> {
    Ok(request(addr, "GET", "/ca").await?.1)
}

/// Asks each control plane to reload and waits until it serves the directory's current files.
async fn wait_loaded(dir: &Path, admins: &Admins, w: &mut dyn Write) -> anyhow::Result<()> {
    if admins.no_wait {
        writeln!(
            w,
            "not contacting a control plane (--no-wait): each one loads the change within 2 s of seeing these files, or on SIGHUP"
        )?;
        return Ok(());
    }
    let want = ca_dir::digest(dir)?;
    for addr in &admins.addrs {
        let deadline = tokio::time::Instant::now() + admins.wait;
        // A reload now; the poll would find it anyway, so a failure here is not final.
        let _ = request(addr, "POST", "/ca/reload").await;
        loop {
            let last = match served(addr).await {
                Ok(v) if v["digest"] == want.as_str() => {
                    writeln!(
                        w,
                        "control plane {addr}: serving it (step {})",
                        v["step"].as_str().unwrap_or("?")
                    )?;
                    break;
                }
                Ok(v) => match v["last_error"].as_str() {
                    Some(e) => format!("it refuses the directory: {e}"),
                    None => "it still serves other files".into(),
                },
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the files in {} are changed, but the control plane at {addr} has not loaded them within {}: {last}",
                    dir.display(),
                    humantime::format_duration(admins.wait)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Checks that every control plane serves `dir` as it is now, at `step`.
async fn check_serving(dir: &Path, step: &str, admins: &Admins) -> anyhow::Result<Vec<Value>> {
    let want = ca_dir::digest(dir)?;
    let mut out = Vec::new();
    for addr in &admins.addrs {
        let v = served(addr)
            .await
            .with_context(|| format!("cannot confirm what the control plane at {addr} serves"))?;
        if v["digest"] != want.as_str() {
            bail!(
                "the control plane at {addr} does not serve the files in {} yet (it serves step {}{}); wait for it, or send it SIGHUP",
                dir.display(),
                v["step"].as_str().unwrap_or("?"),
                v["last_error"]
                    .as_str()
                    .map(|e| format!("; it refuses these: {e}"))
                    .unwrap_or_default()
            );
        }
        if v["step"] != step {
            bail!(
                "the control plane at {addr} serves step {}, expected {step}",
                v["step"]
            );
        }
        out.push(v);
    }
    Ok(out)
}

/// `weftctl ca rotate prepare`.
pub async fn prepare(
    dir: &Path,
    new: &Path,
    td: Option<&TrustDomain>,
    admins: &Admins,
    w: &mut dyn Write,
) -> anyhow::Result<()> {
    let state = ca_dir::prepare(dir, new, td)?;
    writeln!(
        w,
        "prepared: {} trusts the old and the new root; the old CA still signs",
        dir.display()
    )?;
    describe(&state, w)?;
    writeln!(
        w,
        "  {}/ca.crt now holds both roots: give it to workloads that start from now on",
        dir.display()
    )?;
    wait_loaded(dir, admins, w).await?;
    writeln!(
        w,
        "next: once every proxy holds the new bundle, `weftctl ca rotate switch --ca-dir {}`",
        dir.display()
    )?;
    Ok(())
}

/// `weftctl ca rotate switch`.
pub async fn switch(
    dir: &Path,
    renew_within: Duration,
    force: bool,
    admins: &Admins,
    w: &mut dyn Write,
) -> anyhow::Result<()> {
    let prepared = ca_dir::read_state(dir)?.is_some_and(|s| s.step == Step::Prepared);
    if !prepared {
        // Not prepared: the directory's own refusal names what is wrong (and writes nothing).
        ca_dir::switch(dir, renew_within)?;
    }
    if !force && !admins.no_wait {
        check_serving(dir, "prepared", admins)
            .await
            .context("refusing to switch (--force to switch anyway)")?;
        wait_bundle_held(admins, w).await?;
    }
    let state = ca_dir::switch(dir, renew_within)?;
    writeln!(
        w,
        "switched: the new CA signs; every proxy renews within {}",
        humantime::format_duration(renew_within)
    )?;
    describe(&state, w)?;
    wait_loaded(dir, admins, w).await?;
    writeln!(
        w,
        "next: when `weftctl ca rotate status --ca-dir {0}` counts no proxy on the old CA, `weftctl ca rotate finish --ca-dir {0}`",
        dir.display()
    )?;
    Ok(())
}

/// Waits (`--wait` at most) until every proxy connected to each control plane has
/// acknowledged the trust bundle it serves (after `prepare`: both roots). A proxy still on the
/// old bundle would refuse every certificate the new CA signs once `switch` lets it sign.
async fn wait_bundle_held(admins: &Admins, w: &mut dyn Write) -> anyhow::Result<()> {
    for addr in &admins.addrs {
        let deadline = tokio::time::Instant::now() + admins.wait;
        loop {
            let v = served(addr).await?;
            let behind = bundle_behind(addr, &v)?;
            if behind == 0 {
                writeln!(
                    w,
                    "control plane {addr}: all {} connected proxies hold the bundle with both roots",
                    v["bundle"]["proxies_holding"].as_i64().unwrap_or(0)
                )?;
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "refusing to switch: {behind} proxies connected to the control plane at {addr} have not acknowledged the trust bundle with both roots (after {}; a proxy that rejects it logs why, and `weftctl ca rotate status` counts them). Until they hold it they would refuse the certificates the new CA signs. --force switches anyway",
                    humantime::format_duration(admins.wait)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Proxies connected to the control plane at `addr` (its `GET /ca` answer `v`) that have not
/// acknowledged the bundle it serves; an error when it does not count them.
fn bundle_behind(addr: &str, v: &Value) -> anyhow::Result<i64> {
    match v["bundle"]["proxies_behind"].as_i64() {
        Some(n) => Ok(n),
        None => bail!(
            "refusing to switch: the control plane at {addr} does not say which trust bundle its proxies hold (a version before that count?); \
             upgrade it, or --force to switch without knowing"
        ),
    }
}

/// `weftctl ca rotate finish`.
pub async fn finish(
    dir: &Path,
    force: bool,
    admins: &Admins,
    w: &mut dyn Write,
) -> anyhow::Result<()> {
    let state = ca_dir::read_state(dir)?;
    if !force && state.as_ref().is_some_and(|s| s.step == Step::Switched) {
        let served = check_serving(dir, "switched", admins)
            .await
            .context("refusing to finish (--force to finish anyway)")?;
        for (addr, v) in admins.addrs.iter().zip(&served) {
            let old = count(v, "previous") + count(v, "unknown");
            if old > 0 {
                bail!(
                    "refusing to finish: {old} proxies connected to the control plane at {addr} still hold certificates from the old CA \
                     (they renew within the window `switch` set; `weftctl ca rotate status` shows them). \
                     --force drops the old root anyway: those proxies then fail their mTLS handshakes until they get a new certificate with their token"
                );
            }
        }
    }
    let state = ca_dir::finish(dir)?;
    writeln!(
        w,
        "finished: the old root left the trust bundle; {} is the plain layout of the new CA",
        dir.display()
    )?;
    describe(&state, w)?;
    if admins.no_wait {
        writeln!(w, "not contacting a control plane (--no-wait)")?;
        return Ok(());
    }
    wait_loaded(dir, admins, w).await
}

/// `weftctl ca rotate status`.
pub async fn status(dir: &Path, admins: &Admins, w: &mut dyn Write) -> anyhow::Result<()> {
    let want = ca_dir::digest(dir)?;
    match ca_dir::read_state(dir)? {
        None => writeln!(w, "{}: no rotation under way", dir.display())?,
        Some(state) => {
            writeln!(w, "{}: step {}", dir.display(), state.step.as_str())?;
            describe(&state, w)?;
        }
    }
    if admins.no_wait {
        return Ok(());
    }
    for addr in &admins.addrs {
        let v = match served(addr).await {
            Ok(v) => v,
            Err(e) => {
                writeln!(w, "control plane {addr}: unreachable: {e:#}")?;
                continue;
            }
        };
        let loaded = if v["digest"] == want.as_str() {
            "serving these files".to_owned()
        } else {
            "NOT serving these files yet".to_owned()
        };
        writeln!(
            w,
            "control plane {addr}: {loaded} (step {})",
            v["step"].as_str().unwrap_or("?")
        )?;
        if let Some(e) = v["last_error"].as_str() {
            writeln!(w, "  last reload refused: {e}")?;
        }
        writeln!(w, "  {:<9} {:>7}  FINGERPRINT", "CA", "PROXIES")?;
        for ca in v["cas"].as_array().into_iter().flatten() {
            writeln!(
                w,
                "  {:<9} {:>7}  {}",
                ca["role"].as_str().unwrap_or("?"),
                ca["proxies"].as_i64().unwrap_or(0),
                ca["fingerprint"].as_str().unwrap_or("?")
            )?;
        }
        writeln!(w, "  {:<9} {:>7}", "unknown", count(&v, "unknown"))?;
        match (
            v["bundle"]["proxies_holding"].as_i64(),
            v["bundle"]["proxies_behind"].as_i64(),
        ) {
            (Some(holding), Some(behind)) => writeln!(
                w,
                "  trust bundle served: held by {holding} proxies, not acknowledged by {behind}"
            )?,
            _ => writeln!(
                w,
                "  trust bundle served: not counted by this control plane"
            )?,
        }
    }
    Ok(())
}

fn count(v: &Value, role: &str) -> i64 {
    if role == "unknown" {
        return v["proxies_unknown"].as_i64().unwrap_or(0);
    }
    v["cas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["role"] == role)
        .map(|c| c["proxies"].as_i64().unwrap_or(0))
        .sum()
}

fn describe(state: &RotationState, w: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(w, "  old CA {}", state.old_ca)?;
    writeln!(w, "  new CA {}", state.new_ca)?;
    if let Some(s) = state.renew_within_seconds {
        writeln!(
            w,
            "  proxies renew within {}",
            humantime::format_duration(Duration::from_secs(s))
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_plane_that_does_not_count_bundles_is_not_taken_for_all_held() {
        let counted = serde_json::json!({"bundle": {"proxies_holding": 3, "proxies_behind": 1}});
        assert_eq!(bundle_behind("a:1", &counted).unwrap(), 1);
        let older = serde_json::json!({"step": "prepared", "proxies_unknown": 0});
        let e = bundle_behind("a:1", &older).unwrap_err().to_string();
        assert!(e.contains("a:1") && e.contains("--force"), "{e}");
    }
}
