//! The one normal form of a request path that authorization policies (and the application) see.
//!
//! A policy that denies `/admin` is worth nothing if `//admin`, `/x/../admin` or `/%61dmin`
//! reach the same handler unmatched, so the inbound proxy rewrites the path before it is
//! matched and forwards the rewritten path. Escapes that could mean different things to
//! different servers (an encoded `/` or `\`, NUL and other control characters, `#`) are refused
//! rather than guessed at. Pure string work; no I/O, nothing shared.

use std::borrow::Cow;

/// Why a path was refused. The caller answers 400 with this as the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("NUL (%00) in the path")]
    Nul,
    #[error("control character 0x{0:02X} in the path")]
    Control(u8),
    #[error("'#' (raw or %23) in the path")]
    Fragment,
    #[error("encoded '/' (%2F) in the path")]
    EncodedSlash,
    #[error("encoded '\\' (%5C) in the path")]
    EncodedBackslash,
    #[error("malformed percent-escape at byte {0} of the path")]
    BadEscape(usize),
    #[error("the path does not start with '/'")]
    NotAbsolute,
}

/// Normalizes a request URI's path (the query already stripped):
///
/// 1. refuses NUL, control characters (raw or `%01`–`%1F`, `%7F`), `#` (raw or `%23`), an
///    encoded `/` or `\` (`%2F`, `%5C`, either case) and malformed escapes (`%`, `%4`, `%zz`);
/// 2. decodes escaped unreserved characters (`A-Z a-z 0-9 - . _ ~`) once and uppercases the
///    hex digits of every other escape, so equal paths compare equal;
/// 3. turns `\` into `/`, merges runs of `/`, and removes `.` and `..` segments (RFC 3986
///    §5.2.4, never above the root; a trailing `/.` or `/..` leaves a trailing `/`).
///
/// The empty path becomes `/`; `*` (`OPTIONS *`) is returned unchanged; anything else must start
/// with `/`. Case is kept. A path with no `%` that needs none of this is returned borrowed,
/// without allocating: this runs on every inbound request. (A path with escapes is rebuilt even
/// when they are already normal; the result is equal.)
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if is_clean(path) {
        return Ok(Cow::Borrowed(path));
    }
    normalize_slow(path).map(Cow::Owned)
}

/// The fast path: whether `path` is already normal (else the slow path normalizes or refuses
/// it).
fn is_clean(path: &str) -> bool {
    let b = path.as_bytes();
    match b {
        [] => false,
        [b'*'] => true,
        // `\admin` is absolute once `\` becomes `/`: the slow path decides.
        [first, ..] if *first != b'/' => false,
        // Anything to change or refuse goes to the slow path, which names the first problem.
        _ => b.iter().enumerate().all(|(i, &c)| match c {
            0..=0x1F | 0x7F | b'#' | b'%' | b'\\' => false,
            b'/' => !matches!(b.get(i + 1), Some(b'/' | b'.')),
            _ => true,
        }),
    }
}

/// Steps 1–3 on any path (the fast path gives the same result where it applies; the property
/// tests check that).
#[doc(hidden)] // public for the fuzz target `authz_path`, which checks the fast path against it
pub fn normalize_slow(path: &str) -> Result<String, BadPath> {
    if path == "*" {
        return Ok(path.to_owned());
    }
    let decoded = decode(path)?;
    if decoded.is_empty() {
        return Ok("/".to_owned());
    }
    let Some(rest) = decoded.strip_prefix('/') else {
        return Err(BadPath::NotAbsolute);
    };
    Ok(remove_dot_segments(rest, decoded.len()))
}

/// Steps 1 and 2, and `\` → `/`.
fn decode(path: &str) -> Result<String, BadPath> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            0 => return Err(BadPath::Nul),
            0x01..=0x1F | 0x7F => return Err(BadPath::Control(c)),
            b'#' => return Err(BadPath::Fragment),
            b'\\' => out.push('/'),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(BadPath::BadEscape(i));
                };
                let v = (hi << 4) | lo;
                match v {
                    0 => return Err(BadPath::Nul),
                    0x01..=0x1F | 0x7F => return Err(BadPath::Control(v)),
                    b'#' => return Err(BadPath::Fragment),
                    b'/' => return Err(BadPath::EncodedSlash),
                    b'\\' => return Err(BadPath::EncodedBackslash),
                    _ if is_unreserved(v) => out.push(char::from(v)),
                    _ => {
                        out.push('%');
                        out.push(char::from(HEX[usize::from(hi)]));
                        out.push(char::from(HEX[usize::from(lo)]));
                    }
                }
                i += 3;
                continue;
            }
            _ if c.is_ascii() => out.push(char::from(c)),
            _ => {
                // A multi-byte character (the http crate never gives us one, but a `&str` may
                // hold one): copied whole. `i` is on a character boundary, as every step above
                // moves over ASCII bytes only.
                if let Some(ch) = path[i..].chars().next() {
                    out.push(ch);
                    i += ch.len_utf8();
                    continue;
                }
            }
        }
        i += 1;
    }
    Ok(out)
}

/// Step 3 on the path after its leading '/'. `cap` is a capacity hint.
fn remove_dot_segments(rest: &str, cap: usize) -> String {
    let mut segments: Vec<&str> = Vec::new();
    // Whether the last segment seen leaves a trailing '/': "", "." and ".." do.
    let mut trailing = false;
    for seg in rest.split('/') {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(cap);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests;
