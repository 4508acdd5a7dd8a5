//! One destination under two spellings (issue #8 item 7): file paths with `.`, `..`, absolute or
//! through a symlinked directory, Vault mounts and paths with extra slashes, an AWS secret by
//! name and by ARN, and a secret only the default AWS region makes one. Two policies writing one
//! place are refused before anything is minted or written, and the journal compares a
//! rotation's destinations the same way whatever `--policies` says.

use std::path::PathBuf;

use rotator::policy::CredentialKind;

use crate::harness::{Dest, Env, Spec};

fn policy(name: &str, destination: &str) -> String {
    format!(
        "name: {name}\ncredential: {{ kind: api_key, name: {name} }}\nschedule: {{ every: 30d }}\ndestinations:\n  - {destination}\n"
    )
}

const ARN: &str = "arn:aws:secretsmanager:eu-central-1:123456789012:secret";

/// Every pair of spellings of one place is rejected by `validate` (under every spelling of
/// `--policies`) and by `rotate`, naming both policies; nothing is minted or written.
#[tokio::test(flavor = "multi_thread")]
async fn validate_rejects_one_destination_under_two_spellings() {
    let env = Env::start().await;
    let policies = env.dir.join("policies");
    std::fs::create_dir_all(policies.join("out")).unwrap();
    std::os::unix::fs::symlink("out", policies.join("alias")).unwrap();
    let absolute = policies.join("out/shared.json");
    let cases: Vec<(String, String, &str)> = vec![
        ("file: { path: out/shared.json }".into(), "file: { path: ./out/shared.json }".into(), "also written by"),
        ("file: { path: b.json }".into(), "file: { path: a/../b.json }".into(), "also written by"),
        (
            "file: { path: out/shared.json }".into(),
            format!("file: {{ path: '{}' }}", absolute.display()),
            "also written by",
        ),
        ("file: { path: out//shared.json }".into(), "file: { path: alias/shared.json }".into(), "also written by"),
        // The staged value waits beside the file.
        (
            "file: { path: out/shared.json.pending }".into(),
            "file: { path: ./out/shared.json }".into(),
            "also written by",
        ),
        (
            "vault: { mount: secret, path: '{prefix}/x' }".into(),
            "vault: { mount: secret/, path: '/{prefix}//x/' }".into(),
            "also written by",
        ),
        (
            "vault: { mount: secret, path: '{prefix}/x' }".into(),
            "vault: { mount: /secret, path: '{prefix}/y', staging_path: '{prefix}//x/' }".into(),
            "also written by",
        ),
        (
            "aws_secrets_manager: { secret_id: '{prefix}/x', region: eu-central-1 }".into(),
            format!("aws_secrets_manager: {{ secret_id: '{ARN}:{{prefix}}/x-AbCdEf' }}"),
            "may be the same secret",
        ),
        (
            // A name may itself end like an ARN suffix: the ARN's name is `x-abcdef`.
            "aws_secrets_manager: { secret_id: '{prefix}/x-abcdef', region: eu-central-1 }".into(),
            format!("aws_secrets_manager: {{ secret_id: '{ARN}:{{prefix}}/x-abcdef-Gh1jKl', region: eu-central-1 }}"),
            "may be the same secret",
        ),
        (
            // A partial ARN (no suffix) names the secret too.
            format!("aws_secrets_manager: {{ secret_id: '{ARN}:{{prefix}}/x' }}"),
            "aws_secrets_manager: { secret_id: '{prefix}/x', region: eu-central-1 }".into(),
            "may be the same secret",
        ),
    ];
    let spellings = ["policies".to_string(), "./policies/".to_string(), policies.display().to_string()];
    for (a, b, expected) in &cases {
        env.policy("a.yaml", &policy("a", a));
        env.policy("b.yaml", &policy("b", b));
        for spelling in &spellings {
            for args in [vec!["validate"], vec!["rotate", "--all"]] {
                let mut args = args.clone();
                args.extend(["--policies", spelling.as_str()]);
                let run = env.rotator(&args).await;
                let output = format!("{}{}", run.stdout, run.stderr);
                assert_eq!(run.code, 2, "`{}` refuses\n  {a}\n  {b}\n{output}", args.join(" "));
                assert!(
                    output.contains("b.yaml:1:1: destinations: ") && output.contains(expected),
                    "`{}` names the second policy and says `{expected}`\n  {a}\n  {b}\n{output}",
                    args.join(" ")
                );
                assert!(output.contains("policy `a` (") && output.contains("a.yaml:1:1"), "names the first: {output}");
            }
        }
    }
    // Different places stay valid: another region, another account, two names.
    let valid: Vec<(String, String)> = vec![
        (
            "aws_secrets_manager: { secret_id: '{prefix}/x', region: eu-west-1 }".into(),
            format!("aws_secrets_manager: {{ secret_id: '{ARN}:{{prefix}}/x-AbCdEf' }}"),
        ),
        (
            format!("aws_secrets_manager: {{ secret_id: '{ARN}:{{prefix}}/x-AbCdEf' }}"),
            format!(
                "aws_secrets_manager: {{ secret_id: '{}:{{prefix}}/x-AbCdEf' }}",
                ARN.replace("123456789012", "210987654321")
            ),
        ),
        (
            "aws_secrets_manager: { secret_id: '{prefix}/x', region: eu-central-1 }".into(),
            "aws_secrets_manager: { secret_id: '{prefix}/x-AbCdEf', region: eu-central-1 }".into(),
        ),
        (
            "vault: { mount: secret, path: '{prefix}/x' }".into(),
            "vault: { mount: secret, path: '{prefix}/x/y' }".into(),
        ),
        // `..` is resolved, not dropped: this is `policies/shared.json`.
        ("file: { path: out/shared.json }".into(), "file: { path: out/../shared.json }".into()),
    ];
    for (a, b) in &valid {
        env.policy("a.yaml", &policy("a", a));
        env.policy("b.yaml", &policy("b", b));
        let run = env.rotator(&["validate"]).await;
        assert_eq!(run.code, 0, "valid:\n  {a}\n  {b}\n{}{}", run.stdout, run.stderr);
    }
    assert_eq!(env.sim.stats().creates, 0, "nothing was minted");
    assert!(!absolute.exists() && !policies.join("b.json").exists(), "nothing was written");
    assert!(!env.journal_path().exists(), "no journal was created");
}

