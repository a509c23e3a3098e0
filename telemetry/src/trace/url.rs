//! The part of Go's `net/url.Parse` that decides whether an OTLP endpoint is valid and how it
//! splits (scheme, opaque, host, path). Errors carry Go's wording.

/// A parsed URL (only the parts the exporters use).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GoUrl {
    /// Lower-cased scheme, possibly empty.
    pub scheme: String,
    /// Non-empty for `scheme:rest` without a leading slash (e.g. `otel-collector:4317`).
    pub opaque: String,
    /// `host[:port]` (brackets kept for IPv6), possibly empty.
    pub host: String,
    /// Decoded path.
    pub path: String,
}

fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Go's `getScheme`.
fn get_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                if i == 0 {
                    return Ok(("", raw));
                }
            }
            b':' => {
                if i == 0 {
                    return Err("missing protocol scheme".into());
                }
                return Ok((&raw[..i], &raw[i + 1..]));
            }
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Host,
    Zone,
    UserPassword,
    Fragment,
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

fn unhex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// Go's `shouldEscape` for the host and zone modes (the only ones where it rejects input).
fn host_char_needs_escape(c: u8) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    !matches!(
        c,
        b'!' | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'['
            | b']'
            | b'<'
            | b'>'
            | b'"'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
    )
}

/// Go's `unescape`: validates and decodes `%XX` escapes for `mode`.
fn unescape(s: &str, mode: Mode) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if i + 2 >= b.len() || !is_hex(b[i + 1]) || !is_hex(b[i + 2]) {
                    let end = (i + 3).min(b.len());
                    return Err(format!(
                        "invalid URL escape {:?}",
                        String::from_utf8_lossy(&b[i..end])
                    ));
                }
                if mode == Mode::Host && unhex(b[i + 1]) < 8 && &b[i..i + 3] != b"%25" {
                    return Err(format!(
                        "invalid URL escape {:?}",
                        String::from_utf8_lossy(&b[i..i + 3])
                    ));
                }
                if mode == Mode::Zone {
                    let v = (unhex(b[i + 1]) << 4) | unhex(b[i + 2]);
                    if &b[i..i + 3] != b"%25" && v != b' ' && host_char_needs_escape(v) {
                        return Err(format!(
                            "invalid URL escape {:?}",
                            String::from_utf8_lossy(&b[i..i + 3])
                        ));
                    }
                }
                out.push((unhex(b[i + 1]) << 4) | unhex(b[i + 2]));
                i += 3;
            }
            c => {
                if matches!(mode, Mode::Host | Mode::Zone) && c < 0x80 && host_char_needs_escape(c)
                {
                    return Err(format!(
                        "invalid character {:?} in host name",
                        char::from(c).to_string()
                    ));
                }
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn valid_optional_port(port: &str) -> bool {
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Go's `parseHost`.
fn parse_host(host: &str) -> Result<String, String> {
    if host.starts_with('[') {
        let Some(i) = host.rfind(']') else {
            return Err("missing ']' in host".into());
        };
        let colon_port = &host[i + 1..];
        if !valid_optional_port(colon_port) {
            return Err(format!("invalid port {colon_port:?} after host"));
        }
        if let Some(zone) = host[..i].find("%25") {
            let h1 = unescape(&host[..zone], Mode::Host)?;
            let h2 = unescape(&host[zone..i], Mode::Zone)?;
            let h3 = unescape(&host[i..], Mode::Host)?;
            return Ok(h1 + &h2 + &h3);
        }
    } else if let Some(i) = host.rfind(':') {
        let colon_port = &host[i..];
        if !valid_optional_port(colon_port) {
            return Err(format!("invalid port {colon_port:?} after host"));
        }
    }
    unescape(host, Mode::Host)
}

fn valid_userinfo(s: &str) -> bool {
    s.bytes().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b':'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b'@'
            )
    })
}

/// Go's `parseAuthority` (the user info is validated and dropped).
fn parse_authority(authority: &str) -> Result<String, String> {
    let Some(i) = authority.rfind('@') else {
        return parse_host(authority);
    };
    let host = parse_host(&authority[i + 1..])?;
    let userinfo = &authority[..i];
    if !valid_userinfo(userinfo) {
        return Err("net/url: invalid userinfo".into());
    }
    match userinfo.split_once(':') {
        Some((user, password)) => {
            unescape(user, Mode::UserPassword)?;
            unescape(password, Mode::UserPassword)?;
        }
        None => {
            unescape(userinfo, Mode::UserPassword)?;
        }
    }
    Ok(host)
}

