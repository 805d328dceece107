use proptest::prelude::*;

use super::*;

/// (input, expected): `Ok(normal form)` or `Err(reason)`.
const TABLE: &[(&str, Result<&str, BadPath>)] = &[
    // already normal: returned as is
    ("/", Ok("/")),
    ("/api/v1/users", Ok("/api/v1/users")),
    ("/ADMIN", Ok("/ADMIN")),
    ("*", Ok("*")),
    ("", Ok("/")),
    ("/a.b/c..d/...", Ok("/a.b/c..d/...")),
    ("/caf\u{e9}", Ok("/caf\u{e9}")),
    // the bypass set: each reaches `/admin` (or says why not)
    ("//admin", Ok("/admin")),
    ("/./admin", Ok("/admin")),
    ("/x/../admin", Ok("/admin")),
    ("/%61dmin", Ok("/admin")),
    ("/admin/", Ok("/admin/")),
    ("\\admin", Ok("/admin")),
    ("/%2e%2e/admin", Ok("/admin")),
    ("/x/%2e%2e/admin", Ok("/admin")),
    ("/x/%2E%2E/admin", Ok("/admin")),
    ("/x/.%2e/admin", Ok("/admin")),
    ("/x\\..\\admin", Ok("/admin")),
    ("/%2Fadmin", Err(BadPath::EncodedSlash)),
    ("/%2fadmin", Err(BadPath::EncodedSlash)),
    ("/x/..%2Fadmin", Err(BadPath::EncodedSlash)),
    ("/%5Cadmin", Err(BadPath::EncodedBackslash)),
    ("/%5cadmin", Err(BadPath::EncodedBackslash)),
    // merging and dot segments
    ("///a////b//", Ok("/a/b/")),
    ("/a/b/.", Ok("/a/b/")),
    ("/a/b/..", Ok("/a/")),
    ("/a/..", Ok("/")),
    ("/..", Ok("/")),
    ("/../../..", Ok("/")),
    ("/../a", Ok("/a")),
    ("/a/./b/../c", Ok("/a/c")),
    ("/.well-known/x", Ok("/.well-known/x")),
    ("/a/.b/..c", Ok("/a/.b/..c")),
    // decoding: unreserved once, the rest uppercased
    ("/%41%5a%61%7a%30%39%2D%2E%5F%7E", Ok("/AZaz09-._~")),
    ("/caf%c3%a9", Ok("/caf%C3%A9")),
    ("/a%20b", Ok("/a%20b")),
    ("/%252e%252e/admin", Ok("/%252e%252e/admin")),
    ("/%25", Ok("/%25")),
    ("/a?b", Ok("/a?b")),
    // refused
    ("/a%00", Err(BadPath::Nul)),
    ("/a\0", Err(BadPath::Nul)),
    ("/a%0a", Err(BadPath::Control(0x0A))),
    ("/a%1F", Err(BadPath::Control(0x1F))),
    ("/a%7f", Err(BadPath::Control(0x7F))),
    ("/a\tb", Err(BadPath::Control(0x09))),
    ("/a\x7f", Err(BadPath::Control(0x7F))),
    ("/a#frag", Err(BadPath::Fragment)),
    ("/a%23frag", Err(BadPath::Fragment)),
    ("/a%", Err(BadPath::BadEscape(2))),
    ("/a%4", Err(BadPath::BadEscape(2))),
    ("/a%zz", Err(BadPath::BadEscape(2))),
    ("/a%4g", Err(BadPath::BadEscape(2))),
    ("admin", Err(BadPath::NotAbsolute)),
    ("%2e/admin", Err(BadPath::NotAbsolute)),
    ("**", Err(BadPath::NotAbsolute)),
    ("http://host/x", Err(BadPath::NotAbsolute)),
];

#[test]
fn table() {
    for (input, want) in TABLE {
        let got = normalize_path(input);
        assert_eq!(
            got.as_deref().map_err(|e| *e),
            *want,
            "normalize_path({input:?})"
        );
    }
}

#[test]
fn clean_paths_are_borrowed() {
    for p in ["/", "/api/v1/users", "/ADMIN", "*", "/a.b/c..d"] {
        assert!(
            matches!(normalize_path(p), Ok(Cow::Borrowed(_))),
            "{p:?} should take the fast path"
        );
    }
    for p in ["//a", "/./a", "/%61", "\\a", "/a/.."] {
        assert!(
            matches!(normalize_path(p), Ok(Cow::Owned(_))),
            "{p:?} needs the slow path"
        );
    }
}

#[test]
fn reasons_name_the_problem() {
    assert_eq!(
        BadPath::EncodedSlash.to_string(),
        "encoded '/' (%2F) in the path"
    );
    assert_eq!(
        BadPath::Control(0x0A).to_string(),
        "control character 0x0A in the path"
    );
    assert_eq!(
        BadPath::BadEscape(3).to_string(),
        "malformed percent-escape at byte 3 of the path"
    );
}

/// Paths built from the characters that matter: separators, dots, escapes (good, bad, of
/// unreserved and reserved characters), and a little else.
fn pathish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("\\".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E".to_owned()),
        Just("%61".to_owned()),
        Just("%c3%a9".to_owned()),
        Just("%25".to_owned()),
        Just("%2f".to_owned()),
        Just("%".to_owned()),
        Just("#".to_owned()),
        Just("*".to_owned()),
        "[a-zA-Z0-9~_-]{1,3}",
        "%[0-9a-fA-F]{2}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

fn check_normal(input: &str, out: &str) {
    if input == "*" {
        assert_eq!(out, "*");
        return;
    }
    assert!(out.starts_with('/'), "{input:?} → {out:?}");
    assert!(!out.contains("//"), "{input:?} → {out:?}");
    assert!(!out.contains('\\'), "{input:?} → {out:?}");
    for seg in out.split('/') {
        assert!(seg != "." && seg != "..", "{input:?} → {out:?}");
    }
}

proptest! {
    #[test]
    fn idempotent_and_normal(input in pathish()) {
        if let Ok(out) = normalize_path(&input) {
            check_normal(&input, &out);
            let again = normalize_path(&out);
            prop_assert_eq!(again.as_deref(), Ok(&*out), "not idempotent for {:?}", input);
        }
    }

    #[test]
    fn any_string_normal_or_refused(input in "\\PC{0,24}") {
        if let Ok(out) = normalize_path(&input) {
            check_normal(&input, &out);
            let again = normalize_path(&out);
            prop_assert_eq!(again.as_deref(), Ok(&*out));
        }
    }

    #[test]
    fn fast_path_agrees_with_slow_path(input in pathish()) {
        let fast = normalize_path(&input).map(Cow::into_owned);
        prop_assert_eq!(fast, normalize_slow(&input));
    }

    #[test]
    fn fast_path_agrees_with_slow_path_on_any_string(input in "\\PC{0,24}") {
        let fast = normalize_path(&input).map(Cow::into_owned);
        prop_assert_eq!(fast, normalize_slow(&input));
    }
}
