//! Mass rotation (`rotator rotate --all`, the real binary) against the Toktra simulator with
//! injected latency and, optionally, a rate limit that binds: how long rotating everything takes
//! and what bounds it. Run with `cargo bench --bench mass_rotation`; parameters by environment:
//!
//! - `ROTATOR_BENCH_POLICIES` (200): API-key policies, each replacing a served key (steady state);
//! - `ROTATOR_BENCH_LATENCY_MS` (150): added to every simulator request;
//! - `ROTATOR_BENCH_RATE_LIMIT` (none): requests per credential per window, and
//!   `ROTATOR_BENCH_WINDOW_SECS` (60) the window; set a low limit and a short window to make the
//!   run span several windows;
//! - `ROTATOR_BENCH_CONCURRENCY` (16): passed as `ROTATOR_CONCURRENCY`;
//! - `ROTATOR_BENCH_AWS_ENDPOINT` (unset): a moto server; when set, the same run is repeated with
//!   AWS Secrets Manager destinations and reported beside the file run.
//!
//! Printed per run: wall time, rotations per minute, management calls per rotation (the
//! client's own count), `429`s Toktra answered, and what bounds the run: with a rate limit, the
//! limit divided by the calls per rotation; without, the concurrency divided by one rotation's
//! critical path (its sequential Toktra calls times the latency). Efficiency is the achieved rate
//! over that bound.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rotator::policy::CredentialKind;
use rotator::secret::Secret;
use rotator::sim;
use rotator::toktra;

const ADMIN_KEY: &str = "tk_admin_bench_0123456789abcdefghijklmnopqrstuvwxyz";
const SEED_CLIENT: (&str, &str) = ("cl_bench_seeder", "tcs_bench_seeder_0123456789abcdefghijklmnop");

fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Dest {
    File,
    Aws,
}

struct Figures {
    wall: Duration,
    rotations: u64,
    failed: u64,
    management_calls: u64,
    /// The run's own management calls (endpoint check, listing, token exchange), not a rotation's.
    management_per_run: u64,
    probe_calls: u64,
    rate_limited: u64,
    requests: u64,
}

async fn run(dest: Dest, aws: Option<&str>) -> Figures {
    let policies: u64 = var("ROTATOR_BENCH_POLICIES", 200);
    let latency: u64 = var("ROTATOR_BENCH_LATENCY_MS", 150);
    let limit: u32 = var("ROTATOR_BENCH_RATE_LIMIT", 1_000_000);
    let window: u64 = var("ROTATOR_BENCH_WINDOW_SECS", 60);
    let concurrency: u64 = var("ROTATOR_BENCH_CONCURRENCY", 16);
    let simulator = sim::Simulator::start(
        0,
        sim::Config {
            rate_limit_per_minute: limit,
            rate_limit_window: Duration::from_secs(window),
            page_size: 100,
            admin_api_key: Some(ADMIN_KEY.into()),
            admin_client: Some((SEED_CLIENT.0.into(), SEED_CLIENT.1.into())),
            ..Default::default()
        },
    )
    .await
    .expect("start the simulator");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    // The served keys, made by another admin credential so the run's budget starts full.
    let mut settings = toktra::Settings::new(
        simulator.base_url(),
        toktra::ManagementAuth::Client { client_id: SEED_CLIENT.0.into(), client_secret: Secret::new(SEED_CLIENT.1) },
    );
    settings.retry.max_rate_limit_wait = Duration::from_secs(window + 5);
    let seeder = toktra::Client::new(settings).unwrap();
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let aws_client = match (dest, aws) {
        (Dest::Aws, Some(endpoint)) => Some(aws_client(endpoint).await),
        _ => None,
    };
    for i in 0..policies {
        let name = format!("mass-{i}");
        let key = seeder.create(CredentialKind::ApiKey, &format!("{name}-legacy"), &[], "seed").await.unwrap();
        let value = serde_json::json!({ "key_id": key.id, "api_key": key.secret.expose() }).to_string();
        let destination = match dest {
            Dest::File => {
                std::fs::write(dir.join("policies").join(format!("{name}.json")), &value).unwrap();
                format!("  - file: {{ path: {name}.json }}\n")
            }
            Dest::Aws => {
                let id = format!("{prefix}/{name}");
                aws_client.as_ref().unwrap().create_secret().name(&id).secret_string(&value).send().await.unwrap();
                format!("  - aws_secrets_manager: {{ secret_id: '{id}' }}\n")
            }
        };
        std::fs::write(
            dir.join("policies").join(format!("{name}.yaml")),
            format!(
                "name: {name}\ncredential: {{ kind: api_key, name: {name} }}\nschedule: {{ every: 90d }}\n\
                 destinations:\n{destination}revoke: {{ grace: 0s }}\n"
            ),
        )
        .unwrap();
    }
    simulator.set_faults(sim::Faults { latency_ms: latency, ..Default::default() });
    let before = simulator.stats();

    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rotator"));
    command
        .args(["rotate", "--all", "--log-format", "json", "--format", "json"])
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &dir)
        .env("TOKTRA_API_URL", simulator.base_url())
        .env("TOKTRA_API_KEY", ADMIN_KEY)
        .env("ROTATOR_DATABASE_URL", dir.join("rotator.db"))
        .env("ROTATOR_POLICIES", dir.join("policies"))
        .env("ROTATOR_CONCURRENCY", concurrency.to_string())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    if let Some(endpoint) = aws {
        command.env("AWS_ENDPOINT_URL", endpoint);
    }
    let started = Instant::now();
    let output = command.output().await.expect("run rotator");
    let wall = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "toktra calls of this run")
        .unwrap_or_else(|| panic!("no summary of the run's calls (exit {:?}):\n{stderr}", output.status.code()));
    let outcomes: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let completed = outcomes
        .as_array()
        .map(|rows| {
            rows.iter()
                .flat_map(|r| r["rotations"].as_array().cloned().unwrap_or_default())
                .filter(|o| o["status"] == "completed")
                .count() as u64
        })
        .unwrap_or(0);
    let after = simulator.stats();
    std::fs::remove_dir_all(&dir).ok();
    Figures {
        wall,
        rotations: completed,
        failed: policies - completed,
        management_calls: summary["management_calls"].as_u64().unwrap_or(0),
        management_per_run: summary["management_per_run"].as_u64().unwrap_or(0),
        probe_calls: summary["probe_calls"].as_u64().unwrap_or(0),
        rate_limited: after.real_rate_limits - before.real_rate_limits,
        requests: after.requests - before.requests,
    }
}

