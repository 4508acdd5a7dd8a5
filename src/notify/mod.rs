//! Notifications: events of `rotator serve` and `rotator rotate` (rotation failed, succeeded,
//! policy overdue, orphan found, compromise rotation done, revocation held, policy recovered)
//! sent to the channels a policy names: Slack-compatible webhooks, generic JSON webhooks (signed
//! when configured, see [`signature`]) and PagerDuty (see [`pagerduty`]). Delivery happens on a
//! background task per channel with a bounded queue and retries, so it never blocks or fails a
//! rotation; events are built from IDs and messages only, never from a secret, and neither
//! webhook URLs (credentials themselves), routing keys nor request bodies are ever logged.

pub mod pagerduty;
pub mod signature;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::config::{Channel, ChannelKind};
use crate::engine::{Outcome, Status};
use crate::metrics::Metrics;

/// What happened.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    RotationFailed {
        policy: String,
        rotation_id: String,
        error: String,
    },
    RotationSucceeded {
        policy: String,
        rotation_id: String,
        new_credential: Option<String>,
    },
    PolicyOverdue {
        policy: String,
        due_since: DateTime<Utc>,
    },
    OrphanFound {
        policy: String,
        detail: String,
    },
    CompromiseContained {
        policy: String,
        rotation_id: String,
        exposed: Vec<String>,
        held_by: Vec<String>,
        seconds_to_containment: Option<f64>,
    },
    /// An old credential's revocation waits because something still serves it.
    RevocationHeld {
        policy: String,
        rotation_id: String,
        why: String,
    },
    /// Problems of the policy that are over (a new credential promoted, a revocation done, no
    /// longer overdue). Only PagerDuty hears of it: it resolves the alerts the problems raised.
    Recovered {
        policy: String,
        cleared: Vec<Problem>,
    },
}

/// A kind of problem a policy can have, each an alert of its own at PagerDuty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// A rotation failed or could not run.
    Rotation,
    /// The policy is overdue.
    Overdue,
    /// An old credential's revocation is held.
    Revocation,
}

impl Problem {
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Rotation => "rotation",
            Problem::Overdue => "overdue",
            Problem::Revocation => "revocation",
        }
    }
}

impl Event {
    fn policy(&self) -> &str {
        match self {
            Event::RotationFailed { policy, .. }
            | Event::RotationSucceeded { policy, .. }
            | Event::PolicyOverdue { policy, .. }
            | Event::OrphanFound { policy, .. }
            | Event::CompromiseContained { policy, .. }
            | Event::RevocationHeld { policy, .. }
            | Event::Recovered { policy, .. } => policy,
        }
    }

