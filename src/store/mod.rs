//! Destinations: where a policy's credential is written and read by its consumers. Each kind
//! implements the small [`Store`] trait (`check`, `current`, `previous`, `stage`, `staged`,
//! `promote`, `discard`); [`Handle`] is the closed enum the policy chooses, delegating with one
//! `match`. Every implementation keeps two places apart: the *current* value consumers read,
//! and a *staged* value keyed by rotation ID that consumers never read. Every operation is safe
//! to repeat after a crash or a lost answer: it first looks at what is already there.

pub mod aws;
pub mod file;
pub mod vault;

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::credential::CredentialKind;
use crate::policy;
use crate::secret::Secret;

/// The value written to a destination (SPEC section 2): a JSON object consumers read as is.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: CredentialKind,
    /// `client_id` of an OAuth client, `key_id` of an API key: the credential's Toktra ID.
    pub id: String,
    /// `client_secret` or `api_key`.
    pub secret: Secret,
    /// OAuth only: where consumers exchange the secret for a token.
    pub token_url: Option<String>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub rotation_id: Option<String>,
}

impl Record {
    /// The JSON object. It holds the secret, so it only ever goes straight to a destination.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut map = Map::new();
        let (id_field, secret_field) = fields(self.kind);
        map.insert(id_field.into(), Value::String(self.id.clone()));
        map.insert(secret_field.into(), Value::String(self.secret.expose().to_string()));
        if let Some(url) = &self.token_url {
            map.insert("token_url".into(), Value::String(url.clone()));
        }
        if let Some(at) = self.rotated_at {
            map.insert("rotated_at".into(), Value::String(at.to_rfc3339_opts(SecondsFormat::Secs, true)));
        }
        if let Some(id) = &self.rotation_id {
            map.insert("rotation_id".into(), Value::String(id.clone()));
        }
        map
    }

    /// The JSON text of [`Record::to_json`], as a secret.
    pub fn to_json_secret(&self) -> Secret {
        Secret::new(Value::Object(self.to_json()).to_string())
    }

    /// Reads a destination's value. `Ok(None)` for an empty placeholder (`""` or `{}`, which is
    /// what Terraform-created secrets often hold before the first rotation); an error for a value
    /// that is not a credential of `kind`, so that rotator never overwrites something it does not
    /// understand.
    pub fn parse(kind: CredentialKind, value: &Value) -> Result<Option<Record>, String> {
        let map = match value {
            Value::Object(map) if map.is_empty() => return Ok(None),
            Value::Object(map) => map,
            Value::String(s) if s.trim().is_empty() => return Ok(None),
            Value::Null => return Ok(None),
            _ => return Err("the value is not a JSON object".into()),
        };
        let (id_field, secret_field) = fields(kind);
        let text = |name: &str| map.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
        let (other_id, other_secret) = fields(match kind {
            CredentialKind::OauthClient => CredentialKind::ApiKey,
            CredentialKind::ApiKey => CredentialKind::OauthClient,
        });
        match (text(id_field), text(secret_field)) {
            (Some(id), Some(secret)) => Ok(Some(Record {
                kind,
                id: id.to_string(),
                secret: Secret::new(secret),
                token_url: text("token_url").map(str::to_string),
                rotated_at: text("rotated_at")
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                rotation_id: text("rotation_id").map(str::to_string),
            })),
            _ if text(other_id).is_some() || text(other_secret).is_some() => Err(format!(
                "the value holds a {} credential, but the policy rotates a {kind}",
                if kind == CredentialKind::OauthClient { "api_key" } else { "oauth_client" }
            )),
            _ => Err(format!("the value has no `{id_field}` and `{secret_field}` fields")),
        }
    }

    /// Parses JSON text (as stored by AWS and the file destination).
    pub fn parse_text(kind: CredentialKind, text: &str) -> Result<Option<Record>, String> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let value: Value = serde_json::from_str(text).map_err(|_| "the value is not valid JSON".to_string())?;
        Record::parse(kind, &value)
    }

    /// Identity for read-back comparison: the credential ID, the secret's fingerprint and the
    /// rotation ID. Never the secret itself.
    pub fn fingerprint(&self) -> String {
        format!("{}/{}/{}", self.id, self.secret.fingerprint(), self.rotation_id.as_deref().unwrap_or("-"))
    }
}

