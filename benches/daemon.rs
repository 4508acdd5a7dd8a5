//! The service's steady-state cost: one reconciliation pass and one `/metrics` scrape with many
//! policies and a long journal, and the resident memory that takes. Run with
//! `cargo bench --bench daemon`; parameters by environment: `ROTATOR_BENCH_POLICIES` (10,000)
//! and `ROTATOR_BENCH_ROWS` (100,000 journal rows, spread evenly over the policies, each
//! policy's latest one promoted a day ago so nothing is due). Targets on the project's 2-core
//! machine: a pass under 1 s, a scrape under 50 ms, resident memory under 64 MiB.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use rotator::secret::Secret;
use rotator::{config, daemon, engine, journal, metrics, notify, policy, store, toktra};

fn var(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn write_policies(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let kind = if i % 2 == 0 { "oauth_client" } else { "api_key" };
        let schedule = if i % 3 == 0 { "cron: \"0 3 * * SUN\"\n  timezone: Europe/Berlin" } else { "every: 90d" };
        std::fs::write(
            dir.join(format!("p{i}.yaml")),
            format!(
                "name: p{i}\ncredential: {{ kind: {kind}, name: p{i} }}\nschedule:\n  {schedule}\n\
                 destinations:\n  - file: {{ path: out/p{i}.json }}\nrevoke: {{ grace: 1h }}\n"
            ),
        )
        .unwrap();
    }
}

/// `rows` rotations over `policies` policies, written in one transaction; each policy's latest
/// completed a day ago.
async fn fill_journal(url: &str, policies: usize, rows: usize) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let per_policy = (rows / policies.max(1)).max(1);
    let ts = |days: i64| (Utc::now() - chrono::Duration::days(days)).to_rfc3339_opts(SecondsFormat::Micros, true);
    for i in 0..policies {
        for k in 0..per_policy {
            let age = 1 + 90 * (per_policy - 1 - k) as i64;
            let id = uuid::Uuid::now_v7().to_string();
            let kind = if i % 2 == 0 { "oauth_client" } else { "api_key" };
            sqlx::query(
                "INSERT INTO rotations (id, policy, kind, phase, reason, compromised, credential_name, new_credential_id,
                    new_fingerprint, old_credentials, destinations, promoted_at, revoke_after, revoked_at, error,
                    started_at, updated_at, finished_at, revoke_first, waiting, revoked_credentials)
                 VALUES ($1, $2, $3, 'completed', 'scheduled', 0, $4, $5, 'sha256:0', '[\"old\"]', '[\"file:x\"]',
                    $6, $6, $6, NULL, $6, $6, $6, 0, NULL, '[\"old\"]')",
            )
            .bind(&id)
            .bind(format!("p{i}"))
            .bind(kind)
            .bind(format!("p{i}-{id}"))
            .bind(format!("key-{id}"))
            .bind(ts(age))
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }
    tx.commit().await.unwrap();
    pool.close().await;
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn spread(mut times: Vec<Duration>) -> String {
    times.sort();
    format!(
        "best {:.1} ms, median {:.1} ms, worst {:.1} ms",
        times[0].as_secs_f64() * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    )
}

fn main() {
    let policies = var("ROTATOR_BENCH_POLICIES", 10_000);
    let rows = var("ROTATOR_BENCH_ROWS", 100_000);
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-daemon-{}", uuid::Uuid::new_v4().simple()));
    let policy_dir = dir.join("policies");
    write_policies(&policy_dir, policies);
    std::fs::write(dir.join("rotator.toml"), "tick = \"30s\"\nconcurrency = 16\n").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let rss_start = rss_mib();
        let loaded = policy::load_dir(&policy_dir).expect("valid policies");
        let rss_policies = rss_mib();
        let path = dir.join("rotator.db");
        let journal = journal::Journal::open(path.to_str().unwrap()).await.unwrap();
        let started = Instant::now();
        fill_journal(&format!("sqlite://{}", path.display()), policies, rows).await;
        println!("setup: {policies} policies, {rows} journal rows written in {:.1}s", started.elapsed().as_secs_f64());

        let config = config::Config::load(Some(&dir.join("rotator.toml"))).unwrap();
        // Never called: nothing is due, and every credential's age comes from the journal.
        let toktra = toktra::Client::new(toktra::Settings::new(
            "http://127.0.0.1:9".to_string(),
            toktra::ManagementAuth::ApiKey(Secret::new("unused")),
        ))
        .unwrap();
        let engine = engine::Engine {
            toktra: Arc::new(toktra),
            journal,
            clients: Arc::new(store::Clients { aws: None, vault: None }),
            options: engine::Options::default(),
            stop: None,
        };
        let metrics = Arc::new(metrics::Metrics::default());
        let (notifier, _tasks) = notify::Notifier::start(config.channels.clone(), metrics.clone());
        let daemon = daemon::Daemon::new(&config, policy_dir.clone(), loaded, engine, metrics, notifier);
        let rss_before = rss_mib();

        let mut reads = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let rotations = daemon.engine.journal.pass_view().await.unwrap();
            reads.push(started.elapsed());
            assert!(rotations.len() >= policies, "{} rows", rotations.len());
        }
        println!("journal read of a pass: {}", spread(reads));
        let mut passes = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            daemon.clone().pass().await;
            passes.push(started.elapsed());
        }
        let mut scrapes = Vec::new();
        let mut size = 0;
        for _ in 0..20 {
            let started = Instant::now();
            let snapshot = daemon.snapshot().await;
            size = daemon.metrics.render(&snapshot).len();
            scrapes.push(started.elapsed());
        }
        println!("pass ({policies} policies, {rows} rows): {} (target < 1000 ms)", spread(passes));
        println!("/metrics scrape ({size} bytes): {} (target < 50 ms)", spread(scrapes));
        println!(
            "resident memory: {:.1} MiB after the passes (target < 64 MiB); {rss_start:.1} MiB at start, {rss_policies:.1} MiB with the policies loaded, {rss_before:.1} MiB before the first pass",
            rss_mib()
        );
    });
    std::fs::remove_dir_all(&dir).ok();
}
