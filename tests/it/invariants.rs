//! The invariants where a call half-succeeds or the world changes mid-rotation: edits to a
//! policy during its grace, requests replayed by ID, failures after promotion, promotions that
//! took in part, revocations of credentials someone still serves.

use std::path::PathBuf;

use rotator::policy::CredentialKind;

use crate::harness::{Dest, Env, Spec, text};

/// A rotation left `promoted` (only Toktra work left: revoking the old credential), then the
/// policy is edited: a destination added and the order changed. The next run finishes the
/// revocation and then rotates into the new destination set.
#[tokio::test(flavor = "multi_thread")]
async fn editing_destinations_during_the_grace_does_not_block_revocation() {
    let env = Env::start().await;
    let mut spec = Spec {
        name: "edited".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/edited", env.prefix))],
        grace: "0s",
    };
    env.policy("edited.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "edited-legacy").await;
    env.seed(&spec, &legacy).await;
    let crashing = Env { env: vec![("ROTATOR_CRASH_AT".into(), "promoted".into())], ..env };
    let run = crashing.rotator(&["rotate", "edited"]).await;
    assert_eq!(run.code, -1, "died after promotion\n{}", run.stderr);
    let env = Env { env: Vec::new(), ..crashing };
    let promoted = text(&env.served(&spec.dests[0]).await.unwrap(), "key_id");
    assert_ne!(promoted, legacy.id);

    spec.dests.insert(0, Dest::File(PathBuf::from("out/edited.json")));
    env.policy("edited.yaml", &spec.yaml());
    let run = env.rotator(&["rotate", "edited", "--format", "json"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let outcomes: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let rotations = outcomes[0]["rotations"].as_array().unwrap();
    assert_eq!(rotations.len(), 2, "the resumed rotation, then a new one: {run:?}", run = run.stdout);
    assert_eq!(rotations[0]["status"], "completed", "{}", run.stdout);
    assert_eq!(rotations[0]["revoked"], serde_json::json!([legacy.id]), "{}", run.stdout);
    assert_eq!(rotations[1]["status"], "completed", "{}", run.stdout);
    env.assert_converged(&[spec], &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string())])
        .await;
}

/// An on-demand request carries its rotation's ID. Run again with the same ID (the daemon
/// retrying a request whose first run hit a journal error), it is done: the recorded rotation
/// is reported, nothing new is minted, and no primary-key conflict surfaces.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_already_recorded_is_done_not_started_again() {
    use std::sync::Arc;

    use rotator::engine::{Engine, Options, Request, Status};

    let env = Env::start().await;
    let spec = Spec {
        name: "replayed".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File(PathBuf::from("out/replayed.json"))],
        grace: "0s",
    };
    env.policy("replayed.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "replayed-legacy").await;
    env.seed(&spec, &legacy).await;
    let policies = rotator::policy::load_dir(&env.dir.join("policies")).unwrap();
    let engine = Engine {
        toktra: Arc::new(env.toktra()),
        journal: rotator::journal::Journal::open(env.journal_path().to_str().unwrap()).await.unwrap(),
        clients: Arc::new(rotator::store::Clients { aws: None, vault: None }),
        options: Options::default(),
        stop: None,
    };
    let id = uuid::Uuid::new_v4().to_string();
    let request = Request { id: Some(id.clone()), reason: Some("replay".into()), ..Default::default() };
    let first = engine.rotate(&policies[0], &request).await.unwrap();
    assert_eq!(first.last().map(|o| (o.rotation_id.as_str(), o.status)), Some((id.as_str(), Status::Completed)));
    let creates = env.sim.stats().creates;

    let again = engine.rotate(&policies[0], &request).await.expect("a replayed request is not an error");
    let outcome = again.iter().find(|o| o.rotation_id == id).expect("the recorded rotation is reported");
    assert_eq!(outcome.status, Status::Completed);
    assert_eq!(env.sim.stats().creates, creates, "nothing new was minted");
    env.assert_converged(&[spec], &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string())])
        .await;
}

