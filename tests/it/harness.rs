//! Test harness: a fresh namespace per test (its own simulator, scratch directory, journal,
//! Vault paths and AWS secret names under a random prefix), the `rotator` binary run as a child
//! process, and direct readers for what the destinations and Toktra hold. OpenBao and moto are
//! started by `scripts/test`; without them a test fails at once with a hint.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use chrono::{DateTime, Utc};
use rotator::policy::CredentialKind;
use rotator::secret::Secret;
use rotator::sim;
use rotator::toktra;
use serde_json::Value;

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `scripts/test`, which starts OpenBao and moto on loopback ports")
    })
}

pub struct Env {
    pub sim: sim::Simulator,
    pub admin_key: String,
    pub dir: PathBuf,
    /// Unique per test: Vault paths and AWS secret names live under it.
    pub prefix: String,
    pub vault_addr: String,
    pub vault_token: String,
    pub aws_endpoint: String,
    /// Extra environment for the child process.
    pub env: Vec<(String, String)>,
    /// Manage Toktra with this admin OAuth client instead of the admin API key.
    pub admin_client: Option<(String, String)>,
}

/// What a `rotator` run printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "exit code\n--- stdout ---\n{}\n--- stderr ---\n{}", self.stdout, self.stderr);
        self
    }
}

impl Env {
    pub async fn start() -> Env {
        Env::with(sim::Config::default()).await
    }

    pub async fn with(mut config: sim::Config) -> Env {
        let vault_addr = required("ROTATOR_TEST_VAULT_ADDR");
        let vault_token = required("ROTATOR_TEST_VAULT_TOKEN");
        let aws_endpoint = required("ROTATOR_TEST_AWS_ENDPOINT");
        let admin_key = format!("tk_admin_{}", uuid::Uuid::new_v4().simple());
        if config.admin_api_key.is_none() {
            config.admin_api_key = Some(admin_key.clone());
        }
        let admin_client = config.admin_client.clone();
        let sim = sim::Simulator::start(0, config).await.expect("start the Toktra simulator");
        let prefix = format!("it-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&prefix);
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        Env { sim, admin_key, dir, prefix, vault_addr, vault_token, aws_endpoint, env: Vec::new(), admin_client }
    }

    /// Writes a policy file; `{prefix}` in the text becomes this test's prefix.
    pub fn policy(&self, file: &str, yaml: &str) {
        std::fs::write(self.dir.join("policies").join(file), yaml.replace("{prefix}", &self.prefix)).unwrap();
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.db")
    }

    /// The `rotator` command with this test's environment, not yet started.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rotator"));
        command
            .args(args)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("TOKTRA_API_URL", self.sim.base_url())
            .env("ROTATOR_DATABASE_URL", self.journal_path())
            .env("ROTATOR_POLICIES", self.dir.join("policies"))
            .env("VAULT_ADDR", &self.vault_addr)
            .env("VAULT_TOKEN", &self.vault_token)
            .env("AWS_ENDPOINT_URL", &self.aws_endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // The simulator answers in milliseconds; a short timeout keeps the wait before
            // looking up an interrupted mint (one timeout at most) short. Tests may override it.
            .env("TOKTRA_TIMEOUT", "4s");
        match &self.admin_client {
            Some((id, secret)) => command.env("TOKTRA_CLIENT_ID", id).env("TOKTRA_CLIENT_SECRET", secret),
            None => command.env("TOKTRA_API_KEY", &self.admin_key),
        };
        // An empty value unsets a variable the harness sets by default.
        for (k, v) in &self.env {
            match v.is_empty() {
                true => command.env_remove(k),
                false => command.env(k, v),
            };
        }
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).kill_on_drop(true);
        command
    }

