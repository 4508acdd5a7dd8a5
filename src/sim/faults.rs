//! Fault injection and dialects: the knobs a test turns to make the simulator misbehave
//! ([`Faults`]) or read an open question of the contract another way ([`Dialect`]), both set at
//! start and replaceable while it runs, and the roll of the dice that decides whether a fault hits
//! a request. `handlers::v1` applies them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What `create_timeout_delay_ms = 0` means: longer than any sane client timeout.
const DEFAULT_CREATE_TIMEOUT_DELAY_MS: u64 = 30_000;

/// Fault injection knobs; all rates are probabilities 0.0..=1.0 per request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every `/v1` request before anything else happens.
    pub latency_ms: u64,
    /// Share of requests answered `500 internal_error` without doing anything.
    pub error_rate: f64,
    /// Share of requests answered `429 rate_limited` (`Retry-After: 1`) without doing anything.
    pub rate_limit_rate: f64,
    /// Share of requests whose connection is dropped without a response and without effect.
    pub drop_rate: f64,
    /// Share of successful creates (`POST` of a client or key) whose response is held back for
    /// `create_timeout_delay_ms`, so the credential exists but the client times out.
    pub create_timeout_rate: f64,
    /// Delay of a create hit by `create_timeout_rate`; 0 means 30000.
    pub create_timeout_delay_ms: u64,
    /// Share of creates answered `500 internal_error` without doing anything (the create
    /// endpoint failing while the rest of the API works).
    pub create_error_rate: f64,
    /// Creates are carried out this long after they arrive, in a task of their own, so a
    /// create whose client has gone (killed, timed out) still lands later, as a vendor's queue
    /// would have it. 0: at once.
    pub create_delay_ms: u64,
    /// Credential IDs whose revocation is refused with `403 forbidden` (a vendor protecting a
    /// credential, or a management credential lacking the right), until the list changes.
    pub refuse_revocation: Vec<String>,
}

impl Faults {
    /// Rejects rates a person could not have meant, so a typo in `PUT /_sim/faults` is loud
    /// instead of silently meaning "never" or "always".
    pub(super) fn check(&self) -> Result<(), String> {
        let rates = [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("drop_rate", self.drop_rate),
            ("create_timeout_rate", self.create_timeout_rate),
            ("create_error_rate", self.create_error_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0.0 and 1.0, got {rate}"));
            }
        }
        Ok(())
    }

    pub(super) fn create_timeout_delay(&self) -> Duration {
        match self.create_timeout_delay_ms {
            0 => Duration::from_millis(DEFAULT_CREATE_TIMEOUT_DELAY_MS),
            ms => Duration::from_millis(ms),
        }
    }
}

/// Readings of what `toktra-api.md` leaves open. Each one is a switch, so rotator is tested
/// against every reasonable vendor, not just the one this simulator happens to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dialect {
    pub revoked_in_lists: RevokedInLists,
    pub token_error: TokenError,
}

/// Whether list endpoints keep revoked credentials (undocumented; vendors do both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokedInLists {
    /// Revoked credentials disappear from lists.
    #[default]
    Omit,
    /// Revoked credentials stay listed with `revoked_at` set.
    RevokedAt,
    /// Revoked credentials stay listed with `"status": "revoked"` (and no `revoked_at`).
    Status,
}

/// How the token endpoint refuses unknown, revoked or wrong client credentials (the contract
/// allows both the API's own shape and RFC 6749's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenError {
    /// `401 {"error": "invalid_client"}`
    #[default]
    InvalidClient401,
    /// `400 {"error": "invalid_client"}` (RFC 6749 section 5.2 allows 400)
    InvalidClient400,
    /// `401 {"error": "unauthorized"}`, like every other endpoint
    Unauthorized401,
}

/// A real RNG per decision; `random()` is in `[0, 1)`, so 0.0 never fires and 1.0 always does.
pub(super) fn roll(rate: f64) -> bool {
    rand::random::<f64>() < rate
}
