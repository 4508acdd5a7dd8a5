//! Run-time configuration (SPEC section 6): one TOML file (`--config`, default `rotator.toml` if
//! present) with every value overridable from the environment, where the usual variables work as
//! users expect (`TOKTRA_*`, `VAULT_*`, the standard AWS chain, `ROTATOR_*`). Secrets are held as
//! [`Secret`] and none has a default; a secret may also be read from a file (`*_file`), so it
//! need not sit in the configuration file itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration;
use crate::secret::Secret;
use crate::store::{self, vault};
use crate::toktra::{self, ManagementAuth};

pub const DEFAULT_TOKTRA_URL: &str = "https://api.toktra.io/v1";
pub const DEFAULT_DATABASE_URL: &str = "rotator.db";
pub const DEFAULT_CONFIG_FILE: &str = "rotator.toml";
/// The shortest API token `serve` accepts.
pub const MIN_API_TOKEN_CHARS: usize = 32;

/// A notification channel.
#[derive(Clone)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    /// Where events are posted. Incoming-webhook URLs carry their own credential, so they are
    /// secrets; a PagerDuty channel's is the Events API endpoint.
    pub url: Secret,
    /// Also notify successful rotations (failures, overdue policies, orphans and compromise
    /// rotations are always sent). Never set for PagerDuty, which hears of problems only.
    pub on_success: bool,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("name", &self.name).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// What a channel speaks, with the secrets each kind needs (redacted by their type).
#[derive(Debug, Clone)]
pub enum ChannelKind {
    /// A Slack-compatible incoming webhook (`{"text": …}`).
    Slack,
    /// A generic JSON webhook (the event as a JSON object), signed with HMAC-SHA256 when a
    /// signing secret is configured (see [`crate::notify`]).
    Webhook { signing_secret: Option<Secret> },
    /// PagerDuty Events API v2: problems trigger an alert, recovery resolves it.
    PagerDuty { routing_key: Secret },
}

/// PagerDuty's Events API v2 endpoint (the EU service region uses
/// `https://events.eu.pagerduty.com/v2/enqueue`).
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// The shortest webhook signing secret accepted: a short one could be found from a single
/// signed request by trying keys offline.
pub const MIN_SIGNING_SECRET_CHARS: usize = 32;

/// How rotator authenticates to Vault (`[vault] auth`), as configured; files are read at every
/// login. [`Config::clients`] turns it into a [`vault::Method`].
#[derive(Debug, Clone)]
pub enum VaultAuth {
    Token(Secret),
    AppRole {
        mount: String,
        role_id: String,
        secret_id: vault::auth::SecretFile,
    },
    Kubernetes {
        mount: String,
        role: String,
        token: vault::auth::SecretFile,
    },
    Jwt {
        mount: String,
        role: String,
        token: vault::auth::SecretFile,
    },
    /// The credentials come from the standard AWS chain when a login needs them.
    Aws {
        mount: String,
        role: String,
        header_value: Option<String>,
        sts_endpoint: reqwest::Url,
        sts_region: String,
    },
}

impl VaultAuth {
    pub fn name(&self) -> &'static str {
        match self {
            VaultAuth::Token(_) => "token",
            VaultAuth::AppRole { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
            VaultAuth::Jwt { .. } => "jwt",
            VaultAuth::Aws { .. } => "aws",
        }
    }
}

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

/// The 1-based line of the value of `dotted` (e.g. `toktra.api_url`) in a TOML text.
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let table = toml::de::DeTable::parse(text).ok()?;
    let mut current = table.get_ref();
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (_, value) = current.iter().find(|(key, _)| key.get_ref().as_ref() == *part)?;
        if i + 1 == parts.len() {
            return Some(text[..value.span().start.min(text.len())].matches('\n').count() + 1);
        }
        match value.get_ref() {
            toml::de::DeValue::Table(table) => current = table,
            _ => return None,
        }
    }
    None
}

