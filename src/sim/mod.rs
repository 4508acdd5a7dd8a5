//! An in-process HTTP simulator of the Toktra API, the stand-in for the real service in tests,
//! benchmarks and the quickstart. It owns the simulated credential store (OAuth clients, API
//! keys, access tokens), the per-credential rate limiter, fault injection and the `/_sim`
//! inspection view; it implements the contract in `toktra-api.md`, including the parts the real
//! docs leave open, and deliberately behaves like the contract rather than like a happy path.
//!
//! Invariants: a secret (client secret, API key, access token) leaves the simulator only in the
//! single response that issues it; list endpoints, the inspection view, [`Stats`] and every
//! `Debug` output never contain one. A request hit by an injected drop, 500 or 429 has no effect.
//! All state sits behind one `std::sync::Mutex` that is never held across an `.await`, so every
//! request is applied atomically.
//!
//! Surface: `/v1/...` is the API (faults, rate limits and auth apply); `/_sim/credentials`,
//! `/_sim/faults` (GET, PUT replaces) and `/_sim/stats` are the unauthenticated test view, never
//! subject to faults or limits.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::serve::IncomingStream;
use chrono::{DateTime, SubsecRound, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Length of one rate-limit window.
const RATE_WINDOW_SECS: u64 = 60;
/// The documented upper bound of the `limit` query parameter.
const MAX_LIMIT: usize = 100;
/// Cursors expire (the docs say so, and the rotator must never store one); ten minutes is long
/// enough for any listing and short enough that a stored cursor fails in a long-running test.
const CURSOR_TTL_SECS: u64 = 600;
/// Request bodies are tiny JSON or form documents; anything bigger is a client bug.
const MAX_BODY_BYTES: usize = 1 << 20;
/// What `create_timeout_delay_ms = 0` means: longer than any sane client timeout.
const DEFAULT_CREATE_TIMEOUT_DELAY_MS: u64 = 30_000;
/// How long `shutdown` waits for in-flight requests before it aborts the server task.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Expired access tokens are only purged when the token map has grown this much since the last
/// purge, so issuing a token stays O(1) amortised even in benchmarks.
const TOKEN_PURGE_MIN: usize = 1024;

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Fault injection knobs; all rates are probabilities 0.0..=1.0 per request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every `/v1` request before anything else happens.
    pub latency_ms: u64,
    /// Share of requests answered `500 internal_error` without doing anything.
    pub error_rate: f64,
    /// Share of requests answered `429 rate_limited` (`Retry-After: 1`) without doing anything.
    pub rate_limit_rate: f64,
    /// Share of requests whose connection is dropped without a response and without effect.
    pub drop_rate: f64,
    /// Share of successful creates (`POST` of a client or key) whose response is held back for
    /// `create_timeout_delay_ms`, so the credential exists but the client times out.
    pub create_timeout_rate: f64,
    /// Delay of a create hit by `create_timeout_rate`; 0 means 30000.
    pub create_timeout_delay_ms: u64,
    /// Share of creates answered `500 internal_error` without doing anything (the create
    /// endpoint failing while the rest of the API works).
    pub create_error_rate: f64,
    /// Creates are carried out this long after they arrive, in a task of their own, so a
    /// create whose client has gone (killed, timed out) still lands later, as a vendor's queue
    /// would have it. 0: at once.
    pub create_delay_ms: u64,
    /// Credential IDs whose revocation is refused with `403 forbidden` (a vendor protecting a
    /// credential, or a management credential lacking the right), until the list changes.
    pub refuse_revocation: Vec<String>,
}

impl Faults {
    /// Rejects rates a person could not have meant, so a typo in `PUT /_sim/faults` is loud
    /// instead of silently meaning "never" or "always".
    fn check(&self) -> Result<(), String> {
        let rates = [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("drop_rate", self.drop_rate),
            ("create_timeout_rate", self.create_timeout_rate),
            ("create_error_rate", self.create_error_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0.0 and 1.0, got {rate}"));
            }
        }
        Ok(())
    }

    fn create_timeout_delay(&self) -> Duration {
        match self.create_timeout_delay_ms {
            0 => Duration::from_millis(DEFAULT_CREATE_TIMEOUT_DELAY_MS),
            ms => Duration::from_millis(ms),
        }
    }
}

/// Readings of what `toktra-api.md` leaves open. Each one is a switch, so rotator is tested
/// against every reasonable vendor, not just the one this simulator happens to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dialect {
    pub revoked_in_lists: RevokedInLists,
    pub token_error: TokenError,
}

/// Whether list endpoints keep revoked credentials (undocumented; vendors do both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokedInLists {
    /// Revoked credentials disappear from lists.
    #[default]
    Omit,
    /// Revoked credentials stay listed with `revoked_at` set.
    RevokedAt,
    /// Revoked credentials stay listed with `"status": "revoked"` (and no `revoked_at`).
    Status,
}

/// How the token endpoint refuses unknown, revoked or wrong client credentials (the contract
/// allows both the API's own shape and RFC 6749's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenError {
    /// `401 {"error": "invalid_client"}`
    #[default]
    InvalidClient401,
    /// `400 {"error": "invalid_client"}` (RFC 6749 section 5.2 allows 400)
    InvalidClient400,
    /// `401 {"error": "unauthorized"}`, like every other endpoint
    Unauthorized401,
}

