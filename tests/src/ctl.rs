//! `weftctl` as an operator runs it: logged in to a control plane through a context file in a
//! temp dir (`WEFT_CONFIG`), with stdout, stderr and the exit status kept for assertions.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::{ControlPlaneProcess, TestCa, bin};

/// What one `weftctl` run did.
#[derive(Debug)]
pub struct CtlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A logged-in `weftctl`: its context file lives in a temp dir removed on drop.
#[derive(Debug)]
pub struct Ctl {
    dir: tempfile::TempDir,
}

impl Ctl {
    /// `weftctl login` against `cp` with the CA of `ca`, into a fresh context file.
    pub async fn login(ca: &TestCa, cp: &ControlPlaneProcess) -> anyhow::Result<Self> {
        let ctl = Self {
            dir: tempfile::tempdir()?,
        };
        let ca_dir = ca.path();
        ctl.ok(&[
            "login",
            "--control-plane",
            &cp.grpc_addr,
            "--ca-dir",
            ca_dir.to_str().context("CA path")?,
            "--ttl",
            "1h",
        ])
        .await?;
        Ok(ctl)
    }

    /// A `weftctl` with an empty context dir (log in with [`Ctl::ok`]).
    pub fn logged_out() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    /// The context file (`WEFT_CONFIG` of every run).
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("weft/config.yaml")
    }

    /// Runs `weftctl args` in `cwd` (default: the temp dir), feeding `stdin` if given.
    pub async fn run_in(
        &self,
        cwd: Option<&Path>,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<CtlOutput> {
        let mut child = Command::new(bin("weftctl"))
            .args(args)
            .current_dir(cwd.unwrap_or(self.dir.path()))
            .env("WEFT_CONFIG", self.config())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn weftctl")?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        Ok(CtlOutput {
            success: out.status.success(),
            stdout: String::from_utf8(out.stdout)?,
            stderr: String::from_utf8(out.stderr)?,
        })
    }

    /// Runs `weftctl args`; returns stdout, or fails with stderr.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run_in(None, args, None).await?;
        if !out.success {
            bail!("weftctl {} failed:\n{}", args.join(" "), out.stderr);
        }
        Ok(out.stdout)
    }

    /// Runs `weftctl args` expecting a refusal; returns stderr.
    pub async fn refused(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run_in(None, args, None).await?;
        if out.success {
            bail!(
                "weftctl {} succeeded but should have failed:\n{}",
                args.join(" "),
                out.stdout
            );
        }
        Ok(out.stderr)
    }

    /// Writes `text` into the temp dir as `name`; returns its path as a string.
    pub fn file(&self, name: &str, text: &str) -> anyhow::Result<String> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p.to_str().context("temp path")?.to_owned())
    }
}
