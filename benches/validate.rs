//! Validates 10,000 generated policy files (one policy each, every schedule form, one to three
//! destinations) and prints how long loading and validating the set took. Target: under 1 s on
//! the project's 2-core machine. Run with `cargo bench --bench validate`.

use std::time::Instant;

fn policy(i: usize) -> String {
    let kind = if i.is_multiple_of(2) { "oauth_client" } else { "api_key" };
    let schedule = match i % 4 {
        0 => "every: 90d".to_string(),
        1 => "every: 30d\n  jitter: 2h".to_string(),
        2 => "cron: \"0 3 * * SUN\"\n  timezone: Europe/Berlin\n  window: { days: [sat, sun], start: \"02:00\", duration: 4h }".to_string(),
        _ => format!("cron: \"{} 4 1 * *\"\n  timezone: America/New_York", i % 60),
    };
    let mut destinations = format!("  - vault: {{ mount: secret, path: toktra/p{i} }}\n");
    if !i.is_multiple_of(3) {
        destinations.push_str(&format!(
            "  - aws_secrets_manager: {{ secret_id: prod/toktra/p{i}, region: eu-central-1, create: true }}\n"
        ));
    }
    if i.is_multiple_of(5) {
        destinations.push_str(&format!("  - file: {{ path: out/p{i}.json }}\n"));
    }
    format!(
        "# generated policy {i}\nname: p{i}\ndescription: generated for the benchmark\nlabels: {{ team: t{}, env: prod }}\n\
         credential:\n  kind: {kind}\n  name: p{i}\n  scopes: [usage:read]\nschedule:\n  {schedule}\ndestinations:\n{destinations}\
         revoke:\n  grace: 12h\n  require_idle: 1h\nnotify: [platform-oncall]\n",
        i % 17
    )
}

fn main() {
    let count = 10_000;
    let dir = std::env::temp_dir().join(format!("rotator-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..count {
        std::fs::write(dir.join(format!("p{i:05}.yaml")), policy(i)).unwrap();
    }
    let mut runs = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let policies = rotator::policy::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        runs.push(started.elapsed());
        assert_eq!(policies.len(), count);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    runs.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!(
        "validate {count} policy files: best {:.0} ms, median {:.0} ms, worst {:.0} ms (5 runs; target < 1000 ms)",
        ms(runs[0]),
        ms(runs[2]),
        ms(runs[4])
    );
}
