//! The rotation engine: carries out the actions [`rotation::next`] decides, one policy at a time
//! under the policy's lease, persisting the intent of every side effect before it and the new
//! phase after it. Errors before promotion roll the rotation back (staged values discarded, the
//! new credential revoked, the old one still current); after promotion it only moves forward.
//!
//! The lease is renewed by a heartbeat task while a rotation runs; if it is lost, the step in
//! flight is dropped (as a crash would) and every later journal write is refused by its fence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};

use crate::backoff::Backoff;
use crate::journal::{self, Journal, StepStatus};
use crate::policy::{CredentialKind, Policy};
use crate::rotation::Rotation;
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
    /// Suspected exposure: revoke the old credentials right after promotion, whatever the grace.
    pub compromised: bool,
    /// With `compromised`: revoke them before minting, accepting an outage until promotion.
    pub revoke_first: bool,
    /// The ID of the new rotation, when the caller must know it in advance (the HTTP API
    /// answers with it before the rotation starts). Must be a UUID.
    pub id: Option<String>,
    /// For a rotation decided because the policy was due: the policy's latest rotation when
    /// that was decided (`Some(None)`: it had none). Checked again under the lease, so a policy
    /// another process (a replica, a second scheduled job) rotated meanwhile is not rotated
    /// twice in a row. `None`: rotate whatever happened since (an explicit request).
    pub decided_after: Option<Option<String>>,
}

/// How a policy's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Rotated and the old credentials revoked.
    Completed,
    /// Rotated; the old credentials are revoked by a later run (grace period, still in use).
    AwaitingRevocation,
    /// Failed and rolled back: the old credential is still current.
    Failed,
    /// Failed in a way a later run resumes (e.g. a destination did not accept promotion).
    Incomplete,
}

/// For a compromise-mode rotation: what held the exposed credentials and how fast they died.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Containment {
    /// The exposed credentials (current when the rotation started, or still awaiting revocation).
    pub exposed: Vec<String>,
    /// `destination: credential` for every destination that held one of them.
    pub held_by: Vec<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// From the start of the rotation to the revocation of the last exposed credential.
    pub seconds_to_containment: Option<f64>,
    /// `--revoke-first`: consumers had no valid credential between revocation and promotion.
    pub outage_accepted: bool,
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
    /// Why the revocation is waiting, when it is.
    pub waiting: Option<String>,
    /// The revocation waits because something still serves an old credential (not a grace or
    /// an idle wait): worth telling someone.
    pub held: bool,
    pub error: Option<String>,
    pub compromise: Option<Containment>,
    /// An unfinished rotation of an earlier run, resumed by this one.
    pub resumed: bool,
    /// Stopped between steps by a shutdown; the next run resumes it.
    pub interrupted: bool,
    /// Where this run's failure came from, when a step failed.
    pub failed_in: Option<FailedIn>,
    pub seconds: f64,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Identifies this process in leases: `host:pid:boot:pidns` (see [`this_process`]). Each
    /// acquisition appends a random part.
    pub holder: String,
    /// How long a lease lasts without a heartbeat: a replica that dies is taken over after this.
    pub lease_ttl: Duration,
    /// Attempts per destination operation for transient failures.
    pub store_attempts: u32,
    /// Time after which a rotation stops retrying transient failures and fails (before
    /// promotion) or waits for the next run (after).
    pub rotation_budget: Duration,
    /// Names of the loaded policies, when known (the CLI and the service set them). A policy
    /// that is not among them (deleted) and has nothing unfinished no longer holds credentials
    /// for [`Engine::still_served`]; unknown means every policy in the journal counts.
    pub loaded: Arc<std::sync::RwLock<Option<std::collections::BTreeSet<String>>>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            holder: this_process(),
            lease_ttl: Duration::from_secs(30),
            store_attempts: 6,
            rotation_budget: Duration::from_secs(15 * 60),
            loaded: Arc::default(),
        }
    }
}

