//! A `rotator serve` child process for the tests: started on port 0 (it binds the port itself
//! and the test reads the address back from its log, so no port is picked, released and raced
//! for), driven through HTTP and signals, and waited on through what it shows (its log, its pass
//! counter, its rotations), never through a sleep that hopes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::Env;

/// A running `rotator serve`.
pub(crate) struct Service {
    pub(crate) child: tokio::process::Child,
    pub(crate) base: String,
    pub(crate) token: String,
    pub(crate) log: PathBuf,
    pub(crate) http: reqwest::Client,
}

impl Env {
    /// Starts `rotator serve` on `127.0.0.1:0` and returns once it answers `/healthz` at the
    /// address it logged.
    pub(crate) async fn serve(&self, extra: &[&str]) -> Service {
        self.serve_as(None, extra).await
    }

    /// Like [`Env::serve`]; with `host`, the service runs in UTS and PID namespaces of its own
    /// (`unshare`, as root) under that host name, as a replica on another machine would: no
    /// other process can judge it dead by its PID.
    pub(crate) async fn serve_as(&self, host: Option<&str>, extra: &[&str]) -> Service {
        let token = format!("api-{}", uuid::Uuid::new_v4().simple());
        let log = self.dir.join(format!("serve-{}.log", uuid::Uuid::new_v4().simple()));
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut command = self.command(&args);
        command.env("ROTATOR_API_TOKEN", &token);
        // Defaults for these tests, unless the test's environment sets them.
        for (name, value) in [("ROTATOR_TICK", "1s"), ("ROTATOR_SHUTDOWN_TIMEOUT", "20s")] {
            if !self.env.iter().any(|(n, _)| n == name) {
                command.env(name, value);
            }
        }
        if let Some(host) = host {
            command = in_namespaces(&command, host);
        }
        command.stderr(std::fs::File::create(&log).unwrap());
        let child = command.spawn().unwrap();
        // With TLS (a certificate file in the environment), trust that certificate only.
        let tls = self.env.iter().find(|(n, _)| n == "ROTATOR_TLS_CERT_FILE").map(|(_, path)| path.clone());
        let http = match &tls {
            Some(path) => {
                let pem = std::fs::read(path).unwrap();
                reqwest::Client::builder()
                    .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap()
            }
            // No idle connections kept: a test of the connection limit counts its own.
            None => reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap(),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut service = Service { child, base: String::new(), token, log, http };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if service.base.is_empty() {
                service.base =
                    served_address(&service.log_text()).map(|a| format!("{scheme}://{a}")).unwrap_or_default();
            }
            if !service.base.is_empty()
                && service.http.get(format!("{}/healthz", service.base)).send().await.is_ok_and(|r| r.status() == 200)
            {
                return service;
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!("serve exited with {status} before it came up:\n{}", service.log_text());
            }
            assert!(Instant::now() < deadline, "serve did not come up:\n{}", service.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `command` run by `unshare` in new UTS and PID namespaces, with `host` as its host name.
fn in_namespaces(command: &tokio::process::Command, host: &str) -> tokio::process::Command {
    let inner = command.as_std();
    let mut wrapped = tokio::process::Command::new("unshare");
    wrapped
        .args([
            "--uts",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            "sh",
            "-c",
            r#"h=$1; shift; hostname "$h" && exec "$0" "$@""#,
        ])
        .arg(inner.get_program())
        .arg(host)
        .args(inner.get_args())
        .env_clear()
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null());
    for (name, value) in inner.get_envs() {
        if let Some(value) = value {
            wrapped.env(name, value);
        }
    }
    if let Some(dir) = inner.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// The address in the service's `rotator serving` log line (JSON lines).
pub(crate) fn served_address(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|entry| entry["message"] == "rotator serving")
        .and_then(|entry| entry["addr"].as_str().map(str::to_string))
}

impl Service {
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r =
            self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Sends a signal to the `rotator` process (inside its namespaces, if it has its own).
    pub(crate) fn signal(&self, name: &str) {
        let pid = self.rotator_pid().to_string();
        assert!(std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success());
    }

    /// Polls until `check` holds for the rotation, or fails after `secs`.
    pub(crate) async fn wait_rotation(&self, id: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, body) = self.get(&format!("/v1/rotations/{id}")).await;
            if status == 200 && check(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "rotation {id} never got there: {body}\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Service {
    /// Any request, with the token: status, `Content-Type` and the body as JSON (`Null` if it is
    /// not JSON).
    pub(crate) async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, String, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token).body(body);
        for (name, value) in headers {
            r = r.header(*name, *value);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let content_type = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let text = r.text().await.unwrap();
        (status, content_type, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) async fn wait_log(&self, needle: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.log_text().contains(needle) {
            assert!(Instant::now() < deadline, "never logged `{needle}`:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reconciliation passes the service has completed (`rotator_reconcile_passes_total`).
    pub(crate) async fn passes(&self) -> u64 {
        let r = self.http.get(format!("{}/metrics", self.base)).bearer_auth(&self.token).send().await.unwrap();
        let text = r.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("rotator_reconcile_passes_total "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pass counter in /metrics:\n{text}"))
    }

    /// Waits until the service has completed `n` passes; fails after `secs`.
    pub(crate) async fn wait_passes(&self, n: u64, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.passes().await < n {
            assert!(Instant::now() < deadline, "fewer than {n} passes in {secs}s:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }

    /// Sends SIGTERM and waits for the exit; fails if it takes longer than `secs`.
    pub(crate) async fn terminate(self, secs: u64) -> (std::process::ExitStatus, Duration, String) {
        let started = Instant::now();
        self.signal("TERM");
        let mut child = self.child;
        let log = self.log;
        let status = tokio::time::timeout(Duration::from_secs(secs), child.wait()).await.unwrap_or_else(|_| {
            panic!("still running {secs}s after SIGTERM:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        (status.unwrap(), started.elapsed(), std::fs::read_to_string(&log).unwrap_or_default())
    }
}

/// A TCP proxy in front of OpenBao that can hold what rotator sends to Vault, so a test can keep
/// a rotation inside a Vault call for as long as it needs.
pub(crate) struct VaultGate {
    pub(crate) url: String,
    open: tokio::sync::watch::Sender<bool>,
    /// Writes to Vault held at the gate now.
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl VaultGate {
    pub(crate) async fn start(upstream: &str) -> VaultGate {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (open, gate) = tokio::sync::watch::channel(true);
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = held.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
                let (mut gate, count) = (gate.clone(), count.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                        if !*gate.borrow() {
                            count.fetch_add(1, SeqCst);
                            let _ = gate.wait_for(|open| *open).await;
                            count.fetch_sub(1, SeqCst);
                        }
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown().await;
                });
            }
        });
        VaultGate { url, open, held }
    }

    pub(crate) fn close(&self) {
        self.open.send_replace(false);
    }

    pub(crate) fn open(&self) {
        self.open.send_replace(true);
    }

    /// Whether a request to Vault is held at the closed gate now.
    pub(crate) fn holding(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Waits until a request to Vault is held at the closed gate.
    pub(crate) async fn wait_held(&self, service: &Service) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "nothing reached Vault:\n{}", service.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Service {
    /// The PID of the `rotator` process itself: the child's own, or, for a service started in
    /// namespaces of its own, that of the process `unshare` started.
    pub(crate) fn rotator_pid(&self) -> u32 {
        let pid = self.child.id().expect("running");
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
            .unwrap_or(pid)
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub(crate) async fn kill(self) {
        self.signal("KILL");
        let mut child = self.child;
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("gone after SIGKILL").unwrap();
    }

    /// `POST /v1/policies/{policy}/rotate` with an `Idempotency-Key`.
    pub(crate) async fn rotate_with_key(&self, policy: &str, key: &str, body: Value) -> (u16, Value) {
        let (status, _, body) = self
            .raw(
                "POST",
                &format!("/v1/policies/{policy}/rotate"),
                &[("content-type", "application/json"), ("idempotency-key", key)],
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        (status, body)
    }
}
