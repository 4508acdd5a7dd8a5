//! How rotator logs in to Vault: `[vault] auth` and its method's table, or a token from
//! `VAULT_TOKEN` or `token_file`, checked into a [`VaultAuth`]. A table for a method that is not
//! chosen is an error, not ignored. The files an AppRole, Kubernetes or JWT login names are read
//! at every login, not here.

use std::path::Path;

use crate::secret::Secret;
use crate::store::vault;

use super::raw::{AuthKind, VaultFile};
use super::values::{read_secret, var};
use super::{Error, error};

/// How rotator authenticates to Vault (`[vault] auth`), as configured; files are read at every
/// login. [`Config::clients`](super::Config::clients) turns it into a [`vault::Method`].
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

/// The Vault auth method the `[vault]` table and `VAULT_TOKEN` describe; `source` locates a key
/// in the file for errors.
pub(super) fn read(file: &VaultFile, source: &dyn Fn(&str) -> String) -> Result<Option<VaultAuth>, Error> {
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