    /// One line for humans (Slack).
    fn text(&self) -> String {
        match self {
            Event::RotationFailed { policy, rotation_id, error } => {
                format!(":x: rotator: rotation of `{policy}` failed ({rotation_id}): {error}")
            }
            Event::RotationSucceeded { policy, new_credential, .. } => {
                format!(
                    ":white_check_mark: rotator: `{policy}` rotated; current credential {}",
                    new_credential.as_deref().unwrap_or("-")
                )
            }
            Event::PolicyOverdue { policy, due_since } => {
                format!(":warning: rotator: `{policy}` is overdue since {due_since}")
            }
            Event::OrphanFound { policy, detail } => {
                format!(":warning: rotator: orphaned credential for `{policy}`: {detail}")
            }
            Event::CompromiseContained { policy, exposed, held_by, seconds_to_containment, .. } => format!(
                ":rotating_light: rotator: compromise of `{policy}` contained: revoked [{}] held by [{}] in {}",
                exposed.join(", "),
                held_by.join("; "),
                seconds_to_containment.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "?".into())
            ),
            Event::RevocationHeld { policy, rotation_id, why } => {
                format!(":warning: rotator: `{policy}` ({rotation_id}): {why}")
            }
            Event::Recovered { policy, cleared } => format!(
                ":white_check_mark: rotator: `{policy}` recovered ({})",
                cleared.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Whether `channel` hears of this event. PagerDuty hears of problems and recoveries only;
    /// the others of everything but recoveries, successes only with `on_success`.
    fn for_channel(&self, channel: &Channel) -> bool {
        match (&channel.kind, self) {
            (ChannelKind::PagerDuty { .. }, Event::RotationSucceeded { .. } | Event::OrphanFound { .. }) => false,
            (ChannelKind::PagerDuty { .. }, _) => true,
            (_, Event::Recovered { .. }) => false,
            (_, Event::RotationSucceeded { .. }) => channel.on_success,
            _ => true,
        }
    }
}

/// The problems a policy's latest outcome shows to be over, as an event (`None` if none is).
/// Judged from the outcome alone, so any process can tell, whatever it remembers: a completed
/// rotation leaves no problem; a rotation promoted in this run (not held) ends failures and
/// the overdue state. A resumed rotation still waiting for its revocation says nothing new (it
/// is looked at on every pass) and clears nothing.
pub fn recovered(o: &Outcome) -> Option<Event> {
    let cleared = match o.status {
        _ if o.interrupted => vec![],
        Status::Completed if o.resumed => vec![Problem::Rotation, Problem::Revocation],
        Status::Completed => vec![Problem::Rotation, Problem::Overdue, Problem::Revocation],
        Status::AwaitingRevocation if !o.held && !o.resumed => vec![Problem::Rotation, Problem::Overdue],
        _ => vec![],
    };
    (!cleared.is_empty()).then(|| Event::Recovered { policy: o.policy.clone(), cleared })
}

/// The events of one policy's outcomes in a `rotator rotate` run, in order: what `serve` says
/// of the same outcomes (`Daemon::report`, which also remembers what it said), judged as the
/// exit code judges them. A resumed rotation that finished rolling back failed in an earlier
/// run, which told of it; it is not news again.
pub fn of_run(outcomes: &[Outcome]) -> Vec<Event> {
    let mut events = Vec::new();
    for o in outcomes {
        if o.held
            && let Some(why) = &o.waiting
        {
            events.push(Event::RevocationHeld {
                policy: o.policy.clone(),
                rotation_id: o.rotation_id.clone(),
                why: why.clone(),
            });
        }
        if o.interrupted || (o.resumed && o.status == Status::AwaitingRevocation) {
            continue;
        }
        let failed = o.status == Status::Incomplete || (o.status == Status::Failed && !o.resumed);
        let promoted = matches!(o.status, Status::Completed | Status::AwaitingRevocation) && !o.resumed;
        if failed {
            events.push(Event::RotationFailed {
                policy: o.policy.clone(),
                rotation_id: o.rotation_id.clone(),
                error: o.error.clone().unwrap_or_default(),
            });
        } else if promoted {
            events.push(Event::RotationSucceeded {
                policy: o.policy.clone(),
                rotation_id: o.rotation_id.clone(),
                new_credential: o.new_credential.clone(),
            });
        }
        if let Some(c) = &o.compromise
            && o.status == Status::Completed
        {
            events.push(Event::CompromiseContained {
                policy: o.policy.clone(),
                rotation_id: o.rotation_id.clone(),
                exposed: c.exposed.clone(),
                held_by: c.held_by.clone(),
                seconds_to_containment: c.seconds_to_containment,
            });
        }
    }
    events.extend(outcomes.last().and_then(recovered));
    events
}

/// Sends events to channels, each channel from a background task and a bounded queue of its own,
/// so a dead webhook delays only its own channel.
#[derive(Clone)]
pub struct Notifier {
    queues: Arc<std::collections::BTreeMap<String, (Channel, mpsc::Sender<Event>)>>,
    /// Events queued and not yet delivered or given up, over all channels (what [`drain`]
    /// waits for: an event taken off its queue may still be on its way).
    ///
    /// [`drain`]: Notifier::drain
    pending: Arc<AtomicUsize>,
}

const QUEUE: usize = 1_000;
const ATTEMPTS: u32 = 4;
/// Between deliveries of one event: 1 s, 2 s, 4 s.
const RETRY: crate::backoff::Backoff = crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(4));

impl Notifier {
    pub fn start(
        channels: std::collections::BTreeMap<String, Channel>,
        metrics: Arc<Metrics>,
    ) -> (Notifier, Vec<tokio::task::JoinHandle<()>>) {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        let pending = Arc::new(AtomicUsize::new(0));
        let mut queues = std::collections::BTreeMap::new();
        let mut tasks = Vec::new();
        for (name, channel) in channels {
            let (tx, rx) = mpsc::channel::<Event>(QUEUE);
            let delivery = Delivery { channel: channel.clone(), http: http.clone(), metrics: metrics.clone() };
            tasks.push(tokio::spawn(delivery.run(rx, pending.clone())));
            queues.insert(name, (channel, tx));
        }
        (Notifier { queues: Arc::new(queues), pending }, tasks)
    }

