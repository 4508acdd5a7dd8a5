//! Rotations whose policy is gone: deleted, or renamed (the journal keys rotations by policy
//! name, so a renamed policy starts afresh under its new name). Their work is not abandoned: an
//! old credential in its grace is still revoked when the grace ends, and a mint that never got
//! promoted is still rolled back. The journal knows the credential IDs and names; what it cannot
//! tell without the policy (whether a destination serves a credential) is read from the loaded
//! policies' destinations that carry the same label, and where none does, the work that would
//! need it is reported (in `status`, `reconcile` and the run's outcome) instead of guessed.

use chrono::Utc;

use crate::engine::{Engine, Error, HELD, Outcome};
use crate::journal::StepStatus;
use crate::policy::{Policy, canonical_label};
use crate::rotation::Phase;
use crate::rotation::Rotation;
use crate::store::{Handle, Store};

/// The unfinished rotations in `history` whose policy is not among `policies`.
pub fn leftovers<'a>(history: &'a [Rotation], policies: &[&Policy]) -> Vec<&'a Rotation> {
    history.iter().filter(|r| !r.phase.is_terminal() && !policies.iter().any(|p| p.name == r.policy)).collect()
}

/// What the journal's destination labels still reach through the loaded policies.
struct Reach {
    destinations: Vec<Handle>,
    /// Labels no loaded policy writes (or whose client this process lacks).
    unreadable: Vec<String>,
}

impl Engine {
    /// Finishes, under the gone policy's lease, what `rotation` left: revocation after the
    /// grace (held while a destination or another policy still serves an old credential), or a
    /// rollback of an unpromoted mint. `policies` are the loaded ones, for their destinations.
    pub async fn finish_leftover(&self, rotation: Rotation, policies: &[&Policy]) -> Result<Outcome, Error> {
        let held = self.acquire(&rotation.policy).await?;
        let result = self.finish_leftover_locked(rotation, policies, &held.lease).await;
        self.release(&held).await;
        result
    }

    async fn finish_leftover_locked(
        &self,
        mut rotation: Rotation,
        policies: &[&Policy],
        lease: &crate::journal::Lease,
    ) -> Result<Outcome, Error> {
        let started = Utc::now();
        // Read again under the lease: another process may have finished it meanwhile.
        if let Some(fresh) = self.journal.get(&rotation.id).await? {
            rotation = fresh;
        }
        let gone = format!("policy `{}` no longer exists (deleted or renamed)", rotation.policy);
        let reach = self.reach(&rotation, policies);
        let mut revoked = Vec::new();
        match rotation.phase {
            phase if phase.is_terminal() => {}
            Phase::Promoted => {
                let now = Utc::now();
                if !rotation.compromised && rotation.revoke_after.is_some_and(|at| at > now) {
                    let waiting = format!(
                        "{gone}; its old credentials are revoked after {}",
                        rotation.revoke_after.map(|at| at.to_rfc3339()).unwrap_or_default()
                    );
                    if rotation.waiting.as_deref() != Some(waiting.as_str()) {
                        rotation.waiting = Some(waiting);
                        self.save_leftover(&mut rotation, lease).await?;
                    }
                } else {
                    self.revoke_leftover(&mut rotation, &reach, &gone, &mut revoked, lease).await?;
                }
            }
            Phase::Verified => {
                // Promotion may have begun: roll back only when every destination can be read
                // and none serves the new credential.
                let serving = self.serving_new(&rotation, &reach).await;
                match serving {
                    Ok(false) if reach.unreadable.is_empty() => {
                        self.roll_back_leftover(&mut rotation, &reach, &gone, &mut revoked, lease).await?
                    }
                    Ok(true) => {
                        rotation.error = Some(format!(
                            "{gone} and a destination serves its new credential {}: restore the policy to let the rotation finish",
                            rotation.new_credential_id.as_deref().unwrap_or("-")
                        ));
                        self.save_leftover(&mut rotation, lease).await?;
                    }
                    _ => {
                        rotation.error = Some(format!(
                            "{gone} and its rotation may have promoted in part; [{}] cannot be read without it: \
                             restore the policy to let the rotation finish",
                            reach.unreadable.join(", ")
                        ));
                        self.save_leftover(&mut rotation, lease).await?;
                    }
                }
            }
            // Nothing was promoted: no consumer reads the new credential.
            _ => self.roll_back_leftover(&mut rotation, &reach, &gone, &mut revoked, lease).await?,
        }
        Ok(self.outcome(true, &rotation, revoked, &[], started))
    }

    fn reach(&self, rotation: &Rotation, policies: &[&Policy]) -> Reach {
        let mut reach = Reach { destinations: Vec::new(), unreadable: Vec::new() };
        for label in &rotation.destinations {
            let label = canonical_label(label);
            let found = policies
                .iter()
                .flat_map(|p| p.destinations.iter())
                .find(|d| d.label() == label)
                .and_then(|d| Handle::new(d, rotation.kind, &self.clients).ok());
            match found {
                Some(destination) => reach.destinations.push(destination),
                None => reach.unreadable.push(label),
            }
        }
        reach
    }

