//! The configuration file's shape, exactly what `rotator.toml` may say: serde structs that refuse
//! unknown keys, and the defaults of the Vault auth tables. Nothing here is validated or read
//! from the environment; `load` turns this raw form into a `Config`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::secret::Secret;
use crate::store::vault;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) listen: Option<String>,
    pub(super) api_token_file: Option<PathBuf>,
    pub(super) database_url: Option<String>,
    pub(super) concurrency: Option<usize>,
    pub(super) tick: Option<String>,
    pub(super) shutdown_timeout: Option<String>,
    pub(super) rotation_budget: Option<String>,
    pub(super) lease_ttl: Option<String>,
    pub(super) allow_insecure_http: Option<bool>,
    pub(super) metrics_auth: Option<bool>,
    pub(super) max_connections: Option<usize>,
    pub(super) header_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) toktra: ToktraFile,
    #[serde(default)]
    pub(super) vault: VaultFile,
    #[serde(default)]
    pub(super) aws: AwsFile,
    #[serde(default)]
    pub(super) notifications: BTreeMap<String, ChannelFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ToktraFile {
    pub(super) api_url: Option<String>,
    pub(super) api_key_file: Option<PathBuf>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret_file: Option<PathBuf>,
    pub(super) timeout: Option<String>,
    pub(super) page_size: Option<u32>,
    pub(super) token_path: Option<String>,
    pub(super) oauth_clients_path: Option<String>,
    pub(super) api_keys_path: Option<String>,
    pub(super) usage_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VaultFile {
    pub(super) addr: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) namespace: Option<String>,
    /// The auth method; without it, a token if one is given, else the one method table present.
    pub(super) auth: Option<AuthKind>,
    pub(super) approle: Option<AppRoleFile>,
    pub(super) kubernetes: Option<KubernetesFile>,
    pub(super) jwt: Option<JwtFile>,
    pub(super) aws: Option<AwsAuthFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum AuthKind {
    Token,
    Approle,
    Kubernetes,
    Jwt,
    Aws,
}

impl AuthKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            AuthKind::Token => "token",
            AuthKind::Approle => "approle",
            AuthKind::Kubernetes => "kubernetes",
            AuthKind::Jwt => "jwt",
            AuthKind::Aws => "aws",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppRoleFile {
    #[serde(default = "default_approle_mount")]
    pub(super) mount: String,
    pub(super) role_id: String,
    pub(super) secret_id_file: PathBuf,
}

fn default_approle_mount() -> String {
    "approle".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KubernetesFile {
    #[serde(default = "default_kubernetes_mount")]
    pub(super) mount: String,
    pub(super) role: String,
    #[serde(default = "default_kubernetes_token_file")]
    pub(super) token_file: PathBuf,
}

fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}

fn default_kubernetes_token_file() -> PathBuf {
    vault::auth::DEFAULT_KUBERNETES_TOKEN_FILE.into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtFile {
    #[serde(default = "default_jwt_mount")]
    pub(super) mount: String,
    pub(super) role: String,
    pub(super) token_file: PathBuf,
}

fn default_jwt_mount() -> String {
    "jwt".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AwsAuthFile {
    #[serde(default = "default_aws_mount")]
    pub(super) mount: String,
    pub(super) role: String,
    pub(super) header_value: Option<String>,
    pub(super) sts_endpoint: Option<String>,
    pub(super) sts_region: Option<String>,
}

fn default_aws_mount() -> String {
    "aws".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AwsFile {
    pub(super) region: Option<String>,
    pub(super) endpoint_url: Option<String>,
    pub(super) profile: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChannelFile {
    pub(super) kind: KindFile,
    /// Better from the environment (`ROTATOR_NOTIFY_<NAME>_URL`) or a file: the URL is a secret.
    pub(super) url: Option<Secret>,
    pub(super) url_file: Option<PathBuf>,
    pub(super) on_success: Option<bool>,
    /// Webhooks: the name of the variable holding the signing secret.
    pub(super) signing_secret_env: Option<String>,
    /// Webhooks: a file holding the signing secret.
    pub(super) signing_secret_file: Option<PathBuf>,
    /// PagerDuty: the name of the variable holding the integration's routing key.
    pub(super) routing_key_env: Option<String>,
    /// PagerDuty: a file holding the routing key.
    pub(super) routing_key_file: Option<PathBuf>,
}

/// `kind` as written in the file; the secrets each kind needs are added by
/// [`Config::load`](super::Config::load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum KindFile {
    Slack,
    Webhook,
    #[serde(rename = "pagerduty")]
    PagerDuty,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rotator.example.toml")).unwrap();
        let file: File = toml::from_str(&text).unwrap();
        assert_eq!(file.notifications.len(), 3);
        assert_eq!(file.notifications["pager"].kind, KindFile::PagerDuty);
        assert!(file.notifications["audit"].signing_secret_env.is_some());
        assert!(file.vault.addr.is_some() && file.toktra.client_id.is_some());
        let bad = toml::from_str::<File>("listen = \"x\"\n[toktra]\napi_key = \"plain\"\n").unwrap_err();
        assert!(bad.message().contains("unknown field `api_key`"), "{bad}");
    }
}
