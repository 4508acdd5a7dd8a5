//! PagerDuty Events API v2: what an [`Event`] becomes. A problem triggers an alert under a
//! dedup key that is stable per policy and kind of problem (`rotator/<policy>/rotation`,
//! `…/overdue`, `…/revocation`), so repeats update one alert and a later recovery resolves it;
//! a contained compromise gets an alert of its own (`…/compromise/<rotation id>`) that a person
//! resolves once the leak itself is dealt with. Successes and orphans are not paged. Pure: the
//! routing key is added by the caller, at delivery.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Event, Problem};

/// PagerDuty limits a summary to 1024 characters.
const SUMMARY_CHARS: usize = 1024;

/// The dedup key of `problem` of `policy`.
pub fn dedup_key(policy: &str, problem: Problem) -> String {
    format!("rotator/{policy}/{}", problem.as_str())
}

/// The Events API requests for `event` at `at`, without `routing_key`, in order.
pub(super) fn events(event: &Event, at: DateTime<Utc>) -> Vec<Value> {
    let (problem, severity) = match event {
        Event::RotationFailed { policy, .. } => (dedup_key(policy, Problem::Rotation), "error"),
        Event::PolicyOverdue { policy, .. } => (dedup_key(policy, Problem::Overdue), "warning"),
        Event::RevocationHeld { policy, .. } => (dedup_key(policy, Problem::Revocation), "warning"),
        Event::CompromiseContained { policy, rotation_id, .. } => {
            (format!("rotator/{policy}/compromise/{rotation_id}"), "warning")
        }
        Event::Recovered { policy, cleared } => {
            return cleared
                .iter()
                .map(|problem| json!({ "event_action": "resolve", "dedup_key": dedup_key(policy, *problem) }))
                .collect();
        }
        Event::RotationSucceeded { .. } | Event::OrphanFound { .. } => return Vec::new(),
    };
    let details = serde_json::to_value(event).unwrap_or_default();
    vec![json!({
        "event_action": "trigger",
        "dedup_key": problem,
        "payload": {
            "summary": summary(event),
            "source": "rotator",
            "severity": severity,
            "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "component": event.policy(),
            "group": "rotator",
            "class": details["event"].clone(),
            "custom_details": details,
        },
    })]
}

/// One line for the alert's title: plain text, at most [`SUMMARY_CHARS`].
fn summary(event: &Event) -> String {
    let text = match event {
        Event::RotationFailed { policy, rotation_id, error } if rotation_id.is_empty() => {
            format!("rotator: rotation of {policy} failed: {error}")
        }
        Event::RotationFailed { policy, rotation_id, error } => {
            format!("rotator: rotation of {policy} failed ({rotation_id}): {error}")
        }
        Event::PolicyOverdue { policy, due_since } => format!(
            "rotator: {policy} is overdue for rotation since {}",
            due_since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        Event::RevocationHeld { policy, rotation_id, why } => {
            format!("rotator: revocation of {policy}'s old credential held ({rotation_id}): {why}")
        }
        Event::CompromiseContained { policy, exposed, .. } => {
            format!("rotator: compromise of {policy} contained: revoked {}", exposed.join(", "))
        }
        other => other.text(),
    };
    text.chars().take(SUMMARY_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_trigger_under_stable_keys_and_recovery_resolves_them() {
        let at: DateTime<Utc> = "2026-05-01T10:00:00Z".parse().unwrap();
        let failed = Event::RotationFailed { policy: "ci".into(), rotation_id: "r1".into(), error: "boom".into() };
        let sent = events(&failed, at);
        assert_eq!(
            sent,
            vec![json!({
                "event_action": "trigger",
                "dedup_key": "rotator/ci/rotation",
                "payload": {
                    "summary": "rotator: rotation of ci failed (r1): boom",
                    "source": "rotator",
                    "severity": "error",
                    "timestamp": "2026-05-01T10:00:00.000Z",
                    "component": "ci",
                    "group": "rotator",
                    "class": "rotation_failed",
                    "custom_details": { "event": "rotation_failed", "policy": "ci", "rotation_id": "r1", "error": "boom" },
                },
            })]
        );
        let overdue = Event::PolicyOverdue { policy: "ci".into(), due_since: at };
        assert_eq!(events(&overdue, at)[0]["dedup_key"], "rotator/ci/overdue");
        let recovered = Event::Recovered { policy: "ci".into(), cleared: vec![Problem::Rotation, Problem::Overdue] };
        assert_eq!(
            events(&recovered, at),
            vec![
                json!({ "event_action": "resolve", "dedup_key": "rotator/ci/rotation" }),
                json!({ "event_action": "resolve", "dedup_key": "rotator/ci/overdue" }),
            ]
        );
        let succeeded =
            Event::RotationSucceeded { policy: "ci".into(), rotation_id: "r2".into(), new_credential: None };
        assert!(events(&succeeded, at).is_empty(), "successes are not paged");
        let long = Event::RotationFailed { policy: "ci".into(), rotation_id: String::new(), error: "x".repeat(5000) };
        let summary = events(&long, at)[0]["payload"]["summary"].as_str().unwrap().to_string();
        assert_eq!(summary.chars().count(), SUMMARY_CHARS);
        assert!(summary.starts_with("rotator: rotation of ci failed: xxx"), "{summary}");
    }
}
