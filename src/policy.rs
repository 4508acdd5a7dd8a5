//! Rotation policies: YAML files under the policy directory, parsed strictly into the raw
//! [`Document`] form (which also generates the JSON Schema), then validated into [`Policy`] values
//! the rest of the program trusts. A policy set is accepted or rejected as a whole: loading
//! returns every problem it found, each as `file:line:col: field.path: message`, and the caller
//! runs nothing when there is one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::duration;
use crate::schedule::{Cron, Schedule, Trigger, Window};

/// What a policy rotates at Toktra.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// An OAuth client (client_credentials). Toktra cannot regenerate a client's secret, so each
    /// rotation creates a new client: consumers get a new `client_id` with the new secret.
    OauthClient,
    /// An API key.
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

    /// Whether Toktra lets this kind carry scopes. Both do, per the vendor contract
    /// (toktra-api.md); the check stays so that a kind without scopes is one line to add.
    pub fn has_scopes(self) -> bool {
        match self {
            CredentialKind::OauthClient | CredentialKind::ApiKey => true,
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    pub destinations: Vec<DestinationSpec>,
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

/// One destination: a map with exactly one key naming its kind, e.g.
/// `- vault: { mount: secret, path: toktra/ci }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct DestinationSpec {
    /// AWS Secrets Manager.
    pub aws_secrets_manager: Option<AwsDestination>,
    /// Vault or OpenBao KV v2.
    pub vault: Option<VaultDestination>,
    /// A local JSON file.
    pub file: Option<FileDestination>,
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

/// Where a policy's credential is written. Adding a destination kind is one variant here, one
/// field in [`DestinationSpec`], and one file under `store/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    AwsSecretsManager(AwsDestination),
    Vault(VaultDestination),
    File(FileDestination),
}

impl Destination {
    /// A short, secret-free label such as `vault:secret/toktra/ci`. The engine stores it in the
    /// journal and compares it with the policy's on resume, so it is built from the canonical
    /// form [`validate`] gives destinations (absolute file paths, Vault paths without stray
    /// slashes): the same policy loaded through `policies`, `./policies/` or an absolute path
    /// has the same labels.
    pub fn label(&self) -> String {
        match self {
            Destination::AwsSecretsManager(d) => match &d.region {
                Some(region) => format!("aws:{region}:{}", d.secret_id),
                None => format!("aws:{}", d.secret_id),
            },
            Destination::Vault(d) => format!("vault:{}/{}", vault_path(&d.mount), vault_path(&d.path)),
            Destination::File(d) => format!("file:{}", d.path.display()),
        }
    }

    /// Every place the destination writes, to reject two destinations writing one place.
    /// A destination without `region` is placed in `default_region` (`None`: the default, which
    /// only the AWS configuration knows, so it equals only itself).
    fn places(&self, default_region: Option<&str>) -> Vec<Place> {
        match self {
            Destination::AwsSecretsManager(d) => {
                let (region, account, name) = match secret_arn(&d.secret_id) {
                    Some(Ok(arn)) => (
                        Some(arn.region.to_string()),
                        Some(format!("{}:{}", arn.partition, arn.account)),
                        arn.resource.to_string(),
                    ),
                    _ => (d.region.clone().or(default_region.map(str::to_string)), None, d.secret_id.clone()),
                };
                vec![Place::Aws { region, account, name }]
            }
            Destination::Vault(d) => {
                let mount = vault_path(&d.mount);
                vec![
                    Place::Exact(format!("vault:{mount}/{}", vault_path(&d.path))),
                    Place::Exact(format!("vault:{mount}/{}", d.staging_path())),
                ]
            }
            // The staged and the replaced value wait beside the file.
            Destination::File(d) => ["", ".pending", ".previous"]
                .iter()
                .map(|suffix| {
                    let mut path = d.path.clone().into_os_string();
                    path.push(suffix);
                    Place::Exact(format!("file:{}", PathBuf::from(path).display()))
                })
                .collect(),
        }
    }
}

/// A place a destination writes, canonical (see [`Destination::places`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// A file or Vault path: the same text is the same place.
    Exact(String),
    /// An AWS secret. AWS accepts a name or an ARN, and they cannot be matched exactly offline:
    /// a name has no account, and an ARN's name is followed by `-` and 6 random characters
    /// (or not, in a partial ARN) while a name may itself end like that.
    Aws {
        /// From the ARN, else `region`, else the default region when known.
        region: Option<String>,
        /// `partition:account` of an ARN; `None` for a name (the caller's account).
        account: Option<String>,
        /// The name, or the ARN's resource (`name-XXXXXX`, or `name` in a partial ARN).
        name: String,
    },
}

/// How two places overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overlap {
    /// Certainly one place.
    Same,
    /// Possibly one AWS secret: a name and an ARN, or a partial and a full ARN, naming it.
    Maybe,
}

impl Place {
    /// Keys under which overlapping places meet: equal text, or a region and a secret name.
    fn keys(&self) -> Vec<String> {
        match self {
            Place::Exact(text) => vec![text.clone()],
            Place::Aws { region, account, name } => {
                let region = region.as_deref().unwrap_or("(default)");
                let mut keys = vec![format!("aws:{region}:{name}")];
                if let Some(bare) = account.as_ref().and(without_random_suffix(name)) {
                    keys.push(format!("aws:{region}:{bare}"));
                }
                keys
            }
        }
    }

    fn overlap(&self, other: &Place) -> Option<Overlap> {
        match (self, other) {
            (Place::Exact(a), Place::Exact(b)) => (a == b).then_some(Overlap::Same),
            (Place::Aws { region: ra, account: aa, name: na }, Place::Aws { region: rb, account: ab, name: nb })
                if ra == rb =>
            {
                let suffixed = |full: &str, bare: &str| without_random_suffix(full) == Some(bare);
                match (aa, ab) {
                    (None, None) => (na == nb).then_some(Overlap::Same),
                    (Some(aa), Some(ab)) if aa != ab => None,
                    (Some(_), Some(_)) if na == nb => Some(Overlap::Same),
                    (Some(_), Some(_)) => (suffixed(na, nb) || suffixed(nb, na)).then_some(Overlap::Maybe),
                    // A name is in the caller's account, which only AWS knows: possibly the ARN's.
                    (Some(_), None) => (na == nb || suffixed(na, nb)).then_some(Overlap::Maybe),
                    (None, Some(_)) => (na == nb || suffixed(nb, na)).then_some(Overlap::Maybe),
                }
            }
            _ => None,
        }
    }
}

/// The parts of a Secrets Manager secret ARN, `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:RESOURCE`.
struct SecretArn<'a> {
    partition: &'a str,
    region: &'a str,
    account: &'a str,
    resource: &'a str,
}

/// `None` when `secret_id` is a name; an error when it starts like an ARN (a secret name cannot
/// contain `:`) but is not a secret's.
fn secret_arn(secret_id: &str) -> Option<Result<SecretArn<'_>, String>> {
    let rest = secret_id.strip_prefix("arn:")?;
    let parts: Vec<&str> = rest.splitn(6, ':').collect();
    Some(match parts[..] {
        [partition, "secretsmanager", region, account, "secret", resource]
            if [partition, region, account, resource].iter().all(|p| !p.is_empty()) =>
        {
            Ok(SecretArn { partition, region, account, resource })
        }
        _ => Err(format!(
            "`{secret_id}` is not a Secrets Manager secret ARN (`arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX`)"
        )),
    })
}

