//! `rotator plan` and `rotator rotate --dry-run`: for each policy, the current credential and its
//! age, when the next rotation is due and why, the steps a rotation would take, and preflight
//! checks (the management credential may list credentials; every destination is reachable,
//! readable and writable as far as it can tell) that change nothing: no journal is created, no
//! value written, nothing minted.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::journal::Journal;
use crate::policy::{CredentialKind, Destination as Spec, Policy};
use crate::rotation::Phase;
use crate::rotation::Rotation;
use crate::schedule::{self, Basis, Due};
use crate::store::{Clients, Handle, Record, Store};
use crate::toktra::{self, Listed};

/// How a compromise-mode rotation would revoke (for `rotate --dry-run --compromised`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compromise {
    AfterPromotion,
    RevokeFirst,
}

/// One preflight check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub target: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyPlan {
    pub policy: String,
    pub kind: CredentialKind,
    pub current_credential: Option<String>,
    pub credential_age_seconds: Option<i64>,
    pub due: Due,
    /// The policy's latest rotation in the journal, finished or not.
    pub latest_rotation: Option<String>,
    /// An unfinished rotation the next run resumes first.
    pub in_flight: Option<String>,
    /// Old credentials still awaiting revocation.
    pub pending_revocations: Vec<String>,
    pub steps: Vec<String>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub at: DateTime<Utc>,
    pub management: Vec<Check>,
    pub policies: Vec<PolicyPlan>,
}

impl Plan {
    /// Every preflight check passed.
    pub fn ok(&self) -> bool {
        self.management.iter().chain(self.policies.iter().flat_map(|p| p.checks.iter())).all(|c| c.ok)
    }
}

