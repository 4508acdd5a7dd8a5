//! The steps up to promotion: mint (never retried blindly: a lost answer is swept by name),
//! stage, verify with the credential's own budget and a read-back, promote, and the recovery of a
//! crashed run's secret from a staged copy. Each records its intent before its side effect.

use super::*;

impl Engine {
    pub(super) async fn revoke_first(&self, work: &mut InFlight<'_>) -> Result<Flow, StepError> {
        let kind = work.rotation.kind;
        // Recorded before the first call: from here consumers may have nothing that works, so
        // the rotation only rolls forward (`outage`), even if this step fails or the process dies
        // half-way; credentials it did not get to are revoked right after promotion.
        work.rotation.revoked_at = Some(Utc::now());
        self.save(&mut work.rotation, &work.lease).await?;
        for id in work.rotation.old_credentials.clone() {
            self.note(
                work,
                "revoke-first",
                StepStatus::Intent,
                &format!("revoke {id} before minting (outage accepted)"),
            )
            .await?;
            if let Err(e) = self.toktra.revoke(kind, &id).await {
                return Err(self.failed(work, "revoke-first", e).await);
            }
            work.revoked.push(id.clone());
            work.rotation.revoked_credentials.push(id.clone());
            self.save(&mut work.rotation, &work.lease).await?;
            self.note(work, "revoke-first", StepStatus::Done, &format!("revoked {id}")).await?;
        }
        tracing::warn!(policy = %work.policy.name, rotation = %work.rotation.id, "exposed credentials revoked before minting; consumers fail until promotion");
        Ok(Flow::Continue)
    }

