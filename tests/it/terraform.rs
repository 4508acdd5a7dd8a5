//! `terraform/` grants exactly what `rotator permissions` says the example policies need: the
//! committed `permissions.json` is current, and the Terraform, parsed and evaluated, gives the
//! task role the Secrets Manager and KMS actions `--format aws-iam` prints, on the same secrets,
//! and Vault the policy `--format vault-hcl` prints. (No Terraform binary exists here; `checkov`
//! in the test command covers the rest.)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::{Block, Body, Expression, Value};

const ACCOUNT: &str = "123456789012";
const REGION: &str = "eu-central-1";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `rotator permissions` over the repository's example policies.
fn permissions(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_rotator"))
        .current_dir(repo())
        .args(["permissions", "--policies", "policies"])
        .args(args)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_examples_permissions_file_is_current() {
    let committed = std::fs::read_to_string(repo().join("terraform/examples/complete/permissions.json")).unwrap();
    assert!(
        committed == permissions(&["--format", "json"]),
        "terraform/examples/complete/permissions.json is stale; regenerate it with\n  \
         rotator permissions --policies policies --format json > terraform/examples/complete/permissions.json"
    );
}

fn parse(path: &str) -> Body {
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    hcl::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn labelled<'a>(body: &'a Body, identifier: &str, labels: &[&str]) -> Vec<&'a Block> {
    body.blocks()
        .filter(|b| b.identifier() == identifier)
        .filter(|b| labels.iter().zip(b.labels()).all(|(want, got)| *want == got.as_str()))
        .collect()
}

fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

/// The Terraform functions the modules' expressions call, as Terraform defines them.
fn functions(ctx: &mut Context) {
    fn startswith(args: FuncArgs) -> Result<Value, String> {
        Ok(Value::Bool(args[0].as_str().unwrap().starts_with(args[1].as_str().unwrap())))
    }
    fn split(args: FuncArgs) -> Result<Value, String> {
        let (separator, text) = (args[0].as_str().unwrap(), args[1].as_str().unwrap());
        Ok(Value::Array(text.split(separator).map(|s| Value::String(s.into())).collect()))
    }
    fn coalesce(args: FuncArgs) -> Result<Value, String> {
        args.iter().find(|v| !v.is_null()).cloned().ok_or_else(|| "no non-null argument".to_string())
    }
    fn distinct(args: FuncArgs) -> Result<Value, String> {
        let mut seen = Vec::new();
        for v in args[0].as_array().unwrap() {
            if !seen.contains(v) {
                seen.push(v.clone());
            }
        }
        Ok(Value::Array(seen))
    }
    fn sort(args: FuncArgs) -> Result<Value, String> {
        let mut items: Vec<String> = args[0].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
        items.sort();
        Ok(Value::Array(items.into_iter().map(Value::String).collect()))
    }
    fn concat(args: FuncArgs) -> Result<Value, String> {
        Ok(Value::Array(args.iter().flat_map(|a| a.as_array().cloned().unwrap_or_default()).collect()))
    }
    fn flatten(args: FuncArgs) -> Result<Value, String> {
        fn walk(value: &Value, out: &mut Vec<Value>) {
            match value {
                Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
                other => out.push(other.clone()),
            }
        }
        let mut out = Vec::new();
        walk(&args[0], &mut out);
        Ok(Value::Array(out))
    }
    fn length(args: FuncArgs) -> Result<Value, String> {
        match &args[0] {
            Value::Array(items) => Ok(Value::from(items.len() as u64)),
            Value::Object(map) => Ok(Value::from(map.len() as u64)),
            Value::String(text) => Ok(Value::from(text.chars().count() as u64)),
            other => Err(format!("length of {other:?}")),
        }
    }
    let string = || ParamType::String;
    let array = || ParamType::array_of(ParamType::Any);
    ctx.declare_func("startswith", FuncDef::builder().params([string(), string()]).build(startswith));
    ctx.declare_func("split", FuncDef::builder().params([string(), string()]).build(split));
    ctx.declare_func("coalesce", FuncDef::builder().variadic_param(ParamType::Any).build(coalesce));
    ctx.declare_func("distinct", FuncDef::builder().param(array()).build(distinct));
    ctx.declare_func("sort", FuncDef::builder().param(array()).build(sort));
    ctx.declare_func("concat", FuncDef::builder().variadic_param(array()).build(concat));
    ctx.declare_func("flatten", FuncDef::builder().param(array()).build(flatten));
    ctx.declare_func("length", FuncDef::builder().param(ParamType::Any).build(length));
}

