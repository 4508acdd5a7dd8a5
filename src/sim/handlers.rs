//! The axum routes: `/v1/{*path}` (faults first, then authentication, the rate limit and the
//! endpoint, applied to the state under one lock), the `/_sim` inspection routes and a JSON 404
//! for anything else. What each `/v1` endpoint does is here too, as methods of [`Shared`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::json;

use super::clock::Now;
use super::conn::Conn;
use super::faults::{Dialect, Faults, RevokedInLists, TokenError, roll};
use super::limiter::RateInfo;
use super::pagination::{CursorTag, Page, paginate};
use super::state::{Credential, Inspected, Kind, Shared, StateInner, Stats, random_alphanumeric, same_secret};
use super::wire::{
    ApiError, Call, CreateBody, Done, Endpoint, Outcome, Reply, Route, bad_request, bearer_token, not_found,
    parse_pairs,
};

/// Request bodies are tiny JSON or form documents; anything bigger is a client bug.
const MAX_BODY_BYTES: usize = 1 << 20;

/// The simulator's routes over the shared state.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/{*path}", any(v1))
        .route("/_sim/credentials", get(inspect_credentials))
        .route("/_sim/faults", get(inspect_faults).put(replace_faults))
        .route("/_sim/dialect", get(inspect_dialect).put(replace_dialect))
        .route("/_sim/stats", get(inspect_stats))
        .fallback(unknown_route)
        .with_state(shared)
}

