//! The reconciler's loop. `run` wakes on the ticker (a tokio-cron-scheduler job), a request or a
//! reload; each `pass` reads the journal once, has [`plan`] decide the whole pass's jobs and
//! starts them under the concurrency semaphore, one task per policy, marked running by a guard
//! that a panic drops too. Also here: dating a credential the journal does not know (read from
//! the destinations and kept, after the pass's jobs started, so requests never wait for it; a
//! date learnt wakes the next pass), overdue alerts, running the jobs (including unfinished rotations of
//! policies that are gone, see `leftover`), holding back a policy that failed or waits, and the
//! hourly orphan scan, which shutdown waits for within its deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::OwnedSemaphorePermit;

use crate::engine::{self, Status};
use crate::journal;
use crate::notify::Event;
use crate::policy::Policy;
use crate::rotation::Rotation;
use crate::schedule::{self, Basis, Due};
use crate::store::{Handle, Store};

use super::Daemon;
use super::decide::{Dated, Hold, HoldReason, Inputs, Job, Planned, plan, requested};

/// How often the service looks for orphans (and at start).
const RECONCILE_EVERY: Duration = Duration::from_secs(3_600);

impl Daemon {
    /// Runs the reconciler until `stop`, then waits up to `timeout` for the rotations in flight.
    pub async fn run(self: Arc<Self>, tick: Duration, timeout: Duration) {
        // The trigger: a tokio-cron-scheduler job on a seconds-granular schedule that only wakes
        // the loop. What is due is decided by our own schedule functions, not by the scheduler.
        let scheduler = self.clone().start_ticker(tick).await;
        let mut stopping = self.stopping.subscribe();
        let mut last_reconcile: Option<std::time::Instant> = None;
        // Orphan scans in flight; shutdown waits for them within its bound.
        let mut scans = tokio::task::JoinSet::new();
        loop {
            if self.is_stopping() {
                break;
            }
            self.clone().pass().await;
            if last_reconcile.is_none_or(|t| t.elapsed() >= RECONCILE_EVERY) {
                last_reconcile = Some(std::time::Instant::now());
                // One at a time: a scan still running when the next is due is not doubled.
                while scans.try_join_next().is_some() {}
                if scans.is_empty() {
                    scans.spawn(self.clone().look_for_orphans());
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = stopping.changed() => {}
                // A fallback in case the scheduler could not start.
                _ = tokio::time::sleep(tick * 2) => {}
            }
        }
        if let Some(mut scheduler) = scheduler {
            let _ = scheduler.shutdown().await;
        }
        // Every permit back means every rotation task has ended; the orphan scan ends too (it
        // only reads), or is cut off at the same deadline.
        let deadline = tokio::time::Instant::now() + timeout;
        if tokio::time::timeout_at(deadline, async { while scans.join_next().await.is_some() {} }).await.is_err() {
            scans.abort_all();
        }
        match tokio::time::timeout_at(deadline, self.semaphore.acquire_many(self.concurrency as u32)).await {
            Ok(_) => tracing::info!("reconciler stopped; no rotation in flight"),
            Err(_) => {
                tracing::warn!("shutdown timeout: rotations still in flight are left to be resumed by the next start")
            }
        }
        // Requests not recorded as rotations stay in the journal for the next start (or another
        // replica): say so.
        if let Ok(left) = self.engine.journal.open_requests().await {
            for q in &left {
                tracing::info!(policy = %q.policy, request = %q.id, "stopping: a requested rotation is left queued in the journal");
            }
        }
    }

    async fn start_ticker(self: Arc<Self>, tick: Duration) -> Option<tokio_cron_scheduler::JobScheduler> {
        let daemon = self.clone();
        let scheduler = tokio_cron_scheduler::JobScheduler::new().await.ok()?;
        let job = tokio_cron_scheduler::Job::new_repeated_async(tick.max(Duration::from_secs(1)), move |_, _| {
            let daemon = daemon.clone();
            Box::pin(async move { daemon.wake.notify_one() })
        })
        .ok()?;
        scheduler.add(job).await.ok()?;
        scheduler.start().await.ok()?;
        Some(scheduler)
    }

    /// One reconciliation pass: reads the journal, has [`plan`] decide the jobs (dating first
    /// the credentials it needs), raises or resolves overdue alerts, and starts each job in a
    /// task of its own while slots last.
    pub async fn pass(self: Arc<Self>) {
        if self.is_stopping() {
            return;
        }
        let now = Utc::now();
        let read = async {
            // Every pass reads the requests from the journal: whichever process accepted them.
            Ok::<_, journal::Error>((
                self.engine.journal.pass_view().await?,
                self.engine.journal.open_requests().await?,
            ))
        };
        let (history, requests) = match read.await {
            Ok(read) => {
                self.healthy.store(true, Ordering::Relaxed);
                read
            }
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "journal unreachable; skipping this pass");
                return;
            }
        };
        let policies = self.policies();
        // Planned on a copy of what the daemon keeps, so the lock is held for the copy only;
        // a claim checks `running` again. Guessed dates are for one pass: dated again now.
        let (holds, running, dated) = {
            let mut state = self.state();
            state.basis.retain(|_, dated| dated.known);
            (state.holds.clone(), state.running.clone(), state.basis.clone())
        };
        let plan = plan(&Inputs {
            policies: &policies,
            history: &history,
            requests: &requests,
            holds: &holds,
            running: &running,
            dated: &dated,
            now,
        });
        self.log_elsewhere(&plan.elsewhere);
        for (policy, due) in &plan.due {
            self.alert_overdue(policy, due);
        }
        // What is planned starts before any credential is dated (a destination or Toktra may be
        // slow): requests and unfinished work never wait for it.
        let undated: Vec<String> = plan.undated.iter().map(|p| p.name.clone()).collect();
        self.start(plan.jobs, &policies).await;
        // The view dates what the plan could not (reading destinations and Toktra, unless
        // stopping); a policy it learnt the date of may be due: plan it at once, not a tick
        // later. (A guess, from a destination that could not be read, wakes nothing: it is tried
        // again on the next pass.)
        let view = self.view(history, now).await;
        let learnt = {
            let state = self.state();
            undated.iter().any(|name| state.basis.get(name).is_some_and(|dated| dated.known))
        };
        if learnt {
            self.wake.notify_one();
        }
        self.state().last_pass = Some(Arc::new(view));
        release_free_memory();
        self.metrics.pass_completed();
    }

    /// Starts each job in a task of its own, in order, while slots last.
    async fn start(self: &Arc<Self>, jobs: Vec<Planned<'_>>, policies: &Arc<Vec<Policy>>) {
        for job in jobs {
            if self.is_stopping() {
                break;
            }
            let Ok(permit) = self.semaphore.clone().try_acquire_owned() else {
                // At the concurrency limit: the next pass picks it up.
                break;
            };
            // Claimed here, released by the guard when the task ends (or panics).
            if !self.state().running.insert(job.policy().to_string()) {
                continue;
            }
            let guard = Running { daemon: self.clone(), policy: job.policy().to_string() };
            match job {
                Planned::Policy(policy, mut work) => {
                    // A request that arrived since the journal was read replaces a scheduled
                    // rotation, so it is not followed by a second one.
                    if let Job::Rotate(scheduled) = &work
                        && scheduled.id.is_none()
                        && let Ok(open) = self.engine.journal.open_requests().await
                        && let Some(q) = open.into_iter().find(|r| r.policy == policy.name)
                    {
                        work = requested(q);
                    }
                    tokio::spawn(self.clone().run_job(policy.clone(), work, guard, permit));
                }
                Planned::Leftover(rotation) => {
                    tokio::spawn(self.clone().finish_leftover(rotation.clone(), policies.clone(), guard, permit));
                }
            }
        }
    }

    /// Keeps the open requests of policies this set lacks, logging each new one once.
    fn log_elsewhere(&self, elsewhere: &[&journal::Request]) {
        let mut state = self.state();
        state.elsewhere.retain(|id| elsewhere.iter().any(|q| &q.id == id));
        for q in elsewhere {
            if state.elsewhere.insert(q.id.clone()) {
                tracing::warn!(policy = %q.policy, request = %q.id, compromised = q.compromised, "a requested rotation waits for a policy this process does not have (removed or renamed here, or not yet added); a process that has it runs it");
            }
        }
    }

    /// Runs a planned job of a loaded policy; the guard and the permit go when it ends.
    async fn run_job(self: Arc<Self>, policy: Policy, work: Job, guard: Running, permit: OwnedSemaphorePermit) {
        // Claimed before the stop was seen, not begun: leave it to the next start.
        if self.is_stopping() {
            tracing::info!(policy = %policy.name, "stopping: not starting the work claimed for this policy");
            return;
        }
        if let Job::Rotate(engine::Request { id: Some(id), .. }) = &work
            && let Err(e) = self.engine.journal.start_request(id).await
        {
            tracing::warn!(policy = %policy.name, request = %id, error = %e, "could not mark the request started");
        }
        self.execute(&policy, work).await;
        drop(guard);
        drop(permit);
        // A request of another loaded policy may be waiting for a slot (one of this policy that
        // could not run now waits for the next tick rather than spinning, and one of a policy
        // this set lacks waits for another process).
        let loaded = self.policies();
        let waiting = |r: &journal::Request| r.policy != policy.name && loaded.iter().any(|p| p.name == r.policy);
        if self.engine.journal.open_requests().await.is_ok_and(|open| open.iter().any(waiting)) {
            self.wake.notify_one();
        }
    }

    /// Unfinished rotations of policies that are gone (deleted, renamed) still revoke after
    /// their grace and roll back unpromoted mints; see `leftover`.
    async fn finish_leftover(
        self: Arc<Self>,
        rotation: Rotation,
        policies: Arc<Vec<Policy>>,
        guard: Running,
        permit: OwnedSemaphorePermit,
    ) {
        if self.is_stopping() {
            return;
        }
        let name = rotation.policy.clone();
        let loaded: Vec<&Policy> = policies.iter().collect();
        let now = Utc::now();
        match self.engine.finish_leftover(rotation, &loaded).await {
            Ok(outcome) if outcome.phase.is_terminal() => {
                tracing::info!(policy = %name, rotation = %outcome.rotation_id, phase = %outcome.phase, "finished the rotation of a policy that no longer exists");
            }
            Ok(outcome) => {
                // Waiting (grace, held) or stuck: look again later, not on every pass.
                tracing::warn!(policy = %name, rotation = %outcome.rotation_id, waiting = ?outcome.waiting, error = ?outcome.error, "the rotation of a policy that no longer exists is unfinished");
                self.back_off(&name, now);
            }
            Err(e) => {
                tracing::error!(policy = %name, error = %e, "could not finish the rotation of a policy that no longer exists");
                self.back_off(&name, now);
            }
        }
        drop(guard);
        drop(permit);
    }

    /// Raises the overdue alert of a policy once per due time, and resolves it when the policy
    /// is no longer overdue (rotated, or its schedule changed).
    fn alert_overdue(&self, policy: &Policy, due: &Due) {
        if !due.overdue {
            if self.state().overdue_sent.remove(&policy.name).is_some() {
                self.notifier.send(
                    &policy.notify,
                    Event::Recovered { policy: policy.name.clone(), cleared: vec![crate::notify::Problem::Overdue] },
                );
            }
            return;
        }
        let first = self.state().overdue_sent.insert(policy.name.clone(), due.at) != Some(due.at);
        if first {
            tracing::warn!(policy = %policy.name, due = %due.at, "policy is overdue");
            self.notifier.send(&policy.notify, Event::PolicyOverdue { policy: policy.name.clone(), due_since: due.at });
        }
    }

    /// When `policy` is due: from the journal's last promotion, else from its current
    /// credential's age (read from the destinations and Toktra when the passes have not, and
    /// kept, a guess for one pass only).
    pub async fn due(&self, policy: &Policy, rotations: &[&Rotation], now: DateTime<Utc>) -> Due {
        let promoted = rotations.iter().find(|r| r.phase.is_promoted()).and_then(|r| r.promoted_at);
        let last = match promoted {
            Some(at) => Some((at, Basis::Journal)),
            None => {
                let cached = self.state().basis.get(&policy.name).copied();
                match cached {
                    Some(dated) => dated.since,
                    // Stopping: no destination is read any more (a slow one would hold the
                    // shutdown); assumed fresh, as when it cannot be read.
                    None if self.is_stopping() => Some((now, Basis::Credential)),
                    None => {
                        let dated = self.date(policy, now).await;
                        self.state().basis.insert(policy.name.clone(), dated);
                        dated.since
                    }
                }
            }
        };
        schedule::due(&policy.name, &policy.schedule, last, now)
    }

    /// When the policy's current credential came to be, and whether that is known (rather than
    /// assumed to be now because something could not be read).
    async fn date(&self, policy: &Policy, now: DateTime<Utc>) -> Dated {
        for spec in &policy.destinations {
            let Ok(destination) = Handle::new(spec, policy.credential.kind, &self.engine.clients) else {
                continue;
            };
            match destination.current().await {
                Ok(Some(record)) => {
                    let created = match record.rotated_at {
                        Some(_) => None,
                        // One listing, shared by the policies of this pass that need it.
                        None => self
                            .engine
                            .toktra
                            .list_since(
                                policy.credential.kind,
                                std::time::Instant::now()
                                    .checked_sub(Duration::from_secs(60))
                                    .unwrap_or_else(std::time::Instant::now),
                            )
                            .await
                            .ok()
                            .and_then(|l| l.into_iter().find(|c| c.id == record.id))
                            .and_then(|c| c.created_at),
                    };
                    let (since, known) = schedule::credential_since(record.rotated_at, created, now);
                    return Dated { since: Some(since), known };
                }
                Ok(None) => {}
                // Unreadable now: assume a fresh credential rather than rotating on a guess.
                Err(e) => {
                    tracing::warn!(policy = %policy.name, error = %e, "cannot read the destination to date its credential");
                    return Dated { since: Some((now, Basis::Credential)), known: false };
                }
            }
        }
        Dated { since: None, known: true }
    }

    async fn execute(&self, policy: &Policy, work: Job) {
        let (result, requested) = match work {
            Job::Rotate(request) => {
                let id = request.id.clone();
                (self.engine.rotate(policy, &request).await, id)
            }
            Job::Resume => (self.engine.resume(policy).await, None),
        };
        let now = Utc::now();
        match result {
            Ok(outcomes) => {
                // A request is done once its rotation is recorded (the journal marks it so in
                // the same transaction); otherwise (an unfinished rotation could not be
                // completed first, a stop came first) it stays queued for a later pass.
                self.state().basis.remove(&policy.name);
                let last = outcomes.last();
                // A run another process left (it crashed, or lost its lease) and that this one
                // wound up as failed is not a failure of the policy: the next pass rotates it
                // afresh instead of backing off.
                let failed = last.is_some_and(|o| {
                    !(o.interrupted || (o.resumed && o.status == Status::Failed))
                        && matches!(o.status, Status::Failed | Status::Incomplete)
                });
                let waiting = last.is_some_and(|o| o.status == Status::AwaitingRevocation && o.waiting.is_some());
                if failed {
                    self.back_off(&policy.name, now);
                } else if waiting {
                    // Grace or idleness: look again on a later tick, not on every wake-up.
                    self.hold(
                        &policy.name,
                        now + chrono::Duration::from_std(self.tick).unwrap_or_default(),
                        HoldReason::Waiting,
                    );
                } else {
                    let mut state = self.state();
                    state.holds.remove(&policy.name);
                    state.failure_sent.retain(|(p, _, _)| p != &policy.name);
                }
                for outcome in &outcomes {
                    self.report(policy, outcome);
                }
                // Said after every such outcome, not only after a failure this process saw: an
                // alert may have been raised before a restart, by another replica or by a
                // `rotate` job (a resolve of an alert that is not open does nothing).
                if let Some(event) = outcomes.last().and_then(crate::notify::recovered) {
                    self.notifier.send(&policy.notify, event);
                }
            }
            // Busy: another process holds the policy; look again when its lease may be over.
            Err(engine::Error::Busy { holder, until, .. }) => {
                tracing::info!(policy = %policy.name, holder, "policy busy elsewhere; trying again later");
                self.hold(&policy.name, until.max(now + chrono::Duration::seconds(5)), HoldReason::Busy);
            }
            Err(e) => {
                tracing::error!(policy = %policy.name, error = %e, "rotation could not run");
                self.back_off(&policy.name, now);
                // Said once per policy, request and error, like a failed rotation.
                let rotation_id = requested.unwrap_or_default();
                let error = format!("the rotation could not run: {e}");
                let first = self.state().failure_sent.insert((policy.name.clone(), rotation_id.clone(), error.clone()));
                if first {
                    self.notifier.send(
                        &policy.notify,
                        Event::RotationFailed { policy: policy.name.clone(), rotation_id, error },
                    );
                }
            }
        }
    }

    fn hold(&self, policy: &str, until: DateTime<Utc>, why: HoldReason) {
        let mut state = self.state();
        let failures = state.holds.get(policy).map(|h| h.failures).unwrap_or(0);
        state.holds.insert(policy.to_string(), Hold { failures, until, why });
    }

    fn back_off(&self, policy: &str, now: DateTime<Utc>) {
        let mut state = self.state();
        let failures = state.holds.get(policy).map(|h| h.failures).unwrap_or(0) + 1;
        let wait =
            crate::backoff::Backoff::new(Duration::from_secs(60), Duration::from_secs(3_600)).delay(failures - 1);
        state.holds.insert(
            policy.to_string(),
            Hold {
                failures,
                until: now + chrono::Duration::from_std(wait).unwrap_or_default(),
                why: HoldReason::Failed,
            },
        );
        drop(state);
        tracing::warn!(policy, failures, retry_in = %crate::duration::format(wait), "rotation failed; backing off");
    }

    /// Compares Toktra, destinations and journal (changing nothing) and notifies orphans.
    async fn look_for_orphans(self: Arc<Self>) {
        let policies = self.policies();
        let refs: Vec<&Policy> = policies.iter().collect();
        match self.engine.reconcile(&refs, false).await {
            Ok(report) => {
                for finding in report.findings.iter().filter(|f| f.kind == crate::reconcile::FindingKind::Orphan) {
                    let credential = finding.credential.clone().unwrap_or_default();
                    let first = self.state().orphan_sent.insert((finding.policy.clone(), credential));
                    if !first {
                        continue;
                    }
                    tracing::warn!(policy = %finding.policy, detail = %finding.detail, "orphaned credential found");
                    if let Some(policy) = policies.iter().find(|p| p.name == finding.policy) {
                        self.notifier.send(
                            &policy.notify,
                            Event::OrphanFound { policy: policy.name.clone(), detail: finding.detail.clone() },
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reconcile failed"),
        }
    }
}

/// Keeps a policy marked as running while its task lives, even if the task panics.
struct Running {
    daemon: Arc<Daemon>,
    policy: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.daemon.state().running.remove(&self.policy);
    }
}

/// Hands heap memory freed by a pass (its journal rows, the view it replaced) back to the OS.
/// glibc keeps freed memory in per-thread arenas, so without this a service with many policies
/// sits at the high-water mark of its busiest pass (about 40 MiB more with 10,000 policies, see
/// `benches/daemon.rs`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: `malloc_trim` takes no pointers and only returns unused pages of the allocator's
    // own heap to the kernel; it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}
