//! `rotator reconcile`: compares what Toktra has, what the destinations hold and what the journal
//! says, and reports the differences: orphans (credentials rotator minted that nothing uses and
//! nothing will revoke), drift (destinations that disagree, or hold a credential rotator did not
//! put there, or one Toktra no longer accepts), and stale staged values. With `fix`, it revokes
//! the orphans and discards the stale staged values, each under the policy's lease so that it
//! never races a rotation; drift needs a person and is only reported.

use std::collections::{BTreeSet, HashMap};

use crate::engine::Engine;
use crate::policy::{CredentialKind, Policy};
use crate::rotation::Phase;
use crate::rotation::Rotation;
use crate::store::{Handle, Store};
use crate::toktra::Listed;

/// What kind of difference a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A credential rotator minted that nothing serves and nothing will revoke.
    Orphan,
    /// Destinations of one policy serve different credentials.
    Drift,
    /// A destination serves a credential Toktra no longer accepts.
    Broken,
    /// A staged value no rotation will promote.
    StaleStaging,
    /// Unfinished work of a policy that is gone.
    Leftover,
    /// An unfinished rotation that keeps failing.
    Stuck,
    /// The policy's lease is held by a rotation in flight: not looked at.
    Busy,
    /// Something could not be read.
    Error,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Orphan => "orphan",
            FindingKind::Drift => "drift",
            FindingKind::Broken => "broken",
            FindingKind::StaleStaging => "stale_staging",
            FindingKind::Leftover => "leftover",
            FindingKind::Stuck => "stuck",
            FindingKind::Busy => "busy",
            FindingKind::Error => "error",
        }
    }
}

impl std::fmt::Display for FindingKind {
    /// Padded like a `str` (`{:<14}` lines up the text report).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One difference found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub policy: String,
    /// The credential the finding is about, when it is about one (an orphan).
    pub credential: Option<String>,
    pub detail: String,
    /// Whether `--fix` repaired it in this run.
    pub fixed: bool,
    /// What to do about it, when there is something to do.
    pub next_step: Option<String>,
}

/// The whole comparison.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Active credentials at Toktra not named like a rotator mint of any policy: left alone.
    pub unmanaged: usize,
    /// Their IDs.
    pub unmanaged_ids: Vec<String>,
}

impl Finding {
    fn new(kind: FindingKind, policy: &str, detail: String) -> Finding {
        let next_step = match kind {
            FindingKind::Orphan => Some("`rotator reconcile --fix` revokes it".to_string()),
            FindingKind::StaleStaging => Some("`rotator reconcile --fix` discards it".to_string()),
            FindingKind::Leftover => {
                Some("`rotator reconcile --fix` (or any `rotator rotate`) finishes it".to_string())
            }
            FindingKind::Drift | FindingKind::Broken => {
                Some(format!("`rotator rotate {policy}` makes one working credential current everywhere"))
            }
            FindingKind::Stuck => Some(format!("fix the cause, then `rotator rotate {policy}` resumes it")),
            FindingKind::Busy => Some("run again when the rotation in flight is done".to_string()),
            FindingKind::Error => None,
        };
        Finding { kind, policy: policy.into(), credential: None, detail, fixed: false, next_step }
    }

    /// Whether `--fix` can repair this kind of finding.
    pub fn fixable(&self) -> bool {
        matches!(self.kind, FindingKind::Orphan | FindingKind::StaleStaging | FindingKind::Leftover)
    }
}

impl Report {
    /// Problems that remain after this run.
    pub fn open(&self) -> usize {
        self.findings.iter().filter(|f| !f.fixed).count()
    }
}

/// The rotation a minted credential's name points to, if it is `<base>-<rotation uuid>`.
fn minted_by<'a>(name: &'a str, base: &str) -> Option<&'a str> {
    let id = name.strip_prefix(base)?.strip_prefix('-')?;
    uuid::Uuid::parse_str(id).is_ok().then_some(id)
}

