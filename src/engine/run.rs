//! Running a policy: `rotate` and `resume` under the policy's lease, `rotate_many` for a set,
//! the start of a rotation (the destinations read, the rotation recorded before any side
//! effect), and the loop that asks [`rotation::next`] for each action and records its outcome:
//! the phase after every step, the rollback of a failure before promotion.

use super::*;

impl Engine {
    /// Rotates the policies, `concurrency` at a time. Each result is either the policy's outcomes or an
    /// engine error (the policy was busy, the journal failed).
    pub async fn rotate_many(
        &self,
        work: &[(&Policy, Request)],
        concurrency: usize,
    ) -> Vec<(String, Result<Vec<Outcome>, Error>)> {
        use futures::StreamExt;
        let progress = crate::progress::Progress::new(work.len() as u64);
        let run = futures::stream::iter(work.iter().map(|(p, request)| {
            let progress = progress.clone();
            async move {
                progress.start();
                let result = self.rotate(p, request).await;
                let failed = result.as_ref().map_or(true, |outcomes| {
                    outcomes.iter().any(|o| matches!(o.status, Status::Failed | Status::Incomplete))
                });
                progress.finish(failed);
                (p.name.clone(), result)
            }
        }))
        .buffered(concurrency.max(1))
        .collect();
        let outcomes = tokio::select! {
            outcomes = run => outcomes,
            never = progress.log_periodically() => match never {},
        };
        progress.close();
        outcomes
    }

    /// Resumes this policy's unfinished rotations, then (unless one of them already rotated the
    /// credential now, or is stuck) runs a new rotation.
    pub async fn rotate(&self, policy: &Policy, request: &Request) -> Result<Vec<Outcome>, Error> {
        pause_point("before-lease").await;
        let held = self.acquire(&policy.name).await?;
        pause_point("after-lease").await;
        let result = self.rotate_locked(policy, request, &held).await;
        self.release(&held).await;
        result
    }

    /// Finishes unfinished rotations of one policy (grace periods that ended, crashed runs)
    /// without starting a new one.
    pub async fn resume(&self, policy: &Policy) -> Result<Vec<Outcome>, Error> {
        let held = self.acquire(&policy.name).await?;
        let mut outcomes = Vec::new();
        let result = async {
            // Read under the lease, so no other process changes them meanwhile.
            for rotation in self.journal.unfinished(Some(&policy.name)).await? {
                outcomes.push(
                    self.run(policy, rotation, Memory { started_here: false, has_secret: false }, None, &held).await?,
                );
            }
            Ok(())
        }
        .await;
        self.release(&held).await;
        result.map(|()| outcomes)
    }

    pub(super) async fn rotate_locked(
        &self,
        policy: &Policy,
        request: &Request,
        held: &Leased,
    ) -> Result<Vec<Outcome>, Error> {
        let mut outcomes = Vec::new();
        let mut rotated_now = false;
        // Promoted rotations whose revocations cannot complete, taken over by this request.
        let mut superseding = Vec::new();
        for mut rotation in self.journal.unfinished(Some(&policy.name)).await? {
            tracing::info!(policy = %policy.name, rotation = %rotation.id, phase = %rotation.phase, "resuming an unfinished rotation");
            if request.compromised && rotation.phase == Phase::Promoted {
                // The credentials this rotation still keeps alive may be the exposed ones too.
                rotation.compromised = true;
            }
            let was_promoted = rotation.phase.is_promoted();
            let id = rotation.id.clone();
            let outcome =
                self.run(policy, rotation, Memory { started_here: false, has_secret: false }, None, held).await?;
            rotated_now |= !was_promoted && outcome.phase.is_promoted();
            // Stuck, or its revocation held because something still serves an old credential:
            // a new rotation over it would strand its new credential.
            let stuck = outcome.status == Status::Incomplete || outcome.held;
            let promoted = outcome.phase == Phase::Promoted;
            outcomes.push(outcome);
            if stuck && request.compromised && promoted {
                // Only Toktra work is left and it keeps failing. A suspected exposure cannot
                // wait for it: the new rotation replaces the current credential and takes the
                // stuck revocations over, in one journal transaction.
                if let Some(row) = self.journal.get(&id).await? {
                    tracing::warn!(policy = %policy.name, rotation = %id, "the rotation's revocation cannot complete; the compromise rotation supersedes it");
                    superseding.push(row);
                    continue;
                }
            }
            if stuck {
                // Starting another rotation over a half-promoted one would stage over it.
                tracing::error!(policy = %policy.name, "an unfinished rotation could not be completed; not starting another");
                return Ok(outcomes);
            }
        }
        // An explicit request (with its own ID, from the API) always gets its rotation.
        if rotated_now && !request.compromised && request.id.is_none() {
            tracing::info!(policy = %policy.name, "the resumed rotation replaced the credential; not starting another");
            return Ok(outcomes);
        }
        if let Some(seen) = &request.decided_after {
            let latest = self.journal.history(Some(&policy.name), 1).await?.into_iter().next().map(|r| r.id);
            if latest != *seen {
                tracing::info!(policy = %policy.name, rotation = ?latest, "rotated by another process since it was found due; not rotating again");
                return Ok(outcomes);
            }
        }
        if self.stop.as_ref().is_some_and(|s| *s.borrow()) {
            // Shutting down: do not begin a rotation that could only be interrupted.
            return Ok(outcomes);
        }
        // Requests are idempotent by ID: one whose rotation is recorded already ran (an
        // unfinished one was resumed above), so it is reported, never started a second time.
        if let Some(id) = &request.id
            && let Some(recorded) = self.journal.get(id).await?
        {
            if !outcomes.iter().any(|o| &o.rotation_id == id) {
                tracing::info!(policy = %policy.name, rotation = %id, phase = %recorded.phase, "request already recorded; not starting it again");
                outcomes.push(self.outcome(true, &recorded, Vec::new(), &[], Utc::now()));
            }
            return Ok(outcomes);
        }
        outcomes.push(self.start(policy, request, held, superseding).await?);
        Ok(outcomes)
    }

