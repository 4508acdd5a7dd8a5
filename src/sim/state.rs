//! The simulated store: OAuth clients and API keys (kept after revocation, in creation order, so
//! positions and cursors stay stable), issued access tokens, per-credential usage and [`Stats`],
//! all behind one lock in [`Shared`] with the settings fixed at start; the views of a credential
//! that may leave the simulator (list item, create response, [`Inspected`]).
//!
//! Invariants: a client secret or API key leaves only through `Credential::created_response`, in
//! the one reply that issues it (an access token only in the token response), and `Credential` is
//! deliberately not `Debug`. The lock is a `std::sync::Mutex` never
//! held across an `.await`, so each request is applied atomically. Token expiry is judged on the
//! monotonic clock, so a wall-clock step neither revives nor kills a token.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Config;
use super::clock::{Clock, Now};
use super::faults::{Dialect, Faults, RevokedInLists};
use super::limiter::{Limiter, RateInfo};
use super::pagination::MAX_LIMIT;
use super::wire::{ApiError, Call, Done, Outcome, Reply, Route, not_found, parse_pairs, unauthorized};

/// Expired access tokens are only purged when the token map has grown this much since the last
/// purge, so issuing a token stays O(1) amortised even in benchmarks.
const TOKEN_PURGE_MIN: usize = 1024;

/// One credential as the inspection view shows it: everything but the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Inspected {
    /// The client_id of an OAuth client or the id of an API key.
    pub id: String,
    /// `"oauth_client"` or `"api_key"`.
    pub kind: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// `"active"` or `"revoked"`.
    pub state: String,
    /// True only for the credentials preset through [`Config`].
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Counters of what the simulator did, for tests and benchmarks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// `/v1` requests seen, including those hit by a fault.
    pub requests: u64,
    /// `/v1` responses by status; dropped connections have no status and are not counted here.
    pub by_status: BTreeMap<u16, u64>,
    pub injected_errors: u64,
    pub injected_rate_limits: u64,
    pub injected_drops: u64,
    pub injected_create_timeouts: u64,
    /// Creates received and not carried out yet (see `Faults::create_delay_ms`).
    pub creates_pending: u64,
    /// Requests each credential made (by ID; a token request by the client it names), by
    /// endpoint (`POST /v1/oauth/token` for token requests): what each credential's rate limit
    /// counts.
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// 429s from the real per-credential limit.
    pub real_rate_limits: u64,
    /// Credentials created through the API (a create hit by the timeout fault counts: it happened).
    pub creates: u64,
    pub revokes: u64,
    /// Access tokens issued, by client ID (so tests can see a management token being renewed).
    pub tokens_issued: BTreeMap<String, u64>,
}

impl Stats {
    pub(super) fn record(&mut self, status: StatusCode) {
        *self.by_status.entry(status.as_u16()).or_default() += 1;
    }
}

/// What the handlers share: settings fixed at start, and the mutable state behind one lock.
pub(super) struct Shared {
    pub(super) token_lifetime: Duration,
    /// `Config::page_size` clamped to 1..=100; both the default and the largest page.
    pub(super) page_size: usize,
    pub(super) rate_limit: u32,
    rate_window_secs: u64,
    state: Mutex<StateInner>,
    /// Lets injected delays end early when the simulator shuts down.
    shutdown: watch::Receiver<bool>,
    /// The time every request reads; tests may move it forward.
    pub(super) clock: Clock,
}

/// Everything that changes while the simulator runs.
pub(super) struct StateInner {
    pub(super) faults: Faults,
    pub(super) dialect: Dialect,
    /// All credentials ever created, in creation order, never removed: indices are stable and
    /// the order is the pagination order.
    pub(super) credentials: Vec<Credential>,
    /// Credential id (client_id or key id) to index.
    pub(super) by_id: HashMap<String, usize>,
    /// API key value to index. A hash lookup is not constant-time; fine for a simulator.
    by_key: HashMap<String, usize>,
    /// Issued access tokens; expired ones linger until the next purge but never authenticate.
    tokens: HashMap<String, AccessToken>,
    /// Token map size at which the next purge of expired tokens runs.
    token_purge_at: usize,
    pub(super) limiter: Limiter,
    pub(super) stats: Stats,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    OAuthClient,
    ApiKey,
}

impl Kind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Kind::OAuthClient => "oauth_client",
            Kind::ApiKey => "api_key",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::OAuthClient => "oauth client",
            Kind::ApiKey => "api key",
        }
    }
}