impl Engine {
    /// Compares Toktra, the destinations and the journal for `policies`; with `fix`, revokes
    /// orphans and discards stale staged values.
    pub async fn reconcile(&self, policies: &[&Policy], fix: bool) -> Result<Report, crate::engine::Error> {
        let mut report = Report::default();
        let mut listed: HashMap<CredentialKind, Vec<Listed>> = HashMap::new();
        for kind in [CredentialKind::OauthClient, CredentialKind::ApiKey] {
            match self.toktra.list(kind).await {
                Ok(items) => {
                    listed.insert(kind, items);
                }
                Err(e) => report.findings.push(Finding::new(
                    FindingKind::Error,
                    "-",
                    format!("cannot list {kind}s at toktra: {}", e.reason()),
                )),
            }
        }
        let mut claimed: BTreeSet<(CredentialKind, String)> = BTreeSet::new();
        // What unfinished rotations of policies that are gone still hold is not an orphan of a
        // loaded policy (a renamed one keeps its credential base name): claimed first.
        let unfinished = self.journal.unfinished(None).await?;
        let leftovers = crate::leftover::leftovers(&unfinished, policies);
        for rotation in &leftovers {
            for id in rotation.new_credential_id.iter().chain(&rotation.old_credentials) {
                claimed.insert((rotation.kind, id.clone()));
            }
        }
        for policy in policies {
            let findings = self.reconcile_policy(policy, &listed, fix, &mut claimed).await?;
            report.findings.extend(findings);
        }
        // Unfinished rotations of policies that are gone: reported, and finished with `fix`.
        for rotation in leftovers {
            let detail = format!(
                "policy no longer exists (deleted or renamed); rotation {} is unfinished ({}): {}",
                rotation.id,
                rotation.phase,
                rotation.waiting.as_deref().or(rotation.error.as_deref()).unwrap_or("work left")
            );
            if !fix {
                report.findings.push(Finding::new(FindingKind::Leftover, &rotation.policy, detail));
                continue;
            }
            let finding = match self.finish_leftover(rotation.clone(), policies).await {
                Ok(outcome) => {
                    let mut finding = Finding::new(
                        FindingKind::Leftover,
                        &rotation.policy,
                        format!(
                            "{detail}; now {}{}",
                            outcome.phase,
                            outcome.waiting.or(outcome.error).map(|w| format!(": {w}")).unwrap_or_default()
                        ),
                    );
                    finding.fixed = outcome.phase.is_terminal();
                    finding
                }
                Err(e) => Finding::new(FindingKind::Leftover, &rotation.policy, format!("{detail}; not finished: {e}")),
            };
            report.findings.push(finding);
        }
        report.unmanaged_ids = listed
            .iter()
            .flat_map(|(kind, items)| items.iter().map(move |c| (*kind, c)))
            .filter(|(kind, c)| !claimed.contains(&(*kind, c.id.clone())))
            .filter(|(kind, c)| {
                !policies.iter().any(|p| p.credential.kind == *kind && minted_by(&c.name, &p.credential.name).is_some())
            })
            .map(|(_, c)| c.id.clone())
            .collect();
        report.unmanaged_ids.sort();
        report.unmanaged = report.unmanaged_ids.len();
        Ok(report)
    }