/// `host:pid:boot:pidns`: the host name, this process's PID, the first characters of the boot
/// ID and the PID namespace's inode. Only a holder with the same host, boot and namespace can be
/// judged by looking at `/proc/<pid>` here (a container with the same host name but its own PID
/// namespace, or the same host after a reboot, cannot).
pub fn this_process() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| b.trim().chars().filter(|c| *c != '-').take(12).collect::<String>())
        .unwrap_or_default();
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|l| l.to_string_lossy().trim_start_matches("pid:[").trim_end_matches(']').parse::<u64>().ok())
        .map(|n| n.to_string())
        .unwrap_or_default();
    format!("{}:{}:{boot}:{namespace}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Test hook for the crash-matrix tests: when `ROTATOR_CRASH_AT` names this point, the process
/// dies on the spot, as a SIGKILL would (no destructors, no flushing, no lease release). Only
/// in builds with the `crash-points` feature (`scripts/test` enables it), so that in a release
/// build no environment variable can stop a rotation halfway.
#[cfg(feature = "crash-points")]
fn crash_point(point: &str) {
    if std::env::var("ROTATOR_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("crash point `{point}` reached (ROTATOR_CRASH_AT); aborting");
        std::process::abort();
    }
}

/// Without the `crash-points` feature there is no crash hook: `ROTATOR_CRASH_AT` is ignored.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
fn crash_point(_point: &str) {}

/// Test hook beside the crash hook: when `ROTATOR_PAUSE_AT` names this point, the process
/// creates `$ROTATOR_PAUSE_FILE.reached` and waits there until `$ROTATOR_PAUSE_FILE` exists, so
/// a test can let another process act inside a window that is otherwise too short to hit.
#[cfg(feature = "crash-points")]
async fn pause_point(point: &str) {
    let (Ok(at), Ok(file)) = (std::env::var("ROTATOR_PAUSE_AT"), std::env::var("ROTATOR_PAUSE_FILE")) else { return };
    if at != point {
        return;
    }
    let _ = std::fs::write(format!("{file}.reached"), point);
    while !std::path::Path::new(&file).exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
async fn pause_point(_point: &str) {}

/// Said of a `--revoke-first` rotation that has not promoted a new credential yet.
pub const NO_WORKING_CREDENTIAL: &str = "consumers have no working credential: the old ones were revoked first (--revoke-first) and no new one is promoted yet";

/// How the `waiting` of a rotation whose revocation is held begins; see [`Outcome::held`].
pub const HELD: &str = "revocation held";

/// The crash points a rotation passes, in order (`*-N` for each destination index). They crash
/// only builds with the `crash-points` feature (see [`crash_point`]).
pub const CRASH_POINTS: &[&str] = &[
    "started",
    "minting",
    "minted-unrecorded",
    "minted",
    "staged-0",
    "staged-1",
    "staged",
    "verified",
    "promoted-0",
    "promoted-1",
    "promoted",
    "revoked-0",
    "completed",
];

pub struct Engine {
    pub toktra: Arc<toktra::Client>,
    pub journal: Journal,
    pub clients: Arc<Clients>,
    pub options: Options,
    /// Set by a graceful shutdown: rotations stop after the step in flight (they stay
    /// resumable from the journal).
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

/// A held lease and the heartbeat that keeps it.
pub(crate) struct Held {
    pub(crate) lease: journal::Lease,
    lost: tokio::sync::watch::Receiver<bool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
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
    /// `destination: credential` as read at the start, for the compromise report.
    held_by: Vec<String>,
    revoked: Vec<String>,
    lease: journal::Lease,
    deadline: Instant,
    /// Mints after `--revoke-first` that failed and were cleaned up, for the backoff.
    attempts: u32,
    /// Destinations the rotation staged into that the policy no longer names (a rollback
    /// finishes without them and says so).
    unreachable: Vec<String>,
    /// Where the last failed step of this run failed.
    failed_in: Option<FailedIn>,
}

/// A failed step. `rollback` overrides the default (roll back before promotion, go forward
/// after), e.g. a promotion refused by every destination can still be rolled back.
/// Why a step failed. The failure of the part that failed is kept whole, so whether to retry,
/// whether to roll back and where the failure came from are read from its type, never from
/// its text.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Toktra(#[from] toktra::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// A check of the rotation itself failed: Toktra refuses the new credential, a read-back
    /// does not match, an old credential still works after its revocation, a destination
    /// changed by hand.
    #[error("{0}")]
    Check(String),
    /// A promotion failed after it may have changed what consumers read; every destination was
    /// read back and [`after_failed_promotion`] decided.
    #[error("{error}{}", if *partly_current { "; the new credential is current in part, so the rotation only goes forward" } else { "" })]
    Promotion { error: Box<StepError>, roll_back: bool, partly_current: bool },
    /// A `--revoke-first` rotation ran out of time minting again: it never rolls back.
    #[error("{0}")]
    Outage(String),
    /// Several old credentials could not be revoked.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<StepError>),
}

impl StepError {
    /// Whether the failed step rolls the rotation back: before promotion it does, unless the
    /// failure says otherwise (a promotion read back, an outage that only goes forward).
    fn rolls_back(&self, phase: Phase) -> bool {
        match self {
            StepError::Promotion { roll_back, .. } => *roll_back,
            StepError::Outage(_) => false,
            _ => matches!(phase, Phase::Started | Phase::Minted | Phase::Staged),
        }
    }

    /// Whether the failure may pass by itself (a destination or Toktra briefly unreachable).
    fn is_transient(&self) -> bool {
        match self {
            StepError::Toktra(e) => e.is_transient(),
            StepError::Store(e) => e.is_transient(),
            StepError::Promotion { error, .. } => error.is_transient(),
            StepError::Several(errors) => errors.iter().all(StepError::is_transient),
            StepError::Journal(_) | StepError::Check(_) | StepError::Outage(_) => false,
        }
    }

    /// The part the failure came from.
    fn failed_in(&self) -> FailedIn {
        match self {
            StepError::Toktra(_) => FailedIn::Toktra,
            StepError::Store(e) => FailedIn::Destination(e.store),
            StepError::Journal(_) => FailedIn::Journal,
            StepError::Check(_) | StepError::Outage(_) => FailedIn::Check,
            StepError::Promotion { error, .. } => error.failed_in(),
            StepError::Several(errors) => errors.first().map_or(FailedIn::Check, StepError::failed_in),
        }
    }
}

impl From<String> for StepError {
    fn from(message: String) -> StepError {
        StepError::Check(message)
    }
}

impl From<&str> for StepError {
    fn from(message: &str) -> StepError {
        StepError::Check(message.into())
    }
}

/// Where a rotation's failure came from, for metrics and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailedIn {
    Toktra,
    Destination(store::Kind),
    Journal,
    /// One of the rotation's own checks.
    Check,
}

/// Between attempts to mint (a create that failed, or a `--revoke-first` rotation minting again).
const MINT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(32)).jittered(0.5);
/// Between attempts of a destination operation that failed transiently.
const STORE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(6_400)).jittered(0.2);

