//! Run-time configuration (SPEC section 6): one TOML file (`--config`, default `rotator.toml` if
//! present) with every value overridable from the environment, where the usual variables work as
//! users expect (`TOKTRA_*`, `VAULT_*`, the standard AWS chain, `ROTATOR_*`). Secrets are held as
//! [`Secret`] and none has a default; a secret may also be read from a file (`*_file`), so it
//! need not sit in the configuration file itself.
//!
//! This file holds [`Config`], the validated form the rest of the program reads, and [`Error`],
//! which names the variable, or the file, line and key, that a problem came from. The parts:
//! - `raw`: the file's shape as serde reads it (unknown keys refused); nothing validated.
//! - `load`: [`Config::load`]: the file overridden by the environment and validated, each
//!   problem blamed on where its value came from.
//! - `vault_auth`: `[vault] auth` and its method's table (or a token) into a [`VaultAuth`].
//! - `channels`: `[notifications.<name>]` tables into [`Channel`]s, with their secrets.
//! - `clients`: the Toktra client and the destination clients a `Config` describes.
//!
//! Invariant: every secret is held as a [`Secret`] (whose `Debug` redacts) from the moment it is
//! read, and the errors built here name variables, keys, paths and hosts, never a secret's value
//! or length (a notification URL counts as a secret).

mod channels;
mod clients;
mod load;
mod raw;
mod values;
mod vault_auth;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;
use crate::toktra::{self, ManagementAuth};

use values::read_secret;

pub use channels::{Channel, ChannelKind, MIN_SIGNING_SECRET_CHARS, PAGERDUTY_EVENTS_URL};
pub use vault_auth::VaultAuth;

pub const DEFAULT_TOKTRA_URL: &str = "https://api.toktra.io/v1";
pub const DEFAULT_DATABASE_URL: &str = "rotator.db";
pub const DEFAULT_CONFIG_FILE: &str = "rotator.toml";

/// The shortest API token `serve` accepts.
pub const MIN_API_TOKEN_CHARS: usize = 32;

#[derive(Clone)]
pub struct Config {
    /// The file this came from, if any.
    pub file: Option<PathBuf>,
    pub listen: SocketAddr,
    /// Where the HTTP API's token comes from; read and checked by [`Config::api_token`] only
    /// when `serve` needs it, so other commands need neither the file nor the variable.
    pub api_token: Option<ApiToken>,
    pub database_url: String,
    /// Rotations run at the same time by `serve` (and `rotate --all`).
    pub concurrency: usize,
    /// How often `serve` looks for due work without being asked.
    pub tick: Duration,
    /// How long SIGTERM waits for the steps in flight.
    pub shutdown_timeout: Duration,
    /// How long one rotation retries transient failures in one run (and, after
    /// `--revoke-first`, mints again) before it stops and a later run resumes it.
    pub rotation_budget: Duration,
    /// How long a policy's lease lasts without a heartbeat: the failover time after a replica
    /// dies mid-rotation.
    pub lease_ttl: Duration,
    pub toktra_url: String,
    pub toktra_auth: Option<ManagementAuth>,
    pub toktra_timeout: Duration,
    pub toktra_page_size: u32,
    /// Endpoint paths below the base URL (undocumented at Toktra, so overridable).
    pub toktra_endpoints: toktra::Endpoints,
    pub vault_addr: Option<String>,
    pub vault_auth: Option<VaultAuth>,
    pub vault_namespace: Option<String>,
    pub aws_region: Option<String>,
    pub aws_endpoint: Option<String>,
    pub aws_profile: Option<String>,
    pub channels: BTreeMap<String, Channel>,
    /// Whether the Toktra URL and `VAULT_ADDR` may be plain `http://` to a host that is not
    /// loopback (otherwise refused: their requests carry credentials).
    pub allow_insecure_http: bool,
    /// `/metrics` needs the API token too (it names policies and their schedules).
    pub metrics_auth: bool,
    /// How `serve` accepts connections.
    pub http: Http,
}

/// The HTTP server's limits and TLS.
#[derive(Debug, Clone)]
pub struct Http {
    /// Connections open at once; more wait in the backlog.
    pub max_connections: usize,
    /// For a request's head (and the TLS handshake).
    pub header_timeout: Duration,
    /// For a whole request, body included, from its head to the response.
    pub request_timeout: Duration,
    /// Certificate chain and private key (PEM files), reloaded on `SIGHUP`.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Where the HTTP API's bearer token comes from.
#[derive(Debug, Clone)]
pub enum ApiToken {
    /// Given directly (`ROTATOR_API_TOKEN`).
    Value { key: String, token: Secret },
    /// In a file (`api_token_file`), read when needed.
    File { key: String, path: PathBuf },
}

impl Config {
    /// The HTTP API's token, read now (from its file, if so configured) and checked.
    pub fn api_token(&self) -> Result<Option<Secret>, Error> {
        let (key, token) = match &self.api_token {
            None => return Ok(None),
            Some(ApiToken::Value { key, token }) => (key, token.clone()),
            Some(ApiToken::File { key, path }) => (key, read_secret(key, path)?),
        };
        // The API can rotate and revoke credentials; a short token can be guessed. Whitespace
        // does not count, as the server ignores it. The length is not reported: it is a secret's.
        if token.expose().trim().chars().count() < MIN_API_TOKEN_CHARS {
            return Err(error(
                key,
                format!(
                    "the API token must be at least {MIN_API_TOKEN_CHARS} characters long \
                     (e.g. the output of `openssl rand -hex 32`)"
                ),
            ));
        }
        Ok(Some(token))
    }
}

impl std::fmt::Debug for Config {
    // By hand: secrets are redacted by their type, and the journal URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("file", &self.file)
            .field("listen", &self.listen)
            .field("database_url", &crate::journal::display_url(&self.database_url))
            .field("toktra_url", &self.toktra_url)
            .field("toktra_auth", &self.toktra_auth)
            .field("vault_addr", &self.vault_addr)
            .field("aws_endpoint", &self.aws_endpoint)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

/// A configuration problem, naming the variable or the file and key.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct Error {
    pub variable: String,
    pub message: String,
}

fn error(variable: impl Into<String>, message: impl Into<String>) -> Error {
    Error { variable: variable.into(), message: message.into() }
}
