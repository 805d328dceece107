//! SPIFFE IDs, parsed and printed strictly per the SPIFFE ID specification
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>).
//!
//! A `SpiffeId` can only be built through [`SpiffeId::parse`] (or the typed constructors that
//! validate the same way), so every value of the type is well-formed.

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE ID the specification allows, in bytes of its URI form.
pub const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name, in bytes (the host part of a URI).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID (or not a trust domain).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID is {len} bytes; at most {MAX_ID_LEN} are allowed")]
    TooLong { len: usize },
    #[error("SPIFFE ID must start with the scheme \"spiffe://\"")]
    WrongScheme,
    #[error("SPIFFE ID has no trust domain")]
    MissingTrustDomain,
    #[error("trust domain is {len} bytes; at most {MAX_TRUST_DOMAIN_LEN} are allowed")]
    TrustDomainTooLong { len: usize },
    #[error(
        "trust domain contains {found:?} at byte {at}: only lowercase letters, digits, '.', '-' and '_' are allowed (no port, userinfo or uppercase)"
    )]
    BadTrustDomainChar { found: char, at: usize },
    #[error(
        "path segment {segment} contains {found:?}: only letters, digits, '.', '-' and '_' are allowed (no percent-encoding, query or fragment)"
    )]
    BadPathChar { segment: usize, found: char },
    #[error("path segment {segment} is empty (\"//\" or a trailing '/')")]
    EmptySegment { segment: usize },
    #[error("path segment {segment} is {dots:?}: relative segments are not allowed")]
    DotSegment { segment: usize, dots: &'static str },
    #[error(
        "expected a workload identity of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, got {0}"
    )]
    NotWorkload(String),
}

