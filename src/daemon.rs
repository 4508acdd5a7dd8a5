//! `rotator serve`'s reconciler: one idempotent pass that takes no input, decides from the
//! policies, the journal and the time what work is due (scheduled rotations, revocations whose
//! grace ended, unfinished rotations, on-demand requests) and advances it under a global
//! concurrency limit. A tokio-cron-scheduler job wakes it on a tick; an on-demand request only
//! records itself and wakes it, so scheduled and on-demand rotations run the same code path.
//! SIGHUP swaps in a new policy set only if it is valid as a whole; shutdown lets the steps in
//! flight finish and leaves the rest to be resumed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore, watch};

use crate::config::Config;
use crate::engine::{self, Engine, Outcome, Status};
use crate::journal::Rotation;
use crate::metrics::{Metrics, Snapshot};
use crate::notify::{Event, Notifier};
use crate::policy::{self, Policy};
use crate::rotation::Phase;
use crate::schedule::{self, Basis, Due};
use crate::store::{Destination, Store};

/// When a credential came to be, and how that is known.
type Since = (DateTime<Utc>, Basis);

/// How often the service looks for orphans (and at start).
const RECONCILE_EVERY: Duration = Duration::from_secs(3_600);

/// An on-demand rotation waiting for the next pass.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Queued {
    pub id: String,
    pub policy: String,
    pub reason: Option<String>,
    pub compromised: bool,
    pub at: DateTime<Utc>,
}

/// Why an on-demand request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    UnknownPolicy,
    InFlight(String),
    ShuttingDown,
}

/// State shared by the reconciler, the HTTP API and the signal handlers.
pub struct Daemon {
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub notifier: Notifier,
    policies_dir: PathBuf,
    /// The policy set in force; replaced whole by a valid reload.
    policies: RwLock<Arc<Vec<Policy>>>,
    /// On-demand requests, by policy.
    queued: Mutex<BTreeMap<String, Queued>>,
    /// Policies with a rotation running in this process now.
    running: Mutex<BTreeSet<String>>,
    /// When each policy's current credential came to be, for policies the journal has not
    /// rotated (read from the destinations once, then kept).
    basis: Mutex<HashMap<String, Option<Since>>>,
    /// Policies already reported overdue for their current due time.
    overdue_sent: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Policies whose last attempt failed: how many times in a row, and when to try again.
    /// Scheduled work backs off exponentially (1 min doubling up to 1 h) instead of retrying a
    /// failing rotation on every pass; on-demand requests are not held back.
    backoff: Mutex<HashMap<String, (u32, DateTime<Utc>)>>,
    /// Failures already notified (rotation and error), so a stuck rotation retried on every pass
    /// is reported once per distinct error, not once per pass.
    failure_sent: Mutex<BTreeSet<(String, String)>>,
    wake: Notify,
    semaphore: Arc<Semaphore>,
    concurrency: usize,
    stopping: watch::Sender<bool>,
    /// The last pass completed without a journal error.
    healthy: AtomicBool,
}

/// Set work for one policy in a pass.
enum Work {
    Rotate(engine::Request),
    Resume,
}

impl Daemon {
    pub fn new(
        config: &Config,
        policies_dir: PathBuf,
        policies: Vec<Policy>,
        mut engine: Engine,
        metrics: Arc<Metrics>,
        notifier: Notifier,
    ) -> Arc<Daemon> {
        let (stopping, stop) = watch::channel(false);
        engine.stop = Some(stop);
        Arc::new(Daemon {
            engine: Arc::new(engine),
            metrics,
            notifier,
            policies_dir,
            policies: RwLock::new(Arc::new(policies)),
            queued: Mutex::new(BTreeMap::new()),
            running: Mutex::new(BTreeSet::new()),
            basis: Mutex::new(HashMap::new()),
            overdue_sent: Mutex::new(HashMap::new()),
            failure_sent: Mutex::new(BTreeSet::new()),
            backoff: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            semaphore: Arc::new(Semaphore::new(config.concurrency)),
            concurrency: config.concurrency,
            stopping,
            healthy: AtomicBool::new(true),
        })
    }