impl Record {
    /// `self` is already staged for `rotation_id` and `new` is being staged again (a retry, or a
    /// resume after a crash): fine when it is the same value, an error otherwise.
    fn restaged(&self, new: &Record, store: Kind, destination: String, rotation_id: &str) -> Result<(), Error> {
        if self == new {
            Ok(())
        } else {
            Err(Error::new(
                store,
                destination,
                ErrorKind::Unexpected,
                format!("a different value is already staged for rotation {rotation_id}"),
            ))
        }
    }
}

fn fields(kind: CredentialKind) -> (&'static str, &'static str) {
    match kind {
        CredentialKind::OauthClient => ("client_id", "client_secret"),
        CredentialKind::ApiKey => ("key_id", "api_key"),
    }
}

/// How a destination operation failed; [`Error::is_transient`] says whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Network trouble, timeouts, throttling, 5xx: may work on retry.
    Transient,
    /// The secret or path does not exist and the policy does not allow creating it.
    NotFound,
    /// Someone else wrote the destination concurrently (a check-and-set failed).
    Conflict,
    /// The destination holds something rotator does not understand, or a value it did not expect.
    Unexpected,
    /// Anything else (permissions, bad configuration).
    Permanent,
}

/// Which kind of destination, for metrics and alerts that group failures by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Aws,
    Vault,
    File,
}

impl Kind {
    pub fn of(spec: &policy::Destination) -> Kind {
        match spec {
            policy::Destination::AwsSecretsManager(_) => Kind::Aws,
            policy::Destination::Vault(_) => Kind::Vault,
            policy::Destination::File(_) => Kind::File,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Aws => "aws",
            Kind::Vault => "vault",
            Kind::File => "file",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{destination}: {detail}")]
pub struct Error {
    /// The kind of destination that failed.
    pub store: Kind,
    /// Its label.
    pub destination: String,
    pub kind: ErrorKind,
    pub detail: String,
}

impl Error {
    pub fn new(store: Kind, destination: impl Into<String>, kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error { store, destination: destination.into(), kind, detail: detail.into() }
    }

    /// A conflict is not transient: a check-and-set failed because someone else wrote the
    /// destination, and the engine must look again at what is there before writing.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// One destination's operations. Implementations are idempotent: each may be repeated after a
/// crash at any point and converges to the same state.
// Only ever used with concrete types (through `Handle`), where the futures' `Send`-ness is
// known, so the auto-trait caveat of `async fn` in traits does not apply.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// A short, secret-free label for messages and the journal.
    fn label(&self) -> String;

    /// Checks, without changing anything, that the destination is reachable and readable.
    async fn check(&self) -> Result<(), Error>;

    /// `rotator plan`'s check, without changing anything: reachable, readable, holding a value
    /// rotator understands, and writable as far as the destination can tell without a write.
    /// Returns what it found.
    async fn preflight(&self) -> Result<String, Error>;

    /// The value consumers read now, if any.
    async fn current(&self) -> Result<Option<Record>, Error>;

    /// The value the destination served before its current one, as the destination keeps it:
    /// AWS's `AWSPREVIOUS` version, the latest Vault KV version below the current one that is
    /// neither deleted nor destroyed, the file's `.previous` sibling. `None` when there is none,
    /// or when it was the empty placeholder (a secret created by rotator, a first version).
    /// Nothing guarantees it is the credential the current one replaced: a destination keeps
    /// whatever was written before, by rotator or anyone else.
    async fn previous(&self) -> Result<Option<Record>, Error>;

    /// Writes `record` as the pending value of `rotation_id`, where consumers do not read it.
    /// Creates the secret or path first when the policy allows it.
    async fn stage(&self, rotation_id: &str, record: &Record) -> Result<(), Error>;

    /// The pending value of `rotation_id`, if it is staged (or already promoted).
    async fn staged(&self, rotation_id: &str) -> Result<Option<Record>, Error>;

    /// Makes the staged value of `rotation_id` the current one, keeping the replaced value as the
    /// previous version where the destination can, and clears the staging.
    async fn promote(&self, rotation_id: &str) -> Result<(), Error>;

    /// Removes the staged value of `rotation_id` if it was never promoted.
    async fn discard(&self, rotation_id: &str) -> Result<(), Error>;

    /// Rotation IDs of staged values that are not current (for `reconcile`).
    async fn pending(&self) -> Result<Vec<String>, Error>;
}

/// A policy destination ([`policy::Destination`]) opened with its client: the closed enum every
/// destination operation goes through.
pub enum Handle {
    Aws(aws::Aws),
    Vault(vault::Vault),
    File(file::File),
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({})", self.label())
    }
}

/// Clients shared by every destination of a run.
pub struct Clients {
    pub aws: Option<aws_config::SdkConfig>,
    pub vault: Option<vault::Connection>,
}

impl Handle {
    /// Builds the destination a policy names. `kind` is the policy's credential kind, which the
    /// destination uses to read values.
    pub fn new(spec: &policy::Destination, kind: CredentialKind, clients: &Clients) -> Result<Handle, Error> {
        Ok(match spec {
            policy::Destination::AwsSecretsManager(d) => {
                let sdk = clients.aws.as_ref().ok_or_else(|| {
                    Error::new(Kind::Aws, spec.label(), ErrorKind::Permanent, "AWS is not configured")
                })?;
                Handle::Aws(aws::Aws::new(d, kind, sdk)?)
            }
            policy::Destination::Vault(d) => {
                let connection = clients.vault.as_ref().ok_or_else(|| {
                    Error::new(
                        Kind::Vault,
                        spec.label(),
                        ErrorKind::Permanent,
                        "Vault is not configured: set VAULT_ADDR and VAULT_TOKEN",
                    )
                })?;
                Handle::Vault(vault::Vault::new(d, kind, connection.clone()))
            }
            policy::Destination::File(d) => Handle::File(file::File::new(d, kind)),
        })
    }
}

macro_rules! delegate {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            Handle::Aws($d) => $e,
            Handle::Vault($d) => $e,
            Handle::File($d) => $e,
        }
    };
}