/// How a simulator behaves; fixed at start except for `faults` and `dialect`, which
/// `set_faults`/`set_dialect` (and `PUT /_sim/faults`, `PUT /_sim/dialect`) replace.
#[derive(Clone)]
pub struct Config {
    /// `expires_in` of issued access tokens; tests set seconds to watch tokens expire.
    pub token_lifetime: Duration,
    /// Page size when the client gives no `limit`, and also the largest page served when it is
    /// below 100 (so tests can force one item per page whatever `limit` the client sends).
    pub page_size: usize,
    /// Requests per credential per rate-limit window.
    pub rate_limit_per_minute: u32,
    /// Length of a rate-limit window: one minute as Toktra documents; tests shorten it so that
    /// waiting for a window to reset takes seconds.
    pub rate_limit_window: Duration,
    /// Faults active from the first request on.
    pub faults: Faults,
    /// Readings of the contract's open questions, active from the first request on.
    pub dialect: Dialect,
    /// A pre-existing API key with management rights, e.g. `tk_admin_...`.
    pub admin_api_key: Option<String>,
    /// A pre-existing OAuth client `(client_id, client_secret)` with management rights.
    pub admin_client: Option<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token_lifetime: Duration::from_secs(3600),
            page_size: 25,
            rate_limit_per_minute: 1000,
            rate_limit_window: Duration::from_secs(RATE_WINDOW_SECS),
            faults: Faults::default(),
            dialect: Dialect::default(),
            admin_api_key: None,
            admin_client: None,
        }
    }
}

// Written by hand because the derived impl would print the admin secrets into logs.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("token_lifetime", &self.token_lifetime)
            .field("page_size", &self.page_size)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("faults", &self.faults)
            .field("dialect", &self.dialect)
            .field("admin_api_key", &self.admin_api_key.as_ref().map(|_| "<redacted>"))
            .field("admin_client", &self.admin_client.as_ref().map(|(id, _)| (id, "<redacted>")))
            .finish()
    }
}

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
    fn record(&mut self, status: StatusCode) {
        *self.by_status.entry(status.as_u16()).or_default() += 1;
    }
}

/// A running simulator. Dropping it stops the server as `shutdown` does, without waiting.
pub struct Simulator {
    /// Where the server listens.
    addr: SocketAddr,
    /// Credential store, faults and stats, shared with the request handlers.
    shared: Arc<Shared>,
    /// Sending `true` (or dropping the sender) starts a graceful shutdown and cuts injected
    /// delays short, so a test's shutdown never waits out a 30 s create-timeout fault.
    shutdown: watch::Sender<bool>,
    /// The task running the server; it ends once the shutdown signal fires.
    server: JoinHandle<io::Result<()>>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Simulator {
    /// Bind 127.0.0.1:port (0 = any free port) and serve in a background tokio task.
    pub async fn start(port: u16, config: Config) -> io::Result<Simulator> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        Simulator::serve(listener, config).await
    }

