//! The Vault (KV v2) destination, also used with OpenBao. Consumers read `<mount>/<path>`; the
//! pending value waits at a staging path outside it (default `_rotator/staging/<path>`), so a
//! consumer's ACL on its own path never exposes an unverified value. Every write uses
//! check-and-set, so a concurrent writer (a person, another tool, a second rotator) makes the
//! write fail instead of being silently overwritten. Rotation bookkeeping (rotation ID, credential
//! ID, time) goes into the path's `custom_metadata`, merged with what others keep there.

//!
//! `connection` holds the token every call sends and replaces it (renewal, a new login after a
//! `403` for an expired token); `auth` holds the ways of logging in.

pub mod auth;
mod connection;

use std::collections::HashMap;

use chrono::{SecondsFormat, Utc};
use serde_json::Value;
use vaultrs::api::kv2::requests::{SetSecretMetadataRequest, SetSecretRequestOptions};
use vaultrs::error::ClientError;
use vaultrs::kv2;

pub use auth::Method;
pub use connection::{CallError, Connection, Renewal};

use super::{Error, ErrorKind, Record, Store};
use crate::credential::CredentialKind;
use crate::policy::VaultDestination;

impl Connection {
    /// The secrets engine mounted at `mount` as `(type, options.version)`, when this token may
    /// see it (`sys/internal/ui/mounts`, allowed for any token with a capability under the
    /// mount); `None` when Vault does not say (that answer is the same for a missing mount and a
    /// token without access).
    pub async fn mount(&self, mount: &str) -> Result<Option<(String, String)>, CallError> {
        let path = format!("sys/internal/ui/mounts/{}", mount.trim_matches('/'));
        let (status, body) = self.call(reqwest::Method::GET, &path, None, "read mount").await?;
        if !status.is_success() {
            return Ok(None);
        }
        let data = body.get("data").unwrap_or(&body);
        let kind = data.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
        let version =
            data.get("options").and_then(|o| o.get("version")).and_then(Value::as_str).unwrap_or("1").to_string();
        Ok(Some((kind, version)))
    }

    /// What the token may do on each path (`sys/capabilities-self`).
    pub async fn capabilities(&self, paths: &[String]) -> Result<HashMap<String, Vec<String>>, CallError> {
        let body = serde_json::json!({ "paths": paths });
        let (status, body) =
            self.call(reqwest::Method::POST, "sys/capabilities-self", Some(body), "capabilities-self").await?;
        if !status.is_success() {
            return Err(CallError::Other(format!("capabilities-self: vault answered {status}")));
        }
        let data = body.get("data").unwrap_or(&body);
        Ok(paths
            .iter()
            .map(|p| {
                let caps = data
                    .get(p)
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                    .unwrap_or_default();
                (p.clone(), caps)
            })
            .collect())
    }
}

/// What the token needs on each path of one destination (`<mount>/data/<path>` and so on),
/// for rotation and for `plan`'s preflight: the one list both `preflight` checks with
/// `sys/capabilities-self` and `rotator permissions` grants. `create` on the consumers' path
/// only where rotator may create it; `delete` only on the staging path's metadata, rotator's
/// own, which removes every version of a staged value once it is promoted or discarded. Nothing
/// deletes or destroys the consumers' path.
pub fn capabilities_needed(
    mount: &str,
    path: &str,
    staging: &str,
    create: bool,
) -> [(String, &'static [&'static str]); 4] {
    let data: &'static [&'static str] = if create { &["create", "read", "update"] } else { &["read", "update"] };
    [
        (format!("{mount}/data/{path}"), data),
        (format!("{mount}/metadata/{path}"), &["read", "update"]),
        (format!("{mount}/data/{staging}"), &["create", "read", "update"]),
        (format!("{mount}/metadata/{staging}"), &["read", "delete"]),
    ]
}

/// What the token needs on its own paths, whatever the destinations: renewal and the
/// `lookup-self` that tells an expired token from a denial (`connection`), and the capability
/// check of `plan`. The KV version of a mount is read from `sys/internal/ui/mounts`, which Vault
/// answers for any token with a capability under the mount, so it needs no grant.
pub const TOKEN_CAPABILITIES: [(&str, &[&str]); 3] = [
    ("auth/token/renew-self", &["update"]),
    ("auth/token/lookup-self", &["read"]),
    ("sys/capabilities-self", &["update"]),
];

pub struct Vault {
    mount: String,
    path: String,
    staging_path: String,
    create: bool,
    kind: CredentialKind,
    connection: Connection,
}

