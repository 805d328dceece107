//! The CA directory (`--ca-dir`) and the files of a live root rotation.
//!
//! Outside a rotation the directory is the cert-manager layout (`tls.crt`, `tls.key`,
//! `ca.crt`) plus `token.key`. A rotation (`weftctl ca rotate …`) adds the new CA beside it as
//! `new.tls.crt`, `new.tls.key`, `new.ca.crt`, and a state file, `rotation.json`, naming the
//! step. Each step commits by renaming one file (`rotation.json`), so a reader sees the step
//! before or after, never half of one; every other file a step writes is either written before
//! the commit under a name the current step ignores, or after it under a name the new step
//! ignores. What the control plane serves in each step ([`load`]):
//!
//! | step | signs with | trusts (and publishes) |
//! |---|---|---|
//! | none | `tls.*` | `ca.crt` |
//! | `prepared` | `tls.*` (old) | `ca.crt` ∪ `new.ca.crt` |
//! | `switched` | `new.*` | `ca.crt` ∪ `new.ca.crt` |
//! | `finished` | `new.*` | `new.ca.crt` |
//!
//! `finish` commits `finished`, then copies `new.*` over `tls.*`/`ca.crt` and removes the
//! rotation files, ending in the plain layout again; if it is interrupted, running it again
//! completes it. The layout is flat so that a Kubernetes Secret can carry it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use weft_certs::ca::{BUNDLE_FILE, CERT_FILE, CaError, KEY_FILE};
use weft_certs::{CertificateAuthority, TrustBundle, TrustDomain};

/// The rotation's state file: its rename is each step's commit.
pub const STATE_FILE: &str = "rotation.json";
pub const NEW_CERT_FILE: &str = "new.tls.crt";
pub const NEW_KEY_FILE: &str = "new.tls.key";
pub const NEW_BUNDLE_FILE: &str = "new.ca.crt";

/// How long proxies take to renew after `switch` unless told otherwise: each renews at a
/// uniformly random instant within it.
pub const DEFAULT_RENEW_WITHIN: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Prepared,
    Switched,
    Finished,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Prepared => "prepared",
            Step::Switched => "switched",
            Step::Finished => "finished",
        }
    }
}

