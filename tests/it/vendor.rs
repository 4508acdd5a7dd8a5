//! Readings of the Toktra contract that `toktra-api.md` leaves open, each switched on in the
//! simulator: rotator must behave the same whichever way a vendor answers.

use std::path::PathBuf;

use rotator::policy::CredentialKind;
use rotator::sim::{self, Dialect, RevokedInLists, TokenError};

use crate::harness::{Dest, Env, Spec};

/// Every way a list may treat revoked credentials.
pub const REVOKED_IN_LISTS: [RevokedInLists; 3] =
    [RevokedInLists::Omit, RevokedInLists::RevokedAt, RevokedInLists::Status];

/// Two rounds of `rotate --all` (an OAuth client in Vault, an API key in AWS and a file), then `plan`, `reconcile` and `status` must all be clean, in every list dialect.
#[tokio::test(flavor = "multi_thread")]
async fn rotations_complete_whether_lists_keep_revoked_credentials() {
    for revoked_in_lists in REVOKED_IN_LISTS {
        let env = Env::with(sim::Config {
            dialect: Dialect { revoked_in_lists, ..Default::default() },
            ..Default::default()
        })
        .await;
        let specs = vec![
            Spec {
                name: "lists-oauth".into(),
                kind: CredentialKind::OauthClient,
                dests: vec![Dest::Vault(format!("{}/lists-oauth", env.prefix))],
                grace: "0s",
            },
            Spec {
                name: "lists-key".into(),
                kind: CredentialKind::ApiKey,
                dests: vec![
                    Dest::Aws(format!("{}/lists-key", env.prefix)),
                    Dest::File(PathBuf::from("out/lists-key.json")),
                ],
                grace: "0s",
            },
        ];
        let old = env.adopt(&specs).await;
        for round in 1..=2 {
            let run = env.rotator(&["rotate", "--all", "--format", "json"]).await;
            assert_eq!(run.code, 0, "{revoked_in_lists:?} round {round}\n{}\n{}", run.stdout, run.stderr);
            let outcomes: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
            for policy in outcomes.as_array().unwrap() {
                let last = policy["rotations"].as_array().and_then(|r| r.last()).cloned().unwrap_or_default();
                assert_eq!(last["status"], "completed", "{revoked_in_lists:?} round {round}: {policy}");
            }
        }
        let plan = env.rotator(&["plan"]).await;
        assert_eq!(plan.code, 0, "{revoked_in_lists:?}: plan\n{}\n{}", plan.stdout, plan.stderr);
        // Converged: the destinations' credentials are the only active ones, reconcile finds
        // no orphan (revoked credentials still listed are not orphans) and status says ok.
        env.assert_converged(&specs, &old).await;
        let reconcile = env.rotator(&["reconcile", "--format", "json"]).await;
        assert!(!reconcile.stdout.contains("orphan"), "{revoked_in_lists:?}: {}", reconcile.stdout);
    }
}

/// The token endpoint may refuse a client in any shape the contract allows; each one means
/// "rejected" to the revocation check.
#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_refusals_in_every_shape_count_as_rejections() {
    for token_error in [TokenError::InvalidClient401, TokenError::InvalidClient400, TokenError::Unauthorized401] {
        let env = Env::with(sim::Config {
            dialect: Dialect { token_error, revoked_in_lists: RevokedInLists::RevokedAt },
            ..Default::default()
        })
        .await;
        let spec = Spec {
            name: "refusals".into(),
            kind: CredentialKind::OauthClient,
            dests: vec![Dest::File(PathBuf::from("out/refusals.json"))],
            grace: "0s",
        };
        env.policy("refusals.yaml", &spec.yaml());
        let legacy = env.legacy(CredentialKind::OauthClient, "refusals-legacy").await;
        env.seed(&spec, &legacy).await;
        // The revocation check probes the old client: its refusal must read as "rejected".
        let run = env.rotator(&["rotate", "refusals"]).await;
        assert_eq!(run.code, 0, "{token_error:?}\n{}\n{}", run.stdout, run.stderr);
        assert!(
            !env.accepted(CredentialKind::OauthClient, &legacy.id, legacy.secret.expose()).await,
            "{token_error:?}: the old client is rejected"
        );
        env.assert_converged(
            &[spec],
            &[(CredentialKind::OauthClient, legacy.id.clone(), legacy.secret.expose().into())],
        )
        .await;
    }
}

