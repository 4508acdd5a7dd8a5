//! The rotation record and its state machine, with no IO. A [`Rotation`] is what the journal
//! keeps of one rotation; its [`Phase`] is persisted with it, and
//! [`next`] decides, from the persisted rotation, what this process holds in memory and the time,
//! what the engine does next. Because the decision is a pure function, every phase, including
//! the ones only a crash can leave behind, is tested as data without any server.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::credential::CredentialKind;

/// One rotation as the journal keeps it: everything a later run needs to resume it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rotation {
    /// Chosen before any side effect; also the AWS `ClientRequestToken` and the suffix of the
    /// minted credential's name.
    pub id: String,
    pub policy: String,
    pub kind: CredentialKind,
    pub phase: Phase,
    pub reason: Option<String>,
    pub compromised: bool,
    /// Name the new credential is minted under: `<base name>-<rotation id>`.
    pub credential_name: String,
    pub new_credential_id: Option<String>,
    /// Fingerprint of the new secret, to compare read-backs against.
    pub new_fingerprint: Option<String>,
    /// Credentials current in the destinations before this rotation; revoked after promotion.
    pub old_credentials: Vec<String>,
    /// Destination labels, in policy order.
    pub destinations: Vec<String>,
    pub promoted_at: Option<DateTime<Utc>>,
    /// When the old credentials may be revoked (promotion + grace).
    pub revoke_after: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The last failure, for status and retries.
    pub error: Option<String>,
    /// Compromise mode with an accepted outage: the old credentials are revoked before minting.
    pub revoke_first: bool,
    /// Why the rotation is waiting (grace period, the old credential still in use), for status.
    pub waiting: Option<String>,
    /// Old credentials revoked so far (a revocation that failed for some leaves the rest here).
    pub revoked_credentials: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Rotation {
    /// A rotation of policy `p` started at `started`, replacing `key-old` with `key-<id>`, for
    /// the pure modules' table tests.
    #[cfg(test)]
    pub(crate) fn example(id: &str, phase: Phase, started: &str) -> Rotation {
        let t: DateTime<Utc> = started.parse().unwrap_or_default();
        Rotation {
            id: id.into(),
            policy: "p".into(),
            kind: CredentialKind::ApiKey,
            phase,
            reason: None,
            compromised: false,
            credential_name: format!("p-{id}"),
            new_credential_id: Some(format!("key-{id}")),
            new_fingerprint: None,
            old_credentials: vec!["key-old".into()],
            destinations: vec![],
            promoted_at: phase.is_promoted().then_some(t),
            revoke_after: Some(t + chrono::Duration::hours(24)),
            revoked_at: None,
            error: None,
            revoke_first: false,
            waiting: None,
            revoked_credentials: Vec::new(),
            started_at: t,
            updated_at: t,
            finished_at: None,
        }
    }
}

/// Where a rotation stands. The engine persists the new phase after each step's side effect,
/// and a step's intent before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The rotation ID and the credentials it replaces are recorded; a mint may be under way.
    Started,
    /// The new credential exists at Toktra; its secret is held only in memory until staged.
    Minted,
    /// The new value is pending in every destination.
    Staged,
    /// The new credential works at Toktra and every destination read it back.
    Verified,
    /// Every destination serves the new value; the old credentials await revocation.
    Promoted,
    /// Old credentials revoked (or there were none). Terminal.
    Completed,
    /// Failed before promotion: discarding staged values and revoking the new credential.
    RollingBack,
    /// Rolled back; the old credential is still current. Terminal.
    Failed,
    /// Promoted, but its revocation could not be completed and a compromise-mode rotation took
    /// its remaining work over (its old credentials are among the newer rotation's). Terminal.
    Superseded,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Started,
        Phase::Minted,
        Phase::Staged,
        Phase::Verified,
        Phase::Promoted,
        Phase::Completed,
        Phase::RollingBack,
        Phase::Failed,
        Phase::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Started => "started",
            Phase::Minted => "minted",
            Phase::Staged => "staged",
            Phase::Verified => "verified",
            Phase::Promoted => "promoted",
            Phase::Completed => "completed",
            Phase::RollingBack => "rolling_back",
            Phase::Failed => "failed",
            Phase::Superseded => "superseded",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Superseded)
    }

    /// From here on the rotation only moves forward: consumers may already read the new value.
    pub fn is_promoted(self) -> bool {
        matches!(self, Phase::Promoted | Phase::Completed | Phase::Superseded)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = ();
    fn from_str(s: &str) -> Result<Phase, ()> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s).ok_or(())
    }
}

