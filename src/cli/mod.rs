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

mod open;
mod serve;
mod setup;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;
pub use crate::report::Format;
use crate::telemetry::LogFormat;

pub use open::{Connections, Reach, load_policies};
use std::sync::Arc;
use crate::engine::{self, Outcome, Status};
use crate::journal::Journal;
use crate::notify::{Event, Problem};
use crate::policy::{self, Policy};
use crate::report::{print_outcomes, printable, when};
use open::{check_default_region, open_journal, read_journal};

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
    /// A rotation or check failed: exit 1. The message is already printed.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Invalid(_) => 2,
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
        Config::load(self.config.as_deref()).map_err(|e| Failure::Invalid(e.to_string()))
    }
}

/// Runs a command: the one `match` over [`Command`], each arm handing over to the file of its job.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Ctx { policies: cli.policies.clone(), config: cli.config.clone() };
    match cli.command {
        Command::Validate(args) => setup::validate(&ctx.policies, args),
        Command::Plan(args) => plan(&ctx, &args.names, &args.selector.concat(), None, args.format).await,
        Command::Rotate(args) => rotate(&ctx, args).await,
        Command::Status(args) => status(&ctx, args).await,
        Command::History(args) => history(&ctx, args).await,
        Command::Reconcile(args) => reconcile(&ctx, args).await,
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

/// Picks the policies named, or carrying every label of `selector`, or all. Unknown names, and a
/// selector that matches nothing, are usage errors.
fn select<'a>(
    policies: &'a [Policy],
    names: &[String],
    all: bool,
    selector: &[(String, String)],
) -> Result<Vec<&'a Policy>, Failure> {
    let mut selected: Vec<&Policy> = Vec::new();
    for name in names {
        match policies.iter().find(|p| &p.name == name) {
            Some(p) if !selected.iter().any(|s| s.name == p.name) => selected.push(p),
            Some(_) => {}
            None => {
                let known: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
                return Err(Failure::Invalid(format!("unknown policy `{name}`; known: {}", known.join(", "))));
            }
        }
    }
    if names.is_empty() && (all || !selector.is_empty()) {
        selected = policies.iter().collect();
    }
    selected.retain(|p| p.matches(selector));
    if selected.is_empty() && !selector.is_empty() {
        let wanted: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return Err(Failure::Invalid(format!("no policy matches --selector {}", wanted.join(","))));
    }
    Ok(selected)
}