impl Store for Handle {
    fn label(&self) -> String {
        delegate!(self, d => d.label())
    }
    async fn check(&self) -> Result<(), Error> {
        delegate!(self, d => d.check().await)
    }
    async fn preflight(&self) -> Result<String, Error> {
        delegate!(self, d => d.preflight().await)
    }
    async fn current(&self) -> Result<Option<Record>, Error> {
        delegate!(self, d => d.current().await)
    }
    async fn previous(&self) -> Result<Option<Record>, Error> {
        delegate!(self, d => d.previous().await)
    }
    async fn stage(&self, rotation_id: &str, record: &Record) -> Result<(), Error> {
        delegate!(self, d => d.stage(rotation_id, record).await)
    }
    async fn staged(&self, rotation_id: &str) -> Result<Option<Record>, Error> {
        delegate!(self, d => d.staged(rotation_id).await)
    }
    async fn promote(&self, rotation_id: &str) -> Result<(), Error> {
        delegate!(self, d => d.promote(rotation_id).await)
    }
    async fn discard(&self, rotation_id: &str) -> Result<(), Error> {
        delegate!(self, d => d.discard(rotation_id).await)
    }
    async fn pending(&self) -> Result<Vec<String>, Error> {
        delegate!(self, d => d.pending().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_foreign_values() {
        let record = Record {
            kind: CredentialKind::ApiKey,
            id: "key_1".into(),
            secret: Secret::new("tk_live_abc"),
            token_url: None,
            rotated_at: Some("2026-11-29T00:00:00Z".parse().unwrap()),
            rotation_id: Some("r1".into()),
        };
        let json = Value::Object(record.to_json());
        assert_eq!(json["api_key"], "tk_live_abc");
        assert!(!format!("{record:?} {:?}", record.to_json_secret()).contains("tk_live_abc"), "Debug redacts");
        assert_eq!(Record::parse(CredentialKind::ApiKey, &json).unwrap(), Some(record));
        assert_eq!(Record::parse(CredentialKind::ApiKey, &serde_json::json!({})).unwrap(), None);
        assert_eq!(Record::parse_text(CredentialKind::ApiKey, "").unwrap(), None);
        assert!(Record::parse(CredentialKind::OauthClient, &json).unwrap_err().contains("holds a api_key credential"));
        assert!(Record::parse_text(CredentialKind::ApiKey, "hunter2").is_err());
        assert!(Record::parse(CredentialKind::ApiKey, &serde_json::json!({"password": "x"})).is_err());
    }
}
