//! The CA's output and the verifiers' refusals, through real rustls handshakes in memory.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_certs::ca::CaFiles;
use weft_certs::tls::{FixedCert, client_config, server_config};
use weft_certs::verify::peer_spiffe_id;
use weft_certs::{
    CertificateAuthority, ExpectedPeer, SignError, SpiffeId, TrustBundle, TrustDomain, WorkloadKey,
};
use x509_parser::prelude::*;

fn td(name: &str) -> TrustDomain {
    TrustDomain::parse(name).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A generated root, loaded as a CA, plus an rcgen issuer over the same key for forging
/// deliberately bad certificates.
struct Root {
    files: CaFiles,
    ca: CertificateAuthority,
}

impl Root {
    fn new(name: &str) -> Self {
        let files =
            CertificateAuthority::generate_root(&td(name), Duration::from_secs(3600)).unwrap();
        let ca = CertificateAuthority::from_pem(
            files.cert_pem.as_bytes(),
            files.key_pem.as_bytes(),
            None,
            None,
            "test",
        )
        .unwrap();
        Self { files, ca }
    }

    fn bundle(&self) -> Arc<TrustBundle> {
        Arc::new(self.ca.bundle().clone())
    }

    fn svid(&self, who: &str) -> (WorkloadKey, Vec<CertificateDer<'static>>) {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr(&id(who)).unwrap();
        let svid = self.ca.sign_csr(&csr, &id(who), None).unwrap();
        (key, svid.chain)
    }

    fn certified(&self, who: &str) -> Arc<rustls::sign::CertifiedKey> {
        let (key, chain) = self.svid(who);
        key.certified(chain).unwrap()
    }

    /// Signs arbitrary leaf params with the root key, bypassing the CA's rules.
    fn forge(&self, params: CertificateParams) -> Arc<rustls::sign::CertifiedKey> {
        let ca_key = KeyPair::from_pem(&self.files.key_pem).unwrap();
        let ca_der = CertificateDer::from_pem_slice(self.files.cert_pem.as_bytes()).unwrap();
        let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let cert = params.signed_by(key.key_pair(), &issuer).unwrap();
        key.certified(vec![cert.der().clone()]).unwrap()
    }
}

fn leaf_params(uris: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p
}

/// Runs an mTLS handshake plus one echo in memory. Returns what each side saw of the other, or
/// the first side's error.
async fn handshake(
    server_bundle: Arc<TrustBundle>,
    server_cert: Arc<rustls::sign::CertifiedKey>,
    client_bundle: Arc<TrustBundle>,
    client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
    expected: ExpectedPeer,
) -> Result<(SpiffeId, SpiffeId), String> {
    let server_cfg = server_config(server_bundle, Arc::new(FixedCert(server_cert)), true).unwrap();
    let client_cfg = client_config(client_bundle, expected, client_cert).unwrap();
    let (c, s) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let server = tokio::spawn(async move {
        let mut tls = acceptor
            .accept(s)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let peer =
            peer_spiffe_id(tls.get_ref().1.peer_certificates()).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        tls.write_all(&buf)
            .await
            .map_err(|e| format!("server write: {e}"))?;
        tls.shutdown().await.ok();
        Ok::<_, String>(peer)
    });
    let client = async move {
        let name = rustls_pki_types::ServerName::try_from("ignored.invalid").unwrap();
        let mut tls = connector
            .connect(name, c)
            .await
            .map_err(|e| format!("client: {e}"))?;
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let group = tls
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name());
        assert_eq!(
            group,
            Some(rustls::NamedGroup::X25519MLKEM768),
            "hybrid post-quantum key exchange"
        );
        let peer =
            peer_spiffe_id(tls.get_ref().1.peer_certificates()).map_err(|e| e.to_string())?;
        tls.write_all(b"ping")
            .await
            .map_err(|e| format!("client write: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        assert_eq!(&buf, b"ping");
        Ok::<_, String>(peer)
    };
    let client_res = client.await;
    let server_res = server.await.unwrap();
    match (client_res, server_res) {
        (Ok(c), Ok(s)) => Ok((c, s)),
        // With TLS 1.3 a refused client certificate shows up at the client only as an alert;
        // the reason is on the server side. Report both.
        (c, s) => Err(format!("{:?} | {:?}", c.err(), s.err())),
    }
}

const WEB: &str = "spiffe://mesh.test/ns/default/sa/web";
const API: &str = "spiffe://mesh.test/ns/default/sa/api";

#[tokio::test]
async fn mutual_tls_each_side_sees_the_other() {
    let root = Root::new("mesh.test");
    let (client_saw, server_saw) = handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        Some(root.certified(WEB)),
        ExpectedPeer::One(id(API)),
    )
    .await
    .unwrap();
    assert_eq!(client_saw, id(API));
    assert_eq!(server_saw, id(WEB));
}

#[tokio::test]
async fn client_may_require_one_of_a_set() {
    let root = Root::new("mesh.test");
    let set = ExpectedPeer::AnyOf(vec![id(WEB), id(API)]);
    handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        Some(root.certified(WEB)),
        set,
    )
    .await
    .unwrap();
    let other = ExpectedPeer::AnyOf(vec![id(WEB)]);
    let err = handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        Some(root.certified(WEB)),
        other,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("UnexpectedPeer")
            && err.contains(r#"expected: \"one of [spiffe://mesh.test/ns/default/sa/web]\""#),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_server_that_is_not_the_expected_identity() {
    let root = Root::new("mesh.test");
    let err = handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        Some(root.certified(WEB)),
        ExpectedPeer::One(id(WEB)),
    )
    .await
    .unwrap_err();
    assert!(err.contains("UnexpectedPeer { found: SpiffeId(spiffe://mesh.test/ns/default/sa/api), expected: \\\"spiffe://mesh.test/ns/default/sa/web\\\""), "{err}");
}

