//! The AWS Secrets Manager destination, following AWS's own rotation protocol: the new value is
//! put as a version whose ID is the rotation ID (`ClientRequestToken`) with the `AWSPENDING`
//! label, promoted by moving `AWSCURRENT` to it (AWS then labels the replaced version
//! `AWSPREVIOUS`), and `AWSPENDING` is cleared afterwards, since only AWS's managed rotation
//! does that by itself. A secret that does not exist is created when the policy
//! says `create: true`, holding an empty placeholder (`{}`), so consumers never see a value
//! before it is verified; a secret that exists without any version (as Terraform creates it) gets
//! the same placeholder before the first staging.

use std::collections::HashMap;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::Tag;
use sha2::{Digest, Sha256};

use super::{Error, ErrorKind, Record, Store};
use crate::credential::CredentialKind;
use crate::policy::AwsDestination;

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const PREVIOUS: &str = "AWSPREVIOUS";
/// What a secret holds before its first rotation; `Record::parse` reads it as empty.
const PLACEHOLDER: &str = "{}";

/// The Secrets Manager actions this destination calls on every secret it writes, the one list
/// `rotator permissions` grants from (a unit test fails when a call below is missing from it).
pub const ACTIONS: [&str; 4] = [
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
];
/// Also needed on a secret the policy allows rotator to create: `CreateSecret` with tags needs
/// `TagResource` as well.
pub const CREATE_ACTIONS: [&str; 2] = ["secretsmanager:CreateSecret", "secretsmanager:TagResource"];
/// On a secret's customer-managed KMS key, through Secrets Manager: reading a value decrypts it,
/// putting one asks for a data key.
pub const KMS_ACTIONS: [&str; 2] = ["kms:Decrypt", "kms:GenerateDataKey"];

pub struct Aws {
    client: Client,
    secret_id: String,
    create: bool,
    kms_key_id: Option<String>,
    kind: CredentialKind,
    label: String,
}

impl Aws {
    pub fn new(spec: &AwsDestination, kind: CredentialKind, sdk: &aws_config::SdkConfig) -> Result<Aws, Error> {
        let label = crate::policy::Destination::AwsSecretsManager(spec.clone()).label();
        let mut config = aws_sdk_secretsmanager::config::Builder::from(sdk);
        // A secret named by its ARN lives in the ARN's region, whatever the default is.
        let arn_region = spec
            .secret_id
            .strip_prefix("arn:")
            .and_then(|rest| rest.split(':').nth(2))
            .filter(|region| !region.is_empty());
        if let Some(region) = spec.region.as_deref().or(arn_region) {
            config = config.region(aws_config::Region::new(region.to_string()));
        } else if sdk.region().is_none() {
            return Err(Error::new(
                super::Kind::Aws,
                label,
                ErrorKind::Permanent,
                "no AWS region: set `region` in the policy or AWS_REGION",
            ));
        }
        Ok(Aws {
            client: Client::from_conf(config.build()),
            secret_id: spec.secret_id.clone(),
            create: spec.create,
            kms_key_id: spec.kms_key_id.clone(),
            kind,
            label,
        })
    }

    fn error(&self, kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error::new(super::Kind::Aws, self.label.clone(), kind, detail)
    }

