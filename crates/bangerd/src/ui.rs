//! The web dashboard: static assets compiled into the binary and the same
//! `/v1` API as the CLI, on a loopback TCP listener in the host's own
//! network namespace.
//!
//! Protection, in order: the `Host` header must name the listener (against
//! DNS rebinding); an `Origin`, when sent, must be the dashboard's own, and
//! requests that change something must carry it (against cross-site
//! requests); and the request must carry a live session cookie, which a
//! one-time login code (`?code=`, from `banger ui`) is traded for: an
//! HttpOnly, SameSite=Strict cookie, then a page that moves on without the
//! code in the URL (see `ui_login`).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::api;
use crate::state::AppState;

const INDEX: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");

pub const COOKIE: &str = "banger_ui";

fn refuse(status: StatusCode, message: &str) -> Response {
    let code = if status == StatusCode::UNAUTHORIZED {
        "unauthorized"
    } else {
        "forbidden"
    };
    let hint = "Open the dashboard with the one-time link `banger ui` prints \
                (or `banger ui --open`)";
    let body = serde_json::json!({"code": code, "message": message, "hint": hint});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn cookie_session(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The value of query parameter `name`.
fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Trades a login code for a session cookie, and sends the browser on to
/// `path` without the code. Not with an HTTP redirect: when the login
/// link was opened from another site or a file (`banger ui --open`), a
/// redirect belongs to that cross-site navigation, and the browser would
/// withhold the new SameSite=Strict cookie from it. A page of our own that
/// moves on starts a navigation from this site.
fn login(ui: &crate::state::UiState, code: &str, path: &str) -> Response {
    let Some(session) = ui.logins.redeem(code) else {
        tracing::warn!("dashboard login refused: a used, expired or unknown code");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "This login link was used already or has expired (links work once, for a minute)",
        );
    };
    tracing::info!("dashboard login");
    let max_age = crate::ui_login::SESSION_TTL.as_secs();
    let cookie =
        format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}");
    let plain = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b));
    let to = if plain && path.starts_with('/') {
        path
    } else {
        "/"
    };
    let page = format!(
        "<!doctype html>\n<meta charset=utf-8>\n<meta http-equiv=refresh content=\"0; url={to}\">\n\
         <title>banger</title>\n<a href=\"{to}\">Continue to the dashboard</a>\n"
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::SET_COOKIE, cookie)
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(page))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Host, Origin and token checks (see the module doc).
async fn guard(State(d): State<AppState>, req: Request, next: Next) -> Response {
    let ui = &d.ui;
    let hosts = ui.hosts();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !hosts.iter().any(|h| h == host) {
        tracing::warn!(%host, path = %req.uri().path(), "dashboard request refused: foreign Host");
        return refuse(
            StatusCode::FORBIDDEN,
            "This Host is not the dashboard's (DNS rebinding protection)",
        );
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|h| h.to_str().ok());
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    match origin {
        Some(o) if !hosts.iter().any(|h| o == format!("http://{h}")) => {
            tracing::warn!(origin = %o, path = %req.uri().path(), "dashboard request refused: foreign Origin");
            return refuse(
                StatusCode::FORBIDDEN,
                "Cross-site request refused (foreign Origin)",
            );
        }
        None if !safe => {
            return refuse(
                StatusCode::FORBIDDEN,
                "Requests that change something must carry the dashboard's Origin",
            );
        }
        _ => {}
    }
    if let Some(code) = query_param(req.uri(), "code") {
        return login(ui, &code, req.uri().path());
    }
    match cookie_session(req.headers()) {
        Some(s) if ui.logins.valid(&s) => {}
        _ => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "The dashboard needs a login: you are not logged in, or your session ended",
            )
        }
    }
    // Logins are given only to callers who reach every VM (system.rs's
    // ui_login), so the dashboard does too.
    let mut req = req;
    req.extensions_mut()
        .insert(banger_core::access::Caller { uid: 0, all: true });
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's router: assets, and `/v1` behind [`guard`].
pub fn router(daemon: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .nest(
            "/v1",
            api::v1_routes(&daemon).layer(axum::middleware::from_fn(api::json_errors)),
        )
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(daemon.clone(), guard))
        .with_state(daemon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::UiState;

    #[test]
    fn hosts_cookies_and_codes() {
        let ui = UiState {
            logins: Default::default(),
            addr: "127.0.0.1:7878".parse().ok(),
            error: None,
        };
        assert!(ui.hosts().contains(&"localhost:7878".to_string()));
        assert_eq!(ui.url().as_deref(), Some("http://127.0.0.1:7878/"));
        let link = ui.login_url().expect("a link");
        assert!(link.starts_with("http://127.0.0.1:7878/?code="), "{link}");
        assert_ne!(ui.login_url(), Some(link), "a fresh code each time");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; banger_ui=xyz"),
        );
        assert_eq!(cookie_session(&h).as_deref(), Some("xyz"));
        let u: Uri = "/?x=1&code=abc".parse().expect("uri");
        assert_eq!(query_param(&u, "code").as_deref(), Some("abc"));
        assert_eq!(query_param(&u, "token"), None);
    }
}
