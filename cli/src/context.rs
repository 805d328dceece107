//! The weftctl context file: where the control plane is, how to recognise it, and the admin
//! credential to present. Written by `weftctl login`, read by every command that talks to the
//! control plane. YAML, mode 0600, at `--config`, `$WEFT_CONFIG` or
//! `~/.config/weft/config.yaml`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use weft_certs::pem::{certs_from_pem, certs_to_pem, key_from_pem};
use weft_certs::{CertificateAuthority, SpiffeId, TrustBundle, WorkloadKey};

/// The file's content. `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContextFile {
    /// `host:port` of the control plane's gRPC listener.
    pub control_plane: String,
    /// The SPIFFE ID the control plane must present.
    pub control_plane_identity: String,
    /// The admin identity of `certificate`.
    pub identity: String,
    /// PEM roots that the control plane's certificate chains to.
    pub trust_bundle: String,
    /// PEM admin certificate chain, leaf first.
    pub certificate: String,
    /// PKCS#8 PEM key of the admin certificate.
    pub key: String,
}

impl std::fmt::Debug for ContextFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextFile")
            .field("control_plane", &self.control_plane)
            .field("control_plane_identity", &self.control_plane_identity)
            .field("identity", &self.identity)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Why a context could not be loaded, written or used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("no weftctl context at {}: run `weftctl login` first", .path.display())]
    Missing { path: PathBuf },
    #[error("read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a weftctl context ({message}); run `weftctl login` again", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {what}: {message}; run `weftctl login` again", .path.display())]
    Invalid {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error("{}: the admin certificate expired at {not_after}; run `weftctl login` again", .path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no context path: set --config or $WEFT_CONFIG, or $HOME for ~/.config/weft/config.yaml"
    )]
    NoPath,
    #[error(transparent)]
    Connect(#[from] weft_control_plane::client::ClientError),
}