/// A destination without `region` lives in the default region, which only the AWS
/// configuration knows: `validate` accepts the set, `plan` and `rotate` refuse it (exit 2,
/// naming both policies) before minting or writing anything when the default region makes two
/// destinations one secret, and accept it when it does not.
#[tokio::test(flavor = "multi_thread")]
async fn rotate_refuses_secrets_only_the_default_region_makes_one() {
    let mut env = Env::start().await;
    env.policy(
        "a.yaml",
        &policy("a", "aws_secrets_manager: { secret_id: '{prefix}/x', region: us-east-1, create: true }"),
    );
    env.policy("b.yaml", &policy("b", "aws_secrets_manager: { secret_id: '{prefix}/x', create: true }"));
    // An ARN carries its region: in us-east-1 it is the default region's `{prefix}/y`.
    let arn = ARN.replace("eu-central-1", "us-east-1");
    env.policy("c.yaml", &policy("c", &format!("aws_secrets_manager: {{ secret_id: '{arn}:{{prefix}}/y-AbCdEf' }}")));
    env.policy("d.yaml", &policy("d", "aws_secrets_manager: { secret_id: '{prefix}/y', create: true }"));
    env.rotator(&["validate"]).await.assert_code(0);
    for args in [vec!["rotate", "--all"], vec!["rotate", "a"], vec!["plan"], vec!["rotate", "--all", "--dry-run"]] {
        let run = env.rotator(&args).await;
        let output = format!("{}{}", run.stdout, run.stderr);
        assert_eq!(run.code, 2, "`{}` refuses:\n{output}", args.join(" "));
        for expected in [
            "b.yaml:1:1: destinations: ",
            "policy `a` (",
            "a.yaml:1:1",
            "d.yaml:1:1: destinations: ",
            "policy `c` (",
            "c.yaml:1:1",
            "default region `us-east-1`",
        ] {
            assert!(output.contains(expected), "`{}` says `{expected}`:\n{output}", args.join(" "));
        }
    }
    assert_eq!(env.sim.stats().creates, 0, "nothing was minted");
    for name in ["x", "y"] {
        let id = format!("{}/{name}", env.prefix);
        assert!(env.aws().describe_secret().secret_id(&id).send().await.is_err(), "{id} was not created in moto");
    }
    assert!(!env.journal_path().exists(), "no journal was created");
    // In another default region `a` and `b` are different secrets (`c`'s ARN names a secret
    // moto does not hold, which plan would report).
    std::fs::remove_file(env.dir.join("policies/c.yaml")).unwrap();
    env.env.push(("AWS_REGION".into(), "eu-west-1".into()));
    let run = env.rotator(&["plan"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(env.sim.stats().creates, 0, "plan mints nothing");
}

/// A rotation interrupted before promotion resumes when `--policies` is spelled differently
/// (relative with `./` and a trailing slash, bare, through a symlink, absolute): the journal
/// holds canonical destinations, so every run sees the same ones.
#[tokio::test(flavor = "multi_thread")]
async fn resume_accepts_the_same_destinations_under_another_policies_spelling() {
    let mut env = Env::start().await;
    std::os::unix::fs::symlink("policies", env.dir.join("linked")).unwrap();
    let spec = Spec {
        name: "spelled".into(),
        kind: CredentialKind::ApiKey,
        dests: vec![Dest::File(PathBuf::from("out/spelled.json")), Dest::Vault(format!("{}/spelled", env.prefix))],
        grace: "0s",
    };
    env.policy("spelled.yaml", &spec.yaml());
    let legacy = env.legacy(spec.kind, "spelled-legacy").await;
    env.seed(&spec, &legacy).await;
    let absolute = env.dir.join("policies").display().to_string();
    for (spelling, crash_at) in [("./policies/", "staged"), ("policies", "verified"), ("linked", "promoted-0")] {
        env.env = vec![("ROTATOR_CRASH_AT".into(), crash_at.into())];
        let run = env.rotator(&["rotate", "spelled", "--policies", spelling]).await;
        assert!(
            run.code == -1 && run.stderr.contains(&format!("crash point `{crash_at}` reached")),
            "--policies {spelling}: the run goes on to crash point {crash_at}\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
    env.env.clear();
    let run = env.rotator(&["rotate", "spelled", "--policies", &absolute]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("completed (resumed)"), "{}", run.stdout);
    env.assert_converged(&[spec], &[(CredentialKind::ApiKey, legacy.id.clone(), legacy.secret.expose().to_string())])
        .await;
}
