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
use crate::store::{self, Clients, Handle, Record, Store};
use crate::toktra::{self, Probe};

mod crash;
mod failure;
mod lease;
mod revoke;
mod run;
mod steps;
#[cfg(test)]
mod tests;

use crash::{crash_point, pause_point};
use failure::StepError;

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
pub(crate) struct Leased {
    pub(crate) lease: journal::Lease,
    lost: tokio::sync::watch::Receiver<bool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for Leased {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// What one rotation holds in memory while it runs.
struct InFlight<'a> {
    policy: &'a Policy,
    rotation: Rotation,
    destinations: Vec<Handle>,
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
