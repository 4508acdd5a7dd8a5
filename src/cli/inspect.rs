//! The commands that report: `plan` (and `rotate --dry-run`) asks Toktra and the destinations
//! what a rotation would do and changes nothing, `status` and `history` read the journal (opened
//! read-only, never created), and `reconcile` compares Toktra, the destinations and the journal
//! (changing something only with `--fix`: it revokes orphans and discards stale staged values).

use super::open::select;
use super::open::{check_default_region, load_policies, open_journal, read_journal};
use super::{Ctx, Failure, FormatArgs, HistoryArgs, ReconcileArgs};
use crate::connect::{Connections, Reach};
use crate::journal::Journal;
use crate::policy::{self, Policy};
use crate::report::{Format, printable, when};

pub(super) async fn plan(
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

pub(super) async fn status(ctx: &Ctx, args: FormatArgs) -> Result<(), Failure> {
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

pub(super) async fn history(ctx: &Ctx, args: HistoryArgs) -> Result<(), Failure> {
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

pub(super) async fn reconcile(ctx: &Ctx, args: ReconcileArgs) -> Result<(), Failure> {
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
