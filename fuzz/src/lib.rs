//! What the fuzz targets share: fixed fixtures (a CA, the join-token key, a Kubernetes-style
//! ES256 service-account key and its JWKS; made once into `fuzz/fixtures/` and reused, so a
//! seed's signature stays valid across runs), and seed inputs made from our own types — the
//! manifests in `docs/`, `tests/golden/` and `deploy/` through the real parser, the store codec
//! and the control plane's index into published discovery resources; a real CSR; real tokens.
//!
//! Each target's `init` calls [`seeds_then_exit`]: with `WEFT_FUZZ_SEEDS=DIR` set it writes its
//! seeds into DIR and exits (`bench/fuzz.sh` does this before fuzzing); without it, nothing.
//! The parsers are always the real ones, called through their public API; nothing here parses.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use weft_certs::{CertificateAuthority, SpiffeId, TrustDomain, WorkloadKey};
use weft_control_plane::attest::{Attestor, JwksSource, K8sConfig, K8sVerifier, TokenKey};
use weft_control_plane::manifest;
use weft_control_plane::registry::codec;
use weft_control_plane::registry::index::{Change, Index, ResourceType, Snapshot};
use weft_control_plane::store::KeyValue;
use weft_proto::config::v1 as cfg;
use weft_proto::discovery::v1::{DeltaDiscoveryResponse, Resource};
use weft_proto::mesh::v1 as pb;

/// The trust domain of every fixture.
pub const TD: &str = "mesh.test";
/// The Kubernetes issuer and audience the fixtures' verifier requires.
pub const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const K8S_AUDIENCE: &str = "weft";
/// The key id of the Kubernetes-style signing key in `jwks.json`.
pub const K8S_KID: &str = "fuzz-sa-key";

pub fn trust_domain() -> TrustDomain {
    TrustDomain::parse(TD).expect("fixed trust domain")
}

/// The repository root (the fuzz crate lives in `fuzz/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/ has a parent")
        .to_path_buf()
}

/// With `WEFT_FUZZ_SEEDS=DIR`: writes `seeds()` into DIR (one file each) and exits 0.
pub fn seeds_then_exit(seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("WEFT_FUZZ_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    let seeds = seeds();
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:04}")), s).expect("write a seed");
    }
    eprintln!("wrote {} seeds to {}", seeds.len(), dir.display());
    std::process::exit(0);
}

// ---- fixtures ------------------------------------------------------------------------------

/// The keys and verifiers every run uses. Test keys only: made here, used by nothing else.
pub struct Fixtures {
    pub ca: Arc<CertificateAuthority>,
    /// The same CA as the control plane serves it (what `IdentityService` signs with).
    pub ca_source: Arc<weft_control_plane::rotation::CaSource>,
    pub token_key: TokenKey,
    /// The join-token key as a jsonwebtoken signing key (to sign arbitrary claims).
    pub join_signer: jsonwebtoken::EncodingKey,
    /// The Kubernetes-style ES256 key and the JWKS (JSON) that holds its public half.
    pub k8s_signer: jsonwebtoken::EncodingKey,
    pub jwks: Vec<u8>,
    pub attestor: Arc<Attestor>,
}

fn fixtures_dir() -> PathBuf {
    std::env::var_os("WEFT_FUZZ_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"))
}

