//! The service as a library: `Service::build` checks and builds without listening, and
//! `Service::run` serves on a listener the caller bound (port 0, its address read from the
//! listener itself) until the caller's shutdown future resolves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rotator::config::Config;
use rotator::daemon::Daemon;
use rotator::secret::Secret;
use rotator::service::{Access, Error, Service};
use serde_json::{Value, json};

use crate::harness::Env;

/// A configuration file for the in-process service: this test's simulator and journal.
fn configure(env: &Env, extra: &str) -> Config {
    std::fs::write(env.dir.join("admin-key"), &env.admin_key).unwrap();
    let text = format!(
        "database_url = \"{}\"\ntick = \"1s\"\nshutdown_timeout = \"20s\"\n{extra}\n[toktra]\napi_url = \"{}\"\napi_key_file = \"{}\"\ntimeout = \"4s\"\n",
        env.journal_path().display(),
        env.sim.base_url(),
        env.dir.join("admin-key").display(),
    );
    let path = env.dir.join("rotator.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path)).unwrap()
}

/// A policy `name` into a file beside the policies, every 90 days, revoking at once.
fn file_policy(env: &Env, name: &str) {
    env.policy(
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\ncredential: {{ kind: api_key, name: '{{prefix}}-{name}' }}\nschedule: {{ every: 90d }}\ndestinations:\n  - file: {{ path: ../out/{name}.json }}\nrevoke: {{ grace: 0s }}\n"
        ),
    );
}

/// Records a queued request in the journal, as another replica that accepted it would; its ID.
async fn queue_request(env: &Env, policy: &str, reason: &str, compromised: bool) -> String {
    let journal = rotator::journal::Journal::open(&env.journal_path().display().to_string()).await.unwrap();
    let id = uuid::Uuid::now_v7().to_string();
    let request = rotator::journal::Request {
        id: id.clone(),
        policy: policy.into(),
        reason: Some(reason.into()),
        compromised,
        idempotency_key: None,
        created_at: chrono::Utc::now(),
        state: rotator::journal::RequestState::Queued,
    };
    journal.add_request(&request).await.unwrap();
    id
}