/// `$WEFT_CONFIG`, else `~/.config/weft/config.yaml`. (`--config` is resolved by clap, which
/// also reads `WEFT_CONFIG`; this is the fallback.)
pub fn default_path() -> Result<PathBuf, ContextError> {
    if let Some(p) = std::env::var_os("WEFT_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(ContextError::NoPath)?;
    Ok(PathBuf::from(home).join(".config/weft/config.yaml"))
}

/// A loaded, checked context.
#[derive(Debug)]
pub struct Context {
    path: PathBuf,
    file: ContextFile,
    control_plane_id: SpiffeId,
    identity: SpiffeId,
    bundle: Arc<TrustBundle>,
}

impl Context {
    /// Reads and checks the context at `path`: parseable, identities valid, certificate and key
    /// readable, certificate not expired.
    pub fn load(path: &Path) -> Result<Self, ContextError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ContextError::Missing {
                    path: path.to_owned(),
                }
            } else {
                ContextError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        weft_certs::pem::warn_if_not_private(path);
        let file: ContextFile = serde_saphyr::from_str(&text).map_err(|e| ContextError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |what: &'static str, message: String| ContextError::Invalid {
            path: path.to_owned(),
            what,
            message,
        };
        let control_plane_id = SpiffeId::parse(&file.control_plane_identity)
            .map_err(|e| invalid("controlPlaneIdentity", e.to_string()))?;
        let identity =
            SpiffeId::parse(&file.identity).map_err(|e| invalid("identity", e.to_string()))?;
        let bundle = TrustBundle::from_pem(
            control_plane_id.trust_domain(),
            file.trust_bundle.as_bytes(),
            "trustBundle",
        )
        .map_err(|e| invalid("trustBundle", e.to_string()))?;
        let chain = certs_from_pem(file.certificate.as_bytes(), "certificate")
            .map_err(|e| invalid("certificate", e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| invalid("certificate", "empty".into()))?;
        let summary =
            weft_certs::pem::CertSummary::of(leaf).map_err(|e| invalid("certificate", e))?;
        if summary.not_after < time::OffsetDateTime::now_utc() {
            return Err(ContextError::Expired {
                path: path.to_owned(),
                not_after: summary.not_after.to_string(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            control_plane_id,
            identity,
            bundle: Arc::new(bundle),
        })
    }

    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `host:port` of the control plane.
    pub fn control_plane(&self) -> &str {
        &self.file.control_plane
    }

    /// The admin identity this context acts as.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// An mTLS channel to the control plane, verified as `controlPlaneIdentity` against the
    /// context's trust bundle, presenting the admin certificate.
    pub async fn connect(&self) -> Result<Channel, ContextError> {
        let invalid = |what: &'static str, message: String| ContextError::Invalid {
            path: self.path.clone(),
            what,
            message,
        };
        let chain = certs_from_pem(self.file.certificate.as_bytes(), "certificate")
            .map_err(|e| invalid("certificate", e.to_string()))?;
        let key = key_from_pem(self.file.key.as_bytes(), "key")
            .map_err(|e| invalid("key", e.to_string()))?;
        let certified =
            rustls::sign::CertifiedKey::from_der(chain, key, &weft_certs::tls::provider())
                .map_err(|e| invalid("key", format!("does not match the certificate: {e}")))?;
        Ok(weft_control_plane::client::connect(
            &self.file.control_plane,
            self.bundle.clone(),
            self.control_plane_id.clone(),
            Some(Arc::new(certified)),
        )
        .await?)
    }
}

/// What `weftctl login` needs.
#[derive(Debug)]
pub struct Login<'a> {
    /// `host:port` of the control plane.
    pub control_plane: &'a str,
    /// The CA directory (the operator holds it; nothing is sent to the control plane).
    pub ca_dir: &'a Path,
    /// Lifetime of the admin certificate.
    pub ttl: Duration,
    /// The identity to mint; `None`: `default_admin_id`.
    pub identity: Option<SpiffeId>,
    /// Where to write the context.
    pub config: &'a Path,
}

/// `weftctl login`: a fresh key and an admin SVID issued locally from the CA directory, written
/// with the control plane's address and identity into the context file. The key is written to
/// that file only (0600) and never printed.
pub fn login(req: Login<'_>, w: &mut impl std::io::Write) -> anyhow::Result<()> {
    use anyhow::{Context as _, bail};
    let ca = CertificateAuthority::load_dir(req.ca_dir, None)
        .with_context(|| format!("load CA from {}", req.ca_dir.display()))?
        .with_max_ttl(req.ttl);
    let td = ca.trust_domain().clone();
    let identity = req
        .identity
        .unwrap_or_else(|| weft_control_plane::default_admin_id(&td));
    let cp = weft_control_plane::control_plane_id(&td);
    if identity == cp {
        bail!("{identity} is the control plane's own identity; choose an admin identity");
    }
    let key = WorkloadKey::generate()?;
    let issued = ca
        .issue(key.key_pair(), &identity, &[], Some(req.ttl))
        .with_context(|| format!("issue a certificate for {identity}"))?;
    let file = ContextFile {
        control_plane: req.control_plane.to_owned(),
        control_plane_identity: cp.to_string(),
        identity: identity.to_string(),
        trust_bundle: ca.bundle().to_pem(),
        certificate: certs_to_pem(&issued.chain),
        key: key.to_pkcs8_pem(),
    };
    write(req.config, &file)?;
    let expires = time::OffsetDateTime::from(issued.not_after);
    let left = issued
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    writeln!(
        w,
        "Logged in to {} as {identity} (certificate expires {expires}, in {}); context written to {}",
        req.control_plane,
        humantime::format_duration(Duration::from_secs(left.as_secs())),
        req.config.display()
    )?;
    Ok(())
}

/// What `weftctl login --token-file` needs.
#[derive(Debug)]
pub struct TokenLogin<'a> {
    pub control_plane: &'a str,
    /// The mesh's trust bundle (its trust domain comes from the root).
    pub trust_bundle: &'a Path,
    /// A join token, or a Kubernetes service-account token for the audience `weft`.
    pub token_file: &'a Path,
    /// Requested lifetime; the control plane may cap it.
    pub ttl: Duration,
    pub config: &'a Path,
}

