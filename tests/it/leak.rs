//! Secrets never leak: a rotation with debug logging into every destination kind, then every
//! output stream and the journal's files are scanned for the secret values involved.

use rotator::policy::CredentialKind;

use crate::harness::{Env, credential_json, text};

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_output_logs_or_journal() {
    let mut env = Env::start().await;
    env.env.push(("RUST_LOG".into(), "debug".into()));
    let legacy = env.legacy(CredentialKind::OauthClient, "leak-legacy").await;
    let path = format!("{}/leak", env.prefix);
    env.vault_put(&path, credential_json(CredentialKind::OauthClient, &legacy.id, &legacy.secret)).await;
    env.policy(
        "leak.yaml",
        "name: leak\ncredential: { kind: oauth_client, name: leak }\nschedule: { every: 90d }\ndestinations:\n\
         \x20 - vault: { mount: secret, path: '{prefix}/leak' }\n\
         \x20 - aws_secrets_manager: { secret_id: '{prefix}/leak', create: true }\n\
         \x20 - file: { path: out/leak.json }\nrevoke: { grace: 0s }\n\
         ---\nname: leak-key\ncredential: { kind: api_key, name: leak-key }\nschedule: { every: 90d }\ndestinations:\n\
         \x20 - file: { path: out/leak-key.json }\nrevoke: { grace: 0s }\n",
    );
    let mut runs = Vec::new();
    for format in ["text", "json"] {
        let run = env.rotator(&["rotate", "--all", "--verbose", "--log-format", format, "--format", format]).await;
        run.assert_code(0);
        runs.push(run);
    }
    // A failing run too: its errors must not carry secrets either.
    env.sim.set_faults(rotator::sim::Faults { error_rate: 1.0, ..Default::default() });
    let failing = env.rotator(&["rotate", "leak", "--verbose"]).await;
    failing.assert_code(1);
    env.sim.set_faults(Default::default());
    runs.push(failing);
    // Compromise mode and every read-only command, in both formats.
    let compromise = env.rotator(&["rotate", "leak-key", "--compromised", "--reason", "leak test", "--verbose"]).await;
    compromise.assert_code(0);
    runs.push(compromise);
    for format in ["text", "json"] {
        for args in
            [vec!["status"], vec!["history", "--steps", "--limit", "50"], vec!["reconcile", "--fix"], vec!["validate"]]
        {
            let mut args = args.clone();
            args.extend(["--verbose", "--format", format]);
            let run = env.rotator(&args).await;
            assert!(run.code == 0 || args[0] == "reconcile", "{args:?}: {}{}", run.stdout, run.stderr);
            runs.push(run);
        }
    }

    let mut secrets = vec![legacy.secret.expose().to_string(), env.admin_key.clone(), env.vault_token.clone()];
    let vault = env.vault_data(&path).await.unwrap();
    secrets.push(text(&vault, "client_secret"));
    let previous = env.aws_value(&path, "AWSPREVIOUS").await.unwrap();
    secrets.push(text(&previous, "client_secret"));
    // Everything ever minted: the simulator's secrets cannot be listed, so collect what the
    // destinations hold now and held before (AWSPREVIOUS, Vault versions, *.previous).
    let meta = env.vault_metadata(&path).await.unwrap();
    for version in 1..=meta["current_version"].as_u64().unwrap() {
        if let Some(v) = env.vault_version(&path, version).await {
            secrets.push(text(&v, "client_secret"));
        }
    }
    let key_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.dir.join("policies/out/leak-key.json")).unwrap()).unwrap();
    secrets.push(text(&key_file, "api_key"));
    let key_previous: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.dir.join("policies/out/leak-key.json.previous")).unwrap())
            .unwrap();
    secrets.push(text(&key_previous, "api_key"));
    secrets.sort();
    secrets.dedup();
    assert!(secrets.len() >= 6, "several real secrets to look for: {}", secrets.len());
    assert!(secrets.iter().all(|s| s.len() >= 16), "real secrets to look for");

    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    // The rotation runs (the first four) logged at debug level, so their logs were worth scanning.
    for run in &runs[..4] {
        assert!(
            run.stderr.contains("DEBUG") || run.stderr.contains("\"level\":\"DEBUG\""),
            "debug logging was on:\n{}",
            run.stderr
        );
    }
    for (i, run) in runs.iter().enumerate() {
        haystacks.push((format!("run {i} stdout"), run.stdout.clone().into_bytes()));
        haystacks.push((format!("run {i} stderr"), run.stderr.clone().into_bytes()));
    }
    haystacks.extend(env.journal_files());
    for (name, hay) in &haystacks {
        for secret in &secrets {
            let found = hay.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "a secret value appears in {name}");
        }
    }
}
