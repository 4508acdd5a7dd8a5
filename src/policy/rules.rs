//! The rules single fields are checked against, apart from the walk that applies them
//! (`read`): names and labels, file destination paths, how a misspelt value is suggested, and
//! the shortest gap between a cron expression's firings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::places::canonical_file;
use crate::duration;
use crate::schedule::{Cron, Trigger};

/// The longest name a file destination may have: the file destination writes
/// `<name>.previous.<32 hex>.tmp` beside it (46 bytes more), and a name has at most 255 bytes.
const MAX_FILE_NAME: usize = 255 - ".previous".len() - ".".len() - 32 - ".tmp".len();

/// A file destination's path in canonical form, or why it cannot work: a destination is a
/// regular file whose name, and the names of the files written beside it, the filesystem
/// accepts.
pub(super) fn file_path(base: &Path, text: &str) -> Result<PathBuf, String> {
    let path = Path::new(text);
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    let Some(name) = path.file_name().filter(|_| !text.ends_with("/.") && text != ".") else {
        return Err(format!("`{text}` names a directory, not a file"));
    };
    if text.ends_with('/') {
        return Err(format!(
            "`{text}` ends with `/`, which names a directory; name the file, e.g. `{text}toktra.json`"
        ));
    }
    if name.len() > MAX_FILE_NAME {
        return Err(format!(
            "the file name is {} bytes; at most {MAX_FILE_NAME} (rotator writes `<name>.previous.<id>.tmp` beside it, and a name has at most 255 bytes)",
            name.len()
        ));
    }
    if let Some(long) = path.parent().into_iter().flat_map(Path::components).find(|c| c.as_os_str().len() > 255) {
        return Err(format!("a directory name is {} bytes; at most 255", long.as_os_str().len()));
    }
    let canonical = canonical_file(base, path);
    if let Some(system) = ["/dev", "/proc", "/sys"].into_iter().find(|root| canonical.starts_with(root)) {
        return Err(format!("`{text}` is under {system}; a destination is a regular file"));
    }
    Ok(canonical)
}

/// A duration written with spaces or unit words (`30 days`, `1 hour 30 minutes`, `90days`) as
/// policies write it (`30d`, `1h30m`, `90d`), if that is what it means.
pub(super) fn spelled_out(text: &str) -> Option<String> {
    const WORDS: &[(&str, &[&str])] = &[
        ("w", &["w", "wk", "wks", "week", "weeks"]),
        ("d", &["d", "day", "days"]),
        ("h", &["h", "hr", "hrs", "hour", "hours"]),
        ("m", &["m", "min", "mins", "minute", "minutes"]),
        ("s", &["s", "sec", "secs", "second", "seconds"]),
    ];
    let lower = text.trim().to_ascii_lowercase();
    let mut rest = lower.as_str();
    let mut written = String::new();
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        written.push_str(&rest[..digits]);
        rest = rest[digits..].trim_start();
        let letters = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let unit = WORDS.iter().find(|(_, words)| words.contains(&&rest[..letters]))?.0;
        written.push_str(unit);
        rest = rest[letters..].trim_start_matches([' ', ',']).trim_start_matches("and ").trim_start();
    }
    (written != text && duration::parse(&written).is_ok()).then_some(written)
}

/// `` `a`, `b` or `c` ``.
pub(super) fn quoted_list(items: &[&str], last: &str) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.split_last() {
        Some((tail, init)) if !init.is_empty() => format!("{} {last} {tail}", init.join(", ")),
        _ => quoted.join(""),
    }
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

pub(super) fn valid_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// The shortest gap between consecutive firings of `cron` (over its next 60 firings from a
/// fixed date, so validation does not depend on the clock), to compare with `grace`.
pub(super) fn shortest_gap(cron: &Cron, tz: chrono_tz::Tz) -> Option<Duration> {
    let start: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse().ok()?;
    let mut previous = cron.next_after(start, tz)?;
    let first = previous;
    let mut shortest: Option<Duration> = None;
    // Sixty firings, or a year of them for rare expressions, whichever comes first.
    for _ in 0..60 {
        let next = cron.next_after(previous, tz)?;
        let gap = (next - previous).to_std().ok()?;
        shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
        previous = next;
        if next - first > chrono::Duration::days(366) {
            break;
        }
    }
    shortest
}

pub(super) fn cron_text(trigger: &Option<Trigger>) -> &str {
    match trigger {
        Some(Trigger::Cron(cron)) => cron.text(),
        _ => "",
    }
}
