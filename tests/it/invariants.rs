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
