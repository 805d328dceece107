//! Protocol detection on a fresh connection, by peeking at (not consuming) its first bytes:
//! a TLS ClientHello, the HTTP/2 connection preface, an HTTP/1 request line, or anything else
//! (opaque). A client that sends nothing within the timeout (a server-speaks-first protocol
//! such as SMTP or MySQL) is opaque after that timeout, never stalled longer.

use std::time::Duration;

use tokio::net::TcpStream;

/// What a connection's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Tls,
    Http1,
    Http2,
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token we wait for before calling a connection opaque.
const MAX_METHOD: usize = 16;

/// Classifies a prefix. `None`: not enough bytes to tell yet.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    let &first = prefix.first()?;
    // A TLS handshake record: content type 22, then major version 3.
    if first == 0x16 {
        return match prefix.get(1) {
            None => None,
            Some(3) => Some(Detected::Tls),
            Some(_) => Some(Detected::Opaque),
        };
    }
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            None
        };
    }
    // An HTTP/1 request line starts with a method token (RFC 9110 tchar; uppercase in
    // practice) followed by a space.
    for (i, &b) in prefix.iter().enumerate() {
        if b == b' ' {
            return Some(if i > 0 {
                Detected::Http1
            } else {
                Detected::Opaque
            });
        }
        if !b.is_ascii_uppercase() || i >= MAX_METHOD {
            return Some(Detected::Opaque);
        }
    }
    None
}

/// Peeks at `tcp` until [`classify`] decides, the peer stops sending, or `timeout` passes
/// (then: opaque).
pub async fn detect(tcp: &TcpStream, timeout: Duration) -> std::io::Result<Detected> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let peek = async {
        let mut seen = 0;
        loop {
            let n = tcp.peek(&mut buf).await?;
            if let Some(d) = classify(&buf[..n]) {
                return Ok(d);
            }
            if n == 0 {
                return Ok(Detected::Opaque);
            }
            if n == seen {
                // `peek` returns at once while bytes are buffered: wait a little for more.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen = n;
        }
    };
    match tokio::time::timeout(timeout, peek).await {
        Ok(r) => r,
        Err(_) => Ok(Detected::Opaque),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifies_known_prefixes() {
        let table: &[(&[u8], Option<Detected>)] = &[
            (b"", None),
            (b"GET / HTTP/1.1\r\n", Some(Detected::Http1)),
            (b"POST", None),
            (b"CONNECT a:1 HTTP/1.1", Some(Detected::Http1)),
            (H2_PREFACE, Some(Detected::Http2)),
            (b"PRI * HTTP/2.0", None),
            (b"PRI * HTTP/1.1", Some(Detected::Http1)),
            (&[0x16, 3, 1], Some(Detected::Tls)),
            (&[0x16], None),
            (&[0x16, 9], Some(Detected::Opaque)),
            (b"\x00\x00\x00", Some(Detected::Opaque)),
            (b"get / HTTP/1.1", Some(Detected::Opaque)),
            (b" GET", Some(Detected::Opaque)),
            (b"SSH-2.0-OpenSSH", Some(Detected::Opaque)),
            (b"AAAAAAAAAAAAAAAAAAAAAA", Some(Detected::Opaque)),
        ];
        for (input, want) in table {
            assert_eq!(
                classify(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    proptest! {
        /// Deciding never needs more than the preface's length, and more bytes never change a
        /// decision once made.
        #[test]
        fn decisions_are_stable(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let full = classify(&bytes);
            if bytes.len() >= H2_PREFACE.len() {
                prop_assert!(full.is_some());
            }
            for cut in 0..=bytes.len() {
                if let Some(d) = classify(&bytes[..cut]) {
                    prop_assert_eq!(Some(d), full);
                }
            }
        }
    }
}
