//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): parsing and writing the
//! `traceparent` header. Pure; `tracestate` is never parsed (it is forwarded as it came).
//!
//! Anything that is not a valid `traceparent` is treated as no header at all: the caller starts
//! no trace from it (or a fresh one, if its sampling says so) and never refuses the request.

use std::fmt;

/// The `traceparent` header's name (a constant `HeaderName`: a `&str` name is parsed and
/// checked on every lookup, and the lookup is on every request of a traced proxy).
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// The `tracestate` header's name (forwarded byte for byte, never read).
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The `sampled` bit of the trace flags.
pub const FLAG_SAMPLED: u8 = 0x01;

/// A 16-byte trace ID, never all zero once parsed or generated.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span ID, never all zero once parsed or generated.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random, non-zero trace ID.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        loop {
            let _ = aws_lc_rs::rand::fill(&mut b);
            if b != [0; 16] {
                return Self(b);
            }
        }
    }
}

impl SpanId {
    /// A random, non-zero span ID.
    pub fn random() -> Self {
        let mut b = [0u8; 8];
        loop {
            let _ = aws_lc_rs::rand::fill(&mut b);
            if b != [0; 8] {
                return Self(b);
            }
        }
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// A parsed `traceparent`: the trace, the caller's span (our span's parent), and the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// Parses a `traceparent` value; `None` for anything invalid (wrong length or separators,
    /// upper-case or non-hex digits, version `ff`, an all-zero trace or parent ID, or version
    /// `00` with anything after the flags). A version above `00` may carry more fields after
    /// the flags, introduced by `-`, which are ignored (the spec's forward compatibility).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        if version == 0xff || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        match (version, value.len()) {
            (0, 55) => {}
            (0, _) => return None,
            (_, 55) => {}
            (_, _) if value[55] == b'-' => {}
            _ => return None,
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, b) in parent_id.iter_mut().enumerate() {
            *b = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            flags,
        })
    }

    /// The header value (always version `00`, 55 bytes) naming `self.parent_id` as the parent.
    pub fn to_header(&self) -> http::HeaderValue {
        let mut buf = [0u8; 55];
        buf[0..3].copy_from_slice(b"00-");
        put_hex(&mut buf[3..35], &self.trace_id.0);
        buf[35] = b'-';
        put_hex(&mut buf[36..52], &self.parent_id.0);
        buf[52] = b'-';
        put_hex(&mut buf[53..55], &[self.flags]);
        // Lower-case hex and dashes only: always a valid header value.
        http::HeaderValue::from_bytes(&buf).unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }

    /// The same trace and flags with `span` as the parent: what a hop forwards once it made
    /// its own span.
    pub fn child(&self, span: SpanId) -> Self {
        Self {
            parent_id: span,
            ..*self
        }
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(hex_digit(two[0])? << 4 | hex_digit(two[1])?)
}

fn put_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_and_invalid_headers() {
        let ok = |s: &str| TraceParent::parse(s.as_bytes());
        let p = ok(VALID).unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(p.sampled());
        for (header, valid, sampled) in [
            (VALID, true, true),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                true,
                false,
            ),
            // Flags other than `sampled` are kept, and only bit 0 means sampled.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
                true,
                true,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02",
                true,
                false,
            ),
            // A later version may add fields after a dash.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever",
                true,
                true,
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                true,
                true,
            ),
            // ...but version 00 may not.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                false,
                false,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                false,
                false,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
                false,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                false,
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                false,
                false,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                false,
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                false,
                false,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                false,
                false,
            ),
            (
                "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
                false,
                false,
            ),
            ("", false, false),
            ("garbage", false, false),
            (
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
                false,
            ),
        ] {
            let parsed = ok(header);
            assert_eq!(parsed.is_some(), valid, "{header:?}");
            assert_eq!(parsed.is_some_and(|p| p.sampled()), sampled, "{header:?}");
        }
    }

    #[test]
    fn a_child_keeps_trace_and_flags_and_names_the_new_parent() {
        let p =
            TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").unwrap();
        let child = p.child(SpanId([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(
            child.to_header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-03"
        );
        // A later version is written back as 00, its extra fields dropped.
        let v1 = TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
            .unwrap();
        assert_eq!(v1.to_header(), VALID);
    }

    #[test]
    fn random_ids_are_not_zero_and_differ() {
        let (a, b) = (TraceId::random(), TraceId::random());
        assert_ne!(a, b);
        assert_ne!(a.0, [0; 16]);
        assert_ne!(SpanId::random(), SpanId::random());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = TraceParent::parse(&bytes);
        }

        #[test]
        fn near_valid_headers_never_panic(
            i in 0usize..55,
            c in any::<u8>(),
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut v = VALID.as_bytes().to_vec();
            v[i] = c;
            v.extend(tail);
            let _ = TraceParent::parse(&v);
        }

        #[test]
        fn valid_headers_round_trip(
            trace in any::<[u8; 16]>(),
            span in any::<[u8; 8]>(),
            flags in any::<u8>(),
        ) {
            prop_assume!(trace != [0; 16] && span != [0; 8]);
            let p = TraceParent { trace_id: TraceId(trace), parent_id: SpanId(span), flags };
            let header = p.to_header();
            prop_assert_eq!(header.len(), 55);
            prop_assert_eq!(TraceParent::parse(header.as_bytes()), Some(p));
        }
    }
}
