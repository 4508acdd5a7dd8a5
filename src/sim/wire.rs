//! The wire format of `/v1`: a request parsed just enough to route it ([`Call`], [`Route`],
//! [`Endpoint`]; nothing here has side effects), the create body, the reply (status, JSON body,
//! headers) and errors as the API shows them, `{"error": code, "message": message}`, and the
//! parsing of bearer tokens, form bodies, query strings and percent-encoded path segments.

use axum::body::Bytes;
use axum::http::header;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::limiter::RateInfo;

/// A `/v1` request, parsed just enough to route it; nothing here has side effects.
pub(super) struct Call {
    pub(super) route: Route,
    pub(super) bearer: Option<String>,
    pub(super) query: String,
    pub(super) body: Bytes,
}

/// What a `/v1` request asks for. Everything but the token endpoint authenticates first, so a
/// stranger gets 401 even for an unknown path, as behind a real API gateway.
pub(super) enum Route {
    Token,
    Bearer(Endpoint),
}

pub(super) enum Endpoint {
    Usage,
    CreateClient,
    ListClients,
    RevokeClient(String),
    CreateKey,
    ListKeys,
    RevokeKey(String),
    NoSuchRoute,
    WrongMethod,
}

impl Route {
    pub(super) const TOKEN_LABEL: &'static str = "POST /v1/oauth/token";

    pub(super) fn parse(method: &Method, path: &str) -> Route {
        let Some(rest) = path.strip_prefix("/v1/") else {
            return Route::Bearer(Endpoint::NoSuchRoute);
        };
        let segments: Vec<&str> = rest.split('/').collect();
        // An id that is not valid percent-encoding cannot name a credential; keep it raw so
        // the request ends in a plain 404.
        let id = |raw: &str| percent_decode(raw).unwrap_or_else(|| raw.to_owned());
        let endpoint = match (segments.as_slice(), method) {
            (["oauth", "token"], &Method::POST) => return Route::Token,
            (["oauth", "clients"], &Method::POST) => Endpoint::CreateClient,
            (["oauth", "clients"], &Method::GET) => Endpoint::ListClients,
            (["oauth", "clients", client_id], &Method::DELETE) => Endpoint::RevokeClient(id(client_id)),
            (["api-keys"], &Method::POST) => Endpoint::CreateKey,
            (["api-keys"], &Method::GET) => Endpoint::ListKeys,
            (["api-keys", key_id], &Method::DELETE) => Endpoint::RevokeKey(id(key_id)),
            (["usage"], &Method::GET) => Endpoint::Usage,
            (
                ["oauth", "token"]
                | ["oauth", "clients"]
                | ["oauth", "clients", _]
                | ["api-keys"]
                | ["api-keys", _]
                | ["usage"],
                _,
            ) => Endpoint::WrongMethod,
            _ => Endpoint::NoSuchRoute,
        };
        Route::Bearer(endpoint)
    }
}

impl Endpoint {
    pub(super) fn needs_admin(&self) -> bool {
        !matches!(self, Endpoint::Usage | Endpoint::NoSuchRoute | Endpoint::WrongMethod)
    }

    /// The endpoint name in usage records.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Endpoint::Usage => "GET /v1/usage",
            Endpoint::CreateClient => "POST /v1/oauth/clients",
            Endpoint::ListClients => "GET /v1/oauth/clients",
            Endpoint::RevokeClient(_) => "DELETE /v1/oauth/clients/{client_id}",
            Endpoint::CreateKey => "POST /v1/api-keys",
            Endpoint::ListKeys => "GET /v1/api-keys",
            Endpoint::RevokeKey(_) => "DELETE /v1/api-keys/{id}",
            Endpoint::NoSuchRoute | Endpoint::WrongMethod => "other",
        }
    }
}

/// Body of both create endpoints. Unknown fields are ignored, as the contract asks clients to
/// expect from the real service; `name` is the only required field.
#[derive(Deserialize)]
pub(super) struct CreateBody {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) scopes: Option<Vec<String>>,
}

pub(super) type Outcome = Result<Done, ApiError>;

pub(super) struct Done {
    pub(super) status: StatusCode,
    pub(super) body: Option<Value>,
    /// A credential was created; only such replies can be hit by the create-timeout fault.
    pub(super) created: bool,
    /// The body carries a secret and must not be cached.
    pub(super) no_store: bool,
}

impl Done {
    pub(super) fn ok(body: Value) -> Done {
        Done { status: StatusCode::OK, body: Some(body), created: false, no_store: false }
    }
}

/// An error as the API shows it: `{"error": code, "message": message}`.
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `Retry-After` seconds, for 429 only.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    pub(super) fn rate_limited(retry_after: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "rate limit exceeded")
        }
    }
}

pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

pub(super) fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

pub(super) fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// The result of one `/v1` request plus the rate-limit view every `/v1` response carries.
pub(super) struct Reply {
    pub(super) outcome: Outcome,
    pub(super) rate: RateInfo,
}

impl Reply {
    pub(super) fn created(&self) -> bool {
        matches!(&self.outcome, Ok(done) if done.created)
    }

    pub(super) fn into_response(self) -> Response {
        let (status, body, no_store, retry_after) = match self.outcome {
            Ok(done) => (done.status, done.body, done.no_store, None),
            Err(error) => {
                (error.status, Some(json!({ "error": error.code, "message": error.message })), false, error.retry_after)
            }
        };
        let mut response = match body {
            Some(body) => (status, axum::Json(body)).into_response(),
            None => status.into_response(),
        };
        let headers = response.headers_mut();
        self.rate.insert_headers(headers);
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if no_store {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        response
    }
}

pub(super) fn bearer_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// Splits `a=1&b=2` (query string or form body) into decoded pairs (`+` is a space); `None` if a
/// part is not UTF-8 once decoded.
pub(super) fn parse_pairs(input: &str) -> Option<Vec<(String, String)>> {
    input
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |part: &str| percent_decode(&part.replace('+', " "));
            Some((decode(key)?, decode(value)?))
        })
        .collect()
}

/// A percent-encoded path segment or form part, decoded; `None` when the result is not UTF-8.
fn percent_decode(input: &str) -> Option<String> {
    percent_encoding::percent_decode_str(input).decode_utf8().ok().map(|s| s.into_owned())
}
