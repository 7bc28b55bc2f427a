//! `allowed_origins`: which web pages may open a WebSocket (Phoenix's `check_origin`,
//! Centrifugo's `allowed_origins`). A browser always sends the page's `Origin` with an upgrade;
//! non-browser clients usually send none.

use std::fmt;

/// One entry of `allowed_origins`: `*`, or `[scheme://]host[:port]` where `host` may start
/// with `*.`. A part left out matches anything, as in Phoenix: `example.com` admits
/// `https://example.com:8443`; `https://*.example.com` admits `https://a.b.example.com` but
/// neither `https://example.com` (list it too) nor `https://evilexample.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    /// As configured, for `check-config` and logs.
    text: String,
    /// `None` matches any scheme.
    scheme: Option<String>,
    host: HostPattern,
    /// `None` matches any port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: every origin, `null` included.
    Any,
    /// One host, lower case.
    Exact(String),
    /// `*.suffix`: hosts ending in `.suffix` (at least one label more).
    Subdomains(String),
}

/// The parts of an `Origin` header: `scheme://host[:port]`, lower-cased.
struct Origin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

fn split_origin(text: &str) -> Option<Origin<'_>> {
    let (scheme, rest) = text.split_once("://")?;
    let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !valid_scheme {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal's colons are inside brackets; a port follows the `]`.
        Some((host, port)) if !port.contains(']') => (host, Some(port.parse().ok()?)),
        _ => (rest, None),
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    Some(Origin { scheme, host, port })
}

impl OriginPattern {
    /// Parses one entry; `None` when it is not of a form above (config reports the key).
    pub fn parse(text: &str) -> Option<OriginPattern> {
        let lower = text.trim().to_ascii_lowercase();
        if lower == "*" {
            return Some(OriginPattern {
                text: text.to_string(),
                scheme: None,
                host: HostPattern::Any,
                port: None,
            });
        }
        // Without a scheme, parse it as if it had one, then forget it.
        let (scheme_given, full) = match lower.contains("://") {
            true => (true, lower.clone()),
            false => (false, format!("any://{lower}")),
        };
        let parts = split_origin(full.trim_end_matches('/'))?;
        let host = match parts.host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                HostPattern::Subdomains(suffix.to_string())
            }
            Some(_) => return None,
            None if parts.host.contains('*') => return None,
            None => HostPattern::Exact(parts.host.to_string()),
        };
        Some(OriginPattern {
            text: text.to_string(),
            scheme: scheme_given.then(|| parts.scheme.to_string()),
            host,
            port: parts.port,
        })
    }

    /// Whether the `Origin` header value `origin` is admitted by this pattern. `null` (sent by
    /// sandboxed frames and `file:` pages) and unparsable values match only `*`.
    pub fn matches(&self, origin: &str) -> bool {
        if self.host == HostPattern::Any {
            return true;
        }
        let lower = origin.trim().to_ascii_lowercase();
        let Some(o) = split_origin(&lower) else {
            return false;
        };
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == o.scheme);
        let port_ok = self.port.is_none_or(|p| Some(p) == o.port);
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(host) => o.host == host,
            HostPattern::Subdomains(suffix) => o
                .host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| label.len() > 1 && label.ends_with('.')),
        };
        scheme_ok && port_ok && host_ok
    }

    /// True for `*`.
    pub fn is_any(&self) -> bool {
        self.host == HostPattern::Any
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why an upgrade's `Origin` was refused (the 403's body says it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRefusal {
    /// The header is there and matches no pattern.
    NotAllowed(String),
    /// No header, and `allow_missing_origin = false`.
    Missing,
}

impl fmt::Display for OriginRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginRefusal::NotAllowed(origin) => {
                write!(f, "origin {origin:?} is not in allowed_origins")
            }
            OriginRefusal::Missing => f.write_str(
                "an Origin header is required on this server (allow_missing_origin = false)",
            ),
        }
    }
}

/// Decides an upgrade's `Origin` header (`None` when absent) against `allowed` and
/// `allow_missing`.
pub fn check_origin(
    allowed: &[OriginPattern],
    allow_missing: bool,
    origin: Option<&str>,
) -> Result<(), OriginRefusal> {
    match origin {
        None if allow_missing => Ok(()),
        None => Err(OriginRefusal::Missing),
        Some(o) if allowed.iter().any(|p| p.matches(o)) => Ok(()),
        Some(o) => Err(OriginRefusal::NotAllowed(o.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> OriginPattern {
        OriginPattern::parse(text).unwrap_or_else(|| panic!("{text:?} must parse"))
    }

    #[test]
    fn exact_origin_matches_itself_case_insensitively_and_nothing_else() {
        let p = pattern("https://app.example.com");
        assert!(p.matches("https://app.example.com"));
        assert!(p.matches("HTTPS://App.Example.COM"));
        assert!(
            p.matches("https://app.example.com:8443"),
            "no port given: any"
        );
        assert!(!p.matches("http://app.example.com"), "scheme given: exact");
        assert!(!p.matches("https://app.example.com.evil.net"));
        assert!(!p.matches("https://evil.net"));
        assert!(!p.matches("null"));
        assert!(!p.matches(""));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = pattern("*.example.com");
        assert!(p.matches("https://a.example.com"));
        assert!(
            p.matches("http://a.b.example.com:3000"),
            "no scheme, no port: any"
        );
        assert!(
            !p.matches("https://example.com"),
            "the apex is listed on its own"
        );
        assert!(!p.matches("https://evilexample.com"));
        assert!(!p.matches("https://example.com.evil.net"));
        let p = pattern("https://*.example.com:443");
        assert!(p.matches("https://a.example.com:443"));
        assert!(!p.matches("https://a.example.com"));
        assert!(!p.matches("http://a.example.com:443"));
    }

    #[test]
    fn port_and_ipv6_are_compared() {
        let p = pattern("http://localhost:3000");
        assert!(p.matches("http://localhost:3000"));
        assert!(!p.matches("http://localhost:3001"));
        assert!(!p.matches("http://localhost"));
        let p = pattern("http://[::1]:8080");
        assert!(p.matches("http://[::1]:8080"));
        assert!(!p.matches("http://[::1]:8081"));
        assert!(pattern("http://[::1]").matches("http://[::1]:9"));
    }

    #[test]
    fn star_matches_everything_even_null() {
        let p = pattern("*");
        assert!(p.is_any());
        for origin in ["https://x.y", "null", "", "garbage"] {
            assert!(p.matches(origin), "{origin:?}");
        }
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for text in [
            "",
            "https://",
            "*.",
            "a.*.example.com",
            "https://*",
            "**.example.com",
            "https://example.com/path",
            "https://example.com:port",
            "1http://example.com",
            "https://user@example.com",
        ] {
            assert_eq!(OriginPattern::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn missing_origin_follows_allow_missing() {
        let allowed = [pattern("https://app.example.com")];
        assert_eq!(check_origin(&allowed, true, None), Ok(()));
        assert_eq!(
            check_origin(&allowed, false, None),
            Err(OriginRefusal::Missing)
        );
        assert_eq!(
            check_origin(&allowed, false, Some("https://app.example.com")),
            Ok(())
        );
        assert_eq!(
            check_origin(&allowed, true, Some("https://evil.net")),
            Err(OriginRefusal::NotAllowed("https://evil.net".into()))
        );
        assert!(
            check_origin(&[], true, Some("https://app.example.com")).is_err(),
            "an empty list admits no page"
        );
    }
}
