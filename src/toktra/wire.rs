//! What Toktra answers, read tolerantly: credentials in every vendor's spelling, error bodies
//! stripped of what could forge a log line, token lifetimes and `Retry-After`, and the escaping
//! of path segments.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize as _;
use serde_json::Value;

use super::{Error, Listed, Minted};
use crate::credential::CredentialKind;
use crate::secret::Secret;

/// A token's lifetime when `expires_in` is missing or makes no sense (Toktra's documented one).
pub(super) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3_600);
/// The longest a token is believed to live, whatever the server says: a cached token is renewed
/// at `Instant::now() + lifetime`, which panics on overflow (`expires_in: 18446744073709551615`).
pub(super) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3_600);

/// `expires_in` read tolerantly: an integer, a float (`3600.0`) or a numeric string (`"3600"`),
/// capped at [`MAX_TOKEN_LIFETIME`]. Missing, below a second, negative or unreadable counts as
/// [`DEFAULT_TOKEN_LIFETIME`]: a token that expires sooner gets a 401, which renews it once,
/// whereas taking such a value at its word would fetch a new token before every request.
pub(super) fn token_lifetime(expires_in: Option<&Value>) -> Duration {
    let seconds = match expires_in {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match seconds {
        Some(s) if s.is_finite() && s >= 1.0 => Duration::from_secs_f64(s.min(MAX_TOKEN_LIFETIME.as_secs_f64())),
        _ => DEFAULT_TOKEN_LIFETIME,
    }
}

/// An error and its causes on one line (`error sending request: client error (Connect):
/// tcp connect error: Connection refused (os error 111)`), each said once.
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

/// `Retry-After` in seconds, else the time until `X-RateLimit-Reset` (Unix seconds).
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name| headers.get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok());
    if let Some(secs) = header(RETRY_AFTER.as_str()).and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    let reset = header("x-ratelimit-reset").and_then(|v| v.trim().parse::<i64>().ok())?;
    let wait = reset - Utc::now().timestamp();
    Some(Duration::from_secs(wait.clamp(1, 3_600) as u64))
}

/// Whether `message` contains `secret`, or a long enough piece of it (16 characters) to matter.
pub(super) fn echoes(message: &str, secret: &str) -> bool {
    const PIECE: usize = 16;
    if secret.len() <= PIECE {
        return message.contains(secret);
    }
    let bytes = secret.as_bytes();
    (0..=bytes.len() - PIECE)
        .filter(|i| secret.is_char_boundary(*i) && secret.is_char_boundary(i + PIECE))
        .any(|i| message.contains(&secret[i..i + PIECE]))
}

/// Longest error code and message (in characters) kept from a server's answer: a hostile or
/// broken server must not flood the logs, the journal or notifications.
pub(super) const MAX_CODE: usize = 64;
pub(super) const MAX_MESSAGE: usize = 200;

/// An error answer's code and message, with control characters and invisible formatting
/// characters removed (they could forge log lines, drive a terminal, or reorder text), whole:
/// the caller checks them for echoed secrets before [`shorten`]ing them. Empty ones are absent.
pub(super) fn error_body(bytes: &[u8]) -> (Option<String>, Option<String>) {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(printable).filter(|t| !t.trim().is_empty());
    let code = text(value.get("error"));
    let message = text(value.get("message").or_else(|| value.get("error_description")));
    (code, message)
}

/// Invisible formatting characters: zero-width spaces, joiners and direction marks,
/// bidirectional overrides and isolates, the byte order mark.
pub(super) const INVISIBLE: [std::ops::RangeInclusive<char>; 4] =
    ['\u{200b}'..='\u{200f}', '\u{202a}'..='\u{202e}', '\u{2066}'..='\u{2069}', '\u{feff}'..='\u{feff}'];

/// `text` without control characters (C0, DEL, C1) and [`INVISIBLE`] ones.
pub(super) fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control() && !INVISIBLE.iter().any(|r| r.contains(c))).collect()
}

/// At most `max` characters of `text`, marked with `…` when cut.
pub(super) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// A string field as vendors send it: anything that is not a non-empty string reads as absent,
/// so an unexpected type in a field rotator does not need never fails the whole answer.
pub(super) fn lenient_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    use serde::Deserialize;
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) if !text.is_empty() => Some(text),
        _ => None,
    })
}

/// A list of strings as vendors send it: a non-list reads as empty, non-strings in it are skipped.
pub(super) fn lenient_texts<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    use serde::Deserialize;
    Ok(match Value::deserialize(deserializer)? {
        Value::Array(items) => items.into_iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    })
}

