//! Prometheus metrics of `rotator serve`, rendered in the text exposition format (version 0.0.4)
//! by hand: a few counters, one histogram and gauges computed at scrape time do not need a
//! metrics crate. Labels are policy names, outcomes, statuses and destination kinds: never a
//! credential or a secret.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the rotation-duration histogram, in seconds.
const BUCKETS: [f64; 8] = [0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 900.0];

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Reconciliation passes completed: what tests (and operators) watch to know the service
    /// has looked again since some change.
    passes: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// (policy, outcome) → count.
    rotations: BTreeMap<(String, String), u64>,
    durations: Histogram,
    /// destination kind → count.
    destination_errors: BTreeMap<String, u64>,
    notifications: BTreeMap<(String, String), u64>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Gauges computed when scraped.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Per policy, sorted by name.
    pub per_policy: Vec<PolicyGauges>,
    pub pending_revocations: u64,
    pub in_flight: u64,
    /// Open on-demand requests of policies this process's set lacks.
    pub requests_elsewhere: u64,
    pub policies: u64,
    /// Toktra responses by status (`error` for transport failures).
    pub toktra_requests: BTreeMap<String, u64>,
    pub toktra_retries: u64,
    pub toktra_rate_limit_waits: u64,
    /// Whether the last policy reload (or the load at start) was accepted.
    pub reload_success: bool,
    /// When it happened, Unix seconds.
    pub reload_timestamp: f64,
    /// The Vault token's remaining lifetime at the last readiness check (0: never expires).
    pub vault_token_ttl: Option<f64>,
    /// Readiness check (`toktra`, `vault`) → when it last passed, Unix seconds.
    pub check_last_success: BTreeMap<String, f64>,
}

/// A policy's gauges.
#[derive(Debug, Clone)]
pub struct PolicyGauges {
    pub policy: std::sync::Arc<str>,
    /// Age of the current credential, seconds, when known.
    pub credential_age: Option<f64>,
    /// When the next rotation may start, Unix seconds.
    pub next_rotation: f64,
    pub overdue: bool,
}

