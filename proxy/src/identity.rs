//! The proxy's identity. The key pair is made in memory and never leaves it; the control plane
//! certifies it (join token first, then renewal by the current certificate), and it is renewed
//! at 70 % of its lifetime with jitter. A failed renewal keeps the current certificate and
//! retries with backoff; once the certificate has expired the join token is used again.
//! Connections pick up the current certificate when they are made; existing ones are untouched.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};
use weft_certs::{Svid, TrustBundle, WorkloadKey};
use weft_proto::client::{self, ClientError};

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::resources::RenewHint;

/// Where and how to reach the control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// `host:port` of its gRPC port.
    pub addr: String,
    /// The join token (or Kubernetes service account token) file, read at each token use.
    pub token_file: PathBuf,
    /// Requested SVID lifetime (`None`: the control plane's default).
    pub cert_ttl: Option<Duration>,
}

/// The current SVID and trust bundle, swapped whole.
#[derive(Debug)]
pub struct Identity {
    svid: RwLock<(Svid, Instant)>,
    bundle: RwLock<Arc<TrustBundle>>,
    renewed: watch::Sender<u64>,
    /// From the TrustBundle during a root rotation: which CA signs now, and how soon to renew.
    hint: watch::Sender<Option<RenewHint>>,
    /// The early renewal drawn for the current certificate under the current hint.
    early: Mutex<Option<Instant>>,
}

impl Identity {
    pub fn svid(&self) -> Svid {
        self.svid
            .read()
            .map(|s| s.0.clone())
            .unwrap_or_else(|e| e.into_inner().0.clone())
    }

