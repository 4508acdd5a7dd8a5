//! The HTTP API of `rotator serve` (axum): health, readiness, Prometheus metrics, and the `/v1`
//! routes to list policies and rotations and to request a rotation. Every `/v1` route needs the
//! bearer token (compared in constant time). Errors are JSON `{"error", "message"}`; an internal
//! error carries a request ID and its detail goes to the log only. No response holds a secret:
//! everything served is built from policies, journal rows and outcomes, which hold none.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::daemon::{Accepted, Daemon, Refused};
use crate::policy::Policy;
use crate::rotation::Rotation;
use crate::schedule::Due;
use crate::secret::Secret;

/// The longest request target (path and query) answered; longer ones get `414`. Well below
/// hyper's own limit (64 KiB), which answers with an empty body.
const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header bytes (names and values) answered; more get `431`. Well below hyper's own
/// limit (about 400 KiB of request head, or 100 headers), which answers with an empty body.
const MAX_HEADER_BYTES: usize = 32 * 1024;
/// The largest request body read (a rotation request is a reason of at most 1 KiB and a flag).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// The most of a framework-produced error text passed on as the message.
const MAX_MESSAGE_CHARS: usize = 300;

#[derive(Clone)]
struct AppState {
    daemon: Arc<Daemon>,
    token: Option<Arc<Secret>>,
    /// The address the service listens on (the actual port, also when asked for port 0).
    listen: SocketAddr,
}

/// An API error: a status, a code, a message for the client.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    /// An internal error: the detail is logged with a request ID; the client gets only the ID.
    fn internal(detail: impl std::fmt::Display) -> ApiError {
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(request_id = %request_id, error = %detail, "internal error answering an API request");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("internal error; request id {request_id}"),
        )
    }

    /// An extractor's rejection (bad query string, undecodable path segment, oversized body),
    /// with axum's explanation as the message.
    fn rejected(status: StatusCode, text: String) -> ApiError {
        ApiError::new(status, code(status), bounded(&text))
    }
}

/// The `error` code for a status.
fn code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::MISDIRECTED_REQUEST => "misdirected_request",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_entity",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request_header_fields_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal_error",
    }
}

/// A message for the client from text the framework wrote: one line, no control characters,
/// at most `MAX_MESSAGE_CHARS` characters.
fn bounded(text: &str) -> String {
    let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let clean = clean.trim();
    match clean.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean.to_string(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.code, "message": self.message }))).into_response()
    }
}

/// Compares two byte strings in time that depends only on their lengths (`subtle`), so a caller
/// cannot learn the token a byte at a time from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

async fn require_token(State(state): State<AppState>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else { return next.run(request).await };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        // A token read from a file may end in a newline; neither side's whitespace counts.
        Some(p) if constant_time_eq(p.as_bytes(), token.expose().trim().as_bytes()) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid bearer token").into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing `Authorization: Bearer <token>`")
            .into_response(),
    }
}

/// Whether a `Host` (or an absolute request URI's authority) names this service's own loopback
/// address: a loopback IP or `localhost`, with the port it listens on (80 when none is given).
fn is_own_host(host: &str, listen: SocketAddr) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        // `[::1]` without a port: the colon found is inside the brackets.
        Some((name, port)) if !port.ends_with(']') => (name, port.parse::<u16>().ok()),
        _ => (host, Some(80)),
    };
    let loopback = match name.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => name.eq_ignore_ascii_case("localhost"),
    };
    loopback && port == Some(listen.port())
}

/// Without a token the API answers only requests addressed to its own loopback address. A web
/// page can reach a loopback port, and once its attacker points the page's host name at
/// 127.0.0.1 (DNS rebinding) the browser treats the API as same-origin; but it still sends that
/// host name, never the loopback address, which is what this checks.
async fn require_own_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).map(|v| v.to_str().unwrap_or_default());
    let authority = request.uri().authority().map(|a| a.as_str());
    let named = [host, authority];
    if named.iter().any(Option::is_some) && named.iter().flatten().all(|h| is_own_host(h, state.listen)) {
        return next.run(request).await;
    }
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "misdirected_request",
        format!("without authentication this service answers only requests to http://{}", state.listen),
    )
    .into_response()
}