    /// One policy. With `fix`, the policy's lease is taken first and everything is read under
    /// it, so no rotation can change what the decisions are based on.
    async fn reconcile_policy(
        &self,
        policy: &Policy,
        listed: &HashMap<CredentialKind, Vec<Listed>>,
        fix: bool,
        claimed: &mut BTreeSet<(CredentialKind, String)>,
    ) -> Result<Vec<Finding>, crate::engine::Error> {
        let finding = |kind: FindingKind, detail: String| Finding::new(kind, &policy.name, detail);
        let held = if fix {
            match self.acquire(&policy.name).await {
                Ok(held) => Some(held),
                Err(crate::engine::Error::Busy { holder, .. }) => {
                    return Ok(vec![finding(
                        FindingKind::Busy,
                        format!("a rotation is in flight ({holder}); not checked, nothing fixed"),
                    )]);
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let result = self.inspect_policy(policy, listed, held.is_some(), claimed).await;
        if let Some(held) = held {
            self.release(&held).await;
        }
        result
    }

    async fn inspect_policy(
        &self,
        policy: &Policy,
        listed: &HashMap<CredentialKind, Vec<Listed>>,
        fix: bool,
        claimed: &mut BTreeSet<(CredentialKind, String)>,
    ) -> Result<Vec<Finding>, crate::engine::Error> {
        let kind = policy.credential.kind;
        let mut findings = Vec::new();
        let finding = |kind: FindingKind, detail: String| Finding::new(kind, &policy.name, detail);
        let rotations = self.journal.history(Some(&policy.name), 100_000).await?;
        let destinations: Vec<Handle> =
            match policy.destinations.iter().map(|d| Handle::new(d, kind, &self.clients)).collect() {
                Ok(d) => d,
                Err(e) => return Ok(vec![finding(FindingKind::Error, e.to_string())]),
            };

        // What every destination serves now, and what waits staged there.
        let mut current: Vec<(String, Option<String>)> = Vec::new();
        let mut staged: Vec<(usize, String)> = Vec::new();
        let mut unreadable = false;
        for (i, destination) in destinations.iter().enumerate() {
            match destination.current().await {
                Ok(record) => current.push((destination.label(), record.map(|r| r.id))),
                Err(e) => {
                    unreadable = true;
                    findings.push(finding(FindingKind::Error, e.to_string()));
                }
            }
            match destination.pending().await {
                Ok(ids) => staged.extend(ids.into_iter().map(|id| (i, id))),
                Err(e) => findings.push(finding(FindingKind::Error, e.to_string())),
            }
        }
        let served: BTreeSet<&str> = current.iter().filter_map(|(_, id)| id.as_deref()).collect();
        if served.len() > 1 {
            let detail = current
                .iter()
                .map(|(d, id)| format!("{d}: {}", id.as_deref().unwrap_or("(empty)")))
                .collect::<Vec<_>>();
            findings.push(finding(
                FindingKind::Drift,
                format!("destinations disagree on the current credential: {}", detail.join("; ")),
            ));
        }
        let unfinished: Vec<&Rotation> = rotations.iter().filter(|r| !r.phase.is_terminal()).collect();
        let journal_current =
            rotations.iter().find(|r| r.phase.is_promoted()).and_then(|r| r.new_credential_id.as_deref());
        if unfinished.iter().all(|r| r.phase.is_promoted())
            && let Some(expected) = journal_current
        {
            for (label, id) in &current {
                if id.as_deref() != Some(expected) {
                    findings.push(finding(
                        FindingKind::Drift,
                        format!(
                            "{label} holds {}, but rotator last made {expected} current (changed by hand?)",
                            id.as_deref().unwrap_or("nothing")
                        ),
                    ));
                }
            }
        }
        let active: Vec<&Listed> = listed.get(&kind).map(|l| l.iter().collect()).unwrap_or_default();
        if listed.contains_key(&kind) {
            for id in &served {
                if !active.iter().any(|c| c.id == *id) {
                    findings.push(finding(
                        FindingKind::Broken,
                        format!(
                            "the destinations serve {id}, which toktra does not list as active: consumers are failing"
                        ),
                    ));
                }
            }
        }

        // A rotation stuck before promotion keeps its new credential alive: say so, and how out.
        for r in unfinished.iter().filter(|r| !r.phase.is_promoted()) {
            let Some(error) = &r.error else { continue };
            let live = r
                .new_credential_id
                .as_ref()
                .filter(|id| active.iter().any(|c| &c.id == *id))
                .map(|id| format!("; its new credential {id} is active at toktra"))
                .unwrap_or_default();
            findings.push(finding(
                FindingKind::Stuck,
                format!(
                    "rotation {} is unfinished ({}): {error}{live}; `rotator rotate {}` resumes it once the cause is fixed",
                    r.id, r.phase, policy.name
                ),
            ));
        }

        // Credentials this policy legitimately keeps alive: what the destinations serve and what
        // unfinished rotations hold. (The journal's last current credential, if no readable
        // destination serves it any more, was replaced by hand: it is an orphan too. When a
        // destination cannot be read, nothing is revoked below.)
        let mut keep: BTreeSet<String> = served.iter().map(|s| s.to_string()).collect();
        for r in &unfinished {
            keep.extend(r.new_credential_id.clone());
            if r.phase == Phase::Promoted {
                keep.extend(r.old_credentials.iter().cloned());
            }
        }
        for id in &keep {
            claimed.insert((kind, id.clone()));
        }
        let in_flight: BTreeSet<&str> = unfinished.iter().map(|r| r.id.as_str()).collect();
        let orphans: Vec<&Listed> = active
            .iter()
            .filter(|c| !keep.contains(&c.id) && !claimed.contains(&(kind, c.id.clone())))
            .filter(|c| minted_by(&c.name, &policy.credential.name).is_some_and(|r| !in_flight.contains(r)))
            .copied()
            .collect();
        let stale: Vec<(usize, String)> = staged.into_iter().filter(|(_, r)| !in_flight.contains(r.as_str())).collect();
        for orphan in orphans {
            let mut f = finding(
                FindingKind::Orphan,
                format!(
                    "{} `{}` is active, named like a mint of this policy, and neither current nor awaiting revocation",
                    orphan.id, orphan.name
                ),
            );
            f.credential = Some(orphan.id.clone());
            if fix && unreadable {
                // What an unreadable destination serves is unknown: it may be this credential.
                f.detail.push_str("; not revoked while a destination cannot be read");
            } else if fix {
                match self.toktra.revoke(kind, &orphan.id).await {
                    Ok(_) => {
                        f.fixed = true;
                        f.detail.push_str("; revoked");
                        tracing::info!(policy = %policy.name, credential = %orphan.id, "revoked an orphaned credential");
                    }
                    Err(e) => f.detail.push_str(&format!("; revoking failed: {e}")),
                }
            }
            claimed.insert((kind, orphan.id.clone()));
            findings.push(f);
        }
        for (i, rotation_id) in stale {
            let destination = &destinations[i];
            let mut f = finding(
                FindingKind::StaleStaging,
                format!(
                    "{} holds a staged value of rotation {rotation_id}, which is not in flight",
                    destination.label()
                ),
            );
            if fix {
                match destination.discard(&rotation_id).await {
                    Ok(()) => {
                        f.fixed = true;
                        f.detail.push_str("; discarded");
                    }
                    Err(e) => f.detail.push_str(&format!("; discarding failed: {e}")),
                }
            }
            findings.push(f);
        }
        Ok(findings)
    }
}

#[cfg(test)]
mod tests {
    use super::minted_by;

    #[test]
    fn recognises_minted_names() {
        let id = "01a224bc-043a-737f-b000-614b0dd979c1";
        assert_eq!(minted_by(&format!("ci-{id}"), "ci"), Some(id));
        assert_eq!(minted_by(&format!("ci-pipeline-{id}"), "ci"), None);
        assert_eq!(minted_by("ci-legacy", "ci"), None);
        assert_eq!(minted_by(id, "ci"), None);
    }
}
