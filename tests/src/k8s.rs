//! Kubernetes checks without an API server: `kubernetes-validate --strict` (PyPI, installed
//! into a venv by `.ci/install-deps.sh`) for the versions we support.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The Kubernetes versions every manifest we write must pass: the oldest we support and the
/// newest the validator knows.
pub const VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

/// The `kubernetes-validate` executable: `$WEFT_VENV/bin`, else `~/.cache/weft/venv/bin`.
pub fn validator() -> anyhow::Result<PathBuf> {
    let venv = match std::env::var_os("WEFT_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/weft/venv"),
    };
    let exe = venv.join("bin/kubernetes-validate");
    if !exe.is_file() {
        bail!(
            "{} is missing: run `bash .ci/install-deps.sh` (the test command does)",
            exe.display()
        );
    }
    Ok(exe)
}

/// Validates a stream of YAML or JSON documents with `--strict` for every version in
/// [`VERSIONS`]; the error carries the validator's report.
pub fn validate_strict(name: &str, text: &str) -> anyhow::Result<()> {
    let exe = validator()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join(name);
    std::fs::write(&file, text)?;
    for version in VERSIONS {
        let out = Command::new(&exe)
            .args(["--strict", "--quiet", "-k", version])
            .arg(&file)
            .output()
            .with_context(|| format!("run {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "kubernetes-validate --strict -k {version} {name} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_field_fails_strict_validation() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - {name: a, image: b, bogus: 1}\n";
        let e = validate_strict("pod.yaml", pod).unwrap_err().to_string();
        assert!(e.contains("'bogus' was unexpected"), "{e}");
        let ok = pod.replace(", bogus: 1", "");
        validate_strict("pod.yaml", &ok).unwrap();
    }
}
