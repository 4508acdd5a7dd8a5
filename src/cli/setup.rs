//! The commands that prepare and check, without rotating: `validate` (policy files, with text,
//! JSON or GitHub annotations), `init` (a starting project), `schema`, `completions`,
//! `permissions` (the grants the policies need), `healthcheck` (a container's liveness probe)
//! and `toktra-sim` (the simulator as a server).

use super::open::load_policies;
use super::{
    Cli, CompletionsArgs, Ctx, Failure, HealthcheckArgs, LintFormat, PermissionsArgs, PermissionsFormat, SchemaArgs,
    SimArgs, ValidateArgs,
};
use crate::policy;

pub(super) fn validate(dir: &std::path::Path, args: ValidateArgs) -> Result<(), Failure> {
    let result = if args.paths.is_empty() {
        if !dir.is_dir() {
            return Err(Failure::Invalid(format!("{}: policy directory not found (set --policies)", dir.display())));
        }
        policy::load_dir(dir)
    } else {
        policy::load_paths(&args.paths)
    };
    let problems = match &result {
        Ok(_) => &[][..],
        Err(invalid) => &invalid.0[..],
    };
    // A set without policies checked nothing: a wrong `--policies` or a misnamed file, most
    // likely, so it is not reported as valid.
    let empty = match (&result, args.paths.is_empty()) {
        (Ok(policies), true) if policies.is_empty() => {
            Some(format!("no policy files (*.yaml, *.yml) in {}", dir.display()))
        }
        (Ok(policies), false) if policies.is_empty() => Some("no policies in the files given".to_string()),
        _ => None,
    };
    match args.format {
        LintFormat::Text => match &result {
            Ok(_) if empty.is_some() => {}
            Ok(policies) if policies.len() == 1 => println!("1 policy valid"),
            Ok(policies) => println!("{} policies valid", policies.len()),
            Err(invalid) => invalid.0.iter().for_each(|p| println!("{p}")),
        },
        LintFormat::Json => {
            let names: Vec<&str> =
                result.as_ref().map(|ps| ps.iter().map(|p| p.name.as_str()).collect()).unwrap_or_default();
            let rows: Vec<_> = problems
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "file": p.location.file.display().to_string(),
                        "line": p.location.line,
                        "column": p.location.column,
                        "field": p.field,
                        "message": p.message,
                    })
                })
                .collect();
            let mut report =
                serde_json::json!({ "valid": result.is_ok() && empty.is_none(), "policies": names, "problems": rows });
            if let Some(warning) = &empty {
                report["warning"] = serde_json::json!(warning);
            }
            println!("{report}");
        }
        LintFormat::Github => {
            for p in problems {
                // Workflow-command escaping: %, CR and LF in data; also , and : in properties.
                let data = |t: &str| t.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
                let property = |t: &str| data(t).replace(':', "%3A").replace(',', "%2C");
                let message =
                    if p.field.is_empty() { p.message.clone() } else { format!("{}: {}", p.field, p.message) };
                // A problem with the file as a whole has no line to point at.
                let position = match p.location.line {
                    0 => String::new(),
                    line => format!(",line={line},col={}", p.location.column),
                };
                println!(
                    "::error file={}{position},title={}::{}",
                    property(&p.location.file.display().to_string()),
                    property("rotator policy"),
                    data(&message)
                );
            }
        }
    }
    if let Some(warning) = empty {
        eprintln!("warning: {warning}");
        return Err(Failure::Invalid("nothing to validate".into()));
    }
    match result {
        Ok(_) => Ok(()),
        Err(invalid) => Err(Failure::Invalid(format!("{} problem(s); nothing was changed", invalid.0.len()))),
    }
}

/// `rotator schema`: the JSON Schema of policy files, or with `--markdown` the policy reference.
pub(super) fn schema(args: SchemaArgs) -> Result<(), Failure> {
    print!("{}", if args.markdown { crate::policy::reference_markdown() } else { crate::policy::json_schema() });
    Ok(())
}

/// `rotator completions SHELL`: the shell's completion script for every command and flag.
pub(super) fn completions(args: CompletionsArgs) -> Result<(), Failure> {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(args.shell, &mut command, "rotator", &mut std::io::stdout());
    Ok(())
}

pub(super) fn permissions(ctx: &Ctx, args: PermissionsArgs) -> Result<(), Failure> {
    use crate::permissions;
    let policies = load_policies(&ctx.policies)?;
    let grants = permissions::derive(&policies);
    match args.format {
        PermissionsFormat::AwsIam => {
            if let Some(id) = &args.aws_account_id
                && (id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(Failure::Invalid(format!("--aws-account-id `{id}` is not a 12-digit AWS account ID")));
            }
            if let Some(arn) = args.kms_key_arn.iter().find(|a| !(a.starts_with("arn:") && a.contains(":kms:"))) {
                return Err(Failure::Invalid(format!("--kms-key-arn `{arn}` is not a KMS key ARN (arn:aws:kms:…)")));
            }
            let target = permissions::AwsTarget {
                account_id: args.aws_account_id,
                partition: args.aws_partition,
                default_region: args
                    .aws_region
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                    .filter(|r| !r.is_empty()),
                kms_key_arns: args.kms_key_arn,
            };
            let document = permissions::aws_iam(&grants, &target).map_err(Failure::Invalid)?;
            println!("{}", serde_json::to_string_pretty(&document).expect("a JSON value renders"));
        }
        PermissionsFormat::VaultHcl => print!("{}", permissions::vault_hcl(&grants)),
        PermissionsFormat::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&permissions::terraform_json(&grants)).expect("a JSON value renders")
            );
        }
    }
    Ok(())
}

