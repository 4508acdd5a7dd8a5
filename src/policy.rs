//! Rotation policies: YAML files under the policy directory, parsed strictly into a raw form and
//! validated into [`Policy`] values the rest of the program trusts. A policy set is accepted or
//! rejected as a whole: [`load_dir`] returns every problem it found, each naming the file, the
//! line and the field, and the caller runs nothing when there is one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration;

/// What a policy rotates at Toktra.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    OauthClient,
    ApiKey,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::OauthClient => "oauth_client",
            CredentialKind::ApiKey => "api_key",
        }
    }

    pub fn parse(text: &str) -> Option<CredentialKind> {
        match text {
            "oauth_client" => Some(CredentialKind::OauthClient),
            "api_key" => Some(CredentialKind::ApiKey),
            _ => None,
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
pub struct Schedule {
    pub trigger: Trigger,
    pub window: Option<Window>,
    pub timezone: Option<String>,
    pub jitter: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Every(Duration),
    Cron(String),
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[serde(default)]
    pub days: Vec<String>,
    pub start: String,
    pub duration: String,
}

#[derive(Debug, Clone)]
pub struct Revoke {
    /// How long the old credential stays valid after promotion.
    pub grace: Duration,
    /// Revoke only once Toktra reports the old credential unused for this long.
    pub require_idle: Option<Duration>,
}

/// Where a policy's credential is written. Adding a destination kind is one variant here, one
/// field in `RawDestination`, and one file under `store/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    AwsSecretsManager(AwsDestination),
    Vault(VaultDestination),
    File(FileDestination),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsDestination {
    pub secret_id: String,
    pub region: Option<String>,
    /// Create the secret (with no value until promotion) when it does not exist.
    #[serde(default)]
    pub create: bool,
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultDestination {
    /// KV v2 mount, e.g. `secret`.
    pub mount: String,
    /// Path consumers read, e.g. `toktra/ci-pipeline`.
    pub path: String,
    /// Where the pending value waits before promotion; default `_rotator/staging/<path>`, outside
    /// the consumers' path so that their ACLs need not (and should not) cover it.
    pub staging_path: Option<String>,
    /// Create the path on first rotation when it does not exist.
    #[serde(default)]
    pub create: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDestination {
    /// JSON file (mode 0600) holding the current value; relative paths are relative to the
    /// policy file's directory.
    pub path: PathBuf,
}

impl Destination {
    /// A short, secret-free label such as `vault:secret/toktra/ci`.
    pub fn label(&self) -> String {
        match self {
            Destination::AwsSecretsManager(d) => match &d.region {
                Some(region) => format!("aws:{region}:{}", d.secret_id),
                None => format!("aws:{}", d.secret_id),
            },
            Destination::Vault(d) => format!("vault:{}/{}", d.mount, d.path),
            Destination::File(d) => format!("file:{}", d.path.display()),
        }
    }

    /// Every place the destination writes, to reject two policies writing the same place.
    fn identities(&self) -> Vec<String> {
        match self {
            Destination::AwsSecretsManager(d) => {
                vec![format!("aws:{}:{}", d.region.as_deref().unwrap_or("(default)"), d.secret_id)]
            }
            Destination::Vault(d) => {
                let mount = d.mount.trim_matches('/');
                vec![
                    format!("vault:{mount}/{}", d.path.trim_matches('/')),
                    format!("vault:{mount}/{}", d.staging_path()),
                ]
            }
            Destination::File(d) => vec![format!("file:{}", d.path.display())],
        }
    }
}

impl VaultDestination {
    /// Where the pending value waits: `staging_path`, else `_rotator/staging/<path>`.
    pub fn staging_path(&self) -> String {
        match &self.staging_path {
            Some(p) => p.trim_matches('/').to_string(),
            None => format!("_rotator/staging/{}", self.path.trim_matches('/')),
        }
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One thing wrong with the policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: Location,
    /// Dotted path of the field, e.g. `schedule.every`; empty for whole-file problems.
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

// ---- raw form, exactly as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    description: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    credential: RawCredential,
    schedule: RawSchedule,
    #[serde(default)]
    destinations: Vec<RawDestination>,
    #[serde(default)]
    revoke: RawRevoke,
    #[serde(default)]
    notify: Vec<String>,
}

/// A destination as written: a map with exactly one key naming the kind, e.g.
/// `- vault: { mount: secret, path: toktra/ci }`. (yaml_serde reads externally tagged enums only
/// from YAML tags such as `!vault`, which nobody writes.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    aws_secrets_manager: Option<AwsDestination>,
    vault: Option<VaultDestination>,
    file: Option<FileDestination>,
}

impl RawDestination {
    fn into_destination(self) -> Result<Destination, String> {
        let mut kinds = Vec::new();
        if let Some(d) = self.aws_secrets_manager {
            kinds.push(Destination::AwsSecretsManager(d));
        }
        if let Some(d) = self.vault {
            kinds.push(Destination::Vault(d));
        }
        if let Some(d) = self.file {
            kinds.push(Destination::File(d));
        }
        match kinds.len() {
            1 => Ok(kinds.remove(0)),
            0 => Err("a destination needs one of `aws_secrets_manager`, `vault`, `file`".into()),
            _ => Err("a destination names exactly one kind; write each as its own list item".into()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    kind: CredentialKind,
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    every: Option<String>,
    cron: Option<String>,
    window: Option<Window>,
    timezone: Option<String>,
    jitter: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRevoke {
    grace: Option<String>,
    require_idle: Option<String>,
}

/// Default grace when a policy names none (SPEC section 2).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3_600);
const MIN_EVERY: Duration = Duration::from_secs(3_600);

/// Loads every `*.yaml` / `*.yml` file under `dir` (recursively, in path order). Returns the
/// whole set or every problem found.
pub fn load_dir(dir: &Path) -> Result<Vec<Policy>, Invalid> {
    let mut files = Vec::new();
    if let Err(e) = collect_files(dir, &mut files) {
        return Err(Invalid(vec![Problem {
            location: Location { file: dir.to_path_buf(), line: 0, column: 0 },
            field: String::new(),
            message: format!("cannot read policy directory: {e}"),
        }]));
    }
    files.sort();
    load_files(&files)
}

/// Loads the given files (or directories) as one policy set.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Policy>, Invalid> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            match collect_files(path, &mut found) {
                Ok(()) => {
                    found.sort();
                    files.extend(found);
                }
                Err(e) => problems.push(file_problem(path, format!("cannot read policy directory: {e}"))),
            }
        } else {
            files.push(path.clone());
        }
    }
    if !problems.is_empty() {
        return Err(Invalid(problems));
    }
    load_files(&files)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
    Ok(())
}

fn file_problem(file: &Path, message: String) -> Problem {
    Problem { location: Location { file: file.to_path_buf(), line: 0, column: 0 }, field: String::new(), message }
}

fn load_files(files: &[PathBuf]) -> Result<Vec<Policy>, Invalid> {
    let mut problems = Vec::new();
    let mut policies = Vec::new();
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => parse_file(file, &text, &mut policies, &mut problems),
            Err(e) => problems.push(file_problem(file, format!("cannot read file: {e}"))),
        }
    }
    check_set(&policies, &mut problems);
    if problems.is_empty() { Ok(policies) } else { Err(Invalid(problems)) }
}

/// Parses one file's text (one or more YAML documents) into policies, adding problems.
pub fn parse_file(file: &Path, text: &str, policies: &mut Vec<Policy>, problems: &mut Vec<Problem>) {
    let starts = document_starts(text);
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let start_line = starts.get(index).copied().unwrap_or(1);
        let doc_text = document_text(text, &starts, index);
        match RawPolicy::deserialize(document) {
            Ok(raw) => {
                let cx = Context { file, doc_text, start_line };
                if let Some(policy) = validate(raw, &cx, problems) {
                    policies.push(policy);
                }
            }
            Err(e) => {
                let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((start_line, 1));
                problems.push(Problem {
                    location: Location { file: file.to_path_buf(), line, column },
                    field: String::new(),
                    message: clean_yaml_message(&e.to_string()),
                });
                // The deserializer cannot go on after a syntax error.
                if e.location().is_none() || e.to_string().contains("did not find expected") {
                    break;
                }
            }
        }
    }
}

/// yaml_serde appends " at line X column Y" to messages; the location is printed separately.
fn clean_yaml_message(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// 1-based line numbers where each YAML document begins.
fn document_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![1];
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            if i == 0 || text.lines().take(i).all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
                starts[0] = i + 2;
            } else {
                starts.push(i + 2);
            }
        }
    }
    starts
}

