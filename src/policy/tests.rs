//! Unit tests of policy loading: parsing, every validation rule with its file, line and field,
//! set-wide checks, canonical places, and the schema and reference kept in step with the reader.

use super::places::{canonical_file, check_set, without_random_suffix};
use super::*;
use crate::schedule::Trigger;

fn parse(text: &str) -> (Vec<Policy>, Vec<Problem>) {
    let mut policies = Vec::new();
    let mut problems = Vec::new();
    parse_file(Path::new("p.yaml"), text, &mut policies, &mut problems);
    check_set(&policies, &mut problems);
    (policies, problems)
}

const GOOD: &str = "name: ci\ncredential: { kind: oauth_client, name: ci, scopes: [usage:read] }\nschedule:\n  every: 90d\ndestinations:\n  - vault: { mount: secret, path: toktra/ci }\n  - aws_secrets_manager: { secret_id: prod/ci, create: true }\nrevoke:\n  grace: 0s\n";

#[test]
fn parses_a_good_policy() {
    let (policies, problems) = parse(GOOD);
    assert!(problems.is_empty(), "{problems:?}");
    let p = &policies[0];
    assert_eq!(p.credential.kind, CredentialKind::OauthClient);
    assert_eq!(p.schedule.trigger, Trigger::Every(Duration::from_secs(90 * 86_400)));
    assert_eq!(p.schedule.timezone, chrono_tz::Tz::UTC);
    assert_eq!(p.revoke.grace, Duration::ZERO);
    assert_eq!(p.destinations.len(), 2);
    assert_eq!(p.destinations[0].label(), "vault:secret/toktra/ci");
}

