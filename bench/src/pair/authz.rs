//! The `weft-authz` target (issue 16): the pair with zero-trust policy on. Its server proxy
//! serves `api-authz`, which 10 AuthorizationPolicies target (nine Allow that do not match the
//! client, the tenth that does: every request is evaluated against all ten) and a
//! RateLimitPolicy whose buckets are never empty (a total and a per-identity bucket, each
//! 1,000,000 per second), so every request also takes two tokens. Compared with `weft` in the
//! same run: the target is ≥ 0.97× its closed-loop throughput.

use super::setup::TRUST_DOMAIN;

/// The service the authz client addresses and its server registers under.
pub(crate) const SERVICE: &str = "api-authz";
/// The client proxy's service account (its identity is the tenth policy's).
pub(crate) const CLIENT: &str = "authz-client";

/// Applied with `weftctl apply` (the form of docs/configuration.md).
pub(crate) fn manifests() -> String {
    let mut docs = vec![format!(
        "apiVersion: weft.io/v1alpha1\nkind: Service\nmetadata: {{namespace: default, name: {SERVICE}}}\n\
         spec:\n  ports: [{{name: http, port: 80, protocol: http1}}]\n"
    )];
    for i in 0..10 {
        let who = if i == 9 {
            CLIENT.to_owned()
        } else {
            format!("other-{i}")
        };
        docs.push(format!(
            r#"apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{namespace: default, name: allow-{i}}}
spec:
  targetRef: {{kind: Service, name: {SERVICE}}}
  action: Allow
  from:
  - identities: ["spiffe://{TRUST_DOMAIN}/ns/default/sa/{who}"]
  to:
  - methods: [GET, HEAD]
    paths: [{{type: PathPrefix, value: /}}]
"#
        ));
    }
    docs.push(format!(
        r#"apiVersion: weft.io/v1alpha1
kind: RateLimitPolicy
metadata: {{namespace: default, name: never-hit}}
spec:
  targetRef: {{kind: Service, name: {SERVICE}}}
  total: {{requestsPerSecond: 1000000}}
  perIdentity: {{requestsPerSecond: 1000000}}
"#
    ));
    docs.join("---\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn the_manifests_are_valid() {
        let text = super::manifests();
        let docs = weft_control_plane::manifest::parse_manifests("authz.yaml", &text).unwrap();
        assert_eq!(docs.len(), 12);
    }
}