/// The name an ARN's resource has without the `-` and 6 alphanumerics AWS appends, if it ends
/// like that. Only a candidate: a partial ARN has no suffix and a name may end the same way.
fn without_random_suffix(resource: &str) -> Option<&str> {
    let (name, suffix) = resource.rsplit_once('-')?;
    (!name.is_empty() && suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(name)
}

/// A Vault mount or path without empty segments: `/toktra//ci/` is `toktra/ci`, as Vault routes
/// it.
/// The canonical form of a destination label as an earlier version may have recorded it in the
/// journal (file paths as spelled, Vault paths with stray slashes), so rotations in flight across
/// an upgrade still compare equal to their policy's [`Destination::label`].
pub fn canonical_label(label: &str) -> String {
    if let Some(path) = label.strip_prefix("file:") {
        format!("file:{}", canonical_file(Path::new(""), Path::new(path)).display())
    } else if let Some(path) = label.strip_prefix("vault:") {
        format!("vault:{}", vault_path(path))
    } else {
        label.to_string()
    }
}

fn vault_path(text: &str) -> String {
    text.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/")
}

/// The file a `path` given in a policy file under `base` names, as the file destination writes
/// it: absolute, and independent of how the policy directory was spelled (`policies`,
/// `./policies/`, absolute, through a symlink). The longest existing ancestor of its directory
/// is resolved by the filesystem (`..` after a symlink goes where the kernel goes); the rest,
/// which does not exist yet, lexically (as `create_dir_all` would create it). The file itself
/// is not resolved: promotion renames over it, replacing a symlink rather than its target.
fn canonical_file(base: &Path, path: &Path) -> PathBuf {
    let joined = base.join(path);
    let absolute = match joined.is_absolute() {
        true => joined,
        false => std::env::current_dir().map(|cwd| cwd.join(&joined)).unwrap_or(joined),
    };
    let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name()) else { return absolute };
    let components: Vec<std::path::Component<'_>> = dir.components().collect();
    let mut resolved = PathBuf::new();
    let mut rest = &components[..];
    for end in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..end].iter().collect();
        if prefix.symlink_metadata().is_ok()
            && let Ok(real) = std::fs::canonicalize(&prefix)
        {
            resolved = real;
            rest = &components[end..];
            break;
        }
    }
    if resolved.as_os_str().is_empty() {
        resolved = components.iter().take_while(|c| matches!(c, std::path::Component::RootDir)).collect();
    }
    for component in rest {
        match component {
            std::path::Component::Normal(part) => resolved.push(part),
            std::path::Component::ParentDir => {
                resolved.pop();
            }
            _ => {}
        }
    }
    resolved.join(name)
}

impl VaultDestination {
    /// Where the pending value waits: `staging_path`, else `_rotator/staging/<path>`.
    pub fn staging_path(&self) -> String {
        match &self.staging_path {
            Some(p) => vault_path(p),
            None => format!("_rotator/staging/{}", vault_path(&self.path)),
        }
    }
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
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
    let mut policies = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => parse_file(file, &text, &mut policies, &mut problems),
            Err(e) => problems.push(file_problem(file, format!("cannot read file: {e}"))),
        }
    }
    check_set(&policies, &mut problems);
    if problems.is_empty() { Ok(policies) } else { Err(Invalid(problems)) }
}

/// Policy files under `dir`. Hidden entries are skipped: a Kubernetes ConfigMap mount holds
/// every file twice more under `..data/` and `..<timestamp>/`.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
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

/// Parses one file's text (one or more YAML documents) into policies, adding problems.
pub fn parse_file(file: &Path, text: &str, policies: &mut Vec<Policy>, problems: &mut Vec<Problem>) {
    let starts = document_starts(text);
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let start_line = starts.get(index).copied().unwrap_or(1);
        let cx = Context { file, doc_text: document_text(text, &starts, index), start_line };
        let value = match yaml_serde::Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                // A syntax error: the deserializer cannot go on with this file.
                let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((start_line, 1));
                problems.push(Problem {
                    location: Location { file: file.to_path_buf(), line, column },
                    field: String::new(),
                    message: clean_yaml_message(&e.to_string()),
                });
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        match Document::deserialize(&value) {
            Ok(doc) => {
                if let Some(policy) = validate(doc, &cx, problems) {
                    policies.push(policy);
                }
            }
            Err(_) => diagnose(&value, &cx, problems),
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

/// Reports every structural problem of a document that did not parse, one per field (serde
/// stops at the first error, so each top-level field and destination is checked on its own).
fn diagnose(value: &yaml_serde::Value, cx: &Context<'_>, problems: &mut Vec<Problem>) {
    let Some(map) = value.as_mapping() else {
        cx.problem(problems, "", "a policy is a mapping with `name`, `credential`, `schedule` and `destinations`");
        return;
    };
    let mut seen = Vec::new();
    for (key, item) in map {
        let Some(key) = key.as_str() else {
            cx.problem(problems, "", format!("a key must be a string, not {key:?}"));
            continue;
        };
        seen.push(key.to_string());
        let check = |result: Result<(), yaml_serde::Error>, field: &str, problems: &mut Vec<Problem>| {
            if let Err(e) = result {
                let message = clean_yaml_message(&e.to_string());
                // `unknown field `x`` inside a section: point at `x`.
                let inner = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next());
                let path = match inner {
                    Some(name) => format!("{field}.{name}"),
                    None => field.to_string(),
                };
                cx.problem_at(problems, &path, field, message);
            }
        };
        let ok = |r: Result<serde::de::IgnoredAny, yaml_serde::Error>| r.map(|_| ());
        match key {
            "name" => check(String::deserialize(item).map(|_| ()), key, problems),
            "description" => check(Option::<String>::deserialize(item).map(|_| ()), key, problems),
            "labels" => check(BTreeMap::<String, String>::deserialize(item).map(|_| ()), key, problems),
            "credential" => check(CredentialSpec::deserialize(item).map(|_| ()), key, problems),
            "schedule" => check(ScheduleSpec::deserialize(item).map(|_| ()), key, problems),
            "revoke" => check(RevokeSpec::deserialize(item).map(|_| ()), key, problems),
            "notify" => check(Vec::<String>::deserialize(item).map(|_| ()), key, problems),
            "destinations" => match item.as_sequence() {
                Some(items) => {
                    for (i, d) in items.iter().enumerate() {
                        check(DestinationSpec::deserialize(d).map(|_| ()), &format!("destinations[{i}]"), problems);
                    }
                }
                None => check(
                    ok(serde::de::IgnoredAny::deserialize(item))
                        .and(Err(serde::de::Error::custom("expected a list of destinations"))),
                    key,
                    problems,
                ),
            },
            other => cx.problem(
                problems,
                other,
                format!(
                    "unknown field `{other}`, expected one of {}",
                    FIELDS.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
                ),
            ),
        }
    }
    for required in ["name", "credential", "schedule", "destinations"] {
        if !seen.iter().any(|s| s == required) {
            cx.problem(problems, "", format!("missing field `{required}`"));
        }
    }
}

/// Top-level fields of a policy, as [`diagnose`] knows them (a test keeps this in step with
/// [`Document`] and the JSON Schema).
pub const FIELDS: [&str; 8] =
    ["name", "description", "labels", "credential", "schedule", "destinations", "revoke", "notify"];

/// 1-based line numbers where each YAML document begins, one per document yaml_serde yields:
/// every `---` starts one, and the text before the first `---` is one if it has content.
fn document_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut content_before_marker = false;
    let mut marker_seen = false;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            if !marker_seen && content_before_marker {
                starts.push(1);
            }
            marker_seen = true;
            starts.push(i + 2);
        } else if !marker_seen && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            content_before_marker = true;
        }
    }
    if !marker_seen {
        starts.push(1);
    }
    starts
}

