//! `weftctl register` / `deregister`: endpoints outside the mesh (a database, a VM), through
//! the admin-only `RegisterExternal` / `Deregister` RPCs.

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use weft_proto::mesh::v1 as pb;
use weft_proto::registry::v1 as reg;
use weft_proto::registry::v1::registration_client::RegistrationClient;

use super::{Context, RpcError};
use weft_control_plane::model::{self, ObjectRef};

/// What `weftctl register` needs.
#[derive(Debug, Clone)]
pub struct Register {
    /// `namespace/name` of the service.
    pub service: ObjectRef,
    /// `IP:PORT`.
    pub address: String,
    /// The SPIFFE ID proxies will expect at that address.
    pub identity: String,
    /// `k=v,...` already split.
    pub labels: Vec<(String, String)>,
    pub zone: Option<String>,
    pub weight: Option<u32>,
    /// Registration lifetime; `None`: until deregistered.
    pub ttl: Option<Duration>,
}

/// Parses `k=v,k2=v2` (empty: no labels).
pub fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{p:?} is not KEY=VALUE"))
        })
        .collect()
}

/// Domain field names → the flags a person typed.
fn flag_of(field: &str) -> String {
    let (head, rest) = field.split_at(field.find('[').unwrap_or(field.len()));
    let flag = match head {
        "namespace" | "service" => "--service",
        "address" => "--address",
        "identity" => "--identity",
        "labels" => "--labels",
        "zone" => "--zone",
        "weight" => "--weight",
        other => other,
    };
    format!("{flag}{rest}")
}

/// `weftctl register`: checks the endpoint locally (the same `TryFrom` the control plane runs),
/// then one RegisterExternal.
pub async fn register(ctx: &Context, r: &Register, w: &mut impl Write) -> anyhow::Result<()> {
    let endpoint = pb::Endpoint {
        namespace: r.service.namespace.clone(),
        service: r.service.name.clone(),
        address: r.address.clone(),
        identity: r.identity.clone(),
        labels: r.labels.iter().cloned().collect(),
        zone: r.zone.clone().unwrap_or_default(),
        weight: r.weight.unwrap_or(0),
        ready: true,
    };
    if let Err(invalid) = model::Endpoint::try_from(endpoint.clone()) {
        let lines: Vec<String> = invalid
            .0
            .iter()
            .map(|e| format!("{}: {}", flag_of(&e.field), e.message))
            .collect();
        bail!("{}", lines.join("\n"));
    }
    let ttl = r.ttl.map(|d| prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    });
    RegistrationClient::new(ctx.connect().await?)
        .register_external(reg::RegisterExternalRequest {
            endpoint: Some(endpoint),
            ttl,
        })
        .await
        .map_err(|status| RpcError {
            what: "register",
            status,
        })?;
    let lease = r.ttl.map_or_else(
        || " until deregistered".to_owned(),
        |d| format!(" for {}", humantime::format_duration(d)),
    );
    writeln!(
        w,
        "endpoint {} {} ({}) registered{lease}",
        r.service, r.address, r.identity
    )?;
    Ok(())
}

/// What `weftctl deregister` needs.
#[derive(Debug, Clone)]
pub struct Deregister {
    pub service: ObjectRef,
    pub address: String,
}

/// `weftctl deregister`.
pub async fn deregister(ctx: &Context, d: &Deregister, w: &mut impl Write) -> anyhow::Result<()> {
    RegistrationClient::new(ctx.connect().await?)
        .deregister(reg::DeregisterRequest {
            namespace: d.service.namespace.clone(),
            service: d.service.name.clone(),
            address: d.address.clone(),
        })
        .await
        .map_err(|status| RpcError {
            what: "deregister",
            status,
        })?;
    writeln!(w, "endpoint {} {} deregistered", d.service, d.address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        assert_eq!(
            parse_labels("app=db,version=v2").unwrap(),
            [("app".into(), "db".into()), ("version".into(), "v2".into())]
        );
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("app").is_err());
    }

    #[test]
    fn fields_read_as_flags() {
        assert_eq!(flag_of("address"), "--address");
        assert_eq!(flag_of("labels[\"A\"]"), "--labels[\"A\"]");
    }
}
