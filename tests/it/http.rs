//! The service's HTTP server for production: TLS from files, reloaded on `SIGHUP`; a deadline for
//! request heads and one for whole requests; a connection limit; a shutdown bounded in total.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use rotator::policy::CredentialKind;

use crate::harness::{Dest, Env, Spec};
use crate::service::{Service, VaultGate};

/// A self-signed certificate for 127.0.0.1 written to `<name>.pem` and `<name>.key` in the
/// test's directory; the certificate's PEM.
fn certificate(env: &Env, name: &str) -> String {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let pem = made.cert.pem();
    std::fs::write(env.dir.join(format!("{name}.pem")), &pem).unwrap();
    std::fs::write(env.dir.join(format!("{name}.key")), made.signing_key.serialize_pem()).unwrap();
    pem
}

/// A client that trusts only `pem`.
fn trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

/// Polls the log until it has `needle` `n` times.
async fn wait_log_count(service: &Service, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while service.log_text().matches(needle).count() < n {
        assert!(Instant::now() < deadline, "`{needle}` not logged {n} times:\n{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// TLS from a certificate and key file. `SIGHUP` reads them again: new connections get the new
/// certificate; a pair that does not load is refused with a log line and the one in force stays.
#[tokio::test(flavor = "multi_thread")]
async fn tls_from_files_is_reloaded_on_sighup() {
    let mut env = Env::start().await;
    let first = certificate(&env, "first");
    let second = certificate(&env, "second");
    let (cert, key) = (env.dir.join("tls.pem"), env.dir.join("tls.key"));
    std::fs::copy(env.dir.join("first.pem"), &cert).unwrap();
    std::fs::copy(env.dir.join("first.key"), &key).unwrap();
    env.env.push(("ROTATOR_TLS_CERT_FILE".into(), cert.display().to_string()));
    env.env.push(("ROTATOR_TLS_KEY_FILE".into(), key.display().to_string()));
    let service = env.serve(&[]).await;
    assert!(service.base.starts_with("https://"), "{}", service.base);
    let healthz = format!("{}/healthz", service.base);
    assert_eq!(trusting(&first).get(&healthz).send().await.unwrap().status(), 200);
    assert!(trusting(&second).get(&healthz).send().await.is_err(), "the second certificate is not served yet");
    assert!(reqwest::get(healthz.replace("https://", "http://")).await.is_err(), "no plain HTTP beside TLS");

    std::fs::copy(env.dir.join("second.pem"), &cert).unwrap();
    std::fs::copy(env.dir.join("second.key"), &key).unwrap();
    service.signal("HUP");
    wait_log_count(&service, "TLS certificate and key reloaded", 1).await;
    assert_eq!(trusting(&second).get(&healthz).send().await.unwrap().status(), 200);
    assert!(trusting(&first).get(&healthz).send().await.is_err(), "the first certificate is no longer served");

    // A certificate that does not match the key: refused, the second pair stays in force.
    std::fs::copy(env.dir.join("first.pem"), &cert).unwrap();
    service.signal("HUP");
    wait_log_count(&service, "TLS certificate and key not reloaded", 1).await;
    assert_eq!(trusting(&second).get(&healthz).send().await.unwrap().status(), 200);
    let log = service.log_text();
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    // The container health check speaks TLS to it too (the certificate names no loopback host).
    let port = service.base.rsplit(':').next().unwrap().to_string();
    env.env.push(("ROTATOR_LISTEN".into(), format!("127.0.0.1:{port}")));
    env.rotator(&["healthcheck"]).await.assert_code(0);
    let (status, _, log) = service.terminate(30).await;
    assert!(status.success(), "{log}");
}

/// `rotator healthcheck`, a distroless image's `HEALTHCHECK` (no shell, no curl): exit 0 while
/// the service answers `/healthz` at the configured address (an unspecified one, as a container
/// listens on, is reached on loopback), 1 with the reason once it is gone.
#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_follows_the_service() {
    let mut env = Env::start().await;
    let service = env.serve(&[]).await;
    let port = service.base.rsplit(':').next().unwrap().to_string();
    env.env.push(("ROTATOR_LISTEN".into(), format!("0.0.0.0:{port}")));
    let run = env.rotator(&["healthcheck"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains(&format!("http://127.0.0.1:{port}/healthz: 200")), "{}", run.stdout);
    let (status, _, log) = service.terminate(30).await;
    assert!(status.success(), "{log}");
    let run = env.rotator(&["healthcheck", "--timeout", "2s"]).await;
    run.assert_code(1);
    assert!(run.stderr.contains(&format!("127.0.0.1:{port}/healthz")), "{}", run.stderr);
}

/// A client that sends part of a request head and then nothing is cut off after
/// `header_timeout`; one whose body trickles gets `408` JSON after `request_timeout`. Neither
/// holds up anyone else.
#[tokio::test(flavor = "multi_thread")]
async fn slow_heads_are_cut_off_and_slow_bodies_get_408() {
    let mut env = Env::start().await;
    env.env.push(("ROTATOR_HEADER_TIMEOUT".into(), "1s".into()));
    env.env.push(("ROTATOR_REQUEST_TIMEOUT".into(), "1s".into()));
    env.policy(
        "slow.yaml",
        "name: slow\ncredential: { kind: api_key, name: slow }\nschedule: { every: 90d }\n\
         destinations:\n  - vault: { mount: secret, path: '{prefix}/slow', create: true }\n",
    );
    let service = env.serve(&[]).await;
    let address = service.base.trim_start_matches("http://").to_string();

    let mut head = TcpStream::connect(&address).await.unwrap();
    head.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), head.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection with an unfinished head is still open after 20 s");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"), "{}", String::from_utf8_lossy(&buf));

    let mut body = TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "POST /v1/policies/slow/rotate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"reason\":",
        service.token
    );
    body.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), body.read(&mut buf)).await.expect("answered").unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
    let (status, body) = service.get("/v1/rotations").await;
    assert_eq!(status, 200);
    let requested = body["rotations"].as_array().unwrap().iter().filter(|r| r["reason"] != "scheduled").count();
    assert_eq!(requested, 0, "the cut-off request started nothing: {body}");
}

