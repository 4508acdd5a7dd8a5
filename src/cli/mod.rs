//! The command line: argument definitions and what each command does. `main.rs` only parses,
//! sets up telemetry and maps the result to an exit code (0 success, 1 a rotation or check
//! failed, 2 invalid input or usage).
//!
//! This file holds the definitions (`Cli`, `Command`, the `*Args`), `Failure` (which exit code a
//! failure maps to), `Ctx` and `run`, one `match` that hands each command to the file of its
//! job: `rotate`, `inspect` (`plan`, `status`, `history`, `reconcile`), `serve` and `setup`
//! (`validate`, `init`, `schema`, `completions`, `permissions`, `healthcheck`, `toktra-sim`).
//! `open` is what they share: the policy set, the journal, and the Toktra and destination
//! clients for a policy set, which are built there and nowhere else.
//!
//! Bad input changes nothing (invariant 8): a command that writes (`rotate`, `reconcile`,
//! `serve`) loads and validates the whole policy set before it opens the journal or any client.
//! Results go to stdout; notes, warnings and the journal's name to stderr.

mod inspect;
mod open;
mod rotate;
mod serve;
mod setup;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;
pub use crate::report::Format;
use crate::telemetry::LogFormat;

pub use open::load_policies;
pub use rotate::check_outcomes;

#[derive(Parser)]
#[command(name = "rotator", version, about = "Rotates Toktra credentials into AWS Secrets Manager and Vault")]
pub struct Cli {
    /// Directory of rotation policy files.
    #[arg(long, global = true, default_value = "policies", env = "ROTATOR_POLICIES")]
    pub policies: PathBuf,
    /// Configuration file (TOML); default `rotator.toml` if it exists. The environment
    /// overrides it.
    #[arg(long, global = true, env = "ROTATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr (default: JSON lines for `serve`, text otherwise).
    #[arg(long, global = true, value_enum, env = "ROTATOR_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// More detail on stderr (same as RUST_LOG=debug for rotator).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Check policy files without changing anything.
    Validate(ValidateArgs),
    /// For each policy: the current credential, its age, when it is next due and why, what a
    /// rotation would do, and preflight checks of Toktra and every destination. Changes nothing.
    Plan(PlanArgs),
    /// Rotate the named policies now.
    Rotate(RotateArgs),
    /// Each policy's current credential, its age, pending revocations and the last error (from
    /// the journal; calls nothing else).
    Status(FormatArgs),
    /// Past rotations, most recent first.
    History(HistoryArgs),
    /// Compare Toktra's credentials, the destinations and the journal: orphans, drift, stale
    /// staged values. `--fix` revokes orphans rotator minted and discards stale staged values.
    Reconcile(ReconcileArgs),
    /// Show the whole flow on this machine: an in-process Toktra simulator, file destinations and
    /// a local journal; no account and no servers needed.
    Demo(DemoArgs),
    /// Run the service: the scheduler that rotates due policies, the HTTP API, metrics and
    /// notifications. SIGHUP reloads policies; SIGTERM stops after the steps in flight.
    Serve(ServeArgs),
    /// Print the JSON Schema of policy files (`--markdown`: the policy reference).
    Schema(SchemaArgs),
    /// Print the least-privilege grants the policies need: an AWS IAM policy, a Vault policy, or
    /// both as JSON for Terraform (`jsondecode(file(...))`). Derived from the same lists of
    /// operations the code performs; calls nothing.
    Permissions(PermissionsArgs),
    /// Exit 0 when this host's `rotator serve` answers `GET /healthz` (a container's health
    /// check; distroless images have no shell or curl). Liveness only: a vendor outage does not
    /// fail it.
    Healthcheck(HealthcheckArgs),
    /// Run the Toktra simulator as a server (for local experiments and tests).
    ToktraSim(SimArgs),
    /// Start a project: a commented `rotator.toml`, one sample policy and the JSON Schema its
    /// editor modeline points at. Refuses to overwrite anything.
    Init(InitArgs),
    /// Print a shell completion script, e.g. `rotator completions bash > /etc/bash_completion.d/rotator`.
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LintFormat {
    Text,
    Json,
    /// GitHub Actions annotations (`::error file=…,line=…,col=…::message`).
    Github,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Files or directories to check (default: the policy directory).
    pub paths: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = LintFormat::Text)]
    pub format: LintFormat,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Only these policies (default: all).
    pub names: Vec<String>,
    /// Only policies with these labels, `key=value` (repeat or separate with commas).
    #[arg(long, value_parser = parse_selector, action = clap::ArgAction::Append)]
    pub selector: Vec<Vec<(String, String)>>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["names", "all", "selector", "due"])))]
