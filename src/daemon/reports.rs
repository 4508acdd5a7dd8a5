//! What the daemon tells: notifications and metrics of outcomes (a failure once per policy,
//! rotation and error), the [`PassView`] a pass leaves so that `/metrics` and `/v1/policies`
//! answer without reading the journal, a destination or Toktra, and the readiness checks of
//! Toktra and Vault (cached for a minute).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::engine::{self, Outcome, Status};
use crate::journal;
use crate::metrics::Snapshot;
use crate::notify::Event;
use crate::policy::Policy;
use crate::rotation::{Phase, Rotation};
use crate::schedule::Due;

use super::Daemon;
use super::decide::group;

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

/// A policy's gauges as a pass saw them (its credential's age is computed when scraped).
#[derive(Debug)]
pub struct PolicyGauge {
    pub policy: Arc<str>,
    pub promoted_at: Option<DateTime<Utc>>,
    /// Unix seconds.
    pub next_start: f64,
    pub overdue: bool,
}

impl Daemon {
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
    pub(super) async fn view(&self, rotations: Vec<Rotation>, now: DateTime<Utc>) -> PassView {
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

    pub(super) fn report(&self, policy: &Policy, o: &Outcome) {
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

    /// Gauges for `/metrics`, from the last pass (a scrape reads nothing itself).
    pub async fn snapshot(&self) -> Snapshot {
        let now = Utc::now();
        let Ok(view) = self.pass_state().await else { return Snapshot::default() };
        // One lock for both: a second `state()` in the same expression would wait for the first.
        let (in_flight, requests_elsewhere) = {
            let state = self.state();
            (state.running.len() as u64, state.elsewhere.len() as u64)
        };
        let mut s = Snapshot {
            policies: self.policies().len() as u64,
            in_flight,
            requests_elsewhere,
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
}
