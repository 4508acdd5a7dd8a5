//! Notification channels: each `[notifications.<name>]` table validated into a [`Channel`] with
//! the secrets its kind needs (the URL, a webhook's signing secret, PagerDuty's routing key),
//! from the environment, the table or a file it names. An error names the key and its line,
//! never a secret (the URL included).

use std::path::PathBuf;

use crate::secret::Secret;

use super::raw::{ChannelFile, KindFile};
use super::values::{read_secret, require_https, var};
use super::{Error, error};

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

/// Validates one `[notifications.<name>]` table into a [`Channel`], reading its secrets.
/// Problems name the key and its line (`source`); no secret, URL included, is ever repeated.
pub(super) fn load_channel(
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
