//! `weftctl` commands that work on local files or make one call: the CA, tokens, certificates.
//! (CLI wiring, so errors are `anyhow` with context for a person to read.)

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use weft_certs::ca::{BUNDLE_FILE, CERT_FILE, KEY_FILE, write_new};
use weft_certs::pem::{CertSummary, certs_from_file, certs_to_pem};
use weft_certs::{CertificateAuthority, SpiffeId, TrustBundle, TrustDomain, WorkloadKey};

use weft_control_plane::attest::TokenKey;
use weft_control_plane::attest::join::TOKEN_KEY_FILE;

/// `weftctl ca init`: a new root and token key in `out` (created 0700; keys 0600).
pub fn ca_init(
    td: &TrustDomain,
    out: &Path,
    validity: Duration,
    w: &mut impl Write,
) -> anyhow::Result<()> {
    for f in [CERT_FILE, KEY_FILE, BUNDLE_FILE, TOKEN_KEY_FILE] {
        if out.join(f).exists() {
            bail!(
                "{} already exists; refusing to overwrite a CA (choose another --out)",
                out.join(f).display()
            );
        }
    }
    create_private_dir(out)?;
    let files = CertificateAuthority::generate_root(td, validity)?;
    let token_key = TokenKey::generate()?;
    files
        .write_to(out)
        .with_context(|| format!("write CA files into {}", out.display()))?;
    write_new(
        &out.join(TOKEN_KEY_FILE),
        token_key.to_pem().as_bytes(),
        0o600,
    )
    .with_context(|| format!("write {}", out.join(TOKEN_KEY_FILE).display()))?;
    let ca = CertificateAuthority::load_dir(out, None)?;
    writeln!(w, "Created CA for trust domain {td} in {}", out.display())?;
    writeln!(
        w,
        "  {CERT_FILE}, {BUNDLE_FILE}: root certificate (share {BUNDLE_FILE} with every workload as its trust bundle)"
    )?;
    writeln!(
        w,
        "  {KEY_FILE}, {TOKEN_KEY_FILE}: private keys (mode 0600; keep them on the control plane only)"
    )?;
    writeln!(
        w,
        "  root SHA-256 {}",
        ca.bundle().fingerprints().join(", ")
    )?;
    writeln!(w, "  expires {}", ca.not_after())?;
    Ok(())
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    // DirBuilder leaves an existing directory's mode alone: make it private too.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("make {} private (0700)", dir.display()))
}

/// `weftctl ca inspect`.
pub fn ca_inspect(dir: &Path, w: &mut impl Write) -> anyhow::Result<()> {
    let ca = CertificateAuthority::load_dir(dir, None)?;
    let issuing = certs_from_file(&dir.join(CERT_FILE))?;
    writeln!(w, "trust domain: {}", ca.trust_domain())?;
    writeln!(w, "issuing certificate ({CERT_FILE}):")?;
    print_summary(
        &CertSummary::of(&issuing[0]).map_err(anyhow::Error::msg)?,
        w,
    )?;
    for (i, root) in ca.bundle().roots().iter().enumerate() {
        writeln!(w, "trust bundle root {i} ({BUNDLE_FILE}):")?;
        print_summary(&CertSummary::of(root).map_err(anyhow::Error::msg)?, w)?;
    }
    match TokenKey::load(&dir.join(TOKEN_KEY_FILE)) {
        Ok(k) => writeln!(w, "join-token key: Ed25519, key id {}", k.kid())?,
        Err(e) => writeln!(w, "join-token key: none ({e})")?,
    }
    if let Some(state) = weft_control_plane::ca_dir::read_state(dir)? {
        writeln!(
            w,
            "root rotation under way: step {}, to CA {} (`weftctl ca rotate status --ca-dir {}`)",
            state.step.as_str(),
            state.new_ca,
            dir.display()
        )?;
    }
    Ok(())
}

/// `weftctl token create`: prints a join token for `identity`.
pub fn token_create(
    ca_dir: &Path,
    identity: &SpiffeId,
    ttl: Duration,
    w: &mut impl Write,
) -> anyhow::Result<()> {
    let ca = CertificateAuthority::load_dir(ca_dir, None)?;
    if !identity.is_member_of(ca.trust_domain()) {
        bail!(
            "identity {identity} is not in the CA's trust domain {}",
            ca.trust_domain()
        );
    }
    identity
        .workload()
        .context("join tokens are for workload identities")?;
    if *identity == weft_control_plane::control_plane_id(ca.trust_domain()) {
        bail!("{identity} is reserved for the control plane; it never gets a join token");
    }
    let key = TokenKey::load(&ca_dir.join(TOKEN_KEY_FILE))?;
    writeln!(w, "{}", key.mint(identity, ttl)?)?;
    Ok(())
}