/// One row per kind of bad input: the replacement applied to GOOD and the exact
/// `file:line:col: field: message` prefix expected.
#[test]
fn rejects_with_file_line_and_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("every: 90d", "every: 90x", "p.yaml:4:3: schedule.every: duration `90x` has unknown unit `x`"),
        ("every: 90d", "every: 30m", "p.yaml:4:3: schedule.every: `30m` is shorter than the minimum of 1h"),
        ("every: 90d", "cron: \"0 3 * *\"", "p.yaml:4:3: schedule.cron: `0 3 * *` has 4 fields"),
        ("every: 90d", "cron: \"*/10 * * * *\"", "p.yaml:4:3: schedule.cron: `*/10 * * * *` fires every 10m"),
        (
            "every: 90d",
            "every: 90d\n  timezone: Mars/Olympus",
            "p.yaml:5:3: schedule.timezone: `Mars/Olympus` is not an IANA time zone",
        ),
        (
            "every: 90d",
            "every: 90d\n  window: { start: \"02:00\", duration: 0s }",
            "p.yaml:5:29: schedule.window.duration: a window of 0s never opens",
        ),
        (
            "every: 90d",
            "every: 90d\n  window: { days: [], start: \"02:00\", duration: 1h }",
            "p.yaml:5:13: schedule.window.days: an empty list of days never opens",
        ),
        (
            "every: 90d",
            "every: 90d\n  window: { days: [caturday], start: \"02:00\", duration: 1h }",
            "p.yaml:5:20: schedule.window.days[0]: `caturday` is not a day",
        ),
        (
            "every: 90d",
            "every: 90d\n  window: { start: \"2am\", duration: 1h }",
            "p.yaml:5:13: schedule.window.start: `2am` is not a time of day",
        ),
        (
            "every: 90d",
            "every: 90d\n  cron: \"0 3 * * *\"",
            "p.yaml:3:1: schedule: give exactly one of `every` and `cron`, not both",
        ),
        ("every: 90d", "jitter: 1h", "p.yaml:3:1: schedule: give exactly one of `every`"),
        (
            "grace: 0s",
            "grace: 100d",
            "p.yaml:9:3: revoke.grace: grace `100d` is longer than the rotation interval `90d`",
        ),
        ("grace: 0s", "grace: 0s\n  require_idle: soon", "p.yaml:10:3: revoke.require_idle: malformed duration `soon`"),
        ("name: ci\n", "name: Bad_Name\n", "p.yaml:1:1: name: `Bad_Name` is not a valid name"),
        (
            "name: ci\n",
            "name: ci\nlabels: { \"team=x\": a }\n",
            "p.yaml:2:11: labels.team=x: `team=x: a`: keys and values are",
        ),
        (
            "kind: oauth_client",
            "kind: password",
            "p.yaml:2:15: credential.kind: unknown variant `password`, expected `oauth_client` or `api_key`",
        ),
        ("name: ci\n", "name: ci\ncolour: red\n", "p.yaml:2:1: colour: unknown field `colour`, expected one of `name`"),
        ("  grace: 0s", "  grace: 0s\n  later: 1d", "p.yaml:10:3: revoke: unknown field `later`"),
        (
            "  - vault: { mount: secret, path: toktra/ci }\n",
            "  - s3: { bucket: b }\n",
            "p.yaml:6:5: destinations[0]: unknown field `s3`",
        ),
        (
            "  - vault: { mount: secret, path: toktra/ci }\n",
            "  - vault: { mount: secret, path: toktra/ci, staging_path: toktra/ci }\n",
            "p.yaml:6:46: destinations[0].vault.staging_path: must be a path of its own",
        ),
        (
            "  - vault: { mount: secret, path: toktra/ci }\n",
            "  - {}\n",
            "p.yaml:6:5: destinations[0]: a destination needs one of",
        ),
        (
            "  - vault: { mount: secret, path: toktra/ci }\n  - aws_secrets_manager: { secret_id: prod/ci, create: true }\n",
            "  []\n",
            "p.yaml:5:1: destinations: at least one destination is required",
        ),
        (
            "  - aws_secrets_manager: { secret_id: prod/ci, create: true }\n",
            "  - vault: { mount: secret, path: toktra/ci }\n",
            "p.yaml:7:5: destinations[1]: destination `vault:secret/toktra/ci` is listed twice",
        ),
        (
            "  - aws_secrets_manager: { secret_id: prod/ci, create: true }\n",
            "  - vault: { mount: secret/, path: /toktra//ci/, create: true }\n",
            "p.yaml:7:5: destinations[1]: destination `vault:secret/toktra/ci` is listed twice",
        ),
        (
            "secret_id: prod/ci",
            "secret_id: 'arn:aws:s3:::ci'",
            "p.yaml:7:28: destinations[1].aws_secrets_manager.secret_id: `arn:aws:s3:::ci` is not a Secrets Manager secret ARN",
        ),
        (
            "secret_id: prod/ci",
            "secret_id: 'arn:aws:secretsmanager:eu-central-1:123456789012:secret:prod/ci-AbCdEf', region: us-east-1",
            "p.yaml:7:113: destinations[1].aws_secrets_manager.region: `us-east-1` is not the region of the ARN in `secret_id`, `eu-central-1`",
        ),
        (
            "  - aws_secrets_manager: { secret_id: prod/ci, create: true }\n",
            "  - file: { path: out/.. }\n",
            "p.yaml:7:13: destinations[1].file.path: `out/..` names a directory, not a file",
        ),
        (
            "scopes: [usage:read]",
            "scopes: [\"usage read\"]",
            "p.yaml:2:54: credential.scopes[0]: `usage read` is not a scope",
        ),
        ("every: 90d", "every: [90d]", "p.yaml:4:3: schedule.every: invalid type: sequence, expected a string"),
    ];
    let mut wrong = Vec::new();
    for (from, to, expected) in cases {
        let text = GOOD.replace(from, to).replace("destinations:\n  []", "destinations: []");
        let (_, problems) = parse(&text);
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        if !shown.iter().any(|s| s.starts_with(expected)) {
            wrong.push(format!("expected `{expected}` in {shown:#?}\n--- input ---\n{text}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn reports_every_problem_of_a_document_at_once() {
    let text = "name: Bad\ncolour: red\ncredential: { kind: api_key, name: x, extra: 1 }\nschedule: { every: 5m, timezone: Nowhere }\ndestinations: []\n";
    let (_, problems) = parse(text);
    let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    for expected in ["p.yaml:2:1: colour: unknown field", "p.yaml:3:39: credential: unknown field `extra`"] {
        assert!(shown.iter().any(|s| s.starts_with(expected)), "{expected} in {shown:#?}");
    }
    // Every semantic problem is reported together, in the order of the file.
    let text = "name: Bad\ncredential: { kind: api_key, name: x }\nschedule: { every: 5m, timezone: Nowhere }\ndestinations: []\nrevoke: { grace: 1x }\n";
    let (_, problems) = parse(text);
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["name", "schedule.every", "schedule.timezone", "destinations", "revoke.grace"],
        "{problems:#?}"
    );
}

#[test]
fn rejects_duplicates_across_documents() {
    let text = format!("{GOOD}---\n{GOOD}");
    let (_, problems) = parse(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .to_string()
            .starts_with("p.yaml:11:1: name: duplicate policy name `ci`, first defined at p.yaml:1:1"),
        "{}",
        problems[0]
    );
    let other = GOOD.replace("name: ci\n", "name: other\n");
    let (_, problems) = parse(&format!("{GOOD}---\n{other}"));
    assert!(problems.iter().any(|p| p.message.contains("also written by policy `ci`")), "{problems:?}");
    // A staging path is a destination too.
    let staged = other.replace("  - vault: { mount: secret, path: toktra/ci }\n  - aws_secrets_manager: { secret_id: prod/ci, create: true }\n", "  - vault: { mount: secret, path: elsewhere, staging_path: toktra/ci }\n");
    let (_, problems) = parse(&format!("{GOOD}---\n{staged}"));
    assert!(problems.iter().any(|p| p.message.contains("also written by policy `ci`")), "{problems:?}");
}

/// The reader knows the fields of every raw type, and which are required, exactly as the JSON
/// Schema generated from the raw form does (which also denies every other field). For an
/// externally tagged enum ([`Destination`]) the fields are its variants' keys, one per `oneOf`
/// branch.
#[test]
fn the_schema_and_the_reader_know_the_same_fields() {
    let schema: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    for shape in read::SHAPES {
        let def = if shape.def.is_empty() { &schema } else { &schema["$defs"][shape.def] };
        if let Some(branches) = def["oneOf"].as_array() {
            // Each branch is a map with its one key, required, and nothing else: so a map with
            // two kinds or none matches no branch. The reader requires none of its fields and
            // checks that exactly one is given.
            let mut keys = Vec::new();
            for branch in branches {
                let key: Vec<String> = branch["properties"].as_object().unwrap().keys().cloned().collect();
                assert_eq!(key.len(), 1, "{}: {branch}", shape.def);
                assert_eq!(branch["required"], serde_json::json!(key), "{}: {branch}", shape.def);
                assert_eq!(branch["additionalProperties"], false, "{}: {branch}", shape.def);
                assert!(branch["description"].is_string(), "{}: a branch without a description: {branch}", shape.def);
                keys.extend(key);
            }
            assert_eq!(sorted(keys), sorted(shape.fields.iter().map(|f| f.to_string()).collect()), "{}", shape.def);
            assert!(shape.required.is_empty(), "{}", shape.def);
            continue;
        }
        let properties = sorted(def["properties"].as_object().unwrap().keys().cloned().collect());
        let required =
            sorted(def["required"].as_array().into_iter().flatten().map(|r| r.as_str().unwrap().to_string()).collect());
        assert_eq!(properties, sorted(shape.fields.iter().map(|f| f.to_string()).collect()), "{}", shape.def);
        assert_eq!(required, sorted(shape.required.iter().map(|f| f.to_string()).collect()), "{}", shape.def);
        assert_eq!(def["additionalProperties"], false, "{}", shape.def);
    }
    let defs: Vec<&str> = schema["$defs"].as_object().unwrap().keys().map(String::as_str).collect();
    for def in defs.iter().filter(|d| **d != "CredentialKind") {
        assert!(read::SHAPES.iter().any(|s| s.def == *def), "the reader has no shape for `{def}`");
    }
}

/// The committed schema and reference are what the code generates; `UPDATE_EXPECT=1`
/// rewrites them.
#[test]
fn schema_and_reference_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, generated) in
        [("schema/policy.schema.json", json_schema()), ("docs/policy-reference.md", reference_markdown())]
    {
        let path = root.join(file);
        if std::env::var("UPDATE_EXPECT").is_ok() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == generated, "{file} is stale: run `UPDATE_EXPECT=1 cargo test --lib schema` and commit it");
    }
}

