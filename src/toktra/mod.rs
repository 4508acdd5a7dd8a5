//! The Toktra API client: management calls (create, list, revoke OAuth clients and API keys)
//! authenticated with the rotator's own admin credential, and the probes that verify a minted
//! credential works or that a revoked one is rejected. Everything `toktra-api.md` only assumes
//! is configurable here ([`Endpoints`]) or parsed tolerantly. [`crate::sim`] is the project's
//! simulator of the same contract.

use std::collections::BTreeMap;
use std::sync::Mutex as SyncMutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::{AUTHORIZATION, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Deserialize as _;
use serde_json::Value;

use crate::policy::CredentialKind;
use crate::secret::Secret;

/// Paths below the base URL. The management endpoints are undocumented (toktra-api.md,
/// "Assumed"), so they can be changed without touching code that uses them.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub token: String,
    pub oauth_clients: String,
    pub api_keys: String,
    pub usage: String,
}

impl Default for Endpoints {
    fn default() -> Endpoints {
        Endpoints {
            token: "oauth/token".into(),
            oauth_clients: "oauth/clients".into(),
            api_keys: "api-keys".into(),
            usage: "usage".into(),
        }
    }
}

/// The rotator's own admin credential for management calls.
#[derive(Debug, Clone)]
pub enum ManagementAuth {
    ApiKey(Secret),
    Client { client_id: String, client_secret: Secret },
}

/// Retry limits for transient failures of idempotent calls.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts per call, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Longest single wait for a `429` before it is surfaced as an error.
    pub max_rate_limit_wait: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_rate_limit_wait: Duration::from_secs(90),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// e.g. `https://api.toktra.io/v1`
    pub base_url: String,
    pub auth: ManagementAuth,
    pub endpoints: Endpoints,
    /// Per-request timeout.
    pub timeout: Duration,
    pub retry: Retry,
    /// Page size asked for when listing (1-100).
    pub page_size: u32,
}

impl Settings {
    pub fn new(base_url: impl Into<String>, auth: ManagementAuth) -> Settings {
        Settings {
            base_url: base_url.into(),
            auth,
            endpoints: Endpoints::default(),
            timeout: Duration::from_secs(30),
            retry: Retry::default(),
            page_size: 100,
        }
    }
}

/// What went wrong talking to Toktra. Messages never contain secret values: request bodies are
/// never echoed, and server messages are kept only where they cannot echo a secret (see
/// `Client::request`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause chain is in the message (the innermost cause says what actually happened:
    /// refused, timed out, a TLS failure), so it is not also a `source`.
    #[error("{what}: could not reach toktra at {host}: {}", causes(error))]
    Transport {
        what: String,
        /// `host:port` of the base URL.
        host: String,
        error: reqwest::Error,
    },
    #[error("{what}: toktra answered {status} {code}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Api { what: String, status: u16, code: String, message: Option<String> },
    #[error("{what}: toktra's response could not be read: {detail}")]
    Decode { what: String, detail: String },
    #[error("{what}: still rate limited after waiting; retry after {retry_after:?}")]
    RateLimited { what: String, retry_after: Duration },
    #[error("invalid toktra settings: {0}")]
    Settings(String),
}

impl Error {
    /// The message without the call it is about (`list oauth_clients: `), for places that name
    /// the call themselves.
    pub fn reason(&self) -> String {
        let text = self.to_string();
        let what = match self {
            Error::Transport { what, .. }
            | Error::Api { what, .. }
            | Error::Decode { what, .. }
            | Error::RateLimited { what, .. } => what.as_str(),
            Error::Settings(_) => return text,
        };
        text.strip_prefix(what).and_then(|t| t.strip_prefix(": ")).map(str::to_string).unwrap_or(text)
    }

    /// Whether trying the same thing again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::RateLimited { .. } => true,
            Error::Api { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            Error::Decode { .. } | Error::Settings(_) => false,
        }
    }

    /// Whether Toktra said the credential used is not valid (401, or `invalid_client`).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Error::Api { status: 401, .. })
            || matches!(self, Error::Api { status: 400, code, .. } if code == "invalid_client")
    }

    /// For a create: the request may have reached Toktra even though no answer came back.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            Error::Transport { error, .. } => !error.is_connect(),
            Error::Api { status, .. } => *status >= 500,
            Error::Decode { .. } => true,
            _ => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A freshly created credential; its secret is shown by Toktra this once.
#[derive(Debug, Clone)]
pub struct Minted {
    pub id: String,
    pub name: String,
    pub secret: Secret,
    /// Credentials of earlier attempts of this same create whose answer was lost; they were
    /// found by name and revoked, because their secret can never be known.
    pub revoked_strays: Vec<String>,
    /// Attempts of this create whose answer was lost. A credential such an attempt made can
    /// still appear after the lookup that followed it (the vendor may carry a request out
    /// late), so the caller looks for it again before it is done with the name.
    pub lost_answers: u32,
}

/// A credential as listed (never with its secret).
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Outcome of a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Now,
    /// Toktra answered 404: it was revoked before (or never existed).
    AlreadyGone,
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Revoked::Now => "revoked now",
            Revoked::AlreadyGone => "already revoked",
        })
    }
}

/// Result of presenting a credential to Toktra.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Accepted,
    Rejected,
}

