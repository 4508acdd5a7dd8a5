//! Hardening (issue #8 item 13): credentials never follow a redirect, plain HTTP only to
//! loopback, a hostile or broken Toktra cannot panic the client or flood the logs, and the
//! unauthenticated API cannot be driven by a web page.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::{StatusCode, Uri, header};
use rotator::policy::CredentialKind;
use serde_json::json;

use crate::harness::{Dest, Env, Spec};

/// A local listener that records every request it receives (method, URI, headers, body).
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let store = seen.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let store = store.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                store.lock().unwrap().push(format!(
                    "{} {} {:?} {}",
                    parts.method,
                    parts.uri,
                    parts.headers,
                    String::from_utf8_lossy(&body)
                ));
                axum::Json(json!({ "items": [], "access_token": "recorded", "expires_in": 3600 }))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Recorder { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A local server answering every request with `307` to the same path at `target`.
async fn redirector(target: SocketAddr) -> SocketAddr {
    let app = axum::Router::new().fallback(move |uri: Uri| async move {
        (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, format!("http://{target}{uri}"))])
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn toktra_calls_do_not_follow_redirects() {
    for oauth in [false, true] {
        let recorder = Recorder::start().await;
        let redirect = redirector(recorder.addr).await;
        let mut env = Env::start().await;
        if oauth {
            env.admin_client = Some(("cl_admin_redirect".into(), format!("tcs_{}", uuid::Uuid::new_v4().simple())));
        }
        env.env.push(("TOKTRA_API_URL".into(), format!("http://{redirect}/v1")));
        let spec = Spec {
            name: "redirected".into(),
            kind: CredentialKind::ApiKey,
            dests: vec![Dest::File("redirected.json".into())],
            grace: "0s",
        };
        env.policy("redirected.yaml", &spec.yaml());
        let run = env.rotator(&["rotate", "redirected"]).await;
        assert_ne!(run.code, 0, "oauth={oauth}: the rotation cannot succeed through a redirect\n{}", run.stderr);
        assert!(run.stderr.contains("307"), "oauth={oauth}: the error names the status:\n{}", run.stderr);
        assert_eq!(recorder.seen(), Vec::<String>::new(), "oauth={oauth}: the redirect target received a request");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vault_calls_do_not_follow_redirects() {
    let recorder = Recorder::start().await;
    let redirect = redirector(recorder.addr).await;
    let mut env = Env::start().await;
    env.env.push(("VAULT_ADDR".into(), format!("http://{redirect}")));
    let spec = Spec {
        name: "vaulted".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/vaulted", env.prefix))],
        grace: "0s",
    };
    env.policy("vaulted.yaml", &spec.yaml());
    // vaultrs's client (the KV calls) and rotator's own (sys/capabilities-self).
    for args in [&["rotate", "vaulted"][..], &["plan"]] {
        let run = env.rotator(args).await;
        assert_ne!(run.code, 0, "{args:?}: cannot succeed through a redirect\n{}", run.stderr);
        assert_eq!(recorder.seen(), Vec::<String>::new(), "{args:?}: the redirect target received a request");
    }
    // AppRole login: its body holds the secret ID.
    std::fs::write(env.dir.join("secret-id"), "approle-secret-id").unwrap();
    std::fs::write(
        env.dir.join("rotator.toml"),
        "[vault.approle]\nrole_id = \"rotator\"\nsecret_id_file = \"secret-id\"\n",
    )
    .unwrap();
    env.env.push(("VAULT_TOKEN".into(), String::new()));
    let run = env.rotator(&["rotate", "vaulted"]).await;
    assert_ne!(run.code, 0, "approle login cannot succeed through a redirect\n{}", run.stderr);
    assert!(run.stderr.contains("approle"), "{}", run.stderr);
    assert_eq!(recorder.seen(), Vec::<String>::new(), "approle: the redirect target received a request");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_refused_except_to_loopback() {
    let mut env = Env::start().await;
    let spec = Spec {
        name: "plain".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("plain.json".into())],
        grace: "0s",
    };
    env.policy("plain.yaml", &spec.yaml());
    // `status` below reads the journal, so there must be one.
    env.rotator(&["rotate", "plain"]).await.assert_code(0);
    // Refused before anything is contacted: no network is needed to see exit 2 (an attempt to
    // reach the host would fail with exit 1).
    for (variable, value) in
        [("TOKTRA_API_URL", "http://toktra.example.com/v1"), ("VAULT_ADDR", "http://vault.example.com:8200")]
    {
        env.env.push((variable.into(), value.into()));
        for args in [&["rotate", "plain"][..], &["status"]] {
            let run = env.rotator(args).await;
            run.assert_code(2);
            assert!(
                run.stderr.contains(variable) && run.stderr.contains("https://"),
                "{args:?}: the error names {variable} and says what to do:\n{}",
                run.stderr
            );
        }
        // The explicit override, from the environment or the file (`status` contacts neither
        // Toktra nor Vault, so nothing leaves the machine).
        env.env.push(("ROTATOR_ALLOW_INSECURE_HTTP".into(), "true".into()));
        env.rotator(&["status"]).await.assert_code(0);
        env.env.pop();
        std::fs::write(env.dir.join("rotator.toml"), "allow_insecure_http = true\n").unwrap();
        env.rotator(&["status"]).await.assert_code(0);
        // The environment wins over the file.
        env.env.push(("ROTATOR_ALLOW_INSECURE_HTTP".into(), "false".into()));
        env.rotator(&["status"]).await.assert_code(2);
        env.env.pop();
        std::fs::remove_file(env.dir.join("rotator.toml")).unwrap();
        env.env.pop();
    }
    env.env.push(("ROTATOR_ALLOW_INSECURE_HTTP".into(), "maybe".into()));
    let run = env.rotator(&["status"]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("ROTATOR_ALLOW_INSECURE_HTTP"), "{}", run.stderr);
    env.env.pop();
    // The file's key is named when the URL comes from the file.
    std::fs::write(env.dir.join("rotator.toml"), "[toktra]\napi_url = \"http://toktra.example.com/v1\"\n").unwrap();
    env.env.push(("TOKTRA_API_URL".into(), String::new()));
    let run = env.rotator(&["status"]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("toktra.api_url"), "{}", run.stderr);
    env.env.pop();
    std::fs::remove_file(env.dir.join("rotator.toml")).unwrap();

    // Loopback by name works over plain http (every other test uses 127.0.0.1).
    env.env.push(("TOKTRA_API_URL".into(), env.sim.base_url().replace("127.0.0.1", "localhost")));
    env.rotator(&["rotate", "plain"]).await.assert_code(0);
}

/// A stand-in for Toktra's token endpoint and key list, answering `expires_in` with `lifetime`.
/// Returns its base URL and how many tokens it issued.
async fn token_server(lifetime: serde_json::Value) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let issued: Arc<AtomicUsize> = Arc::default();
    let count = issued.clone();
    let app = axum::Router::new()
        .route(
            "/v1/oauth/token",
            axum::routing::post(move || {
                let count = count.clone();
                let lifetime = lifetime.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({ "access_token": "tok_fake", "token_type": "bearer", "expires_in": lifetime }))
                }
            }),
        )
        .route(
            "/v1/api-keys",
            axum::routing::get(|| async {
                // A known budget: the client does not hold the second request back to learn it.
                let reset = (chrono::Utc::now().timestamp() + 60).to_string();
                (
                    [("x-ratelimit-remaining", "1000".to_string()), ("x-ratelimit-reset", reset)],
                    axum::Json(json!({ "items": [], "has_more": false })),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), issued)
}

#[tokio::test(flavor = "multi_thread")]
async fn any_token_lifetime_is_tolerated() {
    use rotator::secret::Secret;
    use rotator::toktra::{Client, ManagementAuth, Settings};
    for lifetime in [
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e300),
        json!(0),
        json!(-5),
        json!(3600.0),
        json!(0.5),
        json!("3600"),
        json!(" 18446744073709551615 "),
        json!("soon"),
        json!(null),
        json!({ "seconds": 3600 }),
    ] {
        let (base, issued) = token_server(lifetime.clone()).await;
        let client = Client::new(Settings::new(
            base,
            ManagementAuth::Client { client_id: "cl_admin".into(), client_secret: Secret::new("tcs_admin_secret") },
        ))
        .unwrap();
        // Spawned, so that a panic is reported with the value that caused it.
        let listed = tokio::spawn(async move {
            for _ in 0..2 {
                client.list(CredentialKind::ApiKey).await?;
            }
            Ok::<_, rotator::toktra::Error>(())
        })
        .await;
        assert!(matches!(listed, Ok(Ok(()))), "expires_in {lifetime}: {listed:?}");
        // Capped, defaulted or parsed, the lifetime is long enough to reuse the token.
        assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1, "expires_in {lifetime}");
    }
}

/// A server answering every request with `500` and `body`.
async fn failing_server(body: String) -> String {
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "application/json")], body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