#[test]
fn review_regressions() {
    // The default grace counts against the interval.
    let hourly = GOOD.replace("every: 90d", "every: 1h").replace("revoke:\n  grace: 0s\n", "");
    let (_, problems) = parse(&hourly);
    assert!(
        problems.iter().any(|p| p.to_string().starts_with("p.yaml:4:3: schedule.every: `every: 1h` is shorter than the default grace of 24h; set `revoke.grace` (for example `30m`)")),
        "{problems:#?}"
    );
    // Empty documents before the first policy keep line numbers right.
    let text = format!("---\n# nothing\n---\n{}", GOOD.replace("every: 90d", "every: 5m"));
    let (_, problems) = parse(&text);
    assert!(problems[0].to_string().starts_with("p.yaml:7:3: schedule.every"), "{problems:#?}");
    // A top-level key is found at the start of its line, not inside another.
    let text = format!(
        "credential: {{ kind: api_key, name: x }}\nname: Bad\n{}",
        GOOD.lines().skip(2).collect::<Vec<_>>().join("\n")
    );
    let (_, problems) = parse(&text);
    assert!(problems.iter().any(|p| p.to_string().starts_with("p.yaml:2:1: name:")), "{problems:#?}");
    // Two policies minting under one name.
    let other = GOOD
        .replace("name: ci\n", "name: other\n")
        .replace("path: toktra/ci", "path: toktra/other")
        .replace("prod/ci", "prod/other");
    let (_, problems) = parse(&format!("{GOOD}---\n{other}"));
    assert!(
        problems
            .iter()
            .any(|p| p.field == "credential.name" && p.message.contains("also the credential name of policy `ci`")),
        "{problems:#?}"
    );
    // Absurd durations are refused rather than overflowing later.
    let (_, problems) = parse(&GOOD.replace("every: 90d", "every: 14000000w"));
    assert!(problems.iter().any(|p| p.message.contains("longer than the maximum of 10 years")), "{problems:#?}");
}