#[tokio::test]
async fn refuses_client_without_certificate() {
    let root = Root::new("mesh.test");
    let err = handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        None,
        ExpectedPeer::AnyInTrustDomain,
    )
    .await
    .unwrap_err();
    assert!(err.contains("server: peer sent no certificates"), "{err}");
}

#[tokio::test]
async fn refuses_chain_to_a_foreign_ca() {
    let root = Root::new("mesh.test");
    let foreign = Root::new("mesh.test"); // same trust domain name, different key: still foreign
    let err = handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        Some(foreign.certified(WEB)),
        ExpectedPeer::AnyInTrustDomain,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("not issued by a root in the trust bundle"),
        "{err}"
    );
    assert!(
        err.starts_with("Some(\"client read: received fatal alert"),
        "server refused: {err}"
    );
    let err = handshake(
        root.bundle(),
        foreign.certified(API),
        root.bundle(),
        Some(root.certified(WEB)),
        ExpectedPeer::AnyInTrustDomain,
    )
    .await
    .unwrap_err();
    assert!(
        err.starts_with("Some(\"client: invalid peer certificate")
            && err.contains("not issued by a root in the trust bundle"),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_expired_and_not_yet_valid() {
    let root = Root::new("mesh.test");
    let now = ::time::OffsetDateTime::now_utc();
    let mut expired = leaf_params(&[WEB]);
    expired.not_before = now - ::time::Duration::hours(2);
    expired.not_after = now - ::time::Duration::hours(1);
    let err = handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        Some(root.forge(expired)),
        ExpectedPeer::AnyInTrustDomain,
    )
    .await
    .unwrap_err();
    assert!(err.contains("certificate expired"), "{err}");

    let mut future = leaf_params(&[WEB]);
    future.not_before = now + ::time::Duration::hours(1);
    future.not_after = now + ::time::Duration::hours(2);
    let err = handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        Some(root.forge(future)),
        ExpectedPeer::AnyInTrustDomain,
    )
    .await
    .unwrap_err();
    assert!(err.contains("not valid yet"), "{err}");
}

#[tokio::test]
async fn refuses_another_trust_domain() {
    // Signed by our root, but naming a foreign trust domain (what a compromised or misconfigured
    // CA might issue): the verifier still refuses it.
    let root = Root::new("mesh.test");
    let other = root.forge(leaf_params(&["spiffe://other.test/ns/default/sa/web"]));
    let err = handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        Some(other),
        ExpectedPeer::AnyInTrustDomain,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("ForeignTrustDomain")
            && err.contains("found: \\\"other.test\\\", expected: \\\"mesh.test\\\""),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_two_uri_sans_and_no_uri_san() {
    let root = Root::new("mesh.test");
    let two = root.forge(leaf_params(&[WEB, API]));
    let err = handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        Some(two),
        ExpectedPeer::AnyInTrustDomain,
    )
    .await
    .unwrap_err();
    assert!(err.contains("ManyUriSans(2)"), "{err}");
    let mut dns_only = leaf_params(&[]);
    dns_only.subject_alt_names = vec![SanType::DnsName("web.default.svc".try_into().unwrap())];
    let err = handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        Some(root.forge(dns_only)),
        ExpectedPeer::AnyInTrustDomain,
    )
    .await
    .unwrap_err();
    assert!(err.contains("NoUriSan"), "{err}");
}