/// Escapes a label value (backslash, quote, newline); most values need nothing.
fn label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    std::borrow::Cow::Owned(value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

impl Metrics {
    pub fn rotation(&self, policy: &str, outcome: &str, seconds: f64) {
        if let Ok(mut m) = self.inner.lock() {
            *m.rotations.entry((policy.to_string(), outcome.to_string())).or_default() += 1;
            for (i, bound) in BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    m.durations.counts[i] += 1;
                }
            }
            m.durations.count += 1;
            m.durations.sum += seconds;
        }
    }

    pub fn destination_error(&self, kind: &str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.destination_errors.entry(kind.to_string()).or_default() += 1;
        }
    }

    pub fn notification(&self, channel: &str, outcome: &str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.notifications.entry((channel.to_string(), outcome.to_string())).or_default() += 1;
        }
    }

    /// The text exposition of everything.
    pub fn pass_completed(&self) {
        self.passes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    pub fn render(&self, s: &Snapshot) -> String {
        let mut out = String::new();
        let Ok(m) = self.inner.lock() else { return out };
        let passes = "rotator_reconcile_passes_total";
        let _ = writeln!(
            out,
            "# HELP {passes} Reconciliation passes completed.\n# TYPE {passes} counter\n{passes} {}",
            self.passes()
        );
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            name.to_string()
        };
        let name = family("rotator_rotations_total", "counter", "Rotations finished, by policy and outcome.");
        let mut text = String::new();
        for ((policy, outcome), n) in &m.rotations {
            let _ = writeln!(text, "{name}{{policy=\"{}\",outcome=\"{}\"}} {n}", label(policy), label(outcome));
        }
        out.push_str(&text);
        let name = "rotator_rotation_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time a rotation run took.\n# TYPE {name} histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", m.durations.counts[i]);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            m.durations.count, m.durations.sum, m.durations.count
        );
        let gauge = |out: &mut String, name: &str, help: &str, value: &dyn Fn(&PolicyGauges) -> Option<f64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for p in &s.per_policy {
                if let Some(v) = value(p) {
                    let _ = writeln!(out, "{name}{{policy=\"{}\"}} {v}", label(&p.policy));
                }
            }
        };
        gauge(&mut out, "rotator_credential_age_seconds", "Age of the policy's current credential.", &|p| {
            p.credential_age
        });
        gauge(
            &mut out,
            "rotator_next_rotation_timestamp_seconds",
            "When the policy's next rotation may start (Unix time).",
            &|p| Some(p.next_rotation),
        );
        gauge(&mut out, "rotator_policy_overdue", "1 if the policy is overdue.", &|p| {
            Some(f64::from(u8::from(p.overdue)))
        });
        let single = |out: &mut String, name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        single(
            &mut out,
            "rotator_overdue_policies",
            "gauge",
            "Policies overdue for rotation.",
            s.per_policy.iter().filter(|p| p.overdue).count() as f64,
        );
        single(
            &mut out,
            "rotator_pending_revocations",
            "gauge",
            "Old credentials awaiting revocation.",
            s.pending_revocations as f64,
        );
        single(&mut out, "rotator_rotations_in_flight", "gauge", "Rotations running now.", s.in_flight as f64);
        single(&mut out, "rotator_policies", "gauge", "Policies loaded.", s.policies as f64);
        single(
            &mut out,
            "rotator_requests_waiting_elsewhere",
            "gauge",
            "Open on-demand requests of policies this process does not have; a process that has the policy runs them.",
            s.requests_elsewhere as f64,
        );
        single(
            &mut out,
            "rotator_policy_reload_success",
            "gauge",
            "1 if the last policy reload (or the load at start) was accepted; 0 if it was rejected and an older set runs.",
            f64::from(u8::from(s.reload_success)),
        );
        single(
            &mut out,
            "rotator_policy_reload_timestamp_seconds",
            "gauge",
            "When the policy directory was last loaded or a reload was tried (Unix time).",
            s.reload_timestamp,
        );
        if let Some(ttl) = s.vault_token_ttl {
            single(
                &mut out,
                "rotator_vault_token_ttl_seconds",
                "gauge",
                "The Vault token's remaining lifetime at the last readiness check (0: it never expires).",
                ttl,
            );
        }
        if !s.check_last_success.is_empty() {
            let name = "rotator_check_last_success_timestamp_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} When each readiness check of an outside service last passed (Unix time).\n# TYPE {name} gauge"
            );
            for (check, at) in &s.check_last_success {
                let _ = writeln!(out, "{name}{{check=\"{}\"}} {at}", label(check));
            }
        }
        let name = "rotator_toktra_requests_total";
        let _ = writeln!(out, "# HELP {name} Toktra API responses, by status.\n# TYPE {name} counter");
        for (status, n) in &s.toktra_requests {
            let _ = writeln!(out, "{name}{{status=\"{}\"}} {n}", label(status));
        }
        single(
            &mut out,
            "rotator_toktra_retries_total",
            "counter",
            "Toktra calls retried after a transient failure.",
            s.toktra_retries as f64,
        );
        single(
            &mut out,
            "rotator_toktra_rate_limit_waits_total",
            "counter",
            "Waits for Toktra's rate limit (429).",
            s.toktra_rate_limit_waits as f64,
        );
        let name = "rotator_destination_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed rotations that failed at a destination, by kind.\n# TYPE {name} counter"
        );
        for (kind, n) in &m.destination_errors {
            let _ = writeln!(out, "{name}{{kind=\"{}\"}} {n}", label(kind));
        }
        let name = "rotator_notifications_total";
        let _ = writeln!(out, "# HELP {name} Notifications, by channel and outcome.\n# TYPE {name} counter");
        for ((channel, outcome), n) in &m.notifications {
            let _ = writeln!(out, "{name}{{channel=\"{}\",outcome=\"{}\"}} {n}", label(channel), label(outcome));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.rotation("ci", "completed", 1.2);
        m.rotation("ci", "completed", 0.3);
        m.destination_error("vault");
        let mut s = Snapshot::default();
        s.per_policy.push(PolicyGauges {
            policy: "ci".into(),
            credential_age: Some(42.0),
            next_rotation: 1_700_000_100.0,
            overdue: true,
        });
        s.per_policy.push(PolicyGauges {
            policy: "a \"quoted\"\nname".into(),
            credential_age: None,
            next_rotation: 1.0,
            overdue: false,
        });
        s.toktra_requests.insert("201".into(), 3);
        s.reload_timestamp = 1_700_000_000.0;
        let text = m.render(&s);
        for line in [
            "rotator_rotations_total{policy=\"ci\",outcome=\"completed\"} 2",
            "rotator_rotation_duration_seconds_bucket{le=\"0.5\"} 1",
            "rotator_rotation_duration_seconds_bucket{le=\"2.5\"} 2",
            "rotator_rotation_duration_seconds_count 2",
            "rotator_credential_age_seconds{policy=\"ci\"} 42",
            "rotator_policy_overdue{policy=\"ci\"} 1",
            "rotator_policy_overdue{policy=\"a \\\"quoted\\\"\\nname\"} 0",
            "rotator_overdue_policies 1",
            "rotator_toktra_requests_total{status=\"201\"} 3",
            "rotator_destination_errors_total{kind=\"vault\"} 1",
            "rotator_policy_reload_success 0",
            "rotator_policy_reload_timestamp_seconds 1700000000",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