    pub(super) async fn mint(&self, work: &mut InFlight<'_>) -> Result<Flow, StepError> {
        let policy = work.policy;
        let kind = work.rotation.kind;
        let name = work.rotation.credential_name.clone();
        self.note(work, "mint", StepStatus::Intent, &format!("create {kind} `{name}`")).await?;
        crash_point("minting");
        let description = format!("rotator policy {} rotation {}", policy.name, work.rotation.id);
        // The client already retried; a failure that may still pass (answers lost a few times in
        // a row) gets one more round after a pause rather than failing the rotation at once.
        // Whatever a lost answer created is found by name and revoked first. (A longer outage
        // fails the rotation, which is reported and retried by a later run.)
        let mut attempt = 0u32;
        let minted = loop {
            match self.toktra.create(kind, &name, &policy.credential.scopes, &description).await {
                Ok(minted) => break minted,
                Err(e) if (e.is_transient() || e.is_ambiguous()) && attempt < 1 && Instant::now() < work.deadline => {
                    attempt += 1;
                    self.note(work, "mint", StepStatus::Failed, &format!("{e}; trying again")).await?;
                    if e.is_ambiguous() {
                        let strays = self.revoke_named(work, None).await?;
                        work.revoked.extend(strays);
                    }
                    let delay =
                        MINT_BACKOFF.delay(attempt).min(work.deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(self.failed(work, "mint", e).await),
            }
        };
        crash_point("minted-unrecorded");
        for stray in &minted.revoked_strays {
            self.note(work, "mint", StepStatus::Uncertain, &format!("revoked {stray}: its {CREATE_ANSWER_LOST}"))
                .await?;
        }
        if minted.lost_answers > 0 && minted.revoked_strays.is_empty() {
            let detail = format!("{} {CREATE_ANSWER_LOST}s: nothing found by name yet", minted.lost_answers);
            self.note(work, "mint", StepStatus::Uncertain, &detail).await?;
        }
        let record = Record {
            kind,
            id: minted.id.clone(),
            secret: minted.secret,
            token_url: (kind == CredentialKind::OauthClient).then(|| self.toktra.token_url()),
            // Whole seconds, as written to destinations, so a re-staged value compares equal.
            rotated_at: Some(Utc::now().trunc_subsecs(0)),
            rotation_id: Some(work.rotation.id.clone()),
        };
        work.rotation.new_credential_id = Some(minted.id.clone());
        work.rotation.new_fingerprint = Some(record.secret.fingerprint());
        work.new = Some(record);
        work.memory.has_secret = true;
        let fingerprint = work.rotation.new_fingerprint.clone().unwrap_or_default();
        self.advance(work, Phase::Minted, "mint", &format!("minted {} ({fingerprint})", minted.id)).await
    }

    /// A rotation left in `Started` by an earlier process: whatever it minted is unrecoverable.
    pub(super) async fn abandon(&self, work: &mut InFlight<'_>) -> Result<Flow, StepError> {
        // The intent of a mint is recorded before the create call: without one, nothing was
        // minted, and the rotation (an accepted request, say, interrupted by a shutdown) simply
        // goes on from where it stopped instead of failing.
        let steps = self.journal.steps(&work.rotation.id).await?;
        if !steps.iter().any(|s| s.step == "mint" || s.step == "revoke-first") {
            self.note(work, "resume", StepStatus::Done, "interrupted before minting; going on").await?;
            work.memory.started_here = true;
            return Ok(Flow::Continue);
        }
        // A create the earlier process sent may still be carried out after it died (or, on
        // another replica, after its lease ran out); looked up too early, that credential would
        // be missed and left active. So look only once such a create can no longer land.
        let wait = create_settle_wait(&steps, self.toktra.settings(), Utc::now())
            .min(work.deadline.saturating_duration_since(Instant::now()));
        let name = work.rotation.credential_name.clone();
        let detail = if wait.is_zero() {
            format!("look up `{name}`")
        } else {
            format!(
                "look up `{name}` after {} (a create of the interrupted run may still be in flight)",
                crate::duration::format(wait)
            )
        };
        self.note(work, "abandon", StepStatus::Intent, &detail).await?;
        tokio::time::sleep(wait).await;
        let revoked = self.revoke_named(work, None).await?;
        for destination in &work.destinations {
            self.retry(work.deadline, || destination.discard(&work.rotation.id)).await?;
        }
        if Self::outage(&work.rotation) {
            // Never "failed" while consumers have nothing: mint again now.
            let detail = format!("revoked unrecoverable mint(s) [{}]", revoked.join(", "));
            work.revoked.extend(revoked);
            work.memory.started_here = true;
            self.note(work, "abandon", StepStatus::Done, &format!("{detail}; minting again ({NO_WORKING_CREDENTIAL})"))
                .await?;
            return Ok(Flow::Continue);
        }
        work.rotation.error.get_or_insert_with(|| "interrupted before the new credential was staged".into());
        let detail = if revoked.is_empty() {
            "nothing was minted".to_string()
        } else {
            format!("revoked unrecoverable mint(s) [{}]", revoked.join(", "))
        };
        work.revoked.extend(revoked);
        self.advance(work, Phase::Failed, "abandon", &detail).await
    }

    /// Revokes every active credential named after this rotation except `keep`; returns them.
    pub(super) async fn revoke_named(&self, work: &InFlight<'_>, keep: Option<&str>) -> Result<Vec<String>, StepError> {
        let kind = work.rotation.kind;
        let mut revoked = Vec::new();
        let listed = self.toktra.list(kind).await?;
        for stray in
            listed.into_iter().filter(|c| c.name == work.rotation.credential_name && Some(c.id.as_str()) != keep)
        {
            self.toktra.revoke(kind, &stray.id).await?;
            self.note(
                work,
                "sweep",
                StepStatus::Done,
                &format!("revoked {} (named after this rotation, not its credential)", stray.id),
            )
            .await?;
            revoked.push(stray.id);
        }
        Ok(revoked)
    }

    /// After a crash the new secret exists only in staged copies; read one back.
    pub(super) async fn recover(&self, work: &mut InFlight<'_>) -> Result<Flow, StepError> {
        let expected = work.rotation.new_fingerprint.clone();
        for destination in &work.destinations {
            if let Some(record) = self.retry(work.deadline, || destination.staged(&work.rotation.id)).await?
                && Some(record.secret.fingerprint()) == expected
            {
                tracing::info!(policy = %work.policy.name, rotation = %work.rotation.id, destination = %destination.label(), "recovered the new credential from its staged copy");
                work.new = Some(record);
                work.memory.has_secret = true;
                return Ok(Flow::Continue);
            }
        }
        // Never staged anywhere: the secret is lost, so the credential must go.
        work.rotation.error.get_or_insert_with(|| "interrupted before the new credential was staged".into());
        work.rotation.phase = Phase::RollingBack;
        self.save(&mut work.rotation, &work.lease).await?;
        self.note(work, "recover", StepStatus::Failed, "no staged copy of the new credential; rolling back").await?;
        Ok(Flow::Continue)
    }

    pub(super) async fn stage(&self, work: &mut InFlight<'_>) -> Result<Flow, StepError> {
        let Some(record) = work.new.clone() else { return Err("internal: no secret to stage".into()) };
        for (i, destination) in work.destinations.iter().enumerate() {
            let label = destination.label();
            self.note(work, "stage", StepStatus::Intent, &format!("stage {} in {label}", record.id)).await?;
            if let Err(e) = self.retry(work.deadline, || destination.stage(&work.rotation.id, &record)).await {
                return Err(self.failed(work, "stage", e).await);
            }
            self.note(work, "stage", StepStatus::Done, &format!("staged in {label}")).await?;
            crash_point(&format!("staged-{i}"));
        }
        self.advance(work, Phase::Staged, "stage", "staged in every destination").await
    }

    pub(super) async fn verify(&self, work: &mut InFlight<'_>) -> Result<Flow, StepError> {
        let Some(record) = work.new.clone() else { return Err("internal: no secret to verify".into()) };
        self.note(work, "verify", StepStatus::Intent, &format!("authenticate as {}", record.id)).await?;
        match self.toktra.probe_until(record.kind, &record.id, &record.secret, work.deadline).await {
            Ok(Probe::Accepted) => {}
            Ok(Probe::Rejected) => {
                return Err(self
                    .failed(work, "verify", format!("toktra rejected the new credential {}", record.id))
                    .await);
            }
            Err(e) => return Err(self.failed(work, "verify", e).await),
        }
        for destination in &work.destinations {
            let staged = self.retry(work.deadline, || destination.staged(&work.rotation.id)).await?;
            if staged.as_ref().map(Record::fingerprint) != Some(record.fingerprint()) {
                let message = format!("{}: the staged value read back does not match", destination.label());
                return Err(self.failed(work, "verify", message).await);
            }
        }
        self.advance(
            work,
            Phase::Verified,
            "verify",
            &format!("{} authenticates; every destination read it back", record.id),
        )
        .await
    }

    pub(super) async fn promote(&self, work: &mut InFlight<'_>) -> Result<Flow, StepError> {
        let new_id = work.rotation.new_credential_id.clone().unwrap_or_default();
        for (i, destination) in work.destinations.iter().enumerate() {
            let label = destination.label();
            // Promote only over what this rotation set out to replace: a destination changed by
            // hand since the start holds a credential nobody would revoke.
            let current = match self.retry(work.deadline, || destination.current()).await {
                Ok(current) => current,
                Err(e) => return Err(self.promote_failed(work, e.into()).await),
            };
            if let Some(current) = &current
                && !serves(current, &work.rotation)
                && !work.rotation.old_credentials.contains(&current.id)
            {
                let message = format!(
                    "{label} now holds credential {}, which this rotation did not set out to replace (changed by hand?)",
                    current.id
                );
                return Err(self.promote_failed(work, StepError::Check(message)).await);
            }
            self.note(work, "promote", StepStatus::Intent, &format!("promote {new_id} in {label}")).await?;
            if let Err(e) = self.retry(work.deadline, || destination.promote(&work.rotation.id)).await {
                return Err(self.promote_failed(work, e.into()).await);
            }
            self.note(work, "promote", StepStatus::Done, &format!("current in {label}")).await?;
            crash_point(&format!("promoted-{i}"));
        }
        let now = Utc::now();
        work.rotation.promoted_at = Some(now);
        let grace = if work.rotation.compromised { Duration::ZERO } else { work.policy.revoke.grace };
        work.rotation.revoke_after = Some(now + chrono::Duration::from_std(grace).unwrap_or_default());
        self.advance(work, Phase::Promoted, "promote", &format!("{new_id} is current in every destination")).await
    }

    /// A promotion failed somewhere. A destination's `promote` can change what consumers read
    /// and still fail (Vault: the data written, the metadata update refused; AWS: `AWSCURRENT`
    /// moved, `AWSPENDING` not cleared), so every destination is read back, and
    /// [`after_failed_promotion`] decides from what they serve now.
    pub(super) async fn promote_failed(&self, work: &InFlight<'_>, error: StepError) -> StepError {
        let mut serving = Vec::new();
        for destination in &work.destinations {
            serving.push(match self.retry(work.deadline, || destination.current()).await {
                Ok(current) => Some(current.is_some_and(|c| serves(&c, &work.rotation))),
                Err(e) => {
                    tracing::warn!(policy = %work.policy.name, destination = %destination.label(), error = %e, "cannot read the destination back after a failed promotion");
                    None
                }
            });
        }
        let decision = after_failed_promotion(&serving, error.is_transient());
        let error = StepError::Promotion {
            error: Box::new(error),
            roll_back: decision == AfterPromotion::RollBack,
            partly_current: decision == AfterPromotion::Forward && serving.contains(&Some(true)),
        };
        self.failed(work, "promote", error).await
    }

    pub(super) async fn wait_for_grace(
        &self,
        work: &mut InFlight<'_>,
        until: DateTime<Utc>,
    ) -> Result<Flow, StepError> {
        let waiting = format!("grace period until {}", until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        tracing::info!(policy = %work.policy.name, rotation = %work.rotation.id, "old credentials stay valid: {waiting}");
        self.set_waiting(work, waiting).await
    }

    pub(super) async fn set_waiting(&self, work: &mut InFlight<'_>, waiting: String) -> Result<Flow, StepError> {
        if work.rotation.waiting.as_deref() != Some(waiting.as_str()) {
            work.rotation.waiting = Some(waiting);
            self.save(&mut work.rotation, &work.lease).await?;
        }
        Ok(Flow::Wait)
    }
}