/// Loads the fixtures, making them first if `fuzz/fixtures/` has none.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = fixtures_dir();
        if !dir.join("done").exists() {
            make_fixtures(&dir);
        }
        let td = trust_domain();
        let ca = CertificateAuthority::load_dir(&dir.join("ca"), Some(&td)).expect("fixture CA");
        let ca_source = weft_control_plane::rotation::CaSource::load(
            dir.join("ca"),
            Some(&td),
            weft_certs::ca::DEFAULT_MAX_SVID_TTL,
            Arc::new(Default::default()),
        )
        .expect("fixture CA");
        let token_key = TokenKey::load(&dir.join("token.key")).expect("fixture token key");
        let join_signer = jsonwebtoken::EncodingKey::from_ed_pem(token_key.to_pem().as_bytes())
            .expect("token key as a signing key");
        let k8s_pem = std::fs::read(dir.join("k8s.key")).expect("fixture k8s key");
        let k8s_signer = jsonwebtoken::EncodingKey::from_ec_pem(&k8s_pem).expect("k8s key");
        let jwks = std::fs::read(dir.join("jwks.json")).expect("fixture jwks");
        let k8s = K8sVerifier::load(K8sConfig {
            jwks: JwksSource::File(dir.join("jwks.json")),
            issuer: K8S_ISSUER.into(),
            audience: K8S_AUDIENCE.into(),
        })
        .expect("fixture jwks loads");
        let attestor = Arc::new(Attestor::new(
            td,
            TokenKey::load(&dir.join("token.key")).expect("fixture token key"),
            Some(k8s),
        ));
        Fixtures {
            ca: Arc::new(ca),
            ca_source,
            token_key,
            join_signer,
            k8s_signer,
            jwks,
            attestor,
        }
    })
}

fn make_fixtures(dir: &Path) {
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("fixtures dir");
    let td = trust_domain();
    CertificateAuthority::generate_root(&td, Duration::from_secs(20 * 365 * 86_400))
        .expect("fixture CA")
        .write_to(&tmp.join("ca"))
        .expect("write fixture CA");
    let token = TokenKey::generate().expect("token key");
    std::fs::write(tmp.join("token.key"), token.to_pem()).expect("write token key");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("k8s key");
    let raw = key.public_key_raw(); // 0x04 || x || y
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": K8S_KID,
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    }]});
    std::fs::write(tmp.join("k8s.key"), key.serialize_pem()).expect("write k8s key");
    std::fs::write(tmp.join("jwks.json"), jwks.to_string()).expect("write jwks");
    std::fs::write(tmp.join("done"), b"").expect("mark fixtures");
    // Another process may have made them meanwhile: the first rename wins.
    if std::fs::rename(&tmp, dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

/// `b64(header).b64(claims).signature` over arbitrary header and claims bytes: a token whose
/// signature verifies, so the fuzzer reaches the claim checks behind it.
pub fn sign_token(
    header: &[u8],
    claims: &[u8],
    key: &jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    match jsonwebtoken::crypto::sign(message.as_bytes(), key, alg) {
        Ok(sig) => format!("{message}.{sig}"),
        Err(_) => message,
    }
}

/// Seconds since the epoch, far in the future (tokens in seeds stay valid).
pub const FAR_FUTURE: u64 = 4_102_444_800; // 2100-01-01

/// Header and claims of a valid join token and of a valid Kubernetes token.
pub fn token_parts() -> Vec<(bool, String, String)> {
    let f = fixtures();
    let join_header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": f.token_key.kid()});
    let join_claims = serde_json::json!({
        "iss": "weft", "sub": format!("spiffe://{TD}/ns/shop/sa/web"),
        "aud": format!("spiffe://{TD}/ns/weft-system/sa/weft-control-plane"),
        "exp": FAR_FUTURE, "iat": 1_700_000_000u64, "nbf": 1_700_000_000u64, "jti": "00112233",
    });
    let k8s_header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": K8S_KID});
    let k8s_claims = serde_json::json!({
        "aud": [K8S_AUDIENCE], "iss": K8S_ISSUER, "exp": FAR_FUTURE, "iat": 1_700_000_000u64,
        "nbf": 1_700_000_000u64, "sub": "system:serviceaccount:shop:web",
        "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "web", "uid": "u1"}},
    });
    vec![
        (false, join_header.to_string(), join_claims.to_string()),
        (true, k8s_header.to_string(), k8s_claims.to_string()),
    ]
}

/// Whole valid tokens: a minted join token and a signed Kubernetes token.
pub fn tokens() -> Vec<String> {
    let f = fixtures();
    let id = SpiffeId::parse(&format!("spiffe://{TD}/ns/shop/sa/web")).expect("fixed id");
    let mut out = vec![
        f.token_key
            .mint(&id, Duration::from_secs(70 * 365 * 86_400))
            .expect("mint"),
    ];
    for (k8s, h, c) in token_parts() {
        let (key, alg) = if k8s {
            (&f.k8s_signer, jsonwebtoken::Algorithm::ES256)
        } else {
            (&f.join_signer, jsonwebtoken::Algorithm::EdDSA)
        };
        out.push(sign_token(h.as_bytes(), c.as_bytes(), key, alg));
    }
    out
}

/// Real CSRs: named and unnamed, from a fresh P-256 key.
pub fn csrs() -> Vec<Vec<u8>> {
    let key = WorkloadKey::generate().expect("key");
    let id = SpiffeId::parse(&format!("spiffe://{TD}/ns/shop/sa/web")).expect("fixed id");
    let mut out = vec![key.csr(&id).expect("csr"), key.csr_for(None).expect("csr")];
    for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
        let k = rcgen::KeyPair::generate_for(alg).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("spiffe://{TD}/ns/a/sa/b").try_into().expect("uri"),
        )];
        out.push(params.serialize_request(&k).expect("csr").der().to_vec());
    }
    for f in ["rsa2048-sha256.csr.pem", "rsa1024.csr.pem"] {
        if let Ok(pem) = std::fs::read(repo().join("certs/testdata").join(f))
            && let Some(der) = pem_body(&pem)
        {
            out.push(der);
        }
    }
    out
}

