//! The command line: validation errors, usage errors, the demo.

use crate::harness::Env;

/// Every kind of bad input, through the CLI: exit 2, the file and line named, nothing minted,
/// nothing written. `{ok}` is a valid policy body to vary.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_policies_exit_2_name_the_file_and_change_nothing() {
    let env = Env::start().await;
    env.policy("good.yaml", "name: good\ncredential: { kind: api_key, name: good }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: good.json }\n");
    let ok = "credential: { kind: api_key, name: bad }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: b.json }\n";
    let cases: Vec<(String, &str)> = vec![
        (format!("name: bad\n{ok}colour: red\n"), "bad.yaml:6:1: colour: unknown field `colour`"),
        (format!("name: bad\n{}", ok.replace("api_key", "password")), "bad.yaml:2:15: credential.kind: unknown variant `password`"),
        (format!("name: bad\n{}", ok.replace("30d", "30x")), "bad.yaml:3:13: schedule.every: duration `30x` has unknown unit"),
        (format!("name: bad\n{}", ok.replace("30d", "30m")), "bad.yaml:3:13: schedule.every: `30m` is shorter than the minimum of 1h"),
        (format!("name: bad\n{}revoke: {{ grace: 31d }}\n", ok), "bad.yaml:6:11: revoke.grace: grace `31d` is longer than the rotation interval `30d`"),
        (format!("name: bad\n{}", ok.replace("every: 30d", "cron: \"0 25 * * *\"")), "bad.yaml:3:13: schedule.cron: hour field: 25 is outside 0-23"),
        (format!("name: bad\n{}", ok.replace("every: 30d", "every: 30d, window: { start: \"02:00\", duration: 0s }")), "bad.yaml:3:51: schedule.window.duration: a window of 0s never opens"),
        (format!("name: bad\n{}", ok.replace("every: 30d", "every: 30d, timezone: Europe/Atlantis")), "bad.yaml:3:25: schedule.timezone: `Europe/Atlantis` is not an IANA time zone"),
        ("name: bad\ncredential: { kind: api_key, name: bad }\nschedule: { every: 30d }\ndestinations: []\n".to_string(), "bad.yaml:4:1: destinations: at least one destination is required"),
        (format!("name: Bad_Name\n{ok}"), "bad.yaml:1:1: name: `Bad_Name` is not a valid name"),
        (format!("name: good\n{ok}"), "good.yaml:1:1: name: duplicate policy name `good`, first defined at"),
        (format!("name: bad\n{}", ok.replace("b.json", "good.json")), "destinations: destination `file:"),
        (format!("name: bad\n{ok}  - file: {{ path: b.json }}\n"), "bad.yaml:6:5: destinations[1]: destination `file:"),
        ("name: bad\ncredential: { kind: api_key\n".to_string(), "bad.yaml:2:13: "),
        ("name: [not, a, string]\ncredential: { kind: api_key, name: bad }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: b.json }\n".to_string(), "bad.yaml:1:1: name: invalid type: sequence, expected a string"),
        (format!("name: bad\n{}", ok.replace("every: 30d", "every: 30d, jitter: 30d")), "bad.yaml:3:25: schedule.jitter: jitter `30d` must be shorter than the rotation interval"),
    ];
    for (yaml, expected) in &cases {
        env.policy("bad.yaml", yaml);
        for args in [vec!["validate"], vec!["rotate", "--all"], vec!["rotate", "good"], vec!["plan"]] {
            let run = env.rotator(&args).await;
            run.assert_code(2);
            let output = format!("{}{}", run.stdout, run.stderr);
            assert!(
                output.contains(expected),
                "`{}` should report `{expected}`:\n{output}\n--- input ---\n{yaml}",
                args.join(" ")
            );
            if expected.contains("duplicate policy name") {
                assert!(output.contains("bad.yaml:1:1"), "both files are named: {output}");
            }
        }
    }
    assert!(env.sim.credentials().iter().all(|c| c.admin), "nothing was minted");
    assert_eq!(env.sim.stats().requests, 0, "toktra was never called");
    assert!(!env.dir.join("policies/good.json").exists(), "nothing was written");
    assert!(!env.journal_path().exists(), "no journal was created");
    std::fs::remove_file(env.dir.join("policies/bad.yaml")).unwrap();
    env.rotator(&["validate"]).await.assert_code(0);
    let run = env.rotator(&["rotate", "nosuch"]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("unknown policy `nosuch`"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_rotates_the_example_policies() {
    let env = Env::start().await;
    let run = env.rotator(&["demo"]).await;
    run.assert_code(0);
    for expected in [
        "ci-pipeline",
        "billing-export",
        "partner-sync",
        "completed",
        "awaiting revocation",
        "rejected (401)",
        "authenticates",
        "authenticates, as its grace asks",
    ] {
        assert!(run.stdout.contains(expected), "demo output lacks `{expected}`:\n{}", run.stdout);
    }
    assert!(
        !run.stdout.contains("REJECTED")
            && !run.stdout.contains("STILL ACCEPTED")
            && !run.stdout.contains("IS REJECTED"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_policies_are_valid() {
    let env = Env::start().await;
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let run = env.rotator(&["validate", "--policies", examples]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("5 policies valid"), "{}", run.stdout);
}