async fn rotate(ctx: &Ctx, args: RotateArgs) -> Result<(), Failure> {
    // Before anything else: nothing is read, opened or created for a request that cannot run.
    if let Some(reason) = &args.reason {
        crate::daemon::check_reason(reason).map_err(|m| Failure::Invalid(format!("--reason: {m}")))?;
    }
    let config = ctx.config()?;
    let policies = load_policies(&ctx.policies)?;
    let selector = args.selector.concat();
    if args.dry_run {
        let names: Vec<String> =
            select(&policies, &args.names, args.all, &selector)?.iter().map(|p| p.name.clone()).collect();
        let compromise = match (args.compromised, args.revoke_first) {
            (false, _) => None,
            (true, false) => Some(crate::plan::Compromise::AfterPromotion),
            (true, true) => Some(crate::plan::Compromise::RevokeFirst),
        };
        return plan(ctx, &names, &[], compromise, args.format).await;
    }
    let mut selected = select(&policies, &args.names, args.all || args.due, &selector)?;
    check_default_region(&config, &policies).await?;
    let journal = open_journal(&config).await?;
    // Every run first finishes what earlier runs left: crashed rotations and revocations whose
    // grace period is over, for every policy (the selected ones resume inside `rotate`).
    let unfinished = journal.unfinished(None).await.map_err(|e| Failure::Other(e.into()))?;
    let others: Vec<&Policy> = policies
        .iter()
        .filter(|p| !selected.iter().any(|s| s.name == p.name) && unfinished.iter().any(|r| r.policy == p.name))
        .collect();
    let loaded: Vec<&Policy> = policies.iter().collect();
    let leftovers: Vec<crate::rotation::Rotation> =
        crate::leftover::leftovers(&unfinished, &loaded).into_iter().cloned().collect();
    // Policies whose destinations a leftover rotation may need to read (same labels).
    let involved: Vec<&Policy> = selected
        .iter()
        .chain(others.iter())
        .copied()
        .chain(policies.iter().filter(|p| {
            leftovers.iter().any(|r| {
                p.destinations
                    .iter()
                    .any(|d| r.destinations.iter().any(|l| crate::policy::canonical_label(l) == d.label()))
            })
        }))
        .collect();
    let engine = Connections::for_policies(&config, &involved, Reach::Policies).await?.engine(&config, journal);
    if let Ok(mut loaded) = engine.options.loaded.write() {
        *loaded = Some(policies.iter().map(|p| p.name.clone()).collect());
    }
    // A wrong URL or credential must fail here, before a mint, not in a rollback's listing.
    let mut kinds: Vec<crate::policy::CredentialKind> = involved.iter().map(|p| p.credential.kind).collect();
    kinds.extend(leftovers.iter().map(|r| r.kind));
    kinds.sort_by_key(|k| k.as_str());
    kinds.dedup();
    // Notifications as `serve` sends them, to the channels the policies name; a scheduled
    // `rotate` job tells the same people. Nothing is sent when no channel is configured.
    let (notifier, deliveries) =
        crate::notify::Notifier::start(config.channels.clone(), Arc::new(crate::metrics::Metrics::default()));
    let told = |p: &Policy| p.notify.iter().any(|c| notifier.knows(c));
    let unusable = engine.toktra.check_management(&kinds).await.err();
    if let Some(e) = &unusable
        && !selected.iter().any(|p| told(p))
    {
        engine.journal.close().await;
        return Err(toktra_unusable(e));
    }
    // What the schedules say, read before anything changes: `--due` rotates only what is due;
    // otherwise a rotation the schedule would not have started is said to be early.
    let now = chrono::Utc::now();
    let schedule =
        crate::plan::plan(&engine.toktra, &engine.clients, Some(&engine.journal), &selected, None, now).await;
    let due_of = |name: &str| schedule.policies.iter().find(|p| p.policy == name).map(|p| p.due.clone());
    // Overdue as the schedule says before the run; told after it unless the run rotated them.
    let overdue: std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>> =
        selected.iter().filter_map(|p| due_of(&p.name).filter(|d| d.overdue).map(|d| (p.name.clone(), d.at))).collect();
    if args.due {
        selected.retain(|p| due_of(&p.name).is_some_and(|d| d.next_start <= now));
    }
    if let Some(e) = unusable {
        // The policies this run would have rotated could not be: said as `serve` says a
        // rotation that could not run.
        let error = format!("the rotation could not run: {}", toktra_unusable(&e));
        let events = selected
            .iter()
            .map(|p| {
                let event =
                    Event::RotationFailed { policy: p.name.clone(), rotation_id: String::new(), error: error.clone() };
                (p.name.clone(), vec![event])
            })
            .collect();
        engine.journal.close().await;
        tell(&notifier, &policies, &overdue, events);
        finish_notifications(&notifier, deliveries, config.shutdown_timeout).await;
        return Err(toktra_unusable(&e));
    }
    if args.due && selected.is_empty() {
        eprintln!("nothing is due now");
    }
    let mut early = Vec::new();
    for policy in &selected {
        let Some(due) = due_of(&policy.name) else { continue };
        if due.at > now + chrono::Duration::hours(1) {
            early.push(format!(
                "`{}` was not due until {} ({} early): rotated because it was asked for",
                policy.name,
                when(due.at),
                crate::status::age((due.at - now).num_seconds())
            ));
        } else if due.next_start > now {
            early.push(format!(
                "`{}` is due but outside its window (it opens {}): rotated because it was asked for",
                policy.name,
                when(due.next_start)
            ));
        }
    }
    let mut outcomes = Vec::new();
    for rotation in leftovers {
        tracing::warn!(policy = %rotation.policy, rotation = %rotation.id, phase = %rotation.phase, "finishing an unfinished rotation of a policy that no longer exists");
        let policy = rotation.policy.clone();
        outcomes.push((policy, engine.finish_leftover(rotation, &loaded).await.map(|o| vec![o])));
    }
    for policy in &others {
        outcomes.push((policy.name.clone(), engine.resume(policy).await));
    }
    let request = engine::Request {
        reason: args.reason,
        compromised: args.compromised,
        revoke_first: args.revoke_first,
        ..Default::default()
    };
    // With `--due`, each policy was chosen for what the journal said when the schedule was
    // read; one that another process rotated since is left alone.
    let work: Vec<(&Policy, engine::Request)> = selected
        .iter()
        .map(|p| {
            let mut request = request.clone();
            if args.due {
                request.decided_after =
                    schedule.policies.iter().find(|s| s.policy == p.name).map(|s| s.latest_rotation.clone());
            }
            (*p, request)
        })
        .collect();
    let concurrency = args.concurrency.map(usize::from).unwrap_or(config.concurrency);
    outcomes.extend(engine.rotate_many(&work, concurrency).await);
    let overdue_ended = overdue_ended(&engine.journal, &policies, &overdue, chrono::Utc::now()).await;
    engine.journal.close().await;
    let stats = engine.toktra.stats();
    let by_call = |call: &str| stats.management_by_call.get(call).copied().unwrap_or(0);
    tracing::info!(
        requests = stats.requests,
        management_calls = stats.management_calls,
        management_creates = by_call("create"),
        management_revokes = by_call("revoke"),
        // The run's own: the endpoint check, listings, the management token.
        management_per_run = by_call("check") + by_call("list") + by_call("token"),
        probe_calls = stats.probe_calls,
        shared_listings = stats.shared_listings,
        retries = stats.retries,
        rate_limit_waits = stats.rate_limit_waits,
        paced_waits = stats.paced_waits,
        token_renewals = stats.token_renewals,
        "toktra calls of this run"
    );
    let events = outcomes
        .iter()
        .map(|(policy, result)| {
            let mut events = match result {
                Ok(list) => crate::notify::of_run(list),
                // Another process is rotating it and tells of its own outcome.
                Err(engine::Error::Busy { .. }) => Vec::new(),
                Err(e) => vec![Event::RotationFailed {
                    policy: policy.clone(),
                    rotation_id: String::new(),
                    error: format!("the rotation could not run: {e}"),
                }],
            };
            // The overdue state ended without this run's recovery saying so (a resumed
            // rotation promoted, or another process rotated the policy meanwhile).
            let said = events
                .iter()
                .any(|e| matches!(e, Event::Recovered { cleared, .. } if cleared.contains(&Problem::Overdue)));
            if overdue_ended.contains(policy) && !said {
                events.push(Event::Recovered { policy: policy.clone(), cleared: vec![Problem::Overdue] });
            }
            (policy.clone(), events)
        })
        .collect();
    let overdue = overdue.into_iter().filter(|(name, _)| !overdue_ended.contains(name)).collect();
    tell(&notifier, &policies, &overdue, events);
    print_outcomes(&outcomes, args.format);
    for note in &early {
        eprintln!("note: {note}");
    }
    finish_notifications(&notifier, deliveries, config.shutdown_timeout).await;
    check_outcomes(&outcomes)
}

