//! After promotion: revoke the old credentials once their grace is over and nothing serves them
//! (each checked refused with its own secret), and before it: roll back, never revoking what a
//! destination serves, and a `--revoke-first` rotation that only goes forward.

use super::*;

impl Engine {
    pub(super) async fn revoke_old(&self, work: &mut InFlight<'_>) -> Result<Flow, StepError> {
        let kind = work.rotation.kind;
        let new_id = work.rotation.new_credential_id.clone();
        let old: Vec<String> = work
            .rotation
            .old_credentials
            .iter()
            .filter(|id| Some(*id) != new_id.as_ref() && !work.rotation.revoked_credentials.contains(id))
            .cloned()
            .collect();
        // A create whose answer was lost may have made a second credential under this
        // rotation's name; it is not the new credential, so it goes. Only then is the account
        // listed: otherwise the mint is known to have made exactly one credential.
        if create_was_uncertain(&self.journal.steps(&work.rotation.id).await?) {
            let swept = self.revoke_named(work, new_id.as_deref()).await?;
            work.revoked.extend(swept);
        }
        if !old.is_empty()
            && let Some(why) = self.still_served(work, &old).await?
        {
            tracing::warn!(policy = %work.policy.name, rotation = %work.rotation.id, "{why}");
            // Why it waits now, not an earlier failure, is what status shows.
            work.rotation.error = None;
            return self.set_waiting(work, why).await;
        }
        if !old.is_empty()
            && !work.rotation.compromised
            && let Some(idle) = work.policy.revoke.require_idle
        {
            // Last use as listed within the last half minute: one listing serves every
            // rotation of the run that needs it.
            let since = Instant::now().checked_sub(SHARED_LISTING_AGE).unwrap_or_else(Instant::now);
            let listed = self.toktra.list_since(kind, since).await?;
            let now = Utc::now();
            let busy: Vec<String> = listed
                .iter()
                .filter(|c| old.contains(&c.id))
                .filter_map(|c| {
                    c.last_used_at
                        .filter(|used| now - *used < chrono::Duration::from_std(idle).unwrap_or_default())
                        .map(|used| (c, used))
                })
                .map(|(c, used)| {
                    format!("{} last used at {}", c.id, used.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                })
                .collect();
            if !busy.is_empty() {
                let waiting = format!(
                    "still in use: {}; revoked once idle for {}",
                    busy.join(", "),
                    crate::duration::format(idle)
                );
                tracing::info!(policy = %work.policy.name, rotation = %work.rotation.id, "{waiting}");
                return self.set_waiting(work, waiting).await;
            }
        }
        // A later run (after a grace) no longer holds the old secrets it read at the start; the
        // destinations keep them as their previous values, so the revocation can still be checked.
        for destination in &work.destinations {
            match destination.previous().await {
                Ok(Some(record)) if old.contains(&record.id) && !work.old_secrets.contains_key(&record.id) => {
                    work.old_secrets.insert(record.id.clone(), record.secret);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(policy = %work.policy.name, error = %e, "cannot read the previous value back; the revocation is checked by listing only")
                }
            }
        }
        // Every old credential is tried even when one fails: after a suspected exposure each
        // one revoked counts, and a refused one must not shield the others.
        let mut failures = Vec::new();
        for (i, id) in old.iter().enumerate() {
            self.note(work, "revoke", StepStatus::Intent, &format!("revoke {id}")).await?;
            match self.revoke_one(work, id).await {
                Ok(result) => {
                    if !work.rotation.revoked_credentials.contains(id) {
                        work.rotation.revoked_credentials.push(id.clone());
                        self.save(&mut work.rotation, &work.lease).await?;
                    }
                    crash_point(&format!("revoked-{i}"));
                    let detail = match result {
                        (revoked, true) => format!("{id}: {revoked}; its secret was presented and refused"),
                        (revoked, false) => {
                            format!("{id}: {revoked}; no longer listed (its secret was not at hand to present)")
                        }
                    };
                    self.note(work, "revoke", StepStatus::Done, &detail).await?;
                    work.revoked.push(id.clone());
                }
                Err(error) => {
                    self.note(work, "revoke", StepStatus::Failed, &error.to_string()).await?;
                    failures.push(error);
                }
            }
        }
        if !failures.is_empty() {
            return Err(StepError::Several(failures));
        }
        if work.rotation.revoked_at.is_none() || !old.is_empty() {
            work.rotation.revoked_at = Some(Utc::now());
        }
        let detail = if old.is_empty() {
            "no old credential to revoke".to_string()
        } else {
            format!("revoked [{}]", old.join(", "))
        };
        self.advance(work, Phase::Completed, "complete", &detail).await
    }

    /// Why the old credentials must not be revoked now, if so: a destination of this policy
    /// serves one of them again (an operator rolled back to `AWSPREVIOUS` or ran `vault kv
    /// rollback` during the grace), or the journal says another policy still serves one (two
    /// policies adopted the same legacy credential). The journal's word alone is not enough to
    /// cut off consumers.
    pub(super) async fn still_served(&self, work: &InFlight<'_>, old: &[String]) -> Result<Option<String>, StepError> {
        let mut reasons = Vec::new();
        for destination in &work.destinations {
            if let Some(current) = self.retry(work.deadline, || destination.current()).await?
                && old.contains(&current.id)
            {
                reasons.push(format!("{} serves {} again", destination.label(), current.id));
            }
        }
        let mine: Vec<String> = work.destinations.iter().map(|d| d.label()).collect();
        for id in old {
            for other in self.journal.holders(id, &work.policy.name).await? {
                // Its places are all ours (a renamed policy): read above, as they are now.
                if other.destinations.iter().all(|l| mine.contains(&crate::policy::canonical_label(l))) {
                    continue;
                }
                if self.deleted_and_done(&other) {
                    tracing::warn!(policy = %work.policy.name, credential = %id, deleted = %other.policy, destinations = ?other.destinations, "a deleted policy's destinations may still hold this credential; it is revoked as scheduled");
                    continue;
                }
                reasons.push(format!("policy `{}` still serves {id}", other.policy));
            }
        }
        Ok((!reasons.is_empty()).then(|| format!("{HELD}: {}", reasons.join("; "))))
    }

    /// Whether `rotation`'s policy was deleted and left nothing unfinished: nobody manages its
    /// destinations any more, so what they held does not keep another policy's revocation
    /// waiting forever. (Unfinished work of deleted policies is finished by `leftover`.)
    pub(crate) fn deleted_and_done(&self, rotation: &Rotation) -> bool {
        rotation.phase.is_terminal()
            && self
                .options
                .loaded
                .read()
                .ok()
                .and_then(|l| l.as_ref().map(|l| !l.contains(&rotation.policy)))
                .unwrap_or(false)
    }

    /// Revokes one old credential and checks that it took: its secret (read at the start, or
    /// back from a destination's previous value) must now be rejected, and it must no longer be
    /// listed as active.
    /// Returns whether the secret was presented.
    pub(super) async fn revoke_one(&self, work: &InFlight<'_>, id: &str) -> Result<(toktra::Revoked, bool), StepError> {
        let kind = work.rotation.kind;
        let result = self.toktra.revoke(kind, id).await?;
        if let Some(secret) = work.old_secrets.get(id) {
            tracing::debug!(policy = %work.policy.name, credential = id, "checking that the revoked credential is rejected");
            match self.toktra.probe_revoked(kind, id, secret, work.deadline).await {
                Ok(Probe::Rejected) => {}
                Ok(Probe::Accepted) => return Err(format!("{id} still authenticates after revocation").into()),
                Err(e) => return Err(e.into()),
            }
        }
        // Without the secret, the listing is the only way to see that the revocation took.
        if !work.old_secrets.contains_key(id) && self.toktra.list(kind).await?.iter().any(|c| c.id == id) {
            return Err(format!("{id} is still listed after revocation").into());
        }
        Ok((result, work.old_secrets.contains_key(id)))
    }

    pub(super) async fn roll_back(&self, work: &mut InFlight<'_>) -> Result<Flow, StepError> {
        self.note(work, "rollback", StepStatus::Intent, "revoke the new credential and discard staged values").await?;
        let kind = work.rotation.kind;
        let mut revoked = Vec::new();
        if let Some(id) = work.rotation.new_credential_id.clone() {
            // Never revoke what a destination serves: that is an outage, whatever the journal says.
            for destination in &work.destinations {
                if let Some(current) = self.retry(work.deadline, || destination.current()).await?
                    && current.id == id
                {
                    let message = format!(
                        "{} serves the new credential {id}; not rolling back (it would cut its consumers off)",
                        destination.label()
                    );
                    return Err(self.failed(work, "rollback", message).await);
                }
            }
            if let Err(e) = self.toktra.revoke(kind, &id).await {
                return Err(self.failed(work, "rollback", e).await);
            }
            revoked.push(id);
        }
        // A mint whose answer never arrived is found by the rotation's name.
        match self.revoke_named(work, None).await {
            Ok(strays) => revoked.extend(strays),
            Err(e) => return Err(self.failed(work, "rollback", e).await),
        }
        // Discarded after the revocation: whatever stays staged is then dead, and a staged value
        // that cannot be removed (or a destination the policy no longer names) is reported for
        // `reconcile --fix` rather than keeping a live key or wedging the policy. Only a failure
        // that may pass (Vault down) keeps the rollback going on a later run.
        let mut left = work.unreachable.clone();
        for destination in &work.destinations {
            match self.retry(work.deadline, || destination.discard(&work.rotation.id)).await {
                Ok(()) => {}
                Err(e) if e.is_transient() => return Err(self.failed(work, "rollback", e).await),
                Err(e) => left.push(e.to_string()),
            }
        }
        if !left.is_empty() {
            let message = format!(
                "{}; staged values may remain ({}; `rotator reconcile --fix` discards them)",
                work.rotation.error.clone().unwrap_or_else(|| "rolled back".into()),
                left.join("; ")
            );
            work.rotation.error = Some(message);
        }
        work.revoked.extend(revoked.clone());
        if Self::outage(&work.rotation) {
            let detail = format!("cleaned up the failed attempt; revoked [{}]", revoked.join(", "));
            return self.mint_again(work, &detail).await;
        }
        let detail = format!("rolled back; revoked [{}]; the old credential stays current", revoked.join(", "));
        self.advance(work, Phase::Failed, "rollback", &detail).await
    }

    /// `--revoke-first` revoked the old credentials already: consumers have no working
    /// credential until a new one is promoted.
    pub(super) fn outage(rotation: &Rotation) -> bool {
        rotation.revoke_first && rotation.revoked_at.is_some()
    }

    /// During a `--revoke-first` outage a rotation only rolls forward: the failed attempt was
    /// cleaned up (its credential revoked), and a new one is minted after a backoff, until the
    /// run's deadline; then the rotation stays unfinished, saying so, for the next run.
    pub(super) async fn mint_again(&self, work: &mut InFlight<'_>, detail: &str) -> Result<Flow, StepError> {
        let cause = work.rotation.error.clone().unwrap_or_default();
        let message = format!("{NO_WORKING_CREDENTIAL}; the last attempt failed: {cause}");
        work.rotation.phase = Phase::Started;
        work.rotation.new_credential_id = None;
        work.rotation.new_fingerprint = None;
        work.rotation.error = Some(message.clone());
        work.new = None;
        work.memory = Memory { started_here: true, has_secret: false };
        self.save(&mut work.rotation, &work.lease).await?;
        self.note(work, "retry", StepStatus::Done, &format!("{detail}; minting again ({NO_WORKING_CREDENTIAL})"))
            .await?;
        work.attempts += 1;
        let left = work.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StepError::Outage(message));
        }
        let delay = MINT_BACKOFF.delay(work.attempts).min(left);
        tracing::error!(policy = %work.policy.name, rotation = %work.rotation.id, attempt = work.attempts, delay_ms = delay.as_millis() as u64, "{NO_WORKING_CREDENTIAL}; minting again");
        tokio::time::sleep(delay).await;
        Ok(Flow::Continue)
    }
}
