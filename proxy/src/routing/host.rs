//! The host a request names, as routes compare it.

/// Longest host name kept (DNS allows 253; a bracketed IPv6 literal is shorter).
const MAX_HOST: usize = 255;

/// `raw` (a `Host` header or URI authority) lower-cased into `buf`, without the port or a
/// trailing dot: `API.Example.com:8080` → `api.example.com`, `[::1]:80` → `[::1]`. `None` for a
/// value no route can name (not ASCII, too long, empty).
pub fn host_key<'a>(raw: &[u8], buf: &'a mut [u8; MAX_HOST]) -> Option<&'a str> {
    let host = if raw.first() == Some(&b'[') {
        let end = raw.iter().position(|&b| b == b']')?;
        &raw[..=end]
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(colon) if raw[colon + 1..].iter().all(u8::is_ascii_digit) => &raw[..colon],
            _ => raw,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST || !host.is_ascii() {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// A buffer for [`host_key`].
pub fn host_buffer() -> [u8; MAX_HOST] {
    [0; MAX_HOST]
}
