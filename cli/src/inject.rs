//! `weftctl inject` and `weftctl uninject`: the injector offline, on files or stdin. Every
//! document is written back in order and only pod templates change; a summary line per object
//! goes to stderr. The same pure function as the webhook ([`weft_inject::inject`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;
use weft_inject::{InjectConfig, Outcome, Report};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// What to do with each pod template.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Add the proxy.
    Inject(InjectConfig),
    /// Only label pod templates `weft.io/inject: enabled` (the webhook injects at admission).
    Annotate,
    /// Remove what `Inject` added.
    Uninject,
}

/// Reads `-f` arguments: files, directories (their `.yaml`, `.yml` and `.json` files, sorted)
/// or `-` for stdin; returns (name, text) pairs.
pub fn read_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("read directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            files.sort();
            for f in files {
                out.push(crate::read_source(&f)?);
            }
        } else {
            out.push(crate::read_source(p)?);
        }
    }
    Ok(out)
}

/// The documents of one input, in order; `None` for a `null` one. Empty documents (`---`
/// followed by nothing) are not documents to the parser, and are dropped as kubectl drops them.
/// A text is first read as a JSON stream (values one after another on their own lines, as `-o
/// json` writes several documents and kubectl reads them); if it is not one, as YAML (of which
/// one JSON value is a case, with the same meaning).
fn documents(name: &str, text: &str) -> anyhow::Result<Vec<Option<Value>>> {
    if let Some(docs) = json_stream(text) {
        return Ok(docs);
    }
    let options = serde_saphyr::options! { with_snippet: false };
    let mut bytes = text.as_bytes();
    let mut docs = Vec::new();
    for (i, doc) in serde_saphyr::read_with_options::<_, Value>(&mut bytes, options).enumerate() {
        let doc = doc.with_context(|| format!("{name}: document {}: invalid YAML", i + 1))?;
        docs.push((!doc.is_null()).then_some(doc));
    }
    Ok(docs)
}

/// The values of `text` if it is a JSON stream whose values are separated by line breaks.
/// Values side by side on one line are not one: `0 80` is a YAML string, which our own YAML
/// output writes that way (found by the `weftctl_inject` fuzz target).
fn json_stream(text: &str) -> Option<Vec<Option<Value>>> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut docs = Vec::new();
    let mut end = 0;
    while let Some(doc) = stream.next() {
        let doc = doc.ok()?;
        let start = end + text[end..].len() - text[end..].trim_start().len();
        if !docs.is_empty() && !text[end..start].contains('\n') {
            return None;
        }
        end = stream.byte_offset();
        docs.push((!doc.is_null()).then_some(doc));
    }
    Some(docs)
}

/// Labels a workload's pod template `weft.io/inject: enabled`.
fn annotate(object: &Value) -> (Value, Report) {
    let (_, mut report) = weft_inject::uninject(object);
    let pointer = match object.get("kind").and_then(Value::as_str) {
        Some("Pod") => "",
        Some("CronJob") => "/spec/jobTemplate/spec/template",
        Some(_) if object.pointer("/spec/template").is_some() => "/spec/template",
        _ => {
            report.outcome = Outcome::Skipped(weft_inject::Skip::NotAWorkload);
            return (object.clone(), report);
        }
    };
    let mut out = object.clone();
    let label = weft_inject::names::INJECT_LABEL;
    let labelled = out.pointer_mut(pointer).and_then(|t| {
        let t = t.as_object_mut()?;
        let meta = t
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()))
            .as_object_mut()?;
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()))
            .as_object_mut()?;
        labels.insert(label.into(), "enabled".into());
        Some(())
    });
    report.outcome = match labelled {
        Some(()) => Outcome::Injected,
        None => Outcome::Skipped(weft_inject::Skip::Malformed(
            "the pod template is not an object".into(),
        )),
    };
    (out, report)
}

fn apply(mode: &Mode, object: &Value) -> (Value, Report) {
    match mode {
        Mode::Inject(cfg) => weft_inject::inject(object, cfg, None),
        Mode::Annotate => annotate(object),
        Mode::Uninject => weft_inject::uninject(object),
    }
}

fn summary(mode: &Mode, r: &Report) -> String {
    match (mode, &r.outcome) {
        (Mode::Annotate, Outcome::Injected) => {
            format!(
                "{}/{} labelled {}=enabled",
                r.kind,
                r.name,
                weft_inject::names::INJECT_LABEL
            )
        }
        _ => r.to_string(),
    }
}

