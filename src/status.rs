//! `rotator status` and `rotator history`: what the journal says about each policy, without
//! calling Toktra or any destination. Pure functions over journal rows and `now`, so they are
//! cheap, safe to run at any time, and tested without servers.

use chrono::{DateTime, Utc};

use crate::policy::Policy;
use crate::rotation::Phase;
use crate::rotation::Rotation;

/// One policy's standing.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PolicyStatus {
    pub policy: String,
    /// The credential rotator last made current, if it has rotated this policy.
    pub current_credential: Option<String>,
    pub promoted_at: Option<DateTime<Utc>>,
    pub age_seconds: Option<i64>,
    pub state: State,
    /// Old credentials still valid, with why their revocation waits.
    pub pending_revocations: Vec<PendingRevocation>,
    /// The rotation not yet finished, if any, and its phase.
    pub in_flight: Option<String>,
    /// The error of the most recent rotation, if it failed or is stuck.
    pub last_error: Option<String>,
    pub last_rotation: Option<String>,
}

/// Where a policy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Rotated; nothing pending.
    Ok,
    NeverRotated,
    /// A rotation is under way.
    InFlight,
    /// Promoted; old credentials wait for their grace (or to go idle).
    AwaitingRevocation,
    /// An unfinished rotation whose last step failed.
    Stuck,
    /// The last rotation failed and was rolled back.
    Failed,
    /// A policy no longer loaded whose rotation is unfinished.
    RemovedWithWorkLeft,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::NeverRotated => "never_rotated",
            State::InFlight => "in_flight",
            State::AwaitingRevocation => "awaiting_revocation",
            State::Stuck => "stuck",
            State::Failed => "failed",
            State::RemovedWithWorkLeft => "removed_with_work_left",
        }
    }
}

impl std::fmt::Display for State {
    /// Padded like a `str`, so status tables line up.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PendingRevocation {
    pub rotation: String,
    pub credentials: Vec<String>,
    pub revoke_after: Option<DateTime<Utc>>,
    pub why: String,
}

/// Computes every policy's status from its rotations (most recent first, as
/// `Journal::history` returns them).
/// Policies that are gone (deleted or renamed) but left unfinished rotations follow, with the
/// state `removed_with_work_left`: their work is still done (see `leftover`), and what waits is
/// shown like any policy's.
pub fn status(policies: &[Policy], history: &[Rotation], now: DateTime<Utc>) -> Vec<PolicyStatus> {
    let mut by_policy: std::collections::HashMap<&str, Vec<&Rotation>> = std::collections::HashMap::new();
    for r in history {
        by_policy.entry(r.policy.as_str()).or_default().push(r);
    }
    let mut rows: Vec<PolicyStatus> = policies
        .iter()
        .map(|p| policy_status(&p.name, by_policy.get(p.name.as_str()).map(Vec::as_slice).unwrap_or(&[]), now))
        .collect();
    let mut gone: Vec<&str> = history
        .iter()
        .filter(|r| !r.phase.is_terminal() && !policies.iter().any(|p| p.name == r.policy))
        .map(|r| r.policy.as_str())
        .collect();
    gone.sort();
    gone.dedup();
    for name in gone {
        let mut row = policy_status(name, by_policy.get(name).map(Vec::as_slice).unwrap_or(&[]), now);
        row.state = State::RemovedWithWorkLeft;
        rows.push(row);
    }
    rows
}