/// Keys rotator owns in `custom_metadata`; every other key is left as it is.
const META_ROTATION_ID: &str = "rotator_rotation_id";
const META_CREDENTIAL_ID: &str = "rotator_credential_id";
const META_ROTATED_AT: &str = "rotator_rotated_at";
const META_PREVIOUS_ID: &str = "rotator_previous_credential_id";

impl Vault {
    pub fn new(spec: &VaultDestination, kind: CredentialKind, connection: Connection) -> Vault {
        let path = spec.path.trim_matches('/').to_string();
        let staging_path = spec.staging_path();
        Vault {
            mount: spec.mount.trim_matches('/').to_string(),
            path,
            staging_path,
            create: spec.create,
            kind,
            connection,
        }
    }

    fn error(&self, kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error::new(super::Kind::Vault, self.label(), kind, detail)
    }

    /// Maps a failed call. Vault's error strings describe the request, never the data.
    fn map(&self, what: &str, e: CallError) -> Error {
        let e = match e {
            CallError::Vault(e) => e,
            CallError::Other(message) => return self.error(ErrorKind::Transient, format!("{what}: {message}")),
            CallError::Login(e) => {
                let kind = if e.transient { ErrorKind::Transient } else { ErrorKind::Permanent };
                return self.error(kind, format!("{what}: {e}"));
            }
        };
        let (kind, detail) = match &e {
            ClientError::APIError { code, errors } => {
                let text = errors.join("; ");
                if *code == 404 && text.contains("no handler for route") {
                    // Not a missing secret: nothing is mounted there, and creating cannot help.
                    return Error::new(
                        super::Kind::Vault,
                        self.label(),
                        ErrorKind::Permanent,
                        format!("{what}: no secrets engine is mounted at `{}/`", self.mount),
                    );
                }
                let kind = match code {
                    404 => ErrorKind::NotFound,
                    400 if text.contains("check-and-set") => ErrorKind::Conflict,
                    429 | 500.. => ErrorKind::Transient,
                    _ => ErrorKind::Permanent,
                };
                (
                    kind,
                    format!(
                        "{what}: vault answered {code}{}",
                        if text.is_empty() { String::new() } else { format!(": {text}") }
                    ),
                )
            }
            ClientError::RestClientError { source } => match source {
                rustify::errors::ClientError::ServerResponseError { code, .. } => {
                    let kind = match code {
                        404 => ErrorKind::NotFound,
                        429 | 500.. => ErrorKind::Transient,
                        _ => ErrorKind::Permanent,
                    };
                    (kind, format!("{what}: vault answered {code}"))
                }
                rustify::errors::ClientError::RequestError { .. } => (
                    ErrorKind::Transient,
                    format!(
                        "{what}: could not reach vault at {}: {}",
                        self.connection.address(),
                        crate::toktra::causes(source)
                    ),
                ),
                other => (ErrorKind::Permanent, format!("{what}: {other}")),
            },
            other => (ErrorKind::Permanent, format!("{what}: {other}")),
        };
        self.error(kind, detail)
    }

    /// The data at `path` with its version, or `None` when there is none (or it was deleted).
    async fn read(&self, path: &str) -> Result<Option<(Value, u64)>, Error> {
        let mount = &self.mount;
        let meta = match self.connection.vault(|c| async move { kv2::read_metadata(&*c, mount, path).await }).await {
            Ok(meta) => meta,
            Err(e) => {
                let e = self.map(&format!("read metadata of {path}"), e);
                return if e.kind == ErrorKind::NotFound { Ok(None) } else { Err(e) };
            }
        };
        let version = meta.current_version;
        let deleted =
            meta.versions.get(&version.to_string()).is_some_and(|v| v.destroyed || !v.deletion_time.is_empty());
        if version == 0 || deleted {
            return Ok(Some((Value::Null, version)));
        }
        match self
            .connection
            .vault(|c| async move { kv2::read_version::<Value>(&*c, mount, path, version).await })
            .await
        {
            Ok(data) => Ok(Some((data, version))),
            Err(e) => {
                let e = self.map(&format!("read {path}"), e);
                if e.kind == ErrorKind::NotFound { Ok(Some((Value::Null, version))) } else { Err(e) }
            }
        }
    }

    fn parse(&self, path: &str, value: &Value) -> Result<Option<Record>, Error> {
        Record::parse(self.kind, value)
            .map_err(|e| self.error(ErrorKind::Unexpected, format!("{}/{path}: {e}", self.mount)))
    }

    async fn write(&self, path: &str, record: &Record, cas: u64) -> Result<u64, Error> {
        let (mount, data) = (&self.mount, &record.to_json());
        self.connection
            .vault(|c| async move {
                let options = SetSecretRequestOptions { cas: cas as u32 };
                kv2::set_with_options(&*c, mount, path, data, options).await
            })
            .await
            .map(|m| m.version)
            .map_err(|e| self.map(&format!("write {path} (cas {cas})"), e))
    }

