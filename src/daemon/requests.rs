//! On-demand rotations (`POST /v1/policies/{name}/rotate`): checked, recorded in the journal
//! before they are answered, and then only a wake-up; a pass runs them like any other work, in
//! whichever process on the journal gets there first. A policy has at most one open request
//! (the journal's unique index decides between processes), and an `Idempotency-Key` names one
//! request per policy, answered again with the same ID.

use chrono::Utc;

use crate::journal;
use crate::rotation::Phase;

use super::Daemon;

/// The longest `Idempotency-Key` accepted, in bytes (visible ASCII only).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// An accepted on-demand request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The ID its rotation has (or will have).
    pub id: String,
    /// An earlier request with the same `Idempotency-Key`, answered again.
    pub replayed: bool,
}

/// The longest rotation `reason` accepted, in bytes of UTF-8: it is stored in the journal and
/// served by `GET /v1/rotations`, so it must not grow them without bound.
// TODO-robustness: the bound belongs with `engine::Request`, so library callers get it too.
pub const MAX_REASON_BYTES: usize = 1024;

/// Checks a rotation `reason` against `MAX_REASON_BYTES`; the message never repeats the reason.
pub fn check_reason(reason: &str) -> Result<(), String> {
    match reason.len() {
        n if n > MAX_REASON_BYTES => {
            Err(format!("the reason is {n} bytes long; at most {MAX_REASON_BYTES} bytes (1 KiB) are accepted"))
        }
        _ => Ok(()),
    }
}

/// Why an on-demand request was refused.
#[derive(Debug)]
pub enum Refused {
    UnknownPolicy,
    InFlight(String),
    /// The request itself is wrong (a reason that is too long).
    Invalid(String),
    /// The `Idempotency-Key` names an earlier request of the policy with another body.
    KeyReused(String),
    ShuttingDown,
    /// The journal could not record it (or say whether it may be recorded).
    Journal(journal::Error),
}

impl Daemon {
    /// Records an on-demand rotation in the journal and wakes the reconciler; answers with the
    /// rotation ID the rotation will have. A request with an `Idempotency-Key` already used for
    /// the policy is answered with that request's ID, whatever became of it.
    pub async fn request(
        &self,
        policy: &str,
        reason: Option<String>,
        compromised: bool,
        idempotency_key: Option<String>,
    ) -> Result<Accepted, Refused> {
        if self.is_stopping() {
            return Err(Refused::ShuttingDown);
        }
        if let Some(reason) = &reason {
            check_reason(reason).map_err(Refused::Invalid)?;
        }
        if let Some(key) = &idempotency_key {
            check_idempotency_key(key).map_err(Refused::Invalid)?;
        }
        if !self.policies().iter().any(|p| p.name == policy) {
            return Err(Refused::UnknownPolicy);
        }
        let journal = &self.engine.journal;
        let replay = async |key: &Option<String>, reason: Option<&str>| -> Result<Option<Accepted>, Refused> {
            let Some(key) = key else { return Ok(None) };
            let Some(found) = journal.request_by_key(policy, key).await.map_err(Refused::Journal)? else {
                return Ok(None);
            };
            // A retry repeats its request; the same key with another body is a caller's mistake
            // that would otherwise be answered as if it had been carried out.
            if (found.reason.as_deref(), found.compromised) != (reason, compromised) {
                return Err(Refused::KeyReused(format!(
                    "this Idempotency-Key was used for request {} of the policy with another body (reason or compromised differ)",
                    found.id
                )));
            }
            Ok(Some(Accepted { id: found.id, replayed: true }))
        };
        if let Some(accepted) = replay(&idempotency_key, reason.as_deref()).await? {
            return Ok(accepted);
        }
        // A request waiting for its turn (whichever process accepted it) is reported as queued,
        // as `GET /v1/rotations/{id}` shows it, until its rotation is recorded, even while a
        // process works on the policy (resuming an earlier rotation first).
        self.refuse_if_open(policy).await?;
        if self.state().running.contains(policy) {
            return Err(Refused::InFlight("a rotation of this policy is running".into()));
        }
        // Unfinished rotations that are not just waiting to revoke (another replica's, or a
        // crashed one's) are in flight as far as a caller is concerned.
        match journal.unfinished(Some(policy)).await {
            Ok(unfinished) => {
                if let Some(r) = unfinished.iter().find(|r| r.phase != Phase::Promoted) {
                    return Err(Refused::InFlight(format!("rotation {} is unfinished ({})", r.id, r.phase)));
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the journal for a request"),
        }
        let request = journal::Request {
            id: uuid::Uuid::now_v7().to_string(),
            policy: policy.to_string(),
            reason,
            compromised,
            idempotency_key,
            created_at: Utc::now(),
            state: journal::RequestState::Queued,
        };
        if let Err(e) = journal.add_request(&request).await {
            // Refused by a unique index when another process recorded a request for the policy
            // (or with the key) meanwhile; anything else is the journal's failure.
            if let Some(accepted) = replay(&request.idempotency_key, request.reason.as_deref()).await? {
                return Ok(accepted);
            }
            self.refuse_if_open(policy).await?;
            return Err(Refused::Journal(e));
        }
        tracing::info!(policy, request = %request.id, compromised, "rotation requested");
        self.wake.notify_one();
        Ok(Accepted { id: request.id, replayed: false })
    }

    /// Refuses a request for a policy that has one open already.
    async fn refuse_if_open(&self, policy: &str) -> Result<(), Refused> {
        let journal = &self.engine.journal;
        let open = journal.open_requests().await.map_err(Refused::Journal)?;
        let Some(q) = open.into_iter().find(|r| r.policy == policy) else { return Ok(()) };
        Err(Refused::InFlight(match journal.get(&q.id).await {
            Ok(Some(row)) => format!("rotation {} of this policy is in flight ({})", q.id, row.phase),
            _ => queued_message(&q),
        }))
    }
}

fn queued_message(q: &journal::Request) -> String {
    format!(
        "rotation {} of this policy is already queued (requested at {})",
        q.id,
        q.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Checks an `Idempotency-Key`: 1 to 255 bytes of visible ASCII. The message never repeats it.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
        ));
    }
    Ok(())
}