pub struct RotateArgs {
    /// Policies to rotate.
    #[arg(conflicts_with = "all")]
    pub names: Vec<String>,
    /// Rotate every policy.
    #[arg(long)]
    pub all: bool,
    /// Rotate the policies with these labels, `key=value` (repeat or separate with commas).
    #[arg(long, value_parser = parse_selector, action = clap::ArgAction::Append)]
    pub selector: Vec<Vec<(String, String)>>,
    /// Show the plan for these policies instead, changing nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why (recorded in the journal, at most 1024 bytes; required with --compromised).
    #[arg(long, required_if_eq("compromised", "true"))]
    pub reason: Option<String>,
    /// Suspected exposure: revoke the old credential right after promotion, whatever its grace,
    /// and report where it was held and how long containment took.
    #[arg(long)]
    pub compromised: bool,
    /// With --compromised: revoke the old credential before minting the new one. Consumers fail
    /// until the new credential is promoted (an outage, accepted to cut an attacker off first).
    #[arg(long, requires = "compromised")]
    pub revoke_first: bool,
    /// Rotate only those of the chosen policies (all, without names or --selector) that are due
    /// now by their schedule and window: for cron-driven jobs. Without it, `rotate` means now.
    #[arg(long, conflicts_with_all = ["compromised", "dry_run"])]
    pub due: bool,
    /// Rotations at the same time (default: `concurrency` in the configuration,
    /// `ROTATOR_CONCURRENCY`, else 16). Toktra's rate limit is shared by all of them.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Option<u16>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this policy.
    pub name: Option<String>,
    /// At most this many rotations.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    /// Include every journal step.
    #[arg(long)]
    pub steps: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Revoke orphans rotator minted and discard stale staged values.
    #[arg(long)]
    pub fix: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the HTTP API (default from the configuration, else 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Serve the API without a token. Allowed on a loopback address only.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PermissionsFormat {
    /// An IAM policy document for the role rotator runs as.
    AwsIam,
    /// A Vault policy for rotator's token.
    VaultHcl,
    /// Both, with secret names and regions instead of ARNs, and the Toktra scopes each policy
    /// mints (`rotator-permissions/v1`).
    Json,
}

#[derive(Debug, Args)]
pub struct PermissionsArgs {
    #[arg(long, value_enum, default_value = "json")]
    pub format: PermissionsFormat,
    /// The AWS account of the secrets (for their ARNs in `aws-iam`).
    #[arg(long, value_name = "ID")]
    pub aws_account_id: Option<String>,
    /// The AWS partition of the ARNs.
    #[arg(long, default_value = "aws", value_name = "PARTITION")]
    pub aws_partition: String,
    /// Region of secrets whose policy names none (default `AWS_REGION`).
    #[arg(long, value_name = "REGION")]
    pub aws_region: Option<String>,
    /// A customer-managed KMS key the secrets are encrypted with; `kms:Decrypt` and
    /// `kms:GenerateDataKey` on it are granted through Secrets Manager only. Repeatable.
    #[arg(long, value_name = "ARN")]
    pub kms_key_arn: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The URL to check (default: `/healthz` on the configured listen address, with an
    /// unspecified address such as 0.0.0.0 taken as loopback).
    #[arg(long)]
    pub url: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// The policy reference in Markdown instead (docs/policy-reference.md).
    #[arg(long)]
    pub markdown: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's files in this directory instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

// No `Debug`: it holds the admin credentials.
#[derive(Args)]
pub struct SimArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8700")]
    pub listen: std::net::SocketAddr,
    /// Admin API key to accept for management calls.
    #[arg(long, env = "TOKTRA_SIM_ADMIN_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Admin OAuth client as CLIENT_ID:CLIENT_SECRET.
    #[arg(long, env = "TOKTRA_SIM_ADMIN_CLIENT", hide_env_values = true)]
    pub admin_client: Option<String>,
    /// Lifetime of issued access tokens, e.g. `3600s`, `2s`.
    #[arg(long, default_value = "3600s")]
    pub token_lifetime: String,
    /// Page size of list endpoints.
    #[arg(long, default_value_t = 25)]
    pub page_size: usize,
    /// Requests per minute per credential.
    #[arg(long, default_value_t = 1000)]
    pub rate_limit: u32,
    /// Fault injection as JSON, e.g. `{"error_rate":0.15}`.
    #[arg(long)]
    pub faults: Option<String>,
    /// Whether lists keep revoked credentials: `omit`, `revoked_at` (kept with `revoked_at`
    /// set) or `status` (kept with `"status": "revoked"`). Also `PUT /_sim/dialect` at run time.
    #[arg(long, default_value = "omit")]
    pub revoked_in_lists: String,
    /// How the token endpoint refuses a client: `invalid_client401`, `invalid_client400` or
    /// `unauthorized401`.
    #[arg(long, default_value = "invalid_client401")]
    pub token_error: String,
}

fn parse_selector(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(format!("`{pair}` is not `key=value`")),
        })
        .collect()
}

/// A command's failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Invalid input or usage: exit 2.
    #[error("{0}")]
    Invalid(String),
    /// The policy set is invalid (every problem, with its place): exit 2.
    #[error(transparent)]
    Policies(#[from] crate::policy::Invalid),
    /// The configuration (file or environment) is invalid: exit 2.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// A rotation or check failed: exit 1. The message is already printed.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<crate::service::Error> for Failure {
    fn from(e: crate::service::Error) -> Failure {
        use crate::service::Error;
        match e {
            Error::Policies(invalid) => Failure::Policies(invalid),
            Error::Config(e) => Failure::Config(e),
            Error::Tls(_) => Failure::Invalid(e.to_string()),
            Error::Journal(_) | Error::Listener(_) | Error::Server(_) => Failure::Other(e.into()),
        }
    }
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Invalid(_) | Failure::Policies(_) | Failure::Config(_) => 2,
            Failure::Failed(_) | Failure::Other(_) => 1,
        }
    }
}