/// A service built from this test's policy directory and running in this process.
struct Running {
    base: String,
    token: String,
    http: reqwest::Client,
    daemon: Arc<Daemon>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Builds the service (calling `before_run` between building and running) and runs it on a
    /// port-0 listener this test binds.
    async fn start(env: &Env, config: &Config, before_run: impl FnOnce()) -> Running {
        let policies = rotator::policy::load_dir(&env.dir.join("policies")).unwrap();
        let token = format!("api-{}", uuid::Uuid::new_v4().simple());
        let service = Service::build(config, env.dir.join("policies"), policies, Access::Token(Secret::new(&token)))
            .await
            .unwrap_or_else(|e| panic!("build: {e}"));
        let daemon = service.daemon().clone();
        before_run();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.run(listener, async move {
            let _ = stopped.await;
        }));
        Running { base, token, http: reqwest::Client::new(), daemon, stop, task }
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        r.json().await.unwrap_or(Value::Null)
    }

    /// A metric without labels, from `/metrics`.
    async fn gauge(&self, name: &str) -> f64 {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap();
        let line = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
        line.unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}")).trim().parse().unwrap()
    }

    /// Polls the rotation until its phase is `phase`, failing with `why` after `within`.
    async fn wait_phase(&self, id: &str, phase: &str, within: Duration, why: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let body = self.get(&format!("/v1/rotations/{id}")).await;
            if body["phase"] == phase {
                return body;
            }
            assert!(Instant::now() < deadline, "{why}: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resolves the shutdown future and waits for `run` to end; its result.
    async fn stop(self) -> Result<(), Error> {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("run ended after the stop").unwrap()
    }
}

/// Built, then run on a listener the test owns: the first pass rotates the new policy, an
/// on-demand request is served at the listener's address, and the service ends when the test's
/// shutdown future resolves, closing the port.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_runs_on_a_listener_its_caller_owns() {
    let env = Env::start().await;
    file_policy(&env, "embedded");
    let service = Running::start(&env, &configure(&env, ""), || {}).await;

    // Never rotated: the first pass rotates it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = service.get("/v1/rotations?policy=embedded").await;
        if body["rotations"].as_array().is_some_and(|list| list.iter().any(|r| r["phase"] == "completed")) {
            break;
        }
        assert!(Instant::now() < deadline, "the first pass did not rotate the policy: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.dir.join("out/embedded.json").exists());

    // On demand, through the listener the test bound.
    let r = service
        .http
        .post(format!("{}/v1/policies/embedded/rotate", service.base))
        .bearer_auth(&service.token)
        .json(&json!({ "reason": "embedded" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    service.wait_phase(&id, "completed", Duration::from_secs(30), "the requested rotation did not complete").await;

    // The caller's shutdown future ends it, with the port closed.
    let base = service.base.clone();
    service.stop().await.unwrap_or_else(|e| panic!("run: {e}"));
    let after = reqwest::Client::new().get(format!("{base}/healthz")).send().await;
    assert!(after.is_err(), "the port still answers after run ended: {after:?}");
}

/// A policy set the configuration cannot run is refused by `build` with its place, before the
/// journal is created and before anything is connected to: the configuration names a Vault
/// (AppRole) that nothing listens for, and the refusal is the policy's, not a failed login.
#[tokio::test(flavor = "multi_thread")]
async fn building_refuses_what_the_configuration_cannot_run_and_writes_nothing() {
    let env = Env::start().await;
    env.policy(
        "p.yaml",
        "name: unheard\ncredential: { kind: api_key, name: '{prefix}-unheard' }\nschedule: { every: 90d }\ndestinations:\n  - file: { path: ../out/unheard.json }\nnotify: [pager]\n",
    );
    std::fs::write(env.dir.join("secret-id"), "never-sent").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let vault = format!(
        "[vault]\naddr = \"http://{closed}\"\nauth = \"approle\"\n[vault.approle]\nrole_id = \"rotator\"\nsecret_id_file = \"{}\"\n",
        env.dir.join("secret-id").display()
    );
    let config = configure(&env, &vault);
    let policies = rotator::policy::load_dir(&env.dir.join("policies")).unwrap();
    let built = tokio::time::timeout(
        Duration::from_secs(30),
        Service::build(&config, env.dir.join("policies"), policies, Access::Open),
    )
    .await
    .expect("build answered");
    let Err(Error::Policies(invalid)) = built else { panic!("built a service whose channel is not defined") };
    let text = invalid.to_string();
    assert!(text.contains("p.yaml:1:1: notify: channel `pager` is not defined in the configuration"), "{text}");
    assert!(!env.journal_path().exists(), "the journal was created for a service that was refused");
}

/// An open request of a policy this service's set lacks (accepted by a replica that has it, or
/// left by a policy removed since) is neither run nor dropped: it stays queued, says why, and
/// runs once the policy is in the set.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_for_a_policy_the_set_lacks_waits_for_it_and_says_so() {
    let env = Env::start().await;
    file_policy(&env, "kept");
    // Another replica, whose set has `elsewhere`, accepted a request for it.
    let id = queue_request(&env, "elsewhere", "accepted by another replica", false).await;
    let service = Running::start(&env, &configure(&env, ""), || {}).await;
    // Two whole passes later, it is still queued, and says why.
    let deadline = Instant::now() + Duration::from_secs(30);
    while service.gauge("rotator_reconcile_passes_total").await < 2.0 {
        assert!(Instant::now() < deadline, "fewer than two passes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queued = service.get(&format!("/v1/rotations/{id}")).await;
    assert_eq!(queued["phase"], "queued", "{queued}");
    assert_eq!(service.gauge("rotator_requests_waiting_elsewhere").await, 1.0);
    let waiting = queued["waiting"].as_str().unwrap_or_default();
    assert!(waiting.contains("policy `elsewhere` is not in this service's policy set"), "{queued}");

    // Once the set has the policy, the request runs under its ID.
    file_policy(&env, "elsewhere");
    assert!(matches!(service.daemon.reload().await, rotator::daemon::Reloaded::Accepted(2)));
    let done = service
        .wait_phase(&id, "completed", Duration::from_secs(30), "the request did not run once its policy was loaded")
        .await;
    assert_eq!(done["reason"], "accepted by another replica", "{done}");
    assert!(done.get("waiting").is_none_or(Value::is_null), "{done}");
    assert_eq!(service.gauge("rotator_requests_waiting_elsewhere").await, 0.0);
    service.stop().await.unwrap();
}

/// A request runs while the same pass is still dating a credential the journal does not know:
/// dating reads the destinations (here a Vault held at a closed gate), and it waits for the
/// pass's jobs to start, not the other way round.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_does_not_wait_for_a_slow_destination_of_another_policy() {
    let env = Env::start().await;
    let gate = crate::service::VaultGate::start(&env.vault_addr).await;
    std::fs::write(env.dir.join("vault-token"), &env.vault_token).unwrap();
    let vault =
        format!("[vault]\naddr = \"{}\"\ntoken_file = \"{}\"\n", gate.url, env.dir.join("vault-token").display());
    env.policy(
        "adopted.yaml",
        "name: adopted\ncredential: { kind: api_key, name: '{prefix}-adopted' }\nschedule: { every: 90d }\ndestinations:\n  - vault: { mount: secret, path: '{prefix}/adopted' }\n",
    );
    file_policy(&env, "asked");
    let id = queue_request(&env, "asked", "now", true).await;
    // From the end of the build on, whatever is sent to Vault is held.
    let service = Running::start(&env, &configure(&env, &vault), || gate.close()).await;
    // Well before the 15 s after which rotator gives up on the held Vault call: a pass that
    // dated first would start the request only then.
    service.wait_phase(&id, "completed", Duration::from_secs(10), "the request waited for the held Vault").await;
    assert!(gate.holding(), "the pass was not dating the Vault policy meanwhile, so this proved nothing");
    gate.open();
    service.stop().await.unwrap();
}