/// Counters for reports and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub requests: u64,
    /// Requests sent with the management credential (its token exchanges included): the
    /// budget Toktra's per-credential rate limit counts, which bounds mass rotation.
    pub management_calls: u64,
    /// Requests sent with a rotated credential (verification probes, the check that a revoked
    /// one is rejected): each counts against that credential's own budget.
    pub probe_calls: u64,
    /// Listings served from the run's shared listing instead of asking Toktra again.
    pub shared_listings: u64,
    /// Management calls by what they did (`create`, `revoke`, `list`, `check`, `token`): the
    /// first two are per rotation, the rest the run's own.
    pub management_by_call: BTreeMap<String, u64>,
    pub by_status: BTreeMap<String, u64>,
    pub retries: u64,
    pub rate_limit_waits: u64,
    /// Times a management call waited because the budget was spent, before any `429`.
    pub paced_waits: u64,
    pub token_renewals: u64,
}

struct CachedToken {
    token: Secret,
    renew_at: Instant,
}

/// The management credential's rate-limit budget as Toktra's `X-RateLimit-*` headers last
/// reported it, less the requests sent since. Shared by every rotation using this client, so
/// concurrent rotations slow down together instead of all running into `429`s.
#[derive(Default)]
struct Budget {
    remaining: Option<u64>,
    reset_at: Option<Instant>,
    /// While the budget is unknown, one request goes first to learn it; this is when it went.
    probing_since: Option<Instant>,
    /// The `X-RateLimit-Reset` the budget belongs to: answers of one window arrive out of
    /// order, so within a window only a lower `remaining` is believed.
    window: Option<i64>,
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    Management,
    /// A rotated credential's own bearer (an API key, an access token of a probed client).
    Bearer(&'a Secret),
    /// No bearer: a token exchange, with the management client's credentials or not.
    Exchange {
        management: bool,
    },
}

enum Body<'a> {
    Empty,
    Json(Value),
    Form(Vec<(&'a str, &'a str)>),
}

/// A kind's last listing and when it began.
type SharedListing = tokio::sync::Mutex<Option<(Instant, Vec<Listed>)>>;