    /// Merges rotator's keys into the path's `custom_metadata` (the metadata endpoint replaces
    /// the whole map, so read it first and keep everything else).
    async fn record_rotation(&self, record: &Record, previous: Option<&str>) -> Result<(), Error> {
        let (mount, path) = (&self.mount, &self.path);
        let mut map: HashMap<String, String> =
            match self.connection.vault(|c| async move { kv2::read_metadata(&*c, mount, path).await }).await {
                Ok(meta) => meta.custom_metadata.unwrap_or_default(),
                Err(e) => return Err(self.map("read metadata", e)),
            };
        map.insert(META_ROTATION_ID.into(), record.rotation_id.clone().unwrap_or_default());
        map.insert(META_CREDENTIAL_ID.into(), record.id.clone());
        map.insert(META_ROTATED_AT.into(), Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true));
        match previous {
            Some(id) => map.insert(META_PREVIOUS_ID.into(), id.to_string()),
            None => map.remove(META_PREVIOUS_ID),
        };
        let map = &map;
        self.connection
            .vault(|c| async move {
                let mut request = SetSecretMetadataRequest::builder();
                request.custom_metadata(map.clone());
                kv2::set_metadata(&*c, mount, path, Some(&mut request)).await
            })
            .await
            .map_err(|e| self.map("write metadata", e))
    }

    async fn delete_staging(&self) -> Result<(), Error> {
        let (mount, path) = (&self.mount, &self.staging_path);
        match self.connection.vault(|c| async move { kv2::delete_metadata(&*c, mount, path).await }).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = self.map(&format!("delete {}", self.staging_path), e);
                if e.kind == ErrorKind::NotFound { Ok(()) } else { Err(e) }
            }
        }
    }
}

impl Store for Vault {
    fn label(&self) -> String {
        format!("vault:{}/{}", self.mount, self.path)
    }

    async fn check(&self) -> Result<(), Error> {
        // A KV version 1 mount would take the staging and data paths as plain keys: refuse it
        // (and anything else) before a mint, as far as Vault lets this token see the mount.
        match self.connection.mount(&self.mount).await.map_err(|e| self.map("check the mount", e))? {
            Some((kind, version)) if kind == "kv" && version == "2" => {}
            Some((kind, version)) => {
                let what = if kind == "kv" { format!("KV version {version}") } else { format!("a `{kind}` engine") };
                return Err(self.error(
                    ErrorKind::Permanent,
                    format!("`{}/` is {what}; rotator needs a KV version 2 mount", self.mount),
                ));
            }
            None => {}
        }
        match self.read(&self.path).await? {
            None if !self.create => Err(self.error(
                ErrorKind::NotFound,
                format!("{}/{} does not exist and the policy does not allow `create`", self.mount, self.path),
            )),
            _ => Ok(()),
        }
    }

    async fn preflight(&self) -> Result<String, Error> {
        self.check().await?;
        let current = self.current().await?;
        let exists = self.read(&self.path).await?.is_some();
        // A path that does not exist yet is created by the first rotation and updated by every
        // later one.
        let needs = capabilities_needed(&self.mount, &self.path, &self.staging_path, !exists);
        let paths: Vec<String> = needs.iter().map(|(path, _)| path.clone()).collect();
        let granted = self.connection.capabilities(&paths).await.map_err(|e| self.map("check capabilities", e))?;
        let mut missing = Vec::new();
        for (path, wanted) in &needs {
            let caps = granted.get(path).cloned().unwrap_or_default();
            if caps.iter().any(|c| c == "root") {
                continue;
            }
            let lacking: Vec<&str> = wanted.iter().copied().filter(|w| !caps.iter().any(|c| c == w)).collect();
            if !lacking.is_empty() {
                missing.push(format!(
                    "{path}: {} (has {})",
                    lacking.join(", "),
                    if caps.is_empty() { "nothing".into() } else { caps.join(", ") }
                ));
            }
        }
        if !missing.is_empty() {
            return Err(self.error(ErrorKind::Permanent, format!("the token may not {}", missing.join("; "))));
        }
        Ok(match current {
            Some(r) => format!("readable and writable; holds {}", r.id),
            None if exists => "readable and writable; empty".into(),
            None => "writable; will be created".into(),
        })
    }

    async fn current(&self) -> Result<Option<Record>, Error> {
        match self.read(&self.path).await? {
            Some((value, _)) => self.parse(&self.path, &value),
            None => Ok(None),
        }
    }

