//! `rotator serve`'s reconciler: one idempotent pass that takes no input, decides from the
//! policies, the journal and the time what work is due (scheduled rotations, revocations whose
//! grace ended, unfinished rotations, on-demand requests) and advances it under a global
//! concurrency limit. A tokio-cron-scheduler job wakes it on a tick; an on-demand request only
//! records itself in the journal and wakes it, so scheduled and on-demand rotations run the same
//! code path, and any process on the journal runs a request whichever one accepted it.
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
use crate::journal;
use crate::metrics::{Metrics, Snapshot};
use crate::notify::{Event, Notifier};
use crate::policy::{self, Policy};
use crate::rotation::Phase;
use crate::rotation::Rotation;
use crate::schedule::{self, Basis, Due};
use crate::store::{Destination, Store};

/// When a credential came to be, and how that is known.
use crate::schedule::Since;

/// How often the service looks for orphans (and at start).
const RECONCILE_EVERY: Duration = Duration::from_secs(3_600);

/// How long a reload may take to read the policy directory (10,000 files take well under a
/// second) before it is given up and the previous set keeps running.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How a reload ended.
#[derive(Debug)]
pub enum Reloaded {
    /// The new set is in force; this many policies.
    Accepted(usize),
    /// The previous set keeps running; every problem was logged.
    Rejected(policy::Invalid),
    /// Another reload was still running.
    Skipped,
}

/// The outcome of the last reload (or of the load at start).
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    pub at: DateTime<Utc>,
    /// Why the last reload was rejected (the previous set keeps running: the configuration in
    /// force is stale); `None` when it was accepted.
    pub rejected: Option<String>,
}

/// What a policy does, to tell a changed policy from an unchanged one on reload: everything
/// but where it was defined (moving lines in a file changes nothing). `Policy` has no
/// `PartialEq`; its `Debug` covers every field.
fn what_it_does(p: &Policy) -> String {
    format!(
        "{:?}",
        (&p.name, &p.description, &p.labels, &p.credential, &p.schedule, &p.destinations, &p.revoke, &p.notify)
    )
}

/// The longest `Idempotency-Key` accepted, in bytes (visible ASCII only).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// An accepted on-demand request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The ID its rotation has (or will have).
    pub id: String,
    /// An earlier request with the same `Idempotency-Key`, answered again.
    pub replayed: bool,
}

/// The longest rotation `reason` accepted, in bytes of UTF-8: it is stored in the journal and
/// served by `GET /v1/rotations`, so it must not grow them without bound.
// TODO-robustness: the bound belongs with `engine::Request`, so library callers get it too.
pub const MAX_REASON_BYTES: usize = 1024;

/// Checks a rotation `reason` against `MAX_REASON_BYTES`; the message never repeats the reason.
pub fn check_reason(reason: &str) -> Result<(), String> {
    match reason.len() {
        n if n > MAX_REASON_BYTES => {
            Err(format!("the reason is {n} bytes long; at most {MAX_REASON_BYTES} bytes (1 KiB) are accepted"))
        }
        _ => Ok(()),
    }
}

/// Why an on-demand request was refused.
#[derive(Debug)]
pub enum Refused {
    UnknownPolicy,
    InFlight(String),
    /// The request itself is wrong (a reason that is too long).
    Invalid(String),
    /// The `Idempotency-Key` names an earlier request of the policy with another body.
    KeyReused(String),
    ShuttingDown,
    /// The journal could not record it (or say whether it may be recorded).
    Journal(journal::Error),
}

/// State shared by the reconciler, the HTTP API and the signal handlers.
pub struct Daemon {
    /// The last readiness checks of Toktra and Vault and when they ran: they call out, so
    /// `/readyz` runs them at most once a minute.
    pub external_checks: tokio::sync::Mutex<Option<(std::time::Instant, serde_json::Value)>>,
    /// What the reconciler, the API and the signal handlers change, under one lock.
    state: Mutex<State>,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub notifier: Notifier,
    policies_dir: PathBuf,
    /// The policy set in force; replaced whole by a valid reload.
    policies: RwLock<Arc<Vec<Policy>>>,
    tick: Duration,
    wake: Notify,
    semaphore: Arc<Semaphore>,
    concurrency: usize,
    stopping: watch::Sender<bool>,
    /// The last pass completed without a journal error.
    healthy: AtomicBool,
    /// Held by the reload running now.
    reloading: tokio::sync::Mutex<()>,
    /// A thread is reading the policy directory (it may outlive its reload's time bound).
    loader_busy: Arc<AtomicBool>,
}

/// The daemon's mutable state. Sections that hold the lock are short and never await; every
/// field is whole after each statement, so a lock poisoned by a panic elsewhere is entered
/// anyway ([`Daemon::state`]) rather than silently skipped.
struct State {
    /// Check name → when it last passed (Unix seconds), for `/metrics`.
    check_last_success: BTreeMap<String, f64>,
    /// Policies with a rotation running in this process now.
    running: BTreeSet<String>,
    /// When each policy's current credential came to be, for policies the journal has not
    /// rotated (read from the destinations once, then kept).
    basis: HashMap<String, Option<Since>>,
    /// Policies already reported overdue for their current due time.
    overdue_sent: HashMap<String, DateTime<Utc>>,
    /// Policies held back from the next passes, so nothing is retried in a loop.
    holds: HashMap<String, Hold>,
    /// Orphans already notified (policy, credential).
    orphan_sent: BTreeSet<(String, String)>,
    /// Failures already notified (policy, rotation, error), so a stuck rotation retried later is
    /// reported once per distinct error; a policy's entries go when it succeeds.
    failure_sent: BTreeSet<(String, String, String)>,
    reload_status: ReloadStatus,
    /// What the last pass read and decided: scrapes and `/v1/policies` answer from it instead
    /// of reading the journal, destinations or Toktra themselves.
    last_pass: Option<Arc<PassView>>,
}