/// A SPIFFE trust domain name, e.g. `cluster.local`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (no scheme), e.g. `prod.example.org`.
    pub fn parse(name: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<name>` (no path), as a CA's URI SAN carries it.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME}{}", self.0),
            td_len: self.0.len(),
        }
    }

    /// The mesh workload identity `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn workload(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::parse(&format!(
            "{SCHEME}{}/ns/{namespace}/sa/{service_account}",
            self.0
        ))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A validated SPIFFE ID: `spiffe://<trust-domain>[/<segment>]*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Length of the trust domain, which starts right after the scheme.
    td_len: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID. The input must already be in canonical form: the
    /// specification forbids percent-encoding, so there is nothing to normalise.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: input.len() });
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        if !path.is_empty() {
            // `path` starts with '/', so the first split element is the empty prefix.
            for (i, segment) in path.split('/').skip(1).enumerate() {
                let n = i + 1;
                match segment {
                    "" => return Err(SpiffeIdError::EmptySegment { segment: n }),
                    "." => {
                        return Err(SpiffeIdError::DotSegment {
                            segment: n,
                            dots: ".",
                        });
                    }
                    ".." => {
                        return Err(SpiffeIdError::DotSegment {
                            segment: n,
                            dots: "..",
                        });
                    }
                    _ => {}
                }
                if let Some(found) = segment.chars().find(|c| !is_path_char(*c)) {
                    return Err(SpiffeIdError::BadPathChar { segment: n, found });
                }
            }
        }
        Ok(Self {
            uri: input.to_owned(),
            td_len: td.len(),
        })
    }

    /// The trust domain name.
    pub fn trust_domain_name(&self) -> &str {
        &self.uri[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The path, including its leading '/', or "" for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.uri[SCHEME.len() + self.td_len..]
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// For a mesh workload identity `spiffe://td/ns/N/sa/S`, returns `(N, S)`.
    pub fn workload(&self) -> Result<(&str, &str), SpiffeIdError> {
        let mut segments = self.path().split('/').skip(1);
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Ok((ns, sa)),
            _ => Err(SpiffeIdError::NotWorkload(self.uri.clone())),
        }
    }

    /// True when this ID belongs to `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.as_str()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: td.len() });
    }
    match td.char_indices().find(|(_, c)| !is_trust_domain_char(*c)) {
        Some((at, found)) => Err(SpiffeIdError::BadTrustDomainChar { found, at }),
        None => Ok(()),
    }
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_workload_identity() {
        let id = SpiffeId::parse("spiffe://prod.example-1_x/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain_name(), "prod.example-1_x");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert_eq!(id.workload().unwrap(), ("default", "web"));
        assert_eq!(
            id.to_string(),
            "spiffe://prod.example-1_x/ns/default/sa/web"
        );
    }

    #[test]
    fn trust_domain_id_has_no_path() {
        let id = SpiffeId::parse("spiffe://td").unwrap();
        assert_eq!(id.path(), "");
        assert_eq!(id, TrustDomain::parse("td").unwrap().id());
        assert!(id.workload().is_err());
    }

    #[test]
    fn refuses_invalid_ids() {
        use SpiffeIdError::*;
        let long_path = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        let long_td = format!("spiffe://{}", "a".repeat(256));
        let table: &[(&str, SpiffeIdError)] = &[
            ("", Empty),
            ("http://td/ns/a", WrongScheme),
            ("SPIFFE://td/a", WrongScheme),
            ("spiffe:/td/a", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///ns/a", MissingTrustDomain),
            ("spiffe://Td/a", BadTrustDomainChar { found: 'T', at: 0 }),
            (
                "spiffe://td:8080/a",
                BadTrustDomainChar { found: ':', at: 2 },
            ),
            (
                "spiffe://user@td/a",
                BadTrustDomainChar { found: '@', at: 4 },
            ),
            ("spiffe://td?x=1", BadTrustDomainChar { found: '?', at: 2 }),
            ("spiffe://td/", EmptySegment { segment: 1 }),
            ("spiffe://td/ns//sa", EmptySegment { segment: 2 }),
            ("spiffe://td/ns/a/", EmptySegment { segment: 3 }),
            (
                "spiffe://td/./a",
                DotSegment {
                    segment: 1,
                    dots: ".",
                },
            ),
            (
                "spiffe://td/a/..",
                DotSegment {
                    segment: 2,
                    dots: "..",
                },
            ),
            (
                "spiffe://td/a%20b",
                BadPathChar {
                    segment: 1,
                    found: '%',
                },
            ),
            (
                "spiffe://td/a?q=1",
                BadPathChar {
                    segment: 1,
                    found: '?',
                },
            ),
            (
                "spiffe://td/a#frag",
                BadPathChar {
                    segment: 1,
                    found: '#',
                },
            ),
            (
                "spiffe://td/caf\u{e9}",
                BadPathChar {
                    segment: 1,
                    found: '\u{e9}',
                },
            ),
            (
                &long_path,
                TooLong {
                    len: long_path.len(),
                },
            ),
            (&long_td, TrustDomainTooLong { len: 256 }),
        ];
        for (input, want) in table {
            assert_eq!(
                SpiffeId::parse(input).as_ref(),
                Err(want),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let err = SpiffeId::parse("spiffe://td/a%2Fb")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("percent-encoding") && err.contains("'%'"),
            "{err}"
        );
    }

    #[test]
    fn workload_shape_is_strict() {
        for id in [
            "spiffe://td/ns/a",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/x/a/sa/b",
        ] {
            assert!(SpiffeId::parse(id).unwrap().workload().is_err(), "{id}");
        }
    }

    fn td_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{1,40}"
    }

    fn segment_strategy() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,20}".prop_filter("no dot segments", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn round_trips(td in td_strategy(), segments in prop::collection::vec(segment_strategy(), 0..8)) {
            let mut uri = format!("spiffe://{td}");
            for s in &segments {
                uri.push('/');
                uri.push_str(s);
            }
            let id = SpiffeId::parse(&uri).unwrap();
            prop_assert_eq!(id.to_string(), uri.clone());
            prop_assert_eq!(id.trust_domain_name(), td.as_str());
            prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
        }

        #[test]
        fn workload_round_trips(td in td_strategy(), ns in segment_strategy(), sa in segment_strategy()) {
            let td = TrustDomain::parse(&td).unwrap();
            let id = td.workload(&ns, &sa).unwrap();
            prop_assert_eq!(id.workload().unwrap(), (ns.as_str(), sa.as_str()));
        }

        #[test]
        fn never_panics_and_accepts_only_canonical(input in "\\PC{0,64}") {
            if let Ok(id) = SpiffeId::parse(&input) {
                prop_assert_eq!(id.as_str(), input.as_str());
                prop_assert!(input.starts_with("spiffe://"));
                prop_assert!(!input.ends_with('/'));
            }
        }

        #[test]
        fn one_bad_char_in_a_segment_is_refused(
            td in td_strategy(), seg in segment_strategy(),
            bad in prop::sample::select(vec!['%', '?', '#', ':', '@', ' ', '+', '~', '!', '*']),
            at in 0usize..20,
        ) {
            let at = at.min(seg.len());
            let mut bad_seg = seg.clone();
            bad_seg.insert(at, bad);
            let result = SpiffeId::parse(&format!("spiffe://{td}/{bad_seg}"));
            prop_assert!(matches!(result, Err(SpiffeIdError::BadPathChar { segment: 1, found }) if found == bad), "{result:?}");
        }
    }
}
