//! Policy validation: the YAML users write (anchors, merge keys, several documents), where each
//! problem is reported, and that a file or directory cannot make validation hang or explode.
//! Through `rotator validate` and `rotator::policy::load_dir`.

use std::path::PathBuf;

use crate::harness::Env;

/// A fresh directory for one test's policy files.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("validate-{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Loads `files` as one policy directory: the policies, or every problem as
/// `file:line:col: field: message` with the file relative to the directory.
fn load(files: &[(&str, &str)]) -> Result<Vec<rotator::policy::Policy>, Vec<String>> {
    let dir = scratch("load");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let result = rotator::policy::load_dir(&dir).map_err(|invalid| {
        let prefix = format!("{}/", dir.display());
        invalid.0.iter().map(|p| p.to_string().replace(&prefix, "")).collect()
    });
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

fn problems(text: &str) -> Vec<String> {
    load(&[("p.yaml", text)]).err().unwrap_or_default()
}

const BODY: &str =
    "credential: { kind: api_key, name: x }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: x.json }\n";

/// Anchors, aliases, merge keys, several documents per file and empty documents before the
/// first: what YAML users write to share defaults between policies.
#[test]
fn anchors_aliases_merge_keys_and_documents() {
    let text = "\
---
# an empty document first
---
name: first
labels: &labels { team: platform }
credential: { kind: api_key, name: first }
schedule: &schedule
  every: 30d
  timezone: Europe/Berlin
destinations:
  - file: { path: first.json }
revoke: &revoke { grace: 2h }
---
name: &name second
labels: { team: platform }
credential: { kind: api_key, name: *name }
schedule:
  <<: { every: 7d, timezone: UTC }
  jitter: 1h
destinations:
  - file: { path: second.json }
revoke:
  <<: { grace: 1h, require_idle: 1h }
  grace: 30m
";
    let policies = load(&[("p.yaml", text)]).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(policies.len(), 2);
    assert_eq!(policies[1].labels["team"], "platform");
    assert_eq!(policies[1].credential.name, "second", "an alias of an anchored scalar");
    assert_eq!(
        policies[1].schedule.trigger,
        rotator::schedule::Trigger::Every(std::time::Duration::from_secs(7 * 86_400))
    );
    assert_eq!(policies[1].schedule.jitter.as_secs(), 3_600);
    // An explicit key overrides the merged one.
    assert_eq!(policies[1].revoke.grace.as_secs(), 1_800);
    assert_eq!(policies[1].revoke.require_idle.map(|d| d.as_secs()), Some(3_600));
    assert_eq!(policies[0].source.line, 4, "the first policy starts after the empty document");
}

/// Merge keys share defaults within a document (`<<: *defaults`), the form the issue reported
/// refused as an unknown field `<<`.
#[test]
fn merge_keys_share_defaults() {
    let text = format!(
        "name: a\n{}revoke: &defaults {{ grace: 1h, require_idle: 30m }}\n---\nname: b\ncredential: {{ kind: api_key, name: b }}\nschedule: {{ every: 30d }}\ndestinations:\n  - file: {{ path: b.json }}\nrevoke:\n  <<: {{ grace: 2h }}\n",
        BODY
    );
    let policies = load(&[("p.yaml", &text)]).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(policies[1].revoke.grace.as_secs(), 7_200);
    let text = "defaults: &d { kind: api_key }\n";
    assert!(problems(text).iter().any(|p| p.starts_with("p.yaml:1:1: defaults: unknown field `defaults`")));
    let text = format!(
        "name: a\ncredential:\n  <<: &d {{ kind: api_key, name: a }}\nschedule: {{ every: 30d }}\ndestinations:\n  - file: {{ path: a.json }}\n---\nname: b\ncredential:\n  <<: {{ kind: api_key }}\n  name: b\n{}",
        &BODY[BODY.find("schedule").unwrap()..].replace("x.json", "b.json")
    );
    load(&[("p.yaml", &text)]).unwrap_or_else(|p| panic!("{p:#?}"));
}

/// Every `file:line:col` is where the parser saw the field, in the cases the old text search
/// got wrong: quoted keys, flow mappings on one line, values merged from an anchor, duplicate
/// keys, documents after empty ones.
#[test]
fn every_location_comes_from_the_parser() {
    let cases: &[(&str, &str)] = &[
        // Quoted keys.
        (
            "\"name\": a\n\"credential\": { kind: api_key, name: x }\n\"schedule\": { \"every\": 5m }\ndestinations:\n  - file: { path: x.json }\n",
            "p.yaml:3:15: schedule.every: `5m` is shorter than the minimum of 1h",
        ),
        // Flow mappings: the second `path` on the line, not the first.
        (
            "name: a\ncredential: { kind: api_key, name: x }\nschedule: { every: 30d }\ndestinations: [{ file: { path: a.json } }, { file: { path: \"\" } }]\n",
            "p.yaml:4:54: destinations[1].file.path: must not be empty",
        ),
        (
            "name: a\ncredential: { kind: api_key, name: x }\nschedule: { every: 30d }\ndestinations: [{ vault: { mount: secret, path: a } }, { vault: { mount: secret, path: a } }]\n",
            "p.yaml:4:55: destinations[1]: destination `vault:secret/a` is listed twice",
        ),
        // A value merged from an anchor is reported where it is written.
        (
            "name: a\ncredential: { kind: api_key, name: x }\nschedule:\n  <<: &base\n    every: 30d\n    timezone: Mars/Olympus\ndestinations:\n  - file: { path: x.json }\n",
            "p.yaml:6:5: schedule.timezone: `Mars/Olympus` is not an IANA time zone",
        ),
        // A key given twice, at its second place.
        (
            &format!("name: a\n{BODY}revoke: {{ grace: 1h }}\nrevoke: {{ grace: 2h }}\n"),
            "p.yaml:7:1: revoke: `revoke` is given twice (first at line 6); remove one",
        ),
        (
            &format!("name: a\n{}", BODY.replace("every: 30d", "every: 30d, every: 40d")),
            "p.yaml:3:25: schedule.every: `every` is given twice (first at line 3)",
        ),
        // Documents after empty ones, and the second policy of a file.
        (
            &format!("---\n# nothing\n---\n---\nname: a\n{BODY}---\nname: b\n{}", BODY.replace("30d", "30x")),
            "p.yaml:13:13: schedule.every: duration `30x` has unknown unit `x`",
        ),
        // A key that is also a word in a value before it.
        (
            "name: a\ndescription: \"schedule: every: 1h\"\ncredential: { kind: api_key, name: x }\nschedule:\n  every: 30m\ndestinations:\n  - file: { path: x.json }\n",
            "p.yaml:5:3: schedule.every: `30m` is shorter than the minimum of 1h",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in cases {
        let found = problems(text);
        if !found.iter().any(|p| p.starts_with(expected)) {
            wrong.push(format!("expected `{expected}` in {found:#?}\n--- input ---\n{text}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// The same through the binary: exit 2 and the line of each problem, and exit 0 once fixed.
#[tokio::test(flavor = "multi_thread")]
async fn validate_reports_duplicate_keys_at_their_line() {
    let env = Env::start().await;
    env.policy("dup.yaml", &format!("name: dup\n{}name: again\n", BODY.replace("x.json", "dup.json")));
    let run = env.rotator(&["validate"]).await;
    run.assert_code(2);
    assert!(run.stdout.contains("dup.yaml:6:1: name: `name` is given twice (first at line 1)"), "{}", run.stdout);
    env.policy("dup.yaml", &format!("name: dup\n{}", BODY.replace("x.json", "dup.json")));
    env.rotator(&["validate"]).await.assert_code(0);
}

/// Issue 9, item 1: one run reports every problem of every document: a wrong type or an unknown
/// field next to bad values of other fields hides none of them (`kind: api_keys` used to be the
/// only problem until fixed, then five more appeared).
#[tokio::test(flavor = "multi_thread")]
async fn validate_reports_every_problem_of_every_document_at_once() {
    let env = Env::start().await;
    env.policy(
        "many.yaml",
        "\
name: first
labels: [team]
credential: { kind: api_keys, name: first, scopes: [\"usage read\"] }
schedule:
  every: 5m
  colour: red
  window: { days: [funday, mon, someday], start: \"25:00\", duration: 0s }
destinations:
  - file: { path: first.json }
  - vault: { mount: secret }
revoke: { grace: soon }
---
credential: { kind: oauth_client, name: second }
schedule: { every: 30d, jitter: 30d, timezone: Mars/Olympus }
destinations: []
notify: [Ops]
",
    );
    let run = env.rotator(&["validate"]).await;
    run.assert_code(2);
    let expected = [
        "many.yaml:2:1: labels: invalid type: sequence, expected a map of labels",
        "many.yaml:3:15: credential.kind: unknown variant `api_keys`",
        "many.yaml:3:53: credential.scopes[0]: `usage read` is not a scope",
        "many.yaml:5:3: schedule.every: `5m` is shorter than the minimum of 1h",
        "many.yaml:6:3: schedule: unknown field `colour`",
        "many.yaml:7:20: schedule.window.days[0]: `funday` is not a day",
        "many.yaml:7:33: schedule.window.days[2]: `someday` is not a day",
        "many.yaml:7:43: schedule.window.start: `25:00` is not a time of day",
        "many.yaml:7:59: schedule.window.duration: a window of 0s never opens",
        "many.yaml:10:5: destinations[1].vault: missing field `path`",
        "many.yaml:11:11: revoke.grace: malformed duration `soon`",
        "many.yaml:13:1: missing field `name`",
        "many.yaml:14:25: schedule.jitter: jitter `30d` must be shorter than the rotation interval `30d`",
        "many.yaml:14:38: schedule.timezone: `Mars/Olympus` is not an IANA time zone",
        "many.yaml:15:1: destinations: at least one destination is required",
        "many.yaml:16:10: notify[0]: `Ops` is not a channel name",
    ];
    let shown: Vec<&str> =
        run.stdout.lines().map(|l| l.rsplit_once("/policies/").map_or(l, |(_, rest)| rest)).collect();
    let missing: Vec<&&str> = expected.iter().filter(|e| !shown.iter().any(|s| s.starts_with(**e))).collect();
    assert!(missing.is_empty(), "missing {missing:#?}\n--- output ---\n{}", shown.join("\n"));
    assert_eq!(shown.len(), expected.len(), "{}", shown.join("\n"));
}

/// Issue 9, item 2: an interval shorter than the default grace says what to do, at `every`.
#[test]
fn a_short_interval_names_the_default_grace() {
    let text = "name: a\ncredential: { kind: api_key, name: x }\nschedule:\n  every: 1h\n  window: { days: [sat, sun], start: \"02:00\", duration: 4h }\ndestinations:\n  - file: { path: x.json }\n";
    assert_eq!(
        problems(text),
        [
            "p.yaml:4:3: schedule.every: `every: 1h` is shorter than the default grace of 24h; set `revoke.grace` (for example `30m`)"
        ]
    );
    let text = text.replace("every: 1h", "cron: \"0 */6 * * *\"");
    assert_eq!(
        problems(&text),
        [
            "p.yaml:4:3: schedule.cron: `0 */6 * * *` fires every 6h, shorter than the default grace of 24h; set `revoke.grace` (for example `3h`)"
        ]
    );
    let fixed = format!("{}revoke: {{ grace: 30m }}\n", text.replace("cron: \"0 */6 * * *\"", "every: 1h"));
    assert_eq!(problems(&fixed), Vec::<String>::new());
}

/// Every policy the README shows (fenced `yaml` blocks with a `name:` line) and every file in
/// `policies/` validates, each README example on its own.
#[test]
fn the_readme_and_policies_examples_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut examples = Vec::new();
    let mut block: Option<Vec<&str>> = None;
    for line in readme.lines() {
        match (&mut block, line.trim_start()) {
            (None, "```yaml") => block = Some(Vec::new()),
            (Some(lines), "```") => {
                if lines.iter().any(|l| l.starts_with("name:")) {
                    examples.push(lines.join("\n") + "\n");
                }
                block = None;
            }
            (Some(lines), _) => lines.push(line),
            (None, _) => {}
        }
    }
    assert!(!examples.is_empty(), "the README shows at least one policy");
    for (i, example) in examples.iter().enumerate() {
        if let Err(problems) = load(&[("readme.yaml", example)]) {
            panic!(
                "README policy example {} does not validate:\n{}\n--- example ---\n{example}",
                i + 1,
                problems.join("\n")
            );
        }
    }
    let policies = rotator::policy::load_dir(&root.join("policies")).unwrap_or_else(|e| panic!("policies/: {e}"));
    assert!(policies.len() >= 5, "{}", policies.len());
}

/// One policy with `count` destinations (vault paths `p/<i>`) and the given label lines.
fn wide(count: usize, labels: &str) -> String {
    let destinations: String = (0..count).map(|i| format!("  - vault: {{ mount: secret, path: p/{i} }}\n")).collect();
    format!(
        "name: wide\nlabels:\n{labels}credential: {{ kind: api_key, name: wide }}\nschedule: {{ every: 30d }}\ndestinations:\n{destinations}"
    )
}

/// Issue 9, item 8: validation is linear in the size of a file. The shapes that took 19.5 s
/// (10,000 documents in one file), 11.8 s (20,000 destinations) and 29.4 s (20,000 bad labels)
/// in a release build each finish well within a bound a quadratic validation cannot meet even
/// in this debug build (`benches/validate.rs` prints the figures).
#[test]
fn validation_is_linear_in_the_size_of_a_file() {
    let bound = std::time::Duration::from_secs(60);
    let documents: Vec<String> = (0..10_000)
        .map(|i| format!("name: p{i}\ncredential: {{ kind: api_key, name: p{i} }}\nschedule: {{ every: 30d }}\ndestinations:\n  - vault: {{ mount: secret, path: p/{i} }}\n"))
        .collect();
    let started = std::time::Instant::now();
    assert_eq!(load(&[("all.yaml", &documents.join("---\n"))]).unwrap().len(), 10_000);
    assert!(started.elapsed() < bound, "10,000 documents: {:?}", started.elapsed());

    let started = std::time::Instant::now();
    assert_eq!(load(&[("wide.yaml", &wide(20_000, "  team: a\n"))]).unwrap()[0].destinations.len(), 20_000);
    assert!(started.elapsed() < bound, "20,000 destinations: {:?}", started.elapsed());

    // Every destination listed twice: 20,000 problems, each naming the first.
    let started = std::time::Instant::now();
    let twice = wide(10_000, "  team: a\n") + wide(10_000, "").split_once("destinations:\n").unwrap().1;
    let problems = load(&[("wide.yaml", &twice)]).unwrap_err();
    assert_eq!(problems.len(), 10_000);
    assert!(
        problems[9_999].contains("destinations[19999]: destination `vault:secret/p/9999` is listed twice"),
        "{}",
        problems[9_999]
    );
    assert!(started.elapsed() < bound, "10,000 duplicate destinations: {:?}", started.elapsed());

    let started = std::time::Instant::now();
    let labels: String = (0..20_000).map(|i| format!("  \"bad label {i}\": x\n")).collect();
    assert_eq!(load(&[("labels.yaml", &wide(1, &labels))]).unwrap_err().len(), 20_000);
    assert!(started.elapsed() < bound, "20,000 bad labels: {:?}", started.elapsed());
}

/// What one file may hold is bounded, with a clear error: 10,000 documents and 16 MiB.
#[test]
fn a_file_holds_at_most_10000_documents_and_16_mib() {
    let documents: Vec<String> = (0..10_001).map(|i| format!("name: p{i}\n")).collect();
    let problems = load(&[("all.yaml", &documents.join("---\n"))]).unwrap_err();
    assert_eq!(problems.len(), 1, "{:#?}", &problems[..problems.len().min(5)]);
    assert_eq!(
        problems[0],
        "all.yaml:20001:1: more than 10000 documents in one file; split it into several files (the limit keeps validation fast)"
    );
    let big = format!("name: big\ndescription: \"{}\"\n", "x".repeat(16 * 1024 * 1024));
    let problems = load(&[("big.yaml", &big)]).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("big.yaml")
            && problems[0].contains(": the file is larger than 16 MiB, the most one policy file may hold; split it"),
        "{problems:?}"
    );
}

/// Issue 9, item 7: only regular files are read. A FIFO named `*.yaml` is reported and never
/// opened (opening it for reading would wait for a writer forever), two symlinks to `.` are
/// reported as a loop instead of being followed without end, and a symlink to a regular file
/// (as a Kubernetes ConfigMap mount has) is read. Each run is bounded.
#[tokio::test(flavor = "multi_thread")]
async fn validate_reads_only_regular_files_and_detects_symlink_loops() {
    let env = Env::start().await;
    let policies = env.dir.join("policies");
    env.policy("good.yaml", &format!("name: good\n{}", BODY.replace("x.json", "good.json")));
    std::fs::create_dir_all(env.dir.join("elsewhere")).unwrap();
    std::fs::write(
        env.dir.join("elsewhere/linked.yaml"),
        format!("name: linked\n{}", BODY.replace("x.json", "l.json").replace("name: x", "name: linked")),
    )
    .unwrap();
    std::os::unix::fs::symlink(env.dir.join("elsewhere/linked.yaml"), policies.join("linked.yaml")).unwrap();
    let bounded = |args: &'static [&'static str]| {
        let run = env.rotator(args);
        async move {
            tokio::time::timeout(std::time::Duration::from_secs(60), run)
                .await
                .unwrap_or_else(|_| panic!("`rotator {}` did not finish in 60 s", args.join(" ")))
        }
    };
    // Another way to a directory (not a loop) is read once.
    std::fs::create_dir_all(policies.join("team")).unwrap();
    std::fs::write(
        policies.join("team/team.yaml"),
        format!("name: team\n{}", BODY.replace("x.json", "t.json").replace("name: x", "name: team")),
    )
    .unwrap();
    std::os::unix::fs::symlink("team", policies.join("also-team")).unwrap();
    let run = bounded(&["validate"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("3 policies valid"), "{}", run.stdout);

    let status = std::process::Command::new("mkfifo").arg(policies.join("pipe.yaml")).status().unwrap();
    assert!(status.success());
    std::os::unix::fs::symlink(".", policies.join("a")).unwrap();
    std::os::unix::fs::symlink(".", policies.join("b")).unwrap();
    let run = bounded(&["validate"]).await;
    run.assert_code(2);
    let shown: Vec<&str> =
        run.stdout.lines().map(|l| l.rsplit_once("/policies/").map_or(l, |(_, rest)| rest)).collect();
    for expected in [
        "a: a symlink loop (it leads back to a directory it is in); not followed",
        "b: a symlink loop (it leads back to a directory it is in); not followed",
        "pipe.yaml: not a regular file (a FIFO); only regular files are read",
    ] {
        assert!(shown.contains(&expected), "missing `{expected}` in\n{}", shown.join("\n"));
    }
    assert_eq!(shown.len(), 3, "{}", shown.join("\n"));
    // The same through an explicit path.
    let pipe = policies.join("pipe.yaml");
    let run =
        tokio::time::timeout(std::time::Duration::from_secs(60), env.rotator(&["validate", pipe.to_str().unwrap()]))
            .await
            .expect("validate of a FIFO finishes");
    run.assert_code(2);
    assert!(run.stdout.contains("pipe.yaml: not a regular file (a FIFO)"), "{}", run.stdout);
}

/// Issue 9, items 6 and 9: what cannot work by its text is refused before anything runs. A
/// credential name with a control character (NUL, ESC, newline); a file destination whose name
/// is too long for the files rotator writes beside it (the 255-byte `ENAMETOOLONG` that wedged a
/// rotation), with a NUL byte, ending in `/`, naming a directory, or under /dev, /proc or /sys.
#[test]
fn names_and_paths_that_cannot_work_are_refused() {
    let file = |path: &str| format!("name: a\n{}", BODY.replace("{ path: x.json }", &format!("{{ path: {path} }}")));
    let credential = |name: &str| format!("name: a\n{}", BODY.replace("name: x }", &format!("name: {name} }}")));
    let long = "x".repeat(210);
    let cases: Vec<(String, &str)> = vec![
        (
            credential("\"ci\\0\""),
            "p.yaml:2:30: credential.name: contains a control character (\\0); use printable characters",
        ),
        (credential("\"ci\\e[31m\""), "p.yaml:2:30: credential.name: contains a control character (\\u{1b})"),
        (credential("\"ci\\nprod\""), "p.yaml:2:30: credential.name: contains a control character (\\n)"),
        (
            file(&format!("{long}.json")),
            "p.yaml:5:13: destinations[0].file.path: the file name is 215 bytes; at most 209",
        ),
        (
            file(&format!("{}/x.json", "d".repeat(256))),
            "p.yaml:5:13: destinations[0].file.path: a directory name is 256 bytes; at most 255",
        ),
        (file("\"x\\0.json\""), "p.yaml:5:13: destinations[0].file.path: contains a NUL byte"),
        (file("out/"), "p.yaml:5:13: destinations[0].file.path: `out/` ends with `/`"),
        (file("."), "p.yaml:5:13: destinations[0].file.path: `.` names a directory, not a file"),
        (file(".."), "p.yaml:5:13: destinations[0].file.path: `..` names a directory, not a file"),
        (file("/"), "p.yaml:5:13: destinations[0].file.path: `/` names a directory, not a file"),
        (
            file("/dev/null"),
            "p.yaml:5:13: destinations[0].file.path: `/dev/null` is under /dev; a destination is a regular file",
        ),
        (file("/proc/self/environ"), "p.yaml:5:13: destinations[0].file.path: `/proc/self/environ` is under /proc"),
        (file("/sys/kernel/x"), "p.yaml:5:13: destinations[0].file.path: `/sys/kernel/x` is under /sys"),
        (file("../../../../../../../../../../dev/x"), "is under /dev"),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in &cases {
        let found = problems(text);
        if !found.iter().any(|p| p.starts_with(expected) || (!expected.starts_with("p.yaml") && p.contains(expected))) {
            wrong.push(format!("expected `{expected}` in {found:#?}\n--- input ---\n{text}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    // At the limits, valid.
    assert_eq!(problems(&file(&format!("{}.json", "x".repeat(204)))), Vec::<String>::new());
    assert_eq!(problems(&credential("\"ci prod\"")), Vec::<String>::new());
}

/// Issue 9, item 13: messages a stranger can act on. A spaced or spelled-out duration says
/// what to write; YAML syntax errors say what is wrong in words (tabs, unclosed brackets,
/// indentation), not in the parser's terms.
#[test]
fn messages_say_what_to_write() {
    let with = |from: &str, to: &str| problems(&format!("name: a\n{}", BODY.replace(from, to)));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            with("every: 30d", "every: 30 days"),
            "p.yaml:3:13: schedule.every: `30 days` is not a duration; write `30d` (no space)",
        ),
        (with("every: 30d", "every: 90days"), "p.yaml:3:13: schedule.every: `90days` is not a duration; write `90d`"),
        (with("every: 30d", "every: 1 hour 30 minutes"), "write `1h30m` (no space)"),
        (
            with("every: 30d", "every: 30"),
            "p.yaml:3:13: schedule.every: duration `30` has no unit; use one of w, d, h, m, s (e.g. `24h`)",
        ),
        (problems("name: a\n\tcredential: x\n"), "tabs are not allowed; indent with spaces"),
        (problems("name: a\ncredential:\n\tkind: api_key\n"), "p.yaml:3:2: tabs are not allowed; indent with spaces"),
        (problems("name: a\ncredential: { kind: api_key\n"), "p.yaml:2:13: `{` is never closed with `}`"),
        (problems("name: a\nnotify: [a, b\n"), "p.yaml:2:9: `[` is never closed with `]`"),
        (problems("name: \"a\n"), "p.yaml:1:7: this quoted string is never closed"),
        (
            problems("name: a\n  credential: x\n"),
            "p.yaml:2:13: unexpected `:`; check the indentation of this line, or quote a value that contains `: `",
        ),
        (
            problems("destinations:\n  - file: {}\n bad: x\n"),
            "p.yaml:3:2: expected `key: value` at this indentation; check the indentation of this line",
        ),
        (
            problems("name: *nothing\n"),
            "p.yaml:1:7: `*nothing` refers to no anchor: define `&nothing` before it, in this document",
        ),
        (problems("name: @a\n"), "p.yaml:1:7: a value cannot start with `@`; quote it"),
    ];
    let mut wrong = Vec::new();
    for (found, expected) in &cases {
        if !found.iter().any(|p| p.starts_with(expected) || (!expected.starts_with("p.yaml") && p.contains(expected))) {
            wrong.push(format!("expected `{expected}` in {found:#?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// Issue 9, items 13 and 14: a missing file is named without a made-up `:0:0`, one policy is
/// "1 policy valid", and an empty set is a warning with exit 2 (nothing was checked).
#[tokio::test(flavor = "multi_thread")]
async fn validate_output_reads_as_english() {
    let env = Env::start().await;
    let run = env.rotator(&["validate"]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("no policy files (*.yaml, *.yml) in") && run.stderr.contains("nothing to validate"),
        "{}",
        run.stderr
    );
    env.policy("one.yaml", &format!("name: one\n{}", BODY));
    let run = env.rotator(&["validate"]).await;
    run.assert_code(0);
    assert_eq!(run.stdout, "1 policy valid\n");
    let run = env.rotator(&["validate", "nosuch.yaml"]).await;
    run.assert_code(2);
    assert_eq!(run.stdout, "nosuch.yaml: no such file\n");
    let run = env.rotator(&["validate", "--format", "github", "nosuch.yaml"]).await;
    assert_eq!(run.stdout, "::error file=nosuch.yaml,title=rotator policy::no such file\n");
}