/// Two policies, `a` with destination `a` and `b` with destination `b` (YAML flow maps).
fn pair(a: &str, b: &str) -> (Vec<Policy>, Vec<Problem>) {
    let doc = |name: &str, destination: &str| {
        format!(
            "name: {name}\ncredential: {{ kind: api_key, name: {name} }}\nschedule: {{ every: 30d }}\ndestinations:\n  - {destination}\n"
        )
    };
    parse(&format!("{}---\n{}", doc("a", a), doc("b", b)))
}

/// One place under two spellings is one destination: written by two policies it is refused,
/// naming both; places that differ stay valid.
#[test]
fn one_place_under_two_spellings() {
    let arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret";
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("file: { path: out/x.json }", "file: { path: ./out/x.json }", Some("is also written by policy `a`")),
        ("file: { path: x.json }", "file: { path: nowhere/../x.json }", Some("is also written by policy `a`")),
        ("file: { path: out//x.json }", "file: { path: out/./x.json }", Some("is also written by policy `a`")),
        ("file: { path: x.json.pending }", "file: { path: x.json }", Some("is also written by policy `a`")),
        ("file: { path: out/x.json }", "file: { path: out/../x.json }", None),
        ("file: { path: out/x.json }", "file: { path: out/x.json.bak }", None),
        (
            "vault: { mount: secret, path: t/x }",
            "vault: { mount: /secret/, path: t//x/ }",
            Some("`vault:secret/t/x` is also written by policy `a`"),
        ),
        (
            "vault: { mount: secret, path: t/x }",
            "vault: { mount: secret, path: t/y, staging_path: /t/x }",
            Some("`vault:secret/t/y` is also written by policy `a`"),
        ),
        ("vault: { mount: secret, path: t/x }", "vault: { mount: secret, path: t/x/y }", None),
        ("aws_secrets_manager: { secret_id: x }", "aws_secrets_manager: { secret_id: x }", Some("also written")),
        ("aws_secrets_manager: { secret_id: x, region: eu-central-1 }", "aws_secrets_manager: { secret_id: x }", None),
        (
            "aws_secrets_manager: { secret_id: x, region: eu-central-1 }",
            &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
            Some("may be the same secret as `aws:eu-central-1:x` of policy `a`"),
        ),
        // A partial ARN, and a name that itself ends like a suffix.
        (
            "aws_secrets_manager: { secret_id: x, region: eu-central-1 }",
            &format!("aws_secrets_manager: {{ secret_id: '{arn}:x' }}"),
            Some("may be the same secret"),
        ),
        (
            "aws_secrets_manager: { secret_id: x-abcdef, region: eu-central-1 }",
            &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-abcdef-Gh1jKl', region: eu-central-1 }}"),
            Some("may be the same secret"),
        ),
        (
            &format!("aws_secrets_manager: {{ secret_id: '{arn}:x' }}"),
            &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
            Some("may be the same secret"),
        ),
        (
            &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
            &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
            Some("is also written by policy `a`"),
        ),
        // Different: another region, another account, another incarnation, two names.
        (
            "aws_secrets_manager: { secret_id: x, region: eu-west-1 }",
            &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
            None,
        ),
        (
            &format!("aws_secrets_manager: {{ secret_id: '{}:x-AbCdEf' }}", arn.replace("1234", "4321")),
            &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
            None,
        ),
        (
            &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-GhIjKl' }}"),
            &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
            None,
        ),
        (
            "aws_secrets_manager: { secret_id: x, region: eu-central-1 }",
            "aws_secrets_manager: { secret_id: x-AbCdEf, region: eu-central-1 }",
            None,
        ),
    ];
    for (a, b, expected) in cases {
        let (_, problems) = pair(a, b);
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        match expected {
            Some(expected) => assert!(
                shown.len() == 1
                    && shown[0].starts_with("p.yaml:7:1: destinations: destination `")
                    && shown[0].contains(expected),
                "expected `{expected}`\n  {a}\n  {b}\n{shown:#?}"
            ),
            None => assert!(shown.is_empty(), "valid:\n  {a}\n  {b}\n{shown:#?}"),
        }
    }
}

