//! Notifications that reach people, heard by a local receiver: PagerDuty Events v2 (a trigger
//! per problem, a resolve when the policy recovers), HMAC-signed generic webhooks verified here
//! independently of rotator's code, `rotator rotate` as a scheduled job telling the same
//! channels as `serve` before it exits, and the configuration's refusals.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use rotator::policy::CredentialKind;
use rotator::sim::Faults;
use serde_json::{Value, json};

use crate::harness::{Dest, Env, Spec, credential_json, text};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Heard {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Heard {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An HTTP receiver on loopback that answers `202` to every POST (as PagerDuty does) and keeps
/// what it heard.
struct Receiver {
    addr: SocketAddr,
    heard: Arc<Mutex<Vec<Heard>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
        let store = heard.clone();
        let app = axum::Router::new().fallback(axum::routing::post(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
                let store = store.clone();
                async move {
                    let headers = headers
                        .iter()
                        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
                        .collect();
                    store.lock().unwrap().push(Heard { path: uri.path().to_string(), headers, body });
                    (axum::http::StatusCode::ACCEPTED, r#"{"status":"success","message":"Event processed"}"#)
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, heard }
    }

    fn heard(&self, path: &str) -> Vec<Heard> {
        self.heard.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect()
    }

    fn all(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }

    /// Waits (at most 60 s) until `done` holds for what `path` heard.
    async fn wait(&self, path: &str, log: impl Fn() -> String, done: impl Fn(&[Heard]) -> bool) -> Vec<Heard> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let heard = self.heard(path);
            if done(&heard) {
                return heard;
            }
            assert!(Instant::now() < deadline, "{path} never heard enough: {heard:#?}\n{}", log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// PagerDuty events of `heard` as `(event_action, dedup_key)`.
fn actions(heard: &[Heard]) -> Vec<(String, String)> {
    heard.iter().map(|h| h.json()).map(|v| (text(&v, "event_action"), text(&v, "dedup_key"))).collect()
}

fn pair(action: &str, key: &str) -> (String, String) {
    (action.to_string(), key.to_string())
}

/// Webhook events of `heard`, by their `event` field.
fn events(heard: &[Heard]) -> Vec<String> {
    heard.iter().map(|h| text(&h.json(), "event")).collect()
}

/// Checks a generic webhook's signature as a receiver following the README would: the
/// timestamp is recent, and `X-Rotator-Signature` is `sha256=` and the hex HMAC-SHA256 of
/// `<timestamp>.<body>` (compared in constant time).
fn verify(heard: &Heard, secret: &str) -> Result<(), String> {
    let timestamp = heard.header("x-rotator-timestamp").ok_or("no X-Rotator-Timestamp")?;
    let at: i64 = timestamp.parse().map_err(|_| format!("timestamp `{timestamp}` is not a number"))?;
    if (chrono::Utc::now().timestamp() - at).abs() > 300 {
        return Err(format!("timestamp {at} is not within 5 minutes of now"));
    }
    let signature = heard.header("x-rotator-signature").ok_or("no X-Rotator-Signature")?;
    let hex = signature.strip_prefix("sha256=").ok_or_else(|| format!("`{signature}` does not start with sha256="))?;
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{hex}` is not hex"))?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(heard.body.as_bytes());
    mac.verify_slice(&bytes).map_err(|_| "the signature does not match".to_string())
}

/// Asserts that no secret appears anywhere in `heard` or `logs`, except the routing key in
/// the `routing_key` field of what PagerDuty is sent (where it must be).
fn assert_no_secret(heard: &[Heard], logs: &[&str], secrets: &[&str], routing_key: Option<&str>) {
    let secrets: Vec<&str> = secrets.iter().copied().chain(routing_key).collect();
    for h in heard {
        let mut value = h.json();
        if let Some(key) = routing_key
            && h.path == "/v2/enqueue"
        {
            assert_eq!(value["routing_key"], key, "PagerDuty gets its routing key: {}", h.body);
            value.as_object_mut().unwrap().remove("routing_key");
        }
        let rest = format!("{value} {:?}", h.headers);
        for secret in &secrets {
            assert!(!rest.contains(secret), "a secret in a notification to {}: {rest}", h.path);
        }
    }
    for log in logs {
        for secret in &secrets {
            assert!(!log.contains(secret), "a secret in the log:\n{log}");
        }
    }
}

/// A file destination holding a hand-made credential last rotated 100 days ago: overdue for a
/// 90-day schedule. Returns the legacy secret.
async fn overdue_policy(env: &Env, name: &str, notify: &str) -> (Spec, String) {
    let spec = Spec {
        name: name.into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File(format!("{name}.json").into())],
        grace: "0s",
    };
    env.policy(&format!("{name}.yaml"), &format!("{}notify: [{notify}]\n", spec.yaml()));
    let legacy = env.legacy(CredentialKind::ApiKey, &format!("{name}-legacy")).await;
    let mut value = credential_json(CredentialKind::ApiKey, &legacy.id, &legacy.secret);
    value["rotated_at"] = json!((chrono::Utc::now() - chrono::Duration::days(100)).to_rfc3339());
    std::fs::write(env.dir.join(format!("policies/{name}.json")), value.to_string()).unwrap();
    (spec, legacy.secret.expose().to_string())
}

/// What the policy's file destination serves now: its secret.
fn served_secret(env: &Env, name: &str) -> String {
    let value: Value =
        serde_json::from_str(&std::fs::read_to_string(env.dir.join(format!("policies/{name}.json"))).unwrap()).unwrap();
    text(&value, "api_key")
}

/// `serve` signs every request to a generic webhook that has a signing secret (one from a
/// variable, one from a file); the receiver verifies each with its channel's secret, and neither
/// with the other's nor after a change to the body. No secret reaches a body or the log.
#[tokio::test(flavor = "multi_thread")]
async fn serve_signs_its_webhooks_so_receivers_can_verify_them() {
    let receiver = Receiver::start().await;
    let mut env = Env::start().await;
    let ops_secret = format!("whsec-{}", uuid::Uuid::new_v4().simple());
    let audit_secret = format!("whsec-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(env.dir.join("audit-secret"), format!("{audit_secret}\n")).unwrap();
    std::fs::write(
        env.dir.join("rotator.toml"),
        format!(
            r#"[notifications.ops]
kind = "webhook"
url = "http://{addr}/ops"
signing_secret_env = "OPS_SIGNING_SECRET"

[notifications.audit]
kind = "webhook"
url = "http://{addr}/audit"
signing_secret_file = "audit-secret"
"#,
            addr = receiver.addr
        ),
    )
    .unwrap();
    env.env.push(("OPS_SIGNING_SECRET".into(), ops_secret.clone()));
    env.env.push(("ROTATOR_ROTATION_BUDGET".into(), "3s".into()));
    let (_spec, legacy_secret) = overdue_policy(&env, "signed", "ops, audit").await;
    env.sim.set_faults(Faults { create_error_rate: 1.0, ..Default::default() });
    let service = env.serve(&[]).await;
    let told = |h: &[Heard]| {
        events(h).contains(&"policy_overdue".to_string()) && events(h).contains(&"rotation_failed".to_string())
    };
    let ops = receiver.wait("/ops", || service.log_text(), told).await;
    let audit = receiver.wait("/audit", || service.log_text(), told).await;
    for (heard, secret, other) in [(&ops, &ops_secret, &audit_secret), (&audit, &audit_secret, &ops_secret)] {
        for h in heard.iter() {
            verify(h, secret).unwrap_or_else(|e| panic!("{e}: {h:#?}"));
            assert!(verify(h, other).is_err(), "verifies with another channel's secret: {h:#?}");
            let forged = Heard { body: h.body.replace("signed", "signet"), ..h.clone() };
            assert!(verify(&forged, secret).is_err(), "a changed body verifies: {h:#?}");
        }
    }
    assert_no_secret(
        &receiver.all(),
        &[&service.log_text()],
        &[&legacy_secret, &env.admin_key, &service.token, &ops_secret, &audit_secret],
        None,
    );
}

/// `serve` pages PagerDuty when a policy is overdue and when its rotation fails, each under a
/// stable dedup key with the routing key from a file, and resolves both once a rotation of the
/// policy succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn pagerduty_is_paged_by_serve_and_resolved_when_the_policy_recovers() {
    let receiver = Receiver::start().await;
    let mut env = Env::start().await;
    let routing_key = format!("R{}", uuid::Uuid::new_v4().simple());
    std::fs::write(env.dir.join("pagerduty-key"), format!("{routing_key}\n")).unwrap();
    std::fs::write(
        env.dir.join("rotator.toml"),
        format!(
            "[notifications.pager]\nkind = \"pagerduty\"\nurl = \"http://{}/v2/enqueue\"\nrouting_key_file = \"pagerduty-key\"\n",
            receiver.addr
        ),
    )
    .unwrap();
    let (_spec, legacy_secret) = overdue_policy(&env, "paged", "pager").await;
    env.sim.set_faults(Faults { create_error_rate: 1.0, ..Default::default() });
    env.env.push(("ROTATOR_ROTATION_BUDGET".into(), "3s".into()));
    let service = env.serve(&[]).await;

    let heard = receiver
        .wait(
            "/v2/enqueue",
            || service.log_text(),
            |h| {
                let a = actions(h);
                a.contains(&pair("trigger", "rotator/paged/overdue"))
                    && a.contains(&pair("trigger", "rotator/paged/rotation"))
            },
        )
        .await;
    let failed = heard.iter().map(Heard::json).find(|v| v["dedup_key"] == "rotator/paged/rotation").unwrap();
    let payload = &failed["payload"];
    assert_eq!(payload["severity"], "error", "{failed}");
    assert_eq!(payload["source"], "rotator", "{failed}");
    assert_eq!(payload["component"], "paged", "{failed}");
    assert_eq!(payload["class"], "rotation_failed", "{failed}");
    assert_eq!(payload["custom_details"]["policy"], "paged", "{failed}");
    assert!(text(payload, "summary").starts_with("rotator: rotation of paged failed"), "{failed}");
    chrono::DateTime::parse_from_rfc3339(&text(payload, "timestamp")).expect("an RFC 3339 timestamp");
    let overdue = heard.iter().map(Heard::json).find(|v| v["dedup_key"] == "rotator/paged/overdue").unwrap();
    assert_eq!(overdue["payload"]["severity"], "warning", "{overdue}");
    assert!(
        !actions(&heard).iter().any(|(action, _)| action == "resolve"),
        "nothing is resolved while the policy fails: {heard:#?}"
    );

    // Toktra works again and someone asks for a rotation: it succeeds, and both alerts resolve.
    env.sim.set_faults(Faults::default());
    let (status, body) = service.post("/v1/policies/paged/rotate", json!({ "reason": "toktra is back" })).await;
    assert_eq!(status, 202, "{body}");
    service.wait_rotation(&text(&body, "id"), 60, |r| r["phase"] == "completed").await;
    let heard = receiver
        .wait(
            "/v2/enqueue",
            || service.log_text(),
            |h| {
                let a = actions(h);
                a.contains(&pair("resolve", "rotator/paged/rotation"))
                    && a.contains(&pair("resolve", "rotator/paged/overdue"))
            },
        )
        .await;
    let a = actions(&heard);
    let last_trigger = a.iter().rposition(|(action, _)| action == "trigger").unwrap();
    let first_resolve = a.iter().position(|(action, _)| action == "resolve").unwrap();
    assert!(last_trigger < first_resolve, "resolved after the triggers: {a:?}");

    let log = service.log_text();
    assert!(!log.contains(&format!("{}/v2/enqueue", receiver.addr)), "the channel's URL stays out of the log");
    let new_secret = served_secret(&env, "paged");
    assert_no_secret(
        &receiver.all(),
        &[&log],
        &[&legacy_secret, &new_secret, &env.admin_key, &service.token],
        Some(&routing_key),
    );
}

/// `rotator rotate --due` run as a scheduled job tells the channels what `serve` would, and has
/// delivered it when it exits: a failed run pages PagerDuty (overdue and failed) and posts signed
/// webhooks; the next, successful run resolves both alerts and posts the success to the channel
/// that asked for successes; a run Toktra refuses tells that the rotation could not run. Each
/// webhook's signature verifies with its own secret (one from a variable, one from a file) and
/// with no other.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotate_job_tells_the_same_channels_before_it_exits_and_signs_its_webhooks() {
    let receiver = Receiver::start().await;
    let mut env = Env::start().await;
    let audit_secret = format!("whsec-{}", uuid::Uuid::new_v4().simple());
    let archive_secret = format!("whsec-{}", uuid::Uuid::new_v4().simple());
    let routing_key = format!("R{}", uuid::Uuid::new_v4().simple());
    std::fs::write(env.dir.join("archive-secret"), &archive_secret).unwrap();
    std::fs::write(
        env.dir.join("rotator.toml"),
        format!(
            r#"[notifications.audit]
kind = "webhook"
url = "http://{addr}/audit"
signing_secret_env = "AUDIT_SIGNING_SECRET"
on_success = true

[notifications.archive]
kind = "webhook"
url = "http://{addr}/archive"
signing_secret_file = "archive-secret"

[notifications.pager]
kind = "pagerduty"
url = "http://{addr}/v2/enqueue"
routing_key_env = "PAGERDUTY_ROUTING_KEY"
"#,
            addr = receiver.addr
        ),
    )
    .unwrap();
    env.env.push(("AUDIT_SIGNING_SECRET".into(), audit_secret.clone()));
    env.env.push(("PAGERDUTY_ROUTING_KEY".into(), routing_key.clone()));
    env.env.push(("ROTATOR_ROTATION_BUDGET".into(), "3s".into()));
    let (_spec, legacy_secret) = overdue_policy(&env, "job", "audit, archive, pager").await;

    // Toktra refuses to create: the run fails, and has told everyone by the time it exits.
    env.sim.set_faults(Faults { create_error_rate: 1.0, ..Default::default() });
    let failed = env.rotator(&["rotate", "--due"]).await;
    failed.assert_code(1);
    let audit = receiver.heard("/audit");
    let archive = receiver.heard("/archive");
    let pager = receiver.heard("/v2/enqueue");
    assert_eq!(events(&audit), ["policy_overdue", "rotation_failed"], "{audit:#?}\n{}", failed.stderr);
    assert_eq!(events(&archive), ["policy_overdue", "rotation_failed"], "{archive:#?}");
    assert_eq!(
        actions(&pager),
        [pair("trigger", "rotator/job/overdue"), pair("trigger", "rotator/job/rotation")],
        "{pager:#?}"
    );
    assert_eq!(audit[1].json()["policy"], "job");
    assert!(text(&audit[1].json(), "error").contains("500"), "{}", audit[1].body);

    // Toktra is back: the next run rotates; the alerts resolve and the success is told to the
    // channel that wants successes only.
    env.sim.set_faults(Faults::default());
    let ok = env.rotator(&["rotate", "--due"]).await;
    ok.assert_code(0);
    let audit = receiver.heard("/audit");
    let archive = receiver.heard("/archive");
    let pager = receiver.heard("/v2/enqueue");
    assert_eq!(events(&audit)[2..], ["rotation_succeeded"], "{audit:#?}\n{}", ok.stderr);
    assert_eq!(archive.len(), 2, "no success for a channel without on_success: {archive:#?}");
    assert_eq!(
        actions(&pager)[2..],
        [
            pair("resolve", "rotator/job/rotation"),
            pair("resolve", "rotator/job/overdue"),
            pair("resolve", "rotator/job/revocation"),
        ],
        "{pager:#?}"
    );
    assert!(pager[2..].iter().all(|h| h.json().get("payload").is_none()), "a resolve carries no payload");

    // Every webhook request is signed; each verifies with its channel's secret only, and a body
    // changed on the way does not.
    for (heard, secret, other) in [(&audit, &audit_secret, &archive_secret), (&archive, &archive_secret, &audit_secret)]
    {
        for h in heard.iter() {
            verify(h, secret).unwrap_or_else(|e| panic!("{e}: {h:#?}"));
            assert!(verify(h, other).is_err(), "verifies with another channel's secret: {h:#?}");
            let forged = Heard { body: h.body.replace("job", "jab"), ..h.clone() };
            assert!(verify(&forged, secret).is_err(), "a changed body verifies: {h:#?}");
        }
    }
    assert!(pager.iter().all(|h| h.header("x-rotator-signature").is_none()), "PagerDuty requests are not signed");

    // A run that cannot start (Toktra refuses the management credential) tells each policy it
    // was asked to rotate that its rotation could not run, and still exits 2.
    let wrong_key = format!("tk_admin_{}", uuid::Uuid::new_v4().simple());
    let refused = Env { env: [env.env.clone(), vec![("TOKTRA_API_KEY".into(), wrong_key.clone())]].concat(), ..env };
    let unusable = refused.rotator(&["rotate", "job"]).await;
    unusable.assert_code(2);
    let audit = receiver.heard("/audit");
    assert_eq!(events(&audit)[3..], ["rotation_failed"], "{audit:#?}\n{}", unusable.stderr);
    let error = text(&audit[3].json(), "error");
    assert!(error.starts_with("the rotation could not run: toktra is not usable"), "{error}");
    assert_eq!(actions(&receiver.heard("/v2/enqueue"))[5..], [pair("trigger", "rotator/job/rotation")]);
    verify(&audit[3], &audit_secret).unwrap();

    let new_secret = served_secret(&refused, "job");
    assert_no_secret(
        &receiver.all(),
        &[&failed.stdout, &failed.stderr, &ok.stdout, &ok.stderr, &unusable.stdout, &unusable.stderr],
        &[&legacy_secret, &new_secret, &refused.admin_key, &wrong_key, &audit_secret, &archive_secret],
        Some(&routing_key),
    );
}

/// A job that finishes a rotation a crashed run left (the resumed rotation promotes, so no new
/// one starts) tells that the policy is no longer overdue: the overdue alert resolves, and no
/// alert is raised for an overdue state the run ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotate_job_that_finishes_a_crashed_rotation_resolves_the_overdue_alert() {
    let receiver = Receiver::start().await;
    let mut env = Env::start().await;
    let routing_key = format!("R{}", uuid::Uuid::new_v4().simple());
    std::fs::write(
        env.dir.join("rotator.toml"),
        format!(
            "[notifications.pager]\nkind = \"pagerduty\"\nurl = \"http://{}/v2/enqueue\"\nrouting_key_env = \"PAGERDUTY_ROUTING_KEY\"\n",
            receiver.addr
        ),
    )
    .unwrap();
    env.env.push(("PAGERDUTY_ROUTING_KEY".into(), routing_key.clone()));
    let (_spec, legacy_secret) = overdue_policy(&env, "crashed", "pager").await;
    let crashing = Env { env: [env.env.clone(), vec![("ROTATOR_CRASH_AT".into(), "verified".into())]].concat(), ..env };
    let crashed = crashing.rotator(&["rotate", "--due"]).await;
    assert_eq!(crashed.code, -1, "killed at the crash point: {}", crashed.stderr);
    let env = Env { env: crashing.env[..1].to_vec(), ..crashing };

    let run = env.rotator(&["rotate", "--due", "--format", "json"]).await;
    run.assert_code(0);
    let outcomes: Value = serde_json::from_str(&run.stdout).unwrap();
    let rotations = outcomes[0]["rotations"].as_array().unwrap();
    assert!(
        rotations.len() == 1 && rotations[0]["resumed"] == true && rotations[0]["status"] == "completed",
        "only the crashed rotation, resumed to completion: {}",
        run.stdout
    );
    let pager = receiver.heard("/v2/enqueue");
    let a = actions(&pager);
    assert!(a.iter().all(|(action, _)| action == "resolve"), "nothing triggered: {a:?}\n{}", run.stderr);
    for key in ["rotator/crashed/rotation", "rotator/crashed/overdue", "rotator/crashed/revocation"] {
        assert!(a.contains(&pair("resolve", key)), "{key} resolved: {a:?}");
    }
    let new_secret = served_secret(&env, "crashed");
    assert_no_secret(
        &pager,
        &[&crashed.stderr, &run.stdout, &run.stderr],
        &[&legacy_secret, &new_secret, &env.admin_key],
        Some(&routing_key),
    );
}

/// A channel's mistakes are refused before anything runs (exit 2), pointing at the key and its
/// line in rotator.toml, and never repeating a secret.
#[tokio::test(flavor = "multi_thread")]
async fn notification_channels_are_checked_and_errors_point_at_the_key() {
    let env = Env::start().await;
    let short = "tooshort-s3cr3t";
    std::fs::write(env.dir.join("short-secret"), short).unwrap();
    let cases = [
        ("[notifications.pager]\nkind = \"pagerduty\"\n", "rotator.toml:1 (notifications.pager): no routing key"),
        (
            "[notifications.pager]\nkind = \"pagerduty\"\nrouting_key_env = \"NOT_SET_ANYWHERE\"\n",
            "rotator.toml:3 (notifications.pager.routing_key_env): the variable NOT_SET_ANYWHERE is not set",
        ),
        (
            "[notifications.audit]\nkind = \"webhook\"\nurl = \"https://hooks.example.com/x\"\nsigning_secret_env = \"NOT_SET_ANYWHERE\"\n",
            "rotator.toml:4 (notifications.audit.signing_secret_env): the variable NOT_SET_ANYWHERE is not set",
        ),
        (
            "[notifications.audit]\nkind = \"webhook\"\nurl = \"https://hooks.example.com/x\"\nsigning_secret_env = \"X\"\nsigning_secret_file = \"short-secret\"\n",
            "rotator.toml:4 (notifications.audit.signing_secret_env): set `signing_secret_env` or `signing_secret_file`, not both",
        ),
        (
            "[notifications.audit]\nkind = \"webhook\"\nurl = \"http://hooks.example.com/x\"\n",
            "rotator.toml:3 (notifications.audit.url): plain http:// to `hooks.example.com`",
        ),
        (
            "[notifications.pager]\nkind = \"pagerduty\"\nurl = \"http://events.example.com/v2/enqueue\"\nrouting_key_file = \"short-secret\"\n",
            "rotator.toml:3 (notifications.pager.url): plain http:// to `events.example.com`",
        ),
        (
            "[notifications.audit]\nkind = \"webhook\"\nurl = \"https://hooks.example.com/x\"\n\nsigning_secret_file = \"short-secret\"\n",
            "rotator.toml:5 (notifications.audit.signing_secret_file): the signing secret must be at least 32 characters",
        ),
        (
            "[notifications.chat]\nkind = \"slack\"\nurl = \"https://hooks.example.com/x\"\nsigning_secret_file = \"short-secret\"\n",
            "rotator.toml:4 (notifications.chat.signing_secret_file): only `webhook` channels are signed",
        ),
        (
            "[notifications.audit]\nkind = \"webhook\"\nurl = \"https://hooks.example.com/x\"\nrouting_key_file = \"short-secret\"\n",
            "rotator.toml:4 (notifications.audit.routing_key_file): only `pagerduty` channels take a routing key",
        ),
        (
            "[notifications.pager]\nkind = \"pagerduty\"\nrouting_key_file = \"short-secret\"\non_success = true\n",
            "rotator.toml:4 (notifications.pager.on_success): PagerDuty channels hear of problems only",
        ),
    ];
    for (toml, expected) in cases {
        std::fs::write(env.dir.join("rotator.toml"), toml).unwrap();
        let run = env.rotator(&["rotate", "--all"]).await;
        assert_eq!(run.code, 2, "{toml}\n{}\n{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(expected), "wanted `{expected}` for\n{toml}\ngot: {}", run.stderr);
        assert!(!run.stderr.contains(short) && !run.stdout.contains(short), "a secret repeated: {}", run.stderr);
    }
}