    /// Queues `event` for each named channel that wants it; never waits.
    pub fn send(&self, names: &[String], event: Event) {
        for name in names {
            let Some((channel, queue)) = self.queues.get(name) else {
                tracing::warn!(channel = %name, "policy names a notification channel the configuration does not define");
                continue;
            };
            if !event.for_channel(channel) {
                continue;
            }
            self.pending.fetch_add(1, Ordering::SeqCst);
            if queue.try_send(event.clone()).is_err() {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                tracing::error!(channel = %name, "notification queue full; event dropped");
            }
        }
    }

    /// Waits until every queued event is delivered or given up, or `timeout`; returns how many
    /// are still pending.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let _ = tokio::time::timeout(timeout, async {
            while self.pending.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        self.pending.load(Ordering::SeqCst)
    }

    pub fn knows(&self, name: &str) -> bool {
        self.queues.contains_key(name)
    }
}

/// One channel's delivery task.
struct Delivery {
    channel: Channel,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Delivery {
    /// Delivers the channel's events in order, each request with retries and backoff.
    async fn run(self, mut rx: mpsc::Receiver<Event>, pending: Arc<AtomicUsize>) {
        while let Some(event) = rx.recv().await {
            for body in self.bodies(&event, Utc::now()) {
                let delivered = self.post(&body).await;
                self.metrics.notification(&self.channel.name, if delivered { "delivered" } else { "failed" });
                if !delivered {
                    tracing::error!(channel = %self.channel.name, policy = %event.policy(), "notification dropped");
                }
            }
            pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The request bodies that carry `event` to this channel (PagerDuty may need several).
    fn bodies(&self, event: &Event, at: DateTime<Utc>) -> Vec<Vec<u8>> {
        let values = match &self.channel.kind {
            ChannelKind::Slack => vec![serde_json::json!({ "text": event.text() })],
            ChannelKind::Webhook { .. } => {
                let mut v = serde_json::to_value(event).unwrap_or_default();
                v["at"] = serde_json::json!(at);
                v["source"] = serde_json::json!("rotator");
                vec![v]
            }
            ChannelKind::PagerDuty { routing_key } => pagerduty::events(event, at)
                .into_iter()
                .map(|mut v| {
                    v["routing_key"] = serde_json::json!(routing_key.expose());
                    v
                })
                .collect(),
        };
        values.iter().map(|v| serde_json::to_vec(v).unwrap_or_default()).collect()
    }

    /// Posts `body`, retrying what may pass later; whether it was accepted.
    async fn post(&self, body: &[u8]) -> bool {
        let name = &self.channel.name;
        for attempt in 1..=ATTEMPTS {
            let mut request = self
                .http
                .post(self.channel.url.expose())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
            if let ChannelKind::Webhook { signing_secret: Some(secret) } = &self.channel.kind {
                // Signed per attempt: a retry carries a current timestamp.
                let timestamp = Utc::now().timestamp();
                request = request
                    .header(signature::TIMESTAMP_HEADER, timestamp.to_string())
                    .header(signature::SIGNATURE_HEADER, signature::sign(secret, timestamp, body));
            }
            // The URL, the routing key and the body stay out of the log: the channel's name and
            // the status only.
            match request.send().await {
                Ok(r) if r.status().is_success() => return true,
                // Refused for good (a malformed event, a revoked webhook, a wrong routing key):
                // asking again cannot help.
                Ok(r) if r.status().is_client_error() && !matches!(r.status().as_u16(), 408 | 429) => {
                    tracing::warn!(channel = %name, status = %r.status(), attempt, "notification refused; not retried");
                    return false;
                }
                Ok(r) => tracing::warn!(channel = %name, status = %r.status(), attempt, "notification refused"),
                Err(e) => {
                    tracing::warn!(channel = %name, error = %e.without_url(), attempt, "notification not delivered")
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(RETRY.delay(attempt)).await;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::Phase;

    fn outcome(status: Status, resumed: bool, held: bool) -> Outcome {
        Outcome {
            policy: "p".into(),
            rotation_id: "r".into(),
            status,
            phase: Phase::Completed,
            new_credential: Some("key-new".into()),
            old_credentials: vec!["key-old".into()],
            revoked: vec![],
            destinations: vec![],
            revoke_after: None,
            waiting: held.then(|| "file: serves key-old again".to_string()),
            held,
            error: matches!(status, Status::Failed | Status::Incomplete).then(|| "boom".to_string()),
            compromise: None,
            resumed,
            interrupted: false,
            failed_in: None,
            seconds: 1.0,
        }
    }

    /// Each event as a short string: its kind, and what a recovery clears.
    fn names(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Recovered { cleared, .. } => {
                    format!("recovered[{}]", cleared.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(","))
                }
                other => serde_json::to_value(other).unwrap()["event"].as_str().unwrap().to_string(),
            })
            .collect()
    }

    #[test]
    fn a_run_says_what_serve_says_and_recovery_is_judged_on_the_last_outcome() {
        use Status::*;
        // (status, resumed, held) of each outcome of a run → the events told.
        type Run = &'static [(Status, bool, bool)];
        let cases: &[(Run, &[&str])] = &[
            (&[(Completed, false, false)], &["rotation_succeeded", "recovered[rotation,overdue,revocation]"]),
            (&[(AwaitingRevocation, false, false)], &["rotation_succeeded", "recovered[rotation,overdue]"]),
            (&[(Failed, false, false)], &["rotation_failed"]),
            (&[(Incomplete, true, false)], &["rotation_failed"]),
            // Finishing an earlier run's rollback is not news; a resumed wait says nothing new.
            (&[(Failed, true, false)], &[]),
            (&[(AwaitingRevocation, true, false)], &[]),
            // A revocation done later clears its hold and failures, not the overdue state.
            (&[(Completed, true, false)], &["recovered[rotation,revocation]"]),
            (&[(AwaitingRevocation, false, true)], &["revocation_held", "rotation_succeeded"]),
            (&[(AwaitingRevocation, true, true)], &["revocation_held"]),
            // Where the policy stands is its last outcome.
            (&[(Completed, true, false), (Failed, false, false)], &["rotation_failed"]),
            (
                &[(AwaitingRevocation, true, false), (AwaitingRevocation, false, false)],
                &["rotation_succeeded", "recovered[rotation,overdue]"],
            ),
        ];
        for (outcomes, expected) in cases {
            let outcomes: Vec<Outcome> = outcomes.iter().map(|(s, r, h)| outcome(*s, *r, *h)).collect();
            assert_eq!(names(&of_run(&outcomes)), *expected, "{outcomes:?}");
        }
    }
}