    /// Starts a new rotation: checks and reads every destination (the credentials to replace),
    /// records the rotation, and runs it.
    /// `superseding`: a promoted rotation stuck on its revocations, whose old credentials this
    /// rotation revokes too; it is marked superseded when this one is recorded.
    pub(super) async fn start(
        &self,
        policy: &Policy,
        request: &Request,
        held: &Leased,
        superseding: Vec<Rotation>,
    ) -> Result<Outcome, Error> {
        let now = Utc::now();
        let id = request.id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let mut rotation = Rotation {
            id: id.clone(),
            policy: policy.name.clone(),
            kind: policy.credential.kind,
            phase: Phase::Started,
            reason: request.reason.clone(),
            compromised: request.compromised,
            credential_name: format!("{}-{id}", policy.credential.name),
            new_credential_id: None,
            new_fingerprint: None,
            old_credentials: Vec::new(),
            destinations: policy.destinations.iter().map(|d| d.label()).collect(),
            promoted_at: None,
            revoke_after: None,
            revoked_at: None,
            error: None,
            revoke_first: request.compromised && request.revoke_first,
            waiting: None,
            revoked_credentials: Vec::new(),
            started_at: now,
            updated_at: now,
            finished_at: None,
        };
        // Everything that can be checked without side effects is checked before the rotation is
        // recorded, so a misconfigured destination leaves nothing behind.
        let mut old_secrets = HashMap::new();
        let mut held_by = Vec::new();
        let deadline = Instant::now() + self.options.rotation_budget;
        let prepared = async {
            let destinations = self.destinations(policy)?;
            for destination in &destinations {
                self.retry(deadline, || destination.check()).await?;
                if let Some(current) = self.retry(deadline, || destination.current()).await? {
                    tracing::info!(policy = %policy.name, destination = %destination.label(), credential = %current.id, "destination holds the current credential");
                    if !rotation.old_credentials.contains(&current.id) {
                        rotation.old_credentials.push(current.id.clone());
                    }
                    held_by.push(format!("{}: {}", destination.label(), current.id));
                    old_secrets.insert(current.id.clone(), current.secret.clone());
                }
            }
            Ok::<_, StepError>(())
        }
        .await;
        if self.stop.as_ref().is_some_and(|s| *s.borrow()) {
            // A shutdown began while the destinations were read: record nothing, so nothing is
            // left to resume or fail; a durable request is run by the next start.
            tracing::info!(policy = %policy.name, rotation = %id, "shutting down; not starting the rotation");
            let mut outcome = self.outcome(false, &rotation, Vec::new(), &[], now);
            outcome.interrupted = true;
            return Ok(outcome);
        }
        if let Err(error) = prepared {
            let message = error.to_string();
            rotation.phase = Phase::Failed;
            rotation.error = Some(message.clone());
            rotation.finished_at = Some(Utc::now());
            self.journal.insert(&rotation, &held.lease).await?;
            self.journal.step(&id, "prepare", StepStatus::Failed, &message, &held.lease).await?;
            tracing::error!(policy = %policy.name, rotation = %id, error = %message, "rotation failed before any change");
            let mut outcome = self.outcome(false, &rotation, Vec::new(), &[], now);
            outcome.failed_in = Some(error.failed_in());
            return Ok(outcome);
        }
        if superseding.is_empty() {
            self.journal.insert(&rotation, &held.lease).await?;
        } else {
            let mut marked = Vec::new();
            for mut stuck in superseding {
                let left: Vec<String> = stuck
                    .old_credentials
                    .iter()
                    .filter(|c| Some(*c) != stuck.new_credential_id.as_ref())
                    .filter(|c| !stuck.revoked_credentials.contains(c))
                    .cloned()
                    // Its own new credential goes too: current (then it is read as such above)
                    // or no longer served (rolled back by hand), it is exposed or unused.
                    .chain(stuck.new_credential_id.clone())
                    .collect();
                for credential in &left {
                    if !rotation.old_credentials.contains(credential) {
                        rotation.old_credentials.push(credential.clone());
                    }
                }
                stuck.phase = Phase::Superseded;
                stuck.waiting = Some(format!("{}, which revokes [{}]", journal::superseded_by(&id), left.join(", ")));
                stuck.updated_at = now;
                stuck.finished_at = Some(now);
                marked.push(stuck);
            }
            // If this rotation fails, the journal hands the work back (`Journal::update`).
            self.journal.supersede(&marked, &rotation, &held.lease).await?;
            for stuck in &marked {
                let detail = format!("superseded by compromise rotation {id}");
                self.journal.step(&stuck.id, "supersede", StepStatus::Done, &detail, &held.lease).await?;
            }
        }
        let detail = format!(
            "reason={}; compromised={}; revoke_first={}; replaces [{}]; held by [{}]",
            request.reason.as_deref().unwrap_or("-"),
            rotation.compromised,
            rotation.revoke_first,
            rotation.old_credentials.join(", "),
            held_by.join("; ")
        );
        self.journal.step(&id, "start", StepStatus::Done, &detail, &held.lease).await?;
        tracing::info!(policy = %policy.name, rotation = %id, replaces = ?rotation.old_credentials, compromised = rotation.compromised, "rotation started");
        crash_point("started");
        let memory = Memory { started_here: true, has_secret: false };
        self.run(policy, rotation, memory, Some((old_secrets, held_by)), held).await
    }