fn document_text<'a>(text: &'a str, starts: &[usize], index: usize) -> Vec<&'a str> {
    let first = starts.get(index).copied().unwrap_or(1).saturating_sub(1);
    let end = starts.get(index + 1).map(|s| s.saturating_sub(2)).unwrap_or(usize::MAX);
    text.lines().enumerate().filter(|(i, _)| *i >= first && *i < end).map(|(_, l)| l).collect()
}

/// Where a document came from, to point problems at the right line.
struct Context<'a> {
    file: &'a Path,
    doc_text: Vec<&'a str>,
    start_line: usize,
}

impl Context<'_> {
    /// Finds the line and column of a dotted field path (`destinations[1].vault.path`): each key
    /// is searched after the line of the one before it, and `[i]` picks the i-th list item.
    /// yaml_serde gives no spans for values that parsed, so this searches the text; it is exact
    /// for the block and flow styles people write, and falls back to the nearest parent.
    fn locate(&self, field: &str) -> Location {
        let mut from = 0;
        let mut found: Option<(usize, usize)> = None;
        for (depth, segment) in field.split('.').filter(|s| !s.is_empty()).enumerate() {
            let (key, index) = match segment.split_once('[') {
                Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
                None => (segment, None),
            };
            let pattern = format!("{key}:");
            let hit = self.doc_text.iter().enumerate().skip(from).find_map(|(i, line)| {
                let code = line.split(" #").next().unwrap_or(line);
                // A top-level key starts its line; a nested one follows a space, `{`, `,` or `-`
                // (so `path:` inside `staging_path:` does not count).
                let at = code.match_indices(&pattern).map(|(at, _)| at).find(|&at| match depth {
                    0 => at == 0,
                    _ => at > 0 && matches!(code.as_bytes()[at - 1], b' ' | b'{' | b',' | b'-' | b'\t'),
                })?;
                Some((i, at + 1))
            });
            let Some((line, column)) = hit else { break };
            found = Some((line, column));
            from = line;
            if let Some(index) = index {
                // The i-th `- ` item after the key (on the key's line for flow lists: stay).
                let items: Vec<(usize, usize)> = self
                    .doc_text
                    .iter()
                    .enumerate()
                    .skip(line + 1)
                    .take_while(|(_, l)| l.trim().is_empty() || l.starts_with([' ', '\t', '-']))
                    .filter(|&(_, l)| l.trim_start().starts_with("- "))
                    .map(|(i, l)| (i, l.len() - l.trim_start().len() + 3))
                    .collect();
                if let Some(&(item_line, item_column)) = items.get(index) {
                    found = Some((item_line, item_column));
                    from = item_line;
                }
            }
        }
        let (line, column) = found.map(|(i, c)| (self.start_line + i, c)).unwrap_or((self.start_line, 1));
        Location { file: self.file.to_path_buf(), line, column }
    }

    fn problem(&self, problems: &mut Vec<Problem>, field: &str, message: impl Into<String>) {
        self.problem_at(problems, field, field, message);
    }

    /// A problem located at `at` but reported as `field`.
    fn problem_at(&self, problems: &mut Vec<Problem>, at: &str, field: &str, message: impl Into<String>) {
        problems.push(Problem { location: self.locate(at), field: field.to_string(), message: message.into() });
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn valid_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// The shortest gap between consecutive firings of `cron` (over its next 60 firings from a
/// fixed date, so validation does not depend on the clock), to compare with `grace`.
fn shortest_gap(cron: &Cron, tz: chrono_tz::Tz) -> Option<Duration> {
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

fn validate(doc: Document, cx: &Context<'_>, problems: &mut Vec<Problem>) -> Option<Policy> {
    let before = problems.len();
    if !valid_name(&doc.name) {
        cx.problem(
            problems,
            "name",
            format!(
                "`{}` is not a valid name: use 1-63 characters of a-z, 0-9 and `-`, not starting or ending with `-`",
                doc.name
            ),
        );
    }
    for (key, value) in &doc.labels {
        if !valid_label(key) || !valid_label(value) {
            cx.problem(
                problems,
                &format!("labels.{key}"),
                format!("`{key}: {value}`: keys and values are 1-63 characters of letters, digits, `-`, `_`, `.`, `/`"),
            );
        }
    }
    if doc.credential.name.trim().is_empty() {
        cx.problem(problems, "credential.name", "must not be empty");
    } else if doc.credential.name.len() > 100 {
        cx.problem(problems, "credential.name", "must be at most 100 characters (minted names add a rotation ID)");
    }
    if !doc.credential.scopes.is_empty() && !doc.credential.kind.has_scopes() {
        cx.problem(problems, "credential.scopes", format!("a {} has no scopes", doc.credential.kind));
    }
    for (i, scope) in doc.credential.scopes.iter().enumerate() {
        if scope.trim().is_empty() || scope.contains(char::is_whitespace) {
            cx.problem(
                problems,
                &format!("credential.scopes[{i}]"),
                format!("`{scope}` is not a scope: one word such as `usage:read`"),
            );
        }
    }
    let mut duration_field = |field: &str, text: Option<&str>| -> Option<Duration> {
        match duration::parse(text?) {
            Ok(d) if d > MAX_DURATION => {
                cx.problem(
                    problems,
                    field,
                    format!("`{}` is longer than the maximum of 10 years", text.unwrap_or_default()),
                );
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                cx.problem(problems, field, message);
                None
            }
        }
    };
    let every = duration_field("schedule.every", doc.schedule.every.as_deref());
    let jitter = duration_field("schedule.jitter", doc.schedule.jitter.as_deref());
    let grace = duration_field("revoke.grace", doc.revoke.grace.as_deref());
    let require_idle = duration_field("revoke.require_idle", doc.revoke.require_idle.as_deref());
    let window_duration =
        doc.schedule.window.as_ref().and_then(|w| duration_field("schedule.window.duration", Some(&w.duration)));

    let timezone = match doc.schedule.timezone.as_deref() {
        None => Some(chrono_tz::Tz::UTC),
        Some(name) => match name.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                cx.problem(
                    problems,
                    "schedule.timezone",
                    format!("`{name}` is not an IANA time zone (e.g. `Europe/Berlin`, `UTC`)"),
                );
                None
            }
        },
    };
    let trigger = match (&doc.schedule.every, &doc.schedule.cron) {
        (Some(_), Some(_)) => {
            cx.problem(problems, "schedule", "give exactly one of `every` and `cron`, not both");
            None
        }
        (None, None) => {
            cx.problem(
                problems,
                "schedule",
                "give exactly one of `every` (e.g. `90d`) and `cron` (e.g. `0 3 * * SUN`)",
            );
            None
        }
        (Some(_), None) => match every {
            Some(every) if every < MIN_INTERVAL => {
                cx.problem(
                    problems,
                    "schedule.every",
                    format!("`{}` is shorter than the minimum of 1h", duration::format(every)),
                );
                None
            }
            Some(every) => Some(Trigger::Every(every)),
            None => None,
        },
        (None, Some(text)) => match Cron::parse(text) {
            Ok(cron) => Some(Trigger::Cron(cron)),
            Err(message) => {
                cx.problem(problems, "schedule.cron", message);
                None
            }
        },
    };
    // The interval a grace is compared with: `every`, or the shortest gap between cron firings.
    let interval = match (&trigger, timezone) {
        (Some(Trigger::Every(every)), _) => Some(*every),
        (Some(Trigger::Cron(cron)), Some(tz)) => {
            let gap = shortest_gap(cron, tz);
            if let Some(gap) = gap.filter(|g| *g < MIN_INTERVAL) {
                cx.problem(
                    problems,
                    "schedule.cron",
                    format!(
                        "`{}` fires every {}; rotations must be at least 1h apart",
                        cron.text(),
                        duration::format(gap)
                    ),
                );
            }
            gap
        }
        _ => None,
    };
    if let Some(interval) = interval {
        // The default grace counts too: `every: 1h` without a `revoke` section would keep a
        // day's worth of credentials alive.
        let (effective, field, note) = match doc.revoke.grace.is_some() {
            true => (grace, "revoke.grace", ""),
            false => (Some(DEFAULT_GRACE), "schedule", " (the default); set `revoke.grace`"),
        };
        if let Some(grace) = effective.filter(|g| *g > interval) {
            cx.problem(
                problems,
                field,
                format!(
                    "grace `{}`{note} is longer than the rotation interval `{}`: credentials would pile up",
                    duration::format(grace),
                    duration::format(interval)
                ),
            );
        }
    }
    if let (Some(interval), Some(jitter)) = (interval, jitter)
        && jitter >= interval
    {
        cx.problem(
            problems,
            "schedule.jitter",
            format!(
                "jitter `{}` must be shorter than the rotation interval `{}`",
                duration::format(jitter),
                duration::format(interval)
            ),
        );
    }
    let window = match (&doc.schedule.window, window_duration) {
        (Some(w), Some(length)) => {
            let days = w.days.clone();
            if days.as_ref().is_some_and(|d| d.is_empty()) {
                cx.problem(
                    problems,
                    "schedule.window.days",
                    "an empty list of days never opens; leave `days` out for every day",
                );
                None
            } else {
                match Window::parse(&days.unwrap_or_default(), &w.start, length) {
                    Ok(window) => Some(window),
                    Err((field, message)) => {
                        let field = format!("schedule.window.{field}");
                        cx.problem_at(problems, field.split('[').next().unwrap_or(&field), &field, message);
                        None
                    }
                }
            }
        }
        _ => None,
    };
    if doc.destinations.is_empty() {
        cx.problem(problems, "destinations", "at least one destination is required");
    }
    // Relative file paths are relative to the policy file's directory.
    let base = cx.file.parent().unwrap_or(Path::new("."));
    let mut destinations: Vec<Destination> = Vec::new();
    for (i, spec) in doc.destinations.into_iter().enumerate() {
        let field = format!("destinations[{i}]");
        let mut kinds = Vec::new();
        if let Some(d) = spec.aws_secrets_manager {
            kinds.push(Destination::AwsSecretsManager(d));
        }
        if let Some(d) = spec.vault {
            kinds.push(Destination::Vault(d));
        }
        if let Some(d) = spec.file {
            kinds.push(Destination::File(d));
        }
        let destination = match kinds.len() {
            1 => kinds.remove(0),
            0 => {
                cx.problem(problems, &field, "a destination needs one of `aws_secrets_manager`, `vault`, `file`");
                continue;
            }
            _ => {
                cx.problem(problems, &field, "a destination names exactly one kind; write each as its own list item");
                continue;
            }
        };
        match &destination {
            Destination::AwsSecretsManager(d) if d.secret_id.trim().is_empty() => {
                cx.problem(problems, &format!("{field}.aws_secrets_manager.secret_id"), "must not be empty")
            }
            Destination::Vault(d) if d.mount.trim_matches('/').is_empty() => {
                cx.problem(problems, &format!("{field}.vault.mount"), "must not be empty")
            }
            Destination::Vault(d) if d.path.trim_matches('/').is_empty() => {
                cx.problem(problems, &format!("{field}.vault.path"), "must not be empty")
            }
            Destination::Vault(d) if d.staging_path() == d.path.trim_matches('/') || d.staging_path().is_empty() => cx
                .problem(
                    problems,
                    &format!("{field}.vault.staging_path"),
                    "must be a path of its own: consumers would read the unverified value",
                ),
            Destination::File(d) if d.path.as_os_str().is_empty() => {
                cx.problem(problems, &format!("{field}.file.path"), "must not be empty")
            }
            Destination::File(d) if d.path.file_name().is_none() => cx.problem(
                problems,
                &format!("{field}.file.path"),
                format!("`{}` names a directory, not a file", d.path.display()),
            ),
            Destination::AwsSecretsManager(d) => match secret_arn(&d.secret_id) {
                Some(Err(message)) => cx.problem(problems, &format!("{field}.aws_secrets_manager.secret_id"), message),
                Some(Ok(arn)) if d.region.as_deref().is_some_and(|r| r != arn.region) => cx.problem(
                    problems,
                    &format!("{field}.aws_secrets_manager.region"),
                    format!(
                        "`{}` is not the region of the ARN in `secret_id`, `{}`",
                        d.region.as_deref().unwrap_or_default(),
                        arn.region
                    ),
                ),
                _ => {}
            },
            _ => {}
        }
        // The canonical form every later comparison and the journal's labels use.
        let destination = match destination {
            Destination::Vault(d) => Destination::Vault(VaultDestination {
                mount: vault_path(&d.mount),
                path: vault_path(&d.path),
                staging_path: d.staging_path.as_deref().map(vault_path),
                ..d
            }),
            Destination::File(d) if d.path.file_name().is_some() => {
                Destination::File(FileDestination { path: canonical_file(base, &d.path) })
            }
            other => other,
        };
        if let Some((j, overlap)) = first_overlap(&destination, destinations.iter().enumerate(), None) {
            let other = destinations[j].label();
            let message = match overlap {
                Overlap::Same if other == destination.label() => format!("destination `{other}` is listed twice"),
                Overlap::Same => {
                    format!("destination `{}` is listed twice (as `{other}`, destinations[{j}])", destination.label())
                }
                Overlap::Maybe => format!(
                    "destination `{}` may be the same secret as `{other}` (destinations[{j}]): {MAYBE_SAME}",
                    destination.label()
                ),
            };
            cx.problem(problems, &field, message);
        }
        destinations.push(destination);
    }
    for (i, channel) in doc.notify.iter().enumerate() {
        if !valid_name(channel) {
            cx.problem(problems, &format!("notify[{i}]"), format!("`{channel}` is not a channel name (a-z, 0-9, `-`)"));
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(Policy {
        name: doc.name,
        description: doc.description,
        labels: doc.labels,
        credential: Credential { kind: doc.credential.kind, name: doc.credential.name, scopes: doc.credential.scopes },
        schedule: Schedule { trigger: trigger?, window, timezone: timezone?, jitter: jitter.unwrap_or_default() },
        destinations,
        revoke: Revoke { grace: grace.unwrap_or(DEFAULT_GRACE), require_idle },
        notify: doc.notify,
        source: cx.locate("name"),
    })
}

/// Checks that span policies: unique names, no destination written by two policies.
fn check_set(policies: &[Policy], problems: &mut Vec<Problem>) {
    let mut names: HashMap<&str, &Policy> = HashMap::new();
    let mut credentials: HashMap<(CredentialKind, &str), &Policy> = HashMap::new();
    let mut unique = Vec::new();
    for policy in policies {
        if let Some(first) = names.insert(&policy.name, policy) {
            problems.push(Problem {
                location: policy.source.clone(),
                field: "name".into(),
                message: format!("duplicate policy name `{}`, first defined at {}", policy.name, first.source),
            });
            continue;
        }
        // Mints are recognised by their name: two policies minting under one base name would
        // take each other's credentials for orphans.
        if let Some(first) = credentials.insert((policy.credential.kind, &policy.credential.name), policy) {
            problems.push(Problem {
                location: policy.source.clone(),
                field: "credential.name".into(),
                message: format!(
                    "{} `{}` is also the credential name of policy `{}` ({})",
                    policy.credential.kind, policy.credential.name, first.name, first.source
                ),
            });
        }
        unique.push(policy);
    }
    // Within one policy, `validate` reported it at the destination's own line.
    problems.extend(
        overlapping(&unique, None)
            .iter()
            .filter(|o| !std::ptr::eq(o.policy, o.other))
            .map(|o| overlap_problem(o, None)),
    );
}

/// The check `validate` cannot make offline: a destination without `region` is in the default
/// region, which only the AWS configuration knows. With those placed in `default_region`, no two
/// destinations of the set (of two policies, or of one) may write one secret. `plan` and
/// `rotate` call it before anything is opened, minted or written.
pub fn check_default_region(policies: &[Policy], default_region: Option<&str>) -> Result<(), Invalid> {
    let all: Vec<&Policy> = policies.iter().collect();
    let problems: Vec<Problem> =
        overlapping(&all, default_region).iter().map(|o| overlap_problem(o, default_region)).collect();
    if problems.is_empty() { Ok(()) } else { Err(Invalid(problems)) }
}

/// Whether [`check_default_region`] has anything to decide for this (valid) set: some default
/// region named in it would make two destinations one secret. Without such a pair the AWS
/// configuration need not be read (a file-only or Vault-only run never touches it).
pub fn depends_on_default_region(policies: &[Policy]) -> bool {
    let all: Vec<&Policy> = policies.iter().collect();
    let regions: std::collections::BTreeSet<String> = all
        .iter()
        .flat_map(|p| &p.destinations)
        .flat_map(|d| d.places(None))
        .filter_map(|place| match place {
            Place::Aws { region, .. } => region,
            Place::Exact(_) => None,
        })
        .collect();
    regions.iter().any(|region| !overlapping(&all, Some(region)).is_empty())
}

/// Why a name and an ARN (or a partial and a full ARN) are refused as possibly one secret.
const MAYBE_SAME: &str = "a secret name is in the caller's account, an ARN names the secret by its name followed by \
    `-` and 6 random characters (none in a partial ARN), and a name may itself end like that; if they are different \
    secrets, give both as full ARNs";

/// A destination writing a place an earlier destination (of an earlier policy, or earlier in
/// the same one) writes.
struct Overlapping<'a> {
    policy: &'a Policy,
    index: usize,
    other: &'a Policy,
    other_index: usize,
    overlap: Overlap,
}

/// Every destination of `policies` that writes a place an earlier one writes, with AWS
/// destinations without `region` placed in `default_region`. Places meet by their keys, so a
/// set of 10,000 policies is not compared pairwise.
fn overlapping<'a>(policies: &[&'a Policy], default_region: Option<&str>) -> Vec<Overlapping<'a>> {
    let mut seen: HashMap<String, Vec<(&'a Policy, usize, Place)>> = HashMap::new();
    let mut found = Vec::new();
    for &policy in policies {
        for (index, destination) in policy.destinations.iter().enumerate() {
            let places = destination.places(default_region);
            let mut best: Option<Overlapping<'a>> = None;
            for place in &places {
                for key in place.keys() {
                    for (other, other_index, theirs) in seen.get(&key).into_iter().flatten() {
                        if let Some(overlap) = place.overlap(theirs)
                            && best.as_ref().is_none_or(|b| b.overlap == Overlap::Maybe && overlap == Overlap::Same)
                        {
                            best = Some(Overlapping { policy, index, other, other_index: *other_index, overlap });
                        }
                    }
                }
            }
            found.extend(best);
            for place in places {
                for key in place.keys() {
                    seen.entry(key).or_default().push((policy, index, place.clone()));
                }
            }
        }
    }
    found
}