fn document_text<'a>(text: &'a str, starts: &[usize], index: usize) -> Vec<&'a str> {
    let first = starts.get(index).copied().unwrap_or(1).saturating_sub(1);
    let end = starts.get(index + 1).map(|s| s.saturating_sub(2)).unwrap_or(usize::MAX);
    text.lines().enumerate().filter(|(i, _)| *i >= first && *i < end).map(|(_, l)| l).collect()
}

/// Where a document came from, to point semantic problems at the right line.
struct Context<'a> {
    file: &'a Path,
    doc_text: Vec<&'a str>,
    start_line: usize,
}

impl Context<'_> {
    /// Finds the line of the last key of a dotted field path, searching after the line of each
    /// earlier key; falls back to the document start. yaml_serde gives no spans for values that
    /// parsed, so this is a best-effort text search, good for the block-style files people write.
    fn locate(&self, field: &str) -> Location {
        let mut from = 0;
        let mut found = None;
        for key in field.split('.').filter(|k| !k.is_empty() && !k.starts_with('[')) {
            let key = key.split('[').next().unwrap_or(key);
            let hit = self.doc_text.iter().enumerate().skip(from).find_map(|(i, line)| {
                let trimmed = line.trim_start().trim_start_matches("- ").trim_start_matches('{').trim_start();
                let column = line.len() - line.trim_start().len() + 1;
                (trimmed.starts_with(&format!("{key}:")) || line.contains(&format!(" {key}:"))).then_some((i, column))
            });
            if let Some((i, column)) = hit {
                from = i;
                found = Some((i, column));
            }
        }
        let (line, column) = found.map(|(i, c)| (self.start_line + i, c)).unwrap_or((self.start_line, 1));
        Location { file: self.file.to_path_buf(), line, column }
    }

    fn problem(&self, problems: &mut Vec<Problem>, field: &str, message: impl Into<String>) {
        problems.push(Problem { location: self.locate(field), field: field.to_string(), message: message.into() });
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn validate(raw: RawPolicy, cx: &Context<'_>, problems: &mut Vec<Problem>) -> Option<Policy> {
    let before = problems.len();
    if !valid_name(&raw.name) {
        cx.problem(
            problems,
            "name",
            format!(
                "`{}` is not a valid name: use 1-63 characters of a-z, 0-9 and `-`, not starting or ending with `-`",
                raw.name
            ),
        );
    }
    if raw.credential.name.trim().is_empty() {
        cx.problem(problems, "credential.name", "must not be empty");
    } else if raw.credential.name.len() > 100 {
        cx.problem(problems, "credential.name", "must be at most 100 characters (minted names add a rotation ID)");
    }
    let mut duration_field = |field: &str, text: &Option<String>| -> Option<Duration> {
        let text = text.as_ref()?;
        match duration::parse(text) {
            Ok(d) => Some(d),
            Err(message) => {
                cx.problem(problems, field, message);
                None
            }
        }
    };
    let every = duration_field("schedule.every", &raw.schedule.every);
    let jitter = duration_field("schedule.jitter", &raw.schedule.jitter);
    let grace = duration_field("revoke.grace", &raw.revoke.grace);
    let require_idle = duration_field("revoke.require_idle", &raw.revoke.require_idle);
    if let Some(window) = &raw.schedule.window {
        duration_field("schedule.window.duration", &Some(window.duration.clone()));
    }
    let trigger = match (&raw.schedule.every, &raw.schedule.cron, every) {
        (Some(_), Some(_), _) => {
            cx.problem(problems, "schedule", "give exactly one of `every` and `cron`, not both");
            None
        }
        (None, None, _) => {
            cx.problem(problems, "schedule", "give exactly one of `every` (e.g. `90d`) and `cron`");
            None
        }
        (Some(_), None, Some(every)) => {
            if every < MIN_EVERY {
                cx.problem(
                    problems,
                    "schedule.every",
                    format!("`{}` is shorter than the minimum of 1h", duration::format(every)),
                );
            }
            Some(Trigger::Every(every))
        }
        (Some(_), None, None) => None,
        (None, Some(cron), _) => {
            if cron.split_whitespace().count() != 5 {
                cx.problem(
                    problems,
                    "schedule.cron",
                    format!("`{cron}` is not a 5-field cron expression (minute hour day-of-month month day-of-week)"),
                );
            }
            Some(Trigger::Cron(cron.clone()))
        }
    };
    if let (Some(Trigger::Every(every)), Some(grace)) = (&trigger, grace)
        && grace > *every
    {
        cx.problem(
            problems,
            "revoke.grace",
            format!(
                "grace `{}` is longer than the rotation interval `{}`",
                duration::format(grace),
                duration::format(*every)
            ),
        );
    }
    if raw.destinations.is_empty() {
        cx.problem(problems, "destinations", "at least one destination is required");
    }
    let mut destinations = Vec::new();
    for (i, raw_destination) in raw.destinations.into_iter().enumerate() {
        match raw_destination.into_destination() {
            Ok(d) => destinations.push(d),
            Err(message) => cx.problem(problems, &format!("destinations[{i}]"), message),
        }
    }
    for (i, destination) in destinations.iter().enumerate() {
        let field = format!("destinations[{i}]");
        match destination {
            Destination::AwsSecretsManager(d) if d.secret_id.trim().is_empty() => {
                cx.problem(problems, &format!("{field}.secret_id"), "must not be empty")
            }
            Destination::Vault(d) if d.mount.trim_matches('/').is_empty() || d.path.trim_matches('/').is_empty() => {
                cx.problem(problems, &format!("{field}.path"), "mount and path must not be empty")
            }
            Destination::Vault(d) if d.staging_path() == d.path.trim_matches('/') || d.staging_path().is_empty() => cx
                .problem(
                    problems,
                    &format!("{field}.staging_path"),
                    "must be a path of its own: consumers would read the unverified value",
                ),
            Destination::File(d) if d.path.as_os_str().is_empty() => {
                cx.problem(problems, &format!("{field}.path"), "must not be empty")
            }
            _ => {}
        }
        if destinations[..i].contains(destination) {
            cx.problem(problems, &field, format!("destination `{}` is listed twice", destination.label()));
        }
    }
    if problems.len() > before {
        return None;
    }
    let base = cx.file.parent().unwrap_or(Path::new("."));
    let destinations = destinations
        .into_iter()
        .map(|d| match d {
            Destination::File(f) if f.path.is_relative() => {
                Destination::File(FileDestination { path: base.join(f.path) })
            }
            other => other,
        })
        .collect();
    Some(Policy {
        name: raw.name,
        description: raw.description,
        labels: raw.labels,
        credential: Credential { kind: raw.credential.kind, name: raw.credential.name, scopes: raw.credential.scopes },
        schedule: Schedule { trigger: trigger?, window: raw.schedule.window, timezone: raw.schedule.timezone, jitter },
        destinations,
        revoke: Revoke { grace: grace.unwrap_or(DEFAULT_GRACE), require_idle },
        notify: raw.notify,
        source: cx.locate("name"),
    })
}

/// Checks that span policies: unique names, no destination written by two policies.
fn check_set(policies: &[Policy], problems: &mut Vec<Problem>) {
    let mut names: HashMap<&str, &Policy> = HashMap::new();
    let mut destinations: HashMap<String, &Policy> = HashMap::new();
    for policy in policies {
        if let Some(first) = names.insert(&policy.name, policy) {
            problems.push(Problem {
                location: policy.source.clone(),
                field: "name".into(),
                message: format!("duplicate policy name `{}`, first defined at {}", policy.name, first.source),
            });
            continue;
        }
        for (destination, identity) in
            policy.destinations.iter().flat_map(|d| d.identities().into_iter().map(move |i| (d, i)))
        {
            if let Some(other) = destinations.insert(identity, policy)
                && other.name != policy.name
            {
                problems.push(Problem {
                    location: policy.source.clone(),
                    field: "destinations".into(),
                    message: format!(
                        "destination `{}` is also written by policy `{}` ({})",
                        destination.label(),
                        other.name,
                        other.source
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<Policy>, Vec<Problem>) {
        let mut policies = Vec::new();
        let mut problems = Vec::new();
        parse_file(Path::new("p.yaml"), text, &mut policies, &mut problems);
        check_set(&policies, &mut problems);
        (policies, problems)
    }

    const GOOD: &str = "name: ci\ncredential: { kind: oauth_client, name: ci, scopes: [usage:read] }\nschedule:\n  every: 90d\ndestinations:\n  - vault: { mount: secret, path: toktra/ci }\n  - aws_secrets_manager: { secret_id: prod/ci, create: true }\nrevoke:\n  grace: 0s\n";

    #[test]
    fn parses_a_good_policy() {
        let (policies, problems) = parse(GOOD);
        assert!(problems.is_empty(), "{problems:?}");
        let p = &policies[0];
        assert_eq!(p.credential.kind, CredentialKind::OauthClient);
        assert_eq!(p.schedule.trigger, Trigger::Every(Duration::from_secs(90 * 86_400)));
        assert_eq!(p.revoke.grace, Duration::ZERO);
        assert_eq!(p.destinations.len(), 2);
        assert_eq!(p.destinations[0].label(), "vault:secret/toktra/ci");
    }

    #[test]
    fn rejects_with_file_line_and_field() {
        let cases = [
            (GOOD.replace("every: 90d", "every: 90days"), "p.yaml:4:3: schedule.every: duration `90days` has unknown unit"),
            (GOOD.replace("every: 90d", "every: 30m"), "schedule.every: `30m` is shorter than the minimum of 1h"),
            (GOOD.replace("kind: oauth_client", "kind: password"), "p.yaml:2:"),
            (GOOD.replace("name: ci\n", "name: ci\ncolour: red\n"), "unknown field `colour`"),
            (GOOD.replace("  - vault: { mount: secret, path: toktra/ci }\n  - aws_secrets_manager: { secret_id: prod/ci, create: true }\n", "  []\n").replace("destinations:\n  []", "destinations: []"), "destinations: at least one destination is required"),
            (GOOD.replace("grace: 0s", "grace: 100d"), "revoke.grace: grace `100d` is longer than the rotation interval `90d`"),
            (GOOD.replace("name: ci\n", "name: Bad_Name\n"), "p.yaml:1:1: name: `Bad_Name` is not a valid name"),
        ];
        for (text, expected) in cases {
            let (_, problems) = parse(&text);
            let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            assert!(
                shown.iter().any(|s| s.contains(expected)),
                "expected `{expected}` in {shown:#?}\n--- input ---\n{text}"
            );
        }
    }

    #[test]
    fn rejects_duplicates_across_documents() {
        let text = format!("{GOOD}---\n{GOOD}");
        let (_, problems) = parse(&text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .to_string()
                .starts_with("p.yaml:11:1: name: duplicate policy name `ci`, first defined at p.yaml:1:1"),
            "{}",
            problems[0]
        );
        let other = GOOD.replace("name: ci\n", "name: other\n");
        let (_, problems) = parse(&format!("{GOOD}---\n{other}"));
        assert!(problems.iter().any(|p| p.message.contains("also written by policy `ci`")), "{problems:?}");
    }
}
