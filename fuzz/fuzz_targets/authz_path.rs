//! Request paths at the inbound proxy: the request target parsed as hyper parses it
//! (`http::Uri`), then `authz::normalize::normalize_path`. What it returns must be normal
//! (normalizing again changes nothing), agree with the slow path, hold no `//`,
//! `.` or `..` segment, no `%2F`/`%5C` and no control character, and fit back into a request
//! URI when it came from one (the proxy forwards it).
#![no_main]
use weft_proxy::authz::normalize::{normalize_path, normalize_slow};

libfuzzer_sys::fuzz_target!(
    init: weft_fuzz::seeds_then_exit(|| {
        ["/", "/admin", "//admin/./x/../y", "/%61dmin?x=1", "/a%2fb", "\\admin", "*",
         "/api/v1/users/%7Euser/", "/a/b/..", "/%zz", "/caf%C3%A9/x"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
    }),
    |data: &[u8]| {
        // The raw path directly (what `explain` and `--probe-paths` take) and as hyper hands it.
        let Ok(raw) = std::str::from_utf8(data) else { return };
        let uri_path = raw.parse::<http::Uri>().ok().map(|u| u.path().to_owned());
        for (path, from_uri) in [(Some(raw.to_owned()), false), (uri_path, true)]
            .into_iter()
            .filter_map(|(p, u)| Some((p?, u)))
        {
            let fast = normalize_path(&path);
            let slow = normalize_slow(&path);
            assert_eq!(fast.as_deref().map_err(|e| *e), slow.as_deref().map_err(|e| *e), "fast and slow paths disagree on {path:?}");
            let Ok(n) = fast else { continue };
            if n == "*" {
                continue;
            }
            assert!(n.starts_with('/'), "{n:?}");
            // Idempotent (a path with escapes comes back equal but owned: `%` always takes the slow path).
            assert_eq!(normalize_path(&n).as_deref(), Ok(n.as_ref()), "not idempotent: {path:?} -> {n:?}");
            assert!(!n.contains("//"), "{n:?}");
            assert!(!n.split('/').any(|s| s == "." || s == ".."), "{n:?}");
            let lower = n.to_ascii_lowercase();
            assert!(!lower.contains("%2f") && !lower.contains("%5c") && !n.contains('\\'), "{n:?}");
            assert!(!n.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'#'), "{n:?}");
            if !from_uri {
                continue;
            }
            let uri: http::Uri = n.parse().unwrap_or_else(|e| panic!("{n:?} is not a request path: {e}"));
            assert_eq!(uri.path(), n.as_ref());
        }
    }
);