/// Which of the `overdue` policies no longer are, judged from the journal's latest promotion
/// now, as a later pass of `serve` would: a rotation this run promoted (a resumed one included)
/// or another process promoted meanwhile ends it. When the journal cannot tell, it still is.
async fn overdue_ended(
    journal: &Journal,
    policies: &[Policy],
    overdue: &std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> std::collections::BTreeSet<String> {
    let mut ended = std::collections::BTreeSet::new();
    for name in overdue.keys() {
        let Some(policy) = policies.iter().find(|p| &p.name == name) else { continue };
        let history = match journal.history(Some(name), 100).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(policy = %name, error = %e, "cannot read the journal to tell whether the policy is still overdue");
                continue;
            }
        };
        let promoted = history.iter().find(|r| r.phase.is_promoted()).and_then(|r| r.promoted_at);
        if promoted.is_some_and(|at| {
            !crate::schedule::due(name, &policy.schedule, Some((at, crate::schedule::Basis::Journal)), now).overdue
        }) {
            ended.insert(name.clone());
        }
    }
    ended
}

fn toktra_unusable(e: &crate::toktra::Error) -> Failure {
    let message = format!("toktra is not usable with this configuration; nothing was changed: {e}");
    if e.is_transient() { Failure::Failed(message) } else { Failure::Invalid(message) }
}

