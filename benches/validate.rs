//! Validation cost, printed (run with `cargo bench --bench validate`; the figures are for the
//! project's 2-core machine). Shapes:
//! - 10,000 policy files, one policy each (every schedule form, one to three destinations);
//!   target under 1 s;
//! - one file of 10,000 documents (the most a file may hold), the same policies;
//! - one policy with 20,000 destinations;
//! - one policy with 20,000 labels, every one of them invalid (20,000 problems).
//!
//! Each is validated five times; best, median and worst are printed. The shapes in one file
//! cost about what the same content costs spread over files: validation is linear in the size
//! of a file, not quadratic.

use std::path::Path;
use std::time::{Duration, Instant};

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

/// One policy whose `destinations` and `labels` are the given lines.
fn wide(destinations: &str, labels: &str) -> String {
    format!(
        "name: wide\nlabels:\n{labels}credential: {{ kind: api_key, name: wide }}\nschedule: {{ every: 30d }}\ndestinations:\n{destinations}"
    )
}

/// Validates `dir` five times; `expect` checks each outcome.
fn measure(what: &str, dir: &Path, expect: impl Fn(Result<Vec<rotator::policy::Policy>, rotator::policy::Invalid>)) {
    let mut runs: Vec<Duration> = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let result = rotator::policy::load_dir(dir);
        runs.push(started.elapsed());
        expect(result);
    }
    runs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "validate {what}: best {:.0} ms, median {:.0} ms, worst {:.0} ms (5 runs)",
        ms(runs[0]),
        ms(runs[2]),
        ms(runs[4])
    );
}

fn fresh(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rotator-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    let count = 10_000;
    let dir = fresh("files");
    for i in 0..count {
        std::fs::write(dir.join(format!("p{i:05}.yaml")), policy(i)).unwrap();
    }
    measure(&format!("{count} policy files (target < 1000 ms)"), &dir, |r| {
        assert_eq!(r.unwrap_or_else(|e| panic!("{e}")).len(), count)
    });
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = fresh("documents");
    let documents: Vec<String> = (0..count).map(policy).collect();
    std::fs::write(dir.join("all.yaml"), documents.join("---\n")).unwrap();
    measure(&format!("{count} documents in one file"), &dir, |r| {
        assert_eq!(r.unwrap_or_else(|e| panic!("{e}")).len(), count)
    });
    std::fs::remove_dir_all(&dir).unwrap();

    let wide_count = 20_000;
    let dir = fresh("destinations");
    let destinations: String =
        (0..wide_count).map(|i| format!("  - vault: {{ mount: secret, path: toktra/wide/{i} }}\n")).collect();
    std::fs::write(dir.join("wide.yaml"), wide(&destinations, "  team: platform\n")).unwrap();
    measure(&format!("one policy with {wide_count} destinations"), &dir, |r| {
        assert_eq!(r.unwrap_or_else(|e| panic!("{e}"))[0].destinations.len(), wide_count)
    });
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = fresh("labels");
    let labels: String = (0..wide_count).map(|i| format!("  \"bad label {i}\": x\n")).collect();
    std::fs::write(dir.join("labels.yaml"), wide("  - vault: { mount: secret, path: toktra/wide }\n", &labels))
        .unwrap();
    measure(&format!("one policy with {wide_count} invalid labels"), &dir, |r| {
        assert_eq!(r.expect_err("invalid").0.len(), wide_count)
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
