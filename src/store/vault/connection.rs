//! The Vault connection every Vault destination of a run shares, and the one place its calls go
//! through. Its token can change while it is in use: the renewal task (started by `serve`)
//! renews it at about two thirds of its TTL and logs in again when renewal stops extending it
//! (the max TTL), and any call that Vault answers `403` asks Vault whether the token itself is
//! still valid (`auth/token/lookup-self`): if not, the connection logs in again with its auth
//! method and the call is retried once; if it is, the `403` was the ACL and is reported as it is,
//! never retried. Callers that find the token invalid together log in once.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use vaultrs::client::{VaultClient, VaultClientSettings, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::auth::{Login, LoginError, Method};
use crate::secret::Secret;

/// A Vault connection: cheap to clone, every clone sees the current token.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    address: String,
    namespace: Option<String>,
    timeout: Duration,
    /// For the calls vaultrs lacks, logins and renewals; never follows a redirect.
    http: reqwest::Client,
    /// The HTTP client of every vaultrs client this connection builds (vaultrs's own, rebuilt
    /// without redirects, see [`no_redirects`]).
    vault_http: reqwest::Client,
    method: Method,
    /// The token in use, replaced whole by a login.
    session: RwLock<Arc<Session>>,
    /// Held while logging in, so callers that found the token invalid together log in once.
    login: tokio::sync::Mutex<()>,
}

/// One token and the vaultrs client that sends it.
struct Session {
    client: Arc<VaultClient>,
    token: Secret,
    /// Counts the logins of this connection: a caller whose token failed can tell whether
    /// another caller already replaced it.
    generation: u64,
    /// The lease the login answered with; `None` for a token given to rotator, until looked up.
    lease: Option<Lease>,
}

/// What Vault said about a token's lifetime, and when.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// `0`: the token never expires.
    ttl: Duration,
    renewable: bool,
    at: Instant,
    /// The TTL a fresh token of this kind gets: a renewal that gives less has reached the
    /// token's max TTL.
    full: Duration,
}

/// A Vault call that failed: Vault's answer to a vaultrs call, a failure worth trying again
/// (transport, an unexpected answer to a call of our own), or a token that is invalid and could
/// not be replaced.
#[derive(Debug)]
pub enum CallError {
    Vault(ClientError),
    Other(String),
    Login(LoginError),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Vault(e) => write!(f, "{e}"),
            CallError::Other(message) => f.write_str(message),
            CallError::Login(e) => f.write_str(&e.message),
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.inner.address)
            .field("method", &self.inner.method)
            .finish_non_exhaustive()
    }
}

/// Whether a vaultrs error is Vault's `403`.
fn forbidden(e: &ClientError) -> bool {
    match e {
        ClientError::APIError { code, .. } => *code == 403,
        ClientError::RestClientError { source: rustify::errors::ClientError::ServerResponseError { code, .. } } => {
            *code == 403
        }
        _ => false,
    }
}

impl Connection {
    /// A connection with a token given to rotator (the `token` method).
    pub fn new(
        address: &str,
        token: &Secret,
        namespace: Option<&str>,
        timeout: Duration,
    ) -> Result<Connection, String> {
        Connection::build(address, namespace, timeout, Method::Token(token.clone()), token.clone(), None)
    }

    /// A connection that logs in with `method` now (or, for `token`, uses the token).
    pub async fn login(
        address: &str,
        namespace: Option<&str>,
        timeout: Duration,
        method: Method,
    ) -> Result<Connection, String> {
        if let Method::Token(token) = &method {
            return Connection::new(address, token, namespace, timeout);
        }
        let http = plain_http(timeout)?;
        let login = method.login(&http, address, namespace).await.map_err(|e| e.message)?;
        let lease = Lease { ttl: login.ttl, renewable: login.renewable, at: Instant::now(), full: login.ttl };
        tracing::info!(method = method.name(), ttl_seconds = login.ttl.as_secs(), "logged in to vault");
        Connection::build(address, namespace, timeout, method, login.token, Some(lease))
    }