#[tokio::test]
async fn refuses_a_ca_leaf() {
    let root = Root::new("mesh.test");
    let mut ca_leaf = leaf_params(&[WEB]);
    ca_leaf.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let err = handshake(
        root.bundle(),
        root.certified(API),
        root.bundle(),
        Some(root.forge(ca_leaf)),
        ExpectedPeer::AnyInTrustDomain,
    )
    .await
    .unwrap_err();
    assert!(err.contains("CaLeaf"), "{err}");
}

#[tokio::test]
async fn both_roots_verify_during_a_rotation() {
    let old = Root::new("mesh.test");
    let new = Root::new("mesh.test");
    let both = Arc::new(old.ca.bundle().merged_with(new.ca.bundle()).unwrap());
    assert_eq!(both.roots().len(), 2);
    handshake(
        both.clone(),
        new.certified(API),
        both.clone(),
        Some(old.certified(WEB)),
        ExpectedPeer::AnyInTrustDomain,
    )
    .await
    .unwrap();
    handshake(
        both.clone(),
        old.certified(API),
        both,
        Some(new.certified(WEB)),
        ExpectedPeer::AnyInTrustDomain,
    )
    .await
    .unwrap();
}

#[test]
fn svid_has_exactly_the_spec_fields() {
    let root = Root::new("mesh.test");
    let key = WorkloadKey::generate().unwrap();
    // The CSR asks for nothing; the SVID carries the attested identity anyway.
    let csr = CertificateParams::default()
        .serialize_request(key.key_pair())
        .unwrap();
    let before = SystemTime::now();
    let svid = root
        .ca
        .sign_csr(csr.der(), &id(WEB), Some(Duration::from_secs(3600)))
        .unwrap();
    assert_eq!(
        svid.chain.len(),
        1,
        "issued by a root: the chain is just the leaf"
    );
    let (_, cert) = X509Certificate::from_der(&svid.chain[0]).unwrap();

    let san = cert.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<_> = san
        .value
        .general_names
        .iter()
        .filter(|n| matches!(n, GeneralName::URI(_)))
        .collect();
    assert_eq!(uris.len(), 1);
    assert!(matches!(uris[0], GeneralName::URI(u) if *u == WEB));

    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && !bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);

    assert!(
        cert.raw_serial().len() >= 15,
        "serial {:?} is not 128 random bits",
        cert.raw_serial()
    );
    let other = root.ca.sign_csr(csr.der(), &id(WEB), None).unwrap();
    let (_, other) = X509Certificate::from_der(&other.chain[0]).unwrap();
    assert_ne!(cert.raw_serial(), other.raw_serial());

    let life = svid.not_after.duration_since(before).unwrap();
    assert!(
        life <= Duration::from_secs(3601) && life >= Duration::from_secs(3590),
        "{life:?}"
    );

    // The certificate itself says the same as the IssuedSvid.
    let in_cert = cert.validity().not_after.timestamp();
    let reported = svid
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(in_cert, reported);
}

#[test]
fn validity_is_capped_by_max_ttl_and_issuer_lifetime() {
    let root = Root::new("mesh.test"); // the root lives one hour
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr(&id(WEB)).unwrap();
    let now = SystemTime::now();

    let ca = CertificateAuthority::from_pem(
        root.files.cert_pem.as_bytes(),
        root.files.key_pem.as_bytes(),
        None,
        None,
        "t",
    )
    .unwrap()
    .with_max_ttl(Duration::from_secs(600));
    let capped = ca
        .sign_csr(&csr, &id(WEB), Some(Duration::from_secs(3000)))
        .unwrap();
    let life = capped.not_after.duration_since(now).unwrap();
    assert!(
        life <= Duration::from_secs(601) && life >= Duration::from_secs(590),
        "max ttl: {life:?}"
    );

    // Default max is 24 h, but the root expires in an hour: the SVID must not outlive it.
    let svid = root
        .ca
        .sign_csr(&csr, &id(WEB), Some(Duration::from_secs(48 * 3600)))
        .unwrap();
    let life = svid.not_after.duration_since(now).unwrap();
    assert!(
        life <= Duration::from_secs(3601),
        "issuer lifetime: {life:?}"
    );
}

