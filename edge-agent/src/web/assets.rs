//! The page's static files, embedded in the binary (no CDN, nothing to install next to it).
//! They hold no data, so they are served without a login (the login page needs them too).

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const ASSETS: [(&str, &str, &str); 4] = [
    ("app.css", "text/css; charset=utf-8", include_str!("assets/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("installer.js", "text/javascript; charset=utf-8", include_str!("assets/installer.js")),
    ("favicon.svg", "image/svg+xml", include_str!("assets/favicon.svg")),
];

pub async fn asset(Path(name): Path<String>) -> Response {
    // Looked up by exact name in a fixed table: a request path never reaches the file system.
    match ASSETS.iter().find(|(asset, _, _)| *asset == name) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "public, max-age=300")], *body)
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}
