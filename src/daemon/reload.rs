//! SIGHUP: the policy directory read again, on a thread of its own with a time bound, and the
//! set swapped in whole only when it is valid and this service can run it (its destinations and
//! channels are configured here); otherwise the previous set keeps running, and
//! [`ReloadStatus`] says why for `/metrics` and `/readyz`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::policy::{self, Policy};
use crate::store::{self, Handle};

use super::Daemon;

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

impl Daemon {
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
        let policies = match loaded.and_then(|policies| {
            runnable(&policies, &self.engine.clients, &|c| self.notifier.knows(c)).map(|()| policies)
        }) {
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

    /// The last reload (or the load at start), for `/metrics` and `/readyz`.
    pub fn reload_status(&self) -> ReloadStatus {
        self.state().reload_status.clone()
    }
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

/// What only the service can decide about a valid policy set, on every reload and (in two
/// steps, [`defined_channels`] before connecting) at start: destinations that only the default
/// AWS region makes one secret, destinations `clients` cannot reach, and notification channels
/// the configuration does not define (`knows`).
pub fn runnable(
    policies: &[Policy],
    clients: &store::Clients,
    knows: &dyn Fn(&str) -> bool,
) -> Result<(), policy::Invalid> {
    let mut problems = match reachable(policies, clients) {
        Ok(()) => Vec::new(),
        Err(invalid) => invalid.0,
    };
    if let Err(invalid) = defined_channels(policies, knows) {
        problems.extend(invalid.0);
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(policy::Invalid(problems)),
    }
}

/// The notification channels of `policies` that the configuration does not define (`knows`):
/// pure, so start checks it before connecting to anything.
pub fn defined_channels(policies: &[Policy], knows: &dyn Fn(&str) -> bool) -> Result<(), policy::Invalid> {
    let problems: Vec<policy::Problem> = policies
        .iter()
        .flat_map(|p| {
            p.notify.iter().filter(|c| !knows(c)).map(|channel| policy::Problem {
                location: p.source.clone(),
                field: "notify".into(),
                message: format!("channel `{channel}` is not defined in the configuration"),
            })
        })
        .collect();
    match problems.is_empty() {
        true => Ok(()),
        false => Err(policy::Invalid(problems)),
    }
}

/// Whether `clients` reach every destination of `policies`, and no two of them are one secret
/// by the default AWS region. A destination they cannot serve is reported with why.
pub fn reachable(policies: &[Policy], clients: &store::Clients) -> Result<(), policy::Invalid> {
    let region = clients.aws.as_ref().and_then(|sdk| sdk.region()).map(|r| r.to_string());
    policy::check_default_region(policies, region.as_deref())?;
    let mut problems = Vec::new();
    for p in policies {
        for (i, d) in p.destinations.iter().enumerate() {
            if let Err(e) = Handle::new(d, p.credential.kind, clients) {
                problems.push(policy::Problem {
                    location: p.source.clone(),
                    field: format!("destinations[{i}]"),
                    message: format!("{} cannot be served by this service: {}", d.label(), e.detail),
                });
            }
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(policy::Invalid(problems)),
    }
}
