//! `rotator serve`'s reconciler: one idempotent pass that takes no input, decides from the
//! policies, the journal and the time what work is due (scheduled rotations, revocations whose
//! grace ended, unfinished rotations, on-demand requests) and advances it under a global
//! concurrency limit. A tokio-cron-scheduler job wakes it on a tick; an on-demand request only
//! records itself in the journal and wakes it, so scheduled and on-demand rotations run the same
//! code path, and any process on the journal runs a request whichever one accepted it.
//! SIGHUP swaps in a new policy set only if it is valid as a whole; shutdown lets the steps in
//! flight finish and leaves the rest to be resumed.
//!
//! This file holds [`Daemon`], what the reconciler, the HTTP API and the signal handlers share,
//! and [`State`], its mutable part under one lock. The parts, by job:
//! - `decide`: pure: `plan`, the pass's jobs in slot order from what it read (policies,
//!   rotations, open requests) and what the daemon keeps (holds, running policies, credential
//!   dates), and `decide`, its per-policy part; table-tested without any server.
//! - `pass`: `run`, the ticker, and the pass that gathers `plan`'s inputs, raises overdue
//!   alerts, runs the jobs through the engine and then dates the credentials the journal does
//!   not know; the back-off and the orphan scan.
//! - `requests`: on-demand requests, recorded in the journal before they are answered.
//! - `reload`: SIGHUP, and the `ReloadStatus` it leaves.
//! - `reports`: notifications and metrics of outcomes, the `PassView` scrapes answer from, and
//!   the readiness checks of Toktra and Vault.
//!
//! Invariants: one code path runs rotations: requests, reloads and the ticker only wake the
//! pass, and only a pass hands work to the engine. A policy has at most one task in this process
//! (`State::running`, claimed before the task is spawned and released by a guard even when the
//! task panics); across processes the engine's lease decides. The lock on [`State`] is never
//! held across an `.await`.

mod decide;
mod pass;
mod reload;
mod reports;
mod requests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore, watch};

use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::policy::Policy;
use decide::{Dated, Hold};

pub use reload::{ReloadStatus, Reloaded, defined_channels, reachable, runnable};
pub use reports::{PassView, PolicyGauge};
pub use requests::{
    Accepted, MAX_IDEMPOTENCY_KEY_BYTES, MAX_REASON_BYTES, Refused, check_idempotency_key, check_reason,
};

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
    /// rotated (read from the destinations once, then kept; a guess only for one pass).
    basis: HashMap<String, Dated>,
    /// Policies already reported overdue for their current due time.
    overdue_sent: HashMap<String, DateTime<Utc>>,
    /// Policies held back from the next passes, so nothing is retried in a loop.
    holds: HashMap<String, Hold>,
    /// Orphans already notified (policy, credential).
    orphan_sent: BTreeSet<(String, String)>,
    /// Open requests of policies this set lacks, as of the last pass (by request ID; each is
    /// logged once, and `/metrics` counts them).
    elsewhere: BTreeSet<String>,
    /// Failures already notified (policy, rotation, error), so a stuck rotation retried later is
    /// reported once per distinct error; a policy's entries go when it succeeds.
    failure_sent: BTreeSet<(String, String, String)>,
    reload_status: ReloadStatus,
    /// What the last pass read and decided: scrapes and `/v1/policies` answer from it instead
    /// of reading the journal, destinations or Toktra themselves.
    last_pass: Option<Arc<PassView>>,
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
                elsewhere: BTreeSet::new(),
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

    /// Asks the reconciler to stop: no new work; rotations stop after their current step.
    pub fn stop(&self) {
        let _ = self.stopping.send(true);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }
}