fn policy_status(policy: &str, rotations: &[&Rotation], now: DateTime<Utc>) -> PolicyStatus {
    let current = rotations.iter().find(|r| r.phase.is_promoted());
    let pending_revocations: Vec<PendingRevocation> = rotations
        .iter()
        .filter(|r| r.phase == Phase::Promoted)
        .map(|r| PendingRevocation {
            rotation: r.id.clone(),
            credentials: r
                .old_credentials
                .iter()
                .filter(|c| Some(*c) != r.new_credential_id.as_ref() && !r.revoked_credentials.contains(c))
                .cloned()
                .collect(),
            revoke_after: r.revoke_after,
            why: match (&r.waiting, &r.error, r.revoke_after) {
                (_, Some(error), _) => format!("revocation failed: {error}"),
                (Some(waiting), _, _) => waiting.clone(),
                (None, None, Some(at)) if at > now => {
                    format!("grace period until {}", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                }
                _ => "due: the next run revokes it".to_string(),
            },
        })
        .collect();
    let in_flight = rotations.iter().find(|r| !r.phase.is_terminal() && !r.phase.is_promoted());
    let latest = rotations.first();
    let state = match (latest, in_flight) {
        (None, _) => State::NeverRotated,
        (_, Some(r)) if r.error.is_some() => State::Stuck,
        (_, Some(_)) => State::InFlight,
        (Some(r), None) if r.phase == Phase::Failed => State::Failed,
        _ if !pending_revocations.is_empty() => State::AwaitingRevocation,
        _ => State::Ok,
    };
    PolicyStatus {
        policy: policy.to_string(),
        current_credential: current.and_then(|r| r.new_credential_id.clone()),
        promoted_at: current.and_then(|r| r.promoted_at),
        age_seconds: current.and_then(|r| r.promoted_at).map(|at| (now - at).num_seconds()),
        state,
        pending_revocations,
        in_flight: in_flight.map(|r| format!("{} ({})", r.id, r.phase)),
        last_error: latest.filter(|r| !matches!(r.phase, Phase::Completed)).and_then(|r| r.error.clone()),
        last_rotation: latest.map(|r| r.id.clone()),
    }
}

/// `3d4h`-style age for tables.
pub fn age(seconds: i64) -> String {
    // The two largest units: `100d23h`, `5m12s`.
    let full = crate::duration::format(std::time::Duration::from_secs(seconds.max(0) as u64));
    let mut units = 0;
    let mut out = String::new();
    for c in full.chars() {
        out.push(c);
        if c.is_ascii_alphabetic() {
            units += 1;
            if units == 2 {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(id: &str, phase: Phase, started: &str) -> Rotation {
        Rotation::example(id, phase, started)
    }

    #[test]
    fn ages_keep_two_units() {
        assert_eq!(age(100 * 86_400 + 23 * 3_600 + 59 * 60), "100d23h");
        assert_eq!(age(312), "5m12s");
        assert_eq!(age(0), "0s");
    }

    #[test]
    fn states_from_the_journal() {
        let now: DateTime<Utc> = "2026-11-29T12:00:00Z".parse().unwrap();
        assert_eq!(policy_status("p", &[], now).state, State::NeverRotated);

        let done = rotation("a", Phase::Completed, "2026-11-20T12:00:00Z");
        let s = policy_status("p", &[&done], now);
        assert_eq!(
            (s.state.as_str(), s.current_credential.as_deref(), s.age_seconds),
            ("ok", Some("key-a"), Some(9 * 86_400))
        );

        let waiting = rotation("b", Phase::Promoted, "2026-11-29T06:00:00Z");
        let s = policy_status("p", &[&waiting, &done], now);
        assert_eq!(s.state, State::AwaitingRevocation);
        assert_eq!(s.current_credential.as_deref(), Some("key-b"));
        assert_eq!(s.pending_revocations[0].why, "grace period until 2026-11-30T06:00:00Z");
        assert_eq!(s.pending_revocations[0].credentials, vec!["key-old".to_string()]);

        let mut idle = waiting.clone();
        idle.waiting = Some("still in use: key-old last used at 2026-11-29T11:59:00Z".into());
        assert!(policy_status("p", &[&idle], now).pending_revocations[0].why.starts_with("still in use"));

        let mut stuck = rotation("c", Phase::Verified, "2026-11-29T11:00:00Z");
        stuck.error = Some("vault: denied".into());
        let s = policy_status("p", &[&stuck, &done], now);
        assert_eq!((s.state.as_str(), s.last_error.as_deref()), ("stuck", Some("vault: denied")));
        assert_eq!(s.current_credential.as_deref(), Some("key-a"));

        let mut failed = rotation("d", Phase::Failed, "2026-11-29T11:00:00Z");
        failed.error = Some("toktra rejected".into());
        let s = policy_status("p", &[&failed, &done], now);
        assert_eq!((s.state.as_str(), s.last_error.as_deref()), ("failed", Some("toktra rejected")));
    }
}
