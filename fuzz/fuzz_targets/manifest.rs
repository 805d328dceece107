//! `weftctl apply -f` input: YAML or JSON text (multi-document, `List`s) through
//! `manifest::parse_manifests` (serde-saphyr → JSON value → typed manifest → wire document →
//! the model's `TryFrom`) and `parse_refs` (what `weftctl delete -f` reads). What parses must
//! render (`weftctl get -o yaml` / `-o json`) to text that parses back to the same documents.
#![no_main]
use weft_control_plane::manifest::{self, Manifest};

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(|| {
        weft_fuzz::manifest_texts().into_iter().map(String::into_bytes).collect()
    }),
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let _ = manifest::parse_refs("fuzz.yaml", text);
        let Ok(docs) = manifest::parse_documents("fuzz.yaml", text) else { return };
        let items: Vec<Manifest> = docs.iter().filter_map(Manifest::of_document).collect();
        if items.is_empty() {
            return;
        }
        let yaml = manifest::to_yaml(&items).expect("render yaml");
        let again = manifest::parse_documents("rendered.yaml", &yaml)
            .unwrap_or_else(|e| panic!("rendered YAML does not parse back: {e}\n{yaml}"));
        assert_eq!(again, docs, "YAML round trip changed the documents\n{yaml}");
        let json = manifest::to_json(&items, false).expect("render json");
        let again = manifest::parse_documents("rendered.json", &json)
            .unwrap_or_else(|e| panic!("rendered JSON does not parse back: {e}\n{json}"));
        assert_eq!(again, docs, "JSON round trip changed the documents\n{json}");
    }
);
