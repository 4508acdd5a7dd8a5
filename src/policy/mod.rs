//! Rotation policies: YAML files under the policy directory, read into [`Policy`] values the
//! rest of the program trusts. A policy set is accepted or rejected as a whole: loading returns
//! every problem it found, each as `file:line:col: field.path: message`, and the caller runs
//! nothing when there is one.
//!
//! - `yaml`: text → documents of spanned nodes (serde-saphyr); every position comes from there.
//! - `read`: a document's nodes → a validated [`Policy`], reporting every structural and
//!   semantic problem of the document in one pass.
//! - `places`: where destinations write, in canonical form, and the checks across the set.
//! - `schema`: the JSON Schema and the Markdown reference, generated from the raw form.
//!
//! The raw form ([`Document`], the `*Spec` types, and [`Destination`] with its kinds, which the
//! validated [`Policy`] holds as they are) is exactly what a policy file may say. It is the source
//! of the JSON Schema, and it deserializes with serde as the reader reads (unknown fields
//! denied); tests keep the reader, the raw form and the schema in step.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::schedule::Schedule;

mod places;
mod read;
mod rules;
mod schema;
#[cfg(test)]
mod tests;
mod yaml;

pub use places::{canonical_label, check_default_region, depends_on_default_region};
pub use schema::{json_schema, reference_markdown};

pub use crate::credential::CredentialKind;

// ---- the raw form: exactly what a policy file may say (and the JSON Schema) ----

/// A rotation policy: one YAML document of a policy file. A file may hold several, separated
/// by `---`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rotator policy")]
pub struct Document {
    /// Unique across the policy set: 1-63 characters of a-z, 0-9 and `-`, not starting or
    /// ending with `-`.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// What the credential is for.
    pub description: Option<String>,
    /// Labels to select policies by (`rotator rotate --selector team=payments`). Keys and values:
    /// 1-63 characters of letters, digits, `-`, `_`, `.` and `/`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The credential at Toktra and how it is minted.
    pub credential: CredentialSpec,
    /// When the policy is due.
    pub schedule: ScheduleSpec,
    /// Where the credential is written; at least one. Each item names exactly one kind.
    #[schemars(length(min = 1))]
    pub destinations: Vec<Destination>,
    /// How and when old credentials are revoked.
    #[serde(default)]
    pub revoke: RevokeSpec,
    /// Notification channels, by name, from the service configuration.
    #[serde(default)]
    pub notify: Vec<String>,
}

/// The credential at Toktra.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    /// `oauth_client` or `api_key`.
    pub kind: CredentialKind,
    /// Base name at Toktra; each minted credential is named `<name>-<rotation id>`.
    #[schemars(length(min = 1, max = 100))]
    pub name: String,
    /// Scopes of the minted credential.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// When the policy is due. Exactly one of `every` and `cron`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Rotate this long after the last rotation, e.g. `90d`; at least `1h`.
    #[schemars(regex(pattern = r"^([0-9]+[wdhms])+$"))]
    pub every: Option<String>,
    /// Rotate at the first firing of this 5-field cron expression after the last rotation,
    /// e.g. `0 3 * * SUN` (minute hour day-of-month month day-of-week), in `timezone`.
    pub cron: Option<String>,
    /// Rotations only start inside this window; a due rotation waits for the next opening.
    pub window: Option<WindowSpec>,
    /// IANA time zone of `cron` and `window`, e.g. `Europe/Berlin`; default `UTC`.
    pub timezone: Option<String>,
    /// Spread: each policy is due up to this much later, by a fixed offset derived from its
    /// name (stable across runs, different between policies).
    #[schemars(regex(pattern = r"^([0-9]+[wdhms])+$"))]
    pub jitter: Option<String>,
}

/// A recurring window.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Days on which the window opens (`mon` … `sun`); every day when left out.
    pub days: Option<Vec<String>>,
    /// Local time the window opens, `HH:MM`.
    #[schemars(regex(pattern = r"^[0-2][0-9]:[0-5][0-9]$"))]
    pub start: String,
    /// How long it stays open, e.g. `4h` (more than 0s, at most 7d). A window may cross
    /// midnight.
    #[schemars(regex(pattern = r"^([0-9]+[wdhms])+$"))]
    pub duration: String,
}

