//! The kinds of credential Toktra issues. Shared by the policy format, the Toktra client, the
//! destinations and the journal, so none of them needs the policy module for it.

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;

/// What a policy rotates at Toktra.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// An OAuth client (client_credentials). Toktra cannot regenerate a client's secret, so each
    /// rotation creates a new client: consumers get a new `client_id` with the new secret.
    OauthClient,
    /// An API key.
    ApiKey,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::OauthClient => "oauth_client",
            CredentialKind::ApiKey => "api_key",
        }
    }

    pub fn parse(text: &str) -> Option<CredentialKind> {
        match text {
            "oauth_client" => Some(CredentialKind::OauthClient),
            "api_key" => Some(CredentialKind::ApiKey),
            _ => None,
        }
    }

    /// Whether Toktra lets this kind carry scopes. Both do, per the vendor contract
    /// (toktra-api.md); the check stays so that a kind without scopes is one line to add.
    pub fn has_scopes(self) -> bool {
        match self {
            CredentialKind::OauthClient | CredentialKind::ApiKey => true,
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
