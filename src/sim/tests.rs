//! Unit tests of the simulator: each test starts its own simulator on a free port and talks real
//! HTTP to it.

use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};

use super::*;

const ADMIN_KEY: &str = "tk_admin_0123456789abcdefghijklmnopqrstuvwxyz";
const ADMIN_CLIENT_ID: &str = "cl_admin_for_tests";
const ADMIN_CLIENT_SECRET: &str = "tcs_admin_0123456789abcdefghijklmnopqrstuvwxyz";

fn config() -> Config {
    Config {
        admin_api_key: Some(ADMIN_KEY.to_owned()),
        admin_client: Some((ADMIN_CLIENT_ID.to_owned(), ADMIN_CLIENT_SECRET.to_owned())),
        ..Config::default()
    }
}

struct Harness {
    sim: Simulator,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("")
    }

    fn header_u64(&self, name: &str) -> u64 {
        self.header(name).parse().unwrap_or_else(|_| panic!("header {name} missing or not a number"))
    }

    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    fn str(&self, field: &str) -> String {
        self.body[field].as_str().unwrap_or_else(|| panic!("no {field} in {}", self.text)).to_owned()
    }
}

async fn spawn(config: Config) -> Harness {
    let sim = Simulator::start(0, config).await.expect("simulator starts");
    Harness { sim, http: reqwest::Client::new() }
}

impl Harness {
    async fn try_call(
        &self,
        http: &reqwest::Client,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Result<Answer> {
        let url = if path.starts_with("/_sim") {
            format!("http://{}{path}", self.sim.addr())
        } else {
            format!("{}{path}", self.sim.base_url())
        };
        let mut request = http.request(method, url);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer { status, headers, text, body })
    }

    async fn call(&self, method: Method, path: &str, bearer: Option<&str>, body: Option<Value>) -> Answer {
        self.try_call(&self.http, method, path, bearer, body).await.expect("request completes")
    }

    async fn get(&self, path: &str, bearer: &str) -> Answer {
        self.call(Method::GET, path, Some(bearer), None).await
    }