/// Toktra refuses to revoke the old credential after promotion. The policy is never wedged:
/// the CLI exits 1 and says why, `status` names what is pending and why, a later run retries
/// the revocation without starting another rotation, and a compromise request still replaces
/// the (possibly exposed) current credential, superseding the stuck rotation so that only one
/// rotation is ever in flight.
#[tokio::test(flavor = "multi_thread")]
async fn a_failure_after_promotion_never_wedges_the_policy() {
    use rotator::sim::Faults;

    let env = Env::start().await;
    let spec = Spec {
        name: "wedged".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File(PathBuf::from("out/wedged.json"))],
        grace: "0s",
    };
    env.policy("wedged.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "wedged-legacy").await;
    env.seed(&spec, &legacy).await;
    env.sim.set_faults(Faults { refuse_revocation: vec![legacy.id.clone()], ..Default::default() });

    let run = env.rotator(&["rotate", "wedged"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains(&legacy.id) && run.stdout.contains("forbidden"), "{}", run.stdout);
    let status = env.rotator(&["status", "--format", "json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let pending = &rows[0]["pending_revocations"];
    assert_eq!(pending[0]["credentials"], serde_json::json!([legacy.id]), "{}", status.stdout);
    let why = pending[0]["why"].as_str().unwrap();
    assert!(why.contains("revocation failed") && why.contains("forbidden"), "{why}");

    // Retried, not replaced by a second rotation.
    let creates = env.sim.stats().creates;
    let run = env.rotator(&["rotate", "wedged"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(env.sim.stats().creates, creates, "no new rotation over a stuck one");

    // A suspected exposure: the current credential goes whatever is stuck.
    let current = env.served(&spec.dests[0]).await.unwrap();
    let exposed = (text(&current, "key_id"), text(&current, "api_key"));
    let run =
        env.rotator(&["rotate", "wedged", "--compromised", "--reason", "leaked in a log", "--format", "json"]).await;
    assert_eq!(run.code, 1, "the refused revocation is still pending\n{}\n{}", run.stdout, run.stderr);
    let served = text(&env.served(&spec.dests[0]).await.unwrap(), "key_id");
    assert_ne!(served, exposed.0, "a new credential replaced the exposed one");
    assert!(!env.accepted(CredentialKind::ApiKey, &exposed.0, &exposed.1).await, "the exposed credential is revoked");
    let history = env.rotator(&["history", "wedged", "--format", "json"]).await;
    let rotations: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let unfinished: Vec<&serde_json::Value> = rotations
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !matches!(r["phase"].as_str(), Some("completed" | "failed" | "superseded")))
        .collect();
    assert_eq!(unfinished.len(), 1, "one rotation in flight: {}", history.stdout);
    assert!(rotations.as_array().unwrap().iter().any(|r| r["phase"] == "superseded"), "{}", history.stdout);
    let status = env.rotator(&["status", "--format", "json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let pending = rows[0]["pending_revocations"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{}", status.stdout);
    assert_eq!(pending[0]["credentials"], serde_json::json!([legacy.id]), "{}", status.stdout);

    // Once Toktra lets go, the next run finishes.
    env.sim.set_faults(Faults::default());
    env.rotator(&["rotate", "wedged"]).await.assert_code(0);
    env.assert_converged(
        &[spec],
        &[
            (CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string()),
            (CredentialKind::ApiKey, exposed.0.clone(), exposed.1.clone()),
        ],
    )
    .await;
}

/// Leaves a rotation of `spec` promoted with its old credential not yet revoked (a crash right
/// after promotion, grace 0s); returns the env without the crash setting.
async fn promoted_then_crash(env: Env, name: &str) -> Env {
    let crashing = Env { env: vec![("ROTATOR_CRASH_AT".into(), "promoted".into())], ..env };
    let run = crashing.rotator(&["rotate", name]).await;
    assert_eq!(run.code, -1, "{name} died after promotion\n{}", run.stderr);
    Env { env: Vec::new(), ..crashing }
}

/// During the grace an operator rolls back: AWS `AWSCURRENT` moved back to the previous version,
/// Vault's old data written again (what `vault kv rollback` does). The old credential is served
/// again, so its revocation is held (status says why, the CLI exits 1, no new rotation starts
/// over it) until the destination no longer serves it.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_during_the_grace_holds_the_revocation() {
    for aws in [true, false] {
        let env = Env::start().await;
        let spec = Spec {
            name: "rolled".into(),
            kind: if aws { CredentialKind::ApiKey } else { CredentialKind::OauthClient },
            dests: vec![if aws {
                Dest::Aws(format!("{}/rolled", env.prefix))
            } else {
                Dest::Vault(format!("{}/rolled", env.prefix))
            }],
            grace: "0s",
        };
        env.policy("rolled.yaml", &spec.yaml());
        let legacy = env.legacy(spec.kind, "rolled-legacy").await;
        env.seed(&spec, &legacy).await;
        let old = (spec.kind, legacy.id.clone(), legacy.secret.expose().to_string());
        let env = promoted_then_crash(env, "rolled").await;

        // The operator's rollback; what it takes to undo it is kept.
        let path = format!("{}/rolled", env.prefix);
        let mut aws_versions = None;
        let mut vault_promoted = None;
        if aws {
            let stages = env.aws_stages(&path).await;
            let holder =
                |label: &str| stages.iter().find(|(_, s)| s.iter().any(|l| l == label)).map(|(v, _)| v.clone());
            let (current, previous) = (holder("AWSCURRENT").unwrap(), holder("AWSPREVIOUS").unwrap());
            move_current(&env, &path, &previous, &current).await;
            aws_versions = Some((current, previous));
        } else {
            vault_promoted = env.vault_data(&path).await;
            env.vault_put(&path, env.vault_version(&path, 1).await.unwrap()).await;
        }
        let creates = env.sim.stats().creates;
        let run = env.rotator(&["rotate", "rolled"]).await;
        assert_eq!(run.code, 1, "aws={aws}: held revocations need attention\n{}\n{}", run.stdout, run.stderr);
        assert!(
            env.accepted(old.0, &old.1, &old.2).await,
            "aws={aws}: served again, so it still works\n{}",
            run.stdout
        );
        assert_eq!(env.sim.stats().creates, creates, "aws={aws}: no rotation started over the held one");
        let status = env.rotator(&["status", "--format", "json"]).await;
        let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        let why = rows[0]["pending_revocations"][0]["why"].as_str().unwrap_or_default().to_string();
        assert!(why.contains("revocation held") && why.contains(&old.1), "aws={aws}: {}", status.stdout);

        // Rollback undone: the revocation goes ahead.
        if let Some((current, previous)) = &aws_versions {
            move_current(&env, &path, current, previous).await;
        }
        if let Some(promoted) = vault_promoted {
            env.vault_put(&path, promoted).await;
        }
        let run = env.rotator(&["rotate", "rolled"]).await;
        assert_eq!(run.code, 0, "aws={aws}\n{}\n{}", run.stdout, run.stderr);
        env.assert_converged(&[spec], &[old]).await;
    }
}

/// Moves AWS's `AWSCURRENT` label of `secret_id` from version `from` to `to`, as an operator would.
async fn move_current(env: &Env, secret_id: &str, to: &str, from: &str) {
    env.aws()
        .update_secret_version_stage()
        .secret_id(secret_id)
        .version_stage("AWSCURRENT")
        .move_to_version_id(to)
        .remove_from_version_id(from)
        .send()
        .await
        .unwrap();
}

/// Two policies adopted the same legacy key. While one of them still serves it (its rotation
/// has not promoted), the other's rotation does not revoke it; once both replaced it, it goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_credential_another_policy_still_serves_is_not_revoked() {
    let env = Env::start().await;
    let first = Spec {
        name: "shared-a".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File(PathBuf::from("out/shared-a.json"))],
        grace: "0s",
    };
    let second =
        Spec { name: "shared-b".into(), dests: vec![Dest::File(PathBuf::from("out/shared-b.json"))], ..first.clone() };
    let legacy = env.legacy(CredentialKind::ApiKey, "shared-legacy").await;
    for spec in [&first, &second] {
        env.policy(&format!("{}.yaml", spec.name), &spec.yaml());
        env.seed(spec, &legacy).await;
    }
    // `shared-b` is mid-rotation (staged, not promoted): its consumers still read the key. Its
    // policy is then edited, so runs leave that rotation alone until the edit is undone (every
    // run resumes every policy's unfinished rotations).
    let crashing = Env { env: vec![("ROTATOR_CRASH_AT".into(), "staged".into())], ..env };
    assert_eq!(crashing.rotator(&["rotate", "shared-b"]).await.code, -1);
    let env = Env { env: Vec::new(), ..crashing };
    let mut edited = second.clone();
    edited.dests.push(Dest::File(PathBuf::from("out/shared-b-2.json")));
    env.policy("shared-b.yaml", &edited.yaml());

    let run = env.rotator(&["rotate", "shared-a"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("policy `shared-b` still serves"), "{}", run.stdout);
    assert!(
        env.accepted(CredentialKind::ApiKey, &legacy.id, legacy.secret.expose()).await,
        "shared-b's consumers work"
    );

    env.policy("shared-b.yaml", &second.yaml());
    // (The run resumes `shared-a`'s held rotation too; it may look before `shared-b` promotes.)
    let run = env.rotator(&["rotate", "shared-b", "--format", "json"]).await;
    let outcomes: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let b = outcomes.as_array().unwrap().iter().find(|p| p["policy"] == "shared-b").unwrap();
    assert_eq!(b["rotations"].as_array().unwrap().last().unwrap()["status"], "completed", "{}", run.stdout);
    let run = env.rotator(&["rotate", "shared-a"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    env.assert_converged(
        &[first, second],
        &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string())],
    )
    .await;
}

/// A run after the grace no longer has the old secret in memory; it reads it back from the
/// destination's previous value (AWS `AWSPREVIOUS`) and checks Toktra now rejects it.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_after_the_grace_is_checked_with_the_previous_value() {
    let env = Env::start().await;
    let spec = Spec {
        name: "checked".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Aws(format!("{}/checked", env.prefix))],
        grace: "0s",
    };
    env.policy("checked.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "checked-legacy").await;
    env.seed(&spec, &legacy).await;
    let env = promoted_then_crash(env, "checked").await;
    let run = env.rotator(&["rotate", "checked"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let history = env.rotator(&["history", "checked", "--steps", "--format", "json"]).await;
    let rotations: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let resumed = rotations.as_array().unwrap().iter().find(|r| r["old_credentials"][0] == legacy.id.as_str()).unwrap();
    let revoke = resumed["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "revoke" && s["status"] == "done")
        .unwrap_or_else(|| panic!("{resumed}"));
    assert!(revoke["detail"].as_str().unwrap().contains("presented and refused"), "{revoke}");
    env.assert_converged(&[spec], &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string())])
        .await;
}

/// `--revoke-first` leaves consumers with nothing until a new credential is promoted, so a
/// failure afterwards never rolls the rotation back to "failed": each failed attempt is cleaned
/// up (its credential revoked) and minting is tried again, within the run's budget; then the
/// CLI exits 1 saying plainly that consumers have no working credential, and the next run
/// resumes and finishes.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_first_only_rolls_forward() {
    use rotator::sim::Faults;

    let mut env = Env::start().await;
    let spec = Spec {
        name: "outage".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File(PathBuf::from("out/outage.json"))],
        grace: "0s",
    };
    env.policy("outage.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "outage-legacy").await;
    env.seed(&spec, &legacy).await;
    env.sim.set_faults(Faults { create_error_rate: 1.0, ..Default::default() });
    env.env.push(("ROTATOR_ROTATION_BUDGET".into(), "3s".into()));
    let args = ["rotate", "outage", "--compromised", "--revoke-first", "--reason", "key in a public repo"];
    let run = env.rotator(&args).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("CONSUMERS OF outage HAVE NO WORKING CREDENTIAL"), "{}", run.stderr);
    assert!(!env.accepted(CredentialKind::ApiKey, &legacy.id, legacy.secret.expose()).await, "revoked first");
    let history = env.rotator(&["history", "outage", "--steps", "--format", "json"]).await;
    let rotations: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    assert_ne!(rotations[0]["phase"], "failed", "never failed during an outage: {}", history.stdout);
    let retries = rotations[0]["steps"].as_array().unwrap().iter().filter(|s| s["step"] == "retry").count();
    assert!(retries >= 1, "minted again after a failure ({retries} retries): {}", history.stdout);
    let status = env.rotator(&["status", "--format", "json"]).await;
    assert!(status.stdout.contains("consumers have no working credential"), "{}", status.stdout);

    // Toktra recovers: the next run resumes the same rotation and promotes.
    env.sim.set_faults(Faults::default());
    let run = env.rotator(&["rotate", "outage", "--format", "json"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let outcomes: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let first = &outcomes[0]["rotations"][0];
    assert_eq!(first["rotation_id"], rotations[0]["id"], "the same rotation finished: {}", run.stdout);
    assert_eq!(first["status"], "completed", "{}", run.stdout);
    env.assert_converged(&[spec], &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string())])
        .await;
}

/// Promotion half-applied: Vault takes the new data (consumers read it) but refuses the
/// `custom_metadata` update (an ACL that allows `data/` but not writes to `metadata/`). The
/// destination serves the new credential, so it counts as promoted: the rotation never rolls
/// back and revokes what consumers now read; it stays unfinished, says why, and completes once
/// the permission is there.
#[tokio::test(flavor = "multi_thread")]
async fn a_half_applied_promotion_is_not_rolled_back() {
    let mut env = Env::start().await;
    let spec = Spec {
        name: "half".into(),
        kind: CredentialKind::OauthClient,
        dests: vec![Dest::Vault(format!("{}/half", env.prefix))],
        grace: "0s",
    };
    env.policy("half.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::OauthClient, "half-legacy").await;
    env.seed(&spec, &legacy).await;
    let token = vault_token_with(
        &env,
        r#"path "secret/data/{prefix}/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/{prefix}/*" { capabilities = ["read"] }
path "secret/data/_rotator/staging/{prefix}/*" { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/_rotator/staging/{prefix}/*" { capabilities = ["read", "delete"] }
"#,
    )
    .await;
    env.env.push(("VAULT_TOKEN".into(), token));

    let run = env.rotator(&["rotate", "half"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let served = env.served(&spec.dests[0]).await.unwrap();
    let new_id = text(&served, "client_id");
    assert_ne!(new_id, legacy.id, "the data write took: consumers read the new client");
    assert!(
        env.accepted(CredentialKind::OauthClient, &new_id, &text(&served, "client_secret")).await,
        "the client consumers read was not revoked\n{}",
        run.stdout
    );
    let history = env.rotator(&["history", "half", "--format", "json"]).await;
    let rotations: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(rotations[0]["phase"], "verified", "unfinished, not failed: {}", history.stdout);

    // With the permission back, the next run completes.
    env.env.clear();
    let run = env.rotator(&["rotate", "half", "--format", "json"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    env.assert_converged(
        &[spec],
        &[(CredentialKind::OauthClient, legacy.id.clone(), legacy.secret.expose().to_string())],
    )
    .await;
}

/// A policy deleted during its grace: the next run (of any policy) still revokes the old
/// credential when the grace is over, from what the journal knows.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_policy_still_revokes_after_its_grace() {
    let env = Env::start().await;
    let spec = Spec {
        name: "deleted".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/deleted", env.prefix))],
        grace: "0s",
    };
    let keeper = Spec {
        name: "keeper".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File(PathBuf::from("out/keeper.json"))],
        grace: "0s",
    };
    env.policy("deleted.yaml", &spec.yaml());
    env.policy("keeper.yaml", &keeper.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "deleted-legacy").await;
    env.seed(&spec, &legacy).await;
    let env = promoted_then_crash(env, "deleted").await;
    std::fs::remove_file(env.dir.join("policies/deleted.yaml")).unwrap();

    let status = env.rotator(&["status", "--format", "json"]).await;
    assert!(status.stdout.contains("removed_with_work_left"), "{}", status.stdout);
    let run = env.rotator(&["rotate", "keeper"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(!env.accepted(CredentialKind::ApiKey, &legacy.id, legacy.secret.expose()).await, "revoked after the grace");
    let status = env.rotator(&["status", "--format", "json"]).await;
    assert!(!status.stdout.contains("removed_with_work_left"), "nothing left: {}", status.stdout);
    let served = env.served(&spec.dests[0]).await.unwrap();
    assert!(env.accepted(CredentialKind::ApiKey, &text(&served, "key_id"), &text(&served, "api_key")).await);
}

/// A policy renamed while its rotation had minted and staged (not promoted): `status` and
/// `reconcile` report the leftover, `reconcile --fix` rolls it back (the new credential
/// revoked, the staged value discarded through the renamed policy's same destination), and
/// the renamed policy then rotates normally.
#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_policy_leaves_no_half_done_mint() {
    let env = Env::start().await;
    let spec = Spec {
        name: "before".into(),
        kind: CredentialKind::OauthClient,
        dests: vec![Dest::File(PathBuf::from("out/renamed.json"))],
        grace: "0s",
    };
    env.policy("p.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::OauthClient, "renamed-legacy").await;
    env.seed(&spec, &legacy).await;
    let crashing = Env { env: vec![("ROTATOR_CRASH_AT".into(), "staged".into())], ..env };
    assert_eq!(crashing.rotator(&["rotate", "before"]).await.code, -1);
    let env = Env { env: Vec::new(), ..crashing };
    let renamed = Spec { name: "after".into(), ..spec.clone() };
    env.policy("p.yaml", &renamed.yaml());

    let status = env.rotator(&["status", "--format", "json"]).await;
    assert!(status.stdout.contains("removed_with_work_left"), "{}", status.stdout);
    let reconcile = env.rotator(&["reconcile", "--format", "json"]).await;
    assert_eq!(reconcile.code, 1, "{}", reconcile.stdout);
    assert!(reconcile.stdout.contains("leftover"), "{}", reconcile.stdout);
    let fix = env.rotator(&["reconcile", "--fix"]).await;
    assert_eq!(fix.code, 0, "{}\n{}", fix.stdout, fix.stderr);
    let pending = env.dir.join("policies/out/renamed.json.pending");
    assert!(!pending.exists(), "the staged value is discarded");
    assert_eq!(
        env.active().iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![legacy.id.clone()],
        "the half-done mint is revoked; the legacy client is still current"
    );
    let run = env.rotator(&["rotate", "after"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    env.assert_converged(
        &[renamed],
        &[(CredentialKind::OauthClient, legacy.id.clone(), legacy.secret.expose().to_string())],
    )
    .await;
}

/// Makes a Vault token for `env` with the given ACL (HCL, `{prefix}` replaced), for tests that
/// need Vault to refuse part of what rotator does.
async fn vault_token_with(env: &Env, hcl: &str) -> String {
    let prefix = &env.prefix;
    let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let policy = serde_json::json!({ "policy": hcl.replace("{prefix}", prefix) });
    let (status, body) = env.vault(reqwest::Method::PUT, &format!("sys/policies/acl/{name}"), Some(policy)).await;
    assert!(status < 300, "{status} {body}");
    let (status, body) = env
        .vault(reqwest::Method::POST, "auth/token/create", Some(serde_json::json!({ "policies": [name], "ttl": "1h" })))
        .await;
    assert_eq!(status, 200, "{body}");
    body["auth"]["client_token"].as_str().unwrap().to_string()
}

/// Staging fails and so does discarding (Vault refuses the staging path): the rollback still
/// revokes the minted credential first (nothing a consumer reads holds it), records what could
/// not be cleaned, and does not wedge the policy; once Vault allows it, the policy rotates.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_that_cannot_discard_still_revokes_the_new_credential() {
    let mut env = Env::start().await;
    let spec = Spec {
        name: "undiscardable".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/undiscardable", env.prefix))],
        grace: "0s",
    };
    env.policy("undiscardable.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "undiscardable-legacy").await;
    env.seed(&spec, &legacy).await;
    let token = vault_token_with(
        &env,
        r#"path "secret/data/{prefix}/*" { capabilities = ["read"] }
path "secret/metadata/{prefix}/*" { capabilities = ["read"] }
"#,
    )
    .await;
    env.env.push(("VAULT_TOKEN".into(), token));
    let run = env.rotator(&["rotate", "undiscardable"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        env.active().iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![legacy.id.clone()],
        "the minted key is revoked; the legacy key is still current\n{}",
        run.stdout
    );
    let history = env.rotator(&["history", "undiscardable", "--format", "json"]).await;
    let rotations: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(rotations[0]["phase"], "failed", "not wedged in rolling_back: {}", history.stdout);

    env.env.clear();
    let run = env.rotator(&["rotate", "undiscardable"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    env.assert_converged(&[spec], &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string())])
        .await;
}

/// A compromise rotation that supersedes a stuck one and then fails (Toktra's create endpoint
/// is down) hands the stuck rotation's work back: it is `promoted` again with its revocation
/// pending, never forgotten.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_compromise_rotation_hands_back_what_it_superseded() {
    use rotator::sim::Faults;

    let env = Env::start().await;
    let spec = Spec {
        name: "handback".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File(PathBuf::from("out/handback.json"))],
        grace: "0s",
    };
    let old = env.adopt(std::slice::from_ref(&spec)).await;
    let legacy = old[0].1.clone();
    env.sim.set_faults(Faults { refuse_revocation: vec![legacy.clone()], ..Default::default() });
    assert_eq!(env.rotator(&["rotate", "handback"]).await.code, 1, "stuck on the refused revocation");

    env.sim.set_faults(Faults {
        refuse_revocation: vec![legacy.clone()],
        create_error_rate: 1.0,
        ..Default::default()
    });
    let run = env.rotator(&["rotate", "handback", "--compromised", "--reason", "leak"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let history = env.rotator(&["history", "handback", "--format", "json"]).await;
    let rotations: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let phases: Vec<&str> = rotations.as_array().unwrap().iter().map(|r| r["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, vec!["failed", "promoted"], "the stuck rotation is promoted again: {}", history.stdout);
    let status = env.rotator(&["status", "--format", "json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(rows[0]["pending_revocations"][0]["credentials"], serde_json::json!([legacy]), "{}", status.stdout);

    env.sim.set_faults(Faults::default());
    env.rotator(&["rotate", "handback"]).await.assert_code(0);
    env.assert_converged(&[spec], &old).await;
}

/// Two policies adopted one legacy key; the other's newest rotation failed before it recorded
/// anything (its destination unreadable) after an earlier one rolled back. The earlier one
/// decides: the other policy still serves the key, so it is not revoked.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_that_failed_before_recording_does_not_hide_a_holder() {
    use rotator::sim::Faults;

    let env = Env::start().await;
    let first = Spec {
        name: "decide-a".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File(PathBuf::from("out/decide-a.json"))],
        grace: "0s",
    };
    let second =
        Spec { name: "decide-b".into(), dests: vec![Dest::File(PathBuf::from("out/decide-b.json"))], ..first.clone() };
    let legacy = env.legacy(CredentialKind::ApiKey, "decide-legacy").await;
    for spec in [&first, &second] {
        env.policy(&format!("{}.yaml", spec.name), &spec.yaml());
        env.seed(spec, &legacy).await;
    }
    // decide-b: one rotation rolled back (the create endpoint down), then one that fails before
    // reading anything (its destination replaced by a directory).
    env.sim.set_faults(Faults { create_error_rate: 1.0, ..Default::default() });
    assert_eq!(env.rotator(&["rotate", "decide-b"]).await.code, 1);
    env.sim.set_faults(Faults::default());
    let b_file = env.dir.join("policies/out/decide-b.json");
    let saved = std::fs::read(&b_file).unwrap();
    std::fs::remove_file(&b_file).unwrap();
    std::fs::create_dir(&b_file).unwrap();
    assert_eq!(env.rotator(&["rotate", "decide-b"]).await.code, 1);
    std::fs::remove_dir(&b_file).unwrap();
    std::fs::write(&b_file, saved).unwrap();

    let run = env.rotator(&["rotate", "decide-a"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("policy `decide-b` still serves"), "{}", run.stdout);
    assert!(env.accepted(CredentialKind::ApiKey, &legacy.id, legacy.secret.expose()).await, "decide-b still works");
}

/// A rotation recorded but interrupted before it minted anything (a crash, or a shutdown right
/// after a request was accepted) is resumed by the next run, not failed: one rotation, completed.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_interrupted_before_minting_is_resumed_not_failed() {
    let env = Env::start().await;
    let spec = Spec {
        name: "early".into(),
        kind: CredentialKind::OauthClient,
        dests: vec![Dest::File(PathBuf::from("out/early.json"))],
        grace: "0s",
    };
    let old = env.adopt(std::slice::from_ref(&spec)).await;
    let crashing = Env { env: vec![("ROTATOR_CRASH_AT".into(), "started".into())], ..env };
    assert_eq!(crashing.rotator(&["rotate", "early"]).await.code, -1);
    let env = Env { env: Vec::new(), ..crashing };
    env.rotator(&["rotate", "early"]).await.assert_code(0);
    let history = env.rotator(&["history", "early", "--format", "json"]).await;
    let rotations: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let phases: Vec<&str> = rotations.as_array().unwrap().iter().map(|r| r["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, vec!["completed"], "{}", history.stdout);
    env.assert_converged(&[spec], &old).await;
}