    pub async fn rotator(&self, args: &[&str]) -> Run {
        let mut command = self.command(args);
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let Output { status, stdout, stderr } = tokio::time::timeout(Duration::from_secs(300), command.output())
            .await
            .expect("rotator ran for more than 5 minutes")
            .expect("run rotator");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into(),
            stderr: String::from_utf8_lossy(&stderr).into(),
        }
    }

    pub fn toktra(&self) -> toktra::Client {
        toktra::Client::new(toktra::Settings::new(
            self.sim.base_url(),
            toktra::ManagementAuth::ApiKey(Secret::new(&self.admin_key)),
        ))
        .unwrap()
    }

    /// Creates a credential by hand, as a team would have before adopting rotator.
    pub async fn legacy(&self, kind: CredentialKind, name: &str) -> toktra::Minted {
        self.toktra().create(kind, name, &[], "made by hand").await.unwrap()
    }

    pub async fn accepted(&self, kind: CredentialKind, id: &str, secret: &str) -> bool {
        self.toktra().probe(kind, id, &Secret::new(secret)).await.unwrap() == toktra::Probe::Accepted
    }

    /// Active credentials other than the admin ones.
    pub fn active(&self) -> Vec<sim::Inspected> {
        self.sim.credentials().into_iter().filter(|c| !c.admin && c.state == "active").collect()
    }

    pub fn aws(&self) -> aws_sdk_secretsmanager::Client {
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.aws_endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
            .build();
        aws_sdk_secretsmanager::Client::from_conf(config)
    }

    /// The JSON value of an AWS secret's version with `stage`, or `None`.
    pub async fn aws_value(&self, secret_id: &str, stage: &str) -> Option<Value> {
        let out = self.aws().get_secret_value().secret_id(secret_id).version_stage(stage).send().await.ok()?;
        serde_json::from_str(out.secret_string()?).ok()
    }

    pub async fn aws_stages(&self, secret_id: &str) -> std::collections::HashMap<String, Vec<String>> {
        let out = self.aws().describe_secret().secret_id(secret_id).send().await.unwrap();
        out.version_ids_to_stages().cloned().unwrap_or_default()
    }

    pub async fn vault(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::Client::new();
        let mut request =
            client.request(method, format!("{}/v1/{path}", self.vault_addr)).header("X-Vault-Token", &self.vault_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The latest data at `secret/<path>`, or `None`.
    pub async fn vault_data(&self, path: &str) -> Option<Value> {
        let (status, body) = self.vault(reqwest::Method::GET, &format!("secret/data/{path}"), None).await;
        (status == 200).then(|| body["data"]["data"].clone())
    }

    pub async fn vault_metadata(&self, path: &str) -> Option<Value> {
        let (status, body) = self.vault(reqwest::Method::GET, &format!("secret/metadata/{path}"), None).await;
        (status == 200).then(|| body["data"].clone())
    }

    pub async fn vault_version(&self, path: &str, version: u64) -> Option<Value> {
        let (status, body) =
            self.vault(reqwest::Method::GET, &format!("secret/data/{path}?version={version}"), None).await;
        (status == 200).then(|| body["data"]["data"].clone())
    }

    pub async fn vault_put(&self, path: &str, data: Value) {
        let (status, body) = self
            .vault(reqwest::Method::POST, &format!("secret/data/{path}"), Some(serde_json::json!({ "data": data })))
            .await;
        assert_eq!(status, 200, "vault write: {body}");
    }
}

/// The JSON object of a credential as rotator writes it.
pub fn credential_json(kind: CredentialKind, id: &str, secret: &Secret) -> Value {
    match kind {
        CredentialKind::OauthClient => serde_json::json!({ "client_id": id, "client_secret": secret.expose() }),
        CredentialKind::ApiKey => serde_json::json!({ "key_id": id, "api_key": secret.expose() }),
    }
}

pub fn text(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_else(|| panic!("no `{field}` in {value}")).to_string()
}

/// A destination as the tests read it back.
#[derive(Debug, Clone)]
pub enum Dest {
    /// A path under `secret/`.
    Vault(String),
    /// A secret ID in moto.
    Aws(String),
    /// A file path.
    File(PathBuf),
}

impl Dest {
    /// The policy YAML line for this destination.
    pub fn yaml(&self) -> String {
        match self {
            Dest::Vault(path) => format!("  - vault: {{ mount: secret, path: '{path}', create: true }}\n"),
            Dest::Aws(id) => format!("  - aws_secrets_manager: {{ secret_id: '{id}', create: true }}\n"),
            Dest::File(path) => format!("  - file: {{ path: '{}' }}\n", path.display()),
        }
    }
}

/// A policy as a test describes it.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub kind: CredentialKind,
    pub dests: Vec<Dest>,
    pub grace: &'static str,
}

impl Spec {
    pub fn yaml(&self) -> String {
        let dests: String = self.dests.iter().map(Dest::yaml).collect();
        format!(
            "name: {name}\ncredential: {{ kind: {kind}, name: {name} }}\nschedule: {{ every: 90d }}\ndestinations:\n{dests}revoke: {{ grace: {grace} }}\n",
            name = self.name,
            kind = self.kind,
            grace = self.grace
        )
    }

    pub fn secret_field(&self) -> &'static str {
        match self.kind {
            CredentialKind::OauthClient => "client_secret",
            CredentialKind::ApiKey => "api_key",
        }
    }

    pub fn id_field(&self) -> &'static str {
        match self.kind {
            CredentialKind::OauthClient => "client_id",
            CredentialKind::ApiKey => "key_id",
        }
    }
}