    async fn token(&self, client_id: &str, secret: &str) -> Answer {
        let form = [("grant_type", "client_credentials"), ("client_id", client_id), ("client_secret", secret)];
        let response = self
            .http
            .post(format!("{}/oauth/token", self.sim.base_url()))
            .form(&form)
            .send()
            .await
            .expect("token request completes");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("token body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, headers, text, body }
    }

    async fn create(&self, path: &str, bearer: &str, name: &str) -> Answer {
        let body = json!({ "name": name, "scopes": ["read"], "ignored": true });
        self.call(Method::POST, path, Some(bearer), Some(body)).await
    }

    fn inspected(&self, id: &str) -> Inspected {
        self.sim.credentials().into_iter().find(|cred| cred.id == id).expect("credential is inspectable")
    }
}

#[tokio::test]
async fn access_token_expires_after_its_lifetime() {
    let h = spawn(Config { token_lifetime: Duration::from_secs(3_600), ..config() }).await;
    let token = h.token(ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET).await;
    assert_eq!(token.status, 200, "{}", token.text);
    assert_eq!(token.body["token_type"], "bearer");
    assert_eq!(token.body["expires_in"], 3_600);
    assert_eq!(token.header("cache-control"), "no-store");
    let access = token.str("access_token");

    let usage = h.get("/usage?limit=1", &access).await;
    assert_eq!(usage.status, 200, "{}", usage.text);
    assert_eq!(usage.body["items"].as_array().map(Vec::len), Some(1));
    assert!(usage.body.get("has_more").is_some() && usage.body.get("next_cursor").is_some());

    // The simulator's clock moves on instead of the test sleeping: valid until its hour is up.
    h.sim.advance(Duration::from_secs(3_599));
    assert_eq!(h.get("/usage?limit=1", &access).await.status, 200, "a second before its end");
    h.sim.advance(Duration::from_secs(2));
    let expired = h.get("/usage?limit=1", &access).await;
    assert_eq!((expired.status, expired.error()), (401, "unauthorized"), "{}", expired.text);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn created_credentials_work_until_revoked() {
    let h = spawn(config()).await;
    // Manage through the admin client's token, the way the rotator does.
    let admin = h.token(ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET).await.str("access_token");

    let created = h.create("/oauth/clients", &admin, "billing").await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["scopes"], json!(["read"]));
    assert_eq!(created.body["last_used_at"], Value::Null);
    let (client_id, secret) = (created.str("client_id"), created.str("client_secret"));
    assert!(secret.starts_with("tcs_") && secret.len() >= 40);

    let token = h.token(&client_id, &secret).await;
    assert_eq!(token.status, 200, "{}", token.text);
    let access = token.str("access_token");
    assert_eq!(h.get("/usage", &access).await.status, 200);
    assert!(h.inspected(&client_id).last_used_at.is_some());

    // Credentials made through the API are not admins.
    let forbidden = h.get("/oauth/clients", &access).await;
    assert_eq!((forbidden.status, forbidden.error()), (403, "forbidden"));

    let path = format!("/oauth/clients/{client_id}");
    assert_eq!(h.call(Method::DELETE, &path, Some(&admin), None).await.status, 204);
    let revoked = h.get("/usage", &access).await;
    assert_eq!((revoked.status, revoked.error()), (401, "unauthorized"));
    let exchange = h.token(&client_id, &secret).await;
    assert_eq!((exchange.status, exchange.error()), (401, "invalid_client"));
    let again = h.call(Method::DELETE, &path, Some(&admin), None).await;
    assert_eq!((again.status, again.error()), (404, "not_found"));

    let key = h.create("/api-keys", ADMIN_KEY, "reports").await;
    assert_eq!(key.status, 201, "{}", key.text);
    let (key_id, key_value) = (key.str("id"), key.str("key"));
    assert!(key_value.starts_with("tk_live_") && key_value.len() >= 40);
    assert_eq!(key.str("prefix"), key_value[..12]);
    assert_eq!(h.get("/usage", &key_value).await.status, 200);
    let path = format!("/api-keys/{key_id}");
    assert_eq!(h.call(Method::DELETE, &path, Some(ADMIN_KEY), None).await.status, 204);
    assert_eq!(h.get("/usage", &key_value).await.status, 401);
    assert_eq!(h.sim.stats().creates, 2);
    assert_eq!(h.sim.stats().revokes, 2);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn listing_paginates_and_never_shows_secrets() {
    let h = spawn(Config { page_size: 1, admin_client: None, ..config() }).await;
    let mut secrets = vec![ADMIN_KEY.to_owned()];
    for name in ["c0", "c1", "c2"] {
        let created = h.create("/oauth/clients", ADMIN_KEY, name).await;
        assert_eq!(created.status, 201);
        secrets.push(created.str("client_secret"));
    }

    let mut names = Vec::new();
    let mut path = "/oauth/clients?limit=100".to_owned();
    loop {
        let page = h.get(&path, ADMIN_KEY).await;
        assert_eq!(page.status, 200, "{}", page.text);
        assert_eq!(page.body["items"].as_array().map(Vec::len), Some(1), "page size is capped at 1");
        assert_eq!(page.body["total_count"], 3);
        assert!(!page.text.contains("client_secret"));
        assert!(secrets.iter().all(|secret| !page.text.contains(secret.as_str())));
        names.push(page.body["items"][0]["name"].as_str().unwrap_or_default().to_owned());
        if page.body["has_more"] == json!(false) {
            assert_eq!(page.body["next_cursor"], Value::Null);
            break;
        }
        let cursor = page.str("next_cursor");
        assert!(cursor.parse::<u64>().is_err(), "cursor {cursor} should be opaque");
        path = format!("/oauth/clients?limit=100&cursor={cursor}");
    }
    assert_eq!(names, ["c0", "c1", "c2"]);

    // A cursor keeps its place when an earlier item is revoked between pages.
    let first = h.get("/oauth/clients", ADMIN_KEY).await;
    let c0 = first.body["items"][0]["client_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(h.call(Method::DELETE, &format!("/oauth/clients/{c0}"), Some(ADMIN_KEY), None).await.status, 204);
    let second = h.get(&format!("/oauth/clients?cursor={}", first.str("next_cursor")), ADMIN_KEY).await;
    assert_eq!(second.body["items"][0]["name"], "c1");
    assert_eq!(second.body["total_count"], 2);

    let keys = h.get("/api-keys", ADMIN_KEY).await;
    assert_eq!(keys.status, 200);
    assert!(keys.body["items"][0].get("key").is_none() && !keys.text.contains(ADMIN_KEY));

    for bad in
        ["/oauth/clients?limit=0", "/oauth/clients?limit=101", "/oauth/clients?limit=x", "/oauth/clients?cursor=5"]
    {
        let answer = h.get(bad, ADMIN_KEY).await;
        assert_eq!((answer.status, answer.error()), (400, "bad_request"), "{bad}");
    }
    // A cursor from one listing is refused by another.
    let usage = h.get(&format!("/usage?cursor={}", first.str("next_cursor")), ADMIN_KEY).await;
    assert_eq!(usage.status, 400);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_headers() {
    let h = spawn(Config { rate_limit_per_minute: 3, ..config() }).await;
    let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
    for remaining in [2, 1, 0] {
        let answer = h.get("/usage", ADMIN_KEY).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header_u64("x-ratelimit-limit"), 3);
        assert_eq!(answer.header_u64("x-ratelimit-remaining"), remaining);
        assert!((now..=now + 61).contains(&answer.header_u64("x-ratelimit-reset")));
    }
    let limited = h.get("/usage", ADMIN_KEY).await;
    assert_eq!((limited.status, limited.error()), (429, "rate_limited"));
    assert_eq!(limited.header_u64("x-ratelimit-remaining"), 0);
    assert!((1..=60).contains(&limited.header_u64("retry-after")));

    // Budgets are per credential, and the token endpoint and 401s carry the headers too.
    let token = h.token(ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET).await;
    assert_eq!(token.status, 200);
    assert_eq!(token.header_u64("x-ratelimit-remaining"), 2);
    let stranger = h.get("/usage", "not-a-token").await;
    assert_eq!(stranger.status, 401);
    assert_eq!(stranger.header_u64("x-ratelimit-limit"), 3);
    assert_eq!(h.sim.stats().real_rate_limits, 1);

    // Once the window is over (the clock moved on, not the test sleeping), the budget is whole.
    h.sim.advance(Duration::from_secs(61));
    let next = h.get("/usage", ADMIN_KEY).await;
    assert_eq!((next.status, next.header_u64("x-ratelimit-remaining")), (200, 2), "{}", next.text);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn injected_errors_and_rate_limits_change_nothing() {
    let faults = Faults { error_rate: 1.0, ..Faults::default() };
    let h = spawn(Config { faults, ..config() }).await;
    let failed = h.create("/oauth/clients", ADMIN_KEY, "doomed").await;
    assert_eq!((failed.status, failed.error()), (500, "internal_error"));
    assert!(failed.body["message"].is_string());
    assert_eq!(failed.header_u64("x-ratelimit-limit"), 1000);
    assert_eq!(h.sim.credentials().len(), 2, "only the admin credentials exist");
    assert_eq!(h.sim.stats().injected_errors, 1);
    assert_eq!(h.sim.stats().creates, 0);

    let limited_faults = json!({ "rate_limit_rate": 1.0 });
    assert_eq!(h.call(Method::PUT, "/_sim/faults", None, Some(limited_faults)).await.status, 200);
    let limited = h.create("/oauth/clients", ADMIN_KEY, "doomed").await;
    assert_eq!((limited.status, limited.error()), (429, "rate_limited"));
    assert_eq!(limited.header("retry-after"), "1");
    assert_eq!(h.sim.stats().injected_rate_limits, 1);

    h.sim.set_faults(Faults { latency_ms: 150, ..Faults::default() });
    let started = Instant::now();
    assert_eq!(h.create("/oauth/clients", ADMIN_KEY, "fine").await.status, 201);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let names: Vec<String> = h.sim.credentials().into_iter().map(|cred| cred.name).collect();
    assert!(!names.iter().any(|name| name == "doomed"));
    assert_eq!(h.sim.stats().by_status.get(&201), Some(&1));
    h.sim.shutdown().await;
}

#[tokio::test]
async fn create_timeout_creates_but_the_client_times_out() {
    let faults = Faults { create_timeout_rate: 1.0, create_timeout_delay_ms: 2000, ..Faults::default() };
    let h = spawn(Config { faults, ..config() }).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().expect("client builds");
    let body = json!({ "name": "slow" });
    let result = h.try_call(&impatient, Method::POST, "/api-keys", Some(ADMIN_KEY), Some(body)).await;
    let error = result.err().expect("the create times out at the client");
    assert!(error.is_timeout(), "{error}");

    let slow = h.sim.credentials().into_iter().find(|cred| cred.name == "slow").expect("created anyway");
    assert_eq!((slow.kind.as_str(), slow.state.as_str()), ("api_key", "active"));
    assert_eq!(h.sim.stats().injected_create_timeouts, 1);
    assert_eq!(h.sim.stats().creates, 1);

    // Shutdown cuts the held-back response short instead of waiting out the delay.
    let started = Instant::now();
    h.sim.shutdown().await;
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn dropped_connection_is_a_transport_error_without_effect() {
    let h = spawn(config()).await;
    // A first request leaves a kept-alive connection in the client's pool, so the drop hits a
    // reused connection, where a client is most tempted to retry silently.
    assert_eq!(h.get("/usage", ADMIN_KEY).await.status, 200);
    h.sim.set_faults(Faults { drop_rate: 1.0, ..Faults::default() });
    let body = json!({ "name": "dropped" });
    let result = h.try_call(&h.http, Method::POST, "/oauth/clients", Some(ADMIN_KEY), Some(body)).await;
    let error = result.err().expect("the client sees no response");
    assert!(!error.is_timeout() && error.status().is_none(), "{error:?}");
    assert_eq!(h.sim.credentials().len(), 2);
    let stats = h.sim.stats();
    assert_eq!(stats.injected_drops, 1);
    assert_eq!(stats.creates, 0);
    assert_eq!(stats.by_status.values().sum::<u64>(), 1, "only the first request got a status");

    h.sim.set_faults(Faults::default());
    assert_eq!(h.create("/oauth/clients", ADMIN_KEY, "kept").await.status, 201);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn inspection_shows_revoked_credentials_without_secrets() {
    let h = spawn(config()).await;
    let key = h.create("/api-keys", ADMIN_KEY, "short-lived").await;
    let (id, value) = (key.str("id"), key.str("key"));
    assert_eq!(h.get("/usage", &value).await.status, 200);
    assert_eq!(h.call(Method::DELETE, &format!("/api-keys/{id}"), Some(ADMIN_KEY), None).await.status, 204);

    let view = h.call(Method::GET, "/_sim/credentials", None, None).await;
    assert_eq!(view.status, 200);
    for secret in [value.as_str(), ADMIN_KEY, ADMIN_CLIENT_SECRET] {
        assert!(!view.text.contains(secret));
    }
    let listed: Vec<Inspected> = serde_json::from_value(view.body).expect("inspected json");
    let revoked = listed.iter().find(|cred| cred.id == id).expect("revoked key is still listed");
    assert_eq!(revoked.state, "revoked");
    assert!(revoked.revoked_at.is_some() && revoked.last_used_at.is_some() && !revoked.admin);
    assert_eq!(listed.iter().filter(|cred| cred.admin).count(), 2);
    assert_eq!(listed, h.sim.credentials());

    let stats = h.call(Method::GET, "/_sim/stats", None, None).await;
    assert_eq!((stats.body["creates"].as_u64(), stats.body["revokes"].as_u64()), (Some(1), Some(1)));
    for bad in [json!({ "typo_rate": 0.5 }), json!({ "error_rate": 2.0 })] {
        assert_eq!(h.call(Method::PUT, "/_sim/faults", None, Some(bad)).await.status, 400);
    }
    assert_eq!(h.call(Method::GET, "/_sim/faults", None, None).await.body["error_rate"], 0.0);
    let debug = format!("{:?}", config());
    assert!(!debug.contains(ADMIN_KEY) && !debug.contains(ADMIN_CLIENT_SECRET));
    h.sim.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_are_rejected() {
    let h = spawn(config()).await;
    let wrong_secret = h.token(ADMIN_CLIENT_ID, "tcs_wrong").await;
    assert_eq!((wrong_secret.status, wrong_secret.error()), (401, "invalid_client"));
    let no_grant = h
        .http
        .post(format!("{}/oauth/token", h.sim.base_url()))
        .form(&[("client_id", ADMIN_CLIENT_ID), ("client_secret", ADMIN_CLIENT_SECRET)])
        .send()
        .await
        .expect("token request completes");
    assert_eq!(no_grant.status(), 400);

    let no_name = h.call(Method::POST, "/api-keys", Some(ADMIN_KEY), Some(json!({ "scopes": [] }))).await;
    assert_eq!((no_name.status, no_name.error()), (400, "bad_request"));
    let garbage = h
        .http
        .post(format!("{}/oauth/clients", h.sim.base_url()))
        .bearer_auth(ADMIN_KEY)
        .body("{not json")
        .send()
        .await
        .expect("request completes");
    assert_eq!(garbage.status(), 400);

    assert_eq!(h.call(Method::GET, "/usage", None, None).await.status, 401);
    assert_eq!(h.get("/nothing-here", ADMIN_KEY).await.status, 404);
    assert_eq!(h.call(Method::PUT, "/usage", Some(ADMIN_KEY), None).await.status, 405);
    h.sim.shutdown().await;
}