/// Where a policy's credential is written; in a policy file, a map with exactly one key naming
/// its kind, e.g. `- vault: { mount: secret, path: toktra/ci }`.
///
/// One type for the raw form and the validated one, like the kinds it holds: the reader builds
/// it with every place in canonical form (`places`); serde only deserializes it in a test.
/// Adding a destination kind is one variant here (its key in policy files and its branch of the
/// schema come from it), its shape and reading in `read`, and one file and one `Handle` variant
/// in `store`; the compiler points at the matches to extend (`places`, `plan`, `permissions`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
// The schema's description speaks to policy authors only; the doc comment also speaks to the code.
#[schemars(description = "One destination: a list entry that is a map with exactly one key, naming its \
                          kind, e.g. `- vault: { mount: secret, path: toktra/ci }`.")]
pub enum Destination {
    /// AWS Secrets Manager.
    AwsSecretsManager(AwsDestination),
    /// Vault or OpenBao KV v2.
    Vault(VaultDestination),
    /// A local JSON file.
    File(FileDestination),
}

/// How and when old credentials are revoked.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeSpec {
    /// How long the old credential stays valid after the new one is promoted; default `24h`,
    /// `0s` revokes at once. At most the rotation interval.
    #[schemars(regex(pattern = r"^([0-9]+[wdhms])+$"))]
    pub grace: Option<String>,
    /// Revoke only once Toktra reports the old credential unused for this long.
    #[schemars(regex(pattern = r"^([0-9]+[wdhms])+$"))]
    pub require_idle: Option<String>,
}

/// AWS Secrets Manager: consumers read `AWSCURRENT`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsDestination {
    /// Secret name or ARN.
    #[schemars(length(min = 1))]
    pub secret_id: String,
    /// Region; default from the AWS configuration (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// Create the secret (holding `{}` until the first promotion) when it does not exist.
    #[serde(default)]
    pub create: bool,
    /// KMS key for a secret rotator creates.
    pub kms_key_id: Option<String>,
}

/// Vault or OpenBao KV v2: consumers read the latest version of `<mount>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultDestination {
    /// KV v2 mount, e.g. `secret`.
    #[schemars(length(min = 1))]
    pub mount: String,
    /// Path consumers read, e.g. `toktra/ci-pipeline`.
    #[schemars(length(min = 1))]
    pub path: String,
    /// Where the pending value waits before promotion; default `_rotator/staging/<path>`,
    /// outside the consumers' path so their ACLs need not (and should not) cover it.
    pub staging_path: Option<String>,
    /// Create the path on first rotation when it does not exist.
    #[serde(default)]
    pub create: bool,
}

/// A local JSON file (mode 0600), for local use and demos.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileDestination {
    /// The file consumers read; relative paths are relative to the policy file's directory.
    pub path: PathBuf,
}

// ---- the validated form ----

/// A validated rotation policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub credential: Credential,
    pub schedule: Schedule,
    pub destinations: Vec<Destination>,
    pub revoke: Revoke,
    pub notify: Vec<String>,
    /// Where the policy was defined, for messages.
    pub source: Location,
}

#[derive(Debug, Clone)]
pub struct Credential {
    pub kind: CredentialKind,
    /// Base name at Toktra; minted credentials are called `<name>-<rotation id>`.
    pub name: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Revoke {
    /// How long the old credential stays valid after promotion.
    pub grace: Duration,
    /// Revoke only once Toktra reports the old credential unused for this long.
    pub require_idle: Option<Duration>,
}

impl Policy {
    /// Whether the policy carries every `key=value` label of `selector`.
    pub fn matches(&self, selector: &[(String, String)]) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// A place in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    /// `file:line:col`, or just `file` for a problem with the file as a whole (line 0).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}", self.file.display()),
            line => write!(f, "{}:{line}:{}", self.file.display(), self.column),
        }
    }
}

/// One thing wrong with the policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: Location,
    /// Dotted path of the field, e.g. `schedule.every`; empty for whole-document problems.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: {}: {}", self.location, self.field, self.message)
        }
    }
}

/// The problems that made a policy set invalid.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} problem(s) in the policy set:\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct Invalid(pub Vec<Problem>);

/// Default grace when a policy names none (SPEC section 2).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3_600);
/// Rotations at least this far apart.
pub const MIN_INTERVAL: Duration = Duration::from_secs(3_600);
/// Longest duration a policy may give (ten years): longer ones overflow date arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

/// Loads every `*.yaml` / `*.yml` file under `dir` (recursively, in path order). Returns the
/// whole set or every problem found.
pub fn load_dir(dir: &Path) -> Result<Vec<Policy>, Invalid> {
    load_paths(&[dir.to_path_buf()])
}

/// Loads the given files and directories as one policy set.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Policy>, Invalid> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            collect_files(path, &mut found, &mut problems);
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut policies = Vec::new();
    for file in &files {
        match read_file(file) {
            Ok(text) => parse_file(file, &text, &mut policies, &mut problems),
            Err(message) => problems.push(file_problem(file, message)),
        }
    }
    places::check_set(&policies, &mut problems);
    if problems.is_empty() { Ok(policies) } else { Err(Invalid(problems)) }
}

