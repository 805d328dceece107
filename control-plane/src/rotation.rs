//! The CA the control plane serves, reloaded live from the CA directory ([`crate::ca_dir`]):
//! polled every [`POLL`] (a Kubernetes Secret update lands there too) and at once on SIGHUP
//! or `POST /ca/reload` on the admin port. A directory that does not load is logged and
//! counted, and the last good CA keeps serving.
//!
//! It also counts connected proxies by the CA that issued the certificate each discovery
//! stream was opened with (the verified client certificate; proxies reopen the stream when a
//! renewal changes the issuer), which is what `weftctl ca rotate status` and `finish` read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{info, warn};
use weft_certs::TrustDomain;
use weft_proto::mesh::v1 as pb;

use crate::ca_dir::{self, CaDirError, LoadedCa};
use crate::metrics::{CaRoleLabels, Metrics, ResultLabels};

/// How often the CA directory is checked for a change.
pub const POLL: Duration = Duration::from_secs(2);

/// The CA being served, with when it was loaded.
#[derive(Debug, Clone)]
pub struct ActiveCa {
    pub ca: LoadedCa,
    pub loaded_at: SystemTime,
}

impl ActiveCa {
    /// The TrustBundle discovery resource for this state.
    pub fn resource(&self) -> pb::TrustBundle {
        let ca = &self.ca;
        pb::TrustBundle {
            trust_domain: ca.trust_domain.to_string(),
            roots: ca.trust.roots().iter().map(|r| r.to_vec()).collect(),
            signing_key_id: if ca.renew_within.is_some() {
                ca.signing.key_id().to_vec()
            } else {
                Vec::new()
            },
            renew_within: ca.renew_within.map(|d| prost_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        }
    }
}

#[derive(Debug, Default)]
struct ReloadState {
    /// The digest of files that failed to load: not tried again by the poll until they change.
    failed_digest: Option<String>,
    last_error: Option<String>,
}

/// The live CA, its reloads, and the per-issuer count of connected proxies.
#[derive(Debug)]
pub struct CaSource {
    dir: PathBuf,
    trust_domain: TrustDomain,
    svid_ttl: Duration,
    tx: watch::Sender<Arc<ActiveCa>>,
    reload: Mutex<ReloadState>,
    /// Open discovery streams by the authority key id of the certificate they were opened with.
    issuers: Mutex<HashMap<Option<Vec<u8>>, i64>>,
    /// Open discovery streams that asked for the trust bundle, by the roots of the last bundle
    /// each acknowledged ([`roots_key`]; `None`: none yet).
    bundles: Mutex<HashMap<Option<String>, i64>>,
    metrics: Arc<Metrics>,
}

impl CaSource {
    /// Loads the directory once (an error stops the start).
    pub fn load(
        dir: PathBuf,
        trust_domain: Option<&TrustDomain>,
        svid_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, CaDirError> {
        let ca = Self::read(&dir, trust_domain, svid_ttl)?;
        let trust_domain = ca.trust_domain.clone();
        let active = Arc::new(ActiveCa {
            ca,
            loaded_at: SystemTime::now(),
        });
        let this = Arc::new(Self {
            dir,
            trust_domain,
            svid_ttl,
            tx: watch::channel(active).0,
            reload: Mutex::default(),
            issuers: Mutex::default(),
            bundles: Mutex::default(),
            metrics,
        });
        this.update_metrics();
        Ok(this)
    }

    fn read(
        dir: &std::path::Path,
        td: Option<&TrustDomain>,
        svid_ttl: Duration,
    ) -> Result<LoadedCa, CaDirError> {
        ca_dir::load_with_ttl(dir, td, Some(svid_ttl))
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn current(&self) -> Arc<ActiveCa> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ActiveCa>> {
        self.tx.subscribe()
    }

    /// Re-reads the directory if its files changed (`force`: even if they did not, and even
    /// if they failed before). Returns whether what is served changed.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let mut st = self.reload.lock().unwrap_or_else(|e| e.into_inner());
        let digest = ca_dir::digest(&self.dir).map_err(|e| e.to_string());
        let digest = match digest {
            Ok(d) => d,
            Err(e) => return Err(self.failed(&mut st, None, e)),
        };
        let current = self.current();
        if !force && (digest == current.ca.digest || st.failed_digest.as_ref() == Some(&digest)) {
            return Ok(false);
        }
        match Self::read(&self.dir, Some(&self.trust_domain), self.svid_ttl) {
            Ok(ca) => {
                st.failed_digest = None;
                st.last_error = None;
                self.metrics
                    .ca_reloads
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                if ca.digest == current.ca.digest && !force {
                    return Ok(false);
                }
                let changed = ca.digest != current.ca.digest;
                info!(
                    dir = %self.dir.display(),
                    step = ca.step.map_or("none", |s| s.as_str()),
                    signing_ca = %ca.signing.fingerprint(),
                    roots = ca.trust.roots().len(),
                    "CA directory loaded"
                );
                self.tx.send_replace(Arc::new(ActiveCa {
                    ca,
                    loaded_at: SystemTime::now(),
                }));
                self.update_metrics();
                Ok(changed)
            }
            Err(e) => Err(self.failed(&mut st, Some(digest), e.to_string())),
        }
    }

    fn failed(&self, st: &mut ReloadState, digest: Option<String>, e: String) -> String {
        warn!(dir = %self.dir.display(), error = %e, "the CA directory does not load; still serving the last good CA");
        self.metrics
            .ca_reloads
            .get_or_create(&ResultLabels { result: "error" })
            .inc();
        st.failed_digest = digest;
        st.last_error = Some(e.clone());
        e
    }

    /// Polls the directory every [`POLL`] until `shutdown` flips.
    pub async fn poll(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
            let this = self.clone();
            // File reads and a signature: off the async threads.
            let _ = tokio::task::spawn_blocking(move || this.reload(false)).await;
        }
    }