#[test]
fn refuses_a_csr_for_another_identity_or_trust_domain() {
    let root = Root::new("mesh.test");
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr(&id(API)).unwrap();
    let err = root.ca.sign_csr(&csr, &id(WEB), None).unwrap_err();
    assert!(matches!(err, SignError::IdentityMismatch { .. }), "{err}");
    let foreign = id("spiffe://other.test/ns/default/sa/web");
    let csr = key.csr(&foreign).unwrap();
    assert!(matches!(
        root.ca.sign_csr(&csr, &foreign, None),
        Err(SignError::ForeignTrustDomain { .. })
    ));
}

/// An intermediate made outside Weft (cert-manager layout: tls.crt = intermediate, ca.crt =
/// root) issues SVIDs that chain to the root, with the intermediate in the chain.
#[tokio::test]
async fn external_intermediate_in_cert_manager_layout() {
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "corp root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_cert = root_params.self_signed(&root_key).unwrap();

    let int_key = KeyPair::generate().unwrap();
    let mut int_params = CertificateParams::default();
    int_params
        .distinguished_name
        .push(DnType::CommonName, "mesh intermediate");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    int_params.subject_alt_names = vec![SanType::URI("spiffe://corp.test".try_into().unwrap())];
    let int_cert = int_params
        .signed_by(&int_key, &Issuer::new(root_params, &root_key))
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("tls.crt"), int_cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), int_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.crt"), root_cert.pem()).unwrap();
    let ca = CertificateAuthority::load_dir(&dir, None).unwrap();
    assert_eq!(ca.trust_domain().as_str(), "corp.test");

    let web = "spiffe://corp.test/ns/default/sa/web";
    let api = "spiffe://corp.test/ns/default/sa/api";
    let issue = |who: &str| {
        let key = WorkloadKey::generate().unwrap();
        let svid = ca
            .sign_csr(&key.csr(&id(who)).unwrap(), &id(who), None)
            .unwrap();
        assert_eq!(svid.chain.len(), 2, "leaf + intermediate");
        assert_eq!(svid.chain[1], *int_cert.der());
        key.certified(svid.chain).unwrap()
    };
    let bundle = Arc::new(ca.bundle().clone());
    assert_eq!(bundle.roots(), &[root_cert.der().clone()]);
    let (c, s) = handshake(
        bundle.clone(),
        issue(api),
        bundle,
        Some(issue(web)),
        ExpectedPeer::One(id(api)),
    )
    .await
    .unwrap();
    assert_eq!((c.as_str(), s.as_str()), (api, web));

    // The same intermediate without its root cannot be loaded: nothing to chain to.
    std::fs::remove_file(dir.join("ca.crt")).unwrap();
    let err = CertificateAuthority::load_dir(&dir, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("an intermediate CA needs its roots in ca.crt"),
        "{err}"
    );
}

#[test]
fn refuses_inconsistent_ca_material() {
    let a = Root::new("mesh.test");
    let b = Root::new("mesh.test");
    let err = CertificateAuthority::from_pem(
        a.files.cert_pem.as_bytes(),
        b.files.key_pem.as_bytes(),
        None,
        None,
        "dir",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("does not match the certificate"),
        "{err}"
    );

    let err = CertificateAuthority::from_pem(
        a.files.cert_pem.as_bytes(),
        a.files.key_pem.as_bytes(),
        None,
        Some(&td("other.test")),
        "dir",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("is for trust domain mesh.test, but trust domain other.test"),
        "{err}"
    );

    // ca.crt that does not hold the issuer's root: refused at load, not at first handshake.
    let err = CertificateAuthority::from_pem(
        a.files.cert_pem.as_bytes(),
        a.files.key_pem.as_bytes(),
        Some(b.files.bundle_pem.as_bytes()),
        None,
        "dir",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("do not verify against the trust bundle"),
        "{err}"
    );

    // A leaf is not a CA.
    let (key, chain) = a.svid(WEB);
    let leaf_pem = weft_certs::pem::certs_to_pem(&chain);
    let err = CertificateAuthority::from_pem(
        leaf_pem.as_bytes(),
        key.to_pkcs8_pem().as_bytes(),
        Some(a.files.bundle_pem.as_bytes()),
        None,
        "dir",
    )
    .unwrap_err();
    assert!(err.to_string().contains("is not a CA"), "{err}");
}