    fn build(
        address: &str,
        namespace: Option<&str>,
        timeout: Duration,
        method: Method,
        token: Secret,
        lease: Option<Lease>,
    ) -> Result<Connection, String> {
        // vaultrs panics on an address it cannot parse, so check it first.
        reqwest::Url::parse(address).map_err(|e| format!("VAULT_ADDR `{address}` is not a URL: {e}"))?;
        let namespace = namespace.filter(|n| !n.is_empty()).map(str::to_string);
        let address = address.trim_end_matches('/').to_string();
        let mut client = vault_client(&address, namespace.as_deref(), timeout, &token)?;
        let vault_http = no_redirects(&client.settings)?;
        client.http.http = vault_http.clone();
        let session = Session { client: Arc::new(client), token, generation: 0, lease };
        Ok(Connection {
            inner: Arc::new(Inner {
                address,
                namespace,
                timeout,
                http: plain_http(timeout)?,
                vault_http,
                method,
                session: RwLock::new(Arc::new(session)),
                login: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The auth method's name (`token`, `approle`, …).
    pub fn method(&self) -> &'static str {
        self.inner.method.name()
    }

    /// Whether an expiring token is replaced by logging in again (every method but `token`).
    pub fn can_login(&self) -> bool {
        self.inner.method.can_login()
    }

    fn session(&self) -> Arc<Session> {
        // A poisoned lock still holds a whole session: replacing it is a single assignment.
        self.inner.session.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs a vaultrs call with the current token; after a `403` for a token that is no longer
    /// valid, logs in again and runs it once more.
    pub(super) async fn vault<T, F, Fut>(&self, call: F) -> Result<T, CallError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let session = self.session();
        match call(session.client.clone()).await {
            Err(e) if forbidden(&e) => match self.recover(&session).await {
                Ok(true) => call(self.session().client.clone()).await.map_err(CallError::Vault),
                Ok(false) => Err(CallError::Vault(e)),
                Err(login) => Err(CallError::Login(login)),
            },
            result => result.map_err(CallError::Vault),
        }
    }

    /// One call of the Vault HTTP API that vaultrs does not offer, with the current token and the
    /// namespace: the status and the JSON body (`Null` when there is none), retried once after a
    /// `403` for a token that is no longer valid, as [`Connection::vault`] does. `what` names the
    /// call in errors, with the address and the cause, never the token.
    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<(reqwest::StatusCode, Value), CallError> {
        let session = self.session();
        let (status, answer) =
            self.send(&session.token, method.clone(), path, body.clone(), what).await.map_err(CallError::Other)?;
        if status != reqwest::StatusCode::FORBIDDEN {
            return Ok((status, answer));
        }
        match self.recover(&session).await {
            Ok(true) => self.send(&self.session().token, method, path, body, what).await.map_err(CallError::Other),
            Ok(false) => Ok((status, answer)),
            Err(e) => Err(CallError::Login(LoginError { message: format!("{what}: {}", e.message), ..e })),
        }
    }

    async fn send(
        &self,
        token: &Secret,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<(reqwest::StatusCode, Value), String> {
        let mut request = self
            .inner
            .http
            .request(method, format!("{}/v1/{path}", self.inner.address))
            .header("X-Vault-Token", token.expose());
        if let Some(ns) = &self.inner.namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let failed = |e: reqwest::Error| {
            format!("{what} at {}: {}", self.inner.address, crate::toktra::causes(&e.without_url()))
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let text = response.text().await.map_err(failed)?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// After a `403` answered to `failed`'s token: `Ok(true)` when the token has been replaced
    /// (by this caller or another) and the call should be tried again, `Ok(false)` when the token
    /// is valid (the `403` was the ACL's, or Vault could not say), `Err` when it is invalid and no
    /// new one could be had.
    async fn recover(&self, failed: &Session) -> Result<bool, LoginError> {
        if self.session().generation != failed.generation {
            return Ok(true);
        }
        match self.send(&failed.token, reqwest::Method::GET, "auth/token/lookup-self", None, "token lookup").await {
            // `lookup-self` is in Vault's default policy: only a token Vault no longer knows (expired,
            // revoked) is refused it.
            Ok((status, _)) if status == reqwest::StatusCode::FORBIDDEN => {}
            _ => return Ok(false),
        }
        self.relogin(failed.generation, "the vault token is no longer valid (expired or revoked)").await?;
        Ok(true)
    }

    /// Logs in again unless someone already has since `generation`; `why` goes to the log.
    async fn relogin(&self, generation: u64, why: &str) -> Result<(), LoginError> {
        let _one_at_a_time = self.inner.login.lock().await;
        if self.session().generation != generation {
            return Ok(());
        }
        let inner = &self.inner;
        if !inner.method.can_login() {
            tracing::error!(method = inner.method.name(), "{why}; the `token` auth method cannot log in again");
            return Err(LoginError::permanent(format!(
                "{why}, and the `token` auth method cannot log in again: give rotator a new token, or use an \
                 auth method that logs in (approle, kubernetes, jwt, aws)"
            )));
        }
        let login = match inner.method.login(&inner.http, &inner.address, inner.namespace.as_deref()).await {
            Ok(login) => login,
            Err(e) => {
                tracing::warn!(method = inner.method.name(), error = %e, "{why}; logging in again failed");
                return Err(LoginError { message: format!("{why}; logging in again failed: {}", e.message), ..e });
            }
        };
        self.install(login, generation + 1)
            .map_err(|e| LoginError::permanent(format!("{why}; after logging in again: {e}")))?;
        tracing::info!(method = inner.method.name(), logins = generation + 1, "{why}; logged in to vault again");
        Ok(())
    }

    /// Makes `login`'s token the one every caller uses from now on.
    fn install(&self, login: Login, generation: u64) -> Result<(), String> {
        let inner = &self.inner;
        let mut client = vault_client(&inner.address, inner.namespace.as_deref(), inner.timeout, &login.token)?;
        client.http.http = inner.vault_http.clone();
        let lease = Lease { ttl: login.ttl, renewable: login.renewable, at: Instant::now(), full: login.ttl };
        let session = Session { client: Arc::new(client), token: login.token, generation, lease: Some(lease) };
        *inner.session.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(session);
        Ok(())
    }

    /// The token's remaining lifetime in seconds (`auth/token/lookup-self`): `0` for a token
    /// that never expires (Vault's way of saying so). An error when Vault refuses the token and
    /// no new one could be had.
    pub async fn token_ttl(&self) -> Result<u64, String> {
        let (status, body) = self
            .call(reqwest::Method::GET, "auth/token/lookup-self", None, "token lookup")
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("token lookup at {}: vault answered {status}", self.inner.address));
        }
        Ok(body.get("data").and_then(|d| d.get("ttl")).and_then(Value::as_u64).unwrap_or(0))
    }

    /// Starts the renewal task: the token is renewed at about two thirds of its TTL, and replaced
    /// by a new login when renewal no longer extends it. The task ends when the returned handle
    /// is dropped (or stopped).
    pub fn renew_in_background(&self) -> Renewal {
        let connection = self.clone();
        Renewal(tokio::spawn(async move { connection.renew_loop().await }))
    }

    async fn renew_loop(self) {
        let method = self.inner.method.name();
        // The lease of the token being renewed, as this task last learnt it.
        let mut known: Option<(u64, Lease)> = None;
        let mut failures: u32 = 0;
        loop {
            let session = self.session();
            let lease = match known {
                Some((generation, lease)) if generation == session.generation => lease,
                _ => match session.lease {
                    Some(lease) => lease,
                    None => match self.lookup(&session.token).await {
                        Ok(lease) => lease,
                        Err(Renew::Invalid) if !self.inner.method.can_login() => {
                            // Every call reports it too; nothing here can help.
                            tracing::error!(method, "vault refuses the token: it is invalid, expired or revoked");
                            return;
                        }
                        Err(Renew::Invalid) => {
                            let why = "the vault token is no longer valid (expired or revoked)";
                            self.relogin_or_wait(session.generation, why, &mut failures).await;
                            continue;
                        }
                        Err(Renew::Failed(e)) => {
                            failures += 1;
                            tracing::warn!(method, error = %e, "cannot look up the vault token's lease; trying again");
                            tokio::time::sleep(backoff(failures)).await;
                            continue;
                        }
                    },
                },
            };
            known = Some((session.generation, lease));
            if lease.ttl.is_zero() {
                tracing::info!(method, "the vault token does not expire; nothing to renew");
                return;
            }
            let expires = lease.at + lease.ttl;
            tokio::time::sleep_until(lease.at + lease.ttl * 2 / 3).await;
            if self.session().generation != session.generation {
                // A call found the token invalid and logged in meanwhile: start over with the new one.
                continue;
            }
            let capped = lease.ttl < lease.full;
            if lease.renewable && !capped {
                match self.renew(&session.token).await {
                    Ok(renewed) => {
                        failures = 0;
                        let lease = Lease { full: lease.full, ..renewed };
                        known = Some((session.generation, lease));
                        if lease.ttl >= lease.full {
                            tracing::info!(method, ttl_seconds = lease.ttl.as_secs(), "vault token renewed");
                        } else if self.inner.method.can_login() {
                            // Renewal no longer extends the token: replace it well before it expires.
                            tracing::info!(
                                method,
                                ttl_seconds = lease.ttl.as_secs(),
                                "vault token renewal reached the token's max TTL"
                            );
                            self.relogin_or_wait(
                                session.generation,
                                "the vault token reached its max TTL",
                                &mut failures,
                            )
                            .await;
                        }
                        // (A capped token that cannot be replaced is reported by the next turn.)
                        continue;
                    }
                    Err(Renew::Invalid) if !self.inner.method.can_login() => {
                        // Every call reports it too; nothing here can help.
                        tracing::error!(method, "vault refuses the token: it expired or was revoked");
                        return;
                    }
                    Err(Renew::Invalid) => {}
                    Err(Renew::Failed(e)) => {
                        failures += 1;
                        tracing::warn!(method, error = %e, "vault token renewal failed; trying again");
                        let left = expires.saturating_duration_since(Instant::now());
                        tokio::time::sleep(backoff(failures).min(left / 2).max(Duration::from_millis(200))).await;
                        // Try again with the same lease: it is past two thirds, so at once.
                        continue;
                    }
                }
            }
            if self.inner.method.can_login() {
                let why = if lease.renewable && !capped {
                    "the vault token is no longer valid (expired or revoked)"
                } else if capped {
                    "the vault token reached its max TTL"
                } else {
                    "the vault token is not renewable"
                };
                self.relogin_or_wait(session.generation, why, &mut failures).await;
                continue;
            }
            // A token rotator cannot replace: say so, and again when it has expired.
            let left = expires.saturating_duration_since(Instant::now());
            tracing::warn!(
                method,
                ttl_seconds = left.as_secs(),
                "the vault token cannot be renewed and the `token` auth method cannot log in again: give rotator a renewable token or an auth method that logs in"
            );
            tokio::time::sleep_until(expires).await;
            if self.session().generation == session.generation {
                tracing::error!(method, "the vault token has expired; vault calls fail until rotator gets a new token");
                return;
            }
        }
    }

    /// Logs in again for the renewal task; on failure waits a backoff (the caller loops and
    /// tries again).
    async fn relogin_or_wait(&self, generation: u64, why: &str, failures: &mut u32) {
        match self.relogin(generation, why).await {
            Ok(()) => *failures = 0,
            Err(_) => {
                // `relogin` logged why.
                *failures += 1;
                tokio::time::sleep(backoff(*failures)).await;
            }
        }
    }

    /// `auth/token/renew-self` with `token`.
    async fn renew(&self, token: &Secret) -> Result<Lease, Renew> {
        let (status, body) = self
            .send(token, reqwest::Method::POST, "auth/token/renew-self", Some(serde_json::json!({})), "token renewal")
            .await
            .map_err(Renew::Failed)?;
        if status == reqwest::StatusCode::FORBIDDEN {
            return Err(Renew::Invalid);
        }
        if !status.is_success() {
            return Err(Renew::Failed(format!("token renewal at {}: vault answered {status}", self.inner.address)));
        }
        let ttl = Duration::from_secs(body["auth"]["lease_duration"].as_u64().unwrap_or(0));
        let renewable = body["auth"]["renewable"].as_bool().unwrap_or(false);
        Ok(Lease { ttl, renewable, at: Instant::now(), full: ttl })
    }

    /// The lease of `token` (`auth/token/lookup-self`), its full TTL taken from `creation_ttl`.
    async fn lookup(&self, token: &Secret) -> Result<Lease, Renew> {
        let (status, body) = self
            .send(token, reqwest::Method::GET, "auth/token/lookup-self", None, "token lookup")
            .await
            .map_err(Renew::Failed)?;
        if status == reqwest::StatusCode::FORBIDDEN {
            return Err(Renew::Invalid);
        }
        if !status.is_success() {
            return Err(Renew::Failed(format!("token lookup at {}: vault answered {status}", self.inner.address)));
        }
        let data = &body["data"];
        let ttl = Duration::from_secs(data["ttl"].as_u64().unwrap_or(0));
        let full = data["creation_ttl"].as_u64().map(Duration::from_secs).unwrap_or(ttl).max(ttl);
        Ok(Lease { ttl, renewable: data["renewable"].as_bool().unwrap_or(false), at: Instant::now(), full })
    }
}

enum Renew {
    /// Vault refused the token: it has expired or was revoked.
    Invalid,
    Failed(String),
}

/// 1 s, doubling, at most a minute.
fn backoff(failures: u32) -> Duration {
    crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).delay(failures.saturating_sub(1))
}

/// The renewal task of a connection; dropping it (or [`Renewal::stop`]) ends the task.
pub struct Renewal(tokio::task::JoinHandle<()>);

impl Renewal {
    pub fn stop(self) {}
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn plain_http(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("http client: {e}"))
}

/// A vaultrs client for `token`.
fn vault_client(
    address: &str,
    namespace: Option<&str>,
    timeout: Duration,
    token: &Secret,
) -> Result<VaultClient, String> {
    let mut builder = VaultClientSettingsBuilder::default();
    builder.address(address).token(token.expose()).timeout(Some(timeout));
    if let Some(ns) = namespace {
        builder.set_namespace(ns.to_string());
    }
    let settings = builder.build().map_err(|e| format!("vault settings: {e}"))?;
    VaultClient::new(settings).map_err(|e| format!("vault client: {e}"))
}

/// The HTTP client vaultrs 0.8 builds (`VaultClient::new`), rebuilt the same way but never
/// following a redirect. vaultrs has no setting for it and reqwest follows up to 10 by default,
/// removing only `Authorization` when the host changes, not `X-Vault-Token`: a redirect would hand
/// the token (and a request body with a secret) to whatever host it names.
fn no_redirects(settings: &VaultClientSettings) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .tls_backend_rustls()
        .redirect(reqwest::redirect::Policy::none())
        .tls_danger_accept_invalid_certs(!settings.verify);
    if let Some(timeout) = settings.timeout {
        builder = builder.timeout(timeout);
    }
    if settings.address.scheme() == "http" {
        // As vaultrs does (reqwest issue 2988): no certificate store is loaded for plain HTTP.
        builder = builder.tls_certs_only(Vec::new());
    } else {
        for path in &settings.ca_certs {
            let pem = std::fs::read(path).map_err(|e| format!("VAULT_CACERT {path}: {e}"))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("VAULT_CACERT {path}: {e}"))?;
            builder = builder.tls_certs_merge(certs);
        }
    }
    if let Some(identity) = &settings.identity {
        builder = builder.identity(identity.clone());
    }
    if let Some(proxy) = &settings.proxy {
        builder = builder.proxy(reqwest::Proxy::all(proxy.as_str()).map_err(|e| format!("vault proxy: {e}"))?);
    }
    builder.build().map_err(|e| format!("vault http client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