/// Queues what a `rotate` run tells each policy's channels: that it is overdue (`overdue`,
/// judged after the run), then the events of its run.
fn tell(
    notifier: &crate::notify::Notifier,
    policies: &[Policy],
    overdue: &std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>>,
    events: Vec<(String, Vec<Event>)>,
) {
    let channels = |name: &str| policies.iter().find(|p| p.name == name).map(|p| p.notify.clone());
    for (name, due_since) in overdue {
        if let Some(channels) = channels(name) {
            notifier.send(&channels, Event::PolicyOverdue { policy: name.clone(), due_since: *due_since });
        }
    }
    for (name, events) in events {
        // A deleted policy's leftover work has no channels.
        let Some(channels) = channels(&name) else { continue };
        for event in events {
            notifier.send(&channels, event);
        }
    }
}

/// Waits for the channels to take what was queued, at most `timeout` (`shutdown_timeout`), so
/// a job does not exit with its news undelivered; then stops the delivery tasks.
async fn finish_notifications(
    notifier: &crate::notify::Notifier,
    deliveries: Vec<tokio::task::JoinHandle<()>>,
    timeout: std::time::Duration,
) {
    let left = notifier.drain(timeout).await;
    if left > 0 {
        tracing::error!(undelivered = left, "notifications not delivered before exit");
    }
    for task in deliveries {
        task.abort();
    }
}

/// Exit 1 when any rotation failed or could not run.
pub fn check_outcomes(outcomes: &[(String, Result<Vec<Outcome>, engine::Error>)]) -> Result<(), Failure> {
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|(_, r)| match r {
            // The last outcome is where the policy stands (an earlier one may be a resumed
            // rotation). A resumed rotation that finished rolling back failed in an earlier run,
            // which reported it; finishing its clean-up is not a new failure.
            Ok(list) => list.last().is_some_and(|o| {
                o.status == Status::Incomplete || o.held || (o.status == Status::Failed && !o.resumed)
            }),
            Err(_) => true,
        })
        .map(|(p, _)| p.as_str())
        .collect();
    let outage: Vec<&str> = outcomes
        .iter()
        .filter(|(_, r)| {
            r.as_ref().is_ok_and(|list| {
                list.last()
                    .is_some_and(|o| o.compromise.as_ref().is_some_and(|c| c.outage_accepted) && !o.phase.is_promoted())
            })
        })
        .map(|(p, _)| p.as_str())
        .collect();
    if !outage.is_empty() {
        return Err(Failure::Failed(format!(
            "CONSUMERS OF {} HAVE NO WORKING CREDENTIAL: the old credentials were revoked first and no new one \
             is promoted yet; run the same `rotator rotate` again (it resumes) and see `rotator status`",
            outage.join(", ")
        )));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!("rotation failed or revocation held for: {}", failed.join(", "))))
    }
}

async fn plan(
    ctx: &Ctx,
    names: &[String],
    selector: &[(String, String)],
    compromise: Option<crate::plan::Compromise>,
    format: Format,
) -> Result<(), Failure> {
    let config = ctx.config()?;
    let policies = load_policies(&ctx.policies)?;
    let selected = select(&policies, names, names.is_empty(), selector)?;
    check_default_region(&config, &policies).await?;
    let connections = Connections::for_policies(&config, &selected, Reach::Policies).await?;
    let journal = Journal::open_read_only(&config.database_url).await.map_err(|e| Failure::Other(e.into()))?;
    let plan = crate::plan::plan(
        &connections.toktra,
        &connections.stores,
        journal.as_ref(),
        &selected,
        compromise,
        chrono::Utc::now(),
    )
    .await;
    if let Some(j) = journal {
        j.close().await;
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&plan).unwrap_or_default()),
        Format::Text => print_plan(&plan),
    }
    if plan.ok() { Ok(()) } else { Err(Failure::Failed("a preflight check failed; see above".into())) }
}

