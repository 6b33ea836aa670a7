//! The auth layer of every listener: reads the key (`Authorization: Bearer KEY`, or `?token=`
//! for EventSource, `<img>` and WebSocket clients, which cannot set headers), asks
//! [`Auth::check`] with the scope the route needs, and answers a refusal in the error shape
//! of the face that was asked. Rate-limit headers go on every answer to a limited key.

use std::sync::Arc;

use poem::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use serde::Deserialize;

use super::face::Face;
use crate::auth::{Allowance, Auth, Rejection, Scope, Verdict};

/// A WebSocket let through without a key where one is needed: its first message must be
/// `{"type": "auth", "api_key": KEY}` (the gateway's WebSocket handshake).
#[derive(Clone)]
pub struct AuthChallenge(pub Arc<Auth>);

impl AuthChallenge {
    /// The socket's key, when a first message authenticates it (a key with the `read`
    /// scope; the message counts against the key's rate limit).
    pub fn accept(&self, first_message: &str) -> Option<SocketKey> {
        let parsed: Option<serde_json::Value> = serde_json::from_str(first_message).ok();
        let key = parsed
            .as_ref()
            .filter(|m| m["type"] == "auth")
            .and_then(|m| m["api_key"].as_str())?;
        match self.0.check(Some(key), Some(Scope::Read)) {
            Verdict::Pass(_) => Some(SocketKey {
                auth: self.0.clone(),
                key: key.to_owned(),
            }),
            Verdict::Reject(_) => None,
        }
    }
}

/// The key a WebSocket was let in with: each message it sends afterwards counts against the
/// key's rate limit as a request does, and is refused once the key is revoked.
#[derive(Clone)]
pub struct SocketKey {
    auth: Arc<Auth>,
    key: String,
}

impl SocketKey {
    /// Takes one request from the key's bucket for a message.
    pub fn charge(&self) -> Verdict {
        self.auth.check(Some(&self.key), Some(Scope::Read))
    }
}

/// The scope a native-port request needs; None: open (health and readiness probes, the
/// dashboard's page and files, the API document and Swagger UI, CORS preflights).
pub fn native_scope(method: &Method, path: &str) -> Option<Scope> {
    if method == Method::OPTIONS
        || matches!(path, "/" | "/health" | "/ready" | "/openapi.json")
        || path.starts_with("/docs")
        || path.starts_with("/ui/")
    {
        return None;
    }
    if matches!(path, "/metrics" | "/api/loras/rescan")
        || (method == Method::DELETE && path.starts_with("/api/images/"))
    {
        return Some(Scope::Admin);
    }
    Some(read_or_generate(method))
}

/// The scope a ComfyUI-port request needs (every route is also under `/api`).
pub fn comfyui_scope(method: &Method, path: &str) -> Option<Scope> {
    if method == Method::OPTIONS {
        return None;
    }
    let route = path.strip_prefix("/api").filter(|p| p.starts_with('/'));
    if route.unwrap_or(path) == "/free" {
        return Some(Scope::Admin);
    }
    Some(read_or_generate(method))
}

fn read_or_generate(method: &Method) -> Scope {
    if method == Method::GET || method == Method::HEAD {
        Scope::Read
    } else {
        Scope::Generate
    }
}

fn is_websocket(request: &Request) -> bool {
    request
        .header(header::UPGRADE)
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn token(request: &Request) -> Option<String> {
    let bearer = request
        .header(header::AUTHORIZATION)
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim().to_owned());
    bearer.or_else(|| request.params::<TokenQuery>().ok()?.token)
}

fn put_allowance(headers: &mut HeaderMap, allowance: &Allowance) {
    let mut put = |name: &'static str, value: u64| {
        headers.insert(name, HeaderValue::from(value));
    };
    put("x-ratelimit-limit", allowance.limit.into());
    put("x-ratelimit-remaining", allowance.remaining.into());
    put("x-ratelimit-reset", allowance.reset);
    if let Some(seconds) = allowance.retry_after {
        put("retry-after", seconds);
    }
}

fn refusal(face: Face, rejection: &Rejection) -> Response {
    let (status, code) = match rejection {
        Rejection::Missing | Rejection::Invalid => (StatusCode::UNAUTHORIZED, "INVALID_API_KEY"),
        Rejection::Forbidden(_) => (StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE"),
        Rejection::Limited(_) => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED"),
    };
    let mut response = face.error(status, code, rejection.message());
    let headers = response.headers_mut();
    // RFC 6750 §3: a bad token says `error="invalid_token"`; a missing one says no more.
    let challenge = match rejection {
        Rejection::Missing => Some("Bearer realm=\"hanga\""),
        Rejection::Invalid => Some("Bearer realm=\"hanga\", error=\"invalid_token\""),
        _ => None,
    };
    if let Some(challenge) = challenge {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    if let Rejection::Limited(allowance) = rejection {
        put_allowance(headers, allowance);
    }
    response
}

/// The middleware: `app.around(move |e, r| guard(e, r, auth.clone(), face_of, scope_of))`.
pub async fn guard<E: Endpoint>(
    endpoint: Arc<E>,
    mut request: Request,
    auth: Arc<Auth>,
    face_of: fn(&str) -> Face,
    scope_of: fn(&Method, &str) -> Option<Scope>,
) -> poem::Result<Response> {
    let face = face_of(request.uri().path());
    let scope = scope_of(request.method(), request.uri().path());
    let key = token(&request);
    let allowance = match auth.check(key.as_deref(), scope) {
        Verdict::Pass(allowance) => {
            if let Some(key) = key.filter(|_| is_websocket(&request)) {
                let auth = auth.clone();
                request.extensions_mut().insert(SocketKey { auth, key });
            }
            allowance
        }
        Verdict::Reject(Rejection::Missing) if is_websocket(&request) => {
            request.extensions_mut().insert(AuthChallenge(auth.clone()));
            None
        }
        Verdict::Reject(rejection) => return Ok(refusal(face, &rejection)),
    };
    let mut response = match endpoint.call(request).await {
        Ok(response) => response.into_response(),
        Err(error) => error.into_response(),
    };
    if let Some(allowance) = allowance {
        put_allowance(response.headers_mut(), &allowance);
    }
    Ok(response)
}