/// A Toktra API client. Cheap to share behind an `Arc`; the management token is cached inside.
pub struct Client {
    http: reqwest::Client,
    settings: Settings,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    budget: SyncMutex<Budget>,
    stats: SyncMutex<Stats>,
    /// The last listing of each kind and when it began, shared by every rotation of the
    /// process (see [`Client::list_since`]).
    listings: [SharedListing; 2],
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base_url", &self.settings.base_url).finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(mut settings: Settings) -> Result<Client, Error> {
        if !(1..=100).contains(&settings.page_size) {
            return Err(Error::Settings(format!("page size {} is outside 1-100", settings.page_size)));
        }
        let mut url = reqwest::Url::parse(&settings.base_url)
            .map_err(|e| Error::Settings(format!("base URL `{}`: {e}", settings.base_url)))?;
        // The API lives under `/v1`; a base URL given without it (the form Toktra's Terraform
        // provider reads from the same variable) gets it, rather than every call answering 404.
        let path = url.path().trim_end_matches('/').to_string();
        if !path.ends_with("/v1") {
            url.set_path(&format!("{path}/v1"));
            tracing::debug!(base_url = %url, "the toktra base URL has no /v1; appended it");
            settings.base_url = url.to_string();
        }
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("rotator/", env!("CARGO_PKG_VERSION")))
            // Every request carries a credential (a bearer token, or a client secret in the form
            // body, which a 307/308 would send again): a redirect is an error, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Settings(format!("http client: {e}")))?;
        Ok(Client {
            http,
            settings,
            token: tokio::sync::Mutex::new(None),
            budget: SyncMutex::new(Budget::default()),
            stats: SyncMutex::new(Stats::default()),
            listings: Default::default(),
        })
    }

    /// Every active credential of a kind as listed no earlier than `since`: the listing another
    /// rotation of this process took since then if there is one, else a new one (that later
    /// callers share). A listing walks every page, so on a large account this is what keeps
    /// many rotations from listing the account once each.
    pub async fn list_since(&self, kind: CredentialKind, since: Instant) -> Result<Vec<Listed>, Error> {
        let slot = &self.listings[match kind {
            CredentialKind::OauthClient => 0,
            CredentialKind::ApiKey => 1,
        }];
        let mut shared = slot.lock().await;
        if let Some((at, listed)) = shared.as_ref()
            && *at >= since
        {
            if let Ok(mut s) = self.stats.lock() {
                s.shared_listings += 1;
            }
            return Ok(listed.clone());
        }
        let began = Instant::now();
        let listed = self.list(kind).await?;
        *shared = Some((began, listed.clone()));
        Ok(listed)
    }

    /// `host:port` of the base URL, for messages (never its path, query or credentials).
    fn host(&self) -> String {
        reqwest::Url::parse(&self.settings.base_url)
            .ok()
            .and_then(|u| u.host_str().map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(443))))
            .unwrap_or_else(|| "(unparsable base URL)".into())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The token endpoint's full URL, written into OAuth destinations as `token_url`.
    pub fn token_url(&self) -> String {
        self.url(&self.settings.endpoints.token)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.settings.base_url.trim_end_matches('/'), path.trim_start_matches('/'))
    }

    fn collection(&self, kind: CredentialKind) -> &str {
        match kind {
            CredentialKind::OauthClient => &self.settings.endpoints.oauth_clients,
            CredentialKind::ApiKey => &self.settings.endpoints.api_keys,
        }
    }

    /// Creates a credential named `name`. A create is never retried blindly: when its answer is
    /// lost (timeout, dropped connection, 5xx), the credential is looked up by name; one that
    /// exists is revoked (its secret is gone for good) and the create is tried again.
    pub async fn create(
        &self,
        kind: CredentialKind,
        name: &str,
        scopes: &[String],
        description: &str,
    ) -> Result<Minted, Error> {
        let what = format!("create {kind} `{name}`");
        let mut body = serde_json::json!({ "name": name, "description": description });
        if !scopes.is_empty() {
            body["scopes"] = serde_json::json!(scopes);
        }
        let mut revoked_strays = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .request(&what, Method::POST, self.collection(kind), Body::Json(body.clone()), Auth::Management, false)
                .await
            {
                Ok(value) => {
                    let mut minted = parse_minted(kind, &what, value)?;
                    minted.revoked_strays = revoked_strays;
                    minted.lost_answers = attempt - 1;
                    return Ok(minted);
                }
                Err(e) if e.is_ambiguous() && attempt < self.settings.retry.attempts => {
                    tracing::warn!(credential = name, error = %e, "create answer lost; looking the credential up by name");
                    for stray in self.list(kind).await?.into_iter().filter(|c| c.name == name) {
                        self.revoke(kind, &stray.id).await?;
                        tracing::warn!(credential = name, id = %stray.id, "revoked a credential whose create answer was lost");
                        revoked_strays.push(stray.id);
                    }
                    self.count_retry();
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Checks, with one cheap call per kind, that the management credential authenticates and
    /// the credential endpoints answer: run before anything is minted, so a configuration
    /// mistake (a wrong URL, path or credential) changes nothing and says what is wrong.
    pub async fn check_management(&self, kinds: &[CredentialKind]) -> Result<(), Error> {
        for kind in kinds {
            let what = format!("check access to {kind}s");
            let path = format!("{}?limit=1", self.collection(*kind));
            self.request(&what, Method::GET, &path, Body::Empty, Auth::Management, true).await?;
        }
        Ok(())
    }

    /// Every active credential of a kind, following `next_cursor` across pages.
    ///
    /// toktra-api.md leaves open whether lists drop revoked credentials or keep them marked
    /// (`revoked_at` set, or a `status`/`state` such as `revoked`); vendors do both. Revoked
    /// items are dropped here, so every reader (the revocation check, sweeps by name,
    /// `require_idle`, reconcile, plan, the daemon's orphan scan) sees active credentials only,
    /// whichever way the vendor answers.
    pub async fn list(&self, kind: CredentialKind) -> Result<Vec<Listed>, Error> {
        let what = format!("list {kind}s");
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        // A server that keeps answering `has_more` with a cursor must not loop forever.
        for _ in 0..100_000 {
            let mut path = format!("{}?limit={}", self.collection(kind), self.settings.page_size);
            if let Some(c) = &cursor {
                path.push_str("&cursor=");
                path.push_str(&url_escape(c));
            }
            let page = self.request(&what, Method::GET, &path, Body::Empty, Auth::Management, true).await?;
            let items = page
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| Error::Decode { what: what.clone(), detail: "no `items` array in the page".into() })?;
            for item in items {
                let listed = parse_listed(kind, item)
                    .ok_or_else(|| Error::Decode { what: what.clone(), detail: "an item has no id".into() })?;
                if !is_revoked(item) {
                    out.push(listed);
                }
            }
            let next = page.get("next_cursor").and_then(Value::as_str).filter(|c| !c.is_empty());
            let has_more = page.get("has_more").and_then(Value::as_bool).unwrap_or(next.is_some());
            match next {
                Some(next) if has_more => {
                    if cursor.as_deref() == Some(next) {
                        return Err(Error::Decode { what, detail: "the server returned the same cursor twice".into() });
                    }
                    cursor = Some(next.to_string());
                }
                _ => return Ok(out),
            }
        }
        Err(Error::Decode { what, detail: "more than 100000 pages".into() })
    }

    /// Revokes a credential. `404` means it is already gone, which callers that revoked it
    /// before treat as done.
    pub async fn revoke(&self, kind: CredentialKind, id: &str) -> Result<Revoked, Error> {
        let what = format!("revoke {kind} {id}");
        let path = format!("{}/{}", self.collection(kind), url_escape(id));
        match self.request(&what, Method::DELETE, &path, Body::Empty, Auth::Management, true).await {
            Ok(_) => Ok(Revoked::Now),
            Err(Error::Api { status: 404, .. }) => Ok(Revoked::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// Presents a credential to Toktra the way a consumer would: an OAuth client exchanges its
    /// secret for a token and calls `GET /usage?limit=1` with it; an API key calls it directly.
    /// Transient failures are retried for up to a minute; see [`Client::probe_until`].
    pub async fn probe(&self, kind: CredentialKind, id: &str, secret: &Secret) -> Result<Probe, Error> {
        self.probe_until(kind, id, secret, Instant::now() + Duration::from_secs(60)).await
    }

    /// [`Client::probe`], retrying transient failures (`5xx`, `429`, lost connections) until
    /// `deadline`. Only a definite answer about the credential itself counts as `Rejected`:
    /// - OAuth: a fresh token exchange refused (`401`, or `invalid_client`); or a `401` on the
    ///   usage call with a token that should still be valid, twice, each time with a token from
    ///   a fresh exchange. A token that expired between the exchange and the call (short-lived
    ///   tokens, a call slowed by rate limits) is exchanged again, not held against the client.
    /// - API key: a `401` twice in a row.
    pub async fn probe_until(
        &self,
        kind: CredentialKind,
        id: &str,
        secret: &Secret,
        deadline: Instant,
    ) -> Result<Probe, Error> {
        self.present(kind, id, secret, deadline, 2).await
    }

    /// [`Client::probe_until`] for a credential just revoked, where a refusal is the expected
    /// answer: one `401` is conclusive (Toktra answered the revocation, and a revoked
    /// credential stops working at once), so the check costs one call of the credential's own
    /// budget instead of two and a back-off. The two refusals `probe_until` asks for guard a
    /// good new credential against being declared rejected, not this.
    pub async fn probe_revoked(
        &self,
        kind: CredentialKind,
        id: &str,
        secret: &Secret,
        deadline: Instant,
    ) -> Result<Probe, Error> {
        self.present(kind, id, secret, deadline, 1).await
    }

    /// Presents the credential until it is accepted, refused `conclusive` times (see
    /// [`Client::probe_until`] for what counts), or `deadline` passes.
    async fn present(
        &self,
        kind: CredentialKind,
        id: &str,
        secret: &Secret,
        deadline: Instant,
        conclusive: u32,
    ) -> Result<Probe, Error> {
        let mut refusals = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match kind {
                CredentialKind::OauthClient => match self.exchange(id, secret).await {
                    Err(e) if e.is_unauthorized() => return Ok(Probe::Rejected),
                    Err(e) => Err(e),
                    Ok((token, lifetime)) => {
                        let issued = Instant::now();
                        // Toktra starts the lifetime before the answer arrives here, so a token
                        // near its end may already be gone: only a refusal well within the
                        // lifetime says something about the client.
                        let valid_for = lifetime - (lifetime / 4).min(Duration::from_secs(30));
                        match self.usage(&token).await {
                            Err(e) if e.is_unauthorized() && issued.elapsed() < valid_for => {
                                refusals += 1;
                                Err(e)
                            }
                            other => other,
                        }
                    }
                },
                CredentialKind::ApiKey => match self.usage(secret).await {
                    Err(e) if e.is_unauthorized() => {
                        refusals += 1;
                        Err(e)
                    }
                    other => other,
                },
            };
            match result {
                Ok(()) => return Ok(Probe::Accepted),
                Err(_) if refusals >= conclusive => return Ok(Probe::Rejected),
                Err(e) if (e.is_transient() || e.is_unauthorized()) && Instant::now() < deadline => {
                    tracing::debug!(credential = id, error = %e, attempt, "probe inconclusive; trying again");
                    self.count_retry();
                    tokio::time::sleep(self.backoff(attempt).min(deadline.saturating_duration_since(Instant::now())))
                        .await;
                }
                // Out of time without a confirmed answer: inconclusive, not a rejection.
                Err(e) => return Err(e),
            }
        }
    }

    async fn usage(&self, bearer: &Secret) -> Result<(), Error> {
        let path = format!("{}?limit=1", self.settings.endpoints.usage);
        self.request("usage check", Method::GET, &path, Body::Empty, Auth::Bearer(bearer), true).await.map(|_| ())
    }

    /// client_credentials exchange; returns the token and its lifetime.
    async fn exchange(&self, client_id: &str, secret: &Secret) -> Result<(Secret, Duration), Error> {
        let what = format!("token exchange for client {client_id}");
        let management =
            matches!(&self.settings.auth, ManagementAuth::Client { client_id: own, .. } if own == client_id);
        let form =
            vec![("grant_type", "client_credentials"), ("client_id", client_id), ("client_secret", secret.expose())];
        let auth = Auth::Exchange { management };
        let value =
            self.request(&what, Method::POST, &self.settings.endpoints.token, Body::Form(form), auth, true).await?;
        let token = value
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Decode { what: what.clone(), detail: "no access_token".into() })?;
        Ok((Secret::new(token), token_lifetime(value.get("expires_in"))))
    }

    /// The bearer token for management calls, renewed shortly before it expires.
    async fn management_token(&self, force_renew: bool) -> Result<Secret, Error> {
        let (client_id, client_secret) = match &self.settings.auth {
            ManagementAuth::ApiKey(key) => return Ok(key.clone()),
            ManagementAuth::Client { client_id, client_secret } => (client_id, client_secret),
        };
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && !force_renew
            && Instant::now() < t.renew_at
        {
            return Ok(t.token.clone());
        }
        // Boxed: `exchange` goes through `request`, which calls this function.
        let (token, lifetime) = Box::pin(self.exchange(client_id, client_secret)).await?;
        // Renew a minute early as the docs advise, but never more than a fifth of the lifetime
        // early, so that short-lived tokens (seconds, in tests) are still used.
        let margin = Duration::from_secs(60).min(lifetime / 5);
        *cached = Some(CachedToken { token: token.clone(), renew_at: Instant::now() + lifetime - margin });
        if let Ok(mut s) = self.stats.lock() {
            s.token_renewals += 1;
        }
        Ok(token)
    }

    /// Waits while the management credential's budget is spent, then takes one request from it.
    async fn pace(&self) {
        loop {
            let wait = {
                let Ok(mut budget) = self.budget.lock() else { return };
                let now = Instant::now();
                if budget.reset_at.is_some_and(|reset| reset <= now) {
                    // A new window began; the next response tells the new budget.
                    *budget = Budget::default();
                }
                match (budget.remaining, budget.reset_at) {
                    (Some(0), Some(reset)) => reset - now,
                    (Some(n), _) => {
                        budget.remaining = Some(n - 1);
                        return;
                    }
                    // Unknown budget: let one request learn it, the others wait a moment (unless
                    // its answer is slow to come, or never carries the headers).
                    (None, _) => match budget.probing_since {
                        Some(since) if now - since < Duration::from_secs(2) => Duration::from_millis(20),
                        _ => {
                            budget.probing_since = Some(now);
                            return;
                        }
                    },
                }
            };
            if wait > Duration::from_millis(20) {
                tracing::info!(wait_ms = wait.as_millis() as u64, "toktra rate budget spent; pacing requests");
                if let Ok(mut s) = self.stats.lock() {
                    s.paced_waits += 1;
                }
            }
            tokio::time::sleep(wait.min(self.settings.retry.max_rate_limit_wait)).await;
        }
    }

    fn update_budget(&self, headers: &HeaderMap) {
        let number =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
        let (Some(remaining), Some(reset)) = (number("x-ratelimit-remaining"), number("x-ratelimit-reset")) else {
            return;
        };
        let until = Duration::from_secs((reset - Utc::now().timestamp()).clamp(0, 3_600) as u64);
        if let Ok(mut budget) = self.budget.lock() {
            budget.probing_since = None;
            let remaining = remaining.max(0) as u64;
            if budget.window == Some(reset) && budget.remaining.is_some_and(|known| known < remaining) {
                return;
            }
            budget.window = Some(reset);
            budget.remaining = Some(remaining);
            // A reset that is already due would never pause; keep at least a second.
            budget.reset_at = Some(Instant::now() + until.max(Duration::from_secs(1)));
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let retry = &self.settings.retry;
        // Nearly full jitter: spreads retries of concurrent rotations apart.
        crate::backoff::Backoff::new(retry.base_delay, retry.max_delay).jittered(0.1).delay(attempt)
    }

    fn count_retry(&self) {
        if let Ok(mut s) = self.stats.lock() {
            s.retries += 1;
        }
    }

    fn count_status(&self, status: &str) {
        if let Ok(mut s) = self.stats.lock() {
            s.requests += 1;
            *s.by_status.entry(status.to_string()).or_default() += 1;
        }
    }

    /// One API call with the retry rules: `429` is waited out (never counts as a failure while
    /// the wait fits the budget), a management `401` renews the token once, and transient
    /// failures are retried with backoff when `idempotent`.
    async fn request(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Body<'_>,
        auth: Auth<'_>,
        idempotent: bool,
    ) -> Result<Value, Error> {
        let url = self.url(path);
        let mut attempt: u32 = 0;
        let mut renewed = false;
        let mut rate_limited_for = Duration::ZERO;
        loop {
            attempt += 1;
            if matches!(auth, Auth::Management) {
                self.pace().await;
            }
            let mut req = self.http.request(method.clone(), &url);
            let sent = match auth {
                Auth::Management => Some(self.management_token(false).await?),
                Auth::Bearer(secret) => Some(secret.clone()),
                Auth::Exchange { .. } => None,
            };
            if let Ok(mut stats) = self.stats.lock() {
                match auth {
                    Auth::Management | Auth::Exchange { management: true } => {
                        stats.management_calls += 1;
                        let call = what.split_whitespace().next().unwrap_or("other").to_string();
                        *stats.management_by_call.entry(call).or_default() += 1;
                    }
                    Auth::Bearer(_) | Auth::Exchange { management: false } => stats.probe_calls += 1,
                }
            }
            if let Some(token) = &sent {
                req = req.header(AUTHORIZATION, format!("Bearer {}", token.expose()));
            }
            req = match &body {
                Body::Empty => req,
                Body::Json(v) => req.json(v),
                Body::Form(f) => req.form(f),
            };
            let response = match req.send().await {
                Ok(r) => r,
                Err(source) => {
                    self.count_status("error");
                    let e = Error::Transport { what: what.to_string(), host: self.host(), error: source.without_url() };
                    if idempotent && attempt < self.settings.retry.attempts {
                        tracing::debug!(error = %e, attempt, "transient toktra failure; retrying");
                        self.count_retry();
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    return Err(e);
                }
            };
            let status = response.status();
            self.count_status(status.as_str());
            let headers = response.headers().clone();
            if matches!(auth, Auth::Management) {
                self.update_budget(&headers);
            }
            let bytes = match response.bytes().await {
                Ok(b) => b,
                Err(source) => {
                    let e = Error::Transport { what: what.to_string(), host: self.host(), error: source.without_url() };
                    if idempotent && attempt < self.settings.retry.attempts {
                        self.count_retry();
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    return Err(e);
                }
            };
            if status.is_success() {
                if bytes.is_empty() || status == StatusCode::NO_CONTENT {
                    return Ok(Value::Null);
                }
                // serde_json's message names a position, never the content; bounded all the same.
                return serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
                    what: what.to_string(),
                    detail: shorten(&printable(&format!("invalid JSON: {e}")), MAX_MESSAGE),
                });
            }
            let (code, message) = error_body(&bytes);
            // Every request carries a secret (a token, a key, or a client secret in the form), and
            // nothing guarantees a server never echoes it: the token endpoint's messages and
            // answers about credentials (401, 403) are dropped, and any other message, and any
            // code, is kept only if it does not contain a secret that was sent. `error_body` has
            // removed control characters, so none can hide an echo from this check; the texts
            // are shortened only after it, so a cut cannot split an echoed secret past it.
            let mut carried: Vec<&str> = sent.iter().map(|s| s.expose()).collect();
            if let Body::Form(form) = &body {
                carried.extend(form.iter().filter(|(key, _)| *key == "client_secret").map(|(_, value)| *value));
            }
            let code = match code {
                Some(c) if !carried.iter().any(|s| echoes(&c, s)) => shorten(&c, MAX_CODE),
                _ => "unknown_error".to_string(),
            };
            let message = message
                .filter(|m| {
                    !matches!(auth, Auth::Exchange { .. })
                        && !matches!(status.as_u16(), 401 | 403)
                        && !carried.iter().any(|s| echoes(m, s))
                })
                .map(|m| shorten(&m, MAX_MESSAGE))
                .or_else(|| status.is_redirection().then(|| "redirects are not followed".to_string()));
            let err = Error::Api { what: what.to_string(), status: status.as_u16(), code, message };
            if status == StatusCode::TOO_MANY_REQUESTS {
                // 429 means the request was not processed, so even a create may be sent again.
                let wait = retry_after(&headers).unwrap_or_else(|| self.backoff(attempt));
                rate_limited_for += wait;
                // Bounded twice over: one wait, and all waits of this call together.
                if wait <= self.settings.retry.max_rate_limit_wait
                    && rate_limited_for <= self.settings.retry.max_rate_limit_wait * 2
                {
                    tracing::info!(wait_ms = wait.as_millis() as u64, "toktra rate limit reached; waiting");
                    if let Ok(mut s) = self.stats.lock() {
                        s.rate_limit_waits += 1;
                    }
                    tokio::time::sleep(wait).await;
                    attempt -= 1;
                    continue;
                }
                return Err(Error::RateLimited { what: what.to_string(), retry_after: wait });
            }
            if status == StatusCode::UNAUTHORIZED
                && matches!(auth, Auth::Management)
                && !renewed
                && let ManagementAuth::Client { .. } = self.settings.auth
            {
                // The token may have expired early or been revoked; a 401 means the request
                // was not processed, so it is safe to send again with a fresh token.
                renewed = true;
                self.management_token(true).await?;
                attempt -= 1;
                continue;
            }
            if err.is_transient() && idempotent && attempt < self.settings.retry.attempts {
                tracing::debug!(error = %err, attempt, "transient toktra failure; retrying");
                self.count_retry();
                tokio::time::sleep(self.backoff(attempt)).await;
                continue;
            }
            return Err(err);
        }
    }
}

/// A token's lifetime when `expires_in` is missing or makes no sense (Toktra's documented one).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3_600);
/// The longest a token is believed to live, whatever the server says: a cached token is renewed
/// at `Instant::now() + lifetime`, which panics on overflow (`expires_in: 18446744073709551615`).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3_600);

/// `expires_in` read tolerantly: an integer, a float (`3600.0`) or a numeric string (`"3600"`),
/// capped at [`MAX_TOKEN_LIFETIME`]. Missing, below a second, negative or unreadable counts as
/// [`DEFAULT_TOKEN_LIFETIME`]: a token that expires sooner gets a 401, which renews it once,
/// whereas taking such a value at its word would fetch a new token before every request.
fn token_lifetime(expires_in: Option<&Value>) -> Duration {
    let seconds = match expires_in {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match seconds {
        Some(s) if s.is_finite() && s >= 1.0 => Duration::from_secs_f64(s.min(MAX_TOKEN_LIFETIME.as_secs_f64())),
        _ => DEFAULT_TOKEN_LIFETIME,
    }
}

/// An error and its causes on one line (`error sending request: client error (Connect):
/// tcp connect error: Connection refused (os error 111)`), each said once.
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

/// `Retry-After` in seconds, else the time until `X-RateLimit-Reset` (Unix seconds).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name| headers.get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok());
    if let Some(secs) = header(RETRY_AFTER.as_str()).and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    let reset = header("x-ratelimit-reset").and_then(|v| v.trim().parse::<i64>().ok())?;
    let wait = reset - Utc::now().timestamp();
    Some(Duration::from_secs(wait.clamp(1, 3_600) as u64))
}

/// Whether `message` contains `secret`, or a long enough piece of it (16 characters) to matter.
fn echoes(message: &str, secret: &str) -> bool {
    const PIECE: usize = 16;
    if secret.len() <= PIECE {
        return message.contains(secret);
    }
    let bytes = secret.as_bytes();
    (0..=bytes.len() - PIECE)
        .filter(|i| secret.is_char_boundary(*i) && secret.is_char_boundary(i + PIECE))
        .any(|i| message.contains(&secret[i..i + PIECE]))
}

/// Longest error code and message (in characters) kept from a server's answer: a hostile or
/// broken server must not flood the logs, the journal or notifications.
const MAX_CODE: usize = 64;
const MAX_MESSAGE: usize = 200;

/// An error answer's code and message, with control characters and invisible formatting
/// characters removed (they could forge log lines, drive a terminal, or reorder text), whole:
/// the caller checks them for echoed secrets before [`shorten`]ing them. Empty ones are absent.
fn error_body(bytes: &[u8]) -> (Option<String>, Option<String>) {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(printable).filter(|t| !t.trim().is_empty());
    let code = text(value.get("error"));
    let message = text(value.get("message").or_else(|| value.get("error_description")));
    (code, message)
}

/// Invisible formatting characters: zero-width spaces, joiners and direction marks,
/// bidirectional overrides and isolates, the byte order mark.
const INVISIBLE: [std::ops::RangeInclusive<char>; 4] =
    ['\u{200b}'..='\u{200f}', '\u{202a}'..='\u{202e}', '\u{2066}'..='\u{2069}', '\u{feff}'..='\u{feff}'];

/// `text` without control characters (C0, DEL, C1) and [`INVISIBLE`] ones.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control() && !INVISIBLE.iter().any(|r| r.contains(c))).collect()
}

/// At most `max` characters of `text`, marked with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// A string field as vendors send it: anything that is not a non-empty string reads as absent,
/// so an unexpected type in a field rotator does not need never fails the whole answer.
fn lenient_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    use serde::Deserialize;
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) if !text.is_empty() => Some(text),
        _ => None,
    })
}

