//! The pure core of a pass: what the reconciler does for one policy at `now`, from the policy's
//! rotations (most recent first), its open request and its hold. No IO, no clock and no lock:
//! `pass` gathers the inputs and runs what comes out, and the tables at the end test every
//! combination without a server.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::engine;
use crate::journal;
use crate::rotation::{Phase, Rotation};
use crate::schedule::Due;

/// The job a pass runs for one policy.
#[derive(Debug)]
pub(super) enum Job {
    Rotate(engine::Request),
    Resume,
}

/// Why a policy is held back, and until when.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hold {
    /// Failed attempts in a row (the back-off doubles from 1 minute per failure, up to 1 hour).
    pub(super) failures: u32,
    pub(super) until: DateTime<Utc>,
    pub(super) why: HoldReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HoldReason {
    /// The last attempt failed: scheduled work backs off.
    Failed,
    /// The last rotation waits for its grace period or for the old credential to go idle:
    /// looked at again on a later tick, not on every wake-up.
    Waiting,
    /// Another process holds the policy's lease.
    Busy,
}

impl HoldReason {
    /// Whether an on-demand request waits for the hold too. Back-offs and waits only pace the
    /// reconciler's own work; a request runs at once (resuming the unfinished rotation first,
    /// as `Engine::rotate` does). Only another holder's lease makes it wait, since running then
    /// could only end `Busy` again.
    fn holds_requests(self) -> bool {
        self == HoldReason::Busy
    }
}

/// What a pass does for one policy before its schedule is looked at.
#[derive(Debug)]
pub(super) enum Decision {
    /// Held (backing off after a failure, waiting, another process's lease): nothing now.
    Hold,
    /// This, now.
    Run(Job),
    /// Nothing pending: the schedule decides ([`scheduled`]).
    Schedule,
}

/// The pure core of a pass for one policy, from its rotations (most recent first), its open
/// request, its hold and the time. A hold stops scheduled work and, when it is another
/// process's lease, requests too; a request runs before anything else; an unfinished rotation
/// is resumed; a promoted one whose grace is over revokes; otherwise the schedule decides.
pub(super) fn decide(
    rotations: &[&Rotation],
    request: Option<&journal::Request>,
    hold: Option<Hold>,
    now: DateTime<Utc>,
) -> Decision {
    let hold = hold.filter(|h| h.until > now);
    if hold.is_some_and(|h| h.why.holds_requests() || request.is_none()) {
        return Decision::Hold;
    }
    if let Some(q) = request {
        return Decision::Run(requested(q.clone()));
    }
    let unfinished: Vec<&&Rotation> = rotations.iter().filter(|r| !r.phase.is_terminal()).collect();
    if unfinished.iter().any(|r| r.phase != Phase::Promoted) {
        return Decision::Run(Job::Resume);
    }
    // Revocations: due once the grace is over (require_idle is checked by the engine each time;
    // a rotation waiting for idleness is looked at again on every pass).
    if unfinished.iter().any(|r| r.revoke_after.is_some_and(|at| at <= now)) {
        return Decision::Run(Job::Resume);
    }
    Decision::Schedule
}

/// The scheduled rotation of a policy that is `due`, once its start has come. It remembers the
/// latest rotation it was decided after, so the engine does not rotate again a policy another
/// process rotated meanwhile.
pub(super) fn scheduled(due: &Due, rotations: &[&Rotation], now: DateTime<Utc>) -> Option<Job> {
    (due.next_start <= now).then(|| {
        Job::Rotate(engine::Request {
            reason: Some("scheduled".into()),
            decided_after: Some(rotations.first().map(|r| r.id.clone())),
            ..Default::default()
        })
    })
}

/// The work a recorded request asks for: a rotation with the request's ID.
pub(super) fn requested(q: journal::Request) -> Job {
    Job::Rotate(engine::Request {
        reason: q.reason,
        compromised: q.compromised,
        revoke_first: false,
        id: Some(q.id),
        decided_after: None,
    })
}