    async fn serving_new(&self, rotation: &Rotation, reach: &Reach) -> Result<bool, crate::store::Error> {
        for destination in &reach.destinations {
            if let Some(current) = destination.current().await?
                && (current.rotation_id.as_deref() == Some(rotation.id.as_str())
                    || rotation.new_credential_id.as_deref() == Some(current.id.as_str()))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn revoke_leftover(
        &self,
        rotation: &mut Rotation,
        reach: &Reach,
        gone: &str,
        revoked: &mut Vec<String>,
        lease: &crate::journal::Lease,
    ) -> Result<(), Error> {
        let old: Vec<String> = rotation
            .old_credentials
            .iter()
            .filter(|c| Some(*c) != rotation.new_credential_id.as_ref() && !rotation.revoked_credentials.contains(c))
            .cloned()
            .collect();
        let mut reasons = Vec::new();
        for destination in &reach.destinations {
            match destination.current().await {
                Ok(Some(current)) if old.contains(&current.id) => {
                    reasons.push(format!("{} serves {} again", destination.label(), current.id))
                }
                Ok(_) => {}
                Err(e) => reasons.push(format!("{} cannot be read: {e}", destination.label())),
            }
        }
        let mine: Vec<String> = reach.destinations.iter().map(|d| d.label()).collect();
        for id in &old {
            for other in self.journal.holders(id, &rotation.policy).await? {
                if !other.destinations.iter().all(|l| mine.contains(&canonical_label(l)))
                    && !self.deleted_and_done(&other)
                {
                    reasons.push(format!("policy `{}` still serves {id}", other.policy));
                }
            }
        }
        if !reasons.is_empty() {
            rotation.waiting = Some(format!("{HELD}: {}", reasons.join("; ")));
            return self.save_leftover(rotation, lease).await;
        }
        let mut failures = Vec::new();
        for id in &old {
            self.journal
                .step(&rotation.id, "revoke", StepStatus::Intent, &format!("revoke {id} ({gone})"), lease)
                .await?;
            match self.toktra.revoke(rotation.kind, id).await {
                Ok(result) => {
                    rotation.revoked_credentials.push(id.clone());
                    revoked.push(id.clone());
                    self.journal
                        .step(&rotation.id, "revoke", StepStatus::Done, &format!("{id}: {result}"), lease)
                        .await?;
                }
                Err(e) => {
                    self.journal.step(&rotation.id, "revoke", StepStatus::Failed, &e.to_string(), lease).await?;
                    failures.push(e.to_string());
                }
            }
        }
        if failures.is_empty() {
            rotation.phase = Phase::Completed;
            rotation.waiting = None;
            rotation.error = None;
            rotation.revoked_at = Some(Utc::now());
            let detail = format!("revoked [{}]; {gone}", old.join(", "));
            self.save_leftover(rotation, lease).await?;
            self.journal.step(&rotation.id, "complete", StepStatus::Done, &detail, lease).await?;
        } else {
            rotation.error = Some(failures.join("; "));
            self.save_leftover(rotation, lease).await?;
        }
        Ok(())
    }

    async fn roll_back_leftover(
        &self,
        rotation: &mut Rotation,
        reach: &Reach,
        gone: &str,
        revoked: &mut Vec<String>,
        lease: &crate::journal::Lease,
    ) -> Result<(), Error> {
        self.journal.step(&rotation.id, "rollback", StepStatus::Intent, &format!("{gone}; roll back"), lease).await?;
        let result: Result<(), String> = async {
            for destination in &reach.destinations {
                destination.discard(&rotation.id).await.map_err(|e| e.to_string())?;
            }
            let kind = rotation.kind;
            if let Some(id) = &rotation.new_credential_id {
                self.toktra.revoke(kind, id).await.map_err(|e| e.to_string())?;
                revoked.push(id.clone());
            }
            // A mint whose answer never arrived is found by the rotation's name.
            let listed = self.toktra.list(kind).await.map_err(|e| e.to_string())?;
            let strays: Vec<_> =
                listed.into_iter().filter(|c| c.name == rotation.credential_name && !revoked.contains(&c.id)).collect();
            for stray in strays {
                self.toktra.revoke(kind, &stray.id).await.map_err(|e| e.to_string())?;
                revoked.push(stray.id);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                let staged = if reach.unreadable.is_empty() {
                    String::new()
                } else {
                    format!("; staged values may remain in [{}]", reach.unreadable.join(", "))
                };
                rotation.phase = Phase::Failed;
                rotation.error = Some(format!("{gone}; rolled back{staged}"));
                self.save_leftover(rotation, lease).await?;
                let detail = format!("rolled back; revoked [{}]{staged}", revoked.join(", "));
                self.journal.step(&rotation.id, "rollback", StepStatus::Done, &detail, lease).await?;
            }
            Err(e) => {
                rotation.error = Some(format!("{gone}; rolling back failed: {e}"));
                self.save_leftover(rotation, lease).await?;
                self.journal.step(&rotation.id, "rollback", StepStatus::Failed, &e, lease).await?;
            }
        }
        Ok(())
    }

    async fn save_leftover(&self, rotation: &mut Rotation, lease: &crate::journal::Lease) -> Result<(), Error> {
        rotation.updated_at = Utc::now();
        if rotation.phase.is_terminal() && rotation.finished_at.is_none() {
            rotation.finished_at = Some(rotation.updated_at);
        }
        Ok(self.journal.update(rotation, lease).await?)
    }
}