/// `rotation.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationState {
    pub step: Step,
    pub trust_domain: String,
    /// SHA-256 fingerprint of the CA rotated away from (`tls.crt` until `finish`).
    pub old_ca: String,
    /// SHA-256 fingerprint of the CA rotated to (`new.tls.crt`).
    pub new_ca: String,
    pub prepared_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<u64>,
    /// After `switch`: the window within which proxies renew early, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_within_seconds: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaDirError {
    #[error("{}: {source}", dir.display())]
    Ca { dir: PathBuf, source: CaError },
    #[error("{path}: {reason}")]
    State { path: String, reason: String },
    #[error("{0}")]
    Step(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the control plane serves from a CA directory.
#[derive(Debug, Clone)]
pub struct LoadedCa {
    pub trust_domain: TrustDomain,
    /// The CA that signs SVIDs.
    pub signing: Arc<CertificateAuthority>,
    /// The rotation's other CA while both are trusted: the new one (`prepared`), the old one
    /// (`switched`).
    pub other: Option<Arc<CertificateAuthority>>,
    /// The roots clients are verified against and that the TrustBundle resource carries.
    pub trust: Arc<TrustBundle>,
    /// `None` outside a rotation.
    pub step: Option<Step>,
    /// Set while `switched`: proxies whose certificate another CA issued renew within this.
    pub renew_within: Option<Duration>,
    /// [`digest`] of the files this was loaded from.
    pub digest: String,
}

impl LoadedCa {
    /// What the rotation calls `ca`: `current` (signs), `next` (prepared, trusted, not signing
    /// yet), `previous` (switched away from, trusted until `finish`).
    pub fn role_of(&self, key_id: Option<&[u8]>) -> &'static str {
        match key_id {
            Some(k) if k == self.signing.key_id() => "current",
            Some(k) if self.other.as_ref().is_some_and(|o| o.key_id() == k) => match self.step {
                Some(Step::Prepared) => "next",
                _ => "previous",
            },
            _ => "unknown",
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CaDirError + use<> {
    let path = path.to_owned();
    move |source| CaDirError::Io { what, path, source }
}

/// The rotation state, if a rotation is under way.
pub fn read_state(dir: &Path) -> Result<Option<RotationState>, CaDirError> {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CaDirError::State {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// SHA-256 (hex) over the certificate and state files the control plane serves from (never
/// the keys: the control plane reports it on its admin port). Equal digests mean the control
/// plane has loaded exactly these files.
pub fn digest(dir: &Path) -> Result<String, CaDirError> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for name in [
        CERT_FILE,
        BUNDLE_FILE,
        STATE_FILE,
        NEW_CERT_FILE,
        NEW_BUNDLE_FILE,
    ] {
        let path = dir.join(name);
        ctx.update(name.as_bytes());
        match std::fs::read(&path) {
            Ok(bytes) => {
                ctx.update(&(bytes.len() as u64).to_be_bytes());
                ctx.update(&bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ctx.update(b"absent"),
            Err(e) => return Err(io("read", &path)(e)),
        }
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn load_new(dir: &Path, td: &TrustDomain) -> Result<CertificateAuthority, CaDirError> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(io("read", &p))
    };
    let (cert, key, bundle) = (
        read(NEW_CERT_FILE)?,
        read(NEW_KEY_FILE)?,
        read(NEW_BUNDLE_FILE)?,
    );
    CertificateAuthority::from_pem(&cert, &key, Some(&bundle), Some(td), "new CA").map_err(
        |source| CaDirError::Ca {
            dir: dir.join(NEW_CERT_FILE),
            source,
        },
    )
}

fn load_plain(dir: &Path, td: Option<&TrustDomain>) -> Result<CertificateAuthority, CaDirError> {
    CertificateAuthority::load_dir(dir, td).map_err(|source| CaDirError::Ca {
        dir: dir.to_owned(),
        source,
    })
}

fn mismatch(what: &str, file: &str, want: &str, found: &str) -> CaDirError {
    CaDirError::Step(format!(
        "{file} is not the {what} CA {STATE_FILE} names (it names {want}, {file} is {found}); \
         the directory was changed outside `weftctl ca rotate`"
    ))
}

/// Loads what the control plane serves from `dir` (see the module's table). `td` is
/// `--trust-domain`; a rotation's two CAs must both be of it.
pub fn load(dir: &Path, td: Option<&TrustDomain>) -> Result<LoadedCa, CaDirError> {
    load_with_ttl(dir, td, None)
}

/// [`load`], with `max_ttl` (`--svid-ttl`) as the longest SVID lifetime the CAs issue.
pub fn load_with_ttl(
    dir: &Path,
    td: Option<&TrustDomain>,
    max_ttl: Option<Duration>,
) -> Result<LoadedCa, CaDirError> {
    let ttl = |ca: CertificateAuthority| match max_ttl {
        Some(t) => ca.with_max_ttl(t),
        None => ca,
    };
    let digest = digest(dir)?;
    let state = read_state(dir)?;
    let Some(state) = state else {
        let ca = Arc::new(ttl(load_plain(dir, td)?));
        return Ok(LoadedCa {
            trust_domain: ca.trust_domain().clone(),
            trust: Arc::new(ca.bundle().clone()),
            signing: ca,
            other: None,
            step: None,
            renew_within: None,
            digest,
        });
    };
    let td = match td {
        Some(td) => td.clone(),
        None => TrustDomain::parse(&state.trust_domain).map_err(|e| CaDirError::State {
            path: dir.join(STATE_FILE).display().to_string(),
            reason: format!("trust_domain: {e}"),
        })?,
    };
    if td.as_str() != state.trust_domain {
        return Err(CaDirError::Step(format!(
            "{STATE_FILE} is for trust domain {}, the control plane's is {td}",
            state.trust_domain
        )));
    }
    let new = Arc::new(ttl(load_new(dir, &td)?));
    if new.fingerprint() != state.new_ca {
        return Err(mismatch(
            "new",
            NEW_CERT_FILE,
            &state.new_ca,
            new.fingerprint(),
        ));
    }
    let (signing, other, trust) = match state.step {
        Step::Finished => (new.clone(), None, new.bundle().clone()),
        Step::Prepared | Step::Switched => {
            let old = Arc::new(ttl(load_plain(dir, Some(&td))?));
            if old.fingerprint() != state.old_ca {
                return Err(mismatch("old", CERT_FILE, &state.old_ca, old.fingerprint()));
            }
            let trust = old
                .bundle()
                .merged_with(new.bundle())
                .map_err(|e| CaDirError::Step(format!("merge the trust bundles: {e}")))?;
            if state.step == Step::Prepared {
                (old, Some(new), trust)
            } else {
                (new, Some(old), trust)
            }
        }
    };
    Ok(LoadedCa {
        trust_domain: td,
        signing,
        other,
        trust: Arc::new(trust),
        step: Some(state.step),
        renew_within: (state.step == Step::Switched).then(|| {
            Duration::from_secs(
                state
                    .renew_within_seconds
                    .unwrap_or(DEFAULT_RENEW_WITHIN.as_secs()),
            )
        }),
        digest,
    })
}

/// Writes `contents` to `dir/name` through a temporary file and a rename, so a reader sees the
/// old or the new file whole; `mode` from the start (a key is never briefly readable).
pub fn replace_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), CaDirError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", &tmp)(e));
    }
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("rename into place", &path)(e)
    })?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), CaDirError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

fn remove_if_present(path: &Path) -> Result<(), CaDirError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", path)(e)),
    }
}

