//! Per-credential rate limiting: fixed windows keyed by credential ID (at the token endpoint, by
//! the client_id a request claims, checked before its secret), and the `X-RateLimit-*` headers
//! that report the caller's budget on every `/v1` response.

use std::collections::HashMap;

use axum::http::header::HeaderName;
use axum::http::{HeaderMap, HeaderValue};

use super::clock::Now;

/// Length of one rate-limit window.
pub(super) const RATE_WINDOW_SECS: u64 = 60;

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Fixed windows (one minute unless configured) per key. A window starts at a key's first request after the
/// previous window ended (not at wall-clock minute boundaries), so a burst is never split
/// across two windows by accident, which keeps tests deterministic.
pub(super) struct Limiter {
    windows: HashMap<String, Window>,
    window_secs: u64,
}

struct Window {
    start: u64,
    used: u32,
}

/// What the three `X-RateLimit-*` headers report.
#[derive(Clone, Copy)]
pub(super) struct RateInfo {
    pub(super) limit: u32,
    pub(super) remaining: u32,
    /// Unix seconds at which the window ends.
    pub(super) reset: u64,
}

impl RateInfo {
    pub(super) fn retry_after(&self, now: Now) -> u64 {
        self.reset.saturating_sub(now.unix).max(1)
    }

    /// The three `X-RateLimit-*` headers every `/v1` response carries.
    pub(super) fn insert_headers(&self, headers: &mut HeaderMap) {
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(X_RATELIMIT_RESET, HeaderValue::from(self.reset));
    }
}

impl Limiter {
    pub(super) fn new(window_secs: u64) -> Limiter {
        Limiter { windows: HashMap::new(), window_secs }
    }

    /// Charges one request to `key`; the flag says whether the request is within the limit.
    pub(super) fn take(&mut self, key: &str, limit: u32, now: u64) -> (RateInfo, bool) {
        // Unknown client_ids sent to the token endpoint also get windows; forget stale ones
        // once there are many so that a flood of made-up ids cannot grow the map forever.
        if self.windows.len() >= 10_000 {
            self.windows.retain(|_, window| now < window.start + self.window_secs);
        }
        let window = self.windows.entry(key.to_owned()).or_insert(Window { start: now, used: 0 });
        if now >= window.start + self.window_secs {
            *window = Window { start: now, used: 0 };
        }
        let allowed = window.used < limit;
        if allowed {
            window.used += 1;
        }
        let info =
            RateInfo { limit, remaining: limit.saturating_sub(window.used), reset: window.start + self.window_secs };
        (info, allowed)
    }

    pub(super) fn peek(&self, key: &str, limit: u32, now: u64) -> RateInfo {
        match self.windows.get(key) {
            Some(window) if now < window.start + self.window_secs => {
                RateInfo { limit, remaining: limit.saturating_sub(window.used), reset: window.start + self.window_secs }
            }
            _ => RateInfo { limit, remaining: limit, reset: now + self.window_secs },
        }
    }
}
