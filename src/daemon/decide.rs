//! The pure core of a pass: [`plan`] turns what a pass read (policies, the journal's rotations
//! and open requests) and what the daemon keeps between passes (holds, policies running, the
//! dates of credentials the journal did not make) into the pass's jobs, in the order they get
//! slots. [`decide`] is its per-policy part. No IO, no clock and no lock: `pass` gathers the
//! inputs and runs what comes out, and the tables at the end test every combination without a
//! server.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::engine;
use crate::journal;
use crate::policy::Policy;
use crate::rotation::{Phase, Rotation};
use crate::schedule::{self, Basis, Due, Since};

/// When the current credential of a policy the journal has not rotated came to be, as read from
/// its destinations (and Toktra).
#[derive(Debug, Clone, Copy)]
pub(super) struct Dated {
    /// `None`: the policy has no credential yet.
    pub(super) since: Option<Since>,
    /// `false`: a destination or Toktra could not be read and `since` is a guess (now), used
    /// for one pass only so the real age is found once they answer again.
    pub(super) known: bool,
}

/// What a pass read and what the daemon keeps between passes: everything [`plan`] decides from.
/// `'a` is what the pass read, `'s` the daemon's state (borrowed only while planning).
pub(super) struct Inputs<'a, 's> {
    pub(super) policies: &'a [Policy],
    /// The journal's unfinished rotations and each policy's latest ones, most recent first.
    pub(super) history: &'a [Rotation],
    /// Open requests, in the journal's order (compromise requests first, then oldest first).
    pub(super) requests: &'a [journal::Request],
    pub(super) holds: &'s HashMap<String, Hold>,
    /// Policies (and gone policies' leftovers) with a task in this process now.
    pub(super) running: &'s BTreeSet<String>,
    /// The credential dates of the policies whose destinations were read.
    pub(super) dated: &'s HashMap<String, Dated>,
    pub(super) now: DateTime<Utc>,
}

/// One job of a pass.
#[derive(Debug)]
pub(super) enum Planned<'a> {
    /// Work for a loaded policy.
    Policy(&'a Policy, Job),
    /// An unfinished rotation of a policy that is gone (see `leftover`).
    Leftover(&'a Rotation),
}

impl Planned<'_> {
    /// The policy the job claims (a gone policy's name for a leftover).
    pub(super) fn policy(&self) -> &str {
        match self {
            Planned::Policy(policy, _) => &policy.name,
            Planned::Leftover(rotation) => &rotation.policy,
        }
    }
}

/// What a pass does.
#[derive(Debug, Default)]
pub(super) struct Plan<'a> {
    /// The jobs, in the order they get slots: policies with requests first in the requests'
    /// order, then the other policies in policy order, then leftovers of gone policies.
    pub(super) jobs: Vec<Planned<'a>>,
    /// When each policy with nothing pending is due, for the overdue alerts.
    pub(super) due: Vec<(&'a Policy, Due)>,
    /// Policies with nothing pending whose schedule needs their credential's date, which
    /// [`Inputs::dated`] lacks: the pass reads them from the destinations and plans again.
    pub(super) undated: Vec<&'a Policy>,
    /// Open requests of policies this set does not have. They are neither run nor cancelled
    /// here: while a change of the set rolls out, another process may have the policy (added
    /// there, or not yet removed), and the journal lets whichever has it run the request.
    pub(super) elsewhere: Vec<&'a journal::Request>,
}

