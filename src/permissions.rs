//! `rotator permissions`: the least-privilege grants a policy set needs, derived from the lists
//! the destinations keep of what they call ([`crate::store::aws::ACTIONS`],
//! [`crate::store::vault::capabilities_needed`]), so the printed IAM and Vault policies cannot
//! drift from the code, and `plan`'s Vault preflight checks the same list it grants.
//!
//! Three renderings of one [`Grants`]: an IAM policy document (`aws-iam`), a Vault policy
//! (`vault-hcl`), and a JSON document for Terraform (`json`, format `rotator-permissions/v1`)
//! that names secrets and regions rather than ARNs, so Terraform builds the ARNs from its own
//! account and partition.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::policy::{Destination, Policy};
use crate::store::{aws, vault};

/// The JSON rendering's `format`; bumped when a field changes meaning.
pub const FORMAT: &str = "rotator-permissions/v1";

/// What the policies need, grouped by where it is granted.
#[derive(Debug, Default)]
pub struct Grants {
    /// One entry per Secrets Manager secret, in policy-name order.
    pub aws: Vec<AwsSecret>,
    /// Vault path → capabilities; empty when no policy writes to Vault.
    pub vault: BTreeMap<String, BTreeSet<&'static str>>,
    /// What each policy mints at Toktra, in policy-name order.
    pub toktra: Vec<Minted>,
}

/// One secret a policy writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSecret {
    pub policy: String,
    /// A name, or an ARN as the policy gives it.
    pub secret_id: String,
    /// The policy's region, or the one in the ARN; `None` when the AWS configuration decides.
    pub region: Option<String>,
    pub create: bool,
    pub kms_key_id: Option<String>,
    pub actions: Vec<&'static str>,
    /// Where the policy is defined, for messages.
    pub source: String,
}

/// The credential one policy mints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub policy: String,
    pub kind: String,
    pub name: String,
    pub scopes: Vec<String>,
}

/// The grants `policies` need.
pub fn derive(policies: &[Policy]) -> Grants {
    let mut policies: Vec<&Policy> = policies.iter().collect();
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    let mut grants = Grants::default();
    for policy in policies {
        grants.toktra.push(Minted {
            policy: policy.name.clone(),
            kind: policy.credential.kind.to_string(),
            name: policy.credential.name.clone(),
            scopes: policy.credential.scopes.clone(),
        });
        for destination in &policy.destinations {
            match destination {
                Destination::AwsSecretsManager(spec) => {
                    let arn_region = spec.secret_id.strip_prefix("arn:").and_then(|rest| rest.split(':').nth(2));
                    let mut actions: Vec<&'static str> = aws::ACTIONS.to_vec();
                    if spec.create {
                        actions.extend(aws::CREATE_ACTIONS);
                    }
                    actions.sort_unstable();
                    grants.aws.push(AwsSecret {
                        policy: policy.name.clone(),
                        secret_id: spec.secret_id.clone(),
                        region: spec.region.clone().or(arn_region.filter(|r| !r.is_empty()).map(str::to_string)),
                        create: spec.create,
                        kms_key_id: spec.kms_key_id.clone(),
                        actions,
                        source: policy.source.to_string(),
                    });
                }
                Destination::Vault(spec) => {
                    let mount = spec.mount.trim_matches('/');
                    let path = spec.path.trim_matches('/');
                    for (path, capabilities) in
                        vault::capabilities_needed(mount, path, &spec.staging_path(), spec.create)
                    {
                        grants.vault.entry(path).or_default().extend(capabilities.iter().copied());
                    }
                }
                Destination::File(_) => {}
            }
        }
    }
    if !grants.vault.is_empty() {
        for (path, capabilities) in vault::TOKEN_CAPABILITIES {
            grants.vault.entry(path.to_string()).or_default().extend(capabilities.iter().copied());
        }
    }
    grants
}

