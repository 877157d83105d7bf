//! The console's page, embedded in the binary so `corral serve` alone serves it on an
//! air-gapped host. `web/dist/` is built from `web/src/` by `scripts/build-web.sh`
//! (esbuild over npm packages, no CDN) and committed; CI rebuilds it and fails when the
//! result differs, so what is embedded is what the sources say.
//!
//! A request for `/` gets `index.html` with a strict Content-Security-Policy: scripts only
//! from this origin (no inline script, no eval), connections only to this origin (the API,
//! the event stream, the console websockets), no framing. Styles allow inline attributes
//! because xterm.js's DOM renderer writes its theme into a `<style>` element at run time;
//! nothing else in the page needs it.
//!
//! Browsers that accept gzip get the assets gzip-compressed (compressed once, on first use,
//! and kept): 157 KB instead of 590 KB.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::io::Write;
use std::sync::OnceLock;

/// The Content-Security-Policy of the page and its assets.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    media: &'static str,
    bytes: &'static [u8],
}

/// The gzip form of each of [`ASSETS`] (same order), made on first use; `None` when the
/// compressor failed (then the plain bytes are served).
fn gzipped(index: usize) -> Option<&'static [u8]> {
    static GZ: OnceLock<Vec<Option<Vec<u8>>>> = OnceLock::new();
    let all = GZ.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                enc.write_all(a.bytes).ok()?;
                enc.finish().ok()
            })
            .collect()
    });
    all.get(index).and_then(|g| g.as_deref())
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.split(';').next().map(str::trim) == Some("gzip"))
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/assets/app.js",
        media: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../../web/dist/app.js"),
    },
    Asset {
        path: "/assets/app.css",
        media: "text/css; charset=utf-8",
        bytes: include_bytes!("../../../../web/dist/app.css"),
    },
];

const INDEX: &[u8] = include_bytes!("../../../../web/dist/index.html");

/// Paths of the page: `/` and `/assets/*` (open without credentials; the page then logs in).
pub fn is_asset_path(path: &str) -> bool {
    path == "/" || path == "/index.html" || path.starts_with("/assets/")
}

fn serve(media: &'static str, bytes: &'static [u8]) -> Response {
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // Revalidate every time: the agent may have been upgraded underneath the page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

async fn index() -> Response {
    serve("text/html; charset=utf-8", INDEX)
}

/// The page's routes, merged into the API router (outside the API's route table: they are
/// not API and not in the OpenAPI document).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new()
        .route("/", get(index))
        .route("/index.html", get(index));
    for (i, a) in ASSETS.iter().enumerate() {
        let (media, bytes) = (a.media, a.bytes);
        r = r.route(
            a.path,
            get(move |headers: HeaderMap| async move {
                let gz = accepts_gzip(&headers).then(|| gzipped(i)).flatten();
                let mut resp = serve(media, gz.unwrap_or(bytes));
                let h = resp.headers_mut();
                h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
                if gz.is_some() {
                    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                resp
            }),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_script() {
        let html = std::str::from_utf8(INDEX).unwrap_or_default();
        assert!(html.contains("src=\"/assets/app.js\""), "{html}");
        // No inline script: every <script> has a src.
        assert_eq!(
            html.matches("<script").count(),
            html.matches("<script src=").count()
        );
        assert!(CSP.contains("script-src 'self';"));
    }

    #[test]
    fn assets_are_gzipped_for_browsers_that_accept_it() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.9"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert!(!accepts_gzip(&h));
        let gz = gzipped(0).unwrap_or_default();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut plain)
            .unwrap_or_default();
        assert_eq!(plain, ASSETS[0].bytes);
        assert!(gz.len() < ASSETS[0].bytes.len() / 2);
    }
}