    async fn previous(&self) -> Result<Option<Record>, Error> {
        let (mount, path) = (&self.mount, &self.path);
        let meta = match self.connection.vault(|c| async move { kv2::read_metadata(&*c, mount, path).await }).await {
            Ok(meta) => meta,
            Err(e) => {
                let e = self.map(&format!("read metadata of {}", self.path), e);
                return if e.kind == ErrorKind::NotFound { Ok(None) } else { Err(e) };
            }
        };
        // The metadata lists the versions Vault still keeps (`max_versions` drops older ones);
        // deleted or destroyed ones cannot be read, so the previous value is the newest other.
        let mut candidates: Vec<u64> = meta
            .versions
            .iter()
            .filter(|(_, v)| !v.destroyed && v.deletion_time.is_empty())
            .filter_map(|(version, _)| version.parse::<u64>().ok())
            .filter(|version| *version < meta.current_version)
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for version in candidates {
            match self
                .connection
                .vault(|c| async move { kv2::read_version::<Value>(&*c, mount, path, version).await })
                .await
            {
                Ok(value) => return self.parse(&self.path, &value),
                Err(e) => {
                    let e = self.map(&format!("read {} version {version}", self.path), e);
                    // Deleted since the metadata was read: the next older one is the previous.
                    if e.kind != ErrorKind::NotFound {
                        return Err(e);
                    }
                }
            }
        }
        Ok(None)
    }

    async fn stage(&self, rotation_id: &str, record: &Record) -> Result<(), Error> {
        match self.read(&self.path).await? {
            None if !self.create => {
                return Err(self.error(
                    ErrorKind::NotFound,
                    format!("{}/{} does not exist and the policy does not allow `create`", self.mount, self.path),
                ));
            }
            // Refuse to go on when the current value is not a credential rotator understands.
            Some((value, _)) => {
                self.parse(&self.path, &value)?;
            }
            None => {}
        }
        let cas = match self.read(&self.staging_path).await? {
            Some((value, version)) => {
                if let Some(staged) = self.parse(&self.staging_path, &value)?
                    && staged.rotation_id.as_deref() == Some(rotation_id)
                {
                    return staged.restaged(record, super::Kind::Vault, self.label(), rotation_id);
                }
                version
            }
            None => 0,
        };
        self.write(&self.staging_path, record, cas).await.map(|_| ())
    }

    async fn staged(&self, rotation_id: &str) -> Result<Option<Record>, Error> {
        for path in [&self.staging_path, &self.path] {
            if let Some((value, _)) = self.read(path).await?
                && let Some(record) = self.parse(path, &value)?
                && record.rotation_id.as_deref() == Some(rotation_id)
            {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    async fn promote(&self, rotation_id: &str) -> Result<(), Error> {
        let (current, version) = match self.read(&self.path).await? {
            Some((value, version)) => (self.parse(&self.path, &value)?, version),
            None => (None, 0),
        };
        if current.as_ref().and_then(|r| r.rotation_id.as_deref()) == Some(rotation_id) {
            // Promoted before a crash; finish the bookkeeping and clean up.
            if let Some(record) = &current {
                let (mount, path) = (&self.mount, &self.path);
                let meta = self
                    .connection
                    .vault(|c| async move { kv2::read_metadata(&*c, mount, path).await })
                    .await
                    .map_err(|e| self.map("read metadata", e))?;
                let recorded = meta.custom_metadata.as_ref().and_then(|m| m.get(META_ROTATION_ID)).map(String::as_str);
                if recorded != Some(rotation_id) {
                    self.record_rotation(record, None).await?;
                }
            }
            return self.delete_staging().await;
        }
        let staged = match self.read(&self.staging_path).await? {
            Some((value, _)) => self.parse(&self.staging_path, &value)?,
            None => None,
        };
        let staged = staged
            .filter(|s| s.rotation_id.as_deref() == Some(rotation_id))
            .ok_or_else(|| self.error(ErrorKind::Unexpected, format!("no staged value for rotation {rotation_id}")))?;
        self.write(&self.path, &staged, version).await?;
        self.record_rotation(&staged, current.as_ref().map(|c| c.id.as_str())).await?;
        self.delete_staging().await
    }

    async fn discard(&self, rotation_id: &str) -> Result<(), Error> {
        if let Some((value, _)) = self.read(&self.staging_path).await?
            && let Some(staged) = self.parse(&self.staging_path, &value)?
            && staged.rotation_id.as_deref() == Some(rotation_id)
        {
            return self.delete_staging().await;
        }
        Ok(())
    }

    async fn pending(&self) -> Result<Vec<String>, Error> {
        match self.read(&self.staging_path).await? {
            Some((value, _)) => {
                Ok(self.parse(&self.staging_path, &value)?.and_then(|r| r.rotation_id).into_iter().collect())
            }
            None => Ok(Vec::new()),
        }
    }
}
