//! What a run costs the management credential at Toktra, counted by the simulator per
//! credential: the vendor's per-credential rate limit, not our CPU, bounds mass rotation.

use std::collections::BTreeMap;

use rotator::policy::CredentialKind;
use rotator::sim;

use crate::harness::{Dest, Env, Spec};

const POLICIES: u64 = 6;

/// Calls each credential made, by endpoint, since `before`.
fn calls_since(env: &Env, before: &sim::Stats) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut now = env.sim.stats().calls;
    for (credential, endpoints) in &mut now {
        for (endpoint, n) in endpoints.iter_mut() {
            *n -= before.calls.get(credential).and_then(|e| e.get(endpoint)).copied().unwrap_or(0);
        }
        endpoints.retain(|_, n| *n > 0);
    }
    now.retain(|_, e| !e.is_empty());
    now
}

/// A steady-state run over `POLICIES` policies, each replacing a served credential: on the
/// management credential one create and one revoke per rotation, plus, once per run, the
/// endpoint check, one listing and (managing with an OAuth client) one token exchange.
/// Verification and the check that the old credential is rejected use those credentials'
/// own budgets. The client's own count, printed at the end of the run, agrees.
async fn steady_state_calls(kind: CredentialKind, manage_with_client: bool) {
    let admin = (
        format!("cl_admin_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        format!("tcs_{}", uuid::Uuid::new_v4().simple()),
    );
    let mut env =
        Env::with(sim::Config { admin_client: manage_with_client.then(|| admin.clone()), ..Default::default() }).await;
    if manage_with_client {
        env.admin_client = Some(admin.clone());
    }
    let mut specs = Vec::new();
    for i in 0..POLICIES {
        let spec = Spec {
            name: format!("steady-{i}"),
            kind,
            dests: vec![Dest::File(format!("steady-{i}.json").into())],
            grace: "0s",
        };
        env.policy(&format!("steady-{i}.yaml"), &spec.yaml());
        let legacy = env.legacy(kind, &format!("steady-{i}-legacy")).await;
        env.seed(&spec, &legacy).await;
        specs.push(spec);
    }
    let management = env
        .sim
        .credentials()
        .into_iter()
        .find(|c| c.admin && if manage_with_client { c.id == admin.0 } else { c.kind == "api_key" })
        .unwrap()
        .id;
    let before = env.sim.stats();
    let run = env.rotator(&["rotate", "--all", "--log-format", "json"]).await;
    run.assert_code(0);
    let calls = calls_since(&env, &before);
    let admin_calls = calls.get(&management).cloned().unwrap_or_default();
    let collection = match kind {
        CredentialKind::ApiKey => "/v1/api-keys",
        CredentialKind::OauthClient => "/v1/oauth/clients",
    };
    let created = admin_calls.get(&format!("POST {collection}")).copied().unwrap_or(0);
    let revoked = admin_calls.iter().filter(|(e, _)| e.starts_with("DELETE")).map(|(_, n)| n).sum::<u64>();
    let listed = admin_calls.get(&format!("GET {collection}")).copied().unwrap_or(0);
    let exchanges = admin_calls.get("POST /v1/oauth/token").copied().unwrap_or(0);
    let total: u64 = admin_calls.values().sum();
    let per_run = total - created - revoked;
    println!(
        "{kind} managed with {}: {POLICIES} rotations, management calls {total}: creates {created}, revokes {revoked}, per run {per_run} (lists/checks {listed}, token exchanges {exchanges}); {:.2} per rotation",
        if manage_with_client { "an OAuth client" } else { "an API key" },
        total as f64 / POLICIES as f64
    );
    assert_eq!((created, revoked), (POLICIES, POLICIES), "one create and one revoke per rotation: {admin_calls:?}");
    // The endpoint check and one listing, and the management token once.
    assert_eq!(listed, 2, "{admin_calls:?}");
    assert_eq!(exchanges, u64::from(manage_with_client), "{admin_calls:?}");
    assert_eq!(per_run, 2 + u64::from(manage_with_client), "{admin_calls:?}");
    // Every other call was a rotated credential's own (verification probes).
    assert!(calls.keys().filter(|c| **c != management).count() >= POLICIES as usize, "{calls:?}");

    let summary = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "toktra calls of this run")
        .unwrap_or_else(|| panic!("no summary of the run's calls:\n{}", run.stderr));
    assert_eq!(summary["management_calls"], total, "{summary}");
    assert_eq!(
        (summary["management_creates"].as_u64(), summary["management_revokes"].as_u64()),
        (Some(POLICIES), Some(POLICIES)),
        "{summary}"
    );
    assert_eq!(summary["management_per_run"], per_run, "{summary}");
    // Probes: the new credential once to verify it, the old one once after its revocation
    // (a refusal there is what is expected, so one is conclusive); an OAuth client's probe is
    // an exchange and a call with the token, its refused probe only the exchange.
    let probes_per_rotation = match kind {
        CredentialKind::ApiKey => 1 + 1,
        CredentialKind::OauthClient => 2 + 1,
    };
    assert_eq!(summary["probe_calls"].as_u64(), Some(POLICIES * probes_per_rotation), "{summary}");
    env.assert_converged(&specs, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn steady_state_api_key_rotations_cost_two_management_calls_each() {
    steady_state_calls(CredentialKind::ApiKey, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn steady_state_oauth_rotations_cost_two_management_calls_each() {
    steady_state_calls(CredentialKind::OauthClient, true).await;
}