#[test]
fn debug_output_never_contains_keys() {
    let root = Root::new("mesh.test");
    let dbg = format!(
        "{:?} {:?} {:?}",
        root.files,
        root.ca,
        WorkloadKey::generate().unwrap()
    );
    assert!(
        !dbg.contains("PRIVATE KEY") && !dbg.contains(root.files.key_pem.lines().nth(1).unwrap()),
        "{dbg}"
    );
}

mod invariants {
    use super::*;
    use proptest::prelude::*;

    fn segment() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9-]{0,15}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the CSR asks for and whatever TTL is requested, an issued SVID carries exactly
        /// the attested identity and never outlives min(requested, max TTL).
        #[test]
        fn issued_svid_is_the_attested_identity(
            ns in segment(), sa in segment(), ask_same in any::<bool>(),
            ttl_secs in prop::option::of(0u64..200_000), max_secs in 60u64..90_000,
        ) {
            let root = Root::new("mesh.test");
            let ca = CertificateAuthority::from_pem(root.files.cert_pem.as_bytes(), root.files.key_pem.as_bytes(), None, None, "t")
                .unwrap()
                .with_max_ttl(Duration::from_secs(max_secs));
            let granted = td("mesh.test").workload(&ns, &sa).unwrap();
            let key = WorkloadKey::generate().unwrap();
            let asked = if ask_same { granted.clone() } else { td("mesh.test").workload(&ns, &format!("{sa}-x")).unwrap() };
            let before = SystemTime::now();
            let result = ca.sign_csr(&key.csr(&asked).unwrap(), &granted, ttl_secs.map(Duration::from_secs));
            if !ask_same {
                let refused = matches!(result, Err(SignError::IdentityMismatch { .. }));
                prop_assert!(refused, "{:?}", result);
                return Ok(());
            }
            let svid = result.unwrap();
            prop_assert_eq!(weft_certs::verify::spiffe_id_of(&svid.chain[0]).unwrap(), granted);
            let cap = ttl_secs.filter(|t| *t > 0).unwrap_or(max_secs).min(max_secs).min(3600);
            let life = svid.not_after.duration_since(before).unwrap().as_secs();
            prop_assert!(life <= cap + 1, "life {} > cap {}", life, cap);
        }
    }
}

/// An intermediate that outlives its root: SVIDs are capped by the root, not the intermediate.
#[test]
fn svids_never_outlive_the_root_of_an_intermediate() {
    let now = ::time::OffsetDateTime::now_utc();
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::default();
    root.distinguished_name
        .push(DnType::CommonName, "short-lived root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    root.not_before = now - ::time::Duration::minutes(5);
    root.not_after = now + ::time::Duration::hours(2);
    let root_cert = root.self_signed(&root_key).unwrap();
    let int_key = KeyPair::generate().unwrap();
    let mut int = CertificateParams::default();
    int.distinguished_name
        .push(DnType::CommonName, "long-lived intermediate");
    int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    int.subject_alt_names = vec![SanType::URI("spiffe://mesh.test".try_into().unwrap())];
    int.not_before = now - ::time::Duration::minutes(5);
    int.not_after = now + ::time::Duration::days(365);
    let int_cert = int
        .signed_by(&int_key, &Issuer::new(root, &root_key))
        .unwrap();
    let ca = CertificateAuthority::from_pem(
        int_cert.pem().as_bytes(),
        int_key.serialize_pem().as_bytes(),
        Some(root_cert.pem().as_bytes()),
        None,
        "t",
    )
    .unwrap();
    let key = WorkloadKey::generate().unwrap();
    let svid = ca
        .sign_csr(&key.csr(&id(WEB)).unwrap(), &id(WEB), None)
        .unwrap();
    let left = svid.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(
        left <= Duration::from_secs(2 * 3600),
        "24 h default capped to the root's 2 h: {left:?}"
    );
}