/// How an action ended, when it did not fail.
enum Flow {
    Continue,
    /// Nothing more to do in this run (waiting for grace or for the old credential to go idle).
    Wait,
}

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

    pub(crate) async fn acquire(&self, policy: &str) -> Result<Held, Error> {
        let holder = format!("{}:{}", self.options.holder, &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let ttl = self.options.lease_ttl;
        let lease = match self.journal.acquire(policy, &holder, ttl).await? {
            Ok(lease) => lease,
            Err(current) => {
                // A process of this host that is gone (killed, crashed) cannot be working on the
                // policy: take its lease now rather than after it expires.
                let dead = dead_local_holder(&current.holder, &self.options.holder);
                match dead {
                    true => match self.journal.take_over(policy, &current.holder, &holder, ttl).await? {
                        Some(lease) => {
                            tracing::warn!(policy, previous = %current.holder, "took over the lease of a process that no longer exists");
                            lease
                        }
                        None => {
                            return Err(Error::Busy {
                                policy: policy.into(),
                                holder: current.holder,
                                until: current.expires_at,
                            });
                        }
                    },
                    false => {
                        return Err(Error::Busy {
                            policy: policy.into(),
                            holder: current.holder,
                            until: current.expires_at,
                        });
                    }
                }
            }
        };
        let (lost_tx, lost) = tokio::sync::watch::channel(false);
        let journal = self.journal.clone();
        let beat = lease.clone();
        let heartbeat = tokio::spawn(async move {
            let mut last_ok = Instant::now();
            loop {
                tokio::time::sleep(ttl / 4).await;
                match journal.renew(&beat, ttl).await {
                    Ok(true) => last_ok = Instant::now(),
                    Ok(false) => break,
                    // The journal may be briefly unreachable; the lease holds until it expires, and
                    // the work stops a quarter of it before then, so no step outlives the lease.
                    Err(e) if last_ok.elapsed() < ttl - ttl / 4 => {
                        tracing::warn!(error = %e, "could not renew the lease; retrying")
                    }
                    Err(_) => break,
                }
            }
            tracing::error!(policy = %beat.policy, "lost the policy's lease; stopping its rotation");
            let _ = lost_tx.send(true);
        });
        Ok(Held { lease, lost, heartbeat })
    }

    pub(crate) async fn release(&self, held: &Held) {
        held.heartbeat.abort();
        if let Err(e) = self.journal.release(&held.lease).await {
            tracing::warn!(policy = %held.lease.policy, error = %e, "could not release the lease; it expires by itself");
        }
    }

    async fn rotate_locked(&self, policy: &Policy, request: &Request, held: &Held) -> Result<Vec<Outcome>, Error> {
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
    async fn start(
        &self,
        policy: &Policy,
        request: &Request,
        held: &Held,
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

    fn destinations(&self, policy: &Policy) -> Result<Vec<Destination>, store::Error> {
        policy.destinations.iter().map(|d| Destination::new(d, policy.credential.kind, &self.clients)).collect()
    }

    /// Drives one rotation until it is done, waits, or fails. `fresh` carries what `start` read
    /// (old secrets and who held them) for a rotation this process started.
    async fn run(
        &self,
        policy: &Policy,
        rotation: Rotation,
        memory: Memory,
        fresh: Option<(HashMap<String, Secret>, Vec<String>)>,
        held: &Held,
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
                .map(|d| Destination::new(d, rotation.kind, &self.clients))
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
        let mut work = Work {
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

    async fn save(&self, rotation: &mut Rotation, lease: &journal::Lease) -> Result<(), journal::Error> {
        stamp(rotation);
        self.journal.update(rotation, lease).await
    }

    /// Sets the phase after a side effect and records the step as done. A successful step
    /// clears the last error, except on the way to `failed`, which keeps the reason.
    async fn advance(&self, work: &mut Work<'_>, phase: Phase, step: &str, detail: &str) -> Result<Flow, StepError> {
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

    async fn note(&self, work: &Work<'_>, step: &str, status: StepStatus, detail: &str) -> Result<(), StepError> {
        self.journal.step(&work.rotation.id, step, status, detail, &work.lease).await?;
        Ok(())
    }

    /// Records a failed step with what failed.
    async fn failed(&self, work: &Work<'_>, step: &str, error: impl Into<StepError>) -> StepError {
        let error = error.into();
        if let Err(e) =
            self.journal.step(&work.rotation.id, step, StepStatus::Failed, &error.to_string(), &work.lease).await
        {
            tracing::warn!(error = %e, "could not record a failed step");
        }
        error
    }

    async fn revoke_first(&self, work: &mut Work<'_>) -> Result<Flow, StepError> {
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

    async fn mint(&self, work: &mut Work<'_>) -> Result<Flow, StepError> {
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
    async fn abandon(&self, work: &mut Work<'_>) -> Result<Flow, StepError> {
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
    async fn revoke_named(&self, work: &Work<'_>, keep: Option<&str>) -> Result<Vec<String>, StepError> {
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
    async fn recover(&self, work: &mut Work<'_>) -> Result<Flow, StepError> {
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

    async fn stage(&self, work: &mut Work<'_>) -> Result<Flow, StepError> {
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

    async fn verify(&self, work: &mut Work<'_>) -> Result<Flow, StepError> {
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

    async fn promote(&self, work: &mut Work<'_>) -> Result<Flow, StepError> {
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
    async fn promote_failed(&self, work: &Work<'_>, error: StepError) -> StepError {
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

    async fn wait_for_grace(&self, work: &mut Work<'_>, until: DateTime<Utc>) -> Result<Flow, StepError> {
        let waiting = format!("grace period until {}", until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        tracing::info!(policy = %work.policy.name, rotation = %work.rotation.id, "old credentials stay valid: {waiting}");
        self.set_waiting(work, waiting).await
    }

    async fn set_waiting(&self, work: &mut Work<'_>, waiting: String) -> Result<Flow, StepError> {
        if work.rotation.waiting.as_deref() != Some(waiting.as_str()) {
            work.rotation.waiting = Some(waiting);
            self.save(&mut work.rotation, &work.lease).await?;
        }
        Ok(Flow::Wait)
    }

    async fn revoke_old(&self, work: &mut Work<'_>) -> Result<Flow, StepError> {
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
    async fn still_served(&self, work: &Work<'_>, old: &[String]) -> Result<Option<String>, StepError> {
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
    async fn revoke_one(&self, work: &Work<'_>, id: &str) -> Result<(toktra::Revoked, bool), StepError> {
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

    async fn roll_back(&self, work: &mut Work<'_>) -> Result<Flow, StepError> {
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
    fn outage(rotation: &Rotation) -> bool {
        rotation.revoke_first && rotation.revoked_at.is_some()
    }

    /// During a `--revoke-first` outage a rotation only rolls forward: the failed attempt was
    /// cleaned up (its credential revoked), and a new one is minted after a backoff, until the
    /// run's deadline; then the rotation stays unfinished, saying so, for the next run.
    async fn mint_again(&self, work: &mut Work<'_>, detail: &str) -> Result<Flow, StepError> {
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

    /// Retries a destination operation on transient errors with exponential backoff and full
    /// jitter, within the attempt limit and the rotation's time budget.
    async fn retry<T, F, Fut>(&self, deadline: Instant, mut op: F) -> Result<T, store::Error>
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
    fn finished(&self, resumed: bool, work: Work<'_>, started_at: DateTime<Utc>) -> Outcome {
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

/// Whether a destination's current value is the new credential of `rotation`.
fn serves(current: &Record, rotation: &Rotation) -> bool {
    current.rotation_id.as_deref() == Some(rotation.id.as_str())
        || rotation.new_credential_id.as_deref() == Some(current.id.as_str())
}

/// Where a rotation goes after a failed promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterPromotion {
    /// Discard staged values and revoke the new credential: no consumer reads it.
    RollBack,
    /// Stay `verified`; a later run promotes the rest.
    Forward,
}

/// Decides from what each destination serves now (`Some(true)`: the new credential,
/// `Some(false)`: something else, `None`: could not be read) and whether the failure may pass by
/// itself. Rolling back revokes the new credential, so it is chosen only when every destination
/// is known not to serve it and trying again cannot help.
pub(crate) fn after_failed_promotion(serving: &[Option<bool>], transient: bool) -> AfterPromotion {
    if !transient && serving.iter().all(|s| *s == Some(false)) {
        AfterPromotion::RollBack
    } else {
        AfterPromotion::Forward
    }
}

/// Sets a rotation's `updated_at`, and `finished_at` when it has just ended, before it is saved.
fn stamp(rotation: &mut Rotation) {
    rotation.updated_at = Utc::now();
    if rotation.phase.is_terminal() && rotation.finished_at.is_none() {
        rotation.finished_at = Some(rotation.updated_at);
    }
}

/// Said in the journal of a mint one of whose create attempts lost its answer.
const CREATE_ANSWER_LOST: &str = "create answer was lost";

/// How old a shared listing may be for `require_idle`'s last-use check.
const SHARED_LISTING_AGE: Duration = Duration::from_secs(30);

/// Whether a rotation's mint may have made a credential it does not know of: an attempt of the
/// create failed (and was tried again), or lost its answer. (Journals written before lost
/// answers had a status of their own said so only in the detail of a `done` step.)
fn create_was_uncertain(steps: &[journal::Step]) -> bool {
    steps.iter().any(|s| {
        s.step == "mint"
            && match s.status {
                StepStatus::Failed | StepStatus::Uncertain => true,
                StepStatus::Done => s.detail.contains(CREATE_ANSWER_LOST),
                StepStatus::Intent => false,
            }
    })
}

/// How long to wait before looking up what an interrupted mint created: until no create the
/// interrupted run sent can still land. Every create attempt of that run began at or after its
/// last `mint` step and ended within `attempts × (timeout + max backoff)`, and (it being dead, or
/// stopped by its heartbeat before its lease ran out) none began after now, so none lands later
/// than one timeout from now.
fn create_settle_wait(steps: &[journal::Step], toktra: &crate::toktra::Settings, now: DateTime<Utc>) -> Duration {
    let Some(last) = steps.iter().rev().find(|s| s.step == "mint") else { return Duration::ZERO };
    let window = (toktra.timeout + toktra.retry.max_delay).saturating_mul(toktra.retry.attempts.max(1));
    let settled = last.at + chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    (settled - now).to_std().unwrap_or_default().min(toktra.timeout)
}

/// Whether `holder` (`host:pid:boot:pidns:random`) is a process that no longer runs, judged by
/// `/proc/<pid>` only when host, boot ID and PID namespace all match `this` (`host:pid:boot:pidns`,
/// see [`this_process`]); any other holder (another host, container or boot, or an older format)
/// is left to its lease's expiry. PIDs can be reused; a reused PID only delays the takeover.
fn dead_local_holder(holder: &str, this: &str) -> bool {
    let place = |id: &str| -> Option<(String, u32, String, String)> {
        let parts: Vec<&str> = id.split(':').collect();
        let (host, pid, boot, namespace) = (parts.first()?, parts.get(1)?, parts.get(2)?, parts.get(3)?);
        (!boot.is_empty() && !namespace.is_empty())
            .then(|| (host.to_string(), pid.parse().ok(), boot.to_string(), namespace.to_string()))
            .and_then(|(h, p, b, n)| p.map(|p| (h, p, b, n)))
    };
    let (Some((host, pid, boot, namespace)), Some((this_host, _, this_boot, this_namespace))) =
        (place(holder), place(this))
    else {
        return false;
    };
    (host, boot, namespace) == (this_host, this_boot, this_namespace)
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::{AfterPromotion, after_failed_promotion, create_settle_wait, dead_local_holder, this_process};
    use super::{Duration, Secret, Utc, journal};

    /// Only a holder of this host, boot and PID namespace is judged by its PID here.
    #[test]
    fn a_holder_is_judged_dead_locally_only_in_the_same_host_boot_and_namespace() {
        let this = this_process();
        let parts: Vec<&str> = this.split(':').collect();
        assert_eq!(parts.len(), 4, "{this}");
        let (host, boot, namespace) = (parts[0], parts[2], parts[3]);
        // A PID that cannot exist (above the kernel's pid_max).
        let gone = 999_999_999u32;
        assert!(dead_local_holder(&format!("{host}:{gone}:{boot}:{namespace}:abcd"), &this));
        assert!(!dead_local_holder(&format!("{host}:{}:{boot}:{namespace}:abcd", std::process::id()), &this), "alive");
        assert!(!dead_local_holder(&format!("{host}:{gone}:{boot}:1:abcd"), &this), "another PID namespace");
        assert!(!dead_local_holder(&format!("{host}:{gone}:otherboot:{namespace}:abcd"), &this), "another boot");
        assert!(!dead_local_holder(&format!("elsewhere:{gone}:{boot}:{namespace}:abcd"), &this), "another host");
        assert!(!dead_local_holder(&format!("{host}:{gone}:abcd"), &this), "the older format waits for expiry");
    }

    /// An interrupted mint is looked up once no create of the interrupted run can still land:
    /// at most one timeout from now, less when its last mint step is older than every attempt it
    /// could have made, and not at all when it never tried to mint.
    #[test]
    fn an_interrupted_mint_is_looked_up_once_its_create_cannot_land() {
        let mut toktra = crate::toktra::Settings::new(
            "http://127.0.0.1:1".to_string(),
            crate::toktra::ManagementAuth::ApiKey(Secret::new("k")),
        );
        toktra.timeout = Duration::from_secs(30);
        toktra.retry.attempts = 2;
        toktra.retry.max_delay = Duration::from_secs(10);
        let now = Utc::now();
        let step = |name: &str, ago: i64| journal::Step {
            rotation_id: "r".into(),
            seq: 0,
            at: now - chrono::Duration::seconds(ago),
            step: name.into(),
            status: journal::StepStatus::Intent,
            detail: String::new(),
        };
        let wait = |steps: &[journal::Step]| create_settle_wait(steps, &toktra, now);
        assert_eq!(wait(&[]), Duration::ZERO);
        assert_eq!(wait(&[step("revoke-first", 0)]), Duration::ZERO, "never tried to mint");
        assert_eq!(wait(&[step("mint", 0)]), Duration::from_secs(30), "just sent: one timeout");
        assert_eq!(wait(&[step("mint", 70)]), Duration::from_secs(10), "2 × (30 s + 10 s) after the intent");
        assert_eq!(wait(&[step("mint", 100), step("mint", 75)]), Duration::from_secs(5), "the last mint step counts");
        assert_eq!(wait(&[step("mint", 600)]), Duration::ZERO, "long over");
    }

    /// The destinations' answers after a failed promotion, for AWS (`AWSCURRENT` moved but
    /// `AWSPENDING` not cleared), Vault (data written, metadata refused) and files (renamed, the
    /// directory fsync failed) alike: a destination serving the new credential forbids a rollback.
    #[test]
    fn a_destination_serving_the_new_credential_forbids_a_rollback() {
        use AfterPromotion::*;
        let table: &[(&[Option<bool>], bool, AfterPromotion)] = &[
            (&[Some(false)], false, RollBack),
            (&[Some(false), Some(false)], false, RollBack),
            (&[Some(false)], true, Forward),
            (&[Some(true)], false, Forward),
            (&[Some(false), Some(true)], false, Forward),
            (&[Some(true), Some(false)], false, Forward),
            (&[None], false, Forward),
            (&[Some(false), None], false, Forward),
        ];
        for (serving, transient, expected) in table {
            assert_eq!(after_failed_promotion(serving, *transient), *expected, "{serving:?} transient={transient}");
        }
    }
}