/// Validated destinations are canonical, so labels (which the journal compares on resume)
/// do not depend on how the policy directory or the path was spelled.
#[test]
fn labels_are_canonical() {
    let (policies, problems) =
        pair("file: { path: ./out//x.json }", "vault: { mount: secret/, path: /t//x/, staging_path: s//x/ }");
    assert!(problems.is_empty(), "{problems:?}");
    let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
    assert_eq!(policies[0].destinations[0].label(), format!("file:{}", cwd.join("out/x.json").display()));
    assert_eq!(policies[1].destinations[0].label(), "vault:secret/t/x");
    let Destination::Vault(v) = &policies[1].destinations[0] else { panic!() };
    assert_eq!(v.staging_path(), "s/x");
    // The same file through another spelling of the policy file's directory.
    let mut again = Vec::new();
    let text = "name: a\ncredential: { kind: api_key, name: a }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: out/x.json }\n";
    parse_file(&cwd.join("src/../p.yaml"), text, &mut again, &mut Vec::new());
    parse_file(Path::new("./src/../p.yaml"), text, &mut again, &mut Vec::new());
    assert_eq!(again[0].destinations[0].label(), policies[0].destinations[0].label());
    assert_eq!(again[1].destinations[0].label(), policies[0].destinations[0].label());
    // Labels an earlier version recorded in the journal, as spelled then.
    assert_eq!(canonical_label("file:./out//x.json"), policies[0].destinations[0].label());
    assert_eq!(canonical_label("vault:secret//t/x/"), "vault:secret/t/x");
    assert_eq!(canonical_label("aws:eu-west-1:x"), "aws:eu-west-1:x");
}

