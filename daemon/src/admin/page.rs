//! The `/admin` web page: one HTML file, one script and one style sheet, embedded in the binary
//! (no build step, nothing fetched from elsewhere). The page holds no data and is served without
//! the token; its script asks the JSON API for everything, every 2 seconds, with the admin token
//! (`EXAI_ADMIN_TOKEN`) the operator gives it (the token field, kept in `sessionStorage`, or
//! `/admin#token=...`).

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::app::App;

/// The page.
const INDEX_HTML: &str = include_str!("page/index.html");
/// Its script (vanilla JavaScript).
const ADMIN_JS: &str = include_str!("page/admin.js");
/// Its style sheet.
const ADMIN_CSS: &str = include_str!("page/admin.css");

/// Scripts, styles and API calls only from the daemon itself; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The page's routes.
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route("/admin/admin.js", get(script))
        .route("/admin/admin.css", get(style))
}

/// Headers every page asset carries.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

/// `GET /admin`.
async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /admin/admin.js`.
async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", ADMIN_JS)
}

/// `GET /admin/admin.css`.
async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", ADMIN_CSS)
}
