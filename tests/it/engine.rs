//! Engine behaviour under faults, grace, idle revocation, compromise mode and concurrency.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rotator::policy::CredentialKind;
use rotator::sim;

use crate::harness::{Dest, Env, Spec, text, wait_for_clock};

#[tokio::test(flavor = "multi_thread")]
async fn fault_storm_completes_every_rotation_without_orphans() {
    let admin = (
        format!("cl_admin_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        format!("tcs_{}", uuid::Uuid::new_v4().simple()),
    );
    let mut env = Env::with(sim::Config {
        token_lifetime: Duration::from_secs(2),
        admin_client: Some(admin.clone()),
        faults: sim::Faults {
            error_rate: 0.15,
            rate_limit_rate: 0.10,
            drop_rate: 0.02,
            create_timeout_rate: 0.10,
            // Well past the client's timeout, so a loaded machine still sees the timeout.
            create_timeout_delay_ms: 4_000,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    env.env.push(("TOKTRA_TIMEOUT".into(), "2s".into()));
    let mut specs = Vec::new();
    let mut old = Vec::new();
    for i in 0..10 {
        let kind = if i % 2 == 0 { CredentialKind::OauthClient } else { CredentialKind::ApiKey };
        let name = format!("storm-{i}");
        let dests = match i % 3 {
            0 => vec![Dest::Vault(format!("{}/{name}", env.prefix))],
            1 => vec![Dest::Aws(format!("{}/{name}", env.prefix))],
            _ => vec![Dest::File(PathBuf::from(format!("out/{name}.json")))],
        };
        let spec = Spec { name: name.clone(), kind, dests, grace: "0s" };
        env.policy(&format!("{name}.yaml"), &spec.yaml());
        // Seeding goes through the storm as well, so it is retried by hand here.
        let legacy = loop {
            if let Ok(m) = env.toktra().create(kind, &format!("{name}-legacy"), &[], "").await {
                break m;
            }
        };
        env.seed(&spec, &legacy).await;
        old.push((kind, legacy.id.clone(), legacy.secret.expose().to_string()));
        specs.push(spec);
    }
    // Legacy credentials the seeding loop created twice (lost answers) are not rotator's business.
    for c in env.active() {
        if c.name.ends_with("-legacy") && !old.iter().any(|(_, id, _)| *id == c.id) {
            env.toktra()
                .revoke(if c.kind == "api_key" { CredentialKind::ApiKey } else { CredentialKind::OauthClient }, &c.id)
                .await
                .ok();
        }
    }
    // Several rounds: each replaces the credentials the round before minted, so every
    // verification and every revocation check runs through the storm more than once.
    for round in 1..=3 {
        let started = Instant::now();
        let run = env.rotator(&["rotate", "--all", "--format", "json"]).await;
        let elapsed = started.elapsed();
        assert_eq!(run.code, 0, "round {round}\n{}\n{}", run.stdout, run.stderr);
        let outcomes: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let completed = outcomes
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["rotations"].as_array().and_then(|r| r.last()).is_some_and(|r| r["status"] == "completed"))
            .count();
        assert_eq!(completed, specs.len(), "round {round}: {}", run.stdout);
        let stats = env.sim.stats();
        let line = run.stderr.lines().find(|l| l.contains("toktra calls of this run")).unwrap_or_default().to_string();
        println!(
            "fault storm round {round}: {} rotations in {elapsed:.1?}; simulator saw {} requests so far, injected {} errors, {} rate limits, {} drops, {} create timeouts; management tokens issued {}; client: {line}",
            specs.len(),
            stats.requests,
            stats.injected_errors,
            stats.injected_rate_limits,
            stats.injected_drops,
            stats.injected_create_timeouts,
            stats.tokens_issued.get(&admin.0).copied().unwrap_or(0)
        );
        assert!(stats.injected_errors > 0 && stats.injected_rate_limits > 0, "the storm happened: {stats:?}");
    }
    env.sim.set_faults(Default::default());
    env.assert_converged(&specs, &old).await;
}

/// A verification slowed past its access token's lifetime (a `429` waited out with 1 s tokens)
/// gets a `401` for an expired token: that says nothing about the new client, which must not be
/// declared rejected and rolled back.
#[tokio::test(flavor = "multi_thread")]
async fn an_access_token_expiring_mid_probe_does_not_reject_a_good_client() {
    let env = Env::with(sim::Config {
        token_lifetime: Duration::from_secs(1),
        faults: sim::Faults { rate_limit_rate: 0.4, ..Default::default() },
        ..Default::default()
    })
    .await;
    let mut specs = Vec::new();
    let mut old = Vec::new();
    for i in 0..6 {
        let spec = Spec {
            name: format!("expiry-{i}"),
            kind: CredentialKind::OauthClient,
            dests: vec![Dest::File(PathBuf::from(format!("out/expiry-{i}.json")))],
            grace: "0s",
        };
        env.policy(&format!("{}.yaml", spec.name), &spec.yaml());
        let legacy = loop {
            if let Ok(m) = env.toktra().create(spec.kind, &format!("{}-legacy", spec.name), &[], "").await {
                break m;
            }
        };
        env.seed(&spec, &legacy).await;
        old.push((spec.kind, legacy.id.clone(), legacy.secret.expose().to_string()));
        specs.push(spec);
    }
    let run = env.rotator(&["rotate", "--all"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains("rejected"), "{}", run.stdout);
    assert!(env.sim.stats().injected_rate_limits > 0, "the 429s happened");
    env.sim.set_faults(Default::default());
    env.assert_converged(&specs, &old).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn require_idle_holds_the_revocation_while_the_old_credential_is_used() {
    // A vendor that keeps revoked credentials listed (marked by a status): the idle check and
    // the revocation check read the same lists as in the default dialect.
    let env = Env::with(sim::Config {
        dialect: sim::Dialect { revoked_in_lists: sim::RevokedInLists::Status, ..Default::default() },
        ..Default::default()
    })
    .await;
    let spec = Spec {
        name: "idle".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/idle", env.prefix))],
        grace: "0s",
    };
    env.policy("idle.yaml", &spec.yaml().replace("revoke: { grace: 0s }", "revoke: { grace: 0s, require_idle: 3s }"));
    env.policy(
        "other.yaml",
        &Spec {
            name: "other".into(),
            kind: CredentialKind::ApiKey,
            dests: vec![Dest::File("other.json".into())],
            grace: "0s",
        }
        .yaml(),
    );
    let legacy = env.legacy(CredentialKind::ApiKey, "idle-legacy").await;
    env.seed(&spec, &legacy).await;
    let used = async || {
        assert!(
            env.accepted(CredentialKind::ApiKey, &legacy.id, legacy.secret.expose()).await,
            "the old key still works"
        )
    };

    used().await;
    let run = env.rotator(&["rotate", "idle"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("awaiting revocation") && run.stdout.contains("still in use"), "{}", run.stdout);
    // Keep using it until a run begins more than require_idle after the new key was promoted
    // (by the rotator's clock, the real one); no run may revoke it meanwhile.
    let past_idle = env.recorded("idle", "promoted_at").await + chrono::Duration::seconds(3);
    loop {
        used().await;
        let begun = chrono::Utc::now();
        env.rotator(&["rotate", "other"]).await.assert_code(0);
        if begun > past_idle {
            break;
        }
        // Paces the uses, well within require_idle of each other; nothing waits on this pause.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    used().await;
    let status = env.rotator(&["status"]).await;
    assert!(status.stdout.contains("still in use"), "status says why: {}", status.stdout);
    // Stop using it: once the simulator's record of its last use is 3 s old, a run revokes it.
    let last_used = env.sim.credentials().into_iter().find(|c| c.id == legacy.id).and_then(|c| c.last_used_at);
    wait_for_clock(last_used.expect("the simulator recorded the use") + chrono::Duration::seconds(3)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        env.rotator(&["rotate", "other"]).await.assert_code(0);
        if env.active().iter().all(|c| c.id != legacy.id) {
            break;
        }
        assert!(Instant::now() < deadline, "the idle old key was never revoked");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(!env.accepted(CredentialKind::ApiKey, &legacy.id, legacy.secret.expose()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn compromise_mode_revokes_at_once_and_reports_where_it_was_held() {
    let env = Env::start().await;
    let spec = Spec {
        name: "leaky".into(),
        kind: CredentialKind::OauthClient,
        dests: vec![Dest::Vault(format!("{}/leaky", env.prefix)), Dest::Aws(format!("{}/leaky", env.prefix))],
        grace: "24h",
    };
    env.policy("leaky.yaml", &spec.yaml().replace("every: 90d", "every: 30d"));
    let legacy = env.legacy(CredentialKind::OauthClient, "leaky-legacy").await;
    env.seed(&spec, &legacy).await;

    // A routine rotation first: the legacy client stays valid for its 24h grace.
    env.rotator(&["rotate", "leaky"]).await.assert_code(0);
    let routine = env.served(&spec.dests[0]).await.unwrap();
    assert!(env.accepted(CredentialKind::OauthClient, &legacy.id, legacy.secret.expose()).await);

    // Then the current client leaks: both it and the legacy client still in grace must die now.
    let run = env.rotator(&["rotate", "leaky", "--compromised", "--reason", "posted in a public channel"]).await;
    run.assert_code(0);
    let routine_id = text(&routine, "client_id");
    for expected in ["compromise: exposed", &routine_id, "held by vault:secret/", "held by aws:", "revoked at"] {
        assert!(run.stdout.contains(expected), "report lacks `{expected}`:\n{}", run.stdout);
    }
    assert!(
        !env.accepted(CredentialKind::OauthClient, &routine_id, &text(&routine, "client_secret")).await,
        "the exposed client is revoked"
    );
    assert!(
        !env.accepted(CredentialKind::OauthClient, &legacy.id, legacy.secret.expose()).await,
        "the client in grace is revoked too"
    );
    env.assert_converged(std::slice::from_ref(&spec), &[]).await;

    // --revoke-first: the exposed credential dies before the new one exists (an accepted outage).
    let exposed = env.served(&spec.dests[0]).await.unwrap();
    let run = env
        .rotator(&["rotate", "leaky", "--compromised", "--revoke-first", "--reason", "drill", "--format", "json"])
        .await;
    run.assert_code(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let last = report[0]["rotations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["compromise"]["outage_accepted"], true, "{last}");
    assert!(last["compromise"]["seconds_to_containment"].as_f64().is_some(), "{last}");
    let exposed_id = text(&exposed, "client_id");
    assert!(!env.accepted(CredentialKind::OauthClient, &exposed_id, &text(&exposed, "client_secret")).await);
    env.assert_converged(&[spec], &[]).await;
    // Revoke-first came before the mint in the journal.
    let history = env.rotator(&["history", "leaky", "--steps", "--limit", "1"]).await;
    let first_revoke = history.stdout.find("revoke-first").expect("revoke-first step");
    let mint = history.stdout.find(" mint ").expect("mint step");
    assert!(first_revoke < mint, "{}", history.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_on_the_same_policy_is_refused_while_one_is_in_flight() {
    let env = Env::start().await;
    let spec = Spec {
        name: "busy".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("busy.json".into())],
        grace: "0s",
    };
    env.policy("busy.yaml", &spec.yaml());
    // The first run is held right after it took the policy's lease.
    let go = env.dir.join("go");
    let mut held = env.command(&["rotate", "busy"]);
    held.env("ROTATOR_PAUSE_AT", "after-lease").env("ROTATOR_PAUSE_FILE", &go);
    let first = held.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.dir.join("go.reached").exists() {
        assert!(Instant::now() < deadline, "the first run never took the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = env.rotator(&["rotate", "busy"]).await;
    second.assert_code(1);
    assert!(second.stdout.contains("a rotation is in flight"), "{}", second.stdout);
    std::fs::write(&go, "").unwrap();
    let status = first.wait_with_output().await.unwrap();
    assert_eq!(status.status.code(), Some(0));
    env.assert_converged(&[spec], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_finds_orphans_drift_and_stale_staging_and_fixes_what_it_may() {
    let env = Env::start().await;
    let spec = Spec {
        name: "rec".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/rec", env.prefix))],
        grace: "0s",
    };
    env.policy("rec.yaml", &spec.yaml());
    env.rotator(&["rotate", "rec"]).await.assert_code(0);
    env.rotator(&["reconcile"]).await.assert_code(0);

    // An orphan: named like a mint of this policy, active, used by nothing.
    let orphan =
        env.toktra().create(CredentialKind::ApiKey, &format!("rec-{}", uuid::Uuid::now_v7()), &[], "").await.unwrap();
    // A hand-made key nobody claims is not rotator's to touch.
    let unmanaged = env.legacy(CredentialKind::ApiKey, "someone-elses").await;
    // A staged value of a rotation that is not in flight.
    let stale_id = uuid::Uuid::now_v7().to_string();
    let mut stale = crate::harness::credential_json(CredentialKind::ApiKey, &orphan.id, &orphan.secret);
    stale["rotation_id"] = serde_json::json!(stale_id);
    env.vault_put(&format!("_rotator/staging/{}/rec", env.prefix), stale).await;

    let run = env.rotator(&["reconcile", "--format", "json"]).await;
    run.assert_code(1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let kinds: Vec<&str> = report["findings"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"orphan") && kinds.contains(&"stale_staging"), "{report}");
    // The hand-made key and the admin key rotator itself uses.
    assert_eq!(report["unmanaged"], 2, "{report}");
    assert!(report["unmanaged_ids"].as_array().unwrap().iter().any(|id| id == unmanaged.id.as_str()), "{report}");
    for finding in report["findings"].as_array().unwrap() {
        assert!(finding["next_step"].as_str().is_some_and(|s| s.contains("--fix")), "a next step: {finding}");
    }
    let plain = env.rotator(&["reconcile"]).await;
    assert!(
        plain.stdout.contains("next: `rotator reconcile --fix`") && plain.stdout.contains(&unmanaged.id),
        "{}",
        plain.stdout
    );
    assert!(plain.stderr.contains("--fix repairs"), "{}", plain.stderr);

    let run = env.rotator(&["reconcile", "--fix"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("revoked") && run.stdout.contains("discarded"), "{}", run.stdout);
    assert!(env.active().iter().all(|c| c.id != orphan.id), "the orphan is revoked");
    assert!(env.active().iter().any(|c| c.id == unmanaged.id), "the unmanaged key is left alone");
    assert!(env.vault_metadata(&format!("_rotator/staging/{}/rec", env.prefix)).await.is_none());
    env.rotator(&["reconcile"]).await.assert_code(0);

    // Drift: someone writes another key into the destination by hand; it is reported, not fixed.
    env.vault_put(
        &format!("{}/rec", env.prefix),
        crate::harness::credential_json(CredentialKind::ApiKey, &unmanaged.id, &unmanaged.secret),
    )
    .await;
    let run = env.rotator(&["reconcile", "--fix"]).await;
    run.assert_code(1);
    assert!(run.stdout.contains("drift") && run.stdout.contains("changed by hand"), "{}", run.stdout);
    // The next rotation adopts what the destination serves (SPEC section 2): it replaces the
    // hand-written key and revokes it, and everything agrees again.
    env.rotator(&["rotate", "rec"]).await.assert_code(0);
    assert_ne!(text(&env.served(&spec.dests[0]).await.unwrap(), "key_id"), unmanaged.id);
    env.assert_converged(
        &[spec],
        &[(CredentialKind::ApiKey, unmanaged.id.clone(), unmanaged.secret.expose().to_string())],
    )
    .await;
}
