//! The console's files, compiled into the binary (deployments are often air-gapped: the page
//! loads nothing from elsewhere), and the headers that keep the page to itself: a strict
//! [`CONTENT_SECURITY_POLICY`] (no inline script or style, no other origin, no framing).
//!
//! What it must never do: serve a file that is not in [`ASSETS`] (no path is ever joined to the
//! file system) or serve any file without the policy.

use crate::http::HttpResponse;

/// The page may run only its own scripts and styles, talk only to its own origin (the
/// WebSocket and `/console/login`), and be framed by nobody. `'self'` covers `ws:`/`wss:` to
/// the same host and port (CSP level 3, which Chromium, Firefox and Safari implement).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Every file of the page: path under `/console/`, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("", HTML, include_bytes!("assets/index.html")),
    ("console.css", CSS, include_bytes!("assets/console.css")),
    ("app.mjs", JS, include_bytes!("assets/app.mjs")),
    ("admin.mjs", JS, include_bytes!("assets/admin.mjs")),
    ("dom.mjs", JS, include_bytes!("assets/dom.mjs")),
    ("chart.mjs", JS, include_bytes!("assets/chart.mjs")),
    ("series.mjs", JS, include_bytes!("assets/series.mjs")),
    ("format.mjs", JS, include_bytes!("assets/format.mjs")),
    (
        "panels/overview.mjs",
        JS,
        include_bytes!("assets/panels/overview.mjs"),
    ),
    (
        "panels/topics.mjs",
        JS,
        include_bytes!("assets/panels/topics.mjs"),
    ),
    (
        "panels/topic.mjs",
        JS,
        include_bytes!("assets/panels/topic.mjs"),
    ),
    (
        "panels/clients.mjs",
        JS,
        include_bytes!("assets/panels/clients.mjs"),
    ),
    (
        "panels/latency.mjs",
        JS,
        include_bytes!("assets/panels/latency.mjs"),
    ),
    (
        "vendor/phoenix.mjs",
        JS,
        include_bytes!("assets/vendor/phoenix.mjs"),
    ),
    (
        "vendor/phoenix.LICENSE.txt",
        TEXT,
        include_bytes!("assets/vendor/phoenix.LICENSE.txt"),
    ),
];

/// The answer to `GET <path>` under `/console`, or `None` when no such file exists.
pub fn asset_response(path: &str) -> Option<HttpResponse> {
    let name = match path {
        "/console" | "/console/" => "",
        other => other.strip_prefix("/console/")?,
    };
    let (_, content_type, bytes) = ASSETS.iter().find(|(n, _, _)| *n == name)?;
    Some(
        HttpResponse {
            status: 200,
            content_type: Some(content_type),
            body: bytes.to_vec(),
            headers: Vec::new(),
        }
        .with_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "no-referrer")
        .with_header("X-Frame-Options", "DENY"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_served_with_the_policy() {
        for path in [
            "/console",
            "/console/",
            "/console/app.mjs",
            "/console/console.css",
        ] {
            let response = asset_response(path).unwrap_or_else(|| panic!("{path} is served"));
            assert_eq!(response.status, 200);
            assert!(response.has_header("Content-Security-Policy"), "{path}");
        }
        let page = asset_response("/console").expect("the page");
        assert_eq!(page.content_type, Some(HTML));
    }

    #[test]
    fn nothing_else_is_served() {
        for path in [
            "/console/../Cargo.toml",
            "/console/nope.js",
            "/consolex",
            "/",
        ] {
            assert!(asset_response(path).is_none(), "{path}");
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let page = std::str::from_utf8(ASSETS[0].2).expect("the page is UTF-8");
        assert!(!page.contains("<style"));
        assert!(!page.contains("style="));
        for script in page.split("<script").skip(1) {
            let tag_end = script.find('>').expect("a closed script tag");
            assert!(
                script[..tag_end].contains("src="),
                "inline script: {script}"
            );
            assert!(script[tag_end + 1..].trim_start().starts_with("</script>"));
        }
    }
}
