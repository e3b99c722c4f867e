//! The web client's files (`web/` at the repository root), embedded in the binary
//! with rust-embed and served at `/` on the HTTP and HTTPS listeners.
//!
//! Release builds carry the files inside the binary; debug builds read them from
//! `web/` at request time (rust-embed's default), so the client can be edited
//! without rebuilding the server.
//!
//! Caching: every response carries a strong `ETag` (the file's SHA-256) and
//! `Cache-Control: no-cache`, so browsers revalidate each file and get a `304`
//! when it did not change (RFC 9111 §5.2.2.4, RFC 9110 §13.1.2). The files keep
//! stable names (ES modules import each other by name, no bundler), which is why
//! they are revalidated rather than cached for a fixed time.
//!
//! Every page response has a strict Content-Security-Policy: scripts, styles and
//! workers only from this origin, no inline script, no plugins, no framing;
//! `connect-src` allows this origin's own WebSocket (`/xmpp-websocket`).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

use crate::http::AppState;

#[derive(RustEmbed)]
#[folder = "../../web/"]
struct Assets;

/// `GET /`: the page itself.
pub(crate) async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, &headers, "index.html")
}

/// Any other path: a file of the client, or 404.
pub(crate) async fn asset(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = uri.path().trim_start_matches('/');
    // Only plain relative names: no parent steps, no hidden files.
    if path.is_empty()
        || path
            .split('/')
            .any(|part| part.is_empty() || part.starts_with('.'))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    serve(&state, &headers, path)
}

fn serve(state: &AppState, headers: &HeaderMap, path: &str) -> Response {
    if !state.server.config.web.enabled {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(file) = Assets::get(path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = etag(&file.metadata.sha256_hash());
    let mut response = if if_none_match(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, content_type(path))],
            file.data.into_owned(),
        )
            .into_response()
    };
    let out = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, value);
    }
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(value) = HeaderValue::from_str(&content_security_policy(headers)) {
        out.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// A strong validator from the file's SHA-256 (the first 128 bits suffice).
fn etag(hash: &[u8; 32]) -> String {
    let mut tag = String::with_capacity(34);
    tag.push('"');
    for byte in &hash[..16] {
        tag.push_str(&format!("{byte:02x}"));
    }
    tag.push('"');
    tag
}

/// RFC 9110 §13.1.2: `*` or a list of (possibly weak) tags; weak comparison.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let Some(value) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    value
        .split(',')
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

fn content_type(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map_or("", |(_, ext)| ext);
    match extension {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The policy for the client's pages. `'self'` covers same-origin WebSockets in
/// CSP Level 3 (§6.7.2.9, "ws"/"wss" match "http"/"https"); the explicit `ws:`/
/// `wss:` source for this host is for browsers that predate that rule. A Host
/// header with anything but host-name characters is left out, not echoed.
pub(crate) fn content_security_policy(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        });
    let sockets = host
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https:; \
         media-src 'self' blob: https:; connect-src 'self'{sockets} https:; worker-src 'self'; \
         manifest-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'; object-src 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_modules_are_embedded() {
        assert!(Assets::get("index.html").is_some());
        assert!(Assets::get("js/main.js").is_some());
        assert!(Assets::get("sw.js").is_some());
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(if_none_match(&headers, "\"abc\""));
        assert!(!if_none_match(&headers, "\"abd\""));
    }

    #[test]
    fn hostile_host_is_not_echoed_into_the_policy() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("evil; script-src *"));
        let policy = content_security_policy(&headers);
        assert!(!policy.contains("evil"));
        headers.insert(header::HOST, HeaderValue::from_static("localhost:5280"));
        assert!(content_security_policy(&headers).contains("ws://localhost:5280"));
    }
}