/// A policy's gauges as a pass saw them (its credential's age is computed when scraped).
#[derive(Debug)]
pub struct PolicyGauge {
    pub policy: Arc<str>,
    pub promoted_at: Option<DateTime<Utc>>,
    /// Unix seconds.
    pub next_start: f64,
    pub overdue: bool,
}

/// The journal rows and due times the last pass saw.
#[derive(Debug)]
pub struct PassView {
    pub at: DateTime<Utc>,
    /// `Journal::pass_view`: per policy the latest and the latest promoted rotation, and the
    /// unfinished ones.
    pub rotations: Vec<Rotation>,
    pub due: HashMap<String, Due>,
    /// Per policy, sorted by name: when its current credential was promoted, when it may next
    /// rotate (Unix seconds), whether it is overdue; what `/metrics` renders.
    pub gauges: Vec<PolicyGauge>,
    /// Old credentials awaiting revocation.
    pub pending_revocations: u64,
}

/// Why a policy is held back, and until when.
#[derive(Debug, Clone, Copy)]
struct Hold {
    /// Failed attempts in a row (the back-off doubles from 1 minute per failure, up to 1 hour).
    failures: u32,
    until: DateTime<Utc>,
    why: HoldReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldReason {
    /// The last attempt failed: scheduled work backs off.
    Failed,
    /// The last rotation waits for its grace period or for the old credential to go idle:
    /// looked at again on a later tick, not on every wake-up.
    Waiting,
    /// Another process holds the policy's lease.
    Busy,
}

impl HoldReason {
    /// Whether an on-demand request waits for the hold too. Back-offs and waits only pace the
    /// reconciler's own work; a request runs at once (resuming the unfinished rotation first,
    /// as `Engine::rotate` does). Only another holder's lease makes it wait, since running then
    /// could only end `Busy` again.
    fn holds_requests(self) -> bool {
        self == HoldReason::Busy
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

/// Set work for one policy in a pass.
#[derive(Debug)]
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
        if let Ok(mut loaded) = engine.options.loaded.write() {
            *loaded = Some(policies.iter().map(|p| p.name.clone()).collect());
        }
        Arc::new(Daemon {
            external_checks: tokio::sync::Mutex::new(None),
            state: Mutex::new(State {
                check_last_success: BTreeMap::new(),
                running: BTreeSet::new(),
                basis: HashMap::new(),
                overdue_sent: HashMap::new(),
                holds: HashMap::new(),
                orphan_sent: BTreeSet::new(),
                failure_sent: BTreeSet::new(),
                // The set given here was loaded at start.
                reload_status: ReloadStatus { at: Utc::now(), rejected: None },
                last_pass: None,
            }),
            engine: Arc::new(engine),
            metrics,
            notifier,
            policies_dir,
            policies: RwLock::new(Arc::new(policies)),
            tick: config.tick,
            wake: Notify::new(),
            semaphore: Arc::new(Semaphore::new(config.concurrency)),
            concurrency: config.concurrency,
            stopping,
            healthy: AtomicBool::new(true),
            reloading: tokio::sync::Mutex::new(()),
            loader_busy: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The mutable state, entered even when a panic elsewhere poisoned its lock (see [`State`]).
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the last pass saw; before the first one, read now (journal and due times).
    pub async fn pass_state(&self) -> Result<Arc<PassView>, journal::Error> {
        let last = self.state().last_pass.clone();
        if let Some(view) = last {
            return Ok(view);
        }
        let rotations = self.engine.journal.pass_view().await?;
        Ok(Arc::new(self.view(rotations, Utc::now()).await))
    }

    /// Due times of every policy from `rotations` (credential ages come from the cache the
    /// passes fill, so this reads destinations only for a policy seen for the first time).
    async fn view(&self, rotations: Vec<Rotation>, now: DateTime<Utc>) -> PassView {
        let by_policy = group(&rotations);
        let mut due = HashMap::new();
        let mut gauges: Vec<PolicyGauge> = Vec::new();
        let mut pending_revocations = 0;
        for policy in self.policies().iter() {
            let list = by_policy.get(policy.name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            let d = self.due(policy, list, now).await;
            let promoted = list.iter().find(|r| r.phase.is_promoted()).and_then(|r| r.promoted_at);
            gauges.push(PolicyGauge {
                policy: Arc::from(policy.name.as_str()),
                promoted_at: promoted,
                next_start: d.next_start.timestamp() as f64,
                overdue: d.overdue,
            });
            pending_revocations +=
                list.iter().filter(|r| r.phase == Phase::Promoted).map(|r| r.old_credentials.len() as u64).sum::<u64>();
            due.insert(policy.name.clone(), d);
        }
        gauges.sort_by(|a, b| a.policy.cmp(&b.policy));
        drop(by_policy);
        PassView { at: now, rotations, due, gauges, pending_revocations }
    }

    pub fn policies(&self) -> Arc<Vec<Policy>> {
        self.policies.read().map(|p| p.clone()).unwrap_or_default()
    }

    /// Resolves once `stop` was called.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records an on-demand rotation in the journal and wakes the reconciler; answers with the
    /// rotation ID the rotation will have. A request with an `Idempotency-Key` already used for
    /// the policy is answered with that request's ID, whatever became of it.
    pub async fn request(
        &self,
        policy: &str,
        reason: Option<String>,
        compromised: bool,
        idempotency_key: Option<String>,
    ) -> Result<Accepted, Refused> {
        if self.is_stopping() {
            return Err(Refused::ShuttingDown);
        }
        if let Some(reason) = &reason {
            check_reason(reason).map_err(Refused::Invalid)?;
        }
        if let Some(key) = &idempotency_key {
            check_idempotency_key(key).map_err(Refused::Invalid)?;
        }
        if !self.policies().iter().any(|p| p.name == policy) {
            return Err(Refused::UnknownPolicy);
        }
        let journal = &self.engine.journal;
        let replay = async |key: &Option<String>, reason: Option<&str>| -> Result<Option<Accepted>, Refused> {
            let Some(key) = key else { return Ok(None) };
            let Some(found) = journal.request_by_key(policy, key).await.map_err(Refused::Journal)? else {
                return Ok(None);
            };
            // A retry repeats its request; the same key with another body is a caller's mistake
            // that would otherwise be answered as if it had been carried out.
            if (found.reason.as_deref(), found.compromised) != (reason, compromised) {
                return Err(Refused::KeyReused(format!(
                    "this Idempotency-Key was used for request {} of the policy with another body (reason or compromised differ)",
                    found.id
                )));
            }
            Ok(Some(Accepted { id: found.id, replayed: true }))
        };
        if let Some(accepted) = replay(&idempotency_key, reason.as_deref()).await? {
            return Ok(accepted);
        }
        // A request waiting for its turn (whichever process accepted it) is reported as queued,
        // as `GET /v1/rotations/{id}` shows it, until its rotation is recorded, even while a
        // process works on the policy (resuming an earlier rotation first).
        self.refuse_if_open(policy).await?;
        if self.state().running.contains(policy) {
            return Err(Refused::InFlight("a rotation of this policy is running".into()));
        }
        // Unfinished rotations that are not just waiting to revoke (another replica's, or a
        // crashed one's) are in flight as far as a caller is concerned.
        match journal.unfinished(Some(policy)).await {
            Ok(unfinished) => {
                if let Some(r) = unfinished.iter().find(|r| r.phase != Phase::Promoted) {
                    return Err(Refused::InFlight(format!("rotation {} is unfinished ({})", r.id, r.phase)));
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the journal for a request"),
        }
        let request = journal::Request {
            id: uuid::Uuid::now_v7().to_string(),
            policy: policy.to_string(),
            reason,
            compromised,
            idempotency_key,
            created_at: Utc::now(),
            state: journal::RequestState::Queued,
        };
        if let Err(e) = journal.add_request(&request).await {
            // Refused by a unique index when another process recorded a request for the policy
            // (or with the key) meanwhile; anything else is the journal's failure.
            if let Some(accepted) = replay(&request.idempotency_key, request.reason.as_deref()).await? {
                return Ok(accepted);
            }
            self.refuse_if_open(policy).await?;
            return Err(Refused::Journal(e));
        }
        tracing::info!(policy, request = %request.id, compromised, "rotation requested");
        self.wake.notify_one();
        Ok(Accepted { id: request.id, replayed: false })
    }

    /// Refuses a request for a policy that has one open already.
    async fn refuse_if_open(&self, policy: &str) -> Result<(), Refused> {
        let journal = &self.engine.journal;
        let open = journal.open_requests().await.map_err(Refused::Journal)?;
        let Some(q) = open.into_iter().find(|r| r.policy == policy) else { return Ok(()) };
        Err(Refused::InFlight(match journal.get(&q.id).await {
            Ok(Some(row)) => format!("rotation {} of this policy is in flight ({})", q.id, row.phase),
            _ => queued_message(&q),
        }))
    }

    /// Loads the policy directory again; a valid set replaces the one in force, an invalid one
    /// is rejected with every problem logged and the old set keeps running. The directory is
    /// read on a thread of its own with a time bound (`RELOAD_TIMEOUT`), so a file that blocks
    /// its reader (a FIFO, a hung network file system) delays neither the API, nor the
    /// reconciler, nor a shutdown. One reload runs at a time; a SIGHUP meanwhile is skipped.
    pub async fn reload(&self) -> Reloaded {
        let Ok(_one_at_a_time) = self.reloading.try_lock() else {
            tracing::warn!("SIGHUP: a reload is still running; this one is skipped (send SIGHUP again once it ended)");
            return Reloaded::Skipped;
        };
        let dir = &self.policies_dir;
        let problem = |message: String| {
            policy::Invalid(vec![policy::Problem {
                location: policy::Location { file: dir.clone(), line: 0, column: 0 },
                field: String::new(),
                message,
            }])
        };
        let loaded = if self.loader_busy.swap(true, Ordering::SeqCst) {
            // An earlier load timed out and its thread has not returned: starting another
            // would pile up blocked threads.
            Err(problem("the previous load of the policy directory has not returned yet (blocked reading a file?); not starting another".into()))
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (path, busy) = (dir.clone(), self.loader_busy.clone());
            // A thread of its own rather than `spawn_blocking`: the runtime waits for its
            // blocking threads when it shuts down, and this one may never return.
            let spawned = std::thread::Builder::new().name("policy-reload".into()).spawn(move || {
                let loaded = policy::load_dir(&path);
                busy.store(false, Ordering::SeqCst);
                let _ = tx.send(loaded);
            });
            match spawned {
                Err(e) => {
                    self.loader_busy.store(false, Ordering::SeqCst);
                    Err(problem(format!("cannot start a thread to read the policy directory: {e}")))
                }
                Ok(_) => match tokio::time::timeout(RELOAD_TIMEOUT, rx).await {
                    Ok(Ok(loaded)) => loaded,
                    Ok(Err(_)) => Err(problem("reading the policy directory failed (the reader panicked)".into())),
                    Err(_) => Err(problem(format!(
                        "the policy directory was not read within {} (a file that blocks its reader, such as a FIFO?)",
                        crate::duration::format(RELOAD_TIMEOUT)
                    ))),
                },
            }
        };
        match self.apply(loaded) {
            Ok(n) => Reloaded::Accepted(n),
            Err(invalid) => Reloaded::Rejected(invalid),
        }
    }

    /// Swaps in a loaded policy set if the service can run it as a whole.
    fn apply(&self, loaded: Result<Vec<Policy>, policy::Invalid>) -> Result<usize, policy::Invalid> {
        let now = Utc::now();
        let policies = match loaded.and_then(|policies| self.runnable(&policies).map(|()| policies)) {
            Ok(policies) => policies,
            Err(invalid) => {
                for problem in &invalid.0 {
                    tracing::error!(problem = %problem, "reload rejected; the previous policy set keeps running");
                }
                let first = invalid.0.first().map(ToString::to_string).unwrap_or_default();
                let rejected = match invalid.0.len() {
                    1 => first,
                    n => format!("{n} problems, the first: {first}"),
                };
                self.state().reload_status = ReloadStatus { at: now, rejected: Some(rejected) };
                return Err(invalid);
            }
        };
        let n = policies.len();
        let names: BTreeSet<String> = policies.iter().map(|p| p.name.clone()).collect();
        let before: BTreeMap<String, String> =
            self.policies().iter().map(|p| (p.name.clone(), what_it_does(p))).collect();
        let (mut added, mut changed) = (Vec::new(), Vec::new());
        for p in &policies {
            match before.get(&p.name) {
                None => added.push(p.name.as_str()),
                Some(old) if *old != what_it_does(p) => changed.push(p.name.as_str()),
                Some(_) => {}
            }
        }
        let removed: Vec<&str> = before.keys().filter(|name| !names.contains(*name)).map(String::as_str).collect();
        tracing::info!(
            policies = n,
            added = %added.join(", "),
            removed = %removed.join(", "),
            changed = %changed.join(", "),
            "policies reloaded"
        );
        if let Ok(mut current) = self.policies.write() {
            *current = Arc::new(policies);
        }
        if let Ok(mut loaded) = self.engine.options.loaded.write() {
            *loaded = Some(names.clone());
        }
        // Forget what belonged to policies that are gone (and every cached age, since a
        // policy's destinations may have changed).
        {
            let mut state = self.state();
            state.holds.retain(|p, _| names.contains(p));
            state.overdue_sent.retain(|p, _| names.contains(p));
            state.basis.clear();
            state.reload_status = ReloadStatus { at: now, rejected: None };
        }
        self.wake.notify_one();
        Ok(n)
    }

    /// What only the service can decide about a valid policy set: destinations that only the
    /// default AWS region makes one secret, destinations and channels this service's
    /// configuration does not provide.
    fn runnable(&self, policies: &[Policy]) -> Result<(), policy::Invalid> {
        let region = self.engine.clients.aws.as_ref().and_then(|sdk| sdk.region()).map(|r| r.to_string());
        policy::check_default_region(policies, region.as_deref())?;
        let mut missing: Vec<String> = policies
            .iter()
            .flat_map(|p| p.destinations.iter().map(move |d| (p, d)))
            .filter(|(p, d)| Destination::new(d, p.credential.kind, &self.engine.clients).is_err())
            .map(|(p, d)| format!("policy `{}`: {} is not configured in this service", p.name, d.label()))
            .collect();
        for p in policies {
            for channel in p.notify.iter().filter(|c| !self.notifier.knows(c)) {
                missing.push(format!("{}: notify: channel `{channel}` is not defined in the configuration", p.source));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(policy::Invalid(
            missing
                .into_iter()
                .map(|message| policy::Problem {
                    location: policy::Location { file: self.policies_dir.clone(), line: 0, column: 0 },
                    field: String::new(),
                    message,
                })
                .collect(),
        ))
    }

    /// Whether the Toktra management credential authenticates and the credential endpoints
    /// answer, and (when a policy writes to Vault) whether the Vault token is valid with time
    /// left; each as `{"ok", "message"?}`. Cached for a minute: a probe must not hammer them.
    pub async fn external_checks(&self) -> serde_json::Value {
        const EVERY: Duration = Duration::from_secs(60);
        const LIMIT: Duration = Duration::from_secs(5);
        let mut cached = self.external_checks.lock().await;
        if let Some((at, checks)) = cached.as_ref()
            && at.elapsed() < EVERY
        {
            return checks.clone();
        }
        let policies = self.policies();
        let mut kinds: Vec<crate::policy::CredentialKind> = policies.iter().map(|p| p.credential.kind).collect();
        kinds.sort_by_key(|k| k.as_str());
        kinds.dedup();
        let toktra = match tokio::time::timeout(LIMIT, self.engine.toktra.check_management(&kinds)).await {
            Ok(Ok(())) => serde_json::json!({ "ok": true }),
            Ok(Err(e)) => serde_json::json!({ "ok": false, "message": e.to_string() }),
            Err(_) => serde_json::json!({ "ok": false, "message": "toktra did not answer within 5s" }),
        };
        let mut checks = serde_json::json!({ "toktra": toktra });
        let uses_vault =
            policies.iter().any(|p| p.destinations.iter().any(|d| matches!(d, crate::policy::Destination::Vault(_))));
        if uses_vault && let Some(vault) = &self.engine.clients.vault {
            checks["vault"] = match tokio::time::timeout(LIMIT, vault.token_ttl()).await {
                // 0: a token that never expires. A method that can log in again replaces a token
                // before it runs out, so only a `token` that cannot is judged by its time left.
                Ok(Ok(ttl)) if ttl == 0 || ttl >= 60 || vault.can_login() => {
                    serde_json::json!({ "ok": true, "ttl_seconds": ttl, "auth": vault.method() })
                }
                Ok(Ok(ttl)) => {
                    serde_json::json!({ "ok": false, "ttl_seconds": ttl, "message": format!("the Vault token expires in {ttl}s") })
                }
                Ok(Err(e)) => serde_json::json!({ "ok": false, "message": e }),
                Err(_) => serde_json::json!({ "ok": false, "message": "vault did not answer within 5s" }),
            };
        }
        if let Some(object) = checks.as_object() {
            let mut state = self.state();
            for (name, _) in object.iter().filter(|(_, c)| c["ok"] == true) {
                state.check_last_success.insert(name.clone(), Utc::now().timestamp() as f64);
            }
        }
        *cached = Some((std::time::Instant::now(), checks.clone()));
        checks
    }

    /// The last reload (or the load at start), for `/metrics` and `/readyz`.
    pub fn reload_status(&self) -> ReloadStatus {
        self.state().reload_status.clone()
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

    /// One reconciliation pass.
    pub async fn pass(self: Arc<Self>) {
        if self.is_stopping() {
            return;
        }
        let now = Utc::now();
        let history = match self.engine.journal.pass_view().await {
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
        // Every pass reads the requests from the journal: whichever process accepted them.
        let requests = match self.engine.journal.open_requests().await {
            Ok(r) => r,
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "journal unreachable; skipping this pass");
                return;
            }
        };
        let by_policy = group(&history);
        let policies = self.policies();
        // Oldest first, compromise requests before all (the journal's order): when slots are
        // short, policies with requests go first in that order, then the rest in policy order.
        let mut order: Vec<&Policy> = policies.iter().collect();
        order.sort_by_key(|p| requests.iter().position(|r| r.policy == p.name).unwrap_or(usize::MAX));
        for policy in order {
            if self.is_stopping() {
                break;
            }
            if self.state().running.contains(&policy.name) {
                continue;
            }
            let rotations = by_policy.get(policy.name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            let request = requests.iter().find(|r| r.policy == policy.name);
            let Some(mut work) = self.work_for(policy, rotations, request, now).await else { continue };
            // `work_for` may have waited (dating a credential reads destinations and Toktra):
            // what a stop said meanwhile holds.
            if self.is_stopping() {
                break;
            }
            let Ok(permit) = self.semaphore.clone().try_acquire_owned() else {
                // At the concurrency limit: the next pass picks it up.
                continue;
            };
            // Claim the policy; a request that arrived while `work_for` awaited replaces a
            // scheduled rotation, so it is not followed by a second one.
            let claimed = self.state().running.insert(policy.name.clone());
            if !claimed {
                continue;
            }
            let guard = Running { daemon: self.clone(), policy: policy.name.clone() };
            if let Work::Rotate(scheduled) = &work
                && scheduled.id.is_none()
                && let Ok(open) = self.engine.journal.open_requests().await
                && let Some(q) = open.into_iter().find(|r| r.policy == policy.name)
            {
                work = requested(q);
            }
            let daemon = self.clone();
            let policy = policy.clone();
            tokio::spawn(async move {
                // Claimed before the stop was seen, not begun: leave it to the next start.
                if daemon.is_stopping() {
                    tracing::info!(policy = %policy.name, "stopping: not starting the work claimed for this policy");
                    return;
                }
                if let Work::Rotate(engine::Request { id: Some(id), .. }) = &work
                    && let Err(e) = daemon.engine.journal.start_request(id).await
                {
                    tracing::warn!(policy = %policy.name, request = %id, error = %e, "could not mark the request started");
                }
                daemon.execute(&policy, work).await;
                drop(guard);
                drop(permit);
                // A request of another policy may be waiting for a slot (one of this policy that
                // could not run now waits for the next tick rather than spinning).
                if daemon
                    .engine
                    .journal
                    .open_requests()
                    .await
                    .is_ok_and(|open| open.iter().any(|r| r.policy != policy.name))
                {
                    daemon.wake.notify_one();
                }
            });
        }
        self.finish_leftovers(&history, &policies, now);
        let view = self.view(history, now).await;
        self.state().last_pass = Some(Arc::new(view));
        release_free_memory();
        self.metrics.pass_completed();
    }

    /// Unfinished rotations of policies that are gone (deleted, renamed) still revoke after
    /// their grace and roll back unpromoted mints; see `leftover`.
    fn finish_leftovers(self: &Arc<Self>, history: &[Rotation], policies: &Arc<Vec<Policy>>, now: DateTime<Utc>) {
        let loaded: Vec<&Policy> = policies.iter().collect();
        for rotation in crate::leftover::leftovers(history, &loaded) {
            if self.is_stopping() {
                break;
            }
            let not_due = rotation.phase == Phase::Promoted
                && !rotation.compromised
                && rotation.revoke_after.is_some_and(|at| at > now)
                && rotation.waiting.is_some();
            let (held, running) = {
                let state = self.state();
                let held = state.holds.get(&rotation.policy).is_some_and(|h| h.until > now);
                (held, state.running.contains(&rotation.policy))
            };
            if not_due || held || running {
                continue;
            }
            let Ok(permit) = self.semaphore.clone().try_acquire_owned() else { return };
            if !self.state().running.insert(rotation.policy.clone()) {
                continue;
            }
            let guard = Running { daemon: self.clone(), policy: rotation.policy.clone() };
            let (daemon, policies, rotation) = (self.clone(), policies.clone(), rotation.clone());
            tokio::spawn(async move {
                if daemon.is_stopping() {
                    return;
                }
                let name = rotation.policy.clone();
                let loaded: Vec<&Policy> = policies.iter().collect();
                let now = Utc::now();
                match daemon.engine.finish_leftover(rotation, &loaded).await {
                    Ok(outcome) if outcome.phase.is_terminal() => {
                        tracing::info!(policy = %name, rotation = %outcome.rotation_id, phase = %outcome.phase, "finished the rotation of a policy that no longer exists");
                    }
                    Ok(outcome) => {
                        // Waiting (grace, held) or stuck: look again later, not on every pass.
                        tracing::warn!(policy = %name, rotation = %outcome.rotation_id, waiting = ?outcome.waiting, error = ?outcome.error, "the rotation of a policy that no longer exists is unfinished");
                        daemon.back_off(&name, now);
                    }
                    Err(e) => {
                        tracing::error!(policy = %name, error = %e, "could not finish the rotation of a policy that no longer exists");
                        daemon.back_off(&name, now);
                    }
                }
                drop(guard);
                drop(permit);
            });
        }
    }

    /// What to do for `policy` now, if anything: [`decide`] on what the pass read, then, when
    /// nothing is pending, the schedule (which may read the destinations to date a credential)
    /// and the overdue alert it implies.
    async fn work_for(
        &self,
        policy: &Policy,
        rotations: &[&Rotation],
        request: Option<&journal::Request>,
        now: DateTime<Utc>,
    ) -> Option<Work> {
        let hold = self.state().holds.get(&policy.name).copied();
        match decide(rotations, request, hold, now) {
            Decision::Hold => return None,
            Decision::Run(work) => return Some(work),
            Decision::Schedule => {}
        }
        let due = self.due(policy, rotations, now).await;
        if !due.overdue && self.state().overdue_sent.remove(&policy.name).is_some() {
            // No longer overdue (rotated, or its schedule changed): resolve the alert.
            self.notifier.send(
                &policy.notify,
                Event::Recovered { policy: policy.name.clone(), cleared: vec![crate::notify::Problem::Overdue] },
            );
        }
        if due.overdue {
            let first = self.state().overdue_sent.insert(policy.name.clone(), due.at) != Some(due.at);
            if first {
                tracing::warn!(policy = %policy.name, due = %due.at, "policy is overdue");
                self.notifier
                    .send(&policy.notify, Event::PolicyOverdue { policy: policy.name.clone(), due_since: due.at });
            }
        }
        scheduled(&due, rotations, now)
    }

    /// When `policy` is due: from the journal's last promotion, else from its current
    /// credential's age (read once from the destinations and Toktra, then cached).
    pub async fn due(&self, policy: &Policy, rotations: &[&Rotation], now: DateTime<Utc>) -> Due {
        let promoted = rotations.iter().find(|r| r.phase.is_promoted()).and_then(|r| r.promoted_at);
        let last = match promoted {
            Some(at) => Some((at, Basis::Journal)),
            None => {
                let cached = self.state().basis.get(&policy.name).cloned();
                match cached {
                    Some(basis) => basis,
                    None => {
                        let (basis, known) = self.credential_basis(policy, now).await;
                        // A guess (a destination or Toktra could not be read) is used for this
                        // pass only, so the real age is found once they answer again.
                        if known {
                            self.state().basis.insert(policy.name.clone(), basis);
                        }
                        basis
                    }
                }
            }
        };
        schedule::due(&policy.name, &policy.schedule, last, now)
    }

    /// When the policy's current credential came to be, and whether that is known (rather than
    /// assumed to be now because something could not be read).
    async fn credential_basis(&self, policy: &Policy, now: DateTime<Utc>) -> (Option<Since>, bool) {
        for spec in &policy.destinations {
            let Ok(destination) = Destination::new(spec, policy.credential.kind, &self.engine.clients) else {
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
                    return (Some(since), known);
                }
                Ok(None) => {}
                // Unreadable now: assume a fresh credential rather than rotating on a guess.
                Err(e) => {
                    tracing::warn!(policy = %policy.name, error = %e, "cannot read the destination to date its credential");
                    return (Some((now, Basis::Credential)), false);
                }
            }
        }
        (None, true)
    }

    async fn execute(&self, policy: &Policy, work: Work) {
        let (result, requested) = match work {
            Work::Rotate(request) => {
                let id = request.id.clone();
                (self.engine.rotate(policy, &request).await, id)
            }
            Work::Resume => (self.engine.resume(policy).await, None),
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

    fn report(&self, policy: &Policy, o: &Outcome) {
        // A held revocation is news whichever run finds it (once per rotation and reason).
        if o.held
            && let Some(why) = &o.waiting
            && self.state().failure_sent.insert((policy.name.clone(), o.rotation_id.clone(), why.clone()))
        {
            self.notifier.send(
                &policy.notify,
                Event::RevocationHeld {
                    policy: policy.name.clone(),
                    rotation_id: o.rotation_id.clone(),
                    why: why.clone(),
                },
            );
        }
        // Interrupted runs, and resumed runs still waiting to revoke, are not events.
        if o.interrupted || (o.resumed && o.status == Status::AwaitingRevocation) {
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
            Status::Failed | Status::Incomplete => {
                let error = o.error.clone().unwrap_or_default();
                let first =
                    self.state().failure_sent.insert((policy.name.clone(), o.rotation_id.clone(), error.clone()));
                if !first {
                    return;
                }
                if let Some(engine::FailedIn::Destination(kind)) = o.failed_in {
                    self.metrics.destination_error(kind.as_str());
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

    /// Gauges for `/metrics`, from the last pass (a scrape reads nothing itself).
    pub async fn snapshot(&self) -> Snapshot {
        let now = Utc::now();
        let Ok(view) = self.pass_state().await else { return Snapshot::default() };
        let mut s = Snapshot {
            policies: self.policies().len() as u64,
            in_flight: self.state().running.len() as u64,
            pending_revocations: view.pending_revocations,
            per_policy: view
                .gauges
                .iter()
                .map(|g| crate::metrics::PolicyGauges {
                    policy: g.policy.clone(),
                    credential_age: g.promoted_at.map(|at| (now - at).num_milliseconds() as f64 / 1000.0),
                    next_rotation: g.next_start,
                    overdue: g.overdue,
                })
                .collect(),
            ..Default::default()
        };
        let reload = self.reload_status();
        s.reload_success = reload.rejected.is_none();
        s.reload_timestamp = reload.at.timestamp() as f64;
        let stats = self.engine.toktra.stats();
        s.toktra_requests = stats.by_status;
        s.toktra_retries = stats.retries;
        s.toktra_rate_limit_waits = stats.rate_limit_waits;
        // What the last readiness check saw; a scrape never calls out itself.
        if let Ok(cached) = self.external_checks.try_lock()
            && let Some((_, checks)) = cached.as_ref()
        {
            s.vault_token_ttl = checks["vault"]["ttl_seconds"].as_f64();
        }
        s.check_last_success = self.state().check_last_success.clone();
        s
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

/// What a pass does for one policy before its schedule is looked at.
#[derive(Debug)]
enum Decision {
    /// Held (backing off after a failure, waiting, another process's lease): nothing now.
    Hold,
    /// This, now.
    Run(Work),
    /// Nothing pending: the schedule decides ([`scheduled`]).
    Schedule,
}

/// The pure core of a pass for one policy, from its rotations (most recent first), its open
/// request, its hold and the time. A hold stops scheduled work and, when it is another
/// process's lease, requests too; a request runs before anything else; an unfinished rotation
/// is resumed; a promoted one whose grace is over revokes; otherwise the schedule decides.
fn decide(
    rotations: &[&Rotation],
    request: Option<&journal::Request>,
    hold: Option<Hold>,
    now: DateTime<Utc>,
) -> Decision {
    let hold = hold.filter(|h| h.until > now);
    if hold.is_some_and(|h| h.why.holds_requests() || request.is_none()) {
        return Decision::Hold;
    }
    if let Some(q) = request {
        return Decision::Run(requested(q.clone()));
    }
    let unfinished: Vec<&&Rotation> = rotations.iter().filter(|r| !r.phase.is_terminal()).collect();
    if unfinished.iter().any(|r| r.phase != Phase::Promoted) {
        return Decision::Run(Work::Resume);
    }
    // Revocations: due once the grace is over (require_idle is checked by the engine each time;
    // a rotation waiting for idleness is looked at again on every pass).
    if unfinished.iter().any(|r| r.revoke_after.is_some_and(|at| at <= now)) {
        return Decision::Run(Work::Resume);
    }
    Decision::Schedule
}

/// The scheduled rotation of a policy that is `due`, once its start has come. It remembers the
/// latest rotation it was decided after, so the engine does not rotate again a policy another
/// process rotated meanwhile.
fn scheduled(due: &Due, rotations: &[&Rotation], now: DateTime<Utc>) -> Option<Work> {
    (due.next_start <= now).then(|| {
        Work::Rotate(engine::Request {
            reason: Some("scheduled".into()),
            decided_after: Some(rotations.first().map(|r| r.id.clone())),
            ..Default::default()
        })
    })
}

fn queued_message(q: &journal::Request) -> String {
    format!(
        "rotation {} of this policy is already queued (requested at {})",
        q.id,
        q.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// The work a recorded request asks for: a rotation with the request's ID.
fn requested(q: journal::Request) -> Work {
    Work::Rotate(engine::Request {
        reason: q.reason,
        compromised: q.compromised,
        revoke_first: false,
        id: Some(q.id),
        decided_after: None,
    })
}

/// Checks an `Idempotency-Key`: 1 to 255 bytes of visible ASCII. The message never repeats it.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
        ));
    }
    Ok(())
}

/// Rotations by policy, keeping the journal's order (most recent first).
fn group(history: &[Rotation]) -> HashMap<&str, Vec<&Rotation>> {
    let mut by_policy: HashMap<&str, Vec<&Rotation>> = HashMap::new();
    for r in history {
        by_policy.entry(r.policy.as_str()).or_default().push(r);
    }
    by_policy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn request(compromised: bool) -> journal::Request {
        journal::Request {
            id: "01a00000-0000-7000-8000-000000000001".into(),
            policy: "p".into(),
            reason: Some("asked".into()),
            compromised,
            idempotency_key: None,
            created_at: at("2026-12-01T10:00:00Z"),
            state: journal::RequestState::Queued,
        }
    }

    fn hold(why: HoldReason, until: &str) -> Option<Hold> {
        Some(Hold { failures: 1, until: at(until), why })
    }

    /// Each row: the policy's latest rotation (if any), its request, its hold, and what the pass
    /// does with it at 12:00.
    #[test]
    fn decide_table() {
        let now = at("2026-12-01T12:00:00Z");
        let promoted_waiting = {
            let mut r = Rotation::example("w", Phase::Promoted, "2026-12-01T11:00:00Z");
            r.revoke_after = Some(at("2026-12-02T11:00:00Z"));
            r
        };
        let promoted_due = {
            let mut r = Rotation::example("d", Phase::Promoted, "2026-11-01T11:00:00Z");
            r.revoke_after = Some(at("2026-12-01T11:59:00Z"));
            r
        };
        let staged = Rotation::example("s", Phase::Staged, "2026-12-01T11:58:00Z");
        let completed = Rotation::example("c", Phase::Completed, "2026-11-01T00:00:00Z");
        let asked = request(false);
        let cases: Vec<(&str, Option<&Rotation>, Option<&journal::Request>, Option<Hold>, &str)> = vec![
            ("never rotated", None, None, None, "schedule"),
            ("completed", Some(&completed), None, None, "schedule"),
            ("unfinished before promotion", Some(&staged), None, None, "resume"),
            ("promoted, grace running", Some(&promoted_waiting), None, None, "schedule"),
            ("promoted, grace over", Some(&promoted_due), None, None, "resume"),
            ("a request", Some(&completed), Some(&asked), None, "requested"),
            ("a request over an unfinished rotation", Some(&staged), Some(&asked), None, "requested"),
            ("backing off", Some(&staged), None, hold(HoldReason::Failed, "2026-12-01T12:05:00Z"), "hold"),
            (
                "backing off, a request",
                Some(&staged),
                Some(&asked),
                hold(HoldReason::Failed, "2026-12-01T12:05:00Z"),
                "requested",
            ),
            (
                "waiting, a request",
                Some(&promoted_waiting),
                Some(&asked),
                hold(HoldReason::Waiting, "2026-12-01T12:05:00Z"),
                "requested",
            ),
            (
                "another lease, a request",
                Some(&completed),
                Some(&asked),
                hold(HoldReason::Busy, "2026-12-01T12:00:30Z"),
                "hold",
            ),
            ("a hold that ended", Some(&staged), None, hold(HoldReason::Failed, "2026-12-01T11:59:59Z"), "resume"),
        ];
        for (case, latest, request, hold, want) in cases {
            let rotations: Vec<&Rotation> = latest.into_iter().collect();
            let got = match decide(&rotations, request, hold, now) {
                Decision::Hold => "hold",
                Decision::Schedule => "schedule",
                Decision::Run(Work::Resume) => "resume",
                Decision::Run(Work::Rotate(r)) if r.id.is_some() => "requested",
                Decision::Run(Work::Rotate(_)) => "rotate",
            };
            assert_eq!(got, want, "{case}");
        }
    }

    /// A request keeps its ID and asks for a compromise rotation when the request did.
    #[test]
    fn a_request_becomes_its_rotation() {
        let now = at("2026-12-01T12:00:00Z");
        let Decision::Run(Work::Rotate(r)) = decide(&[], Some(&request(true)), None, now) else { panic!() };
        assert_eq!(r.id.as_deref(), Some("01a00000-0000-7000-8000-000000000001"));
        assert!(r.compromised && r.decided_after.is_none(), "{r:?}");
    }

    /// The schedule's rotation starts once its start has come, remembering what it was decided
    /// after.
    #[test]
    fn scheduled_once_the_start_has_come() {
        let now = at("2026-12-01T12:00:00Z");
        let due = |next: &str| Due {
            at: at(next),
            next_start: at(next),
            overdue: false,
            basis: Basis::Journal,
            why: Vec::new(),
        };
        let last = Rotation::example("last", Phase::Completed, "2026-09-01T00:00:00Z");
        assert!(scheduled(&due("2026-12-01T12:00:01Z"), &[&last], now).is_none());
        let Some(Work::Rotate(r)) = scheduled(&due("2026-12-01T12:00:00Z"), &[&last], now) else { panic!() };
        assert_eq!((r.reason.as_deref(), r.decided_after), (Some("scheduled"), Some(Some("last".to_string()))));
        let Some(Work::Rotate(r)) = scheduled(&due("2026-11-01T00:00:00Z"), &[], now) else { panic!() };
        assert_eq!(r.decided_after, Some(None), "decided after no rotation at all");
    }
}
