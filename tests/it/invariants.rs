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
    use rotator::toktra::sim::Faults;

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