fn error(variable: impl Into<String>, message: impl Into<String>) -> Error {
    Error { variable: variable.into(), message: message.into() }
}

// ---- the file ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    api_token_file: Option<PathBuf>,
    database_url: Option<String>,
    concurrency: Option<usize>,
    tick: Option<String>,
    shutdown_timeout: Option<String>,
    rotation_budget: Option<String>,
    lease_ttl: Option<String>,
    allow_insecure_http: Option<bool>,
    metrics_auth: Option<bool>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    request_timeout: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    #[serde(default)]
    toktra: ToktraFile,
    #[serde(default)]
    vault: VaultFile,
    #[serde(default)]
    aws: AwsFile,
    #[serde(default)]
    notifications: BTreeMap<String, ChannelFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToktraFile {
    api_url: Option<String>,
    api_key_file: Option<PathBuf>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    timeout: Option<String>,
    page_size: Option<u32>,
    token_path: Option<String>,
    oauth_clients_path: Option<String>,
    api_keys_path: Option<String>,
    usage_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultFile {
    addr: Option<String>,
    token_file: Option<PathBuf>,
    namespace: Option<String>,
    /// The auth method; without it, a token if one is given, else the one method table present.
    auth: Option<AuthKind>,
    approle: Option<AppRoleFile>,
    kubernetes: Option<KubernetesFile>,
    jwt: Option<JwtFile>,
    aws: Option<AwsAuthFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AuthKind {
    Token,
    Approle,
    Kubernetes,
    Jwt,
    Aws,
}

impl AuthKind {
    fn as_str(self) -> &'static str {
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
struct AppRoleFile {
    #[serde(default = "default_approle_mount")]
    mount: String,
    role_id: String,
    secret_id_file: PathBuf,
}

fn default_approle_mount() -> String {
    "approle".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesFile {
    #[serde(default = "default_kubernetes_mount")]
    mount: String,
    role: String,
    #[serde(default = "default_kubernetes_token_file")]
    token_file: PathBuf,
}

fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}

fn default_kubernetes_token_file() -> PathBuf {
    vault::auth::DEFAULT_KUBERNETES_TOKEN_FILE.into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtFile {
    #[serde(default = "default_jwt_mount")]
    mount: String,
    role: String,
    token_file: PathBuf,
}

fn default_jwt_mount() -> String {
    "jwt".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AwsAuthFile {
    #[serde(default = "default_aws_mount")]
    mount: String,
    role: String,
    header_value: Option<String>,
    sts_endpoint: Option<String>,
    sts_region: Option<String>,
}

fn default_aws_mount() -> String {
    "aws".into()
}

/// The Vault auth method the `[vault]` table and `VAULT_TOKEN` describe; `source` locates a key
/// in the file for errors.
fn vault_auth(file: &VaultFile, source: &dyn Fn(&str) -> String) -> Result<Option<VaultAuth>, Error> {
    let tables: Vec<AuthKind> = [
        (AuthKind::Approle, file.approle.is_some()),
        (AuthKind::Kubernetes, file.kubernetes.is_some()),
        (AuthKind::Jwt, file.jwt.is_some()),
        (AuthKind::Aws, file.aws.is_some()),
    ]
    .into_iter()
    .filter_map(|(kind, present)| present.then_some(kind))
    .collect();
    let token = || -> Result<Option<Secret>, Error> {
        match (var("VAULT_TOKEN"), &file.token_file) {
            (Some(t), _) => Ok(Some(Secret::new(t))),
            (None, Some(p)) => read_secret(&source("vault.token_file"), p).map(Some),
            (None, None) => Ok(None),
        }
    };
    let kind = match file.auth {
        Some(kind) => {
            // A table for another method is a mistake waiting to be made: say so now.
            if let Some(other) = tables.iter().find(|t| **t != kind) {
                return Err(error(
                    source(&format!("vault.{}", other.as_str())),
                    format!(
                        "[vault.{}] is given but auth = \"{}\": remove it, or choose it",
                        other.as_str(),
                        kind.as_str()
                    ),
                ));
            }
            if kind != AuthKind::Token && file.token_file.is_some() {
                return Err(error(
                    source("vault.token_file"),
                    format!("token_file is only read with auth = \"token\", not \"{}\"", kind.as_str()),
                ));
            }
            kind
        }
        // As before `auth` existed: a token wins, else the one method configured.
        None if var("VAULT_TOKEN").is_some() || file.token_file.is_some() => AuthKind::Token,
        None => match tables.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            several => {
                let names: Vec<String> = several.iter().map(|k| format!("[vault.{}]", k.as_str())).collect();
                return Err(error(
                    source("vault"),
                    format!("{} are all given: choose one with auth = \"…\"", names.join(" and ")),
                ));
            }
        },
    };
    let nonempty = |key: &str, value: &str| {
        if value.trim().is_empty() {
            Err(error(source(key), "must not be empty"))
        } else {
            Ok(value.trim().to_string())
        }
    };
    let secret_file = |key: &str, path: &Path| vault::auth::SecretFile { path: path.to_path_buf(), key: source(key) };
    let missing = |table: &str| {
        error(
            source("vault.auth"),
            format!("auth = \"{table}\" needs a [vault.{table}] table (see rotator.example.toml)"),
        )
    };
    Ok(Some(match kind {
        AuthKind::Token => {
            VaultAuth::Token(token()?.ok_or_else(|| {
                error(source("vault.auth"), "auth = \"token\" needs VAULT_TOKEN or [vault] token_file")
            })?)
        }
        AuthKind::Approle => {
            let a = file.approle.as_ref().ok_or_else(|| missing("approle"))?;
            VaultAuth::AppRole {
                mount: nonempty("vault.approle.mount", &a.mount)?,
                role_id: nonempty("vault.approle.role_id", &a.role_id)?,
                secret_id: secret_file("vault.approle.secret_id_file", &a.secret_id_file),
            }
        }
        AuthKind::Kubernetes => {
            let k = file.kubernetes.as_ref().ok_or_else(|| missing("kubernetes"))?;
            VaultAuth::Kubernetes {
                mount: nonempty("vault.kubernetes.mount", &k.mount)?,
                role: nonempty("vault.kubernetes.role", &k.role)?,
                token: secret_file("vault.kubernetes.token_file", &k.token_file),
            }
        }
        AuthKind::Jwt => {
            let j = file.jwt.as_ref().ok_or_else(|| missing("jwt"))?;
            VaultAuth::Jwt {
                mount: nonempty("vault.jwt.mount", &j.mount)?,
                role: nonempty("vault.jwt.role", &j.role)?,
                token: secret_file("vault.jwt.token_file", &j.token_file),
            }
        }
        AuthKind::Aws => {
            let a = file.aws.as_ref().ok_or_else(|| missing("aws"))?;
            let endpoint = a.sts_endpoint.as_deref().unwrap_or(vault::auth::DEFAULT_STS_ENDPOINT);
            // rotator never sends anything to this URL: it only signs a request naming it, which
            // Vault sends to STS. So any scheme Vault's `sts_endpoint` uses is fine here.
            let sts_endpoint = reqwest::Url::parse(endpoint)
                .ok()
                .filter(|u| u.host_str().is_some() && matches!(u.scheme(), "https" | "http"))
                .ok_or_else(|| {
                    error(source("vault.aws.sts_endpoint"), format!("`{endpoint}` is not an http(s) URL"))
                })?;
            VaultAuth::Aws {
                mount: nonempty("vault.aws.mount", &a.mount)?,
                role: nonempty("vault.aws.role", &a.role)?,
                header_value: a.header_value.clone().filter(|v| !v.is_empty()),
                sts_endpoint,
                sts_region: match &a.sts_region {
                    Some(region) => nonempty("vault.aws.sts_region", region)?,
                    None => vault::auth::DEFAULT_STS_REGION.to_string(),
                },
            }
        }
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AwsFile {
    region: Option<String>,
    endpoint_url: Option<String>,
    profile: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelFile {
    kind: KindFile,
    /// Better from the environment (`ROTATOR_NOTIFY_<NAME>_URL`) or a file: the URL is a secret.
    url: Option<Secret>,
    url_file: Option<PathBuf>,
    on_success: Option<bool>,
    /// Webhooks: the name of the variable holding the signing secret.
    signing_secret_env: Option<String>,
    /// Webhooks: a file holding the signing secret.
    signing_secret_file: Option<PathBuf>,
    /// PagerDuty: the name of the variable holding the integration's routing key.
    routing_key_env: Option<String>,
    /// PagerDuty: a file holding the routing key.
    routing_key_file: Option<PathBuf>,
}

/// `kind` as written in the file; the secrets each kind needs are added by [`Config::load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindFile {
    Slack,
    Webhook,
    #[serde(rename = "pagerduty")]
    PagerDuty,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Reads a secret from a file (trailing newline removed), naming the key on failure.
fn read_secret(key: &str, path: &Path) -> Result<Secret, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| error(key, format!("cannot read {}: {e}", path.display())))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(error(key, format!("{} is empty", path.display())));
    }
    Ok(Secret::new(text))
}

/// `true`/`false` (also `1`/`0`), naming the variable otherwise.
fn parse_bool(variable: &str, text: &str) -> Result<bool, Error> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(error(variable, format!("`{text}` is not true or false"))),
    }
}

/// Whether `url` names a loopback host: 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    // IPv6 hosts come in brackets; IPv4 ones are already normalised (`127.1` is `127.0.0.1`).
    match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
    }
}

/// Refuses a URL whose requests would carry credentials in clear text over a network: only
/// `https://`, or `http://` to loopback, unless `allow_insecure_http`. The URL itself is not
/// repeated (it could hold a user and password); its host is.
fn require_https(key: &str, url: &str, allow_insecure_http: bool) -> Result<(), Error> {
    let parsed = reqwest::Url::parse(url).map_err(|e| error(key, format!("not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(&parsed) => Ok(()),
        "http" => Err(error(
            key,
            format!(
                "plain http:// to `{}`, which is not a loopback address: use https:// (or set \
                 allow_insecure_http = true in the configuration, or ROTATOR_ALLOW_INSECURE_HTTP=true)",
                parsed.host_str().unwrap_or_default()
            ),
        )),
        other => Err(error(key, format!("scheme `{other}` is not supported: use https://"))),
    }
}

fn parse_duration(key: &str, text: Option<String>, default: Duration) -> Result<Duration, Error> {
    match text {
        Some(t) => duration::parse(&t).map_err(|m| error(key, m)),
        None => Ok(default),
    }
}

/// Validates one `[notifications.<name>]` table into a [`Channel`], reading its secrets.
/// Problems name the key and its line (`source`); no secret, URL included, is ever repeated.
fn load_channel(
    name: &str,
    file: ChannelFile,
    allow_insecure_http: bool,
    source: &dyn Fn(&str) -> String,
) -> Result<Channel, Error> {
    let key = |k: &str| source(&format!("notifications.{name}.{k}"));
    let upper = name.to_ascii_uppercase().replace('-', "_");
    let url_variable = format!("ROTATOR_NOTIFY_{upper}_URL");
    let (url_source, url) = match (var(&url_variable), &file.url, &file.url_file) {
        (Some(u), _, _) => (url_variable.clone(), Secret::new(u)),
        (None, Some(u), _) => (key("url"), u.clone()),
        (None, None, Some(p)) => (key("url_file"), read_secret(&key("url_file"), p)?),
        (None, None, None) if file.kind == KindFile::PagerDuty => {
            (source(&format!("notifications.{name}")), Secret::new(PAGERDUTY_EVENTS_URL))
        }
        (None, None, None) => {
            return Err(error(
                source(&format!("notifications.{name}")),
                format!("no url: set `url`, `url_file` or {url_variable}"),
            ));
        }
    };
    // What is posted carries a credential (the URL itself, a routing key, a signature a
    // listener could replay), so it travels over TLS unless it stays on this host.
    require_https(&url_source, url.expose(), allow_insecure_http)?;

    let signing_secret = secret_from(&key, "signing_secret", &file.signing_secret_env, &file.signing_secret_file)?;
    let routing_key = secret_from(&key, "routing_key", &file.routing_key_env, &file.routing_key_file)?;
    // A problem with a secret is blamed on the key that named it.
    let signing_key = key(if file.signing_secret_env.is_some() { "signing_secret_env" } else { "signing_secret_file" });
    let routing_key_key = key(if file.routing_key_env.is_some() { "routing_key_env" } else { "routing_key_file" });
    let kind = match file.kind {
        KindFile::Slack | KindFile::PagerDuty if signing_secret.is_some() => {
            return Err(error(signing_key, "only `webhook` channels are signed"));
        }
        KindFile::Slack | KindFile::Webhook if routing_key.is_some() => {
            return Err(error(routing_key_key, "only `pagerduty` channels take a routing key"));
        }
        KindFile::Slack => ChannelKind::Slack,
        KindFile::Webhook => {
            if let Some(secret) = &signing_secret
                && secret.expose().trim().chars().count() < MIN_SIGNING_SECRET_CHARS
            {
                // The length is not reported: it is a secret's.
                return Err(error(
                    signing_key,
                    format!(
                        "the signing secret must be at least {MIN_SIGNING_SECRET_CHARS} characters long \
                         (e.g. the output of `openssl rand -hex 32`)"
                    ),
                ));
            }
            ChannelKind::Webhook { signing_secret }
        }
        KindFile::PagerDuty => {
            if file.on_success == Some(true) {
                return Err(error(
                    key("on_success"),
                    "PagerDuty channels hear of problems only (a recovery resolves the alert)",
                ));
            }
            let routing_key = routing_key.ok_or_else(|| {
                error(
                    source(&format!("notifications.{name}")),
                    "no routing key: set `routing_key_env` (the name of a variable) or `routing_key_file`",
                )
            })?;
            ChannelKind::PagerDuty { routing_key }
        }
    };
    Ok(Channel { name: name.to_string(), kind, url, on_success: file.on_success.unwrap_or(false) })
}

/// A channel's secret `what`, from the variable named by `<what>_env` or the file at
/// `<what>_file` (one of them, or neither).
fn secret_from(
    key: &dyn Fn(&str) -> String,
    what: &str,
    variable: &Option<String>,
    path: &Option<PathBuf>,
) -> Result<Option<Secret>, Error> {
    match (variable, path) {
        (Some(_), Some(_)) => {
            Err(error(key(&format!("{what}_env")), format!("set `{what}_env` or `{what}_file`, not both")))
        }
        (Some(name), None) => match var(name) {
            Some(value) => Ok(Some(Secret::new(value))),
            None => Err(error(key(&format!("{what}_env")), format!("the variable {name} is not set (or empty)"))),
        },
        (None, Some(p)) => read_secret(&key(&format!("{what}_file")), p).map(Some),
        (None, None) => Ok(None),
    }
}

impl Config {
    /// The file at `path`, else `rotator.toml` if it exists, overridden by the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, Error> {
        let default = Path::new(DEFAULT_CONFIG_FILE);
        let path = path.map(Path::to_path_buf).or_else(|| default.exists().then(|| default.to_path_buf()));
        let mut text = String::new();
        let file: File = match &path {
            Some(p) => {
                text = std::fs::read_to_string(p)
                    .map_err(|e| error(p.display().to_string(), format!("cannot read: {e}")))?;
                toml::from_str(&text).map_err(|e| {
                    let (line, column) = e
                        .span()
                        .map(|span| {
                            let before = &text[..span.start.min(text.len())];
                            (before.matches('\n').count() + 1, span.start - before.rfind('\n').map_or(0, |i| i + 1) + 1)
                        })
                        .unwrap_or((0, 0));
                    error(format!("{}:{line}:{column}", p.display()), e.message().to_string())
                })?
            }
            None => File::default(),
        };
        // A problem with a key of the file is located at its line.
        let source = |key: &str| match &path {
            Some(p) => match line_of(&text, key) {
                Some(line) => format!("{}:{line} ({key})", p.display()),
                None => format!("{} ({key})", p.display()),
            },
            None => key.to_string(),
        };

        let (listen_source, listen_text) = match (var("ROTATOR_LISTEN"), file.listen) {
            (Some(v), _) => ("ROTATOR_LISTEN".to_string(), v),
            (None, Some(v)) => (source("listen"), v),
            (None, None) => ("listen".to_string(), "127.0.0.1:8080".to_string()),
        };
        let listen = listen_text
            .parse()
            .map_err(|_| error(listen_source, format!("`{listen_text}` is not an address like 127.0.0.1:8080")))?;
        let api_token = match (var("ROTATOR_API_TOKEN"), &file.api_token_file) {
            (Some(t), _) => Some(ApiToken::Value { key: "ROTATOR_API_TOKEN".to_string(), token: Secret::new(t) }),
            (None, Some(p)) => Some(ApiToken::File { key: source("api_token_file"), path: p.clone() }),
            (None, None) => None,
        };
        let concurrency = match var("ROTATOR_CONCURRENCY") {
            Some(t) => t
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| error("ROTATOR_CONCURRENCY", format!("`{t}` is not a positive number")))?,
            None => match file.concurrency {
                Some(0) => return Err(error(source("concurrency"), "must be at least 1")),
                Some(n) => n,
                None => 16,
            },
        };
        // A value is blamed on where it came from: the variable when set, else the file's key.
        let pick = |variable: &str, key: &str, from_file: Option<String>| match var(variable) {
            Some(v) => (variable.to_string(), Some(v)),
            None if from_file.is_some() => (source(key), from_file),
            None => (variable.to_string(), None),
        };
        let (tick_source, tick) = pick("ROTATOR_TICK", "tick", file.tick);
        let tick = parse_duration(&tick_source, tick, Duration::from_secs(30))?;
        if tick.is_zero() {
            return Err(error(tick_source, "must be at least 1s"));
        }
        let (key, text) = pick("ROTATOR_SHUTDOWN_TIMEOUT", "shutdown_timeout", file.shutdown_timeout);
        let shutdown_timeout = parse_duration(&key, text, Duration::from_secs(60))?;
        let (key, text) = pick("ROTATOR_ROTATION_BUDGET", "rotation_budget", file.rotation_budget);
        let rotation_budget = parse_duration(&key, text, Duration::from_secs(15 * 60))?;
        let (key, text) = pick("ROTATOR_LEASE_TTL", "lease_ttl", file.lease_ttl);
        let lease_ttl = parse_duration(&key, text, Duration::from_secs(30))?;
        if lease_ttl < Duration::from_secs(4) {
            return Err(error(key, "must be at least 4s (the heartbeat renews it every quarter)"));
        }

        let toktra_auth = match (var("TOKTRA_API_KEY"), var("TOKTRA_CLIENT_ID").or(file.toktra.client_id.clone())) {
            (Some(_), Some(_)) if var("TOKTRA_CLIENT_ID").is_some() => {
                return Err(error(
                    "TOKTRA_API_KEY",
                    "set either TOKTRA_API_KEY or TOKTRA_CLIENT_ID/TOKTRA_CLIENT_SECRET, not both",
                ));
            }
            (Some(key), _) => Some(ManagementAuth::ApiKey(Secret::new(key))),
            (None, Some(client_id)) => {
                let secret = match (var("TOKTRA_CLIENT_SECRET"), &file.toktra.client_secret_file) {
                    (Some(s), _) => Secret::new(s),
                    (None, Some(p)) => read_secret(&source("toktra.client_secret_file"), p)?,
                    (None, None) => {
                        return Err(error(
                            "TOKTRA_CLIENT_SECRET",
                            "TOKTRA_CLIENT_ID is set but TOKTRA_CLIENT_SECRET is not",
                        ));
                    }
                };
                Some(ManagementAuth::Client { client_id, client_secret: secret })
            }
            (None, None) => match (&file.toktra.api_key_file, var("TOKTRA_CLIENT_SECRET")) {
                (Some(p), _) => Some(ManagementAuth::ApiKey(read_secret(&source("toktra.api_key_file"), p)?)),
                (None, Some(_)) => {
                    return Err(error("TOKTRA_CLIENT_ID", "TOKTRA_CLIENT_SECRET is set but TOKTRA_CLIENT_ID is not"));
                }
                (None, None) => None,
            },
        };
        let toktra_timeout = {
            let (key, text) = pick("TOKTRA_TIMEOUT", "toktra.timeout", file.toktra.timeout);
            parse_duration(&key, text, Duration::from_secs(30))?
        };
        let toktra_page_size = match var("TOKTRA_PAGE_SIZE") {
            Some(t) => t
                .parse::<u32>()
                .map_err(|_| error("TOKTRA_PAGE_SIZE", format!("`{t}` is not a number from 1 to 100")))?,
            None => file.toktra.page_size.unwrap_or(100),
        };
        if !(1..=100).contains(&toktra_page_size) {
            return Err(error("TOKTRA_PAGE_SIZE", format!("{toktra_page_size} is not a number from 1 to 100")));
        }
        let mut toktra_endpoints = toktra::Endpoints::default();
        for (variable, from_file, path) in [
            ("TOKTRA_TOKEN_PATH", file.toktra.token_path, &mut toktra_endpoints.token),
            ("TOKTRA_OAUTH_CLIENTS_PATH", file.toktra.oauth_clients_path, &mut toktra_endpoints.oauth_clients),
            ("TOKTRA_API_KEYS_PATH", file.toktra.api_keys_path, &mut toktra_endpoints.api_keys),
            ("TOKTRA_USAGE_PATH", file.toktra.usage_path, &mut toktra_endpoints.usage),
        ] {
            if let Some(value) = var(variable).or(from_file) {
                *path = value;
            }
        }

        let vault_auth = vault_auth(&file.vault, &source)?;

        let allow_insecure_http = match var("ROTATOR_ALLOW_INSECURE_HTTP") {
            Some(t) => parse_bool("ROTATOR_ALLOW_INSECURE_HTTP", &t)?,
            None => file.allow_insecure_http.unwrap_or(false),
        };
        let metrics_auth = match var("ROTATOR_METRICS_AUTH") {
            Some(t) => parse_bool("ROTATOR_METRICS_AUTH", &t)?,
            None => file.metrics_auth.unwrap_or(false),
        };
        let max_connections = match var("ROTATOR_MAX_CONNECTIONS") {
            Some(t) => t.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                error("ROTATOR_MAX_CONNECTIONS", format!("`{t}` is not a number of connections (at least 1)"))
            })?,
            None => match file.max_connections {
                Some(0) => return Err(error(source("max_connections"), "must be at least 1")),
                Some(n) => n,
                None => 512,
            },
        };
        let (key, text) = pick("ROTATOR_HEADER_TIMEOUT", "header_timeout", file.header_timeout);
        let header_timeout = parse_duration(&key, text, Duration::from_secs(10))?;
        if header_timeout.is_zero() {
            return Err(error(key, "must be at least 1s"));
        }
        let (key, text) = pick("ROTATOR_REQUEST_TIMEOUT", "request_timeout", file.request_timeout);
        let request_timeout = parse_duration(&key, text, Duration::from_secs(30))?;
        if request_timeout.is_zero() {
            return Err(error(key, "must be at least 1s"));
        }
        let cert = var("ROTATOR_TLS_CERT_FILE").map(PathBuf::from).map(|p| ("ROTATOR_TLS_CERT_FILE".to_string(), p));
        let cert = cert.or_else(|| file.tls_cert_file.clone().map(|p| (source("tls_cert_file"), p)));
        let key = var("ROTATOR_TLS_KEY_FILE").map(PathBuf::from).map(|p| ("ROTATOR_TLS_KEY_FILE".to_string(), p));
        let key = key.or_else(|| file.tls_key_file.clone().map(|p| (source("tls_key_file"), p)));
        let tls = match (cert, key) {
            (Some((_, cert)), Some((_, key))) => Some((cert, key)),
            (Some((from, _)), None) => {
                return Err(error(from, "a TLS certificate needs its key: set tls_key_file too"));
            }
            (None, Some((from, _))) => {
                return Err(error(from, "a TLS key needs its certificate: set tls_cert_file too"));
            }
            (None, None) => None,
        };
        let http = Http { max_connections, header_timeout, request_timeout, tls };
        let (toktra_url_source, toktra_url) = match (var("TOKTRA_API_URL"), file.toktra.api_url) {
            (Some(v), _) => ("TOKTRA_API_URL".to_string(), v),
            (None, Some(v)) => (source("toktra.api_url"), v),
            (None, None) => ("TOKTRA_API_URL".to_string(), DEFAULT_TOKTRA_URL.to_string()),
        };
        require_https(&toktra_url_source, &toktra_url, allow_insecure_http)?;
        let vault_addr = match (var("VAULT_ADDR"), file.vault.addr) {
            (Some(v), _) => Some(("VAULT_ADDR".to_string(), v)),
            (None, Some(v)) => Some((source("vault.addr"), v)),
            (None, None) => None,
        };
        if let Some((key, addr)) = &vault_addr {
            require_https(key, addr, allow_insecure_http)?;
        }

        let mut channels = BTreeMap::new();
        for (name, channel) in file.notifications {
            let channel = load_channel(&name, channel, allow_insecure_http, &source)?;
            channels.insert(name, channel);
        }

        Ok(Config {
            file: path,
            listen,
            api_token,
            database_url: var("ROTATOR_DATABASE_URL")
                .or(file.database_url)
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
            concurrency,
            tick,
            shutdown_timeout,
            rotation_budget,
            lease_ttl,
            toktra_url,
            toktra_auth,
            toktra_timeout,
            toktra_page_size,
            toktra_endpoints,
            vault_addr: vault_addr.map(|(_, addr)| addr),
            vault_auth,
            vault_namespace: var("VAULT_NAMESPACE").or(file.vault.namespace),
            aws_region: var("AWS_REGION").or(var("AWS_DEFAULT_REGION")).or(file.aws.region),
            aws_endpoint: var("AWS_ENDPOINT_URL").or(file.aws.endpoint_url),
            aws_profile: var("AWS_PROFILE").or(file.aws.profile),
            channels,
            allow_insecure_http,
            metrics_auth,
            http,
        })
    }

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

#[cfg(test)]
mod tests {
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

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "https://api.toktra.io/v1",
            "http://127.0.0.1:8700/v1",
            "http://127.3.2.1",
            "http://[::1]:8200",
            "http://localhost:8200",
            "http://LOCALHOST.:8200/",
        ] {
            assert!(require_https("KEY", ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "http://toktra.example.com/v1",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
            "http://0.0.0.0:8200",
            "http://[::ffff:7f00:1]",
            "http://10.0.0.1",
        ] {
            let e = require_https("TOKTRA_API_URL", bad, false).unwrap_err();
            assert_eq!(e.variable, "TOKTRA_API_URL");
            assert!(e.message.contains("use https://"), "{bad}: {e}");
            assert!(require_https("KEY", bad, true).is_ok(), "{bad} with allow_insecure_http");
        }
        let e = require_https("VAULT_ADDR", "http://user:hunter2@vault.example.com", false).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(require_https("KEY", "ftp://example.com", true).is_err());
        assert!(require_https("KEY", "not a url", true).is_err());
    }
}