    /// Maps an SDK error by its error code. The message is built from the operation, AWS's error
    /// code and error message only (AWS messages describe requests, not values), or a fixed
    /// description of what went wrong below the service: never from the raw response, which for
    /// an answer the SDK could not parse is the body itself, secret value included
    /// (`DisplayErrorContext` prints it).
    fn map<E>(&self, what: &str, e: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (kind, detail) = match &e {
            SdkError::ServiceError(service) => {
                let err = service.err();
                let kind = match err.code() {
                    Some("ResourceNotFoundException") => ErrorKind::NotFound,
                    Some("InternalServiceError" | "ThrottlingException" | "RequestTimeout" | "ServiceUnavailable") => {
                        ErrorKind::Transient
                    }
                    Some("ResourceExistsException") => ErrorKind::Conflict,
                    Some("AccessDeniedException") => ErrorKind::Permanent,
                    _ => ErrorKind::Permanent,
                };
                let detail = match (err.code(), err.message()) {
                    (Some(code), Some(message)) => format!("{code}: {message}"),
                    (Some(code), None) => code.to_string(),
                    // No error code: an answer the SDK could not read (such as a truncated body,
                    // or an error in another protocol's shape, as moto answers an IAM denial of
                    // CreateSecret). Its status still says what happened.
                    (None, _) => match service.raw().status().as_u16() {
                        403 => "access denied (HTTP 403; the answer could not be read)".to_string(),
                        status => format!("unreadable answer (HTTP {status})"),
                    },
                };
                (kind, detail)
            }
            SdkError::TimeoutError(_) => (ErrorKind::Transient, "timed out".to_string()),
            SdkError::DispatchFailure(failure) => {
                let cause = if failure.is_timeout() {
                    "timed out"
                } else if failure.is_io() {
                    "connection failed"
                } else if failure.is_user() {
                    "request rejected by the client"
                } else {
                    "other error"
                };
                (ErrorKind::Transient, format!("request not sent: {cause}"))
            }
            SdkError::ResponseError(response) => (
                ErrorKind::Transient,
                format!("response could not be read (HTTP {})", response.raw().status().as_u16()),
            ),
            SdkError::ConstructionFailure(_) => (ErrorKind::Permanent, "request could not be built".to_string()),
            _ => (ErrorKind::Permanent, "unknown error".to_string()),
        };
        self.error(kind, format!("{what}: {}", bounded(&detail)))
    }