/// What every command gets from the global options.
pub struct Ctx {
    pub policies: PathBuf,
    pub config: Option<PathBuf>,
}

impl Ctx {
    pub fn config(&self) -> Result<Config, Failure> {
        if let Some(path) = &self.config
            && !path.exists()
        {
            return Err(Failure::Invalid(format!("--config {}: no such file", path.display())));
        }
        Ok(Config::load(self.config.as_deref())?)
    }
}

/// Runs a command: the one `match` over [`Command`], each arm handing over to the file of its job.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Ctx { policies: cli.policies.clone(), config: cli.config.clone() };
    match cli.command {
        Command::Validate(args) => setup::validate(&ctx.policies, args),
        Command::Plan(args) => inspect::plan(&ctx, &args.names, &args.selector.concat(), None, args.format).await,
        Command::Rotate(args) => rotate::rotate(&ctx, args).await,
        Command::Status(args) => inspect::status(&ctx, args).await,
        Command::History(args) => inspect::history(&ctx, args).await,
        Command::Reconcile(args) => inspect::reconcile(&ctx, args).await,
        Command::Demo(args) => crate::demo::run(args.dir).await.map_err(Failure::Other),
        Command::Serve(args) => serve::serve(&ctx, args).await,
        Command::Init(args) => setup::init(&args.dir),
        Command::Completions(args) => setup::completions(args),
        Command::Schema(args) => setup::schema(args),
        Command::ToktraSim(args) => setup::toktra_sim(args).await,
        Command::Permissions(args) => setup::permissions(&ctx, args),
        Command::Healthcheck(args) => setup::healthcheck(&ctx, args).await,
    }
}
