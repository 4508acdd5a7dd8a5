//! End-to-end rotations into Vault, AWS Secrets Manager and both.

use rotator::policy::CredentialKind;

use crate::harness::{Dest, Env, credential_json, text};

/// No active credential at the simulator that no destination holds.
fn assert_only_active(env: &Env, ids: &[&str]) {
    let mut active: Vec<String> = env.active().into_iter().map(|c| c.id).collect();
    active.sort();
    let mut expected: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(active, expected, "active credentials at the simulator");
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth_client_into_vault_adopts_and_revokes_the_old_client() {
    let env = Env::start().await;
    let legacy = env.legacy(CredentialKind::OauthClient, "ci-legacy").await;
    env.vault_put(
        &format!("{}/ci", env.prefix),
        credential_json(CredentialKind::OauthClient, &legacy.id, &legacy.secret),
    )
    .await;
    env.policy(
        "ci.yaml",
        "name: ci\ncredential: { kind: oauth_client, name: ci, scopes: [usage:read] }\nschedule: { every: 90d }\n\
         destinations:\n  - vault: { mount: secret, path: '{prefix}/ci' }\nrevoke: { grace: 0s }\n",
    );

    let run = env.rotator(&["rotate", "ci", "--reason", "test"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("completed"), "{}", run.stdout);

    let path = format!("{}/ci", env.prefix);
    let current = env.vault_data(&path).await.expect("vault holds the credential");
    let new_id = text(&current, "client_id");
    assert_ne!(new_id, legacy.id);
    assert!(
        env.accepted(CredentialKind::OauthClient, &new_id, &text(&current, "client_secret")).await,
        "the new client authenticates"
    );
    assert!(
        !env.accepted(CredentialKind::OauthClient, &legacy.id, legacy.secret.expose()).await,
        "the old client gets 401"
    );
    assert!(text(&current, "token_url").ends_with("/v1/oauth/token"));
    assert!(!text(&current, "rotation_id").is_empty());
    assert_only_active(&env, &[&new_id]);
    // The minted client is named after the rotation.
    let minted = env.sim.credentials().into_iter().find(|c| c.id == new_id).unwrap();
    assert_eq!(minted.name, format!("ci-{}", text(&current, "rotation_id")));
    assert_eq!(minted.scopes, vec!["usage:read".to_string()]);
    // Version 1 (the legacy value) is kept; bookkeeping in custom_metadata; staging cleared.
    let meta = env.vault_metadata(&path).await.unwrap();
    assert_eq!(meta["current_version"], 2);
    assert_eq!(meta["custom_metadata"]["rotator_credential_id"], new_id.as_str());
    assert_eq!(meta["custom_metadata"]["rotator_previous_credential_id"], legacy.id.as_str());
    assert_eq!(text(&env.vault_version(&path, 1).await.unwrap(), "client_id"), legacy.id);
    assert!(env.vault_metadata(&format!("_rotator/staging/{path}")).await.is_none(), "staging is cleared");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_into_aws_keeps_the_old_value_as_awsprevious() {
    let env = Env::start().await;
    let legacy = env.legacy(CredentialKind::ApiKey, "billing-legacy").await;
    let secret_id = format!("{}/billing", env.prefix);
    env.aws()
        .create_secret()
        .name(&secret_id)
        .secret_string(credential_json(CredentialKind::ApiKey, &legacy.id, &legacy.secret).to_string())
        .send()
        .await
        .unwrap();
    env.policy(
        "billing.yaml",
        "name: billing\ncredential: { kind: api_key, name: billing }\nschedule: { every: 30d }\n\
         destinations:\n  - aws_secrets_manager: { secret_id: '{prefix}/billing' }\nrevoke: { grace: 0s }\n",
    );

    env.rotator(&["rotate", "billing"]).await.assert_code(0);

    let current = env.aws_value(&secret_id, "AWSCURRENT").await.expect("AWSCURRENT");
    let previous = env.aws_value(&secret_id, "AWSPREVIOUS").await.expect("AWSPREVIOUS");
    let new_id = text(&current, "key_id");
    assert_ne!(new_id, legacy.id);
    assert_eq!(text(&previous, "key_id"), legacy.id);
    assert_eq!(text(&previous, "api_key"), legacy.secret.expose());
    assert!(env.accepted(CredentialKind::ApiKey, &new_id, &text(&current, "api_key")).await);
    assert!(!env.accepted(CredentialKind::ApiKey, &legacy.id, legacy.secret.expose()).await, "the old key gets 401");
    // The new version's ID is the rotation ID, and AWSPENDING is gone.
    let stages = env.aws_stages(&secret_id).await;
    assert_eq!(stages.get(&text(&current, "rotation_id")).unwrap(), &vec!["AWSCURRENT".to_string()]);
    assert!(!stages.values().flatten().any(|s| s == "AWSPENDING"), "{stages:?}");
    assert_only_active(&env, &[&new_id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth_client_into_both_creates_the_secrets_then_rotates_again() {
    let env = Env::start().await;
    env.policy(
        "both.yaml",
        "name: both\ncredential: { kind: oauth_client, name: both }\nschedule: { every: 90d }\ndestinations:\n\
         \x20 - aws_secrets_manager: { secret_id: '{prefix}/both', create: true }\n\
         \x20 - vault: { mount: secret, path: '{prefix}/both', create: true }\nrevoke: { grace: 0s }\n",
    );
    let secret_id = format!("{}/both", env.prefix);

    env.rotator(&["rotate", "both"]).await.assert_code(0);
    let first = env.aws_value(&secret_id, "AWSCURRENT").await.expect("created and promoted in AWS");
    assert_eq!(env.vault_data(&secret_id).await.unwrap(), first, "both destinations hold the same value");
    let first_id = text(&first, "client_id");
    assert!(env.accepted(CredentialKind::OauthClient, &first_id, &text(&first, "client_secret")).await);
    assert_only_active(&env, &[&first_id]);

    env.rotator(&["rotate", "both"]).await.assert_code(0);
    let second = env.aws_value(&secret_id, "AWSCURRENT").await.unwrap();
    let second_id = text(&second, "client_id");
    assert_ne!(first_id, second_id);
    assert_eq!(env.vault_data(&secret_id).await.unwrap(), second);
    assert_eq!(env.aws_value(&secret_id, "AWSPREVIOUS").await.unwrap(), first);
    assert!(env.accepted(CredentialKind::OauthClient, &second_id, &text(&second, "client_secret")).await);
    assert!(!env.accepted(CredentialKind::OauthClient, &first_id, &text(&first, "client_secret")).await);
    assert_only_active(&env, &[&second_id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_destination_without_create_fails_before_minting() {
    let env = Env::start().await;
    env.policy(
        "nocreate.yaml",
        "name: nocreate\ncredential: { kind: api_key, name: nocreate }\nschedule: { every: 30d }\n\
         destinations:\n  - vault: { mount: secret, path: '{prefix}/missing' }\n",
    );
    let run = env.rotator(&["rotate", "nocreate"]).await;
    run.assert_code(1);
    assert!(run.stdout.contains("does not exist and the policy does not allow `create`"), "{}", run.stdout);
    assert!(
        env.sim.credentials().iter().all(|c| c.admin),
        "nothing was minted, or it was revoked: {:?}",
        env.sim.credentials()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_mint_leaves_the_old_credential_current() {
    let env = Env::start().await;
    let legacy = env.legacy(CredentialKind::ApiKey, "legacy").await;
    let path = format!("{}/reject", env.prefix);
    env.vault_put(&path, credential_json(CredentialKind::ApiKey, &legacy.id, &legacy.secret)).await;
    env.policy(
        "reject.yaml",
        "name: reject\ncredential: { kind: api_key, name: reject }\nschedule: { every: 30d }\n\
         destinations:\n  - vault: { mount: secret, path: '{prefix}/reject' }\n",
    );
    // Every Toktra call fails with 500: the rotation must fail cleanly and change nothing.
    env.sim.set_faults(rotator::sim::Faults { error_rate: 1.0, ..Default::default() });
    let run = env.rotator(&["rotate", "reject"]).await;
    run.assert_code(1);
    env.sim.set_faults(Default::default());
    let current = env.vault_data(&path).await.unwrap();
    assert_eq!(text(&current, "key_id"), legacy.id, "the old credential is still current");
    assert!(env.accepted(CredentialKind::ApiKey, &legacy.id, legacy.secret.expose()).await);
    assert_eq!(env.active().len(), 1, "only the legacy key is active: {:?}", env.active());
}

#[tokio::test(flavor = "multi_thread")]
async fn grace_keeps_the_old_credential_until_a_later_run_revokes_it() {
    let env = Env::start().await;
    let legacy = env.legacy(CredentialKind::ApiKey, "graceful-legacy").await;
    let path = format!("{}/graceful", env.prefix);
    env.vault_put(&path, credential_json(CredentialKind::ApiKey, &legacy.id, &legacy.secret)).await;
    env.policy(
        "graceful.yaml",
        "name: graceful\ncredential: { kind: api_key, name: graceful }\nschedule: { every: 1h }\n\
         destinations:\n  - vault: { mount: secret, path: '{prefix}/graceful' }\nrevoke: { grace: 3s }\n\
         ---\nname: other\ncredential: { kind: api_key, name: other }\nschedule: { every: 1h }\n\
         destinations:\n  - file: { path: other.json }\nrevoke: { grace: 0s }\n",
    );
    let run = env.rotator(&["rotate", "graceful"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("awaiting revocation"), "{}", run.stdout);
    let new_id = text(&env.vault_data(&path).await.unwrap(), "key_id");
    assert!(
        env.accepted(CredentialKind::ApiKey, &legacy.id, legacy.secret.expose()).await,
        "the old key works during the grace"
    );
    assert_only_active(&env, &[&legacy.id, &new_id]);

    // Any later run carries out the due revocation, here one that rotates another policy, once
    // the grace the journal recorded is over (by the rotator's clock, the real one).
    crate::harness::wait_for_clock(env.recorded("graceful", "revoke_after").await).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        env.rotator(&["rotate", "other"]).await.assert_code(0);
        if !env.accepted(CredentialKind::ApiKey, &legacy.id, legacy.secret.expose()).await {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the old key was never revoked");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let other = env.active().into_iter().find(|c| c.name.starts_with("other-")).expect("other was rotated").id;
    assert_only_active(&env, &[&new_id, &other]);
}

/// `rotate NAME` means now, but says when the schedule would not have started it; `rotate
/// --due` rotates exactly what is due (a policy without a credential), for cron-driven jobs.
#[tokio::test(flavor = "multi_thread")]
async fn manual_runs_say_when_they_ignore_the_schedule_and_due_rotates_only_what_is_due() {
    use std::path::PathBuf;

    use crate::harness::{Dest, Spec};

    let env = Env::start().await;
    let adopted = Spec {
        name: "adopted".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File(PathBuf::from("out/adopted.json"))],
        grace: "0s",
    };
    let old = env.adopt(std::slice::from_ref(&adopted)).await;
    let empty =
        Spec { name: "empty".into(), dests: vec![Dest::File(PathBuf::from("out/empty.json"))], ..adopted.clone() };
    env.policy("empty.yaml", &empty.yaml());

    let run = env.rotator(&["rotate", "--due"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(env.served(&empty.dests[0]).await.is_some(), "the policy without a credential was due");
    let served = text(&env.served(&adopted.dests[0]).await.unwrap(), "key_id");
    assert_eq!(served, old[0].1, "the adopted key is 90 days from due and stays");
    let run = env.rotator(&["rotate", "--due"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("nothing is due now"), "{}", run.stderr);

    let run = env.rotator(&["rotate", "adopted"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("note: `adopted` was not due until"), "{}", run.stderr);
    env.assert_converged(&[adopted, empty], &old).await;
}

/// Issue 10, item 4: whether a policy is due is checked again once its lease is taken. A
/// scheduled job (`rotate --due`) finds the policy due and is held before taking the lease;
/// meanwhile a second job rotates it; when the first goes on, it sees the journal moved and
/// leaves the policy alone instead of rotating it twice in a row.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_rotated_by_another_job_since_it_was_found_due_is_not_rotated_again() {
    let mut env = Env::start().await;
    env.policy(
        "twice.yaml",
        "name: twice\ncredential: { kind: api_key, name: twice }\nschedule: { every: 30d }\n\
         destinations:\n  - vault: { mount: secret, path: '{prefix}/twice', create: true }\nrevoke: { grace: 0s }\n",
    );
    let go = env.dir.join("go");
    env.env.push(("ROTATOR_PAUSE_AT".into(), "before-lease".into()));
    env.env.push(("ROTATOR_PAUSE_FILE".into(), go.display().to_string()));
    let held = env.command(&["rotate", "--due"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let reached = env.dir.join("go.reached");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !reached.exists() {
        assert!(std::time::Instant::now() < deadline, "the first job never found the policy due");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    env.env.clear();
    env.rotator(&["rotate", "--due"]).await.assert_code(0);
    let rotated = env.served(&Dest::Vault(format!("{}/twice", env.prefix))).await.expect("rotated by the second job");

    std::fs::write(&go, "").unwrap();
    let first = held.wait_with_output().await.unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", String::from_utf8_lossy(&first.stdout));
    let history = env.rotator(&["history", "twice", "--format", "json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "rotated once: {}", history.stdout);
    let served = env.served(&Dest::Vault(format!("{}/twice", env.prefix))).await.unwrap();
    assert_eq!(text(&served, "key_id"), text(&rotated, "key_id"));
}

/// Issue 11, item 3: a long `rotate --all` off a terminal logs progress lines in the log format
/// (done, failed, in flight, total, rate, time left) on stderr; stdout keeps only the summary.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_run_off_a_terminal_logs_its_progress() {
    let mut env = Env::with(rotator::sim::Config {
        faults: rotator::sim::Faults { latency_ms: 300, ..Default::default() },
        ..Default::default()
    })
    .await;
    for i in 0..4 {
        env.policy(
            &format!("slow-{i}.yaml"),
            &format!(
                "name: slow-{i}\ncredential: {{ kind: api_key, name: slow-{i} }}\nschedule: {{ every: 30d }}\n\
                 destinations:\n  - file: {{ path: slow-{i}.json }}\nrevoke: {{ grace: 0s }}\n"
            ),
        );
    }
    env.env.push(("ROTATOR_PROGRESS_INTERVAL".into(), "1s".into()));
    env.env.push(("ROTATOR_CONCURRENCY".into(), "1".into()));
    let run = env.rotator(&["rotate", "--all", "--log-format", "json"]).await;
    run.assert_code(0);
    let lines: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "progress")
        .collect();
    assert!(!lines.is_empty(), "no progress line:\n{}", run.stderr);
    for line in &lines {
        assert_eq!(line["total"], 4, "{line}");
        assert!(line["done"].as_u64().unwrap() <= 4 && line["in_flight"].as_u64().unwrap() <= 1, "{line}");
        assert!(line.get("failed").is_some() && line.get("per_minute").is_some(), "{line}");
    }
    assert!(!run.stdout.contains("progress"), "{}", run.stdout);
}