/// Transforms every input: the documents to `out`, one summary line per object (and per
/// dropped empty document) to `err`. Nothing is written if any input fails to parse.
pub fn run(
    inputs: &[(String, String)],
    mode: &Mode,
    format: Format,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<()> {
    let mut parsed = Vec::new();
    for (name, text) in inputs {
        parsed.push((name, documents(name, text)?));
    }
    let mut written = Vec::new();
    let mut lines = Vec::new();
    for (name, docs) in parsed {
        for (i, doc) in docs.into_iter().enumerate() {
            let Some(doc) = doc else {
                lines.push(format!("{name}: document {} is null: dropped", i + 1));
                continue;
            };
            if doc.get("kind").and_then(Value::as_str) == Some("List") {
                let mut list = doc.clone();
                if let Some(items) = list.get_mut("items").and_then(Value::as_array_mut) {
                    for item in items.iter_mut() {
                        let (new, report) = apply(mode, item);
                        lines.push(summary(mode, &report));
                        *item = new;
                    }
                }
                written.push(list);
            } else {
                let (new, report) = apply(mode, &doc);
                lines.push(summary(mode, &report));
                written.push(new);
            }
        }
    }
    if written.is_empty() {
        bail!("no documents in the input");
    }
    for (i, doc) in written.iter().enumerate() {
        match format {
            Format::Yaml => {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                let text = serde_saphyr::to_string(doc).context("encode YAML")?;
                out.write_all(text.as_bytes())?;
                if !text.ends_with('\n') {
                    writeln!(out)?;
                }
            }
            Format::Json => {
                serde_json::to_writer_pretty(&mut *out, doc).context("encode JSON")?;
                writeln!(out)?;
            }
        }
    }
    for line in lines {
        writeln!(err, "{line}")?;
    }
    Ok(())
}

/// The SHA-256 fingerprint of the first root in a trust bundle file.
pub fn trust_root_fingerprint(path: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let bundle =
        weft_certs::TrustBundle::from_pem_deriving(None, &pem, &path.display().to_string())
            .with_context(|| format!("trust bundle {}", path.display()))?;
    bundle
        .fingerprints()
        .into_iter()
        .next()
        .context("the trust bundle is empty")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80}]
---
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: web}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: settings}
- apiVersion: v1
  kind: Pod
  metadata: {name: x}
  spec:
    hostNetwork: true
    containers: [{name: app, image: a}]
";

    fn run_on(text: &str, mode: &Mode) -> (String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run(
            &[("s.yaml".into(), text.into())],
            mode,
            Format::Yaml,
            &mut out,
            &mut err,
        )
        .unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn a_stream_keeps_its_order_and_says_what_happened_to_each_object() {
        let (out, err) = run_on(STREAM, &Mode::Inject(InjectConfig::default()));
        assert_eq!(
            err,
            "service/web skipped: not a workload\n\
             deployment/web injected\n\
             configmap/settings skipped: not a workload\n\
             pod/x skipped: hostNetwork\n"
        );
        // The empty document between the first two is dropped (as kubectl drops it).
        let docs = documents("out", &out).unwrap();
        assert_eq!(docs.len(), 3);
        let kinds: Vec<&str> = docs
            .iter()
            .map(|d| d.as_ref().unwrap()["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["Service", "Deployment", "List"]);
        // Uninject gives back the input's objects.
        let (back, err) = run_on(&out, &Mode::Uninject);
        assert!(err.contains("deployment/web uninjected"), "{err}");
        let original: Vec<Value> = documents("in", STREAM)
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        let back: Vec<Value> = documents("back", &back)
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(back, original);
    }

    #[test]
    fn annotate_only_labels_pod_templates() {
        let (out, err) = run_on(STREAM, &Mode::Annotate);
        assert!(
            err.contains("deployment/web labelled weft.io/inject=enabled"),
            "{err}"
        );
        let docs: Vec<Value> = documents("out", &out)
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        let template = &docs[1]["spec"]["template"];
        assert_eq!(template["metadata"]["labels"]["weft.io/inject"], "enabled");
        assert_eq!(template["spec"]["containers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn json_output_of_several_documents_reads_back() {
        // Found by the `weftctl_inject` fuzz target: `-o json` writes documents one after
        // another (a JSON stream, as kubectl reads them), which the YAML reader refused, so
        // `weftctl inject -o json | weftctl inject -f -` failed.
        let mode = Mode::Inject(InjectConfig::default());
        let json = |text: &str| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            run(
                &[("s".into(), text.into())],
                &mode,
                Format::Json,
                &mut out,
                &mut err,
            )
            .map(|()| String::from_utf8(out).unwrap())
        };
        // Documents that are not objects too (the second find: a stream of JSON strings).
        for input in [STREAM, "plain\n---\nother: 1\n", "[1]\n---\n2\n"] {
            let once = json(input).unwrap();
            let again = json(&once).unwrap_or_else(|e| panic!("{e:#}\n{once}"));
            assert_eq!(again, once);
        }
        // A float survives its own text (the third find: serde_json's default float parser can
        // be one unit in the last place off; the workspace enables `float_roundtrip`).
        let (once, _) = run_on(
            "9999999999899999999999919999999999999999\n",
            &Mode::Uninject,
        );
        let (again, _) = run_on(&once, &Mode::Uninject);
        assert_eq!(again, once);
        // The fourth find: YAML's `0 80` is one string, though `0` and `80` side by side are a
        // JSON stream of two numbers; it reads back as the string it was.
        let yaml = |text: &str| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            run(
                &[("s".into(), text.into())],
                &Mode::Annotate,
                Format::Yaml,
                &mut out,
                &mut err,
            )
            .map(|()| String::from_utf8(out).unwrap())
        };
        let once = yaml(" 0 80\n#6").unwrap();
        assert_eq!(once, "0 80\n");
        assert_eq!(yaml(&once).unwrap(), once);
        // JSON-looking YAML is still YAML.
        let (out, _) = run_on("{kind: Pod, metadata: {name: x}}", &Mode::Uninject);
        assert_eq!(out, "kind: Pod\nmetadata:\n  name: x\n");
    }

    #[test]
    fn invalid_yaml_writes_nothing_and_names_the_document() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let e = run(
            &[(
                "bad.yaml".into(),
                "kind: Pod\n---\nkind: [unclosed\n".into(),
            )],
            &Mode::Uninject,
            Format::Yaml,
            &mut out,
            &mut err,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("bad.yaml: document 2"), "{e:#}");
        assert!(out.is_empty() && err.is_empty());
    }
}
