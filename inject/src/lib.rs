//! The sidecar injector: [`inject`] and [`uninject`] over Kubernetes objects as JSON values,
//! used by both front doors — the admission webhook in the control plane ([`review`]) and
//! `weftctl inject` in the CLI. No I/O.
//!
//! An object's pod template is found by its kind (a Pod is its own template; Deployment,
//! StatefulSet, DaemonSet, ReplicaSet, ReplicationController and Job have `spec.template`; a
//! CronJob `spec.jobTemplate.spec.template`). Only the template changes, and only by what
//! [`pod`] adds: `inject` of injected output changes nothing, and `uninject` of it gives back
//! the input exactly.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
mod containers;
pub mod names;
mod pod;
pub mod review;

use std::fmt;

use serde_json::Value;

pub use config::{InjectConfig, VERSION};
pub use containers::restricted;

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// It already has a Weft proxy: unchanged.
    AlreadyInjected,
    /// `uninject` removed the proxy.
    Uninjected,
    /// `uninject` found no proxy: unchanged.
    NotInjected,
    Skipped(Skip),
}

/// Why an object was left as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    NotAWorkload,
    Disabled,
    InvalidLabel(String),
    HostNetwork,
    OtherProxy {
        mesh: &'static str,
        container: String,
    },
    ControlPlaneNamespace(String),
    NameTaken(String),
    Malformed(String),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotAWorkload => write!(f, "not a workload"),
            Skip::Disabled => write!(f, "{}: disabled", names::INJECT_LABEL),
            Skip::InvalidLabel(v) => write!(
                f,
                "{}: {v:?} is neither enabled nor disabled",
                names::INJECT_LABEL
            ),
            Skip::HostNetwork => write!(f, "hostNetwork"),
            Skip::OtherProxy { mesh, container } => {
                write!(f, "has a {mesh} proxy (container {container})")
            }
            Skip::ControlPlaneNamespace(ns) => {
                write!(f, "in the control plane's namespace {ns}")
            }
            Skip::NameTaken(what) => write!(f, "it already has a {what}"),
            Skip::Malformed(why) => write!(f, "{why}"),
        }
    }
}

/// What [`inject`] or [`uninject`] did with one object, for a person to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `deployment`, `pod`, …: the kind, lowercased.
    pub kind: String,
    /// `metadata.name`, or for a Pod created from a template its `generateName`.
    pub name: String,
    pub outcome: Outcome,
    /// Problems that did not stop it (an invalid override, no service name).
    pub warnings: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ", self.kind, self.name)?;
        match &self.outcome {
            Outcome::Injected => write!(f, "injected"),
            Outcome::AlreadyInjected => write!(f, "unchanged: already injected"),
            Outcome::Uninjected => write!(f, "uninjected"),
            Outcome::NotInjected => write!(f, "unchanged: not injected"),
            Outcome::Skipped(s) => write!(f, "skipped: {s}"),
        }?;
        for w in &self.warnings {
            write!(f, "\n  warning: {w}")?;
        }
        Ok(())
    }
}

/// Where an object of `kind` keeps its pod template (a JSON pointer), if it has one.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn describe(object: &Value) -> (String, String) {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("(no kind)")
        .to_lowercase();
    let meta = object.get("metadata");
    let name = meta
        .and_then(|m| m.get("name")?.as_str())
        .or_else(|| meta.and_then(|m| m.get("generateName")?.as_str()))
        .unwrap_or("(no name)")
        .to_owned();
    (kind, name)
}

/// The report to start from (`not a workload` until shown otherwise), and where the object's
/// pod template is, if its kind has one.
fn start(object: &Value) -> (Report, Option<&'static str>) {
    let (kind, name) = describe(object);
    let report = Report {
        kind,
        name,
        outcome: Outcome::Skipped(Skip::NotAWorkload),
        warnings: Vec::new(),
    };
    let pointer = object
        .get("kind")
        .and_then(Value::as_str)
        .and_then(template_pointer);
    (report, pointer)
}

/// The object with a Weft proxy injected into its pod template, and what was done.
/// `namespace` is where the object lives when it is known better than its `metadata`
/// (an admission request's namespace).
pub fn inject(object: &Value, config: &InjectConfig, namespace: Option<&str>) -> (Value, Report) {
    let (mut report, pointer) = start(object);
    let Some(pointer) = pointer else {
        return (object.clone(), report);
    };
    let namespace = namespace.or_else(|| object.get("metadata")?.get("namespace")?.as_str());
    let mut out = object.clone();
    let Some(template) = out.pointer_mut(pointer).filter(|t| t.is_object()) else {
        report.outcome = Outcome::Skipped(Skip::Malformed(format!(
            "{} has no pod template at {pointer}",
            report.kind
        )));
        return (object.clone(), report);
    };
    report.outcome = pod::inject(template, config, namespace, &mut report.warnings);
    match report.outcome {
        Outcome::Injected => (out, report),
        _ => (object.clone(), report),
    }
}

/// The object without the Weft proxy [`inject`] added.
pub fn uninject(object: &Value) -> (Value, Report) {
    let (mut report, pointer) = start(object);
    let Some(pointer) = pointer else {
        return (object.clone(), report);
    };
    let mut out = object.clone();
    let removed = out.pointer_mut(pointer).is_some_and(pod::uninject);
    report.outcome = if removed {
        Outcome::Uninjected
    } else {
        Outcome::NotInjected
    };
    (out, report)
}

#[cfg(test)]
mod tests;