fn print_plan(plan: &crate::plan::Plan) {
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    for c in &plan.management {
        println!("{} {}: {}", mark(c.ok), c.target, c.detail);
    }
    for p in &plan.policies {
        let due = if p.due.overdue {
            "OVERDUE".to_string()
        } else if p.due.next_start <= plan.at {
            "due now".to_string()
        } else {
            format!("next {}", p.due.next_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        };
        println!(
            "\n{} ({}): current {}, age {}, {due}",
            p.policy,
            p.kind,
            p.current_credential.as_deref().unwrap_or("none"),
            p.credential_age_seconds.map(crate::status::age).unwrap_or_else(|| "-".into())
        );
        for why in &p.due.why {
            println!("    why:   {why}");
        }
        if let Some(f) = &p.in_flight {
            println!("    note:  unfinished rotation {f} is resumed first");
        }
        for r in &p.pending_revocations {
            println!("    note:  awaiting revocation {r}");
        }
        for (i, step) in p.steps.iter().enumerate() {
            println!("    {}.    {step}", i + 1);
        }
        for c in &p.checks {
            println!("    {} {}: {}", mark(c.ok), c.target, c.detail);
        }
    }
    let n = plan.policies.len();
    let due = plan.policies.iter().filter(|p| p.due.next_start <= plan.at).count();
    let overdue = plan.policies.iter().filter(|p| p.due.overdue).count();
    let failed =
        plan.management.iter().chain(plan.policies.iter().flat_map(|p| p.checks.iter())).filter(|c| !c.ok).count();
    println!(
        "\n{n} {}: {due} due now ({overdue} overdue), {} later; {}",
        if n == 1 { "policy" } else { "policies" },
        n - due,
        match failed {
            0 => "every preflight check passed".to_string(),
            1 => "1 preflight check FAILED".to_string(),
            f => format!("{f} preflight checks FAILED"),
        }
    );
}

async fn status(ctx: &Ctx, args: FormatArgs) -> Result<(), Failure> {
    let config = ctx.config()?;
    let policies = load_policies(&ctx.policies)?;
    let journal = read_journal(&config).await?;
    let history = journal.pass_view().await.map_err(|e| Failure::Other(e.into()))?;
    journal.close().await;
    let now = chrono::Utc::now();
    let rows = crate::status::status(&policies, &history, now);
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default()),
        Format::Text => {
            println!(
                "{:<24} {:<20} {:<26} {:>8}  PENDING REVOCATION / LAST ERROR",
                "POLICY", "STATE", "CURRENT CREDENTIAL", "AGE"
            );
            for r in &rows {
                println!(
                    "{:<24} {:<20} {:<26} {:>8}",
                    r.policy,
                    r.state,
                    r.current_credential.as_deref().unwrap_or("-"),
                    r.age_seconds.map(crate::status::age).unwrap_or_else(|| "-".into())
                );
                for p in &r.pending_revocations {
                    println!("{:<24}   revoke [{}]: {}", "", p.credentials.join(", "), p.why);
                }
                if let Some(f) = &r.in_flight {
                    println!("{:<24}   in flight: {f}", "");
                }
                if let Some(e) = &r.last_error {
                    println!("{:<24}   last error: {e}", "");
                }
            }
        }
    }
    Ok(())
}

