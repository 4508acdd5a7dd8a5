//! The clients a [`Config`] describes: the Toktra client, and the destination clients for the
//! destinations the policies use. AWS and Vault are set up only when a policy needs them, so a
//! file-only setup never touches the AWS credential chain; the Vault login happens here.

use std::time::Duration;

use crate::store::{self, vault};
use crate::toktra;

use super::{Config, Error, VaultAuth, error};

impl Config {
    /// The Toktra client; errors when no management credential is configured.
    pub fn toktra(&self) -> Result<toktra::Client, Error> {
        let auth = self.toktra_auth.clone().ok_or_else(|| {
            error(
                "TOKTRA_API_KEY",
                "no Toktra management credential: set TOKTRA_API_KEY, or TOKTRA_CLIENT_ID and TOKTRA_CLIENT_SECRET",
            )
        })?;
        let mut settings = toktra::Settings::new(self.toktra_url.clone(), auth);
        settings.timeout = self.toktra_timeout;
        settings.page_size = self.toktra_page_size;
        settings.endpoints = self.toktra_endpoints.clone();
        toktra::Client::new(settings).map_err(|e| error("TOKTRA_API_URL", e.to_string()))
    }

    /// Destination clients for the destinations the policies use (AWS and Vault are only
    /// configured when needed, so a file-only setup never touches the AWS credential chain).
    pub async fn clients(&self, need_aws: bool, need_vault: bool) -> Result<store::Clients, Error> {
        let vault = if need_vault {
            let addr = self
                .vault_addr
                .as_deref()
                .ok_or_else(|| error("VAULT_ADDR", "a policy writes to Vault but VAULT_ADDR is not set"))?;
            // The token is renewed by `serve` (`Connection::renew_in_background`), and any call
            // that finds it expired logs in again once (`store::vault::connection`).
            let method = match &self.vault_auth {
                Some(VaultAuth::Token(token)) => vault::Method::Token(token.clone()),
                Some(VaultAuth::AppRole { mount, role_id, secret_id }) => vault::Method::AppRole {
                    mount: mount.clone(),
                    role_id: role_id.clone(),
                    secret_id: secret_id.clone(),
                },
                Some(VaultAuth::Kubernetes { mount, role, token }) => {
                    vault::Method::Kubernetes { mount: mount.clone(), role: role.clone(), token: token.clone() }
                }
                Some(VaultAuth::Jwt { mount, role, token }) => {
                    vault::Method::Jwt { mount: mount.clone(), role: role.clone(), token: token.clone() }
                }
                Some(VaultAuth::Aws { mount, role, header_value, sts_endpoint, sts_region }) => {
                    let credentials = self.aws_sdk().await.credentials_provider().ok_or_else(|| {
                        error("vault.aws", "the AWS SDK found no credential provider for the aws login")
                    })?;
                    vault::Method::Aws(vault::auth::Aws {
                        mount: mount.clone(),
                        role: role.clone(),
                        header_value: header_value.clone(),
                        sts_endpoint: sts_endpoint.clone(),
                        sts_region: sts_region.clone(),
                        credentials,
                    })
                }
                None => {
                    return Err(error(
                        "VAULT_TOKEN",
                        "a policy writes to Vault but neither VAULT_TOKEN nor [vault] token_file or an auth method is set",
                    ));
                }
            };
            let name = method.name();
            Some(
                vault::Connection::login(addr, self.vault_namespace.as_deref(), Duration::from_secs(15), method)
                    .await
                    .map_err(|message| {
                        error(if name == "token" { "VAULT_ADDR".into() } else { format!("vault.{name}") }, message)
                    })?,
            )
        } else {
            None
        };
        let aws = if need_aws { Some(self.aws_sdk().await) } else { None };
        Ok(store::Clients { aws, vault })
    }

    /// The AWS SDK's configuration from the standard chain, with this configuration's region,
    /// endpoint and profile.
    async fn aws_sdk(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(endpoint) = &self.aws_endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = &self.aws_region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(profile) = &self.aws_profile {
            loader = loader.profile_name(profile);
        }
        loader.load().await
    }
}