/// A list of strings as vendors send it: a non-list reads as empty, non-strings in it are skipped.
fn lenient_texts<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    use serde::Deserialize;
    Ok(match Value::deserialize(deserializer)? {
        Value::Array(items) => items.into_iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    })
}

/// A credential as a create or list answer describes it. The contract names `id` (API keys),
/// `client_id` (OAuth clients) and `key`/`client_secret`; other vendors' spellings are read too.
/// Which ID wins when several are present depends on the kind (see [`Described::id`]).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Described {
    #[serde(deserialize_with = "lenient_text")]
    id: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    client_id: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    key_id: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    client_secret: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    key: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    api_key: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    secret: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    name: Option<String>,
    #[serde(deserialize_with = "lenient_texts")]
    scopes: Vec<String>,
    #[serde(deserialize_with = "lenient_text")]
    created_at: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    last_used_at: Option<String>,
}

impl Described {
    fn read(value: &Value) -> Described {
        Described::deserialize(value).unwrap_or_default()
    }

    fn id(&mut self, kind: CredentialKind) -> Option<String> {
        match kind {
            CredentialKind::OauthClient => self.client_id.take().or_else(|| self.id.take()),
            CredentialKind::ApiKey => self.id.take().or_else(|| self.key_id.take()),
        }
    }

