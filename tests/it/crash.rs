//! Crash safety: the process dies after each persisted step (a crash point, `abort()`), or is
//! killed with SIGKILL at random moments; a normal run afterwards must converge with no orphans.

use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use rotator::engine::CRASH_POINTS;
use rotator::policy::CredentialKind;
use rotator::sim;

use crate::harness::{Dest, Env, Spec};
use crate::vendor::REVOKED_IN_LISTS;

async fn crash_matrix(kind: CredentialKind, two_destinations: bool) -> usize {
    let mut covered = 0;
    for (i, point) in CRASH_POINTS.iter().enumerate() {
        if !two_destinations && point.ends_with("-1") {
            continue;
        }
        // Each list dialect in turn, so the sweeps by name after a crash meet vendors that keep
        // revoked credentials listed as well as those that drop them.
        let revoked_in_lists = REVOKED_IN_LISTS[i % REVOKED_IN_LISTS.len()];
        let env = Env::with(sim::Config {
            dialect: sim::Dialect { revoked_in_lists, ..Default::default() },
            ..Default::default()
        })
        .await;
        let name = "crashy".to_string();
        let mut dests = vec![Dest::Vault(format!("{}/crashy", env.prefix))];
        if two_destinations {
            dests.push(Dest::Aws(format!("{}/crashy", env.prefix)));
        }
        let spec = Spec { name, kind, dests, grace: "0s" };
        env.policy("crashy.yaml", &spec.yaml());
        let legacy = env.legacy(kind, "crashy-legacy").await;
        env.seed(&spec, &legacy).await;

        let mut crashing = Env { env: vec![("ROTATOR_CRASH_AT".into(), point.to_string())], ..env };
        let run = crashing.rotator(&["rotate", "crashy"]).await;
        assert_eq!(run.code, -1, "{point}: the process died at the crash point\n{}", run.stderr);
        assert!(run.stderr.contains(&format!("crash point `{point}` reached")), "{point}: {}", run.stderr);
        crashing.env.clear();
        let env = crashing;

        let run = env.rotator(&["rotate", "crashy"]).await;
        assert_eq!(
            run.code, 0,
            "{point} ({revoked_in_lists:?}): the next run converges\n{}\n{}",
            run.stdout, run.stderr
        );
        env.assert_converged(&[spec], &[(kind, legacy.id.clone(), legacy.secret.expose().to_string())]).await;
        covered += 1;
    }
    println!(
        "crash matrix {kind} with {} destination(s): {covered} crash points converged",
        if two_destinations { 2 } else { 1 }
    );
    covered
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_matrix_api_key_one_destination() {
    assert_eq!(crash_matrix(CredentialKind::ApiKey, false).await, CRASH_POINTS.len() - 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_matrix_api_key_two_destinations() {
    assert_eq!(crash_matrix(CredentialKind::ApiKey, true).await, CRASH_POINTS.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_matrix_oauth_client_one_destination() {
    assert_eq!(crash_matrix(CredentialKind::OauthClient, false).await, CRASH_POINTS.len() - 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_matrix_oauth_client_two_destinations() {
    assert_eq!(crash_matrix(CredentialKind::OauthClient, true).await, CRASH_POINTS.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn random_kills_then_one_clean_run_converge() {
    // Latency stretches a run to a couple of seconds so that kills land in every phase.
    let env =
        Env::with(sim::Config { faults: sim::Faults { latency_ms: 40, ..Default::default() }, ..Default::default() })
            .await;
    let specs = vec![
        Spec {
            name: "rk-vault".into(),
            kind: CredentialKind::OauthClient,
            dests: vec![Dest::Vault(format!("{}/rk-vault", env.prefix))],
            grace: "0s",
        },
        Spec {
            name: "rk-both".into(),
            kind: CredentialKind::ApiKey,
            dests: vec![Dest::Aws(format!("{}/rk-both", env.prefix)), Dest::Vault(format!("{}/rk-both", env.prefix))],
            grace: "0s",
        },
        Spec {
            name: "rk-file".into(),
            kind: CredentialKind::ApiKey,
            dests: vec![Dest::File(PathBuf::from("out/rk-file.json"))],
            grace: "0s",
        },
    ];
    let old = env.adopt(&specs).await;
    // One undisturbed run to learn how long a run takes, then kills at random points of it.
    let timed = std::time::Instant::now();
    env.rotator(&["rotate", "--all"]).await.assert_code(0);
    let length = timed.elapsed().as_millis() as u64;
    let mut kills = Vec::new();
    for _ in 0..6 {
        let delay = Duration::from_millis(rand::rng().random_range(length / 20..length * 9 / 10));
        let mut child = env.command(&["rotate", "--all"]).spawn().unwrap();
        tokio::time::sleep(delay).await;
        let _ = child.start_kill();
        // A run killed by the signal has no exit code; one that finished first has one.
        let killed = child.wait().await.unwrap().code().is_none();
        kills.push((delay.as_millis(), killed));
    }
    println!("random kills (ms after start, killed mid-run): {kills:?}");
    assert!(kills.iter().filter(|(_, killed)| *killed).count() >= 3, "most kills landed mid-run: {kills:?}");
    let run = env.rotator(&["rotate", "--all"]).await;
    run.assert_code(0);
    env.assert_converged(&specs, &old).await;
}

/// Issue 10, item 4: a create the killed process sent lands after it died (the vendor carries
/// it out 3 s after it arrived). The next run takes the dead process's lease at once (the local
/// PID check) but looks the mint up only once that create can no longer land (one Toktra
/// timeout, 4 s here), so it finds the late credential and revokes it instead of leaving it
/// active and unrecorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_that_lands_after_the_crash_is_found_and_revoked() {
    let env = Env::with(sim::Config {
        faults: sim::Faults { create_delay_ms: 3000, ..Default::default() },
        ..Default::default()
    })
    .await;
    let spec = Spec {
        name: "late".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/late", env.prefix))],
        grace: "0s",
    };
    env.policy("late.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "late-legacy").await;
    env.seed(&spec, &legacy).await;

    let mut first = env.command(&["rotate", "late"]).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while env.sim.stats().creates_pending == 0 {
        assert!(std::time::Instant::now() < deadline, "the create never reached the simulator");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().await.unwrap();

    let run = env.rotator(&["rotate", "late"]).await;
    assert_eq!(env.sim.stats().creates_pending, 0, "the late create has landed");
    // Whatever the late create made is revoked; only the served credential is active.
    let served = env.served(&spec.dests[0]).await.unwrap();
    let active: Vec<String> = env.active().into_iter().map(|c| c.id).collect();
    assert_eq!(active, vec![crate::harness::text(&served, spec.id_field())], "{}\n{}", run.stdout, run.stderr);
    let history = env.rotator(&["history", "late", "--steps"]).await;
    assert!(
        history.stdout.contains("a create of the interrupted run may still be in flight"),
        "the lookup waited for the create:\n{}\n{}\n{}",
        history.stdout,
        run.stdout,
        run.stderr
    );
}