    pub(super) fn destinations(&self, policy: &Policy) -> Result<Vec<Handle>, store::Error> {
        policy.destinations.iter().map(|d| Handle::new(d, policy.credential.kind, &self.clients)).collect()
    }

    /// Drives one rotation until it is done, waits, or fails. `fresh` carries what `start` read
    /// (old secrets and who held them) for a rotation this process started.
    pub(super) async fn run(
        &self,
        policy: &Policy,
        rotation: Rotation,
        memory: Memory,
        fresh: Option<(HashMap<String, Secret>, Vec<String>)>,
        held: &Leased,
    ) -> Result<Outcome, Error> {
        let started_at = Utc::now();
        let resumed = !memory.started_here;
        let (old_secrets, held_by) = fresh.unwrap_or_default();
        let labels: Vec<String> = policy.destinations.iter().map(|d| d.label()).collect();
        // Destinations matter only up to promotion: after it, what is left is Toktra work
        // (revoking the old credentials) and checks that read the policy's destinations as they
        // are now. Editing a policy during its grace must not keep its old credential alive.
        let recorded: Vec<String> = rotation.destinations.iter().map(|l| crate::policy::canonical_label(l)).collect();
        let changed = labels != recorded || rotation.kind != policy.credential.kind;
        // Undoing needs no more than the places both name: a rollback (or the clean-up of a
        // crashed start) never needs the old policy back.
        let undoing =
            rotation.phase == Phase::RollingBack || (rotation.phase == Phase::Started && !memory.started_here);
        let unreachable: Vec<String> = match undoing && changed {
            true => recorded
                .iter()
                .filter(|l| !labels.contains(l))
                .map(|l| format!("{l} is no longer in the policy"))
                .collect(),
            false => Vec::new(),
        };
        let destinations = if changed && !rotation.phase.is_promoted() && !undoing {
            // Working on a different set of destinations than the rotation staged into could
            // promote half of them or strand staged values: refuse, and say how to get out.
            Err(format!(
                "policy `{}` changed while rotation {} was unfinished (journal: {} [{}]; policy: {} [{}]); \
                 restore the policy to let the rotation finish",
                policy.name,
                rotation.id,
                rotation.kind,
                rotation.destinations.join(", "),
                policy.credential.kind,
                labels.join(", ")
            ))
        } else {
            // Built for the rotation's kind: a kind changed after promotion still has the old
            // credentials of the journal's kind to revoke.
            policy
                .destinations
                .iter()
                .filter(|d| !undoing || !changed || recorded.contains(&d.label()))
                .map(|d| Handle::new(d, rotation.kind, &self.clients))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        };
        let destinations = match destinations {
            Ok(d) => d,
            Err(message) => {
                let mut rotation = rotation;
                tracing::error!(policy = %policy.name, rotation = %rotation.id, "{message}");
                rotation.error = Some(message);
                self.save(&mut rotation, &held.lease).await?;
                return Ok(self.outcome(resumed, &rotation, Vec::new(), &[], started_at));
            }
        };
        let mut work = InFlight {
            policy,
            rotation,
            destinations,
            memory,
            new: None,
            old_secrets,
            held_by,
            revoked: Vec::new(),
            lease: held.lease.clone(),
            deadline: Instant::now() + self.options.rotation_budget,
            attempts: 0,
            unreachable,
            failed_in: None,
        };
        let mut lost = held.lost.clone();
        loop {
            let action = rotation::next(&work.rotation, work.memory, Utc::now());
            let stopping = self.stop.as_ref().is_some_and(|s| *s.borrow());
            if stopping && !matches!(action, Action::Done | Action::WaitForGrace { .. }) {
                tracing::info!(policy = %policy.name, rotation = %work.rotation.id, phase = %work.rotation.phase, "shutting down between steps; the next run resumes this rotation");
                let mut outcome = self.finished(resumed, work, started_at);
                outcome.interrupted = true;
                return Ok(outcome);
            }
            let phase = work.rotation.phase;
            let step = async {
                match &action {
                    Action::RevokeFirst => self.revoke_first(&mut work).await,
                    Action::Mint => self.mint(&mut work).await,
                    Action::Abandon => self.abandon(&mut work).await,
                    Action::Recover => self.recover(&mut work).await,
                    Action::Stage => self.stage(&mut work).await,
                    Action::Verify => self.verify(&mut work).await,
                    Action::Promote => self.promote(&mut work).await,
                    Action::RevokeOld => self.revoke_old(&mut work).await,
                    Action::RollBack => self.roll_back(&mut work).await,
                    Action::WaitForGrace { until } => self.wait_for_grace(&mut work, *until).await,
                    Action::Done => Ok(Flow::Wait),
                }
            };
            let result = tokio::select! {
                result = step => Some(result),
                _ = lost.wait_for(|lost| *lost) => None,
            };
            let result = match result {
                Some(result) => result,
                None => {
                    // As if the process had crashed mid-step: the new holder resumes it.
                    work.rotation.error = Some("lost the policy's lease to another process mid-step".into());
                    return Ok(self.finished(resumed, work, started_at));
                }
            };
            match result {
                Ok(Flow::Continue) => {}
                Ok(Flow::Wait) => {
                    if action == Action::Done {
                        tracing::info!(policy = %policy.name, rotation = %work.rotation.id, phase = %work.rotation.phase, "rotation finished");
                    }
                    return Ok(self.finished(resumed, work, started_at));
                }
                Err(error) => {
                    tracing::error!(policy = %policy.name, rotation = %work.rotation.id, phase = %phase, error = %error, "rotation step failed");
                    work.rotation.error = Some(error.to_string());
                    work.failed_in = Some(error.failed_in());
                    if error.rolls_back(phase) && phase != Phase::RollingBack {
                        // Nothing a consumer reads has changed: undo.
                        work.rotation.phase = Phase::RollingBack;
                        self.save(&mut work.rotation, &work.lease).await?;
                    } else {
                        // A failed promotion or revocation, or a failed rollback: a later run
                        // resumes from the journal.
                        self.save(&mut work.rotation, &work.lease).await?;
                        return Ok(self.finished(resumed, work, started_at));
                    }
                }
            }
        }
    }

