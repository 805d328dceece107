//! What the injector is configured with ([`InjectConfig`], the same for the webhook and
//! `weftctl inject`), and the per-pod overrides read from `config.weft.io/…` annotations,
//! each validated: a bad value is named in the report and ignored, never half-applied.

use serde_json::{Map, Value};

use crate::names;

/// The proxy version the injector stamps on pods (this build's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The injector's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// The proxy's image (runs `weft-proxy run`).
    pub proxy_image: String,
    /// The init container's image (runs `weft-proxy init`; has iptables).
    pub init_image: String,
    /// The control plane's gRPC address as pods dial it.
    pub control_plane_addr: String,
    /// The control plane's own namespace: never injected.
    pub control_plane_namespace: String,
    /// SHA-256 fingerprint of the trust root, recorded on injected pods.
    pub trust_root_sha256: Option<String>,
}

/// The default image of a component (`weft-proxy`, `weft-proxy-init`, `weft-control-plane`)
/// for this version: a placeholder registry an install overrides with its own.
pub fn default_image(component: &str) -> String {
    format!("{}/{component}:{VERSION}", names::DEFAULT_REGISTRY)
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            proxy_image: default_image("weft-proxy"),
            init_image: default_image("weft-proxy-init"),
            control_plane_addr: names::control_plane_addr(),
            control_plane_namespace: names::NAMESPACE.to_owned(),
            trust_root_sha256: None,
        }
    }
}

/// The overrides a pod template's annotations ask for, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Overrides {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
    pub skip_inbound_ports: Option<String>,
    pub skip_outbound_ports: Option<String>,
    pub skip_subnets: Option<String>,
    pub log_level: Option<String>,
    pub proxy_image: Option<String>,
    pub init_image: Option<String>,
    pub native_sidecar: bool,
    pub default_inbound_policy: Option<String>,
}

/// Every override annotation (without the prefix), for the docs and for the unknown-key check.
pub const OVERRIDES: &[&str] = &[
    "proxy-cpu-request",
    "proxy-cpu-limit",
    "proxy-memory-request",
    "proxy-memory-limit",
    "skip-inbound-ports",
    "skip-outbound-ports",
    "skip-subnets",
    "log-level",
    "proxy-image",
    "init-image",
    "native-sidecar",
    "default-inbound-policy",
];

impl Overrides {
    /// Reads the `config.weft.io/…` annotations; each problem is one warning naming the
    /// annotation, and that annotation is ignored.
    pub(crate) fn read(
        annotations: Option<&Map<String, Value>>,
        warnings: &mut Vec<String>,
    ) -> Self {
        let mut o = Overrides {
            native_sidecar: true,
            ..Default::default()
        };
        let Some(annotations) = annotations else {
            return o;
        };
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix(names::CONFIG_ANNOTATION_PREFIX) else {
                continue;
            };
            let Some(v) = value.as_str() else {
                warnings.push(format!("{key}: not a string; ignored"));
                continue;
            };
            let checked = match name {
                "proxy-cpu-request"
                | "proxy-cpu-limit"
                | "proxy-memory-request"
                | "proxy-memory-limit" => quantity(v),
                "skip-inbound-ports" | "skip-outbound-ports" => ports(v),
                "skip-subnets" => subnets(v),
                "log-level" => log_level(v),
                "proxy-image" | "init-image" => image(v),
                "native-sidecar" => match v {
                    "true" | "false" => Ok(()),
                    _ => Err("must be \"true\" or \"false\"".to_owned()),
                },
                "default-inbound-policy" => match v {
                    "allow" | "authenticated" | "deny" => Ok(()),
                    _ => Err("must be allow, authenticated or deny".to_owned()),
                },
                _ => Err(format!(
                    "unknown override (known: {})",
                    OVERRIDES.join(", ")
                )),
            };
            if let Err(why) = checked {
                warnings.push(format!("{key}: {v:?} {why}; ignored"));
                continue;
            }
            let v = Some(v.to_owned());
            match name {
                "proxy-cpu-request" => o.cpu_request = v,
                "proxy-cpu-limit" => o.cpu_limit = v,
                "proxy-memory-request" => o.memory_request = v,
                "proxy-memory-limit" => o.memory_limit = v,
                "skip-inbound-ports" => o.skip_inbound_ports = v,
                "skip-outbound-ports" => o.skip_outbound_ports = v,
                "skip-subnets" => o.skip_subnets = v,
                "log-level" => o.log_level = v,
                "proxy-image" => o.proxy_image = v,
                "init-image" => o.init_image = v,
                "native-sidecar" => o.native_sidecar = v.as_deref() == Some("true"),
                "default-inbound-policy" => o.default_inbound_policy = v,
                _ => {}
            }
        }
        o
    }
}