/// `weftctl login --token-file`: the identity a token attests, certified by the control plane
/// like a proxy's (no CA key on this machine). The key is made here, written only into the
/// context file (0600), never sent. Whether that identity may change config is the control
/// plane's `--admin-identity` list: asked with an empty dry-run apply and said.
pub async fn login_with_token(
    req: TokenLogin<'_>,
    w: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let pem = std::fs::read(req.trust_bundle)
        .with_context(|| format!("read {}", req.trust_bundle.display()))?;
    let bundle = weft_certs::TrustBundle::from_pem_deriving(
        None,
        &pem,
        &req.trust_bundle.display().to_string(),
    )?;
    let token = std::fs::read_to_string(req.token_file)
        .with_context(|| format!("read {}", req.token_file.display()))?;
    let td = bundle.trust_domain().clone();
    let cp = weft_control_plane::control_plane_id(&td);
    let bundle = Arc::new(bundle);
    let channel =
        weft_control_plane::client::connect(req.control_plane, bundle.clone(), cp.clone(), None)
            .await?;
    let key = WorkloadKey::generate()?;
    let got = weft_control_plane::client::certify(channel, &key, None, token.trim(), Some(req.ttl))
        .await
        .context("the control plane refused the token")?;
    let identity = got.svid.id.clone();
    let file = ContextFile {
        control_plane: req.control_plane.to_owned(),
        control_plane_identity: cp.to_string(),
        identity: identity.to_string(),
        trust_bundle: bundle.to_pem(),
        certificate: certs_to_pem(&got.chain),
        key: key.to_pkcs8_pem(),
    };
    write(req.config, &file)?;
    let ctx = Context::load(req.config)?;
    let mut client = weft_proto::config::v1::config_client::ConfigClient::new(ctx.connect().await?);
    let probe = client
        .apply(weft_proto::config::v1::ApplyRequest {
            documents: Vec::new(),
            dry_run: true,
        })
        .await;
    let admin = !matches!(&probe, Err(s) if s.code() == tonic::Code::PermissionDenied);
    let expires = time::OffsetDateTime::from(got.svid.not_after);
    writeln!(
        w,
        "Logged in to {} as {identity} (certificate expires {expires}); context written to {}",
        req.control_plane,
        req.config.display()
    )?;
    if !admin {
        writeln!(
            w,
            "warning: {identity} is not one of the control plane's admin identities \
             (--admin-identity): apply, delete and register will be refused; get and explain work"
        )?;
    }
    Ok(())
}

/// Writes `file` to `path` with mode 0600, creating parent directories (0700), replacing any
/// previous context atomically (a temp file beside it, then a rename) so a reader never sees a
/// half-written key.
pub fn write(path: &Path, file: &ContextFile) -> Result<(), ContextError> {
    let werr = |source| ContextError::Write {
        path: path.to_owned(),
        source,
    };
    let yaml =
        serde_saphyr::to_string(file).map_err(|e| werr(std::io::Error::other(e.to_string())))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(werr)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(werr(e)),
    }
    weft_certs::ca::write_new(&tmp, yaml.as_bytes(), 0o600).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let td = weft_certs::TrustDomain::parse("mesh.test").unwrap();
        crate::ca_init(&td, &ca_dir, Duration::from_secs(3600), &mut Vec::new()).unwrap();
        (dir, ca_dir)
    }

    #[test]
    fn login_writes_a_private_context_that_loads() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, ca_dir) = ca();
        let config = dir.path().join("a/b/config.yaml");
        let mut out = Vec::new();
        login(
            Login {
                control_plane: "127.0.0.1:8443",
                ca_dir: &ca_dir,
                ttl: Duration::from_secs(600),
                identity: None,
                config: &config,
            },
            &mut out,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("PRIVATE KEY"), "{out}");
        assert!(
            out.contains("spiffe://mesh.test/ns/weft-system/sa/weft-admin"),
            "{out}"
        );
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let ctx = Context::load(&config).unwrap();
        assert_eq!(ctx.control_plane(), "127.0.0.1:8443");
        assert_eq!(
            ctx.identity().as_str(),
            "spiffe://mesh.test/ns/weft-system/sa/weft-admin"
        );
        assert!(!format!("{ctx:?}").contains("PRIVATE KEY"));
        // A second login replaces the file.
        login(
            Login {
                control_plane: "127.0.0.1:9443",
                ca_dir: &ca_dir,
                ttl: Duration::from_secs(600),
                identity: Some(SpiffeId::parse("spiffe://mesh.test/ns/ops/sa/alice").unwrap()),
                config: &config,
            },
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(
            Context::load(&config).unwrap().control_plane(),
            "127.0.0.1:9443"
        );
    }

    #[test]
    fn load_errors_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.yaml");
        let e = Context::load(&missing).unwrap_err().to_string();
        assert!(e.contains("run `weftctl login` first"), "{e}");
        let garbage = dir.path().join("garbage.yaml");
        std::fs::write(&garbage, "controlPlane: [").unwrap();
        let e = Context::load(&garbage).unwrap_err().to_string();
        assert!(e.contains("not a weftctl context"), "{e}");
    }

    #[test]
    fn login_refuses_the_control_plane_identity() {
        let (dir, ca_dir) = ca();
        let e = login(
            Login {
                control_plane: "x:1",
                ca_dir: &ca_dir,
                ttl: Duration::from_secs(60),
                identity: Some(
                    SpiffeId::parse("spiffe://mesh.test/ns/weft-system/sa/weft-control-plane")
                        .unwrap(),
                ),
                config: &dir.path().join("c.yaml"),
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("control plane's own identity"),
            "{e}"
        );
    }
}