/// `weftctl cert inspect`: every certificate in a PEM file.
pub fn cert_inspect(file: &Path, w: &mut impl Write) -> anyhow::Result<()> {
    for (i, der) in certs_from_file(file)?.iter().enumerate() {
        writeln!(w, "certificate {i}:")?;
        print_summary(&CertSummary::of(der).map_err(anyhow::Error::msg)?, w)?;
    }
    Ok(())
}

fn print_summary(s: &CertSummary, w: &mut impl Write) -> std::io::Result<()> {
    let ids = if s.spiffe_ids.is_empty() {
        "(none)".to_owned()
    } else {
        s.spiffe_ids.join(", ")
    };
    writeln!(w, "  SPIFFE ID:   {ids}")?;
    if !s.dns_names.is_empty() {
        writeln!(w, "  DNS names:   {}", s.dns_names.join(", "))?;
    }
    writeln!(
        w,
        "  subject:     {}",
        if s.subject.is_empty() {
            "(empty)"
        } else {
            &s.subject
        }
    )?;
    writeln!(w, "  issuer:      {}", s.issuer)?;
    writeln!(w, "  CA:          {}", s.is_ca)?;
    writeln!(w, "  not before:  {}", s.not_before)?;
    let left = s.not_after - time::OffsetDateTime::now_utc();
    let state = if left.is_negative() {
        "EXPIRED".to_owned()
    } else {
        format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(left.whole_seconds() as u64))
        )
    };
    writeln!(w, "  not after:   {} ({state})", s.not_after)?;
    writeln!(w, "  serial:      {}", s.serial)?;
    writeln!(w, "  SHA-256:     {}", s.sha256)
}

/// What `weftctl cert request` needs. `Debug` redacts the token.
pub struct CertRequest<'a> {
    pub control_plane: &'a str,
    pub trust_bundle: &'a Path,
    pub token: String,
    pub identity: &'a SpiffeId,
    pub ttl: Option<Duration>,
    pub out: &'a Path,
}

impl std::fmt::Debug for CertRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertRequest")
            .field("control_plane", &self.control_plane)
            .field("identity", &self.identity)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// `weftctl cert request`: generates a key here, gets it certified, and writes `svid.crt`,
/// `svid.key` (0600) and `bundle.crt` into `out`. For workloads outside the mesh that need an
/// SVID on disk; proxies keep theirs in memory.
pub async fn cert_request(req: CertRequest<'_>, w: &mut impl Write) -> anyhow::Result<()> {
    let td = req.identity.trust_domain();
    let bundle = TrustBundle::new(td.clone(), certs_from_file(req.trust_bundle)?)?;
    let channel = weft_control_plane::client::connect(
        req.control_plane,
        Arc::new(bundle),
        weft_control_plane::control_plane_id(&td),
        None,
    )
    .await?;
    let key = WorkloadKey::generate()?;
    let got =
        weft_control_plane::client::certify(channel, &key, Some(req.identity), &req.token, req.ttl)
            .await?;
    create_private_dir(req.out)?;
    let paths = [
        req.out.join("svid.crt"),
        req.out.join("svid.key"),
        req.out.join("bundle.crt"),
    ];
    for p in &paths {
        if p.exists() {
            std::fs::remove_file(p).with_context(|| format!("replace {}", p.display()))?;
        }
    }
    write_new(&paths[0], certs_to_pem(&got.chain).as_bytes(), 0o644)?;
    write_new(&paths[1], key.to_pkcs8_pem().as_bytes(), 0o600)?;
    write_new(&paths[2], certs_to_pem(&got.bundle).as_bytes(), 0o644)?;
    let expires: time::OffsetDateTime = got.svid.not_after.into();
    writeln!(
        w,
        "Issued {} (expires {expires}); wrote {}, {} and {}",
        got.svid.id,
        paths[0].display(),
        paths[1].display(),
        paths[2].display()
    )?;
    Ok(())
}