impl Env {
    /// What a destination serves now.
    pub async fn served(&self, dest: &Dest) -> Option<Value> {
        match dest {
            Dest::Vault(path) => self.vault_data(path).await.filter(|v| v.as_object().is_some_and(|o| !o.is_empty())),
            Dest::Aws(id) => {
                self.aws_value(id, "AWSCURRENT").await.filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
            }
            Dest::File(path) => std::fs::read_to_string(self.dir.join("policies").join(path))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok()),
        }
    }

    /// Writes a hand-made credential into every destination of `spec`, as before adoption.
    pub async fn seed(&self, spec: &Spec, minted: &toktra::Minted) {
        let value = credential_json(spec.kind, &minted.id, &minted.secret);
        for dest in &spec.dests {
            match dest {
                Dest::Vault(path) => self.vault_put(path, value.clone()).await,
                Dest::Aws(id) => {
                    self.aws().create_secret().name(id).secret_string(value.to_string()).send().await.unwrap();
                }
                Dest::File(path) => {
                    let full = self.dir.join("policies").join(path);
                    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                    std::fs::write(full, value.to_string()).unwrap();
                }
            }
        }
    }

    /// The invariants after a run converged: every policy's destinations serve one working
    /// credential; nothing else rotator minted is active; no staged value is left; the given
    /// old credentials are rejected; reconcile finds nothing and status says ok.
    pub async fn assert_converged(&self, specs: &[Spec], old: &[(CredentialKind, String, String)]) {
        let mut served_ids = Vec::new();
        for spec in specs {
            let mut ids = Vec::new();
            for dest in &spec.dests {
                let value = self.served(dest).await.unwrap_or_else(|| panic!("{}: {dest:?} serves nothing", spec.name));
                let id = text(&value, spec.id_field());
                assert!(
                    self.accepted(spec.kind, &id, &text(&value, spec.secret_field())).await,
                    "{}: {id} in {dest:?} authenticates",
                    spec.name
                );
                ids.push(id);
                match dest {
                    Dest::Aws(secret_id) => {
                        let stages = self.aws_stages(secret_id).await;
                        assert!(
                            !stages.values().flatten().any(|s| s == "AWSPENDING"),
                            "{}: AWSPENDING left in {secret_id}: {stages:?}",
                            spec.name
                        );
                    }
                    Dest::Vault(path) => {
                        assert!(
                            self.vault_metadata(&format!("_rotator/staging/{path}")).await.is_none(),
                            "{}: staging left for {path}",
                            spec.name
                        );
                    }
                    Dest::File(path) => {
                        let pending = self.dir.join("policies").join(format!("{}.pending", path.display()));
                        assert!(!pending.exists(), "{}: {} left", spec.name, pending.display());
                    }
                }
            }
            ids.dedup();
            assert_eq!(ids.len(), 1, "{}: destinations agree on one credential: {ids:?}", spec.name);
            served_ids.extend(ids);
        }
        let mut active: Vec<String> = self.active().into_iter().map(|c| c.id).collect();
        active.sort();
        served_ids.sort();
        assert_eq!(
            active,
            served_ids,
            "the only active credentials are the ones the destinations serve: {:#?}",
            self.sim.credentials()
        );
        for (kind, id, secret) in old {
            assert!(!self.accepted(*kind, id, secret).await, "old credential {id} is rejected");
        }
        let reconcile = self.rotator(&["reconcile"]).await;
        reconcile.assert_code(0);
        let status = self.rotator(&["status", "--format", "json"]).await;
        status.assert_code(0);
        let rows: Value = serde_json::from_str(&status.stdout).unwrap();
        for row in rows.as_array().unwrap() {
            assert_eq!(row["state"], "ok", "status: {row}");
        }
    }
}

impl Env {
    /// A time the policy's latest rotation recorded in the journal (`promoted_at`, `revoke_after`,
    /// ...), read through `rotator history`.
    pub async fn recorded(&self, policy: &str, field: &str) -> DateTime<Utc> {
        let run = self.rotator(&["history", policy, "--limit", "1", "--format", "json"]).await;
        let rows: Value = serde_json::from_str(&run.assert_code(0).stdout).unwrap();
        text(&rows[0], field).parse().unwrap_or_else(|e| panic!("`{field}` of {policy}'s rotation: {e}: {rows}"))
    }
}

/// Waits until the clock the `rotator` processes read (this machine's) has passed `at`: a grace
/// period or an idle window measured by a `rotator` process ends only with real time.
pub async fn wait_for_clock(at: DateTime<Utc>) {
    let ahead = at - Utc::now();
    assert!(ahead < chrono::Duration::seconds(60), "{at} is {ahead} ahead: more than a test should wait");
    while Utc::now() <= at {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Env {
    /// Writes each spec's policy and seeds its destinations with a hand-made credential named
    /// `<name>-legacy`, as a team would have before adopting rotator; returns those credentials
    /// as `(kind, id, secret)` for `assert_converged`.
    pub async fn adopt(&self, specs: &[Spec]) -> Vec<(CredentialKind, String, String)> {
        let mut old = Vec::new();
        for spec in specs {
            self.policy(&format!("{}.yaml", spec.name), &spec.yaml());
            let legacy = self.legacy(spec.kind, &format!("{}-legacy", spec.name)).await;
            self.seed(spec, &legacy).await;
            old.push((spec.kind, legacy.id.clone(), legacy.secret.expose().to_string()));
        }
        old
    }

    /// The journal's files (the SQLite database and its journal/WAL files), by name, with their
    /// bytes, for scanning for secrets.
    pub fn journal_files(&self) -> Vec<(String, Vec<u8>)> {
        let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|file| file.file_name().unwrap().to_string_lossy().starts_with("journal.db"))
            .map(|file| (file.display().to_string(), std::fs::read(&file).unwrap()))
            .collect();
        assert!(files.iter().any(|(name, _)| name.ends_with("journal.db")), "the journal exists");
        files
    }
}
