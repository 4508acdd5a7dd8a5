//! Human durations as policy files write them: `90d`, `24h`, `1h30m`, `45s`, `2w`, `0s`.
//! Parsing is strict (no bare numbers, no unknown units, no overflow) because a policy that
//! says `grace: 24` must be an error, not 24 seconds.

use std::fmt;
use std::time::Duration;

const UNITS: &[(&str, u64)] = &[("w", 7 * 86_400), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];

/// Parses `[0-9]+[wdhms]` repeated, units in decreasing order, each at most once.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; expected e.g. `90d`, `24h`, `30m`".into());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    let mut last_unit = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("malformed duration `{text}`; expected e.g. `90d`, `24h`, `1h30m`"));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| format!("duration `{text}` is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        let Some(index) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(if unit.is_empty() {
                format!("duration `{text}` has no unit; use one of w, d, h, m, s (e.g. `24h`)")
            } else {
                format!("duration `{text}` has unknown unit `{unit}`; use one of w, d, h, m, s")
            });
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(format!("malformed duration `{text}`; write units once, largest first (e.g. `1h30m`)"));
        }
        last_unit = Some(index);
        total = number
            .checked_mul(UNITS[index].1)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("duration `{text}` is too large"))?;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way policies write it, e.g. `1d2h`, `0s`.
pub fn format(d: Duration) -> String {
    Human(d).to_string()
}

/// `Display` adapter for [`format`].
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secs = self.0.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in UNITS.iter().skip(1) {
            if secs >= *size {
                write!(f, "{}{unit}", secs / size)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let ok = [("90d", 90 * 86_400), ("24h", 86_400), ("1h30m", 5_400), ("0s", 0), ("2w", 1_209_600), ("45s", 45)];
        for (text, secs) in ok {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for bad in ["", "24", "h", "1x", "30m1h", "1h1h", "-1h", "1.5h", "99999999999999999999d", "1 h"] {
            assert!(parse(bad).is_err(), "{bad} should fail");
        }
        assert_eq!(format(Duration::from_secs(93_600)), "1d2h");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