/// A stored credential. Deliberately not `Debug`, because it holds the secret.
pub(super) struct Credential {
    pub(super) id: String,
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) description: Option<String>,
    scopes: Vec<String>,
    /// The client secret or the API key itself; compared on use, never shown after creation.
    pub(super) secret: String,
    pub(super) admin: bool,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    /// Requests this credential authenticated, by endpoint; feeds `GET /v1/usage`.
    pub(super) usage: BTreeMap<&'static str, Usage>,
}

pub(super) struct Usage {
    pub(super) requests: u64,
    pub(super) last: DateTime<Utc>,
}

struct AccessToken {
    /// Index of the OAuth client the token was issued to.
    client: usize,
    expires_at: Instant,
}

impl Credential {
    pub(super) fn new(kind: Kind, name: String, scopes: Vec<String>, secret: String, now: Now) -> Credential {
        let id = match kind {
            Kind::OAuthClient => format!("cl_{}", random_alphanumeric(20)),
            Kind::ApiKey => format!("key_{}", random_alphanumeric(20)),
        };
        Credential {
            id,
            kind,
            name,
            description: None,
            scopes,
            secret,
            admin: false,
            created_at: now.wall,
            revoked_at: None,
            last_used_at: None,
            usage: BTreeMap::new(),
        }
    }

    pub(super) fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }

    /// The first characters of an API key, shown so people can tell keys apart.
    fn prefix(&self) -> String {
        self.secret.chars().take(12).collect()
    }

    /// The item shape of the list endpoints: never the secret. A revoked credential (listed only
    /// in a dialect that keeps them) says so the way the dialect does.
    pub(super) fn list_item(&self, revoked_in_lists: RevokedInLists) -> Value {
        let mut item = match self.kind {
            Kind::OAuthClient => json!({
                "client_id": self.id,
                "name": self.name,
                "description": self.description,
                "scopes": self.scopes,
                "created_at": self.created_at,
                "last_used_at": self.last_used_at,
            }),
            Kind::ApiKey => json!({
                "id": self.id,
                "name": self.name,
                "prefix": self.prefix(),
                "scopes": self.scopes,
                "created_at": self.created_at,
                "last_used_at": self.last_used_at,
            }),
        };
        match (revoked_in_lists, self.revoked_at) {
            (RevokedInLists::RevokedAt, Some(at)) => item["revoked_at"] = json!(at),
            (RevokedInLists::Status, revoked_at) => {
                item["status"] = json!(if revoked_at.is_some() { "revoked" } else { "active" })
            }
            _ => {}
        }
        item
    }

    /// The create response: the list item plus the secret, the one time it is ever shown.
    pub(super) fn created_response(&self) -> Value {
        let mut body = self.list_item(RevokedInLists::Omit);
        let (field, secret) = match self.kind {
            Kind::OAuthClient => ("client_secret", &self.secret),
            Kind::ApiKey => ("key", &self.secret),
        };
        if let Value::Object(map) = &mut body {
            map.insert(field.to_owned(), Value::String(secret.clone()));
        }
        body
    }

    fn inspected(&self) -> Inspected {
        Inspected {
            id: self.id.clone(),
            kind: self.kind.as_str().to_owned(),
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            state: if self.is_active() { "active" } else { "revoked" }.to_owned(),
            admin: self.admin,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
        }
    }
}

impl Shared {
    pub(super) fn new(config: Config, shutdown: watch::Receiver<bool>) -> Shared {
        let clock = Clock::default();
        let now = clock.now();
        let mut state = StateInner {
            faults: config.faults,
            dialect: config.dialect,
            credentials: Vec::new(),
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            tokens: HashMap::new(),
            token_purge_at: TOKEN_PURGE_MIN,
            limiter: Limiter::new(config.rate_limit_window.as_secs().max(1)),
            stats: Stats::default(),
        };
        let admin_scopes = vec!["admin".to_owned()];
        if let Some(key) = config.admin_api_key {
            let mut cred =
                Credential::new(Kind::ApiKey, "toktra-sim admin key".to_owned(), admin_scopes.clone(), key, now);
            cred.admin = true;
            state.insert(cred);
        }
        if let Some((client_id, secret)) = config.admin_client {
            let mut cred =
                Credential::new(Kind::OAuthClient, "toktra-sim admin client".to_owned(), admin_scopes, secret, now);
            cred.id = client_id;
            cred.admin = true;
            state.insert(cred);
        }
        Shared {
            token_lifetime: config.token_lifetime,
            page_size: config.page_size.clamp(1, MAX_LIMIT),
            rate_limit: config.rate_limit_per_minute,
            rate_window_secs: config.rate_limit_window.as_secs().max(1),
            state: Mutex::new(state),
            shutdown,
            clock,
        }
    }