/// The pass's jobs: per policy not running, [`decide`], then (nothing pending) its schedule;
/// then the leftovers of gone policies that are due, not held and not running.
pub(super) fn plan<'a>(inputs: &Inputs<'a, '_>) -> Plan<'a> {
    let now = inputs.now;
    let by_policy = group(inputs.history);
    let mut order: Vec<&Policy> = inputs.policies.iter().collect();
    // Stable: policies without a request keep the set's order.
    order.sort_by_key(|p| inputs.requests.iter().position(|r| r.policy == p.name).unwrap_or(usize::MAX));
    let mut plan = Plan::default();
    for policy in order {
        if inputs.running.contains(&policy.name) {
            continue;
        }
        let rotations = by_policy.get(policy.name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let request = inputs.requests.iter().find(|r| r.policy == policy.name);
        let hold = inputs.holds.get(&policy.name).copied();
        match decide(rotations, request, hold, now) {
            Decision::Hold => continue,
            Decision::Run(job) => plan.jobs.push(Planned::Policy(policy, job)),
            Decision::Schedule => {
                let promoted = rotations.iter().find(|r| r.phase.is_promoted()).and_then(|r| r.promoted_at);
                let last = match promoted {
                    Some(at) => Some((at, Basis::Journal)),
                    None => match inputs.dated.get(&policy.name) {
                        Some(dated) => dated.since,
                        None => {
                            plan.undated.push(policy);
                            continue;
                        }
                    },
                };
                let due = schedule::due(&policy.name, &policy.schedule, last, now);
                if let Some(job) = scheduled(&due, rotations, now) {
                    plan.jobs.push(Planned::Policy(policy, job));
                }
                plan.due.push((policy, due));
            }
        }
    }
    let loaded: Vec<&Policy> = inputs.policies.iter().collect();
    let names: HashSet<&str> = loaded.iter().map(|p| p.name.as_str()).collect();
    plan.elsewhere = inputs.requests.iter().filter(|q| !names.contains(q.policy.as_str())).collect();
    for rotation in crate::leftover::leftovers(inputs.history, &loaded) {
        // Waiting for its grace (a compromise revokes at once): looked at again when it ends.
        let not_due = rotation.phase == Phase::Promoted
            && !rotation.compromised
            && rotation.revoke_after.is_some_and(|at| at > now)
            && rotation.waiting.is_some();
        let held = inputs.holds.get(&rotation.policy).is_some_and(|h| h.until > now);
        if !(not_due || held || inputs.running.contains(&rotation.policy)) {
            plan.jobs.push(Planned::Leftover(rotation));
        }
    }
    plan
}

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

    /// Policies named `names`, each every 30 days into a file, in that order.
    fn policies(names: &[&str]) -> Vec<Policy> {
        let text: Vec<String> = names
            .iter()
            .map(|n| {
                format!(
                    "name: {n}\ncredential: {{ kind: api_key, name: {n} }}\nschedule: {{ every: 30d }}\ndestinations:\n  - file: {{ path: {n}.json }}\n"
                )
            })
            .collect();
        let (mut policies, mut problems) = (Vec::new(), Vec::new());
        crate::policy::parse_file(std::path::Path::new("p.yaml"), &text.join("---\n"), &mut policies, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        policies
    }

    fn rotation(policy: &str, id: &str, phase: Phase, started: &str) -> Rotation {
        Rotation { policy: policy.into(), ..Rotation::example(id, phase, started) }
    }

    fn requested_for(policy: &str, id: &str, compromised: bool) -> journal::Request {
        journal::Request { id: id.into(), policy: policy.into(), ..request(compromised) }
    }

    /// What a plan's jobs are, as `policy:job` strings in slot order.
    fn jobs(plan: &Plan) -> Vec<String> {
        plan.jobs
            .iter()
            .map(|job| match job {
                Planned::Policy(p, Job::Resume) => format!("{}:resume", p.name),
                Planned::Policy(p, Job::Rotate(r)) => match &r.id {
                    Some(id) => format!("{}:request {id}", p.name),
                    None => format!("{}:scheduled", p.name),
                },
                Planned::Leftover(r) => format!("{}:leftover {}", r.policy, r.id),
            })
            .collect()
    }

    /// The whole pass: requests first in the journal's order, then the other policies in the
    /// set's order; running and held policies get nothing; a policy the journal has not rotated
    /// is dated before it is scheduled.
    #[test]
    fn plan_orders_the_pass() {
        let now = at("2026-12-01T12:00:00Z");
        let policies = policies(&["a", "b", "c", "d", "e", "f"]);
        let history = vec![
            rotation("a", "ra", Phase::Completed, "2026-11-20T00:00:00Z"), // rotated lately: not due
            rotation("b", "rb", Phase::Completed, "2026-10-01T00:00:00Z"), // due since 2026-10-31
            rotation("c", "rc", Phase::Staged, "2026-12-01T11:00:00Z"),    // unfinished
            rotation("d", "rd", Phase::Completed, "2026-10-01T00:00:00Z"), // due, but running
            rotation("e", "re", Phase::Staged, "2026-12-01T11:00:00Z"),    // unfinished, backing off
        ];
        // `f` has no rotation: its credential's date decides.
        let requests = vec![
            requested_for("e", "q-e", true),
            requested_for("elsewhere", "q-x", false),
            requested_for("c", "q-c", false),
        ];
        let holds = HashMap::from([("e".to_string(), hold(HoldReason::Failed, "2026-12-01T12:05:00Z").unwrap())]);
        let running = BTreeSet::from(["d".to_string()]);
        let mut dated = HashMap::new();
        let plan_with = |dated: &HashMap<String, Dated>| {
            let inputs = Inputs {
                policies: &policies,
                history: &history,
                requests: &requests,
                holds: &holds,
                running: &running,
                dated,
                now,
            };
            let planned = plan(&inputs);
            let undated: Vec<String> = planned.undated.iter().map(|p| p.name.clone()).collect();
            let due: Vec<(String, bool)> = planned.due.iter().map(|(p, d)| (p.name.clone(), d.overdue)).collect();
            let elsewhere: Vec<String> = planned.elsewhere.iter().map(|q| q.id.clone()).collect();
            (jobs(&planned), undated, due, elsewhere)
        };
        let (first, undated, due, elsewhere) = plan_with(&dated);
        assert_eq!(elsewhere, ["q-x"], "a request of a policy the set lacks waits for a process that has it");
        assert_eq!(first, ["e:request q-e", "c:request q-c", "b:scheduled"]);
        assert_eq!(undated, ["f"], "only the policy without a rotation needs dating");
        assert_eq!(due, [("a".to_string(), false), ("b".to_string(), true)], "due times, overdue or not");

        let cases = [
            ("no credential yet", Dated { since: None, known: true }, Some("f:scheduled")),
            (
                "an old credential",
                Dated { since: Some((at("2026-09-01T00:00:00Z"), Basis::Credential)), known: true },
                Some("f:scheduled"),
            ),
            (
                "a fresh credential",
                Dated { since: Some((at("2026-11-30T00:00:00Z"), Basis::Credential)), known: true },
                None,
            ),
            ("unreadable: assumed fresh", Dated { since: Some((now, Basis::Credential)), known: false }, None),
        ];
        for (case, date, want) in cases {
            dated.insert("f".to_string(), date);
            let (again, undated, _, _) = plan_with(&dated);
            assert!(undated.is_empty(), "{case}");
            let f: Vec<String> = again.into_iter().filter(|j| j.starts_with("f:")).collect();
            assert_eq!(f, want.into_iter().map(String::from).collect::<Vec<_>>(), "{case}");
        }
    }

    /// Unfinished rotations of gone policies come after the loaded policies' jobs, unless their
    /// grace is still running, their policy is held back or a task of it is running.
    #[test]
    fn plan_finishes_leftovers_when_due() {
        let now = at("2026-12-01T12:00:00Z");
        let policies = policies(&["kept"]);
        let waiting = {
            let mut r = rotation("gone-waiting", "w", Phase::Promoted, "2026-12-01T11:00:00Z");
            r.waiting = Some("grace".into());
            r
        };
        let compromised = {
            let mut r = rotation("gone-compromised", "x", Phase::Promoted, "2026-12-01T11:00:00Z");
            r.waiting = Some("grace".into());
            r.compromised = true;
            r
        };
        let history = vec![
            rotation("kept", "k", Phase::Completed, "2026-11-30T00:00:00Z"),
            rotation("gone-staged", "s", Phase::Staged, "2026-12-01T11:00:00Z"),
            waiting,
            compromised,
            rotation("gone-held", "h", Phase::Staged, "2026-12-01T11:00:00Z"),
            rotation("gone-running", "r", Phase::Staged, "2026-12-01T11:00:00Z"),
            rotation("gone-done", "d", Phase::Completed, "2026-12-01T11:00:00Z"),
        ];
        let holds =
            HashMap::from([("gone-held".to_string(), hold(HoldReason::Failed, "2026-12-01T12:05:00Z").unwrap())]);
        let running = BTreeSet::from(["gone-running".to_string()]);
        let dated = HashMap::new();
        let got = plan(&Inputs {
            policies: &policies,
            history: &history,
            requests: &[],
            holds: &holds,
            running: &running,
            dated: &dated,
            now,
        });
        assert_eq!(jobs(&got), ["gone-staged:leftover s", "gone-compromised:leftover x"]);
    }
}
