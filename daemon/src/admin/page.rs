//! The `/admin` web page: one HTML file, one script and one style sheet, and the charting
//! library uPlot (vendored under `page/vendor/uplot/` with its licence; its README names the
//! version and source), all embedded in the binary (no build step, nothing fetched from
//! elsewhere). The page holds no data and is served without the token; its script asks the JSON
//! API for everything, every 2 seconds (the history every 15), with the admin token
//! (`EXAI_ADMIN_TOKEN`) the operator gives it (the token field, kept in `sessionStorage`, or
//! `/admin#token=...`). Every asset is served with a Content-Security-Policy that allows
//! scripts, styles and requests from the daemon only, and no inline script or style.

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
/// uPlot's script (the IIFE build, which defines `window.uPlot`).
const UPLOT_JS: &str = include_str!("page/vendor/uplot/uPlot.iife.min.js");
/// uPlot's style sheet.
const UPLOT_CSS: &str = include_str!("page/vendor/uplot/uPlot.min.css");
/// uPlot's licence (MIT), served beside it.
const UPLOT_LICENSE: &str = include_str!("page/vendor/uplot/LICENSE");

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
        .route(
            "/admin/vendor/uplot/uPlot.iife.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", UPLOT_JS) }),
        )
        .route(
            "/admin/vendor/uplot/uPlot.min.css",
            get(|| async { asset("text/css; charset=utf-8", UPLOT_CSS) }),
        )
        .route(
            "/admin/vendor/uplot/LICENSE",
            get(|| async { asset("text/plain; charset=utf-8", UPLOT_LICENSE) }),
        )
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