#[tokio::test(flavor = "multi_thread")]
async fn vendor_error_text_is_bounded_and_has_no_control_characters() {
    use rotator::secret::Secret;
    use rotator::toktra::{Client, ManagementAuth, Settings};
    let admin_secret = "tcs_the_admin_client_secret_0123456789";
    // A megabyte of error code with terminal escapes and fake log lines, and the same in the
    // message; the second server also echoes the client secret split by control characters.
    let flood = format!("{}\u{1b}[31m\nERROR forged log line\r\n{}", "x".repeat(500_000), "y".repeat(500_000));
    let interleaved: String = admin_secret.chars().flat_map(|c| [c, '\u{7}']).collect();
    for (body, auth) in [
        (
            json!({ "error": flood, "message": flood }).to_string(),
            ManagementAuth::ApiKey(Secret::new("tk_admin_key_0123456789abcdef")),
        ),
        (
            json!({ "error": format!("bad\u{1b}{interleaved}"), "error_description": flood }).to_string(),
            ManagementAuth::Client { client_id: "cl_admin".into(), client_secret: Secret::new(admin_secret) },
        ),
    ] {
        let mut settings = Settings::new(failing_server(body).await, auth);
        settings.retry.attempts = 1;
        let client = Client::new(settings).unwrap();
        let e = client.list(CredentialKind::ApiKey).await.expect_err("a 500 is an error");
        let text = e.to_string();
        let start = |t: &str| t.chars().take(600).collect::<String>();
        assert!(text.len() < 600, "{} bytes: {}…", text.len(), start(&text));
        assert!(!text.chars().any(char::is_control), "control characters in {text:?}");
        assert!(text.contains("500"), "{text}");
        assert!(!text.contains(admin_secret), "{text}");
        let debug = format!("{e:?}");
        assert!(debug.len() < 1_000 && !debug.contains(admin_secret), "{}", start(&debug));
    }
}

