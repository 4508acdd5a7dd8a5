//! Notifications: events of `rotator serve` (rotation failed, succeeded, policy overdue, orphan
//! found, compromise rotation done) sent to the channels a policy names. Delivery happens on a
//! background task with a bounded queue and retries, so it never blocks or fails a rotation;
//! events are built from IDs and messages only, never from a secret, and webhook URLs (which are
//! credentials themselves) are never logged.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::config::{Channel, ChannelKind};
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
}

impl Event {
    fn policy(&self) -> &str {
        match self {
            Event::RotationFailed { policy, .. }
            | Event::RotationSucceeded { policy, .. }
            | Event::PolicyOverdue { policy, .. }
            | Event::OrphanFound { policy, .. }
            | Event::CompromiseContained { policy, .. }
            | Event::RevocationHeld { policy, .. } => policy,
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
        }
    }

    fn always(&self) -> bool {
        !matches!(self, Event::RotationSucceeded { .. })
    }
}

/// Sends events to channels, each channel from a background task and a bounded queue of its own,
/// so a dead webhook delays only its own channel.
#[derive(Clone)]
pub struct Notifier {
    queues: Arc<std::collections::BTreeMap<String, (Channel, mpsc::Sender<Event>)>>,
}

const QUEUE: usize = 1_000;
const ATTEMPTS: u32 = 4;

impl Notifier {
    pub fn start(
        channels: std::collections::BTreeMap<String, Channel>,
        metrics: Arc<Metrics>,
    ) -> (Notifier, Vec<tokio::task::JoinHandle<()>>) {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        let mut queues = std::collections::BTreeMap::new();
        let mut tasks = Vec::new();
        for (name, channel) in channels {
            let (tx, rx) = mpsc::channel::<Event>(QUEUE);
            tasks.push(tokio::spawn(deliver(channel.clone(), rx, http.clone(), metrics.clone())));
            queues.insert(name, (channel, tx));
        }
        (Notifier { queues: Arc::new(queues) }, tasks)
    }

    /// Queues `event` for each named channel that wants it; never waits.
    pub fn send(&self, names: &[String], event: Event) {
        for name in names {
            let Some((channel, queue)) = self.queues.get(name) else {
                tracing::warn!(channel = %name, "policy names a notification channel the configuration does not define");
                continue;
            };
            if !event.always() && !channel.on_success {
                continue;
            }
            if queue.try_send(event.clone()).is_err() {
                tracing::error!(channel = %name, "notification queue full; event dropped");
            }
        }
    }

    /// Waits until every queue is empty, or `timeout`.
    pub async fn drain(&self, timeout: Duration) {
        let empty = || self.queues.values().all(|(_, q)| q.capacity() == q.max_capacity());
        let _ = tokio::time::timeout(timeout, async {
            while !empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    pub fn knows(&self, name: &str) -> bool {
        self.queues.contains_key(name)
    }
}

/// Delivers one channel's events in order, each with retries and backoff.
async fn deliver(channel: Channel, mut rx: mpsc::Receiver<Event>, http: reqwest::Client, metrics: Arc<Metrics>) {
    while let Some(event) = rx.recv().await {
        let body = match channel.kind {
            ChannelKind::Slack => serde_json::json!({ "text": event.text() }),
            ChannelKind::Webhook => {
                let mut v = serde_json::to_value(&event).unwrap_or_default();
                v["at"] = serde_json::json!(Utc::now());
                v["source"] = serde_json::json!("rotator");
                v
            }
        };
        let mut delivered = false;
        for attempt in 1..=ATTEMPTS {
            match http.post(channel.url.expose()).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                // The URL is a secret: log the channel's name and the status only.
                Ok(r) => tracing::warn!(channel = %channel.name, status = %r.status(), attempt, "notification refused"),
                Err(e) => {
                    tracing::warn!(channel = %channel.name, error = %e.without_url(), attempt, "notification not delivered")
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(500 * (1 << attempt))).await;
            }
        }
        metrics.notification(&channel.name, if delivered { "delivered" } else { "failed" });
        if !delivered {
            tracing::error!(channel = %channel.name, policy = %event.policy(), "notification dropped after {ATTEMPTS} attempts");
        }
    }
}
