//! Several `rotator serve` replicas on one PostgreSQL journal, each in UTS and PID namespaces of
//! its own (as on separate machines): one is killed with SIGKILL mid-rotation, and the others
//! take its policies over through lease expiry alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rotator::policy::CredentialKind;
use rotator::sim;
use sqlx::Row;

use crate::harness::{Dest, Env, Spec, text};
use crate::postgres::{database, drop_database};

const POLICIES: usize = 10;

/// Each policy's rotations in the journal: (phase, error).
async fn rotations(pool: &sqlx::AnyPool) -> BTreeMap<String, Vec<(String, Option<String>)>> {
    let mut by_policy: BTreeMap<String, Vec<(String, Option<String>)>> = BTreeMap::new();
    let rows = sqlx::query("SELECT policy, phase, error FROM rotations").fetch_all(pool).await.unwrap_or_default();
    for row in rows {
        by_policy
            .entry(row.get::<String, _>(0))
            .or_default()
            .push((row.get::<String, _>(1), row.try_get::<Option<String>, _>(2).ok().flatten()));
    }
    by_policy
}

/// Issue 10, item 4: three replicas, ten due policies, a Toktra slow enough (300 ms a call) that
/// rotations are in flight when one replica is killed. Its leases are taken over only when they
/// expire (its host name, boot and PID namespace differ from every other replica's, so no PID
/// check applies), and everything converges: every policy rotated (promoted) exactly once, every
/// served value works, and no credential is left active that nothing serves.
#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_converge_after_one_is_killed_mid_rotation() {
    let mut env =
        Env::with(sim::Config { faults: sim::Faults { latency_ms: 300, ..Default::default() }, ..Default::default() })
            .await;
    let url = database(&env).await;
    env.env.push(("ROTATOR_DATABASE_URL".into(), url.clone()));
    let specs: Vec<Spec> = (0..POLICIES)
        .map(|i| Spec {
            name: format!("fleet-{i}"),
            kind: CredentialKind::ApiKey,
            dests: vec![Dest::Vault(format!("{}/fleet-{i}", env.prefix))],
            grace: "0s",
        })
        .collect();
    for spec in &specs {
        env.policy(&format!("{}.yaml", spec.name), &spec.yaml());
    }
    // One rotation at a time per replica: the replica started first still has most of the
    // work ahead of it once the others are up, and the policies spread over all three.
    env.env.push(("ROTATOR_CONCURRENCY".into(), "1".into()));
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(env.serve_as(Some(&format!("replica-{i}")), &[]).await);
    }
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();

    // The victim: a replica holding a policy's lease with the rotation unfinished.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (victim_index, victim_policy) = loop {
        let held = sqlx::query(
            "SELECT l.holder, l.policy FROM leases l JOIN rotations r ON r.policy = l.policy
             WHERE l.holder LIKE 'replica-%' AND l.expires_at > 0
               AND r.phase NOT IN ('completed', 'failed', 'superseded')",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        let found = held.iter().find_map(|row| {
            let holder: String = row.get(0);
            let index = holder.strip_prefix("replica-")?.split(':').next()?.parse::<usize>().ok()?;
            Some((index, row.get::<String, _>(1)))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no replica ever had a rotation in flight:\n{}", replicas[0].log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let victim = replicas.remove(victim_index);
    let killed = Instant::now();
    victim.kill().await;

    // Converged: every policy has exactly one promoted rotation and nothing unfinished; what
    // each destination serves works; every active credential is served somewhere.
    let deadline = Instant::now() + Duration::from_secs(180);
    let converged = loop {
        let journal = rotations(&pool).await;
        let settled = specs.iter().all(|s| {
            journal.get(&s.name).is_some_and(|list| {
                list.iter().all(|(phase, _)| ["completed", "failed"].contains(&phase.as_str()))
                    && list.iter().filter(|(phase, _)| phase == "completed").count() == 1
            })
        });
        let mut served = BTreeSet::new();
        for spec in &specs {
            if let Some(value) = env.served(&spec.dests[0]).await {
                served.insert(text(&value, "key_id"));
            }
        }
        let active: BTreeSet<String> = env.active().into_iter().map(|c| c.id).collect();
        if settled && served.len() == POLICIES && active == served {
            break killed.elapsed();
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = replicas.iter().map(|r| r.log_text()).collect();
            panic!(
                "no convergence {}s after the kill (policy {victim_policy} was in flight):\njournal {journal:#?}\nserved {served:?}\nactive {active:?}\n{}",
                deadline.duration_since(killed).as_secs(),
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "replicas: policy {victim_policy} in flight on the killed replica-{victim_index}; converged {:.1}s after the SIGKILL (lease_ttl 30s)",
        converged.as_secs_f64()
    );

    // Every policy was rotated once: one promoted rotation each (checked above), and any other
    // is one the killed replica had in flight (it may have had several), wound up by the
    // replica that took the policy over.
    let journal = rotations(&pool).await;
    for (policy, list) in &journal {
        for (phase, error) in list.iter().filter(|(phase, _)| phase != "completed") {
            assert!(
                error.as_deref().is_some_and(|e| e.contains("interrupted")),
                "{policy}: {phase} {error:?}: {journal:#?}"
            );
        }
    }
    for spec in &specs {
        let value = env.served(&spec.dests[0]).await.unwrap();
        assert!(
            env.accepted(CredentialKind::ApiKey, &text(&value, "key_id"), &text(&value, "api_key")).await,
            "{}: the served key works",
            spec.name
        );
    }
    // The takeover went through lease expiry, not a PID check.
    let logs: String = replicas.iter().map(|r| r.log_text()).collect();
    assert!(!logs.contains("took over the lease of a process that no longer exists"), "{logs}");
    for replica in replicas {
        let (status, _, log) = replica.terminate(30).await;
        assert!(status.success(), "{log}");
    }
    pool.close().await;
    drop_database(&env).await;
}