/// `GET /healthz` of this host's service; exit 1 with the reason when it does not answer `200`.
pub(super) async fn healthcheck(ctx: &Ctx, args: HealthcheckArgs) -> Result<(), Failure> {
    let (url, tls) = match args.url {
        Some(url) => {
            let tls = url.starts_with("https://");
            (url, tls)
        }
        None => {
            let config = ctx.config()?;
            let mut address = config.listen;
            if address.ip().is_unspecified() {
                address.set_ip(match address {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            let tls = config.http.tls.is_some();
            (format!("{}://{address}/healthz", if tls { "https" } else { "http" }), tls)
        }
    };
    // The service's certificate names the host as clients reach it, not this address; the
    // check sends nothing secret and only looks at the status.
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .tls_danger_accept_invalid_certs(tls)
        .build()
        .map_err(|e| Failure::Other(e.into()))?;
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => {
            println!("{url}: {}", response.status());
            Ok(())
        }
        Ok(response) => Err(Failure::Failed(format!("{url}: answered {}", response.status()))),
        Err(e) => Err(Failure::Failed(format!("{url}: {}", crate::toktra::causes(&e)))),
    }
}

/// The sample policy `rotator init` writes: a file destination, so it rotates without any cloud
/// account once a Toktra is configured.
const INIT_POLICY: &str = r#"# yaml-language-server: $schema=../schema/policy.schema.json
# A sample policy written by `rotator init`. Check it with `rotator validate`, see what would
# happen with `rotator plan`. The reference: `rotator schema --markdown`.
name: example
description: An API key for an example integration, kept in a local file (mode 0600)
labels: { team: platform }
credential:
  kind: api_key            # or oauth_client
  name: example            # base name at Toktra; rotations mint `example-<rotation id>`
schedule:
  every: 90d
destinations:
  - file: { path: out/example.json }
  # - aws_secrets_manager: { secret_id: prod/toktra/example, region: eu-central-1, create: true }
  # - vault: { mount: secret, path: toktra/example, create: true }
revoke:
  grace: 24h
"#;

/// `rotator init`: writes the three starting files, or none when any of them exists.
pub(super) fn init(dir: &std::path::Path) -> Result<(), Failure> {
    let files = [
        (dir.join("rotator.toml"), include_str!("../../rotator.example.toml").to_string()),
        (dir.join("policies").join("example.yaml"), INIT_POLICY.to_string()),
        (dir.join("schema").join("policy.schema.json"), crate::policy::json_schema()),
    ];
    if let Some((path, _)) = files.iter().find(|(path, _)| path.symlink_metadata().is_ok()) {
        return Err(Failure::Invalid(format!("{} exists; init writes nothing over existing files", path.display())));
    }
    for (path, text) in &files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::Invalid(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(path, text).map_err(|e| Failure::Invalid(format!("cannot write {}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    println!(
        "\nNext:\n  rotator --policies {p} validate\n  export TOKTRA_API_KEY=...   # rotator's own admin credential\n  \
         rotator --config {c} --policies {p} plan",
        p = dir.join("policies").display(),
        c = dir.join("rotator.toml").display()
    );
    Ok(())
}

pub(super) async fn toktra_sim(args: SimArgs) -> Result<(), Failure> {
    if !args.listen.ip().is_loopback() {
        return Err(Failure::Invalid(format!("--listen {}: the simulator only listens on loopback", args.listen)));
    }
    let token_lifetime =
        crate::duration::parse(&args.token_lifetime).map_err(|e| Failure::Invalid(format!("--token-lifetime: {e}")))?;
    let faults = match &args.faults {
        Some(json) => serde_json::from_str(json).map_err(|e| Failure::Invalid(format!("--faults: {e}")))?,
        None => Default::default(),
    };
    fn choice<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> Result<T, Failure> {
        serde_json::from_value(serde_json::Value::String(value.to_string()))
            .map_err(|e| Failure::Invalid(format!("--{flag} {value}: {e}")))
    }
    let dialect = crate::sim::Dialect {
        revoked_in_lists: choice("revoked-in-lists", &args.revoked_in_lists)?,
        token_error: choice("token-error", &args.token_error)?,
    };
    let admin_client = match &args.admin_client {
        Some(text) => {
            let (id, secret) = text
                .split_once(':')
                .ok_or_else(|| Failure::Invalid("--admin-client: expected CLIENT_ID:CLIENT_SECRET".into()))?;
            Some((id.to_string(), secret.to_string()))
        }
        None => None,
    };
    if args.admin_api_key.is_none() && admin_client.is_none() {
        return Err(Failure::Invalid(
            "give --admin-api-key or --admin-client, or nothing can manage credentials".into(),
        ));
    }
    let config = crate::sim::Config {
        token_lifetime,
        page_size: args.page_size,
        rate_limit_per_minute: args.rate_limit,
        faults,
        dialect,
        admin_api_key: args.admin_api_key,
        admin_client,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::Invalid(format!("--listen {}: {e}", args.listen)))?;
    let sim = crate::sim::Simulator::serve(listener, config).await.map_err(|e| Failure::Other(e.into()))?;
    eprintln!("toktra simulator listening on {}", sim.base_url());
    crate::telemetry::shutdown_signal().await;
    sim.shutdown().await;
    Ok(())
}