    /// Version ID → labels, or `None` when the secret does not exist.
    async fn versions(&self) -> Result<Option<HashMap<String, Vec<String>>>, Error> {
        match self.client.describe_secret().secret_id(&self.secret_id).send().await {
            Ok(out) => Ok(Some(out.version_ids_to_stages().cloned().unwrap_or_default())),
            Err(e) => {
                let e = self.map("describe secret", e);
                if e.kind == ErrorKind::NotFound { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Reads one version by ID or by label; `None` when it does not exist.
    async fn read(&self, version_id: Option<&str>, stage: Option<&str>) -> Result<Option<Record>, Error> {
        let mut request = self.client.get_secret_value().secret_id(&self.secret_id);
        if let Some(id) = version_id {
            request = request.version_id(id);
        }
        if let Some(stage) = stage {
            request = request.version_stage(stage);
        }
        match request.send().await {
            Ok(out) if out.secret_string().is_none() && out.secret_binary().is_some() => {
                Err(self.error(ErrorKind::Unexpected, "the secret holds a binary value, not a credential"))
            }
            Ok(out) => Record::parse_text(self.kind, out.secret_string().unwrap_or_default())
                .map_err(|e| self.error(ErrorKind::Unexpected, e)),
            Err(e) => {
                let e = self.map("get secret value", e);
                if e.kind == ErrorKind::NotFound { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Takes `AWSPENDING` off the version of `rotation_id`.
    async fn clear_pending(&self, rotation_id: &str) -> Result<(), Error> {
        self.client
            .update_secret_version_stage()
            .secret_id(&self.secret_id)
            .version_stage(PENDING)
            .remove_from_version_id(rotation_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.map("clear AWSPENDING", e))
    }

    /// Puts the empty placeholder as the `AWSCURRENT` version. Its version ID is derived from
    /// the rotation ID, so a retry after a lost answer or a crash is the same request, which AWS
    /// treats as idempotent, instead of a second placeholder.
    async fn put_placeholder(&self, rotation_id: &str) -> Result<(), Error> {
        self.client
            .put_secret_value()
            .secret_id(&self.secret_id)
            .client_request_token(placeholder_version(rotation_id))
            .secret_string(PLACEHOLDER)
            .version_stages(CURRENT)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.map("put placeholder value", e))
    }

    fn holder<'a>(versions: &'a HashMap<String, Vec<String>>, stage: &str) -> Option<&'a str> {
        versions.iter().find(|(_, stages)| stages.iter().any(|s| s == stage)).map(|(id, _)| id.as_str())
    }
}

/// The longest error detail kept: AWS's messages are a sentence; anything longer is not one.
const MAX_DETAIL: usize = 300;

/// `detail` cut to [`MAX_DETAIL`] characters.
fn bounded(detail: &str) -> String {
    match detail.char_indices().nth(MAX_DETAIL) {
        Some((at, _)) => format!("{}…", &detail[..at]),
        None => detail.to_string(),
    }
}

/// The version ID of the placeholder put before staging `rotation_id` into a secret without
/// versions: a UUID (version 8, "custom") from a SHA-256 of the rotation ID, so it is the same on
/// every attempt and never equal to a rotation ID.
fn placeholder_version(rotation_id: &str) -> String {
    let digest = Sha256::digest(format!("rotator placeholder for {rotation_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

impl Store for Aws {
    fn label(&self) -> String {
        self.label.clone()
    }

    async fn check(&self) -> Result<(), Error> {
        match self.versions().await? {
            Some(_) => self.read(None, Some(CURRENT)).await.map(|_| ()),
            None if self.create => Ok(()),
            None => {
                Err(self.error(ErrorKind::NotFound, "the secret does not exist and the policy does not allow `create`"))
            }
        }
    }

    async fn preflight(&self) -> Result<String, Error> {
        self.check().await?;
        // AWS has no dry run for PutSecretValue or UpdateSecretVersionStage: describe and read
        // are what can be checked without changing anything.
        Ok(match (self.versions().await?, self.current().await?) {
            (None, _) => "will be created (create permission not checked)".into(),
            (Some(_), Some(r)) => format!("described and read; holds {} (write permission not checked)", r.id),
            (Some(_), None) => "described and read; empty (write permission not checked)".into(),
        })
    }

    async fn current(&self) -> Result<Option<Record>, Error> {
        // By label, not the default read: emulators (moto) do not always move the default.
        self.read(None, Some(CURRENT)).await
    }

    async fn previous(&self) -> Result<Option<Record>, Error> {
        // AWS moves AWSPREVIOUS to the version AWSCURRENT left, whoever moved it.
        self.read(None, Some(PREVIOUS)).await
    }

    async fn stage(&self, rotation_id: &str, record: &Record) -> Result<(), Error> {
        let versions = match self.versions().await? {
            Some(versions) => versions,
            None if self.create => {
                // Created holding the placeholder as its first, AWSCURRENT, version (see below).
                let mut request = self
                    .client
                    .create_secret()
                    .name(&self.secret_id)
                    .secret_string(PLACEHOLDER)
                    .description("Toktra credential managed by rotator")
                    .tags(Tag::builder().key("managed-by").value("rotator").build());
                if let Some(key) = &self.kms_key_id {
                    request = request.kms_key_id(key);
                }
                if let Err(e) = request.send().await {
                    // Created concurrently or by an earlier attempt whose answer was lost.
                    let e = self.map("create secret", e);
                    if e.kind != ErrorKind::Conflict {
                        return Err(e);
                    }
                }
                // Whoever created it, look at what it holds now: a secret created by someone else
                // may have no version yet.
                self.versions()
                    .await?
                    .ok_or_else(|| self.error(ErrorKind::NotFound, "the secret vanished right after its creation"))?
            }
            None => {
                return Err(
                    self.error(ErrorKind::NotFound, "the secret does not exist and the policy does not allow `create`")
                );
            }
        };
        if Self::holder(&versions, CURRENT).is_some() {
            // Refuse to go on when the current value is not a credential rotator understands.
            self.current().await?;
        } else {
            // AWS labels the first version of a secret AWSCURRENT whatever PutSecretValue asks,
            // so staging into a secret without one (created by Terraform or CloudFormation with
            // no value) would make the unverified value current. Put the empty placeholder first,
            // as `create` does.
            self.put_placeholder(rotation_id).await?;
        }
        if versions.contains_key(rotation_id) {
            // Staged before: AWS keeps versions immutable, so only compare.
            return match self.read(Some(rotation_id), None).await? {
                Some(staged) if staged == *record => Ok(()),
                _ => {
                    Err(self
                        .error(ErrorKind::Unexpected, format!("version {rotation_id} exists with a different value")))
                }
            };
        }
        self.client
            .put_secret_value()
            .secret_id(&self.secret_id)
            .client_request_token(rotation_id)
            .secret_string(record.to_json_secret().expose())
            .version_stages(PENDING)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.map("put pending value", e))
    }

    async fn staged(&self, rotation_id: &str) -> Result<Option<Record>, Error> {
        match self.versions().await? {
            Some(versions) if versions.contains_key(rotation_id) => self.read(Some(rotation_id), None).await,
            _ => Ok(None),
        }
    }

    async fn promote(&self, rotation_id: &str) -> Result<(), Error> {
        let versions =
            self.versions().await?.ok_or_else(|| self.error(ErrorKind::NotFound, "the secret no longer exists"))?;
        if !versions.contains_key(rotation_id) {
            return Err(self.error(ErrorKind::Unexpected, format!("no staged version {rotation_id}")));
        }
        let current = Self::holder(&versions, CURRENT);
        if current != Some(rotation_id) {
            let mut request = self
                .client
                .update_secret_version_stage()
                .secret_id(&self.secret_id)
                .version_stage(CURRENT)
                .move_to_version_id(rotation_id);
            if let Some(old) = current {
                request = request.remove_from_version_id(old);
            }
            request.send().await.map_err(|e| self.map("move AWSCURRENT", e))?;
        }
        if Self::holder(&versions, PENDING) == Some(rotation_id) {
            self.clear_pending(rotation_id).await?;
        }
        Ok(())
    }

    async fn discard(&self, rotation_id: &str) -> Result<(), Error> {
        let Some(versions) = self.versions().await? else { return Ok(()) };
        let labels = versions.get(rotation_id).cloned().unwrap_or_default();
        if labels.iter().any(|l| l == PENDING) && !labels.iter().any(|l| l == CURRENT) {
            self.clear_pending(rotation_id).await?;
        }
        Ok(())
    }

    async fn pending(&self) -> Result<Vec<String>, Error> {
        let Some(versions) = self.versions().await? else { return Ok(Vec::new()) };
        Ok(versions
            .iter()
            .filter(|(_, labels)| labels.iter().any(|l| l == PENDING) && !labels.iter().any(|l| l == CURRENT))
            .map(|(id, _)| id.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_version_is_stable_per_rotation_and_a_valid_request_token() {
        let a = placeholder_version("01a22f3b-b6f7-7798-a36e-8d66581a0588");
        assert_eq!(a, placeholder_version("01a22f3b-b6f7-7798-a36e-8d66581a0588"));
        assert_ne!(a, placeholder_version("01a22f3b-b6f7-7798-a36e-8d66581a0589"));
        // ClientRequestToken: 32 to 64 characters.
        assert_eq!(a.len(), 36);
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 8);
    }

    /// Every Secrets Manager operation this file calls is in [`ACTIONS`] or
    /// [`CREATE_ACTIONS`], and every action listed is called: the IAM policy `rotator
    /// permissions` prints can neither miss a call nor grant one nothing makes.
    #[test]
    fn the_action_lists_are_the_calls_made() {
        let source = include_str!("aws.rs");
        let source = &source[..source.find("#[cfg(test)]").unwrap()];
        let mut called = std::collections::BTreeSet::new();
        let mut rest = source;
        while let Some(at) = rest.find("client") {
            rest = &rest[at + "client".len()..];
            let call = rest.trim_start();
            let Some(call) = call.strip_prefix('.') else { continue };
            let call = call.trim_start();
            let name: String = call.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if !call[name.len()..].starts_with("()") || name.is_empty() {
                continue;
            }
            let pascal: String = name.split('_').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect();
            called.insert(format!("secretsmanager:{pascal}"));
        }
        let listed: std::collections::BTreeSet<String> =
            ACTIONS.iter().chain(&CREATE_ACTIONS).map(|a| a.to_string()).collect();
        // `TagResource` is not a call of its own: `CreateSecret` carries the tags.
        called.insert("secretsmanager:TagResource".into());
        assert_eq!(called, listed);
    }

    #[test]
    fn error_details_are_bounded() {
        assert_eq!(bounded("AccessDeniedException: no"), "AccessDeniedException: no");
        let long = "é".repeat(MAX_DETAIL + 10);
        assert_eq!(bounded(&long).chars().count(), MAX_DETAIL + 1);
        assert!(bounded(&long).ends_with('…'));
    }
}