    pub(super) async fn save(&self, rotation: &mut Rotation, lease: &journal::Lease) -> Result<(), journal::Error> {
        stamp(rotation);
        self.journal.update(rotation, lease).await
    }

    /// Sets the phase after a side effect and records the step as done. A successful step
    /// clears the last error, except on the way to `failed`, which keeps the reason.
    pub(super) async fn advance(
        &self,
        work: &mut InFlight<'_>,
        phase: Phase,
        step: &str,
        detail: &str,
    ) -> Result<Flow, StepError> {
        work.rotation.phase = phase;
        work.rotation.waiting = None;
        if phase != Phase::Failed {
            work.rotation.error = None;
        }
        stamp(&mut work.rotation);
        // The phase and the step that reached it, in one commit.
        self.journal.update_with_step(&work.rotation, (step, StepStatus::Done, detail), &work.lease).await?;
        tracing::info!(policy = %work.policy.name, rotation = %work.rotation.id, step, phase = %phase, "{detail}");
        crash_point(phase.as_str());
        Ok(Flow::Continue)
    }

    pub(super) async fn note(
        &self,
        work: &InFlight<'_>,
        step: &str,
        status: StepStatus,
        detail: &str,
    ) -> Result<(), StepError> {
        self.journal.step(&work.rotation.id, step, status, detail, &work.lease).await?;
        Ok(())
    }