fn write_state(dir: &Path, state: &RotationState) -> Result<(), CaDirError> {
    let mut json = serde_json::to_vec_pretty(state).map_err(|e| CaDirError::State {
        path: STATE_FILE.into(),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    replace_file(dir, STATE_FILE, &json, 0o600)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn in_progress(state: &RotationState) -> String {
    match state.step {
        Step::Prepared => format!(
            "a rotation to CA {} is already prepared; the next step is `weftctl ca rotate switch`",
            state.new_ca
        ),
        Step::Switched => format!(
            "a rotation to CA {} is already switched; the next step is `weftctl ca rotate finish`",
            state.new_ca
        ),
        Step::Finished => format!(
            "a finished rotation to CA {} was not cleaned up; run `weftctl ca rotate finish` again",
            state.new_ca
        ),
    }
}

/// `weftctl ca rotate prepare`: copies the CA in `new_dir` (a `weftctl ca init` directory or a
/// cert-manager one) into `dir` as `new.*`, adds its roots to `ca.crt`, and commits
/// `prepared`. Running it again with the same new CA completes an interrupted one.
pub fn prepare(
    dir: &Path,
    new_dir: &Path,
    td: Option<&TrustDomain>,
) -> Result<RotationState, CaDirError> {
    let old = load_plain(dir, td)?;
    let td = old.trust_domain().clone();
    let new = CertificateAuthority::load_dir(new_dir, Some(&td)).map_err(|source| {
        CaDirError::Step(format!(
            "--new {}: not a usable CA of trust domain {td}: {source}",
            new_dir.display()
        ))
    })?;
    if let Some(state) = read_state(dir)? {
        if state.step == Step::Prepared && state.new_ca == new.fingerprint() {
            // Idempotent: an interrupted or repeated prepare of the same CA.
            load(dir, Some(&td))?;
            return Ok(state);
        }
        return Err(CaDirError::Step(in_progress(&state)));
    }
    if new.key_id() == old.key_id() || new.fingerprint() == old.fingerprint() {
        return Err(CaDirError::Step(format!(
            "--new {}: it holds the key this directory already signs with; a rotation needs a new CA key",
            new_dir.display()
        )));
    }
    let read = |name: &str| {
        let p = new_dir.join(name);
        std::fs::read(&p).map_err(io("read", &p))
    };
    let trust = old
        .bundle()
        .merged_with(new.bundle())
        .map_err(|e| CaDirError::Step(format!("merge the trust bundles: {e}")))?;
    // Everything but the state file first: `new.*` is ignored without it, and `ca.crt` with
    // both roots serves the same as `ca.crt` ∪ `new.ca.crt` once it is committed.
    replace_file(dir, NEW_KEY_FILE, &read(KEY_FILE)?, 0o600)?;
    replace_file(dir, NEW_CERT_FILE, &read(CERT_FILE)?, 0o644)?;
    replace_file(
        dir,
        NEW_BUNDLE_FILE,
        new.bundle().to_pem().as_bytes(),
        0o644,
    )?;
    replace_file(dir, BUNDLE_FILE, trust.to_pem().as_bytes(), 0o644)?;
    let state = RotationState {
        step: Step::Prepared,
        trust_domain: td.to_string(),
        old_ca: old.fingerprint().to_owned(),
        new_ca: new.fingerprint().to_owned(),
        prepared_at: unix_now(),
        switched_at: None,
        renew_within_seconds: None,
    };
    // Check what the control plane will load before committing it.
    let check = load_new(dir, &td)?;
    if check.fingerprint() != state.new_ca {
        return Err(mismatch(
            "new",
            NEW_CERT_FILE,
            &state.new_ca,
            check.fingerprint(),
        ));
    }
    write_state(dir, &state)?;
    Ok(state)
}

/// `weftctl ca rotate switch`: commits `switched` (the new CA signs; proxies renew within
/// `renew_within`).
pub fn switch(dir: &Path, renew_within: Duration) -> Result<RotationState, CaDirError> {
    let Some(mut state) = read_state(dir)? else {
        return Err(CaDirError::Step(
            "no rotation is prepared in this directory; run `weftctl ca rotate prepare --new NEWDIR` first".into(),
        ));
    };
    if state.step != Step::Prepared {
        return Err(CaDirError::Step(in_progress(&state)));
    }
    if renew_within.is_zero() {
        return Err(CaDirError::Step("--renew-within must be above zero".into()));
    }
    load(dir, None)?;
    state.step = Step::Switched;
    state.switched_at = Some(unix_now());
    state.renew_within_seconds = Some(renew_within.as_secs().max(1));
    write_state(dir, &state)?;
    Ok(state)
}

/// `weftctl ca rotate finish`: commits `finished` (the old root leaves the bundle), then
/// makes `new.*` the plain layout and removes the rotation's files. Whether proxies still hold
/// old certificates is the caller's check. Running it again completes an interrupted one.
pub fn finish(dir: &Path) -> Result<RotationState, CaDirError> {
    let Some(mut state) = read_state(dir)? else {
        return Err(CaDirError::Step(
            "no rotation is under way in this directory; nothing to finish".into(),
        ));
    };
    match state.step {
        Step::Prepared => {
            return Err(CaDirError::Step(
                "the rotation is only prepared: run `weftctl ca rotate switch` first (finishing now would drop the root every certificate chains to)".into(),
            ));
        }
        Step::Switched => {
            load(dir, None)?;
            state.step = Step::Finished;
            write_state(dir, &state)?;
        }
        Step::Finished => {}
    }
    // Committed: from here the control plane reads only `new.*` until the state file goes.
    let td = TrustDomain::parse(&state.trust_domain).map_err(|e| CaDirError::State {
        path: STATE_FILE.into(),
        reason: format!("trust_domain: {e}"),
    })?;
    load_new(dir, &td)?;
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(io("read", &p))
    };
    replace_file(dir, KEY_FILE, &read(NEW_KEY_FILE)?, 0o600)?;
    replace_file(dir, CERT_FILE, &read(NEW_CERT_FILE)?, 0o644)?;
    replace_file(dir, BUNDLE_FILE, &read(NEW_BUNDLE_FILE)?, 0o644)?;
    // The plain layout now equals `finished`: drop the state file, then what it pointed at.
    remove_if_present(&dir.join(STATE_FILE))?;
    for f in [NEW_KEY_FILE, NEW_CERT_FILE, NEW_BUNDLE_FILE] {
        remove_if_present(&dir.join(f))?;
    }
    sync_dir(dir)?;
    Ok(state)
}

#[cfg(test)]
mod tests;