/// An earlier destination of one policy writing a place `destination` writes (a certain
/// overlap before a possible one).
fn first_overlap<'a>(
    destination: &Destination,
    earlier: impl Iterator<Item = (usize, &'a Destination)>,
    default_region: Option<&str>,
) -> Option<(usize, Overlap)> {
    let places = destination.places(default_region);
    let mut found = None;
    for (j, other) in earlier {
        for theirs in other.places(default_region) {
            match places.iter().find_map(|ours| ours.overlap(&theirs)) {
                Some(Overlap::Same) => return Some((j, Overlap::Same)),
                Some(Overlap::Maybe) if found.is_none() => found = Some((j, Overlap::Maybe)),
                _ => {}
            }
        }
    }
    found
}

fn overlap_problem(o: &Overlapping<'_>, default_region: Option<&str>) -> Problem {
    let ours = o.policy.destinations[o.index].label();
    let theirs = o.other.destinations[o.other_index].label();
    let same_policy = std::ptr::eq(o.policy, o.other);
    let of = match same_policy {
        true => format!("destinations[{}]", o.other_index),
        false => format!("policy `{}` ({})", o.other.name, o.other.source),
    };
    let mut message = match default_region {
        Some(region) => format!("with the default region `{region}` (from the AWS configuration), "),
        None => String::new(),
    };
    message.push_str(&match (o.overlap, same_policy) {
        (Overlap::Same, true) => format!("destination `{ours}` is listed twice (as `{theirs}`, {of})"),
        (Overlap::Same, false) if ours == theirs => format!("destination `{ours}` is also written by {of}"),
        (Overlap::Same, false) => format!("destination `{ours}` is also written by {of} as `{theirs}`"),
        (Overlap::Maybe, _) => {
            format!("destination `{ours}` may be the same secret as `{theirs}` of {of}: {MAYBE_SAME}")
        }
    });
    Problem {
        location: o.policy.source.clone(),
        field: if same_policy { format!("destinations[{}]", o.index) } else { "destinations".into() },
        message,
    }
}