/// What the engine holds in memory for a rotation, beyond the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// This process started the rotation (so a `Started` rotation has not minted yet).
    pub started_here: bool,
    /// The new secret is in memory (minted here, or recovered from a staged copy).
    pub has_secret: bool,
}

/// The next thing to do for a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Compromise mode with `--revoke-first`: revoke the exposed credentials before minting,
    /// accepting an outage until the new credential is promoted.
    RevokeFirst,
    Mint,
    /// A `Started` rotation from an earlier process: its mint may have happened with the answer
    /// lost, so find credentials by the rotation's name, revoke them, and fail the rotation.
    Abandon,
    /// Read the new secret back from a staged copy (after a crash); if none exists, roll back.
    Recover,
    Stage,
    Verify,
    Promote,
    /// Revoke the old credentials now.
    RevokeOld,
    /// Nothing to do until the grace period ends.
    WaitForGrace {
        until: DateTime<Utc>,
    },
    RollBack,
    /// Terminal; nothing to do.
    Done,
}

/// Decides the next action. Pure: same input, same answer.
pub fn next(rotation: &Rotation, memory: Memory, now: DateTime<Utc>) -> Action {
    match rotation.phase {
        Phase::Started
            if memory.started_here
                && rotation.revoke_first
                && rotation.revoked_at.is_none()
                && !rotation.old_credentials.is_empty() =>
        {
            Action::RevokeFirst
        }
        Phase::Started if memory.started_here => Action::Mint,
        Phase::Started => Action::Abandon,
        Phase::Minted | Phase::Staged if !memory.has_secret => Action::Recover,
        Phase::Minted => Action::Stage,
        Phase::Staged => Action::Verify,
        Phase::Verified => Action::Promote,
        Phase::Promoted => match rotation.revoke_after {
            _ if rotation.old_credentials.is_empty() || rotation.compromised => Action::RevokeOld,
            Some(until) if until > now => Action::WaitForGrace { until },
            _ => Action::RevokeOld,
        },
        Phase::RollingBack => Action::RollBack,
        Phase::Completed | Phase::Failed | Phase::Superseded => Action::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replacing `key-old`, started 2026-11-29, revocable from 2026-11-30.
    fn rotation(phase: Phase) -> Rotation {
        let mut r = Rotation::example("r1", phase, "2026-11-29T00:00:00Z");
        r.promoted_at = None;
        r
    }

    #[test]
    fn every_phase_has_a_next_action() {
        let before: DateTime<Utc> = "2026-11-29T12:00:00Z".parse().unwrap();
        let after: DateTime<Utc> = "2026-11-30T00:00:01Z".parse().unwrap();
        let fresh = Memory { started_here: true, has_secret: true };
        let resumed = Memory { started_here: false, has_secret: false };
        let wait = Action::WaitForGrace { until: "2026-11-30T00:00:00Z".parse().unwrap() };
        // (phase, memory, now, expected)
        let table = [
            (Phase::Started, Memory { started_here: true, has_secret: false }, before, Action::Mint),
            (Phase::Started, resumed, before, Action::Abandon),
            (Phase::Minted, fresh, before, Action::Stage),
            (Phase::Minted, resumed, before, Action::Recover),
            (Phase::Staged, fresh, before, Action::Verify),
            (Phase::Staged, resumed, before, Action::Recover),
            (Phase::Verified, resumed, before, Action::Promote),
            (Phase::Promoted, resumed, before, wait.clone()),
            (Phase::Promoted, resumed, after, Action::RevokeOld),
            (Phase::RollingBack, resumed, before, Action::RollBack),
            (Phase::Completed, resumed, before, Action::Done),
            (Phase::Failed, fresh, after, Action::Done),
            (Phase::Superseded, resumed, after, Action::Done),
        ];
        for (phase, memory, now, expected) in table {
            assert_eq!(next(&rotation(phase), memory, now), expected, "{phase} {memory:?} {now}");
        }
        let mut first = rotation(Phase::Started);
        first.revoke_first = true;
        assert_eq!(next(&first, Memory { started_here: true, has_secret: false }, before), Action::RevokeFirst);
        first.revoked_at = Some(before);
        assert_eq!(next(&first, Memory { started_here: true, has_secret: false }, before), Action::Mint);
        assert_eq!(next(&first, resumed, before), Action::Abandon);
        let mut compromised = rotation(Phase::Promoted);
        compromised.compromised = true;
        assert_eq!(next(&compromised, resumed, before), Action::RevokeOld);
        let mut nothing_old = rotation(Phase::Promoted);
        nothing_old.old_credentials.clear();
        assert_eq!(next(&nothing_old, resumed, before), Action::RevokeOld);
        for phase in Phase::ALL {
            assert_eq!(phase.as_str().parse::<Phase>(), Ok(phase));
        }
    }
}