/// Every error is `{"error", "message"}` JSON, also the ones axum produces itself (`405` with its
/// empty body, plain-text rejections of layers): a non-JSON error response is rewritten, its
/// text (bounded) becoming the message for a `4xx`; its other headers are kept.
async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.headers()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 4 * 1024).await {
        Ok(bytes) if status.is_client_error() => String::from_utf8_lossy(&bytes).into_owned(),
        // A server error's text may describe internals: the status says enough.
        _ => String::new(),
    };
    let message = match bounded(&text) {
        // axum adds the `Allow` header after every layer, so it is not known here.
        m if m.is_empty() && status == StatusCode::METHOD_NOT_ALLOWED => {
            format!("{method} is not allowed here (the `Allow` header lists what is)")
        }
        m if m.is_empty() => status.canonical_reason().unwrap_or("error").to_lowercase(),
        m => m,
    };
    let error = ApiError::new(status, code(status), message).into_response();
    let (error_parts, body) = error.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        if let Some(value) = error_parts.headers.get(&name) {
            parts.headers.insert(name, value.clone());
        }
    }
    Response::from_parts(parts, body)
}

/// Whether a `Content-Type` is JSON: exactly the media type `application/json` (in any case),
/// with or without parameters (`; charset=utf-8`). `application/jsonp` is not JSON.
fn is_json_media_type(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(is_json_media_type)
}

/// Request heads larger than this service needs are refused here, with JSON, before anything
/// else looks at them (hyper's own, larger limits answer with an empty body).
async fn bounded_head(request: Request, next: Next) -> Response {
    let target = request.uri().path_and_query().map(|pq| pq.as_str().len()).unwrap_or(0);
    if target > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            code(StatusCode::URI_TOO_LONG),
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        )
        .into_response();
    }
    let headers: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if headers > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            format!("the request headers are larger than {MAX_HEADER_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

/// A request, body included, gets `limit` from its head to its response; then `408`. (The head
/// itself is bounded by the listener's header timeout.)
async fn bounded_time(State(limit): State<std::time::Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request took longer than {} (request_timeout)", crate::duration::format(limit)),
        )
        .into_response(),
    }
}

/// What the router is told besides the daemon.
#[derive(Debug, Clone)]
pub struct Options {
    /// `None` only when the operator chose to serve without authentication on loopback.
    pub token: Option<Secret>,
    /// The address served, for the `Host` check without a token.
    pub listen: SocketAddr,
    /// `/metrics` needs the token as `/v1` does.
    pub metrics_auth: bool,
    pub request_timeout: std::time::Duration,
}

/// The service's router.
pub fn router(daemon: Arc<Daemon>, options: Options) -> axum::Router {
    let Options { token, listen, metrics_auth, request_timeout } = options;
    let state = AppState { daemon, token: token.map(Arc::new), listen };
    let metrics_route = match metrics_auth {
        true => get(metrics).route_layer(middleware::from_fn_with_state(state.clone(), require_token)),
        false => get(metrics),
    };
    let v1 = axum::Router::new()
        .route("/policies", get(list_policies))
        .route("/policies/{name}", get(get_policy))
        .route("/policies/{name}/rotate", post(rotate))
        .route("/rotations", get(list_rotations))
        .route("/rotations/{id}", get(get_rotation))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        // `layer`, not `route_layer`: unknown routes under /v1 need the token too.
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    let app = axum::Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(ready))
        .route("/metrics", metrics_route)
        .nest("/v1", v1)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone());
    // With a token, a reverse proxy may name the service as it likes.
    let app = match state.token.is_some() {
        true => app,
        false => app.layer(middleware::from_fn_with_state(state, require_own_host)),
    };
    app.layer(middleware::from_fn_with_state(request_timeout, bounded_time))
        .layer(middleware::from_fn(bounded_head))
        .layer(middleware::from_fn(json_errors))
}

