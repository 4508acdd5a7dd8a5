//! How rotator logs in to Vault (and OpenBao): a closed enum of auth methods, each turning what
//! it is configured with into a client token. What a login sends (an AppRole secret ID, a JWT, a
//! Kubernetes service-account token) is read at every login, the
//! files read again each time (the kubelet rotates service-account tokens; a secret ID may be
//! replaced), and none of it appears in a log line, an error or `Debug` output.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::secret::Secret;

/// Where Kubernetes mounts a pod's service-account token.
pub const DEFAULT_KUBERNETES_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// A file holding a login secret, with the configuration key that named it (for errors).
#[derive(Debug, Clone)]
pub struct SecretFile {
    pub path: PathBuf,
    /// Where the path was configured, e.g. `rotator.toml:14 (vault.jwt.token_file)`.
    pub key: String,
}

impl SecretFile {
    /// The secret, read now (a trailing newline removed).
    pub fn read(&self) -> Result<Secret, LoginError> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| LoginError::permanent(format!("{}: cannot read {}: {e}", self.key, self.path.display())))?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            return Err(LoginError::permanent(format!("{}: {} is empty", self.key, self.path.display())));
        }
        Ok(Secret::new(text))
    }
}

/// An auth method and what it logs in with.
#[derive(Clone)]
pub enum Method {
    /// A token given to rotator (`VAULT_TOKEN`, `token_file`): renewed while Vault allows, but
    /// never obtained again.
    Token(Secret),
    AppRole {
        mount: String,
        role_id: String,
        secret_id: SecretFile,
    },
    /// A Kubernetes service-account token, which Vault checks with the cluster's TokenReview API.
    Kubernetes {
        mount: String,
        role: String,
        token: SecretFile,
    },
    /// A JWT from a file (a workload identity token, a CI job's token), which Vault checks against
    /// its configured keys or OIDC discovery.
    Jwt {
        mount: String,
        role: String,
        token: SecretFile,
    },
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Method");
        d.field("name", &self.name());
        match self {
            Method::Token(_) => {}
            Method::AppRole { mount, role_id, secret_id } => {
                d.field("mount", mount).field("role_id", role_id).field("secret_id_file", &secret_id.path);
            }
            Method::Kubernetes { mount, role, token } | Method::Jwt { mount, role, token } => {
                d.field("mount", mount).field("role", role).field("token_file", &token.path);
            }
        }
        d.finish_non_exhaustive()
    }
}

/// A client token and its lease, as a login or a renewal answered.
pub struct Login {
    pub token: Secret,
    /// `0` for a token that never expires.
    pub ttl: Duration,
    pub renewable: bool,
}

/// A login that failed, with whether trying again later may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct LoginError {
    pub message: String,
    pub transient: bool,
}

impl LoginError {
    pub fn permanent(message: impl Into<String>) -> LoginError {
        LoginError { message: message.into(), transient: false }
    }

    pub fn transient(message: impl Into<String>) -> LoginError {
        LoginError { message: message.into(), transient: true }
    }
}

impl Method {
    /// The method's name as the configuration spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Token(_) => "token",
            Method::AppRole { .. } => "approle",
            Method::Kubernetes { .. } => "kubernetes",
            Method::Jwt { .. } => "jwt",
        }
    }

    /// Whether the method can obtain a new token (every method but `token`).
    pub fn can_login(&self) -> bool {
        !matches!(self, Method::Token(_))
    }

    fn mount(&self) -> &str {
        match self {
            Method::Token(_) => "token",
            Method::AppRole { mount, .. } | Method::Kubernetes { mount, .. } | Method::Jwt { mount, .. } => mount,
        }
    }

    /// Logs in at `auth/<mount>/login` and returns the new token. `http` must not follow
    /// redirects: the request body is a credential.
    pub async fn login(
        &self,
        http: &reqwest::Client,
        address: &str,
        namespace: Option<&str>,
    ) -> Result<Login, LoginError> {
        // The values sent, to be scrubbed from anything Vault answers.
        let (body, sent): (Value, Vec<Secret>) = match self {
            Method::Token(_) => {
                return Err(LoginError::permanent(
                    "the `token` auth method cannot log in again: give rotator a new token, or use an auth \
                     method that logs in (approle, kubernetes, jwt, aws)",
                ));
            }
            Method::AppRole { role_id, secret_id, .. } => {
                let secret_id = secret_id.read()?;
                (json!({ "role_id": role_id, "secret_id": secret_id.expose() }), vec![secret_id])
            }
            Method::Kubernetes { role, token, .. } | Method::Jwt { role, token, .. } => {
                let jwt = token.read()?;
                (json!({ "role": role, "jwt": jwt.expose() }), vec![jwt])
            }
        };
        let mount = self.mount().trim_matches('/');
        let what = format!("{} login at auth/{mount}", self.name());
        let mut request = http.post(format!("{}/v1/auth/{mount}/login", address.trim_end_matches('/'))).json(&body);
        if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
            request = request.header("X-Vault-Namespace", ns);
        }
        let response = request
            .send()
            .await
            .map_err(|e| LoginError::transient(format!("{what}: {}", crate::toktra::causes(&e.without_url()))))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| LoginError::transient(format!("{what}: {}", crate::toktra::causes(&e.without_url()))))?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success()
            && let Some(token) = answer["auth"]["client_token"].as_str()
        {
            return Ok(Login {
                token: Secret::new(token),
                ttl: Duration::from_secs(answer["auth"]["lease_duration"].as_u64().unwrap_or(0)),
                renewable: answer["auth"]["renewable"].as_bool().unwrap_or(false),
            });
        }
        // Vault's reasons ("invalid role or secret ID", "claim \"aud\" does not match …") say what
        // to fix; they describe the request, but anything sent is scrubbed all the same.
        let reasons = answer["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
            .unwrap_or_default();
        let mut reasons: String = reasons.split_whitespace().collect::<Vec<_>>().join(" ");
        for secret in &sent {
            if !secret.is_empty() {
                reasons = reasons.replace(secret.expose(), "[REDACTED]");
            }
        }
        if reasons.chars().count() > 300 {
            reasons = reasons.chars().take(300).collect::<String>() + "…";
        }
        let message = format!(
            "{what} failed: vault answered {status}{}",
            if reasons.is_empty() { String::new() } else { format!(": {reasons}") }
        );
        Err(if status.as_u16() == 429 || status.is_server_error() {
            LoginError::transient(message)
        } else {
            LoginError::permanent(message)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let file = SecretFile { path: "/run/secret-id".into(), key: "vault.approle.secret_id_file".into() };
        let methods = [
            Method::Token(Secret::new("hvs.very-secret")),
            Method::AppRole { mount: "approle".into(), role_id: "r".into(), secret_id: file.clone() },
            Method::Jwt { mount: "jwt".into(), role: "r".into(), token: file },
        ];
        for method in methods {
            let text = format!("{method:?}");
            assert!(!text.contains("very-secret"), "{text}");
            assert!(text.contains(method.name()), "{text}");
        }
    }
}