    /// Serve on an already-bound listener (used by the `rotator toktra-sim` CLI command).
    pub async fn serve(listener: TcpListener, config: Config) -> io::Result<Simulator> {
        let addr = listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        let shared = Arc::new(Shared::new(config, stop.clone()));
        let app = Router::new()
            .route("/v1/{*path}", any(v1))
            .route("/_sim/credentials", get(inspect_credentials))
            .route("/_sim/faults", get(inspect_faults).put(replace_faults))
            .route("/_sim/dialect", get(inspect_dialect).put(replace_dialect))
            .route("/_sim/stats", get(inspect_stats))
            .fallback(unknown_route)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let mut stop = stop;
            axum::serve(SimListener(listener), app.into_make_service_with_connect_info::<Conn>())
                // A closed channel means the `Simulator` was dropped, which also ends the server.
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stopping| *stopping).await;
                })
                .await
        });
        tracing::info!(%addr, "toktra simulator listening");
        Ok(Simulator { addr, shared, shutdown, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`; a wildcard bind address is replaced by loopback because
    /// clients cannot portably connect to `0.0.0.0`.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}/v1", SocketAddr::new(ip, self.addr.port()))
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.shared.lock().faults.clone()
    }

    pub fn set_dialect(&self, dialect: Dialect) {
        self.shared.lock().dialect = dialect;
    }

    pub fn dialect(&self) -> Dialect {
        self.shared.lock().dialect
    }

    /// Every credential ever created (including the admin ones), never with secrets.
    pub fn credentials(&self) -> Vec<Inspected> {
        self.shared.credentials()
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Stop accepting connections and wait for the server task.
    pub async fn shutdown(self) {
        let Simulator { addr, shutdown, mut server, .. } = self;
        shutdown.send_replace(true);
        // A client that keeps a request half-sent would hold a graceful shutdown forever.
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(result) => log_server_end(addr, result),
            Err(_) => {
                tracing::warn!(%addr, "toktra simulator connections still open after grace period, aborting");
                server.abort();
            }
        }
    }

    /// Wait until the server stops (for the CLI, which runs until Ctrl-C).
    pub async fn wait(self) {
        // The sender must live until the server ends: dropping it is a shutdown signal.
        let Simulator { addr, shutdown: _running, server, .. } = self;
        log_server_end(addr, server.await);
    }
}

fn log_server_end(addr: SocketAddr, result: Result<io::Result<()>, tokio::task::JoinError>) {
    match result {
        Ok(Ok(())) => tracing::info!(%addr, "toktra simulator stopped"),
        Ok(Err(error)) => tracing::error!(%addr, %error, "toktra simulator failed"),
        Err(error) => tracing::error!(%addr, %error, "toktra simulator task ended abnormally"),
    }
}

// ---------------------------------------------------------------------------------------------
// State

/// What the handlers share: settings fixed at start, and the mutable state behind one lock.
struct Shared {
    token_lifetime: Duration,
    /// `Config::page_size` clamped to 1..=100; both the default and the largest page.
    page_size: usize,
    rate_limit: u32,
    rate_window_secs: u64,
    state: Mutex<StateInner>,
    /// Lets injected delays end early when the simulator shuts down.
    shutdown: watch::Receiver<bool>,
}

/// Everything that changes while the simulator runs.
struct StateInner {
    faults: Faults,
    dialect: Dialect,
    /// All credentials ever created, in creation order, never removed: indices are stable and
    /// the order is the pagination order.
    credentials: Vec<Credential>,
    /// Credential id (client_id or key id) to index.
    by_id: HashMap<String, usize>,
    /// API key value to index. A hash lookup is not constant-time; fine for a simulator.
    by_key: HashMap<String, usize>,
    /// Issued access tokens; expired ones linger until the next purge but never authenticate.
    tokens: HashMap<String, AccessToken>,
    /// Token map size at which the next purge of expired tokens runs.
    token_purge_at: usize,
    limiter: Limiter,
    stats: Stats,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    OAuthClient,
    ApiKey,
}

impl Kind {
    fn as_str(self) -> &'static str {
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
struct Credential {
    id: String,
    kind: Kind,
    name: String,
    description: Option<String>,
    scopes: Vec<String>,
    /// The client secret or the API key itself; compared on use, never shown after creation.
    secret: String,
    admin: bool,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    /// Requests this credential authenticated, by endpoint; feeds `GET /v1/usage`.
    usage: BTreeMap<&'static str, Usage>,
}

struct Usage {
    requests: u64,
    last: DateTime<Utc>,
}

struct AccessToken {
    /// Index of the OAuth client the token was issued to.
    client: usize,
    expires_at: Instant,
}

impl Credential {
    fn new(kind: Kind, name: String, scopes: Vec<String>, secret: String, now: Now) -> Credential {
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

    fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }

    /// The first characters of an API key, shown so people can tell keys apart.
    fn prefix(&self) -> String {
        self.secret.chars().take(12).collect()
    }

    /// The item shape of the list endpoints: never the secret. A revoked credential (listed only
    /// in a dialect that keeps them) says so the way the dialect does.
    fn list_item(&self, revoked_in_lists: RevokedInLists) -> Value {
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
    fn created_response(&self) -> Value {
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
    fn new(config: Config, shutdown: watch::Receiver<bool>) -> Shared {
        let now = Now::read();
        let mut state = StateInner {
            faults: config.faults,
            dialect: config.dialect,
            credentials: Vec::new(),
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            tokens: HashMap::new(),
            token_purge_at: TOKEN_PURGE_MIN,
            limiter: Limiter { windows: HashMap::new(), window_secs: config.rate_limit_window.as_secs().max(1) },
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
        }
    }

    /// A panic while the lock was held cannot leave the state half-updated in a way that matters
    /// more than refusing every later request would, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, StateInner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn credentials(&self) -> Vec<Inspected> {
        self.lock().credentials.iter().map(Credential::inspected).collect()
    }

    /// Sleeps, but returns early once the simulator shuts down.
    async fn pause(&self, duration: Duration) {
        let mut stop = self.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            _ = stop.wait_for(|stopping| *stopping) => {}
        }
    }

    /// Turns a reply into the HTTP response and counts its status.
    fn finish(&self, reply: Reply) -> Response {
        let response = reply.into_response();
        self.lock().stats.record(response.status());
        response
    }

    fn fresh_rate(&self, now: Now) -> RateInfo {
        RateInfo { limit: self.rate_limit, remaining: self.rate_limit, reset: now.unix + self.rate_window_secs }
    }

    fn injected_error(&self, call: &Call) -> Reply {
        let now = Now::read();
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
        let now = Now::read();
        self.lock().stats.injected_rate_limits += 1;
        Reply {
            outcome: Err(ApiError::rate_limited(1)),
            rate: RateInfo { limit: self.rate_limit, remaining: 0, reset: now.unix + 1 },
        }
    }

    /// Applies one `/v1` request to the state, atomically.
    fn handle(&self, call: &Call) -> Reply {
        let now = Now::read();
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
        let page = self.page_request(&call.query, tag, now)?;
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
        let page = self.page_request(&call.query, CursorTag::Usage, now)?;
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

    fn page_request(&self, query: &str, tag: CursorTag, now: Now) -> Result<Page, ApiError> {
        let pairs = parse_pairs(query).ok_or_else(|| bad_request("malformed query string"))?;
        let mut page = Page { after: None, size: self.page_size };
        for (key, value) in pairs {
            match key.as_str() {
                "limit" => {
                    let limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                        .ok_or_else(|| bad_request(format!("limit must be an integer from 1 to {MAX_LIMIT}")))?;
                    // The configured page size doubles as the server's maximum.
                    page.size = limit.min(self.page_size);
                }
                "cursor" if !value.is_empty() => page.after = Some(decode_cursor(&value, tag, now)?),
                _ => {}
            }
        }
        Ok(page)
    }
}

impl StateInner {
    fn insert(&mut self, cred: Credential) {
        let index = self.credentials.len();
        self.by_id.insert(cred.id.clone(), index);
        if cred.kind == Kind::ApiKey {
            self.by_key.insert(cred.secret.clone(), index);
        }
        self.credentials.push(cred);
    }

    fn issue_token(&mut self, token: String, client: usize, expires_at: Instant, now: Now) {
        if self.tokens.len() >= self.token_purge_at {
            self.tokens.retain(|_, token| token.expires_at > now.mono);
            self.token_purge_at = (self.tokens.len() * 2).max(TOKEN_PURGE_MIN);
        }
        self.tokens.insert(token, AccessToken { client, expires_at });
    }

    /// The credential a bearer token stands for, without side effects (injected faults use it to
    /// report the caller's rate-limit budget).
    fn resolve(&self, bearer: Option<&str>, now: Now) -> Result<usize, ApiError> {
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
    fn rate_key(&self, call: &Call, now: Now) -> Option<String> {
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

    fn touch(&mut self, index: usize, endpoint: &'static str, now: Now) {
        let cred = &mut self.credentials[index];
        cred.last_used_at = Some(now.wall);
        let usage = cred.usage.entry(endpoint).or_insert(Usage { requests: 0, last: now.wall });
        usage.requests += 1;
        usage.last = now.wall;
    }

    fn revoke(&mut self, kind: Kind, id: &str, now: Now) -> Outcome {
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
fn same_secret(stored: &str, given: &str) -> bool {
    let (stored, given) = (stored.as_bytes(), given.as_bytes());
    stored.len() == given.len() && stored.iter().zip(given).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

fn random_alphanumeric(len: usize) -> String {
    rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}

/// Both clocks read once per request: wall time for timestamps and rate windows, monotonic time
/// for token expiry (so a clock step cannot revive or kill tokens).
#[derive(Clone, Copy)]
struct Now {
    /// Millisecond precision, as a real API would show it.
    wall: DateTime<Utc>,
    mono: Instant,
    unix: u64,
}

impl Now {
    fn read() -> Now {
        let wall = Utc::now().trunc_subsecs(3);
        Now { wall, mono: Instant::now(), unix: u64::try_from(wall.timestamp()).unwrap_or(0) }
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limiting

/// Fixed windows (one minute unless configured) per key. A window starts at a key's first request after the
/// previous window ended (not at wall-clock minute boundaries), so a burst is never split
/// across two windows by accident, which keeps tests deterministic.
struct Limiter {
    windows: HashMap<String, Window>,
    window_secs: u64,
}

struct Window {
    start: u64,
    used: u32,
}

/// What the three `X-RateLimit-*` headers report.
#[derive(Clone, Copy)]
struct RateInfo {
    limit: u32,
    remaining: u32,
    /// Unix seconds at which the window ends.
    reset: u64,
}

impl RateInfo {
    fn retry_after(&self, now: Now) -> u64 {
        self.reset.saturating_sub(now.unix).max(1)
    }
}

impl Limiter {
    /// Charges one request to `key`; the flag says whether the request is within the limit.
    fn take(&mut self, key: &str, limit: u32, now: u64) -> (RateInfo, bool) {
        // Unknown client_ids sent to the token endpoint also get windows; forget stale ones
        // once there are many so that a flood of made-up ids cannot grow the map forever.
        if self.windows.len() >= 10_000 {
            self.windows.retain(|_, window| now < window.start + self.window_secs);
        }
        let window = self.windows.entry(key.to_owned()).or_insert(Window { start: now, used: 0 });
        if now >= window.start + self.window_secs {
            *window = Window { start: now, used: 0 };
        }
        let allowed = window.used < limit;
        if allowed {
            window.used += 1;
        }
        let info =
            RateInfo { limit, remaining: limit.saturating_sub(window.used), reset: window.start + self.window_secs };
        (info, allowed)
    }

    fn peek(&self, key: &str, limit: u32, now: u64) -> RateInfo {
        match self.windows.get(key) {
            Some(window) if now < window.start + self.window_secs => {
                RateInfo { limit, remaining: limit.saturating_sub(window.used), reset: window.start + self.window_secs }
            }
            _ => RateInfo { limit, remaining: limit, reset: now + self.window_secs },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and replies

/// A `/v1` request, parsed just enough to route it; nothing here has side effects.
struct Call {
    route: Route,
    bearer: Option<String>,
    query: String,
    body: Bytes,
}

/// What a `/v1` request asks for. Everything but the token endpoint authenticates first, so a
/// stranger gets 401 even for an unknown path, as behind a real API gateway.
enum Route {
    Token,
    Bearer(Endpoint),
}

enum Endpoint {
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
    const TOKEN_LABEL: &'static str = "POST /v1/oauth/token";

    fn parse(method: &Method, path: &str) -> Route {
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
    fn needs_admin(&self) -> bool {
        !matches!(self, Endpoint::Usage | Endpoint::NoSuchRoute | Endpoint::WrongMethod)
    }

    /// The endpoint name in usage records.
    fn label(&self) -> &'static str {
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
struct CreateBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

type Outcome = Result<Done, ApiError>;

struct Done {
    status: StatusCode,
    body: Option<Value>,
    /// A credential was created; only such replies can be hit by the create-timeout fault.
    created: bool,
    /// The body carries a secret and must not be cached.
    no_store: bool,
}

impl Done {
    fn ok(body: Value) -> Done {
        Done { status: StatusCode::OK, body: Some(body), created: false, no_store: false }
    }
}

/// An error as the API shows it: `{"error": code, "message": message}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `Retry-After` seconds, for 429 only.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    fn rate_limited(retry_after: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "rate limit exceeded")
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// The result of one `/v1` request plus the rate-limit view every `/v1` response carries.
struct Reply {
    outcome: Outcome,
    rate: RateInfo,
}

impl Reply {
    fn created(&self) -> bool {
        matches!(&self.outcome, Ok(done) if done.created)
    }

    fn into_response(self) -> Response {
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
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(self.rate.limit));
        headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(self.rate.remaining));
        headers.insert(X_RATELIMIT_RESET, HeaderValue::from(self.rate.reset));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if no_store {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        response
    }
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
                rate: shared.fresh_rate(Now::read()),
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

/// A real RNG per decision; `random()` is in `[0, 1)`, so 0.0 never fires and 1.0 always does.
fn roll(rate: f64) -> bool {
    rand::random::<f64>() < rate
}

fn bearer_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// Splits `a=1&b=2` (query string or form body) into decoded pairs (`+` is a space); `None` if a
/// part is not UTF-8 once decoded.
fn parse_pairs(input: &str) -> Option<Vec<(String, String)>> {
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

// ---------------------------------------------------------------------------------------------
// Pagination

/// Which listing a cursor belongs to, so a cursor cannot be replayed against another list.
#[derive(Clone, Copy)]
enum CursorTag {
    Clients,
    Keys,
    Usage,
}

impl CursorTag {
    fn letter(self) -> char {
        match self {
            CursorTag::Clients => 'c',
            CursorTag::Keys => 'k',
            CursorTag::Usage => 'u',
        }
    }
}

struct Page {
    /// Items strictly after this position; `None` for the first page.
    after: Option<u64>,
    size: usize,
}

/// Cuts one page out of `items` (ascending positions) and builds the documented envelope.
fn paginate(items: impl Iterator<Item = (u64, Value)>, page: Page, total: usize, tag: CursorTag, now: Now) -> Value {
    let mut rest = items.filter(|(position, _)| page.after.is_none_or(|after| *position > after));
    let chunk: Vec<(u64, Value)> = rest.by_ref().take(page.size).collect();
    let has_more = rest.next().is_some();
    let next_cursor =
        if has_more { chunk.last().map(|(position, _)| encode_cursor(tag, *position, now)) } else { None };
    let items: Vec<Value> = chunk.into_iter().map(|(_, item)| item).collect();
    json!({
        "items": items,
        "next_cursor": next_cursor,
        "has_more": has_more,
        "total_count": total,
    })
}

/// A cursor is the list tag, a random salt and the masked (position, issue time). It looks
/// random on purpose: clients must treat it as opaque, and the issue time lets it expire.
fn encode_cursor(tag: CursorTag, position: u64, now: Now) -> String {
    let salt: u32 = rand::random();
    let mask = mix(u64::from(salt));
    format!("{}{salt:08x}{:016x}{:016x}", tag.letter(), position ^ mask, now.unix ^ mix(mask))
}

fn decode_cursor(cursor: &str, tag: CursorTag, now: Now) -> Result<u64, ApiError> {
    let invalid = || bad_request("invalid cursor");
    let digits = cursor.strip_prefix(tag.letter()).ok_or_else(invalid)?;
    if digits.len() != 40 || !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let hex = |range: std::ops::Range<usize>| u64::from_str_radix(&digits[range], 16).map_err(|_| invalid());
    let mask = mix(hex(0..8)?);
    let position = hex(8..24)? ^ mask;
    let issued = hex(24..40)? ^ mix(mask);
    // A tampered cursor decodes to a random issue time, almost surely far from now.
    if issued > now.unix + RATE_WINDOW_SECS {
        return Err(invalid());
    }
    if now.unix.saturating_sub(issued) > CURSOR_TTL_SECS {
        return Err(bad_request("cursor expired, restart the listing from the first page"));
    }
    Ok(position)
}

/// The SplitMix64 finaliser: a cheap bijective scramble, enough to make cursors look opaque.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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

// ---------------------------------------------------------------------------------------------
// Connections that a handler can kill

/// The drop fault must leave the client with a transport error and no status line, or a client
/// could take a dropped `DELETE` for a success. A handler cannot reach its socket in axum, so the
/// listener wraps each connection in a stream with a kill switch that the handler receives as
/// connect info; once set, every read and write fails and hyper closes the socket.
struct SimListener(TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop already retries transient accept errors.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        // Small responses would otherwise wait for delayed ACKs, which skews benchmarks.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on a simulator connection");
        }
        (KillableStream { inner: stream, killed: Arc::default() }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

struct KillableStream {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
}

/// The kill switch of the connection a request arrived on.
#[derive(Clone)]
struct Conn {
    killed: Arc<AtomicBool>,
}

impl Conn {
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, SimListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        Conn { killed: Arc::clone(&stream.io().killed) }
    }
}

impl KillableStream {
    fn check(&self) -> io::Result<()> {
        if self.killed.load(Ordering::SeqCst) {
            Err(io::Error::new(io::ErrorKind::ConnectionAborted, "connection dropped by fault injection"))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! Each test starts its own simulator on a free port and talks real HTTP to it.

    use super::*;
    use reqwest::Method;

    const ADMIN_KEY: &str = "tk_admin_0123456789abcdefghijklmnopqrstuvwxyz";
    const ADMIN_CLIENT_ID: &str = "cl_admin_for_tests";
    const ADMIN_CLIENT_SECRET: &str = "tcs_admin_0123456789abcdefghijklmnopqrstuvwxyz";

    fn config() -> Config {
        Config {
            admin_api_key: Some(ADMIN_KEY.to_owned()),
            admin_client: Some((ADMIN_CLIENT_ID.to_owned(), ADMIN_CLIENT_SECRET.to_owned())),
            ..Config::default()
        }
    }

    struct Harness {
        sim: Simulator,
        http: reqwest::Client,
    }

    struct Answer {
        status: u16,
        headers: reqwest::header::HeaderMap,
        text: String,
        body: Value,
    }

    impl Answer {
        fn header(&self, name: &str) -> &str {
            self.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("")
        }

        fn header_u64(&self, name: &str) -> u64 {
            self.header(name).parse().unwrap_or_else(|_| panic!("header {name} missing or not a number"))
        }

        fn error(&self) -> &str {
            self.body["error"].as_str().unwrap_or("")
        }

        fn str(&self, field: &str) -> String {
            self.body[field].as_str().unwrap_or_else(|| panic!("no {field} in {}", self.text)).to_owned()
        }
    }

    async fn spawn(config: Config) -> Harness {
        let sim = Simulator::start(0, config).await.expect("simulator starts");
        Harness { sim, http: reqwest::Client::new() }
    }

    impl Harness {
        async fn try_call(
            &self,
            http: &reqwest::Client,
            method: Method,
            path: &str,
            bearer: Option<&str>,
            body: Option<Value>,
        ) -> reqwest::Result<Answer> {
            let url = if path.starts_with("/_sim") {
                format!("http://{}{path}", self.sim.addr())
            } else {
                format!("{}{path}", self.sim.base_url())
            };
            let mut request = http.request(method, url);
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let text = response.text().await?;
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            Ok(Answer { status, headers, text, body })
        }

        async fn call(&self, method: Method, path: &str, bearer: Option<&str>, body: Option<Value>) -> Answer {
            self.try_call(&self.http, method, path, bearer, body).await.expect("request completes")
        }

        async fn get(&self, path: &str, bearer: &str) -> Answer {
            self.call(Method::GET, path, Some(bearer), None).await
        }

        async fn token(&self, client_id: &str, secret: &str) -> Answer {
            let form = [("grant_type", "client_credentials"), ("client_id", client_id), ("client_secret", secret)];
            let response = self
                .http
                .post(format!("{}/oauth/token", self.sim.base_url()))
                .form(&form)
                .send()
                .await
                .expect("token request completes");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let text = response.text().await.expect("token body");
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            Answer { status, headers, text, body }
        }

        async fn create(&self, path: &str, bearer: &str, name: &str) -> Answer {
            let body = json!({ "name": name, "scopes": ["read"], "ignored": true });
            self.call(Method::POST, path, Some(bearer), Some(body)).await
        }

        fn inspected(&self, id: &str) -> Inspected {
            self.sim.credentials().into_iter().find(|cred| cred.id == id).expect("credential is inspectable")
        }
    }

    #[tokio::test]
    async fn access_token_expires_after_its_lifetime() {
        let h = spawn(Config { token_lifetime: Duration::from_secs(1), ..config() }).await;
        let token = h.token(ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET).await;
        assert_eq!(token.status, 200, "{}", token.text);
        assert_eq!(token.body["token_type"], "bearer");
        assert_eq!(token.body["expires_in"], 1);
        assert_eq!(token.header("cache-control"), "no-store");
        let access = token.str("access_token");

        let usage = h.get("/usage?limit=1", &access).await;
        assert_eq!(usage.status, 200, "{}", usage.text);
        assert_eq!(usage.body["items"].as_array().map(Vec::len), Some(1));
        assert!(usage.body.get("has_more").is_some() && usage.body.get("next_cursor").is_some());

        tokio::time::sleep(Duration::from_millis(1200)).await;
        let expired = h.get("/usage?limit=1", &access).await;
        assert_eq!((expired.status, expired.error()), (401, "unauthorized"), "{}", expired.text);
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn created_credentials_work_until_revoked() {
        let h = spawn(config()).await;
        // Manage through the admin client's token, the way the rotator does.
        let admin = h.token(ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET).await.str("access_token");

        let created = h.create("/oauth/clients", &admin, "billing").await;
        assert_eq!(created.status, 201, "{}", created.text);
        assert_eq!(created.body["scopes"], json!(["read"]));
        assert_eq!(created.body["last_used_at"], Value::Null);
        let (client_id, secret) = (created.str("client_id"), created.str("client_secret"));
        assert!(secret.starts_with("tcs_") && secret.len() >= 40);

        let token = h.token(&client_id, &secret).await;
        assert_eq!(token.status, 200, "{}", token.text);
        let access = token.str("access_token");
        assert_eq!(h.get("/usage", &access).await.status, 200);
        assert!(h.inspected(&client_id).last_used_at.is_some());

        // Credentials made through the API are not admins.
        let forbidden = h.get("/oauth/clients", &access).await;
        assert_eq!((forbidden.status, forbidden.error()), (403, "forbidden"));

        let path = format!("/oauth/clients/{client_id}");
        assert_eq!(h.call(Method::DELETE, &path, Some(&admin), None).await.status, 204);
        let revoked = h.get("/usage", &access).await;
        assert_eq!((revoked.status, revoked.error()), (401, "unauthorized"));
        let exchange = h.token(&client_id, &secret).await;
        assert_eq!((exchange.status, exchange.error()), (401, "invalid_client"));
        let again = h.call(Method::DELETE, &path, Some(&admin), None).await;
        assert_eq!((again.status, again.error()), (404, "not_found"));

        let key = h.create("/api-keys", ADMIN_KEY, "reports").await;
        assert_eq!(key.status, 201, "{}", key.text);
        let (key_id, key_value) = (key.str("id"), key.str("key"));
        assert!(key_value.starts_with("tk_live_") && key_value.len() >= 40);
        assert_eq!(key.str("prefix"), key_value[..12]);
        assert_eq!(h.get("/usage", &key_value).await.status, 200);
        let path = format!("/api-keys/{key_id}");
        assert_eq!(h.call(Method::DELETE, &path, Some(ADMIN_KEY), None).await.status, 204);
        assert_eq!(h.get("/usage", &key_value).await.status, 401);
        assert_eq!(h.sim.stats().creates, 2);
        assert_eq!(h.sim.stats().revokes, 2);
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn listing_paginates_and_never_shows_secrets() {
        let h = spawn(Config { page_size: 1, admin_client: None, ..config() }).await;
        let mut secrets = vec![ADMIN_KEY.to_owned()];
        for name in ["c0", "c1", "c2"] {
            let created = h.create("/oauth/clients", ADMIN_KEY, name).await;
            assert_eq!(created.status, 201);
            secrets.push(created.str("client_secret"));
        }

        let mut names = Vec::new();
        let mut path = "/oauth/clients?limit=100".to_owned();
        loop {
            let page = h.get(&path, ADMIN_KEY).await;
            assert_eq!(page.status, 200, "{}", page.text);
            assert_eq!(page.body["items"].as_array().map(Vec::len), Some(1), "page size is capped at 1");
            assert_eq!(page.body["total_count"], 3);
            assert!(!page.text.contains("client_secret"));
            assert!(secrets.iter().all(|secret| !page.text.contains(secret.as_str())));
            names.push(page.body["items"][0]["name"].as_str().unwrap_or_default().to_owned());
            if page.body["has_more"] == json!(false) {
                assert_eq!(page.body["next_cursor"], Value::Null);
                break;
            }
            let cursor = page.str("next_cursor");
            assert!(cursor.parse::<u64>().is_err(), "cursor {cursor} should be opaque");
            path = format!("/oauth/clients?limit=100&cursor={cursor}");
        }
        assert_eq!(names, ["c0", "c1", "c2"]);

        // A cursor keeps its place when an earlier item is revoked between pages.
        let first = h.get("/oauth/clients", ADMIN_KEY).await;
        let c0 = first.body["items"][0]["client_id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(h.call(Method::DELETE, &format!("/oauth/clients/{c0}"), Some(ADMIN_KEY), None).await.status, 204);
        let second = h.get(&format!("/oauth/clients?cursor={}", first.str("next_cursor")), ADMIN_KEY).await;
        assert_eq!(second.body["items"][0]["name"], "c1");
        assert_eq!(second.body["total_count"], 2);

        let keys = h.get("/api-keys", ADMIN_KEY).await;
        assert_eq!(keys.status, 200);
        assert!(keys.body["items"][0].get("key").is_none() && !keys.text.contains(ADMIN_KEY));

        for bad in
            ["/oauth/clients?limit=0", "/oauth/clients?limit=101", "/oauth/clients?limit=x", "/oauth/clients?cursor=5"]
        {
            let answer = h.get(bad, ADMIN_KEY).await;
            assert_eq!((answer.status, answer.error()), (400, "bad_request"), "{bad}");
        }
        // A cursor from one listing is refused by another.
        let usage = h.get(&format!("/usage?cursor={}", first.str("next_cursor")), ADMIN_KEY).await;
        assert_eq!(usage.status, 400);
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn rate_limit_answers_429_with_headers() {
        let h = spawn(Config { rate_limit_per_minute: 3, ..config() }).await;
        let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
        for remaining in [2, 1, 0] {
            let answer = h.get("/usage", ADMIN_KEY).await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.header_u64("x-ratelimit-limit"), 3);
            assert_eq!(answer.header_u64("x-ratelimit-remaining"), remaining);
            assert!((now..=now + 61).contains(&answer.header_u64("x-ratelimit-reset")));
        }
        let limited = h.get("/usage", ADMIN_KEY).await;
        assert_eq!((limited.status, limited.error()), (429, "rate_limited"));
        assert_eq!(limited.header_u64("x-ratelimit-remaining"), 0);
        assert!((1..=60).contains(&limited.header_u64("retry-after")));

        // Budgets are per credential, and the token endpoint and 401s carry the headers too.
        let token = h.token(ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET).await;
        assert_eq!(token.status, 200);
        assert_eq!(token.header_u64("x-ratelimit-remaining"), 2);
        let stranger = h.get("/usage", "not-a-token").await;
        assert_eq!(stranger.status, 401);
        assert_eq!(stranger.header_u64("x-ratelimit-limit"), 3);
        assert_eq!(h.sim.stats().real_rate_limits, 1);
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn injected_errors_and_rate_limits_change_nothing() {
        let faults = Faults { error_rate: 1.0, ..Faults::default() };
        let h = spawn(Config { faults, ..config() }).await;
        let failed = h.create("/oauth/clients", ADMIN_KEY, "doomed").await;
        assert_eq!((failed.status, failed.error()), (500, "internal_error"));
        assert!(failed.body["message"].is_string());
        assert_eq!(failed.header_u64("x-ratelimit-limit"), 1000);
        assert_eq!(h.sim.credentials().len(), 2, "only the admin credentials exist");
        assert_eq!(h.sim.stats().injected_errors, 1);
        assert_eq!(h.sim.stats().creates, 0);

        let limited_faults = json!({ "rate_limit_rate": 1.0 });
        assert_eq!(h.call(Method::PUT, "/_sim/faults", None, Some(limited_faults)).await.status, 200);
        let limited = h.create("/oauth/clients", ADMIN_KEY, "doomed").await;
        assert_eq!((limited.status, limited.error()), (429, "rate_limited"));
        assert_eq!(limited.header("retry-after"), "1");
        assert_eq!(h.sim.stats().injected_rate_limits, 1);

        h.sim.set_faults(Faults { latency_ms: 150, ..Faults::default() });
        let started = Instant::now();
        assert_eq!(h.create("/oauth/clients", ADMIN_KEY, "fine").await.status, 201);
        assert!(started.elapsed() >= Duration::from_millis(150));
        let names: Vec<String> = h.sim.credentials().into_iter().map(|cred| cred.name).collect();
        assert!(!names.iter().any(|name| name == "doomed"));
        assert_eq!(h.sim.stats().by_status.get(&201), Some(&1));
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn create_timeout_creates_but_the_client_times_out() {
        let faults = Faults { create_timeout_rate: 1.0, create_timeout_delay_ms: 2000, ..Faults::default() };
        let h = spawn(Config { faults, ..config() }).await;
        let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().expect("client builds");
        let body = json!({ "name": "slow" });
        let result = h.try_call(&impatient, Method::POST, "/api-keys", Some(ADMIN_KEY), Some(body)).await;
        let error = result.err().expect("the create times out at the client");
        assert!(error.is_timeout(), "{error}");

        let slow = h.sim.credentials().into_iter().find(|cred| cred.name == "slow").expect("created anyway");
        assert_eq!((slow.kind.as_str(), slow.state.as_str()), ("api_key", "active"));
        assert_eq!(h.sim.stats().injected_create_timeouts, 1);
        assert_eq!(h.sim.stats().creates, 1);

        // Shutdown cuts the held-back response short instead of waiting out the delay.
        let started = Instant::now();
        h.sim.shutdown().await;
        assert!(started.elapsed() < Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn dropped_connection_is_a_transport_error_without_effect() {
        let h = spawn(config()).await;
        // A first request leaves a kept-alive connection in the client's pool, so the drop hits a
        // reused connection, where a client is most tempted to retry silently.
        assert_eq!(h.get("/usage", ADMIN_KEY).await.status, 200);
        h.sim.set_faults(Faults { drop_rate: 1.0, ..Faults::default() });
        let body = json!({ "name": "dropped" });
        let result = h.try_call(&h.http, Method::POST, "/oauth/clients", Some(ADMIN_KEY), Some(body)).await;
        let error = result.err().expect("the client sees no response");
        assert!(!error.is_timeout() && error.status().is_none(), "{error:?}");
        assert_eq!(h.sim.credentials().len(), 2);
        let stats = h.sim.stats();
        assert_eq!(stats.injected_drops, 1);
        assert_eq!(stats.creates, 0);
        assert_eq!(stats.by_status.values().sum::<u64>(), 1, "only the first request got a status");

        h.sim.set_faults(Faults::default());
        assert_eq!(h.create("/oauth/clients", ADMIN_KEY, "kept").await.status, 201);
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn inspection_shows_revoked_credentials_without_secrets() {
        let h = spawn(config()).await;
        let key = h.create("/api-keys", ADMIN_KEY, "short-lived").await;
        let (id, value) = (key.str("id"), key.str("key"));
        assert_eq!(h.get("/usage", &value).await.status, 200);
        assert_eq!(h.call(Method::DELETE, &format!("/api-keys/{id}"), Some(ADMIN_KEY), None).await.status, 204);

        let view = h.call(Method::GET, "/_sim/credentials", None, None).await;
        assert_eq!(view.status, 200);
        for secret in [value.as_str(), ADMIN_KEY, ADMIN_CLIENT_SECRET] {
            assert!(!view.text.contains(secret));
        }
        let listed: Vec<Inspected> = serde_json::from_value(view.body).expect("inspected json");
        let revoked = listed.iter().find(|cred| cred.id == id).expect("revoked key is still listed");
        assert_eq!(revoked.state, "revoked");
        assert!(revoked.revoked_at.is_some() && revoked.last_used_at.is_some() && !revoked.admin);
        assert_eq!(listed.iter().filter(|cred| cred.admin).count(), 2);
        assert_eq!(listed, h.sim.credentials());

        let stats = h.call(Method::GET, "/_sim/stats", None, None).await;
        assert_eq!((stats.body["creates"].as_u64(), stats.body["revokes"].as_u64()), (Some(1), Some(1)));
        for bad in [json!({ "typo_rate": 0.5 }), json!({ "error_rate": 2.0 })] {
            assert_eq!(h.call(Method::PUT, "/_sim/faults", None, Some(bad)).await.status, 400);
        }
        assert_eq!(h.call(Method::GET, "/_sim/faults", None, None).await.body["error_rate"], 0.0);
        let debug = format!("{:?}", config());
        assert!(!debug.contains(ADMIN_KEY) && !debug.contains(ADMIN_CLIENT_SECRET));
        h.sim.shutdown().await;
    }

    #[tokio::test]
    async fn malformed_requests_are_rejected() {
        let h = spawn(config()).await;
        let wrong_secret = h.token(ADMIN_CLIENT_ID, "tcs_wrong").await;
        assert_eq!((wrong_secret.status, wrong_secret.error()), (401, "invalid_client"));
        let no_grant = h
            .http
            .post(format!("{}/oauth/token", h.sim.base_url()))
            .form(&[("client_id", ADMIN_CLIENT_ID), ("client_secret", ADMIN_CLIENT_SECRET)])
            .send()
            .await
            .expect("token request completes");
        assert_eq!(no_grant.status(), 400);

        let no_name = h.call(Method::POST, "/api-keys", Some(ADMIN_KEY), Some(json!({ "scopes": [] }))).await;
        assert_eq!((no_name.status, no_name.error()), (400, "bad_request"));
        let garbage = h
            .http
            .post(format!("{}/oauth/clients", h.sim.base_url()))
            .bearer_auth(ADMIN_KEY)
            .body("{not json")
            .send()
            .await
            .expect("request completes");
        assert_eq!(garbage.status(), 400);

        assert_eq!(h.call(Method::GET, "/usage", None, None).await.status, 401);
        assert_eq!(h.get("/nothing-here", ADMIN_KEY).await.status, 404);
        assert_eq!(h.call(Method::PUT, "/usage", Some(ADMIN_KEY), None).await.status, 405);
        h.sim.shutdown().await;
    }
}
