//! The Toktra API client: management calls (create, list, revoke OAuth clients and API keys)
//! authenticated with the rotator's own admin credential, and the probes that verify a minted
//! credential works or that a revoked one is rejected. Everything `toktra-api.md` only assumes
//! is configurable here ([`Endpoints`]) or parsed tolerantly. [`crate::sim`] is the project's
//! simulator of the same contract.

use std::collections::BTreeMap;
use std::sync::Mutex as SyncMutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::credential::CredentialKind;
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

mod client;
#[cfg(test)]
mod tests;
mod wire;

use client::{Budget, CachedToken};
pub use wire::causes;

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
