//! `rotator rotate`: which policies a request names (`select`, shared with `plan`), the run
//! itself (leftover and unfinished rotations first, then the selected policies through
//! `Engine::rotate_many`), what it tells the policies' notification channels, and its exit code
//! (`check_outcomes`).

use std::sync::Arc;

use super::inspect::plan;
use super::open::{check_default_region, load_policies, open_journal, select};
use super::{Ctx, Failure, RotateArgs};
use crate::connect::{Connections, Reach};
use crate::engine::{self, Outcome, Status};
use crate::journal::Journal;
use crate::notify::{Event, Problem};
use crate::policy::Policy;
use crate::report::{print_outcomes, when};

pub(super) async fn rotate(ctx: &Ctx, args: RotateArgs) -> Result<(), Failure> {
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
