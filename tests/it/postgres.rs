//! The journal on PostgreSQL (the server `ROTATOR_TEST_POSTGRES_URL` names), each test in
//! a database of its own: a crash and resume, and one rotation in flight per policy across
//! processes.

use std::time::Duration;

use rotator::policy::CredentialKind;
use rotator::sim;
use sqlx::AssertSqlSafe;

use crate::harness::{Dest, Env, Spec};

/// The PostgreSQL server's administrative URL (`ROTATOR_TEST_POSTGRES_URL`, set by
/// `scripts/test`): a user that may create databases, and a database to connect to meanwhile.
fn admin_url() -> String {
    std::env::var("ROTATOR_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!("ROTATOR_TEST_POSTGRES_URL is not set: run the tests through scripts/test, which points it at the machine's PostgreSQL")
    })
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').expect("a PostgreSQL URL names a database");
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// A fresh database for this test; its URL.
pub(crate) async fn database(env: &Env) -> String {
    sqlx::any::install_default_drivers();
    let admin = admin_url();
    let pool = sqlx::AnyPool::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at ROTATOR_TEST_POSTGRES_URL ({e})"));
    let name = env.prefix.replace('-', "_");
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
    pool.close().await;
    with_database(&admin, &name)
}

/// Drops the test's database (the machine's server outlives the test run).
pub(crate) async fn drop_database(env: &Env) {
    let pool = sqlx::AnyPool::connect(&admin_url()).await.unwrap();
    let name = env.prefix.replace('-', "_");
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&pool).await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_and_resume_with_a_postgres_journal() {
    let mut env = Env::start().await;
    let url = database(&env).await;
    env.env.push(("ROTATOR_DATABASE_URL".into(), url));
    let spec = Spec {
        name: "pg".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/pg", env.prefix)), Dest::Aws(format!("{}/pg", env.prefix))],
        grace: "0s",
    };
    env.policy("pg.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "pg-legacy").await;
    env.seed(&spec, &legacy).await;
    env.env.push(("ROTATOR_CRASH_AT".into(), "staged-1".into()));
    assert_eq!(env.rotator(&["rotate", "pg"]).await.code, -1);
    env.env.pop();
    env.rotator(&["rotate", "pg"]).await.assert_code(0);
    env.assert_converged(&[spec], &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string())])
        .await;
    assert!(!env.journal_path().exists(), "the SQLite default was not used");
    let history = env.rotator(&["history", "pg", "--format", "json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    // Staged everywhere before the crash: the next run recovered the secret and finished the
    // same rotation rather than starting another.
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["phase"], "completed");
    drop_database(&env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_rotation_in_flight_per_policy_across_processes_on_postgres() {
    let mut env =
        Env::with(sim::Config { faults: sim::Faults { latency_ms: 300, ..Default::default() }, ..Default::default() })
            .await;
    let url = database(&env).await;
    env.env.push(("ROTATOR_DATABASE_URL".into(), url));
    let spec = Spec {
        name: "pgbusy".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("pgbusy.json".into())],
        grace: "0s",
    };
    env.policy("pgbusy.yaml", &spec.yaml());
    // The first run is held right after it took the policy's lease.
    let go = env.dir.join("go");
    env.env.push(("ROTATOR_PAUSE_AT".into(), "after-lease".into()));
    env.env.push(("ROTATOR_PAUSE_FILE".into(), go.display().to_string()));
    let first = env.command(&["rotate", "pgbusy"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !env.dir.join("go.reached").exists() {
        assert!(std::time::Instant::now() < deadline, "the first run never took the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.env.truncate(env.env.len() - 2);
    let second = env.rotator(&["rotate", "pgbusy"]).await;
    second.assert_code(1);
    assert!(second.stdout.contains("a rotation is in flight"), "{}", second.stdout);
    std::fs::write(&go, "").unwrap();
    assert_eq!(first.wait_with_output().await.unwrap().status.code(), Some(0));
    env.assert_converged(&[spec], &[]).await;
    drop_database(&env).await;
}

/// Issue 10, item 1, on PostgreSQL: a request accepted by a service that is killed is known to
/// the next service on the same database and run by it, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_outlives_the_service_that_accepted_it_on_postgres() {
    let mut env = Env::start().await;
    let url = database(&env).await;
    env.env.push(("ROTATOR_DATABASE_URL".into(), url));
    crate::serve::a_request_outlives_the_service_that_accepted_it(&mut env).await;
    assert!(!env.journal_path().exists(), "the SQLite default was not used");
    drop_database(&env).await;
}