/// Every `/v1` request. Faults are decided here, in the documented order, before the request
/// touches any state; only the create timeout comes after, because it needs a real create.
async fn v1(State(shared): State<Arc<Shared>>, ConnectInfo(conn): ConnectInfo<Conn>, request: Request) -> Response {
    let faults = {
        let mut state = shared.lock();
        state.stats.requests += 1;
        state.faults.clone()
    };
    if faults.latency_ms > 0 {
        shared.pause(Duration::from_millis(faults.latency_ms)).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            let reply = Reply {
                outcome: Err(bad_request("request body unreadable or larger than 1 MiB")),
                rate: shared.fresh_rate(shared.clock.now()),
            };
            return shared.finish(reply);
        }
    };
    let call = Call {
        route: Route::parse(&parts.method, parts.uri.path()),
        bearer: bearer_token(&parts.headers),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        body,
    };

    if roll(faults.drop_rate) {
        shared.lock().stats.injected_drops += 1;
        tracing::debug!(path = parts.uri.path(), "simulator drops the connection");
        conn.kill();
        // Never reaches the client: writing it fails on the killed connection.
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let creates = matches!(call.route, Route::Bearer(Endpoint::CreateClient | Endpoint::CreateKey));
    if roll(faults.error_rate) || (creates && roll(faults.create_error_rate)) {
        return shared.finish(shared.injected_error(&call));
    }
    if roll(faults.rate_limit_rate) {
        return shared.finish(shared.injected_rate_limit());
    }

    let reply = if creates && faults.create_delay_ms > 0 {
        shared.lock().stats.creates_pending += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let delayed = shared.clone();
        tokio::spawn(async move {
            delayed.pause(Duration::from_millis(faults.create_delay_ms)).await;
            let reply = delayed.handle(&call);
            delayed.lock().stats.creates_pending -= 1;
            let _ = tx.send(reply);
        });
        match rx.await {
            Ok(reply) => reply,
            Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    } else {
        shared.handle(&call)
    };
    let created = reply.created();
    let response = shared.finish(reply);
    if created && roll(faults.create_timeout_rate) {
        shared.lock().stats.injected_create_timeouts += 1;
        tracing::debug!("simulator holds back a create response");
        shared.pause(faults.create_timeout_delay()).await;
    }
    response
}

// ---------------------------------------------------------------------------------------------
// The `/v1` endpoints, each applied to the state under its one lock.

impl Shared {
    fn injected_error(&self, call: &Call) -> Reply {
        let now = self.clock.now();
        let mut state = self.lock();
        state.stats.injected_errors += 1;
        // The headers still describe the caller's real budget, which the fault did not touch.
        let rate = match state.rate_key(call, now) {
            Some(key) => state.limiter.peek(&key, self.rate_limit, now.unix),
            None => self.fresh_rate(now),
        };
        Reply {
            outcome: Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error (injected by the simulator)",
            )),
            rate,
        }
    }

    fn injected_rate_limit(&self) -> Reply {
        let now = self.clock.now();
        self.lock().stats.injected_rate_limits += 1;
        Reply {
            outcome: Err(ApiError::rate_limited(1)),
            rate: RateInfo { limit: self.rate_limit, remaining: 0, reset: now.unix + 1 },
        }
    }

    /// Applies one `/v1` request to the state, atomically.
    fn handle(&self, call: &Call) -> Reply {
        let now = self.clock.now();
        let mut state = self.lock();
        let mut rate = self.fresh_rate(now);
        let outcome = match &call.route {
            Route::Token => self.token(&mut state, call, now, &mut rate),
            Route::Bearer(endpoint) => self
                .authenticate(&mut state, endpoint, call, now, &mut rate)
                .and_then(|caller| self.endpoint(&mut state, caller, endpoint, call, now)),
        };
        Reply { outcome, rate }
    }

    /// `POST /v1/oauth/token`. The limiter runs before the secret check, keyed by the claimed
    /// client_id, as a real service must to slow down secret guessing.
    fn token(&self, state: &mut StateInner, call: &Call, now: Now, rate: &mut RateInfo) -> Outcome {
        let form = std::str::from_utf8(&call.body)
            .ok()
            .and_then(parse_pairs)
            .ok_or_else(|| bad_request("token request body must be application/x-www-form-urlencoded"))?;
        let field = |name: &str| {
            form.iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
                .filter(|value| !value.is_empty())
        };
        if let Some(client_id) = field("client_id") {
            *state
                .stats
                .calls
                .entry(client_id.to_owned())
                .or_default()
                .entry("POST /v1/oauth/token".into())
                .or_default() += 1;
            let (info, allowed) = state.limiter.take(client_id, self.rate_limit, now.unix);
            *rate = info;
            if !allowed {
                state.stats.real_rate_limits += 1;
                return Err(ApiError::rate_limited(info.retry_after(now)));
            }
        }
        match field("grant_type") {
            Some("client_credentials") => {}
            Some(other) => return Err(bad_request(format!("unsupported grant_type {other:?}"))),
            None => return Err(bad_request("grant_type is required")),
        }
        let (Some(client_id), Some(secret)) = (field("client_id"), field("client_secret")) else {
            return Err(bad_request("client_id and client_secret are required"));
        };
        let client = state
            .by_id
            .get(client_id)
            .copied()
            .filter(|&index| {
                let cred = &state.credentials[index];
                cred.kind == Kind::OAuthClient && cred.is_active() && same_secret(&cred.secret, secret)
            })
            .ok_or_else(|| {
                let (status, code) = match state.dialect.token_error {
                    TokenError::InvalidClient401 => (StatusCode::UNAUTHORIZED, "invalid_client"),
                    TokenError::InvalidClient400 => (StatusCode::BAD_REQUEST, "invalid_client"),
                    TokenError::Unauthorized401 => (StatusCode::UNAUTHORIZED, "unauthorized"),
                };
                ApiError::new(status, code, "unknown or revoked client, or wrong client secret")
            })?;
        let token = format!("tat_{}", random_alphanumeric(40));
        state.issue_token(token.clone(), client, now.mono + self.token_lifetime, now);
        *state.stats.tokens_issued.entry(client_id.to_string()).or_default() += 1;
        state.touch(client, Route::TOKEN_LABEL, now);
        Ok(Done {
            status: StatusCode::OK,
            body: Some(json!({
                "access_token": token,
                "token_type": "bearer",
                // Whole seconds, rounded down, so a client never believes a token lives longer
                // than it does.
                "expires_in": self.token_lifetime.as_secs(),
            })),
            created: false,
            // RFC 6749 section 5.1: token responses must not be cached.
            no_store: true,
        })
    }

    /// Finds the credential behind the bearer token, records its use and charges its budget.
    /// A credential counts as used even when the limiter then refuses the request: it did
    /// authenticate, which is what `last_used_at` reports.
    fn authenticate(
        &self,
        state: &mut StateInner,
        endpoint: &Endpoint,
        call: &Call,
        now: Now,
        rate: &mut RateInfo,
    ) -> Result<usize, ApiError> {
        let caller = state.resolve(call.bearer.as_deref(), now)?;
        state.touch(caller, endpoint.label(), now);
        let key = state.credentials[caller].id.clone();
        *state.stats.calls.entry(key.clone()).or_default().entry(endpoint.label().to_owned()).or_default() += 1;
        let (info, allowed) = state.limiter.take(&key, self.rate_limit, now.unix);
        *rate = info;
        if !allowed {
            state.stats.real_rate_limits += 1;
            return Err(ApiError::rate_limited(info.retry_after(now)));
        }
        Ok(caller)
    }

    fn endpoint(&self, state: &mut StateInner, caller: usize, endpoint: &Endpoint, call: &Call, now: Now) -> Outcome {
        if endpoint.needs_admin() && !state.credentials[caller].admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this credential may not manage credentials",
            ));
        }
        match endpoint {
            Endpoint::Usage => self.usage(state, caller, call, now),
            Endpoint::CreateClient => self.create(state, Kind::OAuthClient, call, now),
            Endpoint::CreateKey => self.create(state, Kind::ApiKey, call, now),
            Endpoint::ListClients => self.list(state, Kind::OAuthClient, call, now),
            Endpoint::ListKeys => self.list(state, Kind::ApiKey, call, now),
            Endpoint::RevokeClient(id) | Endpoint::RevokeKey(id) if state.faults.refuse_revocation.contains(id) => {
                Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "revocation refused (injected by the simulator)"))
            }
            Endpoint::RevokeClient(id) => state.revoke(Kind::OAuthClient, id, now),
            Endpoint::RevokeKey(id) => state.revoke(Kind::ApiKey, id, now),
            Endpoint::NoSuchRoute => Err(not_found("no such endpoint")),
            Endpoint::WrongMethod => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )),
        }
    }

    fn create(&self, state: &mut StateInner, kind: Kind, call: &Call, now: Now) -> Outcome {
        let body: CreateBody = serde_json::from_slice(&call.body)
            .map_err(|error| bad_request(format!("invalid request body: {error}")))?;
        if body.name.trim().is_empty() {
            return Err(bad_request("name must not be empty"));
        }
        let secret = match kind {
            Kind::OAuthClient => format!("tcs_{}", random_alphanumeric(40)),
            Kind::ApiKey => format!("tk_live_{}", random_alphanumeric(40)),
        };
        let mut cred = Credential::new(kind, body.name, body.scopes.unwrap_or_default(), secret, now);
        // The API-key contract has no description; an unknown field is accepted and ignored.
        if kind == Kind::OAuthClient {
            cred.description = body.description;
        }
        let response = cred.created_response();
        tracing::debug!(id = %cred.id, kind = kind.as_str(), name = %cred.name, "simulator created a credential");
        state.insert(cred);
        state.stats.creates += 1;
        Ok(Done { status: StatusCode::CREATED, body: Some(response), created: true, no_store: true })
    }

    fn list(&self, state: &StateInner, kind: Kind, call: &Call, now: Now) -> Outcome {
        let tag = match kind {
            Kind::OAuthClient => CursorTag::Clients,
            Kind::ApiKey => CursorTag::Keys,
        };
        let page = Page::from_query(&call.query, self.page_size, tag, now)?;
        // The position of a credential is its index in creation order, so a cursor keeps its
        // place even when credentials before it are revoked between two pages.
        let revoked_in_lists = state.dialect.revoked_in_lists;
        let listed =
            state.credentials.iter().enumerate().filter(|(_, cred)| {
                cred.kind == kind && (cred.is_active() || revoked_in_lists != RevokedInLists::Omit)
            });
        let total = listed.clone().count();
        let items = listed.map(|(index, cred)| (index as u64, cred.list_item(revoked_in_lists)));
        Ok(Done::ok(paginate(items, page, total, tag, now)))
    }

    /// `GET /v1/usage`: the caller's own request counts per endpoint, which are synthetic but
    /// real enough to check that a credential works.
    fn usage(&self, state: &StateInner, caller: usize, call: &Call, now: Now) -> Outcome {
        let page = Page::from_query(&call.query, self.page_size, CursorTag::Usage, now)?;
        let usage = &state.credentials[caller].usage;
        let items = usage.iter().enumerate().map(|(position, (endpoint, usage))| {
            let item = json!({
                "timestamp": usage.last,
                "endpoint": endpoint,
                "requests": usage.requests,
            });
            (position as u64, item)
        });
        Ok(Done::ok(paginate(items, page, usage.len(), CursorTag::Usage, now)))
    }
}