async fn aws_client(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "testing", "testing", None, None, "bench",
        ))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

fn report(what: &str, f: &Figures) {
    let latency: f64 = var("ROTATOR_BENCH_LATENCY_MS", 150u64) as f64 / 1000.0;
    let limit: u32 = var("ROTATOR_BENCH_RATE_LIMIT", 1_000_000);
    let window: f64 = var("ROTATOR_BENCH_WINDOW_SECS", 60u64) as f64;
    let concurrency: f64 = var("ROTATOR_BENCH_CONCURRENCY", 16u64) as f64;
    let per_minute = f.rotations as f64 / f.wall.as_secs_f64() * 60.0;
    let calls = (f.management_calls - f.management_per_run) as f64 / f.rotations.max(1) as f64;
    println!("{what}:");
    println!(
        "  {} rotations ({} failed) in {:.2}s: {per_minute:.0} rotations/min",
        f.rotations,
        f.failed,
        f.wall.as_secs_f64()
    );
    println!(
        "  management calls {} ({calls:.2} per rotation + {} per run), probe calls {}, simulator requests {}, 429s received {}",
        f.management_calls, f.management_per_run, f.probe_calls, f.requests, f.rate_limited
    );
    let limit_bound = (limit < 1_000_000).then(|| f64::from(limit) * 60.0 / window / calls);
    // One rotation's sequential Toktra calls: its management and probe calls, less the run's own.
    let sequential = ((f.requests - f.management_per_run) as f64 / f.rotations.max(1) as f64).max(1.0);
    let latency_bound = concurrency / (sequential * latency) * 60.0;
    match limit_bound {
        Some(bound) if bound < latency_bound => println!(
            "  bound by the rate limit: {limit} per {window:.0}s / {calls:.2} calls = {bound:.0} rotations/min; efficiency {:.0}%",
            per_minute / bound * 100.0
        ),
        _ => println!(
            "  bound by latency: concurrency {concurrency:.0} / ({sequential:.1} sequential calls x {:.0} ms) = {latency_bound:.0} rotations/min; efficiency {:.0}%",
            latency * 1000.0,
            per_minute / latency_bound * 100.0
        ),
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let file = run(Dest::File, None).await;
        report("file destinations, SQLite journal", &file);
        if let Ok(endpoint) = std::env::var("ROTATOR_BENCH_AWS_ENDPOINT") {
            let aws = run(Dest::Aws, Some(&endpoint)).await;
            report("AWS Secrets Manager destinations (moto), SQLite journal", &aws);
        }
    });
}
