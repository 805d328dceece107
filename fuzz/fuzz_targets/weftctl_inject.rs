//! `weftctl inject | annotate | uninject -f FILE`: a user's YAML or JSON (multi-document,
//! `List`s, any kind) through `weft_cli::inject::run` (serde-saphyr to JSON values, the edit,
//! rendered back as YAML or JSON). First byte: mode (inject, annotate, uninject) and output
//! format. Whatever it writes must read back: running the same mode on its own output again
//! succeeds and writes the same text (inject and annotate are idempotent, and a value's type
//! survives the round trip through text).
#![no_main]
use weft_cli::inject::{Format, Mode, run};
use weft_inject::InjectConfig;

fn seeds() -> Vec<Vec<u8>> {
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n      annotations: {\"weft.io/inject\": enabled}\n    spec:\n      containers:\n      - name: web\n        image: nginx\n        ports: [{containerPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n";
    let list = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"version":"1.10"}},"spec":{"containers":[{"name":"a","image":"b","args":["0x10","yes","~"]}]}}]}"#;
    let mut out = Vec::new();
    for mode in 0..3u8 {
        for text in [deployment, list] {
            out.push([&[mode], text.as_bytes()].concat());
        }
    }
    for text in weft_fuzz::manifest_texts() {
        out.push([&[0u8], text.as_bytes()].concat());
    }
    out
}

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(seeds),
    |data: &[u8]| {
        let Some((&tag, rest)) = data.split_first() else { return };
        let Ok(text) = std::str::from_utf8(rest) else { return };
        let mode = match tag % 3 {
            0 => Mode::Inject(InjectConfig::default()),
            1 => Mode::Annotate,
            _ => Mode::Uninject,
        };
        let format = if tag & 0x80 == 0 { Format::Yaml } else { Format::Json };
        let transform = |text: &str| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            run(&[("fuzz.yaml".to_owned(), text.to_owned())], &mode, format, &mut out, &mut err)
                .map(|()| String::from_utf8(out).expect("the output is text"))
        };
        let Ok(once) = transform(text) else { return };
        if matches!(mode, Mode::Uninject) {
            return;
        }
        let twice = transform(&once).unwrap_or_else(|e| panic!("its own output does not read back: {e:#}\n{once}"));
        assert_eq!(twice, once, "a second run changed the output");
    }
);
