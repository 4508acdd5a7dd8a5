//! Reading one configuration value: an environment variable (blank counts as unset), a secret
//! from a file, a boolean, and a URL that may carry credentials (`https://`, or `http://` to
//! loopback only). Each failure names the key or variable.

use std::path::Path;

use crate::secret::Secret;

use super::{Error, error};

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
pub(super) fn parse_bool(variable: &str, text: &str) -> Result<bool, Error> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(error(variable, format!("`{text}` is not true or false"))),
    }
}

/// Whether `url` names a loopback host: 127.0.0.0/8, ::1 or `localhost`.
pub(super) fn is_loopback(url: &reqwest::Url) -> bool {
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