/// A credential as a create or list answer describes it. The contract names `id` (API keys),
/// `client_id` (OAuth clients) and `key`/`client_secret`; other vendors' spellings are read too.
/// Which ID wins when several are present depends on the kind (see [`Described::id`]).
/// Not `Debug`: it holds a create answer's secret until it is wrapped in a `Secret`.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct Described {
    #[serde(deserialize_with = "lenient_text")]
    id: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    client_id: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    key_id: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    client_secret: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    key: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    api_key: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    secret: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    name: Option<String>,
    #[serde(deserialize_with = "lenient_texts")]
    scopes: Vec<String>,
    #[serde(deserialize_with = "lenient_text")]
    created_at: Option<String>,
    #[serde(deserialize_with = "lenient_text")]
    last_used_at: Option<String>,
}

impl Described {
    fn read(value: &Value) -> Described {
        Described::deserialize(value).unwrap_or_default()
    }

    fn id(&mut self, kind: CredentialKind) -> Option<String> {
        match kind {
            CredentialKind::OauthClient => self.client_id.take().or_else(|| self.id.take()),
            CredentialKind::ApiKey => self.id.take().or_else(|| self.key_id.take()),
        }
    }

    fn secret(&mut self, kind: CredentialKind) -> Option<String> {
        match kind {
            CredentialKind::OauthClient => self.client_secret.take().or_else(|| self.secret.take()),
            CredentialKind::ApiKey => self.key.take().or_else(|| self.api_key.take()).or_else(|| self.secret.take()),
        }
    }
}

/// A token endpoint's answer (RFC 6749 section 5.1): the token, and `expires_in` kept as sent
/// (a number or a numeric string) for [`token_lifetime`] to read tolerantly.
/// Not `Debug`: it holds the token until it is wrapped in a `Secret`.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct TokenAnswer {
    #[serde(deserialize_with = "lenient_text")]
    pub(super) access_token: Option<String>,
    pub(super) expires_in: Option<Value>,
}

impl TokenAnswer {
    pub(super) fn read(value: &Value) -> TokenAnswer {
        TokenAnswer::deserialize(value).unwrap_or_default()
    }
}

pub(super) fn parse_minted(kind: CredentialKind, what: &str, value: Value) -> Result<Minted, Error> {
    let mut described = Described::read(&value);
    let id = described
        .id(kind)
        .ok_or_else(|| Error::Decode { what: what.into(), detail: "no id in the create response".into() })?;
    let secret = described.secret(kind).ok_or_else(|| Error::Decode {
        what: what.into(),
        detail: format!("no secret in the create response of {}", shorten(&printable(&id), MAX_CODE)),
    })?;
    Ok(Minted {
        id,
        name: described.name.unwrap_or_default(),
        secret: Secret::new(secret),
        revoked_strays: Vec::new(),
        lost_answers: 0,
    })
}

/// Whether a list item describes a revoked credential. Any one sign counts: a `revoked_at` (or
/// `deleted_at`/`disabled_at`) that is set, `revoked: true`, `active`/`enabled: false`, or a
/// `status`/`state` naming an ended credential. An item with none of them is active.
pub(super) fn is_revoked(item: &Value) -> bool {
    const ENDED: &[&str] = &["revoked", "inactive", "deleted", "disabled", "expired", "deactivated", "suspended"];
    let set = |name: &str| item.get(name).is_some_and(|v| !v.is_null() && v != "" && v != false);
    let flag = |name: &str| item.get(name).and_then(Value::as_bool);
    ["revoked_at", "deleted_at", "disabled_at"].into_iter().any(set)
        || flag("revoked") == Some(true)
        || flag("active") == Some(false)
        || flag("enabled") == Some(false)
        || ["status", "state"].into_iter().any(|name| {
            item.get(name)
                .and_then(Value::as_str)
                .is_some_and(|s| ENDED.iter().any(|ended| s.trim().eq_ignore_ascii_case(ended)))
        })
}

pub(super) fn parse_listed(kind: CredentialKind, item: &Value) -> Option<Listed> {
    let mut described = Described::read(item);
    let time =
        |text: Option<String>| text.and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
    Some(Listed {
        id: described.id(kind)?,
        name: described.name.take().unwrap_or_default(),
        scopes: std::mem::take(&mut described.scopes),
        created_at: time(described.created_at.take()),
        last_used_at: time(described.last_used_at.take()),
    })
}

/// Everything but RFC 3986's unreserved characters.
pub(super) const RESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes everything but unreserved characters (IDs and cursors are opaque).
pub(super) fn url_escape(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}