    /// Records a failed step with what failed.
    pub(super) async fn failed(&self, work: &InFlight<'_>, step: &str, error: impl Into<StepError>) -> StepError {
        let error = error.into();
        if let Err(e) =
            self.journal.step(&work.rotation.id, step, StepStatus::Failed, &error.to_string(), &work.lease).await
        {
            tracing::warn!(error = %e, "could not record a failed step");
        }
        error
    }

    /// Retries a destination operation on transient errors with exponential backoff and full
    /// jitter, within the attempt limit and the rotation's time budget.
    pub(super) async fn retry<T, F, Fut>(&self, deadline: Instant, mut op: F) -> Result<T, store::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, store::Error>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Err(e) if e.is_transient() && attempt < self.options.store_attempts && Instant::now() < deadline => {
                    let delay = STORE_BACKOFF.delay(attempt);
                    tracing::warn!(error = %e, attempt, "transient destination failure; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// The outcome of a run that worked on `work`.
    pub(super) fn finished(&self, resumed: bool, work: InFlight<'_>, started_at: DateTime<Utc>) -> Outcome {
        let mut outcome = self.outcome(resumed, &work.rotation, work.revoked, &work.held_by, started_at);
        outcome.failed_in = work.failed_in;
        outcome
    }

    pub(crate) fn outcome(
        &self,
        resumed: bool,
        rotation: &Rotation,
        revoked: Vec<String>,
        held_by: &[String],
        started_at: DateTime<Utc>,
    ) -> Outcome {
        let status = match rotation.phase {
            Phase::Completed => Status::Completed,
            Phase::Promoted if rotation.error.is_none() => Status::AwaitingRevocation,
            Phase::Failed => Status::Failed,
            _ => Status::Incomplete,
        };
        let compromise = rotation.compromised.then(|| Containment {
            exposed: rotation.old_credentials.clone(),
            held_by: held_by.to_vec(),
            revoked_at: rotation.revoked_at,
            seconds_to_containment: rotation
                .revoked_at
                .filter(|_| rotation.phase == Phase::Completed || rotation.revoke_first)
                .map(|at| (at - rotation.started_at).num_milliseconds() as f64 / 1000.0),
            outage_accepted: rotation.revoke_first,
        });
        Outcome {
            policy: rotation.policy.clone(),
            rotation_id: rotation.id.clone(),
            status,
            phase: rotation.phase,
            new_credential: rotation.new_credential_id.clone(),
            old_credentials: rotation.old_credentials.clone(),
            revoked,
            destinations: rotation.destinations.clone(),
            revoke_after: rotation.revoke_after,
            waiting: rotation.waiting.clone(),
            held: rotation.waiting.as_deref().is_some_and(|w| w.starts_with(HELD)),
            error: rotation.error.clone(),
            compromise,
            resumed,
            interrupted: false,
            failed_in: None,
            seconds: (Utc::now() - started_at).num_milliseconds() as f64 / 1000.0,
        }
    }
}
