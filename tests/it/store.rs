//! Destinations at their edges, against the real servers: AWS secrets without a version, errors
//! that must not carry what a server answered, file destinations among symlinks, and reading the
//! previous credential back through the library's `Store` API.

use rotator::policy::{self, CredentialKind};
use rotator::secret::Secret;
use rotator::store::{Clients, Handle, Record, Store};
use serde_json::json;

use crate::harness::{Dest, Env, Spec, text};

/// Destination clients for this test's moto and OpenBao, built as `rotator` builds them.
async fn clients(env: &Env) -> Clients {
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&env.aws_endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "testing", "testing", None, None, "static",
        ))
        .load()
        .await;
    let vault = rotator::store::vault::Connection::new(
        &env.vault_addr,
        &Secret::new(&env.vault_token),
        None,
        std::time::Duration::from_secs(15),
    )
    .unwrap();
    Clients { aws: Some(aws), vault: Some(vault) }
}

fn aws_spec(secret_id: &str, create: bool) -> policy::Destination {
    policy::Destination::AwsSecretsManager(policy::AwsDestination {
        secret_id: secret_id.into(),
        region: None,
        create,
        kms_key_id: None,
    })
}

fn api_key(id: &str, secret: &str, rotation_id: &str) -> Record {
    Record {
        kind: CredentialKind::ApiKey,
        id: id.into(),
        secret: Secret::new(secret),
        token_url: None,
        rotated_at: None,
        rotation_id: Some(rotation_id.into()),
    }
}

// ---- AWS: a secret that exists without a version ----

