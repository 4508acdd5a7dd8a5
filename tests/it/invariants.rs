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
