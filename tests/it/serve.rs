//! `rotator serve` through HTTP and signals, against real OpenBao and the simulator: the API,
//! the scheduler, metrics, reloads, graceful shutdown and notifications.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rotator::policy::CredentialKind;
use rotator::sim;
use serde_json::Value;

use crate::harness::{Dest, Env, Spec, text};
use crate::service::{Service, VaultGate};

#[tokio::test(flavor = "multi_thread")]
async fn api_needs_a_token_and_rotates_on_demand() {
    let env =
        Env::with(sim::Config { faults: sim::Faults { latency_ms: 150, ..Default::default() }, ..Default::default() })
            .await;
    let spec = Spec {
        name: "api".into(),
        kind: CredentialKind::OauthClient,
        dests: vec![Dest::Vault(format!("{}/api", env.prefix))],
        grace: "0s",
    };
    env.policy("api.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::OauthClient, "api-legacy").await;
    env.seed(&spec, &legacy).await;
    let service = env.serve(&[]).await;

    let plain = reqwest::Client::new();
    assert_eq!(plain.get(format!("{}/healthz", service.base)).send().await.unwrap().status(), 200);
    assert_eq!(plain.get(format!("{}/readyz", service.base)).send().await.unwrap().status(), 200);
    for auth in [None, Some("wrong-token")] {
        let mut r = plain.get(format!("{}/v1/policies", service.base));
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized", "{body}");
        assert!(body["message"].is_string());
    }
    let (status, body) = service.get("/v1/policies").await;
    assert_eq!(status, 200);
    assert_eq!(body["policies"][0]["name"], "api");
    assert_eq!(body["policies"][0]["due"]["basis"], "credential", "the adopted client is not due now: {body}");
    let (status, _) = service.get("/v1/policies/nosuch").await;
    assert_eq!(status, 404);
    let (status, body) = service.post("/v1/policies/nosuch/rotate", serde_json::json!({})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

    let (status, body) = service.post("/v1/policies/api/rotate", serde_json::json!({ "reason": "api test" })).await;
    assert_eq!(status, 202, "{body}");
    let id = text(&body, "id");
    let (status, body) = service.post("/v1/policies/api/rotate", serde_json::json!({ "reason": "again" })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("conflict")),
        "a second request while one is in flight: {body}"
    );

    let done = service.wait_rotation(&id, 30, |r| r["phase"] == "completed").await;
    assert_eq!(done["reason"], "api test");
    assert!(done["steps"].as_array().unwrap().len() > 5);
    let current = env.served(&spec.dests[0]).await.unwrap();
    assert_eq!(text(&current, "rotation_id"), id, "the rotation the API answered with is the one that landed");
    assert!(
        env.accepted(CredentialKind::OauthClient, &text(&current, "client_id"), &text(&current, "client_secret")).await
    );
    assert!(!env.accepted(CredentialKind::OauthClient, &legacy.id, legacy.secret.expose()).await);

    // Metrics parse as Prometheus text and counted the rotation.
    let metrics = plain.get(format!("{}/metrics", service.base)).send().await.unwrap().text().await.unwrap();
    for line in metrics.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(rest.starts_with("HELP rotator_") || rest.starts_with("TYPE rotator_"), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(series.starts_with("rotator_"), "{line}");
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        if let Some((_, labels)) = series.split_once('{') {
            assert!(labels.ends_with('}') && labels.contains("=\""), "{line}");
        }
    }
    assert!(metrics.contains("rotator_rotations_total{policy=\"api\",outcome=\"completed\"} 1"), "{metrics}");
    assert!(metrics.contains("rotator_credential_age_seconds{policy=\"api\"}"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("rotator_toktra_requests_total{status=\"201\"}")), "{metrics}");
    let (status, body) = service.get("/v1/rotations?policy=api").await;
    assert_eq!((status, body["rotations"][0]["id"].as_str()), (200, Some(id.as_str())));

    service.signal("TERM");
    let mut child = service.child;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_rotates_a_due_policy_without_a_request() {
    let env = Env::start().await;
    // No credential at all: due now. The adopted one is 90 days from due and must be left alone.
    let due = Spec {
        name: "due-now".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("due.json".into())],
        grace: "0s",
    };
    let later = Spec {
        name: "not-due".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/later", env.prefix))],
        grace: "0s",
    };
    env.policy("due.yaml", &due.yaml().replace("every: 90d", "every: 1h"));
    env.policy("later.yaml", &later.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "not-due-legacy").await;
    env.seed(&later, &legacy).await;
    let service = env.serve(&[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.served(&due.dests[0]).await.is_none() {
        assert!(Instant::now() < deadline, "the scheduler never rotated the due policy:\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let value = env.served(&due.dests[0]).await.unwrap();
    assert!(env.accepted(CredentialKind::ApiKey, &text(&value, "key_id"), &text(&value, "api_key")).await);
    let (_, body) = service.get("/v1/rotations?policy=due-now").await;
    assert_eq!(body["rotations"][0]["reason"], "scheduled", "{body}");
    // Three more passes of the scheduler: the fresh credential is not due again, the other
    // policy never was.
    let passes = service.passes().await;
    service.wait_passes(passes + 3, 30).await;
    let (_, body) = service.get("/v1/rotations").await;
    assert_eq!(body["rotations"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(text(&env.served(&later.dests[0]).await.unwrap(), "key_id"), legacy.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_keeps_the_old_set_when_the_new_one_is_broken() {
    let env = Env::start().await;
    let first = Spec {
        name: "first".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/first", env.prefix))],
        grace: "0s",
    };
    env.policy("first.yaml", &first.yaml());
    env.seed(&first, &env.legacy(CredentialKind::ApiKey, "first-legacy").await).await;
    let service = env.serve(&[]).await;
    let names = async || -> Vec<String> {
        let (_, body) = service.get("/v1/policies").await;
        body["policies"].as_array().unwrap().iter().map(|p| text(p, "name")).collect()
    };
    assert_eq!(names().await, ["first"]);

    env.policy(
        "second.yaml",
        "name: second\ncredential: { kind: api_key, name: second }\nschedule: { every: 10m }\ndestinations: []\n",
    );
    service.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !service.log_text().contains("reload rejected") {
        assert!(Instant::now() < deadline, "no rejection logged:\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(service.log_text().contains("second.yaml:3:"), "the problem names file and line:\n{}", service.log_text());
    assert_eq!(names().await, ["first"], "the old set keeps running");

    let second = Spec {
        name: "second".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/second", env.prefix))],
        grace: "0s",
    };
    env.seed(&second, &env.legacy(CredentialKind::ApiKey, "second-legacy").await).await;
    env.policy("second.yaml", &second.yaml());
    service.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(15);
    while names().await != ["first", "second"] {
        assert!(Instant::now() < deadline, "the valid set was never loaded:\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero_and_leaves_the_rotation_in_flight_resumable() {
    let env =
        Env::with(sim::Config { faults: sim::Faults { latency_ms: 400, ..Default::default() }, ..Default::default() })
            .await;
    let spec = Spec {
        name: "term".into(),
        kind: CredentialKind::OauthClient,
        dests: vec![Dest::Vault(format!("{}/term", env.prefix)), Dest::Aws(format!("{}/term", env.prefix))],
        grace: "0s",
    };
    env.policy("term.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::OauthClient, "term-legacy").await;
    env.seed(&spec, &legacy).await;
    let service = env.serve(&[]).await;
    let (status, body) =
        service.post("/v1/policies/term/rotate", serde_json::json!({ "reason": "shutdown test" })).await;
    assert_eq!(status, 202, "{body}");
    let id = text(&body, "id");
    service.wait_rotation(&id, 20, |r| r["phase"] == "minted" || r["phase"] == "staged").await;
    let started = Instant::now();
    service.signal("TERM");
    let mut child = service.child;
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits within the timeout").unwrap();
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(&service.log).unwrap_or_default());
    println!("serve stopped {:.1?} after SIGTERM", started.elapsed());
    // Whatever phase it stopped in, the next run converges.
    env.rotator(&["rotate", "term"]).await.assert_code(0);
    env.assert_converged(
        &[spec],
        &[(CredentialKind::OauthClient, legacy.id.clone(), legacy.secret.expose().to_string())],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_hears_about_failures_and_no_payload_holds_a_secret() {
    // A local receiver for both channel kinds.
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/{hook}",
        axum::routing::post(move |axum::extract::Path(hook): axum::extract::Path<String>, body: String| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(format!("{hook} {body}"));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let env =
        Env::with(sim::Config { faults: sim::Faults { error_rate: 1.0, ..Default::default() }, ..Default::default() })
            .await;
    std::fs::write(
        env.dir.join("rotator.toml"),
        format!(
            "[notifications.ops]\nkind = \"webhook\"\nurl = \"http://{hook}/webhook\"\n\n[notifications.chat]\nkind = \"slack\"\nurl = \"http://{hook}/slack\"\non_success = true\n"
        ),
    )
    .unwrap();
    let spec = Spec {
        name: "hooked".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("hooked.json".into())],
        grace: "0s",
    };
    env.policy("hooked.yaml", &format!("{}notify: [ops, chat]\n", spec.yaml()));
    let service = env.serve(&[]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = received.lock().unwrap().clone();
        if got.iter().any(|b| b.starts_with("webhook ") && b.contains("\"event\":\"rotation_failed\""))
            && got.iter().any(|b| b.starts_with("slack ") && b.contains("\"text\""))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no failure notification arrived: {got:?}\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = received.lock().unwrap().clone();
    let failure = got.iter().find(|b| b.starts_with("webhook ")).unwrap();
    let payload: Value = serde_json::from_str(failure.trim_start_matches("webhook ")).unwrap();
    assert_eq!(payload["policy"], "hooked");
    assert!(payload["error"].as_str().unwrap().contains("500"), "{payload}");
    for body in &got {
        for secret in [&env.admin_key, &env.vault_token, &service.token] {
            assert!(!body.contains(secret.as_str()), "a secret in a notification: {body}");
        }
    }
    for secret in [&env.admin_key, &service.token] {
        assert!(!service.log_text().contains(secret.as_str()), "a secret in the service log");
    }
    assert!(!service.log_text().contains(&format!("{hook}/webhook")), "webhook URLs are secrets and stay out of logs");
}

/// The service finishes what a deleted policy left (its old credential revoked once the grace
/// is over) and tells the policy's channels, once, when a revocation is held because a
/// destination serves the old credential again (an operator rolled the file back).
#[tokio::test(flavor = "multi_thread")]
async fn serve_finishes_a_deleted_policys_work_and_tells_of_held_revocations() {
    let (hook, received) = webhook_receiver().await;

    let env = Env::start().await;
    std::fs::write(
        env.dir.join("rotator.toml"),
        format!("[notifications.ops]\nkind = \"webhook\"\nurl = \"http://{hook}/hook\"\n"),
    )
    .unwrap();
    let kept = Spec {
        name: "kept".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("kept.json".into())],
        grace: "0s",
    };
    env.policy("kept.yaml", &format!("{}notify: [ops]\n", kept.yaml()));
    let kept_legacy = env.legacy(CredentialKind::ApiKey, "kept-legacy").await;
    env.seed(&kept, &kept_legacy).await;
    let crashing = Env { env: vec![("ROTATOR_CRASH_AT".into(), "promoted".into())], ..env };
    assert_eq!(crashing.rotator(&["rotate", "kept"]).await.code, -1);
    // The operator puts the old key back while the old rotation waits to revoke it.
    crashing.seed(&kept, &kept_legacy).await;

    let gone = Spec {
        name: "gone".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/gone", crashing.prefix))],
        grace: "0s",
    };
    crashing.policy("gone.yaml", &gone.yaml());
    let gone_legacy = crashing.legacy(CredentialKind::ApiKey, "gone-legacy").await;
    crashing.seed(&gone, &gone_legacy).await;
    assert_eq!(crashing.rotator(&["rotate", "gone"]).await.code, -1);
    let env = Env { env: Vec::new(), ..crashing };
    std::fs::remove_file(env.dir.join("policies/gone.yaml")).unwrap();

    let service = env.serve(&[]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let revoked = !env.accepted(CredentialKind::ApiKey, &gone_legacy.id, gone_legacy.secret.expose()).await;
        let told = received.lock().unwrap().iter().any(|b| b.contains("\"event\":\"revocation_held\""));
        if revoked && told {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revoked={revoked} told={told}: {:?}\n{}",
            received.lock().unwrap(),
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        env.accepted(CredentialKind::ApiKey, &kept_legacy.id, kept_legacy.secret.expose()).await,
        "the key served again is not revoked"
    );
    // Told once, though later passes look again (and log it each time).
    let deadline = Instant::now() + Duration::from_secs(30);
    while service.log_text().matches("revocation held: file:").count() < 3 {
        assert!(Instant::now() < deadline, "the held revocation was not looked at again:\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held = received.lock().unwrap().iter().filter(|b| b.contains("revocation_held")).count();
    assert_eq!(held, 1, "{:?}", received.lock().unwrap());
    service.signal("TERM");
}

/// Issue 9, item 12: a request made while the policy's last rotation waits for its grace period
/// runs at once. The tick is a minute, so only the request's wake-up can explain a prompt run.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_during_a_grace_period_runs_at_once() {
    let env = Env { env: vec![("ROTATOR_TICK".into(), "60s".into())], ..Env::start().await };
    let spec = Spec {
        name: "graceful".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("graceful.json".into())],
        grace: "1h",
    };
    env.policy("graceful.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "graceful-legacy").await;
    env.seed(&spec, &legacy).await;
    let service = env.serve(&[]).await;

    let (status, body) = service.post("/v1/policies/graceful/rotate", serde_json::json!({ "reason": "first" })).await;
    assert_eq!(status, 202, "{body}");
    let first = text(&body, "id");
    service.wait_rotation(&first, 20, |r| r["phase"] == "promoted").await;
    // Right after the first rotation entered its grace period.
    let (status, body) = service.post("/v1/policies/graceful/rotate", serde_json::json!({ "reason": "second" })).await;
    assert_eq!(status, 202, "{body}");
    let second = text(&body, "id");
    let requested = Instant::now();
    service.wait_rotation(&second, 15, |r| r["phase"] == "promoted").await;
    println!("the second request ran {:.1?} after it was accepted", requested.elapsed());
    assert_eq!(text(&env.served(&spec.dests[0]).await.unwrap(), "rotation_id"), second);
    // Both old credentials wait for their grace periods.
    assert!(env.accepted(CredentialKind::ApiKey, &legacy.id, legacy.secret.expose()).await);
    let first_row = service.wait_rotation(&first, 5, |r| r["phase"] == "promoted").await;
    assert!(first_row["revoked_at"].is_null(), "{first_row}");
}

/// Issue 9, item 10: every error the service answers is `{"error", "message"}` JSON, including
/// the ones the HTTP framework produces, and only `application/json` is JSON.
#[tokio::test(flavor = "multi_thread")]
async fn every_http_error_is_json() {
    let env = Env::start().await;
    let spec = Spec {
        name: "errors".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("errors.json".into())],
        grace: "0s",
    };
    env.policy("errors.yaml", &spec.yaml());
    env.seed(&spec, &env.legacy(CredentialKind::ApiKey, "errors-legacy").await).await;
    let service = env.serve(&[]).await;
    let json = [("content-type", "application/json")];
    let big_header = "h".repeat(64 * 1024);
    let long_query = format!("/v1/rotations?policy={}", "p".repeat(16 * 1024));
    // (method, path, headers, body, status, error code)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("GET", "/v1/policies/errors/rotate", vec![], vec![], 405, "method_not_allowed"),
        ("DELETE", "/v1/rotations", vec![], vec![], 405, "method_not_allowed"),
        ("POST", "/healthz", json.to_vec(), vec![], 405, "method_not_allowed"),
        ("GET", "/v1/rotations?limit=abc", vec![], vec![], 400, "bad_request"),
        ("GET", "/v1/policies/%FF%FE", vec![], vec![], 400, "bad_request"),
        ("GET", "/v1/rotations/%C3%28", vec![], vec![], 400, "bad_request"),
        ("POST", "/v1/policies/errors/rotate", json.to_vec(), vec![b' '; 80 * 1024], 413, "payload_too_large"),
        ("GET", &long_query, vec![], vec![], 414, "uri_too_long"),
        ("GET", "/healthz", vec![("x-big", &big_header)], vec![], 431, "request_header_fields_too_large"),
        ("GET", "/v1/nosuch", vec![], vec![], 404, "not_found"),
        // Not JSON, with a body or without one.
        (
            "POST",
            "/v1/policies/errors/rotate",
            vec![("content-type", "application/jsonp")],
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/policies/errors/rotate",
            vec![("content-type", "application/jsonp")],
            vec![],
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/policies/errors/rotate",
            vec![("content-type", "text/plain")],
            vec![],
            415,
            "unsupported_media_type",
        ),
        ("POST", "/v1/policies/errors/rotate", json.to_vec(), b"{\"reason\":".to_vec(), 400, "bad_request"),
        // JSON with parameters, and in capitals, is JSON (the unknown policy is what is wrong).
        (
            "POST",
            "/v1/policies/nosuch/rotate",
            vec![("content-type", "application/json; charset=utf-8")],
            b"{}".to_vec(),
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/policies/nosuch/rotate",
            vec![("content-type", "Application/JSON")],
            b"{}".to_vec(),
            404,
            "not_found",
        ),
    ];
    for (method, path, headers, body, status, code) in cases {
        let shown = &path[..path.len().min(60)];
        let (got, content_type, value) = service.raw(method, path, &headers, body).await;
        assert_eq!(got, status, "{method} {shown}: {value}");
        assert!(content_type.starts_with("application/json"), "{method} {shown}: content type `{content_type}`");
        assert_eq!(value["error"], code, "{method} {shown}: {value}");
        assert!(value["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {shown}: {value}");
        assert!(value.as_object().unwrap().keys().all(|k| k == "error" || k == "message"), "{value}");
    }
    // 405 still says what is allowed.
    let r = service.http.get(format!("{}/v1/policies/errors/rotate", service.base)).bearer_auth(&service.token);
    assert_eq!(r.send().await.unwrap().headers()["allow"], "POST");
    // No error echoed the token or the oversized input.
    assert!(!service.log_text().contains(&service.token));
}

/// Issue 9, item 9 (API and CLI): a rotation's `reason` is at most 1 KiB, and a second request
/// for a policy whose request is queued says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_reason_is_bounded_and_a_queued_request_says_queued() {
    let env = Env::start().await;
    let gate = VaultGate::start(&env.vault_addr).await;
    let env = Env {
        env: vec![
            ("VAULT_ADDR".into(), gate.url.clone()),
            ("ROTATOR_CONCURRENCY".into(), "1".into()),
            ("ROTATOR_TICK".into(), "60s".into()),
        ],
        ..env
    };
    let slow = Spec {
        name: "slow".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/slow", env.prefix))],
        grace: "0s",
    };
    let quick = Spec {
        name: "quick".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("quick.json".into())],
        grace: "0s",
    };
    env.policy("slow.yaml", &slow.yaml());
    env.policy("quick.yaml", &quick.yaml());
    env.seed(&slow, &env.legacy(CredentialKind::ApiKey, "slow-legacy").await).await;
    env.seed(&quick, &env.legacy(CredentialKind::ApiKey, "quick-legacy").await).await;
    let creates = env.sim.stats().creates;

    // The CLI refuses before anything happens: no journal, no Toktra call.
    let run = env.rotator(&["rotate", "quick", "--reason", &"r".repeat(1025)]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("--reason") && run.stderr.contains("1024"), "{}", run.stderr);
    assert!(!run.stderr.contains(&"r".repeat(100)), "the message does not echo the reason: {}", run.stderr);
    assert_eq!(env.sim.stats().creates, creates);
    assert!(!env.journal_path().exists(), "nothing was recorded");

    let service = env.serve(&[]).await;
    let (status, body) =
        service.post("/v1/policies/quick/rotate", serde_json::json!({ "reason": "é".repeat(513) })).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    assert!(text(&body, "message").contains("1024"), "{body}");
    let (status, body) = service.get("/v1/rotations").await;
    assert_eq!((status, body["rotations"].as_array().map(Vec::len)), (200, Some(0)), "{body}");

    // `slow` takes the only slot and stays inside a Vault call; `quick` waits in the queue.
    service.get("/v1/policies").await;
    gate.close();
    let (status, body) = service.post("/v1/policies/slow/rotate", serde_json::json!({ "reason": "slow" })).await;
    assert_eq!(status, 202, "{body}");
    let slow_id = text(&body, "id");
    gate.wait_held(&service).await;
    let exactly = "q".repeat(1024);
    let (status, body) = service.post("/v1/policies/quick/rotate", serde_json::json!({ "reason": exactly })).await;
    assert_eq!(status, 202, "a reason of exactly 1024 bytes is fine: {body}");
    let quick_id = text(&body, "id");
    for (policy, id) in [("quick", &quick_id), ("slow", &slow_id)] {
        let (status, row) = service.get(&format!("/v1/rotations/{id}")).await;
        assert_eq!((status, row["phase"].as_str()), (200, Some("queued")), "{row}");
        let (status, body) = service.post(&format!("/v1/policies/{policy}/rotate"), serde_json::json!({})).await;
        assert_eq!((status, body["error"].as_str()), (409, Some("conflict")), "{body}");
        let message = text(&body, "message");
        assert!(message.contains("queued") && message.contains(id.as_str()), "{policy}: {message}");
        assert!(!message.contains("running"), "{policy}: {message}");
    }
    gate.open();
    service.wait_rotation(&slow_id, 30, |r| r["phase"] == "completed").await;
    let done = service.wait_rotation(&quick_id, 30, |r| r["phase"] == "completed").await;
    assert_eq!(done["reason"], exactly);
}

/// Issue 9, item 3: SIGTERM while an accepted request is being started. Its rotation is held
/// inside its first Vault call (reading the destination before anything is recorded) until the
/// service was told to stop: after that nothing is minted, the process exits within its
/// shutdown timeout, and what it left converges on the next run.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_a_request_starts_mints_nothing() {
    let env = Env::start().await;
    let gate = VaultGate::start(&env.vault_addr).await;
    let env = Env {
        env: vec![
            ("VAULT_ADDR".into(), gate.url.clone()),
            ("ROTATOR_TICK".into(), "60s".into()),
            ("ROTATOR_SHUTDOWN_TIMEOUT".into(), "10s".into()),
        ],
        ..env
    };
    let spec = Spec {
        name: "stopping".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/stopping", env.prefix))],
        grace: "0s",
    };
    env.policy("stopping.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "stopping-legacy").await;
    env.seed(&spec, &legacy).await;
    let service = env.serve(&[]).await;
    // Dates the adopted credential (a Vault read) before the gate closes.
    assert_eq!(service.get("/v1/policies/stopping").await.0, 200);
    let creates = env.sim.stats().creates;
    gate.close();
    let (status, body) = service.post("/v1/policies/stopping/rotate", serde_json::json!({ "reason": "late" })).await;
    assert_eq!(status, 202, "{body}");
    let id = text(&body, "id");
    gate.wait_held(&service).await;
    service.signal("TERM");
    service.wait_log("stopping: no new work", 10).await;
    gate.open();
    let mut child = service.child;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits").unwrap();
    let log = std::fs::read_to_string(&service.log).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(env.sim.stats().creates, creates, "nothing was minted after SIGTERM:\n{log}");

    // Nothing started after the stop: at most the request's row was recorded, with nothing
    // minted for it.
    let history = async || -> Vec<Value> {
        let run = env.rotator(&["history", "stopping", "--format", "json"]).await;
        serde_json::from_str::<Value>(&run.assert_code(0).stdout).unwrap().as_array().unwrap().clone()
    };
    let rows = history().await;
    assert!(rows.iter().all(|r| r["id"] == id.as_str()), "{rows:?}");
    if let Some(row) = rows.first() {
        assert_eq!((row["phase"].as_str(), &row["new_credential_id"]), (Some("started"), &Value::Null), "{row}");
    }
    // The next run converges.
    env.rotator(&["rotate", "stopping"]).await.assert_code(0);
    env.assert_converged(&[spec], &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string())])
        .await;
    // The request's rotation, if it was recorded at all, was resumed and completed, not failed.
    let rotations = history().await;
    assert!(rotations.iter().filter(|r| r["id"] == id.as_str()).all(|r| r["phase"] == "completed"), "{rotations:?}");
}

/// Issue 9, item 7 (service part): a reload that cannot finish (a FIFO named like a policy file)
/// blocks neither the API nor later signals, and SIGTERM still ends the process within its
/// shutdown timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_in_the_policy_directory_hangs_neither_reload_nor_shutdown() {
    let env = Env { env: vec![("ROTATOR_SHUTDOWN_TIMEOUT".into(), "5s".into())], ..Env::start().await };
    let spec = Spec {
        name: "steady".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("steady.json".into())],
        grace: "0s",
    };
    env.policy("steady.yaml", &spec.yaml());
    env.seed(&spec, &env.legacy(CredentialKind::ApiKey, "steady-legacy").await).await;
    let service = env.serve(&[]).await;
    let fifo = env.dir.join("policies/x.yaml");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let reloads = || service.log_text().matches("SIGHUP").count();
    for n in 1..=2 {
        service.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads() < n {
            assert!(Instant::now() < deadline, "SIGHUP {n} was not handled:\n{}", service.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for _ in 0..5 {
            let healthz = service.http.get(format!("{}/healthz", service.base)).timeout(Duration::from_secs(2));
            assert_eq!(healthz.send().await.unwrap().status(), 200);
            let (status, body) = service.get("/v1/policies").await;
            assert_eq!((status, body["policies"][0]["name"].as_str()), (200, Some("steady")), "{body}");
        }
    }
    let (status, elapsed, log) = service.terminate(5 + 3).await;
    assert_eq!(status.code(), Some(0), "{log}");
    println!("stopped {elapsed:.1?} after SIGTERM");
}

/// Issue 9, item 17: reloads are visible outside the log. A rejected one logs every problem,
/// sets `rotator_policy_reload_success` to 0 and makes `/readyz` report stale configuration;
/// an accepted one logs what changed.
#[tokio::test(flavor = "multi_thread")]
async fn reloads_show_in_metrics_readyz_and_the_log() {
    let env = Env::start().await;
    let first = Spec {
        name: "first".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("first.json".into())],
        grace: "0s",
    };
    env.policy("first.yaml", &first.yaml());
    env.seed(&first, &env.legacy(CredentialKind::ApiKey, "first-legacy").await).await;
    let service = env.serve(&[]).await;
    let gauge = |metrics: &str, name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    };
    let readyz = async || {
        let r = service.http.get(format!("{}/readyz", service.base)).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let metrics = service.metrics().await;
    assert_eq!(gauge(&metrics, "rotator_policy_reload_success"), 1.0, "{metrics}");
    let started = gauge(&metrics, "rotator_policy_reload_timestamp_seconds");
    assert!(started > 1.7e9, "{metrics}");
    let (status, body) = readyz().await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "{body}");

    // Two problems in one file: both are logged, the metric and /readyz say the set is stale.
    env.policy("bad.yaml", "name: Bad_Name\ncredential: { kind: api_key, name: bad }\nschedule: { every: 10m }\ndestinations:\n  - file: { path: bad.json }\n");
    // The reload's timestamp has whole seconds: wait for the clock to pass the first one.
    while (chrono::Utc::now().timestamp() as f64) <= started {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(15);
    while gauge(&service.metrics().await, "rotator_policy_reload_success") != 0.0 {
        assert!(Instant::now() < deadline, "the rejection never showed in the metrics:\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gauge(&service.metrics().await, "rotator_policy_reload_timestamp_seconds") > started);
    let log = service.log_text();
    let rejected: Vec<&str> = log.lines().filter(|l| l.contains("reload rejected") && l.contains("bad.yaml")).collect();
    assert!(rejected.len() >= 2, "every problem logged: {rejected:?}");
    assert!(
        rejected.iter().any(|l| l.contains("name")) && rejected.iter().any(|l| l.contains("every")),
        "{rejected:?}"
    );
    let (status, body) = readyz().await;
    assert_eq!((status, body["status"].as_str()), (503, Some("not_ready")), "{body}");
    assert_eq!(body["failing"], serde_json::json!(["policies"]), "{body}");
    assert_eq!(body["checks"]["policies"]["ok"], false, "{body}");
    assert!(text(&body["checks"]["policies"], "message").contains("stale"), "{body}");
    assert_eq!(body["checks"]["journal"]["ok"], true, "{body}");
    let (_, policies) = service.get("/v1/policies").await;
    assert_eq!(policies["policies"].as_array().unwrap().len(), 1, "the previous set keeps running");

    // An accepted reload clears it and says what changed.
    std::fs::remove_file(env.dir.join("policies/bad.yaml")).unwrap();
    let second = Spec { name: "second".into(), dests: vec![Dest::File("second.json".into())], ..first.clone() };
    env.policy("second.yaml", &second.yaml());
    service.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(15);
    while gauge(&service.metrics().await, "rotator_policy_reload_success") != 1.0 {
        assert!(Instant::now() < deadline, "the reload never succeeded:\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = readyz().await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "{body}");
    let reloaded = |log: &str| -> Vec<Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["message"] == "policies reloaded")
            .collect()
    };
    let entries = reloaded(&service.log_text());
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (entries[0]["added"].as_str(), entries[0]["removed"].as_str()),
        (Some("second"), Some("")),
        "{entries:?}"
    );

    env.policy("first.yaml", &first.yaml().replace("grace: 0s", "grace: 1h"));
    std::fs::remove_file(env.dir.join("policies/second.yaml")).unwrap();
    service.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(15);
    while reloaded(&service.log_text()).len() < 2 {
        assert!(Instant::now() < deadline, "the second reload was not logged:\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entry = &reloaded(&service.log_text())[1];
    assert_eq!(
        (entry["added"].as_str(), entry["removed"].as_str(), entry["changed"].as_str()),
        (Some(""), Some("second"), Some("first")),
        "{entry}"
    );
}

/// Issue 10, item 1: an accepted request is in the journal before its `202`. The service that
/// accepted it is killed (SIGKILL) before it could record the rotation (its first Vault read is
/// held at the gate); a second service on the same journal, which never saw the request, answers
/// `queued` for it and is stopped (SIGTERM) before it can record it either; a third runs it, with
/// the ID the first one answered, exactly once. Shared with the PostgreSQL test.
pub(crate) async fn a_request_outlives_the_service_that_accepted_it(env: &mut Env) {
    let gate = VaultGate::start(&env.vault_addr).await;
    env.env.extend([
        ("VAULT_ADDR".to_string(), gate.url.clone()),
        ("ROTATOR_TICK".to_string(), "60s".to_string()),
        ("ROTATOR_SHUTDOWN_TIMEOUT".to_string(), "10s".to_string()),
    ]);
    let spec = Spec {
        name: "durable".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/durable", env.prefix))],
        grace: "0s",
    };
    env.policy("durable.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "durable-legacy").await;
    env.seed(&spec, &legacy).await;
    let creates = env.sim.stats().creates;

    let first = env.serve(&[]).await;
    // Dates the adopted credential (a Vault read) before the gate closes.
    assert_eq!(first.get("/v1/policies/durable").await.0, 200);
    gate.close();
    let (status, body) = first.post("/v1/policies/durable/rotate", serde_json::json!({ "reason": "durable" })).await;
    assert_eq!(status, 202, "{body}");
    let id = text(&body, "id");
    gate.wait_held(&first).await;
    let (status, row) = first.get(&format!("/v1/rotations/{id}")).await;
    assert_eq!((status, row["phase"].as_str()), (200, Some("queued")), "{row}");
    first.kill().await;

    // A service that never saw the request knows it from the journal, and refuses a second one.
    let second = env.serve(&[]).await;
    let (status, row) = second.get(&format!("/v1/rotations/{id}")).await;
    assert_eq!(
        (status, row["phase"].as_str(), row["reason"].as_str()),
        (200, Some("queued"), Some("durable")),
        "{row}"
    );
    let (status, body) = second.post("/v1/policies/durable/rotate", serde_json::json!({ "reason": "again" })).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")), "{body}");
    let message = text(&body, "message");
    assert!(message.contains("queued") && message.contains(id.as_str()), "{message}");
    second.signal("TERM");
    second.wait_log("stopping: no new work", 10).await;
    gate.open();
    let mut child = second.child;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits").unwrap();
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(&second.log).unwrap_or_default());
    assert_eq!(env.sim.stats().creates, creates, "nothing was minted by the stopped services");

    let third = env.serve(&[]).await;
    let done = third.wait_rotation(&id, 60, |r| r["phase"] == "completed").await;
    assert_eq!(done["reason"], "durable", "{done}");
    assert_eq!(text(&env.served(&spec.dests[0]).await.unwrap(), "rotation_id"), id);
    let (status, body) = third.get("/v1/rotations?policy=durable").await;
    let rows = body["rotations"].as_array().unwrap();
    assert_eq!((status, rows.len()), (200, 1), "the request ran once: {body}");
    assert_eq!(env.sim.stats().creates, creates + 1);
    let (status, _, log) = third.terminate(20).await;
    assert_eq!(status.code(), Some(0), "{log}");
    env.assert_converged(&[spec], &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string())])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_outlives_the_service_that_accepted_it_on_sqlite() {
    let mut env = Env::start().await;
    a_request_outlives_the_service_that_accepted_it(&mut env).await;
    assert!(env.journal_path().exists());
}

/// Issue 10, item 1: a retried `POST` with the same `Idempotency-Key` (for the same policy)
/// answers with the first request's ID, while it is queued and after it ran, and never starts a
/// second rotation; another key is another request.
#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_answers_with_the_first_request() {
    let env = Env::start().await;
    let spec = Spec {
        name: "retried".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("retried.json".into())],
        grace: "0s",
    };
    env.policy("retried.yaml", &spec.yaml());
    env.seed(&spec, &env.legacy(CredentialKind::ApiKey, "retried-legacy").await).await;
    let service = env.serve(&[]).await;
    let body = serde_json::json!({ "reason": "retried" });

    let (status, first) = service.rotate_with_key("retried", "deploy-42", body.clone()).await;
    assert_eq!(status, 202, "{first}");
    let id = text(&first, "id");
    let (status, again) = service.rotate_with_key("retried", "deploy-42", body.clone()).await;
    assert!(matches!(status, 200 | 202), "{status} {again}");
    assert_eq!(text(&again, "id"), id, "{again}");
    service.wait_rotation(&id, 30, |r| r["phase"] == "completed").await;
    let (status, late) = service.rotate_with_key("retried", "deploy-42", body.clone()).await;
    assert_eq!((status, text(&late, "id")), (200, id.clone()), "{late}");
    let (_, rows) = service.get("/v1/rotations?policy=retried").await;
    assert_eq!(rows["rotations"].as_array().unwrap().len(), 1, "{rows}");
    // The same key with another body is refused (422), not answered as if carried out.
    for other in [
        serde_json::json!({ "reason": "something else" }),
        serde_json::json!({ "reason": "retried", "compromised": true }),
    ] {
        let (status, refused) = service.rotate_with_key("retried", "deploy-42", other.clone()).await;
        assert_eq!((status, refused["error"].as_str()), (422, Some("idempotency_key_reused")), "{other}: {refused}");
        assert!(text(&refused, "message").contains(&id), "{refused}");
    }

    // Another key is another request.
    let (status, other) = service.rotate_with_key("retried", "deploy-43", body.clone()).await;
    assert_eq!(status, 202, "{other}");
    let other = text(&other, "id");
    assert_ne!(other, id);
    service.wait_rotation(&other, 30, |r| r["phase"] == "completed").await;
    let (_, rows) = service.get("/v1/rotations?policy=retried").await;
    assert_eq!(rows["rotations"].as_array().unwrap().len(), 2, "{rows}");

    // A key that is empty, too long or not printable ASCII is refused, and not echoed.
    let long = "k".repeat(256);
    for key in ["", long.as_str(), "a key"] {
        let (status, refused) = service.rotate_with_key("retried", key, body.clone()).await;
        assert_eq!((status, refused["error"].as_str()), (400, Some("bad_request")), "{key:?}: {refused}");
        assert!(key.is_empty() || !text(&refused, "message").contains(key), "{refused}");
    }
}

/// Issue 10, item 1: with several requests waiting for the only slot, a compromise request runs
/// before an ordinary one made earlier.
#[tokio::test(flavor = "multi_thread")]
async fn compromise_requests_go_first() {
    let env = Env::start().await;
    let gate = VaultGate::start(&env.vault_addr).await;
    let env = Env {
        env: vec![
            ("VAULT_ADDR".into(), gate.url.clone()),
            ("ROTATOR_CONCURRENCY".into(), "1".into()),
            ("ROTATOR_TICK".into(), "60s".into()),
        ],
        ..env
    };
    let spec = |name: &str, dest: Dest| Spec {
        name: name.into(),
        kind: CredentialKind::ApiKey,
        dests: vec![dest],
        grace: "0s",
    };
    let slow = spec("slow", Dest::Vault(format!("{}/slow", env.prefix)));
    let plain = spec("a-plain", Dest::File("a-plain.json".into()));
    let urgent = spec("b-urgent", Dest::File("b-urgent.json".into()));
    for s in [&slow, &plain, &urgent] {
        env.policy(&format!("{}.yaml", s.name), &s.yaml());
        env.seed(s, &env.legacy(CredentialKind::ApiKey, &format!("{}-legacy", s.name)).await).await;
    }
    let service = env.serve(&[]).await;
    service.get("/v1/policies").await;
    gate.close();
    let (status, body) = service.post("/v1/policies/slow/rotate", serde_json::json!({ "reason": "slot" })).await;
    assert_eq!(status, 202, "{body}");
    let slow_id = text(&body, "id");
    gate.wait_held(&service).await;
    let (status, body) = service.post("/v1/policies/a-plain/rotate", serde_json::json!({ "reason": "routine" })).await;
    assert_eq!(status, 202, "{body}");
    let plain_id = text(&body, "id");
    let (status, body) = service
        .post("/v1/policies/b-urgent/rotate", serde_json::json!({ "reason": "leaked", "compromised": true }))
        .await;
    assert_eq!(status, 202, "{body}");
    let urgent_id = text(&body, "id");
    gate.open();
    service.wait_rotation(&slow_id, 30, |r| r["phase"] == "completed").await;
    let plain_row = service.wait_rotation(&plain_id, 30, |r| r["phase"] == "completed").await;
    let urgent_row = service.wait_rotation(&urgent_id, 30, |r| r["phase"] == "completed").await;
    let started = |r: &Value| chrono::DateTime::parse_from_rfc3339(&text(r, "started_at")).unwrap();
    assert!(started(&urgent_row) < started(&plain_row), "the compromise request ran first: {urgent_row}\n{plain_row}");
}

/// Issue 10, item 1: the service dies right after recording a request's rotation, before any
/// side effect (the `started` crash point). The request is done with its rotation: the next
/// service resumes that rotation and starts no second one.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_recording_a_request_does_not_run_it_twice() {
    let mut env = Env { env: vec![("ROTATOR_TICK".into(), "60s".into())], ..Env::start().await };
    let spec = Spec {
        name: "once".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("once.json".into())],
        grace: "0s",
    };
    env.policy("once.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "once-legacy").await;
    env.seed(&spec, &legacy).await;
    let creates = env.sim.stats().creates;
    env.env.push(("ROTATOR_CRASH_AT".into(), "started".into()));
    let first = env.serve(&[]).await;
    let (status, body) = first.post("/v1/policies/once/rotate", serde_json::json!({ "reason": "once" })).await;
    assert_eq!(status, 202, "{body}");
    let id = text(&body, "id");
    let mut child = first.child;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("crashes").unwrap();
    assert!(!status.success(), "{}", std::fs::read_to_string(&first.log).unwrap_or_default());
    env.env.pop();

    let second = env.serve(&[]).await;
    let done = second.wait_rotation(&id, 30, |r| r["phase"] == "completed").await;
    assert_eq!(done["reason"], "once", "{done}");
    let (_, rows) = second.get("/v1/rotations?policy=once").await;
    assert_eq!(rows["rotations"].as_array().unwrap().len(), 1, "one rotation for the request: {rows}");
    assert_eq!(env.sim.stats().creates, creates + 1);
    // The request is done: a new one is accepted at once.
    let (status, body) = second.post("/v1/policies/once/rotate", serde_json::json!({ "reason": "next" })).await;
    assert_eq!(status, 202, "{body}");
    let next = text(&body, "id");
    second.wait_rotation(&next, 30, |r| r["phase"] == "completed").await;
    let (status, _, log) = second.terminate(20).await;
    assert_eq!(status.code(), Some(0), "{log}");
    env.assert_converged(&[spec], &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string())])
        .await;
}

/// Issue 10, item 3: `/readyz` is ready only when Toktra's management credential works and
/// (with a Vault policy) the Vault token is valid with time left; each failing check is named.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_checks_toktra_and_the_vault_token() {
    let readyz = async |service: &Service| -> (u16, Value) {
        let r = reqwest::get(format!("{}/readyz", service.base)).await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    };
    let spec = |env: &Env| Spec {
        name: "ready".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/ready", env.prefix))],
        grace: "0s",
    };

    let env = Env::start().await;
    env.policy("ready.yaml", &spec(&env).yaml());
    let service = env.serve(&[]).await;
    let (status, body) = readyz(&service).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["checks"]["toktra"]["ok"].as_bool(), body["checks"]["vault"]["ok"].as_bool()),
        (Some(true), Some(true)),
        "{body}"
    );
    // What the check saw is in the metrics: the token's lifetime (a root token never expires)
    // and when each check last passed.
    let metrics = reqwest::get(format!("{}/metrics", service.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("rotator_vault_token_ttl_seconds 0"), "{metrics}");
    assert!(metrics.contains("rotator_check_last_success_timestamp_seconds{check=\"toktra\"}"), "{metrics}");
    assert!(metrics.contains("rotator_check_last_success_timestamp_seconds{check=\"vault\"}"), "{metrics}");
    service.signal("TERM");

    // Toktra refuses everything, and the Vault token is not one Vault knows.
    let mut env =
        Env::with(sim::Config { faults: sim::Faults { error_rate: 1.0, ..Default::default() }, ..Default::default() })
            .await;
    env.policy("ready.yaml", &spec(&env).yaml());
    env.env.push(("VAULT_TOKEN".into(), "not-a-vault-token".into()));
    let service = env.serve(&[]).await;
    let (status, body) = readyz(&service).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["failing"], serde_json::json!(["toktra", "vault"]), "{body}");
    assert!(!body.to_string().contains("not-a-vault-token"), "no secret in the answer: {body}");
    service.signal("TERM");
}

/// Issue 10, item 5 (part): with `metrics_auth`, `/metrics` needs the API token like `/v1`.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_require_the_token() {
    let mut env = Env::start().await;
    env.policy(
        "m.yaml",
        "name: m\ncredential: { kind: api_key, name: m }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: m.json }\n",
    );
    env.env.push(("ROTATOR_METRICS_AUTH".into(), "true".into()));
    let service = env.serve(&[]).await;
    let plain = reqwest::get(format!("{}/metrics", service.base)).await.unwrap();
    assert_eq!(plain.status(), 401);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized", "{body}");
    let with_token =
        service.http.get(format!("{}/metrics", service.base)).bearer_auth(&service.token).send().await.unwrap();
    assert_eq!(with_token.status(), 200);
    assert!(with_token.text().await.unwrap().contains("rotator_policies 1"));
    assert_eq!(reqwest::get(format!("{}/healthz", service.base)).await.unwrap().status(), 200, "health stays open");
    service.signal("TERM");
}

/// A rotation that fails at a destination is counted under the kind of destination that failed
/// (taken from the failure's type, not its text).
#[tokio::test(flavor = "multi_thread")]
async fn destination_failures_are_counted_by_kind() {
    let env = Env::start().await;
    // A secret that does not exist, which the policy may not create.
    env.policy(
        "missing.yaml",
        "name: missing\ncredential: { kind: api_key, name: missing }\nschedule: { every: 90d }\n\
         destinations:\n  - aws_secrets_manager: { secret_id: '{prefix}/missing' }\n",
    );
    let service = env.serve(&[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = service.metrics().await;
        if metrics.contains("rotator_destination_errors_total{kind=\"aws\"} 1") {
            assert!(metrics.contains("rotator_rotations_total{policy=\"missing\",outcome=\"failed\"} 1"), "{metrics}");
            break;
        }
        assert!(Instant::now() < deadline, "no destination error counted:\n{metrics}\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, log) = service.terminate(30).await;
    assert!(status.success(), "{log}");
}

/// The service's periodic scan finds a credential minted under a policy's name that nothing
/// serves (an orphan a crashed run left) and tells the policy's channel once, naming it.
#[tokio::test(flavor = "multi_thread")]
async fn an_orphan_is_reported_once() {
    let (hook, received) = webhook_receiver().await;

    let env = Env::start().await;
    std::fs::write(
        env.dir.join("rotator.toml"),
        format!("[notifications.ops]\nkind = \"webhook\"\nurl = \"http://{hook}/hook\"\n"),
    )
    .unwrap();
    let spec = Spec {
        name: "orphaned".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("orphaned.json".into())],
        grace: "0s",
    };
    env.policy("orphaned.yaml", &format!("{}notify: [ops]\n", spec.yaml()));
    let legacy = env.legacy(CredentialKind::ApiKey, "orphaned-legacy").await;
    env.seed(&spec, &legacy).await;
    let orphan = env.legacy(CredentialKind::ApiKey, &format!("orphaned-{}", uuid::Uuid::new_v4())).await;
    let service = env.serve(&[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        let got = received.lock().unwrap().clone();
        if let Some(body) = got.iter().find(|b| b.contains("\"event\":\"orphan_found\"")) {
            break body.clone();
        }
        assert!(Instant::now() < deadline, "no orphan reported: {got:?}\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(event.contains(&orphan.id) && event.contains("\"policy\":\"orphaned\""), "{event}");
    let (status, _, log) = service.terminate(30).await;
    assert!(status.success(), "{log}");
    let reports = received.lock().unwrap().iter().filter(|b| b.contains("orphan_found")).count();
    assert_eq!(reports, 1, "reported once");
}

/// A local webhook receiver on a free loopback port: its address (POST to `/hook`) and the bodies
/// it received, in order.
async fn webhook_receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (hook, received)
}

/// A listen address that cannot be bound (here, one the test holds) is refused with exit 2
/// before anything is written: no journal is created.
#[tokio::test(flavor = "multi_thread")]
async fn a_listen_address_in_use_is_refused_before_the_journal_is_created() {
    let mut env = Env::start().await;
    let spec = Spec {
        name: "bound".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("bound.json".into())],
        grace: "0s",
    };
    env.policy("bound.yaml", &spec.yaml());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    env.env.push(("ROTATOR_API_TOKEN".into(), format!("api-{}", uuid::Uuid::new_v4().simple())));
    let run = env.rotator(&["serve", "--listen", &addr]).await;
    run.assert_code(2);
    assert!(run.stderr.contains(&format!("listen {addr}:")), "{}", run.stderr);
    assert!(!env.journal_path().exists(), "the journal was created for a service that could not listen");
    drop(taken);
}