/// A Kubernetes resource quantity as requests and limits take them: a decimal number with an
/// optional suffix (`m`, `k`, `M`, `G`, `T`, `P`, `E`, `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`).
fn quantity(s: &str) -> Result<(), String> {
    const SUFFIXES: &[&str] = &[
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|suffix| s.strip_suffix(suffix).filter(|n| !n.is_empty()))
        .ok_or("is not a quantity (e.g. 100m, 64Mi)")?;
    let mut parts = number.splitn(2, '.');
    let int = parts.next().unwrap_or_default();
    let frac = parts.next();
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if digits(int) && frac.is_none_or(digits) {
        Ok(())
    } else {
        Err("is not a quantity (e.g. 100m, 64Mi)".into())
    }
}

/// A comma-separated list of ports and ranges (`25,3306,8000-8100`), 1 to 65535.
pub(crate) fn ports(s: &str) -> Result<(), String> {
    let port = |p: &str| match p.trim().parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("has {p:?}, which is not a port (1 to 65535)")),
    };
    for item in s.split(',') {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(format!(
                        "has the range {item:?}, which ends before it starts"
                    ));
                }
            }
            None => {
                port(item)?;
            }
        }
    }
    Ok(())
}

/// A comma-separated list of CIDRs (`10.0.0.0/8,fd00::/8`).
fn subnets(s: &str) -> Result<(), String> {
    for item in s.split(',').map(str::trim) {
        let (ip, prefix) = item
            .split_once('/')
            .ok_or_else(|| format!("has {item:?}, which is not a CIDR (ADDRESS/PREFIX)"))?;
        let ip: std::net::IpAddr = ip
            .parse()
            .map_err(|_| format!("has {item:?}, whose address is not an IP"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(p) if p <= max => {}
            _ => return Err(format!("has {item:?}, whose prefix is not 0 to {max}")),
        }
    }
    Ok(())
}

/// `WEFT_LOG` directives: `LEVEL` or `TARGET=LEVEL`, comma-separated.
fn log_level(s: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    for d in s.split(',') {
        let level = d.rsplit_once('=').map_or(
            d,
            |(target, level)| {
                if target.is_empty() { "" } else { level }
            },
        );
        if !LEVELS.contains(&level) {
            return Err(format!(
                "has {d:?}: use LEVEL or TARGET=LEVEL, LEVEL one of {}",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

fn image(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        Err("is not an image reference".into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_values_are_checked_by_kind() {
        for ok in ["100m", "1", "0.5", "64Mi", "1Gi", "2k"] {
            assert_eq!(quantity(ok), Ok(()), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "ten", "5 Mi", "-1"] {
            assert!(quantity(bad).is_err(), "{bad}");
        }
        assert_eq!(ports("25,3306,8000-8100"), Ok(()));
        for bad in ["0", "70000", "9-3", "a", ""] {
            assert!(ports(bad).is_err(), "{bad}");
        }
        assert_eq!(subnets("10.0.0.0/8,fd00::/8"), Ok(()));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8"] {
            assert!(subnets(bad).is_err(), "{bad}");
        }
        assert_eq!(log_level("info,weft_proxy=debug"), Ok(()));
        assert!(log_level("loud").is_err());
    }

    #[test]
    fn a_bad_override_is_named_and_ignored_and_the_rest_apply() {
        let annotations: Map<String, Value> = serde_json::from_str(
            r#"{"config.weft.io/proxy-cpu-limit": "lots", "config.weft.io/native-sidecar": "false",
                "config.weft.io/skip-outbound-ports": "3306", "config.weft.io/colour": "blue",
                "other.io/x": "y"}"#,
        )
        .unwrap();
        let mut warnings = Vec::new();
        let o = Overrides::read(Some(&annotations), &mut warnings);
        assert_eq!(o.cpu_limit, None);
        assert!(!o.native_sidecar);
        assert_eq!(o.skip_outbound_ports.as_deref(), Some("3306"));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("config.weft.io/proxy-cpu-limit: \"lots\""));
        assert!(warnings[1].contains("unknown override"));
    }
}
