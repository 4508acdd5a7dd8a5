//! What `rotator permissions` grants is enough, and each grant is needed: a full rotation runs
//! with nothing but the generated policy, and fails, refused for the grant taken away, with any
//! one destination grant missing (what consumers read keeps working). On OpenBao, which enforces
//! paths and capabilities; on a moto started with IAM enforcement, which checks actions only (so
//! the actions are granted on `"*"`; the resource scoping is checked structurally in
//! `permissions`' unit tests and `terraform.rs`). Not taken away here: `TagResource` (moto does
//! not check it), the KMS actions (moto does not check them), and the Vault token's
//! `renew-self`/`lookup-self` (used by `serve`'s renewal, `vault_auth.rs`).

use std::collections::BTreeMap;

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use rotator::policy::CredentialKind;
use serde_json::{Value, json};

use crate::harness::{Dest, Env, Spec, credential_json, text};

/// `(path, capabilities)` of the Vault policy `rotator permissions` generates for the loaded policies.
async fn vault_grants(env: &Env) -> Vec<(String, Vec<String>)> {
    let run = env.rotator(&["permissions", "--format", "json"]).await;
    run.assert_code(0);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    json["vault"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let capabilities =
                p["capabilities"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().into()).collect();
            (text(p, "path"), capabilities)
        })
        .collect()
}

