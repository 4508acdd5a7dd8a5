//! The one type that carries secret values (client secrets, API keys, tokens, the JSON written
//! to destinations). It redacts itself in `Debug` and `Display`, has no `Serialize`, and the
//! only way to read it is [`Secret::expose`], so every place that touches a value can be found
//! with `grep expose`.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// A secret value. Cloning is cheap enough for the handful of secrets a rotation holds.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(SecretString::from(value.into()))
    }

    /// The value itself. Callers pass it straight to an HTTP body, a header or a destination
    /// write; they never format it into a message.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// A stable, non-reversible identifier of the value, safe for the journal and logs:
    /// `sha256:` and the first 16 hex digits of the SHA-256 digest. The values rotator handles
    /// are long random strings, so the digest reveals nothing useful about them.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.expose().as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        // Not constant time: used to compare read-back values, not to authenticate anyone.
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_and_fingerprints() {
        let s = Secret::new("tk_live_very_secret_value");
        assert_eq!(format!("{s:?}"), "Secret([REDACTED])");
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert!(s.fingerprint().starts_with("sha256:"));
        assert_eq!(s.fingerprint().len(), "sha256:".len() + 16);
        assert_eq!(s.fingerprint(), Secret::new("tk_live_very_secret_value").fingerprint());
        assert_ne!(s.fingerprint(), Secret::new("other").fingerprint());
    }
}