fn pem_body(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

// ---- manifests and published resources -----------------------------------------------------

/// Every manifest text in the repository: `tests/golden/apply/*.yaml` (valid and invalid),
/// the ```yaml blocks of `docs/*.md`, and the heredocs of `deploy/quickstart.sh`.
pub fn manifest_texts() -> Vec<String> {
    let root = repo();
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(root.join("tests/golden/apply")) {
        let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            if f.extension().is_some_and(|e| e == "yaml")
                && let Ok(t) = std::fs::read_to_string(&f)
            {
                out.push(t);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(root.join("docs")) {
        let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let Ok(t) = std::fs::read_to_string(&f) else {
                continue;
            };
            out.extend(blocks(&t, "```yaml", "```"));
        }
    }
    if let Ok(t) = std::fs::read_to_string(root.join("deploy/quickstart.sh")) {
        out.extend(
            blocks(&t, "<<'EOF'", "EOF")
                .into_iter()
                .chain(blocks(&t, "<<EOF", "EOF")),
        );
    }
    out.retain(|t| t.contains("apiVersion"));
    out
}

/// The text between a line ending in `open` and the next line equal to `close`.
fn blocks(text: &str, open: &str, close: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match &mut cur {
            None if line.trim_end().ends_with(open) => cur = Some(String::new()),
            Some(b) if line.trim() == close => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Every document that parses, from [`manifest_texts`].
pub fn documents() -> Vec<cfg::Document> {
    manifest_texts()
        .iter()
        .filter_map(|t| manifest::parse_documents("seed.yaml", t).ok())
        .flatten()
        .collect()
}

/// What the store holds for the seed manifests (through the real codec) plus three
/// registered endpoints per service: the values the control plane reads back.
pub fn store_values() -> Vec<KeyValue> {
    use weft_control_plane::registry::keys::Key;
    let mut out = Vec::new();
    let mut rev = 1;
    let mut kv = |key: Key, value: Vec<u8>| {
        rev += 1;
        KeyValue {
            key: key.path(),
            value,
            mod_revision: rev,
            create_revision: rev,
            lease: None,
        }
    };
    for d in documents() {
        let Some(kind) = d.kind else { continue };
        use weft_proto::config::v1::document::Kind as K;
        match kind {
            K::Service(s) => {
                let Ok(svc) = weft_control_plane::model::Service::try_from(s) else {
                    continue;
                };
                let id = svc.id.clone();
                for (i, port) in svc.ports.iter().enumerate().take(1) {
                    for n in 1..=3u8 {
                        let addr: std::net::SocketAddr =
                            format!("10.0.{i}.{n}:{}", port.port).parse().expect("addr");
                        let ep = weft_control_plane::model::Endpoint::try_from(pb::Endpoint {
                            namespace: id.namespace.clone(),
                            service: id.name.clone(),
                            address: addr.to_string(),
                            identity: format!("spiffe://{TD}/ns/{}/sa/{}", id.namespace, id.name),
                            weight: 1,
                            ready: true,
                            labels: svc.selector.clone().into_iter().collect(),
                            ..Default::default()
                        });
                        if let Ok(ep) = ep {
                            out.push(kv(
                                Key::Endpoint(id.clone(), addr),
                                codec::encode_endpoint(&ep),
                            ));
                        }
                    }
                }
                out.push(kv(Key::Service(id), codec::encode_service(&svc)));
            }
            K::HttpRoute(r) => {
                if let Ok(r) = weft_control_plane::model::HttpRoute::try_from(r) {
                    out.push(kv(Key::Route(r.id.clone()), codec::encode_route(&r)));
                }
            }
            K::AuthorizationPolicy(p) => {
                if let Ok(p) = weft_control_plane::model::AuthorizationPolicy::try_from(p) {
                    out.push(kv(
                        Key::AuthorizationPolicy(p.id.clone()),
                        codec::encode_authorization_policy(&p),
                    ));
                }
            }
            K::RateLimitPolicy(p) => {
                if let Ok(p) = weft_control_plane::model::RateLimitPolicy::try_from(p) {
                    out.push(kv(
                        Key::RateLimitPolicy(p.id.clone()),
                        codec::encode_rate_limit_policy(&p),
                    ));
                }
            }
        }
    }
    out
}

/// The trust bundle resource of the fixture CA.
pub fn trust_bundle_pb() -> pb::TrustBundle {
    let f = fixtures();
    pb::TrustBundle {
        trust_domain: TD.into(),
        roots: f
            .ca
            .bundle()
            .roots()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect(),
        ..Default::default()
    }
}

/// The control plane's index fed every store value: the snapshot it would publish.
pub fn published() -> Snapshot {
    let metrics = weft_control_plane::metrics::Metrics::default();
    let mut index = Index::new(trust_bundle_pb());
    for kv in store_values() {
        if let Some(change) = codec::decode_put(&kv, &metrics) {
            index.apply(change);
        }
    }
    index.flush()
}

/// The published resources of one type, as discovery sends them.
pub fn resources(snapshot: &Snapshot, ty: ResourceType) -> Vec<Resource> {
    snapshot
        .resources(ty)
        .values()
        .map(|r| Resource {
            name: r.name.clone(),
            version: r.version.clone(),
            resource: Some(r.body.clone()),
        })
        .collect()
}

/// Encoded bodies of the published resources of one type.
pub fn bodies(ty: ResourceType) -> Vec<Vec<u8>> {
    published()
        .resources(ty)
        .values()
        .map(|r| r.body.value.clone())
        .collect()
}

/// Discovery responses: each type whole, and each resource alone.
pub fn discovery_responses() -> Vec<Vec<u8>> {
    let snap = published();
    let mut out = Vec::new();
    for ty in [
        ResourceType::TrustBundle,
        ResourceType::Service,
        ResourceType::Endpoints,
    ] {
        let all = resources(&snap, ty);
        let whole = DeltaDiscoveryResponse {
            type_url: ty.type_url().into(),
            system_version_info: snap.system_version.clone(),
            resources: all.clone(),
            nonce: "1".into(),
            removed_resources: vec!["shop/gone".into()],
        };
        out.push(whole.encode_to_vec());
        for r in all.into_iter().take(8) {
            out.push(
                DeltaDiscoveryResponse {
                    type_url: ty.type_url().into(),
                    resources: vec![r],
                    nonce: "2".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
            );
        }
    }
    out
}

/// The `Change` seeds for the index: every store value as a change.
pub fn changes() -> Vec<Change> {
    let metrics = weft_control_plane::metrics::Metrics::default();
    store_values()
        .iter()
        .filter_map(|kv| codec::decode_put(kv, &metrics))
        .collect()
}