async fn history(ctx: &Ctx, args: HistoryArgs) -> Result<(), Failure> {
    let config = ctx.config()?;
    let journal = read_journal(&config).await?;
    let other = |e: crate::journal::Error| Failure::Other(e.into());
    let rotations = journal.history(args.name.as_deref(), args.limit).await.map_err(other)?;
    // A name neither loaded nor in the journal is a typo, not an empty history. (A policy that
    // was deleted keeps its history; the policy files are read only to check the name.)
    if let Some(name) = &args.name
        && rotations.is_empty()
    {
        let known: Vec<String> =
            policy::load_dir(&ctx.policies).map(|p| p.into_iter().map(|p| p.name).collect()).unwrap_or_default();
        if !known.contains(name) {
            journal.close().await;
            return Err(Failure::Invalid(format!(
                "unknown policy `{name}`: not in {} and never in the journal; known: {}",
                ctx.policies.display(),
                if known.is_empty() { "(none)".to_string() } else { known.join(", ") }
            )));
        }
    }
    let mut steps = Vec::new();
    if args.steps {
        for r in &rotations {
            steps.push(journal.steps(&r.id).await.map_err(other)?);
        }
    }
    journal.close().await;
    match args.format {
        Format::Json => {
            let rows: Vec<_> = rotations
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    if let Some(s) = steps.get(i) {
                        v["steps"] = serde_json::to_value(s).unwrap_or_default();
                    }
                    v
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        }
        Format::Text => {
            // Columns as wide as what they hold (policy names go up to 63 characters).
            let width =
                |values: &mut dyn Iterator<Item = usize>, header: &str| values.max().unwrap_or(0).max(header.len());
            let pw = width(&mut rotations.iter().map(|r| r.policy.len()), "POLICY");
            let cw = width(
                &mut rotations.iter().map(|r| r.new_credential_id.as_deref().unwrap_or("-").len()),
                "NEW CREDENTIAL",
            );
            println!(
                "{:<20} {:<pw$} {:<36} {:<12} {:<cw$} REASON",
                "STARTED", "POLICY", "ROTATION", "PHASE", "NEW CREDENTIAL"
            );
            for (i, r) in rotations.iter().enumerate() {
                println!(
                    "{:<20} {:<pw$} {:<36} {:<12} {:<cw$} {}{}",
                    when(r.started_at),
                    r.policy,
                    r.id,
                    r.phase,
                    r.new_credential_id.as_deref().unwrap_or("-"),
                    printable(r.reason.as_deref().unwrap_or("-")),
                    if r.compromised { " [compromised]" } else { "" }
                );
                if !r.old_credentials.is_empty() {
                    println!("{:<20}   replaced [{}]", "", r.old_credentials.join(", "));
                }
                if let Some(e) = &r.error {
                    println!("{:<20}   error: {}", "", printable(e));
                }
                for s in steps.get(i).into_iter().flatten() {
                    println!("{:<20}   {}  {:<12} {:<7} {}", "", when(s.at), s.step, s.status, printable(&s.detail));
                }
            }
        }
    }
    Ok(())
}

async fn reconcile(ctx: &Ctx, args: ReconcileArgs) -> Result<(), Failure> {
    let config = ctx.config()?;
    let policies = load_policies(&ctx.policies)?;
    let all: Vec<&Policy> = policies.iter().collect();
    let journal = open_journal(&config).await?;
    let engine = Connections::for_policies(&config, &all, Reach::Policies).await?.engine(&config, journal);
    let report = engine.reconcile(&all, args.fix).await.map_err(|e| Failure::Other(e.into()))?;
    engine.journal.close().await;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
        Format::Text => {
            if report.findings.is_empty() {
                println!("no drift, no orphans, no stale staged values");
            }
            for f in &report.findings {
                println!("{:<14} {:<24} {}", f.kind, f.policy, f.detail);
                if let Some(next) = f.next_step.as_ref().filter(|_| !f.fixed) {
                    println!("{:<14} {:<24}   next: {next}", "", "");
                }
            }
            if !report.unmanaged_ids.is_empty() {
                println!("left alone (not named like a mint of any policy): {}", report.unmanaged_ids.join(", "));
            }
        }
    }
    match report.open() {
        0 => Ok(()),
        n => {
            let fixable = report.findings.iter().any(|f| !f.fixed && f.fixable());
            Err(Failure::Failed(format!(
                "{n} finding(s) need attention{}",
                if !args.fix && fixable { " (--fix repairs orphans, stale staging and leftovers)" } else { "" }
            )))
        }
    }
}