/// Existing directories are resolved by the filesystem (symlinks, and `..` after one, go
/// where the kernel goes); what does not exist yet, lexically; the file itself never.
#[test]
fn file_paths_resolve_existing_directories() {
    let root = std::env::temp_dir().join(format!("rotator-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("deep/real")).unwrap();
    std::os::unix::fs::symlink(root.join("deep/real"), root.join("link")).unwrap();
    std::os::unix::fs::symlink("elsewhere.json", root.join("deep/real/file.json")).unwrap();
    let real = root.canonicalize().unwrap();
    for (base, path, expected) in [
        (root.join("link"), "x.json", "deep/real/x.json"),
        (root.clone(), "link/x.json", "deep/real/x.json"),
        (root.clone(), "link/../x.json", "deep/x.json"),
        (root.clone(), "new/../deep//./x.json", "deep/x.json"),
        (root.clone(), "link/new/more/../../x.json", "deep/real/x.json"),
        (root.clone(), "link/file.json", "deep/real/file.json"),
        (PathBuf::from("/nowhere"), &format!("{}/link/x.json", root.display()), "deep/real/x.json"),
    ] {
        assert_eq!(canonical_file(&base, Path::new(path)), real.join(expected), "{} + {path}", base.display());
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// What only the default region decides: `validate` accepts it, the check `plan` and
/// `rotate` make with the AWS configuration's region refuses it, naming both policies.
#[test]
fn the_default_region_decides_the_rest() {
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:y-AbCdEf";
    for (a, b, field) in [
        (
            "aws_secrets_manager: { secret_id: x, region: us-east-1 }",
            "aws_secrets_manager: { secret_id: x }",
            "destinations",
        ),
        (
            &format!("aws_secrets_manager: {{ secret_id: '{arn}' }}"),
            "aws_secrets_manager: { secret_id: y }",
            "destinations",
        ),
        (
            "aws_secrets_manager: { secret_id: z }",
            "aws_secrets_manager: { secret_id: x, region: us-east-1 }\n  - aws_secrets_manager: { secret_id: x }",
            "destinations[1]",
        ),
    ] {
        let (policies, problems) = pair(a, b);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(depends_on_default_region(&policies), "{a} / {b}");
        assert!(check_default_region(&policies, None).is_ok());
        assert!(check_default_region(&policies, Some("eu-west-1")).is_ok());
        let Err(Invalid(problems)) = check_default_region(&policies, Some("us-east-1")) else { panic!("{a} / {b}") };
        assert_eq!(problems.len(), 1, "{problems:#?}");
        let shown = problems[0].to_string();
        assert!(
            shown.starts_with(&format!("p.yaml:7:1: {field}: with the default region `us-east-1` (from the AWS configuration), destination `aws:")),
            "{shown}"
        );
    }
    let (policies, _) =
        pair("aws_secrets_manager: { secret_id: x, region: us-east-1 }", "aws_secrets_manager: { secret_id: y }");
    assert!(!depends_on_default_region(&policies));
    let (policies, _) = pair("file: { path: x.json }", "vault: { mount: secret, path: x }");
    assert!(!depends_on_default_region(&policies));
}

#[test]
fn random_suffixes() {
    for (resource, expected) in [
        ("x-AbCdEf", Some("x")),
        ("a/b-c-123456", Some("a/b-c")),
        ("x-abcde", None),
        ("x-abcdefg", None),
        ("x-abc_ef", None),
        ("-AbCdEf", None),
        ("x", None),
    ] {
        assert_eq!(without_random_suffix(resource), expected, "{resource}");
    }
}

#[test]
fn selectors_match_labels() {
    let (policies, _) = parse(&GOOD.replace("name: ci\n", "name: ci\nlabels: { team: payments, env: prod }\n"));
    let sel = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    assert!(policies[0].matches(&sel(&[("team", "payments")])));
    assert!(policies[0].matches(&sel(&[("team", "payments"), ("env", "prod")])));
    assert!(!policies[0].matches(&sel(&[("team", "platform")])));
    assert!(policies[0].matches(&[]));
}

/// The raw form deserializes with serde (unknown fields denied) exactly where the reader finds
/// the document well-formed, so the schema generated from it describes what the reader reads.
#[test]
fn the_raw_form_and_the_reader_agree() {
    let options = || {
        serde_saphyr::options! {
            strict_booleans: true,
            no_schema: true,
        }
    };
    let cases: &[(&str, &str, bool)] = &[
        ("", "", true),
        ("name: ci\n", "name: ci\ncolour: red\n", false),
        ("grace: 0s", "grace: 0s\n  later: 1d", false),
        ("kind: oauth_client", "kind: password", false),
        ("kind: oauth_client, ", "", false),
        ("every: 90d", "every: [90d]", false),
        ("every: 90d", "every: 90d\n  window: { start: \"02:00\", duration: 1h, days: [mon] }", true),
        ("every: 90d", "every: 90d\n  window: { start: \"02:00\" }", false),
        ("create: true", "create: yes", false),
        ("create: true", "create: true, region: eu-west-1, kms_key_id: k", true),
        ("{ mount: secret, path: toktra/ci }", "{ mount: secret }", false),
        ("{ mount: secret, path: toktra/ci }", "{ mount: secret, path: x, staging_path: y, create: false }", true),
        ("  - vault", "  - file: { path: x.json }\n  - vault", true),
        ("  - vault", "  - file: { path: x.json, mode: 600 }\n  - vault", false),
        ("  - vault", "  - s3: {}\n  - vault", false),
        ("  - vault", "  - {}\n  - vault", false),
        ("  - vault", "  - vault:\n  - vault", false),
        ("  - vault", "  - { file: { path: x.json }, vault: { mount: secret, path: x } }\n  - vault", false),
        ("name: ci\n", "name: ci\nlabels: { team: a }\nnotify: [x]\ndescription: d\n", true),
        ("name: ci\n", "name: ci\nlabels: [team]\n", false),
        ("name: ci\n", "name: 7\n", false),
    ];
    for (from, to, well_formed) in cases {
        let text = GOOD.replacen(from, to, 1);
        let serde = serde_saphyr::from_str_with_options::<Document>(&text, options());
        assert_eq!(serde.is_ok(), *well_formed, "serde: {serde:?}\n--- input ---\n{text}");
        let (policies, problems) = parse(&text);
        assert_eq!(policies.len() == 1, *well_formed, "reader: {problems:#?}\n--- input ---\n{text}");
    }
}