    /// Counts a discovery stream opened with a certificate whose authority key id is `key_id`
    /// until the guard drops.
    pub fn connected(self: &Arc<Self>, key_id: Option<Vec<u8>>) -> IssuerGuard {
        *self
            .issuers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key_id.clone())
            .or_default() += 1;
        self.update_metrics();
        IssuerGuard {
            source: self.clone(),
            key_id,
        }
    }

    /// Counts a discovery stream that asked for the trust bundle, holding none yet, until the
    /// guard drops; [`BundleGuard::acked`] moves it to the bundle its proxy acknowledges.
    pub fn bundle_follower(self: &Arc<Self>) -> BundleGuard {
        *self
            .bundles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(None)
            .or_default() += 1;
        BundleGuard {
            source: self.clone(),
            key: None,
        }
    }

    /// Connected proxies that asked for the trust bundle: (those that acknowledged the one
    /// served now, the others).
    pub fn bundle_holders(&self) -> (i64, i64) {
        let want = Some(roots_key(self.current().ca.trust.roots()));
        let bundles = self.bundles.lock().unwrap_or_else(|e| e.into_inner());
        let all: i64 = bundles.values().sum();
        let holding = bundles.get(&want).copied().unwrap_or(0);
        (holding, all - holding)
    }

    /// Connected proxies per role (`current`, `next`, `previous`, `unknown`).
    pub fn proxies_by_role(&self) -> [(&'static str, i64); 4] {
        let active = self.current();
        let mut out = [("current", 0), ("next", 0), ("previous", 0), ("unknown", 0)];
        let issuers = self.issuers.lock().unwrap_or_else(|e| e.into_inner());
        for (key_id, n) in issuers.iter() {
            let role = active.ca.role_of(key_id.as_deref());
            if let Some(slot) = out.iter_mut().find(|(r, _)| *r == role) {
                slot.1 += n;
            }
        }
        out
    }

    fn update_metrics(&self) {
        for (role, n) in self.proxies_by_role() {
            self.metrics
                .ca_rotation_proxies
                .get_or_create(&CaRoleLabels { ca: role })
                .set(n);
        }
        let active = self.current();
        self.metrics
            .ca_expiration
            .set(active.ca.signing.not_after().unix_timestamp());
        self.metrics.ca_rotation_step.set(match active.ca.step {
            None => 0,
            Some(ca_dir::Step::Prepared) => 1,
            Some(ca_dir::Step::Switched) => 2,
            Some(ca_dir::Step::Finished) => 3,
        });
    }

    /// What `GET /ca` on the admin port answers (no key material).
    pub fn status_json(&self) -> serde_json::Value {
        let active = self.current();
        let ca = &active.ca;
        let proxies = self.proxies_by_role();
        let count = |role: &str| proxies.iter().find(|(r, _)| *r == role).map_or(0, |p| p.1);
        let describe = |c: &weft_certs::CertificateAuthority, role: &str| {
            serde_json::json!({
                "role": role,
                "fingerprint": c.fingerprint(),
                "key_id": hex(c.key_id()),
                "not_after": c.not_after().unix_timestamp(),
                "proxies": count(role),
            })
        };
        let mut cas = vec![describe(&ca.signing, "current")];
        if let Some(other) = &ca.other {
            cas.push(describe(other, ca.role_of(Some(other.key_id()))));
        }
        let (holding, behind) = self.bundle_holders();
        let last_error = self
            .reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error
            .clone();
        serde_json::json!({
            "trust_domain": ca.trust_domain.as_str(),
            "step": ca.step.map_or("none", |s| s.as_str()),
            "digest": ca.digest,
            "loaded_at": unix(active.loaded_at),
            "last_error": last_error,
            "renew_within_seconds": ca.renew_within.map(|d| d.as_secs()),
            "roots": ca.trust.fingerprints(),
            "cas": cas,
            "proxies_unknown": count("unknown"),
            "bundle": {
                "proxies_holding": holding,
                "proxies_behind": behind,
            },
        })
    }
}

/// One open discovery stream in the per-issuer count.
#[derive(Debug)]
pub struct IssuerGuard {
    source: Arc<CaSource>,
    key_id: Option<Vec<u8>>,
}

impl IssuerGuard {
    /// The CA that counts the stream.
    pub fn source(&self) -> &Arc<CaSource> {
        &self.source
    }
}

impl Drop for IssuerGuard {
    fn drop(&mut self) {
        uncount(
            &mut self
                .source
                .issuers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            &self.key_id,
        );
        self.source.update_metrics();
    }
}

/// One open discovery stream in the count by acknowledged trust bundle.
#[derive(Debug)]
pub struct BundleGuard {
    source: Arc<CaSource>,
    key: Option<String>,
}

impl BundleGuard {
    /// The stream's proxy acknowledged (or, reconnecting, said it holds) a bundle of the roots
    /// whose [`roots_key`] is `key`.
    pub fn acked(&mut self, key: String) {
        if self.key.as_ref() == Some(&key) {
            return;
        }
        let mut bundles = self
            .source
            .bundles
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        uncount(&mut bundles, &self.key);
        *bundles.entry(Some(key.clone())).or_default() += 1;
        self.key = Some(key);
    }
}

impl Drop for BundleGuard {
    fn drop(&mut self) {
        uncount(
            &mut self
                .source
                .bundles
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            &self.key,
        );
    }
}

/// One stream less under `key`; a key counting none is removed.
fn uncount<K: Eq + std::hash::Hash>(counts: &mut HashMap<K, i64>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n <= 0 {
            counts.remove(key);
        }
    }
}