/// Loads `grants` as a Vault policy and returns a token holding only it (not even `default`).
async fn token_with(env: &Env, name: &str, grants: &[(String, Vec<String>)]) -> String {
    let hcl: String = grants
        .iter()
        .map(|(path, caps)| {
            let caps: Vec<String> = caps.iter().map(|c| format!("\"{c}\"")).collect();
            format!("path \"{path}\" {{\n  capabilities = [{}]\n}}\n", caps.join(", "))
        })
        .collect();
    let (status, body) =
        env.vault(reqwest::Method::PUT, &format!("sys/policies/acl/{name}"), Some(json!({ "policy": hcl }))).await;
    assert!(status < 300, "{status} {body}");
    let (status, body) = env
        .vault(
            reqwest::Method::POST,
            "auth/token/create",
            Some(json!({ "policies": [name], "no_default_policy": true, "ttl": "10m" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    text(&body["auth"], "client_token")
}

fn vault_spec(name: &str, path: String, kind: CredentialKind) -> Spec {
    Spec { name: name.into(), kind, dests: vec![Dest::Vault(path)], grace: "0s" }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generated_vault_policy_is_enough_and_each_grant_is_needed() {
    let mut env = Env::start().await;
    // A policy that creates its path and one over a path that holds a hand-made key.
    let created = vault_spec("lp-created", format!("{}/lp-created", env.prefix), CredentialKind::OauthClient);
    let existing = vault_spec("lp-existing", format!("{}/lp-existing", env.prefix), CredentialKind::ApiKey);
    env.policy("created.yaml", &created.yaml());
    // `create: false`: the policy may only update what is there.
    env.policy("existing.yaml", &existing.yaml().replace(", create: true", ""));
    let legacy = env.legacy(CredentialKind::ApiKey, "lp-existing-legacy").await;
    env.seed(&existing, &legacy).await;

    let grants = vault_grants(&env).await;
    let token = token_with(&env, &format!("{}-full", env.prefix), &grants).await;
    env.env.push(("VAULT_TOKEN".into(), token));
    // `plan`'s preflight checks exactly these capabilities.
    env.rotator(&["plan"]).await.assert_code(0);
    env.rotator(&["rotate", "--all"]).await.assert_code(0);
    env.rotator(&["rotate", "--all"]).await.assert_code(0);
    env.env.pop();
    env.assert_converged(
        &[created, existing],
        &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().into())],
    )
    .await;

    // Each destination grant taken away in turn, on a policy of its own whose path holds a
    // working key: the rotation fails and consumers keep reading that key.
    for file in ["created.yaml", "existing.yaml"] {
        std::fs::remove_file(env.dir.join("policies").join(file)).unwrap();
    }
    let mut not_needed = Vec::new();
    let mut case = 0;
    let template = vault_spec("lp-template", format!("{}/lp-template", env.prefix), CredentialKind::ApiKey);
    env.policy("case.yaml", &template.yaml());
    let template_grants = vault_grants(&env).await;
    let destination_grants: Vec<(usize, String)> = template_grants
        .iter()
        .enumerate()
        .filter(|(_, (path, _))| path.starts_with("secret/"))
        .flat_map(|(i, (_, caps))| caps.iter().map(move |c| (i, c.clone())))
        .collect();
    assert_eq!(destination_grants.len(), 10, "{template_grants:?}");
    for (index, capability) in destination_grants {
        case += 1;
        let name = format!("lp-case{case}");
        let spec = vault_spec(&name, format!("{}/{name}", env.prefix), CredentialKind::ApiKey);
        env.policy("case.yaml", &spec.yaml());
        let mut grants = vault_grants(&env).await;
        let (path, caps) = &mut grants[index];
        caps.retain(|c| *c != capability);
        let taken = format!("{capability} on {path}");
        let staging = path.contains("/_rotator/staging/");
        // Each grant is used in a situation of its own: `create` on the consumers' path only
        // while it does not exist; `update` on the staging path only over a staged value left by
        // an abandoned rotation. Set that situation up; otherwise the path holds a working key.
        let first = capability == "create" && !staging;
        let legacy = env.legacy(CredentialKind::ApiKey, &format!("{name}-legacy")).await;
        if !first {
            env.seed(&spec, &legacy).await;
        }
        if capability == "update" && staging && path.starts_with("secret/data/") {
            let mut stale = credential_json(CredentialKind::ApiKey, "key_abandoned", &legacy.secret);
            stale["rotation_id"] = json!("00000000-0000-7000-8000-000000000000");
            env.vault_put(&format!("_rotator/staging/{}/{name}", env.prefix), stale).await;
        }
        let token = token_with(&env, &format!("{}-{name}", env.prefix), &grants).await;
        env.env.push(("VAULT_TOKEN".into(), token));
        let run = env.rotator(&["rotate", &name]).await;
        env.env.pop();
        // Failed or not, what consumers read works: a grant missing late (the staged value's
        // clean-up after promotion) fails the rotation with the new key already served.
        match env.served(&spec.dests[0]).await {
            Some(served) => {
                let id = text(&served, "key_id");
                let works = env.accepted(CredentialKind::ApiKey, &id, &text(&served, "api_key")).await;
                assert!(works, "without {taken}: {id} is served and works");
            }
            None => assert!(first && run.code != 0, "without {taken}: nothing served"),
        }
        if run.code == 0 {
            not_needed.push(taken);
        } else {
            assert_eq!(run.code, 1, "without {taken}:\n{}", run.stderr);
            // ... because Vault refused, not for something else.
            let output = format!("{}\n{}", run.stdout, run.stderr);
            assert!(output.contains("permission denied"), "without {taken}:\n{output}");
        }
    }
    assert!(not_needed.is_empty(), "rotations succeeded without: {not_needed:#?}");

    // The token's own paths: `plan` checks capabilities through `sys/capabilities-self`, so
    // without it the preflight fails. (Renewal and `lookup-self` are exercised by `serve` in
    // `vault_auth.rs`.)
    let mut grants = vault_grants(&env).await;
    grants.retain(|(path, _)| path != "sys/capabilities-self");
    let token = token_with(&env, &format!("{}-no-capabilities", env.prefix), &grants).await;
    env.env.push(("VAULT_TOKEN".into(), token));
    let run = env.rotator(&["plan"]).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains("capabilities") || run.stderr.contains("capabilities"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
}

/// An IAM user with `actions` on every resource, and its access key.
async fn user_with(iam: &aws_sdk_iam::Client, name: &str, actions: &[String]) -> (String, String) {
    iam.create_user().user_name(name).send().await.unwrap();
    let document = json!({
        "Version": "2012-10-17",
        "Statement": [{ "Effect": "Allow", "Action": actions, "Resource": "*" }],
    });
    iam.put_user_policy()
        .user_name(name)
        .policy_name("rotator")
        .policy_document(document.to_string())
        .send()
        .await
        .unwrap();
    let key = iam.create_access_key().user_name(name).send().await.unwrap();
    let key = key.access_key().unwrap();
    (key.access_key_id().to_string(), key.secret_access_key().to_string())
}

fn iam_client(endpoint: &str, (id, secret): (&str, &str)) -> aws_sdk_iam::Client {
    let config = aws_sdk_iam::Config::builder()
        .behavior_version(aws_sdk_iam::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_iam::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_iam::config::Credentials::new(id, secret, None, None, "test"))
        .build();
    aws_sdk_iam::Client::from_conf(config)
}

fn secrets_client(endpoint: &str, (id, secret): (&str, &str)) -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(id, secret, None, None, "test"))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

/// The moto started with IAM enforcement (`scripts/test`): its first three requests are not
/// checked, and this test, its only user, spends them on an administrator.
fn iam_endpoint() -> String {
    std::env::var("ROTATOR_TEST_AWS_IAM_ENDPOINT").unwrap_or_else(|_| {
        panic!("ROTATOR_TEST_AWS_IAM_ENDPOINT is not set: run the tests through scripts/test, which starts moto with IAM enforcement")
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generated_iam_actions_are_enough_and_each_call_needs_its_action() {
    let endpoint = iam_endpoint();
    let bootstrap = iam_client(&endpoint, ("testing", "testing"));
    let admin = user_with(&bootstrap, "administrator", &["*".to_string()]).await;
    let iam = iam_client(&endpoint, (&admin.0, &admin.1));
    let secrets = secrets_client(&endpoint, (&admin.0, &admin.1));
    let mut env = Env::start().await;
    let served = |id: String| {
        let secrets = secrets.clone();
        async move {
            let out = secrets.get_secret_value().secret_id(id).version_stage("AWSCURRENT").send().await.unwrap();
            serde_json::from_str::<Value>(out.secret_string().unwrap()).unwrap()
        }
    };

    // One round: a policy whose secret rotator creates and one over a secret holding a
    // hand-made key, rotated with a user holding `actions`. Returns the run's exit code and
    // whether each secret serves a new, working key (else the old one, or nothing yet).
    let mut round = 0;
    let mut rotate_with = async |env: &mut Env, actions: &[String]| -> (i32, bool, String) {
        round += 1;
        let (created, existing) =
            (format!("{}/iam{round}-created", env.prefix), format!("{}/iam{round}-existing", env.prefix));
        for file in std::fs::read_dir(env.dir.join("policies")).unwrap() {
            std::fs::remove_file(file.unwrap().path()).unwrap();
        }
        env.policy(
            "created.yaml",
            &Spec {
                name: format!("iam{round}-created"),
                kind: CredentialKind::ApiKey,
                dests: vec![Dest::Aws(created.clone())],
                grace: "0s",
            }
            .yaml(),
        );
        env.policy(
            "existing.yaml",
            &Spec {
                name: format!("iam{round}-existing"),
                kind: CredentialKind::ApiKey,
                dests: vec![Dest::Aws(existing.clone())],
                grace: "0s",
            }
            .yaml()
            .replace(", create: true", ""),
        );
        let legacy = env.legacy(CredentialKind::ApiKey, &format!("iam{round}-legacy")).await;
        let value = credential_json(CredentialKind::ApiKey, &legacy.id, &legacy.secret);
        secrets.create_secret().name(&existing).secret_string(value.to_string()).send().await.unwrap();
        let keys = user_with(&iam, &format!("rotator-{round}"), actions).await;
        env.env.extend([
            ("AWS_ENDPOINT_URL".into(), endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), keys.0),
            ("AWS_SECRET_ACCESS_KEY".into(), keys.1),
        ]);
        let run = env.rotator(&["rotate", "--all"]).await;
        env.env.truncate(env.env.len() - 3);
        let now = served(existing.clone()).await;
        let rotated_existing = text(&now, "key_id") != legacy.id;
        let rotated_created = secrets.describe_secret().secret_id(&created).send().await.is_ok()
            && served(created.clone()).await.get("key_id").is_some();
        let id = text(&now, "key_id");
        // Failed or not, what consumers read works.
        assert!(
            env.accepted(CredentialKind::ApiKey, &id, &text(&now, "api_key")).await,
            "{id} is served and works (exit {}):\n{}",
            run.code,
            run.stderr
        );
        (run.code, rotated_existing && rotated_created, format!("{}\n{}", run.stdout, run.stderr))
    };

    let document: Value = {
        for (file, id) in [("created.yaml", "a"), ("existing.yaml", "b")] {
            env.policy(file, &format!("name: {id}\ncredential: {{ kind: api_key, name: {id} }}\nschedule: {{ every: 90d }}\ndestinations:\n  - aws_secrets_manager: {{ secret_id: x/{id}, create: {} }}\n", id == "a"));
        }
        let run = env.rotator(&["permissions", "--format", "aws-iam", "--aws-account-id", "123456789012"]).await;
        run.assert_code(0);
        serde_json::from_str(&run.stdout).unwrap()
    };
    let mut actions: Vec<String> = document["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()))
        .collect();
    actions.sort();
    actions.dedup();

    let (code, rotated, output) = rotate_with(&mut env, &actions).await;
    assert_eq!((code, rotated), (0, true), "the generated actions are enough:\n{output}");

    // moto checks the action of each request; `TagResource` rides on `CreateSecret` (AWS checks
    // it for the tags; moto does not), so it cannot be taken away here.
    let mut outcomes = BTreeMap::new();
    for taken in actions.iter().filter(|a| a.as_str() != "secretsmanager:TagResource") {
        let short: Vec<String> = actions.iter().filter(|a| *a != taken).cloned().collect();
        outcomes.insert(taken.clone(), rotate_with(&mut env, &short).await);
    }
    for (taken, (code, _, output)) in &outcomes {
        assert_eq!(*code, 1, "without {taken} the rotation must fail:\n{output}");
        // ... because of that action, not something else.
        // The call that needs it was refused (moto answers most denials in a shape the SDK
        // cannot read; their status says it).
        let calls: &[&str] = match taken.as_str() {
            "secretsmanager:CreateSecret" => &["create secret"],
            "secretsmanager:DescribeSecret" => &["describe secret"],
            "secretsmanager:GetSecretValue" => &["get secret value"],
            "secretsmanager:PutSecretValue" => &["put pending value", "put placeholder value"],
            "secretsmanager:UpdateSecretVersionStage" => &["move AWSCURRENT", "clear AWSPENDING"],
            other => panic!("no call known for {other}"),
        };
        let refused = calls.iter().any(|call| {
            output.contains(&format!("{call}: access denied (HTTP 403"))
                || output.contains(&format!("{call}: AccessDenied: User: arn:aws:iam::123456789012:user/rotator-"))
        });
        assert!(refused, "without {taken}, one of {calls:?} must be refused:\n{output}");
    }
    assert_eq!(outcomes.len(), 5, "{outcomes:?}");
}