/// Policy files under `dir`, following symlinks (a Kubernetes ConfigMap mount is made of them)
/// but reading each directory once, in name order: a link back to a directory it is in (two
/// symlinks to `.`) is a loop and reported, not walked forever; another way to a directory
/// already read is skipped. Hidden entries are skipped: such a mount holds every file twice
/// more under `..data/` and `..<timestamp>/`.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
    let mut walk = Walk { out, problems, visited: HashSet::new(), ancestors: Vec::new() };
    walk.dir(dir);
}

struct Walk<'a> {
    out: &'a mut Vec<PathBuf>,
    problems: &'a mut Vec<Problem>,
    /// Every directory read, by (device, inode).
    visited: HashSet<(u64, u64)>,
    /// The directories being read, from the top down.
    ancestors: Vec<(u64, u64)>,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path) {
        use std::os::unix::fs::MetadataExt;
        let id = match std::fs::metadata(dir) {
            Ok(meta) => (meta.dev(), meta.ino()),
            Err(e) => return self.problems.push(file_problem(dir, format!("cannot read policy directory: {e}"))),
        };
        if self.ancestors.contains(&id) {
            let message = "a symlink loop (it leads back to a directory it is in); not followed";
            return self.problems.push(file_problem(dir, message.into()));
        }
        if !self.visited.insert(id) {
            return; // read already, under another name
        }
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => return self.problems.push(file_problem(dir, format!("cannot read policy directory: {e}"))),
        };
        entries.sort();
        self.ancestors.push(id);
        for path in entries {
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            let is_policy = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => self.dir(&path),
                // Only regular files are read; `read_file` reports any other kind.
                Ok(_) if is_policy => self.out.push(path),
                Ok(_) => {}
                // A dangling symlink or a loop of links (ELOOP), reported when named like a policy.
                Err(e) if is_policy => self.problems.push(file_problem(&path, format!("cannot read file: {e}"))),
                Err(_) => {}
            }
        }
        self.ancestors.pop();
    }
}

/// `O_NONBLOCK`, which std does not name (the `libc` crate is not a dependency; see
/// `store::file` for `O_NOFOLLOW`). The same value on every Linux target rotator ships on.
#[cfg(target_os = "linux")]
const O_NONBLOCK: i32 = 0o4000;
#[cfg(not(target_os = "linux"))]
const O_NONBLOCK: i32 = 0;

/// The most bytes one policy file may hold (a few thousand policies); a larger file is refused
/// unread.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A policy file's text, at most [`MAX_FILE_BYTES`]. Only a regular file is opened: opening a
/// FIFO for reading waits for a writer, so its type is checked first; a FIFO swapped in after
/// the check opens without waiting (`O_NONBLOCK`) and is refused by the second check.
fn read_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = |meta: &std::fs::Metadata| {
        use std::os::unix::fs::FileTypeExt;
        let kind = meta.file_type();
        let what = match () {
            _ if kind.is_dir() => "a directory",
            _ if kind.is_fifo() => "a FIFO",
            _ if kind.is_socket() => "a socket",
            _ if kind.is_block_device() || kind.is_char_device() => "a device",
            _ => "a special file",
        };
        format!("not a regular file ({what}); only regular files are read")
    };
    let unreadable = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => format!("cannot read file: {e}"),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let file = std::fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(|e| format!("cannot read file: {e}"))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read file: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "the file is larger than {} MiB, the most one policy file may hold; split it into several files",
            MAX_FILE_BYTES / 1024 / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|e| format!("the file is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

fn file_problem(file: &Path, message: String) -> Problem {
    Problem { location: Location { file: file.to_path_buf(), line: 0, column: 0 }, field: String::new(), message }
}

/// Parses one file's text (one or more YAML documents) into policies, adding its problems in
/// the order they appear in the file.
pub fn parse_file(file: &Path, text: &str, policies: &mut Vec<Policy>, problems: &mut Vec<Problem>) {
    let mut reader = read::Reader::new(file);
    match yaml::documents(text) {
        Ok(documents) => {
            for document in documents {
                match document {
                    Ok(root) => policies.extend(reader.document(&root)),
                    Err(e) => reader.problem(e.at, "", e.message),
                }
            }
        }
        Err(refused) => reader.problem(refused.at, "", refused.message),
    }
    let mut found = reader.into_problems();
    found.sort_by_key(|p| (p.location.line, p.location.column));
    problems.extend(found);
}