/// Where the IAM policy's ARNs point.
#[derive(Debug, Clone)]
pub struct AwsTarget {
    pub account_id: Option<String>,
    pub partition: String,
    /// For secrets whose policy names no region.
    pub default_region: Option<String>,
    /// Customer-managed keys the secrets are encrypted with (ARNs).
    pub kms_key_arns: Vec<String>,
}

/// The DNS suffix of an AWS partition's service endpoints (for `kms:ViaService`), from AWS's
/// partition list; `None` for a partition not listed.
pub fn dns_suffix(partition: &str) -> Option<&'static str> {
    match partition {
        "aws" | "aws-us-gov" => Some("amazonaws.com"),
        "aws-cn" => Some("amazonaws.com.cn"),
        "aws-iso" => Some("c2s.ic.gov"),
        "aws-iso-b" => Some("sc2s.sgov.gov"),
        "aws-iso-e" => Some("cloud.adc-e.uk"),
        "aws-iso-f" => Some("csp.hci.ic.gov"),
        _ => None,
    }
}

/// The IAM policy document (JSON) for the secrets in `grants`, or what is missing to write it.
///
/// A secret known by name is granted as `…:secret:<name>-??????` (Secrets Manager appends six
/// random characters to the name in the ARN). One rotator may create is granted as
/// `…:secret:<name>` too: while it does not exist, AWS checks the calls against that ARN.
pub fn aws_iam(grants: &Grants, target: &AwsTarget) -> Result<Value, String> {
    let Some(dns) = dns_suffix(&target.partition) else {
        return Err(format!(
            "unknown AWS partition `{}`; known: aws, aws-cn, aws-us-gov, aws-iso, aws-iso-b, aws-iso-e, aws-iso-f",
            target.partition
        ));
    };
    let mut all = BTreeSet::new();
    let mut created = BTreeSet::new();
    let mut regions = BTreeSet::new();
    let mut keys: BTreeSet<String> = target.kms_key_arns.iter().cloned().collect();
    let mut problems = Vec::new();
    for secret in &grants.aws {
        let Some(region) = secret.region.as_deref().or(target.default_region.as_deref()) else {
            problems.push(format!(
                "{}: policy `{}` names no region for `{}`; give one with --aws-region (or AWS_REGION)",
                secret.source, secret.policy, secret.secret_id
            ));
            continue;
        };
        regions.insert(region.to_string());
        let arns = if secret.secret_id.starts_with("arn:") {
            vec![secret.secret_id.clone()]
        } else if let Some(account) = &target.account_id {
            let bare =
                format!("arn:{}:secretsmanager:{region}:{account}:secret:{}", target.partition, secret.secret_id);
            let mut arns = vec![format!("{bare}-??????")];
            if secret.create {
                arns.push(bare);
            }
            arns
        } else {
            problems.push(format!(
                "{}: policy `{}` names secret `{}` without its ARN; give the account with --aws-account-id",
                secret.source, secret.policy, secret.secret_id
            ));
            continue;
        };
        match &secret.kms_key_id {
            Some(key) if key.starts_with("arn:") => {
                keys.insert(key.clone());
            }
            Some(key) if target.kms_key_arns.is_empty() => problems.push(format!(
                "{}: policy `{}` encrypts `{}` with KMS key `{key}`; give its ARN with --kms-key-arn",
                secret.source, secret.policy, secret.secret_id
            )),
            _ => {}
        }
        if secret.create {
            created.extend(arns.iter().cloned());
        }
        all.extend(arns);
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let mut statements = Vec::new();
    if !all.is_empty() {
        statements.push(json!({
            "Sid": "RotateSecrets",
            "Effect": "Allow",
            "Action": aws::ACTIONS,
            "Resource": all,
        }));
    }
    if !created.is_empty() {
        statements.push(json!({
            "Sid": "CreateSecrets",
            "Effect": "Allow",
            "Action": aws::CREATE_ACTIONS,
            "Resource": created,
        }));
    }
    if !keys.is_empty() && !all.is_empty() {
        let via: Vec<String> = regions.iter().map(|r| format!("secretsmanager.{r}.{dns}")).collect();
        statements.push(json!({
            "Sid": "UseSecretsKey",
            "Effect": "Allow",
            "Action": aws::KMS_ACTIONS,
            "Resource": keys,
            "Condition": { "StringEquals": { "kms:ViaService": via } },
        }));
    }
    Ok(json!({ "Version": "2012-10-17", "Statement": statements }))
}

/// The Vault policy (HCL) for `grants`; a comment alone when no policy writes to Vault.
pub fn vault_hcl(grants: &Grants) -> String {
    let mut out = String::from("# Generated by `rotator permissions --format vault-hcl`; do not edit by hand.\n");
    if grants.vault.is_empty() {
        out.push_str("# No policy writes to Vault.\n");
    }
    for (path, capabilities) in &grants.vault {
        let list: Vec<String> = capabilities.iter().map(|c| format!("\"{c}\"")).collect();
        let _ = write!(out, "\npath \"{path}\" {{\n  capabilities = [{}]\n}}\n", list.join(", "));
    }
    out
}

/// The document Terraform reads (`jsondecode(file(...))`): secrets by name and region, the
/// Vault policy and its paths, and what each policy mints.
pub fn terraform_json(grants: &Grants) -> Value {
    let secrets: Vec<Value> = grants
        .aws
        .iter()
        .map(|s| {
            json!({
                "policy": s.policy,
                "secret_id": s.secret_id,
                "region": s.region,
                "create": s.create,
                "kms_key_id": s.kms_key_id,
                "actions": s.actions,
            })
        })
        .collect();
    let paths: Vec<Value> =
        grants.vault.iter().map(|(path, caps)| json!({ "path": path, "capabilities": caps })).collect();
    let toktra: Vec<Value> = grants
        .toktra
        .iter()
        .map(|m| json!({ "policy": m.policy, "kind": m.kind, "name": m.name, "scopes": m.scopes }))
        .collect();
    json!({
        "format": FORMAT,
        "aws": { "secrets": secrets, "kms_actions": aws::KMS_ACTIONS },
        "vault": { "policy_hcl": vault_hcl(grants), "paths": paths },
        "toktra": toktra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(text: &str) -> Vec<Policy> {
        let (mut policies, mut problems) = (Vec::new(), Vec::new());
        crate::policy::parse_file(std::path::Path::new("p.yaml"), text, &mut policies, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        policies
    }

    const SET: &str = "name: a\ncredential: { kind: api_key, name: a, scopes: [usage:read] }\nschedule: { every: 30d }\n\
        destinations:\n  - aws_secrets_manager: { secret_id: prod/a, region: eu-central-1, create: true }\n\
        \x20 - vault: { mount: secret/, path: /toktra/a }\n\
        ---\nname: b\ncredential: { kind: oauth_client, name: b }\nschedule: { every: 30d }\n\
        destinations:\n  - aws_secrets_manager: { secret_id: prod/b }\n  - vault: { mount: kv, path: b, staging_path: st/b, create: true }\n";

    fn target() -> AwsTarget {
        AwsTarget {
            account_id: Some("123456789012".into()),
            partition: "aws".into(),
            default_region: Some("us-east-1".into()),
            kms_key_arns: vec![],
        }
    }

    #[test]
    fn iam_grants_exactly_the_listed_actions_on_the_named_secrets() {
        let grants = derive(&policies(SET));
        let document = aws_iam(&grants, &target()).unwrap();
        let statements = document["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 2, "no KMS statement without a customer-managed key: {document:#}");
        assert_eq!(statements[0]["Action"], json!(aws::ACTIONS));
        // `prod/a` may be created: until it exists AWS checks its ARN without the suffix.
        assert_eq!(
            statements[0]["Resource"],
            json!([
                "arn:aws:secretsmanager:eu-central-1:123456789012:secret:prod/a",
                "arn:aws:secretsmanager:eu-central-1:123456789012:secret:prod/a-??????",
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/b-??????"
            ])
        );
        assert_eq!(statements[1]["Action"], json!(aws::CREATE_ACTIONS));
        assert_eq!(
            statements[1]["Resource"],
            json!([
                "arn:aws:secretsmanager:eu-central-1:123456789012:secret:prod/a",
                "arn:aws:secretsmanager:eu-central-1:123456789012:secret:prod/a-??????"
            ]),
            "CreateSecret only where the policy allows create"
        );
        let text = document.to_string();
        assert!(!text.contains('*'), "no wildcard: {text}");
    }

    #[test]
    fn kms_is_granted_through_secrets_manager_only() {
        let grants = derive(&policies(SET));
        let key = "arn:aws:kms:eu-central-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let document = aws_iam(&grants, &AwsTarget { kms_key_arns: vec![key.into()], ..target() }).unwrap();
        let kms = &document["Statement"][2];
        assert_eq!(kms["Action"], json!(["kms:Decrypt", "kms:GenerateDataKey"]));
        assert_eq!(kms["Resource"], json!([key]));
        assert_eq!(
            kms["Condition"]["StringEquals"]["kms:ViaService"],
            json!(["secretsmanager.eu-central-1.amazonaws.com", "secretsmanager.us-east-1.amazonaws.com"])
        );
    }

    #[test]
    fn other_partitions_get_their_arns_and_endpoints() {
        let grants = derive(&policies(SET));
        let key = "arn:aws-cn:kms:cn-north-1:123456789012:key/k";
        let china = AwsTarget { partition: "aws-cn".into(), kms_key_arns: vec![key.into()], ..target() };
        let document = aws_iam(&grants, &china).unwrap();
        let text = document.to_string();
        assert!(text.contains("arn:aws-cn:secretsmanager:") && !text.contains("arn:aws:"), "{text}");
        assert!(text.contains("secretsmanager.eu-central-1.amazonaws.com.cn"), "{text}");
        let e = aws_iam(&grants, &AwsTarget { partition: "aws-moon".into(), ..target() }).unwrap_err();
        assert!(e.contains("unknown AWS partition `aws-moon`"), "{e}");
    }

    #[test]
    fn missing_account_or_region_is_named() {
        let grants = derive(&policies(SET));
        let e = aws_iam(&grants, &AwsTarget { account_id: None, default_region: None, ..target() }).unwrap_err();
        assert!(e.contains("p.yaml:") && e.contains("policy `a`") && e.contains("--aws-account-id"), "{e}");
        assert!(e.contains("policy `b`") && e.contains("--aws-region"), "{e}");
    }

    #[test]
    fn vault_grants_what_preflight_checks_and_never_deletes_consumers_paths() {
        let grants = derive(&policies(SET));
        let hcl = vault_hcl(&grants);
        let caps = |path: &str| grants.vault.get(path).map(|c| c.iter().copied().collect::<Vec<_>>());
        assert_eq!(caps("secret/data/toktra/a"), Some(vec!["read", "update"]));
        assert_eq!(caps("kv/data/b"), Some(vec!["create", "read", "update"]));
        assert_eq!(caps("kv/metadata/st/b"), Some(vec!["delete", "read"]));
        assert_eq!(caps("secret/metadata/_rotator/staging/toktra/a"), Some(vec!["delete", "read"]));
        assert_eq!(caps("auth/token/renew-self"), Some(vec!["update"]));
        for (path, capabilities) in &grants.vault {
            assert!(!capabilities.contains("destroy") && !capabilities.contains("sudo"), "{path}");
            if capabilities.contains("delete") {
                assert!(path.contains("/metadata/_rotator/staging/") || path == "kv/metadata/st/b", "{path}");
            }
        }
        assert!(hcl.contains("path \"kv/data/b\" {\n  capabilities = [\"create\", \"read\", \"update\"]\n}"), "{hcl}");
    }

    #[test]
    fn no_vault_destination_no_vault_grant() {
        let grants = derive(&policies(
            "name: f\ncredential: { kind: api_key, name: f }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: f.json }\n",
        ));
        assert!(grants.vault.is_empty() && grants.aws.is_empty());
        assert!(vault_hcl(&grants).contains("No policy writes to Vault"));
        assert_eq!(grants.toktra[0].name, "f");
    }
}