/// Readiness: every check by name, `503` naming the failing ones. `policies` fails while the
/// configuration in force is stale (the last reload was rejected and an older set runs).
async fn ready(State(state): State<AppState>) -> Response {
    let journal = match state.daemon.engine.journal.ping().await {
        Ok(()) => json!({ "ok": true }),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: journal unreachable");
            json!({ "ok": false, "message": "the journal is unreachable (see the log)" })
        }
    };
    let reload = state.daemon.reload_status();
    let loaded = state.daemon.policies().len();
    let at = reload.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let policies = match &reload.rejected {
        None => json!({ "ok": true, "loaded": loaded, "last_reload": at }),
        Some(why) => json!({
            "ok": false,
            "loaded": loaded,
            "last_reload": at,
            "message": format!("stale configuration: the reload at {at} was rejected ({why}); the previous set of {loaded} policies keeps running"),
        }),
    };
    let mut checks = json!({ "journal": journal, "policies": policies });
    if let Value::Object(external) = state.daemon.external_checks().await {
        for (name, check) in external {
            checks[name] = check;
        }
    }
    let failing: Vec<String> = checks
        .as_object()
        .map(|o| o.iter().filter(|(_, c)| c["ok"] != json!(true)).map(|(name, _)| name.clone()).collect())
        .unwrap_or_default();
    let (status, word) = match (state.daemon.is_stopping(), failing.is_empty()) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "stopping"),
        (false, true) => (StatusCode::OK, "ready"),
        (false, false) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
    };
    (status, Json(json!({ "status": word, "failing": failing, "checks": checks, "policies": loaded }))).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let snapshot = state.daemon.snapshot().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.daemon.metrics.render(&snapshot))
        .into_response()
}

fn policy_json(policy: &Policy, status: Option<crate::status::PolicyStatus>, due: Option<&Due>) -> Value {
    json!({
        "name": policy.name,
        "description": policy.description,
        "labels": policy.labels,
        "kind": policy.credential.kind,
        "destinations": policy.destinations.iter().map(|d| d.label()).collect::<Vec<_>>(),
        "status": status,
        "due": due,
    })
}

/// Every policy as the last pass saw it: no journal, destination or Toktra read per request.
async fn list_policies(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let view = state.daemon.pass_state().await.map_err(ApiError::internal)?;
    let policies = state.daemon.policies();
    let statuses = crate::status::status(&policies, &view.rotations, Utc::now());
    let out: Vec<Value> = policies
        .iter()
        .zip(statuses)
        .map(|(policy, status)| policy_json(policy, Some(status), view.due.get(&policy.name)))
        .collect();
    Ok(Json(json!({ "policies": out })))
}

/// One policy, read now from the journal.
async fn get_policy(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = name.map_err(|r| ApiError::rejected(r.status(), r.body_text()))?;
    let policies = state.daemon.policies();
    let Some(policy) = policies.iter().find(|p| p.name == name) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no policy `{name}`")));
    };
    let history = state.daemon.engine.journal.history(Some(&name), 1_000).await.map_err(ApiError::internal)?;
    let now = Utc::now();
    let status = crate::status::status(std::slice::from_ref(policy), &history, now).pop();
    let rotations: Vec<&Rotation> = history.iter().collect();
    let due = state.daemon.due(policy, &rotations, now).await;
    Ok(Json(policy_json(policy, status, Some(&due))))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    reason: Option<String>,
    #[serde(default)]
    compromised: bool,
}

async fn rotate(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(|r| ApiError::rejected(r.status(), r.body_text()))?;
    // JSON only: a browser page cannot send that cross-origin without a preflight. Without a
    // token nothing else stops a page from posting, so there even an empty body must say it is
    // JSON (a form or a `fetch` without a preflight cannot). A declared type must be JSON even
    // for an empty body.
    let content_type = headers.get(header::CONTENT_TYPE);
    let json = content_type.is_some_and(is_json_media_type);
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code(StatusCode::PAYLOAD_TOO_LARGE),
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        status => ApiError::rejected(status, r.body_text()),
    })?;
    if !json && (content_type.is_some() || !body.is_empty() || state.token.is_none()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request must be JSON (`Content-Type: application/json`)",
        ));
    }
    let body: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("invalid body: {e}")))?
    };
    if body.compromised && body.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "a compromised rotation needs a `reason`"));
    }
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key) => Some(key.to_string()),
            Err(_) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        },
    };
    match state.daemon.request(&name, body.reason, body.compromised, idempotency_key).await {
        Ok(Accepted { id, replayed: false }) => {
            Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "policy": name, "status": "queued" }))).into_response())
        }
        // A retry of an accepted request: the first one's ID, and where it is now.
        Ok(Accepted { id, replayed: true }) => {
            let journal = &state.daemon.engine.journal;
            let status = match journal.get(&id).await.map_err(ApiError::internal)? {
                Some(rotation) => rotation.phase.as_str().to_string(),
                None => "queued".to_string(),
            };
            Ok((StatusCode::OK, Json(json!({ "id": id, "policy": name, "status": status }))).into_response())
        }
        Err(Refused::UnknownPolicy) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no policy `{name}`")))
        }
        Err(Refused::InFlight(why)) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", why)),
        Err(Refused::Invalid(why)) => Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", why)),
        Err(Refused::KeyReused(why)) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", why))
        }
        Err(Refused::ShuttingDown) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the service is stopping"))
        }
        Err(Refused::Journal(e)) => Err(ApiError::internal(e)),
    }
}

