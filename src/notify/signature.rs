//! The signature of generic webhooks, so a receiver can tell rotator's requests from anyone
//! else's and refuse old ones replayed: `X-Rotator-Timestamp: <Unix seconds>` and
//! `X-Rotator-Signature: sha256=<hex>`, the HMAC-SHA256 with the channel's signing secret of the
//! timestamp, a `.`, and the body exactly as sent. Each delivery attempt is signed afresh, so a
//! retry carries a current timestamp. README "Notifications" shows how to verify it.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::secret::Secret;

pub const TIMESTAMP_HEADER: &str = "X-Rotator-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Rotator-Signature";

/// The value of [`SIGNATURE_HEADER`] for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_timestamp_dot_body() {
        // Expected value from Python's hmac module:
        // hmac.new(key, b'1700000000.' + body, hashlib.sha256).hexdigest()
        let secret = Secret::new("whsec-0123456789abcdef0123456789abcdef");
        assert_eq!(
            sign(&secret, 1_700_000_000, br#"{"event":"rotation_failed"}"#),
            "sha256=4ead7723e5a0f3c868c693b8dae771d8a3a799f6abc54c1dfd81439331f2027a"
        );
        assert_ne!(
            sign(&secret, 1_700_000_001, br#"{"event":"rotation_failed"}"#),
            sign(&secret, 1_700_000_000, br#"{"event":"rotation_failed"}"#),
            "the timestamp is signed"
        );
    }
}
