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

/// Read-only commands read: without a journal they say so (exit 2) and create nothing; they
/// need only what they use (not the API token file `serve` reads); `history` of a name that is
/// neither a policy nor in the journal is an error naming the known policies.
#[tokio::test(flavor = "multi_thread")]
async fn read_only_commands_only_read() {
    use rotator::policy::CredentialKind;

    use crate::harness::{Dest, Spec};

    let env = Env::start().await;
    let spec = Spec {
        name: "reader".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("out/reader.json".into())],
        grace: "0s",
    };
    let old = env.adopt(std::slice::from_ref(&spec)).await;
    std::fs::write(env.dir.join("rotator.toml"), "api_token_file = \"/nonexistent/rotator-api-token\"\n").unwrap();
    for args in [&["status"][..], &["history"][..]] {
        let run = env.rotator(args).await;
        assert_eq!(run.code, 2, "{args:?}\n{}\n{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("no journal at"), "{args:?}: {}", run.stderr);
        assert!(!env.journal_path().exists(), "{args:?} created the journal");
    }
    env.rotator(&["rotate", "reader"]).await.assert_code(0);
    let run = env.rotator(&["status"]).await;
    assert_eq!(run.code, 0, "the API token file is not needed\n{}", run.stderr);
    assert!(run.stderr.contains(&format!("journal: {}", env.journal_path().display())), "{}", run.stderr);
    let run = env.rotator(&["history", "nosuch"]).await;
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("unknown policy `nosuch`") && run.stderr.contains("known: reader"), "{}", run.stderr);
    env.rotator(&["history", "reader"]).await.assert_code(0);
    std::fs::remove_file(env.dir.join("rotator.toml")).unwrap();
    env.assert_converged(&[spec], &old).await;
}

/// `rotator init` writes a configuration, a sample policy that validates and the schema its
/// modeline names, and refuses to overwrite; `rotator completions` prints a script.
#[tokio::test(flavor = "multi_thread")]
async fn init_starts_a_project_and_completions_print() {
    let env = Env::start().await;
    let dir = env.dir.join("project");
    let target = dir.display().to_string();
    let run = env.rotator(&["init", &target]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for file in ["rotator.toml", "policies/example.yaml", "schema/policy.schema.json"] {
        assert!(dir.join(file).is_file(), "{file} written");
    }
    let policy = std::fs::read_to_string(dir.join("policies/example.yaml")).unwrap();
    let modeline = policy.lines().next().unwrap().trim_start_matches("# yaml-language-server: $schema=");
    assert!(dir.join("policies").join(modeline).is_file(), "the modeline points at the schema: {modeline}");
    let policies = dir.join("policies").display().to_string();
    let run = env.rotator(&["--policies", &policies, "validate"]).await;
    assert_eq!(run.code, 0, "the sample policy validates\n{}\n{}", run.stdout, run.stderr);
    std::fs::write(dir.join("policies/example.yaml"), "edited").unwrap();
    let run = env.rotator(&["init", &target]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("exists"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(dir.join("policies/example.yaml")).unwrap(), "edited", "nothing overwritten");
    for shell in ["bash", "zsh", "fish"] {
        let run = env.rotator(&["completions", shell]).await;
        assert_eq!(run.code, 0, "{shell}: {}", run.stderr);
        assert!(run.stdout.contains("rotator") && run.stdout.contains("rotate"), "{shell}");
    }
}

/// Every command the README shows that runs without Toktra, Vault or AWS (validate, schema,
/// init, completions, demo, permissions) runs as shown against the repository's own files.
#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_offline_commands_run_as_shown() {
    let env = Env::start().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut in_block = false;
    let mut commands = Vec::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.split(" #").next().unwrap().trim();
        let line = line.trim_start_matches("- run: ").replace("cargo run -- ", "rotator ");
        let Some(rest) = line.strip_prefix("rotator ") else { continue };
        // A redirection of the output is the shell's, not an argument.
        let words: Vec<String> = rest.split_whitespace().take_while(|w| *w != ">").map(str::to_string).collect();
        let offline = ["validate", "schema", "init", "completions", "demo", "permissions"];
        if words.first().is_some_and(|w| offline.contains(&w.as_str())) {
            commands.push(words);
        }
    }
    assert!(commands.iter().any(|c| c[0] == "validate") && commands.iter().any(|c| c[0] == "demo"), "{commands:?}");
    let policies = root.join("policies").display().to_string();
    for words in &commands {
        let mut args: Vec<&str> = vec!["--policies", &policies];
        args.extend(words.iter().map(String::as_str));
        let run = env.rotator(&args).await;
        assert_eq!(run.code, 0, "README: rotator {}\n{}\n{}", words.join(" "), run.stdout, run.stderr);
    }
    println!("README commands run: {}", commands.len());
}

/// Free text is shown escaped: a reason with a newline and an escape sequence cannot forge or
/// colour `history` lines; history columns fit long policy names.
#[tokio::test(flavor = "multi_thread")]
async fn history_escapes_control_characters_and_fits_long_names() {
    use rotator::policy::CredentialKind;

    use crate::harness::{Dest, Spec};

    let env = Env::start().await;
    let name = "a-policy-name-that-is-much-longer-than-twenty-characters";
    let spec = Spec {
        name: name.into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File("out/long.json".into())],
        grace: "0s",
    };
    let old = env.adopt(std::slice::from_ref(&spec)).await;
    env.rotator(&["rotate", name, "--reason", "first line\nforged line \u{1b}[31mred"]).await.assert_code(0);
    let run = env.rotator(&["history"]).await;
    run.assert_code(0);
    assert!(
        !run.stdout.contains('\u{1b}') && run.stdout.contains("first line\\nforged line \\u{1b}[31mred"),
        "{}",
        run.stdout
    );
    let header = run.stdout.lines().next().unwrap();
    let row = run.stdout.lines().nth(1).unwrap();
    let json = env.rotator(&["history", "--format", "json"]).await;
    let id = serde_json::from_str::<serde_json::Value>(&json.stdout).unwrap()[0]["id"].as_str().unwrap().to_string();
    assert_eq!(row.find(&id), header.find("ROTATION"), "the columns line up:\n{header}\n{row}");
    assert!(row.contains(&format!("{name} ")), "{row}");
    env.assert_converged(&[spec], &old).await;
}

/// A bad value in the configuration file is reported at its file and line, naming the key, not
/// an environment variable that was never set.
#[tokio::test(flavor = "multi_thread")]
async fn configuration_errors_point_at_the_file_and_line() {
    let mut env = Env::start().await;
    // The file's `toktra.timeout` must count, not the harness's TOKTRA_TIMEOUT.
    env.env.push(("TOKTRA_TIMEOUT".into(), String::new()));
    env.policy("ok.yaml", "name: ok\ncredential: { kind: api_key, name: ok }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: ok.json }\n");
    for (text, expected) in [
        ("# settings\nconcurrency = 2\ntick = \"soon\"\n", "rotator.toml:3 (tick)"),
        ("[toktra]\n\ntimeout = \"30 s\"\n", "rotator.toml:3 (toktra.timeout)"),
    ] {
        std::fs::write(env.dir.join("rotator.toml"), text).unwrap();
        let run = env.rotator(&["plan"]).await;
        assert_eq!(run.code, 2, "{text}\n{}", run.stderr);
        assert!(run.stderr.contains(expected) && !run.stderr.contains("ROTATOR_TICK"), "{text}\n{}", run.stderr);
    }
}
