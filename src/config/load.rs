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

pub(super) fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Reads a secret from a file (trailing newline removed), naming the key on failure.
pub(super) fn read_secret(key: &str, path: &Path) -> Result<Secret, Error> {
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
pub(super) fn require_https(key: &str, url: &str, allow_insecure_http: bool) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