/// `PUT /_sim/dialect` switches the reading at run time; the raw list shows revoked credentials
/// the way the dialect says, and the client's list drops them in every dialect.
#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_switches_list_dialects_at_run_time() {
    let env = Env::start().await;
    let client = env.toktra();
    let kept = client.create(CredentialKind::ApiKey, "dialect-kept", &[], "").await.unwrap();
    let gone = client.create(CredentialKind::ApiKey, "dialect-gone", &[], "").await.unwrap();
    client.revoke(CredentialKind::ApiKey, &gone.id).await.unwrap();
    let http = reqwest::Client::new();
    let sim_url = env.sim.base_url().trim_end_matches("/v1").to_string();
    let raw = async || -> serde_json::Value {
        http.get(format!("{}/api-keys?limit=100", env.sim.base_url()))
            .bearer_auth(&env.admin_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let item =
        |page: &serde_json::Value, id: &str| page["items"].as_array().unwrap().iter().find(|i| i["id"] == id).cloned();
    assert!(item(&raw().await, &gone.id).is_none(), "omitted by default");
    for (body, field, value) in [
        (r#"{"revoked_in_lists": "revoked_at"}"#, "revoked_at", None),
        (r#"{"revoked_in_lists": "status"}"#, "status", Some("revoked")),
    ] {
        let put = http.put(format!("{sim_url}/_sim/dialect")).body(body).send().await.unwrap();
        assert_eq!(put.status(), 200, "{body}");
        let page = raw().await;
        let listed = item(&page, &gone.id).unwrap_or_else(|| panic!("{body}: revoked key listed: {page}"));
        assert!(!listed[field].is_null(), "{body}: {listed}");
        if let Some(value) = value {
            assert_eq!(listed[field], value);
            assert_eq!(item(&page, &kept.id).unwrap()[field], "active");
        }
        let ids: Vec<String> = client.list(CredentialKind::ApiKey).await.unwrap().into_iter().map(|c| c.id).collect();
        assert!(ids.contains(&kept.id) && !ids.contains(&gone.id), "{body}: {ids:?}");
    }
    let bad =
        http.put(format!("{sim_url}/_sim/dialect")).body(r#"{"revoked_in_lists": "maybe"}"#).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(env.sim.dialect().revoked_in_lists, RevokedInLists::Status, "a bad request changes nothing");
}

/// `TOKTRA_API_URL` without the `/v1` segment (as Toktra's own Terraform provider reads it)
/// works; a URL that reaches no API fails before anything is minted, exit 2, saying so.
#[tokio::test(flavor = "multi_thread")]
async fn the_base_url_works_without_v1_and_a_wrong_one_changes_nothing() {
    let mut env = Env::start().await;
    let spec = Spec {
        name: "based".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File(PathBuf::from("out/based.json"))],
        grace: "0s",
    };
    let old = env.adopt(std::slice::from_ref(&spec)).await;
    let root = env.sim.base_url().trim_end_matches("/v1").to_string();

    env.env.push(("TOKTRA_API_URL".into(), format!("{root}/elsewhere")));
    let run = env.rotator(&["rotate", "based"]).await;
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("nothing was changed") && run.stderr.contains("404"), "{}", run.stderr);
    assert_eq!(env.sim.stats().creates, 1, "only the legacy key was ever created");

    env.env = vec![("TOKTRA_API_URL".into(), format!("{root}/"))];
    let run = env.rotator(&["rotate", "based"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    env.env.clear();
    env.assert_converged(&[spec], &old).await;
}
