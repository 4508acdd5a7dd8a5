//! The rotation engine: carries out the actions [`rotation::next`] decides, one policy at a time
//! under the policy's lease, persisting the intent of every side effect before it and the new
//! phase after it. Errors before promotion roll the rotation back (staged values discarded, the
//! new credential revoked, the old one still current); after promotion it only moves forward.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::journal::{self, Journal, Rotation};
use crate::policy::Policy;
use crate::rotation::{self, Action, Memory, Phase};
use crate::secret::Secret;
use crate::store::{self, Clients, Destination, Record, Store};
use crate::toktra::{self, Probe};

/// Errors that stop the engine itself (the journal is unreachable, the policy is busy). A
/// rotation that fails is not an error here: it is an [`Outcome`] with a failed status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Journal(#[from] journal::Error),
    #[error("policy `{policy}`: a rotation is in flight by {holder} (lease until {until})")]
    Busy { policy: String, holder: String, until: DateTime<Utc> },
}

/// Why a rotation was asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub reason: Option<String>,
    pub compromised: bool,
}

/// How a policy's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Rotated and the old credentials revoked.
    Completed,
    /// Rotated; the old credentials are revoked by a later run once the grace period is over.
    AwaitingRevocation,
    /// Failed and rolled back: the old credential is still current.
    Failed,
    /// Failed in a way a later run resumes (e.g. a destination did not accept promotion).
    Incomplete,
}

/// What a run did for one policy; secret-free, printed as the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub policy: String,
    pub rotation_id: String,
    pub status: Status,
    pub phase: Phase,
    pub new_credential: Option<String>,
    pub old_credentials: Vec<String>,
    pub revoked: Vec<String>,
    pub destinations: Vec<String>,
    pub revoke_after: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub seconds: f64,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Identifies this process in leases.
    pub holder: String,
    pub lease_ttl: Duration,
    /// Attempts per destination operation for transient failures.
    pub store_attempts: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            holder: format!("{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]),
            lease_ttl: Duration::from_secs(300),
            store_attempts: 5,
        }
    }
}

pub struct Engine {
    pub toktra: Arc<toktra::Client>,
    pub journal: Journal,
    pub clients: Arc<Clients>,
    pub options: Options,
}

/// What one rotation holds in memory while it runs.
struct Work<'a> {
    policy: &'a Policy,
    rotation: Rotation,
    destinations: Vec<Destination>,
    memory: Memory,
    /// The new credential's value, once minted or recovered.
    new: Option<Record>,
    /// Secrets of the old credentials read at the start, to check they are rejected once revoked.
    old_secrets: HashMap<String, Secret>,
    revoked: Vec<String>,
    lease: journal::Lease,
}

/// A step failed; `before_promotion` failures roll back.
struct StepError(String);

impl<E: std::fmt::Display> From<E> for StepError {
    fn from(e: E) -> StepError {
        StepError(e.to_string())
    }
}

impl Engine {
    /// Resumes this policy's unfinished rotations, then (unless one of them already rotated the
    /// credential and this is not a compromise) runs a new rotation.
    pub async fn rotate(&self, policy: &Policy, request: &Request) -> Result<Vec<Outcome>, Error> {
        let lease = self.acquire(&policy.name).await?;
        let result = self.rotate_locked(policy, request, &lease).await;
        if let Err(e) = self.journal.release(&lease).await {
            tracing::warn!(policy = %policy.name, error = %e, "could not release the lease; it expires by itself");
        }
        result
    }

    async fn acquire(&self, policy: &str) -> Result<journal::Lease, Error> {
        match self.journal.acquire(policy, &self.options.holder, self.options.lease_ttl).await? {
            Ok(lease) => Ok(lease),
            Err(holder) => {
                Err(Error::Busy { policy: policy.to_string(), holder: holder.holder, until: holder.expires_at })
            }
        }
    }