/// Builds the plan for `policies` at `now`. Reads Toktra, the destinations and (if it exists)
/// the journal; writes nothing.
pub async fn plan(
    toktra: &toktra::Client,
    clients: &Clients,
    journal: Option<&Journal>,
    policies: &[&Policy],
    compromise: Option<Compromise>,
    now: DateTime<Utc>,
) -> Plan {
    let mut management = Vec::new();
    let mut listed: HashMap<CredentialKind, Vec<Listed>> = HashMap::new();
    // The kinds the policies use, each listed once; the listing is shared with what runs next
    // in this process (a run's `require_idle` checks).
    let kinds: Vec<CredentialKind> = [CredentialKind::OauthClient, CredentialKind::ApiKey]
        .into_iter()
        .filter(|k| policies.is_empty() || policies.iter().any(|p| p.credential.kind == *k))
        .collect();
    for kind in kinds {
        match toktra.list_since(kind, std::time::Instant::now()).await {
            Ok(items) => {
                management.push(Check {
                    target: format!("toktra: list {kind}s"),
                    ok: true,
                    detail: format!("{} active", items.len()),
                });
                listed.insert(kind, items);
            }
            Err(e) => management.push(Check { target: format!("toktra: list {kind}s"), ok: false, detail: e.reason() }),
        }
    }
    let history = match journal {
        Some(j) => match j.pass_view().await {
            Ok(h) => h,
            Err(e) => {
                management.push(Check { target: "journal".into(), ok: false, detail: e.to_string() });
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let mut plans = Vec::new();
    for policy in policies {
        let rotations: Vec<&Rotation> = history.iter().filter(|r| r.policy == policy.name).collect();
        plans
            .push(plan_policy(policy, &rotations, listed.get(&policy.credential.kind), clients, compromise, now).await);
    }
    Plan { at: now, management, policies: plans }
}

async fn plan_policy(
    policy: &Policy,
    rotations: &[&Rotation],
    listed: Option<&Vec<Listed>>,
    clients: &Clients,
    compromise: Option<Compromise>,
    now: DateTime<Utc>,
) -> PolicyPlan {
    let kind = policy.credential.kind;
    let mut checks = Vec::new();
    let mut current: Option<Record> = None;
    let mut notes: HashMap<String, String> = HashMap::new();
    for spec in &policy.destinations {
        let label = spec.label();
        let destination = match Handle::new(spec, kind, clients) {
            Ok(d) => d,
            Err(e) => {
                checks.push(Check { target: label, ok: false, detail: e.detail });
                continue;
            }
        };
        match destination.preflight().await {
            Ok(detail) => checks.push(Check { target: label.clone(), ok: true, detail }),
            Err(e) => checks.push(Check { target: label.clone(), ok: false, detail: e.detail }),
        }
        // Read what is served even where a write check failed: the age and the revocation
        // step depend on it.
        if current.is_none() {
            current = destination.current().await.ok().flatten();
        }
        notes.insert(label, stage_note(spec));
    }

    // When the current credential came to be: the journal, else the credential itself.
    let mut unknown_age = false;
    let promoted = rotations.iter().find(|r| r.phase.is_promoted());
    let (current_id, last) = match (promoted, &current) {
        (Some(r), _) => (r.new_credential_id.clone(), r.promoted_at.map(|t| (t, Basis::Journal))),
        (None, Some(record)) => {
            let created = listed.and_then(|l| l.iter().find(|c| c.id == record.id)).and_then(|c| c.created_at);
            let (since, known) = schedule::credential_since(record.rotated_at, created, now);
            unknown_age = !known;
            (Some(record.id.clone()), Some(since))
        }
        (None, None) => (None, None),
    };
    let mut due = schedule::due(&policy.name, &policy.schedule, last, now);
    if unknown_age {
        due.why.insert(
            0,
            "the current credential's age is unknown (no rotated_at, not listed at Toktra): counted from now".into(),
        );
    }
    let in_flight = rotations
        .iter()
        .find(|r| !r.phase.is_terminal() && !r.phase.is_promoted())
        .map(|r| format!("{} ({})", r.id, r.phase));
    let pending_revocations: Vec<String> = rotations
        .iter()
        .filter(|r| r.phase == Phase::Promoted)
        .flat_map(|r| r.old_credentials.iter().map(move |c| format!("{c} ({})", r.waiting.as_deref().unwrap_or("due"))))
        .collect();

    let scopes = if policy.credential.scopes.is_empty() {
        String::new()
    } else {
        format!(" with scopes [{}]", policy.credential.scopes.join(", "))
    };
    let mut steps = vec![format!("mint {kind} `{}-<rotation id>`{scopes}", policy.credential.name)];
    for spec in &policy.destinations {
        steps.push(format!("stage in {}: {}", spec.label(), notes.get(&spec.label()).cloned().unwrap_or_default()));
    }
    steps.push(match kind {
        CredentialKind::OauthClient => {
            "verify: exchange the new client's secret for a token, call GET /usage?limit=1; read every destination back"
                .into()
        }
        CredentialKind::ApiKey => {
            "verify: call GET /usage?limit=1 with the new key; read every destination back".into()
        }
    });
    steps.push(format!("promote in {}", policy.destinations.iter().map(Spec::label).collect::<Vec<_>>().join(", ")));
    let idle = policy
        .revoke
        .require_idle
        .map(|i| format!(", once unused for {}", crate::duration::format(i)))
        .unwrap_or_default();
    steps.push(match (&current_id, compromise) {
        (None, _) => "nothing to revoke (no current credential)".into(),
        (Some(id), None) => format!(
            "revoke {id} after a grace of {}{idle}; check it is rejected",
            crate::duration::format(policy.revoke.grace)
        ),
        (Some(id), Some(Compromise::AfterPromotion)) => {
            format!("compromise mode: revoke {id} (and any credential still in its grace) right after promotion, whatever the grace")
        }
        (Some(_), Some(Compromise::RevokeFirst)) => "compromise mode: already revoked before the mint (step 1)".into(),
    });
    if let (Some(id), Some(Compromise::RevokeFirst)) = (&current_id, compromise) {
        steps.insert(
            0,
            format!("compromise mode: revoke {id} BEFORE minting; consumers fail until the new credential is promoted"),
        );
    }
    PolicyPlan {
        policy: policy.name.clone(),
        kind,
        credential_age_seconds: last
            .filter(|(_, b)| *b != Basis::Nothing && !unknown_age)
            .map(|(t, _)| (now - t).num_seconds()),
        current_credential: current_id,
        due,
        latest_rotation: rotations.first().map(|r| r.id.clone()),
        in_flight,
        pending_revocations,
        steps,
        checks,
    }
}

/// How a destination stages a value, for the plan's steps.
fn stage_note(spec: &Spec) -> String {
    match spec {
        Spec::AwsSecretsManager(_) => "PutSecretValue as version <rotation id> labelled AWSPENDING".into(),
        Spec::Vault(d) => format!("write {}/{} with check-and-set", d.mount, d.staging_path()),
        Spec::File(d) => format!("write {}.pending (0600)", d.path.display()),
    }
}
