//! `rotator plan`, `rotate --dry-run`, selectors and `validate` formats: what platform teams run
//! in pull requests and before changes. Against real OpenBao and moto; nothing may change.

use rotator::policy::CredentialKind;

use crate::harness::{Dest, Env, Spec, text};

/// A Vault token that may only read `secret/<prefix>/readonly`.
async fn read_only_token(env: &Env) -> String {
    let policy = format!(
        "path \"secret/data/{p}/readonly\" {{ capabilities = [\"read\"] }}\npath \"secret/metadata/{p}/readonly\" {{ capabilities = [\"read\"] }}\n",
        p = env.prefix
    );
    let (status, _) = env
        .vault(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{}", env.prefix),
            Some(serde_json::json!({ "policy": policy })),
        )
        .await;
    assert!(status < 300, "write ACL policy: {status}");
    let (status, body) = env
        .vault(
            reqwest::Method::POST,
            "auth/token/create",
            Some(serde_json::json!({ "policies": [env.prefix], "ttl": "10m" })),
        )
        .await;
    assert_eq!(status, 200, "create token: {body}");
    text(&body["auth"], "client_token")
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_checks_destinations_and_changes_nothing() {
    let mut env = Env::start().await;
    let writable = Spec {
        name: "writable".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/writable", env.prefix)), Dest::Aws(format!("{}/writable", env.prefix))],
        grace: "1h",
    };
    env.policy(
        "writable.yaml",
        &writable.yaml().replace("name: writable\n", "name: writable\nlabels: { team: payments }\n"),
    );
    let legacy = env.legacy(CredentialKind::ApiKey, "writable-legacy").await;
    env.seed(&writable, &legacy).await;
    let before_vault = env.vault_metadata(&format!("{}/writable", env.prefix)).await.unwrap();
    let before_aws = env.aws_stages(&format!("{}/writable", env.prefix)).await;

    let run = env.rotator(&["plan", "--format", "json"]).await;
    run.assert_code(0);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let p = &plan["policies"][0];
    assert_eq!(p["current_credential"], legacy.id.as_str());
    // The adopted key is days from due (its age counts from its creation), not due now.
    assert_eq!(p["due"]["basis"], "credential");
    assert_eq!(p["due"]["overdue"], false);
    let next: chrono::DateTime<chrono::Utc> = p["due"]["next_start"].as_str().unwrap().parse().unwrap();
    assert!(next > chrono::Utc::now() + chrono::Duration::days(89), "{p}");
    assert!(p["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true), "{p}");
    assert!(p["steps"].as_array().unwrap().len() >= 5, "{p}");

    // Text form, and the same through `rotate --dry-run` with a selector.
    let text_plan = env.rotator(&["plan"]).await;
    text_plan.assert_code(0);
    assert!(text_plan.stdout.contains("why:") && text_plan.stdout.contains("every 90d"), "{}", text_plan.stdout);
    let dry = env.rotator(&["rotate", "--selector", "team=payments", "--dry-run"]).await;
    dry.assert_code(0);
    assert!(dry.stdout.contains("writable (api_key)"), "{}", dry.stdout);
    env.rotator(&["rotate", "--selector", "team=nobody", "--dry-run"]).await.assert_code(2);
    let dry =
        env.rotator(&["rotate", "writable", "--compromised", "--revoke-first", "--reason", "drill", "--dry-run"]).await;
    dry.assert_code(0);
    assert!(
        dry.stdout.contains("1.    compromise mode: revoke") && dry.stdout.contains("BEFORE minting"),
        "{}",
        dry.stdout
    );

    // A Vault path the token may only read fails the preflight (exit 1) and names what is missing.
    let readonly = Spec {
        name: "readonly".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/readonly", env.prefix))],
        grace: "0s",
    };
    env.policy("readonly.yaml", &readonly.yaml());
    env.seed(&readonly, &env.legacy(CredentialKind::ApiKey, "readonly-legacy").await).await;
    env.env.push(("VAULT_TOKEN".into(), read_only_token(&env).await));
    let run = env.rotator(&["plan", "readonly"]).await;
    run.assert_code(1);
    assert!(run.stdout.contains("FAIL vault:secret/") && run.stdout.contains("the token may not"), "{}", run.stdout);
    assert!(run.stdout.contains("update"), "names the missing capability: {}", run.stdout);

    // Nothing changed anywhere: no mint, no write, no journal.
    assert!(
        env.sim.credentials().iter().filter(|c| !c.admin).all(|c| c.name.ends_with("-legacy")),
        "{:?}",
        env.sim.credentials()
    );
    assert_eq!(env.sim.stats().creates, 2, "only the two legacy keys were ever created");
    assert_eq!(
        env.vault_metadata(&format!("{}/writable", env.prefix)).await.unwrap()["current_version"],
        before_vault["current_version"]
    );
    assert_eq!(env.aws_stages(&format!("{}/writable", env.prefix)).await, before_aws);
    assert!(!env.journal_path().exists(), "plan created no journal");
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_reports_overdue_and_the_journal_basis() {
    let env = Env::start().await;
    let spec = Spec {
        name: "old".into(),
        kind: CredentialKind::OauthClient,
        dests: vec![Dest::File("old.json".into())],
        grace: "0s",
    };
    // An adopted value whose own `rotated_at` is 200 days ago: overdue.
    env.policy("old.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::OauthClient, "old-legacy").await;
    let mut value = crate::harness::credential_json(CredentialKind::OauthClient, &legacy.id, &legacy.secret);
    value["rotated_at"] = serde_json::json!((chrono::Utc::now() - chrono::Duration::days(200)).to_rfc3339());
    std::fs::write(env.dir.join("policies/old.json"), value.to_string()).unwrap();
    let run = env.rotator(&["plan", "--format", "json"]).await;
    run.assert_code(0);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["policies"][0]["due"]["overdue"], true, "{plan}");
    assert!(plan["policies"][0]["credential_age_seconds"].as_i64().unwrap() >= 200 * 86_400);
    let text_plan = env.rotator(&["plan"]).await;
    assert!(text_plan.stdout.contains("OVERDUE") && text_plan.stdout.contains("overdue by"), "{}", text_plan.stdout);
    assert!(
        text_plan.stdout.contains("1 policy: 1 due now (1 overdue), 0 later;"),
        "a summary line: {}",
        text_plan.stdout
    );

    // After a rotation, the journal is the basis and the next one is 90 days out.
    env.rotator(&["rotate", "old"]).await.assert_code(0);
    let run = env.rotator(&["plan", "--format", "json"]).await;
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["policies"][0]["due"]["basis"], "journal", "{plan}");
    assert_eq!(plan["policies"][0]["due"]["overdue"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_speaks_json_and_github_annotations() {
    let env = Env::start().await;
    env.policy("bad.yaml", "name: bad\ncredential: { kind: api_key, name: bad }\nschedule: { every: 10m }\ndestinations:\n  - file: { path: b.json }\n");
    let run = env.rotator(&["validate", "--format", "github"]).await;
    run.assert_code(2);
    assert!(run.stdout.starts_with("::error file="), "{}", run.stdout);
    assert!(run.stdout.contains("bad.yaml,line=3,col="), "{}", run.stdout);
    assert!(run.stdout.contains("::schedule.every: `10m` is shorter than the minimum of 1h"), "{}", run.stdout);
    let run = env.rotator(&["validate", "--format", "json"]).await;
    run.assert_code(2);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["problems"][0]["line"], 3);
    assert_eq!(report["problems"][0]["field"], "schedule.every");
}

#[tokio::test(flavor = "multi_thread")]
async fn vault_approle_login_from_the_configuration_file() {
    let mut env = Env::start().await;
    let mount = format!("approle-{}", env.prefix);
    let acl = format!(
        "path \"secret/data/{p}/*\" {{ capabilities = [\"create\", \"read\", \"update\", \"delete\"] }}\n\
         path \"secret/metadata/{p}/*\" {{ capabilities = [\"create\", \"read\", \"update\", \"delete\"] }}\n\
         path \"secret/data/_rotator/staging/{p}/*\" {{ capabilities = [\"create\", \"read\", \"update\", \"delete\"] }}\n\
         path \"secret/metadata/_rotator/staging/{p}/*\" {{ capabilities = [\"create\", \"read\", \"update\", \"delete\"] }}\n",
        p = env.prefix
    );
    let put = |path: String, body: serde_json::Value| {
        let env = &env;
        async move {
            let (status, body) = env.vault(reqwest::Method::POST, &path, Some(body)).await;
            assert!(status < 300, "{path}: {status} {body}");
            body
        }
    };
    put(format!("sys/policies/acl/{}-rw", env.prefix), serde_json::json!({ "policy": acl })).await;
    put(format!("sys/auth/{mount}"), serde_json::json!({ "type": "approle" })).await;
    put(
        format!("auth/{mount}/role/rotator"),
        serde_json::json!({ "token_policies": [format!("{}-rw", env.prefix)], "token_ttl": "10m" }),
    )
    .await;
    let (_, role) = env.vault(reqwest::Method::GET, &format!("auth/{mount}/role/rotator/role-id"), None).await;
    let secret = put(format!("auth/{mount}/role/rotator/secret-id"), serde_json::json!({})).await;
    std::fs::write(env.dir.join("secret-id"), text(&secret["data"], "secret_id")).unwrap();
    std::fs::write(
        env.dir.join("rotator.toml"),
        format!(
            "[vault.approle]\nmount = \"{mount}\"\nrole_id = \"{}\"\nsecret_id_file = \"secret-id\"\n",
            text(&role["data"], "role_id")
        ),
    )
    .unwrap();
    env.env.push(("VAULT_TOKEN".into(), String::new()));
    let spec = Spec {
        name: "approle".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/approle", env.prefix))],
        grace: "0s",
    };
    env.policy("approle.yaml", &spec.yaml());
    env.rotator(&["plan"]).await.assert_code(0);
    env.rotator(&["rotate", "approle"]).await.assert_code(0);
    env.assert_converged(&[spec], &[]).await;
}

/// A Vault destination whose mount does not exist, or is KV version 1, is refused by `plan`'s
/// preflight and by `rotate` before anything is minted (it used to say "will be created" and
/// then fail after the mint).
#[tokio::test(flavor = "multi_thread")]
async fn vault_mounts_that_cannot_work_are_refused_before_a_mint() {
    let env = Env::start().await;
    let kv1 = format!("kv1-{}", env.prefix);
    let (status, body) = env
        .vault(
            reqwest::Method::POST,
            &format!("sys/mounts/{kv1}"),
            Some(serde_json::json!({ "type": "kv", "options": { "version": "1" } })),
        )
        .await;
    assert!(status < 300, "{status} {body}");
    for (mount, expected) in
        [(format!("nosuch-{}", env.prefix), "no secrets engine is mounted"), (kv1.clone(), "KV version 1")]
    {
        env.policy(
            "mounted.yaml",
            &format!(
                "name: mounted\ncredential: {{ kind: api_key, name: mounted }}\nschedule: {{ every: 30d }}\n\
                 destinations:\n  - vault: {{ mount: {mount}, path: x, create: true }}\n"
            ),
        );
        let plan = env.rotator(&["plan"]).await;
        assert_ne!(plan.code, 0, "{mount}: {}", plan.stdout);
        assert!(
            plan.stdout.contains(expected) || plan.stderr.contains(expected),
            "{mount}: {}\n{}",
            plan.stdout,
            plan.stderr
        );
        let run = env.rotator(&["rotate", "mounted"]).await;
        assert_eq!(run.code, 1, "{mount}: {}\n{}", run.stdout, run.stderr);
        assert!(run.stdout.contains(expected), "{mount}: {}", run.stdout);
        assert_eq!(env.sim.stats().creates, 0, "{mount}: nothing minted");
    }
    env.vault(reqwest::Method::DELETE, &format!("sys/mounts/{kv1}"), None).await;
}

/// A file destination that is an existing directory is refused by `plan` and by `rotate`
/// before anything is minted, saying what is wrong.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_destination_that_is_a_directory_is_refused_before_a_mint() {
    let env = Env::start().await;
    std::fs::create_dir_all(env.dir.join("policies/out/adir.json")).unwrap();
    env.policy(
        "adir.yaml",
        "name: adir\ncredential: { kind: api_key, name: adir }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: out/adir.json }\n",
    );
    let plan = env.rotator(&["plan"]).await;
    assert_ne!(plan.code, 0, "{}", plan.stdout);
    assert!(plan.stdout.contains("is a directory, not a file"), "{}", plan.stdout);
    let run = env.rotator(&["rotate", "adir"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("is a directory, not a file"), "{}", run.stdout);
    assert_eq!(env.sim.stats().creates, 0, "nothing minted");
}

/// Toktra or Vault unreachable: `plan` names the address and the cause (refused), and does not
/// repeat the call in the message.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_services_are_named_with_their_cause() {
    let mut env = Env::start().await;
    env.policy(
        "far.yaml",
        "name: far\ncredential: { kind: api_key, name: far }\nschedule: { every: 30d }\ndestinations:\n  - vault: { mount: secret, path: far, create: true }\n",
    );
    // A port nothing listens on (bound, then closed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    env.env.push(("TOKTRA_API_URL".into(), format!("http://127.0.0.1:{closed}/v1")));
    env.env.push(("VAULT_ADDR".into(), format!("http://127.0.0.1:{closed}")));
    let plan = env.rotator(&["plan"]).await;
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    assert!(plan.stdout.contains(&format!("could not reach toktra at 127.0.0.1:{closed}")), "{}", plan.stdout);
    assert!(plan.stdout.contains(&format!("at http://127.0.0.1:{closed}")), "{}", plan.stdout);
    assert!(plan.stdout.contains("refused"), "the cause: {}", plan.stdout);
    assert!(!plan.stdout.contains("list oauth_clients: list oauth_clients"), "{}", plan.stdout);
}