    fn secret(&mut self, kind: CredentialKind) -> Option<String> {
        match kind {
            CredentialKind::OauthClient => self.client_secret.take().or_else(|| self.secret.take()),
            CredentialKind::ApiKey => self.key.take().or_else(|| self.api_key.take()).or_else(|| self.secret.take()),
        }
    }
}

fn parse_minted(kind: CredentialKind, what: &str, value: Value) -> Result<Minted, Error> {
    let mut described = Described::read(&value);
    let id = described
        .id(kind)
        .ok_or_else(|| Error::Decode { what: what.into(), detail: "no id in the create response".into() })?;
    let secret = described.secret(kind).ok_or_else(|| Error::Decode {
        what: what.into(),
        detail: format!("no secret in the create response of {}", shorten(&printable(&id), MAX_CODE)),
    })?;
    Ok(Minted {
        id,
        name: described.name.unwrap_or_default(),
        secret: Secret::new(secret),
        revoked_strays: Vec::new(),
        lost_answers: 0,
    })
}

/// Whether a list item describes a revoked credential. Any one sign counts: a `revoked_at` (or
/// `deleted_at`/`disabled_at`) that is set, `revoked: true`, `active`/`enabled: false`, or a
/// `status`/`state` naming an ended credential. An item with none of them is active.
fn is_revoked(item: &Value) -> bool {
    const ENDED: &[&str] = &["revoked", "inactive", "deleted", "disabled", "expired", "deactivated", "suspended"];
    let set = |name: &str| item.get(name).is_some_and(|v| !v.is_null() && v != "" && v != false);
    let flag = |name: &str| item.get(name).and_then(Value::as_bool);
    ["revoked_at", "deleted_at", "disabled_at"].into_iter().any(set)
        || flag("revoked") == Some(true)
        || flag("active") == Some(false)
        || flag("enabled") == Some(false)
        || ["status", "state"].into_iter().any(|name| {
            item.get(name)
                .and_then(Value::as_str)
                .is_some_and(|s| ENDED.iter().any(|ended| s.trim().eq_ignore_ascii_case(ended)))
        })
}