    /// A panic while the lock was held cannot leave the state half-updated in a way that matters
    /// more than refusing every later request would, so poisoning is ignored.
    pub(super) fn lock(&self) -> MutexGuard<'_, StateInner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn credentials(&self) -> Vec<Inspected> {
        self.lock().credentials.iter().map(Credential::inspected).collect()
    }

    /// Sleeps, but returns early once the simulator shuts down.
    pub(super) async fn pause(&self, duration: Duration) {
        let mut stop = self.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            _ = stop.wait_for(|stopping| *stopping) => {}
        }
    }

    /// Turns a reply into the HTTP response and counts its status.
    pub(super) fn finish(&self, reply: Reply) -> Response {
        let response = reply.into_response();
        self.lock().stats.record(response.status());
        response
    }

    pub(super) fn fresh_rate(&self, now: Now) -> RateInfo {
        RateInfo { limit: self.rate_limit, remaining: self.rate_limit, reset: now.unix + self.rate_window_secs }
    }
}

impl StateInner {
    pub(super) fn insert(&mut self, cred: Credential) {
        let index = self.credentials.len();
        self.by_id.insert(cred.id.clone(), index);
        if cred.kind == Kind::ApiKey {
            self.by_key.insert(cred.secret.clone(), index);
        }
        self.credentials.push(cred);
    }

    pub(super) fn issue_token(&mut self, token: String, client: usize, expires_at: Instant, now: Now) {
        if self.tokens.len() >= self.token_purge_at {
            self.tokens.retain(|_, token| token.expires_at > now.mono);
            self.token_purge_at = (self.tokens.len() * 2).max(TOKEN_PURGE_MIN);
        }
        self.tokens.insert(token, AccessToken { client, expires_at });
    }

    /// The credential a bearer token stands for, without side effects (injected faults use it to
    /// report the caller's rate-limit budget).
    pub(super) fn resolve(&self, bearer: Option<&str>, now: Now) -> Result<usize, ApiError> {
        let bearer = bearer.ok_or_else(|| unauthorized("missing bearer token"))?;
        let index = if let Some(token) = self.tokens.get(bearer) {
            if token.expires_at <= now.mono {
                return Err(unauthorized("access token expired"));
            }
            token.client
        } else if let Some(&index) = self.by_key.get(bearer) {
            index
        } else {
            return Err(unauthorized("invalid access token or api key"));
        };
        if !self.credentials[index].is_active() {
            return Err(unauthorized("credential revoked"));
        }
        Ok(index)
    }

    /// The rate-limit key of a request, if it names a credential; see [`Shared::injected_error`].
    pub(super) fn rate_key(&self, call: &Call, now: Now) -> Option<String> {
        match &call.route {
            Route::Token => std::str::from_utf8(&call.body)
                .ok()
                .and_then(parse_pairs)?
                .into_iter()
                .rev()
                .find(|(key, value)| key == "client_id" && !value.is_empty())
                .map(|(_, value)| value),
            Route::Bearer(_) => {
                let index = self.resolve(call.bearer.as_deref(), now).ok()?;
                Some(self.credentials[index].id.clone())
            }
        }
    }

    pub(super) fn touch(&mut self, index: usize, endpoint: &'static str, now: Now) {
        let cred = &mut self.credentials[index];
        cred.last_used_at = Some(now.wall);
        let usage = cred.usage.entry(endpoint).or_insert(Usage { requests: 0, last: now.wall });
        usage.requests += 1;
        usage.last = now.wall;
    }

    pub(super) fn revoke(&mut self, kind: Kind, id: &str, now: Now) -> Outcome {
        let index = self
            .by_id
            .get(id)
            .copied()
            .filter(|&index| self.credentials[index].kind == kind && self.credentials[index].is_active())
            .ok_or_else(|| not_found(format!("no active {} with id {id:?}", kind.noun())))?;
        self.credentials[index].revoked_at = Some(now.wall);
        if kind == Kind::OAuthClient {
            // `resolve` already refuses tokens of revoked clients; dropping them frees memory.
            self.tokens.retain(|_, token| token.client != index);
        }
        self.stats.revokes += 1;
        tracing::debug!(id, kind = kind.as_str(), "simulator revoked a credential");
        Ok(Done { status: StatusCode::NO_CONTENT, body: None, created: false, no_store: false })
    }
}

/// Constant-time comparison, so the simulator does not teach a timing leak by example.
pub(super) fn same_secret(stored: &str, given: &str) -> bool {
    let (stored, given) = (stored.as_bytes(), given.as_bytes());
    stored.len() == given.len() && stored.iter().zip(given).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

pub(super) fn random_alphanumeric(len: usize) -> String {
    rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}