/// A `rotator serve` started by these tests.
struct Served {
    child: tokio::process::Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Served {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `rotator serve` on port 0 of loopback with `args` and `vars` (the address is read back
/// from its log, so no other process can take the port meanwhile): `Ok` once `/healthz`
/// answers, `Err((exit code, log))` if it exits first.
async fn serve(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Result<Served, (Option<i32>, String)> {
    let log = env.dir.join(format!("serve-{}.log", uuid::Uuid::new_v4().simple()));
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut command = env.command(&all);
    command.env("ROTATOR_TICK", "1s").env("ROTATOR_SHUTDOWN_TIMEOUT", "5s");
    for (k, v) in vars {
        command.env(k, v);
    }
    command.stderr(std::fs::File::create(&log).unwrap());
    let mut child = command.spawn().unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err((status.code(), read_log()));
        }
        if let Some(addr) = crate::service::served_address(&read_log()).and_then(|a| a.parse::<SocketAddr>().ok())
            && reqwest::get(format!("http://{addr}/healthz")).await.is_ok_and(|r| r.status() == 200)
        {
            return Ok(Served { child, addr, log });
        }
        assert!(std::time::Instant::now() < deadline, "serve neither came up nor exited:\n{}", read_log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Sends `head` (request line and headers, without the final blank line) and `body` as raw
/// HTTP/1.1, so that the `Host` header is exactly what the test says; returns the status and
/// the body as JSON (`null` if it is not JSON).
async fn raw_http(addr: SocketAddr, head: &str, body: &str) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{answer}"));
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_api_token_is_refused_at_start() {
    let env = Env::start().await;
    let short = "0123456789abcdef0123456789abcde"; // 31 characters
    let (code, log) = serve(&env, &[], &[("ROTATOR_API_TOKEN", short)]).await.err().expect("refused");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("ROTATOR_API_TOKEN") && log.contains("32"), "{log}");
    assert!(!log.contains(short), "the token is not repeated:\n{log}");
    // Whitespace does not count (the comparison ignores it).
    let padded = format!("  {short}\n");
    let (code, log) = serve(&env, &[], &[("ROTATOR_API_TOKEN", &padded)]).await.err().expect("refused");
    assert_eq!(code, Some(2), "{log}");
    // From a file, the key is named.
    std::fs::write(env.dir.join("api-token"), format!("{short}\n")).unwrap();
    std::fs::write(env.dir.join("rotator.toml"), "api_token_file = \"api-token\"\n").unwrap();
    let (code, log) = serve(&env, &[], &[]).await.err().expect("refused");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("api_token_file"), "{log}");
    std::fs::remove_file(env.dir.join("rotator.toml")).unwrap();

    let token = format!("{short}f");
    let mut served = serve(&env, &[], &[("ROTATOR_API_TOKEN", &token)]).await.expect("32 characters are enough");
    // With a token, any Host is served (a reverse proxy may name the service as it likes).
    let (status, body) = raw_http(
        served.addr,
        &format!("GET /v1/policies HTTP/1.1\r\nHost: rotator.internal\r\nAuthorization: Bearer {token}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", served.log_text());
    served.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_auth_the_api_wants_its_own_host_and_json() {
    let env = Env::start().await;
    let spec = Spec {
        name: "local".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("local.json".into())],
        grace: "0s",
    };
    env.policy("local.yaml", &spec.yaml());
    // An adopted credential is not due for 90 days: the scheduler leaves the policy alone.
    env.seed(&spec, &env.legacy(CredentialKind::ApiKey, "local-legacy").await).await;
    let served = serve(&env, &["--insecure-no-auth"], &[]).await.expect("serves");
    let port = served.addr.port();

    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends its own
    // name as Host. Only the listen address, by IP or as localhost, is served.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("LocalHost:{port}")] {
        let (status, body) = raw_http(served.addr, &format!("GET /v1/policies HTTP/1.1\r\nHost: {host}"), "").await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        String::new(),
    ] {
        for path in ["/v1/policies", "/metrics", "/healthz"] {
            let (status, body) = raw_http(served.addr, &format!("GET {path} HTTP/1.1\r\nHost: {host}"), "").await;
            assert_eq!(status, 421, "Host `{host}` {path}: {body}");
            assert_eq!(body["error"], "misdirected_request", "{body}");
        }
    }

    // A cross-site form or `fetch` without a preflight cannot send application/json, so only
    // JSON requests may rotate: not an empty body without a type, not text/plain, not a form.
    let rotate = format!("POST /v1/policies/local/rotate HTTP/1.1\r\nHost: 127.0.0.1:{port}");
    for (content_type, body) in [
        ("", ""),
        ("\r\nContent-Type: text/plain", "{}"),
        ("\r\nContent-Type: application/x-www-form-urlencoded", "reason=x"),
        ("\r\nContent-Type: application/jsonx", "{}"),
    ] {
        let (status, answer) = raw_http(served.addr, &format!("{rotate}{content_type}"), body).await;
        assert_eq!(status, 415, "{content_type:?}: {answer}");
        assert_eq!(answer["error"], "unsupported_media_type", "{answer}");
    }
    let (status, answer) =
        raw_http(served.addr, &format!("{rotate}\r\nContent-Type: Application/JSON; charset=utf-8"), "{}").await;
    assert_eq!(status, 202, "{answer}\n{}", served.log_text());
}
