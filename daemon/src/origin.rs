//! Who may reach the daemon from a web page: the `Origin` and `Host` checks that run before a
//! WebSocket upgrade or an HTTP route.
//!
//! A browser lets any page open a WebSocket to any address and names the page in `Origin`; it
//! also sends `Origin` on the admin page's own `POST`s. Native clients (the CLI, the stdio shim,
//! MCP clients) send no `Origin`. So: a request that carries an `Origin` not in
//! `EXAI_WS_ALLOWED_ORIGINS` is refused with 403 — the upgrade and every `/admin/api` request
//! alike — and the admin API also accepts the origin of the daemon's own address (the origin of
//! the `/admin` page, `http(s)://<Host>`).
//!
//! DNS rebinding: a page on `evil.example` whose name is re-pointed at 127.0.0.1 talks to the
//! daemon as its own origin, with `Host: evil.example`. While the daemon listens on a loopback
//! address, only loopback names reach it: `localhost`, `127.0.0.0/8` and `[::1]`, any port.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Why a request was refused, answered as 403 with a one-line text body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `Host` is not a loopback name while the daemon listens on loopback.
    Host,
    /// `Origin` is not allowed.
    Origin,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let message = match self {
            Self::Host => "forbidden: this daemon answers only to a loopback Host",
            Self::Origin => "forbidden: this Origin is not in EXAI_WS_ALLOWED_ORIGINS",
        };
        (StatusCode::FORBIDDEN, message).into_response()
    }
}

/// The `Host` check: while listening on loopback, a `Host` header must name a loopback host
/// (no `Host` at all — an HTTP/1.0 client, never a browser — passes).
pub(crate) fn check_host(headers: &HeaderMap, listens_on_loopback: bool) -> Result<(), Refusal> {
    if !listens_on_loopback {
        return Ok(());
    }
    match headers.get(header::HOST) {
        None => Ok(()),
        Some(v) => match v.to_str() {
            Ok(host) if is_loopback_host(host) => Ok(()),
            _ => Err(Refusal::Host),
        },
    }
}

/// The `Origin` check: no `Origin` passes; else it must be in `allowed`, or, when `own` is
/// true (the admin API), the origin of the address the request was sent to (`Host`).
pub(crate) fn check_origin(
    headers: &HeaderMap,
    allowed: &[String],
    own: bool,
) -> Result<(), Refusal> {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return Ok(());
    };
    if origins.next().is_some() {
        return Err(Refusal::Origin);
    }
    let Ok(origin) = origin.to_str() else {
        return Err(Refusal::Origin);
    };
    let origin = origin.trim().to_ascii_lowercase();
    if allowed.contains(&origin) {
        return Ok(());
    }
    if own && let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        let host = host.trim().to_ascii_lowercase();
        let same = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme) == Some(host.as_str()));
        if same {
            return Ok(());
        }
    }
    Err(Refusal::Origin)
}

/// Whether a `Host` value (`name[:port]`, `[v6][:port]`) names a loopback host.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.strip_prefix(':').is_some_and(is_port) => {
                v6
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `s` is a port number (1 to 5 digits).
fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        for ok in [
            "localhost",
            "LOCALHOST:8079",
            "127.0.0.1",
            "127.0.0.1:8079",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:8079",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8079",
            "evil.example",
            "localhost.evil.example",
            "128.0.0.1:8079",
            "0.0.0.0:8079",
            "[::2]:8079",
            "::1",
            "127.0.0.1:port",
            "127.0.0.1:",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn the_host_check_applies_only_on_loopback() {
        let evil = headers(&[(header::HOST, "evil.example:8079")]);
        assert_eq!(check_host(&evil, true), Err(Refusal::Host));
        assert_eq!(check_host(&evil, false), Ok(()));
        assert_eq!(check_host(&HeaderMap::new(), true), Ok(()));
    }

    #[test]
    fn an_origin_passes_when_absent_listed_or_the_admin_pages_own() {
        let allowed = vec!["http://127.0.0.1:3000".to_owned()];
        assert_eq!(check_origin(&HeaderMap::new(), &[], false), Ok(()));
        let listed = headers(&[(header::ORIGIN, "http://127.0.0.1:3000")]);
        assert_eq!(check_origin(&listed, &allowed, false), Ok(()));
        assert_eq!(check_origin(&listed, &[], false), Err(Refusal::Origin));
        let own = headers(&[
            (header::ORIGIN, "http://127.0.0.1:8079"),
            (header::HOST, "127.0.0.1:8079"),
        ]);
        assert_eq!(check_origin(&own, &[], true), Ok(()));
        assert_eq!(check_origin(&own, &[], false), Err(Refusal::Origin));
        let other = headers(&[
            (header::ORIGIN, "http://127.0.0.1:3000"),
            (header::HOST, "127.0.0.1:8079"),
        ]);
        assert_eq!(check_origin(&other, &[], true), Err(Refusal::Origin));
        let null = headers(&[(header::ORIGIN, "null")]);
        assert_eq!(check_origin(&null, &allowed, true), Err(Refusal::Origin));
    }
}