    pub fn policies(&self) -> Arc<Vec<Policy>> {
        self.policies.read().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn queued(&self, id: &str) -> Option<Queued> {
        self.queued.lock().ok()?.values().find(|q| q.id == id).cloned()
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records an on-demand rotation and wakes the reconciler; answers with the rotation ID the
    /// rotation will have.
    pub async fn request(&self, policy: &str, reason: Option<String>, compromised: bool) -> Result<String, Refused> {
        if self.is_stopping() {
            return Err(Refused::ShuttingDown);
        }
        if !self.policies().iter().any(|p| p.name == policy) {
            return Err(Refused::UnknownPolicy);
        }
        if self.running.lock().map(|r| r.contains(policy)).unwrap_or(false) {
            return Err(Refused::InFlight("a rotation of this policy is running".into()));
        }
        // Unfinished rotations that are not just waiting to revoke (another replica's, or a
        // crashed one's) are in flight as far as a caller is concerned.
        match self.engine.journal.unfinished(Some(policy)).await {
            Ok(unfinished) => {
                if let Some(r) = unfinished.iter().find(|r| r.phase != Phase::Promoted) {
                    return Err(Refused::InFlight(format!("rotation {} is unfinished ({})", r.id, r.phase)));
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the journal for a request"),
        }
        let id = uuid::Uuid::now_v7().to_string();
        {
            let Ok(mut queued) = self.queued.lock() else { return Err(Refused::ShuttingDown) };
            if let Some(q) = queued.get(policy) {
                return Err(Refused::InFlight(format!("rotation {} is already requested", q.id)));
            }
            queued.insert(
                policy.to_string(),
                Queued { id: id.clone(), policy: policy.to_string(), reason, compromised, at: Utc::now() },
            );
        }
        self.wake.notify_one();
        Ok(id)
    }

    /// Loads the policy directory again; a valid set replaces the one in force, an invalid one
    /// is rejected with every problem logged and the old set keeps running.
    pub fn reload(&self) -> Result<usize, policy::Invalid> {
        match policy::load_dir(&self.policies_dir) {
            Ok(policies) => {
                let missing: Vec<String> = policies
                    .iter()
                    .flat_map(|p| p.destinations.iter().map(move |d| (p, d)))
                    .filter(|(p, d)| Destination::new(d, p.credential.kind, &self.engine.clients).is_err())
                    .map(|(p, d)| format!("policy `{}`: {} is not configured in this service", p.name, d.label()))
                    .collect();
                if !missing.is_empty() {
                    for m in &missing {
                        tracing::error!("reload rejected: {m}");
                    }
                    return Err(policy::Invalid(
                        missing
                            .into_iter()
                            .map(|message| policy::Problem {
                                location: policy::Location { file: self.policies_dir.clone(), line: 0, column: 0 },
                                field: String::new(),
                                message,
                            })
                            .collect(),
                    ));
                }
                let n = policies.len();
                if let Ok(mut current) = self.policies.write() {
                    *current = Arc::new(policies);
                }
                tracing::info!(policies = n, "policies reloaded");
                self.wake.notify_one();
                Ok(n)
            }
            Err(invalid) => {
                for problem in &invalid.0 {
                    tracing::error!(problem = %problem, "reload rejected; the previous policy set keeps running");
                }
                Err(invalid)
            }
        }
    }

    /// Asks the reconciler to stop: no new work; rotations stop after their current step.
    pub fn stop(&self) {
        let _ = self.stopping.send(true);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// Runs the reconciler until `stop`, then waits up to `timeout` for the rotations in flight.
    pub async fn run(self: Arc<Self>, tick: Duration, timeout: Duration) {
        // The trigger: a tokio-cron-scheduler job on a seconds-granular schedule that only wakes
        // the loop. What is due is decided by our own schedule functions, not by the scheduler.
        let scheduler = self.clone().start_ticker(tick).await;
        let mut stopping = self.stopping.subscribe();
        let mut last_reconcile: Option<std::time::Instant> = None;
        loop {
            if self.is_stopping() {
                break;
            }
            self.clone().pass().await;
            if last_reconcile.is_none_or(|t| t.elapsed() >= RECONCILE_EVERY) {
                last_reconcile = Some(std::time::Instant::now());
                tokio::spawn(self.clone().look_for_orphans());
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
        // Every permit back means every rotation task has ended.
        match tokio::time::timeout(timeout, self.semaphore.acquire_many(self.concurrency as u32)).await {
            Ok(_) => tracing::info!("reconciler stopped; no rotation in flight"),
            Err(_) => {
                tracing::warn!("shutdown timeout: rotations still in flight are left to be resumed by the next start")
            }
        }
    }

    async fn start_ticker(self: Arc<Self>, tick: Duration) -> Option<tokio_cron_scheduler::JobScheduler> {
        let seconds = tick.as_secs().clamp(1, 59);
        // 6 fields with seconds, as tokio-cron-scheduler wants.
        let expression = format!("*/{seconds} * * * * *");
        let daemon = self.clone();
        let scheduler = tokio_cron_scheduler::JobScheduler::new().await.ok()?;
        let job = tokio_cron_scheduler::Job::new_async(expression.as_str(), move |_, _| {
            let daemon = daemon.clone();
            Box::pin(async move { daemon.wake.notify_one() })
        })
        .ok()?;
        scheduler.add(job).await.ok()?;
        scheduler.start().await.ok()?;
        Some(scheduler)
    }

    /// One reconciliation pass.
    pub async fn pass(self: Arc<Self>) {
        if self.is_stopping() {
            return;
        }
        let now = Utc::now();
        let history = match self.engine.journal.history(None, 1_000_000).await {
            Ok(h) => {
                self.healthy.store(true, Ordering::Relaxed);
                h
            }
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "journal unreachable; skipping this pass");
                return;
            }
        };
        let policies = self.policies();
        for policy in policies.iter() {
            if self.running.lock().map(|r| r.contains(&policy.name)).unwrap_or(true) {
                continue;
            }
            let rotations: Vec<&Rotation> = history.iter().filter(|r| r.policy == policy.name).collect();
            let Some(work) = self.work_for(policy, &rotations, now).await else { continue };
            let Ok(permit) = self.semaphore.clone().try_acquire_owned() else {
                // At the concurrency limit: the next pass picks it up.
                continue;
            };
            if let Ok(mut running) = self.running.lock() {
                running.insert(policy.name.clone());
            }
            let daemon = self.clone();
            let policy = policy.clone();
            tokio::spawn(async move {
                daemon.execute(&policy, work).await;
                if let Ok(mut running) = daemon.running.lock() {
                    running.remove(&policy.name);
                }
                drop(permit);
                // Something may have become possible (a request that was refused as busy).
                daemon.wake.notify_one();
            });
        }
    }

    /// What to do for `policy` now, if anything.
    async fn work_for(&self, policy: &Policy, rotations: &[&Rotation], now: DateTime<Utc>) -> Option<Work> {
        let queued = self.queued.lock().ok()?.get(&policy.name).cloned();
        if let Some(q) = queued {
            return Some(Work::Rotate(engine::Request {
                reason: q.reason,
                compromised: q.compromised,
                revoke_first: false,
                id: Some(q.id),
            }));
        }
        if self.backoff.lock().ok().and_then(|b| b.get(&policy.name).map(|(_, next)| *next > now)).unwrap_or(false) {
            return None;
        }
        let unfinished: Vec<&&Rotation> = rotations.iter().filter(|r| !r.phase.is_terminal()).collect();
        if unfinished.iter().any(|r| r.phase != Phase::Promoted) {
            return Some(Work::Resume);
        }
        // Revocations: due once the grace is over (require_idle is checked by the engine each
        // time; a rotation waiting for idleness is looked at again on every pass).
        if unfinished.iter().any(|r| r.revoke_after.is_some_and(|at| at <= now)) {
            return Some(Work::Resume);
        }
        let due = self.due(policy, rotations, now).await;
        if due.overdue {
            let first = self
                .overdue_sent
                .lock()
                .ok()
                .map(|mut sent| sent.insert(policy.name.clone(), due.at) != Some(due.at))
                .unwrap_or(false);
            if first {
                tracing::warn!(policy = %policy.name, due = %due.at, "policy is overdue");
                self.notifier
                    .send(&policy.notify, Event::PolicyOverdue { policy: policy.name.clone(), due_since: due.at });
            }
        }
        (due.next_start <= now)
            .then(|| Work::Rotate(engine::Request { reason: Some("scheduled".into()), ..Default::default() }))
    }

    /// When `policy` is due: from the journal's last promotion, else from its current
    /// credential's age (read once from the destinations and Toktra, then cached).
    pub async fn due(&self, policy: &Policy, rotations: &[&Rotation], now: DateTime<Utc>) -> Due {
        let promoted = rotations.iter().find(|r| r.phase.is_promoted()).and_then(|r| r.promoted_at);
        let last = match promoted {
            Some(at) => Some((at, Basis::Journal)),
            None => {
                let cached = self.basis.lock().ok().and_then(|b| b.get(&policy.name).cloned());
                match cached {
                    Some(basis) => basis,
                    None => {
                        let basis = self.credential_basis(policy, now).await;
                        if let Ok(mut b) = self.basis.lock() {
                            b.insert(policy.name.clone(), basis);
                        }
                        basis
                    }
                }
            }
        };
        schedule::due(&policy.name, &policy.schedule, last, now)
    }

    async fn credential_basis(&self, policy: &Policy, now: DateTime<Utc>) -> Option<(DateTime<Utc>, Basis)> {
        for spec in &policy.destinations {
            let Ok(destination) = Destination::new(spec, policy.credential.kind, &self.engine.clients) else {
                continue;
            };
            match destination.current().await {
                Ok(Some(record)) => {
                    let created = match record.rotated_at {
                        Some(at) => Some(at),
                        None => self
                            .engine
                            .toktra
                            .list(policy.credential.kind)
                            .await
                            .ok()
                            .and_then(|l| l.into_iter().find(|c| c.id == record.id))
                            .and_then(|c| c.created_at),
                    };
                    return Some((created.unwrap_or(now), Basis::Credential));
                }
                Ok(None) => {}
                // Unreadable now: assume a fresh credential rather than rotating on a guess.
                Err(e) => {
                    tracing::warn!(policy = %policy.name, error = %e, "cannot read the destination to date its credential");
                    return Some((now, Basis::Credential));
                }
            }
        }
        None
    }

    async fn execute(&self, policy: &Policy, work: Work) {
        let (result, requested) = match work {
            Work::Rotate(request) => {
                let id = request.id.clone();
                (self.engine.rotate(policy, &request).await, id)
            }
            Work::Resume => (self.engine.resume(policy).await, None),
        };
        match result {
            Ok(outcomes) => {
                if requested.is_some()
                    && let Ok(mut queued) = self.queued.lock()
                {
                    queued.remove(&policy.name);
                }
                if let Ok(mut b) = self.basis.lock() {
                    b.remove(&policy.name);
                }
                let failed = outcomes
                    .last()
                    .is_some_and(|o| !o.interrupted && matches!(o.status, Status::Failed | Status::Incomplete));
                if let Ok(mut backoff) = self.backoff.lock() {
                    if failed {
                        let entry = backoff.entry(policy.name.clone()).or_insert((0, Utc::now()));
                        entry.0 += 1;
                        let wait =
                            Duration::from_secs(60 * (1u64 << (entry.0 - 1).min(6))).min(Duration::from_secs(3_600));
                        entry.1 = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                        tracing::warn!(policy = %policy.name, failures = entry.0, retry_in = %crate::duration::format(wait), "rotation failed; backing off");
                    } else {
                        backoff.remove(&policy.name);
                    }
                }
                for outcome in outcomes {
                    self.report(policy, &outcome);
                }
            }
            // Busy: another process holds the policy; a queued request waits for the next pass.
            Err(engine::Error::Busy { holder, .. }) => {
                tracing::info!(policy = %policy.name, holder, "policy busy elsewhere; trying again later")
            }
            Err(e) => {
                tracing::error!(policy = %policy.name, error = %e, "rotation could not run");
                if let Ok(mut queued) = self.queued.lock() {
                    queued.remove(&policy.name);
                }
            }
        }
    }

    fn report(&self, policy: &Policy, o: &Outcome) {
        if o.interrupted {
            return;
        }
        let outcome = match o.status {
            Status::Completed => "completed",
            Status::AwaitingRevocation => "awaiting_revocation",
            Status::Failed => "failed",
            Status::Incomplete => "incomplete",
        };
        self.metrics.rotation(&policy.name, outcome, o.seconds);
        match o.status {
            Status::Failed | Status::Incomplete if !o.resumed || o.status == Status::Incomplete => {
                let error = o.error.clone().unwrap_or_default();
                let first = self
                    .failure_sent
                    .lock()
                    .map(|mut sent| sent.insert((o.rotation_id.clone(), error.clone())))
                    .unwrap_or(true);
                if !first {
                    return;
                }
                if let Some(kind) = ["vault:", "aws:", "file:"].iter().find(|k| error.starts_with(**k)) {
                    self.metrics.destination_error(kind.trim_end_matches(':'));
                }
                self.notifier.send(
                    &policy.notify,
                    Event::RotationFailed { policy: policy.name.clone(), rotation_id: o.rotation_id.clone(), error },
                );
            }
            Status::Completed | Status::AwaitingRevocation if !o.resumed => {
                self.notifier.send(
                    &policy.notify,
                    Event::RotationSucceeded {
                        policy: policy.name.clone(),
                        rotation_id: o.rotation_id.clone(),
                        new_credential: o.new_credential.clone(),
                    },
                );
            }
            _ => {}
        }
        if let Some(c) = &o.compromise
            && o.status == Status::Completed
        {
            self.notifier.send(
                &policy.notify,
                Event::CompromiseContained {
                    policy: policy.name.clone(),
                    rotation_id: o.rotation_id.clone(),
                    exposed: c.exposed.clone(),
                    held_by: c.held_by.clone(),
                    seconds_to_containment: c.seconds_to_containment,
                },
            );
        }
    }

    /// Compares Toktra, destinations and journal (changing nothing) and notifies orphans.
    async fn look_for_orphans(self: Arc<Self>) {
        let policies = self.policies();
        let refs: Vec<&Policy> = policies.iter().collect();
        match self.engine.reconcile(&refs, false).await {
            Ok(report) => {
                for finding in report.findings.iter().filter(|f| f.kind == "orphan") {
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

    /// Gauges for `/metrics`.
    pub async fn snapshot(&self) -> Snapshot {
        let now = Utc::now();
        let policies = self.policies();
        let history = self.engine.journal.history(None, 1_000_000).await.unwrap_or_default();
        let mut s = Snapshot {
            policies: policies.len() as u64,
            in_flight: self.running.lock().map(|r| r.len() as u64).unwrap_or(0),
            ..Default::default()
        };
        for policy in policies.iter() {
            let rotations: Vec<&Rotation> = history.iter().filter(|r| r.policy == policy.name).collect();
            let due = self.due(policy, &rotations, now).await;
            if let Some(at) = rotations.iter().find(|r| r.phase.is_promoted()).and_then(|r| r.promoted_at) {
                s.credential_age.insert(policy.name.clone(), (now - at).num_milliseconds() as f64 / 1000.0);
            }
            s.next_rotation.insert(policy.name.clone(), due.next_start.timestamp() as f64);
            s.overdue.insert(policy.name.clone(), due.overdue as u64);
            s.pending_revocations += rotations
                .iter()
                .filter(|r| r.phase == Phase::Promoted)
                .map(|r| r.old_credentials.len() as u64)
                .sum::<u64>();
        }
        let stats = self.engine.toktra.stats();
        s.toktra_requests = stats.by_status;
        s.toktra_retries = stats.retries;
        s.toktra_rate_limit_waits = stats.rate_limit_waits;
        s
    }
}