/// Rotations by policy, keeping the journal's order (most recent first).
pub(super) fn group(history: &[Rotation]) -> HashMap<&str, Vec<&Rotation>> {
    let mut by_policy: HashMap<&str, Vec<&Rotation>> = HashMap::new();
    for r in history {
        by_policy.entry(r.policy.as_str()).or_default().push(r);
    }
    by_policy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Basis;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn request(compromised: bool) -> journal::Request {
        journal::Request {
            id: "01a00000-0000-7000-8000-000000000001".into(),
            policy: "p".into(),
            reason: Some("asked".into()),
            compromised,
            idempotency_key: None,
            created_at: at("2026-12-01T10:00:00Z"),
            state: journal::RequestState::Queued,
        }
    }

    fn hold(why: HoldReason, until: &str) -> Option<Hold> {
        Some(Hold { failures: 1, until: at(until), why })
    }

    /// A row of `decide_table`: the case, the policy's latest rotation (if any), its request, its
    /// hold, and what the pass does with it.
    type Case<'a> = (&'a str, Option<&'a Rotation>, Option<&'a journal::Request>, Option<Hold>, &'a str);

    /// Each row: the policy's latest rotation (if any), its request, its hold, and what the pass
    /// does with it at 12:00.
    #[test]
    fn decide_table() {
        let now = at("2026-12-01T12:00:00Z");
        let promoted_waiting = {
            let mut r = Rotation::example("w", Phase::Promoted, "2026-12-01T11:00:00Z");
            r.revoke_after = Some(at("2026-12-02T11:00:00Z"));
            r
        };
        let promoted_due = {
            let mut r = Rotation::example("d", Phase::Promoted, "2026-11-01T11:00:00Z");
            r.revoke_after = Some(at("2026-12-01T11:59:00Z"));
            r
        };
        let staged = Rotation::example("s", Phase::Staged, "2026-12-01T11:58:00Z");
        let completed = Rotation::example("c", Phase::Completed, "2026-11-01T00:00:00Z");
        let asked = request(false);
        let cases: Vec<Case> = vec![
            ("never rotated", None, None, None, "schedule"),
            ("completed", Some(&completed), None, None, "schedule"),
            ("unfinished before promotion", Some(&staged), None, None, "resume"),
            ("promoted, grace running", Some(&promoted_waiting), None, None, "schedule"),
            ("promoted, grace over", Some(&promoted_due), None, None, "resume"),
            ("a request", Some(&completed), Some(&asked), None, "requested"),
            ("a request over an unfinished rotation", Some(&staged), Some(&asked), None, "requested"),
            ("backing off", Some(&staged), None, hold(HoldReason::Failed, "2026-12-01T12:05:00Z"), "hold"),
            (
                "backing off, a request",
                Some(&staged),
                Some(&asked),
                hold(HoldReason::Failed, "2026-12-01T12:05:00Z"),
                "requested",
            ),
            (
                "waiting, a request",
                Some(&promoted_waiting),
                Some(&asked),
                hold(HoldReason::Waiting, "2026-12-01T12:05:00Z"),
                "requested",
            ),
            (
                "another lease, a request",
                Some(&completed),
                Some(&asked),
                hold(HoldReason::Busy, "2026-12-01T12:00:30Z"),
                "hold",
            ),
            ("a hold that ended", Some(&staged), None, hold(HoldReason::Failed, "2026-12-01T11:59:59Z"), "resume"),
        ];
        for (case, latest, request, hold, want) in cases {
            let rotations: Vec<&Rotation> = latest.into_iter().collect();
            let got = match decide(&rotations, request, hold, now) {
                Decision::Hold => "hold",
                Decision::Schedule => "schedule",
                Decision::Run(Job::Resume) => "resume",
                Decision::Run(Job::Rotate(r)) if r.id.is_some() => "requested",
                Decision::Run(Job::Rotate(_)) => "rotate",
            };
            assert_eq!(got, want, "{case}");
        }
    }

    /// A request keeps its ID and asks for a compromise rotation when the request did.
    #[test]
    fn a_request_becomes_its_rotation() {
        let now = at("2026-12-01T12:00:00Z");
        let Decision::Run(Job::Rotate(r)) = decide(&[], Some(&request(true)), None, now) else { panic!() };
        assert_eq!(r.id.as_deref(), Some("01a00000-0000-7000-8000-000000000001"));
        assert!(r.compromised && r.decided_after.is_none(), "{r:?}");
    }

    /// The schedule's rotation starts once its start has come, remembering what it was decided
    /// after.
    #[test]
    fn scheduled_once_the_start_has_come() {
        let now = at("2026-12-01T12:00:00Z");
        let due = |next: &str| Due {
            at: at(next),
            next_start: at(next),
            overdue: false,
            basis: Basis::Journal,
            why: Vec::new(),
        };
        let last = Rotation::example("last", Phase::Completed, "2026-09-01T00:00:00Z");
        assert!(scheduled(&due("2026-12-01T12:00:01Z"), &[&last], now).is_none());
        let Some(Job::Rotate(r)) = scheduled(&due("2026-12-01T12:00:00Z"), &[&last], now) else { panic!() };
        assert_eq!((r.reason.as_deref(), r.decided_after), (Some("scheduled"), Some(Some("last".to_string()))));
        let Some(Job::Rotate(r)) = scheduled(&due("2026-11-01T00:00:00Z"), &[], now) else { panic!() };
        assert_eq!(r.decided_after, Some(None), "decided after no rotation at all");
    }
}