    /// An mTLS channel to the control plane at `addr`, presenting the current certificate and
    /// requiring the control plane's identity in the current trust bundle's domain.
    pub async fn connect(&self, addr: &str) -> Result<tonic::transport::Channel, ClientError> {
        let bundle = self.bundle();
        let expected = client::control_plane_id(bundle.trust_domain());
        client::connect(addr, bundle, expected, Some(self.svid().certified)).await
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle
            .read()
            .map(|b| b.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Roots from discovery (a rotation): used for every connection made from now on.
    pub fn set_bundle(&self, bundle: TrustBundle) {
        if let Ok(mut b) = self.bundle.write() {
            *b = Arc::new(bundle);
        }
    }

    /// Counts renewals; changes on each.
    pub fn renewals(&self) -> watch::Receiver<u64> {
        self.renewed.subscribe()
    }

    pub fn is_valid(&self) -> bool {
        self.svid().not_after > SystemTime::now()
    }

    /// The AuthorityKeyIdentifier of the current certificate: which CA issued it.
    pub fn issuer_key_id(&self) -> Option<Vec<u8>> {
        let svid = self.svid();
        svid.certified
            .cert
            .first()
            .and_then(weft_certs::verify::authority_key_id)
    }

    /// The TrustBundle's renewal hint (a root rotation's `switch`), or none.
    pub fn set_renew_hint(&self, hint: Option<RenewHint>) {
        self.hint.send_if_modified(|h| {
            if *h == hint {
                return false;
            }
            *h = hint;
            // A new signing CA: draw again.
            *self.early.lock().unwrap_or_else(|e| e.into_inner()) = None;
            true
        });
    }

    /// When to renew early, if the signing CA is not the one that issued the current
    /// certificate: a uniformly random instant within the hint's window, drawn once per
    /// certificate and hint, so a fleet told at once spreads its renewals over the window.
    fn early_in(&self) -> Option<Duration> {
        let hint = self.hint.borrow().clone()?;
        if self.issuer_key_id().as_deref() == Some(hint.key_id.as_slice()) {
            return None;
        }
        let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
        let at = *early.get_or_insert_with(|| {
            let delay = hint.within.mul_f64(crate::backoff::random_fraction());
            info!(in_ = ?delay, "the control plane signs with a new CA; renewing early");
            Instant::now() + delay
        });
        Some(at.saturating_duration_since(Instant::now()))
    }

    fn replace(&self, svid: Svid, metrics: &Metrics) {
        metrics.set_cert_expiry(svid.id.as_str(), svid.not_after);
        if let Ok(mut s) = self.svid.write() {
            *s = (svid, Instant::now());
        }
        *self.early.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.renewed.send_modify(|n| *n += 1);
    }

    /// When to renew: 70 % into the lifetime left at issuance, ±10 % jitter.
    fn renew_in(&self) -> Duration {
        let (svid, received) = match self.svid.read() {
            Ok(s) => (s.0.clone(), s.1),
            Err(e) => (e.get_ref().0.clone(), e.get_ref().1),
        };
        let lifetime = svid
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            + received.elapsed();
        let jitter = 0.9 + 0.2 * crate::backoff::random_fraction();
        lifetime
            .mul_f64(0.7 * jitter)
            .saturating_sub(received.elapsed())
    }
}

/// Gets the first SVID with the join token. While the control plane cannot be reached (or
/// answers that it is unavailable) it keeps trying with backoff, saying so in the log and in
/// `waiting` (what the admin's `/ready` shows meanwhile): a pod scheduled during a control
/// plane restart waits instead of crash-looping. A refusal (a bad token, a wrong trust
/// domain) ends it at once with the reason.
pub async fn bootstrap(
    cp: &ControlPlane,
    bundle: Arc<TrustBundle>,
    metrics: &Metrics,
    waiting: &watch::Sender<String>,
) -> Result<Arc<Identity>, IdentityError> {
    let mut backoff = Backoff::new(
        Duration::from_millis(250),
        crate::backoff::CONTROL_PLANE_RETRY_MAX,
    );
    let svid = loop {
        match certify_with_token(cp, bundle.clone()).await {
            Ok(svid) => break svid,
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                warn!(
                    error = %e,
                    retry_in = ?delay,
                    "cannot get a certificate yet; not ready, retrying"
                );
                waiting.send_replace(format!("waiting for the control plane: {e}"));
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    };
    info!(identity = %svid.id, not_after = ?svid.not_after, "certified");
    metrics.set_cert_expiry(svid.id.as_str(), svid.not_after);
    let (renewed, _) = watch::channel(0);
    Ok(Arc::new(Identity {
        svid: RwLock::new((svid, Instant::now())),
        bundle: RwLock::new(bundle),
        renewed,
        hint: watch::channel(None).0,
        early: Mutex::new(None),
    }))
}

/// Renews the SVID until `shutdown` flips.
pub async fn renew_forever(
    identity: Arc<Identity>,
    cp: ControlPlane,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut hints = identity.hint.subscribe();
    loop {
        let wait = match identity.early_in() {
            Some(early) => early.min(identity.renew_in()),
            None => identity.renew_in(),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // A rotation's hint: work out the wait again.
            Ok(()) = hints.changed() => continue,
            _ = shutdown.changed() => return,
        }
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            match renew(&identity, &cp).await {
                Ok(svid) => {
                    info!(identity = %svid.id, not_after = ?svid.not_after, "certificate renewed");
                    metrics.renewals.inc();
                    identity.replace(svid, &metrics);
                    break;
                }
                Err(e) => {
                    metrics.renewal_failures.inc();
                    warn!(error = %e, "certificate renewal failed; keeping the current one");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

async fn renew(identity: &Identity, cp: &ControlPlane) -> Result<Svid, IdentityError> {
    let bundle = identity.bundle();
    if !identity.is_valid() {
        // Expired: the certificate no longer proves anything; start over with the token.
        return certify_with_token(cp, bundle).await;
    }
    let current = identity.svid();
    let channel = identity.connect(&cp.addr).await?;
    let key = WorkloadKey::generate().map_err(ClientError::from)?;
    let got = client::certify(channel, &key, Some(&current.id), "", cp.cert_ttl).await?;
    Ok(got.svid)
}

async fn certify_with_token(
    cp: &ControlPlane,
    bundle: Arc<TrustBundle>,
) -> Result<Svid, IdentityError> {
    let token = tokio::fs::read_to_string(&cp.token_file)
        .await
        .map_err(|source| IdentityError::Token {
            path: cp.token_file.clone(),
            source,
        })?;
    let td = bundle.trust_domain().clone();
    let channel = client::connect(&cp.addr, bundle, client::control_plane_id(&td), None).await?;
    let key = WorkloadKey::generate().map_err(ClientError::from)?;
    let got = client::certify(channel, &key, None, token.trim(), cp.cert_ttl).await?;
    if !got.svid.id.is_member_of(&td) {
        return Err(IdentityError::Foreign(got.svid.id.to_string()));
    }
    Ok(got.svid)
}

impl IdentityError {
    /// Whether trying again later can succeed: the control plane was unreachable or said it
    /// is unavailable. A refusal (`PERMISSION_DENIED`, `UNAUTHENTICATED`, `INVALID_ARGUMENT`),
    /// a bad address or local file is not.
    pub fn is_transient(&self) -> bool {
        use tonic::Code;
        match self {
            IdentityError::Client(ClientError::Connect { .. }) => true,
            IdentityError::Client(ClientError::Certify(s)) => matches!(
                s.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::Unknown
            ),
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("read the token file {}: {source}", path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the control plane issued {0}, outside the trust bundle's trust domain")]
    Foreign(String),
}
