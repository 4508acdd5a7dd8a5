//! Run-time configuration from the environment (SPEC section 6): Toktra's URL and the rotator's
//! management credential, the journal URL, Vault, and the standard AWS chain. Secrets are held
//! as [`Secret`] and none has a default.

use std::time::Duration;

use crate::duration;
use crate::secret::Secret;
use crate::store::{self, vault};
use crate::toktra::{self, ManagementAuth};

pub const DEFAULT_TOKTRA_URL: &str = "https://api.toktra.io/v1";
pub const DEFAULT_DATABASE_URL: &str = "rotator.db";

#[derive(Clone)]
pub struct Config {
    pub toktra_url: String,
    pub toktra_auth: Option<ManagementAuth>,
    pub toktra_timeout: Duration,
    pub toktra_page_size: u32,
    /// Endpoint paths below the base URL (undocumented at Toktra, so overridable).
    pub toktra_endpoints: toktra::Endpoints,
    pub database_url: String,
    pub vault_addr: Option<String>,
    pub vault_token: Option<Secret>,
    pub vault_namespace: Option<String>,
    pub aws_endpoint: Option<String>,
}

impl std::fmt::Debug for Config {
    // By hand: the journal URL may carry a database password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("toktra_url", &self.toktra_url)
            .field("toktra_auth", &self.toktra_auth)
            .field("database_url", &crate::journal::display_url(&self.database_url))
            .field("vault_addr", &self.vault_addr)
            .field("aws_endpoint", &self.aws_endpoint)
            .finish_non_exhaustive()
    }
}

/// A configuration problem, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct Error {
    pub variable: &'static str,
    pub message: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    pub fn from_env() -> Result<Config, Error> {
        let toktra_auth = match (var("TOKTRA_API_KEY"), var("TOKTRA_CLIENT_ID"), var("TOKTRA_CLIENT_SECRET")) {
            (Some(_), Some(_), _) => {
                return Err(Error {
                    variable: "TOKTRA_API_KEY",
                    message: "set either TOKTRA_API_KEY or TOKTRA_CLIENT_ID/TOKTRA_CLIENT_SECRET, not both".into(),
                });
            }
            (Some(key), None, _) => Some(ManagementAuth::ApiKey(Secret::new(key))),
            (None, Some(client_id), Some(secret)) => {
                Some(ManagementAuth::Client { client_id, client_secret: Secret::new(secret) })
            }
            (None, Some(_), None) => {
                return Err(Error {
                    variable: "TOKTRA_CLIENT_SECRET",
                    message: "TOKTRA_CLIENT_ID is set but TOKTRA_CLIENT_SECRET is not".into(),
                });
            }
            (None, None, Some(_)) => {
                return Err(Error {
                    variable: "TOKTRA_CLIENT_ID",
                    message: "TOKTRA_CLIENT_SECRET is set but TOKTRA_CLIENT_ID is not".into(),
                });
            }
            (None, None, None) => None,
        };
        let toktra_timeout = match var("TOKTRA_TIMEOUT") {
            Some(text) => duration::parse(&text).map_err(|message| Error { variable: "TOKTRA_TIMEOUT", message })?,
            None => Duration::from_secs(30),
        };
        let toktra_page_size = match var("TOKTRA_PAGE_SIZE") {
            Some(text) => text.parse::<u32>().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| Error {
                variable: "TOKTRA_PAGE_SIZE",
                message: format!("`{text}` is not a number from 1 to 100"),
            })?,
            None => 100,
        };
        let mut toktra_endpoints = toktra::Endpoints::default();
        for (variable, path) in [
            ("TOKTRA_TOKEN_PATH", &mut toktra_endpoints.token),
            ("TOKTRA_OAUTH_CLIENTS_PATH", &mut toktra_endpoints.oauth_clients),
            ("TOKTRA_API_KEYS_PATH", &mut toktra_endpoints.api_keys),
            ("TOKTRA_USAGE_PATH", &mut toktra_endpoints.usage),
        ] {
            if let Some(value) = var(variable) {
                *path = value;
            }
        }
        Ok(Config {
            toktra_endpoints,
            toktra_url: var("TOKTRA_API_URL").unwrap_or_else(|| DEFAULT_TOKTRA_URL.into()),
            toktra_auth,
            toktra_timeout,
            toktra_page_size,
            database_url: var("ROTATOR_DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
            vault_addr: var("VAULT_ADDR"),
            vault_token: var("VAULT_TOKEN").map(Secret::new),
            vault_namespace: var("VAULT_NAMESPACE"),
            aws_endpoint: var("AWS_ENDPOINT_URL"),
        })
    }

    /// The Toktra client; errors when no management credential is configured.
    pub fn toktra(&self) -> Result<toktra::Client, Error> {
        let auth = self.toktra_auth.clone().ok_or_else(|| Error {
            variable: "TOKTRA_API_KEY",
            message:
                "no Toktra management credential: set TOKTRA_API_KEY, or TOKTRA_CLIENT_ID and TOKTRA_CLIENT_SECRET"
                    .into(),
        })?;
        let mut settings = toktra::Settings::new(self.toktra_url.clone(), auth);
        settings.timeout = self.toktra_timeout;
        settings.page_size = self.toktra_page_size;
        settings.endpoints = self.toktra_endpoints.clone();
        toktra::Client::new(settings).map_err(|e| Error { variable: "TOKTRA_API_URL", message: e.to_string() })
    }

    /// Destination clients for the destinations the policies use (AWS and Vault are only
    /// configured when needed, so a file-only setup never touches the AWS credential chain).
    pub async fn clients(&self, need_aws: bool, need_vault: bool) -> Result<store::Clients, Error> {
        let vault = if need_vault {
            let addr = self.vault_addr.as_deref().ok_or_else(|| Error {
                variable: "VAULT_ADDR",
                message: "a policy writes to Vault but VAULT_ADDR is not set".into(),
            })?;
            let token = self.vault_token.as_ref().ok_or_else(|| Error {
                variable: "VAULT_TOKEN",
                message: "a policy writes to Vault but VAULT_TOKEN is not set".into(),
            })?;
            Some(
                vault::Connection::new(addr, token, self.vault_namespace.as_deref(), Duration::from_secs(15))
                    .map_err(|message| Error { variable: "VAULT_ADDR", message })?,
            )
        } else {
            None
        };
        let aws = if need_aws {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            if let Some(endpoint) = &self.aws_endpoint {
                loader = loader.endpoint_url(endpoint);
            }
            Some(loader.load().await)
        } else {
            None
        };
        Ok(store::Clients { aws, vault })
    }
}
