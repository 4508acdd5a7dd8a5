//! The command line: validation errors, usage errors, the demo.

use crate::harness::Env;

#[tokio::test(flavor = "multi_thread")]
async fn invalid_policies_exit_2_name_the_file_and_change_nothing() {
    let env = Env::start().await;
    env.policy("good.yaml", "name: good\ncredential: { kind: api_key, name: good }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: good.json }\n");
    let cases = [
        (
            "name: bad\ncredential: { kind: api_key, name: bad }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: b.json }\ncolour: red\n",
            "bad.yaml:6:1: unknown field `colour`",
        ),
        (
            "name: bad\ncredential: { kind: password, name: bad }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: b.json }\n",
            "bad.yaml:2:",
        ),
        (
            "name: bad\ncredential: { kind: api_key, name: bad }\nschedule: { every: 30x }\ndestinations:\n  - file: { path: b.json }\n",
            "bad.yaml:3:",
        ),
        (
            "name: bad\ncredential: { kind: api_key, name: bad }\nschedule: { every: 30d }\ndestinations: []\n",
            "destinations: at least one destination is required",
        ),
        (
            "name: good\ncredential: { kind: api_key, name: bad }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: b.json }\n",
            "duplicate policy name `good`, first defined at",
        ),
    ];
    for (yaml, expected) in cases {
        env.policy("bad.yaml", yaml);
        for args in [vec!["validate"], vec!["rotate", "--all"], vec!["rotate", "good"]] {
            let run = env.rotator(&args).await;
            run.assert_code(2);
            let output = format!("{}{}", run.stdout, run.stderr);
            assert!(output.contains(expected), "`{}` should report `{expected}`:\n{output}", args.join(" "));
        }
    }
    assert!(env.sim.credentials().iter().all(|c| c.admin), "nothing was minted");
    assert!(!env.dir.join("policies/good.json").exists(), "nothing was written");
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
    assert!(run.stdout.contains("3 policies valid"), "{}", run.stdout);
}