/// A set of roots, named independently of their order (their SHA-256 fingerprints, sorted):
/// what a proxy acknowledged is compared with what is served by this.
pub fn roots_key<R: AsRef<[u8]>>(roots: &[R]) -> String {
    let mut each: Vec<String> = roots
        .iter()
        .map(|r| weft_certs::pem::fingerprint_sha256(r.as_ref()))
        .collect();
    each.sort_unstable();
    each.dedup();
    each.join(",")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use weft_certs::CertificateAuthority;

    use super::*;

    fn root(dir: &std::path::Path) {
        let td = TrustDomain::parse("td.example").unwrap();
        CertificateAuthority::generate_root(&td, Duration::from_secs(3600))
            .unwrap()
            .write_to(dir)
            .unwrap();
    }

    fn role(src: &CaSource, role: &str) -> i64 {
        src.proxies_by_role()
            .iter()
            .find(|(r, _)| *r == role)
            .unwrap()
            .1
    }

    fn bundle(src: &CaSource) -> (i64, i64) {
        let v = src.status_json();
        (
            v["bundle"]["proxies_holding"].as_i64().unwrap(),
            v["bundle"]["proxies_behind"].as_i64().unwrap(),
        )
    }

    #[test]
    fn proxies_are_counted_by_the_bundle_they_acknowledged() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, new) = (tmp.path().join("ca"), tmp.path().join("new"));
        root(&dir);
        root(&new);
        let src =
            CaSource::load(dir.clone(), None, Duration::from_secs(60), Arc::default()).unwrap();
        let one_root = roots_key(src.current().ca.trust.roots());
        let (mut a, mut b) = (src.bundle_follower(), src.bundle_follower());
        assert_eq!(bundle(&src), (0, 2), "asked, nothing acknowledged yet");
        a.acked(one_root.clone());
        b.acked(one_root.clone());
        b.acked(one_root.clone());
        assert_eq!(bundle(&src), (2, 0));

        // Prepared: the served bundle has both roots; the proxies hold the old one.
        ca_dir::prepare(&dir, &new, None).unwrap();
        assert_eq!(src.reload(false), Ok(true));
        let both = src.current().resource().roots;
        assert_eq!(bundle(&src), (0, 2));
        a.acked(roots_key(&both));
        assert_eq!(bundle(&src), (1, 1));
        // The roots in another order are the same bundle.
        let reversed: Vec<_> = both.iter().rev().cloned().collect();
        b.acked(roots_key(&reversed));
        assert_eq!(bundle(&src), (2, 0));
        // A stream that ends leaves the count.
        drop(a);
        assert_eq!(bundle(&src), (1, 0));
        let c = src.bundle_follower();
        assert_eq!(bundle(&src), (1, 1));
        drop((b, c));
        assert_eq!(bundle(&src), (0, 0));
        assert!(src.bundles.lock().unwrap().is_empty());
        assert_ne!(one_root, roots_key(&both));
    }

    #[test]
    fn proxies_follow_the_roles_and_a_broken_directory_keeps_the_last_good_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, new) = (tmp.path().join("ca"), tmp.path().join("new"));
        root(&dir);
        root(&new);
        let metrics = Arc::new(Metrics::default());
        let src =
            CaSource::load(dir.clone(), None, Duration::from_secs(60), metrics.clone()).unwrap();
        let old_key = src.current().ca.signing.key_id().to_vec();
        let proxy = src.connected(Some(old_key.clone()));
        let stranger = src.connected(None);
        assert_eq!((role(&src, "current"), role(&src, "unknown")), (1, 1));
        assert_eq!(src.reload(false), Ok(false), "nothing changed");

        ca_dir::prepare(&dir, &new, None).unwrap();
        assert_eq!(src.reload(false), Ok(true));
        assert_eq!(src.current().ca.step, Some(ca_dir::Step::Prepared));
        assert_eq!(src.current().resource().roots.len(), 2);
        assert!(src.current().resource().signing_key_id.is_empty());
        assert_eq!(role(&src, "current"), 1);

        ca_dir::switch(&dir, Duration::from_secs(9)).unwrap();
        assert_eq!(src.reload(false), Ok(true));
        let bundle = src.current().resource();
        assert_eq!(bundle.signing_key_id, src.current().ca.signing.key_id());
        assert_eq!(bundle.renew_within.map(|d| d.seconds), Some(9));
        assert_eq!((role(&src, "current"), role(&src, "previous")), (0, 1));
        let text = metrics.encode();
        assert!(
            text.contains("ca_rotation_proxies{ca=\"previous\"} 1"),
            "{text}"
        );
        assert!(text.contains("ca_rotation_step 2"), "{text}");

        // A certificate its key does not match: refused, the switched CA keeps serving, and the
        // poll does not try the same files again (SIGHUP does).
        std::fs::write(
            dir.join(ca_dir::NEW_CERT_FILE),
            std::fs::read(dir.join("tls.crt")).unwrap(),
        )
        .unwrap();
        let e = src.reload(false).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        assert_eq!(src.current().ca.step, Some(ca_dir::Step::Switched));
        assert_eq!(src.reload(false), Ok(false));
        assert!(src.reload(true).is_err());
        assert!(
            src.status_json()["last_error"]
                .as_str()
                .unwrap()
                .contains("does not match")
        );
        assert!(
            metrics
                .encode()
                .contains("ca_reloads_total{result=\"error\"} 2")
        );

        drop((proxy, stranger));
        assert_eq!(src.proxies_by_role().iter().map(|p| p.1).sum::<i64>(), 0);
    }
}