/// With `max_connections = 2`, two idle connections make a third client wait (in the backlog,
/// not refused); when one of them closes, the third is answered.
#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_wait_for_a_slot() {
    let mut env = Env::start().await;
    env.env.push(("ROTATOR_MAX_CONNECTIONS".into(), "2".into()));
    env.env.push(("ROTATOR_HEADER_TIMEOUT".into(), "60s".into()));
    let service = env.serve(&[]).await;
    let address = service.base.trim_start_matches("http://").to_string();
    // Two kept-alive connections, each answered once, so both hold a slot.
    let mut first = TcpStream::connect(&address).await.unwrap();
    let mut second = TcpStream::connect(&address).await.unwrap();
    for connection in [&mut first, &mut second] {
        connection.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), connection.read(&mut buf)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
    }
    wait_log_count(&service, "connection limit reached", 1).await;
    let third = tokio::spawn({
        let url = format!("{}/healthz", service.base);
        async move { reqwest::Client::new().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let waiting = tokio::time::timeout(Duration::from_millis(500), async {
        while !third.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waiting.is_err(), "answered while both slots were taken");
    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(20), third).await.expect("answered once a slot was free");
    assert_eq!(answered.unwrap().unwrap(), 200);
    drop(second);
    let (status, _, log) = service.terminate(30).await;
    assert!(status.success(), "{log}");
}

/// `SIGTERM` ends the process within `shutdown_timeout` in total, notification delivery
/// included: a rotation is held inside a Vault call (it never finishes by itself), and a webhook
/// that accepts connections and never answers holds one failure notification in delivery while
/// another waits in the queue.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_within_its_timeout_with_work_and_notifications_stuck() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    let env = Env::start().await;
    let gate = VaultGate::start(&env.vault_addr).await;
    let env = Env {
        env: vec![
            ("VAULT_ADDR".into(), gate.url.clone()),
            ("ROTATOR_TICK".into(), "60s".into()),
            ("ROTATOR_SHUTDOWN_TIMEOUT".into(), "4s".into()),
        ],
        ..env
    };
    std::fs::write(
        env.dir.join("rotator.toml"),
        format!("[notifications.ops]\nkind = \"webhook\"\nurl = \"http://{hook}/hook\"\n"),
    )
    .unwrap();
    // Two policies that fail at once (their Vault mount does not exist), both telling `ops`.
    for name in ["broken-a", "broken-b"] {
        env.policy(
            &format!("{name}.yaml"),
            &format!(
                "name: {name}\ncredential: {{ kind: api_key, name: {name} }}\nschedule: {{ every: 90d }}\nnotify: [ops]\n\
                 destinations:\n  - vault: {{ mount: no-such-mount, path: '{name}', create: true }}\n"
            ),
        );
    }
    let spec = Spec {
        name: "held".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::Vault(format!("{}/held", env.prefix))],
        grace: "0s",
    };
    env.policy("held.yaml", &spec.yaml());
    let legacy = env.legacy(CredentialKind::ApiKey, "held-legacy").await;
    env.seed(&spec, &legacy).await;
    let service = env.serve(&[]).await;
    for name in ["broken-a", "broken-b"] {
        let (status, body) = service.post(&format!("/v1/policies/{name}/rotate"), serde_json::json!({})).await;
        assert_eq!(status, 202, "{body}");
    }
    wait_log_count(&service, "rotation failed; backing off", 2).await;
    assert_eq!(service.get("/v1/policies/held").await.0, 200);
    gate.close();
    let (status, body) = service.post("/v1/policies/held/rotate", serde_json::json!({})).await;
    assert_eq!(status, 202, "{body}");
    gate.wait_held(&service).await;

    let (status, took, log) = service.terminate(30).await;
    gate.open();
    assert!(status.success(), "{log}");
    println!("serve stopped {took:.1?} after SIGTERM (shutdown_timeout 4s)");
    assert!(took < Duration::from_millis(4_500), "took {took:?} with a 4 s shutdown timeout:\n{log}");
}