/// The JSON Schema of a policy document, as committed in `schema/policy.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Document);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// The policy reference in Markdown, generated from the JSON Schema (`docs/policy-reference.md`),
/// so the reference cannot drift from what the parser accepts.
pub fn reference_markdown() -> String {
    use serde_json::Value;
    let schema: Value = serde_json::from_str(&json_schema()).unwrap_or_default();
    let one_line = |v: &Value| v.as_str().unwrap_or_default().replace('\n', " ");
    let anchor = |name: &str| name.to_ascii_lowercase();
    fn type_of(v: &Value, anchor: &dyn Fn(&str) -> String) -> String {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or(r);
            return format!("[{name}](#{})", anchor(name));
        }
        if let Some(options) = v.get("anyOf").and_then(Value::as_array) {
            let types: Vec<String> = options
                .iter()
                .filter(|o| o.get("type") != Some(&Value::from("null")))
                .map(|o| type_of(o, anchor))
                .collect();
            return types.join(" or ");
        }
        if let Some(options) = v.get("oneOf").and_then(Value::as_array) {
            let consts: Vec<String> = options
                .iter()
                .filter_map(|o| o.get("const"))
                .map(|c| format!("`{}`", c.as_str().unwrap_or_default()))
                .collect();
            return format!("one of {}", consts.join(", "));
        }
        let base = match v.get("type") {
            Some(Value::Array(types)) => {
                types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect::<Vec<_>>().join(" or ")
            }
            Some(Value::String(t)) => t.clone(),
            _ => "any".into(),
        };
        match base.as_str() {
            "array" => format!("list of {}", v.get("items").map(|i| type_of(i, anchor)).unwrap_or_default()),
            "object" if v.get("additionalProperties").is_some_and(Value::is_object) => {
                format!("map of {}", type_of(&v["additionalProperties"], anchor))
            }
            _ => base,
        }
    }
    let section = |out: &mut String, title: &str, def: &Value| {
        out.push_str(&format!("## {title}\n\n{}\n\n", one_line(&def["description"])));
        if let Some(options) = def.get("oneOf").and_then(Value::as_array) {
            out.push_str("| value | meaning |\n| --- | --- |\n");
            for o in options {
                out.push_str(&format!(
                    "| `{}` | {} |\n",
                    o["const"].as_str().unwrap_or_default(),
                    one_line(&o["description"])
                ));
            }
            out.push('\n');
            return;
        }
        let required: Vec<&str> =
            def["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        out.push_str("| field | type | required | description |\n| --- | --- | --- | --- |\n");
        for (name, field) in def["properties"].as_object().into_iter().flatten() {
            let mut description = one_line(&field["description"]);
            if let Some(pattern) = field.get("pattern").and_then(Value::as_str) {
                description.push_str(&format!(" Pattern: `{pattern}`."));
            }
            if let Some(default) = field.get("default") {
                description.push_str(&format!(" Default: `{default}`."));
            }
            out.push_str(&format!(
                "| `{name}` | {} | {} | {} |\n",
                type_of(field, &anchor),
                if required.contains(&name.as_str()) { "yes" } else { "no" },
                description.trim()
            ));
        }
        out.push('\n');
    };
    let mut out = String::from(
        "# Policy reference\n\nGenerated from the JSON Schema (`schema/policy.schema.json`) by `rotator schema --markdown`; \
         a test fails when this file is stale (regenerate with `UPDATE_EXPECT=1 cargo test --lib schema`).\n\n",
    );
    section(&mut out, "Policy", &schema);
    for (name, def) in schema["$defs"].as_object().into_iter().flatten() {
        section(&mut out, name, def);
    }
    out
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
        assert_eq!(p.schedule.timezone, chrono_tz::Tz::UTC);
        assert_eq!(p.revoke.grace, Duration::ZERO);
        assert_eq!(p.destinations.len(), 2);
        assert_eq!(p.destinations[0].label(), "vault:secret/toktra/ci");
    }

    /// One row per kind of bad input: the replacement applied to GOOD and the exact
    /// `file:line:col: field: message` prefix expected.
    #[test]
    fn rejects_with_file_line_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("every: 90d", "every: 90days", "p.yaml:4:3: schedule.every: duration `90days` has unknown unit `days`"),
            ("every: 90d", "every: 30m", "p.yaml:4:3: schedule.every: `30m` is shorter than the minimum of 1h"),
            ("every: 90d", "cron: \"0 3 * *\"", "p.yaml:4:3: schedule.cron: `0 3 * *` has 4 fields"),
            ("every: 90d", "cron: \"*/10 * * * *\"", "p.yaml:4:3: schedule.cron: `*/10 * * * *` fires every 10m"),
            (
                "every: 90d",
                "every: 90d\n  timezone: Mars/Olympus",
                "p.yaml:5:3: schedule.timezone: `Mars/Olympus` is not an IANA time zone",
            ),
            (
                "every: 90d",
                "every: 90d\n  window: { start: \"02:00\", duration: 0s }",
                "p.yaml:5:29: schedule.window.duration: a window of 0s never opens",
            ),
            (
                "every: 90d",
                "every: 90d\n  window: { days: [], start: \"02:00\", duration: 1h }",
                "p.yaml:5:13: schedule.window.days: an empty list of days never opens",
            ),
            (
                "every: 90d",
                "every: 90d\n  window: { days: [caturday], start: \"02:00\", duration: 1h }",
                "p.yaml:5:13: schedule.window.days[0]: `caturday` is not a day",
            ),
            (
                "every: 90d",
                "every: 90d\n  window: { start: \"2am\", duration: 1h }",
                "p.yaml:5:13: schedule.window.start: `2am` is not a time of day",
            ),
            (
                "every: 90d",
                "every: 90d\n  cron: \"0 3 * * *\"",
                "p.yaml:3:1: schedule: give exactly one of `every` and `cron`, not both",
            ),
            ("every: 90d", "jitter: 1h", "p.yaml:3:1: schedule: give exactly one of `every`"),
            (
                "grace: 0s",
                "grace: 100d",
                "p.yaml:9:3: revoke.grace: grace `100d` is longer than the rotation interval `90d`",
            ),
            (
                "grace: 0s",
                "grace: 0s\n  require_idle: soon",
                "p.yaml:10:3: revoke.require_idle: malformed duration `soon`",
            ),
            ("name: ci\n", "name: Bad_Name\n", "p.yaml:1:1: name: `Bad_Name` is not a valid name"),
            (
                "name: ci\n",
                "name: ci\nlabels: { \"team=x\": a }\n",
                "p.yaml:2:1: labels.team=x: `team=x: a`: keys and values are",
            ),
            (
                "kind: oauth_client",
                "kind: password",
                "p.yaml:2:1: credential: unknown variant `password`, expected `oauth_client` or `api_key`",
            ),
            (
                "name: ci\n",
                "name: ci\ncolour: red\n",
                "p.yaml:2:1: colour: unknown field `colour`, expected one of `name`",
            ),
            ("  grace: 0s", "  grace: 0s\n  later: 1d", "p.yaml:10:3: revoke: unknown field `later`"),
            (
                "  - vault: { mount: secret, path: toktra/ci }\n",
                "  - s3: { bucket: b }\n",
                "p.yaml:6:5: destinations[0]: unknown field `s3`",
            ),
            (
                "  - vault: { mount: secret, path: toktra/ci }\n",
                "  - vault: { mount: secret, path: toktra/ci, staging_path: toktra/ci }\n",
                "p.yaml:6:46: destinations[0].vault.staging_path: must be a path of its own",
            ),
            (
                "  - vault: { mount: secret, path: toktra/ci }\n",
                "  - {}\n",
                "p.yaml:6:5: destinations[0]: a destination needs one of",
            ),
            (
                "  - vault: { mount: secret, path: toktra/ci }\n  - aws_secrets_manager: { secret_id: prod/ci, create: true }\n",
                "  []\n",
                "p.yaml:5:1: destinations: at least one destination is required",
            ),
            (
                "  - aws_secrets_manager: { secret_id: prod/ci, create: true }\n",
                "  - vault: { mount: secret, path: toktra/ci }\n",
                "p.yaml:7:5: destinations[1]: destination `vault:secret/toktra/ci` is listed twice",
            ),
            (
                "  - aws_secrets_manager: { secret_id: prod/ci, create: true }\n",
                "  - vault: { mount: secret/, path: /toktra//ci/, create: true }\n",
                "p.yaml:7:5: destinations[1]: destination `vault:secret/toktra/ci` is listed twice",
            ),
            (
                "secret_id: prod/ci",
                "secret_id: 'arn:aws:s3:::ci'",
                "p.yaml:7:28: destinations[1].aws_secrets_manager.secret_id: `arn:aws:s3:::ci` is not a Secrets Manager secret ARN",
            ),
            (
                "secret_id: prod/ci",
                "secret_id: 'arn:aws:secretsmanager:eu-central-1:123456789012:secret:prod/ci-AbCdEf', region: us-east-1",
                "p.yaml:7:113: destinations[1].aws_secrets_manager.region: `us-east-1` is not the region of the ARN in `secret_id`, `eu-central-1`",
            ),
            (
                "  - aws_secrets_manager: { secret_id: prod/ci, create: true }\n",
                "  - file: { path: out/.. }\n",
                "p.yaml:7:13: destinations[1].file.path: `out/..` names a directory, not a file",
            ),
            (
                "scopes: [usage:read]",
                "scopes: [\"usage read\"]",
                "p.yaml:2:45: credential.scopes[0]: `usage read` is not a scope",
            ),
            ("every: 90d", "every: [90d]", "p.yaml:3:1: schedule: invalid type: sequence, expected a string"),
        ];
        for (from, to, expected) in cases {
            let text = GOOD.replace(from, to).replace("destinations:\n  []", "destinations: []");
            let (_, problems) = parse(&text);
            let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            assert!(
                shown.iter().any(|s| s.starts_with(expected)),
                "expected `{expected}` in {shown:#?}\n--- input ---\n{text}"
            );
        }
    }

    #[test]
    fn reports_every_problem_of_a_document_at_once() {
        let text = "name: Bad\ncolour: red\ncredential: { kind: api_key, name: x, extra: 1 }\nschedule: { every: 5m, timezone: Nowhere }\ndestinations: []\n";
        let (_, problems) = parse(text);
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        for expected in ["p.yaml:2:1: colour: unknown field", "p.yaml:3:39: credential: unknown field `extra`"] {
            assert!(shown.iter().any(|s| s.starts_with(expected)), "{expected} in {shown:#?}");
        }
        // Once structurally sound, every semantic problem is reported together.
        let text = "name: Bad\ncredential: { kind: api_key, name: x }\nschedule: { every: 5m, timezone: Nowhere }\ndestinations: []\nrevoke: { grace: 1x }\n";
        let (_, problems) = parse(text);
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["name", "revoke.grace", "schedule.timezone", "schedule.every", "destinations"],
            "{problems:#?}"
        );
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
        // A staging path is a destination too.
        let staged = other.replace("  - vault: { mount: secret, path: toktra/ci }\n  - aws_secrets_manager: { secret_id: prod/ci, create: true }\n", "  - vault: { mount: secret, path: elsewhere, staging_path: toktra/ci }\n");
        let (_, problems) = parse(&format!("{GOOD}---\n{staged}"));
        assert!(problems.iter().any(|p| p.message.contains("also written by policy `ci`")), "{problems:?}");
    }

    #[test]
    fn the_schema_and_the_diagnosis_know_the_same_fields() {
        let schema: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
        let mut properties: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        properties.sort();
        let mut fields = FIELDS.to_vec();
        fields.sort();
        assert_eq!(properties, fields);
        assert_eq!(schema["additionalProperties"], false);
    }

    /// The committed schema and reference are what the code generates; `UPDATE_EXPECT=1`
    /// rewrites them.
    #[test]
    fn schema_and_reference_are_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (file, generated) in
            [("schema/policy.schema.json", json_schema()), ("docs/policy-reference.md", reference_markdown())]
        {
            let path = root.join(file);
            if std::env::var("UPDATE_EXPECT").is_ok() {
                std::fs::write(&path, &generated).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == generated,
                "{file} is stale: run `UPDATE_EXPECT=1 cargo test --lib schema` and commit it"
            );
        }
    }

    #[test]
    fn review_regressions() {
        // The default grace counts against the interval.
        let hourly = GOOD.replace("every: 90d", "every: 1h").replace("revoke:\n  grace: 0s\n", "");
        let (_, problems) = parse(&hourly);
        assert!(
            problems.iter().any(|p| p.to_string().contains("schedule: grace `1d` (the default); set `revoke.grace`")),
            "{problems:#?}"
        );
        // Empty documents before the first policy keep line numbers right.
        let text = format!("---\n# nothing\n---\n{}", GOOD.replace("every: 90d", "every: 5m"));
        let (_, problems) = parse(&text);
        assert!(problems[0].to_string().starts_with("p.yaml:7:3: schedule.every"), "{problems:#?}");
        // A top-level key is found at the start of its line, not inside another.
        let text = format!(
            "credential: {{ kind: api_key, name: x }}\nname: Bad\n{}",
            GOOD.lines().skip(2).collect::<Vec<_>>().join("\n")
        );
        let (_, problems) = parse(&text);
        assert!(problems.iter().any(|p| p.to_string().starts_with("p.yaml:2:1: name:")), "{problems:#?}");
        // Two policies minting under one name.
        let other = GOOD
            .replace("name: ci\n", "name: other\n")
            .replace("path: toktra/ci", "path: toktra/other")
            .replace("prod/ci", "prod/other");
        let (_, problems) = parse(&format!("{GOOD}---\n{other}"));
        assert!(
            problems
                .iter()
                .any(|p| p.field == "credential.name" && p.message.contains("also the credential name of policy `ci`")),
            "{problems:#?}"
        );
        // Absurd durations are refused rather than overflowing later.
        let (_, problems) = parse(&GOOD.replace("every: 90d", "every: 14000000w"));
        assert!(problems.iter().any(|p| p.message.contains("longer than the maximum of 10 years")), "{problems:#?}");
    }

    /// Two policies, `a` with destination `a` and `b` with destination `b` (YAML flow maps).
    fn pair(a: &str, b: &str) -> (Vec<Policy>, Vec<Problem>) {
        let doc = |name: &str, destination: &str| {
            format!(
                "name: {name}\ncredential: {{ kind: api_key, name: {name} }}\nschedule: {{ every: 30d }}\ndestinations:\n  - {destination}\n"
            )
        };
        parse(&format!("{}---\n{}", doc("a", a), doc("b", b)))
    }

    /// One place under two spellings is one destination: written by two policies it is refused,
    /// naming both; places that differ stay valid.
    #[test]
    fn one_place_under_two_spellings() {
        let arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret";
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("file: { path: out/x.json }", "file: { path: ./out/x.json }", Some("is also written by policy `a`")),
            ("file: { path: x.json }", "file: { path: nowhere/../x.json }", Some("is also written by policy `a`")),
            ("file: { path: out//x.json }", "file: { path: out/./x.json }", Some("is also written by policy `a`")),
            ("file: { path: x.json.pending }", "file: { path: x.json }", Some("is also written by policy `a`")),
            ("file: { path: out/x.json }", "file: { path: out/../x.json }", None),
            ("file: { path: out/x.json }", "file: { path: out/x.json.bak }", None),
            (
                "vault: { mount: secret, path: t/x }",
                "vault: { mount: /secret/, path: t//x/ }",
                Some("`vault:secret/t/x` is also written by policy `a`"),
            ),
            (
                "vault: { mount: secret, path: t/x }",
                "vault: { mount: secret, path: t/y, staging_path: /t/x }",
                Some("`vault:secret/t/y` is also written by policy `a`"),
            ),
            ("vault: { mount: secret, path: t/x }", "vault: { mount: secret, path: t/x/y }", None),
            ("aws_secrets_manager: { secret_id: x }", "aws_secrets_manager: { secret_id: x }", Some("also written")),
            (
                "aws_secrets_manager: { secret_id: x, region: eu-central-1 }",
                "aws_secrets_manager: { secret_id: x }",
                None,
            ),
            (
                "aws_secrets_manager: { secret_id: x, region: eu-central-1 }",
                &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
                Some("may be the same secret as `aws:eu-central-1:x` of policy `a`"),
            ),
            // A partial ARN, and a name that itself ends like a suffix.
            (
                "aws_secrets_manager: { secret_id: x, region: eu-central-1 }",
                &format!("aws_secrets_manager: {{ secret_id: '{arn}:x' }}"),
                Some("may be the same secret"),
            ),
            (
                "aws_secrets_manager: { secret_id: x-abcdef, region: eu-central-1 }",
                &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-abcdef-Gh1jKl', region: eu-central-1 }}"),
                Some("may be the same secret"),
            ),
            (
                &format!("aws_secrets_manager: {{ secret_id: '{arn}:x' }}"),
                &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
                Some("may be the same secret"),
            ),
            (
                &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
                &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
                Some("is also written by policy `a`"),
            ),
            // Different: another region, another account, another incarnation, two names.
            (
                "aws_secrets_manager: { secret_id: x, region: eu-west-1 }",
                &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
                None,
            ),
            (
                &format!("aws_secrets_manager: {{ secret_id: '{}:x-AbCdEf' }}", arn.replace("1234", "4321")),
                &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
                None,
            ),
            (
                &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-GhIjKl' }}"),
                &format!("aws_secrets_manager: {{ secret_id: '{arn}:x-AbCdEf' }}"),
                None,
            ),
            (
                "aws_secrets_manager: { secret_id: x, region: eu-central-1 }",
                "aws_secrets_manager: { secret_id: x-AbCdEf, region: eu-central-1 }",
                None,
            ),
        ];
        for (a, b, expected) in cases {
            let (_, problems) = pair(a, b);
            let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            match expected {
                Some(expected) => assert!(
                    shown.len() == 1
                        && shown[0].starts_with("p.yaml:7:1: destinations: destination `")
                        && shown[0].contains(expected),
                    "expected `{expected}`\n  {a}\n  {b}\n{shown:#?}"
                ),
                None => assert!(shown.is_empty(), "valid:\n  {a}\n  {b}\n{shown:#?}"),
            }
        }
    }

    /// Validated destinations are canonical, so labels (which the journal compares on resume)
    /// do not depend on how the policy directory or the path was spelled.
    #[test]
    fn labels_are_canonical() {
        let (policies, problems) =
            pair("file: { path: ./out//x.json }", "vault: { mount: secret/, path: /t//x/, staging_path: s//x/ }");
        assert!(problems.is_empty(), "{problems:?}");
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(policies[0].destinations[0].label(), format!("file:{}", cwd.join("out/x.json").display()));
        assert_eq!(policies[1].destinations[0].label(), "vault:secret/t/x");
        let Destination::Vault(v) = &policies[1].destinations[0] else { panic!() };
        assert_eq!(v.staging_path(), "s/x");
        // The same file through another spelling of the policy file's directory.
        let mut again = Vec::new();
        let text = "name: a\ncredential: { kind: api_key, name: a }\nschedule: { every: 30d }\ndestinations:\n  - file: { path: out/x.json }\n";
        parse_file(&cwd.join("src/../p.yaml"), text, &mut again, &mut Vec::new());
        parse_file(Path::new("./src/../p.yaml"), text, &mut again, &mut Vec::new());
        assert_eq!(again[0].destinations[0].label(), policies[0].destinations[0].label());
        assert_eq!(again[1].destinations[0].label(), policies[0].destinations[0].label());
        // Labels an earlier version recorded in the journal, as spelled then.
        assert_eq!(canonical_label("file:./out//x.json"), policies[0].destinations[0].label());
        assert_eq!(canonical_label("vault:secret//t/x/"), "vault:secret/t/x");
        assert_eq!(canonical_label("aws:eu-west-1:x"), "aws:eu-west-1:x");
    }

    /// Existing directories are resolved by the filesystem (symlinks, and `..` after one, go
    /// where the kernel goes); what does not exist yet, lexically; the file itself never.
    #[test]
    fn file_paths_resolve_existing_directories() {
        let root = std::env::temp_dir().join(format!("rotator-policy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("deep/real")).unwrap();
        std::os::unix::fs::symlink(root.join("deep/real"), root.join("link")).unwrap();
        std::os::unix::fs::symlink("elsewhere.json", root.join("deep/real/file.json")).unwrap();
        let real = root.canonicalize().unwrap();
        for (base, path, expected) in [
            (root.join("link"), "x.json", "deep/real/x.json"),
            (root.clone(), "link/x.json", "deep/real/x.json"),
            (root.clone(), "link/../x.json", "deep/x.json"),
            (root.clone(), "new/../deep//./x.json", "deep/x.json"),
            (root.clone(), "link/new/more/../../x.json", "deep/real/x.json"),
            (root.clone(), "link/file.json", "deep/real/file.json"),
            (PathBuf::from("/nowhere"), &format!("{}/link/x.json", root.display()), "deep/real/x.json"),
        ] {
            assert_eq!(canonical_file(&base, Path::new(path)), real.join(expected), "{} + {path}", base.display());
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// What only the default region decides: `validate` accepts it, the check `plan` and
    /// `rotate` make with the AWS configuration's region refuses it, naming both policies.
    #[test]
    fn the_default_region_decides_the_rest() {
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:y-AbCdEf";
        for (a, b, field) in [
            (
                "aws_secrets_manager: { secret_id: x, region: us-east-1 }",
                "aws_secrets_manager: { secret_id: x }",
                "destinations",
            ),
            (
                &format!("aws_secrets_manager: {{ secret_id: '{arn}' }}"),
                "aws_secrets_manager: { secret_id: y }",
                "destinations",
            ),
            (
                "aws_secrets_manager: { secret_id: z }",
                "aws_secrets_manager: { secret_id: x, region: us-east-1 }\n  - aws_secrets_manager: { secret_id: x }",
                "destinations[1]",
            ),
        ] {
            let (policies, problems) = pair(a, b);
            assert!(problems.is_empty(), "{problems:?}");
            assert!(depends_on_default_region(&policies), "{a} / {b}");
            assert!(check_default_region(&policies, None).is_ok());
            assert!(check_default_region(&policies, Some("eu-west-1")).is_ok());
            let Err(Invalid(problems)) = check_default_region(&policies, Some("us-east-1")) else {
                panic!("{a} / {b}")
            };
            assert_eq!(problems.len(), 1, "{problems:#?}");
            let shown = problems[0].to_string();
            assert!(
                shown.starts_with(&format!("p.yaml:7:1: {field}: with the default region `us-east-1` (from the AWS configuration), destination `aws:")),
                "{shown}"
            );
        }
        let (policies, _) =
            pair("aws_secrets_manager: { secret_id: x, region: us-east-1 }", "aws_secrets_manager: { secret_id: y }");
        assert!(!depends_on_default_region(&policies));
        let (policies, _) = pair("file: { path: x.json }", "vault: { mount: secret, path: x }");
        assert!(!depends_on_default_region(&policies));
    }

    #[test]
    fn random_suffixes() {
        for (resource, expected) in [
            ("x-AbCdEf", Some("x")),
            ("a/b-c-123456", Some("a/b-c")),
            ("x-abcde", None),
            ("x-abcdefg", None),
            ("x-abc_ef", None),
            ("-AbCdEf", None),
            ("x", None),
        ] {
            assert_eq!(without_random_suffix(resource), expected, "{resource}");
        }
    }

    #[test]
    fn selectors_match_labels() {
        let (policies, _) = parse(&GOOD.replace("name: ci\n", "name: ci\nlabels: { team: payments, env: prod }\n"));
        let sel =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert!(policies[0].matches(&sel(&[("team", "payments")])));
        assert!(policies[0].matches(&sel(&[("team", "payments"), ("env", "prod")])));
        assert!(!policies[0].matches(&sel(&[("team", "platform")])));
        assert!(policies[0].matches(&[]));
    }
}