fn context(var: &Value, local: &Value, statement: Option<&Value>) -> Context<'static> {
    let mut ctx = Context::new();
    functions(&mut ctx);
    ctx.declare_var("var", var.clone());
    ctx.declare_var("local", local.clone());
    if let Some(statement) = statement {
        ctx.declare_var("statement", statement.clone());
    }
    ctx
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value:?}"))
        .iter()
        .map(|v| v.as_str().unwrap().into())
        .collect()
}

/// (action, resource) pairs of an IAM policy document as `rotator permissions` prints it.
fn printed_grants(document: &serde_json::Value) -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let mut secrets = BTreeSet::new();
    let mut kms = BTreeSet::new();
    for statement in document["Statement"].as_array().unwrap() {
        for action in statement["Action"].as_array().unwrap() {
            let action = action.as_str().unwrap().to_string();
            if action.starts_with("kms:") {
                kms.insert(action);
                continue;
            }
            for resource in statement["Resource"].as_array().unwrap() {
                secrets.insert((action.clone(), resource.as_str().unwrap().to_string()));
            }
        }
    }
    (secrets, kms)
}

#[test]
fn the_task_role_grants_exactly_what_rotator_permissions_prints() {
    let json: serde_json::Value = serde_json::from_str(&permissions(&["--format", "json"])).unwrap();
    let var: Value = serde_json::from_value(serde_json::json!({
        "permissions": json,
        "create_secrets": true,
        "default_region": null,
    }))
    .unwrap();
    let body = parse("terraform/modules/aws/main.tf");

    // The module's locals the task policy reads, evaluated in order with what Terraform would
    // know from the provider (partition, account, region).
    let mut local = serde_json::json!({
        "partition": "aws", "account_id": ACCOUNT, "region": REGION, "default_region": REGION,
        "dns_suffix": "amazonaws.com",
    });
    for name in ["secrets", "secret_regions"] {
        let expression = labelled(&body, "locals", &[])
            .into_iter()
            .find_map(|b| attribute(b.body(), name))
            .unwrap_or_else(|| panic!("no local.{name}"));
        let local_value: Value = serde_json::from_value(local.clone()).unwrap();
        let value =
            expression.evaluate(&context(&var, &local_value, None)).unwrap_or_else(|e| panic!("local.{name}: {e}"));
        local[name] = serde_json::to_value(&value).unwrap();
    }
    let local: Value = serde_json::from_value(local).unwrap();

    let [task] = labelled(&body, "data", &["aws_iam_policy_document", "task"])[..] else {
        panic!("one data.aws_iam_policy_document.task")
    };
    let mut granted = BTreeSet::new();
    let mut kms = BTreeSet::new();
    let mut via = BTreeSet::new();
    // One statement: its actions, resources (a statement on the module's own KMS key names one
    // not known before apply) and conditions, and it must allow, not deny.
    let mut grant = |body: &Body, ctx: &Context| {
        if let Some(effect) = attribute(body, "effect") {
            assert_eq!(effect.evaluate(ctx).unwrap(), Value::from("Allow"));
        }
        let actions = strings(&attribute(body, "actions").unwrap().evaluate(ctx).unwrap());
        let resources = attribute(body, "resources").unwrap().evaluate(ctx).ok().map(|r| strings(&r));
        for condition in body.blocks().filter(|b| b.identifier() == "condition") {
            let variable = attribute(condition.body(), "variable").unwrap().evaluate(ctx).unwrap();
            assert_eq!(variable, Value::from("kms:ViaService"), "only KMS is conditioned");
            let test = attribute(condition.body(), "test").unwrap().evaluate(ctx).unwrap();
            assert_eq!(test, Value::from("StringEquals"));
            via.extend(strings(&attribute(condition.body(), "values").unwrap().evaluate(ctx).unwrap()));
        }
        for action in actions {
            if action.starts_with("kms:") {
                kms.insert(action);
                continue;
            }
            assert!(action.starts_with("secretsmanager:"), "the task role grants {action}");
            for resource in resources.clone().expect("a Secrets Manager statement names its secrets") {
                granted.insert((action.clone(), resource));
            }
        }
    };
    for block in task.body().blocks() {
        match (block.identifier(), block.labels().first().map(|l| l.as_str())) {
            ("statement", None) => grant(block.body(), &context(&var, &local, None)),
            ("dynamic", Some("statement")) => {
                let for_each =
                    attribute(block.body(), "for_each").unwrap().evaluate(&context(&var, &local, None)).unwrap();
                let entries: Vec<(String, Value)> = match for_each {
                    Value::Object(map) => map.into_iter().collect(),
                    Value::Array(items) => items.into_iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
                    other => panic!("for_each over {other:?}"),
                };
                let content = block.body().blocks().find(|b| b.identifier() == "content").unwrap();
                for (key, value) in entries {
                    let statement: Value = serde_json::from_value(
                        serde_json::json!({ "key": key, "value": serde_json::to_value(&value).unwrap() }),
                    )
                    .unwrap();
                    grant(content.body(), &context(&var, &local, Some(&statement)));
                }
            }
            (other, _) => panic!("unexpected block {other} in the task policy"),
        }
    }
    // The task role carries that document and nothing else.
    let role_policies: Vec<&Block> = labelled(&body, "resource", &["aws_iam_role_policy"])
        .into_iter()
        .filter(|b| attribute(b.body(), "role").is_some_and(|r| format!("{r}").contains("aws_iam_role.task.")))
        .collect();
    assert_eq!(role_policies.len(), 1, "one inline policy on the task role");
    assert_eq!(
        format!("{}", attribute(role_policies[0].body(), "policy").unwrap()),
        "data.aws_iam_policy_document.task.json"
    );
    for attachment in labelled(&body, "resource", &["aws_iam_role_policy_attachment"]) {
        let role = attribute(attachment.body(), "role").map(|r| format!("{r}")).unwrap_or_default();
        assert!(!role.contains("aws_iam_role.task."), "a policy attached to the task role: {role}");
    }
    let [role] = labelled(&body, "resource", &["aws_iam_role", "task"])[..] else { panic!("one aws_iam_role.task") };
    assert!(attribute(role.body(), "managed_policy_arns").is_none(), "managed policies on the task role");

    let printed: serde_json::Value = serde_json::from_str(&permissions(&[
        "--format",
        "aws-iam",
        "--aws-account-id",
        ACCOUNT,
        "--aws-region",
        REGION,
        "--kms-key-arn",
        "arn:aws:kms:eu-central-1:123456789012:key/example",
    ]))
    .unwrap();
    let (want_secrets, want_kms) = printed_grants(&printed);
    assert!(!want_secrets.is_empty());
    assert_eq!(granted, want_secrets, "Secrets Manager grants of the task role");
    assert_eq!(kms, want_kms, "KMS grants of the task role");
    let want_via: BTreeSet<String> = printed["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Condition"]["StringEquals"]["kms:ViaService"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(!want_via.is_empty());
    assert_eq!(via, want_via, "KMS only through Secrets Manager in the secrets' regions");
}

#[test]
fn vault_gets_exactly_the_policy_rotator_permissions_prints() {
    let json: serde_json::Value = serde_json::from_str(&permissions(&["--format", "json"])).unwrap();
    let var: Value = serde_json::from_value(serde_json::json!({ "permissions": json })).unwrap();
    let body = parse("terraform/modules/vault/main.tf");
    let policies = labelled(&body, "resource", &["vault_policy"]);
    assert_eq!(policies.len(), 1, "one Vault policy, rotator's");
    let text = attribute(policies[0].body(), "policy").unwrap().evaluate(&context(&var, &Value::Null, None)).unwrap();
    let printed = permissions(&["--format", "vault-hcl"]);
    assert_eq!(text.as_str(), Some(printed.as_str()));

    // And that text grants, path by path, the capabilities the JSON lists (what `plan` checks);
    // `delete` only on the staging paths' metadata, rotator's own.
    let policies = rotator::policy::load_dir(&repo().join("policies")).unwrap();
    let staging_metadata: BTreeSet<String> = policies
        .iter()
        .flat_map(|p| &p.destinations)
        .filter_map(|d| match d {
            rotator::policy::Destination::Vault(v) => {
                Some(format!("{}/metadata/{}", v.mount.trim_matches('/'), v.staging_path()))
            }
            _ => None,
        })
        .collect();
    assert!(!staging_metadata.is_empty());
    let mut granted = BTreeSet::new();
    for block in hcl::parse(&printed).unwrap().blocks() {
        assert_eq!(block.identifier(), "path");
        let path = block.labels()[0].as_str().to_string();
        let capabilities = attribute(block.body(), "capabilities").unwrap().evaluate(&Context::new()).unwrap();
        for capability in strings(&capabilities) {
            assert!(!["destroy", "sudo", "deny"].contains(&capability.as_str()), "{path}: {capability}");
            assert!(
                capability != "delete" || staging_metadata.contains(&path),
                "{path}: delete outside rotator's staging metadata"
            );
            granted.insert((path.clone(), capability));
        }
    }
    let listed: BTreeSet<(String, String)> = json["vault"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let path = p["path"].as_str().unwrap().to_string();
            p["capabilities"].as_array().unwrap().iter().map(move |c| (path.clone(), c.as_str().unwrap().to_string()))
        })
        .collect();
    assert_eq!(granted, listed);

    // Every auth role carries rotator's policy and nothing else.
    let mut ctx = context(&var, &Value::Null, None);
    ctx.declare_var("vault_policy", hcl::value!({ this = { name = "rotator-policy" } }));
    let locals = labelled(&body, "locals", &[]);
    let token_policies =
        locals.iter().find_map(|b| attribute(b.body(), "token_policies")).unwrap().evaluate(&ctx).unwrap();
    let mut ctx = context(&var, &hcl::value!({ token_policies = (token_policies) }), None);
    ctx.declare_var("vault_policy", hcl::value!({ this = { name = "rotator-policy" } }));
    let roles: Vec<&Block> =
        body.blocks().filter(|b| b.identifier() == "resource" && b.labels()[0].as_str().ends_with("_role")).collect();
    assert_eq!(roles.len(), 4, "AWS IAM, Kubernetes, JWT and AppRole roles");
    for role in roles {
        let policies = attribute(role.body(), "token_policies")
            .unwrap_or_else(|| panic!("{:?} has no token_policies", role.labels()))
            .evaluate(&ctx)
            .unwrap();
        assert_eq!(strings(&policies), ["rotator-policy"], "{:?} must carry only rotator's policy", role.labels());
        let no_default = attribute(role.body(), "token_no_default_policy").map(|e| e.evaluate(&ctx).unwrap());
        assert_eq!(no_default, Some(Value::Bool(true)), "{:?}", role.labels());
    }
}
