//! The client's calls: management requests (create, list, revoke) with the cached
//! management token, rate-limit pacing shared by every rotation of the process, retries of
//! what is safe to retry (never a create), and the probes that present a credential as a
//! consumer would.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::wire::*;
use super::*;

pub(super) struct CachedToken {
    token: Secret,
    renew_at: Instant,
}

/// The management credential's rate-limit budget as Toktra's `X-RateLimit-*` headers last
/// reported it, less the requests sent since. Shared by every rotation using this client, so
/// concurrent rotations slow down together instead of all running into `429`s.
#[derive(Default)]
pub(super) struct Budget {
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
        let answer = TokenAnswer::read(&value);
        let token = answer
            .access_token
            .ok_or_else(|| Error::Decode { what: what.clone(), detail: "no access_token".into() })?;
        Ok((Secret::new(token), token_lifetime(answer.expires_in.as_ref())))
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