#[derive(Deserialize)]
struct RotationsQuery {
    policy: Option<String>,
    limit: Option<i64>,
}

async fn list_rotations(
    State(state): State<AppState>,
    query: Result<Query<RotationsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::rejected(r.status(), r.body_text()))?;
    let rows = state
        .daemon
        .engine
        .journal
        .history(q.policy.as_deref(), q.limit.unwrap_or(50).clamp(1, 1_000))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "rotations": rows })))
}

async fn get_rotation(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = id.map_err(|r| ApiError::rejected(r.status(), r.body_text()))?;
    if let Some(rotation) = state.daemon.engine.journal.get(&id).await.map_err(ApiError::internal)? {
        let steps = state.daemon.engine.journal.steps(&id).await.map_err(ApiError::internal)?;
        let mut v = serde_json::to_value(&rotation).map_err(ApiError::internal)?;
        v["steps"] = serde_json::to_value(steps).map_err(ApiError::internal)?;
        return Ok(Json(v));
    }
    // Not recorded yet: a request waiting for its turn, whichever process accepted it.
    match state.daemon.engine.journal.request(&id).await.map_err(ApiError::internal)? {
        Some(q) => {
            let mut v = json!({
                "id": q.id,
                "policy": q.policy,
                "phase": "queued",
                "reason": q.reason,
                "compromised": q.compromised,
                "requested_at": q.created_at,
            });
            if !state.daemon.policies().iter().any(|p| p.name == q.policy) {
                v["waiting"] = json!(format!(
                    "policy `{}` is not in this service's policy set (removed or renamed, or not yet added here); the request runs when a process that has it takes it up",
                    q.policy
                ));
            }
            Ok(Json(v))
        }
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no rotation `{id}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_MESSAGE_CHARS, bounded, constant_time_eq, is_json_media_type, is_own_host};
    use axum::http::HeaderValue;

    #[test]
    fn json_media_types() {
        for json in
            ["application/json", "Application/JSON", "application/json; charset=utf-8", " application/json ;x=y"]
        {
            assert!(is_json_media_type(&HeaderValue::from_static(json)), "{json}");
        }
        for other in ["application/jsonp", "application/json-seq", "text/json", "application/x-json", "", "json"] {
            assert!(!is_json_media_type(&HeaderValue::from_static(other)), "{other}");
        }
    }

    #[test]
    fn framework_texts_become_bounded_one_line_messages() {
        assert_eq!(bounded("  Invalid URL:\n\u{1b}[31mx\r "), "Invalid URL:  [31mx");
        let long = bounded(&"é".repeat(1_000));
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn own_hosts() {
        let v4: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for own in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080", "127.0.0.2:8080"] {
            assert!(is_own_host(own, v4), "{own}");
        }
        for other in [
            "evil.example:8080",
            "evil.example",
            "127.0.0.1",
            "127.0.0.1:8081",
            "127.0.0.1:",
            "localhost.evil.example:8080",
            "127.0.0.1.nip.io:8080",
            "[::1]",
            "0.0.0.0:8080",
            "",
        ] {
            assert!(!is_own_host(other, v4), "{other}");
        }
        let port_80: std::net::SocketAddr = "[::1]:80".parse().unwrap();
        assert!(is_own_host("[::1]", port_80) && is_own_host("localhost", port_80));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