fn parse_listed(kind: CredentialKind, item: &Value) -> Option<Listed> {
    let mut described = Described::read(item);
    let time =
        |text: Option<String>| text.and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
    Some(Listed {
        id: described.id(kind)?,
        name: described.name.take().unwrap_or_default(),
        scopes: std::mem::take(&mut described.scopes),
        created_at: time(described.created_at.take()),
        last_used_at: time(described.last_used_at.take()),
    })
}

/// Everything but RFC 3986's unreserved characters.
const RESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes everything but unreserved characters (IDs and cursors are opaque).
fn url_escape(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Create and list answers in the contract's spelling and in other vendors': the ID the
    /// kind names wins, fields of unexpected types read as absent instead of failing the answer.
    #[test]
    fn credentials_are_read_in_every_spelling() {
        let oauth = json!({ "id": "internal-7", "client_id": "cl_1", "secret": "s1", "name": 5 });
        let minted = parse_minted(CredentialKind::OauthClient, "create", oauth).unwrap();
        assert_eq!((minted.id.as_str(), minted.secret.expose(), minted.name.as_str()), ("cl_1", "s1", ""));
        let key = json!({ "key_id": "k_1", "api_key": "tk_1", "scopes": "usage:read" });
        let minted = parse_minted(CredentialKind::ApiKey, "create", key).unwrap();
        assert_eq!((minted.id.as_str(), minted.secret.expose()), ("k_1", "tk_1"));
        let e = parse_minted(CredentialKind::ApiKey, "create", json!({ "id": "k_2", "key": "" })).unwrap_err();
        assert!(e.to_string().contains("no secret in the create response of k_2"), "{e}");

        let item = json!({
            "id": "k_3", "name": "n", "scopes": ["a", 1, "b"], "created_at": "2026-01-02T03:04:05Z", "last_used_at": 17
        });
        let listed = parse_listed(CredentialKind::ApiKey, &item).unwrap();
        assert_eq!((listed.id.as_str(), listed.scopes.clone()), ("k_3", vec!["a".to_string(), "b".to_string()]));
        assert!(listed.created_at.is_some() && listed.last_used_at.is_none());
        assert!(parse_listed(CredentialKind::OauthClient, &json!({ "name": "no id" })).is_none());
        assert!(parse_listed(CredentialKind::OauthClient, &json!("not an object")).is_none());
    }

    #[test]
    fn a_reason_does_not_repeat_the_call() {
        let e =
            Error::Api { what: "list oauth_clients".into(), status: 401, code: "unauthorized".into(), message: None };
        assert_eq!(e.to_string(), "list oauth_clients: toktra answered 401 unauthorized");
        assert_eq!(e.reason(), "toktra answered 401 unauthorized");
    }

    #[test]
    fn token_lifetimes() {
        let lifetime = |v: Value| token_lifetime(Some(&v));
        let hour = Duration::from_secs(3_600);
        assert_eq!(lifetime(serde_json::json!(120)), Duration::from_secs(120));
        assert_eq!(lifetime(serde_json::json!(90.5)), Duration::from_secs_f64(90.5));
        assert_eq!(lifetime(serde_json::json!("120")), Duration::from_secs(120));
        assert_eq!(lifetime(serde_json::json!(u64::MAX)), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime(serde_json::json!(1e300)), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime(serde_json::json!("18446744073709551616000")), MAX_TOKEN_LIFETIME);
        for unusable in [
            serde_json::json!(0),
            serde_json::json!(-5),
            serde_json::json!(i64::MIN),
            serde_json::json!(0.5),
            serde_json::json!("soon"),
            serde_json::json!("NaN"),
            serde_json::json!("inf"),
            serde_json::json!(null),
            serde_json::json!([3600]),
        ] {
            assert_eq!(lifetime(unusable.clone()), hour, "{unusable}");
        }
        assert_eq!(token_lifetime(None), hour);
    }

    #[test]
    fn error_bodies_are_printable_and_bounded_after_the_echo_check() {
        let body = serde_json::json!({
            "error": format!("bad\u{1b}[31m\n{}", "c".repeat(100_000)),
            "message": format!("line\r\nERROR forged\u{202e}{}", "m".repeat(100_000)),
        });
        let (code, message) = error_body(body.to_string().as_bytes());
        let (code, message) = (code.unwrap(), message.unwrap());
        assert!(code.starts_with("bad[31m") && code.len() == 100_007, "whole until checked");
        assert!(message.starts_with("lineERROR forged") && !message.chars().any(char::is_control));
        assert_eq!(shorten(&code, MAX_CODE).chars().count(), MAX_CODE + 1);
        assert!(shorten(&code, MAX_CODE).ends_with('…'));
        assert_eq!(shorten("short", MAX_CODE), "short");
        assert_eq!(shorten("ééé", 2), "éé…");
        // Control characters between the characters of an echoed secret do not hide it.
        let secret = "tcs_0123456789abcdefghij";
        let hidden: String = secret.chars().flat_map(|c| [c, '\u{0}']).collect();
        let (code, _) = error_body(serde_json::json!({ "error": hidden }).to_string().as_bytes());
        assert!(echoes(&code.unwrap(), secret));
        assert_eq!(error_body(b"{\"error\": \"\\u0007\"}"), (None, None));
        assert_eq!(error_body(b"not json"), (None, None));
    }

    #[test]
    fn revoked_list_items_are_recognised_in_every_shape_vendors_use() {
        let active = [
            json!({"id": "k"}),
            json!({"id": "k", "revoked_at": null}),
            json!({"id": "k", "revoked_at": ""}),
            json!({"id": "k", "status": "active"}),
            json!({"id": "k", "state": "ACTIVE", "revoked": false, "active": true, "enabled": true}),
        ];
        let revoked = [
            json!({"id": "k", "revoked_at": "2026-12-01T00:00:00Z"}),
            json!({"id": "k", "deleted_at": "2026-12-01T00:00:00Z"}),
            json!({"id": "k", "status": "revoked"}),
            json!({"id": "k", "state": "Inactive"}),
            json!({"id": "k", "status": "disabled"}),
            json!({"id": "k", "revoked": true}),
            json!({"id": "k", "active": false}),
            json!({"id": "k", "enabled": false}),
        ];
        for item in &active {
            assert!(!is_revoked(item), "active: {item}");
        }
        for item in &revoked {
            assert!(is_revoked(item), "revoked: {item}");
        }
    }
}
