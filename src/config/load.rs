//! [`Config::load`]: the file (`raw`) overridden by the environment, value by value, and
//! validated into a [`Config`]. Every problem is an [`Error`] blamed on where its value came
//! from: the variable when it is set, else the file's `path:line (key)`. A URL whose requests
//! carry credentials must be `https://` unless it stays on this host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::duration;
use crate::secret::Secret;
use crate::toktra::{self, ManagementAuth};

use super::channels::load_channel;
use super::raw::File;
use super::values::{parse_bool, read_secret, require_https, var};
use super::{
    ApiToken, Config, DEFAULT_CONFIG_FILE, DEFAULT_DATABASE_URL, DEFAULT_TOKTRA_URL, Error, Http, error, vault_auth,
};

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

        let vault_auth = vault_auth::read(&file.vault, &source)?;

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

fn parse_duration(key: &str, text: Option<String>, default: Duration) -> Result<Duration, Error> {
    match text {
        Some(t) => duration::parse(&t).map_err(|m| error(key, m)),
        None => Ok(default),
    }
}
