//! Query strings: finding a parameter and percent-decoding it (`application/x-www-form-urlencoded`
//! rules, as Phoenix/Plug decode them: `+` is a space, `%XX` a byte).

/// The decoded value of the first `name` parameter in a raw query string (`a=1&b=2`).
/// `None` when absent or when its value is not valid percent-encoded UTF-8.
pub fn query_param(query: &str, name: &str) -> Option<Result<String, String>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(k) {
                Ok(k) if k == name => Some(percent_decode(v)),
                _ => None,
            }
        })
}

/// Decodes `%XX` escapes and `+` (space). An invalid escape or a result that is not UTF-8 is an
/// error with a short reason, so the caller can refuse the request rather than guess.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                // Both digits must be hex: `u8::from_str_radix` alone would accept "+1".
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("invalid percent-escape at byte {i}"))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "percent-decoded value is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_and_plus_are_decoded() {
        assert_eq!(percent_decode("a%20b+c%2Bd").as_deref(), Ok("a b c+d"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Ok("é"));
        assert_eq!(percent_decode("plain.jwt-_").as_deref(), Ok("plain.jwt-_"));
    }

    #[test]
    fn bad_escapes_are_errors() {
        assert!(percent_decode("%").is_err());
        assert!(percent_decode("%4").is_err());
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%FF").is_err(), "not UTF-8");
        assert!(percent_decode("%+1").is_err());
    }

    #[test]
    fn first_matching_param_is_found() {
        let q = "userToken=a%2Eb&vsn=2.0.0&vsn=1.0.0&flag";
        assert_eq!(query_param(q, "vsn"), Some(Ok("2.0.0".to_string())));
        assert_eq!(query_param(q, "userToken"), Some(Ok("a.b".to_string())));
        assert_eq!(query_param(q, "flag"), Some(Ok(String::new())));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param("", "vsn"), None);
    }
}