    async fn rotate_locked(
        &self,
        policy: &Policy,
        request: &Request,
        lease: &journal::Lease,
    ) -> Result<Vec<Outcome>, Error> {
        let mut outcomes = Vec::new();
        let mut rotated_now = false;
        for rotation in self.journal.unfinished(Some(&policy.name)).await? {
            tracing::info!(policy = %policy.name, rotation = %rotation.id, phase = %rotation.phase, "resuming an unfinished rotation");
            let was_promoted = rotation.phase.is_promoted();
            let memory = Memory { started_here: false, has_secret: false };
            let outcome = self.run(policy, rotation, memory, HashMap::new(), lease.clone()).await?;
            rotated_now |= !was_promoted && outcome.phase.is_promoted();
            let stuck = outcome.status == Status::Incomplete;
            outcomes.push(outcome);
            if stuck {
                // Starting another rotation over a half-promoted one would stage over it.
                tracing::error!(policy = %policy.name, "an unfinished rotation could not be completed; not starting another");
                return Ok(outcomes);
            }
        }
        if rotated_now && !request.compromised {
            tracing::info!(policy = %policy.name, "the resumed rotation replaced the credential; not starting another");
            return Ok(outcomes);
        }
        outcomes.push(self.start(policy, request, lease.clone()).await?);
        Ok(outcomes)
    }