/// Go's `url.Parse(raw)`: the URL's parts, or Go's error text.
pub(crate) fn parse(raw: &str) -> Result<GoUrl, String> {
    let (without_fragment, fragment) = match raw.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (raw, None),
    };
    let url = parse_without_fragment(without_fragment)?;
    if let Some(fragment) = fragment.filter(|f| !f.is_empty()) {
        unescape(fragment, Mode::Fragment)?;
    }
    Ok(url)
}

fn parse_without_fragment(raw: &str) -> Result<GoUrl, String> {
    if raw.bytes().any(is_ctl) {
        return Err("net/url: invalid control character in URL".into());
    }
    let mut url = GoUrl::default();
    if raw == "*" {
        url.path = "*".into();
        return Ok(url);
    }
    let (scheme, rest) = get_scheme(raw)?;
    url.scheme = scheme.to_ascii_lowercase();
    let mut rest = if rest.ends_with('?') && rest.matches('?').count() == 1 {
        &rest[..rest.len() - 1]
    } else {
        rest.split_once('?').map_or(rest, |(r, _)| r)
    };
    if !rest.starts_with('/') {
        if !url.scheme.is_empty() {
            url.opaque = rest.to_owned();
            return Ok(url);
        }
        let segment = rest.split('/').next().unwrap_or("");
        if segment.contains(':') {
            return Err("first path segment in URL cannot contain colon".into());
        }
    }
    if (!url.scheme.is_empty() || !rest.starts_with("///")) && rest.starts_with("//") {
        let authority = &rest[2..];
        let (authority, path) = match authority.find('/') {
            Some(i) => (&authority[..i], &authority[i..]),
            None => (authority, ""),
        };
        url.host = parse_authority(authority)?;
        rest = path;
    }
    url.path = unescape(rest, Mode::Path)?;
    Ok(url)
}

impl GoUrl {
    /// The host without the port and without IPv6 brackets.
    pub fn hostname(&self) -> &str {
        let host = self.host.as_str();
        if let Some(inner) = host.strip_prefix('[') {
            return inner.split(']').next().unwrap_or("");
        }
        match host.rfind(':') {
            Some(i) => &host[..i],
            None => host,
        }
    }

    /// The port, when the host names one that parses.
    pub fn port(&self) -> Option<u16> {
        let host = self.host.as_str();
        let after = match host.rfind(']') {
            Some(i) => &host[i + 1..],
            None => host,
        };
        after.rsplit_once(':')?.1.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> GoUrl {
        parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"))
    }

    #[test]
    fn endpoints_as_go_parses_them() {
        let u = ok("otel-collector.observability:4317");
        assert_eq!(
            (u.scheme.as_str(), u.opaque.as_str()),
            ("otel-collector.observability", "4317")
        );
        let u = ok("localhost:4318");
        assert_eq!(u.opaque, "4318");
        let u = ok("http://collector:4318/v1/traces");
        assert_eq!(u.scheme, "http");
        assert_eq!(u.host, "collector:4318");
        assert_eq!(u.path, "/v1/traces");
        assert_eq!(u.hostname(), "collector");
        assert_eq!(u.port(), Some(4318));
        let u = ok("HTTPS://[::1]:4317");
        assert_eq!(u.scheme, "https");
        assert_eq!(u.hostname(), "::1");
        assert_eq!(u.port(), Some(4317));
        let u = ok("https://user:pw@collector/x%20y?q=1#frag");
        assert_eq!(u.host, "collector");
        assert_eq!(u.path, "/x y");
        assert_eq!(u.port(), None);
        assert_eq!(ok("").path, "");
        assert_eq!(ok("/just/a/path").host, "");
        assert_eq!(ok("*").path, "*");
        // A scheme with a trailing colon only: empty opaque.
        assert_eq!(ok("otel:").opaque, "");
    }

    #[test]
    fn go_errors() {
        for (raw, want) in [
            (
                "127.0.0.1:4317",
                "first path segment in URL cannot contain colon",
            ),
            (":4317", "missing protocol scheme"),
            ("http://[::1", "missing ']' in host"),
            ("http://host:port", "invalid port \":port\" after host"),
            ("http://[::1]x", "invalid port \"x\" after host"),
            ("http://a b", "invalid character \" \" in host name"),
            ("http://host/%zz", "invalid URL escape \"%zz\""),
            ("http://host/%4", "invalid URL escape \"%4\""),
            ("http://h%41st", "invalid URL escape \"%41\""),
            ("http://host\n", "net/url: invalid control character in URL"),
            ("http://us{er@host", "net/url: invalid userinfo"),
            ("http://host#%", "invalid URL escape \"%\""),
        ] {
            assert_eq!(parse(raw).unwrap_err(), want, "{raw:?}");
        }
        // Never panics on junk.
        for raw in [
            "%", "%%", "a:%", "//%", "//[", "//[]", "//[%25", "//@", "//:", "a@b",
        ] {
            let _ = parse(raw);
        }
    }
}
