//! How rotator logs in to Vault (and OpenBao): a closed enum of auth methods, each turning what
//! it is configured with into a client token. What a login sends (an AppRole secret ID, a JWT, a
//! Kubernetes service-account token, a signed AWS request) is read or made at every login, the
//! files read again each time (the kubelet rotates service-account tokens; a secret ID may be
//! replaced), and none of it appears in a log line, an error or `Debug` output.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::secret::Secret;

/// The STS endpoint Vault's aws method calls unless its `sts_endpoint` says otherwise.
pub const DEFAULT_STS_ENDPOINT: &str = "https://sts.amazonaws.com/";
/// The region the global STS endpoint signs for.
pub const DEFAULT_STS_REGION: &str = "us-east-1";
/// Where Kubernetes mounts a pod's service-account token.
pub const DEFAULT_KUBERNETES_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The body of every `sts:GetCallerIdentity` request.
const GET_CALLER_IDENTITY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

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
    /// An `sts:GetCallerIdentity` request signed with the AWS credentials at hand, which Vault
    /// sends to STS to learn who signed it.
    Aws(Aws),
}

/// The aws (IAM) method's settings.
#[derive(Clone)]
pub struct Aws {
    pub mount: String,
    pub role: String,
    /// The `X-Vault-AWS-IAM-Server-ID` header, when the Vault method is configured to require one
    /// (`iam_server_id_header_value`); it is signed with the request.
    pub header_value: Option<String>,
    /// The STS endpoint the signed request names. Vault's method sends it to its own configured
    /// `sts_endpoint` with this host in the `Host` header, so the two must agree.
    pub sts_endpoint: reqwest::Url,
    /// The region the request is signed for: the STS endpoint's region.
    pub sts_region: String,
    /// The standard AWS credential chain, asked at every login (instance and task credentials
    /// expire and are replaced).
    pub credentials: aws_credential_types::provider::SharedCredentialsProvider,
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
            Method::Aws(aws) => {
                d.field("mount", &aws.mount)
                    .field("role", &aws.role)
                    .field("sts_endpoint", &aws.sts_endpoint.as_str())
                    .field("sts_region", &aws.sts_region);
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
            Method::Aws(_) => "aws",
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
            Method::Aws(aws) => &aws.mount,
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
            Method::Aws(aws) => {
                use aws_credential_types::provider::ProvideCredentials as _;
                let credentials = aws.credentials.provide_credentials().await.map_err(|e| {
                    LoginError::transient(format!(
                        "aws login: no AWS credentials from the standard chain: {}",
                        crate::toktra::causes(&e)
                    ))
                })?;
                let body = aws.login_body(&credentials, SystemTime::now()).map_err(LoginError::permanent)?;
                let mut sent = vec![Secret::new(credentials.secret_access_key())];
                sent.extend(credentials.session_token().map(Secret::new));
                (body, sent)
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

impl Aws {
    /// The login body of the IAM method: an `sts:GetCallerIdentity` POST to the STS endpoint,
    /// signed (SigV4) at `time` with `credentials`, its URL, body and headers base64-encoded as
    /// Vault expects them.
    pub fn login_body(
        &self,
        credentials: &aws_credential_types::Credentials,
        time: SystemTime,
    ) -> Result<Value, String> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        use aws_sigv4::sign::v4;

        let url = self.sts_endpoint.as_str();
        let host = match (self.sts_endpoint.host_str(), self.sts_endpoint.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => return Err(format!("aws login: the STS endpoint `{url}` has no host")),
        };
        let mut headers: Vec<(String, String)> = vec![
            ("Host".into(), host),
            ("Content-Type".into(), "application/x-www-form-urlencoded; charset=utf-8".into()),
        ];
        if let Some(value) = &self.header_value {
            headers.push(("X-Vault-AWS-IAM-Server-ID".into(), value.clone()));
        }
        let identity = credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.sts_region)
            .name("sts")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("aws login: signing parameters: {e}"))?
            .into();
        let request = SignableRequest::new(
            "POST",
            url,
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(GET_CALLER_IDENTITY.as_bytes()),
        )
        .map_err(|e| format!("aws login: {e}"))?;
        let (instructions, _) =
            sign(request, &params).map_err(|e| format!("aws login: signing failed: {e}"))?.into_parts();
        let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(instructions.headers()) {
            all.entry(name.to_string()).or_default().push(value.to_string());
        }
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let headers = serde_json::to_vec(&all).map_err(|e| format!("aws login: {e}"))?;
        Ok(json!({
            "role": self.role,
            "iam_http_request_method": "POST",
            "iam_request_url": b64(url.as_bytes()),
            "iam_request_body": b64(GET_CALLER_IDENTITY.as_bytes()),
            "iam_request_headers": b64(&headers),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws(endpoint: &str, header: Option<&str>) -> Aws {
        let credentials =
            aws_credential_types::Credentials::new("AKIDEXAMPLE", "not-a-real-secret", None, None, "test");
        Aws {
            mount: "aws".into(),
            role: "rotator".into(),
            header_value: header.map(str::to_string),
            sts_endpoint: reqwest::Url::parse(endpoint).unwrap(),
            sts_region: "us-east-1".into(),
            credentials: aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
        }
    }

    fn decode(value: &Value) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap()).unwrap()
    }

    /// The signature is checked against botocore's for the same request, credentials and time
    /// (botocore signs Vault's own `vault login -method=aws` examples; computed once with
    /// `botocore.auth.SigV4Auth(Credentials("AKIDEXAMPLE", "not-a-real-secret"), "sts", "us-east-1")`).
    #[test]
    fn aws_login_body_is_a_signed_get_caller_identity() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_200); // 2026-12-01T00:00:00Z
        let credentials =
            aws_credential_types::Credentials::new("AKIDEXAMPLE", "not-a-real-secret", None, None, "test");
        let body = aws(DEFAULT_STS_ENDPOINT, Some("vault.example.com")).login_body(&credentials, time).unwrap();
        assert_eq!(body["role"], "rotator");
        assert_eq!(body["iam_http_request_method"], "POST");
        assert_eq!(decode(&body["iam_request_url"]), b"https://sts.amazonaws.com/");
        assert_eq!(decode(&body["iam_request_body"]), GET_CALLER_IDENTITY.as_bytes());
        let headers: BTreeMap<String, Vec<String>> =
            serde_json::from_slice(&decode(&body["iam_request_headers"])).unwrap();
        assert_eq!(headers["Host"], ["sts.amazonaws.com"]);
        assert_eq!(headers["X-Vault-AWS-IAM-Server-ID"], ["vault.example.com"]);
        assert_eq!(headers["x-amz-date"], ["20261201T000000Z"]);
        let authorization = &headers["authorization"][0];
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261201/us-east-1/sts/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-vault-aws-iam-server-id, \
             Signature=95bdbf3ed240d45bdded757e5ddc8ee2941eb7e6b913a6d690cf086db6532b62"
        );
        let text = body.to_string();
        assert!(!text.contains("not-a-real-secret"), "the secret key is not sent");
        let debug = format!("{:?}", Method::Aws(aws(DEFAULT_STS_ENDPOINT, None)));
        assert!(!debug.contains("not-a-real-secret") && debug.contains("aws"), "{debug}");
    }

    #[test]
    fn an_endpoint_with_a_port_keeps_it_in_the_host() {
        let credentials = aws_credential_types::Credentials::new("AKID", "secret", Some("session".into()), None, "t");
        let body = aws("http://127.0.0.1:5000", None).login_body(&credentials, SystemTime::now()).unwrap();
        let headers: BTreeMap<String, Vec<String>> =
            serde_json::from_slice(&decode(&body["iam_request_headers"])).unwrap();
        assert_eq!(headers["Host"], ["127.0.0.1:5000"]);
        assert_eq!(headers["x-amz-security-token"], ["session"], "temporary credentials send their session token");
        assert!(!headers.contains_key("X-Vault-AWS-IAM-Server-ID"));
    }

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