    /// Finishes unfinished rotations of one policy (grace periods that ended, crashed runs)
    /// without starting a new one.
    pub async fn resume(&self, policy: &Policy) -> Result<Vec<Outcome>, Error> {
        let unfinished = self.journal.unfinished(Some(&policy.name)).await?;
        if unfinished.is_empty() {
            return Ok(Vec::new());
        }
        let lease = self.acquire(&policy.name).await?;
        let mut outcomes = Vec::new();
        for rotation in unfinished {
            let memory = Memory { started_here: false, has_secret: false };
            match self.run(policy, rotation, memory, HashMap::new(), lease.clone()).await {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    let _ = self.journal.release(&lease).await;
                    return Err(e);
                }
            }
        }
        let _ = self.journal.release(&lease).await;
        Ok(outcomes)
    }

    /// Starts a new rotation: reads what the destinations hold now (the credentials to replace),
    /// records the rotation, and runs it.
    async fn start(&self, policy: &Policy, request: &Request, lease: journal::Lease) -> Result<Outcome, Error> {
        let now = Utc::now();
        let id = uuid::Uuid::now_v7().to_string();
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
            started_at: now,
            updated_at: now,
            finished_at: None,
        };
        // Everything that can be checked without side effects is checked before the rotation is
        // recorded, so a misconfigured destination leaves nothing behind.
        let mut old_secrets = HashMap::new();
        let prepared = async {
            let destinations = self.destinations(policy)?;
            for destination in &destinations {
                self.retry(async || destination.check().await).await?;
                if let Some(current) = self.retry(async || destination.current().await).await? {
                    tracing::info!(policy = %policy.name, destination = %destination.label(), credential = %current.id, "destination holds the current credential");
                    if !rotation.old_credentials.contains(&current.id) {
                        rotation.old_credentials.push(current.id.clone());
                    }
                    old_secrets.insert(current.id.clone(), current.secret.clone());
                }
            }
            Ok::<_, StepError>(())
        }
        .await;
        if let Err(StepError(message)) = prepared {
            rotation.phase = Phase::Failed;
            rotation.error = Some(message.clone());
            rotation.finished_at = Some(Utc::now());
            self.journal.insert(&rotation).await?;
            self.journal.step(&id, "prepare", "failed", &message).await?;
            tracing::error!(policy = %policy.name, rotation = %id, error = %message, "rotation failed before any change");
            return Ok(self.outcome(&rotation, Vec::new(), now));
        }
        self.journal.insert(&rotation).await?;
        let detail = format!(
            "reason={}; compromised={}; replaces [{}]",
            request.reason.as_deref().unwrap_or("-"),
            request.compromised,
            rotation.old_credentials.join(", ")
        );
        self.journal.step(&id, "start", "done", &detail).await?;
        tracing::info!(policy = %policy.name, rotation = %id, replaces = ?rotation.old_credentials, "rotation started");
        self.run(policy, rotation, Memory { started_here: true, has_secret: false }, old_secrets, lease).await
    }

    fn destinations(&self, policy: &Policy) -> Result<Vec<Destination>, store::Error> {
        policy.destinations.iter().map(|d| Destination::new(d, policy.credential.kind, &self.clients)).collect()
    }

    /// Drives one rotation until it is done, waits for its grace period, or fails.
    async fn run(
        &self,
        policy: &Policy,
        rotation: Rotation,
        memory: Memory,
        old_secrets: HashMap<String, Secret>,
        lease: journal::Lease,
    ) -> Result<Outcome, Error> {
        let started = Instant::now();
        let started_at = Utc::now();
        let destinations = match self.destinations(policy) {
            Ok(d) => d,
            Err(e) => {
                let mut rotation = rotation;
                rotation.error = Some(e.to_string());
                self.save(&mut rotation).await?;
                return Ok(self.outcome(&rotation, Vec::new(), started_at));
            }
        };
        let mut work =
            Work { policy, rotation, destinations, memory, new: None, old_secrets, revoked: Vec::new(), lease };
        loop {
            if !self.journal.renew(&work.lease, self.options.lease_ttl).await? {
                let message = "lost the policy lease to another process; stopping".to_string();
                work.rotation.error = Some(message.clone());
                tracing::error!(policy = %policy.name, rotation = %work.rotation.id, "{message}");
                return Ok(self.outcome(&work.rotation, work.revoked, started_at));
            }
            let action = rotation::next(&work.rotation, work.memory, Utc::now());
            let phase = work.rotation.phase;
            let result = match &action {
                Action::Mint => self.mint(&mut work).await,
                Action::Abandon => self.abandon(&mut work).await,
                Action::Recover => self.recover(&mut work).await,
                Action::Stage => self.stage(&mut work).await,
                Action::Verify => self.verify(&mut work).await,
                Action::Promote => self.promote(&mut work).await,
                Action::RevokeOld => self.revoke_old(&mut work).await,
                Action::RollBack => self.roll_back(&mut work).await,
                Action::WaitForGrace { until } => {
                    tracing::info!(policy = %policy.name, rotation = %work.rotation.id, until = %until, "old credentials stay valid until the grace period ends");
                    return Ok(self.outcome(&work.rotation, work.revoked, started_at));
                }
                Action::Done => {
                    tracing::info!(policy = %policy.name, rotation = %work.rotation.id, phase = %work.rotation.phase, seconds = started.elapsed().as_secs_f64(), "rotation finished");
                    return Ok(self.outcome(&work.rotation, work.revoked, started_at));
                }
            };
            if let Err(StepError(message)) = result {
                tracing::error!(policy = %policy.name, rotation = %work.rotation.id, phase = %phase, error = %message, "rotation step failed");
                work.rotation.error = Some(message);
                match phase {
                    // Before promotion nothing a consumer reads has changed: undo.
                    Phase::Started | Phase::Minted | Phase::Staged | Phase::Verified if action != Action::Promote => {
                        work.rotation.phase = Phase::RollingBack;
                        self.save(&mut work.rotation).await?;
                    }
                    // A failed promotion or revocation, or a failed rollback: a later run resumes.
                    _ => {
                        self.save(&mut work.rotation).await?;
                        return Ok(self.outcome(&work.rotation, work.revoked, started_at));
                    }
                }
            }
        }
    }

    async fn save(&self, rotation: &mut Rotation) -> Result<(), journal::Error> {
        rotation.updated_at = Utc::now();
        if rotation.phase.is_terminal() && rotation.finished_at.is_none() {
            rotation.finished_at = Some(rotation.updated_at);
        }
        self.journal.update(rotation).await
    }

    /// Sets the phase after a side effect and records the step as done.
    async fn advance(&self, work: &mut Work<'_>, phase: Phase, step: &str, detail: &str) -> Result<(), StepError> {
        work.rotation.phase = phase;
        self.save(&mut work.rotation).await?;
        self.journal.step(&work.rotation.id, step, "done", detail).await?;
        tracing::info!(policy = %work.policy.name, rotation = %work.rotation.id, step, phase = %phase, "{detail}");
        Ok(())
    }

    async fn intent(&self, work: &Work<'_>, step: &str, detail: &str) -> Result<(), StepError> {
        self.journal.step(&work.rotation.id, step, "intent", detail).await?;
        Ok(())
    }

    async fn failed(&self, work: &Work<'_>, step: &str, message: String) -> StepError {
        if let Err(e) = self.journal.step(&work.rotation.id, step, "failed", &message).await {
            tracing::warn!(error = %e, "could not record a failed step");
        }
        StepError(message)
    }

    async fn mint(&self, work: &mut Work<'_>) -> Result<(), StepError> {
        let policy = work.policy;
        let name = work.rotation.credential_name.clone();
        self.intent(work, "mint", &format!("create {} `{name}`", policy.credential.kind)).await?;
        let description = format!("rotator policy {} rotation {}", policy.name, work.rotation.id);
        let minted =
            match self.toktra.create(policy.credential.kind, &name, &policy.credential.scopes, &description).await {
                Ok(minted) => minted,
                Err(e) => return Err(self.failed(work, "mint", e.to_string()).await),
            };
        for stray in &minted.revoked_strays {
            self.journal
                .step(&work.rotation.id, "mint", "done", &format!("revoked {stray}: its create answer was lost"))
                .await?;
        }
        let record = Record {
            kind: policy.credential.kind,
            id: minted.id.clone(),
            secret: minted.secret,
            token_url: (policy.credential.kind == crate::policy::CredentialKind::OauthClient)
                .then(|| self.toktra.token_url()),
            rotated_at: Some(Utc::now()),
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
    async fn abandon(&self, work: &mut Work<'_>) -> Result<(), StepError> {
        let name = work.rotation.credential_name.clone();
        self.intent(work, "abandon", &format!("look up `{name}`")).await?;
        let mut revoked = Vec::new();
        for found in self.toktra.list(work.policy.credential.kind).await?.into_iter().filter(|c| c.name == name) {
            self.toktra.revoke(work.policy.credential.kind, &found.id).await?;
            revoked.push(found.id);
        }
        for destination in &work.destinations {
            self.retry(async || destination.discard(&work.rotation.id).await).await?;
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

    /// After a crash the new secret exists only in staged copies; read one back.
    async fn recover(&self, work: &mut Work<'_>) -> Result<(), StepError> {
        let expected = work.rotation.new_fingerprint.clone();
        for destination in &work.destinations {
            if let Some(record) = self.retry(async || destination.staged(&work.rotation.id).await).await?
                && Some(record.secret.fingerprint()) == expected
            {
                tracing::info!(policy = %work.policy.name, rotation = %work.rotation.id, destination = %destination.label(), "recovered the new credential from its staged copy");
                work.new = Some(record);
                work.memory.has_secret = true;
                return Ok(());
            }
        }
        // Never staged anywhere: the secret is lost, so the credential must go.
        work.rotation.error.get_or_insert_with(|| "interrupted before the new credential was staged".into());
        work.rotation.phase = Phase::RollingBack;
        self.save(&mut work.rotation).await?;
        self.journal
            .step(&work.rotation.id, "recover", "failed", "no staged copy of the new credential; rolling back")
            .await?;
        Ok(())
    }

    async fn stage(&self, work: &mut Work<'_>) -> Result<(), StepError> {
        let Some(record) = work.new.clone() else { return Err(StepError("internal: no secret to stage".into())) };
        for destination in &work.destinations {
            let label = destination.label();
            self.intent(work, "stage", &format!("stage {} in {label}", record.id)).await?;
            if let Err(e) = self.retry(async || destination.stage(&work.rotation.id, &record).await).await {
                return Err(self.failed(work, "stage", e.to_string()).await);
            }
            self.journal.step(&work.rotation.id, "stage", "done", &format!("staged in {label}")).await?;
        }
        self.advance(work, Phase::Staged, "stage", "staged in every destination").await
    }

    async fn verify(&self, work: &mut Work<'_>) -> Result<(), StepError> {
        let Some(record) = work.new.clone() else { return Err(StepError("internal: no secret to verify".into())) };
        self.intent(work, "verify", &format!("authenticate as {}", record.id)).await?;
        match self.toktra.probe(record.kind, &record.id, &record.secret).await {
            Ok(Probe::Accepted) => {}
            Ok(Probe::Rejected) => {
                return Err(self
                    .failed(work, "verify", format!("toktra rejected the new credential {}", record.id))
                    .await);
            }
            Err(e) => return Err(self.failed(work, "verify", e.to_string()).await),
        }
        for destination in &work.destinations {
            let staged = self.retry(async || destination.staged(&work.rotation.id).await).await?;
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

    async fn promote(&self, work: &mut Work<'_>) -> Result<(), StepError> {
        let new_id = work.rotation.new_credential_id.clone().unwrap_or_default();
        for destination in &work.destinations {
            let label = destination.label();
            self.intent(work, "promote", &format!("promote {new_id} in {label}")).await?;
            if let Err(e) = self.retry(async || destination.promote(&work.rotation.id).await).await {
                return Err(self.failed(work, "promote", e.to_string()).await);
            }
            self.journal.step(&work.rotation.id, "promote", "done", &format!("current in {label}")).await?;
        }
        let now = Utc::now();
        work.rotation.promoted_at = Some(now);
        let grace = if work.rotation.compromised { Duration::ZERO } else { work.policy.revoke.grace };
        work.rotation.revoke_after = Some(now + chrono::Duration::from_std(grace).unwrap_or_default());
        self.advance(work, Phase::Promoted, "promote", &format!("{new_id} is current in every destination")).await
    }

    async fn revoke_old(&self, work: &mut Work<'_>) -> Result<(), StepError> {
        let kind = work.policy.credential.kind;
        let new_id = work.rotation.new_credential_id.clone();
        let old: Vec<String> =
            work.rotation.old_credentials.iter().filter(|id| Some(*id) != new_id.as_ref()).cloned().collect();
        for id in &old {
            self.intent(work, "revoke", &format!("revoke {id}")).await?;
            let result = match self.toktra.revoke(kind, id).await {
                Ok(r) => r,
                Err(e) => return Err(self.failed(work, "revoke", e.to_string()).await),
            };
            // Check the revocation took: the old secret (when this process read it) must now be
            // rejected, and the credential must no longer be listed.
            if let Some(secret) = work.old_secrets.get(id) {
                match self.toktra.probe(kind, id, secret).await {
                    Ok(Probe::Rejected) => {}
                    Ok(Probe::Accepted) => {
                        return Err(self
                            .failed(work, "revoke", format!("{id} still authenticates after revocation"))
                            .await);
                    }
                    Err(e) => return Err(self.failed(work, "revoke", e.to_string()).await),
                }
            }
            let still_listed = self.toktra.list(kind).await?.iter().any(|c| &c.id == id);
            if still_listed {
                return Err(self.failed(work, "revoke", format!("{id} is still listed after revocation")).await);
            }
            self.journal
                .step(&work.rotation.id, "revoke", "done", &format!("revoked {id} ({result:?}); it is rejected now"))
                .await?;
            work.revoked.push(id.clone());
        }
        work.rotation.revoked_at = Some(Utc::now());
        let detail = if old.is_empty() {
            "no old credential to revoke".to_string()
        } else {
            format!("revoked [{}]", old.join(", "))
        };
        self.advance(work, Phase::Completed, "complete", &detail).await
    }

    async fn roll_back(&self, work: &mut Work<'_>) -> Result<(), StepError> {
        self.intent(work, "rollback", "discard staged values and revoke the new credential").await?;
        for destination in &work.destinations {
            if let Err(e) = self.retry(async || destination.discard(&work.rotation.id).await).await {
                return Err(self.failed(work, "rollback", e.to_string()).await);
            }
        }
        let kind = work.policy.credential.kind;
        let mut revoked = Vec::new();
        if let Some(id) = work.rotation.new_credential_id.clone() {
            if let Err(e) = self.toktra.revoke(kind, &id).await {
                return Err(self.failed(work, "rollback", e.to_string()).await);
            }
            revoked.push(id);
        }
        // A mint whose answer never arrived is found by the rotation's name.
        match self.toktra.list(kind).await {
            Ok(listed) => {
                for stray in listed.into_iter().filter(|c| c.name == work.rotation.credential_name) {
                    if let Err(e) = self.toktra.revoke(kind, &stray.id).await {
                        return Err(self.failed(work, "rollback", e.to_string()).await);
                    }
                    revoked.push(stray.id);
                }
            }
            Err(e) => return Err(self.failed(work, "rollback", e.to_string()).await),
        }
        let detail = format!("rolled back; revoked [{}]; the old credential stays current", revoked.join(", "));
        work.revoked.extend(revoked);
        self.advance(work, Phase::Failed, "rollback", &detail).await
    }

    /// Retries a destination operation on transient errors with exponential backoff and jitter.
    async fn retry<T>(&self, mut op: impl AsyncFnMut() -> Result<T, store::Error>) -> Result<T, store::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Err(e) if e.is_transient() && attempt < self.options.store_attempts => {
                    let delay =
                        Duration::from_millis(100 * (1 << attempt.min(6))).mul_f64(rand::random::<f64>().max(0.2));
                    tracing::warn!(error = %e, attempt, "transient destination failure; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    fn outcome(&self, rotation: &Rotation, revoked: Vec<String>, started_at: DateTime<Utc>) -> Outcome {
        let status = match rotation.phase {
            Phase::Completed => Status::Completed,
            Phase::Promoted if rotation.error.is_none() => Status::AwaitingRevocation,
            Phase::Failed => Status::Failed,
            _ => Status::Incomplete,
        };
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
            error: rotation.error.clone(),
            seconds: (Utc::now() - started_at).num_milliseconds() as f64 / 1000.0,
        }
    }
}
