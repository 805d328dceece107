//! Gateway API durations (GEP-2257): `10s`, `1h30m`, `500ms`; one to four number-unit pairs,
//! each number one to five digits, units `h`, `m`, `s`, `ms`. Matches the Gateway API CRD
//! validation regex `^([0-9]{1,5}(h|m|s|ms)){1,4}$`, so a route that `kubectl` would accept is
//! accepted here and vice versa.

/// Parses a GEP-2257 duration into a protobuf `Duration` (millisecond precision).
pub fn parse_duration(s: &str) -> Result<prost_types::Duration, String> {
    let bad = || {
        format!(
            "{s:?} is not a Gateway API duration (1 to 4 number-unit pairs, units h, m, s, ms: e.g. 10s, 1h30m, 500ms)"
        )
    };
    let bytes = s.as_bytes();
    let (mut at, mut pairs, mut total_ms) = (0usize, 0usize, 0u64);
    while at < bytes.len() {
        let digits = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let number: u64 = s[at..at + digits].parse().map_err(|_| bad())?;
        at += digits;
        let (unit_ms, len) = match &bytes[at..] {
            [b'm', b's', ..] => (1, 2),
            [b'h', ..] => (3_600_000, 1),
            [b'm', ..] => (60_000, 1),
            [b's', ..] => (1_000, 1),
            _ => return Err(bad()),
        };
        at += len;
        pairs += 1;
        if pairs > 4 {
            return Err(bad());
        }
        // At most 4 × 99,999 h: far below u64::MAX ms.
        total_ms += number * unit_ms;
    }
    if pairs == 0 {
        return Err(bad());
    }
    Ok(prost_types::Duration {
        seconds: i64::try_from(total_ms / 1000).map_err(|_| bad())?,
        nanos: i32::try_from((total_ms % 1000) * 1_000_000).map_err(|_| bad())?,
    })
}

/// Formats a protobuf `Duration` the way Gateway API writes it (`1h30m`, `500ms`, `0s`).
/// Sub-millisecond parts cannot be written and are dropped; a negative duration is written with
/// a leading `-`, which [`parse_duration`] refuses, so it cannot be re-applied by accident.
pub fn format_duration(d: &prost_types::Duration) -> String {
    if d.seconds < 0 || d.nanos < 0 {
        let abs = prost_types::Duration {
            seconds: d.seconds.saturating_neg().max(0),
            nanos: d.nanos.saturating_neg().max(0),
        };
        return format!("-{}", format_duration(&abs));
    }
    let total_ms = u128::from(d.seconds.unsigned_abs()) * 1000
        + u128::from(d.nanos.unsigned_abs() / 1_000_000);
    if total_ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let parts = [
        (total_ms / 3_600_000, "h"),
        (total_ms / 60_000 % 60, "m"),
        (total_ms / 1000 % 60, "s"),
        (total_ms % 1000, "ms"),
    ];
    for (n, unit) in parts {
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(d: &prost_types::Duration) -> i64 {
        d.seconds * 1000 + i64::from(d.nanos) / 1_000_000
    }

    #[test]
    fn parses_the_gep_examples() {
        for (s, want) in [
            ("0s", 0),
            ("10s", 10_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("1s500ms", 1500),
            ("1h1m1s1ms", 3_661_001),
            ("99999ms", 99_999),
            ("2m", 120_000),
        ] {
            assert_eq!(ms(&parse_duration(s).unwrap()), want, "{s}");
        }
    }

    #[test]
    fn refuses_what_the_regex_refuses() {
        for s in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "1d",
            "100000s",
            "1h1m1s1ms1h",
            " 1s",
            "1s ",
            "1S",
            "1us",
            "1ns",
            "PT1S",
            "1 s",
        ] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains("not a Gateway API duration"), "{s}: {e}");
        }
    }

    #[test]
    fn formats_canonically() {
        for (ms, want) in [
            (0, "0s"),
            (500, "500ms"),
            (1500, "1s500ms"),
            (5_400_000, "1h30m"),
            (86_400_000, "24h"),
        ] {
            let d = prost_types::Duration {
                seconds: ms / 1000,
                nanos: (ms % 1000) as i32 * 1_000_000,
            };
            assert_eq!(format_duration(&d), want);
        }
        let neg = prost_types::Duration {
            seconds: -5,
            nanos: 0,
        };
        assert!(parse_duration(&format_duration(&neg)).is_err());
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(total in 0i64..(99_999 * 3_600_000)) {
            let d = prost_types::Duration { seconds: total / 1000, nanos: (total % 1000) as i32 * 1_000_000 };
            prop_assert_eq!(parse_duration(&format_duration(&d)).unwrap(), d);
        }

        #[test]
        fn never_panics(s in ".{0,24}") {
            let _ = parse_duration(&s);
        }
    }
}
