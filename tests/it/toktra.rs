//! The Toktra client against the simulator: token renewal, pagination, rate limits.

use std::time::{Duration, Instant};

use rotator::policy::CredentialKind;
use rotator::secret::Secret;
use rotator::sim;
use rotator::toktra;

use crate::harness::{Env, text};

fn admin_client() -> (String, String) {
    (
        format!("cl_admin_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        format!("tcs_{}", uuid::Uuid::new_v4().simple()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_follows_cursors_with_page_size_one() {
    let env = Env::with(sim::Config { page_size: 1, ..Default::default() }).await;
    let client = env.toktra();
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(client.create(CredentialKind::ApiKey, &format!("page-{i}"), &[], "").await.unwrap().id);
    }
    let listed: Vec<String> = client
        .list(CredentialKind::ApiKey)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.name.starts_with("page-"))
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, made, "every page, in creation order");
    // One request per page at least.
    assert!(env.sim.stats().requests >= 6, "{:?}", env.sim.stats());
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_are_waited_out_not_surfaced() {
    let env = Env::start().await;
    env.sim.set_faults(sim::Faults { rate_limit_rate: 0.5, ..Default::default() });
    let client = env.toktra();
    // At least four creates, and on until the simulator has answered a 429 (each request has an
    // even chance; forty without one would be a broken fault, not bad luck).
    let mut made = 0;
    while made < 4 || env.sim.stats().injected_rate_limits == 0 {
        assert!(made < 40, "no 429 injected in {made} creates: {:?}", env.sim.stats());
        client.create(CredentialKind::ApiKey, &format!("rl-{made}"), &[], "").await.expect("429 is waited out");
        made += 1;
    }
    assert_eq!(
        client.list(CredentialKind::ApiKey).await.unwrap().iter().filter(|c| c.name.starts_with("rl-")).count(),
        made
    );
    let stats = client.stats();
    // Every 429 was waited out: had one been surfaced, a create above would have failed.
    assert!(stats.rate_limit_waits > 0, "{stats:?}");
    // No create was duplicated by the retries.
    assert_eq!(env.active().len(), made, "{:?}", env.active());
}

#[tokio::test(flavor = "multi_thread")]
async fn management_token_is_renewed_when_it_expires() {
    let admin = admin_client();
    let env = Env::with(sim::Config {
        token_lifetime: Duration::from_secs(3_600),
        admin_client: Some(admin.clone()),
        ..Default::default()
    })
    .await;
    let client = toktra::Client::new(toktra::Settings::new(
        env.sim.base_url(),
        toktra::ManagementAuth::Client { client_id: admin.0, client_secret: Secret::new(admin.1) },
    ))
    .unwrap();
    client.list(CredentialKind::ApiKey).await.unwrap();
    // The token expires on the simulator's clock; the client's own clock (the real one) still
    // holds it fresh for an hour, so the simulator's 401 for it is what makes the client fetch
    // a new one. (Renewal ahead of expiry, on the client's clock, is what the tests with real
    // 2 s tokens exercise: `a_rotation_outlives_the_management_token`, the fault storm.)
    env.sim.advance(Duration::from_secs(7_200));
    client.list(CredentialKind::ApiKey).await.expect("a fresh token is fetched");
    assert!(client.stats().token_renewals >= 2, "{:?}", client.stats());
    let answered = env.sim.stats().by_status;
    assert!(answered.get(&401).is_some_and(|n| *n >= 1), "the expired token was never refused: {answered:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_outlives_the_management_token() {
    let admin = admin_client();
    let admin_id = admin.0.clone();
    let mut env = Env::with(sim::Config {
        token_lifetime: Duration::from_secs(2),
        admin_client: Some(admin),
        faults: sim::Faults { latency_ms: 300, ..Default::default() },
        ..Default::default()
    })
    .await;
    env.env.push(("TOKTRA_PAGE_SIZE".into(), "1".into()));
    for name in ["a", "b"] {
        // Adopting existing clients makes each rotation revoke, probe and list as well.
        let legacy = env.legacy(CredentialKind::OauthClient, &format!("tok-{name}-legacy")).await;
        env.vault_put(
            &format!("{}/tok-{name}", env.prefix),
            crate::harness::credential_json(CredentialKind::OauthClient, &legacy.id, &legacy.secret),
        )
        .await;
        env.policy(
            &format!("{name}.yaml"),
            &format!(
                "name: tok-{name}\ncredential: {{ kind: oauth_client, name: tok-{name} }}\nschedule: {{ every: 90d }}\n\
                 destinations:\n  - vault: {{ mount: secret, path: '{{prefix}}/tok-{name}', create: true }}\nrevoke: {{ grace: 0s }}\n"
            ),
        );
    }
    let started = Instant::now();
    env.rotator(&["rotate", "--all"]).await.assert_code(0);
    let elapsed = started.elapsed();
    assert!(elapsed > Duration::from_secs(2), "the run ({elapsed:?}) must outlive the token lifetime");
    let issued = env.sim.stats().tokens_issued.get(&admin_id).copied().unwrap_or(0);
    assert!(issued >= 2, "the management token was renewed mid-run ({issued} issued)");
    for name in ["a", "b"] {
        let current = env.vault_data(&format!("{}/tok-{name}", env.prefix)).await.unwrap();
        assert!(
            env.accepted(CredentialKind::OauthClient, &text(&current, "client_id"), &text(&current, "client_secret"))
                .await
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_paces_itself_by_the_rate_limit_headers() {
    // 4 requests per 2-second window: without pacing, the fifth request would get a 429.
    let env = Env::with(sim::Config {
        rate_limit_per_minute: 4,
        rate_limit_window: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let client = std::sync::Arc::new(env.toktra());
    let mut tasks = Vec::new();
    for i in 0..10 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.create(CredentialKind::ApiKey, &format!("paced-{i}"), &[], "").await.map(|m| m.id)
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("every create succeeds");
    }
    let stats = client.stats();
    assert!(stats.paced_waits > 0, "the client waited for the budget: {stats:?}");
    assert_eq!(env.sim.stats().real_rate_limits, 0, "pacing kept the client under the limit: {:?}", env.sim.stats());
    assert_eq!(env.active().len(), 10);
}
