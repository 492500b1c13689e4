//! The web dashboard: static assets compiled into the binary and the same
//! `/v1` API as the CLI, on a loopback TCP listener in the host's own
//! network namespace.
//!
//! Protection, in order: the `Host` header must name the listener (against
//! DNS rebinding); an `Origin`, when sent, must be the dashboard's own, and
//! requests that change something must carry it (against cross-site
//! requests); and the per-daemon token must come as `?token=` (which sets
//! an HttpOnly, SameSite=Strict cookie and redirects to drop it from the
//! URL) or as that cookie.

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

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"code": if status == StatusCode::UNAUTHORIZED { "unauthorized" } else { "forbidden" }, "message": message, "hint": "Open the dashboard with the URL `banger ui` prints"});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn query_token(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_string())
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
    if let Some(t) = query_token(req.uri()) {
        if !same(&t, &ui.token) {
            return refuse(StatusCode::UNAUTHORIZED, "Wrong dashboard token");
        }
        // Keep it in a cookie, and out of the address bar and history.
        let path = req.uri().path().to_string();
        let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", ui.token);
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, path)
            .header(header::SET_COOKIE, cookie)
            .header(header::REFERRER_POLICY, "no-referrer")
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    match cookie_token(req.headers()) {
        Some(t) if same(&t, &ui.token) => {}
        _ => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "The dashboard needs its access token",
            )
        }
    }
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
        .nest("/v1", api::v1_routes(&daemon))
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
    fn tokens_and_hosts() {
        let a = crate::state::new_token();
        assert_eq!(a.len(), 32);
        assert_ne!(a, crate::state::new_token());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        let ui = UiState {
            token: "t".into(),
            addr: "127.0.0.1:7878".parse().ok(),
            error: None,
        };
        assert!(ui.hosts().contains(&"localhost:7878".to_string()));
        assert_eq!(ui.url().as_deref(), Some("http://127.0.0.1:7878/?token=t"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; banger_ui=xyz"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("xyz"));
        let u: Uri = "/?x=1&token=abc".parse().expect("uri");
        assert_eq!(query_token(&u).as_deref(), Some("abc"));
    }
}