// ---------------------------------------------------------------------------------------------
// Inspection routes: no auth, no faults, no rate limits.

async fn inspect_credentials(State(shared): State<Arc<Shared>>) -> axum::Json<Vec<Inspected>> {
    axum::Json(shared.credentials())
}

async fn inspect_faults(State(shared): State<Arc<Shared>>) -> axum::Json<Faults> {
    axum::Json(shared.lock().faults.clone())
}

async fn replace_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let faults = serde_json::from_slice::<Faults>(&body)
        .map_err(|error| format!("invalid faults: {error}"))
        .and_then(|faults| faults.check().map(|()| faults));
    match faults {
        Ok(faults) => {
            shared.lock().faults = faults.clone();
            axum::Json(faults).into_response()
        }
        Err(message) => {
            (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": "bad_request", "message": message }))).into_response()
        }
    }
}

async fn inspect_dialect(State(shared): State<Arc<Shared>>) -> axum::Json<Dialect> {
    axum::Json(shared.lock().dialect)
}

async fn replace_dialect(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Dialect>(&body) {
        Ok(dialect) => {
            shared.lock().dialect = dialect;
            axum::Json(dialect).into_response()
        }
        Err(error) => {
            let message = format!("invalid dialect: {error}");
            (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": "bad_request", "message": message }))).into_response()
        }
    }
}

async fn inspect_stats(State(shared): State<Arc<Shared>>) -> axum::Json<Stats> {
    axum::Json(shared.lock().stats.clone())
}

async fn unknown_route() -> Response {
    let body = json!({ "error": "not_found", "message": "no such route" });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}