#[tokio::test(flavor = "multi_thread")]
async fn aws_secret_without_a_version_is_not_made_current_by_staging() {
    let env = Env::start().await;
    let secret_id = format!("{}/empty", env.prefix);
    // As Terraform or CloudFormation create it: a secret with no value, so no version at all.
    env.aws().create_secret().name(&secret_id).send().await.unwrap();
    assert!(env.aws_stages(&secret_id).await.is_empty());
    env.policy(
        "empty.yaml",
        "name: empty\ncredential: { kind: api_key, name: empty }\nschedule: { every: 90d }\ndestinations:\n\
         \x20 - aws_secrets_manager: { secret_id: '{prefix}/empty', create: false }\nrevoke: { grace: 0s }\n",
    );

    let mut crashing = Env { env: vec![("ROTATOR_CRASH_AT".into(), "staged".into())], ..env };
    let run = crashing.rotator(&["rotate", "empty"]).await;
    assert_eq!(run.code, -1, "the process died at the crash point\n{}", run.stderr);
    assert!(run.stderr.contains("crash point `staged` reached"), "{}", run.stderr);
    crashing.env.clear();
    let env = crashing;

    // The unverified credential waits in AWSPENDING; consumers reading AWSCURRENT get the empty
    // placeholder. (moto 5.2.5, like AWS, labels a secret's first version AWSCURRENT whatever
    // PutSecretValue asks, so this holds on both.)
    let pending = env.aws_value(&secret_id, "AWSPENDING").await.expect("the new credential is staged");
    let current = env.aws_value(&secret_id, "AWSCURRENT").await;
    // Compared without printing: the values hold secrets.
    assert!(current == Some(json!({})), "AWSCURRENT is the placeholder, not the staged {}", text(&pending, "key_id"));
    let stages = env.aws_stages(&secret_id).await;
    assert_eq!(stages.len(), 2, "one placeholder and one staged version: {stages:?}");

    env.rotator(&["rotate", "empty"]).await.assert_code(0);
    let spec =
        Spec { name: "empty".into(), kind: CredentialKind::ApiKey, dests: vec![Dest::Aws(secret_id)], grace: "0s" };
    env.assert_converged(&[spec], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_staging_into_a_secret_without_a_version_is_idempotent() {
    let env = Env::start().await;
    let secret_id = format!("{}/empty-lib", env.prefix);
    env.aws().create_secret().name(&secret_id).send().await.unwrap();
    let clients = clients(&env).await;
    let dest = Handle::new(&aws_spec(&secret_id, false), CredentialKind::ApiKey, &clients).unwrap();
    let rotation_id = uuid::Uuid::now_v7().to_string();
    let record = api_key("key_staged", "tk_live_staged_value_0123456789", &rotation_id);

    dest.stage(&rotation_id, &record).await.unwrap();
    assert!(dest.current().await.unwrap().is_none(), "consumers still read the empty placeholder");
    // A retry (a lost answer, a resume after a crash) adds nothing.
    dest.stage(&rotation_id, &record).await.unwrap();
    let stages = env.aws_stages(&secret_id).await;
    assert_eq!(stages.len(), 2, "one placeholder and one staged version: {stages:?}");
    assert_eq!(stages.get(&rotation_id).unwrap(), &vec!["AWSPENDING".to_string()]);
    assert_eq!(dest.staged(&rotation_id).await.unwrap(), Some(record.clone()));

    dest.promote(&rotation_id).await.unwrap();
    assert_eq!(dest.current().await.unwrap(), Some(record));
}

// ---- AWS: errors never carry what the server answered ----

/// Which Secrets Manager calls the fake endpoint answers with a broken body.
#[derive(Debug, Clone, Copy)]
enum Broken {
    /// Every call.
    All,
    /// `GetSecretValue` (the secret is described fine).
    Read,
    /// `PutSecretValue` (described and read fine, holding the empty placeholder).
    Write,
}

/// A Secrets Manager endpoint on loopback that answers `200` with a truncated JSON body holding
/// `fake_secret` where the `broken` calls are concerned, and well-formed answers elsewhere.
async fn broken_secrets_manager(broken: Broken, fake_secret: String) -> String {
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let fake_secret = fake_secret.clone();
        async move {
            let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let operation = target.rsplit('.').next().unwrap_or_default().to_string();
            let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:leaky-AbCdEf";
            let is_broken = match broken {
                Broken::All => true,
                Broken::Read => operation == "GetSecretValue",
                Broken::Write => operation == "PutSecretValue",
            };
            let body = if is_broken {
                // A value cut off mid-string: the SDK cannot parse it.
                format!(r#"{{"ARN":"{arn}","Name":"leaky","SecretString":"{{\"key_id\":\"key_x\",\"api_key\":\"{fake_secret}"#)
            } else {
                match operation.as_str() {
                    "DescribeSecret" => {
                        json!({"ARN": arn, "Name": "leaky", "VersionIdsToStages": {"v1": ["AWSCURRENT"]}}).to_string()
                    }
                    "GetSecretValue" => json!({"ARN": arn, "Name": "leaky", "VersionId": "v1", "SecretString": "{}",
                        "VersionStages": ["AWSCURRENT"], "CreatedDate": 1.7e9})
                    .to_string(),
                    _ => json!({"ARN": arn, "Name": "leaky"}).to_string(),
                }
            };
            ([(axum::http::header::CONTENT_TYPE, "application/x-amz-json-1.1")], body)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_errors_do_not_carry_the_response_body() {
    let mut env = Env::start().await;
    env.env.push(("RUST_LOG".into(), "debug".into()));
    env.policy(
        "leaky.yaml",
        "name: leaky\ncredential: { kind: api_key, name: leaky }\nschedule: { every: 90d }\ndestinations:\n\
         \x20 - aws_secrets_manager: { secret_id: leaky }\nrevoke: { grace: 0s }\n",
    );
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    let mut fakes = Vec::new();
    for broken in [Broken::All, Broken::Read, Broken::Write] {
        let fake = format!("LEAKME-{}", uuid::Uuid::new_v4().simple());
        let endpoint = broken_secrets_manager(broken, fake.clone()).await;
        // Pushed last, so it overrides the harness's moto endpoint.
        env.env.push(("AWS_ENDPOINT_URL".into(), endpoint));
        for args in [&["rotate", "leaky", "--verbose"][..], &["plan", "--verbose"], &["status", "--verbose"]] {
            let run = env.rotator(args).await;
            // The failing runs must say why, naming the operation, so the test looks at real
            // errors. (`plan` writes nothing, so a broken write does not fail it.)
            let operation = match (broken, args[0]) {
                (_, "status") | (Broken::Write, "plan") => None,
                (Broken::All, _) => Some("describe secret"),
                (Broken::Read, _) => Some("get secret value"),
                (Broken::Write, _) => Some("put pending value"),
            };
            if let Some(operation) = operation {
                let out = format!("{}{}", run.stdout, run.stderr);
                assert!(run.code != 0, "{broken:?} {args:?} fails\n{out}");
                assert!(out.contains(operation), "{broken:?} {args:?} names `{operation}`:\n{out}");
            }
            haystacks.push((format!("{broken:?} {args:?} stdout"), run.stdout.into_bytes()));
            haystacks.push((format!("{broken:?} {args:?} stderr"), run.stderr.into_bytes()));
        }
        env.env.pop();
        fakes.push(fake);
    }
    haystacks.extend(env.journal_files());
    for (name, hay) in &haystacks {
        for fake in &fakes {
            // The fake secret is no real credential, so the context may be shown.
            if let Some(at) = hay.windows(fake.len()).position(|w| w == fake.as_bytes()) {
                let context =
                    String::from_utf8_lossy(&hay[at.saturating_sub(300)..(at + fake.len() + 50).min(hay.len())]);
                panic!("the fake secret {fake} appears in {name}: …{context}…");
            }
        }
    }
}

// ---- file: symbolic links are refused, temporary files are unguessable ----

/// A file the test owns that a symbolic link points at; rotator must neither write nor chmod it.
fn victim(env: &Env, name: &str) -> std::path::PathBuf {
    let path = env.dir.join(name);
    std::fs::write(&path, "{}\n").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    path
}

fn assert_untouched(victim: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::read_to_string(victim).unwrap(), "{}\n", "{} was not written", victim.display());
    let mode = std::fs::metadata(victim).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "{} was not chmod-ed", victim.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn file_destination_refuses_symbolic_links_at_its_paths() {
    let env = Env::start().await;
    std::fs::create_dir_all(env.dir.join("policies/out")).unwrap();
    for (name, suffix) in [("linked-current", ""), ("linked-pending", ".pending"), ("linked-previous", ".previous")] {
        env.policy(
            &format!("{name}.yaml"),
            &format!(
                "name: {name}\ncredential: {{ kind: api_key, name: {name} }}\nschedule: {{ every: 90d }}\n\
                 destinations:\n  - file: {{ path: out/{name}.json }}\nrevoke: {{ grace: 0s }}\n"
            ),
        );
        let target = victim(&env, &format!("{name}-victim.json"));
        let link = env.dir.join(format!("policies/out/{name}.json{suffix}"));
        std::os::unix::fs::symlink(&target, &link).unwrap();

        let run = env.rotator(&["rotate", name]).await;
        let out = format!("{}{}", run.stdout, run.stderr);
        assert_eq!(run.code, 1, "{name}: the rotation is refused\n{out}");
        assert!(
            out.contains(&format!("{}", link.display())) && out.contains("symbolic link"),
            "{name}: the error names the link\n{out}"
        );
        assert_untouched(&target);
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "{name}: the link is left alone");
        assert!(env.active().is_empty(), "{name}: refused before minting: {:?}", env.active());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn file_destination_temporary_files_do_not_follow_a_planted_link() {
    let env = Env::start().await;
    let dir = env.dir.join("out");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cred.json");
    let target = victim(&env, "victim.json");
    // The temporary file's name used to be predictable: `<name>.tmp<pid>` beside the file written.
    std::os::unix::fs::symlink(&target, dir.join(format!("cred.json.tmp{}", std::process::id()))).unwrap();
    std::os::unix::fs::symlink(&target, dir.join(format!("cred.tmp{}", std::process::id()))).unwrap();
    let spec = policy::Destination::File(policy::FileDestination { path: path.clone() });
    let dest = Handle::new(&spec, CredentialKind::ApiKey, &Clients { aws: None, vault: None }).unwrap();

    for (n, key_id) in ["key_first", "key_second"].iter().enumerate() {
        let rotation_id = uuid::Uuid::now_v7().to_string();
        let record = api_key(key_id, &format!("tk_live_file_value_{n}_0123456789"), &rotation_id);
        dest.stage(&rotation_id, &record).await.unwrap();
        assert_untouched(&target);
        dest.promote(&rotation_id).await.unwrap();
        assert_untouched(&target);
        assert_eq!(dest.current().await.unwrap(), Some(record));
    }
    use std::os::unix::fs::PermissionsExt;
    for file in [path.clone(), dir.join("cred.json.previous")] {
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert!(meta.file_type().is_file(), "{} is a regular file", file.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{} is 0600", file.display());
    }
}

// ---- reading the previous credential back ----

/// `previous()` of every destination kind after one, two and three promotions, through the
/// library's `Handle`, compared with what the servers hold.
#[tokio::test(flavor = "multi_thread")]
async fn previous_reads_the_value_served_before_the_current_one() {
    let env = Env::start().await;
    let name = format!("{}/prev", env.prefix);
    env.policy(
        "prev.yaml",
        "name: prev\ncredential: { kind: oauth_client, name: prev }\nschedule: { every: 90d }\ndestinations:\n\
         \x20 - aws_secrets_manager: { secret_id: '{prefix}/prev', create: true }\n\
         \x20 - vault: { mount: secret, path: '{prefix}/prev', create: true }\n\
         \x20 - file: { path: out/prev.json }\nrevoke: { grace: 0s }\n",
    );
    let file = env.dir.join("policies/out/prev.json");
    let specs = [
        aws_spec(&name, true),
        policy::Destination::Vault(policy::VaultDestination {
            mount: "secret".into(),
            path: name.clone(),
            staging_path: None,
            create: true,
        }),
        policy::Destination::File(policy::FileDestination { path: file.clone() }),
    ];
    let clients = clients(&env).await;
    let dests: Vec<Handle> =
        specs.iter().map(|s| Handle::new(s, CredentialKind::OauthClient, &clients).unwrap()).collect();
    // What a destination holds, as (client_id, client_secret, rotation_id), never printed.
    let identity = |r: &Record| (r.id.clone(), r.secret.expose().to_string(), r.rotation_id.clone());
    let served = |v: &serde_json::Value| (text(v, "client_id"), text(v, "client_secret"), Some(text(v, "rotation_id")));

    env.rotator(&["rotate", "prev"]).await.assert_code(0);
    let first = served(&env.served(&Dest::Vault(name.clone())).await.unwrap());
    for dest in &dests {
        // AWS: AWSPREVIOUS is the `{}` placeholder the secret was created with, read as empty.
        assert!(dest.previous().await.unwrap().is_none(), "{dest:?}: nothing before the first rotation");
    }

    env.rotator(&["rotate", "prev"]).await.assert_code(0);
    let second = served(&env.served(&Dest::Vault(name.clone())).await.unwrap());
    assert_ne!(first.0, second.0);
    for dest in &dests {
        let previous = dest.previous().await.unwrap().unwrap_or_else(|| panic!("{dest:?}: a previous value"));
        assert!(identity(&previous) == first, "{dest:?}: the previous value is the first credential");
        assert!(identity(&dest.current().await.unwrap().unwrap()) == second, "{dest:?}: current is the second");
    }
    // The harness agrees on where the servers keep it.
    assert_eq!(served(&env.aws_value(&name, "AWSPREVIOUS").await.unwrap()), first);
    assert_eq!(served(&env.vault_version(&name, 1).await.unwrap()), first);
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file.with_extension("json.previous")).unwrap()).unwrap();
    assert_eq!(served(&on_disk), first);

    // Vault: deleted and destroyed versions are skipped; none left below current is `None`.
    env.rotator(&["rotate", "prev"]).await.assert_code(0);
    let vault = &dests[1];
    let (status, _) =
        env.vault(reqwest::Method::POST, &format!("secret/delete/{name}"), Some(json!({ "versions": [2] }))).await;
    assert_eq!(status, 204);
    let previous = vault.previous().await.unwrap().expect("version 1 is the latest readable one below current");
    assert!(identity(&previous) == first, "soft-deleted version 2 is skipped");
    let (status, _) =
        env.vault(reqwest::Method::PUT, &format!("secret/destroy/{name}"), Some(json!({ "versions": [1] }))).await;
    assert_eq!(status, 204);
    assert!(vault.previous().await.unwrap().is_none(), "no readable version below current");
}
